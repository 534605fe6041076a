//! Work queues: tasks published persistently to a durable queue and shared out among
//! [`Worker`]s, each message handled by exactly one of them.
//!
//! What the pika tutorial writes by hand — `durable=True`, `delivery_mode=2`,
//! `basic_qos(prefetch_count=1)`, `basic_ack`/`basic_nack(requeue=False)` in a `try` — is
//! one [`WorkQueue::declare`], one [`WorkQueue::publish`] and one [`Worker`] here:
//!
//! - [`WorkQueue::declare`] declares a durable queue and, unless told otherwise, a durable
//!   dead-letter queue `<name>.dead` that receives what workers give up on
//!   ([`DeadLetter`]). Its publishing channel is in confirm mode, so
//!   [`WorkQueue::publish`] resolves to the broker's verdict.
//! - A [`Worker`] consumes with a prefetch and runs an async handler on each message, in a
//!   task of its own (one at a time, or several: [`WorkerOptions::concurrency`]). The
//!   handler's [`Outcome`] decides: ack, requeue, or dead-letter (`basic.nack` with
//!   `requeue = false`). A handler that fails ([`HandlerError`]) or panics never loses its
//!   message and never stops the worker: see [`WorkerOptions::on_panic`].
//! - [`Worker::shutdown`] stops consuming, gives back what was prefetched but not started,
//!   waits for the handlers in flight, and only then returns.

use std::{fmt, future::Future, sync::Arc};

use bytes::Bytes;
use lepus::{
    BasicProperties, Channel, Confirmation, Connection, Error, PublishOptions, PublisherConfirm, QueueArguments,
    QueueDeclareOptions, QueueDeleteOptions,
};
use tokio::sync::Mutex;

mod worker;

pub use worker::{Job, Worker, WorkerOptions, WorkerStats};

/// `delivery_mode` of a persistent message: written to disk by a durable queue.
pub const PERSISTENT: u8 = 2;

/// The suffix of the dead-letter queue [`DeadLetter::Queue`] declares: `<name>.dead`.
pub const DEAD_LETTER_SUFFIX: &str = ".dead";

/// `properties` with `delivery_mode` 2 (persistent) unless it was set.
pub(crate) fn persistent(mut properties: BasicProperties) -> BasicProperties {
    properties.delivery_mode.get_or_insert(PERSISTENT);
    properties
}

/// A publishing channel of one connection, reopened when the broker closed it (e.g. after a
/// 404 for a deleted exchange), in confirm mode when asked.
pub(crate) struct PublishChannel {
    conn: Connection,
    confirms: bool,
    channel: Mutex<Option<Channel>>,
}

impl fmt::Debug for PublishChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishChannel").field("confirms", &self.confirms).finish_non_exhaustive()
    }
}

impl PublishChannel {
    pub(crate) fn new(conn: &Connection, confirms: bool) -> Self {
        PublishChannel { conn: conn.clone(), confirms, channel: Mutex::new(None) }
    }

    /// Adopts an open channel (already in confirm mode if `confirms`).
    pub(crate) fn with_channel(conn: &Connection, confirms: bool, channel: Channel) -> Self {
        PublishChannel { conn: conn.clone(), confirms, channel: Mutex::new(Some(channel)) }
    }

    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The open channel, opening (and confirm-selecting) a new one if the last one closed.
    pub(crate) async fn channel(&self) -> Result<Channel, Error> {
        let mut slot = self.channel.lock().await;
        if let Some(channel) = slot.as_ref().filter(|c| c.is_open()) {
            return Ok(channel.clone());
        }
        let channel = self.conn.open_channel().await?;
        if self.confirms {
            channel.confirm_select().await?;
        }
        *slot = Some(channel.clone());
        Ok(channel)
    }

    /// Publishes; the confirm resolves to the broker's verdict (`NotRequested` without
    /// confirms).
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: Bytes,
        options: PublishOptions,
    ) -> Result<PublisherConfirm, Error> {
        self.channel().await?.basic_publish(exchange, routing_key, body, options).await
    }
}

