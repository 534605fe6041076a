//! The state machine against a scripted peer and a manual clock: no sockets, no sleeps.

mod confirms;
mod content;
mod lifecycle;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use lepus_codec::{
    BasicProperties, ContentHeader, FieldTable, Frame, Limits, Method, ShortStr, decode_frame,
    method::{basic, channel as chan, connection},
};

use super::{ChannelKey, Config, Connection, Event, Reply, Tokens};
use crate::Error;

/// Tokens are numbers the test chooses, so it can see which waiter got what.
pub(super) struct Ids;

impl Tokens for Ids {
    /// The harness opens channels with the reply token as channel token too, and maps it
    /// back to the channel's key in [`Peer::events`].
    type Channel = u32;
    type Reply = u32;
    type Confirm = u32;
    type Consumer = u32;
}

/// What came out of `poll_event`, in a comparable form.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Ev {
    Connected,
    Reply(u32, Result<Reply, String>),
    Confirm(u32, Result<super::Confirmation, String>),
    Delivery(u32, Result<super::Delivery, String>),
    ConsumerEnded(u32, Option<String>),
    Returned(ChannelKey, Box<lepus_codec::Content>),
    ChannelClosed(ChannelKey, String),
    ChannelFlow(ChannelKey, bool),
    Blocked(String),
    Unblocked,
    Closed(String),
}

fn describe(e: &Error) -> String {
    e.to_string()
}

impl Ev {
    fn from(e: Event<Ids>, key: impl Fn(u32) -> ChannelKey) -> Self {
        match e {
            Event::Connected => Ev::Connected,
            Event::Reply(t, r) => Ev::Reply(t, r.map_err(|e| describe(&e))),
            Event::Confirm(t, r) => Ev::Confirm(t, r.map_err(|e| describe(&e))),
            Event::Delivery(t, r) => Ev::Delivery(t, r.map_err(|e| describe(&e))),
            Event::ConsumerEnded(t, r) => Ev::ConsumerEnded(t, r.map(|e| describe(&e))),
            Event::Returned(t, c) => Ev::Returned(key(t), c),
            Event::ChannelClosed(t, e) => Ev::ChannelClosed(key(t), describe(&e)),
            Event::ChannelFlow(t, a) => Ev::ChannelFlow(key(t), a),
            Event::Blocked(r) => Ev::Blocked(r),
            Event::Unblocked => Ev::Unblocked,
            Event::Closed(e) => Ev::Closed(describe(&e)),
        }
    }
}

pub(super) fn config() -> Config {
    Config {
        vhost: ShortStr::from_static("/").unwrap(),
        mechanism: "PLAIN",
        sasl_response: Bytes::from_static(b"\0guest\0guest"),
        client_properties: FieldTable::new(),
        channel_max: 2047,
        frame_max: 131_072,
        heartbeat: 60,
        max_message_size: 1 << 20,
        control_frame_max: Limits::DEFAULT_CONTROL_FRAME_MAX,
    }
}

/// The client under test, the bytes it wrote (decoded as the broker would), and the clock.
pub(super) struct Peer {
    pub(super) conn: Connection<Ids>,
    pub(super) now: Instant,
    wire: BytesMut,
    header_seen: bool,
    /// Channel tokens and the keys they were opened as.
    keys: std::collections::HashMap<u32, ChannelKey>,
}

impl Peer {
    pub(super) fn new(config: Config) -> Self {
        let now = Instant::now();
        Peer {
            conn: Connection::new(config, now),
            now,
            wire: BytesMut::new(),
            header_seen: false,
            keys: std::collections::HashMap::new(),
        }
    }

    /// A connection that completed the handshake with RabbitMQ-like tuning.
    pub(super) fn open() -> Self {
        Self::open_with(config(), connection::Tune { channel_max: 2047, frame_max: 131_072, heartbeat: 60 })
    }

    pub(super) fn open_with(config: Config, tune: connection::Tune) -> Self {
        let mut p = Peer::new(config);
        p.handshake(tune);
        assert_eq!(p.events(), vec![Ev::Connected]);
        p.sent();
        p
    }

    pub(super) fn handshake(&mut self, tune: connection::Tune) {
        self.sent();
        let start =
            connection::Start { mechanisms: Bytes::from_static(b"PLAIN AMQPLAIN"), ..connection::Start::default() };
        self.feed(Frame::Method(0, start.into()));
        self.feed(Frame::Method(0, tune.into()));
        self.feed(Frame::Method(0, connection::OpenOk::default().into()));
    }

