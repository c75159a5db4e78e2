//! `cutover run`: the daemon.

use std::time::Duration;

use tracing::{info, warn};

use super::{CliError, Context, parse_duration};
use crate::controller::{Controller, Settings};
use crate::docker::{DEFAULT_NETWORK, Docker, Scope};
use crate::queue::backoff_delay;

const EXAMPLES: &str = "\
Examples:
  cutover run
  cutover run --leader-ttl 30s --lock-delay 30s
  CONSUL_HTTP_ADDR=10.0.0.5:8500 cutover run --network web --workers 8
  RUST_LOG=cutover=debug cutover run";

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
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    let store = ctx.store()?;
    let scope = Scope {
        instance: args
            .instance
            .unwrap_or_else(|| store.prefix().replace('/', "-")),
        network: args.network,
    };
    // Docker may come up after us (a reboot): wait for it rather than exit.
    let mut failures = 0;
    let docker = loop {
        match connect(&scope).await {
            Ok(docker) => break docker,
            Err(e) => {
                failures += 1;
                let delay = backoff_delay(
                    failures,
                    Duration::from_millis(500),
                    Duration::from_secs(10),
                );
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
        Settings {
            scope,
            workers: args.workers,
            leader,
            resync: args.resync,
            allow_mass_deletion: args.allow_mass_deletion,
            prune_orphans: args.prune_orphans,
        },
    );
    controller.run(shutdown_signal()).await;
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
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}
