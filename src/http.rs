//! The daemon's HTTP endpoints: health, readiness, Prometheus metrics, a JSON view of every
//! service, the status page, and the log filter.
//!
//! | path | what |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs. |
//! | `GET /readyz` | 200 once the specs were read in full and Docker answers; 503 and why. |
//! | `GET /metrics` | Every metric, OpenMetrics text. |
//! | `GET /api/v1/services` | Each service's spec summary and stored status, from Consul; a status that does not decode is listed with its error. |
//! | `GET /api/v1/daemon` | The daemon's own state: role, readiness, queue depth. |
//! | `GET /api/v1/proxies` | Every live proxy: the route table versions it serves, its lag, servers UP/DOWN. |
//! | `GET /` | The status page (`http/status.html`, self-contained). |
//! | `GET`, `PUT /loglevel` | The log filter; `PUT` only from a loopback address. |
//!
//! It serves before the controller exists (while the daemon waits for Docker): `/healthz`
//! answers, `/readyz` says what it waits for. It must not change anything but the log filter.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::controller::Controller;
use crate::metrics::Metrics;
use crate::proxy_agent::ProxyAgent;
use crate::status::Status;
use crate::store::{Store, StoreError, Stored, StoredService};

/// The status page: one HTML file with its CSS and script inline, no external assets.
const STATUS_PAGE: &str = include_str!("http/status.html");

/// How long a request may wait on Consul before it answers 503.
const CONSUL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the endpoints can see. The controller is set once it exists.
pub struct Daemon {
    store: Store,
    metrics: Arc<Metrics>,
    instance: String,
    network: String,
    controller: OnceLock<Arc<Controller>>,
    /// The local proxy agent, once it runs.
    agent: OnceLock<Arc<ProxyAgent>>,
    /// `cutover proxy`: no controller will come.
    proxy_only: bool,
}

impl Daemon {
    pub fn new(store: Store, metrics: Arc<Metrics>, instance: &str, network: &str) -> Daemon {
        Daemon {
            store,
            metrics,
            instance: instance.to_owned(),
            network: network.to_owned(),
            controller: OnceLock::new(),
            agent: OnceLock::new(),
            proxy_only: false,
        }
    }

    /// The endpoints of `cutover proxy`: no controller, a proxy agent.
    pub fn proxy_only(store: Store, metrics: Arc<Metrics>) -> Daemon {
        Daemon {
            proxy_only: true,
            ..Daemon::new(store, metrics, "", "")
        }
    }

    /// Called once, when the local proxy agent runs.
    pub fn set_agent(&self, agent: Arc<ProxyAgent>) {
        let _ = self.agent.set(agent);
    }

    /// Called once, when the controller is built.
    pub fn set_controller(&self, controller: Arc<Controller>) {
        let _ = self.controller.set(controller);
    }

    async fn readiness(&self) -> Result<(), String> {
        if let Some(agent) = self.agent.get() {
            agent.readiness()?;
        }
        match self.controller.get() {
            None if self.proxy_only => Ok(()),
            None => Err("waiting for the Docker engine".to_owned()),
            Some(controller) => controller.readiness().await,
        }
    }

    fn queue_depth(&self) -> usize {
        self.controller.get().map_or(0, |c| c.queue_depth())
    }
}

/// Serves until the task is dropped or aborted.
pub async fn serve(listener: tokio::net::TcpListener, daemon: Arc<Daemon>) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(daemon).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/api/v1/services", get(services))
        .route("/api/v1/daemon", get(daemon_state))
        .route("/api/v1/proxies", get(proxies))
        .route("/loglevel", get(get_loglevel).put(put_loglevel))
        .fallback(not_found)
        .with_state(daemon)
}

async fn page() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(STATUS_PAGE)).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(daemon): State<Arc<Daemon>>) -> Response {
    match daemon.readiness().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn metrics_text(State(daemon): State<Arc<Daemon>>, headers: HeaderMap) -> Response {
    daemon.metrics.set_queue_depth(daemon.queue_depth());
    if let Some(controller) = daemon.controller.get() {
        daemon
            .metrics
            .set_replicas_probed(controller.replicas_probed());
    }
    let accept = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok());
    let (content_type, body) = daemon.metrics.negotiate(accept);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// One service in `/api/v1/services`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    pub name: String,
    /// `None` when only a status is left (the spec was deleted, removal in progress).
    pub spec: Option<SpecSummary>,
    /// `None` until the daemon has written one, or when it does not decode.
    pub status: Option<Status>,
    /// Why the stored status does not decode: its key, ModifyIndex and the decode error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_error: Option<String>,
}

