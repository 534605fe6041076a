//! The closing tables: lepus beside lapin and the ceiling, and what every run cost per
//! message.

use std::fmt::Write as _;

use super::{Row, ceiling_for, find, opt, rows, runs_of};
use crate::broker::{CLIENTS, RunResult};

/// `a / b` as `0.00x`, or `-`.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".to_owned(),
    }
}

/// lepus against lapin and the ceiling, one line per workload, size and runtime; failed
/// runs show as `-`. The ratios compare runs of the same process, minutes apart.
pub fn table(results: &[RunResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:>5} {:<7} | {:>9} {:>9} {:>9} | {:>6} {:>6} | {:>27} | {:>27} | {:>17}",
        "", "", "", "", "msg/s", "", "lepus/", "lepus/", "client CPU us/msg", "broker CPU us/msg", "rpc p50 us",
    );
    let _ = writeln!(
        out,
        "{:<8} {:>5} {:<7} | {:>9} {:>9} {:>9} | {:>6} {:>6} | {:>8} {:>8} {:>9} | {:>8} {:>8} {:>9} | {:>5} {:>5} {:>5}",
        "workload",
        "size",
        "runtime",
        "ceiling",
        "lepus",
        "lapin",
        "lapin",
        "ceil",
        "ceiling",
        "lepus",
        "lapin",
        "ceiling",
        "lepus",
        "lapin",
        "ceil",
        "lepus",
        "lapin",
    );
    for row in rows(results) {
        let lepus = find(results, "lepus", row);
        let lapin = find(results, "lapin", row);
        let ceiling = ceiling_for(results, row);
        let thr = |r: Option<&RunResult>| r.map(RunResult::msgs_per_s);
        let cpu = |r: Option<&RunResult>| r.map(RunResult::cpu_us_per_msg);
        let broker = |r: Option<&RunResult>| r.and_then(RunResult::broker_us_per_msg);
        let p50 = |r: Option<&RunResult>| r.and_then(|r| r.p50_us);
        let _ = writeln!(
            out,
            "{:<8} {:>5} {:<7} | {:>9} {:>9} {:>9} | {:>6} {:>6} | {:>8} {:>8} {:>9} | {:>8} {:>8} {:>9} | {:>5} {:>5} {:>5}",
            row.workload.name(),
            row.size,
            row.runtime.name(),
            opt(thr(ceiling), 0),
            opt(thr(lepus), 0),
            opt(thr(lapin), 0),
            ratio(thr(lepus), thr(lapin)),
            ratio(thr(lepus), thr(ceiling)),
            opt(cpu(ceiling), 2),
            opt(cpu(lepus), 2),
            opt(cpu(lapin), 2),
            opt(broker(ceiling), 2),
            opt(broker(lepus), 2),
            opt(broker(lapin), 2),
            opt(p50(ceiling), 0),
            opt(p50(lepus), 0),
            opt(p50(lapin), 0),
        );
    }
    for row in rows(results) {
        for client in CLIENTS {
            let runs = runs_of(results, client, row);
            if runs.len() > 1 {
                let all: Vec<String> = runs.iter().map(|r| format!("{:.0}", r.msgs_per_s())).collect();
                let _ = writeln!(
                    out,
                    "{} {} B {} {client}: {} runs, msg/s {} (median shown)",
                    row.workload,
                    row.size,
                    row.runtime.name(),
                    runs.len(),
                    all.join(" ")
                );
            }
        }
    }
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.ok)
        .map(|r| format!("{} {} {} B {}", r.client, r.case.workload, r.case.size, r.runtime.name()))
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "failed runs (shown as -): {}", failed.join(", "));
    }
    let _ = writeln!(
        out,
        "lepus/lapin, lepus/ceil: msgs per s of lepus over lapin's and the ceiling's (median runs); the ceiling \
         column shows the ceiling run on the row's runtime, or on current_thread if it ran only there"
    );
    out
}

