//! What RabbitMQ's quorum queues and streams write into a delivery's headers, read typed:
//! how often a message was delivered before, and where in a stream it sits.

use lepus_codec::FieldTable;

use crate::Delivery;

/// Quorum queues: earlier deliveries that ended in a return (nack or reject with requeue,
/// or the consumer's channel closing). Compared with `x-delivery-limit`.
const DELIVERY_COUNT: &str = "x-delivery-count";
/// Quorum queues on RabbitMQ 4.3+: how often the message was handed to a consumer before.
const ACQUIRED_COUNT: &str = "x-acquired-count";
/// Streams: the message's offset.
const STREAM_OFFSET: &str = "x-stream-offset";
/// Streams: the filter value its publisher gave it.
const STREAM_FILTER_VALUE: &str = "x-stream-filter-value";

/// A broker-set counter or offset: RabbitMQ sends a `long`; any integer type is read, a
/// negative one or another type is treated as absent.
fn count(headers: Option<&FieldTable>, key: &str) -> Option<u64> {
    headers?.get(key)?.as_i64().and_then(|n| u64::try_from(n).ok())
}

/// A delivery's stream offset (`x-stream-offset`), from its headers.
pub(crate) fn stream_offset(headers: Option<&FieldTable>) -> Option<u64> {
    count(headers, STREAM_OFFSET)
}

/// A header's UTF-8 string value.
fn text<'a>(headers: Option<&'a FieldTable>, key: &str) -> Option<&'a str> {
    headers?.get(key)?.as_str()
}

impl Delivery {
    fn broker_count(&self, key: &str) -> Option<u64> {
        count(self.properties.headers.as_ref(), key)
    }

    /// How many earlier deliveries of this message from a quorum queue were returned
    /// rather than acknowledged (`x-delivery-count`): nacked or rejected with requeue, or
    /// left unacknowledged when the consumer's channel or connection closed.
    ///
    /// `None` when the header is absent: a quorum queue leaves it out of a message's first
    /// delivery (read that as 0), and classic queues and streams never set it. A message
    /// whose count passes the queue's [`delivery_limit`](crate::QueueArguments::delivery_limit)
    /// is dead-lettered or dropped instead of being delivered again; on RabbitMQ 4.3+ only
    /// some returns count towards it (see [`Delivery::acquired_count`]).
    ///
    /// ```
    /// # fn f(delivery: &lepus::Delivery) {
    /// let earlier_failures = delivery.delivery_count().unwrap_or(0);
    /// # }
    /// ```
    pub fn delivery_count(&self) -> Option<u64> {
        self.broker_count(DELIVERY_COUNT)
    }

    /// How many times a quorum queue handed this message to a consumer before this
    /// delivery (`x-acquired-count`, RabbitMQ 4.3 and later, where `x-delivery-count`
    /// counts only failed deliveries). `None` when absent: on older brokers (3.10 never
    /// sets it), on a message's first delivery, and for other queue types.
    pub fn acquired_count(&self) -> Option<u64> {
        self.broker_count(ACQUIRED_COUNT)
    }

    /// The offset of this message in the stream it came from (`x-stream-offset`, which
    /// RabbitMQ adds to every delivery from a stream). Resume after a restart with
    /// [`StreamOffset::Offset`](crate::StreamOffset::Offset)`(offset + 1)`. `None` for
    /// messages from other queue types.
    pub fn stream_offset(&self) -> Option<u64> {
        self.broker_count(STREAM_OFFSET)
    }

    /// The stream filter value its publisher set
    /// ([`PublishOptions::stream_filter_value`](crate::PublishOptions::stream_filter_value)),
    /// if it is a UTF-8 string.
    ///
    /// A consumer that asked for some filter values
    /// ([`ConsumeOptions::stream_filter`](crate::ConsumeOptions::stream_filter)) must still
    /// check this: RabbitMQ 3.13+ filters whole chunks with a Bloom filter, so other
    /// messages come along, and brokers before 3.13 do not filter at all.
    pub fn stream_filter_value(&self) -> Option<&str> {
        text(self.properties.headers.as_ref(), STREAM_FILTER_VALUE)
    }
}

#[cfg(test)]
mod tests {
    use lepus_codec::FieldValue;

    use super::*;

    fn headers(key: &str, value: FieldValue) -> FieldTable {
        let mut t = FieldTable::new();
        t.insert("other", "x").unwrap();
        t.insert(key, value).unwrap();
        t
    }

    #[test]
    fn counts_are_read_from_any_integer_type() {
        for value in [
            FieldValue::I64(3),
            FieldValue::I32(3),
            FieldValue::U32(3),
            FieldValue::I16(3),
            FieldValue::U16(3),
            FieldValue::I8(3),
            FieldValue::U8(3),
        ] {
            let t = headers(DELIVERY_COUNT, value.clone());
            assert_eq!(count(Some(&t), DELIVERY_COUNT), Some(3), "{value:?}");
        }
        let t = headers(STREAM_OFFSET, FieldValue::I64(i64::MAX));
        assert_eq!(count(Some(&t), STREAM_OFFSET), Some(i64::MAX as u64));
    }

    #[test]
    fn absent_negative_or_mistyped_counts_are_none() {
        assert_eq!(count(None, DELIVERY_COUNT), None);
        assert_eq!(count(Some(&FieldTable::new()), DELIVERY_COUNT), None);
        for value in [FieldValue::I64(-1), FieldValue::from("3"), FieldValue::Timestamp(3), FieldValue::Void] {
            let t = headers(ACQUIRED_COUNT, value.clone());
            assert_eq!(count(Some(&t), ACQUIRED_COUNT), None, "{value:?}");
        }
        let t = headers(DELIVERY_COUNT, FieldValue::I64(2));
        assert_eq!(count(Some(&t), ACQUIRED_COUNT), None, "another key's value is not taken");
    }

    #[test]
    fn filter_values_are_utf8_strings() {
        let t = headers(STREAM_FILTER_VALUE, FieldValue::from("eu"));
        assert_eq!(text(Some(&t), STREAM_FILTER_VALUE), Some("eu"));
        let t = headers(STREAM_FILTER_VALUE, FieldValue::LongString(bytes::Bytes::from_static(b"\xff")));
        assert_eq!(text(Some(&t), STREAM_FILTER_VALUE), None);
        let t = headers(STREAM_FILTER_VALUE, FieldValue::I64(1));
        assert_eq!(text(Some(&t), STREAM_FILTER_VALUE), None);
        assert_eq!(text(None, STREAM_FILTER_VALUE), None);
    }
}
