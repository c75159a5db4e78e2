//! A model-based test of the planner: random sequences of events against a simulated engine,
//! proxy and KV, with the planner's invariants checked after every reconcile.
//!
//! The simulation carries plans out the way the controller does: foreground steps at once
//! (a name taken on the engine is a bug of the planner, not a retry), stops and removals in
//! the background (the container is `stopping` until an event completes it, and a daemon
//! restart loses track of them), the switch through a proxy that refuses a color its checks
//! do not see UP, the routes set to the status' live color after each plan, and a failed step
//! leaving the stored status degraded.
//!
//! Invariants (see `docs/reconciler.md`):
//! 1. `plan()` never panics.
//! 2. With a blue/green or canary spec, no plan retires a replica of the color the proxy
//!    serves, in a slot the spec still wants, running the revision it serves; a canary's
//!    share counts as serving (in the table the plan publishes, and in the one a lagging
//!    proxy still serves), so neither color is retired while it gets requests.
//! 3. The live color a status names has containers in play; the preview is not the live one.
//! 4. No step takes a container name the engine already has.
//! 5. Once events stop and replicas are healthy, the plan empties within a bounded number
//!    of passes, the phase is `Available` (the spec's revision live with every replica
//!    ready, nothing else running), `Preview` waiting for a promotion, or
//!    `Degraded`/`Invalid` with a reason, and at most
//!    `revisionHistoryLimit` old revisions are kept.
//!
//! `CUTOVER_MODEL_CASES` (default 20000) and `CUTOVER_MODEL_SEED` choose the campaign; a long
//! soak is `CUTOVER_MODEL_CASES=1000000 cargo test --release --test planner_model`. A failure
//! prints the seed and the shrunk sequence.

use std::collections::{BTreeMap, BTreeSet};

use cutover::observed::{Container, Observed, Role, replica_name};
use cutover::plan::{self, Deletion, Desired, Input, Plan, Policy, ProxyView, Step, Unreadable};
use cutover::spec::{Diagnostics, Service, parse_service};
use cutover::status::{Action, Phase, Rejected, Request, Status};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestError, TestRunner};

const NAME: &str = "books";
const SECOND: u64 = 1000;

