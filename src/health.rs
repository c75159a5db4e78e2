//! cutover's own HTTP health probe of replicas, and the monitor that turns probe results into
//! readiness.
//!
//! A replica is ready after `healthyThreshold` successful probes in a row and stops being
//! ready after `unhealthyThreshold` failures in a row; failures within `startPeriod` after
//! the monitor started probing it do not count. Where the image defines a Docker
//! `HEALTHCHECK`, the replica is ready only if Docker says `healthy` too.
//!
//! The threshold rules are a pure state machine, [`ProbeState`]; [`HealthMonitor`] runs one
//! tokio task per probed container and reports every flip of readiness on a channel, so
//! that the controller can requeue the service. Time comes from `tokio::time`, so tests run
//! on a paused clock. This module never talks to Docker: the controller hands it what the
//! Docker adapter observed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Once, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How often a replica that is not ready is probed, at most.
pub const FAST_INTERVAL: Duration = Duration::from_millis(200);

/// How often a replica that has never passed a probe is probed, at most (a startup probe):
/// a replica just started answers within a few tens of milliseconds of its start, and a
/// release waits for its first success.
pub const STARTUP_INTERVAL: Duration = Duration::from_millis(25);

/// How long to wait before the next probe of a replica probed every `interval`: `interval`
/// once it is ready; at most [`FAST_INTERVAL`] while it is not (coming up, or going down);
/// at most [`STARTUP_INTERVAL`] until its first probe ever passes. `healthyThreshold`
/// still counts successes in a row: only the wait before the first one is shorter.
pub fn next_probe_in(interval: Duration, ready: bool, passed_once: bool) -> Duration {
    let every = if ready {
        interval
    } else if passed_once {
        interval.min(FAST_INTERVAL)
    } else {
        interval.min(STARTUP_INTERVAL)
    };
    every.max(Duration::from_millis(1))
}

use crate::docker::DockerHealth;
use crate::observed::Container;
use crate::spec::Health;

/// How one probe went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// A 2xx or 3xx answer within the timeout.
    Success {
        status: u16,
    },
    Failure(ProbeFailure),
}

impl ProbeResult {
    pub fn is_success(&self) -> bool {
        matches!(self, ProbeResult::Success { .. })
    }
}

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeFailure {
    /// The replica answered with a status that is not 2xx or 3xx.
    Status(u16),
    /// No complete answer within the timeout.
    Timeout(Duration),
    /// Nothing listens on the port.
    Refused,
    /// Any other failure to connect, or a malformed answer.
    Other(String),
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeFailure::Status(code) => write!(f, "answered HTTP {code}"),
            ProbeFailure::Timeout(timeout) => write!(f, "no answer within {timeout:?}"),
            ProbeFailure::Refused => f.write_str("connection refused"),
            ProbeFailure::Other(message) => f.write_str(message),
        }
    }
}

/// What to probe: `GET http://address:port/path` with `Host: host`, giving up after
/// `timeout`. The `Host` header is the one HAProxy's check sends too, so that an app that
/// looks at it answers both alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProbeTarget {
    pub address: String,
    pub port: u16,
    pub path: String,
    pub host: Option<String>,
    pub timeout: Duration,
}

impl ProbeTarget {
    pub fn url(&self) -> String {
        let host = if self.address.contains(':') {
            format!("[{}]", self.address)
        } else {
            self.address.clone()
        };
        let slash = if self.path.starts_with('/') { "" } else { "/" };
        format!("http://{host}:{}{slash}{}", self.port, self.path)
    }
}

/// An HTTP client for probes: no proxy (replicas are on a local network), no redirects
/// followed (a 3xx is an answer), no pooled connections (each probe tests a fresh accept).
#[derive(Debug, Clone)]
pub struct Prober {
    client: reqwest::Client,
}

impl Default for Prober {
    fn default() -> Self {
        Prober::new()
    }
}

impl Prober {
    pub fn new() -> Prober {
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .build()
            .expect("a plain HTTP client with a crypto provider installed always builds");
        Prober { client }
    }

