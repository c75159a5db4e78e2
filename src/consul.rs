//! The Consul HTTP API adapter: key/value reads and writes, check-and-set, blocking queries.
//!
//! This is the only module that talks HTTP to Consul, and no `reqwest` type leaves it: callers
//! see [`Client`], [`KvEntry`], [`KeyRead`], [`Listing`], [`PrefixWatch`] and [`ConsulError`].
//! It knows nothing about cutover's key layout; that is `store`'s job.
//!
//! Configuration follows the `consul` CLI ([`ConsulConfig::from_env`]): `CONSUL_HTTP_ADDR`,
//! `CONSUL_HTTP_TOKEN`, `CONSUL_HTTP_TOKEN_FILE`, `CONSUL_HTTP_SSL`, `CONSUL_HTTP_SSL_VERIFY`,
//! `CONSUL_CACERT`, `CONSUL_CLIENT_CERT` and `CONSUL_CLIENT_KEY`.
//!
//! Transport failures (connection refused, timeouts, HTTP 5xx) are retried with exponential
//! backoff for at most [`ConsulConfig::retry_timeout`]; HTTP 4xx answers are final. A
//! blocking query is sent once: retried with its old index against a Consul that came back
//! empty (at a lower index), it would be held for its whole wait; its caller reads again
//! without blocking instead (as [`PrefixWatch`] does).
//!
//! Sessions and locks (for the daemon's leader election, see `leader`) are more requests
//! through the same private `Client::send`, which owns the retries and the error messages:
//! [`Client::create_session`], [`Client::renew_session`], [`Client::destroy_session`],
//! [`Client::acquire`], [`Client::release`], and [`Client::get_blocking`] to wait on a lock key.

use std::fmt;
use std::path::PathBuf;
use std::sync::Once;
use std::time::Duration;

use base64::Engine as _;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

/// Where `consul` and cutover look for Consul when nothing says otherwise.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8500";
/// The longest wait Consul accepts for a blocking query.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// The wait the daemon's watches use. Consul's documentation asks for a bound; a short one
/// also bounds how long a Consul whose index went backwards without the connection breaking
/// (a snapshot restore, a replaced server behind the same address) goes unnoticed: the
/// answer at the end of the wait carries the lower index.
pub const WATCH_WAIT: Duration = Duration::from_secs(10);

// The agent's service API (registrations for the catalog), in its own file.
mod agent;
pub use agent::{AgentService, CheckStatus, HttpCheck, meta_filter};

/// How to reach Consul. Build it with [`ConsulConfig::from_env`] and override fields from
/// command-line flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulConfig {
    /// `host:port` or a URL such as `https://consul.example:8501`.
    pub address: String,
    /// Sent as `X-Consul-Token` when present.
    pub token: Option<String>,
    /// A file holding the token, read when the client is built, used when `token` is unset
    /// (`CONSUL_HTTP_TOKEN_FILE`).
    pub token_file: Option<PathBuf>,
    /// Use HTTPS for an address without a scheme (`CONSUL_HTTP_SSL=true`).
    pub ssl: bool,
    /// Verify the server's certificate (`CONSUL_HTTP_SSL_VERIFY=false` turns it off).
    pub ssl_verify: bool,
    /// A PEM file with the CA certificates to trust instead of the system's (`CONSUL_CACERT`).
    pub ca_cert: Option<PathBuf>,
    /// A PEM client certificate (`CONSUL_CLIENT_CERT`) and its key (`CONSUL_CLIENT_KEY`; the
    /// certificate's file may hold both), for agents that verify incoming HTTPS clients.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// The total time one operation may spend retrying transport failures.
    pub retry_timeout: Duration,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            address: DEFAULT_ADDRESS.to_owned(),
            token: None,
            token_file: None,
            ssl: false,
            ssl_verify: true,
            ca_cert: None,
            client_cert: None,
            client_key: None,
            retry_timeout: Duration::from_secs(10),
        }
    }
}

impl ConsulConfig {
    /// Reads the same environment variables as the `consul` CLI.
    pub fn from_env() -> ConsulConfig {
        ConsulConfig::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`ConsulConfig::from_env`], with the environment given as a function (for tests).
    /// Empty variables count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> ConsulConfig {
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let defaults = ConsulConfig::default();
        ConsulConfig {
            address: get("CONSUL_HTTP_ADDR").unwrap_or(defaults.address),
            token: get("CONSUL_HTTP_TOKEN"),
            token_file: get("CONSUL_HTTP_TOKEN_FILE").map(PathBuf::from),
            ssl: get("CONSUL_HTTP_SSL").is_some_and(|v| is_true(&v)),
            ssl_verify: get("CONSUL_HTTP_SSL_VERIFY").is_none_or(|v| is_true(&v)),
            ca_cert: get("CONSUL_CACERT").map(PathBuf::from),
            client_cert: get("CONSUL_CLIENT_CERT").map(PathBuf::from),
            client_key: get("CONSUL_CLIENT_KEY").map(PathBuf::from),
            retry_timeout: defaults.retry_timeout,
        }
    }
}

