//! Dead-letter queue tools: count, peek, replay, purge — [`DeadLetterQueue`].
//!
//! Every operation opens a channel of its own and closes it when done, so a refusal (a
//! missing queue: 404) never breaks anything else, and every one is bounded by a timeout
//! ([`DeadLetterQueue::with_timeout`], default 30 s per broker exchange).
//!
//! # Peeking and ordering
//!
//! [`DeadLetterQueue::peek`] takes up to `limit` messages with `basic.get` *without*
//! acknowledging them, then closes its channel: RabbitMQ requeues them. (Rejecting each
//! one with requeue right away would not work: it goes back to the head, and the next get
//! returns it again.) Consequences:
//! - For a classic queue RabbitMQ puts them back at their original positions, so the order
//!   of the queue is unchanged; they are marked `redelivered`.
//! - While the peek runs they are invisible to other consumers of the DLQ, which may
//!   meanwhile get later messages first.
//! - Memory is bounded by `limit`.
//!
//! # Replaying
//!
//! A replayed message goes back to the exchange and routing key it was first published
//! with (`x-lepus-original-exchange`/`-routing-key`, written by [`crate::retry`]; for a
//! message the broker dead-lettered on its own, the oldest `x-death` entry's exchange and
//! first routing key), with `x-lepus-replayed: true` and `x-lepus-replayed-at`, and without
//! the retry count, the error and failure times, and `x-death`/`x-first-death-*` — so its
//! retries start over. It is published mandatory on a confirm-mode channel, and removed
//! from the DLQ only once the broker acked the copy. A message that cannot be replayed (no
//! known origin, unroutable, refused) stays in the DLQ, at its position, like a peeked one.
//! Replayed messages join the back of their work queue.

use std::{future::Future, time::Duration};

use bytes::Bytes;
use lepus::{BasicProperties, Channel, Connection, Delivery, FieldTable, QueueDeclareOptions};

use crate::dead_letter::{DeadLetterTopology, XDeath, header_string, header_timestamp, headers, now_secs, x_death};

/// Broker exchanges the tools wait for, by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A message in a dead-letter queue, with what the headers say about its failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The body.
    pub body: Bytes,
    /// All properties, headers included.
    pub properties: BasicProperties,
    /// The broker delivered it before (e.g. an earlier peek).
    pub redelivered: bool,
    /// The last handler error (`x-lepus-error`).
    pub error: Option<String>,
    /// Retries it had (`x-lepus-retries`; 0 if absent).
    pub retries: u32,
    /// When it first failed (`x-lepus-first-failure`, seconds since the epoch).
    pub first_failure: Option<u64>,
    /// When it last failed (`x-lepus-last-failure`).
    pub last_failure: Option<u64>,
    /// The exchange it was first published to (`x-lepus-original-exchange`).
    pub original_exchange: Option<String>,
    /// The routing key it was first published with (`x-lepus-original-routing-key`).
    pub original_routing_key: Option<String>,
    /// The broker's `x-death` entries, most recent first.
    pub deaths: Vec<XDeath>,
}

impl DeadLetter {
    fn from_delivery(delivery: &Delivery) -> Self {
        let p = &delivery.properties;
        DeadLetter {
            body: delivery.body.clone(),
            properties: p.clone(),
            redelivered: delivery.redelivered,
            error: header_string(p, headers::ERROR),
            retries: crate::dead_letter::retry_count(p),
            first_failure: header_timestamp(p, headers::FIRST_FAILURE),
            last_failure: header_timestamp(p, headers::LAST_FAILURE),
            original_exchange: header_string(p, headers::ORIGINAL_EXCHANGE),
            original_routing_key: header_string(p, headers::ORIGINAL_ROUTING_KEY),
            deaths: x_death(p),
        }
    }

    /// The message id property, if set.
    pub fn message_id(&self) -> Option<&str> {
        self.properties.message_id.as_ref().and_then(|id| id.as_str())
    }

    /// Why it is here: the handler's error, else the broker's latest `x-death` reason
    /// (`rejected`, `expired`, `maxlen`, ...).
    pub fn reason(&self) -> Option<&str> {
        self.error.as_deref().or_else(|| self.deaths.first().map(|d| d.reason.as_str()))
    }

