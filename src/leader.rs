//! Leader election: every `cutover run` campaigns for a Consul lock on `<prefix>/leader`; the
//! one that holds it is the leader and the only daemon that changes anything.
//!
//! Each daemon keeps a Consul session (TTL `--leader-ttl`, lock delay `--lock-delay`,
//! behavior `release`) renewed every half TTL, and tries to take the key with it. The winner
//! writes who it is ([`Holder`]) as the key's value. The others follow: they wait on the key
//! with a blocking query and try again when it is free. Consul refuses the lock for the lock
//! delay after a holder's session was invalidated, so a leader that only *seemed* dead has
//! time to notice it lost.
//!
//! The role is published through [`Leadership`], a cheap handle: [`Leadership::is_leader`]
//! is what the controller checks before every mutating step.
//!
//! Guarantees:
//! - **Fencing by time.** A leader counts as leader only until [`step_down_at`]: a margin
//!   before the earliest moment Consul may invalidate its session, counted from when the last
//!   successful renewal was *sent*. [`Leadership::is_leader`] compares with the clock itself,
//!   so it turns false on time even while the election task waits on a hanging request.
//! - A renewal answered "no such session", or the key found held by another session (or
//!   deleted), makes the daemon a follower at once.
//! - Stopping ([`Campaign::resign`]) releases the lock first (no lock delay, so a follower takes
//!   over at once) and then destroys the session.
//!
//! Caveats: a step that started just before the deadline may still be running when another
//! daemon takes over; the margin (a quarter of the TTL) and Consul's lock delay are what keep
//! that window closed in practice. This module must not decide anything about services.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::consul::{Client, ConsulError, IndexStep, KeyRead, next_index};
use crate::queue::backoff_delay;

/// The default `--leader-ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);
/// The default `--lock-delay`.
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
/// The shortest session TTL Consul accepts.
pub const MIN_TTL: Duration = Duration::from_secs(10);
/// The longest session TTL Consul accepts.
pub const MAX_TTL: Duration = Duration::from_secs(86_400);
/// The longest lock delay Consul accepts.
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);

/// How long a failed renewal waits before the next try.
const RENEW_RETRY: Duration = Duration::from_secs(1);
/// How often a free lock is tried again while Consul's lock delay refuses it.
const LOCK_DELAY_POLL: Duration = Duration::from_millis(500);
/// How long [`Campaign::resign`] may take; after that the session expires by itself.
const RESIGN_TIMEOUT: Duration = Duration::from_secs(5);

/// `<prefix>/leader`: the lock key.
pub fn leader_key(prefix: &str) -> String {
    crate::store::leader_key(prefix)
}

/// How often a session is renewed: half its TTL.
pub fn renew_interval(ttl: Duration) -> Duration {
    ttl / 2
}

/// How long before the earliest possible invalidation a leader steps down: a quarter of the
/// TTL. It covers a step that passed its leadership check just before the deadline.
pub fn step_down_margin(ttl: Duration) -> Duration {
    ttl / 4
}

/// Until when a leader whose last successful renewal (or the session's creation) was *sent*
/// at `renewed` may act. Consul resets the session's timer when it receives the renewal, so
/// the session lives at least until `renewed + ttl`; the leader stops a margin earlier.
pub fn step_down_at(renewed: Instant, ttl: Duration) -> Instant {
    renewed + ttl - step_down_margin(ttl)
}

/// Who holds the lock: written as JSON as the lock key's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub hostname: String,
    pub pid: u32,
    /// The daemon's `--instance` label.
    pub instance: String,
}

impl Holder {
    /// This process.
    pub fn this_process(instance: &str) -> Holder {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        Holder {
            hostname,
            pid: std::process::id(),
            instance: instance.to_owned(),
        }
    }

    /// Describes the holder from the lock key's value: the [`Holder`] it holds, or the raw
    /// text when someone else wrote it.
    pub fn describe(value: &[u8]) -> String {
        match serde_json::from_slice::<Holder>(value) {
            Ok(holder) => holder.to_string(),
            Err(_) if value.is_empty() => "(no holder written)".to_owned(),
            Err(_) => String::from_utf8_lossy(value).into_owned(),
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} pid {} (instance {})",
            self.hostname, self.pid, self.instance
        )
    }
}

