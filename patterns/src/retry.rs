//! Retries with exponential backoff and jitter, waited out by the broker, and a consumer
//! that applies them: [`RetryPolicy`] and [`RetryConsumer`].
//!
//! When a handler fails a message, the consumer publishes a copy to the retry queue of
//! the chosen delay (`<queue>.retry.<ms>`, see [`crate::dead_letter`]), waits for the
//! broker's confirm, then acknowledges the original. The copy sits in the retry queue
//! until its TTL expires; the broker then dead-letters it back to the work queue. Nothing
//! sleeps in the consumer, and a consumer that stops meanwhile loses nothing.
//!
//! # Delays
//!
//! Retry `n` (0 for the first) waits `min(base_delay × multiplier^n, max_delay)`, spread by
//! ± `jitter_percent` so that messages failing together do not come back together. A delay
//! is a queue, so the jitter takes `jitter_steps` evenly spaced values (e.g. 90 %, 100 %,
//! 110 % for ±10 % in 3 steps) and each retry picks one at random: the number of retry
//! queues stays small and fixed ([`RetryPolicy::delays`]), and within one queue every
//! message has the same TTL, so they expire in order — no message waits behind a longer one.
//!
//! # Counting and giving up
//!
//! The count of retries done travels in the `x-lepus-retries` header (see
//! [`crate::dead_letter::retry_count`] for why not `x-death`). After `max_retries` retries —
//! or at once for a [`HandlerFailure::permanent`] failure — the message is published to
//! the dead-letter exchange with `x-lepus-error` (the last error), `x-lepus-retries`,
//! `x-lepus-first-failure` and `x-lepus-last-failure` (timestamps), the original exchange
//! and routing key and the work queue's name ([`crate::dead_letter::headers`]).
//!
//! If that republish fails (the retry queue is missing, the broker nacks, no confirm in
//! time), the original is rejected without requeue, so the broker dead-letters it to the
//! DLQ through the work queue's own `x-dead-letter-exchange` — without the lepus headers,
//! with an `x-death` of reason `rejected`. A message is never dropped and never spins.
//! One exception: a dead-letter *exchange* that does not exist makes the broker close the
//! consumer's channel (404) on the republish; the consumer then stops
//! ([`RetryConsumer::is_running`], [`RetryConsumer::shutdown`] returns the error) and the
//! message goes back to the work queue.

use std::{
    fmt,
    future::Future,
    hash::{BuildHasher, Hasher},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use lepus::{
    BasicProperties, Channel, Confirmation, Connection, ConsumeOptions, Consumer, Delivery, FieldTable, FieldValue,
    PublishOptions,
};
use tokio::{
    sync::watch,
    task::{JoinHandle, JoinSet},
};

use crate::dead_letter::{DeadLetterTopology, headers, now_secs, retry_count};

/// The most a retry may wait: RabbitMQ's TTLs are 32-bit milliseconds.
const MAX_DELAY_MS: u128 = u32::MAX as u128;
/// How long setup and stopping may wait for the broker.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// When to retry and when to give up; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries before a message goes to the dead-letter queue (default 3).
    pub max_retries: u32,
    /// The first retry's delay (default 1 s). Whole milliseconds, at least 1.
    pub base_delay: Duration,
    /// No retry waits longer, jitter aside (default 60 s; at most `u32::MAX` ms).
    pub max_delay: Duration,
    /// Each retry waits this many times longer than the one before (default 2).
    pub multiplier: u32,
    /// The delay varies by up to this many percent either way (default 10; above 100
    /// counts as 100).
    pub jitter_percent: u8,
    /// How many distinct jittered delays (hence retry queues) each retry has (default 3;
    /// 0 or 1: no jitter).
    pub jitter_steps: u8,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            multiplier: 2,
            jitter_percent: 10,
            jitter_steps: 3,
        }
    }
}

impl RetryPolicy {
    /// Doubling delays from `base_delay`, `max_retries` times, the other settings default.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lepus_patterns::retry::RetryPolicy;
    ///
    /// let policy = RetryPolicy { jitter_percent: 0, ..RetryPolicy::exponential(Duration::from_millis(50), 3) };
    /// let delays: Vec<u128> = (0..3).map(|n| policy.nominal_delay(n).as_millis()).collect();
    /// assert_eq!(delays, [50, 100, 200]);
    /// assert_eq!(policy.delays().len(), 3, "one retry queue per delay");
    /// ```
    pub fn exponential(base_delay: Duration, max_retries: u32) -> Self {
        RetryPolicy { max_retries, base_delay, ..RetryPolicy::default() }
    }

