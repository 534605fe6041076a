//! An event bus with consumer groups: typed events published to a topic exchange, handled
//! by groups of consumers that share the work, with retries and a dead-letter queue for
//! what keeps failing — [`EventBus`], [`ConsumerGroup`], [`GroupMember`].
//!
//! ```text
//!                                  ┌─► <bus>.projections ──► member, member, ...   (load-balanced)
//!  publish ──► <bus> (topic) ──────┼─► <bus>.notifications ──► member
//!  order.created                   └─► <bus>.analytics ──► member, member
//!                                         │ failed: retried through <queue>.retry.<ms>,
//!                                         └ then <queue>.dlx ──► <queue>.dlq
//! ```
//!
//! - **One topic exchange per bus**, named after the bus, durable. An event is published
//!   with the routing key `{aggregate}.{event}` (`order.created`), persistent, with its
//!   content type, a fresh message id (a UUID, time-ordered by default: [`MessageIds`]), a
//!   timestamp (seconds), and the
//!   routing key as its `type` property, on confirm-mode channels ([`PublisherPool`]): a
//!   publish resolves once the broker has the event. Typed events ([`Event`]) are JSON
//!   (feature `json`, on by default, through serde); anything else is published as raw
//!   bytes with a content type of your choosing ([`EventBus::publish_raw`]).
//! - **A consumer group** is one durable queue `{bus}.{group}`, bound with the patterns of
//!   its handlers (`order.created`, `order.*`, `#`). Every member of the group consumes
//!   that queue, so the broker shares the group's events out among its members, each event
//!   to one of them; every group gets every event it is bound for. Members may run in one
//!   process or many, on one connection or several.
//! - **Failures** go through [`crate::retry`]: each member is a [`RetryConsumer`] over the
//!   group's [`DeadLetterTopology`]. A handler that fails (returns a [`HandlerFailure`],
//!   panics, or outlives [`GroupOptions::handler_timeout`]) has its event retried after the
//!   policy's delays, waited out by the broker in retry queues; after
//!   [`RetryPolicy::max_retries`] retries — at once for [`HandlerFailure::permanent`] —
//!   the event goes to the group's dead-letter queue `{bus}.{group}.dlq` with the lepus
//!   headers saying why ([`crate::dead_letter::headers`]); [`ConsumerGroup::dead_letters`]
//!   counts, peeks at and replays them. An event no handler of the member matches (a
//!   binding left from an older version of the group, say) is dead-lettered too: nothing
//!   is dropped silently.
//! - **Statistics** ([`EventBusStats`]) count what the bus and its members did;
//!   `reconnections` counts the times the connection was lost and recovered by the
//!   client's automatic recovery (members keep consuming across it; a connection that
//!   closes for good stops them: [`GroupMember::is_running`]).
//! - **Shutdown** ([`EventBus::shutdown`], [`GroupMember::shutdown`]) stops consuming, lets
//!   every event a member has received finish its handlers and be settled, then closes the
//!   member's channel and the bus's publishing channels. The connection is yours to close.
//! - **Tracing** (feature `trace-context`): every event carries a W3C `traceparent` (and
//!   `tracestate`), a child of the publisher's context (`EventBus::publish_with_trace`) or
//!   a new trace; handlers read it with `EventMessage::trace_context`, retries keep it.
//!
//! Delivery is at least once: an event whose member stops before settling it (a crash, a
//! lost connection) is delivered again, and when several handlers match one event they run
//! in turn and a failure retries the event through all of them. Handlers should be
//! idempotent.
//!
//! [`PublisherPool`]: crate::publisher_pool::PublisherPool
//! [`RetryConsumer`]: crate::retry::RetryConsumer
//! [`DeadLetterTopology`]: crate::dead_letter::DeadLetterTopology
//! [`RetryPolicy::max_retries`]: crate::retry::RetryPolicy::max_retries
//! [`HandlerFailure`]: crate::retry::HandlerFailure
//! [`HandlerFailure::permanent`]: crate::retry::HandlerFailure::permanent

