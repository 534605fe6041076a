//! What a run counts: message counters shared by every task, and latency histograms (one
//! per consumer, collected once a second).

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hdrhistogram::{CreationError, Histogram};

/// Latencies above this (an hour, in µs) are recorded as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Significant decimal digits of every latency value: 0.1% resolution.
const SIGNIFICANT_DIGITS: u8 = 3;

/// Message counters of a run; every task adds to them, the reporter reads them.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    sent: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    returned: AtomicU64,
    received: AtomicU64,
}

/// The counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Messages handed to a connection.
    pub(crate) sent: u64,
    /// Messages the broker acked (returned ones included: the broker acks those too).
    pub(crate) confirmed: u64,
    /// Messages the broker nacked.
    pub(crate) nacked: u64,
    /// Mandatory messages the broker returned as unroutable.
    pub(crate) returned: u64,
    /// Messages consumers received (and acked, unless autoack).
    pub(crate) received: u64,
}

impl Snapshot {
    /// What happened between `earlier` and `self`.
    pub(crate) fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            sent: self.sent.saturating_sub(earlier.sent),
            confirmed: self.confirmed.saturating_sub(earlier.confirmed),
            nacked: self.nacked.saturating_sub(earlier.nacked),
            returned: self.returned.saturating_sub(earlier.returned),
            received: self.received.saturating_sub(earlier.received),
        }
    }
}

impl Counters {
    /// One message handed to a connection.
    pub(crate) fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// One broker ack.
    pub(crate) fn confirmed(&self) {
        self.confirmed.fetch_add(1, Ordering::Relaxed);
    }

    /// One broker nack.
    pub(crate) fn nacked(&self) {
        self.nacked.fetch_add(1, Ordering::Relaxed);
    }

    /// One returned message.
    pub(crate) fn returned(&self) {
        self.returned.fetch_add(1, Ordering::Relaxed);
    }

    /// One message received; returns the run's total so far.
    pub(crate) fn received(&self) -> u64 {
        self.received.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The counters now.
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            sent: self.sent.load(Ordering::Relaxed),
            confirmed: self.confirmed.load(Ordering::Relaxed),
            nacked: self.nacked.load(Ordering::Relaxed),
            returned: self.returned.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
        }
    }
}

/// A latency histogram in microseconds.
#[derive(Debug, Clone)]
pub(crate) struct Latencies(Histogram<u64>);

/// Percentiles of one second's latencies, in µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Percentiles {
    /// Median.
    pub(crate) p50: u64,
    /// 95th percentile.
    pub(crate) p95: u64,
    /// 99th percentile.
    pub(crate) p99: u64,
}

/// The whole run's latency distribution, in µs.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub(crate) struct LatencySummary {
    /// Messages timed.
    pub(crate) samples: u64,
    /// Lowest.
    pub(crate) min: u64,
    /// Mean.
    pub(crate) mean: f64,
    /// Median.
    pub(crate) p50: u64,
    /// 95th percentile.
    pub(crate) p95: u64,
    /// 99th percentile.
    pub(crate) p99: u64,
    /// 99.9th percentile.
    pub(crate) p999: u64,
    /// Highest.
    pub(crate) max: u64,
}

impl Latencies {
    /// An empty histogram from 1 µs to an hour at 3 significant digits.
    pub(crate) fn new() -> Result<Self, CreationError> {
        Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGNIFICANT_DIGITS).map(Latencies)
    }

    /// Records one latency (an hour or more counts as an hour).
    pub(crate) fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(us.min(MAX_LATENCY_US));
    }

    /// Adds another histogram's samples.
    pub(crate) fn add(&mut self, other: &Latencies) {
        // Same bounds on both sides and every value recorded within them: adding cannot
        // fail, and there is nothing to report if it did.
        let _ = self.0.add(&other.0);
    }

    /// Forgets every sample.
    pub(crate) fn reset(&mut self) {
        self.0.reset();
    }

    /// Samples recorded.
    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.0.len()
    }

    /// p50/p95/p99, or `None` without samples.
    pub(crate) fn percentiles(&self) -> Option<Percentiles> {
        (!self.0.is_empty()).then(|| Percentiles {
            p50: self.0.value_at_quantile(0.50),
            p95: self.0.value_at_quantile(0.95),
            p99: self.0.value_at_quantile(0.99),
        })
    }

    /// The distribution, or `None` without samples.
    pub(crate) fn summary(&self) -> Option<LatencySummary> {
        (!self.0.is_empty()).then(|| LatencySummary {
            samples: self.0.len(),
            min: self.0.min(),
            // To a tenth of a µs: the histogram's resolution is coarser anyway.
            mean: (self.0.mean() * 10.0).round() / 10.0,
            p50: self.0.value_at_quantile(0.50),
            p95: self.0.value_at_quantile(0.95),
            p99: self.0.value_at_quantile(0.99),
            p999: self.0.value_at_quantile(0.999),
            max: self.0.max(),
        })
    }
}

/// One consumer's latencies since the reporter last collected them. Only that consumer
/// and, once a second, the reporter lock it, so the lock is almost never contended.
#[derive(Debug)]
pub(crate) struct Recorder(Mutex<Latencies>);

impl Recorder {
    /// A recorder starting from an empty histogram.
    pub(crate) fn new(empty: Latencies) -> Arc<Self> {
        Arc::new(Recorder(Mutex::new(empty)))
    }

    /// Records one latency.
    pub(crate) fn record(&self, latency: Duration) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).record(latency);
    }

    /// Moves what was recorded into `into` and starts afresh.
    pub(crate) fn drain_into(&self, into: &mut Latencies) {
        let mut mine = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        into.add(&mine);
        mine.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_ordered_and_absent_without_samples() {
        let mut h = Latencies::new().expect("valid bounds");
        assert_eq!(h.percentiles(), None);
        assert_eq!(h.summary(), None);
        for us in 1..=1000 {
            h.record(Duration::from_micros(us));
        }
        let p = h.percentiles().expect("samples");
        assert!(p.p50 <= p.p95 && p.p95 <= p.p99, "{p:?}");
        assert!((495..=505).contains(&p.p50), "{p:?}");
        let s = h.summary().expect("samples");
        assert_eq!((s.samples, s.min), (1000, 1));
        assert!(s.max >= 999 && s.p999 <= s.max);
    }

    #[test]
    fn huge_latencies_saturate() {
        let mut h = Latencies::new().expect("valid bounds");
        h.record(Duration::from_secs(10 * 3600));
        assert_eq!(h.len(), 1);
        assert!(h.summary().expect("one sample").max >= MAX_LATENCY_US);
    }

    #[test]
    fn a_recorder_hands_over_and_resets() {
        let empty = Latencies::new().expect("valid bounds");
        let recorder = Recorder::new(empty.clone());
        recorder.record(Duration::from_micros(10));
        recorder.record(Duration::from_micros(20));
        let mut second = empty.clone();
        recorder.drain_into(&mut second);
        assert_eq!(second.len(), 2);
        let mut next = empty;
        recorder.drain_into(&mut next);
        assert_eq!(next.len(), 0);
    }

    #[test]
    fn snapshots_subtract() {
        let c = Counters::default();
        c.sent();
        let before = c.snapshot();
        c.sent();
        c.confirmed();
        assert_eq!(c.received(), 1);
        let d = c.snapshot().since(&before);
        assert_eq!(d, Snapshot { sent: 1, confirmed: 1, nacked: 0, returned: 0, received: 1 });
    }
}
