//! The broker workloads of `shared/BENCHMARKS.md`, run by `cargo bench --bench broker`
//! for lepus and for lapin in the same process, on tokio's current-thread and multi-thread
//! runtimes, beside a "ceiling" client.
//!
//! - [`lepus_client`] and [`lapin_client`] implement the five workloads (publish, confirm,
//!   consume, rpc, pubsub) with each library's normal calls.
//! - [`ceiling`] does every workload with frames encoded by lepus-codec on a bare socket
//!   (pre-encoded where the content is known in advance, acks coalesced per read): what the
//!   broker absorbs on this machine when the client costs next to nothing.
//! - [`measure`] has the clocks (wall, and the process's CPU from `getrusage`) and the
//!   percentiles; [`counters`] the other costs of a section (broker CPU, system calls,
//!   context switches, TCP segments); [`report`] the JSON lines and the closing tables;
//!   [`cleanup`] removes queues a run left behind; [`config`] reads the environment.
//!
//! Environment: `AMQP_URL` (or `AMQP_HOST` + `AMQP_PORT`), `LEPUS_BENCH_N` (messages per
//! run instead of the workloads' N; rpc calls are capped at it), `LEPUS_BENCH_LAPIN_N`
//! (lapin's N, if it must be smaller), `LEPUS_BENCH_ONLY=consume,confirm` (a subset of
//! `publish`, `confirm`, `consume`, `rpc`, `pubsub`), `LEPUS_BENCH_SIZE=64` (only these
//! body sizes), `LEPUS_BENCH_RUNTIME=current|multi|both` (default both: tokio's
//! current-thread runtime and the multi-thread one with its default worker count, what
//! `#[tokio::main]` builds), `LEPUS_BENCH_CEILING_RUNTIME` (the same choice for the
//! ceiling; default `current`), `LEPUS_BENCH_ROUNDS` (how often publish 64 B, confirm and
//! consume 64 B, the cases of the targets, run for every client, alternating;
//! default 3, the tables take the median), `LEPUS_BENCH_CLIENTS=lepus,lapin,ceiling` (which
//! of them run; all by default, a subset for profiling one), `LEPUS_BENCH_BROKER_PID` (the
//! broker's pid, when it cannot be found from the socket listening on the AMQP port),
//! `LEPUS_BENCH_SPAWN=1` (lepus's and lapin's workloads run in a task spawned on the
//! runtime, as a service's consumers and publishers often do, instead of in `block_on`,
//! as `main` does; on the multi-thread runtime that puts them on a worker).

use std::{
    fmt::{self, Write as _},
    io::Read,
    sync::{Mutex, PoisonError},
    time::Duration,
};

pub mod ceiling;
pub mod cleanup;
pub mod config;
pub mod counters;
pub mod lapin_client;
pub mod lepus_client;
pub mod measure;
pub mod report;

pub use config::Config;
pub use counters::Costs;

/// Errors of a run: whatever the library or the socket said, as text is enough here.
pub type BenchError = Box<dyn std::error::Error + Send + Sync>;

/// Messages per run (publish, confirm, consume, pubsub) unless `LEPUS_BENCH_N` says otherwise.
pub const DEFAULT_N: u64 = 200_000;
/// Rounds of publish 64 B, confirm and consume 64 B: the broker's throughput varies by ±20%
/// from one run to the next on this machine (its CPU per consumed message is bimodal, about
/// 11 or 16.5 us), so the share of the ceiling is taken from medians.
pub const DEFAULT_ROUNDS: u64 = 3;
/// Measured rpc calls.
pub const RPC_CALLS: u64 = 20_000;
/// Unrecorded rpc calls before the measured ones.
pub const RPC_WARMUP: u64 = 200;
/// Unconfirmed publishes allowed at once in the confirm workload.
pub const CONFIRM_WINDOW: usize = 1000;
/// `basic.qos` prefetch of the consuming workloads.
pub const PREFETCH: u16 = 1000;
/// How long the `message_count` polls keep trying before the run fails.
pub const POLL_LIMIT: Duration = Duration::from_mins(2);
/// Pause between two polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(1);
/// A whole run (setup and teardown included) is abandoned after this.
pub const RUN_LIMIT: Duration = Duration::from_mins(3);

