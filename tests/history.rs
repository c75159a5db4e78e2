//! `cutover plan`, `cutover history`, `cutover diff` and `cutover rollback --to` end to end,
//! against a real daemon, Docker, Consul and HAProxy.

mod support;

use support::{Run, World, cutover_command, docker};

/// A manifest of the test's service `short`: `image`, two replicas, the demo's health check
/// at `health_path`, routed by host, with `strategy` (a line under `spec`).
fn manifest(w: &World, short: &str, image: &str, health_path: &str, strategy: &str) -> String {
    format!(
        "apiVersion: cutover.dev/v1
kind: Service
metadata: {{name: {name}}}
spec:
  image: {image}
  replicas: 2
  port: 80
  health: {{path: {health_path}, interval: 200ms, timeout: 150ms}}
  routes: [{{host: {host}}}]
{strategy}",
        name = w.svc(short),
        host = w.host(short),
    )
}

const FAST: &str = "  strategy: {blueGreen: {scaleDownDelay: 1s, progressDeadline: 30s}}\n";

/// `cutover plan ARGS` as the world's daemons see Docker (their network and instance).
fn plan(w: &World, args: &[&str]) -> Run {
    let mut all = vec!["plan", "--network", &w.network, "--instance", &w.instance];
    all.extend_from_slice(args);
    w.cutover(&all)
}

/// The revision the service's live color runs.
fn live_revision(w: &World, short: &str) -> String {
    let status = w.status(short);
    let color = status["activeColor"].as_str().expect("a live color");
    status["colors"][color]["revision"]
        .as_str()
        .expect("a revision")
        .to_owned()
}

#[test]
fn plan_shows_what_the_daemon_would_do_and_changes_nothing() {
    let w = World::new("plan");
    let d = w.daemon().short_lease().start();
    let web = w.svc("web");
    let spec_a = manifest(&w, "web", "cutover-demo:a", "/cgi-bin/health", FAST);
    w.apply("web", &spec_a);
    w.wait_available("web");

    // Converged: nothing to do, exit 0, in both outputs.
    let run = plan(&w, &[&web]);
    assert_eq!(run.status.code(), Some(0), "{run}\n{}", w.logs());
    assert!(run.stdout.contains("no changes"), "{run}");
    assert!(run.stdout.contains("phase: Available"), "{run}");
    let run = plan(&w, &["-o", "json"]);
    assert_eq!(run.status.code(), Some(0), "{run}");
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect("plan JSON");
    assert_eq!(json[0]["name"], web.as_str());
    assert_eq!(json[0]["steps"], serde_json::json!([]));
    assert_eq!(json[0]["phase"], "Available");

    // A manifest file: the same text plans nothing; a new image plans the other color.
    let same = w.dir.write("same.yaml", &spec_a);
    let run = plan(&w, &["-f", &same.to_string_lossy()]);
    assert_eq!(run.status.code(), Some(0), "{run}");
    let live = w.status("web")["activeColor"].as_str().unwrap().to_owned();
    let other = if live == "blue" { "green" } else { "blue" };
    let b = w.dir.write(
        "b.yaml",
        &manifest(&w, "web", "cutover-demo:b", "/cgi-bin/health", FAST),
    );
    let run = plan(&w, &["-f", &b.to_string_lossy()]);
    assert_eq!(run.status.code(), Some(2), "{run}");
    assert!(
        run.stdout
            .contains(&format!("create {other} replica 1 (revision")),
        "{run}"
    );
    assert!(run.stdout.contains("phase: Progressing"), "{run}");

    // An invalid manifest: the usual located diagnostics, exit 1.
    let bad = w
        .dir
        .write("bad.yaml", &spec_a.replace("replicas: 2", "replica: 2"));
    let run = plan(&w, &["-f", &bad.to_string_lossy()]);
    assert_eq!(run.status.code(), Some(1), "{run}");
    assert!(run.stderr.contains("bad.yaml:6:3"), "{run}");

    // Docker unreachable: said clearly, exit 1.
    let run = cutover_command()
        .env("CONSUL_HTTP_ADDR", w.agent.address())
        .env("CUTOVER_PREFIX", &w.prefix)
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .args(["plan", &web])
        .output()
        .expect("run cutover plan");
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("cannot reach the Docker engine"),
        "{stderr}"
    );

    // Drift: a replica removed by hand while no daemon runs. The plan lists its creation,
    // and creates nothing.
    w.kill(d);
    docker(&["rm", "-f", &format!("{web}-{live}-2")]);
    let run = plan(&w, &[&web]);
    assert_eq!(run.status.code(), Some(2), "{run}");
    assert!(
        run.stdout
            .contains(&format!("create {live} replica 2 (revision")),
        "{run}"
    );
    let again = plan(&w, &[&web]);
    assert_eq!(again.status.code(), Some(2), "{again}");
    assert!(
        !w.containers()
            .iter()
            .any(|c| c.starts_with(&format!("web-{live}-2 "))),
        "cutover plan created a container: {:?}",
        w.containers()
    );

    // Mid-rollout: a daemon converges again, then B waits in preview: nothing to do but wait.
    let d = w.daemon().short_lease().start();
    w.wait_available("web");
    let preview = "  strategy: {blueGreen: {autoPromote: false, previewReplicas: 1, scaleDownDelay: 1s, progressDeadline: 30s}}\n";
    w.apply(
        "web",
        &manifest(&w, "web", "cutover-demo:b", "/cgi-bin/health", preview),
    );
    w.wait_phase("web", "Preview");
    let run = plan(&w, &[&web]);
    assert_eq!(run.status.code(), Some(0), "{run}\n{}", w.logs());
    assert!(run.stdout.contains("phase: Preview"), "{run}");
    assert!(run.stdout.contains("WaitingForPromotion"), "{run}");

    // A promotion the daemon has not acted on yet: the plan scales the preview up.
    w.kill(d);
    let run = w.cutover(&["promote", &web, "--wait", "0s"]);
    assert!(run.status.success(), "{run}");
    let run = plan(&w, &[&web]);
    assert_eq!(run.status.code(), Some(2), "{run}");
    assert!(
        run.stdout
            .contains(&format!("create {other} replica 2 (revision")),
        "{run}"
    );
}

