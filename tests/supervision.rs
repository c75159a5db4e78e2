//! HAProxy supervision and one daemon per HAProxy directory, with real `cutover run`
//! daemons against a real Consul agent, the real Docker engine and a real HAProxy.
//!
//! - A follower supervises its own HAProxy: a `kill -9` of its master, or of its worker, is
//!   undone by the daemon alone, and counted in `cutover_haproxy_restarts_total`.
//! - Two daemons started at the same moment on one `--haproxy-dir`: one HAProxy master, the
//!   second daemon exits naming the directory, the holder's pid and `--haproxy-dir`; the first
//!   keeps serving, and after a `kill -9` of it a new daemon can take the directory over.
//! - A follower's resync changes no HAProxy file (only the leader writes routes).
//!
//! Each test has its own prefix, instance label, network, service name, ports and
//! directories; dropping the world kills its daemons, stops every HAProxy they ran and
//! removes their containers, also when an assertion failed.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use support::{Daemon, Ports, World, block_on, haproxy_masters, show_proc, signal};

/// Generous: the machines are noisy.
const PATIENCE: Duration = Duration::from_secs(60);

/// Starts a daemon with the shortest lease and its own HAProxy in the world's directory
/// `dir`, live and preview on `ports`.
fn start(w: &World, dir: &str, ports: Ports) -> Daemon {
    w.daemon()
        .short_lease()
        .haproxy_dir(dir)
        .ports(ports)
        .start()
}

/// Name, modification time and content of every file HAProxy's routes live in.
fn route_files(dir: &Path) -> Vec<(String, SystemTime, String)> {
    let mut files: Vec<(String, SystemTime, String)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let wanted = name.ends_with(".map") || name == "haproxy.cfg" || name == "routes.json";
            wanted.then(|| {
                let metadata = e.metadata().unwrap();
                let content = std::fs::read_to_string(e.path()).unwrap();
                (name, metadata.modified().unwrap(), content)
            })
        })
        .collect();
    files.sort();
    files
}

/// The test's service `sv`: a host route, health on the CGI script.
fn demo(w: &World, image: &str) -> String {
    let route = format!("  routes: [{{host: {}}}]\n", w.host("sv"));
    w.demo("sv", image, 1, &route)
}

/// What HAProxy answers for a host nothing routes.
const NO_BACKEND: &str = "no healthy backend for this route [503]";

#[test]
fn a_follower_supervises_its_haproxy_and_undoes_a_kill_9_of_its_master_or_worker() {
    let w = World::new("supervise-follower");
    let leader = start(&w, "leader", Ports::free());
    w.eventually_within("the first daemon to lead", PATIENCE, || {
        w.leader() == Some(leader)
    });
    let dir = w.haproxy_dir("follower");
    let follower = start(&w, "follower", Ports::free());
    w.eventually_within("the second daemon to follow", PATIENCE, || {
        w.log(follower).contains("following ")
    });
    w.eventually_within("the follower's HAProxy to serve", PATIENCE, || {
        w.through_proxy(follower, "nothing") == NO_BACKEND
    });
    assert_eq!(
        w.metric(follower, "cutover_leader").as_deref(),
        Some("cutover_leader 0")
    );

    for (round, victim) in ["master", "worker"].into_iter().enumerate() {
        let before = show_proc(&dir).expect("the follower's master answers");
        let target = match victim {
            "master" => before.master_pid,
            _ => before.current_workers().next().expect("a worker"),
        };
        signal(target, "KILL");
        let took = w.eventually_within(
            &format!("HAProxy back after a kill -9 of its {victim}"),
            PATIENCE,
            || {
                show_proc(&dir).is_some_and(|now| {
                    now.master_pid != before.master_pid && now.current_workers().next().is_some()
                }) && w.through_proxy(follower, "nothing") == NO_BACKEND
            },
        );
        eprintln!("follower: kill -9 of the HAProxy {victim}, serving again after {took:.2?}");
        assert_eq!(haproxy_masters(&dir).len(), 1, "one master\n{}", w.logs());
        let restarts = format!("cutover_haproxy_restarts_total {}", round + 1);
        w.eventually_within("the restart counter", PATIENCE, || {
            w.metric(follower, "cutover_haproxy_restarts_total")
                .as_deref()
                == Some(&restarts)
        });
    }
    assert!(
        w.exited(follower).is_none() && w.exited(leader).is_none(),
        "{}",
        w.logs()
    );
    assert_eq!(w.leader(), Some(leader), "the follower stayed a follower");
    assert_eq!(
        w.metric(leader, "cutover_haproxy_restarts_total")
            .as_deref(),
        Some("cutover_haproxy_restarts_total 0")
    );
}