/// How to campaign.
#[derive(Debug, Clone)]
pub struct Config {
    /// The lock key, [`leader_key`] of the prefix.
    pub key: String,
    /// The session TTL ([`MIN_TTL`]..=[`MAX_TTL`]).
    pub ttl: Duration,
    /// Consul's lock delay (at most [`MAX_LOCK_DELAY`]).
    pub lock_delay: Duration,
    /// What this daemon writes into the key when it wins.
    pub holder: Holder,
}

/// This daemon's role, as published to [`Leadership`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Another daemon leads, or nobody does yet.
    Follower {
        /// Who holds the lock, when known.
        leader: Option<String>,
    },
    /// This daemon holds the lock, and may act until `until` unless a renewal moves it.
    Leader { until: Instant },
}

impl Role {
    /// Whether this is the leader role (without looking at the clock).
    pub fn is_leader(&self) -> bool {
        matches!(self, Role::Leader { .. })
    }

    /// Whether this role lets the daemon act at `now`.
    pub fn may_act_at(&self, now: Instant) -> bool {
        matches!(self, Role::Leader { until } if now < *until)
    }
}

/// The daemon is not the leader (any more): a mutating step was not started.
#[derive(Debug, Clone, thiserror::Error)]
#[error("this daemon is not the leader (any more); the step was not started")]
pub struct NotLeader;

/// A cheap, clonable view of this daemon's role.
#[derive(Debug, Clone)]
pub struct Leadership {
    role: watch::Receiver<Role>,
}

impl Leadership {
    /// Whether this daemon may change anything now. Turns false at the step-down deadline
    /// even before the election task notices.
    pub fn is_leader(&self) -> bool {
        self.role.borrow().may_act_at(Instant::now())
    }

    /// `Ok` when this daemon may act now; for `?` before each mutating step.
    pub fn check(&self) -> Result<(), NotLeader> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(NotLeader)
        }
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// A receiver notified when the role changes (not at every renewal).
    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// A handle that is always a follower, for tests and tools that must never act.
    pub fn follower() -> Leadership {
        let (_, role) = watch::channel(Role::Follower { leader: None });
        Leadership { role }
    }
}

/// Why a leader stepped down.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lost {
    /// Consul answered a renewal with "no such session".
    SessionInvalidated,
    /// No renewal succeeded in time.
    RenewalsFailed { last_error: Option<String> },
    /// The key was taken by another session, released or deleted outside cutover.
    KeyTaken { holder: Option<String> },
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lost::SessionInvalidated => write!(f, "Consul no longer knows the session"),
            Lost::RenewalsFailed { last_error: None } => {
                write!(f, "the session could not be renewed in time")
            }
            Lost::RenewalsFailed {
                last_error: Some(e),
            } => write!(f, "the session could not be renewed in time: {e}"),
            Lost::KeyTaken { holder: Some(h) } => write!(f, "the lock is held by {h} now"),
            Lost::KeyTaken { holder: None } => {
                write!(f, "the lock key was released or deleted outside cutover")
            }
        }
    }
}

/// The election task's state. Build with [`Election::new`], start with [`Election::spawn`].
pub struct Election {
    client: Client,
    config: Config,
    role: watch::Sender<Role>,
    /// Our session, and when its last successful renewal (or its creation) was sent.
    session: Option<(String, Instant)>,
}

