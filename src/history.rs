//! The revisions a service ran: what the daemon keeps of each (the spec it acted on, who
//! asked), how each ended, which to forget, and the difference between two specs.
//!
//! The daemon (leader) writes an [`Entry`] under `<prefix>/history/<name>/` when it starts
//! acting on a spec index (see `docs/reconciler.md#revision-history`), marks it when the
//! revision is rejected, keeps the newest [`KEEP`] (and every revision that still has
//! containers), and deletes them with the service. `cutover history`, `cutover diff` and
//! `cutover rollback --to` read them. Nothing here does I/O.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::status::{Phase, Status};

/// How many revisions are kept per service, newest first. Revisions the status still
/// names (serving, rolling out, kept for a rollback) are kept beyond that.
pub const KEEP: usize = 10;

/// One revision as the daemon acted on it, stored as JSON at
/// `<prefix>/history/<name>/rev/<revision>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub revision: String,
    pub image: String,
    /// The ModifyIndex of the spec the daemon acted on.
    pub spec_index: u64,
    /// When the daemon started acting on that spec index, in milliseconds since the epoch.
    pub recorded_ms: u64,
    /// Who or what asked: `spec change at index N`, `cutover rollback --to R`, ...
    pub cause: String,
    /// The spec's YAML as the daemon read it.
    pub spec: String,
    /// Why the daemon gave up on it, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Rejection>,
}

/// A rejection of a revision, as the status said when it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    pub reason: String,
    pub message: String,
}

/// Who asked for a spec, written by a command in the same Consul transaction as the spec
/// (so with the same ModifyIndex), at `<prefix>/history/<name>/cause`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    pub cause: String,
}

/// The cause of the spec at `spec_index`: the stored [`Cause`] when it was written with
/// that very spec (same ModifyIndex), else a plain spec change.
pub fn cause_of(spec_index: u64, stored: Option<(&Cause, u64)>) -> String {
    match stored {
        Some((cause, index)) if index == spec_index => cause.cause.clone(),
        _ => format!("spec change at index {spec_index}"),
    }
}

/// How a revision ended, or where it is, as one phrase: `serving`, `rolling out`,
/// `in preview`, `rejected: <reason>`, `retired` (kept for a rollback), `superseded`
/// (replaced before it served, or no longer kept).
pub fn outcome(entry: &Entry, status: Option<&Status>) -> String {
    let revision = entry.revision.as_str();
    if let Some(status) = status {
        if live_revision(status) == Some(revision) {
            return "serving".to_owned();
        }
        if status
            .rollout
            .as_ref()
            .is_some_and(|r| r.revision == revision)
        {
            return match status.phase {
                Some(Phase::Preview) => "in preview".to_owned(),
                _ => "rolling out".to_owned(),
            };
        }
        if let Some(rejected) = (status.rejected.as_ref()).filter(|r| r.revision == revision) {
            return format!("rejected: {}", rejected.reason);
        }
    }
    if let Some(rejected) = &entry.rejected {
        return format!("rejected: {}", rejected.reason);
    }
    let kept = status.is_some_and(|s| s.revision_history.iter().any(|r| r.revision == revision));
    if kept {
        "retired".to_owned()
    } else {
        "superseded".to_owned()
    }
}

/// The revision the live color runs, if any.
pub fn live_revision(status: &Status) -> Option<&str> {
    (status.active_color)
        .and_then(|c| status.colors.get(&c))
        .map(|c| c.revision.as_str())
}

/// The revisions the status still names: serving, rolling out, kept for a rollback.
pub fn in_use(status: &Status) -> BTreeSet<String> {
    let colors = status.colors.values().map(|c| c.revision.clone());
    let rollout = status.rollout.iter().map(|r| r.revision.clone());
    let kept = status.revision_history.iter().map(|r| r.revision.clone());
    colors.chain(rollout).chain(kept).collect()
}

/// The entries, newest (recorded last) first.
pub fn newest_first(entries: &[Entry]) -> Vec<&Entry> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by_key(|e| std::cmp::Reverse((e.recorded_ms, e.spec_index)));
    sorted
}

