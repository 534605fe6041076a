//! Request/reply (RPC) over RabbitMQ: [`RpcClient`] sends requests and matches replies by
//! correlation id, many calls at once on one channel; [`RpcServer`] answers them with a
//! handler per queue.
//!
//! # How a call travels
//!
//! 1. The client registers the call under a fresh correlation id (`<random prefix>.<n>`),
//!    then publishes the request with `correlation_id`, `reply_to` and `mandatory = true`
//!    on its own channel, which is in confirm mode.
//! 2. The broker's confirm tells the call at once whether the request reached a queue:
//!    [`Confirmation::Returned`] (no queue bound for it) fails the call with
//!    [`RpcError::Unroutable`], a nack with [`RpcError::Nacked`]. Confirms were chosen over
//!    the channel's returns stream because the client already matches a `basic.return` to
//!    its publish, so no second table keyed by correlation id is needed, and a nack (e.g.
//!    a full request queue with `reject-publish`) is reported too.
//! 3. The server consumes the request queue with a prefetch, runs the handler, publishes
//!    the reply to `reply_to` through the default exchange with the request's correlation
//!    id, and only then acknowledges the request. A connection lost in between redelivers
//!    the request: a handler may see a request twice.
//! 4. One task per client reads the reply queue and hands each reply to the call waiting
//!    for its correlation id. A reply nobody waits for (its call timed out) is dropped and
//!    counted ([`RpcClient::discarded_replies`]).
//!
//! Replies come by default through RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`,
//! consumed with `no_ack` on the publishing channel before the first request, as RabbitMQ
//! requires): no queue is created. [`ReplyQueue::Exclusive`] uses an exclusive,
//! server-named queue instead, e.g. where replies must survive a slow client for a while.
//!
//! # Bounded
//!
//! Every call has a timeout ([`RpcClientOptions::timeout`], or per request): when it fires,
//! or when the caller drops the call's future, the call's entry leaves the table, so the
//! table never holds more than the calls in progress, and at most
//! [`RpcClientOptions::max_in_flight`] of those. A handler error travels back in the
//! [`ERROR_HEADER`] header and fails the call with [`RpcError::Remote`].
//!
//! ```no_run
//! use lepus::Connection;
//! use lepus_patterns::rpc::{RpcClient, RpcClientOptions, RpcResponse, RpcServer, ServeOptions};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let conn = Connection::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
//!
//! let mut server = RpcServer::new(&conn);
//! server
//!     .serve("rpc.upper", ServeOptions::default(), |request| async move {
//!         let text = String::from_utf8_lossy(&request.body).to_uppercase();
//!         Ok(RpcResponse::from(text))
//!     })
//!     .await?;
//!
//! let client = RpcClient::new(&conn, RpcClientOptions::default()).await?;
//! let reply = client.call("rpc.upper", "hello").await?;
//! assert_eq!(&reply.body[..], b"HELLO");
//!
//! server.shutdown().await?;
//! conn.close().await?;
//! # Ok(()) }
//! ```

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    hash::{BuildHasher, Hasher},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use lepus::{
    BasicProperties, Channel, Confirmation, Connection, ConsumeOptions, Consumer, Delivery, FieldTable, FieldValue,
    PublishOptions, QueueDeclareOptions, ReplyCode, ShortStr,
};
use tokio::{
    sync::{Semaphore, oneshot, watch},
    task::{AbortHandle, JoinHandle, JoinSet},
};

/// RabbitMQ's pseudo-queue for direct reply-to.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The reply header that carries a handler's error message (a long string); a reply with
/// it fails the call with [`RpcError::Remote`].
pub const ERROR_HEADER: &str = "x-rpc-error";

/// How long setting up a client or a server (opening a channel, declaring, consuming) may
/// take before it fails with a timeout.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long stopping waits for the broker (cancel, close).
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where replies come back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReplyQueue {
    /// RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`): no queue is declared; replies
    /// go straight to this client's channel, and are lost if it is gone.
    #[default]
    DirectReplyTo,
    /// An exclusive, server-named queue that lives as long as the client's connection.
    Exclusive,
}

