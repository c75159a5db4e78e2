//! The HAProxy adapter: keeps a real HAProxy in line with cutover's route table, with zero
//! failed requests while colors switch, replicas come and go and the configuration changes.
//!
//! The controller fills a [`ServiceRoutes`] per service (plain data: routes, live and
//! preview color, the address and state of each replica slot) and calls [`Proxy::apply`].
//! The adapter decides how to get there:
//!
//! - **Runtime API only** when the shape of the configuration is unchanged (same services,
//!   routes, ports, slot counts and health paths): a switch is `set map` on the route maps,
//!   a scale or a drain is `set server ... addr/state`. No process restarts, nothing is
//!   re-read.
//! - **A validated, seamless reload** otherwise: the new configuration and maps are checked
//!   with `haproxy -c` in a staging directory first (a bad configuration is never loaded and
//!   HAProxy's message is returned), then written, then the master is asked to reload; the
//!   new worker inherits the listening sockets (`expose-fd listeners`), so no connection is
//!   refused, and the old worker finishes its requests.
//!
//! Either way, the files always describe the whole table (servers with their addresses,
//! maps with their current colors), so a reload or a restart comes back to the same state
//! without replaying anything.
//!
//! In supervised mode the adapter also owns its state directory (an exclusive lock file,
//! `cutover.lock`, held for the life of the `Proxy`: one daemon per directory) and brings a
//! master that died back from those files ([`Proxy::supervise`], called every
//! [`SUPERVISE_EVERY`] by the daemon, leader or not).
//!
//! What it must not do: know anything about Docker or Consul, or stop HAProxy when the
//! daemon stops: the master runs in its own session and survives us, and a new daemon
//! adopts it. See `docs/traffic.md`.

mod process;
pub mod render;
pub mod runtime;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::observed::{Container, Role};
use crate::spec::Route;
use crate::status::Color;

pub use render::{
    Listener, MapKind, TableError, backend_name, render, render_maps, server_name,
    split_backend_name, split_server_name,
};
use runtime::Channel;

/// How one service is routed: plain data the controller fills.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRoutes {
    /// Path prefix and/or host routes; a route with neither matches every path.
    pub routes: Vec<Route>,
    /// The color the live listener sends traffic to; `None`: the routes answer 503.
    pub live: Option<Color>,
    /// The color the preview listener sends traffic to; `None`: the live color.
    pub preview: Option<Color>,
    /// The port the replicas listen on, for a color without its own [`Check`].
    pub port: u16,
    /// The path HAProxy's health check requests (`GET`, expects 2xx or 3xx), for a color
    /// without its own [`Check`].
    pub health_path: String,
    /// How each color is reached and checked, from the revision it runs: a release that
    /// moves the port or the health path never changes how the live color is checked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<Color, Check>,
    /// Server slots per color (see [`slots_for`]); changing it needs a reload.
    pub slots: u32,
    /// The known servers of each color, by slot (1-based). A slot not listed is in
    /// maintenance.
    pub servers: BTreeMap<Color, Vec<Server>>,
    /// A weighted canary in force: the live routes send `percent` of the requests to
    /// `color` and the rest to `live`, through the service's split backend. Only
    /// [`ServiceRoutes::active_split`] counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
}

/// A share of the live requests for the color that is not live (a canary step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// The color that gets `percent` of the requests; the live color gets the rest.
    pub color: Color,
    /// 1 to 99.
    pub percent: u32,
}

/// How one color's servers are reached and checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// The port the replicas listen on.
    pub port: u16,
    /// The path of the health check (`GET`, expects 2xx or 3xx).
    pub path: String,
    /// The `Host` header of the health check.
    pub host: String,
    /// The revision's `health` timing: interval, timeout and thresholds; `None` for the
    /// daemon's defaults (`Settings::check_interval`, rise and fall 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<CheckTiming>,
}

/// HAProxy's check timing of one color, from its revision's `health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckTiming {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Successes in a row that make a server UP (`healthyThreshold`).
    pub rise: u32,
    /// Failures in a row that make it DOWN (`unhealthyThreshold`).
    pub fall: u32,
}

impl CheckTiming {
    pub fn from_health(health: &crate::spec::Health) -> CheckTiming {
        CheckTiming {
            interval_ms: health.interval.as_millis().max(1),
            timeout_ms: health.timeout.as_millis().max(1),
            rise: health.healthy_threshold.max(1),
            fall: health.unhealthy_threshold.max(1),
        }
    }
}