/// The specs a sequence picks from.
struct Pool {
    specs: Vec<(Result<Service, Diagnostics>, &'static str)>,
}

fn manifest(body: &str) -> String {
    format!("apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {{name: {NAME}}}\nspec:\n{body}")
}

impl Pool {
    fn new() -> Pool {
        let texts: [(&str, &str); 14] = [
            ("  image: books:1\n  replicas: 2\n", "v1 x2"),
            ("  image: books:2\n  replicas: 2\n", "v2 x2"),
            ("  image: books:2\n  replicas: 3\n", "v2 x3"),
            ("  image: books:1\n  replicas: 1\n", "v1 x1"),
            (
                "  image: books:3\n  replicas: 2\n  health: {path: /never}\n",
                "v3 never healthy",
            ),
            (
                "  image: books:3\n  replicas: 2\n  health: {path: /health}\n",
                "v3 fixed health path",
            ),
            (
                "  image: books:2\n  replicas: 2\n  strategy: {blueGreen: {autoPromote: false, previewReplicas: 1}}\n",
                "v2 manual promote",
            ),
            (
                "  image: books:1\n  replicas: 2\n  strategy: {blueGreen: {autoPromote: false}}\n",
                "v1 manual promote",
            ),
            (
                "  image: books:3\n  replicas: 1\n  strategy: {recreate: {}}\n",
                "v3 recreate",
            ),
            ("  image: books:1\n  replica: 2\n", "invalid"),
            (
                "  image: books:2\n  replicas: 2\n  strategy: {blueGreen: {scaleDownDelay: 1s, analysis: {window: 10s, maxErrorRatio: 0.1}}}\n",
                "v2 judged by its traffic",
            ),
            (
                "  image: books:1\n  replicas: 2\n  strategy: {blueGreen: {analysis: {window: 30s, maxResponseTime: 300ms}}}\n",
                "v1 judged by its traffic",
            ),
            (
                "  image: books:2\n  replicas: 2\n  strategy: {canary: {scaleDownDelay: 1s, steps: [{weight: 10}, {pause: 10s}, {weight: 50}, {analysis: {window: 10s, maxErrorRatio: 0.1}}]}}\n",
                "v2 canary judged at 50%",
            ),
            (
                "  image: books:3\n  replicas: 2\n  strategy: {canary: {steps: [{weight: 20}, {pause: {}}]}}\n",
                "v3 canary until promoted",
            ),
        ];
        Pool {
            specs: texts
                .iter()
                .map(|(body, label)| (parse_service("books.yaml", &manifest(body)), *label))
                .collect(),
        }
    }
}

/// Something that happens to the world.
#[derive(Debug, Clone)]
enum Event {
    /// A spec from the pool is written (a new ModifyIndex).
    Apply(usize),
    /// The spec key is deleted.
    Delete,
    /// Replica `i` (modulo the replicas) answers its health check / stops answering.
    Heal(usize),
    Sicken(usize),
    /// Every replica that can be healthy is.
    HealAll,
    /// HAProxy's checks catch up with the replicas' health.
    ProxyChecks,
    /// A second proxy stops following the route table (frozen) / catches up.
    ProxyLags,
    ProxyCatchesUp,
    /// A container dies / is removed by hand.
    Die(usize),
    RemoveByHand(usize),
    /// A background stop or removal completes.
    BackgroundDone(usize),
    /// The next Docker step fails.
    FailNextStep,
    /// The daemon restarts: background work and in-memory state are lost.
    Restart,
    /// The status key is deleted / filled with junk.
    LoseStatus,
    CorruptStatus,
    /// `cutover promote|rollback|abort`, with the revision the CLI would read from the
    /// status, or a stale one.
    Request(Action, bool),
    /// Junk in the request key.
    CorruptRequest,
    /// Time passes.
    Later(u64),
    /// The proxies count the new color's traffic in an open bake window: good, or half of
    /// it failing and slow.
    Traffic(bool),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (0usize..14).prop_map(Event::Apply),
        1 => Just(Event::Delete),
        4 => (0usize..8).prop_map(Event::Heal),
        1 => (0usize..8).prop_map(Event::Sicken),
        3 => Just(Event::HealAll),
        3 => Just(Event::ProxyChecks),
        1 => Just(Event::ProxyLags),
        2 => Just(Event::ProxyCatchesUp),
        1 => (0usize..8).prop_map(Event::Die),
        1 => (0usize..8).prop_map(Event::RemoveByHand),
        3 => (0usize..8).prop_map(Event::BackgroundDone),
        1 => Just(Event::FailNextStep),
        1 => Just(Event::Restart),
        1 => Just(Event::LoseStatus),
        1 => Just(Event::CorruptStatus),
        2 => (
            prop_oneof![
                Just(Action::Promote),
                Just(Action::Rollback),
                Just(Action::Abort),
                Just(Action::Retry)
            ],
            any::<bool>()
        )
            .prop_map(|(a, stale)| Event::Request(a, stale)),
        1 => Just(Event::CorruptRequest),
        3 => prop_oneof![
            Just(200u64),
            Just(2 * SECOND),
            Just(11 * SECOND),
            Just(121 * SECOND)
        ]
        .prop_map(Event::Later),
        2 => any::<bool>().prop_map(Event::Traffic),
    ]
}

/// The stored status: a value, nothing, or junk.
#[derive(Debug, Clone)]
enum Stored {
    Value(Box<Status>),
    Missing,
    Junk,
}

/// The simulated world.
struct Sim<'p> {
    pool: &'p Pool,
    /// The spec in KV: pool index and ModifyIndex, or none.
    spec: Option<(usize, u64)>,
    next_index: u64,
    containers: Vec<Container>,
    /// Which containers answer their health check.
    healthy: BTreeSet<String>,
    images: BTreeSet<String>,
    status: Stored,
    request: Option<Result<Request, String>>,
    proxy: ProxyView,
    /// The revision the proxy's live color served when it was switched to.
    proxy_revision: Option<String>,
    /// While a second proxy lags: the live color and revision it still serves.
    lagging: Option<(Option<cutover::status::Color>, Option<String>)>,
    /// While a second proxy lags: the canary's share it still serves (color and revision).
    lagging_split: Option<(cutover::status::Color, String)>,
    /// The revision the proxy's canary split sends its share to.
    split_revision: Option<String>,
    /// Background stops (false) and removals (true) under way, by container id.
    background: BTreeMap<String, bool>,
    fail_next_step: bool,
    now_ms: u64,
    next_id: u64,
    next_request: u64,
    /// Container ids that ever existed, for the "never healthy" revisions.
    never_healthy: BTreeSet<String>,
}

