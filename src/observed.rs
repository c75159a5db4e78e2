//! What runs: cutover's containers as plain data, read from Docker by the adapter.
//!
//! Only containers that carry [`LABEL_SERVICE`] and this daemon's [`LABEL_INSTANCE`] become
//! [`Container`] values; the adapter never lists, stops or removes anything else. Nothing here
//! does I/O.

use crate::status::Color;

/// The service a container belongs to. Its presence is what makes a container ours.
pub const LABEL_SERVICE: &str = "dev.cutover.service";
/// `blue` or `green`; absent on side targets.
pub const LABEL_COLOR: &str = "dev.cutover.color";
/// The [`crate::revision`] hash of the template the container was made from.
pub const LABEL_REVISION: &str = "dev.cutover.revision";
/// The Consul ModifyIndex of the spec the container was made from.
pub const LABEL_SPEC_INDEX: &str = "dev.cutover.spec-index";
/// The replica's number within its color, from 1.
pub const LABEL_SLOT: &str = "dev.cutover.slot";
/// The side target's name; absent on replicas.
pub const LABEL_SIDE_TARGET: &str = "dev.cutover.side-target";
/// Which cutover installation owns the container (its KV prefix), so that two daemons with
/// different prefixes on one engine never touch each other's containers.
pub const LABEL_INSTANCE: &str = "dev.cutover.instance";
/// The port the replica listens on, as its revision's spec said.
pub const LABEL_PORT: &str = "dev.cutover.port";
/// The replica's health check (its revision's `spec.health`, JSON), so that a color is
/// always checked the way its own revision asks, never the way a newer spec does.
pub const LABEL_HEALTH: &str = "dev.cutover.health";

/// What a container is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Replica { color: Color, slot: u32 },
    SideTarget { name: String },
}

/// One of our containers, as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub service: String,
    pub role: Role,
    pub revision: String,
    pub spec_index: u64,
    pub image: String,
    /// Running (or restarting) as opposed to created, exited or dead.
    pub running: bool,
    /// When Docker created it, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Its IPv4 address on the cutover network, once it has one.
    pub address: Option<String>,
    /// Passed the health check (cutover's probe, and Docker's HEALTHCHECK where the image
    /// has one) the required number of times in a row.
    pub ready: bool,
    /// A stop or removal of it is under way in the background; it is going away.
    pub stopping: bool,
    /// The port it listens on ([`LABEL_PORT`]); `None` on containers made before the label.
    pub port: Option<u16>,
    /// Its health check ([`LABEL_HEALTH`]); `None` on containers made before the label.
    pub health: Option<crate::spec::Health>,
}

impl Container {
    pub fn color(&self) -> Option<Color> {
        match self.role {
            Role::Replica { color, .. } => Some(color),
            Role::SideTarget { .. } => None,
        }
    }

    pub fn slot(&self) -> Option<u32> {
        match self.role {
            Role::Replica { slot, .. } => Some(slot),
            Role::SideTarget { .. } => None,
        }
    }

    /// A replica that was retired and renamed out of its color's slot: history kept for a
    /// rollback, not part of any color until it is revived.
    pub fn is_archived(&self) -> bool {
        match &self.role {
            Role::Replica { color, slot } => {
                self.name != replica_name(&self.service, *color, *slot)
            }
            Role::SideTarget { .. } => false,
        }
    }
}

/// The name of a live or preview replica: `<service>-<color>-<slot>`.
pub fn replica_name(service: &str, color: Color, slot: u32) -> String {
    format!("{service}-{color}-{slot}")
}

/// The name a retired replica is kept under: `<service>-r<revision>-<slot>`.
pub fn archived_name(service: &str, revision: &str, slot: u32) -> String {
    format!("{service}-r{revision}-{slot}")
}

/// The archived name of `container`: [`archived_name`], or, when another container holds
/// that name already (an older copy of the same revision and slot, or one still being
/// removed), the same followed by the first 12 characters of its id, which is unique.
pub fn free_archived_name(container: &Container, taken: &[Container]) -> String {
    let slot = container.slot().unwrap_or(0);
    let name = archived_name(&container.service, &container.revision, slot);
    if taken.iter().any(|c| c.name == name && c.id != container.id) {
        let id: String = container.id.chars().take(12).collect();
        format!("{name}-{id}")
    } else {
        name
    }
}

/// The name of a side target's container: `<service>-<name>`.
pub fn side_target_name(service: &str, name: &str) -> String {
    format!("{service}-{name}")
}

/// Everything the planner needs to know about one service's world.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The service's containers (replicas of both colors, archived ones, side targets).
    pub containers: Vec<Container>,
    /// Which of the images the spec names the engine already has.
    pub images_present: std::collections::BTreeSet<String>,
}
