//! Options and results of channel operations.

use bytes::Bytes;
use lepus_codec::{BasicProperties, FieldArray, FieldTable, FieldValue};

use crate::StreamOffset;

/// An exchange type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routes on an exact routing-key match.
    Direct,
    /// Routes to every bound queue.
    Fanout,
    /// Routes on `*`/`#` patterns.
    Topic,
    /// Routes on header values (`x-match` all/any).
    Headers,
    /// A plugin's type, e.g. `x-consistent-hash`.
    Custom(String),
}

impl ExchangeKind {
    /// The type's name on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
            ExchangeKind::Custom(s) => s,
        }
    }
}

/// `exchange.declare` flags.
// These are the protocol's own bit fields.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExchangeDeclareOptions {
    /// Only check that it exists (404 closes the channel if not).
    pub passive: bool,
    /// Survive a broker restart.
    pub durable: bool,
    /// Delete when the last binding goes.
    pub auto_delete: bool,
    /// Only reachable through exchange-to-exchange bindings.
    pub internal: bool,
    /// Do not wait for declare-ok.
    pub nowait: bool,
}

/// `queue.declare` flags.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDeclareOptions {
    /// Only check that it exists and read its counts (404 closes the channel if not).
    pub passive: bool,
    /// Survive a broker restart.
    pub durable: bool,
    /// Only this connection may use it; it goes away with the connection.
    pub exclusive: bool,
    /// Delete when the last consumer goes.
    pub auto_delete: bool,
    /// Do not wait for declare-ok (the returned counts are then zero).
    pub nowait: bool,
}

/// What `queue.declare` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDeclared {
    /// The queue's name (the broker's choice for a server-named queue).
    pub name: String,
    /// Messages ready for delivery.
    pub message_count: u32,
    /// Active consumers.
    pub consumer_count: u32,
}

/// `queue.delete` conditions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDeleteOptions {
    /// Only if it has no consumers (406 otherwise).
    pub if_unused: bool,
    /// Only if it has no messages (406 otherwise).
    pub if_empty: bool,
}

/// `basic.consume` options.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumeOptions {
    /// Consumer tag; empty lets the client choose one unique on the connection.
    pub consumer_tag: String,
    /// Deliveries need no acknowledgement (at-most-once).
    pub no_ack: bool,
    /// The queue's only consumer.
    pub exclusive: bool,
    /// Consumer arguments (`x-priority`, `x-stream-offset`, ...).
    pub arguments: FieldTable,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        ConsumeOptions { consumer_tag: String::new(), no_ack: false, exclusive: false, arguments: FieldTable::new() }
    }
}

/// Sets a consumer argument or message header under a literal key.
fn set(table: &mut FieldTable, key: &'static str, value: FieldValue) {
    // `insert` fails only for keys over 255 bytes; every key passed here is a short literal.
    let _ = table.insert(key, value);
}

impl ConsumeOptions {
    /// A consumer of a stream that starts at `offset` (`x-stream-offset`), with manual
    /// acknowledgements.
    ///
    /// RabbitMQ requires both of a stream consumer over AMQP 0-9-1:
    /// - a prefetch: call [`Channel::basic_qos`](crate::Channel::basic_qos) with a non-zero
    ///   count (per consumer, `global == false`) on the channel *before* consuming. Without
    ///   one the consume fails with 406 `PRECONDITION_FAILED` ("consumer prefetch count is
    ///   not set"), closing the channel;
    /// - acknowledgements: `no_ack` stays `false` (with `true` the broker closes the whole
    ///   *connection* with 540 `NOT_IMPLEMENTED`). Acking does not remove anything from a
    ///   stream (every consumer reads the whole log); it is the credit that lets the broker
    ///   send more once `prefetch` deliveries are unacknowledged.
    ///
    /// Streams also refuse `basic.nack`, `basic.reject` and `basic.get` with 540, closing the
    /// connection: a stream consumer only acks. Each of these errors keeps the broker's
    /// reply code and text ([`Error::ConnectionClosed`](crate::Error::ConnectionClosed) or
    /// [`Error::ChannelClosed`](crate::Error::ChannelClosed)).
    ///
    /// ```no_run
    /// use lepus::{ConsumeOptions, StreamOffset};
    /// # async fn f(channel: lepus::Channel) -> Result<(), lepus::Error> {
    /// channel.basic_qos(100, false).await?;
    /// let mut consumer = channel.basic_consume("events", ConsumeOptions::stream(StreamOffset::First)).await?;
    /// while let Some(delivery) = consumer.next().await {
    ///     let delivery = delivery?;
    ///     println!("offset {:?}: {} bytes", delivery.stream_offset(), delivery.body.len());
    ///     delivery.ack().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn stream(offset: StreamOffset) -> Self {
        ConsumeOptions::default().stream_offset(offset)
    }

    /// Sets where a stream consumer starts (`x-stream-offset`); see [`StreamOffset`]. Without
    /// it a stream consumer starts at [`StreamOffset::Next`].
    #[must_use]
    pub fn stream_offset(mut self, offset: StreamOffset) -> Self {
        set(&mut self.arguments, "x-stream-offset", offset.to_field_value());
        self
    }

    /// Asks for only the messages of a stream published with one of these filter values
    /// (`x-stream-filter`, sent as an array of strings; see
    /// [`PublishOptions::stream_filter_value`]). No values removes the filter.
    ///
    /// Server-side filtering needs RabbitMQ 3.13 or later; older brokers (3.10, 3.11, 3.12)
    /// accept the argument and ignore it, delivering every message. Even 3.13 filters by
    /// chunk with a Bloom filter, so other messages come along: always check
    /// [`Delivery::stream_filter_value`](crate::Delivery::stream_filter_value) too, and the
    /// consumer is correct on every version (the filter then only saves bandwidth where the
    /// broker has it).
    #[must_use]
    pub fn stream_filter<I, S>(mut self, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let values: FieldArray =
            values.into_iter().map(|v| FieldValue::LongString(Bytes::copy_from_slice(v.as_ref().as_bytes()))).collect();
        if values.0.is_empty() {
            self.arguments.remove("x-stream-filter");
        } else {
            set(&mut self.arguments, "x-stream-filter", FieldValue::Array(values));
        }
        self
    }

    /// With a [`stream_filter`](ConsumeOptions::stream_filter), also deliver the messages
    /// published without a filter value (`x-stream-match-unfiltered`; RabbitMQ 3.13+, whose
    /// default is `false`).
    #[must_use]
    pub fn stream_match_unfiltered(mut self, on: bool) -> Self {
        set(&mut self.arguments, "x-stream-match-unfiltered", FieldValue::Bool(on));
        self
    }
}