impl<'p> Sim<'p> {
    fn new(pool: &'p Pool) -> Sim<'p> {
        Sim {
            pool,
            spec: None,
            next_index: 10,
            containers: Vec::new(),
            healthy: BTreeSet::new(),
            images: ["books:1".to_owned(), "books:2".to_owned()].into(),
            status: Stored::Missing,
            request: None,
            proxy: ProxyView::default(),
            proxy_revision: None,
            lagging: None,
            lagging_split: None,
            split_revision: None,
            background: BTreeMap::new(),
            fail_next_step: false,
            now_ms: 1_700_000_000_000,
            next_id: 0,
            next_request: 0,
            never_healthy: BTreeSet::new(),
        }
    }

    fn service(&self) -> Option<&'p Service> {
        let (i, _) = self.spec?;
        self.pool.specs[i].0.as_ref().ok()
    }

    fn status(&self) -> Option<&Status> {
        match &self.status {
            Stored::Value(s) => Some(&**s),
            _ => None,
        }
    }

    fn observed(&self) -> Observed {
        let mut containers = self.containers.clone();
        for c in &mut containers {
            c.ready = c.running && self.healthy.contains(&c.id);
            c.stopping = self.background.contains_key(&c.id);
        }
        Observed {
            containers,
            images_present: self.images.clone(),
        }
    }

    fn plan(&self) -> Plan {
        let observed = self.observed();
        let (desired_owned, index) = match self.spec {
            Some((i, index)) => (Some(&self.pool.specs[i].0), index),
            None => (None, 0),
        };
        let desired = match desired_owned {
            Some(Ok(service)) => Desired::Valid { service, index },
            Some(Err(diagnostics)) => Desired::Invalid { diagnostics, index },
            None => Desired::Absent,
        };
        let request = match &self.request {
            Some(Ok(r)) => Some(r),
            _ => None,
        };
        let proxy = ProxyView {
            lagging: self
                .lagging
                .iter()
                .map(|_| "p2 (serves an older table)".to_owned())
                .collect(),
            ..self.proxy.clone()
        };
        plan::plan(&Input {
            name: NAME,
            desired,
            observed: &observed,
            status: self.status(),
            unreadable: Unreadable {
                status: matches!(self.status, Stored::Junk).then_some("expected value"),
                request: matches!(self.request, Some(Err(_)))
                    .then_some((self.next_request, "missing field `id`")),
            },
            request,
            now_ms: self.now_ms,
            policy: Policy {
                allow_mass_deletion: true,
                ..Policy::default()
            },
            deletion: Deletion::default(),
            proxy: Some(&proxy),
        })
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        self.containers.iter().position(|c| c.id == id)
    }

    fn nth_container(&self, i: usize) -> Option<String> {
        (!self.containers.is_empty()).then(|| self.containers[i % self.containers.len()].id.clone())
    }

    fn happen(&mut self, event: &Event) {
        match event {
            Event::Apply(i) => {
                self.next_index += 1;
                self.spec = Some((*i, self.next_index));
            }
            Event::Delete => self.spec = None,
            Event::Heal(i) => {
                if let Some(id) = self.nth_container(*i)
                    && !self.never_healthy.contains(&id)
                {
                    self.healthy.insert(id);
                }
            }
            Event::Sicken(i) => {
                if let Some(id) = self.nth_container(*i) {
                    self.healthy.remove(&id);
                }
            }
            Event::HealAll => self.heal_all(),
            Event::ProxyChecks => self.proxy_checks(),
            Event::ProxyLags => {
                if self.lagging.is_none() && self.proxy.known {
                    self.lagging = Some((self.proxy.live, self.proxy_revision.clone()));
                    self.lagging_split = self
                        .proxy
                        .split
                        .map(|s| s.color)
                        .zip(self.split_revision.clone());
                }
            }
            Event::ProxyCatchesUp => {
                self.lagging = None;
                self.lagging_split = None;
            }
            Event::Die(i) => {
                if let Some(id) = self.nth_container(*i)
                    && let Some(at) = self.index_of(&id)
                {
                    self.containers[at].running = false;
                    self.healthy.remove(&id);
                }
            }
            Event::RemoveByHand(i) => {
                if let Some(id) = self.nth_container(*i) {
                    self.containers.retain(|c| c.id != id);
                    self.healthy.remove(&id);
                    self.background.remove(&id);
                }
            }
            // The controller lets a stop go only once every proxy serves the table without
            // the replica.
            Event::BackgroundDone(i) => {
                let ids: Vec<String> = self.background.keys().cloned().collect();
                if !ids.is_empty() && self.lagging.is_none() {
                    let id = ids[i % ids.len()].clone();
                    self.finish_background(&id);
                }
            }
            Event::FailNextStep => self.fail_next_step = true,
            Event::Restart => self.background.clear(),
            Event::LoseStatus => self.status = Stored::Missing,
            Event::CorruptStatus => self.status = Stored::Junk,
            Event::Request(action, stale) => {
                self.next_request += 1;
                let status = self.status();
                let revision = if *stale {
                    "0000000000".to_owned()
                } else if *action == Action::Retry {
                    status
                        .and_then(|s| s.rejected.as_ref())
                        .map_or_else(|| "0000000000".to_owned(), |r| r.revision.clone())
                } else {
                    let color = match action {
                        Action::Rollback => status.and_then(|s| s.active_color),
                        _ => status.and_then(|s| s.preview_color),
                    };
                    color
                        .and_then(|c| status?.colors.get(&c))
                        .map_or_else(|| "0000000000".to_owned(), |c| c.revision.clone())
                };
                self.request = Some(Ok(Request {
                    id: format!("r{}", self.next_request),
                    action: *action,
                    revision,
                    requested_at: String::new(),
                }));
            }
            Event::CorruptRequest => {
                self.next_request += 1;
                self.request = Some(Err("junk".to_owned()));
            }
            Event::Later(ms) => self.now_ms += ms,
            Event::Traffic(bad) => {
                // Counters exist only while a window is open (the route table's watch).
                let open = self
                    .status()
                    .and_then(|s| s.analysis.as_ref())
                    .is_some_and(|a| a.result == cutover::status::AnalysisResult::Running);
                self.proxy.traffic = open.then_some(cutover::status::TrafficFigures {
                    requests: 400,
                    errors: if *bad { 200 } else { 0 },
                    response_time_ms: Some(if *bad { 900 } else { 10 }),
                    proxies: 1,
                });
            }
        }
    }

