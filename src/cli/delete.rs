//! `cutover delete NAME`: removes a service's manifest with check-and-set.
//!
//! The daemon notices and tears the service down; it also removes the status key.

use crate::store::Store;

use super::cas::{Decision, RetryPolicy, update_service};
use super::{CliError, Context, check_name};

const EXAMPLES: &str = "\
Examples:
  cutover delete books";

/// Delete a service's manifest from KV (the daemon then removes its containers and routes).
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    pub name: String,
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    check_name(&args.name)?;
    let store = ctx.store()?;
    delete_service(&store, &args.name).await?;
    println!("service/{} deleted", args.name);
    Ok(())
}

/// Deletes the manifest on the index just read; a missing service is an error.
pub async fn delete_service(store: &Store, name: &str) -> Result<(), CliError> {
    update_service(store, name, RetryPolicy::WRITE, |current| match current {
        Some(_) => Ok(Decision::Delete),
        None => Err(CliError::NotFound {
            name: name.to_owned(),
            key: store.service_key(name),
        }),
    })
    .await?;
    Ok(())
}
