//! `cutover status [NAME]`: what the daemon last reported, read from `<prefix>/status/<name>`.
//!
//! The CLI never invents a status: a service with a spec but no status key is reported as
//! such. Fetching ([`fetch_reports`]) is separate from rendering ([`render_table`],
//! [`render_details`]) so that a `--wait` can fetch in a loop (or on a blocking query) and
//! render once.
//!
//! A status that does not decode is shown as phase `Unknown` with its key and the decode
//! error, next to the others; the command then exits 1 (after printing everything).

use std::collections::BTreeMap;

use crate::status::{Phase, Status};
use crate::store::{Store, Stored, StoredService, Unreadable};

use super::{CliError, Context, OutputFormat, check_name, table};

const EXAMPLES: &str = "\
Examples:
  cutover status               # every service
  cutover status books         # one service, with conditions and recent events
  cutover status books -o json # the status key as the daemon wrote it
  cutover status books --wait --for preview   # until the new color is ready to promote
  cutover status -w            # the table again on every change (Ctrl-C to stop)

Exit code: 0; 1 when a status key does not decode (every service is still printed, that one
as phase Unknown with its key and error), or when --wait sees the rollout fail or time out.";

/// How many events `status NAME` shows, newest last.
const SHOWN_EVENTS: usize = 5;

/// Show what the daemon reported about services.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// One service; all when omitted.
    pub name: Option<String>,
    /// Print the status as the daemon wrote it (null where there is none).
    #[arg(short, long, value_enum)]
    pub output: Option<OutputFormat>,
    /// Wait until the daemon made the current spec Available (exit 0) or gave up on it
    /// (exit 1): invalid, rejected, or its image cannot be had. Without NAME, every service
    /// with a spec, with its progress on stderr (one line, rewritten in place on a terminal;
    /// a new line at each change otherwise or with -o). An unreadable status is waited
    /// past: the daemon rebuilds it.
    #[arg(long)]
    pub wait: bool,
    /// What --wait waits for: `available` (the current spec serves on the live route) or
    /// `preview` (its new color is ready on the preview route, waiting for `cutover
    /// promote`; a spec that went straight to Available counts too).
    #[arg(
        long = "for",
        value_enum,
        default_value = "available",
        requires = "wait"
    )]
    pub wait_for: WaitFor,
    /// After printing, print again on every change of the statuses, until interrupted.
    #[arg(short, long, conflicts_with = "wait")]
    pub watch: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "5m", value_parser = super::parse_duration)]
    pub timeout: std::time::Duration,
}

/// What `status --wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WaitFor {
    Available,
    Preview,
}

/// A service's spec (if any) next to its status (if any, readable or not).
#[derive(Debug, Clone)]
pub struct Report {
    pub name: String,
    pub spec: Option<StoredService>,
    pub status: Option<Stored<Status>>,
}

impl Report {
    /// The status, if there is one and it decoded.
    pub fn readable_status(&self) -> Option<&Status> {
        self.status.as_ref()?.readable().map(|v| &v.value)
    }

    /// Why the status did not decode, if it did not.
    pub fn unreadable_status(&self) -> Option<&Unreadable> {
        self.status.as_ref()?.unreadable()
    }

    /// The line printed for a service whose status does not decode.
    pub fn unreadable_message(&self, bad: &Unreadable) -> String {
        let fix = if self.spec.is_some() {
            "cutover run rebuilds it on its next reconcile"
        } else {
            "the spec is deleted: cutover run removes the key with the service's containers \
             (delete it by hand if there are none)"
        };
        format!("{}: {bad}; {fix}", self.name)
    }

    /// The line printed for a service the daemon has not reported on.
    pub fn no_status_message(&self) -> String {
        format!(
            "no status yet: the daemon has not reported on {} (is cutover run running?)",
            self.name
        )
    }
}

