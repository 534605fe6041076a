//! A scripted AMQP 0-9-1 server for fault tests: RabbitMQ never sends malformed frames, goes
//! silent on purpose or cuts a delivery in half, so the tests that need it talk to this.
//!
//! [`FakeBroker`] listens on `127.0.0.1:0`, accepts a connection, reads the protocol header,
//! performs the handshake with the `connection.tune` it was configured with, and then runs a
//! test-supplied async script on the [`Peer`]. The script reads like the conversation it is:
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use lepus::codec::{Frame, Method};
//! use lepus_tests::fake_broker::FakeBroker;
//!
//! let fake = FakeBroker::new()
//!     .start(|mut peer| async move {
//!         // Answer channel.open, basic.consume, ... until the client publishes.
//!         let (channel, _publish) = peer.wait_for(|_, m| matches!(m, Method::BasicPublish(_))).await?;
//!         peer.send_raw(&[8, 0, 0, 0, 0, 0, 0, 0x00]).await?; // a heartbeat with a bad frame end
//!         let seen = peer.expect_closed().await?;
//!         Ok((channel, seen))
//!     })
//!     .await?;
//! let conn = lepus::Connection::connect_with(fake.options()).await.unwrap();
//! // ... use the client; then collect what the script saw:
//! let (_channel, _seen) = fake.finish().await;
//! # Ok(()) }
//! ```
//!
//! While a script waits for frames, the peer answers the client's synchronous methods
//! generically (channel.open, queue.declare, basic.consume, confirm.select, ...) unless told
//! otherwise, so client handles can be created without scripting each reply; the method a
//! script waits for is returned to it unanswered. Every wait is bounded by the peer's
//! timeout, and every task the fake spawns is aborted when its handle is dropped.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use lepus::{
    ConnectionOptions,
    codec::{
        BasicProperties, ContentHeader, FieldTable, FieldValue, Frame, Limits, Method, PROTOCOL_HEADER, ShortStr,
        decode_frame,
        method::{basic, channel, confirm, connection, exchange, queue},
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
    time::Instant,
};

/// How long a peer waits for the client before it gives up with `TimedOut`, by default.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(15);

