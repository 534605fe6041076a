//! `QueueArguments`: the `x-` arguments of `queue.declare`, typed.
//!
//! RabbitMQ reads a handful of optional arguments at `queue.declare` (TTLs, length limits,
//! dead-lettering, priorities, the queue type, ...). Written by hand they are easy to get
//! subtly wrong: a TTL sent as a string, a length limit as a float, `"drop_head"` for
//! `"drop-head"` — and the broker answers with a 406 that closes the channel.
//! [`QueueArguments`] spells each one with the key and the wire type RabbitMQ expects:
//! integers as signed 64-bit (`l`, what RabbitMQ's own clients send), names as long strings,
//! flags as booleans.
//!
//! Quorum queues and streams have their own: a delivery limit and at-least-once
//! dead-lettering for quorum queues, retention by age and segment size for streams.

use std::time::Duration;

use lepus_codec::{FieldTable, FieldValue, ShortStr};

use crate::{Error, StreamInterval};

/// The largest TTL or expiry RabbitMQ accepts, in milliseconds (its timers are 32-bit).
const MAX_TIMER_MS: u128 = u32::MAX as u128;

/// What a full queue does with one more message (`x-overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest message to make room — RabbitMQ's default.
    DropHead,
    /// Refuse the new message; in confirm mode its publisher gets a nack.
    RejectPublish,
    /// Refuse the new message and dead-letter it (classic queues only).
    RejectPublishDlx,
}

impl Overflow {
    /// The value on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::DropHead => "drop-head",
            Overflow::RejectPublish => "reject-publish",
            Overflow::RejectPublishDlx => "reject-publish-dlx",
        }
    }
}

/// The kind of queue (`x-queue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueType {
    /// A classic queue, RabbitMQ's default.
    Classic,
    /// A replicated Raft-based queue; must be durable, not exclusive, not auto-delete.
    Quorum,
    /// An append-only log read with offsets; must be durable.
    Stream,
}

impl QueueType {
    /// The value on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
            QueueType::Stream => "stream",
        }
    }
}

/// How a quorum queue dead-letters (`x-dead-letter-strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterStrategy {
    /// Republish to the dead-letter exchange without confirms: a dead letter may be lost
    /// (target queue down or full, nothing bound). RabbitMQ's default.
    AtMostOnce,
    /// Keep each dead letter in the source queue until a target queue has confirmed it
    /// (RabbitMQ 3.10+, quorum queues). RabbitMQ applies it only together with
    /// [`Overflow::RejectPublish`] and a dead-letter exchange: with `drop-head` overflow it
    /// falls back to at-most-once, without an exchange it drops dead letters, each time with
    /// only a warning in its log. [`QueueArguments::build`] refuses both combinations.
    AtLeastOnce,
}

impl DeadLetterStrategy {
    /// The value on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterStrategy::AtMostOnce => "at-most-once",
            DeadLetterStrategy::AtLeastOnce => "at-least-once",
        }
    }
}

/// A typed builder for the arguments table of `queue.declare`.
///
/// Each setter replaces an earlier value of the same argument; [`QueueArguments::raw`]
/// sets any other key. [`QueueArguments::build`] checks what can be checked here (a TTL or
/// expiry beyond RabbitMQ's 32-bit timers, an expiry of zero, a key over 255 bytes) and
/// returns the table; `FieldTable::from` skips those checks and lets the broker judge
/// (a bad value then closes the channel with 406 `PRECONDITION_FAILED`). `build` also refuses
/// [`DeadLetterStrategy::AtLeastOnce`] without `x-overflow: reject-publish` and a
/// dead-letter exchange, which RabbitMQ would accept and quietly not honour (when a policy
/// supplies those, use `FieldTable::from`).
///
/// Each queue type accepts its own arguments: RabbitMQ refuses one it knows but the queue
/// type does not support with 406, naming it in the reply text (e.g. `x-delivery-limit` or
/// `x-dead-letter-strategy` on a classic queue, `x-max-age` on a quorum queue). Arguments a
/// broker has never heard of are ignored instead (3.10 ignores
/// [`QueueArguments::stream_filter_size_bytes`], new in 3.13).
///
/// ```
/// use std::time::Duration;
/// use lepus::{FieldValue, Overflow, QueueArguments, QueueType};
///
/// let args = QueueArguments::new()
///     .queue_type(QueueType::Quorum)
///     .message_ttl(Duration::from_secs(60))
///     .max_length(10_000)
///     .overflow(Overflow::RejectPublish)
///     .dead_letter_exchange("orders.dead")
///     .build()?;
/// assert_eq!(args.get("x-message-ttl"), Some(&FieldValue::I64(60_000)));
/// assert_eq!(args.get("x-queue-type").and_then(FieldValue::as_str), Some("quorum"));
/// // channel.queue_declare("orders", QueueDeclareOptions { durable: true, ..Default::default() }, args)
/// # Ok::<(), lepus::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "a builder does nothing until it is built into a table"]
pub struct QueueArguments {
    table: FieldTable,
    /// Values RabbitMQ would refuse, by key, in the order they were set; setting a key
    /// again forgets its problem.
    problems: Vec<(String, Problem)>,
}

