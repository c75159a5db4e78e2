//! The Consul agent's service API: register, deregister and list the services of the agent
//! cutover talks to.
//!
//! Registrations are plain data ([`AgentService`], [`HttpCheck`]) that serialize to the JSON
//! Consul expects. Requests go through the parent module's private `Client::send`, so they get
//! the same retries, timeouts, token and error messages as KV requests. This module knows
//! nothing about colors or containers; `catalog` decides what to register.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Call, Client, ConsulError};

/// One service instance registered with the local Consul agent
/// (`PUT /v1/agent/service/register`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentService {
    /// Unique on the agent; Consul replaces a registration with the same ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// The service name that DNS (`<name>.service.consul`) and the catalog answer to.
    /// `GET /v1/agent/services` calls it `Service`.
    #[serde(rename = "Name", alias = "Service")]
    pub name: String,
    #[serde(rename = "Tags", default, deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    /// Empty means the agent's own address.
    #[serde(rename = "Address", default)]
    pub address: String,
    #[serde(rename = "Port", default)]
    pub port: u16,
    /// Keys are at most 64 characters of `[A-Za-z0-9_-]`, values at most 512 characters.
    #[serde(rename = "Meta", default, deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    /// Registered with the service as check `service:<id>`.
    ///
    /// # Caveats
    /// `GET /v1/agent/services` does not return check definitions, so services read back
    /// from the agent always have `None` here.
    #[serde(
        rename = "Check",
        skip_serializing_if = "Option::is_none",
        skip_deserializing
    )]
    pub check: Option<HttpCheck>,
}

/// An HTTP check run by the Consul agent: passing on a 2xx answer, warning on 429, critical
/// otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpCheck {
    /// The URL the agent requests, such as `http://172.18.0.5:80/health`.
    #[serde(rename = "HTTP")]
    pub http: String,
    #[serde(rename = "Interval", serialize_with = "go_duration")]
    pub interval: Duration,
    #[serde(rename = "Timeout", serialize_with = "go_duration")]
    pub timeout: Duration,
    /// Consul removes the whole service after its check was critical this long (at least one
    /// minute; the reaper runs every 30 s).
    #[serde(
        rename = "DeregisterCriticalServiceAfter",
        skip_serializing_if = "Option::is_none",
        serialize_with = "go_duration_option"
    )]
    pub deregister_critical_after: Option<Duration>,
    /// The status the check has until it first runs (Consul's default is critical). On a
    /// re-registration it overrides the current status until the next run.
    #[serde(rename = "Status", skip_serializing_if = "Option::is_none")]
    pub initial_status: Option<CheckStatus>,
}

/// A Consul health check status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Passing,
    Warning,
    Critical,
}

/// A filter expression for [`Client::agent_services`] that matches services whose `Meta[key]`
/// is `value`, or `None` when `value` cannot be written in Consul's filter language (it holds
/// both a backtick and a backslash or double quote); then filter on the client instead.
pub fn meta_filter(key: &str, value: &str) -> Option<String> {
    let quoted = |text: &str| {
        if !text.contains('`') {
            Some(format!("`{text}`"))
        } else if !text.contains(['\\', '"']) {
            Some(format!("\"{text}\""))
        } else {
            None
        }
    };
    Some(format!("Meta[{}] == {}", quoted(key)?, quoted(value)?))
}

impl Client {
    /// Registers `service` with the agent, replacing any registration with the same ID and its
    /// checks (`?replace-existing-checks=true`). Idempotent.
    ///
    /// # Errors
    /// Consul unreachable for the retry time, a refused token, or an invalid registration
    /// (HTTP 400, with Consul's reason).
    pub async fn register_service(&self, service: &AgentService) -> Result<(), ConsulError> {
        let key = format!("agent service {}", service.id);
        let mut call = self.agent_call(Method::PUT, &["service", "register"], &key);
        call.query
            .push(("replace-existing-checks", "true".to_owned()));
        call.body = Some(
            serde_json::to_vec(service)
                .expect("a registration has only string keys and serializable values"),
        );
        let answer = self.send(call).await?;
        self.agent_not_found_is_error(&Method::PUT, &key, answer.status)
    }

