//! The proxy role: keeps the local HAProxy in line with the route table the leader publishes,
//! and reports what it serves.
//!
//! Every `cutover run` (leader or follower) runs one, and `cutover proxy` runs one alone on an
//! edge node that runs no controller. It watches `<prefix>/routes/` with a blocking query,
//! applies each service's routes that changed to its HAProxy through the Runtime API (a
//! validated reload only when the set of backends changes), and writes its
//! [`ProxyReport`](crate::fleet::ProxyReport) (the table version it serves per service, the
//! servers its HAProxy's checks see UP) under `<prefix>/proxies/<id>`, held by a Consul session
//! with behavior `delete`: a proxy that dies stops counting once its session expires.
//!
//! Guarantees:
//! - It is the only code that changes an HAProxy (the supervisor only restarts a dead one
//!   from the same files).
//! - Consul away: it keeps serving the last table it applied (HAProxy's own files hold it),
//!   and says so on `/readyz`.
//! - The routes of a service missing from the table stay in HAProxy while one of its
//!   servers is UP: the entry may have been lost (a stray `consul kv delete`, Consul back
//!   without its data), and the traffic must not be. Such a service is left out of the
//!   agent's report (it serves no version of the current table), so a leader that deletes
//!   the service goes on to stop its containers. Once no server is UP its routes go: at once
//!   if a table read since the agent started (or since Consul was last reset or
//!   unreachable) listed it, otherwise after [`KEPT_IDLE`] without a server UP (right after
//!   a start, servers may not be UP yet, and a table read then proves nothing).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::fleet::{Applied, ProxyReport, TrafficSample, Watch};
use crate::haproxy::runtime::{ColorCounters, Counters};
use crate::metrics::Metrics;
use crate::status::now_ms;
use crate::store::{Folder, Store};
use crate::traffic::Traffic;

/// The TTL of a proxy's session: a dead proxy stops counting within one to two of these.
pub const SESSION_TTL: Duration = Duration::from_secs(10);

/// How often the agent reads its HAProxy's server states while a server in rotation is not
/// UP (a rollout waits for it), and otherwise.
const LOOK_FAST: Duration = Duration::from_millis(100);
const LOOK_SLOW: Duration = Duration::from_secs(1);

/// How long the routes of a service that no table listed since the agent started (or since
/// Consul was reset or unreachable) stay in HAProxy without a server UP.
pub const KEPT_IDLE: Duration = Duration::from_secs(30);

/// A service in HAProxy that the table does not list (see the module's guarantees).
struct Kept {
    /// A table read since the agent started, or since Consul was reset or unreachable,
    /// listed it: it was dropped, not lost.
    dropped: bool,
    /// Since when no server of it is UP.
    idle_since: Option<tokio::time::Instant>,
}

/// Who the agent is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Unique among the proxies of a prefix: the key of its report.
    pub id: String,
    /// The host it runs on, for people.
    pub node: String,
    /// Its live listener, for people.
    pub listener: String,
}

impl Identity {
    /// `<host>-<8 hex digits of the HAProxy directory>`: two proxies on one host (with their
    /// own directories, as they must) get different ids.
    pub fn for_directory(dir: &std::path::Path, listener: &str) -> Identity {
        let node = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        let mut hash: u32 = 0x811c_9dc5;
        for byte in dir.as_os_str().as_encoded_bytes() {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        Identity {
            id: format!("{node}-{hash:08x}"),
            node,
            listener: listener.to_owned(),
        }
    }
}

#[derive(Default)]
struct State {
    report: ProxyReport,
    /// The last read of the table succeeded (`None` before the first read).
    connected: Option<Result<(), String>>,
    /// The report changed since it was last written.
    dirty: bool,
    /// The services a table listed since the agent started or since Consul was last reset
    /// or unreachable.
    listed: std::collections::BTreeSet<String>,
    /// Services in HAProxy that the table does not list, kept for now.
    kept: std::collections::BTreeMap<String, Kept>,
    /// The open bake windows whose traffic it counts, by service.
    counting: std::collections::BTreeMap<String, Counting>,
    /// Counts the applies: a read of the servers UP pairs with the applied versions only
    /// if no apply ran while it was read (a slot UP before an apply that gave it another
    /// replica says nothing about that replica).
    applies: u64,
}

/// A bake window (or a canary's analysis step) being counted, and the color's counters when
/// the switch (or the step) was applied (`None` until they could be read).
struct Counting {
    watch: Watch,
    baseline: Option<ColorCounters>,
}

/// The agent. Cheap to share.
pub struct ProxyAgent {
    store: Store,
    traffic: Arc<Traffic>,
    identity: Identity,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    wake: Notify,
    /// Wakes the counting task when a bake window opens.
    count_wake: Notify,
}

impl ProxyAgent {
    pub fn new(
        store: Store,
        traffic: Arc<Traffic>,
        identity: Identity,
        metrics: Arc<Metrics>,
    ) -> Arc<ProxyAgent> {
        let report = ProxyReport {
            node: identity.node.clone(),
            listener: identity.listener.clone(),
            ..ProxyReport::default()
        };
        Arc::new(ProxyAgent {
            store,
            traffic,
            identity,
            metrics,
            state: Mutex::new(State {
                report,
                ..State::default()
            }),
            wake: Notify::new(),
            count_wake: Notify::new(),
        })
    }

