//! The planner: a pure function from (desired, observed, status, request, policy, clock) to
//! the steps that move one service toward its spec, and the status to report.
//!
//! Architecture invariant: nothing in this module does I/O or reads a clock. The controller
//! observes, calls [`plan`], executes the steps through the adapters, and writes the status.
//!
//! # Guarantees (checked by the model test in `tests/planner_model.rs`)
//! - **Total.** Every input gives a plan: no panic, no index out of range, no overflow. A
//!   combination the rollout rules do not expect maps to steps or to a condition with a
//!   reason, never to a crash.
//! - **What serves keeps serving.** A color that serves traffic (the live color, whether the
//!   status, the proxy or, when both are missing, the older running color says so) is never
//!   stopped or removed while the spec exists, except to be replaced by another color that
//!   every replica of is ready (a switch), after the drain window.
//! - **A new spec supersedes whatever is in flight**: a first rollout not yet live, a
//!   preview, a drain, an abort. What is in flight in the color the new revision needs is
//!   renamed out of the way at once and stopped in the background; the new revision's
//!   containers are created in the same plan.
//! - **Level-triggered.** Planning again after a plan's steps succeeded, with nothing else
//!   changed, yields no steps; once inputs stop and replicas are ready the plan empties in a
//!   bounded number of passes.
//! - Traffic switches only to a color whose replicas are all ready (and UP in the proxy's own
//!   checks when there is a proxy); [`Step::Switch`] is always the last step of a plan.
//! - At most `revisionHistoryLimit` old revisions are kept; at most one color is live.
//!
//! The controller runs [`Step::Stop`] and [`Step::Remove`] in the background (after the
//! replica's connections drained), so a release never waits for an old replica to stop;
//! containers with a stop under way are marked [`Container::stopping`] and left alone.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::haproxy::Split;
use crate::observed::{Container, Observed, Role, free_archived_name, replica_name};
use crate::revision;
use crate::security::{self, Allowances};
use crate::spec::{Analysis, CanaryStep, Diagnostics, Service};
use crate::status::{
    Acknowledgement, Action, AnalysisResult, AnalysisStatus, CanaryStatus, Color, ColorStatus,
    Phase, Rejected, Request, RevisionRecord, Rollout, Status, TrafficFigures, rfc3339,
};

/// How often to look again while waiting for something no event announces (the proxy's
/// checks to see a new replica UP, a container name to be freed).
const POLL_MS: u64 = 100;

/// How often to look again while a proxy lags (its report wakes the service sooner).
const PROXY_POLL_MS: u64 = 1_000;

/// A container a step acts on, with what a log line needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: String,
    pub name: String,
    pub color: Option<Color>,
    pub revision: String,
}

impl From<&Container> for Target {
    fn from(c: &Container) -> Self {
        Target {
            id: c.id.clone(),
            name: c.name.clone(),
            color: c.color(),
            revision: c.revision.clone(),
        }
    }
}

/// One idempotent change to the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Pull an image the engine does not have (or, with `imagePullPolicy: Always`, again).
    PullImage { image: String },
    /// Create and start replica `slot` of `color` from the current spec.
    CreateReplica {
        color: Color,
        slot: u32,
        revision: String,
    },
    /// Create and start the named side target from the current spec.
    CreateSideTarget { name: String, revision: String },
    /// Start a stopped container (a crashed replica, or a kept revision being revived).
    Start { target: Target },
    /// Stop a container and keep it (in the background, after it drained).
    Stop { target: Target },
    /// Remove a container, stopping it first if needed (in the background, after it drained).
    Remove { target: Target },
    /// Rename a container: out of its slot before it goes, or back into it to be revived.
    Rename { target: Target, to: String },
    /// Make `color` the live color: the routes send traffic to its ready replicas.
    Switch { to: Color },
}

impl Step {
    /// Whether the controller runs this step in the background, off the reconcile's path.
    pub fn is_background(&self) -> bool {
        matches!(self, Step::Stop { .. } | Step::Remove { .. })
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::PullImage { image } => write!(f, "pull image {image}"),
            Step::CreateReplica {
                color,
                slot,
                revision,
            } => {
                write!(f, "create {color} replica {slot} (revision {revision})")
            }
            Step::CreateSideTarget { name, revision } => {
                write!(f, "create side target {name} (revision {revision})")
            }
            Step::Start { target } => write!(f, "start {}", target.name),
            Step::Stop { target } => write!(f, "stop {}", target.name),
            Step::Remove { target } => write!(f, "remove {}", target.name),
            Step::Rename { target, to } => write!(f, "rename {} to {to}", target.name),
            Step::Switch { to } => write!(f, "switch traffic to {to}"),
        }
    }
}

/// What the user wants for one service, as the controller read it from KV.
#[derive(Debug, Clone, Copy)]
pub enum Desired<'a> {
    /// A spec that passed validation, with the ModifyIndex of its key.
    Valid { service: &'a Service, index: u64 },
    /// A spec that did not; nothing may change.
    Invalid {
        diagnostics: &'a Diagnostics,
        index: u64,
    },
    /// There is no spec: the service was deleted, or its containers are orphans.
    Absent,
}

/// How the daemon was started: what the planner may do on its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// What `cutover run --allow-*` permits (see [`crate::security`]).
    pub allowances: Allowances,
    /// Remove labelled containers of services that have neither a spec nor a status.
    pub prune_orphans: bool,
    /// Act on mass deletions without a confirmation.
    pub allow_mass_deletion: bool,
}

/// The mass-deletion guard's view of a missing spec.
#[derive(Debug, Clone, Copy, Default)]
pub struct Deletion<'a> {
    /// Why removing this service now would be part of a mass deletion (see
    /// [`mass_deletion`]); `None` when it would not.
    pub refused: Option<&'a str>,
    /// An operator confirmed this service's removal with `cutover prune --confirm`, and the
    /// confirmation has not expired.
    pub confirmed: bool,
}

/// What the proxy in front of the replicas does now, as far as the controller could see.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyView {
    /// The proxy has routes for this service (then `live` is what serves, even `None`).
    pub known: bool,
    /// The color its live routes send this service's traffic to.
    pub live: Option<Color>,
    /// The share of the live requests its routes send to the other color (a canary's
    /// `weight` step), in the latest route table.
    pub split: Option<Split>,
    /// The servers (color, slot) its own health checks see UP (every proxy's, for a fleet).
    pub up: BTreeSet<(Color, u32)>,
    /// Proxies that do not serve the latest route table of this service yet, described for
    /// a status message. While any lags, no replica in play is retired: a lagging proxy may
    /// still send it requests.
    pub lagging: Vec<String>,
    /// What the proxies counted in the open bake window (`analysis`), if one is open.
    pub traffic: Option<TrafficFigures>,
}

/// Keys that exist in KV but could not be read; the message says which and why.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unreadable<'a> {
    pub status: Option<&'a str>,
    /// The request key's ModifyIndex (each bad value is told once) and the message.
    pub request: Option<(u64, &'a str)>,
}

/// Everything [`plan`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub name: &'a str,
    pub desired: Desired<'a>,
    pub observed: &'a Observed,
    /// The status the daemon last wrote; `None` when there is none (or it is unreadable).
    pub status: Option<&'a Status>,
    pub unreadable: Unreadable<'a>,
    /// A pending imperative request, if any.
    pub request: Option<&'a Request>,
    /// Milliseconds since the Unix epoch.
    pub now_ms: u64,
    pub policy: Policy,
    pub deletion: Deletion<'a>,
    /// The proxy's view of this service; `None` when the daemon runs without one.
    pub proxy: Option<&'a ProxyView>,
}

/// What to do, and what to report once it is done.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// The status to write after the steps succeeded; `None`: write nothing.
    pub status: Option<Status>,
    /// The service is gone (no spec, no container): its status, catalog registrations and
    /// routes can go.
    pub gone: bool,
    /// Reconcile again after this many milliseconds even if nothing happens (a deadline or
    /// a drain ends then, or something is polled).
    pub requeue_after_ms: Option<u64>,
    /// What an operator must hear that the status cannot say (orphans, refused deletions).
    pub warnings: Vec<String>,
    /// A deletion was refused by the mass-deletion guard (for the metric).
    pub deletion_refused: bool,
}

/// Plans one reconcile of one service. See the module documentation for the guarantees.
pub fn plan(input: &Input<'_>) -> Plan {
    let mut planner = Planner::new(input);
    match input.desired {
        Desired::Invalid { diagnostics, index } => planner.invalid(diagnostics, index),
        Desired::Absent => planner.absent(),
        Desired::Valid { service, index } => {
            match security::check(service, &input.policy.allowances) {
                Ok(()) => planner.valid(service, index),
                Err(refusals) => planner.forbidden(&security::message(&refusals), index),
            }
        }
    }
    planner.finish()
}

/// The status after a step failed: what was stored before, the spec index acted on, the
/// `Degraded` condition with `reason` and an event. The live color keeps serving.
pub fn failed(before: &Status, index: u64, reason: &str, message: &str, now_ms: u64) -> Status {
    let mut status = Status {
        observed_index: index,
        ..before.clone()
    };
    degrade(&mut status, reason, message, now_ms);
    status.last_error = Some(message.to_owned());
    status
}