use std::{
    fmt,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use lepus::{BasicProperties, Confirmation, Connection, PublishOptions, ShortStr};
use tokio::task::JoinSet;

use crate::{
    publisher_pool::{PublisherPool, PublisherPoolOptions},
    topic::TopicExchange,
    work_queue::PERSISTENT,
};

mod group;

/// The trace context an event is published in.
#[cfg(feature = "trace-context")]
use lepus::trace_context::TraceContext as TraceParent;
/// Without the `trace-context` feature no caller can pass a trace context.
#[cfg(not(feature = "trace-context"))]
enum TraceParent {}

pub use group::{ConsumerGroup, EventMessage, GroupMember, GroupOptions};

/// The content type of JSON events.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// The longest name AMQP allows for an exchange, a queue or a routing key.
const MAX_NAME: usize = 255;

/// An event type: where it comes from and what happened, which make its routing key
/// `{AGGREGATE}.{NAME}`. With the `json` feature, a `serde` type implementing it is
/// published with [`EventBus::publish`] and handled with [`ConsumerGroup::on`].
///
/// ```
/// use lepus_patterns::event_bus::Event;
///
/// struct OrderCreated {
///     order_id: u64,
/// }
///
/// impl Event for OrderCreated {
///     const AGGREGATE: &'static str = "order";
///     const NAME: &'static str = "created";
/// }
///
/// assert_eq!(OrderCreated::routing_key(), "order.created");
/// ```
pub trait Event {
    /// The aggregate (entity) type, the routing key's first word: `order`. Not empty, no
    /// `.`, not `*` or `#`.
    const AGGREGATE: &'static str;
    /// What happened, the routing key's second word: `created`. Same rules.
    const NAME: &'static str;

    /// `{AGGREGATE}.{NAME}`.
    fn routing_key() -> String {
        format!("{}.{}", Self::AGGREGATE, Self::NAME)
    }
}

/// The routing key `{aggregate}.{event}`, or why the words cannot make one: each must be
/// non-empty, without `.`, not a wildcard (`*`, `#`), and the key at most 255 bytes.
///
/// ```
/// use lepus_patterns::event_bus::routing_key;
///
/// assert_eq!(routing_key("order", "created").unwrap(), "order.created");
/// assert!(routing_key("order.eu", "created").is_err());
/// assert!(routing_key("order", "*").is_err());
/// ```
pub fn routing_key(aggregate: &str, event: &str) -> Result<String, EventBusError> {
    for (what, word) in [("aggregate", aggregate), ("event", event)] {
        if word.is_empty() || word.contains('.') || word == "*" || word == "#" {
            return Err(EventBusError::Invalid(format!(
                "the {what} name {word:?} cannot be a routing key word (empty, a wildcard or containing '.')"
            )));
        }
    }
    let key = format!("{aggregate}.{event}");
    if key.len() > MAX_NAME {
        return Err(EventBusError::Invalid(format!("the routing key {key:?} is longer than {MAX_NAME} bytes")));
    }
    Ok(key)
}

/// What went wrong on the bus.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum EventBusError {
    /// The broker or the connection refused or failed (a closed connection, a 404, a
    /// timeout, ...).
    Broker(lepus::Error),
    /// A name, pattern or setting that cannot work; nothing was sent.
    Invalid(String),
    /// The event could not be serialised; nothing was sent.
    Encode(String),
    /// The broker did not take the event: it nacked it, or (with
    /// [`EventBusOptions::mandatory`]) no group is bound for its routing key.
    NotConfirmed {
        /// The event's routing key.
        routing_key: String,
        /// What the broker answered.
        outcome: String,
    },
    /// The bus was shut down.
    Closed,
}

