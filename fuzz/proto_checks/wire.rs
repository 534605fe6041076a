//! What the client writes, read back as the broker would: the protocol header, then valid
//! frames, none larger than the negotiated `frame_max`, and none on a channel the client has
//! not opened or has already closed.

use std::collections::HashSet;

use bytes::BytesMut;
use lepus::proto::Tuning;
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
    /// Channels the client sent `channel.open` on.
    opened: HashSet<u16>,
    /// Channels the client sent `channel.close` or `channel.close-ok` on since: nothing but
    /// a `channel.close-ok` (closes crossing) or a new `channel.open` may follow there.
    closed: HashSet<u16>,
    /// The negotiated `channel_max` (0: none).
    channel_max: u16,
    /// Consumer tags the client sent in `basic.consume`, so that the broker's frames can
    /// name them (the client chooses tags for consumes that give none).
    pub(crate) consumer_tags: Vec<ShortStr>,
}

/// Consumer tags kept for the broker's frames to pick from; more add nothing.
const MAX_TAGS: usize = 16;

impl Wire {
    /// Takes one chunk from `poll_transmit`. `tuning` is the negotiated one (zeros, "no
    /// limit", until `connection.tune`; only the handshake's small frames go out before).
    pub(crate) fn push(&mut self, bytes: &[u8], tuning: Tuning) {
        self.channel_max = tuning.channel_max;
        let frame_max = tuning.frame_max;
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
        self.channel_state(&frame);
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

    /// The client writes on a channel only between its `channel.open` and its close.
    fn channel_state(&mut self, frame: &Frame) {
        let channel = frame.channel();
        if channel == 0 {
            return;
        }
        match frame {
            Frame::Method(_, Method::ChannelOpen(_)) => {
                let max = if self.channel_max == 0 { u16::MAX } else { self.channel_max };
                assert!(channel <= max, "channel.open on channel {channel}, past channel_max {max}");
                self.opened.insert(channel);
                self.closed.remove(&channel);
            }
            Frame::Method(_, Method::ChannelCloseOk(_)) => {
                assert!(self.opened.contains(&channel), "channel.close-ok on channel {channel}, never opened");
                self.closed.insert(channel);
            }
            _ => {
                let what = match frame {
                    Frame::Method(_, method) => method.name(),
                    Frame::Header(..) => "a content header",
                    _ => "a body frame",
                };
                assert!(self.opened.contains(&channel), "{what} on channel {channel}, never opened");
                assert!(!self.closed.contains(&channel), "{what} on channel {channel} after the client closed it");
                if let Frame::Method(_, Method::ChannelClose(_)) = frame {
                    self.closed.insert(channel);
                }
            }
        }
    }

    /// Bytes written after the last whole frame.
    pub(crate) fn leftover(&self) -> usize {
        self.buf.len()
    }
}
