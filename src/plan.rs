//! The planner: a pure function from (desired, observed, status, now) to the steps that move
//! one service toward its spec, and the status to report.
//!
//! Architecture invariant: nothing in this module does I/O or reads a clock. The controller
//! observes, calls [`plan`], executes the steps through the adapters, and writes the status.
//! Planning again after the steps succeeded yields no steps: that is what makes the loop
//! level-triggered and restart-safe.

use std::fmt;

use crate::status::Color;

/// A container a step acts on, with what a log line needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: String,
    pub name: String,
    pub color: Option<Color>,
    pub revision: String,
}

impl From<&crate::observed::Container> for Target {
    fn from(c: &crate::observed::Container) -> Self {
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
    /// Stop a container and keep it.
    Stop { target: Target },
    /// Remove a container (stopping it first if needed).
    Remove { target: Target },
    /// Rename a container: to archive a retired replica, or to revive one into its slot.
    Rename { target: Target, to: String },
    /// Make `color` the live color: the routes send traffic to its ready replicas.
    Switch { to: Color },
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

use std::collections::{BTreeMap, BTreeSet};

use crate::observed::{Container, Observed, Role, archived_name, replica_name};
use crate::revision;
use crate::spec::{Diagnostics, Service};
use crate::status::{
    Acknowledgement, Action, ColorStatus, Phase, Rejected, Request, RevisionRecord, Status, rfc3339,
};

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
    /// The key is gone and the deletion guard let it through: remove everything.
    Deleted,
}

/// Everything [`plan`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub name: &'a str,
    pub desired: Desired<'a>,
    pub observed: &'a Observed,
    /// The status the daemon last wrote (default when none).
    pub status: &'a Status,
    /// A pending imperative request, if any.
    pub request: Option<&'a Request>,
    /// Milliseconds since the Unix epoch.
    pub now_ms: u64,
}

/// What to do, and what to report once it is done.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// The status to write after the steps succeeded.
    pub status: Status,
    /// Reconcile again after this many milliseconds even if nothing happens (a deadline or
    /// a drain ends then).
    pub requeue_after_ms: Option<u64>,
}

/// Plans one reconcile of one service.
///
/// # Guarantees
/// - No I/O, no clock: the same input gives the same plan.
/// - An invalid spec gives no steps.
/// - Traffic only switches to a color whose replicas are all ready.
/// - [`Step::Switch`] is always the last step of a plan, so the status written after it
///   records the switch before anything else happens.
pub fn plan(input: &Input<'_>) -> Plan {
    let mut planner = Planner::new(input);
    match input.desired {
        Desired::Invalid { diagnostics, index } => planner.invalid(diagnostics, index),
        Desired::Deleted => planner.deleted(),
        Desired::Valid { service, index } => planner.valid(service, index),
    }
    planner.finish()
}