/// A value `build` refuses ([`Error`] carries static text or an encode error).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Problem {
    Invalid(&'static str),
    KeyTooLong(usize),
}

impl QueueArguments {
    /// No arguments.
    pub fn new() -> Self {
        QueueArguments::default()
    }

    /// Sets `key`, replacing an earlier value and forgetting an earlier problem of it.
    fn set(self, key: &'static str, value: FieldValue) -> Self {
        self.set_checked(key, value, None)
    }

    fn set_checked(mut self, key: &'static str, value: FieldValue, problem: Option<&'static str>) -> Self {
        self.problems.retain(|(k, _)| k != key);
        if let Some(problem) = problem {
            self.problems.push((key.to_owned(), Problem::Invalid(problem)));
        }
        // Every key set this way is a short literal.
        if let Ok(key) = ShortStr::from_static(key) {
            self.upsert(key, value);
        }
        self
    }

    fn upsert(&mut self, key: ShortStr, value: FieldValue) {
        // Replace in place, keeping the order the arguments were first set in.
        let mut value = Some(value);
        let mut table: FieldTable = std::mem::take(&mut self.table)
            .into_iter()
            .map(|(k, v)| if k == key { (k, value.take().unwrap_or(v)) } else { (k, v) })
            .collect();
        if let Some(value) = value {
            table.push(key, value);
        }
        self.table = table;
    }

