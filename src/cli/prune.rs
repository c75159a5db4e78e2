//! `cutover prune --confirm`: lets the daemon remove services whose specs vanished en masse.

use std::time::Duration;

use super::{CliError, Context, parse_duration};
use crate::controller::DEFAULT_CONFIRMATION_TTL;
use crate::status::PruneConfirmation;

/// Confirm the removal of services whose specs disappeared all at once.
///
/// The daemon refuses to act when every spec, or more than half of them, vanish in one
/// change (Consul restarted empty, a stray `consul kv delete -recurse`), and publishes the
/// deletion it refuses. This lists those services (and any other service that has a status
/// but no spec) and, with `--confirm`, confirms exactly their removal, for a limited time.
/// The daemon acts at once, and uses the confirmation up: a later mass deletion needs a new
/// one.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Really confirm; without it, only list what would be removed.
    #[arg(long)]
    pub confirm: bool,
    /// How long the confirmation counts (the daemon acts within seconds; this only bounds
    /// a confirmation that was never used).
    #[arg(long = "for", value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
    pub ttl: Duration,
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    let store = ctx.store()?;
    let (specs, _) = store.list_services().await?;
    let mut gone: Vec<String> = store
        .list_statuses()
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .chain(
            store
                .get_refused_deletion()
                .await?
                .into_iter()
                .flat_map(|r| r.services),
        )
        .filter(|name| !specs.iter().any(|s| &s.name == name))
        .collect();
    gone.sort();
    gone.dedup();
    if gone.is_empty() {
        println!("nothing to prune: every service the daemon knows still has a spec");
        return Ok(());
    }
    for name in &gone {
        println!(
            "{} {name}",
            if args.confirm {
                "confirmed removal of"
            } else {
                "would remove"
            }
        );
    }
    if args.confirm {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let ttl = if args.ttl.is_zero() {
            DEFAULT_CONFIRMATION_TTL
        } else {
            args.ttl
        };
        let confirmation = PruneConfirmation {
            services: gone,
            expires_at_ms: u64::try_from((now + ttl).as_millis()).unwrap_or(u64::MAX),
        };
        store.put_prune_confirmation(&confirmation, None).await?;
        println!(
            "the daemon removes them now; the confirmation expires in {}",
            humantime::format_duration(ttl)
        );
    } else {
        println!("run again with --confirm to let the daemon remove them");
    }
    Ok(())
}
