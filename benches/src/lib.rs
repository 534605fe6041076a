//! Shared helpers for lepus's benchmarks.
//!
//! - [`Routine`] is a benchmark body that runs a batch of iterations and times it; criterion
//!   and [`interleaved_min`] drive the same routines.
//! - [`Recorder`] keeps criterion's samples of every routine and the interleaved timings, so
//!   that the bench binary can print a lepus-against-the-other-codec table at the end.
//! - [`refill_bytes_mut`] and [`refill_vec`] put a prepared frame sequence back into a
//!   reused read buffer with the same work for both codecs: one `memcpy`, no allocation.
//! - [`fixtures`] builds the lepus side of the codec benchmarks' inputs.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    hint::black_box,
    marker::PhantomData,
    ops::Range,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use bytes::BytesMut;

pub mod broker;
pub mod fixtures;

/// A benchmark body.
pub trait Routine {
    /// Runs the body `iters` times back to back and returns how long that took.
    fn run_batch(&mut self, iters: u64) -> Duration;
}

/// A closure as a [`Routine`]; each output goes through [`black_box`]. Made by [`routine`].
pub struct Closure<F, O>(F, PhantomData<fn() -> O>);

/// Wraps `body` as a [`Routine`].
pub fn routine<F: FnMut() -> O, O>(body: F) -> Closure<F, O> {
    Closure(body, PhantomData)
}

impl<F: FnMut() -> O, O> Routine for Closure<F, O> {
    fn run_batch(&mut self, iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            black_box((self.0)());
        }
        start.elapsed()
    }
}

/// Times `routines` in turn, round after round, and returns each one's fastest round in
/// nanoseconds per iteration.
///
/// On a shared machine other work comes and goes; running the codecs in alternation puts
/// them under the same conditions, and the fastest of many short rounds is the run least
/// disturbed. Each routine's batch is sized to take about `batch`.
#[allow(clippy::cast_precision_loss, reason = "iteration counts are far below 2^52")]
pub fn interleaved_min(routines: &mut [&mut dyn Routine], rounds: usize, batch: Duration) -> Vec<f64> {
    let iters: Vec<u64> = routines
        .iter_mut()
        .map(|r| {
            let mut n = 1u64;
            while n < 1 << 40 && r.run_batch(n) < batch {
                n *= 2;
            }
            n
        })
        .collect();
    let mut best = vec![f64::INFINITY; routines.len()];
    for _ in 0..rounds {
        for ((r, &n), best) in routines.iter_mut().zip(&iters).zip(&mut best) {
            let ns = r.run_batch(n).as_secs_f64() * 1e9 / n as f64;
            *best = best.min(ns);
        }
    }
    best
}

/// One call of a benchmark routine by criterion: `iters` iterations took `elapsed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Iterations run back to back.
    pub iters: u64,
    /// Wall time they took together.
    pub elapsed: Duration,
}

#[derive(Debug, Default)]
struct Timings {
    samples: BTreeMap<String, Vec<Sample>>,
    interleaved: BTreeMap<String, f64>,
}

/// Timings of every benchmark routine, by benchmark id.
///
/// Criterion calls a routine once per warm-up step and then once per sample, always last;
/// [`Recorder::criterion_ns`] fits the same least-squares line through the origin that
/// criterion reports as its point estimate, over the last `sample_size` calls.
#[derive(Debug, Default)]
pub struct Recorder {
    timings: Mutex<Timings>,
}

impl Recorder {
    /// An empty recorder (usable in a `static`).
    pub const fn new() -> Self {
        Recorder { timings: Mutex::new(Timings { samples: BTreeMap::new(), interleaved: BTreeMap::new() }) }
    }

    fn timings(&self) -> std::sync::MutexGuard<'_, Timings> {
        self.timings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds one criterion sample under `id`.
    pub fn record(&self, id: &str, sample: Sample) {
        self.timings().samples.entry(id.to_owned()).or_default().push(sample);
    }

    /// True if criterion measured `id` (took at least two samples: not a `--test` run, and
    /// not filtered out).
    pub fn measured(&self, id: &str) -> bool {
        self.timings().samples.get(id).is_some_and(|s| s.len() >= 2)
    }

