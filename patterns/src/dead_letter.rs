//! Dead-lettering: a work queue, its dead-letter exchange and dead-letter queue, and the
//! retry queues that give failed messages back to the work queue after a delay — declared
//! in one call by [`DeadLetterTopology`].
//!
//! ```text
//!                       ┌──────────── <queue>.retry.<ms> (x-message-ttl = ms) ◄───┐
//!                       │  expires: dead-lettered to "" with routing key <queue>  │ retry
//!                       ▼                                                         │
//!   publishers ──► <queue> ──► consumer (RetryConsumer) ──────────────────────────┤
//!                     │                                                           │ gave up
//!   rejected, expired │ (x-dead-letter-exchange)                                  ▼
//!   or over max-length└──────────────────────────► <queue>.dlx ──<queue>──► <queue>.dlq
//! ```
//!
//! - The work queue dead-letters to the dead-letter exchange (`<queue>.dlx`, direct) with
//!   the routing key `<queue>`; the dead-letter queue (`<queue>.dlq`) is bound to it with
//!   that key. So messages the broker drops — rejected without requeue, expired by the work
//!   queue's `x-message-ttl`, pushed out by its `x-max-length` — land in the DLQ with the
//!   broker's `x-death` header saying why.
//! - Each retry delay gets a queue `<queue>.retry.<delay in ms>` with `x-message-ttl` = the
//!   delay and no consumer; an expired message is dead-lettered through the default
//!   exchange straight back to the work queue. The broker does the waiting: no consumer
//!   sleeps. [`crate::retry`] decides which delay a failure gets and writes the headers.
//!
//! Every name can be changed; the arguments follow the guides (a DLQ with a 24 h
//! `x-message-ttl` and a `x-max-length`, for instance) through [`QueueArguments`]. Declaring
//! is idempotent as long as the arguments stay the same: RabbitMQ refuses (406, closing the
//! channel) to redeclare a queue with different ones.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lepus::{
    BasicProperties, Channel, ExchangeDeclareOptions, ExchangeKind, FieldTable, FieldValue, Overflow, QueueArguments,
    QueueDeclareOptions, QueueDeleteOptions,
};

use crate::retry::RetryPolicy;

/// The headers lepus-patterns writes on messages it retries, dead-letters and replays.
pub mod headers {
    /// The last handler error (long string).
    pub const ERROR: &str = "x-lepus-error";
    /// Retries done so far (signed 64-bit): 0 before the first retry; on a dead-lettered
    /// message, how many retries it had before it was given up.
    pub const RETRIES: &str = "x-lepus-retries";
    /// When the message first failed (AMQP timestamp, seconds since the epoch).
    pub const FIRST_FAILURE: &str = "x-lepus-first-failure";
    /// When the message last failed (AMQP timestamp).
    pub const LAST_FAILURE: &str = "x-lepus-last-failure";
    /// The exchange the message was first published to (a retried message comes back
    /// through the default exchange, so its delivery no longer says).
    pub const ORIGINAL_EXCHANGE: &str = "x-lepus-original-exchange";
    /// The routing key the message was first published with.
    pub const ORIGINAL_ROUTING_KEY: &str = "x-lepus-original-routing-key";
    /// The work queue whose consumer failed the message.
    pub const QUEUE: &str = "x-lepus-queue";
    /// Set to `true` on a message replayed from a dead-letter queue.
    pub const REPLAYED: &str = "x-lepus-replayed";
    /// When it was replayed (AMQP timestamp).
    pub const REPLAYED_AT: &str = "x-lepus-replayed-at";
}

/// Seconds since the epoch, as AMQP timestamps count.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A header as text: long strings and byte arrays (lossy UTF-8), integers in decimal.
pub(crate) fn header_string(properties: &BasicProperties, key: &str) -> Option<String> {
    match properties.headers.as_ref()?.get(key)? {
        FieldValue::LongString(b) | FieldValue::ByteArray(b) => Some(String::from_utf8_lossy(b).into_owned()),
        other => other.as_i64().map(|n| n.to_string()),
    }
}

/// A header as seconds since the epoch: an AMQP timestamp or a non-negative integer.
pub(crate) fn header_timestamp(properties: &BasicProperties, key: &str) -> Option<u64> {
    match properties.headers.as_ref()?.get(key)? {
        FieldValue::Timestamp(t) => Some(*t),
        other => other.as_i64().and_then(|n| u64::try_from(n).ok()),
    }
}