    fn heal_all(&mut self) {
        for c in &self.containers {
            if c.running && !self.never_healthy.contains(&c.id) {
                self.healthy.insert(c.id.clone());
            }
        }
    }

    /// HAProxy's checks see the in-play running healthy replicas UP.
    fn proxy_checks(&mut self) {
        self.proxy.up = self
            .containers
            .iter()
            .filter(|c| c.running && !c.is_archived() && self.healthy.contains(&c.id))
            .filter_map(|c| Some((c.color()?, c.slot()?)))
            .collect();
    }

    fn finish_background(&mut self, id: &str) {
        match self.background.remove(id) {
            Some(true) => {
                self.containers.retain(|c| c.id != id);
                self.healthy.remove(id);
            }
            Some(false) => {
                if let Some(at) = self.index_of(id) {
                    self.containers[at].running = false;
                }
                self.healthy.remove(id);
            }
            None => {}
        }
    }

    /// One reconcile: plan, check the invariants on the plan, carry it out. Returns the plan.
    fn reconcile(&mut self) -> Result<Plan, String> {
        let before_proxy = self.proxy.clone();
        let plan = self.plan();
        self.check_plan(&plan, &before_proxy)?;
        let stored = self.status().cloned();
        let index = plan.status.as_ref().map_or(0, |s| s.observed_index);
        let mut failed = None;
        for (n, step) in plan.steps.iter().enumerate() {
            if self.fail_next_step && !matches!(step, Step::Switch { .. }) {
                self.fail_next_step = false;
                failed = Some(format!("step {n} ({step}) failed"));
                break;
            }
            if let Err(e) = self.execute(step) {
                if e.starts_with("BUG") {
                    return Err(e);
                }
                failed = Some(e);
                break;
            }
        }
        match failed {
            Some(message) => {
                let before = stored.unwrap_or_default();
                self.status = Stored::Value(Box::new(plan::failed(
                    &before,
                    index,
                    "StepFailed",
                    &message,
                    self.now_ms,
                )));
            }
            None => {
                if plan.gone {
                    self.status = Stored::Missing;
                }
                if let Some(status) = &plan.status {
                    self.status = Stored::Value(Box::new(status.clone()));
                }
                // The controller makes the routes follow the status it wrote.
                if self.service().is_some()
                    && let Some(status) = &plan.status
                {
                    if self.proxy.live != status.active_color {
                        self.proxy_revision = status
                            .active_color
                            .and_then(|c| status.colors.get(&c))
                            .map(|c| c.revision.clone());
                    }
                    self.proxy.live = status.active_color;
                    self.proxy.known = true;
                    self.proxy.split = cutover::traffic::split(Some(status))
                        .filter(|s| status.active_color.is_some_and(|l| l != s.color));
                    self.split_revision = self
                        .proxy
                        .split
                        .and(status.canary.as_ref())
                        .map(|c| c.revision.clone());
                }
                if plan.gone {
                    self.proxy = ProxyView::default();
                    self.proxy_revision = None;
                    self.split_revision = None;
                }
            }
        }
        self.check_world()?;
        Ok(plan)
    }

