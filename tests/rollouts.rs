//! Rollouts end to end, against a real daemon, Docker, Consul and HAProxy: the sequences
//! that used to wedge or slow the daemon, the per-revision settings, the gates of a switch,
//! a panicking reconcile, and the mass-deletion guard's confirmation.

mod support;

use std::time::Duration;

use support::{World, docker};

/// A manifest of the test's service `short` with its health check and extra spec lines.
fn manifest(
    w: &World,
    short: &str,
    image: &str,
    replicas: u32,
    health: &str,
    extra: &str,
) -> String {
    format!(
        "apiVersion: cutover.dev/v1
kind: Service
metadata: {{name: {name}}}
spec:
  image: {image}
  replicas: {replicas}
  port: 80
  health: {{{health}, interval: 200ms, timeout: 150ms}}
  routes: [{{host: {host}}}]
{extra}",
        name = w.svc(short),
        host = w.host(short),
    )
}

const FAST: &str = "  strategy: {blueGreen: {scaleDownDelay: 1s, progressDeadline: 30s}}\n";

/// `docker inspect -f FORMAT` of the test's container `name` (as `containers()` shows it).
fn inspect(w: &World, name: &str, format: &str) -> String {
    let full = name.replacen('-', &format!("-{}-", w.tag), 1);
    docker(&["inspect", "-f", format, &full]).trim().to_owned()
}

/// A Docker timestamp (RFC 3339 with nanoseconds) in milliseconds since the Unix epoch.
fn millis(rfc3339: &str) -> u128 {
    humantime::parse_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339:?}: {e}"))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// The sequence that wedged the daemon for good: a first deploy whose health path is wrong
/// never gets healthy, and the user corrects the path while it is coming up.
#[test]
fn a_spec_corrected_during_the_first_rollout_converges() {
    let w = World::new("first-fix");
    w.daemon().short_lease().start();
    w.apply(
        "web",
        &manifest(&w, "web", "cutover-demo:a", 2, "path: /nope", FAST),
    );
    w.eventually("the first replicas", || {
        w.containers()
            .iter()
            .filter(|c| c.ends_with("running"))
            .count()
            == 2
    });
    w.wait_phase("web", "Progressing");
    w.apply(
        "web",
        &manifest(
            &w,
            "web",
            "cutover-demo:a",
            2,
            "path: /cgi-bin/health",
            FAST,
        ),
    );
    w.wait_available("web");
    w.eventually("only the corrected revision", || {
        w.containers()
            == [
                "web-blue-1 cutover-demo:a running",
                "web-blue-2 cutover-demo:a running",
            ]
    });
    assert!(!w.logs().contains("panicked"), "{}", w.logs());
}

/// Back-to-back releases of an app whose PID 1 ignores SIGTERM: each stop takes Docker's
/// whole 10 s grace period, and none of them delays a release. The old replicas of a
/// release are stopped in parallel, and the next release's replicas are created while they
/// are still stopping.
#[test]
fn back_to_back_releases_never_wait_for_old_replicas_to_stop() {
    let w = World::new("back-to-back");
    let d = w.daemon().short_lease().start();
    let stubborn = "  command: [httpd, -f, -p, '80', -h, /www]\n";
    let spec = |image: &str| {
        manifest(
            &w,
            "web",
            image,
            2,
            "path: /cgi-bin/health",
            &format!("{stubborn}{FAST}"),
        )
    };
    w.apply("web", &spec("cutover-demo:a"));
    w.wait_available("web");
    w.apply("web", &spec("cutover-demo:b"));
    w.wait_available("web");
    // Right after: a's replicas are draining (1 s) and will take 10 s to stop.
    w.apply("web", &spec("cutover-demo:a"));
    w.wait_available("web");
    w.eventually("the third release serves", || {
        w.through_proxy(d, "web") == "version A [200]"
    });
    // Everything but the live color stops, in the end.
    w.eventually("the old replicas stopped", || {
        let running: Vec<String> = w
            .containers()
            .into_iter()
            .filter(|c| c.ends_with("running"))
            .collect();
        running.len() == 2 && running.iter().all(|c| c.starts_with("web-blue-"))
    });
    let archived: Vec<String> = w
        .containers()
        .into_iter()
        .filter_map(|c| c.split(' ').next().map(str::to_owned))
        .filter(|n| n.starts_with("web-r"))
        .collect();
    assert!(!archived.is_empty(), "{:?}", w.containers());
    let finished: Vec<u128> = archived
        .iter()
        .map(|n| millis(&inspect(&w, n, "{{.State.FinishedAt}}")))
        .collect();
    let created: Vec<u128> = ["web-blue-1", "web-blue-2"]
        .iter()
        .map(|n| millis(&inspect(&w, n, "{{.Created}}")))
        .collect();
    // b's two replicas (the release before last) stopped together, not one after the other.
    let b_stops: Vec<u128> = archived
        .iter()
        .zip(&finished)
        .filter(|(n, _)| inspect(&w, n, "{{.Config.Image}}") == "cutover-demo:b")
        .map(|(_, f)| *f)
        .collect();
    assert_eq!(b_stops.len(), 2, "{archived:?}");
    let apart = b_stops[0].abs_diff(b_stops[1]);
    assert!(
        apart < 5_000,
        "the two old replicas stopped {apart} ms apart: serially, not in parallel"
    );
    // The third release's replicas were created before b's replicas had stopped.
    let latest_created = created.iter().max().unwrap();
    assert!(
        latest_created < b_stops.iter().max().unwrap(),
        "the release waited for the old replicas to stop (created {created:?}, stopped {b_stops:?})"
    );
}

