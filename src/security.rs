//! The daemon's security policy: which of a spec's dangerous requests it may carry out.
//!
//! A manifest may ask for privileged replicas, the host's network, added Linux capabilities
//! or host bind mounts; the validator accepts them, because whether they are acceptable is
//! the operator's decision, not the manifest author's. The daemon carries them out only when
//! it was started with the matching flag:
//!
//! | spec field | flag of `cutover run` |
//! |---|---|
//! | `privileged: true` | `--allow-privileged` |
//! | `networkMode: host` | `--allow-host-network` |
//! | `capAdd: [...]` | `--allow-cap-add` |
//! | `volumes: ["/host/path:/path"]` | `--allow-host-mounts` |
//!
//! [`check`] is pure: the controller calls it on every valid spec before planning, and turns
//! a refusal into the `ForbiddenBySecurityPolicy` reason with no step run. The Docker
//! adapter calls it again before creating a replica, so a spec the policy forbids can never
//! become a container, whoever asks.
//!
//! Nothing here does I/O.

use std::fmt;

use crate::spec::{NetworkMode, Service, parse_volume};

/// The condition reason (and event reason) of a spec the policy forbids.
pub const REASON: &str = "ForbiddenBySecurityPolicy";

/// What the operator allowed when starting the daemon. The default allows nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allowances {
    /// `--allow-privileged`
    pub privileged: bool,
    /// `--allow-host-network`
    pub host_network: bool,
    /// `--allow-cap-add`
    pub cap_add: bool,
    /// `--allow-host-mounts`
    pub host_mounts: bool,
    /// `--allow-shared-volumes`: mount named volumes that belong to another service or to
    /// nobody in cutover (checked by the Docker adapter, which sees the volumes' labels).
    pub shared_volumes: bool,
}

impl Allowances {
    /// Nothing allowed: the default, and what a daemon started without flags has.
    pub const NONE: Allowances = Allowances {
        privileged: false,
        host_network: false,
        cap_add: false,
        host_mounts: false,
        shared_volumes: false,
    };

    /// Everything allowed, for tests.
    pub const ALL: Allowances = Allowances {
        privileged: true,
        host_network: true,
        cap_add: true,
        host_mounts: true,
        shared_volumes: true,
    };

    /// The flags that are on, as they are written on the command line, for the start-up log.
    pub fn flags(&self) -> Vec<&'static str> {
        [
            (self.privileged, Permission::Privileged),
            (self.host_network, Permission::HostNetwork),
            (self.cap_add, Permission::CapAdd),
            (self.host_mounts, Permission::HostMounts),
            (self.shared_volumes, Permission::SharedVolumes),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, permission)| permission.flag())
        .collect()
    }

    fn allows(&self, permission: Permission) -> bool {
        match permission {
            Permission::Privileged => self.privileged,
            Permission::HostNetwork => self.host_network,
            Permission::CapAdd => self.cap_add,
            Permission::HostMounts => self.host_mounts,
            Permission::SharedVolumes => self.shared_volumes,
        }
    }
}

/// One of the things a spec can ask for that needs the operator's consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    Privileged,
    HostNetwork,
    CapAdd,
    HostMounts,
    /// Never asked by [`check`]: whose a volume is shows only on the engine.
    SharedVolumes,
}

impl Permission {
    /// The `cutover run` flag that allows it.
    pub fn flag(self) -> &'static str {
        match self {
            Permission::Privileged => "--allow-privileged",
            Permission::HostNetwork => "--allow-host-network",
            Permission::CapAdd => "--allow-cap-add",
            Permission::HostMounts => "--allow-host-mounts",
            Permission::SharedVolumes => "--allow-shared-volumes",
        }
    }
}

/// One field of a spec that the daemon's policy forbids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The service's name.
    pub service: String,
    /// The field path, as in validation errors: `spec.privileged`, `spec.capAdd[0]`,
    /// `spec.volumes[1]`.
    pub field: String,
    /// What the field asks for, such as `true`, `host`, `NET_ADMIN` or the volume text.
    pub value: String,
    pub permission: Permission,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.permission {
            Permission::Privileged => "privileged containers",
            Permission::HostNetwork => "host networking",
            Permission::CapAdd => "added capabilities",
            Permission::HostMounts => "host bind mounts",
            Permission::SharedVolumes => "volumes of other services",
        };
        write!(
            f,
            "service {}: {} is {}, but this daemon does not allow {what}; start it as \
             `cutover run {}` to allow them, or remove the field",
            self.service,
            self.field,
            self.value,
            self.permission.flag()
        )
    }
}