/// Go's `strconv.ParseBool`, which the `consul` CLI uses for its boolean variables.
fn is_true(value: &str) -> bool {
    matches!(value.trim(), "1" | "t" | "T" | "true" | "TRUE" | "True")
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Turns `CONSUL_HTTP_ADDR` into a base URL the way the `consul` CLI does: a bare `host:port`
/// gets `http://`, or `https://` when `ssl` is set; an `http(s)://` URL is taken as written.
pub fn base_url(address: &str, ssl: bool) -> Result<String, ConsulError> {
    let invalid = |reason: &str| ConsulError::InvalidAddress {
        address: address.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = address.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(invalid(
            "it is empty; write host:port or http(s)://host:port",
        ));
    }
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_owned()
    } else if ssl {
        format!("https://{trimmed}")
    } else {
        format!("http://{trimmed}")
    };
    let url = Url::parse(&with_scheme).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("only http:// and https:// are supported"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it has no host"));
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(invalid(
            "write only the scheme, host and port, without a path",
        ));
    }
    Ok(with_scheme)
}

/// One key/value pair as Consul stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    /// The raw bytes; Consul does not care whether they are text.
    pub value: Vec<u8>,
    /// The Raft index of the last write; the token for check-and-set.
    pub modify_index: u64,
    pub create_index: u64,
    pub flags: u64,
    /// The session that holds the key as a lock, if any.
    pub session: Option<String>,
}

/// One key read with its index, as returned by [`Client::get_blocking`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRead {
    /// `None` when the key does not exist.
    pub entry: Option<KvEntry>,
    /// `X-Consul-Index`: pass it to [`Client::get_blocking`] to wait for the next change.
    pub index: u64,
}

/// The result of a recursive read of a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Every key under the prefix, sorted by key (Consul's order).
    pub entries: Vec<KvEntry>,
    /// `X-Consul-Index`: pass it to [`Client::list_blocking`] to wait for the next change.
    pub index: u64,
}

/// Everything that can go wrong talking to Consul. Every message names the address, and the
/// method and key where there is one.
#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    #[error("invalid Consul address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },

    #[error("cannot read the CA certificate {}: {source}", path.display())]
    ReadCaCert {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot use the CA certificate {}: {reason}", path.display())]
    InvalidCaCert { path: PathBuf, reason: String },

    #[error("cannot read {what} {}: {source}", path.display())]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot use the client certificate {}: {reason}", path.display())]
    InvalidClientCert { path: PathBuf, reason: String },

    #[error("cannot set up the HTTP client for Consul at {address}: {reason}")]
    Setup { address: String, reason: String },

    #[error("cannot reach Consul at {address} ({method} {key}): {reason}")]
    Unreachable {
        address: String,
        method: Method,
        key: String,
        reason: String,
    },

    #[error("permission denied by Consul at {address} ({method} {key}): check CONSUL_HTTP_TOKEN")]
    PermissionDenied {
        address: String,
        method: Method,
        key: String,
    },

    #[error("Consul at {address} answered {method} {key} with HTTP {status}: {body}")]
    Http {
        address: String,
        method: Method,
        key: String,
        status: u16,
        body: String,
    },

    #[error("unexpected answer from Consul at {address} ({method} {key}): {reason}")]
    InvalidResponse {
        address: String,
        method: Method,
        key: String,
        reason: String,
    },
}

impl ConsulError {
    /// Whether trying again later may succeed: Consul was unreachable or had a server error.
    /// A lock request naming a session that no longer exists is a server error (HTTP 500) that
    /// never heals, so it is not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            ConsulError::Unreachable { .. } => true,
            ConsulError::Http { status, .. } => *status >= 500 && !self.is_invalid_session(),
            _ => false,
        }
    }

    /// Whether Consul refused a lock request because the session does not exist (any more).
    pub fn is_invalid_session(&self) -> bool {
        matches!(self, ConsulError::Http { status: 500, body, .. } if body.contains("invalid session"))
    }
}

/// A Consul HTTP API client. Cheap to clone; clones share one connection pool.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
    retry_timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a secret and stays out of logs.
        f.debug_struct("Client")
            .field("address", &self.address())
            .field("retry_timeout", &self.retry_timeout)
            .finish_non_exhaustive()
    }
}

/// One request to send: the method, the URL and what to name in errors (the KV key for KV
/// requests; `session/<operation>/<id>` for sessions).
struct Call<'a> {
    method: Method,
    url: Url,
    key: &'a str,
    query: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    /// How long one attempt may take before it counts as a transport failure.
    attempt_timeout: Duration,
    /// Sent once, without retries: a blocking query (see the module's documentation), or a
    /// probe that must answer now.
    once: bool,
}

/// An answer with a status below 400.
struct Answer {
    status: StatusCode,
    index: Option<u64>,
    body: Vec<u8>,
}

/// Consul's JSON for one key, as returned by `GET /v1/kv/...`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireEntry {
    key: String,
    #[serde(default)]
    value: Option<String>,
    modify_index: u64,
    create_index: u64,
    #[serde(default)]
    flags: u64,
    #[serde(default)]
    session: Option<String>,
}

/// Consul's JSON for a new session, as returned by `PUT /v1/session/create`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireSessionId {
    #[serde(rename = "ID")]
    id: String,
}