/// Reads the spec and status of one service, or of every service that has either.
///
/// # Errors
/// [`CliError::NotFound`] when a named service has neither a spec nor a status.
pub async fn fetch_reports(store: &Store, name: Option<&str>) -> Result<Vec<Report>, CliError> {
    if let Some(name) = name {
        let spec = store.get_service(name).await?;
        let status = store.get_status(name).await?;
        if spec.is_none() && status.is_none() {
            return Err(CliError::NotFound {
                name: name.to_owned(),
                key: store.service_key(name),
            });
        }
        return Ok(vec![Report {
            name: name.to_owned(),
            spec,
            status,
        }]);
    }
    let (specs, _) = store.list_services().await?;
    let statuses = store.list_statuses().await?;
    let mut reports: BTreeMap<String, Report> = BTreeMap::new();
    for spec in specs {
        reports.insert(
            spec.name.clone(),
            Report {
                name: spec.name.clone(),
                spec: Some(spec),
                status: None,
            },
        );
    }
    for (name, status) in statuses {
        reports
            .entry(name.clone())
            .or_insert_with(|| Report {
                name,
                spec: None,
                status: None,
            })
            .status = Some(status);
    }
    Ok(reports.into_values().collect())
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), CliError> {
    if let Some(name) = &args.name {
        check_name(name)?;
    }
    let store = ctx.store()?;
    match (args.wait, &args.name) {
        (true, Some(name)) => wait_for_outcome(&store, name, args.wait_for, args.timeout).await?,
        (true, None) => {
            use std::io::IsTerminal as _;
            let live = args.output.is_none() && std::io::stderr().is_terminal();
            wait_for_all(&store, args.wait_for, args.timeout, live).await?;
        }
        (false, _) => {}
    }
    let watched = format!("{}/status/", store.prefix());
    let mut index = 0;
    let reports = loop {
        let reports = fetch_reports(&store, args.name.as_deref()).await?;
        match args.output {
            Some(format) => print_machine_readable(&reports, args.name.is_some(), format)?,
            None if args.name.is_some() => print!("{}", render_details(&reports[0])),
            None if reports.is_empty() => {
                eprintln!("no services under {}/services/", store.prefix());
            }
            None => {
                print!("{}", render_table(&reports));
                let proxies = crate::http::read_proxies(&store).await?;
                print!("{}", render_proxies(&proxies));
            }
        }
        if !args.watch {
            break reports;
        }
        super::wait_for_change(&store, &watched, &mut index).await?;
        println!();
    };
    let details: Vec<String> = reports
        .iter()
        .filter_map(Report::unreadable_status)
        .map(ToString::to_string)
        .collect();
    if details.is_empty() {
        Ok(())
    } else {
        Err(CliError::UnreadableStatuses { details })
    }
}

fn print_machine_readable(
    reports: &[Report],
    one: bool,
    format: OutputFormat,
) -> Result<(), CliError> {
    // An unreadable status prints as null; the error after the output names it.
    let value = if one {
        serde_json::to_value(reports[0].readable_status())?
    } else {
        let all: BTreeMap<&str, Option<&Status>> = reports
            .iter()
            .map(|r| (r.name.as_str(), r.readable_status()))
            .collect();
        serde_json::to_value(all)?
    };
    for report in reports.iter().filter(|r| r.status.is_none()) {
        eprintln!("{}", report.no_status_message());
    }
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&value)?),
        OutputFormat::Yaml => print!(
            "{}",
            serde_yaml::to_string(&value).expect("JSON values always serialize as YAML")
        ),
    }
    Ok(())
}

const HEADERS: [&str; 7] = [
    "NAME",
    "PHASE",
    "ACTIVE",
    "PREVIEW",
    "READY/DESIRED",
    "IMAGE",
    "INDEX",
];