    /// The same policy without jitter: one delay per retry.
    #[must_use]
    pub fn without_jitter(self) -> Self {
        RetryPolicy { jitter_percent: 0, ..self }
    }

    fn max_ms(&self) -> u128 {
        self.max_delay.as_millis().clamp(1, MAX_DELAY_MS)
    }

    /// Retry `retry`'s delay before jitter: `min(base × multiplier^retry, max)`, in whole
    /// milliseconds, at least 1 ms.
    pub fn nominal_delay(&self, retry: u32) -> Duration {
        let max = self.max_ms();
        let base = self.base_delay.as_millis().clamp(1, max);
        let ms = u128::from(self.multiplier).checked_pow(retry).map_or(max, |factor| base.saturating_mul(factor));
        millis(ms.clamp(1, max))
    }

    /// The delays retry `retry` picks from: the nominal delay spread by the jitter.
    pub fn delay_choices(&self, retry: u32) -> Vec<Duration> {
        let nominal = self.nominal_delay(retry).as_millis();
        let jitter = u128::from(self.jitter_percent.min(100));
        let steps = u128::from(self.jitter_steps);
        if jitter == 0 || steps <= 1 {
            return vec![millis(nominal)];
        }
        let mut choices: Vec<Duration> = (0..steps)
            .map(|k| {
                // In per-mille: from 1000 - 10·jitter to 1000 + 10·jitter, evenly.
                let factor = 1000 - 10 * jitter + 20 * jitter * k / (steps - 1);
                millis((nominal * factor / 1000).clamp(1, MAX_DELAY_MS))
            })
            .collect();
        choices.dedup();
        choices
    }

    /// Every delay the policy can choose, shortest first, each once: the retry queues.
    pub fn delays(&self) -> Vec<Duration> {
        let mut all = Vec::new();
        for retry in 0..self.max_retries {
            all.extend(self.delay_choices(retry));
            // Past the cap every retry waits the same.
            if self.nominal_delay(retry).as_millis() >= self.max_ms() {
                break;
            }
        }
        all.sort_unstable();
        all.dedup();
        all
    }

    /// A delay for retry `retry`, one of [`RetryPolicy::delay_choices`] at random.
    pub fn pick_delay(&self, retry: u32) -> Duration {
        let choices = self.delay_choices(retry);
        let len = u64::try_from(choices.len()).unwrap_or(1).max(1);
        let at = usize::try_from(random_u64() % len).unwrap_or(0);
        choices.get(at).copied().unwrap_or_else(|| self.nominal_delay(retry))
    }
}

fn millis(ms: u128) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// 64 random bits from the standard library's randomly keyed hasher (for jitter).
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

/// A message as a [`RetryConsumer`]'s handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryMessage {
    /// The body.
    pub body: Bytes,
    /// The properties, lepus headers included.
    pub properties: BasicProperties,
    /// The exchange it was first published to (a retried message keeps it).
    pub exchange: String,
    /// The routing key it was first published with.
    pub routing_key: String,
    /// Retries done before this attempt (0 on the first).
    pub retries: u32,
    /// True if the broker delivered this very copy before (a consumer stopped before
    /// settling it).
    pub redelivered: bool,
}

/// Why a handler failed a message, and whether trying again could help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerFailure {
    reason: String,
    permanent: bool,
}

impl HandlerFailure {
    /// A failure worth retrying (a timeout, a service down, ...).
    pub fn retry(reason: impl Into<String>) -> Self {
        HandlerFailure { reason: reason.into(), permanent: false }
    }

    /// A failure no retry will fix (a malformed message): straight to the dead-letter queue.
    pub fn permanent(reason: impl Into<String>) -> Self {
        HandlerFailure { reason: reason.into(), permanent: true }
    }

    /// Why.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// True for [`HandlerFailure::permanent`].
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

impl From<String> for HandlerFailure {
    fn from(reason: String) -> Self {
        HandlerFailure::retry(reason)
    }
}

impl From<&str> for HandlerFailure {
    fn from(reason: &str) -> Self {
        HandlerFailure::retry(reason)
    }
}

impl fmt::Display for HandlerFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for HandlerFailure {}

/// How a [`RetryConsumer`] consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryOptions {
    /// Messages handled at once (the prefetch); at least 1 (default 16).
    pub prefetch: u16,
    /// How long a handler may take before its attempt counts as failed (default 60 s).
    pub handler_timeout: Duration,
    /// How long to wait for the broker's confirm of a retry or dead-letter copy before
    /// rejecting the original instead (default 10 s).
    pub publish_timeout: Duration,
}

