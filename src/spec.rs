//! The desired state of one service: the manifest users write, as typed data.
//!
//! This module is pure: it parses and validates text and never does I/O. Every other part of
//! cutover (the CLI, the KV store, the planner) takes a [`Service`] that went through
//! [`parse_service`], so a value of these types is always valid.
//!
//! The wire format is YAML with a Kubernetes-like envelope:
//!
//! ```yaml
//! apiVersion: cutover.dev/v1
//! kind: Service
//! metadata: {name: books}
//! spec: {image: books:1.4.2, replicas: 3}
//! ```

mod duration;
mod quantity;
mod schema;
mod validate;
mod yaml;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use duration::Duration;
pub use quantity::Memory;
pub use validate::{
    Diagnostic, Diagnostics, check_set, name_from_key, parse_service, parse_services,
};

/// The only `apiVersion` this release understands.
pub const API_VERSION: &str = "cutover.dev/v1";
/// The only `kind` this release understands.
pub const KIND: &str = "Service";
/// Consul refuses values larger than this (its `kv_max_value_size` default).
pub const MAX_VALUE_BYTES: usize = 512 * 1024;

/// One service's manifest: what the user wants running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: ServiceSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// A DNS label; equal to the last segment of the KV key that holds the manifest.
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `Debug` is written by hand so that env values never reach a log line: see [`RedactedEnv`].
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    pub image: String,
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    #[serde(default = "defaults::replicas")]
    pub replicas: u32,
    /// The port the container listens on.
    #[serde(default = "defaults::port")]
    pub port: u16,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// The signal Docker sends to stop a replica, normalised to `SIGxxx`; `None` means
    /// SIGTERM. Read it through [`ServiceSpec::stop_signal`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// How long a replica may take to exit after the stop signal before it is killed; `None`
    /// means 10s. Read it through [`ServiceSpec::stop_grace_period`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<Duration>,
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    #[serde(default)]
    pub health: Health,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Written as a mapping with one key (`strategy: {recreate: {}}`), not as a YAML tag.
    #[serde(default, with = "serde_yaml::with::singleton_map")]
    pub strategy: Strategy,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub side_targets: Vec<SideTarget>,
    /// Run the replicas privileged. The daemon refuses it unless started with
    /// `--allow-privileged` (see `crate::security`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub privileged: bool,
    /// `host` shares the host's network stack; the daemon refuses it unless started with
    /// `--allow-host-network`.
    #[serde(default, skip_serializing_if = "NetworkMode::is_bridge")]
    pub network_mode: NetworkMode,
    /// Linux capabilities added to the replicas, such as `NET_ADMIN`; the daemon refuses any
    /// unless started with `--allow-cap-add`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// `NAME:/path[:ro]` (a named volume) or `/host/path:/path[:ro]` (a host bind mount, which
    /// the daemon refuses unless started with `--allow-host-mounts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Which network the replicas join.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// The daemon's user-defined bridge network (`cutover run --network`).
    #[default]
    Bridge,
    /// The host's network stack: no isolation, the container's port is the host's.
    Host,
}

impl NetworkMode {
    pub fn is_bridge(&self) -> bool {
        *self == NetworkMode::Bridge
    }
}

/// A volume of `spec.volumes`, read from its `NAME:/path[:ro]` or `/host:/path[:ro]` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeMount<'a> {
    /// A named volume, or an absolute host path.
    pub source: &'a str,
    pub target: &'a str,
    pub read_only: bool,
}

impl VolumeMount<'_> {
    /// Whether the source is a path on the host rather than a named volume.
    pub fn is_host_path(&self) -> bool {
        self.source.starts_with('/')
    }
}

/// Splits a validated volume into its parts; `None` for a text the validator refuses.
pub fn parse_volume(text: &str) -> Option<VolumeMount<'_>> {
    let mut parts = text.split(':');
    let source = parts.next().filter(|source| !source.is_empty())?;
    let target = parts.next().filter(|target| target.starts_with('/'))?;
    let read_only = match parts.next() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(_) => return None,
    };
    parts.next().is_none().then_some(VolumeMount {
        source,
        target,
        read_only,
    })
}

/// Shows an env map's names with every value hidden: `{DB_PASSWORD: <redacted>}`. Env
/// values are where secrets live, so no `Debug` output of a spec ever shows them.
pub struct RedactedEnv<'a>(pub &'a BTreeMap<String, String>);

impl fmt::Debug for RedactedEnv<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|key| (key, format_args!("<redacted>"))))
            .finish()
    }
}

