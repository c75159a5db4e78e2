//! The Docker adapter and the health monitor against the real Docker engine.
//!
//! Each test works in its own [`World`]: a random instance label, network and service name.
//! Dropping the world removes every container, volume and network it made, with the docker
//! CLI, so that cleanup also runs when an assertion failed. The images `cutover-demo:a` and
//! `cutover-demo:b` come from `scripts/test-images`; nothing is pulled.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;

use cutover::docker::{
    ContainerEventKind, Docker, DockerError, DockerHealth, ExecContext, PullFailure, Scope,
    is_docker_step,
};
use cutover::health::HealthMonitor;
use cutover::observed::{
    Container, LABEL_COLOR, LABEL_INSTANCE, LABEL_REVISION, LABEL_SERVICE, LABEL_SLOT,
    LABEL_SPEC_INDEX, Role, replica_name, side_target_name,
};
use cutover::plan::{Step, Target};
use cutover::security::Allowances;
use cutover::spec::{Service, parse_service};
use cutover::status::Color;

const IMAGE_A: &str = "cutover-demo:a";
const IMAGE_B: &str = "cutover-demo:b";
/// The demo image's command, with a shell that exits on SIGTERM: httpd as PID 1 ignores
/// it, and every stop would wait out Docker's 10 s grace period.
const COMMAND: &str = r#"[sh, -c, "trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"]"#;
/// Generous: the engine here is fast, but CI machines are noisy.
const PATIENCE: Duration = Duration::from_secs(60);

/// Runs the docker CLI and returns its stdout; panics with its stderr on failure.
fn docker_cli(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs");
    assert!(
        output.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Runs the docker CLI and ignores the outcome, for cleanup.
fn docker_cli_quietly(args: &[&str]) -> String {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn random_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// One test's private corner of the engine.
struct World {
    docker: Docker,
    scope: Scope,
    service: Service,
    /// Containers made outside the adapter (without our labels), removed by name.
    foreign: Vec<String>,
}

impl World {
    async fn new(spec_extra: &str) -> World {
        World::with_command(COMMAND, spec_extra).await
    }

    async fn with_command(command: &str, spec_extra: &str) -> World {
        let suffix = random_suffix();
        let docker = Docker::connect()
            .await
            .expect("the Docker engine is reachable");
        for image in [IMAGE_A, IMAGE_B] {
            assert!(
                docker.image_present(image).await.unwrap(),
                "image {image} is missing: run scripts/test-images"
            );
        }
        let scope = Scope {
            instance: format!("test-{suffix}"),
            network: format!("cutover-test-{suffix}"),
        };
        let name = format!("dt{suffix}");
        let text = format!(
            "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  image: {IMAGE_A}\n  command: {command}\n{spec_extra}"
        );
        let service = parse_service("test.yaml", &text).expect("the test manifest is valid");
        let world = World {
            docker,
            scope,
            service,
            foreign: Vec::new(),
        };
        world
            .docker
            .ensure_network(&world.scope.network, &world.scope.instance)
            .await
            .expect("the network is created");
        world
    }

    fn ctx(&self) -> ExecContext<'_> {
        ExecContext {
            scope: &self.scope,
            service_name: self.service.name(),
            service: Some(&self.service),
            spec_index: 7,
        }
    }

    fn name(&self) -> &str {
        self.service.name()
    }

    async fn execute(&self, step: &Step) -> Result<(), DockerError> {
        self.docker.execute(&self.ctx(), step).await
    }

    async fn containers(&self) -> Vec<Container> {
        self.docker
            .observe(&self.scope, Some(self.name()))
            .await
            .expect("observe works")
            .containers
    }

    async fn container(&self, name: &str) -> Container {
        let containers = self.containers().await;
        containers
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} is not among {containers:#?}"))
    }

    /// Starts a container without cutover's instance label, named like one of ours.
    fn run_foreign(&mut self, name: &str, extra_args: &[&str]) -> String {
        self.foreign.push(name.to_owned());
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--network",
            &self.scope.network,
        ];
        args.extend_from_slice(extra_args);
        args.push(IMAGE_A);
        docker_cli(&args)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let filter = format!("label={LABEL_INSTANCE}={}", self.scope.instance);
        let ours = docker_cli_quietly(&["ps", "-aq", "--filter", &filter]);
        let mut containers: Vec<&str> = ours.lines().collect();
        containers.extend(self.foreign.iter().map(String::as_str));
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(containers);
            docker_cli_quietly(&args);
        }
        let volumes = docker_cli_quietly(&["volume", "ls", "-q", "--filter", &filter]);
        for volume in volumes.lines() {
            docker_cli_quietly(&["volume", "rm", "-f", volume]);
        }
        docker_cli_quietly(&["network", "rm", &self.scope.network]);
    }
}

