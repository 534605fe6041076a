//! Signals from the tasks to the run that move it from one phase to the next: every
//! producer has finished publishing (and its confirms are in), and the consumers have
//! received what they were waiting for.
//!
//! Each has a single waiter, the run, so `Notify::notify_one` is enough: it keeps a permit
//! when nobody waits yet, and the waiter checks the condition again after every wake-up.

use std::sync::{
    Arc,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

use tokio::sync::Notify;

/// How many producers are still publishing or awaiting confirms.
#[derive(Debug)]
pub(crate) struct Publishing {
    active: AtomicUsize,
    idle: Notify,
}

/// Held by a producer while it publishes; dropping it (also on an error) says it finished.
#[derive(Debug)]
pub(crate) struct PublishingGuard(Arc<Publishing>);

impl Drop for PublishingGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_one();
        }
    }
}

impl Publishing {
    /// No producer publishing yet.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Publishing { active: AtomicUsize::new(0), idle: Notify::new() })
    }

    /// Counts one more producer publishing until the guard is dropped.
    pub(crate) fn start(self: &Arc<Self>) -> PublishingGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        PublishingGuard(self.clone())
    }

    /// Resolves once no producer publishes any more (at once if none ever did).
    pub(crate) async fn finished(&self) {
        while self.active.load(Ordering::Acquire) > 0 {
            self.idle.notified().await;
        }
    }
}

/// How many received messages end the run once publishing has stopped. Until a target is
/// set it is unreachable; a consumer that brings the total to the target wakes the waiter.
#[derive(Debug)]
pub(crate) struct Drain {
    target: AtomicU64,
    reached: Notify,
}

impl Default for Drain {
    fn default() -> Self {
        Drain { target: AtomicU64::new(u64::MAX), reached: Notify::new() }
    }
}

impl Drain {
    /// Sets the target. The caller then checks the count itself before waiting: the last
    /// message may have arrived before the target was set.
    pub(crate) fn set_target(&self, received: u64) {
        self.target.store(received, Ordering::Release);
    }

    /// A consumer's report of the run's total after one more message.
    pub(crate) fn observe(&self, received: u64) {
        if received >= self.target.load(Ordering::Acquire) {
            self.reached.notify_one();
        }
    }

    /// Resolves after a consumer reached the target (or on a stale permit: check again).
    pub(crate) async fn reached(&self) {
        self.reached.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const BOUND: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn the_drain_wakes_when_the_target_was_reached_before_waiting() {
        let drain = Drain::default();
        drain.observe(5); // no target yet: no permit
        drain.set_target(6);
        drain.observe(6);
        tokio::time::timeout(BOUND, drain.reached()).await.expect("woken");
    }

    #[tokio::test]
    async fn publishing_finishes_when_the_last_guard_goes() {
        let publishing = Publishing::new();
        tokio::time::timeout(BOUND, publishing.finished()).await.expect("none started: finished");
        let a = publishing.start();
        let b = publishing.start();
        drop(a);
        assert!(tokio::time::timeout(Duration::from_millis(50), publishing.finished()).await.is_err());
        drop(b);
        tokio::time::timeout(BOUND, publishing.finished()).await.expect("both dropped");
    }
}