impl Client {
    /// Builds a client; nothing is sent until the first request.
    ///
    /// # Errors
    /// An invalid address or an unreadable CA certificate.
    pub fn new(config: &ConsulConfig) -> Result<Client, ConsulError> {
        install_crypto_provider();
        let base_text = base_url(&config.address, config.ssl)?;
        let base = Url::parse(&base_text).map_err(|e| ConsulError::InvalidAddress {
            address: config.address.clone(),
            reason: e.to_string(),
        })?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(
                config
                    .retry_timeout
                    .clamp(Duration::from_millis(500), Duration::from_secs(5)),
            )
            .no_proxy();
        if let Some(path) = &config.ca_cert {
            let pem = std::fs::read(path).map_err(|source| ConsulError::ReadCaCert {
                path: path.clone(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                ConsulError::InvalidCaCert {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?;
            if certs.is_empty() {
                return Err(ConsulError::InvalidCaCert {
                    path: path.clone(),
                    reason: "it holds no PEM certificate".to_owned(),
                });
            }
            builder = builder.tls_certs_only(certs);
        }
        if let Some(cert) = &config.client_cert {
            let read = |what, path: &PathBuf| {
                std::fs::read(path).map_err(|source| ConsulError::ReadFile {
                    what,
                    path: path.clone(),
                    source,
                })
            };
            let mut pem = read("the client certificate (CONSUL_CLIENT_CERT)", cert)?;
            if let Some(key) = &config.client_key {
                pem.push(b'\n');
                pem.extend(read("the client key (CONSUL_CLIENT_KEY)", key)?);
            }
            let identity =
                reqwest::Identity::from_pem(&pem).map_err(|e| ConsulError::InvalidClientCert {
                    path: cert.clone(),
                    reason: error_chain(&e),
                })?;
            builder = builder.identity(identity);
        }
        if !config.ssl_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let token = match (&config.token, &config.token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| ConsulError::ReadFile {
                        what: "the token file (CONSUL_HTTP_TOKEN_FILE)",
                        path: path.clone(),
                        source,
                    })?
                    .trim()
                    .to_owned(),
            )
            .filter(|t| !t.is_empty()),
            (None, None) => None,
        };
        let http = builder.build().map_err(|e| ConsulError::Setup {
            address: base_text.clone(),
            reason: error_chain(&e),
        })?;
        Ok(Client {
            http,
            base,
            token,
            retry_timeout: config.retry_timeout,
        })
    }

    /// The base URL requests go to, such as `http://127.0.0.1:8500`.
    pub fn address(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// Reads one key; `None` when it does not exist. A consistent read (see
    /// [`CONSISTENT`]).
    pub async fn get(&self, key: &str) -> Result<Option<KvEntry>, ConsulError> {
        let mut call = self.call(Method::GET, key);
        call.query.push((CONSISTENT, String::new()));
        let answer = self.send(call).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let mut entries = self.decode_entries(&Method::GET, key, &answer.body)?;
        Ok(entries.pop())
    }

    /// Reads every key under `prefix` (recursively) and the index to block on afterwards. A
    /// consistent read (see [`CONSISTENT`]).
    pub async fn list(&self, prefix: &str) -> Result<Listing, ConsulError> {
        self.list_inner(prefix, None).await
    }

    /// Like [`Client::list`], but Consul holds the request until something under `prefix`
    /// changes past `index` or `wait` passes (at most [`MAX_WAIT`]).
    ///
    /// # Caveats
    /// The answer may come back with the same index (a timeout, or an early wake-up) or even
    /// a smaller one; [`PrefixWatch`] applies Consul's rules for that.
    pub async fn list_blocking(
        &self,
        prefix: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Listing, ConsulError> {
        self.list_inner(prefix, Some((index, wait.min(MAX_WAIT))))
            .await
    }

    async fn list_inner(
        &self,
        prefix: &str,
        blocking: Option<(u64, Duration)>,
    ) -> Result<Listing, ConsulError> {
        let mut call = self.call(Method::GET, prefix);
        call.query.push(("recurse", String::new()));
        if let Some((index, wait)) = blocking {
            call.query.push(("index", index.to_string()));
            call.query.push(("wait", format!("{}ms", wait.as_millis())));
            // Consul adds up to wait/16 of jitter to the wait.
            call.attempt_timeout = wait + wait / 16 + self.retry_timeout;
            call.once = index > 0;
        } else {
            call.query.push((CONSISTENT, String::new()));
        }
        let answer = self.send(call).await?;
        let entries = if answer.status == StatusCode::NOT_FOUND {
            Vec::new()
        } else {
            self.decode_entries(&Method::GET, prefix, &answer.body)?
        };
        let index = answer.index.ok_or_else(|| ConsulError::InvalidResponse {
            address: self.address().to_owned(),
            method: Method::GET,
            key: prefix.to_owned(),
            reason: "no X-Consul-Index header".to_owned(),
        })?;
        Ok(Listing { entries, index })
    }

    /// Writes a key. With `cas: Some(index)` the write happens only if the key's ModifyIndex is
    /// still `index`; `Some(0)` means "only if the key does not exist". Returns whether the
    /// value was written.
    pub async fn put(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u64>,
    ) -> Result<bool, ConsulError> {
        let mut call = self.call(Method::PUT, key);
        if let Some(index) = cas {
            call.query.push(("cas", index.to_string()));
        }
        call.body = Some(value.to_vec());
        let answer = self.send(call).await?;
        self.decode_bool(&Method::PUT, key, &answer.body)
    }

    /// Deletes a key. With `cas: Some(index)` the delete happens only if the key's ModifyIndex
    /// is still `index`. Returns whether Consul did it (deleting a missing key without `cas`
    /// succeeds).
    pub async fn delete(&self, key: &str, cas: Option<u64>) -> Result<bool, ConsulError> {
        let mut call = self.call(Method::DELETE, key);
        if let Some(index) = cas {
            call.query.push(("cas", index.to_string()));
        }
        let answer = self.send(call).await?;
        self.decode_bool(&Method::DELETE, key, &answer.body)
    }

    /// Deletes `key` only if its ModifyIndex is still `index`, and writes `other` = `value`,
    /// in one transaction (`PUT /v1/txn`): both happen or neither. Returns `false` when the
    /// check failed (the key changed meanwhile) and nothing was written.
    pub async fn delete_cas_and_put(
        &self,
        key: &str,
        index: u64,
        other: &str,
        value: &[u8],
    ) -> Result<bool, ConsulError> {
        let first = serde_json::json!({"KV": {"Verb": "delete-cas", "Key": key, "Index": index}});
        self.txn_then_set(key, first, other, value).await
    }

    /// Writes `key` = `value` only if its ModifyIndex is still `index` (0: only if it does not
    /// exist), and `other` = `other_value`, in one transaction: both happen or neither, and
    /// both keys get the same ModifyIndex. Returns `false` when the check failed.
    pub async fn put_cas_and_put(
        &self,
        key: &str,
        value: &[u8],
        index: u64,
        other: &str,
        other_value: &[u8],
    ) -> Result<bool, ConsulError> {
        let first = serde_json::json!({"KV": {"Verb": "cas", "Key": key, "Index": index,
                                               "Value": base64_of(value)}});
        self.txn_then_set(key, first, other, other_value).await
    }

    /// Runs `first` and a write of `other` = `value` as one transaction; `false` when it was
    /// rolled back (`first`'s check failed).
    async fn txn_then_set(
        &self,
        key: &str,
        first: serde_json::Value,
        other: &str,
        value: &[u8],
    ) -> Result<bool, ConsulError> {
        let mut call = self.api_call(Method::PUT, key, &["txn"]);
        let ops = serde_json::json!([
            first,
            {"KV": {"Verb": "set", "Key": other, "Value": base64_of(value)}},
        ]);
        call.body = Some(ops.to_string().into_bytes());
        match self.send(call).await {
            Ok(_) => Ok(true),
            // The transaction was rolled back: the check-and-set failed.
            Err(ConsulError::Http { status: 409, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes every key under `prefix` (`?recurse`); nothing there is not an error.
    pub async fn delete_tree(&self, prefix: &str) -> Result<(), ConsulError> {
        let mut call = self.call(Method::DELETE, prefix);
        call.query.push(("recurse", String::new()));
        self.send(call).await?;
        Ok(())
    }

    /// Like [`Client::get`], but Consul holds the request until the key changes past `index`
    /// or `wait` passes (at most [`MAX_WAIT`]). With `index` 0 it answers at once.
    ///
    /// # Caveats
    /// The same index may come back (a timeout or an early wake-up); see [`next_index`].
    pub async fn get_blocking(
        &self,
        key: &str,
        index: u64,
        wait: Duration,
    ) -> Result<KeyRead, ConsulError> {
        let mut call = self.call(Method::GET, key);
        if index > 0 {
            let wait = wait.min(MAX_WAIT);
            call.query.push(("index", index.to_string()));
            call.query.push(("wait", format!("{}ms", wait.as_millis())));
            call.attempt_timeout = wait + wait / 16 + self.retry_timeout;
            call.once = true;
        }
        let answer = self.send(call).await?;
        let entry = if answer.status == StatusCode::NOT_FOUND {
            None
        } else {
            self.decode_entries(&Method::GET, key, &answer.body)?.pop()
        };
        let index = answer.index.ok_or_else(|| ConsulError::InvalidResponse {
            address: self.address().to_owned(),
            method: Method::GET,
            key: key.to_owned(),
            reason: "no X-Consul-Index header".to_owned(),
        })?;
        Ok(KeyRead { entry, index })
    }

    /// Creates a session for locks (`PUT /v1/session/create`) and returns its ID. The session
    /// is invalidated when it is not renewed for `ttl` (Consul may wait up to twice that), and
    /// then releases the locks it holds (behavior `release`); nobody can take a lock it held
    /// for `lock_delay` after that. It is also tied to the agent's node health (`serfHealth`).
    ///
    /// # Errors
    /// Consul refuses a TTL outside 10 s..24 h or a lock delay over 60 s (HTTP 400 or 500).
    pub async fn create_session(
        &self,
        name: &str,
        ttl: Duration,
        lock_delay: Duration,
    ) -> Result<String, ConsulError> {
        self.create_session_with(name, ttl, lock_delay, "release")
            .await
    }

    /// Like [`Client::create_session`], but the keys the session holds are *deleted* when it
    /// is invalidated (behavior `delete`): for presence keys such as a proxy's report, which
    /// must vanish with their writer.
    pub async fn create_ephemeral_session(
        &self,
        name: &str,
        ttl: Duration,
    ) -> Result<String, ConsulError> {
        self.create_session_with(name, ttl, Duration::ZERO, "delete")
            .await
    }

    async fn create_session_with(
        &self,
        name: &str,
        ttl: Duration,
        lock_delay: Duration,
        behavior: &str,
    ) -> Result<String, ConsulError> {
        let what = "session/create";
        let mut call = self.session_call(Method::PUT, what, &["create"]);
        let body = serde_json::json!({
            "Name": name,
            "TTL": format!("{}ms", ttl.as_millis()),
            "LockDelay": format!("{}ms", lock_delay.as_millis()),
            "Behavior": behavior,
        });
        call.body = Some(body.to_string().into_bytes());
        let answer = self.send(call).await?;
        let created: WireSessionId =
            serde_json::from_slice(&answer.body).map_err(|e| ConsulError::InvalidResponse {
                address: self.address().to_owned(),
                method: Method::PUT,
                key: what.to_owned(),
                reason: format!("expected {{\"ID\": ...}}: {e}"),
            })?;
        Ok(created.id)
    }

    /// Renews a session's TTL (`PUT /v1/session/renew/<id>`). Returns `false` when the session
    /// no longer exists (it expired or was destroyed): its locks are gone.
    pub async fn renew_session(&self, id: &str) -> Result<bool, ConsulError> {
        let what = format!("session/renew/{id}");
        let call = self.session_call(Method::PUT, &what, &["renew", id]);
        let answer = self.send(call).await?;
        Ok(answer.status != StatusCode::NOT_FOUND)
    }

    /// Destroys a session (`PUT /v1/session/destroy/<id>`); the locks it holds are released,
    /// and Consul applies their lock delay. Destroying a missing session succeeds.
    pub async fn destroy_session(&self, id: &str) -> Result<(), ConsulError> {
        let what = format!("session/destroy/{id}");
        let call = self.session_call(Method::PUT, &what, &["destroy", id]);
        self.send(call).await?;
        Ok(())
    }

    /// Takes `key` as a lock for `session` and writes `value` (`PUT ?acquire=`). Returns
    /// whether the session holds the lock now: `false` when another session holds it, or
    /// during the lock delay after a holder's session was invalidated. Acquiring a lock the
    /// session already holds succeeds and rewrites the value.
    ///
    /// # Errors
    /// A session that does not exist is refused; see [`ConsulError::is_invalid_session`].
    pub async fn acquire(
        &self,
        key: &str,
        session: &str,
        value: &[u8],
    ) -> Result<bool, ConsulError> {
        let mut call = self.call(Method::PUT, key);
        call.query.push(("acquire", session.to_owned()));
        call.body = Some(value.to_vec());
        let answer = self.send(call).await?;
        self.decode_bool(&Method::PUT, key, &answer.body)
    }

    /// Releases the lock on `key` if `session` holds it (`PUT ?release=`), without a lock
    /// delay. Returns whether it did.
    pub async fn release(&self, key: &str, session: &str) -> Result<bool, ConsulError> {
        let mut call = self.call(Method::PUT, key);
        call.query.push(("release", session.to_owned()));
        let answer = self.send(call).await?;
        self.decode_bool(&Method::PUT, key, &answer.body)
    }

    /// Asks Consul for its leader (`GET /v1/status/leader`), once, within `timeout`: `Ok`
    /// with the leader's address, or why Consul cannot serve reads now (unreachable, or no
    /// leader elected yet, as right after a restart).
    pub async fn ping(&self, timeout: Duration) -> Result<String, ConsulError> {
        let what = "status/leader";
        let mut call = self.api_call(Method::GET, what, &["status", "leader"]);
        call.attempt_timeout = timeout;
        call.once = true;
        let answer = self.send(call).await?;
        let leader: String =
            serde_json::from_slice(&answer.body).map_err(|e| ConsulError::InvalidResponse {
                address: self.address().to_owned(),
                method: Method::GET,
                key: what.to_owned(),
                reason: format!("expected a JSON string: {e}"),
            })?;
        if leader.is_empty() {
            return Err(ConsulError::Http {
                address: self.address().to_owned(),
                method: Method::GET,
                key: what.to_owned(),
                status: 200,
                body: "no cluster leader".to_owned(),
            });
        }
        Ok(leader)
    }

    /// A request on `/v1/session/<segments...>`, named `what` in errors.
    fn session_call<'a>(&self, method: Method, what: &'a str, segments: &[&str]) -> Call<'a> {
        let mut all = vec!["session"];
        all.extend_from_slice(segments);
        self.api_call(method, what, &all)
    }

    /// A request on `/v1/<segments...>`, named `what` in errors.
    fn api_call<'a>(&self, method: Method, what: &'a str, segments: &[&str]) -> Call<'a> {
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .expect("base_url only accepts http(s) URLs, which have a path");
            path.pop_if_empty().push("v1");
            for segment in segments {
                path.push(segment);
            }
        }
        Call {
            method,
            url,
            key: what,
            query: Vec::new(),
            body: None,
            attempt_timeout: self.retry_timeout.max(Duration::from_secs(1)),
            once: false,
        }
    }

    /// A request on `/v1/kv/<key>`.
    fn call<'a>(&self, method: Method, key: &'a str) -> Call<'a> {
        Call {
            method,
            url: self.kv_url(key),
            key,
            query: Vec::new(),
            body: None,
            attempt_timeout: self.retry_timeout.max(Duration::from_secs(1)),
            once: false,
        }
    }

    /// Sends one request, retrying transport failures and 5xx answers with exponential
    /// backoff for at most the configured retry time (unless [`Call::once`]). A 404 is returned as an answer; other
    /// statuses of 400 and above are errors.
    async fn send(&self, call: Call<'_>) -> Result<Answer, ConsulError> {
        if call.once {
            return self.attempt(&call).await;
        }
        let policy = backoff::ExponentialBackoffBuilder::new()
            .with_initial_interval(Duration::from_millis(100))
            .with_max_interval(Duration::from_secs(2))
            .with_max_elapsed_time(Some(self.retry_timeout))
            .build();
        backoff::future::retry(policy, || async {
            self.attempt(&call).await.map_err(|e| {
                if e.is_transient() {
                    tracing::debug!(error = %e, "retrying a Consul request");
                    backoff::Error::transient(e)
                } else {
                    backoff::Error::permanent(e)
                }
            })
        })
        .await
    }

    async fn attempt(&self, call: &Call<'_>) -> Result<Answer, ConsulError> {
        let mut url = call.url.clone();
        if !call.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&call.query);
        }
        let mut request = self
            .http
            .request(call.method.clone(), url)
            .timeout(call.attempt_timeout);
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", token);
        }
        if let Some(body) = &call.body {
            request = request.body(body.clone());
        }
        let unreachable = |reason: String| ConsulError::Unreachable {
            address: self.address().to_owned(),
            method: call.method.clone(),
            key: call.key.to_owned(),
            reason,
        };
        let response = request
            .send()
            .await
            .map_err(|e| unreachable(describe_transport_error(&e, call.attempt_timeout)))?;
        let status = response.status();
        let index = response
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = response
            .bytes()
            .await
            .map_err(|e| unreachable(describe_transport_error(&e, call.attempt_timeout)))?
            .to_vec();
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(Answer {
                status,
                index,
                body,
            });
        }
        if status == StatusCode::FORBIDDEN {
            return Err(ConsulError::PermissionDenied {
                address: self.address().to_owned(),
                method: call.method.clone(),
                key: call.key.to_owned(),
            });
        }
        Err(ConsulError::Http {
            address: self.address().to_owned(),
            method: call.method.clone(),
            key: call.key.to_owned(),
            status: status.as_u16(),
            body: one_line(&String::from_utf8_lossy(&body)),
        })
    }

    /// `<base>/v1/kv/<key>`, each segment of the key percent-encoded.
    fn kv_url(&self, key: &str) -> Url {
        let mut url = self.base.clone();
        {
            let mut segments = url
                .path_segments_mut()
                .expect("base_url only accepts http(s) URLs, which have a path");
            segments.pop_if_empty().push("v1").push("kv");
            for segment in key.split('/') {
                segments.push(segment);
            }
        }
        url
    }

    fn decode_entries(
        &self,
        method: &Method,
        key: &str,
        body: &[u8],
    ) -> Result<Vec<KvEntry>, ConsulError> {
        let invalid = |reason: String| ConsulError::InvalidResponse {
            address: self.address().to_owned(),
            method: method.clone(),
            key: key.to_owned(),
            reason,
        };
        let wire: Vec<WireEntry> =
            serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
        wire.into_iter()
            .map(|entry| {
                let value = match entry.value {
                    None => Vec::new(),
                    Some(encoded) => base64::engine::general_purpose::STANDARD
                        .decode(encoded)
                        .map_err(|e| {
                            invalid(format!("the value of {} is not base64: {e}", entry.key))
                        })?,
                };
                Ok(KvEntry {
                    key: entry.key,
                    value,
                    modify_index: entry.modify_index,
                    create_index: entry.create_index,
                    flags: entry.flags,
                    session: entry.session.filter(|s| !s.is_empty()),
                })
            })
            .collect()
    }

    fn decode_bool(&self, method: &Method, key: &str, body: &[u8]) -> Result<bool, ConsulError> {
        serde_json::from_slice(body).map_err(|e| ConsulError::InvalidResponse {
            address: self.address().to_owned(),
            method: method.clone(),
            key: key.to_owned(),
            reason: format!("expected true or false: {e}"),
        })
    }
}

