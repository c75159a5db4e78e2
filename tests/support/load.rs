//! Steady load through a proxy: several threads, each request on a new connection, every
//! answer that is not a 200 from a live version counted as a failure, and the first time
//! each version was seen.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// The load on one listener; stop it with [`Load::finish`] (it stops by itself after five
/// minutes).
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(u64, Vec<String>)>>,
    first_seen: Arc<Mutex<BTreeMap<String, SystemTime>>>,
    /// How many times each body (`version A`, ...) and each failure (`failed`) was seen.
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Load {
    /// `threads` threads sending `GET /` with `Host: host` to `127.0.0.1:port`.
    pub fn start(port: u16, host: String, threads: usize) -> Load {
        Load::start_on(port, host, "/", threads)
    }

    /// Like [`Load::start`], with requests for `path`.
    pub fn start_on(port: u16, host: String, path: &'static str, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let first_seen = Arc::new(Mutex::new(BTreeMap::new()));
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let threads = (0..threads)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let first_seen = Arc::clone(&first_seen);
                let counts = Arc::clone(&counts);
                let host = host.clone();
                std::thread::spawn(move || {
                    let (mut ok, mut failures) = (0, Vec::new());
                    let deadline = Instant::now() + Duration::from_secs(300);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        match request_path(port, &host, path) {
                            Ok(body) if body.starts_with("version ") => {
                                ok += 1;
                                *counts.lock().unwrap().entry(body.clone()).or_insert(0) += 1;
                                first_seen
                                    .lock()
                                    .unwrap()
                                    .entry(body)
                                    .or_insert_with(SystemTime::now);
                            }
                            Ok(other) => {
                                *counts.lock().unwrap().entry("failed".into()).or_insert(0) += 1;
                                failures.push(format!("{} {other}", now_text()));
                            }
                            Err(e) => {
                                *counts.lock().unwrap().entry("failed".into()).or_insert(0) += 1;
                                failures.push(format!("{} {e}", now_text()));
                            }
                        }
                    }
                    (ok, failures)
                })
            })
            .collect();
        Load {
            stop,
            threads,
            first_seen,
            counts,
        }
    }

    /// How many answers of each body (`version A`, ...) and how many failures (`failed`) so
    /// far.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts.lock().unwrap().clone()
    }

    /// When a body (such as `version B`) was first answered.
    pub fn first_seen(&self, body: &str) -> Option<SystemTime> {
        self.first_seen.lock().unwrap().get(body).copied()
    }

    /// Stops the load; returns the successes and the failures.
    pub fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = (0, Vec::new());
        for t in self.threads {
            let (ok, failures) = t.join().unwrap();
            total.0 += ok;
            total.1.extend(failures);
        }
        total
    }

    /// Stops the load and asserts that it meant something (more than `min_ok` answers) and
    /// that no request failed; `what` names the load and `logs` are shown on failure.
    /// Returns the answers.
    pub fn finish_without_failures(
        self,
        what: &str,
        min_ok: u64,
        logs: impl FnOnce() -> String,
    ) -> u64 {
        let (ok, failures) = self.finish();
        assert!(
            ok > min_ok,
            "{what}: too little load to mean anything ({ok})"
        );
        assert!(
            failures.is_empty(),
            "{what}: {} of {} requests failed: {:?}\n{}",
            failures.len(),
            ok + failures.len() as u64,
            &failures[..failures.len().min(10)],
            logs()
        );
        ok
    }
}

/// One HTTP/1.0 request for `/` on a new connection: the body of a 200, or what went
/// wrong.
pub fn request(port: u16, host: &str) -> Result<String, String> {
    request_path(port, host, "/")
}

/// Like [`request`], for `path`.
pub fn request_path(port: u16, host: &str, path: &str) -> Result<String, String> {
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no headers: {response:?}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or_default().to_owned());
    }
    Ok(body.trim().to_owned())
}

/// The time of day with milliseconds, to match failures with daemon logs.
fn now_text() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}.{:03}", d.as_secs() % 86400, d.subsec_millis())
}