/// The status after a reconcile crashed (a bug): `Degraded` with reason `InternalError` and
/// the panic message. The loop retries with backoff.
pub fn internal_error(before: Option<&Status>, message: &str, now_ms: u64) -> Status {
    let mut status = before.cloned().unwrap_or_default();
    let message = format!("internal error (a bug in cutover, please report it): {message}");
    degrade(&mut status, "InternalError", &message, now_ms);
    status.last_error = Some(message);
    status
}

fn degrade(status: &mut Status, reason: &str, message: &str, now_ms: u64) {
    status.set_condition("Degraded", true, reason, message, now_ms);
    status.phase = Some(Phase::Degraded);
    let last = status.events.last();
    if last.map(|e| (e.reason.as_str(), e.message.as_str())) != Some((reason, message)) {
        status.push_event(reason, message, now_ms);
    }
}

/// Why the controller refuses to act on missing specs: too many vanished at once.
///
/// Consul restarted empty, or a stray `consul kv delete -recurse`, looks exactly like a user
/// deleting every service; like Argo CD refusing an empty sync, we wait for a person.
pub fn mass_deletion(known: &BTreeSet<String>, present: &BTreeSet<String>) -> Option<String> {
    let gone: Vec<&str> = known.difference(present).map(String::as_str).collect();
    if gone.is_empty() {
        return None;
    }
    if present.is_empty() || gone.len().saturating_mul(2) > known.len() {
        return Some(format!(
            "{} of {} services disappeared from KV at once ({}); refusing to remove their \
             containers until an operator confirms with `cutover prune --confirm`",
            gone.len(),
            known.len(),
            gone.join(", ")
        ));
    }
    None
}

/// The limits that judge the open analysis window of `status`: a canary's `analysis` step
/// while the canary is at that step, else the bake window after a switch
/// (`strategy.*.analysis`). `None` when nothing in the spec judges it (any more).
pub fn analysis_config<'s>(service: &'s Service, status: &Status) -> Option<&'s Analysis> {
    let analysis = status.analysis.as_ref()?;
    let release = service.release()?;
    match canary_step_of(status, analysis) {
        Some(canary) => match release.steps.get(step_index(canary.step)?) {
            Some(CanaryStep::Analysis(config)) => Some(config),
            _ => None,
        },
        None => release.analysis,
    }
}

/// The canary in `status` if `analysis` is the window of its current step.
fn canary_step_of<'a>(status: &'a Status, analysis: &AnalysisStatus) -> Option<&'a CanaryStatus> {
    status.canary.as_ref().filter(|c| {
        c.revision == analysis.revision
            && c.color == analysis.color
            && c.since_ms == analysis.started_ms
    })
}

/// The index in the spec's steps of a canary's 1-based step number.
fn step_index(step: u32) -> Option<usize> {
    usize::try_from(step.checked_sub(1)?).ok()
}

/// How a canary's walk stands after a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// A step is in progress: no full switch yet.
    Walking,
    /// Every step is done: switch.
    Done,
}

/// The revision that should end up live.
enum Goal {
    /// The spec's revision.
    Spec(String),
    /// The live revision, because the spec's was rejected.
    Hold,
    /// A kept revision, after a rollback.
    Revive(String),
}

/// A service's containers sorted the way the planner reasons about them. Containers with a
/// stop under way are left out: they are going.
struct World<'a> {
    /// In play (named after a slot of their color), by color, sorted by slot.
    colors: BTreeMap<Color, Vec<&'a Container>>,
    /// Replicas renamed out of their slot: history kept for a rollback, or leftovers.
    archived: Vec<&'a Container>,
    sides: Vec<&'a Container>,
}

impl<'a> World<'a> {
    fn new(observed: &'a Observed) -> World<'a> {
        let mut world = World {
            colors: BTreeMap::new(),
            archived: Vec::new(),
            sides: Vec::new(),
        };
        for c in observed.containers.iter().filter(|c| !c.stopping) {
            match c.color() {
                None => world.sides.push(c),
                Some(_) if c.is_archived() => world.archived.push(c),
                Some(color) => world.colors.entry(color).or_default().push(c),
            }
        }
        for list in world.colors.values_mut() {
            list.sort_by_key(|c| (c.slot(), std::cmp::Reverse(c.created_ms)));
        }
        world
    }

    fn color(&self, color: Color) -> &[&'a Container] {
        self.colors.get(&color).map_or(&[], Vec::as_slice)
    }

    fn running(&self, color: Color) -> bool {
        self.color(color).iter().any(|c| c.running)
    }
}

/// `progressDeadline` in milliseconds (the default for `recreate`).
fn progress_deadline(service: &Service) -> u64 {
    service
        .release()
        .map_or(crate::spec::defaults::progress_deadline(), |r| {
            r.progress_deadline
        })
        .as_millis()
}

fn ready_count(containers: &[&Container]) -> u32 {
    let ready = containers.iter().filter(|c| c.running && c.ready).count();
    u32::try_from(ready).unwrap_or(u32::MAX)
}

fn count(containers: &[&Container]) -> u32 {
    u32::try_from(containers.len()).unwrap_or(u32::MAX)
}

/// The revision most containers of a group run (ties: the newest spec index), if any.
fn dominant_revision(containers: &[&Container]) -> Option<String> {
    let mut by_revision: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for c in containers {
        let entry = by_revision.entry(&c.revision).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(c.spec_index);
    }
    by_revision
        .into_iter()
        .max_by_key(|(_, key)| *key)
        .map(|(revision, _)| revision.to_owned())
}

struct Planner<'a> {
    input: &'a Input<'a>,
    world: World<'a>,
    steps: Vec<Step>,
    status: Status,
    /// Whether to write the status at all (an orphan's or a gone service's is not written).
    report: bool,
    gone: bool,
    requeue_after_ms: Option<u64>,
    events: Vec<(String, String)>,
    warnings: Vec<String>,
    deletion_refused: bool,
    /// A retirement waits for proxies that lag behind the route table.
    waiting_for_proxies: bool,
}

impl<'a> Planner<'a> {
    fn new(input: &'a Input<'a>) -> Self {
        let mut status = input.status.cloned().unwrap_or_default();
        status.last_error = None;
        let mut planner = Planner {
            input,
            world: World::new(input.observed),
            steps: Vec::new(),
            status,
            report: true,
            gone: false,
            requeue_after_ms: None,
            events: Vec::new(),
            warnings: Vec::new(),
            deletion_refused: false,
            waiting_for_proxies: false,
        };
        if let Some(error) = input.unreadable.status {
            planner.status = Status::rebuilt(error, input.now_ms);
            planner.warnings.push(format!(
                "{error}; rebuilding the status from the containers and the spec"
            ));
        }
        if let Some((index, error)) = input.unreadable.request
            && !matches!(input.desired, Desired::Absent)
            && planner
                .status
                .note_unreadable_request(index, error, input.now_ms)
        {
            planner.warnings.push(format!("{error}; ignoring it"));
        }
        planner
    }

    fn now(&self) -> u64 {
        self.input.now_ms
    }

    fn event(&mut self, reason: &str, message: impl Into<String>) {
        self.events.push((reason.to_owned(), message.into()));
    }

    fn requeue_after(&mut self, after_ms: u64) {
        let after = after_ms.max(1);
        self.requeue_after_ms = Some(self.requeue_after_ms.map_or(after, |a| a.min(after)));
    }

    fn requeue_at(&mut self, at_ms: u64) {
        self.requeue_after(at_ms.saturating_sub(self.now()));
    }

    fn condition(&mut self, kind: &str, value: bool, reason: &str, message: impl Into<String>) {
        let now = self.now();
        self.status
            .set_condition(kind, value, reason, &message.into(), now);
    }

    fn set_phase(&mut self, phase: Phase) {
        if self.status.phase != Some(phase) {
            self.event("PhaseChanged", format!("phase is now {phase}"));
        }
        self.status.phase = Some(phase);
    }

    fn invalid(&mut self, diagnostics: &Diagnostics, index: u64) {
        self.status.observed_index = index;
        let message = diagnostics.to_string();
        let degraded = self.status.condition("Degraded");
        if degraded.map(|c| (c.reason.as_str(), c.message.as_str()))
            != Some(("InvalidSpec", message.as_str()))
        {
            self.event(
                "InvalidSpec",
                format!("spec at index {index} is invalid; nothing changed"),
            );
        }
        self.condition("Degraded", true, "InvalidSpec", message.clone());
        self.status.last_error = Some(message);
        self.set_phase(Phase::Invalid);
    }

    /// A valid spec the daemon's security policy forbids: like an invalid one, nothing of
    /// it runs and nothing changes.
    fn forbidden(&mut self, message: &str, index: u64) {
        self.status.observed_index = index;
        let told = self.input.status.and_then(|s| s.last_error.as_deref());
        if told != Some(message) {
            self.warnings.push(message.to_owned());
        }
        let now = self.now();
        degrade(&mut self.status, security::REASON, message, now);
        self.status.phase = Some(Phase::Invalid);
        self.status.last_error = Some(message.to_owned());
    }

