//! What the daemon reports about each service, stored as JSON at `<prefix>/status/<name>`.
//!
//! Only the daemon writes these values; the CLI and CI pipelines read them. The types are
//! plain data shared by both sides, so `cutover status` never invents a field the daemon
//! did not write.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// How many events a status keeps, newest last.
pub const MAX_EVENTS: usize = 20;

/// The event reason when the stored status did not decode and the daemon rebuilt it.
pub const STATUS_REBUILT: &str = "StatusRebuilt";

/// The event reason when the stored request did not decode and the daemon ignored it.
pub const REQUEST_UNREADABLE: &str = "RequestUnreadable";

/// The two slots a blue/green service alternates between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Blue,
    Green,
}

impl Color {
    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }

    pub fn parse(text: &str) -> Option<Color> {
        match text {
            "blue" => Some(Color::Blue),
            "green" => Some(Color::Green),
            _ => None,
        }
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a service is in its life, as one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// The daemon is bringing the desired revision up or switching to it.
    Progressing,
    /// The new color is healthy and waits for `cutover promote`.
    Preview,
    /// The desired revision is live with every replica ready.
    Available,
    /// Something is wrong (image missing, replicas failing, deadline passed); the last good
    /// revision keeps serving where there is one.
    Degraded,
    /// The spec cannot be used; nothing was changed.
    Invalid,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What one color runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ColorStatus {
    pub image: String,
    pub revision: String,
    pub ready: u32,
    pub desired: u32,
}

/// A Kubernetes-style condition: a fact with a reason, and when it last changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Available`, `Progressing`, `Degraded`, `InvalidSpec`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// `"True"`, `"False"` or `"Unknown"`, as in Kubernetes.
    pub status: String,
    /// A CamelCase reason such as `ImageNotFound` or `ProgressDeadlineExceeded`.
    pub reason: String,
    pub message: String,
    /// RFC 3339.
    pub last_transition_time: String,
}

/// A revision the service ran, newest first; kept ones can be rolled back to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRecord {
    pub revision: String,
    pub image: String,
    pub color: Color,
    /// RFC 3339 time it stopped serving, if it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<String>,
}

/// A rollout in progress: `revision` is being brought up in `color`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    pub revision: String,
    pub color: Color,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_ms: u64,
}

/// A revision the daemon gave up on; it is not tried again until the spec changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejected {
    pub revision: String,
    /// The spec ModifyIndex that asked for it.
    pub spec_index: u64,
    pub reason: String,
    pub message: String,
}

/// What the proxies counted on one color's backend since a switch, summed over the proxies
/// that reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficFigures {
    /// HTTP requests the backend handled.
    pub requests: u64,
    /// Of those, the ones that failed: 5xx responses, connection and response errors.
    pub errors: u64,
    /// The average response time in milliseconds (HAProxy's `rtime`, weighted by each
    /// proxy's requests); `None` before a request was answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_time_ms: Option<u64>,
    /// How many proxies' counters are in the sum.
    pub proxies: u32,
}

impl TrafficFigures {
    /// The share of failed requests, 0 without requests.
    pub fn error_ratio(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors.min(self.requests) as f64 / self.requests as f64
        }
    }
}

impl std::fmt::Display for TrafficFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} requests failed ({:.1}%)",
            self.errors.min(self.requests),
            self.requests,
            self.error_ratio() * 100.0
        )?;
        if let Some(ms) = self.response_time_ms {
            write!(f, ", average response time {ms} ms")?;
        }
        let s = if self.proxies == 1 { "y" } else { "ies" };
        write!(f, ", counted by {} prox{s}", self.proxies)
    }
}

/// How the analysis of a revision stands or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnalysisResult {
    /// The window is open: its traffic is being judged.
    Running,
    /// The window ended within the limits.
    Passed,
    /// A limit was breached: traffic went back to the previous revision.
    Failed,
    /// A newer spec, a rollback or an abort came before the window ended.
    Cancelled,
}

/// The judgement of a revision by its traffic after a switch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    pub revision: String,
    /// The color it serves from: the backend whose counters are read.
    pub color: Color,
    /// The window, in milliseconds since the Unix epoch: from the switch to its end.
    pub started_ms: u64,
    pub until_ms: u64,
    pub result: AnalysisResult,
    /// The figures the last judgement saw.
    #[serde(default)]
    pub figures: TrafficFigures,
    /// The judgement in words (which limit, by how much).
    #[serde(default)]
    pub message: String,
}

