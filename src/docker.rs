//! The Docker adapter: reads cutover's containers from the engine and carries out plan steps.
//!
//! This is the only module that talks to Docker, through bollard. No bollard type leaves it:
//! callers get [`observed::Container`] values, plain [`ServiceEvent`]s and [`DockerError`]s
//! that name the container or image and the operation, with the engine's message verbatim.
//!
//! Guarantees:
//! - A container without this installation's [`LABEL_INSTANCE`] is never listed, started,
//!   stopped, renamed or removed: every step checks the labels of its target first.
//! - Every step is idempotent. Creating a container that exists with the same labels and
//!   revision starts it; stopping or removing a missing container succeeds; starting a
//!   running one and stopping a stopped one succeed.
//! - No host port is ever published. Replicas are reached on the cutover network.
//!
//! Caveats: the engine's API version is negotiated at [`Docker::connect`]; this module is
//! written against API 1.41 (Docker 20.10) and later.

mod registry;
mod volumes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummary, ContainerSummaryStateEnum,
    EndpointSettings, EventMessage, HostConfig, Mount, MountType, NetworkCreateRequest,
    NetworkingConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, InspectContainerOptions,
    InspectNetworkOptions, ListContainersOptions, ListNetworksOptions, RemoveContainerOptions,
    RenameContainerOptions, StartContainerOptions, StopContainerOptions,
};
use futures::{Stream, StreamExt as _};

use crate::observed::{
    Container, LABEL_COLOR, LABEL_HEALTH, LABEL_INSTANCE, LABEL_PORT, LABEL_REVISION,
    LABEL_SERVICE, LABEL_SIDE_TARGET, LABEL_SLOT, LABEL_SPEC_INDEX, Role, replica_name,
    side_target_name,
};
use crate::plan::{Step, Target};
use crate::security::{self, Allowances};
use crate::spec::{NetworkMode, Service, SideTarget};
use crate::status::Color;

pub use registry::{DOCKER_HUB_DOMAIN, ImageReference, parse_reference};

/// The network cutover attaches its containers to unless told otherwise.
pub const DEFAULT_NETWORK: &str = "cutover";

/// How long bollard waits for the engine to answer a request (not for a stream to end).
const REQUEST_TIMEOUT_SECONDS: u64 = 120;

/// The engine's error, kept opaque so that no bollard type leaves this module. Its
/// `Display` is the engine's own message, with the HTTP status when there is one.
#[derive(Debug)]
pub struct EngineError(bollard::errors::Error);

impl EngineError {
    /// The HTTP status the engine answered with, if it answered.
    pub fn status_code(&self) -> Option<u16> {
        match &self.0 {
            bollard::errors::Error::DockerResponseServerError { status_code, .. } => {
                Some(*status_code)
            }
            _ => None,
        }
    }

    /// The engine's message without decoration, or bollard's description of what failed.
    pub fn message(&self) -> String {
        match &self.0 {
            bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
            bollard::errors::Error::DockerStreamError { error } => error.clone(),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status_code() {
            Some(code) => write!(f, "{} (HTTP {code})", self.message()),
            None => f.write_str(&self.message()),
        }
    }
}

impl std::error::Error for EngineError {}

impl From<bollard::errors::Error> for EngineError {
    fn from(error: bollard::errors::Error) -> Self {
        EngineError(error)
    }
}

/// Why a pull failed, as far as the registry's message tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullFailure {
    /// The repository or tag does not exist (the Hub also says this for private
    /// repositories without credentials).
    NotFound,
    /// The registry refused the credentials, or wants some.
    Unauthorized,
    /// The registry could not be reached: DNS, connection refused, timeout, TLS.
    Unreachable,
    /// Anything else.
    Other,
}

impl fmt::Display for PullFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PullFailure::NotFound => "not found",
            PullFailure::Unauthorized => "unauthorized",
            PullFailure::Unreachable => "registry unreachable",
            PullFailure::Other => "failed",
        })
    }
}

/// Everything that can go wrong talking to Docker, one variant per operation.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("DOCKER_HOST={address} is not supported: {reason}")]
    UnsupportedHost { address: String, reason: String },
    #[error("cannot connect to the Docker engine at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: EngineError,
    },
    #[error("cannot create network {network}: {source}")]
    CreateNetwork {
        network: String,
        #[source]
        source: EngineError,
    },
    #[error("cannot list the containers of instance {instance}: {source}")]
    ListContainers {
        instance: String,
        #[source]
        source: EngineError,
    },
    #[error("cannot inspect image {image}: {source}")]
    InspectImage {
        image: String,
        #[source]
        source: EngineError,
    },
    #[error("cannot find credentials to pull {image} from {registry} ({source_name}): {message}")]
    Credentials {
        image: String,
        registry: String,
        /// The config file or credential helper that failed.
        source_name: String,
        message: String,
    },
    #[error("cannot pull {image} from {registry}: {kind}: {message}")]
    Pull {
        image: String,
        registry: String,
        kind: PullFailure,
        /// The registry's (or engine's) message, verbatim.
        message: String,
    },
    #[error(
        "cannot create container {container}: image {image} is not on the engine; pull it first"
    )]
    ImageMissing { container: String, image: String },
    #[error("cannot create container {container} from {image}: {source}")]
    CreateContainer {
        container: String,
        image: String,
        #[source]
        source: EngineError,
    },
    #[error("cannot create container {container}: the name is taken by {reason}")]
    NameTaken { container: String, reason: String },
    #[error("cannot inspect container {container}: {source}")]
    InspectContainer {
        container: String,
        #[source]
        source: EngineError,
    },
    #[error("refusing to touch container {container}: {reason}")]
    NotOurs { container: String, reason: String },
    #[error("cannot start container {container}: {source}")]
    StartContainer {
        container: String,
        #[source]
        source: EngineError,
    },
    #[error("cannot stop container {container}: {source}")]
    StopContainer {
        container: String,
        #[source]
        source: EngineError,
    },
    #[error("cannot remove container {container}: {source}")]
    RemoveContainer {
        container: String,
        #[source]
        source: EngineError,
    },
    #[error("cannot rename container {container} to {to}: {source}")]
    RenameContainer {
        container: String,
        to: String,
        #[source]
        source: EngineError,
    },
    #[error("cannot create or inspect volume {volume} for container {container}: {source}")]
    CreateVolume {
        container: String,
        volume: String,
        #[source]
        source: EngineError,
    },
    #[error("side target {container} has volume {volume:?}, expected NAME:/path or NAME:/path:ro")]
    InvalidVolume { container: String, volume: String },
    #[error("refusing to create container {container}: {message}")]
    ForbiddenBySecurityPolicy { container: String, message: String },
    #[error(
        "refusing to mount volume {volume} into container {container}: it belongs to {owner}, \
         not to this service; use a volume name of this service's own, or start the daemon \
         with --allow-shared-volumes to let services share volumes"
    )]
    VolumeNotOwned {
        container: String,
        volume: String,
        owner: String,
    },
    #[error("service {service} has no side target {name}; the plan and the spec disagree")]
    UnknownSideTarget { service: String, name: String },
    #[error("the step `{step}` is not a Docker step; the router carries it out")]
    NotADockerStep { step: String },
    #[error("the Docker events stream of instance {instance} failed: {source}")]
    Events {
        instance: String,
        #[source]
        source: EngineError,
    },
}