/// The revisions to forget: all but the newest `keep` (by when they were recorded), except
/// those in `in_use`.
pub fn to_forget(entries: &[Entry], in_use: &BTreeSet<String>, keep: usize) -> Vec<String> {
    newest_first(entries)
        .into_iter()
        .skip(keep)
        .filter(|e| !in_use.contains(&e.revision))
        .map(|e| e.revision.clone())
        .collect()
}

/// The entry whose revision is `wanted` or starts with it (as git takes a short hash).
///
/// # Errors
/// A message naming the kept revisions when none matches, or the matches when several do.
pub fn find<'a>(entries: &'a [Entry], wanted: &str) -> Result<&'a Entry, String> {
    if let Some(exact) = entries.iter().find(|e| e.revision == wanted) {
        return Ok(exact);
    }
    let matches: Vec<&Entry> = (entries.iter())
        .filter(|e| !wanted.is_empty() && e.revision.starts_with(wanted))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => {
            let kept: Vec<&str> = entries.iter().map(|e| e.revision.as_str()).collect();
            Err(format!(
                "no kept revision {wanted:?} (kept: {})",
                if kept.is_empty() {
                    "none".to_owned()
                } else {
                    kept.join(", ")
                }
            ))
        }
        several => Err(format!(
            "{wanted:?} matches several revisions ({}); write more of it",
            several
                .iter()
                .map(|e| e.revision.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// How many lines of context a hunk of [`unified_diff`] shows around a change.
const CONTEXT: usize = 3;

/// Above this many line pairs the diff does not look for common lines: it shows the whole
/// old text removed and the new one added (a spec is at most 512 KiB, and the table below
/// is quadratic).
const MAX_CELLS: usize = 4_000_000;

/// The difference between two texts, line by line, as `diff -u` prints it: `---` and `+++`
/// headers with the labels, then hunks (`@@ -a,b +c,d @@`) of removed (`-`), added (`+`)
/// and context (` `) lines. Empty when the texts are the same.
pub fn unified_diff(old_label: &str, old: &str, new_label: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let ops = line_ops(&a, &b);
    if ops.iter().all(|op| matches!(op, Op::Same(..))) {
        return String::new();
    }
    let mut out = format!("--- {old_label}\n+++ {new_label}\n");
    // Group the operations into hunks: changes closer than 2 * CONTEXT share one.
    let changed: Vec<usize> = (ops.iter().enumerate())
        .filter(|(_, op)| !matches!(op, Op::Same(..)))
        .map(|(i, _)| i)
        .collect();
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for &i in &changed {
        match groups.last_mut() {
            Some((_, end)) if i <= *end + 2 * CONTEXT + 1 => *end = i,
            _ => groups.push((i, i)),
        }
    }
    for (first, last) in groups {
        let start = first.saturating_sub(CONTEXT);
        let end = (last + CONTEXT + 1).min(ops.len());
        let hunk = &ops[start..end];
        let (old_start, new_start) = position(&ops[..start]);
        let old_count = hunk.iter().filter(|op| !matches!(op, Op::Add(_))).count();
        let new_count = hunk
            .iter()
            .filter(|op| !matches!(op, Op::Remove(_)))
            .count();
        out.push_str(&format!(
            "@@ -{} +{} @@\n",
            range(old_start, old_count),
            range(new_start, new_count)
        ));
        for op in hunk {
            match op {
                Op::Same(line) => out.push_str(&format!(" {line}\n")),
                Op::Remove(line) => out.push_str(&format!("-{line}\n")),
                Op::Add(line) => out.push_str(&format!("+{line}\n")),
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op<'a> {
    Same(&'a str),
    Remove(&'a str),
    Add(&'a str),
}

/// The lines of each text before `ops`.
fn position(ops: &[Op<'_>]) -> (usize, usize) {
    let old = ops.iter().filter(|op| !matches!(op, Op::Add(_))).count();
    let new = ops.iter().filter(|op| !matches!(op, Op::Remove(_))).count();
    (old, new)
}

/// `start,count` as `diff -u` writes it: 1-based, and the line before for an empty range.
fn range(before: usize, count: usize) -> String {
    if count == 0 {
        format!("{before},0")
    } else {
        format!("{},{count}", before + 1)
    }
}

/// A shortest edit script from `a` to `b` by longest common subsequence.
fn line_ops<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<Op<'a>> {
    // Common lines at both ends are matched first; the table covers only the middle.
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = (a[prefix..].iter().rev())
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (ma, mb) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let mut ops: Vec<Op<'a>> = a[..prefix].iter().map(|l| Op::Same(l)).collect();
    let cells = (ma.len() + 1).saturating_mul(mb.len() + 1);
    if cells > MAX_CELLS {
        ops.extend(ma.iter().map(|l| Op::Remove(l)));
        ops.extend(mb.iter().map(|l| Op::Add(l)));
    } else {
        // lcs[i][j]: the longest common subsequence of ma[i..] and mb[j..].
        let width = mb.len() + 1;
        let mut lcs = vec![0u32; cells];
        for i in (0..ma.len()).rev() {
            for j in (0..mb.len()).rev() {
                lcs[i * width + j] = if ma[i] == mb[j] {
                    lcs[(i + 1) * width + j + 1] + 1
                } else {
                    lcs[(i + 1) * width + j].max(lcs[i * width + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < ma.len() && j < mb.len() {
            if ma[i] == mb[j] {
                ops.push(Op::Same(ma[i]));
                i += 1;
                j += 1;
            } else if lcs[(i + 1) * width + j] >= lcs[i * width + j + 1] {
                ops.push(Op::Remove(ma[i]));
                i += 1;
            } else {
                ops.push(Op::Add(mb[j]));
                j += 1;
            }
        }
        ops.extend(ma[i..].iter().map(|l| Op::Remove(l)));
        ops.extend(mb[j..].iter().map(|l| Op::Add(l)));
    }
    ops.extend(a[a.len() - suffix..].iter().map(|l| Op::Same(l)));
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Color, ColorStatus, Rejected, RevisionRecord, Rollout};

    fn entry(revision: &str, recorded_ms: u64) -> Entry {
        Entry {
            revision: revision.to_owned(),
            image: "books:1".to_owned(),
            spec_index: recorded_ms,
            recorded_ms,
            cause: cause_of(recorded_ms, None),
            spec: String::new(),
            rejected: None,
        }
    }

    #[test]
    fn the_same_text_has_no_diff() {
        assert_eq!(unified_diff("a", "x\ny\n", "b", "x\ny\n"), "");
        assert_eq!(unified_diff("a", "", "b", ""), "");
    }

    #[test]
    fn a_changed_line_shows_with_its_context() {
        let old = "apiVersion: v1\nkind: Service\nmetadata: {name: books}\nspec:\n  image: books:1\n  replicas: 3\n  port: 8080\n  health: {path: /h}\n  routes: []\n";
        let new = old.replace("books:1", "books:2");
        assert_eq!(
            unified_diff("books 1a2b", old, "books current", &new),
            "--- books 1a2b\n+++ books current\n@@ -2,7 +2,7 @@\n kind: Service\n metadata: \
             {name: books}\n spec:\n-  image: books:1\n+  image: books:2\n   replicas: 3\n   \
             port: 8080\n   health: {path: /h}\n"
        );
    }

    #[test]
    fn far_apart_changes_make_two_hunks_and_additions_count_right() {
        let old: String = (1..=20).map(|i| format!("l{i}\n")).collect();
        let new = old.replace("l2\n", "l2\nnew\n").replace("l19\n", "");
        assert_eq!(
            unified_diff("a", &old, "b", &new),
            "--- a\n+++ b\n@@ -1,5 +1,6 @@\n l1\n l2\n+new\n l3\n l4\n l5\n@@ -16,5 +17,4 @@\n \
             l16\n l17\n l18\n-l19\n l20\n"
        );
    }

    #[test]
    fn a_text_from_nothing_is_all_added() {
        assert_eq!(
            unified_diff("a", "", "b", "x\ny\n"),
            "--- a\n+++ b\n@@ -0,0 +1,2 @@\n+x\n+y\n"
        );
    }

    #[test]
    fn huge_texts_are_replaced_whole_rather_than_compared() {
        let old: String = (0..3000).map(|i| format!("a{i}\n")).collect();
        let new: String = (0..3000).map(|i| format!("b{i}\n")).collect();
        let diff = unified_diff("a", &old, "b", &new);
        assert_eq!(diff.lines().filter(|l| l.starts_with('-')).count(), 3001);
        assert_eq!(diff.lines().filter(|l| l.starts_with('+')).count(), 3001);
    }

    #[test]
    fn history_keeps_the_newest_and_whatever_is_in_use() {
        let entries: Vec<Entry> = (1..=13).map(|i| entry(&format!("r{i}"), i)).collect();
        let none = BTreeSet::new();
        assert_eq!(to_forget(&entries, &none, KEEP), ["r3", "r2", "r1"]);
        let in_use = BTreeSet::from(["r1".to_owned()]);
        assert_eq!(to_forget(&entries, &in_use, KEEP), ["r3", "r2"]);
        assert!(to_forget(&entries[..KEEP], &none, KEEP).is_empty());
    }

    #[test]
    fn revisions_are_found_by_a_unique_prefix() {
        let entries = vec![entry("abc123", 1), entry("abd456", 2)];
        assert_eq!(find(&entries, "abc").unwrap().revision, "abc123");
        assert_eq!(find(&entries, "abd456").unwrap().revision, "abd456");
        assert!(find(&entries, "ab").unwrap_err().contains("several"));
        assert!(find(&entries, "zz").unwrap_err().contains("abc123, abd456"));
        assert!(find(&entries, "").is_err());
    }

    #[test]
    fn the_cause_is_the_command_that_wrote_that_very_spec() {
        let cause = Cause {
            cause: "cutover rollback --to abc".to_owned(),
        };
        assert_eq!(cause_of(7, Some((&cause, 7))), "cutover rollback --to abc");
        assert_eq!(cause_of(9, Some((&cause, 7))), "spec change at index 9");
        assert_eq!(cause_of(9, None), "spec change at index 9");
    }

    #[test]
    fn outcomes_follow_the_status() {
        let color = |revision: &str| ColorStatus {
            image: String::new(),
            revision: revision.to_owned(),
            ready: 1,
            desired: 1,
        };
        let status = Status {
            phase: Some(Phase::Degraded),
            active_color: Some(Color::Blue),
            colors: [(Color::Blue, color("live"))].into(),
            rollout: Some(Rollout {
                revision: "new".to_owned(),
                color: Color::Green,
                started_ms: 0,
            }),
            rejected: Some(Rejected {
                revision: "bad".to_owned(),
                spec_index: 3,
                reason: "ProgressDeadlineExceeded".to_owned(),
                message: String::new(),
            }),
            revision_history: vec![RevisionRecord {
                revision: "old".to_owned(),
                image: String::new(),
                color: Color::Green,
                retired_at: Some("t".to_owned()),
            }],
            ..Status::default()
        };
        let outcome_of = |e: &Entry| outcome(e, Some(&status));
        assert_eq!(outcome_of(&entry("live", 1)), "serving");
        assert_eq!(outcome_of(&entry("new", 1)), "rolling out");
        assert_eq!(
            outcome_of(&entry("bad", 1)),
            "rejected: ProgressDeadlineExceeded"
        );
        assert_eq!(outcome_of(&entry("old", 1)), "retired");
        assert_eq!(outcome_of(&entry("gone", 1)), "superseded");
        let aborted = Entry {
            rejected: Some(Rejection {
                reason: "Aborted".to_owned(),
                message: String::new(),
            }),
            ..entry("gone", 1)
        };
        assert_eq!(outcome_of(&aborted), "rejected: Aborted");
        assert_eq!(outcome(&aborted, None), "rejected: Aborted");
        assert_eq!(
            in_use(&status),
            BTreeSet::from(["live".to_owned(), "new".to_owned(), "old".to_owned()])
        );
    }
}