    pub fn id(&self) -> &str {
        &self.identity.id
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `Ok` while it follows the table; otherwise why not (for `/readyz`).
    pub fn readiness(&self) -> Result<(), String> {
        let state = self.lock();
        match &state.connected {
            None => Err("the proxy has not read the route table yet".to_owned()),
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(format!(
                "the proxy cannot read the route table ({e}); it serves the last one it applied"
            )),
        }
    }

    /// Its latest report.
    pub fn report(&self) -> ProxyReport {
        self.lock().report.clone()
    }

    /// Runs until the task is aborted.
    pub async fn run(self: Arc<Self>) {
        info!(id = %self.identity.id, "proxy agent following the route table");
        let watch = tokio::spawn(Arc::clone(&self).follow_table());
        let count = tokio::spawn(Arc::clone(&self).count_traffic());
        self.report_loop().await;
        watch.abort();
        count.abort();
    }

    /// Applies every change of the table.
    async fn follow_table(self: Arc<Self>) {
        let mut watch = self
            .store
            .watch_folder(Folder::Routes, crate::consul::WATCH_WAIT);
        let mut fresh = true;
        let mut failures = 0;
        loop {
            match watch.next().await {
                Ok(update) => {
                    failures = 0;
                    {
                        let mut state = self.lock();
                        state.connected = Some(Ok(()));
                        // After a start, a reset or a time without Consul (which may have come
                        // back empty at a higher index), what tables listed before proves
                        // nothing.
                        if std::mem::take(&mut fresh) || update.reset {
                            state.listed.clear();
                        }
                    }
                    self.apply(&update.listing.entries).await;
                }
                Err(e) => {
                    fresh = true;
                    failures += 1;
                    warn!(error = %e, "proxy: cannot read the route table; serving the last one");
                    self.lock().connected = Some(Err(e.to_string()));
                    tokio::time::sleep(crate::queue::retry_delay(failures)).await;
                }
            }
        }
    }

    /// Brings the HAProxy to the table: changed services applied, services not in it
    /// removed or kept (see the module's guarantees), then the report is due.
    async fn apply(&self, entries: &[crate::consul::KvEntry]) {
        let (table, bad) = self.store.routes_from_entries(entries);
        {
            let mut state = self.lock();
            state.kept.retain(|s, _| !table.contains_key(s));
            state.listed.extend(table.keys().cloned());
        }
        for problem in bad {
            warn!("proxy: ignoring a route table entry that does not decode: {problem}");
        }
        let watched: Vec<String> = self.lock().counting.keys().cloned().collect();
        for service in watched.iter().filter(|s| !table.contains_key(*s)) {
            self.follow_watch(service, None).await;
        }
        for (service, (version, published)) in &table {
            // Before the switch it comes with: the counters now are the baseline.
            self.follow_watch(service, published.watch).await;
            let current = self.lock().report.applied.get(service).map(|a| a.version);
            if current == Some(*version) {
                continue;
            }
            match self.traffic.apply(service, &published.routes).await {
                Ok(_) => {
                    let at_ms = now_ms();
                    let took = at_ms.saturating_sub(published.written_ms);
                    self.metrics
                        .proxy_applied(*version, Duration::from_millis(took));
                    debug!(service = %service, version, took_ms = took, "proxy: routes applied");
                    let mut state = self.lock();
                    state.applies += 1;
                    state.report.applied.insert(
                        service.clone(),
                        Applied {
                            version: *version,
                            at_ms,
                        },
                    );
                    state.report.errors.remove(service);
                    state.dirty = true;
                }
                Err(e) => {
                    warn!(service = %service, version, error = %e, "proxy: cannot apply the routes; the previous ones keep serving");
                    let mut state = self.lock();
                    state.report.errors.insert(service.clone(), e.to_string());
                    state.dirty = true;
                }
            }
        }
        let up = self.traffic.try_servers_up_all().await;
        for service in self.traffic.services().await {
            if table.contains_key(&service) {
                continue;
            }
            let serving = match &up {
                Ok(up) => up
                    .get(&service)
                    .is_some_and(|c| c.values().any(|s| !s.is_empty())),
                // Unknown: keep it until HAProxy can be asked.
                Err(_) => true,
            };
            let dropped = self.lock().listed.contains(&service);
            if dropped && !serving {
                self.remove_routes(&service).await;
                continue;
            }
            let mut state = self.lock();
            if state.kept.contains_key(&service) {
                continue;
            }
            warn!(service = %service, dropped, "proxy: routes kept: the route table does not list this service; they go once no server is UP");
            let idle_since = (!serving).then(tokio::time::Instant::now);
            state.kept.insert(
                service.clone(),
                Kept {
                    dropped,
                    idle_since,
                },
            );
            state.report.applied.remove(&service);
            state.report.errors.remove(&service);
            state.dirty = true;
        }
        self.wake.notify_one();
    }

    /// Starts counting a new bake window of `service` (its backend's counters now are the
    /// baseline: call it before applying the switch the window comes with), or stops
    /// counting once the table has no window for it.
    async fn follow_watch(&self, service: &str, watch: Option<Watch>) {
        let same = |c: &Counting| {
            watch.is_some_and(|w| (w.color, w.since_ms) == (c.watch.color, c.watch.since_ms))
        };
        if self.lock().counting.get(service).is_some_and(same) {
            return;
        }
        let Some(watch) = watch else {
            let mut state = self.lock();
            if state.counting.remove(service).is_some()
                | state.report.traffic.remove(service).is_some()
            {
                state.dirty = true;
            }
            return;
        };
        // A backend HAProxy does not have yet counts from zero; a failed read waits for the
        // first sample.
        let baseline = match self.traffic.backend_counters().await {
            Ok(counters) => Some(
                counters
                    .get(&(service.to_owned(), watch.color))
                    .cloned()
                    .unwrap_or_default(),
            ),
            Err(_) => None,
        };
        self.lock()
            .counting
            .insert(service.to_owned(), Counting { watch, baseline });
        self.count_wake.notify_one();
    }

    /// While a bake window is open, reads HAProxy's counters every window's interval and
    /// puts what moved since the switch in the report (written at once when it changed).
    async fn count_traffic(self: Arc<Self>) {
        loop {
            let interval = {
                let now = now_ms();
                self.lock()
                    .counting
                    .values()
                    .filter(|c| now <= c.watch.until_ms.saturating_add(c.watch.interval_ms))
                    .map(|c| c.watch.interval_ms)
                    .min()
            };
            let Some(interval) = interval else {
                tokio::select! {
                    _ = self.count_wake.notified() => {}
                    _ = tokio::time::sleep(LOOK_SLOW) => {}
                }
                continue;
            };
            tokio::time::sleep(Duration::from_millis(interval)).await;
            let Ok(counters) = self.traffic.backend_counters().await else {
                continue;
            };
            let now = now_ms();
            let mut state = self.lock();
            let state = &mut *state;
            let mut changed = false;
            for (service, counting) in &mut state.counting {
                let open = now
                    <= counting
                        .watch
                        .until_ms
                        .saturating_add(counting.watch.interval_ms);
                let current = counters.get(&(service.clone(), counting.watch.color));
                let Some(current) = current.filter(|_| open) else {
                    continue;
                };
                let baseline = counting.baseline.get_or_insert_with(|| current.clone());
                for (row, now) in current {
                    if let Some(before) = baseline.get_mut(row)
                        && now.requests < before.requests
                    {
                        // HAProxy reloaded: this row's counters started again from zero.
                        *before = Counters::default();
                    }
                }
                let sample = TrafficSample::between(&counting.watch, baseline, current);
                if state.report.traffic.get(service) != Some(&sample) {
                    state.report.traffic.insert(service.clone(), sample);
                    changed = true;
                }
            }
            if changed {
                state.dirty = true;
                self.wake.notify_one();
            }
        }
    }

    /// Removes the kept services (see the module's guarantees) none of whose servers is UP:
    /// at once if they were dropped, after [`KEPT_IDLE`] otherwise.
    async fn drop_kept_when_idle(&self) {
        if self.lock().kept.is_empty() {
            return;
        }
        let Ok(up) = self.traffic.try_servers_up_all().await else {
            return;
        };
        let now = tokio::time::Instant::now();
        let idle: Vec<String> = {
            let mut state = self.lock();
            let mut idle = Vec::new();
            for (service, kept) in &mut state.kept {
                let serving = up
                    .get(service)
                    .is_some_and(|c| c.values().any(|set| !set.is_empty()));
                if serving {
                    kept.idle_since = None;
                    continue;
                }
                let since = *kept.idle_since.get_or_insert(now);
                if kept.dropped || now.duration_since(since) >= KEPT_IDLE {
                    idle.push(service.clone());
                }
            }
            idle
        };
        for service in idle {
            self.remove_routes(&service).await;
        }
    }

    /// Takes a service's routes out of HAProxy and out of the report.
    async fn remove_routes(&self, service: &str) {
        match self.traffic.remove(service).await {
            Ok(()) => {
                let mut state = self.lock();
                state.report.applied.remove(service);
                state.report.up.remove(service);
                state.report.errors.remove(service);
                state.report.traffic.remove(service);
                state.counting.remove(service);
                state.kept.remove(service);
                state.listed.remove(service);
                state.dirty = true;
                info!(service = %service, "proxy: routes removed");
            }
            Err(e) => warn!(service = %service, error = %e, "proxy: cannot remove routes"),
        }
    }

    /// Keeps the report current in Consul: at once when what it applied changes, when its
    /// HAProxy's server states change (read every [`LOOK_FAST`] while a server in rotation
    /// is not UP, every [`LOOK_SLOW`] otherwise), and at least every half session TTL (which
    /// renews the session).
    async fn report_loop(&self) {
        let mut session: Option<String> = None;
        let mut renewed = tokio::time::Instant::now();
        let mut every = LOOK_FAST;
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(every) => {}
            }
            let applies = self.lock().applies;
            let up = self.traffic.servers_up_all().await;
            self.drop_kept_when_idle().await;
            every = if up == self.traffic.servers_in_rotation().await {
                LOOK_SLOW
            } else {
                LOOK_FAST
            };
            {
                let mut state = self.lock();
                if state.applies != applies {
                    // Read across an apply: read again (its wake-up is pending).
                    continue;
                }
                if state.report.up != up {
                    debug!(up = ?up, "proxy: servers UP changed");
                    state.report.up = up;
                    state.dirty = true;
                }
            }
            let due = renewed.elapsed() >= SESSION_TTL / 2;
            let report = {
                let mut state = self.lock();
                if !state.dirty && !due && session.is_some() {
                    continue;
                }
                state.report.updated_ms = now_ms();
                state.report.clone()
            };
            match self.write(&mut session, &report, due).await {
                Ok(()) => {
                    debug!("proxy: report written");
                    if due {
                        renewed = tokio::time::Instant::now();
                    }
                    self.lock().dirty = false;
                }
                Err(e) => {
                    debug!(error = %e, "proxy: cannot write its report");
                    session = None;
                }
            }
        }
    }

    async fn write(
        &self,
        session: &mut Option<String>,
        report: &ProxyReport,
        renew: bool,
    ) -> Result<(), String> {
        let client = self.store.client();
        if renew && let Some(id) = session.as_deref() {
            let alive = client.renew_session(id).await.map_err(|e| e.to_string())?;
            if !alive {
                *session = None;
            }
        }
        let id = match session.as_deref() {
            Some(id) => id.to_owned(),
            None => {
                let name = format!("cutover proxy {}", self.identity.id);
                let id = client
                    .create_ephemeral_session(&name, SESSION_TTL)
                    .await
                    .map_err(|e| e.to_string())?;
                *session = Some(id.clone());
                id
            }
        };
        let held = self
            .store
            .put_report(&self.identity.id, &id, report)
            .await
            .map_err(|e| e.to_string())?;
        if !held {
            return Err(format!(
                "another proxy holds the report key of {}; give each proxy its own --haproxy-dir",
                self.identity.id
            ));
        }
        Ok(())
    }
}
