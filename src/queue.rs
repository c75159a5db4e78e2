//! The work queue keyed by service: one reconcile per service at a time, bursts coalesced,
//! delayed retries, any number of workers.
//!
//! Like client-go's workqueue: a service added while it is queued is queued once; a service
//! added while it is being reconciled is queued again when that reconcile finishes, never run
//! twice at once. Time is tokio's, so tests can pause it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Default)]
struct State {
    /// Services waiting, with the earliest time each may run.
    pending: BTreeMap<String, Instant>,
    /// Services a worker holds now.
    running: BTreeSet<String>,
    /// Services added while running, with when they may run again.
    again: BTreeMap<String, Instant>,
    closed: bool,
}

/// A cheaply clonable handle to one queue.
#[derive(Clone, Default)]
pub struct WorkQueue {
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
}

impl WorkQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `name` to run now.
    pub fn add(&self, name: &str) {
        self.add_after(name, Duration::ZERO);
    }

    /// Queues `name` to run after `delay`; an earlier pending time wins.
    pub fn add_after(&self, name: &str, delay: Duration) {
        let at = Instant::now() + delay;
        let mut state = self.state.lock().expect("queue lock");
        let slot = if state.running.contains(name) {
            state.again.entry(name.to_owned())
        } else {
            state.pending.entry(name.to_owned())
        };
        slot.and_modify(|t| *t = (*t).min(at)).or_insert(at);
        drop(state);
        self.wake.notify_waiters();
    }

    /// How many services wait (for the queue-depth metric).
    pub fn len(&self) -> usize {
        self.state.lock().expect("queue lock").pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for the next service whose time has come, and marks it running. Returns `None`
    /// once the queue is closed.
    pub async fn next(&self) -> Option<String> {
        loop {
            let notified = self.wake.notified();
            let wait_until = {
                let mut state = self.state.lock().expect("queue lock");
                if state.closed {
                    return None;
                }
                let now = Instant::now();
                let due = state
                    .pending
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .min_by_key(|(_, at)| **at)
                    .map(|(name, _)| name.clone());
                if let Some(name) = due {
                    state.pending.remove(&name);
                    state.running.insert(name.clone());
                    return Some(name);
                }
                state.pending.values().min().copied()
            };
            match wait_until {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Marks `name` finished; if it was added meanwhile, it is queued again.
    pub fn done(&self, name: &str) {
        let mut state = self.state.lock().expect("queue lock");
        state.running.remove(name);
        if let Some(at) = state.again.remove(name) {
            let slot = state.pending.entry(name.to_owned()).or_insert(at);
            *slot = (*slot).min(at);
        }
        drop(state);
        self.wake.notify_waiters();
    }

    /// Wakes every waiting worker with `None`.
    pub fn close(&self) {
        self.state.lock().expect("queue lock").closed = true;
        self.wake.notify_waiters();
    }
}

/// Exponential backoff with full jitter for a service that failed `failures` times in a row:
/// between half and all of `base * 2^(failures-1)`, capped at `max`.
pub fn backoff_delay(failures: u32, base: Duration, max: Duration) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let capped = exp.min(max);
    let half = capped / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// The delay before retrying a watch or connection that failed `failures` times in a row:
/// from 0.5 s doubling to 10 s, jittered.
pub fn retry_delay(failures: u32) -> Duration {
    backoff_delay(
        failures,
        Duration::from_millis(500),
        Duration::from_secs(10),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_coalesced_into_one_run() {
        let q = WorkQueue::new();
        for _ in 0..5 {
            q.add("books");
        }
        q.add("users");
        assert_eq!(q.len(), 2);
        let mut got = vec![q.next().await.unwrap(), q.next().await.unwrap()];
        got.sort();
        assert_eq!(got, ["books", "users"]);
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_never_runs_twice_at_once_and_is_requeued_when_done() {
        let q = WorkQueue::new();
        q.add("books");
        let first = q.next().await.unwrap();
        q.add("books");
        assert!(q.is_empty(), "held back while running");
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiter.is_finished(), "not handed out while running");
        q.done(&first);
        assert_eq!(waiter.await.unwrap().as_deref(), Some("books"));
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_items_wait_their_turn_and_earlier_wins() {
        let q = WorkQueue::new();
        q.add_after("slow", Duration::from_secs(30));
        q.add_after("fast", Duration::from_secs(1));
        let start = Instant::now();
        assert_eq!(q.next().await.as_deref(), Some("fast"));
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        q.add_after("slow", Duration::from_secs(2));
        assert_eq!(q.next().await.as_deref(), Some("slow"));
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn close_releases_waiting_workers() {
        let q = WorkQueue::new();
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::task::yield_now().await;
        q.close();
        assert_eq!(waiter.await.unwrap(), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(500);
        let max = Duration::from_secs(60);
        for (failures, low, high) in [
            (1, 250, 500),
            (2, 500, 1000),
            (3, 1000, 2000),
            (30, 30_000, 60_000),
        ] {
            let d = backoff_delay(failures, base, max).as_millis() as u64;
            assert!((low..=high).contains(&d), "{failures}: {d}");
        }
        assert_eq!(backoff_delay(0, base, max), Duration::ZERO);
    }
}
