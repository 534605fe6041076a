//! The connection as a pure state machine: no sockets, no tasks, no clock.
//!
//! The driver owns a [`Connection`] and calls, in a loop:
//! 1. [`Connection::handle_frame`] for every frame decoded from the socket (and
//!    [`Connection::handle_decode_error`] / [`Connection::handle_io_error`] when reading fails),
//! 2. the command methods ([`Connection::open_channel`], [`Connection::call`],
//!    [`Connection::publish`], ...) for what the application asked,
//! 3. [`Connection::handle_timeout`] when the instant from [`Connection::poll_timeout`] passes,
//! 4. [`Connection::poll_transmit`] until it returns `None`, writing what it returns,
//! 5. [`Connection::poll_event`] until it returns `None`, delivering what it returns.
//!
//! Every instant is passed in (`now`), so tests drive it with a manual clock. Replies,
//! confirms and deliveries are routed through opaque tokens chosen by the driver
//! ([`Tokens`]): the driver's are oneshot and mpsc senders, the tests' are plain numbers.
//! Every token handed in comes back exactly once in an [`Event`] — with its result, or with
//! the error that closed its channel or connection.

mod channel;
mod confirms;
mod dispatch;
mod handshake;
mod outbox;
#[cfg(test)]
mod tests;

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use bytes::Bytes;
use lepus_codec::{
    BasicProperties, Content, DecodeError, FieldTable, Frame, Limits, Method, ReplyCode, ShortStr,
    method::{basic, channel as chan, connection},
};

pub use channel::ChannelKey;
use channel::{Channel, ChannelState, Pending, expected_reply};
use confirms::ConfirmTracker;
pub use confirms::{Confirmation, ReturnKey};
pub use handshake::{Config, Tuning};
use outbox::Outbox;

use crate::error::{CloseReason, Error};

/// The driver's types for the waiters a command can leave behind, and for the channels it
/// opens: the state machine keeps them and hands them back in [`Event`]s, so the driver needs
/// no table of its own to route what happens.
pub trait Tokens {
    /// Stands for one channel the driver opened; cloned into that channel's events.
    type Channel: Clone;
    /// Waits for the reply to a synchronous method.
    type Reply;
    /// Waits for the broker's confirm of one publish.
    type Confirm;
    /// Receives a consumer's deliveries; cloned for each one.
    type Consumer: Clone;
}

/// The result of a synchronous method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The reply method (e.g. `queue.declare-ok`, `basic.get-empty`).
    Method(Method),
    /// `basic.get-ok` with its message.
    Get(Box<Content>),
    /// A `nowait` request: sent, and no reply will come.
    Sent,
}

/// One message delivered to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The channel incarnation it came on; acks go back there.
    pub channel: ChannelKey,
    /// The consumer's tag.
    pub consumer_tag: ShortStr,
    /// Tag to acknowledge it with (valid only on `channel`).
    pub delivery_tag: u64,
    /// Delivered before and not acknowledged.
    pub redelivered: bool,
    /// Exchange it was published to.
    pub exchange: ShortStr,
    /// Its routing key.
    pub routing_key: ShortStr,
    /// Its properties.
    pub properties: BasicProperties,
    /// The body, sharing the read buffer's memory when it came in one frame.
    pub body: Bytes,
}

/// What the state machine tells the driver.
// Deliveries are the common, large variant; boxing them would add an allocation per
// message to save a copy of a few hundred bytes.
#[allow(clippy::large_enum_variant)]
pub enum Event<T: Tokens> {
    /// The handshake finished: the connection is open.
    Connected,
    /// A synchronous method's reply (or the error that prevents it).
    Reply(T::Reply, Result<Reply, Error>),
    /// A publish's confirm (or the error that prevents it).
    Confirm(T::Confirm, Result<Confirmation, Error>),
    /// A delivery for a consumer, or a message it cannot receive (e.g. over the size cap;
    /// it was rejected back to the queue).
    Delivery(T::Consumer, Result<Delivery, Error>),
    /// A consumer ended: `None` after our cancel, else why.
    ConsumerEnded(T::Consumer, Option<Error>),
    /// A returned (unroutable mandatory) message on a channel not in confirm mode.
    Returned(T::Channel, Box<Content>),
    /// A channel closed; the failures of its pending work follow.
    ChannelClosed(T::Channel, Error),
    /// The broker paused (`false`) or resumed publishing on a channel.
    ChannelFlow(T::Channel, bool),
    /// The broker blocked the connection's publishers (`connection.blocked`), with the reason.
    Blocked(String),
    /// The broker unblocked the connection.
    Unblocked,
    /// The connection is finished. Emitted exactly once, before the failures of whatever
    /// was still pending (so those waiters already find it closed); nothing follows them.
    Closed(Error),
}

