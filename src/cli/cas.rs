//! The check-and-set loop shared by every command that changes a service's manifest.
//!
//! Read the key, decide from what is there, write (or delete) with `cas` set to the index that
//! was read; if someone else wrote in between, Consul refuses, and the loop reads again after a
//! jittered pause. The decision is a plain function of what was read, so a retry always acts
//! on the newest value and no update is ever lost.

use std::time::Duration;

use rand::Rng as _;

use crate::store::{Store, StoredService};

use super::CliError;

/// What to do with the manifest that was just read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Store this text.
    Write(String),
    /// Remove the key.
    Delete,
    /// Leave it as it is.
    Keep,
}

/// What the loop ended up doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Deleted,
    Unchanged,
}

impl Outcome {
    /// The past participle printed after `service/<name>`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Deleted => "deleted",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// The result of [`update_service`].
#[derive(Debug, Clone)]
pub struct Updated {
    pub outcome: Outcome,
    /// The manifest the winning decision was made on; `None` when the key did not exist.
    pub previous: Option<StoredService>,
    /// How many read-decide-write rounds it took (1 without contention).
    pub attempts: u32,
}

/// How long the loop keeps trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    /// The pause after the first conflict is random in `[0, first_delay]`; the bound doubles
    /// with each conflict up to `max_delay` ("full jitter").
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// For `apply` and `sync`: a person or a pipeline writes rarely; a few retries tell a
    /// race from a fight.
    pub const WRITE: RetryPolicy = RetryPolicy {
        attempts: 10,
        first_delay: Duration::from_millis(20),
        max_delay: Duration::from_secs(1),
    };

    /// For `scale`: many writers may bump the same count at once and each must win in the end.
    pub const SCALE: RetryPolicy = RetryPolicy {
        attempts: 100,
        first_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(500),
    };

    /// The bound of the random pause after the `conflicts`-th conflict (1-based).
    pub fn delay_bound(&self, conflicts: u32) -> Duration {
        let factor = 1u32 << conflicts.saturating_sub(1).min(16);
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// Runs the read-decide-write loop on one service's manifest.
///
/// `decide` sees the current manifest (`None` when the key does not exist) and may fail, for
/// example when the service must exist; that error ends the loop.
///
/// # Errors
/// Consul errors, `decide`'s errors, and [`CliError::ConcurrentModification`] when every
/// attempt lost the race.
pub async fn update_service<F>(
    store: &Store,
    name: &str,
    policy: RetryPolicy,
    mut decide: F,
) -> Result<Updated, CliError>
where
    F: FnMut(Option<&StoredService>) -> Result<Decision, CliError>,
{
    for attempt in 1..=policy.attempts {
        let current = store.get_service(name).await?;
        let index = current.as_ref().map_or(0, |c| c.modify_index);
        let outcome = match decide(current.as_ref())? {
            Decision::Keep => Some(Outcome::Unchanged),
            Decision::Write(text) => {
                store
                    .put_service(name, &text, index)
                    .await?
                    .then_some(if current.is_some() {
                        Outcome::Configured
                    } else {
                        Outcome::Created
                    })
            }
            Decision::Delete if current.is_none() => Some(Outcome::Unchanged),
            Decision::Delete => store
                .delete_service(name, index)
                .await?
                .then_some(Outcome::Deleted),
        };
        if let Some(outcome) = outcome {
            return Ok(Updated {
                outcome,
                previous: current,
                attempts: attempt,
            });
        }
        tracing::debug!(
            service = name,
            attempt,
            "check-and-set lost a race; retrying"
        );
        let bound = policy.delay_bound(attempt);
        let pause = rand::rng().random_range(Duration::ZERO..=bound);
        tokio::time::sleep(pause).await;
    }
    Err(CliError::ConcurrentModification {
        key: store.service_key(name),
        attempts: policy.attempts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum() {
        let policy = RetryPolicy {
            attempts: 100,
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        };
        let bounds: Vec<u128> = (1..=5).map(|n| policy.delay_bound(n).as_millis()).collect();
        assert_eq!(bounds, [10, 20, 40, 50, 50]);
        assert_eq!(policy.delay_bound(1000), Duration::from_millis(50));
    }
}