impl ServiceRoutes {
    /// The split the live routes follow: a [`Split`] of 1 to 99 percent for the color that
    /// is not live, while a color is live. Anything else is no split at all (the live
    /// routes go to the live color's backend).
    pub fn active_split(&self) -> Option<Split> {
        let live = self.live?;
        self.split
            .filter(|s| s.color != live && (1..=99).contains(&s.percent))
    }

    /// How `color` of `service` is reached and checked: its own [`Check`], else the
    /// service-wide port and path with the service's name as `Host`.
    pub fn check(&self, service: &str, color: Color) -> Check {
        self.checks.get(&color).cloned().unwrap_or_else(|| Check {
            port: self.port,
            path: self.health_path.clone(),
            host: service.to_owned(),
            timing: None,
        })
    }
}

/// One replica in a backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    /// 1..=slots; the replica's slot in its color.
    pub slot: u32,
    /// An IP address (a host name is resolved once, when the configuration loads).
    pub address: String,
    pub state: ServerState,
}

/// What HAProxy may do with a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// Takes new requests (once its health check passes).
    Ready,
    /// Finishes what it has, takes nothing new.
    Drain,
    /// Takes nothing; its container may be stopped once its sessions reached 0.
    Maint,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Ready => "ready",
            ServerState::Drain => "drain",
            ServerState::Maint => "maint",
        }
    }
}

/// Slots per color for a replica count: room to double, at least 4, in steps of 4, so that
/// scaling (and a rollout of a bigger color) rarely changes the shape and needs a reload.
pub fn slots_for(replicas: u32) -> u32 {
    replicas.saturating_mul(2).max(4).next_multiple_of(4)
}

impl ServiceRoutes {
    /// The servers of `containers` (this service's, as observed): every running replica in
    /// a color slot with an address, `Ready` if it passed its health check and `Maint`
    /// otherwise. Archived replicas and side targets are left out. The controller marks
    /// servers `Drain` itself when it retires them.
    pub fn servers_from(containers: &[Container]) -> BTreeMap<Color, Vec<Server>> {
        let mut servers: BTreeMap<Color, Vec<Server>> = BTreeMap::new();
        for c in containers {
            let Role::Replica { color, slot } = c.role else {
                continue;
            };
            if c.is_archived() || !c.running {
                continue;
            }
            let Some(address) = &c.address else { continue };
            servers.entry(color).or_default().push(Server {
                slot,
                address: address.clone(),
                state: if c.ready {
                    ServerState::Ready
                } else {
                    ServerState::Maint
                },
            });
        }
        for list in servers.values_mut() {
            list.sort_by_key(|s| s.slot);
        }
        servers
    }
}

/// An HAProxy someone else runs: we write the configuration and maps where told and use
/// its sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct External {
    /// Its Runtime API socket (`stats socket ... level admin`), `--haproxy-socket`.
    pub runtime_socket: PathBuf,
    /// Where its configuration file is, `--haproxy-config`.
    pub config: PathBuf,
    /// Its master CLI socket, if it runs in master-worker mode with `-S`: then we reload
    /// it ourselves; otherwise a changed configuration waits for the operator's reload.
    pub master_socket: Option<PathBuf>,
}

/// How often the daemon asks [`Proxy::supervise`] to look at its HAProxy master, so a
/// master that died (or whose worker died, which takes the master with it) is noticed
/// within this, plus the restart.
pub const SUPERVISE_EVERY: Duration = Duration::from_millis(250);

/// How long [`Proxy::supervise`] waits for an answer on the master socket once the known
/// master is gone, so the adapter's lock is not held for the full command timeout.
const SUPERVISE_PATIENCE: Duration = Duration::from_secs(2);

/// The lock file in the state directory: held by the daemon that owns the directory, with
/// that daemon's pid inside.
pub const LOCK_FILE: &str = "cutover.lock";

/// How to run or reach HAProxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The `haproxy` binary.
    pub haproxy: PathBuf,
    /// The state directory: map files, the route table (`routes.json`), staging; in
    /// supervised mode also `haproxy.cfg`, `admin.sock`, `master.sock`, `haproxy.pid`
    /// and `haproxy.log`.
    pub dir: PathBuf,
    /// `--http-bind`, the live listener (`127.0.0.1:8080`, `:80`, ...).
    pub http_bind: String,
    /// `--preview-bind`, the preview listener.
    pub preview_bind: Option<String>,
    /// `None`: supervise our own HAProxy.
    pub external: Option<External>,
    pub maxconn: u32,
    /// How long an old worker may finish its connections after a reload.
    pub hard_stop_after: Duration,
    pub timeout_connect: Duration,
    pub timeout_client: Duration,
    pub timeout_server: Duration,
    pub check_interval: Duration,
}

