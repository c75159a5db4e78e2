//! External mode end to end: the test runs an HAProxy the way an operator would
//! (master-worker, its own config, pid file and sockets), then `cutover run` drives it
//! through `--haproxy-socket`, `--haproxy-config` and `--haproxy-master-socket`, against the
//! real Docker engine and a real Consul agent. cutover must reload that HAProxy (same
//! master) and never start one of its own.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use support::{Agent, TempDir, agent, remove_instance, require_images, unique_prefix};

/// The operator's HAProxy, the daemon driving it, and everything the daemon made.
struct World {
    agent: &'static Agent,
    prefix: String,
    instance: String,
    network: String,
    /// The operator's directory: haproxy.cfg, admin.sock, master.sock, haproxy.pid.
    ops: TempDir,
    /// cutover's `--haproxy-dir` (maps, routes.json, staging) and the daemon's log.
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
            ops: TempDir::new(),
            dir: TempDir::new(),
            daemon: None,
            tag: format!("{:06x}", rand_u32() & 0xff_ffff),
            http_port: support::unused_port(),
            preview_port: support::unused_port(),
        }
    }

    fn ops_path(&self, name: &str) -> PathBuf {
        self.ops.path().join(name)
    }

    fn haproxy_dir(&self) -> PathBuf {
        self.dir.path().join("haproxy")
    }

    /// Writes a minimal master-worker configuration whose only frontend answers 503 on the
    /// live port, and starts HAProxy from it as an operator would (`-D`: it daemonizes).
    fn start_operator_haproxy(&self) {
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
            admin = self.ops_path("admin.sock").display(),
            port = self.http_port,
        );
        let cfg = self.ops.write("haproxy.cfg", &config);
        let out = Command::new("haproxy")
            .arg("-W")
            .arg("-S")
            .arg(format!(
                "{},mode,600",
                self.ops_path("master.sock").display()
            ))
            .arg("-f")
            .arg(&cfg)
            .arg("-p")
            .arg(self.ops_path("haproxy.pid"))
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
        self.eventually("the operator's HAProxy to answer", || {
            master_proc(&self.ops_path("master.sock")).is_some()
                && self.through_proxy("web") == "not yet [503]"
        });
    }

    /// Starts `cutover run` in external mode on the operator's HAProxy.
    fn start_daemon(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let child = support::cutover_command()
            .env("CONSUL_HTTP_ADDR", self.agent.address())
            .env("CUTOVER_PREFIX", &self.prefix)
            .env("RUST_LOG", "cutover=debug")
            .envs([("CUTOVER_LEADER_TTL", "10s"), ("CUTOVER_LOCK_DELAY", "1s")])
            .args([
                "run",
                "--network",
                &self.network,
                "--instance",
                &self.instance,
            ])
            .args(["--resync", "5s"])
            .arg("--haproxy-socket")
            .arg(self.ops_path("admin.sock"))
            .arg("--haproxy-config")
            .arg(self.ops_path("haproxy.cfg"))
            .arg("--haproxy-master-socket")
            .arg(self.ops_path("master.sock"))
            .args(["--http-bind", &format!("127.0.0.1:{}", self.http_port)])
            .args([
                "--preview-bind",
                &format!("127.0.0.1:{}", self.preview_port),
            ])
            .arg("--haproxy-dir")
            .arg(self.haproxy_dir())
            .args(["--listen", "127.0.0.1:0"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start cutover run");
        self.daemon = Some(child);
    }

    /// What the live listener answers for `service`'s host: the body and the status code.
    fn through_proxy(&self, service: &str) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
            .args(["-H", &format!("Host: {}.test", self.svc(service))])
            .arg(format!("http://127.0.0.1:{}/", self.http_port))
            .output()
            .expect("run curl");
        let out = String::from_utf8_lossy(&out.stdout);
        let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", &out));
        format!("{} [{code}]", body.trim())
    }

    /// The operator's master pid, from its pid file.
    fn pid_file_master(&self) -> u32 {
        std::fs::read_to_string(self.ops_path("haproxy.pid"))
            .expect("the operator's pid file")
            .trim()
            .parse()
            .expect("a pid in the pid file")
    }

    /// HAProxy masters (not workers, not `haproxy -c` checks) whose command line names
    /// the operator's directory or cutover's.
    fn haproxy_masters(&self) -> Vec<u32> {
        let dirs = [self.ops.path().to_owned(), self.haproxy_dir()];
        let ours: Vec<(u32, u32)> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let args: Vec<String> = cmdline
                    .split(|b| *b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                let is_haproxy = args.first()?.ends_with("haproxy");
                let names_dir = args
                    .iter()
                    .any(|a| dirs.iter().any(|d| a.contains(d.to_str().unwrap())));
                let check = args.iter().any(|a| a == "-c");
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let ppid = stat
                    .rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                (is_haproxy && names_dir && !check).then_some((pid, ppid))
            })
            .collect();
        let pids: Vec<u32> = ours.iter().map(|(pid, _)| *pid).collect();
        ours.iter()
            .filter(|(_, ppid)| !pids.contains(ppid))
            .map(|(pid, _)| *pid)
            .collect()
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

    /// The demo manifest of the test's service `short`, routed by host.
    fn demo(&self, short: &str, image: &str) -> String {
        let name = self.svc(short);
        format!(
            "apiVersion: cutover.dev/v1
kind: Service
metadata: {{name: {name}}}
spec:
  image: {image}
  replicas: 1
  port: 80
  health: {{path: /cgi-bin/health, interval: 200ms, timeout: 150ms}}
  routes: [{{host: {name}.test}}]
  strategy: {{blueGreen: {{scaleDownDelay: 1s, progressDeadline: 30s}}}}
"
        )
    }

    fn apply(&self, name: &str, manifest: &str) {
        let file = self.dir.write(&format!("{name}.yaml"), manifest);
        let run = self.cutover(&["apply", "-f", file.to_str().unwrap()]);
        assert!(run.status.success(), "apply failed: {run}");
    }

    fn wait_available(&self, name: &str) {
        let run = self.cutover(&["status", &self.svc(name), "--wait", "--timeout", "90s"]);
        assert!(
            run.status.success(),
            "{name} did not become Available: {run}\n--- daemon log\n{}",
            self.log()
        );
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
            "timed out waiting for {what}\n--- daemon log\n{}",
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
        // The operator's HAProxy: its master stops its workers on SIGTERM.
        if let Ok(pid) = std::fs::read_to_string(self.ops_path("haproxy.pid")) {
            for pid in pid.split_whitespace() {
                let _ = Command::new("kill").arg(pid).status();
            }
        }
        // Anything else left under our directories (a second master would be a bug).
        for pid in self.haproxy_masters() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        remove_instance(&self.instance, &self.network);
    }
}

