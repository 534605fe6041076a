//! Routing the state machine's events to the handles' waiters and shared state.

use std::sync::Arc;

use super::{Driver, Proto, apply::give_back};
use crate::{
    command::DriverTokens,
    delivery_queue::{DeliveryItem, DeliveryQueue, Pushed},
    proto::Event,
};

impl Driver {
    pub(super) fn event(&mut self, proto: &mut Proto, event: Event<DriverTokens>) {
        match event {
            Event::Connected => {
                self.shared.connected(proto.tuning(), proto.server_properties().clone());
                if let Some(tx) = self.connected.take() {
                    let _ = tx.send(Ok(()));
                }
            }
            Event::Reply(tx, result) => {
                let _ = tx.send(result);
            }
            Event::Confirm(token, result) => {
                let _ = token.tx.send(result);
            }
            Event::Delivery(queue, item) => self.deliver(proto, &queue, item),
            Event::ConsumerEnded(queue, reason) => {
                if let Some(waker) = queue.end(reason) {
                    self.wakers.push(waker);
                }
            }
            Event::Returned(channel, content) => channel.returned(*content),
            Event::ChannelClosed(channel, error) => channel.closed(error),
            Event::ChannelFlow(channel, active) => channel.set_flow(active),
            Event::Blocked(reason) => self.shared.set_blocked(Some(reason)),
            Event::Unblocked => self.shared.set_blocked(None),
            Event::Closed(error) => {
                if let Some(tx) = self.connected.take() {
                    let _ = tx.send(Err(error.clone()));
                }
                self.shared.closed(&error);
            }
        }
    }

    /// Queues a delivery for its consumer; the consumer is woken once the whole burst is in.
    fn deliver(&mut self, proto: &mut Proto, queue: &Arc<DeliveryQueue>, item: DeliveryItem) {
        match queue.push(item) {
            Pushed::Queued(Some(waker)) => self.wakers.push(waker),
            Pushed::Queued(None) => {}
            // The consumer was dropped (its cancel is on its way): back to the broker.
            Pushed::Refused(item) => give_back(proto, queue, item),
        }
    }
}
