//! The engine (the connection and its recovery, without IO) against a scripted broker and a
//! manual clock: no sockets, no sleeps, no `Instant::now()` inside the engine. The harness
//! plays the driver's part by hand: it hands the engine the handles' commands, moves the
//! engine's output to the scripted broker and the broker's answers back, loses the
//! connection where a test says, and carries out each reconnection attempt at the instant
//! the engine chose, connecting or failing as the test says.
//!
//! The handles are the real public ones (`Connection`, `Channel`, `Consumer`, `Delivery`,
//! `Confirm`), polled by the harness between its turns.

mod recovery;

use std::{
    collections::HashMap,
    future::Future,
    pin::pin,
    task::Poll,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use lepus_codec::{
    BasicProperties, ContentHeader, Frame, Limits, Method, PROTOCOL_HEADER, ShortStr, decode_frame,
    method::{basic, channel as chan, connection, exchange, queue},
};
use tokio::sync::{broadcast, oneshot};

use super::{Attempt, Engine, EngineSetup, Proto};
use crate::{
    Connection, ConnectionEvent, ConnectionOptions, Credentials, Error, command::Command, recovery::AddressRotation,
};

/// How many turns a handle's future may take before the harness calls it a hang.
const TURNS: usize = 200;

pub(super) fn short(s: &str) -> ShortStr {
    ShortStr::try_from(s).unwrap()
}

/// A method the broker received: (connection index, channel, method).
pub(super) type Seen = (usize, u16, Method);

/// The scripted broker: it decodes what the engine wrote, logs every method, and answers
/// as RabbitMQ would. Connection `index` counts the connections made (0 the first).
#[derive(Default)]
pub(super) struct Broker {
    pub(super) index: usize,
    wire: BytesMut,
    header_seen: bool,
    /// Every method received, in order, on every connection.
    pub(super) log: Vec<Seen>,
    /// Server-named queues so far: named `amq.gen-c<index>-<n>`, so a new name differs.
    generated: u32,
    /// Channels in confirm mode and their publish count.
    confirming: HashMap<u16, u64>,
    /// Whether publishes on confirming channels are acked at once.
    pub(super) confirm_publishes: bool,
    /// Deliveries to send with a `basic.consume-ok`: one per consumer, with tag 1.
    pub(super) deliver_on_consume: bool,
    /// Answers queued for the engine.
    replies: Vec<Frame>,
}

impl Broker {
    fn new_connection(&mut self) {
        self.index += 1;
        self.wire.clear();
        self.header_seen = false;
        self.confirming.clear();
    }

    /// Takes `bytes` the engine wrote; answers what they carry.
    fn take(&mut self, bytes: &[u8]) {
        self.wire.extend_from_slice(bytes);
        if !self.header_seen {
            if self.wire.len() < PROTOCOL_HEADER.len() {
                return;
            }
            assert_eq!(&self.wire[..PROTOCOL_HEADER.len()], &PROTOCOL_HEADER);
            let _ = self.wire.split_to(PROTOCOL_HEADER.len());
            self.header_seen = true;
            let start = connection::Start {
                mechanisms: Bytes::from_static(b"PLAIN"),
                locales: Bytes::from_static(b"en_US"),
                ..connection::Start::default()
            };
            self.replies.push(Frame::Method(0, start.into()));
        }
        let limits = Limits::default().tuned(0, 16 << 20);
        while let Some(frame) = decode_frame(&mut self.wire, &limits).expect("the engine writes valid frames") {
            if let Frame::Method(channel, method) = frame {
                self.answer(channel, &method);
                self.log.push((self.index, channel, method));
            }
        }
    }

    fn answer(&mut self, channel: u16, method: &Method) {
        let reply: Option<Method> = match method {
            Method::ConnectionStartOk(_) => {
                Some(connection::Tune { channel_max: 2047, frame_max: 131_072, heartbeat: 60 }.into())
            }
            Method::ConnectionOpen(_) => Some(connection::OpenOk::default().into()),
            Method::ConnectionClose(_) => Some(connection::CloseOk {}.into()),
            Method::ChannelOpen(_) => Some(chan::OpenOk::default().into()),
            Method::ChannelClose(_) => {
                self.confirming.remove(&channel);
                Some(chan::CloseOk {}.into())
            }
            Method::ExchangeDeclare(d) if !d.nowait => Some(exchange::DeclareOk {}.into()),
            Method::ExchangeBind(b) if !b.nowait => Some(exchange::BindOk {}.into()),
            Method::QueueDeclare(d) if !d.nowait => {
                let name = if d.queue.is_empty() {
                    self.generated += 1;
                    short(&format!("amq.gen-c{}-{}", self.index, self.generated))
                } else {
                    d.queue.clone()
                };
                Some(queue::DeclareOk { queue: name, message_count: 0, consumer_count: 0 }.into())
            }
            Method::QueueBind(b) if !b.nowait => Some(queue::BindOk {}.into()),
            Method::QueueDelete(d) if !d.nowait => Some(queue::DeleteOk { message_count: 0 }.into()),
            Method::BasicQos(_) => Some(basic::QosOk {}.into()),
            Method::ConfirmSelect(s) => {
                self.confirming.insert(channel, 0);
                (!s.nowait).then(|| lepus_codec::method::confirm::SelectOk {}.into())
            }
            Method::BasicConsume(c) if !c.nowait => {
                let ok = basic::ConsumeOk { consumer_tag: c.consumer_tag.clone() };
                self.replies.push(Frame::Method(channel, ok.into()));
                if self.deliver_on_consume {
                    let body = format!("message on connection {}", self.index);
                    self.replies.extend(delivery(channel, &c.consumer_tag, 1, body.as_bytes()));
                }
                None
            }
            Method::BasicCancel(c) if !c.nowait => {
                Some(basic::CancelOk { consumer_tag: c.consumer_tag.clone() }.into())
            }
            Method::BasicPublish(_) => {
                if let Some(count) = self.confirming.get_mut(&channel) {
                    *count += 1;
                    if self.confirm_publishes {
                        let ack = basic::Ack { delivery_tag: *count, multiple: false };
                        self.replies.push(Frame::Method(channel, ack.into()));
                    }
                }
                None
            }
            _ => None,
        };
        if let Some(reply) = reply {
            self.replies.push(Frame::Method(channel, reply));
        }
    }

    /// The methods connection `index` received, as short descriptions.
    pub(super) fn described(&self, index: usize) -> Vec<String> {
        self.log.iter().filter(|(i, ..)| *i == index).map(|(_, c, m)| describe(*c, m)).collect()
    }
}

/// A whole message for a consumer: deliver, header, one body frame.
pub(super) fn delivery(channel: u16, consumer_tag: &ShortStr, delivery_tag: u64, body: &[u8]) -> Vec<Frame> {
    let deliver = basic::Deliver {
        consumer_tag: consumer_tag.clone(),
        delivery_tag,
        redelivered: false,
        exchange: ShortStr::new(),
        routing_key: short("k"),
    };
    vec![
        Frame::Method(channel, deliver.into()),
        Frame::Header(channel, ContentHeader::new(body.len() as u64, BasicProperties::default())),
        Frame::Body(channel, Bytes::copy_from_slice(body)),
    ]
}

pub(super) fn describe(channel: u16, method: &Method) -> String {
    let s = |s: &ShortStr| s.as_str().unwrap_or("?").to_owned();
    match method {
        Method::ExchangeDeclare(d) => format!("{channel} exchange.declare {}", s(&d.exchange)),
        Method::ExchangeBind(b) => format!("{channel} exchange.bind {}<-{}", s(&b.destination), s(&b.source)),
        Method::QueueDeclare(d) => format!("{channel} queue.declare {:?}", s(&d.queue)),
        Method::QueueBind(b) => format!("{channel} queue.bind {}<-{}", s(&b.queue), s(&b.exchange)),
        Method::BasicQos(q) => format!("{channel} basic.qos {}", q.prefetch_count),
        Method::BasicConsume(c) => format!("{channel} basic.consume {} {}", s(&c.queue), s(&c.consumer_tag)),
        Method::BasicPublish(p) => format!("{channel} basic.publish {:?} {}", s(&p.exchange), s(&p.routing_key)),
        Method::BasicAck(a) => format!("{channel} basic.ack {}", a.delivery_tag),
        other => format!("{channel} {}", other.name()),
    }
}

/// The engine, the handles on it, the scripted broker and the clock.
pub(super) struct Harness {
    pub(super) engine: Engine,
    /// The manual clock: the instant every engine call is given.
    pub(super) now: Instant,
    /// Commands taken from the handles' queue.
    commands: std::collections::VecDeque<Command>,
    pub(super) conn: Connection,
    events: broadcast::Receiver<ConnectionEvent>,
    connected: oneshot::Receiver<Result<(), Error>>,
    pub(super) broker: Broker,
    options: ConnectionOptions,
    /// The engine was told the connection is over: commands get the final answer.
    finished: bool,
}

/// Options for a connection to three addresses (ports 1, 2, 3), tried in order.
pub(super) fn three_nodes() -> ConnectionOptions {
    ConnectionOptions::from_uri("amqp://guest:guest@127.0.0.1:1,127.0.0.1:2,127.0.0.1:3/%2f").unwrap()
}

impl Harness {
    /// A connection made with `options` to its first address, its handshake done; `seed`
    /// fixes the backoff's jitter.
    pub(super) fn connected(options: ConnectionOptions, seed: u64) -> Self {
        let now = Instant::now();
        let mut rotation = AddressRotation::new(options.get_addresses(), options.get_address_order(), seed);
        let address = rotation.next().unwrap();
        let shared = crate::connection::shared_state(&options);
        let (connected_tx, connected) = oneshot::channel();
        let proto = state_machine(&options, now);
        let engine = Engine::new(EngineSetup {
            options: options.clone(),
            proto,
            address,
            tls: false,
            rotation,
            shared: shared.clone(),
            connected: connected_tx,
            seed,
        });
        let conn = Connection::from_parts(shared);
        let events = conn.events();
        let mut h = Harness {
            engine,
            now,
            commands: Default::default(),
            conn,
            events,
            connected,
            broker: Broker::default(),
            options,
            finished: false,
        };
        h.engine.session_started(false);
        h.turns();
        assert!(matches!(h.connected.try_recv(), Ok(Ok(()))), "the first handshake completed");
        h
    }

    /// Turns until nothing moves: commands in, output to the broker, answers back.
    pub(super) fn turns(&mut self) {
        for _ in 0..TURNS {
            let mut moved = false;
            self.engine.shared.commands.take(&mut self.commands);
            while let Some(cmd) = self.commands.pop_front() {
                if self.finished {
                    self.engine.apply_final(cmd, self.now);
                } else {
                    self.engine.command(cmd, self.now);
                }
                moved = true;
            }
            self.engine.end_turn(self.now);
            if self.engine.session_over() {
                return;
            }
            while let Some(bytes) = self.engine.out.pop_front() {
                self.engine.written(bytes.len());
                self.broker.take(&bytes);
                moved = true;
            }
            moved |= self.feed_replies();
            if !moved {
                return;
            }
        }
        panic!("the engine and the broker never went quiet");
    }

    fn feed_replies(&mut self) -> bool {
        let replies = std::mem::take(&mut self.broker.replies);
        if replies.is_empty() {
            return false;
        }
        self.feed(replies);
        true
    }

    /// Frames from the broker, read at the current instant.
    pub(super) fn feed(&mut self, frames: Vec<Frame>) {
        for frame in frames {
            frame.encode(&mut self.engine.read_buf).unwrap();
        }
        self.engine.received(self.now);
    }

    /// Runs a handle's future to its end, turning the engine between polls.
    pub(super) async fn run<F: Future>(&mut self, fut: F) -> F::Output {
        let mut fut = pin!(fut);
        for _ in 0..TURNS {
            if let Poll::Ready(out) = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
                return out;
            }
            self.turns();
            tokio::task::yield_now().await;
        }
        panic!("a handle's future did not resolve");
    }

    /// The socket fails: the session ends as the driver ends it.
    pub(super) fn lose(&mut self, error: Error) {
        self.engine.io_error(error);
        self.engine.end_turn(self.now);
        assert!(self.engine.session_over());
        self.engine.session_ended();
    }

    /// The engine's next reconnection attempt (`None`: it gave up).
    pub(super) fn next_attempt(&mut self) -> Option<Attempt> {
        self.engine.next_attempt(self.now)
    }

    /// The clock reaches the attempt's instant and its connect fails with `error`.
    pub(super) fn fail(&mut self, attempt: &Attempt, error: &Error) {
        self.now = attempt.at;
        self.engine.attempt_failed(error, self.now);
    }

    /// The clock reaches the attempt's instant, it connects, and the new session runs until
    /// quiet (handshake, then the replay).
    pub(super) fn connect(&mut self, attempt: Attempt) {
        self.now = attempt.at;
        let proto = state_machine(&self.options, self.now);
        self.broker.new_connection();
        self.engine.attempt_connected(attempt.address, proto);
        self.engine.session_started(false);
        self.turns();
    }

    /// A channel opened on the connection.
    pub(super) async fn open_channel(&mut self) -> crate::Channel {
        let conn = self.conn.clone();
        self.run(conn.open_channel()).await.unwrap()
    }

    /// Recovery is over: the engine answers everyone, as the driver's shutdown does.
    pub(super) fn shut_down(&mut self) {
        self.engine.finish(self.now);
        self.finished = true;
        self.engine.finished(self.now);
    }

    /// The connection events so far, in order.
    pub(super) fn events(&mut self) -> Vec<ConnectionEvent> {
        std::iter::from_fn(|| self.events.try_recv().ok()).collect()
    }

    pub(super) fn advance(&mut self, by: Duration) {
        self.now += by;
    }
}

fn state_machine(options: &ConnectionOptions, now: Instant) -> Proto {
    let credentials: Credentials = options.get_credentials().clone();
    let config = crate::client_config::build(options, &credentials).unwrap();
    Proto::new(config, now)
}
