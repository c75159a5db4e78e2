//! Loading manifests from files and directories, all validated together.
//!
//! A directory contributes every `*.yaml` and `*.yml` file directly inside it, sorted by name;
//! subdirectories are not searched. Each file holds one service. Everything is checked before
//! anything is returned, so a caller either gets every manifest valid or writes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::spec::{self, Diagnostic, Diagnostics, Service};

use super::CliError;

/// One valid manifest read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub path: PathBuf,
    /// The text exactly as in the file; this is what gets stored in KV.
    pub text: String,
    pub service: Service,
}

impl Manifest {
    pub fn name(&self) -> &str {
        self.service.name()
    }
}

/// Reads and validates every manifest named by `inputs` (files or directories).
///
/// # Errors
/// * [`CliError::Read`] when a path cannot be read;
/// * [`CliError::InvalidManifests`] with every problem found: invalid YAML or fields, a text
///   over Consul's value limit, two files defining the same service, or what
///   [`spec::check_set`] finds across all of them.
///
/// An empty directory is not an error here; callers that need a manifest check for that.
pub fn load_manifests(inputs: &[PathBuf]) -> Result<Vec<Manifest>, CliError> {
    let mut files = Vec::new();
    for input in inputs {
        for file in expand(input)? {
            if !files.contains(&file) {
                files.push(file);
            }
        }
    }

    let mut manifests = Vec::new();
    let mut problems = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| CliError::Read {
            path: path.clone(),
            source,
        })?;
        let source = path.display().to_string();
        if text.len() > spec::MAX_VALUE_BYTES {
            problems.push(problem(
                &source,
                format!(
                    "the file is {} bytes, more than Consul's limit of {} bytes per value",
                    text.len(),
                    spec::MAX_VALUE_BYTES
                ),
            ));
            continue;
        }
        match spec::parse_service(&source, &text) {
            Ok(service) => manifests.push(Manifest {
                path,
                text,
                service,
            }),
            Err(diagnostics) => problems.extend(diagnostics.0),
        }
    }

    let mut first_file: BTreeMap<&str, &Path> = BTreeMap::new();
    for manifest in &manifests {
        if let Some(first) = first_file.insert(manifest.name(), &manifest.path) {
            problems.push(problem(
                &manifest.path.display().to_string(),
                format!(
                    "service {} is also defined in {}; each service must be in one file",
                    manifest.name(),
                    first.display()
                ),
            ));
        }
    }

    let sources: Vec<String> = manifests
        .iter()
        .map(|m| m.path.display().to_string())
        .collect();
    let set: Vec<(&str, &Service)> = sources
        .iter()
        .zip(&manifests)
        .map(|(source, m)| (source.as_str(), &m.service))
        .collect();
    problems.extend(spec::check_set(&set).0);

    if problems.is_empty() {
        Ok(manifests)
    } else {
        Err(CliError::InvalidManifests {
            diagnostics: Diagnostics(problems),
        })
    }
}

/// A file as itself, a directory as its manifest files sorted by name.
fn expand(input: &Path) -> Result<Vec<PathBuf>, CliError> {
    let read_error = |source| CliError::Read {
        path: input.to_owned(),
        source,
    };
    if !input.is_dir() {
        // Reading it later reports a missing file with its path.
        return Ok(vec![input.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(input).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        if path.is_file() && is_manifest_file(&path) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn is_manifest_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

fn problem(source: &str, message: String) -> Diagnostic {
    Diagnostic {
        source: source.to_owned(),
        line: 0,
        column: 0,
        path: String::new(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_files_by_extension() {
        let cases = [
            ("books.yaml", true),
            ("books.yml", true),
            ("books.YAML", false),
            ("books.json", false),
            ("README.md", false),
            ("yaml", false),
        ];
        for (name, expected) in cases {
            assert_eq!(is_manifest_file(Path::new(name)), expected, "{name}");
        }
    }
}