impl Settings {
    /// Supervised mode with sane defaults.
    pub fn new(dir: impl Into<PathBuf>, http_bind: impl Into<String>) -> Settings {
        Settings {
            haproxy: PathBuf::from("haproxy"),
            dir: dir.into(),
            http_bind: http_bind.into(),
            preview_bind: None,
            external: None,
            maxconn: 4096,
            hard_stop_after: Duration::from_secs(30),
            timeout_connect: Duration::from_secs(2),
            timeout_client: Duration::from_secs(30),
            timeout_server: Duration::from_secs(30),
            check_interval: Duration::from_secs(1),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        match &self.external {
            Some(e) => e.config.clone(),
            None => self.dir.join("haproxy.cfg"),
        }
    }

    pub fn runtime_socket(&self) -> PathBuf {
        match &self.external {
            Some(e) => e.runtime_socket.clone(),
            None => self.dir.join("admin.sock"),
        }
    }

    pub fn master_socket(&self) -> Option<PathBuf> {
        match &self.external {
            Some(e) => e.master_socket.clone(),
            None => Some(self.dir.join("master.sock")),
        }
    }

    fn table_path(&self) -> PathBuf {
        self.dir.join("routes.json")
    }

    fn channel(&self) -> Channel {
        match self.master_socket() {
            Some(master) => Channel::Master(master),
            None => Channel::Admin(self.runtime_socket()),
        }
    }
}

/// Everything that can go wrong, each with what a reader needs to act.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid route table: {0}")]
    InvalidTable(#[from] TableError),
    #[error("HAProxy rejected the configuration {config}: {message}")]
    Rejected { config: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("HAProxy did not start: {reason}")]
    Start { reason: String },
    #[error("HAProxy socket {socket}, command `{command}`: {source}")]
    Socket {
        socket: PathBuf,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HAProxy socket {socket}, command `{command}` failed: {reply}")]
    Command {
        socket: PathBuf,
        command: String,
        reply: String,
    },
    #[error("HAProxy reload through {master} failed: {reason}")]
    Reload { master: PathBuf, reason: String },
    #[error(
        "HAProxy's checks do not see every replica of {service}'s {color} color UP; not switching (the live color keeps serving)"
    )]
    NotUp { service: String, color: Color },
    #[error("cannot read the route table {path}: {reason}")]
    Table { path: PathBuf, reason: String },
    #[error(
        "the HAProxy state directory {} is in use by another cutover daemon ({}); \
         give each daemon on this host its own directory with --haproxy-dir",
        dir.display(),
        holder.map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"))
    )]
    DirInUse { dir: PathBuf, holder: Option<u32> },
}

/// What [`Proxy::apply`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// The configuration changed shape and HAProxy was reloaded.
    pub reloaded: bool,
    /// The configuration changed shape but nobody can reload it (external mode without a
    /// master socket): the files are written, the operator must reload HAProxy.
    pub reload_required: bool,
    /// Runtime API commands sent.
    pub runtime_calls: u32,
    /// The supervised master was found dead and started again from the files first.
    pub restarted: bool,
}

/// What one look at the supervised HAProxy ([`Proxy::supervise`]) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Supervision {
    /// External mode: someone else runs HAProxy, there is nothing to supervise.
    NotOurs,
    /// The master's process runs.
    Running,
    /// The master was gone (dead, or a zombie); a new one was started from the files.
    Restarted,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyMetrics {
    pub reloads: u64,
    pub runtime_calls: u64,
    /// Configurations `haproxy -c` refused.
    pub rejected_configs: u64,
    /// HAProxy masters started (not adopted).
    pub starts: u64,
    /// HAProxy masters found running and adopted.
    pub adoptions: u64,
    /// Masters started again after the running one died (supervised mode).
    pub restarts: u64,
}