/// Runs `f` on a channel of its own, closed afterwards: a broker error (404, 406) closes
/// only that channel.
pub(crate) async fn on_throwaway_channel<T, F, Fut>(conn: &Connection, f: F) -> Result<T, Error>
where
    F: FnOnce(Channel) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let channel = conn.open_channel().await?;
    let result = f(channel.clone()).await;
    // Closing an already closed channel is not an error; any other failure to close is
    // the connection's, and the result says more.
    let _ = channel.close().await;
    result
}

/// Where a work queue's dead-lettered messages go (what a handler gave up on, what
/// panicked, see [`Outcome::DeadLetter`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DeadLetter {
    /// A durable queue `<name>.dead` next to the work queue, declared with it (through the
    /// default exchange). Nothing a worker gives up on is lost.
    #[default]
    Queue,
    /// An exchange of your own (declared by you), with an optional routing key replacing the
    /// message's own.
    Exchange {
        /// The dead-letter exchange (`x-dead-letter-exchange`).
        exchange: String,
        /// The routing key dead-lettered messages get (`x-dead-letter-routing-key`).
        routing_key: Option<String>,
    },
    /// No dead-lettering set up here: whatever [`WorkQueueOptions::arguments`] say. Without
    /// a dead-letter exchange, a dead-lettered message is **dropped** by the broker.
    None,
}

/// How [`WorkQueue::declare_with`] sets up the queue and publishes to it.
#[derive(Debug, Clone)]
pub struct WorkQueueOptions {
    /// Publisher confirms on the publishing channel (default `true`): [`WorkQueue::publish`]
    /// then resolves to [`Confirmation::Ack`] only once the broker has the message.
    pub confirms: bool,
    /// Dead-lettering (default [`DeadLetter::Queue`]).
    pub dead_letter: DeadLetter,
    /// More queue arguments (TTL, length limit, quorum type, ...). [`WorkQueueOptions::dead_letter`]
    /// overrides any dead-letter arguments set here unless it is [`DeadLetter::None`].
    pub arguments: QueueArguments,
}

impl Default for WorkQueueOptions {
    fn default() -> Self {
        WorkQueueOptions { confirms: true, dead_letter: DeadLetter::Queue, arguments: QueueArguments::new() }
    }
}

/// A durable work queue and a channel to publish persistent messages to it.
///
/// Cheap to clone: clones share the publishing channel. Declaring is idempotent, so every
/// producer and worker process may declare it; declaring it with other arguments than an
/// existing queue has fails with the broker's 406 (`PRECONDITION_FAILED`).
///
/// ```no_run
/// use lepus::Connection;
/// use lepus_patterns::work_queue::{HandlerError, WorkQueue, WorkerOptions};
///
/// # async fn demo() -> Result<(), lepus::Error> {
/// let conn = Connection::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
/// let tasks = WorkQueue::declare(&conn, "task_queue").await?;
/// assert!(tasks.publish(&b"process item 1"[..]).await?.is_ack());
///
/// let worker = tasks
///     .worker(WorkerOptions::default(), |job| async move {
///         let text = job.body_str().ok_or_else(|| HandlerError::dead_letter("not UTF-8"))?;
///         println!("processing {text}");
///         Ok::<(), HandlerError>(())
///     })
///     .await?;
/// // ... later:
/// let stats = worker.shutdown().await?;
/// println!("{} done", stats.acked);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct WorkQueue {
    name: String,
    dead_letter_queue: Option<String>,
    publisher: Arc<PublishChannel>,
}

impl WorkQueue {
    /// Declares the durable queue `name` with a dead-letter queue `<name>.dead`, and a
    /// publishing channel in confirm mode.
    pub async fn declare(conn: &Connection, name: &str) -> Result<WorkQueue, Error> {
        Self::declare_with(conn, name, WorkQueueOptions::default()).await
    }