/// Retries already done, from the [`headers::RETRIES`] header (0 if absent or invalid).
///
/// lepus-patterns counts retries in a header of its own rather than by summing the
/// broker's `x-death` counts: the header moves with the message unchanged through
/// republishing and replay, while what RabbitMQ does with an `x-death` header a client
/// publishes has changed across versions (4.x ignores it). `x-death` is kept on retried
/// messages anyway, for inspection ([`x_death`]).
pub fn retry_count(properties: &BasicProperties) -> u32 {
    properties
        .headers
        .as_ref()
        .and_then(|h| h.get(headers::RETRIES))
        .and_then(FieldValue::as_i64)
        .map_or(0, |n| u32::try_from(n.max(0)).unwrap_or(u32::MAX))
}

/// One entry of the broker's `x-death` header: a queue a message was dead-lettered from,
/// why, and how many times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XDeath {
    /// The queue it was dead-lettered from.
    pub queue: String,
    /// Why: `rejected`, `expired`, `maxlen` or `delivery_limit`.
    pub reason: String,
    /// How many times it was dead-lettered from this queue for this reason.
    pub count: u64,
    /// The exchange it had been published to when it entered that queue.
    pub exchange: String,
    /// The routing keys it had then (with CC/BCC).
    pub routing_keys: Vec<String>,
    /// When it was last dead-lettered this way (seconds since the epoch).
    pub time: Option<u64>,
}

