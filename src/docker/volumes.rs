//! Named volumes belong to the service that declared them.
//!
//! Before a replica or a side target mounts a named volume, the adapter claims it: a missing
//! volume is created with this installation's and this service's labels; an existing one is
//! used only when it carries those labels. Any other volume (another service's, another
//! installation's, or one without cutover labels) is refused with
//! [`DockerError::VolumeNotOwned`] unless the daemon runs with `--allow-shared-volumes`, so
//! that a spec cannot mount another service's data by naming its volume.
//!
//! One exception keeps upgrades working: daemons before this rule let the engine create
//! replicas' volumes implicitly, without labels. Such an unlabelled volume is accepted when
//! every container that uses it (in any state, and at least one) is this installation's
//! container of this service.
//!
//! [`verdict`] is the rule, pure and unit-tested; [`Docker::claim_volume`] gathers what it
//! needs from the engine.

use std::collections::HashMap;

use bollard::models::VolumeCreateRequest;
use bollard::query_parameters::ListContainersOptions;

use super::{Docker, DockerError, ExecContext, status_of};
use crate::observed::{LABEL_INSTANCE, LABEL_SERVICE, LABEL_SIDE_TARGET};
use crate::spec::{Service, parse_volume};

/// Who may mount a volume, from its labels and its users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// This installation's volume of this service.
    Ours,
    /// An unlabelled volume that only this service's containers use: made by an older
    /// cutover, before volumes were labelled.
    Inherited,
    /// Someone else's, and the daemon allows sharing.
    Shared,
    /// Someone else's: the text names the owner.
    NotOurs(String),
}

/// The labels of one container that uses a volume.
pub type User = HashMap<String, String>;

/// Decides whether `service` of `instance` may mount a volume with `labels`, used by
/// containers with the labels in `users`.
pub fn verdict(
    labels: &HashMap<String, String>,
    users: &[User],
    instance: &str,
    service: &str,
    allow_shared: bool,
) -> Verdict {
    let label = |labels: &HashMap<String, String>, name: &str| labels.get(name).cloned();
    let (owner_instance, owner_service) =
        (label(labels, LABEL_INSTANCE), label(labels, LABEL_SERVICE));
    if owner_instance.as_deref() == Some(instance) && owner_service.as_deref() == Some(service) {
        return Verdict::Ours;
    }
    let unlabelled = labels.keys().all(|key| !key.starts_with("dev.cutover."));
    let ours = |user: &User| {
        user.get(LABEL_INSTANCE).map(String::as_str) == Some(instance)
            && user.get(LABEL_SERVICE).map(String::as_str) == Some(service)
    };
    if unlabelled && !users.is_empty() && users.iter().all(ours) {
        return Verdict::Inherited;
    }
    if allow_shared {
        return Verdict::Shared;
    }
    let owner = match (owner_instance, owner_service) {
        (Some(i), Some(s)) if i == instance => format!("service {s:?} of this installation"),
        (Some(i), Some(s)) => format!("service {s:?} of another cutover installation ({i:?})"),
        (Some(i), None) => format!("another cutover installation ({i:?})"),
        (None, Some(s)) => format!("service {s:?} of an unknown cutover installation"),
        (None, None) if users.is_empty() => {
            "no cutover service (it has no cutover labels and no container uses it)".to_owned()
        }
        (None, None) => {
            let others = users.iter().filter(|user| !ours(user)).count();
            format!(
                "no cutover service (it has no cutover labels, and {others} container(s) of \
                 others use it)"
            )
        }
    };
    Verdict::NotOurs(owner)
}

impl Docker {
    /// Claims every named volume of a replica's `spec.volumes` (host paths are the security
    /// policy's business, see `crate::security`).
    ///
    /// # Errors
    /// [`DockerError::VolumeNotOwned`] for a volume of someone else; the engine's errors.
    pub(super) async fn claim_replica_volumes(
        &self,
        ctx: &ExecContext<'_>,
        container: &str,
        service: &Service,
    ) -> Result<(), DockerError> {
        for volume in &service.spec.volumes {
            if let Some(mount) = parse_volume(volume).filter(|mount| !mount.is_host_path()) {
                self.claim_volume(ctx, container, mount.source, None)
                    .await?;
            }
        }
        Ok(())
    }

