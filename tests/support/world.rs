//! A world for `cutover run` end to end: the test's own KV prefix, daemon instance label,
//! Docker network, service names, loopback ports and temporary directory, the daemons it
//! starts there, and what a test asks of them.
//!
//! ```ignore
//! let w = World::new("kill");
//! let d = w.daemon().short_lease().start();
//! w.apply("web", &w.demo("web", "cutover-demo:a", 2, FAST));
//! w.wait_available("web");
//! w.kill(d);
//! ```
//!
//! Names: the test writes short service names (`web`); the world appends its tag
//! (`web-1a2b3c`, see [`World::svc`]) because container names are global on the engine, and
//! every helper that takes a service takes the short name. [`World::containers`] lists
//! names without the tag again.
//!
//! Dropping the world kills its daemons, stops every process whose command line names its
//! directory (the HAProxy processes the daemons ran, or the test itself), and removes its
//! containers and network; also when the test failed. A missing Consul, Docker or test image
//! fails the test.

use std::cell::RefCell;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use tokio::time::Instant;

use super::{Agent, Run, TempDir, agent, cutover_command, docker, remove_instance};
use super::{http_get, require_images, unique_prefix, unused_port};

/// How long [`World::eventually`] waits: generous, the machines are small and noisy.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// How long [`World::wait_exit`] waits for a daemon to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// One test's prefix, names, ports and directory, and the daemons started in it.
pub struct World {
    pub agent: &'static Agent,
    /// The KV prefix, such as `test/kill-4242-123-7`.
    pub prefix: String,
    /// The daemons' `--instance`: the label on every container they make.
    pub instance: String,
    /// The daemons' `--network`.
    pub network: String,
    /// Appended to every service name; empty when [`World::untagged`].
    pub tag: String,
    /// Daemon logs, manifests, HAProxy directories; removed on drop.
    pub dir: TempDir,
    /// The live and preview ports a daemon's HAProxy binds unless told otherwise.
    pub ports: Ports,
    daemons: RefCell<Vec<Started>>,
}

/// A daemon of a [`World`], by the order it was started in (`daemon 0`, `daemon 1`...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Daemon(usize);

impl std::fmt::Display for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "daemon {}", self.0)
    }
}

/// HAProxy's live and preview listeners on loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub live: u16,
    pub preview: u16,
}

impl Ports {
    /// Two ports nobody used a moment ago.
    pub fn free() -> Ports {
        Ports {
            live: unused_port(),
            preview: unused_port(),
        }
    }
}

struct Started {
    /// `None` once killed or reaped.
    child: Option<Child>,
    log: PathBuf,
    /// `None` with `--no-proxy`.
    ports: Option<Ports>,
}

impl World {
    /// A world on the test binary's shared Consul agent.
    pub fn new(test: &str) -> World {
        World::with_agent(test, agent())
    }

    /// A world on `agent`, for a test that stops or freezes its own.
    pub fn with_agent(test: &str, agent: &'static Agent) -> World {
        require_images();
        let prefix = unique_prefix(test);
        let instance = prefix.replace('/', "-");
        World {
            agent,
            network: format!("cutover-{instance}"),
            prefix,
            instance,
            tag: format!("{:06x}", rand::random::<u32>() & 0xff_ffff),
            dir: TempDir::new(),
            ports: Ports::free(),
            daemons: RefCell::new(Vec::new()),
        }
    }

    /// Services named as the test writes them, without the tag: for a test that shows the
    /// names to people (the status page's screenshot). Container names are global on the
    /// engine, so no other test may use these names.
    pub fn untagged(mut self) -> World {
        self.tag.clear();
        self
    }

    // Names.

    /// The real name of the test's service `short` (`web` -> `web-1a2b3c`; `web` when
    /// [`World::untagged`]).
    pub fn svc(&self, short: &str) -> String {
        if self.tag.is_empty() {
            return short.to_owned();
        }
        format!("{short}-{}", self.tag)
    }

    /// The host that routes to the test's service `short` (`web-1a2b3c.test`).
    pub fn host(&self, short: &str) -> String {
        format!("{}.test", self.svc(short))
    }

    /// The KV key `<prefix>/<path>`.
    pub fn key(&self, path: &str) -> String {
        format!("{}/{path}", self.prefix)
    }

    /// An HAProxy state directory of this test (`DaemonBuilder::haproxy_dir`), not created.
    pub fn haproxy_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    // Daemons.

