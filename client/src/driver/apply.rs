//! Applying the handles' commands to the state machine.

use std::{sync::Arc, time::Instant};

use lepus_codec::method::{basic, channel as chan};
use tokio::sync::oneshot;

use super::{Driver, Proto};
use crate::{
    command::{Command, Released},
    delivery_queue::{DeliveryItem, DeliveryQueue},
};

impl Driver {
    pub(super) fn command(&mut self, proto: &mut Proto, cmd: Command, now: Instant) {
        match cmd {
            Command::OpenChannel { channel, reply } => match proto.open_channel(reply, channel.clone()) {
                Ok(key) => channel.set_key(key),
                Err((e, reply, channel)) => {
                    channel.closed(e.clone());
                    let _ = reply.send(Err(e));
                }
            },
            Command::Call { channel, method, reply } => proto.call(channel.key(), method, reply),
            Command::Consume { channel, consume, reply, queue } => proto.consume(channel.key(), consume, reply, queue),
            Command::Settle { key, method } => {
                if let Err(e) = proto.send(key, method) {
                    tracing::debug!(error = %e, "settlement not sent: its channel is gone");
                }
            }
            Command::Publish { channel, frames, confirm, budget } => {
                self.shared.publish_budget.add_permits(budget as usize);
                if let Err((e, Some(token))) = proto.publish(channel.key(), frames, confirm) {
                    let _ = token.tx.send(Err(e));
                }
            }
            Command::UpdateSecret { secret, reason, reply } => proto.update_secret(secret, &reason, reply),
            Command::Close { code, text, done } => {
                self.close_waiters.push(done);
                proto.close(now, code, &text, Some(self.close_timeout));
            }
            Command::ChannelDropped { channel } => {
                let (tx, _rx) = oneshot::channel();
                proto.call(channel.key(), chan::Close::default().into(), tx);
            }
            Command::ConsumerDropped(released) => release(proto, released),
        }
    }
}

/// A dropped consumer: what it had not read goes back to the queue now (not when the
/// channel closes, which may be never while other handles keep it open), and it is cancelled.
fn release(proto: &mut Proto, released: Released) {
    let Released { queue, channel, tag, items, cancel } = released;
    for item in items {
        give_back(proto, &queue, item);
    }
    if cancel {
        let (tx, _rx) = oneshot::channel();
        proto.call(channel.key(), basic::Cancel { consumer_tag: tag, nowait: false }.into(), tx);
    }
}

/// Returns a delivery nobody will read to the broker (a no-ack delivery is the broker's no
/// more: it is dropped). A stale one is not sent: its channel closed and requeued it.
pub(super) fn give_back(proto: &mut Proto, queue: &Arc<DeliveryQueue>, item: DeliveryItem) {
    if let Ok(delivery) = item
        && !queue.no_ack
    {
        let reject = basic::Reject { delivery_tag: delivery.delivery_tag, requeue: true };
        let _ = proto.send(delivery.channel, reject.into());
    }
}
