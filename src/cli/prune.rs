//! `cutover prune --confirm`: lets the daemon remove services whose specs vanished en masse.

use super::{CliError, Context};
use crate::controller::prune_confirm_key;

/// Confirm the removal of services whose specs disappeared all at once.
///
/// The daemon refuses to act when every spec, or more than half of them, vanish in one
/// change (Consul restarted empty, a stray `consul kv delete -recurse`). This lists the
/// services that have a status but no spec, and confirms their removal.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Really confirm; without it, only list what would be removed.
    #[arg(long)]
    pub confirm: bool,
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    let store = ctx.store()?;
    let (specs, _) = store.list_services().await?;
    let gone: Vec<String> = store
        .list_statuses()
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| !specs.iter().any(|s| &s.name == name))
        .collect();
    if gone.is_empty() {
        println!("nothing to prune: every service with a status still has a spec");
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
        let key = prune_confirm_key(store.prefix());
        store
            .client()
            .put(&key, &serde_json::to_vec(&gone)?, None)
            .await?;
    } else {
        println!("run again with --confirm to let the daemon remove them");
    }
    Ok(())
}