    /// Probes once. Never fails: a failure is a [`ProbeResult::Failure`] saying what went wrong.
    pub async fn probe(&self, target: &ProbeTarget) -> ProbeResult {
        let request = async {
            let mut request = self.client.get(target.url());
            if let Some(host) = &target.host {
                request = request.header(reqwest::header::HOST, host);
            }
            let response = request.send().await?;
            let status = response.status();
            // Read the body so that a replica that stalls mid-answer fails the probe.
            response.bytes().await?;
            Ok::<_, reqwest::Error>(status)
        };
        match tokio::time::timeout(target.timeout, request).await {
            Err(_) => ProbeResult::Failure(ProbeFailure::Timeout(target.timeout)),
            Ok(Ok(status)) if status.is_success() || status.is_redirection() => {
                ProbeResult::Success {
                    status: status.as_u16(),
                }
            }
            Ok(Ok(status)) => ProbeResult::Failure(ProbeFailure::Status(status.as_u16())),
            Ok(Err(error)) => ProbeResult::Failure(describe_error(&error)),
        }
    }
}

/// Probes `GET http://address:port/path` once with a shared [`Prober`].
pub async fn probe(address: &str, port: u16, path: &str, timeout: Duration) -> ProbeResult {
    static PROBER: OnceLock<Prober> = OnceLock::new();
    let target = ProbeTarget {
        address: address.to_owned(),
        port,
        path: path.to_owned(),
        host: None,
        timeout,
    };
    PROBER.get_or_init(Prober::new).probe(&target).await
}

fn describe_error(error: &reqwest::Error) -> ProbeFailure {
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return ProbeFailure::Refused;
        }
        source = current.source();
    }
    // reqwest's own message is "error sending request for url (...)"; the cause says more.
    let mut message = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(current) = cause {
        message = format!("{message}: {current}");
        cause = current.source();
    }
    ProbeFailure::Other(message)
}

/// reqwest is built without a built-in crypto provider (`rustls-no-provider`), and building
/// any client, even for plain HTTP, panics without a process-wide default. We install
/// `ring`, which bollard already compiles; if another provider was installed first, that
/// one stays.
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The threshold settings of a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Successes in a row that make a container ready.
    pub healthy: u32,
    /// Failures in a row that make a ready container not ready.
    pub unhealthy: u32,
    /// Failures this soon after probing started do not count.
    pub start_period: Duration,
}

impl Thresholds {
    pub fn from_spec(health: &Health) -> Thresholds {
        Thresholds {
            healthy: health.healthy_threshold.max(1),
            unhealthy: health.unhealthy_threshold.max(1),
            start_period: health.start_period.as_std(),
        }
    }
}

/// The probe history of one container, reduced to what the thresholds need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeState {
    successes: u32,
    failures: u32,
    ready: bool,
    started: Instant,
}

impl ProbeState {
    /// A container not yet ready, probed since `started`.
    pub fn new(started: Instant) -> ProbeState {
        ProbeState {
            successes: 0,
            failures: 0,
            ready: false,
            started,
        }
    }

    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Records one probe; returns whether readiness flipped.
    pub fn record(&mut self, success: bool, now: Instant, thresholds: &Thresholds) -> bool {
        let was_ready = self.ready;
        if success {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.successes >= thresholds.healthy {
                self.ready = true;
            }
        } else {
            self.successes = 0;
            let starting = now.saturating_duration_since(self.started) < thresholds.start_period;
            if !starting {
                self.failures = self.failures.saturating_add(1);
                if self.failures >= thresholds.unhealthy {
                    self.ready = false;
                }
            }
        }
        self.ready != was_ready
    }
}

/// Whether a container counts as ready: our probe says so, and Docker's `HEALTHCHECK`
/// (where the image has one) says `healthy`.
pub fn combined_ready(probe_ready: bool, docker_health: Option<DockerHealth>) -> bool {
    probe_ready && docker_health.is_none_or(|health| health == DockerHealth::Healthy)
}

