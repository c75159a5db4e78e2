//! Replicas in the Consul catalog: each running replica is registered with the local Consul
//! agent, tagged with its color and its role (`live`, `preview`), with an HTTP check, so that
//! consul-template and DNS users see live and preview apart.
//!
//! The shape is the planner's: [`desired_registrations`] turns containers into registrations
//! and [`plan_catalog`] diffs them against what the agent has, both without I/O; [`sync`] and
//! [`deregister_ids`] carry that out through [`Client`]. Planning again after a sync yields
//! nothing to do.
//!
//! This module must never touch a registration it did not make: only registrations whose Meta
//! carries this installation's [`META_INSTANCE`] and the service's [`META_SERVICE`] are
//! changed or removed, and a registration of someone else's that holds one of our IDs is left
//! alone and reported as a conflict.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::consul::{AgentService, CheckStatus, Client, ConsulError, HttpCheck, meta_filter};
use crate::observed::{Container, Role};
use crate::plan::Step;
use crate::status::Color;

/// Meta key: the cutover installation (its KV prefix) that made the registration.
pub const META_INSTANCE: &str = "cutover-instance";
/// Meta key: the cutover service the replica belongs to.
pub const META_SERVICE: &str = "cutover-service";
/// Meta key: the replica's revision.
pub const META_REVISION: &str = "cutover-revision";
/// Meta key: the replica's color, `blue` or `green`.
pub const META_COLOR: &str = "cutover-color";
/// Tag of the replicas of the color that receives traffic.
pub const TAG_LIVE: &str = "live";
/// Tag of the replicas of the color that waits for `cutover promote`.
pub const TAG_PREVIEW: &str = "preview";
/// How often the Consul agent runs a replica's HTTP check.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How long one run of the check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The registrations `service`'s replicas should have: one per running, non-archived replica
/// that has an address, sorted by ID.
///
/// * ID: the container name (`books-green-2`); Name: `service`.
/// * Tags: the color, then `live` for the live color or `preview` for the previewed one (the
///   color a rollout brings up, whether it is auto-promoted or not). A color that is neither
///   (draining after a switch) has only its color tag, so a query for `live` never sees it.
/// * Address and Port: the container's IP on the cutover network and `port`.
/// * Meta: [`META_INSTANCE`], [`META_SERVICE`], [`META_REVISION`], [`META_COLOR`].
/// * Check: `http://<ip>:<port><health_path>` every [`CHECK_INTERVAL`], starting as passing
///   when the daemon's own probe counts the replica ready. [`plan_catalog`] registers a
///   replica only then (a real agent keeps a check's status on re-registration, so one
///   registered critical would stay so until the agent's next run).
///
/// Side targets are not registered: they have no color and take no part in a switch.
pub fn desired_registrations(
    service: &str,
    instance: &str,
    containers: &[Container],
    live: Option<Color>,
    preview: Option<Color>,
    port: u16,
    health_path: &str,
) -> Vec<AgentService> {
    let mut registrations: Vec<AgentService> = containers
        .iter()
        .filter(|c| c.service == service && c.running && !c.is_archived())
        .filter_map(|c| {
            let Role::Replica { color, .. } = c.role else {
                return None;
            };
            let address = c.address.as_deref().filter(|a| !a.is_empty())?;
            let mut tags = vec![color.as_str().to_owned()];
            if live == Some(color) {
                tags.push(TAG_LIVE.to_owned());
            } else if preview == Some(color) {
                tags.push(TAG_PREVIEW.to_owned());
            }
            let meta = BTreeMap::from([
                (META_INSTANCE.to_owned(), instance.to_owned()),
                (META_SERVICE.to_owned(), service.to_owned()),
                (META_REVISION.to_owned(), c.revision.clone()),
                (META_COLOR.to_owned(), color.as_str().to_owned()),
            ]);
            let slash = if health_path.starts_with('/') {
                ""
            } else {
                "/"
            };
            Some(AgentService {
                id: c.name.clone(),
                name: service.to_owned(),
                tags,
                address: address.to_owned(),
                port,
                meta,
                check: Some(HttpCheck {
                    http: format!("http://{address}:{port}{slash}{health_path}"),
                    interval: CHECK_INTERVAL,
                    timeout: CHECK_TIMEOUT,
                    deregister_critical_after: None,
                    initial_status: c.ready.then_some(CheckStatus::Passing),
                }),
            })
        })
        .collect();
    registrations.sort_by(|a, b| a.id.cmp(&b.id));
    registrations.dedup_by(|a, b| a.id == b.id);
    registrations
}