/// Settings of an [`RpcClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcClientOptions {
    /// Where replies come back.
    pub reply_queue: ReplyQueue,
    /// How long a call waits for its reply unless the request says otherwise (default 30 s).
    pub timeout: Duration,
    /// Calls in progress at once; more wait for a slot within their timeout (default 10 000).
    pub max_in_flight: usize,
}

impl Default for RpcClientOptions {
    fn default() -> Self {
        RpcClientOptions {
            reply_queue: ReplyQueue::DirectReplyTo,
            timeout: Duration::from_secs(30),
            max_in_flight: 10_000,
        }
    }
}

/// Why a call failed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RpcError {
    /// No reply within the call's timeout. The call's entry is gone: a late reply is dropped.
    Timeout(Duration),
    /// The request was mandatory and no queue was bound for it (no server queue): the
    /// broker returned it.
    Unroutable {
        /// The broker's reply code (312 `NO_ROUTE`).
        reply_code: ReplyCode,
        /// The broker's text.
        reply_text: String,
        /// The exchange the request was published to.
        exchange: String,
        /// Its routing key.
        routing_key: String,
    },
    /// The broker refused the request (a nack, e.g. a full queue with `reject-publish`).
    Nacked,
    /// The server's handler failed; its message came back in the [`ERROR_HEADER`] header.
    Remote {
        /// The handler's error message.
        message: String,
    },
    /// The client's channel or connection closed; every call in progress fails with this,
    /// and so does every later call.
    Closed(lepus::Error),
    /// Any other client error (e.g. a routing key over 255 bytes).
    Client(lepus::Error),
}

impl RpcError {
    fn from_lepus(error: lepus::Error) -> Self {
        match error {
            e @ (lepus::Error::ChannelClosed(_) | lepus::Error::ConnectionClosed(_)) => RpcError::Closed(e),
            e => RpcError::Client(e),
        }
    }
}

impl From<lepus::Error> for RpcError {
    fn from(error: lepus::Error) -> Self {
        RpcError::from_lepus(error)
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RpcError::Timeout(after) => write!(f, "no reply within {after:?}"),
            RpcError::Unroutable { reply_code, reply_text, exchange, routing_key } => write!(
                f,
                "request unroutable: no queue for routing key {routing_key:?} on exchange {exchange:?} \
                 ({reply_code} {reply_text})"
            ),
            RpcError::Nacked => f.write_str("the broker refused the request (nack)"),
            RpcError::Remote { message } => write!(f, "the server's handler failed: {message}"),
            RpcError::Closed(e) => write!(f, "the RPC client's channel closed: {e}"),
            RpcError::Client(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RpcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RpcError::Closed(e) | RpcError::Client(e) => Some(e),
            _ => None,
        }
    }
}

/// A request for [`RpcClient::call_with`]: where it goes, its body, its properties, and
/// optionally its own timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a request does nothing until it is passed to RpcClient::call_with"]
pub struct RpcRequest {
    exchange: String,
    routing_key: String,
    body: Bytes,
    properties: BasicProperties,
    timeout: Option<Duration>,
}

impl RpcRequest {
    /// A request to the queue `routing_key` through the default exchange.
    pub fn new(routing_key: impl Into<String>, body: impl Into<Bytes>) -> Self {
        RpcRequest {
            exchange: String::new(),
            routing_key: routing_key.into(),
            body: body.into(),
            properties: BasicProperties::default(),
            timeout: None,
        }
    }

    /// Publishes to this exchange instead of the default one.
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// The request's properties (content type, headers, ...). `correlation_id` and
    /// `reply_to` are the client's to set: values here are replaced.
    pub fn properties(mut self, properties: BasicProperties) -> Self {
        self.properties = properties;
        self
    }

    /// This call's timeout instead of the client's.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// A reply: its body and properties (the correlation id among them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcReply {
    /// The reply's body.
    pub body: Bytes,
    /// The reply's properties.
    pub properties: BasicProperties,
}

