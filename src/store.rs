//! cutover's key layout in Consul KV, as typed reads and writes.
//!
//! Under a prefix (default `cutover`):
//!
//! * `<prefix>/services/<name>`: the manifest, YAML text exactly as the user wrote it;
//! * `<prefix>/status/<name>`: the daemon's [`Status`], JSON;
//! * `<prefix>/requests/<name>`: the last imperative [`Request`], JSON.
//!
//! Only direct children of each folder count: a key such as `<prefix>/services/a/b` or the
//! folder key `<prefix>/services/` itself is ignored. This module parses what it reads but
//! decides nothing; the CLI and the daemon do.
//!
//! A read fails only when Consul cannot be read. A value that does not decode (junk put with
//! `consul kv put`, a half-written file) is a result, not an error: a manifest carries its
//! diagnostics ([`StoredService::parsed`]), a status or request comes back as
//! [`Stored::Unreadable`], so that one bad key never hides the others.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::consul::{Client, ConsulError, PrefixWatch};
use crate::fleet::{ProxyReport, PublishedRoutes};
use crate::spec::{self, Diagnostics, Service};
use crate::status::{PruneConfirmation, RefusedDeletion, Request, Status};

/// The prefix used when neither `--prefix` nor `CUTOVER_PREFIX` says otherwise.
pub const DEFAULT_PREFIX: &str = "cutover";

/// The folders under the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folder {
    Services,
    Status,
    Requests,
    /// Keys that steer the daemon itself rather than one service.
    Control,
    /// The route table the leader publishes for every proxy, one key per service.
    Routes,
    /// Each live proxy's report, one key per proxy, held by its session.
    Proxies,
}

impl Folder {
    pub fn as_str(self) -> &'static str {
        match self {
            Folder::Services => "services",
            Folder::Status => "status",
            Folder::Requests => "requests",
            Folder::Control => "control",
            Folder::Routes => "routes",
            Folder::Proxies => "proxies",
        }
    }
}

/// `<prefix>/<folder>/<name>`.
pub fn key_for(prefix: &str, folder: Folder, name: &str) -> String {
    format!("{}{name}", folder_prefix(prefix, folder))
}

/// `<prefix>/<folder>/`, the prefix to list or watch.
pub fn folder_prefix(prefix: &str, folder: Folder) -> String {
    format!("{prefix}/{}/", folder.as_str())
}

/// The name in `<prefix>/<folder>/<name>`, or `None` for a key outside the folder, the folder
/// key itself, or a nested key.
pub fn name_from_key<'k>(prefix: &str, folder: Folder, key: &'k str) -> Option<&'k str> {
    let name = key.strip_prefix(prefix)?.strip_prefix('/')?;
    let name = name.strip_prefix(folder.as_str())?.strip_prefix('/')?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// `<prefix>/leader`: the leader election's lock.
pub fn leader_key(prefix: &str) -> String {
    format!("{prefix}/leader")
}

/// `<prefix>/control/prune-confirm`: a [`crate::status::PruneConfirmation`].
pub fn prune_confirm_key(prefix: &str) -> String {
    key_for(prefix, Folder::Control, "prune-confirm")
}

/// `<prefix>/control/deletion-refused`: a [`crate::status::RefusedDeletion`].
pub fn deletion_refused_key(prefix: &str) -> String {
    key_for(prefix, Folder::Control, "deletion-refused")
}

/// `<prefix>/control/deleted/<name>`: a [`crate::status::DeletionIntent`], written in the same
/// transaction as a deliberate deletion of the spec.
pub fn deletion_intent_key(prefix: &str, name: &str) -> String {
    format!(
        "{}/deleted/{name}",
        folder_prefix(prefix, Folder::Control).trim_end_matches('/')
    )
}

/// The service a [`deletion_intent_key`] is about.
pub fn name_from_intent_key<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let rest = key.strip_prefix(&deletion_intent_key(prefix, ""))?;
    (!rest.is_empty() && !rest.contains('/')).then_some(rest)
}

/// `<prefix>/history/<name>/`: everything kept of a service's past revisions.
pub fn history_prefix(prefix: &str, name: &str) -> String {
    format!("{prefix}/history/{name}/")
}

/// `<prefix>/history/<name>/rev/<revision>`: a [`crate::history::Entry`].
pub fn history_entry_key(prefix: &str, name: &str, revision: &str) -> String {
    format!("{}rev/{revision}", history_prefix(prefix, name))
}