/// A weighted canary in progress: which step of the new revision's walk toward the full
/// switch, and the share of the live requests it gets now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    pub revision: String,
    /// The color it runs in (not the live one).
    pub color: Color,
    /// The step in progress, from 1.
    pub step: u32,
    /// How many steps the canary has.
    pub of: u32,
    /// The percentage of the live requests the route table sends it now (0 before the
    /// first `weight` step).
    pub weight: u32,
    /// When the step in progress began, in milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// When the first step began.
    pub started_ms: u64,
    /// The step in words: `step 2 of 4: 10% of requests to revision 3f2a9c01d4`.
    #[serde(default)]
    pub message: String,
}

/// Something that happened, for people reading `cutover status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// RFC 3339.
    pub time: String,
    pub reason: String,
    pub message: String,
}

/// An imperative request (`promote`, `rollback`, `abort`, `retry`), stored at
/// `<prefix>/requests/<name>` by the CLI and acknowledged in [`Status::last_request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// Unique per request, so an acknowledgement names exactly one.
    pub id: String,
    pub action: Action,
    /// The revision the requester saw; the daemon ignores a request for any other.
    pub revision: String,
    /// RFC 3339.
    pub requested_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Promote,
    Rollback,
    Abort,
    /// Try a rejected revision again, with the same spec (`cutover retry`).
    Retry,
}

/// The daemon's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Acknowledgement {
    pub id: String,
    pub action: Action,
    pub revision: String,
    /// `Done`, or why it was not acted on (`Stale`, `NothingToRollBackTo`, ...).
    pub result: String,
    pub message: String,
}

/// An operator's confirmation of a deletion the mass-deletion guard refused, stored at
/// `<prefix>/control/prune-confirm` by `cutover prune --confirm`.
///
/// It names exactly the services it confirms, expires, and is consumed: the daemon drops a
/// service from it once that service's containers are gone, and the key once it is empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneConfirmation {
    /// The services whose removal is confirmed.
    pub services: Vec<String>,
    /// After this (milliseconds since the Unix epoch, by the daemon's clock) it counts for
    /// nothing.
    pub expires_at_ms: u64,
}

impl PruneConfirmation {
    /// Whether it confirms removing `service` at `now_ms`.
    pub fn confirms(&self, service: &str, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms && self.services.iter().any(|s| s == service)
    }
}

/// A deliberate deletion of a spec (`cutover delete`, `cutover sync --prune`), stored at
/// `<prefix>/control/deleted/<name>` in the same transaction as the deletion. The
/// mass-deletion guard lets such a service go; the daemon removes the key with the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeletionIntent {
    /// When it was deleted (milliseconds since the Unix epoch, by the CLI's clock).
    pub at_ms: u64,
}

impl DeletionIntent {
    /// How long an intent counts: a service whose containers are still there an hour after
    /// its deletion is guarded again.
    pub const VALID_MS: u64 = 60 * 60 * 1000;

    /// Whether it still counts at `now_ms`.
    pub fn counts(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.at_ms) < Self::VALID_MS
    }
}

/// The deletion the guard refuses now, stored at `<prefix>/control/deletion-refused` by the
/// leader so that `cutover prune` can show and confirm exactly it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusedDeletion {
    /// The services whose specs vanished and whose containers are kept.
    pub services: Vec<String>,
    pub message: String,
}

/// Everything the daemon says about one service.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The spec ModifyIndex the daemon last acted on (Kubernetes' `observedGeneration`).
    pub observed_index: u64,
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_color: Option<Color>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_color: Option<Color>,
    /// When traffic last switched colors, in milliseconds since the Unix epoch; the old color
    /// drains until this plus `scaleDownDelay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_at_ms: Option<u64>,
    /// The rollout in progress, if any: which revision goes to which color since when (the
    /// progress deadline counts from then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    #[serde(default)]
    pub colors: BTreeMap<Color, ColorStatus>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub revision_history: Vec<RevisionRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Rejected>,
    /// The judgement of the live revision by its traffic (`analysis` in the spec): running
    /// during the window after a switch, then how it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStatus>,
    /// The weighted canary in progress (`strategy.canary`), between the new color getting
    /// ready and the full switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request: Option<Acknowledgement>,
    /// The ModifyIndex of the last request value that did not decode: it was ignored, and
    /// reported once with a [`REQUEST_UNREADABLE`] event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable_request_index: Option<u64>,
    #[serde(default)]
    pub events: Vec<Event>,
}

