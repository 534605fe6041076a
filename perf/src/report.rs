//! What the run prints: a line a second and a summary, as text or as one JSON object per
//! line (`--json`). Output goes to stdout; a closed stdout (e.g. piped into `head`) is
//! not an error worth stopping a run for, so write errors are ignored.

use std::{
    fmt::Write as _,
    io::{self, Write as _},
    time::Duration,
};

use serde::Serialize;

use crate::stats::{LatencySummary, Percentiles, Snapshot};

/// One second of a run (the interval actually elapsed, which the timer may stretch).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct IntervalLine {
    /// Always "interval".
    #[serde(rename = "type")]
    kind: &'static str,
    /// Seconds since publishing started, at the end of this interval.
    pub(crate) elapsed_s: f64,
    /// Messages handed to the connections in this interval.
    pub(crate) sent: u64,
    /// Of which per second.
    pub(crate) sent_per_s: f64,
    /// Broker acks in this interval.
    pub(crate) confirmed: u64,
    /// Of which per second.
    pub(crate) confirmed_per_s: f64,
    /// Broker nacks in this interval.
    pub(crate) nacked: u64,
    /// Returned messages in this interval.
    pub(crate) returned: u64,
    /// Messages received in this interval.
    pub(crate) received: u64,
    /// Of which per second.
    pub(crate) received_per_s: f64,
    /// End-to-end latency of the messages received in this interval; null if none was timed.
    pub(crate) latency_us: Option<Percentiles>,
}

impl IntervalLine {
    /// The line for `delta` over `interval`, ending `elapsed` into the run.
    pub(crate) fn new(elapsed: Duration, interval: Duration, delta: Snapshot, latency: Option<Percentiles>) -> Self {
        IntervalLine {
            kind: "interval",
            elapsed_s: seconds(elapsed),
            sent: delta.sent,
            sent_per_s: per_second(delta.sent, interval),
            confirmed: delta.confirmed,
            confirmed_per_s: per_second(delta.confirmed, interval),
            nacked: delta.nacked,
            returned: delta.returned,
            received: delta.received,
            received_per_s: per_second(delta.received, interval),
            latency_us: latency,
        }
    }

    /// The text form.
    fn text(&self) -> String {
        let mut line = format!(
            "time {:.3} s, sent {:.0} msg/s, confirmed {:.0} msg/s, nacked {}, returned {}, received {:.0} msg/s, latency ",
            self.elapsed_s, self.sent_per_s, self.confirmed_per_s, self.nacked, self.returned, self.received_per_s
        );
        match &self.latency_us {
            Some(p) => {
                let _ = write!(line, "p50/p95/p99 {}/{}/{} µs", p.p50, p.p95, p.p99);
            }
            None => line.push('-'),
        }
        line
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    /// Always "summary".
    #[serde(rename = "type")]
    kind: &'static str,
    /// The `--id`, if given.
    pub(crate) id: Option<String>,
    /// The broker used (its URI without the password).
    pub(crate) broker: String,
    /// The queue used.
    pub(crate) queue: String,
    /// Producers.
    pub(crate) producers: u32,
    /// Consumers.
    pub(crate) consumers: u32,
    /// Body size in bytes.
    pub(crate) size: u32,
    /// Confirm window per producer; 0 without confirms.
    pub(crate) confirm_window: u32,
    /// Seconds from the start of publishing to the end of the run (draining included).
    pub(crate) elapsed_s: f64,
    /// Seconds until every producer had finished publishing.
    pub(crate) publishing_s: f64,
    /// Messages handed to the connections.
    pub(crate) sent: u64,
    /// Broker acks (returned messages included: the broker acks those too).
    pub(crate) confirmed: u64,
    /// Broker nacks.
    pub(crate) nacked: u64,
    /// Messages returned as unroutable (mandatory only).
    pub(crate) returned: u64,
    /// Sent messages whose confirm had not come when the run ended; null without confirms.
    pub(crate) unconfirmed: Option<u64>,
    /// Messages received by the consumers.
    pub(crate) received: u64,
    /// Sent per second of publishing.
    pub(crate) sent_per_s: f64,
    /// Confirmed per second of publishing.
    pub(crate) confirmed_per_s: f64,
    /// Received per second of the whole run.
    pub(crate) received_per_s: f64,
    /// Whether the consumers received every routed message before the drain timeout;
    /// null when the run stopped before draining, or had no consumers.
    pub(crate) drained: Option<bool>,
    /// Stopped with Ctrl-C.
    pub(crate) interrupted: bool,
    /// What failed, if something did (the exit status is then 1).
    pub(crate) error: Option<String>,
    /// End-to-end latency over the whole run; null if no message was timed.
    pub(crate) latency_us: Option<LatencySummary>,
}

/// The parts of a summary the run fills in from its configuration.
#[derive(Debug, Clone)]
pub(crate) struct RunShape {
    /// The `--id`, if given.
    pub(crate) id: Option<String>,
    /// The broker used.
    pub(crate) broker: String,
    /// The queue used.
    pub(crate) queue: String,
    /// Producers.
    pub(crate) producers: u32,
    /// Consumers.
    pub(crate) consumers: u32,
    /// Body size.
    pub(crate) size: u32,
    /// Confirm window.
    pub(crate) confirm_window: u32,
}

/// How the run ended, for its summary.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunEnd {
    /// From the start of publishing to the end.
    pub(crate) elapsed: Duration,
    /// From the start of publishing until every producer had finished.
    pub(crate) publishing: Duration,
    /// Whether the drain completed (see [`Summary::drained`]).
    pub(crate) drained: Option<bool>,
    /// Stopped with Ctrl-C.
    pub(crate) interrupted: bool,
    /// What failed.
    pub(crate) error: Option<String>,
}

