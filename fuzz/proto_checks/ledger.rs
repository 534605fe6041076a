//! Every token handed to the connection, and what came back for it: the promises of
//! `lepus::proto` about its events, checked one event at a time.

use std::collections::HashMap;

use lepus::proto::{ChannelKey, Confirmation, Event, Reply, Tokens};
use lepus_codec::{Method, ShortStr};

/// Tokens are numbers, unique across all four kinds, so the ledger can tell which waiter an
/// event is for and whether it was already answered.
pub(crate) struct Numbers;

impl Tokens for Numbers {
    type Channel = u64;
    type Reply = u64;
    type Confirm = u64;
    /// Cloned into each delivery.
    type Consumer = u64;
}

/// What may answer a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// A reply method with one of these (class id, method id).
    Method(&'static [(u16, u16)]),
    /// `Reply::Sent`: a `nowait` or asynchronous method.
    Sent,
    /// `basic.get`: a message, or `get-empty`.
    Get,
}

/// A channel the client opened.
struct OpenedChannel {
    key: ChannelKey,
    closed: bool,
}

/// A consumer handed to `consume`.
struct Consumer {
    key: ChannelKey,
    /// The tag it is registered under, once known: the one in the `consume-ok` that
    /// answered it (the broker's word counts), or the one a `nowait` consume sent, once
    /// it was sent.
    tag: Option<ShortStr>,
    ended: bool,
}

/// What the events of a run amounted to, for the seeds' expectations and the statistics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) connected: bool,
    pub(crate) closed: bool,
    pub(crate) replies_ok: u64,
    pub(crate) replies_failed: u64,
    pub(crate) acks: u64,
    pub(crate) nacks: u64,
    pub(crate) confirms_returned: u64,
    pub(crate) confirms_failed: u64,
    pub(crate) deliveries: u64,
    pub(crate) deliveries_refused: u64,
    pub(crate) consumers_ended: u64,
    pub(crate) returned: u64,
    pub(crate) channels_closed: u64,
    pub(crate) flow_events: u64,
    pub(crate) blocked_events: u64,
    /// Events polled in all.
    pub(crate) events: u64,
    /// The most events found waiting at one drain.
    pub(crate) max_queued_events: u64,
    /// The most bytes found waiting to be written after a step.
    pub(crate) max_pending_transmit: u64,
    /// Frames the client wrote.
    pub(crate) frames_written: u64,
}

/// The tokens out there, and the checks on what comes back.
#[derive(Default)]
pub(crate) struct Ledger {
    next: u64,
    /// Reply tokens not answered yet, with what may answer them.
    replies: HashMap<u64, Answer>,
    /// Confirm tokens not answered yet: their channel, and were they published mandatory?
    confirms: HashMap<u64, (ChannelKey, bool)>,
    channels: HashMap<u64, OpenedChannel>,
    consumers: HashMap<u64, Consumer>,
    /// The consumer of each consume call not answered yet, and the tag it asked for.
    consume_calls: HashMap<u64, (u64, ShortStr)>,
    /// The last confirm tag handed out per channel incarnation.
    confirm_tags: HashMap<ChannelKey, u64>,
    pub(crate) summary: Summary,
}

