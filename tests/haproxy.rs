//! The HAProxy adapter against a real HAProxy and real containers.
//!
//! Each test works in its own [`Lab`]: a temporary state directory, free loopback ports, a
//! Docker network and containers named and labelled with a random suffix. Dropping the lab
//! stops its HAProxy (by the pids its master reports) and removes its containers and
//! network, also when an assertion failed. Load goes only to 127.0.0.1.
//!
//! The supervisor's tests `kill -9` HAProxy's master or worker under load and let
//! `Traffic::supervise` alone bring it back; they print the failed requests and the time to
//! recovery (no timing is asserted).
//!
//! The load generator opens a new connection per request (`Connection: close`) and counts
//! every response: a request succeeds only with status 200 and a body of `version A\n` or
//! `version B\n`; connect errors, resets, timeouts and any other status are failures.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use cutover::haproxy::{
    ApplyOutcome, Proxy, ProxyError, Server, ServerState, ServiceRoutes, Settings, slots_for,
};
use cutover::metrics::Metrics;
use cutover::spec::Route;
use cutover::status::Color;
use cutover::traffic::Traffic;

const IMAGE_A: &str = "cutover-demo:a";
const IMAGE_B: &str = "cutover-demo:b";
/// Generous: the machines are noisy.
const PATIENCE: Duration = Duration::from_secs(30);

/// Concurrent clients of the load generator, each opening a new connection per request.
const CONNECTIONS: usize = 8;

/// The load tests run one at a time, so that each has the machine's two cores.
static LOAD_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn haproxy_binary() -> PathBuf {
    for candidate in [
        "/usr/sbin/haproxy",
        "/usr/local/sbin/haproxy",
        "/usr/bin/haproxy",
    ] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!(
        "haproxy is not installed: these tests need a real HAProxy 2.6+ (apt-get install haproxy)"
    );
}

fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs");
    assert!(
        output.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn docker_quietly(args: &[&str]) -> String {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn free_port() -> u16 {
    support::unused_port()
}

/// The master CLI, blocking, for cleanup in `Drop`.
fn show_proc_blocking(master: &Path) -> Option<cutover::haproxy::runtime::Processes> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(master).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"show proc\n").ok()?;
    stream.shutdown(std::net::Shutdown::Write).ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    cutover::haproxy::runtime::parse_show_proc(&reply)
}

fn kill(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
}

/// One test's HAProxy state directory, ports, network and containers.
struct Lab {
    suffix: String,
    dir: PathBuf,
    network: String,
    http: u16,
    preview: u16,
}

impl Lab {
    fn new() -> Lab {
        let suffix = format!("{:08x}", rand::random::<u32>());
        let dir = std::env::temp_dir().join(format!("cutover-haproxy-{suffix}"));
        let network = format!("cutover-proxytest-{suffix}");
        docker(&[
            "network",
            "create",
            "--label",
            &format!("cutover-test={suffix}"),
            &network,
        ]);
        Lab {
            suffix,
            dir,
            network,
            http: free_port(),
            preview: free_port(),
        }
    }

    fn settings(&self) -> Settings {
        let mut s = Settings::new(&self.dir, format!("127.0.0.1:{}", self.http));
        s.haproxy = haproxy_binary();
        s.preview_bind = Some(format!("127.0.0.1:{}", self.preview));
        s
    }

    fn live(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http))
    }

    fn preview(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.preview))
    }

    /// Starts a replica and returns its name and address once it answers its health check.
    /// It answers `/whoami` (and `/<dir>/whoami` for a few route directories) with `name`.
    async fn replica(&self, name: &str, image: &str) -> (String, String) {
        let full = format!("cotest-{}-{name}", self.suffix);
        // Port 8080 answers `/whoami` with `<name>-8080`.
        let script = "for d in alpha alpha/admin admin; do mkdir -p /www/$d; \
                      cp /www/index.html /www/$d/; echo $WHOAMI > /www/$d/whoami; done; \
                      echo $WHOAMI > /www/whoami; cp -r /www /www8080; \
                      echo $WHOAMI-8080 > /www8080/whoami; httpd -p 8080 -h /www8080; \
                      trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait";
        let args = [
            "run".to_owned(),
            "-d".into(),
            "--name".into(),
            full.clone(),
            "--label".into(),
            format!("cutover-test={}", self.suffix),
            "--network".into(),
            self.network.clone(),
            "-e".into(),
            format!("WHOAMI={name}"),
            image.into(),
            "sh".into(),
            "-c".into(),
            script.into(),
        ];
        let address = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            docker(&args);
            docker(&[
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                args[3],
            ])
        })
        .await
        .unwrap();
        let target: SocketAddr = format!("{address}:80").parse().unwrap();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok((200, _)) = get(target, "probe", "/cgi-bin/health").await {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "replica {full} never became healthy"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (full, address)
    }

    async fn replicas(&self, names: &[String], image: &str) -> Vec<(String, String)> {
        futures::future::join_all(names.iter().map(|n| self.replica(n, image))).await
    }

    async fn remove(&self, containers: &[String]) {
        self.remove_later(containers.to_vec()).await.unwrap();
    }

    /// Removes containers in the background.
    fn remove_later(&self, containers: Vec<String>) -> JoinHandle<()> {
        tokio::task::spawn_blocking(move || {
            let mut args = vec!["rm", "-f"];
            args.extend(containers.iter().map(String::as_str));
            docker(&args);
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(processes) = show_proc_blocking(&self.dir.join("master.sock")) {
            kill("-TERM", processes.master_pid);
            std::thread::sleep(Duration::from_millis(300));
            kill("-KILL", processes.master_pid);
            for worker in processes.workers {
                kill("-KILL", worker.pid);
            }
        }
        let ids = docker_quietly(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=cutover-test={}", self.suffix),
        ]);
        for id in ids.lines() {
            docker_quietly(&["rm", "-f", id]);
        }
        docker_quietly(&["network", "rm", &self.network]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One request on a new connection: status and body, or what went wrong.
async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("incomplete response {text:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status in {head:?}"))?;
        Ok((status, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .unwrap_or_else(|_| Err("timeout".into()))
}

/// What the load generator saw.
#[derive(Debug, Default)]
struct Tally {
    requests: u64,
    version_a: u64,
    version_b: u64,
    failures: u64,
    /// Failure kinds and how often.
    kinds: BTreeMap<String, u64>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        self.version_a += other.version_a;
        self.version_b += other.version_b;
        self.failures += other.failures;
        for (k, n) in other.kinds {
            *self.kinds.entry(k).or_default() += n;
        }
    }
}

/// `connections` clients in a loop, each request on a new connection, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Tally>>,
}

impl Load {
    fn start(addr: SocketAddr, connections: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..connections)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut tally = Tally::default();
                    while !stop.load(Ordering::Relaxed) {
                        tally.requests += 1;
                        match get(addr, "load.test", "/").await {
                            Ok((200, body)) if body == "version A\n" => tally.version_a += 1,
                            Ok((200, body)) if body == "version B\n" => tally.version_b += 1,
                            outcome => {
                                tally.failures += 1;
                                let kind = match outcome {
                                    Ok((status, body)) => format!("{status} {body:?}"),
                                    Err(e) => e,
                                };
                                *tally.kinds.entry(kind).or_default() += 1;
                            }
                        }
                    }
                    tally
                })
            })
            .collect();
        Load { stop, workers }
    }

    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for worker in self.workers {
            total.merge(worker.await.unwrap());
        }
        total
    }
}