/// The adapter: the table, and what we know the running HAProxy has.
#[derive(Debug)]
pub struct Proxy {
    settings: Settings,
    /// The desired table; the files on disk always render it.
    table: BTreeMap<String, ServiceRoutes>,
    /// The shape of the configuration HAProxy runs; `None`: unknown.
    loaded: Option<BTreeMap<String, render::Shape>>,
    /// The shapes of the last configuration `haproxy -c` accepted.
    validated: Option<BTreeMap<String, render::Shape>>,
    /// Per service, what the running HAProxy's runtime state is; absent: unknown, the next
    /// apply sets everything.
    runtime: BTreeMap<String, ServiceRoutes>,
    metrics: ProxyMetrics,
    /// The master we started or adopted (its pid as `show proc` reported it).
    master: Option<process::Identity>,
    /// `<dir>/cutover.lock`, locked exclusively: the directory is ours while it is open.
    _dir_lock: std::fs::File,
}

impl Proxy {
    /// Starts HAProxy, or adopts the one already running on this state directory.
    ///
    /// The table is read back from `<dir>/routes.json` (empty on a fresh directory), so a
    /// daemon restarted after a crash serves what it served before until the controller
    /// applies again.
    ///
    /// # Guarantees
    /// - Before anything is read or written, `<dir>/cutover.lock` is locked exclusively (and
    ///   this daemon's pid written into it) for the life of the `Proxy`: a second daemon on
    ///   the same directory gets [`ProxyError::DirInUse`] and changes nothing. The OS
    ///   releases the lock when the process dies, also on `kill -9`.
    /// - Supervised: if `<dir>/master.sock` answers, the running master is adopted (never a
    ///   second HAProxy), reloaded once, seamlessly, if it runs other files, and the first
    ///   apply of each service sends its whole runtime state again, so that a change the
    ///   dead daemon wrote but never sent is not lost. Otherwise a master is started in its
    ///   own session; it is never stopped by dropping the `Proxy`.
    /// - External: nothing is started; the files are written, and the running HAProxy is
    ///   reloaded through its master socket if one is given.
    ///
    /// # Errors
    /// The directory locked by another daemon, a table file that does not parse, a
    /// configuration HAProxy rejects, a master that does not come up.
    pub async fn start(settings: Settings) -> Result<Proxy, ProxyError> {
        create_dir(&settings.dir)?;
        let dir_lock = lock_dir(&settings.dir).await?;
        let table_path = settings.table_path();
        let table = match std::fs::read(&table_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ProxyError::Table {
                path: table_path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(ProxyError::Io {
                    path: table_path,
                    source,
                });
            }
        };
        let mut proxy = Proxy {
            settings,
            table,
            loaded: None,
            validated: None,
            runtime: BTreeMap::new(),
            metrics: ProxyMetrics::default(),
            master: None,
            _dir_lock: dir_lock,
        };
        let table = proxy.table.clone();
        // What the running HAProxy (if any) was last given.
        let previous_config = std::fs::read_to_string(proxy.settings.config_path()).ok();
        proxy.write_files(&table).await?;
        match proxy.settings.master_socket() {
            Some(master) => {
                if let Some(processes) = process::show_proc(&master).await {
                    tracing::info!(master = %master.display(), "adopting the running HAProxy");
                    proxy.metrics.adoptions += 1;
                    proxy.master = process::Identity::of(processes.master_pid);
                    if previous_config.as_deref() == Some(&render(&proxy.settings, &table)) {
                        // It runs the shape of these very files: no reload. Its runtime
                        // state, though, is unknown: a daemon killed between writing the
                        // files and sending the commands left that change unsent. So the
                        // first apply of each service sends every slot and map entry
                        // again; HAProxy ignores a command that changes nothing (an
                        // address it already has does not restart the server's checks).
                        proxy.loaded = Some(render::shapes(&proxy.table));
                    } else {
                        proxy.reload(&master).await?;
                    }
                } else if proxy.settings.external.is_none() {
                    proxy.launch().await?;
                } else {
                    return Err(ProxyError::Reload {
                        master,
                        reason: "the master socket of the external HAProxy does not answer".into(),
                    });
                }
            }
            None => {
                // External without a master: assume the operator loaded these files.
                proxy.loaded = Some(render::shapes(&proxy.table));
            }
        }
        Ok(proxy)
    }

    /// Starts a master from the files. The servers' saved state (`server-state`) is removed
    /// first: it was saved at the last reload, and runtime changes since then (addresses in
    /// particular) are only in the configuration.
    async fn launch(&mut self) -> Result<(), ProxyError> {
        let state = self.settings.dir.join(render::SERVER_STATE_FILE);
        if let Err(source) = std::fs::remove_file(&state)
            && source.kind() != std::io::ErrorKind::NotFound
        {
            return Err(ProxyError::Io {
                path: state,
                source,
            });
        }
        let processes = process::start(&self.settings, &self.settings.config_path()).await?;
        tracing::info!(master_pid = processes.master_pid, "HAProxy started");
        self.metrics.starts += 1;
        self.master = process::Identity::of(processes.master_pid);
        self.loaded = Some(render::shapes(&self.table));
        self.runtime = self.table.clone();
        Ok(())
    }