/// Whether `registration` was made by this installation for `service`.
pub fn is_ours(registration: &AgentService, service: &str, instance: &str) -> bool {
    registration.meta.get(META_INSTANCE).map(String::as_str) == Some(instance)
        && registration.meta.get(META_SERVICE).map(String::as_str) == Some(service)
}

/// What to change in the agent's registrations for one service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogPlan {
    /// New registrations, and ours whose name, tags, address, port or Meta differ.
    pub to_register: Vec<AgentService>,
    /// IDs of our registrations for the service that are not desired any more.
    pub to_deregister: Vec<String>,
    /// Desired IDs held by a registration that is not ours: left alone, never overwritten.
    pub conflicts: Vec<String>,
    /// Desired IDs not registered yet whose replica is not ready: registered once it is.
    pub waiting: Vec<String>,
}

/// Whether a desired registration starts passing: its replica is ready.
fn starts_passing(registration: &AgentService) -> bool {
    registration
        .check
        .as_ref()
        .is_some_and(|c| c.initial_status == Some(CheckStatus::Passing))
}

/// Whether a registration carries the [`TAG_LIVE`] tag.
fn is_live(registration: &AgentService) -> bool {
    registration.tags.iter().any(|t| t == TAG_LIVE)
}

impl CatalogPlan {
    pub fn is_empty(&self) -> bool {
        self.to_register.is_empty() && self.to_deregister.is_empty()
    }
}

/// Compares the agent's registrations (`current`, all of them or a filtered part) with the
/// `desired` ones for `service`.
///
/// # Guarantees
/// * A registration without this `instance` and `service` in its Meta is never in
///   `to_deregister`, and no desired registration whose ID such a registration holds is in
///   `to_register`.
/// * Applying the plan and planning again yields an empty plan.
///
/// # Caveats
/// Checks are not compared: the agent does not return their definitions. A check's URL is
/// made of the address, port and health path, and a changed health path changes the revision
/// (which is in Meta), so a changed check comes with a re-registration anyway.
pub fn plan_catalog(
    current: &[AgentService],
    desired: &[AgentService],
    service: &str,
    instance: &str,
) -> CatalogPlan {
    let current_by_id: BTreeMap<&str, &AgentService> =
        current.iter().map(|r| (r.id.as_str(), r)).collect();
    let desired_ids: BTreeSet<&str> = desired.iter().map(|r| r.id.as_str()).collect();
    let mut plan = CatalogPlan::default();
    let mut planned = BTreeSet::new();
    for wanted in desired {
        if !planned.insert(wanted.id.as_str()) {
            continue;
        }
        match current_by_id.get(wanted.id.as_str()) {
            Some(existing) if !is_ours(existing, service, instance) => {
                plan.conflicts.push(wanted.id.clone());
            }
            Some(existing) if same_registration(existing, wanted) => {}
            Some(_) => plan.to_register.push(wanted.clone()),
            // Not registered yet: only once the daemon counts it ready, so that it starts
            // passing (a real agent keeps a check's status when a service is registered
            // again, so a replica registered critical would stay critical until the
            // agent's next run of the check).
            None if starts_passing(wanted) => plan.to_register.push(wanted.clone()),
            None => plan.waiting.push(wanted.id.clone()),
        }
    }
    plan.to_deregister = current
        .iter()
        .filter(|r| is_ours(r, service, instance) && !desired_ids.contains(r.id.as_str()))
        .map(|r| r.id.clone())
        .collect();
    plan.to_deregister.sort();
    plan.to_deregister.dedup();
    plan
}

