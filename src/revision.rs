//! Revisions: a stable hash of everything in a spec that needs a new container.
//!
//! Two specs with the same revision can share containers; any change to the image, env,
//! command, port, health check or resources gives a new revision and so a new color.
//! Replicas, routes and the strategy are not part of it: they change in place.
//!
//! The hash is FNV-1a over canonical JSON, so it is the same on every machine and every
//! release of cutover that keeps these fields.

use serde::Serialize;

use crate::spec::{Service, SideTarget};

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
    }
    hash(&Template {
        image: &spec.image,
        env: &spec.env,
        command: &spec.command,
        port: spec.port,
        health: &spec.health,
        resources: &spec.resources,
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
        ] {
            assert_ne!(of_service(&service(different)), base, "{different}");
        }
    }
}