impl fmt::Debug for ServiceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceSpec")
            .field("image", &self.image)
            .field("image_pull_policy", &self.image_pull_policy)
            .field("replicas", &self.replicas)
            .field("port", &self.port)
            .field("env", &RedactedEnv(&self.env))
            .field("command", &self.command)
            .field("stop_signal", &self.stop_signal)
            .field("stop_grace_period", &self.stop_grace_period)
            .field("resources", &self.resources)
            .field("health", &self.health)
            .field("routes", &self.routes)
            .field("strategy", &self.strategy)
            .field("side_targets", &self.side_targets)
            .field("privileged", &self.privileged)
            .field("network_mode", &self.network_mode)
            .field("cap_add", &self.cap_add)
            .field("volumes", &self.volumes)
            .finish()
    }
}

/// When the daemon pulls the image before creating a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullPolicy {
    /// Pull only when the engine does not have the image.
    #[default]
    IfNotPresent,
    /// Pull before every new container, to pick up a moved tag.
    Always,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.cpus.is_none()
    }
}

/// The daemon's own HTTP probe of each replica. A replica counts as ready after
/// `healthy_threshold` successes in a row and stops counting after `unhealthy_threshold`
/// failures in a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Health {
    #[serde(default = "defaults::health_path")]
    pub path: String,
    #[serde(default = "defaults::health_interval")]
    pub interval: Duration,
    #[serde(default = "defaults::health_timeout")]
    pub timeout: Duration,
    #[serde(default = "defaults::healthy_threshold")]
    pub healthy_threshold: u32,
    #[serde(default = "defaults::unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Failures during this time after the container starts do not count.
    #[serde(default = "defaults::start_period")]
    pub start_period: Duration,
    /// The `Host` header of the probes (cutover's and HAProxy's); `None` means the service's
    /// name. Read it through [`Service::health_host`]. Left out of the serialized form when
    /// not written, so that the revision of existing specs does not change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            path: defaults::health_path(),
            interval: defaults::health_interval(),
            timeout: defaults::health_timeout(),
            healthy_threshold: defaults::healthy_threshold(),
            unhealthy_threshold: defaults::unhealthy_threshold(),
            start_period: defaults::start_period(),
            host: None,
        }
    }
}

impl ServiceSpec {
    /// The signal Docker sends to stop a replica: `spec.stopSignal` or `SIGTERM`.
    pub fn stop_signal(&self) -> &str {
        self.stop_signal.as_deref().unwrap_or(defaults::STOP_SIGNAL)
    }

    /// How long a replica may take to exit after its stop signal before Docker kills it:
    /// `spec.stopGracePeriod` or 10s.
    pub fn stop_grace_period(&self) -> std::time::Duration {
        self.stop_grace_period
            .unwrap_or_else(defaults::stop_grace_period)
            .as_std()
    }

    /// The grace period in the whole seconds Docker counts (`docker stop -t`, `StopTimeout`),
    /// rounded up so that a replica never gets less time than the spec gives it.
    pub fn stop_grace_period_secs(&self) -> u64 {
        self.stop_grace_period().as_millis().div_ceil(1000) as u64
    }
}

/// Where the proxy sends a request: by path prefix, by host, or both (both must match).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// How a new revision replaces the old one.
impl std::fmt::Display for Route {
    /// `host/path`, `host` or `/path`, as tables and the status page show a route.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.host.as_deref().unwrap_or(""))?;
        f.write_str(self.path_prefix.as_deref().unwrap_or(""))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Strategy {
    BlueGreen(BlueGreen),
    Recreate(Recreate),
    Canary(Canary),
}

impl Strategy {
    /// The strategy's key in a manifest: `blueGreen`, `recreate` or `canary`.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::BlueGreen(_) => "blueGreen",
            Strategy::Recreate(_) => "recreate",
            Strategy::Canary(_) => "canary",
        }
    }
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy::BlueGreen(BlueGreen::default())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlueGreen {
    /// Switch traffic as soon as the new color is healthy; otherwise wait for `cutover promote`.
    #[serde(default = "defaults::auto_promote")]
    pub auto_promote: bool,
    /// Replicas of the new color before promotion; `None` means all of `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_replicas: Option<u32>,
    /// How long the old color keeps running (draining) after the switch.
    #[serde(default = "defaults::scale_down_delay")]
    pub scale_down_delay: Duration,
    /// A new color not healthy by then is aborted and its revision rejected.
    #[serde(default = "defaults::progress_deadline")]
    pub progress_deadline: Duration,
    /// How many old revisions are kept as stopped containers for rollback.
    #[serde(default = "defaults::revision_history_limit")]
    pub revision_history_limit: u32,
    /// Judge the new revision by its real traffic after the switch, and switch back by
    /// itself on a breach (see `docs/traffic.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
}