impl Summary {
    /// The summary of a run of `shape` that counted `totals` and ended as `end`.
    pub(crate) fn new(shape: RunShape, totals: Snapshot, end: RunEnd, latency: Option<LatencySummary>) -> Self {
        let unconfirmed =
            (shape.confirm_window > 0).then(|| totals.sent.saturating_sub(totals.confirmed + totals.nacked));
        Summary {
            kind: "summary",
            id: shape.id,
            broker: shape.broker,
            queue: shape.queue,
            producers: shape.producers,
            consumers: shape.consumers,
            size: shape.size,
            confirm_window: shape.confirm_window,
            elapsed_s: seconds(end.elapsed),
            publishing_s: seconds(end.publishing),
            sent: totals.sent,
            confirmed: totals.confirmed,
            nacked: totals.nacked,
            returned: totals.returned,
            unconfirmed,
            received: totals.received,
            sent_per_s: per_second(totals.sent, end.publishing),
            confirmed_per_s: per_second(totals.confirmed, end.publishing),
            received_per_s: per_second(totals.received, end.elapsed),
            drained: end.drained,
            interrupted: end.interrupted,
            error: end.error,
            latency_us: latency,
        }
    }

    /// The text form, a few lines.
    fn text(&self) -> String {
        let mut text = format!(
            "summary: {:.3} s (publishing {:.3} s), sent {} ({:.0} msg/s), confirmed {} ({:.0} msg/s), nacked {}, \
             returned {}",
            self.elapsed_s,
            self.publishing_s,
            self.sent,
            self.sent_per_s,
            self.confirmed,
            self.confirmed_per_s,
            self.nacked,
            self.returned
        );
        if let Some(unconfirmed) = self.unconfirmed {
            let _ = write!(text, ", unconfirmed {unconfirmed}");
        }
        let _ = write!(text, ", received {} ({:.0} msg/s)", self.received, self.received_per_s);
        match &self.latency_us {
            Some(l) => {
                let _ = write!(
                    text,
                    "\nlatency µs: min {}, mean {:.0}, p50 {}, p95 {}, p99 {}, p99.9 {}, max {} ({} messages timed)",
                    l.min, l.mean, l.p50, l.p95, l.p99, l.p999, l.max, l.samples
                );
            }
            None => text.push_str("\nlatency: no message timed"),
        }
        if self.drained == Some(false) {
            text.push_str("\ndrain timed out: the consumers did not receive every routed message");
        }
        if self.interrupted {
            text.push_str("\ninterrupted (Ctrl-C)");
        }
        if let Some(error) = &self.error {
            let _ = write!(text, "\nerror: {error}");
        }
        text
    }
}

/// Prints lines as text or JSON.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Printer {
    json: bool,
}

impl Printer {
    /// A printer for text, or for JSON lines.
    pub(crate) fn new(json: bool) -> Self {
        Printer { json }
    }

