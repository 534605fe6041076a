//! Consumer groups: a shared queue per group, members that dispatch its events to
//! handlers through the retry consumer.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use lepus::{BasicProperties, FieldTable, QueueDeclareOptions, QueueDeclared};

use super::{Counters, EventBus, EventBusError, EventBusStats, MAX_NAME, MemberSlot, Settled, now_ms};
#[cfg(feature = "json")]
use super::{Event, routing_key};
use crate::{
    dead_letter::DeadLetterTopology,
    dlq::DeadLetterQueue,
    retry::{HandlerFailure, RetryConsumer, RetryMessage, RetryOptions, RetryPolicy},
    topic::topic_matches,
    work_queue::on_throwaway_channel,
};

/// How long declaring and deleting may wait for the broker.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);
/// The retry consumer's own handler timeout is ours plus this: ours fires first, so the
/// counters see every outcome.
const TIMEOUT_MARGIN: Duration = Duration::from_secs(5);

type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), HandlerFailure>> + Send>>;
type Handler = dyn Fn(EventMessage) -> HandlerFuture + Send + Sync;

#[derive(Clone)]
struct Route {
    pattern: String,
    handler: Arc<Handler>,
}

/// One event as a handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMessage {
    /// Its routing key, `{aggregate}.{event}` (the one it was published with, also when
    /// it comes back from a retry).
    pub routing_key: String,
    /// Its `message-id` property.
    pub message_id: Option<String>,
    /// Its `timestamp` property: when it was published, seconds since the epoch.
    pub timestamp: Option<u64>,
    /// Its `content-type` property.
    pub content_type: Option<String>,
    /// The body (JSON for typed events).
    pub body: Bytes,
    /// All its properties, headers included.
    pub properties: BasicProperties,
    /// Retries done before this attempt (0 on the first).
    pub retries: u32,
    /// True if the broker delivered this very copy before (a member stopped before
    /// settling it).
    pub redelivered: bool,
}

impl EventMessage {
    fn of(message: RetryMessage) -> Self {
        let text = |s: &Option<lepus::ShortStr>| s.as_ref().map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned());
        EventMessage {
            routing_key: message.routing_key,
            message_id: text(&message.properties.message_id),
            timestamp: message.properties.timestamp,
            content_type: text(&message.properties.content_type),
            body: message.body,
            properties: message.properties,
            retries: message.retries,
            redelivered: message.redelivered,
        }
    }

    /// The routing key's first word: the aggregate type (`order`).
    pub fn aggregate(&self) -> &str {
        self.routing_key.split_once('.').map_or(self.routing_key.as_str(), |(aggregate, _)| aggregate)
    }

    /// The rest of the routing key: the event (`created`).
    pub fn event(&self) -> &str {
        self.routing_key.split_once('.').map_or("", |(_, event)| event)
    }

    /// The body as UTF-8 text, if it is.
    pub fn body_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }

    /// The trace context the event was published in (its `traceparent`/`tracestate`
    /// headers), if it carries a valid one. Work done on the event's behalf should carry a
    /// [`child`](lepus::trace_context::TraceContext::child) of it.
    #[cfg(feature = "trace-context")]
    pub fn trace_context(&self) -> Option<lepus::trace_context::TraceContext> {
        lepus::trace_context::extract(&self.properties)
    }

    /// The body decoded from JSON; a body that does not decode is a
    /// [`HandlerFailure::permanent`] failure (retrying will not fix it), so a handler can
    /// write `let order: Order = message.json()?;`.
    #[cfg(feature = "json")]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HandlerFailure> {
        serde_json::from_slice(&self.body).map_err(|e| super::undecodable(&self.routing_key, &e))
    }
}

