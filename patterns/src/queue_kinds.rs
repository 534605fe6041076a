//! Typed helpers for three kinds of queue RabbitMQ builds from `queue.declare` arguments:
//! priority queues ([`PriorityQueue`]), queues whose messages expire ([`TtlQueue`]), and
//! queues with a length limit ([`BoundedQueue`]).
//!
//! Each declares a durable queue with the right [`QueueArguments`] on the channel you give
//! it and remembers what it declared, and publishes persistent messages to it through the
//! default exchange. Declaring is idempotent; declaring an existing queue with other
//! arguments is refused by the broker with 406 `PRECONDITION_FAILED`, which closes the
//! channel it was declared on.
//!
//! Publishing returns the [`PublisherConfirm`]: in confirm mode
//! ([`Channel::confirm_select`]) it resolves to the broker's verdict — which is how a
//! publisher learns that a full [`Overflow::RejectPublish`] queue refused its message.

use std::time::Duration;

use bytes::Bytes;
use lepus::{
    BasicProperties, Channel, Error, Overflow, PublishOptions, PublisherConfirm, QueueArguments, QueueDeclareOptions,
    ShortStr,
};

use crate::work_queue::persistent;

const DURABLE: QueueDeclareOptions =
    QueueDeclareOptions { passive: false, durable: true, exclusive: false, auto_delete: false, nowait: false };

async fn declare(
    channel: &Channel,
    name: &str,
    options: QueueDeclareOptions,
    arguments: QueueArguments,
) -> Result<String, Error> {
    Ok(channel.queue_declare(name, options, arguments.build()?).await?.name)
}

async fn publish(
    channel: &Channel,
    queue: &str,
    body: impl Into<Bytes>,
    properties: BasicProperties,
) -> Result<PublisherConfirm, Error> {
    let options = PublishOptions { mandatory: false, properties: persistent(properties) };
    channel.basic_publish("", queue, body, options).await
}

/// A per-message TTL as the `expiration` property wants it: whole milliseconds, in
/// decimal, at most `u32::MAX` (~49.7 days, RabbitMQ's limit for timers). The broker drops
/// (or dead-letters) the message once it is this old and at the head of its queue.
///
/// ```
/// use std::time::Duration;
/// let e = lepus_patterns::queue_kinds::expiration(Duration::from_millis(1500));
/// assert_eq!(e.as_str(), Some("1500"));
/// ```
pub fn expiration(ttl: Duration) -> ShortStr {
    // At most 10 digits: always a valid short string.
    ShortStr::try_from(ttl.as_millis().min(u128::from(u32::MAX)).to_string()).unwrap_or_default()
}

/// A priority queue (`x-max-priority`): a message with a higher priority is delivered
/// before the lower-priority ones already waiting.
///
/// Priorities run from 0 (the default for a message without one) to the queue's maximum;
/// [`PriorityQueue::publish`] caps a higher one at the maximum, as the broker would.
/// RabbitMQ recommends a maximum of 10 at most: each level costs memory and CPU. Only
/// messages that wait are reordered: a consumer with a large prefetch takes them as they
/// come.
///
/// ```no_run
/// use lepus::Connection;
/// use lepus_patterns::queue_kinds::PriorityQueue;
///
/// # async fn demo() -> Result<(), lepus::Error> {
/// let conn = Connection::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
/// let channel = conn.open_channel().await?;
/// channel.confirm_select().await?;
/// let tasks = PriorityQueue::declare(&channel, "priority_tasks", 10).await?;
/// tasks.publish(&channel, &b"cleanup_logs"[..], 1).await?.await?;
/// tasks.publish(&channel, &b"urgent_alert"[..], 10).await?.await?; // delivered first
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityQueue {
    name: String,
    max_priority: u8,
}

impl PriorityQueue {
    /// Declares the durable priority queue `name` with priorities 0..=`max_priority`
    /// (at least 1).
    pub async fn declare(channel: &Channel, name: &str, max_priority: u8) -> Result<PriorityQueue, Error> {
        Self::declare_with(channel, name, max_priority, DURABLE, QueueArguments::new()).await
    }

    /// Declares with explicit flags and more arguments (`x-max-priority` is set here).
    pub async fn declare_with(
        channel: &Channel,
        name: &str,
        max_priority: u8,
        options: QueueDeclareOptions,
        arguments: QueueArguments,
    ) -> Result<PriorityQueue, Error> {
        if max_priority == 0 {
            return Err(Error::InvalidOperation("a priority queue's maximum priority must be at least 1"));
        }
        let name = declare(channel, name, options, arguments.max_priority(max_priority)).await?;
        Ok(PriorityQueue { name, max_priority })
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The highest priority.
    pub fn max_priority(&self) -> u8 {
        self.max_priority
    }

    /// Publishes a persistent message with `priority` (capped at the maximum).
    pub async fn publish(
        &self,
        channel: &Channel,
        body: impl Into<Bytes>,
        priority: u8,
    ) -> Result<PublisherConfirm, Error> {
        self.publish_with(channel, body, BasicProperties::default(), priority).await
    }

    /// Publishes with other properties too (persistent unless `delivery_mode` is set).
    pub async fn publish_with(
        &self,
        channel: &Channel,
        body: impl Into<Bytes>,
        properties: BasicProperties,
        priority: u8,
    ) -> Result<PublisherConfirm, Error> {
        let properties = BasicProperties { priority: Some(priority.min(self.max_priority)), ..properties };
        publish(channel, &self.name, body, properties).await
    }
}

/// A queue whose messages expire (`x-message-ttl`): a message that waited longer than the
/// TTL is dropped, or dead-lettered if the queue has a dead-letter exchange (set one with
/// [`TtlQueue::declare_with`]'s arguments). A message's own, shorter `expiration`
/// ([`TtlQueue::publish_expiring`]) wins over the queue's.
///
/// ```no_run
/// use std::time::Duration;
/// use lepus_patterns::queue_kinds::TtlQueue;
///
/// # async fn demo(channel: lepus::Channel) -> Result<(), lepus::Error> {
/// let quotes = TtlQueue::declare(&channel, "price-quotes", Duration::from_secs(30)).await?;
/// quotes.publish(&channel, &b"EURUSD 1.0842"[..]).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TtlQueue {
    name: String,
    ttl: Duration,
}

