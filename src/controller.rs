//! The loop behind `cutover run`: watches, a work queue keyed by service, and one reconcile
//! per service at a time.
//!
//! Each reconcile reads desired (KV), observed (Docker, health probes, the proxy) and status
//! (KV), calls the pure [`plan`](crate::plan::plan), executes the steps through the adapters
//! and writes the status. Everything here is glue; the decisions (the rollout, the security
//! policy, orphans, the mass-deletion guard, what is `Degraded`) are the planner's.
//!
//! Guarantees:
//! - Nothing is stopped or removed because Consul or Docker cannot be read: a failed read
//!   ends the reconcile with an error and a retry, before any step.
//! - Until one full read of the specs and one full listing of the containers have succeeded
//!   (at start, and after an index reset), the desired set is unknown and no service is
//!   reconciled: the mass-deletion guard is right from the first reconcile.
//! - Stops and removals run in the background, in parallel, after the replica's connections
//!   drained: a release, a scale change or another service never waits behind them.
//! - A reconcile that panics does not take the worker or the other services down: the
//!   service is marked `Degraded` with reason `InternalError`, counted in
//!   `cutover_reconcile_panics_total`, and retried with backoff.
//! - Only the leader acts (see [`crate::leader`]): leadership is checked before every step and
//!   every status write, and a reconcile that finds it lost stops there. Followers watch and
//!   observe, so they are ready to take over, but change nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::catalog;
use crate::docker::{ContainerEventKind, Docker, DockerError, ExecContext, PullFailure, Scope};
use crate::fleet::{self, Fleet, PublishedRoutes, Watch};
use crate::haproxy::ProxyError;
use crate::haproxy::ServiceRoutes;
use crate::health::{HealthMonitor, ReadinessChange};
use crate::history;
use crate::metrics::Metrics;
use crate::observe::{self, ObserveError};
use crate::observed::Container;
use crate::plan::{self, Deletion, Policy, Step};
use crate::queue::{WorkQueue, backoff_delay, retry_delay};
use crate::status::{PruneConfirmation, RefusedDeletion, Status, now_ms};
use crate::store::{Folder, Store, StoreError, Stored, StoredService};
use crate::traffic::{self, Traffic};

mod listing;
use listing::Listings;

/// How many background stops and removals run at once, across services.
const PARALLEL_STOPS: usize = 64;

/// When a service is looked at again after Docker reported one of its containers dead
/// (delays after the event, one after the other). The engine sends `die` before its list
/// shows the container stopped (140 to 220 ms here when idle, longer under load), and a
/// `docker kill` sends nothing after it: without a second look, a dead replica that the
/// first look still saw running waits for its failing health checks or for the resync.
const DEATH_RECHECKS: [Duration; 4] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// How long a confirmation of a refused deletion counts when the CLI does not say.
pub const DEFAULT_CONFIRMATION_TTL: Duration = Duration::from_secs(15 * 60);

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub scope: Scope,
    /// How many services are reconciled at once.
    pub workers: usize,
    /// Every service is reconciled at least this often (jittered by up to 20%).
    pub resync: Duration,
    /// The leader election every daemon takes part in.
    pub leader: crate::leader::Config,
    /// Act on mass deletions without `cutover prune --confirm`.
    pub allow_mass_deletion: bool,
    /// Remove labelled containers of services that have neither spec nor status.
    pub prune_orphans: bool,
}

/// Why a reconcile stopped early. The loop retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("the desired state is not known yet (waiting for a full read of Consul and Docker)")]
    DesiredUnknown,
    #[error(transparent)]
    NotLeader(#[from] crate::leader::NotLeader),
    #[error("the reconcile panicked: {0}")]
    Panicked(String),
}

impl From<ObserveError> for ReconcileError {
    fn from(e: ObserveError) -> ReconcileError {
        match e {
            ObserveError::Store(e) => ReconcileError::Store(e),
            ObserveError::Docker(e) => ReconcileError::Docker(e),
        }
    }
}

impl ReconcileError {
    /// The condition reason a failed step is reported under.
    fn reason(&self) -> &'static str {
        match self {
            ReconcileError::Docker(DockerError::Pull {
                kind: PullFailure::NotFound,
                ..
            }) => "ImageNotFound",
            ReconcileError::Docker(DockerError::Pull { .. }) => "ImagePullFailed",
            ReconcileError::Docker(DockerError::ForbiddenBySecurityPolicy { .. }) => {
                crate::security::REASON
            }
            ReconcileError::Docker(DockerError::VolumeNotOwned { .. }) => crate::security::REASON,
            ReconcileError::Proxy(ProxyError::Rejected { .. }) => "ProxyConfigRejected",
            ReconcileError::Proxy(_) => "ProxyFailed",
            _ => "StepFailed",
        }
    }

    /// The `reason` label of `cutover_reconcile_errors_total`.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            ReconcileError::Store(_) => "consul",
            ReconcileError::Docker(DockerError::Pull {
                kind: PullFailure::NotFound,
                ..
            }) => "image_not_found",
            ReconcileError::Docker(DockerError::Pull { .. }) => "image_pull_failed",
            ReconcileError::Docker(_) => "docker",
            ReconcileError::Proxy(_) => "proxy",
            ReconcileError::DesiredUnknown => "desired_unknown",
            ReconcileError::NotLeader(_) => "not_leader",
            ReconcileError::Panicked(_) => "panic",
        }
    }
}