/// `<prefix>/history/<name>/cause`: a [`crate::history::Cause`], written in the same
/// transaction as the spec it explains.
pub fn history_cause_key(prefix: &str, name: &str) -> String {
    format!("{}cause", history_prefix(prefix, name))
}

/// Cleans a user-given prefix: no leading or trailing slashes, not empty.
pub fn normalize_prefix(prefix: &str) -> Result<String, StoreError> {
    let trimmed = prefix.trim().trim_matches('/');
    if trimmed.is_empty() || trimmed.split('/').any(str::is_empty) {
        return Err(StoreError::InvalidPrefix {
            prefix: prefix.to_owned(),
        });
    }
    Ok(trimmed.to_owned())
}

/// A manifest as found in KV. `Debug` leaves out the text, which holds env values.
#[derive(Clone)]
pub struct StoredService {
    /// The last segment of the key.
    pub name: String,
    pub key: String,
    /// The ModifyIndex of the key: the version to pass as `cas` when replacing it.
    pub modify_index: u64,
    /// The text as stored.
    pub text: String,
    /// The text parsed and validated; the diagnostics' source is the KV key.
    pub parsed: Result<Service, Diagnostics>,
}

impl std::fmt::Debug for StoredService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredService")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("modify_index", &self.modify_index)
            .field("text", &format_args!("<{} bytes>", self.text.len()))
            .field("parsed", &self.parsed)
            .finish()
    }
}

impl StoredService {
    /// Parses a stored value. A value that is not UTF-8 becomes a diagnostic rather than an
    /// error, so that one broken key never hides the others. Public for the fuzz target
    /// (`tests/fuzz_manifest.rs`), which feeds it whatever bytes a KV value could hold.
    pub fn from_bytes(name: &str, key: String, modify_index: u64, bytes: Vec<u8>) -> StoredService {
        let (text, parsed) = match String::from_utf8(bytes) {
            Ok(text) => {
                let parsed = spec::parse_service(&key, &text);
                (text, parsed)
            }
            Err(e) => {
                let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
                let diagnostic = spec::Diagnostic {
                    source: key.clone(),
                    line: 0,
                    column: 0,
                    path: String::new(),
                    message: "the value is not UTF-8 text; store the manifest as YAML".to_owned(),
                };
                (text, Err(Diagnostics(vec![diagnostic])))
            }
        };
        StoredService {
            name: name.to_owned(),
            key,
            modify_index,
            text,
            parsed,
        }
    }
}

/// A value read from KV with the ModifyIndex to use for check-and-set.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub modify_index: u64,
}

/// A status or request as found in KV: decoded, or why it could not be.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored<T> {
    Readable(Versioned<T>),
    Unreadable(Unreadable),
}

impl<T> Stored<T> {
    /// The decoded value, if it decoded.
    pub fn readable(&self) -> Option<&Versioned<T>> {
        match self {
            Stored::Readable(versioned) => Some(versioned),
            Stored::Unreadable(_) => None,
        }
    }

    /// The decoded value, if it decoded.
    pub fn into_readable(self) -> Option<Versioned<T>> {
        match self {
            Stored::Readable(versioned) => Some(versioned),
            Stored::Unreadable(_) => None,
        }
    }

    /// Why it did not decode, if it did not.
    pub fn unreadable(&self) -> Option<&Unreadable> {
        match self {
            Stored::Readable(_) => None,
            Stored::Unreadable(unreadable) => Some(unreadable),
        }
    }
}

/// A key whose value did not decode. Displays as one line naming the key, its ModifyIndex
/// and the decode error, such as `cutover/status/web (index 42) does not hold a valid
/// status: expected value at line 1 column 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub key: String,
    /// The ModifyIndex of the bad value: a new bad value has a new one.
    pub modify_index: u64,
    /// `status` or `request`.
    pub what: &'static str,
    /// The decoder's message, at most [`MAX_ERROR_CHARS`] characters.
    pub error: String,
}

/// How much of a decode error is kept: serde's messages can quote the value.
pub const MAX_ERROR_CHARS: usize = 200;

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (index {}) does not hold a valid {}: {}",
            self.key, self.modify_index, self.what, self.error
        )
    }
}