impl Status {
    /// The status to start from when the stored one did not decode: an empty one, which
    /// the planner fills in from the containers and the spec as if none had been written,
    /// with a [`STATUS_REBUILT`] event. `unreadable` says which key and why, in one line.
    pub fn rebuilt(unreadable: &str, now_ms: u64) -> Status {
        let mut status = Status::default();
        status.push_event(
            STATUS_REBUILT,
            &format!("{unreadable}; rebuilt the status from the containers and the spec"),
            now_ms,
        );
        status
    }

    /// Notes that the request value at `modify_index` did not decode and is ignored, with a
    /// [`REQUEST_UNREADABLE`] event, once per value. Returns whether it was new (and so is
    /// worth a log line).
    pub fn note_unreadable_request(
        &mut self,
        modify_index: u64,
        unreadable: &str,
        now_ms: u64,
    ) -> bool {
        if self.unreadable_request_index == Some(modify_index) {
            return false;
        }
        self.unreadable_request_index = Some(modify_index);
        self.push_event(
            REQUEST_UNREADABLE,
            &format!(
                "{unreadable}; ignored it: run cutover promote, rollback or abort again, or \
                 delete the key"
            ),
            now_ms,
        );
        true
    }

    pub fn condition(&self, kind: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }

    /// Sets a condition, keeping its transition time when its status did not change.
    pub fn set_condition(
        &mut self,
        kind: &str,
        value: bool,
        reason: &str,
        message: &str,
        now_ms: u64,
    ) {
        let status = if value { "True" } else { "False" };
        match self.conditions.iter_mut().find(|c| c.kind == kind) {
            Some(c) => {
                if c.status != status {
                    c.last_transition_time = rfc3339(now_ms);
                }
                c.status = status.to_owned();
                c.reason = reason.to_owned();
                c.message = message.to_owned();
            }
            None => self.conditions.push(Condition {
                kind: kind.to_owned(),
                status: status.to_owned(),
                reason: reason.to_owned(),
                message: message.to_owned(),
                last_transition_time: rfc3339(now_ms),
            }),
        }
    }

    /// Appends an event, keeping the newest [`MAX_EVENTS`].
    pub fn push_event(&mut self, reason: &str, message: &str, now_ms: u64) {
        self.events.push(Event {
            time: rfc3339(now_ms),
            reason: reason.to_owned(),
            message: message.to_owned(),
        });
        let excess = self.events.len().saturating_sub(MAX_EVENTS);
        self.events.drain(..excess);
    }
}

/// A time in milliseconds since the Unix epoch as RFC 3339 with seconds.
/// The wall clock in milliseconds since the Unix epoch, as statuses, intents and route
/// tables record time.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn rfc3339(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuilt_status_is_empty_but_for_its_event() {
        let status = Status::rebuilt(
            "cutover/status/web (index 4) does not hold a valid status: x",
            0,
        );
        assert_eq!(status.phase, None);
        assert_eq!(status.active_color, None);
        assert_eq!(status.events.len(), 1);
        assert_eq!(status.events[0].reason, STATUS_REBUILT);
        assert_eq!(
            status.events[0].message,
            "cutover/status/web (index 4) does not hold a valid status: x; rebuilt the status \
             from the containers and the spec"
        );
    }

    #[test]
    fn an_unreadable_request_is_noted_once_per_value() {
        let mut status = Status::default();
        assert!(status.note_unreadable_request(7, "bad request", 0));
        assert!(!status.note_unreadable_request(7, "bad request", 1000));
        assert_eq!(status.events.len(), 1);
        assert_eq!(status.events[0].reason, REQUEST_UNREADABLE);
        assert!(
            status.events[0]
                .message
                .starts_with("bad request; ignored it")
        );
        // Past the events it keeps, still once.
        for i in 0..MAX_EVENTS as u64 {
            status.push_event("Step", "something", i);
        }
        assert!(!status.note_unreadable_request(7, "bad request", 2000));
        // Another bad value is noted again.
        assert!(status.note_unreadable_request(9, "bad request", 3000));
        assert_eq!(status.unreadable_request_index, Some(9));
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["unreadableRequestIndex"], 9);
        assert_eq!(
            serde_json::to_value(Status::default())
                .unwrap()
                .get("unreadableRequestIndex"),
            None
        );
    }
}
