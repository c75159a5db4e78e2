//! One service's world read for the planner: the path from Consul and Docker to
//! [`plan::plan`], shared by the daemon's reconcile and `cutover plan`.
//!
//! [`read`] takes the containers, the stored status and the pending request; the caller
//! fills in readiness (the daemon from its health monitor, `cutover plan` from one probe
//! each) and then [`plan`] calls the planner, checking again an image it assumed present
//! when the plan creates from it. Nothing here acts: the caller executes the plan, or
//! prints it.

use std::collections::{BTreeMap, BTreeSet};

use crate::docker::{Docker, DockerError, DockerHealth, Observation, Scope};
use crate::observed::Observed;
use crate::plan::{self, Deletion, Desired, Input, Policy, ProxyView, Step, Unreadable};
use crate::spec::Service;
use crate::status::{Request, Status};
use crate::store::{Store, StoreError, Stored, StoredService};

/// Why a service's world could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Docker(#[from] DockerError),
}

/// What [`read`] found for one service.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    /// The containers (with `ready` false until the caller marks it) and the images of the
    /// spec the engine has.
    pub observed: Observed,
    /// The `HEALTHCHECK` state by container id.
    pub docker_health: BTreeMap<String, DockerHealth>,
    /// Images counted present because one of the service's containers runs them: checked
    /// again only when a plan creates from them.
    pub assumed: Vec<String>,
    pub status: Option<Status>,
    /// Why the stored status does not decode, if it does not.
    pub status_error: Option<String>,
    pub request: Option<Request>,
    /// The ModifyIndex of a request that does not decode, and why.
    pub request_error: Option<(u64, String)>,
}

/// What the planner is told besides the [`Reading`].
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub name: &'a str,
    pub desired: Desired<'a>,
    pub policy: Policy,
    pub deletion: Deletion<'a>,
    pub proxy: Option<&'a ProxyView>,
    pub now_ms: u64,
}

/// What the planner is asked to converge to, from the spec as stored (or its absence).
pub fn desired(stored: Option<&StoredService>) -> Desired<'_> {
    match stored {
        Some(s) => match &s.parsed {
            Ok(service) => Desired::Valid {
                service,
                index: s.modify_index,
            },
            Err(diagnostics) => Desired::Invalid {
                diagnostics,
                index: s.modify_index,
            },
        },
        None => Desired::Absent,
    }
}

/// Reads the containers of `name` (or takes `listed`, this service's share of a container
/// list just made), which of `service`'s images the engine has, the stored status and the
/// pending request. A key that does not decode is a result, not an error.
///
/// # Errors
/// When Docker or Consul cannot be read: the caller acts on nothing.
pub async fn read(
    docker: &Docker,
    store: &Store,
    scope: &Scope,
    name: &str,
    service: Option<&Service>,
    listed: Option<Observation>,
) -> Result<Reading, ObserveError> {
    let observation = match listed {
        Some(listed) => listed,
        None => docker.observe(scope, Some(name)).await?,
    };
    let stored_status = store.get_status(name).await?;
    let stored_request = store.get_request(name).await?;
    let mut reading = Reading {
        observed: Observed {
            containers: observation.containers,
            images_present: BTreeSet::new(),
        },
        docker_health: observation.docker_health,
        status_error: (stored_status.as_ref())
            .and_then(Stored::unreadable)
            .map(ToString::to_string),
        request_error: (stored_request.as_ref())
            .and_then(Stored::unreadable)
            .map(|bad| (bad.modify_index, bad.to_string())),
        status: (stored_status.and_then(Stored::into_readable)).map(|v| v.value),
        request: (stored_request.and_then(Stored::into_readable)).map(|v| v.value),
        ..Reading::default()
    };
    if let Some(service) = service {
        // An image one of the service's containers runs is on the engine: no need to ask at
        // every reconcile. Such an image is checked only if the plan creates from it.
        let images = std::iter::once(&service.spec.image)
            .chain(service.spec.side_targets.iter().map(|s| &s.image));
        for image in images {
            let runs = reading
                .observed
                .containers
                .iter()
                .any(|c| &c.image == image);
            if runs {
                reading.assumed.push(image.clone());
                reading.observed.images_present.insert(image.clone());
            } else if docker.image_present(image).await? {
                reading.observed.images_present.insert(image.clone());
            }
        }
    }
    Ok(reading)
}

/// Plans with what was read. When the plan creates from an image only assumed present, it
/// makes sure the engine still has it (`docker rmi -f` untags an image in use) and plans
/// again with what is true; `reading` is updated to match.
///
/// # Errors
/// When the engine cannot be asked about an image.
pub async fn plan(
    docker: &Docker,
    reading: &mut Reading,
    context: &Context<'_>,
) -> Result<plan::Plan, DockerError> {
    let mut plan = plan_once(reading, context);
    let creates = plan.steps.iter().any(|s| {
        matches!(
            s,
            Step::CreateReplica { .. } | Step::CreateSideTarget { .. }
        )
    });
    if creates && !reading.assumed.is_empty() {
        let mut missing = false;
        for image in &reading.assumed {
            if !docker.image_present(image).await? {
                reading.observed.images_present.remove(image);
                missing = true;
            }
        }
        if missing {
            plan = plan_once(reading, context);
        }
    }
    Ok(plan)
}

fn plan_once(reading: &Reading, context: &Context<'_>) -> plan::Plan {
    plan::plan(&Input {
        name: context.name,
        desired: context.desired,
        observed: &reading.observed,
        status: reading.status.as_ref(),
        unreadable: Unreadable {
            status: reading.status_error.as_deref(),
            request: (reading.request_error.as_ref()).map(|(index, e)| (*index, e.as_str())),
        },
        request: reading.request.as_ref(),
        now_ms: context.now_ms,
        policy: context.policy,
        deletion: context.deletion,
        proxy: context.proxy,
    })
}