/// `--label` values that make a container look like one of the world's replicas.
fn our_labels(world: &World, extra: &[(&str, &str)]) -> Vec<String> {
    let mut labels = vec![
        format!("{LABEL_INSTANCE}={}", world.scope.instance),
        format!("{LABEL_SERVICE}={}", world.name()),
        format!("{LABEL_REVISION}=0123456789"),
        format!("{LABEL_SPEC_INDEX}=3"),
    ];
    labels.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
    labels
}

fn create_replica(world: &World, color: Color, slot: u32) -> Step {
    Step::CreateReplica {
        color,
        slot,
        revision: cutover::revision::of_service(&world.service),
    }
}

fn target(container: &Container) -> Target {
    Target::from(container)
}

#[tokio::test]
async fn observe_ignores_and_never_touches_unlabelled_containers() {
    let mut world = World::new("").await;
    let lookalike = replica_name(world.name(), Color::Blue, 1);
    let lookalike_id = world.run_foreign(&lookalike, &[]);
    // Another installation's container of a service with the same name.
    let other_instance = format!("{lookalike}-other");
    let other_labels = [
        format!("{LABEL_SERVICE}={}", world.name()),
        format!("{LABEL_INSTANCE}=someone-else"),
    ];
    world.run_foreign(
        &other_instance,
        &["--label", &other_labels[0], "--label", &other_labels[1]],
    );

    // Ours by instance and service, but with a color that is not one: skipped, not fatal.
    let malformed = our_labels(&world, &[(LABEL_COLOR, "purple"), (LABEL_SLOT, "1")]);
    let mut args = vec![];
    for label in &malformed {
        args.extend(["--label", label.as_str()]);
    }
    world.run_foreign(&format!("{lookalike}-malformed"), &args);

    let everything = world.docker.observe(&world.scope, None).await.unwrap();
    assert_eq!(everything.containers, Vec::new());
    assert_eq!(world.containers().await, Vec::new());

    let foreign = Target {
        id: lookalike_id.clone(),
        name: lookalike.clone(),
        color: Some(Color::Blue),
        revision: "whatever".into(),
    };
    for step in [
        Step::Remove {
            target: foreign.clone(),
        },
        Step::Stop {
            target: foreign.clone(),
        },
        Step::Rename {
            target: foreign.clone(),
            to: "stolen".into(),
        },
    ] {
        let error = world.execute(&step).await.unwrap_err();
        assert!(
            matches!(error, DockerError::NotOurs { .. }),
            "{step}: {error}"
        );
    }
    let error = world
        .execute(&create_replica(&world, Color::Blue, 1))
        .await
        .unwrap_err();
    assert!(matches!(error, DockerError::NameTaken { .. }), "{error}");

    let state = docker_cli(&[
        "inspect",
        "-f",
        "{{.State.Status}} {{.Name}}",
        &lookalike_id,
    ]);
    assert_eq!(state, format!("running /{lookalike}"));
}