impl DockerError {
    /// The HTTP status the engine answered with, if this error came from an answer.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            DockerError::Connect { source, .. }
            | DockerError::CreateNetwork { source, .. }
            | DockerError::ListContainers { source, .. }
            | DockerError::InspectImage { source, .. }
            | DockerError::CreateContainer { source, .. }
            | DockerError::InspectContainer { source, .. }
            | DockerError::StartContainer { source, .. }
            | DockerError::StopContainer { source, .. }
            | DockerError::RemoveContainer { source, .. }
            | DockerError::RenameContainer { source, .. }
            | DockerError::CreateVolume { source, .. }
            | DockerError::Events { source, .. } => source.status_code(),
            _ => None,
        }
    }
}

/// Where the Docker engine is and how to talk to it, decided from the environment as the
/// docker CLI does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix {
        path: String,
    },
    Tcp {
        address: String,
    },
    Tls {
        address: String,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
}

impl Endpoint {
    /// The address as a user would write it in `DOCKER_HOST`.
    pub fn address(&self) -> String {
        match self {
            Endpoint::Unix { path } => format!("unix://{path}"),
            Endpoint::Tcp { address } | Endpoint::Tls { address, .. } => format!("tcp://{address}"),
        }
    }
}

/// The docker CLI's environment, as plain data so that [`endpoint_from`] can be tested.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerEnv {
    /// `DOCKER_HOST`.
    pub host: Option<String>,
    /// `DOCKER_TLS_VERIFY`: any non-empty value turns TLS with verification on.
    pub tls_verify: Option<String>,
    /// `DOCKER_CERT_PATH`: where `ca.pem`, `cert.pem` and `key.pem` are.
    pub cert_path: Option<String>,
    /// `DOCKER_CONFIG`, the default certificate directory before `~/.docker`.
    pub config_dir: Option<String>,
    /// `HOME`.
    pub home: Option<String>,
}

impl DockerEnv {
    /// Reads the variables of the current process.
    pub fn from_process() -> DockerEnv {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        DockerEnv {
            host: var("DOCKER_HOST"),
            tls_verify: var("DOCKER_TLS_VERIFY"),
            cert_path: var("DOCKER_CERT_PATH"),
            config_dir: var("DOCKER_CONFIG"),
            home: var("HOME"),
        }
    }
}

/// The engine's default local socket.
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Decides how to reach the engine: `DOCKER_HOST` (`unix://` or `tcp://`, default the local
/// socket) and, for TCP, TLS when `DOCKER_TLS_VERIFY` is set, with the certificates in
/// `DOCKER_CERT_PATH` (default `$DOCKER_CONFIG`, else `~/.docker`).
pub fn endpoint_from(env: &DockerEnv) -> Result<Endpoint, DockerError> {
    let host = env
        .host
        .clone()
        .unwrap_or_else(|| format!("unix://{DEFAULT_SOCKET}"));
    let unsupported = |reason: &str| DockerError::UnsupportedHost {
        address: host.clone(),
        reason: reason.to_owned(),
    };
    if let Some(path) = host.strip_prefix("unix://") {
        if path.is_empty() {
            return Err(unsupported("the socket path is empty"));
        }
        return Ok(Endpoint::Unix {
            path: path.to_owned(),
        });
    }
    let Some(address) = host
        .strip_prefix("tcp://")
        .or_else(|| host.strip_prefix("http://"))
        .or_else(|| host.strip_prefix("https://"))
    else {
        return Err(unsupported(
            "use unix:///path/to/docker.sock or tcp://host:port",
        ));
    };
    let address = address.trim_end_matches('/').to_owned();
    if address.is_empty() {
        return Err(unsupported("the host is empty"));
    }
    let tls = env.tls_verify.is_some() || host.starts_with("https://");
    if !tls {
        return Ok(Endpoint::Tcp { address });
    }
    let dir = env
        .cert_path
        .clone()
        .or_else(|| env.config_dir.clone())
        .or_else(|| env.home.as_ref().map(|home| format!("{home}/.docker")))
        .ok_or_else(|| unsupported("TLS needs DOCKER_CERT_PATH (or HOME for ~/.docker)"))?;
    let dir = PathBuf::from(dir);
    Ok(Endpoint::Tls {
        address,
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    })
}

/// Which containers are ours and where they live: one cutover installation on one engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The value of [`LABEL_INSTANCE`] on every container this installation owns.
    pub instance: String,
    /// The user-defined bridge network the containers are attached to.
    pub network: String,
}

/// What a step needs besides the step itself.
#[derive(Debug, Clone, Copy)]
pub struct ExecContext<'a> {
    pub scope: &'a Scope,
    /// The name of the service the step belongs to.
    pub service_name: &'a str,
    /// Its spec, as validated; `None` when the spec was deleted (only steps that act on
    /// existing containers can run then).
    pub service: Option<&'a Service>,
    /// The Consul ModifyIndex of that spec, written as [`LABEL_SPEC_INDEX`].
    pub spec_index: u64,
}

impl ExecContext<'_> {
    /// The spec a creating step needs.
    fn spec(&self, step: &Step) -> Result<&Service, DockerError> {
        self.service.ok_or_else(|| DockerError::NotADockerStep {
            step: format!("{step} (the spec of {} is gone)", self.service_name),
        })
    }
}

/// The state of an image's own `HEALTHCHECK`, for containers whose image has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DockerHealth {
    Starting,
    Healthy,
    Unhealthy,
}

impl DockerHealth {
    fn parse(text: &str) -> Option<DockerHealth> {
        match text.trim() {
            "starting" => Some(DockerHealth::Starting),
            "healthy" => Some(DockerHealth::Healthy),
            "unhealthy" => Some(DockerHealth::Unhealthy),
            _ => None,
        }
    }
}

/// One look at a service's (or all services') containers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// Our containers, in every state, with `ready` false: readiness is the health
    /// monitor's business.
    pub containers: Vec<Container>,
    /// The `HEALTHCHECK` state by container id, for running containers whose image has one.
    pub docker_health: BTreeMap<String, DockerHealth>,
}

/// What happened to one of our containers, from the Docker events stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEvent {
    pub service: String,
    pub container_id: String,
    pub container_name: String,
    pub kind: ContainerEventKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerEventKind {
    Start,
    Stop,
    Die,
    Destroy,
    Oom,
    HealthStatus(DockerHealth),
}

/// The engine actions [`Docker::events`] subscribes to.
const WATCHED_ACTIONS: [&str; 6] = ["start", "stop", "die", "destroy", "oom", "health_status"];