    /// No spec: remove everything, unless the guard or the orphan rule says otherwise.
    fn absent(&mut self) {
        let observed = &self.input.observed.containers;
        let had_status = self.input.status.is_some() || self.input.unreadable.status.is_some();
        self.report = false;
        if observed.is_empty() {
            self.gone = true;
            return;
        }
        if !had_status && !self.input.policy.prune_orphans {
            self.warnings.push(format!(
                "orphaned containers ({}): labelled for this daemon but the service has neither \
                 spec nor status; start with --prune-orphans to remove them",
                observed.len()
            ));
            return;
        }
        if let Some(reason) = self.input.deletion.refused
            && !self.input.policy.allow_mass_deletion
            && !self.input.deletion.confirmed
        {
            self.deletion_refused = true;
            self.warnings.push(reason.to_owned());
            if had_status {
                self.report = true;
                let now = self.now();
                degrade(&mut self.status, "DeletionRefused", reason, now);
            }
            return;
        }
        let in_play: Vec<&Container> = self.world.colors.values().flatten().copied().collect();
        for c in in_play {
            self.retire(c, false);
        }
        let rest: Vec<&Container> = self
            .world
            .archived
            .iter()
            .chain(&self.world.sides)
            .copied()
            .collect();
        for c in rest {
            self.steps.push(Step::Remove { target: c.into() });
        }
        if !self.steps.is_empty() {
            self.event("Deleted", "spec deleted; removing every container");
        }
    }

    fn valid(&mut self, service: &'a Service, index: u64) {
        let desired = revision::of_service(service);
        self.status.observed_index = index;
        let live = self.live_color();
        let live_revision = live.and_then(|c| self.live_revision(c));
        let live = live.zip(live_revision);

        // A request acknowledged once is never acted on again.
        let acknowledged = self.status.last_request.as_ref().map(|a| a.id.clone());
        let request = self
            .input
            .request
            .filter(|r| acknowledged.as_ref() != Some(&r.id));

        if self
            .status
            .rejected
            .as_ref()
            .is_some_and(|r| r.revision != desired || r.spec_index != index)
        {
            // The spec changed since the rejection: try again.
            self.status.rejected = None;
        }

        self.side_targets(service);

        // A promotion, once acknowledged, holds until the rollout is done.
        let mut promote = self.status.last_request.as_ref().is_some_and(|a| {
            a.action == Action::Promote && a.result == "Done" && a.revision == desired
        });
        if let Some(request) = request {
            let (result, message) = self.request(request, live.as_ref(), &desired, index);
            if result == "Done" && request.action == Action::Promote {
                promote = true;
            }
            self.status.last_request = Some(Acknowledgement {
                id: request.id.clone(),
                action: request.action,
                revision: request.revision.clone(),
                result: result.to_owned(),
                message,
            });
        }

        self.judge_analysis(service, live.as_ref(), &desired, index);

        // The revision that should be live: the spec's, unless it was rejected; then the one
        // serving now, or after a rollback the newest one kept.
        let rejected = self.status.rejected.is_some();
        let goal = match (&live, rejected) {
            (_, false) => Goal::Spec(desired.clone()),
            (Some((_, lr)), true) if *lr != desired => Goal::Hold,
            (_, true) => match self.kept_revision(live.as_ref()) {
                Some(kept) => Goal::Revive(kept),
                None => Goal::Hold,
            },
        };
        match goal {
            Goal::Hold => self.hold(service, live.as_ref()),
            Goal::Spec(revision) if live.as_ref().is_some_and(|(_, lr)| *lr == revision) => {
                let color = live.as_ref().map_or(Color::Blue, |(c, _)| *c);
                self.steady(service, color, &revision);
            }
            Goal::Spec(revision) => {
                self.rollout(service, index, live.as_ref(), &revision, promote, false)
            }
            Goal::Revive(kept) => self.rollout(service, index, live.as_ref(), &kept, true, true),
        }
        let live_revision = self
            .status
            .active_color
            .and_then(|c| self.status.colors.get(&c))
            .map(|c| c.revision.clone());
        self.prune_history(service, live_revision.as_deref());
    }

    /// The color serving traffic: what the proxy routes to (it is what serves); else what
    /// the status says; else, when neither knows, the older of the running colors (the
    /// switch may not have happened). A color without any container in play serves nothing.
    fn live_color(&self) -> Option<Color> {
        let present = |c: &Color| !self.world.color(*c).is_empty();
        let proxied = self.input.proxy.filter(|p| p.known);
        if let Some(color) = proxied.and_then(|p| p.live).filter(present) {
            return Some(color);
        }
        let from_status = self.input.status.and_then(|s| s.active_color);
        if let Some(color) = from_status.filter(present) {
            return Some(color);
        }
        if proxied.is_some() || self.input.status.is_some_and(|s| s.phase.is_some()) {
            return None;
        }
        [Color::Blue, Color::Green]
            .into_iter()
            .filter(|&c| self.world.running(c))
            .min_by_key(|&c| {
                self.world
                    .color(c)
                    .iter()
                    .map(|c| c.spec_index)
                    .max()
                    .unwrap_or(0)
            })
    }

    /// The revision the live color runs: the one the status recorded if it still has
    /// containers there, else the one most of them run.
    fn live_revision(&self, color: Color) -> Option<String> {
        let containers = self.world.color(color);
        let recorded = self
            .input
            .status
            .and_then(|s| s.colors.get(&color))
            .map(|c| &c.revision)
            .filter(|r| containers.iter().any(|c| &c.revision == *r));
        recorded.cloned().or_else(|| dominant_revision(containers))
    }

    /// The newest revision other than the live one that still has containers of the other
    /// color, in play (draining) or archived, and was not rejected.
    fn kept_revision(&self, live: Option<&(Color, String)>) -> Option<String> {
        let (color, live_revision) = live?;
        let rejected = self.status.rejected.as_ref().map(|r| &r.revision);
        self.world
            .color(color.other())
            .iter()
            .chain(&self.world.archived)
            .filter(|c| c.color() == Some(color.other()))
            .filter(|c| c.revision != *live_revision && Some(&c.revision) != rejected)
            .max_by_key(|c| (c.spec_index, c.created_ms))
            .map(|c| c.revision.clone())
    }

    /// Decides on an imperative request. Returns the result word and a message.
    fn request(
        &mut self,
        request: &Request,
        live: Option<&(Color, String)>,
        desired: &str,
        index: u64,
    ) -> (&'static str, String) {
        let live_revision = live.map(|(_, r)| r.as_str());
        let rollout_color = live.map_or(Color::Blue, |(c, _)| c.other());
        let rollout_revision = dominant_revision(self.world.color(rollout_color));
        let in_progress = rollout_revision.as_deref() == Some(request.revision.as_str())
            && live_revision != Some(request.revision.as_str());
        match request.action {
            Action::Promote | Action::Abort if !in_progress => (
                "Stale",
                format!("no rollout of revision {} in progress", request.revision),
            ),
            Action::Promote => ("Done", format!("promoting revision {}", request.revision)),
            Action::Abort => {
                self.reject(
                    &request.revision,
                    index,
                    "Aborted",
                    "aborted by `cutover abort`",
                );
                ("Done", format!("aborted revision {}", request.revision))
            }
            Action::Rollback if live_revision != Some(request.revision.as_str()) => (
                "Stale",
                format!("revision {} is not the live revision", request.revision),
            ),
            Action::Rollback if request.revision != desired => (
                "Stale",
                format!(
                    "revision {} is not the spec's revision; change the spec instead",
                    request.revision
                ),
            ),
            Action::Retry => match self.status.rejected.as_ref() {
                Some(rejected) if rejected.revision == request.revision => {
                    let reason = rejected.reason.clone();
                    self.status.rejected = None;
                    self.event(
                        "Retried",
                        format!(
                            "revision {} (rejected: {reason}) tried again by `cutover retry`",
                            request.revision
                        ),
                    );
                    ("Done", format!("retrying revision {}", request.revision))
                }
                _ => (
                    "Stale",
                    format!("revision {} is not the rejected revision", request.revision),
                ),
            },
            Action::Rollback => match self.kept_revision(live) {
                Some(kept) => {
                    self.reject(
                        &request.revision,
                        index,
                        "RolledBack",
                        &format!("rolled back to revision {kept} by `cutover rollback`"),
                    );
                    ("Done", format!("rolling back to revision {kept}"))
                }
                None => (
                    "NothingToRollBackTo",
                    "no earlier revision is kept (see revisionHistoryLimit)".to_owned(),
                ),
            },
        }
    }

    fn reject(&mut self, revision: &str, index: u64, reason: &str, message: &str) {
        self.event(reason, format!("revision {revision} rejected: {message}"));
        self.status.rejected = Some(Rejected {
            revision: revision.to_owned(),
            spec_index: index,
            reason: reason.to_owned(),
            message: message.to_owned(),
        });
    }