fn other(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

fn short(s: &str) -> ShortStr {
    ShortStr::try_from(s).unwrap_or_default()
}

/// How the fake broker behaves; build it, then [`FakeBroker::start`] a script.
#[derive(Debug, Clone)]
pub struct FakeBroker {
    tune: connection::Tune,
    auto_reply: bool,
    auto_confirm: bool,
    send_heartbeats: bool,
    timeout: Duration,
}

impl Default for FakeBroker {
    fn default() -> Self {
        FakeBroker::new()
    }
}

impl FakeBroker {
    /// Tunes `channel_max` 2047, `frame_max` 131072, heartbeat 0; answers synchronous methods
    /// generically, does not confirm publishes, sends no heartbeats.
    pub fn new() -> Self {
        FakeBroker {
            tune: connection::Tune { channel_max: 2047, frame_max: 131_072, heartbeat: 0 },
            auto_reply: true,
            auto_confirm: false,
            send_heartbeats: false,
            timeout: DEFAULT_PEER_TIMEOUT,
        }
    }

    /// The `connection.tune` the fake proposes.
    #[must_use]
    pub fn tune(mut self, channel_max: u16, frame_max: u32, heartbeat: u16) -> Self {
        self.tune = connection::Tune { channel_max, frame_max, heartbeat };
        self
    }

    /// Whether methods the script does not wait for are answered generically (default on).
    #[must_use]
    pub fn auto_reply(mut self, on: bool) -> Self {
        self.auto_reply = on;
        self
    }

    /// Whether every publish on a channel in confirm mode is acked as it arrives (default
    /// off: confirms stay pending until the script sends them).
    #[must_use]
    pub fn auto_confirm(mut self, on: bool) -> Self {
        self.auto_confirm = on;
        self
    }

    /// Whether the fake sends a heartbeat every half tuned interval while the script waits
    /// for frames (default off). Stalling stops them too.
    #[must_use]
    pub fn send_heartbeats(mut self, on: bool) -> Self {
        self.send_heartbeats = on;
        self
    }

    /// How long each wait of the peer may take before it fails with `TimedOut`.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Listens, then accepts one connection, performs the handshake and runs `script`.
    pub async fn start<T, F, Fut>(self, script: F) -> io::Result<Running<T>>
    where
        T: Send + 'static,
        F: FnOnce(Peer) -> Fut + Send + 'static,
        Fut: Future<Output = io::Result<T>> + Send + 'static,
    {
        self.start_inner(true, script).await
    }

    /// Like [`FakeBroker::start`] without the handshake: the script gets the socket as
    /// accepted (see [`Peer::read_protocol_header`], [`Peer::greet`], [`Peer::handshake`]).
    pub async fn start_raw<T, F, Fut>(self, script: F) -> io::Result<Running<T>>
    where
        T: Send + 'static,
        F: FnOnce(Peer) -> Fut + Send + 'static,
        Fut: Future<Output = io::Result<T>> + Send + 'static,
    {
        self.start_inner(false, script).await
    }

    async fn start_inner<T, F, Fut>(self, handshake: bool, script: F) -> io::Result<Running<T>>
    where
        T: Send + 'static,
        F: FnOnce(Peer) -> Fut + Send + 'static,
        Fut: Future<Output = io::Result<T>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let timeout = self.timeout + Duration::from_secs(5);
        let task = tokio::spawn(async move {
            let (stream, _) = tokio::time::timeout(self.timeout, listener.accept())
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no client connected to the fake broker"))??;
            // One connection only: later clients are refused.
            drop(listener);
            let mut peer = Peer::new(stream, &self)?;
            if handshake {
                peer.handshake().await?;
            }
            script(peer).await
        });
        Ok(Running { addr, task: Some(task), timeout })
    }

    /// Listens and runs `script` on every connection accepted, after the handshake, with
    /// the connection's index (0, 1, ...). Script failures are collected: see
    /// [`Serving::errors`].
    pub async fn start_each<F, Fut>(self, script: F) -> io::Result<Serving>
    where
        F: Fn(Peer, usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let errors_in_task = errors.clone();
        let script = Arc::new(script);
        let task = tokio::spawn(async move {
            // The connections' tasks live in the set: they end with the accept loop.
            let mut connections = JoinSet::new();
            for index in 0.. {
                let stream = loop {
                    tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => break stream,
                            Err(e) => record(&errors_in_task, index, &e),
                        },
                        Some(_) = connections.join_next() => {}
                    }
                };
                let (config, script, errors) = (self.clone(), script.clone(), errors_in_task.clone());
                connections.spawn(async move {
                    let result = async {
                        let mut peer = Peer::new(stream, &config)?;
                        peer.handshake().await?;
                        script(peer, index).await
                    }
                    .await;
                    if let Err(e) = result {
                        record(&errors, index, &e);
                    }
                });
            }
        });
        Ok(Serving { addr, task, errors })
    }
}

fn record(errors: &Mutex<Vec<String>>, index: usize, e: &io::Error) {
    errors.lock().unwrap_or_else(PoisonError::into_inner).push(format!("connection {index}: {e}"));
}

/// Connection options for a fake or proxy listening on `addr`: guest/guest, a 5 s
/// connection timeout.
///
/// Automatic recovery is off: the fault tests check what a connection does when it ends.
/// Recovery tests turn it on with [`ConnectionOptions::recovery`].
pub fn options_for(addr: SocketAddr) -> ConnectionOptions {
    ConnectionOptions::new()
        .host(addr.ip().to_string())
        .port(addr.port())
        .connection_timeout(Duration::from_secs(5))
        .recovery(lepus::RecoveryOptions::disabled())
}

/// A started one-connection fake broker. Dropping it aborts the script.
pub struct Running<T> {
    addr: SocketAddr,
    task: Option<JoinHandle<io::Result<T>>>,
    timeout: Duration,
}

impl<T> Running<T> {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connection options pointing at it.
    pub fn options(&self) -> ConnectionOptions {
        options_for(self.addr)
    }

