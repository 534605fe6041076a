//! `lepus-perf`: a load-testing CLI for RabbitMQ over lepus's public API, shaped after
//! RabbitMQ `PerfTest`. Producers publish timestamped messages, consumers receive and ack
//! them; every second a line reports the send, confirm and receive rates and the
//! end-to-end latency percentiles, and a summary closes the run (`--json`: one JSON object
//! per line). `lepus-perf --help` lists the options.
//!
//! Exit status: 0 for a run that finished (also when stopped with Ctrl-C), 1 when a
//! connection or the broker failed, 2 for invalid arguments, 130 for Ctrl-C before the run
//! started.

#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod args;
mod connect;
mod consumer;
mod message;
mod phase;
mod producer;
mod report;
mod run;
mod stats;
mod topology;

use std::{process::ExitCode, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{args::Args, report::Printer, run::Failure};

/// Exit status of a run that failed.
const FAILED: u8 = 1;
/// Exit status of a run interrupted before it started (128 + SIGINT, as shells report it).
const INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let args = match Args::parse_from(std::env::args_os()) {
        Ok(args) => args,
        // Prints the message (or the help) and exits: 2 for an error, 0 for --help.
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            report::warn(&format!("cannot start the async runtime: {e}"));
            return ExitCode::from(FAILED);
        }
    };
    let printer = Printer::new(args.json);
    let status = runtime.block_on(async {
        let interrupt = CancellationToken::new();
        tokio::spawn(watch_ctrl_c(interrupt.clone()));
        match run::run(args, interrupt, printer).await {
            Ok(summary) => {
                printer.summary(&summary);
                if summary.error.is_some() { FAILED } else { 0 }
            }
            Err(Failure::Interrupted) => {
                report::warn("interrupted before the run started");
                INTERRUPTED
            }
            Err(failure) => {
                report::warn(&failure.to_string());
                FAILED
            }
        }
    });
    // Every task has been joined or aborted by now; do not wait for stragglers.
    runtime.shutdown_timeout(Duration::from_secs(1));
    ExitCode::from(status)
}

/// The first Ctrl-C stops the run (which then prints its summary); a second one exits at
/// once, for a broker that no longer answers.
async fn watch_ctrl_c(interrupt: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_err() {
        // No signal handler could be installed: Ctrl-C keeps its default (terminate).
        return;
    }
    report::warn("stopping; press Ctrl-C again to quit at once");
    interrupt.cancel();
    if tokio::signal::ctrl_c().await.is_ok() {
        std::process::exit(i32::from(INTERRUPTED));
    }
}