    /// The spec's revision was rejected: keep what serves, restart what crashed there, and
    /// retire everything else once it drained.
    fn hold(&mut self, service: &Service, live: Option<&(Color, String)>) {
        self.status.rollout = None;
        self.status.preview_color = None;
        if self.status.canary.is_some() {
            let why = self
                .status
                .rejected
                .as_ref()
                .map_or_else(|| "it was rejected".to_owned(), |r| r.reason.clone());
            self.stop_canary(&format!("its revision was rejected ({why})"));
        }
        if let Some((color, revision)) = live {
            self.restart_stopped(*color, revision);
            self.clean_other_color(service, *color, None);
        } else {
            // Nothing serves: whatever is in play is a rejected attempt.
            let in_play: Vec<&Container> = self.world.colors.values().flatten().copied().collect();
            for c in in_play {
                self.retire(c, false);
            }
        }
        self.report_colors(service, live.map(|(c, _)| *c), None);
        let (reason, message) = self
            .status
            .rejected
            .as_ref()
            .map(|r| (r.reason.clone(), r.message.clone()))
            .unwrap_or_else(|| ("RevisionRejected".to_owned(), String::new()));
        self.condition("Degraded", true, &reason, message);
        let rejected = self
            .status
            .rejected
            .as_ref()
            .map_or_else(String::new, |r| r.revision.clone());
        self.condition(
            "Progressing",
            false,
            "RevisionRejected",
            format!(
                "revision {rejected} is rejected until the spec changes; {}",
                if live.is_some() {
                    "the last good revision keeps serving"
                } else {
                    "nothing was serving before"
                }
            ),
        );
        self.availability(live.map(|(c, _)| *c), service.spec.replicas);
        self.set_phase(Phase::Degraded);
    }

