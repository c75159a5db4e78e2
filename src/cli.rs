//! The `cutover` command line: argument parsing, dispatch and the errors users see.
//!
//! Each subcommand lives in `cli/<command>.rs` with an `Args` struct (clap derive) and an
//! `async fn run(ctx: &Context, args: Args) -> Result<(), CliError>`. To add one (`run`,
//! `promote`, `plan`, ...): write that file, add a variant to [`Command`] and a line to
//! [`run`]. Commands print their results to stdout; [`report`] prints a failure to stderr as
//! one line (after the manifest diagnostics, if there are any).
//!
//! Shared pieces: [`manifests`] loads files and directories of manifests (validate, apply,
//! sync), [`cas`] is the check-and-set retry loop (apply, delete, scale, sync) and [`table`]
//! prints aligned columns.

pub mod apply;
pub mod cas;
pub mod delete;
pub mod get;
pub mod history;
pub mod manifests;
pub mod plan;
pub mod proxy;
pub mod prune;
pub mod request;
pub mod run;
pub mod scale;
pub mod status;
pub mod sync;
pub mod table;
pub mod validate;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::consul::{Client, ConsulConfig, ConsulError};
use crate::logging::LogFormat;
use crate::spec::Diagnostics;
use crate::status::Action;
use crate::store::{self, Store, StoreError};

const EXAMPLES: &str = "\
Examples:
  cutover validate manifests/
  cutover apply -f books.yaml
  cutover get
  cutover get books -o json
  cutover scale books +2
  cutover sync manifests/ --prune --dry-run
  cutover plan -f books.yaml
  cutover status books
  cutover status books --wait --timeout 5m
  cutover promote books
  cutover history books
  cutover diff books 3f2a9c01d4
  cutover rollback books --to 3f2a9c01d4
  cutover run
  CONSUL_HTTP_ADDR=consul.internal:8500 cutover --prefix teams/web get

Consul is configured like the consul CLI: CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN,
CONSUL_HTTP_SSL, CONSUL_HTTP_SSL_VERIFY and CONSUL_CACERT.";

/// Declarative blue/green deployments for plain Docker, driven by desired state in Consul KV.
#[derive(Debug, Parser)]
#[command(name = "cutover", version, after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command accepts, before or after the subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// Consul's HTTP address: host:port or http(s)://host:port [default: 127.0.0.1:8500]
    #[arg(long, value_name = "ADDR", env = "CONSUL_HTTP_ADDR", global = true)]
    pub consul_addr: Option<String>,

    /// The KV prefix that holds cutover's keys.
    #[arg(long, value_name = "PREFIX", env = "CUTOVER_PREFIX", default_value = store::DEFAULT_PREFIX, global = true)]
    pub prefix: String,

    /// How long to keep retrying when Consul is unreachable, such as 10s or 1m.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, global = true)]
    pub consul_timeout: Duration,

    /// How log lines are written to stderr: human (readable) or json (one object per line).
    #[arg(long, value_name = "FORMAT", env = "CUTOVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Validate(validate::Args),
    Apply(apply::Args),
    Get(get::Args),
    Delete(delete::Args),
    Scale(scale::Args),
    Sync(sync::Args),
    Status(status::Args),
    Run(Box<run::Args>),
    Proxy(Box<proxy::Args>),
    /// Promote the revision waiting in preview: scale it to full and switch traffic to it
    /// (a canary: skip its remaining steps and switch every request to it).
    Promote(request::Args),
    Rollback(history::RollbackArgs),
    /// Remove the rollout in progress and reject its revision (a canary's share of the
    /// requests goes back to the live revision at once).
    Abort(request::Args),
    /// Try the rejected revision again (after a failed rollout, an abort or a rollback),
    /// without changing the spec.
    Retry(request::Args),
    Prune(prune::Args),
    Plan(plan::Args),
    History(history::Args),
    Diff(history::DiffArgs),
}

/// `-o yaml|json` for the commands that can print machine-readable output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Yaml,
    Json,
}

