//! High availability: several `cutover run` on one prefix elect one leader with a Consul lock.
//!
//! The election itself is tested through the library against a real agent (who wins, a fast
//! hand-over on resign, fencing when Consul stops answering); the daemons end to end against
//! the real Docker engine (one leader, a kill -9 of the leader in the middle of a rollout, a
//! SIGTERM hand-over). Each test has its own prefix, instance label, network and names, and
//! removes what it made, even when it fails.

mod support;

use std::process::{Child, Command};
use std::time::Duration;

use cutover::consul::{Client, KvEntry};
use cutover::leader::{self, Config, Election, Holder, Leadership, Role};
use tokio::time::Instant;

use support::{Agent, TempDir, agent, docker, remove_instance, require_images, unique_prefix};

/// The TTL and lock delay of the daemons under test: the shortest Consul accepts.
const TTL: Duration = Duration::from_secs(10);
const LOCK_DELAY: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------
// The election, through the library.

fn config(key: &str, pid: u32, ttl: Duration, lock_delay: Duration) -> Config {
    Config {
        key: key.to_owned(),
        ttl,
        lock_delay,
        holder: Holder {
            hostname: "test".to_owned(),
            pid,
            instance: "leader-test".to_owned(),
        },
    }
}

async fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

async fn lock_entry(client: &Client, key: &str) -> KvEntry {
    client
        .get(key)
        .await
        .expect("read the lock key")
        .expect("the lock key exists")
}

