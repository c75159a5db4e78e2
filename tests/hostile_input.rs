//! Specs written by someone who means harm, through the paths a spec really takes: the
//! `cutover validate` binary, and a real `cutover run` reading them from a real Consul agent
//! next to a valid service on the real Docker engine.
//!
//! Each test has its own KV prefix, daemon instance label, Docker network and service names,
//! and removes every container it made when it ends, even when it fails.

mod support;

use std::process::Child;
use std::time::Duration;

use tokio::time::Instant;

use support::{TempDir, agent, cutover_command, remove_instance, require_images, unique_prefix};

/// The repro of the stack overflow: a command list nested 20,000 levels deep with "- ".
fn deep_spec(name: &str) -> String {
    format!(
        "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  \
         image: x:1\n  command:\n    {}x\n",
        "- ".repeat(20_000)
    )
}

/// The diagnostic of [`deep_spec`], after `source:`.
const DEEP_DIAGNOSTIC: &str = "7:129: spec.command[0][0]...: lists and mappings are nested \
                               more than 64 levels deep here; a manifest needs a few levels, \
                               remove the extra brackets, dashes or indentation";

#[test]
fn validate_reports_deep_nesting_with_its_place_and_exits_1() {
    let dir = TempDir::new();
    let path = dir.write("deep.yaml", &deep_spec("deep"));
    let output = cutover_command()
        .arg("validate")
        .arg(&path)
        .output()
        .expect("run cutover validate");
    let stderr = String::from_utf8_lossy(&output.stderr);
    // A stack overflow ends the process with SIGABRT: no exit code at all.
    assert_eq!(
        output.status.code(),
        Some(1),
        "{:?}: {stderr}",
        output.status
    );
    assert!(
        stderr.contains(&format!("{}:{DEEP_DIAGNOSTIC}", path.display())),
        "{stderr}"
    );
}

/// A daemon without HAProxy, and what it made.
struct Daemon {
    prefix: String,
    instance: String,
    network: String,
    dir: TempDir,
    child: Child,
}

impl Daemon {
    fn start(test: &str) -> Daemon {
        require_images();
        let prefix = unique_prefix(test);
        let instance = prefix.replace('/', "-");
        let network = format!("cutover-{instance}");
        let dir = TempDir::new();
        let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
        let child = cutover_command()
            .env("CONSUL_HTTP_ADDR", agent().address())
            .env("CUTOVER_PREFIX", &prefix)
            .env("RUST_LOG", "cutover=debug")
            .args(["run", "--no-proxy", "--network", &network])
            .args(["--instance", &instance, "--resync", "5s"])
            .args(["--listen", "127.0.0.1:0"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start cutover run");
        Daemon {
            prefix,
            instance,
            network,
            dir,
            child,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Fails the test when the daemon has exited (a stack overflow aborts it).
    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "the daemon exited: {status}\n--- daemon log\n{}",
                self.log()
            );
        }
    }

    fn status(&self, name: &str) -> Option<serde_json::Value> {
        let run = agent()
            .cutover(&self.prefix)
            .args(["status", name, "-o", "json"])
            .run();
        if !run.status.success() {
            return None;
        }
        serde_json::from_str(&run.stdout).ok()
    }

    /// Waits (90 s at most) until `check` accepts the status of `name`.
    fn wait_for(&mut self, name: &str, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut last = None;
        while Instant::now() < deadline {
            self.assert_alive();
            last = self.status(name);
            if last.as_ref().is_some_and(&check) {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "timed out waiting for {name} to be {what}; last status: {last:#?}\n--- daemon log\n{}",
            self.log()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_instance(&self.instance, &self.network);
    }
}

#[test]
fn a_deeply_nested_spec_in_kv_is_invalid_and_the_daemon_runs_the_others() {
    let mut daemon = Daemon::start("hostile-deep");
    let suffix = daemon.instance.rsplit('-').next().unwrap_or("x").to_owned();
    let deep = format!("deep-{suffix}");
    let good = format!("good-{suffix}");
    let deep_key = format!("{}/services/{deep}", daemon.prefix);
    let deep_file = daemon.dir.write("deep.yaml", &deep_spec(&deep));
    agent().kv_put_file(&deep_key, &deep_file);
    let good_file = daemon.dir.write(
        "good.yaml",
        &format!(
            "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {{name: {good}}}\nspec:\n  \
             image: cutover-demo:a\n  health: {{path: /cgi-bin/health, interval: 200ms, \
             timeout: 150ms}}\n"
        ),
    );
    agent().kv_put_file(&format!("{}/services/{good}", daemon.prefix), &good_file);

    let expected = format!("{deep_key}:{DEEP_DIAGNOSTIC}");
    daemon.wait_for(&deep, "Invalid with the located message", |status| {
        status["phase"] == "Invalid" && status["lastError"].as_str() == Some(expected.as_str())
    });
    daemon.wait_for(&good, "Available", |status| status["phase"] == "Available");
    daemon.assert_alive();
}