impl RpcReply {
    /// The handler's error message, if the reply carries the [`ERROR_HEADER`] header.
    pub fn error(&self) -> Option<String> {
        header_text(&self.properties, ERROR_HEADER)
    }
}

fn header_text(properties: &BasicProperties, key: &str) -> Option<String> {
    match properties.headers.as_ref()?.get(key)? {
        FieldValue::LongString(b) | FieldValue::ByteArray(b) => Some(String::from_utf8_lossy(b).into_owned()),
        other => Some(format!("{other:?}")),
    }
}

type ReplySender = oneshot::Sender<RpcReply>;

/// The calls waiting for a reply, by correlation id.
struct Table {
    state: Mutex<TableState>,
    /// Shared by every session of a client.
    discarded: Arc<AtomicU64>,
}

struct TableState {
    calls: HashMap<String, ReplySender>,
    /// Why the reply consumer stopped; no call can be answered after that.
    closed: Option<lepus::Error>,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, TableState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(&self, id: &str) -> Result<oneshot::Receiver<RpcReply>, RpcError> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.lock();
        if let Some(e) = &state.closed {
            return Err(RpcError::Closed(e.clone()));
        }
        state.calls.insert(id.to_owned(), tx);
        Ok(rx)
    }

    fn remove(&self, id: &str) {
        self.lock().calls.remove(id);
    }

    fn closed_error(&self) -> RpcError {
        let reason = self.lock().closed.clone();
        RpcError::Closed(reason.unwrap_or(lepus::Error::InvalidOperation("the RPC reply consumer ended")))
    }

    fn deliver(&self, delivery: Delivery) {
        let Delivery { properties, body, .. } = delivery;
        let waiting =
            properties.correlation_id.as_ref().and_then(ShortStr::as_str).and_then(|id| self.lock().calls.remove(id));
        let Some(tx) = waiting else {
            let discarded = self.discarded.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::debug!(correlation_id = ?properties.correlation_id, discarded, "reply nobody waits for: dropped");
            return;
        };
        if tx.send(RpcReply { body, properties }).is_err() {
            // The call gave up between our lookup and the send.
            self.discarded.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Fails every waiting call (their senders drop) and refuses new ones.
    fn close(&self, reason: lepus::Error) {
        let calls = {
            let mut state = self.lock();
            state.closed.get_or_insert(reason);
            std::mem::take(&mut state.calls)
        };
        drop(calls);
    }
}

/// Removes a call's entry however the call ends: reply, error, timeout or dropped future.
struct PendingGuard<'a> {
    table: &'a Table,
    id: &'a str,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.table.remove(self.id);
    }
}

/// 64 random bits from the standard library's randomly keyed hasher.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish()
}

/// The RPC client: any number of concurrent calls over one channel, replies matched by
/// correlation id. Cheap to clone; clones share the channel and the table of calls. The
/// channel closes when the last clone is dropped (or on [`RpcClient::close`]).
///
/// If the broker closes the channel — a request to an exchange that does not exist gets a
/// 404, which closes it — the calls in progress fail with [`RpcError::Closed`] and the next
/// call opens a new channel and reply consumer ([`RpcClient::reopened`] counts them); with
/// [`ReplyQueue::Exclusive`] that means a new reply queue.
///
/// ```no_run
/// use std::time::Duration;
/// use lepus_patterns::rpc::{RpcClient, RpcClientOptions, RpcError, RpcRequest};
///
/// # async fn demo(conn: lepus::Connection) -> Result<(), RpcError> {
/// let client = RpcClient::new(&conn, RpcClientOptions::default()).await?;
/// let request = RpcRequest::new("calculator", r#"{"op":"add","a":1,"b":2}"#).timeout(Duration::from_secs(2));
/// match client.call_with(request).await {
///     Ok(reply) => println!("{}", String::from_utf8_lossy(&reply.body)),
///     Err(RpcError::Timeout(after)) => println!("no answer within {after:?}"),
///     Err(RpcError::Unroutable { .. }) => println!("no server queue"),
///     Err(RpcError::Remote { message }) => println!("the server failed: {message}"),
///     Err(e) => return Err(e),
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RpcClient {
    shared: Arc<ClientShared>,
}

