//! `cutover get [NAME]`: shows what KV holds.
//!
//! Without a name: a table of every service. With a name: the manifest exactly as stored
//! (byte for byte, comments included), because that is what the user wrote and what `apply`
//! compares against; `-o json` prints the parsed, normalized form with every default filled in.

use serde::Serialize;

use crate::spec::{Service, Strategy};
use crate::store::StoredService;

use super::{CliError, Context, OutputFormat, check_name, table};

const EXAMPLES: &str = "\
Examples:
  cutover get                 # a table of every service
  cutover get books           # books' manifest as stored
  cutover get books -o json   # parsed, with defaults filled in
  cutover get -o yaml         # every manifest, as stored, separated by ---";

/// Show services stored in KV.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// One service; all when omitted.
    pub name: Option<String>,
    /// Print the stored YAML, or JSON of the parsed manifest.
    #[arg(short, long, value_enum)]
    pub output: Option<OutputFormat>,
}

/// The JSON form of one stored service.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceJson<'a> {
    name: &'a str,
    key: &'a str,
    modify_index: u64,
    /// The parsed manifest, `null` when it is invalid.
    service: Option<&'a Service>,
    /// Why it is invalid, one line per problem.
    diagnostics: Vec<String>,
}

impl<'a> ServiceJson<'a> {
    fn new(stored: &'a StoredService) -> Self {
        let (service, diagnostics) = match &stored.parsed {
            Ok(service) => (Some(service), Vec::new()),
            Err(d) => (None, d.0.iter().map(|d| d.to_string()).collect()),
        };
        ServiceJson {
            name: &stored.name,
            key: &stored.key,
            modify_index: stored.modify_index,
            service,
            diagnostics,
        }
    }
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    let store = ctx.store()?;
    let services = match &args.name {
        Some(name) => {
            check_name(name)?;
            let stored = store
                .get_service(name)
                .await?
                .ok_or_else(|| CliError::NotFound {
                    name: name.clone(),
                    key: store.service_key(name),
                })?;
            vec![stored]
        }
        None => store.list_services().await?.0,
    };
    let one = args.name.is_some();
    match (args.output, one) {
        (Some(OutputFormat::Json), true) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&ServiceJson::new(&services[0]))?
            );
        }
        (Some(OutputFormat::Json), false) => {
            let all: Vec<ServiceJson> = services.iter().map(ServiceJson::new).collect();
            println!("{}", serde_json::to_string_pretty(&all)?);
        }
        (Some(OutputFormat::Yaml), _) | (None, true) => {
            let texts: Vec<&str> = services.iter().map(|s| s.text.as_str()).collect();
            print!("{}", join_documents(&texts));
        }
        (None, false) => {
            if services.is_empty() {
                eprintln!("no services under {}/services/", store.prefix());
                return Ok(());
            }
            let rows: Vec<Vec<String>> = services.iter().map(row).collect();
            print!(
                "{}",
                table::render(
                    &["NAME", "IMAGE", "REPLICAS", "STRATEGY", "ROUTES", "INDEX"],
                    &rows
                )
            );
            for stored in &services {
                if let Err(diagnostics) = &stored.parsed {
                    for diagnostic in &diagnostics.0 {
                        eprintln!("invalid: {diagnostic}");
                    }
                }
            }
        }
    }
    Ok(())
}

/// YAML documents one after another, each ending in a newline, separated by `---`.
fn join_documents(texts: &[&str]) -> String {
    let mut out = String::new();
    for (i, text) in texts.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(text);
        if !text.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

fn row(stored: &StoredService) -> Vec<String> {
    let index = stored.modify_index.to_string();
    match &stored.parsed {
        Ok(service) => vec![
            stored.name.clone(),
            service.spec.image.clone(),
            service.spec.replicas.to_string(),
            strategy_name(&service.spec.strategy).to_owned(),
            routes(service),
            index,
        ],
        Err(_) => vec![
            stored.name.clone(),
            "<invalid>".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
            index,
        ],
    }
}

pub fn strategy_name(strategy: &Strategy) -> &'static str {
    match strategy {
        Strategy::BlueGreen(_) => "blueGreen",
        Strategy::Recreate(_) => "recreate",
    }
}

/// Routes as `host/path` joined by commas, or `-`.
fn routes(service: &Service) -> String {
    let routes: Vec<String> = service
        .spec
        .routes
        .iter()
        .map(ToString::to_string)
        .collect();
    if routes.is_empty() {
        "-".to_owned()
    } else {
        routes.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_separated() {
        assert_eq!(join_documents(&[]), "");
        assert_eq!(join_documents(&["a: 1\n"]), "a: 1\n");
        assert_eq!(join_documents(&["a: 1", "b: 2\n"]), "a: 1\n---\nb: 2\n");
    }
}
