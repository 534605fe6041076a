//! The [`Worker`]: a consumer that runs a handler per message and settles it by the
//! handler's outcome.

use std::{
    fmt,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use lepus::{BasicProperties, Channel, Connection, ConsumeOptions, Consumer, Delivery, Error, FieldValue, ShortStr};
use tokio::{
    sync::oneshot,
    task::{JoinHandle, JoinSet},
};

use super::{IntoOutcome, Outcome};
use crate::handler::Failure;

/// How long buffered deliveries are waited for after a worker cancels its consumer.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// One message handed to a [`Worker`]'s handler: a delivery without the means to
/// acknowledge it — the handler's [`Outcome`] does that, exactly once.
#[derive(Debug, Clone)]
pub struct Job {
    /// The body (the memory the socket read it into).
    pub body: Bytes,
    /// Its properties (headers, message id, priority, ...).
    pub properties: BasicProperties,
    /// The exchange it was published to (empty: the default exchange).
    pub exchange: ShortStr,
    /// Its routing key.
    pub routing_key: ShortStr,
    /// True if it was delivered before (requeued, or its last worker died).
    pub redelivered: bool,
    /// Its delivery tag on the worker's channel.
    pub delivery_tag: u64,
}

impl Job {
    fn of(delivery: &Delivery) -> Job {
        Job {
            body: delivery.body.clone(),
            properties: delivery.properties.clone(),
            exchange: delivery.exchange.clone(),
            routing_key: delivery.routing_key.clone(),
            redelivered: delivery.redelivered,
            delivery_tag: delivery.delivery_tag,
        }
    }

    /// The body as UTF-8 text, if it is.
    pub fn body_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }

    /// The routing key as text (empty if it is not UTF-8).
    pub fn routing_key_str(&self) -> &str {
        self.routing_key.as_str().unwrap_or_default()
    }

    /// An application header.
    pub fn header(&self, key: &str) -> Option<&FieldValue> {
        self.properties.headers.as_ref()?.get(key)
    }
}

/// How a [`Worker`] consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerOptions {
    /// Unacknowledged messages the broker lets this worker hold (`basic.qos`, per
    /// consumer): those in its handlers and those waiting for one. Default 1: a slow worker
    /// never hoards work a free one could do; more saves a round trip per message. 0 is
    /// refused (it would mean "unlimited" to the broker).
    pub prefetch: u16,
    /// Handlers running at once (default 1: one after the other, in delivery order, as
    /// pika's callbacks run). More runs them in parallel tasks, in no particular order; it
    /// is capped by the prefetch, since the broker sends no more. 0 counts as 1.
    pub concurrency: usize,
    /// What a handler that panics means for its message (default [`Outcome::DeadLetter`]:
    /// a panic is usually a bug that a retry repeats). [`Outcome::Requeue`] retries it;
    /// [`Outcome::Ack`] drops it. The panic is caught (the handler runs in a task of its
    /// own), logged, counted in [`WorkerStats::panicked`], and the worker goes on.
    pub on_panic: Outcome,
    /// Consumer tag; empty lets the broker choose.
    pub consumer_tag: String,
    /// How long [`Worker::shutdown`] waits for handlers in flight; `None` waits as long as
    /// they take. Handlers still running then are aborted and their messages go back to
    /// the queue (the channel closes unacknowledged). Default 30 s.
    pub shutdown_timeout: Option<Duration>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            prefetch: 1,
            concurrency: 1,
            on_panic: Outcome::DeadLetter,
            consumer_tag: String::new(),
            shutdown_timeout: Some(Duration::from_secs(30)),
        }
    }
}

impl WorkerOptions {
    /// Default options with this prefetch (handlers still run one at a time).
    pub fn prefetch(prefetch: u16) -> Self {
        WorkerOptions { prefetch, ..WorkerOptions::default() }
    }

    /// Default options with this prefetch and as many handlers running at once.
    pub fn parallel(prefetch: u16) -> Self {
        WorkerOptions { prefetch, concurrency: usize::from(prefetch), ..WorkerOptions::default() }
    }
}

/// What a worker did, counted per message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Messages acknowledged.
    pub acked: u64,
    /// Messages requeued: by their handler, or at shutdown before their handler started.
    pub requeued: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Handlers that panicked (their messages are counted by [`WorkerOptions::on_panic`]).
    pub panicked: u64,
    /// Acknowledgements that could not be sent because the channel had closed; the broker
    /// redelivers those messages.
    pub unsettled: u64,
}

