//! Logging: human-readable or JSON lines on stderr, with a filter that can be changed while
//! the daemon runs (`PUT /loglevel`).
//!
//! The subscriber is process-global (tracing's), so the handle that changes its filter is
//! too: [`init`] installs both once, from `main`.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event, for a terminal or journald.
    #[default]
    Human,
    /// One JSON object per line, fields at the top level, for a log pipeline.
    Json,
}

struct Filter {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The directives as given, since `EnvFilter`'s own `Display` reorders them.
    current: std::sync::Mutex<String>,
}

static FILTER: OnceLock<Filter> = OnceLock::new();

/// Installs the global subscriber: `RUST_LOG` if set, else `default_filter`.
///
/// # Panics
/// When called twice (the global subscriber can be set once).
pub fn init(format: LogFormat, default_filter: &str) {
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|d| !d.trim().is_empty() && EnvFilter::try_new(d).is_ok())
        .unwrap_or_else(|| default_filter.to_owned());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        // Colours only on a terminal (and not with NO_COLOR): a log file or journald gets
        // plain text.
        LogFormat::Human => registry
            .with(
                fmt::layer()
                    .with_ansi(
                        std::io::IsTerminal::is_terminal(&std::io::stderr())
                            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
                    )
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
    let _ = FILTER.set(Filter {
        handle,
        current: std::sync::Mutex::new(directives),
    });
}

/// The filter in force, as `RUST_LOG` would write it; `None` before [`init`].
pub fn filter() -> Option<String> {
    FILTER
        .get()
        .map(|f| f.current.lock().expect("filter lock").clone())
}

/// Replaces the filter, such as `info,cutover=debug`.
///
/// # Errors
/// Directives that do not parse (the message says why), or logging not initialized.
pub fn set_filter(directives: &str) -> Result<(), String> {
    let directives = directives.trim();
    let filter = EnvFilter::try_new(directives).map_err(|e| {
        format!("invalid filter {directives:?}: {e}; write e.g. info,cutover=debug")
    })?;
    let f = FILTER
        .get()
        .ok_or_else(|| "logging is not initialized".to_owned())?;
    f.handle
        .reload(filter)
        .map_err(|e| format!("cannot change the filter: {e}"))?;
    *f.current.lock().expect("filter lock") = directives.to_owned();
    Ok(())
}