/// reqwest is built without a built-in crypto provider (`rustls-no-provider`), so TLS needs a
/// process-wide default before the first client is built, or building it panics. We use
/// `ring`, which the crate already compiles for the Docker client. Installing fails only when
/// some other provider was installed first, and then that one is used.
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A short reason for a failed request, such as `connection refused` or
/// `no answer within 2s`, instead of reqwest's nested messages.
fn describe_transport_error(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("no answer within {}", humantime::format_duration(timeout));
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                std::io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
                std::io::ErrorKind::TimedOut => "connection timed out".to_owned(),
                _ => io.to_string(),
            };
        }
        source = current.source();
    }
    error_chain(error)
}

/// An error and all its sources on one line, separated by `: `.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(current) = source {
        let next = current.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = current.source();
    }
    text
}

fn one_line(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.is_empty() {
        "(empty body)".to_owned()
    } else {
        joined
    }
}

/// What one blocking-query answer means for the index to use next, after Consul's rules
/// for blocking queries (<https://developer.hashicorp.com/consul/api-docs/features/blocking>).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexStep {
    /// The data may have changed: process it, then block on `next`.
    Changed { next: u64 },
    /// The same index came back (the wait ran out, or Consul woke up early): nothing to do,
    /// block on `next` again.
    Unchanged { next: u64 },
    /// The index went backwards (a snapshot restore, a deleted key that held the highest index,
    /// a Consul upgrade): forget what was known and start again from index 0.
    Reset,
}

