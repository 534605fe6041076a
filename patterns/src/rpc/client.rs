//! The calling side: [`RpcClient`] publishes requests and matches replies to their calls by
//! correlation id.

use std::{
    collections::HashMap,
    fmt,
    hash::{BuildHasher, Hasher},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use lepus::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionEvent, ConsumeOptions, Consumer, Delivery,
    FieldTable, FieldValue, PublishOptions, QueueDeclareOptions, ReplyCode, ShortStr,
};
use tokio::{
    sync::{Semaphore, broadcast, oneshot},
    task::AbortHandle,
};

#[cfg(feature = "trace-context")]
use lepus::trace_context::TraceContext;

use super::{DIRECT_REPLY_TO, ERROR_HEADER, SETUP_TIMEOUT, STOP_TIMEOUT};

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
    /// Any other client error (e.g. a routing key over 255 bytes), or
    /// [`lepus::Error::ConnectionLost`] for a call in progress when the connection was lost
    /// (its reply cannot come; the client carries on once the connection recovers).
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
    /// The caller's trace context; the request carries a child of it.
    #[cfg(feature = "trace-context")]
    trace_parent: Option<TraceContext>,
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
            #[cfg(feature = "trace-context")]
            trace_parent: None,
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

    /// Makes the call part of the caller's trace: the request carries a child of `parent`
    /// (same trace id, a parent id of its own) in its `traceparent`/`tracestate` headers.
    ///
    /// Without this, a request whose properties already carry a valid `traceparent` is sent
    /// as it is, and any other request starts a new trace.
    #[cfg(feature = "trace-context")]
    pub fn trace_context(mut self, parent: &TraceContext) -> Self {
        self.trace_parent = Some(parent.clone());
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

    /// The trace context the server answered in (a child of the request's), if the reply
    /// carries one.
    #[cfg(feature = "trace-context")]
    pub fn trace_context(&self) -> Option<TraceContext> {
        lepus::trace_context::extract(&self.properties)
    }
}

fn header_text(properties: &BasicProperties, key: &str) -> Option<String> {
    match properties.headers.as_ref()?.get(key)? {
        FieldValue::LongString(b) | FieldValue::ByteArray(b) => Some(String::from_utf8_lossy(b).into_owned()),
        other => Some(format!("{other:?}")),
    }
}

/// A call's reply, or why it cannot come (the connection was lost while it waited).
type ReplySender = oneshot::Sender<Result<RpcReply, lepus::Error>>;

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

    fn register(&self, id: &str) -> Result<oneshot::Receiver<Result<RpcReply, lepus::Error>>, RpcError> {
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
        if tx.send(Ok(RpcReply { body, properties })).is_err() {
            // The call gave up between our lookup and the send.
            self.discarded.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Fails every call waiting now with `reason`; later calls go ahead.
    fn fail_waiting(&self, reason: &lepus::Error) {
        let calls = std::mem::take(&mut self.lock().calls);
        for (_, tx) in calls {
            let _ = tx.send(Err(reason.clone()));
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
        let events = conn.events();
        let dispatcher = tokio::spawn(dispatch(consumer, channel.clone(), table.clone(), events)).abort_handle();
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

        #[cfg(feature = "trace-context")]
        let trace_parent = request.trace_parent.clone();
        let RpcRequest { exchange, routing_key, body, mut properties, .. } = request;
        #[cfg(feature = "trace-context")]
        trace_request(&mut properties, trace_parent.as_ref());
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
        let reply = rx.await.map_err(|_| table.closed_error())?.map_err(RpcError::Client)?;
        match reply.error() {
            Some(message) => Err(RpcError::Remote { message }),
            None => Ok(reply),
        }
    }
}

/// Puts the request in a trace: a child of the caller's context, the context its properties
/// already carry, or a new trace (not sampled: this client does not record traces).
#[cfg(feature = "trace-context")]
fn trace_request(properties: &mut BasicProperties, parent: Option<&TraceContext>) {
    use lepus::trace_context::{extract, inject};
    let context = match parent {
        Some(parent) => parent.child(),
        None if extract(properties).is_some() => return,
        None => TraceContext::new_root(false),
    };
    inject(&context, properties);
}

/// Reads replies until the consumer ends, then fails every waiting call with why. When the
/// connection is lost (and recovers: the consumer carries on), the replies of the calls
/// waiting then cannot come, so those calls fail at once rather than at their timeout.
async fn dispatch(
    mut consumer: Consumer,
    channel: Channel,
    table: Arc<Table>,
    mut events: broadcast::Receiver<ConnectionEvent>,
) {
    let mut watching = true;
    let reason = loop {
        tokio::select! {
            next = consumer.next() => match next {
                Some(Ok(delivery)) => table.deliver(delivery),
                Some(Err(e)) => break e,
                None => {
                    break channel
                        .close_reason()
                        .unwrap_or(lepus::Error::InvalidOperation("the RPC reply consumer ended"));
                }
            },
            event = events.recv(), if watching => match event {
                Ok(ConnectionEvent::Disconnected { reason }) => {
                    table.fail_waiting(&lepus::Error::ConnectionLost(Box::new(reason)));
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => watching = false,
            },
        }
    };
    tracing::debug!(error = %reason, "RPC reply consumer ended");
    table.close(reason);
}
