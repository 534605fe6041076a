//! One consumer's deliveries on their way from the driver to the application.
//!
//! The driver pushes; the [`crate::Consumer`] takes everything queued in one step, so a burst
//! of deliveries costs the consumer one wake-up and one lock, not one each. The queue has no
//! bound of its own: one consumer that is not read never holds up another. Memory is bounded
//! by the broker's prefetch, and across consumers by the connection's unread-bytes limit, past
//! which the driver stops reading the socket (see `ConnShared::sub_unread`).

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, Waker},
};

use lepus_codec::ShortStr;

use crate::{Error, conn_shared::ConnShared, proto};

/// What a consumer receives: a delivery, or a message it could not be given (e.g. over the
/// size cap; it went back to the queue).
pub(crate) type DeliveryItem = Result<proto::Delivery, Error>;

/// What became of a delivery pushed to a consumer's queue.
// Returned by value and matched at once; boxing the refused delivery would add an
// allocation to a path that exists to avoid losing it.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Pushed {
    /// Queued; wake this consumer once the burst is in.
    Queued(Option<Waker>),
    /// The consumer was dropped: the delivery comes back.
    Refused(DeliveryItem),
}

/// How a consumer ended.
#[derive(Clone)]
pub(crate) enum End {
    Running,
    /// Our own cancel: the stream just ends.
    Cancelled,
    /// The broker cancelled it or its channel closed: the stream yields this, then ends.
    Failed(Error),
}

struct Inner {
    items: VecDeque<DeliveryItem>,
    /// Bytes of `items`, as counted in the connection's unread total.
    bytes: usize,
    waker: Option<Waker>,
    end: End,
    /// The `Consumer` was dropped: nothing more will be read.
    dropped: bool,
    /// A `basic.cancel` was sent (by the application or on drop).
    cancel_sent: bool,
}

/// The queue, shared by the driver (which holds it as the consumer's token) and the consumer.
pub(crate) struct DeliveryQueue {
    inner: Mutex<Inner>,
    conn: Arc<ConnShared>,
    pub(crate) no_ack: bool,
    /// The consumer's tag (chosen before consume is sent).
    pub(crate) tag: ShortStr,
    /// The channel it consumes on (its identity, see `ChannelShared::id`).
    pub(crate) channel_id: u64,
    /// For a stream consumer (one that asked for an `x-stream-offset`): the offset of the
    /// last delivery queued plus one, 0 before any. A recovery resumes the consumer there
    /// rather than where it first started, so nothing is delivered twice and nothing
    /// skipped (deliveries still queued are read after the recovery as before it).
    stream_next: Option<AtomicU64>,
}

/// What a delivery counts for in the unread total, whatever its body size: the struct itself
/// is a few hundred bytes.
const ITEM_COST: usize = 512;

fn cost(item: &DeliveryItem) -> usize {
    item.as_ref().map_or(0, |d| d.body.len()) + ITEM_COST
}

impl DeliveryQueue {
    /// `stream`: whether the consumer reads a stream from an offset it asked for.
    pub(crate) fn new(conn: Arc<ConnShared>, no_ack: bool, tag: ShortStr, channel_id: u64, stream: bool) -> Arc<Self> {
        Arc::new(DeliveryQueue {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                bytes: 0,
                waker: None,
                end: End::Running,
                dropped: false,
                cancel_sent: false,
            }),
            conn,
            no_ack,
            tag,
            channel_id,
            stream_next: stream.then(|| AtomicU64::new(0)),
        })
    }

    /// Where a recovered stream consumer resumes: after the last delivery queued. `None` for
    /// other consumers, and before the first delivery (it then starts where it asked to).
    pub(crate) fn stream_resume(&self) -> Option<u64> {
        let next = self.stream_next.as_ref()?.load(Ordering::Relaxed);
        (next > 0).then_some(next)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // ---- the driver's side -------------------------------------------------------------

    /// Queues a delivery. Returns the consumer's waker to wake once the driver has queued
    /// everything it has (one wake per burst), or gives the item back if the consumer was
    /// dropped: the driver then returns it to the broker.
    pub(crate) fn push(&self, item: DeliveryItem) -> Pushed {
        let mut inner = self.lock();
        if inner.dropped {
            return Pushed::Refused(item);
        }
        let body_bytes = item.as_ref().ok().map(|d| d.body.len());
        if let (Some(next), Ok(delivery)) = (&self.stream_next, &item)
            && let Some(offset) = crate::delivery_headers::stream_offset(delivery.properties.headers.as_ref())
        {
            next.store(offset.saturating_add(1), Ordering::Relaxed);
        }
        let bytes = cost(&item);
        inner.bytes += bytes;
        inner.items.push_back(item);
        let waker = inner.waker.take();
        drop(inner);
        self.conn.add_unread(bytes);
        if !self.no_ack {
            // Acks will follow: the driver may defer them (see `command_queue/mod.rs`).
            self.conn.commands.delivered();
        }
        if let (Some(body_bytes), Some(metrics)) = (body_bytes, self.conn.metrics()) {
            metrics.delivered(body_bytes);
        }
        Pushed::Queued(waker)
    }

    /// The consumer ended; its stream ends once the queued deliveries are read.
    pub(crate) fn end(&self, reason: Option<Error>) -> Option<Waker> {
        let mut inner = self.lock();
        if let End::Running = inner.end {
            inner.end = reason.map_or(End::Cancelled, End::Failed);
        }
        inner.waker.take()
    }

    /// Whether the consumer still runs (not ended, not dropped).
    pub(crate) fn is_running(&self) -> bool {
        let inner = self.lock();
        !inner.dropped && matches!(inner.end, End::Running)
    }

    /// Marks a cancel as sent; false if one was already.
    pub(crate) fn claim_cancel(&self) -> bool {
        !std::mem::replace(&mut self.lock().cancel_sent, true)
    }

    // ---- the consumer's side -----------------------------------------------------------

    /// Moves everything queued into `into`; if nothing is, registers `cx` to be woken and
    /// returns how the consumer ended (or `Pending` while it runs).
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>, into: &mut VecDeque<DeliveryItem>) -> Poll<Option<End>> {
        let mut inner = self.lock();
        if inner.items.is_empty() {
            return match &inner.end {
                End::Running => {
                    if !inner.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        inner.waker = Some(cx.waker().clone());
                    }
                    Poll::Pending
                }
                end => Poll::Ready(Some(end.clone())),
            };
        }
        std::mem::swap(&mut inner.items, into);
        let bytes = std::mem::take(&mut inner.bytes);
        drop(inner);
        self.conn.sub_unread(bytes);
        Poll::Ready(None)
    }

    /// The consumer is dropped: nothing more will be read. Returns what was queued (the
    /// driver gives it back to the broker) and whether a cancel is still to be sent.
    pub(crate) fn drop_consumer(&self) -> (VecDeque<DeliveryItem>, bool) {
        let mut inner = self.lock();
        inner.dropped = true;
        inner.waker = None;
        let items = std::mem::take(&mut inner.items);
        let bytes = std::mem::take(&mut inner.bytes);
        let cancel = !std::mem::replace(&mut inner.cancel_sent, true) && matches!(inner.end, End::Running);
        drop(inner);
        self.conn.sub_unread(bytes);
        (items, cancel)
    }
}