impl Default for RetryOptions {
    fn default() -> Self {
        RetryOptions {
            prefetch: 16,
            handler_timeout: Duration::from_secs(60),
            publish_timeout: Duration::from_secs(10),
        }
    }
}

/// What a [`RetryConsumer`] did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryStats {
    /// Messages the handler succeeded with (acknowledged).
    pub succeeded: u64,
    /// Failures sent to a retry queue.
    pub retried: u64,
    /// Messages sent to the dead-letter queue with the lepus headers.
    pub dead_lettered: u64,
    /// Messages rejected for the broker to dead-letter, because their copy could not be
    /// published.
    pub rejected: u64,
}

#[derive(Default)]
struct Counters {
    succeeded: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    rejected: AtomicU64,
}

struct Context {
    topology: DeadLetterTopology,
    options: RetryOptions,
    counters: Arc<Counters>,
}

/// A consumer of a [`DeadLetterTopology`]'s work queue that retries failures through the
/// retry queues and dead-letters what keeps failing; see the [module docs](self).
///
/// ```no_run
/// use std::time::Duration;
/// use lepus_patterns::{
///     dead_letter::DeadLetterTopology,
///     retry::{HandlerFailure, RetryConsumer, RetryOptions, RetryPolicy},
/// };
///
/// # async fn demo(conn: lepus::Connection) -> Result<(), lepus::Error> {
/// let topology = DeadLetterTopology::new("emails").retry_policy(RetryPolicy::exponential(Duration::from_secs(1), 5));
/// topology.declare(&conn.open_channel().await?).await?;
/// let consumer = RetryConsumer::start(&conn, &topology, RetryOptions::default(), |message| async move {
///     if message.body.is_empty() {
///         return Err(HandlerFailure::permanent("empty message"));
///     }
///     // send the email; a temporary error retries after 1 s, 2 s, 4 s, ...
///     Ok(())
/// })
/// .await?;
/// // ...
/// consumer.shutdown().await?;
/// # Ok(()) }
/// ```
pub struct RetryConsumer {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), lepus::Error>>,
    counters: Arc<Counters>,
    queue: String,
}

impl fmt::Debug for RetryConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryConsumer")
            .field("queue", &self.queue)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl RetryConsumer {
    /// Starts consuming the topology's work queue (declared beforehand with
    /// [`DeadLetterTopology::declare`]) on a channel of its own, in confirm mode.
    pub async fn start<F, Fut>(
        conn: &Connection,
        topology: &DeadLetterTopology,
        options: RetryOptions,
        handler: F,
    ) -> Result<RetryConsumer, lepus::Error>
    where
        F: Fn(RetryMessage) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerFailure>> + Send + 'static,
    {
        let prefetch = options.prefetch.max(1);
        let setup = async {
            let channel = conn.open_channel().await?;
            channel.confirm_select().await?;
            channel.basic_qos(prefetch, false).await?;
            let consume = ConsumeOptions::default();
            let consumer = channel.basic_consume(topology.queue(), consume).await?;
            Ok::<_, lepus::Error>((channel, consumer))
        };
        let (channel, consumer) = tokio::time::timeout(BROKER_TIMEOUT, setup)
            .await
            .map_err(|_| lepus::Error::Timeout("starting a retry consumer"))??;
        let counters = Arc::new(Counters::default());
        let context = Arc::new(Context { topology: topology.clone(), options, counters: counters.clone() });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(consume_loop(channel, consumer, Arc::new(handler), context, stop_rx));
        Ok(RetryConsumer { stop, task, counters, queue: topology.queue().to_owned() })
    }

    /// Counts of what happened so far.
    pub fn stats(&self) -> RetryStats {
        RetryStats {
            succeeded: self.counters.succeeded.load(Ordering::Relaxed),
            retried: self.counters.retried.load(Ordering::Relaxed),
            dead_lettered: self.counters.dead_lettered.load(Ordering::Relaxed),
            rejected: self.counters.rejected.load(Ordering::Relaxed),
        }
    }

    /// True while the consumer runs (it stops if its channel closes or its queue goes).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Stops consuming, lets messages in progress finish (each within the handler
    /// timeout), closes the channel. Returns the error the consumer ended with, if it
    /// ended on its own (e.g. its queue was deleted).
    pub async fn shutdown(mut self) -> Result<(), lepus::Error> {
        self.stop.send_replace(true);
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => {
                tracing::warn!(error = %e, "retry consumer task failed");
                Ok(())
            }
        }
    }
}

