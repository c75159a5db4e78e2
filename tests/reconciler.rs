//! `cutover run` end to end, against the real Docker engine and a real Consul agent.
//!
//! Each test gets its own KV prefix, daemon instance label, Docker network and service
//! names, and removes every container it made when it ends, even when it fails. The images
//! `cutover-demo:a` / `:b` come from `scripts/test-images`.

mod support;

use std::process::{Child, Command};
use std::time::Duration;

use tokio::time::Instant;

use support::{Agent, TempDir, agent, docker, remove_instance, require_images, unique_prefix};

/// The shortest leader lease Consul allows: a daemon restarted after a kill -9 waits for the
/// dead one's session to expire (between one and two TTLs) and the lock delay.
const SHORT_LEASE: [(&str, &str); 2] =
    [("CUTOVER_LEADER_TTL", "10s"), ("CUTOVER_LOCK_DELAY", "1s")];

/// A daemon under test and everything it made.
struct World {
    agent: &'static Agent,
    prefix: String,
    instance: String,
    network: String,
    dir: TempDir,
    daemon: Option<Child>,
    /// Appended to every service name: container names are global on the engine.
    tag: String,
    http_port: u16,
    preview_port: u16,
}

impl World {
    fn new(test: &str) -> World {
        require_images();
        let prefix = unique_prefix(test);
        let instance = prefix.replace('/', "-");
        World {
            agent: agent(),
            network: format!("cutover-{instance}"),
            prefix,
            instance,
            dir: TempDir::new(),
            daemon: None,
            tag: format!("{:06x}", rand_u32() & 0xff_ffff),
            http_port: support::unused_port(),
            preview_port: support::unused_port(),
        }
    }

    fn start_daemon(&mut self) {
        self.start_daemon_with(&[]);
    }