/// The query parameter of every read that does not block: Consul answers it only once its
/// state machine has caught up with its log. A Consul server restarted on its data replays
/// its log after it elected itself, and meanwhile answers default reads from a state that
/// goes back in time and then forward through every past write: a proxy that read that
/// would drive HAProxy through old route tables. Blocking reads follow a consistent one (the
/// first read of a watch, and every read after an error or an index reset), so they start
/// from the caught-up state and only move forward.
pub const CONSISTENT: &str = "consistent";

/// Applies Consul's index rules to the index `returned` by a query that was sent with
/// `previous` (0 for a plain, non-blocking read).
///
/// * An index below the previous one resets to 0.
/// * An index of 0 is treated as 1, so that the next request really blocks instead of spinning.
/// * After a non-blocking read (`previous == 0`) the data is always new.
pub fn next_index(previous: u64, returned: u64) -> IndexStep {
    let returned = returned.max(1);
    if previous == 0 {
        IndexStep::Changed { next: returned }
    } else if returned < previous {
        IndexStep::Reset
    } else if returned == previous {
        IndexStep::Unchanged { next: previous }
    } else {
        IndexStep::Changed { next: returned }
    }
}

/// A changed listing delivered by [`PrefixWatch::next`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchUpdate {
    pub listing: Listing,
    /// The index went backwards since the previous update, so this listing came from a fresh
    /// full read. Everything derived from earlier indexes (such as an observed ModifyIndex)
    /// may be ahead of Consul's data now and must be re-checked.
    pub reset: bool,
}