impl Drop for RetryConsumer {
    fn drop(&mut self) {
        // Unsettled messages go back to the queue with the channel.
        self.task.abort();
    }
}

async fn consume_loop<F, Fut>(
    channel: Channel,
    mut consumer: Consumer,
    handler: Arc<F>,
    context: Arc<Context>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), lepus::Error>
where
    F: Fn(RetryMessage) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerFailure>> + Send + 'static,
{
    let mut in_progress = JoinSet::new();
    let result = loop {
        tokio::select! {
            _ = stop.changed() => break Ok(()),
            Some(_) = in_progress.join_next(), if !in_progress.is_empty() => {}
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    in_progress.spawn(process(channel.clone(), delivery, handler.clone(), context.clone()));
                }
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            },
        }
    };
    if result.is_ok() {
        let _ = tokio::time::timeout(BROKER_TIMEOUT, consumer.cancel()).await;
    }
    let limit = context.options.handler_timeout.saturating_add(context.options.publish_timeout);
    let drain = async { while in_progress.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(limit.saturating_add(BROKER_TIMEOUT), drain).await;
    drop(in_progress);
    drop(consumer);
    let _ = tokio::time::timeout(BROKER_TIMEOUT, channel.close()).await;
    result
}

/// The exchange and routing key a message was first published with.
fn original_route(delivery: &Delivery) -> (String, String) {
    let props = &delivery.properties;
    let exchange = crate::dead_letter::header_string(props, headers::ORIGINAL_EXCHANGE);
    let routing_key = crate::dead_letter::header_string(props, headers::ORIGINAL_ROUTING_KEY);
    match (exchange, routing_key) {
        (Some(e), Some(k)) => (e, k),
        _ => (delivery.exchange.to_string(), delivery.routing_key.to_string()),
    }
}