#[tokio::test(flavor = "multi_thread")]
async fn two_candidates_elect_one_and_a_resign_hands_over_without_the_lock_delay() {
    let agent = agent();
    let key = leader::leader_key(&unique_prefix("election"));
    // A long lock delay: the hand-over below must not wait for it.
    let lock_delay = Duration::from_secs(15);
    let (first, first_role) = Election::new(agent.client(), config(&key, 1, TTL, lock_delay));
    let (second, second_role) = Election::new(agent.client(), config(&key, 2, TTL, lock_delay));
    let first = first.spawn();
    let second = second.spawn();
    let roles = [first_role.clone(), second_role.clone()];
    let leaders = || roles.iter().filter(|r| r.is_leader()).count();
    wait_for("a leader", Duration::from_secs(20), || leaders() == 1).await;
    // Give a second winner every chance to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(leaders(), 1);

    let (winner, loser, winner_role, loser_role, winner_pid) = if first_role.is_leader() {
        (first, second, first_role, second_role, 1)
    } else {
        (second, first, second_role, first_role, 2)
    };
    let entry = lock_entry(&agent.client(), &key).await;
    assert!(entry.session.is_some(), "the key is locked: {entry:?}");
    let holder: Holder = serde_json::from_slice(&entry.value).expect("the holder as JSON");
    assert_eq!(holder.pid, winner_pid);
    wait_for(
        "the loser to know the leader",
        Duration::from_secs(5),
        || {
            matches!(loser_role.role(), Role::Follower { leader: Some(l) }
            if l == format!("test pid {winner_pid} (instance leader-test)"))
        },
    )
    .await;

    winner.resign().await;
    assert!(!winner_role.is_leader());
    let took = wait_for("the other to take over", Duration::from_secs(10), || {
        loser_role.is_leader()
    })
    .await;
    assert!(
        took < Duration::from_secs(5),
        "a released lock has no lock delay, yet the take-over took {took:?}"
    );
    let entry = lock_entry(&agent.client(), &key).await;
    let holder: Holder = serde_json::from_slice(&entry.value).unwrap();
    assert_eq!(holder.pid, 3 - winner_pid);

    loser.resign().await;
    let entry = lock_entry(&agent.client(), &key).await;
    assert_eq!(entry.session, None, "resigning releases the lock");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_that_cannot_renew_steps_down_before_its_session_can_expire() {
    // This test freezes its own agent.
    let agent = Agent::start();
    let key = leader::leader_key(&unique_prefix("fencing"));
    let (election, leadership) =
        Election::new(agent.client(), config(&key, 1, TTL, Duration::from_secs(1)));
    let campaign = election.spawn();
    wait_for("leadership", Duration::from_secs(20), || {
        leadership.is_leader()
    })
    .await;
    let mut role = leadership.subscribe();
    role.borrow_and_update();

    // SIGSTOP: the agent answers nothing, like a partitioned or dead Consul.
    let pid = agent.pid();
    signal(pid, "STOP");
    let stopped = Instant::now();
    let fenced = wait_for("the step-down", Duration::from_secs(15), || {
        !leadership.is_leader()
    })
    .await;
    // The last renewal was sent before the freeze, so the step-down comes at most
    // TTL - margin after it, before Consul could ever expire the session (TTL).
    let bound = TTL - leader::step_down_margin(TTL) + Duration::from_millis(300);
    let noticed = tokio::time::timeout(Duration::from_secs(2), async {
        while role.borrow_and_update().is_leader() {
            role.changed().await.unwrap();
        }
    })
    .await;
    let elapsed = stopped.elapsed();
    signal(pid, "CONT");
    eprintln!("stepped down {fenced:?} after Consul froze (bound {bound:?})");
    assert!(
        fenced <= bound,
        "stepped down after {fenced:?}, later than {bound:?}"
    );
    assert!(
        noticed.is_ok(),
        "the election task published the follower role ({elapsed:?} after the freeze)"
    );

    // Consul is back: the daemon leads again (with the same session or a new one).
    wait_for("leadership again", Duration::from_secs(40), || {
        leadership.is_leader()
    })
    .await;
    campaign.resign().await;
}

#[test]
fn the_leader_flags_are_checked_against_what_consul_accepts() {
    for (flag, value, message) in [
        ("--leader-ttl", "5s", "from 10s to 24h"),
        ("--lock-delay", "2m", "at most 60s"),
        ("--leader-ttl", "soon", "10s or 1m"),
    ] {
        let output = support::cutover_command()
            .args(["run", flag, value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flag} {value}");
        assert!(stderr.contains(message), "{flag} {value}: {stderr}");
    }
}

/// The follower handle never acts.
#[test]
fn a_follower_handle_refuses_every_step() {
    let leadership = Leadership::follower();
    assert!(!leadership.is_leader());
    assert!(leadership.check().is_err());
}

// ---------------------------------------------------------------------------------------
// Daemons end to end.

/// Daemons under test on one prefix, and everything they made.
struct World {
    agent: &'static Agent,
    prefix: String,
    instance: String,
    network: String,
    /// The service, named apart from every other test's: container names are global on the
    /// engine.
    svc: String,
    dir: TempDir,
    daemons: Vec<Option<Child>>,
}

impl World {
    fn new(test: &str) -> World {
        require_images();
        let prefix = unique_prefix(test);
        let instance = prefix.replace('/', "-");
        World {
            agent: agent(),
            network: format!("cutover-{instance}"),
            svc: format!("ha{:08x}", rand::random::<u32>()),
            prefix,
            instance,
            dir: TempDir::new(),
            daemons: Vec::new(),
        }
    }

    /// Starts one more daemon with the test TTL and this lock delay; returns its number.
    fn start_daemon(&mut self, lock_delay: Duration) -> usize {
        let number = self.daemons.len();
        let log = std::fs::File::create(self.log_path(number)).unwrap();
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
            .args(["--resync", "5s"])
            .args(["--leader-ttl", &format!("{}s", TTL.as_secs())])
            .args(["--lock-delay", &format!("{}s", lock_delay.as_secs())])
            // Several daemons on one machine: no HAProxy (this is about the controller), and
            // HTTP endpoints on free ports.
            .args(["--no-proxy", "--listen", "127.0.0.1:0"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start cutover run");
        self.daemons.push(Some(child));
        number
    }

    fn log_path(&self, number: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("daemon-{number}.log"))
    }

    fn log(&self, number: usize) -> String {
        std::fs::read_to_string(self.log_path(number)).unwrap_or_default()
    }

    fn logs(&self) -> String {
        (0..self.daemons.len())
            .map(|n| format!("--- daemon {n} log\n{}", self.log(n)))
            .collect()
    }

    /// `cutover_leader` from the daemon's `/metrics` (its port is in its log).
    fn leader_gauge(&self, number: usize) -> Option<String> {
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
            .find(|l| l.starts_with("cutover_leader "))
            .map(str::to_owned)
    }

    fn pid(&self, number: usize) -> u32 {
        self.daemons[number].as_ref().expect("running").id()
    }

    /// kill -9, as a crash would.
    fn kill_daemon(&mut self, number: usize) {
        if let Some(mut child) = self.daemons[number].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The daemon that holds the lock, by the pid in the key, if any.
    fn leader(&self) -> Option<usize> {
        let entry = block_on(self.agent.client().get(&leader::leader_key(&self.prefix)))
            .expect("read the lock key")?;
        entry.session.as_ref()?;
        let holder: Holder = serde_json::from_slice(&entry.value).ok()?;
        (0..self.daemons.len()).find(|n| {
            self.daemons[*n]
                .as_ref()
                .is_some_and(|c| c.id() == holder.pid)
        })
    }

    fn cutover(&self, args: &[&str]) -> support::Run {
        self.agent.cutover(&self.prefix).args(args).run()
    }

    fn apply(&self, name: &str, manifest: &str) {
        let file = self.dir.write(&format!("{name}.yaml"), manifest);
        let run = self.cutover(&["apply", "-f", file.to_str().unwrap()]);
        assert!(run.status.success(), "apply failed: {run}");
    }

    fn wait_available(&self, name: &str) {
        let run = self.cutover(&["status", name, "--wait", "--timeout", "90s"]);
        assert!(
            run.status.success(),
            "{name} did not become Available: {run}\n{}",
            self.logs()
        );
    }

    fn status(&self, name: &str) -> serde_json::Value {
        let run = self.cutover(&["status", name, "-o", "json"]);
        assert!(run.status.success(), "{run}");
        serde_json::from_str(&run.stdout).expect("status JSON")
    }

    /// `name image state` of this test's containers, sorted.
    fn containers(&self) -> Vec<String> {
        let out = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=dev.cutover.instance={}", self.instance),
            "--format",
            "{{.Names}} {{.Image}} {{.State}}",
        ]);
        let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    }

    /// The running replicas of this test's service in `color`, as `name image state`.
    fn expected(&self, color: &str, image: &str, replicas: u32) -> Vec<String> {
        (1..=replicas)
            .map(|n| format!("{}-{color}-{n} {image} running", self.svc))
            .collect()
    }

    fn running(&self) -> Vec<String> {
        self.containers()
            .into_iter()
            .filter(|c| c.ends_with(" running"))
            .collect()
    }

    fn eventually(&self, what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        while start.elapsed() < limit {
            if check() {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "timed out waiting for {what}; containers: {:?}\n{}",
            self.containers(),
            self.logs()
        );
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for number in 0..self.daemons.len() {
            self.kill_daemon(number);
        }
        remove_instance(&self.instance, &self.network);
    }
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(future)
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// The demo service: health on the CGI script, short drain and deadline for quick tests.
fn demo(name: &str, image: &str, replicas: u32) -> String {
    format!(
        "apiVersion: cutover.dev/v1
kind: Service
metadata: {{name: {name}}}
spec:
  image: {image}
  replicas: {replicas}
  port: 80
  health: {{path: /cgi-bin/health, interval: 200ms, timeout: 150ms}}
  strategy: {{blueGreen: {{scaleDownDelay: 3s, progressDeadline: 60s}}}}
"
    )
}

#[test]
fn two_daemons_elect_one_leader_and_a_rollout_makes_no_duplicates() {
    let mut w = World::new("two-daemons");
    w.start_daemon(LOCK_DELAY);
    w.start_daemon(LOCK_DELAY);
    w.eventually("a leader", Duration::from_secs(30), || w.leader().is_some());
    let leader = w.leader().unwrap();
    let follower = 1 - leader;
    w.eventually("the follower to follow", Duration::from_secs(10), || {
        w.log(follower).contains("following ")
    });
    assert_eq!(w.leader_gauge(leader).as_deref(), Some("cutover_leader 1"));
    assert_eq!(
        w.leader_gauge(follower).as_deref(),
        Some("cutover_leader 0")
    );

    w.apply(&w.svc, &demo(&w.svc, "cutover-demo:a", 2));
    w.wait_available(&w.svc);
    w.apply(&w.svc, &demo(&w.svc, "cutover-demo:b", 2));
    w.wait_available(&w.svc);
    assert_eq!(w.status(&w.svc)["activeColor"], "green");
    // Retired replicas leave their slot at once and stop in the background.
    w.eventually("blue retired and stopped", Duration::from_secs(60), || {
        w.running() == w.expected("green", "cutover-demo:b", 2)
    });
    assert_eq!(w.running(), w.expected("green", "cutover-demo:b", 2));
    assert_eq!(w.leader(), Some(leader), "the leadership never moved");
    let (leader_log, follower_log) = (w.log(leader), w.log(follower));
    assert_eq!(
        leader_log.matches("became leader").count(),
        1,
        "{}",
        w.logs()
    );
    assert!(!follower_log.contains("became leader"), "{}", w.logs());
    // The follower changed nothing: no step, no status write.
    for sign in ["create green replica", "status written", "switch traffic"] {
        assert!(leader_log.contains(sign), "the leader did it: {sign}");
        assert!(
            !follower_log.contains(sign),
            "the follower did: {sign}\n{}",
            w.logs()
        );
    }
}

#[test]
fn kill_9_of_the_leader_mid_rollout_hands_over_and_the_rollout_finishes_once() {
    let mut w = World::new("kill-leader");
    w.start_daemon(LOCK_DELAY);
    w.start_daemon(LOCK_DELAY);
    w.eventually("a leader", Duration::from_secs(30), || w.leader().is_some());
    w.apply(&w.svc, &demo(&w.svc, "cutover-demo:a", 2));
    w.wait_available(&w.svc);
    let leader = w.leader().expect("a leader");
    let survivor = 1 - leader;

    w.apply(&w.svc, &demo(&w.svc, "cutover-demo:b", 2));
    w.eventually("green created", Duration::from_secs(30), || {
        w.containers()
            .iter()
            .any(|c| c.starts_with(&format!("{}-green-", w.svc)))
    });
    w.kill_daemon(leader);
    // Consul invalidates the session between TTL and 2 x TTL after its last renewal, then
    // keeps the lock for the lock delay.
    let bound = LOCK_DELAY + 2 * TTL + Duration::from_secs(10);
    let took = w.eventually("the survivor to lead", bound, || {
        w.leader() == Some(survivor)
    });
    eprintln!("the survivor took over {took:?} after the kill");
    assert!(w.log(survivor).contains("became leader"), "{}", w.logs());

    w.wait_available(&w.svc);
    assert_eq!(w.status(&w.svc)["activeColor"], "green");
    // Retired replicas leave their slot at once and stop in the background.
    w.eventually("blue retired and stopped", Duration::from_secs(60), || {
        w.running() == w.expected("green", "cutover-demo:b", 2)
    });
    assert_eq!(
        w.running(),
        w.expected("green", "cutover-demo:b", 2),
        "exactly the desired replicas: {:?}",
        w.containers()
    );
    let kept = w
        .containers()
        .into_iter()
        .filter(|c| c.starts_with(&format!("{}-r", w.svc)) && c.ends_with(" exited"))
        .count();
    assert_eq!(
        kept,
        2,
        "the old revision is kept once: {:?}",
        w.containers()
    );
}

#[test]
fn sigterm_of_the_leader_hands_over_without_waiting_for_the_lock_delay() {
    let mut w = World::new("sigterm-leader");
    // A lock delay far longer than the hand-over may take.
    w.start_daemon(Duration::from_secs(30));
    w.start_daemon(Duration::from_secs(30));
    w.eventually("a leader", Duration::from_secs(30), || w.leader().is_some());
    w.apply(&w.svc, &demo(&w.svc, "cutover-demo:a", 1));
    w.wait_available(&w.svc);
    let leader = w.leader().expect("a leader");
    let survivor = 1 - leader;

    signal(w.pid(leader), "TERM");
    let took = w.eventually("the survivor to lead", Duration::from_secs(20), || {
        w.leader() == Some(survivor)
    });
    assert!(
        took < Duration::from_secs(10),
        "the hand-over took {took:?}\n{}",
        w.logs()
    );
    let mut child = w.daemons[leader].take().unwrap();
    assert!(child.wait().unwrap().success(), "{}", w.logs());
    assert!(
        w.log(leader).contains("released leadership"),
        "{}",
        w.logs()
    );

    // The new leader acts.
    let run = w.cutover(&["scale", &w.svc, "2"]);
    assert!(run.status.success(), "{run}");
    w.eventually("two replicas", Duration::from_secs(60), || {
        w.running().len() == 2
    });
    w.wait_available(&w.svc);
}