/// What can go wrong reading or writing cutover's keys.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Consul(#[from] ConsulError),

    #[error("invalid prefix {prefix:?}: write path segments such as cutover or teams/web/cutover")]
    InvalidPrefix { prefix: String },

    #[error("{key} would be {size} bytes, more than Consul's limit of {limit} bytes")]
    TooLarge {
        key: String,
        size: usize,
        limit: usize,
    },
}

/// Typed access to cutover's keys under one prefix.
#[derive(Debug, Clone)]
pub struct Store {
    client: Client,
    prefix: String,
}

impl Store {
    /// # Errors
    /// An empty or malformed prefix.
    pub fn new(client: Client, prefix: &str) -> Result<Store, StoreError> {
        Ok(Store {
            client,
            prefix: normalize_prefix(prefix)?,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>/services/<name>`.
    pub fn service_key(&self, name: &str) -> String {
        key_for(&self.prefix, Folder::Services, name)
    }

    /// `<prefix>/status/<name>`.
    pub fn status_key(&self, name: &str) -> String {
        key_for(&self.prefix, Folder::Status, name)
    }

    /// `<prefix>/requests/<name>`.
    pub fn request_key(&self, name: &str) -> String {
        key_for(&self.prefix, Folder::Requests, name)
    }

    /// Every service under `<prefix>/services/`, sorted by name, and the listing's index.
    pub async fn list_services(&self) -> Result<(Vec<StoredService>, u64), StoreError> {
        let listing = self
            .client
            .list(&folder_prefix(&self.prefix, Folder::Services))
            .await?;
        let services = self.services_from_entries(listing.entries);
        Ok((services, listing.index))
    }

    /// Turns the entries of a listing (or of a [`PrefixWatch`] update on
    /// [`Store::watch_services`]) into services, skipping keys that are not direct children.
    pub fn services_from_entries(
        &self,
        entries: Vec<crate::consul::KvEntry>,
    ) -> Vec<StoredService> {
        let mut services = Vec::new();
        for entry in entries {
            let Some(name) = name_from_key(&self.prefix, Folder::Services, &entry.key) else {
                continue;
            };
            let name = name.to_owned();
            services.push(StoredService::from_bytes(
                &name,
                entry.key,
                entry.modify_index,
                entry.value,
            ));
        }
        services.sort_by(|a, b| a.name.cmp(&b.name));
        services
    }

    /// A blocking-query watch on `<prefix>/services/`.
    pub fn watch_services(&self, wait: Duration) -> PrefixWatch {
        self.watch_folder(Folder::Services, wait)
    }

    /// One service, or `None` when its key does not exist.
    pub async fn get_service(&self, name: &str) -> Result<Option<StoredService>, StoreError> {
        let key = self.service_key(name);
        let Some(entry) = self.client.get(&key).await? else {
            return Ok(None);
        };
        Ok(Some(StoredService::from_bytes(
            name,
            key,
            entry.modify_index,
            entry.value,
        )))
    }

    /// Writes a manifest's text if the key's ModifyIndex is still `cas` (0: only if it does not
    /// exist). Returns whether it was written.
    ///
    /// # Errors
    /// A text over [`spec::MAX_VALUE_BYTES`] is refused before anything is sent.
    pub async fn put_service(&self, name: &str, text: &str, cas: u64) -> Result<bool, StoreError> {
        let key = self.service_key(name);
        check_size(&key, text.len())?;
        Ok(self.client.put(&key, text.as_bytes(), Some(cas)).await?)
    }

    /// Writes a manifest if the key's ModifyIndex is still `cas`, and in the same transaction
    /// (so with the same ModifyIndex) who asked for it, which the daemon records in the
    /// service's history. Returns whether it was written.
    pub async fn put_service_with_cause(
        &self,
        name: &str,
        text: &str,
        cas: u64,
        cause: &crate::history::Cause,
    ) -> Result<bool, StoreError> {
        let key = self.service_key(name);
        check_size(&key, text.len())?;
        let cause = serde_json::to_vec(cause).unwrap_or_default();
        let cause_key = history_cause_key(&self.prefix, name);
        Ok(self
            .client
            .put_cas_and_put(&key, text.as_bytes(), cas, &cause_key, &cause)
            .await?)
    }

    /// The kept revisions of a service, in no particular order; an entry that does not
    /// decode is skipped.
    pub async fn list_history(&self, name: &str) -> Result<Vec<crate::history::Entry>, StoreError> {
        let prefix = history_entry_key(&self.prefix, name, "");
        let listing = self.client.list(&prefix).await?;
        Ok(listing
            .entries
            .iter()
            .filter_map(|e| serde_json::from_slice(&e.value).ok())
            .collect())
    }

    /// One kept revision, if it is kept and decodes.
    pub async fn get_history_entry(
        &self,
        name: &str,
        revision: &str,
    ) -> Result<Option<crate::history::Entry>, StoreError> {
        let entry = (self.client)
            .get(&history_entry_key(&self.prefix, name, revision))
            .await?;
        Ok(entry.and_then(|e| serde_json::from_slice(&e.value).ok()))
    }

    /// Keeps (or replaces) one revision of a service.
    pub async fn put_history_entry(
        &self,
        name: &str,
        entry: &crate::history::Entry,
    ) -> Result<(), StoreError> {
        let key = history_entry_key(&self.prefix, name, &entry.revision);
        self.put_json(&key, entry, None).await?;
        Ok(())
    }

    /// Forgets one revision of a service.
    pub async fn delete_history_entry(&self, name: &str, revision: &str) -> Result<(), StoreError> {
        (self.client)
            .delete(&history_entry_key(&self.prefix, name, revision), None)
            .await?;
        Ok(())
    }

    /// Who asked for the spec written last with a cause, and that spec's ModifyIndex.
    pub async fn get_history_cause(
        &self,
        name: &str,
    ) -> Result<Option<(crate::history::Cause, u64)>, StoreError> {
        let entry = self
            .client
            .get(&history_cause_key(&self.prefix, name))
            .await?;
        Ok(entry.and_then(|e| Some((serde_json::from_slice(&e.value).ok()?, e.modify_index))))
    }

    /// Forgets a deleted service's history.
    pub async fn delete_history(&self, name: &str) -> Result<(), StoreError> {
        (self.client)
            .delete_tree(&history_prefix(&self.prefix, name))
            .await?;
        Ok(())
    }

    /// Deletes a manifest if the key's ModifyIndex is still `cas`. Returns whether it was
    /// deleted. The status key is left to the daemon, which removes it after tearing down.
    ///
    /// A deliberate deletion: in the same Consul transaction it records a
    /// [`DeletionIntent`](crate::status::DeletionIntent), so that the daemon removes the service
    /// at once instead of taking it for part of a mass deletion.
    pub async fn delete_service(&self, name: &str, cas: u64) -> Result<bool, StoreError> {
        let intent = crate::status::DeletionIntent {
            at_ms: crate::status::now_ms(),
        };
        let value = serde_json::to_vec(&intent).unwrap_or_default();
        Ok(self
            .client
            .delete_cas_and_put(
                &self.service_key(name),
                cas,
                &deletion_intent_key(&self.prefix, name),
                &value,
            )
            .await?)
    }

    /// The deletion intents under `<prefix>/control/deleted/`, by service; one that does not
    /// decode counts as none.
    pub async fn list_deletion_intents(
        &self,
    ) -> Result<BTreeMap<String, crate::status::DeletionIntent>, StoreError> {
        let listing = self
            .client
            .list(&format!(
                "{}/",
                deletion_intent_key(&self.prefix, "").trim_end_matches('/')
            ))
            .await?;
        Ok(self.intents_from_entries(&listing.entries))
    }

    /// The deletion intents among `entries` (a listing of the control folder or below).
    pub fn intents_from_entries(
        &self,
        entries: &[crate::consul::KvEntry],
    ) -> BTreeMap<String, crate::status::DeletionIntent> {
        entries
            .iter()
            .filter_map(|e| {
                let name = name_from_intent_key(&self.prefix, &e.key)?;
                let intent = serde_json::from_slice(&e.value).ok()?;
                Some((name.to_owned(), intent))
            })
            .collect()
    }

    /// Removes the deletion intent of `name` (done with, or the spec is back).
    pub async fn delete_deletion_intent(&self, name: &str) -> Result<(), StoreError> {
        self.client
            .delete(&deletion_intent_key(&self.prefix, name), None)
            .await?;
        Ok(())
    }

    /// The daemon's status of one service, or `None` when it has written none.
    ///
    /// # Errors
    /// Only when Consul cannot be read; a value that does not decode is
    /// [`Stored::Unreadable`].
    pub async fn get_status(&self, name: &str) -> Result<Option<Stored<Status>>, StoreError> {
        self.get_json(&self.status_key(name), "status").await
    }

    /// Every status under `<prefix>/status/`, by service name, sorted by name; one that does
    /// not decode is listed as [`Stored::Unreadable`].
    ///
    /// # Errors
    /// Only when Consul cannot be read.
    pub async fn list_statuses(&self) -> Result<Vec<(String, Stored<Status>)>, StoreError> {
        let listing = self
            .client
            .list(&folder_prefix(&self.prefix, Folder::Status))
            .await?;
        let mut statuses = Vec::new();
        for entry in listing.entries {
            let Some(name) = name_from_key(&self.prefix, Folder::Status, &entry.key) else {
                continue;
            };
            let name = name.to_owned();
            statuses.push((
                name,
                decode_json(entry.key, "status", entry.modify_index, &entry.value),
            ));
        }
        statuses.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(statuses)
    }

    /// Writes a status, with check-and-set when `cas` is given. Returns whether it was written.
    pub async fn put_status(
        &self,
        name: &str,
        status: &Status,
        cas: Option<u64>,
    ) -> Result<bool, StoreError> {
        self.put_json(&self.status_key(name), status, cas).await
    }

    /// Removes a status; the daemon does so once a deleted service's containers are gone.
    pub async fn delete_status(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.client.delete(&self.status_key(name), None).await?)
    }

    /// The last imperative request for a service, or `None`.
    ///
    /// # Errors
    /// Only when Consul cannot be read; a value that does not decode is
    /// [`Stored::Unreadable`].
    pub async fn get_request(&self, name: &str) -> Result<Option<Stored<Request>>, StoreError> {
        self.get_json(&self.request_key(name), "request").await
    }

    /// Writes a request, with check-and-set when `cas` is given. Returns whether it was written.
    pub async fn put_request(
        &self,
        name: &str,
        request: &Request,
        cas: Option<u64>,
    ) -> Result<bool, StoreError> {
        self.put_json(&self.request_key(name), request, cas).await
    }

    /// The operator's confirmation of a refused deletion, if any (an unreadable one counts
    /// as none: it confirms nothing).
    pub async fn get_prune_confirmation(
        &self,
    ) -> Result<Option<Versioned<PruneConfirmation>>, StoreError> {
        let found = self
            .get_json(&prune_confirm_key(&self.prefix), "prune confirmation")
            .await?;
        Ok(found.and_then(Stored::into_readable))
    }

    /// Writes a confirmation (check-and-set when `cas` is given). Returns whether it was written.
    pub async fn put_prune_confirmation(
        &self,
        confirmation: &PruneConfirmation,
        cas: Option<u64>,
    ) -> Result<bool, StoreError> {
        self.put_json(&prune_confirm_key(&self.prefix), confirmation, cas)
            .await
    }

    /// Removes the confirmation if it is still at `cas`.
    pub async fn delete_prune_confirmation(&self, cas: u64) -> Result<bool, StoreError> {
        Ok(self
            .client
            .delete(&prune_confirm_key(&self.prefix), Some(cas))
            .await?)
    }

    /// The deletion the guard refuses now, if any.
    pub async fn get_refused_deletion(&self) -> Result<Option<RefusedDeletion>, StoreError> {
        let found = self
            .get_json(&deletion_refused_key(&self.prefix), "refused deletion")
            .await?;
        Ok(found.and_then(Stored::into_readable).map(|v| v.value))
    }

    /// Records the refused deletion, or clears it with `None`.
    pub async fn set_refused_deletion(
        &self,
        refused: Option<&RefusedDeletion>,
    ) -> Result<(), StoreError> {
        let key = deletion_refused_key(&self.prefix);
        match refused {
            Some(refused) => self.put_json(&key, refused, None).await.map(drop),
            None => self
                .client
                .delete(&key, None)
                .await
                .map(drop)
                .map_err(Into::into),
        }
    }

    /// Publishes a service's routes; returns the table version (the key's new ModifyIndex).
    pub async fn put_routes(
        &self,
        name: &str,
        routes: &PublishedRoutes,
    ) -> Result<u64, StoreError> {
        let key = key_for(&self.prefix, Folder::Routes, name);
        self.put_json(&key, routes, None).await?;
        let entry = self.client.get(&key).await?;
        Ok(entry.map_or(0, |e| e.modify_index))
    }

    /// Takes a service out of the route table.
    pub async fn delete_routes(&self, name: &str) -> Result<(), StoreError> {
        let key = key_for(&self.prefix, Folder::Routes, name);
        self.client.delete(&key, None).await?;
        Ok(())
    }

    /// The route table from a listing of `<prefix>/routes/`: per service, its version and
    /// routes; an entry that does not decode is skipped (and named in the second value).
    pub fn routes_from_entries(
        &self,
        entries: &[crate::consul::KvEntry],
    ) -> (BTreeMap<String, (u64, PublishedRoutes)>, Vec<String>) {
        let mut table = BTreeMap::new();
        let mut bad = Vec::new();
        for entry in entries {
            let Some(name) = name_from_key(&self.prefix, Folder::Routes, &entry.key) else {
                continue;
            };
            match serde_json::from_slice::<PublishedRoutes>(&entry.value) {
                Ok(routes) => {
                    table.insert(name.to_owned(), (entry.modify_index, routes));
                }
                Err(e) => bad.push(format!("{}: {e}", entry.key)),
            }
        }
        (table, bad)
    }

    /// The proxies' reports from a listing of `<prefix>/proxies/`, by proxy id; only keys
    /// held by a session count (a report whose proxy died is deleted with its session).
    pub fn reports_from_entries(
        &self,
        entries: &[crate::consul::KvEntry],
    ) -> BTreeMap<String, ProxyReport> {
        entries
            .iter()
            .filter(|e| e.session.is_some())
            .filter_map(|e| {
                let id = name_from_key(&self.prefix, Folder::Proxies, &e.key)?;
                let report = serde_json::from_slice(&e.value).ok()?;
                Some((id.to_owned(), report))
            })
            .collect()
    }

    /// Every live proxy's report.
    pub async fn list_reports(&self) -> Result<BTreeMap<String, ProxyReport>, StoreError> {
        let listing = self
            .client
            .list(&folder_prefix(&self.prefix, Folder::Proxies))
            .await?;
        Ok(self.reports_from_entries(&listing.entries))
    }

    /// Writes a proxy's report under its id, held by `session`. Returns whether the session
    /// holds the key (false: another session holds it, a second proxy with the same id).
    pub async fn put_report(
        &self,
        id: &str,
        session: &str,
        report: &ProxyReport,
    ) -> Result<bool, StoreError> {
        let key = key_for(&self.prefix, Folder::Proxies, id);
        let bytes = serde_json::to_vec(report).unwrap_or_default();
        check_size(&key, bytes.len())?;
        Ok(self.client.acquire(&key, session, &bytes).await?)
    }

    /// A blocking-query watch on one folder, such as `<prefix>/requests/`.
    pub fn watch_folder(&self, folder: Folder, wait: Duration) -> PrefixWatch {
        PrefixWatch::new(
            self.client.clone(),
            folder_prefix(&self.prefix, folder),
            wait,
        )
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        what: &'static str,
    ) -> Result<Option<Stored<T>>, StoreError> {
        let Some(entry) = self.client.get(key).await? else {
            return Ok(None);
        };
        Ok(Some(decode_json(
            key.to_owned(),
            what,
            entry.modify_index,
            &entry.value,
        )))
    }

    async fn put_json<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
        cas: Option<u64>,
    ) -> Result<bool, StoreError> {
        let bytes = serde_json::to_vec_pretty(value).expect("status types always serialize");
        check_size(key, bytes.len())?;
        Ok(self.client.put(key, &bytes, cas).await?)
    }
}

/// Decodes a JSON value; one that does not decode becomes [`Stored::Unreadable`].
fn decode_json<T: serde::de::DeserializeOwned>(
    key: String,
    what: &'static str,
    modify_index: u64,
    bytes: &[u8],
) -> Stored<T> {
    match serde_json::from_slice(bytes) {
        Ok(value) => Stored::Readable(Versioned {
            value,
            modify_index,
        }),
        Err(e) => Stored::Unreadable(Unreadable {
            key,
            modify_index,
            what,
            error: shorten(&e.to_string(), MAX_ERROR_CHARS),
        }),
    }
}

/// `text` cut to at most `max` characters, with `…` where it was cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some(_) => {
            let keep: String = text.chars().take(max.saturating_sub(1)).collect();
            format!("{keep}…")
        }
    }
}

fn check_size(key: &str, size: usize) -> Result<(), StoreError> {
    if size > spec::MAX_VALUE_BYTES {
        return Err(StoreError::TooLarge {
            key: key.to_owned(),
            size,
            limit: spec::MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_for_names() {
        assert_eq!(
            key_for("cutover", Folder::Services, "books"),
            "cutover/services/books"
        );
        assert_eq!(
            key_for("teams/web", Folder::Status, "books"),
            "teams/web/status/books"
        );
        assert_eq!(
            key_for("cutover", Folder::Requests, "books"),
            "cutover/requests/books"
        );
        assert_eq!(
            folder_prefix("cutover", Folder::Services),
            "cutover/services/"
        );
    }

    #[test]
    fn names_from_keys() {
        let cases = [
            (
                "cutover",
                Folder::Services,
                "cutover/services/books",
                Some("books"),
            ),
            (
                "cutover",
                Folder::Status,
                "cutover/status/books",
                Some("books"),
            ),
            ("cutover", Folder::Services, "cutover/status/books", None),
            ("cutover", Folder::Services, "cutover/services/", None),
            ("cutover", Folder::Services, "cutover/services/a/b", None),
            ("cutover", Folder::Services, "cutover2/services/books", None),
            ("cutover", Folder::Services, "other/services/books", None),
            (
                "teams/web",
                Folder::Services,
                "teams/web/services/books",
                Some("books"),
            ),
        ];
        for (prefix, folder, key, expected) in cases {
            assert_eq!(name_from_key(prefix, folder, key), expected, "{key}");
        }
    }

    #[test]
    fn prefixes_are_normalized() {
        assert_eq!(normalize_prefix("cutover").unwrap(), "cutover");
        assert_eq!(normalize_prefix("/cutover/").unwrap(), "cutover");
        assert_eq!(normalize_prefix("teams/web").unwrap(), "teams/web");
        assert!(normalize_prefix("").is_err());
        assert!(normalize_prefix("/").is_err());
        assert!(normalize_prefix("a//b").is_err());
    }

    #[test]
    fn values_that_do_not_decode_are_unreadable_not_errors() {
        let good: Stored<Status> = decode_json(
            "k".to_owned(),
            "status",
            3,
            br#"{"observedIndex": 7, "phase": null}"#,
        );
        assert_eq!(
            good.readable()
                .map(|v| (v.value.observed_index, v.modify_index)),
            Some((7, 3))
        );
        let cases: [(&[u8], &str); 4] = [
            (b"junk", "expected value at line 1 column 1"),
            (b"", "EOF while parsing a value at line 1 column 0"),
            (
                b"{\"observedIndex\": \"x\"}",
                "invalid type: string \"x\", expected u64 at line 1 column 21",
            ),
            (b"\xff\xfe", "expected value at line 1 column 1"),
        ];
        for (bytes, error) in cases {
            let read: Stored<Status> =
                decode_json("cutover/status/web".to_owned(), "status", 42, bytes);
            let unreadable = read.unreadable().expect("unreadable");
            assert_eq!(unreadable.error, error);
            assert_eq!(
                unreadable.to_string(),
                format!("cutover/status/web (index 42) does not hold a valid status: {error}")
            );
        }
    }

    #[test]
    fn long_decode_errors_are_shortened() {
        let phase = "x".repeat(1000);
        let read: Stored<Status> = decode_json(
            "k".to_owned(),
            "status",
            1,
            format!(r#"{{"observedIndex": 1, "phase": "{phase}"}}"#).as_bytes(),
        );
        let error = &read.unreadable().unwrap().error;
        assert_eq!(error.chars().count(), MAX_ERROR_CHARS);
        assert!(error.starts_with("unknown variant `xxx"), "{error}");
        assert!(error.ends_with('…'), "{error}");
        assert_eq!(shorten("héllo", 5), "héllo");
        assert_eq!(shorten("héllo!", 5), "héll…");
    }

    #[test]
    fn oversized_values_are_refused() {
        assert!(check_size("k", spec::MAX_VALUE_BYTES).is_ok());
        let error = check_size("cutover/services/books", spec::MAX_VALUE_BYTES + 1).unwrap_err();
        assert_eq!(
            error.to_string(),
            "cutover/services/books would be 524289 bytes, more than Consul's limit of 524288 bytes"
        );
    }
}
