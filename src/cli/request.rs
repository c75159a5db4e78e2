//! `cutover promote|rollback|abort|retry NAME`: imperative requests the daemon acts on.
//!
//! Each request names the revision it applies to (the one `cutover status` shows, unless
//! `--revision` says otherwise), so a request made against one rollout never acts on a newer
//! one. The daemon acknowledges it in the status; with `--wait` the command waits for that.
//! A status that does not decode cannot tell the revision: the command then fails naming the
//! key, unless `--revision` is given.

use std::time::Duration;

use super::{CliError, Context, check_name, parse_duration};
use crate::status::{Action, Request, Status, rfc3339};
use crate::store::{Store, Stored};

/// Promote, roll back or abort the rollout of a service.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service.
    pub name: String,
    /// The revision the request applies to [default: for promote and abort, the revision
    /// in preview or rolling out; for rollback, the live one; for retry, the rejected one].
    #[arg(long)]
    pub revision: Option<String>,
    /// Wait until the daemon acknowledged the request, at most this long (0: don't wait).
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub wait: Duration,
}

pub async fn run(ctx: &Context, action: Action, args: Args) -> Result<(), CliError> {
    check_name(&args.name)?;
    let store = ctx.store()?;
    let stored = store
        .get_status(&args.name)
        .await?
        .ok_or_else(|| CliError::NoStatus {
            name: args.name.clone(),
        })?;
    let action_word = format!("{action:?}").to_lowercase();
    let revision = match (args.revision, stored) {
        (Some(revision), _) => revision,
        (None, Stored::Readable(status)) => {
            default_revision(&status.value, action).ok_or_else(|| CliError::NothingToAct {
                name: args.name.clone(),
                action: action_word,
            })?
        }
        (None, Stored::Unreadable(bad)) => {
            return Err(CliError::UnreadableStatus {
                name: args.name,
                action: action_word,
                detail: bad.to_string(),
            });
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let request = Request {
        id: format!("{now:x}-{:08x}", rand::random::<u32>()),
        action,
        revision: revision.clone(),
        requested_at: rfc3339(now),
    };
    store.put_request(&args.name, &request, None).await?;
    println!(
        "{}: {:?} of revision {revision} requested",
        args.name, action
    );
    if args.wait.is_zero() {
        return Ok(());
    }
    let ack = wait_for_ack(&store, &args.name, &request.id, args.wait).await?;
    println!("{}: {} ({})", args.name, ack.0, ack.1);
    if ack.0 == "Done" {
        Ok(())
    } else {
        Err(CliError::RequestRefused {
            name: args.name,
            result: ack.0,
            message: ack.1,
        })
    }
}

/// The revision a request most likely means, from what the status shows.
fn default_revision(status: &Status, action: Action) -> Option<String> {
    let color = match action {
        Action::Rollback => status.active_color?,
        Action::Retry => return status.rejected.as_ref().map(|r| r.revision.clone()),
        Action::Promote | Action::Abort => status
            .preview_color
            .or_else(|| status.active_color.map(|c| c.other()))?,
    };
    status.colors.get(&color).map(|c| c.revision.clone())
}

async fn wait_for_ack(
    store: &Store,
    name: &str,
    id: &str,
    timeout: Duration,
) -> Result<(String, String), CliError> {
    let key = store.status_key(name);
    let wait = async {
        let mut index = 0;
        loop {
            index = super::list_after(store, &key, index, Duration::from_secs(30))
                .await?
                .index;
            // An unreadable status holds no acknowledgement; the daemon rewrites it.
            if let Some(ack) = store
                .get_status(name)
                .await?
                .and_then(Stored::into_readable)
                .and_then(|s| s.value.last_request)
                .filter(|a| a.id == id)
            {
                return Ok::<_, CliError>((ack.result, ack.message));
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| CliError::Timeout {
            what: format!("the daemon to acknowledge the request for {name}"),
        })?
}
