//! The JSON line of a run (BENCHMARKS.md, "Output"), and the closing comparison table.

use std::fmt::Write as _;

use super::{RunResult, Workload};

/// Issue targets checked in [`targets`].
const PUBLISH_CPU_TARGET_US: f64 = 1.5;
const CONSUME_CPU_TARGET_US: f64 = 3.0;
const CEILING_SHARE_TARGET: f64 = 0.95;

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number (finite, rounded to `decimals`), or `null`.
fn json_number(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "null".to_owned(),
    }
}

/// The run's one-line JSON object, fields in the order of BENCHMARKS.md.
pub fn json_line(r: &RunResult) -> String {
    format!(
        "{{\"client\":{},\"workload\":{},\"n\":{},\"size\":{},\"seconds\":{},\"msgs_per_s\":{},\"p50_us\":{},\
         \"p99_us\":{},\"client_cpu_s\":{},\"cpu_us_per_msg\":{},\"ok\":{},\"note\":{}}}",
        json_string(r.client),
        json_string(r.case.workload.name()),
        r.case.n,
        r.case.size,
        json_number(Some(r.seconds), 6),
        json_number(Some(r.msgs_per_s()), 1),
        json_number(r.p50_us, 1),
        json_number(r.p99_us, 1),
        json_number(Some(r.client_cpu_s), 6),
        json_number(Some(r.cpu_us_per_msg()), 3),
        r.ok,
        json_string(&r.note),
    )
}

/// The passed runs of one client, workload and size, slowest first.
fn runs_of<'a>(results: &'a [RunResult], client: &str, workload: Workload, size: usize) -> Vec<&'a RunResult> {
    let mut runs: Vec<&RunResult> = results
        .iter()
        .filter(|r| r.client == client && r.case.workload == workload && r.case.size == size && r.ok)
        .collect();
    runs.sort_by(|a, b| a.msgs_per_s().total_cmp(&b.msgs_per_s()));
    runs
}

/// The passed run with the median throughput (of an even count, the lower middle one).
fn find<'a>(results: &'a [RunResult], client: &str, workload: Workload, size: usize) -> Option<&'a RunResult> {
    let runs = runs_of(results, client, workload, size);
    runs.get(runs.len().saturating_sub(1) / 2).copied()
}

/// The (workload, size) pairs that ran, in order of first appearance.
fn rows(results: &[RunResult]) -> Vec<(Workload, usize)> {
    let mut rows: Vec<(Workload, usize)> = Vec::new();
    for r in results.iter().filter(|r| r.client != "ceiling") {
        if !rows.contains(&(r.case.workload, r.case.size)) {
            rows.push((r.case.workload, r.case.size));
        }
    }
    rows
}

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// lepus against lapin, one line per workload and size; failed runs show as `-`.
pub fn table(results: &[RunResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:>5}  {:>11} {:>11} {:>6}  {:>8} {:>8} {:>6}  {:>15} {:>15}  {:>11} {:>6}",
        "workload",
        "size",
        "lepus msg/s",
        "lapin msg/s",
        "thr x",
        "lepus us",
        "lapin us",
        "cpu x",
        "p50 us le/la",
        "p99 us le/la",
        "ceil msg/s",
        "share",
    );
    for (workload, size) in rows(results) {
        let lepus = find(results, "lepus", workload, size);
        let lapin = find(results, "lapin", workload, size);
        let ceiling = find(results, "ceiling", workload, size);
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".to_owned(),
        };
        let thr = |r: Option<&RunResult>| r.map(RunResult::msgs_per_s);
        let cpu = |r: Option<&RunResult>| r.map(RunResult::cpu_us_per_msg);
        let pair = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (None, None) => "-".to_owned(),
            (a, b) => format!("{}/{}", opt(a, 0), opt(b, 0)),
        };
        let _ = writeln!(
            out,
            "{:<8} {:>5}  {:>11} {:>11} {:>6}  {:>8} {:>8} {:>6}  {:>15} {:>15}  {:>11} {:>6}",
            workload.name(),
            size,
            opt(thr(lepus), 0),
            opt(thr(lapin), 0),
            ratio(thr(lepus), thr(lapin)),
            opt(cpu(lepus), 2),
            opt(cpu(lapin), 2),
            ratio(cpu(lapin), cpu(lepus)),
            pair(lepus.and_then(|r| r.p50_us), lapin.and_then(|r| r.p50_us)),
            pair(lepus.and_then(|r| r.p99_us), lapin.and_then(|r| r.p99_us)),
            opt(thr(ceiling), 0),
            match (thr(lepus), thr(ceiling)) {
                (Some(l), Some(c)) if c > 0.0 => format!("{:.0}%", l / c * 100.0),
                _ => "-".to_owned(),
            },
        );
    }
    for (workload, size) in rows(results) {
        for client in super::CLIENTS {
            let runs = runs_of(results, client, workload, size);
            if runs.len() > 1 {
                let all: Vec<String> = runs.iter().map(|r| format!("{:.0}", r.msgs_per_s())).collect();
                let _ = writeln!(
                    out,
                    "{workload} {size} B {client}: {} runs, msg/s {} (median shown)",
                    runs.len(),
                    all.join(" ")
                );
            }
        }
    }
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.ok)
        .map(|r| format!("{} {} {} B", r.client, r.case.workload, r.case.size))
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "failed runs (shown as -): {}", failed.join(", "));
    }
    let _ = writeln!(
        out,
        "thr x = lepus/lapin msgs per s; cpu x = lapin/lepus CPU per msg (above 1: lepus cheaper); \
         share = lepus msgs per s / ceiling msgs per s"
    );
    out
}

