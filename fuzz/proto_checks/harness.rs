//! Drives one `lepus::proto::Connection` through a script, as the driver would, and checks
//! after every step what the module documentation promises.

use std::{
    io,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use lepus::proto::{ChannelKey, Config, Connection, ReturnKey};
use lepus_codec::{
    BasicProperties, DecodeError, Frame, Limits, Method, ReplyCode, ShortStr, decode_frame, encode_publish,
    encode_publish_vectored, header_frame_prefix,
    method::{basic, channel as chan, connection, queue},
};

use super::{
    build::{self, ROUTES, TAGS, body_len, pick, short},
    ledger::{Answer, Ledger, Numbers, Summary},
    script::{ASYNCS, Async, CALLS, INBOUND, Op, Reader, Step},
    wire::Wire,
};

/// Bytes the client may write of its own per unit of input (a step, or a frame from the
/// broker), on top of what the application handed it: its largest frames are a
/// `connection.close` or a `basic.cancel` with a 255-byte text or tag (under 300 bytes),
/// and a clock step writes at most 17 heartbeats (136 bytes).
pub(crate) const BYTES_PER_UNIT: u64 = 512;
/// Events per unit of input: a command leaves at most two tokens to answer (a reply and a
/// channel or consumer), a frame from the broker makes at most one event of its own.
pub(crate) const EVENTS_PER_UNIT: u64 = 2;
/// Deadlines fired by one clock step before the clock jumps to its end (a driver that was
/// asleep, e.g. a suspended machine, wakes once for everything that passed).
const WAKE_UPS_PER_STEP: usize = 16;
/// Returns kept per channel that match no publish: the state machine's own cap
/// (`MAX_UNMATCHED_RETURNS` in `client/src/proto/confirms.rs`), so that a broker cannot
/// grow its memory without limit.
const MAX_UNMATCHED_RETURNS: usize = 256;
/// Channels whose per-channel bounds are checked after each step: the newest ones (all of
/// them at the end).
const CHANNELS_CHECKED_PER_STEP: usize = 16;
/// What the close at the end of the input waits for close-ok.
const FINAL_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection's configuration, from the first byte of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Setup {
    pub(crate) heartbeat: u16,
    pub(crate) frame_max: u32,
    pub(crate) channel_max: u16,
    pub(crate) max_message_size: u64,
    /// How the connection ends after the input: the socket fails (`true`), or the close
    /// deadline passes.
    pub(crate) end_by_io: bool,
}

impl Setup {
    /// Bits 0-1 heartbeat, 2-3 `frame_max`, 4-5 `channel_max`, 6 message size cap, 7 the end.
    pub(crate) fn from_byte(b: u8) -> Self {
        Setup {
            heartbeat: pick(&[0, 1, 60, 600], b),
            frame_max: pick(&[0, 4096, 131_072, 10_000], b >> 2),
            channel_max: pick(&[0, 1, 3, 2047], b >> 4),
            max_message_size: pick(&[8 << 10, 16], b >> 6),
            end_by_io: b & 0x80 != 0,
        }
    }

    fn config(self) -> Config {
        let mut client_properties = lepus::FieldTable::new();
        client_properties.push(short("product"), lepus::FieldValue::from("lepus-fuzz"));
        Config {
            vhost: short("/"),
            mechanism: "PLAIN",
            sasl_response: Bytes::from_static(b"\0guest\0guest"),
            client_properties,
            channel_max: self.channel_max,
            frame_max: self.frame_max,
            heartbeat: self.heartbeat,
            max_message_size: self.max_message_size,
            control_frame_max: Limits::DEFAULT_CONTROL_FRAME_MAX,
        }
    }
}

/// Runs a script and checks everything on the way; panics on the first broken promise.
pub(crate) fn run(data: &[u8]) -> Summary {
    let mut reader = Reader::new(data);
    if reader.is_empty() {
        return Summary::default();
    }
    let mut harness = Harness::new(Setup::from_byte(reader.byte()));
    while let Some(step) = reader.step() {
        harness.step(step);
    }
    harness.finish()
}

