//! `cutover run`: the daemon.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::{CliError, Context, parse_duration};
use std::path::PathBuf;

use super::proxy::LocalProxy;
use crate::controller::{Controller, Settings};
use crate::docker::{DEFAULT_NETWORK, Docker, Scope};
use crate::haproxy;
use crate::http;
use crate::metrics::Metrics;
use crate::queue::retry_delay;
use crate::security::Allowances;

const EXAMPLES: &str = "\
Examples:
  cutover run
  cutover run --leader-ttl 30s --lock-delay 30s
  CONSUL_HTTP_ADDR=10.0.0.5:8500 cutover run --network web --workers 8
  RUST_LOG=cutover=debug cutover run
  cutover run --listen 0.0.0.0:9090 --log-format json";

/// Run the controller: converge Docker toward the specs in Consul until SIGTERM or Ctrl-C.
///
/// Several daemons may run on one prefix: a Consul lock on `<prefix>/leader` elects the one
/// that acts; the others wait to take over. Stopping the daemon leaves every container
/// running and hands the lock over at once.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The user-defined Docker network the replicas join (created if missing).
    #[arg(long, env = "CUTOVER_NETWORK", default_value = DEFAULT_NETWORK)]
    pub network: String,
    /// The label value that marks this installation's containers [default: the prefix].
    #[arg(long, env = "CUTOVER_INSTANCE")]
    pub instance: Option<String>,
    /// How many services are reconciled at once.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Reconcile every service at least this often (jittered).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub resync: Duration,
    /// The TTL of the leader's Consul session (10s to 24h), renewed every half of it. A leader
    /// that cannot renew steps down after three quarters of it.
    #[arg(long, env = "CUTOVER_LEADER_TTL", default_value = "15s", value_parser = parse_leader_ttl)]
    pub leader_ttl: Duration,
    /// How long Consul keeps the lock from everyone after a leader's session was lost (at
    /// most 60s), so that a leader that only seemed dead has stopped before another starts.
    #[arg(long, env = "CUTOVER_LOCK_DELAY", default_value = "15s", value_parser = parse_lock_delay)]
    pub lock_delay: Duration,
    /// Remove the containers of services whose specs vanished en masse without waiting
    /// for `cutover prune --confirm`.
    #[arg(long)]
    pub allow_mass_deletion: bool,
    /// Remove labelled containers of services that have neither a spec nor a status.
    #[arg(long)]
    pub prune_orphans: bool,
    /// Where the HTTP endpoints listen (/healthz, /readyz, /metrics, /api/v1/services, the
    /// status page). They have no authentication: keep them on loopback unless a firewall
    /// or a proxy guards them. Port 0 picks a free port (logged at start).
    #[arg(
        long,
        value_name = "ADDR",
        env = "CUTOVER_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub allow: AllowArgs,
    #[command(flatten)]
    pub proxy: ProxyArgs,
}

/// The daemon's `--allow-*` flags, which decide whether a privileged spec may run.
#[derive(Debug, Clone, clap::Args)]
pub struct AllowArgs {
    /// Run replicas of specs with `privileged: true` (otherwise such a spec is refused with
    /// ForbiddenBySecurityPolicy and nothing of it runs).
    #[arg(long, env = "CUTOVER_ALLOW_PRIVILEGED")]
    pub allow_privileged: bool,
    /// Run replicas of specs with `networkMode: host`.
    #[arg(long, env = "CUTOVER_ALLOW_HOST_NETWORK")]
    pub allow_host_network: bool,
    /// Run replicas of specs with `capAdd`.
    #[arg(long, env = "CUTOVER_ALLOW_CAP_ADD")]
    pub allow_cap_add: bool,
    /// Run replicas of specs whose `volumes` mount host paths.
    #[arg(long, env = "CUTOVER_ALLOW_HOST_MOUNTS")]
    pub allow_host_mounts: bool,
    /// Let specs mount named volumes that belong to another service, another installation
    /// or no cutover service at all (otherwise such a mount fails with
    /// ForbiddenBySecurityPolicy).
    #[arg(long, env = "CUTOVER_ALLOW_SHARED_VOLUMES")]
    pub allow_shared_volumes: bool,
}