/// `stopSignal` and `stopGracePeriod` are the replica's own, given to Docker at creation.
#[test]
fn the_stop_signal_and_grace_period_are_the_replicas_own() {
    let w = World::new("stop-settings");
    w.daemon().short_lease().no_proxy().start();
    let extra = format!("  stopSignal: quit\n  stopGracePeriod: 1500ms\n{FAST}");
    w.apply(
        "web",
        &manifest(
            &w,
            "web",
            "cutover-demo:a",
            1,
            "path: /cgi-bin/health",
            &extra,
        ),
    );
    w.wait_available("web");
    assert_eq!(
        inspect(&w, "web-blue-1", "{{.Config.StopSignal}}"),
        "SIGQUIT"
    );
    assert_eq!(inspect(&w, "web-blue-1", "{{.Config.StopTimeout}}"), "2");
}

/// An app that checks the `Host` header: cutover's probe and HAProxy's check both send
/// `health.host`, so it gets healthy and takes traffic.
#[test]
fn both_checks_send_the_health_host() {
    let w = World::new("health-host");
    let d = w.daemon().short_lease().start();
    let health = "path: /cgi-bin/host-health, host: healthy.example";
    w.apply(
        "web",
        &manifest(&w, "web", "cutover-demo:a", 1, health, FAST),
    );
    w.wait_available("web");
    w.eventually("traffic", || w.through_proxy(d, "web") == "version A [200]");
}

