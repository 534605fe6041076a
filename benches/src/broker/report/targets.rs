//! The targets of issue 10 (item 3), checked on every runtime that ran: shares of the
//! ceiling and CPU per message, as ratios within one run.

use std::fmt::Write as _;

use super::{Row, ceiling_for, find, opt, rows};
use crate::broker::{RunResult, RuntimeKind, Workload};

/// One target: a share of the ceiling's throughput and a client CPU bound.
struct Target {
    workload: Workload,
    share: f64,
    cpu_us: f64,
}

const TARGETS: [Target; 3] = [
    Target { workload: Workload::Publish, share: 0.98, cpu_us: 1.0 },
    Target { workload: Workload::Confirm, share: 0.95, cpu_us: 2.0 },
    Target { workload: Workload::Consume, share: 0.95, cpu_us: 3.0 },
];
/// Broker CPU per consumed message: at most the ceiling's plus this share.
const BROKER_SLACK: f64 = 0.10;
/// rpc p50: at most the ceiling's plus this share.
const RPC_SLACK: f64 = 0.05;

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "not measured",
    }
}

/// The targets for lepus, each with the measured value and whether it is met, for
/// every runtime that ran; then lepus/lapin throughput per row.
pub fn targets(results: &[RunResult]) -> String {
    let mut out = String::new();
    let mut line = |what: &str, value: Option<f64>, unit: &str, target: String, met: Option<bool>| {
        let _ = writeln!(out, "{what:<52} {:>8} {unit:<2}  target {target:<10}  {}", opt(value, 2), verdict(met));
    };
    let ran: Vec<RuntimeKind> =
        RuntimeKind::ALL.into_iter().filter(|k| rows(results).iter().any(|r| r.runtime == *k)).collect();
    for runtime in ran {
        let rt = runtime.name();
        for t in &TARGETS {
            let row = Row { workload: t.workload, size: 64, runtime };
            let (lepus, ceiling) = (find(results, "lepus", row), ceiling_for(results, row));
            let share = match (lepus, ceiling) {
                (Some(l), Some(c)) if c.msgs_per_s() > 0.0 => Some(l.msgs_per_s() / c.msgs_per_s() * 100.0),
                _ => None,
            };
            let w = t.workload;
            let target = format!(">= {:.0}%", t.share * 100.0);
            line(
                &format!("{rt}: lepus {w} 64 B, share of ceiling"),
                share,
                "%",
                target,
                share.map(|s| s >= t.share * 100.0),
            );
            let cpu = lepus.map(RunResult::cpu_us_per_msg);
            let target = format!("<= {:.1}", t.cpu_us);
            line(
                &format!("{rt}: lepus {w} 64 B, client CPU per message"),
                cpu,
                "us",
                target,
                cpu.map(|c| c <= t.cpu_us),
            );
            if t.workload == Workload::Consume {
                let broker = lepus.and_then(RunResult::broker_us_per_msg);
                let bound = ceiling.and_then(RunResult::broker_us_per_msg).map(|c| c * (1.0 + BROKER_SLACK));
                let met = broker.zip(bound).map(|(b, bound)| b <= bound);
                line(
                    &format!("{rt}: lepus {w} 64 B, broker CPU per message"),
                    broker,
                    "us",
                    format!("<= {}", opt(bound, 2)),
                    met,
                );
            }
        }
        let row = Row { workload: Workload::Rpc, size: 64, runtime };
        let p50 = find(results, "lepus", row).and_then(|r| r.p50_us);
        let bound = ceiling_for(results, row).and_then(|c| c.p50_us).map(|c| c * (1.0 + RPC_SLACK));
        let met = p50.zip(bound).map(|(p, bound)| p <= bound);
        line(&format!("{rt}: lepus rpc p50"), p50, "us", format!("<= {}", opt(bound, 0)), met);
    }
    for row in rows(results) {
        let (lepus, lapin) = (find(results, "lepus", row), find(results, "lapin", row));
        let ratio = match (lepus, lapin) {
            (Some(l), Some(t)) if t.msgs_per_s() > 0.0 => Some(l.msgs_per_s() / t.msgs_per_s()),
            _ => None,
        };
        let what = format!("{}: lepus/lapin throughput, {} {} B", row.runtime.name(), row.workload, row.size);
        line(&what, ratio, "x", ">= 1".to_owned(), ratio.map(|r| r >= 1.0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::report::tests::run;

    #[test]
    fn targets_per_runtime() {
        let mut consume = run("lepus", Workload::Consume, RuntimeKind::MultiThread, 1.0);
        consume.client_cpu_s = 0.002;
        let results = [
            run("lepus", Workload::Publish, RuntimeKind::MultiThread, 1.0),
            run("ceiling", Workload::Publish, RuntimeKind::CurrentThread, 1.0),
            consume,
            run("ceiling", Workload::Consume, RuntimeKind::CurrentThread, 0.5),
        ];
        let t = targets(&results);
        assert!(!t.contains("current:"), "only the runtime that ran: {t}");
        let publish_share = t.lines().find(|l| l.contains("publish 64 B, share")).unwrap();
        assert!(publish_share.contains("100.00") && publish_share.ends_with("met"), "{publish_share}");
        let consume_share = t.lines().find(|l| l.contains("consume 64 B, share")).unwrap();
        assert!(consume_share.contains("50.00") && consume_share.ends_with("MISSED"), "{consume_share}");
        let broker = t.lines().find(|l| l.contains("broker CPU")).unwrap();
        assert!(broker.contains("<= 2.20") && broker.ends_with("met"), "{broker}");
        assert!(t.contains("not measured"), "no rpc ran: {t}");
    }
}