/// What can be measured: the two libraries and the codec-only ceiling.
pub const CLIENTS: [&str; 3] = ["lepus", "lapin", "ceiling"];

/// The five workloads of BENCHMARKS.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Non-confirmed publishes, then a `message_count` poll.
    Publish,
    /// Publishes in confirm mode with at most [`CONFIRM_WINDOW`] unconfirmed.
    Confirm,
    /// Consume a filled queue, one ack per message.
    Consume,
    /// Sequential request/reply through an exclusive reply queue.
    Rpc,
    /// One connection publishes while another consumes and acks.
    Pubsub,
}

impl Workload {
    /// Every workload, in the order they run.
    pub const ALL: [Workload; 5] =
        [Workload::Publish, Workload::Confirm, Workload::Consume, Workload::Rpc, Workload::Pubsub];

    /// The body sizes it runs with.
    pub fn sizes(self) -> &'static [usize] {
        match self {
            Workload::Publish | Workload::Consume => &[64, 4096],
            Workload::Confirm | Workload::Rpc | Workload::Pubsub => &[64],
        }
    }

    /// The name used in the JSON output and in `LEPUS_BENCH_ONLY`.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Publish => "publish",
            Workload::Confirm => "confirm",
            Workload::Consume => "consume",
            Workload::Rpc => "rpc",
            Workload::Pubsub => "pubsub",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One run to do: a workload, its message size and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    /// What is run.
    pub workload: Workload,
    /// Body size in bytes.
    pub size: usize,
    /// Messages (rpc: measured calls).
    pub n: u64,
}

impl Case {
    /// True for the cases that run [`Config::rounds`] times: publish 64 B, confirm and
    /// consume 64 B, the ones the targets compare with the ceiling.
    pub fn is_repeated(self) -> bool {
        matches!((self.workload, self.size), (Workload::Publish | Workload::Confirm | Workload::Consume, 64))
    }
}

/// The tokio runtime the clients run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// `new_current_thread`: every task of the run on the bench's thread.
    CurrentThread,
    /// `new_multi_thread` with the default worker count (one per core), as
    /// `#[tokio::main]` builds it.
    MultiThread,
}

impl RuntimeKind {
    /// Both, in the order they run.
    pub const ALL: [RuntimeKind; 2] = [RuntimeKind::CurrentThread, RuntimeKind::MultiThread];

    /// A fresh runtime of this kind.
    pub fn build(self) -> std::io::Result<tokio::runtime::Runtime> {
        match self {
            RuntimeKind::CurrentThread => tokio::runtime::Builder::new_current_thread().enable_all().build(),
            RuntimeKind::MultiThread => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        }
    }

    /// The short name used in the tables, the JSON lines and `LEPUS_BENCH_RUNTIME`.
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::CurrentThread => "current",
            RuntimeKind::MultiThread => "multi",
        }
    }

    /// How the runtime is described in the runs' `note`.
    pub fn describe(self) -> String {
        match self {
            RuntimeKind::CurrentThread => "tokio current_thread runtime".to_owned(),
            RuntimeKind::MultiThread => {
                let workers = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
                format!("tokio multi_thread runtime ({workers} workers, the default)")
            }
        }
    }
}

/// One finished run: the fields of its JSON line.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    /// `lepus`, `lapin` or `ceiling`.
    pub client: &'static str,
    /// What ran.
    pub case: Case,
    /// The runtime it ran on.
    pub runtime: RuntimeKind,
    /// Wall time of the timed section.
    pub seconds: f64,
    /// rpc round-trip percentiles in microseconds.
    pub p50_us: Option<f64>,
    /// See `p50_us`.
    pub p99_us: Option<f64>,
    /// CPU time of the whole process during the timed section.
    pub client_cpu_s: f64,
    /// Every check of the workload passed.
    pub ok: bool,
    /// Library settings, failed checks, errors.
    pub note: String,
    /// Broker CPU, system calls, context switches and segments of the timed section.
    pub costs: Costs,
}

impl RunResult {
    /// A run that did not get to the end of its timed section.
    pub fn failed(client: &'static str, case: Case, note: String) -> RunResult {
        RunResult {
            client,
            case,
            runtime: RuntimeKind::CurrentThread,
            seconds: 0.0,
            p50_us: None,
            p99_us: None,
            client_cpu_s: 0.0,
            ok: false,
            note,
            costs: Costs::default(),
        }
    }