    /// Starts `cutover run` with its own HAProxy on this test's loopback ports.
    fn start_daemon_with(&mut self, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let haproxy_dir = self.dir.path().join("haproxy");
        let child = support::cutover_command()
            .env("CONSUL_HTTP_ADDR", self.agent.address())
            .env("CUTOVER_PREFIX", &self.prefix)
            .env("RUST_LOG", "cutover=debug")
            .envs(SHORT_LEASE)
            .args([
                "run",
                "--network",
                &self.network,
                "--instance",
                &self.instance,
            ])
            // A test may ask for another resync (the last one given wins).
            .args(if extra.contains(&"--resync") {
                &[][..]
            } else {
                &["--resync", "5s"][..]
            })
            .args(["--http-bind", &format!("127.0.0.1:{}", self.http_port)])
            .args([
                "--preview-bind",
                &format!("127.0.0.1:{}", self.preview_port),
            ])
            .arg("--haproxy-dir")
            .arg(&haproxy_dir)
            .args(extra)
            // Tests run daemons in parallel: each takes a free port for its HTTP endpoints.
            .args(["--listen", "127.0.0.1:0"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start cutover run");
        self.daemon = Some(child);
    }

    /// What the live (or preview) listener answers for `service`'s host: the body and the
    /// status code.
    fn through_proxy(&self, preview: bool, service: &str) -> String {
        let port = if preview {
            self.preview_port
        } else {
            self.http_port
        };
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
            .args(["-H", &format!("Host: {}.test", self.svc(service))])
            .arg(format!("http://127.0.0.1:{port}/"))
            .output()
            .expect("run curl");
        let out = String::from_utf8_lossy(&out.stdout);
        let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", &out));
        format!("{} [{code}]", body.trim())
    }

    /// kill -9, as a crash would.
    fn kill_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn cutover(&self, args: &[&str]) -> support::Run {
        self.agent.cutover(&self.prefix).args(args).run()
    }

    /// The real name of the test's service `short` (`web` -> `web-1a2b3c`).
    fn svc(&self, short: &str) -> String {
        format!("{short}-{}", self.tag)
    }

    /// The demo manifest of the test's service `short`.
    fn demo(&self, short: &str, image: &str, replicas: u32, extra: &str) -> String {
        demo(&self.svc(short), image, replicas, extra)
    }

    fn apply(&self, name: &str, manifest: &str) {
        let file = self.dir.write(&format!("{name}.yaml"), manifest);
        let run = self.cutover(&["apply", "-f", file.to_str().unwrap()]);
        assert!(run.status.success(), "apply failed: {run}");
    }

    /// `cutover status NAME --wait`; returns whether it reported success, and its output.
    fn wait(&self, name: &str) -> (bool, String) {
        let run = self.cutover(&["status", &self.svc(name), "--wait", "--timeout", "90s"]);
        (run.status.success(), format!("{run}"))
    }

    fn wait_available(&self, name: &str) {
        let (ok, output) = self.wait(name);
        assert!(
            ok,
            "{name} did not become Available: {output}\n--- daemon log\n{}",
            self.log()
        );
    }

    fn status(&self, name: &str) -> serde_json::Value {
        let run = self.cutover(&["status", &self.svc(name), "-o", "json"]);
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
        // Names without the tag, as the test wrote them: `web-blue-1`.
        let tag = format!("-{}", self.tag);
        let mut lines: Vec<String> = out.lines().map(|l| l.replace(&tag, "")).collect();
        lines.sort();
        lines
    }

    /// What the replica answers on `/`, asked from the host through its address.
    fn answer(&self, container: &str) -> String {
        let ip = docker(&[
            "inspect",
            "-f",
            &format!(
                "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
                self.network
            ),
            &container.replacen('-', &format!("-{}-", self.tag), 1),
        ]);
        http_get(ip.trim(), "/")
    }

    /// The catalog instances of `service` carrying `tag`, by ID without the test's tag.
    fn catalog(&self, service: &str, tag: &str) -> Vec<String> {
        let url = format!(
            "http://{}/v1/catalog/service/{}?tag={tag}",
            self.agent.address(),
            self.svc(service)
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
            .map(|id| id.replace(&format!("-{}", self.tag), ""))
            .collect();
        ids.sort();
        ids
    }

    fn eventually(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "timed out waiting for {what}; containers: {:?}\n--- daemon log\n{}",
            self.containers(),
            self.log()
        );
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.kill_daemon();
        // HAProxy outlives the daemon on purpose; the test stops it.
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("haproxy/haproxy.pid")) {
            for pid in pid.split_whitespace() {
                let _ = Command::new("kill").arg(pid).status();
            }
        }
        remove_instance(&self.instance, &self.network);
    }
}

fn http_get(ip: &str, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-fsS", "--max-time", "5", &format!("http://{ip}{path}")])
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The demo service: health on the CGI script, short drain and deadline for quick tests.
fn demo(name: &str, image: &str, replicas: u32, extra: &str) -> String {
    format!(
        "apiVersion: cutover.dev/v1
kind: Service
metadata: {{name: {name}}}
spec:
  image: {image}
  replicas: {replicas}
  port: 80
  health: {{path: /cgi-bin/health, interval: 200ms, timeout: 150ms}}
  routes: [{{host: {name}.test}}]
{extra}"
    )
}

const FAST: &str = "  strategy: {blueGreen: {scaleDownDelay: 1s, progressDeadline: 30s}}\n";

#[test]
fn a_new_image_rolls_to_the_other_color_and_the_old_one_is_kept_stopped() {
    let mut w = World::new("rollout");
    w.start_daemon();
    w.apply("web", &w.demo("web", "cutover-demo:a", 2, FAST));
    w.wait_available("web");
    let status = w.status("web");
    assert_eq!(status["activeColor"], "blue");
    assert_eq!(w.answer("web-blue-1"), "version A");
    w.eventually("the route", || {
        w.through_proxy(false, "web") == "version A [200]"
    });
    assert_eq!(
        w.containers(),
        [
            "web-blue-1 cutover-demo:a running",
            "web-blue-2 cutover-demo:a running"
        ]
    );

    w.apply("web", &w.demo("web", "cutover-demo:b", 2, FAST));
    w.wait_available("web");
    let status = w.status("web");
    assert_eq!(status["activeColor"], "green");
    assert_eq!(status["colors"]["green"]["image"], "cutover-demo:b");
    assert_eq!(w.answer("web-green-1"), "version B");
    assert_eq!(
        w.through_proxy(false, "web"),
        "version B [200]",
        "switched when Available"
    );
    // Consul catalog users see the live replicas apart from the others.
    w.eventually("the live replicas in the catalog", || {
        w.catalog("web", "live") == ["web-green-1", "web-green-2"]
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
    let mut w = World::new("scale");
    w.start_daemon();
    w.apply("web", &w.demo("web", "cutover-demo:a", 1, FAST));
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
    let mut w = World::new("killed");
    w.start_daemon_with(&["--resync", "10m"]);
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.containers() != both {
        assert!(
            Instant::now() < deadline,
            "the killed replica was not started again in 30 s; containers: {:?}\n--- daemon log\n{}",
            w.containers(),
            w.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_invalid_spec_leaves_the_old_revision_running_and_says_where() {
    let mut w = World::new("invalid");
    w.start_daemon();
    w.apply("web", &w.demo("web", "cutover-demo:a", 2, FAST));
    w.wait_available("web");
    let before = w.containers();

    let bad = w.dir.write(
        "bad.yaml",
        &w.demo("web", "cutover-demo:b", 2, "  replica: 3\n"),
    );
    w.agent
        .kv_put_file(&format!("{}/services/{}", w.prefix, w.svc("web")), &bad);
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
    assert_eq!(w.answer("web-blue-1"), "version A");
}

#[test]
fn a_missing_image_is_reported_and_the_live_color_keeps_serving() {
    let mut w = World::new("missing-image");
    w.start_daemon();
    w.apply("web", &w.demo("web", "cutover-demo:a", 1, FAST));
    w.wait_available("web");
    w.apply(
        "web",
        &w.demo("web", "cutover-missing-image:never", 1, FAST),
    );
    let (ok, output) = w.wait("web");
    assert!(!ok, "{output}");
    assert!(
        output.contains("ImagePullFailed") || output.contains("ImageNotFound"),
        "{output}"
    );
    assert!(output.contains("cutover-missing-image:never"), "{output}");
    assert_eq!(w.containers(), ["web-blue-1 cutover-demo:a running"]);
    assert_eq!(w.answer("web-blue-1"), "version A");
}

#[test]
fn a_release_that_never_gets_healthy_is_aborted_and_rejected() {
    let mut w = World::new("never-healthy");
    w.start_daemon();
    let deadline = "  strategy: {blueGreen: {scaleDownDelay: 1s, progressDeadline: 5s}}\n";
    w.apply("web", &w.demo("web", "cutover-demo:a", 1, deadline));
    w.wait_available("web");
    let sick = format!(
        "{deadline}  command: [sh, -c, \"touch /tmp/unhealthy; trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait\"]\n"
    );
    w.apply("web", &w.demo("web", "cutover-demo:b", 1, &sick));
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
    assert_eq!(w.answer("web-blue-1"), "version A");
}

#[test]
fn preview_waits_for_promote_and_rollback_switches_back() {
    let mut w = World::new("promote");
    w.start_daemon();
    let manual =
        "  strategy: {blueGreen: {autoPromote: false, previewReplicas: 1, scaleDownDelay: 30s}}\n";
    w.apply("web", &w.demo("web", "cutover-demo:a", 2, manual));
    w.wait_available("web");
    w.apply("web", &w.demo("web", "cutover-demo:b", 2, manual));
    w.eventually("the preview", || w.status("web")["phase"] == "Preview");
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
        w.through_proxy(true, "web") == "version B [200]"
    });
    assert_eq!(w.through_proxy(false, "web"), "version A [200]");

    let run = w.cutover(&["promote", &w.svc("web")]);
    assert!(run.status.success(), "{run}\n{}", w.log());
    w.wait_available("web");
    assert_eq!(w.status("web")["activeColor"], "green");
    assert_eq!(w.through_proxy(false, "web"), "version B [200]");
    assert_eq!(
        w.containers()
            .iter()
            .filter(|c| c.starts_with("web-green-"))
            .count(),
        2
    );

    // Blue still drains (scaleDownDelay 30s): rolling back is a switch, nothing to start.
    let run = w.cutover(&["rollback", &w.svc("web")]);
    assert!(run.status.success(), "{run}\n{}", w.log());
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
        let mut w = World::new("kill");
        w.start_daemon();
        // Promotion by hand for the healthy point, so the kill lands between health and switch.
        let strategy = match point {
            KillPoint::NewColorHealthy => {
                "  strategy: {blueGreen: {autoPromote: false, scaleDownDelay: 5s}}\n"
            }
            _ => "  strategy: {blueGreen: {scaleDownDelay: 5s}}\n",
        };
        w.apply("web", &w.demo("web", "cutover-demo:a", 2, strategy));
        w.wait_available("web");
        w.apply("web", &w.demo("web", "cutover-demo:b", 2, strategy));
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
        w.kill_daemon();
        w.start_daemon();
        if let KillPoint::NewColorHealthy = point {
            let run = w.cutover(&["promote", &w.svc("web")]);
            assert!(run.status.success(), "{point:?}: {run}\n{}", w.log());
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
    }
}

#[test]
fn sigterm_stops_the_daemon_and_leaves_every_container_running() {
    let mut w = World::new("sigterm");
    w.start_daemon();
    w.apply("web", &w.demo("web", "cutover-demo:a", 2, FAST));
    w.wait_available("web");
    let before = w.containers();
    let mut child = w.daemon.take().unwrap();
    signal(child.id(), "TERM");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}\n{}", w.log());
    assert_eq!(w.containers(), before);
}

#[test]
fn abort_removes_the_rollout_in_preview() {
    let mut w = World::new("abort");
    w.start_daemon();
    let manual = "  strategy: {blueGreen: {autoPromote: false}}\n";
    w.apply("web", &w.demo("web", "cutover-demo:a", 1, manual));
    w.wait_available("web");
    w.apply("web", &w.demo("web", "cutover-demo:b", 1, manual));
    w.eventually("the preview", || w.status("web")["phase"] == "Preview");
    let run = w.cutover(&["abort", &w.svc("web")]);
    assert!(run.status.success(), "{run}\n{}", w.log());
    w.eventually("green removed", || {
        w.containers() == ["web-blue-1 cutover-demo:a running"]
    });
    let status = w.status("web");
    assert_eq!(status["rejected"]["reason"], "Aborted");
    assert_eq!(status["phase"], "Degraded");
}

#[test]
fn orphans_are_reported_and_removed_only_when_told() {
    let mut w = World::new("orphans");
    w.start_daemon();
    // Another service keeps KV from looking wiped (the deletion guard applies to orphans
    // too). Then a labelled container that no spec or status explains appears.
    w.apply("web", &w.demo("web", "cutover-demo:a", 1, FAST));
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
        w.log().contains("orphaned containers")
    });
    assert_eq!(w.containers().len(), 2, "reported, not removed");
    w.kill_daemon();
    w.start_daemon_with(&["--prune-orphans"]);
    w.eventually("the orphan removed", || {
        w.containers() == ["web-blue-1 cutover-demo:a running"]
    });
}

#[test]
fn a_deleted_service_is_removed_and_unlabelled_containers_are_never_touched() {
    let mut w = World::new("delete");
    w.start_daemon();
    w.apply("web", &w.demo("web", "cutover-demo:a", 1, FAST));
    w.apply("api", &w.demo("api", "cutover-demo:a", 1, FAST));
    w.apply("www", &w.demo("www", "cutover-demo:a", 1, FAST));
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
    let mut w = World::new("mass-delete");
    w.start_daemon();
    w.apply("web", &w.demo("web", "cutover-demo:a", 1, FAST));
    w.apply("api", &w.demo("api", "cutover-demo:a", 1, FAST));
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

    let run = w.cutover(&["prune", "--confirm"]);
    assert!(run.status.success(), "{run}");
    w.eventually("the confirmed removal", || w.containers().is_empty());
}

#[test]
fn consul_going_away_stops_nothing_and_reconciles_resume_after() {
    // This test freezes its own agent, so it does not share one.
    let own = Box::leak(Box::new(Agent::start()));
    let mut w = World::new("consul-away");
    w.agent = own;
    w.start_daemon();
    w.apply("web", &w.demo("web", "cutover-demo:a", 2, FAST));
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
    w.apply("web", &w.demo("web", "cutover-demo:b", 2, FAST));
    w.wait_available("web");
    assert_eq!(
        w.status("web")["colors"]["green"]["image"],
        "cutover-demo:b"
    );
}

#[test]
fn twenty_services_converge_together_and_a_missing_image_delays_none() {
    let mut w = World::new("twenty");
    w.start_daemon();
    let names: Vec<String> = (1..=20).map(|i| format!("s{i:02}")).collect();
    for name in &names {
        let image = if name == "s07" {
            "cutover-missing-image:never"
        } else {
            "cutover-demo:a"
        };
        w.apply(name, &w.demo(name, image, 1, FAST));
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

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish() as u32
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Requests through the live listener from several threads, each on a new connection,
/// counting every answer that is not a 200 from a live version.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(u64, Vec<String>)>>,
}

impl Load {
    fn start(port: u16, host: String, threads: usize) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                let host = host.clone();
                std::thread::spawn(move || {
                    let (mut ok, mut failures) = (0, Vec::new());
                    // Bounded: the test stops it, and it stops by itself after 5 minutes.
                    let deadline = Instant::now() + Duration::from_secs(300);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed)
                        && Instant::now() < deadline
                    {
                        match request(port, &host) {
                            Ok(body) if body == "version A" || body == "version B" => ok += 1,
                            Ok(other) => failures.push(format!("{} {other}", now_text())),
                            Err(e) => failures.push(format!("{} {e}", now_text())),
                        }
                    }
                    (ok, failures)
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the load; returns the successes and the failures.
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = (0, Vec::new());
        for t in self.threads {
            let (ok, failures) = t.join().unwrap();
            total.0 += ok;
            total.1.extend(failures);
        }
        total
    }
}

/// One HTTP/1.0 request on a new connection: the body of a 200, or what went wrong.
fn request(port: u16, host: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET / HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no headers: {response:?}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or_default().to_owned());
    }
    Ok(body.trim().to_owned())
}

#[test]
fn rollouts_scaling_and_a_daemon_crash_under_load_fail_no_request() {
    let mut w = World::new("load");
    w.start_daemon();
    let image = |i: usize| {
        if i % 2 == 0 {
            "cutover-demo:b"
        } else {
            "cutover-demo:a"
        }
    };
    w.apply("web", &w.demo("web", "cutover-demo:a", 2, FAST));
    w.wait_available("web");
    w.eventually("the route", || {
        w.through_proxy(false, "web") == "version A [200]"
    });

    let load = Load::start(w.http_port, format!("{}.test", w.svc("web")), 4);
    let mut switches = 0;
    for i in 0..6 {
        if i == 3 {
            // kill -9 while traffic flows: HAProxy keeps serving, the new daemon adopts it.
            w.kill_daemon();
            std::thread::sleep(Duration::from_secs(1));
            w.start_daemon();
        }
        w.apply("web", &w.demo("web", image(i), 2, FAST));
        w.wait_available("web");
        switches += 1;
        let delta = if i % 2 == 0 { "+1" } else { "-1" };
        let run = w.cutover(&["scale", &w.svc("web"), delta]);
        assert!(run.status.success(), "{run}");
        w.wait_available("web");
    }
    // Let the last drain finish under load too.
    std::thread::sleep(Duration::from_secs(2));
    let (ok, failures) = load.finish();
    assert!(ok > 100, "too little load to mean anything: {ok}");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across {switches} switches: {:?}\n{}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(10)],
        w.log()
    );
    let masters = Command::new("pgrep")
        .args([
            "-f",
            &format!("haproxy.*{}", w.dir.path().join("haproxy").display()),
        ])
        .output()
        .unwrap();
    let pids = String::from_utf8_lossy(&masters.stdout).lines().count();
    assert!(pids >= 1, "HAProxy is running");
    assert!(
        w.log().contains("adopting the running HAProxy"),
        "the restarted daemon adopted HAProxy"
    );
    eprintln!(
        "{ok} requests, 0 failures, {switches} switches, {} scale changes, one daemon crash",
        switches
    );
}

/// Wall-clock time as seconds since the epoch with milliseconds, to match failures with the
/// daemon's log.
fn now_text() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}.{:03}", d.as_secs() % 86400, d.subsec_millis())
}

#[test]
fn a_spec_asking_for_more_privilege_than_allowed_is_refused_and_nothing_changes() {
    let mut w = World::new("security");
    w.start_daemon();
    w.apply("web", &w.demo("web", "cutover-demo:a", 1, FAST));
    w.wait_available("web");
    w.apply(
        "web",
        &w.demo("web", "cutover-demo:b", 1, "  capAdd: [NET_ADMIN]\n"),
    );
    let (ok, output) = w.wait("web");
    assert!(!ok, "{output}");
    assert!(output.contains("ForbiddenBySecurityPolicy"), "{output}");
    assert!(
        output.contains("--allow-cap-add"),
        "the message names the flag: {output}"
    );
    assert_eq!(w.containers(), ["web-blue-1 cutover-demo:a running"]);
    assert_eq!(w.through_proxy(false, "web"), "version A [200]");
}
