//! The daemon's Prometheus metrics, and the pure rules that turn status transitions into
//! rollout outcomes.
//!
//! [`Metrics`] owns a `prometheus-client` registry and one handle per metric; the controller
//! calls its `observe`/`count` methods and the HTTP server encodes it for `/metrics`. Every
//! series with a known, small label set is created at zero, so a dashboard sees
//! `cutover_rollouts_total{outcome="aborted"} 0` rather than no series at all.
//!
//! It must not do I/O or decide anything: it only counts what the controller reports.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::plan::Step;
use crate::status::{Color, Phase, Status};

/// `/metrics` in the OpenMetrics text format that `prometheus-client` writes, for a scraper
/// that asks for it (Prometheus does).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `/metrics` in the Prometheus text format, for everyone else (`promtool`, curl, older
/// scrapers).
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every phase, for the `cutover_services` gauge (each is always present, 0 when unused).
pub const PHASES: [Phase; 5] = [
    Phase::Progressing,
    Phase::Preview,
    Phase::Available,
    Phase::Degraded,
    Phase::Invalid,
];

/// How a rollout ended, as counted by `cutover_rollouts_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Traffic switched to the new revision (a `Switched` event).
    Completed,
    /// `cutover abort` removed the rollout in progress.
    Aborted,
    /// The new color was not ready by `progressDeadline`; its revision was rejected.
    Rejected,
    /// `cutover rollback` rejected the live revision.
    RolledBack,
    /// The new revision breached its `analysis` limits after the switch; traffic went back.
    AnalysisFailed,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Completed,
        Outcome::Aborted,
        Outcome::Rejected,
        Outcome::RolledBack,
        Outcome::AnalysisFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Aborted => "aborted",
            Outcome::Rejected => "rejected",
            Outcome::RolledBack => "rolled_back",
            Outcome::AnalysisFailed => "analysis_failed",
        }
    }
}

/// The rollouts that ended between two statuses of one service, `old` being the one stored
/// and `new` the one being written.
///
/// - A new rejection (a different revision, spec index or reason in `rejected`) is an
///   outcome by its reason: `ProgressDeadlineExceeded` → rejected, `Aborted` → aborted,
///   `RolledBack` → rolled back, `AnalysisFailed` → analysis failed.
/// - A switch (the planner sets `switchedAt` exactly when it records a `Switched` event) is
///   a completed rollout, except the switch back to a kept revision that a rollback (asked
///   for, or after a failed analysis) made: that one is part of the rollback.
///
/// Pure, so that each transition is counted once: the controller calls it only when it
/// writes a status that differs from the stored one.
pub fn rollout_outcomes(old: &Status, new: &Status) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    if let Some(rejected) = &new.rejected
        && old.rejected.as_ref() != Some(rejected)
    {
        match rejected.reason.as_str() {
            "ProgressDeadlineExceeded" => outcomes.push(Outcome::Rejected),
            "Aborted" => outcomes.push(Outcome::Aborted),
            "RolledBack" => outcomes.push(Outcome::RolledBack),
            "AnalysisFailed" => outcomes.push(Outcome::AnalysisFailed),
            _ => {}
        }
    }
    let rolling_back = new
        .rejected
        .as_ref()
        .is_some_and(|r| r.reason == "RolledBack" || r.reason == "AnalysisFailed");
    if new.switched_at_ms.is_some() && new.switched_at_ms != old.switched_at_ms && !rolling_back {
        outcomes.push(Outcome::Completed);
    }
    outcomes
}

/// The `kind` label of `cutover_steps_total`.
pub fn step_kind(step: &Step) -> &'static str {
    match step {
        Step::PullImage { .. } => "pull_image",
        Step::CreateReplica { .. } => "create_replica",
        Step::CreateSideTarget { .. } => "create_side_target",
        Step::Start { .. } => "start",
        Step::Stop { .. } => "stop",
        Step::Remove { .. } => "remove",
        Step::Rename { .. } => "rename",
        Step::Switch { .. } => "switch",
    }
}

