//! `cutover scale NAME 5|+2|-1`: changes a service's replica count in KV.
//!
//! A read-modify-write through the [`cas`](super::cas) loop, so concurrent scales never lose an
//! update: twenty `scale books +1` at once end at exactly +20. The new manifest is written as
//! [`Service::to_yaml`]: every field survives (with defaults written out), comments and
//! formatting do not.

use std::fmt;
use std::str::FromStr;

use crate::spec::{self, Service};

use super::cas::{Decision, RetryPolicy, update_service};
use super::{CliError, Context, check_name};

const EXAMPLES: &str = "\
Examples:
  cutover scale books 5    # exactly 5 replicas
  cutover scale books +2   # 2 more
  cutover scale books -1   # 1 fewer (never below 0)";

/// Set or change a service's replica count.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    pub name: String,
    /// A count (5), or a change (+2, -1).
    #[arg(allow_hyphen_values = true, value_name = "N|+N|-N")]
    pub replicas: ScaleChange,
}

/// A replica count or a relative change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleChange {
    To(u32),
    By(i64),
}

impl FromStr for ScaleChange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || format!("{text:?} is not a replica count: write 5, +2 or -1");
        let digits_only = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if let Some(rest) = text.strip_prefix('+').filter(|r| digits_only(r)) {
            rest.parse().map(ScaleChange::By).map_err(|_| invalid())
        } else if let Some(rest) = text.strip_prefix('-').filter(|r| digits_only(r)) {
            rest.parse::<i64>()
                .map(|n| ScaleChange::By(-n))
                .map_err(|_| invalid())
        } else if digits_only(text) {
            text.parse().map(ScaleChange::To).map_err(|_| invalid())
        } else {
            Err(invalid())
        }
    }
}

/// The result of applying a [`ScaleChange`] to a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scaled {
    pub from: u32,
    pub to: u32,
    /// The change would have gone below 0 (or above `u32::MAX`) and was clamped.
    pub clamped: bool,
}

impl fmt::Display for Scaled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.from, self.to)?;
        if self.clamped {
            write!(f, " (clamped: replicas cannot go below 0)")?;
        }
        Ok(())
    }
}

/// Applies a change to a replica count, clamping at 0.
pub fn scale(from: u32, change: ScaleChange) -> Scaled {
    let wanted = match change {
        ScaleChange::To(n) => i64::from(n),
        ScaleChange::By(delta) => i64::from(from).saturating_add(delta),
    };
    let to = wanted.clamp(0, i64::from(u32::MAX)) as u32;
    Scaled {
        from,
        to,
        clamped: i64::from(to) != wanted,
    }
}

/// The manifest with `replicas` changed, as YAML, re-validated.
pub fn scaled_manifest(service: &Service, key: &str, to: u32) -> Result<String, CliError> {
    let mut service = service.clone();
    service.spec.replicas = to;
    let text = service.to_yaml();
    spec::parse_service(key, &text)
        .map_err(|diagnostics| CliError::InvalidManifests { diagnostics })?;
    Ok(text)
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    check_name(&args.name)?;
    let store = ctx.store()?;
    let mut result = None;
    update_service(&store, &args.name, RetryPolicy::SCALE, |current| {
        let stored = current.ok_or_else(|| CliError::NotFound {
            name: args.name.clone(),
            key: store.service_key(&args.name),
        })?;
        let service = stored
            .parsed
            .as_ref()
            .map_err(|diagnostics| CliError::InvalidInStore {
                key: stored.key.clone(),
                first: diagnostics
                    .0
                    .first()
                    .map(|d| d.to_string())
                    .unwrap_or_default(),
            })?;
        let scaled = scale(service.spec.replicas, args.replicas);
        result = Some(scaled);
        if scaled.to == scaled.from {
            Ok(Decision::Keep)
        } else {
            scaled_manifest(service, &stored.key, scaled.to).map(Decision::Write)
        }
    })
    .await?;
    let scaled = result.expect("the decision ran at least once");
    println!("{}: {scaled}", args.name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_changes() {
        let cases = [
            ("5", Ok(ScaleChange::To(5))),
            ("0", Ok(ScaleChange::To(0))),
            ("+2", Ok(ScaleChange::By(2))),
            ("-1", Ok(ScaleChange::By(-1))),
            ("+0", Ok(ScaleChange::By(0))),
            ("", Err(())),
            ("+", Err(())),
            ("-", Err(())),
            ("1.5", Err(())),
            ("+-1", Err(())),
            ("five", Err(())),
            ("99999999999", Err(())),
        ];
        for (text, expected) in cases {
            assert_eq!(
                text.parse::<ScaleChange>().map_err(|_| ()),
                expected,
                "{text:?}"
            );
        }
    }

    #[test]
    fn scaling() {
        let cases = [
            (3, ScaleChange::To(5), 5, false),
            (3, ScaleChange::By(2), 5, false),
            (3, ScaleChange::By(-1), 2, false),
            (1, ScaleChange::By(-3), 0, true),
            (0, ScaleChange::By(-1), 0, true),
            (u32::MAX, ScaleChange::By(1), u32::MAX, true),
            (4, ScaleChange::To(4), 4, false),
        ];
        for (from, change, to, clamped) in cases {
            assert_eq!(
                scale(from, change),
                Scaled { from, to, clamped },
                "{from} {change:?}"
            );
        }
        assert_eq!(
            scale(1, ScaleChange::By(-3)).to_string(),
            "1 -> 0 (clamped: replicas cannot go below 0)"
        );
    }

    /// A manifest that sets every field to a value other than its default.
    const EVERY_FIELD: &str = r#"
apiVersion: cutover.dev/v1
kind: Service
metadata:
  name: books
  labels: {team: shelf, tier: web}
spec:
  image: books:1.4.2
  imagePullPolicy: Always
  replicas: 3
  port: 8080
  env: {LOG: debug, DB: "postgres://db/books"}
  command: [/bin/books, --serve]
  resources: {memory: 256Mi, cpus: 0.5}
  health:
    path: /healthz
    interval: 2s
    timeout: 1s
    healthyThreshold: 2
    unhealthyThreshold: 5
    startPeriod: 10s
  routes:
    - pathPrefix: /books
    - host: books.example.com
      pathPrefix: /api
  strategy:
    blueGreen:
      autoPromote: false
      previewReplicas: 1
      scaleDownDelay: 30s
      progressDeadline: 5m
      revisionHistoryLimit: 4
  sideTargets:
    - name: db
      image: postgres:15
      env: {POSTGRES_PASSWORD: secret}
      command: [postgres, -c, fsync=off]
      volumes: ["books-db:/var/lib/postgresql/data"]
"#;

    #[test]
    fn scaling_keeps_every_field() {
        let key = "cutover/services/books";
        let before = spec::parse_service(key, EVERY_FIELD).unwrap();
        let text = scaled_manifest(&before, key, 7).unwrap();
        let after = spec::parse_service(key, &text).unwrap();
        let mut expected = before.clone();
        expected.spec.replicas = 7;
        assert_eq!(after, expected);
    }

    #[test]
    fn scaling_keeps_the_recreate_strategy() {
        let key = "cutover/services/books";
        let text = "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {name: books}\nspec: {image: 'books:1', strategy: {recreate: {}}}\n";
        let before = spec::parse_service(key, text).unwrap();
        let after = spec::parse_service(key, &scaled_manifest(&before, key, 2).unwrap()).unwrap();
        assert_eq!(after.spec.strategy, before.spec.strategy);
        assert_eq!(after.spec.replicas, 2);
    }
}