/// The bake window after a switch: every proxy reads HAProxy's counters of the new color's
/// backend, and the leader compares their sum with the limits. The old color stays ready
/// (drained) until the window ends; a breach switches back to it at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Analysis {
    /// How long after the switch the new revision's traffic is judged.
    pub window: Duration,
    /// How often each proxy reads its counters.
    #[serde(default = "defaults::analysis_interval")]
    pub interval: Duration,
    /// Fewer requests than this since the switch are not judged (too few to tell).
    #[serde(default = "defaults::analysis_min_requests")]
    pub min_requests: u32,
    /// The largest share of failed requests (5xx responses, connection and response errors)
    /// tolerated, from 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_ratio: Option<f64>,
    /// The largest average response time tolerated (HAProxy's `rtime`, over the last 1024
    /// requests of the color).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_time: Option<Duration>,
}

impl Default for BlueGreen {
    fn default() -> Self {
        BlueGreen {
            auto_promote: defaults::auto_promote(),
            preview_replicas: None,
            scale_down_delay: defaults::scale_down_delay(),
            progress_deadline: defaults::progress_deadline(),
            revision_history_limit: defaults::revision_history_limit(),
            analysis: None,
        }
    }
}

/// A weighted canary: the new revision comes up in the other color with every replica, as in
/// blue/green, then gets a growing share of the live traffic step by step (HAProxy server
/// weights, set through the Runtime API), each step judged or waited for, before the full
/// switch. See `docs/traffic.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Canary {
    /// What happens between the new color being ready and the full switch, in order; never
    /// empty.
    #[serde(with = "serde_yaml::with::singleton_map_recursive")]
    pub steps: Vec<CanaryStep>,
    /// How long the old color keeps running (draining) after the full switch.
    #[serde(default = "defaults::scale_down_delay")]
    pub scale_down_delay: Duration,
    /// A new color not healthy by then is aborted and its revision rejected.
    #[serde(default = "defaults::progress_deadline")]
    pub progress_deadline: Duration,
    /// How many old revisions are kept as stopped containers for rollback.
    #[serde(default = "defaults::revision_history_limit")]
    pub revision_history_limit: u32,
    /// The bake window after the full switch, as for blue/green.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
}

/// One step of a canary, written as a mapping with one key: `weight: 10`, `pause: 1m`,
/// `pause: {}`, `analysis: {...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum CanaryStep {
    /// Send this percentage of the live requests (1 to 99) to the new revision; the step is
    /// done once every proxy serves it.
    Weight(u32),
    /// Wait, for a while or until `cutover promote`.
    Pause(Pause),
    /// Judge the new revision by the traffic it gets at the current weight, for a window; a
    /// breach sends every request back to the old revision and rejects the new one.
    Analysis(Analysis),
}

/// How long a `pause` step waits: a duration (`pause: 1m`), or, without one (`pause: {}`),
/// until `cutover promote`, which skips the remaining steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pause {
    pub duration: Option<Duration>,
}

impl Serialize for Pause {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        match self.duration {
            Some(duration) => duration.serialize(serializer),
            None => serializer.serialize_map(Some(0))?.end(),
        }
    }
}

impl<'de> Deserialize<'de> for Pause {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Pause;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 30s, or {} to wait for `cutover promote`")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Pause, E> {
                let duration = text.parse::<Duration>().map_err(E::custom)?;
                Ok(Pause {
                    duration: Some(duration),
                })
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Pause, E> {
                Ok(Pause::default())
            }

            fn visit_none<E: serde::de::Error>(self) -> Result<Pause, E> {
                Ok(Pause::default())
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Pause, A::Error> {
                match map.next_key::<String>()? {
                    None => Ok(Pause::default()),
                    Some(key) => Err(serde::de::Error::unknown_field(&key, &[])),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The settings every release through two colors has (blue/green and canary): see
/// [`Service::release`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Release<'a> {
    /// Switch (or, for a canary, start its steps) as soon as the new color is healthy;
    /// otherwise wait for `cutover promote`. Always true for a canary.
    pub auto_promote: bool,
    /// Replicas of the new color before promotion; `None` means all of `replicas`.
    pub preview_replicas: Option<u32>,
    pub scale_down_delay: Duration,
    pub progress_deadline: Duration,
    pub revision_history_limit: u32,
    /// The bake window after the (full) switch.
    pub analysis: Option<&'a Analysis>,
    /// A canary's steps before the full switch; empty for blue/green.
    pub steps: &'a [CanaryStep],
}

/// Stop every old replica, then start the new ones: a short outage, for services that cannot
/// run two versions at once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recreate {}

/// An accessory such as a database: started once, never colored, kept across rollouts.
/// `Debug` hides env values, as for [`ServiceSpec`].
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SideTarget {
    /// A DNS label; the container is named `<service>-<name>` and reachable by that name.
    pub name: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Named volumes, `NAME:/container/path`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
}

impl fmt::Debug for SideTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SideTarget")
            .field("name", &self.name)
            .field("image", &self.image)
            .field("env", &RedactedEnv(&self.env))
            .field("command", &self.command)
            .field("volumes", &self.volumes)
            .finish()
    }
}

impl Service {
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The `Host` header the health probes send: `spec.health.host`, or the service's name.
    pub fn health_host(&self) -> &str {
        self.spec
            .health
            .host
            .as_deref()
            .unwrap_or(&self.metadata.name)
    }