impl AllowArgs {
    /// What the flags permit.
    pub fn allowances(&self) -> Allowances {
        Allowances {
            privileged: self.allow_privileged,
            host_network: self.allow_host_network,
            cap_add: self.allow_cap_add,
            host_mounts: self.allow_host_mounts,
            shared_volumes: self.allow_shared_volumes,
        }
    }
}

/// Where traffic goes: our own HAProxy (the default), one someone else runs, or none.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// The live listener of the supervised HAProxy.
    #[arg(long, env = "CUTOVER_HTTP_BIND", default_value = "0.0.0.0:80")]
    pub http_bind: String,
    /// The preview listener: the new color before promotion, on the same routes. Loopback by
    /// default: unreleased revisions are not for the public (see docs/operations.md).
    #[arg(long, env = "CUTOVER_PREVIEW_BIND", default_value = "127.0.0.1:8080")]
    pub preview_bind: String,
    /// The haproxy binary.
    #[arg(long, default_value = "haproxy")]
    pub haproxy_bin: PathBuf,
    /// State directory: configuration, maps, sockets (mode 0600), pid file. One daemon per
    /// directory: a second one on the same directory exits at once.
    #[arg(
        long,
        env = "CUTOVER_HAPROXY_DIR",
        default_value = "/var/lib/cutover/haproxy"
    )]
    pub haproxy_dir: PathBuf,
    /// Drive an HAProxy someone else runs through this Runtime API socket (needs
    /// --haproxy-config).
    #[arg(long, requires = "haproxy_config")]
    pub haproxy_socket: Option<PathBuf>,
    /// The configuration file of that HAProxy, which cutover writes.
    #[arg(long, requires = "haproxy_socket")]
    pub haproxy_config: Option<PathBuf>,
    /// Its master CLI socket (`-S`), so cutover can reload it after a shape change.
    #[arg(long, requires = "haproxy_socket")]
    pub haproxy_master_socket: Option<PathBuf>,
    /// Run without a proxy: switching colors only changes the status.
    #[arg(long, conflicts_with_all = ["haproxy_socket", "haproxy_config"])]
    pub no_proxy: bool,
}

impl ProxyArgs {
    pub(crate) fn settings(&self) -> Option<haproxy::Settings> {
        if self.no_proxy {
            return None;
        }
        let mut settings = haproxy::Settings::new(&self.haproxy_dir, &self.http_bind);
        settings.haproxy = self.haproxy_bin.clone();
        settings.preview_bind = Some(self.preview_bind.clone());
        if let (Some(socket), Some(config)) = (&self.haproxy_socket, &self.haproxy_config) {
            settings.external = Some(haproxy::External {
                runtime_socket: socket.clone(),
                config: config.clone(),
                master_socket: self.haproxy_master_socket.clone(),
            });
        }
        Some(settings)
    }
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    let allowances = args.allow.allowances();
    if !allowances.flags().is_empty() {
        warn!(
            allowed = %allowances.flags().join(" "),
            "specs may ask for what these flags allow; anyone who can write specs in Consul \
             can use it"
        );
    }
    let store = ctx.store()?;
    let scope = Scope {
        instance: args
            .instance
            .unwrap_or_else(|| store.prefix().replace('/', "-")),
        network: args.network,
    };
    // Listen first: a taken port fails at once, and /healthz and /readyz answer while the
    // daemon waits for Docker.
    let listener = listen(args.listen).await?;
    let metrics = Arc::new(Metrics::new());
    let daemon = Arc::new(http::Daemon::new(
        store.clone(),
        Arc::clone(&metrics),
        &scope.instance,
        &scope.network,
    ));
    let server = tokio::spawn(http::serve(listener, Arc::clone(&daemon)));
    // The HAProxy directory before Docker: a second daemon on it exits at once, having
    // changed nothing (not even created the network), and HAProxy serves while we wait.
    // Every daemon, leader or follower, runs a proxy agent that follows the route table.
    let local = match args.proxy.settings() {
        Some(settings) => Some(LocalProxy::start(&store, settings, &metrics).await?),
        None => None,
    };
    if let Some(local) = &local {
        daemon.set_agent(Arc::clone(&local.agent));
    }
    // Docker may come up after us (a reboot): wait for it rather than exit.
    let mut failures = 0;
    let docker = loop {
        match connect(&scope).await {
            Ok(docker) => {
                let metrics = Arc::clone(&metrics);
                break docker
                    .with_allowances(allowances)
                    .with_request_hook(move |operation| metrics.docker_request(operation));
            }
            Err(e) => {
                failures += 1;
                let delay = retry_delay(failures);
                warn!(error = %e, retry_in = ?delay, "cannot use the Docker engine yet");
                tokio::time::sleep(delay).await;
            }
        }
    };
    let leader = crate::leader::Config {
        key: crate::leader::leader_key(store.prefix()),
        ttl: args.leader_ttl,
        lock_delay: args.lock_delay,
        holder: crate::leader::Holder::this_process(&scope.instance),
    };
    let controller = Controller::new(
        store,
        docker,
        local.as_ref().map(|l| Arc::clone(&l.traffic)),
        local.as_ref().map(|l| l.agent.id().to_owned()),
        Settings {
            scope,
            workers: args.workers,
            leader,
            resync: args.resync,
            allow_mass_deletion: args.allow_mass_deletion,
            prune_orphans: args.prune_orphans,
        },
        metrics,
    );
    daemon.set_controller(Arc::clone(&controller));
    controller.run(shutdown_signal()).await;
    drop(local);
    server.abort();
    info!("stopped");
    Ok(())
}

