//! The delays between reconnection attempts: exponential, capped, with jitter. Pure: the
//! random source is seeded by the caller, so a schedule can be replayed in a test.

use std::time::Duration;

/// Exponential backoff with "equal jitter": attempt *n* waits between half and all of
/// `min(max, initial × 2^(n-1))`, so that clients that lost the same broker do not all
/// come back at the same instant, and no wait is shorter than half its step.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: SplitMix64,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration, seed: u64) -> Self {
        Backoff { initial, max: max.max(initial), attempt: 0, rng: SplitMix64(seed) }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let step = self.step(self.attempt);
        let half = step / 2;
        // A fraction of the other half, in 1/1024 steps: fine enough, and no float.
        let fraction = u32::try_from(self.rng.next() % 1025).unwrap_or(1024);
        half + step.saturating_sub(half) * fraction / 1024
    }

    /// The un-jittered step of attempt `n` (1-based).
    pub(crate) fn step(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1).min(31)).unwrap_or(u32::MAX);
        self.initial.checked_mul(factor).map_or(self.max, |d| d.min(self.max))
    }

    /// Attempts made so far.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// A small, fast, well-distributed generator (Steele, Lea, Flood 2014); not for secrets.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A seed that differs between processes and between connections of one process.
pub(crate) fn seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    // RandomState's keys are drawn from the OS once per process and advanced per instance.
    RandomState::new().hash_one(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn steps_double_up_to_the_cap() {
        let b = Backoff::new(100 * MS, 1000 * MS, 1);
        let steps: Vec<_> = (1..=6).map(|n| b.step(n)).collect();
        assert_eq!(steps, [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]);
        assert_eq!(b.step(200), 1000 * MS, "no overflow far out");
    }

    #[test]
    fn each_delay_is_between_half_and_all_of_its_step() {
        for seed in 0..200 {
            let mut b = Backoff::new(100 * MS, 5000 * MS, seed);
            for n in 1..=12 {
                let delay = b.next_delay();
                let step = b.step(n);
                assert!(delay >= step / 2 && delay <= step, "attempt {n}: {delay:?} for step {step:?}");
            }
            assert_eq!(b.attempts(), 12);
        }
    }

    #[test]
    fn the_schedule_is_replayable_and_jittered() {
        let schedule = |seed| {
            let mut b = Backoff::new(100 * MS, 5000 * MS, seed);
            (0..8).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(schedule(7), schedule(7));
        assert_ne!(schedule(7), schedule(8), "two clients do not come back in step");
    }
}