    /// Where a replay sends it: the original exchange and routing key, if known.
    pub fn origin(&self) -> Option<(&str, &str)> {
        if let (Some(exchange), Some(key)) = (&self.original_exchange, &self.original_routing_key) {
            return Some((exchange, key));
        }
        let oldest = self.deaths.last()?;
        Some((&oldest.exchange, oldest.routing_keys.first()?))
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Messages published back, acked by the broker, and removed from the DLQ.
    pub replayed: usize,
    /// Messages the selection left alone (still in the DLQ).
    pub skipped: usize,
    /// Messages that could not be replayed (still in the DLQ).
    pub failed: usize,
    /// Why the last of those failed.
    pub last_error: Option<String>,
}

/// The tools for one dead-letter queue; see the [module docs](self).
///
/// ```no_run
/// use lepus_patterns::dlq::DeadLetterQueue;
///
/// # async fn demo(conn: lepus::Connection) -> Result<(), lepus::Error> {
/// let dlq = DeadLetterQueue::new(&conn, "orders.dlq");
/// println!("{} dead letters", dlq.count().await?);
/// for letter in dlq.peek(10).await? {
///     println!("{:?} after {} retries: {:?}", letter.message_id(), letter.retries, letter.reason());
/// }
/// // After fixing the bug:
/// let report = dlq.replay_all().await?;
/// println!("replayed {}, {} left", report.replayed, report.failed + report.skipped);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DeadLetterQueue {
    conn: Connection,
    queue: String,
    timeout: Duration,
}

impl DeadLetterQueue {
    /// The tools for the queue `queue` on `conn`.
    pub fn new(conn: &Connection, queue: impl Into<String>) -> Self {
        DeadLetterQueue { conn: conn.clone(), queue: queue.into(), timeout: DEFAULT_TIMEOUT }
    }

    /// The tools for a topology's dead-letter queue.
    pub fn for_topology(conn: &Connection, topology: &DeadLetterTopology) -> Self {
        Self::new(conn, topology.dead_letter_queue_name())
    }