/// What the handshake or the open connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitStart,
    AwaitTune,
    AwaitOpenOk,
    Open,
    /// We sent connection.close and wait for close-ok (until the deadline).
    Closing,
    Closed,
}

/// A protocol violation we detected: close the connection with this code.
struct Violation {
    code: ReplyCode,
    text: String,
}

fn violation(code: ReplyCode, text: impl Into<String>) -> Violation {
    Violation { code, text: text.into() }
}

/// How long we wait for `close-ok` after sending `connection.close` when the driver does not
/// say otherwise.
const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// An AMQP 0-9-1 connection, client side, as a state machine. See the module documentation
/// for the calling protocol.
pub struct Connection<T: Tokens> {
    config: Config,
    state: State,
    tuning: Tuning,
    limits: Limits,
    server_properties: FieldTable,
    /// Index = channel id; 0 is never used.
    channels: Vec<Option<Channel<T>>>,
    /// Index = channel id: the last closed incarnation of that id and why it closed, so a
    /// command that was already on its way when the channel closed gets the real reason
    /// (the broker's 404, ...) rather than a generic one. Replaced when the id is reused.
    closed_channels: Vec<Option<(u64, Error)>>,
    open_channels: usize,
    /// Connection-level synchronous calls (update-secret).
    rpcs: VecDeque<Pending<T>>,
    next_epoch: u64,
    /// Where the search for a free channel id starts.
    channel_cursor: u16,
    /// Numbers the consumer tags chosen here.
    next_consumer_tag: u64,
    /// False while the driver does not read the socket (a consumer's queue is full): the
    /// broker's frames, heartbeats included, wait in the socket, so silence proves nothing.
    reading: bool,
    out: Outbox,
    events: VecDeque<Event<T>>,
    heartbeat: Option<Duration>,
    last_read: Instant,
    last_write: Instant,
    close_deadline: Option<Instant>,
    /// How long the close-ok was (or is being) waited for.
    close_timeout: Duration,
    /// Why the connection is closing or closed.
    close_error: Option<Error>,
    /// How our `connection.close` ended, once it has.
    close_outcome: Option<CloseOutcome>,
    blocked: Option<String>,
}

/// How a `connection.close` we sent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseOutcome {
    /// The broker answered `close-ok` (or closed the connection itself at the same time).
    Confirmed,
    /// No `close-ok` came within the close timeout; the connection was abandoned.
    TimedOut(Duration),
    /// The socket failed or reached end of file before `close-ok` arrived.
    Interrupted,
}

impl<T: Tokens> Connection<T> {
    /// A connection about to start its handshake: the protocol header is queued.
    pub fn new(config: Config, now: Instant) -> Self {
        let limits = Limits { max_message_size: config.max_message_size, ..Limits::default() };
        let mut out = Outbox::default();
        out.raw(&lepus_codec::PROTOCOL_HEADER);
        Connection {
            config,
            state: State::AwaitStart,
            tuning: Tuning::default(),
            limits,
            server_properties: FieldTable::new(),
            channels: Vec::new(),
            closed_channels: Vec::new(),
            open_channels: 0,
            rpcs: VecDeque::new(),
            next_epoch: 1,
            channel_cursor: 1,
            next_consumer_tag: 0,
            reading: true,
            out,
            events: VecDeque::new(),
            heartbeat: None,
            last_read: now,
            last_write: now,
            close_deadline: None,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            close_error: None,
            close_outcome: None,
            blocked: None,
        }
    }