struct ClientShared {
    conn: Connection,
    reply_queue: ReplyQueue,
    session: Mutex<Arc<Session>>,
    /// Held while a new session opens, so a closed one is replaced once.
    reopening: tokio::sync::Mutex<()>,
    /// Set by [`RpcClient::close`]: no new session after that.
    closed: AtomicBool,
    reopened: AtomicU64,
    permits: Semaphore,
    timeout: Duration,
    id_prefix: u64,
    next_id: AtomicU64,
    discarded: Arc<AtomicU64>,
}

/// One channel with its reply consumer and its table of calls.
struct Session {
    channel: Channel,
    reply_to: String,
    table: Arc<Table>,
    dispatcher: AbortHandle,
}

impl Drop for Session {
    fn drop(&mut self) {
        // The dispatcher owns the reply consumer; stopping it lets the channel close.
        self.dispatcher.abort();
    }
}

impl Session {
    fn is_usable(&self) -> bool {
        self.channel.is_open() && self.table.lock().closed.is_none()
    }

    async fn open(conn: &Connection, reply_queue: ReplyQueue, discarded: Arc<AtomicU64>) -> Result<Session, RpcError> {
        let setup = async {
            let channel = conn.open_channel().await?;
            channel.confirm_select().await?;
            let (queue, reply_to) = match reply_queue {
                ReplyQueue::DirectReplyTo => (DIRECT_REPLY_TO.to_owned(), DIRECT_REPLY_TO.to_owned()),
                ReplyQueue::Exclusive => {
                    let declare = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
                    let queue = channel.queue_declare("", declare, FieldTable::new()).await?.name;
                    (queue.clone(), queue)
                }
            };
            // Direct reply-to needs this consumer, with no_ack, before the first publish.
            let consume = ConsumeOptions { no_ack: true, exclusive: true, ..Default::default() };
            let consumer = channel.basic_consume(&queue, consume).await?;
            Ok::<_, lepus::Error>((channel, reply_to, consumer))
        };
        let (channel, reply_to, consumer) = tokio::time::timeout(SETUP_TIMEOUT, setup)
            .await
            .map_err(|_| RpcError::Client(lepus::Error::Timeout("setting up the RPC client")))??;
        let table =
            Arc::new(Table { state: Mutex::new(TableState { calls: HashMap::new(), closed: None }), discarded });
        let dispatcher = tokio::spawn(dispatch(consumer, channel.clone(), table.clone())).abort_handle();
        Ok(Session { channel, reply_to, table, dispatcher })
    }
}

impl fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcClient")
            .field("reply_to", &self.reply_to())
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

impl RpcClient {
    /// Opens the client's channel (in confirm mode) on `conn` and starts consuming replies.
    pub async fn new(conn: &Connection, options: RpcClientOptions) -> Result<RpcClient, RpcError> {
        let discarded = Arc::new(AtomicU64::new(0));
        let session = Session::open(conn, options.reply_queue, discarded.clone()).await?;
        Ok(RpcClient {
            shared: Arc::new(ClientShared {
                conn: conn.clone(),
                reply_queue: options.reply_queue,
                session: Mutex::new(Arc::new(session)),
                reopening: tokio::sync::Mutex::new(()),
                closed: AtomicBool::new(false),
                reopened: AtomicU64::new(0),
                permits: Semaphore::new(options.max_in_flight.clamp(1, Semaphore::MAX_PERMITS)),
                timeout: options.timeout,
                id_prefix: random_u64(),
                next_id: AtomicU64::new(0),
                discarded,
            }),
        })
    }