    /// Carries out one step like the adapters would.
    fn execute(&mut self, step: &Step) -> Result<(), String> {
        match step {
            Step::PullImage { image } => {
                self.images.insert(image.clone());
            }
            Step::CreateReplica {
                color,
                slot,
                revision,
            } => {
                let service = self.service().ok_or("BUG: a create without a valid spec")?;
                if !self.images.contains(&service.spec.image) {
                    return Err(format!("image {} is not on the engine", service.spec.image));
                }
                let name = replica_name(NAME, *color, *slot);
                if self.containers.iter().any(|c| c.name == name) {
                    return Err(format!("BUG: create {name}: the name is taken"));
                }
                self.next_id += 1;
                let id = format!("c{:06}", self.next_id);
                if service.spec.health.path == "/never" {
                    self.never_healthy.insert(id.clone());
                }
                self.containers.push(Container {
                    id,
                    name,
                    service: NAME.to_owned(),
                    role: Role::Replica {
                        color: *color,
                        slot: *slot,
                    },
                    revision: revision.clone(),
                    spec_index: self.spec.map_or(0, |(_, i)| i),
                    image: service.spec.image.clone(),
                    running: true,
                    created_ms: self.now_ms / 1000 * 1000,
                    address: Some(format!("10.0.0.{}", self.next_id % 250)),
                    ready: false,
                    stopping: false,
                    port: Some(service.spec.port),
                    health: Some(service.spec.health.clone()),
                });
            }
            Step::CreateSideTarget { .. } => return Err("BUG: no side targets here".into()),
            Step::Start { target } => {
                let at = self.index_of(&target.id).ok_or("no such container")?;
                self.containers[at].running = true;
            }
            Step::Stop { target } => {
                self.index_of(&target.id).ok_or("no such container")?;
                self.background.entry(target.id.clone()).or_insert(false);
            }
            Step::Remove { target } => {
                if self.index_of(&target.id).is_some() {
                    self.background.insert(target.id.clone(), true);
                }
            }
            Step::Rename { target, to } => {
                if self
                    .containers
                    .iter()
                    .any(|c| &c.name == to && c.id != target.id)
                {
                    return Err(format!(
                        "BUG: rename {} to {to}: the name is taken",
                        target.name
                    ));
                }
                let at = self.index_of(&target.id).ok_or("no such container")?;
                self.containers[at].name = to.clone();
            }
            Step::Switch { to } => {
                let not_up = self.containers.iter().any(|c| {
                    c.color() == Some(*to)
                        && !c.is_archived()
                        && c.running
                        && !self.background.contains_key(&c.id)
                        && !c.slot().is_some_and(|s| self.proxy.up.contains(&(*to, s)))
                });
                if not_up {
                    return Err(format!("HAProxy sees {to} DOWN; not switching"));
                }
                self.proxy.live = Some(*to);
                self.proxy_revision = self
                    .containers
                    .iter()
                    .find(|c| c.color() == Some(*to) && !c.is_archived())
                    .map(|c| c.revision.clone());
            }
        }
        Ok(())
    }

    /// Invariant 2 (and the switch being last), on a plan before it is carried out.
    fn check_plan(&self, plan: &Plan, proxy: &ProxyView) -> Result<(), String> {
        if let Some(at) = plan
            .steps
            .iter()
            .position(|s| matches!(s, Step::Switch { .. }))
            && at + 1 != plan.steps.len()
        {
            return Err(format!(
                "the switch is not the last step: {:?}",
                describe(plan)
            ));
        }
        let Some(service) = self.service().filter(|s| s.release().is_some()) else {
            return Ok(());
        };
        let mut served = vec![(proxy.live, self.proxy_revision.clone())];
        served.extend(self.lagging.clone());
        // A canary's share counts as serving: in the table this plan publishes, and in the
        // one a lagging proxy still serves.
        let split = plan.status.as_ref().and_then(|status| {
            let share = cutover::traffic::split(Some(status))?;
            let canary = status.canary.as_ref()?;
            (status.active_color != Some(share.color))
                .then(|| (share.color, canary.revision.clone()))
        });
        for (color, revision) in split.into_iter().chain(self.lagging_split.clone()) {
            served.push((Some(color), Some(revision)));
        }
        for (live, serving) in served {
            let (Some(live), Some(serving)) = (live, serving) else {
                continue;
            };
            self.check_serving(plan, service, live, &serving)?;
        }
        Ok(())
    }