    /// Continues the numbering of channel incarnations from `next_epoch`: a connection that
    /// replaces an earlier one (recovery) must never reuse an epoch, so that a delivery tag
    /// of the earlier connection cannot be acknowledged on a channel of this one.
    pub fn continue_epochs(&mut self, next_epoch: u64) {
        self.next_epoch = self.next_epoch.max(next_epoch);
    }

    /// The epoch the next channel will get.
    pub fn next_epoch(&self) -> u64 {
        self.next_epoch
    }

    /// How our `connection.close` ended (`None` if we did not close, or it has not ended).
    pub fn close_outcome(&self) -> Option<CloseOutcome> {
        self.close_outcome
    }

    /// The decoder limits in force (they change at tune).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The negotiated tuning (zeros before `connection.tune`).
    pub fn tuning(&self) -> Tuning {
        self.tuning
    }

    /// What the server said about itself in `connection.start`.
    pub fn server_properties(&self) -> &FieldTable {
        &self.server_properties
    }

    /// True once the handshake finished and until the connection starts closing.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// True until the server's `connection.start` arrived.
    pub fn awaiting_start(&self) -> bool {
        self.state == State::AwaitStart
    }

    /// True when nothing more will happen.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The reason for the block, while the broker blocks our publishers.
    pub fn blocked(&self) -> Option<&str> {
        self.blocked.as_deref()
    }

    /// The error the connection closed (or is closing) with.
    pub fn close_error(&self) -> Option<&Error> {
        self.close_error.as_ref()
    }

    /// Channels open or opening.
    pub fn channel_count(&self) -> usize {
        self.open_channels
    }

    /// Publishes on `channel` that await their confirm.
    pub fn unconfirmed(&self, channel: ChannelKey) -> usize {
        self.channel(channel).and_then(|c| c.confirms.as_ref()).map_or(0, ConfirmTracker::outstanding)
    }

    /// Returned messages on `channel` that matched no outstanding mandatory publish (yet).
    pub fn unmatched_returns(&self, channel: ChannelKey) -> usize {
        self.channel(channel).and_then(|c| c.confirms.as_ref()).map_or(0, ConfirmTracker::unmatched_returns)
    }

    // ---- input ------------------------------------------------------------------------

    /// Feeds one frame read from the socket.
    pub fn handle_frame(&mut self, now: Instant, frame: Frame) {
        self.last_read = now;
        if self.state == State::Closed {
            return;
        }
        let result = match frame {
            Frame::Heartbeat => Ok(()),
            Frame::Method(0, method) => self.connection_method(now, method),
            Frame::Method(id, m) if m.class_id() == connection::Start::CLASS_ID => {
                Err(violation(ReplyCode::COMMAND_INVALID, format!("{} on channel {id}", m.name())))
            }
            Frame::Method(id, method) => self.channel_method(id, method),
            Frame::Header(0, _) | Frame::Body(0, _) => {
                Err(violation(ReplyCode::UNEXPECTED_FRAME, "content frame on channel 0"))
            }
            Frame::Header(id, header) => self.channel_content(id, |c| c.assembler.header(header)),
            Frame::Body(id, body) => self.channel_content(id, |c| c.assembler.body(body)),
        };
        if let Err(v) = result {
            self.violate(now, v);
        }
    }

    /// A content header frame on `channel` announcing `body_size` bytes did not decode for a
    /// limit of ours (tables nested too deep; the frame itself was consumed, see
    /// [`lepus_codec::header_frame_prefix`]): its message is rejected back to its queue and
    /// the connection carries on. Any other decode error goes to
    /// [`Connection::handle_decode_error`].
    pub fn handle_refused_header(&mut self, now: Instant, channel: u16, body_size: u64, error: DecodeError) {
        self.last_read = now;
        if self.state == State::Closed {
            return;
        }
        if channel == 0 {
            self.violate(now, violation(ReplyCode::UNEXPECTED_FRAME, "content frame on channel 0"));
            return;
        }
        if let Err(v) = self.header_refused(channel, body_size, error) {
            self.violate(now, v);
        }
    }

