//! `cutover run`: the daemon.

use std::time::Duration;

use tracing::{info, warn};

use super::{CliError, Context, parse_duration};
use crate::controller::{Controller, Settings};
use crate::docker::{DEFAULT_NETWORK, Docker, Scope};
use crate::queue::backoff_delay;
use crate::security::Allowances;

const EXAMPLES: &str = "\
Examples:
  cutover run
  CONSUL_HTTP_ADDR=10.0.0.5:8500 cutover run --network web --workers 8
  RUST_LOG=cutover=debug cutover run";

/// Run the controller: converge Docker toward the specs in Consul until SIGTERM or Ctrl-C.
///
/// Stopping the daemon leaves every container running.
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
    /// Remove the containers of services whose specs vanished en masse without waiting
    /// for `cutover prune --confirm`.
    #[arg(long)]
    pub allow_mass_deletion: bool,
    /// Remove labelled containers of services that have neither a spec nor a status.
    #[arg(long)]
    pub prune_orphans: bool,
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
}

impl Args {
    /// What the `--allow-*` flags permit.
    pub fn allowances(&self) -> Allowances {
        Allowances {
            privileged: self.allow_privileged,
            host_network: self.allow_host_network,
            cap_add: self.allow_cap_add,
            host_mounts: self.allow_host_mounts,
        }
    }
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    let allowances = args.allowances();
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
    // Docker may come up after us (a reboot): wait for it rather than exit.
    let mut failures = 0;
    let docker = loop {
        match connect(&scope).await {
            Ok(docker) => break docker.with_allowances(allowances),
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
    let controller = Controller::new(
        store,
        docker,
        Settings {
            scope,
            workers: args.workers,
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

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};
    use crate::security::Allowances;

    fn allowances(flags: &[&str]) -> Allowances {
        let mut args = vec!["cutover", "run"];
        args.extend_from_slice(flags);
        match Cli::try_parse_from(args).unwrap().command {
            Command::Run(args) => args.allowances(),
            _ => unreachable!("parsed a run command"),
        }
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
                "--allow-host-mounts"
            ]),
            Allowances::ALL
        );
    }
}