/// How `container` of `service` is probed: its own revision's check (its health and port
/// labels), else `health` and `port` (the current spec's, for containers made before those
/// labels); the `Host` header is the check's `host`, else the service's name, as HAProxy's
/// check sends it. `None` for a container of another service, not running or without an
/// address.
fn probe_config(
    service: &str,
    health: &Health,
    port: u16,
    container: &Container,
) -> Option<ProbeConfig> {
    if container.service != service || !container.running {
        return None;
    }
    let address = container.address.clone()?;
    let health = container.health.as_ref().unwrap_or(health);
    Some(ProbeConfig {
        target: ProbeTarget {
            address,
            port: container.port.unwrap_or(port),
            path: health.path.clone(),
            host: health
                .host
                .clone()
                .or_else(|| (!service.is_empty()).then(|| service.to_owned())),
            timeout: health.timeout.as_std(),
        },
        interval: health.interval.as_std(),
        thresholds: Thresholds::from_spec(health),
    })
}

/// Probes each running replica of `service` once, all at once, and sets its `ready`: the
/// probe passed and Docker's `HEALTHCHECK` (in `docker_health`, where the image has one)
/// says healthy. For `cutover plan`, which has no history of probes: where the daemon
/// wants `healthyThreshold` successes in a row, one is taken as enough.
pub async fn probe_once(
    service: &str,
    health: &Health,
    port: u16,
    containers: &mut [Container],
    docker_health: &BTreeMap<String, DockerHealth>,
) {
    let prober = Prober::new();
    let probes = containers.iter().map(|c| {
        let config = probe_config(service, health, port, c);
        let prober = prober.clone();
        async move {
            match config {
                Some(config) => prober.probe(&config.target).await.is_success(),
                None => false,
            }
        }
    });
    let results = futures::future::join_all(probes).await;
    for (container, passed) in containers.iter_mut().zip(results) {
        container.ready = combined_ready(passed, docker_health.get(&container.id).copied());
    }
}

/// A container's readiness flipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadinessChange {
    pub service: String,
    pub container_id: String,
    pub ready: bool,
}

/// How the monitor probes; [`HealthMonitor::new`] uses HTTP, tests script their own.
pub type ProbeFn = Arc<dyn Fn(ProbeTarget) -> BoxFuture<'static, ProbeResult> + Send + Sync>;

/// What one container is probed with; a change restarts its probing from scratch.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProbeConfig {
    target: ProbeTarget,
    interval: Duration,
    thresholds: Thresholds,
}

/// The monitor's knowledge of one container.
struct Entry {
    service: String,
    /// Tells this entry's task apart from an aborted predecessor that may still finish a
    /// probe.
    generation: u64,
    config: ProbeConfig,
    probe: ProbeState,
    docker_health: Option<DockerHealth>,
    last_failure: Option<ProbeFailure>,
    /// The combined readiness last reported.
    ready: bool,
    /// Ready, and every proxy's own check sees it UP: not probed by us until a proxy sees it
    /// DOWN or stops checking it (see [`HealthMonitor::follow_proxies`]).
    delegated: bool,
    task: Option<JoinHandle<()>>,
}

impl Entry {
    /// Recomputes the combined readiness; returns the change to report, if any.
    fn update(&mut self, container_id: &str) -> Option<ReadinessChange> {
        let ready = combined_ready(self.probe.ready(), self.docker_health);
        (ready != self.ready).then(|| {
            self.ready = ready;
            ReadinessChange {
                service: self.service.clone(),
                container_id: container_id.to_owned(),
                ready,
            }
        })
    }
}

struct Shared {
    entries: HashMap<String, Entry>,
    next_generation: u64,
}

/// Probes the running replicas of every service and tracks their readiness.
///
/// # Caveats
/// [`HealthMonitor::sync`] spawns tokio tasks, so it must be called within a runtime.
/// Dropping the monitor stops every probe.
pub struct HealthMonitor {
    shared: Arc<Mutex<Shared>>,
    probe: ProbeFn,
    changes: mpsc::UnboundedSender<ReadinessChange>,
}

impl HealthMonitor {
    /// A monitor that probes over HTTP, and the receiver of its readiness changes.
    pub fn new() -> (HealthMonitor, mpsc::UnboundedReceiver<ReadinessChange>) {
        let prober = Prober::new();
        HealthMonitor::with_probe(Arc::new(move |target: ProbeTarget| {
            let prober = prober.clone();
            Box::pin(async move { prober.probe(&target).await }) as BoxFuture<'static, ProbeResult>
        }))
    }

