//! The loop behind `cutover run`: watches, a work queue keyed by service, and one reconcile
//! per service at a time.
//!
//! Each reconcile reads desired (KV), observed (Docker + health probes) and status (KV), calls
//! the pure [`plan`](crate::plan::plan), executes the steps through the adapters and writes
//! the status. Everything here is glue; the decisions are the planner's.
//!
//! Guarantees:
//! - Nothing is stopped or removed because Consul or Docker cannot be read: a failed read
//!   ends the reconcile with an error and a retry, before any step.
//! - Until one full read of the specs has succeeded (at start, and after an index reset),
//!   the desired set is unknown and no service is reconciled.
//! - Specs that vanish en masse are not acted on (see [`crate::plan::mass_deletion`]).
//! - Only the leader acts (see [`crate::leader`]): leadership is checked before every step and
//!   every status write, and a reconcile that finds it lost stops there. Followers watch and
//!   observe, so they are ready to take over, but change nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::catalog;
use crate::docker::{Docker, DockerError, ExecContext, PullFailure, Scope};
use crate::haproxy::ProxyError;
use crate::health::{HealthMonitor, ReadinessChange};
use crate::metrics::Metrics;
use crate::observed::Observed;
use crate::plan::{self, Desired, Input, Step};
use crate::queue::{WorkQueue, backoff_delay, retry_delay};
use crate::security;
use crate::status::{Phase, Status};
use crate::store::{Store, StoreError, StoredService};
use crate::traffic::{self, Traffic};

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
    #[error("the desired state is not known yet (waiting for a full read of Consul)")]
    DesiredUnknown,
    #[error(transparent)]
    NotLeader(#[from] crate::leader::NotLeader),
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
        }
    }
}

#[derive(Default)]
struct Shared {
    /// The specs by service name; `None` until a full read succeeded.
    desired: Option<BTreeMap<String, StoredService>>,
    /// Services that have containers (from the last resync) or had a spec since then.
    managed: BTreeSet<String>,
    /// Consecutive failures by service, for backoff.
    failures: HashMap<String, u32>,
}