/// The `reason` labels of `cutover_reconcile_errors_total` (see
/// `ReconcileError::metric_reason`), created at zero.
const ERROR_REASONS: [&str; 4] = ["consul", "docker", "image_not_found", "image_pull_failed"];

const STEP_KINDS: [&str; 8] = [
    "pull_image",
    "create_replica",
    "create_side_target",
    "start",
    "stop",
    "remove",
    "rename",
    "switch",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByLabel {
    by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

/// The `operation` labels of `cutover_docker_requests_total`, created at zero: every request
/// the Docker adapter sends.
const DOCKER_OPERATIONS: [&str; 17] = [
    "ping",
    "events",
    "list_containers",
    "inspect_container",
    "create_container",
    "start_container",
    "stop_container",
    "rename_container",
    "remove_container",
    "inspect_image",
    "create_image",
    "list_networks",
    "inspect_network",
    "create_network",
    "remove_network",
    "inspect_volume",
    "create_volume",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServicePhaseLabels {
    service: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceColorLabels {
    service: String,
    color: String,
    role: &'static str,
    revision: String,
    image: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceReplicaLabels {
    service: String,
    color: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

fn reconcile_histogram() -> Histogram {
    // 5 ms to about 82 s: a no-op reconcile is milliseconds, one that pulls an image minutes.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// Every metric of the daemon. Shared as `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    reconcile_duration: Family<ResultLabel, Histogram, fn() -> Histogram>,
    reconcile_errors: Family<ReasonLabel, Counter>,
    queue_depth: Gauge,
    replicas_probed: Family<ByLabel, Gauge>,
    services: Family<PhaseLabel, Gauge>,
    rollouts: Family<OutcomeLabel, Counter>,
    steps: Family<StepLabels, Counter>,
    deletions_refused: Counter,
    haproxy_reloads: Counter,
    haproxy_runtime_calls: Counter,
    reconcile_panics: Counter,
    proxy_table_version: Gauge,
    proxy_apply: Histogram,
    haproxy_restarts: Counter,
    leader: Gauge,
    docker_requests: Family<OperationLabel, Counter>,
    service_phase: Family<ServicePhaseLabels, Gauge>,
    service_color: Family<ServiceColorLabels, Gauge>,
    replicas_ready: Family<ServiceReplicaLabels, Gauge>,
    replicas_desired: Family<ServiceReplicaLabels, Gauge>,
    canary_weight: Family<ServiceReplicaLabels, Gauge>,
    /// The series of each service, from the statuses the controller writes; the
    /// `cutover_services` gauge is counted from it, and a service's old series are removed
    /// when its status changes or goes.
    per_service: Mutex<BTreeMap<String, ServiceSeries>>,
}

/// What the per-service families hold for one service.
#[derive(Debug, Clone, Default, PartialEq)]
struct ServiceSeries {
    phase: Option<Phase>,
    colors: Vec<ServiceColorLabels>,
    replicas: Vec<(ServiceReplicaLabels, i64, i64)>,
    /// A canary's color and the percentage of the live requests its step sends there.
    canary: Option<(ServiceReplicaLabels, i64)>,
}

impl ServiceSeries {
    fn of(service: &str, status: &Status) -> ServiceSeries {
        let role = |color: Color| {
            if status.active_color == Some(color) {
                "live"
            } else if status.preview_color == Some(color) {
                "preview"
            } else {
                "other"
            }
        };
        ServiceSeries {
            phase: status.phase,
            colors: (status.colors.iter())
                .map(|(color, c)| ServiceColorLabels {
                    service: service.to_owned(),
                    color: color.to_string(),
                    role: role(*color),
                    revision: c.revision.clone(),
                    image: c.image.clone(),
                })
                .collect(),
            replicas: (status.colors.iter())
                .map(|(color, c)| {
                    let labels = ServiceReplicaLabels {
                        service: service.to_owned(),
                        color: color.to_string(),
                    };
                    (labels, i64::from(c.ready), i64::from(c.desired))
                })
                .collect(),
            canary: (status.canary.as_ref()).filter(|c| c.weight > 0).map(|c| {
                let labels = ServiceReplicaLabels {
                    service: service.to_owned(),
                    color: c.color.to_string(),
                };
                (labels, i64::from(c.weight))
            }),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("cutover");
        let reconcile_duration: Family<ResultLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(reconcile_histogram);
        registry.register_with_unit(
            "reconcile_duration",
            "Time one reconcile of one service took, by result (ok or error)",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        let reconcile_errors = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed and will be retried with backoff, by reason",
            reconcile_errors.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Services waiting in the work queue",
            queue_depth.clone(),
        );
        let replicas_probed = Family::<ByLabel, Gauge>::default();
        registry.register(
            "replicas_probed",
            "Replicas whose health the daemon follows, by who checks them: the daemon's own probe, or the proxies' checks (at rest)",
            replicas_probed.clone(),
        );
        let services = Family::<PhaseLabel, Gauge>::default();
        registry.register(
            "services",
            "Services by the phase in their last status",
            services.clone(),
        );
        let rollouts = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "rollouts",
            "Rollouts that ended, by outcome (completed, aborted, rejected, rolled_back, analysis_failed)",
            rollouts.clone(),
        );
        let steps = Family::<StepLabels, Counter>::default();
        registry.register(
            "steps",
            "Plan steps carried out, by kind and result (ok or error)",
            steps.clone(),
        );
        let deletions_refused = Counter::default();
        registry.register(
            "deletions_refused",
            "Reconciles that refused to remove a service whose spec vanished in a mass deletion",
            deletions_refused.clone(),
        );
        let proxy_table_version = Gauge::default();
        registry.register(
            "proxy_table_version",
            "The newest route table version (a Consul ModifyIndex) this daemon's proxy applied",
            proxy_table_version.clone(),
        );
        let proxy_apply = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register_with_unit(
            "proxy_apply",
            "Time from the leader's write of a service's routes to this proxy having applied them",
            Unit::Seconds,
            proxy_apply.clone(),
        );
        let reconcile_panics = Counter::default();
        registry.register(
            "reconcile_panics",
            "Reconciles that crashed (a bug); the service is marked Degraded/InternalError and retried",
            reconcile_panics.clone(),
        );
        let haproxy_reloads = Counter::default();
        registry.register(
            "haproxy_reloads",
            "HAProxy reloads (only when the set of backends changes)",
            haproxy_reloads.clone(),
        );
        let haproxy_runtime_calls = Counter::default();
        registry.register(
            "haproxy_runtime_calls",
            "Commands sent to HAProxy's Runtime API",
            haproxy_runtime_calls.clone(),
        );
        let haproxy_restarts = Counter::default();
        registry.register(
            "haproxy_restarts",
            "HAProxy masters started again after the running one died (supervised mode)",
            haproxy_restarts.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this daemon is the leader that changes Docker, 0 while it waits",
            leader.clone(),
        );
        let docker_requests = Family::<OperationLabel, Counter>::default();
        registry.register(
            "docker_requests",
            "Requests sent to the Docker engine, by operation",
            docker_requests.clone(),
        );
        for operation in DOCKER_OPERATIONS {
            let _ = docker_requests.get_or_create(&OperationLabel { operation });
        }
        let service_phase = Family::<ServicePhaseLabels, Gauge>::default();
        registry.register(
            "service_phase",
            "1 for the phase of the service's last status, 0 for the other phases (leader only)",
            service_phase.clone(),
        );
        let service_color = Family::<ServiceColorLabels, Gauge>::default();
        registry.register(
            "service_color_info",
            "1 per color of a service that has replicas: its role (live, preview, other), revision and image (leader only)",
            service_color.clone(),
        );
        let replicas_ready = Family::<ServiceReplicaLabels, Gauge>::default();
        registry.register(
            "service_replicas_ready",
            "Ready replicas of a color of a service (leader only)",
            replicas_ready.clone(),
        );
        let replicas_desired = Family::<ServiceReplicaLabels, Gauge>::default();
        registry.register(
            "service_replicas_desired",
            "Replicas a color of a service should run (leader only)",
            replicas_desired.clone(),
        );
        let canary_weight = Family::<ServiceReplicaLabels, Gauge>::default();
        registry.register(
            "service_canary_weight",
            "Percent of the live requests a canary's current step sends to the color of its new \
             revision; no series without a canary share (leader only)",
            canary_weight.clone(),
        );
        let build_info = Family::<VersionLabel, Gauge>::default();
        registry.register(
            "build_info",
            "Always 1; the label is the version of this cutover binary",
            build_info.clone(),
        );
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);

        // Known label values start at zero.
        for result in ["ok", "error"] {
            let _ = reconcile_duration.get_or_create(&ResultLabel { result });
        }
        for reason in ERROR_REASONS {
            let _ = reconcile_errors.get_or_create(&ReasonLabel { reason });
        }
        for outcome in Outcome::ALL {
            let _ = rollouts.get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            });
        }
        for phase in PHASES {
            let _ = services.get_or_create(&PhaseLabel {
                phase: phase.to_string(),
            });
        }
        for kind in STEP_KINDS {
            for result in ["ok", "error"] {
                let _ = steps.get_or_create(&StepLabels { kind, result });
            }
        }

        Metrics {
            registry: root,
            reconcile_duration,
            reconcile_errors,
            queue_depth,
            replicas_probed,
            services,
            rollouts,
            steps,
            deletions_refused,
            reconcile_panics,
            proxy_table_version,
            proxy_apply,
            haproxy_reloads,
            haproxy_runtime_calls,
            haproxy_restarts,
            leader,
            docker_requests,
            service_phase,
            service_color,
            replicas_ready,
            replicas_desired,
            canary_weight,
            per_service: Mutex::new(BTreeMap::new()),
        }
    }

    /// One reconcile ended; `error` is its reason label when it failed.
    pub fn reconcile(&self, took: Duration, error: Option<&'static str>) {
        let result = if error.is_some() { "error" } else { "ok" };
        self.reconcile_duration
            .get_or_create(&ResultLabel { result })
            .observe(took.as_secs_f64());
        if let Some(reason) = error {
            self.reconcile_errors
                .get_or_create(&ReasonLabel { reason })
                .inc();
        }
    }

    /// One plan step was carried out (or failed).
    pub fn step(&self, step: &Step, ok: bool) {
        let labels = StepLabels {
            kind: step_kind(step),
            result: if ok { "ok" } else { "error" },
        };
        self.steps.get_or_create(&labels).inc();
    }

    /// The controller is about to write (or keep) `new` for `service`, where `old` is what is
    /// stored. Updates the phase gauge and counts the rollouts that ended.
    pub fn status(&self, service: &str, old: Option<&Status>, new: &Status) {
        let default = Status::default();
        if old != Some(new) {
            for outcome in rollout_outcomes(old.unwrap_or(&default), new) {
                self.rollouts
                    .get_or_create(&OutcomeLabel {
                        outcome: outcome.as_str(),
                    })
                    .inc();
            }
        }
        self.set_series(service, Some(ServiceSeries::of(service, new)));
    }

    /// The service is gone (its status was deleted).
    pub fn forget(&self, service: &str) {
        self.set_series(service, None);
    }

    /// Replaces the per-service series of `service` and counts the phases again.
    fn set_series(&self, service: &str, series: Option<ServiceSeries>) {
        let mut all = self
            .per_service
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(old) = all.remove(service) {
            for labels in &old.colors {
                self.service_color.remove(labels);
            }
            for (labels, _, _) in &old.replicas {
                self.replicas_ready.remove(labels);
                self.replicas_desired.remove(labels);
            }
            if let Some((labels, _)) = &old.canary {
                self.canary_weight.remove(labels);
            }
            if series.is_none() {
                for phase in PHASES {
                    self.service_phase.remove(&ServicePhaseLabels {
                        service: service.to_owned(),
                        phase: phase.to_string(),
                    });
                }
            }
        }
        if let Some(series) = series {
            for phase in PHASES {
                let labels = ServicePhaseLabels {
                    service: service.to_owned(),
                    phase: phase.to_string(),
                };
                (self.service_phase.get_or_create(&labels))
                    .set(i64::from(series.phase == Some(phase)));
            }
            for labels in &series.colors {
                self.service_color.get_or_create(labels).set(1);
            }
            for (labels, ready, desired) in &series.replicas {
                self.replicas_ready.get_or_create(labels).set(*ready);
                self.replicas_desired.get_or_create(labels).set(*desired);
            }
            if let Some((labels, weight)) = &series.canary {
                self.canary_weight.get_or_create(labels).set(*weight);
            }
            all.insert(service.to_owned(), series);
        }
        for phase in PHASES {
            let count = all.values().filter(|s| s.phase == Some(phase)).count();
            self.services
                .get_or_create(&PhaseLabel {
                    phase: phase.to_string(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// This daemon's proxy applied `version` of a service's routes, `took` after the leader
    /// wrote them.
    pub fn proxy_applied(&self, version: u64, took: Duration) {
        let version = i64::try_from(version).unwrap_or(i64::MAX);
        if version > self.proxy_table_version.get() {
            self.proxy_table_version.set(version);
        }
        self.proxy_apply.observe(took.as_secs_f64());
    }

    /// The Docker adapter sent the engine an `operation` request.
    pub fn docker_request(&self, operation: &'static str) {
        self.docker_requests
            .get_or_create(&OperationLabel { operation })
            .inc();
    }

    /// A reconcile panicked.
    pub fn reconcile_panicked(&self) {
        self.reconcile_panics.inc();
    }

    /// A removal was refused by the mass-deletion guard.
    pub fn deletion_refused(&self) {
        self.deletions_refused.inc();
    }

    /// What one apply of the routes did to HAProxy.
    pub fn haproxy(&self, outcome: &crate::haproxy::ApplyOutcome) {
        if outcome.reloaded {
            self.haproxy_reloads.inc();
        }
        self.haproxy_runtime_calls
            .inc_by(u64::from(outcome.runtime_calls));
        if outcome.restarted {
            self.haproxy_restarted();
        }
    }

    /// The supervisor found HAProxy's master dead and started it again.
    pub fn haproxy_restarted(&self) {
        self.haproxy_restarts.inc();
    }

    /// Whether this daemon holds the leader lock.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn is_leader(&self) -> bool {
        self.leader.get() == 1
    }

    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth.set(depth as i64);
    }

    /// How many replicas the daemon probes itself, and how many it leaves to the proxies.
    pub fn set_replicas_probed(&self, (daemon, proxy): (usize, usize)) {
        for (by, count) in [("daemon", daemon), ("proxy", proxy)] {
            self.replicas_probed
                .get_or_create(&ByLabel { by })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// Every metric in the OpenMetrics text format (see [`OPENMETRICS`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; an error would leave the text cut short, which
        // a scraper reports.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// What `/metrics` answers to a request with this `Accept` header: OpenMetrics to a
    /// scraper that asks for it, the Prometheus text format otherwise. Returns the content
    /// type and the body.
    pub fn negotiate(&self, accept: Option<&str>) -> (&'static str, String) {
        let text = self.encode();
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            (OPENMETRICS, text)
        } else {
            (PROMETHEUS_TEXT, prometheus_text(&text))
        }
    }
}

/// The Prometheus text format (0.0.4) of an OpenMetrics text as `prometheus-client` writes
/// it: no `# EOF` or `# UNIT`, a counter's `HELP` and `TYPE` named like its samples
/// (`_total`), `unknown` written `untyped`, and `HELP` without OpenMetrics' quote escape.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|tag| Some((tag, line.strip_prefix(tag)?)));
        match meta {
            Some((tag, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                let tail = if tag == "# HELP " {
                    tail.replace("\\\"", "\"")
                } else if tail == "unknown" {
                    "untyped".to_owned()
                } else {
                    tail.to_owned()
                };
                out.push_str(&format!("{tag}{name}{suffix} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The standard `process_*` metrics of the daemon's own process, read from `/proc` at each
/// scrape (absent where there is no `/proc`).
#[derive(Debug)]
struct ProcessCollector;

impl ProcessCollector {
    fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name is in parentheses and may hold spaces: count after the last ')'.
        let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())?;
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()?
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok());
        Some(ProcessStats {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            start_time_seconds: boot as f64 + field(22)? as f64 / ticks,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * rustix::param::page_size() as u64,
            open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count() as u64,
            max_fds,
        })
    }
}

struct ProcessStats {
    cpu_seconds: f64,
    start_time_seconds: f64,
    virtual_bytes: u64,
    resident_bytes: u64,
    open_fds: u64,
    max_fds: Option<u64>,
}

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let Some(stats) = ProcessCollector::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(stats.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?)?;
        let gauges = [
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                stats.start_time_seconds,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                stats.virtual_bytes as f64,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                stats.resident_bytes as f64,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                stats.open_fds as f64,
            ),
        ]
        .into_iter()
        .chain(stats.max_fds.map(|max| {
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                max as f64,
            )
        }));
        for (name, help, value) in gauges {
            ConstGauge::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Color, Rejected};

    fn rejected(reason: &str, index: u64) -> Option<Rejected> {
        Some(Rejected {
            revision: "abc".into(),
            spec_index: index,
            reason: reason.into(),
            message: String::new(),
        })
    }

    fn status(switched: Option<u64>, rejected: Option<Rejected>) -> Status {
        Status {
            switched_at_ms: switched,
            rejected,
            active_color: Some(Color::Blue),
            ..Status::default()
        }
    }

    #[test]
    fn outcomes_come_from_status_transitions() {
        use Outcome::*;
        let cases: Vec<(&str, Status, Status, Vec<Outcome>)> = vec![
            (
                "first deploy",
                Status::default(),
                status(Some(1), None),
                vec![Completed],
            ),
            (
                "a switch",
                status(Some(1), None),
                status(Some(2), None),
                vec![Completed],
            ),
            (
                "nothing new",
                status(Some(1), None),
                status(Some(1), None),
                vec![],
            ),
            (
                "deadline",
                status(Some(1), None),
                status(Some(1), rejected("ProgressDeadlineExceeded", 7)),
                vec![Rejected],
            ),
            (
                "a failed analysis and its switch back: one outcome",
                status(Some(1), None),
                status(Some(2), rejected("AnalysisFailed", 7)),
                vec![AnalysisFailed],
            ),
            (
                "abort",
                status(Some(1), None),
                status(Some(1), rejected("Aborted", 7)),
                vec![Aborted],
            ),
            (
                "rollback while draining switches back at once",
                status(Some(1), None),
                status(Some(2), rejected("RolledBack", 7)),
                vec![RolledBack],
            ),
            (
                "the later switch back of a rollback",
                status(Some(2), rejected("RolledBack", 7)),
                status(Some(3), rejected("RolledBack", 7)),
                vec![],
            ),
            (
                "the same rejection again",
                status(Some(1), rejected("Aborted", 7)),
                status(Some(1), rejected("Aborted", 7)),
                vec![],
            ),
            (
                "the same revision rejected again for a new spec index",
                status(Some(1), rejected("ProgressDeadlineExceeded", 7)),
                status(Some(1), rejected("ProgressDeadlineExceeded", 9)),
                vec![Rejected],
            ),
            (
                "a rejection cleared by a spec change",
                status(Some(1), rejected("Aborted", 7)),
                status(Some(1), None),
                vec![],
            ),
        ];
        for (what, old, new, expected) in cases {
            assert_eq!(rollout_outcomes(&old, &new), expected, "{what}");
        }
    }

    #[test]
    fn the_text_has_every_metric_and_zeroed_series() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        for needle in [
            "cutover_reconcile_duration_seconds_bucket{",
            "cutover_reconcile_errors_total{reason=\"consul\"} 0",
            "cutover_queue_depth 0",
            "cutover_services{phase=\"Available\"} 0",
            "cutover_rollouts_total{outcome=\"rolled_back\"} 0",
            "cutover_rollouts_total{outcome=\"analysis_failed\"} 0",
            "cutover_steps_total{kind=\"switch\",result=\"ok\"} 0",
            "cutover_deletions_refused_total 0",
            "cutover_haproxy_reloads_total 0",
            "cutover_haproxy_runtime_calls_total 0",
            "cutover_haproxy_restarts_total 0",
            "cutover_steps_total{kind=\"switch\",result=\"error\"} 0",
            "cutover_leader 0",
            "cutover_build_info{version=",
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
            "# EOF",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn the_prometheus_text_format_names_counters_like_their_samples() {
        let openmetrics = "# HELP cutover_rollouts Rollouts that ended, by \\\"outcome\\\".\n\
            # TYPE cutover_rollouts counter\n\
            cutover_rollouts_total{outcome=\"completed\"} 2\n\
            # HELP cutover_reconcile_duration_seconds Time.\n\
            # TYPE cutover_reconcile_duration_seconds histogram\n\
            # UNIT cutover_reconcile_duration_seconds seconds\n\
            cutover_reconcile_duration_seconds_sum 0.5\n\
            # HELP cutover_leader Leader.\n\
            # TYPE cutover_leader gauge\n\
            cutover_leader 1\n\
            # TYPE odd unknown\n\
            odd 3\n\
            # EOF\n";
        let expected = "# HELP cutover_rollouts_total Rollouts that ended, by \"outcome\".\n\
            # TYPE cutover_rollouts_total counter\n\
            cutover_rollouts_total{outcome=\"completed\"} 2\n\
            # HELP cutover_reconcile_duration_seconds Time.\n\
            # TYPE cutover_reconcile_duration_seconds histogram\n\
            cutover_reconcile_duration_seconds_sum 0.5\n\
            # HELP cutover_leader Leader.\n\
            # TYPE cutover_leader gauge\n\
            cutover_leader 1\n\
            # TYPE odd untyped\n\
            odd 3\n";
        assert_eq!(prometheus_text(openmetrics), expected);
        let metrics = Metrics::new();
        let (openmetrics_type, _) = metrics.negotiate(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        ));
        assert_eq!(openmetrics_type, OPENMETRICS);
        for accept in [None, Some("text/plain"), Some("*/*")] {
            let (content_type, body) = metrics.negotiate(accept);
            assert_eq!(content_type, PROMETHEUS_TEXT, "{accept:?}");
            assert!(!body.contains("# EOF"), "{body}");
            assert!(
                body.contains("# TYPE cutover_rollouts_total counter"),
                "{body}"
            );
        }
    }

    #[test]
    fn each_service_has_its_phase_colors_and_replicas_until_it_is_forgotten() {
        use crate::status::ColorStatus;
        let metrics = Metrics::new();
        let color = |image: &str, revision: &str, ready, desired| ColorStatus {
            image: image.into(),
            revision: revision.into(),
            ready,
            desired,
        };
        let releasing = Status {
            phase: Some(Phase::Progressing),
            active_color: Some(Color::Blue),
            colors: BTreeMap::from([
                (Color::Blue, color("web:1", "r1", 2, 2)),
                (Color::Green, color("web:2", "r2", 1, 2)),
            ]),
            canary: Some(crate::status::CanaryStatus {
                revision: "r2".into(),
                color: Color::Green,
                step: 1,
                of: 2,
                weight: 10,
                since_ms: 0,
                started_ms: 0,
                message: String::new(),
            }),
            ..Status::default()
        };
        metrics.status("web", None, &releasing);
        let text = metrics.encode();
        for needle in [
            "cutover_service_phase{service=\"web\",phase=\"Progressing\"} 1",
            "cutover_service_phase{service=\"web\",phase=\"Available\"} 0",
            "cutover_service_color_info{service=\"web\",color=\"blue\",role=\"live\",revision=\"r1\",image=\"web:1\"} 1",
            "cutover_service_color_info{service=\"web\",color=\"green\",role=\"other\",revision=\"r2\",image=\"web:2\"} 1",
            "cutover_service_replicas_ready{service=\"web\",color=\"green\"} 1",
            "cutover_service_replicas_desired{service=\"web\",color=\"green\"} 2",
            "cutover_service_canary_weight{service=\"web\",color=\"green\"} 10",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        let switched = Status {
            phase: Some(Phase::Available),
            active_color: Some(Color::Green),
            colors: BTreeMap::from([(Color::Green, color("web:2", "r2", 2, 2))]),
            ..Status::default()
        };
        metrics.status("web", Some(&releasing), &switched);
        let text = metrics.encode();
        assert!(
            text.contains("cutover_service_color_info{service=\"web\",color=\"green\",role=\"live\",revision=\"r2\",image=\"web:2\"} 1"),
            "{text}"
        );
        assert!(
            !text.contains("color=\"blue\""),
            "the old color's series are gone:\n{text}"
        );
        metrics.forget("web");
        let text = metrics.encode();
        assert!(!text.contains("service=\"web\""), "{text}");
    }

    #[test]
    fn phases_are_counted_per_service_and_forgotten() {
        let metrics = Metrics::new();
        let available = Status {
            phase: Some(Phase::Available),
            ..Status::default()
        };
        let degraded = Status {
            phase: Some(Phase::Degraded),
            ..Status::default()
        };
        metrics.status("a", None, &available);
        metrics.status("b", None, &available);
        metrics.status("c", None, &degraded);
        metrics.status("b", Some(&available), &degraded);
        let text = metrics.encode();
        assert!(
            text.contains("cutover_services{phase=\"Available\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("cutover_services{phase=\"Degraded\"} 2"),
            "{text}"
        );
        metrics.forget("c");
        let text = metrics.encode();
        assert!(
            text.contains("cutover_services{phase=\"Degraded\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn counters_count() {
        let metrics = Metrics::new();
        metrics.reconcile(Duration::from_millis(20), None);
        metrics.reconcile(Duration::from_millis(20), Some("docker"));
        metrics.step(&Step::Switch { to: Color::Green }, true);
        metrics.status("a", None, &status(Some(5), None));
        metrics.haproxy(&crate::haproxy::ApplyOutcome {
            reloaded: true,
            reload_required: false,
            runtime_calls: 2,
            restarted: true,
        });
        metrics.haproxy_restarted();
        metrics.set_leader(false);
        metrics.set_queue_depth(3);
        let text = metrics.encode();
        for needle in [
            "cutover_reconcile_duration_seconds_count{result=\"ok\"} 1",
            "cutover_reconcile_duration_seconds_count{result=\"error\"} 1",
            "cutover_reconcile_errors_total{reason=\"docker\"} 1",
            "cutover_steps_total{kind=\"switch\",result=\"ok\"} 1",
            "cutover_rollouts_total{outcome=\"completed\"} 1",
            "cutover_haproxy_reloads_total 1",
            "cutover_haproxy_runtime_calls_total 2",
            "cutover_haproxy_restarts_total 2",
            "cutover_leader 0",
            "cutover_queue_depth 3",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