    /// A monitor that probes with `probe`.
    pub fn with_probe(probe: ProbeFn) -> (HealthMonitor, mpsc::UnboundedReceiver<ReadinessChange>) {
        let (changes, receiver) = mpsc::unbounded_channel();
        let monitor = HealthMonitor {
            shared: Arc::new(Mutex::new(Shared {
                entries: HashMap::new(),
                next_generation: 0,
            })),
            probe,
            changes,
        };
        (monitor, receiver)
    }

    /// Makes the probed set of `service` exactly its running containers that have an
    /// address: starts probing new ones, restarts probing those whose address or check
    /// changed, and forgets the others (reporting a change for any that was ready). Each
    /// container is probed the way its own revision asks (its health and port labels);
    /// `health` and `port` (the current spec's) are for containers made before those
    /// labels. The `Host` header is the revision's `health.host`, else the service's name,
    /// as HAProxy's check sends it.
    /// `docker_health` is the Docker adapter's `HEALTHCHECK` state by container id.
    /// Containers of other services in `containers` are ignored.
    pub fn sync(
        &self,
        service: &str,
        health: &Health,
        port: u16,
        containers: &[Container],
        docker_health: &BTreeMap<String, DockerHealth>,
    ) {
        let wanted: HashMap<&str, ProbeConfig> = containers
            .iter()
            .filter_map(|c| Some((c.id.as_str(), probe_config(service, health, port, c)?)))
            .collect();

        let mut changes = Vec::new();
        let mut shared = self.lock();
        let gone: Vec<String> = shared
            .entries
            .iter()
            .filter(|(id, entry)| entry.service == service && !wanted.contains_key(id.as_str()))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some(entry) = shared.entries.remove(&id) {
                if let Some(task) = entry.task {
                    task.abort();
                }
                if entry.ready {
                    changes.push(ReadinessChange {
                        service: entry.service,
                        container_id: id,
                        ready: false,
                    });
                }
            }
        }