struct Harness {
    conn: Connection<Numbers>,
    now: Instant,
    end_by_io: bool,
    /// Bytes from the socket not decoded yet.
    read_buf: BytesMut,
    /// Every key `open_channel` returned, in order.
    keys: Vec<ChannelKey>,
    ledger: Ledger,
    wire: Wire,
    /// Steps taken, counting each frame from the broker as one.
    units: u64,
    /// Bytes the application handed in: methods (as encoded), publishes, secrets.
    supplied: u64,
    /// What `pending_transmit` should be if nothing was dropped.
    pending: usize,
    /// Output was dropped unwritten (the socket is gone): the stream may end inside a frame.
    dropped: bool,
    /// Bytes written and pending when the connection was first seen closed.
    closed_total: Option<u64>,
    /// Delivery tags of the broker's whole-message frames.
    next_delivery_tag: u64,
}

impl Harness {
    fn new(setup: Setup) -> Self {
        let now = Instant::now();
        let conn = Connection::new(setup.config(), now);
        let pending = conn.pending_transmit();
        Harness {
            conn,
            now,
            end_by_io: setup.end_by_io,
            read_buf: BytesMut::new(),
            keys: Vec::new(),
            ledger: Ledger::default(),
            wire: Wire::default(),
            units: 0,
            supplied: 0,
            pending,
            dropped: false,
            closed_total: None,
            next_delivery_tag: 0,
        }
    }

    fn step(&mut self, step: Step<'_>) {
        self.units += 1;
        self.pending = self.conn.pending_transmit();
        match step {
            Step::Raw(bytes) => self.raw(bytes),
            Step::Op(op, args) => self.op(op, args),
        }
        self.check_step();
    }

    fn op(&mut self, op: Op, [a, b, c, d]: [u8; 4]) {
        match op {
            Op::Raw => {}
            Op::Frame => self.frame(a, b, c, d),
            Op::OpenChannel => self.open_channel(a, b),
            Op::Call => self.call(a, b, c, d),
            Op::Consume => self.consume(b, c, d),
            Op::Send => self.send(a, b, c, d),
            Op::Publish => self.publish(a, b, c, d),
            Op::UpdateSecret => self.update_secret(a, b),
            Op::Close => {
                let code = pick(&[200, 320, 406, 541], a);
                let text = if b & 1 == 0 { "bye".to_owned() } else { "é".repeat(200) };
                let timeouts =
                    [None, Some(Duration::ZERO), Some(Duration::from_millis(1)), Some(Duration::from_secs(60))];
                let timeout = pick(&timeouts, c);
                self.conn.close(self.now, ReplyCode(code), &text, timeout);
            }
            Op::Advance => self.advance(a, u16::from_be_bytes([b, c])),
            Op::Timeout => self.timeout(),
            Op::Reading => self.conn.set_reading(self.now, a & 1 == 1),
            Op::Transmit => self.transmit(a & 1 == 0),
            Op::Events => self.events(if a == 0 { usize::MAX } else { usize::from(a) }),
            Op::IoError => self.conn.handle_io_error(io_error(a)),
            Op::DecodeError => self.conn.handle_decode_error(decode_error(a)),
            Op::RefusedHeader => {
                let channel = build::channel_id(&self.keys, b);
                let error = DecodeError::NestingTooDeep { limit: Limits::DEFAULT_MAX_DEPTH };
                self.conn.handle_refused_header(self.now, channel, body_len(c) as u64, error);
            }
            Op::ContinueEpochs => self.conn.continue_epochs(u64::from(a) * 3),
        }
    }

