//! The test process's resident memory (`VmRSS` in `/proc/self/status`), read directly or
//! sampled by a thread, for the catalogue's memory bounds (R3, R5).
//!
//! RSS covers the whole process: a test measuring it must be the only thing running in its
//! test binary (see `tests/memory_bounds.rs`, which runs its tests one at a time).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

/// The process's resident set size in bytes.
///
/// # Panics
///
/// If `/proc/self/status` cannot be read or has no `VmRSS` line (not Linux).
pub fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status is readable");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmRSS in kB");
    kib * 1024
}

/// A thread that reads [`rss`] every `interval` and keeps the highest value seen, so that a
/// peak between two of the test's own readings is not missed.
#[derive(Debug)]
pub struct PeakRss {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PeakRss {
    /// Starts sampling now.
    ///
    /// # Panics
    ///
    /// If the thread cannot be spawned.
    pub fn start(interval: Duration) -> PeakRss {
        let peak = Arc::new(AtomicU64::new(rss()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::Builder::new()
                .name("rss-sampler".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        peak.fetch_max(rss(), Ordering::AcqRel);
                        std::thread::sleep(interval);
                    }
                })
                .expect("spawn the RSS sampler")
        };
        PeakRss { peak, stop, thread: Some(thread) }
    }

    /// The highest RSS seen so far, in bytes (including a reading taken now).
    pub fn peak(&self) -> u64 {
        self.peak.fetch_max(rss(), Ordering::AcqRel).max(self.peak.load(Ordering::Acquire))
    }
}

impl Drop for PeakRss {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `bytes` in MiB, for messages.
pub fn mib(bytes: u64) -> f64 {
    // Exact to the KiB up to 4 PiB: plenty for an RSS.
    f64::from(u32::try_from(bytes >> 10).unwrap_or(u32::MAX)) / 1024.0
}
