//! Applying the handles' commands to the state machine, or holding them back while a
//! recovery's replay runs.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use lepus_codec::{
    Method,
    method::{basic, channel as chan},
};

use super::{Engine, Proto};
use crate::{
    command::{Command, ReplyTo},
    delivery_queue::{DeliveryItem, DeliveryQueue},
};

impl Engine {
    /// A command from a handle. While the connection is down or a replay runs, everything
    /// that touches channels waits (in order) until the replay is done; a close is applied
    /// at once, and a settlement too (its tag is either still valid, or stale and refused).
    pub(crate) fn command(&mut self, cmd: Command, now: Instant) {
        // A state machine that has just closed (an I/O error read this turn) has not yet
        // told the driver, so recovery has not started: a command applied now would fail
        // with the bare error of the loss. Held back, it is applied after recovery, or
        // answered by `shutdown` if there is none.
        let holding = self.recovery.is_some() || self.replay.is_some() || self.proto.is_closed();
        if holding && !matches!(cmd, Command::Close { .. } | Command::Settle { .. }) {
            let limits = &self.shared.limits;
            let limit = if limits.fail_fast_while_down { Duration::ZERO } else { limits.recovery_wait };
            self.parked.push(now, limit, cmd);
            return;
        }
        self.apply(cmd, now);
    }

    pub(super) fn apply(&mut self, cmd: Command, now: Instant) {
        let proto = &mut self.proto;
        match cmd {
            Command::OpenChannel { channel, reply } => {
                let token = ReplyTo::Open { tx: Some(reply), channel: channel.clone() };
                match proto.open_channel(token, channel.clone()) {
                    Ok(key) => channel.set_key(key),
                    Err((e, token, channel)) => {
                        channel.closed(e.clone());
                        if let ReplyTo::Open { tx: Some(tx), .. } = token {
                            let _ = tx.send(Err(e));
                        }
                    }
                }
            }
            Command::Call { channel, mut method, reply } => {
                self.topology.translate(&mut method);
                let record = records(&method).then(|| (channel.clone(), method.clone()));
                proto.call(channel.key(), method, ReplyTo::Call { tx: reply, record });
            }
            Command::Consume { channel, mut consume, reply, queue } => {
                consume.queue = self.topology.current(&consume.queue);
                let token = ReplyTo::Consume {
                    tx: Some(reply),
                    channel: channel.clone(),
                    consume: consume.clone(),
                    queue: queue.clone(),
                };
                proto.consume(channel.key(), consume, token, queue);
            }
            Command::Settle { key, method } => {
                if let Err(e) = proto.send(key, method) {
                    tracing::debug!(error = %e, "settlement not sent: its channel is gone");
                }
            }
            Command::Publish { channel, frames, confirm, budget } => {
                // Given back together at the end of the turn (see `Engine::pump`).
                self.budget_taken += budget as usize;
                if let Err((e, Some(token))) = proto.publish(channel.key(), frames, confirm) {
                    let _ = token.tx.send(Err(e));
                }
            }
            Command::UpdateSecret { secret, reason, reply } => {
                proto.update_secret(secret, &reason, ReplyTo::Call { tx: reply, record: None });
            }
            Command::Close { code, text, done } => {
                self.closing = true;
                self.app_close = Some(crate::Error::ConnectionClosed(crate::CloseReason::client(code, &text)));
                self.close_waiters.push(done);
                proto.close(now, code, &text, Some(self.options.get_close_timeout()));
            }
            Command::ChannelDropped { channel } => {
                proto.call(channel.key(), chan::Close::default().into(), ReplyTo::Nobody);
            }
            Command::ConsumerDropped(released) => {
                let crate::command::Released { queue, channel, tag, items, cancel } = released;
                for item in items {
                    give_back(proto, &queue, item);
                }
                self.topology.consumer_ended(channel.id, &tag);
                if cancel {
                    proto.call(
                        channel.key(),
                        basic::Cancel { consumer_tag: tag, nowait: false }.into(),
                        ReplyTo::Nobody,
                    );
                }
            }
        }
    }
}

/// Whether a call's success changes what recovery re-declares.
fn records(method: &Method) -> bool {
    matches!(
        method,
        Method::ExchangeDeclare(_)
            | Method::ExchangeDelete(_)
            | Method::ExchangeBind(_)
            | Method::ExchangeUnbind(_)
            | Method::QueueDeclare(_)
            | Method::QueueDelete(_)
            | Method::QueueBind(_)
            | Method::QueueUnbind(_)
            | Method::BasicQos(_)
            | Method::ConfirmSelect(_)
            | Method::TxSelect(_)
    )
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