/// Whether the Docker adapter carries out this step. [`Step::Switch`] belongs to the
/// router; the controller sends every other step to [`Docker::execute`].
pub fn is_docker_step(step: &Step) -> bool {
    !matches!(step, Step::Switch { .. })
}

/// A connection to the Docker engine.
#[derive(Debug, Clone)]
pub struct Docker {
    client: bollard::Docker,
    address: String,
    /// Containers already reported as having malformed labels, so each is logged once.
    warned: Arc<Mutex<HashSet<String>>>,
    /// What `cutover run --allow-*` allowed; checked again before each replica is created.
    allowances: Allowances,
    /// Told the operation of every request sent to the engine (for `/metrics`).
    on_request: RequestHook,
}

/// A function told the operation of each request the adapter sends to the engine, such as
/// `list_containers` or `stop_container`.
#[derive(Clone, Default)]
pub struct RequestHook(Option<Arc<dyn Fn(&'static str) + Send + Sync>>);

impl std::fmt::Debug for RequestHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "RequestHook(set)"
        } else {
            "RequestHook(none)"
        })
    }
}

impl Docker {
    /// Connects as the docker CLI would (see [`endpoint_from`]) and negotiates the API
    /// version, so that an older engine is spoken to in its own version.
    ///
    /// # Errors
    /// An unsupported `DOCKER_HOST`, missing certificates, or an engine that does not
    /// answer; the message names the address.
    pub async fn connect() -> Result<Docker, DockerError> {
        Docker::connect_to(&endpoint_from(&DockerEnv::from_process())?).await
    }