#[derive(Default)]
struct Shared {
    /// The specs by service name; `None` until a full read succeeded.
    desired: Option<BTreeMap<String, StoredService>>,
    /// Services that have containers (from the last full listing) or had a spec since then;
    /// `None` until the first full listing of the containers succeeded.
    managed: Option<BTreeSet<String>>,
    /// Consecutive failures by service, for backoff.
    failures: HashMap<String, u32>,
    /// The route table and the proxies' reports.
    fleet: Fleet,
    /// The refused deletion last published to KV, so it is written only when it changes.
    published_refusal: Option<Option<RefusedDeletion>>,
    /// Why the last read of the specs failed, until one succeeds again (for `/readyz`).
    specs_unreadable: Option<String>,
    /// Services whose spec vanished in the first read after Consul's index went backwards
    /// or after Consul was unreachable: lost with Consul's data rather than deleted, however
    /// few. Their deletion is refused like a mass deletion until their spec is back or an
    /// operator confirms.
    lost_specs: BTreeSet<String>,
    /// A full read of the specs succeeded once (a Consul away at start loses nothing).
    specs_read: bool,
    /// The spec index whose revision history entry is known to be written, by service.
    history_recorded: HashMap<String, u64>,
    /// Services deleted on purpose (`cutover delete`, `sync --prune`): the deletion intents
    /// under `<prefix>/control/deleted/`, when each was made. The guard lets them go.
    intended: BTreeMap<String, u64>,
    /// The resync's container list, shared out to the reconciles it queues.
    listings: Listings,
}

impl Shared {
    /// The services the guard protects (known) and those with a spec (present), once both
    /// are known.
    ///
    /// A service deleted on purpose (a deletion intent that still counts) is not guarded:
    /// it is left out of both.
    fn guard_sets(&self) -> Option<(BTreeSet<String>, BTreeSet<String>)> {
        let present: BTreeSet<String> = self.desired.as_ref()?.keys().cloned().collect();
        let now = now_ms();
        let intended = |s: &String| {
            !present.contains(s)
                && self
                    .intended
                    .get(s)
                    .is_some_and(|at| crate::status::DeletionIntent { at_ms: *at }.counts(now))
        };
        let known = (present.iter())
            .chain(self.managed.as_ref()?)
            .filter(|s| !intended(s))
            .cloned()
            .collect();
        Some((known, present))
    }

    /// The refused deletion, if any: the mass-deletion guard's, or the specs lost with
    /// Consul's data. `None` while the desired state is unknown.
    fn refusal(&self) -> Option<RefusedDeletion> {
        let (known, present) = self.guard_sets()?;
        if let Some(message) = plan::mass_deletion(&known, &present) {
            return Some(RefusedDeletion {
                services: known.difference(&present).cloned().collect(),
                message,
            });
        }
        let lost: Vec<String> = self
            .lost_specs
            .iter()
            .filter(|s| known.contains(*s) && !present.contains(*s))
            .cloned()
            .collect();
        if lost.is_empty() {
            return None;
        }
        let message = format!(
            "the spec of {} vanished when Consul came back (its index went backwards, or it \
             was unreachable: restarted without its data?); refusing to remove their \
             containers until their specs are written again or an operator confirms with \
             `cutover prune --confirm`",
            lost.join(", ")
        );
        Some(RefusedDeletion {
            services: lost,
            message,
        })
    }
}

