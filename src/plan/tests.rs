//! Table tests of the planner: one scenario each, read like a story. The model-based test
//! (`tests/planner_model.rs`) drives random sequences against the invariants.

use super::*;
use crate::observed::archived_name;
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

/// A world the tests drive: what runs, the status, the proxy and the clock. Background steps
/// complete at once unless `slow_stops` is set, in which case they stay under way
/// (`stopping`) until [`World::finish_stops`].
struct World {
    observed: Observed,
    status: Option<Status>,
    proxy: Option<ProxyView>,
    now_ms: u64,
    next_id: u32,
    slow_stops: bool,
    /// Containers whose background removal is under way (with `slow_stops`).
    removing: BTreeSet<String>,
}

impl World {
    fn new() -> Self {
        let mut observed = Observed::default();
        observed.images_present.insert("books:1".to_owned());
        observed.images_present.insert("books:2".to_owned());
        World {
            observed,
            status: None,
            proxy: None,
            now_ms: 1_000_000,
            next_id: 0,
            slow_stops: false,
            removing: BTreeSet::new(),
        }
    }

    fn plan(&self, service: &Service, index: u64) -> Plan {
        self.plan_with(Desired::Valid { service, index }, None)
    }

    /// Plans with a pending `request`.
    fn plan_asking(&self, service: &Service, index: u64, request: &Request) -> Plan {
        self.plan_with(Desired::Valid { service, index }, Some(request))
    }

    /// Plans and carries the plan out.
    fn step(&mut self, service: &Service, index: u64) -> Plan {
        let p = self.plan(service, index);
        self.apply(service, index, &p);
        p
    }

    fn plan_with(&self, desired: Desired<'_>, request: Option<&Request>) -> Plan {
        plan(&Input {
            name: "books",
            desired,
            observed: &self.observed,
            status: self.status.as_ref(),
            unreadable: Unreadable::default(),
            request,
            now_ms: self.now_ms,
            policy: Policy::default(),
            deletion: Deletion::default(),
            proxy: self.proxy.as_ref(),
        })
    }