    /// Connects to the given endpoint and negotiates the API version.
    pub async fn connect_to(endpoint: &Endpoint) -> Result<Docker, DockerError> {
        let address = endpoint.address();
        let fail = |error: bollard::errors::Error| DockerError::Connect {
            address: address.clone(),
            source: error.into(),
        };
        let version = bollard::API_DEFAULT_VERSION;
        let client = match endpoint {
            Endpoint::Unix { path } => {
                bollard::Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECONDS, version)
            }
            Endpoint::Tcp { address } => {
                bollard::Docker::connect_with_http(address, REQUEST_TIMEOUT_SECONDS, version)
            }
            Endpoint::Tls {
                address,
                ca,
                cert,
                key,
            } => bollard::Docker::connect_with_ssl(
                address,
                key,
                cert,
                ca,
                REQUEST_TIMEOUT_SECONDS,
                version,
            ),
        }
        .map_err(fail)?;
        // bollard speaks a newer API than Docker 20.10 accepts ("client version too new");
        // negotiation lowers it to the engine's.
        let client = client.negotiate_version().await.map_err(fail)?;
        Ok(Docker {
            client,
            address,
            warned: Arc::new(Mutex::new(HashSet::new())),
            allowances: Allowances::NONE,
            on_request: RequestHook::default(),
        })
    }

    /// The same connection, calling `hook` with the operation of every request it sends.
    pub fn with_request_hook(
        mut self,
        hook: impl Fn(&'static str) + Send + Sync + 'static,
    ) -> Docker {
        self.on_request = RequestHook(Some(Arc::new(hook)));
        self
    }

    /// The engine, after telling the hook that an `operation` request goes to it.
    fn engine(&self, operation: &'static str) -> &bollard::Docker {
        if let Some(hook) = &self.on_request.0 {
            hook(operation);
        }
        &self.client
    }

    /// The same connection, allowed to create what `allowances` permit (privileged replicas,
    /// host networking, added capabilities, host bind mounts). A new connection allows none.
    pub fn with_allowances(mut self, allowances: Allowances) -> Docker {
        self.allowances = allowances;
        self
    }

    /// What this connection may create; the controller checks specs against the same value.
    pub fn allowances(&self) -> &Allowances {
        &self.allowances
    }

    /// The engine's address, for log lines.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Asks the engine whether it answers (`/_ping`), for the daemon's readiness.
    pub async fn ping(&self) -> Result<(), DockerError> {
        self.engine("ping")
            .ping()
            .await
            .map(|_| ())
            .map_err(|error| DockerError::Connect {
                address: self.address.clone(),
                source: error.into(),
            })
    }

    /// Creates the user-defined bridge network `name` if it does not exist.
    ///
    /// Engines before API 1.44 accept a second network with the same name, so this looks
    /// before it creates; a concurrent creator's 409 also counts as success. Two daemons that
    /// start together may both look, find nothing and create: see [`Docker::settle_network_race`].
    pub async fn ensure_network(&self, name: &str, instance: &str) -> Result<(), DockerError> {
        let fail = |error: bollard::errors::Error| DockerError::CreateNetwork {
            network: name.to_owned(),
            source: error.into(),
        };
        match self
            .engine("inspect_network")
            .inspect_network(name, None::<InspectNetworkOptions>)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(fail(e)),
        }
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".to_owned()),
            labels: Some(HashMap::from([(
                LABEL_INSTANCE.to_owned(),
                instance.to_owned(),
            )])),
            ..NetworkCreateRequest::default()
        };
        match self.engine("create_network").create_network(request).await {
            Ok(created) => {
                self.settle_network_race(name, &created.id).await;
                Ok(())
            }
            Err(e) if status_of(&e) == Some(409) => Ok(()),
            Err(e) => Err(fail(e)),
        }
    }

    /// After creating network `name` as `ours`: if the engine now has several networks of
    /// that name (concurrent creators on an engine before API 1.44), removes ours unless it
    /// is the oldest (by creation time, then ID). Every creator applies the same order, so
    /// exactly one network remains. A failure here is logged; the name stays ambiguous and
    /// steps that use it fail and are retried.
    async fn settle_network_race(&self, name: &str, ours: &str) {
        let options = ListNetworksOptions {
            filters: Some(HashMap::from([("name".to_owned(), vec![name.to_owned()])])),
        };
        let networks = match self
            .engine("list_networks")
            .list_networks(Some(options))
            .await
        {
            Ok(networks) => networks,
            Err(e) => {
                tracing::warn!(network = name, error = %e, "cannot check for a concurrently created network");
                return;
            }
        };
        // The name filter matches substrings: keep exact names only.
        let mut same: Vec<(Option<std::time::SystemTime>, String)> = networks
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| {
                let created = n
                    .created
                    .as_deref()
                    .and_then(|c| humantime::parse_rfc3339_weak(c).ok());
                Some((created, n.id?))
            })
            .collect();
        same.sort();
        if same.len() < 2 || same.first().is_some_and(|(_, id)| id == ours) {
            return;
        }
        tracing::info!(
            network = name,
            id = ours,
            "another daemon created the network at the same time; removing ours"
        );
        if let Err(e) = self.engine("remove_network").remove_network(ours).await {
            tracing::warn!(network = name, id = ours, error = %e, "cannot remove a duplicate network");
        }
    }

    /// Lists this installation's containers in every state, of one service or of all.
    ///
    /// A container whose labels cannot be read (a missing color, a slot that is not a
    /// number) is skipped and logged once, so that one odd container never blinds the
    /// daemon to the others.
    pub async fn observe(
        &self,
        scope: &Scope,
        service: Option<&str>,
    ) -> Result<Observation, DockerError> {
        let mut labels = vec![format!("{LABEL_INSTANCE}={}", scope.instance)];
        match service {
            Some(service) => labels.push(format!("{LABEL_SERVICE}={service}")),
            None => labels.push(LABEL_SERVICE.to_owned()),
        }
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_owned(), labels)])),
            ..ListContainersOptions::default()
        };
        let summaries = self
            .engine("list_containers")
            .list_containers(Some(options))
            .await
            .map_err(|e| DockerError::ListContainers {
                instance: scope.instance.clone(),
                source: e.into(),
            })?;
        let mut observation = Observation::default();
        for summary in summaries {
            match container_from_summary(&summary, scope, service) {
                Ok((container, health)) => {
                    if let Some(health) = health.filter(|_| container.running) {
                        observation
                            .docker_health
                            .insert(container.id.clone(), health);
                    }
                    observation.containers.push(container);
                }
                Err(reason) => self.warn_once(&summary, &reason),
            }
        }
        observation.containers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(observation)
    }

    fn warn_once(&self, summary: &ContainerSummary, reason: &str) {
        let id = summary.id.clone().unwrap_or_default();
        let first_time = self
            .warned
            .lock()
            .map(|mut warned| warned.insert(id.clone()))
            .unwrap_or(true);
        if first_time {
            tracing::warn!(
                container = %id,
                name = %first_name(summary).unwrap_or_default(),
                "ignoring a container with cutover labels that cannot be read: {reason}"
            );
        }
    }

    /// Whether the engine has `image` (by name, tag or id).
    pub async fn image_present(&self, image: &str) -> Result<bool, DockerError> {
        match self.engine("inspect_image").inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) => Err(DockerError::InspectImage {
                image: image.to_owned(),
                source: e.into(),
            }),
        }
    }

    /// Pulls `image` with the credentials the docker CLI would use (see `registry`). A
    /// reference without tag or digest pulls `latest`, as `docker pull` does.
    ///
    /// # Errors
    /// [`DockerError::Pull`] says whether the image was not found, the registry refused the
    /// credentials, or could not be reached, and carries the registry's message verbatim.
    pub async fn pull(&self, image: &str) -> Result<(), DockerError> {
        let reference = parse_reference(image);
        let credentials = registry::load_credentials(&reference.domain)
            .await
            .map_err(|e| DockerError::Credentials {
                image: image.to_owned(),
                registry: reference.domain.clone(),
                source_name: e.source,
                message: e.message,
            })?
            .map(|auth| bollard::auth::DockerCredentials {
                username: auth.username,
                password: auth.password,
                identitytoken: auth.identity_token,
                serveraddress: Some(auth.server_address),
                ..bollard::auth::DockerCredentials::default()
            });
        let tag =
            (reference.tag.is_none() && reference.digest.is_none()).then(|| "latest".to_owned());
        let options = CreateImageOptions {
            from_image: Some(image.to_owned()),
            tag,
            ..CreateImageOptions::default()
        };
        let mut progress =
            self.engine("create_image")
                .create_image(Some(options), None, credentials);
        while let Some(item) = progress.next().await {
            if let Err(error) = item {
                let error = EngineError::from(error);
                let message = error.message();
                return Err(DockerError::Pull {
                    image: image.to_owned(),
                    registry: reference.domain,
                    kind: classify_pull_failure(error.status_code(), &message),
                    message,
                });
            }
        }
        Ok(())
    }

    /// Carries out one step of a plan. Every step is idempotent (see the module docs).
    ///
    /// # Errors
    /// [`DockerError::NotADockerStep`] for [`Step::Switch`], which the router carries out
    /// (check [`is_docker_step`] first); [`DockerError::NotOurs`] when the target lacks this
    /// installation's labels; otherwise the failed operation, naming the container.
    pub async fn execute(&self, ctx: &ExecContext<'_>, step: &Step) -> Result<(), DockerError> {
        match step {
            Step::PullImage { image } => self.pull(image).await,
            Step::CreateReplica {
                color,
                slot,
                revision,
            } => self.create_replica(ctx, *color, *slot, revision).await,
            Step::CreateSideTarget { name, revision } => {
                let side = ctx
                    .spec(step)?
                    .spec
                    .side_targets
                    .iter()
                    .find(|side| &side.name == name)
                    .ok_or_else(|| DockerError::UnknownSideTarget {
                        service: ctx.service_name.to_owned(),
                        name: name.clone(),
                    })?;
                self.create_side_target(ctx, side, revision).await
            }
            Step::Start { target } => self.start(ctx, target).await,
            Step::Stop { target } => self.stop(ctx, target).await,
            Step::Remove { target } => self.remove(ctx, target).await,
            Step::Rename { target, to } => self.rename(ctx, target, to).await,
            Step::Switch { .. } => Err(DockerError::NotADockerStep {
                step: step.to_string(),
            }),
        }
    }

    async fn create_replica(
        &self,
        ctx: &ExecContext<'_>,
        color: Color,
        slot: u32,
        revision: &str,
    ) -> Result<(), DockerError> {
        let service = ctx.spec(&Step::CreateReplica {
            color,
            slot,
            revision: revision.to_owned(),
        })?;
        let name = replica_name(service.name(), color, slot);
        // The controller refuses such specs before planning; this keeps the guarantee local.
        if let Err(refusals) = security::check(service, &self.allowances) {
            return Err(DockerError::ForbiddenBySecurityPolicy {
                container: name,
                message: security::message(&refusals),
            });
        }
        self.claim_replica_volumes(ctx, &name, service).await?;
        let mut labels = base_labels(ctx, revision);
        labels.insert(LABEL_COLOR.to_owned(), color.to_string());
        labels.insert(LABEL_SLOT.to_owned(), slot.to_string());
        let spec = &service.spec;
        // How this revision is reached and checked, for as long as it runs.
        labels.insert(LABEL_PORT.to_owned(), spec.port.to_string());
        if let Ok(health) = serde_json::to_string(&spec.health) {
            labels.insert(LABEL_HEALTH.to_owned(), health);
        }
        let host_network = spec.network_mode == NetworkMode::Host;
        let common = common_host_config(&ctx.scope.network);
        let host_config = HostConfig {
            memory: spec
                .resources
                .memory
                .map(|m| i64::try_from(m.bytes()).unwrap_or(i64::MAX)),
            // The engine takes CPUs in billionths.
            nano_cpus: spec.resources.cpus.map(|cpus| (cpus * 1e9).round() as i64),
            privileged: Some(spec.privileged),
            cap_add: (!spec.cap_add.is_empty()).then(|| spec.cap_add.clone()),
            network_mode: if host_network {
                Some("host".to_owned())
            } else {
                common.network_mode.clone()
            },
            // Written as `docker run -v` takes them. Named volumes were claimed above (created
            // with our labels); a missing host directory is created by the engine.
            binds: (!spec.volumes.is_empty()).then(|| spec.volumes.clone()),
            ..common
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(env_list(&spec.env)),
            cmd: spec.command.clone(),
            labels: Some(labels.clone()),
            host_config: Some(host_config),
            // How Docker stops this revision's replicas, for as long as they exist.
            stop_signal: Some(spec.stop_signal().to_owned()),
            stop_timeout: Some(i64::try_from(spec.stop_grace_period_secs()).unwrap_or(i64::MAX)),
            // On a user-defined network the container's name resolves already, and follows
            // a rename; an alias would keep answering to the old slot name after one. A
            // container on the host's network joins no other.
            networking_config: (!host_network).then(|| networking(&ctx.scope.network, Vec::new())),
            ..ContainerCreateBody::default()
        };
        self.create_and_start(&name, &spec.image, &labels, body)
            .await
    }

    async fn create_side_target(
        &self,
        ctx: &ExecContext<'_>,
        side: &SideTarget,
        revision: &str,
    ) -> Result<(), DockerError> {
        let name = side_target_name(ctx.service_name, &side.name);
        let mut labels = base_labels(ctx, revision);
        labels.insert(LABEL_SIDE_TARGET.to_owned(), side.name.clone());
        let mut mounts = Vec::new();
        for volume in &side.volumes {
            let (source, target, read_only) =
                parse_volume(volume).ok_or_else(|| DockerError::InvalidVolume {
                    container: name.clone(),
                    volume: volume.clone(),
                })?;
            self.claim_volume(ctx, &name, source, Some(&side.name))
                .await?;
            mounts.push(Mount {
                typ: Some(MountType::VOLUME),
                source: Some(source.to_owned()),
                target: Some(target.to_owned()),
                read_only: Some(read_only),
                ..Mount::default()
            });
        }
        let host_config = HostConfig {
            mounts: Some(mounts),
            ..common_host_config(&ctx.scope.network)
        };
        let body = ContainerCreateBody {
            image: Some(side.image.clone()),
            env: Some(env_list(&side.env)),
            cmd: side.command.clone(),
            labels: Some(labels.clone()),
            host_config: Some(host_config),
            // Side targets are never renamed, so the alias cannot go stale. It is the
            // container name (`<service>-<name>`), unique on the engine, rather than the bare
            // `<name>`, which two services' side targets could share on one network.
            networking_config: Some(networking(&ctx.scope.network, vec![name.clone()])),
            ..ContainerCreateBody::default()
        };
        self.create_and_start(&name, &side.image, &labels, body)
            .await
    }

    /// Creates container `name` and starts it. If the name exists already with exactly the
    /// labels we would give it (same installation, service, role and revision), that earlier
    /// attempt is adopted and started; any other owner of the name is an error.
    async fn create_and_start(
        &self,
        name: &str,
        image: &str,
        labels: &HashMap<String, String>,
        body: ContainerCreateBody,
    ) -> Result<(), DockerError> {
        let options = CreateContainerOptions {
            name: Some(name.to_owned()),
            ..CreateContainerOptions::default()
        };
        let id = match self
            .engine("create_container")
            .create_container(Some(options), body)
            .await
        {
            Ok(created) => created.id,
            Err(e) if status_of(&e) == Some(409) => {
                let existing = self
                    .inspect(name)
                    .await?
                    .ok_or_else(|| DockerError::NameTaken {
                        container: name.to_owned(),
                        reason: "a container that vanished while we looked; try again".to_owned(),
                    })?;
                let existing_labels = labels_of(&existing);
                if let Some(reason) = label_mismatch(labels, &existing_labels) {
                    return Err(DockerError::NameTaken {
                        container: name.to_owned(),
                        reason,
                    });
                }
                existing.id.unwrap_or_else(|| name.to_owned())
            }
            Err(e) if status_of(&e) == Some(404) => {
                return Err(DockerError::ImageMissing {
                    container: name.to_owned(),
                    image: image.to_owned(),
                });
            }
            Err(e) => {
                return Err(DockerError::CreateContainer {
                    container: name.to_owned(),
                    image: image.to_owned(),
                    source: e.into(),
                });
            }
        };
        self.start_by_id(name, &id).await
    }

    /// Starts a container; the engine's 304 for a running one is success.
    async fn start_by_id(&self, name: &str, id: &str) -> Result<(), DockerError> {
        self.engine("start_container")
            .start_container(id, None::<StartContainerOptions>)
            .await
            .map_err(|e| DockerError::StartContainer {
                container: name.to_owned(),
                source: e.into(),
            })
    }

    async fn start(&self, ctx: &ExecContext<'_>, target: &Target) -> Result<(), DockerError> {
        let Some(id) = self.our_container(ctx, target).await? else {
            return Err(DockerError::StartContainer {
                container: target.name.clone(),
                source: EngineError(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    message: format!("no such container: {}", reference_of(target)),
                }),
            });
        };
        self.start_by_id(&target.name, &id).await
    }

    async fn stop(&self, ctx: &ExecContext<'_>, target: &Target) -> Result<(), DockerError> {
        let Some(id) = self.our_container(ctx, target).await? else {
            return Ok(());
        };
        match self
            .engine("stop_container")
            .stop_container(&id, None::<StopContainerOptions>)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(DockerError::StopContainer {
                container: target.name.clone(),
                source: e.into(),
            }),
        }
    }

    async fn remove(&self, ctx: &ExecContext<'_>, target: &Target) -> Result<(), DockerError> {
        let Some(id) = self.our_container(ctx, target).await? else {
            return Ok(());
        };
        // `force` stops it first; `v` removes its anonymous volumes, never named ones.
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..RemoveContainerOptions::default()
        };
        match self
            .engine("remove_container")
            .remove_container(&id, Some(options))
            .await
        {
            Ok(()) => Ok(()),
            // 409: "removal of container ... is already in progress".
            Err(e) if matches!(status_of(&e), Some(404 | 409)) => Ok(()),
            Err(e) => Err(DockerError::RemoveContainer {
                container: target.name.clone(),
                source: e.into(),
            }),
        }
    }

    async fn rename(
        &self,
        ctx: &ExecContext<'_>,
        target: &Target,
        to: &str,
    ) -> Result<(), DockerError> {
        let fail = |source: EngineError| DockerError::RenameContainer {
            container: target.name.clone(),
            to: to.to_owned(),
            source,
        };
        let reference = reference_of(target);
        let Some(existing) = self.inspect(reference).await? else {
            return Err(fail(EngineError(
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    message: format!("no such container: {reference}"),
                },
            )));
        };
        check_ours(ctx, target, &labels_of(&existing))?;
        if existing.name.as_deref().map(strip_slash) == Some(to) {
            return Ok(());
        }
        let id = existing.id.unwrap_or_else(|| reference.to_owned());
        let options = RenameContainerOptions {
            name: to.to_owned(),
        };
        self.engine("rename_container")
            .rename_container(&id, options)
            .await
            .map_err(|e| fail(e.into()))
    }

    /// The id of the step's target if it exists, after checking that it is ours.
    async fn our_container(
        &self,
        ctx: &ExecContext<'_>,
        target: &Target,
    ) -> Result<Option<String>, DockerError> {
        let Some(existing) = self.inspect(reference_of(target)).await? else {
            return Ok(None);
        };
        check_ours(ctx, target, &labels_of(&existing))?;
        Ok(Some(
            existing
                .id
                .unwrap_or_else(|| reference_of(target).to_owned()),
        ))
    }

    async fn inspect(
        &self,
        container: &str,
    ) -> Result<Option<ContainerInspectResponse>, DockerError> {
        match self
            .engine("inspect_container")
            .inspect_container(container, None::<InspectContainerOptions>)
            .await
        {
            Ok(response) => Ok(Some(response)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(DockerError::InspectContainer {
                container: container.to_owned(),
                source: e.into(),
            }),
        }
    }

    /// The engine's events about this installation's containers: starts, stops, deaths,
    /// removals, out-of-memory kills and `HEALTHCHECK` changes, each with its service.
    ///
    /// With `since`, the engine first replays the matching events it still remembers from
    /// that time on (it keeps a few hundred), then continues live: a resubscription can
    /// pass the time of the last event it saw. The subscription starts when the stream is
    /// first polled.
    ///
    /// # Caveats
    /// The stream ends or fails when the connection to the engine drops; subscribe again
    /// (and resync, since events may have been missed meanwhile). `since` is compared with
    /// the engine's clock.
    pub fn events(
        &self,
        instance: &str,
        since: Option<SystemTime>,
    ) -> impl Stream<Item = Result<ServiceEvent, DockerError>> + Send + use<> {
        let since = since.map(|time| {
            let elapsed = time.duration_since(UNIX_EPOCH).unwrap_or_default();
            format!("{}.{:09}", elapsed.as_secs(), elapsed.subsec_nanos())
        });
        let options = EventsOptions {
            since,
            filters: Some(HashMap::from([
                ("type".to_owned(), vec!["container".to_owned()]),
                (
                    "label".to_owned(),
                    vec![format!("{LABEL_INSTANCE}={instance}")],
                ),
                (
                    "event".to_owned(),
                    WATCHED_ACTIONS.iter().map(|a| (*a).to_owned()).collect(),
                ),
            ])),
            ..EventsOptions::default()
        };
        let instance = instance.to_owned();
        self.engine("events")
            .events(Some(options))
            .filter_map(move |item| {
                let mapped = match item {
                    Ok(message) => service_event(&message).map(Ok),
                    Err(e) => Some(Err(DockerError::Events {
                        instance: instance.clone(),
                        source: e.into(),
                    })),
                };
                futures::future::ready(mapped)
            })
    }
}