    /// Calls the queue `routing_key` through the default exchange with the client's timeout.
    pub async fn call(&self, routing_key: &str, body: impl Into<Bytes>) -> Result<RpcReply, RpcError> {
        self.call_with(RpcRequest::new(routing_key, body)).await
    }

    /// Sends a request and waits for its reply, its failure or its timeout, whichever comes
    /// first. Dropping the future abandons the call (its entry is removed at once).
    pub async fn call_with(&self, request: RpcRequest) -> Result<RpcReply, RpcError> {
        let timeout = request.timeout.unwrap_or(self.shared.timeout);
        match tokio::time::timeout(timeout, self.shared.call(request)).await {
            Ok(result) => result,
            Err(_) => Err(RpcError::Timeout(timeout)),
        }
    }

    /// The `reply_to` requests carry: `amq.rabbitmq.reply-to` or the exclusive queue's name
    /// (which changes if the client had to reopen its channel).
    pub fn reply_to(&self) -> String {
        self.shared.current().reply_to.clone()
    }

    /// Calls waiting for a reply right now.
    pub fn pending(&self) -> usize {
        self.shared.current().table.lock().calls.len()
    }

    /// Replies that came for no waiting call (late, after their call timed out) and were
    /// dropped.
    pub fn discarded_replies(&self) -> u64 {
        self.shared.discarded.load(Ordering::Relaxed)
    }

    /// How many times the client replaced a channel the broker had closed.
    pub fn reopened(&self) -> u64 {
        self.shared.reopened.load(Ordering::Relaxed)
    }

    /// Closes the client's channel; calls in progress fail with [`RpcError::Closed`], and so
    /// do later calls.
    pub async fn close(&self) -> Result<(), RpcError> {
        self.shared.closed.store(true, Ordering::Release);
        let session = self.shared.current();
        match tokio::time::timeout(STOP_TIMEOUT, session.channel.close()).await {
            Ok(result) => result.map_err(RpcError::from_lepus),
            Err(_) => Err(RpcError::Client(lepus::Error::Timeout("closing the RPC client's channel"))),
        }
    }
}

impl ClientShared {
    fn current(&self) -> Arc<Session> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The current session, or a new one if the broker closed it.
    async fn session(&self) -> Result<Arc<Session>, RpcError> {
        let session = self.current();
        if session.is_usable() {
            return Ok(session);
        }
        if self.closed.load(Ordering::Acquire) {
            let reason = session.channel.close_reason();
            return Err(RpcError::Closed(
                reason.unwrap_or(lepus::Error::InvalidOperation("the RPC client was closed")),
            ));
        }
        let _reopening = self.reopening.lock().await;
        let session = self.current();
        if session.is_usable() {
            return Ok(session);
        }
        tracing::debug!(closed = ?session.channel.close_reason(), "RPC client: opening a new channel");
        let fresh = Arc::new(Session::open(&self.conn, self.reply_queue, self.discarded.clone()).await?);
        *self.session.lock().unwrap_or_else(PoisonError::into_inner) = fresh.clone();
        self.reopened.fetch_add(1, Ordering::Relaxed);
        Ok(fresh)
    }

    async fn call(&self, request: RpcRequest) -> Result<RpcReply, RpcError> {
        // The semaphore is never closed; an error here cannot happen, but is not a panic.
        let _permit =
            self.permits.acquire().await.map_err(|_| {
                RpcError::Client(lepus::Error::InvalidOperation("the RPC client's call slots are gone"))
            })?;
        let session = self.session().await?;
        let table = &session.table;
        let id = format!("{:016x}.{}", self.id_prefix, self.next_id.fetch_add(1, Ordering::Relaxed));
        let rx = table.register(&id)?;
        let _entry = PendingGuard { table, id: &id };

        let RpcRequest { exchange, routing_key, body, mut properties, .. } = request;
        properties.correlation_id = Some(ShortStr::try_from(id.as_str()).map_err(lepus::Error::from)?);
        properties.reply_to = Some(ShortStr::try_from(session.reply_to.as_str()).map_err(lepus::Error::from)?);
        let options = PublishOptions { mandatory: true, properties };
        let confirm = session.channel.basic_publish(&exchange, &routing_key, body, options).await?;
        match confirm.await? {
            Confirmation::Ack | Confirmation::NotRequested => {}
            Confirmation::Nack => return Err(RpcError::Nacked),
            Confirmation::Returned(returned) => {
                return Err(RpcError::Unroutable {
                    reply_code: returned.reply_code,
                    reply_text: returned.reply_text.to_string(),
                    exchange: returned.exchange.to_string(),
                    routing_key: returned.routing_key.to_string(),
                });
            }
        }
        let reply = rx.await.map_err(|_| table.closed_error())?;
        match reply.error() {
            Some(message) => Err(RpcError::Remote { message }),
            None => Ok(reply),
        }
    }
}

