//! `cutover validate FILE|DIR...`: checks manifests without talking to Consul.

use std::path::PathBuf;

use super::manifests::load_manifests;
use super::{CliError, Context};

const EXAMPLES: &str = "\
Examples:
  cutover validate books.yaml
  cutover validate manifests/ extra/users.yml

A directory contributes every .yaml and .yml file directly inside it (not subdirectories).";

/// Check manifests: every field of every file, and conflicts between them (such as two
/// services claiming one route). Talks to nothing.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Manifest files, or directories of them.
    #[arg(required = true, value_name = "FILE|DIR")]
    pub paths: Vec<PathBuf>,
}

pub async fn run(_ctx: &Context, args: Args) -> Result<(), CliError> {
    let manifests = load_manifests(&args.paths)?;
    if manifests.is_empty() {
        return Err(CliError::NoManifests {
            path: args.paths[0].clone(),
        });
    }
    println!("ok: {} services", manifests.len());
    Ok(())
}