    async fn reload(&mut self, master: &Path) -> Result<(), ProxyError> {
        // Carry the servers' health over to the new worker (see `server-state-file`).
        if let Ok(state) = self.command("show servers state").await {
            let path = self.settings.dir.join(render::SERVER_STATE_FILE);
            std::fs::write(&path, render::server_state_for_reload(&state, &self.table))
                .map_err(|source| ProxyError::Io { path, source })?;
        }
        let processes = process::reload(master).await?;
        self.master = process::Identity::of(processes.master_pid);
        tracing::info!(
            reloads = processes.reloads,
            "HAProxy reloaded with a new configuration"
        );
        self.metrics.reloads += 1;
        self.loaded = Some(render::shapes(&self.table));
        self.runtime = self.table.clone();
        Ok(())
    }

    /// Brings one service's routes to `routes`.
    ///
    /// # Guarantees
    /// - The table is checked ([`render::check_table`]) and the whole configuration passes
    ///   `haproxy -c` before anything is written or sent: a rejected change leaves files
    ///   and HAProxy as they were.
    /// - Same shape: Runtime API commands only, ordered so that servers become ready
    ///   before routes point at them and leave only after routes stopped pointing at them.
    /// - Different shape: one seamless reload; no runtime command is needed after it.
    ///
    /// # Caveats
    /// A failed runtime command leaves the service half-applied; the adapter then forgets
    /// what HAProxy has for it, and the next apply sets every slot and map entry again.
    pub async fn apply(
        &mut self,
        service: &str,
        routes: &ServiceRoutes,
    ) -> Result<ApplyOutcome, ProxyError> {
        let mut table = self.table.clone();
        table.insert(service.to_owned(), routes.clone());
        self.change(table, Some(service)).await
    }

    /// Removes a service's routes and backends (a reload). Removing an unknown service
    /// does nothing.
    pub async fn remove(&mut self, service: &str) -> Result<ApplyOutcome, ProxyError> {
        if !self.table.contains_key(service) {
            return Ok(ApplyOutcome::default());
        }
        let mut table = self.table.clone();
        table.remove(service);
        self.runtime.remove(service);
        self.change(table, None).await
    }

    async fn change(
        &mut self,
        table: BTreeMap<String, ServiceRoutes>,
        service: Option<&str>,
    ) -> Result<ApplyOutcome, ProxyError> {
        render::check_table(&table)?;
        let mut outcome = ApplyOutcome {
            restarted: self.supervise().await? == Supervision::Restarted,
            ..ApplyOutcome::default()
        };
        if table == self.table
            && service.is_none_or(|s| self.runtime.get(s) == table.get(s))
            && self.loaded.as_ref() == Some(&render::shapes(&table))
        {
            return Ok(outcome);
        }
        self.write_files(&table).await?;
        self.table = table;
        if self.loaded.as_ref() != Some(&render::shapes(&self.table)) {
            match self.settings.master_socket() {
                Some(master) => {
                    self.reload(&master).await?;
                    outcome.reloaded = true;
                    return Ok(outcome);
                }
                None => {
                    tracing::warn!(config = %self.settings.config_path().display(),
                        "the HAProxy configuration changed shape; reload HAProxy to load it");
                    outcome.reload_required = true;
                    self.loaded = Some(render::shapes(&self.table));
                    if let Some(s) = service {
                        self.runtime.remove(s);
                    }
                }
            }
        }
        let Some(service) = service else {
            return Ok(outcome);
        };
        let new = self.table[service].clone();
        let old = self.runtime.get(service);
        let actual = match old {
            Some(_) => None,
            None => self.color_server_addresses(service).await,
        };
        let commands =
            render::runtime_commands(&self.settings, service, old, &new, actual.as_ref());
        self.runtime.remove(service);
        let channel = self.settings.channel();
        for command in &commands {
            self.metrics.runtime_calls += 1;
            outcome.runtime_calls += 1;
            runtime::execute(channel.socket(), &channel.wrap(command))
                .await
                .map_err(|e| match e {
                    ProxyError::Command { socket, reply, .. }
                        if reply.contains("No such backend") || reply.contains("Unknown map") =>
                    {
                        ProxyError::Command {
                            socket,
                            command: command.clone(),
                            reply: format!(
                                "{reply} (HAProxy has not loaded {} yet: reload it)",
                                self.settings.config_path().display()
                            ),
                        }
                    }
                    other => other,
                })?;
        }
        self.runtime.insert(service.to_owned(), new);
        tracing::debug!(
            service,
            calls = commands.len(),
            "HAProxy runtime state updated"
        );
        Ok(outcome)
    }

