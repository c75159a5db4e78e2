//! `cutover plan [NAME] | -f PATH...`: what the daemon would do next, without doing it.
//!
//! The only command besides `run` that talks to Docker: it reads the containers, the stored
//! status and request, the route table and the proxies' reports, probes each replica once,
//! and calls the same [`observe`] path and planner as the daemon's reconcile. It prints the
//! steps in the words of the daemon's step log and the phase and condition the status would
//! say. Exit 0: nothing would change; 2: something would (as `terraform plan
//! -detailed-exitcode`); 1: an error.
//!
//! Caveats: readiness is one probe per replica where the daemon wants `healthyThreshold`
//! in a row; a stop the daemon runs in the background shows as a step still to take; the
//! `--allow-*` flags must be given as the daemon was started.

use std::path::PathBuf;

use serde::Serialize;

use super::manifests::load_manifests;
use super::run::AllowArgs;
use super::{CliError, Context, Exit, check_name};
use crate::docker::{Docker, Scope};
use crate::fleet::Fleet;
use crate::observe;
use crate::plan::{Deletion, Plan};
use crate::status::{Condition, Status, now_ms};
use crate::store::{Folder, Store, StoredService, folder_prefix};

const EXAMPLES: &str = "\
Examples:
  cutover plan                      # every service in KV
  cutover plan books -o json
  cutover plan -f books.yaml        # as if books.yaml were applied now
  cutover plan -f manifests/ && echo 'nothing to do'

Exit status: 0 nothing would change, 2 something would, 1 an error.";

/// Show what the daemon would do next for the specs in KV, or for manifests as if they were
/// applied, without doing anything (reads Docker, Consul and the proxies' reports).
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// One service [default: every service with a spec in KV].
    #[arg(conflicts_with = "file")]
    pub name: Option<String>,
    /// Manifest files or directories to plan as if applied now.
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Vec<PathBuf>,
    /// The daemon's `--network` (replicas' addresses are read on it).
    #[arg(long, env = "CUTOVER_NETWORK", default_value = crate::docker::DEFAULT_NETWORK)]
    pub network: String,
    /// The daemon's `--instance` [default: the prefix].
    #[arg(long, env = "CUTOVER_INSTANCE")]
    pub instance: Option<String>,
    #[command(flatten)]
    pub allow: AllowArgs,
    /// Print JSON.
    #[arg(short = 'o', long, value_name = "FORMAT", value_parser = ["json"])]
    pub output: Option<String>,
}

/// The plan of one service, as printed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePlan {
    pub name: String,
    /// The spec index planned for (for `-f`, a change not applied yet counts as the next).
    pub spec_index: u64,
    /// In the words of the daemon's step log.
    pub steps: Vec<String>,
    /// The phase the status would say, if the plan says one.
    pub phase: Option<String>,
    /// The condition that explains the phase: `Degraded` when true, else `Progressing`.
    pub condition: Option<Condition>,
    pub warnings: Vec<String>,
}

impl ServicePlan {
    /// `before` is the stored status, which stands when the plan changes none.
    fn from_plan(name: &str, spec_index: u64, plan: &Plan, before: Option<&Status>) -> ServicePlan {
        let status = plan.status.as_ref().or(before);
        let condition = status.and_then(|s| {
            (s.condition("Degraded").filter(|c| c.status == "True"))
                .or_else(|| s.condition("Progressing"))
                .cloned()
        });
        ServicePlan {
            name: name.to_owned(),
            spec_index,
            steps: plan.steps.iter().map(ToString::to_string).collect(),
            phase: status.and_then(|s| s.phase).map(|p| p.to_string()),
            condition,
            warnings: plan.warnings.clone(),
        }
    }
}

pub async fn run(ctx: &Context, args: Args) -> Result<Exit, CliError> {
    let store = ctx.store()?;
    let specs = desired_specs(&store, &args).await?;
    let docker = Docker::connect()
        .await
        .map_err(|e| CliError::DockerUnreachable {
            source: Box::new(e),
        })?;
    docker
        .ping()
        .await
        .map_err(|e| CliError::DockerUnreachable {
            source: Box::new(e),
        })?;
    let docker = docker.with_allowances(args.allow.allowances());
    let scope = Scope {
        instance: (args.instance.clone()).unwrap_or_else(|| store.prefix().replace('/', "-")),
        network: args.network.clone(),
    };
    let fleet = read_fleet(&store).await?;
    let refused = store.get_refused_deletion().await?;
    let confirmation = store.get_prune_confirmation().await?;
    let mut plans = Vec::new();
    for stored in &specs {
        let name = stored.name.as_str();
        let service = stored.parsed.as_ref().ok();
        let mut reading = observe::read(&docker, &store, &scope, name, service, None).await?;
        if let Some(service) = service {
            crate::health::probe_once(
                name,
                &service.spec.health,
                service.spec.port,
                &mut reading.observed.containers,
                &reading.docker_health,
            )
            .await;
        }
        let proxy = fleet.view(name);
        let refused = (refused.as_ref())
            .filter(|r| r.services.iter().any(|s| s == name))
            .map(|r| r.message.as_str());
        let context = observe::Context {
            name,
            desired: observe::desired(Some(stored)),
            policy: crate::plan::Policy {
                allowances: args.allow.allowances(),
                ..crate::plan::Policy::default()
            },
            deletion: Deletion {
                refused,
                confirmed: (confirmation.as_ref())
                    .is_some_and(|c| c.value.confirms(name, now_ms())),
            },
            proxy: proxy.as_ref(),
            now_ms: now_ms(),
        };
        let plan = observe::plan(&docker, &mut reading, &context).await?;
        plans.push(ServicePlan::from_plan(
            name,
            stored.modify_index,
            &plan,
            reading.status.as_ref(),
        ));
    }
    if args.output.is_some() {
        println!("{}", serde_json::to_string_pretty(&plans)?);
    } else {
        print!("{}", render(&plans));
    }
    if plans.iter().any(|p| !p.steps.is_empty()) {
        Ok(Exit::Changes)
    } else {
        Ok(Exit::Success)
    }
}