    /// Waits for the script to end and returns its result.
    ///
    /// # Panics
    ///
    /// If the script failed, panicked or took longer than its peer timeout (plus a margin).
    pub async fn finish(mut self) -> T {
        let Some(mut task) = self.task.take() else { panic!("the fake broker's script was already collected") };
        let limit = self.timeout;
        let result = tokio::time::timeout(limit, &mut task).await;
        // A script that overran must not outlive the test.
        task.abort();
        match result {
            Ok(Ok(Ok(value))) => value,
            Ok(Ok(Err(e))) => panic!("the fake broker's script failed: {e}"),
            Ok(Err(e)) => panic!("the fake broker's script panicked: {e}"),
            Err(elapsed) => panic!("the fake broker's script did not end within {limit:?} ({elapsed})"),
        }
    }
}

impl<T> Drop for Running<T> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A fake broker serving every connection (see [`FakeBroker::start_each`]). Dropping it
/// aborts the listener and every connection's script.
pub struct Serving {
    addr: SocketAddr,
    task: JoinHandle<()>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Serving {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connection options pointing at it.
    pub fn options(&self) -> ConnectionOptions {
        options_for(self.addr)
    }

    /// Failures of the connections' scripts so far.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the fake knows about one channel the client opened.
#[derive(Debug, Default, Clone)]
struct ChannelState {
    confirm: bool,
    /// Publishes received since confirm.select (the last delivery tag the client assigned).
    published: u64,
    consumers: Vec<ShortStr>,
}

/// The server side of one connection, driven by a script.
pub struct Peer {
    stream: TcpStream,
    read_buf: BytesMut,
    limits: Limits,
    tune: connection::Tune,
    auto_reply: bool,
    auto_confirm: bool,
    send_heartbeats: bool,
    timeout: Duration,
    heartbeat_every: Option<Duration>,
    last_sent: Instant,
    channels: HashMap<u16, ChannelState>,
    generated: u64,
    heartbeats_received: usize,
    /// What the client sent in `connection.start-ok` (after [`Peer::greet`]).
    pub start_ok: Option<connection::StartOk>,
    /// What the client answered to our tune (after [`Peer::handshake`]).
    pub tune_ok: Option<connection::TuneOk>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("tune_ok", &self.tune_ok).field("channels", &self.channels).finish_non_exhaustive()
    }
}

impl Peer {
    fn new(stream: TcpStream, config: &FakeBroker) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        Ok(Peer {
            stream,
            read_buf: BytesMut::with_capacity(64 * 1024),
            limits: Limits::default(),
            tune: config.tune.clone(),
            auto_reply: config.auto_reply,
            auto_confirm: config.auto_confirm,
            send_heartbeats: config.send_heartbeats,
            timeout: config.timeout,
            heartbeat_every: None,
            last_sent: Instant::now(),
            channels: HashMap::new(),
            generated: 0,
            heartbeats_received: 0,
            start_ok: None,
            tune_ok: None,
        })
    }

    // ---- handshake --------------------------------------------------------------------

    /// Reads the 8-byte protocol header and checks it asks for AMQP 0-9-1.
    pub async fn read_protocol_header(&mut self) -> io::Result<()> {
        let mut header = [0u8; 8];
        let read = self.stream.read_exact(&mut header);
        tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no protocol header"))??;
        if header != PROTOCOL_HEADER {
            return Err(other(format!("bad protocol header {header:?}")));
        }
        Ok(())
    }

    /// The protocol header, `connection.start` and the client's `start-ok`.
    pub async fn greet(&mut self) -> io::Result<()> {
        self.read_protocol_header().await?;
        let mut capabilities = FieldTable::new();
        for name in ["publisher_confirms", "basic.nack", "consumer_cancel_notify", "connection.blocked"] {
            capabilities.insert(name, true).map_err(|e| other(e.to_string()))?;
        }
        let mut props = FieldTable::new();
        props.insert("product", "lepus fake broker").map_err(|e| other(e.to_string()))?;
        props.insert("capabilities", FieldValue::Table(capabilities)).map_err(|e| other(e.to_string()))?;
        let start = connection::Start {
            server_properties: props,
            mechanisms: Bytes::from_static(b"PLAIN AMQPLAIN"),
            ..connection::Start::default()
        };
        self.send_frame(Frame::Method(0, start.into())).await?;
        match self.expect_method().await? {
            (0, Method::ConnectionStartOk(ok)) => {
                self.start_ok = Some(ok);
                Ok(())
            }
            (ch, m) => Err(other(format!("expected connection.start-ok, got {} on channel {ch}", m.name()))),
        }
    }

