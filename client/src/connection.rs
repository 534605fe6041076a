//! `Connection`: connect, open channels, watch blocking and closing, close.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use lepus_codec::{FieldTable, FieldValue, ReplyCode, ShortStr};
use tokio::sync::{broadcast, oneshot};
use tracing::{Instrument, field};

use crate::{
    Channel, ConnectionEvent, ConnectionOptions, Error,
    channel_shared::ChannelShared,
    command::{Command, CommandSender},
    conn_shared::{ConnShared, HandleLimits},
    connect,
    deadline::within,
    driver,
    proto::Tuning,
    recovery::{AddressRotation, WhileDisconnected},
};

/// Bytes of publishes that may wait for the driver to take them before publishers wait.
const PUBLISH_BUDGET: usize = 4 << 20;

/// What the handles of a connection made with `options` and its driver share.
pub(crate) fn shared_state(options: &ConnectionOptions) -> Arc<ConnShared> {
    let recovery = options.get_recovery();
    Arc::new(ConnShared::new(
        HandleLimits {
            publish_window: options.get_publish_window().max(1),
            blocked_timeout: options.get_blocked_publish_timeout(),
            call_timeout: options.get_call_timeout(),
            fail_fast_while_down: recovery.get_while_disconnected() == WhileDisconnected::FailFast,
            recovery_wait: recovery.wait_timeout,
            republish: recovery.is_enabled() && recovery.republish_unconfirmed,
            publish_budget: PUBLISH_BUDGET,
            max_unread: options.get_max_unread_bytes(),
        },
        options.get_connection_name().map(str::to_owned),
        options.get_metrics().cloned(),
    ))
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
    commands: CommandSender,
    /// The deadline of this handle's calls.
    timeout: Option<Duration>,
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
        // `address` is recorded once a socket is connected.
        let span =
            tracing::info_span!("lepus.connect", connection = options.get_connection_name(), address = field::Empty);
        match tokio::time::timeout(timeout, Self::establish(options)).instrument(span).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout("connecting (TCP, TLS and the AMQP handshake)")),
        }
    }

    async fn establish(options: ConnectionOptions) -> Result<Connection, Error> {
        // The first connection tries each address once, in the configured order.
        let addresses = options.get_addresses();
        let mut rotation =
            AddressRotation::new(addresses, options.get_address_order(), crate::recovery::backoff::seed());
        let mut last = None;
        let mut opened = None;
        for _ in 0..rotation.len() {
            let Some(address) = rotation.next() else { break };
            match connect::open(&address, &options).await {
                Ok(socket) => {
                    opened = Some((socket, address));
                    break;
                }
                Err(e) => {
                    tracing::info!(%address, error = %e, "could not connect");
                    last = Some(e);
                }
            }
        }
        let Some((opened, address)) = opened else {
            return Err(last.unwrap_or(Error::Timeout("connecting: no address to try")));
        };
        tracing::Span::current().record("address", field::display(&address));
        let proto = connect::state_machine(&options).await?;
        let shared = shared_state(&options);
        // From here, dropping `commands` (this future abandoned, or the handshake failed)
        // is what tells the driver to close. Made before the driver starts, which must not
        // find the queue without senders.
        let commands = CommandSender::new(shared.clone());
        let (connected_tx, connected_rx) = oneshot::channel();
        tracing::debug!(%address, "connected the socket; starting the handshake");
        let setup = driver::Setup {
            options,
            proto,
            opened,
            address: address.clone(),
            rotation,
            shared: shared.clone(),
            connected: connected_tx,
        };
        tokio::spawn(driver::run(setup));
        match connected_rx.await {
            Ok(Ok(())) => {
                tracing::info!(%address, "connected");
                let timeout = shared.limits.call_timeout;
                Ok(Connection { shared, commands, timeout })
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(shared.closed_error()),
        }
    }

    /// A handle on a connection whose engine the test drives itself, taking its commands.
    #[cfg(test)]
    pub(crate) fn from_parts(shared: Arc<ConnShared>) -> Self {
        let timeout = shared.limits.call_timeout;
        Connection { commands: CommandSender::new(shared.clone()), shared, timeout }
    }

    /// This connection handle with another deadline for its calls (`None`: none); other
    /// handles keep theirs. See [`ConnectionOptions::call_timeout`].
    #[must_use]
    pub fn with_timeout(&self, timeout: Option<Duration>) -> Connection {
        Connection { timeout, ..self.clone() }
    }

    /// Opens a channel. Its calls get this handle's deadline.
    pub async fn open_channel(&self) -> Result<Channel, Error> {
        // `channel` is recorded once the connection has given the channel its number.
        let span = tracing::info_span!("lepus.channel.open", connection = self.shared.name(), channel = field::Empty);
        let opening = async {
            self.shared.wait_up().await?;
            self.shared.check_open()?;
            let shared = ChannelShared::new(self.shared.clone());
            let (tx, rx) = oneshot::channel();
            self.commands.send(Command::OpenChannel { channel: shared.clone(), reply: tx })?;
            // From here the channel closes if this call is abandoned: the handle owns it.
            let channel = Channel::new(shared.clone(), self.commands.clone(), self.timeout);
            let opened = rx.await.map_err(|_| shared.close_reason_or_closed());
            tracing::Span::current().record("channel", shared.key().id);
            opened??;
            shared.count_opened();
            Ok(channel)
        };
        within(self.timeout, "opening a channel", opening.instrument(span)).await
    }

    /// Closes the connection normally and waits for the broker's `close-ok`.
    ///
    /// `Ok(())` once the broker confirmed the close (or if the connection had already
    /// closed). [`Error::CloseNotConfirmed`] if no `close-ok` came within the close timeout
    /// ([`ConnectionOptions::close_timeout`]) or the socket failed first: the connection is
    /// closed either way, but the broker may not have seen the close.
    pub async fn close(&self) -> Result<(), Error> {
        self.close_with(ReplyCode::REPLY_SUCCESS, "closed by the application").await
    }

    /// Closes the connection with a reply code and text (see [`Connection::close`]).
    pub async fn close_with(&self, code: ReplyCode, text: &str) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Close { code, text: text.to_owned(), done: tx }).is_err() {
            // Already closed: closing again is not an error.
            return Ok(());
        }
        // The command waits its turn behind everything sent before it, unless the socket is
        // backed up: then this makes the driver close at once.
        self.shared.request_close(code, text);
        let span = call_span(&self.shared, 0, "connection.close");
        within(self.timeout, "closing the connection", async { rx.await.unwrap_or(Ok(())) }.instrument(span)).await
    }

    /// True until the connection closes for good (also while it is recovering: see
    /// [`Connection::is_recovering`]).
    pub fn is_open(&self) -> bool {
        self.shared.check_open().is_ok()
    }

    /// True while the connection is down and being recovered.
    pub fn is_recovering(&self) -> bool {
        // Down stays set when recovery gives up; the connection is then closed, not recovering.
        self.shared.is_down() && self.shared.check_open().is_ok()
    }

    /// How many times the connection was lost and recovered.
    pub fn recoveries(&self) -> u64 {
        self.shared.recoveries()
    }

    /// The error the connection closed with, once it has.
    pub fn close_reason(&self) -> Option<Error> {
        self.shared.check_open().err()
    }

    /// Waits until the connection has closed and its socket is released, and returns why it
    /// closed.
    pub async fn closed(&self) -> Error {
        let mut finished = self.shared.subscribe_finished();
        let _ = finished.wait_for(|done| *done).await;
        self.shared.closed_error()
    }

    /// The broker's reason while it blocks our publishers (`connection.blocked`).
    pub fn blocked(&self) -> Option<String> {
        self.shared.blocked_reason()
    }

    /// Blocked, unblocked and closed events. A receiver that falls behind loses the oldest
    /// events; the connection never waits for it.
    pub fn events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.shared.subscribe_events()
    }

    /// What was negotiated in `connection.tune`.
    pub fn tuning(&self) -> Tuning {
        self.shared.tuning()
    }

    /// What the broker said about itself (`product`, `version`, `capabilities`, ...).
    pub fn server_properties(&self) -> FieldTable {
        self.shared.server_properties()
    }

    /// Whether the broker advertises a capability (e.g. `"publisher_confirms"`).
    pub fn server_capability(&self, name: &str) -> bool {
        self.shared
            .server_properties()
            .get("capabilities")
            .and_then(FieldValue::as_table)
            .and_then(|c| c.get(name))
            .and_then(FieldValue::as_bool)
            == Some(true)
    }

    /// Replaces the connection's secret, e.g. a refreshed OAuth token.
    pub async fn update_secret(&self, secret: impl Into<Bytes>, reason: &str) -> Result<(), Error> {
        let secret = secret.into();
        let span = call_span(&self.shared, 0, "connection.update-secret");
        let updating = async {
            self.shared.wait_up().await?;
            let (tx, rx) = oneshot::channel();
            self.commands.send(Command::UpdateSecret { secret, reason: reason.to_owned(), reply: tx })?;
            rx.await.map_err(|_| self.shared.closed_error())?.map(|_| ())
        };
        within(self.timeout, "updating the secret", updating.instrument(span)).await
    }
}

/// The span of one synchronous call: the connection's name, the channel number (0 for the
/// connection itself) and the method's name (`queue.declare`).
pub(crate) fn call_span(conn: &ConnShared, channel: u16, method: &'static str) -> tracing::Span {
    tracing::debug_span!("lepus.call", connection = conn.name(), channel, method)
}

/// A short string from user input, or the encode error that names why not.
pub(crate) fn short(s: &str) -> Result<ShortStr, Error> {
    ShortStr::try_from(s).map_err(Error::from)
}