    /// A `cutover run` to start: see [`DaemonBuilder`] for what it runs with.
    pub fn daemon(&self) -> DaemonBuilder<'_> {
        DaemonBuilder {
            world: self,
            consul: self.agent.address(),
            resync: "5s".to_owned(),
            lease: None,
            proxy: true,
            edge: false,
            haproxy_dir: "haproxy".to_owned(),
            ports: self.ports,
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// kill -9, as a crash would; nothing when it is not running.
    pub fn kill(&self, d: Daemon) {
        let child = self.daemons.borrow_mut()[d.0].child.take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and returns at once; see [`World::wait_exit`].
    pub fn sigterm(&self, d: Daemon) {
        let pid = self.pid(d).unwrap_or_else(|| panic!("{d} is not running"));
        signal(pid, "TERM");
    }

    /// Waits (60 s at most) until the daemon has exited, and returns how.
    pub fn wait_exit(&self, d: Daemon) -> ExitStatus {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.exited(d) {
                self.daemons.borrow_mut()[d.0].child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{d} did not exit within {EXIT_TIMEOUT:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How the daemon exited, if it has.
    pub fn exited(&self, d: Daemon) -> Option<ExitStatus> {
        self.daemons.borrow_mut()[d.0]
            .child
            .as_mut()
            .and_then(|c| c.try_wait().expect("wait for the daemon"))
    }

    /// Fails the test, with the logs, when the daemon has exited.
    pub fn assert_running(&self, d: Daemon) {
        if let Some(status) = self.exited(d) {
            panic!("{d} exited: {status}\n{}", self.logs());
        }
    }

    /// The daemon's process id while it has not been killed or reaped.
    pub fn pid(&self, d: Daemon) -> Option<u32> {
        self.daemons.borrow()[d.0].child.as_ref().map(Child::id)
    }

    /// The daemon that holds the leader lock, by the pid in the lock key.
    pub fn leader(&self) -> Option<Daemon> {
        let key = cutover::leader::leader_key(&self.prefix);
        let entry = block_on(self.agent.client().get(&key)).expect("read the lock key")?;
        entry.session.as_ref()?;
        let holder: cutover::leader::Holder = serde_json::from_slice(&entry.value).ok()?;
        let count = self.daemons.borrow().len();
        (0..count)
            .map(Daemon)
            .find(|d| self.pid(*d) == Some(holder.pid))
    }

    /// The daemon's output so far.
    pub fn log(&self, d: Daemon) -> String {
        let path = self.daemons.borrow()[d.0].log.clone();
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Every daemon's output, each under a `--- daemon N log` line.
    pub fn logs(&self) -> String {
        let count = self.daemons.borrow().len();
        (0..count)
            .map(Daemon)
            .map(|d| format!("--- {d} log\n{}", self.log(d)))
            .collect()
    }

    /// The address of the daemon's HTTP endpoints (`127.0.0.1:PORT`, from its log), once
    /// `/healthz` answers there.
    pub fn endpoint(&self, d: Daemon) -> String {
        let mut address = None;
        self.eventually(&format!("the HTTP endpoints of {d}"), || {
            address = listening_address(&self.log(d));
            address
                .as_deref()
                .and_then(|a| a.rsplit_once(':')?.1.parse().ok())
                .is_some_and(|port| http_get(port, "/healthz").is_some())
        });
        address.unwrap_or_default()
    }

    /// The line of the daemon's `/metrics` for `name` (such as `cutover_leader 1`).
    pub fn metric(&self, d: Daemon, name: &str) -> Option<String> {
        let url = format!("http://{}/metrics", self.endpoint(d));
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "5", &url])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .map(str::to_owned)
    }

    // Traffic.

    /// What the daemon's live listener answers for the service `short`'s host: the body
    /// and the status code, as `version A [200]`.
    pub fn through_proxy(&self, d: Daemon, short: &str) -> String {
        self.through_port(self.proxy_ports(d).live, short)
    }

    /// Like [`World::through_proxy`], on the preview listener.
    pub fn through_preview(&self, d: Daemon, short: &str) -> String {
        self.through_port(self.proxy_ports(d).preview, short)
    }

    /// What `127.0.0.1:port` answers for the service `short`'s host.
    pub fn through_port(&self, port: u16, short: &str) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
            .args(["-H", &format!("Host: {}", self.host(short))])
            .arg(format!("http://127.0.0.1:{port}/"))
            .output()
            .expect("run curl");
        let out = String::from_utf8_lossy(&out.stdout);
        let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", &out));
        format!("{} [{code}]", body.trim())
    }

    fn proxy_ports(&self, d: Daemon) -> Ports {
        self.daemons.borrow()[d.0]
            .ports
            .unwrap_or_else(|| panic!("{d} runs without a proxy"))
    }

    // The cutover CLI and KV.

    /// `cutover ARGS` on this world's prefix; the caller checks the outcome.
    pub fn cutover(&self, args: &[&str]) -> Run {
        self.agent.cutover(&self.prefix).args(args).run()
    }

    /// The demo service `short`: the test images' CGI health check, `extra` lines after it
    /// (routes, strategy) as they are.
    pub fn demo(&self, short: &str, image: &str, replicas: u32, extra: &str) -> String {
        format!(
            "apiVersion: cutover.dev/v1
kind: Service
metadata: {{name: {name}}}
spec:
  image: {image}
  replicas: {replicas}
  port: 80
  health: {{path: /cgi-bin/health, interval: 200ms, timeout: 150ms}}
{extra}",
            name = self.svc(short)
        )
    }

    /// `cutover apply -f FILE.yaml` with `manifest`; fails the test when it fails.
    pub fn apply(&self, file: &str, manifest: &str) {
        let path = self.dir.write(&format!("{file}.yaml"), manifest);
        let run = self.cutover(&["apply", "-f", &path.to_string_lossy()]);
        assert!(run.status.success(), "apply failed: {run}");
    }

    /// `cutover status NAME --wait --timeout 90s`: whether it reported success, and its
    /// output.
    pub fn wait(&self, short: &str) -> (bool, String) {
        let run = self.cutover(&["status", &self.svc(short), "--wait", "--timeout", "90s"]);
        (run.status.success(), format!("{run}"))
    }

    /// [`World::wait`], and fails the test (with the logs) unless the service is Available.
    pub fn wait_available(&self, short: &str) {
        let (ok, output) = self.wait(short);
        assert!(
            ok,
            "{short} did not become Available: {output}\n{}",
            self.logs()
        );
    }

    /// `cutover status NAME -o json`; fails the test when it fails.
    pub fn status(&self, short: &str) -> serde_json::Value {
        let run = self.cutover(&["status", &self.svc(short), "-o", "json"]);
        assert!(run.status.success(), "{run}");
        serde_json::from_str(&run.stdout).expect("status JSON")
    }

    /// `cutover status NAME -o json`, if it succeeds.
    pub fn try_status(&self, short: &str) -> Option<serde_json::Value> {
        let run = self.cutover(&["status", &self.svc(short), "-o", "json"]);
        if !run.status.success() {
            return None;
        }
        serde_json::from_str(&run.stdout).ok()
    }

    /// Waits until `cutover status` reports `phase`.
    pub fn wait_phase(&self, short: &str, phase: &str) {
        self.eventually(&format!("{short} to be {phase}"), || {
            self.try_status(short)
                .is_some_and(|s| s["phase"].as_str() == Some(phase))
        });
    }

    /// `consul kv put <prefix>/<path> @FILE` with `text`, as a user would (no validation).
    pub fn kv_put(&self, path: &str, text: &str) {
        let file = self.dir.write("kv-value", text);
        self.agent.kv_put_file(&self.key(path), &file);
    }

    /// `consul kv delete <prefix>/<path>`.
    pub fn kv_delete(&self, path: &str) {
        let output = Command::new("consul")
            .args([
                "kv",
                "delete",
                &format!("-http-addr={}", self.agent.address()),
                &self.key(path),
            ])
            .output()
            .expect("run consul kv delete");
        assert!(
            output.status.success(),
            "consul kv delete failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `consul kv get <prefix>/<path>`.
    pub fn kv_get(&self, path: &str) -> Option<String> {
        self.agent.kv_get(&self.key(path))
    }

    // The engine, and waiting.

    /// [`World::containers`] that are running.
    pub fn running(&self) -> Vec<String> {
        self.containers()
            .into_iter()
            .filter(|c| c.ends_with(" running"))
            .collect()
    }

    /// `name image state` of this world's containers, sorted, with the tag taken out of
    /// the names (`web-blue-1 cutover-demo:a running`).
    pub fn containers(&self) -> Vec<String> {
        let out = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=dev.cutover.instance={}", self.instance),
            "--format",
            "{{.Names}} {{.Image}} {{.State}}",
        ]);
        let tag = format!("-{}", self.tag);
        let mut lines: Vec<String> = out
            .lines()
            .map(|l| {
                if self.tag.is_empty() {
                    l.to_owned()
                } else {
                    l.replace(&tag, "")
                }
            })
            .collect();
        lines.sort();
        lines
    }

    /// Checks until `check` holds (every 50 ms for the first 2 s, then every 200 ms), for
    /// 90 s at most; then fails the test with the containers, the status keys and the
    /// daemon logs.
    pub fn eventually(&self, what: &str, check: impl FnMut() -> bool) {
        self.eventually_within(what, PATIENCE, check);
    }

    /// [`World::eventually`] for `limit` instead of 90 s; returns how long it took.
    pub fn eventually_within(
        &self,
        what: &str,
        limit: Duration,
        mut check: impl FnMut() -> bool,
    ) -> Duration {
        let start = Instant::now();
        while start.elapsed() < limit {
            if check() {
                return start.elapsed();
            }
            // Often at first, so that a measured wait is precise (supervision.rs prints how
            // soon HAProxy serves again); then less, to spare a loaded machine.
            let pause = if start.elapsed() < Duration::from_secs(2) {
                Duration::from_millis(50)
            } else {
                Duration::from_millis(200)
            };
            std::thread::sleep(pause);
        }
        panic!(
            "timed out waiting for {what} ({limit:?}); containers: {:?}\n--- status keys\n{}\n{}",
            self.containers(),
            self.status_keys(),
            self.logs()
        );
    }

    /// Every status key under the prefix, for failure messages; bounded in time, since a
    /// test may have frozen the agent.
    fn status_keys(&self) -> String {
        let out = Command::new("timeout")
            .args(["10", "consul", "kv", "get", "-recurse"])
            .arg(format!("-http-addr={}", self.agent.address()))
            .arg(self.key("status/"))
            .output();
        match out {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            Err(e) => format!("(consul kv get failed: {e})"),
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // The daemons first, so that no supervisor starts HAProxy again.
        let count = self.daemons.borrow().len();
        for d in (0..count).map(Daemon) {
            self.kill(d);
        }
        // HAProxy outlives its daemon on purpose: every one this test ran names a
        // directory inside the test's.
        stop_processes_naming(self.dir.path());
        remove_instance(&self.instance, &self.network);
    }
}

/// A `cutover run` being set up. By default it runs with:
///
/// - `CONSUL_HTTP_ADDR` of the world's agent, `CUTOVER_PREFIX` of the world,
///   `RUST_LOG=cutover=debug`, its output in `daemon-N.log` of the world's directory;
/// - `--network`, `--instance` of the world, `--resync 5s`, `--listen 127.0.0.1:0` (see
///   [`World::endpoint`]);
/// - its own HAProxy in [`World::haproxy_dir`]`("haproxy")` on the world's [`Ports`]
///   (`--haproxy-dir`, `--http-bind`, `--preview-bind`), so that a restarted daemon adopts
///   the HAProxy of the one before;
/// - Consul's default leader lease.
#[must_use = "a daemon runs only once started"]
pub struct DaemonBuilder<'w> {
    world: &'w World,
    consul: String,
    resync: String,
    lease: Option<(Duration, Duration)>,
    proxy: bool,
    /// `cutover proxy` instead of `cutover run`.
    edge: bool,
    haproxy_dir: String,
    ports: Ports,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

impl DaemonBuilder<'_> {
    /// `--resync`, such as `2s`.
    pub fn resync(mut self, every: &str) -> Self {
        self.resync = every.to_owned();
        self
    }

    /// `--leader-ttl` and `--lock-delay` (whole seconds).
    pub fn lease(mut self, ttl: Duration, lock_delay: Duration) -> Self {
        self.lease = Some((ttl, lock_delay));
        self
    }

    /// The shortest lease Consul allows (TTL 10 s, lock delay 1 s): a daemon started after
    /// a kill -9 waits for the dead one's session to expire (one to two TTLs) and the lock
    /// delay.
    pub fn short_lease(self) -> Self {
        self.lease(Duration::from_secs(10), Duration::from_secs(1))
    }

    /// `cutover proxy`: the proxy role alone (no controller, no Docker), for an edge node.
    pub fn edge(mut self) -> Self {
        self.edge = true;
        self
    }

    /// `--no-proxy`: no HAProxy (the proxy settings are not passed).
    pub fn no_proxy(mut self) -> Self {
        self.proxy = false;
        self
    }

    /// HAProxy's state in [`World::haproxy_dir`]`(name)` instead of `haproxy`.
    pub fn haproxy_dir(mut self, name: &str) -> Self {
        self.haproxy_dir = name.to_owned();
        self
    }

    /// HAProxy's listeners on `ports` instead of the world's.
    pub fn ports(mut self, ports: Ports) -> Self {
        self.ports = ports;
        self
    }

    /// `CONSUL_HTTP_ADDR`, such as an address where nothing listens.
    pub fn consul(mut self, address: &str) -> Self {
        self.consul = address.to_owned();
        self
    }

    /// One more argument for `cutover run`, such as `--prune-orphans`.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// One more environment variable (or another value for one of the defaults).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.envs.push((name.into(), value.into()));
        self
    }

    /// Starts it and returns at once.
    pub fn start(self) -> Daemon {
        let w = self.world;
        let number = w.daemons.borrow().len();
        let log = w.dir.path().join(format!("daemon-{number}.log"));
        let file = std::fs::File::create(&log).expect("create the daemon's log");
        let mut command = cutover_command();
        command
            .env("CONSUL_HTTP_ADDR", &self.consul)
            .env("CUTOVER_PREFIX", &w.prefix)
            .env("RUST_LOG", "cutover=debug");
        // Tests run daemons in parallel: each takes a free port for its HTTP endpoints.
        if self.edge {
            command.args(["proxy", "--listen", "127.0.0.1:0"]);
        } else {
            command
                .args(["run", "--network", &w.network, "--instance", &w.instance])
                .args(["--resync", &self.resync])
                .args(["--listen", "127.0.0.1:0"]);
        }
        if let Some((ttl, lock_delay)) = self.lease.filter(|_| !self.edge) {
            command
                .args(["--leader-ttl", &format!("{}s", ttl.as_secs())])
                .args(["--lock-delay", &format!("{}s", lock_delay.as_secs())]);
        }
        let ports = if self.proxy {
            command
                .args(["--http-bind", &format!("127.0.0.1:{}", self.ports.live)])
                .args([
                    "--preview-bind",
                    &format!("127.0.0.1:{}", self.ports.preview),
                ])
                .arg("--haproxy-dir")
                .arg(w.haproxy_dir(&self.haproxy_dir));
            Some(self.ports)
        } else {
            command.arg("--no-proxy");
            None
        };
        let child = command
            .args(&self.args)
            .envs(self.envs)
            .stdout(file.try_clone().expect("share the daemon's log"))
            .stderr(file)
            .spawn()
            .expect("start cutover run");
        w.daemons.borrow_mut().push(Started {
            child: Some(child),
            log,
            ports,
        });
        Daemon(number)
    }
}

/// `host:port` from the daemon's `HTTP endpoints listening (status page at http://...)`.
fn listening_address(log: &str) -> Option<String> {
    let (_, rest) = log.split_once("status page at http://")?;
    rest.split('/').next().map(str::to_owned)
}

/// Runs a future to the end on a runtime of its own (the tests around it are synchronous).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(future)
}

/// `kill -SIGNAL PID`; fails the test when kill fails.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// The pids of the processes whose command line contains `needle`.
pub fn processes_whose_cmdline_contains(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                String::from_utf8_lossy(&cmdline)
                    .replace('\0', " ")
                    .contains(needle)
            })
        })
        .collect()
}

