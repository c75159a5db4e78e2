//! A status or request key that holds junk never freezes a service: `cutover run` end to end,
//! against the real Docker engine and a real Consul agent.
//!
//! The daemon runs without a proxy (routing is tested elsewhere), with its own KV prefix,
//! instance label, Docker network and service name, and every container it made is removed
//! when the test ends, even when it fails.

mod support;

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use tokio::time::Instant;

use support::{Agent, TempDir, agent, docker, remove_instance, require_images, unique_prefix};

/// A daemon under test and everything it made.
struct World {
    agent: &'static Agent,
    prefix: String,
    instance: String,
    network: String,
    dir: TempDir,
    daemon: Option<Child>,
    /// The service's name: container names are global on the engine.
    name: String,
}

impl World {
    fn new(test: &str) -> World {
        require_images();
        let prefix = unique_prefix(test);
        let instance = prefix.replace('/', "-");
        let tag = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id();
        World {
            agent: agent(),
            network: format!("cutover-{instance}"),
            prefix,
            instance,
            dir: TempDir::new(),
            daemon: None,
            name: format!("junk-{:06x}", tag & 0xff_ffff),
        }
    }

    fn start_daemon(&mut self) {
        let log = std::fs::File::create(self.log_path()).unwrap();
        let child = support::cutover_command()
            .env("CONSUL_HTTP_ADDR", self.agent.address())
            .env("CUTOVER_PREFIX", &self.prefix)
            .env("RUST_LOG", "cutover=debug")
            .args(["run", "--network", &self.network])
            .args(["--instance", &self.instance])
            // A junk status is noticed at the next resync: nothing watches the status keys.
            .args(["--resync", "2s", "--no-proxy", "--listen", "127.0.0.1:0"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start cutover run");
        self.daemon = Some(child);
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn cutover(&self, args: &[&str]) -> support::Run {
        self.agent.cutover(&self.prefix).args(args).run()
    }

    fn apply(&self, image: &str, replicas: u32) {
        let manifest = format!(
            "apiVersion: cutover.dev/v1
kind: Service
metadata: {{name: {name}}}
spec:
  image: {image}
  replicas: {replicas}
  port: 80
  health: {{path: /cgi-bin/health, interval: 200ms, timeout: 150ms}}
  strategy: {{blueGreen: {{scaleDownDelay: 1s, progressDeadline: 30s}}}}
",
            name = self.name
        );
        let file = self.dir.write("service.yaml", &manifest);
        let run = self.cutover(&["apply", "-f", file.to_str().unwrap()]);
        assert!(run.status.success(), "apply failed: {run}");
    }

    /// Puts `value` at `<prefix>/<folder>/<name>` with the consul CLI, as a user would.
    fn kv_put(&self, folder: &str, value: &str) {
        let file = self.dir.write("value", value);
        self.agent
            .kv_put_file(&format!("{}/{folder}/{}", self.prefix, self.name), &file);
    }

    /// The status key as stored, if it is JSON.
    fn stored_status(&self) -> Option<serde_json::Value> {
        let text = self
            .agent
            .kv_get(&format!("{}/status/{}", self.prefix, self.name))?;
        serde_json::from_str(&text).ok()
    }

    fn wait_available(&self) {
        let run = self.cutover(&["status", &self.name, "--wait", "--timeout", "90s"]);
        assert!(
            run.status.success(),
            "{} did not become Available: {run}\n--- daemon log\n{}",
            self.name,
            self.log()
        );
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

    fn eventually(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "timed out waiting for {what}; containers: {:?}; status: {:?}\n--- daemon log\n{}",
            self.containers(),
            self.agent
                .kv_get(&format!("{}/status/{}", self.prefix, self.name)),
            self.log()
        );
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        remove_instance(&self.instance, &self.network);
    }
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
    let mut w = World::new("junk-status");
    w.start_daemon();
    w.apply("cutover-demo:a", 2);
    w.wait_available();
    let status_key = format!("{}/status/{}", w.prefix, w.name);

    // A status that is not JSON is rebuilt from the containers, with an event saying so.
    w.kv_put("status", "junk");
    w.eventually("the status to be rebuilt", || {
        w.stored_status().is_some_and(|s| {
            !events_with(&s, "StatusRebuilt").is_empty()
                && s["phase"] == "Available"
                && s["activeColor"] == "blue"
        })
    });
    let rebuilt = events_with(&w.stored_status().unwrap(), "StatusRebuilt");
    assert!(
        rebuilt[0].contains(&status_key) && rebuilt[0].contains("expected value"),
        "the event names the key and the decode error: {rebuilt:?}"
    );

    // The service is alive: a stopped replica is started again...
    let replica = format!("{}-blue-1", w.name);
    docker(&["stop", "-t", "1", &replica]);
    w.eventually("the stopped replica to run again", || {
        w.containers()
            .contains(&format!("{replica} cutover-demo:a running"))
    });
    // ...and a new image rolls out.
    w.apply("cutover-demo:b", 2);
    w.wait_available();
    let status = w.stored_status().unwrap();
    assert_eq!(status["activeColor"], "green", "{status:#}");
    assert_eq!(
        events_with(&status, "StatusRebuilt").len(),
        1,
        "reported once: {status:#}"
    );
    let log = w.log();
    assert_eq!(
        log.lines().filter(|l| l.contains(&status_key)).count(),
        1,
        "{status_key} is logged once\n--- daemon log\n{log}"
    );
}

#[test]
fn a_junk_request_is_reported_once_and_blocks_nothing() {
    let mut w = World::new("junk-request");
    w.start_daemon();
    w.apply("cutover-demo:a", 1);
    w.wait_available();
    let request_key = format!("{}/requests/{}", w.prefix, w.name);

    // A request that is not JSON is ignored with one event...
    w.kv_put("requests", "{\"action\": \"promote\"");
    w.eventually("the RequestUnreadable event", || {
        w.stored_status()
            .is_some_and(|s| !events_with(&s, "RequestUnreadable").is_empty())
    });
    // ...and blocks nothing: a scale and a rollout happen while it stays there.
    let run = w.cutover(&["scale", &w.name, "2"]);
    assert!(run.status.success(), "{run}");
    w.wait_available();
    w.eventually("two blue replicas ready", || {
        w.stored_status()
            .is_some_and(|s| s["colors"]["blue"]["ready"] == 2)
    });
    w.apply("cutover-demo:b", 2);
    w.wait_available();
    let status = w.stored_status().unwrap();
    assert_eq!(status["activeColor"], "green", "{status:#}");
    let ignored = events_with(&status, "RequestUnreadable");
    assert_eq!(ignored.len(), 1, "reported once: {status:#}");
    assert!(
        ignored[0].contains(&request_key) && ignored[0].contains("EOF while parsing"),
        "the event names the key and the decode error: {ignored:?}"
    );
    let log = w.log();
    assert_eq!(
        log.lines().filter(|l| l.contains(&request_key)).count(),
        1,
        "{request_key} is logged once\n--- daemon log\n{log}"
    );
}
