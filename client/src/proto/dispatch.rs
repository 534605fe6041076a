//! Incoming channel methods and content: replies to pending calls, deliveries, returns,
//! confirms, flow, cancels and closes.

use lepus_codec::{Content, DecodeError, Frame, Method, ReplyCode, method::basic, method::channel as chan};

use super::{
    Connection, Delivery, Event, Reply, Tokens, Violation,
    channel::{Channel, ChannelState, Pending},
    enqueue_control, slot, violation,
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
                self.queue_control(&Frame::Method(id, chan::CloseOk {}.into()));
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
                enqueue_control(&mut self.out, &Frame::Method(id, chan::FlowOk { active: flow.active }.into()));
                channel.flow_active = flow.active;
                if flow.active {
                    // After the flow-ok: what waited goes out now, in order.
                    for segment in channel.held.drain(..) {
                        self.out.segment(segment);
                    }
                }
                self.events.push_back(Event::ChannelFlow(channel.token.clone(), flow.active));
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
                    enqueue_control(&mut self.out, &Frame::Method(id, ok.into()));
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
        let Some(mut pending) = position.and_then(|at| channel.rpcs.remove(at)) else { return Ok(()) };
        match &method {
            Method::ChannelOpenOk(_) => channel.state = ChannelState::Open,
            Method::BasicConsumeOk(ok) => {
                if let Some(consumer) = pending.consumer.take() {
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
        pending.answer(&mut self.events, Ok(Reply::Method(method)));
        Ok(())
    }

    /// close-ok for our channel.close (or the broker's close crossing ours).
    fn channel_closed_by_ok(&mut self, id: u16, method: &Method) {
        if let Method::ChannelClose(_) = method {
            // Both sides closed at once: answer theirs; ours completes with their close.
            self.queue_control(&Frame::Method(id, chan::CloseOk {}.into()));
        }
        let Some(mut channel) = self.remove_channel(id) else { return };
        let error = Error::ChannelClosed(CloseReason::client(ReplyCode::REPLY_SUCCESS, "closed by the application"));
        // The close call is the only pending one left: the others failed when it was sent.
        // It is answered after the channel is recorded closed.
        let close = channel.rpcs.pop_front();
        self.fail_channel(channel, &error);
        if let Some(p) = close {
            let ok = Method::ChannelCloseOk(chan::CloseOk {});
            p.answer(&mut self.events, Ok(Reply::Method(ok)));
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
            Err(e @ DecodeError::MessageTooLarge { .. }) => {
                self.refused(id, Error::Decode(e));
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
                let content = Content { method: Method::BasicReturn(ret.clone()), ..content };
                match channel.confirms.as_mut() {
                    Some(tracker) => tracker.returned(content, &ret.exchange, &ret.routing_key),
                    None => self.events.push_back(Event::Returned(channel.token.clone(), Box::new(content))),
                }
                Ok(())
            }
            Method::BasicGetOk(_) => {
                let Some(pending) = take_pending_get(channel) else {
                    return Err(violation(
                        ReplyCode::COMMAND_INVALID,
                        format!("unexpected basic.get-ok on channel {id}"),
                    ));
                };
                pending.answer(&mut self.events, Ok(Reply::Get(Box::new(content))));
                Ok(())
            }
            other => Err(violation(ReplyCode::COMMAND_INVALID, format!("{} cannot carry content", other.name()))),
        }
    }

    /// A message this client cannot take (over the inbound size cap, or a header whose
    /// tables are nested past the limit): it is rejected back to its queue (never lost), and
    /// whoever waited for it gets `error`. A consumer that got it is cancelled first, so the
    /// broker does not hand the message straight back to it in a loop: its stream yields the
    /// error, then the deliveries already on their way, then ends.
    pub(super) fn refused(&mut self, id: u16, error: Error) {
        let Some(channel) = slot(&mut self.channels, id) else { return };
        tracing::warn!(channel = id, %error, "rejecting a message this client cannot take");
        match channel.assembler.take_rejected() {
            Some(Method::BasicDeliver(d)) => {
                let consumer = channel.consumers.get(&d.consumer_tag).cloned();
                let cancelling = channel.rpcs.iter().any(|p| p.tag.as_ref() == Some(&d.consumer_tag));
                if consumer.is_some() && !cancelling {
                    let cancel = basic::Cancel { consumer_tag: d.consumer_tag.clone(), nowait: false };
                    enqueue_control(&mut self.out, &Frame::Method(id, cancel.into()));
                    channel.rpcs.push_back(Pending::internal(&[basic::CancelOk::ID], d.consumer_tag));
                }
                let reject = basic::Reject { delivery_tag: d.delivery_tag, requeue: true };
                enqueue_control(&mut self.out, &Frame::Method(id, reject.into()));
                if let Some(consumer) = consumer {
                    self.events.push_back(Event::Delivery(consumer, Err(error)));
                }
            }
            Some(Method::BasicGetOk(g)) => {
                let pending = take_pending_get(channel);
                let reject = basic::Reject { delivery_tag: g.delivery_tag, requeue: true };
                enqueue_control(&mut self.out, &Frame::Method(id, reject.into()));
                if let Some(p) = pending {
                    p.answer(&mut self.events, Err(error));
                }
            }
            // A returned message is ours already; nothing waits for a refused one.
            _ => {}
        }
    }

    /// A content header whose properties could not be read for a limit of ours (see
    /// [`lepus_codec::header_frame_prefix`]): the message is refused like an oversized one.
    pub(super) fn header_refused(&mut self, id: u16, body_size: u64, error: DecodeError) -> Result<(), Violation> {
        if !self.is_open() {
            return Ok(());
        }
        let Some(channel) = slot(&mut self.channels, id) else {
            return Err(violation(ReplyCode::CHANNEL_ERROR, format!("content on channel {id}, which is not open")));
        };
        if channel.state == ChannelState::Closing {
            return Ok(());
        }
        channel.assembler.refuse_header(body_size).map_err(|e| violation(e.reply_code(), e.to_string()))?;
        self.refused(id, Error::Decode(error));
        Ok(())
    }
}

/// The `basic.get` a get-ok answers: the oldest pending call that is not a consume or cancel
/// (those are matched by tag, see `reply`), if it is a get.
fn take_pending_get<T: Tokens>(channel: &mut Channel<T>) -> Option<super::channel::Pending<T>> {
    let at = channel.rpcs.iter().position(|p| p.tag.is_none())?;
    if !channel.rpcs.get(at)?.expect.contains(&basic::GetOk::ID) {
        return None;
    }
    channel.rpcs.remove(at)
}