    /// Creates the named volume with our labels unless it exists, then checks that it is
    /// ours to mount (see the module docs).
    pub(super) async fn claim_volume(
        &self,
        ctx: &ExecContext<'_>,
        container: &str,
        volume: &str,
        side_target: Option<&str>,
    ) -> Result<(), DockerError> {
        let fail = |error: bollard::errors::Error| DockerError::CreateVolume {
            container: container.to_owned(),
            volume: volume.to_owned(),
            source: error.into(),
        };
        let labels = match self.engine("inspect_volume").inspect_volume(volume).await {
            Ok(existing) => existing.labels,
            Err(e) if status_of(&e) == Some(404) => {
                let mut labels = HashMap::from([
                    (LABEL_INSTANCE.to_owned(), ctx.scope.instance.clone()),
                    (LABEL_SERVICE.to_owned(), ctx.service_name.to_owned()),
                ]);
                if let Some(side_target) = side_target {
                    labels.insert(LABEL_SIDE_TARGET.to_owned(), side_target.to_owned());
                }
                let request = VolumeCreateRequest {
                    name: Some(volume.to_owned()),
                    labels: Some(labels),
                    ..VolumeCreateRequest::default()
                };
                // The engine answers a create of a name that appeared meanwhile with the
                // existing volume and its own labels: those are the ones to judge.
                self.engine("create_volume")
                    .create_volume(request)
                    .await
                    .map_err(fail)?
                    .labels
            }
            Err(e) => return Err(fail(e)),
        };
        let mut users = Vec::new();
        if !labels.keys().any(|key| key.starts_with("dev.cutover.")) {
            let options = ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([(
                    "volume".to_owned(),
                    vec![volume.to_owned()],
                )])),
                ..ListContainersOptions::default()
            };
            let summaries = self
                .engine("list_containers")
                .list_containers(Some(options))
                .await
                .map_err(fail)?;
            users = summaries
                .into_iter()
                .map(|summary| summary.labels.unwrap_or_default())
                .collect();
        }
        let allow_shared = self.allowances.shared_volumes;
        match verdict(
            &labels,
            &users,
            &ctx.scope.instance,
            ctx.service_name,
            allow_shared,
        ) {
            Verdict::Ours | Verdict::Inherited | Verdict::Shared => Ok(()),
            Verdict::NotOurs(owner) => Err(DockerError::VolumeNotOwned {
                container: container.to_owned(),
                volume: volume.to_owned(),
                owner,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_volume_belongs_to_the_service_that_declared_it() {
        let ours = labels(&[(LABEL_INSTANCE, "prod"), (LABEL_SERVICE, "a")]);
        let a_side = labels(&[
            (LABEL_INSTANCE, "prod"),
            (LABEL_SERVICE, "a"),
            (LABEL_SIDE_TARGET, "db"),
        ]);
        let of_b = labels(&[(LABEL_INSTANCE, "prod"), (LABEL_SERVICE, "b")]);
        let of_staging = labels(&[(LABEL_INSTANCE, "staging"), (LABEL_SERVICE, "a")]);
        let foreign = labels(&[("com.example.app", "billing")]);
        let none = HashMap::new();
        let a_container = labels(&[(LABEL_INSTANCE, "prod"), (LABEL_SERVICE, "a")]);
        let b_container = labels(&[(LABEL_INSTANCE, "prod"), (LABEL_SERVICE, "b")]);
        let stranger = labels(&[("com.example.app", "billing")]);
        let not_ours = |owner: &str| Verdict::NotOurs(owner.to_owned());
        for (case, volume, users, allow, expected) in [
            ("ours", &ours, vec![], false, Verdict::Ours),
            ("our side target's", &a_side, vec![], false, Verdict::Ours),
            (
                "another service's",
                &of_b,
                vec![],
                false,
                not_ours("service \"b\" of this installation"),
            ),
            (
                "another installation's",
                &of_staging,
                vec![],
                false,
                not_ours("service \"a\" of another cutover installation (\"staging\")"),
            ),
            (
                "another service's, allowed",
                &of_b,
                vec![],
                true,
                Verdict::Shared,
            ),
            (
                "unlabelled, used by our containers only",
                &none,
                vec![a_container.clone(), a_container.clone()],
                false,
                Verdict::Inherited,
            ),
            (
                "foreign labels, used by our containers only",
                &foreign,
                vec![a_container.clone()],
                false,
                Verdict::Inherited,
            ),
            (
                "unlabelled, used by b too",
                &none,
                vec![a_container.clone(), b_container.clone()],
                false,
                not_ours(
                    "no cutover service (it has no cutover labels, and 1 container(s) of others \
                     use it)",
                ),
            ),
            (
                "unlabelled, used by a stranger",
                &none,
                vec![stranger],
                false,
                not_ours(
                    "no cutover service (it has no cutover labels, and 1 container(s) of others \
                     use it)",
                ),
            ),
            (
                "unlabelled and unused",
                &none,
                vec![],
                false,
                not_ours("no cutover service (it has no cutover labels and no container uses it)"),
            ),
            (
                "unlabelled and unused, allowed",
                &none,
                vec![],
                true,
                Verdict::Shared,
            ),
        ] {
            assert_eq!(
                verdict(volume, &users, "prod", "a", allow),
                expected,
                "{case}"
            );
        }
    }
}