/// Reads replies until the consumer ends, then fails every waiting call with why.
async fn dispatch(mut consumer: Consumer, channel: Channel, table: Arc<Table>) {
    let reason = loop {
        match consumer.next().await {
            Some(Ok(delivery)) => table.deliver(delivery),
            Some(Err(e)) => break e,
            None => {
                break channel.close_reason().unwrap_or(lepus::Error::InvalidOperation("the RPC reply consumer ended"));
            }
        }
    };
    tracing::debug!(error = %reason, "RPC reply consumer ended");
    table.close(reason);
}

/// A request as the server's handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingRequest {
    /// The request's body.
    pub body: Bytes,
    /// Its properties (`correlation_id` and `reply_to` among them).
    pub properties: BasicProperties,
    /// The exchange it was published to.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// True if the broker delivered it before (a server stopped before acknowledging it).
    pub redelivered: bool,
}

/// What a handler answers: a body and properties (`correlation_id` is set by the server).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RpcResponse {
    /// The reply's body.
    pub body: Bytes,
    /// The reply's properties (content type, headers, ...).
    pub properties: BasicProperties,
}

impl RpcResponse {
    /// A reply with this body and no properties.
    pub fn new(body: impl Into<Bytes>) -> Self {
        RpcResponse { body: body.into(), properties: BasicProperties::default() }
    }

    /// Sets the reply's properties.
    #[must_use]
    pub fn with_properties(mut self, properties: BasicProperties) -> Self {
        self.properties = properties;
        self
    }
}

impl From<Bytes> for RpcResponse {
    fn from(body: Bytes) -> Self {
        RpcResponse::new(body)
    }
}

impl From<Vec<u8>> for RpcResponse {
    fn from(body: Vec<u8>) -> Self {
        RpcResponse::new(body)
    }
}

impl From<String> for RpcResponse {
    fn from(body: String) -> Self {
        RpcResponse::new(body)
    }
}

impl From<&'static str> for RpcResponse {
    fn from(body: &'static str) -> Self {
        RpcResponse::new(body)
    }
}

impl From<&'static [u8]> for RpcResponse {
    fn from(body: &'static [u8]) -> Self {
        RpcResponse::new(body)
    }
}

/// A handler's failure: its message goes back to the caller in the [`ERROR_HEADER`]
/// header, and the call fails with [`RpcError::Remote`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcHandlerError {
    message: String,
}

impl RpcHandlerError {
    /// A failure with this message.
    pub fn new(message: impl Into<String>) -> Self {
        RpcHandlerError { message: message.into() }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<String> for RpcHandlerError {
    fn from(message: String) -> Self {
        RpcHandlerError { message }
    }
}

impl From<&str> for RpcHandlerError {
    fn from(message: &str) -> Self {
        RpcHandlerError { message: message.to_owned() }
    }
}

impl fmt::Display for RpcHandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RpcHandlerError {}

/// How [`RpcServer::serve`] consumes its queue.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeOptions {
    /// Requests handled at once (the consumer's prefetch); at least 1 (default 32).
    pub prefetch: u16,
    /// Declare the queue before consuming it (default true); the declaration must match an
    /// existing queue's, or the broker refuses it (406).
    pub declare: bool,
    /// Flags for that declaration (default: none — a transient, shared queue).
    pub queue_options: QueueDeclareOptions,
    /// Arguments for that declaration.
    pub queue_arguments: FieldTable,
    /// How long a handler may take; after that the caller gets an error reply and the
    /// request is acknowledged (default 30 s).
    pub handler_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            prefetch: 32,
            declare: true,
            queue_options: QueueDeclareOptions::default(),
            queue_arguments: FieldTable::new(),
            handler_timeout: Duration::from_secs(30),
        }
    }
}