    /// Declares the queue with explicit options.
    pub async fn declare_with(conn: &Connection, name: &str, options: WorkQueueOptions) -> Result<WorkQueue, Error> {
        if name.is_empty() {
            return Err(Error::InvalidOperation("a work queue needs a name (workers find it by name)"));
        }
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        let channel = conn.open_channel().await?;
        let mut arguments = options.arguments;
        let mut dead_letter_queue = None;
        match &options.dead_letter {
            DeadLetter::Queue => {
                let dead = format!("{name}{DEAD_LETTER_SUFFIX}");
                channel.queue_declare(&dead, durable, Default::default()).await?;
                arguments = arguments.dead_letter_exchange("").dead_letter_routing_key(&dead);
                dead_letter_queue = Some(dead);
            }
            DeadLetter::Exchange { exchange, routing_key } => {
                arguments = arguments.dead_letter_exchange(exchange);
                if let Some(key) = routing_key {
                    arguments = arguments.dead_letter_routing_key(key);
                }
            }
            DeadLetter::None => {}
        }
        channel.queue_declare(name, durable, arguments.build()?).await?;
        if options.confirms {
            channel.confirm_select().await?;
        }
        let publisher = Arc::new(PublishChannel::with_channel(conn, options.confirms, channel));
        Ok(WorkQueue { name: name.to_owned(), dead_letter_queue, publisher })
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The dead-letter queue declared with it ([`DeadLetter::Queue`]), if any.
    pub fn dead_letter_queue(&self) -> Option<&str> {
        self.dead_letter_queue.as_deref()
    }

    /// Publishes a persistent message and waits for the broker's verdict:
    /// [`Confirmation::Ack`] once the broker has it; [`Confirmation::Returned`] if the queue
    /// no longer exists (the publish is mandatory); [`Confirmation::Nack`] if the broker
    /// refused it (e.g. a full queue with `reject-publish`); `NotRequested` without confirms.
    pub async fn publish(&self, body: impl Into<Bytes>) -> Result<Confirmation, Error> {
        let options = PublishOptions { mandatory: true, properties: BasicProperties::default() };
        self.publish_with(body, options).await
    }

    /// Publishes with properties (headers, message id, priority, ...) and waits for the
    /// verdict. The message is persistent unless `options.properties.delivery_mode` says
    /// otherwise; `options.mandatory` is used as given.
    pub async fn publish_with(&self, body: impl Into<Bytes>, options: PublishOptions) -> Result<Confirmation, Error> {
        self.publish_deferred(body, options).await?.await
    }

    /// Publishes without waiting for the verdict, to pipeline many publishes: await the
    /// returned [`PublisherConfirm`]s later (in any order).
    pub async fn publish_deferred(
        &self,
        body: impl Into<Bytes>,
        options: PublishOptions,
    ) -> Result<PublisherConfirm, Error> {
        let options = PublishOptions { properties: persistent(options.properties), ..options };
        self.publisher.publish("", &self.name, body.into(), options).await
    }

    /// Starts a [`Worker`] on this queue (on a channel of its own).
    pub async fn worker<F, Fut, O>(&self, options: WorkerOptions, handler: F) -> Result<Worker, Error>
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = O> + Send + 'static,
        O: IntoOutcome + Send + 'static,
    {
        Worker::start(self.publisher.connection(), &self.name, options, handler).await
    }

    /// Deletes the queue and its dead-letter queue; returns how many messages went with the
    /// work queue.
    pub async fn delete(&self) -> Result<u32, Error> {
        let dead = self.dead_letter_queue.clone();
        let name = self.name.clone();
        on_throwaway_channel(self.publisher.connection(), |channel| async move {
            let left = channel.queue_delete(&name, QueueDeleteOptions::default()).await?;
            if let Some(dead) = dead {
                channel.queue_delete(&dead, QueueDeleteOptions::default()).await?;
            }
            Ok(left)
        })
        .await
    }
}

/// What a handler decided about its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Done: `basic.ack`, the broker forgets the message.
    Ack,
    /// Try again: `basic.nack` with `requeue = true`; the broker puts it back in the queue
    /// (near its old place) and delivers it again, to any worker, with `redelivered` set.
    Requeue,
    /// Give up: `basic.nack` with `requeue = false`; the broker moves it to the queue's
    /// dead-letter exchange — or drops it if the queue has none (see [`DeadLetter`]).
    DeadLetter,
}