    /// Bytes from the socket, decoded as `driver::decode` does: a header refused for its
    /// nesting is consumed and only its message refused; any other error ends the stream.
    fn raw(&mut self, bytes: &[u8]) {
        if self.conn.is_closed() {
            // The driver stops reading once the connection is over.
            self.read_buf.clear();
            return;
        }
        self.read_buf.extend_from_slice(bytes);
        loop {
            let header = header_frame_prefix(&self.read_buf);
            match decode_frame(&mut self.read_buf, self.conn.limits()) {
                Ok(Some(frame)) => {
                    self.units += 1;
                    self.conn.handle_frame(self.now, frame);
                }
                Ok(None) => break,
                Err(e @ DecodeError::NestingTooDeep { .. }) if header.is_some() => {
                    self.units += 1;
                    let (channel, body_size) = header.unwrap_or_default();
                    self.conn.handle_refused_header(self.now, channel, body_size, e);
                }
                Err(e) => {
                    self.conn.handle_decode_error(e);
                    self.read_buf.clear();
                    break;
                }
            }
            if self.conn.is_closed() {
                self.read_buf.clear();
                break;
            }
        }
    }

    /// A consumer tag: one of [`TAGS`], or one the client sent.
    fn tag(&self, b: u8) -> ShortStr {
        let at = usize::from(b) % (TAGS.len() + self.wire.consumer_tags.len());
        match TAGS.get(at) {
            Some(tag) => short(tag),
            None => self.wire.consumer_tags.get(at - TAGS.len()).cloned().unwrap_or_default(),
        }
    }

    fn frame(&mut self, a: u8, b: u8, c: u8, d: u8) {
        let template = pick(&INBOUND, a);
        let channel = build::channel_id(&self.keys, b);
        let mut frames = build::inbound(template, channel, &self.tag(c), c, d);
        if let [Frame::Method(_, Method::BasicDeliver(deliver)), _, ..] = frames.as_mut_slice() {
            // Whole deliveries get increasing tags, as the broker's do.
            self.next_delivery_tag += 1;
            deliver.delivery_tag = self.next_delivery_tag;
        }
        self.units += frames.len().saturating_sub(1) as u64;
        for frame in frames {
            self.conn.handle_frame(self.now, frame);
        }
    }

    /// Counts what the application hands in: the method as it will be encoded.
    fn supply(&mut self, channel: u16, method: &Method) {
        let mut buf = BytesMut::new();
        if Frame::Method(channel, method.clone()).encode_with_depth(&mut buf, usize::MAX).is_ok() {
            self.supplied += buf.len() as u64;
        }
    }

    /// `open_channel`, or for `a & 7 != 0` `open_channel_at` an id that `a` and `b` pick:
    /// one of the client's channels (taken, or free again once it closed), any small id, the
    /// edges of `channel_max`, 0 and `u16::MAX`.
    fn open_channel(&mut self, a: u8, b: u8) {
        let max = match self.conn.tuning().channel_max {
            0 => u16::MAX,
            n => n,
        };
        let wanted = match a & 7 {
            0 => None,
            1 => Some(if self.keys.is_empty() { 1 } else { pick(&self.keys, b).id }),
            2 => Some(u16::from(b)),
            3 => Some(max),
            4 => Some(max.wrapping_add(1)),
            5 => Some(0),
            6 => Some(u16::MAX),
            _ => Some(1 + u16::from(b & 3)),
        };
        let epoch = self.conn.next_epoch();
        let (reply, channel) = (self.ledger.token(), self.ledger.token());
        let opened = match wanted {
            None => self.conn.open_channel(reply, channel),
            Some(id) => self.conn.open_channel_at(id, reply, channel),
        };
        match opened {
            Ok(key) => {
                assert_eq!(key.epoch, epoch, "a new channel takes the next epoch");
                assert!(self.conn.next_epoch() > epoch, "next_epoch must move past a channel's");
                assert!(key.id != 0 && key.id <= max, "channel {key:?} outside 1..={max}");
                if let Some(id) = wanted {
                    assert_eq!(key.id, id, "open_channel_at({id}) opened another id");
                }
                self.ledger.expect_reply(reply, Answer::Method(&[chan::OpenOk::ID]));
                self.ledger.channel_opened(channel, key);
                self.keys.push(key);
            }
            Err((_, r, c)) => assert_eq!((r, c), (reply, channel), "open_channel must hand back what it refused"),
        }
    }

