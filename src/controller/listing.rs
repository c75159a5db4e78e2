//! One container list per resync: the resync loop lists every container once, and each
//! service's next reconcile takes its share of that list instead of listing again, unless
//! something may have changed the service's containers since the list was asked for.
//!
//! A change is anything the controller did to a service's containers (steps, background
//! stops) or Docker reported about them (events). Each is stamped on a logical clock; a
//! share is handed out only if the service's last change is older than the list, and at
//! most once, so that every later reconcile lists afresh. No I/O.

use std::collections::{HashMap, HashSet};

use crate::docker::Observation;

#[derive(Debug, Default)]
pub(super) struct Listings {
    clock: u64,
    /// When each service's containers last changed, on `clock`.
    changed: HashMap<String, u64>,
    /// The last full list: when it was asked for, its shares by service, and the services
    /// that took theirs.
    last: Option<Last>,
}

#[derive(Debug)]
struct Last {
    asked: u64,
    by_service: HashMap<String, Observation>,
    taken: HashSet<String>,
}

impl Listings {
    /// Something changed, or may have changed, `service`'s containers.
    pub(super) fn changed(&mut self, service: &str) {
        self.clock += 1;
        self.changed.insert(service.to_owned(), self.clock);
    }

    /// Docker's events may have been missed: no share of the last list is trusted.
    pub(super) fn forget(&mut self) {
        self.last = None;
    }

    /// Call just before asking Docker for a full list; pass the result to [`Listings::store`].
    pub(super) fn asking(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Keeps a full list asked for at `asked`, split by service.
    pub(super) fn store(&mut self, asked: u64, observation: &Observation) {
        let mut by_service: HashMap<String, Observation> = HashMap::new();
        for container in &observation.containers {
            let share = by_service.entry(container.service.clone()).or_default();
            if let Some(health) = observation.docker_health.get(&container.id) {
                share.docker_health.insert(container.id.clone(), *health);
            }
            share.containers.push(container.clone());
        }
        // Changes older than this list are in it.
        self.changed.retain(|_, at| *at > asked);
        self.last = Some(Last {
            asked,
            by_service,
            taken: HashSet::new(),
        });
    }

    /// `service`'s share of the last full list, if nothing changed its containers since the
    /// list was asked for and nobody took that share yet. A service without containers in
    /// the list gets an empty share.
    pub(super) fn take(&mut self, service: &str) -> Option<Observation> {
        let last = self.last.as_mut()?;
        if self.changed.get(service).is_some_and(|at| *at > last.asked)
            || !last.taken.insert(service.to_owned())
        {
            return None;
        }
        Some(last.by_service.get(service).cloned().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observed::{Container, Role};

    fn container(service: &str, id: &str) -> Container {
        Container {
            id: id.to_owned(),
            name: format!("{service}-blue-0"),
            service: service.to_owned(),
            role: Role::SideTarget {
                name: "db".to_owned(),
            },
            revision: "r1".to_owned(),
            spec_index: 1,
            image: "img".to_owned(),
            running: true,
            created_ms: 0,
            address: None,
            ready: false,
            stopping: false,
            port: None,
            health: None,
        }
    }

    fn listing(containers: &[Container]) -> Observation {
        Observation {
            containers: containers.to_vec(),
            ..Observation::default()
        }
    }

    #[test]
    fn each_share_is_taken_once() {
        let mut l = Listings::default();
        assert_eq!(l.take("web"), None, "nothing listed yet");
        let asked = l.asking();
        l.store(
            asked,
            &listing(&[container("web", "a"), container("api", "b")]),
        );
        let web = l.take("web").map(|o| o.containers.len());
        assert_eq!(web, Some(1));
        assert_eq!(l.take("web"), None, "taken already");
        assert_eq!(l.take("gone").map(|o| o.containers.len()), Some(0));
        assert_eq!(
            l.take("api").map(|o| o.containers[0].id.clone()),
            Some("b".to_owned())
        );
    }

    #[test]
    fn a_change_after_the_list_was_asked_for_voids_the_share() {
        let mut l = Listings::default();
        let asked = l.asking();
        // A step or an event while Docker lists: the list may or may not show it.
        l.changed("web");
        l.store(
            asked,
            &listing(&[container("web", "a"), container("api", "b")]),
        );
        assert_eq!(l.take("web"), None);
        assert!(l.take("api").is_some());
        // A change before the next list is in that list.
        l.changed("api");
        let asked = l.asking();
        l.store(asked, &listing(&[container("api", "b")]));
        assert!(l.take("api").is_some());
        assert!(l.take("web").is_some());
    }

    #[test]
    fn missed_events_void_every_share() {
        let mut l = Listings::default();
        let asked = l.asking();
        l.store(asked, &listing(&[container("web", "a")]));
        l.forget();
        assert_eq!(l.take("web"), None);
    }
}