#[test]
fn two_daemons_started_together_on_one_haproxy_dir_run_one_haproxy_and_the_second_exits() {
    let w = World::new("one-dir");
    let dir = w.haproxy_dir("shared");
    let ports = Ports::free();
    let first = start(&w, "shared", ports);
    let second = start(&w, "shared", ports);
    w.eventually_within("one of the two daemons to exit", PATIENCE, || {
        w.exited(first).is_some() || w.exited(second).is_some()
    });
    let (loser, winner) = if w.exited(first).is_some() {
        (first, second)
    } else {
        (second, first)
    };
    let status = w.exited(loser).unwrap();
    assert!(!status.success(), "{status}\n{}", w.logs());
    let winner_pid = w.pid(winner).unwrap();
    let log = w.log(loser);
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one line says why\n{}", w.logs());
    for part in [
        dir.display().to_string(),
        format!("pid {winner_pid}"),
        "--haproxy-dir".to_owned(),
    ] {
        assert!(
            errors[0].contains(&part),
            "{part} missing from: {}",
            errors[0]
        );
    }
    // The loser exits before the winner's HAProxy is up: wait for it, then count.
    w.eventually_within("the winner's HAProxy", PATIENCE, || {
        show_proc(&dir).is_some()
    });
    assert_eq!(haproxy_masters(&dir).len(), 1, "one HAProxy\n{}", w.logs());
    assert!(w.exited(winner).is_none(), "{}", w.logs());

    // The first keeps serving: it rolls a service out and routes it.
    w.apply("sv", &demo(&w, "cutover-demo:a"));
    w.eventually_within("the service through the winner's HAProxy", PATIENCE, || {
        w.through_proxy(winner, "sv") == "version A [200]"
    });
    // The second daemon left Docker alone too: one network of that name, not two.
    let networks = support::docker(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("name=^{}$", w.network),
    ]);
    assert_eq!(networks.lines().count(), 1, "{networks}");

    // The lock dies with its holder: after a kill -9, a new daemon takes the directory
    // and adopts the HAProxy that kept running.
    let master = show_proc(&dir).expect("a master").master_pid;
    w.kill(winner);
    let successor = start(&w, "shared", ports);
    w.eventually_within("the successor to adopt HAProxy", PATIENCE, || {
        w.log(successor).contains("adopting the running HAProxy")
    });
    assert!(w.exited(successor).is_none(), "{}", w.logs());
    assert_eq!(show_proc(&dir).map(|p| p.master_pid), Some(master));
    assert_eq!(haproxy_masters(&dir).len(), 1);
    assert_eq!(w.through_proxy(successor, "sv"), "version A [200]");
}

#[test]
fn a_followers_resync_changes_no_haproxy_file() {
    let w = World::new("follower-resync");
    let dir = w.haproxy_dir("follower");
    let ports = Ports::free();
    // The follower's directory routes a service nobody has any more: a leader would
    // forget it at its next resync; a follower must leave it alone.
    block_on(async {
        let mut settings =
            cutover::haproxy::Settings::new(&dir, format!("127.0.0.1:{}", ports.live));
        settings.preview_bind = Some(format!("127.0.0.1:{}", ports.preview));
        let mut proxy = cutover::haproxy::Proxy::start(settings).await.unwrap();
        let ghost = cutover::haproxy::ServiceRoutes {
            checks: Default::default(),
            routes: vec![cutover::spec::Route {
                path_prefix: Some("/ghost".into()),
                host: None,
            }],
            live: None,
            preview: None,
            port: 80,
            health_path: "/".into(),
            slots: 4,
            servers: BTreeMap::new(),
            split: None,
        };
        proxy.apply("ghost", &ghost).await.unwrap();
        // What a daemon's exit leaves: HAProxy runs on, the directory is free.
    });
    let leader = start(&w, "leader", Ports::free());
    w.eventually_within("the first daemon to lead", PATIENCE, || {
        w.leader() == Some(leader)
    });
    let follower = w
        .daemon()
        .short_lease()
        .haproxy_dir("follower")
        .ports(ports)
        .resync("1s")
        .start();
    w.eventually_within("the second daemon to follow", PATIENCE, || {
        w.log(follower).contains("following ")
    });
    let files = route_files(&dir);
    let processes = show_proc(&dir).expect("the follower's master answers");
    assert!(
        files
            .iter()
            .any(|(name, _, text)| name == "routes.json" && text.contains("ghost")),
        "{files:?}"
    );

    // Several resyncs of the follower (it says it is ready at every resync interval).
    let ready = |w: &World| w.log(follower).matches("ready to take over").count();
    let seen = ready(&w);
    w.eventually_within("three more follower resyncs", PATIENCE, || {
        ready(&w) >= seen + 3
    });
    assert_eq!(route_files(&dir), files, "the follower wrote route files");
    let now = show_proc(&dir).expect("the follower's master answers");
    assert_eq!(
        (now.master_pid, now.reloads),
        (processes.master_pid, processes.reloads),
        "the follower reloaded HAProxy\n{}",
        w.logs()
    );
    assert_eq!(w.leader(), Some(leader));
}
