//! Several proxies follow one route table: two `cutover run` daemons (a leader and a
//! follower) and one `cutover proxy`, each with its own HAProxy on its own loopback ports,
//! against a real Consul, Docker and HAProxy, under steady load (a new connection per
//! request) to every proxy.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cutover::fleet::{ProxyReport, PublishedRoutes};
use support::{Daemon, Load, Ports, World, block_on, docker, signal};

const STRATEGY: &str = "  strategy: {blueGreen: {scaleDownDelay: 1s, progressDeadline: 60s}}\n";

/// The test's service `web`, routed by its host.
fn web(w: &World, image: &str, replicas: u32) -> String {
    let route = format!("  routes: [{{host: {}}}]\n", w.host("web"));
    w.demo("web", image, replicas, &(route + STRATEGY))
}

/// Two daemons and an edge proxy, each with its own HAProxy.
fn fleet(w: &World) -> [(Daemon, Ports); 3] {
    let start = |name: &str, edge: bool| {
        let ports = Ports::free();
        let builder = w.daemon().short_lease().haproxy_dir(name).ports(ports);
        let d = if edge {
            builder.edge().start()
        } else {
            builder.start()
        };
        (d, ports)
    };
    let daemons = [start("a", false), start("b", false), start("edge", true)];
    w.eventually("a leader", || w.leader().is_some());
    daemons
}

/// The live proxies' reports, by id.
fn reports(w: &World) -> BTreeMap<String, ProxyReport> {
    let listing = block_on(w.agent.client().list(&w.key("proxies/"))).unwrap();
    listing
        .entries
        .iter()
        .filter(|e| e.session.is_some())
        .map(|e| {
            let id = e.key.rsplit('/').next().unwrap().to_owned();
            (id, serde_json::from_slice(&e.value).unwrap())
        })
        .collect()
}

/// The published routes of `web`, with their version.
fn published(w: &World) -> (u64, PublishedRoutes) {
    let entry = block_on(
        w.agent
            .client()
            .get(&w.key(&format!("routes/{}", w.svc("web")))),
    )
    .unwrap()
    .expect("web's routes are published");
    (
        entry.modify_index,
        serde_json::from_slice(&entry.value).unwrap(),
    )
}

/// Milliseconds since the Unix epoch of a Docker timestamp.
fn millis(rfc3339: &str) -> u128 {
    humantime::parse_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339:?}: {e}"))
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

fn system_millis(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis()
}

/// When the test's stopped container `name` (as `containers()` shows it) stopped.
fn finished_at(w: &World, name: &str) -> u128 {
    let full = name.replacen('-', &format!("-{}-", w.tag), 1);
    millis(docker(&["inspect", "-f", "{{.State.FinishedAt}}", &full]).trim())
}