/// Watches every key under a prefix with blocking queries, yielding the full listing each time
/// something changes.
///
/// The first [`PrefixWatch::next`] returns at once with the current listing; later calls block
/// until the listing differs from the one last yielded (Consul also wakes blocking queries
/// when nothing under the prefix changed, for instance on writes elsewhere while the prefix is
/// empty; those wake-ups are absorbed here). An index reset is handled inside (the next read
/// is a full, non-blocking one) and is reported through [`WatchUpdate::reset`];
/// [`PrefixWatch::reset_pending`] tells whether a reset was seen and no full read has
/// succeeded since.
///
/// After any error (Consul went away, or answered with an error) the next read does not
/// block: a blocking query with the old index, sent to a Consul that came back without its
/// data (at a lower index), would be held for the whole wait, and the daemon would be blind
/// meanwhile. That read's index is compared with the old one (a lower one is a reset), and
/// its listing is returned even when nothing changed, so that the caller knows Consul
/// answers again.
#[derive(Debug, Clone)]
pub struct PrefixWatch {
    client: Client,
    prefix: String,
    wait: Duration,
    index: u64,
    reset_pending: bool,
    /// The last read failed: the next one must not block, and its answer is yielded.
    after_error: bool,
    /// The entries last yielded, to tell a real change from a wake-up.
    last_entries: Option<Vec<KvEntry>>,
}

