//! `cutover run` end to end, against the real Docker engine and a real Consul agent.
//!
//! Each test gets its own KV prefix, daemon instance label, Docker network and service
//! names, and removes every container it made when it ends, even when it fails. The images
//! `cutover-demo:a` / `:b` come from `scripts/test-images`.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Agent, Load, World, docker, signal};

fn http_get(ip: &str, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-fsS", "--max-time", "5", &format!("http://{ip}{path}")])
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The demo service `short`, routed by its host, with `extra` lines (a strategy).
fn routed(w: &World, short: &str, image: &str, replicas: u32, extra: &str) -> String {
    let route = format!("  routes: [{{host: {}}}]\n", w.host(short));
    w.demo(short, image, replicas, &(route + extra))
}

/// What the replica answers on `/`, asked from the host through its address.
fn answer(w: &World, container: &str) -> String {
    let ip = docker(&[
        "inspect",
        "-f",
        &format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            w.network
        ),
        &container.replacen('-', &format!("-{}-", w.tag), 1),
    ]);
    http_get(ip.trim(), "/")
}

/// The catalog instances of `service` carrying `tag`, by ID without the test's tag.
fn catalog(w: &World, service: &str, tag: &str) -> Vec<String> {
    let url = format!(
        "http://{}/v1/catalog/service/{}?tag={tag}",
        w.agent.address(),
        w.svc(service)
    );
    let out = Command::new("curl")
        .args(["-fsS", &url])
        .output()
        .expect("run curl");
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut ids: Vec<String> = entries
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["ServiceID"].as_str())
        .map(|id| id.replace(&format!("-{}", w.tag), ""))
        .collect();
    ids.sort();
    ids
}

const FAST: &str = "  strategy: {blueGreen: {scaleDownDelay: 1s, progressDeadline: 30s}}\n";

#[test]
fn a_new_image_rolls_to_the_other_color_and_the_old_one_is_kept_stopped() {
    let w = World::new("rollout");
    let d = w.daemon().short_lease().start();
    w.apply("web", &routed(&w, "web", "cutover-demo:a", 2, FAST));
    w.wait_available("web");
    let status = w.status("web");
    assert_eq!(status["activeColor"], "blue");
    assert_eq!(answer(&w, "web-blue-1"), "version A");
    w.eventually("the route", || {
        w.through_proxy(d, "web") == "version A [200]"
    });
    assert_eq!(
        w.containers(),
        [
            "web-blue-1 cutover-demo:a running",
            "web-blue-2 cutover-demo:a running"
        ]
    );

    w.apply("web", &routed(&w, "web", "cutover-demo:b", 2, FAST));
    w.wait_available("web");
    let status = w.status("web");
    assert_eq!(status["activeColor"], "green");
    assert_eq!(status["colors"]["green"]["image"], "cutover-demo:b");
    assert_eq!(answer(&w, "web-green-1"), "version B");
    assert_eq!(
        w.through_proxy(d, "web"),
        "version B [200]",
        "switched when Available"
    );
    // Consul catalog users see the live replicas apart from the others.
    w.eventually("the live replicas in the catalog", || {
        catalog(&w, "web", "live") == ["web-green-1", "web-green-2"]
    });
    // After scaleDownDelay the old color is stopped and kept under its revision's name.
    w.eventually("blue to be retired", || {
        let c = w.containers();
        c.iter().filter(|l| l.contains(" exited")).count() == 2
            && c.iter().all(|l| !l.starts_with("web-blue-"))
    });
    let c = w.containers();
    assert!(
        c.iter()
            .all(|l| l.starts_with("web-green-") && l.ends_with("running")
                || l.starts_with("web-r") && l.ends_with("exited")),
        "{c:?}"
    );
}

