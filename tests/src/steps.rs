//! Named steps of a one-node (or one-cluster) test binary, selected by `LEPUS_STEPS`, each
//! run with its panic caught and its time bounded, and the report at the end.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    time::{Duration, Instant},
};

use futures_util::FutureExt;

/// The step names to run: all of `names`, or those `LEPUS_STEPS` (comma-separated parts of
/// step names) selects.
///
/// # Panics
///
/// When `LEPUS_STEPS` is set but selects no step, or one of its parts matches no step: a
/// typo must fail the test, not turn it into a pass that ran nothing.
pub fn selected(names: &[&'static str]) -> Vec<&'static str> {
    let Ok(only) = std::env::var("LEPUS_STEPS") else { return names.to_vec() };
    let parts: Vec<&str> = only.split(',').map(str::trim).filter(|part| !part.is_empty()).collect();
    let unmatched: Vec<&&str> = parts.iter().filter(|part| !names.iter().any(|name| name.contains(**part))).collect();
    assert!(
        !parts.is_empty() && unmatched.is_empty(),
        "LEPUS_STEPS={only:?} must name steps (parts of: {names:?}); matching none: {unmatched:?}"
    );
    names.iter().copied().filter(|name| parts.iter().any(|part| name.contains(part))).collect()
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// It ran to its end.
    Passed,
    /// Not selected by `LEPUS_STEPS`.
    Skipped,
    /// Its panic message, or that it hung.
    Failed(String),
}

/// A step's name, how long it took and how it ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The step's name.
    pub name: &'static str,
    /// How long it ran (zero if skipped).
    pub took: Duration,
    /// How it ended.
    pub status: Status,
}

impl Outcome {
    /// A step `LEPUS_STEPS` left out.
    pub fn skipped(name: &'static str) -> Outcome {
        Outcome { name, took: Duration::ZERO, status: Status::Skipped }
    }

    /// Whether the step failed (panicked or hung).
    pub fn failed(&self) -> bool {
        matches!(self.status, Status::Failed(_))
    }
}

/// Runs one step: catches its panic (so that the next steps still run and the node is
/// stopped) and bounds its time by `limit`; prints when it starts and how it ended.
pub async fn run(name: &'static str, limit: Duration, body: impl Future<Output = ()>) -> Outcome {
    println!("--- {name}");
    let started = Instant::now();
    let status = match tokio::time::timeout(limit, AssertUnwindSafe(body).catch_unwind()).await {
        Ok(Ok(())) => Status::Passed,
        Ok(Err(panic)) => Status::Failed(
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panicked".to_owned()),
        ),
        Err(_) => Status::Failed(format!("hung: not done after {limit:?}")),
    };
    let took = started.elapsed();
    println!("--- {name}: {} in {took:.2?}", if matches!(status, Status::Failed(_)) { "FAILED" } else { "ok" });
    Outcome { name, took, status }
}

/// Prints every step's time and end, then fails the test if any step failed, listing why.
///
/// # Panics
///
/// When a step failed.
pub fn report(outcomes: &[Outcome]) {
    let width = outcomes.iter().map(|o| o.name.len()).max().unwrap_or(0) + 2;
    for o in outcomes {
        let status = match o.status {
            Status::Passed => "ok",
            Status::Skipped => "skipped",
            Status::Failed(_) => "FAILED",
        };
        println!("{:<width$} {:>8.2?}  {status}", o.name, o.took);
    }
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| match &o.status {
            Status::Failed(why) => Some(format!("{}: {why}", o.name)),
            _ => None,
        })
        .collect();
    assert!(failures.is_empty(), "{} step(s) failed:\n{}", failures.len(), failures.join("\n"));
}