    /// Waits at most `timeout` for each exchange with the broker (default 30 s).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The queue's name.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    async fn bounded<T>(
        &self,
        what: &'static str,
        f: impl Future<Output = Result<T, lepus::Error>>,
    ) -> Result<T, lepus::Error> {
        tokio::time::timeout(self.timeout, f).await.map_err(|_| lepus::Error::Timeout(what))?
    }

    async fn channel(&self) -> Result<Channel, lepus::Error> {
        self.bounded("opening a channel", self.conn.open_channel()).await
    }

    async fn close(&self, channel: &Channel) {
        let _ = tokio::time::timeout(self.timeout, channel.close()).await;
    }

    /// Messages ready in the DLQ (not counting ones a consumer or a peek holds).
    pub async fn count(&self) -> Result<u32, lepus::Error> {
        let channel = self.channel().await?;
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let declared = self.bounded("counting", channel.queue_declare(&self.queue, passive, FieldTable::new())).await;
        self.close(&channel).await;
        Ok(declared?.message_count)
    }

    /// Up to `limit` messages from the head of the DLQ, left in it (see the [module
    /// docs](self) on ordering).
    pub async fn peek(&self, limit: usize) -> Result<Vec<DeadLetter>, lepus::Error> {
        let channel = self.channel().await?;
        let mut letters = Vec::new();
        let mut result = Ok(());
        while letters.len() < limit {
            match self.bounded("peeking", channel.basic_get(&self.queue, false)).await {
                Ok(Some((delivery, _))) => letters.push(DeadLetter::from_delivery(&delivery)),
                Ok(None) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // Closing the channel hands every message we hold back to the queue.
        self.close(&channel).await;
        result.map(|()| letters)
    }

    /// Replays the message at the head of the DLQ, if there is one.
    pub async fn replay_one(&self) -> Result<ReplayReport, lepus::Error> {
        self.replay(1, |_| true).await
    }

    /// Replays every message in the DLQ when the call starts (messages that arrive
    /// meanwhile — a replayed one failing again, say — wait for the next call).
    pub async fn replay_all(&self) -> Result<ReplayReport, lepus::Error> {
        let count = self.count().await?;
        self.replay(usize::try_from(count).unwrap_or(usize::MAX), |_| true).await
    }

    /// Looks at up to `limit` messages from the head of the DLQ and replays those `select`
    /// accepts (e.g. one message id); the others stay where they are.
    pub async fn replay(
        &self,
        limit: usize,
        mut select: impl FnMut(&DeadLetter) -> bool,
    ) -> Result<ReplayReport, lepus::Error> {
        let reader = self.channel().await?;
        let mut writer: Option<Channel> = None;
        let mut report = ReplayReport::default();
        let mut result = Ok(());
        for _ in 0..limit {
            let delivery = match self.bounded("reading the DLQ", reader.basic_get(&self.queue, false)).await {
                Ok(Some((delivery, _))) => delivery,
                Ok(None) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let letter = DeadLetter::from_delivery(&delivery);
            if !select(&letter) {
                report.skipped += 1;
                continue;
            }
            match self.replay_letter(&mut writer, &letter).await {
                Ok(()) => {
                    if let Err(e) = delivery.ack().await {
                        // The copy is out but the original stays: it may be replayed twice.
                        result = Err(e);
                        break;
                    }
                    report.replayed += 1;
                }
                Err(why) => {
                    tracing::warn!(queue = %self.queue, error = %why, "dead letter not replayed");
                    report.failed += 1;
                    report.last_error = Some(why);
                }
            }
        }
        if let Some(writer) = &writer {
            self.close(writer).await;
        }
        // Messages left unacknowledged go back to their places in the DLQ.
        self.close(&reader).await;
        result.map(|()| report)
    }

    /// Publishes one dead letter back to its origin on the (re)opened writer channel.
    async fn replay_letter(&self, writer: &mut Option<Channel>, letter: &DeadLetter) -> Result<(), String> {
        let Some((exchange, routing_key)) = letter.origin() else {
            return Err("no original exchange and routing key in its headers".to_owned());
        };
        let open_writer = writer.as_ref().filter(|w| w.is_open()).cloned();
        let channel = if let Some(channel) = open_writer {
            channel
        } else {
            let open = async {
                let channel = self.conn.open_channel().await?;
                channel.confirm_select().await?;
                Ok::<_, lepus::Error>(channel)
            };
            let channel = self.bounded("opening a confirm channel", open).await.map_err(|e| e.to_string())?;
            *writer = Some(channel.clone());
            channel
        };
        let properties = replay_properties(&letter.properties);
        crate::retry::publish_confirmed(&channel, exchange, routing_key, letter.body.clone(), properties, self.timeout)
            .await
    }

    /// Removes every ready message; returns how many.
    pub async fn purge(&self) -> Result<u32, lepus::Error> {
        let channel = self.channel().await?;
        let purged = self.bounded("purging", channel.queue_purge(&self.queue)).await;
        self.close(&channel).await;
        purged
    }
}

/// A dead letter's properties for its replay: marked replayed, failure history removed.
fn replay_properties(properties: &BasicProperties) -> BasicProperties {
    let mut table = properties.headers.clone().unwrap_or_default();
    for key in [
        headers::RETRIES,
        headers::ERROR,
        headers::FIRST_FAILURE,
        headers::LAST_FAILURE,
        headers::QUEUE,
        "x-death",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-first-death-exchange",
    ] {
        while table.remove(key).is_some() {}
    }
    // Static keys, well under 255 bytes: these cannot fail.
    let _ = table.insert(headers::REPLAYED, true);
    let _ = table.insert(headers::REPLAYED_AT, lepus::FieldValue::Timestamp(now_secs()));
    BasicProperties { headers: Some(table), expiration: None, ..properties.clone() }
}

#[cfg(test)]
mod tests {
    use lepus::FieldValue;

    use super::*;

    #[test]
    fn replay_resets_the_history_and_marks_the_message() {
        let mut table = FieldTable::new();
        table.insert(headers::RETRIES, FieldValue::I64(3)).unwrap();
        table.insert(headers::ERROR, "boom").unwrap();
        table.insert(headers::ORIGINAL_EXCHANGE, "").unwrap();
        table.insert("x-death", FieldValue::Array(Default::default())).unwrap();
        table.insert("x-first-death-reason", "expired").unwrap();
        table.insert("app", "kept").unwrap();
        let props =
            BasicProperties { headers: Some(table), message_id: Some("m-1".try_into().unwrap()), ..Default::default() };
        let replayed = replay_properties(&props);
        let h = replayed.headers.as_ref().unwrap();
        assert_eq!(h.get(headers::REPLAYED), Some(&FieldValue::Bool(true)));
        assert!(matches!(h.get(headers::REPLAYED_AT), Some(FieldValue::Timestamp(_))));
        for gone in [headers::RETRIES, headers::ERROR, "x-death", "x-first-death-reason"] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
        assert_eq!(h.get("app").and_then(FieldValue::as_str), Some("kept"));
        assert_eq!(h.get(headers::ORIGINAL_EXCHANGE).and_then(FieldValue::as_str), Some(""));
        assert_eq!(replayed.message_id, props.message_id);
        assert_eq!(crate::dead_letter::retry_count(&replayed), 0);
    }
}