#[test]
fn scaling_changes_the_live_color_in_place() {
    let w = World::new("scale");
    w.daemon().short_lease().start();
    w.apply("web", &routed(&w, "web", "cutover-demo:a", 1, FAST));
    w.wait_available("web");
    let run = w.cutover(&["scale", &w.svc("web"), "+2"]);
    assert!(run.status.success(), "{run}");
    w.wait_available("web");
    assert_eq!(w.status("web")["colors"]["blue"]["ready"], 3);
    let run = w.cutover(&["scale", &w.svc("web"), "-2"]);
    assert!(run.status.success(), "{run}");
    w.eventually("one replica left", || {
        w.containers() == ["web-blue-1 cutover-demo:a running"]
    });
}

/// Docker reports a container's death (`die`) a little before its list shows it stopped, and
/// a `docker kill` sends no event after that: the daemon must look again, not wait for the
/// replica's health checks to fail or for the resync. Found by `scripts/chaos`.
#[test]
fn a_killed_replica_is_started_again_without_waiting_for_health_checks_or_the_resync() {
    let w = World::new("killed");
    w.daemon().short_lease().resync("10m").start();
    // Health checks every 2 minutes: only Docker's events can tell the daemon in time.
    let manifest = w.demo("web", "cutover-demo:a", 2, FAST).replace(
        "interval: 200ms, timeout: 150ms",
        "interval: 2m, timeout: 1s",
    );
    w.apply("web", &manifest);
    w.wait_available("web");
    let both = [
        "web-blue-1 cutover-demo:a running",
        "web-blue-2 cutover-demo:a running",
    ];
    assert_eq!(w.containers(), both);
    docker(&["kill", &format!("{}-blue-2", w.svc("web"))]);
    // Generous: the daemon starts it again about a second after the kill.
    w.eventually_within(
        "the killed replica started again",
        Duration::from_secs(30),
        || w.containers() == both,
    );
}

#[test]
fn an_invalid_spec_leaves_the_old_revision_running_and_says_where() {
    let w = World::new("invalid");
    w.daemon().short_lease().start();
    w.apply("web", &routed(&w, "web", "cutover-demo:a", 2, FAST));
    w.wait_available("web");
    let before = w.containers();

    w.kv_put(
        &format!("services/{}", w.svc("web")),
        &routed(&w, "web", "cutover-demo:b", 2, "  replica: 3\n"),
    );
    let (ok, output) = w.wait("web");
    assert!(!ok, "--wait must fail on an invalid spec: {output}");
    assert!(output.contains("Invalid"), "{output}");
    assert!(
        output.contains(":10:3: spec: unknown field \"replica\", did you mean \"replicas\"?"),
        "{output}"
    );
    let status = w.status("web");
    assert_eq!(status["phase"], "Invalid");
    assert_eq!(status["activeColor"], "blue");
    let table = w.cutover(&["status", &w.svc("web")]);
    assert!(table.stdout.contains("InvalidSpec"), "{table}");
    assert_eq!(w.containers(), before, "nothing changed");
    assert_eq!(answer(&w, "web-blue-1"), "version A");
}

#[test]
fn a_missing_image_is_reported_and_the_live_color_keeps_serving() {
    let w = World::new("missing-image");
    w.daemon().short_lease().start();
    w.apply("web", &routed(&w, "web", "cutover-demo:a", 1, FAST));
    w.wait_available("web");
    w.apply(
        "web",
        &routed(&w, "web", "cutover-missing-image:never", 1, FAST),
    );
    let (ok, output) = w.wait("web");
    assert!(!ok, "{output}");
    assert!(
        output.contains("ImagePullFailed") || output.contains("ImageNotFound"),
        "{output}"
    );
    assert!(output.contains("cutover-missing-image:never"), "{output}");
    assert_eq!(w.containers(), ["web-blue-1 cutover-demo:a running"]);
    assert_eq!(answer(&w, "web-blue-1"), "version A");
}