    /// Milliseconds as the signed 64-bit integer RabbitMQ reads (saturating; `build`
    /// refuses what RabbitMQ would).
    fn millis(d: Duration) -> FieldValue {
        FieldValue::I64(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    fn count(n: u64) -> FieldValue {
        // Beyond i64::MAX nothing changes in practice: no queue holds 2^63 messages or bytes.
        FieldValue::I64(i64::try_from(n).unwrap_or(i64::MAX))
    }

    /// `x-message-ttl`: messages older than this are dropped or dead-lettered. Whole
    /// milliseconds (sub-millisecond parts are cut); at most `u32::MAX` ms (~49.7 days).
    pub fn message_ttl(self, ttl: Duration) -> Self {
        let problem = (ttl.as_millis() > MAX_TIMER_MS).then_some("x-message-ttl above u32::MAX milliseconds");
        self.set_checked("x-message-ttl", Self::millis(ttl), problem)
    }

    /// `x-expires`: the queue is deleted after being unused (no consumers, no `basic.get`,
    /// no redeclare) this long. At least 1 ms, at most `u32::MAX` ms.
    pub fn expires(self, after: Duration) -> Self {
        let problem = match after.as_millis() {
            0 => Some("x-expires must be at least 1 millisecond"),
            ms if ms > MAX_TIMER_MS => Some("x-expires above u32::MAX milliseconds"),
            _ => None,
        };
        self.set_checked("x-expires", Self::millis(after), problem)
    }

    /// `x-max-length`: at most this many ready messages; see [`QueueArguments::overflow`]
    /// for what happens to one more.
    pub fn max_length(self, messages: u64) -> Self {
        self.set("x-max-length", Self::count(messages))
    }

    /// `x-max-length-bytes`: at most this many bytes of ready message bodies.
    pub fn max_length_bytes(self, bytes: u64) -> Self {
        self.set("x-max-length-bytes", Self::count(bytes))
    }

    /// `x-overflow`: what a queue at its length limit does with one more message.
    pub fn overflow(self, overflow: Overflow) -> Self {
        self.set("x-overflow", overflow.as_str().into())
    }

    /// `x-dead-letter-exchange`: where rejected, expired and dropped messages go (`""` is
    /// the default exchange).
    pub fn dead_letter_exchange(self, exchange: &str) -> Self {
        self.set("x-dead-letter-exchange", exchange.into())
    }

    /// `x-dead-letter-routing-key`: the routing key dead-lettered messages get instead of
    /// their own.
    pub fn dead_letter_routing_key(self, routing_key: &str) -> Self {
        self.set("x-dead-letter-routing-key", routing_key.into())
    }

    /// `x-max-priority`: turns a classic queue into a priority queue with priorities
    /// 0..=`max` (RabbitMQ recommends at most 10).
    pub fn max_priority(self, max: u8) -> Self {
        self.set("x-max-priority", FieldValue::I64(i64::from(max)))
    }

    /// `x-queue-type`: classic, quorum or stream.
    pub fn queue_type(self, kind: QueueType) -> Self {
        self.set("x-queue-type", kind.as_str().into())
    }

    /// `x-single-active-consumer`: only one consumer at a time receives messages; the next
    /// takes over when it goes.
    pub fn single_active_consumer(self, on: bool) -> Self {
        self.set("x-single-active-consumer", FieldValue::Bool(on))
    }

    /// `x-delivery-limit` (quorum queues): a message returned more than `limit` times (nacked
    /// or rejected with requeue, or left unacknowledged by a closing channel) is
    /// dead-lettered, or dropped without a dead-letter exchange, instead of being delivered
    /// again; with a limit of 2 a message is delivered at most 3 times. See
    /// [`Delivery::delivery_count`](crate::Delivery::delivery_count). RabbitMQ 4.0+ sets 20
    /// when none is given.
    pub fn delivery_limit(self, limit: u32) -> Self {
        self.set("x-delivery-limit", FieldValue::I64(i64::from(limit)))
    }

    /// `x-dead-letter-strategy` (quorum queues): at-most-once (the default) or
    /// at-least-once dead-lettering; see [`DeadLetterStrategy::AtLeastOnce`] for what else
    /// the latter needs.
    pub fn dead_letter_strategy(self, strategy: DeadLetterStrategy) -> Self {
        self.set("x-dead-letter-strategy", strategy.as_str().into())
    }

    /// `x-max-age` (streams): segments whose messages are all older than this are deleted,
    /// e.g. `"7D".parse()?`. Retention works per segment, so messages can outlive it until
    /// their segment is full.
    pub fn max_age(self, age: StreamInterval) -> Self {
        self.set("x-max-age", age.to_string().into())
    }

    /// `x-stream-max-segment-size-bytes` (streams): the size of the files a stream is kept
    /// in (RabbitMQ's default is 500 MB); retention deletes whole segments.
    pub fn stream_max_segment_size_bytes(self, bytes: u64) -> Self {
        self.set("x-stream-max-segment-size-bytes", Self::count(bytes))
    }

    /// `x-stream-filter-size-bytes` (streams, RabbitMQ 3.13+): the size of each chunk's
    /// Bloom filter for [`stream filtering`](crate::ConsumeOptions::stream_filter), 16 to
    /// 255 (RabbitMQ's default is 16); `build` refuses smaller sizes. Brokers before 3.13
    /// do not know the argument and ignore it, like any `x-` argument they have never
    /// heard of.
    pub fn stream_filter_size_bytes(self, bytes: u8) -> Self {
        let problem = (bytes < 16).then_some("x-stream-filter-size-bytes below 16");
        self.set_checked("x-stream-filter-size-bytes", FieldValue::I64(i64::from(bytes)), problem)
    }

    /// Any other argument, e.g. `("x-queue-mode", "lazy")` or a plugin's; replaces a typed
    /// setter's value for the same key. A key over 255 bytes cannot be sent: `build`
    /// reports it and `FieldTable::from` leaves it out.
    pub fn raw(mut self, key: &str, value: impl Into<FieldValue>) -> Self {
        self.problems.retain(|(k, _)| k != key);
        match ShortStr::try_from(key) {
            Ok(short) => self.upsert(short, value.into()),
            Err(_) => self.problems.push((key.to_owned(), Problem::KeyTooLong(key.len()))),
        }
        self
    }

    /// The arguments table, or the first value RabbitMQ would refuse (or quietly not
    /// honour: see [`DeadLetterStrategy::AtLeastOnce`]).
    pub fn build(self) -> Result<FieldTable, Error> {
        match self.problems.into_iter().next() {
            None => {
                at_least_once_is_complete(&self.table)?;
                Ok(self.table)
            }
            Some((_, Problem::Invalid(what))) => Err(Error::InvalidOperation(what)),
            Some((_, Problem::KeyTooLong(len))) => {
                Err(Error::Encode(lepus_codec::EncodeError::ShortStringTooLong { len }))
            }
        }
    }
}

/// At-least-once dead-lettering without `reject-publish` (run as at-most-once) or without a
/// dead-letter exchange (dead letters dropped) is accepted by RabbitMQ with only a warning in
/// its log.
fn at_least_once_is_complete(table: &FieldTable) -> Result<(), Error> {
    let text = |key| table.get(key).and_then(FieldValue::as_str);
    if text("x-dead-letter-strategy") != Some(DeadLetterStrategy::AtLeastOnce.as_str()) {
        return Ok(());
    }
    if text("x-overflow") != Some(Overflow::RejectPublish.as_str()) {
        return Err(Error::InvalidOperation(
            "x-dead-letter-strategy at-least-once needs x-overflow reject-publish (RabbitMQ falls back to at-most-once)",
        ));
    }
    if table.get("x-dead-letter-exchange").is_none() {
        return Err(Error::InvalidOperation(
            "x-dead-letter-strategy at-least-once needs an x-dead-letter-exchange (RabbitMQ drops dead letters without one)",
        ));
    }
    Ok(())
}

impl From<QueueArguments> for FieldTable {
    /// The table without `build`'s checks; see [`QueueArguments`].
    fn from(args: QueueArguments) -> FieldTable {
        args.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(t: &FieldTable) -> Vec<(String, FieldValue)> {
        t.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn empty_builds_an_empty_table() {
        assert!(QueueArguments::new().build().unwrap().is_empty());
        assert!(FieldTable::from(QueueArguments::default()).is_empty());
    }

    #[test]
    fn every_setter_writes_its_key_with_rabbitmqs_type() {
        let t = QueueArguments::new()
            .message_ttl(Duration::from_millis(1500))
            .expires(Duration::from_secs(30))
            .max_length(100)
            .max_length_bytes(1 << 20)
            .overflow(Overflow::RejectPublishDlx)
            .dead_letter_exchange("dlx")
            .dead_letter_routing_key("dead.key")
            .max_priority(10)
            .queue_type(QueueType::Classic)
            .single_active_consumer(true)
            .raw("x-queue-mode", "lazy")
            .build()
            .unwrap();
        let s = |v: &str| FieldValue::LongString(bytes::Bytes::copy_from_slice(v.as_bytes()));
        assert_eq!(
            entries(&t),
            vec![
                ("x-message-ttl".to_owned(), FieldValue::I64(1500)),
                ("x-expires".to_owned(), FieldValue::I64(30_000)),
                ("x-max-length".to_owned(), FieldValue::I64(100)),
                ("x-max-length-bytes".to_owned(), FieldValue::I64(1 << 20)),
                ("x-overflow".to_owned(), s("reject-publish-dlx")),
                ("x-dead-letter-exchange".to_owned(), s("dlx")),
                ("x-dead-letter-routing-key".to_owned(), s("dead.key")),
                ("x-max-priority".to_owned(), FieldValue::I64(10)),
                ("x-queue-type".to_owned(), s("classic")),
                ("x-single-active-consumer".to_owned(), FieldValue::Bool(true)),
                ("x-queue-mode".to_owned(), s("lazy")),
            ]
        );
        // Integers go out as `l`, the signed 64-bit type RabbitMQ's own clients use.
        assert_eq!(t.get("x-message-ttl").map(FieldValue::type_letter), Some(b'l'));
    }

    #[test]
    fn enum_values_are_rabbitmqs_spelling() {
        let overflow = |o| QueueArguments::new().overflow(o).build().unwrap();
        assert_eq!(overflow(Overflow::DropHead).get("x-overflow").and_then(FieldValue::as_str), Some("drop-head"));
        assert_eq!(
            overflow(Overflow::RejectPublish).get("x-overflow").and_then(FieldValue::as_str),
            Some("reject-publish")
        );
        let kind = |k| QueueArguments::new().queue_type(k).build().unwrap();
        assert_eq!(kind(QueueType::Quorum).get("x-queue-type").and_then(FieldValue::as_str), Some("quorum"));
        assert_eq!(kind(QueueType::Stream).get("x-queue-type").and_then(FieldValue::as_str), Some("stream"));
        let sac = QueueArguments::new().single_active_consumer(false).build().unwrap();
        assert_eq!(sac.get("x-single-active-consumer"), Some(&FieldValue::Bool(false)));
    }

    #[test]
    fn setting_again_replaces_in_place_of_duplicating() {
        let t = QueueArguments::new()
            .max_length(1)
            .max_priority(3)
            .max_length(2)
            .raw("x-max-priority", FieldValue::I32(5))
            .build()
            .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.get("x-max-length"), Some(&FieldValue::I64(2)));
        assert_eq!(t.get("x-max-priority"), Some(&FieldValue::I32(5)), "raw overrides the typed value");
    }

    #[test]
    fn durations_are_whole_milliseconds() {
        let t = QueueArguments::new().message_ttl(Duration::from_micros(2_999)).build().unwrap();
        assert_eq!(t.get("x-message-ttl"), Some(&FieldValue::I64(2)));
        let t = QueueArguments::new().message_ttl(Duration::ZERO).build().unwrap();
        assert_eq!(t.get("x-message-ttl"), Some(&FieldValue::I64(0)), "a TTL of 0 is valid: deliver now or drop");
        let max = Duration::from_millis(u64::from(u32::MAX));
        let t = QueueArguments::new().message_ttl(max).expires(max).build().unwrap();
        assert_eq!(t.get("x-expires"), Some(&FieldValue::I64(i64::from(u32::MAX))));
    }

    #[test]
    fn build_refuses_what_rabbitmq_refuses() {
        let over = Duration::from_millis(u64::from(u32::MAX) + 1);
        for args in [
            QueueArguments::new().message_ttl(over),
            QueueArguments::new().expires(over),
            QueueArguments::new().expires(Duration::from_micros(999)),
        ] {
            let err = args.clone().build().unwrap_err();
            assert!(matches!(err, Error::InvalidOperation(_)), "{err}");
            // Unchecked, the value still goes out for the broker to judge.
            assert_eq!(FieldTable::from(args).len(), 1);
        }
        let err = QueueArguments::new().raw(&"k".repeat(256), 1u8).build().unwrap_err();
        assert!(matches!(err, Error::Encode(lepus_codec::EncodeError::ShortStringTooLong { len: 256 })), "{err}");
    }

    #[test]
    fn the_first_problem_is_reported_and_setting_the_key_again_clears_it() {
        let err = QueueArguments::new()
            .expires(Duration::ZERO)
            .message_ttl(Duration::from_secs(u64::MAX))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("x-expires must be at least"), "{err}");
        let fixed = QueueArguments::new()
            .expires(Duration::ZERO)
            .message_ttl(Duration::from_secs(u64::MAX))
            .expires(Duration::from_secs(1))
            .message_ttl(Duration::from_secs(1))
            .build()
            .unwrap();
        assert_eq!(fixed.get("x-expires"), Some(&FieldValue::I64(1000)));
        let long = "k".repeat(300);
        let fixed = QueueArguments::new().raw(&long, 1u8).raw(&long, 2u8);
        assert!(fixed.build().is_err(), "a key over 255 bytes stays unsendable");
        let err = QueueArguments::new().max_length(1).expires(Duration::ZERO).raw("x-expires", 5i64).build();
        assert_eq!(err.unwrap().get("x-expires"), Some(&FieldValue::I64(5)), "raw replaces the refused value");
    }

    #[test]
    fn quorum_and_stream_setters_write_rabbitmqs_keys_and_types() {
        let t = QueueArguments::new()
            .queue_type(QueueType::Quorum)
            .delivery_limit(3)
            .overflow(Overflow::RejectPublish)
            .dead_letter_exchange("dlx")
            .dead_letter_strategy(DeadLetterStrategy::AtLeastOnce)
            .build()
            .unwrap();
        let s = |v: &str| FieldValue::LongString(bytes::Bytes::copy_from_slice(v.as_bytes()));
        assert_eq!(t.get("x-delivery-limit"), Some(&FieldValue::I64(3)));
        assert_eq!(t.get("x-delivery-limit").map(FieldValue::type_letter), Some(b'l'));
        assert_eq!(t.get("x-dead-letter-strategy"), Some(&s("at-least-once")));
        let most = QueueArguments::new().dead_letter_strategy(DeadLetterStrategy::AtMostOnce).build().unwrap();
        assert_eq!(most.get("x-dead-letter-strategy"), Some(&s("at-most-once")));
        let max = QueueArguments::new().delivery_limit(u32::MAX).build().unwrap();
        assert_eq!(max.get("x-delivery-limit"), Some(&FieldValue::I64(i64::from(u32::MAX))));

        let week: StreamInterval = "7D".parse().unwrap();
        let t = QueueArguments::new()
            .queue_type(QueueType::Stream)
            .max_age(week)
            .stream_max_segment_size_bytes(1 << 20)
            .stream_filter_size_bytes(32)
            .build()
            .unwrap();
        assert_eq!(
            entries(&t),
            vec![
                ("x-queue-type".to_owned(), s("stream")),
                ("x-max-age".to_owned(), s("7D")),
                ("x-stream-max-segment-size-bytes".to_owned(), FieldValue::I64(1 << 20)),
                ("x-stream-filter-size-bytes".to_owned(), FieldValue::I64(32)),
            ]
        );
    }

    #[test]
    fn filter_sizes_below_16_are_refused() {
        for ok in [16, 255] {
            assert!(QueueArguments::new().stream_filter_size_bytes(ok).build().is_ok(), "{ok}");
        }
        let err = QueueArguments::new().stream_filter_size_bytes(15).build().unwrap_err();
        assert!(matches!(err, Error::InvalidOperation(_)) && err.to_string().contains("below 16"), "{err}");
        let fixed = QueueArguments::new().stream_filter_size_bytes(0).stream_filter_size_bytes(16);
        assert!(fixed.build().is_ok());
    }

    #[test]
    fn at_least_once_without_reject_publish_or_a_dlx_is_refused() {
        let at_least_once = || QueueArguments::new().dead_letter_strategy(DeadLetterStrategy::AtLeastOnce);
        let cases = [
            (at_least_once().dead_letter_exchange("dlx"), "reject-publish"),
            (at_least_once().dead_letter_exchange("dlx").overflow(Overflow::DropHead), "reject-publish"),
            (at_least_once().dead_letter_exchange("dlx").overflow(Overflow::RejectPublishDlx), "reject-publish"),
            (at_least_once().overflow(Overflow::RejectPublish), "x-dead-letter-exchange"),
        ];
        for (args, needs) in cases {
            let err = args.clone().build().unwrap_err();
            assert!(matches!(err, Error::InvalidOperation(_)), "{err}");
            assert!(err.to_string().contains(needs), "{err}");
            // Unchecked (e.g. a policy supplies the rest), it goes out as set.
            assert!(FieldTable::from(args).get("x-dead-letter-strategy").is_some());
        }
        // The default exchange is an exchange too; raw values count like typed ones.
        let ok = at_least_once().overflow(Overflow::RejectPublish).dead_letter_exchange("").build();
        assert!(ok.is_ok(), "{ok:?}");
        let raw = QueueArguments::new()
            .raw("x-dead-letter-strategy", "at-least-once")
            .raw("x-overflow", "reject-publish")
            .raw("x-dead-letter-exchange", "dlx")
            .build();
        assert!(raw.is_ok(), "{raw:?}");
        assert!(QueueArguments::new().raw("x-dead-letter-strategy", "at-least-once").build().is_err());
        // At-most-once needs neither.
        assert!(QueueArguments::new().dead_letter_strategy(DeadLetterStrategy::AtMostOnce).build().is_ok());
    }

    #[test]
    fn huge_counts_saturate() {
        let t: FieldTable = QueueArguments::new().max_length(u64::MAX).max_length_bytes(u64::MAX).into();
        assert_eq!(t.get("x-max-length"), Some(&FieldValue::I64(i64::MAX)));
        assert_eq!(t.get("x-max-length-bytes"), Some(&FieldValue::I64(i64::MAX)));
    }
}