    /// Criterion's estimate for `id` in nanoseconds per iteration: the slope of a
    /// least-squares fit through the origin over its last `last` samples. `None` without at
    /// least two samples.
    #[allow(clippy::cast_precision_loss, reason = "iteration counts are far below 2^52")]
    pub fn criterion_ns(&self, id: &str, last: usize) -> Option<f64> {
        let timings = self.timings();
        let all = timings.samples.get(id)?;
        let tail = all.get(all.len().saturating_sub(last)..)?;
        if tail.len() < 2 {
            return None;
        }
        let (mut xy, mut xx) = (0.0_f64, 0.0_f64);
        for s in tail {
            let x = s.iters as f64;
            xy += x * s.elapsed.as_secs_f64() * 1e9;
            xx += x * x;
        }
        (xx > 0.0).then(|| xy / xx)
    }

    /// Stores the [`interleaved_min`] result for `id`.
    pub fn set_interleaved(&self, id: &str, ns: f64) {
        self.timings().interleaved.insert(id.to_owned(), ns);
    }

    /// The [`interleaved_min`] result for `id`, if it was timed.
    pub fn interleaved(&self, id: &str) -> Option<f64> {
        self.timings().interleaved.get(id).copied()
    }

    /// The comparison table for `rows`, one line per row whose sides were both timed by
    /// [`interleaved_min`], or `None` if no row was. `last` is the number of samples
    /// criterion takes per benchmark; `other` names the codec lepus is compared with.
    #[allow(clippy::cast_precision_loss, reason = "byte counts are far below 2^52")]
    pub fn ratio_table(&self, rows: &[Row<'_>], last: usize, other: &str) -> Option<String> {
        let width = rows.iter().map(|r| r.label.len()).max().unwrap_or(0).max(9);
        let other_ns = format!("{other} ns/op");
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:width$}  {:>7}  {:>11} {:>7}  {:>w2$} {:>7}  {:>7}  {:>9}  {:>11}",
            "benchmark",
            "bytes",
            "lepus ns/op",
            "GB/s",
            other_ns,
            "GB/s",
            "ratio",
            "net ratio",
            "crit. ratio",
            w2 = other_ns.len(),
        );
        let mut any = false;
        for row in rows {
            let (Some(lepus), Some(theirs)) = (self.interleaved(row.lepus), self.interleaved(row.other)) else {
                continue;
            };
            any = true;
            let gbps = |ns: f64| row.bytes as f64 / ns;
            let ratio = |a: f64, b: f64| format!("{:.2}x", a / b);
            // With an equal, separately measured cost (the buffer refill) subtracted from both.
            let net = row
                .baseline
                .and_then(|id| self.interleaved(id))
                .filter(|base| *base < lepus)
                .map_or_else(|| "-".to_owned(), |base| ratio(theirs - base, lepus - base));
            let criterion = match (self.criterion_ns(row.lepus, last), self.criterion_ns(row.other, last)) {
                (Some(l), Some(t)) => ratio(t, l),
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "{:width$}  {:>7}  {:>11.1} {:>7.2}  {:>w2$.1} {:>7.2}  {:>7}  {:>9}  {:>11}",
                row.label,
                row.bytes,
                lepus,
                gbps(lepus),
                theirs,
                gbps(theirs),
                ratio(theirs, lepus),
                net,
                criterion,
                w2 = other_ns.len(),
            );
        }
        any.then_some(out)
    }
}

/// One line of [`Recorder::ratio_table`]: two benchmark ids that did the same work.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    /// What the line is called.
    pub label: &'a str,
    /// Bytes processed per iteration, for GB/s.
    pub bytes: u64,
    /// Benchmark id of the lepus side.
    pub lepus: &'a str,
    /// Benchmark id of the other codec's side.
    pub other: &'a str,
    /// Benchmark id of a cost both sides include (refilling the read buffer), subtracted
    /// for the "net ratio" column.
    pub baseline: Option<&'a str>,
}

/// Empties `buf` and copies `wire` into it. Once the frames decoded from the previous fill
/// are dropped, `BytesMut::reserve` takes back the whole allocation, so this is one
/// `memcpy`, like [`refill_vec`].
pub fn refill_bytes_mut(buf: &mut BytesMut, wire: &[u8]) {
    buf.clear();
    buf.extend_from_slice(wire);
}