/// `basic.publish` options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Return the message (as [`crate::Confirmation::Returned`] in confirm mode, else on
    /// [`crate::Channel::returns`]) if no queue is bound for it.
    pub mandatory: bool,
    /// The message's properties.
    pub properties: BasicProperties,
}

impl PublishOptions {
    /// Tags the message for stream filtering: the `x-stream-filter-value` header, which
    /// RabbitMQ 3.13+ indexes per chunk so that consumers asking for this value
    /// ([`ConsumeOptions::stream_filter`]) can skip chunks without it. Replaces an earlier
    /// value, keeps the other headers.
    ///
    /// Before 3.13 the broker stores it as an ordinary header (consumers see it in
    /// [`Delivery::stream_filter_value`](crate::Delivery::stream_filter_value)) and filters
    /// nothing.
    #[must_use]
    pub fn stream_filter_value(mut self, value: &str) -> Self {
        let headers = self.properties.headers.get_or_insert_with(FieldTable::new);
        set(headers, "x-stream-filter-value", value.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IntervalUnit, StreamInterval};

    fn s(v: &str) -> FieldValue {
        FieldValue::LongString(Bytes::copy_from_slice(v.as_bytes()))
    }

    #[test]
    fn a_stream_consumer_acks_and_carries_its_offset_with_the_right_type() {
        let options = ConsumeOptions::stream(StreamOffset::Offset(50));
        assert!(!options.no_ack, "stream consumers must ack");
        assert!(!options.exclusive);
        assert!(options.consumer_tag.is_empty());
        assert_eq!(options.arguments.len(), 1);
        assert_eq!(options.arguments.get("x-stream-offset"), Some(&FieldValue::I64(50)));

        let cases = [
            (StreamOffset::First, s("first")),
            (StreamOffset::Last, s("last")),
            (StreamOffset::Next, s("next")),
            (StreamOffset::Timestamp(1_700_000_000), FieldValue::Timestamp(1_700_000_000)),
            (StreamOffset::Interval(StreamInterval::new(1, IntervalUnit::Days).unwrap()), s("1D")),
        ];
        for (offset, value) in cases {
            let args = ConsumeOptions::stream(offset).arguments;
            assert_eq!(args.get("x-stream-offset"), Some(&value), "{offset:?}");
        }
    }

    #[test]
    fn setting_the_offset_again_replaces_it_and_keeps_other_arguments() {
        let mut options = ConsumeOptions::default();
        options.arguments.insert("x-priority", 5i32).unwrap();
        let options = options.stream_offset(StreamOffset::First).stream_offset(StreamOffset::Offset(7));
        assert_eq!(options.arguments.len(), 2);
        assert_eq!(options.arguments.get("x-priority"), Some(&FieldValue::I32(5)));
        assert_eq!(options.arguments.get("x-stream-offset"), Some(&FieldValue::I64(7)));
    }

    #[test]
    fn filters_are_an_array_of_long_strings_and_match_unfiltered_a_bool() {
        let args = ConsumeOptions::stream(StreamOffset::First)
            .stream_filter(["eu", "us"])
            .stream_match_unfiltered(true)
            .arguments;
        let filter = args.get("x-stream-filter").unwrap();
        assert_eq!(filter.type_letter(), b'A');
        assert_eq!(filter, &FieldValue::Array(FieldArray(vec![s("eu"), s("us")])));
        assert_eq!(args.get("x-stream-match-unfiltered"), Some(&FieldValue::Bool(true)));

        let one = ConsumeOptions::default().stream_filter(vec![String::from("eu")]).arguments;
        assert_eq!(one.get("x-stream-filter"), Some(&FieldValue::Array(FieldArray(vec![s("eu")]))));
        let cleared = ConsumeOptions::default().stream_filter(["eu"]).stream_filter(Vec::<&str>::new()).arguments;
        assert!(cleared.is_empty(), "no values removes the filter: {cleared:?}");
    }

    #[test]
    fn a_filter_value_is_a_long_string_header_beside_the_others() {
        let options = PublishOptions::default().stream_filter_value("eu");
        let headers = options.properties.headers.as_ref().unwrap();
        assert_eq!(headers.get("x-stream-filter-value"), Some(&s("eu")));

        let mut properties = BasicProperties::default();
        let mut headers = FieldTable::new();
        headers.insert("trace", "abc").unwrap();
        properties.headers = Some(headers);
        let options =
            PublishOptions { mandatory: true, properties }.stream_filter_value("eu").stream_filter_value("us");
        let headers = options.properties.headers.as_ref().unwrap();
        assert_eq!(headers.len(), 2);
        assert_eq!(headers.get("trace"), Some(&s("abc")));
        assert_eq!(headers.get("x-stream-filter-value"), Some(&s("us")));
        assert!(options.mandatory);
    }
}