/// A release that passes cutover's probe but that HAProxy's own check sees DOWN (the app
/// wants an `Accept` header, which HAProxy's check does not send) is never switched to: the
/// live version keeps serving until the release's deadline rejects it.
#[test]
fn a_color_haproxy_sees_down_is_never_switched_to() {
    let w = World::new("haproxy-down");
    let d = w.daemon().short_lease().start();
    let strategy = "  strategy: {blueGreen: {scaleDownDelay: 1s, progressDeadline: 12s}}\n";
    w.apply(
        "web",
        &manifest(
            &w,
            "web",
            "cutover-demo:a",
            1,
            "path: /cgi-bin/health",
            strategy,
        ),
    );
    w.wait_available("web");
    w.apply(
        "web",
        &manifest(
            &w,
            "web",
            "cutover-demo:b",
            1,
            "path: /cgi-bin/accept-health",
            strategy,
        ),
    );
    w.eventually("cutover sees the release ready, HAProxy does not", || {
        w.try_status("web").is_some_and(|s| {
            s["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["reason"] == "WaitingForProxies"))
        })
    });
    let mut answers = std::collections::BTreeMap::<String, u32>::new();
    w.eventually("the release rejected by its deadline", || {
        *answers.entry(w.through_proxy(d, "web")).or_default() += 1;
        w.try_status("web").is_some_and(|s| {
            s["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["reason"] == "ProgressDeadlineExceeded"))
        })
    });
    assert_eq!(
        answers.keys().collect::<Vec<_>>(),
        ["version A [200]"],
        "the live version served every request: {answers:?}"
    );
    assert_eq!(w.status("web")["activeColor"], "blue");
}

/// A reconcile that panics (injected in debug builds) marks its service Degraded with the
/// panic's message, counts it, and leaves the worker and the other services alone.
#[test]
fn a_panicking_reconcile_wedges_nothing() {
    let w = World::new("panic");
    let d = w
        .daemon()
        .short_lease()
        .no_proxy()
        .env("CUTOVER_DEBUG_PANIC_SERVICE", &w.svc("bad"))
        .start();
    w.apply("bad", &w.demo("bad", "cutover-demo:a", 1, FAST));
    w.apply("good", &w.demo("good", "cutover-demo:a", 1, FAST));
    w.wait_available("good");
    w.eventually("the panic in the status", || {
        w.try_status("bad").is_some_and(|s| {
            s["phase"] == "Degraded"
                && s["conditions"].as_array().is_some_and(|c| {
                    c.iter().any(|c| {
                        c["reason"] == "InternalError"
                            && c["message"].as_str().is_some_and(|m| {
                                m.contains("injected by CUTOVER_DEBUG_PANIC_SERVICE")
                            })
                    })
                })
        })
    });
    let panics = w.metric(d, "cutover_reconcile_panics_total").unwrap();
    let count: f64 = panics.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1.0, "{panics}");
    w.assert_running(d);
    // The worker goes on: a change of the good service still rolls out.
    w.apply("good", &w.demo("good", "cutover-demo:b", 1, FAST));
    w.wait_available("good");
    assert_eq!(
        w.status("good")["colors"]["green"]["image"],
        "cutover-demo:b"
    );
}

/// Specs deleted while the daemon was down: at its start the guard is already right (a
/// Docker event right after start must not let the mass deletion through).
#[test]
fn the_deletion_guard_holds_from_the_first_reconcile() {
    let w = World::new("guard-start");
    let d = w.daemon().short_lease().no_proxy().start();
    w.apply("web", &w.demo("web", "cutover-demo:a", 1, FAST));
    w.apply("api", &w.demo("api", "cutover-demo:a", 1, FAST));
    w.wait_available("web");
    w.wait_available("api");
    w.kill(d);
    // Deleted behind cutover's back (`consul kv delete`, no intent recorded): what the
    // guard is for.
    for short in ["web", "api"] {
        w.kv_delete(&format!("services/{}", w.svc(short)));
    }
    w.daemon().short_lease().no_proxy().start();
    // Events right after the start: a replica stops.
    docker(&["stop", "-t", "1", &format!("web-{}-blue-1", w.tag)]);
    w.eventually("the refusal", || {
        w.try_status("web").is_some_and(|s| {
            s["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["reason"] == "DeletionRefused"))
        })
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        w.containers().len(),
        2,
        "nothing removed: {:?}",
        w.containers()
    );
    assert!(
        w.kv_get("control/deletion-refused").is_some(),
        "published for cutover prune"
    );
}

/// A confirmation names what it confirms, wakes the daemon, is used up, and expires.
#[test]
fn a_prune_confirmation_is_used_up_and_expires() {
    let w = World::new("confirm");
    w.daemon().short_lease().no_proxy().start();
    let deploy = || {
        w.apply("web", &w.demo("web", "cutover-demo:a", 1, FAST));
        w.apply("api", &w.demo("api", "cutover-demo:a", 1, FAST));
        w.wait_available("web");
        w.wait_available("api");
    };
    // A stray recursive delete: every spec at once.
    let delete_all = || {
        let out = std::process::Command::new("consul")
            .args(["kv", "delete", "-recurse"])
            .arg(format!("-http-addr={}", w.agent.address()))
            .arg(w.key("services/"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    let refused = |short: &str| {
        w.try_status(short).is_some_and(|s| {
            s["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["reason"] == "DeletionRefused"))
        })
    };
    deploy();
    delete_all();
    w.eventually("the refusal", || refused("web") && refused("api"));
    let run = w.cutover(&["prune", "--confirm"]);
    assert!(run.status.success(), "{run}");
    // No resync needed: the confirmation wakes the daemon (resync is 5 s; this is faster).
    w.eventually_within("the confirmed removal", Duration::from_secs(4), || {
        w.containers().is_empty()
    });
    w.eventually("the confirmation used up", || {
        w.kv_get("control/prune-confirm").is_none()
    });

    // The same names again: a new mass deletion needs a new confirmation.
    deploy();
    delete_all();
    w.eventually("the refusal again", || refused("web") && refused("api"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(w.containers().len(), 2, "{:?}", w.containers());

    // A confirmation that expired counts for nothing.
    let run = w.cutover(&["prune", "--confirm", "--for", "1ms"]);
    assert!(run.status.success(), "{run}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(w.containers().len(), 2, "{:?}", w.containers());
}

/// A rejected revision is tried again with `cutover retry`, without changing the spec: a
/// re-apply of the same content changes nothing (the key is not rewritten), as documented.
#[test]
fn a_rejected_revision_is_retried_with_cutover_retry() {
    let w = World::new("retry");
    let d = w.daemon().short_lease().start();
    let spec = |image: &str| {
        manifest(
            &w,
            "web",
            image,
            2,
            "path: /cgi-bin/health",
            &format!("  env: {{RELEASE: \"1\"}}\n{FAST}"),
        )
    };
    w.apply("web", &spec("cutover-demo:a"));
    w.wait_available("web");
    w.apply("web", &spec("cutover-demo:b"));
    w.wait_available("web");
    w.eventually("B serves", || {
        w.through_proxy(d, "web") == "version B [200]"
    });
    let b = w.status("web")["colors"][w.status("web")["activeColor"].as_str().unwrap()]["revision"]
        .clone();

    let run = w.cutover(&["rollback", &w.svc("web")]);
    assert!(run.status.success(), "{run}\n{}", w.logs());
    w.eventually("A serves again", || {
        w.through_proxy(d, "web") == "version A [200]"
    });
    assert_eq!(w.status("web")["rejected"]["revision"], b);

    // The same content again: unchanged, and B stays rejected.
    let path = w.dir.write("web.yaml", &spec("cutover-demo:b"));
    let run = w.cutover(&["apply", "-f", &path.to_string_lossy()]);
    assert!(
        run.status.success() && run.stdout.contains("unchanged"),
        "{run}"
    );
    assert_eq!(w.status("web")["rejected"]["revision"], b);

    let run = w.cutover(&["retry", &w.svc("web")]);
    assert!(run.status.success(), "{run}\n{}", w.logs());
    assert!(run.stdout.contains("Done"), "{run}");
    w.eventually("B serves again", || {
        w.through_proxy(d, "web") == "version B [200]"
    });
    w.wait_available("web");
    let status = w.status("web");
    assert!(status["rejected"].is_null(), "{status}");
    assert_eq!(status["lastRequest"]["action"], "retry");
    // Its history entry is no longer rejected: once a newer release retires it, it is
    // retired like any other.
    w.apply(
        "web",
        &spec("cutover-demo:a").replace("RELEASE: \"1\"", "RELEASE: \"2\""),
    );
    w.wait_available("web");
    let run = w.cutover(&["history", &w.svc("web"), "-o", "json"]);
    assert!(run.status.success(), "{run}");
    let rows: serde_json::Value = serde_json::from_str(&run.stdout).expect("history JSON");
    let row_b = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["revision"] == b)
        .unwrap_or_else(|| panic!("no history of {b}: {run}"));
    assert_eq!(row_b["outcome"], "retired", "{run}");

    // Nothing rejected: nothing to retry, and a stale revision is refused.
    let run = w.cutover(&["retry", &w.svc("web")]);
    assert_eq!(run.status.code(), Some(1), "{run}");
    let run = w.cutover(&["retry", &w.svc("web"), "--revision", "0000000000"]);
    assert_eq!(run.status.code(), Some(1), "{run}");
    assert!(run.stderr.contains("Stale"), "{run}");
}

/// The daemon does not ask Docker about an image its replicas run at every reconcile; when
/// it is about to create from one, it checks that the image is still there. An image untagged
/// under running replicas (`docker rmi -f`) is reported, not created from, and the live color
/// keeps serving.
#[test]
fn an_image_removed_under_running_replicas_is_noticed_before_creating_from_it() {
    let w = World::new("rmi");
    w.daemon().short_lease().no_proxy().start();
    let image = format!("cutover-rmi-{}:1", w.tag);
    docker(&["tag", "cutover-demo:a", &image]);
    let _untag = Untag(image.clone());
    w.apply("web", &w.demo("web", &image, 1, FAST));
    w.wait_available("web");
    docker(&["rmi", "-f", &image]);
    let run = w.cutover(&["scale", &w.svc("web"), "2"]);
    assert!(run.status.success(), "{run}");
    w.eventually("the missing image reported", || {
        w.status("web")["conditions"].as_array().is_some_and(|c| {
            c.iter().any(|c| {
                c["type"] == "Degraded"
                    && c["status"] == "True"
                    && (c["reason"] == "ImageNotFound" || c["reason"] == "ImagePullFailed")
            })
        })
    });
    // (Docker lists the replica by its image's id now that the tag is gone.)
    let running = w.running();
    assert!(
        running.len() == 1 && running[0].starts_with("web-blue-1 "),
        "nothing created from the missing image, the live replica runs: {running:?}"
    );
}

/// Removes a tag made for a test, also when the test fails.
struct Untag(String);

impl Drop for Untag {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rmi", "-f", &self.0])
            .output();
    }
}