fn path_route(path: &str) -> Route {
    Route {
        path_prefix: Some(path.into()),
        host: None,
    }
}

fn ready(slot: u32, address: &str) -> Server {
    Server {
        slot,
        address: address.into(),
        state: ServerState::Ready,
    }
}

/// A service routed at `/`, live on `color` with `servers`.
fn web(color: Color, servers: Vec<Server>) -> ServiceRoutes {
    ServiceRoutes {
        checks: Default::default(),
        routes: vec![path_route("/")],
        live: Some(color),
        preview: None,
        port: 80,
        health_path: "/cgi-bin/health".into(),
        slots: slots_for(2),
        servers: BTreeMap::from([(color, servers)]),
        split: None,
    }
}

async fn current_worker(proxy: &Proxy) -> u32 {
    proxy
        .processes()
        .await
        .expect("the master answers")
        .current_workers()
        .next()
        .expect("a current worker")
}

/// Waits until `probe` returns 0, or panics after [`PATIENCE`].
async fn wait_drained<F, Fut>(what: &str, probe: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<u32, ProxyError>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let sessions = probe().await.expect("sessions can be read");
        if sessions == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} still has {sessions} sessions"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_and_host_routes_for_three_services() {
    let lab = Lab::new();
    let mut proxy = Proxy::start(lab.settings()).await.unwrap();
    let names: Vec<String> = ["alpha-blue", "beta-green", "gamma-blue"]
        .map(String::from)
        .to_vec();
    let replicas = lab.replicas(&names, IMAGE_A).await;
    let service = |routes: Vec<Route>, color: Color, address: &str| ServiceRoutes {
        checks: Default::default(),
        routes,
        live: Some(color),
        preview: None,
        port: 80,
        health_path: "/cgi-bin/health".into(),
        slots: 4,
        servers: BTreeMap::from([(color, vec![ready(1, address)])]),
        split: None,
    };
    let host = |h: &str, p: Option<&str>| Route {
        host: Some(h.into()),
        path_prefix: p.map(String::from),
    };
    let alpha = service(vec![path_route("/alpha")], Color::Blue, &replicas[0].1);
    let beta = service(vec![host("beta.test", None)], Color::Green, &replicas[1].1);
    let gamma = service(
        vec![
            host("beta.test", Some("/admin")),
            path_route("/alpha/admin"),
        ],
        Color::Blue,
        &replicas[2].1,
    );
    for (name, routes) in [("alpha", &alpha), ("beta", &beta), ("gamma", &gamma)] {
        let outcome = proxy.apply(name, routes).await.unwrap();
        assert!(
            outcome.reloaded,
            "a new service is a new backend: {outcome:?}"
        );
    }
    let cases = [
        ("any.test", "/alpha/whoami", 200, "alpha-blue\n"),
        ("any.test", "/alpha/", 200, "version A\n"),
        // The longest prefix wins.
        ("any.test", "/alpha/admin/whoami", 200, "gamma-blue\n"),
        ("beta.test", "/whoami", 200, "beta-green\n"),
        // Hosts are matched in lower case and without the port.
        ("BETA.Test:8080", "/whoami", 200, "beta-green\n"),
        // Host and path beats host alone; a host route beats a path route.
        ("beta.test", "/admin/whoami", 200, "gamma-blue\n"),
        ("beta.test", "/alpha/whoami", 200, "beta-green\n"),
        (
            "other.test",
            "/admin/whoami",
            503,
            "no healthy backend for this route",
        ),
        (
            "any.test",
            "/nothing",
            503,
            "no healthy backend for this route",
        ),
    ];
    for (host, path, status, body) in cases {
        let response = get(lab.live(), host, path).await.unwrap();
        assert_eq!(
            response,
            (status, body.to_owned()),
            "Host: {host}, GET {path}"
        );
    }
    // A service without a live color answers 503 on its routes instead of falling through
    // to a shorter prefix.
    let dark = ServiceRoutes {
        live: None,
        ..gamma.clone()
    };
    let outcome = proxy.apply("gamma", &dark).await.unwrap();
    assert!(!outcome.reloaded);
    assert_eq!(
        get(lab.live(), "any.test", "/alpha/admin/whoami")
            .await
            .unwrap(),
        (503, "no healthy backend for this route".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_reaches_the_new_color_and_promote_needs_no_reload() {
    let lab = Lab::new();
    let mut proxy = Proxy::start(lab.settings()).await.unwrap();
    let blue = lab.replica("web-blue-1", IMAGE_A).await;
    let mut routes = web(Color::Blue, vec![ready(1, &blue.1)]);
    proxy.apply("web", &routes).await.unwrap();
    let green = lab.replica("web-green-1", IMAGE_B).await;
    let reloads = proxy.metrics().reloads;
    let worker = current_worker(&proxy).await;

    routes.preview = Some(Color::Green);
    routes
        .servers
        .insert(Color::Green, vec![ready(1, &green.1)]);
    let outcome = proxy.apply("web", &routes).await.unwrap();
    assert!(
        !outcome.reloaded && outcome.runtime_calls > 0,
        "{outcome:?}"
    );
    assert_eq!(get(lab.live(), "x", "/").await.unwrap().1, "version A\n");
    assert_eq!(get(lab.preview(), "x", "/").await.unwrap().1, "version B\n");

    // Promote.
    routes.live = Some(Color::Green);
    routes.preview = None;
    let outcome = proxy.apply("web", &routes).await.unwrap();
    assert!(!outcome.reloaded, "{outcome:?}");
    for _ in 0..10 {
        assert_eq!(get(lab.live(), "x", "/").await.unwrap().1, "version B\n");
        assert_eq!(get(lab.preview(), "x", "/").await.unwrap().1, "version B\n");
    }
    assert_eq!(proxy.metrics().reloads, reloads);
    assert_eq!(
        current_worker(&proxy).await,
        worker,
        "no new worker: no reload"
    );
    // The runtime state is also on disk: a reload keeps the promotion.
    let maps = std::fs::read_to_string(lab.dir.join("live_paths.map")).unwrap();
    assert_eq!(maps, "/ be_web_green\n");
    // Applying the same table again sends nothing.
    let outcome = proxy.apply("web", &routes).await.unwrap();
    assert_eq!(outcome, ApplyOutcome::default());
}

/// The state of one color during the load test.
struct Color_ {
    color: Color,
    image: &'static str,
    containers: Vec<(String, String)>,
}

/// The servers of a color's containers, slot by slot, all in `state`.
fn servers_of(c: &Color_, state: ServerState) -> Vec<Server> {
    c.containers
        .iter()
        .enumerate()
        .map(|(i, (_, address))| Server {
            slot: i as u32 + 1,
            address: address.clone(),
            state,
        })
        .collect()
}

fn other_image(image: &str) -> &'static str {
    if image == IMAGE_A { IMAGE_B } else { IMAGE_A }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_failures_through_switches_and_scaling_under_load_and_the_naive_way_fails() {
    let _serial = LOAD_LOCK.lock().await;
    let lab = Arc::new(Lab::new());
    let mut proxy = Proxy::start(lab.settings()).await.unwrap();
    let mut generation = 0u32;
    let mut names = move |color: Color, count: usize| -> Vec<String> {
        (0..count)
            .map(|_| {
                generation += 1;
                format!("web-{color}-{generation}")
            })
            .collect()
    };
    // The harness starts the next color's containers in the background while the current
    // round drains, as a controller starting a rollout would; the proxy steps are the same.
    let prepare = |lab: &Arc<Lab>, color: Color, image: &'static str, names: Vec<String>| {
        let lab = lab.clone();
        tokio::spawn(async move {
            Color_ {
                color,
                image,
                containers: lab.replicas(&names, image).await,
            }
        })
    };
    let mut live = prepare(&lab, Color::Blue, IMAGE_A, names(Color::Blue, 1))
        .await
        .unwrap();
    proxy
        .apply(
            "web",
            &web(live.color, servers_of(&live, ServerState::Ready)),
        )
        .await
        .unwrap();
    let reloads = proxy.metrics().reloads;
    let mut next = prepare(
        &lab,
        Color::Green,
        IMAGE_B,
        names(Color::Green, live.containers.len()),
    );

    let started = tokio::time::Instant::now();
    let load = Load::start(lab.live(), CONNECTIONS);
    let (mut switches, mut scales) = (0, 0);
    let mut removals = Vec::new();
    for round in 0..20 {
        // Blue/green: the other color is up and healthy; switch to it, drain the old
        // color, take it out of its backend, stop it.
        let new = next.await.unwrap();
        let mut routes = web(new.color, servers_of(&new, ServerState::Ready));
        routes
            .servers
            .insert(live.color, servers_of(&live, ServerState::Drain));
        let outcome = proxy.apply("web", &routes).await.unwrap();
        assert!(!outcome.reloaded, "a switch is runtime only: {outcome:?}");
        wait_drained("the old color", || proxy.sessions("web", live.color)).await;
        routes.servers.remove(&live.color);
        proxy.apply("web", &routes).await.unwrap();
        let old: Vec<String> = live.containers.iter().map(|c| c.0.clone()).collect();
        removals.push(lab.remove_later(old));
        let old_color = live.color;
        live = new;
        switches += 1;

        // Every other round, scale the live color: up to 2, or back down to 1.
        if round % 2 == 1 {
            if live.containers.len() == 1 {
                let added = lab.replicas(&names(live.color, 1), live.image).await;
                live.containers.extend(added);
                let routes = web(live.color, servers_of(&live, ServerState::Ready));
                proxy.apply("web", &routes).await.unwrap();
            } else {
                let slot = live.containers.len() as u32;
                let mut routes = web(live.color, servers_of(&live, ServerState::Ready));
                routes.servers.get_mut(&live.color).unwrap()[slot as usize - 1].state =
                    ServerState::Drain;
                proxy.apply("web", &routes).await.unwrap();
                wait_drained("the retired replica", || {
                    proxy.server_sessions("web", live.color, slot)
                })
                .await;
                let (name, _) = live.containers.pop().unwrap();
                let routes = web(live.color, servers_of(&live, ServerState::Ready));
                proxy.apply("web", &routes).await.unwrap();
                removals.push(lab.remove_later(vec![name]));
            }
            scales += 1;
        }
        let image = other_image(live.image);
        next = prepare(
            &lab,
            old_color,
            image,
            names(old_color, live.containers.len()),
        );
    }
    let tally = load.finish().await;
    let elapsed = started.elapsed();
    let spare = next.await.unwrap();
    for removal in removals {
        removal.await.unwrap();
    }
    println!(
        "correct path: {} requests, {} failures, A {} / B {}, {switches} switches, \
         {scales} scale changes, {:.1?} ({:?})",
        tally.requests, tally.failures, tally.version_a, tally.version_b, elapsed, tally.kinds
    );
    assert_eq!(tally.failures, 0, "failures: {:?}", tally.kinds);
    assert_eq!((switches, scales), (20, 10));
    assert!(tally.version_a > 0 && tally.version_b > 0, "{tally:?}");
    assert_eq!(proxy.metrics().reloads, reloads, "no reload on the way");
    assert!(elapsed < Duration::from_secs(120), "took {elapsed:?}");
    let spare: Vec<String> = spare.containers.into_iter().map(|c| c.0).collect();
    lab.remove(&spare).await;

    // The control: the naive switch, without drain or overlap: remove the old containers,
    // then start new ones and point the servers at them.
    let load = Load::start(lab.live(), CONNECTIONS);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let old: Vec<String> = live.containers.iter().map(|c| c.0.clone()).collect();
        lab.remove(&old).await;
        let image = other_image(live.image);
        live = Color_ {
            color: live.color,
            image,
            containers: lab
                .replicas(&names(live.color, live.containers.len()), image)
                .await,
        };
        let routes = web(live.color, servers_of(&live, ServerState::Ready));
        proxy.apply("web", &routes).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let control = load.finish().await;
    println!(
        "control (naive switch): {} requests, {} failures ({:?})",
        control.requests, control.failures, control.kinds
    );
    assert!(
        control.failures > 0,
        "the harness must see the failures of a naive switch: {control:?}"
    );
}

/// Waits until HAProxy's own checks see every server of `expected` UP.
async fn wait_up(proxy: &Proxy, expected: &[(Color, u32)]) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let up = proxy.servers_up_all().await.unwrap_or_default();
        let seen = |(color, slot): &(Color, u32)| {
            up.get("web")
                .and_then(|by_color| by_color.get(color))
                .is_some_and(|slots| slots.contains(slot))
        };
        if expected.iter().all(seen) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "HAProxy does not see {expected:?} UP: {up:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The share of version B in what a load saw, in percent.
fn share_b(tally: &Tally) -> f64 {
    100.0 * tally.version_b as f64 / (tally.version_a + tally.version_b).max(1) as f64
}

/// A weighted canary by the Runtime API alone: the split backend's servers track the color
/// backends' (no checks of their own, addresses set at run time), get their weights, and the
/// live map moves to the split backend and back, with no reload and no failed request; the
/// new color's share of the split is counted with its own counters, and a reload for another
/// service comes back with the split from the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_split_sends_its_share_to_the_other_color_without_a_reload() {
    let _serial = LOAD_LOCK.lock().await;
    let lab = Lab::new();
    let mut proxy = Proxy::start(lab.settings()).await.unwrap();
    let blue = lab
        .replicas(&["web-blue-1".into(), "web-blue-2".into()], IMAGE_A)
        .await;
    let green = lab
        .replicas(&["web-green-1".into(), "web-green-2".into()], IMAGE_B)
        .await;
    let servers = |replicas: &[(String, String)]| -> Vec<Server> {
        replicas
            .iter()
            .enumerate()
            .map(|(i, (_, address))| ready(i as u32 + 1, address))
            .collect()
    };
    // Blue live, green ready beside it (a canary's new color, health-gated).
    let mut both = web(Color::Blue, servers(&blue));
    both.servers.insert(Color::Green, servers(&green));
    proxy.apply("web", &both).await.unwrap();
    wait_up(
        &proxy,
        &[
            (Color::Blue, 1),
            (Color::Blue, 2),
            (Color::Green, 1),
            (Color::Green, 2),
        ],
    )
    .await;
    let reloads = proxy.metrics().reloads;
    let counted =
        |counters: &BTreeMap<(String, Color), cutover::haproxy::runtime::ColorCounters>,
         color: Color| {
            counters
                .get(&("web".to_owned(), color))
                .map_or(0, |rows| rows.values().map(|c| c.requests).sum::<u64>())
        };
    let before = proxy.backend_counters().await.unwrap();

    let mut phases = Vec::new();
    for (what, percent, low, high) in [("10%", 10, 5.0, 15.0), ("50%", 50, 40.0, 60.0)] {
        let routes = ServiceRoutes {
            split: Some(cutover::haproxy::Split {
                color: Color::Green,
                percent,
            }),
            ..both.clone()
        };
        let outcome = proxy.apply("web", &routes).await.unwrap();
        assert!(!outcome.reloaded, "a weight is runtime only: {outcome:?}");
        let load = Load::start(lab.live(), CONNECTIONS);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let tally = load.finish().await;
        let share = share_b(&tally);
        println!(
            "split {what}: {} requests, B {} ({share:.1}%), failures {} ({:?})",
            tally.requests, tally.version_b, tally.failures, tally.kinds
        );
        assert_eq!(tally.failures, 0, "{what}: {:?}", tally.kinds);
        assert!(tally.requests > 200, "{what}: too little load: {tally:?}");
        assert!(
            (low..=high).contains(&share),
            "{what}: {share:.1}% of requests went to green: {tally:?}"
        );
        phases.push(tally);
    }
    // Green's requests came through its servers in the split backend, counted as green's.
    let after = proxy.backend_counters().await.unwrap();
    let green_requests = counted(&after, Color::Green) - counted(&before, Color::Green);
    let answered_b: u64 = phases.iter().map(|t| t.version_b).sum();
    assert!(
        green_requests >= answered_b && answered_b > 0,
        "green counted {green_requests}, B answered {answered_b}"
    );
    assert!(
        after
            .get(&("web".to_owned(), Color::Green))
            .is_some_and(|rows| rows.keys().any(|row| row == "be_web_split/g1")),
        "{after:?}"
    );
    // The files carry the split: a reload (another service's new backends) comes back with
    // it, under load, without a failed request.
    let config = std::fs::read_to_string(lab.dir.join("haproxy.cfg")).unwrap();
    assert!(
        config.contains("track be_web_green/s1 weight 256"),
        "{config}"
    );
    let load = Load::start(lab.live(), CONNECTIONS);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let other = ServiceRoutes {
        routes: vec![path_route("/other")],
        servers: BTreeMap::new(),
        ..both.clone()
    };
    let outcome = proxy.apply("other", &other).await.unwrap();
    assert!(outcome.reloaded, "{outcome:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let across = load.finish().await;
    let share = share_b(&across);
    println!(
        "split 50% across a reload: {} requests, B {} ({share:.1}%), failures {}",
        across.requests, across.version_b, across.failures
    );
    assert_eq!(across.failures, 0, "{:?}", across.kinds);
    assert!((40.0..=60.0).contains(&share), "{across:?}");
    let reloads = reloads + 1;

    // An abort: every request back to blue at once, under load, none failed.
    let load = Load::start(lab.live(), CONNECTIONS);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let aborted = web(Color::Blue, servers(&blue));
    proxy.apply("web", &aborted).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = load.finish().await;
    assert_eq!(during.failures, 0, "abort: {:?}", during.kinds);
    let load = Load::start(lab.live(), CONNECTIONS);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let back = load.finish().await;
    println!(
        "abort: {} requests across it, none failed; then {} requests, B {}",
        during.requests, back.requests, back.version_b
    );
    assert_eq!((back.failures, back.version_b), (0, 0), "{back:?}");

    // Again with a split, then the full switch to green: every request to B, none failed.
    proxy.apply("web", &both).await.unwrap();
    let ten = ServiceRoutes {
        split: Some(cutover::haproxy::Split {
            color: Color::Green,
            percent: 10,
        }),
        ..both.clone()
    };
    proxy.apply("web", &ten).await.unwrap();
    let load = Load::start(lab.live(), CONNECTIONS);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let switched = ServiceRoutes {
        live: Some(Color::Green),
        ..both.clone()
    };
    proxy.apply("web", &switched).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = load.finish().await;
    assert_eq!(during.failures, 0, "switch: {:?}", during.kinds);
    let load = Load::start(lab.live(), CONNECTIONS);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_switch = load.finish().await;
    assert_eq!(
        (after_switch.failures, after_switch.version_a),
        (0, 0),
        "{after_switch:?}"
    );
    assert_eq!(proxy.metrics().reloads, reloads, "no reload on the way");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seamless_reloads_under_load() {
    let _serial = LOAD_LOCK.lock().await;
    let lab = Lab::new();
    let mut proxy = Proxy::start(lab.settings()).await.unwrap();
    let replicas = lab
        .replicas(&["web-blue-1".into(), "web-blue-2".into()], IMAGE_A)
        .await;
    let routes = web(
        Color::Blue,
        vec![ready(1, &replicas[0].1), ready(2, &replicas[1].1)],
    );
    proxy.apply("web", &routes).await.unwrap();
    let reloads = proxy.metrics().reloads;
    let worker = current_worker(&proxy).await;

    let load = Load::start(lab.live(), CONNECTIONS);
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A new service: new backends, a reload.
        let extra = ServiceRoutes {
            routes: vec![path_route(&format!("/extra{i}"))],
            servers: BTreeMap::new(),
            ..routes.clone()
        };
        let outcome = proxy.apply(&format!("extra{i}"), &extra).await.unwrap();
        assert!(outcome.reloaded, "{outcome:?}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tally = load.finish().await;
    println!(
        "reloads under load: {} requests, {} failures, 5 reloads ({:?})",
        tally.requests, tally.failures, tally.kinds
    );
    assert_eq!(tally.failures, 0, "failures: {:?}", tally.kinds);
    assert!(tally.requests > 0);
    assert_eq!(proxy.metrics().reloads, reloads + 5);
    assert_ne!(current_worker(&proxy).await, worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_haproxy_rejects_is_never_loaded() {
    let lab = Lab::new();
    let mut proxy = Proxy::start(lab.settings()).await.unwrap();
    let replica = lab.replica("web-blue-1", IMAGE_A).await;
    let routes = web(Color::Blue, vec![ready(1, &replica.1)]);
    proxy.apply("web", &routes).await.unwrap();
    let config = std::fs::read_to_string(lab.dir.join("haproxy.cfg")).unwrap();
    let worker = current_worker(&proxy).await;

    // Not an IP address, and not a name HAProxy can resolve: only HAProxy knows.
    let bad = ServiceRoutes {
        routes: vec![path_route("/bad")],
        ..web(Color::Blue, vec![ready(1, "10.0.0.300")])
    };
    for (service, routes) in [
        ("bad", &bad),
        ("web", &web(Color::Blue, vec![ready(1, "10.0.0.300")])),
    ] {
        let error = proxy.apply(service, routes).await.unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, ProxyError::Rejected { .. })
                && message.contains("could not resolve address '10.0.0.300'"),
            "{message}"
        );
    }
    assert_eq!(proxy.metrics().rejected_configs, 2);
    assert_eq!(
        std::fs::read_to_string(lab.dir.join("haproxy.cfg")).unwrap(),
        config,
        "the live configuration file is untouched"
    );
    assert_eq!(current_worker(&proxy).await, worker, "nothing was reloaded");
    assert_eq!(
        get(lab.live(), "x", "/").await.unwrap(),
        (200, "version A\n".to_owned())
    );
    let map = proxy
        .command(&format!("show map {}/live_paths.map", lab.dir.display()))
        .await
        .unwrap();
    assert!(
        map.contains(" / be_web_blue") && !map.contains("/bad"),
        "the rejected route does not exist: {map}"
    );
}

/// The session id of a process, from `/proc/<pid>/stat`.
fn session_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap()
}

/// HAProxy masters running on this state directory: processes started with its
/// configuration whose parent is not one of them (workers are the master's children;
/// zombies have no command line).
fn haproxy_masters_on(dir: &Path) -> usize {
    let needle = format!("{}/haproxy.cfg", dir.display());
    let ours: BTreeMap<u32, u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if !cmdline.contains(&needle) {
                return None;
            }
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let ppid = status
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))?
                .trim()
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    ours.values()
        .filter(|ppid| !ours.contains_key(ppid))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_outlives_the_daemon_and_is_adopted() {
    let _serial = LOAD_LOCK.lock().await;
    let lab = Lab::new();
    let mut proxy = Proxy::start(lab.settings()).await.unwrap();
    let blue = lab.replica("web-blue-1", IMAGE_A).await;
    proxy
        .apply("web", &web(Color::Blue, vec![ready(1, &blue.1)]))
        .await
        .unwrap();
    let master = proxy.processes().await.unwrap().master_pid;
    assert_ne!(
        session_of(master),
        session_of(std::process::id()),
        "HAProxy runs in its own session"
    );

    let load = Load::start(lab.live(), CONNECTIONS);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // What a kill -9 of the daemon leaves: no Proxy, nothing run on the way out.
    drop(proxy);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut proxy = Proxy::start(lab.settings()).await.unwrap();
    assert_eq!(proxy.metrics().adoptions, 1);
    assert_eq!(proxy.metrics().starts, 0);
    assert_eq!(proxy.processes().await.unwrap().master_pid, master);
    assert_eq!(haproxy_masters_on(&lab.dir), 1, "no second HAProxy");
    // The adopted proxy remembers the table and can switch.
    let green = lab.replica("web-green-1", IMAGE_B).await;
    let mut routes = proxy.routes("web").unwrap().clone();
    routes.live = Some(Color::Green);
    routes
        .servers
        .insert(Color::Green, vec![ready(1, &green.1)]);
    let outcome = proxy.apply("web", &routes).await.unwrap();
    assert!(!outcome.reloaded, "{outcome:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = load.finish().await;
    println!(
        "daemon killed under load: {} requests, {} failures, A {} / B {} ({:?})",
        tally.requests, tally.failures, tally.version_a, tally.version_b, tally.kinds
    );
    assert_eq!(tally.failures, 0, "failures: {:?}", tally.kinds);
    assert!(tally.version_a > 0 && tally.version_b > 0);
    assert_eq!(get(lab.live(), "x", "/").await.unwrap().1, "version B\n");
}

/// `web` live on blue (version A) with green (version B) ready beside it, applied.
async fn blue_live_green_ready(lab: &Lab) -> (Proxy, ServiceRoutes) {
    let mut proxy = Proxy::start(lab.settings()).await.unwrap();
    let blue = lab.replica("web-blue-1", IMAGE_A).await;
    let green = lab.replica("web-green-1", IMAGE_B).await;
    let mut routes = web(Color::Blue, vec![ready(1, &blue.1)]);
    routes
        .servers
        .insert(Color::Green, vec![ready(1, &green.1)]);
    proxy.apply("web", &routes).await.unwrap();
    (proxy, routes)
}

/// What a daemon killed after it wrote the files of `routes` but before it sent the
/// commands leaves behind: the files written, nothing sent, no `Proxy`. (The master socket
/// is away while it applies.)
async fn write_but_never_send(lab: &Lab, mut proxy: Proxy, routes: &ServiceRoutes) {
    let master = lab.dir.join("master.sock");
    let away = lab.dir.join("master.sock.away");
    std::fs::rename(&master, &away).unwrap();
    proxy
        .apply("web", routes)
        .await
        .expect_err("no command can be sent");
    drop(proxy);
    std::fs::rename(&away, &master).unwrap();
}

/// The colors and slots of `web` HAProxy's own checks see UP.
async fn checked(proxy: &Proxy) -> BTreeMap<Color, std::collections::BTreeSet<u32>> {
    let mut up = proxy.servers_up_all().await.unwrap();
    up.remove("web").unwrap_or_default()
}

/// A daemon killed after it wrote the files of a switch but before it sent the commands:
/// the daemon that adopts the HAProxy sends them when it applies the same table again
/// (the files alone prove nothing about the running state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_written_but_never_sent_is_sent_by_the_adopting_daemon() {
    let _serial = LOAD_LOCK.lock().await;
    let lab = Lab::new();
    let (proxy, mut routes) = blue_live_green_ready(&lab).await;
    let load = Load::start(lab.live(), CONNECTIONS);
    tokio::time::sleep(Duration::from_millis(300)).await;

    routes.live = Some(Color::Green);
    write_but_never_send(&lab, proxy, &routes).await;
    assert_eq!(get(lab.live(), "x", "/").await.unwrap().1, "version A\n");

    let mut proxy = Proxy::start(lab.settings()).await.unwrap();
    assert_eq!(proxy.metrics().adoptions, 1);
    assert_eq!(
        proxy.metrics().reloads,
        0,
        "the files are the running shape"
    );
    proxy.apply("web", &routes).await.unwrap();
    assert_eq!(get(lab.live(), "x", "/").await.unwrap().1, "version B\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tally = load.finish().await;
    assert_eq!(tally.failures, 0, "failures: {:?}", tally.kinds);
    proxy.stop().await.unwrap();
}

/// The same, when the unsent change moves a slot to another replica: the adopting daemon
/// does not know what HAProxy had, asks it, and sends the slot DOWN until HAProxy's own
/// check of the new replica passes (the slot's last check was of the previous replica: a
/// switch that trusted it could send requests to a replica no check has seen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_by_an_unsent_change_is_not_up_until_checked() {
    let lab = Lab::new();
    let (proxy, mut routes) = blue_live_green_ready(&lab).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !checked(&proxy).await.contains_key(&Color::Green) {
        assert!(tokio::time::Instant::now() < deadline, "green never UP");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Green's slot moves to an address nothing answers on.
    routes
        .servers
        .insert(Color::Green, vec![ready(1, "192.0.2.1")]);
    write_but_never_send(&lab, proxy, &routes).await;

    let mut proxy = Proxy::start(lab.settings()).await.unwrap();
    proxy.apply("web", &routes).await.unwrap();
    let up = checked(&proxy).await;
    assert!(!up.contains_key(&Color::Green), "{up:?}");
    assert!(up.contains_key(&Color::Blue), "{up:?}");
    proxy.stop().await.unwrap();
}

/// A reload that also moves the servers' port (a release that changes `spec.port`):
/// HAProxy 2.6 applies the saved server state's port over the configuration's, so the state
/// carried over must not hold the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_moves_the_port_sends_requests_to_the_new_port() {
    let lab = Lab::new();
    let mut proxy = Proxy::start(lab.settings()).await.unwrap();
    let replica = lab.replica("web", IMAGE_A).await;
    let mut routes = web(Color::Blue, vec![ready(1, &replica.1)]);
    proxy.apply("web", &routes).await.unwrap();
    assert_eq!(get(lab.live(), "x", "/whoami").await.unwrap().1, "web\n");

    routes.port = 8080;
    let outcome = proxy.apply("web", &routes).await.unwrap();
    assert!(
        outcome.reloaded,
        "a new check port is a new shape: {outcome:?}"
    );
    for _ in 0..5 {
        assert_eq!(
            get(lab.live(), "x", "/whoami").await.unwrap().1,
            "web-8080\n"
        );
    }
    proxy.stop().await.unwrap();
}

/// The map entries of `show map`, without the entry addresses HAProxy prints first.
async fn map_lines(proxy: &Proxy, file: &Path) -> Vec<String> {
    let command = cutover::haproxy::runtime::command::show_map(file);
    let reply = proxy.command(&command).await.unwrap();
    let mut lines: Vec<String> = reply
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            line.split_once(' ')
                .map_or(line, |(_, rest)| rest)
                .to_owned()
        })
        .collect();
    lines.sort();
    lines
}