/// Why the controller refuses to act on missing specs: too many vanished at once.
///
/// Consul restarted empty, or a stray `consul kv delete -recurse`, looks exactly like a user
/// deleting every service; like Argo CD refusing an empty sync, we wait for a person.
pub fn mass_deletion(known: &BTreeSet<String>, present: &BTreeSet<String>) -> Option<String> {
    let gone: Vec<&String> = known.difference(present).collect();
    if gone.is_empty() {
        return None;
    }
    if present.is_empty() || gone.len() * 2 > known.len() {
        return Some(format!(
            "{} of {} services disappeared from KV at once ({}); refusing to remove their \
             containers until an operator confirms with `cutover prune --confirm`",
            gone.len(),
            known.len(),
            gone.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    None
}

struct Planner<'a> {
    input: &'a Input<'a>,
    steps: Vec<Step>,
    status: Status,
    requeue_after_ms: Option<u64>,
    events: Vec<(String, String)>,
}

/// The replicas of one color that are in play (not archived).
fn in_color(observed: &Observed, color: Color) -> Vec<&Container> {
    let mut found: Vec<&Container> = observed
        .containers
        .iter()
        .filter(|c| c.color() == Some(color) && !c.is_archived())
        .collect();
    found.sort_by_key(|c| c.slot());
    found
}

fn ready_count(containers: &[&Container]) -> u32 {
    containers.iter().filter(|c| c.running && c.ready).count() as u32
}

/// The one revision a group of containers runs, if they agree.
fn revision_of(containers: &[&Container]) -> Option<String> {
    let revisions: BTreeSet<&str> = containers.iter().map(|c| c.revision.as_str()).collect();
    match revisions.len() {
        1 => revisions.into_iter().next().map(str::to_owned),
        _ => None,
    }
}

impl<'a> Planner<'a> {
    fn new(input: &'a Input<'a>) -> Self {
        let mut status = input.status.clone();
        status.last_error = None;
        Planner {
            input,
            steps: Vec::new(),
            status,
            requeue_after_ms: None,
            events: Vec::new(),
        }
    }

    fn now(&self) -> u64 {
        self.input.now_ms
    }

    fn event(&mut self, reason: &str, message: impl Into<String>) {
        self.events.push((reason.to_owned(), message.into()));
    }

    fn requeue_at(&mut self, at_ms: u64) {
        let after = at_ms.saturating_sub(self.now()).max(1);
        self.requeue_after_ms = Some(self.requeue_after_ms.map_or(after, |a| a.min(after)));
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
        if self.status.condition("Degraded").map(|c| c.reason.as_str()) != Some("InvalidSpec")
            || self.status.condition("Degraded").map(|c| &c.message) != Some(&message)
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

    fn deleted(&mut self) {
        for c in &self.input.observed.containers {
            self.steps.push(Step::Remove { target: c.into() });
        }
        if !self.steps.is_empty() {
            self.event("Deleted", "spec deleted; removing every container");
        }
    }

    fn valid(&mut self, service: &'a Service, index: u64) {
        let desired_revision = revision::of_service(service);
        self.status.observed_index = index;
        let live = self.live_color();

        // A request acknowledged once is never acted on again.
        let request = self
            .input
            .request
            .filter(|r| self.status.last_request.as_ref().map(|a| &a.id) != Some(&r.id));

        let rejected = self
            .status
            .rejected
            .as_ref()
            .filter(|r| r.revision == desired_revision && r.spec_index == index)
            .cloned();
        if self.status.rejected.is_some() && rejected.is_none() {
            // The spec changed since the rejection: try again.
            self.status.rejected = None;
        }

        self.side_targets(service);

        let live_revision = live.and_then(|c| revision_of(&in_color(self.input.observed, c)));
        // A promotion, once acknowledged, holds until the rollout is done.
        let mut promote = self.status.last_request.as_ref().is_some_and(|a| {
            a.action == Action::Promote && a.result == "Done" && a.revision == desired_revision
        });
        let mut rejected = rejected;
        if let Some(request) = request {
            let (result, message) = self.request(
                request,
                live,
                live_revision.as_deref(),
                &desired_revision,
                index,
            );
            if result == "Done" {
                match request.action {
                    Action::Promote => promote = true,
                    Action::Abort | Action::Rollback => {
                        rejected = self.status.rejected.clone();
                    }
                }
            }
            self.status.last_request = Some(Acknowledgement {
                id: request.id.clone(),
                action: request.action,
                revision: request.revision.clone(),
                result: result.to_owned(),
                message,
            });
        }

        // The revision that should be live: the spec's, unless it was rejected; then the one
        // serving now, or after a rollback the newest one kept.
        let target = match (&rejected, &live_revision) {
            (None, _) => Goal::Spec(desired_revision.clone()),
            (Some(_), Some(lr)) if *lr != desired_revision => Goal::Hold,
            (Some(_), _) => match self.kept_revision(live) {
                Some(kept) => Goal::Revive(kept),
                None => Goal::Hold,
            },
        };

        match target {
            Goal::Hold => {
                if let Some(color) = live {
                    self.clean_other_color(service, color, live_revision.as_deref());
                    self.report_colors(service, Some(color), None);
                }
                let r = rejected.expect("hold only follows a rejection");
                self.condition("Degraded", true, &r.reason, r.message.clone());
                self.condition(
                    "Progressing",
                    false,
                    "RevisionRejected",
                    format!(
                        "revision {} is rejected until the spec changes; the last good \
                         revision keeps serving",
                        r.revision
                    ),
                );
                self.status.preview_color = None;
                self.set_phase(Phase::Degraded);
            }
            Goal::Spec(ref revision) if live_revision.as_deref() == Some(revision) => {
                let color = live.expect("a live revision has a live color");
                self.steady(service, color);
            }
            Goal::Spec(revision) => {
                self.rollout(service, index, live, &revision, promote, None);
            }
            Goal::Revive(kept) => {
                self.rollout(service, index, live, &kept.clone(), true, Some(kept));
            }
        }
        self.prune_history(service, live);
    }

    /// The color serving traffic: what the status says, or, when the status was lost, the
    /// older of the running colors (the switch may not have happened).
    fn live_color(&self) -> Option<Color> {
        let observed = self.input.observed;
        if let Some(color) = self.input.status.active_color {
            return (!in_color(observed, color).is_empty()).then_some(color);
        }
        if self.input.status.phase.is_some() {
            return None;
        }
        [Color::Blue, Color::Green]
            .into_iter()
            .filter(|&c| in_color(observed, c).iter().any(|c| c.running))
            .min_by_key(|&c| {
                in_color(observed, c)
                    .iter()
                    .map(|c| c.spec_index)
                    .max()
                    .unwrap_or(0)
            })
    }

    /// The newest revision other than the live one that still has containers of the other
    /// color: running (draining) or archived.
    fn kept_revision(&self, live: Option<Color>) -> Option<String> {
        let live = live?;
        let live_revision = revision_of(&in_color(self.input.observed, live));
        self.input
            .observed
            .containers
            .iter()
            .filter(|c| c.color() == Some(live.other()))
            .filter(|c| Some(&c.revision) != live_revision.as_ref())
            .max_by_key(|c| (c.spec_index, c.created_ms))
            .map(|c| c.revision.clone())
    }

    /// Decides on an imperative request. Returns the result word and a message.
    fn request(
        &mut self,
        request: &Request,
        live: Option<Color>,
        live_revision: Option<&str>,
        desired_revision: &str,
        index: u64,
    ) -> (&'static str, String) {
        let rollout_color = live.map_or(Color::Blue, Color::other);
        let rollout_revision = revision_of(&in_color(self.input.observed, rollout_color));
        match request.action {
            Action::Promote | Action::Abort
                if rollout_revision.as_deref() != Some(request.revision.as_str())
                    || live_revision == Some(request.revision.as_str()) =>
            {
                (
                    "Stale",
                    format!("no rollout of revision {} in progress", request.revision),
                )
            }
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
            Action::Rollback if request.revision != desired_revision => (
                "Stale",
                format!(
                    "revision {} is not the spec's revision; change the spec instead",
                    request.revision
                ),
            ),
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

    /// The live color runs the spec's revision: scale it in place, restart what crashed, and
    /// retire the other color once its drain is over.
    fn steady(&mut self, service: &Service, color: Color) {
        let replicas = service.spec.replicas;
        self.scale_color(service, color, replicas);
        let live_revision = revision::of_service(service);
        let drained = self.clean_other_color(service, color, Some(&live_revision));
        let containers = in_color(self.input.observed, color);
        let ready = ready_count(&containers).min(replicas);
        self.report_colors(service, Some(color), None);
        self.status.preview_color = None;
        let scaling = containers.len() as u32 != replicas || ready < replicas;
        self.condition("Degraded", false, "AsExpected", "");
        if scaling {
            self.condition(
                "Progressing",
                true,
                "Scaling",
                format!("{ready}/{replicas} replicas of {color} ready"),
            );
        } else if !drained {
            self.condition(
                "Progressing",
                false,
                "RolloutComplete",
                format!("{color} is live; the old color drains before it stops"),
            );
        } else {
            self.condition(
                "Progressing",
                false,
                "RolloutComplete",
                format!("{color} is live with revision {live_revision}"),
            );
        }
        self.condition(
            "Available",
            ready == replicas,
            if ready == replicas {
                "AllReplicasReady"
            } else {
                "ReplicasNotReady"
            },
            format!("{ready}/{replicas} replicas ready"),
        );
        self.set_phase(if ready == replicas {
            Phase::Available
        } else {
            Phase::Progressing
        });
    }

    /// Brings the color to exactly `count` replicas of the spec's revision: creates missing
    /// slots, starts stopped ones, removes slots above `count`.
    fn scale_color(&mut self, service: &Service, color: Color, count: u32) {
        let revision = revision::of_service(service);
        let containers = in_color(self.input.observed, color);
        let mut needs_image = false;
        for slot in 1..=count {
            match containers.iter().find(|c| c.slot() == Some(slot)) {
                Some(c) if !c.running => self.steps.push(Step::Start {
                    target: (*c).into(),
                }),
                Some(_) => {}
                None => {
                    needs_image = true;
                    self.steps.push(Step::CreateReplica {
                        color,
                        slot,
                        revision: revision.clone(),
                    });
                }
            }
        }
        for c in containers.iter().rev() {
            if c.slot().is_some_and(|s| s > count) {
                self.steps.push(Step::Remove {
                    target: (*c).into(),
                });
            }
        }
        if needs_image {
            self.pull_first(service, &service.spec.image);
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

    /// Retires or removes the replicas of the non-live color that do not run `keep`. Returns
    /// false while the old color is still draining.
    fn clean_other_color(&mut self, service: &Service, live: Color, keep: Option<&str>) -> bool {
        let other = in_color(self.input.observed, live.other());
        let stale: Vec<&Container> = other
            .into_iter()
            .filter(|c| Some(c.revision.as_str()) != keep)
            .collect();
        if stale.is_empty() {
            return true;
        }
        if let Some(until) = self.drain_until(service)
            && stale.iter().any(|c| c.running)
            && self.now() < until
        {
            self.requeue_at(until);
            return false;
        }
        // Revisions that served and were not rejected are kept for a rollback.
        let rejected = self.status.rejected.as_ref().map(|r| r.revision.as_str());
        let was_live: BTreeSet<String> = self
            .status
            .revision_history
            .iter()
            .map(|r| r.revision.clone())
            .filter(|r| Some(r.as_str()) != rejected)
            .collect();
        let keep_history = service
            .blue_green()
            .map_or(0, |bg| bg.revision_history_limit)
            > 0;
        for c in stale {
            if keep_history && was_live.contains(&c.revision) {
                self.archive(c);
            } else {
                self.steps.push(Step::Remove { target: c.into() });
            }
        }
        self.event("Retired", format!("retired color {}", live.other()));
        true
    }

    /// Stops a replica and renames it out of its slot, keeping it for a rollback. An older
    /// copy of the same revision and slot (A, then B, then A again) makes way for it.
    fn archive(&mut self, c: &Container) {
        let to = archived_name(&c.service, &c.revision, c.slot().unwrap_or(0));
        if c.running {
            self.steps.push(Step::Stop { target: c.into() });
        }
        if let Some(older) = self
            .input
            .observed
            .containers
            .iter()
            .find(|o| o.name == to && o.id != c.id)
        {
            self.steps.push(Step::Remove {
                target: older.into(),
            });
        }
        self.steps.push(Step::Rename {
            target: c.into(),
            to,
        });
    }

    /// When the current drain ends, if the service switched colors recently.
    fn drain_until(&self, service: &Service) -> Option<u64> {
        let delay = service
            .blue_green()
            .map_or(0, |bg| bg.scale_down_delay.as_millis());
        self.status.switched_at_ms.map(|at| at + delay)
    }

    /// Brings `revision` up in the non-live color (or the live one for `recreate`),
    /// health-gates it and switches to it. `revive` names a kept revision whose stopped
    /// containers are brought back instead of creating new ones.
    fn rollout(
        &mut self,
        service: &Service,
        index: u64,
        live: Option<Color>,
        revision: &str,
        promote: bool,
        revive: Option<String>,
    ) {
        let blue_green = service.blue_green();
        let recreate = blue_green.is_none();
        let color = match (live, recreate) {
            (Some(c), false) => c.other(),
            (Some(c), true) => c,
            (None, _) => Color::Blue,
        };
        let first = live.is_none();
        let auto = first || promote || blue_green.is_none_or(|bg| bg.auto_promote);
        let replicas = service.spec.replicas;
        let wanted = if auto {
            replicas
        } else {
            blue_green
                .and_then(|bg| bg.preview_replicas)
                .unwrap_or(replicas)
                .min(replicas)
        };
        let observed = self.input.observed;
        let present = in_color(observed, color);

        // Containers in the target color that run something else must go first.
        let blocking: Vec<&Container> = present
            .iter()
            .copied()
            .filter(|c| c.revision != revision)
            .collect();
        if !blocking.is_empty() {
            if recreate {
                for c in &blocking {
                    self.archive(c);
                }
                self.event("Recreating", format!("stopping {color} to recreate it"));
            } else {
                let live = live.expect("a blocked color beside no live color is impossible");
                let drained = self.clean_other_color(service, live, None);
                if !drained {
                    self.progressing(
                        "Draining",
                        format!("waiting for {color} to drain before reusing it"),
                    );
                    self.report_colors(service, Some(live), None);
                    return;
                }
            }
        }

        if let Some(kept) = &revive {
            let archived: Vec<&Container> = observed
                .containers
                .iter()
                .filter(|c| c.color() == Some(color) && &c.revision == kept && c.is_archived())
                .collect();
            for c in archived {
                let slot = c.slot().unwrap_or(0);
                self.steps.push(Step::Rename {
                    target: c.into(),
                    to: replica_name(&c.service, color, slot),
                });
                self.steps.push(Step::Start { target: c.into() });
            }
            for c in present.iter().filter(|c| &c.revision == kept && !c.running) {
                self.steps.push(Step::Start {
                    target: (*c).into(),
                });
            }
        } else {
            let mine: Vec<&Container> = present
                .iter()
                .copied()
                .filter(|c| c.revision == revision)
                .collect();
            if mine.is_empty() && blocking.is_empty() {
                self.event(
                    "RolloutStarted",
                    format!("starting {color} with revision {revision} (spec index {index})"),
                );
            }
            // Scale only the slots of this revision; the blocking ones are being retired.
            let steps_before = self.steps.len();
            self.scale_color_of(service, color, &mine, wanted);
            if self.steps.len() > steps_before {
                self.pull_first(service, &service.spec.image);
            }
        }

        let mine: Vec<&Container> = present
            .iter()
            .copied()
            .filter(|c| c.revision == revision)
            .collect();
        let ready = ready_count(&mine);
        self.report_colors(service, live, Some((color, wanted)));

        if !self.steps.is_empty() || ready < wanted {
            // Not healthy yet: check the deadline.
            let started = mine.iter().map(|c| c.created_ms).min();
            let deadline = blue_green
                .map_or(crate::spec::defaults::progress_deadline(), |bg| {
                    bg.progress_deadline
                })
                .as_millis();
            if revive.is_none()
                && let Some(started) = started
            {
                let due = started + deadline;
                if self.now() >= due {
                    self.abort_rollout(&mine, revision, index, deadline, live);
                    return;
                }
                self.requeue_at(due);
            }
            self.progressing(
                "WaitingForHealthy",
                format!("{ready}/{wanted} replicas of {color} (revision {revision}) ready"),
            );
            if let Some(live) = live {
                self.status.preview_color = Some(color).filter(|c| *c != live);
            }
            return;
        }

        if auto && wanted == replicas {
            if live != Some(color) || recreate {
                self.steps.push(Step::Switch { to: color });
            }
            self.switched(service, color, revision);
            return;
        }
        // Healthy and waiting for a person.
        self.status.preview_color = Some(color);
        self.condition("Degraded", false, "AsExpected", "");
        self.condition(
            "Progressing",
            true,
            "WaitingForPromotion",
            format!("{color} (revision {revision}) is ready on the preview route; run `cutover promote {}`", service.name()),
        );
        self.set_phase(Phase::Preview);
    }

    /// Like [`Planner::scale_color`], but counting only `mine` as present.
    fn scale_color_of(&mut self, service: &Service, color: Color, mine: &[&Container], count: u32) {
        let revision = revision::of_service(service);
        for slot in 1..=count {
            match mine.iter().find(|c| c.slot() == Some(slot)) {
                Some(c) if !c.running => self.steps.push(Step::Start {
                    target: (*c).into(),
                }),
                Some(_) => {}
                None => self.steps.push(Step::CreateReplica {
                    color,
                    slot,
                    revision: revision.clone(),
                }),
            }
        }
        for c in mine.iter().rev() {
            if c.slot().is_some_and(|s| s > count) {
                self.steps.push(Step::Remove {
                    target: (*c).into(),
                });
            }
        }
    }

    fn progressing(&mut self, reason: &str, message: String) {
        self.condition("Degraded", false, "AsExpected", "");
        self.condition("Progressing", true, reason, message);
        self.set_phase(Phase::Progressing);
    }

    fn abort_rollout(
        &mut self,
        mine: &[&Container],
        revision: &str,
        index: u64,
        deadline_ms: u64,
        live: Option<Color>,
    ) {
        self.steps.clear();
        for c in mine {
            self.steps.push(Step::Remove {
                target: (*c).into(),
            });
        }
        let message = format!(
            "revision {revision} was not healthy within progressDeadline ({}); {}",
            crate::spec::Duration::from_millis(deadline_ms),
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
        self.set_phase(Phase::Degraded);
    }

    /// Records a switch to `color` (planned now, or found done).
    fn switched(&mut self, service: &Service, color: Color, revision: &str) {
        let replicas = service.spec.replicas;
        if self.status.active_color != Some(color)
            || self
                .status
                .revision_history
                .first()
                .map(|r| r.revision.as_str())
                != Some(revision)
        {
            let now = rfc3339(self.now());
            if let Some(previous) = self.status.revision_history.first_mut() {
                previous.retired_at.get_or_insert(now);
            }
            let image = in_color(self.input.observed, color)
                .first()
                .map_or_else(|| service.spec.image.clone(), |c| c.image.clone());
            self.status.revision_history.insert(
                0,
                RevisionRecord {
                    revision: revision.to_owned(),
                    image,
                    color,
                    retired_at: None,
                },
            );
            let limit = service
                .blue_green()
                .map_or(0, |bg| bg.revision_history_limit) as usize;
            self.status.revision_history.truncate(limit + 1);
            self.status.switched_at_ms = Some(self.now());
            self.event(
                "Switched",
                format!("traffic switched to {color} (revision {revision})"),
            );
        }
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
        self.condition(
            "Available",
            true,
            "AllReplicasReady",
            format!("{replicas}/{replicas} replicas ready"),
        );
        self.set_phase(Phase::Available);
    }

    /// Removes archived revisions beyond `revisionHistoryLimit`, oldest first.
    fn prune_history(&mut self, service: &Service, live: Option<Color>) {
        let limit = service
            .blue_green()
            .map_or(0, |bg| bg.revision_history_limit) as usize;
        let live_revision = live.and_then(|c| revision_of(&in_color(self.input.observed, c)));
        let mut by_revision: BTreeMap<&str, Vec<&Container>> = BTreeMap::new();
        for c in &self.input.observed.containers {
            if c.is_archived() && Some(&c.revision) != live_revision.as_ref() {
                by_revision.entry(&c.revision).or_default().push(c);
            }
        }
        let mut revisions: Vec<(&str, u64)> = by_revision
            .iter()
            .map(|(rev, cs)| (*rev, cs.iter().map(|c| c.spec_index).max().unwrap_or(0)))
            .collect();
        revisions.sort_by_key(|(_, index)| std::cmp::Reverse(*index));
        // A revision being revived right now is no longer history.
        let planned: BTreeSet<String> = self
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Rename { target, .. } => Some(target.id.clone()),
                _ => None,
            })
            .collect();
        for (revision, _) in revisions.into_iter().skip(limit) {
            for c in &by_revision[revision] {
                if !planned.contains(&c.id) {
                    self.steps.push(Step::Remove {
                        target: (*c).into(),
                    });
                }
            }
        }
    }

    /// Starts, replaces or removes side targets so that exactly the spec's ones run.
    fn side_targets(&mut self, service: &Service) {
        let observed = self.input.observed;
        let mut wanted = BTreeSet::new();
        for side in &service.spec.side_targets {
            wanted.insert(side.name.as_str());
            let revision = revision::of_side_target(side);
            let existing = observed
                .containers
                .iter()
                .find(|c| matches!(&c.role, Role::SideTarget { name } if *name == side.name));
            let create = Step::CreateSideTarget {
                name: side.name.clone(),
                revision: revision.clone(),
            };
            match existing {
                None => {
                    self.pull_side(service, &side.image);
                    self.steps.push(create);
                }
                Some(c) if c.revision != revision => {
                    self.pull_side(service, &side.image);
                    self.steps.push(Step::Remove { target: c.into() });
                    self.steps.push(create);
                }
                Some(c) if !c.running => self.steps.push(Step::Start { target: c.into() }),
                Some(_) => {}
            }
        }
        for c in &observed.containers {
            if let Role::SideTarget { name } = &c.role
                && !wanted.contains(name.as_str())
            {
                self.steps.push(Step::Remove { target: c.into() });
            }
        }
    }

    fn pull_side(&mut self, service: &Service, image: &str) {
        let always = service.spec.image_pull_policy == crate::spec::PullPolicy::Always;
        if always || !self.input.observed.images_present.contains(image) {
            self.steps.push(Step::PullImage {
                image: image.to_owned(),
            });
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
            let containers = in_color(self.input.observed, color);
            let Some(first) = containers.first() else {
                continue;
            };
            let desired = match rollout {
                Some((c, wanted)) if c == color => wanted,
                _ if live == Some(color) => service.spec.replicas,
                _ => 0,
            };
            colors.insert(
                color,
                ColorStatus {
                    image: first.image.clone(),
                    revision: revision_of(&containers).unwrap_or_else(|| first.revision.clone()),
                    ready: ready_count(&containers),
                    desired,
                },
            );
        }
        self.status.colors = colors;
        if live.is_some() {
            self.status.active_color = live;
        }
    }

    fn finish(mut self) -> Plan {
        let now = self.now();
        for step in &self.steps {
            self.status.push_event("Step", &step.to_string(), now);
        }
        for (reason, message) in &self.events {
            self.status.push_event(reason, message, now);
        }
        Plan {
            steps: self.steps,
            status: self.status,
            requeue_after_ms: self.requeue_after_ms,
        }
    }
}

/// What the live color should end up running.
enum Goal {
    /// The spec's revision.
    Spec(String),
    /// The live revision, because the spec's was rejected.
    Hold,
    /// A kept revision, after a rollback.
    Revive(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_service;

    const SECOND: u64 = 1000;

    /// A two-replica `books` service with `extra` lines added to its spec.
    fn service(extra: &str) -> Service {
        let replicas = if extra.contains("replicas:") {
            ""
        } else {
            "  replicas: 2\n"
        };
        let text = format!(
            "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {{name: books}}\nspec:\n  image: books:1\n{replicas}{extra}"
        );
        parse_service("books.yaml", &text).unwrap()
    }

    fn with_image(image: &str, extra: &str) -> Service {
        let mut s = service(extra);
        s.spec.image = image.to_owned();
        s
    }

    /// A world the tests drive: what runs, the status, and the clock.
    struct World {
        observed: Observed,
        status: Status,
        now_ms: u64,
        next_id: u32,
    }

    impl World {
        fn new() -> Self {
            let mut observed = Observed::default();
            observed.images_present.insert("books:1".to_owned());
            observed.images_present.insert("books:2".to_owned());
            World {
                observed,
                status: Status::default(),
                now_ms: 1_000_000,
                next_id: 0,
            }
        }

        fn plan(&self, service: &Service, index: u64) -> Plan {
            self.plan_with(Desired::Valid { service, index }, None)
        }

        fn plan_with(&self, desired: Desired<'_>, request: Option<&Request>) -> Plan {
            plan(&Input {
                name: "books",
                desired,
                observed: &self.observed,
                status: &self.status,
                request,
                now_ms: self.now_ms,
            })
        }

        /// Carries a plan out the way the adapters would, and keeps its status.
        fn apply(&mut self, service: &Service, index: u64, plan: &Plan) {
            for step in &plan.steps {
                match step {
                    Step::PullImage { image } => {
                        self.observed.images_present.insert(image.clone());
                    }
                    Step::CreateReplica {
                        color,
                        slot,
                        revision,
                    } => {
                        self.next_id += 1;
                        self.observed.containers.push(Container {
                            id: format!("id{}", self.next_id),
                            name: replica_name("books", *color, *slot),
                            service: "books".to_owned(),
                            role: Role::Replica {
                                color: *color,
                                slot: *slot,
                            },
                            revision: revision.clone(),
                            spec_index: index,
                            image: service.spec.image.clone(),
                            running: true,
                            created_ms: self.now_ms,
                            address: Some("10.0.0.1".to_owned()),
                            ready: false,
                        });
                    }
                    Step::CreateSideTarget { name, revision } => {
                        self.next_id += 1;
                        self.observed.containers.push(Container {
                            id: format!("id{}", self.next_id),
                            name: format!("books-{name}"),
                            service: "books".to_owned(),
                            role: Role::SideTarget { name: name.clone() },
                            revision: revision.clone(),
                            spec_index: index,
                            image: "db:1".to_owned(),
                            running: true,
                            created_ms: self.now_ms,
                            address: None,
                            ready: false,
                        });
                    }
                    Step::Start { target } => self.find(&target.id).running = true,
                    Step::Stop { target } => {
                        let c = self.find(&target.id);
                        c.running = false;
                        c.ready = false;
                    }
                    Step::Remove { target } => {
                        self.observed.containers.retain(|c| c.id != target.id)
                    }
                    Step::Rename { target, to } => self.find(&target.id).name = to.clone(),
                    Step::Switch { .. } => {}
                }
            }
            self.status = plan.status.clone();
        }

        fn find(&mut self, id: &str) -> &mut Container {
            self.observed
                .containers
                .iter_mut()
                .find(|c| c.id == id)
                .expect("container")
        }

        fn all_ready(&mut self) {
            for c in &mut self.observed.containers {
                c.ready = c.running;
            }
        }

        fn later(&mut self, ms: u64) {
            self.now_ms += ms;
        }

        /// Plans, applies and marks everything ready until no steps remain (at most 10
        /// rounds), letting time pass past any requeue.
        fn converge(&mut self, service: &Service, index: u64) -> Plan {
            for _ in 0..10 {
                let p = self.plan(service, index);
                if p.steps.is_empty() && p.requeue_after_ms.is_none() {
                    return p;
                }
                self.apply(service, index, &p);
                self.all_ready();
                if let Some(after) = p.requeue_after_ms {
                    self.later(after);
                }
            }
            panic!("did not converge: {:#?}", self.plan(service, index));
        }

        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = self
                .observed
                .containers
                .iter()
                .map(|c| format!("{}{}", c.name, if c.running { "" } else { " (stopped)" }))
                .collect();
            names.sort();
            names
        }
    }

    fn describe(plan: &Plan) -> Vec<String> {
        plan.steps.iter().map(|s| s.to_string()).collect()
    }

    fn rev(service: &Service) -> String {
        revision::of_service(service)
    }

    #[test]
    fn first_deploy_creates_blue_then_switches_once_healthy() {
        let books = service("");
        let mut world = World::new();
        let p = world.plan(&books, 7);
        let r = rev(&books);
        assert_eq!(
            describe(&p),
            [
                format!("create blue replica 1 (revision {r})"),
                format!("create blue replica 2 (revision {r})")
            ]
        );
        assert_eq!(p.status.phase, Some(Phase::Progressing));
        assert_eq!(p.status.observed_index, 7);
        world.apply(&books, 7, &p);

        let p = world.plan(&books, 7);
        assert!(p.steps.is_empty(), "waits for health: {:?}", describe(&p));
        assert!(p.requeue_after_ms.is_some(), "requeues at the deadline");
        world.all_ready();

        let p = world.plan(&books, 7);
        assert_eq!(describe(&p), ["switch traffic to blue"]);
        assert_eq!(p.status.active_color, Some(Color::Blue));
        assert_eq!(p.status.phase, Some(Phase::Available));
        world.apply(&books, 7, &p);
        assert!(world.plan(&books, 7).steps.is_empty(), "converged");
    }

    #[test]
    fn a_missing_image_is_pulled_before_anything_is_created() {
        let books = with_image("books:3", "");
        let p = World::new().plan(&books, 1);
        assert_eq!(describe(&p)[0], "pull image books:3");
        assert_eq!(p.steps.len(), 3);
    }

    #[test]
    fn pull_policy_always_pulls_before_new_containers_only() {
        let books = service("  imagePullPolicy: Always\n");
        let mut world = World::new();
        assert_eq!(describe(&world.plan(&books, 1))[0], "pull image books:1");
        world.converge(&books, 1);
        assert!(
            world.plan(&books, 1).steps.is_empty(),
            "no pull in steady state"
        );
    }

    #[test]
    fn a_replica_change_scales_the_live_color_in_place() {
        let mut world = World::new();
        world.converge(&service(""), 1);
        let four = service("  replicas: 4\n");
        let p = world.plan(&four, 2);
        let r = rev(&four);
        assert_eq!(
            describe(&p),
            [
                format!("create blue replica 3 (revision {r})"),
                format!("create blue replica 4 (revision {r})")
            ]
        );
        world.converge(&four, 2);
        let mut one = four.clone();
        one.spec.replicas = 1;
        assert_eq!(
            describe(&world.plan(&one, 3)),
            [
                "remove books-blue-4",
                "remove books-blue-3",
                "remove books-blue-2"
            ]
        );
    }

    #[test]
    fn a_new_revision_rolls_to_the_other_color_and_drains_the_old_one() {
        let v1 = service("");
        let v2 = with_image("books:2", "");
        let mut world = World::new();
        world.converge(&v1, 1);

        let p = world.plan(&v2, 2);
        assert_eq!(
            describe(&p),
            [
                format!("create green replica 1 (revision {})", rev(&v2)),
                format!("create green replica 2 (revision {})", rev(&v2)),
            ]
        );
        world.apply(&v2, 2, &p);
        assert_eq!(
            world.status.active_color,
            Some(Color::Blue),
            "blue still serves"
        );
        assert_eq!(world.status.preview_color, Some(Color::Green));
        world.all_ready();

        let p = world.plan(&v2, 2);
        assert_eq!(describe(&p), ["switch traffic to green"]);
        world.apply(&v2, 2, &p);
        assert_eq!(world.status.revision_history.len(), 2);

        // The old color drains for scaleDownDelay (10s by default) before it stops.
        let p = world.plan(&v2, 2);
        assert!(p.steps.is_empty(), "{:?}", describe(&p));
        assert_eq!(p.requeue_after_ms, Some(10 * SECOND));
        assert_eq!(
            p.status.phase,
            Some(Phase::Available),
            "the rollout is done for waiters"
        );
        world.later(10 * SECOND);
        let p = world.plan(&v2, 2);
        let r1 = rev(&v1);
        assert_eq!(
            describe(&p),
            [
                "stop books-blue-1".to_owned(),
                format!("rename books-blue-1 to books-r{r1}-1"),
                "stop books-blue-2".to_owned(),
                format!("rename books-blue-2 to books-r{r1}-2"),
            ]
        );
        world.apply(&v2, 2, &p);
        assert!(world.plan(&v2, 2).steps.is_empty());
        assert_eq!(
            world.names(),
            [
                "books-green-1",
                "books-green-2",
                &format!("books-r{r1}-1 (stopped)"),
                &format!("books-r{r1}-2 (stopped)"),
            ]
        );
    }

    #[test]
    fn without_auto_promote_the_new_color_waits_in_preview_until_promoted() {
        let manual = "  strategy: {blueGreen: {autoPromote: false, previewReplicas: 1}}\n";
        let v1 = service(manual);
        let v2 = with_image("books:2", manual);
        let mut world = World::new();
        world.converge(&v1, 1);
        assert_eq!(
            world.status.active_color,
            Some(Color::Blue),
            "a first deploy promotes"
        );

        let p = world.plan(&v2, 2);
        assert_eq!(
            describe(&p),
            [format!("create green replica 1 (revision {})", rev(&v2))]
        );
        world.apply(&v2, 2, &p);
        world.all_ready();
        let p = world.plan(&v2, 2);
        assert!(p.steps.is_empty());
        assert_eq!(p.status.phase, Some(Phase::Preview));
        assert_eq!(p.status.preview_color, Some(Color::Green));
        world.apply(&v2, 2, &p);

        let stale = Request {
            id: "r1".into(),
            action: Action::Promote,
            revision: rev(&v1),
            requested_at: String::new(),
        };
        let p = world.plan_with(
            Desired::Valid {
                service: &v2,
                index: 2,
            },
            Some(&stale),
        );
        assert!(p.steps.is_empty());
        assert_eq!(p.status.last_request.as_ref().unwrap().result, "Stale");

        let promote = Request {
            id: "r2".into(),
            revision: rev(&v2),
            ..stale
        };
        let p = world.plan_with(
            Desired::Valid {
                service: &v2,
                index: 2,
            },
            Some(&promote),
        );
        assert_eq!(
            describe(&p),
            [format!("create green replica 2 (revision {})", rev(&v2))]
        );
        assert_eq!(p.status.last_request.as_ref().unwrap().result, "Done");
        world.apply(&v2, 2, &p);
        world.all_ready();
        // The acknowledged request stays in KV; it must not act twice, and promotion holds.
        let p = world.plan_with(
            Desired::Valid {
                service: &v2,
                index: 2,
            },
            Some(&promote),
        );
        assert_eq!(describe(&p), ["switch traffic to green"]);
    }

    #[test]
    fn a_rollout_not_healthy_by_its_deadline_is_aborted_and_its_revision_rejected() {
        let v1 = service("");
        let v2 = with_image("books:2", "");
        let mut world = World::new();
        world.converge(&v1, 1);
        let p = world.plan(&v2, 2);
        world.apply(&v2, 2, &p);
        world.later(120 * SECOND);
        let p = world.plan(&v2, 2);
        assert_eq!(
            describe(&p),
            ["remove books-green-1", "remove books-green-2"]
        );
        assert_eq!(p.status.phase, Some(Phase::Degraded));
        assert_eq!(
            p.status.condition("Degraded").unwrap().reason,
            "ProgressDeadlineExceeded"
        );
        assert_eq!(
            p.status.active_color,
            Some(Color::Blue),
            "blue keeps serving"
        );
        world.apply(&v2, 2, &p);

        let p = world.plan(&v2, 2);
        assert!(
            p.steps.is_empty(),
            "a rejected revision is not retried: {:?}",
            describe(&p)
        );
        assert_eq!(p.status.phase, Some(Phase::Degraded));

        // The same spec written again (a new index) is a new attempt.
        assert_eq!(world.plan(&v2, 3).steps.len(), 2);
    }

    #[test]
    fn an_invalid_spec_changes_nothing_and_says_why() {
        let mut world = World::new();
        world.converge(&service(""), 1);
        let diagnostics =
            parse_service("cutover/services/books", "spec: {replica: 2}").unwrap_err();
        let p = world.plan_with(
            Desired::Invalid {
                diagnostics: &diagnostics,
                index: 9,
            },
            None,
        );
        assert!(p.steps.is_empty());
        assert_eq!(p.status.phase, Some(Phase::Invalid));
        assert_eq!(p.status.observed_index, 9);
        assert_eq!(p.status.active_color, Some(Color::Blue));
        let condition = p.status.condition("Degraded").unwrap();
        assert_eq!(condition.reason, "InvalidSpec");
        assert!(
            condition.message.contains("cutover/services/books:"),
            "{}",
            condition.message
        );
    }

    #[test]
    fn a_deleted_spec_removes_every_container() {
        let mut world = World::new();
        world.converge(&service("  sideTargets: [{name: db, image: books:1}]\n"), 1);
        let p = world.plan_with(Desired::Deleted, None);
        assert_eq!(p.steps.len(), 3);
        assert!(p.steps.iter().all(|s| matches!(s, Step::Remove { .. })));
    }

    #[test]
    fn side_targets_start_once_and_survive_rollouts() {
        let side = "  sideTargets: [{name: db, image: books:1}]\n";
        let v1 = service(side);
        let mut world = World::new();
        let p = world.plan(&v1, 1);
        assert!(
            describe(&p)[0].starts_with("create side target db"),
            "{:?}",
            describe(&p)
        );
        world.converge(&v1, 1);
        let v2 = with_image("books:2", side);
        let p = world.plan(&v2, 2);
        assert!(
            p.steps
                .iter()
                .all(|s| matches!(s, Step::CreateReplica { .. })),
            "{:?}",
            describe(&p)
        );
        world.converge(&v2, 2);
        assert!(world.names().contains(&"books-db".to_owned()));
    }

    #[test]
    fn recreate_stops_the_old_revision_before_starting_the_new_one_in_place() {
        let strategy = "  strategy: {recreate: {}}\n";
        let v1 = service(strategy);
        let v2 = with_image("books:2", strategy);
        let mut world = World::new();
        world.converge(&v1, 1);
        let p = world.plan(&v2, 2);
        let r1 = rev(&v1);
        let r2 = rev(&v2);
        assert_eq!(
            describe(&p),
            [
                "stop books-blue-1".to_owned(),
                format!("rename books-blue-1 to books-r{r1}-1"),
                "stop books-blue-2".to_owned(),
                format!("rename books-blue-2 to books-r{r1}-2"),
                format!("create blue replica 1 (revision {r2})"),
                format!("create blue replica 2 (revision {r2})"),
            ]
        );
        world.converge(&v2, 2);
        assert_eq!(world.status.active_color, Some(Color::Blue));
        assert_eq!(world.status.phase, Some(Phase::Available));
    }

    #[test]
    fn only_revision_history_limit_old_revisions_are_kept() {
        let mut world = World::new();
        for (index, image) in [
            (1, "books:1"),
            (2, "books:2"),
            (3, "books:3"),
            (4, "books:4"),
        ] {
            world.observed.images_present.insert(image.to_owned());
            world.converge(&with_image(image, ""), index);
        }
        let kept: BTreeSet<&str> = world
            .observed
            .containers
            .iter()
            .filter(|c| c.is_archived())
            .map(|c| c.image.as_str())
            .collect();
        assert_eq!(
            kept,
            BTreeSet::from(["books:2", "books:3"]),
            "limit 2 by default"
        );
    }

    #[test]
    fn rollback_switches_back_to_the_draining_color_at_once() {
        let v1 = service("");
        let v2 = with_image("books:2", "");
        let mut world = World::new();
        world.converge(&v1, 1);
        let p = world.plan(&v2, 2);
        world.apply(&v2, 2, &p);
        world.all_ready();
        let p = world.plan(&v2, 2);
        world.apply(&v2, 2, &p);
        assert_eq!(world.status.active_color, Some(Color::Green));

        let rollback = Request {
            id: "r1".into(),
            action: Action::Rollback,
            revision: rev(&v2),
            requested_at: String::new(),
        };
        let p = world.plan_with(
            Desired::Valid {
                service: &v2,
                index: 2,
            },
            Some(&rollback),
        );
        assert_eq!(describe(&p), ["switch traffic to blue"]);
        assert_eq!(p.status.last_request.as_ref().unwrap().result, "Done");
        assert_eq!(p.status.rejected.as_ref().unwrap().reason, "RolledBack");
        world.apply(&v2, 2, &p);
        world.later(10 * SECOND);
        let p = world.plan(&v2, 2);
        assert_eq!(
            describe(&p),
            ["remove books-green-1", "remove books-green-2"]
        );
        world.apply(&v2, 2, &p);
        assert_eq!(world.plan(&v2, 2).status.phase, Some(Phase::Degraded));
    }

    #[test]
    fn rollback_revives_the_kept_revision_after_the_drain() {
        let v1 = service("");
        let v2 = with_image("books:2", "");
        let mut world = World::new();
        world.converge(&v1, 1);
        world.converge(&v2, 2);
        let rollback = Request {
            id: "r1".into(),
            action: Action::Rollback,
            revision: rev(&v2),
            requested_at: String::new(),
        };
        let p = world.plan_with(
            Desired::Valid {
                service: &v2,
                index: 2,
            },
            Some(&rollback),
        );
        assert_eq!(
            describe(&p),
            [
                format!("rename books-r{}-1 to books-blue-1", rev(&v1)),
                format!("start books-r{}-1", rev(&v1)),
                format!("rename books-r{}-2 to books-blue-2", rev(&v1)),
                format!("start books-r{}-2", rev(&v1)),
            ]
        );
        world.apply(&v2, 2, &p);
        world.all_ready();
        world.converge(&v2, 2);
        assert_eq!(world.status.active_color, Some(Color::Blue));
        assert_eq!(world.status.colors[&Color::Blue].image, "books:1");
    }

    #[test]
    fn a_lost_status_is_rebuilt_from_the_containers() {
        let v1 = service("");
        let v2 = with_image("books:2", "");
        let mut world = World::new();
        world.converge(&v1, 1);
        let p = world.plan(&v2, 2);
        world.apply(&v2, 2, &p);
        world.all_ready();
        world.status = Status::default();
        // Blue (older) is taken as live, so green is health-gated and switched, not assumed.
        let p = world.plan(&v2, 2);
        assert_eq!(describe(&p), ["switch traffic to green"]);
    }

    #[test]
    fn planning_after_applying_a_plan_converges_for_every_scenario() {
        let specs = [
            service(""),
            with_image("books:2", "  replicas: 3\n"),
            with_image("books:2", "  replicas: 1\n  strategy: {recreate: {}}\n"),
            service("  sideTargets: [{name: db, image: books:1}]\n"),
        ];
        for (i, a) in specs.iter().enumerate() {
            for (j, b) in specs.iter().enumerate() {
                let mut world = World::new();
                world.converge(a, 1);
                world.converge(b, 2);
                let p = world.plan(b, 2);
                assert!(p.steps.is_empty(), "{i} -> {j}: {:?}", describe(&p));
                assert_eq!(p.status.phase, Some(Phase::Available), "{i} -> {j}");
                let live = p.status.active_color.unwrap();
                assert_eq!(p.status.colors[&live].revision, rev(b), "{i} -> {j}");
            }
        }
    }

    #[test]
    fn going_back_to_an_archived_revision_keeps_one_copy_of_it() {
        let v1 = service("");
        let v2 = with_image("books:2", "");
        let mut world = World::new();
        for (index, spec) in [(1, &v1), (2, &v2), (3, &v1), (4, &v2), (5, &v1)] {
            world.converge(spec, index);
        }
        let mut names = world.names();
        names.dedup();
        assert_eq!(
            names.len(),
            world.observed.containers.len(),
            "no duplicate names"
        );
        assert_eq!(
            world.status.colors[&world.status.active_color.unwrap()].image,
            "books:1"
        );
    }

    #[test]
    fn mass_deletion_is_refused() {
        let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        for (known, present, refused) in [
            (set(&["a", "b", "c"]), set(&["a", "b"]), false),
            (set(&["a", "b", "c"]), set(&["a"]), true),
            (set(&["a", "b", "c", "d"]), set(&["a", "b"]), false),
            (set(&["a"]), set(&[]), true),
            (set(&[]), set(&[]), false),
            (set(&["a", "b"]), set(&["a", "b", "c"]), false),
        ] {
            assert_eq!(
                mass_deletion(&known, &present).is_some(),
                refused,
                "{known:?} -> {present:?}"
            );
        }
    }
}