    /// Sends the configured `connection.tune` and reads the client's `tune-ok`; the peer's
    /// decoder limits and heartbeats follow what the client accepted.
    pub async fn tune(&mut self) -> io::Result<connection::TuneOk> {
        self.send_frame(Frame::Method(0, self.tune.clone().into())).await?;
        let ok = match self.expect_method().await? {
            (0, Method::ConnectionTuneOk(ok)) => ok,
            (ch, m) => return Err(other(format!("expected connection.tune-ok, got {} on channel {ch}", m.name()))),
        };
        self.limits = Limits::default().tuned(ok.frame_max, Limits::DEFAULT_CONTROL_FRAME_MAX);
        if self.send_heartbeats && ok.heartbeat > 0 {
            self.heartbeat_every = Some(Duration::from_secs(u64::from(ok.heartbeat)) / 2);
        }
        self.tune_ok = Some(ok.clone());
        Ok(ok)
    }

    /// Reads `connection.open` and answers `open-ok`.
    pub async fn open(&mut self) -> io::Result<()> {
        match self.expect_method().await? {
            (0, Method::ConnectionOpen(_)) => {
                self.send_frame(Frame::Method(0, connection::OpenOk::default().into())).await
            }
            (ch, m) => Err(other(format!("expected connection.open, got {} on channel {ch}", m.name()))),
        }
    }

    /// The whole handshake: [`Peer::greet`], [`Peer::tune`], [`Peer::open`].
    pub async fn handshake(&mut self) -> io::Result<connection::TuneOk> {
        self.greet().await?;
        let ok = self.tune().await?;
        self.open().await?;
        Ok(ok)
    }

    // ---- sending ----------------------------------------------------------------------

    /// Encodes and writes one frame.
    pub async fn send_frame(&mut self, frame: Frame) -> io::Result<()> {
        self.send_frames(&[frame]).await
    }

    /// Encodes frames and writes them in one write.
    pub async fn send_frames(&mut self, frames: &[Frame]) -> io::Result<()> {
        let bytes = encode(frames)?;
        self.send_raw(&bytes).await
    }

