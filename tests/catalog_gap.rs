//! The Consul catalog as its consumers read it, end to end: a real daemon, Docker, HAProxy and
//! a Consul agent of this test binary's own with its DNS interface on. While releases run, a
//! watcher makes blocking queries on `/v1/health/service/<svc>?tag=live&passing` (what
//! `consul watch -type=service -tag=live -passingonly` and consul-template do) and a poller
//! asks the agent's DNS for `live.<svc>.service.consul`; neither may ever get an empty answer
//! while a color serves.

mod support;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use support::{Agent, World, unused_port};

const FAST: &str = "  strategy: {blueGreen: {scaleDownDelay: 1s, progressDeadline: 60s}}\n";

/// This binary's agent, with DNS on a port of its own; and that port.
fn agent_with_dns() -> &'static (Agent, u16) {
    static AGENT: OnceLock<(Agent, u16)> = OnceLock::new();
    AGENT.get_or_init(|| {
        let dns = unused_port();
        // Later flags win: this overrides the harness's `-dns-port -1`.
        let agent = Agent::start_with(&["-dns-port", &dns.to_string()]);
        (agent, dns)
    })
}

/// What a consumer saw: answers in total, and the empty ones (with when and what).
#[derive(Default)]
struct Seen {
    answers: u64,
    empty: Vec<String>,
}

/// A consumer polling in a thread until told to stop.
struct Consumer {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: JoinHandle<()>,
}

impl Consumer {
    fn start(ask: impl FnMut(&mut u64) -> Option<Result<usize, String>> + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let thread = {
            let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
            let mut ask = ask;
            std::thread::spawn(move || {
                let started = tokio::time::Instant::now();
                let mut index = 0;
                while !stop.load(Ordering::SeqCst) {
                    match ask(&mut index) {
                        // The request itself failed (a timeout): not an answer.
                        None => std::thread::sleep(Duration::from_millis(20)),
                        Some(Ok(count)) if count > 0 => seen.lock().unwrap().answers += 1,
                        Some(answer) => {
                            let mut seen = seen.lock().unwrap();
                            seen.answers += 1;
                            seen.empty
                                .push(format!("{:?}: {answer:?}", started.elapsed()));
                        }
                    }
                }
            })
        };
        Consumer { stop, seen, thread }
    }

    fn finish(self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the consumer thread");
        Arc::try_unwrap(self.seen)
            .ok()
            .expect("the only reference")
            .into_inner()
            .unwrap()
    }
}

/// One blocking query on the health endpoint from `index`: the number of entries and the
/// new index, `None` when the request failed.
fn health_live(http_port: &str, service: &str, index: &mut u64) -> Option<Result<usize, String>> {
    let path = format!("/v1/health/service/{service}?tag=live&passing&index={index}&wait=5s");
    let mut stream = TcpStream::connect(http_port).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    if head.split_whitespace().nth(1)? != "200" {
        return Some(Err(head.lines().next().unwrap_or_default().to_owned()));
    }
    let new_index: u64 = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-consul-index")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    // Consul's advice: an index that goes backwards resets the watch.
    *index = if new_index < *index { 0 } else { new_index };
    let entries: serde_json::Value = serde_json::from_str(body).ok()?;
    let count = entries.as_array().map_or(0, Vec::len);
    Some(if count > 0 {
        Ok(count)
    } else {
        Err(format!("index {new_index}: {body}"))
    })
}

/// One DNS question for the A records of `name` at `127.0.0.1:port`: how many came back, or
/// the response code when none did; `None` when no answer arrived.
fn dns_a(port: u16, name: &str, id: u16) -> Option<Result<usize, String>> {
    let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut query = Vec::new();
    query.extend_from_slice(&id.to_be_bytes());
    query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    socket.send_to(&query, ("127.0.0.1", port)).ok()?;
    let mut answer = [0u8; 4096];
    let (len, _) = socket.recv_from(&mut answer).ok()?;
    if len < 12 || answer[..2] != id.to_be_bytes() {
        return None;
    }
    let rcode = answer[3] & 0x0f;
    let count = u16::from_be_bytes([answer[6], answer[7]]) as usize;
    Some(if rcode == 0 && count > 0 {
        Ok(count)
    } else {
        Err(format!("rcode {rcode}, {count} answers"))
    })
}