/// Everything the agent reports back, with the tags' order ignored.
fn same_registration(a: &AgentService, b: &AgentService) -> bool {
    let tags = |r: &AgentService| r.tags.iter().cloned().collect::<BTreeSet<_>>();
    a.name == b.name
        && tags(a) == tags(b)
        && a.address == b.address
        && a.port == b.port
        && a.meta == b.meta
}

/// The names of the replicas a plan's steps take out of service (stopped, removed, or renamed
/// away from their slot): deregister them with [`deregister_ids`] before running the steps, so
/// that Consul stops sending users to them before they stop answering.
pub fn ids_to_deregister_before(steps: &[Step]) -> Vec<String> {
    let mut ids: Vec<String> = steps
        .iter()
        .filter_map(|step| match step {
            Step::Stop { target } | Step::Remove { target } | Step::Rename { target, .. } => {
                target.color.map(|_| target.name.clone())
            }
            _ => None,
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// What [`sync`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    /// IDs registered or registered again.
    pub registered: Vec<String>,
    /// IDs deregistered.
    pub deregistered: Vec<String>,
    /// Desired IDs held by someone else's registration, left alone.
    pub conflicts: Vec<String>,
}

impl SyncOutcome {
    /// Whether nothing was changed.
    pub fn is_noop(&self) -> bool {
        self.registered.is_empty() && self.deregistered.is_empty()
    }
}

/// How long [`sync`] waits for Consul to report the newly live replicas passing before it
/// takes `live` from the others anyway.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes the agent's registrations for `service` match `desired` (from
/// [`desired_registrations`]). Calling it with no desired registrations removes all of the
/// service's.
///
/// The order keeps `live` answered: registrations that carry `live` are made first; when
/// some of ours lose `live` (a switch) and others gain it, `sync` waits until Consul's
/// catalog reports every desired live replica passing (at most [`HANDOVER_TIMEOUT`]), and
/// only then re-tags the rest and deregisters what is not desired.
///
/// # Errors
/// The first failed request. What was done before it stays done; calling `sync` again
/// finishes the job, so the caller can simply retry on its next reconcile.
pub async fn sync(
    client: &Client,
    service: &str,
    instance: &str,
    desired: &[AgentService],
) -> Result<SyncOutcome, ConsulError> {
    // Every registration, not only ours: a foreign one holding one of our IDs must be seen to
    // be left alone.
    let current = client.agent_services(None).await?;
    let plan = plan_catalog(&current, desired, service, instance);
    for id in &plan.conflicts {
        tracing::warn!(service, id = %id,
            "a Consul registration that cutover did not make has this replica's ID; leaving it alone");
    }
    let mut outcome = SyncOutcome {
        conflicts: plan.conflicts.clone(),
        ..SyncOutcome::default()
    };
    let (gaining, others): (Vec<&AgentService>, Vec<&AgentService>) =
        plan.to_register.iter().partition(|r| is_live(r));
    for registration in gaining {
        register(client, service, registration, &mut outcome).await?;
    }
    let handover = handover_ids(&current, desired, &plan, service, instance);
    if !handover.is_empty() {
        wait_passing(client, service, &handover).await?;
    }
    for registration in others {
        register(client, service, registration, &mut outcome).await?;
    }
    for id in &plan.to_deregister {
        client.deregister_service(id).await?;
        tracing::debug!(service, id = %id, "deregistered a replica from Consul");
        outcome.deregistered.push(id.clone());
    }
    Ok(outcome)
}

async fn register(
    client: &Client,
    service: &str,
    registration: &AgentService,
    outcome: &mut SyncOutcome,
) -> Result<(), ConsulError> {
    client.register_service(registration).await?;
    tracing::debug!(service, id = %registration.id, tags = ?registration.tags,
        "registered a replica in Consul");
    outcome.registered.push(registration.id.clone());
    Ok(())
}

/// The live replicas Consul must report passing before `plan` takes `live` from any of
/// ours (those the daemon counts ready): empty when none of ours loses `live`. Pure.
pub fn handover_ids(
    current: &[AgentService],
    desired: &[AgentService],
    plan: &CatalogPlan,
    service: &str,
    instance: &str,
) -> Vec<String> {
    let desired_live: BTreeSet<&str> = desired
        .iter()
        .filter(|r| is_live(r))
        .map(|r| r.id.as_str())
        .collect();
    let losing = current.iter().any(|r| {
        is_ours(r, service, instance) && is_live(r) && !desired_live.contains(r.id.as_str())
    });
    if !losing {
        return Vec::new();
    }
    let conflicts: BTreeSet<&str> = plan.conflicts.iter().map(String::as_str).collect();
    desired
        .iter()
        .filter(|r| is_live(r) && starts_passing(r) && !conflicts.contains(r.id.as_str()))
        .map(|r| r.id.clone())
        .collect()
}

/// Waits until Consul's catalog reports every one of `ids` passing under `live`, for
/// [`HANDOVER_TIMEOUT`] at most; then logs a warning and returns.
async fn wait_passing(client: &Client, service: &str, ids: &[String]) -> Result<(), ConsulError> {
    let deadline = tokio::time::Instant::now() + HANDOVER_TIMEOUT;
    loop {
        let passing: BTreeSet<String> = client
            .passing_instances(service, TAG_LIVE)
            .await?
            .into_iter()
            .collect();
        let missing: Vec<&String> = ids.iter().filter(|id| !passing.contains(*id)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(service, missing = ?missing, timeout = ?HANDOVER_TIMEOUT,
                "Consul does not report the new live replicas passing; taking live from the old ones anyway");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deregisters the given IDs (container names, such as from [`ids_to_deregister_before`]),
/// but only those that this `instance` registered; returns the ones it removed. Call it before
/// stopping or removing the containers.
///
/// # Errors
/// The first failed request; the IDs before it are deregistered.
pub async fn deregister_ids(
    client: &Client,
    instance: &str,
    ids: &[String],
) -> Result<Vec<String>, ConsulError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let filter = meta_filter(META_INSTANCE, instance);
    let current = client.agent_services(filter.as_deref()).await?;
    let wanted: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let mut removed = Vec::new();
    for registration in current {
        let ours = registration.meta.get(META_INSTANCE).map(String::as_str) == Some(instance);
        if ours && wanted.contains(registration.id.as_str()) {
            client.deregister_service(&registration.id).await?;
            removed.push(registration.id);
        }
    }
    Ok(removed)
}

/// The services this `instance` has registrations for, from their [`META_SERVICE`]. The resync
/// loop can enqueue those it no longer knows, so that a registration left behind by a crash is
/// removed by [`sync`] with nothing desired.
///
/// # Errors
/// The agent could not be read.
pub async fn registered_services(
    client: &Client,
    instance: &str,
) -> Result<BTreeSet<String>, ConsulError> {
    let filter = meta_filter(META_INSTANCE, instance);
    let current = client.agent_services(filter.as_deref()).await?;
    Ok(current
        .into_iter()
        .filter(|r| r.meta.get(META_INSTANCE).map(String::as_str) == Some(instance))
        .filter_map(|r| r.meta.get(META_SERVICE).cloned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observed::archived_name;
    use crate::plan::Target;

    const SERVICE: &str = "books";
    const INSTANCE: &str = "cutover";

    fn replica(color: Color, slot: u32, ip: &str) -> Container {
        Container {
            id: format!("id-{color}-{slot}"),
            name: format!("{SERVICE}-{color}-{slot}"),
            service: SERVICE.to_owned(),
            role: Role::Replica { color, slot },
            revision: format!("rev-{color}"),
            spec_index: 7,
            image: "cutover-demo:a".to_owned(),
            running: true,
            created_ms: 0,
            address: Some(ip.to_owned()),
            ready: true,
            stopping: false,
            port: None,
            health: None,
        }
    }

    fn desired(
        containers: &[Container],
        live: Option<Color>,
        preview: Option<Color>,
    ) -> Vec<AgentService> {
        desired_registrations(SERVICE, INSTANCE, containers, live, preview, 80, "/health")
    }

    /// `(id, tags)` of each registration, for short assertions.
    fn summary(registrations: &[AgentService]) -> Vec<(String, Vec<String>)> {
        registrations
            .iter()
            .map(|r| (r.id.clone(), r.tags.clone()))
            .collect()
    }

    fn row(id: &str, tags: &[&str]) -> (String, Vec<String>) {
        (id.to_owned(), tags.iter().map(|t| t.to_string()).collect())
    }

    /// What the agent returns for a registration: the same, without the check.
    fn as_read_back(registration: &AgentService) -> AgentService {
        AgentService {
            check: None,
            ..registration.clone()
        }
    }

    #[test]
    fn one_registration_per_running_replica_with_its_role() {
        use Color::{Blue, Green};
        let mut stopped = replica(Blue, 3, "10.0.0.3");
        stopped.running = false;
        let mut no_address = replica(Green, 3, "");
        no_address.address = None;
        let mut archived = replica(Blue, 4, "10.0.0.4");
        archived.name = archived_name(SERVICE, "rev-blue", 4);
        let mut other_service = replica(Blue, 1, "10.0.0.9");
        other_service.service = "films".to_owned();
        other_service.name = "films-blue-1".to_owned();
        let side_target = Container {
            name: "books-worker".to_owned(),
            role: Role::SideTarget {
                name: "worker".to_owned(),
            },
            ..replica(Blue, 9, "10.0.0.8")
        };
        let containers = [
            replica(Green, 2, "10.0.1.2"),
            replica(Blue, 1, "10.0.0.1"),
            replica(Green, 1, "10.0.1.1"),
            replica(Blue, 2, "10.0.0.2"),
            stopped,
            no_address,
            archived,
            other_service,
            side_target,
        ];
        let cases = [
            // (live, preview, expected)
            (
                Some(Blue),
                Some(Green),
                vec![
                    row("books-blue-1", &["blue", "live"]),
                    row("books-blue-2", &["blue", "live"]),
                    row("books-green-1", &["green", "preview"]),
                    row("books-green-2", &["green", "preview"]),
                ],
            ),
            // After the switch, blue drains: its color tag only.
            (
                Some(Green),
                None,
                vec![
                    row("books-blue-1", &["blue"]),
                    row("books-blue-2", &["blue"]),
                    row("books-green-1", &["green", "live"]),
                    row("books-green-2", &["green", "live"]),
                ],
            ),
            // First deploy, before the first switch: nothing is live yet.
            (
                None,
                None,
                vec![
                    row("books-blue-1", &["blue"]),
                    row("books-blue-2", &["blue"]),
                    row("books-green-1", &["green"]),
                    row("books-green-2", &["green"]),
                ],
            ),
            // A status naming one color twice: live wins.
            (
                Some(Blue),
                Some(Blue),
                vec![
                    row("books-blue-1", &["blue", "live"]),
                    row("books-blue-2", &["blue", "live"]),
                    row("books-green-1", &["green"]),
                    row("books-green-2", &["green"]),
                ],
            ),
        ];
        for (live, preview, expected) in cases {
            assert_eq!(
                summary(&desired(&containers, live, preview)),
                expected,
                "live {live:?}, preview {preview:?}"
            );
        }
    }

    #[test]
    fn a_registration_carries_address_meta_and_check() {
        let mut not_ready = replica(Color::Green, 2, "172.18.0.5");
        not_ready.ready = false;
        let registrations = desired_registrations(
            SERVICE,
            INSTANCE,
            &[replica(Color::Green, 1, "172.18.0.4"), not_ready],
            Some(Color::Green),
            None,
            8080,
            "cgi-bin/health",
        );
        let first = &registrations[0];
        assert_eq!(first.name, "books");
        assert_eq!(first.address, "172.18.0.4");
        assert_eq!(first.port, 8080);
        assert_eq!(
            first.meta,
            BTreeMap::from([
                ("cutover-color".to_owned(), "green".to_owned()),
                ("cutover-instance".to_owned(), "cutover".to_owned()),
                ("cutover-revision".to_owned(), "rev-green".to_owned()),
                ("cutover-service".to_owned(), "books".to_owned()),
            ])
        );
        let check = first.check.as_ref().unwrap();
        assert_eq!(check.http, "http://172.18.0.4:8080/cgi-bin/health");
        assert_eq!(
            (check.interval, check.timeout),
            (CHECK_INTERVAL, CHECK_TIMEOUT)
        );
        assert_eq!(check.initial_status, Some(CheckStatus::Passing));
        let second = registrations[1].check.as_ref().unwrap();
        assert_eq!(second.http, "http://172.18.0.5:8080/cgi-bin/health");
        assert_eq!(
            second.initial_status, None,
            "not ready: Consul's default, critical"
        );
    }

    /// A registration of the same name by a user, without our Meta.
    fn foreign(id: &str) -> AgentService {
        AgentService {
            id: id.to_owned(),
            name: SERVICE.to_owned(),
            tags: vec!["live".to_owned()],
            address: "10.9.9.9".to_owned(),
            port: 80,
            meta: BTreeMap::new(),
            check: None,
        }
    }

    #[test]
    fn plans_touch_only_our_registrations() {
        use Color::{Blue, Green};
        let blue = [replica(Blue, 1, "10.0.0.1"), replica(Blue, 2, "10.0.0.2")];
        let both = [
            replica(Blue, 1, "10.0.0.1"),
            replica(Blue, 2, "10.0.0.2"),
            replica(Green, 1, "10.0.1.1"),
        ];
        let read_back = |r: Vec<AgentService>| r.iter().map(as_read_back).collect::<Vec<_>>();
        let live_blue = read_back(desired(&blue, Some(Blue), None));
        let mut moved = blue.clone();
        moved[1].address = Some("10.0.0.22".to_owned());
        let mut other_instance = live_blue[0].clone();
        other_instance
            .meta
            .insert(META_INSTANCE.to_owned(), "staging".to_owned());
        other_instance.id = "staging-books-blue-1".to_owned();
        let mut other_service = live_blue[0].clone();
        other_service
            .meta
            .insert(META_SERVICE.to_owned(), "films".to_owned());
        other_service.id = "films-blue-1".to_owned();

        struct Case {
            name: &'static str,
            current: Vec<AgentService>,
            desired: Vec<AgentService>,
            register: Vec<&'static str>,
            deregister: Vec<&'static str>,
            conflicts: Vec<&'static str>,
        }
        let cases = [
            Case {
                name: "first registration",
                current: vec![foreign("web-1")],
                desired: desired(&blue, Some(Blue), None),
                register: vec!["books-blue-1", "books-blue-2"],
                deregister: vec![],
                conflicts: vec![],
            },
            Case {
                name: "nothing changed",
                current: live_blue.clone(),
                desired: desired(&blue, Some(Blue), None),
                register: vec![],
                deregister: vec![],
                conflicts: vec![],
            },
            Case {
                name: "a preview color appears",
                current: live_blue.clone(),
                desired: desired(&both, Some(Blue), Some(Green)),
                register: vec!["books-green-1"],
                deregister: vec![],
                conflicts: vec![],
            },
            Case {
                name: "the switch re-tags both colors",
                current: read_back(desired(&both, Some(Blue), Some(Green))),
                desired: desired(&both, Some(Green), None),
                register: vec!["books-blue-1", "books-blue-2", "books-green-1"],
                deregister: vec![],
                conflicts: vec![],
            },
            Case {
                name: "a new address",
                current: live_blue.clone(),
                desired: desired(&moved, Some(Blue), None),
                register: vec!["books-blue-2"],
                deregister: vec![],
                conflicts: vec![],
            },
            Case {
                name: "the drained color is gone",
                current: read_back(desired(&both, Some(Green), None)),
                desired: desired(&both[2..], Some(Green), None),
                register: vec![],
                deregister: vec!["books-blue-1", "books-blue-2"],
                conflicts: vec![],
            },
            Case {
                name: "the service is deleted; others' registrations stay",
                current: [
                    live_blue.clone(),
                    vec![
                        foreign("books-manual"),
                        other_instance.clone(),
                        other_service.clone(),
                    ],
                ]
                .concat(),
                desired: vec![],
                register: vec![],
                deregister: vec!["books-blue-1", "books-blue-2"],
                conflicts: vec![],
            },
            Case {
                name: "a user's registration holds one of our IDs",
                current: vec![foreign("books-blue-1")],
                desired: desired(&blue, Some(Blue), None),
                register: vec!["books-blue-2"],
                deregister: vec![],
                conflicts: vec!["books-blue-1"],
            },
        ];
        for case in cases {
            let plan = plan_catalog(&case.current, &case.desired, SERVICE, INSTANCE);
            let ids = |r: &[AgentService]| r.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
            assert_eq!(ids(&plan.to_register), case.register, "{}", case.name);
            assert_eq!(plan.to_deregister, case.deregister, "{}", case.name);
            assert_eq!(plan.conflicts, case.conflicts, "{}", case.name);
        }
    }

    /// Plays a plan against a simulated agent, as `sync` does against the real one.
    fn apply(current: &[AgentService], plan: &CatalogPlan) -> Vec<AgentService> {
        let mut by_id: BTreeMap<String, AgentService> =
            current.iter().map(|r| (r.id.clone(), r.clone())).collect();
        for registration in &plan.to_register {
            by_id.insert(registration.id.clone(), as_read_back(registration));
        }
        for id in &plan.to_deregister {
            by_id.remove(id);
        }
        by_id.into_values().collect()
    }

    #[test]
    fn planning_again_after_applying_yields_nothing() {
        use Color::{Blue, Green};
        let mut revived = replica(Blue, 2, "10.0.0.2");
        revived.revision = "rev-old".to_owned();
        let worlds: Vec<(Vec<Container>, Option<Color>, Option<Color>)> = vec![
            (vec![], None, None),
            (vec![replica(Blue, 1, "10.0.0.1")], None, None),
            (
                vec![replica(Blue, 1, "10.0.0.1"), revived],
                Some(Blue),
                None,
            ),
            (
                vec![replica(Blue, 1, "10.0.0.1"), replica(Green, 1, "10.0.1.1")],
                Some(Blue),
                Some(Green),
            ),
            (
                vec![replica(Blue, 1, "10.0.0.1"), replica(Green, 1, "10.0.1.1")],
                Some(Green),
                None,
            ),
            (vec![replica(Green, 1, "10.0.1.7")], Some(Green), None),
        ];
        let start = vec![foreign("books-manual"), foreign("books-green-1")];
        for (from, _, _) in &worlds {
            for (to, live, preview) in &worlds {
                let mut current = start.clone();
                let plan = plan_catalog(
                    &current,
                    &desired(from, Some(Blue), None),
                    SERVICE,
                    INSTANCE,
                );
                current = apply(&current, &plan);
                let wanted = desired(to, *live, *preview);
                let plan = plan_catalog(&current, &wanted, SERVICE, INSTANCE);
                current = apply(&current, &plan);
                let again = plan_catalog(&current, &wanted, SERVICE, INSTANCE);
                assert!(again.is_empty(), "{from:?} -> {to:?}: {again:?}");
                for user in &start {
                    assert!(current.contains(user), "{user:?} was touched");
                }
            }
        }
    }

    #[test]
    fn a_replica_is_registered_once_ready_and_stays_registered() {
        use Color::Blue;
        let mut not_ready = [replica(Blue, 1, "10.0.0.1"), replica(Blue, 2, "10.0.0.2")];
        not_ready[1].ready = false;
        let plan = plan_catalog(
            &[],
            &desired(&not_ready, Some(Blue), None),
            SERVICE,
            INSTANCE,
        );
        let ids = |r: &[AgentService]| r.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&plan.to_register), ["books-blue-1"]);
        assert_eq!(plan.waiting, ["books-blue-2"]);
        // Registered, then no longer ready: left as it is, the agent's check tells.
        let current: Vec<AgentService> = desired(&[replica(Blue, 2, "10.0.0.2")], Some(Blue), None)
            .iter()
            .map(as_read_back)
            .collect();
        let plan = plan_catalog(
            &current,
            &desired(&not_ready, Some(Blue), None),
            SERVICE,
            INSTANCE,
        );
        assert_eq!(ids(&plan.to_register), ["books-blue-1"]);
        assert!(
            plan.waiting.is_empty() && plan.to_deregister.is_empty(),
            "{plan:?}"
        );
    }

    #[test]
    fn live_is_handed_over_only_when_someone_loses_it() {
        use Color::{Blue, Green};
        let both = [
            replica(Blue, 1, "10.0.0.1"),
            replica(Green, 1, "10.0.1.1"),
            replica(Green, 2, "10.0.1.2"),
        ];
        let read_back = |r: Vec<AgentService>| r.iter().map(as_read_back).collect::<Vec<_>>();
        let handover = |current: &[AgentService], wanted: &[AgentService]| {
            let plan = plan_catalog(current, wanted, SERVICE, INSTANCE);
            handover_ids(current, wanted, &plan, SERVICE, INSTANCE)
        };
        let blue_live = read_back(desired(&both, Some(Blue), Some(Green)));
        // The switch: blue keeps live until both green replicas pass under live.
        assert_eq!(
            handover(&blue_live, &desired(&both, Some(Green), None)),
            ["books-green-1", "books-green-2"]
        );
        // A green replica the daemon does not count ready is not waited for.
        let mut one_ready = both.clone();
        one_ready[2].ready = false;
        assert_eq!(
            handover(&blue_live, &desired(&one_ready, Some(Green), None)),
            ["books-green-1"]
        );
        // Nobody loses live: a first deploy, a scale-up, the preview appearing.
        assert!(handover(&[], &desired(&both, Some(Green), None)).is_empty());
        assert!(handover(&blue_live, &desired(&both, Some(Blue), None)).is_empty());
        // The live color deleted: nothing to hand over to.
        assert!(handover(&blue_live, &[]).is_empty());
    }

    #[test]
    fn replicas_leaving_service_are_named_before_the_steps() {
        let target = |name: &str, color: Option<Color>| Target {
            id: format!("id-{name}"),
            name: name.to_owned(),
            color,
            revision: "r1".to_owned(),
        };
        let steps = [
            Step::Switch { to: Color::Green },
            Step::Stop {
                target: target("books-blue-2", Some(Color::Blue)),
            },
            Step::Rename {
                target: target("books-blue-1", Some(Color::Blue)),
                to: "books-rr1-1".to_owned(),
            },
            Step::Remove {
                target: target("books-worker", None),
            },
            Step::Remove {
                target: target("books-blue-2", Some(Color::Blue)),
            },
            Step::Start {
                target: target("books-green-1", Some(Color::Green)),
            },
        ];
        assert_eq!(
            ids_to_deregister_before(&steps),
            vec!["books-blue-1".to_owned(), "books-blue-2".to_owned()]
        );
    }
}