    fn check_serving(
        &self,
        plan: &Plan,
        service: &Service,
        live: cutover::status::Color,
        serving: &str,
    ) -> Result<(), String> {
        for step in &plan.steps {
            let (Step::Stop { target } | Step::Remove { target } | Step::Rename { target, .. }) =
                step
            else {
                continue;
            };
            let Some(c) = self.containers.iter().find(|c| c.id == target.id) else {
                continue;
            };
            if c.color() == Some(live)
                && !c.is_archived()
                && c.running
                && c.revision == serving
                && c.slot().is_some_and(|s| s <= service.spec.replicas)
            {
                return Err(format!(
                    "`{step}` retires {} of the color the proxy serves ({live}, revision {serving})",
                    c.name
                ));
            }
        }
        Ok(())
    }

    /// Invariants 3 and 4 on the world after a reconcile (the engine refusing a taken name
    /// is checked where the step is carried out).
    fn check_world(&self) -> Result<(), String> {
        let mut names = BTreeSet::new();
        for c in &self.containers {
            if !names.insert(&c.name) {
                return Err(format!("two containers are named {}", c.name));
            }
        }
        if let Some(status) = self.status() {
            if status.preview_color.is_some() && status.preview_color == status.active_color {
                return Err(format!(
                    "the preview color is the live one: {:?}",
                    status.active_color
                ));
            }
        }
        Ok(())
    }

    /// Invariant 5: with the events stopped and everything healthy, the plan empties and the
    /// service settles.
    fn settle(&mut self) -> Result<(), String> {
        self.fail_next_step = false;
        self.lagging = None;
        self.lagging_split = None;
        let mut last = None;
        for _pass in 0..40 {
            self.heal_all();
            self.proxy_checks();
            let ids: Vec<String> = self.background.keys().cloned().collect();
            for id in ids {
                self.finish_background(&id);
            }
            let plan = self.reconcile()?;
            let quiet = plan.steps.is_empty();
            if quiet && plan.requeue_after_ms.is_none() {
                return self.check_settled(&plan);
            }
            if let Some(after) = plan.requeue_after_ms {
                self.now_ms += after;
            }
            last = Some(plan);
        }
        Err(format!(
            "did not settle in 40 passes; last plan: {:?}, phase {:?}, requeue {:?}",
            last.as_ref().map(describe),
            last.as_ref()
                .and_then(|p| p.status.as_ref())
                .map(|s| s.phase),
            last.as_ref().map(|p| p.requeue_after_ms)
        ))
    }

    fn check_settled(&self, plan: &Plan) -> Result<(), String> {
        let Some((i, _)) = self.spec else {
            // With neither spec nor status the containers are orphans: reported, kept.
            let orphans = plan
                .warnings
                .iter()
                .any(|w| w.starts_with("orphaned containers"));
            return if self.containers.is_empty() || orphans {
                Ok(())
            } else {
                Err(format!(
                    "the spec is gone but containers remain: {:?}",
                    self.names()
                ))
            };
        };
        let status = plan
            .status
            .as_ref()
            .ok_or("no status for a service with a spec")?;
        let degraded = status.condition("Degraded");
        match status.phase {
            Some(Phase::Available) => {
                let service = self.pool.specs[i]
                    .0
                    .as_ref()
                    .map_err(|_| "Available with an invalid spec")?;
                let live = status
                    .active_color
                    .ok_or("Available without a live color")?;
                let revision = cutover::revision::of_service(service);
                if status.colors.get(&live).map(|c| &c.revision) != Some(&revision) {
                    return Err(format!(
                        "Available but {live} does not run the spec's revision"
                    ));
                }
                if self.proxy.live != Some(live) {
                    return Err(format!(
                        "Available on {live} but the proxy routes {:?}",
                        self.proxy.live
                    ));
                }
                if self.proxy.split.is_some() || status.canary.is_some() {
                    return Err(format!(
                        "Available with a canary still in progress: {:?}",
                        status.canary
                    ));
                }
                let ready = self
                    .containers
                    .iter()
                    .filter(|c| c.color() == Some(live) && !c.is_archived() && c.running)
                    .count();
                if ready != service.spec.replicas as usize {
                    return Err(format!(
                        "Available with {ready} replicas running, not {}",
                        service.spec.replicas
                    ));
                }
                let stray: Vec<&str> = self
                    .containers
                    .iter()
                    .filter(|c| c.running && (c.color() != Some(live) || c.is_archived()))
                    .map(|c| c.name.as_str())
                    .collect();
                if !stray.is_empty() {
                    return Err(format!("settled with other containers running: {stray:?}"));
                }
                let limit = service.release().map_or(0, |r| r.revision_history_limit) as usize;
                let kept: BTreeSet<&str> = self
                    .containers
                    .iter()
                    .filter(|c| c.is_archived() && c.revision != revision)
                    .map(|c| c.revision.as_str())
                    .collect();
                if kept.len() > limit {
                    return Err(format!("{} old revisions kept, limit {limit}", kept.len()));
                }
                Ok(())
            }
            Some(Phase::Degraded | Phase::Invalid)
                if degraded.is_some_and(|d| d.status == "True" && !d.reason.is_empty()) =>
            {
                Ok(())
            }
            // Waiting for a person (autoPromote off), the live color serving meanwhile.
            Some(Phase::Preview)
                if status
                    .condition("Progressing")
                    .is_some_and(|p| p.reason == "WaitingForPromotion")
                    && status.preview_color.is_some() =>
            {
                Ok(())
            }
            other => Err(format!(
                "settled in phase {other:?} (conditions {:?})",
                status.conditions
            )),
        }
    }