    /// A run whose timed section took `m`, judged by `checks`. (The runtime is set by
    /// whoever built it.)
    pub fn measured(client: &'static str, case: Case, m: measure::Measured, checks: &Checks, note: &str) -> RunResult {
        RunResult {
            client,
            case,
            runtime: RuntimeKind::CurrentThread,
            seconds: m.seconds,
            p50_us: None,
            p99_us: None,
            client_cpu_s: m.cpu_s,
            ok: checks.ok(),
            note: checks.note(note),
            costs: m.costs,
        }
    }

    /// Messages (rpc: calls) per second.
    #[allow(clippy::cast_precision_loss, reason = "message counts are far below 2^52")]
    pub fn msgs_per_s(&self) -> f64 {
        if self.seconds > 0.0 { self.case.n as f64 / self.seconds } else { 0.0 }
    }

    /// CPU microseconds per message.
    #[allow(clippy::cast_precision_loss, reason = "message counts are far below 2^52")]
    pub fn cpu_us_per_msg(&self) -> f64 {
        self.client_cpu_s / self.case.n as f64 * 1e6
    }

    /// Broker CPU microseconds per message.
    #[allow(clippy::cast_precision_loss, reason = "message counts are far below 2^52")]
    pub fn broker_us_per_msg(&self) -> Option<f64> {
        self.costs.broker_cpu_s.map(|s| s / self.case.n as f64 * 1e6)
    }

    /// `count` per message.
    #[allow(clippy::cast_precision_loss, reason = "counts are far below 2^52")]
    pub fn per_msg(&self, count: u64) -> f64 {
        count as f64 / self.case.n as f64
    }
}

/// Collects failed checks into the `note` of a run.
#[derive(Debug, Default)]
pub struct Checks {
    failed: Vec<String>,
}

impl Checks {
    /// Records `what` as failed unless `passed`.
    pub fn check(&mut self, passed: bool, what: impl FnOnce() -> String) {
        if !passed {
            self.failed.push(what());
        }
    }

    /// True if nothing failed.
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
    }

    /// `base`, followed by the failed checks.
    pub fn note(&self, base: &str) -> String {
        if self.failed.is_empty() { base.to_owned() } else { format!("{base}; FAILED: {}", self.failed.join("; ")) }
    }
}

/// Every queue name handed out by [`queue_name`], for the final leftover check.
static CREATED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// 32 random hex digits (16 bytes of `/dev/urandom`).
pub fn random_hex() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let mut hex = String::with_capacity(32);
    for b in bytes {
        let _ = write!(hex, "{b:02x}");
    }
    Ok(hex)
}

/// A fresh queue name, `bench.<client>.<workload>.<hex>` (rpc: `rpc.<hex>`), remembered for
/// [`created_queues`].
pub fn queue_name(client: &str, workload: Workload) -> std::io::Result<String> {
    let hex = random_hex()?;
    let name = match workload {
        Workload::Rpc => format!("rpc.{hex}"),
        _ => format!("bench.{client}.{workload}.{hex}"),
    };
    CREATED.lock().unwrap_or_else(PoisonError::into_inner).push(name.clone());
    Ok(name)
}

/// Every name [`queue_name`] has handed out.
pub fn created_queues() -> Vec<String> {
    CREATED.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// A message body of `size` bytes, every one `'x'`.
pub fn body(size: usize) -> Vec<u8> {
    vec![b'x'; size]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_the_spec() {
        let q = queue_name("lepus", Workload::Consume).unwrap();
        let hex = q.strip_prefix("bench.lepus.consume.").unwrap();
        assert_eq!(hex.len(), 32);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let r = queue_name("lapin", Workload::Rpc).unwrap();
        assert_eq!(r.len(), 4 + 32);
        assert!(r.starts_with("rpc."));
        assert!(created_queues().contains(&q));
    }

    #[test]
    fn checks_collect_failures() {
        let mut c = Checks::default();
        c.check(true, || "never".into());
        assert!(c.ok());
        assert_eq!(c.note("base"), "base");
        c.check(false, || "count 3 != 4".into());
        assert!(!c.ok());
        assert_eq!(c.note("base"), "base; FAILED: count 3 != 4");
    }
}