    /// Supervised mode: looks at the master once and, if it is gone, starts a new one from
    /// the files (which always describe the whole table, so it comes back with the current
    /// routes, servers and colors). The daemon calls it every [`SUPERVISE_EVERY`], leader or
    /// follower; every apply calls it first.
    ///
    /// A look costs one small read in `/proc` (the master's pid and start time do not
    /// change when it reloads: it re-executes itself in place); HAProxy is asked nothing
    /// unless that process is gone.
    ///
    /// # Guarantees
    /// - A master is started only when the master we started or adopted is gone (or a
    ///   zombie) **and** nothing answers on the master socket (a master someone else
    ///   started there is adopted instead): one directory never gets a second master.
    /// - A worker that dies takes its master down with it in HAProxy 2.6 (`master-worker`
    ///   without `no-exit-on-failure`: the master stops every other worker and exits; it
    ///   never forks a new worker by itself), so a `kill -9` of the worker is recovered by
    ///   the same restart.
    /// - The servers' saved state (`server-state`) is not loaded by a restarted master
    ///   (see `launch`).
    ///
    /// # Errors
    /// The files cannot be written or HAProxy does not start (a port taken by another
    /// process, for example); the next call tries again.
    pub async fn supervise(&mut self) -> Result<Supervision, ProxyError> {
        if self.settings.external.is_some() {
            return Ok(Supervision::NotOurs);
        }
        if self.master.is_some_and(|m| m.is_running()) {
            return Ok(Supervision::Running);
        }
        let gone = self.master.map(|m| m.pid);
        let socket = self.settings.dir.join("master.sock");
        if let Ok(Some(processes)) =
            tokio::time::timeout(SUPERVISE_PATIENCE, process::show_proc(&socket)).await
            && let Some(master) = process::Identity::of(processes.master_pid)
        {
            tracing::info!(
                master_pid = master.pid,
                "an HAProxy master answers on our socket; adopting it"
            );
            self.master = Some(master);
            return Ok(Supervision::Running);
        }
        tracing::warn!(
            master_pid = gone,
            "HAProxy's master is gone; starting it again from the files"
        );
        let table = self.table.clone();
        self.write_files(&table).await?;
        self.launch().await?;
        self.metrics.restarts += 1;
        Ok(Supervision::Restarted)
    }

    /// Current sessions and queued requests on a service's color backend, summed over every
    /// worker (old workers finishing their connections after a reload included, when the
    /// master socket is known). 0 means the color's containers can stop without cutting a
    /// request.
    pub async fn sessions(&self, service: &str, color: Color) -> Result<u32, ProxyError> {
        let backend = backend_name(service, color);
        let split = split_backend_name(service);
        self.count_sessions(|row| {
            (row.proxy == backend && row.name == "BACKEND")
                || (row.proxy == split && render::split_server_slot(&row.name, color).is_some())
        })
        .await
    }

    /// Like [`Proxy::sessions`], for one slot: what to wait for before stopping one replica
    /// when scaling down. Its server in the split backend (a canary's share) counts too.
    pub async fn server_sessions(
        &self,
        service: &str,
        color: Color,
        slot: u32,
    ) -> Result<u32, ProxyError> {
        let backend = backend_name(service, color);
        let server = server_name(slot);
        let split = split_backend_name(service);
        let split_server = split_server_name(color, slot);
        self.count_sessions(|row| {
            (row.proxy == backend && row.name == server)
                || (row.proxy == split && row.name == split_server)
        })
        .await
    }