#[tokio::test]
async fn a_created_replica_runs_on_the_network_with_our_labels() {
    let world =
        World::new("  env: {GREETING: hello}\n  resources: {memory: 64Mi, cpus: 0.5}\n").await;
    world
        .execute(&create_replica(&world, Color::Green, 2))
        .await
        .unwrap();

    let name = replica_name(world.name(), Color::Green, 2);
    let observation = world.docker.observe(&world.scope, None).await.unwrap();
    assert_eq!(observation.containers.len(), 1);
    let replica = &observation.containers[0];
    assert_eq!(replica.name, name);
    assert_eq!(replica.service, world.name());
    assert_eq!(
        replica.role,
        Role::Replica {
            color: Color::Green,
            slot: 2
        }
    );
    assert_eq!(
        replica.revision,
        cutover::revision::of_service(&world.service)
    );
    assert_eq!(replica.spec_index, 7);
    assert_eq!(replica.image, IMAGE_A);
    assert!(replica.running);
    assert!(!replica.ready, "readiness is the health monitor's business");
    assert!(
        replica.created_ms > 1_600_000_000_000,
        "{}",
        replica.created_ms
    );
    let address = replica.address.clone().expect("an address on the network");
    assert!(address.parse::<std::net::Ipv4Addr>().is_ok(), "{address}");
    assert!(
        observation.docker_health.is_empty(),
        "the demo image has no HEALTHCHECK"
    );

    let format = "{{.HostConfig.RestartPolicy.Name}} {{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{json .HostConfig.PortBindings}} {{json .Config.Env}}";
    let settings = docker_cli(&["inspect", "-f", format, &name]);
    assert!(
        settings.starts_with("unless-stopped 67108864 500000000 ")
            && (settings.contains(" null ") || settings.contains(" {} ")),
        "restart policy, memory, CPUs, no published ports: {settings}"
    );
    assert!(settings.contains("GREETING=hello"), "{settings}");

    // Replicas resolve each other by container name on the network.
    let page = docker_cli(&["exec", &name, "wget", "-qO-", &format!("http://{name}/")]);
    assert_eq!(page, "version A");
}

#[tokio::test]
async fn every_step_is_idempotent() {
    let world = World::new("").await;
    let create = create_replica(&world, Color::Blue, 1);
    world.execute(&create).await.unwrap();
    world.execute(&create).await.unwrap();
    let name = replica_name(world.name(), Color::Blue, 1);
    let replica = world.container(&name).await;
    assert_eq!(world.containers().await.len(), 1);

    let stop = Step::Stop {
        target: target(&replica),
    };
    world.execute(&stop).await.unwrap();
    world.execute(&stop).await.unwrap();
    assert!(!world.container(&name).await.running);

    // Creating a stopped container that exists with the same revision starts it.
    world.execute(&create).await.unwrap();
    assert!(world.container(&name).await.running);
    world.execute(&stop).await.unwrap();

    let start = Step::Start {
        target: target(&replica),
    };
    world.execute(&start).await.unwrap();
    world.execute(&start).await.unwrap();
    assert!(world.container(&name).await.running);

    let archived = cutover::observed::archived_name(world.name(), &replica.revision, 1);
    let rename = Step::Rename {
        target: target(&replica),
        to: archived.clone(),
    };
    world.execute(&rename).await.unwrap();
    world.execute(&rename).await.unwrap();
    let renamed = world.container(&archived).await;
    assert!(renamed.is_archived());
    assert_eq!(renamed.id, replica.id);

    let remove = Step::Remove {
        target: target(&renamed),
    };
    world.execute(&remove).await.unwrap();
    world.execute(&remove).await.unwrap();
    assert_eq!(world.containers().await, Vec::new());
    // Stopping what is gone is done too; starting it is not.
    world.execute(&stop).await.unwrap();
    let error = world.execute(&start).await.unwrap_err();
    assert!(
        matches!(error, DockerError::StartContainer { .. }),
        "{error}"
    );
    assert!(error.to_string().contains(&name), "{error}");

    // A create whose name holds another revision of ours is refused, not replaced.
    world.execute(&create).await.unwrap();
    let other_revision = Step::CreateReplica {
        color: Color::Blue,
        slot: 1,
        revision: "0000000000".into(),
    };
    let error = world.execute(&other_revision).await.unwrap_err();
    assert!(matches!(error, DockerError::NameTaken { .. }), "{error}");

    let switch = Step::Switch { to: Color::Green };
    assert!(!is_docker_step(&switch));
    let error = world.execute(&switch).await.unwrap_err();
    assert!(
        matches!(error, DockerError::NotADockerStep { .. }),
        "{error}"
    );
}

