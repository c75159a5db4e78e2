//! Revisions: a stable hash of everything in a spec that needs a new container.
//!
//! Two specs with the same revision can share containers; any change to the image, env,
//! command, port, health check (its host included), resources, volumes, security settings
//! (privileged, networkMode, capAdd), stop signal or stop grace period gives a new revision
//! and so a new color: Docker fixes both stop settings when it creates a container, so each
//! revision is stopped the way its own spec said.
//! Replicas, routes and the strategy are not part of it: they change in place.
//!
//! The hash is FNV-1a over canonical JSON, so it is the same on every machine and every
//! release of cutover that keeps these fields.

use serde::Serialize;

use crate::spec::{NetworkMode, Service, SideTarget, defaults};

/// The revision of a service's replicas: 10 hex digits.
pub fn of_service(service: &Service) -> String {
    let spec = &service.spec;
    #[derive(Serialize)]
    struct Template<'a> {
        image: &'a str,
        env: &'a std::collections::BTreeMap<String, String>,
        command: &'a Option<Vec<String>>,
        port: u16,
        health: &'a crate::spec::Health,
        resources: &'a crate::spec::Resources,
        // Left out when not written, so that the fields added later did not change the
        // revision (and restart the containers) of any existing spec.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        privileged: bool,
        #[serde(skip_serializing_if = "NetworkMode::is_bridge")]
        network_mode: NetworkMode,
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        cap_add: &'a [String],
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        volumes: &'a [String],
        // Docker sets a container's stop signal and timeout when it creates it.
        #[serde(skip_serializing_if = "Option::is_none")]
        stop_signal: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        stop_grace_period_secs: Option<u64>,
    }
    hash(&Template {
        image: &spec.image,
        env: &spec.env,
        command: &spec.command,
        port: spec.port,
        health: &spec.health,
        resources: &spec.resources,
        privileged: spec.privileged,
        network_mode: spec.network_mode,
        cap_add: &spec.cap_add,
        volumes: &spec.volumes,
        // The default written out is the default: it needs no new container.
        stop_signal: Some(spec.stop_signal()).filter(|signal| *signal != defaults::STOP_SIGNAL),
        stop_grace_period_secs: Some(spec.stop_grace_period_secs())
            .filter(|secs| *secs != defaults::stop_grace_period().as_std().as_secs()),
    })
}

/// The revision of a side target: a change replaces its container.
pub fn of_side_target(side: &SideTarget) -> String {
    hash(side)
}

fn hash(value: &impl Serialize) -> String {
    // serde_json writes struct fields in declaration order and BTreeMaps sorted, so the text
    // is canonical for our types.
    let text = serde_json::to_vec(value).expect("spec types always serialize");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:010x}", h >> 24)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_service;

    fn service(extra: &str) -> Service {
        let text = format!(
            "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {{name: books}}\nspec:\n  image: books:1\n{extra}"
        );
        parse_service("test.yaml", &text).unwrap()
    }

    /// The revision of a spec that does not use the fields added later is the one it had
    /// before they existed: upgrading cutover must not restart every service.
    #[test]
    fn fields_left_at_their_defaults_keep_the_old_revision() {
        let written_out =
            "  privileged: false\n  networkMode: bridge\n  capAdd: []\n  volumes: []\n";
        assert_eq!(of_service(&service(written_out)), of_service(&service("")));
        assert_eq!(
            of_service(&service("")),
            "ca8ce6a313",
            "the revision before these fields existed"
        );
    }

    /// stopSignal, stopGracePeriod and health.host left unset, or the stop fields written as
    /// their defaults, keep the revision they had before these fields existed.
    #[test]
    fn the_stop_and_health_host_fields_unset_keep_the_old_revision() {
        let before = "ca8ce6a313";
        assert_eq!(of_service(&service("  health: {path: /}\n")), before);
        assert_eq!(of_service(&service("  stopGracePeriod: 10s\n")), before);
        assert_eq!(of_service(&service("  stopSignal: SIGTERM\n")), before);
        assert_eq!(of_service(&service("  stopSignal: term\n")), before);
        for different in [
            "  stopSignal: SIGQUIT\n",
            "  stopGracePeriod: 1h\n",
            "  health: {host: books.example.com}\n",
        ] {
            assert_ne!(of_service(&service(different)), before, "{different}");
        }
        // One signal, one revision, however it is written.
        assert_eq!(
            of_service(&service("  stopSignal: quit\n")),
            of_service(&service("  stopSignal: SIGQUIT\n"))
        );
    }

    #[test]
    fn only_template_fields_change_the_revision() {
        let base = of_service(&service(""));
        assert_eq!(base.len(), 10);
        assert_eq!(base, of_service(&service("")), "stable");
        for same in [
            "  replicas: 5\n",
            "  routes: [{pathPrefix: /books}]\n",
            "  strategy: {recreate: {}}\n",
        ] {
            assert_eq!(of_service(&service(same)), base, "{same}");
        }
        for different in [
            "  env: {A: b}\n",
            "  port: 8080\n",
            "  command: [x]\n",
            "  health: {path: /h}\n",
            "  resources: {cpus: 0.5}\n",
            "  privileged: true\n",
            "  networkMode: host\n  strategy: {recreate: {}}\n",
            "  capAdd: [NET_ADMIN]\n",
            "  volumes: [\"cache:/cache\"]\n",
        ] {
            assert_ne!(of_service(&service(different)), base, "{different}");
        }
    }
}
