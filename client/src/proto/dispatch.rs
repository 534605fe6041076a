//! Incoming channel methods and content: replies to pending calls, deliveries, returns,
//! confirms, flow, cancels and closes.

use lepus_codec::{Content, DecodeError, Frame, Method, ReplyCode, method::basic, method::channel as chan};

use super::{
    Connection, Delivery, Event, Reply, Tokens, Violation,
    channel::{Channel, ChannelState},
    enqueue, slot, violation,
};
use crate::error::{CloseReason, Error, Initiator};

impl<T: Tokens> Connection<T> {
    pub(super) fn channel_method(&mut self, id: u16, method: Method) -> Result<(), Violation> {
        if !self.is_open() {
            // Closing: the close handshake discards everything else.
            return Ok(());
        }
        let Some(channel) = slot(&mut self.channels, id) else {
            return Err(violation(
                ReplyCode::CHANNEL_ERROR,
                format!("{} on channel {id}, which is not open", method.name()),
            ));
        };
        if channel.state == ChannelState::Closing {
            return match method {
                Method::ChannelCloseOk(_) | Method::ChannelClose(_) => {
                    self.channel_closed_by_ok(id, &method);
                    Ok(())
                }
                _ => Ok(()),
            };
        }
        if !channel.assembler.is_idle() || method.has_content() {
            return match channel.assembler.method(method) {
                Ok(_) => Ok(()),
                Err(e) => Err(violation(e.reply_code(), e.to_string())),
            };
        }
        match method {
            Method::ChannelClose(close) => {
                self.queue(&Frame::Method(id, chan::CloseOk {}.into()));
                let reason = CloseReason {
                    reply_code: close.reply_code,
                    reply_text: close.reply_text.to_string(),
                    class_id: close.class_id,
                    method_id: close.method_id,
                    initiator: Initiator::Server,
                };
                tracing::debug!(channel = id, %reason, "the broker closed a channel");
                if let Some(channel) = self.remove_channel(id) {
                    self.fail_channel(channel, &Error::ChannelClosed(reason));
                }
                Ok(())
            }
            Method::ChannelFlow(flow) => {
                enqueue(&mut self.out, &Frame::Method(id, chan::FlowOk { active: flow.active }.into()));
                channel.flow_active = flow.active;
                let key = channel.key;
                self.events.push_back(Event::ChannelFlow(key, flow.active));
                Ok(())
            }
            Method::BasicAck(ack) => self.confirm(id, ack.delivery_tag, ack.multiple, false),
            Method::BasicNack(nack) => self.confirm(id, nack.delivery_tag, nack.multiple, true),
            Method::BasicCancel(cancel) => {
                if let Some(consumer) = channel.consumers.remove(&cancel.consumer_tag) {
                    let tag = cancel.consumer_tag.to_string();
                    self.events.push_back(Event::ConsumerEnded(consumer, Some(Error::CancelledByBroker(tag))));
                }
                if !cancel.nowait {
                    let ok = basic::CancelOk { consumer_tag: cancel.consumer_tag };
                    enqueue(&mut self.out, &Frame::Method(id, ok.into()));
                }
                Ok(())
            }
            reply => self.reply(id, reply),
        }
    }

