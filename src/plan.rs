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
    CreateReplica { color: Color, slot: u32, revision: String },
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
            Step::CreateReplica { color, slot, revision } => {
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
