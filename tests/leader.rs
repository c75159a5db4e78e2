//! High availability: several `cutover run` on one prefix elect one leader with a Consul lock.
//!
//! The election itself is tested through the library against a real agent (who wins, a fast
//! hand-over on resign, fencing when Consul stops answering); the daemons end to end against
//! the real Docker engine (one leader, a kill -9 of the leader in the middle of a rollout, a
//! SIGTERM hand-over). Each test has its own prefix, instance label, network and names, and
//! removes what it made, even when it fails.

mod support;

use std::time::Duration;

use cutover::consul::{Client, KvEntry};
use cutover::leader::{self, Config, Election, Holder, Leadership, Role};
use tokio::time::Instant;

use support::{Agent, Daemon, World, agent, signal, unique_prefix};

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

/// Starts one more daemon with the test TTL and this lock delay. Several daemons on one
/// machine: no HAProxy (this is about the controller).
fn start(w: &World, lock_delay: Duration) -> Daemon {
    w.daemon().lease(TTL, lock_delay).no_proxy().start()
}

/// The other one of two daemons.
fn other(pair: [Daemon; 2], one: Daemon) -> Daemon {
    if one == pair[0] { pair[1] } else { pair[0] }
}

/// The test's service `ha`: health on the CGI script, short drain and deadline for quick
/// tests.
fn demo(w: &World, image: &str, replicas: u32) -> String {
    let strategy = "  strategy: {blueGreen: {scaleDownDelay: 3s, progressDeadline: 60s}}\n";
    w.demo("ha", image, replicas, strategy)
}

/// The running replicas of the service in `color`, as `name image state`.
fn expected(color: &str, image: &str, replicas: u32) -> Vec<String> {
    (1..=replicas)
        .map(|n| format!("ha-{color}-{n} {image} running"))
        .collect()
}

#[test]
fn two_daemons_elect_one_leader_and_a_rollout_makes_no_duplicates() {
    let w = World::new("two-daemons");
    let pair = [start(&w, LOCK_DELAY), start(&w, LOCK_DELAY)];
    w.eventually_within("a leader", Duration::from_secs(30), || w.leader().is_some());
    let leader = w.leader().unwrap();
    let follower = other(pair, leader);
    w.eventually_within("the follower to follow", Duration::from_secs(10), || {
        w.log(follower).contains("following ")
    });
    assert_eq!(
        w.metric(leader, "cutover_leader").as_deref(),
        Some("cutover_leader 1")
    );
    assert_eq!(
        w.metric(follower, "cutover_leader").as_deref(),
        Some("cutover_leader 0")
    );

    w.apply("ha", &demo(&w, "cutover-demo:a", 2));
    w.wait_available("ha");
    w.apply("ha", &demo(&w, "cutover-demo:b", 2));
    w.wait_available("ha");
    assert_eq!(w.status("ha")["activeColor"], "green");
    // Retired replicas leave their slot at once and stop in the background.
    w.eventually_within("blue retired and stopped", Duration::from_secs(60), || {
        w.running() == expected("green", "cutover-demo:b", 2)
    });
    assert_eq!(w.running(), expected("green", "cutover-demo:b", 2));
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
    let w = World::new("kill-leader");
    let pair = [start(&w, LOCK_DELAY), start(&w, LOCK_DELAY)];
    w.eventually_within("a leader", Duration::from_secs(30), || w.leader().is_some());
    w.apply("ha", &demo(&w, "cutover-demo:a", 2));
    w.wait_available("ha");
    let leader = w.leader().expect("a leader");
    let survivor = other(pair, leader);

    w.apply("ha", &demo(&w, "cutover-demo:b", 2));
    w.eventually_within("green created", Duration::from_secs(30), || {
        w.containers().iter().any(|c| c.starts_with("ha-green-"))
    });
    w.kill(leader);
    // Consul invalidates the session between TTL and 2 x TTL after its last renewal, then
    // keeps the lock for the lock delay.
    let bound = LOCK_DELAY + 2 * TTL + Duration::from_secs(10);
    let took = w.eventually_within("the survivor to lead", bound, || {
        w.leader() == Some(survivor)
    });
    eprintln!("the survivor took over {took:?} after the kill");
    assert!(w.log(survivor).contains("became leader"), "{}", w.logs());

    w.wait_available("ha");
    assert_eq!(w.status("ha")["activeColor"], "green");
    // Retired replicas leave their slot at once and stop in the background.
    w.eventually_within("blue retired and stopped", Duration::from_secs(60), || {
        w.running() == expected("green", "cutover-demo:b", 2)
    });
    assert_eq!(
        w.running(),
        expected("green", "cutover-demo:b", 2),
        "exactly the desired replicas: {:?}",
        w.containers()
    );
    let kept = w
        .containers()
        .into_iter()
        .filter(|c| c.starts_with("ha-r") && c.ends_with(" exited"))
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
    let w = World::new("sigterm-leader");
    // A lock delay far longer than the hand-over may take.
    let pair = [
        start(&w, Duration::from_secs(30)),
        start(&w, Duration::from_secs(30)),
    ];
    w.eventually_within("a leader", Duration::from_secs(30), || w.leader().is_some());
    w.apply("ha", &demo(&w, "cutover-demo:a", 1));
    w.wait_available("ha");
    let leader = w.leader().expect("a leader");
    let survivor = other(pair, leader);

    w.sigterm(leader);
    let took = w.eventually_within("the survivor to lead", Duration::from_secs(20), || {
        w.leader() == Some(survivor)
    });
    assert!(
        took < Duration::from_secs(10),
        "the hand-over took {took:?}\n{}",
        w.logs()
    );
    assert!(w.wait_exit(leader).success(), "{}", w.logs());
    assert!(
        w.log(leader).contains("released leadership"),
        "{}",
        w.logs()
    );

    // The new leader acts.
    let run = w.cutover(&["scale", &w.svc("ha"), "2"]);
    assert!(run.status.success(), "{run}");
    w.eventually_within("two replicas", Duration::from_secs(60), || {
        w.running().len() == 2
    });
    w.wait_available("ha");
}
