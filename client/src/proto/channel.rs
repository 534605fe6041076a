//! State of one open channel: pending synchronous calls, content being assembled,
//! consumers, publisher confirms and flow.

use std::collections::{HashMap, VecDeque};

use lepus_codec::{ContentAssembler, Method, ShortStr};

use super::{Event, Reply, Tokens, confirms::ConfirmTracker};
use crate::error::Error;

/// Identifies one incarnation of a channel: ids are reused after close-ok, epochs never,
/// so a delivery tag from a closed channel can never be acked on its successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    /// The channel number on the wire.
    pub id: u16,
    /// Unique per connection for every channel opened.
    pub epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChannelState {
    /// channel.open sent, open-ok not yet received.
    Opening,
    Open,
    /// We sent channel.close; everything but close/close-ok is discarded until close-ok.
    Closing,
}

/// A synchronous method waiting for its reply.
pub(crate) struct Pending<T: Tokens> {
    /// Acceptable replies as (class id, method id).
    pub(crate) expect: &'static [(u16, u16)],
    /// Who waits for the reply; `None` for a call the state machine made itself.
    pub(crate) token: Option<T::Reply>,
    /// For basic.consume: the consumer to register under the tag in consume-ok.
    pub(crate) consumer: Option<T::Consumer>,
    /// For basic.consume and basic.cancel: the consumer tag. RabbitMQ sends their replies
    /// from the queue's process, so they can be overtaken by later replies: they are
    /// matched by tag, not by position.
    pub(crate) tag: Option<ShortStr>,
}

impl<T: Tokens> Pending<T> {
    pub(crate) fn new(expect: &'static [(u16, u16)], token: T::Reply) -> Self {
        Pending { expect, token: Some(token), consumer: None, tag: None }
    }

    /// A call the state machine makes itself (a cancel nobody waits for).
    pub(crate) fn internal(expect: &'static [(u16, u16)], tag: ShortStr) -> Self {
        Pending { expect, token: None, consumer: None, tag: Some(tag) }
    }

    /// Gives the reply (or error) to whoever waits for it.
    pub(crate) fn answer(self, events: &mut VecDeque<Event<T>>, result: Result<Reply, Error>) {
        if let Some(token) = self.token {
            events.push_back(Event::Reply(token, result));
        }
    }
}

pub(crate) struct Channel<T: Tokens> {
    pub(crate) key: ChannelKey,
    /// The driver's handle on this channel, carried by the channel's events.
    pub(crate) token: T::Channel,
    pub(crate) state: ChannelState,
    pub(crate) rpcs: VecDeque<Pending<T>>,
    pub(crate) assembler: ContentAssembler,
    pub(crate) consumers: HashMap<ShortStr, T::Consumer>,
    /// Present once confirm.select was sent.
    pub(crate) confirms: Option<ConfirmTracker<T::Confirm>>,
    /// Whether the broker lets us publish (channel.flow).
    pub(crate) flow_active: bool,
    /// Publish frames that arrived while flow was off, in order; sent at flow(true).
    pub(crate) held: Vec<bytes::Bytes>,
    /// Transactional mode (tx.select sent): confirm-mode publishes are refused.
    pub(crate) tx: bool,
}

impl<T: Tokens> Channel<T> {
    pub(crate) fn new(key: ChannelKey, token: T::Channel, max_message_size: u64) -> Self {
        Channel {
            key,
            token,
            state: ChannelState::Opening,
            rpcs: VecDeque::new(),
            assembler: ContentAssembler::new(max_message_size),
            consumers: HashMap::new(),
            confirms: None,
            flow_active: true,
            held: Vec::new(),
            tx: false,
        }
    }
}

/// The replies a synchronous method waits for; `None` for asynchronous methods and for
/// `nowait` requests.
pub(crate) fn expected_reply(method: &Method) -> Option<&'static [(u16, u16)]> {
    use Method as M;
    use lepus_codec::method::{basic, channel, confirm, connection, exchange, queue, tx};
    Some(match method {
        M::ChannelOpen(_) => &[channel::OpenOk::ID],
        M::ChannelFlow(_) => &[channel::FlowOk::ID],
        M::ChannelClose(_) => &[channel::CloseOk::ID],
        M::ExchangeDeclare(m) if !m.nowait => &[exchange::DeclareOk::ID],
        M::ExchangeDelete(m) if !m.nowait => &[exchange::DeleteOk::ID],
        M::ExchangeBind(m) if !m.nowait => &[exchange::BindOk::ID],
        M::ExchangeUnbind(m) if !m.nowait => &[exchange::UnbindOk::ID],
        M::QueueDeclare(m) if !m.nowait => &[queue::DeclareOk::ID],
        M::QueueBind(m) if !m.nowait => &[queue::BindOk::ID],
        M::QueuePurge(m) if !m.nowait => &[queue::PurgeOk::ID],
        M::QueueDelete(m) if !m.nowait => &[queue::DeleteOk::ID],
        M::QueueUnbind(_) => &[queue::UnbindOk::ID],
        M::BasicQos(_) => &[basic::QosOk::ID],
        M::BasicConsume(m) if !m.nowait => &[basic::ConsumeOk::ID],
        M::BasicCancel(m) if !m.nowait => &[basic::CancelOk::ID],
        M::BasicGet(_) => &[basic::GetOk::ID, basic::GetEmpty::ID],
        M::BasicRecover(_) => &[basic::RecoverOk::ID],
        M::TxSelect(_) => &[tx::SelectOk::ID],
        M::TxCommit(_) => &[tx::CommitOk::ID],
        M::TxRollback(_) => &[tx::RollbackOk::ID],
        M::ConfirmSelect(m) if !m.nowait => &[confirm::SelectOk::ID],
        M::ConnectionUpdateSecret(_) => &[connection::UpdateSecretOk::ID],
        _ => return None,
    })
}