    pub(super) fn feed(&mut self, frame: Frame) {
        self.conn.handle_frame(self.now, frame);
    }

    pub(super) fn method(&mut self, channel: u16, method: impl Into<Method>) {
        self.feed(Frame::Method(channel, method.into()));
    }

    /// Delivers a whole message (method, header, one body frame) on `channel`.
    pub(super) fn content(&mut self, channel: u16, method: impl Into<Method>, body: &'static [u8]) {
        self.method(channel, method);
        self.feed(Frame::Header(channel, ContentHeader::new(body.len() as u64, BasicProperties::default())));
        if !body.is_empty() {
            self.feed(Frame::Body(channel, Bytes::from_static(body)));
        }
    }

    /// Everything the client wrote since the last call, as frames.
    pub(super) fn sent(&mut self) -> Vec<Frame> {
        while let Some(bytes) = self.conn.poll_transmit(self.now) {
            self.wire.extend_from_slice(&bytes);
        }
        if !self.header_seen && self.wire.len() >= 8 {
            assert_eq!(&self.wire[..8], &lepus_codec::PROTOCOL_HEADER);
            let _ = self.wire.split_to(8);
            self.header_seen = true;
        }
        let limits = Limits::default().tuned(0, 16 << 20);
        let mut frames = Vec::new();
        while let Some(frame) = decode_frame(&mut self.wire, &limits).expect("the client writes valid frames") {
            frames.push(frame);
        }
        frames
    }

    /// The methods the client wrote since the last call, with their channels.
    pub(super) fn sent_methods(&mut self) -> Vec<(u16, Method)> {
        self.sent()
            .into_iter()
            .filter_map(|f| match f {
                Frame::Method(c, m) => Some((c, m)),
                _ => None,
            })
            .collect()
    }

    pub(super) fn events(&mut self) -> Vec<Ev> {
        let events: Vec<Event<Ids>> = std::iter::from_fn(|| self.conn.poll_event()).collect();
        let keys = &self.keys;
        let key = |t: u32| keys.get(&t).copied().unwrap_or(ChannelKey { id: 0, epoch: 0 });
        events.into_iter().map(|e| Ev::from(e, key)).collect()
    }

    /// Moves the clock forward, firing the deadlines on the way, as the driver would.
    pub(super) fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while let Some(deadline) = self.conn.poll_timeout() {
            if deadline > end {
                break;
            }
            self.now = self.now.max(deadline);
            self.conn.handle_timeout(self.now);
            // What the driver writes right away counts as written at that instant.
            let frames = self.sent();
            self.stash(frames);
        }
        self.now = end;
    }

    fn stash(&mut self, frames: Vec<Frame>) {
        for f in frames {
            f.encode(&mut self.wire).unwrap();
        }
    }

    /// Opens a channel and answers open-ok; the reply token is `token`.
    pub(super) fn open_channel(&mut self, token: u32) -> ChannelKey {
        let key = self.conn.open_channel(token, token).map_err(|(e, ..)| e).unwrap();
        self.keys.insert(token, key);
        let sent = self.sent_methods();
        assert_eq!(sent, vec![(key.id, chan::Open::default().into())]);
        self.method(key.id, chan::OpenOk::default());
        assert_eq!(self.events(), vec![Ev::Reply(token, Ok(Reply::Method(chan::OpenOk::default().into())))]);
        key
    }

    /// Puts a channel in confirm mode (select-ok answered).
    pub(super) fn confirm_select(&mut self, key: ChannelKey, token: u32) {
        self.conn.call(key, lepus_codec::method::confirm::Select::default().into(), token);
        self.sent();
        self.method(key.id, lepus_codec::method::confirm::SelectOk {});
        assert_eq!(self.events().len(), 1);
    }

    /// A publish's frames as the handle would encode them.
    pub(super) fn publish_frames(key: ChannelKey, routing_key: &str, body: &[u8]) -> Bytes {
        let publish = basic::Publish { routing_key: ShortStr::try_from(routing_key).unwrap(), ..Default::default() };
        let mut buf = BytesMut::new();
        lepus_codec::encode_publish(&mut buf, key.id, &publish, &BasicProperties::default(), body, 131_072).unwrap();
        buf.freeze()
    }
}

/// The close frame the client sent, if any: (code, text).
pub(super) fn close_sent(methods: &[(u16, Method)]) -> Option<(u16, String)> {
    methods.iter().find_map(|(_, m)| match m {
        Method::ConnectionClose(c) => Some((c.reply_code.0, c.reply_text.to_string())),
        _ => None,
    })
}