/// The running controller. Cheap to share between tasks.
pub struct Controller {
    store: Store,
    docker: Docker,
    /// The local proxy, unless the daemon runs without one: only read, to let a leaving
    /// replica's connections drain (its proxy agent is what changes it).
    traffic: Option<Arc<Traffic>>,
    health: HealthMonitor,
    /// Readiness flips from the health monitor, taken by the task that watches them.
    health_changes: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<ReadinessChange>>>,
    queue: WorkQueue,
    leadership: crate::leader::Leadership,
    /// The election, taken by `run` to start it.
    election: Mutex<Option<crate::leader::Election>>,
    settings: Settings,
    shared: Mutex<Shared>,
    metrics: Arc<Metrics>,
    /// Containers with a stop or removal under way in the background: id to service.
    stopping: Mutex<HashMap<String, String>>,
    stop_slots: Arc<tokio::sync::Semaphore>,
    /// Debug builds only: the service whose reconciles panic on purpose
    /// (`CUTOVER_DEBUG_PANIC_SERVICE`), so that tests can prove a panic wedges nothing.
    panic_on: Option<String>,
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a plain assignment; a panic elsewhere leaves
    // consistent data. Keep going rather than poison every later call.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Controller {
    pub fn new(
        store: Store,
        docker: Docker,
        traffic: Option<Arc<Traffic>>,
        own_proxy: Option<String>,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Arc<Controller> {
        let (health, health_changes) = HealthMonitor::new();
        let (election, leadership) =
            crate::leader::Election::new(store.client().clone(), settings.leader.clone());
        Arc::new(Controller {
            store,
            docker,
            traffic,
            health,
            health_changes: Mutex::new(Some(health_changes)),
            queue: WorkQueue::new(),
            leadership,
            election: Mutex::new(Some(election)),
            settings,
            shared: Mutex::new(Shared {
                fleet: Fleet {
                    required: own_proxy,
                    ..Fleet::default()
                },
                ..Shared::default()
            }),
            metrics,
            stopping: Mutex::new(HashMap::new()),
            stop_slots: Arc::new(tokio::sync::Semaphore::new(PARALLEL_STOPS)),
            panic_on: std::env::var("CUTOVER_DEBUG_PANIC_SERVICE")
                .ok()
                .filter(|_| cfg!(debug_assertions)),
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// How many replicas the daemon probes itself, and how many it leaves to the proxies'
    /// checks.
    pub fn replicas_probed(&self) -> (usize, usize) {
        self.health.probed()
    }

    /// How many services wait in the work queue.
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    /// `Ok` once the specs were read in full from Consul, while Consul has a leader and
    /// answers, while the last read of the specs succeeded (after Consul went away, the
    /// first read that succeeds again is a full one, which also notices a Consul that came
    /// back empty), and while the Docker engine answers; otherwise why not, in one line (for
    /// `/readyz`).
    pub async fn readiness(&self) -> Result<(), String> {
        let unreadable = {
            let shared = lock(&self.shared);
            if shared.desired.is_none() {
                return Err("waiting for a full read of the specs in Consul".to_owned());
            }
            shared.specs_unreadable.clone()
        };
        if let Err(e) = self.store.client().ping(Duration::from_secs(2)).await {
            return Err(format!("Consul cannot serve reads: {e}"));
        }
        if let Some(reason) = unreadable {
            return Err(format!(
                "waiting for a full read of the specs in Consul after a failed one ({reason})"
            ));
        }
        match tokio::time::timeout(Duration::from_secs(2), self.docker.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "the Docker engine at {} did not answer within 2 s",
                self.docker.address()
            )),
        }
    }

    /// Runs until `shutdown` completes, then lets the current steps finish (at most 30 s)
    /// and returns. Containers are left running.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        info!(
            instance = %self.settings.scope.instance,
            network = %self.settings.scope.network,
            consul = %self.store.client().address(),
            docker = %self.docker.address(),
            "cutover controller starting"
        );
        let campaign = lock(&self.election)
            .take()
            .map(crate::leader::Election::spawn);
        let mut background = tokio::task::JoinSet::new();
        background.spawn(Arc::clone(&self).follow_leadership());
        background.spawn(Arc::clone(&self).watch_specs());
        background.spawn(Arc::clone(&self).watch_folder(Folder::Requests));
        background.spawn(Arc::clone(&self).watch_folder(Folder::Control));
        background.spawn(Arc::clone(&self).watch_fleet(Folder::Routes));
        background.spawn(Arc::clone(&self).watch_fleet(Folder::Proxies));
        background.spawn(Arc::clone(&self).watch_docker());
        background.spawn(Arc::clone(&self).watch_health());
        background.spawn(Arc::clone(&self).resync_loop());
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..self.settings.workers.max(1) {
            workers.spawn(Arc::clone(&self).worker());
        }
        shutdown.await;
        info!("shutting down: finishing the current steps, leaving every container running");
        self.queue.close();
        background.abort_all();
        let drained = tokio::time::timeout(Duration::from_secs(30), async {
            while workers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!("steps still running after 30 s; abandoning them");
        }
        // Only now that no step runs may a follower take over.
        if let Some(campaign) = campaign {
            campaign.resign().await;
        }
    }

    /// Whether this daemon leads, and a way to watch it change (for status and metrics).
    pub fn leadership(&self) -> &crate::leader::Leadership {
        &self.leadership
    }

    /// Queues every service when this daemon becomes leader; says now and then that a
    /// follower is ready.
    async fn follow_leadership(self: Arc<Self>) {
        let mut role = self.leadership.subscribe();
        let mut was_leader = false;
        loop {
            let current = role.borrow_and_update().clone();
            // `cutover_leader` and the status page's role.
            self.metrics.set_leader(current.is_leader());
            if current.is_leader() && !was_leader {
                info!("leader: reconciling every service");
                self.queue_all();
            }
            was_leader = current.is_leader();
            tokio::select! {
                changed = role.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(self.settings.resync) => {
                    if let crate::leader::Role::Follower { leader } = current {
                        debug!(leader = leader.as_deref().unwrap_or("none"), "follower: ready to take over");
                    }
                }
            }
        }
    }

    async fn worker(self: Arc<Self>) {
        while let Some(name) = self.queue.next().await {
            if !self.leadership.is_leader() {
                // Becoming leader queues every service again.
                self.queue.done(&name);
                continue;
            }
            let span = info_span!("reconcile", service = %name);
            let started = tokio::time::Instant::now();
            debug!(service = %name, "reconcile started");
            let result = AssertUnwindSafe(self.reconcile(&name).instrument(span))
                .catch_unwind()
                .await
                .unwrap_or_else(|payload| Err(ReconcileError::Panicked(panic_message(&*payload))));
            if let Err(ReconcileError::Panicked(message)) = &result {
                self.report_panic(&name, message).await;
            }
            match &result {
                // Not a failure: nothing was looked at yet, or another daemon acts.
                Err(ReconcileError::DesiredUnknown | ReconcileError::NotLeader(_)) => {}
                Err(e) => self
                    .metrics
                    .reconcile(started.elapsed(), Some(e.metric_reason())),
                Ok(_) => self.metrics.reconcile(started.elapsed(), None),
            }
            let failures = {
                let mut shared = lock(&self.shared);
                match &result {
                    Err(ReconcileError::NotLeader(_) | ReconcileError::DesiredUnknown) => 0,
                    Ok(_) => {
                        shared.failures.remove(&name);
                        0
                    }
                    Err(_) => {
                        let failures = shared.failures.entry(name.clone()).or_insert(0);
                        *failures = failures.saturating_add(1);
                        *failures
                    }
                }
            };
            self.queue.done(&name);
            match result {
                Ok(Some(after)) => self.queue.add_after(&name, after),
                Ok(None) => {}
                Err(ReconcileError::DesiredUnknown) => {
                    debug!(service = %name, "desired state unknown; waiting for Consul and Docker")
                }
                Err(ReconcileError::NotLeader(_)) => {
                    warn!(service = %name, "leadership lost: reconcile stopped before its next step")
                }
                Err(e) => {
                    let delay = backoff_delay(
                        failures,
                        Duration::from_millis(500),
                        Duration::from_secs(60),
                    );
                    warn!(service = %name, error = %e, retry_in = ?delay, "reconcile failed");
                    self.queue.add_after(&name, delay);
                }
            }
        }
    }

    /// A reconcile panicked: count it and say so in the service's status, as far as Consul
    /// lets us.
    async fn report_panic(&self, name: &str, message: &str) {
        self.metrics.reconcile_panicked();
        error!(service = %name, panic = %message, "reconcile panicked; the service is retried with backoff");
        let stored = match self.store.get_status(name).await {
            Ok(stored) => stored.and_then(Stored::into_readable).map(|v| v.value),
            Err(_) => None,
        };
        let status = plan::internal_error(stored.as_ref(), message, now_ms());
        if self.leadership.check().is_ok()
            && let Err(e) = self.write_status(name, &status, stored.as_ref()).await
        {
            warn!(service = %name, error = %e, "cannot write the status after a panic");
        }
    }

    /// One reconcile of one service. Returns when to look again, if the plan asked for it.
    async fn reconcile(self: &Arc<Self>, name: &str) -> Result<Option<Duration>, ReconcileError> {
        self.read_deletion_intent(name).await?;
        let (stored, refused) = {
            let shared = lock(&self.shared);
            shared.guard_sets().ok_or(ReconcileError::DesiredUnknown)?;
            let stored = shared.desired.as_ref().and_then(|d| d.get(name)).cloned();
            let refused = shared
                .refusal()
                .filter(|r| r.services.iter().any(|s| s == name))
                .map(|r| r.message);
            (stored, refused)
        };
        if self.panic_on.as_deref() == Some(name) {
            panic!("injected by CUTOVER_DEBUG_PANIC_SERVICE={name}");
        }
        // Read everything before acting: a failed read acts on nothing. A key that does not
        // decode never blocks the service: the planner rebuilds an unreadable status and
        // ignores an unreadable request, and says so once.
        let scope = &self.settings.scope;
        let listed = lock(&self.shared).listings.take(name);
        let service = stored.as_ref().and_then(|s| s.parsed.as_ref().ok());
        let mut reading =
            observe::read(&self.docker, &self.store, scope, name, service, listed).await?;
        self.mark_stopping(&mut reading.observed.containers);
        if let Some(service) = service {
            self.health.sync(
                name,
                &service.spec.health,
                service.spec.port,
                &reading.observed.containers,
                &reading.docker_health,
            );
            let checks = lock(&self.shared)
                .fleet
                .checks(name, &reading.observed.containers);
            self.health.follow_proxies(name, &checks);
            self.health.mark_ready(&mut reading.observed.containers);
        }
        let proxy = lock(&self.shared).fleet.view(name);
        let confirmed = match (&stored, &refused) {
            (None, Some(_)) => self.deletion_confirmed(name).await?,
            _ => false,
        };
        let context = observe::Context {
            name,
            desired: observe::desired(stored.as_ref()),
            policy: self.policy(),
            deletion: Deletion {
                refused: refused.as_deref(),
                confirmed,
            },
            proxy: proxy.as_ref(),
            now_ms: now_ms(),
        };
        let plan = observe::plan(&self.docker, &mut reading, &context).await?;
        let observe::Reading {
            observed,
            status: stored_status,
            status_error,
            ..
        } = reading;
        for warning in &plan.warnings {
            warn!(service = %name, "{warning}");
        }
        debug!(
            service = %name,
            steps = plan.steps.len(),
            phase = ?plan.status.as_ref().map(|s| s.phase),
            requeue_ms = ?plan.requeue_after_ms,
            "planned"
        );
        if plan.deletion_refused {
            self.metrics.deletion_refused();
            self.publish_refusal().await?;
        }
        if plan.gone {
            return self
                .forget(name, stored_status.is_some() || status_error.is_some())
                .await;
        }

        let exec = ExecContext {
            scope,
            service_name: name,
            service,
            spec_index: stored.as_ref().map_or(0, |s| s.modify_index),
        };
        let executed = self
            .execute(&exec, &plan, stored.is_none(), &observed.containers)
            .await;
        if !plan.steps.is_empty() {
            lock(&self.shared).listings.changed(name);
        }
        let failed = match executed {
            // Not a failure of the service: another daemon carries on.
            Err(ReconcileError::NotLeader(e)) => return Err(e.into()),
            result => result.err(),
        };
        let new_status = match &failed {
            Some(e) => {
                let message = e.to_string();
                let reason = e.reason();
                error!(service = %name, reason, error = %message, "step failed; the live color keeps serving");
                let before = stored_status.clone().unwrap_or_default();
                let index = plan.status.as_ref().map_or(0, |s| s.observed_index);
                Some(plan::failed(&before, index, reason, &message, now_ms()))
            }
            None => plan.status.clone(),
        };
        if let Some(status) = &new_status {
            self.leadership.check()?;
            self.write_status(name, status, stored_status.as_ref())
                .await?;
            // The history is for people: a failure to write it is logged, and the next
            // reconcile tries again.
            if let Err(e) = self
                .record_history(name, stored.as_ref(), stored_status.as_ref(), status)
                .await
            {
                warn!(service = %name, error = %e, "cannot record the revision history");
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if plan.steps.iter().any(|s| !s.is_background()) {
            // The world changed: look again at once (level-triggered).
            return Ok(Some(Duration::ZERO));
        }
        Ok(plan.requeue_after_ms.map(Duration::from_millis))
    }

    /// A service with neither spec nor containers: its probes, registrations, routes and
    /// status go, and a confirmation of its removal is used up.
    async fn forget(
        &self,
        name: &str,
        had_status: bool,
    ) -> Result<Option<Duration>, ReconcileError> {
        self.health.forget_service(name);
        lock(&self.shared).lost_specs.remove(name);
        let instance = &self.settings.scope.instance;
        self.leadership.check()?;
        catalog::sync(self.store.client(), name, instance, &[])
            .await
            .map_err(StoreError::from)?;
        self.publish(name, None).await?;
        if had_status {
            self.leadership.check()?;
            self.store.delete_status(name).await?;
            self.store.delete_history(name).await?;
            lock(&self.shared).history_recorded.remove(name);
            self.metrics.forget(name);
            info!(service = %name, "service removed");
        }
        self.consume_confirmation(name).await?;
        if lock(&self.shared).intended.remove(name).is_some() {
            self.store.delete_deletion_intent(name).await?;
        }
        self.publish_refusal().await?;
        Ok(None)
    }

    /// Keeps the deletion intent of `name` current before the guard judges it: a service
    /// without a spec may have been deleted on purpose a moment ago (the intent arrives with
    /// the deletion, in the same Consul transaction, but the control folder's watch may not
    /// have seen it yet); a service whose spec is back has no use for its old intent.
    async fn read_deletion_intent(&self, name: &str) -> Result<(), ReconcileError> {
        let (has_spec, known) = {
            let shared = lock(&self.shared);
            let has_spec = shared
                .desired
                .as_ref()
                .is_some_and(|d| d.contains_key(name));
            (has_spec, shared.intended.contains_key(name))
        };
        if has_spec && known && self.leadership.check().is_ok() {
            self.store.delete_deletion_intent(name).await?;
            lock(&self.shared).intended.remove(name);
        } else if !has_spec && !known {
            let intents = self.store.list_deletion_intents().await?;
            if let Some(intent) = intents.get(name) {
                lock(&self.shared)
                    .intended
                    .insert(name.to_owned(), intent.at_ms);
            }
        }
        Ok(())
    }

    /// What the planner may do on its own, as the daemon was started.
    fn policy(&self) -> Policy {
        Policy {
            allowances: *self.docker.allowances(),
            prune_orphans: self.settings.prune_orphans,
            allow_mass_deletion: self.settings.allow_mass_deletion,
        }
    }

    /// Marks the containers with a stop or removal under way.
    fn mark_stopping(&self, containers: &mut [Container]) {
        let stopping = lock(&self.stopping);
        for c in containers {
            c.stopping = stopping.contains_key(&c.id);
        }
    }

    /// Carries out a plan: the Docker steps in order, then the service's routes published
    /// for every proxy (the switch, when the plan has one, is that publication), then the
    /// stops and removals handed to the background, each waiting until every proxy serves
    /// that table. Stops at the first failure.
    async fn execute(
        self: &Arc<Self>,
        exec: &ExecContext<'_>,
        plan: &plan::Plan,
        absent: bool,
        containers: &[Container],
    ) -> Result<(), ReconcileError> {
        let name = exec.service_name;
        let client = self.store.client();
        let instance = &self.settings.scope.instance;
        let status = plan.status.as_ref();
        let live = status.and_then(|s| s.active_color);
        let preview = status.and_then(|s| s.preview_color);
        self.leadership.check()?;
        // Consul catalog users stop seeing a replica before it stops.
        let leaving_catalog = catalog::ids_to_deregister_before(&plan.steps);
        if !leaving_catalog.is_empty() {
            catalog::deregister_ids(client, instance, &leaving_catalog)
                .await
                .map_err(StoreError::from)?;
        }
        let leaving = traffic::leaving(&plan.steps, containers);
        let mut background = Vec::new();
        for step in &plan.steps {
            self.leadership.check()?;
            log_step(name, step);
            match step {
                // The switch is the publication below.
                Step::Switch { .. } => {}
                step if step.is_background() => background.push(step),
                step => {
                    let started = tokio::time::Instant::now();
                    let result = self.docker.execute(exec, step).await;
                    self.metrics.step(step, result.is_ok());
                    result?;
                    debug!(service = %name, took_ms = started.elapsed().as_millis() as u64, "step done: {step}");
                }
            }
        }
        // What runs and is ready, minus what is about to go; a deleted service leaves the
        // table before its containers go.
        let version = match (exec.service, absent) {
            (Some(service), _) => {
                let split = traffic::split(status);
                let routes = traffic::routes(service, live, preview, split, containers, &leaving);
                let watch = traffic::watch(service, status);
                Some(self.publish(name, Some((routes, watch))).await)
            }
            (None, true) if !plan.steps.is_empty() => Some(self.publish(name, None).await),
            (None, _) => None,
        };
        if let Some(switch) = plan.steps.iter().find(|s| matches!(s, Step::Switch { .. })) {
            self.metrics
                .step(switch, version.as_ref().is_some_and(Result::is_ok));
        }
        let version = version
            .transpose()?
            .unwrap_or_else(|| self.fleet_version(name));
        for step in background {
            self.spawn_background(name, step, containers, version);
        }
        let Some(service) = exec.service else {
            return Ok(());
        };
        // The containers observed before the steps are still what runs when the plan only
        // switches or stops: the catalog follows a switch in the same reconcile, before the
        // status says so.
        if plan
            .steps
            .iter()
            .all(|s| s.is_background() || matches!(s, Step::Switch { .. }))
        {
            let desired = catalog::desired_registrations(
                name,
                instance,
                &containers
                    .iter()
                    .filter(|c| !leaving.contains(&c.id) && !c.stopping)
                    .cloned()
                    .collect::<Vec<_>>(),
                live,
                preview,
                service.spec.port,
                &service.spec.health.path,
            );
            self.leadership.check()?;
            let outcome = catalog::sync(client, name, instance, &desired)
                .await
                .map_err(StoreError::from)?;
            if !outcome.conflicts.is_empty() {
                warn!(service = %name, conflicts = ?outcome.conflicts, "catalog IDs taken by registrations that are not ours");
            }
        }
        Ok(())
    }

    /// Publishes the routes of `name` for every proxy, or takes the service out of the table
    /// with `None`, unless the table already says so. Returns the table version (0: not in
    /// the table).
    async fn publish(
        &self,
        name: &str,
        routes: Option<(ServiceRoutes, Option<Watch>)>,
    ) -> Result<u64, ReconcileError> {
        let (current, current_watch) = {
            let shared = lock(&self.shared);
            (
                shared.fleet.published.get(name).cloned(),
                shared.fleet.watches.get(name).copied(),
            )
        };
        match (routes, current) {
            (Some((routes, watch)), Some((version, published)))
                if published == routes && current_watch == watch =>
            {
                Ok(version)
            }
            (Some((routes, watch)), _) => {
                self.leadership.check()?;
                let entry = PublishedRoutes {
                    routes: routes.clone(),
                    written_ms: now_ms(),
                    watch,
                };
                let version = self.store.put_routes(name, &entry).await?;
                debug!(service = %name, version, live = ?routes.live, "routes published");
                let mut shared = lock(&self.shared);
                shared
                    .fleet
                    .published
                    .insert(name.to_owned(), (version, routes));
                match watch {
                    Some(watch) => shared.fleet.watches.insert(name.to_owned(), watch),
                    None => shared.fleet.watches.remove(name),
                };
                Ok(version)
            }
            (None, None) => Ok(0),
            (None, Some(_)) => {
                self.leadership.check()?;
                self.store.delete_routes(name).await?;
                let mut shared = lock(&self.shared);
                shared.fleet.published.remove(name);
                shared.fleet.watches.remove(name);
                Ok(0)
            }
        }
    }

    /// The table version of `name` the leader last published.
    fn fleet_version(&self, name: &str) -> u64 {
        lock(&self.shared).fleet.version(name)
    }

    /// Runs a stop or a removal in the background: it waits until every proxy serves table
    /// `version` (which no longer sends the replica requests), lets the replica's
    /// connections on the local proxy drain, then Docker stops it with its own signal and
    /// grace period, or removes it. The container counts as `stopping` meanwhile; the
    /// service is queued again when it is done (and by Docker's events).
    fn spawn_background(
        self: &Arc<Self>,
        name: &str,
        step: &Step,
        containers: &[Container],
        version: u64,
    ) {
        let (Step::Stop { target } | Step::Remove { target }) = step else {
            return;
        };
        if lock(&self.stopping)
            .insert(target.id.clone(), name.to_owned())
            .is_some()
        {
            return;
        }
        let drain = containers
            .iter()
            .find(|c| c.id == target.id)
            .and_then(|c| Some((c.color()?, c.slot()?, c.address.clone()?)));
        let this = Arc::clone(self);
        let name = name.to_owned();
        let step = step.clone();
        let id = target.id.clone();
        tokio::spawn(async move {
            let _slot = this.stop_slots.acquire().await;
            // A proxy that lags may still send the replica requests; a dead one stops
            // counting when its session expires.
            while !lock(&this.shared).fleet.lagging(&name, version).is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if let (Some(traffic), Some((color, slot, address))) = (&this.traffic, &drain) {
                traffic.drain(&name, *color, *slot, address).await;
            }
            if this.leadership.check().is_ok() {
                let exec = ExecContext {
                    scope: &this.settings.scope,
                    service_name: &name,
                    service: None,
                    spec_index: 0,
                };
                let result = this.docker.execute(&exec, &step).await;
                this.metrics.step(&step, result.is_ok());
                if let Err(e) = result {
                    warn!(service = %name, error = %e, "{step} failed; it is planned again");
                }
            }
            lock(&this.stopping).remove(&id);
            lock(&this.shared).listings.changed(&name);
            this.queue.add(&name);
        });
    }

    /// Whether an operator confirmed removing `name` (and the confirmation has not expired).
    async fn deletion_confirmed(&self, name: &str) -> Result<bool, ReconcileError> {
        Ok(self
            .store
            .get_prune_confirmation()
            .await?
            .is_some_and(|c| c.value.confirms(name, now_ms())))
    }

    /// Drops `name` from the confirmation of a refused deletion once it is removed, and the
    /// confirmation once it confirms nothing more.
    async fn consume_confirmation(&self, name: &str) -> Result<(), ReconcileError> {
        for _ in 0..3 {
            let Some(found) = self.store.get_prune_confirmation().await? else {
                return Ok(());
            };
            if !found.value.services.iter().any(|s| s == name) {
                return Ok(());
            }
            self.leadership.check()?;
            let rest = PruneConfirmation {
                services: found
                    .value
                    .services
                    .iter()
                    .filter(|s| *s != name)
                    .cloned()
                    .collect(),
                ..found.value
            };
            let written = if rest.services.is_empty() {
                self.store
                    .delete_prune_confirmation(found.modify_index)
                    .await?
            } else {
                self.store
                    .put_prune_confirmation(&rest, Some(found.modify_index))
                    .await?
            };
            if written {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Publishes the deletion the guard refuses now (or that there is none) for
    /// `cutover prune`, when it changed.
    async fn publish_refusal(&self) -> Result<(), ReconcileError> {
        let current = {
            let shared = lock(&self.shared);
            if shared.guard_sets().is_none() {
                return Ok(());
            }
            let refusal = shared.refusal();
            if shared.published_refusal.as_ref() == Some(&refusal) {
                return Ok(());
            }
            refusal
        };
        self.leadership.check()?;
        self.store.set_refused_deletion(current.as_ref()).await?;
        lock(&self.shared).published_refusal = Some(current);
        Ok(())
    }

    /// Writes the status when it differs from what is stored.
    /// Keeps the service's revision history (see [`crate::history`]): an entry for the spec
    /// the status says the daemon acted on, once per spec index (the older ones beyond
    /// [`history::KEEP`] are forgotten, unless the status still names them), and the reason
    /// when a revision was rejected, until it serves again.
    async fn record_history(
        &self,
        name: &str,
        stored: Option<&StoredService>,
        before: Option<&Status>,
        after: &Status,
    ) -> Result<(), ReconcileError> {
        if let Some(rejected) = &after.rejected
            && before.and_then(|b| b.rejected.as_ref()) != Some(rejected)
            && let Some(mut entry) = self
                .store
                .get_history_entry(name, &rejected.revision)
                .await?
        {
            entry.rejected = Some(history::Rejection {
                reason: rejected.reason.clone(),
                message: rejected.message.clone(),
            });
            self.leadership.check()?;
            self.store.put_history_entry(name, &entry).await?;
        }
        // A rejected revision that serves again (`cutover retry`) is no longer rejected.
        if let Some(live) = history::live_revision(after)
            && before.and_then(history::live_revision) != Some(live)
            && let Some(mut entry) = self.store.get_history_entry(name, live).await?
            && entry.rejected.take().is_some()
        {
            self.leadership.check()?;
            self.store.put_history_entry(name, &entry).await?;
        }
        let Some((stored, service)) = stored.and_then(|s| Some((s, s.parsed.as_ref().ok()?)))
        else {
            return Ok(());
        };
        let index = stored.modify_index;
        let recorded = lock(&self.shared).history_recorded.get(name) == Some(&index);
        if recorded || after.observed_index != index {
            return Ok(());
        }
        let revision = crate::revision::of_service(service);
        let kept = self.store.get_history_entry(name, &revision).await?;
        if kept.is_none_or(|e| e.spec_index != index) {
            let cause = self.store.get_history_cause(name).await?;
            let entry = history::Entry {
                revision,
                image: service.spec.image.clone(),
                spec_index: index,
                recorded_ms: now_ms(),
                cause: history::cause_of(index, cause.as_ref().map(|(c, i)| (c, *i))),
                spec: stored.text.clone(),
                rejected: None,
            };
            self.leadership.check()?;
            self.store.put_history_entry(name, &entry).await?;
            let entries = self.store.list_history(name).await?;
            let in_use = history::in_use(after);
            for revision in history::to_forget(&entries, &in_use, history::KEEP) {
                self.leadership.check()?;
                self.store.delete_history_entry(name, &revision).await?;
            }
        }
        lock(&self.shared)
            .history_recorded
            .insert(name.to_owned(), index);
        Ok(())
    }

    async fn write_status(
        &self,
        name: &str,
        status: &Status,
        stored: Option<&Status>,
    ) -> Result<(), ReconcileError> {
        if stored != Some(status) {
            self.store.put_status(name, status, None).await?;
            debug!(service = %name, phase = ?status.phase, "status written");
        }
        // After the write, so that a failed write does not count a rollout twice.
        self.metrics.status(name, stored, status);
        Ok(())
    }

    /// Reads every spec with a blocking query and queues the services whose spec changed.
    async fn watch_specs(self: Arc<Self>) {
        let mut watch = self.store.watch_services(crate::consul::WATCH_WAIT);
        let mut failures = 0;
        loop {
            match watch.next().await {
                Ok(update) => {
                    failures = 0;
                    if update.reset {
                        warn!(
                            "Consul's index went backwards (restart or snapshot restore); re-read every spec"
                        );
                    }
                    let recovered = lock(&self.shared).specs_unreadable.take().is_some();
                    if recovered {
                        info!("Consul answers again; every spec was read again");
                    }
                    let services = self.store.services_from_entries(update.listing.entries);
                    self.on_specs(services, update.reset || recovered);
                }
                Err(e) => {
                    failures += 1;
                    {
                        let mut shared = lock(&self.shared);
                        if watch.reset_pending() {
                            shared.desired = None;
                        }
                        shared.specs_unreadable = Some(e.to_string());
                    }
                    let delay = retry_delay(failures);
                    warn!(error = %e, retry_in = ?delay, "cannot watch specs in Consul; everything keeps running");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// `suspect`: the first listing after an index reset or after Consul was unreachable;
    /// the specs it lacks were lost with Consul's data rather than deleted.
    fn on_specs(&self, services: Vec<StoredService>, suspect: bool) {
        let new: BTreeMap<String, StoredService> =
            services.into_iter().map(|s| (s.name.clone(), s)).collect();
        let changed: Vec<String> = {
            let mut shared = lock(&self.shared);
            if suspect && shared.specs_read {
                let mut lost: BTreeSet<String> = shared
                    .desired
                    .iter()
                    .flat_map(|d| d.keys())
                    .chain(shared.managed.iter().flatten())
                    .filter(|n| !new.contains_key(*n))
                    .cloned()
                    .collect();
                if !lost.is_empty() {
                    warn!(services = ?lost, "specs vanished when Consul came back; their containers keep running until their specs are written again or `cutover prune --confirm`");
                }
                shared.lost_specs.append(&mut lost);
            }
            shared.lost_specs.retain(|n| !new.contains_key(n));
            shared.specs_read = true;
            let managed: Vec<String> = shared.managed.iter().flatten().cloned().collect();
            let changed = match &shared.desired {
                None => new.keys().cloned().chain(managed).collect(),
                Some(old) => {
                    let mut changed: Vec<String> = new
                        .iter()
                        .filter(|(n, s)| {
                            old.get(*n).map(|o| o.modify_index) != Some(s.modify_index)
                        })
                        .map(|(n, _)| n.clone())
                        .collect();
                    changed.extend(old.keys().filter(|n| !new.contains_key(*n)).cloned());
                    changed
                }
            };
            // Services that had a spec count as managed until a full listing finds them
            // without containers, so that the deletion guard sees them vanish.
            let previous: Vec<String> = shared
                .desired
                .iter()
                .flat_map(|d| d.keys().cloned())
                .collect();
            if let Some(managed) = &mut shared.managed {
                managed.extend(previous);
            }
            shared.desired = Some(new);
            changed
        };
        for name in changed {
            debug!(service = %name, "spec changed; queued");
            self.queue.add(&name);
        }
    }

    /// Queues services when a key in a folder changes: a service's request, or a
    /// confirmation in `control/` (every service without a spec then).
    async fn watch_folder(self: Arc<Self>, folder: Folder) {
        let mut watch = self.store.watch_folder(folder, crate::consul::WATCH_WAIT);
        let mut failures = 0;
        loop {
            match watch.next().await {
                Ok(update) => {
                    failures = 0;
                    match folder {
                        Folder::Requests => {
                            for entry in update.listing.entries {
                                if let Some(name) = crate::store::name_from_key(
                                    self.store.prefix(),
                                    folder,
                                    &entry.key,
                                ) {
                                    self.queue.add(name);
                                }
                            }
                        }
                        Folder::Control => {
                            let intents = self.store.intents_from_entries(&update.listing.entries);
                            lock(&self.shared).intended =
                                intents.into_iter().map(|(n, i)| (n, i.at_ms)).collect();
                            self.queue_missing();
                        }
                        _ => self.queue_missing(),
                    }
                }
                Err(e) => {
                    failures += 1;
                    let delay = retry_delay(failures);
                    debug!(error = %e, folder = folder.as_str(), "cannot watch a folder in Consul");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Queues a service when Docker reports something about one of its containers.
    async fn watch_docker(self: Arc<Self>) {
        let mut failures = 0;
        loop {
            let mut events = Box::pin(self.docker.events(&self.settings.scope.instance, None));
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        failures = 0;
                        debug!(service = %event.service, container = %event.container_name, kind = ?event.kind, "docker event");
                        lock(&self.shared).listings.changed(&event.service);
                        self.queue.add(&event.service);
                        if matches!(
                            event.kind,
                            ContainerEventKind::Die | ContainerEventKind::Oom
                        ) {
                            let queue = self.queue.clone();
                            tokio::spawn(async move {
                                for delay in DEATH_RECHECKS {
                                    tokio::time::sleep(delay).await;
                                    queue.add(&event.service);
                                }
                            });
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "Docker events stream failed; resubscribing");
                        break;
                    }
                }
            }
            failures += 1;
            lock(&self.shared).listings.forget();
            tokio::time::sleep(retry_delay(failures)).await;
            // Events may have been missed meanwhile.
            self.queue_all();
        }
    }

    /// Queues a service when one of its replicas becomes ready or stops being ready.
    async fn watch_health(self: Arc<Self>) {
        let Some(mut changes) = lock(&self.health_changes).take() else {
            return;
        };
        while let Some(change) = changes.recv().await {
            debug!(service = %change.service, ready = change.ready, "readiness changed; queued");
            self.queue.add(&change.service);
        }
    }

    /// Lists every container now and then, and queues every service, so that anything
    /// missed heals. The first listing is what makes the desired state known.
    async fn resync_loop(self: Arc<Self>) {
        let mut failures = 0;
        loop {
            let asked = lock(&self.shared).listings.asking();
            match self.docker.observe(&self.settings.scope, None).await {
                Ok(observation) => {
                    failures = 0;
                    let mut shared = lock(&self.shared);
                    shared.listings.store(asked, &observation);
                    let first = shared.managed.is_none();
                    shared.managed = Some(
                        observation
                            .containers
                            .iter()
                            .map(|c| c.service.clone())
                            .chain(shared.desired.iter().flat_map(|d| d.keys().cloned()))
                            .collect(),
                    );
                    if first {
                        debug!("containers listed; the desired state is known once the specs are");
                    }
                }
                Err(e) => {
                    failures += 1;
                    warn!(error = %e, "cannot list the containers; everything keeps running");
                    if lock(&self.shared).managed.is_none() {
                        tokio::time::sleep(retry_delay(failures)).await;
                        continue;
                    }
                }
            }
            if self.leadership.is_leader()
                && let Err(e) = self.publish_refusal().await
            {
                debug!(error = %e, "cannot publish the refused deletion");
            }
            self.forget_routes().await;
            self.queue_all();
            let jitter = self.settings.resync.mul_f64(0.2 * rand::random::<f64>());
            tokio::time::sleep(self.settings.resync + jitter).await;
        }
    }

    /// Drops the routes of services that have neither a spec nor containers any more.
    async fn forget_routes(&self) {
        if !self.leadership.is_leader() {
            return;
        }
        let stale: Vec<String> = {
            let shared = lock(&self.shared);
            let (Some(desired), Some(managed)) = (&shared.desired, &shared.managed) else {
                return;
            };
            shared
                .fleet
                .published
                .keys()
                .filter(|s| !desired.contains_key(*s) && !managed.contains(*s))
                .cloned()
                .collect()
        };
        for name in stale {
            if let Err(e) = self.publish(&name, None).await {
                warn!(service = %name, error = %e, "cannot take stale routes out of the table");
            }
        }
    }

    /// Follows the published route table (the leader's own writes included) and the
    /// proxies' reports; queues a service when what a proxy reports about it changes.
    async fn watch_fleet(self: Arc<Self>, folder: Folder) {
        let mut watch = self.store.watch_folder(folder, crate::consul::WATCH_WAIT);
        let mut failures = 0;
        loop {
            match watch.next().await {
                Ok(update) => {
                    failures = 0;
                    let entries = update.listing.entries;
                    let changed: Vec<String> = {
                        let mut shared = lock(&self.shared);
                        if folder == Folder::Routes {
                            let (table, _) = self.store.routes_from_entries(&entries);
                            // An entry that vanished while its service has a spec was lost
                            // (deleted by hand, or with Consul's data): publish it again.
                            let lost: Vec<String> = shared
                                .fleet
                                .published
                                .keys()
                                .filter(|s| !table.contains_key(*s))
                                .filter(|s| {
                                    shared.desired.as_ref().is_some_and(|d| d.contains_key(*s))
                                })
                                .cloned()
                                .collect();
                            shared.fleet.set_table(table);
                            lost
                        } else {
                            let reports = self.store.reports_from_entries(&entries);
                            let changed = fleet::changed_services(&shared.fleet.proxies, &reports);
                            shared.fleet.proxies = reports;
                            changed
                        }
                    };
                    for name in changed {
                        debug!(service = %name, folder = folder.as_str(), "fleet changed; queued");
                        self.queue.add(&name);
                    }
                }
                Err(e) => {
                    failures += 1;
                    debug!(error = %e, folder = folder.as_str(), "cannot watch the proxy fleet in Consul");
                    tokio::time::sleep(retry_delay(failures)).await;
                }
            }
        }
    }

    fn queue_all(&self) {
        let names: BTreeSet<String> = {
            let shared = lock(&self.shared);
            shared
                .desired
                .iter()
                .flat_map(|d| d.keys())
                .chain(shared.managed.iter().flatten())
                .cloned()
                .collect()
        };
        for name in names {
            self.queue.add(&name);
        }
    }

    /// Queues the services that have containers but no spec (a confirmation may concern them).
    fn queue_missing(&self) {
        let names: Vec<String> = {
            let shared = lock(&self.shared);
            let Some((known, present)) = shared.guard_sets() else {
                return;
            };
            known.difference(&present).cloned().collect()
        };
        for name in names {
            self.queue.add(&name);
        }
    }
}

fn log_step(service: &str, step: &Step) {
    let (color, revision) = match step {
        Step::CreateReplica {
            color, revision, ..
        } => (Some(*color), Some(revision.as_str())),
        Step::CreateSideTarget { revision, .. } => (None, Some(revision.as_str())),
        Step::Start { target }
        | Step::Stop { target }
        | Step::Remove { target }
        | Step::Rename { target, .. } => (target.color, Some(target.revision.as_str())),
        Step::Switch { to } => (Some(*to), None),
        Step::PullImage { .. } => (None, None),
    };
    info!(
        service,
        color = color.map(|c| c.as_str()).unwrap_or("-"),
        revision = revision.unwrap_or("-"),
        "{step}"
    );
}