    fn call(&mut self, a: u8, b: u8, c: u8, d: u8) {
        let key = build::key(&self.keys, b);
        let (method, answer) = build::call(pick(&CALLS, a), &self.tag(c >> 1), c, d);
        self.supply(key.id, &method);
        let token = self.ledger.token();
        self.ledger.expect_reply(token, answer);
        self.conn.call(key, method, token);
    }

    fn consume(&mut self, b: u8, c: u8, d: u8) {
        let key = build::key(&self.keys, b);
        let tag = if c == 0 { ShortStr::new() } else { self.tag(c - 1) };
        let nowait = d & 1 == 1;
        let consume = basic::Consume {
            queue: short("q"),
            consumer_tag: tag.clone(),
            no_ack: d & 2 != 0,
            nowait,
            arguments: build::table(d & 0xFC),
            ..Default::default()
        };
        self.supply(key.id, &consume.clone().into());
        let (reply, consumer) = (self.ledger.token(), self.ledger.token());
        let answer = if nowait { Answer::Sent } else { Answer::Method(&[basic::ConsumeOk::ID]) };
        self.ledger.expect_reply(reply, answer);
        self.ledger.consumer(consumer, reply, key, tag);
        self.conn.consume(key, consume, reply, consumer);
    }

    fn send(&mut self, a: u8, b: u8, c: u8, d: u8) {
        let key = build::key(&self.keys, b);
        let (delivery_tag, flag) = (u64::from(c), d & 1 == 1);
        let method: Method = match pick(&ASYNCS, a) {
            Async::Ack => basic::Ack { delivery_tag, multiple: flag }.into(),
            Async::Nack => basic::Nack { delivery_tag, multiple: flag, requeue: d & 2 != 0 }.into(),
            Async::Reject => basic::Reject { delivery_tag, requeue: flag }.into(),
            Async::Recover => basic::RecoverAsync { requeue: flag }.into(),
            Async::DeclareNowait => {
                queue::Declare { queue: short("q"), nowait: true, arguments: build::table(d), ..Default::default() }
                    .into()
            }
        };
        self.supply(key.id, &method);
        // Refusals (a closed channel, a stale tag, a method that does not encode) are the
        // caller's to handle; what matters here is that nothing else changes.
        let _ = self.conn.send(key, method);
    }

    fn publish(&mut self, a: u8, b: u8, c: u8, d: u8) {
        let key = build::key(&self.keys, b);
        let (exchange, routing_key) = pick(&ROUTES, c);
        let (confirm, mandatory, vectored) = (a & 1 == 1, a & 2 != 0, a & 4 != 0);
        let body = Bytes::from(vec![b'p'; body_len(d)]);
        let publish = basic::Publish {
            exchange: short(exchange),
            routing_key: short(routing_key),
            mandatory,
            ..Default::default()
        };
        let properties = BasicProperties::default();
        let frame_max = self.conn.tuning().frame_max;
        let (mut buf, mut segments) = (BytesMut::new(), Vec::new());
        let encoded = if vectored {
            encode_publish_vectored(&mut buf, key.id, &publish, &properties, &body, frame_max, &mut segments)
        } else {
            encode_publish(&mut buf, key.id, &publish, &properties, &body, frame_max)
                .map(|()| segments.push(buf.split().freeze()))
        };
        assert_eq!(encoded, Ok(()), "a publish encodes for the negotiated frame_max {frame_max}");
        self.supplied += segments.iter().map(|s| s.len() as u64).sum::<u64>();
        let token = confirm.then(|| self.ledger.token());
        let return_key = mandatory.then(|| {
            Box::new(ReturnKey {
                exchange: short(exchange),
                routing_key: short(routing_key),
                body_size: body.len() as u64,
            })
        });
        match self.conn.publish(key, segments, token.map(|t| (t, return_key))) {
            Ok(Some(tag)) => {
                let token = token.unwrap_or_else(|| panic!("a publish without a confirm token got tag {tag}"));
                self.ledger.confirm_taken(token, key, tag, mandatory);
            }
            Ok(None) => assert_eq!(token, None, "a confirm token was taken without a tag: nothing would answer it"),
            Err((_, back)) => assert_eq!(back, token, "a refused publish must hand back its confirm token"),
        }
    }

