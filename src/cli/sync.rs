//! `cutover sync DIR`: makes KV equal to a directory of manifests (GitOps).
//!
//! The directory is validated first; if anything is invalid, nothing is written. A pure
//! [`plan`] compares it with KV and lists the changes; the same list is printed by a
//! `--dry-run` and carried out by a real run (each write through the [`cas`](super::cas) loop,
//! so a concurrent change is re-read, never overwritten blindly). Services in KV whose YAML is
//! invalid are reported and overwritten from the directory. With `--prune`, services in KV
//! but not in the directory are deleted, unless that would delete more than half of them
//! (a broken checkout must not wipe production): then `--force` is needed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::spec::Service;
use crate::store::{Store, StoredService};

use super::cas::{Decision, Outcome, RetryPolicy, update_service};
use super::manifests::{Manifest, load_manifests};
use super::{CliError, Context, apply};

const EXAMPLES: &str = "\
Examples:
  cutover sync manifests/                      # create and update
  cutover sync manifests/ --prune --dry-run    # show what a prune would do
  cutover sync manifests/ --prune              # also delete what is not in the directory
  cutover sync manifests/ --wait               # then wait until all are Available

Output: '+ NAME created', '~ NAME configured: FIELD: OLD -> NEW', '- NAME deleted',
'= NAME unchanged', '? NAME is only in KV' (without --prune), then a drift summary. With
--dry-run: 'would be created', 'would be configured', 'would be deleted', every change listed
even when the prune would be refused.";

/// Make KV equal to a directory of manifests and report the drift.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The directory of manifests (its .yaml/.yml files, not subdirectories).
    pub dir: PathBuf,
    /// Delete services that are in KV but not in the directory.
    #[arg(long)]
    pub prune: bool,
    /// Print what would change and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Allow a prune that deletes more than half of the services in KV.
    #[arg(long)]
    pub force: bool,
    /// Then wait until the daemon made every service Available (exit 0) or gave up on one
    /// (exit 1), showing the progress on stderr as `status --wait` does.
    #[arg(long, conflicts_with = "dry_run")]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "5m", value_parser = super::parse_duration, requires = "wait")]
    pub timeout: std::time::Duration,
}

/// One line of the diff between the directory and KV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create {
        name: String,
    },
    /// `fields` summarizes what differs, such as `spec.image: a -> b`.
    Configure {
        name: String,
        fields: Vec<String>,
    },
    Unchanged {
        name: String,
    },
    Delete {
        name: String,
    },
    /// In KV, not in the directory, and not pruned.
    OnlyInStore {
        name: String,
    },
}

impl Change {
    pub fn name(&self) -> &str {
        match self {
            Change::Create { name }
            | Change::Configure { name, .. }
            | Change::Unchanged { name }
            | Change::Delete { name }
            | Change::OnlyInStore { name } => name,
        }
    }

    /// Whether KV differs from the directory here.
    pub fn is_drift(&self) -> bool {
        !matches!(self, Change::Unchanged { .. })
    }
}

impl Change {
    /// The line a `--dry-run` prints: what would be done.
    pub fn would(&self) -> String {
        let line = self.to_string();
        match self {
            Change::Create { .. } | Change::Configure { .. } | Change::Delete { .. } => {
                let (sign, rest) = line.split_at(2);
                format!("{sign}{}", rest.replacen(' ', " would be ", 1))
            }
            Change::Unchanged { .. } | Change::OnlyInStore { .. } => line,
        }
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Create { name } => write!(f, "+ {name} created"),
            Change::Configure { name, fields } => {
                write!(f, "~ {name} configured")?;
                if !fields.is_empty() {
                    write!(f, ": {}", summarize(fields))?;
                }
                Ok(())
            }
            Change::Unchanged { name } => write!(f, "= {name} unchanged"),
            Change::Delete { name } => write!(f, "- {name} deleted"),
            Change::OnlyInStore { name } => {
                write!(f, "? {name} is only in KV (sync --prune deletes it)")
            }
        }
    }
}

