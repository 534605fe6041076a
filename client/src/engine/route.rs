//! Routing the state machine's events to the handles' waiters and shared state, and
//! recording what the broker confirmed for recovery.
//!
//! When the state machine closes it emits `Closed`, then the failures of everything still
//! pending. If the connection is to be recovered, those failures mean "the connection was
//! lost", not "this ended": channels and consumers are kept for reopening, calls and
//! confirms that were under way fail with [`Error::ConnectionLost`] (their outcome is
//! unknown), or confirms are kept for republishing.

use std::{sync::Arc, time::Instant};

use lepus_codec::{Method, method::queue};

use super::{Engine, Proto, apply::give_back};
use crate::{
    Error,
    command::{CallResult, DriverTokens, ReplyTo},
    delivery_queue::{DeliveryItem, DeliveryQueue, Pushed},
    proto::{Event, Reply},
};

impl Engine {
    pub(super) fn event(&mut self, event: Event<DriverTokens>, now: Instant) {
        match event {
            Event::Connected => {
                self.shared.connected(self.proto.tuning(), self.proto.server_properties().clone());
                if let Some(tx) = self.connected.take() {
                    let _ = tx.send(Ok(()));
                }
                if self.recovery.is_some() {
                    self.reconnected(now);
                }
            }
            Event::Reply(reply_to, result) => self.reply(reply_to, result, now),
            Event::Confirm(token, result) => match result {
                Err(e) if self.failing && self.recovery.is_some() => {
                    match (token.resend.is_some(), self.recovery.as_mut()) {
                        (true, Some(recovery)) => recovery.republish.push(token),
                        _ => self.held.failed(token, Error::ConnectionLost(Box::new(e))),
                    }
                }
                Ok(confirmation) => {
                    if let Some(metrics) = self.shared.metrics() {
                        crate::metrics::confirmation(metrics, &confirmation);
                    }
                    self.held.answered(token, confirmation);
                }
                Err(e) => self.held.failed(token, e),
            },
            Event::Delivery(queue, item) => deliver(&mut self.proto, &mut self.held, &queue, item),
            Event::ConsumerEnded(queue, reason) => {
                let lost = self.failing && self.recovery.is_some();
                let reopening = self.replay.as_ref().is_some_and(|r| r.reopens(queue.channel_id));
                if (lost || reopening) && self.topology.has_consumer(queue.channel_id, &queue.tag) {
                    // Re-established by the replay: its stream carries on.
                    return;
                }
                self.topology.consumer_ended(queue.channel_id, &queue.tag);
                if let Some(waker) = queue.end(reason) {
                    self.held.wake(waker);
                }
            }
            Event::Returned(channel, content) => channel.returned(*content),
            Event::ChannelClosed(channel, error) => self.channel_closed(&channel, error, now),
            Event::ChannelFlow(channel, active) => channel.set_flow(active),
            Event::Blocked(reason) => self.shared.set_blocked(Some(reason)),
            Event::Unblocked => self.shared.set_blocked(None),
            Event::Closed(error) => self.closed(error, now),
        }
    }

    fn reply(&mut self, reply_to: ReplyTo, result: CallResult, now: Instant) {
        let lost = |e: Error| Error::ConnectionLost(Box::new(e));
        let failing = self.failing && self.recovery.is_some();
        match reply_to {
            ReplyTo::Call { tx, record } => {
                let result = match result {
                    // The broker closed the connection because of this very call: its
                    // outcome is known (refused), whatever recovery does next.
                    Err(e) if failing && caused_by(&e, record.as_ref().map(|(_, request)| request)) => Err(e),
                    Err(e) if failing => Err(lost(e)),
                    Ok(reply) => {
                        if let Some((channel, request)) = record {
                            self.record(channel.id, &request, &reply);
                        }
                        Ok(reply)
                    }
                    Err(e) => Err(e),
                };
                let _ = tx.send(result);
            }
            ReplyTo::Open { tx, channel } => {
                if result.is_ok() {
                    self.channels.insert(channel.id, channel.clone());
                    self.topology.channel_opened(channel.id);
                }
                match tx {
                    Some(tx) => {
                        let _ = tx.send(result.map_err(|e| if failing { lost(e) } else { e }));
                    }
                    None => self.replay_reply(result, now),
                }
            }
            ReplyTo::Consume { tx, channel, consume, queue } => {
                if let Ok(Reply::Method(Method::BasicConsumeOk(_))) = &result {
                    self.topology.consumer_started(channel.id, &consume, queue);
                }
                match tx {
                    Some(tx) => {
                        let _ = tx.send(result.map_err(|e| if failing { lost(e) } else { e }));
                    }
                    None => self.replay_reply(result, now),
                }
            }
            ReplyTo::Replay => self.replay_reply(result, now),
            ReplyTo::Nobody => {}
        }
    }

    /// Records a call the broker confirmed (a `nowait` one when it was sent).
    fn record(&mut self, channel: u64, request: &Method, reply: &Reply) {
        match (request, reply) {
            (_, Reply::Method(m)) => self.topology.record(channel, request, m),
            (Method::QueueDeclare(d), Reply::Sent) => {
                let ok = queue::DeclareOk { queue: d.queue.clone(), message_count: 0, consumer_count: 0 };
                self.topology.record(channel, request, &ok.into());
            }
            (_, Reply::Sent) => self.topology.record(channel, request, request),
            (_, Reply::Get(_)) => {}
        }
    }

    fn channel_closed(&mut self, channel: &Arc<crate::channel_shared::ChannelShared>, error: Error, now: Instant) {
        if self.replay.as_ref().is_some_and(|r| r.is_own_channel(channel)) {
            // The replay's own channel: a declaration failed on it (reported already).
            self.replay_channel_closed();
            return;
        }
        let lost = self.failing && self.recovery.is_some();
        if lost && self.channels.contains_key(&channel.id) {
            // Reopened by the replay, as the same channel.
            channel.lost();
            return;
        }
        if !lost && self.channel_recoverable(&error) && self.channels.contains_key(&channel.id) {
            self.recover_channel(channel, &error, now);
            return;
        }
        self.channel_failed(channel, error);
    }

    /// The state machine closed. Decides whether the connection is recovered; what follows
    /// in this turn (the failures of everything pending) is routed accordingly.
    fn closed(&mut self, error: Error, now: Instant) {
        self.failing = true;
        if let Some(tx) = self.connected.take() {
            // The first handshake failed: `connect` reports it; nothing to recover.
            let _ = tx.send(Err(error.clone()));
            return;
        }
        if self.recovery.is_some() {
            // A reconnection attempt (or its replay) failed: the next one follows.
            self.attempt_failed(&error, now);
            return;
        }
        if self.should_recover(&error) {
            self.begin_recovery(error, now);
        } else {
            self.shared.closed(&error);
        }
    }
}

/// Whether the connection close `error` names `request`'s method as its cause.
fn caused_by(error: &Error, request: Option<&Method>) -> bool {
    match (error, request) {
        (Error::ConnectionClosed(reason), Some(request)) => {
            reason.class_id != 0 && (reason.class_id, reason.method_id) == request.id()
        }
        _ => false,
    }
}

/// Queues a delivery for its consumer; the consumer is woken once the whole burst is in.
fn deliver(proto: &mut Proto, held: &mut super::held::Held, queue: &Arc<DeliveryQueue>, item: DeliveryItem) {
    match queue.push(item) {
        Pushed::Queued(Some(waker)) => held.wake(waker),
        Pushed::Queued(None) => {}
        // The consumer was dropped (its cancel is on its way): back to the broker.
        Pushed::Refused(item) => give_back(proto, queue, item),
    }
}