#[test]
fn a_release_that_never_gets_healthy_is_aborted_and_rejected() {
    let w = World::new("never-healthy");
    w.daemon().short_lease().start();
    let deadline = "  strategy: {blueGreen: {scaleDownDelay: 1s, progressDeadline: 5s}}\n";
    w.apply("web", &routed(&w, "web", "cutover-demo:a", 1, deadline));
    w.wait_available("web");
    let sick = format!(
        "{deadline}  command: [sh, -c, \"touch /tmp/unhealthy; trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait\"]\n"
    );
    w.apply("web", &routed(&w, "web", "cutover-demo:b", 1, &sick));
    let (ok, output) = w.wait("web");
    assert!(!ok, "{output}");
    assert!(output.contains("ProgressDeadlineExceeded"), "{output}");
    let status = w.status("web");
    assert_eq!(status["activeColor"], "blue");
    assert_eq!(status["rejected"]["reason"], "ProgressDeadlineExceeded");
    w.eventually("green to be removed", || {
        w.containers() == ["web-blue-1 cutover-demo:a running"]
    });
    // Not retried: it stays that way across resyncs.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(w.containers(), ["web-blue-1 cutover-demo:a running"]);
    assert_eq!(answer(&w, "web-blue-1"), "version A");
}

#[test]
fn preview_waits_for_promote_and_rollback_switches_back() {
    let w = World::new("promote");
    let d = w.daemon().short_lease().start();
    let manual =
        "  strategy: {blueGreen: {autoPromote: false, previewReplicas: 1, scaleDownDelay: 30s}}\n";
    w.apply("web", &routed(&w, "web", "cutover-demo:a", 2, manual));
    w.wait_available("web");
    w.apply("web", &routed(&w, "web", "cutover-demo:b", 2, manual));
    // What a pipeline runs before its smoke tests against the preview route.
    let run = w.cutover(&[
        "status",
        &w.svc("web"),
        "--wait",
        "--for",
        "preview",
        "--timeout",
        "2m",
    ]);
    assert!(run.status.success(), "{run}\n{}", w.logs());
    assert_eq!(w.status("web")["phase"], "Preview");
    assert_eq!(w.status("web")["activeColor"], "blue");
    assert_eq!(
        w.containers()
            .iter()
            .filter(|c| c.starts_with("web-green-"))
            .count(),
        1
    );
    // Test in production, then switch: the preview listener reaches the new color.
    w.eventually("the preview route", || {
        w.through_preview(d, "web") == "version B [200]"
    });
    assert_eq!(w.through_proxy(d, "web"), "version A [200]");

    let run = w.cutover(&["promote", &w.svc("web")]);
    assert!(run.status.success(), "{run}\n{}", w.logs());
    w.wait_available("web");
    assert_eq!(w.status("web")["activeColor"], "green");
    assert_eq!(w.through_proxy(d, "web"), "version B [200]");
    assert_eq!(
        w.containers()
            .iter()
            .filter(|c| c.starts_with("web-green-"))
            .count(),
        2
    );

    // Blue still drains (scaleDownDelay 30s): rolling back is a switch, nothing to start.
    let run = w.cutover(&["rollback", &w.svc("web")]);
    assert!(run.status.success(), "{run}\n{}", w.logs());
    w.eventually("blue live again", || {
        w.status("web")["activeColor"] == "blue"
    });
    let status = w.status("web");
    assert_eq!(status["rejected"]["reason"], "RolledBack");
    assert_eq!(status["lastRequest"]["result"], "Done");
    // A stale request (for a revision that is no longer live) is refused.
    let run = w.cutover(&["rollback", &w.svc("web"), "--revision", "0000000000"]);
    assert_eq!(run.status.code(), Some(1), "{run}");
    assert!(run.stderr.contains("Stale"), "{run}");
}

/// Where a rollout is when the daemon is killed.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    NewColorCreated,
    NewColorHealthy,
    AfterSwitch,
    DuringDrain,
}