/// The HAProxy masters whose command line names a file in `dir`: HAProxy processes (not
/// `haproxy -c` checks) whose parent is not one of them (workers are the master's children;
/// zombies have no command line).
pub fn haproxy_masters(dir: &Path) -> Vec<u32> {
    let needle = format!("{}/", dir.display());
    let ours: Vec<(u32, u32)> = processes_whose_cmdline_contains(&needle)
        .into_iter()
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let haproxy = args.first()?.ends_with("haproxy") && !args.iter().any(|a| a == "-c");
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let ppid = status
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))?
                .trim()
                .parse()
                .ok()?;
            haproxy.then_some((pid, ppid))
        })
        .collect();
    let pids: Vec<u32> = ours.iter().map(|(pid, _)| *pid).collect();
    ours.iter()
        .filter(|(_, ppid)| !pids.contains(ppid))
        .map(|(pid, _)| *pid)
        .collect()
}

/// `show proc` on the master CLI socket `dir/master.sock`; `None` when nothing answers.
pub fn show_proc(dir: &Path) -> Option<cutover::haproxy::runtime::Processes> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(dir.join("master.sock")).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"show proc\n").ok()?;
    // The master answers once it sees the end of the request.
    stream.shutdown(std::net::Shutdown::Write).ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    cutover::haproxy::runtime::parse_show_proc(&reply)
}

/// SIGTERM to every process whose command line names a file in `dir`, then SIGKILL to
/// those still there after two seconds.
fn stop_processes_naming(dir: &Path) {
    let needle = format!("{}/", dir.display());
    let send = |signal: &str| {
        let pids = processes_whose_cmdline_contains(&needle);
        for pid in &pids {
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
        !pids.is_empty()
    };
    if !send("-TERM") {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && !processes_whose_cmdline_contains(&needle).is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
    send("-KILL");
}