    /// What the run is about to do; text mode only, so that `--json` prints nothing but
    /// the interval lines and the summary.
    pub(crate) fn header(self, shape: &RunShape) {
        if !self.json {
            let confirms = match shape.confirm_window {
                0 => "no confirms".to_owned(),
                window => format!("confirm window {window}"),
            };
            let id = shape.id.as_deref().map(|id| format!(" {id}")).unwrap_or_default();
            emit(&format!(
                "lepus-perf{id}: {} producer(s), {} consumer(s), {} B messages, {confirms}, queue {:?}, broker {}",
                shape.producers, shape.consumers, shape.size, shape.queue, shape.broker
            ));
        }
    }

    /// One interval line.
    pub(crate) fn interval(self, line: &IntervalLine) {
        self.print(line, IntervalLine::text);
    }

    /// The summary.
    pub(crate) fn summary(self, summary: &Summary) {
        self.print(summary, Summary::text);
    }

    fn print<T: Serialize>(self, value: &T, text: impl Fn(&T) -> String) {
        if self.json {
            // These types serialise without fail (plain fields, string keys).
            if let Ok(json) = serde_json::to_string(value) {
                emit(&json);
            }
        } else {
            emit(&text(value));
        }
    }
}

/// A warning or error on stderr, prefixed with the program's name.
pub(crate) fn warn(message: &str) {
    let _ = writeln!(io::stderr().lock(), "lepus-perf: {message}");
}

fn emit(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Seconds, to the millisecond.
fn seconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// `count` per second over `over`, to a tenth; 0 over no time.
fn per_second(count: u64, over: Duration) -> f64 {
    let secs = over.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    // Counts stay far below 2^53, where f64 is exact.
    #[allow(clippy::cast_precision_loss)]
    let rate = count as f64 / secs;
    (rate * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(sent: u64, confirmed: u64, received: u64) -> Snapshot {
        Snapshot { sent, confirmed, nacked: 0, returned: 0, received }
    }

    #[test]
    fn an_interval_line_in_both_forms() {
        let p = Percentiles { p50: 100, p95: 200, p99: 300 };
        let line = IntervalLine::new(Duration::from_secs(2), Duration::from_millis(500), snapshot(50, 40, 30), Some(p));
        #[allow(clippy::float_cmp)] // exact: small integers
        {
            assert_eq!((line.sent_per_s, line.confirmed_per_s, line.received_per_s), (100.0, 80.0, 60.0));
        }
        assert_eq!(
            line.text(),
            "time 2.000 s, sent 100 msg/s, confirmed 80 msg/s, nacked 0, returned 0, received 60 msg/s, \
             latency p50/p95/p99 100/200/300 µs"
        );
        let json: serde_json::Value = serde_json::to_value(&line).expect("serialises");
        assert_eq!(json["type"], "interval");
        assert_eq!(json["latency_us"]["p99"], 300);
        let quiet = IntervalLine::new(Duration::from_secs(1), Duration::ZERO, Snapshot::default(), None);
        assert!(quiet.sent_per_s.abs() < f64::EPSILON);
        assert!(serde_json::to_value(&quiet).expect("serialises")["latency_us"].is_null());
    }

    #[test]
    fn a_summary_counts_what_is_unconfirmed_only_with_confirms() {
        let shape = RunShape {
            id: None,
            broker: "amqp://x".into(),
            queue: "q \"quoted\"".into(),
            producers: 1,
            consumers: 1,
            size: 12,
            confirm_window: 10,
        };
        let end = RunEnd { elapsed: Duration::from_secs(2), publishing: Duration::from_secs(1), ..RunEnd::default() };
        let s = Summary::new(shape.clone(), snapshot(10, 7, 7), end.clone(), None);
        assert_eq!(s.unconfirmed, Some(3));
        #[allow(clippy::float_cmp)] // exact: halves
        {
            assert_eq!((s.sent_per_s, s.received_per_s), (10.0, 3.5));
        }
        let json = serde_json::to_string(&s).expect("serialises");
        let back: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(back["queue"], "q \"quoted\"");
        let no_confirms = Summary::new(RunShape { confirm_window: 0, ..shape }, snapshot(10, 0, 10), end, None);
        assert_eq!(no_confirms.unconfirmed, None);
        assert!(no_confirms.text().contains("no message timed"));
    }
}
