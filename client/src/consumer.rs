//! `Consumer`, a stream of `Delivery`s, and acknowledging them.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use futures_core::Stream;
use lepus_codec::{BasicProperties, Method, ShortStr, method::basic};
use tokio::sync::{mpsc, oneshot};

use crate::{
    Error,
    channel::ChannelGuard,
    driver::{Command, DeliveryItem, DriverTokens},
    proto,
};

/// The driver's side of a consumer: where deliveries go, and how the consumer ended.
#[derive(Clone)]
pub(crate) struct ConsumerTx {
    pub(crate) tx: mpsc::Sender<DeliveryItem>,
    pub(crate) no_ack: bool,
    pub(crate) shared: Arc<ConsumerShared>,
}

/// How a consumer ended.
#[derive(Clone)]
enum End {
    Running,
    /// Our own cancel: the stream just ends.
    Cancelled,
    /// The broker cancelled it or its channel closed: the stream yields this, then ends.
    Failed(Error),
}

pub(crate) struct ConsumerShared {
    end: Mutex<End>,
    cancel_sent: AtomicBool,
}

impl Default for ConsumerShared {
    fn default() -> Self {
        ConsumerShared { end: Mutex::new(End::Running), cancel_sent: AtomicBool::new(false) }
    }
}

impl ConsumerTx {
    /// The consumer ended; the stream ends once the queued deliveries are read.
    pub(crate) fn end(&self, reason: Option<Error>) {
        let mut end = self.shared.end.lock().unwrap_or_else(PoisonError::into_inner);
        if let End::Running = *end {
            *end = reason.map_or(End::Cancelled, End::Failed);
        }
    }

    /// Nobody reads this consumer any more: cancel it (once).
    pub(crate) fn cancel_once(
        &self,
        proto: &mut proto::Connection<DriverTokens>,
        key: proto::ChannelKey,
        tag: ShortStr,
    ) {
        if !self.shared.cancel_sent.swap(true, Ordering::AcqRel) {
            let (tx, _rx) = oneshot::channel();
            proto.call(key, basic::Cancel { consumer_tag: tag, nowait: false }.into(), tx);
        }
    }
}

/// Deliveries of one consumer, as a `Stream`.
///
/// The stream ends after our own cancel; when the broker cancels the consumer (its queue
/// was deleted, ...) or the channel closes, it yields that error once, then ends. Dropping
/// the consumer cancels it; deliveries it had not read go back to the queue.
pub struct Consumer {
    tag: ShortStr,
    rx: mpsc::Receiver<DeliveryItem>,
    shared: Arc<ConsumerShared>,
    channel: Arc<ChannelGuard>,
    no_ack: bool,
    done: bool,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").field("tag", &self.tag).finish_non_exhaustive()
    }
}

impl Consumer {
    pub(crate) fn new(
        tag: ShortStr,
        rx: mpsc::Receiver<DeliveryItem>,
        shared: Arc<ConsumerShared>,
        channel: Arc<ChannelGuard>,
        no_ack: bool,
    ) -> Self {
        Consumer { tag, rx, shared, channel, no_ack, done: false }
    }

    /// The consumer tag.
    pub fn tag(&self) -> &str {
        self.tag.as_str().unwrap_or_default()
    }

    /// The next delivery; `None` once the consumer has ended (see the type's docs).
    pub async fn next(&mut self) -> Option<Result<Delivery, Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// Cancels the consumer; deliveries already on their way are still yielded.
    pub async fn cancel(&self) -> Result<(), Error> {
        if self.shared.cancel_sent.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let cancel = basic::Cancel { consumer_tag: self.tag.clone(), nowait: false };
        self.channel.call(cancel.into()).await.map(|_| ())
    }
}

impl Stream for Consumer {
    type Item = Result<Delivery, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(d))) => {
                let acker = Acker { channel: self.channel.clone(), key: d.channel, no_ack: self.no_ack };
                Poll::Ready(Some(Ok(Delivery::new(d, acker))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => {
                self.done = true;
                let reason = self.shared.end.lock().unwrap_or_else(PoisonError::into_inner).clone();
                match reason {
                    End::Failed(error) => Poll::Ready(Some(Err(error))),
                    End::Cancelled => Poll::Ready(None),
                    // The driver stopped without ending us: say why.
                    End::Running => Poll::Ready(Some(Err(self.channel.shared.conn.closed_error()))),
                }
            }
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // From now on the driver finds the queue closed: it rejects (requeues) what it
        // still delivers and cancels the consumer.
        self.rx.close();
        if !self.done && !self.shared.cancel_sent.swap(true, Ordering::AcqRel) {
            // Best effort without a runtime: if the command queue is full, the driver
            // still cancels the consumer when its next delivery finds nobody to take it.
            let (tx, _rx) = oneshot::channel();
            let cancel = basic::Cancel { consumer_tag: self.tag.clone(), nowait: false };
            let cmd = Command::Call { key: self.channel.shared.key, method: cancel.into(), reply: tx };
            let _ = self.channel.commands.try_send(cmd);
        }
        // Deliveries already buffered go back to the queue now, not when the channel
        // closes (which may be never, while other handles keep it open).
        while let Ok(item) = self.rx.try_recv() {
            if let Ok(d) = item
                && !self.no_ack
            {
                let reject = basic::Reject { delivery_tag: d.delivery_tag, requeue: true };
                let _ = self.channel.commands.try_send(Command::Send { key: d.channel, method: reject.into() });
            }
        }
    }
}

/// Where a delivery's acknowledgement goes.
#[derive(Clone)]
pub(crate) struct Acker {
    pub(crate) channel: Arc<ChannelGuard>,
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
    settled: AtomicBool,
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
            settled: AtomicBool::new(false),
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
        self.settled.load(Ordering::Acquire) || self.acker.channel.shared.covered_by_multiple(self.delivery_tag)
    }

    async fn settle(&self, method: Method, multiple: bool) -> Result<(), Error> {
        if self.acker.no_ack {
            return Err(Error::InvalidOperation("acknowledging a delivery of a no-ack consumer"));
        }
        let shared = &self.acker.channel.shared;
        if shared.key != self.acker.key || shared.is_closed() {
            return Err(Error::StaleDeliveryTag(self.delivery_tag));
        }
        // Claim the settlement before anything is sent: of two concurrent calls, one sends.
        if self.settled.swap(true, Ordering::AcqRel) || shared.covered_by_multiple(self.delivery_tag) {
            return Err(Error::AlreadySettled(self.delivery_tag));
        }
        if multiple {
            shared.settled_through(self.delivery_tag);
        }
        self.acker.channel.commands.send(Command::Send { key: self.acker.key, method }).await
    }
}
