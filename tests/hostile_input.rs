//! Specs written by someone who means harm, through the paths a spec really takes: the
//! `cutover validate` binary, and a real `cutover run` reading them from a real Consul agent
//! next to a valid service on the real Docker engine.
//!
//! Each test has its own KV prefix, daemon instance label, Docker network and service names,
//! and removes every container it made when it ends, even when it fails.

mod support;

use support::{Daemon, TempDir, World, cutover_command};

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

/// Waits until `check` accepts the status of `short`; fails at once when the daemon has
/// exited (a stack overflow aborts it).
fn wait_for(
    w: &World,
    d: Daemon,
    short: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) {
    w.eventually(&format!("{short} to be {what}"), || {
        w.assert_running(d);
        w.try_status(short).is_some_and(|status| check(&status))
    });
}

#[test]
fn a_deeply_nested_spec_in_kv_is_invalid_and_the_daemon_runs_the_others() {
    let w = World::new("hostile-deep");
    let d = w.daemon().no_proxy().start();
    let (deep, good) = (w.svc("deep"), w.svc("good"));
    let deep_key = w.key(&format!("services/{deep}"));
    w.kv_put(&format!("services/{deep}"), &deep_spec(&deep));
    w.kv_put(
        &format!("services/{good}"),
        &format!(
            "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {{name: {good}}}\nspec:\n  \
             image: cutover-demo:a\n  health: {{path: /cgi-bin/health, interval: 200ms, \
             timeout: 150ms}}\n"
        ),
    );

    let expected = format!("{deep_key}:{DEEP_DIAGNOSTIC}");
    wait_for(
        &w,
        d,
        "deep",
        "Invalid with the located message",
        |status| {
            status["phase"] == "Invalid" && status["lastError"].as_str() == Some(expected.as_str())
        },
    );
    wait_for(&w, d, "good", "Available", |status| {
        status["phase"] == "Available"
    });
    w.assert_running(d);
}