    /// A reply to a pending call of the channel: `consume-ok`/`cancel-ok` to the consume or
    /// cancel with their tag, anything else to the oldest other pending call. (RabbitMQ
    /// sends consume-ok and cancel-ok from the queue's process, so later replies on the
    /// channel can overtake them; all other replies come in order.)
    fn reply(&mut self, id: u16, method: Method) -> Result<(), Violation> {
        let Some(channel) = slot(&mut self.channels, id) else { return Ok(()) };
        let ids = (method.class_id(), method.method_id());
        let position = match &method {
            Method::BasicConsumeOk(basic::ConsumeOk { consumer_tag })
            | Method::BasicCancelOk(basic::CancelOk { consumer_tag }) => channel
                .rpcs
                .iter()
                .position(|p| p.expect.contains(&ids) && p.tag.as_ref() == Some(consumer_tag))
                .or_else(|| channel.rpcs.iter().position(|p| p.expect.contains(&ids))),
            _ => channel.rpcs.iter().position(|p| p.tag.is_none()),
        };
        let Some(pending) = position.and_then(|at| channel.rpcs.get(at)) else {
            return Err(violation(ReplyCode::COMMAND_INVALID, format!("unexpected {} on channel {id}", method.name())));
        };
        if !pending.expect.contains(&ids) {
            return Err(violation(
                ReplyCode::COMMAND_INVALID,
                format!("unexpected {} on channel {id} (a reply to something else was due)", method.name()),
            ));
        }
        let Some(pending) = position.and_then(|at| channel.rpcs.remove(at)) else { return Ok(()) };
        match &method {
            Method::ChannelOpenOk(_) => channel.state = ChannelState::Open,
            Method::BasicConsumeOk(ok) => {
                if let Some(consumer) = pending.consumer {
                    channel.consumers.insert(ok.consumer_tag.clone(), consumer);
                }
            }
            Method::BasicCancelOk(ok) => {
                if let Some(consumer) = channel.consumers.remove(&ok.consumer_tag) {
                    self.events.push_back(Event::ConsumerEnded(consumer, None));
                }
            }
            _ => {}
        }
        self.events.push_back(Event::Reply(pending.token, Ok(Reply::Method(method))));
        Ok(())
    }

    /// close-ok for our channel.close (or the broker's close crossing ours).
    fn channel_closed_by_ok(&mut self, id: u16, method: &Method) {
        if let Method::ChannelClose(_) = method {
            // Both sides closed at once: answer theirs; ours completes with their close.
            self.queue(&Frame::Method(id, chan::CloseOk {}.into()));
        }
        let Some(mut channel) = self.remove_channel(id) else { return };
        let error = Error::ChannelClosed(CloseReason::client(ReplyCode::REPLY_SUCCESS, "closed by the application"));
        // The close call is the only pending one left: the others failed when it was sent.
        // It is answered after the channel is recorded closed.
        let close = channel.rpcs.pop_front();
        self.fail_channel(channel, &error);
        if let Some(p) = close {
            let ok = Method::ChannelCloseOk(chan::CloseOk {});
            self.events.push_back(Event::Reply(p.token, Ok(Reply::Method(ok))));
        }
    }

    fn confirm(&mut self, id: u16, tag: u64, multiple: bool, nack: bool) -> Result<(), Violation> {
        let Some(channel) = slot(&mut self.channels, id) else { return Ok(()) };
        let Some(tracker) = channel.confirms.as_mut() else {
            return Err(violation(
                ReplyCode::COMMAND_INVALID,
                format!("publisher confirm on channel {id}, not in confirm mode"),
            ));
        };
        let events = &mut self.events;
        tracker
            .confirm(tag, multiple, nack, |token, verdict| events.push_back(Event::Confirm(token, Ok(verdict))))
            .map_err(|text| violation(ReplyCode::COMMAND_INVALID, text))
    }

    /// A content header or body frame for channel `id`, fed to its assembler by `feed`.
    pub(super) fn channel_content(
        &mut self,
        id: u16,
        feed: impl FnOnce(&mut Channel<T>) -> Result<Option<Content>, DecodeError>,
    ) -> Result<(), Violation> {
        if !self.is_open() {
            return Ok(());
        }
        let Some(channel) = slot(&mut self.channels, id) else {
            return Err(violation(ReplyCode::CHANNEL_ERROR, format!("content on channel {id}, which is not open")));
        };
        if channel.state == ChannelState::Closing {
            return Ok(());
        }
        match feed(channel) {
            Ok(Some(content)) => self.content(id, content),
            Ok(None) => Ok(()),
            Err(DecodeError::MessageTooLarge { size, max }) => {
                self.oversized(id, size, max);
                Ok(())
            }
            Err(e) => Err(violation(e.reply_code(), e.to_string())),
        }
    }