/// The parts of a spec a person looks for first.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecSummary {
    pub key: String,
    pub modify_index: u64,
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// `blueGreen` or `recreate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_promote: Option<bool>,
    /// `host/pathPrefix`, one per route.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// The validation errors of an invalid spec, one line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl SpecSummary {
    fn of(stored: &StoredService) -> SpecSummary {
        let mut summary = SpecSummary {
            key: stored.key.clone(),
            modify_index: stored.modify_index,
            valid: stored.parsed.is_ok(),
            image: None,
            replicas: None,
            strategy: None,
            auto_promote: None,
            routes: Vec::new(),
            errors: Vec::new(),
        };
        match &stored.parsed {
            Ok(service) => {
                let spec = &service.spec;
                summary.image = Some(spec.image.clone());
                summary.replicas = Some(spec.replicas);
                summary.strategy = Some(spec.strategy.name());
                summary.auto_promote = service.blue_green().map(|bg| bg.auto_promote);
                summary.routes = spec.routes.iter().map(ToString::to_string).collect();
            }
            Err(diagnostics) => {
                summary.errors = diagnostics.0.iter().map(ToString::to_string).collect();
            }
        }
        summary
    }
}

/// Every service that has a spec or a status (readable or not), by name.
pub fn service_views(
    specs: Vec<StoredService>,
    statuses: Vec<(String, Stored<Status>)>,
) -> Vec<ServiceView> {
    let mut views: std::collections::BTreeMap<String, ServiceView> = specs
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                ServiceView {
                    name: s.name.clone(),
                    spec: Some(SpecSummary::of(s)),
                    status: None,
                    status_error: None,
                },
            )
        })
        .collect();
    for (name, status) in statuses {
        let view = views.entry(name.clone()).or_insert_with(|| ServiceView {
            name,
            spec: None,
            status: None,
            status_error: None,
        });
        match status {
            Stored::Readable(versioned) => view.status = Some(versioned.value),
            Stored::Unreadable(bad) => view.status_error = Some(bad.to_string()),
        }
    }
    views.into_values().collect()
}