    fn status(&self) -> &Status {
        self.status.as_ref().expect("a status was written")
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
                    let name = replica_name("books", *color, *slot);
                    assert!(
                        !self.observed.containers.iter().any(|c| c.name == name),
                        "{name} is taken"
                    );
                    self.observed.containers.push(Container {
                        id: format!("id{:04}", self.next_id),
                        name,
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
                        stopping: false,
                        port: None,
                        health: None,
                    });
                }
                Step::CreateSideTarget { name, revision } => {
                    self.next_id += 1;
                    self.observed.containers.push(Container {
                        id: format!("id{:04}", self.next_id),
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
                        stopping: false,
                        port: None,
                        health: None,
                    });
                }
                Step::Start { target } => self.find(&target.id).running = true,
                Step::Stop { target } if self.slow_stops => self.find(&target.id).stopping = true,
                Step::Stop { target } => {
                    let c = self.find(&target.id);
                    c.running = false;
                    c.ready = false;
                }
                Step::Remove { target } if self.slow_stops => {
                    self.find(&target.id).stopping = true;
                    self.removing.insert(target.id.clone());
                }
                Step::Remove { target } => self.observed.containers.retain(|c| c.id != target.id),
                Step::Rename { target, to } => {
                    assert!(
                        !self
                            .observed
                            .containers
                            .iter()
                            .any(|c| &c.name == to && c.id != target.id),
                        "{to} is taken"
                    );
                    self.find(&target.id).name = to.clone();
                }
                Step::Switch { to } => {
                    if let Some(proxy) = &mut self.proxy {
                        proxy.live = Some(*to);
                    }
                }
            }
        }
        if let Some(status) = &plan.status {
            self.status = Some(status.clone());
            // The controller makes the routes follow the status it wrote.
            if let Some(proxy) = &mut self.proxy {
                proxy.known = true;
                proxy.live = status.active_color;
                proxy.split = crate::traffic::split(Some(status))
                    .filter(|s| status.active_color.is_some_and(|l| l != s.color));
            }
        }
    }

    /// Background stops and removals under way complete.
    fn finish_stops(&mut self) {
        let removing = std::mem::take(&mut self.removing);
        self.observed
            .containers
            .retain(|c| !removing.contains(&c.id));
        for c in &mut self.observed.containers {
            if c.stopping {
                c.stopping = false;
                c.running = false;
                c.ready = false;
            }
        }
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
        if let Some(proxy) = &mut self.proxy {
            proxy.up = self
                .observed
                .containers
                .iter()
                .filter(|c| c.ready && !c.is_archived())
                .filter_map(|c| Some((c.color()?, c.slot()?)))
                .collect();
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

fn phase(plan: &Plan) -> Option<Phase> {
    plan.status.as_ref().and_then(|s| s.phase)
}

fn rev(service: &Service) -> String {
    revision::of_service(service)
}

fn request(id: &str, action: Action, revision: String) -> Request {
    Request {
        id: id.into(),
        action,
        revision,
        requested_at: String::new(),
    }
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
    assert_eq!(phase(&p), Some(Phase::Progressing));
    assert_eq!(p.status.as_ref().unwrap().observed_index, 7);
    world.apply(&books, 7, &p);

    let p = world.plan(&books, 7);
    assert!(p.steps.is_empty(), "waits for health: {:?}", describe(&p));
    assert!(p.requeue_after_ms.is_some(), "requeues at the deadline");
    world.all_ready();

    let p = world.plan(&books, 7);
    assert_eq!(describe(&p), ["switch traffic to blue"]);
    assert_eq!(p.status.as_ref().unwrap().active_color, Some(Color::Blue));
    assert_eq!(phase(&p), Some(Phase::Available));
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
    let gone = |slot| {
        [
            format!(
                "rename books-blue-{slot} to {}",
                archived_name("books", &r, slot)
            ),
            format!("remove {}", archived_name("books", &r, slot)),
        ]
    };
    assert_eq!(
        describe(&world.plan(&one, 3)),
        [gone(2), gone(3), gone(4)].concat()
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
        world.status().active_color,
        Some(Color::Blue),
        "blue still serves"
    );
    assert_eq!(world.status().preview_color, Some(Color::Green));
    world.all_ready();

    let p = world.plan(&v2, 2);
    assert_eq!(describe(&p), ["switch traffic to green"]);
    world.apply(&v2, 2, &p);
    assert_eq!(world.status().revision_history.len(), 2);

    // The old color drains for scaleDownDelay (10s by default) before it stops.
    let p = world.plan(&v2, 2);
    assert!(p.steps.is_empty(), "{:?}", describe(&p));
    assert_eq!(p.requeue_after_ms, Some(10 * SECOND));
    assert_eq!(
        phase(&p),
        Some(Phase::Available),
        "the rollout is done for waiters"
    );
    world.later(10 * SECOND);
    let p = world.plan(&v2, 2);
    let r1 = rev(&v1);
    assert_eq!(
        describe(&p),
        [
            format!("rename books-blue-1 to books-r{r1}-1"),
            format!("stop books-r{r1}-1"),
            format!("rename books-blue-2 to books-r{r1}-2"),
            format!("stop books-r{r1}-2"),
        ]
    );
    assert!(p.steps.iter().filter(|s| s.is_background()).count() == 2);
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

/// Back-to-back releases: a new spec while the old color still drains starts the new
/// revision at once; the draining revision is renamed out of the way and stopped in the
/// background, never waited for.
#[test]
fn a_release_during_the_drain_starts_at_once() {
    let v1 = service("");
    let v2 = with_image("books:2", "");
    let v3 = with_image("books:3", "");
    let mut world = World::new();
    world.observed.images_present.insert("books:3".into());
    world.slow_stops = true;
    world.converge(&v1, 1);
    let p = world.plan(&v2, 2);
    world.apply(&v2, 2, &p);
    world.all_ready();
    let p = world.plan(&v2, 2);
    world.apply(&v2, 2, &p);
    assert_eq!(world.status().active_color, Some(Color::Green));

    // Blue (v1) drains; v3 arrives: it goes to blue at once.
    world.later(SECOND);
    let p = world.plan(&v3, 3);
    let (r1, r3) = (rev(&v1), rev(&v3));
    assert_eq!(
        describe(&p),
        [
            format!("rename books-blue-1 to books-r{r1}-1"),
            format!("stop books-r{r1}-1"),
            format!("rename books-blue-2 to books-r{r1}-2"),
            format!("stop books-r{r1}-2"),
            format!("create blue replica 1 (revision {r3})"),
            format!("create blue replica 2 (revision {r3})"),
        ]
    );
    world.apply(&v3, 3, &p);
    world.all_ready();
    // The old replicas are still stopping; the switch does not wait for them.
    let p = world.plan(&v3, 3);
    assert_eq!(describe(&p), ["switch traffic to blue"]);
    world.apply(&v3, 3, &p);
    world.finish_stops();
    world.later(10 * SECOND);
    world.converge(&v3, 3);
    assert_eq!(world.status().colors[&Color::Blue].revision, r3);
}

/// The sequence that wedged the daemon for good: a first deploy that never gets healthy
/// (a wrong health path), corrected while its first color is still coming up.
#[test]
fn a_spec_change_during_the_first_rollout_supersedes_it() {
    let wrong = service("");
    let fixed = service("  health: {path: /health}\n");
    let mut world = World::new();
    let p = world.plan(&wrong, 1);
    world.apply(&wrong, 1, &p);
    let p = world.plan(&wrong, 1);
    world.apply(&wrong, 1, &p);
    assert_eq!(world.status().active_color, None);

    let p = world.plan(&fixed, 2);
    let (r1, r2) = (rev(&wrong), rev(&fixed));
    assert_eq!(
        describe(&p),
        [
            format!("rename books-blue-1 to books-r{r1}-1"),
            format!("remove books-r{r1}-1"),
            format!("rename books-blue-2 to books-r{r1}-2"),
            format!("remove books-r{r1}-2"),
            format!("create blue replica 1 (revision {r2})"),
            format!("create blue replica 2 (revision {r2})"),
        ]
    );
    world.apply(&fixed, 2, &p);
    let p = world.converge(&fixed, 2);
    assert_eq!(phase(&p), Some(Phase::Available));
    assert_eq!(world.status().colors[&Color::Blue].revision, r2);
    assert_eq!(world.names(), ["books-blue-1", "books-blue-2"]);
}

#[test]
fn a_spec_change_during_a_preview_replaces_the_previewed_revision() {
    let manual = "  strategy: {blueGreen: {autoPromote: false}}\n";
    let v1 = service(manual);
    let v2 = with_image("books:2", manual);
    let mut v3 = with_image("books:2", manual);
    v3.spec.env.insert("A".into(), "b".into());
    let mut world = World::new();
    world.converge(&v1, 1);
    let p = world.plan(&v2, 2);
    world.apply(&v2, 2, &p);
    world.all_ready();
    assert_eq!(phase(&world.plan(&v2, 2)), Some(Phase::Preview));

    let p = world.plan(&v3, 3);
    let r2 = rev(&v2);
    assert_eq!(
        describe(&p)[..2],
        [
            format!("rename books-green-1 to books-r{r2}-1"),
            format!("remove books-r{r2}-1"),
        ],
        "a previewed revision that never served is not kept"
    );
    world.apply(&v3, 3, &p);
    world.all_ready();
    let p = world.plan(&v3, 3);
    assert_eq!(phase(&p), Some(Phase::Preview));
    assert_eq!(
        p.status.unwrap().active_color,
        Some(Color::Blue),
        "blue kept serving"
    );
}

/// A container still being removed keeps its name: its successor waits for it rather than
/// fail on a taken name.
#[test]
fn a_slot_whose_old_container_is_still_going_is_created_once_it_is_gone() {
    let books = service("  replicas: 1\n");
    let mut world = World::new();
    world.converge(&books, 1);
    let c = world.find("id0001");
    c.stopping = true;
    let p = world.plan(&books, 1);
    assert!(p.steps.is_empty(), "{:?}", describe(&p));
    assert_eq!(p.requeue_after_ms, Some(POLL_MS));
    world.observed.containers.clear();
    assert_eq!(
        describe(&world.plan(&books, 1)),
        [format!("create blue replica 1 (revision {})", rev(&books))]
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
        world.status().active_color,
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
    assert_eq!(phase(&p), Some(Phase::Preview));
    assert_eq!(p.status.as_ref().unwrap().preview_color, Some(Color::Green));
    world.apply(&v2, 2, &p);

    let stale = request("r1", Action::Promote, rev(&v1));
    let p = world.plan_with(
        Desired::Valid {
            service: &v2,
            index: 2,
        },
        Some(&stale),
    );
    assert!(p.steps.is_empty());
    assert_eq!(
        p.status
            .as_ref()
            .unwrap()
            .last_request
            .as_ref()
            .unwrap()
            .result,
        "Stale"
    );

    let promote = request("r2", Action::Promote, rev(&v2));
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
    assert_eq!(
        p.status
            .as_ref()
            .unwrap()
            .last_request
            .as_ref()
            .unwrap()
            .result,
        "Done"
    );
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
    let r2 = rev(&v2);
    assert_eq!(
        describe(&p),
        [
            format!("rename books-green-1 to books-r{r2}-1"),
            format!("remove books-r{r2}-1"),
            format!("rename books-green-2 to books-r{r2}-2"),
            format!("remove books-r{r2}-2"),
        ]
    );
    let status = p.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(Phase::Degraded));
    assert_eq!(
        status.condition("Degraded").unwrap().reason,
        "ProgressDeadlineExceeded"
    );
    assert_eq!(status.active_color, Some(Color::Blue), "blue keeps serving");
    world.apply(&v2, 2, &p);

    let p = world.plan(&v2, 2);
    assert!(
        p.steps.is_empty(),
        "a rejected revision is not retried: {:?}",
        describe(&p)
    );
    assert_eq!(phase(&p), Some(Phase::Degraded));

    // The same spec written again (a new index) is a new attempt.
    assert_eq!(world.plan(&v2, 3).steps.len(), 2);
}

#[test]
fn an_invalid_spec_changes_nothing_and_says_why() {
    let mut world = World::new();
    world.converge(&service(""), 1);
    let diagnostics = parse_service("cutover/services/books", "spec: {replica: 2}").unwrap_err();
    let p = world.plan_with(
        Desired::Invalid {
            diagnostics: &diagnostics,
            index: 9,
        },
        None,
    );
    assert!(p.steps.is_empty());
    let status = p.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Invalid));
    assert_eq!(status.observed_index, 9);
    assert_eq!(status.active_color, Some(Color::Blue));
    let condition = status.condition("Degraded").unwrap();
    assert_eq!(condition.reason, "InvalidSpec");
    assert!(
        condition.message.contains("cutover/services/books:"),
        "{}",
        condition.message
    );
}

#[test]
fn a_spec_the_policy_forbids_changes_nothing() {
    let mut world = World::new();
    world.converge(&service(""), 1);
    let privileged = service("  privileged: true\n");
    let p = world.plan(&privileged, 2);
    assert!(p.steps.is_empty(), "{:?}", describe(&p));
    let status = p.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Invalid));
    assert_eq!(
        status.condition("Degraded").unwrap().reason,
        security::REASON
    );
    assert_eq!(p.warnings.len(), 1, "told once");
    world.status = Some(status);
    assert!(
        world.plan(&privileged, 2).warnings.is_empty(),
        "not told again"
    );
}

