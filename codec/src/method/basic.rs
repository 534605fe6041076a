//! Class `basic` (60): QoS, consumers, publishing, deliveries, acknowledgements.

use super::macros::method_structs;
use crate::{FieldTable, ReplyCode, ShortStr};

method_structs! {
    /// Sets the prefetch window.
    Qos {
        /// Prefetch window in bytes (RabbitMQ supports only 0).
        prefetch_size: u32 = long,
        /// Unacknowledged messages allowed in flight (0 = unlimited).
        prefetch_count: u16 = short,
        /// RabbitMQ: true = per channel, false = per consumer.
        global: bool = bit,
    }

    /// The window is in force.
    QosOk {}

    /// Starts a consumer on a queue.
    Consume {
        /// Deprecated, 0.
        ticket: u16 = short,
        /// Queue name.
        queue: ShortStr = shortstr,
        /// Consumer tag, or empty for a server-generated one.
        consumer_tag: ShortStr = shortstr,
        /// Do not deliver this connection's own publishes (unsupported by RabbitMQ).
        no_local: bool = bit,
        /// Deliveries need no acknowledgement.
        no_ack: bool = bit,
        /// The only consumer of the queue.
        exclusive: bool = bit,
        /// Do not answer with consume-ok.
        nowait: bool = bit,
        /// Consumer arguments (`x-priority`, `x-stream-offset`, ...).
        arguments: FieldTable = table,
    }

    /// The consumer is active.
    ConsumeOk {
        /// Its tag.
        consumer_tag: ShortStr = shortstr,
    }

    /// Cancels a consumer (also sent by RabbitMQ when the queue goes away).
    Cancel {
        /// The consumer's tag.
        consumer_tag: ShortStr = shortstr,
        /// Do not answer with cancel-ok.
        nowait: bool = bit,
    }

    /// The consumer is cancelled.
    CancelOk {
        /// The consumer's tag.
        consumer_tag: ShortStr = shortstr,
    }

    /// Publishes a message; a content header and body frames follow.
    Publish {
        /// Deprecated, 0.
        ticket: u16 = short,
        /// Exchange name; empty for the default exchange.
        exchange: ShortStr = shortstr,
        /// Routing key.
        routing_key: ShortStr = shortstr,
        /// Return the message if no queue is bound for it.
        mandatory: bool = bit,
        /// Unsupported by RabbitMQ 3+; must be false.
        immediate: bool = bit,
    }

    /// A mandatory message could not be routed; content follows.
    Return {
        /// Why (312 `NO_ROUTE`).
        reply_code: ReplyCode = short (ReplyCode::NO_ROUTE),
        /// Human-readable reason.
        reply_text: ShortStr = shortstr,
        /// Exchange it was published to.
        exchange: ShortStr = shortstr,
        /// Its routing key.
        routing_key: ShortStr = shortstr,
    }

    /// A message for a consumer; content follows.
    Deliver {
        /// The consumer's tag.
        consumer_tag: ShortStr = shortstr,
        /// Channel-scoped tag to acknowledge it with.
        delivery_tag: u64 = longlong,
        /// Delivered before and not acknowledged.
        redelivered: bool = bit,
        /// Exchange it was published to.
        exchange: ShortStr = shortstr,
        /// Its routing key.
        routing_key: ShortStr = shortstr,
    }

    /// Fetches one message synchronously.
    Get {
        /// Deprecated, 0.
        ticket: u16 = short,
        /// Queue name.
        queue: ShortStr = shortstr,
        /// Needs no acknowledgement.
        no_ack: bool = bit,
    }

    /// The fetched message; content follows.
    GetOk {
        /// Channel-scoped tag to acknowledge it with.
        delivery_tag: u64 = longlong,
        /// Delivered before and not acknowledged.
        redelivered: bool = bit,
        /// Exchange it was published to.
        exchange: ShortStr = shortstr,
        /// Its routing key.
        routing_key: ShortStr = shortstr,
        /// Messages still in the queue.
        message_count: u32 = long,
    }

    /// The queue was empty.
    GetEmpty {
        /// Deprecated, empty.
        cluster_id: ShortStr = shortstr,
    }

    /// Acknowledges a delivery; from the broker, confirms a publish.
    Ack {
        /// The tag.
        delivery_tag: u64 = longlong,
        /// Every tag up to and including this one.
        multiple: bool = bit,
    }

    /// Rejects one delivery.
    Reject {
        /// The tag.
        delivery_tag: u64 = longlong,
        /// Put it back in the queue (otherwise drop or dead-letter it).
        requeue: bool = bit (true),
    }

    /// Redelivers unacknowledged messages, without an answer (deprecated).
    RecoverAsync {
        /// Requeue rather than redeliver to the same consumer.
        requeue: bool = bit,
    }

    /// Redelivers unacknowledged messages.
    Recover {
        /// Requeue rather than redeliver to the same consumer.
        requeue: bool = bit,
    }

    /// Recovery done.
    RecoverOk {}

    /// Rejects one or many deliveries; from the broker, a negative publish confirm.
    Nack {
        /// The tag.
        delivery_tag: u64 = longlong,
        /// Every tag up to and including this one.
        multiple: bool = bit,
        /// Put them back in the queue.
        requeue: bool = bit (true),
    }
}
