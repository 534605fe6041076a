//! `Connection`: connect, open channels, watch blocking and closing, close.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use lepus_codec::{Content, FieldTable, FieldValue, ReplyCode, ShortStr};
use tokio::{
    net::TcpStream,
    sync::{broadcast, mpsc, oneshot, watch},
};

use crate::{
    Channel, ConnectionOptions, Error,
    channel::ChannelShared,
    driver::{self, Command},
    proto::{self, ChannelKey, Tuning},
};

/// Commands in flight from all handles of one connection before senders wait.
const COMMAND_CAPACITY: usize = 4096;
/// Connection events kept for slow readers of [`Connection::events`].
const EVENT_CAPACITY: usize = 64;

/// Something that happened to the connection as a whole.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// The broker blocked publishing (memory or disk alarm), with its reason.
    Blocked(String),
    /// The broker lifted the block.
    Unblocked,
    /// The connection closed, with why.
    Closed(Error),
}

/// The handles' way to the driver. Only handles hold one: when the last is dropped, the
/// driver sees the queue close and closes the connection.
#[derive(Clone)]
pub(crate) struct Commands {
    tx: mpsc::Sender<Command>,
    pub(crate) conn: Arc<ConnShared>,
}

impl Commands {
    /// Sends a command to the driver; fails with the close reason if it has stopped.
    pub(crate) async fn send(&self, cmd: Command) -> Result<(), Error> {
        self.tx.send(cmd).await.map_err(|_| self.conn.closed_error())
    }

    /// Sends without waiting (for `Drop`); gives up if the queue is full or closed.
    pub(crate) fn try_send(&self, cmd: Command) -> bool {
        self.tx.try_send(cmd).is_ok()
    }
}

/// State the driver and the handles share. Written by the driver only; it holds no way to
/// send commands, so the driver keeping it does not keep the connection alive.
pub(crate) struct ConnShared {
    info: OnceLock<(Tuning, FieldTable)>,
    blocked: watch::Sender<Option<String>>,
    closed: watch::Sender<Option<Error>>,
    events: broadcast::Sender<ConnectionEvent>,
    channels: Mutex<HashMap<u16, Arc<ChannelShared>>>,
    pub(crate) publish_window: usize,
    pub(crate) blocked_timeout: Option<Duration>,
}

impl ConnShared {
    pub(crate) fn connected(&self, tuning: Tuning, server_properties: FieldTable) {
        let _ = self.info.set((tuning, server_properties));
    }

    pub(crate) fn tuning(&self) -> Tuning {
        self.info.get().map(|(t, _)| *t).unwrap_or_default()
    }

    pub(crate) fn set_blocked(&self, reason: Option<String>) {
        let event = match &reason {
            Some(r) => ConnectionEvent::Blocked(r.clone()),
            None => ConnectionEvent::Unblocked,
        };
        self.blocked.send_replace(reason);
        // Nobody listening is fine: events never wait for readers.
        let _ = self.events.send(event);
    }

    pub(crate) fn blocked_rx(&self) -> watch::Receiver<Option<String>> {
        self.blocked.subscribe()
    }

    /// Whether the broker blocks publishing now, without subscribing (the publish hot path).
    pub(crate) fn is_blocked(&self) -> bool {
        self.blocked.borrow().is_some()
    }

    pub(crate) fn closed(&self, error: &Error) {
        if self.closed.borrow().is_some() {
            return;
        }
        self.closed.send_replace(Some(error.clone()));
        // A closed connection blocks nobody: publishers waiting for the block to lift
        // wake up and find the connection closed.
        self.blocked.send_replace(None);
        let _ = self.events.send(ConnectionEvent::Closed(error.clone()));
        let channels = std::mem::take(&mut *self.channels.lock().unwrap_or_else(PoisonError::into_inner));
        for channel in channels.into_values() {
            channel.closed(error.clone());
        }
    }

    /// The error the connection closed with, or a generic one if it is still open (used
    /// when a reply channel broke, which only happens when the driver is gone).
    pub(crate) fn closed_error(&self) -> Error {
        self.closed.borrow().clone().unwrap_or_else(|| {
            Error::ConnectionClosed(crate::CloseReason::client(
                ReplyCode::INTERNAL_ERROR,
                "the connection driver stopped",
            ))
        })
    }

    pub(crate) fn check_open(&self) -> Result<(), Error> {
        match &*self.closed.borrow() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    pub(crate) fn register(&self, channel: Arc<ChannelShared>) {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner).insert(channel.key.id, channel);
    }

    fn channel(&self, key: ChannelKey) -> Option<Arc<ChannelShared>> {
        let channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        channels.get(&key.id).filter(|c| c.key == key).cloned()
    }

    pub(crate) fn channel_closed(&self, key: ChannelKey, error: Error) {
        let removed = {
            let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
            match channels.get(&key.id) {
                Some(c) if c.key == key => channels.remove(&key.id),
                _ => None,
            }
        };
        if let Some(channel) = removed {
            channel.closed(error);
        }
    }

    pub(crate) fn channel_flow(&self, key: ChannelKey, active: bool) {
        if let Some(channel) = self.channel(key) {
            channel.set_flow(active);
        }
    }

    pub(crate) fn returned(&self, key: ChannelKey, content: Content) {
        if let Some(channel) = self.channel(key) {
            channel.returned(content);
        }
    }
}