#[test]
fn a_deleted_spec_removes_every_container() {
    let mut world = World::new();
    world.converge(&service("  sideTargets: [{name: db, image: books:1}]\n"), 1);
    let p = world.plan_with(Desired::Absent, None);
    assert_eq!(
        p.steps
            .iter()
            .filter(|s| matches!(s, Step::Remove { .. }))
            .count(),
        3
    );
    assert!(p.status.is_none() && !p.gone);
    world.apply(&service(""), 1, &p);
    let p = world.plan_with(Desired::Absent, None);
    assert!(p.gone && p.steps.is_empty());
}

#[test]
fn the_deletion_guard_and_the_orphan_rule_decide_in_the_planner() {
    let mut world = World::new();
    world.converge(&service(""), 1);
    let refusal = "2 of 2 services disappeared";
    let run = |world: &World, deletion: Deletion<'_>, policy: Policy| {
        plan(&Input {
            name: "books",
            desired: Desired::Absent,
            observed: &world.observed,
            status: world.status.as_ref(),
            unreadable: Unreadable::default(),
            request: None,
            now_ms: world.now_ms,
            policy,
            deletion,
            proxy: None,
        })
    };
    let refused = Deletion {
        refused: Some(refusal),
        confirmed: false,
    };
    let p = run(&world, refused, Policy::default());
    assert!(p.steps.is_empty() && p.deletion_refused);
    assert_eq!(
        p.status.unwrap().condition("Degraded").unwrap().reason,
        "DeletionRefused"
    );
    let confirmed = Deletion {
        confirmed: true,
        ..refused
    };
    assert!(!run(&world, confirmed, Policy::default()).steps.is_empty());
    let allowed = Policy {
        allow_mass_deletion: true,
        ..Policy::default()
    };
    assert!(!run(&world, refused, allowed).steps.is_empty());

    // Without a status, labelled containers are orphans: reported, not removed...
    world.status = None;
    let p = run(&world, Deletion::default(), Policy::default());
    assert!(p.steps.is_empty() && p.status.is_none());
    assert!(p.warnings[0].starts_with("orphaned containers"));
    // ... unless the daemon prunes orphans.
    let prune = Policy {
        prune_orphans: true,
        ..Policy::default()
    };
    assert!(!run(&world, Deletion::default(), prune).steps.is_empty());
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
    world.slow_stops = true;
    world.converge(&v1, 1);
    let p = world.plan(&v2, 2);
    let r1 = rev(&v1);
    assert_eq!(
        describe(&p),
        [
            format!("rename books-blue-1 to books-r{r1}-1"),
            format!("remove books-r{r1}-1"),
            format!("rename books-blue-2 to books-r{r1}-2"),
            format!("remove books-r{r1}-2"),
        ]
    );
    world.apply(&v2, 2, &p);
    let p = world.plan(&v2, 2);
    assert!(
        p.steps.is_empty(),
        "waits for the old replicas to stop: {:?}",
        describe(&p)
    );
    assert_eq!(
        p.status.unwrap().condition("Progressing").unwrap().reason,
        "Recreating"
    );
    world.finish_stops();
    let p = world.converge(&v2, 2);
    let status = p.status.unwrap();
    assert_eq!(status.active_color, Some(Color::Blue));
    assert_eq!(status.phase, Some(Phase::Available));
    assert_eq!(status.colors[&Color::Blue].revision, rev(&v2));
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
    assert_eq!(world.status().active_color, Some(Color::Green));

    let rollback = request("r1", Action::Rollback, rev(&v2));
    let p = world.plan_with(
        Desired::Valid {
            service: &v2,
            index: 2,
        },
        Some(&rollback),
    );
    assert_eq!(describe(&p), ["switch traffic to blue"]);
    let status = p.status.as_ref().unwrap();
    assert_eq!(status.last_request.as_ref().unwrap().result, "Done");
    assert_eq!(status.rejected.as_ref().unwrap().reason, "RolledBack");
    world.apply(&v2, 2, &p);
    world.later(10 * SECOND);
    let p = world.plan(&v2, 2);
    let r2 = rev(&v2);
    assert_eq!(
        describe(&p),
        [
            format!("rename books-green-1 to books-r{r2}-1"),
            format!("remove books-r{r2}-1"),
            format!("rename books-green-2 to books-r{r2}-2"),
            format!("remove books-r{r2}-2"),
        ]
    );
    world.apply(&v2, 2, &p);
    assert_eq!(phase(&world.plan(&v2, 2)), Some(Phase::Degraded));
}

