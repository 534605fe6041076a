//! The JSON line of a run (BENCHMARKS.md, "Output"), and the closing tables: lepus beside
//! lapin and the ceiling per workload and runtime ([`table`]), what each run cost per
//! message ([`costs`]), and the issue's targets ([`targets`]).

mod table;
mod targets;

use std::fmt::Write as _;

pub use table::{costs, table};
pub use targets::targets;

use super::{RunResult, RuntimeKind, Workload};

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

/// The run's one-line JSON object: the fields of BENCHMARKS.md in its order, then this
/// bench's additions (runtime, broker CPU, and per-message counts; `null` where a source
/// was missing).
pub fn json_line(r: &RunResult) -> String {
    let c = &r.costs;
    let per = |v: Option<u64>| json_number(v.map(|v| r.per_msg(v)), 3);
    format!(
        "{{\"client\":{},\"workload\":{},\"n\":{},\"size\":{},\"seconds\":{},\"msgs_per_s\":{},\"p50_us\":{},\
         \"p99_us\":{},\"client_cpu_s\":{},\"cpu_us_per_msg\":{},\"ok\":{},\"note\":{},\"runtime\":{},\
         \"broker_cpu_s\":{},\"broker_cpu_us_per_msg\":{},\"segs_out_per_msg\":{},\"segs_in_per_msg\":{},\
         \"syscw_per_msg\":{},\"syscr_per_msg\":{},\"vcsw_per_msg\":{},\"ivcsw_per_msg\":{}}}",
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
        json_string(r.runtime.name()),
        json_number(c.broker_cpu_s, 3),
        json_number(r.broker_us_per_msg(), 3),
        per(c.segs_out),
        per(c.segs_in),
        per(c.syscw),
        per(c.syscr),
        per(Some(c.vcsw)),
        per(Some(c.ivcsw)),
    )
}

/// The passed runs of one client, workload, size and runtime, slowest first.
fn runs_of<'a>(results: &'a [RunResult], client: &str, row: Row) -> Vec<&'a RunResult> {
    let mut runs: Vec<&RunResult> = results
        .iter()
        .filter(|r| {
            r.client == client && r.case.workload == row.workload && r.case.size == row.size && r.runtime == row.runtime
        })
        .filter(|r| r.ok)
        .collect();
    runs.sort_by(|a, b| a.msgs_per_s().total_cmp(&b.msgs_per_s()));
    runs
}

/// The passed run with the median throughput (of an even count, the lower middle one).
fn find<'a>(results: &'a [RunResult], client: &str, row: Row) -> Option<&'a RunResult> {
    let runs = runs_of(results, client, row);
    runs.get(runs.len().saturating_sub(1) / 2).copied()
}

/// The ceiling beside `row`: the one run on the row's runtime, else on any runtime (the
/// ceiling runs on `current_thread` unless asked otherwise; the broker's capacity does not
/// depend on the client's runtime).
fn ceiling_for(results: &[RunResult], row: Row) -> Option<&RunResult> {
    find(results, "ceiling", row)
        .or_else(|| RuntimeKind::ALL.into_iter().find_map(|runtime| find(results, "ceiling", Row { runtime, ..row })))
}

/// One line of the tables: a workload at a size on a runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    workload: Workload,
    size: usize,
    runtime: RuntimeKind,
}

/// The rows that ran for lepus or lapin, in order of first appearance, grouped by case.
fn rows(results: &[RunResult]) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    for r in results.iter().filter(|r| r.client != "ceiling") {
        let row = Row { workload: r.case.workload, size: r.case.size, runtime: r.runtime };
        if !rows.contains(&row) {
            rows.push(row);
        }
    }
    // Stable: keeps each case's first-run order, puts a case's runtimes together.
    let order =
        |row: &Row| rows.iter().position(|r| r.workload == row.workload && r.size == row.size).unwrap_or(usize::MAX);
    let mut sorted = rows.clone();
    sorted.sort_by_key(order);
    sorted
}

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Case, Costs};

    pub(super) fn run(client: &'static str, workload: Workload, runtime: RuntimeKind, seconds: f64) -> RunResult {
        RunResult {
            client,
            case: Case { workload, size: 64, n: 1000 },
            runtime,
            seconds,
            p50_us: None,
            p99_us: None,
            client_cpu_s: 0.001,
            ok: true,
            note: "a \"quoted\"\nnote".into(),
            costs: Costs {
                broker_cpu_s: Some(0.002),
                syscr: Some(500),
                syscw: None,
                vcsw: 2000,
                ivcsw: 10,
                segs_out: Some(1000),
                segs_in: Some(250),
            },
        }
    }

    #[test]
    fn json_line_has_every_field() {
        let mut r = run("lepus", Workload::Rpc, RuntimeKind::MultiThread, 0.5);
        r.client_cpu_s = 0.25;
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
            "\"runtime\":\"multi\"",
            "\"broker_cpu_us_per_msg\":2.000",
            "\"segs_out_per_msg\":1.000",
            "\"syscw_per_msg\":null",
            "\"vcsw_per_msg\":2.000",
        ] {
            assert!(line.contains(field), "{field} missing in {line}");
        }
        let order = ["\"client\"", "\"workload\"", "\"n\"", "\"ok\"", "\"note\"", "\"runtime\""];
        let at: Vec<usize> = order.iter().map(|f| line.find(f).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "BENCHMARKS.md's order first: {line}");
    }

    #[test]
    fn rows_group_runtimes_of_a_case() {
        let results = [
            run("lepus", Workload::Publish, RuntimeKind::CurrentThread, 1.0),
            run("lepus", Workload::Consume, RuntimeKind::CurrentThread, 1.0),
            run("lepus", Workload::Publish, RuntimeKind::MultiThread, 1.0),
            run("ceiling", Workload::Rpc, RuntimeKind::CurrentThread, 1.0),
        ];
        let rows: Vec<(Workload, RuntimeKind)> = rows(&results).iter().map(|r| (r.workload, r.runtime)).collect();
        assert_eq!(
            rows,
            [
                (Workload::Publish, RuntimeKind::CurrentThread),
                (Workload::Publish, RuntimeKind::MultiThread),
                (Workload::Consume, RuntimeKind::CurrentThread),
            ]
        );
    }

    #[test]
    fn ceiling_of_another_runtime_stands_in() {
        let results = [run("ceiling", Workload::Publish, RuntimeKind::CurrentThread, 2.0)];
        let row = Row { workload: Workload::Publish, size: 64, runtime: RuntimeKind::MultiThread };
        assert_eq!(ceiling_for(&results, row).map(|r| r.seconds), Some(2.0));
    }
}