/// A blocking read of `prefix` past `index` (at most `wait`). A blocking read is sent once:
/// after a transient failure (Consul restarting) it reads again without blocking, with the
/// client's retries, which also notices a Consul that came back empty (a lower index).
pub async fn list_after(
    store: &Store,
    prefix: &str,
    index: u64,
    wait: Duration,
) -> Result<crate::consul::Listing, CliError> {
    match store.client().list_blocking(prefix, index, wait).await {
        Ok(listing) => Ok(listing),
        Err(e) if index > 0 && e.is_transient() => Ok(store.client().list(prefix).await?),
        Err(e) => Err(e.into()),
    }
}

/// For `--watch`: returns once something under `prefix` changed since `index` (a blocking
/// query; Consul's wake-ups for nothing are waited past), and moves `index` on. With index
/// 0 (the first call), it starts from the current index.
pub async fn wait_for_change(store: &Store, prefix: &str, index: &mut u64) -> Result<(), CliError> {
    loop {
        let listing = list_after(store, prefix, *index, crate::consul::WATCH_WAIT).await?;
        let changed = *index != 0 && listing.index != *index;
        *index = listing.index;
        if changed {
            return Ok(());
        }
    }
}

/// What every command gets: the global flags and a way to reach the store.
#[derive(Debug, Clone)]
pub struct Context {
    pub global: GlobalArgs,
}

impl Context {
    /// The Consul configuration: the environment, overridden by the flags.
    pub fn consul_config(&self) -> ConsulConfig {
        let mut config = ConsulConfig::from_env();
        if let Some(address) = &self.global.consul_addr {
            config.address = address.clone();
        }
        config.retry_timeout = self.global.consul_timeout;
        config
    }

    /// A store on the configured Consul and prefix. Nothing is sent yet.
    pub fn store(&self) -> Result<Store, CliError> {
        let client = Client::new(&self.consul_config())?;
        Ok(Store::new(client, &self.global.prefix)?)
    }
}

/// How a command that succeeded ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exit status 0.
    Success,
    /// Exit status 2: `cutover plan` found something the daemon would change.
    Changes,
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<Exit, CliError> {
    let ctx = Context { global: cli.global };
    let result = match cli.command {
        Command::Validate(args) => validate::run(&ctx, args).await,
        Command::Apply(args) => apply::run(&ctx, args).await,
        Command::Get(args) => get::run(&ctx, args).await,
        Command::Delete(args) => delete::run(&ctx, args).await,
        Command::Scale(args) => scale::run(&ctx, args).await,
        Command::Sync(args) => sync::run(&ctx, args).await,
        Command::Status(args) => status::run(&ctx, args).await,
        Command::Run(args) => run::run(&ctx, *args).await,
        Command::Proxy(args) => proxy::run(&ctx, *args).await,
        Command::Promote(args) => request::run(&ctx, Action::Promote, args).await,
        Command::Rollback(args) => history::rollback(&ctx, args).await,
        Command::Abort(args) => request::run(&ctx, Action::Abort, args).await,
        Command::Retry(args) => request::run(&ctx, Action::Retry, args).await,
        Command::Prune(args) => prune::run(&ctx, args).await,
        // The one command whose success has two outcomes.
        Command::Plan(args) => return plan::run(&ctx, args).await,
        Command::History(args) => history::run(&ctx, args).await,
        Command::Diff(args) => history::diff(&ctx, args).await,
    };
    result.map(|()| Exit::Success)
}

/// Prints a failure to stderr: the diagnostics first, one per line, then the error on one line.
pub fn report(error: &CliError) {
    if let CliError::InvalidManifests { diagnostics, .. } = error {
        for diagnostic in &diagnostics.0 {
            eprintln!("{diagnostic}");
        }
    }
    eprintln!("error: {error}");
}

