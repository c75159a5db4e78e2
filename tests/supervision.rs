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
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use support::{Agent, TempDir, agent, remove_instance, require_images, unique_prefix};

/// Generous: the machines are noisy.
const PATIENCE: Duration = Duration::from_secs(60);

/// One `cutover run` under test.
struct Daemon {
    /// `None` once killed; behind a lock so that `try_wait` works through `&World`.
    child: Mutex<Option<Child>>,
    http_port: u16,
    log: PathBuf,
}

/// Daemons on one prefix and everything they made.
struct World {
    agent: &'static Agent,
    prefix: String,
    instance: String,
    network: String,
    /// The service, named apart from every other test's: container names are global.
    svc: String,
    dir: TempDir,
    daemons: Vec<Daemon>,
}

impl World {
    fn new(test: &str) -> World {
        require_images();
        let prefix = unique_prefix(test);
        let instance = prefix.replace('/', "-");
        World {
            agent: agent(),
            network: format!("cutover-{instance}"),
            svc: format!("sv{:08x}", rand::random::<u32>()),
            prefix,
            instance,
            dir: TempDir::new(),
            daemons: Vec::new(),
        }
    }

    /// An HAProxy state directory of this test, inside its temporary directory (where
    /// `Drop` looks for HAProxy masters to stop); not created: the daemon does that.
    fn haproxy_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `cutover run` with its own HAProxy in `haproxy_dir`, live and preview on
    /// `ports` (see [`ports`]); returns its number.
    fn start_daemon(&mut self, haproxy_dir: &Path, ports: (u16, u16), resync: &str) -> usize {
        let (http_port, preview_port) = ports;
        let number = self.daemons.len();
        let log = self.dir.path().join(format!("daemon-{number}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = support::cutover_command()
            .env("CONSUL_HTTP_ADDR", self.agent.address())
            .env("CUTOVER_PREFIX", &self.prefix)
            .env("RUST_LOG", "cutover=debug")
            .args([
                "run",
                "--network",
                &self.network,
                "--instance",
                &self.instance,
            ])
            .args([
                "--resync",
                resync,
                "--leader-ttl",
                "10s",
                "--lock-delay",
                "1s",
            ])
            .args(["--http-bind", &format!("127.0.0.1:{http_port}")])
            .args(["--preview-bind", &format!("127.0.0.1:{preview_port}")])
            .arg("--haproxy-dir")
            .arg(haproxy_dir)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start cutover run");
        self.daemons.push(Daemon {
            child: Mutex::new(Some(child)),
            http_port,
            log,
        });
        number
    }

    fn log(&self, number: usize) -> String {
        std::fs::read_to_string(&self.daemons[number].log).unwrap_or_default()
    }

    fn logs(&self) -> String {
        (0..self.daemons.len())
            .map(|n| format!("--- daemon {n} log\n{}", self.log(n)))
            .collect()
    }

    fn pid(&self, number: usize) -> Option<u32> {
        self.daemons[number]
            .child
            .lock()
            .unwrap()
            .as_ref()
            .map(Child::id)
    }

    /// kill -9, as a crash would.
    fn kill_daemon(&self, number: usize) {
        if let Some(mut child) = self.daemons[number].child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The daemon's exit status, if it has exited.
    fn exited(&self, number: usize) -> Option<std::process::ExitStatus> {
        self.daemons[number]
            .child
            .lock()
            .unwrap()
            .as_mut()
            .and_then(|c| c.try_wait().expect("wait for the daemon"))
    }

    /// The daemon that holds the leader lock, by the pid in the key.
    fn leader(&self) -> Option<usize> {
        let entry = block_on(
            self.agent
                .client()
                .get(&cutover::leader::leader_key(&self.prefix)),
        )
        .expect("read the lock key")?;
        entry.session.as_ref()?;
        let holder: cutover::leader::Holder = serde_json::from_slice(&entry.value).ok()?;
        (0..self.daemons.len()).find(|n| self.pid(*n) == Some(holder.pid))
    }

    /// One line of the daemon's `/metrics` (its port is in its log).
    fn metric(&self, number: usize, name: &str) -> Option<String> {
        let log = self.log(number);
        let (_, rest) = log.split_once("status page at http://")?;
        let address = rest.split('/').next()?;
        let out = Command::new("curl")
            .args([
                "-fsS",
                "--max-time",
                "5",
                &format!("http://{address}/metrics"),
            ])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .map(str::to_owned)
    }

    /// What the daemon's live listener answers for `host`: body and status code.
    fn through_proxy(&self, number: usize, host: &str) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
            .args(["-H", &format!("Host: {host}")])
            .arg(format!(
                "http://127.0.0.1:{}/",
                self.daemons[number].http_port
            ))
            .output()
            .expect("run curl");
        let out = String::from_utf8_lossy(&out.stdout);
        let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", &out));
        format!("{} [{code}]", body.trim())
    }

    fn apply(&self, name: &str, manifest: &str) {
        let file = self.dir.write(&format!("{name}.yaml"), manifest);
        let run = self
            .agent
            .cutover(&self.prefix)
            .args(["apply", "-f", file.to_str().unwrap()])
            .run();
        assert!(run.status.success(), "apply failed: {run}");
    }

    fn eventually(&self, what: &str, mut check: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        while start.elapsed() < PATIENCE {
            if check() {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}\n{}", self.logs());
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // The daemons first, so that no supervisor starts HAProxy again.
        for number in 0..self.daemons.len() {
            self.kill_daemon(number);
        }
        // Every HAProxy directory of the test, also one no daemon got to use.
        let dirs = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten();
        for dir in dirs.map(|e| e.path()).filter(|p| p.is_dir()) {
            if let Some(processes) = show_proc(&dir) {
                kill("-TERM", processes.master_pid);
                std::thread::sleep(Duration::from_millis(300));
                kill("-KILL", processes.master_pid);
                for worker in processes.workers {
                    kill("-KILL", worker.pid);
                }
            }
        }
        // And any HAProxy of this test the sockets did not lead to (a second master on one
        // directory, which a failing test may have started).
        for pid in processes_whose_cmdline_contains(&format!("{}/", self.dir.path().display())) {
            kill("-KILL", pid);
        }
        remove_instance(&self.instance, &self.network);
    }
}

/// A live and a preview port nobody uses.
fn ports() -> (u16, u16) {
    (support::unused_port(), support::unused_port())
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(future)
}

fn kill(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
}

/// The master CLI of the HAProxy in `dir`, blocking; `None` when nothing answers.
fn master_command(dir: &Path, command: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(dir.join("master.sock")).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(format!("{command}\n").as_bytes()).ok()?;
    stream.shutdown(std::net::Shutdown::Write).ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    Some(reply)
}

fn show_proc(dir: &Path) -> Option<cutover::haproxy::runtime::Processes> {
    cutover::haproxy::runtime::parse_show_proc(&master_command(dir, "show proc")?)
}

/// The pids of the processes whose command line contains `needle`.
fn processes_whose_cmdline_contains(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                String::from_utf8_lossy(&cmdline)
                    .replace('\0', " ")
                    .contains(needle)
            })
        })
        .collect()
}