impl TtlQueue {
    /// Declares the durable queue `name` whose messages expire after `ttl` (whole
    /// milliseconds, at most `u32::MAX` ms; zero: deliver at once to a waiting consumer or
    /// drop).
    pub async fn declare(channel: &Channel, name: &str, ttl: Duration) -> Result<TtlQueue, Error> {
        Self::declare_with(channel, name, ttl, DURABLE, QueueArguments::new()).await
    }

    /// Declares with explicit flags and more arguments (`x-message-ttl` is set here).
    pub async fn declare_with(
        channel: &Channel,
        name: &str,
        ttl: Duration,
        options: QueueDeclareOptions,
        arguments: QueueArguments,
    ) -> Result<TtlQueue, Error> {
        let name = declare(channel, name, options, arguments.message_ttl(ttl)).await?;
        Ok(TtlQueue { name, ttl })
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue's message TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Publishes a persistent message; it expires after the queue's TTL.
    pub async fn publish(&self, channel: &Channel, body: impl Into<Bytes>) -> Result<PublisherConfirm, Error> {
        publish(channel, &self.name, body, BasicProperties::default()).await
    }

    /// Publishes a persistent message that expires after `ttl` or the queue's TTL,
    /// whichever is shorter.
    pub async fn publish_expiring(
        &self,
        channel: &Channel,
        body: impl Into<Bytes>,
        ttl: Duration,
    ) -> Result<PublisherConfirm, Error> {
        let properties = BasicProperties { expiration: Some(expiration(ttl)), ..Default::default() };
        publish(channel, &self.name, body, properties).await
    }
}

/// The limits of a [`BoundedQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// At most this many ready messages (`x-max-length`).
    pub max_length: Option<u64>,
    /// At most this many bytes of ready message bodies (`x-max-length-bytes`).
    pub max_length_bytes: Option<u64>,
    /// What one more message does to a full queue (`x-overflow`).
    pub overflow: Overflow,
}

impl Bounds {
    /// At most `max_length` messages; `overflow` decides what one more does.
    pub fn messages(max_length: u64, overflow: Overflow) -> Bounds {
        Bounds { max_length: Some(max_length), max_length_bytes: None, overflow }
    }
}

/// A queue with a length limit and an overflow behaviour:
///
/// - [`Overflow::DropHead`] (RabbitMQ's default): the oldest message makes room (it is
///   dropped, or dead-lettered if the queue has a dead-letter exchange) — a queue of the
///   latest N;
/// - [`Overflow::RejectPublish`]: the new message is refused; in confirm mode its publisher
///   gets [`lepus::Confirmation::Nack`] — backpressure;
/// - [`Overflow::RejectPublishDlx`]: refused and dead-lettered.
///
/// Only ready messages count: delivered but unacknowledged ones do not.
///
/// ```no_run
/// use lepus::{Confirmation, Overflow};
/// use lepus_patterns::queue_kinds::{BoundedQueue, Bounds};
///
/// # async fn demo(channel: lepus::Channel) -> Result<(), lepus::Error> {
/// channel.confirm_select().await?;
/// let inbox = BoundedQueue::declare(&channel, "inbox", Bounds::messages(1000, Overflow::RejectPublish)).await?;
/// if inbox.publish(&channel, &b"hi"[..]).await?.await? == Confirmation::Nack {
///     println!("inbox full, try later");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundedQueue {
    name: String,
    bounds: Bounds,
}

impl BoundedQueue {
    /// Declares the durable queue `name` with these bounds.
    pub async fn declare(channel: &Channel, name: &str, bounds: Bounds) -> Result<BoundedQueue, Error> {
        Self::declare_with(channel, name, bounds, DURABLE, QueueArguments::new()).await
    }

    /// Declares with explicit flags and more arguments (the length arguments are set here).
    pub async fn declare_with(
        channel: &Channel,
        name: &str,
        bounds: Bounds,
        options: QueueDeclareOptions,
        arguments: QueueArguments,
    ) -> Result<BoundedQueue, Error> {
        if bounds.max_length.is_none() && bounds.max_length_bytes.is_none() {
            return Err(Error::InvalidOperation("a bounded queue needs a maximum length or a maximum size"));
        }
        let mut arguments = arguments.overflow(bounds.overflow);
        if let Some(n) = bounds.max_length {
            arguments = arguments.max_length(n);
        }
        if let Some(n) = bounds.max_length_bytes {
            arguments = arguments.max_length_bytes(n);
        }
        let name = declare(channel, name, options, arguments).await?;
        Ok(BoundedQueue { name, bounds })
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue's bounds.
    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// Publishes a persistent message.
    pub async fn publish(&self, channel: &Channel, body: impl Into<Bytes>) -> Result<PublisherConfirm, Error> {
        publish(channel, &self.name, body, BasicProperties::default()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiration_is_whole_milliseconds() {
        assert_eq!(expiration(Duration::ZERO).as_str(), Some("0"));
        assert_eq!(expiration(Duration::from_micros(2_999)).as_str(), Some("2"));
        assert_eq!(expiration(Duration::MAX).as_str(), Some("4294967295"));
    }
}
