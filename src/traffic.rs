//! The traffic seam: what the controller asks of the proxy, in the controller's terms.
//!
//! The controller takes the replicas a plan retires out of the routes before the plan's
//! steps ([`Traffic::apply`] with [`routes`] minus [`leaving`]), lets their connections
//! finish before stopping them ([`Traffic::drain`], in the background), switches through
//! [`Traffic::switch`], and reads what the proxy routes and sees UP ([`Traffic::view`]) as
//! an input of the planner. Each builds a [`ServiceRoutes`] from plain data and hands it to
//! the HAProxy adapter, which turns it into Runtime API calls or, when the shape changed, a
//! validated seamless reload.
//!
//! [`Traffic::supervise`] keeps a supervised HAProxy alive between those calls, under the
//! same lock, so a restart never races an apply.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::fleet::Watch;
use crate::haproxy::{
    ApplyOutcome, Check, CheckTiming, Proxy, ProxyError, ProxyMetrics, SUPERVISE_EVERY, Server,
    ServerState, ServiceRoutes, Split, Supervision, runtime::ColorCounters, slots_for,
};
use crate::metrics::Metrics;
use crate::observed::Container;
use crate::plan::Step;
use crate::spec::Service;
use crate::status::{AnalysisResult, Color, Status};

/// How long a replica may take to finish its requests before it is stopped anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The proxy, shared by the workers (and the supervisor).
pub struct Traffic {
    proxy: Arc<Mutex<Proxy>>,
    metrics: Arc<Metrics>,
}

/// The running supervisor task (see [`Traffic::supervise`]). Dropping it stops supervising;
/// HAProxy keeps running.
pub struct Supervisor(tokio::task::JoinHandle<()>);

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The routes of `service`: live and preview colors, a canary's split, and a server for
/// every running replica with an address except those in `excluded` (ids), which go to
/// maintenance. Each color is reached and checked the way the revision it runs asks (its
/// containers' labels), so a new spec's port or health path never changes how the live
/// color is checked.
pub fn routes(
    service: &Service,
    live: Option<Color>,
    preview: Option<Color>,
    split: Option<Split>,
    containers: &[Container],
    excluded: &BTreeSet<String>,
) -> ServiceRoutes {
    let kept: Vec<Container> = containers
        .iter()
        .filter(|c| !excluded.contains(&c.id) && !c.stopping)
        .cloned()
        .collect();
    // Slots must cover every replica that still runs, also while scaling down.
    let highest = containers
        .iter()
        .filter_map(|c| c.slot())
        .max()
        .unwrap_or(0);
    let check_of = |c: Option<&Container>| {
        let health = c
            .and_then(|c| c.health.as_ref())
            .unwrap_or(&service.spec.health);
        Check {
            port: c.and_then(|c| c.port).unwrap_or(service.spec.port),
            path: health.path.clone(),
            host: health.host.as_deref().unwrap_or(service.name()).to_owned(),
            timing: Some(CheckTiming::from_health(health)),
        }
    };
    let checks = [Color::Blue, Color::Green]
        .into_iter()
        .map(|color| {
            let first = kept
                .iter()
                .find(|c| c.color() == Some(color) && !c.is_archived());
            (color, check_of(first))
        })
        .collect();
    ServiceRoutes {
        routes: service.spec.routes.clone(),
        live,
        preview: preview.filter(|p| Some(*p) != live),
        port: service.spec.port,
        health_path: service.spec.health.path.clone(),
        checks,
        slots: slots_for(service.spec.replicas.max(highest)),
        servers: in_rotation(ServiceRoutes::servers_from(&kept)),
        split: split.filter(|s| live.is_some_and(|l| l != s.color)),
    }
}

/// The share of the live requests a canary in progress gets, from the status a plan
/// reports: its color and weight, once a `weight` step gave it one.
pub fn split(status: Option<&Status>) -> Option<Split> {
    let canary = status?.canary.as_ref()?;
    (canary.weight > 0).then_some(Split {
        color: canary.color,
        percent: canary.weight,
    })
}

/// The window the proxies must count traffic for, from the status a plan reports: while an
/// analysis runs, the bake window after a switch or a canary's `analysis` step (see
/// `analysis` in the spec).
pub fn watch(service: &Service, status: Option<&Status>) -> Option<Watch> {
    let status = status?;
    let analysis = status
        .analysis
        .as_ref()
        .filter(|a| a.result == AnalysisResult::Running)?;
    let config = crate::plan::analysis_config(service, status)?;
    Some(Watch {
        color: analysis.color,
        since_ms: analysis.started_ms,
        until_ms: analysis.until_ms,
        interval_ms: config.interval.as_millis(),
    })
}