struct Served {
    queue: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), lepus::Error>>,
}

/// The RPC server: one consumer, on a channel of its own, per queue it serves.
///
/// Each request runs its handler in a task of its own (up to the prefetch at once); the
/// reply goes to the request's `reply_to` with its `correlation_id`, and the request is
/// acknowledged after the reply was written. A request without `reply_to` is handled and
/// acknowledged with no reply. A handler that fails, panics or overruns its timeout
/// answers with the [`ERROR_HEADER`] header.
///
/// Dropping the server stops its consumers at once (unacknowledged requests go back to
/// their queues); [`RpcServer::shutdown`] lets requests in progress finish first.
pub struct RpcServer {
    conn: Connection,
    served: Vec<Served>,
}

impl fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcServer").field("queues", &self.queues().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

impl RpcServer {
    /// A server on `conn`, serving nothing yet.
    pub fn new(conn: &Connection) -> Self {
        RpcServer { conn: conn.clone(), served: Vec::new() }
    }

    /// Starts answering requests on `queue` with `handler`; returns once the consumer runs.
    ///
    /// ```no_run
    /// use lepus_patterns::rpc::{RpcHandlerError, RpcResponse, RpcServer, ServeOptions};
    ///
    /// # async fn demo(conn: lepus::Connection) -> Result<(), lepus::Error> {
    /// let mut server = RpcServer::new(&conn);
    /// let options = ServeOptions { prefetch: 8, ..Default::default() };
    /// server
    ///     .serve("calculator.sqrt", options, |request| async move {
    ///         let text = String::from_utf8_lossy(&request.body).into_owned();
    ///         let x: f64 = text.trim().parse().map_err(|_| RpcHandlerError::new(format!("not a number: {text}")))?;
    ///         if x < 0.0 {
    ///             return Err("negative input".into());
    ///         }
    ///         Ok(RpcResponse::from(x.sqrt().to_string()))
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn serve<F, Fut>(&mut self, queue: &str, options: ServeOptions, handler: F) -> Result<(), lepus::Error>
    where
        F: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<RpcResponse, RpcHandlerError>> + Send + 'static,
    {
        let prefetch = options.prefetch.max(1);
        let setup = async {
            let channel = self.conn.open_channel().await?;
            channel.basic_qos(prefetch, false).await?;
            if options.declare {
                channel.queue_declare(queue, options.queue_options, options.queue_arguments.clone()).await?;
            }
            let consume = ConsumeOptions::default();
            let consumer = channel.basic_consume(queue, consume).await?;
            Ok::<_, lepus::Error>((channel, consumer))
        };
        let (channel, consumer) = tokio::time::timeout(SETUP_TIMEOUT, setup)
            .await
            .map_err(|_| lepus::Error::Timeout("starting an RPC server"))??;
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(serve_loop(channel, consumer, Arc::new(handler), options.handler_timeout, stop_rx));
        tracing::debug!(queue, prefetch, "RPC server started");
        self.served.push(Served { queue: queue.to_owned(), stop, task });
        Ok(())
    }

    /// The queues served.
    pub fn queues(&self) -> impl Iterator<Item = &str> {
        self.served.iter().map(|s| s.queue.as_str())
    }