/// A table of the services that have a status (`Unknown` where it does not decode),
/// followed by one line per service without one and per status that does not decode.
pub fn render_table(reports: &[Report]) -> String {
    let rows: Vec<Vec<String>> = reports.iter().filter_map(row).collect();
    let mut out = String::new();
    if !rows.is_empty() {
        out.push_str(&table::render(&HEADERS, &rows));
    }
    for report in reports {
        let line = match &report.status {
            None => report.no_status_message(),
            Some(Stored::Unreadable(bad)) => report.unreadable_message(bad),
            Some(Stored::Readable(_)) => continue,
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The live proxies: the route table versions each serves, how far behind, and the servers
/// its HAProxy's checks see UP and DOWN.
pub fn render_proxies(proxies: &[crate::fleet::ProxyRow]) -> String {
    if proxies.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = proxies
        .iter()
        .map(|p| {
            vec![
                p.id.clone(),
                p.node.clone(),
                if p.listener.is_empty() {
                    "-".to_owned()
                } else {
                    p.listener.clone()
                },
                p.current.to_string(),
                if p.behind.is_empty() {
                    "-".to_owned()
                } else {
                    p.behind.join(",")
                },
                p.lag_ms
                    .map_or_else(|| "-".to_owned(), |ms| format!("{ms}ms")),
                format!("{}/{}", p.servers_up, p.servers_down),
            ]
        })
        .collect();
    let headers = [
        "PROXY", "NODE", "LISTENER", "CURRENT", "BEHIND", "LAG", "UP/DOWN",
    ];
    format!("\n{}", table::render(&headers, &rows))
}

/// One service: its row, then conditions, the rejected revision, the last error and request,
/// and the last few events.
pub fn render_details(report: &Report) -> String {
    let status = match &report.status {
        None => return format!("{}\n", report.no_status_message()),
        Some(Stored::Unreadable(_)) => return render_table(std::slice::from_ref(report)),
        Some(Stored::Readable(versioned)) => &versioned.value,
    };
    let mut out = render_table(std::slice::from_ref(report));
    if !status.conditions.is_empty() {
        out.push_str("\nConditions:\n");
        let rows: Vec<Vec<String>> = status
            .conditions
            .iter()
            .map(|c| {
                vec![
                    c.kind.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.last_transition_time.clone(),
                    c.message.clone(),
                ]
            })
            .collect();
        out.push_str(&indent(&table::render(
            &["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"],
            &rows,
        )));
    }
    if let Some(canary) = &status.canary {
        out.push_str(&format!(
            "\nCanary: step {} of {}: {}% of requests to revision {} in {} (this step since {}, \
             the canary since {})\n",
            canary.step,
            canary.of,
            canary.weight,
            canary.revision,
            canary.color,
            crate::status::rfc3339(canary.since_ms),
            crate::status::rfc3339(canary.started_ms)
        ));
    }
    if let Some(analysis) = &status.analysis {
        out.push_str(&format!(
            "\nAnalysis: {:?}: {}\n",
            analysis.result, analysis.message
        ));
    }
    if let Some(rejected) = &status.rejected {
        out.push_str(&format!(
            "\nRejected: revision {} (spec index {}): {}: {}\n",
            rejected.revision, rejected.spec_index, rejected.reason, rejected.message
        ));
    }
    if let Some(error) = &status.last_error {
        out.push_str(&format!("\nLast error: {error}\n"));
    }
    if let Some(ack) = &status.last_request {
        out.push_str(&format!(
            "\nLast request: {:?} of revision {}: {}: {}\n",
            ack.action, ack.revision, ack.result, ack.message
        ));
    }
    if !status.events.is_empty() {
        out.push_str("\nEvents:\n");
        let skip = status.events.len().saturating_sub(SHOWN_EVENTS);
        let rows: Vec<Vec<String>> = status.events[skip..]
            .iter()
            .map(|e| vec![e.time.clone(), e.reason.clone(), e.message.clone()])
            .collect();
        out.push_str(&indent(&table::render(
            &["TIME", "REASON", "MESSAGE"],
            &rows,
        )));
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}

/// The table row of a service with a status; `None` without one.
fn row(report: &Report) -> Option<Vec<String>> {
    let dash = || "-".to_owned();
    let status = match report.status.as_ref()? {
        Stored::Readable(versioned) => &versioned.value,
        Stored::Unreadable(_) => {
            let index = match &report.spec {
                Some(spec) => format!("-/{}", spec.modify_index),
                None => "- (spec deleted)".to_owned(),
            };
            return Some(vec![
                report.name.clone(),
                "Unknown".to_owned(),
                dash(),
                dash(),
                dash(),
                dash(),
                index,
            ]);
        }
    };
    let active = status.active_color.and_then(|c| status.colors.get(&c));
    let index = match &report.spec {
        Some(spec) if spec.modify_index == status.observed_index => {
            status.observed_index.to_string()
        }
        Some(spec) => format!("{}/{}", status.observed_index, spec.modify_index),
        None => format!("{} (spec deleted)", status.observed_index),
    };
    Some(vec![
        report.name.clone(),
        status.phase.map_or_else(dash, |p| p.to_string()),
        status.active_color.map_or_else(dash, |c| c.to_string()),
        status.preview_color.map_or_else(dash, |c| c.to_string()),
        active.map_or_else(dash, |c| format!("{}/{}", c.ready, c.desired)),
        active.map_or_else(dash, |c| c.image.clone()),
        index,
    ])
}

/// What a status says about the spec at `index`: `Some(Ok)` when it is live (or, waiting
/// for `Preview`, ready on the preview route), `Some(Err)` when the daemon gave up on it,
/// `None` while it is still working on it.
pub fn outcome(status: &Status, index: u64, wait_for: WaitFor) -> Option<Result<(), String>> {
    if status.observed_index != index {
        return None;
    }
    let degraded = status.condition("Degraded").filter(|c| c.status == "True");
    let message = || degraded.map_or_else(String::new, |c| format!("{}: {}", c.reason, c.message));
    match status.phase? {
        Phase::Available => Some(Ok(())),
        Phase::Preview if wait_for == WaitFor::Preview => Some(Ok(())),
        Phase::Invalid => Some(Err(message())),
        Phase::Degraded
            if status
                .rejected
                .as_ref()
                .is_some_and(|r| r.spec_index == index)
                || degraded.is_some_and(|c| {
                    matches!(c.reason.as_str(), "ImageNotFound" | "ImagePullFailed")
                }) =>
        {
            Some(Err(message()))
        }
        _ => None,
    }
}

/// Where the services with a spec stand, for `status --wait` without NAME.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub total: usize,
    pub done: usize,
    /// Services the daemon still works on, with why (the `Progressing` reason).
    pub pending: Vec<(String, String)>,
    /// Services the daemon gave up on: name, spec index, phase and message.
    pub failed: Vec<(String, u64, String, String)>,
}

/// How many pending services a progress line names.
const NAMED_PENDING: usize = 5;

impl Progress {
    pub fn of(reports: &[Report], wait_for: WaitFor) -> Progress {
        let mut progress = Progress::default();
        for report in reports {
            let Some(spec) = &report.spec else { continue };
            progress.total += 1;
            let status = report.readable_status();
            match status.and_then(|s| outcome(s, spec.modify_index, wait_for)) {
                Some(Ok(())) => progress.done += 1,
                Some(Err(message)) => progress.failed.push((
                    report.name.clone(),
                    spec.modify_index,
                    status
                        .and_then(|s| s.phase)
                        .map_or_else(String::new, |p| p.to_string()),
                    message,
                )),
                None => {
                    let why = status
                        .filter(|s| s.observed_index == spec.modify_index)
                        .and_then(|s| s.condition("Progressing"))
                        .map_or_else(|| "not reconciled yet".to_owned(), |c| c.reason.clone());
                    progress.pending.push((report.name.clone(), why));
                }
            }
        }
        progress
    }

    /// `3/5 Available, 1 failed (api); progressing: web (WaitingForHealthy)`.
    pub fn line(&self) -> String {
        let mut line = format!("{}/{} Available", self.done, self.total);
        if !self.failed.is_empty() {
            let names: Vec<&str> = self.failed.iter().map(|f| f.0.as_str()).collect();
            line.push_str(&format!(", {} failed ({})", names.len(), names.join(", ")));
        }
        if !self.pending.is_empty() {
            let named: Vec<String> = self
                .pending
                .iter()
                .take(NAMED_PENDING)
                .map(|(name, why)| format!("{name} ({why})"))
                .collect();
            line.push_str(&format!("; progressing: {}", named.join(", ")));
            if self.pending.len() > NAMED_PENDING {
                line.push_str(&format!(" and {} more", self.pending.len() - NAMED_PENDING));
            }
        }
        line
    }
}

/// Blocks (on Consul blocking queries) until [`outcome`] decides for every service with a
/// spec, showing the progress on stderr: rewritten in place when `live`, else a line per
/// change. The first failure is the error.
pub async fn wait_for_all(
    store: &Store,
    wait_for: WaitFor,
    timeout: std::time::Duration,
    live: bool,
) -> Result<(), CliError> {
    let what = || match wait_for {
        WaitFor::Available => "every service to become Available".to_owned(),
        WaitFor::Preview => "every service to be ready for preview".to_owned(),
    };
    let mut shown = String::new();
    wait_until(store, timeout, what, async || {
        let progress = Progress::of(&fetch_reports(store, None).await?, wait_for);
        let line = progress.line();
        if live {
            eprint!("\r\x1b[2K{line}");
        } else if line != shown {
            eprintln!("{line}");
        }
        shown = line;
        if !progress.pending.is_empty() {
            return Ok(None);
        }
        if live {
            eprintln!();
        }
        match progress.failed.into_iter().next() {
            Some((name, index, phase, message)) => Err(CliError::RolloutFailed {
                name,
                index,
                phase,
                message,
            }),
            None => Ok(Some(())),
        }
    })
    .await
}

/// Blocks (on Consul blocking queries, not polling) until [`outcome`] decides for the
/// current spec of `name`.
async fn wait_for_outcome(
    store: &Store,
    name: &str,
    wait_for: WaitFor,
    timeout: std::time::Duration,
) -> Result<(), CliError> {
    let what = || match wait_for {
        WaitFor::Available => format!("{name} to become Available"),
        WaitFor::Preview => format!("{name} to be ready for preview"),
    };
    let mut said_unreadable = false;
    wait_until(store, timeout, what, async || {
        let spec = super::existing_spec(store, name).await?;
        let status = match store.get_status(name).await? {
            Some(Stored::Readable(status)) => status,
            Some(Stored::Unreadable(bad)) => {
                // Not an outcome: the daemon rebuilds it on its next reconcile.
                if !said_unreadable {
                    eprintln!("{name}: {bad}; waiting for cutover run to rebuild it");
                    said_unreadable = true;
                }
                return Ok(None);
            }
            None => return Ok(None),
        };
        match outcome(&status.value, spec.modify_index, wait_for) {
            Some(Ok(())) => Ok(Some(())),
            Some(Err(message)) => Err(CliError::RolloutFailed {
                name: name.to_owned(),
                index: spec.modify_index,
                phase: status
                    .value
                    .phase
                    .map_or_else(String::new, |p| p.to_string()),
                message,
            }),
            None => Ok(None),
        }
    })
    .await
}

/// Runs `decide` now and after every change under the prefix (Consul blocking queries, not
/// polling) until it returns `Some` or an error; after `timeout`, the error names `what`.
async fn wait_until<T>(
    store: &Store,
    timeout: std::time::Duration,
    what: impl FnOnce() -> String,
    mut decide: impl AsyncFnMut() -> Result<Option<T>, CliError>,
) -> Result<T, CliError> {
    let watched = format!("{}/", store.prefix());
    let wait = async {
        let mut index = 0;
        loop {
            if let Some(done) = decide().await? {
                return Ok(done);
            }
            index = super::list_after(store, &watched, index, std::time::Duration::from_secs(30))
                .await?
                .index;
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| CliError::Timeout { what: what() })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_progress_line_names_failures_and_a_few_pending_services() {
        let progress = Progress {
            total: 9,
            done: 2,
            pending: (0..6)
                .map(|i| (format!("s{i}"), "WaitingForHealthy".to_owned()))
                .collect(),
            failed: vec![("api".into(), 3, "Degraded".into(), "no".into())],
        };
        assert_eq!(
            progress.line(),
            "2/9 Available, 1 failed (api); progressing: s0 (WaitingForHealthy), \
             s1 (WaitingForHealthy), s2 (WaitingForHealthy), s3 (WaitingForHealthy), \
             s4 (WaitingForHealthy) and 1 more"
        );
    }
    use crate::status::{Color, ColorStatus, Condition, Event, Phase};

    #[test]
    fn wait_outcomes_by_phase_and_target() {
        let at = |phase, observed_index| Status {
            phase: Some(phase),
            observed_index,
            ..Status::default()
        };
        use WaitFor::*;
        let cases = [
            (at(Phase::Available, 7), Available, Some(true)),
            (at(Phase::Available, 6), Available, None),
            (at(Phase::Preview, 7), Available, None),
            (at(Phase::Preview, 7), Preview, Some(true)),
            (at(Phase::Available, 7), Preview, Some(true)),
            (at(Phase::Progressing, 7), Preview, None),
            (at(Phase::Invalid, 7), Preview, Some(false)),
        ];
        for (status, wait_for, expected) in cases {
            assert_eq!(
                outcome(&status, 7, wait_for).map(|r| r.is_ok()),
                expected,
                "{:?} at {} waiting for {wait_for:?}",
                status.phase,
                status.observed_index
            );
        }
    }

    fn spec(name: &str, modify_index: u64) -> StoredService {
        StoredService {
            name: name.to_owned(),
            key: format!("cutover/services/{name}"),
            modify_index,
            text: String::new(),
            parsed: Err(Default::default()),
        }
    }

    fn available(observed_index: u64) -> Stored<Status> {
        let mut status = Status {
            observed_index,
            phase: Some(Phase::Available),
            active_color: Some(Color::Blue),
            ..Status::default()
        };
        status.colors.insert(
            Color::Blue,
            ColorStatus {
                image: "books:1".to_owned(),
                revision: "abc".to_owned(),
                ready: 2,
                desired: 3,
            },
        );
        status.conditions.push(Condition {
            kind: "Available".to_owned(),
            status: "True".to_owned(),
            reason: "ReplicasReady".to_owned(),
            message: "all replicas ready".to_owned(),
            last_transition_time: "2024-01-01T00:00:00Z".to_owned(),
        });
        status.events.push(Event {
            time: "2024-01-01T00:00:00Z".to_owned(),
            reason: "Promoted".to_owned(),
            message: "blue is live".to_owned(),
        });
        Stored::Readable(crate::store::Versioned {
            value: status,
            modify_index: 40,
        })
    }

    #[test]
    fn table_rows_and_missing_statuses() {
        let reports = vec![
            Report {
                name: "books".to_owned(),
                spec: Some(spec("books", 12)),
                status: Some(available(10)),
            },
            Report {
                name: "users".to_owned(),
                spec: Some(spec("users", 3)),
                status: None,
            },
        ];
        let expected = "\
NAME    PHASE       ACTIVE   PREVIEW   READY/DESIRED   IMAGE     INDEX
books   Available   blue     -         2/3             books:1   10/12
no status yet: the daemon has not reported on users (is cutover run running?)
";
        assert_eq!(render_table(&reports), expected);
    }

    #[test]
    fn an_unreadable_status_is_a_row_and_a_line() {
        let unreadable = |name: &str| {
            Some(Stored::Unreadable(Unreadable {
                key: format!("cutover/status/{name}"),
                modify_index: 41,
                what: "status",
                error: "expected value at line 1 column 1".to_owned(),
            }))
        };
        let reports = vec![
            Report {
                name: "books".to_owned(),
                spec: Some(spec("books", 10)),
                status: Some(available(10)),
            },
            Report {
                name: "ghost".to_owned(),
                spec: None,
                status: unreadable("ghost"),
            },
            Report {
                name: "users".to_owned(),
                spec: Some(spec("users", 3)),
                status: unreadable("users"),
            },
        ];
        let expected = "\
NAME    PHASE       ACTIVE   PREVIEW   READY/DESIRED   IMAGE     INDEX
books   Available   blue     -         2/3             books:1   10
ghost   Unknown     -        -         -               -         - (spec deleted)
users   Unknown     -        -         -               -         -/3
ghost: cutover/status/ghost (index 41) does not hold a valid status: expected value at line 1 column 1; the spec is deleted: cutover run removes the key with the service's containers (delete it by hand if there are none)
users: cutover/status/users (index 41) does not hold a valid status: expected value at line 1 column 1; cutover run rebuilds it on its next reconcile
";
        assert_eq!(render_table(&reports), expected);
        let details = render_details(&reports[2]);
        assert!(details.starts_with("NAME"), "{details}");
        assert!(details.contains("users   Unknown"), "{details}");
        assert!(
            details.ends_with("rebuilds it on its next reconcile\n"),
            "{details}"
        );
    }

    #[test]
    fn details() {
        let report = Report {
            name: "books".to_owned(),
            spec: Some(spec("books", 10)),
            status: Some(available(10)),
        };
        let text = render_details(&report);
        assert!(text.contains("books   Available   blue"), "{text}");
        assert!(text.contains("Conditions:\n  TYPE"), "{text}");
        assert!(text.contains("ReplicasReady"), "{text}");
        assert!(text.contains("Events:\n  TIME"), "{text}");
        assert!(text.contains("blue is live"), "{text}");
    }
}