    fn names(&self) -> Vec<String> {
        self.containers.iter().map(|c| c.name.clone()).collect()
    }
}

fn describe(plan: &Plan) -> Vec<String> {
    plan.steps.iter().map(ToString::to_string).collect()
}

/// Runs one sequence: after each event the daemon reconciles until it has no foreground
/// step left (at most a few passes), then everything settles.
fn run<'p>(pool: &'p Pool, events: &[Event]) -> Result<Sim<'p>, String> {
    let trace = std::env::var_os("CUTOVER_MODEL_TRACE").is_some();
    let mut sim = Sim::new(pool);
    for (n, event) in events.iter().enumerate() {
        sim.happen(event);
        for _ in 0..3 {
            let plan = sim
                .reconcile()
                .map_err(|e| format!("after event {n} ({event:?}): {e}"))?;
            if trace {
                eprintln!(
                    "{n} {event:?}: {:?} phase {:?} live {:?} proxy {:?} lagging {:?}\n   {:?}",
                    describe(&plan),
                    plan.status.as_ref().and_then(|s| s.phase),
                    plan.status.as_ref().and_then(|s| s.active_color),
                    sim.proxy.live,
                    sim.lagging,
                    sim.names()
                );
            }
            if plan.steps.iter().all(Step::is_background) {
                break;
            }
        }
    }
    sim.settle().map_err(|e| format!("settling: {e}"))?;
    Ok(sim)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn campaign(cases: u32, seed: u64, events: std::ops::Range<usize>) {
    let pool = Pool::new();
    let config = Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 20_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&proptest::collection::vec(event(), events), |events| {
        run(&pool, &events)
            .map(drop)
            .map_err(proptest::test_runner::TestCaseError::fail)
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, events)) => panic!(
            "the planner model failed (CUTOVER_MODEL_SEED={seed}): {reason}\nshrunk sequence ({} events):\n{events:?}",
            events.len()
        ),
        Err(TestError::Abort(reason)) => panic!("the model test aborted (seed {seed}): {reason}"),
    }
}

#[test]
fn random_sequences_of_events_keep_the_planners_invariants() {
    let cases = u32::try_from(env_u64("CUTOVER_MODEL_CASES", 20_000)).unwrap_or(u32::MAX);
    let seed = env_u64("CUTOVER_MODEL_SEED", 0xC0FFEE);
    campaign(cases, seed, 30..60);
}

/// The sequence that wedged the daemon for good: a first deploy whose health path is wrong,
/// corrected while the first color is still coming up.
/// Replays one sequence given as `CUTOVER_MODEL_REPLAY` (the `Debug` form a failure prints),
/// with a trace of every plan when `CUTOVER_MODEL_TRACE` is set; passes when unset.
#[test]
fn replay() {
    let Some(text) = std::env::var_os("CUTOVER_MODEL_REPLAY") else {
        return;
    };
    let events = parse_events(&text.to_string_lossy());
    run(&Pool::new(), &events).unwrap();
}

/// Reads the `Debug` form of a sequence of events back.
fn parse_events(text: &str) -> Vec<Event> {
    let inner = text.trim().trim_start_matches('[').trim_end_matches(']');
    let mut events = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for ch in inner.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                events.push(parse_event(current.trim()));
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(ch);
    }
    if !current.trim().is_empty() {
        events.push(parse_event(current.trim()));
    }
    events
}