/// All refusals of one spec as one message, one per line: what the status condition says.
pub fn message(refusals: &[Refusal]) -> String {
    refusals
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Checks a valid spec against what the daemon allows.
///
/// # Errors
/// Every field the allowances forbid, in the order of the manifest reference: privileged,
/// networkMode, each capability, each host bind mount. Named volumes need no flag.
pub fn check(service: &Service, allowances: &Allowances) -> Result<(), Vec<Refusal>> {
    let spec = &service.spec;
    let mut asked: Vec<(String, String, Permission)> = Vec::new();
    if spec.privileged {
        asked.push((
            "spec.privileged".to_owned(),
            "true".to_owned(),
            Permission::Privileged,
        ));
    }
    if spec.network_mode == NetworkMode::Host {
        asked.push((
            "spec.networkMode".to_owned(),
            "host".to_owned(),
            Permission::HostNetwork,
        ));
    }
    for (index, capability) in spec.cap_add.iter().enumerate() {
        asked.push((
            format!("spec.capAdd[{index}]"),
            capability.clone(),
            Permission::CapAdd,
        ));
    }
    for (index, volume) in spec.volumes.iter().enumerate() {
        // A text the validator refused never reaches here; count it as a host path anyway,
        // so that a bug elsewhere errs on the side of refusing.
        let host_path = parse_volume(volume).is_none_or(|mount| mount.is_host_path());
        if host_path {
            asked.push((
                format!("spec.volumes[{index}]"),
                format!("{volume:?}"),
                Permission::HostMounts,
            ));
        }
    }
    let refusals: Vec<Refusal> = asked
        .into_iter()
        .filter(|(_, _, permission)| !allowances.allows(*permission))
        .map(|(field, value, permission)| Refusal {
            service: service.name().to_owned(),
            field,
            value,
            permission,
        })
        .collect();
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(refusals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_service;

    fn service(extra: &str) -> Service {
        let text = format!(
            "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {{name: books}}\nspec:\n  \
             image: books:1\n{extra}"
        );
        parse_service("test.yaml", &text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Each row: the spec's extra lines, what the daemon allows, and the refused fields with
    /// the flag each would need.
    #[test]
    fn each_field_needs_its_own_flag() {
        let only = |permission: Permission| Allowances {
            privileged: permission == Permission::Privileged,
            host_network: permission == Permission::HostNetwork,
            cap_add: permission == Permission::CapAdd,
            host_mounts: permission == Permission::HostMounts,
            shared_volumes: permission == Permission::SharedVolumes,
        };
        let host_network = "  networkMode: host\n  strategy: {recreate: {}}\n";
        let everything = "  privileged: true\n  networkMode: host\n  strategy: {recreate: {}}\n  \
                          capAdd: [NET_ADMIN, SYS_TIME]\n  \
                          volumes: [\"cache:/cache\", \"/srv/books:/data:ro\"]\n";
        for (case, extra, allowances, expected) in [
            ("nothing asked", "", Allowances::NONE, vec![]),
            (
                "written-out defaults ask nothing",
                "  privileged: false\n  networkMode: bridge\n  capAdd: []\n  volumes: []\n",
                Allowances::NONE,
                vec![],
            ),
            (
                "named volumes need no flag",
                "  volumes: [\"cache:/cache\", \"data:/data:ro\"]\n",
                Allowances::NONE,
                vec![],
            ),
            (
                "privileged",
                "  privileged: true\n",
                Allowances::NONE,
                vec![("spec.privileged", "--allow-privileged")],
            ),
            (
                "privileged, allowed",
                "  privileged: true\n",
                only(Permission::Privileged),
                vec![],
            ),
            (
                "host network",
                host_network,
                Allowances::NONE,
                vec![("spec.networkMode", "--allow-host-network")],
            ),
            (
                "host network, allowed",
                host_network,
                only(Permission::HostNetwork),
                vec![],
            ),
            (
                "each capability is named",
                "  capAdd: [NET_ADMIN, SYS_TIME]\n",
                Allowances::NONE,
                vec![
                    ("spec.capAdd[0]", "--allow-cap-add"),
                    ("spec.capAdd[1]", "--allow-cap-add"),
                ],
            ),
            (
                "capabilities, allowed",
                "  capAdd: [NET_ADMIN]\n",
                only(Permission::CapAdd),
                vec![],
            ),
            (
                "only the host path among the volumes",
                "  volumes: [\"cache:/cache\", \"/srv/books:/data:ro\"]\n",
                Allowances::NONE,
                vec![("spec.volumes[1]", "--allow-host-mounts")],
            ),
            (
                "host mounts, allowed",
                "  volumes: [\"/srv/books:/data\"]\n",
                only(Permission::HostMounts),
                vec![],
            ),
            (
                "one flag does not allow the others",
                everything,
                only(Permission::CapAdd),
                vec![
                    ("spec.privileged", "--allow-privileged"),
                    ("spec.networkMode", "--allow-host-network"),
                    ("spec.volumes[1]", "--allow-host-mounts"),
                ],
            ),
            (
                "everything, all allowed",
                everything,
                Allowances::ALL,
                vec![],
            ),
        ] {
            let actual: Vec<(String, &str)> = match check(&service(extra), &allowances) {
                Ok(()) => vec![],
                Err(refusals) => refusals
                    .iter()
                    .map(|r| (r.field.clone(), r.permission.flag()))
                    .collect(),
            };
            let expected: Vec<(String, &str)> = expected
                .into_iter()
                .map(|(field, flag)| (field.to_owned(), flag))
                .collect();
            assert_eq!(actual, expected, "{case}");
        }
    }

    #[test]
    fn the_message_names_the_service_the_field_and_the_flag() {
        let refusals = check(
            &service("  privileged: true\n  volumes: [\"/srv/books:/data:ro\"]\n"),
            &Allowances::NONE,
        )
        .unwrap_err();
        assert_eq!(
            message(&refusals),
            "service books: spec.privileged is true, but this daemon does not allow privileged \
             containers; start it as `cutover run --allow-privileged` to allow them, or remove \
             the field\n\
             service books: spec.volumes[0] is \"/srv/books:/data:ro\", but this daemon does \
             not allow host bind mounts; start it as `cutover run --allow-host-mounts` to allow \
             them, or remove the field"
        );
    }

    #[test]
    fn flags_list_what_is_allowed() {
        assert!(Allowances::NONE.flags().is_empty());
        assert_eq!(Allowances::default(), Allowances::NONE);
        assert_eq!(
            Allowances::ALL.flags(),
            [
                "--allow-privileged",
                "--allow-host-network",
                "--allow-cap-add",
                "--allow-host-mounts",
                "--allow-shared-volumes"
            ]
        );
    }
}