    /// Removes the registration `id` and its checks from the agent. Removing an ID the agent
    /// does not know succeeds.
    ///
    /// # Errors
    /// Consul unreachable for the retry time, or a refused token.
    pub async fn deregister_service(&self, id: &str) -> Result<(), ConsulError> {
        let key = format!("agent service {id}");
        let call = self.agent_call(Method::PUT, &["service", "deregister", id], &key);
        // Consul 1.8 answers 200 for an unknown ID, later versions 404; both mean "gone".
        self.send(call).await.map(drop)
    }

    /// The services registered with this agent, sorted by ID. `filter` is a Consul filter
    /// expression, such as one from [`meta_filter`].
    ///
    /// # Errors
    /// Consul unreachable for the retry time, a refused token, an invalid filter, or an
    /// answer that is not the expected JSON.
    ///
    /// # Caveats
    /// Consul 1.8 answers an invalid filter with HTTP 500, which is retried like any server
    /// error until the retry time runs out; [`meta_filter`] only writes valid ones.
    pub async fn agent_services(
        &self,
        filter: Option<&str>,
    ) -> Result<Vec<AgentService>, ConsulError> {
        let key = "agent services";
        let mut call = self.agent_call(Method::GET, &["services"], key);
        if let Some(filter) = filter {
            call.query.push(("filter", filter.to_owned()));
        }
        let answer = self.send(call).await?;
        self.agent_not_found_is_error(&Method::GET, key, answer.status)?;
        let by_id: BTreeMap<String, AgentService> =
            serde_json::from_slice(&answer.body).map_err(|e| ConsulError::InvalidResponse {
                address: self.address().to_owned(),
                method: Method::GET,
                key: key.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(by_id.into_values().collect())
    }

    /// The IDs of the instances of `service` tagged `tag` whose checks all pass, as Consul's
    /// catalog answers them (`GET /v1/health/service/<service>?tag=<tag>&passing`): what DNS
    /// and `consul watch -passingonly` see, not only the local agent's view. Sorted.
    ///
    /// # Errors
    /// Consul unreachable for the retry time, a refused token, or an answer that is not the
    /// expected JSON.
    pub async fn passing_instances(
        &self,
        service: &str,
        tag: &str,
    ) -> Result<Vec<String>, ConsulError> {
        #[derive(Deserialize)]
        struct Entry {
            #[serde(rename = "Service")]
            service: Instance,
        }
        #[derive(Deserialize)]
        struct Instance {
            #[serde(rename = "ID")]
            id: String,
        }
        let key = format!("health service {service}");
        let mut call = self.agent_call(Method::GET, &[], &key);
        call.url = self.api_url(&["health", "service", service]);
        call.query.push(("tag", tag.to_owned()));
        call.query.push(("passing", "true".to_owned()));
        let answer = self.send(call).await?;
        let entries: Vec<Entry> = if answer.status == StatusCode::NOT_FOUND {
            Vec::new()
        } else {
            serde_json::from_slice(&answer.body).map_err(|e| ConsulError::InvalidResponse {
                address: self.address().to_owned(),
                method: Method::GET,
                key: key.clone(),
                reason: e.to_string(),
            })?
        };
        let mut ids: Vec<String> = entries.into_iter().map(|e| e.service.id).collect();
        ids.sort();
        Ok(ids)
    }

    /// A request on `/v1/agent/<segments>`; `key` names it in errors.
    fn agent_call<'a>(&self, method: Method, segments: &[&str], key: &'a str) -> Call<'a> {
        Call {
            method,
            url: self.agent_url(segments),
            key,
            query: Vec::new(),
            body: None,
            attempt_timeout: self.retry_timeout.max(Duration::from_secs(1)),
            once: false,
        }
    }

    /// `<base>/v1/agent/<segments>`, each segment percent-encoded.
    fn agent_url(&self, segments: &[&str]) -> Url {
        let mut all = vec!["agent"];
        all.extend_from_slice(segments);
        self.api_url(&all)
    }

    /// `<base>/v1/<segments>`, each segment percent-encoded.
    fn api_url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("base_url only accepts http(s) URLs, which have a path")
            .pop_if_empty()
            .push("v1")
            .extend(segments);
        url
    }

    /// `send` hands back a 404 as an answer (a missing key is not an error for KV); on these
    /// endpoints it means an agent without the API.
    fn agent_not_found_is_error(
        &self,
        method: &Method,
        key: &str,
        status: StatusCode,
    ) -> Result<(), ConsulError> {
        if status == StatusCode::NOT_FOUND {
            return Err(ConsulError::Http {
                address: self.address().to_owned(),
                method: method.clone(),
                key: key.to_owned(),
                status: status.as_u16(),
                body: "not found: is this a Consul agent's HTTP API?".to_owned(),
            });
        }
        Ok(())
    }
}