impl Ledger {
    /// A fresh token, never used before.
    pub(crate) fn token(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// `token` waits for `answer`.
    pub(crate) fn expect_reply(&mut self, token: u64, answer: Answer) {
        assert!(self.replies.insert(token, answer).is_none(), "reply token {token} handed in twice");
    }

    /// `open_channel` returned `key` for the channel token `token`.
    pub(crate) fn channel_opened(&mut self, token: u64, key: ChannelKey) {
        assert!(
            self.channels.values().all(|c| c.key != key),
            "open_channel returned {key:?}, the key of an earlier channel"
        );
        self.channels.insert(token, OpenedChannel { key, closed: false });
    }

    /// `consume` was given the consumer token `consumer` and the reply token `reply`, asking
    /// for `tag` (empty: the client picks one).
    pub(crate) fn consumer(&mut self, consumer: u64, reply: u64, key: ChannelKey, tag: ShortStr) {
        self.consumers.insert(consumer, Consumer { key, tag: None, ended: false });
        self.consume_calls.insert(reply, (consumer, tag));
    }

    /// A publish with a confirm token was taken with delivery tag `tag`.
    pub(crate) fn confirm_taken(&mut self, token: u64, key: ChannelKey, tag: u64, mandatory: bool) {
        self.confirms.insert(token, (key, mandatory));
        self.publish_tag(key, tag);
    }

    /// Confirm tokens of `key`'s publishes not answered yet.
    pub(crate) fn confirms_waiting(&self, key: ChannelKey) -> u64 {
        self.confirms.values().filter(|(k, _)| *k == key).count() as u64
    }

    /// Delivery tags of one channel incarnation only grow.
    fn publish_tag(&mut self, key: ChannelKey, tag: u64) {
        let last = self.confirm_tags.entry(key).or_insert(0);
        assert!(tag > *last, "publish on {key:?} got tag {tag} after tag {last}");
        *last = tag;
    }

    /// Checks one event against the promises, and records what it answered.
    pub(crate) fn event(&mut self, event: Event<Numbers>) {
        self.summary.events += 1;
        if self.summary.closed {
            assert!(is_failure(&event), "after Event::Closed only failures may follow, got {}", describe(&event));
        }
        match event {
            Event::Connected => {
                assert!(!self.summary.connected, "Event::Connected twice");
                self.summary.connected = true;
            }
            Event::Reply(token, result) => self.reply(token, result),
            Event::Confirm(token, result) => self.confirm(token, result),
            Event::Delivery(consumer, result) => self.delivery(consumer, result),
            Event::ConsumerEnded(consumer, _) => {
                let c = self.consumers.get_mut(&consumer).unwrap_or_else(|| panic!("ConsumerEnded for {consumer}"));
                assert!(!c.ended, "consumer {consumer} ended twice");
                c.ended = true;
                self.summary.consumers_ended += 1;
            }
            Event::Returned(channel, content) => {
                self.live_channel(channel, "Returned");
                assert!(matches!(content.method, Method::BasicReturn(_)), "Returned carries {}", content.method.name());
                self.summary.returned += 1;
            }
            Event::ChannelClosed(channel, _) => {
                let c = self.channels.get_mut(&channel).unwrap_or_else(|| panic!("ChannelClosed for {channel}"));
                assert!(!c.closed, "channel {channel} ({:?}) closed twice", c.key);
                c.closed = true;
                self.summary.channels_closed += 1;
            }
            Event::ChannelFlow(channel, _) => {
                self.live_channel(channel, "ChannelFlow");
                self.summary.flow_events += 1;
            }
            Event::Blocked(_) | Event::Unblocked => self.summary.blocked_events += 1,
            Event::Closed(_) => {
                assert!(!self.summary.closed, "Event::Closed twice");
                self.summary.closed = true;
            }
        }
    }

    fn reply(&mut self, token: u64, result: Result<Reply, lepus::Error>) {
        let answer = self.replies.remove(&token).unwrap_or_else(|| panic!("reply token {token} answered twice"));
        if let Some((consumer, asked)) = self.consume_calls.remove(&token)
            && let Some(c) = self.consumers.get_mut(&consumer)
        {
            c.tag = match &result {
                Ok(Reply::Method(Method::BasicConsumeOk(ok))) => Some(ok.consumer_tag.clone()),
                Ok(Reply::Sent) if !asked.is_empty() => Some(asked),
                _ => None,
            };
        }
        let Ok(reply) = result else {
            self.summary.replies_failed += 1;
            return;
        };
        assert!(self.summary.connected, "a call succeeded before the connection was open");
        let fits = match (&reply, answer) {
            (Reply::Method(method), Answer::Method(ids)) => ids.contains(&(method.class_id(), method.method_id())),
            (Reply::Method(Method::BasicGetEmpty(_)) | Reply::Get(_), Answer::Get) | (Reply::Sent, Answer::Sent) => {
                true
            }
            _ => false,
        };
        assert!(fits, "token {token} waited for {answer:?} and got {}", reply_name(&reply));
        if let Reply::Get(content) = &reply {
            assert!(matches!(content.method, Method::BasicGetOk(_)), "a get answered with {}", content.method.name());
        }
        self.summary.replies_ok += 1;
    }

    fn confirm(&mut self, token: u64, result: Result<Confirmation, lepus::Error>) {
        let (_, mandatory) =
            self.confirms.remove(&token).unwrap_or_else(|| panic!("confirm token {token} answered twice"));
        match result {
            Ok(Confirmation::Ack) => self.summary.acks += 1,
            Ok(Confirmation::Nack) => self.summary.nacks += 1,
            Ok(Confirmation::Returned(content)) => {
                assert!(mandatory, "confirm token {token}: a publish that was not mandatory came back returned");
                assert!(matches!(content.method, Method::BasicReturn(_)), "returned as {}", content.method.name());
                self.summary.confirms_returned += 1;
            }
            Err(_) => self.summary.confirms_failed += 1,
        }
    }

    fn delivery(&mut self, consumer: u64, result: Result<lepus::proto::Delivery, lepus::Error>) {
        let c = self.consumers.get(&consumer).unwrap_or_else(|| panic!("delivery for consumer token {consumer}"));
        assert!(!c.ended, "delivery for consumer {consumer} after it ended");
        match result {
            Ok(delivery) => {
                assert_eq!(delivery.channel, c.key, "consumer {consumer} got a delivery of another channel");
                if let Some(tag) = &c.tag {
                    assert_eq!(&delivery.consumer_tag, tag, "consumer {consumer} got another consumer's delivery");
                }
                self.summary.deliveries += 1;
            }
            Err(_) => self.summary.deliveries_refused += 1,
        }
    }

    /// A channel event for `channel`, which must be open.
    fn live_channel(&self, channel: u64, what: &str) {
        let c = self.channels.get(&channel).unwrap_or_else(|| panic!("{what} for channel token {channel}"));
        assert!(!c.closed, "{what} for channel {:?} after ChannelClosed", c.key);
    }

    /// The connection is closed and every event was polled: every reply and confirm token
    /// came back, every channel closed exactly once, `Closed` came exactly once.
    pub(crate) fn check_settled(&self) {
        assert!(self.summary.closed, "the connection closed without Event::Closed");
        let mut replies: Vec<_> = self.replies.keys().collect();
        replies.sort();
        assert!(replies.is_empty(), "reply tokens never answered: {replies:?}");
        let mut confirms: Vec<_> = self.confirms.keys().collect();
        confirms.sort();
        assert!(confirms.is_empty(), "confirm tokens never answered: {confirms:?}");
        for (token, channel) in &self.channels {
            assert!(channel.closed, "channel token {token} ({:?}) never got ChannelClosed", channel.key);
        }
    }
}

/// A closed connection with a reply token never answered: must panic.
pub(crate) fn self_test_lost_reply() {
    let mut ledger = Ledger::default();
    let token = ledger.token();
    ledger.expect_reply(token, Answer::Sent);
    ledger.event(Event::Closed(lepus::Error::Timeout("test")));
    ledger.check_settled();
}

/// A reply token answered twice: must panic.
pub(crate) fn self_test_double_reply() {
    let mut ledger = Ledger::default();
    let token = ledger.token();
    ledger.expect_reply(token, Answer::Sent);
    ledger.event(Event::Connected);
    ledger.event(Event::Reply(token, Ok(Reply::Sent)));
    ledger.event(Event::Reply(token, Ok(Reply::Sent)));
}

/// What may still come after `Event::Closed`: the failures of what was pending, and of
/// commands given after the close.
fn is_failure(event: &Event<Numbers>) -> bool {
    match event {
        Event::Reply(_, result) => result.is_err(),
        Event::Confirm(_, result) => result.is_err(),
        Event::ConsumerEnded(_, error) => error.is_some(),
        Event::ChannelClosed(..) => true,
        _ => false,
    }
}

fn describe(event: &Event<Numbers>) -> String {
    match event {
        Event::Connected => "Connected".into(),
        Event::Reply(t, r) => format!("Reply({t}, {})", r.as_ref().map_or_else(ToString::to_string, reply_name)),
        Event::Confirm(t, r) => format!("Confirm({t}, {:?})", r.as_ref().map_err(ToString::to_string)),
        Event::Delivery(t, r) => format!("Delivery({t}, ok: {})", r.is_ok()),
        Event::ConsumerEnded(t, e) => format!("ConsumerEnded({t}, {e:?})"),
        Event::Returned(t, _) => format!("Returned({t})"),
        Event::ChannelClosed(t, e) => format!("ChannelClosed({t}, {e})"),
        Event::ChannelFlow(t, a) => format!("ChannelFlow({t}, {a})"),
        Event::Blocked(r) => format!("Blocked({r})"),
        Event::Unblocked => "Unblocked".into(),
        Event::Closed(e) => format!("Closed({e})"),
    }
}

fn reply_name(reply: &Reply) -> String {
    match reply {
        Reply::Method(m) => m.name().to_owned(),
        Reply::Get(c) => format!("a message ({})", c.method.name()),
        Reply::Sent => "Sent".into(),
    }
}