/// Every running replica takes traffic as far as cutover is concerned; HAProxy's own checks
/// keep requests off one that is starting or failing. (cutover's probes gate the switch, not
/// the rotation: a daemon that just restarted has not probed yet, and must not take a
/// serving color out of rotation for that.)
fn in_rotation(mut servers: BTreeMap<Color, Vec<Server>>) -> BTreeMap<Color, Vec<Server>> {
    for server in servers.values_mut().flatten() {
        server.state = ServerState::Ready;
    }
    servers
}

/// The replicas in play that `steps` stop, remove or rename: they must leave the routes
/// first.
pub fn leaving(steps: &[Step], containers: &[Container]) -> BTreeSet<String> {
    let targets: BTreeSet<&str> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Stop { target } | Step::Remove { target } | Step::Rename { target, .. } => {
                Some(target.id.as_str())
            }
            _ => None,
        })
        .collect();
    containers
        .iter()
        .filter(|c| targets.contains(c.id.as_str()) && !c.is_archived() && c.color().is_some())
        .map(|c| c.id.clone())
        .collect()
}

impl Traffic {
    pub fn new(proxy: Proxy, metrics: Arc<Metrics>) -> Traffic {
        Traffic {
            proxy: Arc::new(Mutex::new(proxy)),
            metrics,
        }
    }

    /// Starts supervising our HAProxy: every [`SUPERVISE_EVERY`], under the proxy's lock,
    /// [`Proxy::supervise`] looks at the master and starts it again from the files if it
    /// died; each restart counts in `cutover_haproxy_restarts_total`. Every daemon runs it,
    /// leader or follower. In external mode the task ends at its first look. A restart that
    /// fails is retried with backoff (0.5 s doubling to 10 s).
    pub fn supervise(&self) -> Supervisor {
        let proxy = Arc::clone(&self.proxy);
        let metrics = Arc::clone(&self.metrics);
        Supervisor(tokio::spawn(async move {
            let mut failures = 0;
            loop {
                let delay = if failures == 0 {
                    SUPERVISE_EVERY
                } else {
                    crate::queue::retry_delay(failures)
                };
                tokio::time::sleep(delay).await;
                let result = proxy.lock().await.supervise().await;
                match result {
                    Ok(Supervision::NotOurs) => return,
                    Ok(Supervision::Restarted) => {
                        metrics.haproxy_restarted();
                        info!("HAProxy restarted with the current routes");
                        failures = 0;
                    }
                    Ok(Supervision::Running) => failures = 0,
                    Err(e) => {
                        failures += 1;
                        warn!(error = %e, "HAProxy's master is gone and cannot be started again; retrying");
                    }
                }
            }
        }))
    }

    /// Routes `routes` for `name`.
    pub async fn apply(
        &self,
        name: &str,
        routes: &ServiceRoutes,
    ) -> Result<ApplyOutcome, ProxyError> {
        let outcome = self.proxy.lock().await.apply(name, routes).await?;
        self.metrics.haproxy(&outcome);
        if outcome.reloaded {
            debug!(service = %name, "HAProxy reloaded for a new shape");
        }
        if outcome.reload_required {
            warn!(service = %name, "the HAProxy configuration changed; reload the external HAProxy");
        }
        Ok(outcome)
    }

    /// Per service and color, the server slots the table puts in rotation: what
    /// [`Traffic::servers_up_all`] reports once every check passed.
    pub async fn servers_in_rotation(&self) -> BTreeMap<String, BTreeMap<Color, BTreeSet<u32>>> {
        let proxy = self.proxy.lock().await;
        proxy
            .services()
            .filter_map(|name| Some((name, proxy.routes(name)?)))
            .map(|(name, routes)| {
                let by_color = routes
                    .servers
                    .iter()
                    .map(|(color, servers)| {
                        let slots = servers
                            .iter()
                            .filter(|s| s.state == ServerState::Ready)
                            .map(|s| s.slot)
                            .collect();
                        (*color, slots)
                    })
                    .filter(|(_, slots): &(Color, BTreeSet<u32>)| !slots.is_empty())
                    .collect();
                (name.to_owned(), by_color)
            })
            .collect()
    }

    /// The traffic counters of every color, by service and color (see
    /// [`Proxy::backend_counters`]).
    pub async fn backend_counters(
        &self,
    ) -> Result<BTreeMap<(String, Color), ColorCounters>, ProxyError> {
        self.proxy.lock().await.backend_counters().await
    }