#[test]
fn rollback_revives_the_kept_revision_after_the_drain() {
    let v1 = service("");
    let v2 = with_image("books:2", "");
    let mut world = World::new();
    world.converge(&v1, 1);
    world.converge(&v2, 2);
    let rollback = request("r1", Action::Rollback, rev(&v2));
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
    assert_eq!(world.status().active_color, Some(Color::Blue));
    assert_eq!(world.status().colors[&Color::Blue].image, "books:1");
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
    world.status = None;
    // Blue (older) is taken as live, so green is health-gated and switched, not assumed.
    let p = world.plan(&v2, 2);
    assert_eq!(describe(&p), ["switch traffic to green"]);
}

#[test]
fn a_lost_status_follows_what_the_proxy_routes() {
    let v1 = service("");
    let v2 = with_image("books:2", "");
    let mut world = World::new();
    world.proxy = Some(ProxyView::default());
    world.converge(&v1, 1);
    world.converge(&v2, 2);
    assert_eq!(world.proxy.as_ref().unwrap().live, Some(Color::Green));
    world.status = None;
    let p = world.plan(&v2, 2);
    let steps = describe(&p);
    assert_eq!(
        p.status.unwrap().active_color,
        Some(Color::Green),
        "{steps:?}"
    );
}

#[test]
fn an_unreadable_status_or_request_is_told_and_does_not_stop_the_service() {
    let books = service("");
    let mut world = World::new();
    world.converge(&books, 1);
    world.observed.containers[0].running = false;
    world.status = None;
    let p = plan(&Input {
        name: "books",
        desired: Desired::Valid {
            service: &books,
            index: 1,
        },
        observed: &world.observed,
        status: None,
        unreadable: Unreadable {
            status: Some("expected value at line 1 column 1"),
            request: Some((7, "missing field `id`")),
        },
        request: None,
        now_ms: world.now_ms,
        policy: Policy::default(),
        deletion: Deletion::default(),
        proxy: None,
    });
    assert_eq!(describe(&p), ["start books-blue-1"]);
    let reasons: Vec<&str> = p
        .status
        .as_ref()
        .unwrap()
        .events
        .iter()
        .map(|e| e.reason.as_str())
        .collect();
    assert!(reasons.contains(&"StatusRebuilt"), "{reasons:?}");
    assert!(reasons.contains(&"RequestUnreadable"), "{reasons:?}");
}

/// v1 live on blue behind a proxy, and `v2`'s green replicas started (not ready yet).
fn green_started_behind_a_proxy(v2: &Service) -> World {
    let mut world = World::new();
    world.proxy = Some(ProxyView::default());
    world.converge(&service(""), 1);
    let p = world.plan(v2, 2);
    world.apply(v2, 2, &p);
    world
}