/// Every metacharacter of HAProxy's CLI, inside and at the end of a map key and value, on
/// the admin socket and through the master CLI: HAProxy ends with exactly that key and value
/// in its map and runs nothing else (the value carries a `del map` of an existing entry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_arguments_reach_the_runtime_api_as_exactly_one_word_each() {
    use cutover::haproxy::runtime::{self, command};
    use cutover::haproxy::{Listener, MapKind};

    let lab = Lab::new();
    let settings = lab.settings();
    let mut proxy = Proxy::start(settings.clone()).await.unwrap();
    let mut routes = web(Color::Blue, vec![]);
    routes.routes.push(path_route("/keep"));
    proxy.apply("web", &routes).await.unwrap();
    let file = lab.dir.join(cutover::haproxy::render::map_file_name(
        Listener::Live,
        MapKind::Path,
    ));
    let before = map_lines(&proxy, &file).await;
    assert_eq!(before, ["/ be_web_blue", "/keep be_web_blue"]);

    let master = settings.master_socket().unwrap();
    let admin = settings.runtime_socket();
    for metacharacter in [
        ";", "\\", " ", "\t", "<<", "#", "\"", "'", "@1 ", "\n", "\r\n",
    ] {
        for (socket, prefix) in [(&admin, ""), (&master, "@1 ")] {
            let m = metacharacter;
            let key = format!("/k{m}show info{m}x{m}");
            let first = format!("v{m}del map {} /keep{m}", file.display());
            let second = format!("w{m}{m}del map {} /keep{m}", file.display());
            for text in [
                command::add_map(&file, &key, &first),
                command::set_map(&file, &key, &second),
            ] {
                runtime::execute(socket, &format!("{prefix}{text}"))
                    .await
                    .unwrap_or_else(|e| panic!("{m:?} through {}: {e}", socket.display()));
            }
            // A line break cannot be carried: it is replaced, and still nothing else runs.
            let shown = |text: &str| text.replace(['\r', '\n'], "\u{FFFD}");
            let mut expected = before.clone();
            expected.push(format!("{} {}", shown(&key), shown(&second)));
            expected.sort();
            assert_eq!(
                map_lines(&proxy, &file).await,
                expected,
                "{m:?} through {}",
                socket.display()
            );
            runtime::execute(
                socket,
                &format!("{prefix}{}", command::del_map(&file, &key)),
            )
            .await
            .unwrap();
            assert_eq!(map_lines(&proxy, &file).await, before, "{m:?}");
        }
    }
    proxy.stop().await.unwrap();
}