/// HAProxy masters running on this state directory: processes started with its
/// configuration whose parent is not one of them (workers are the master's children;
/// zombies have no command line).
fn haproxy_masters_on(dir: &Path) -> usize {
    let needle = format!("{}/haproxy.cfg", dir.display());
    let ours: BTreeMap<u32, u32> = processes_whose_cmdline_contains(&needle)
        .into_iter()
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let ppid = status
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))?
                .trim()
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    ours.values()
        .filter(|ppid| !ours.contains_key(ppid))
        .count()
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

/// The demo service: a host route, health on the CGI script.
fn demo(name: &str, image: &str) -> String {
    format!(
        "apiVersion: cutover.dev/v1
kind: Service
metadata: {{name: {name}}}
spec:
  image: {image}
  replicas: 1
  port: 80
  health: {{path: /cgi-bin/health, interval: 200ms, timeout: 150ms}}
  routes: [{{host: {name}.test}}]
"
    )
}

/// What HAProxy answers for a host nothing routes.
const NO_BACKEND: &str = "no healthy backend for this route [503]";

#[test]
fn a_follower_supervises_its_haproxy_and_undoes_a_kill_9_of_its_master_or_worker() {
    let mut w = World::new("supervise-follower");
    let leader = w.start_daemon(&w.haproxy_dir("leader"), ports(), "5s");
    w.eventually("the first daemon to lead", || w.leader() == Some(leader));
    let dir = w.haproxy_dir("follower");
    let follower = w.start_daemon(&dir, ports(), "5s");
    w.eventually("the second daemon to follow", || {
        w.log(follower).contains("following ")
    });
    w.eventually("the follower's HAProxy to serve", || {
        w.through_proxy(follower, "nothing.test") == NO_BACKEND
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
        kill("-KILL", target);
        let took = w.eventually(
            &format!("HAProxy back after a kill -9 of its {victim}"),
            || {
                show_proc(&dir).is_some_and(|now| {
                    now.master_pid != before.master_pid && now.current_workers().next().is_some()
                }) && w.through_proxy(follower, "nothing.test") == NO_BACKEND
            },
        );
        eprintln!("follower: kill -9 of the HAProxy {victim}, serving again after {took:.2?}");
        assert_eq!(haproxy_masters_on(&dir), 1, "one master\n{}", w.logs());
        let restarts = format!("cutover_haproxy_restarts_total {}", round + 1);
        w.eventually("the restart counter", || {
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
    let mut w = World::new("one-dir");
    let dir = w.haproxy_dir("shared");
    let ports = ports();
    let first = w.start_daemon(&dir, ports, "5s");
    let second = w.start_daemon(&dir, ports, "5s");
    w.eventually("one of the two daemons to exit", || {
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
    w.eventually("the winner's HAProxy", || show_proc(&dir).is_some());
    assert_eq!(haproxy_masters_on(&dir), 1, "one HAProxy\n{}", w.logs());
    assert!(w.exited(winner).is_none(), "{}", w.logs());

    // The first keeps serving: it rolls a service out and routes it.
    w.apply(&w.svc, &demo(&w.svc, "cutover-demo:a"));
    let host = format!("{}.test", w.svc);
    w.eventually("the service through the winner's HAProxy", || {
        w.through_proxy(winner, &host) == "version A [200]"
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
    w.kill_daemon(winner);
    let successor = w.start_daemon(&dir, ports, "5s");
    w.eventually("the successor to adopt HAProxy", || {
        w.log(successor).contains("adopting the running HAProxy")
    });
    assert!(w.exited(successor).is_none(), "{}", w.logs());
    assert_eq!(show_proc(&dir).map(|p| p.master_pid), Some(master));
    assert_eq!(haproxy_masters_on(&dir), 1);
    assert_eq!(w.through_proxy(successor, &host), "version A [200]");
}

#[test]
fn a_followers_resync_changes_no_haproxy_file() {
    let mut w = World::new("follower-resync");
    let dir = w.haproxy_dir("follower");
    let (port, preview) = ports();
    // The follower's directory routes a service nobody has any more: a leader would
    // forget it at its next resync; a follower must leave it alone.
    block_on(async {
        let mut settings = cutover::haproxy::Settings::new(&dir, format!("127.0.0.1:{port}"));
        settings.preview_bind = Some(format!("127.0.0.1:{preview}"));
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
        };
        proxy.apply("ghost", &ghost).await.unwrap();
        // What a daemon's exit leaves: HAProxy runs on, the directory is free.
    });
    let leader = w.start_daemon(&w.haproxy_dir("leader"), ports(), "5s");
    w.eventually("the first daemon to lead", || w.leader() == Some(leader));
    let follower = w.start_daemon(&dir, (port, preview), "1s");
    w.eventually("the second daemon to follow", || {
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
    w.eventually("three more follower resyncs", || ready(&w) >= seen + 3);
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