/// How the members of a [`ConsumerGroup`] consume, retry and dead-letter. The queue
/// arguments (`durable`, the DLQ's) must be the same for every member of a group:
/// RabbitMQ refuses (406) to redeclare a queue with other ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOptions {
    /// Events a member handles at once (its prefetch); at least 1 (default 10).
    pub prefetch: u16,
    /// How long the handlers of one event may take before the attempt counts as failed
    /// (default 30 s).
    pub handler_timeout: Duration,
    /// When to retry and when to give up (default: 3 retries after ~1 s, ~2 s, ~4 s).
    pub retry_policy: RetryPolicy,
    /// How long to wait for the broker to take a retry or dead-letter copy (default 10 s).
    pub publish_timeout: Duration,
    /// Whether the group's queues survive a broker restart (default true).
    pub durable: bool,
    /// `x-message-ttl` of the dead-letter queue (default none: dead letters stay).
    pub dlq_message_ttl: Option<Duration>,
    /// `x-max-length` of the dead-letter queue (default none).
    pub dlq_max_length: Option<u64>,
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions {
            prefetch: 10,
            handler_timeout: Duration::from_secs(30),
            retry_policy: RetryPolicy::default(),
            publish_timeout: Duration::from_secs(10),
            durable: true,
            dlq_message_ttl: None,
            dlq_max_length: None,
        }
    }
}

/// A consumer group of an [`EventBus`] (from [`EventBus::group`]): its handlers, with the
/// patterns they are bound with, and its options. [`ConsumerGroup::start`] declares the
/// group's queues and starts a member; start it again — here, in another task or another
/// process — for more members sharing the work. Cheap to clone.
#[derive(Clone)]
#[must_use = "a consumer group does nothing until a member is started"]
pub struct ConsumerGroup {
    bus: EventBus,
    name: String,
    routes: Vec<Route>,
    options: GroupOptions,
    error: Option<EventBusError>,
}

