//! `cutover proxy`: the proxy role alone, for an edge node that runs no controller; and the
//! local proxy every `cutover run` starts.

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::info;

use super::run::ProxyArgs;
use super::{CliError, Context};
use crate::haproxy::{self, Proxy};
use crate::http;
use crate::metrics::Metrics;
use crate::proxy_agent::{Identity, ProxyAgent};
use crate::store::Store;
use crate::traffic::{Supervisor, Traffic};

const EXAMPLES: &str = "\
Examples:
  cutover proxy
  CONSUL_HTTP_ADDR=10.0.0.5:8500 cutover proxy --http-bind :80 --preview-bind 127.0.0.1:8080
  cutover proxy --listen 127.0.0.1:9091 --haproxy-dir /var/lib/cutover/edge";

/// Serve the route table the leader publishes, on this node's own HAProxy, without running a
/// controller (no Docker needed).
///
/// It follows `<prefix>/routes/` in Consul, applies each change to its supervised HAProxy
/// through the Runtime API, and reports the version it serves (and the servers its HAProxy
/// sees UP) under `<prefix>/proxies/<id>`; the leader retires an old color only once every
/// live proxy serves the switch. Without Consul it keeps serving the last table it applied.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Where the HTTP endpoints listen (/healthz, /readyz, /metrics). Port 0 picks a free
    /// port (logged at start).
    #[arg(
        long,
        value_name = "ADDR",
        env = "CUTOVER_LISTEN",
        default_value = "127.0.0.1:9091"
    )]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub proxy: ProxyArgs,
}

/// A proxy agent with its supervised HAProxy, running in this process.
pub struct LocalProxy {
    pub traffic: Arc<Traffic>,
    pub agent: Arc<ProxyAgent>,
    _supervisor: Supervisor,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LocalProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LocalProxy {
    /// Starts (or adopts) HAProxy on `settings`' directory, its supervisor, and the agent
    /// that follows the route table.
    pub async fn start(
        store: &Store,
        settings: haproxy::Settings,
        metrics: &Arc<Metrics>,
    ) -> Result<LocalProxy, CliError> {
        let identity = Identity::for_directory(&settings.dir, &settings.http_bind);
        let proxy = Proxy::start(settings).await.map_err(CliError::Proxy)?;
        let traffic = Arc::new(Traffic::new(proxy, Arc::clone(metrics)));
        // Every proxy keeps its own HAProxy alive.
        let supervisor = traffic.supervise();
        let agent = ProxyAgent::new(
            store.clone(),
            Arc::clone(&traffic),
            identity,
            Arc::clone(metrics),
        );
        let task = tokio::spawn(Arc::clone(&agent).run());
        Ok(LocalProxy {
            traffic,
            agent,
            _supervisor: supervisor,
            task,
        })
    }
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    let store = ctx.store()?;
    let Some(settings) = args.proxy.settings() else {
        return Err(CliError::Usage(
            "cutover proxy needs a proxy: remove --no-proxy".to_owned(),
        ));
    };
    let listener = super::run::listen(args.listen).await?;
    let metrics = Arc::new(Metrics::new());
    metrics.set_leader(false);
    let local = LocalProxy::start(&store, settings, &metrics).await?;
    info!(id = %local.agent.id(), "cutover proxy serving the route table");
    let daemon = Arc::new(http::Daemon::proxy_only(store, Arc::clone(&metrics)));
    daemon.set_agent(Arc::clone(&local.agent));
    let server = tokio::spawn(http::serve(listener, daemon));
    super::run::shutdown_signal().await;
    server.abort();
    drop(local);
    info!("stopped; HAProxy keeps serving the last route table");
    Ok(())
}
