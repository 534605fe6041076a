//! `cargo bench -p lepus-benches --bench broker`: the broker workloads of
//! `shared/BENCHMARKS.md` for lepus and lapin in one process, on tokio's `current_thread`
//! and `multi_thread` runtimes, alternating per workload, beside the bare-socket ceiling.
//!
//! stdout: exactly one JSON line per run. stderr: progress, the comparison table, the
//! per-message costs, the targets and the leftover-queue check. Environment: see
//! `lepus_benches::broker` (`LEPUS_BENCH_N`, `LEPUS_BENCH_LAPIN_N`, `LEPUS_BENCH_ONLY`,
//! `LEPUS_BENCH_SIZE`, `LEPUS_BENCH_ROUNDS`, `LEPUS_BENCH_CLIENTS`, `LEPUS_BENCH_RUNTIME`,
//! `LEPUS_BENCH_CEILING_RUNTIME`, `LEPUS_BENCH_BROKER_PID`, `AMQP_URL`).

use std::{
    future::Future,
    io::Write as _,
    process::ExitCode,
    time::{Duration, Instant},
};

use lepus_benches::broker::{
    BenchError, Case, Config, RUN_LIMIT, RunResult, RuntimeKind, ceiling, cleanup, counters, lapin_client,
    lepus_client, measure, report,
};

/// Pause after each run, so the broker has finished deleting the run's queue.
const SETTLE: Duration = Duration::from_millis(300);
/// Busy share of all cores under which the machine counts as quiet before a run.
const QUIET: f64 = 0.15;
/// How long a run waits for the machine to be quiet. Short: on a machine shared with a
/// steady background load quiet never comes, and the wait then only lengthens the run.
const QUIET_WAIT: Duration = Duration::from_secs(2);

/// How a run is done: on which runtime, and which of how many rounds it is.
#[derive(Debug, Clone, Copy)]
struct Plan {
    kind: RuntimeKind,
    round: u64,
    rounds: u64,
    /// The workload runs in a spawned task (`LEPUS_BENCH_SPAWN`).
    spawn: bool,
}

/// `work` itself, or with `spawn` a task running it spawned on the runtime: on the
/// multi-thread runtime a worker runs it, instead of the thread in `block_on`.
async fn placed<F>(spawn: bool, work: F) -> Result<RunResult, BenchError>
where
    F: Future<Output = Result<RunResult, BenchError>> + Send + 'static,
{
    if !spawn {
        return work.await;
    }
    match tokio::spawn(work).await {
        Ok(result) => result,
        Err(e) => Err(format!("the workload's task failed: {e}").into()),
    }
}

impl Plan {
    fn on(self, kind: RuntimeKind) -> Plan {
        Plan { kind, ..self }
    }
}