impl fmt::Debug for ConsumerGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerGroup")
            .field("bus", &self.bus.name())
            .field("name", &self.name)
            .field("patterns", &self.patterns())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl ConsumerGroup {
    pub(super) fn new(bus: EventBus, name: &str) -> Self {
        let error = name.is_empty().then(|| EventBusError::Invalid("a consumer group needs a name".to_owned()));
        ConsumerGroup { bus, name: name.to_owned(), routes: Vec::new(), options: GroupOptions::default(), error }
    }

    /// Replaces the group's options.
    pub fn options(mut self, options: GroupOptions) -> Self {
        self.options = options;
        self
    }

    /// The same group with another retry policy.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.options.retry_policy = policy;
        self
    }

    /// The same group with another prefetch.
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.options.prefetch = prefetch;
        self
    }

    /// Handles the typed event `E` (JSON): binds `{E::AGGREGATE}.{E::NAME}` and calls
    /// `handler` with the decoded event and its message. A body that does not decode as
    /// `E` is a permanent failure: it goes to the dead-letter queue without retries.
    #[cfg(feature = "json")]
    pub fn on<E, F, Fut>(mut self, handler: F) -> Self
    where
        E: Event + serde::de::DeserializeOwned + Send + 'static,
        F: Fn(E, EventMessage) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerFailure>> + Send + 'static,
    {
        let pattern = match routing_key(E::AGGREGATE, E::NAME) {
            Ok(key) => key,
            Err(e) => {
                self.error.get_or_insert(e);
                return self;
            }
        };
        let handler = Arc::new(move |message: EventMessage| -> HandlerFuture {
            match serde_json::from_slice::<E>(&message.body) {
                Ok(event) => Box::pin(handler(event, message)),
                Err(e) => Box::pin(std::future::ready(Err(super::undecodable(&message.routing_key, &e)))),
            }
        });
        self.routes.push(Route { pattern, handler });
        self
    }

    /// Handles every event whose routing key matches the topic `pattern` (`order.*`,
    /// `*.created`, `#`), as raw bytes: binds `pattern` and calls `handler` with the
    /// message.
    pub fn on_pattern<F, Fut>(mut self, pattern: &str, handler: F) -> Self
    where
        F: Fn(EventMessage) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerFailure>> + Send + 'static,
    {
        if pattern.len() > MAX_NAME {
            self.error.get_or_insert(EventBusError::Invalid(format!("the pattern {pattern:?} is too long")));
            return self;
        }
        let handler = Arc::new(move |message: EventMessage| -> HandlerFuture { Box::pin(handler(message)) });
        self.routes.push(Route { pattern: pattern.to_owned(), handler });
        self
    }

    /// Handles every event of the bus (`#`), as raw bytes: an audit log, say.
    pub fn on_all<F, Fut>(self, handler: F) -> Self
    where
        F: Fn(EventMessage) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerFailure>> + Send + 'static,
    {
        self.on_pattern("#", handler)
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The group's queue, `{bus}.{group}`.
    pub fn queue(&self) -> String {
        format!("{}.{}", self.bus.name(), self.name)
    }

    /// The patterns the queue is bound with, each once, in the order the handlers were
    /// added.
    pub fn patterns(&self) -> Vec<&str> {
        let mut patterns: Vec<&str> = Vec::new();
        for route in &self.routes {
            if !patterns.contains(&route.pattern.as_str()) {
                patterns.push(&route.pattern);
            }
        }
        patterns
    }

    /// The group's queues as [`crate::dead_letter`] declares them: the queue bound to the
    /// bus with the patterns, its retry queues `{queue}.retry.<ms>`, its dead-letter
    /// exchange `{queue}.dlx` and queue `{queue}.dlq`.
    pub fn topology(&self) -> DeadLetterTopology {
        let options = &self.options;
        let mut topology =
            DeadLetterTopology::new(self.queue()).durable(options.durable).retry_policy(options.retry_policy.clone());
        if let Some(ttl) = options.dlq_message_ttl {
            topology = topology.dlq_message_ttl(ttl);
        }
        if let Some(max) = options.dlq_max_length {
            topology = topology.dlq_max_length(max);
        }
        for pattern in self.patterns() {
            topology = topology.bind(self.bus.name(), pattern);
        }
        topology
    }

    fn check(&self) -> Result<DeadLetterTopology, EventBusError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.routes.is_empty() {
            return Err(EventBusError::Invalid(format!("the group {:?} has no handler", self.name)));
        }
        let topology = self.topology();
        let mut names =
            vec![topology.dead_letter_queue_name().to_owned(), topology.dead_letter_exchange_name().to_owned()];
        names.extend(topology.retry_queues().into_iter().map(|(name, _)| name));
        if let Some(name) = names.iter().find(|n| n.len() > MAX_NAME) {
            return Err(EventBusError::Invalid(format!("the queue name {name:?} would exceed {MAX_NAME} bytes")));
        }
        Ok(topology)
    }

    /// Declares the group's queues (idempotent) and binds its queue with the handlers'
    /// patterns, then starts a member consuming it on a channel of its own. Each call
    /// starts another member; members of one group share its events.
    pub async fn start(&self) -> Result<GroupMember, EventBusError> {
        let topology = self.check()?;
        if self.bus.is_closed() {
            return Err(EventBusError::Closed);
        }
        let conn = self.bus.connection();
        let declaring = on_throwaway_channel(conn, |channel| {
            let topology = topology.clone();
            async move { topology.declare(&channel).await }
        });
        tokio::time::timeout(BROKER_TIMEOUT, declaring)
            .await
            .map_err(|_| lepus::Error::Timeout("declaring a consumer group"))??;

        let counters = Arc::new(Counters::default());
        let dispatch = Arc::new(Dispatch {
            routes: self.routes.clone(),
            group: self.name.clone(),
            bus: self.bus.counters().clone(),
            member: counters.clone(),
            max_retries: self.options.retry_policy.max_retries,
            timeout: self.options.handler_timeout,
        });
        let retry_options = RetryOptions {
            prefetch: self.options.prefetch.max(1),
            handler_timeout: self.options.handler_timeout.saturating_add(TIMEOUT_MARGIN),
            publish_timeout: self.options.publish_timeout,
        };
        let consumer = RetryConsumer::start(conn, &topology, retry_options, move |message| {
            let dispatch = dispatch.clone();
            async move { dispatch.handle(message).await }
        })
        .await?;
        let slot = Arc::new(MemberSlot { consumer: Mutex::new(Some(consumer)) });
        if !self.bus.register(&slot) {
            // Shut down meanwhile: this member must not outlive it.
            if let Some(consumer) = slot.take() {
                consumer.shutdown().await?;
            }
            return Err(EventBusError::Closed);
        }
        Ok(GroupMember {
            group: self.name.clone(),
            queue: topology.queue().to_owned(),
            slot,
            counters,
            conn: conn.clone(),
        })
    }

    /// The group queue's ready messages and consumers (members), from a passive declare.
    pub async fn queue_info(&self) -> Result<QueueDeclared, EventBusError> {
        let queue = self.queue();
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let info = on_throwaway_channel(self.bus.connection(), |channel| async move {
            channel.queue_declare(&queue, passive, FieldTable::new()).await
        });
        Ok(tokio::time::timeout(BROKER_TIMEOUT, info).await.map_err(|_| lepus::Error::Timeout("queue info"))??)
    }

    /// The tools for the group's dead-letter queue: count, peek, replay, purge.
    pub fn dead_letters(&self) -> DeadLetterQueue {
        DeadLetterQueue::for_topology(self.bus.connection(), &self.topology())
    }

    /// Deletes the group's queues and dead-letter exchange, with the events in them
    /// (stop its members first). Returns how many events went with them. Only the retry
    /// queues of the group's current policy are known: those of an earlier policy stay.
    pub async fn delete(&self) -> Result<u64, EventBusError> {
        let topology = self.topology();
        let deleting =
            on_throwaway_channel(self.bus.connection(), |channel| async move { topology.delete(&channel).await });
        Ok(tokio::time::timeout(BROKER_TIMEOUT, deleting)
            .await
            .map_err(|_| lepus::Error::Timeout("deleting a consumer group"))??)
    }
}