/// 20 auto-promoted releases, each a new revision on new replicas (A, B, A, ...), then a
/// scale up and down and a rollback to a stopped revision, while both consumers watch `live`:
/// not one empty answer.
#[test]
fn live_never_answers_empty_through_releases_scaling_and_a_rollback() {
    let (agent, dns_port) = agent_with_dns();
    let w = World::with_agent("catalog-gap", agent);
    let d = w.daemon().short_lease().start();
    let service = w.svc("web");
    let extra = format!("  routes: [{{host: {}}}]\n{FAST}", w.host("web"));
    let spec = |image: &str, release: u32| {
        w.demo(
            "web",
            image,
            2,
            &format!("  env: {{RELEASE: \"{release}\"}}\n{extra}"),
        )
    };
    w.apply("web", &spec("cutover-demo:a", 0));
    w.wait_available("web");
    let http = agent.address();
    let health = |http: &str| health_live(http, &service, &mut 0);
    w.eventually("the first replicas live and passing in Consul", || {
        matches!(health(&http), Some(Ok(2)))
    });
    let dns_name = format!("live.{service}.service.consul");
    w.eventually("the first replicas in Consul's DNS", || {
        matches!(dns_a(*dns_port, &dns_name, 1), Some(Ok(_)))
    });

    let watcher = {
        let (http, service) = (http.clone(), service.clone());
        Consumer::start(move |index| health_live(&http, &service, index))
    };
    let poller = {
        let (port, name) = (*dns_port, dns_name.clone());
        let mut id = 1u16;
        Consumer::start(move |_| {
            id = id.wrapping_add(1);
            std::thread::sleep(Duration::from_millis(20));
            dns_a(port, &name, id)
        })
    };
    for release in 1..=20 {
        let (image, body) = if release % 2 == 1 {
            ("cutover-demo:b", "version B [200]")
        } else {
            ("cutover-demo:a", "version A [200]")
        };
        w.apply("web", &spec(image, release));
        w.wait_available("web");
        w.eventually(&format!("release {release} serves {image}"), || {
            w.through_proxy(d, "web") == body
        });
        // Every release a new revision on new replicas: the old ones stop first.
        w.eventually(&format!("release {release}'s old replicas stopped"), || {
            w.containers()
                .iter()
                .filter(|c| c.ends_with(" running"))
                .count()
                == 2
        });
    }
    // Scaling the live color up and down, then a rollback to the kept release 19 (B), whose
    // replicas are started again from the stopped ones.
    for by in ["+2", "-2"] {
        let run = w.cutover(&["scale", &service, by]);
        assert!(run.status.success(), "{run}");
        w.wait_available("web");
        w.eventually(&format!("scaled {by}"), || {
            w.containers()
                .iter()
                .filter(|c| c.ends_with(" running"))
                .count()
                == if by == "+2" { 4 } else { 2 }
        });
    }
    let run = w.cutover(&["rollback", &service]);
    assert!(run.status.success(), "{run}\n{}", w.logs());
    w.eventually("the rollback serves B", || {
        w.through_proxy(d, "web") == "version B [200]"
    });
    w.eventually("the rolled-back replicas stopped", || {
        w.containers()
            .iter()
            .filter(|c| c.ends_with(" running"))
            .count()
            == 2
    });
    let watched = watcher.finish();
    let polled = poller.finish();
    eprintln!(
        "blocking queries: {} answers, {} empty; DNS: {} answers, {} empty",
        watched.answers,
        watched.empty.len(),
        polled.answers,
        polled.empty.len()
    );
    assert!(
        watched.answers >= 20 && polled.answers >= 100,
        "the consumers hardly saw anything: {} blocking answers, {} DNS answers",
        watched.answers,
        polled.answers
    );
    assert!(
        watched.empty.is_empty() && polled.empty.is_empty(),
        "live came back empty: {} of {} blocking answers {:?}; {} of {} DNS answers {:?}\n{}",
        watched.empty.len(),
        watched.answers,
        watched.empty,
        polled.empty.len(),
        polled.answers,
        polled.empty,
        w.logs()
    );
}
