//! Shared test support: a real Consul agent on free ports, the `cutover` binary, temporary
//! directories and manifest fixtures, and [`World`]: `cutover run` daemons under test with
//! their own prefix, names, ports and directory (see `world.rs`).
//!
//! Each test binary shares one agent ([`agent`]); each test works under its own random KV
//! prefix ([`unique_prefix`]), so tests run in parallel without seeing each other. A test
//! that needs an agent to itself uses [`Agent::start`], which is stopped on drop.
//!
//! The agent runs under a small shell watchdog that stops it (and removes its data directory)
//! when the test process exits, however it exits: statics are never dropped, and a panic or a
//! kill must not leave agents behind. If `consul` is not installed, the harness panics: these
//! tests are never skipped.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

mod load;
mod world;

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use load::{Load, request};
#[allow(unused_imports)]
pub use world::{
    Daemon, DaemonBuilder, Ports, World, block_on, haproxy_masters,
    processes_whose_cmdline_contains, show_proc, signal,
};

/// How long an agent may take to elect itself leader; generous for a loaded 2-core machine.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the agent given after `--` in the background and stops it when the test process
/// ($2) is gone or when this shell gets SIGTERM; removes the data directory ($1) either way.
const WATCHDOG: &str = r#"
data="$1"; parent="$2"; shift 2
"$@" >"$data/agent.log" 2>&1 &
agent=$!
stop() { kill "$agent" 2>/dev/null; wait "$agent" 2>/dev/null; rm -rf "$data"; exit 0; }
trap stop TERM INT HUP
while kill -0 "$parent" 2>/dev/null && kill -0 "$agent" 2>/dev/null; do
    sleep 1 & wait $!
done
stop
"#;

/// A `consul agent -dev` on loopback, on ports nobody else uses.
pub struct Agent {
    /// `None` while stopped by [`Agent::stop_losing_data`].
    watchdog: Mutex<Option<Child>>,
    http_port: u16,
    /// HTTP, Serf LAN, Serf WAN and server RPC.
    ports: [u16; 4],
    extra_args: Vec<String>,
    data_dir: PathBuf,
}

impl Agent {
    /// Starts an agent and waits until it has elected itself leader. Retries with new ports
    /// when another process took one of them first.
    pub fn start() -> Agent {
        Agent::start_with(&[])
    }

    /// Like [`Agent::start`], with more arguments for `consul agent`, such as
    /// `["-hcl", "acl { enabled = true }"]`.
    pub fn start_with(extra_args: &[&str]) -> Agent {
        let consul = which("consul").unwrap_or_else(|| {
            panic!(
                "consul not found: run scripts/install-deps (these tests need a real Consul agent)"
            )
        });
        let mut last_failure = String::new();
        for _ in 0..3 {
            match Agent::try_start(&consul, extra_args) {
                Ok(agent) => return agent,
                Err(failure) => last_failure = failure,
            }
        }
        panic!("the Consul agent did not start: {last_failure}");
    }

    fn try_start(consul: &Path, extra_args: &[&str]) -> Result<Agent, String> {
        let ports = free_ports();
        let data_dir = unique_temp_path("consul");
        let agent = Agent {
            watchdog: Mutex::new(None),
            http_port: ports[0],
            ports,
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
            data_dir,
        };
        agent.spawn(consul)?;
        Ok(agent)
    }

