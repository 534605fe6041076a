//! Settle-once bookkeeping: a delivery is acked, nacked or rejected at most once, and never
//! after a `multiple` ack or nack on its channel covered it. RabbitMQ answers a second
//! settlement of a tag by closing the channel with 406 ("unknown delivery tag"), which would
//! fail every other operation on it, so such a settlement is refused before it is sent.
//!
//! Two small lock-free parts: [`Settled`] per delivery, [`CoveredThrough`] per channel
//! incarnation. [`claim`] decides, and records the claim, in one step.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Whether one delivery has been settled.
#[derive(Debug, Default)]
pub(crate) struct Settled(AtomicBool);

impl Settled {
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The highest delivery tag a `multiple` ack or nack has settled on one channel incarnation:
/// every tag up to it is settled.
#[derive(Debug, Default)]
pub(crate) struct CoveredThrough(AtomicU64);

impl CoveredThrough {
    /// Whether a `multiple` settlement already covered `tag`.
    pub(crate) fn covers(&self, tag: u64) -> bool {
        tag <= self.0.load(Ordering::Acquire)
    }

    /// Records a `multiple` settlement up to `tag` (a lower one than recorded changes nothing).
    pub(crate) fn record(&self, tag: u64) {
        self.0.fetch_max(tag, Ordering::AcqRel);
    }

    /// Starts over, for a new incarnation of the channel (its tags start again at 1).
    pub(crate) fn reset(&self) {
        self.0.store(0, Ordering::Release);
    }
}

/// Why a settlement was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// This delivery was settled before, or a `multiple` settlement covered it.
    AlreadySettled,
}

/// Claims the settlement of delivery `tag` (`one` is its flag, `channel` its channel's
/// coverage); with `multiple`, also every earlier tag. Of concurrent claims exactly one wins.
pub(crate) fn claim(one: &Settled, channel: &CoveredThrough, tag: u64, multiple: bool) -> Result<(), Refused> {
    // Claimed first, so that of two racing callers only one can pass.
    if one.0.swap(true, Ordering::AcqRel) || channel.covers(tag) {
        return Err(Refused::AlreadySettled);
    }
    if multiple {
        channel.record(tag);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;

    #[test]
    fn a_delivery_settles_once() {
        let (one, channel) = (Settled::default(), CoveredThrough::default());
        assert_eq!(claim(&one, &channel, 5, false), Ok(()));
        assert!(one.is_set());
        assert_eq!(claim(&one, &channel, 5, false), Err(Refused::AlreadySettled));
        assert_eq!(claim(&one, &channel, 5, true), Err(Refused::AlreadySettled));
    }

    #[test]
    fn a_multiple_settlement_covers_earlier_tags_only() {
        let channel = CoveredThrough::default();
        let (three, five, six) = (Settled::default(), Settled::default(), Settled::default());
        assert_eq!(claim(&five, &channel, 5, true), Ok(()));
        assert!(channel.covers(1) && channel.covers(5) && !channel.covers(6));
        assert_eq!(claim(&three, &channel, 3, false), Err(Refused::AlreadySettled));
        assert_eq!(claim(&six, &channel, 6, false), Ok(()));
    }

    #[test]
    fn a_lower_multiple_does_not_shrink_the_coverage() {
        let channel = CoveredThrough::default();
        channel.record(9);
        channel.record(4);
        assert!(channel.covers(9));
        channel.reset();
        assert!(!channel.covers(1));
    }

    #[test]
    fn a_refused_multiple_records_nothing() {
        let (one, channel) = (Settled::default(), CoveredThrough::default());
        assert_eq!(claim(&one, &channel, 7, false), Ok(()));
        assert_eq!(claim(&one, &channel, 7, true), Err(Refused::AlreadySettled));
        assert!(!channel.covers(7));
    }

    #[test]
    fn of_concurrent_claims_exactly_one_wins() {
        for _ in 0..200 {
            let one = Arc::new(Settled::default());
            let channel = Arc::new(CoveredThrough::default());
            let barrier = Arc::new(Barrier::new(4));
            let threads: Vec<_> = (0..4)
                .map(|i| {
                    let (one, channel, barrier) = (one.clone(), channel.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        usize::from(claim(&one, &channel, 3, i % 2 == 0).is_ok())
                    })
                })
                .collect();
            let winners: usize = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
            assert_eq!(winners, 1);
        }
    }
}