/// One command on the master CLI, blocking (`@1 <command>` reaches the current worker).
fn master_command(dir: &Path, command: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(dir.join("master.sock"))
        .expect("the master socket answers");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(format!("{command}\n").as_bytes()).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

/// What the running HAProxy routes: the live path map (key and backend; the entry ids
/// differ from process to process) and `be_web_blue`'s servers (name, address, and
/// whether the administrative state keeps requests off it: maintenance `0x23` or drain
/// `0x18`; the `0x04` bit only records that the configuration started it disabled, and a
/// runtime `state ready` leaves it set).
fn routing(dir: &Path) -> (Vec<String>, Vec<String>) {
    let map = master_command(
        dir,
        &format!("@1 show map {}", dir.join("live_paths.map").display()),
    );
    let map: Vec<String> = map
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, entry)| entry.to_owned()))
        .collect();
    let state = master_command(dir, "@1 show servers state be_web_blue");
    let mut lines = state.lines().filter(|l| !l.trim().is_empty());
    // `1` (the format version), then the header, then one line per server.
    let header: Vec<&str> = lines
        .by_ref()
        .find_map(|l| l.strip_prefix("# "))
        .expect("a header")
        .split(' ')
        .collect();
    let column = |name: &str| header.iter().position(|c| *c == name).unwrap();
    let (name, addr, admin) = (
        column("srv_name"),
        column("srv_addr"),
        column("srv_admin_state"),
    );
    let servers = lines
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let flags: u32 = f[admin].parse().unwrap();
            let state = if flags & 0x23 != 0 {
                "maint"
            } else if flags & 0x18 != 0 {
                "drain"
            } else {
                "ready"
            };
            format!("{} {} {state}", f[name], f[addr])
        })
        .collect();
    (map, servers)
}

