//! Bytes waiting to be written, in order: frames the state machine encodes itself (methods,
//! acks, heartbeats) and publish frames the handles encoded, which arrive as `Bytes` and are
//! passed through without copying.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use lepus_codec::{EncodeError, Frame};

#[derive(Default)]
pub(crate) struct Outbox {
    /// Frames encoded here, not yet cut into a segment.
    staging: BytesMut,
    /// Segments ready to write, in order.
    segments: VecDeque<Bytes>,
    /// Total bytes pending (staging + segments).
    pending: usize,
}

impl Outbox {
    /// Encodes a frame after what is queued; one larger than `frame_max` (0: no limit) is
    /// refused and nothing is queued.
    pub(crate) fn frame(&mut self, frame: &Frame, frame_max: u32) -> Result<(), EncodeError> {
        let before = self.staging.len();
        frame.encode(&mut self.staging)?;
        let size = self.staging.len() - before;
        if frame_max != 0 && size > frame_max as usize {
            self.staging.truncate(before);
            return Err(EncodeError::FrameTooLarge { what: "method", size, frame_max });
        }
        self.pending += size;
        Ok(())
    }

    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.staging.extend_from_slice(bytes);
        self.pending += bytes.len();
    }

    /// Queues pre-encoded bytes after everything queued so far.
    pub(crate) fn segment(&mut self, bytes: Bytes) {
        self.cut();
        self.pending += bytes.len();
        self.segments.push_back(bytes);
    }

    fn cut(&mut self) {
        if !self.staging.is_empty() {
            self.segments.push_back(self.staging.split().freeze());
        }
    }

    /// The next segment to write.
    pub(crate) fn pop(&mut self) -> Option<Bytes> {
        if self.segments.is_empty() {
            self.cut();
        }
        let segment = self.segments.pop_front()?;
        self.pending -= segment.len();
        Some(segment)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Bytes waiting to be written.
    pub(crate) fn len(&self) -> usize {
        self.pending
    }

    pub(crate) fn clear(&mut self) {
        self.staging.clear();
        self.segments.clear();
        self.pending = 0;
    }
}