#[test]
fn kill_9_at_any_point_of_a_rollout_then_restart_converges_without_duplicates() {
    for point in [
        KillPoint::NewColorCreated,
        KillPoint::NewColorHealthy,
        KillPoint::AfterSwitch,
        KillPoint::DuringDrain,
    ] {
        let w = World::new("kill");
        let d = w.daemon().short_lease().start();
        // Promotion by hand for the healthy point, so the kill lands between health and switch.
        let strategy = match point {
            KillPoint::NewColorHealthy => {
                "  strategy: {blueGreen: {autoPromote: false, scaleDownDelay: 5s}}\n"
            }
            _ => "  strategy: {blueGreen: {scaleDownDelay: 5s}}\n",
        };
        w.apply("web", &routed(&w, "web", "cutover-demo:a", 2, strategy));
        w.wait_available("web");
        w.apply("web", &routed(&w, "web", "cutover-demo:b", 2, strategy));
        match point {
            KillPoint::NewColorCreated => w.eventually("green created", || {
                w.containers().iter().any(|c| c.starts_with("web-green-"))
            }),
            KillPoint::NewColorHealthy => w.eventually("green healthy in preview", || {
                w.status("web")["phase"] == "Preview"
            }),
            KillPoint::AfterSwitch | KillPoint::DuringDrain => {
                w.eventually("the switch", || w.status("web")["activeColor"] == "green")
            }
        }
        if let KillPoint::DuringDrain = point {
            assert!(
                w.containers()
                    .iter()
                    .any(|c| c.starts_with("web-blue-") && c.ends_with("running")),
                "blue drains"
            );
        }
        w.kill(d);
        w.daemon().short_lease().start();
        if let KillPoint::NewColorHealthy = point {
            let run = w.cutover(&["promote", &w.svc("web")]);
            assert!(run.status.success(), "{point:?}: {run}\n{}", w.logs());
        }
        w.wait_available("web");
        assert_eq!(w.status("web")["activeColor"], "green", "{point:?}");
        // Retired replicas leave their slot at once and stop in the background.
        let green_only = [
            "web-green-1 cutover-demo:b running",
            "web-green-2 cutover-demo:b running",
        ];
        w.eventually("blue retired and stopped", || {
            let running: Vec<String> = w
                .containers()
                .into_iter()
                .filter(|c| c.ends_with("running"))
                .collect();
            running == green_only
        });
        let kept = w
            .containers()
            .into_iter()
            .filter(|c| c.starts_with("web-r"))
            .count();
        assert_eq!(
            kept,
            2,
            "{point:?}: the old revision is kept once: {:?}",
            w.containers()
        );
        // The history agrees with the containers: the live revision is not retired, the
        // kept one is, once.
        let status = w.status("web");
        let history = status["revisionHistory"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let live = status["colors"]["green"]["revision"].clone();
        let records = |image: &str| {
            history
                .iter()
                .filter(|r| r["image"] == image)
                .collect::<Vec<_>>()
        };
        assert!(
            records("cutover-demo:b")
                .iter()
                .all(|r| r["revision"] == live && r["retiredAt"].is_null()),
            "{point:?}: the live revision is not retired: {history:?}"
        );
        let old = records("cutover-demo:a");
        assert!(
            old.len() == 1 && !old[0]["retiredAt"].is_null(),
            "{point:?}: the kept revision is retired, once: {history:?}"
        );
    }
}

#[test]
fn sigterm_stops_the_daemon_and_leaves_every_container_running() {
    let w = World::new("sigterm");
    let d = w.daemon().short_lease().start();
    w.apply("web", &routed(&w, "web", "cutover-demo:a", 2, FAST));
    w.wait_available("web");
    let before = w.containers();
    w.sigterm(d);
    let status = w.wait_exit(d);
    assert!(status.success(), "{status}\n{}", w.logs());
    assert_eq!(w.containers(), before);
}

#[test]
fn abort_removes_the_rollout_in_preview() {
    let w = World::new("abort");
    w.daemon().short_lease().start();
    let manual = "  strategy: {blueGreen: {autoPromote: false}}\n";
    w.apply("web", &routed(&w, "web", "cutover-demo:a", 1, manual));
    w.wait_available("web");
    w.apply("web", &routed(&w, "web", "cutover-demo:b", 1, manual));
    w.eventually("the preview", || w.status("web")["phase"] == "Preview");
    let run = w.cutover(&["abort", &w.svc("web")]);
    assert!(run.status.success(), "{run}\n{}", w.logs());
    w.eventually("green removed", || {
        w.containers() == ["web-blue-1 cutover-demo:a running"]
    });
    let status = w.status("web");
    assert_eq!(status["rejected"]["reason"], "Aborted");
    assert_eq!(status["phase"], "Degraded");
}

#[test]
fn orphans_are_reported_and_removed_only_when_told() {
    let w = World::new("orphans");
    let d = w.daemon().short_lease().start();
    // Another service keeps KV from looking wiped (the deletion guard applies to orphans
    // too). Then a labelled container that no spec or status explains appears.
    w.apply("web", &routed(&w, "web", "cutover-demo:a", 1, FAST));
    w.wait_available("web");
    docker(&[
        "run",
        "-d",
        "--name",
        &format!("ghost-blue-1-{}", w.instance),
        "--network",
        &w.network,
        "--label",
        &format!("dev.cutover.instance={}", w.instance),
        "--label",
        "dev.cutover.service=ghost",
        "--label",
        "dev.cutover.color=blue",
        "--label",
        "dev.cutover.slot=1",
        "--label",
        "dev.cutover.revision=0123456789",
        "--label",
        "dev.cutover.spec-index=1",
        "cutover-demo:a",
    ]);
    w.eventually("the orphan report", || {
        w.logs().contains("orphaned containers")
    });
    assert_eq!(w.containers().len(), 2, "reported, not removed");
    w.kill(d);
    w.daemon().short_lease().arg("--prune-orphans").start();
    w.eventually("the orphan removed", || {
        w.containers() == ["web-blue-1 cutover-demo:a running"]
    });
}

#[test]
fn a_deleted_service_is_removed_and_unlabelled_containers_are_never_touched() {
    let w = World::new("delete");
    w.daemon().short_lease().start();
    w.apply("web", &routed(&w, "web", "cutover-demo:a", 1, FAST));
    w.apply("api", &routed(&w, "api", "cutover-demo:a", 1, FAST));
    w.apply("www", &routed(&w, "www", "cutover-demo:a", 1, FAST));
    w.wait_available("web");
    w.wait_available("api");
    w.wait_available("www");
    // A container on the same network, named like ours, without our labels.
    let stranger = format!("web-blue-9-{}", w.instance);
    docker(&[
        "run",
        "-d",
        "--name",
        &stranger,
        "--network",
        &w.network,
        "cutover-demo:a",
    ]);

    let run = w.cutover(&["delete", &w.svc("web")]);
    assert!(run.status.success(), "{run}");
    w.eventually("web's containers to go", || {
        w.containers().iter().all(|c| !c.starts_with("web-blue-1"))
    });
    w.eventually("web's status to go", || {
        w.cutover(&["status", &w.svc("web")]).status.code() == Some(1)
    });
    let state = docker(&["inspect", "-f", "{{.State.Status}}", &stranger]);
    docker(&["rm", "-f", &stranger]);
    assert_eq!(
        state.trim(),
        "running",
        "the unlabelled container was touched"
    );
}

#[test]
fn every_spec_vanishing_at_once_is_refused_until_confirmed() {
    let w = World::new("mass-delete");
    w.daemon().short_lease().start();
    w.apply("web", &routed(&w, "web", "cutover-demo:a", 1, FAST));
    w.apply("api", &routed(&w, "api", "cutover-demo:a", 1, FAST));
    w.wait_available("web");
    w.wait_available("api");
    // A stray recursive delete of every spec.
    let out = Command::new("consul")
        .args([
            "kv",
            "delete",
            &format!("-http-addr={}", w.agent.address()),
            "-recurse",
            &format!("{}/services/", w.prefix),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    w.eventually("the refusal in status", || {
        w.status("web")["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["reason"] == "DeletionRefused")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        w.containers().len(),
        2,
        "nothing removed: {:?}",
        w.containers()
    );

    let confirmed = tokio::time::Instant::now();
    let run = w.cutover(&["prune", "--confirm"]);
    assert!(run.status.success(), "{run}");
    w.eventually("the confirmed removal", || w.containers().is_empty());
    eprintln!(
        "prune --confirm -> every container removed: {} ms",
        confirmed.elapsed().as_millis()
    );
}

/// A deletion made on purpose goes through the guard at once, the last service included;
/// the intent it recorded goes with the service.
#[test]
fn deletes_made_on_purpose_delete_even_the_last_service() {
    let w = World::new("purpose");
    w.daemon().short_lease().start();
    for name in ["a", "b", "c"] {
        w.apply(name, &routed(&w, name, "cutover-demo:a", 1, FAST));
    }
    for name in ["a", "b", "c"] {
        w.wait_available(name);
    }
    // `delete a`, then a sync of a directory with only c: b is pruned. Two of three gone,
    // which the guard alone would refuse.
    let run = w.cutover(&["delete", &w.svc("a")]);
    assert!(run.status.success(), "{run}");
    let dir = support::TempDir::new();
    dir.write("c.yaml", &routed(&w, "c", "cutover-demo:a", 1, FAST));
    let run = w.cutover(&["sync", dir.path().to_str().unwrap(), "--prune"]);
    assert!(run.status.success(), "{run}");
    w.eventually("a and b removed", || {
        w.containers().iter().all(|c| c.starts_with("c-"))
    });
    assert!(w.kv_get(&format!("status/{}", w.svc("c"))).is_some());
    // The last one.
    let run = w.cutover(&["delete", &w.svc("c")]);
    assert!(run.status.success(), "{run}");
    w.eventually("every container removed", || w.containers().is_empty());
    w.eventually("the statuses and the intents gone", || {
        ["a", "b", "c"].iter().all(|n| {
            w.kv_get(&format!("status/{}", w.svc(n))).is_none()
                && w.kv_get(&format!("control/deleted/{}", w.svc(n))).is_none()
        })
    });
    let logs = w.logs();
    assert!(!logs.contains("refusing to remove"), "a refusal:\n{logs}");
}

#[test]
fn consul_going_away_stops_nothing_and_reconciles_resume_after() {
    // This test freezes its own agent, so it does not share one.
    let own = Box::leak(Box::new(Agent::start()));
    let w = World::with_agent("consul-away", own);
    w.daemon().short_lease().start();
    w.apply("web", &routed(&w, "web", "cutover-demo:a", 2, FAST));
    w.wait_available("web");
    let before = w.containers();

    // SIGSTOP: the agent accepts nothing and answers nothing, like a dead host.
    let pid = own.pid();
    signal(pid, "STOP");
    std::thread::sleep(Duration::from_secs(10));
    let during = w.containers();
    signal(pid, "CONT");
    assert_eq!(
        during, before,
        "no container may change while Consul is away"
    );

    // The daemon carries on: a new spec rolls out.
    w.apply("web", &routed(&w, "web", "cutover-demo:b", 2, FAST));
    w.wait_available("web");
    assert_eq!(
        w.status("web")["colors"]["green"]["image"],
        "cutover-demo:b"
    );
}

/// `/readyz` of a daemon: the status code and the body, as `503 not ready: ...`.
fn readyz(w: &World, d: support::Daemon) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-w", " %{http_code}"])
        .arg(format!("http://{}/readyz", w.endpoint(d)))
        .output()
        .expect("run curl");
    let out = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match out.rsplit_once(' ') {
        Some((body, code)) => format!("{code} {}", body.trim()),
        None => out,
    }
}

#[test]
fn consul_back_without_its_data_is_noticed_at_once_and_a_new_spec_is_acted_on() {
    // This test stops its own agent, so it does not share one.
    let own = Box::leak(Box::new(Agent::start()));
    let w = World::with_agent("consul-empty", own);
    let d = w.daemon().short_lease().start();
    w.apply("web", &routed(&w, "web", "cutover-demo:a", 2, FAST));
    w.wait_available("web");
    w.eventually("the route", || {
        w.through_proxy(d, "web") == "version A [200]"
    });
    w.eventually("ready", || readyz(&w, d) == "200 ready");
    let load = Load::start(w.ports.live, w.host("web"), 4);
    std::thread::sleep(Duration::from_secs(1));

    // A -dev agent keeps everything in memory: stopped, it comes back empty, at a lower index.
    own.stop_losing_data();
    let mut said = String::new();
    w.eventually_within(
        "/readyz to say not ready while Consul is away",
        Duration::from_secs(20),
        || {
            said = readyz(&w, d);
            said.starts_with("503 ") && said.contains("Consul")
        },
    );
    eprintln!("while Consul was away, /readyz said: {said}");
    std::thread::sleep(Duration::from_secs(3));
    own.start_again();

    // A spec written once Consul is back is acted on, not after the old blocking wait.
    w.apply("new", &routed(&w, "new", "cutover-demo:b", 1, FAST));
    let took = w.eventually_within(
        "a container of the spec written after Consul came back empty",
        Duration::from_secs(30),
        || w.containers().iter().any(|c| c.starts_with("new-")),
    );
    eprintln!("the new spec's first container appeared {took:?} after the write");
    w.wait_available("new");
    w.eventually_within("ready again", Duration::from_secs(30), || {
        readyz(&w, d) == "200 ready"
    });

    // The live service never stopped serving, and its containers are untouched.
    std::thread::sleep(Duration::from_secs(2));
    load.finish_without_failures("the live service", 0, || w.logs());
    assert_eq!(w.through_proxy(d, "web"), "version A [200]");
    // Its spec was lost with Consul's data, not deleted: its containers keep running.
    let web: Vec<String> = w
        .containers()
        .into_iter()
        .filter(|c| c.starts_with("web-"))
        .collect();
    assert_eq!(
        web,
        [
            "web-blue-1 cutover-demo:a running",
            "web-blue-2 cutover-demo:a running"
        ]
    );
}

#[test]
fn a_lost_status_or_route_table_entry_fails_no_request_and_is_rebuilt() {
    let w = World::new("lost-status");
    let d = w.daemon().short_lease().resync("3s").start();
    w.apply("web", &routed(&w, "web", "cutover-demo:a", 2, FAST));
    w.wait_available("web");
    w.eventually("the route", || {
        w.through_proxy(d, "web") == "version A [200]"
    });
    let status_key = format!("status/{}", w.svc("web"));
    let routes_key = format!("routes/{}", w.svc("web"));
    assert!(w.kv_get(&routes_key).is_some(), "no route table entry");
    let load = Load::start(w.ports.live, w.host("web"), 4);
    std::thread::sleep(Duration::from_secs(1));

    // The status alone, then the status and the route table entry (as after Consul came
    // back empty): each time the routes must come from what runs, never from what is lost.
    for keys in [vec![&status_key], vec![&status_key, &routes_key]] {
        for key in &keys {
            w.kv_delete(key);
        }
        for key in &keys {
            w.eventually_within(&format!("{key} rebuilt"), Duration::from_secs(30), || {
                w.kv_get(key).is_some()
            });
        }
        w.wait_available("web");
        std::thread::sleep(Duration::from_secs(4));
    }

    load.finish_without_failures("the live service", 0, || w.logs());
    assert_eq!(w.through_proxy(d, "web"), "version A [200]");
    assert_eq!(
        w.containers(),
        [
            "web-blue-1 cutover-demo:a running",
            "web-blue-2 cutover-demo:a running"
        ]
    );
}

#[test]
fn twenty_services_converge_together_and_a_missing_image_delays_none() {
    let w = World::new("twenty");
    w.daemon().short_lease().start();
    let names: Vec<String> = (1..=20).map(|i| format!("s{i:02}")).collect();
    for name in &names {
        let image = if name == "s07" {
            "cutover-missing-image:never"
        } else {
            "cutover-demo:a"
        };
        w.apply(name, &routed(&w, name, image, 1, FAST));
    }
    for name in names.iter().filter(|n| *n != "s07") {
        w.wait_available(name);
    }
    let (ok, output) = w.wait("s07");
    assert!(!ok, "{output}");
    assert!(
        output.contains("ImagePullFailed") || output.contains("ImageNotFound"),
        "{output}"
    );
    assert_eq!(w.containers().len(), 19, "{:?}", w.containers());
}

#[test]
fn rollouts_scaling_and_a_daemon_crash_under_load_fail_no_request() {
    let w = World::new("load");
    let d = w.daemon().short_lease().start();
    let image = |i: usize| {
        if i % 2 == 0 {
            "cutover-demo:b"
        } else {
            "cutover-demo:a"
        }
    };
    w.apply("web", &routed(&w, "web", "cutover-demo:a", 2, FAST));
    w.wait_available("web");
    w.eventually("the route", || {
        w.through_proxy(d, "web") == "version A [200]"
    });

    let load = Load::start(w.ports.live, w.host("web"), 4);
    let mut switches = 0;
    for i in 0..6 {
        if i == 3 {
            // kill -9 while traffic flows: HAProxy keeps serving, the new daemon adopts it.
            w.kill(d);
            std::thread::sleep(Duration::from_secs(1));
            w.daemon().short_lease().start();
        }
        w.apply("web", &routed(&w, "web", image(i), 2, FAST));
        w.wait_available("web");
        switches += 1;
        let delta = if i % 2 == 0 { "+1" } else { "-1" };
        let run = w.cutover(&["scale", &w.svc("web"), delta]);
        assert!(run.status.success(), "{run}");
        w.wait_available("web");
    }
    // Let the last drain finish under load too.
    std::thread::sleep(Duration::from_secs(2));
    let ok = load.finish_without_failures(&format!("{switches} switches"), 100, || w.logs());
    let masters = Command::new("pgrep")
        .args([
            "-f",
            &format!("haproxy.*{}", w.haproxy_dir("haproxy").display()),
        ])
        .output()
        .unwrap();
    let pids = String::from_utf8_lossy(&masters.stdout).lines().count();
    assert!(pids >= 1, "HAProxy is running");
    assert!(
        w.logs().contains("adopting the running HAProxy"),
        "the restarted daemon adopted HAProxy"
    );
    eprintln!(
        "{ok} requests, 0 failures, {switches} switches, {} scale changes, one daemon crash",
        switches
    );
}

/// Wall-clock time as seconds since the epoch with milliseconds, to match failures with the
/// daemon's log.
#[test]
fn a_spec_asking_for_more_privilege_than_allowed_is_refused_and_nothing_changes() {
    let w = World::new("security");
    let d = w.daemon().short_lease().start();
    w.apply("web", &routed(&w, "web", "cutover-demo:a", 1, FAST));
    w.wait_available("web");
    w.apply(
        "web",
        &routed(&w, "web", "cutover-demo:b", 1, "  capAdd: [NET_ADMIN]\n"),
    );
    let (ok, output) = w.wait("web");
    assert!(!ok, "{output}");
    assert!(output.contains("ForbiddenBySecurityPolicy"), "{output}");
    assert!(
        output.contains("--allow-cap-add"),
        "the message names the flag: {output}"
    );
    assert_eq!(w.containers(), ["web-blue-1 cutover-demo:a running"]);
    assert_eq!(w.through_proxy(d, "web"), "version A [200]");
}