/// Empties `buf` and copies `wire` into it: one `memcpy` into the existing allocation.
pub fn refill_vec(buf: &mut Vec<u8>, wire: &[u8]) {
    buf.clear();
    buf.extend_from_slice(wire);
}

/// The addresses `bytes` occupies.
pub fn address_range(bytes: &[u8]) -> Range<usize> {
    let start = bytes.as_ptr() as usize;
    start..start + bytes.len()
}

/// True if `inner` is non-empty and lies wholly within `outer` (an [`address_range`]).
pub fn points_into(outer: &Range<usize>, inner: &[u8]) -> bool {
    let inner = address_range(inner);
    !inner.is_empty() && outer.start <= inner.start && inner.end <= outer.end
}

/// The value of a `--name value` (or `--name=value`) command-line option, if given.
pub fn option_value(args: &[String], name: &str) -> Option<String> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == name {
            return iter.next().cloned();
        }
        if let Some(value) = arg.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')) {
            return Some(value.to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criterion_slope_fits_the_last_samples_through_the_origin() {
        let r = Recorder::new();
        // A slow warm-up sample that must be ignored, then 10 ns/iter exactly.
        r.record("x", Sample { iters: 1, elapsed: Duration::from_micros(1) });
        for i in 1..=4u64 {
            r.record("x", Sample { iters: i * 100, elapsed: Duration::from_nanos(i * 1000) });
        }
        let ns = r.criterion_ns("x", 4).unwrap();
        assert!((ns - 10.0).abs() < 1e-9, "{ns}");
        assert!(r.measured("x"));
        assert_eq!(r.criterion_ns("missing", 4), None);
        r.record("one", Sample { iters: 5, elapsed: Duration::from_nanos(50) });
        assert_eq!(r.criterion_ns("one", 4), None);
        assert!(!r.measured("one"));
    }

    #[test]
    fn table_has_a_line_per_timed_row() {
        let r = Recorder::new();
        for (id, ns) in [("a/lepus", 10), ("a/other", 40), ("a/base", 5)] {
            for i in 1..=3u64 {
                r.record(id, Sample { iters: i, elapsed: Duration::from_nanos(i * ns) });
            }
        }
        for (id, ns) in [("a/lepus", 10.0), ("a/other", 30.0), ("a/base", 5.0)] {
            r.set_interleaved(id, ns);
        }
        let rows = [
            Row { label: "a", bytes: 100, lepus: "a/lepus", other: "a/other", baseline: Some("a/base") },
            Row { label: "b", bytes: 100, lepus: "b/lepus", other: "b/other", baseline: None },
        ];
        let table = r.ratio_table(&rows, 3, "amq").unwrap();
        assert_eq!(table.lines().count(), 2, "{table}");
        // Interleaved ratio, net ratio, criterion's ratio.
        assert!(table.contains("3.00x") && table.contains("5.00x") && table.contains("4.00x"), "{table}");
        assert!(r.ratio_table(&rows[1..], 3, "amq").is_none());
    }

    #[test]
    fn interleaved_min_times_every_routine() {
        let mut count = 0u64;
        let mut a = routine(|| {
            count += 1;
            count
        });
        let mut b = routine(|| std::thread::sleep(Duration::from_micros(50)));
        let ns = interleaved_min(&mut [&mut a, &mut b], 3, Duration::from_micros(200));
        assert_eq!(ns.len(), 2);
        assert!(ns[0] < ns[1], "{ns:?}");
        assert!(ns[1] >= 50_000.0, "{ns:?}");
    }

    #[test]
    fn options_and_pointers() {
        let args: Vec<String> = ["bench", "--sample-size", "20", "--noise=0.1"].map(String::from).to_vec();
        assert_eq!(option_value(&args, "--sample-size").as_deref(), Some("20"));
        assert_eq!(option_value(&args, "--noise").as_deref(), Some("0.1"));
        assert_eq!(option_value(&args, "--missing"), None);
        let buf = [0u8; 16];
        let range = address_range(&buf);
        assert!(points_into(&range, &buf[4..8]));
        assert!(!points_into(&range, &[1u8; 4]));
        assert!(!points_into(&range, &buf[4..4]));
    }
}
