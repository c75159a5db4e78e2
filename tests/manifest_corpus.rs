//! The manifest corpus: every file in `tests/fixtures/invalid/` must fail with exactly the
//! diagnostics written in its `.expected` file, and every file in `tests/fixtures/valid/` must
//! parse.
//!
//! To rewrite the `.expected` files after a deliberate change of messages, run
//! `UPDATE_EXPECT=1 cargo test --test manifest_corpus`, then read the diff line by line: each
//! message must name the field, the line and column, and the fix.

use std::fs;
use std::path::{Path, PathBuf};

use cutover::spec::{Strategy, defaults, parse_service};

fn fixtures(folder: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(folder);
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    paths.sort();
    paths
}

/// The source name used in diagnostics: the path from the crate root, so that expected files
/// do not depend on where the repository is checked out.
fn source_of(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn every_invalid_fixture_fails_with_its_expected_diagnostics() {
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    let mut checked = 0;
    for path in fixtures("invalid") {
        match path.extension().and_then(|extension| extension.to_str()) {
            Some("yaml") => {}
            Some("expected") => {
                if !path.with_extension("yaml").exists() {
                    failures.push(format!("{}: no .yaml for this .expected", path.display()));
                }
                continue;
            }
            _ => {
                failures.push(format!("{}: unexpected file", path.display()));
                continue;
            }
        }
        checked += 1;
        let text = fs::read_to_string(&path).unwrap();
        let actual = match parse_service(&source_of(&path), &text) {
            Ok(_) => "(parsed without error)\n".to_owned(),
            Err(diagnostics) => format!("{diagnostics}\n"),
        };
        let expected_path = path.with_extension("expected");
        if update {
            fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        match fs::read_to_string(&expected_path) {
            Err(_) => failures.push(format!(
                "{}: no .expected file; run with UPDATE_EXPECT=1 and review it\nactual:\n{actual}",
                path.display()
            )),
            Ok(expected) if expected != actual => failures.push(format!(
                "{}:\nexpected:\n{expected}actual:\n{actual}",
                path.display()
            )),
            Ok(_) => {}
        }
    }
    assert!(checked >= 35, "only {checked} invalid fixtures");
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_valid_fixture_parses() {
    let mut checked = 0;
    for path in fixtures("valid") {
        let text = fs::read_to_string(&path).unwrap();
        if let Err(diagnostics) = parse_service(&source_of(&path), &text) {
            panic!("{diagnostics}");
        }
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} valid fixtures");
}

#[test]
fn the_minimal_manifest_gets_every_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/valid/minimal.yaml");
    let service = parse_service("minimal.yaml", &fs::read_to_string(path).unwrap()).unwrap();
    let spec = &service.spec;
    assert_eq!(service.name(), "minimal");
    assert!(service.metadata.labels.is_empty());
    assert_eq!(spec.image, "minimal:1");
    assert_eq!(spec.replicas, defaults::replicas());
    assert_eq!(spec.port, defaults::port());
    assert!(spec.env.is_empty() && spec.command.is_none() && spec.resources.is_empty());
    assert!(spec.routes.is_empty() && spec.side_targets.is_empty());
    assert_eq!(spec.health, Default::default());
    assert_eq!(spec.strategy, Strategy::default());
}