    fn update_secret(&mut self, a: u8, b: u8) {
        let secret = Bytes::from(vec![b's'; body_len(a)]);
        let reason = if b & 1 == 0 { "rotate".to_owned() } else { "r".repeat(300) };
        self.supplied += (secret.len() + reason.len()) as u64;
        let token = self.ledger.token();
        self.ledger.expect_reply(token, Answer::Method(&[connection::UpdateSecretOk::ID]));
        self.conn.update_secret(secret, &reason, token);
    }

    /// Moves the clock, firing deadlines as the driver does. Unit (`a % 4`): 0 to the next
    /// deadline, 1 milliseconds, 2 seconds, 3 seconds without waking up on the way.
    fn advance(&mut self, unit: u8, amount: u16) {
        let by = match unit % 4 {
            0 => {
                if let Some(deadline) = self.conn.poll_timeout() {
                    self.now = self.now.max(deadline);
                    self.timeout();
                }
                return;
            }
            1 => Duration::from_millis(u64::from(amount)),
            _ => Duration::from_secs(u64::from(amount)),
        };
        let end = self.now + by;
        if unit % 4 != 3 {
            for _ in 0..WAKE_UPS_PER_STEP {
                match self.conn.poll_timeout() {
                    Some(deadline) if deadline <= end => {
                        self.now = self.now.max(deadline);
                        self.timeout();
                    }
                    _ => break,
                }
            }
        }
        self.now = end;
        if self.conn.poll_timeout().is_some_and(|deadline| deadline <= self.now) {
            self.timeout();
        }
    }

    /// `handle_timeout(now)`: afterwards the next deadline must lie ahead, or a driver would
    /// be woken again at once, forever.
    fn timeout(&mut self) {
        self.conn.handle_timeout(self.now);
        let next = self.conn.poll_timeout();
        assert!(next.is_none_or(|deadline| deadline > self.now), "handle_timeout left a deadline that has passed");
    }

    fn transmit(&mut self, all: bool) {
        while let Some(bytes) = self.conn.poll_transmit(self.now) {
            assert!(!bytes.is_empty(), "poll_transmit returned an empty chunk");
            self.pending = self.pending.saturating_sub(bytes.len());
            self.wire.push(&bytes, self.conn.tuning());
            if !all {
                return;
            }
        }
        assert_eq!(self.conn.pending_transmit(), 0, "pending_transmit counts bytes poll_transmit does not return");
    }

    fn events(&mut self, max: usize) {
        let mut polled = 0u64;
        while polled < max as u64 {
            let Some(event) = self.conn.poll_event() else { break };
            polled += 1;
            self.ledger.event(event);
        }
        let summary = &mut self.ledger.summary;
        if max == usize::MAX {
            summary.max_queued_events = summary.max_queued_events.max(polled);
        }
        let bound = EVENTS_PER_UNIT * (self.units + 1);
        assert!(
            summary.events <= bound,
            "{} events from {} units of input (bound {bound})",
            summary.events,
            self.units
        );
    }

