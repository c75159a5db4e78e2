//! External mode end to end: the test runs an HAProxy the way an operator would
//! (master-worker, its own config, pid file and sockets), then `cutover run` drives it
//! through `--haproxy-socket`, `--haproxy-config` and `--haproxy-master-socket`, against the
//! real Docker engine and a real Consul agent. cutover must reload that HAProxy (same
//! master) and never start one of its own.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::{World, haproxy_masters, show_proc};

/// Writes a minimal master-worker configuration whose only frontend answers 503 on the
/// world's live port, and starts HAProxy from it as an operator would (`-D`: it
/// daemonizes), in the operator's directory `ops` inside the world's (so the world stops it
/// on drop); returns that directory: haproxy.cfg, admin.sock, master.sock, haproxy.pid.
fn start_operator_haproxy(w: &World) -> PathBuf {
    let ops = w.dir.path().join("ops");
    std::fs::create_dir_all(&ops).expect("create the operator's directory");
    let config = format!(
        "global
    master-worker
    stats socket {admin} mode 600 level admin expose-fd listeners

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s

frontend placeholder
    bind 127.0.0.1:{port}
    http-request return status 503 content-type text/plain string \"not yet\"
",
        admin = ops.join("admin.sock").display(),
        port = w.ports.live,
    );
    let cfg = ops.join("haproxy.cfg");
    std::fs::write(&cfg, config).expect("write the operator's config");
    let out = Command::new("haproxy")
        .arg("-W")
        .arg("-S")
        .arg(format!("{},mode,600", ops.join("master.sock").display()))
        .arg("-f")
        .arg(&cfg)
        .arg("-p")
        .arg(ops.join("haproxy.pid"))
        .arg("-D")
        .stdin(Stdio::null())
        .output()
        .expect("run haproxy");
    assert!(
        out.status.success(),
        "the operator's haproxy did not start: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    w.eventually("the operator's HAProxy to answer", || {
        show_proc(&ops).is_some() && w.through_port(w.ports.live, "web") == "not yet [503]"
    });
    ops
}

/// The operator's master pid, from its pid file.
fn pid_file_master(ops: &Path) -> u32 {
    std::fs::read_to_string(ops.join("haproxy.pid"))
        .expect("the operator's pid file")
        .trim()
        .parse()
        .expect("a pid in the pid file")
}

/// `(pid, reloads)` of the master from `show proc` on the operator's master CLI socket.
fn master_proc(ops: &Path) -> Option<(u32, u32)> {
    show_proc(ops).map(|p| (p.master_pid, p.reloads))
}

/// HAProxy masters whose command line names the operator's directory or cutover's.
fn masters(w: &World, ops: &Path) -> Vec<u32> {
    let mut pids = haproxy_masters(ops);
    pids.extend(haproxy_masters(&w.haproxy_dir("haproxy")));
    pids.sort();
    pids.dedup();
    pids
}

/// The demo service `short`, routed by host.
fn demo(w: &World, short: &str, image: &str) -> String {
    let extra = format!(
        "  routes: [{{host: {}}}]\n  strategy: {{blueGreen: {{scaleDownDelay: 1s, progressDeadline: 30s}}}}\n",
        w.host(short)
    );
    w.demo(short, image, 1, &extra)
}

#[test]
fn cutover_drives_an_haproxy_the_operator_runs_and_never_starts_its_own() {
    let w = World::new("external");
    let ops = start_operator_haproxy(&w);
    let master = pid_file_master(&ops);
    let (pid, reloads_before) = master_proc(&ops).unwrap();
    assert_eq!(pid, master, "show proc and the pid file agree");
    assert_eq!(masters(&w, &ops), [master], "only the operator's HAProxy");

    // External mode: cutover drives the operator's HAProxy through its sockets and config.
    let d = w
        .daemon()
        .short_lease()
        .arg("--haproxy-socket")
        .arg(ops.join("admin.sock"))
        .arg("--haproxy-config")
        .arg(ops.join("haproxy.cfg"))
        .arg("--haproxy-master-socket")
        .arg(ops.join("master.sock"))
        .start();
    w.apply("web", &demo(&w, "web", "cutover-demo:a"));
    w.wait_available("web");
    w.eventually("version A through the operator's HAProxy", || {
        w.through_proxy(d, "web") == "version A [200]"
    });
    let (pid, reloads) = master_proc(&ops).unwrap();
    assert_eq!(pid, master, "the same master, reloaded in place");
    assert!(
        reloads > reloads_before,
        "cutover reloaded it: {reloads_before} -> {reloads}"
    );
    assert_eq!(pid_file_master(&ops), master);
    let written = std::fs::read_to_string(ops.join("haproxy.cfg")).unwrap();
    assert!(
        written.starts_with("# Written by cutover"),
        "cutover wrote the operator's config: {written}"
    );

    w.apply("web", &demo(&w, "web", "cutover-demo:b"));
    w.eventually("version B through the operator's HAProxy", || {
        w.through_proxy(d, "web") == "version B [200]"
    });
    w.wait_available("web");
    assert_eq!(w.through_proxy(d, "web"), "version B [200]");
    let (pid, _) = master_proc(&ops).unwrap();
    assert_eq!(pid, master, "still the operator's master");
    assert_eq!(pid_file_master(&ops), master);
    assert_eq!(
        masters(&w, &ops),
        [master],
        "cutover never started an HAProxy of its own\n{}",
        w.logs()
    );
    assert!(
        !w.haproxy_dir("haproxy").join("master.sock").exists()
            && !w.haproxy_dir("haproxy").join("haproxy.pid").exists(),
        "no supervised HAProxy files in cutover's directory"
    );
}