/// A duration the way Go's `time.ParseDuration` reads it: `5s`, or `1500ms`.
fn go_duration_text(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

fn go_duration<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&go_duration_text(*duration))
}

fn go_duration_option<S: Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => go_duration(duration, serializer),
        None => serializer.serialize_none(),
    }
}

/// Consul writes `null` for an empty list or map in some versions.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::super::ConsulConfig;
    use super::*;

    fn registration() -> AgentService {
        AgentService {
            id: "books-green-2".to_owned(),
            name: "books".to_owned(),
            tags: vec!["green".to_owned(), "live".to_owned()],
            address: "172.18.0.5".to_owned(),
            port: 80,
            meta: BTreeMap::from([("cutover-instance".to_owned(), "cutover".to_owned())]),
            check: Some(HttpCheck {
                http: "http://172.18.0.5:80/health".to_owned(),
                interval: Duration::from_secs(5),
                timeout: Duration::from_millis(1500),
                deregister_critical_after: None,
                initial_status: Some(CheckStatus::Passing),
            }),
        }
    }

    #[test]
    fn a_registration_serializes_to_consuls_shape() {
        let json = serde_json::to_value(registration()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "ID": "books-green-2",
                "Name": "books",
                "Tags": ["green", "live"],
                "Address": "172.18.0.5",
                "Port": 80,
                "Meta": {"cutover-instance": "cutover"},
                "Check": {
                    "HTTP": "http://172.18.0.5:80/health",
                    "Interval": "5s",
                    "Timeout": "1500ms",
                    "Status": "passing",
                },
            })
        );
        let mut no_check = registration();
        no_check.check = None;
        let json = serde_json::to_value(no_check).unwrap();
        assert!(json.get("Check").is_none(), "{json}");
    }

    #[test]
    fn deregister_critical_after_is_written_when_set() {
        let mut service = registration();
        service.check.as_mut().unwrap().deregister_critical_after = Some(Duration::from_secs(600));
        let json = serde_json::to_value(service).unwrap();
        assert_eq!(json["Check"]["DeregisterCriticalServiceAfter"], "600s");
    }

    #[test]
    fn the_agents_listing_reads_back() {
        // As Consul 1.8 answers GET /v1/agent/services.
        let body = r#"{
            "books-green-2": {
                "ID": "books-green-2", "Service": "books", "Tags": ["green", "live"],
                "Meta": {"cutover-instance": "cutover"}, "Port": 80, "Address": "172.18.0.5",
                "TaggedAddresses": {"lan_ipv4": {"Address": "172.18.0.5", "Port": 80}},
                "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": false
            },
            "web": {"ID": "web", "Service": "web", "Tags": null, "Meta": null, "Port": 0,
                    "Address": ""}
        }"#;
        let by_id: BTreeMap<String, AgentService> = serde_json::from_str(body).unwrap();
        let services: Vec<_> = by_id.into_values().collect();
        let mut expected = registration();
        expected.check = None;
        assert_eq!(services[0], expected);
        assert_eq!(services[1].name, "web");
        assert!(services[1].tags.is_empty() && services[1].meta.is_empty());
    }

    #[test]
    fn meta_filters_quote_what_they_can() {
        let cases = [
            (
                "cutover-instance",
                "cutover",
                Some("Meta[`cutover-instance`] == `cutover`"),
            ),
            ("k", "a\"b", Some("Meta[`k`] == `a\"b`")),
            ("k", "a`b", Some("Meta[`k`] == \"a`b\"")),
            ("k", "a`\"b", None),
            ("k", "a`\\b", None),
        ];
        for (key, value, expected) in cases {
            assert_eq!(meta_filter(key, value).as_deref(), expected, "{value}");
        }
    }

    #[test]
    fn agent_urls_escape_each_segment() {
        let client = Client::new(&ConsulConfig::default()).unwrap();
        assert_eq!(
            client
                .agent_url(&["service", "deregister", "books-green-2"])
                .as_str(),
            "http://127.0.0.1:8500/v1/agent/service/deregister/books-green-2"
        );
        assert_eq!(
            client
                .agent_url(&["service", "deregister", "a b/c"])
                .as_str(),
            "http://127.0.0.1:8500/v1/agent/service/deregister/a%20b%2Fc"
        );
    }
}