/// Per message, for the median run of each client on each row: what it cost the client
/// and the broker, and how it talked to the socket.
pub fn costs(results: &[RunResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:>5} {:<7} {:<7} | {:>9} {:>7} {:>7} | {:>6} {:>6} | {:>6} {:>6} | {:>6} {:>6}",
        "workload",
        "size",
        "runtime",
        "client",
        "msg/s",
        "cpu us",
        "brk us",
        "seg>",
        "seg<",
        "syscw",
        "syscr",
        "vcsw",
        "ivcsw",
    );
    let mut shown: Vec<(Row, &str)> = Vec::new();
    for row in rows(results) {
        for client in CLIENTS {
            let run = if client == "ceiling" { ceiling_for(results, row) } else { find(results, client, row) };
            let Some(r) = run else { continue };
            let own_row = Row { runtime: r.runtime, ..row };
            if shown.contains(&(own_row, client)) {
                continue;
            }
            shown.push((own_row, client));
            let per = |v: Option<u64>| opt(v.map(|v| r.per_msg(v)), 3);
            let c = &r.costs;
            let _ = writeln!(
                out,
                "{:<8} {:>5} {:<7} {:<7} | {:>9.0} {:>7.2} {:>7} | {:>6} {:>6} | {:>6} {:>6} | {:>6} {:>6}",
                row.workload.name(),
                row.size,
                r.runtime.name(),
                client,
                r.msgs_per_s(),
                r.cpu_us_per_msg(),
                opt(r.broker_us_per_msg(), 2),
                per(c.segs_out),
                per(c.segs_in),
                per(c.syscw),
                per(c.syscr),
                per(Some(c.vcsw)),
                per(Some(c.ivcsw)),
            );
        }
    }
    let _ = writeln!(
        out,
        "per message: cpu us = client CPU (getrusage, all threads); brk us = broker CPU (/proc/<pid>/stat); \
         seg> / seg< = TCP data segments to / from the broker (TCP_INFO via ss); syscw / syscr = /proc/self/io \
         (VFS read/write calls: writev and eventfd wakes count, send/recv do not); vcsw / ivcsw = voluntary / \
         involuntary context switches (getrusage, all threads)"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{RuntimeKind, Workload, report::tests::run};

    #[test]
    fn table_compares_clients_per_runtime() {
        let results = [
            run("lepus", Workload::Publish, RuntimeKind::CurrentThread, 1.0),
            run("lapin", Workload::Publish, RuntimeKind::CurrentThread, 2.0),
            run("ceiling", Workload::Publish, RuntimeKind::CurrentThread, 0.5),
            run("lepus", Workload::Publish, RuntimeKind::MultiThread, 4.0),
        ];
        let t = table(&results);
        assert_eq!(t.lines().count(), 5, "{t}");
        let multi = t.lines().find(|l| l.contains("multi")).unwrap();
        assert!(multi.contains("0.12x"), "lepus multi / ceiling current: {multi}");
        assert!(t.contains("2.00x") && t.contains("0.50x"), "{t}");
        let c = costs(&results);
        assert_eq!(c.lines().count(), 6, "one line per client and runtime, the ceiling once: {c}");
        assert!(c.contains("2.000") && c.contains("1.000") && c.contains("0.250"), "{c}");
    }

    #[test]
    fn rounds_show_the_median() {
        let rounds = [
            run("lepus", Workload::Confirm, RuntimeKind::CurrentThread, 1.0),
            run("lepus", Workload::Confirm, RuntimeKind::CurrentThread, 4.0),
            run("lepus", Workload::Confirm, RuntimeKind::CurrentThread, 2.0),
        ];
        let row = Row { workload: Workload::Confirm, size: 64, runtime: RuntimeKind::CurrentThread };
        assert_eq!(find(&rounds, "lepus", row).map(|r| r.seconds), Some(2.0));
        let r = table(&rounds);
        assert!(r.contains("3 runs, msg/s 250 500 1000"), "{r}");
    }
}