    /// After every step: memory stays within the bounds, nothing is written after the end.
    fn check_step(&mut self) {
        let pending = self.conn.pending_transmit();
        if pending < self.pending {
            self.dropped = true;
        }
        let total = self.wire.written + pending as u64;
        let bound = PROTOCOL_HEADER_LEN + BYTES_PER_UNIT * self.units + self.supplied;
        assert!(
            total <= bound,
            "the client wrote {total} bytes for {} units and {} supplied",
            self.units,
            self.supplied
        );
        let summary = &mut self.ledger.summary;
        summary.max_pending_transmit = summary.max_pending_transmit.max(pending as u64);
        self.check_channels(CHANNELS_CHECKED_PER_STEP);
        if self.conn.is_closed() {
            let closed_total = *self.closed_total.get_or_insert(total);
            assert!(total <= closed_total, "the client queued bytes after it closed");
            assert_eq!(self.conn.poll_timeout(), None, "a closed connection has no deadline");
        }
    }

    /// What the state machine holds per channel stays within its own bounds, for the
    /// `newest` channels opened.
    fn check_channels(&self, newest: usize) {
        let max = match self.conn.tuning().channel_max {
            0 => usize::from(u16::MAX),
            n => usize::from(n),
        };
        assert!(self.conn.channel_count() <= max, "{} channels open, channel_max {max}", self.conn.channel_count());
        for key in self.keys.iter().rev().take(newest) {
            let kept = self.conn.unmatched_returns(*key);
            assert!(kept <= MAX_UNMATCHED_RETURNS, "{key:?} keeps {kept} unmatched returns");
            let unconfirmed = self.conn.unconfirmed(*key) as u64;
            let waiting = self.ledger.confirms_waiting(*key);
            assert!(unconfirmed <= waiting, "{key:?}: {unconfirmed} unconfirmed, {waiting} confirm tokens out");
        }
    }

    /// The input ended: close the connection, let it end, and settle the accounts.
    fn finish(mut self) -> Summary {
        self.transmit(true);
        self.events(usize::MAX);
        self.pending = self.conn.pending_transmit();
        self.conn.close(self.now, ReplyCode::REPLY_SUCCESS, "the input ended", Some(FINAL_CLOSE_TIMEOUT));
        // The driver writes the close frame at once; then the socket fails or the broker
        // stays silent.
        self.transmit(true);
        if self.end_by_io {
            let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
            self.conn.handle_io_error(lepus::Error::Io(Arc::new(eof)));
        } else {
            // Heartbeats are due at most every 500 ms, the close deadline 5 s ahead.
            for _ in 0..1000 {
                let Some(deadline) = self.conn.poll_timeout() else { break };
                self.now = self.now.max(deadline);
                self.timeout();
                self.transmit(true);
            }
        }
        assert!(self.conn.is_closed(), "the connection did not end after close()");
        self.check_step();
        self.transmit(true);
        self.events(usize::MAX);
        self.check_channels(usize::MAX);
        self.ledger.check_settled();
        if !self.dropped {
            assert_eq!(self.wire.leftover(), 0, "the client's output ends inside a frame");
        }
        let mut summary = self.ledger.summary.clone();
        summary.frames_written = self.wire.frames;
        summary
    }
}

const PROTOCOL_HEADER_LEN: u64 = lepus_codec::PROTOCOL_HEADER.len() as u64;

fn io_error(a: u8) -> lepus::Error {
    let kind = pick(
        &[
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::TimedOut,
        ],
        a,
    );
    lepus::Error::Io(Arc::new(io::Error::from(kind)))
}

fn decode_error(a: u8) -> DecodeError {
    match a % 8 {
        0 => DecodeError::BadFrameEnd { found: 0 },
        1 => DecodeError::UnknownFrameType(9),
        2 => DecodeError::FrameTooLarge { size: 1 << 20, max: 4096 },
        3 => DecodeError::Truncated { field: "shortstr" },
        4 => DecodeError::UnknownMethod { class_id: 60, method_id: 99 },
        5 => DecodeError::NestingTooDeep { limit: Limits::DEFAULT_MAX_DEPTH },
        6 => DecodeError::MessageTooLarge { size: 1 << 30, max: 1 << 20 },
        _ => DecodeError::UnexpectedFrame("a body frame without a header"),
    }
}