    async fn count_sessions(
        &self,
        matches: impl Fn(&runtime::StatRow) -> bool,
    ) -> Result<u32, ProxyError> {
        let mut replies = Vec::new();
        match self.settings.master_socket() {
            Some(master) => {
                let processes =
                    process::show_proc(&master)
                        .await
                        .ok_or_else(|| ProxyError::Socket {
                            socket: master.clone(),
                            command: "show proc".into(),
                            source: std::io::Error::other("no valid reply"),
                        })?;
                for worker in &processes.workers {
                    let command = format!("@!{} show stat", worker.pid);
                    match runtime::send(&master, &command).await {
                        Ok(reply) => replies.push(reply),
                        // An old worker may exit between `show proc` and now.
                        Err(_) if !worker.current => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            None => {
                replies.push(runtime::send(&self.settings.runtime_socket(), "show stat").await?)
            }
        }
        Ok(replies
            .iter()
            .flat_map(|r| runtime::parse_show_stat(r))
            .filter(|row| matches(row))
            .map(|row| row.scur + row.qcur)
            .sum())
    }

    /// The traffic counters of every color of the table on the current worker, by service
    /// and color (one `show stat`): each color's rows are its backend's `BACKEND` row and
    /// its servers in the split backend (a canary's share of the live requests).
    pub async fn backend_counters(
        &self,
    ) -> Result<BTreeMap<(String, Color), runtime::ColorCounters>, ProxyError> {
        let rows = runtime::parse_show_stat(&self.command("show stat").await?);
        let mut counters: BTreeMap<(String, Color), runtime::ColorCounters> = BTreeMap::new();
        for row in rows {
            let Some((service, kind)) = row
                .proxy
                .strip_prefix("be_")
                .and_then(|b| b.rsplit_once('_'))
            else {
                continue;
            };
            let color = match (kind, row.name.as_str()) {
                ("split", name) => [Color::Blue, Color::Green]
                    .into_iter()
                    .find(|c| render::split_server_slot(name, *c).is_some()),
                (color, "BACKEND") => Color::parse(color),
                _ => None,
            };
            let Some(color) = color.filter(|_| self.table.contains_key(service)) else {
                continue;
            };
            counters
                .entry((service.to_owned(), color))
                .or_default()
                .insert(format!("{}/{}", row.proxy, row.name), row.counters);
        }
        Ok(counters)
    }

    /// Per service and color, the server slots HAProxy's own checks see UP on the current
    /// worker (see [`runtime::StatRow::checked_up`]).
    pub async fn servers_up_all(
        &self,
    ) -> Result<BTreeMap<String, BTreeMap<Color, std::collections::BTreeSet<u32>>>, ProxyError>
    {
        let rows = runtime::parse_show_stat(&self.command("show stat").await?);
        let mut up: BTreeMap<String, BTreeMap<Color, std::collections::BTreeSet<u32>>> =
            BTreeMap::new();
        for row in rows.iter().filter(|r| r.checked_up()) {
            let Some((service, color)) = row
                .proxy
                .strip_prefix("be_")
                .and_then(|b| b.rsplit_once('_'))
            else {
                continue;
            };
            let (Some(color), Some(slot)) = (
                Color::parse(color),
                row.name.strip_prefix('s').and_then(|n| n.parse().ok()),
            ) else {
                continue;
            };
            if self.table.contains_key(service) {
                up.entry(service.to_owned())
                    .or_default()
                    .entry(color)
                    .or_default()
                    .insert(slot);
            }
        }
        Ok(up)
    }

    /// The addresses HAProxy has for the servers of `service`'s two color backends (only
    /// those: after an adoption every service asks once), `None` if it cannot be asked.
    async fn color_server_addresses(&self, service: &str) -> Option<render::ServerAddresses> {
        let mut addresses = render::ServerAddresses::new();
        for color in [Color::Blue, Color::Green] {
            let backend = backend_name(service, color);
            let command = runtime::command::show_servers_state(Some(&backend));
            let state = self.command(&command).await.ok()?;
            addresses.extend(render::server_addresses(&state));
        }
        Some(addresses)
    }

    /// Runs a raw Runtime API command on the current worker and returns its reply (for
    /// `show servers state`, `show map`, diagnostics).
    pub async fn command(&self, command: &str) -> Result<String, ProxyError> {
        let channel = self.settings.channel();
        runtime::send(channel.socket(), &channel.wrap(command)).await
    }

    /// The master's pid and its workers (supervised mode, or external with a master).
    pub async fn processes(&self) -> Option<runtime::Processes> {
        process::show_proc(&self.settings.master_socket()?).await
    }

    pub fn metrics(&self) -> ProxyMetrics {
        self.metrics
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The services in the table: the controller removes those it no longer has.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.table.keys().map(String::as_str)
    }

    /// The routes of a service as last applied.
    pub fn routes(&self, service: &str) -> Option<&ServiceRoutes> {
        self.table.get(service)
    }

    /// Stops the supervised HAProxy (SIGTERM to its master). Dropping a `Proxy` never does.
    pub async fn stop(self) -> Result<(), ProxyError> {
        if self.settings.external.is_some() {
            return Ok(());
        }
        process::stop(&self.settings.dir.join("master.sock")).await
    }

    /// Renders the table, checks it in `<dir>/staging` with `haproxy -c`, then moves the
    /// maps, the configuration and `routes.json` into place (each by an atomic rename).
    async fn write_files(
        &mut self,
        table: &BTreeMap<String, ServiceRoutes>,
    ) -> Result<(), ProxyError> {
        // A configuration of a shape `haproxy -c` accepted that differs from it only in
        // server states and IP addresses cannot fail: no need to fork HAProxy again (it takes
        // tens of milliseconds, on every scale or switch). Anything else, a host name
        // included, is HAProxy's to judge.
        let shapes = render::shapes(table);
        let only_ips = table.values().all(|routes| {
            (routes.servers.values().flatten())
                .all(|server| server.address.parse::<std::net::IpAddr>().is_ok())
        });
        if only_ips && self.validated.as_ref() == Some(&shapes) {
            for (name, text) in &render_maps(table) {
                write_atomically(&self.settings.dir.join(name), text)?;
            }
            write_atomically(&self.settings.config_path(), &render(&self.settings, table))?;
            let json = serde_json::to_string_pretty(table).expect("the table serializes");
            return write_atomically(&self.settings.table_path(), &json);
        }
        let staging_dir = self.settings.dir.join("staging");
        create_dir(&staging_dir)?;
        let staging = Settings {
            dir: staging_dir.clone(),
            ..self.settings.clone()
        };
        let maps = render_maps(table);
        for (name, text) in &maps {
            write(&staging_dir.join(name), text)?;
        }
        let staged_config = staging_dir.join("haproxy.cfg");
        write(&staged_config, &render(&staging, table))?;
        if let Err(e) = process::check_config(&self.settings, &staged_config).await {
            self.metrics.rejected_configs += 1;
            return Err(e);
        }
        for (name, text) in &maps {
            write_atomically(&self.settings.dir.join(name), text)?;
        }
        write_atomically(&self.settings.config_path(), &render(&self.settings, table))?;
        let json = serde_json::to_string_pretty(table).expect("the table serializes");
        write_atomically(&self.settings.table_path(), &json)?;
        self.validated = Some(shapes);
        Ok(())
    }
}

/// Locks `<dir>/cutover.lock` exclusively and writes our pid into it; the lock lasts as long
/// as the returned file is open (the OS drops it when the process dies). When another
/// process holds it, its pid is read from the file (waiting a moment for a daemon that
/// locked it but has not written its pid yet).
async fn lock_dir(dir: &Path) -> Result<std::fs::File, ProxyError> {
    use std::io::{Read as _, Seek as _, Write as _};
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join(LOCK_FILE);
    let io_error = |source| ProxyError::Io {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_error)?;
    // flock(2): tied to this open file, so HAProxy (started without our descriptors: std
    // opens files close-on-exec) never holds it, and the OS drops it when we die.
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {
            file.set_len(0).map_err(io_error)?;
            file.rewind().map_err(io_error)?;
            writeln!(file, "{}", std::process::id()).map_err(io_error)?;
            Ok(file)
        }
        Err(errno) if errno == rustix::io::Errno::WOULDBLOCK => {
            let mut holder = None;
            for _ in 0..20 {
                let mut text = String::new();
                file.rewind().map_err(io_error)?;
                file.read_to_string(&mut text).map_err(io_error)?;
                holder = text.trim().parse().ok();
                if holder.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(ProxyError::DirInUse {
                dir: dir.to_owned(),
                holder,
            })
        }
        Err(errno) => Err(io_error(errno.into())),
    }
}

fn create_dir(dir: &Path) -> Result<(), ProxyError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| ProxyError::Io {
            path: dir.to_owned(),
            source,
        })
}

fn write(path: &Path, text: &str) -> Result<(), ProxyError> {
    std::fs::write(path, text).map_err(|source| ProxyError::Io {
        path: path.to_owned(),
        source,
    })
}

fn write_atomically(path: &Path, text: &str) -> Result<(), ProxyError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    write(&tmp, text)?;
    std::fs::rename(&tmp, path).map_err(|source| ProxyError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests;
