//! `Delivery`: one message from a consumer or `basic.get`, and settling it once.

use std::sync::Arc;

use bytes::Bytes;
use lepus_codec::{BasicProperties, Method, ShortStr, method::basic};

use crate::{
    Error,
    channel_link::ChannelLink,
    proto,
    settle::{self, Settled},
};

/// Where a delivery's acknowledgement goes.
pub(crate) struct Acker {
    pub(crate) link: Arc<ChannelLink>,
    /// The channel incarnation the delivery came on: its tag is valid there only.
    pub(crate) key: proto::ChannelKey,
    pub(crate) no_ack: bool,
}

/// One message from a consumer or `basic.get`.
///
/// Settle it once with [`Delivery::ack`], `nack` or `reject`. A second settlement, or one
/// of a delivery that an earlier `multiple` ack or nack on its channel already covered, is
/// refused with [`Error::AlreadySettled`] and never sent: RabbitMQ would answer it by
/// closing the channel with 406 `PRECONDITION_FAILED` ("unknown delivery tag"), failing
/// every other operation on it. Settling after its channel closed is
/// [`Error::StaleDeliveryTag`]: the broker has already requeued it.
///
/// Not `Clone`, so that one value stands for one settlement; share it with an `Arc`.
pub struct Delivery {
    /// Tag for acknowledging, valid on the channel it came on.
    pub delivery_tag: u64,
    /// Delivered before and not acknowledged.
    pub redelivered: bool,
    /// Exchange it was published to.
    pub exchange: ShortStr,
    /// Its routing key.
    pub routing_key: ShortStr,
    /// The consumer's tag (empty for `basic.get`).
    pub consumer_tag: ShortStr,
    /// Its properties.
    pub properties: BasicProperties,
    /// The body: the same memory the socket was read into when it came in one frame.
    pub body: Bytes,
    acker: Acker,
    settled: Settled,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("delivery_tag", &self.delivery_tag)
            .field("redelivered", &self.redelivered)
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("properties", &self.properties)
            .field("body_len", &self.body.len())
            .field("settled", &self.is_settled())
            .finish_non_exhaustive()
    }
}

impl Delivery {
    pub(crate) fn new(d: proto::Delivery, acker: Acker) -> Self {
        Delivery {
            delivery_tag: d.delivery_tag,
            redelivered: d.redelivered,
            exchange: d.exchange,
            routing_key: d.routing_key,
            consumer_tag: d.consumer_tag,
            properties: d.properties,
            body: d.body,
            acker,
            settled: Settled::default(),
        }
    }

    /// Acknowledges this delivery.
    pub async fn ack(&self) -> Result<(), Error> {
        self.settle(basic::Ack { delivery_tag: self.delivery_tag, multiple: false }.into(), false).await
    }

    /// Acknowledges this delivery and every earlier unsettled one on its channel; settling
    /// any of those afterwards is [`Error::AlreadySettled`].
    pub async fn ack_multiple(&self) -> Result<(), Error> {
        self.settle(basic::Ack { delivery_tag: self.delivery_tag, multiple: true }.into(), true).await
    }

    /// Rejects this delivery; `requeue` puts it back, otherwise it is dropped or
    /// dead-lettered.
    pub async fn nack(&self, requeue: bool) -> Result<(), Error> {
        self.settle(basic::Nack { delivery_tag: self.delivery_tag, multiple: false, requeue }.into(), false).await
    }

    /// Rejects this delivery and every earlier unsettled one on its channel, like
    /// [`Delivery::ack_multiple`] does for acks.
    pub async fn nack_multiple(&self, requeue: bool) -> Result<(), Error> {
        self.settle(basic::Nack { delivery_tag: self.delivery_tag, multiple: true, requeue }.into(), true).await
    }

    /// `basic.reject`: like [`Delivery::nack`] for one message.
    pub async fn reject(&self, requeue: bool) -> Result<(), Error> {
        self.settle(basic::Reject { delivery_tag: self.delivery_tag, requeue }.into(), false).await
    }

    /// Whether this delivery has been settled (acked, nacked or rejected here, or covered by
    /// a `multiple` ack or nack on its channel). A settlement that then failed to reach the
    /// broker still counts: its channel or connection is gone, and the broker requeues it.
    pub fn is_settled(&self) -> bool {
        let shared = &self.acker.link.shared;
        self.settled.is_set() || (shared.key() == self.acker.key && shared.covered.covers(self.delivery_tag))
    }

    // Async like the public methods it serves (see `Channel::basic_ack`).
    #[allow(clippy::unused_async)]
    async fn settle(&self, method: Method, multiple: bool) -> Result<(), Error> {
        if self.acker.no_ack {
            return Err(Error::InvalidOperation("acknowledging a delivery of a no-ack consumer"));
        }
        let shared = &self.acker.link.shared;
        if shared.key() != self.acker.key || shared.is_closed() {
            return Err(Error::StaleDeliveryTag(self.delivery_tag));
        }
        settle::claim(&self.settled, &shared.covered, self.delivery_tag, multiple)
            .map_err(|settle::Refused::AlreadySettled| Error::AlreadySettled(self.delivery_tag))?;
        // The driver checks the incarnation again when it sends: a settlement that loses a
        // race with the channel closing is dropped there, never sent with a stale tag.
        self.acker.link.settle(self.acker.key, method)
    }
}
