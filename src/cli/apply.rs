//! `cutover apply -f FILE|DIR`: writes manifests to KV with check-and-set.
//!
//! Everything given is validated first; if anything is invalid, nothing is written. Each
//! service is then written through the [`cas`](super::cas) loop. A service counts as
//! `unchanged`, and its key is not rewritten, when the stored text is byte-identical to the
//! file or parses to an equal [`Service`](crate::spec::Service): like `kubectl apply`, apply
//! compares content, so a formatting or comment change alone does not bump the ModifyIndex
//! (and does not make the daemon reconcile). When the content differs, the file's text is
//! stored exactly as written.

use std::path::PathBuf;

use crate::store::StoredService;

use super::cas::{Decision, Outcome, RetryPolicy, update_service};
use super::manifests::{Manifest, load_manifests};
use super::{CliError, Context};

const EXAMPLES: &str = "\
Examples:
  cutover apply -f books.yaml
  cutover apply -f manifests/
  cutover apply -f books.yaml -f users.yaml";

/// Validate manifests, then write each to PREFIX/services/NAME with check-and-set.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// A manifest file or a directory of them (its .yaml/.yml files); repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        value_name = "FILE|DIR"
    )]
    pub paths: Vec<PathBuf>,
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    let manifests = load_manifests(&args.paths)?;
    if manifests.is_empty() {
        return Err(CliError::NoManifests {
            path: args.paths[0].clone(),
        });
    }
    let store = ctx.store()?;
    for manifest in &manifests {
        let outcome = write_manifest(&store, manifest).await?;
        println!("service/{} {}", manifest.name(), outcome.as_str());
    }
    Ok(())
}

/// Writes one manifest unless KV already holds the same content.
pub async fn write_manifest(
    store: &crate::store::Store,
    manifest: &Manifest,
) -> Result<Outcome, CliError> {
    let updated = update_service(store, manifest.name(), RetryPolicy::WRITE, |current| {
        Ok(decide(current, manifest))
    })
    .await?;
    Ok(updated.outcome)
}

/// Keep the stored manifest when it is the same text or the same content; write otherwise.
pub fn decide(current: Option<&StoredService>, manifest: &Manifest) -> Decision {
    match current {
        Some(stored) if stored.text == manifest.text => Decision::Keep,
        Some(stored) if stored.parsed.as_ref().ok() == Some(&manifest.service) => Decision::Keep,
        _ => Decision::Write(manifest.text.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_service;

    const BOOKS: &str = "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {name: books}\nspec: {image: 'books:1', replicas: 2}\n";
    const BOOKS_REFORMATTED: &str = "# the books service\napiVersion: cutover.dev/v1\nkind: Service\nmetadata:\n  name: books\nspec:\n  image: books:1\n  replicas: 2\n";
    const BOOKS_SCALED: &str = "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {name: books}\nspec: {image: 'books:1', replicas: 3}\n";
    const INVALID: &str =
        "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {name: books}\nspec: {replicas: 2}\n";

    fn stored(text: &str) -> StoredService {
        StoredService {
            name: "books".to_owned(),
            key: "cutover/services/books".to_owned(),
            modify_index: 7,
            text: text.to_owned(),
            parsed: parse_service("cutover/services/books", text),
        }
    }

    fn manifest(text: &str) -> Manifest {
        Manifest {
            path: PathBuf::from("books.yaml"),
            text: text.to_owned(),
            service: parse_service("books.yaml", text).unwrap(),
        }
    }

    #[test]
    fn decisions() {
        let write = |text: &str| Decision::Write(text.to_owned());
        let cases = [
            (None, BOOKS, write(BOOKS)),
            (Some(BOOKS), BOOKS, Decision::Keep),
            (Some(BOOKS_REFORMATTED), BOOKS, Decision::Keep),
            (Some(BOOKS), BOOKS_SCALED, write(BOOKS_SCALED)),
            (Some(INVALID), BOOKS, write(BOOKS)),
        ];
        for (current, file, expected) in cases {
            let current = current.map(stored);
            assert_eq!(
                decide(current.as_ref(), &manifest(file)),
                expected,
                "stored {current:?}, file {file}"
            );
        }
    }
}