impl Plan {
    /// Runs `work` on a fresh runtime, bounded by [`RUN_LIMIT`]; a failure becomes a run
    /// with `ok == false`. Prints the JSON line at once.
    fn run<F>(self, client: &'static str, case: Case, work: F) -> RunResult
    where
        F: Future<Output = Result<RunResult, BenchError>>,
    {
        // A run on a busy machine measures the other work too: wait for quiet, and say so
        // in the note when it did not come.
        let busy = measure::wait_for_quiet(QUIET, QUIET_WAIT);
        let started = Instant::now();
        let mut result = match self.kind.build() {
            Ok(runtime) => {
                let outcome = runtime.block_on(async { tokio::time::timeout(RUN_LIMIT, work).await });
                runtime.shutdown_timeout(Duration::from_secs(5));
                match outcome {
                    Ok(Ok(result)) => result,
                    Ok(Err(e)) => RunResult::failed(client, case, format!("error: {e}")),
                    Err(_) => RunResult::failed(client, case, format!("gave up after {} s", RUN_LIMIT.as_secs())),
                }
            }
            Err(e) => RunResult::failed(client, case, format!("no runtime: {e}")),
        };
        result.runtime = self.kind;
        if self.spawn {
            result.note = format!("{}; workload in a spawned task, not in block_on", result.note);
        }
        if let Some(busy) = busy.filter(|b| *b >= QUIET) {
            result.note = format!("{}; machine {:.0}% busy before the run", result.note, busy * 100.0);
        }
        if self.rounds > 1 {
            result.note = format!("{}; round {} of {}", result.note, self.round, self.rounds);
        }
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{}", report::json_line(&result));
        let _ = stdout.flush();
        eprintln!(
            "   {client:<7} {:<7} {:>4} B {:<7} n={:<6} {:>9.0} msg/s {:>6.2} us/msg, broker {:>5} us/msg{}  \
             ({:.1} s with setup)",
            case.workload.name(),
            case.size,
            self.kind.name(),
            case.n,
            result.msgs_per_s(),
            result.cpu_us_per_msg(),
            result.broker_us_per_msg().map_or_else(|| "-".to_owned(), |b| format!("{b:.2}")),
            if result.ok { "" } else { "  NOT OK" },
            started.elapsed().as_secs_f64(),
        );
        std::thread::sleep(SETTLE);
        result
    }
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; anything else (`cargo test --all-targets`) only checks
    // that the binary starts, without touching the broker.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("broker bench: run it with `cargo bench -p lepus-benches --bench broker`");
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("broker bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "broker bench: n={} (lapin n={}), rpc calls={}, workloads={:?}, sizes={}, clients={:?}, rounds={}, \
         runtimes={:?}, ceiling on {:?}{}",
        config.n,
        config.lapin_n,
        config.rpc_calls,
        config.workloads.iter().map(|w| w.name()).collect::<Vec<_>>(),
        if config.sizes.is_empty() { "all".to_owned() } else { format!("{:?}", config.sizes) },
        config.clients,
        config.rounds,
        config.runtimes.iter().map(|k| k.name()).collect::<Vec<_>>(),
        config.ceiling_runtimes.iter().map(|k| k.name()).collect::<Vec<_>>(),
        if config.spawn { "; lepus and lapin in a spawned task" } else { "" },
    );
    watch_broker(&config.url);
    let started = Instant::now();
    let url = config.url.clone();
    // Queues a crashed earlier run may have left would skew nothing, but they must go.
    cleanup_and_report(&config, "before the runs");

    let mut results = Vec::new();
    for &workload in &config.workloads {
        let lapin_cases = config.cases(workload, config.lapin_n);
        for (case, lapin_case) in config.cases(workload, config.n).into_iter().zip(lapin_cases) {
            let rounds = config.rounds_of(case);
            for round in 1..=rounds {
                let plan = Plan { kind: RuntimeKind::CurrentThread, round, rounds, spawn: false };
                // Within a round: the ceiling, then each runtime with lepus then lapin, so
                // that the rows' ratios compare runs minutes apart at most.
                if config.runs("ceiling") {
                    for &kind in &config.ceiling_runtimes {
                        results.push(plan.on(kind).run("ceiling", case, ceiling::run(case, &url, kind)));
                    }
                }
                for &kind in &config.runtimes {
                    let plan = Plan { spawn: config.spawn, ..plan.on(kind) };
                    if config.runs("lepus") {
                        let url = url.clone();
                        let work = async move { lepus_client::run(case, &url, kind).await };
                        results.push(plan.run("lepus", case, placed(config.spawn, work)));
                    }
                    if config.runs("lapin") {
                        let url = url.clone();
                        let work = async move { lapin_client::run(lapin_case, &url, kind).await };
                        results.push(plan.run("lapin", lapin_case, placed(config.spawn, work)));
                    }
                }
            }
        }
    }

    eprintln!("\n{}", report::table(&results));
    eprintln!("{}", report::costs(&results));
    eprintln!("{}", report::targets(&results));
    cleanup_and_report(&config, "after the runs");
    eprintln!("broker bench: {:.0} s in all", started.elapsed().as_secs_f64());
    if results.iter().all(|r| r.ok) { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Finds the broker's pid for the broker CPU column, and says which it is (or why there
/// is none).
fn watch_broker(url: &str) {
    let port = lepus::ConnectionOptions::from_uri(url).map_or(5672, |o| o.get_port());
    let broker_pid = match counters::find_broker(port) {
        Ok(pid) => {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            eprintln!("broker: pid {pid} ({}), listening on port {port}", name.trim());
            Some(pid)
        }
        Err(e) => {
            eprintln!("broker: no pid, so no broker CPU column: {e}");
            None
        }
    };
    counters::watch(counters::Watch { port, broker_pid });
}

/// Deletes leftover `bench.`/`rpc.` queues and says which there were.
fn cleanup_and_report(config: &Config, when: &str) {
    let removed = RuntimeKind::CurrentThread
        .build()
        .map_err(BenchError::from)
        .and_then(|rt| rt.block_on(cleanup::remove_leftovers(&config.url, true)));
    match removed {
        Ok(names) if names.is_empty() => eprintln!("leftover bench./rpc. queues {when}: none"),
        Ok(names) => eprintln!("leftover bench./rpc. queues {when}: {} removed: {}", names.len(), names.join(", ")),
        Err(e) => eprintln!("leftover check {when} failed: {e}"),
    }
}