/// A member's handlers and counters.
struct Dispatch {
    routes: Vec<Route>,
    group: String,
    bus: Arc<Counters>,
    member: Arc<Counters>,
    max_retries: u32,
    timeout: Duration,
}

impl Dispatch {
    async fn handle(&self, message: RetryMessage) -> Result<(), HandlerFailure> {
        let at = now_ms();
        self.bus.consumed(at);
        self.member.consumed(at);
        let message = EventMessage::of(message);
        let retries = message.retries;
        let handlers: Vec<Arc<Handler>> = self
            .routes
            .iter()
            .filter(|route| topic_matches(&route.pattern, &message.routing_key))
            .map(|route| route.handler.clone())
            .collect();
        let outcome = if handlers.is_empty() {
            Err(HandlerFailure::permanent(format!(
                "no handler for {} in this member of the group {}",
                message.routing_key, self.group
            )))
        } else {
            self.run(handlers, message).await
        };
        let settled = match &outcome {
            Ok(()) => Settled::Succeeded,
            Err(f) if f.is_permanent() || retries >= self.max_retries => Settled::DeadLettered,
            Err(_) => Settled::Retried,
        };
        self.bus.settled(settled);
        self.member.settled(settled);
        outcome
    }

    /// Runs the handlers in turn, in a task of their own (a panic is a failure like any
    /// other), within the timeout.
    async fn run(&self, handlers: Vec<Arc<Handler>>, message: EventMessage) -> Result<(), HandlerFailure> {
        let run_in_turn = move || async move {
            for handler in handlers {
                handler(message.clone()).await?;
            }
            Ok(())
        };
        // If the member is aborted while waiting, the handlers stop with it.
        crate::handler::run(Some(self.timeout), run_in_turn)
            .await
            .unwrap_or_else(|failure| Err(HandlerFailure::retry(failure.to_string())))
    }
}

/// A running member of a consumer group (from [`ConsumerGroup::start`]).
///
/// It runs until [`GroupMember::shutdown`] or [`EventBus::shutdown`], or until its channel
/// or connection closes ([`GroupMember::is_running`]). Dropping the handle does not stop
/// it while the bus lives; once the handle and every handle on the bus are dropped it is
/// aborted, and the events it was handling go back to the queue.
pub struct GroupMember {
    group: String,
    queue: String,
    slot: Arc<MemberSlot>,
    counters: Arc<Counters>,
    conn: lepus::Connection,
}

impl fmt::Debug for GroupMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupMember")
            .field("group", &self.group)
            .field("queue", &self.queue)
            .field("running", &self.is_running())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl GroupMember {
    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The queue it consumes, `{bus}.{group}`.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// What this member did so far (`published` and `publish_failures` are 0).
    pub fn stats(&self) -> EventBusStats {
        self.counters.snapshot(self.conn.recoveries())
    }

    /// True while it consumes: not shut down, and its channel and connection open.
    pub fn is_running(&self) -> bool {
        self.slot
            .consumer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(RetryConsumer::is_running)
    }

    /// Stops consuming, lets the events it received finish their handlers and be settled
    /// (each within the handler timeout), then closes its channel. Returns the error it had
    /// ended with on its own (a deleted queue, a closed connection), if any. After
    /// [`EventBus::shutdown`] this does nothing.
    pub async fn shutdown(self) -> Result<(), EventBusError> {
        match self.slot.take() {
            Some(consumer) => Ok(consumer.shutdown().await?),
            None => Ok(()),
        }
    }
}
