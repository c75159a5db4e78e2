//! Weighted canaries end to end, against a real daemon, Docker, Consul and HAProxy, under
//! steady load (each request on a new connection, on a CGI path so that the demo image's
//! `FAIL_PERCENT` applies): the share of requests the new revision answers at a weight,
//! `cutover promote` sending every request to it, `cutover abort` sending every request back,
//! and an analysis step that rejects a failing revision by itself. Each test prints what it
//! measured (docs/traffic.md quotes it).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::{Daemon, Load, World};

/// The path the load requests: a CGI script, so that `FAIL_PERCENT` applies
/// (`scripts/test-images`).
const PATH: &str = "/cgi-bin/version";

/// Clients of the load, each sending its requests one after the other on new connections.
const CLIENTS: usize = 4;

fn manifest(w: &World, image: &str, steps: &str) -> String {
    let extra = format!(
        "  routes: [{{host: {host}}}]\n  strategy:\n    canary:\n      scaleDownDelay: 1s\n      \
         steps: {steps}\n",
        host = w.host("web"),
    );
    w.demo("web", image, 2, &extra)
}

fn count(counts: &BTreeMap<String, u64>, body: &str) -> u64 {
    counts.get(body).copied().unwrap_or(0)
}

/// What the load answered between two snapshots of its counts: (A, B, C, failed).
fn answered_between(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> (u64, u64, u64, u64) {
    let delta = |body| count(after, body) - count(before, body);
    (
        delta("version A"),
        delta("version B"),
        delta("version C"),
        delta("failed"),
    )
}

/// Waits until the load answered `requests` more requests than in `since`, and returns the
/// counts then.
fn after_requests(
    w: &World,
    load: &Load,
    since: &BTreeMap<String, u64>,
    requests: u64,
) -> BTreeMap<String, u64> {
    let total = |counts: &BTreeMap<String, u64>| counts.values().sum::<u64>();
    let start = total(since);
    w.eventually_within(
        &format!("{requests} more requests"),
        Duration::from_secs(180),
        || total(&load.counts()) >= start + requests,
    );
    load.counts()
}

/// Runs v1 (`cutover-demo:a`, 2 replicas), starts the load, then releases `cutover-demo:b`
/// as a canary with `steps` and waits until it is paused for `cutover promote` (its weight
/// served by every proxy).
fn canary_paused(w: &World, steps: &str) -> (Daemon, Load) {
    let d = w.daemon().short_lease().start();
    w.apply("web", &manifest(w, "cutover-demo:a", steps));
    w.wait_available("web");
    let load = Load::start_on(w.ports.live, w.host("web"), PATH, CLIENTS);
    std::thread::sleep(Duration::from_millis(500));
    w.apply("web", &manifest(w, "cutover-demo:b", steps));
    w.wait_phase("web", "Preview");
    (d, load)
}

/// A canary at 10 % answers about 10 % of the requests (measured over a few thousand); then
/// `cutover promote` skips the pause and every request goes to the new revision; nothing
/// fails on the way.
#[test]
fn a_canary_at_10_percent_answers_a_tenth_and_promote_sends_every_request_to_it() {
    let w = World::new("canary-share");
    let (d, load) = canary_paused(&w, "[{weight: 10}, {pause: {}}]");
    let status = w.status("web");
    assert_eq!(status["canary"]["weight"], 10, "{status:#}");
    assert_eq!(status["canary"]["step"], 2, "{status:#}");
    assert_eq!(status["activeColor"], "blue", "{status:#}");
    let out = w.cutover(&["status", &w.svc("web")]);
    assert!(
        out.stdout
            .contains("Canary: step 2 of 2: 10% of requests to revision"),
        "{out}"
    );
    let weight = format!(
        "cutover_service_canary_weight{{service=\"{}\",color=\"green\"}}",
        w.svc("web")
    );
    assert_eq!(w.metric(d, &weight), Some(format!("{weight} 10")));

    let before = load.counts();
    let after = after_requests(&w, &load, &before, 3_000);
    let (a, b, c, failed) = answered_between(&before, &after);
    let share = 100.0 * b as f64 / (a + b).max(1) as f64;
    eprintln!(
        "canary at 10%: {b} of {} requests answered by version B ({share:.1}%), {failed} failed",
        a + b + c + failed
    );
    assert_eq!((c, failed), (0, 0), "{after:?}");
    assert!((5.0..=15.0).contains(&share), "{share:.1}% to B: {after:?}");

    let run = w.cutover(&["promote", &w.svc("web")]);
    assert!(run.status.success(), "{run}");
    w.wait_available("web");
    let status = w.status("web");
    assert_eq!(status["activeColor"], "green", "{status:#}");
    assert!(status.get("canary").is_none(), "{status:#}");
    // Every proxy serves the switch once the service is Available; requests sent before it
    // may still be answering.
    std::thread::sleep(Duration::from_millis(500));
    let before = load.counts();
    let after = after_requests(&w, &load, &before, 500);
    let (a, b, _, failed) = answered_between(&before, &after);
    eprintln!(
        "after promote: {b} of {} requests answered by version B",
        a + b + failed
    );
    assert_eq!((a, failed), (0, 0), "{after:?}");
    let served = load.finish_without_failures("a canary promoted", 3_000, || w.logs());
    eprintln!("canary promoted: {served} requests in all, none failed");
}

/// `cutover abort` during a canary sends every request back to the old revision at once and
/// rejects the new one; nothing fails on the way.
#[test]
fn abort_during_a_canary_sends_every_request_back_and_fails_none() {
    let w = World::new("canary-abort");
    let (_, load) = canary_paused(&w, "[{weight: 50}, {pause: {}}]");
    let before = load.counts();
    let after = after_requests(&w, &load, &before, 400);
    let (a, b, _, _) = answered_between(&before, &after);
    eprintln!("canary at 50% before the abort: A {a}, B {b}");
    assert!(b > 0 && a > 0, "{after:?}");

    let run = w.cutover(&["abort", &w.svc("web")]);
    assert!(run.status.success(), "{run}");
    w.eventually("the canary stopped and its revision rejected", || {
        w.try_status("web")
            .is_some_and(|s| s["rejected"]["reason"] == "Aborted" && s.get("canary").is_none())
    });
    let status = w.status("web");
    assert_eq!(status["activeColor"], "blue", "{status:#}");
    std::thread::sleep(Duration::from_millis(500));
    let before = load.counts();
    let after = after_requests(&w, &load, &before, 1_000);
    let (a, b, _, failed) = answered_between(&before, &after);
    eprintln!(
        "after the abort: {a} of {} requests answered by version A",
        a + b + failed
    );
    assert_eq!((b, failed), (0, 0), "{after:?}");
    w.eventually("the canary's replicas are gone", || {
        w.running().iter().all(|c| c.contains("cutover-demo:a"))
    });
    let served = load.finish_without_failures("a canary aborted", 1_000, || w.logs());
    eprintln!("canary aborted: {served} requests in all, none failed");
}

/// A canary whose revision answers 500 on 30 % of its requests (`cutover-demo:c`) is judged
/// at 20 % by its analysis step and rejected by itself: every request goes back to the old
/// revision, and only the bad revision's own answers failed.
#[test]
fn a_failing_canary_is_rejected_by_its_analysis_step_and_every_request_goes_back() {
    let w = World::new("canary-analysis");
    let steps = "[{weight: 20}, {analysis: {window: 20s, maxErrorRatio: 0.05, minRequests: 20}}]";
    let d = w.daemon().short_lease().start();
    w.apply("web", &manifest(&w, "cutover-demo:a", steps));
    w.wait_available("web");
    let load = Load::start_on(w.ports.live, w.host("web"), PATH, CLIENTS);
    std::thread::sleep(Duration::from_millis(500));
    w.apply("web", &manifest(&w, "cutover-demo:c", steps));
    let mut first_bad = None;
    let rejected_after = w.eventually_within(
        "the failing canary rejected",
        Duration::from_secs(120),
        || {
            if first_bad.is_none() {
                first_bad = load.first_seen("version C");
            }
            w.try_status("web")
                .is_some_and(|s| s["rejected"]["reason"] == "AnalysisFailed")
        },
    );
    let rejected_at = std::time::SystemTime::now();
    let status = w.status("web");
    assert_eq!(status["activeColor"], "blue", "{status:#}");
    assert!(status.get("canary").is_none(), "{status:#}");
    let message = status["rejected"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("into canary step 2 of 2 (20% of requests)")
            && message.contains("above maxErrorRatio 5.0%"),
        "{message}"
    );
    w.eventually("version A serves again", || {
        (0..5).all(|_| w.through_proxy(d, "web") == "version A [200]")
    });
    std::thread::sleep(Duration::from_millis(500));
    let counts = load.counts();
    let (ok, failed) = load.finish();
    let answered_c = count(&counts, "version C");
    eprintln!(
        "failing canary at 20%: rejected {} ms after its first answer ({rejected_after:?} after \
         the release); {} of {} requests failed (all 500s of version C, which answered {} \
         others with a 200); the status said: {message}",
        first_bad
            .and_then(|t| rejected_at.duration_since(t).ok())
            .map_or(0, |d| d.as_millis()),
        failed.len(),
        ok + failed.len() as u64,
        answered_c
    );
    assert!(
        !failed.is_empty(),
        "the bad revision answered and failed some requests"
    );
    assert!(
        failed.iter().all(|f| f.contains("500")),
        "{:?}",
        &failed[..failed.len().min(10)]
    );
    let out = w.cutover(&["status", &w.svc("web")]);
    assert!(out.stdout.contains("AnalysisFailed"), "{out}");
}