async fn connect(scope: &Scope) -> Result<Docker, crate::docker::DockerError> {
    let docker = Docker::connect().await?;
    docker
        .ensure_network(&scope.network, &scope.instance)
        .await?;
    Ok(docker)
}

fn parse_leader_ttl(text: &str) -> Result<Duration, String> {
    let ttl = parse_duration(text)?;
    if !(crate::leader::MIN_TTL..=crate::leader::MAX_TTL).contains(&ttl) {
        return Err("Consul accepts a session TTL from 10s to 24h".to_owned());
    }
    Ok(ttl)
}

fn parse_lock_delay(text: &str) -> Result<Duration, String> {
    let delay = parse_duration(text)?;
    if delay > crate::leader::MAX_LOCK_DELAY {
        return Err("Consul accepts a lock delay of at most 60s".to_owned());
    }
    Ok(delay)
}

/// Completes on SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}

/// Binds the daemon's HTTP endpoints (a taken port fails at once) and says where they are,
/// warning when other hosts can reach them.
pub async fn listen(address: std::net::SocketAddr) -> Result<tokio::net::TcpListener, CliError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| CliError::Listen { address, source })?;
    let listening = listener.local_addr().unwrap_or(address);
    if !listening.ip().is_loopback() {
        warn!(address = %listening, "the HTTP endpoints are reachable from other hosts and have no authentication");
    }
    info!(address = %listening, "HTTP endpoints listening (status page at http://{listening}/)");
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};
    use crate::security::Allowances;

    fn run_args(flags: &[&str]) -> super::Args {
        let mut args = vec!["cutover", "run"];
        args.extend_from_slice(flags);
        match Cli::try_parse_from(args).unwrap().command {
            Command::Run(args) => *args,
            other => panic!("parsed {other:?}"),
        }
    }

    fn allowances(flags: &[&str]) -> Allowances {
        run_args(flags).allow.allowances()
    }

    /// Unreleased revisions are not public unless the operator says so.
    #[test]
    fn the_preview_listener_is_on_loopback_by_default() {
        assert_eq!(run_args(&[]).proxy.preview_bind, "127.0.0.1:8080");
        let exposed = run_args(&["--preview-bind", "0.0.0.0:8080"]);
        assert_eq!(exposed.proxy.preview_bind, "0.0.0.0:8080");
    }

    #[test]
    fn each_allow_flag_allows_one_thing() {
        assert_eq!(allowances(&[]), Allowances::NONE);
        assert_eq!(
            allowances(&["--allow-privileged"]),
            Allowances {
                privileged: true,
                ..Allowances::NONE
            }
        );
        assert_eq!(
            allowances(&["--allow-host-network", "--allow-host-mounts"]),
            Allowances {
                host_network: true,
                host_mounts: true,
                ..Allowances::NONE
            }
        );
        assert_eq!(
            allowances(&[
                "--allow-privileged",
                "--allow-host-network",
                "--allow-cap-add",
                "--allow-host-mounts",
                "--allow-shared-volumes"
            ]),
            Allowances::ALL
        );
    }
}