/// A release with load on every proxy: no request fails, every proxy (the follower's and
/// the edge one too) serves the new color before the old one stops, and every proxy reports
/// the table it serves. Also measures the time from a table write to every proxy applied.
#[test]
fn every_proxy_follows_the_table_and_a_release_fails_no_request() {
    let w = World::new("fleet");
    let proxies = fleet(&w);
    w.apply("web", &web(&w, "cutover-demo:a", 2));
    w.wait_available("web");
    for (_, ports) in &proxies {
        w.eventually("every proxy serves version A", || {
            w.through_port(ports.live, "web") == "version A [200]"
        });
    }
    assert_eq!(
        reports(&w).len(),
        3,
        "three proxies report: {:?}",
        reports(&w)
    );

    let loads: Vec<Load> = proxies
        .iter()
        .map(|(_, ports)| Load::start(ports.live, w.host("web"), 2))
        .collect();
    w.apply("web", &web(&w, "cutover-demo:b", 2));
    w.wait_available("web");
    // Available means every proxy serves it already.
    for (_, ports) in &proxies {
        assert_eq!(w.through_port(ports.live, "web"), "version B [200]");
    }
    w.eventually("the old color stopped", || {
        w.running()
            == [
                "web-green-1 cutover-demo:b running",
                "web-green-2 cutover-demo:b running",
            ]
    });
    let old_stopped = w
        .containers()
        .iter()
        .filter(|c| c.starts_with("web-r") && c.ends_with(" exited"))
        .map(|c| finished_at(&w, c.split(' ').next().unwrap()))
        .min()
        .expect("the old replicas are kept, stopped");
    for (n, load) in loads.into_iter().enumerate() {
        let first_b = load.first_seen("version B").expect("version B served");
        load.finish_without_failures(&format!("proxy {n}"), 50, || w.logs());
        assert!(
            system_millis(first_b) < old_stopped,
            "proxy {n} served version B only after the old color stopped"
        );
    }
    let (version, _) = published(&w);
    for (id, report) in reports(&w) {
        assert_eq!(
            report.applied.get(&w.svc("web")).map(|a| a.version),
            Some(version),
            "{id} serves the latest table"
        );
    }

    // The time from a table write to every proxy having applied it, over scale changes.
    let mut delays = Vec::new();
    // (Between 1 and 2 replicas HAProxy's backends keep their shape: no reload.)
    for i in 0..10 {
        let replicas = if i % 2 == 0 { "1" } else { "2" };
        let run = w.cutover(&["scale", &w.svc("web"), replicas]);
        assert!(run.status.success(), "{run}");
        w.wait_available("web");
        let (version, entry) = published(&w);
        w.eventually("every proxy applied the table", || {
            reports(&w).values().all(|r| {
                r.applied
                    .get(&w.svc("web"))
                    .is_some_and(|a| a.version >= version)
            })
        });
        let slowest = reports(&w)
            .values()
            .filter_map(|r| r.applied.get(&w.svc("web")))
            .filter(|a| a.version == version)
            .map(|a| a.at_ms.saturating_sub(entry.written_ms))
            .max();
        delays.extend(slowest);
    }
    delays.sort_unstable();
    if !delays.is_empty() {
        eprintln!(
            "table write -> every proxy applied: p50 {} ms, max {} ms ({} writes)",
            delays[delays.len() / 2],
            delays[delays.len() - 1],
            delays.len()
        );
    }
}

/// A proxy frozen with SIGSTOP during a release: the new color takes the traffic of the
/// others, but the old color keeps running and the status names the proxy until it resumes;
/// then the release completes. Frozen for longer than its session, it stops counting.
#[test]
fn a_frozen_proxy_holds_the_old_color_until_it_resumes_or_its_session_expires() {
    let w = World::new("frozen");
    let proxies = fleet(&w);
    let (edge, edge_ports) = proxies[2];
    w.apply("web", &web(&w, "cutover-demo:a", 2));
    w.wait_available("web");
    w.eventually("the edge proxy serves", || {
        w.through_port(edge_ports.live, "web") == "version A [200]"
    });
    let pid = w.pid(edge).expect("the edge proxy runs");
    let listener = format!("127.0.0.1:{}", edge_ports.live);
    let id = reports(&w)
        .into_iter()
        .find(|(_, r)| r.listener == listener)
        .map(|(id, _)| id)
        .expect("the edge proxy reports");

    // Frozen before the release: the new color is not switched to until every proxy's
    // checks see it UP, and the status says which proxy it waits for.
    signal(pid, "STOP");
    w.apply("web", &web(&w, "cutover-demo:b", 2));
    w.eventually_within(
        "the status names the frozen proxy",
        Duration::from_secs(8),
        || {
            w.try_status("web").is_some_and(|s| {
                s["phase"] == "Progressing"
                    && s["conditions"].as_array().is_some_and(|c| {
                        c.iter().any(|c| {
                            c["type"] == "Progressing"
                                && c["message"].as_str().is_some_and(|m| m.contains(&id))
                        })
                    })
            })
        },
    );
    // Well within its session's TTL (10 s): the old color must still run.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        w.running().iter().any(|c| c.starts_with("web-blue-")),
        "the old color keeps running while a proxy may still send it requests: {:?}",
        w.containers()
    );
    assert_eq!(
        w.through_port(edge_ports.live, "web"),
        "version A [200]",
        "the frozen proxy's HAProxy still serves the old color"
    );
    signal(pid, "CONT");
    w.wait_available("web");
    assert_eq!(w.through_port(edge_ports.live, "web"), "version B [200]");
    w.eventually("the old color stopped", || {
        w.running().iter().all(|c| c.starts_with("web-green-"))
    });

    // Frozen for good: once its session expires (10 to 20 s), it stops counting.
    signal(pid, "STOP");
    w.apply("web", &web(&w, "cutover-demo:a", 2));
    w.eventually_within(
        "the release without the dead proxy",
        Duration::from_secs(60),
        || {
            w.try_status("web")
                .is_some_and(|s| s["phase"] == "Available" && s["activeColor"] == "blue")
        },
    );
    signal(pid, "CONT");
    w.eventually("the resumed proxy catches up", || {
        w.through_port(edge_ports.live, "web") == "version A [200]"
    });
}