#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    requeued: AtomicU64,
    dead_lettered: AtomicU64,
    panicked: AtomicU64,
    unsettled: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> WorkerStats {
        WorkerStats {
            acked: self.acked.load(Ordering::Relaxed),
            requeued: self.requeued.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            panicked: self.panicked.load(Ordering::Relaxed),
            unsettled: self.unsettled.load(Ordering::Relaxed),
        }
    }

    fn settled(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Ack => &self.acked,
            Outcome::Requeue => &self.requeued,
            Outcome::DeadLetter => &self.dead_lettered,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A running consumer that hands each message to an async handler and settles it by the
/// handler's [`Outcome`].
///
/// Handlers run in tasks of their own, one at a time in delivery order unless
/// [`WorkerOptions::concurrency`] allows more. The worker runs until [`Worker::shutdown`],
/// until it is dropped (which shuts it down in the background), or until its consumer
/// ends — the broker cancelled it (queue deleted) or its channel or connection closed;
/// [`Worker::join`] then returns that error. Messages in flight when a channel closes are
/// never lost: the broker requeues what was not acknowledged.
///
/// ```no_run
/// use lepus::Connection;
/// use lepus_patterns::work_queue::{Job, Outcome, Worker, WorkerOptions};
///
/// # async fn demo() -> Result<(), lepus::Error> {
/// let conn = Connection::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
/// let options = WorkerOptions { prefetch: 8, concurrency: 4, on_panic: Outcome::Requeue, ..Default::default() };
/// let worker = Worker::start(&conn, "task_queue", options, |job: Job| async move {
///     if job.redelivered { Outcome::DeadLetter } else { Outcome::Ack }
/// })
/// .await?;
/// tokio::time::sleep(std::time::Duration::from_secs(60)).await;
/// worker.shutdown().await?;
/// # Ok(()) }
/// ```
pub struct Worker {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<WorkerStats, Error>>,
    counters: Arc<Counters>,
    tag: String,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker").field("tag", &self.tag).field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl Worker {
    /// Opens a channel on `conn`, sets the prefetch, starts consuming `queue` (which must
    /// exist) and returns once the broker confirmed the consumer.
    pub async fn start<F, Fut, O>(
        conn: &Connection,
        queue: &str,
        options: WorkerOptions,
        handler: F,
    ) -> Result<Worker, Error>
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = O> + Send + 'static,
        O: IntoOutcome + Send + 'static,
    {
        if options.prefetch == 0 {
            return Err(Error::InvalidOperation("a worker's prefetch must be at least 1"));
        }
        let channel = conn.open_channel().await?;
        channel.basic_qos(options.prefetch, false).await?;
        let consume = ConsumeOptions { consumer_tag: options.consumer_tag.clone(), ..ConsumeOptions::default() };
        let consumer = channel.basic_consume(queue, consume).await?;
        let tag = consumer.tag().to_owned();
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = oneshot::channel();
        let run = Run { channel, options, handler: Arc::new(handler), counters: counters.clone() };
        let task = tokio::spawn(run.run(consumer, stopped));
        tracing::debug!(queue, tag, "worker started");
        Ok(Worker { stop: Some(stop), task, counters, tag })
    }

    /// The consumer tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// What the worker did so far.
    pub fn stats(&self) -> WorkerStats {
        self.counters.snapshot()
    }

    /// True once the worker has stopped (shut down, or its consumer ended).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops gracefully: cancels the consumer, requeues deliveries whose handler had not
    /// started, waits for the handlers in flight (up to [`WorkerOptions::shutdown_timeout`])
    /// and their acknowledgements, closes the channel, and returns what the worker did — or
    /// the error that had already stopped it.
    pub async fn shutdown(mut self) -> Result<WorkerStats, Error> {
        if let Some(stop) = self.stop.take() {
            // The worker may have stopped by itself already; join says why.
            let _ = stop.send(());
        }
        self.join().await
    }

    /// Waits until the worker stops by itself — its consumer ended: the broker cancelled it
    /// or the channel or connection closed (that error is returned). Dropping this future
    /// shuts the worker down.
    pub async fn join(mut self) -> Result<WorkerStats, Error> {
        // Keep the stop sender alive while waiting: dropping it means "stop".
        let _stop = self.stop.take();
        match (&mut self.task).await {
            Ok(result) => result,
            Err(_) => Err(Error::InvalidOperation("the worker task was aborted (runtime shutting down)")),
        }
    }
}

/// The worker's task state.
struct Run<F> {
    channel: Channel,
    options: WorkerOptions,
    handler: Arc<F>,
    counters: Arc<Counters>,
}

impl<F, Fut, O> Run<F>
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = O> + Send + 'static,
    O: IntoOutcome + Send + 'static,
{
    async fn run(self, mut consumer: Consumer, mut stopped: oneshot::Receiver<()>) -> Result<WorkerStats, Error> {
        let limit = self.options.concurrency.clamp(1, usize::from(self.options.prefetch).max(1));
        let mut in_flight = JoinSet::new();
        let mut failure = None;
        loop {
            tokio::select! {
                biased;
                // A send or a dropped Worker: both mean stop.
                _ = &mut stopped => break,
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                next = consumer.next(), if in_flight.len() < limit => match next {
                    Some(Ok(delivery)) => {
                        in_flight.spawn(settle(delivery, self.handler.clone(), self.options.on_panic, self.counters.clone()));
                    }
                    Some(Err(error)) => {
                        tracing::warn!(tag = consumer.tag(), %error, "worker's consumer ended");
                        failure = Some(error);
                        break;
                    }
                    None => break,
                },
            }
        }
        if failure.is_none() {
            self.give_back(&mut consumer).await;
        }
        drop(consumer);
        let all_done = async { while in_flight.join_next().await.is_some() {} };
        match self.options.shutdown_timeout {
            Some(limit) => {
                if tokio::time::timeout(limit, all_done).await.is_err() {
                    tracing::warn!(
                        running = in_flight.len(),
                        "handlers still running after the shutdown timeout: aborted, their messages requeued"
                    );
                    in_flight.shutdown().await;
                }
            }
            None => all_done.await,
        }
        // Unacknowledged messages (aborted handlers) go back to the queue with the channel.
        let _ = self.channel.close().await;
        match failure {
            Some(error) => Err(error),
            None => Ok(self.counters.snapshot()),
        }
    }

    /// Cancels the consumer and requeues what it had buffered but no handler started.
    async fn give_back(&self, consumer: &mut Consumer) {
        if let Err(error) = consumer.cancel().await {
            tracing::debug!(%error, "cancelling the worker's consumer failed");
            return;
        }
        // After our cancel the stream yields what is on its way, then ends.
        while let Ok(Some(Ok(delivery))) = tokio::time::timeout(DRAIN_WAIT, consumer.next()).await {
            match delivery.nack(true).await {
                Ok(()) => self.counters.settled(Outcome::Requeue),
                Err(_) => {
                    self.counters.unsettled.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Runs the handler in a task of its own (so a panic is caught, see [`crate::handler`])
/// and settles the delivery by its outcome.
async fn settle<F, Fut, O>(delivery: Delivery, handler: Arc<F>, on_panic: Outcome, counters: Arc<Counters>)
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = O> + Send + 'static,
    O: IntoOutcome + Send + 'static,
{
    let job = Job::of(&delivery);
    // No time limit: a worker's handler may take as long as it needs (the shutdown timeout
    // bounds it only when the worker stops).
    let outcome = match crate::handler::run(None, move || async move { handler(job).await.into_outcome() }).await {
        Ok(outcome) => outcome,
        Err(Failure::Panicked(_)) => {
            counters.panicked.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(delivery_tag = delivery.delivery_tag, outcome = ?on_panic, "settling a panicked handler's message");
            on_panic
        }
        // Cancelled: the runtime is shutting down. Give it back.
        Err(Failure::Cancelled | Failure::TimedOut(_)) => Outcome::Requeue,
    };
    let sent = match outcome {
        Outcome::Ack => delivery.ack().await,
        Outcome::Requeue => delivery.nack(true).await,
        Outcome::DeadLetter => delivery.nack(false).await,
    };
    match sent {
        Ok(()) => counters.settled(outcome),
        Err(error) => {
            counters.unsettled.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, ?outcome, "could not settle a message: the broker redelivers it");
        }
    }
}
