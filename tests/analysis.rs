//! Releases judged by their traffic, end to end against a real daemon, Docker, Consul and
//! HAProxy, under steady load: a release that answers 500s, or answers slowly, is switched
//! back by itself within its bake window, and a good one becomes Available once the window
//! ends.

mod support;

use std::time::Duration;

use tokio::time::Instant;

use support::{Load, World};

/// The path the load requests: a CGI script, so that `FAIL_PERCENT` and `SLOW_MS` apply
/// (`scripts/test-images`).
const PATH: &str = "/cgi-bin/version";

fn manifest(w: &World, image: &str, env: &str, analysis: &str) -> String {
    let extra = format!(
        "  env: {{{env}}}\n  routes: [{{host: {host}}}]\n  strategy:\n    blueGreen:\n      \
         scaleDownDelay: 1s\n      analysis: {{{analysis}}}\n",
        host = w.host("web"),
    );
    w.demo("web", image, 2, &extra)
}

/// What a bad release cost, from the load's failures and the status.
struct Verdict {
    status: serde_json::Value,
    failed: Vec<String>,
    served: u64,
    /// From the first answer of the bad version to the status saying it was switched back.
    exposed: Duration,
}

/// Runs v1 (`cutover-demo:a`), then releases `image` with `env` under load and waits until
/// the daemon rejected it and `version A` serves every request again.
fn release_and_wait_for_the_rollback(w: &World, image: &str, env: &str, analysis: &str) -> Verdict {
    let d = w.daemon().short_lease().start();
    w.apply("web", &manifest(w, "cutover-demo:a", "", analysis));
    w.wait_available("web");
    let load = Load::start_on(w.ports.live, w.host("web"), PATH, 4);
    std::thread::sleep(Duration::from_millis(500));
    w.apply("web", &manifest(w, image, env, analysis));
    let started = Instant::now();
    let mut seen_bad: Option<Instant> = None;
    let mut rolled_back: Option<Instant> = None;
    w.eventually_within(
        "the bad release rejected and switched back",
        Duration::from_secs(90),
        || {
            if seen_bad.is_none() && load.first_seen("version C").is_some() {
                seen_bad = Some(Instant::now());
            }
            let Some(status) = w.try_status("web") else {
                return false;
            };
            let back =
                status["rejected"]["reason"] == "AnalysisFailed" && status["activeColor"] == "blue";
            if back && rolled_back.is_none() {
                rolled_back = Some(Instant::now());
            }
            back
        },
    );
    // Version A serves every request again.
    w.eventually("version A serves again", || {
        (0..5).all(|_| w.through_proxy(d, "web") == "version A [200]")
    });
    std::thread::sleep(Duration::from_millis(500));
    let (served, failed) = load.finish();
    let status = w.status("web");
    let exposed = rolled_back
        .unwrap_or_else(Instant::now)
        .saturating_duration_since(seen_bad.unwrap_or(started));
    Verdict {
        status,
        failed,
        served,
        exposed,
    }
}

/// A release whose version answers 500 on 30 % of requests is switched back to the previous
/// one within its window, by itself; the figures that decided it are in the status, and the
/// rejected revision is not tried again.
#[test]
fn a_release_answering_errors_is_rolled_back_by_itself() {
    let w = World::new("analysis-errors");
    let analysis = "window: 60s, interval: 250ms, minRequests: 20, maxErrorRatio: 0.05";
    let v = release_and_wait_for_the_rollback(&w, "cutover-demo:c", "", analysis);
    let analysis = &v.status["analysis"];
    assert_eq!(analysis["result"], "Failed", "{:#}", v.status);
    assert!(
        analysis["figures"]["requests"].as_u64().unwrap() >= 20,
        "{analysis:#}"
    );
    let message = v.status["rejected"]["message"].as_str().unwrap();
    assert!(
        message.contains("above maxErrorRatio 5.0%") && message.contains("requests failed"),
        "{message}"
    );
    // Every failure is a 500 of the bad version: nothing else broke.
    assert!(
        !v.failed.is_empty(),
        "the bad version served and failed some requests"
    );
    assert!(
        v.failed.iter().all(|f| f.contains("500")),
        "{:?}",
        &v.failed[..v.failed.len().min(10)]
    );
    eprintln!(
        "analysis: {} of {} requests failed between the bad release's first answer and the \
         switch back ({} ms); the status said: {message}",
        v.failed.len(),
        v.served + v.failed.len() as u64,
        v.exposed.as_millis()
    );
    // `cutover status` shows the verdict and its figures.
    let out = w.cutover(&["status", &w.svc("web")]);
    assert!(
        out.stdout.contains("AnalysisFailed") && out.stdout.contains("requests failed"),
        "{out}"
    );
    // Not tried again: no container of the bad version comes back.
    std::thread::sleep(Duration::from_secs(3));
    w.eventually("the rejected revision is gone", || {
        w.running().iter().all(|c| c.contains("cutover-demo:a"))
    });
    assert_eq!(w.status("web")["rejected"]["reason"], "AnalysisFailed");
}

/// A release that answers, but slowly, is switched back on its response time.
#[test]
fn a_slow_release_is_rolled_back_by_itself() {
    let w = World::new("analysis-slow");
    let analysis = "window: 60s, interval: 250ms, minRequests: 20, maxResponseTime: 200ms";
    let v = release_and_wait_for_the_rollback(
        &w,
        "cutover-demo:c",
        "FAIL_PERCENT: '0', SLOW_MS: '600'",
        analysis,
    );
    let message = v.status["rejected"]["message"].as_str().unwrap();
    assert!(message.contains("above maxResponseTime 200ms"), "{message}");
    assert!(v.failed.is_empty(), "slow, not failing: {:?}", v.failed);
    eprintln!(
        "analysis (slow): switched back {} ms after the slow version's first answer: {message}",
        v.exposed.as_millis()
    );
}

/// A good release under analysis is Available only once its window ended, with the figures
/// it passed on; the old color stayed ready until then.
#[test]
fn a_good_release_passes_its_analysis_and_the_old_color_waits_for_the_verdict() {
    let w = World::new("analysis-pass");
    let analysis = "window: 6s, interval: 250ms, minRequests: 20, maxErrorRatio: 0.05";
    let d = w.daemon().short_lease().start();
    w.apply("web", &manifest(&w, "cutover-demo:a", "", analysis));
    w.wait_available("web");
    let load = Load::start_on(w.ports.live, w.host("web"), PATH, 2);
    w.apply("web", &manifest(&w, "cutover-demo:b", "", analysis));
    w.eventually("judging b", || {
        w.try_status("web")
            .is_some_and(|s| s["analysis"]["result"] == "Running")
    });
    // Past scaleDownDelay (1 s), inside the window: blue still runs, ready to take over.
    std::thread::sleep(Duration::from_secs(2));
    let status = w.status("web");
    assert_eq!(status["phase"], "Progressing", "{status:#}");
    assert_eq!(
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Progressing")
            .map(|c| c["reason"].clone()),
        Some("Analyzing".into()),
        "{status:#}"
    );
    assert!(
        w.running()
            .iter()
            .filter(|c| c.contains("cutover-demo:a"))
            .count()
            == 2,
        "{:?}",
        w.running()
    );
    w.wait_available("web");
    let status = w.status("web");
    assert_eq!(status["analysis"]["result"], "Passed", "{status:#}");
    assert!(
        status["analysis"]["figures"]["requests"].as_u64().unwrap() >= 20,
        "{status:#}"
    );
    assert_eq!(w.through_proxy(d, "web"), "version B [200]");
    load.finish_without_failures("a good release under analysis", 50, || w.logs());
}