/// The running controller. Cheap to share between tasks.
pub struct Controller {
    store: Store,
    docker: Docker,
    /// The proxy, unless the daemon runs without one.
    traffic: Option<Traffic>,
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
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The key under which an operator confirms a refused mass deletion.
pub fn prune_confirm_key(prefix: &str) -> String {
    format!("{prefix}/control/prune-confirm")
}

impl Controller {
    pub fn new(
        store: Store,
        docker: Docker,
        traffic: Option<Traffic>,
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
            shared: Mutex::new(Shared::default()),
            metrics,
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// How many services wait in the work queue.
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    /// `Ok` once the specs were read in full from Consul and while the Docker engine answers;
    /// otherwise why not, in one line (for `/readyz`).
    pub async fn readiness(&self) -> Result<(), String> {
        if self.shared.lock().expect("shared lock").desired.is_none() {
            return Err("waiting for a full read of the specs in Consul".to_owned());
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
        let campaign = self
            .election
            .lock()
            .expect("election lock")
            .take()
            .map(crate::leader::Election::spawn);
        let mut background = tokio::task::JoinSet::new();
        background.spawn(Arc::clone(&self).follow_leadership());
        background.spawn(Arc::clone(&self).watch_specs());
        background.spawn(Arc::clone(&self).watch_requests());
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
            let result = self.reconcile(&name).instrument(span).await;
            match &result {
                // Not a failure: nothing was looked at yet, or another daemon acts.
                Err(ReconcileError::DesiredUnknown | ReconcileError::NotLeader(_)) => {}
                Err(e) => self
                    .metrics
                    .reconcile(started.elapsed(), Some(e.metric_reason())),
                Ok(_) => self.metrics.reconcile(started.elapsed(), None),
            }
            let retry = {
                let mut shared = self.shared.lock().expect("shared lock");
                match &result {
                    Ok(_) => {
                        shared.failures.remove(&name);
                        None
                    }
                    Err(ReconcileError::NotLeader(_)) => None,
                    Err(_) => {
                        let failures = shared.failures.entry(name.clone()).or_insert(0);
                        *failures += 1;
                        Some(backoff_delay(
                            *failures,
                            Duration::from_millis(500),
                            Duration::from_secs(60),
                        ))
                    }
                }
            };
            self.queue.done(&name);
            match (result, retry) {
                (Ok(Some(after)), _) => self.queue.add_after(&name, after),
                (Ok(None), _) => {}
                (Err(ReconcileError::DesiredUnknown), _) => {
                    debug!(service = %name, "desired state unknown; waiting for Consul")
                }
                (Err(ReconcileError::NotLeader(_)), _) => {
                    warn!(service = %name, "leadership lost: reconcile stopped before its next step")
                }
                (Err(e), Some(delay)) => {
                    warn!(service = %name, error = %e, retry_in = ?delay, "reconcile failed");
                    self.queue.add_after(&name, delay);
                }
                (Err(_), None) => unreachable!("an error always has a retry delay"),
            }
        }
    }

    /// One reconcile of one service. Returns when to look again, if the plan asked for it.
    async fn reconcile(&self, name: &str) -> Result<Option<Duration>, ReconcileError> {
        let (stored, deletion_refused) = {
            let shared = self.shared.lock().expect("shared lock");
            let desired = shared
                .desired
                .as_ref()
                .ok_or(ReconcileError::DesiredUnknown)?;
            let names: BTreeSet<String> = desired.keys().cloned().collect();
            let known: BTreeSet<String> = names.union(&shared.managed).cloned().collect();
            (
                desired.get(name).cloned(),
                plan::mass_deletion(&known, &names),
            )
        };
        // Read everything before acting: a failed read acts on nothing.
        let scope = &self.settings.scope;
        let observation = self.docker.observe(scope, Some(name)).await?;
        let stored_status = self.store.get_status(name).await?;
        let request = self.store.get_request(name).await?.map(|v| v.value);
        let status = stored_status
            .as_ref()
            .map(|v| v.value.clone())
            .unwrap_or_default();

        let service = stored.as_ref().and_then(|s| s.parsed.as_ref().ok());
        let mut observed = Observed {
            containers: observation.containers,
            images_present: BTreeSet::new(),
        };
        if let Some(service) = service {
            let images = std::iter::once(&service.spec.image)
                .chain(service.spec.side_targets.iter().map(|s| &s.image));
            for image in images {
                if self.docker.image_present(image).await? {
                    observed.images_present.insert(image.clone());
                }
            }
            self.health.sync(
                name,
                &service.spec.health,
                service.spec.port,
                &observed.containers,
                &observation.docker_health,
            );
            self.health.mark_ready(&mut observed.containers);
        }

        // A spec this daemon is not allowed to run changes nothing, like an invalid one.
        if let (Some(s), Some(service)) = (&stored, service)
            && let Err(refusals) = security::check(service, self.docker.allowances())
        {
            let message = security::message(&refusals);
            let mut refused = Status {
                observed_index: s.modify_index,
                ..status.clone()
            };
            if refused.last_error.as_deref() != Some(message.as_str()) {
                warn!(service = %name, "{message}");
            }
            degrade(&mut refused, security::REASON, &message);
            refused.phase = Some(Phase::Invalid);
            refused.last_error = Some(message);
            self.write_status(name, &refused, stored_status.as_ref().map(|s| &s.value))
                .await?;
            return Ok(None);
        }
        let desired = match (&stored, service) {
            (Some(s), Some(service)) => Desired::Valid {
                service,
                index: s.modify_index,
            },
            (Some(s), None) => Desired::Invalid {
                diagnostics: s.parsed.as_ref().expect_err("invalid"),
                index: s.modify_index,
            },
            (None, _) => {
                if observed.containers.is_empty() {
                    self.health.forget_service(name);
                    let instance = &self.settings.scope.instance;
                    self.leadership.check()?;
                    catalog::sync(self.store.client(), name, instance, &[])
                        .await
                        .map_err(StoreError::from)?;
                    if stored_status.is_some() {
                        self.leadership.check()?;
                        self.store.delete_status(name).await?;
                        self.metrics.forget(name);
                        info!(service = %name, "service removed");
                    }
                    return Ok(None);
                }
                if stored_status.is_none() && !self.settings.prune_orphans {
                    warn!(service = %name, containers = observed.containers.len(),
                        "orphaned containers: labelled for this daemon but the service has \
                         neither spec nor status; start with --prune-orphans to remove them");
                    return Ok(None);
                }
                if let Some(reason) = deletion_refused
                    && !self.settings.allow_mass_deletion
                    && !self.deletion_confirmed(name).await?
                {
                    self.leadership.check()?;
                    error!(service = %name, "{reason}");
                    self.metrics.deletion_refused();
                    if let Some(stored) = stored_status.map(|v| v.value) {
                        let mut status = stored.clone();
                        degrade(&mut status, "DeletionRefused", &reason);
                        self.write_status(name, &status, Some(&stored)).await?;
                    }
                    return Ok(None);
                }
                Desired::Deleted
            }
        };

        let plan = plan::plan(&Input {
            name,
            desired,
            observed: &observed,
            status: &status,
            request: request.as_ref(),
            now_ms: now_ms(),
        });

        let exec = ExecContext {
            scope,
            service_name: name,
            service,
            spec_index: stored.as_ref().map_or(0, |s| s.modify_index),
        };
        let mut new_status = plan.status.clone();
        let failed = match self
            .execute(&exec, &plan, &status, &observed.containers)
            .await
        {
            // Not a failure of the service: another daemon carries on.
            Err(ReconcileError::NotLeader(e)) => return Err(e.into()),
            result => result.err(),
        };
        if let Some(e) = &failed {
            // What the plan meant to report did not all happen (a switch in particular):
            // report the status as it was, degraded.
            new_status = Status {
                observed_index: plan.status.observed_index,
                ..status.clone()
            };
            let reason = e.reason();
            let message = e.to_string();
            error!(service = %name, reason, error = %message, "step failed; the live color keeps serving");
            degrade(&mut new_status, reason, &message);
            new_status.last_error = Some(message);
        }
        if !matches!(desired, Desired::Deleted) {
            self.leadership.check()?;
            self.write_status(name, &new_status, stored_status.as_ref().map(|s| &s.value))
                .await?;
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if !plan.steps.is_empty() {
            // The world changed: look again at once (level-triggered).
            return Ok(Some(Duration::ZERO));
        }
        Ok(plan.requeue_after_ms.map(Duration::from_millis))
    }

    /// Carries out a plan: routes away from replicas about to go, the steps in order (the
    /// switch through the proxy), then routes for what runs now. Stops at the first failure.
    async fn execute(
        &self,
        exec: &ExecContext<'_>,
        plan: &plan::Plan,
        before: &Status,
        containers: &[crate::observed::Container],
    ) -> Result<(), ReconcileError> {
        let name = exec.service_name;
        let client = self.store.client();
        let instance = &self.settings.scope.instance;
        self.leadership.check()?;
        // Consul catalog users stop seeing a replica before it stops.
        let leaving_catalog = catalog::ids_to_deregister_before(&plan.steps);
        if !leaving_catalog.is_empty() {
            catalog::deregister_ids(client, instance, &leaving_catalog)
                .await
                .map_err(StoreError::from)?;
        }
        let traffic = self.traffic.as_ref();
        self.leadership.check()?;
        match (traffic, exec.service) {
            (Some(traffic), Some(service)) => {
                let leaving = traffic::leaving(&plan.steps, containers);
                let routes = traffic::routes(
                    service,
                    before.active_color,
                    before.preview_color,
                    containers,
                    &leaving,
                );
                let going: Vec<&crate::observed::Container> = containers
                    .iter()
                    .filter(|c| leaving.contains(&c.id))
                    .collect();
                traffic.prepare(name, &routes, &going).await?;
            }
            // A deleted service leaves the routes before its containers go.
            (Some(traffic), None) => traffic.remove(name).await?,
            (None, _) => {}
        }
        for step in &plan.steps {
            self.leadership.check()?;
            log_step(name, step);
            match (step, traffic, exec.service) {
                (Step::Switch { to }, Some(traffic), Some(service)) => {
                    let routes =
                        traffic::routes(service, Some(*to), None, containers, &BTreeSet::new());
                    let result = traffic.switch(name, &routes).await;
                    self.metrics.step(step, result.is_ok());
                    result?;
                }
                // Without a proxy, the switch is the status write that follows.
                (Step::Switch { .. }, _, _) => self.metrics.step(step, true),
                _ => {
                    let result = self.docker.execute(exec, step).await;
                    self.metrics.step(step, result.is_ok());
                    result?;
                }
            }
        }
        if let (Some(service), true) = (exec.service, plan.steps.is_empty()) {
            let desired = catalog::desired_registrations(
                name,
                instance,
                containers,
                plan.status.active_color,
                plan.status.preview_color,
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
        if let (Some(traffic), Some(service), true) = (traffic, exec.service, plan.steps.is_empty())
        {
            // Nothing changed in Docker: make the routes match what runs and is ready.
            self.leadership.check()?;
            let routes = traffic::routes(
                service,
                plan.status.active_color,
                plan.status.preview_color,
                containers,
                &BTreeSet::new(),
            );
            traffic.apply(name, &routes).await?;
        }
        Ok(())
    }

    async fn deletion_confirmed(&self, name: &str) -> Result<bool, ReconcileError> {
        let key = prune_confirm_key(self.store.prefix());
        let Some(entry) = self
            .store
            .client()
            .get(&key)
            .await
            .map_err(StoreError::from)?
        else {
            return Ok(false);
        };
        let names: Vec<String> = serde_json::from_slice(&entry.value).unwrap_or_default();
        Ok(names.iter().any(|n| n == name))
    }

    /// Writes the status when it differs from what is stored.
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
        let mut watch = self.store.watch_services(Duration::from_secs(300));
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
                    let services = self.store.services_from_entries(update.listing.entries);
                    self.on_specs(services);
                }
                Err(e) => {
                    failures += 1;
                    if watch.reset_pending() {
                        self.shared.lock().expect("shared lock").desired = None;
                    }
                    let delay = retry_delay(failures);
                    warn!(error = %e, retry_in = ?delay, "cannot watch specs in Consul; everything keeps running");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    fn on_specs(&self, services: Vec<StoredService>) {
        let new: BTreeMap<String, StoredService> =
            services.into_iter().map(|s| (s.name.clone(), s)).collect();
        let changed: Vec<String> = {
            let mut shared = self.shared.lock().expect("shared lock");
            let changed = match &shared.desired {
                None => new.keys().chain(shared.managed.iter()).cloned().collect(),
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
            // Services that had a spec count as managed until a resync finds them gone, so
            // that the deletion guard sees them vanish.
            let previous: Vec<String> = shared
                .desired
                .iter()
                .flat_map(|d| d.keys().cloned())
                .collect();
            shared.managed.extend(previous);
            shared.desired = Some(new);
            changed
        };
        for name in changed {
            self.queue.add(&name);
        }
    }

    /// Queues a service when its imperative request (or the prune confirmation) changes.
    async fn watch_requests(self: Arc<Self>) {
        let prefix = format!("{}/", self.store.prefix());
        let mut watch = crate::consul::PrefixWatch::new(
            self.store.client().clone(),
            format!("{prefix}requests/"),
            Duration::from_secs(300),
        );
        let mut failures = 0;
        loop {
            match watch.next().await {
                Ok(update) => {
                    failures = 0;
                    for entry in update.listing.entries {
                        if let Some(name) = entry.key.rsplit('/').next() {
                            self.queue.add(name);
                        }
                    }
                }
                Err(e) => {
                    failures += 1;
                    let delay = retry_delay(failures);
                    debug!(error = %e, "cannot watch requests in Consul");
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
                        self.queue.add(&event.service);
                    }
                    Err(e) => {
                        warn!(error = %e, "Docker events stream failed; resubscribing");
                        break;
                    }
                }
            }
            failures += 1;
            tokio::time::sleep(retry_delay(failures)).await;
            // Events may have been missed meanwhile.
            self.queue_all();
        }
    }

    /// Queues a service when one of its replicas becomes ready or stops being ready.
    async fn watch_health(self: Arc<Self>) {
        let Some(mut changes) = self.health_changes.lock().expect("health lock").take() else {
            return;
        };
        while let Some(change) = changes.recv().await {
            self.queue.add(&change.service);
        }
    }

    /// Queues every service now and then, so that anything missed heals.
    async fn resync_loop(self: Arc<Self>) {
        loop {
            if let Ok(observation) = self.docker.observe(&self.settings.scope, None).await {
                let mut shared = self.shared.lock().expect("shared lock");
                shared.managed = observation
                    .containers
                    .iter()
                    .map(|c| c.service.clone())
                    .chain(shared.desired.iter().flat_map(|d| d.keys().cloned()))
                    .collect();
            }
            self.forget_routes().await;
            self.queue_all();
            let jitter = self.settings.resync.mul_f64(0.2 * rand::random::<f64>());
            tokio::time::sleep(self.settings.resync + jitter).await;
        }
    }

    /// Drops the routes of services that have neither a spec nor containers any more.
    async fn forget_routes(&self) {
        let Some(traffic) = &self.traffic else { return };
        if !self.leadership.is_leader() {
            return;
        }
        let routed = traffic.services().await;
        let stale: Vec<String> = {
            let shared = self.shared.lock().expect("shared lock");
            let Some(desired) = &shared.desired else {
                return;
            };
            routed
                .into_iter()
                .filter(|s| !desired.contains_key(s) && !shared.managed.contains(s))
                .collect()
        };
        for name in stale {
            if let Err(e) = traffic.remove(&name).await {
                warn!(service = %name, error = %e, "cannot remove stale routes");
            }
        }
    }

    fn queue_all(&self) {
        let names: BTreeSet<String> = {
            let shared = self.shared.lock().expect("shared lock");
            shared
                .desired
                .iter()
                .flat_map(|d| d.keys())
                .chain(shared.managed.iter())
                .cloned()
                .collect()
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

/// Marks a status degraded for a failure only the loop sees, with an event.
fn degrade(status: &mut Status, reason: &str, message: &str) {
    let now = now_ms();
    status.set_condition("Degraded", true, reason, message, now);
    status.phase = Some(Phase::Degraded);
    if status
        .events
        .last()
        .map(|e| (e.reason.as_str(), e.message.as_str()))
        != Some((reason, message))
    {
        status.push_event(reason, message, now);
    }
}
