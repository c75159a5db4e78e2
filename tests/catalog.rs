//! Replicas in the Consul catalog, against a real Consul agent.
//!
//! The replicas are fabricated `Container` values on 127.0.0.1 whose health endpoint is a tiny
//! HTTP server started by the test, so the agent's HTTP checks really run and pass. Each test
//! uses its own service name and instance, and deregisters everything it registered on drop.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

use cutover::catalog::{self, META_INSTANCE, SyncOutcome};
use cutover::consul::{AgentService, Client};
use cutover::observed::{Container, Role, replica_name};
use cutover::status::Color::{self, Blue, Green};
use support::{agent, unique_prefix};

/// How long Consul may take to run a check and sync the catalog on a loaded machine.
const CONSUL_TIMEOUT: Duration = Duration::from_secs(45);
const HEALTH_PATH: &str = "/health";

/// One test's world: a service name, an instance, a health server, and the IDs to clean up.
struct World {
    client: Client,
    service: String,
    instance: String,
    port: u16,
    http: reqwest::Client,
}

impl World {
    async fn new(test: &str) -> World {
        let instance = unique_prefix(test);
        // Consul service names are DNS labels: no slashes.
        let service = instance.replace('/', "-");
        // The Consul client installs the TLS crypto provider reqwest needs; build it first.
        let client = agent().client();
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("an HTTP client");
        let port = start_health_server().await;
        World {
            client,
            service,
            instance,
            port,
            http,
        }
    }

    /// A running replica on 127.0.0.1, as the Docker adapter would report it.
    fn replica(&self, color: Color, slot: u32, ready: bool) -> Container {
        Container {
            id: format!("id-{}-{color}-{slot}", self.service),
            name: replica_name(&self.service, color, slot),
            service: self.service.clone(),
            role: Role::Replica { color, slot },
            revision: format!("rev-{color}"),
            spec_index: 1,
            image: "cutover-demo:a".to_owned(),
            running: true,
            created_ms: 0,
            address: Some("127.0.0.1".to_owned()),
            ready,
            stopping: false,
            port: None,
            health: None,
        }
    }

    fn id(&self, color: Color, slot: u32) -> String {
        replica_name(&self.service, color, slot)
    }

    fn desired(
        &self,
        containers: &[Container],
        live: Option<Color>,
        preview: Option<Color>,
    ) -> Vec<AgentService> {
        catalog::desired_registrations(
            &self.service,
            &self.instance,
            containers,
            live,
            preview,
            self.port,
            HEALTH_PATH,
        )
    }

    async fn sync(&self, desired: &[AgentService]) -> SyncOutcome {
        catalog::sync(&self.client, &self.service, &self.instance, desired)
            .await
            .expect("sync with the agent")
    }