/// The issue's targets, each with the measured value and whether it is met.
pub fn targets(results: &[RunResult]) -> String {
    let mut out = String::new();
    let mut line = |what: &str, value: Option<f64>, unit: &str, target: &str, met: Option<bool>| {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        let _ = writeln!(out, "{what:<48} {:>8} {unit:<2}  target {target:<6}  {verdict}", opt(value, 2));
    };
    let cpu = |w, size| find(results, "lepus", w, size).map(RunResult::cpu_us_per_msg);
    let publish_cpu = cpu(Workload::Publish, 64);
    line(
        "lepus CPU per published 64 B message",
        publish_cpu,
        "us",
        "<= 1.5",
        publish_cpu.map(|v| v <= PUBLISH_CPU_TARGET_US),
    );
    let consume_cpu = cpu(Workload::Consume, 64);
    line(
        "lepus CPU per consumed+acked 64 B message",
        consume_cpu,
        "us",
        "<= 3",
        consume_cpu.map(|v| v <= CONSUME_CPU_TARGET_US),
    );
    for workload in [Workload::Publish, Workload::Confirm] {
        let share = match (find(results, "lepus", workload, 64), find(results, "ceiling", workload, 64)) {
            (Some(l), Some(c)) if c.msgs_per_s() > 0.0 => Some(l.msgs_per_s() / c.msgs_per_s() * 100.0),
            _ => None,
        };
        line(
            &format!("lepus {workload} 64 B throughput, share of ceiling"),
            share,
            "%",
            ">= 95%",
            share.map(|s| s >= CEILING_SHARE_TARGET * 100.0),
        );
    }
    for (workload, size) in rows(results) {
        let (lepus, lapin) = (find(results, "lepus", workload, size), find(results, "lapin", workload, size));
        let ratio = match (lepus, lapin) {
            (Some(l), Some(t)) if t.msgs_per_s() > 0.0 => Some(l.msgs_per_s() / t.msgs_per_s()),
            _ => None,
        };
        line(&format!("lepus/lapin throughput, {workload} {size} B"), ratio, "x", ">= 1", ratio.map(|r| r >= 1.0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Case;

    fn run(client: &'static str, workload: Workload, seconds: f64, cpu: f64) -> RunResult {
        RunResult {
            client,
            case: Case { workload, size: 64, n: 1000 },
            seconds,
            p50_us: None,
            p99_us: None,
            client_cpu_s: cpu,
            ok: true,
            note: "a \"quoted\"\nnote".into(),
        }
    }

    #[test]
    fn json_line_has_every_field() {
        let mut r = run("lepus", Workload::Rpc, 0.5, 0.25);
        r.p50_us = Some(40.0);
        let line = json_line(&r);
        assert!(!line.contains('\n'), "{line}");
        for field in [
            "\"client\":\"lepus\"",
            "\"workload\":\"rpc\"",
            "\"n\":1000",
            "\"size\":64",
            "\"seconds\":0.500000",
            "\"msgs_per_s\":2000.0",
            "\"p50_us\":40.0",
            "\"p99_us\":null",
            "\"client_cpu_s\":0.250000",
            "\"cpu_us_per_msg\":250.000",
            "\"ok\":true",
            "\"note\":\"a \\\"quoted\\\"\\nnote\"",
        ] {
            assert!(line.contains(field), "{field} missing in {line}");
        }
    }

    #[test]
    fn table_and_targets_compare_clients() {
        let results = [
            run("lepus", Workload::Publish, 1.0, 0.001),
            run("lapin", Workload::Publish, 2.0, 0.004),
            run("ceiling", Workload::Publish, 0.5, 0.0),
        ];
        let t = table(&results);
        assert_eq!(t.lines().count(), 3, "{t}");
        // Three rounds of lepus: the median one is shown.
        let rounds = [
            run("lepus", Workload::Confirm, 1.0, 0.0),
            run("lepus", Workload::Confirm, 4.0, 0.0),
            run("lepus", Workload::Confirm, 2.0, 0.0),
        ];
        assert_eq!(find(&rounds, "lepus", Workload::Confirm, 64).map(|r| r.seconds), Some(2.0));
        let r = table(&rounds);
        assert!(r.contains("3 runs, msg/s 250 500 1000"), "{r}");
        assert!(t.contains("2.00x") && t.contains("4.00x") && t.contains("50%"), "{t}");
        let targets = targets(&results);
        assert!(targets.contains("MISSED"), "{targets}");
        assert!(targets.contains("not measured"), "{targets}");
    }
}