    /// Like [`Traffic::servers_up_all`], or why HAProxy cannot be asked.
    pub async fn try_servers_up_all(
        &self,
    ) -> Result<BTreeMap<String, BTreeMap<Color, BTreeSet<u32>>>, ProxyError> {
        self.proxy.lock().await.servers_up_all().await
    }

    /// Per service and color, the server slots HAProxy's checks see UP (one `show stat`);
    /// empty when HAProxy cannot be asked.
    pub async fn servers_up_all(&self) -> BTreeMap<String, BTreeMap<Color, BTreeSet<u32>>> {
        match self.proxy.lock().await.servers_up_all().await {
            Ok(up) => up,
            Err(e) => {
                debug!(error = %e, "cannot read HAProxy's server states");
                BTreeMap::new()
            }
        }
    }

    /// Waits (at most [`DRAIN_TIMEOUT`]) until the server in `slot` of `color` has no
    /// sessions left, as long as it still points at `address` (a slot given to a successor
    /// has the successor's sessions, not the leaving replica's). The replica must already be
    /// out of the routes.
    pub async fn drain(&self, name: &str, color: Color, slot: u32, address: &str) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let sessions = {
                let proxy = self.proxy.lock().await;
                let reused = proxy
                    .routes(name)
                    .and_then(|r| r.servers.get(&color))
                    .into_iter()
                    .flatten()
                    .any(|s| s.slot == slot && s.address != address);
                if reused {
                    return;
                }
                match proxy.server_sessions(name, color, slot).await {
                    Ok(sessions) => sessions,
                    Err(e) => {
                        debug!(service = %name, error = %e, "cannot count sessions; not waiting");
                        return;
                    }
                }
            };
            if sessions == 0 {
                return;
            }
            if Instant::now() >= deadline {
                warn!(service = %name, %color, slot, sessions, "drain timed out; stopping anyway");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Removes a deleted service's routes.
    pub async fn remove(&self, name: &str) -> Result<(), ProxyError> {
        let mut proxy = self.proxy.lock().await;
        if proxy.routes(name).is_some() {
            proxy.remove(name).await?;
        }
        Ok(())
    }

    /// The services the proxy routes now.
    pub async fn services(&self) -> Vec<String> {
        self.proxy
            .lock()
            .await
            .services()
            .map(str::to_owned)
            .collect()
    }

    pub async fn metrics(&self) -> ProxyMetrics {
        self.proxy.lock().await.metrics()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observed::Role;
    use crate::plan::Target;
    use crate::spec::parse_service;

    fn replica(id: &str, color: Color, slot: u32, name: &str) -> Container {
        Container {
            id: id.into(),
            name: name.into(),
            service: "web".into(),
            role: Role::Replica { color, slot },
            revision: "r1".into(),
            spec_index: 1,
            image: "web:1".into(),
            running: true,
            created_ms: 0,
            address: Some(format!("10.0.0.{slot}")),
            ready: true,
            stopping: false,
            port: None,
            health: None,
        }
    }

    #[test]
    fn leaving_replicas_are_those_stopped_removed_or_renamed_in_play() {
        let blue = replica("b1", Color::Blue, 1, "web-blue-1");
        let archived = replica("old", Color::Green, 1, "web-rabc-1");
        let kept = replica("b2", Color::Blue, 2, "web-blue-2");
        let steps = vec![
            Step::Stop {
                target: Target::from(&blue),
            },
            Step::Remove {
                target: Target::from(&archived),
            },
        ];
        let gone = leaving(&steps, &[blue, archived, kept]);
        assert_eq!(gone, BTreeSet::from(["b1".to_owned()]));
    }

    #[test]
    fn routes_leave_out_excluded_servers_and_cover_every_running_slot() {
        let service = parse_service(
            "web.yaml",
            "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  image: web:1\n  replicas: 1\n  routes: [{pathPrefix: /}]\n",
        )
        .unwrap();
        let containers: Vec<Container> = (1..=6)
            .map(|slot| {
                replica(
                    &format!("b{slot}"),
                    Color::Blue,
                    slot,
                    &format!("web-blue-{slot}"),
                )
            })
            .collect();
        let excluded: BTreeSet<String> = (2..=6).map(|s| format!("b{s}")).collect();
        let r = routes(
            &service,
            Some(Color::Blue),
            Some(Color::Blue),
            None,
            &containers,
            &excluded,
        );
        assert_eq!(r.slots, 12, "slots cover slot 6 while it drains");
        assert_eq!(r.servers[&Color::Blue].len(), 1);
        assert_eq!(r.preview, None, "preview equal to live is no preview");
        assert_eq!(r.live, Some(Color::Blue));
    }
}
