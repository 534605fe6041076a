//! `Consumer`, a stream of `Delivery`s.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures_core::Stream;
use lepus_codec::{ShortStr, method::basic};

use crate::{
    Delivery, Error,
    channel_link::ChannelLink,
    command::{Command, Released},
    delivery::Acker,
    delivery_queue::{DeliveryItem, DeliveryQueue, End},
};

/// Deliveries of one consumer, as a `Stream`.
///
/// The stream ends after our own cancel; when the broker cancels the consumer (its queue
/// was deleted, ...) or the channel closes, it yields that error once, then ends. Dropping
/// the consumer cancels it; deliveries it had not read go back to the queue.
///
/// Deliveries are handed over in bursts: one wake-up brings everything that arrived since
/// the last, and [`Consumer::next`] then returns them without waiting.
pub struct Consumer {
    tag: ShortStr,
    queue: Arc<DeliveryQueue>,
    /// Deliveries taken from the queue, not yet returned.
    local: VecDeque<DeliveryItem>,
    /// How many of `local` count in the connection's deliveries in hand (see
    /// `command_queue/mod.rs`): all of one take, released when `local` runs dry.
    in_hand: usize,
    link: Arc<ChannelLink>,
    done: bool,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").field("tag", &self.tag).finish_non_exhaustive()
    }
}

impl Consumer {
    pub(crate) fn new(tag: ShortStr, queue: Arc<DeliveryQueue>, link: Arc<ChannelLink>) -> Self {
        Consumer { tag, queue, local: VecDeque::new(), in_hand: 0, link, done: false }
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
        if !self.queue.claim_cancel() {
            return Ok(());
        }
        let cancel = basic::Cancel { consumer_tag: self.tag.clone(), nowait: false };
        self.link.call(cancel.into()).await.map(|_| ())
    }

    fn yield_item(&mut self, item: DeliveryItem) -> Result<Delivery, Error> {
        if self.local.is_empty() {
            // The driver defers acks while consumers hold deliveries: none held here now.
            self.link.shared.conn.commands.yielded(std::mem::take(&mut self.in_hand));
        }
        item.map(|d| {
            let acker = Acker { link: self.link.clone(), key: d.channel, no_ack: self.queue.no_ack };
            Delivery::new(d, acker)
        })
    }
}

impl Stream for Consumer {
    type Item = Result<Delivery, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(item) = self.local.pop_front() {
            return Poll::Ready(Some(self.yield_item(item)));
        }
        let this = &mut *self;
        match this.queue.poll_take(cx, &mut this.local) {
            Poll::Pending => {
                // Acks the broker may be waiting for go out before this waits.
                this.link.shared.conn.commands.consumer_waits(this.link.shared.prefetch());
                Poll::Pending
            }
            Poll::Ready(None) => {
                this.in_hand = this.local.len();
                this.link.shared.conn.commands.taken(this.in_hand);
                match this.local.pop_front() {
                    Some(item) => Poll::Ready(Some(this.yield_item(item))),
                    None => Poll::Pending,
                }
            }
            Poll::Ready(Some(end)) => {
                this.done = true;
                match end {
                    End::Failed(error) => Poll::Ready(Some(Err(error))),
                    End::Cancelled => Poll::Ready(None),
                    // The queue only reports an end once it has one.
                    End::Running => Poll::Ready(Some(Err(this.link.shared.close_reason_or_closed()))),
                }
            }
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // From now on the driver gives back whatever still arrives for this consumer.
        let (queued, cancel) = self.queue.drop_consumer();
        self.link.shared.conn.commands.yielded(std::mem::take(&mut self.in_hand));
        let mut items = std::mem::take(&mut self.local);
        items.extend(queued);
        if items.is_empty() && !cancel {
            return;
        }
        let released = Released {
            queue: self.queue.clone(),
            channel: self.link.shared.clone(),
            tag: self.tag.clone(),
            items,
            cancel,
        };
        // Never waits; if the connection is gone, the broker requeues everything anyway.
        let _ = self.link.commands.send(Command::ConsumerDropped(released));
    }
}
