//! Clocks of a timed section, and percentiles.
//!
//! CPU time is `getrusage(RUSAGE_SELF)`, user + system of every thread of the process, as
//! BENCHMARKS.md defines it. It comes from `nix` because the workspace forbids `unsafe`
//! and `nix` wraps the call safely. (`/proc/self/stat` would need no crate but counts in
//! clock ticks of 10 ms, too coarse for a one-second section; `/proc/self/schedstat`
//! covers only the main thread, missing lapin's I/O thread and tokio's workers.) The
//! other costs of a section (broker CPU, system calls, context switches, TCP segments)
//! are sampled with it: see [`super::counters`].

use std::time::{Duration, Instant};

pub use super::counters::process_cpu;
use super::counters::{Costs, Sample, sample_end, sample_start};

/// A timed section in progress: wall clock and counters at its start.
#[derive(Debug, Clone, Copy)]
pub struct Section {
    wall: Instant,
    start: Sample,
}

/// What a timed section took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Process CPU seconds (user + system).
    pub cpu_s: f64,
    /// Broker CPU, system calls, context switches, segments.
    pub costs: Costs,
}

impl Section {
    /// Starts the clocks; call immediately before the section's first operation.
    pub fn start() -> Section {
        let start = sample_start();
        Section { wall: Instant::now(), start }
    }

    /// Stops the clocks.
    pub fn stop(self) -> Measured {
        let seconds = self.wall.elapsed().as_secs_f64();
        let end = sample_end();
        let cpu_s = end.cpu().saturating_sub(self.start.cpu()).as_secs_f64();
        Measured { seconds, cpu_s, costs: self.start.costs_until(&end) }
    }
}

/// Jiffies the whole machine has spent (busy, total) so far, from `/proc/stat`.
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let total: u64 = fields.iter().sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Share (0 to 1) of all cores that was busy during the last `window`, or `None` if
/// `/proc/stat` cannot be read.
#[allow(clippy::cast_precision_loss, reason = "jiffy counts over a short window are small")]
pub fn machine_busy(window: Duration) -> Option<f64> {
    let (busy0, total0) = machine_jiffies()?;
    std::thread::sleep(window);
    let (busy1, total1) = machine_jiffies()?;
    let total = total1.saturating_sub(total0);
    (total > 0).then(|| busy1.saturating_sub(busy0) as f64 / total as f64)
}

/// Waits (up to `limit`) until the machine is quiet — under `threshold` of its cores busy
/// over 200 ms — so that a run does not start while the broker still cleans up after the
/// last one or another process is busy. Returns the last busy share measured.
pub fn wait_for_quiet(threshold: f64, limit: Duration) -> Option<f64> {
    let give_up = Instant::now() + limit;
    loop {
        let busy = machine_busy(Duration::from_millis(200))?;
        if busy < threshold || Instant::now() >= give_up {
            return Some(busy);
        }
    }
}

/// Nearest-rank percentile of sorted samples: `sorted[ceil(p/100 * count) - 1]`.
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    reason = "sample counts are small; the rank is non-negative by construction"
)]
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// p50 and p99 of round-trip times, in microseconds.
pub fn rtt_percentiles(rtts: &[Duration]) -> (Option<f64>, Option<f64>) {
    let mut us: Vec<f64> = rtts.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    (percentile(&us, 50.0), percentile(&us, 99.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn machine_load_is_a_share() {
        let busy = machine_busy(Duration::from_millis(20)).unwrap();
        assert!((0.0..=1.0).contains(&busy), "{busy}");
        assert!(wait_for_quiet(1.1, Duration::ZERO).is_some());
    }

    #[test]
    fn cpu_clock_advances_with_work() {
        // Spin until the process clock shows 20 ms of work; on a busy machine that takes
        // longer in wall time, so the bound is generous.
        let section = Section::start();
        let start = process_cpu();
        let give_up = Instant::now() + Duration::from_secs(20);
        let mut x = 0u64;
        while process_cpu().saturating_sub(start) < Duration::from_millis(20) && Instant::now() < give_up {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let m = section.stop();
        assert!(m.cpu_s >= 0.02, "{m:?}");
        assert!(m.seconds > 0.0, "{m:?}");
    }
}