    /// The live color runs the spec's revision: scale it in place, restart what crashed, and
    /// retire the other color once its drain is over.
    fn steady(&mut self, service: &Service, color: Color, revision: &str) {
        let replicas = service.spec.replicas;
        self.status.rollout = None;
        self.status.canary = None;
        self.scale(service, color, revision, replicas);
        let drained = self.clean_other_color(service, color, None);
        // A live color found running the spec's revision without a switch recorded (a lost
        // status, a recreate) is recorded now.
        self.record_live(service, color, revision);
        self.report_colors(service, Some(color), None);
        self.status.preview_color = None;
        let containers = self.world.color(color);
        let ready = ready_count(containers).min(replicas);
        let scaling = count(containers) != replicas || ready < replicas;
        self.condition("Degraded", false, "AsExpected", "");
        if scaling {
            self.condition(
                "Progressing",
                true,
                "Scaling",
                format!("{ready}/{replicas} replicas of {color} ready"),
            );
        } else {
            self.condition(
                "Progressing",
                false,
                "RolloutComplete",
                if drained {
                    format!("{color} is live with revision {revision}")
                } else {
                    format!("{color} is live; the old color drains before it stops")
                },
            );
        }
        self.availability(Some(color), replicas);
        if ready == replicas {
            self.available_once_proxies_serve(color);
            return;
        }
        // Replicas that do not get ready are not a rollout to abort, but they are reported
        // once they have been missing for longer than a rollout may take.
        let deadline = progress_deadline(service);
        let since = self
            .status
            .condition("Available")
            .filter(|c| c.status == "False")
            .and_then(|c| humantime::parse_rfc3339(&c.last_transition_time).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(self.now(), |d| {
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
            });
        let due = since.saturating_add(deadline);
        if self.now() >= due {
            self.condition(
                "Degraded",
                true,
                "ReplicasNotReady",
                format!(
                    "only {ready}/{replicas} replicas of {color} ready for longer than progressDeadline ({})",
                    crate::spec::Duration::from_millis(deadline)
                ),
            );
            self.set_phase(Phase::Degraded);
        } else {
            self.requeue_at(due);
            self.set_phase(Phase::Progressing);
        }
    }

    /// Sets the `Available` condition from the live color's ready replicas.
    fn availability(&mut self, live: Option<Color>, replicas: u32) {
        let ready = live.map_or(0, |c| ready_count(self.world.color(c)).min(replicas));
        let available = live.is_some() && ready == replicas;
        self.condition(
            "Available",
            available,
            if available {
                "AllReplicasReady"
            } else {
                "ReplicasNotReady"
            },
            format!("{ready}/{replicas} replicas ready"),
        );
    }

    /// Brings `color` to exactly `count` replicas of `revision` (the spec's): retires slots
    /// running another revision, creates missing slots, starts stopped ones, retires slots
    /// above `count`. Returns whether a container name it needs is still held by a
    /// container on its way out (then it tries again shortly).
    fn scale(&mut self, service: &Service, color: Color, revision: &str, count: u32) -> bool {
        let present: Vec<&Container> = self.world.color(color).to_vec();
        let mut occupied: BTreeSet<u32> = BTreeSet::new();
        let mut held: BTreeSet<u32> = BTreeSet::new();
        let mut mixed = false;
        for c in &present {
            let stays = c.revision == revision
                && c.slot().is_some_and(|s| (1..=count).contains(&s))
                && occupied.insert(c.slot().unwrap_or(0));
            if !stays {
                // Another revision (kept for a rollback if it served) or a slot too many.
                let keep = c.revision != revision && self.keeps(Some(service), &c.revision);
                if !self.retire(c, keep) {
                    // Still in its slot (the slot's name is not free yet), and still another
                    // revision in this color: nothing new is created beside it.
                    held.insert(c.slot().unwrap_or(0));
                    mixed |= c.revision != revision;
                }
            } else if !c.running {
                self.steps.push(Step::Start {
                    target: (*c).into(),
                });
            }
        }
        let mut blocked = false;
        let mut created = false;
        for slot in (1..=count).filter(|s| !occupied.contains(s)) {
            if mixed || held.contains(&slot) {
                blocked = true;
                continue;
            }
            let name = replica_name(&service.metadata.name, color, slot);
            // A container still being stopped or removed keeps its name until it is gone.
            if self
                .input
                .observed
                .containers
                .iter()
                .any(|c| c.stopping && c.name == name)
            {
                blocked = true;
                continue;
            }
            created = true;
            self.steps.push(Step::CreateReplica {
                color,
                slot,
                revision: revision.to_owned(),
            });
        }
        if created {
            self.pull_first(service, &service.spec.image);
        }
        if blocked {
            self.requeue_after(POLL_MS);
        }
        blocked
    }

    /// Starts the stopped replicas of `revision` in `color` (a crash, or a kept revision).
    fn restart_stopped(&mut self, color: Color, revision: &str) {
        let stopped: Vec<&Container> = self
            .world
            .color(color)
            .iter()
            .filter(|c| c.revision == revision && !c.running)
            .copied()
            .collect();
        for c in stopped {
            self.steps.push(Step::Start { target: c.into() });
        }
    }

    /// Puts a pull of `image` before the steps planned so far when the engine lacks it (or
    /// the spec says `Always`).
    fn pull_first(&mut self, service: &Service, image: &str) {
        let always = service.spec.image_pull_policy == crate::spec::PullPolicy::Always;
        let missing = !self.input.observed.images_present.contains(image);
        let pull = Step::PullImage {
            image: image.to_owned(),
        };
        if (always || missing) && !self.steps.contains(&pull) {
            self.steps.insert(0, pull);
        }
    }

    /// Whether a retired revision is kept for a rollback (archived) rather than removed:
    /// blue/green with a history, the revision served, and was not rejected. Without a
    /// status there is no record of what served, so everything is kept (the history limit
    /// bounds it).
    fn keeps(&self, service: Option<&Service>, revision: &str) -> bool {
        let limit = service
            .and_then(Service::release)
            .map_or(0, |r| r.revision_history_limit);
        if limit == 0 {
            return false;
        }
        if self.status.rejected.as_ref().map(|r| r.revision.as_str()) == Some(revision) {
            return false;
        }
        match self.input.status {
            None => true,
            Some(_) => self
                .status
                .revision_history
                .iter()
                .any(|r| r.revision == revision),
        }
    }

    /// Takes an in-play replica out of its slot at once (a rename, so the slot's name is free
    /// for its successor in this very plan) and stops it, to keep it, or removes it, in the
    /// background.
    /// Returns false when it must wait for lagging proxies (then it plans nothing and looks
    /// again shortly).
    fn retire(&mut self, c: &Container, keep: bool) -> bool {
        if let Some(proxy) = self.input.proxy
            && !proxy.lagging.is_empty()
        {
            self.waiting_for_proxies = true;
            self.requeue_after(PROXY_POLL_MS);
            return false;
        }
        let to = free_archived_name(c, &self.input.observed.containers);
        self.steps.push(Step::Rename {
            target: c.into(),
            to: to.clone(),
        });
        let target = Target {
            name: to,
            ..Target::from(c)
        };
        if !keep {
            self.steps.push(Step::Remove { target });
        } else if c.running {
            self.steps.push(Step::Stop { target });
        }
        true
    }

    /// Retires the in-play replicas of the color other than `live` (except those running
    /// `keep`), once the drain window after the last switch is over for the revision that
    /// served before. Returns false while that revision still drains.
    fn clean_other_color(&mut self, service: &Service, live: Color, keep: Option<&str>) -> bool {
        let other: Vec<&Container> = self
            .world
            .color(live.other())
            .iter()
            .filter(|c| Some(c.revision.as_str()) != keep)
            .copied()
            .collect();
        if other.is_empty() {
            return true;
        }
        // The revision that served before the last switch stays ready for an instant
        // rollback until `scaleDownDelay` after the switch.
        let previous = self
            .status
            .revision_history
            .get(1)
            .filter(|r| r.color == live.other())
            .map(|r| r.revision.clone());
        if let Some(until) = self.drain_until(service)
            && self.now() < until
            && other
                .iter()
                .any(|c| c.running && Some(&c.revision) == previous.as_ref())
        {
            self.requeue_at(until);
            return false;
        }
        for c in other {
            let keep = self.keeps(Some(service), &c.revision);
            self.retire(c, keep);
        }
        self.event("Retired", format!("retired color {}", live.other()));
        true
    }

    /// When the current drain ends, if the service switched colors recently: after
    /// `scaleDownDelay`, and not before an open bake window ends (the color switched away
    /// from stays ready to take the traffic back).
    fn drain_until(&self, service: &Service) -> Option<u64> {
        let delay = service
            .release()
            .map_or(0, |r| r.scale_down_delay.as_millis());
        let analysing = self
            .status
            .analysis
            .as_ref()
            .filter(|a| a.result == AnalysisResult::Running)
            .map_or(0, |a| a.until_ms);
        self.status
            .switched_at_ms
            .map(|at| at.saturating_add(delay).max(analysing))
    }

    /// Brings `revision` up in the non-live color (or the live one for `recreate`, or a free
    /// one when nothing is live), health-gates it and switches to it. `revive`: the revision
    /// is a kept one, brought back from its archived containers instead of created.
    fn rollout(
        &mut self,
        service: &Service,
        index: u64,
        live: Option<&(Color, String)>,
        revision: &str,
        promote: bool,
        revive: bool,
    ) {
        let release = service.release();
        let recreate = release.is_none();
        let live_color = live.map(|(c, _)| *c);
        let color = self.rollout_color(live_color, revision, recreate);
        // A canary of another revision (a newer spec supersedes it), or of a spec that is no
        // canary any more, gives its share back now: the routes this plan publishes send every
        // request to the live color again.
        if let Some(canary) = &self.status.canary {
            if canary.revision != revision || canary.color != color {
                self.stop_canary("a newer spec supersedes it");
            } else if revive || release.is_none_or(|r| r.steps.is_empty()) {
                self.stop_canary("the spec has no canary steps any more");
            }
        }
        let first = live.is_none();
        let auto = first || promote || recreate || release.is_none_or(|r| r.auto_promote);
        let replicas = service.spec.replicas;
        let wanted = if auto {
            replicas
        } else {
            release
                .and_then(|r| r.preview_replicas)
                .unwrap_or(replicas)
                .min(replicas)
        };

        // Whatever else is in play while nothing serves is a superseded attempt.
        if first {
            let elsewhere: Vec<&Container> = self.world.color(color.other()).to_vec();
            for c in elsewhere {
                let keep = self.keeps(Some(service), &c.revision);
                self.retire(c, keep);
            }
        }

        // `recreate`: the old revision stops before the new one starts.
        if recreate && let Some((live_color, live_revision)) = live {
            let old: Vec<&Container> = self.world.color(*live_color).to_vec();
            for c in old {
                let keep = self.keeps(Some(service), &c.revision);
                self.retire(c, keep);
            }
            self.event(
                "Recreating",
                format!("stopping revision {live_revision} in {live_color} to recreate it"),
            );
        }
        if recreate && self.old_replicas_still_running() {
            self.status.rollout = None;
            self.report_colors(service, None, Some((color, wanted)));
            self.progressing(
                "Recreating",
                format!("waiting for the old replicas to stop before starting revision {revision}"),
            );
            self.requeue_after(POLL_MS);
            return;
        }

        self.start_rollout(color, revision, index);
        let blocked = if revive {
            self.revive(service, color, revision);
            false
        } else {
            self.scale(service, color, revision, wanted)
        };

        let mine: Vec<&Container> = self
            .world
            .color(color)
            .iter()
            .filter(|c| c.revision == revision)
            .copied()
            .collect();
        let wanted = if revive { count(&mine).max(1) } else { wanted };
        let ready = ready_count(&mine);
        let shown_live = live_color.filter(|c| *c != color || !recreate);
        self.report_colors(service, shown_live, Some((color, wanted)));
        self.status.preview_color = shown_live.filter(|l| *l != color).map(|_| color);
        self.availability(shown_live, replicas);

        let settled = self.steps.iter().all(|s| s.is_background()) && !blocked;
        if !settled || ready < wanted || count(&mine) < wanted {
            let waiting = format!(
                "{ready}/{} replicas of {color} (revision {revision}) ready",
                count(&mine).max(wanted)
            );
            self.check_deadline(
                service,
                &mine,
                revision,
                index,
                "WaitingForHealthy",
                waiting,
            );
            return;
        }
        if !self.proxy_sees_up(color, &mine) {
            let lagging = self.behind_the_table();
            let waiting = format!(
                "{ready}/{wanted} replicas of {color} (revision {revision}) ready; waiting for \
                 every proxy's checks to see them UP{lagging}"
            );
            self.check_deadline(
                service,
                &mine,
                revision,
                index,
                "WaitingForProxies",
                waiting,
            );
            self.requeue_after(POLL_MS);
            return;
        }
        if auto && (wanted == replicas || revive) {
            let switching = live_color != Some(color) || recreate || self.routed_elsewhere(color);
            // A canary walks its steps before the full switch (not a first rollout, not a
            // revision brought back); `cutover promote` skips what is left of them.
            let steps = release.map_or(&[][..], |r| r.steps);
            let canary = switching && !revive && !steps.is_empty() && live.is_some();
            if canary && live_color != Some(color) {
                if promote {
                    self.finish_canary(true);
                } else if self.walk_canary(service, steps, color, revision) == Walk::Walking {
                    return;
                } else {
                    self.finish_canary(false);
                }
            }
            if switching {
                self.steps.push(Step::Switch { to: color });
                // A new revision replacing a live one is judged by its traffic; a revision
                // brought back has been judged before.
                if live_color.is_some_and(|l| l != color) && !revive {
                    self.start_analysis(service, color, revision);
                }
            }
            self.switched(service, color, revision);
            return;
        }
        // Healthy and waiting for a person.
        self.waiting_for_promotion(format!(
            "{color} (revision {revision}) is ready on the preview route; run `cutover promote {}`",
            service.name()
        ));
    }

    /// Phase `Preview`: what a rollout needs now is `cutover promote`, as `message` says.
    fn waiting_for_promotion(&mut self, message: String) {
        self.condition("Degraded", false, "AsExpected", "");
        self.condition("Progressing", true, "WaitingForPromotion", message);
        self.set_phase(Phase::Preview);
    }

    /// Where a rollout goes: the color other than the live one (the live one for
    /// `recreate`); with nothing live, the color already holding the revision, else blue.
    fn rollout_color(&self, live: Option<Color>, revision: &str, recreate: bool) -> Color {
        match (live, recreate) {
            (Some(c), false) => c.other(),
            (Some(c), true) => c,
            (None, _) => [Color::Blue, Color::Green]
                .into_iter()
                .find(|&c| self.world.color(c).iter().any(|c| c.revision == revision))
                .unwrap_or(Color::Blue),
        }
    }

    /// Whether the proxy routes live traffic for this service to a color other than `color`
    /// (so that a switch must be sent even if the status already names `color`).
    fn routed_elsewhere(&self, color: Color) -> bool {
        self.input
            .proxy
            .is_some_and(|p| p.live.is_some_and(|l| l != color))
    }

    /// Replicas of this service that left their slot and still run (or are being stopped).
    fn old_replicas_still_running(&self) -> bool {
        let planned: BTreeSet<&str> = self
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Rename { target, .. } => Some(target.id.as_str()),
                _ => None,
            })
            .collect();
        self.input.observed.containers.iter().any(|c| {
            c.color().is_some()
                && (c.running || c.stopping)
                && (c.stopping || c.is_archived() || planned.contains(c.id.as_str()))
        })
    }

    /// Records the rollout's start (the progress deadline counts from it), unless it is the
    /// one already recorded.
    fn start_rollout(&mut self, color: Color, revision: &str, index: u64) {
        let same = self
            .status
            .rollout
            .as_ref()
            .is_some_and(|r| r.revision == revision && r.color == color);
        if same {
            return;
        }
        self.event(
            "RolloutStarted",
            format!("starting {color} with revision {revision} (spec index {index})"),
        );
        self.status.rollout = Some(Rollout {
            revision: revision.to_owned(),
            color,
            started_ms: self.now(),
        });
    }

    /// Brings a kept revision back into `color`: its archived containers are renamed into
    /// their slots and started; whatever else is in play there is retired.
    fn revive(&mut self, service: &Service, color: Color, revision: &str) {
        let blockers: Vec<&Container> = self
            .world
            .color(color)
            .iter()
            .filter(|c| c.revision != revision)
            .copied()
            .collect();
        let mut occupied: BTreeSet<u32> = BTreeSet::new();
        for c in self.world.color(color) {
            if c.revision == revision
                && let Some(slot) = c.slot()
            {
                occupied.insert(slot);
            }
        }
        let mut deferred = false;
        for c in blockers {
            let keep = self.keeps(Some(service), &c.revision);
            deferred |= !self.retire(c, keep);
        }
        self.restart_stopped(color, revision);
        if deferred {
            // Another revision still holds slots of this color: nothing joins it yet.
            return;
        }
        let mut archived: Vec<&Container> = self
            .world
            .archived
            .iter()
            .filter(|c| c.color() == Some(color) && c.revision == revision)
            .copied()
            .collect();
        archived.sort_by_key(|c| std::cmp::Reverse(c.created_ms));
        for c in archived {
            let Some(slot) = c.slot() else { continue };
            if !occupied.insert(slot) {
                continue;
            }
            self.steps.push(Step::Rename {
                target: c.into(),
                to: replica_name(&c.service, color, slot),
            });
            if !c.running {
                self.steps.push(Step::Start { target: c.into() });
            }
        }
    }

    /// A rollout not ready by its progress deadline is aborted: its replicas are removed,
    /// its revision rejected. Otherwise the service is `Progressing` for `reason` (what the
    /// rollout waits for, said by `waiting`), looked at again by the deadline.
    fn check_deadline(
        &mut self,
        service: &Service,
        mine: &[&Container],
        revision: &str,
        index: u64,
        reason: &str,
        waiting: String,
    ) {
        let live = self.status.active_color;
        let deadline = progress_deadline(service);
        // From the rollout's start or its replicas' creation, whichever is later: a slow
        // pull does not count, a revived revision's old containers do not either.
        let started = [
            self.status.rollout.as_ref().map(|r| r.started_ms),
            mine.iter().map(|c| c.created_ms).min(),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or_else(|| self.now());
        let due = started.saturating_add(deadline);
        if self.now() >= due && !mine.is_empty() {
            // Nothing more of this attempt is created.
            self.steps
                .retain(|s| !matches!(s, Step::CreateReplica { .. }));
            for c in mine {
                self.retire(c, false);
            }
            let message = format!(
                "revision {revision} was not healthy within progressDeadline ({}); {}",
                crate::spec::Duration::from_millis(deadline),
                match live {
                    Some(c) => format!("{c} keeps serving"),
                    None => "nothing was serving before".to_owned(),
                }
            );
            self.reject(revision, index, "ProgressDeadlineExceeded", &message);
            self.condition(
                "Degraded",
                true,
                "ProgressDeadlineExceeded",
                message.clone(),
            );
            self.condition("Progressing", false, "ProgressDeadlineExceeded", message);
            self.status.preview_color = None;
            self.status.rollout = None;
            if self.status.canary.is_some() {
                self.stop_canary("its replicas were not ready by progressDeadline");
            }
            self.set_phase(Phase::Degraded);
            return;
        }
        self.requeue_at(due);
        self.progressing(reason, waiting);
    }

    /// Whether the proxies serve the latest route table and their own checks see every one
    /// of `replicas` UP (always true without a proxy). A proxy behind the table may report
    /// a slot UP for the replica the slot had before.
    fn proxy_sees_up(&self, color: Color, replicas: &[&Container]) -> bool {
        let Some(proxy) = self.input.proxy else {
            return true;
        };
        proxy.lagging.is_empty()
            && replicas
                .iter()
                .filter_map(|c| c.slot())
                .all(|slot| proxy.up.contains(&(color, slot)))
    }

    fn progressing(&mut self, reason: &str, message: String) {
        self.condition("Degraded", false, "AsExpected", "");
        self.condition("Progressing", true, reason, message);
        self.set_phase(Phase::Progressing);
    }

    /// Records a switch to `color` (planned now, or found done).
    fn switched(&mut self, service: &Service, color: Color, revision: &str) {
        let replicas = service.spec.replicas;
        self.status.rollout = None;
        self.status.canary = None;
        self.record_live(service, color, revision);
        self.status.active_color = Some(color);
        self.status.preview_color = None;
        self.report_colors(service, Some(color), None);
        self.condition("Degraded", false, "AsExpected", "");
        self.condition(
            "Progressing",
            false,
            "RolloutComplete",
            format!("{color} is live with revision {revision}"),
        );
        let ready = ready_count(self.world.color(color)).min(replicas);
        let available = ready == replicas;
        self.condition(
            "Available",
            available,
            if available {
                "AllReplicasReady"
            } else {
                "ReplicasNotReady"
            },
            format!("{ready}/{replicas} replicas ready"),
        );
        if available {
            self.available_once_proxies_serve(color);
        } else {
            self.set_phase(Phase::Progressing);
        }
    }

    /// `Available`, once every proxy serves the latest route table and the bake window (if
    /// any) is over: a switch planned now, or one a proxy has not applied yet, is still
    /// `Progressing` (`WaitingForProxies`), so that whoever waits for `Available` finds
    /// every proxy serving the new color; a revision being judged by its traffic is
    /// `Progressing` (`Analyzing`) until its window ends.
    fn available_once_proxies_serve(&mut self, color: Color) {
        let switching = self.steps.iter().any(|s| matches!(s, Step::Switch { .. }));
        let lagging = self.input.proxy.map(|p| p.lagging.join(", "));
        let analysing = self
            .status
            .analysis
            .as_ref()
            .filter(|a| a.result == AnalysisResult::Running)
            .map(|a| a.message.clone());
        match (lagging, analysing) {
            (Some(lagging), _) if switching || !lagging.is_empty() => {
                let message = if switching {
                    format!("switching to {color}; waiting for every proxy to serve it")
                } else {
                    format!("{color} is live; waiting for {lagging} to serve it")
                };
                self.progressing("WaitingForProxies", message);
                self.requeue_after(PROXY_POLL_MS);
            }
            (_, Some(message)) => self.progressing("Analyzing", message),
            _ => self.set_phase(Phase::Available),
        }
    }

    /// Walks a canary's steps toward the full switch of `revision`, ready in `color` beside
    /// the live color: a `weight` step publishes its share (through `status.canary`, which
    /// the route table follows) and is done once every proxy serves it; a `pause` waits for
    /// its duration, or for `cutover promote` without one; an `analysis` step opens a window
    /// on the new color's traffic at the current weight (judged by
    /// [`Planner::judge_analysis`]). Several steps may pass in one plan (a pause that is over,
    /// a weight every proxy already serves); the plan stops at the first that waits.
    fn walk_canary(
        &mut self,
        service: &Service,
        steps: &[CanaryStep],
        color: Color,
        revision: &str,
    ) -> Walk {
        let now = self.now();
        let of = u32::try_from(steps.len()).unwrap_or(u32::MAX);
        let mut canary = match self
            .status
            .canary
            .clone()
            .filter(|c| c.revision == revision && c.color == color)
        {
            Some(canary) => canary,
            None => {
                self.event(
                    "CanaryStarted",
                    format!(
                        "revision {revision} is ready in {color}; walking its {of} canary steps \
                         before the full switch"
                    ),
                );
                CanaryStatus {
                    revision: revision.to_owned(),
                    color,
                    step: 1,
                    of,
                    weight: 0,
                    since_ms: now,
                    started_ms: now,
                    message: String::new(),
                }
            }
        };
        canary.of = of;
        // At most one pass per step (and one more to see the end): the walk is bounded.
        for _ in 0..=steps.len() {
            let Some(step) = step_index(canary.step).and_then(|i| steps.get(i)) else {
                self.status.canary = Some(canary);
                return Walk::Done;
            };
            let base = format!(
                "step {} of {of}: {}% of requests to revision {revision}",
                canary.step, canary.weight
            );
            let waiting = match step {
                CanaryStep::Weight(weight) => {
                    if canary.weight != *weight {
                        canary.weight = *weight;
                        self.event(
                            "CanaryWeight",
                            format!(
                                "step {} of {of}: {weight}% of requests to revision {revision}",
                                canary.step
                            ),
                        );
                    }
                    // Done once every proxy serves the table with this weight (the table
                    // this very plan publishes, when the weight is new, is not served yet).
                    let served = self.input.proxy.is_none_or(|p| {
                        p.split
                            == Some(Split {
                                color,
                                percent: *weight,
                            })
                            && p.lagging.is_empty()
                    });
                    (!served).then(|| self.canary_weight_wait(color, *weight))
                }
                CanaryStep::Pause(pause) => match pause.duration {
                    Some(duration) => {
                        let until = canary.since_ms.saturating_add(duration.as_millis());
                        (now < until).then(|| {
                            self.requeue_at(until);
                            format!("pausing until {}", rfc3339(until))
                        })
                    }
                    None => {
                        canary.message = base.clone();
                        self.status.canary = Some(canary);
                        self.waiting_for_promotion(format!(
                            "canary {base}; run `cutover promote {name}` to send every request \
                             to it, or `cutover abort {name}` to send none",
                            name = service.name()
                        ));
                        return Walk::Walking;
                    }
                },
                CanaryStep::Analysis(config) => self.canary_analysis(config, &canary, revision),
            };
            match waiting {
                Some(waiting) => {
                    canary.message = format!(
                        "step {} of {of}: {}% of requests to revision {revision}",
                        canary.step, canary.weight
                    );
                    let message = format!("{}; {waiting}", canary.message);
                    self.status.canary = Some(canary);
                    self.progressing("Canary", message);
                    return Walk::Walking;
                }
                None => {
                    canary.step = canary.step.saturating_add(1);
                    canary.since_ms = now;
                }
            }
        }
        self.status.canary = Some(canary);
        Walk::Done
    }

    /// ` (behind the route table: <proxies>)` while some proxy lags, for a message.
    fn behind_the_table(&self) -> String {
        self.input
            .proxy
            .map(|p| p.lagging.join(", "))
            .filter(|l| !l.is_empty())
            .map_or_else(String::new, |l| format!(" (behind the route table: {l})"))
    }

    /// What a `weight` step waits for, said in a message; looked at again shortly (every
    /// proxy's report wakes the service sooner).
    fn canary_weight_wait(&mut self, color: Color, weight: u32) -> String {
        self.requeue_after(PROXY_POLL_MS);
        let lagging = self.behind_the_table();
        format!("waiting for every proxy to send {weight}% of requests to {color}{lagging}")
    }

    /// An `analysis` step: opens its window when the step begins, then waits while it runs;
    /// `None` once it passed (a breach rejects the revision before the walk, in
    /// [`Planner::judge_analysis`]).
    fn canary_analysis(
        &mut self,
        config: &Analysis,
        canary: &CanaryStatus,
        revision: &str,
    ) -> Option<String> {
        let current = self
            .status
            .analysis
            .as_ref()
            .filter(|a| {
                a.revision == revision && a.color == canary.color && a.started_ms == canary.since_ms
            })
            .map(|a| (a.result, a.until_ms, a.message.clone()));
        match current {
            Some((AnalysisResult::Passed, _, _)) => None,
            Some((AnalysisResult::Running, until, message)) => {
                self.requeue_at(until);
                Some(message)
            }
            _ => {
                let until = canary.since_ms.saturating_add(config.window.as_millis());
                let message = format!(
                    "judging revision {revision} by its traffic at {}% until {}",
                    canary.weight,
                    rfc3339(until)
                );
                self.status.analysis = Some(AnalysisStatus {
                    revision: revision.to_owned(),
                    color: canary.color,
                    started_ms: canary.since_ms,
                    until_ms: until,
                    result: AnalysisResult::Running,
                    figures: TrafficFigures::default(),
                    message: message.clone(),
                });
                self.event(
                    "AnalysisStarted",
                    format!("canary step {} of {}: {message}", canary.step, canary.of),
                );
                self.requeue_at(until);
                Some(message)
            }
        }
    }

    /// The canary's steps end in the full switch this plan makes: all of them passed, or
    /// `cutover promote` skipped the rest (`promoted`). A step's window still open closes.
    fn finish_canary(&mut self, promoted: bool) {
        let Some(canary) = self.status.canary.take() else {
            return;
        };
        let message = if promoted {
            format!(
                "`cutover promote` skipped canary steps {} to {} of revision {}; switching \
                 every request to it",
                canary.step, canary.of, canary.revision
            )
        } else {
            format!(
                "revision {} went through its {} canary steps; switching every request to it",
                canary.revision, canary.of
            )
        };
        self.close_step_window(&canary, "skipped by `cutover promote`");
        self.event(
            if promoted {
                "CanaryPromoted"
            } else {
                "CanaryCompleted"
            },
            message,
        );
    }

    /// Ends a canary before its full switch (an abort, a rejection, a newer spec): the route
    /// table this plan publishes has no split, so every request goes to the live color
    /// again.
    fn stop_canary(&mut self, why: &str) {
        let Some(canary) = self.status.canary.take() else {
            return;
        };
        self.close_step_window(&canary, why);
        self.event(
            "CanaryStopped",
            format!(
                "the canary of revision {} stopped at step {} of {} ({}% of requests): {why}; \
                 every request goes to the live color again",
                canary.revision, canary.step, canary.of, canary.weight
            ),
        );
    }

    /// Marks the running window of `canary`'s current step cancelled, with `why`.
    fn close_step_window(&mut self, canary: &CanaryStatus, why: &str) {
        if let Some(analysis) = self.status.analysis.as_mut()
            && analysis.result == AnalysisResult::Running
            && analysis.revision == canary.revision
            && analysis.color == canary.color
            && analysis.started_ms == canary.since_ms
        {
            analysis.result = AnalysisResult::Cancelled;
            analysis.message = format!(
                "the analysis of revision {} at canary step {} of {} stopped: {why}",
                canary.revision, canary.step, canary.of
            );
        }
    }

    /// Opens the bake window of `revision`, switched to in `color` by this plan, when the
    /// spec asks for one (see [`Planner::judge_analysis`]).
    fn start_analysis(&mut self, service: &Service, color: Color, revision: &str) {
        let Some(config) = service.release().and_then(|r| r.analysis) else {
            return;
        };
        let now = self.now();
        let until = now.saturating_add(config.window.as_millis());
        self.status.analysis = Some(AnalysisStatus {
            revision: revision.to_owned(),
            color,
            started_ms: now,
            until_ms: until,
            result: AnalysisResult::Running,
            figures: TrafficFigures::default(),
            message: format!(
                "judging revision {revision} by its traffic for {} after the switch",
                config.window
            ),
        });
        self.event(
            "AnalysisStarted",
            format!(
                "judging revision {revision} by its traffic until {}",
                rfc3339(until)
            ),
        );
        self.requeue_at(until);
    }

    /// Judges the open bake window of the live revision against the spec's limits, with
    /// what the proxies counted since the switch. A breach rejects the revision with reason
    /// `AnalysisFailed` (the goal then becomes the kept revision: traffic switches back in
    /// this very plan); the end of the window passes it; a newer spec, a rollback or an
    /// abort cancels it. Fewer requests than `minRequests` are not judged.
    fn judge_analysis(
        &mut self,
        service: &Service,
        live: Option<&(Color, String)>,
        desired: &str,
        index: u64,
    ) {
        let Some(mut analysis) = self
            .status
            .analysis
            .clone()
            .filter(|a| a.result == AnalysisResult::Running)
        else {
            return;
        };
        let now = self.now();
        // A canary's analysis step judges the new color while the old one stays live; the
        // bake window judges the live color after the switch.
        let step = canary_step_of(&self.status, &analysis).map(|c| (c.step, c.of, c.weight));
        let config = analysis_config(service, &self.status);
        let not_superseded = desired == analysis.revision && self.status.rejected.is_none();
        let current = not_superseded
            && match step {
                Some(_) => live.is_some_and(|(c, _)| *c != analysis.color),
                None => live.is_some_and(|(c, r)| *c == analysis.color && *r == analysis.revision),
            };
        let Some(config) = config.filter(|_| current) else {
            analysis.result = AnalysisResult::Cancelled;
            analysis.message = format!(
                "the analysis of revision {} stopped: a newer spec, a rollback or an abort came first",
                analysis.revision
            );
            self.event("AnalysisCancelled", analysis.message.clone());
            self.status.analysis = Some(analysis);
            return;
        };
        let figures = self.input.proxy.and_then(|p| p.traffic);
        if let Some(figures) = figures {
            analysis.figures = figures;
        }
        let f = analysis.figures;
        let enough = f.requests >= u64::from(config.min_requests);
        let mut breaches = Vec::new();
        if enough {
            if let Some(max) = config.max_error_ratio
                && f.error_ratio() > max
            {
                breaches.push(format!(
                    "error ratio {:.1}% above maxErrorRatio {:.1}%",
                    f.error_ratio() * 100.0,
                    max * 100.0
                ));
            }
            if let (Some(max), Some(ms)) = (config.max_response_time, f.response_time_ms)
                && ms > max.as_millis()
            {
                breaches.push(format!(
                    "average response time {ms} ms above maxResponseTime {max}"
                ));
            }
        }
        let after = crate::spec::Duration::from_millis(now.saturating_sub(analysis.started_ms));
        let revision = analysis.revision.clone();
        let when = match step {
            Some((step, of, weight)) => {
                format!("{after} into canary step {step} of {of} ({weight}% of requests)")
            }
            None => format!("{after} after the switch"),
        };
        if !breaches.is_empty() {
            analysis.result = AnalysisResult::Failed;
            analysis.message = format!(
                "revision {revision} failed its analysis {when}: {}; {f}",
                breaches.join(" and ")
            );
            let message = analysis.message.clone();
            self.status.analysis = Some(analysis);
            self.reject(&revision, index, "AnalysisFailed", &message);
            return;
        }
        if now >= analysis.until_ms {
            analysis.result = AnalysisResult::Passed;
            analysis.message = match (figures, enough) {
                (None, _) => format!(
                    "revision {revision} passed its analysis unjudged: no proxy counted its \
                     traffic (the daemon runs without one)"
                ),
                (Some(_), false) => format!(
                    "revision {revision} passed its analysis unjudged: {f}, fewer than \
                     minRequests ({})",
                    config.min_requests
                ),
                (Some(_), true) => format!("revision {revision} passed its analysis: {f}"),
            };
            self.event("AnalysisPassed", analysis.message.clone());
            self.status.analysis = Some(analysis);
            return;
        }
        analysis.message = match step {
            Some((_, _, weight)) => format!(
                "judging revision {revision} by its traffic at {weight}% until {} ({after} so \
                 far): {f}",
                rfc3339(analysis.until_ms)
            ),
            None => format!(
                "judging revision {revision} by its traffic until {} ({after} so far): {f}",
                rfc3339(analysis.until_ms)
            ),
        };
        self.status.analysis = Some(analysis);
        let until = self.status.analysis.as_ref().map_or(now, |a| a.until_ms);
        self.requeue_at(until);
    }

    /// Puts `revision` in `color` at the head of the revision history, with the switch time,
    /// unless it is there already.
    fn record_live(&mut self, service: &Service, color: Color, revision: &str) {
        let head = self.status.revision_history.first();
        if self.status.active_color == Some(color)
            && head.is_some_and(|r| r.revision == revision && r.color == color)
        {
            return;
        }
        let now = rfc3339(self.now());
        if let Some(previous) = self.status.revision_history.first_mut() {
            previous.retired_at.get_or_insert(now);
        }
        let image = self
            .world
            .color(color)
            .iter()
            .find(|c| c.revision == revision)
            .map_or_else(|| service.spec.image.clone(), |c| c.image.clone());
        self.status
            .revision_history
            .retain(|r| r.revision != revision);
        self.status.revision_history.insert(
            0,
            RevisionRecord {
                revision: revision.to_owned(),
                image,
                color,
                retired_at: None,
            },
        );
        let limit = service.release().map_or(0, |r| r.revision_history_limit) as usize;
        self.status
            .revision_history
            .truncate(limit.saturating_add(1));
        self.status.switched_at_ms = Some(self.now());
        self.status.active_color = Some(color);
        self.event(
            "Switched",
            format!("traffic switched to {color} (revision {revision})"),
        );
    }

    /// Removes archived revisions beyond `revisionHistoryLimit` (oldest first), archived
    /// replicas that are not kept, duplicates of a kept slot, and stops archived replicas
    /// that still run.
    fn prune_history(&mut self, service: &Service, live_revision: Option<&str>) {
        let limit = service.release().map_or(0, |r| r.revision_history_limit) as usize;
        // Archived containers this plan brings back, or that it only just archived.
        let touched: BTreeSet<&str> = self
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Rename { target, .. } | Step::Start { target } => Some(target.id.as_str()),
                _ => None,
            })
            .collect();
        let mut by_revision: BTreeMap<&str, Vec<&Container>> = BTreeMap::new();
        for c in &self.world.archived {
            if !touched.contains(c.id.as_str()) {
                by_revision.entry(&c.revision).or_default().push(c);
            }
        }
        let mut revisions: Vec<(&str, u64)> = by_revision
            .iter()
            .map(|(rev, cs)| (*rev, cs.iter().map(|c| c.spec_index).max().unwrap_or(0)))
            .collect();
        revisions.sort_by_key(|(_, index)| std::cmp::Reverse(*index));
        let mut kept = 0;
        let mut removals = Vec::new();
        let mut stops = Vec::new();
        for (revision, _) in revisions {
            let containers = by_revision.get(revision).cloned().unwrap_or_default();
            let keep = Some(revision) != live_revision
                && kept < limit
                && self.keeps(Some(service), revision);
            if !keep {
                removals.extend(containers);
                continue;
            }
            kept += 1;
            let mut seen = BTreeSet::new();
            let mut newest_first = containers;
            newest_first.sort_by_key(|c| std::cmp::Reverse(c.created_ms));
            for c in newest_first {
                if !seen.insert((c.color(), c.slot())) {
                    removals.push(c);
                } else if c.running {
                    stops.push(c);
                }
            }
        }
        for c in removals {
            self.steps.push(Step::Remove { target: c.into() });
        }
        for c in stops {
            self.steps.push(Step::Stop { target: c.into() });
        }
        // A switch stays the last step.
        if let Some(at) = self
            .steps
            .iter()
            .position(|s| matches!(s, Step::Switch { .. }))
        {
            let switch = self.steps.remove(at);
            self.steps.push(switch);
        }
    }

    /// Starts, replaces or removes side targets so that exactly the spec's ones run. A
    /// replaced side target keeps its name (other containers reach it by it), so its
    /// successor is created once the old one is gone.
    fn side_targets(&mut self, service: &Service) {
        let mut wanted = BTreeSet::new();
        for side in &service.spec.side_targets {
            wanted.insert(side.name.as_str());
            let revision = revision::of_side_target(side);
            let going = self.input.observed.containers.iter().any(|c| {
                c.stopping && matches!(&c.role, Role::SideTarget { name } if *name == side.name)
            });
            let existing = self
                .world
                .sides
                .iter()
                .find(|c| matches!(&c.role, Role::SideTarget { name } if *name == side.name))
                .copied();
            match existing {
                None if going => self.requeue_after(POLL_MS),
                None => {
                    self.pull_side(service, &side.image);
                    self.steps.push(Step::CreateSideTarget {
                        name: side.name.clone(),
                        revision,
                    });
                }
                Some(c) if c.revision != revision => {
                    self.pull_side(service, &side.image);
                    self.steps.push(Step::Remove { target: c.into() });
                    self.requeue_after(POLL_MS);
                }
                Some(c) if !c.running => self.steps.push(Step::Start { target: c.into() }),
                Some(_) => {}
            }
        }
        let unwanted: Vec<&Container> = self
            .world
            .sides
            .iter()
            .filter(
                |c| matches!(&c.role, Role::SideTarget { name } if !wanted.contains(name.as_str())),
            )
            .copied()
            .collect();
        for c in unwanted {
            self.steps.push(Step::Remove { target: c.into() });
        }
    }

    fn pull_side(&mut self, service: &Service, image: &str) {
        let always = service.spec.image_pull_policy == crate::spec::PullPolicy::Always;
        let pull = Step::PullImage {
            image: image.to_owned(),
        };
        if (always || !self.input.observed.images_present.contains(image))
            && !self.steps.contains(&pull)
        {
            self.steps.push(pull);
        }
    }

    /// Fills `colors` from what runs, and `active_color`.
    fn report_colors(
        &mut self,
        service: &Service,
        live: Option<Color>,
        rollout: Option<(Color, u32)>,
    ) {
        let mut colors = BTreeMap::new();
        for color in [Color::Blue, Color::Green] {
            let containers = self.world.color(color);
            let revision = match rollout {
                Some((c, _)) if c == color => {
                    self.status.rollout.as_ref().map(|r| r.revision.clone())
                }
                _ if live == Some(color) => self.live_revision(color),
                _ => dominant_revision(containers),
            };
            let Some(revision) = revision else { continue };
            let of_revision: Vec<&Container> = containers
                .iter()
                .filter(|c| c.revision == revision)
                .copied()
                .collect();
            let desired = match rollout {
                Some((c, wanted)) if c == color => wanted,
                _ if live == Some(color) => service.spec.replicas,
                _ => 0,
            };
            if of_revision.is_empty() && desired == 0 {
                continue;
            }
            let image = of_revision
                .first()
                .map_or_else(|| service.spec.image.clone(), |c| c.image.clone());
            colors.insert(
                color,
                ColorStatus {
                    image,
                    revision,
                    ready: ready_count(&of_revision),
                    desired,
                },
            );
        }
        self.status.colors = colors;
        self.status.active_color = live;
    }

    fn finish(mut self) -> Plan {
        let now = self.now();
        if let Some(proxy) = self.input.proxy.filter(|_| self.waiting_for_proxies) {
            self.condition(
                "Progressing",
                true,
                "WaitingForProxies",
                format!(
                    "replicas leave only once every proxy serves the latest route table; \
                     waiting for {}",
                    proxy.lagging.join(", ")
                ),
            );
        }
        // Two rules may ask for the same step (an expired rollout retired by scaling and by
        // its deadline); it runs once.
        let mut unique: Vec<Step> = Vec::with_capacity(self.steps.len());
        for step in std::mem::take(&mut self.steps) {
            if !unique.contains(&step) {
                unique.push(step);
            }
        }
        self.steps = unique;
        let events = std::mem::take(&mut self.events);
        if self.report {
            for step in &self.steps {
                self.status.push_event("Step", &step.to_string(), now);
            }
            for (reason, message) in &events {
                self.status.push_event(reason, message, now);
            }
        }
        Plan {
            steps: self.steps,
            status: self.report.then_some(self.status),
            gone: self.gone,
            requeue_after_ms: self.requeue_after_ms,
            warnings: self.warnings,
            deletion_refused: self.deletion_refused,
        }
    }
}

#[cfg(test)]
mod tests;