async fn process<F, Fut>(channel: Channel, delivery: Delivery, handler: Arc<F>, context: Arc<Context>)
where
    F: Fn(RetryMessage) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerFailure>> + Send + 'static,
{
    let retries = retry_count(&delivery.properties);
    let (exchange, routing_key) = original_route(&delivery);
    let message = RetryMessage {
        body: delivery.body.clone(),
        properties: delivery.properties.clone(),
        exchange: exchange.clone(),
        routing_key: routing_key.clone(),
        retries,
        redelivered: delivery.redelivered,
    };
    let limit = context.options.handler_timeout;
    // A task of its own, so a panicking handler is a failure like any other.
    let outcome = crate::handler::run(Some(limit), move || handler(message))
        .await
        .unwrap_or_else(|failure| Err(HandlerFailure::retry(failure.to_string())));
    let counters = &context.counters;
    let failure = match outcome {
        Ok(()) => {
            if let Err(e) = delivery.ack().await {
                tracing::warn!(error = %e, "acknowledging a handled message failed; it will be redelivered");
            } else {
                counters.succeeded.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        Err(failure) => failure,
    };

    let topology = &context.topology;
    let now = FieldValue::Timestamp(now_secs());
    let mut table = delivery.properties.headers.clone().unwrap_or_default();
    let first_failure = table.get(headers::FIRST_FAILURE).is_none();
    let mut set = |key: &'static str, value: FieldValue| {
        // Static keys, well under 255 bytes: this cannot fail.
        let _ = table.insert(key, value);
    };
    set(headers::ERROR, failure.reason.as_str().into());
    set(headers::LAST_FAILURE, now.clone());
    set(headers::QUEUE, topology.queue().into());
    set(headers::ORIGINAL_EXCHANGE, exchange.as_str().into());
    set(headers::ORIGINAL_ROUTING_KEY, routing_key.as_str().into());
    if first_failure {
        set(headers::FIRST_FAILURE, now);
    }
    let retry_delay = match topology.policy() {
        Some(policy) if !failure.permanent && retries < policy.max_retries => Some(policy.pick_delay(retries)),
        _ => None,
    };
    let (target_exchange, target_key) = if let Some(delay) = retry_delay {
        set_retries(&mut table, retries.saturating_add(1));
        (String::new(), topology.retry_queue_name(delay))
    } else {
        set_retries(&mut table, retries);
        (topology.dead_letter_exchange_name().to_owned(), topology.dead_letter_routing_key().to_owned())
    };
    // The copy keeps every property but a per-message TTL, which would cut its wait short.
    let properties = BasicProperties { headers: Some(table), expiration: None, ..delivery.properties.clone() };
    tracing::debug!(
        reason = %failure.reason, retries, to = %target_key, retry = retry_delay.is_some(),
        "message failed"
    );
    let copied = publish_confirmed(
        &channel,
        &target_exchange,
        &target_key,
        delivery.body.clone(),
        properties,
        context.options.publish_timeout,
    )
    .await;
    match copied {
        Ok(()) => {
            if let Err(e) = delivery.ack().await {
                // The copy is out; the original comes back too: at-least-once.
                tracing::warn!(error = %e, "acknowledging a failed message after copying it failed");
            } else if retry_delay.is_some() {
                counters.retried.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(why) => {
            tracing::error!(
                error = %why, to = %target_key,
                "could not publish the retry/dead-letter copy; rejecting the message to the queue's dead-letter exchange"
            );
            if let Err(e) = delivery.nack(false).await {
                tracing::warn!(error = %e, "rejecting a failed message failed; it will be redelivered");
            } else {
                counters.rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn set_retries(table: &mut FieldTable, retries: u32) {
    let _ = table.insert(headers::RETRIES, FieldValue::I64(i64::from(retries)));
}

/// Publishes mandatory on a confirm-mode channel; `Ok` only for a broker ack.
pub(crate) async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: Bytes,
    properties: BasicProperties,
    limit: Duration,
) -> Result<(), String> {
    let publish = async {
        let options = PublishOptions { mandatory: true, properties };
        channel.basic_publish(exchange, routing_key, body, options).await?.await
    };
    match tokio::time::timeout(limit, publish).await {
        Ok(Ok(Confirmation::Ack)) => Ok(()),
        Ok(Ok(Confirmation::Returned(r))) => Err(format!("unroutable: {} {}", r.reply_code, r.reply_text)),
        Ok(Ok(Confirmation::Nack)) => Err("the broker refused it (nack)".to_owned()),
        Ok(Ok(Confirmation::NotRequested)) => Err("the channel is not in confirm mode".to_owned()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no confirm within {limit:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: &[Duration]) -> Vec<u128> {
        d.iter().map(Duration::as_millis).collect()
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let policy = RetryPolicy {
            max_retries: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..RetryPolicy::default()
        }
        .without_jitter();
        let nominal: Vec<u128> = (0..6).map(|n| policy.nominal_delay(n).as_millis()).collect();
        assert_eq!(nominal, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(ms(&policy.delays()), [100, 200, 400, 800, 1000], "capped delays share one queue");
        assert_eq!(policy.nominal_delay(u32::MAX).as_millis(), 1000, "no overflow");
    }

    #[test]
    fn jitter_spreads_each_delay_over_fixed_steps() {
        let policy =
            RetryPolicy { jitter_percent: 10, jitter_steps: 3, ..RetryPolicy::exponential(Duration::from_secs(1), 2) };
        assert_eq!(ms(&policy.delay_choices(0)), [900, 1000, 1100]);
        assert_eq!(ms(&policy.delay_choices(1)), [1800, 2000, 2200]);
        assert_eq!(ms(&policy.delays()), [900, 1000, 1100, 1800, 2000, 2200]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let d = policy.pick_delay(1);
            assert!(policy.delay_choices(1).contains(&d));
            seen.insert(d);
        }
        assert_eq!(seen.len(), 3, "every step gets picked");
    }

    #[test]
    fn odd_settings_stay_in_range() {
        let zero = RetryPolicy { base_delay: Duration::ZERO, multiplier: 0, ..RetryPolicy::default() };
        assert!(zero.delays().iter().all(|d| d.as_millis() >= 1));
        let huge = RetryPolicy {
            base_delay: Duration::MAX,
            max_delay: Duration::MAX,
            multiplier: u32::MAX,
            jitter_percent: 255,
            jitter_steps: 255,
            max_retries: u32::MAX,
        };
        let delays = huge.delays();
        assert!(!delays.is_empty() && delays.len() <= 255);
        assert!(delays.iter().all(|d| d.as_millis() >= 1 && d.as_millis() <= MAX_DELAY_MS));
        let none = RetryPolicy { max_retries: 0, ..RetryPolicy::default() };
        assert!(none.delays().is_empty());
        let one_step = RetryPolicy { jitter_steps: 1, ..RetryPolicy::default() };
        assert_eq!(one_step.delay_choices(0).len(), 1);
    }
}