    /// The blue/green settings, or `None` for the other strategies.
    pub fn blue_green(&self) -> Option<&BlueGreen> {
        match &self.spec.strategy {
            Strategy::BlueGreen(bg) => Some(bg),
            Strategy::Recreate(_) | Strategy::Canary(_) => None,
        }
    }

    /// The canary settings, or `None` for the other strategies.
    pub fn canary(&self) -> Option<&Canary> {
        match &self.spec.strategy {
            Strategy::Canary(canary) => Some(canary),
            Strategy::BlueGreen(_) | Strategy::Recreate(_) => None,
        }
    }

    /// The settings of a release through the other color, shared by blue/green and canary
    /// (previews, drains, rollbacks, aborts and the bake window work the same for both), or
    /// `None` for the recreate strategy.
    pub fn release(&self) -> Option<Release<'_>> {
        match &self.spec.strategy {
            Strategy::BlueGreen(bg) => Some(Release {
                auto_promote: bg.auto_promote,
                preview_replicas: bg.preview_replicas,
                scale_down_delay: bg.scale_down_delay,
                progress_deadline: bg.progress_deadline,
                revision_history_limit: bg.revision_history_limit,
                analysis: bg.analysis.as_ref(),
                steps: &[],
            }),
            Strategy::Canary(canary) => Some(Release {
                auto_promote: true,
                preview_replicas: None,
                scale_down_delay: canary.scale_down_delay,
                progress_deadline: canary.progress_deadline,
                revision_history_limit: canary.revision_history_limit,
                analysis: canary.analysis.as_ref(),
                steps: &canary.steps,
            }),
            Strategy::Recreate(_) => None,
        }
    }

    /// The manifest as YAML, with every default written out.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("a Service always serializes")
    }
}

/// The defaults, in one place so that `docs/manifest.md` can be checked against them.
pub mod defaults {
    use super::Duration;

    pub fn replicas() -> u32 {
        1
    }
    pub fn port() -> u16 {
        80
    }
    pub fn health_path() -> String {
        "/".to_owned()
    }
    pub fn health_interval() -> Duration {
        Duration::from_millis(1000)
    }
    pub fn health_timeout() -> Duration {
        Duration::from_millis(500)
    }
    pub fn healthy_threshold() -> u32 {
        1
    }
    pub fn unhealthy_threshold() -> u32 {
        3
    }
    pub fn start_period() -> Duration {
        Duration::from_millis(0)
    }
    pub fn auto_promote() -> bool {
        true
    }
    pub fn scale_down_delay() -> Duration {
        Duration::from_millis(10_000)
    }
    pub fn progress_deadline() -> Duration {
        Duration::from_millis(120_000)
    }
    pub fn revision_history_limit() -> u32 {
        2
    }
    pub fn analysis_interval() -> Duration {
        Duration::from_millis(250)
    }
    pub fn analysis_min_requests() -> u32 {
        20
    }
    /// `spec.stopSignal` when not written, as Docker's own default.
    pub const STOP_SIGNAL: &str = "SIGTERM";
    pub fn stop_grace_period() -> Duration {
        Duration::from_millis(10_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Env values are where secrets live: no `Debug` output of a spec, a side target or a
    /// stored manifest shows them, so a `?service` in a log line cannot leak one.
    #[test]
    fn debug_output_hides_env_values() {
        let text = "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {name: books}\nspec:\n  \
                    image: books:1\n  env: {DB_PASSWORD: hunter2}\n  sideTargets:\n    - {name: \
                    db, image: mongo:7, env: {ROOT_PASSWORD: swordfish}}\n";
        let service = parse_service("books.yaml", text).unwrap();
        let stored = crate::store::StoredService {
            name: "books".to_owned(),
            key: "cutover/services/books".to_owned(),
            modify_index: 7,
            text: text.to_owned(),
            parsed: Ok(service.clone()),
        };
        for debug in [
            format!("{service:?}"),
            format!("{service:#?}"),
            format!("{stored:?}"),
        ] {
            assert!(debug.contains("DB_PASSWORD"), "{debug}");
            assert!(debug.contains("ROOT_PASSWORD"), "{debug}");
            assert!(!debug.contains("hunter2"), "{debug}");
            assert!(!debug.contains("swordfish"), "{debug}");
        }
    }
}
