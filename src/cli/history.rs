//! `cutover history NAME`, `cutover diff NAME REV [REV]` and `cutover rollback NAME --to
//! REV`: the revisions the daemon kept (see [`crate::history`]), the difference between
//! their specs, and writing one of them back as the spec.

use serde::Serialize;

use super::{CliError, Context, OutputFormat, check_name, existing_spec, table};
use crate::history::{self, Cause, Entry};
use crate::status::{Action, Status, rfc3339};
use crate::store::{Store, Stored};

/// List the revisions the daemon ran for a service, newest first, and how each ended.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service.
    pub name: String,
    /// Print JSON (or YAML) instead of a table.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<OutputFormat>,
}

/// Show the difference between the specs of two kept revisions, or a kept revision and the
/// current spec.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The service.
    pub name: String,
    /// A kept revision (as `cutover history` shows it; a unique prefix is enough).
    pub from: String,
    /// Another kept revision [default: the current spec in KV].
    pub to: Option<String>,
}

/// Switch back to the newest kept revision and reject the live one, or, with `--to`, write a
/// kept revision's spec back as the service's spec.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub request: super::request::Args,
    /// Write this kept revision's spec (see `cutover history`) back as the spec, with
    /// check-and-set; the daemon rolls it out like any change. A GitOps sync puts git's spec
    /// back: change it there too.
    #[arg(long, value_name = "REV", conflicts_with = "revision")]
    pub to: Option<String>,
}

/// One row of `cutover history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub revision: String,
    pub image: String,
    pub spec_index: u64,
    /// RFC 3339: when the daemon started acting on that spec.
    pub recorded: String,
    pub outcome: String,
    pub cause: String,
}

/// The kept revisions with how each ended, newest first.
pub fn rows(entries: &[Entry], status: Option<&Status>) -> Vec<Row> {
    history::newest_first(entries)
        .into_iter()
        .map(|e| Row {
            revision: e.revision.clone(),
            image: e.image.clone(),
            spec_index: e.spec_index,
            recorded: rfc3339(e.recorded_ms),
            outcome: history::outcome(e, status),
            cause: e.cause.clone(),
        })
        .collect()
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    check_name(&args.name)?;
    let store = ctx.store()?;
    let entries = kept(&store, &args.name).await?;
    let status = store
        .get_status(&args.name)
        .await?
        .and_then(Stored::into_readable);
    let rows = rows(&entries, status.as_ref().map(|s| &s.value));
    match args.output {
        Some(OutputFormat::Json) => println!("{}", serde_json::to_string_pretty(&rows)?),
        Some(OutputFormat::Yaml) => print!("{}", serde_yaml::to_string(&rows).unwrap_or_default()),
        None => {
            let cells: Vec<Vec<String>> = rows
                .into_iter()
                .map(|r| {
                    let index = r.spec_index.to_string();
                    vec![r.revision, r.image, index, r.recorded, r.outcome, r.cause]
                })
                .collect();
            print!(
                "{}",
                table::render(
                    &[
                        "REVISION",
                        "IMAGE",
                        "SPEC-INDEX",
                        "RECORDED",
                        "OUTCOME",
                        "CAUSE"
                    ],
                    &cells
                )
            );
        }
    }
    Ok(())
}

pub async fn diff(ctx: &Context, args: DiffArgs) -> Result<(), CliError> {
    check_name(&args.name)?;
    let store = ctx.store()?;
    let entries = kept(&store, &args.name).await?;
    let from = find(&entries, &args.name, &args.from)?;
    let from_label = format!(
        "{} revision {} (spec index {})",
        args.name, from.revision, from.spec_index
    );
    let (to_label, to_text) = match &args.to {
        Some(to) => {
            let to = find(&entries, &args.name, to)?;
            let label = format!(
                "{} revision {} (spec index {})",
                args.name, to.revision, to.spec_index
            );
            (label, to.spec.clone())
        }
        None => {
            let current = existing_spec(&store, &args.name).await?;
            let label = format!(
                "{} current spec (index {})",
                args.name, current.modify_index
            );
            (label, current.text)
        }
    };
    print!(
        "{}",
        history::unified_diff(&from_label, &from.spec, &to_label, &to_text)
    );
    Ok(())
}

/// `cutover rollback`: the request to the daemon, or with `--to` the old spec written back.
pub async fn rollback(ctx: &Context, args: RollbackArgs) -> Result<(), CliError> {
    let Some(to) = args.to else {
        return super::request::run(ctx, Action::Rollback, args.request).await;
    };
    let name = args.request.name;
    check_name(&name)?;
    let store = ctx.store()?;
    let entries = kept(&store, &name).await?;
    let entry = find(&entries, &name, &to)?;
    let current = existing_spec(&store, &name).await?;
    if current.text == entry.spec {
        println!(
            "{name}: the spec (index {}) is already that of revision {}; nothing written",
            current.modify_index, entry.revision
        );
        return Ok(());
    }
    let cause = Cause {
        cause: format!(
            "cutover rollback --to {} (spec index {})",
            entry.revision, entry.spec_index
        ),
    };
    let written = store
        .put_service_with_cause(&name, &entry.spec, current.modify_index, &cause)
        .await?;
    if !written {
        return Err(CliError::ConcurrentModification {
            key: store.service_key(&name),
            attempts: 1,
        });
    }
    println!(
        "{name}: wrote the spec of revision {} (image {}, spec index {}) back as {}; the \
         daemon rolls it out like any change (cutover status {name} --wait). If the spec \
         lives in git, change it there too: a sync writes git's spec back.",
        entry.revision,
        entry.image,
        entry.spec_index,
        store.service_key(&name)
    );
    Ok(())
}

/// The kept revisions of `name`; none at all is an error that says why there may be none.
async fn kept(store: &Store, name: &str) -> Result<Vec<Entry>, CliError> {
    let entries = store.list_history(name).await?;
    if entries.is_empty() {
        return Err(CliError::Usage(format!(
            "no revision history for {name}: the daemon records one when it acts on a spec \
             (is cutover run running, and is {name} spelled as in metadata.name?)"
        )));
    }
    Ok(entries)
}

fn find<'a>(entries: &'a [Entry], name: &str, wanted: &str) -> Result<&'a Entry, CliError> {
    history::find(entries, wanted).map_err(|e| CliError::Usage(format!("{name}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_newest_first() {
        let entry = |revision: &str, ms: u64| Entry {
            revision: revision.to_owned(),
            image: "books:1".to_owned(),
            spec_index: ms,
            recorded_ms: ms * 1000,
            cause: history::cause_of(ms, None),
            spec: String::new(),
            rejected: None,
        };
        let rows = rows(&[entry("a", 1), entry("c", 3), entry("b", 2)], None);
        let order: Vec<&str> = rows.iter().map(|r| r.revision.as_str()).collect();
        assert_eq!(order, ["c", "b", "a"]);
        assert_eq!(rows[0].recorded, "1970-01-01T00:00:03Z");
        assert_eq!(rows[0].cause, "spec change at index 3");
        assert_eq!(rows[0].outcome, "superseded");
    }
}