/// What a test kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    Master,
    Worker,
}

/// Kills HAProxy's master or its worker with SIGKILL under load, and lets the supervisor
/// (and nothing else) bring it back. Prints the failed requests and the time to recovery.
async fn killed_under_load_the_supervisor_brings_haproxy_back(victim: Victim) {
    let _serial = LOAD_LOCK.lock().await;
    let lab = Lab::new();
    // The reference for the time to recovery: a cold start of HAProxy in this run.
    let started = tokio::time::Instant::now();
    let mut proxy = Proxy::start(lab.settings()).await.unwrap();
    let cold_start = started.elapsed();
    let replicas = lab
        .replicas(&["web-blue-1".into(), "web-blue-2".into()], IMAGE_A)
        .await;
    proxy
        .apply("web", &web(Color::Blue, vec![ready(1, &replicas[0].1)]))
        .await
        .unwrap();
    // A second replica by the Runtime API alone: after the last reload, so the restarted
    // HAProxy can only have it from the files.
    let routes = web(
        Color::Blue,
        vec![ready(1, &replicas[0].1), ready(2, &replicas[1].1)],
    );
    let outcome = proxy.apply("web", &routes).await.unwrap();
    assert!(
        !outcome.reloaded && outcome.runtime_calls > 0,
        "{outcome:?}"
    );
    let before = routing(&lab.dir);
    assert!(
        before
            .1
            .iter()
            .any(|s| s.starts_with(&format!("s2 {} ", replicas[1].1))),
        "{before:?}"
    );
    let metrics = Arc::new(Metrics::new());
    let traffic = Traffic::new(proxy, Arc::clone(&metrics));
    let supervisor = traffic.supervise();
    let processes = show_proc_blocking(&lab.dir.join("master.sock")).expect("a master");
    let target = match victim {
        Victim::Master => processes.master_pid,
        Victim::Worker => processes.current_workers().next().expect("a worker"),
    };

    let load = Load::start(lab.live(), CONNECTIONS);
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill("-KILL", target);
    let killed = tokio::time::Instant::now();
    // The first request answered after the kill is the new HAProxy's: the old master and
    // its worker are gone (a worker's death takes the master with it).
    loop {
        if let Ok((200, body)) = get(lab.live(), "x", "/").await
            && body == "version A\n"
        {
            break;
        }
        assert!(
            killed.elapsed() < PATIENCE,
            "HAProxy did not come back within {PATIENCE:?} after a kill -9 of its {victim:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let recovery = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = load.finish().await;
    println!(
        "kill -9 of the {victim:?} under load: back after {recovery:.2?} ({:.1} x a cold \
         start of HAProxy in this run, {cold_start:.2?}); {} requests, {} failures ({:?})",
        recovery.as_secs_f64() / cold_start.as_secs_f64(),
        tally.requests,
        tally.failures,
        tally.kinds
    );
    let now = show_proc_blocking(&lab.dir.join("master.sock")).expect("a master again");
    assert_ne!(now.master_pid, processes.master_pid, "a new master");
    assert_eq!(haproxy_masters_on(&lab.dir), 1, "exactly one master");
    assert_eq!(routing(&lab.dir), before, "the same routes and servers");
    assert_eq!(traffic.metrics().await.restarts, 1);
    let text = metrics.encode();
    assert!(
        text.contains("cutover_haproxy_restarts_total 1\n"),
        "the counter moved: {text}"
    );
    assert!(tally.version_a > 0, "{tally:?}");
    drop(supervisor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_master_under_load_the_supervisor_restarts_it_with_the_same_routes() {
    killed_under_load_the_supervisor_brings_haproxy_back(Victim::Master).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_worker_under_load_the_supervisor_restarts_it_with_the_same_routes() {
    killed_under_load_the_supervisor_brings_haproxy_back(Victim::Worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_proxy_on_one_directory_is_refused_and_names_the_holder() {
    let lab = Lab::new();
    let proxy = Proxy::start(lab.settings()).await.unwrap();
    let master = proxy.processes().await.unwrap().master_pid;
    let me = std::process::id();

    let error = Proxy::start(lab.settings()).await.unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, ProxyError::DirInUse { holder: Some(pid), .. } if pid == me),
        "{message}"
    );
    for part in [
        lab.dir.display().to_string(),
        format!("pid {me}"),
        "--haproxy-dir".to_owned(),
    ] {
        assert!(message.contains(&part), "{part} missing from: {message}");
    }
    assert_eq!(haproxy_masters_on(&lab.dir), 1, "no second HAProxy");
    assert_eq!(proxy.processes().await.unwrap().master_pid, master);

    // The lock goes with its holder (as on a kill -9: the OS closes the file): the next
    // daemon adopts the same master.
    drop(proxy);
    let proxy = Proxy::start(lab.settings()).await.unwrap();
    assert_eq!(proxy.metrics().adoptions, 1);
    assert_eq!(proxy.processes().await.unwrap().master_pid, master);
}