impl fmt::Display for EventBusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventBusError::Broker(e) => write!(f, "event bus: {e}"),
            EventBusError::Invalid(why) => write!(f, "event bus: {why}"),
            EventBusError::Encode(why) => write!(f, "event bus: cannot serialise the event: {why}"),
            EventBusError::NotConfirmed { routing_key, outcome } => {
                write!(f, "event bus: the broker did not take the {routing_key} event: {outcome}")
            }
            EventBusError::Closed => f.write_str("event bus: shut down"),
        }
    }
}

impl std::error::Error for EventBusError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EventBusError::Broker(e) => Some(e),
            _ => None,
        }
    }
}

impl From<lepus::Error> for EventBusError {
    fn from(e: lepus::Error) -> Self {
        EventBusError::Broker(e)
    }
}

/// How an [`EventBus`] publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventBusOptions {
    /// Confirm-mode channels publishes are spread over (default 1; at least 1).
    pub publisher_channels: usize,
    /// How long a publish waits for the broker's confirm (default 30 s).
    pub publish_timeout: Duration,
    /// Refuse events no consumer group is bound for ([`EventBusError::NotConfirmed`])
    /// instead of letting the broker drop them (default false: an event nobody listens to
    /// is not an error).
    pub mandatory: bool,
    /// The `app-id` property of published events (default none).
    pub app_id: Option<String>,
    /// What kind of UUID each event's `message-id` is (default time-ordered).
    pub message_ids: MessageIds,
}

/// The kind of UUID an [`EventBus`] gives each event as its `message-id`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MessageIds {
    /// Version 7 (RFC 9562): a millisecond timestamp, then random bits. Ids sort in
    /// publishing order (within one process, also within one millisecond), which keeps
    /// database indexes on them compact and makes logs easy to follow.
    #[default]
    TimeOrdered,
    /// Version 4: all random bits, for when an id must not tell when it was made.
    Random,
}

impl Default for EventBusOptions {
    fn default() -> Self {
        EventBusOptions {
            publisher_channels: 1,
            publish_timeout: Duration::from_secs(30),
            mandatory: false,
            app_id: None,
            message_ids: MessageIds::default(),
        }
    }
}

/// A published event, as the broker took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its `message-id` property (a UUID, see [`EventBusOptions::message_ids`]).
    pub message_id: String,
    /// Its routing key, `{aggregate}.{event}`.
    pub routing_key: String,
    /// Its `timestamp` property, seconds since the epoch.
    pub timestamp: u64,
}

/// What a bus (or one member of a group) did so far.
///
/// An event is *consumed* each time a member receives it: a retried event counts once per
/// attempt, and so do its successes and failures. *Dead-lettered* counts the events whose
/// last failure sent them to the dead-letter queue; *retried* the failures sent to a retry
/// queue. `failed = retried + dead_lettered`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventBusStats {
    /// Events the broker confirmed (0 for a member).
    pub published: u64,
    /// Publishes that failed or that the broker did not take (0 for a member).
    pub publish_failures: u64,
    /// Deliveries handed to handlers (each attempt of a retried event counts).
    pub consumed: u64,
    /// Deliveries every matching handler succeeded with.
    pub succeeded: u64,
    /// Deliveries a handler failed (error, panic or timeout) or none matched.
    pub failed: u64,
    /// Failures sent to a retry queue.
    pub retried: u64,
    /// Failures given up on: sent to the dead-letter queue.
    pub dead_lettered: u64,
    /// Times the bus's connection was lost and recovered (`Connection::recoveries`).
    pub reconnections: u64,
    /// When the last event was published (confirmed).
    pub last_publish_at: Option<SystemTime>,
    /// When a member last received an event.
    pub last_consume_at: Option<SystemTime>,
}

/// Counters shared by a bus and its members' handlers.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    published: AtomicU64,
    publish_failures: AtomicU64,
    consumed: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    /// Milliseconds since the epoch; 0: never.
    last_publish_ms: AtomicU64,
    last_consume_ms: AtomicU64,
}

/// How a delivery ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    Succeeded,
    Retried,
    DeadLettered,
}