    /// The bytes from the socket did not decode: close with the error's reply code. The
    /// stream cannot be trusted any more, so the connection is closed at once (after the
    /// close frame is written).
    pub fn handle_decode_error(&mut self, error: DecodeError) {
        if self.state == State::Closed {
            return;
        }
        tracing::warn!(%error, "closing the connection: the broker sent invalid frames");
        let reason = CloseReason::client(error.reply_code(), error.to_string());
        self.send_connection_close(&reason);
        self.finish(Error::Decode(error));
    }

    /// Reading or writing the socket failed, or it reached end of file (the driver turns
    /// the `io::Error` into the most telling [`Error`], e.g. a TLS alert).
    pub fn handle_io_error(&mut self, error: Error) {
        if self.state == State::Closed {
            return;
        }
        let error = match (self.state, self.close_error.take()) {
            // The broker may drop the socket instead of sending close-ok; our reason stands.
            (State::Closing, Some(reason)) => {
                self.close_outcome.get_or_insert(CloseOutcome::Interrupted);
                reason
            }
            _ => error,
        };
        self.out.clear();
        self.finish(error);
    }

    /// Lets deadlines act: heartbeats to send, a silent peer, a close-ok that never came.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        if let Some(deadline) = self.close_deadline
            && now >= deadline
        {
            tracing::warn!("no connection.close-ok from the broker in time: abandoning the connection");
            self.close_outcome.get_or_insert(CloseOutcome::TimedOut(self.close_timeout));
            let error = self.close_error.take().unwrap_or(Error::Timeout("connection.close-ok"));
            self.out.clear();
            self.finish(error);
            return;
        }
        let Some(interval) = self.heartbeat else { return };
        if self.reading && now >= self.last_read + interval * 2 {
            tracing::warn!(?interval, "closing the connection: no frame from the broker for two heartbeat intervals");
            self.out.clear();
            self.finish(Error::MissedHeartbeats(interval * 2));
            return;
        }
        if now >= self.last_write + interval / 2 {
            if self.out.is_empty() {
                self.queue_control(&Frame::Heartbeat);
            }
            // Bytes are waiting either way; the deadline must move on, or a driver whose
            // socket is not writable would be woken again at once, forever.
            self.last_write = now;
        }
    }

    /// The driver stopped (`false`) or resumed reading the socket. While it does not read,
    /// the broker cannot be judged silent; on resume its silence is counted from `now`.
    pub fn set_reading(&mut self, now: Instant, reading: bool) {
        if reading && !self.reading {
            self.last_read = now;
        }
        self.reading = reading;
    }

    // ---- output -----------------------------------------------------------------------

    /// The next bytes to write to the socket, in order.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        let bytes = self.out.pop()?;
        self.last_write = now;
        Some(bytes)
    }

    /// Bytes queued for writing.
    pub fn pending_transmit(&self) -> usize {
        self.out.len()
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event<T>> {
        self.events.pop_front()
    }

    /// When [`Connection::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let heartbeat = self.heartbeat.map(|i| {
            let send = self.last_write + i / 2;
            if self.reading { send.min(self.last_read + i * 2) } else { send }
        });
        match (heartbeat, self.close_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- commands ---------------------------------------------------------------------

    /// Opens a channel; `token` receives `channel.open-ok`, and `channel` comes back in the
    /// channel's events. The channel may be used at once: the broker processes what follows
    /// after the open.
    pub fn open_channel(
        &mut self,
        token: T::Reply,
        channel: T::Channel,
    ) -> Result<ChannelKey, (Error, T::Reply, T::Channel)> {
        self.open_channel_inner(None, token, channel)
    }

    /// Opens a channel with id `id`, as [`Connection::open_channel`] does; fails if that id is
    /// taken or above `channel_max`. Recovery reopens each channel with its former id, so
    /// that frames already encoded for it stay valid.
    pub fn open_channel_at(
        &mut self,
        id: u16,
        token: T::Reply,
        channel: T::Channel,
    ) -> Result<ChannelKey, (Error, T::Reply, T::Channel)> {
        self.open_channel_inner(Some(id), token, channel)
    }

    fn open_channel_inner(
        &mut self,
        wanted: Option<u16>,
        token: T::Reply,
        channel: T::Channel,
    ) -> Result<ChannelKey, (Error, T::Reply, T::Channel)> {
        if let Err(e) = self.check_open() {
            return Err((e, token, channel));
        }
        let max = match self.tuning.channel_max {
            0 => u16::MAX,
            n => n,
        };
        let id = match wanted {
            None => self.free_channel_id(max),
            Some(id) => {
                let free = self.channels.get(usize::from(id)).is_none_or(Option::is_none);
                (id != 0 && id <= max && free && self.open_channels < usize::from(max)).then_some(id)
            }
        };
        let Some(id) = id else {
            return Err((Error::ChannelLimit(max), token, channel));
        };
        let key = ChannelKey { id, epoch: self.next_epoch };
        self.next_epoch += 1;
        let mut channel = Channel::new(key, channel, self.config.max_message_size);
        channel.rpcs.push_back(Pending::new(&[chan::OpenOk::ID], token));
        let slot = usize::from(id);
        if self.channels.len() <= slot {
            self.channels.resize_with(slot + 1, || None);
        }
        if let Some(entry) = self.channels.get_mut(slot) {
            *entry = Some(channel);
        }
        self.open_channels += 1;
        self.queue_control(&Frame::Method(id, chan::Open::default().into()));
        Ok(key)
    }

    /// Sends a method on a channel. A synchronous one leaves `token` waiting for its reply;
    /// an asynchronous or `nowait` one resolves it with [`Reply::Sent`] at once.
    ///
    /// `channel.close` starts the close handshake: calls still pending fail at once (their
    /// replies will be discarded) and `token` gets `close-ok`. `confirm.select` and
    /// `tx.select` switch the channel's mode as they are sent.
    pub fn call(&mut self, key: ChannelKey, method: Method, token: T::Reply) {
        self.call_inner(key, method, token, None);
    }

    /// `basic.consume`: like [`Connection::call`], and `consumer` receives the deliveries
    /// once `consume-ok` names the tag (at once for `nowait`, which needs a tag).
    ///
    /// An empty consumer tag is replaced by one chosen here (`lepus.<n>`), so that every
    /// consume-ok can be matched to its consumer by tag.
    pub fn consume(&mut self, key: ChannelKey, mut consume: basic::Consume, token: T::Reply, consumer: T::Consumer) {
        if consume.consumer_tag.is_empty() {
            self.next_consumer_tag += 1;
            let tag = format!("lepus.{}.{}", key.epoch, self.next_consumer_tag);
            consume.consumer_tag = ShortStr::try_from(tag).unwrap_or_default();
        }
        self.call_inner(key, consume.into(), token, Some(consumer));
    }

    fn call_inner(&mut self, key: ChannelKey, method: Method, token: T::Reply, consumer: Option<T::Consumer>) {
        if let Err(e) = self.check_channel(key) {
            self.events.push_back(Event::Reply(token, Err(e)));
            return;
        }
        let refused = self.channel(key).and_then(|c| match &method {
            Method::ConfirmSelect(_) if c.tx => Some("confirm.select on a transactional channel"),
            Method::TxSelect(_) if c.confirms.is_some() => Some("tx.select on a channel in confirm mode"),
            _ => None,
        });
        if let Some(why) = refused {
            self.events.push_back(Event::Reply(token, Err(Error::InvalidOperation(why))));
            return;
        }
        let expect = expected_reply(&method);
        let tag = match &method {
            Method::BasicConsume(m) => Some(m.consumer_tag.clone()),
            Method::BasicCancel(m) => Some(m.consumer_tag.clone()),
            _ => None,
        };
        // Encoded before anything is registered or switched: a method that cannot be sent
        // (arguments nested too deep, a frame over frame_max) fails its own caller and
        // leaves the channel as it was.
        let frame = Frame::Method(key.id, method);
        if let Err(e) = self.queue(&frame) {
            self.events.push_back(Event::Reply(token, Err(Error::Encode(e))));
            return;
        }
        let Frame::Method(_, method) = frame else { return };
        if let Method::ChannelClose(_) = method {
            let reason =
                Error::ChannelClosed(CloseReason::client(ReplyCode::REPLY_SUCCESS, "closed by the application"));
            self.fail_channel_pending(key, &reason);
        }
        let Some(c) = self.channel_mut(key) else {
            self.events.push_back(Event::Reply(token, Ok(Reply::Sent)));
            return;
        };
        match &method {
            Method::ConfirmSelect(_) => {
                c.confirms.get_or_insert_with(ConfirmTracker::new);
            }
            Method::TxSelect(_) => c.tx = true,
            Method::ChannelClose(_) => c.state = ChannelState::Closing,
            Method::BasicConsume(m) if m.nowait => {
                if let Some(consumer) = consumer.clone() {
                    c.consumers.insert(m.consumer_tag.clone(), consumer);
                }
            }
            _ => {}
        }
        match expect {
            Some(expect) => c.rpcs.push_back(Pending { expect, token: Some(token), consumer, tag }),
            None => self.events.push_back(Event::Reply(token, Ok(Reply::Sent))),
        }
    }

    /// Sends an asynchronous method (ack, nack, reject, recover-async, a `nowait` request
    /// without a waiter). Acks for a channel incarnation that has closed are refused, never
    /// sent with a stale tag.
    pub fn send(&mut self, key: ChannelKey, method: Method) -> Result<(), Error> {
        if let Err(e) = self.check_channel(key) {
            return Err(match method {
                Method::BasicAck(basic::Ack { delivery_tag, .. })
                | Method::BasicNack(basic::Nack { delivery_tag, .. })
                | Method::BasicReject(basic::Reject { delivery_tag, .. }) => {
                    if self.is_closed() {
                        e
                    } else {
                        Error::StaleDeliveryTag(delivery_tag)
                    }
                }
                _ => e,
            });
        }
        self.queue(&Frame::Method(key.id, method)).map_err(Error::Encode)
    }

    /// Queues a publish whose frames the caller encoded (`basic.publish`, header, bodies, on
    /// `key.id`). With `confirm`, the channel must be in confirm mode: the publish gets the
    /// next delivery tag (returned) and its token resolves with the broker's verdict.
    pub fn publish(
        &mut self,
        key: ChannelKey,
        frames: impl IntoIterator<Item = Bytes>,
        confirm: Option<(T::Confirm, Option<Box<ReturnKey>>)>,
    ) -> Result<Option<u64>, (Error, Option<T::Confirm>)> {
        let (token, return_key) = match confirm {
            Some((t, k)) => (Some(t), k),
            None => (None, None),
        };
        if let Err(e) = self.check_channel(key) {
            return Err((e, token));
        }
        let Some(c) = self.channel_mut(key) else {
            return Err((Error::InvalidOperation("publish on a closed channel"), token));
        };
        let tag = match (token, c.confirms.as_mut()) {
            (Some(token), Some(tracker)) => Some(tracker.push(token, return_key)),
            (Some(token), None) => {
                return Err((
                    Error::InvalidOperation("confirmed publish on a channel without confirm.select"),
                    Some(token),
                ));
            }
            (None, Some(tracker)) => {
                // Nobody waits for this one, but the broker counts it: it takes a tag.
                tracker.push_untracked();
                None
            }
            (None, None) => None,
        };
        if c.flow_active {
            for segment in frames {
                self.out.segment(segment);
            }
        } else {
            // We answered flow-ok(false): no content may go out until flow(true). Publishes
            // that were already on their way wait here, in order (their tags are taken).
            c.held.extend(frames);
        }
        Ok(tag)
    }

    /// Whether the broker currently lets `key` publish (`channel.flow`).
    pub fn flow_active(&self, key: ChannelKey) -> bool {
        self.channel(key).is_some_and(|c| c.flow_active)
    }

    /// Replaces the connection's secret (`connection.update-secret`).
    pub fn update_secret(&mut self, new_secret: Bytes, reason: &str, token: T::Reply) {
        if let Err(e) = self.check_open() {
            self.events.push_back(Event::Reply(token, Err(e)));
            return;
        }
        let reason = ShortStr::try_from(reason).unwrap_or_default();
        let method = connection::UpdateSecret { new_secret, reason };
        if let Err(e) = self.queue(&Frame::Method(0, method.into())) {
            self.events.push_back(Event::Reply(token, Err(Error::Encode(e))));
            return;
        }
        self.rpcs.push_back(Pending::new(&[connection::UpdateSecretOk::ID], token));
    }

    /// Closes the connection: pending work fails at once with the reason; close-ok is
    /// awaited until `now + timeout`.
    pub fn close(&mut self, now: Instant, code: ReplyCode, text: &str, timeout: Option<Duration>) {
        match self.state {
            State::Closing | State::Closed => return,
            State::AwaitStart | State::AwaitTune | State::AwaitOpenOk => {
                self.out.clear();
                self.finish(Error::ConnectionClosed(CloseReason::client(code, text)));
                return;
            }
            State::Open => {}
        }
        let reason = CloseReason::client(code, text);
        tracing::info!(%reason, "closing the connection");
        self.send_connection_close(&reason);
        self.start_closing(now, Error::ConnectionClosed(reason), timeout.unwrap_or(DEFAULT_CLOSE_TIMEOUT));
    }

    // ---- internals --------------------------------------------------------------------

    /// Queues a frame that carries what the application gave (arguments, names): it may not
    /// encode, or exceed `frame_max`, and then nothing is queued.
    fn queue(&mut self, frame: &Frame) -> Result<(), lepus_codec::EncodeError> {
        self.out.frame(frame, self.tuning.frame_max)
    }

    /// Queues a frame the state machine built itself (heartbeats, replies to the broker,
    /// handshake methods).
    fn queue_control(&mut self, frame: &Frame) {
        enqueue_control(&mut self.out, frame);
    }

    fn check_open(&self) -> Result<(), Error> {
        match self.state {
            State::Open => Ok(()),
            State::Closing | State::Closed => Err(self.closed_error()),
            State::AwaitStart | State::AwaitTune | State::AwaitOpenOk => {
                Err(Error::InvalidOperation("the connection is not open yet"))
            }
        }
    }

    fn closed_error(&self) -> Error {
        self.close_error.clone().unwrap_or_else(|| {
            Error::ConnectionClosed(CloseReason::client(ReplyCode::REPLY_SUCCESS, "connection closed"))
        })
    }

    fn check_channel(&self, key: ChannelKey) -> Result<(), Error> {
        self.check_open()?;
        match self.channel(key) {
            Some(c) if c.state != ChannelState::Closing => Ok(()),
            Some(_) => {
                Err(Error::ChannelClosed(CloseReason::client(ReplyCode::REPLY_SUCCESS, "closed by the application")))
            }
            None => Err(self.closed_reason(key).unwrap_or_else(|| {
                Error::ChannelClosed(CloseReason::client(ReplyCode::REPLY_SUCCESS, "channel closed"))
            })),
        }
    }

    /// Why this incarnation of a channel closed, if it was the last one on its id.
    fn closed_reason(&self, key: ChannelKey) -> Option<Error> {
        match self.closed_channels.get(usize::from(key.id))? {
            Some((epoch, error)) if *epoch == key.epoch => Some(error.clone()),
            _ => None,
        }
    }

    fn channel(&self, key: ChannelKey) -> Option<&Channel<T>> {
        self.channels.get(usize::from(key.id))?.as_ref().filter(|c| c.key == key)
    }

    fn channel_mut(&mut self, key: ChannelKey) -> Option<&mut Channel<T>> {
        self.channels.get_mut(usize::from(key.id))?.as_mut().filter(|c| c.key == key)
    }

    fn free_channel_id(&mut self, max: u16) -> Option<u16> {
        if self.open_channels >= usize::from(max) {
            return None;
        }
        let mut id = self.channel_cursor;
        for _ in 0..max {
            if id == 0 || id > max {
                id = 1;
            }
            if self.channels.get(usize::from(id)).is_none_or(Option::is_none) {
                self.channel_cursor = id.wrapping_add(1);
                return Some(id);
            }
            id = id.wrapping_add(1);
        }
        None
    }

    fn send_connection_close(&mut self, reason: &CloseReason) {
        let text = ShortStr::try_from(truncate(&reason.reply_text, 255)).unwrap_or_default();
        let close = connection::Close {
            reply_code: reason.reply_code,
            reply_text: text,
            class_id: reason.class_id,
            method_id: reason.method_id,
        };
        self.queue_control(&Frame::Method(0, close.into()));
    }

    /// We detected a protocol violation: close with its code, fail everything now.
    fn violate(&mut self, now: Instant, v: Violation) {
        tracing::warn!(code = %v.code, text = %v.text, "closing the connection: protocol violation by the broker");
        let reason = CloseReason::client(v.code, v.text.clone());
        self.send_connection_close(&reason);
        let error = Error::Protocol { reply_code: v.code, text: v.text };
        if self.state == State::Open {
            self.start_closing(now, error, DEFAULT_CLOSE_TIMEOUT);
        } else {
            self.finish(error);
        }
    }

    fn start_closing(&mut self, now: Instant, error: Error, timeout: Duration) {
        self.fail_everything(&error);
        self.close_error = Some(error);
        self.state = State::Closing;
        self.close_timeout = timeout;
        self.close_deadline = Some(now + timeout);
    }

    /// The connection is over: fail what is left and emit `Closed` exactly once.
    fn finish(&mut self, error: Error) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.close_deadline = None;
        // Closed first: whoever is woken by a failure below must already see the
        // connection closed, with this reason.
        self.events.push_back(Event::Closed(error.clone()));
        self.fail_everything(&error);
        self.close_error = Some(error);
    }

    fn fail_everything(&mut self, error: &Error) {
        for pending in std::mem::take(&mut self.rpcs) {
            pending.answer(&mut self.events, Err(error.clone()));
        }
        let channels = std::mem::take(&mut self.channels);
        for channel in channels.into_iter().flatten() {
            self.fail_channel(channel, error);
        }
        self.open_channels = 0;
    }

    /// Fails the pending calls of a channel that is closing but stays registered.
    fn fail_channel_pending(&mut self, key: ChannelKey, error: &Error) {
        let Some(c) = self.channel_mut(key) else { return };
        let pending = std::mem::take(&mut c.rpcs);
        for p in pending {
            p.answer(&mut self.events, Err(error.clone()));
        }
    }

    /// Removes a channel for good: its id becomes free.
    fn remove_channel(&mut self, id: u16) -> Option<Channel<T>> {
        let channel = self.channels.get_mut(usize::from(id))?.take()?;
        self.open_channels -= 1;
        Some(channel)
    }

    fn fail_channel(&mut self, channel: Channel<T>, error: &Error) {
        let Channel { key, token, rpcs, confirms, consumers, .. } = channel;
        let slot = usize::from(key.id);
        if self.closed_channels.len() <= slot {
            self.closed_channels.resize_with(slot + 1, || None);
        }
        if let Some(entry) = self.closed_channels.get_mut(slot) {
            *entry = Some((key.epoch, error.clone()));
        }
        // Closed first: whoever is woken by a failure below must already see the channel
        // closed, with this reason.
        self.events.push_back(Event::ChannelClosed(token, error.clone()));
        for p in rpcs {
            p.answer(&mut self.events, Err(error.clone()));
        }
        if let Some(mut tracker) = confirms {
            tracker.fail_all(|token| self.events.push_back(Event::Confirm(token, Err(error.clone()))));
        }
        for (_, consumer) in consumers {
            self.events.push_back(Event::ConsumerEnded(consumer, Some(error.clone())));
        }
    }
}

/// Queues a frame the state machine built itself. These hold no application tables and fit
/// any `frame_max`, so they always encode; were one not to, it is reported, not sent.
fn enqueue_control(out: &mut Outbox, frame: &Frame) {
    if let Err(e) = out.frame(frame, 0) {
        tracing::error!(error = %e, "a protocol frame could not be encoded");
    }
}

/// The channel with wire id `id`, borrowing only the channel table.
fn slot<T: Tokens>(channels: &mut [Option<Channel<T>>], id: u16) -> Option<&mut Channel<T>> {
    channels.get_mut(usize::from(id))?.as_mut()
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}
