//! A status or request key that holds junk never freezes a service: `cutover run` end to end,
//! against the real Docker engine and a real Consul agent.
//!
//! The daemon runs without a proxy (routing is tested elsewhere), with its own KV prefix,
//! instance label, Docker network and service name, and every container it made is removed
//! when the test ends, even when it fails.

mod support;

use support::{Daemon, World, docker};

/// Starts the daemon. A junk status is noticed at the next resync: nothing watches the
/// status keys.
fn start(w: &World) -> Daemon {
    w.daemon().no_proxy().resync("2s").start()
}

/// The test's service `junk` (short drain and deadline), applied with the CLI.
fn apply(w: &World, image: &str, replicas: u32) {
    let strategy = "  strategy: {blueGreen: {scaleDownDelay: 1s, progressDeadline: 30s}}\n";
    w.apply("service", &w.demo("junk", image, replicas, strategy));
}

/// The status key of `junk` as stored, if it is JSON.
fn stored_status(w: &World) -> Option<serde_json::Value> {
    let text = w.kv_get(&format!("status/{}", w.svc("junk")))?;
    serde_json::from_str(&text).ok()
}

/// The events of a status with `reason`.
fn events_with(status: &serde_json::Value, reason: &str) -> Vec<String> {
    status["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["reason"] == reason)
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_junk_status_is_rebuilt_and_the_service_keeps_converging() {
    let w = World::new("junk-status");
    let d = start(&w);
    let name = w.svc("junk");
    apply(&w, "cutover-demo:a", 2);
    w.wait_available("junk");
    let status_key = w.key(&format!("status/{name}"));

    // A status that is not JSON is rebuilt from the containers, with an event saying so.
    w.kv_put(&format!("status/{name}"), "junk");
    w.eventually("the status to be rebuilt", || {
        stored_status(&w).is_some_and(|s| {
            !events_with(&s, "StatusRebuilt").is_empty()
                && s["phase"] == "Available"
                && s["activeColor"] == "blue"
        })
    });
    let rebuilt = events_with(&stored_status(&w).unwrap(), "StatusRebuilt");
    assert!(
        rebuilt[0].contains(&status_key) && rebuilt[0].contains("expected value"),
        "the event names the key and the decode error: {rebuilt:?}"
    );

    // The service is alive: a stopped replica is started again...
    docker(&["stop", "-t", "1", &format!("{name}-blue-1")]);
    w.eventually("the stopped replica to run again", || {
        w.containers()
            .iter()
            .any(|c| c == "junk-blue-1 cutover-demo:a running")
    });
    // ...and a new image rolls out.
    apply(&w, "cutover-demo:b", 2);
    w.wait_available("junk");
    let status = stored_status(&w).unwrap();
    assert_eq!(status["activeColor"], "green", "{status:#}");
    assert_eq!(
        events_with(&status, "StatusRebuilt").len(),
        1,
        "reported once: {status:#}"
    );
    let log = w.log(d);
    assert_eq!(
        log.lines().filter(|l| l.contains(&status_key)).count(),
        1,
        "{status_key} is logged once\n--- daemon log\n{log}"
    );
}

#[test]
fn a_junk_request_is_reported_once_and_blocks_nothing() {
    let w = World::new("junk-request");
    let d = start(&w);
    let name = w.svc("junk");
    apply(&w, "cutover-demo:a", 1);
    w.wait_available("junk");
    let request_key = w.key(&format!("requests/{name}"));

    // A request that is not JSON is ignored with one event...
    w.kv_put(&format!("requests/{name}"), "{\"action\": \"promote\"");
    w.eventually("the RequestUnreadable event", || {
        stored_status(&w).is_some_and(|s| !events_with(&s, "RequestUnreadable").is_empty())
    });
    // ...and blocks nothing: a scale and a rollout happen while it stays there.
    let run = w.cutover(&["scale", &name, "2"]);
    assert!(run.status.success(), "{run}");
    w.wait_available("junk");
    w.eventually("two blue replicas ready", || {
        stored_status(&w).is_some_and(|s| s["colors"]["blue"]["ready"] == 2)
    });
    apply(&w, "cutover-demo:b", 2);
    w.wait_available("junk");
    let status = stored_status(&w).unwrap();
    assert_eq!(status["activeColor"], "green", "{status:#}");
    let ignored = events_with(&status, "RequestUnreadable");
    assert_eq!(ignored.len(), 1, "reported once: {status:#}");
    assert!(
        ignored[0].contains(&request_key) && ignored[0].contains("EOF while parsing"),
        "the event names the key and the decode error: {ignored:?}"
    );
    let log = w.log(d);
    assert_eq!(
        log.lines().filter(|l| l.contains(&request_key)).count(),
        1,
        "{request_key} is logged once\n--- daemon log\n{log}"
    );
}