/// Compares the directory with KV. Both lists are in name order; so is the result.
pub fn plan(manifests: &[Manifest], stored: &[StoredService], prune: bool) -> Vec<Change> {
    let in_store: BTreeMap<&str, &StoredService> =
        stored.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut changes: Vec<Change> = manifests
        .iter()
        .map(|manifest| {
            let name = manifest.name().to_owned();
            let current = in_store.get(manifest.name()).copied();
            match (apply::decide(current, manifest), current) {
                (Decision::Keep, _) => Change::Unchanged { name },
                (_, None) => Change::Create { name },
                (_, Some(stored)) => configure(stored, manifest),
            }
        })
        .collect();
    let in_dir: Vec<&str> = manifests.iter().map(Manifest::name).collect();
    for stored in stored {
        if !in_dir.contains(&stored.name.as_str()) {
            let name = stored.name.clone();
            changes.push(if prune {
                Change::Delete { name }
            } else {
                Change::OnlyInStore { name }
            });
        }
    }
    changes.sort_by(|a, b| a.name().cmp(b.name()));
    changes
}

/// The change from a stored manifest to a different one in the directory.
fn configure(stored: &StoredService, manifest: &Manifest) -> Change {
    let fields = match &stored.parsed {
        Ok(old) => field_changes(old, &manifest.service),
        Err(diagnostics) => vec![format!(
            "was invalid: {}",
            diagnostics
                .0
                .first()
                .map(|d| d.message.as_str())
                .unwrap_or("")
        )],
    };
    Change::Configure {
        name: manifest.name().to_owned(),
        fields,
    }
}

/// Refuses a prune that deletes more than half of the services in KV, unless forced.
pub fn check_prune(
    changes: &[Change],
    total_in_store: usize,
    force: bool,
    dir: &std::path::Path,
) -> Result<(), CliError> {
    let deleted: Vec<&str> = changes
        .iter()
        .filter(|c| matches!(c, Change::Delete { .. }))
        .map(Change::name)
        .collect();
    if !force && deleted.len() * 2 > total_in_store {
        return Err(CliError::PruneRefused {
            deletions: deleted.len(),
            total: total_in_store,
            services: deleted.join(", "),
            dir: dir.to_owned(),
        });
    }
    Ok(())
}

/// The fields that differ between two manifests, as `path: old -> new`, in field order.
pub fn field_changes(old: &Service, new: &Service) -> Vec<String> {
    let old = serde_json::to_value(old).expect("a Service always serializes");
    let new = serde_json::to_value(new).expect("a Service always serializes");
    let mut changes = Vec::new();
    diff_values("", &old, &new, &mut changes);
    changes
}

fn diff_values(
    path: &str,
    old: &serde_json::Value,
    new: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    if old == new {
        return;
    }
    if let (Value::Object(old_fields), Value::Object(new_fields)) = (old, new) {
        let mut keys: Vec<&String> = old_fields.keys().chain(new_fields.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let child = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            diff_values(
                &child,
                old_fields.get(key).unwrap_or(&Value::Null),
                new_fields.get(key).unwrap_or(&Value::Null),
                out,
            );
        }
        return;
    }
    out.push(format!("{path}: {} -> {}", show(old), show(new)));
}

