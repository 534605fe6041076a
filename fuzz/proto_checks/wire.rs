//! What the client writes, read back as the broker would: the protocol header, then valid
//! frames, none larger than the negotiated `frame_max`.

use bytes::BytesMut;
use lepus_codec::{Frame, Limits, Method, PROTOCOL_HEADER, ShortStr, decode_frame};

/// The client's output so far, decoded frame by frame as it is written.
#[derive(Default)]
pub(crate) struct Wire {
    /// Bytes written and not yet decoded: at most an incomplete frame between calls.
    buf: BytesMut,
    header_seen: bool,
    /// Bytes written in all.
    pub(crate) written: u64,
    /// Frames decoded in all.
    pub(crate) frames: u64,
    /// `connection.close` frames the client sent.
    pub(crate) closes_sent: u64,
    /// Consumer tags the client sent in `basic.consume`, so that the broker's frames can
    /// name them (the client chooses tags for consumes that give none).
    pub(crate) consumer_tags: Vec<ShortStr>,
}

/// Consumer tags kept for the broker's frames to pick from; more add nothing.
const MAX_TAGS: usize = 16;

impl Wire {
    /// Takes one chunk from `poll_transmit`. `frame_max` is the negotiated one (0: none); it
    /// is 0 until `connection.tune`, and only the handshake's small frames go out before.
    pub(crate) fn push(&mut self, bytes: &[u8], frame_max: u32) {
        self.written += bytes.len() as u64;
        self.buf.extend_from_slice(bytes);
        if !self.header_seen {
            if self.buf.len() < PROTOCOL_HEADER.len() {
                return;
            }
            let header = self.buf.split_to(PROTOCOL_HEADER.len());
            assert_eq!(&header[..], &PROTOCOL_HEADER[..], "the client must start with the AMQP 0-9-1 header");
            self.header_seen = true;
        }
        let max = if frame_max == 0 { u32::MAX } else { frame_max };
        let limits = Limits { frame_max: max, control_frame_max: max, ..Limits::default() };
        loop {
            match decode_frame(&mut self.buf, &limits) {
                Ok(Some(frame)) => self.frame(frame),
                Ok(None) => break,
                Err(e) => panic!("the client wrote bytes that are not a valid frame: {e} (frame_max {frame_max})"),
            }
        }
    }

    fn frame(&mut self, frame: Frame) {
        self.frames += 1;
        match frame {
            Frame::Method(channel, Method::ConnectionClose(_)) => {
                assert_eq!(channel, 0, "connection.close on channel {channel}");
                self.closes_sent += 1;
            }
            Frame::Method(_, Method::BasicConsume(consume))
                if self.consumer_tags.len() < MAX_TAGS && !self.consumer_tags.contains(&consume.consumer_tag) =>
            {
                self.consumer_tags.push(consume.consumer_tag);
            }
            _ => {}
        }
    }

    /// Bytes written after the last whole frame.
    pub(crate) fn leftover(&self) -> usize {
        self.buf.len()
    }
}