fn status_of(error: &bollard::errors::Error) -> Option<u16> {
    match error {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// How a step finds its target: by id when the planner knows it, else by name.
fn reference_of(target: &Target) -> &str {
    if target.id.is_empty() {
        &target.name
    } else {
        &target.id
    }
}

fn strip_slash(name: &str) -> &str {
    name.strip_prefix('/').unwrap_or(name)
}

fn labels_of(container: &ContainerInspectResponse) -> HashMap<String, String> {
    container
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default()
}

/// Refuses a target that is not this installation's container of this service.
fn check_ours(
    ctx: &ExecContext<'_>,
    target: &Target,
    labels: &HashMap<String, String>,
) -> Result<(), DockerError> {
    let instance = labels.get(LABEL_INSTANCE).map(String::as_str);
    let service = labels.get(LABEL_SERVICE).map(String::as_str);
    let reason = if instance != Some(ctx.scope.instance.as_str()) {
        Some(format!(
            "its {LABEL_INSTANCE} label is {instance:?}, not {:?}",
            ctx.scope.instance
        ))
    } else if service != Some(ctx.service_name) {
        Some(format!(
            "its {LABEL_SERVICE} label is {service:?}, not {:?}",
            ctx.service_name
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(DockerError::NotOurs {
            container: target.name.clone(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Why an existing container's labels do not make it the one we meant to create, if so.
fn label_mismatch(
    wanted: &HashMap<String, String>,
    existing: &HashMap<String, String>,
) -> Option<String> {
    // The spec index may differ: a retried create after a replica-only spec change is
    // still the same container.
    let identity = [
        LABEL_INSTANCE,
        LABEL_SERVICE,
        LABEL_COLOR,
        LABEL_SLOT,
        LABEL_SIDE_TARGET,
        LABEL_REVISION,
    ];
    identity.iter().find_map(|label| {
        let want = wanted.get(*label);
        let have = existing.get(*label);
        (want != have).then(|| match have {
            Some(have) => format!(
                "a container whose {label} is {have:?}, not {:?}",
                want.map_or("", |w| w)
            ),
            None => format!("a container without the {label} label"),
        })
    })
}

fn base_labels(ctx: &ExecContext<'_>, revision: &str) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = ctx
        .service
        .iter()
        .flat_map(|service| &service.metadata.labels)
        .filter(|(key, _)| !key.starts_with("dev.cutover."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(LABEL_INSTANCE.to_owned(), ctx.scope.instance.clone());
    labels.insert(LABEL_SERVICE.to_owned(), ctx.service_name.to_owned());
    labels.insert(LABEL_REVISION.to_owned(), revision.to_owned());
    labels.insert(LABEL_SPEC_INDEX.to_owned(), ctx.spec_index.to_string());
    labels
}

/// What replicas and side targets share: restart unless stopped by us, on our network, no
/// published ports.
fn common_host_config(network: &str) -> HostConfig {
    HostConfig {
        network_mode: Some(network.to_owned()),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        }),
        publish_all_ports: Some(false),
        ..HostConfig::default()
    }
}

fn networking(network: &str, aliases: Vec<String>) -> NetworkingConfig {
    let endpoint = EndpointSettings {
        aliases: (!aliases.is_empty()).then_some(aliases),
        ..EndpointSettings::default()
    };
    NetworkingConfig {
        endpoints_config: Some(HashMap::from([(network.to_owned(), endpoint)])),
    }
}

fn env_list(env: &BTreeMap<String, String>) -> Vec<String> {
    env.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Splits `NAME:/path` or `NAME:/path:ro` (or `:rw`) into name, path and read-only.
fn parse_volume(volume: &str) -> Option<(&str, &str, bool)> {
    let mut parts = volume.split(':');
    let name = parts
        .next()
        .filter(|n| !n.is_empty() && !n.starts_with('/'))?;
    let path = parts.next().filter(|p| p.starts_with('/'))?;
    let read_only = match parts.next() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(_) => return None,
    };
    parts.next().is_none().then_some((name, path, read_only))
}

fn first_name(summary: &ContainerSummary) -> Option<String> {
    summary
        .names
        .as_ref()
        .and_then(|names| names.first())
        .map(|name| strip_slash(name).to_owned())
}

/// Reads one listed container into plain data, or says which label is wrong.
fn container_from_summary(
    summary: &ContainerSummary,
    scope: &Scope,
    service: Option<&str>,
) -> Result<(Container, Option<DockerHealth>), String> {
    let empty = HashMap::new();
    let labels = summary.labels.as_ref().unwrap_or(&empty);
    // The engine filtered on these already; checking again keeps the guarantee local.
    if labels.get(LABEL_INSTANCE) != Some(&scope.instance) {
        return Err(format!("{LABEL_INSTANCE} is not {:?}", scope.instance));
    }
    let parsed = parse_labels(labels)?;
    if service.is_some_and(|s| s != parsed.service) {
        return Err(format!("{LABEL_SERVICE} is not {service:?}"));
    }
    let id = summary.id.clone().ok_or("the engine gave no id")?;
    let running = matches!(
        summary.state,
        Some(ContainerSummaryStateEnum::RUNNING | ContainerSummaryStateEnum::RESTARTING)
    );
    let on_host_network = summary
        .host_config
        .as_ref()
        .and_then(|config| config.network_mode.as_deref())
        == Some("host");
    let address = summary
        .network_settings
        .as_ref()
        .and_then(|settings| settings.networks.as_ref())
        .and_then(|networks| networks.get(&scope.network))
        .and_then(|endpoint| endpoint.ip_address.clone())
        .filter(|ip| !ip.is_empty())
        // A replica on the host's network listens on the host's own addresses; the daemon
        // reaches it on loopback when it runs on the host's network too.
        .or_else(|| (on_host_network && running).then(|| "127.0.0.1".to_owned()));
    let created_ms = summary
        .created
        .and_then(|seconds| u64::try_from(seconds).ok())
        .map_or(0, |seconds| seconds * 1000);
    // Newer engines report the health check in the list; API 1.41 only in the status
    // text ("Up 5 seconds (healthy)").
    let health = summary
        .health
        .as_ref()
        .and_then(|h| h.status.as_ref())
        .and_then(|status| DockerHealth::parse(status.as_ref()))
        .or_else(|| summary.status.as_deref().and_then(health_from_status_text));
    let container = Container {
        id,
        name: first_name(summary).unwrap_or_default(),
        service: parsed.service,
        role: parsed.role,
        revision: parsed.revision,
        spec_index: parsed.spec_index,
        image: summary.image.clone().unwrap_or_default(),
        running,
        created_ms,
        address,
        ready: false,
        stopping: false,
        port: labels.get(LABEL_PORT).and_then(|p| p.parse().ok()),
        health: labels
            .get(LABEL_HEALTH)
            .and_then(|h| serde_json::from_str(h).ok()),
    };
    Ok((container, health))
}

/// The parts of a container that its labels carry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LabelledParts {
    service: String,
    role: Role,
    revision: String,
    spec_index: u64,
}

fn parse_labels(labels: &HashMap<String, String>) -> Result<LabelledParts, String> {
    let get = |label: &str| {
        labels
            .get(label)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("the {label} label is missing"))
    };
    let service = get(LABEL_SERVICE)?.clone();
    let revision = get(LABEL_REVISION)?.clone();
    let spec_index_text = get(LABEL_SPEC_INDEX)?;
    let spec_index = spec_index_text
        .parse()
        .map_err(|_| format!("{LABEL_SPEC_INDEX} is {spec_index_text:?}, not a number"))?;
    let role = match labels.get(LABEL_SIDE_TARGET).filter(|v| !v.is_empty()) {
        Some(name) => Role::SideTarget { name: name.clone() },
        None => {
            let color_text = get(LABEL_COLOR)?;
            let color = Color::parse(color_text)
                .ok_or_else(|| format!("{LABEL_COLOR} is {color_text:?}, not blue or green"))?;
            let slot_text = get(LABEL_SLOT)?;
            let slot = slot_text
                .parse()
                .map_err(|_| format!("{LABEL_SLOT} is {slot_text:?}, not a number"))?;
            Role::Replica { color, slot }
        }
    };
    Ok(LabelledParts {
        service,
        role,
        revision,
        spec_index,
    })
}

/// The health check's state in a status text such as `Up 2 minutes (health: starting)`.
fn health_from_status_text(status: &str) -> Option<DockerHealth> {
    let inside = status.rsplit_once('(')?.1.strip_suffix(')')?;
    DockerHealth::parse(inside.strip_prefix("health: ").unwrap_or(inside))
}

fn service_event(message: &EventMessage) -> Option<ServiceEvent> {
    let actor = message.actor.as_ref()?;
    let attributes = actor.attributes.as_ref()?;
    let service = attributes.get(LABEL_SERVICE)?.clone();
    let kind = event_kind(message.action.as_deref()?)?;
    Some(ServiceEvent {
        service,
        container_id: actor.id.clone().unwrap_or_default(),
        container_name: attributes.get("name").cloned().unwrap_or_default(),
        kind,
    })
}

/// The kind of an engine action; `health_status: healthy` carries the new state.
fn event_kind(action: &str) -> Option<ContainerEventKind> {
    match action {
        "start" => Some(ContainerEventKind::Start),
        "stop" => Some(ContainerEventKind::Stop),
        "die" => Some(ContainerEventKind::Die),
        "destroy" => Some(ContainerEventKind::Destroy),
        "oom" => Some(ContainerEventKind::Oom),
        other => other
            .strip_prefix("health_status:")
            .and_then(DockerHealth::parse)
            .map(ContainerEventKind::HealthStatus),
    }
}

/// Sorts a failed pull by the registry's message. The engine answers 404 when the
/// repository or tag does not exist; everything else is recognised by its words.
pub fn classify_pull_failure(status: Option<u16>, message: &str) -> PullFailure {
    let text = message.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    if any(&[
        "no such host",
        "connection refused",
        "i/o timeout",
        "dial tcp",
        "network is unreachable",
        "tls handshake timeout",
        "context deadline exceeded",
        "server misbehaving",
        "no route to host",
        "certificate",
    ]) {
        PullFailure::Unreachable
    } else if any(&[
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "incorrect username or password",
        "denied: access forbidden",
    ]) {
        PullFailure::Unauthorized
    } else if status == Some(404)
        || any(&[
            "not found",
            "manifest unknown",
            "repository does not exist",
            "name unknown",
        ])
    {
        PullFailure::NotFound
    } else {
        PullFailure::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(host: Option<&str>, tls: Option<&str>, cert: Option<&str>) -> DockerEnv {
        DockerEnv {
            host: host.map(str::to_owned),
            tls_verify: tls.map(str::to_owned),
            cert_path: cert.map(str::to_owned),
            config_dir: None,
            home: Some("/home/op".to_owned()),
        }
    }

    #[test]
    fn endpoints_follow_the_docker_cli_environment() {
        assert_eq!(
            endpoint_from(&env(None, None, None)).unwrap(),
            Endpoint::Unix {
                path: DEFAULT_SOCKET.to_owned()
            }
        );
        assert_eq!(
            endpoint_from(&env(Some("unix:///run/d.sock"), None, None)).unwrap(),
            Endpoint::Unix {
                path: "/run/d.sock".to_owned()
            }
        );
        assert_eq!(
            endpoint_from(&env(Some("tcp://10.0.0.5:2375"), None, None)).unwrap(),
            Endpoint::Tcp {
                address: "10.0.0.5:2375".to_owned()
            }
        );
        assert_eq!(
            endpoint_from(&env(Some("tcp://10.0.0.5:2376"), Some("1"), Some("/certs"))).unwrap(),
            Endpoint::Tls {
                address: "10.0.0.5:2376".to_owned(),
                ca: "/certs/ca.pem".into(),
                cert: "/certs/cert.pem".into(),
                key: "/certs/key.pem".into(),
            }
        );
        let Endpoint::Tls { ca, .. } =
            endpoint_from(&env(Some("tcp://h:2376"), Some("1"), None)).unwrap()
        else {
            panic!("DOCKER_TLS_VERIFY means TLS");
        };
        assert_eq!(ca, PathBuf::from("/home/op/.docker/ca.pem"));
    }

    #[tokio::test]
    async fn connect_errors_name_the_address() {
        let endpoint = Endpoint::Unix {
            path: "/nonexistent/cutover-test.sock".to_owned(),
        };
        let error = Docker::connect_to(&endpoint).await.unwrap_err();
        assert!(matches!(error, DockerError::Connect { .. }), "{error}");
        assert!(
            error
                .to_string()
                .contains("unix:///nonexistent/cutover-test.sock"),
            "{error}"
        );
    }

    #[test]
    fn unsupported_hosts_are_named_in_the_error() {
        for host in ["ssh://user@host", "unix://", "tcp://", "host:2375"] {
            let error = endpoint_from(&env(Some(host), None, None)).unwrap_err();
            assert!(error.to_string().contains(host), "{error}");
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn labels_become_roles() {
        let replica = labels(&[
            (LABEL_SERVICE, "books"),
            (LABEL_REVISION, "abc"),
            (LABEL_SPEC_INDEX, "42"),
            (LABEL_COLOR, "green"),
            (LABEL_SLOT, "2"),
        ]);
        assert_eq!(
            parse_labels(&replica),
            Ok(LabelledParts {
                service: "books".into(),
                role: Role::Replica {
                    color: Color::Green,
                    slot: 2
                },
                revision: "abc".into(),
                spec_index: 42,
            })
        );
        let side = labels(&[
            (LABEL_SERVICE, "books"),
            (LABEL_REVISION, "abc"),
            (LABEL_SPEC_INDEX, "42"),
            (LABEL_SIDE_TARGET, "db"),
        ]);
        assert_eq!(
            parse_labels(&side).unwrap().role,
            Role::SideTarget { name: "db".into() }
        );
    }

    #[test]
    fn malformed_labels_say_which_label() {
        let base = [
            (LABEL_SERVICE, "books"),
            (LABEL_REVISION, "abc"),
            (LABEL_SPEC_INDEX, "42"),
            (LABEL_COLOR, "blue"),
            (LABEL_SLOT, "1"),
        ];
        let cases = [
            (LABEL_COLOR, "purple"),
            (LABEL_SLOT, "one"),
            (LABEL_SPEC_INDEX, "-1"),
            (LABEL_REVISION, ""),
        ];
        for (label, value) in cases {
            let mut bad = labels(&base);
            bad.insert(label.to_owned(), value.to_owned());
            let error = parse_labels(&bad).unwrap_err();
            assert!(error.contains(label), "{label}: {error}");
        }
    }

    #[test]
    fn health_is_read_from_the_status_text() {
        let cases = [
            ("Up 2 minutes (healthy)", Some(DockerHealth::Healthy)),
            (
                "Up 3 seconds (health: starting)",
                Some(DockerHealth::Starting),
            ),
            (
                "Up About a minute (unhealthy)",
                Some(DockerHealth::Unhealthy),
            ),
            ("Up 2 minutes", None),
            ("Exited (0) 5 seconds ago", None),
            ("Restarting (1) 2 seconds ago", None),
        ];
        for (text, want) in cases {
            assert_eq!(health_from_status_text(text), want, "{text}");
        }
    }

    #[test]
    fn events_map_to_kinds() {
        assert_eq!(event_kind("die"), Some(ContainerEventKind::Die));
        assert_eq!(
            event_kind("health_status: unhealthy"),
            Some(ContainerEventKind::HealthStatus(DockerHealth::Unhealthy))
        );
        assert_eq!(event_kind("exec_start: sh"), None);
    }

    #[test]
    fn volumes_parse() {
        assert_eq!(
            parse_volume("data:/var/lib/db"),
            Some(("data", "/var/lib/db", false))
        );
        assert_eq!(parse_volume("data:/d:ro"), Some(("data", "/d", true)));
        assert_eq!(parse_volume("data:/d:rw"), Some(("data", "/d", false)));
        for bad in [
            "/host:/d",
            "data",
            "data:rel",
            "data:/d:xx",
            ":/d",
            "a:/d:ro:x",
        ] {
            assert_eq!(parse_volume(bad), None, "{bad}");
        }
    }

    #[test]
    fn pull_failures_are_classified_by_message() {
        let cases = [
            (
                Some(500),
                r#"Get "https://registry.test/v2/": dial tcp: lookup registry.test: no such host"#,
                PullFailure::Unreachable,
            ),
            (
                Some(404),
                "pull access denied for x, repository does not exist or may require 'docker login'",
                PullFailure::NotFound,
            ),
            (
                Some(404),
                "manifest for registry.test/x:1 not found: manifest unknown",
                PullFailure::NotFound,
            ),
            (
                Some(500),
                "Head \"https://registry.test/v2/x/manifests/1\": unauthorized: authentication required",
                PullFailure::Unauthorized,
            ),
            (None, "no basic auth credentials", PullFailure::Unauthorized),
            (Some(500), "something odd", PullFailure::Other),
        ];
        for (status, message, want) in cases {
            assert_eq!(classify_pull_failure(status, message), want, "{message}");
        }
    }

    #[test]
    fn an_existing_container_is_adopted_only_with_identical_identity() {
        let wanted = labels(&[
            (LABEL_INSTANCE, "i"),
            (LABEL_SERVICE, "books"),
            (LABEL_REVISION, "r1"),
            (LABEL_SPEC_INDEX, "7"),
            (LABEL_COLOR, "blue"),
            (LABEL_SLOT, "1"),
        ]);
        let mut same_but_index = wanted.clone();
        same_but_index.insert(LABEL_SPEC_INDEX.to_owned(), "9".to_owned());
        assert_eq!(label_mismatch(&wanted, &same_but_index), None);
        let mut other_revision = wanted.clone();
        other_revision.insert(LABEL_REVISION.to_owned(), "r2".to_owned());
        assert!(
            label_mismatch(&wanted, &other_revision)
                .unwrap()
                .contains("r2")
        );
        let foreign = labels(&[("maintainer", "someone")]);
        assert!(label_mismatch(&wanted, &foreign).is_some());
    }
}
