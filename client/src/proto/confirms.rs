//! Publisher-confirm bookkeeping for one channel: which publish each broker ack/nack covers,
//! and which publish a `basic.return` belongs to.
//!
//! Delivery tags are assigned in wire order from 1 and are contiguous, so the outstanding
//! publishes live in a deque indexed by `tag - base`: a single ack is O(1), a multiple ack
//! pops a prefix. A resolved slot in the middle stays as a hole until the prefix before it
//! is resolved.

use std::collections::VecDeque;

use lepus_codec::{Content, ShortStr};

/// Returns kept while no mandatory publish matches them. RabbitMQ returns only what was
/// published mandatory, so these are a broker's slip or a hostile peer's; beyond this the
/// oldest is dropped (and logged), so such a peer cannot grow memory without limit.
const MAX_UNMATCHED_RETURNS: usize = 256;

/// What a mandatory publish was sent with, to recognise its `basic.return` (returns carry no
/// delivery tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnKey {
    /// Exchange published to.
    pub exchange: ShortStr,
    /// Routing key.
    pub routing_key: ShortStr,
    /// Body size.
    pub body_size: u64,
}

/// The broker's verdict on one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    /// The broker took responsibility for the message.
    Ack,
    /// The broker could not take the message (internal error, queue overflow with
    /// `reject-publish`, ...).
    Nack,
    /// A mandatory message that no queue was bound for; the broker returned it (and then
    /// acked it). The message is given back whole.
    Returned(Box<Content>),
}

struct Slot<C> {
    token: Option<C>,
    /// Boxed: most publishes are not mandatory, and a slot is moved twice per publish.
    mandatory: Option<Box<ReturnKey>>,
    returned: Option<Box<Content>>,
}

/// Outstanding confirms of one channel.
pub(crate) struct ConfirmTracker<C> {
    /// Tag of `slots[0]`.
    base: u64,
    /// Next tag to assign.
    next: u64,
    slots: VecDeque<Slot<C>>,
    /// Returns whose publish could not be matched (yet); resolved with the next ack.
    unmatched_returns: VecDeque<Box<Content>>,
}

impl<C> ConfirmTracker<C> {
    pub(crate) fn new() -> Self {
        ConfirmTracker { base: 1, next: 1, slots: VecDeque::new(), unmatched_returns: VecDeque::new() }
    }

    /// Publishes sent and not yet confirmed.
    pub(crate) fn outstanding(&self) -> usize {
        self.slots.iter().filter(|s| s.token.is_some()).count()
    }

    /// Returns kept that matched no publish (yet).
    pub(crate) fn unmatched_returns(&self) -> usize {
        self.unmatched_returns.len()
    }

    /// Registers the next publish (in wire order) and returns its delivery tag.
    pub(crate) fn push(&mut self, token: C, mandatory: Option<Box<ReturnKey>>) -> u64 {
        let tag = self.next;
        self.next += 1;
        self.slots.push_back(Slot { token: Some(token), mandatory, returned: None });
        tag
    }

    /// Registers a publish nobody waits for: it takes the next tag, nothing more.
    pub(crate) fn push_untracked(&mut self) {
        self.next += 1;
        if self.slots.is_empty() {
            self.base = self.next;
        } else {
            self.slots.push_back(Slot { token: None, mandatory: None, returned: None });
        }
    }

    /// The highest tag handed out so far (0 if none).
    pub(crate) fn last_tag(&self) -> u64 {
        self.next - 1
    }

    /// A `basic.return` arrived: attach it to the oldest outstanding mandatory publish it
    /// matches. Returns come before the ack of the same publish.
    pub(crate) fn returned(&mut self, content: Content, exchange: &ShortStr, routing_key: &ShortStr) {
        let body_size = content.header.body_size;
        let slot = self.slots.iter_mut().find(|s| {
            s.token.is_some()
                && s.returned.is_none()
                && s.mandatory.as_ref().is_some_and(|k| {
                    k.exchange == *exchange && k.routing_key == *routing_key && k.body_size == body_size
                })
        });
        if let Some(slot) = slot {
            slot.returned = Some(Box::new(content));
            return;
        }
        if self.unmatched_returns.len() >= MAX_UNMATCHED_RETURNS {
            self.unmatched_returns.pop_front();
            tracing::warn!(kept = MAX_UNMATCHED_RETURNS, "dropped a returned message that matches no publish");
        }
        self.unmatched_returns.push_back(Box::new(content));
    }

    /// Applies an ack (`nack == false`) or nack for `tag`, `multiple` honoured. Resolved
    /// publishes are passed to `resolve` in tag order. Fails on tag 0 or a tag beyond the
    /// last one sent (M7): the caller closes the connection.
    pub(crate) fn confirm(
        &mut self,
        tag: u64,
        multiple: bool,
        nack: bool,
        mut resolve: impl FnMut(C, Confirmation),
    ) -> Result<(), String> {
        if tag == 0 && !multiple || tag >= self.next {
            return Err(format!("confirm for delivery tag {tag}, but the last tag sent is {}", self.last_tag()));
        }
        let verdict = |slot: &mut Slot<C>, unmatched: &mut VecDeque<Box<Content>>| {
            if nack {
                Confirmation::Nack
            } else if let Some(content) = slot.returned.take() {
                Confirmation::Returned(content)
            } else if slot.mandatory.is_some()
                && let Some(content) = unmatched.pop_front()
            {
                Confirmation::Returned(content)
            } else {
                Confirmation::Ack
            }
        };
        if multiple {
            // `multiple` with tag 0 means "everything outstanding" (RabbitMQ never sends it,
            // but the spec allows it).
            let upto = if tag == 0 { self.last_tag() } else { tag };
            while self.base <= upto {
                let Some(mut slot) = self.slots.pop_front() else { break };
                self.base += 1;
                if let Some(token) = slot.token.take() {
                    let v = verdict(&mut slot, &mut self.unmatched_returns);
                    resolve(token, v);
                }
            }
        } else if tag >= self.base {
            // tag < next and tag >= base, so the index is inside the deque.
            let index = (tag - self.base) as usize;
            if let Some(slot) = self.slots.get_mut(index)
                && let Some(token) = slot.token.take()
            {
                let v = verdict(slot, &mut self.unmatched_returns);
                resolve(token, v);
            }
        }
        // Drop the resolved prefix.
        while self.slots.front().is_some_and(|s| s.token.is_none()) {
            self.slots.pop_front();
            self.base += 1;
        }
        Ok(())
    }

    /// The channel or connection closed: every outstanding publish gets the error.
    pub(crate) fn fail_all(&mut self, mut resolve: impl FnMut(C)) {
        for slot in self.slots.drain(..) {
            if let Some(token) = slot.token {
                resolve(token);
            }
        }
        self.base = self.next;
        self.unmatched_returns.clear();
    }
}