/// `(pid, reloads)` of the master from `show proc` on its master CLI socket.
fn master_proc(master: &Path) -> Option<(u32, u64)> {
    let mut stream = UnixStream::connect(master).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"show proc\n").ok()?;
    // The master answers once it sees the end of the request.
    stream.shutdown(std::net::Shutdown::Write).ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    reply.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [pid, "master", reloads, ..] => Some((pid.parse().ok()?, reloads.parse().ok()?)),
            _ => None,
        }
    })
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

#[test]
fn cutover_drives_an_haproxy_the_operator_runs_and_never_starts_its_own() {
    let mut w = World::new("external");
    w.start_operator_haproxy();
    let master = w.pid_file_master();
    let (pid, reloads_before) = master_proc(&w.ops_path("master.sock")).unwrap();
    assert_eq!(pid, master, "show proc and the pid file agree");
    assert_eq!(w.haproxy_masters(), [master], "only the operator's HAProxy");

    w.start_daemon();
    w.apply("web", &w.demo("web", "cutover-demo:a"));
    w.wait_available("web");
    w.eventually("version A through the operator's HAProxy", || {
        w.through_proxy("web") == "version A [200]"
    });
    let (pid, reloads) = master_proc(&w.ops_path("master.sock")).unwrap();
    assert_eq!(pid, master, "the same master, reloaded in place");
    assert!(
        reloads > reloads_before,
        "cutover reloaded it: {reloads_before} -> {reloads}"
    );
    assert_eq!(w.pid_file_master(), master);
    let written = std::fs::read_to_string(w.ops_path("haproxy.cfg")).unwrap();
    assert!(
        written.starts_with("# Written by cutover"),
        "cutover wrote the operator's config: {written}"
    );

    w.apply("web", &w.demo("web", "cutover-demo:b"));
    w.eventually("version B through the operator's HAProxy", || {
        w.through_proxy("web") == "version B [200]"
    });
    w.wait_available("web");
    assert_eq!(w.through_proxy("web"), "version B [200]");
    let (pid, _) = master_proc(&w.ops_path("master.sock")).unwrap();
    assert_eq!(pid, master, "still the operator's master");
    assert_eq!(w.pid_file_master(), master);
    assert_eq!(
        w.haproxy_masters(),
        [master],
        "cutover never started an HAProxy of its own\n--- daemon log\n{}",
        w.log()
    );
    assert!(
        !w.haproxy_dir().join("master.sock").exists()
            && !w.haproxy_dir().join("haproxy.pid").exists(),
        "no supervised HAProxy files in cutover's directory"
    );
}