/// The broker's `x-death` entries, most recent first (RabbitMQ's order). Entries that are
/// not tables are skipped; missing fields are empty.
pub fn x_death(properties: &BasicProperties) -> Vec<XDeath> {
    let Some(entries) = properties.headers.as_ref().and_then(|h| h.get("x-death")).and_then(FieldValue::as_array)
    else {
        return Vec::new();
    };
    let text = |t: &FieldTable, key: &str| match t.get(key) {
        Some(FieldValue::LongString(b)) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    };
    entries
        .0
        .iter()
        .filter_map(FieldValue::as_table)
        .map(|t| XDeath {
            queue: text(t, "queue"),
            reason: text(t, "reason"),
            count: t.get("count").and_then(FieldValue::as_i64).and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
            exchange: text(t, "exchange"),
            routing_keys: t
                .get("routing-keys")
                .and_then(FieldValue::as_array)
                .map(|keys| {
                    keys.0
                        .iter()
                        .filter_map(|k| match k {
                            FieldValue::LongString(b) => Some(String::from_utf8_lossy(b).into_owned()),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            time: match t.get("time") {
                Some(FieldValue::Timestamp(s)) => Some(*s),
                _ => None,
            },
        })
        .collect()
}

/// A work queue with a dead-letter exchange, a dead-letter queue and (with a
/// [`RetryPolicy`]) retry queues; see the [module docs](self).
///
/// ```no_run
/// use std::time::Duration;
/// use lepus_patterns::{dead_letter::DeadLetterTopology, retry::RetryPolicy};
///
/// # async fn demo(conn: lepus::Connection) -> Result<(), lepus::Error> {
/// let topology = DeadLetterTopology::new("orders")
///     .dlq_message_ttl(Duration::from_secs(24 * 3600))
///     .dlq_max_length(10_000)
///     .retry_policy(RetryPolicy::exponential(Duration::from_secs(1), 3));
/// let channel = conn.open_channel().await?;
/// topology.declare(&channel).await?;
/// // orders, orders.dlx, orders.dlq, and orders.retry.<ms> for each delay of the policy.
/// for (name, delay) in topology.retry_queues() {
///     println!("{name}: {delay:?}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a topology does nothing until it is declared"]
pub struct DeadLetterTopology {
    queue: String,
    dead_letter_exchange: String,
    dead_letter_queue: String,
    durable: bool,
    work_arguments: QueueArguments,
    dlq_arguments: QueueArguments,
    retry: Option<RetryPolicy>,
    bindings: Vec<(String, String)>,
}

impl DeadLetterTopology {
    /// The topology of the work queue `queue`: dead-letter exchange `<queue>.dlx`,
    /// dead-letter queue `<queue>.dlq`, everything durable, no retries.
    pub fn new(queue: impl Into<String>) -> Self {
        let queue = queue.into();
        DeadLetterTopology {
            dead_letter_exchange: format!("{queue}.dlx"),
            dead_letter_queue: format!("{queue}.dlq"),
            queue,
            durable: true,
            work_arguments: QueueArguments::new(),
            dlq_arguments: QueueArguments::new(),
            retry: None,
            bindings: Vec::new(),
        }
    }

    /// Another name for the dead-letter exchange (a direct exchange; several work queues
    /// may share one). `""` sends dead letters through the default exchange straight to
    /// the dead-letter queue, and declares no exchange.
    pub fn dead_letter_exchange(mut self, name: impl Into<String>) -> Self {
        self.dead_letter_exchange = name.into();
        self
    }

    /// Another name for the dead-letter queue.
    pub fn dead_letter_queue(mut self, name: impl Into<String>) -> Self {
        self.dead_letter_queue = name.into();
        self
    }

    /// Whether the queues and the exchange survive a broker restart (default true; tests
    /// may prefer false).
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Arguments of the work queue (queue type, priorities, ...); the dead-letter
    /// arguments are added on top when declaring.
    pub fn work_queue_arguments(mut self, arguments: QueueArguments) -> Self {
        self.work_arguments = arguments;
        self
    }

    /// `x-message-ttl` of the work queue: messages waiting longer go to the DLQ (reason
    /// `expired`).
    pub fn message_ttl(mut self, ttl: Duration) -> Self {
        self.work_arguments = self.work_arguments.message_ttl(ttl);
        self
    }

    /// `x-max-length` of the work queue: what does not fit goes to the DLQ (reason
    /// `maxlen`, oldest first), or is refused with [`DeadLetterTopology::overflow`].
    pub fn max_length(mut self, messages: u64) -> Self {
        self.work_arguments = self.work_arguments.max_length(messages);
        self
    }

    /// `x-overflow` of the work queue.
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.work_arguments = self.work_arguments.overflow(overflow);
        self
    }

    /// Arguments of the dead-letter queue.
    pub fn dlq_arguments(mut self, arguments: QueueArguments) -> Self {
        self.dlq_arguments = arguments;
        self
    }

    /// `x-message-ttl` of the dead-letter queue (the guides keep dead letters 24 h).
    pub fn dlq_message_ttl(mut self, ttl: Duration) -> Self {
        self.dlq_arguments = self.dlq_arguments.message_ttl(ttl);
        self
    }

    /// `x-max-length` of the dead-letter queue (the oldest dead letters are dropped).
    pub fn dlq_max_length(mut self, messages: u64) -> Self {
        self.dlq_arguments = self.dlq_arguments.max_length(messages);
        self
    }

    /// Retries: one retry queue per delay the policy can choose.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Binds the work queue to `exchange` with `routing_key` when declaring (the exchange
    /// must exist).
    pub fn bind(mut self, exchange: impl Into<String>, routing_key: impl Into<String>) -> Self {
        self.bindings.push((exchange.into(), routing_key.into()));
        self
    }

    /// The work queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The dead-letter exchange (`""`: the default exchange).
    pub fn dead_letter_exchange_name(&self) -> &str {
        &self.dead_letter_exchange
    }

    /// The dead-letter queue.
    pub fn dead_letter_queue_name(&self) -> &str {
        &self.dead_letter_queue
    }

    /// The routing key dead letters are published with to reach the dead-letter queue.
    pub fn dead_letter_routing_key(&self) -> &str {
        if self.dead_letter_exchange.is_empty() { &self.dead_letter_queue } else { &self.queue }
    }

    /// The retry policy, if any.
    pub fn policy(&self) -> Option<&RetryPolicy> {
        self.retry.as_ref()
    }

    /// The retry queue for `delay`: `<queue>.retry.<delay in ms>`.
    pub fn retry_queue_name(&self, delay: Duration) -> String {
        format!("{}.retry.{}", self.queue, delay.as_millis())
    }

    /// Every retry queue with its delay, shortest first.
    pub fn retry_queues(&self) -> Vec<(String, Duration)> {
        self.retry.as_ref().map_or_else(Vec::new, |p| {
            p.delays().into_iter().map(|delay| (self.retry_queue_name(delay), delay)).collect()
        })
    }

    fn queue_options(&self) -> QueueDeclareOptions {
        QueueDeclareOptions { durable: self.durable, ..Default::default() }
    }

    /// Declares the dead-letter exchange and queue, the work queue and the retry queues,
    /// and binds them. Fails on the first refusal (which closes `channel`).
    pub async fn declare(&self, channel: &Channel) -> Result<(), lepus::Error> {
        let options = self.queue_options();
        if !self.dead_letter_exchange.is_empty() {
            let exchange = ExchangeDeclareOptions { durable: self.durable, ..Default::default() };
            channel
                .exchange_declare(&self.dead_letter_exchange, ExchangeKind::Direct, exchange, FieldTable::new())
                .await?;
        }
        channel.queue_declare(&self.dead_letter_queue, options, self.dlq_arguments.clone().build()?).await?;
        if !self.dead_letter_exchange.is_empty() {
            channel
                .queue_bind(&self.dead_letter_queue, &self.dead_letter_exchange, &self.queue, FieldTable::new())
                .await?;
        }
        let work = self
            .work_arguments
            .clone()
            .dead_letter_exchange(&self.dead_letter_exchange)
            .dead_letter_routing_key(self.dead_letter_routing_key())
            .build()?;
        channel.queue_declare(&self.queue, options, work).await?;
        for (name, delay) in self.retry_queues() {
            let arguments = QueueArguments::new()
                .message_ttl(delay)
                .dead_letter_exchange("")
                .dead_letter_routing_key(&self.queue)
                .build()?;
            channel.queue_declare(&name, options, arguments).await?;
        }
        for (exchange, routing_key) in &self.bindings {
            channel.queue_bind(&self.queue, exchange, routing_key, FieldTable::new()).await?;
        }
        Ok(())
    }

    /// Deletes the retry queues, the work queue, the dead-letter queue and exchange, with
    /// whatever messages they hold. Returns how many messages went with them.
    pub async fn delete(&self, channel: &Channel) -> Result<u64, lepus::Error> {
        let mut messages = 0u64;
        let mut queues: Vec<String> = self.retry_queues().into_iter().map(|(name, _)| name).collect();
        queues.push(self.queue.clone());
        queues.push(self.dead_letter_queue.clone());
        for queue in queues {
            messages += u64::from(channel.queue_delete(&queue, QueueDeleteOptions::default()).await?);
        }
        if !self.dead_letter_exchange.is_empty() {
            channel.exchange_delete(&self.dead_letter_exchange, false).await?;
        }
        Ok(messages)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use lepus::{FieldTable, FieldValue, ShortStr, codec::FieldArray};

    use super::*;

    #[test]
    fn names_follow_the_queue() {
        let t = DeadLetterTopology::new("orders");
        assert_eq!(t.queue(), "orders");
        assert_eq!(t.dead_letter_exchange_name(), "orders.dlx");
        assert_eq!(t.dead_letter_queue_name(), "orders.dlq");
        assert_eq!(t.dead_letter_routing_key(), "orders");
        assert!(t.retry_queues().is_empty());
        let direct = DeadLetterTopology::new("orders").dead_letter_exchange("").dead_letter_queue("dead");
        assert_eq!(direct.dead_letter_routing_key(), "dead");
    }

    #[test]
    fn retry_queues_are_named_by_their_delay() {
        let policy = RetryPolicy { jitter_percent: 0, ..RetryPolicy::exponential(Duration::from_millis(50), 3) };
        let t = DeadLetterTopology::new("jobs").retry_policy(policy);
        let names: Vec<String> = t.retry_queues().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["jobs.retry.50", "jobs.retry.100", "jobs.retry.200"]);
    }

    #[test]
    fn x_death_is_read_from_rabbitmqs_table() {
        let s = |v: &str| FieldValue::LongString(Bytes::copy_from_slice(v.as_bytes()));
        let mut entry = FieldTable::new();
        entry.insert("count", FieldValue::I64(2)).unwrap();
        entry.insert("reason", s("expired")).unwrap();
        entry.insert("queue", s("jobs.retry.50")).unwrap();
        entry.insert("time", FieldValue::Timestamp(1_700_000_000)).unwrap();
        entry.insert("exchange", s("")).unwrap();
        entry.insert("routing-keys", FieldValue::Array(FieldArray(vec![s("jobs.retry.50")]))).unwrap();
        let mut headers = FieldTable::new();
        headers.push(
            ShortStr::from_static("x-death").unwrap(),
            FieldValue::Array(FieldArray(vec![FieldValue::Table(entry), FieldValue::I8(1)])),
        );
        headers.insert(headers::RETRIES, FieldValue::I64(2)).unwrap();
        let props = BasicProperties { headers: Some(headers), ..Default::default() };
        let deaths = x_death(&props);
        assert_eq!(deaths.len(), 1, "a non-table entry is skipped");
        assert_eq!(deaths[0].queue, "jobs.retry.50");
        assert_eq!(deaths[0].reason, "expired");
        assert_eq!(deaths[0].count, 2);
        assert_eq!(deaths[0].routing_keys, ["jobs.retry.50"]);
        assert_eq!(deaths[0].time, Some(1_700_000_000));
        assert_eq!(retry_count(&props), 2);
        assert_eq!(retry_count(&BasicProperties::default()), 0);
        assert!(x_death(&BasicProperties::default()).is_empty());
    }

    #[test]
    fn odd_retry_headers_do_not_panic() {
        let mut headers = FieldTable::new();
        headers.insert(headers::RETRIES, FieldValue::I64(-5)).unwrap();
        let props = BasicProperties { headers: Some(headers.clone()), ..Default::default() };
        assert_eq!(retry_count(&props), 0);
        headers.insert(headers::RETRIES, FieldValue::I64(i64::MAX)).unwrap();
        let props = BasicProperties { headers: Some(headers.clone()), ..Default::default() };
        assert_eq!(retry_count(&props), u32::MAX);
        headers.insert(headers::RETRIES, "three").unwrap();
        let props = BasicProperties { headers: Some(headers), ..Default::default() };
        assert_eq!(retry_count(&props), 0);
    }
}