#[test]
fn the_switch_waits_until_the_proxy_sees_every_new_replica_up() {
    let v2 = with_image("books:2", "");
    let mut world = green_started_behind_a_proxy(&v2);
    for c in &mut world.observed.containers {
        c.ready = c.running;
    }
    // cutover's probes pass; HAProxy's checks see only green 1 UP.
    world.proxy.as_mut().unwrap().up.insert((Color::Green, 1));
    let p = world.plan(&v2, 2);
    assert!(p.steps.is_empty(), "{:?}", describe(&p));
    assert_eq!(
        p.status.unwrap().condition("Progressing").unwrap().reason,
        "WaitingForProxies"
    );
    world.all_ready();
    assert_eq!(describe(&world.plan(&v2, 2)), ["switch traffic to green"]);
}

#[test]
fn a_proxy_behind_the_route_table_cannot_vouch_for_a_slot() {
    let v2 = with_image("books:2", "");
    let mut world = green_started_behind_a_proxy(&v2);
    world.all_ready();
    // Its report names the slot UP, but from a table before the one that gave the slot its
    // replica: the UP is the previous replica's.
    world.proxy.as_mut().unwrap().lagging = vec!["edge-1 (serves version 3)".into()];
    let p = world.plan(&v2, 2);
    assert!(p.steps.is_empty(), "{:?}", describe(&p));
    let status = p.status.unwrap();
    let progressing = status.condition("Progressing").unwrap();
    assert_eq!(progressing.reason, "WaitingForProxies");
    assert!(
        progressing.message.contains("edge-1"),
        "{}",
        progressing.message
    );
    world.proxy.as_mut().unwrap().lagging.clear();
    assert_eq!(describe(&world.plan(&v2, 2)), ["switch traffic to green"]);
}

