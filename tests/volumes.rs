//! Named volumes belong to the service that declared them, against the real Docker engine.
//!
//! Each test has its own installation label, network, service names and volume names; the
//! [`Lab`] removes every container, volume and network it made when it is dropped, also when
//! an assertion failed.

use std::collections::HashMap;
use std::process::Command;

use cutover::docker::{Docker, DockerError, ExecContext, Scope};
use cutover::observed::{LABEL_INSTANCE, LABEL_SERVICE, replica_name, side_target_name};
use cutover::plan::Step;
use cutover::security::Allowances;
use cutover::spec::{Service, parse_service};
use cutover::status::Color;

const IMAGE: &str = "cutover-demo:a";
/// Exits on SIGTERM, so that removing a container does not wait out a grace period.
const COMMAND: &str = r#"[sh, -c, "trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"]"#;

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

fn docker_cli_quietly(args: &[&str]) {
    let _ = Command::new("docker").args(args).output();
}

/// One test's installation: its scope, its services (`a`, `b`, ... with the suffix) and the
/// names of everything to remove.
struct Lab {
    docker: Docker,
    scope: Scope,
    suffix: String,
    services: HashMap<String, Service>,
    volumes: Vec<String>,
    foreign: Vec<String>,
}

impl Lab {
    async fn new() -> Lab {
        let suffix = format!("{:08x}", rand::random::<u32>());
        let docker = Docker::connect()
            .await
            .expect("the Docker engine is reachable");
        assert!(
            docker.image_present(IMAGE).await.unwrap(),
            "image {IMAGE} is missing: run scripts/test-images"
        );
        let scope = Scope {
            instance: format!("voltest-{suffix}"),
            network: format!("cutover-voltest-{suffix}"),
        };
        docker
            .ensure_network(&scope.network, &scope.instance)
            .await
            .expect("the network is created");
        Lab {
            docker,
            scope,
            suffix,
            services: HashMap::new(),
            volumes: Vec::new(),
            foreign: Vec::new(),
        }
    }

    /// A volume name of this test, removed at the end.
    fn volume(&mut self, short: &str) -> String {
        let name = format!("voltest-{short}-{}", self.suffix);
        self.volumes.push(name.clone());
        name
    }

    /// Service `short` (named `short` + suffix) with the given extra spec lines.
    fn service(&mut self, short: &str, extra: &str) -> String {
        let name = format!("{short}{}", self.suffix);
        let text = format!(
            "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  \
             image: {IMAGE}\n  command: {COMMAND}\n{extra}"
        );
        let service = parse_service("test.yaml", &text).expect("the test manifest is valid");
        self.services.insert(name.clone(), service);
        name
    }

    fn ctx<'a>(&'a self, service: &'a str) -> ExecContext<'a> {
        ExecContext {
            scope: &self.scope,
            service_name: service,
            service: Some(&self.services[service]),
            spec_index: 1,
        }
    }

    async fn create_replica(
        &self,
        docker: &Docker,
        service: &str,
        color: Color,
    ) -> Result<(), DockerError> {
        let step = Step::CreateReplica {
            color,
            slot: 1,
            revision: cutover::revision::of_service(&self.services[service]),
        };
        docker.execute(&self.ctx(service), &step).await
    }

    async fn create_side_target(&self, service: &str) -> Result<(), DockerError> {
        let side = &self.services[service].spec.side_targets[0];
        let step = Step::CreateSideTarget {
            name: side.name.clone(),
            revision: cutover::revision::of_side_target(side),
        };
        self.docker.execute(&self.ctx(service), &step).await
    }

    fn containers_of(&self, service: &str) -> String {
        docker_cli(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label={LABEL_SERVICE}={service}"),
        ])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let filter = format!("label={LABEL_INSTANCE}={}", self.scope.instance);
        let output = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output();
        let ours = output
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut containers: Vec<&str> = ours.split_whitespace().collect();
        containers.extend(self.foreign.iter().map(String::as_str));
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(containers);
            docker_cli_quietly(&args);
        }
        for volume in &self.volumes {
            docker_cli_quietly(&["volume", "rm", "-f", volume]);
        }
        docker_cli_quietly(&["network", "rm", &self.scope.network]);
    }
}

/// The refusal, or a panic saying what happened instead.
fn refusal(result: Result<(), DockerError>) -> (String, String, String) {
    match result {
        Err(DockerError::VolumeNotOwned {
            container,
            volume,
            owner,
        }) => (container, volume, owner),
        other => panic!("expected VolumeNotOwned, got {other:?}"),
    }
}