        for (id, config) in wanted {
            let docker_health = docker_health.get(id).copied();
            let unchanged = shared
                .entries
                .get(id)
                .is_some_and(|entry| entry.service == service && entry.config == config);
            if !unchanged {
                let was_ready = shared.entries.get(id).is_some_and(|e| e.ready);
                if let Some(old) = shared.entries.remove(id).and_then(|e| e.task) {
                    old.abort();
                }
                shared.next_generation += 1;
                let generation = shared.next_generation;
                let task = self.spawn_probes(id, generation, &config);
                shared.entries.insert(
                    id.to_owned(),
                    Entry {
                        service: service.to_owned(),
                        generation,
                        config,
                        probe: ProbeState::new(Instant::now()),
                        docker_health,
                        last_failure: None,
                        ready: was_ready,
                        delegated: false,
                        task: Some(task),
                    },
                );
            }
            if let Some(entry) = shared.entries.get_mut(id) {
                entry.docker_health = docker_health;
                changes.extend(entry.update(id));
            }
        }
        drop(shared);
        for change in changes {
            // Nobody listening is not an error: the controller may be shutting down.
            let _ = self.changes.send(change);
        }
    }

    /// Leaves to the proxies the checks of `service`'s replicas they already make, so that
    /// the daemon does not probe a replica a second time at rest. `checks` holds the
    /// replicas every proxy health-checks, by container id, and whether every proxy sees
    /// them UP ([`crate::fleet::Fleet::checks`]). Call it after [`HealthMonitor::sync`].
    ///
    /// # Guarantees
    /// - A replica is handed over only once our own probe made it ready and every proxy
    ///   sees it UP; readiness before a switch is never decided by the proxies alone.
    /// - A handed-over replica that a proxy sees DOWN (HAProxy's `fall` failures in a row)
    ///   is not ready at once, and our probe starts again from scratch.
    /// - One that no proxy checks any more (out of the routes, `--no-proxy`, a proxy that
    ///   lags) stays ready and is probed by us again, with the usual thresholds.
    pub fn follow_proxies(&self, service: &str, checks: &BTreeMap<String, bool>) {
        let mut changes = Vec::new();
        let mut guard = self.lock();
        let shared = &mut *guard;
        for (id, entry) in shared.entries.iter_mut() {
            if entry.service != service {
                continue;
            }
            match (entry.delegated, checks.get(id).copied()) {
                (false, Some(true)) if entry.ready => {
                    if let Some(task) = entry.task.take() {
                        task.abort();
                    }
                    entry.delegated = true;
                }
                (true, up) if up != Some(true) => {
                    let mut probe = ProbeState::new(Instant::now());
                    if up.is_none() {
                        probe.ready = entry.probe.ready;
                    }
                    entry.probe = probe;
                    entry.delegated = false;
                    shared.next_generation += 1;
                    entry.generation = shared.next_generation;
                    entry.task = Some(self.spawn_probes(id, entry.generation, &entry.config));
                    changes.extend(entry.update(id));
                }
                _ => {}
            }
        }
        drop(guard);
        for change in changes {
            let _ = self.changes.send(change);
        }
    }

    /// How many replicas are probed by the daemon itself, and how many are left to the
    /// proxies' checks (for the metrics).
    pub fn probed(&self) -> (usize, usize) {
        let shared = self.lock();
        let delegated = shared.entries.values().filter(|e| e.delegated).count();
        (shared.entries.len() - delegated, delegated)
    }

    /// Records a `HEALTHCHECK` change from the Docker events stream without waiting for the
    /// next [`HealthMonitor::sync`]. Unknown containers are ignored.
    pub fn set_docker_health(&self, container_id: &str, health: Option<DockerHealth>) {
        let change = {
            let mut shared = self.lock();
            shared.entries.get_mut(container_id).and_then(|entry| {
                entry.docker_health = health;
                entry.update(container_id)
            })
        };
        if let Some(change) = change {
            let _ = self.changes.send(change);
        }
    }

    /// Stops probing every container of `service`, for a service that was deleted.
    pub fn forget_service(&self, service: &str) {
        self.sync(service, &Health::default(), 0, &[], &BTreeMap::new());
    }

    /// Whether the container is ready. Containers the monitor does not probe are not.
    pub fn is_ready(&self, container_id: &str) -> bool {
        self.lock()
            .entries
            .get(container_id)
            .is_some_and(|entry| entry.ready)
    }

    /// The latest failed probe of the container since its last success, for status messages.
    pub fn last_failure(&self, container_id: &str) -> Option<ProbeFailure> {
        self.lock()
            .entries
            .get(container_id)
            .and_then(|entry| entry.last_failure.clone())
    }

    /// Fills in `ready` on each container from the monitor's knowledge.
    pub fn mark_ready(&self, containers: &mut [Container]) {
        let shared = self.lock();
        for container in containers {
            container.ready = shared
                .entries
                .get(&container.id)
                .is_some_and(|entry| entry.ready);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves consistent data: every update is one
        // assignment. Keep going rather than poison every later call.
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn spawn_probes(
        &self,
        container_id: &str,
        generation: u64,
        config: &ProbeConfig,
    ) -> JoinHandle<()> {
        let shared = Arc::clone(&self.shared);
        let probe = Arc::clone(&self.probe);
        let changes = self.changes.clone();
        let container_id = container_id.to_owned();
        let config = config.clone();
        tokio::spawn(async move {
            let mut first = true;
            let mut ready = false;
            let mut passed_once = false;
            loop {
                if !first {
                    let every = next_probe_in(config.interval, ready, passed_once);
                    tokio::time::sleep(every).await;
                }
                first = false;
                let result = probe(config.target.clone()).await;
                passed_once |= result.is_success();
                let change = {
                    let mut shared = shared.lock().unwrap_or_else(|p| p.into_inner());
                    let Some(entry) = shared
                        .entries
                        .get_mut(&container_id)
                        .filter(|entry| entry.generation == generation)
                    else {
                        return;
                    };
                    entry
                        .probe
                        .record(result.is_success(), Instant::now(), &config.thresholds);
                    entry.last_failure = match result {
                        ProbeResult::Success { .. } => None,
                        ProbeResult::Failure(failure) => Some(failure),
                    };
                    ready = entry.probe.ready();
                    entry.update(&container_id)
                };
                if let Some(change) = change {
                    tracing::debug!(
                        service = %change.service,
                        container = %change.container_id,
                        ready = change.ready,
                        "readiness changed"
                    );
                    let _ = changes.send(change);
                }
            }
        })
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        for entry in self.lock().entries.values_mut() {
            if let Some(task) = entry.task.take() {
                task.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use super::*;
    use crate::observed::Role;
    use crate::status::Color;

    const S: bool = true;
    const F: bool = false;

    fn thresholds(healthy: u32, unhealthy: u32, start_period_s: u64) -> Thresholds {
        Thresholds {
            healthy,
            unhealthy,
            start_period: Duration::from_secs(start_period_s),
        }
    }

    /// Feeds one probe per second and returns readiness after each.
    fn run(t: Thresholds, probes: &[bool]) -> Vec<bool> {
        let start = Instant::now();
        let mut state = ProbeState::new(start);
        probes
            .iter()
            .enumerate()
            .map(|(second, &success)| {
                state.record(success, start + Duration::from_secs(second as u64), &t);
                state.ready()
            })
            .collect()
    }

    #[test]
    fn thresholds_table() {
        let cases: &[(&str, Thresholds, &[bool], &[bool])] = &[
            ("one success is enough", thresholds(1, 3, 0), &[S], &[true]),
            (
                "successes must be in a row",
                thresholds(2, 3, 0),
                &[S, F, S, S],
                &[false, false, false, true],
            ),
            (
                "failures below the threshold keep it ready",
                thresholds(1, 3, 0),
                &[S, F, F, S, F, F],
                &[true, true, true, true, true, true],
            ),
            (
                "failures in a row make it not ready",
                thresholds(1, 2, 0),
                &[S, F, F, S],
                &[true, true, false, true],
            ),
            (
                "failures in the start period do not count",
                thresholds(1, 1, 3),
                &[F, F, F, F],
                &[false, false, false, false],
            ),
            (
                "a ready container in its start period stays ready",
                thresholds(1, 1, 3),
                &[S, F, F, F, F],
                &[true, true, true, false, false],
            ),
            (
                "never ready without successes",
                thresholds(1, 1, 0),
                &[F, F],
                &[false, false],
            ),
        ];
        for (name, t, probes, want) in cases {
            assert_eq!(run(*t, probes), *want, "{name}");
        }
    }

    #[test]
    fn record_reports_flips_only() {
        let start = Instant::now();
        let t = thresholds(1, 1, 0);
        let mut state = ProbeState::new(start);
        assert!(state.record(true, start, &t));
        assert!(!state.record(true, start, &t));
        assert!(state.record(false, start, &t));
        assert!(!state.record(false, start, &t));
    }

    #[test]
    fn docker_healthcheck_must_agree() {
        assert!(combined_ready(true, None));
        assert!(combined_ready(true, Some(DockerHealth::Healthy)));
        assert!(!combined_ready(true, Some(DockerHealth::Starting)));
        assert!(!combined_ready(true, Some(DockerHealth::Unhealthy)));
        assert!(!combined_ready(false, Some(DockerHealth::Healthy)));
    }

    #[test]
    fn urls() {
        let target = |address: &str, path: &str| ProbeTarget {
            address: address.to_owned(),
            port: 8080,
            path: path.to_owned(),
            host: None,
            timeout: Duration::from_secs(1),
        };
        assert_eq!(
            target("10.0.0.2", "/health").url(),
            "http://10.0.0.2:8080/health"
        );
        assert_eq!(
            target("10.0.0.2", "health").url(),
            "http://10.0.0.2:8080/health"
        );
        assert_eq!(target("fd00::2", "/").url(), "http://[fd00::2]:8080/");
    }

    fn replica(id: &str, address: &str) -> Container {
        Container {
            id: id.to_owned(),
            name: format!("books-blue-{id}"),
            service: "books".to_owned(),
            role: Role::Replica {
                color: Color::Blue,
                slot: 1,
            },
            revision: "r".to_owned(),
            spec_index: 1,
            image: "books:1".to_owned(),
            running: true,
            created_ms: 0,
            address: Some(address.to_owned()),
            ready: false,
            stopping: false,
            port: None,
            health: None,
        }
    }

    fn health(healthy: u32, unhealthy: u32) -> Health {
        Health {
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
            ..Health::default()
        }
    }

    /// A probe whose answer the test switches, counting calls.
    fn scripted() -> (ProbeFn, Arc<AtomicBool>, Arc<AtomicU32>) {
        let healthy = Arc::new(AtomicBool::new(true));
        let calls = Arc::new(AtomicU32::new(0));
        let (h, c) = (Arc::clone(&healthy), Arc::clone(&calls));
        let probe: ProbeFn = Arc::new(move |_target| {
            c.fetch_add(1, Ordering::SeqCst);
            let result = if h.load(Ordering::SeqCst) {
                ProbeResult::Success { status: 200 }
            } else {
                ProbeResult::Failure(ProbeFailure::Status(500))
            };
            Box::pin(async move { result })
        });
        (probe, healthy, calls)
    }

    #[tokio::test(start_paused = true)]
    async fn monitor_reports_ready_then_not_ready() {
        let (probe, healthy, _calls) = scripted();
        let (monitor, mut changes) = HealthMonitor::with_probe(probe);
        let containers = [replica("c1", "10.0.0.2")];
        monitor.sync("books", &health(2, 2), 80, &containers, &BTreeMap::new());
        assert!(!monitor.is_ready("c1"));

        let change = changes.recv().await.unwrap();
        assert_eq!(
            change,
            ReadinessChange {
                service: "books".into(),
                container_id: "c1".into(),
                ready: true
            }
        );
        assert!(monitor.is_ready("c1"));

        healthy.store(false, Ordering::SeqCst);
        let change = changes.recv().await.unwrap();
        assert!(!change.ready);
        assert!(!monitor.is_ready("c1"));
        assert_eq!(monitor.last_failure("c1"), Some(ProbeFailure::Status(500)));
    }

    #[test]
    fn a_replica_is_probed_fast_until_its_first_success() {
        let second = Duration::from_secs(1);
        // Never passed yet: the startup interval, unless the spec's own is shorter.
        assert_eq!(next_probe_in(second, false, false), STARTUP_INTERVAL);
        assert_eq!(
            next_probe_in(Duration::from_millis(10), false, false),
            Duration::from_millis(10)
        );
        // Passed once, not ready (a threshold above 1, or going down): FAST_INTERVAL.
        assert_eq!(next_probe_in(second, false, true), FAST_INTERVAL);
        // Ready: the spec's interval.
        assert_eq!(next_probe_in(second, true, true), second);
    }

    #[tokio::test(start_paused = true)]
    async fn a_starting_replica_is_ready_soon_after_it_first_answers_and_the_threshold_holds() {
        let (probe, healthy, calls) = scripted();
        healthy.store(false, Ordering::SeqCst);
        let (monitor, mut changes) = HealthMonitor::with_probe(probe);
        let containers = [replica("c1", "10.0.0.2")];
        // Interval 1 s, healthyThreshold 3: the replica answers from 1 s on.
        monitor.sync("books", &health(3, 1), 80, &containers, &BTreeMap::new());
        tokio::time::sleep(Duration::from_millis(990)).await;
        let failed = calls.load(Ordering::SeqCst);
        assert_eq!(
            failed, 40,
            "probed every STARTUP_INTERVAL (0, 25, ... 975 ms)"
        );
        healthy.store(true, Ordering::SeqCst);
        assert!(changes.recv().await.unwrap().ready);
        // First success within one STARTUP_INTERVAL, then two more FAST_INTERVAL apart:
        // three in a row, as the threshold says.
        assert_eq!(calls.load(Ordering::SeqCst), failed + 3);
    }

    #[tokio::test(start_paused = true)]
    async fn docker_health_holds_readiness_back() {
        let (probe, _healthy, _calls) = scripted();
        let (monitor, mut changes) = HealthMonitor::with_probe(probe);
        let containers = [replica("c1", "10.0.0.2")];
        let starting = BTreeMap::from([("c1".to_owned(), DockerHealth::Starting)]);
        monitor.sync("books", &health(1, 1), 80, &containers, &starting);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!monitor.is_ready("c1"), "Docker still says starting");
        assert!(changes.try_recv().is_err());

        monitor.set_docker_health("c1", Some(DockerHealth::Healthy));
        assert!(changes.recv().await.unwrap().ready);
        assert!(monitor.is_ready("c1"));
    }

    #[tokio::test(start_paused = true)]
    async fn sync_forgets_containers_that_stopped() {
        let (probe, _healthy, calls) = scripted();
        let (monitor, mut changes) = HealthMonitor::with_probe(probe);
        let mut containers = vec![replica("c1", "10.0.0.2"), replica("c2", "10.0.0.3")];
        monitor.sync("books", &health(1, 1), 80, &containers, &BTreeMap::new());
        assert!(changes.recv().await.unwrap().ready);
        assert!(changes.recv().await.unwrap().ready);

        containers[1].running = false;
        monitor.sync("books", &health(1, 1), 80, &containers, &BTreeMap::new());
        let change = changes.recv().await.unwrap();
        assert_eq!((change.container_id.as_str(), change.ready), ("c2", false));
        assert!(!monitor.is_ready("c2"));
        assert!(monitor.is_ready("c1"));

        // Only c1 is probed now: one call per interval.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = calls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(calls.load(Ordering::SeqCst) - before, 10);

        monitor.forget_service("books");
        assert!(!changes.recv().await.unwrap().ready);
        assert!(!monitor.is_ready("c1"));
    }

    #[tokio::test(start_paused = true)]
    async fn other_services_are_left_alone() {
        let (probe, _healthy, _calls) = scripted();
        let (monitor, mut changes) = HealthMonitor::with_probe(probe);
        monitor.sync(
            "books",
            &health(1, 1),
            80,
            &[replica("c1", "10.0.0.2")],
            &BTreeMap::new(),
        );
        assert!(changes.recv().await.unwrap().ready);
        let mut other = replica("c9", "10.0.0.9");
        other.service = "films".into();
        monitor.sync("films", &health(1, 1), 80, &[other], &BTreeMap::new());
        assert!(changes.recv().await.unwrap().ready);
        monitor.sync("films", &health(1, 1), 80, &[], &BTreeMap::new());
        assert_eq!(changes.recv().await.unwrap().container_id, "c9");
        assert!(monitor.is_ready("c1"));
    }

    #[tokio::test]
    async fn probe_says_refused_when_nothing_listens() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let result = probe("127.0.0.1", port, "/", Duration::from_secs(2)).await;
        assert_eq!(result, ProbeResult::Failure(ProbeFailure::Refused));
    }

    #[tokio::test]
    async fn probe_reads_status_codes_and_times_out() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    let n = socket.read(&mut buffer).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buffer[..n]).to_string();
                    let status = if request.starts_with("GET /ok ") {
                        "200 OK"
                    } else if request.starts_with("GET /moved ") {
                        "302 Found\r\nLocation: /elsewhere"
                    } else if request.starts_with("GET /hang ") {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        "200 OK"
                    } else {
                        "503 Service Unavailable"
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        let timeout = Duration::from_secs(5);
        assert_eq!(
            probe("127.0.0.1", port, "/ok", timeout).await,
            ProbeResult::Success { status: 200 }
        );
        assert_eq!(
            probe("127.0.0.1", port, "/moved", timeout).await,
            ProbeResult::Success { status: 302 }
        );
        assert_eq!(
            probe("127.0.0.1", port, "/down", timeout).await,
            ProbeResult::Failure(ProbeFailure::Status(503))
        );
        let short = Duration::from_millis(200);
        assert_eq!(
            probe("127.0.0.1", port, "/hang", short).await,
            ProbeResult::Failure(ProbeFailure::Timeout(short))
        );
    }
}