#[tokio::test]
async fn a_side_target_keeps_its_volume_and_answers_to_its_name() {
    let volume = format!("cutover-test-data-{}", random_suffix());
    let world = World::new(&format!(
        "  sideTargets:\n    - name: db\n      image: {IMAGE_B}\n      env: {{ROLE: db}}\n      volumes: [\"{volume}:/data\"]\n"
    ))
    .await;
    let side = &world.service.spec.side_targets[0];
    let create_side = Step::CreateSideTarget {
        name: "db".into(),
        revision: cutover::revision::of_side_target(side),
    };
    world.execute(&create_side).await.unwrap();
    world.execute(&create_side).await.unwrap();
    world
        .execute(&create_replica(&world, Color::Blue, 1))
        .await
        .unwrap();

    let side_name = side_target_name(world.name(), "db");
    let db = world.container(&side_name).await;
    assert_eq!(db.role, Role::SideTarget { name: "db".into() });
    assert!(db.running);
    assert_eq!(db.color(), None);

    let replica = replica_name(world.name(), Color::Blue, 1);
    let page = docker_cli(&[
        "exec",
        &replica,
        "wget",
        "-qO-",
        &format!("http://{side_name}/"),
    ]);
    assert_eq!(page, "version B");

    let label = docker_cli(&[
        "volume",
        "inspect",
        "-f",
        &format!("{{{{index .Labels \"{LABEL_INSTANCE}\"}}}}"),
        &volume,
    ]);
    assert_eq!(label, world.scope.instance);

    // What the side target writes survives its replacement.
    docker_cli(&["exec", &side_name, "sh", "-c", "echo kept > /data/file"]);
    world
        .execute(&Step::Remove {
            target: target(&db),
        })
        .await
        .unwrap();
    world.execute(&create_side).await.unwrap();
    let kept = docker_cli(&["exec", &side_name, "cat", "/data/file"]);
    assert_eq!(kept, "kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn daemons_creating_the_network_at_once_leave_exactly_one() {
    // Engines before API 1.44 accept duplicate network names; two daemons starting together
    // must not leave the name ambiguous.
    let network = format!("cutover-test-race-{}", random_suffix());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let network = network.clone();
        tasks.spawn(async move {
            let docker = Docker::connect()
                .await
                .expect("the Docker engine is reachable");
            docker.ensure_network(&network, "test-race").await
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().expect("ensure_network succeeds");
    }
    let ids = docker_cli(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("name=^{network}$"),
    ]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    for id in &ids {
        docker_cli_quietly(&["network", "rm", id]);
    }
    assert_eq!(ids.len(), 1, "networks named {network}: {ids:?}");
}

#[tokio::test]
async fn images_are_present_or_not() {
    let world = World::new("").await;
    assert!(world.docker.image_present(IMAGE_A).await.unwrap());
    assert!(
        !world
            .docker
            .image_present("cutover-missing-image:never")
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn pulling_a_missing_image_fails_with_a_clear_error() {
    let world = World::new("").await;
    let image = "cutover-missing-image:never";
    for result in [
        world.docker.pull(image).await,
        world
            .execute(&Step::PullImage {
                image: image.into(),
            })
            .await,
    ] {
        let error = result.unwrap_err();
        let DockerError::Pull { kind, message, .. } = &error else {
            panic!("not a pull error: {error}");
        };
        // No registry is reachable here; with one, the image would not be found.
        assert!(
            matches!(kind, PullFailure::NotFound | PullFailure::Unreachable),
            "{kind}: {message}"
        );
        assert!(!message.is_empty());
        assert!(error.to_string().contains(image), "{error}");
    }

    // Creating a replica from an image the engine lacks says so.
    let mut service = world.service.clone();
    service.spec.image = image.into();
    let ctx = ExecContext {
        service_name: service.name(),
        service: Some(&service),
        ..world.ctx()
    };
    let step = Step::CreateReplica {
        color: Color::Blue,
        slot: 1,
        revision: cutover::revision::of_service(&service),
    };
    let error = world.docker.execute(&ctx, &step).await.unwrap_err();
    assert!(matches!(error, DockerError::ImageMissing { .. }), "{error}");
}

#[tokio::test]
async fn the_health_monitor_follows_a_replica() {
    let world = World::new(
        "  health: {path: /cgi-bin/health, interval: 200ms, timeout: 200ms, healthyThreshold: 1, unhealthyThreshold: 2}\n",
    )
    .await;
    world
        .execute(&create_replica(&world, Color::Blue, 1))
        .await
        .unwrap();
    let name = replica_name(world.name(), Color::Blue, 1);
    let observation = world.docker.observe(&world.scope, None).await.unwrap();

    let (monitor, mut changes) = HealthMonitor::new();
    let spec = &world.service.spec;
    monitor.sync(
        world.name(),
        &spec.health,
        spec.port,
        &observation.containers,
        &observation.docker_health,
    );
    let id = observation.containers[0].id.clone();

    let change = tokio::time::timeout(PATIENCE, changes.recv())
        .await
        .expect("the replica becomes ready")
        .unwrap();
    assert_eq!(
        (
            change.service.as_str(),
            change.container_id.as_str(),
            change.ready
        ),
        (world.name(), id.as_str(), true)
    );
    assert!(monitor.is_ready(&id));
    let mut containers = observation.containers.clone();
    monitor.mark_ready(&mut containers);
    assert!(containers[0].ready);

    docker_cli(&["exec", &name, "touch", "/tmp/unhealthy"]);
    let change = tokio::time::timeout(PATIENCE, changes.recv())
        .await
        .expect("the replica stops being ready")
        .unwrap();
    assert!(!change.ready);
    assert!(!monitor.is_ready(&id));
    let failure = monitor.last_failure(&id).expect("a failed probe");
    assert_eq!(failure.to_string(), "answered HTTP 500");

    docker_cli(&["exec", &name, "rm", "/tmp/unhealthy"]);
    let change = tokio::time::timeout(PATIENCE, changes.recv())
        .await
        .expect("the replica is ready again")
        .unwrap();
    assert!(change.ready);

    // A stopped replica is no longer probed, and no longer ready.
    monitor.sync(world.name(), &spec.health, spec.port, &[], &BTreeMap::new());
    assert!(!monitor.is_ready(&id));
}

#[tokio::test]
async fn events_report_our_containers_and_nothing_else() {
    let mut world = World::new("").await;
    // Events from a second earlier are replayed, so nothing is missed while the
    // subscription starts.
    let since = SystemTime::now() - Duration::from_secs(1);
    let mut events = Box::pin(world.docker.events(&world.scope.instance, Some(since)));

    let foreign_id = world.run_foreign(&format!("{}-blue-9", world.name()), &[]);
    docker_cli(&["stop", "-t", "0", &foreign_id]);

    world
        .execute(&create_replica(&world, Color::Blue, 1))
        .await
        .unwrap();
    let replica = world
        .container(&replica_name(world.name(), Color::Blue, 1))
        .await;
    world
        .execute(&Step::Stop {
            target: target(&replica),
        })
        .await
        .unwrap();

    let mut seen = Vec::new();
    let died = tokio::time::timeout(PATIENCE, async {
        while let Some(event) = events.next().await {
            let event = event.expect("the events stream works");
            let done = event.kind == ContainerEventKind::Die;
            seen.push(event);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(died, Ok(true), "a die event arrives; saw {seen:#?}");
    assert!(
        seen.iter()
            .all(|e| e.container_id == replica.id && e.service == world.name()),
        "{seen:#?}"
    );
    assert_eq!(
        seen.first().map(|e| e.kind),
        Some(ContainerEventKind::Start)
    );
    assert_eq!(seen.last().unwrap().container_name, replica.name);
}

#[tokio::test]
async fn a_docker_healthcheck_is_observed_and_reported() {
    let mut world = World::new("").await;
    let since = SystemTime::now() - Duration::from_secs(1);
    let mut events = Box::pin(world.docker.events(&world.scope.instance, Some(since)));
    // The adapter never sets a HEALTHCHECK (images do); the docker CLI plays such an image.
    let labels = our_labels(&world, &[(LABEL_COLOR, "blue"), (LABEL_SLOT, "1")]);
    let mut args = vec![
        "--health-cmd",
        "wget -qO- http://127.0.0.1/cgi-bin/health",
        "--health-interval",
        "1s",
    ];
    for label in &labels {
        args.extend(["--label", label.as_str()]);
    }
    let name = replica_name(world.name(), Color::Blue, 1);
    let id = world.run_foreign(&name, &args);

    let healthy = tokio::time::timeout(PATIENCE, async {
        loop {
            let observation = world.docker.observe(&world.scope, None).await.unwrap();
            if observation.docker_health.get(&id) == Some(&DockerHealth::Healthy) {
                return observation;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("Docker reports the container healthy");
    assert_eq!(healthy.containers.len(), 1);

    let event = tokio::time::timeout(PATIENCE, async {
        while let Some(event) = events.next().await {
            let event = event.expect("the events stream works");
            if matches!(event.kind, ContainerEventKind::HealthStatus(_)) {
                return Some(event);
            }
        }
        None
    })
    .await
    .expect("a health_status event arrives")
    .expect("the stream stays open");
    assert_eq!(
        event.kind,
        ContainerEventKind::HealthStatus(DockerHealth::Healthy)
    );
    assert_eq!(
        (event.container_id.as_str(), event.service.as_str()),
        (id.as_str(), world.name())
    );
}

#[tokio::test]
async fn security_fields_reach_the_engine_only_when_allowed() {
    let host_dir = std::env::temp_dir().join(format!("cutover-test-{}", random_suffix()));
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("greeting"), "from the host\n").unwrap();
    let extra = format!(
        "  privileged: true\n  capAdd: [NET_ADMIN]\n  volumes: [\"{}:/data:ro\"]\n",
        host_dir.display()
    );
    let mut world = World::new(&extra).await;
    let name = replica_name(world.name(), Color::Blue, 1);

    // A new connection allows nothing: the adapter refuses, naming every field and flag.
    let error = world
        .execute(&create_replica(&world, Color::Blue, 1))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, DockerError::ForbiddenBySecurityPolicy { .. }),
        "{message}"
    );
    for needle in [
        "spec.privileged",
        "--allow-privileged",
        "spec.capAdd[0]",
        "--allow-cap-add",
        "spec.volumes[0]",
        "--allow-host-mounts",
    ] {
        assert!(message.contains(needle), "{needle} in {message}");
    }
    assert!(world.containers().await.is_empty(), "nothing was created");

    world.docker = world.docker.clone().with_allowances(Allowances::ALL);
    let result = world.execute(&create_replica(&world, Color::Blue, 1)).await;
    let format =
        "{{.HostConfig.Privileged}} {{json .HostConfig.CapAdd}} {{json .HostConfig.Binds}}";
    let settings = docker_cli(&["inspect", "-f", format, &name]);
    assert_eq!(
        settings,
        format!("true [\"NET_ADMIN\"] [\"{}:/data:ro\"]", host_dir.display())
    );
    match result {
        Ok(()) => {
            let greeting = docker_cli(&["exec", &name, "cat", "/data/greeting"]);
            assert_eq!(greeting, "from the host");
        }
        // An engine that itself runs without every capability (a container, a sandbox)
        // creates the privileged container but cannot start it.
        Err(DockerError::StartContainer { source, .. })
            if source.to_string().contains("operation not permitted") =>
        {
            eprintln!("this engine cannot start privileged containers: {source}");
        }
        Err(error) => panic!("{error}"),
    }

    // Without privileged, the capability and the bind mount work on any engine.
    world.service.spec.privileged = false;
    let step = create_replica(&world, Color::Blue, 2);
    world.execute(&step).await.unwrap();
    let name = replica_name(world.name(), Color::Blue, 2);
    let settings = docker_cli(&["inspect", "-f", format, &name]);
    assert!(settings.starts_with("false [\"NET_ADMIN\"] "), "{settings}");
    let greeting = docker_cli(&["exec", &name, "cat", "/data/greeting"]);
    assert_eq!(greeting, "from the host");
    let replica = world.container(&name).await;
    assert!(replica.address.is_some(), "still on the cutover network");
    drop(world);
    std::fs::remove_dir_all(&host_dir).unwrap();
}

#[tokio::test]
async fn a_replica_on_the_host_network_is_reached_on_loopback() {
    // A free loopback port: the replica binds it on the host's own network stack.
    let port = support::unused_port();
    let command =
        format!(r#"[sh, -c, "trap 'exit 0' TERM; httpd -f -p 127.0.0.1:{port} -h /www & wait"]"#);
    let extra = format!("  port: {port}\n  networkMode: host\n  strategy: {{recreate: {{}}}}\n");
    let mut world = World::with_command(&command, &extra).await;
    world.docker = world.docker.clone().with_allowances(Allowances {
        host_network: true,
        ..Allowances::NONE
    });
    world
        .execute(&create_replica(&world, Color::Blue, 1))
        .await
        .unwrap();
    let name = replica_name(world.name(), Color::Blue, 1);
    assert_eq!(
        docker_cli(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", &name]),
        "host"
    );
    let replica = world.container(&name).await;
    assert_eq!(replica.address.as_deref(), Some("127.0.0.1"));

    let url = format!("http://127.0.0.1:{port}/");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let output = Command::new("curl")
            .args(["-fsS", "--max-time", "1", &url])
            .output();
        if let Ok(output) = output {
            if output.status.success() {
                assert_eq!(String::from_utf8_lossy(&output.stdout), "version A\n");
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