#[test]
fn history_diff_and_rollback_to_an_older_revision() {
    let w = World::new("history");
    let d = w.daemon().short_lease().start();
    let web = w.svc("web");
    let spec_a = manifest(&w, "web", "cutover-demo:a", "/cgi-bin/health", FAST);
    w.apply("web", &spec_a);
    w.wait_available("web");
    let a = live_revision(&w, "web");
    w.apply(
        "web",
        &manifest(&w, "web", "cutover-demo:b", "/cgi-bin/health", FAST),
    );
    w.wait_available("web");
    let b = live_revision(&w, "web");
    // A release that never gets healthy: rejected when its deadline passes.
    let short_deadline = "  strategy: {blueGreen: {scaleDownDelay: 1s, progressDeadline: 8s}}\n";
    w.apply(
        "web",
        &manifest(&w, "web", "cutover-demo:b", "/nothing-here", short_deadline),
    );
    w.eventually("the broken release to be rejected", || {
        w.try_status("web").is_some_and(|s| {
            s["rejected"]["reason"] == "ProgressDeadlineExceeded" && s["rollout"].is_null()
        })
    });
    let bad = w.status("web")["rejected"]["revision"]
        .as_str()
        .unwrap()
        .to_owned();

    let run = w.cutover(&["history", &web, "-o", "json"]);
    assert!(run.status.success(), "{run}");
    let rows: serde_json::Value = serde_json::from_str(&run.stdout).expect("history JSON");
    let summary: Vec<(String, String)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["revision"].as_str().unwrap().to_owned(),
                r["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (bad.clone(), "rejected: ProgressDeadlineExceeded".to_owned()),
            (b.clone(), "serving".to_owned()),
            (a.clone(), "retired".to_owned()),
        ],
        "{run}"
    );
    assert_eq!(rows[2]["image"], "cutover-demo:a");
    assert!(
        rows[2]["cause"]
            .as_str()
            .unwrap()
            .starts_with("spec change at index "),
        "{run}"
    );
    let table = w.cutover(&["history", &web]);
    assert!(
        table.status.success() && table.stdout.contains("REVISION"),
        "{table}"
    );

    // The difference between A and the current spec, and between A and B.
    let run = w.cutover(&["diff", &web, &a]);
    assert!(run.status.success(), "{run}");
    for line in [
        "-  image: cutover-demo:a",
        "+  image: cutover-demo:b",
        "+  health: {path: /nothing-here, interval: 200ms, timeout: 150ms}",
        "-  health: {path: /cgi-bin/health, interval: 200ms, timeout: 150ms}",
    ] {
        assert!(run.stdout.lines().any(|l| l == line), "{line}: {run}");
    }
    assert!(run.stdout.contains("current spec (index "), "{run}");
    let run = w.cutover(&["diff", &web, &a[..6], &b]);
    assert!(run.status.success(), "{run}");
    assert!(
        !run.stdout
            .lines()
            .any(|l| l.starts_with("-  health") || l.starts_with("+  health")),
        "{run}"
    );
    assert!(run.stdout.contains("+  image: cutover-demo:b"), "{run}");

    // Back to A, which is only kept (stopped): its spec is written back and rolled out.
    let run = w.cutover(&["rollback", &web, "--to", "zzzz"]);
    assert_eq!(run.status.code(), Some(1), "{run}");
    assert!(run.stderr.contains("no kept revision"), "{run}");
    let run = w.cutover(&["rollback", &web, "--to", &a]);
    assert!(run.status.success(), "{run}");
    assert!(run.stdout.contains("wrote the spec of revision"), "{run}");
    assert!(run.stdout.contains("git"), "{run}");
    w.wait_available("web");
    assert_eq!(live_revision(&w, "web"), a);
    w.eventually("A serves again", || {
        w.through_proxy(d, "web") == "version A [200]"
    });
    let run = w.cutover(&["history", &web, "-o", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&run.stdout).expect("history JSON");
    assert_eq!(rows[0]["revision"], a.as_str(), "{run}");
    assert_eq!(rows[0]["outcome"], "serving", "{run}");
    assert!(
        rows[0]["cause"]
            .as_str()
            .unwrap()
            .starts_with(&format!("cutover rollback --to {a}")),
        "{run}"
    );
    // The same revision's spec again: nothing to write.
    let run = w.cutover(&["rollback", &web, "--to", &a]);
    assert!(
        run.status.success() && run.stdout.contains("nothing written"),
        "{run}"
    );

    // The history goes with the service.
    let run = w.cutover(&["delete", &web]);
    assert!(run.status.success(), "{run}");
    w.eventually("the history to be deleted", || {
        w.kv_get(&format!("history/{web}/cause")).is_none()
            && w.cutover(&["history", &web]).status.code() == Some(1)
    });
}
