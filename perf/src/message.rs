//! The body of a test message: a run tag and a send timestamp, then zeros.
//!
//! Producers and consumers of one run live in one process, so the timestamp is read from a
//! monotonic clock shared by both (nanoseconds since the run's epoch): no wall-clock steps,
//! no clock skew. The run tag keeps messages of another run (or another program) in the
//! same queue out of the latency figures: they are counted as received, not timed.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes at the start of every body: the 4-byte run tag, then the 8-byte timestamp.
pub(crate) const HEADER_LEN: usize = 12;

/// The clock and tag that producers and consumers of one run share.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunClock {
    epoch: Instant,
    tag: u32,
}

impl RunClock {
    /// A clock starting now, with a tag unlikely to match another run's.
    pub(crate) fn new() -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        RunClock { epoch: Instant::now(), tag: std::process::id().rotate_left(16) ^ nanos }
    }

    /// A body of `size` bytes (at least [`HEADER_LEN`]; shorter sizes get the header only)
    /// stamped with the current time.
    pub(crate) fn body(&self, size: usize) -> Bytes {
        let mut body = BytesMut::with_capacity(size.max(HEADER_LEN));
        body.put_u32(self.tag);
        body.put_u64(self.now_nanos());
        body.resize(size.max(HEADER_LEN), 0);
        body.freeze()
    }

    /// How long ago a body of this run was stamped; `None` for a body of another run or
    /// one too short to carry a stamp.
    pub(crate) fn latency(&self, body: &[u8]) -> Option<Duration> {
        let tag = u32::from_be_bytes(body.get(0..4)?.try_into().ok()?);
        if tag != self.tag {
            return None;
        }
        let sent = u64::from_be_bytes(body.get(4..HEADER_LEN)?.try_into().ok()?);
        Some(Duration::from_nanos(self.now_nanos().saturating_sub(sent)))
    }

    /// Nanoseconds since the epoch; a run would need 584 years to overflow.
    fn now_nanos(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_has_the_size_asked_and_times_itself() {
        let clock = RunClock::new();
        let body = clock.body(64);
        assert_eq!(body.len(), 64);
        assert!(body[HEADER_LEN..].iter().all(|&b| b == 0));
        let latency = clock.latency(&body).expect("a body of this run");
        assert!(latency < Duration::from_secs(5), "{latency:?}");
    }

    #[test]
    fn foreign_and_short_bodies_are_not_timed() {
        let ours = RunClock::new();
        let other = RunClock { tag: ours.tag.wrapping_add(1), ..ours };
        assert_eq!(ours.latency(&other.body(32)), None);
        assert_eq!(ours.latency(b"hello"), None);
        assert_eq!(ours.latency(&[]), None);
        assert_eq!(ours.body(3).len(), HEADER_LEN);
    }
}