/// A failed handler: why, and whether to requeue or dead-letter the message.
///
/// Any `std::error::Error` converts into one that dead-letters (so `?` works in handlers);
/// [`HandlerError::requeue`] asks for another try instead.
///
/// ```
/// use lepus_patterns::work_queue::{HandlerError, IntoOutcome, Outcome};
///
/// fn parse(body: &[u8]) -> Result<u32, HandlerError> {
///     let text = std::str::from_utf8(body)?; // Utf8Error: dead-letter
///     Ok(text.trim().parse()?) // ParseIntError: dead-letter
/// }
/// assert_eq!(parse(b"12").ok(), Some(12));
/// assert_eq!(parse(b"twelve").map(|_| ()).into_outcome(), Outcome::DeadLetter);
/// assert_eq!(Err::<(), _>(HandlerError::requeue("database busy")).into_outcome(), Outcome::Requeue);
/// ```
pub struct HandlerError {
    outcome: Outcome,
    message: String,
}

impl HandlerError {
    /// Gives up on the message: it is dead-lettered.
    pub fn dead_letter(reason: impl fmt::Display) -> Self {
        HandlerError { outcome: Outcome::DeadLetter, message: reason.to_string() }
    }

    /// The message should be tried again: it is requeued. A message that fails every time
    /// comes back forever; bound the tries (e.g. with [`Job::redelivered`]) or dead-letter.
    pub fn requeue(reason: impl fmt::Display) -> Self {
        HandlerError { outcome: Outcome::Requeue, message: reason.to_string() }
    }

    /// What happens to the message: [`Outcome::Requeue`] or [`Outcome::DeadLetter`].
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Why the handler failed.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError").field("outcome", &self.outcome).field("message", &self.message).finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for HandlerError {
    fn from(error: E) -> Self {
        HandlerError::dead_letter(error)
    }
}

/// What a handler's future may resolve to.
///
/// - [`Outcome`]: used as is.
/// - `()`: [`Outcome::Ack`].
/// - `Result<(), E>` with `E: Into<HandlerError>` (any `std::error::Error`, or a
///   [`HandlerError`]): `Ok` acks, `Err` requeues or dead-letters as the error says, and is
///   logged (`tracing`, warn).
pub trait IntoOutcome {
    /// The outcome.
    fn into_outcome(self) -> Outcome;
}

impl IntoOutcome for Outcome {
    fn into_outcome(self) -> Outcome {
        self
    }
}

impl IntoOutcome for () {
    fn into_outcome(self) -> Outcome {
        Outcome::Ack
    }
}

impl<E: Into<HandlerError>> IntoOutcome for Result<(), E> {
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(()) => Outcome::Ack,
            Err(e) => {
                let e = e.into();
                tracing::warn!(outcome = ?e.outcome, error = %e.message, "handler failed");
                e.outcome
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_of_handler_results() {
        assert_eq!(().into_outcome(), Outcome::Ack);
        assert_eq!(Outcome::Requeue.into_outcome(), Outcome::Requeue);
        assert_eq!(Ok::<(), HandlerError>(()).into_outcome(), Outcome::Ack);
        assert_eq!(Err::<(), _>(HandlerError::requeue("busy")).into_outcome(), Outcome::Requeue);
        assert_eq!(Err::<(), _>(HandlerError::dead_letter("bad")).into_outcome(), Outcome::DeadLetter);
        let io = std::io::Error::other("disk");
        assert_eq!(Err::<(), _>(io).into_outcome(), Outcome::DeadLetter);
        let e = HandlerError::from("x".parse::<u8>().unwrap_err());
        assert_eq!(e.outcome(), Outcome::DeadLetter);
        assert!(e.message().contains("invalid digit"), "{e}");
    }

    #[test]
    fn persistent_unless_said_otherwise() {
        assert_eq!(persistent(BasicProperties::default()).delivery_mode, Some(PERSISTENT));
        let transient = BasicProperties { delivery_mode: Some(1), ..Default::default() };
        assert_eq!(persistent(transient).delivery_mode, Some(1));
    }
}