#[tokio::test]
async fn a_service_cannot_mount_another_services_volume_and_remounts_its_own() {
    let mut lab = Lab::new().await;
    let data = lab.volume("a-db");
    let a = lab.service("a", &format!("  volumes: [\"{data}:/data\"]\n"));
    let b = lab.service("b", &format!("  volumes: [\"{data}:/steal\"]\n"));

    lab.create_replica(&lab.docker, &a, Color::Blue)
        .await
        .unwrap();
    let labels = docker_cli(&["volume", "inspect", "-f", "{{json .Labels}}", &data]);
    let labels: HashMap<String, String> = serde_json::from_str(&labels).unwrap();
    assert_eq!(labels[LABEL_INSTANCE], lab.scope.instance);
    assert_eq!(labels[LABEL_SERVICE], a);

    // a's next color mounts the same volume.
    lab.create_replica(&lab.docker, &a, Color::Green)
        .await
        .unwrap();

    let error = lab.create_replica(&lab.docker, &b, Color::Blue).await;
    let message = match &error {
        Err(error) => error.to_string(),
        Ok(()) => String::new(),
    };
    let (container, volume, owner) = refusal(error);
    assert_eq!(container, replica_name(&b, Color::Blue, 1));
    assert_eq!(volume, data);
    assert_eq!(owner, format!("service {a:?} of this installation"));
    for part in [data.as_str(), a.as_str(), "--allow-shared-volumes"] {
        assert!(message.contains(part), "{message}");
    }
    assert_eq!(lab.containers_of(&b), "", "nothing of b was created");
}

#[tokio::test]
async fn a_side_target_cannot_mount_another_services_volume() {
    let mut lab = Lab::new().await;
    let data = lab.volume("a-db");
    let a = lab.service("a", &format!("  volumes: [\"{data}:/data\"]\n"));
    let b = lab.service(
        "b",
        &format!(
            "  sideTargets:\n    - {{name: db, image: {IMAGE}, command: {COMMAND}, volumes: \
             [\"{data}:/steal\"]}}\n"
        ),
    );
    lab.create_replica(&lab.docker, &a, Color::Blue)
        .await
        .unwrap();
    let (container, volume, _) = refusal(lab.create_side_target(&b).await);
    assert_eq!(container, side_target_name(&b, "db"));
    assert_eq!(volume, data);
}

#[tokio::test]
async fn volumes_of_another_installation_or_of_nobody_are_refused_unless_allowed() {
    let mut lab = Lab::new().await;
    let elsewhere = lab.volume("elsewhere");
    docker_cli(&[
        "volume",
        "create",
        "--label",
        &format!("{LABEL_INSTANCE}=other-installation"),
        "--label",
        &format!("{LABEL_SERVICE}=a"),
        &elsewhere,
    ]);
    let orphan = lab.volume("orphan");
    docker_cli(&["volume", "create", &orphan]);
    let a = lab.service(
        "a",
        &format!("  volumes: [\"{elsewhere}:/x\", \"{orphan}:/y\"]\n"),
    );

    let (_, volume, owner) = refusal(lab.create_replica(&lab.docker, &a, Color::Blue).await);
    assert_eq!(volume, elsewhere);
    assert_eq!(
        owner,
        "service \"a\" of another cutover installation (\"other-installation\")"
    );

    let a_orphan = lab.service("c", &format!("  volumes: [\"{orphan}:/y\"]\n"));
    let (_, volume, owner) = refusal(
        lab.create_replica(&lab.docker, &a_orphan, Color::Blue)
            .await,
    );
    assert_eq!(volume, orphan);
    assert_eq!(
        owner,
        "no cutover service (it has no cutover labels and no container uses it)"
    );

    // --allow-shared-volumes lets both through, and the replica really mounts them.
    let sharing = lab.docker.clone().with_allowances(Allowances {
        shared_volumes: true,
        ..Allowances::NONE
    });
    lab.create_replica(&sharing, &a, Color::Blue).await.unwrap();
    let mounts = docker_cli(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Name}} {{end}}",
        &replica_name(&a, Color::Blue, 1),
    ]);
    assert!(
        mounts.contains(&elsewhere) && mounts.contains(&orphan),
        "{mounts}"
    );
}

/// Volumes that an older cutover let the engine create without labels stay usable by the
/// service whose containers use them, and by nobody else.
#[tokio::test]
async fn an_unlabelled_volume_used_only_by_the_services_own_containers_is_accepted() {
    let mut lab = Lab::new().await;
    let legacy = lab.volume("legacy");
    let a = lab.service("a", &format!("  volumes: [\"{legacy}:/data\"]\n"));
    let b = lab.service("b", &format!("  volumes: [\"{legacy}:/data\"]\n"));
    // What an older daemon left: a stopped replica of a, mounting an unlabelled volume the
    // engine created on first use.
    let old = format!("old-{a}");
    lab.foreign.push(old.clone());
    docker_cli(&[
        "create",
        "--name",
        &old,
        "--label",
        &format!("{LABEL_INSTANCE}={}", lab.scope.instance),
        "--label",
        &format!("{LABEL_SERVICE}={a}"),
        "-v",
        &format!("{legacy}:/data"),
        IMAGE,
    ]);
    assert_eq!(
        docker_cli(&["volume", "inspect", "-f", "{{len .Labels}}", &legacy]),
        "0"
    );

    let (_, volume, owner) = refusal(lab.create_replica(&lab.docker, &b, Color::Blue).await);
    assert_eq!(volume, legacy);
    assert_eq!(
        owner,
        "no cutover service (it has no cutover labels, and 1 container(s) of others use it)"
    );

    lab.create_replica(&lab.docker, &a, Color::Blue)
        .await
        .unwrap();
    // Now two of a's containers use it: still a's, still not b's.
    lab.create_replica(&lab.docker, &a, Color::Green)
        .await
        .unwrap();
    refusal(lab.create_replica(&lab.docker, &b, Color::Blue).await);
}