impl Counters {
    pub(crate) fn consumed(&self, at_ms: u64) {
        self.consumed.fetch_add(1, Ordering::Relaxed);
        self.last_consume_ms.fetch_max(at_ms, Ordering::Relaxed);
    }

    pub(crate) fn settled(&self, how: Settled) {
        let counter = match how {
            Settled::Succeeded => &self.succeeded,
            Settled::Retried => &self.retried,
            Settled::DeadLettered => &self.dead_lettered,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if how != Settled::Succeeded {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters, with the connection's `reconnections`.
    pub(crate) fn snapshot(&self, reconnections: u64) -> EventBusStats {
        let at = |ms: &AtomicU64| match ms.load(Ordering::Relaxed) {
            0 => None,
            ms => UNIX_EPOCH.checked_add(Duration::from_millis(ms)),
        };
        EventBusStats {
            published: self.published.load(Ordering::Relaxed),
            publish_failures: self.publish_failures.load(Ordering::Relaxed),
            consumed: self.consumed.load(Ordering::Relaxed),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            reconnections,
            last_publish_at: at(&self.last_publish_ms),
            last_consume_at: at(&self.last_consume_ms),
        }
    }
}

/// Milliseconds since the epoch (at least 1, so 0 can mean "never").
pub(crate) fn now_ms() -> u64 {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

/// A fresh message id, as text (`xxxxxxxx-xxxx-Mxxx-Nxxx-xxxxxxxxxxxx`).
fn new_message_id(kind: MessageIds) -> String {
    match kind {
        MessageIds::TimeOrdered => uuid::Uuid::now_v7(),
        MessageIds::Random => uuid::Uuid::new_v4(),
    }
    .hyphenated()
    .to_string()
}

/// A running member the bus can stop.
#[derive(Debug, Default)]
pub(crate) struct MemberSlot {
    pub(crate) consumer: Mutex<Option<crate::retry::RetryConsumer>>,
}

impl MemberSlot {
    pub(crate) fn take(&self) -> Option<crate::retry::RetryConsumer> {
        self.consumer.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

#[derive(Debug, Default)]
struct Members {
    closed: bool,
    slots: Vec<Arc<MemberSlot>>,
}

struct Inner {
    conn: Connection,
    exchange: TopicExchange,
    pool: PublisherPool,
    options: EventBusOptions,
    counters: Arc<Counters>,
    members: Mutex<Members>,
}

/// An event bus: a topic exchange to publish typed events to, and consumer groups to
/// handle them; see the [module docs](self). Cheap to clone; clones share everything.
///
/// ```no_run
/// # #[cfg(feature = "json")]
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use lepus::Connection;
/// use lepus_patterns::event_bus::{Event, EventBus, EventBusOptions};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct OrderCreated {
///     order_id: u64,
///     total_cents: u64,
/// }
///
/// impl Event for OrderCreated {
///     const AGGREGATE: &'static str = "order";
///     const NAME: &'static str = "created";
/// }
///
/// let conn = Connection::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
/// let bus = EventBus::declare(&conn, "shop.events", EventBusOptions::default()).await?;
///
/// // The `projections` group: queue `shop.events.projections`, bound with `order.created`.
/// // Start it in as many processes as you like: they share its events.
/// let projections = bus.group("projections").on(|event: OrderCreated, _meta| async move {
///     println!("order {} for {} cents", event.order_id, event.total_cents);
///     Ok(())
/// });
/// let member = projections.start().await?;
///
/// let published = bus.publish(&OrderCreated { order_id: 7, total_cents: 4_999 }).await?;
/// println!("published {} as {}", published.routing_key, published.message_id);
///
/// // ...
/// println!("{:?}", member.stats());
/// bus.shutdown().await?; // finishes the handlers in progress, closes the channels
/// conn.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBus").field("name", &self.name()).field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl EventBus {
    /// Declares the bus's durable topic exchange `name` (idempotent) and opens its
    /// publishing channels on `conn`.
    pub async fn declare(conn: &Connection, name: &str, options: EventBusOptions) -> Result<EventBus, EventBusError> {
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(EventBusError::Invalid(format!("a bus needs a name of 1 to {MAX_NAME} bytes, not {name:?}")));
        }
        let exchange = TopicExchange::declare(conn, name).await?;
        let pool_options =
            PublisherPoolOptions { size: options.publisher_channels.max(1), confirm_timeout: options.publish_timeout };
        let pool = PublisherPool::new(conn, pool_options).await?;
        Ok(EventBus {
            inner: Arc::new(Inner {
                conn: conn.clone(),
                exchange,
                pool,
                options,
                counters: Arc::new(Counters::default()),
                members: Mutex::new(Members::default()),
            }),
        })
    }

    /// The bus's name: its exchange, and the prefix of its groups' queues.
    pub fn name(&self) -> &str {
        self.inner.exchange.name()
    }

    /// The connection the bus publishes on and its members consume on.
    pub fn connection(&self) -> &Connection {
        &self.inner.conn
    }

    /// Counts of what the bus and the members started from it did so far.
    pub fn stats(&self) -> EventBusStats {
        self.inner.counters.snapshot(self.inner.conn.recoveries())
    }

    pub(crate) fn counters(&self) -> &Arc<Counters> {
        &self.inner.counters
    }

    /// The consumer group `group` of this bus (queue `{bus}.{group}`), to add handlers to
    /// and start members of. Nothing is declared until [`ConsumerGroup::start`].
    pub fn group(&self, group: &str) -> ConsumerGroup {
        ConsumerGroup::new(self.clone(), group)
    }

    /// Publishes a typed event as JSON (`application/json`) with the routing key
    /// `{E::AGGREGATE}.{E::NAME}`, and waits for the broker's confirm.
    #[cfg(feature = "json")]
    pub async fn publish<E: Event + serde::Serialize>(&self, event: &E) -> Result<Published, EventBusError> {
        let routing_key = routing_key(E::AGGREGATE, E::NAME)?;
        let body = serde_json::to_vec(event).map_err(|e| EventBusError::Encode(e.to_string()))?;
        self.send(routing_key, JSON_CONTENT_TYPE, Bytes::from(body), None).await
    }

    /// [`EventBus::publish`] as part of the caller's trace: the event carries a child of
    /// `parent` (same trace id, a parent id of its own) in its `traceparent`/`tracestate`
    /// headers, where handlers find it ([`EventMessage::trace_context`]). Events published
    /// without one start a new trace each.
    #[cfg(all(feature = "json", feature = "trace-context"))]
    pub async fn publish_with_trace<E: Event + serde::Serialize>(
        &self,
        event: &E,
        parent: &TraceParent,
    ) -> Result<Published, EventBusError> {
        let routing_key = routing_key(E::AGGREGATE, E::NAME)?;
        let body = serde_json::to_vec(event).map_err(|e| EventBusError::Encode(e.to_string()))?;
        self.send(routing_key, JSON_CONTENT_TYPE, Bytes::from(body), Some(parent)).await
    }

    /// Publishes raw bytes as the event `{aggregate}.{event}` with `content_type` (e.g.
    /// `application/octet-stream`, `text/plain`), and waits for the broker's confirm.
    pub async fn publish_raw(
        &self,
        aggregate: &str,
        event: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> Result<Published, EventBusError> {
        let routing_key = routing_key(aggregate, event)?;
        self.send(routing_key, content_type, body.into(), None).await
    }

    /// [`EventBus::publish_raw`] as part of the caller's trace, like
    /// [`EventBus::publish_with_trace`].
    #[cfg(feature = "trace-context")]
    pub async fn publish_raw_with_trace(
        &self,
        aggregate: &str,
        event: &str,
        content_type: &str,
        body: impl Into<Bytes>,
        parent: &TraceParent,
    ) -> Result<Published, EventBusError> {
        let routing_key = routing_key(aggregate, event)?;
        self.send(routing_key, content_type, body.into(), Some(parent)).await
    }

    async fn send(
        &self,
        routing_key: String,
        content_type: &str,
        body: Bytes,
        parent: Option<&TraceParent>,
    ) -> Result<Published, EventBusError> {
        if self.is_closed() {
            return Err(EventBusError::Closed);
        }
        let short = |what: &str, value: &str| {
            ShortStr::try_from(value)
                .map_err(|_| EventBusError::Invalid(format!("the {what} {value:?} is longer than {MAX_NAME} bytes")))
        };
        let message_id = new_message_id(self.inner.options.message_ids);
        let timestamp = crate::dead_letter::now_secs();
        #[cfg_attr(not(feature = "trace-context"), allow(unused_mut))]
        let mut properties = BasicProperties {
            content_type: Some(short("content type", content_type)?),
            delivery_mode: Some(PERSISTENT),
            message_id: Some(short("message id", &message_id)?),
            timestamp: Some(timestamp),
            kind: Some(short("routing key", &routing_key)?),
            app_id: self.inner.options.app_id.as_deref().map(|id| short("app id", id)).transpose()?,
            ..BasicProperties::default()
        };
        #[cfg(feature = "trace-context")]
        {
            // Each publish is an operation of its own: a new parent id (or a new trace).
            let context = parent.map_or_else(|| TraceParent::new_root(false), TraceParent::child);
            lepus::trace_context::inject(&context, &mut properties);
        }
        #[cfg(not(feature = "trace-context"))]
        let _ = parent;
        let options = PublishOptions { mandatory: self.inner.options.mandatory, properties };
        let counters = &self.inner.counters;
        let outcome = self.inner.pool.publish(self.name(), &routing_key, body, options).await;
        let refused = match outcome {
            Ok(Confirmation::Ack) => {
                counters.published.fetch_add(1, Ordering::Relaxed);
                counters.last_publish_ms.fetch_max(now_ms(), Ordering::Relaxed);
                return Ok(Published { message_id, routing_key, timestamp });
            }
            Ok(Confirmation::Nack) => "the broker refused it (nack)".to_owned(),
            Ok(Confirmation::Returned(r)) => format!("unroutable: {} {}", r.reply_code, r.reply_text),
            Ok(Confirmation::NotRequested) => "no confirm was requested".to_owned(),
            Err(e) => {
                counters.publish_failures.fetch_add(1, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        counters.publish_failures.fetch_add(1, Ordering::Relaxed);
        Err(EventBusError::NotConfirmed { routing_key, outcome: refused })
    }

    /// True once [`EventBus::shutdown`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.members.lock().unwrap_or_else(PoisonError::into_inner).closed
    }

    /// Adds a running member, unless the bus is shut down: then it is handed back.
    pub(crate) fn register(&self, slot: &Arc<MemberSlot>) -> bool {
        let mut members = self.inner.members.lock().unwrap_or_else(PoisonError::into_inner);
        if members.closed {
            return false;
        }
        members.slots.retain(|s| s.consumer.lock().unwrap_or_else(PoisonError::into_inner).is_some());
        members.slots.push(slot.clone());
        true
    }

    /// Shuts the bus down gracefully: refuses new publishes and members, stops every
    /// member started from it — each stops consuming, lets the events it received finish
    /// their handlers and be settled (each within its handler timeout), and closes its
    /// channel — then closes the publishing channels. Returns the first error a member had
    /// ended with on its own, if any. The connection stays open; calling it again does
    /// nothing.
    pub async fn shutdown(&self) -> Result<(), EventBusError> {
        let slots = {
            let mut members = self.inner.members.lock().unwrap_or_else(PoisonError::into_inner);
            members.closed = true;
            std::mem::take(&mut members.slots)
        };
        let mut stopping = JoinSet::new();
        for consumer in slots.iter().filter_map(|slot| slot.take()) {
            stopping.spawn(consumer.shutdown());
        }
        let mut result = Ok(());
        while let Some(stopped) = stopping.join_next().await {
            match stopped {
                Ok(Err(e)) if result.is_ok() => result = Err(e.into()),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "stopping an event bus member failed"),
            }
        }
        self.inner.pool.close().await;
        result
    }

    /// Deletes the bus's exchange (the groups' queues stay, unbound from it; delete them
    /// with [`ConsumerGroup::delete`]).
    pub async fn delete(&self) -> Result<(), EventBusError> {
        Ok(self.inner.exchange.delete().await?)
    }
}

/// A handler's failure for an event whose body is not what it expects: permanent.
#[cfg(feature = "json")]
pub(crate) fn undecodable(routing_key: &str, why: &serde_json::Error) -> crate::retry::HandlerFailure {
    crate::retry::HandlerFailure::permanent(format!(
        "the {routing_key} event is not the JSON its handler expects: {why}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_are_two_plain_words() {
        assert_eq!(routing_key("order", "created").unwrap(), "order.created");
        for (a, e) in [("", "x"), ("x", ""), ("a.b", "c"), ("a", "b.c"), ("*", "x"), ("x", "#")] {
            assert!(matches!(routing_key(a, e), Err(EventBusError::Invalid(_))), "{a:?} {e:?}");
        }
        let long = "x".repeat(200);
        assert!(routing_key(&long, &long).is_err());
        assert!(routing_key("a*", "b#").is_ok(), "wildcards only as whole words");
    }

    /// The version nibble and the RFC 9562 variant bits of a hyphenated UUID.
    fn version_and_variant(id: &str) -> (char, char) {
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{id}");
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{id}");
        (parts[2].chars().next().unwrap(), parts[3].chars().next().unwrap())
    }

    #[test]
    fn message_ids_are_unique_and_time_ordered_v7_uuids() {
        // Many in a row, so most share a millisecond: the order must hold within one too.
        let ids: Vec<String> = (0..10_000).map(|_| new_message_id(MessageIds::TimeOrdered)).collect();
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "every id is new");
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "ids sort in the order they were made: {} then {}", pair[0], pair[1]);
        }
        for id in &ids {
            let (version, variant) = version_and_variant(id);
            assert_eq!(version, '7', "{id}");
            assert!(matches!(variant, '8' | '9' | 'a' | 'b'), "{id}");
        }
        // The first 48 bits are the Unix time in milliseconds: now, give or take.
        let first = uuid::Uuid::parse_str(&ids[0]).unwrap();
        let (secs, _) = first.get_timestamp().unwrap().to_unix();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(now.abs_diff(secs) < 60, "timestamp {secs} vs now {now}");
    }

    #[test]
    fn ids_made_on_many_threads_are_unique_and_each_threads_are_ordered() {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| (0..2_000).map(|_| new_message_id(MessageIds::TimeOrdered)).collect::<Vec<_>>())
            })
            .collect();
        let mut all = std::collections::HashSet::new();
        for thread in threads {
            let ids = thread.join().unwrap();
            assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "one thread's ids are in order");
            all.extend(ids);
        }
        assert_eq!(all.len(), 8_000);
    }

    #[test]
    fn random_ids_are_unique_v4_uuids() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_message_id(MessageIds::Random)).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            let (version, variant) = version_and_variant(id);
            assert_eq!(version, '4', "{id}");
            assert!(matches!(variant, '8' | '9' | 'a' | 'b'), "{id}");
        }
    }

    #[test]
    fn counters_add_up() {
        let c = Counters::default();
        assert_eq!(c.snapshot(0), EventBusStats::default());
        c.consumed(now_ms());
        c.consumed(now_ms());
        c.consumed(now_ms());
        c.settled(Settled::Succeeded);
        c.settled(Settled::Retried);
        c.settled(Settled::DeadLettered);
        let s = c.snapshot(0);
        assert_eq!((s.consumed, s.succeeded, s.failed, s.retried, s.dead_lettered), (3, 1, 2, 1, 1));
        assert!(s.last_consume_at.is_some() && s.last_publish_at.is_none());
        assert_eq!(s.reconnections, 0);
    }
}
