//! `cutover get [NAME]`: shows what KV holds.
//!
//! Without a name: a table of every service. With a name: the manifest exactly as stored
//! (byte for byte, comments included), because that is what the user wrote and what `apply`
//! compares against. `-o yaml` and `-o json` print the same object, shaped like kubectl's:
//! the manifest with every default filled in (one service), or `{"apiVersion": "v1", "kind":
//! "List", "items": [...]}`; an invalid manifest is an item with only its name and its
//! errors. `-o name` prints `service/NAME` lines, `-o wide` a table with more columns, and
//! `-w` prints the table again on every change (Consul blocking queries, no polling).

use serde::Serialize;

use crate::spec::{Service, Strategy};
use crate::store::StoredService;

use super::{CliError, Context, check_name, table};

const EXAMPLES: &str = "\
Examples:
  cutover get                 # a table of every service
  cutover get books           # books' manifest as stored
  cutover get books -o json   # the manifest with its defaults filled in: jq .spec.replicas
  cutover get -o yaml         # every manifest, as a List
  cutover get -o name         # service/books, one per line
  cutover get -w              # the table again on every change (Ctrl-C to stop)";

/// What `get -o` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GetFormat {
    Yaml,
    Json,
    Name,
    Wide,
}

/// Show services stored in KV.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// One service; all when omitted.
    pub name: Option<String>,
    /// yaml or json: the manifest object (a List for several); name: service/NAME; wide: a
    /// table with more columns.
    #[arg(short, long, value_enum)]
    pub output: Option<GetFormat>,
    /// After printing, print again on every change of the specs, until interrupted.
    #[arg(short, long)]
    pub watch: bool,
}

/// One service as `-o yaml|json` prints it: the normalized manifest, or for an invalid one
/// its name and why.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Item<'a> {
    Valid(&'a Service),
    Invalid {
        #[serde(rename = "apiVersion")]
        api_version: &'static str,
        kind: &'static str,
        metadata: InvalidMetadata<'a>,
        /// One line per problem, as `cutover validate` prints them.
        errors: Vec<String>,
    },
}

#[derive(Debug, Serialize)]
struct InvalidMetadata<'a> {
    name: &'a str,
}

impl<'a> Item<'a> {
    fn new(stored: &'a StoredService) -> Self {
        match &stored.parsed {
            Ok(service) => Item::Valid(service),
            Err(d) => Item::Invalid {
                api_version: crate::spec::API_VERSION,
                kind: "Service",
                metadata: InvalidMetadata { name: &stored.name },
                errors: d.0.iter().map(|d| d.to_string()).collect(),
            },
        }
    }
}

/// kubectl's list object.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct List<'a> {
    api_version: &'static str,
    kind: &'static str,
    items: Vec<Item<'a>>,
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    let store = ctx.store()?;
    if let Some(name) = &args.name {
        check_name(name)?;
    }
    let watched = format!("{}/services/", store.prefix());
    let mut index = 0;
    loop {
        let services = match &args.name {
            Some(name) => {
                vec![super::existing_spec(&store, name).await?]
            }
            None => store.list_services().await?.0,
        };
        print!("{}", render(&services, args.name.is_some(), args.output)?);
        for stored in &services {
            if let (Err(diagnostics), None | Some(GetFormat::Wide | GetFormat::Name)) =
                (&stored.parsed, args.output)
            {
                for diagnostic in &diagnostics.0 {
                    eprintln!("invalid: {diagnostic}");
                }
            }
        }
        if services.is_empty() && args.output.is_none() {
            eprintln!("no services under {}/services/", store.prefix());
        }
        if !args.watch {
            return Ok(());
        }
        super::wait_for_change(&store, &watched, &mut index).await?;
        println!();
    }
}

/// What `get` prints for `services` (`one`: a name was given).
fn render(
    services: &[StoredService],
    one: bool,
    output: Option<GetFormat>,
) -> Result<String, CliError> {
    // Serialized as they are (not through a JSON value), so fields keep the manifest's order.
    fn print<T: Serialize>(value: &T, format: GetFormat) -> Result<String, CliError> {
        Ok(match format {
            GetFormat::Json => format!("{}\n", serde_json::to_string_pretty(value)?),
            _ => serde_yaml::to_string(value).unwrap_or_default(),
        })
    }
    let object = |format: GetFormat| match services.first() {
        Some(stored) if one => print(&Item::new(stored), format),
        _ => print(
            &List {
                api_version: "v1",
                kind: "List",
                items: services.iter().map(Item::new).collect(),
            },
            format,
        ),
    };
    Ok(match output {
        Some(format @ (GetFormat::Json | GetFormat::Yaml)) => object(format)?,
        Some(GetFormat::Name) => services
            .iter()
            .map(|s| format!("service/{}\n", s.name))
            .collect(),
        None if one => {
            let texts: Vec<&str> = services.iter().map(|s| s.text.as_str()).collect();
            join_documents(&texts)
        }
        None if services.is_empty() => String::new(),
        None => table::render(&HEADERS, &services.iter().map(row).collect::<Vec<_>>()),
        Some(GetFormat::Wide) => table::render(
            &WIDE_HEADERS,
            &services.iter().map(wide_row).collect::<Vec<_>>(),
        ),
    })
}

const HEADERS: [&str; 6] = ["NAME", "IMAGE", "REPLICAS", "STRATEGY", "ROUTES", "INDEX"];
const WIDE_HEADERS: [&str; 9] = [
    "NAME",
    "IMAGE",
    "REPLICAS",
    "STRATEGY",
    "AUTOPROMOTE",
    "ROUTES",
    "PORT",
    "HEALTH",
    "INDEX",
];

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

/// `row` with the strategy's promotion, the port and the health path.
fn wide_row(stored: &StoredService) -> Vec<String> {
    let mut cells = row(stored);
    let index = cells.pop().unwrap_or_default();
    let routes = cells.pop().unwrap_or_default();
    match &stored.parsed {
        Ok(service) => {
            let auto = match &service.spec.strategy {
                Strategy::BlueGreen(b) => b.auto_promote.to_string(),
                // A canary starts its steps by itself; `promote` skips what is left of them.
                Strategy::Canary(c) => format!("canary ({} steps)", c.steps.len()),
                Strategy::Recreate(_) => "-".to_owned(),
            };
            cells.extend([
                auto,
                routes,
                service.spec.port.to_string(),
                service.spec.health.path.clone(),
            ]);
        }
        Err(_) => cells.extend(["-".to_owned(), routes, "-".to_owned(), "-".to_owned()]),
    }
    cells.push(index);
    cells
}

pub fn strategy_name(strategy: &Strategy) -> &'static str {
    strategy.name()
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