fn show(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "(none)".to_owned(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// At most three field changes, then how many more.
fn summarize(fields: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut text = fields
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if fields.len() > SHOWN {
        text.push_str(&format!(", and {} more", fields.len() - SHOWN));
    }
    text
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    let manifests = load_manifests(std::slice::from_ref(&args.dir))?;
    let store = ctx.store()?;
    let (stored, _) = store.list_services().await?;
    for service in &stored {
        if let Err(diagnostics) = &service.parsed {
            for diagnostic in &diagnostics.0 {
                println!("! invalid in KV: {diagnostic}");
            }
        }
    }
    let changes = plan(&manifests, &stored, args.prune);
    if args.dry_run {
        // Every change, named, also when the prune would be refused: then it fails after.
        let refused = check_prune(&changes, stored.len(), args.force, &args.dir);
        for change in &changes {
            println!("{}", change.would());
        }
        let drift: Vec<Change> = changes.into_iter().filter(Change::is_drift).collect();
        println!("{}", drift_summary(&drift, manifests.len(), &args));
        return refused;
    }
    check_prune(&changes, stored.len(), args.force, &args.dir)?;

    let by_name: BTreeMap<&str, &Manifest> = manifests.iter().map(|m| (m.name(), m)).collect();
    let mut drift = Vec::new();
    for change in changes {
        let done = carry_out(&store, change, &by_name).await?;
        println!("{done}");
        if done.is_drift() {
            drift.push(done);
        }
    }
    println!("{}", drift_summary(&drift, manifests.len(), &args));
    if args.wait {
        use std::io::IsTerminal as _;
        let live = std::io::stderr().is_terminal();
        super::status::wait_for_all(
            &store,
            super::status::WaitFor::Available,
            args.timeout,
            live,
        )
        .await?;
    }
    Ok(())
}

/// Carries out one planned change through the check-and-set loop and returns what was really
/// done, which differs from the plan when someone else changed KV in the meantime.
async fn carry_out(
    store: &Store,
    change: Change,
    manifests: &BTreeMap<&str, &Manifest>,
) -> Result<Change, CliError> {
    let name = change.name().to_owned();
    match change {
        Change::Create { .. } | Change::Configure { .. } => {
            let manifest = manifests[name.as_str()];
            let updated = update_service(store, &name, RetryPolicy::WRITE, |current| {
                Ok(apply::decide(current, manifest))
            })
            .await?;
            Ok(match (updated.outcome, &updated.previous) {
                (Outcome::Unchanged, _) => Change::Unchanged { name },
                (_, Some(previous)) => configure(previous, manifest),
                (_, None) => Change::Create { name },
            })
        }
        Change::Delete { .. } => {
            // When someone else deleted it first, the result is the same.
            update_service(store, &name, RetryPolicy::WRITE, |current| {
                Ok(if current.is_some() {
                    Decision::Delete
                } else {
                    Decision::Keep
                })
            })
            .await?;
            Ok(Change::Delete { name })
        }
        unchanged @ (Change::Unchanged { .. } | Change::OnlyInStore { .. }) => Ok(unchanged),
    }
}

fn drift_summary(drift: &[Change], in_dir: usize, args: &Args) -> String {
    let count = |f: fn(&Change) -> bool| drift.iter().filter(|c| f(c)).count();
    let created = count(|c| matches!(c, Change::Create { .. }));
    let configured = count(|c| matches!(c, Change::Configure { .. }));
    let deleted = count(|c| matches!(c, Change::Delete { .. }));
    let only_in_store = count(|c| matches!(c, Change::OnlyInStore { .. }));
    let dir = args.dir.display();
    let mut text = if drift.is_empty() {
        format!("no drift: KV matches {dir} ({in_dir} services)")
    } else {
        let verb = if args.dry_run { "would be " } else { "" };
        format!(
            "drift: {} service(s) differed from {dir}: {created} {verb}created, \
             {configured} {verb}configured, {deleted} {verb}deleted, {only_in_store} only in KV",
            drift.len()
        )
    };
    if args.dry_run {
        text.push_str(" (dry run: nothing was written)");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_service;

    fn manifest(name: &str, image: &str, replicas: u32) -> Manifest {
        let text = format!(
            "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{image: '{image}', replicas: {replicas}}}\n"
        );
        Manifest {
            path: PathBuf::from(format!("{name}.yaml")),
            service: parse_service(&format!("{name}.yaml"), &text).unwrap(),
            text,
        }
    }

    fn stored(name: &str, text: &str) -> StoredService {
        let key = format!("cutover/services/{name}");
        StoredService {
            name: name.to_owned(),
            parsed: parse_service(&key, text),
            key,
            modify_index: 5,
            text: text.to_owned(),
        }
    }

    fn in_store(m: &Manifest) -> StoredService {
        stored(m.name(), &m.text)
    }

    #[test]
    fn plans() {
        let a1 = manifest("a", "a:1", 1);
        let a2 = manifest("a", "a:2", 3);
        let b = manifest("b", "b:1", 1);
        let c = manifest("c", "c:1", 1);
        let broken = stored("a", "spec: [");
        let configure = |fields: &[&str]| Change::Configure {
            name: "a".to_owned(),
            fields: fields.iter().map(|f| f.to_string()).collect(),
        };
        let name = |n: &str| n.to_owned();
        // (in the directory, in KV, prune, expected plan)
        type Case = (Vec<Manifest>, Vec<StoredService>, bool, Vec<Change>);
        let cases: Vec<Case> = vec![
            (vec![], vec![], false, vec![]),
            (
                vec![a1.clone()],
                vec![],
                false,
                vec![Change::Create { name: name("a") }],
            ),
            (
                vec![a1.clone()],
                vec![in_store(&a1)],
                false,
                vec![Change::Unchanged { name: name("a") }],
            ),
            (
                vec![a2.clone()],
                vec![in_store(&a1)],
                false,
                vec![configure(&[
                    "spec.image: a:1 -> a:2",
                    "spec.replicas: 1 -> 3",
                ])],
            ),
            (
                vec![a1.clone(), b.clone()],
                vec![in_store(&b), in_store(&c)],
                false,
                vec![
                    Change::Create { name: name("a") },
                    Change::Unchanged { name: name("b") },
                    Change::OnlyInStore { name: name("c") },
                ],
            ),
            (
                vec![b.clone()],
                vec![in_store(&b), in_store(&c)],
                true,
                vec![
                    Change::Unchanged { name: name("b") },
                    Change::Delete { name: name("c") },
                ],
            ),
        ];
        for (manifests, stored, prune, expected) in cases {
            assert_eq!(plan(&manifests, &stored, prune), expected);
        }

        let changes = plan(&[a1], &[broken], false);
        assert!(
            matches!(&changes[..], [Change::Configure { fields, .. }] if fields[0].starts_with("was invalid: ")),
            "{changes:?}"
        );
    }

    #[test]
    fn prune_guard() {
        let delete = |n: &str| Change::Delete { name: n.to_owned() };
        let dir = std::path::Path::new("manifests");
        // (deletions, in KV, force, allowed)
        let cases = [
            (0, 0, false, true),
            (1, 2, false, true),
            (2, 4, false, true),
            (3, 4, false, false),
            (1, 1, false, false),
            (1, 1, true, true),
            (4, 4, true, true),
        ];
        for (deletions, total, force, allowed) in cases {
            let changes: Vec<Change> = (0..deletions).map(|i| delete(&i.to_string())).collect();
            assert_eq!(
                check_prune(&changes, total, force, dir).is_ok(),
                allowed,
                "{deletions} of {total}, force {force}"
            );
        }
    }

    #[test]
    fn change_lines() {
        let configure = Change::Configure {
            name: "users".to_owned(),
            fields: (1..=5).map(|i| format!("f{i}: a -> b")).collect(),
        };
        assert_eq!(
            configure.to_string(),
            "~ users configured: f1: a -> b, f2: a -> b, f3: a -> b, and 2 more"
        );
        assert_eq!(
            Change::Create {
                name: "books".to_owned()
            }
            .to_string(),
            "+ books created"
        );
        assert_eq!(
            Change::Delete {
                name: "old".to_owned()
            }
            .to_string(),
            "- old deleted"
        );
    }

    #[test]
    fn field_changes_name_nested_fields() {
        let old = manifest("a", "a:1", 1).service;
        let mut new = old.clone();
        new.spec.health.path = "/healthz".to_owned();
        new.spec.env.insert("LOG".to_owned(), "debug".to_owned());
        assert_eq!(
            field_changes(&old, &new),
            [
                "spec.env: (none) -> {\"LOG\":\"debug\"}",
                "spec.health.path: / -> /healthz"
            ]
        );
    }
}