    /// Starts the agent (under its watchdog) on the agent's ports and data directory, and
    /// waits until it has a leader.
    fn spawn(&self, consul: &Path) -> Result<(), String> {
        let [http, serf_lan, serf_wan, server] = self.ports;
        std::fs::create_dir_all(&self.data_dir).expect("create the agent's data directory");
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("consul-watchdog")
            .arg(&self.data_dir)
            .arg(std::process::id().to_string())
            .arg(consul)
            .args([
                "agent",
                "-dev",
                "-client",
                "127.0.0.1",
                "-bind",
                "127.0.0.1",
            ])
            .args(["-dns-port", "-1", "-grpc-port", "-1", "-log-level", "warn"])
            .args(["-http-port", &http.to_string()])
            .args(["-serf-lan-port", &serf_lan.to_string()])
            .args(["-serf-wan-port", &serf_wan.to_string()])
            .args(["-server-port", &server.to_string()])
            .arg("-data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .spawn()
            .expect("start sh for the consul watchdog");
        *self.watchdog.lock().unwrap() = Some(watchdog);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while Instant::now() < deadline {
            let exited = self
                .watchdog
                .lock()
                .unwrap()
                .as_mut()
                .is_some_and(|w| matches!(w.try_wait(), Ok(Some(_))));
            if exited {
                return Err(format!("it exited early; its log:\n{}", self.log()));
            }
            if let Some(body) = http_get(http, "/v1/status/leader") {
                let leader = body.trim().trim_matches('"');
                if !leader.is_empty() {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = self.log();
        self.stop_losing_data();
        Err(format!(
            "no leader within {STARTUP_TIMEOUT:?}; its log:\n{log}"
        ))
    }

    /// Stops the agent; a `-dev` agent keeps its data in memory, so everything it held is
    /// gone (as for a Consul restarted without its data). Its ports are free until
    /// [`Agent::start_again`].
    pub fn stop_losing_data(&self) {
        if let Some(mut watchdog) = self.watchdog.lock().unwrap().take() {
            // SIGTERM lets the watchdog stop the agent and remove the data directory.
            let _ = Command::new("kill")
                .args(["-TERM", &watchdog.id().to_string()])
                .status();
            let _ = watchdog.wait();
        }
    }

    /// Starts a stopped agent again, empty, on the same ports; waits for its leader.
    pub fn start_again(&self) {
        let consul = which("consul").expect("consul on PATH");
        if let Err(failure) = self.spawn(&consul) {
            panic!("the Consul agent did not start again: {failure}");
        }
    }

    /// Waits until the agent accepts `token` (a master token from `-hcl` becomes valid only
    /// after the leader has written it).
    pub fn wait_for_token(&self, token: &str) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while http_get_with_token(self.http_port, "/v1/acl/token/self", Some(token)).is_none() {
            assert!(
                Instant::now() < deadline,
                "the agent never accepted the ACL token"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `127.0.0.1:<port>`, as `CONSUL_HTTP_ADDR` wants it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    /// A client of the library, with a short retry time so failures show quickly.
    pub fn client(&self) -> cutover::consul::Client {
        cutover::consul::Client::new(&cutover::consul::ConsulConfig {
            address: self.address(),
            retry_timeout: Duration::from_secs(5),
            ..cutover::consul::ConsulConfig::default()
        })
        .expect("a client for the test agent")
    }

    /// A store under `prefix` on this agent.
    pub fn store(&self, prefix: &str) -> cutover::store::Store {
        cutover::store::Store::new(self.client(), prefix).expect("a valid test prefix")
    }

    /// The process id of the consul agent itself (not its watchdog), to signal it.
    pub fn pid(&self) -> u32 {
        let output = Command::new("pgrep")
            .args(["-f", &format!("consul agent .*{}", self.data_dir.display())])
            .output()
            .expect("run pgrep");
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .find(|pid: &u32| Some(*pid) != self.watchdog.lock().unwrap().as_ref().map(Child::id))
            .expect("the consul agent's process")
    }

    /// The agent's output so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("agent.log")).unwrap_or_default()
    }

    /// `consul kv put KEY @FILE` with the consul CLI, as a user would.
    pub fn kv_put_file(&self, key: &str, file: &Path) {
        let output = Command::new("consul")
            .args(["kv", "put", &format!("-http-addr={}", self.address()), key])
            .arg(format!("@{}", file.display()))
            .output()
            .expect("run consul kv put");
        assert!(
            output.status.success(),
            "consul kv put failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `consul kv get KEY` with the consul CLI.
    pub fn kv_get(&self, key: &str) -> Option<String> {
        let output = Command::new("consul")
            .args(["kv", "get", &format!("-http-addr={}", self.address()), key])
            .output()
            .expect("run consul kv get");
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The `cutover` binary, pointed at this agent and `prefix`.
    pub fn cutover(&self, prefix: &str) -> Cutover {
        let mut command = cutover_command();
        command
            .env("CONSUL_HTTP_ADDR", self.address())
            .env("CUTOVER_PREFIX", prefix);
        Cutover { command }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop_losing_data();
    }
}

/// The agent shared by every test of this test binary. If it cannot start, every test fails
/// with the first failure's message, without trying again.
pub fn agent() -> &'static Agent {
    static AGENT: OnceLock<Result<Agent, String>> = OnceLock::new();
    let started = AGENT.get_or_init(|| {
        std::panic::catch_unwind(Agent::start).map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the Consul agent did not start".to_owned())
        })
    });
    match started {
        Ok(agent) => agent,
        Err(message) => panic!("{message}"),
    }
}

/// A KV prefix no other test uses, such as `test/apply-4242-1`.
pub fn unique_prefix(test: &str) -> String {
    format!("test/{test}-{}", unique_suffix())
}

/// The `cutover` binary with Consul's variables cleared, so the machine's settings never
/// leak into a test.
pub fn cutover_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cutover"));
    for name in [
        "CONSUL_HTTP_ADDR",
        "CONSUL_HTTP_TOKEN",
        "CONSUL_HTTP_SSL",
        "CONSUL_HTTP_SSL_VERIFY",
        "CONSUL_CACERT",
        "CONSUL_HTTP_TOKEN_FILE",
        "CONSUL_CLIENT_CERT",
        "CONSUL_CLIENT_KEY",
        "CUTOVER_PREFIX",
    ] {
        command.env_remove(name);
    }
    command.env("RUST_LOG", "warn").stdin(Stdio::null());
    command
}

/// A `cutover` command being built.
pub struct Cutover {
    pub command: Command,
}

impl Cutover {
    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Cutover {
        self.command.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cutover
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.command.args(args);
        self
    }

    /// Runs it to the end.
    pub fn run(mut self) -> Run {
        let output = self.command.output().expect("run the cutover binary");
        Run {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs it and asserts exit code 0.
    pub fn succeeds(self) -> Run {
        let run = self.run();
        assert!(run.status.success(), "cutover failed: {run}");
        run
    }

    /// Runs it and asserts exit code 1.
    pub fn fails(self) -> Run {
        let run = self.run();
        assert_eq!(
            run.status.code(),
            Some(1),
            "cutover should fail with 1: {run}"
        );
        run
    }

    /// Starts it without waiting.
    pub fn spawn(mut self) -> Child {
        self.command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the cutover binary")
    }
}

/// What a finished `cutover` printed.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// A directory removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        let path = unique_temp_path("dir");
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `text` to `name` inside and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path.join(name);
        std::fs::write(&path, text).expect("write a test file");
        path
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.path.join(name)).expect("remove a test file");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A small valid manifest.
pub fn manifest(name: &str, image: &str, replicas: u32) -> String {
    format!(
        "apiVersion: cutover.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  image: {image}\n  replicas: {replicas}\n"
    )
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn unique_temp_path(kind: &str) -> PathBuf {
    std::env::temp_dir().join(format!("cutover-test-{kind}-{}", unique_suffix()))
}

/// Four distinct ports that were free a moment ago.
fn free_ports() -> [u16; 4] {
    [unused_port(), unused_port(), unused_port(), unused_port()]
}

/// A loopback port that was free a moment ago, for a listener a test starts (Consul,
/// HAProxy, a daemon) or for "nothing listens there". Never one of the kernel's ephemeral
/// ports: those are the source ports of every client connection the tests open (thousands
/// under load), and one of them could take the port before the listener binds it. Never the
/// same port twice in one test binary.
pub fn unused_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    // The ephemeral range starts at 32768 unless the machine says otherwise.
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768)
        .clamp(12_000, 32_768);
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..10_000 {
        let port = rand::random_range(10_000..ephemeral_low);
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port below {ephemeral_low}");
}

/// A minimal HTTP/1.0 GET on loopback; `None` on any failure or non-200 answer.
fn http_get(port: u16, path: &str) -> Option<String> {
    http_get_with_token(port, path, None)
}

fn http_get_with_token(port: u16, path: &str, token: Option<&str>) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let token_header = token.map_or(String::new(), |t| format!("X-Consul-Token: {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{token_header}\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_owned())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

/// Runs the docker CLI and returns its output; fails the test when docker fails.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails the test loudly when the test images are missing.
pub fn require_images() {
    for image in ["cutover-demo:a", "cutover-demo:b"] {
        let out = Command::new("docker")
            .args(["image", "inspect", image])
            .output()
            .expect("run docker");
        assert!(
            out.status.success(),
            "image {image} is missing: run scripts/test-images"
        );
    }
}

/// Removes every container of a test's cutover instance (any state) and its network.
pub fn remove_instance(instance: &str, network: &str) {
    // A removal the daemon started may still be under way ("removal ... is already in
    // progress"): try again until the engine has none of the instance's containers left.
    for attempt in 0.. {
        let ids = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=dev.cutover.instance={instance}"),
        ]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            break;
        }
        let out = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .output()
            .expect("run docker");
        if out.status.success() {
            break;
        }
        assert!(
            attempt < 50,
            "docker rm -f {ids:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = Command::new("docker")
        .args(["network", "rm", network])
        .output();
}