/// The running election task.
pub struct Campaign {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Campaign {
    /// Steps down: releases the lock (so a follower takes over without the lock delay) and
    /// destroys the session. Call it only once nothing this daemon started is still running.
    pub async fn resign(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

impl Election {
    /// An election not started yet, and the handle that shows its outcome.
    pub fn new(client: Client, config: Config) -> (Election, Leadership) {
        let (role, receiver) = watch::channel(Role::Follower { leader: None });
        (
            Election {
                client,
                config,
                role,
                session: None,
            },
            Leadership { role: receiver },
        )
    }

    /// Campaigns in a task until [`Campaign::resign`].
    pub fn spawn(self) -> Campaign {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(self.run(async {
            let _ = stopped.await;
        }));
        Campaign { stop, task }
    }

    /// Campaigns until `stop` completes, then resigns.
    pub async fn run(mut self, stop: impl Future<Output = ()>) {
        info!(key = %self.config.key, holder = %self.config.holder,
            ttl = ?self.config.ttl, lock_delay = ?self.config.lock_delay,
            "taking part in the leader election");
        tokio::select! {
            _ = stop => {}
            _ = self.campaign() => {}
        }
        self.resign().await;
    }

    async fn campaign(&mut self) {
        let mut failures = 0;
        loop {
            match self.round().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    self.become_follower(None);
                    let delay = backoff_delay(
                        failures,
                        Duration::from_millis(500),
                        renew_interval(self.config.ttl),
                    );
                    warn!(error = %e, retry_in = ?delay, "leader election: cannot reach Consul");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One try: make sure the session lives, try to take the lock, then lead or follow until
    /// something changes.
    async fn round(&mut self) -> Result<(), ConsulError> {
        let session = self.ensure_session().await?;
        let value = serde_json::to_vec(&self.config.holder).expect("a holder serializes");
        let acquired = match self
            .client
            .acquire(&self.config.key, &session, &value)
            .await
        {
            Ok(acquired) => acquired,
            // The session vanished between its renewal and now: make another.
            Err(e) if e.is_invalid_session() => {
                self.session = None;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if acquired {
            let lost = self.lead(&session).await;
            warn!(key = %self.config.key, "lost leadership: {lost}");
            if lost == Lost::SessionInvalidated {
                self.session = None;
            }
            let leader = match lost {
                Lost::KeyTaken { holder } => holder,
                _ => None,
            };
            self.become_follower(leader);
            return Ok(());
        }
        let read = self
            .client
            .get_blocking(&self.config.key, 0, Duration::ZERO)
            .await?;
        match holder_of(&read, &session) {
            Some(leader) => {
                self.become_follower(Some(leader));
                self.follow(read.index).await
            }
            None => {
                // Free, yet refused: Consul's lock delay after the last holder's session was
                // invalidated. Nothing wakes us when it ends, so look again shortly.
                debug!(key = %self.config.key, "the lock is free but its lock delay runs; retrying");
                self.become_follower(None);
                tokio::time::sleep(LOCK_DELAY_POLL).await;
                Ok(())
            }
        }
    }

    /// Renews our session, or creates one when there is none or Consul forgot it. Returns its
    /// ID; the send time of the renewal is kept for [`step_down_at`].
    async fn ensure_session(&mut self) -> Result<String, ConsulError> {
        if let Some((id, _)) = &self.session {
            let id = id.clone();
            let sent = Instant::now();
            if self.client.renew_session(&id).await? {
                self.session = Some((id.clone(), sent));
                return Ok(id);
            }
            info!(session = %id, "Consul no longer knows our session; creating another");
        }
        let sent = Instant::now();
        let name = format!("cutover leader election: {}", self.config.holder);
        let id = self
            .client
            .create_session(&name, self.config.ttl, self.config.lock_delay)
            .await?;
        debug!(session = %id, "session created");
        self.session = Some((id.clone(), sent));
        Ok(id)
    }

    /// Holds the lock, renewing the session and watching the key, until it is lost.
    async fn lead(&mut self, session: &str) -> Lost {
        let ttl = self.config.ttl;
        let renewed = self.session.as_ref().map_or_else(Instant::now, |s| s.1);
        let mut until = step_down_at(renewed, ttl);
        let mut next_renew = renewed + renew_interval(ttl);
        self.role.send_replace(Role::Leader { until });
        info!(key = %self.config.key, holder = %self.config.holder, "became leader");
        let mut index = 0;
        let mut watch_after = Instant::now();
        let mut last_error = None;
        loop {
            let now = Instant::now();
            if now >= until {
                return Lost::RenewalsFailed { last_error };
            }
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return Lost::RenewalsFailed { last_error },
                _ = tokio::time::sleep_until(next_renew) => {
                    let sent = Instant::now();
                    match tokio::time::timeout_at(until, self.client.renew_session(session)).await {
                        Ok(Ok(true)) => {
                            until = step_down_at(sent, ttl);
                            next_renew = sent + renew_interval(ttl);
                            last_error = None;
                            self.session = Some((session.to_owned(), sent));
                            // A later deadline is no news: update without waking subscribers.
                            self.role.send_if_modified(|role| {
                                *role = Role::Leader { until };
                                false
                            });
                        }
                        Ok(Ok(false)) => return Lost::SessionInvalidated,
                        Ok(Err(e)) => {
                            warn!(error = %e, "cannot renew the leader's session; retrying");
                            last_error = Some(e.to_string());
                            next_renew = Instant::now() + RENEW_RETRY;
                        }
                        Err(_) => return Lost::RenewalsFailed { last_error },
                    }
                }
                read = self.watch_key(index, watch_after) => match read {
                    Ok(read) => {
                        if read.entry.as_ref().and_then(|e| e.session.as_deref()) != Some(session) {
                            return Lost::KeyTaken { holder: holder_of(&read, session) };
                        }
                        index = match next_index(index, read.index) {
                            IndexStep::Changed { next } | IndexStep::Unchanged { next } => next,
                            IndexStep::Reset => 0,
                        };
                    }
                    Err(e) => {
                        debug!(error = %e, "cannot watch the lock key; the renewals go on");
                        watch_after = Instant::now() + RENEW_RETRY;
                    }
                },
            }
        }
    }

    /// A blocking read of the lock key, not before `after`.
    async fn watch_key(&self, index: u64, after: Instant) -> Result<KeyRead, ConsulError> {
        tokio::time::sleep_until(after).await;
        self.client
            .get_blocking(&self.config.key, index, self.config.ttl)
            .await
    }

    /// Waits on the lock key while another daemon holds it, renewing our own session so that
    /// we can take the lock the moment it is free.
    async fn follow(&mut self, mut index: u64) -> Result<(), ConsulError> {
        loop {
            let renewed = self.session.as_ref().map_or_else(Instant::now, |s| s.1);
            let renew_at = renewed + renew_interval(self.config.ttl);
            let wait = renew_at.saturating_duration_since(Instant::now());
            let read = if wait.is_zero() {
                None
            } else {
                Some(
                    self.client
                        .get_blocking(&self.config.key, index, wait)
                        .await?,
                )
            };
            if Instant::now() >= renew_at {
                let Some((session, _)) = self.session.clone() else {
                    return Ok(());
                };
                let sent = Instant::now();
                if !self.client.renew_session(&session).await? {
                    info!(session = %session, "Consul no longer knows our session");
                    self.session = None;
                    return Ok(());
                }
                self.session = Some((session, sent));
            }
            let Some(read) = read else { continue };
            let session = self.session.as_ref().map(|s| s.0.as_str()).unwrap_or("");
            match holder_of(&read, session) {
                Some(leader) => {
                    self.become_follower(Some(leader));
                    index = match next_index(index, read.index) {
                        IndexStep::Changed { next } | IndexStep::Unchanged { next } => next,
                        IndexStep::Reset => 0,
                    };
                }
                // Free (or, after a step-down, still ours): try to take it.
                None => return Ok(()),
            }
        }
    }

    /// Publishes the follower role; logs when the leader changes.
    fn become_follower(&self, leader: Option<String>) {
        let new = Role::Follower {
            leader: leader.clone(),
        };
        let changed = self.role.send_if_modified(|role| {
            if *role == new {
                false
            } else {
                *role = new.clone();
                true
            }
        });
        if changed && let Some(leader) = leader {
            info!(key = %self.config.key, "following {leader}");
        }
    }

    /// Gives the lock back without a lock delay, then destroys the session.
    async fn resign(&mut self) {
        let was_leader = self.role.borrow().is_leader();
        self.role.send_replace(Role::Follower { leader: None });
        let Some((session, _)) = self.session.take() else {
            return;
        };
        let client = self.client.clone();
        let key = self.config.key.clone();
        let done = tokio::time::timeout(RESIGN_TIMEOUT, async move {
            let released = client.release(&key, &session).await;
            let destroyed = client.destroy_session(&session).await;
            (released, destroyed)
        })
        .await;
        match done {
            Ok((Ok(released), Ok(()))) => {
                if was_leader || released {
                    info!(key = %self.config.key, "released leadership");
                }
            }
            Ok((Err(e), _)) | Ok((_, Err(e))) => {
                warn!(error = %e, "cannot give the lock back; it expires with the session's TTL")
            }
            Err(_) => warn!(
                "Consul did not answer in {RESIGN_TIMEOUT:?}; the lock expires with the session's TTL"
            ),
        }
    }
}

/// Who holds the key according to `read`, unless it is free or held by `ours`.
fn holder_of(read: &KeyRead, ours: &str) -> Option<String> {
    let entry = read.entry.as_ref()?;
    match entry.session.as_deref() {
        None => None,
        Some(session) if session == ours => None,
        Some(_) => Some(Holder::describe(&entry.value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_steps_down_a_quarter_ttl_before_the_session_may_expire() {
        let renewed = Instant::now();
        let cases = [
            // (ttl, time since the renewal was sent, still leader)
            (15, 0.0, true),
            (15, 7.5, true),
            (15, 11.2, true),
            (15, 11.25, false),
            (15, 15.0, false),
            (10, 7.4, true),
            (10, 7.5, false),
            (60, 44.9, true),
            (60, 45.0, false),
        ];
        for (ttl, elapsed, leader) in cases {
            let ttl = Duration::from_secs(ttl);
            let role = Role::Leader {
                until: step_down_at(renewed, ttl),
            };
            let now = renewed + Duration::from_secs_f64(elapsed);
            assert_eq!(
                role.may_act_at(now),
                leader,
                "ttl {ttl:?}, {elapsed}s after the renewal"
            );
            // A renewal is due well before the step-down.
            assert!(renew_interval(ttl) + Duration::from_secs(1) < ttl - step_down_margin(ttl));
        }
        assert!(!Role::Follower { leader: None }.may_act_at(renewed));
    }

    #[tokio::test(start_paused = true)]
    async fn is_leader_turns_false_at_the_deadline_without_the_election_task() {
        let (sender, role) = watch::channel(Role::Follower { leader: None });
        let leadership = Leadership { role };
        assert!(!leadership.is_leader());
        assert!(leadership.check().is_err());

        let ttl = Duration::from_secs(10);
        sender.send_replace(Role::Leader {
            until: step_down_at(Instant::now(), ttl),
        });
        assert!(leadership.is_leader());
        tokio::time::advance(Duration::from_millis(7_400)).await;
        assert!(leadership.check().is_ok());
        // Nobody updates the role: the clock alone fences.
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(!leadership.is_leader());
        assert!(
            leadership.role().is_leader(),
            "the role itself is unchanged"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_moves_the_deadline_without_waking_subscribers() {
        let (sender, role) = watch::channel(Role::Follower { leader: None });
        let leadership = Leadership { role };
        let mut subscriber = leadership.subscribe();
        let ttl = Duration::from_secs(10);
        sender.send_replace(Role::Leader {
            until: step_down_at(Instant::now(), ttl),
        });
        assert!(subscriber.has_changed().unwrap());
        subscriber.borrow_and_update();
        tokio::time::advance(Duration::from_secs(5)).await;
        let until = step_down_at(Instant::now(), ttl);
        sender.send_if_modified(|role| {
            *role = Role::Leader { until };
            false
        });
        assert!(!subscriber.has_changed().unwrap());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(leadership.is_leader(), "the renewal extended the deadline");
    }

    #[test]
    fn holders_are_described_from_the_key() {
        let holder = Holder {
            hostname: "node-1".to_owned(),
            pid: 42,
            instance: "prod".to_owned(),
        };
        let value = serde_json::to_vec(&holder).unwrap();
        assert_eq!(Holder::describe(&value), "node-1 pid 42 (instance prod)");
        assert_eq!(Holder::describe(b"someone else"), "someone else");
        assert_eq!(Holder::describe(b""), "(no holder written)");
    }
}