fn parse_event(text: &str) -> Event {
    let (name, args) = text
        .split_once('(')
        .map_or((text, ""), |(n, a)| (n, a.trim_end_matches(')')));
    let number = || args.trim().parse::<usize>().expect("a number");
    match name {
        "Apply" => Event::Apply(number()),
        "Delete" => Event::Delete,
        "Heal" => Event::Heal(number()),
        "Sicken" => Event::Sicken(number()),
        "HealAll" => Event::HealAll,
        "ProxyChecks" => Event::ProxyChecks,
        "ProxyLags" => Event::ProxyLags,
        "ProxyCatchesUp" => Event::ProxyCatchesUp,
        "Die" => Event::Die(number()),
        "RemoveByHand" => Event::RemoveByHand(number()),
        "BackgroundDone" => Event::BackgroundDone(number()),
        "FailNextStep" => Event::FailNextStep,
        "Restart" => Event::Restart,
        "LoseStatus" => Event::LoseStatus,
        "CorruptStatus" => Event::CorruptStatus,
        "CorruptRequest" => Event::CorruptRequest,
        "Later" => Event::Later(args.trim().parse().expect("milliseconds")),
        "Traffic" => Event::Traffic(args.trim() == "true"),
        "Request" => {
            let (action, stale) = args.split_once(',').expect("Request(action, stale)");
            let action = match action.trim() {
                "Promote" => Action::Promote,
                "Rollback" => Action::Rollback,
                "Retry" => Action::Retry,
                _ => Action::Abort,
            };
            Event::Request(action, stale.trim() == "true")
        }
        other => panic!("unknown event {other:?}"),
    }
}

/// v1 (`books:1`) applied, healthy, seen UP by the proxy and past its scale-down delay,
/// then `then`.
fn v1_live_then(then: &[Event]) -> Vec<Event> {
    let mut events = vec![
        Event::Apply(0),
        Event::HealAll,
        Event::ProxyChecks,
        Event::Later(11 * SECOND),
    ];
    events.extend_from_slice(then);
    events
}

/// The release after v1 was rejected by its analysis and v1 serves again.
fn back_on_v1_after_a_failed_analysis(status: &Status) -> &Rejected {
    let rejected = status.rejected.as_ref().expect("v2 rejected");
    assert_eq!(rejected.reason, "AnalysisFailed", "{status:#?}");
    let live = status.active_color.expect("a live color");
    assert_eq!(status.colors[&live].image, "books:1", "{status:#?}");
    rejected
}

#[test]
fn a_release_failing_its_analysis_goes_back_to_the_previous_revision() {
    let pool = Pool::new();
    let events = v1_live_then(&[
        Event::Apply(10), // v2, judged by its traffic
        Event::HealAll,
        Event::ProxyChecks,
        Event::Traffic(true),
        Event::Later(200),
    ]);
    let sim = run(&pool, &events).unwrap();
    back_on_v1_after_a_failed_analysis(sim.status().unwrap());
}

#[test]
fn regression_a_corrected_spec_during_the_first_rollout() {
    let pool = Pool::new();
    let events = [
        Event::Apply(4), // never healthy
        Event::Later(2 * SECOND),
        Event::Apply(5), // the fixed health path
        Event::HealAll,
        Event::ProxyChecks,
    ];
    run(&pool, &events).unwrap();
}

#[test]
fn a_canary_failing_its_analysis_step_goes_back_to_the_previous_revision() {
    let pool = Pool::new();
    let events = v1_live_then(&[
        Event::Apply(12), // v2, a canary judged at 50 %
        Event::HealAll,
        Event::ProxyChecks,        // ready: 10 %
        Event::Later(11 * SECOND), // every proxy serves it: a pause of 10 s
        Event::Later(11 * SECOND), // over: 50 %
        Event::Later(200),         // served: its analysis step
        Event::Traffic(true),
        Event::Later(200),
    ]);
    let sim = run(&pool, &events).unwrap();
    let rejected = back_on_v1_after_a_failed_analysis(sim.status().unwrap());
    assert!(
        rejected
            .message
            .contains("canary step 4 of 4 (50% of requests)"),
        "{}",
        rejected.message
    );
    assert_eq!(sim.proxy.split, None);
}

#[test]
fn a_canary_waits_for_promote_and_a_promoted_one_becomes_available() {
    let pool = Pool::new();
    let events = v1_live_then(&[
        Event::Apply(13), // v3, a canary at 20 % until promoted
        Event::HealAll,
        Event::ProxyChecks,
    ]);
    let mut sim = run(&pool, &events).unwrap();
    let status = sim.status().unwrap().clone();
    assert_eq!(status.phase, Some(Phase::Preview), "{status:#?}");
    assert_eq!(sim.proxy.split.map(|s| s.percent), Some(20));
    sim.happen(&Event::Request(Action::Promote, false));
    sim.settle().unwrap();
    let status = sim.status().unwrap();
    assert_eq!(status.phase, Some(Phase::Available), "{status:#?}");
    assert_eq!(
        status.colors[&status.active_color.unwrap()].image,
        "books:3"
    );
    assert_eq!(sim.proxy.split, None);
}