/// `kill -9` of the leader during a release: the follower takes over and completes it, and
/// the two proxies left keep serving throughout.
#[test]
fn kill_9_of_the_leader_during_a_release_the_follower_completes_it() {
    let w = World::new("leader-dies");
    let proxies = fleet(&w);
    w.apply("web", &web(&w, "cutover-demo:a", 2));
    w.wait_available("web");
    let leader = w.leader().expect("a leader");
    let survivors: Vec<(Daemon, Ports)> = proxies
        .iter()
        .copied()
        .filter(|(d, _)| *d != leader)
        .collect();
    for (_, ports) in &survivors {
        w.eventually("the survivors serve", || {
            w.through_port(ports.live, "web") == "version A [200]"
        });
    }
    let loads: Vec<Load> = survivors
        .iter()
        .map(|(_, ports)| Load::start(ports.live, w.host("web"), 2))
        .collect();
    w.apply("web", &web(&w, "cutover-demo:b", 2));
    w.eventually("green created", || {
        w.containers().iter().any(|c| c.starts_with("web-green-"))
    });
    w.kill(leader);
    w.eventually_within("the follower leads", Duration::from_secs(60), || {
        w.leader().is_some_and(|d| d != leader)
    });
    w.wait_available("web");
    for (_, ports) in &survivors {
        assert_eq!(w.through_port(ports.live, "web"), "version B [200]");
    }
    // The dead leader's proxy session expires; then the old color goes.
    w.eventually_within("the old color stopped", Duration::from_secs(60), || {
        w.running().iter().all(|c| c.starts_with("web-green-"))
    });
    for (n, load) in loads.into_iter().enumerate() {
        load.finish_without_failures(&format!("proxy {n}"), 50, || w.logs());
    }
}

/// A proxy started after everything is live serves the current routes at once.
#[test]
fn a_proxy_started_late_serves_the_current_routes_at_once() {
    let w = World::new("late");
    w.daemon()
        .short_lease()
        .haproxy_dir("a")
        .ports(Ports::free())
        .start();
    w.apply("web", &web(&w, "cutover-demo:a", 2));
    w.wait_available("web");
    let ports = Ports::free();
    let started = tokio::time::Instant::now();
    w.daemon().haproxy_dir("late").ports(ports).edge().start();
    let took = w.eventually_within("the late proxy serves", Duration::from_secs(30), || {
        w.through_port(ports.live, "web") == "version A [200]"
    });
    eprintln!(
        "a proxy started late served the current routes {} ms after its start ({} ms after the first check)",
        started.elapsed().as_millis(),
        took.as_millis()
    );
}
