//! The daemon's HTTP endpoints end to end: a real `cutover run` against a real Consul agent
//! and the real Docker engine, read over HTTP, and the status page rendered by a real
//! headless Chromium.
//!
//! Each test gets its own KV prefix, instance label, Docker network and port, and removes
//! what it made when it ends, even when it fails. Container names are global on the engine,
//! so the services here are named unlike those of the other test files. Chromium comes from Debian's `chromium`
//! package (scripts/install-deps); without it the browser test fails, never skips.
//!
//! `CUTOVER_UPDATE_SCREENSHOT=1 cargo test --test http` rewrites docs/status-page.png.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use support::{Daemon, TempDir, World, agent, unique_prefix};

/// An HTTP answer.
#[derive(Debug)]
struct Response {
    status: u16,
    content_type: String,
    body: String,
}

impl Response {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A minimal HTTP/1.0 request to `address`; `None` when nothing answers.
fn request(address: &str, method: &str, path: &str, body: &str) -> Option<Response> {
    request_with(address, method, path, "", body)
}

/// [`request`] with extra header lines (each ending in `\r\n`).
fn request_with(
    address: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> Option<Response> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    Some(Response {
        status,
        content_type,
        body: body.to_owned(),
    })
}

fn get(address: &str, path: &str) -> Option<Response> {
    request(address, "GET", path, "")
}

fn get_ok(address: &str, path: &str) -> Response {
    let response = get(address, path).unwrap_or_else(|| panic!("GET {path}: no answer"));
    assert_eq!(response.status, 200, "GET {path}: {response:?}");
    response
}

/// The value of the sample `series` (name and labels exactly as written) in metrics text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// The world of a test here: services named as written (the status page shows them), so
/// they are named unlike those of the other test files.
fn world(test: &str) -> World {
    World::new(test).untagged()
}

/// Starts a daemon without a proxy (these tests are about the endpoints; traffic is tested
/// elsewhere); returns it and the address of its endpoints once `/healthz` answers.
fn start(w: &World) -> (Daemon, String) {
    let d = w.daemon().no_proxy().start();
    (d, w.endpoint(d))
}

/// The demo service routed by a path, with this blue/green `strategy`.
fn demo(w: &World, name: &str, image: &str, replicas: u32, strategy: &str) -> String {
    let extra = format!(
        "  routes: [{{pathPrefix: /{}}}]\n  strategy: {{blueGreen: {{{strategy}}}}}\n",
        w.svc(name)
    );
    w.demo(name, image, replicas, &extra)
}

const FAST: &str = "scaleDownDelay: 1s, progressDeadline: 30s";

#[test]
fn every_endpoint_reports_a_service_after_a_rollout() {
    let w = world("http-endpoints");
    let (_, addr) = start(&w);
    w.apply("shop", &demo(&w, "shop", "cutover-demo:a", 2, FAST));
    w.wait_available("shop");
    w.apply("shop", &demo(&w, "shop", "cutover-demo:b", 2, FAST));
    w.wait_available("shop");
    w.kv_put(
        "services/ledger",
        "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {name: ledger}\nspec:\n  image: x\n  replicas: two\n",
    );
    w.wait_phase("ledger", "Invalid");
    // And one in the middle of a release, waiting for a promote.
    let manual = "autoPromote: false, scaleDownDelay: 1s";
    w.apply("cart", &demo(&w, "cart", "cutover-demo:a", 1, manual));
    w.wait_available("cart");
    w.apply("cart", &demo(&w, "cart", "cutover-demo:b", 1, manual));
    w.wait_phase("cart", "Preview");

    // Its log goes to a file: plain text, no terminal colours.
    let log = w.logs();
    assert!(log.contains(" INFO "), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a log file:\n{log}"
    );

    let healthz = get_ok(&addr, "/healthz");
    assert_eq!(healthz.body, "ok\n");
    let readyz = get_ok(&addr, "/readyz");
    assert_eq!(readyz.body, "ready\n");

    // Prometheus asks for OpenMetrics and gets it; everyone else gets the text format,
    // which promtool accepts.
    let openmetrics = request_with(
        &addr,
        "GET",
        "/metrics",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
        "",
    )
    .expect("/metrics answers");
    assert!(
        openmetrics
            .content_type
            .starts_with("application/openmetrics-text; version=1.0.0"),
        "{}",
        openmetrics.content_type
    );
    assert!(
        openmetrics.body.ends_with("# EOF\n"),
        "{}",
        openmetrics.body
    );
    let metrics = get_ok(&addr, "/metrics");
    assert!(
        metrics
            .content_type
            .starts_with("text/plain; version=0.0.4"),
        "{}",
        metrics.content_type
    );
    promtool_check_metrics(&metrics.body);
    let text = &metrics.body;
    for name in [
        "cutover_reconcile_duration_seconds_bucket",
        "cutover_reconcile_errors_total",
        "cutover_queue_depth",
        "cutover_services",
        "cutover_rollouts_total",
        "cutover_steps_total",
        "cutover_haproxy_reloads_total",
        "cutover_haproxy_runtime_calls_total",
        "cutover_leader",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    assert!(!text.contains("# EOF"), "{text}");
    let at_least = |series: &str, min: f64| {
        let value = sample(text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"));
        assert!(value >= min, "{series} is {value}, expected at least {min}");
    };
    // The first deploy and the rollout to :b both switched traffic.
    at_least(r#"cutover_rollouts_total{outcome="completed"}"#, 2.0);
    at_least(
        r#"cutover_steps_total{kind="create_replica",result="ok"}"#,
        4.0,
    );
    at_least(r#"cutover_steps_total{kind="switch",result="ok"}"#, 2.0);
    at_least(
        r#"cutover_reconcile_duration_seconds_count{result="ok"}"#,
        1.0,
    );
    assert_eq!(
        sample(text, r#"cutover_services{phase="Available"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(text, r#"cutover_services{phase="Invalid"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(text, r#"cutover_rollouts_total{outcome="aborted"}"#),
        Some(0.0)
    );
    assert_eq!(sample(text, "cutover_leader"), Some(1.0));
    // Per service: which phase, which color is live with which revision, replicas.
    assert_eq!(
        sample(
            text,
            r#"cutover_service_phase{service="shop",phase="Available"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            text,
            r#"cutover_service_phase{service="cart",phase="Preview"}"#
        ),
        Some(1.0)
    );
    let live_shop = text
        .lines()
        .find(|l| {
            l.starts_with(
                "cutover_service_color_info{service=\"shop\",color=\"green\",role=\"live\"",
            )
        })
        .unwrap_or_else(|| panic!("shop's live color missing:\n{text}"));
    assert!(
        live_shop.contains("image=\"cutover-demo:b\""),
        "{live_shop}"
    );
    assert!(
        text.contains(
            "cutover_service_color_info{service=\"cart\",color=\"green\",role=\"preview\""
        ),
        "{text}"
    );
    assert_eq!(
        sample(
            text,
            r#"cutover_service_replicas_ready{service="shop",color="green"}"#
        ),
        Some(2.0)
    );
    assert!(
        sample(text, "process_resident_memory_bytes").is_some_and(|v| v > 0.0),
        "{text}"
    );
    assert!(
        sample(text, "process_cpu_seconds_total").is_some(),
        "{text}"
    );

    let api = get_ok(&addr, "/api/v1/services");
    assert!(api.content_type.starts_with("application/json"), "{api:?}");
    let json = api.json();
    let services = json["services"].as_array().expect("a services array");
    let names: Vec<&str> = services.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["cart", "ledger", "shop"], "{json:#}");
    let shop = &services[2];
    assert_eq!(shop["spec"]["image"], "cutover-demo:b");
    assert_eq!(shop["spec"]["replicas"], 2);
    assert_eq!(shop["spec"]["valid"], true);
    assert_eq!(shop["status"]["phase"], "Available");
    assert_eq!(shop["status"]["activeColor"], "green");
    assert_eq!(shop["status"]["colors"]["green"]["image"], "cutover-demo:b");
    assert_eq!(shop["status"]["colors"]["green"]["ready"], 2);
    assert!(
        shop["status"]["events"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    );
    let ledger = &services[1];
    assert_eq!(ledger["spec"]["valid"], false);
    assert!(
        ledger["spec"]["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("spec.replicas")),
        "{ledger:#}"
    );
    assert_eq!(ledger["status"]["phase"], "Invalid");

    let daemon = get_ok(&addr, "/api/v1/daemon").json();
    assert_eq!(daemon["role"], "leader");
    assert_eq!(daemon["ready"], true);
    assert_eq!(daemon["prefix"], w.prefix.as_str());
    assert_eq!(daemon["instance"], w.instance.as_str());
    assert!(daemon["queueDepth"].is_u64(), "{daemon}");

    let page = get_ok(&addr, "/");
    assert!(page.content_type.starts_with("text/html"), "{page:?}");
    assert!(page.body.contains("<title>cutover"), "{}", page.body);
    assert!(page.body.contains("/api/v1/services"));
    assert!(
        !page.body.contains("http://") && !page.body.contains("https://"),
        "no external assets"
    );

    let missing = get(&addr, "/nope").unwrap();
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("/healthz"), "{missing:?}");

    // The log filter changes at run time, and a bad one is refused with the reason.
    let put = request(&addr, "PUT", "/loglevel", "info,cutover=trace").unwrap();
    assert_eq!(put.status, 200, "{put:?}");
    assert_eq!(get_ok(&addr, "/loglevel").body, "info,cutover=trace\n");
    let bad = request(&addr, "PUT", "/loglevel", "cutover=loud").unwrap();
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(bad.body.contains("invalid filter"), "{bad:?}");
    assert_eq!(get_ok(&addr, "/loglevel").body, "info,cutover=trace\n");
}

#[test]
fn an_unreadable_status_is_listed_with_its_error() {
    let w = world("http-junk");
    let (_, addr) = start(&w);
    w.apply("parcel", &demo(&w, "parcel", "cutover-demo:a", 1, FAST));
    w.wait_available("parcel");
    // A status left behind without a spec or containers: nothing makes the daemon rewrite it.
    let key = w.key("status/relic");
    w.kv_put("status/relic", "junk");

    let json = get_ok(&addr, "/api/v1/services").json();
    let services = json["services"].as_array().expect("a services array");
    let names: Vec<&str> = services.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["parcel", "relic"], "{json:#}");
    assert_eq!(services[0]["status"]["phase"], "Available", "{json:#}");
    let relic = &services[1];
    assert_eq!(relic["status"], serde_json::Value::Null, "{json:#}");
    let error = relic["statusError"].as_str().unwrap_or_default();
    assert!(
        error.contains(&key) && error.contains("expected value at line 1 column 1"),
        "{json:#}"
    );
}

#[test]
fn readiness_waits_for_consul_and_logs_can_be_json() {
    let w = world("http-unready");
    // Nothing listens there: the daemon is alive but cannot read the specs.
    let nowhere = format!("127.0.0.1:{}", support::unused_port());
    let d = w
        .daemon()
        .no_proxy()
        .consul(&nowhere)
        .arg("--log-format")
        .arg("json")
        .start();
    let addr = w.endpoint(d);

    assert_eq!(get_ok(&addr, "/healthz").body, "ok\n");
    // First it connects to Docker, then it waits for Consul, and says so.
    let expected = "not ready: waiting for a full read of the specs in Consul\n";
    w.eventually("/readyz to name Consul", || {
        get(&addr, "/readyz").is_some_and(|r| r.status == 503 && r.body == expected)
    });
    std::thread::sleep(Duration::from_secs(1));
    let readyz = get(&addr, "/readyz").unwrap();
    assert_eq!((readyz.status, readyz.body.as_str()), (503, expected));
    let daemon = get_ok(&addr, "/api/v1/daemon").json();
    assert_eq!(daemon["ready"], false);
    assert_eq!(
        daemon["notReadyReason"],
        "waiting for a full read of the specs in Consul"
    );
    let services = get(&addr, "/api/v1/services").unwrap();
    assert_eq!(services.status, 503, "{services:?}");
    assert!(
        services.json()["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{services:?}"
    );

    w.eventually("a JSON warning about Consul", || {
        w.log(d).lines().any(|line| {
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| {
                v["level"] == "WARN"
                    && v["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("cannot watch specs"))
            })
        })
    });
    for line in w.log(d).lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not a JSON log line: {line}"
        );
    }
}

#[test]
fn a_taken_port_is_reported_at_once() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let run = agent()
        .cutover(&unique_prefix("http-taken"))
        .args(["run", "--listen", &address])
        .run();
    assert_eq!(run.status.code(), Some(1), "{run}");
    assert!(
        run.stderr.contains(&format!(
            "error: cannot listen on {address} for the HTTP endpoints"
        )),
        "{run}"
    );
    assert!(run.stderr.contains("pass --listen"), "{run}");
}

// The browser.

/// `promtool check metrics` on a scrape: Prometheus' own parser and linter. A loud failure
/// when promtool is missing (scripts/install-deps installs it).
fn promtool_check_metrics(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool not runnable ({e}): run scripts/install-deps"));
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics failed: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Debian's chromium, or a loud failure.
fn chromium() -> PathBuf {
    ["chromium", "chromium-browser"]
        .iter()
        .find_map(|name| which(name))
        .unwrap_or_else(|| {
            panic!(
                "chromium not found: run scripts/install-deps (the status page is tested in a \
                 real headless browser)"
            )
        })
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

/// Runs headless Chromium on `url` with `args`, in its own profile directory, and returns
/// its stdout. Fails after 90 s.
fn run_chromium(profile: &Path, url: &str, args: &[&str]) -> String {
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .args(["--no-first-run", "--disable-extensions", "--mute-audio"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--window-size=1280,800", "--virtual-time-budget=5000"])
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish within 90 s: {}",
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out.join().unwrap();
    assert!(
        status.success(),
        "chromium failed ({status}): {}",
        err.join().unwrap()
    );
    stdout
}

/// The opening tag of the element that carries `attribute` in serialized HTML.
fn tag_with<'a>(dom: &'a str, attribute: &str) -> &'a str {
    let at = dom
        .find(attribute)
        .unwrap_or_else(|| panic!("{attribute} not in the rendered page:\n{dom}"));
    let start = dom[..at].rfind('<').unwrap();
    let end = at + dom[at..].find('>').unwrap();
    &dom[start..=end]
}

#[test]
fn the_status_page_renders_every_phase_in_a_real_browser() {
    let chromium_profile = TempDir::new();
    chromium(); // fail before the slow part when there is no browser
    let w = world("http-page");
    // With its proxy, so that the page lists it.
    let addr = w.endpoint(w.daemon().start());
    // One service per phase a person should tell apart at a glance.
    w.apply("catalog", &demo(&w, "catalog", "cutover-demo:a", 2, FAST));
    w.apply(
        "checkout",
        &demo(
            &w,
            "checkout",
            "cutover-demo:a",
            1,
            "autoPromote: false, scaleDownDelay: 1s",
        ),
    );
    // A canary at 10 %, paused until `cutover promote`.
    let canary = |image: &str| {
        let extra = format!(
            "  routes: [{{pathPrefix: /{}}}]\n  strategy: {{canary: {{scaleDownDelay: 1s, \
             steps: [{{weight: 10}}, {{pause: {{}}}}]}}}}\n",
            w.svc("shipping")
        );
        w.demo("shipping", image, 1, &extra)
    };
    w.apply("shipping", &canary("cutover-demo:a"));
    w.wait_available("catalog");
    w.wait_available("checkout");
    w.wait_available("shipping");
    w.apply("shipping", &canary("cutover-demo:b"));
    w.apply("catalog", &demo(&w, "catalog", "cutover-demo:b", 2, FAST));
    w.apply(
        "checkout",
        &demo(
            &w,
            "checkout",
            "cutover-demo:b",
            1,
            "autoPromote: false, scaleDownDelay: 1s",
        ),
    );
    w.apply(
        "inventory",
        &demo(
            &w,
            "inventory",
            "localhost:1/cutover/inventory:2.0",
            2,
            FAST,
        ),
    );
    w.kv_put(
        "services/payments",
        "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {name: payments}\nspec:\n  image: cutover-demo:a\n  replicas: two\n",
    );
    w.wait_available("catalog");
    w.wait_phase("checkout", "Preview");
    w.wait_phase("shipping", "Preview");
    w.wait_phase("inventory", "Degraded");
    w.wait_phase("payments", "Invalid");
    // A status left behind without a spec, unreadable: shown as Unknown with its error.
    w.kv_put("status/relic", "junk");

    let url = format!("http://{addr}/");
    let dom = run_chromium(chromium_profile.path(), &url, &["--dump-dom"]);
    // The script ran: the cards were built from /api/v1/services and /api/v1/daemon.
    let catalog = tag_with(&dom, r#"data-service="catalog""#);
    assert!(catalog.contains(r#"data-phase="Available""#), "{catalog}");
    assert!(catalog.contains(r#"data-live-color="green""#), "{catalog}");
    let checkout = tag_with(&dom, r#"data-service="checkout""#);
    assert!(checkout.contains(r#"data-phase="Preview""#), "{checkout}");
    assert!(checkout.contains(r#"data-live-color="blue""#), "{checkout}");
    let inventory = tag_with(&dom, r#"data-service="inventory""#);
    assert!(
        inventory.contains(r#"data-phase="Degraded""#),
        "{inventory}"
    );
    let payments = tag_with(&dom, r#"data-service="payments""#);
    assert!(payments.contains(r#"data-phase="Invalid""#), "{payments}");
    let shipping = tag_with(&dom, r#"data-canary-weight="#);
    assert!(
        shipping.contains(r#"data-canary-weight="10""#)
            && shipping.contains(r#"data-canary-step="2""#),
        "{shipping}"
    );
    let relic = tag_with(&dom, r#"data-service="relic""#);
    assert!(relic.contains(r#"data-phase="Unknown""#), "{relic}");
    for text in [
        ">catalog<",
        ">Available<",
        ">Preview<",
        ">Degraded<",
        ">Invalid<",
        ">LIVE<",
        ">PREVIEW<",
        ">cutover-demo:b<",
        ">CANARY 10%<",
        ">Canary step 2 of 2<",
        ">Leader<",
        ">Ready<",
        "6 services",
        "ImagePullFailed",
        "spec.replicas",
        "Status unreadable",
        "does not hold a valid status: expected value at line 1 column 1",
    ] {
        assert!(
            dom.contains(text),
            "{text} not in the rendered page:\n{dom}"
        );
    }
    assert!(
        tag_with(&dom, r#"id="banner""#).contains("hidden"),
        "the error banner shows:\n{dom}"
    );
    // The daemon's own proxy, serving the whole route table, its servers UP.
    let proxy = tag_with(&dom, "data-proxy=");
    assert!(proxy.contains(r#"data-behind="0""#), "{proxy}");
    for text in [">Proxies<", " current<", " UP"] {
        assert!(
            dom.contains(text),
            "{text} not in the rendered page:\n{dom}"
        );
    }

    let shot = w.dir.path().join("status-page.png");
    run_chromium(
        chromium_profile.path(),
        &url,
        &[&format!("--screenshot={}", shot.display())],
    );
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    assert!(
        png.len() > 20_000,
        "a suspiciously small screenshot: {} bytes",
        png.len()
    );
    if std::env::var_os("CUTOVER_UPDATE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png");
        std::fs::write(&docs, &png).expect("write docs/status-page.png");
    }
}

/// At rest the daemon reads and never writes: resyncs of converged services send Docker no
/// mutating request and no image inspection, and each resync lists the containers once,
/// however many services there are (their reconciles take their share of that list).
#[test]
fn an_idle_daemon_sends_docker_no_mutating_request() {
    let w = world("http-idle");
    let d = w.daemon().no_proxy().resync("1s").start();
    let addr = w.endpoint(d);
    let services = ["idle", "idle2", "idle3"];
    for name in services {
        w.apply(name, &demo(&w, name, "cutover-demo:a", 1, FAST));
    }
    for name in services {
        w.wait_available(name);
    }
    let counts = || {
        let text = get_ok(&addr, "/metrics").body;
        text.lines()
            .filter_map(|l| l.strip_prefix("cutover_docker_requests_total{operation=\""))
            .filter_map(|l| l.split_once("\"} "))
            .map(|(op, v)| (op.to_owned(), v.parse::<f64>().unwrap_or(f64::NAN)))
            .collect::<std::collections::BTreeMap<String, f64>>()
    };
    // Past the first reconciles' follow-ups.
    std::thread::sleep(Duration::from_secs(3));
    let started = Instant::now();
    let before = counts();
    assert!(before.contains_key("create_container"), "{before:?}");
    std::thread::sleep(Duration::from_secs(6));
    let after = counts();
    let window = started.elapsed();
    let delta: std::collections::BTreeMap<&str, f64> = after
        .iter()
        .map(|(op, v)| (op.as_str(), v - before.get(op).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d != 0.0)
        .collect();
    eprintln!("Docker requests in {window:?} at rest, resync every 1 s: {delta:?}");
    for op in [
        "create_container",
        "start_container",
        "stop_container",
        "rename_container",
        "remove_container",
        "create_image",
        "create_network",
        "remove_network",
        "create_volume",
    ] {
        assert_eq!(delta.get(op), None, "{op} at rest: {delta:?}\n{}", w.logs());
    }
    // A resync starts at least 1 s after the previous one, so the window holds at most
    // one more resync than whole seconds; each lists once (before: once, then once per
    // service, 4 here).
    let lists = delta.get("list_containers").copied().unwrap_or(0.0);
    let resyncs = window.as_secs_f64().floor() + 1.0;
    assert!(
        lists >= 1.0 && lists <= resyncs,
        "{lists} container lists in {window:?}, at most {resyncs} resyncs: {delta:?}"
    );
    // The image its replicas run is not asked about again.
    assert_eq!(delta.get("inspect_image"), None, "{delta:?}");
}

/// At rest the daemon leaves its replicas' health to HAProxy's own checks of them, and
/// readiness is no weaker for it: a replica that fails its checks is not ready (the service
/// is not `Available`) until it passes them again, probed by the daemon itself meanwhile.
#[test]
fn at_rest_the_proxy_checks_replicas_and_a_failing_one_is_still_noticed() {
    let w = world("http-quiet");
    let d = w.daemon().start();
    let addr = w.endpoint(d);
    w.apply("quiet", &demo(&w, "quiet", "cutover-demo:a", 2, FAST));
    w.wait_available("quiet");
    let probed = |by: &str| {
        let text = get_ok(&addr, "/metrics").body;
        sample(&text, &format!("cutover_replicas_probed{{by=\"{by}\"}}"))
    };
    w.eventually("both replicas left to the proxy's checks", || {
        probed("proxy") == Some(2.0) && probed("daemon") == Some(0.0)
    });
    let replica = w
        .running()
        .first()
        .and_then(|line| line.split_whitespace().next().map(str::to_owned))
        .expect("a running replica");
    support::docker(&["exec", &replica, "touch", "/tmp/unhealthy"]);
    let available = |want: bool| {
        w.try_status("quiet").is_some_and(|s| {
            s["conditions"].as_array().into_iter().flatten().any(|c| {
                c["type"] == "Available" && c["status"] == if want { "True" } else { "False" }
            })
        })
    };
    w.eventually("the failing replica to be not ready", || available(false));
    assert!(probed("daemon").is_some_and(|n| n >= 1.0), "{}", w.logs());
    support::docker(&["exec", &replica, "rm", "/tmp/unhealthy"]);
    w.eventually("the replica to be ready again", || available(true));
    w.eventually("both replicas left to the proxy's checks again", || {
        probed("proxy") == Some(2.0) && probed("daemon") == Some(0.0)
    });
}
