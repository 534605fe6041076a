//! State of one open channel: pending synchronous calls, content being assembled,
//! consumers, publisher confirms and flow.

use std::collections::{HashMap, VecDeque};

use lepus_codec::{ContentAssembler, Method, ShortStr};

use super::{Tokens, confirms::ConfirmTracker};

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
    pub(crate) token: T::Reply,
    /// For basic.consume: the consumer to register under the tag in consume-ok.
    pub(crate) consumer: Option<T::Consumer>,
    /// For basic.consume and basic.cancel: the consumer tag. RabbitMQ sends their replies
    /// from the queue's process, so they can be overtaken by later replies: they are
    /// matched by tag, not by position.
    pub(crate) tag: Option<ShortStr>,
}

impl<T: Tokens> Pending<T> {
    pub(crate) fn new(expect: &'static [(u16, u16)], token: T::Reply) -> Self {
        Pending { expect, token, consumer: None, tag: None }
    }
}

pub(crate) struct Channel<T: Tokens> {
    pub(crate) key: ChannelKey,
    pub(crate) state: ChannelState,
    pub(crate) rpcs: VecDeque<Pending<T>>,
    pub(crate) assembler: ContentAssembler,
    pub(crate) consumers: HashMap<ShortStr, T::Consumer>,
    /// Present once confirm.select was sent.
    pub(crate) confirms: Option<ConfirmTracker<T::Confirm>>,
    /// Whether the broker lets us publish (channel.flow).
    pub(crate) flow_active: bool,
    /// Transactional mode (tx.select sent): confirm-mode publishes are refused.
    pub(crate) tx: bool,
}

impl<T: Tokens> Channel<T> {
    pub(crate) fn new(key: ChannelKey, max_message_size: u64) -> Self {
        Channel {
            key,
            state: ChannelState::Opening,
            rpcs: VecDeque::new(),
            assembler: ContentAssembler::new(max_message_size),
            consumers: HashMap::new(),
            confirms: None,
            flow_active: true,
            tx: false,
        }
    }
}

/// The replies a synchronous method waits for; `None` for asynchronous methods and for
/// `nowait` requests.
pub(crate) fn expected_reply(method: &Method) -> Option<&'static [(u16, u16)]> {
    use Method as M;
    Some(match method {
        M::ChannelOpen(_) => &[(20, 11)],
        M::ChannelFlow(_) => &[(20, 21)],
        M::ChannelClose(_) => &[(20, 41)],
        M::ExchangeDeclare(m) if !m.nowait => &[(40, 11)],
        M::ExchangeDelete(m) if !m.nowait => &[(40, 21)],
        M::ExchangeBind(m) if !m.nowait => &[(40, 31)],
        M::ExchangeUnbind(m) if !m.nowait => &[(40, 51)],
        M::QueueDeclare(m) if !m.nowait => &[(50, 11)],
        M::QueueBind(m) if !m.nowait => &[(50, 21)],
        M::QueuePurge(m) if !m.nowait => &[(50, 31)],
        M::QueueDelete(m) if !m.nowait => &[(50, 41)],
        M::QueueUnbind(_) => &[(50, 51)],
        M::BasicQos(_) => &[(60, 11)],
        M::BasicConsume(m) if !m.nowait => &[(60, 21)],
        M::BasicCancel(m) if !m.nowait => &[(60, 31)],
        M::BasicGet(_) => &[(60, 71), (60, 72)],
        M::BasicRecover(_) => &[(60, 111)],
        M::TxSelect(_) => &[(90, 11)],
        M::TxCommit(_) => &[(90, 21)],
        M::TxRollback(_) => &[(90, 31)],
        M::ConfirmSelect(m) if !m.nowait => &[(85, 11)],
        M::ConnectionUpdateSecret(_) => &[(10, 71)],
        _ => return None,
    })
}