#[test]
fn planning_after_applying_a_plan_converges_for_every_scenario() {
    let specs = [
        service(""),
        with_image("books:2", "  replicas: 3\n"),
        with_image("books:2", "  replicas: 1\n  strategy: {recreate: {}}\n"),
        service("  sideTargets: [{name: db, image: books:1}]\n"),
        canary("books:3", "[{weight: 10}, {pause: 10s}, {weight: 50}]"),
    ];
    for (i, a) in specs.iter().enumerate() {
        for (j, b) in specs.iter().enumerate() {
            let mut world = World::new();
            world.converge(a, 1);
            world.converge(b, 2);
            let p = world.plan(b, 2);
            assert!(p.steps.is_empty(), "{i} -> {j}: {:?}", describe(&p));
            let status = p.status.unwrap();
            assert_eq!(status.phase, Some(Phase::Available), "{i} -> {j}");
            let live = status.active_color.unwrap();
            assert_eq!(status.colors[&live].revision, rev(b), "{i} -> {j}");
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
        world.status().colors[&world.status().active_color.unwrap()].image,
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

const ANALYSIS: &str = "  strategy:\n    blueGreen:\n      scaleDownDelay: 1s\n      analysis: {window: 30s, minRequests: 20, maxErrorRatio: 0.05, maxResponseTime: 500ms}\n";

/// Converges v1, then rolls v2 (with an analysis) up to its switch, applied.
fn switched_to_v2_under_analysis() -> (World, Service) {
    let v1 = service(ANALYSIS);
    let v2 = with_image("books:2", ANALYSIS);
    let mut world = World::new();
    world.proxy = Some(ProxyView::default());
    world.converge(&v1, 1);
    let p = world.plan(&v2, 2);
    world.apply(&v2, 2, &p);
    world.all_ready();
    let p = world.plan(&v2, 2);
    assert_eq!(describe(&p), ["switch traffic to green"]);
    let analysis = p.status.as_ref().unwrap().analysis.clone().unwrap();
    assert_eq!(analysis.result, AnalysisResult::Running);
    assert_eq!(analysis.color, Color::Green);
    assert_eq!(analysis.until_ms, world.now_ms + 30 * SECOND);
    world.apply(&v2, 2, &p);
    (world, v2)
}

fn traffic(requests: u64, errors: u64, response_time_ms: u64) -> Option<TrafficFigures> {
    Some(TrafficFigures {
        requests,
        errors,
        response_time_ms: Some(response_time_ms),
        proxies: 1,
    })
}

#[test]
fn a_release_under_analysis_keeps_the_old_color_ready_until_its_window_ends() {
    let (mut world, v2) = switched_to_v2_under_analysis();
    world.proxy.as_mut().unwrap().traffic = traffic(500, 1, 20);
    // Past scaleDownDelay, inside the window: blue stays, and the service is not Available.
    world.later(5 * SECOND);
    let p = world.plan(&v2, 2);
    assert!(p.steps.is_empty(), "{:?}", describe(&p));
    assert_eq!(p.requeue_after_ms, Some(25 * SECOND));
    assert_eq!(phase(&p), Some(Phase::Progressing));
    let status = p.status.as_ref().unwrap();
    assert_eq!(status.condition("Progressing").unwrap().reason, "Analyzing");
    assert!(
        status
            .condition("Progressing")
            .unwrap()
            .message
            .contains("1 of 500 requests failed"),
        "{:?}",
        status.condition("Progressing")
    );
    world.apply(&v2, 2, &p);
    // The window ends within the limits: the analysis passes, blue retires.
    world.later(25 * SECOND);
    let p = world.plan(&v2, 2);
    assert_eq!(phase(&p), Some(Phase::Available));
    let analysis = p.status.as_ref().unwrap().analysis.clone().unwrap();
    assert_eq!(analysis.result, AnalysisResult::Passed);
    assert_eq!(analysis.figures.requests, 500);
    assert!(
        describe(&p)
            .iter()
            .any(|s| s.starts_with("rename books-blue-1"))
    );
    assert!(
        p.status
            .as_ref()
            .unwrap()
            .events
            .iter()
            .any(|e| e.reason == "AnalysisPassed"),
        "told"
    );
}

#[test]
fn a_breach_switches_back_at_once_and_rejects_the_revision_with_its_figures() {
    let (mut world, v2) = switched_to_v2_under_analysis();
    // Too few requests to judge, even all failed.
    world.later(200);
    world.proxy.as_mut().unwrap().traffic = traffic(10, 10, 20);
    let p = world.plan(&v2, 2);
    assert!(p.steps.is_empty(), "{:?}", describe(&p));
    world.apply(&v2, 2, &p);
    // 30 of 100 failed: back to blue in the same plan.
    world.later(300);
    world.proxy.as_mut().unwrap().traffic = traffic(100, 30, 20);
    let p = world.plan(&v2, 2);
    assert_eq!(describe(&p), ["switch traffic to blue"]);
    let status = p.status.as_ref().unwrap();
    let rejected = status.rejected.as_ref().unwrap();
    assert_eq!(rejected.reason, "AnalysisFailed");
    assert_eq!(rejected.revision, rev(&v2));
    assert!(
        rejected
            .message
            .contains("error ratio 30.0% above maxErrorRatio 5.0%")
            && rejected.message.contains("30 of 100 requests failed"),
        "{}",
        rejected.message
    );
    let analysis = status.analysis.as_ref().unwrap();
    assert_eq!(analysis.result, AnalysisResult::Failed);
    assert_eq!(analysis.figures.errors, 30);
    world.apply(&v2, 2, &p);
    assert_eq!(world.status().active_color, Some(Color::Blue));
    // The rejected revision is not tried again, and goes once blue's drain is over.
    world.proxy.as_mut().unwrap().traffic = None;
    world.later(2 * SECOND);
    let p = world.plan(&v2, 2);
    assert_eq!(phase(&p), Some(Phase::Degraded));
    assert!(
        describe(&p).iter().all(|s| !s.starts_with("create")),
        "{:?}",
        describe(&p)
    );
    assert!(
        describe(&p)
            .iter()
            .any(|s| s == "remove books-green-1" || s.starts_with("rename books-green-1"))
    );
}

#[test]
fn a_slow_release_is_rolled_back_on_its_response_time() {
    let (mut world, v2) = switched_to_v2_under_analysis();
    world.later(1_000);
    world.proxy.as_mut().unwrap().traffic = traffic(100, 0, 900);
    let p = world.plan(&v2, 2);
    assert_eq!(describe(&p), ["switch traffic to blue"]);
    let message = &p
        .status
        .as_ref()
        .unwrap()
        .rejected
        .as_ref()
        .unwrap()
        .message;
    assert!(
        message.contains("average response time 900 ms above maxResponseTime 500ms"),
        "{message}"
    );
}

#[test]
fn a_new_spec_during_the_window_cancels_the_analysis_and_nothing_is_judged_without_traffic() {
    let (mut world, v2) = switched_to_v2_under_analysis();
    let v3 = with_image("books:3", ANALYSIS);
    world.observed.images_present.insert("books:3".to_owned());
    world.later(1_000);
    let p = world.plan(&v3, 3);
    let analysis = p.status.as_ref().unwrap().analysis.clone().unwrap();
    assert_eq!(analysis.result, AnalysisResult::Cancelled);
    assert!(
        describe(&p)
            .iter()
            .any(|s| s.starts_with("create blue replica 1")),
        "{:?}",
        describe(&p)
    );
    // Back to v2's window: without counters (no proxy), the window passes unjudged.
    let (mut world, v2b) = switched_to_v2_under_analysis();
    assert_eq!(v2, v2b);
    world.proxy.as_mut().unwrap().traffic = None;
    world.later(30 * SECOND);
    let p = world.plan(&v2, 2);
    let analysis = p.status.as_ref().unwrap().analysis.clone().unwrap();
    assert_eq!(analysis.result, AnalysisResult::Passed);
    assert!(
        analysis.message.contains("unjudged"),
        "{}",
        analysis.message
    );
}

/// A canary with `steps` (and a short drain).
fn canary(image: &str, steps: &str) -> Service {
    with_image(
        image,
        &format!("  strategy:\n    canary:\n      scaleDownDelay: 1s\n      steps: {steps}\n"),
    )
}

fn progressing(p: &Plan) -> (String, String) {
    let c = p.status.as_ref().unwrap().condition("Progressing").unwrap();
    (c.reason.clone(), c.message.clone())
}

fn canary_of(p: &Plan) -> CanaryStatus {
    p.status
        .as_ref()
        .unwrap()
        .canary
        .clone()
        .expect("a canary in progress")
}

/// Converges v1 (`steps` do not apply to a first rollout), then brings v2 up in green, every
/// replica ready and UP, the proxy following the table. Returns the world and v2.
fn canary_ready(steps: &str) -> (World, Service) {
    let v1 = canary("books:1", steps);
    let v2 = canary("books:2", steps);
    let mut world = World::new();
    world.proxy = Some(ProxyView::default());
    let p = world.converge(&v1, 1);
    assert_eq!(
        p.status.as_ref().unwrap().canary,
        None,
        "no canary for a first rollout"
    );
    world.step(&v2, 2);
    world.all_ready();
    (world, v2)
}

#[test]
fn a_canary_takes_each_weight_once_every_proxy_serves_it_and_pauses_by_the_clock() {
    let (mut world, v2) = canary_ready("[{weight: 10}, {pause: 1m}, {weight: 50}, {pause: 30s}]");
    let r = rev(&v2);
    // Ready: no switch, the first weight instead.
    let p = world.step(&v2, 2);
    assert!(p.steps.is_empty(), "{:?}", describe(&p));
    let c = canary_of(&p);
    assert_eq!((c.step, c.of, c.weight, c.color), (1, 4, 10, Color::Green));
    assert_eq!(p.status.as_ref().unwrap().active_color, Some(Color::Blue));
    assert_eq!(phase(&p), Some(Phase::Progressing));
    let (reason, message) = progressing(&p);
    assert_eq!(reason, "Canary");
    assert!(
        message.starts_with(&format!(
            "step 1 of 4: 10% of requests to revision {r}; waiting for every proxy"
        )),
        "{message}"
    );
    assert_eq!(
        crate::traffic::split(p.status.as_ref()),
        Some(Split {
            color: Color::Green,
            percent: 10
        })
    );
    // A proxy still serves the table without the weight: the step waits.
    world.proxy.as_mut().unwrap().lagging = vec!["p2 (serves version 6)".into()];
    let p = world.step(&v2, 2);
    assert_eq!(canary_of(&p).step, 1);
    assert!(
        progressing(&p).1.contains("behind the route table: p2"),
        "{:?}",
        progressing(&p)
    );
    // Every proxy serves it: the pause begins, and lasts a minute by the clock.
    world.proxy.as_mut().unwrap().lagging.clear();
    let p = world.step(&v2, 2);
    let c = canary_of(&p);
    assert_eq!((c.step, c.weight, c.since_ms), (2, 10, world.now_ms));
    assert_eq!(p.requeue_after_ms, Some(60 * SECOND));
    world.later(30 * SECOND);
    assert_eq!(canary_of(&world.step(&v2, 2)).step, 2);
    world.later(30 * SECOND);
    let p = world.step(&v2, 2);
    let c = canary_of(&p);
    assert_eq!((c.step, c.weight), (3, 50));
    // 50 % served at once (the proxy follows the table in this world); then 30 s.
    let p = world.step(&v2, 2);
    assert_eq!(canary_of(&p).step, 4);
    world.later(30 * SECOND);
    let p = world.step(&v2, 2);
    assert_eq!(describe(&p), ["switch traffic to green"]);
    let status = p.status.as_ref().unwrap();
    assert_eq!(status.canary, None);
    assert_eq!(status.active_color, Some(Color::Green));
    assert_eq!(
        world.proxy.as_ref().unwrap().split,
        None,
        "the split ends with the switch"
    );
    let reasons: Vec<&str> = status.events.iter().map(|e| e.reason.as_str()).collect();
    for reason in [
        "CanaryStarted",
        "CanaryWeight",
        "CanaryCompleted",
        "Switched",
    ] {
        assert!(reasons.contains(&reason), "{reasons:?}");
    }
    let told = |reason: &str| {
        status
            .events
            .iter()
            .find(|e| e.reason == reason)
            .map(|e| e.message.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        told("CanaryStarted"),
        format!(
            "revision {r} is ready in green; walking its 4 canary steps before the full switch"
        )
    );
    assert_eq!(
        told("CanaryCompleted"),
        format!("revision {r} went through its 4 canary steps; switching every request to it")
    );
    // Then as for blue/green: the old color drains and goes, and the service is Available.
    let p = world.converge(&v2, 2);
    assert_eq!(phase(&p), Some(Phase::Available));
}

#[test]
fn a_pause_without_duration_waits_for_promote_which_skips_every_step_left() {
    let (mut world, v2) = canary_ready("[{weight: 10}, {pause: {}}]");
    let r = rev(&v2);
    world.step(&v2, 2);
    let p = world.step(&v2, 2);
    assert_eq!(phase(&p), Some(Phase::Preview));
    let (reason, message) = progressing(&p);
    assert_eq!(reason, "WaitingForPromotion");
    assert!(message.contains("run `cutover promote books`"), "{message}");
    assert_eq!(p.requeue_after_ms, None, "nothing to wait for but a person");
    world.later(3_600 * SECOND);
    let p = world.step(&v2, 2);
    assert!(p.steps.is_empty());
    assert_eq!(canary_of(&p).step, 2);
    assert_eq!(
        world.proxy.as_ref().unwrap().split.map(|s| s.percent),
        Some(10)
    );

    let promote = request("p1", Action::Promote, r.clone());
    let p = world.plan_asking(&v2, 2, &promote);
    assert_eq!(describe(&p), ["switch traffic to green"]);
    let status = p.status.as_ref().unwrap();
    assert_eq!(status.canary, None);
    assert!(
        status.events.iter().any(|e| e.reason == "CanaryPromoted"),
        "{:?}",
        status.events
    );

    // Promote during a weight step skips the pause too.
    let (mut world, v2) = canary_ready("[{weight: 10}, {pause: 1h}, {weight: 90}]");
    world.step(&v2, 2);
    let promote = request("p2", Action::Promote, rev(&v2));
    let p = world.plan_asking(&v2, 2, &promote);
    assert_eq!(describe(&p), ["switch traffic to green"]);
}

#[test]
fn abort_during_a_canary_sends_every_request_back_at_once_and_rejects_the_revision() {
    let (mut world, v2) = canary_ready("[{weight: 25}, {pause: {}}]");
    world.step(&v2, 2);
    world.step(&v2, 2);
    assert_eq!(
        world.proxy.as_ref().unwrap().split.map(|s| s.percent),
        Some(25)
    );
    let abort = request("a1", Action::Abort, rev(&v2));
    let p = world.plan_asking(&v2, 2, &abort);
    let status = p.status.as_ref().unwrap();
    assert_eq!(status.canary, None);
    assert_eq!(status.active_color, Some(Color::Blue));
    assert_eq!(status.rejected.as_ref().unwrap().reason, "Aborted");
    assert_eq!(phase(&p), Some(Phase::Degraded));
    assert!(
        !describe(&p).iter().any(|s| s.starts_with("switch")),
        "{:?}",
        describe(&p)
    );
    // Green leaves in the same plan; the table it publishes has no split.
    assert!(
        describe(&p)
            .iter()
            .any(|s| s.starts_with("rename books-green-1")),
        "{:?}",
        describe(&p)
    );
    assert!(status.events.iter().any(|e| e.reason == "CanaryStopped"));
    world.apply(&v2, 2, &p);
    assert_eq!(world.proxy.as_ref().unwrap().split, None);
    assert_eq!(world.proxy.as_ref().unwrap().live, Some(Color::Blue));
}

const CANARY_ANALYSIS: &str =
    "[{weight: 20}, {analysis: {window: 20s, minRequests: 20, maxErrorRatio: 0.05}}]";

#[test]
fn an_analysis_step_judges_the_new_color_at_its_weight_and_a_breach_sends_everything_back() {
    let (mut world, v2) = canary_ready(CANARY_ANALYSIS);
    world.step(&v2, 2);
    let p = world.step(&v2, 2);
    let c = canary_of(&p);
    assert_eq!((c.step, c.weight), (2, 20));
    let status = p.status.as_ref().unwrap();
    let analysis = status.analysis.as_ref().unwrap();
    assert_eq!(
        (
            analysis.result,
            analysis.color,
            analysis.started_ms,
            analysis.until_ms
        ),
        (
            AnalysisResult::Running,
            Color::Green,
            world.now_ms,
            world.now_ms + 20 * SECOND
        )
    );
    // Every proxy counts the new color, at the step's interval.
    let watch = crate::traffic::watch(&v2, Some(status)).unwrap();
    assert_eq!(
        (watch.color, watch.since_ms, watch.interval_ms),
        (Color::Green, world.now_ms, 250)
    );
    // 30 of 100 failed: rejected, every request back to blue, no switch.
    world.later(SECOND);
    world.proxy.as_mut().unwrap().traffic = traffic(100, 30, 20);
    let p = world.plan(&v2, 2);
    let status = p.status.as_ref().unwrap();
    let rejected = status.rejected.as_ref().unwrap();
    assert_eq!(rejected.reason, "AnalysisFailed");
    assert!(
        rejected
            .message
            .contains("1s into canary step 2 of 2 (20% of requests)")
            && rejected.message.contains("30 of 100 requests failed"),
        "{}",
        rejected.message
    );
    assert_eq!(
        status.analysis.as_ref().unwrap().result,
        AnalysisResult::Failed
    );
    assert_eq!(status.canary, None);
    assert_eq!(status.active_color, Some(Color::Blue));
    assert!(
        !describe(&p).iter().any(|s| s.starts_with("switch")),
        "{:?}",
        describe(&p)
    );
    world.apply(&v2, 2, &p);
    assert_eq!(world.proxy.as_ref().unwrap().split, None);
    assert_eq!(crate::traffic::watch(&v2, world.status.as_ref()), None);
}

#[test]
fn an_analysis_step_that_ends_within_its_limits_moves_on_to_the_full_switch() {
    let (mut world, v2) = canary_ready(CANARY_ANALYSIS);
    world.step(&v2, 2);
    world.step(&v2, 2);
    world.proxy.as_mut().unwrap().traffic = traffic(400, 1, 20);
    world.later(10 * SECOND);
    let p = world.step(&v2, 2);
    assert!(p.steps.is_empty());
    assert!(
        progressing(&p).1.contains("judging revision"),
        "{:?}",
        progressing(&p)
    );
    world.later(10 * SECOND);
    let p = world.step(&v2, 2);
    assert_eq!(describe(&p), ["switch traffic to green"]);
    let status = p.status.as_ref().unwrap();
    assert_eq!(
        status.analysis.as_ref().unwrap().result,
        AnalysisResult::Passed
    );
    assert_eq!(status.canary, None);
}

#[test]
fn a_new_spec_during_a_canary_supersedes_it_and_its_share_goes_back_at_once() {
    let (mut world, v2) = canary_ready("[{weight: 10}, {pause: {}}]");
    world.step(&v2, 2);
    world.step(&v2, 2);
    let v3 = canary("books:3", "[{weight: 10}, {pause: {}}]");
    world.observed.images_present.insert("books:3".to_owned());
    let p = world.plan(&v3, 3);
    let status = p.status.as_ref().unwrap();
    assert_eq!(status.canary, None);
    assert!(status.events.iter().any(|e| e.reason == "CanaryStopped"));
    let steps = describe(&p);
    assert!(
        steps.iter().any(|s| s.starts_with("rename books-green-1")),
        "{steps:?}"
    );
    assert!(
        steps
            .iter()
            .any(|s| s.starts_with("create green replica 1")),
        "{steps:?}"
    );
    world.apply(&v3, 3, &p);
    assert_eq!(world.proxy.as_ref().unwrap().split, None);
    // v3 gets its own canary once it is ready.
    world.all_ready();
    let p = world.step(&v3, 3);
    let c = canary_of(&p);
    assert_eq!(
        (c.revision.as_str(), c.step, c.weight),
        (rev(&v3).as_str(), 1, 10)
    );
}

#[test]
fn without_a_proxy_a_weight_step_is_done_at_once() {
    let (mut world, v2) = canary_ready("[{weight: 10}, {weight: 40}, {pause: 10s}]");
    world.proxy = None;
    let p = world.step(&v2, 2);
    let c = canary_of(&p);
    assert_eq!((c.step, c.weight), (3, 40));
    assert_eq!(p.requeue_after_ms, Some(10 * SECOND));
}