    /// `GET <path>` on the agent, as JSON.
    async fn get(&self, path: &str) -> Value {
        let url = format!("http://{}{path}", agent().address());
        self.http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// The sorted service IDs `GET /v1/catalog/service/<name>?<query>` returns.
    async fn catalog_ids(&self, query: &str) -> Vec<String> {
        let answer = self
            .get(&format!("/v1/catalog/service/{}?{query}", self.service))
            .await;
        sorted_strings(&answer, |entry| &entry["ServiceID"])
    }

    /// The sorted service IDs `GET /v1/health/service/<name>?<query>` returns: with `passing`,
    /// what Consul DNS answers.
    async fn health_ids(&self, query: &str) -> Vec<String> {
        let answer = self
            .get(&format!("/v1/health/service/{}?{query}", self.service))
            .await;
        sorted_strings(&answer, |entry| &entry["Service"]["ID"])
    }

    /// Polls `read` until it returns `expected`; the catalog follows the agent asynchronously.
    async fn eventually<F, Fut>(&self, what: &str, expected: &[String], read: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Vec<String>>,
    {
        let deadline = Instant::now() + CONSUL_TIMEOUT;
        loop {
            let got = read().await;
            if got == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: expected {expected:?}, still {got:?} after {CONSUL_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A registration someone else made for the same service name, without our Meta.
    async fn register_foreign(&self, id: &str) -> AgentService {
        let registration = AgentService {
            id: id.to_owned(),
            name: self.service.clone(),
            tags: vec!["live".to_owned(), "manual".to_owned()],
            address: "127.0.0.1".to_owned(),
            port: 1,
            meta: BTreeMap::from([("owner".to_owned(), "a user".to_owned())]),
            check: None,
        };
        self.client
            .register_service(&registration)
            .await
            .expect("register a user's service");
        registration
    }

    /// Our registrations and anything else under this test's service name, as the agent has
    /// them.
    async fn agent_services(&self) -> Vec<AgentService> {
        let mut services = self.client.agent_services(None).await.expect("list");
        services.retain(|s| s.name == self.service);
        services
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Runs on failures too; plain blocking HTTP, since there is no runtime to await on.
        let services = blocking_get(&agent().address(), "/v1/agent/services").unwrap_or_default();
        let services: BTreeMap<String, Value> = serde_json::from_str(&services).unwrap_or_default();
        for (id, service) in services {
            if service["Service"] == self.service.as_str() {
                blocking_put(
                    &agent().address(),
                    &format!("/v1/agent/service/deregister/{id}"),
                );
            }
        }
    }
}

fn sorted_strings(answer: &Value, field: impl Fn(&Value) -> &Value) -> Vec<String> {
    let mut ids: Vec<String> = answer
        .as_array()
        .unwrap_or_else(|| panic!("expected a list, got {answer}"))
        .iter()
        .map(|entry| field(entry).as_str().expect("an ID").to_owned())
        .collect();
    ids.sort();
    ids
}

fn ids(ids: &[String]) -> Vec<String> {
    let mut ids = ids.to_vec();
    ids.sort();
    ids
}

/// An HTTP server on 127.0.0.1 that answers 200 on [`HEALTH_PATH`] and 404 elsewhere, for as
/// long as the test's runtime lives.
async fn start_health_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the health server");
    let port = listener.local_addr().expect("its address").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = vec![0; 4096];
                let read = stream.read(&mut buffer).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buffer[..read]);
                let healthy = request.starts_with(&format!("GET {HEALTH_PATH} "));
                let status = if healthy { "200 OK" } else { "404 Not Found" };
                let answer =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

fn blocking_request(address: &str, method: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

fn blocking_get(address: &str, path: &str) -> Option<String> {
    blocking_request(address, "GET", path)
}

fn blocking_put(address: &str, path: &str) {
    let _ = blocking_request(address, "PUT", path);
}

#[tokio::test]
async fn live_and_preview_are_told_apart_and_a_switch_retags_them() {
    let w = World::new("catalog-switch").await;
    let blue = [w.replica(Blue, 1, false), w.replica(Blue, 2, false)];
    let green = [w.replica(Green, 1, false), w.replica(Green, 2, false)];
    let all = [blue.clone(), green.clone()].concat();
    let blue_ids = vec![w.id(Blue, 1), w.id(Blue, 2)];
    let green_ids = vec![w.id(Green, 1), w.id(Green, 2)];
    let all_ids = ids(&[blue_ids.clone(), green_ids.clone()].concat());

    // Nobody is ready yet: nothing is registered, so nothing can be registered critical
    // (the agent would keep that status when the replica is registered again).
    let outcome = w.sync(&w.desired(&all, Some(Blue), Some(Green))).await;
    assert!(outcome.is_noop(), "{outcome:?}");
    assert_eq!(w.catalog_ids("").await, Vec::<String>::new());

    // Ready: registered, and passing at once, before the agent ran its own checks.
    let all_ready: Vec<Container> = all
        .iter()
        .map(|c| Container {
            ready: true,
            ..c.clone()
        })
        .collect();
    let outcome = w
        .sync(&w.desired(&all_ready, Some(Blue), Some(Green)))
        .await;
    assert_eq!(ids(&outcome.registered), all_ids);
    assert!(outcome.deregistered.is_empty() && outcome.conflicts.is_empty());
    w.eventually("live in the catalog", &blue_ids, || {
        w.catalog_ids("tag=live")
    })
    .await;
    w.eventually("preview in the catalog", &green_ids, || {
        w.catalog_ids("tag=preview")
    })
    .await;
    assert_eq!(w.catalog_ids("tag=blue").await, blue_ids);
    assert_eq!(w.catalog_ids("").await, all_ids);
    assert_eq!(w.health_ids("passing").await, all_ids);
    assert_eq!(w.health_ids("passing&tag=live").await, blue_ids);
    assert_eq!(w.health_ids("passing&tag=preview").await, green_ids);
    let checks = w.get(&format!("/v1/health/checks/{}", w.service)).await;
    assert!(
        checks
            .as_array()
            .is_some_and(|c| c.len() == 4 && c.iter().all(|c| c["Type"] == "http")),
        "the agent's own HTTP checks: {checks}"
    );

    // Syncing the same state again changes nothing.
    let again = w
        .sync(&w.desired(&all_ready, Some(Blue), Some(Green)))
        .await;
    assert!(again.is_noop(), "{again:?}");
    // A registered replica the daemon no longer counts ready stays registered: the agent's
    // own check says what it sees.
    let again = w.sync(&w.desired(&all, Some(Blue), Some(Green))).await;
    assert!(again.is_noop(), "{again:?}");

    // The switch: green live, blue draining with its color tag only. Blue keeps live until
    // Consul reports green passing under live; then both are passing, and blue is re-tagged.
    let outcome = w.sync(&w.desired(&all_ready, Some(Green), None)).await;
    assert_eq!(ids(&outcome.registered), all_ids, "every tag set changed");
    w.eventually("green live after the switch", &green_ids, || {
        w.catalog_ids("tag=live")
    })
    .await;
    // Re-tagging keeps the checks passing: live replicas do not vanish from DNS.
    assert_eq!(w.health_ids("passing&tag=live").await, green_ids);
    w.eventually("no preview after the switch", &[], || {
        w.catalog_ids("tag=preview")
    })
    .await;
    assert_eq!(w.catalog_ids("tag=blue").await, blue_ids);
    let draining = w
        .agent_services()
        .await
        .into_iter()
        .find(|s| s.id == w.id(Blue, 1))
        .expect("blue-1 still registered while draining");
    assert_eq!(draining.tags, ["blue"]);

    // The drained color is deregistered before it is stopped, then the service goes away.
    let removed = catalog::deregister_ids(&w.client, &w.instance, &blue_ids)
        .await
        .unwrap();
    assert_eq!(removed, blue_ids);
    w.eventually("blue gone", &green_ids, || w.catalog_ids(""))
        .await;
    let outcome = w.sync(&w.desired(&all_ready[2..], Some(Green), None)).await;
    assert!(outcome.is_noop(), "blue was already gone: {outcome:?}");

    let outcome = w.sync(&[]).await;
    assert_eq!(ids(&outcome.deregistered), green_ids);
    w.eventually("everything gone", &[], || w.catalog_ids(""))
        .await;
}

#[tokio::test]
async fn registrations_without_our_meta_are_left_alone() {
    let w = World::new("catalog-foreign").await;
    let manual = w.register_foreign(&format!("{}-manual", w.service)).await;
    // Someone else's registration holding an ID we would use.
    let squatter = w.register_foreign(&w.id(Blue, 1)).await;
    // Our own registration of the same service by another cutover installation.
    let other_instance = catalog::desired_registrations(
        &w.service,
        "someone/else",
        &[w.replica(Blue, 3, true)],
        Some(Blue),
        None,
        w.port,
        HEALTH_PATH,
    );
    w.client.register_service(&other_instance[0]).await.unwrap();

    let replicas = [w.replica(Blue, 1, true), w.replica(Blue, 2, true)];
    let outcome = w.sync(&w.desired(&replicas, Some(Blue), None)).await;
    assert_eq!(outcome.registered, [w.id(Blue, 2)]);
    assert_eq!(outcome.conflicts, [w.id(Blue, 1)]);

    // Removing everything of ours, by sync and by ID, leaves the others as they were.
    let removed = catalog::deregister_ids(
        &w.client,
        &w.instance,
        &[w.id(Blue, 1), w.id(Blue, 3), manual.id.clone()],
    )
    .await
    .unwrap();
    assert!(removed.is_empty(), "none of those is ours: {removed:?}");
    let outcome = w.sync(&[]).await;
    assert_eq!(outcome.deregistered, [w.id(Blue, 2)]);

    let left = w.agent_services().await;
    let summary = |s: &AgentService| (s.id.clone(), s.tags.clone(), s.meta.clone());
    let mut expected: Vec<_> = [&manual, &squatter, &other_instance[0]]
        .into_iter()
        .map(summary)
        .collect();
    expected.sort();
    assert_eq!(left.iter().map(summary).collect::<Vec<_>>(), expected);
    assert_eq!(
        left.iter()
            .find(|s| s.id == w.id(Blue, 3))
            .map(|s| &s.meta[META_INSTANCE]),
        Some(&"someone/else".to_owned())
    );

    // The test's own cleanup removes everything under its service name, ours or not.
    let (client, service) = (w.client.clone(), w.service.clone());
    drop(w);
    let left = client.agent_services(None).await.unwrap();
    assert!(left.iter().all(|s| s.name != service), "{left:?}");
}

#[tokio::test]
async fn the_agent_filters_on_meta() {
    let w = World::new("catalog-filter").await;
    w.register_foreign(&format!("{}-manual", w.service)).await;
    w.sync(&w.desired(&[w.replica(Green, 1, true)], Some(Green), None))
        .await;

    let filter = cutover::consul::meta_filter(META_INSTANCE, &w.instance).unwrap();
    let ours = w.client.agent_services(Some(&filter)).await.unwrap();
    assert_eq!(
        ours.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        [w.id(Green, 1)]
    );
    assert_eq!(ours[0].name, w.service);
    assert_eq!(ours[0].tags, ["green", "live"]);
    assert_eq!(ours[0].port, w.port);
    assert!(ours[0].check.is_none(), "the agent does not return checks");

    // The services an instance has registrations for, for the resync loop.
    let services = catalog::registered_services(&w.client, &w.instance)
        .await
        .unwrap();
    assert_eq!(services, BTreeSet::from([w.service.clone()]));
}