impl PrefixWatch {
    /// A watch of `prefix`; each blocking request waits at most `wait` on the server.
    pub fn new(client: Client, prefix: impl Into<String>, wait: Duration) -> PrefixWatch {
        PrefixWatch {
            client,
            prefix: prefix.into(),
            wait: wait.min(MAX_WAIT),
            index: 0,
            reset_pending: false,
            after_error: false,
            last_entries: None,
        }
    }

    /// The index the next request will block on (0: it will not block).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Whether the index went backwards and no full read has succeeded since: until then, the
    /// caller should treat what it knows about the prefix as unknown.
    pub fn reset_pending(&self) -> bool {
        self.reset_pending
    }

    /// Waits for the next change under the prefix and returns the whole listing.
    ///
    /// # Errors
    /// When a blocking read fails (at once, without retries), or a plain read fails for the
    /// client's retry time, or Consul refuses the request. The watch keeps its index, and the
    /// next call reads without blocking and compares the index it gets with the old one.
    pub async fn next(&mut self) -> Result<WatchUpdate, ConsulError> {
        loop {
            let read = if self.index == 0 || self.after_error {
                self.client.list(&self.prefix).await
            } else {
                self.client
                    .list_blocking(&self.prefix, self.index, self.wait)
                    .await
            };
            let listing = match read {
                Ok(listing) => listing,
                Err(e) => {
                    self.after_error = true;
                    return Err(e);
                }
            };
            let recovered = std::mem::take(&mut self.after_error);
            match next_index(self.index, listing.index) {
                IndexStep::Changed { next } | IndexStep::Unchanged { next } if recovered => {
                    self.index = next;
                    self.last_entries = Some(listing.entries.clone());
                    let reset = std::mem::take(&mut self.reset_pending);
                    return Ok(WatchUpdate { listing, reset });
                }
                IndexStep::Changed { next } => {
                    self.index = next;
                    let same = self.last_entries.as_ref() == Some(&listing.entries);
                    if same && !self.reset_pending {
                        continue;
                    }
                    self.last_entries = Some(listing.entries.clone());
                    let reset = std::mem::take(&mut self.reset_pending);
                    return Ok(WatchUpdate { listing, reset });
                }
                IndexStep::Unchanged { next } => self.index = next,
                IndexStep::Reset => {
                    tracing::info!(prefix = %self.prefix, from = self.index, to = listing.index,
                        "the Consul index went backwards; reading everything again");
                    self.index = 0;
                    self.reset_pending = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_rules() {
        use IndexStep::*;
        let cases = [
            // (previous, returned, expected)
            (0, 0, Changed { next: 1 }),
            (0, 7, Changed { next: 7 }),
            (7, 7, Unchanged { next: 7 }),
            (7, 9, Changed { next: 9 }),
            (9, 3, Reset),
            (1, 0, Unchanged { next: 1 }),
            (5, 0, Reset),
        ];
        for (previous, returned, expected) in cases {
            assert_eq!(
                next_index(previous, returned),
                expected,
                "previous {previous}, returned {returned}"
            );
        }
    }

    #[test]
    fn base_urls() {
        let cases = [
            ("127.0.0.1:8500", false, Ok("http://127.0.0.1:8500")),
            ("127.0.0.1:8500", true, Ok("https://127.0.0.1:8500")),
            ("http://consul:8500/", false, Ok("http://consul:8500")),
            ("https://consul:8501", false, Ok("https://consul:8501")),
            ("localhost:8500", false, Ok("http://localhost:8500")),
            ("", false, Err(())),
            ("unix:///var/run/consul.sock", false, Err(())),
            ("http://consul:8500/v1", false, Err(())),
        ];
        for (address, ssl, expected) in cases {
            let got = base_url(address, ssl);
            match expected {
                Ok(url) => assert_eq!(got.unwrap(), url, "{address}"),
                Err(()) => assert!(got.is_err(), "{address} should be refused, got {got:?}"),
            }
        }
    }

    #[test]
    fn config_from_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let config = ConsulConfig::from_lookup(env(&[]));
        assert_eq!(config, ConsulConfig::default());

        let config = ConsulConfig::from_lookup(env(&[
            ("CONSUL_HTTP_ADDR", "consul:8501"),
            ("CONSUL_HTTP_TOKEN", "secret"),
            ("CONSUL_HTTP_SSL", "true"),
            ("CONSUL_HTTP_SSL_VERIFY", "false"),
            ("CONSUL_CACERT", "/etc/consul/ca.pem"),
            ("CONSUL_HTTP_TOKEN_FILE", "/run/secrets/consul-token"),
            ("CONSUL_CLIENT_CERT", "/etc/consul/client.pem"),
            ("CONSUL_CLIENT_KEY", "/etc/consul/client-key.pem"),
        ]));
        assert_eq!(
            config.token_file,
            Some(PathBuf::from("/run/secrets/consul-token"))
        );
        assert_eq!(
            config.client_cert,
            Some(PathBuf::from("/etc/consul/client.pem"))
        );
        assert_eq!(
            config.client_key,
            Some(PathBuf::from("/etc/consul/client-key.pem"))
        );
        assert_eq!(config.address, "consul:8501");
        assert_eq!(config.token.as_deref(), Some("secret"));
        assert!(config.ssl);
        assert!(!config.ssl_verify);
        assert_eq!(config.ca_cert, Some(PathBuf::from("/etc/consul/ca.pem")));

        let config =
            ConsulConfig::from_lookup(env(&[("CONSUL_HTTP_ADDR", " "), ("CONSUL_HTTP_TOKEN", "")]));
        assert_eq!(config.address, DEFAULT_ADDRESS);
        assert_eq!(config.token, None);
    }

    #[test]
    fn kv_urls_escape_each_segment() {
        let client = Client::new(&ConsulConfig::default()).unwrap();
        assert_eq!(
            client.kv_url("cutover/services/books").as_str(),
            "http://127.0.0.1:8500/v1/kv/cutover/services/books"
        );
        assert_eq!(
            client.kv_url("cutover/services/").as_str(),
            "http://127.0.0.1:8500/v1/kv/cutover/services/"
        );
        assert_eq!(
            client.kv_url("a b/c?d").as_str(),
            "http://127.0.0.1:8500/v1/kv/a%20b/c%3Fd"
        );
    }

    #[test]
    fn a_tls_client_builds() {
        // Building an HTTPS client panics when no rustls crypto provider is installed.
        let config = ConsulConfig {
            address: "https://127.0.0.1:8501".to_owned(),
            ..ConsulConfig::default()
        };
        let client = Client::new(&config).unwrap();
        assert_eq!(client.address(), "https://127.0.0.1:8501");
    }
}