#[derive(Serialize)]
struct ServicesBody {
    services: Vec<ServiceView>,
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

async fn read_services(store: &Store) -> Result<Vec<ServiceView>, StoreError> {
    let (specs, _) = store.list_services().await?;
    let statuses = store.list_statuses().await?;
    Ok(service_views(specs, statuses))
}

async fn services(State(daemon): State<Arc<Daemon>>) -> Response {
    from_consul(&daemon, read_services(&daemon.store), |services| {
        ServicesBody { services }
    })
    .await
}

/// A JSON answer read from Consul: `body` of what `read` returns, or `503` with the reason
/// when Consul fails or does not answer within [`CONSUL_TIMEOUT`].
async fn from_consul<T, B: Serialize>(
    daemon: &Daemon,
    read: impl std::future::Future<Output = Result<T, StoreError>>,
    body: impl FnOnce(T) -> B,
) -> Response {
    let error = match tokio::time::timeout(CONSUL_TIMEOUT, read).await {
        Ok(Ok(value)) => {
            return ([(header::CACHE_CONTROL, "no-store")], Json(body(value))).into_response();
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!(
            "Consul at {} did not answer within {} s",
            daemon.store.client().address(),
            CONSUL_TIMEOUT.as_secs()
        ),
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(ErrorBody { error })).into_response()
}

#[derive(Serialize)]
struct ProxiesBody {
    proxies: Vec<crate::fleet::ProxyRow>,
}

/// Every live proxy, from the route table and the proxies' reports.
pub async fn read_proxies(store: &Store) -> Result<Vec<crate::fleet::ProxyRow>, StoreError> {
    let table = store
        .client()
        .list(&crate::store::folder_prefix(
            store.prefix(),
            crate::store::Folder::Routes,
        ))
        .await?;
    let (table, _) = store.routes_from_entries(&table.entries);
    let reports = store.list_reports().await?;
    Ok(crate::fleet::proxy_rows(
        &table,
        &reports,
        crate::status::now_ms(),
    ))
}

async fn proxies(State(daemon): State<Arc<Daemon>>) -> Response {
    from_consul(&daemon, read_proxies(&daemon.store), |proxies| {
        ProxiesBody { proxies }
    })
    .await
}

/// `/api/v1/daemon`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonView {
    pub version: &'static str,
    pub prefix: String,
    pub instance: String,
    pub network: String,
    pub consul: String,
    /// `leader` or `follower`.
    pub role: &'static str,
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_ready_reason: Option<String>,
    pub queue_depth: usize,
}

async fn daemon_state(State(daemon): State<Arc<Daemon>>) -> Response {
    let readiness = daemon.readiness().await;
    let view = DaemonView {
        version: env!("CARGO_PKG_VERSION"),
        prefix: daemon.store.prefix().to_owned(),
        instance: daemon.instance.clone(),
        network: daemon.network.clone(),
        consul: daemon.store.client().address().to_string(),
        role: if daemon.metrics.is_leader() {
            "leader"
        } else {
            "follower"
        },
        ready: readiness.is_ok(),
        not_ready_reason: readiness.err(),
        queue_depth: daemon.queue_depth(),
    };
    ([(header::CACHE_CONTROL, "no-store")], Json(view)).into_response()
}

async fn get_loglevel() -> Response {
    match crate::logging::filter() {
        Some(filter) => format!("{filter}\n").into_response(),
        None => (StatusCode::NOT_FOUND, "logging is not initialized\n").into_response(),
    }
}

async fn put_loglevel(ConnectInfo(peer): ConnectInfo<SocketAddr>, body: String) -> Response {
    if !peer.ip().is_loopback() {
        return (
            StatusCode::FORBIDDEN,
            "the log filter can be changed from a loopback address only\n",
        )
            .into_response();
    }
    match crate::logging::set_filter(&body) {
        Ok(()) => {
            tracing::info!(filter = %body.trim(), "log filter changed");
            format!("log filter is now {}\n", body.trim()).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "not found; the endpoints are /, /healthz, /readyz, /metrics, /api/v1/services, \
         /api/v1/daemon and /loglevel\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(name: &str, text: &str) -> StoredService {
        let key = format!("cutover/services/{name}");
        StoredService {
            name: name.to_owned(),
            parsed: crate::spec::parse_service(&key, text),
            key,
            modify_index: 7,
            text: text.to_owned(),
        }
    }

    #[test]
    fn views_join_specs_and_statuses_by_name() {
        let web = stored(
            "web",
            "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {name: web}\n\
             spec:\n  image: web:2\n  replicas: 3\n  routes: [{pathPrefix: /web}]\n",
        );
        let bad = stored("bad", "apiVersion: cutover.dev/v1\nkind: Service\n");
        let status = |phase| {
            Stored::Readable(crate::store::Versioned {
                value: Status {
                    phase: Some(phase),
                    ..Status::default()
                },
                modify_index: 9,
            })
        };
        let junk = Stored::Unreadable(crate::store::Unreadable {
            key: "cutover/status/junk".to_owned(),
            modify_index: 11,
            what: "status",
            error: "expected value at line 1 column 1".to_owned(),
        });
        let views = service_views(
            vec![web, bad],
            vec![
                ("gone".to_owned(), status(crate::status::Phase::Available)),
                ("junk".to_owned(), junk),
                ("web".to_owned(), status(crate::status::Phase::Progressing)),
            ],
        );
        let json = serde_json::to_value(&views).unwrap();
        assert_eq!(json[0]["name"], "bad");
        assert_eq!(json[0]["spec"]["valid"], false);
        assert!(
            json[0]["spec"]["errors"][0]
                .as_str()
                .unwrap()
                .contains("cutover/services/bad")
        );
        assert_eq!(json[0]["status"], serde_json::Value::Null);
        assert_eq!(json[0].get("statusError"), None);
        assert_eq!(json[1]["name"], "gone");
        assert_eq!(json[1]["spec"], serde_json::Value::Null);
        assert_eq!(json[1]["status"]["phase"], "Available");
        assert_eq!(json[2]["name"], "junk");
        assert_eq!(json[2]["status"], serde_json::Value::Null);
        assert_eq!(
            json[2]["statusError"],
            "cutover/status/junk (index 11) does not hold a valid status: expected value at \
             line 1 column 1"
        );
        assert_eq!(json[3]["name"], "web");
        assert_eq!(json[3]["spec"]["image"], "web:2");
        assert_eq!(json[3]["spec"]["replicas"], 3);
        assert_eq!(json[3]["spec"]["strategy"], "blueGreen");
        assert_eq!(json[3]["spec"]["autoPromote"], true);
        assert_eq!(json[3]["spec"]["routes"][0], "/web");
        assert_eq!(json[3]["status"]["phase"], "Progressing");
    }
}