/// Everything a command can fail with. Each message is one line and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Consul(#[from] ConsulError),

    #[error("{0}")]
    Usage(String),

    #[error(transparent)]
    Store(#[from] StoreError),

    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("no .yaml or .yml files in {}", path.display())]
    NoManifests { path: PathBuf },

    #[error("{} problem(s) in the manifests; nothing was written", diagnostics.0.len())]
    InvalidManifests { diagnostics: Diagnostics },

    #[error("invalid service name {name:?}: write the name from metadata.name, such as books")]
    InvalidName { name: String },

    #[error("service {name} not found ({key} does not exist)")]
    NotFound { name: String, key: String },

    #[error("{key} is invalid, fix it with cutover apply: {first}")]
    InvalidInStore { key: String, first: String },

    #[error(
        "{key} kept changing while cutover tried to update it ({attempts} attempts); \
         someone else is writing it, try again"
    )]
    ConcurrentModification { key: String, attempts: u32 },

    #[error(
        "refusing to prune {deletions} of the {total} services in KV (more than half: \
         {services}): a broken checkout must not wipe production; check {}, or pass --force",
        dir.display()
    )]
    PruneRefused {
        deletions: usize,
        total: usize,
        /// The services the prune would delete, comma-separated.
        services: String,
        dir: PathBuf,
    },

    #[error("no status for {name}: the daemon has not reported on it (is cutover run running?)")]
    NoStatus { name: String },

    #[error(
        "cannot tell which revision to {action} for {name}: {detail}; pass --revision, or wait \
         until cutover run rebuilds the status on its next reconcile of {name}"
    )]
    UnreadableStatus {
        name: String,
        action: String,
        detail: String,
    },

    #[error("{}", unreadable_statuses(details))]
    UnreadableStatuses {
        /// One line per status, naming its key and the decode error.
        details: Vec<String>,
    },

    #[error("nothing to {action} for {name}: no revision fits; pass --revision")]
    NothingToAct { name: String, action: String },

    #[error("the daemon did not act on the request for {name}: {result}: {message}")]
    RequestRefused {
        name: String,
        result: String,
        message: String,
    },

    #[error("timed out waiting for {what}")]
    Timeout { what: String },

    #[error("{name} failed at spec index {index}: {phase}: {message}")]
    RolloutFailed {
        name: String,
        index: u64,
        phase: String,
        message: String,
    },

    #[error("cannot start the proxy: {0}")]
    Proxy(crate::haproxy::ProxyError),

    #[error(
        "cannot reach the Docker engine ({source}); cutover plan reads the containers there: \
         run it where the daemon runs, or set DOCKER_HOST as for the docker CLI"
    )]
    DockerUnreachable {
        #[source]
        source: Box<crate::docker::DockerError>,
    },

    #[error(transparent)]
    Docker(Box<crate::docker::DockerError>),

    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),

    #[error(
        "cannot listen on {address} for the HTTP endpoints: {source}; \
         pass --listen with a free address, such as 127.0.0.1:9091"
    )]
    Listen {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl From<crate::docker::DockerError> for CliError {
    fn from(e: crate::docker::DockerError) -> CliError {
        CliError::Docker(Box::new(e))
    }
}

impl From<crate::observe::ObserveError> for CliError {
    fn from(e: crate::observe::ObserveError) -> CliError {
        match e {
            crate::observe::ObserveError::Store(e) => CliError::Store(e),
            crate::observe::ObserveError::Docker(e) => e.into(),
        }
    }
}

fn unreadable_statuses(details: &[String]) -> String {
    let count = match details.len() {
        1 => "1 status".to_owned(),
        n => format!("{n} statuses"),
    };
    format!(
        "cannot read {count}: {}; cutover run rebuilds a status on its next reconcile of the \
         service, or removes it with a deleted service",
        details.join("; ")
    )
}

/// The spec of `name` in KV.
///
/// # Errors
/// [`CliError::NotFound`] when there is none.
pub async fn existing_spec(store: &Store, name: &str) -> Result<store::StoredService, CliError> {
    store
        .get_service(name)
        .await?
        .ok_or_else(|| CliError::NotFound {
            name: name.to_owned(),
            key: store.service_key(name),
        })
}

/// Checks a service name given on the command line before it becomes part of a KV key.
pub fn check_name(name: &str) -> Result<(), CliError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(CliError::InvalidName {
            name: name.to_owned(),
        })
    }
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e}; write a duration such as 10s or 1m"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn names() {
        for good in ["books", "a", "books-2", "0x"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Books", "a/b", "-a", "a-", "a b", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = Cli::try_parse_from([
            "cutover",
            "get",
            "--prefix",
            "teams/web",
            "--consul-timeout",
            "2s",
        ])
        .unwrap();
        assert_eq!(cli.global.prefix, "teams/web");
        assert_eq!(cli.global.consul_timeout, Duration::from_secs(2));
    }
}