    /// Writes bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        self.last_sent = Instant::now();
        Ok(())
    }

    // ---- receiving --------------------------------------------------------------------

    /// The next frame from the client, heartbeats included (counted); `None` at end of file.
    /// Nothing is answered. Sends heartbeats meanwhile if configured.
    pub async fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match decode_frame(&mut self.read_buf, &self.limits) {
                Ok(Some(frame)) => {
                    if frame == Frame::Heartbeat {
                        self.heartbeats_received += 1;
                    }
                    return Ok(Some(frame));
                }
                Ok(None) => {}
                Err(e) => return Err(other(format!("the client sent an invalid frame: {e}"))),
            }
            let heartbeat_at = self.heartbeat_every.map(|every| self.last_sent + every);
            tokio::select! {
                read = self.stream.read_buf(&mut self.read_buf) => {
                    if read? == 0 {
                        return if self.read_buf.is_empty() {
                            Ok(None)
                        } else {
                            Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the client closed inside a frame"))
                        };
                    }
                }
                () = sleep_until(heartbeat_at), if heartbeat_at.is_some() => {
                    self.send_frame(Frame::Heartbeat).await?;
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "the client sent nothing in time"));
                }
            }
        }
    }

    /// The next method from the client, unanswered; heartbeats and content frames are
    /// skipped. End of file is an error.
    pub async fn expect_method(&mut self) -> io::Result<(u16, Method)> {
        loop {
            match self.next_frame().await? {
                Some(Frame::Method(channel, method)) => return Ok((channel, method)),
                Some(_) => {}
                None => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the client closed the socket")),
            }
        }
    }

    /// Waits for a method matching `pred` and returns it unanswered; every method before it
    /// is answered generically (if auto-reply is on).
    pub async fn wait_for(&mut self, pred: impl Fn(u16, &Method) -> bool) -> io::Result<(u16, Method)> {
        loop {
            let (channel, method) = self.expect_method().await?;
            if pred(channel, &method) {
                return Ok((channel, method));
            }
            self.answer(channel, &method).await?;
        }
    }

    /// Answers the client generically for `duration` (heartbeats included if configured).
    pub async fn serve_for(&mut self, duration: Duration) -> io::Result<()> {
        let until = Instant::now() + duration;
        let serve = async {
            loop {
                let (channel, method) = self.expect_method().await?;
                self.answer(channel, &method).await?;
            }
        };
        match tokio::time::timeout_at(until, serve).await {
            Ok(result) => result,
            Err(_) => Ok(()),
        }
    }

    /// Answers generically until the client sends `connection.close`, answers `close-ok`,
    /// and waits for the socket to close; returns the close.
    pub async fn serve_until_closed(&mut self) -> io::Result<connection::Close> {
        let (_, method) = self.wait_for(|ch, m| ch == 0 && matches!(m, Method::ConnectionClose(_))).await?;
        let Method::ConnectionClose(close) = method else { unreachable!("matched above") };
        self.send_frame(Frame::Method(0, connection::CloseOk {}.into())).await?;
        self.expect_closed().await?;
        Ok(close)
    }

    /// Reads (unanswered) until the client closes the socket; returns the methods it sent
    /// meanwhile. A reset counts as closed too (a client closing with unread bytes resets).
    pub async fn expect_closed(&mut self) -> io::Result<Vec<(u16, Method)>> {
        let mut methods = Vec::new();
        loop {
            match self.next_frame().await {
                Ok(Some(Frame::Method(channel, method))) => methods.push((channel, method)),
                Ok(Some(_)) => {}
                Ok(None) => return Ok(methods),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(methods),
                Err(e) => return Err(e),
            }
        }
    }

    // ---- faults -----------------------------------------------------------------------

    /// Neither reads nor writes (no heartbeats either) for `duration`; the socket stays open.
    pub async fn stall_for(&mut self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }

    /// Neither reads nor writes until `release` completes (or the peer's timeout passes);
    /// the socket stays open.
    pub async fn stall_until(&mut self, release: impl Future<Output = ()>) -> io::Result<()> {
        tokio::time::timeout(self.timeout, release)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "stalled for the whole peer timeout"))
    }

    /// Closes the socket with a FIN: shuts our side down, then reads (and discards) until
    /// the client closes too, so that the close is not turned into a reset by unread bytes.
    /// Returns the methods the client sent after our FIN.
    pub async fn close_socket(mut self) -> io::Result<Vec<(u16, Method)>> {
        self.stream.shutdown().await?;
        self.expect_closed().await
    }

    /// Resets the connection: `SO_LINGER` 0, then close, so the client gets an RST.
    pub fn reset(self) -> io::Result<()> {
        self.stream.set_zero_linger()?;
        drop(self.stream);
        Ok(())
    }

    // ---- state ------------------------------------------------------------------------

    /// Heartbeat frames received from the client so far.
    pub fn heartbeats_received(&self) -> usize {
        self.heartbeats_received
    }

    /// Consumer tags the fake handed out on `channel`, oldest first.
    pub fn consumer_tags(&self, channel: u16) -> Vec<ShortStr> {
        self.channels.get(&channel).map(|c| c.consumers.clone()).unwrap_or_default()
    }

    /// Publishes received on `channel` since its `confirm.select` (= the last delivery tag).
    pub fn published(&self, channel: u16) -> u64 {
        self.channels.get(&channel).map_or(0, |c| c.published)
    }

    /// Channels the client opened and has not closed.
    pub fn open_channels(&self) -> Vec<u16> {
        let mut ids: Vec<u16> = self.channels.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Answers one method the way a broker would, if auto-reply is on; records channel,
    /// consumer and confirm state either way.
    pub async fn answer(&mut self, channel: u16, method: &Method) -> io::Result<()> {
        let reply = self.reply_to(channel, method);
        if let Some(reply) = reply
            && self.auto_reply
        {
            self.send_frame(Frame::Method(channel, reply)).await?;
        }
        if let Method::BasicPublish(_) = method
            && let Some(state) = self.channels.get_mut(&channel)
            && state.confirm
        {
            state.published += 1;
            let tag = state.published;
            if self.auto_confirm {
                self.send_frame(Frame::Method(channel, basic::Ack { delivery_tag: tag, multiple: false }.into()))
                    .await?;
            }
        }
        Ok(())
    }

    /// The generic reply to a method, updating the fake's view of the channel.
    fn reply_to(&mut self, channel: u16, method: &Method) -> Option<Method> {
        Some(match method {
            Method::ConnectionClose(_) => connection::CloseOk {}.into(),
            Method::ChannelOpen(_) => {
                self.channels.insert(channel, ChannelState::default());
                channel::OpenOk::default().into()
            }
            Method::ChannelClose(_) => {
                self.channels.remove(&channel);
                channel::CloseOk {}.into()
            }
            Method::ChannelFlow(flow) => channel::FlowOk { active: flow.active }.into(),
            Method::QueueDeclare(d) if !d.nowait => {
                let name = if d.queue.is_empty() {
                    self.generated += 1;
                    short(&format!("amq.gen-{}", self.generated))
                } else {
                    d.queue.clone()
                };
                queue::DeclareOk { queue: name, message_count: 0, consumer_count: 0 }.into()
            }
            Method::QueueBind(b) if !b.nowait => queue::BindOk {}.into(),
            Method::QueueUnbind(_) => queue::UnbindOk {}.into(),
            Method::QueuePurge(p) if !p.nowait => queue::PurgeOk { message_count: 0 }.into(),
            Method::QueueDelete(d) if !d.nowait => queue::DeleteOk { message_count: 0 }.into(),
            Method::ExchangeDeclare(d) if !d.nowait => exchange::DeclareOk {}.into(),
            Method::ExchangeDelete(d) if !d.nowait => exchange::DeleteOk {}.into(),
            Method::BasicQos(_) => basic::QosOk {}.into(),
            Method::BasicConsume(c) => {
                let tag = if c.consumer_tag.is_empty() {
                    self.generated += 1;
                    short(&format!("amq.ctag-{}", self.generated))
                } else {
                    c.consumer_tag.clone()
                };
                self.channels.entry(channel).or_default().consumers.push(tag.clone());
                if c.nowait {
                    return None;
                }
                basic::ConsumeOk { consumer_tag: tag }.into()
            }
            Method::BasicCancel(c) => {
                if let Some(state) = self.channels.get_mut(&channel) {
                    state.consumers.retain(|t| *t != c.consumer_tag);
                }
                if c.nowait {
                    return None;
                }
                basic::CancelOk { consumer_tag: c.consumer_tag.clone() }.into()
            }
            Method::BasicGet(_) => basic::GetEmpty::default().into(),
            Method::BasicRecover(_) => basic::RecoverOk {}.into(),
            Method::ConfirmSelect(s) => {
                self.channels.entry(channel).or_default().confirm = true;
                if s.nowait {
                    return None;
                }
                confirm::SelectOk {}.into()
            }
            _ => return None,
        })
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Encodes frames back to back.
pub fn encode(frames: &[Frame]) -> io::Result<BytesMut> {
    let mut out = BytesMut::new();
    for frame in frames {
        frame.encode(&mut out).map_err(|e| other(e.to_string()))?;
    }
    Ok(out)
}

/// The frames of one `basic.deliver`: method, content header, and the body split into body
/// frames of at most `body_frame` bytes (at least one frame if the body is not empty).
pub fn delivery(
    channel: u16,
    consumer_tag: &ShortStr,
    delivery_tag: u64,
    body: &[u8],
    body_frame: usize,
) -> Vec<Frame> {
    let deliver = basic::Deliver {
        consumer_tag: consumer_tag.clone(),
        delivery_tag,
        redelivered: false,
        exchange: ShortStr::new(),
        routing_key: short("fake.key"),
    };
    let properties = BasicProperties { delivery_mode: Some(2), ..BasicProperties::default() };
    let mut frames = vec![
        Frame::Method(channel, deliver.into()),
        Frame::Header(channel, ContentHeader::new(body.len() as u64, properties)),
    ];
    for chunk in body.chunks(body_frame.max(1)) {
        frames.push(Frame::Body(channel, Bytes::copy_from_slice(chunk)));
    }
    frames
}