/// The specs to plan for: the manifests given with `-f` (each with the index it would have
/// once applied: the stored one if the text is the same, as `cutover apply` then writes
/// nothing, else the next), or the one named, or every spec in KV.
async fn desired_specs(store: &Store, args: &Args) -> Result<Vec<StoredService>, CliError> {
    if !args.file.is_empty() {
        let manifests = load_manifests(&args.file)?;
        let mut specs = Vec::new();
        for manifest in manifests {
            let name = manifest.name().to_owned();
            let current = store.get_service(&name).await?;
            let index = match current {
                Some(c) if c.text == manifest.text => c.modify_index,
                Some(c) => c.modify_index.saturating_add(1),
                None => 1,
            };
            specs.push(StoredService {
                key: store.service_key(&name),
                name,
                modify_index: index,
                text: manifest.text,
                parsed: Ok(manifest.service),
            });
        }
        return Ok(specs);
    }
    match &args.name {
        Some(name) => {
            check_name(name)?;
            let stored = super::existing_spec(store, name).await?;
            report_invalid(&stored);
            Ok(vec![stored])
        }
        None => {
            let (specs, _) = store.list_services().await?;
            specs.iter().for_each(report_invalid);
            Ok(specs)
        }
    }
}

/// An invalid spec in KV is planned like the daemon does (no steps, phase `Invalid`); its
/// diagnostics are printed to stderr first, located in the key.
fn report_invalid(stored: &StoredService) {
    if let Err(diagnostics) = &stored.parsed {
        for diagnostic in &diagnostics.0 {
            eprintln!("{diagnostic}");
        }
    }
}

/// The route table and the live proxies' reports, as the leader knows them.
async fn read_fleet(store: &Store) -> Result<Fleet, CliError> {
    let routes = store
        .client()
        .list(&folder_prefix(store.prefix(), Folder::Routes))
        .await?;
    let (table, _) = store.routes_from_entries(&routes.entries);
    let mut fleet = Fleet {
        proxies: store.list_reports().await?,
        ..Fleet::default()
    };
    fleet.set_table(table);
    Ok(fleet)
}

/// The plans for a terminal: per service its steps, then the phase and condition.
pub fn render(plans: &[ServicePlan]) -> String {
    let mut out = String::new();
    if plans.is_empty() {
        out.push_str("no services\n");
    }
    for plan in plans {
        let count = match plan.steps.len() {
            0 => "no changes".to_owned(),
            1 => "1 step".to_owned(),
            n => format!("{n} steps"),
        };
        out.push_str(&format!(
            "{} (spec index {}): {count}\n",
            plan.name, plan.spec_index
        ));
        for step in &plan.steps {
            out.push_str(&format!("  {step}\n"));
        }
        if let Some(phase) = &plan.phase {
            out.push_str(&format!("  phase: {phase}"));
            if let Some(c) = &plan.condition {
                out.push_str(&format!(" ({} {}: {})", c.kind, c.reason, c.message));
            }
            out.push('\n');
        }
        for warning in &plan.warnings {
            out.push_str(&format!("  warning: {warning}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(kind: &str, reason: &str, message: &str) -> Condition {
        Condition {
            kind: kind.to_owned(),
            status: "True".to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            last_transition_time: String::new(),
        }
    }

    #[test]
    fn a_plan_reads_like_the_step_log() {
        let plans = vec![
            ServicePlan {
                name: "books".to_owned(),
                spec_index: 12,
                steps: vec!["create blue replica 2 (revision abc)".to_owned()],
                phase: Some("Progressing".to_owned()),
                condition: Some(condition("Progressing", "Scaling", "1 of 2 ready")),
                warnings: vec![],
            },
            ServicePlan {
                name: "web".to_owned(),
                spec_index: 3,
                steps: vec![],
                phase: None,
                condition: None,
                warnings: vec!["orphans".to_owned()],
            },
        ];
        assert_eq!(
            render(&plans),
            "books (spec index 12): 1 step\n  create blue replica 2 (revision abc)\n  \
             phase: Progressing (Progressing Scaling: 1 of 2 ready)\n\
             web (spec index 3): no changes\n  warning: orphans\n"
        );
    }
}
