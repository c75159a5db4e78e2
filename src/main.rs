//! The `cutover` binary: parses the command line and runs it. Everything else is in the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use cutover::cli::{self, Cli};

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version end up here too, and are not failures.
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // The daemon tells what it does; the other commands only warn.
    let default_level = match cli.command {
        cli::Command::Run(_) | cli::Command::Proxy(_) => "info",
        _ => "warn",
    };
    cutover::logging::init(cli.global.log_format, default_level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(cli::Exit::Success) => ExitCode::SUCCESS,
        Ok(cli::Exit::Changes) => ExitCode::from(2),
        Err(error) => {
            cli::report(&error);
            ExitCode::FAILURE
        }
    }
}

/// `cutover get -o yaml | head`: when the reader of stdout goes away, printing fails with
/// EPIPE and `println!` panics. Like other command-line tools, exit quietly instead of
/// printing a panic and a backtrace; every other panic is reported as usual.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}