    /// A whole message arrived on channel `id`.
    fn content(&mut self, id: u16, content: Content) -> Result<(), Violation> {
        let Some(channel) = slot(&mut self.channels, id) else { return Ok(()) };
        match content.method {
            Method::BasicDeliver(deliver) => {
                let Some(consumer) = channel.consumers.get(&deliver.consumer_tag) else {
                    return Err(violation(
                        ReplyCode::COMMAND_INVALID,
                        format!("delivery for unknown consumer tag {:?} on channel {id}", deliver.consumer_tag),
                    ));
                };
                let delivery = Delivery {
                    channel: channel.key,
                    consumer_tag: deliver.consumer_tag,
                    delivery_tag: deliver.delivery_tag,
                    redelivered: deliver.redelivered,
                    exchange: deliver.exchange,
                    routing_key: deliver.routing_key,
                    properties: content.header.properties,
                    body: content.body,
                };
                self.events.push_back(Event::Delivery(consumer.clone(), Ok(delivery)));
                Ok(())
            }
            Method::BasicReturn(ret) => {
                let key = channel.key;
                let content = Content { method: Method::BasicReturn(ret.clone()), ..content };
                match channel.confirms.as_mut() {
                    Some(tracker) => tracker.returned(content, &ret.exchange, &ret.routing_key),
                    None => self.events.push_back(Event::Returned(key, Box::new(content))),
                }
                Ok(())
            }
            Method::BasicGetOk(_) => {
                // The oldest pending call that is not a consume or cancel must be the get.
                let position = channel.rpcs.iter().position(|p| p.tag.is_none());
                let is_get = position.and_then(|at| channel.rpcs.get(at)).is_some_and(|p| p.expect.contains(&(60, 71)));
                let Some(pending) = position.filter(|_| is_get).and_then(|at| channel.rpcs.remove(at)) else {
                    return Err(violation(
                        ReplyCode::COMMAND_INVALID,
                        format!("unexpected basic.get-ok on channel {id}"),
                    ));
                };
                self.events.push_back(Event::Reply(pending.token, Ok(Reply::Get(Box::new(content)))));
                Ok(())
            }
            other => Err(violation(ReplyCode::COMMAND_INVALID, format!("{} cannot carry content", other.name()))),
        }
    }

    /// A message over the inbound cap: it is rejected back to its queue (never lost), and
    /// whoever waited for it gets the error.
    fn oversized(&mut self, id: u16, size: u64, max: u64) {
        let Some(channel) = slot(&mut self.channels, id) else { return };
        let error = Error::Decode(DecodeError::MessageTooLarge { size, max });
        tracing::warn!(channel = id, size, max, "rejecting a message over the inbound size cap");
        match channel.assembler.take_rejected() {
            Some(Method::BasicDeliver(d)) => {
                let consumer = channel.consumers.get(&d.consumer_tag).cloned();
                let reject = basic::Reject { delivery_tag: d.delivery_tag, requeue: true };
                enqueue(&mut self.out, &Frame::Method(id, reject.into()));
                if let Some(consumer) = consumer {
                    self.events.push_back(Event::Delivery(consumer, Err(error)));
                }
            }
            Some(Method::BasicGetOk(g)) => {
                let pending = channel.rpcs.pop_front();
                let reject = basic::Reject { delivery_tag: g.delivery_tag, requeue: true };
                enqueue(&mut self.out, &Frame::Method(id, reject.into()));
                if let Some(p) = pending {
                    self.events.push_back(Event::Reply(p.token, Err(error)));
                }
            }
            // A returned message is ours already; nothing waits for an oversized one.
            _ => {}
        }
    }
}