/// A connection to RabbitMQ: cheap to clone; every clone and every channel talks to the one
/// task that owns the socket. Dropping the last handle (channels and deliveries included)
/// closes the connection cleanly; no runtime is needed in `Drop`.
///
/// ```no_run
/// # async fn demo() -> Result<(), lepus::Error> {
/// let conn = lepus::Connection::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
/// let channel = conn.open_channel().await?;
/// channel.queue_declare("jobs", Default::default(), Default::default()).await?;
/// conn.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Connection {
    shared: Arc<ConnShared>,
    commands: Commands,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("tuning", &self.shared.tuning()).finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to the broker an AMQP URI names (`amqp://` or `amqps://`).
    pub async fn connect(uri: &str) -> Result<Connection, Error> {
        let options = ConnectionOptions::from_uri(uri)?;
        Self::connect_with(options).await
    }

    /// Connects with explicit options. The whole of TCP connect, TLS handshake and AMQP
    /// handshake is bounded by the options' connection timeout.
    pub async fn connect_with(options: ConnectionOptions) -> Result<Connection, Error> {
        let timeout = options.get_connection_timeout();
        match tokio::time::timeout(timeout, Self::establish(options)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout("connecting (TCP, TLS and the AMQP handshake)")),
        }
    }

    async fn establish(options: ConnectionOptions) -> Result<Connection, Error> {
        let host = options.get_host().to_owned();
        let tcp = TcpStream::connect((host.as_str(), options.get_port())).await?;
        tcp.set_nodelay(true)?;
        let config = crate::client_config::build(&options)?;
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_CAPACITY);
        let shared = Arc::new(ConnShared {
            info: OnceLock::new(),
            blocked: watch::Sender::new(None),
            closed: watch::Sender::new(None),
            events: broadcast::Sender::new(EVENT_CAPACITY),
            channels: Mutex::new(HashMap::new()),
            publish_window: options.get_publish_window().max(1),
            blocked_timeout: options.get_blocked_publish_timeout(),
        });
        let proto = proto::Connection::new(config, std::time::Instant::now());
        let (connected_tx, connected_rx) = oneshot::channel();
        match options.get_tls() {
            Some(tls) => {
                let stream = crate::tls::connect(tcp, &host, tls).await?;
                tokio::spawn(driver::run(stream, proto, commands_rx, shared.clone(), connected_tx, true));
            }
            None => {
                tokio::spawn(driver::run(tcp, proto, commands_rx, shared.clone(), connected_tx, false));
            }
        }
        match connected_rx.await {
            Ok(Ok(())) => {
                tracing::info!(host = %host, port = options.get_port(), "connected");
                let commands = Commands { tx: commands_tx, conn: shared.clone() };
                Ok(Connection { shared, commands })
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(shared.closed_error()),
        }
    }

    /// Opens a channel.
    pub async fn open_channel(&self) -> Result<Channel, Error> {
        self.shared.check_open()?;
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::OpenChannel { reply: tx }).await?;
        let (key, opened) = rx.await.map_err(|_| self.shared.closed_error())??;
        let channel = ChannelShared::new(key, self.shared.clone());
        self.shared.register(channel.clone());
        // From here the channel closes if this call is abandoned: the handle owns it.
        let channel = Channel::new(channel, self.commands.clone());
        match opened.await.map_err(|_| self.shared.closed_error())? {
            Ok(_) => Ok(channel),
            Err(e) => Err(e),
        }
    }

    /// Closes the connection normally and waits for the broker's close-ok (or 5 s).
    pub async fn close(&self) -> Result<(), Error> {
        self.close_with(ReplyCode::REPLY_SUCCESS, "closed by the application").await
    }

    /// Closes the connection with a reply code and text.
    pub async fn close_with(&self, code: ReplyCode, text: &str) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Close { code, text: text.to_owned(), done: tx }).await.is_err() {
            // Already closed: closing again is not an error.
            return Ok(());
        }
        let _ = rx.await;
        Ok(())
    }

    /// True until the connection starts closing or fails.
    pub fn is_open(&self) -> bool {
        self.shared.check_open().is_ok()
    }

    /// The error the connection closed with, once it has.
    pub fn close_reason(&self) -> Option<Error> {
        self.shared.check_open().err()
    }

    /// Waits until the connection has closed and returns why.
    pub async fn closed(&self) -> Error {
        let mut rx = self.shared.closed.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(error) => error.clone().unwrap_or_else(|| self.shared.closed_error()),
            Err(_) => self.shared.closed_error(),
        }
    }

    /// The broker's reason while it blocks our publishers (`connection.blocked`).
    pub fn blocked(&self) -> Option<String> {
        self.shared.blocked.borrow().clone()
    }

    /// Blocked, unblocked and closed events. A receiver that falls behind loses the oldest
    /// events; the connection never waits for it.
    pub fn events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.shared.events.subscribe()
    }

    /// What was negotiated in `connection.tune`.
    pub fn tuning(&self) -> Tuning {
        self.shared.tuning()
    }

    /// What the broker said about itself (`product`, `version`, `capabilities`, ...).
    pub fn server_properties(&self) -> FieldTable {
        self.shared.info.get().map(|(_, p)| p.clone()).unwrap_or_default()
    }

    /// Whether the broker advertises a capability (e.g. `"publisher_confirms"`).
    pub fn server_capability(&self, name: &str) -> bool {
        self.shared.info.get().is_some_and(|(_, p)| {
            p.get("capabilities").and_then(FieldValue::as_table).and_then(|c| c.get(name)).and_then(FieldValue::as_bool)
                == Some(true)
        })
    }

    /// Replaces the connection's secret, e.g. a refreshed OAuth token.
    pub async fn update_secret(&self, secret: impl Into<Bytes>, reason: &str) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::UpdateSecret { secret: secret.into(), reason: reason.to_owned(), reply: tx };
        self.commands.send(cmd).await?;
        rx.await.map_err(|_| self.shared.closed_error())?.map(|_| ())
    }
}

/// A short string from user input, or the encode error that names why not.
pub(crate) fn short(s: &str) -> Result<ShortStr, Error> {
    ShortStr::try_from(s).map_err(Error::from)
}