    /// Stops every consumer, lets requests in progress finish (each within its handler
    /// timeout), then closes the channels. Returns the first error a consumer ended with
    /// (e.g. its queue was deleted).
    pub async fn shutdown(mut self) -> Result<(), lepus::Error> {
        let served = std::mem::take(&mut self.served);
        for s in &served {
            s.stop.send_replace(true);
        }
        let mut first_error = None;
        for s in served {
            match s.task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => tracing::warn!(queue = %s.queue, error = %e, "RPC server task failed"),
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        for s in &self.served {
            s.task.abort();
        }
    }
}

async fn serve_loop<F, Fut>(
    channel: Channel,
    mut consumer: Consumer,
    handler: Arc<F>,
    handler_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<(), lepus::Error>
where
    F: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<RpcResponse, RpcHandlerError>> + Send + 'static,
{
    let mut requests = JoinSet::new();
    let result = loop {
        tokio::select! {
            // A stop request, or the server dropped without one.
            _ = stop.changed() => break Ok(()),
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    requests.spawn(answer(channel.clone(), delivery, handler.clone(), handler_timeout));
                }
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            },
        }
    };
    if result.is_ok() {
        let _ = tokio::time::timeout(STOP_TIMEOUT, consumer.cancel()).await;
    }
    // Requests in progress finish (each bounded by the handler timeout); the rest are
    // aborted when the set drops, and go back to the queue with the channel.
    let drain = async { while requests.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(handler_timeout.saturating_add(STOP_TIMEOUT), drain).await;
    drop(requests);
    drop(consumer);
    let _ = tokio::time::timeout(STOP_TIMEOUT, channel.close()).await;
    result
}

/// Runs the handler for one request, replies, acknowledges.
async fn answer<F, Fut>(channel: Channel, delivery: Delivery, handler: Arc<F>, limit: Duration)
where
    F: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<RpcResponse, RpcHandlerError>> + Send + 'static,
{
    let request = IncomingRequest {
        body: delivery.body.clone(),
        properties: delivery.properties.clone(),
        exchange: delivery.exchange.to_string(),
        routing_key: delivery.routing_key.to_string(),
        redelivered: delivery.redelivered,
    };
    // A task of its own, so a panicking handler becomes an error reply.
    let mut job = tokio::spawn(handler(request));
    let outcome = match tokio::time::timeout(limit, &mut job).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) if e.is_panic() => Err(RpcHandlerError::new("the handler panicked")),
        Ok(Err(_)) => Err(RpcHandlerError::new("the handler was cancelled")),
        Err(_) => {
            job.abort();
            Err(RpcHandlerError::new(format!("the handler did not answer within {limit:?}")))
        }
    };
    let reply_to = delivery.properties.reply_to.as_ref().filter(|r| !r.is_empty());
    if let Some(reply_to) = reply_to {
        let (body, mut properties) = match outcome {
            Ok(response) => (response.body, response.properties),
            Err(e) => {
                tracing::debug!(error = %e, "RPC handler failed");
                let mut headers = FieldTable::new();
                // A static key, well under 255 bytes.
                let _ = headers.insert(ERROR_HEADER, e.message);
                (Bytes::new(), BasicProperties { headers: Some(headers), ..BasicProperties::default() })
            }
        };
        properties.correlation_id.clone_from(&delivery.properties.correlation_id);
        let options = PublishOptions { mandatory: false, properties };
        let reply_to = reply_to.to_string();
        let publish = channel.basic_publish("", &reply_to, body, options);
        match tokio::time::timeout(limit, publish).await {
            // Not in confirm mode: the confirm resolves at once to NotRequested.
            Ok(Ok(_confirm)) => {}
            Ok(Err(e)) => {
                // The channel closed: the request goes back to the queue, unacknowledged.
                tracing::warn!(error = %e, "RPC reply not sent");
                return;
            }
            Err(_) => {
                tracing::warn!("RPC reply not sent: publishing blocked");
                return;
            }
        }
    } else {
        tracing::debug!("RPC request without reply_to: handled, nothing to answer");
    }
    if let Err(e) = delivery.ack().await {
        tracing::warn!(error = %e, "RPC request not acknowledged");
    }
}
