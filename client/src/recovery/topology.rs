//! The topology a connection declared, recorded as the broker confirmed it, and replayed in
//! the same order on a new connection. Pure: no IO, no clock; the driver records what its
//! calls' replies confirm and executes the replay one step at a time.
//!
//! Exchanges, queues and bindings are connection-wide and replay first, in the order they
//! were made, on a channel of the recovery's own; then each channel is reopened (with the
//! same id) with its QoS, confirm or transaction mode and consumers (same tags and options).
//! A server-named queue gets a new name on recovery: bindings and consumers that used the old
//! name follow it, and the rename is kept so that commands naming the old queue reach the new
//! one. Deleted objects are forgotten; an auto-delete queue is forgotten with its last
//! consumer, since the broker deletes it then.

use std::collections::HashMap;

use lepus_codec::{
    Method, ShortStr,
    method::{basic, exchange, queue},
};

use super::options::{TopologyFilter, TopologyItem};

/// Identifies a channel across its incarnations (its handles' identity).
pub(crate) type ChannelId = u64;

/// A connection-wide object, in declaration order.
#[derive(Debug, Clone, PartialEq)]
enum Entry {
    Exchange(exchange::Declare),
    /// `name` is the queue's current name (the broker's, for a server-named queue).
    Queue {
        declare: queue::Declare,
        name: ShortStr,
        server_named: bool,
    },
    QueueBind(queue::Bind),
    ExchangeBind(exchange::Bind),
}

/// A consumer, with the driver's token for its delivery queue.
#[derive(Debug, Clone)]
struct ConsumerRecord<Q> {
    consume: basic::Consume,
    queue: Q,
}

/// What a channel needs to be reopened as it was.
#[derive(Debug, Clone)]
struct ChannelRecord<Q> {
    id: ChannelId,
    /// The last `basic.qos` per `global` flag (RabbitMQ keeps one of each).
    qos: [Option<basic::Qos>; 2],
    confirm: bool,
    tx: bool,
    consumers: Vec<ConsumerRecord<Q>>,
}

/// One step of a replay.
#[derive(Debug, Clone)]
pub(crate) enum Step<Q> {
    /// Declare or bind on the replay's own channel; `entry` is passed back to
    /// [`Topology::queue_recovered`] with the name from a queue's declare-ok.
    Declare { method: Method, entry: usize, description: String },
    /// Reopen a channel (then its methods follow).
    OpenChannel(ChannelId),
    /// `basic.qos`, `confirm.select` or `tx.select` on a reopened channel.
    ChannelMethod(ChannelId, Method),
    /// A consumer on a reopened channel, same tag and options.
    Consume { channel: ChannelId, consume: basic::Consume, queue: Q },
}

/// The recorded topology. See the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct Topology<Q> {
    entries: Vec<Entry>,
    channels: Vec<ChannelRecord<Q>>,
    /// Server-named queues' earlier names, to their current one.
    renames: HashMap<ShortStr, ShortStr>,
}

impl<Q> Default for Topology<Q> {
    fn default() -> Self {
        Topology { entries: Vec::new(), channels: Vec::new(), renames: HashMap::new() }
    }
}

impl<Q: Clone> Topology<Q> {
    // ---- recording --------------------------------------------------------------------

    /// A channel was opened.
    pub(crate) fn channel_opened(&mut self, id: ChannelId) {
        if !self.channels.iter().any(|c| c.id == id) {
            self.channels.push(ChannelRecord {
                id,
                qos: [None, None],
                confirm: false,
                tx: false,
                consumers: Vec::new(),
            });
        }
    }

    /// A channel closed for good: nothing of it is replayed.
    pub(crate) fn channel_closed(&mut self, id: ChannelId) {
        let consumers: Vec<ShortStr> = self
            .channels
            .iter()
            .filter(|c| c.id == id)
            .flat_map(|c| c.consumers.iter().map(|r| r.consume.queue.clone()))
            .collect();
        self.channels.retain(|c| c.id != id);
        for queue in consumers {
            self.forget_auto_delete_queue(&queue);
        }
    }

    /// The broker confirmed `request` on channel `channel` with `reply`.
    pub(crate) fn record(&mut self, channel: ChannelId, request: &Method, reply: &Method) {
        match (request, reply) {
            (Method::ExchangeDeclare(d), _) if !d.passive => {
                self.entries.retain(|e| !matches!(e, Entry::Exchange(x) if x.exchange == d.exchange));
                self.entries.push(Entry::Exchange(d.clone()));
            }
            (Method::ExchangeDelete(d), _) => {
                self.entries.retain(|e| match e {
                    Entry::Exchange(x) => x.exchange != d.exchange,
                    Entry::QueueBind(b) => b.exchange != d.exchange,
                    Entry::ExchangeBind(b) => b.source != d.exchange && b.destination != d.exchange,
                    Entry::Queue { .. } => true,
                });
            }
            (Method::QueueDeclare(d), Method::QueueDeclareOk(ok)) if !d.passive => {
                let server_named = d.queue.is_empty();
                self.entries.retain(|e| !matches!(e, Entry::Queue { name, .. } if *name == ok.queue));
                self.entries.push(Entry::Queue { declare: d.clone(), name: ok.queue.clone(), server_named });
            }
            (Method::QueueDelete(d), _) => {
                let name = self.current(&d.queue);
                self.forget_queue(&name);
            }
            (Method::QueueBind(b), _) => {
                let mut b = b.clone();
                b.queue = self.current(&b.queue);
                b.nowait = false;
                if !self.entries.iter().any(|e| matches!(e, Entry::QueueBind(x) if *x == b)) {
                    self.entries.push(Entry::QueueBind(b));
                }
            }
            (Method::QueueUnbind(u), _) => {
                let queue = self.current(&u.queue);
                self.entries.retain(|e| {
                    !matches!(e, Entry::QueueBind(b)
                        if b.queue == queue && b.exchange == u.exchange && b.routing_key == u.routing_key
                            && b.arguments == u.arguments)
                });
            }
            (Method::ExchangeBind(b), _) => {
                let mut b = b.clone();
                b.nowait = false;
                if !self.entries.iter().any(|e| matches!(e, Entry::ExchangeBind(x) if *x == b)) {
                    self.entries.push(Entry::ExchangeBind(b));
                }
            }
            (Method::ExchangeUnbind(u), _) => {
                self.entries.retain(|e| {
                    !matches!(e, Entry::ExchangeBind(b)
                        if b.destination == u.destination && b.source == u.source
                            && b.routing_key == u.routing_key && b.arguments == u.arguments)
                });
            }
            (Method::BasicQos(q), _) => {
                if let Some(slot) = self.channel_mut(channel).and_then(|c| c.qos.get_mut(usize::from(q.global))) {
                    *slot = Some(q.clone());
                }
            }
            (Method::ConfirmSelect(_), _) => {
                if let Some(c) = self.channel_mut(channel) {
                    c.confirm = true;
                }
            }
            (Method::TxSelect(_), _) => {
                if let Some(c) = self.channel_mut(channel) {
                    c.tx = true;
                }
            }
            _ => {}
        }
    }

    /// A consumer was confirmed (consume-ok) on `channel`.
    pub(crate) fn consumer_started(&mut self, channel: ChannelId, consume: &basic::Consume, queue: Q) {
        let mut consume = consume.clone();
        consume.queue = self.current(&consume.queue);
        consume.nowait = false;
        if let Some(c) = self.channel_mut(channel) {
            c.consumers.retain(|r| r.consume.consumer_tag != consume.consumer_tag);
            c.consumers.push(ConsumerRecord { consume, queue });
        }
    }

    /// A consumer ended (our cancel, the broker's, or its handle was dropped).
    pub(crate) fn consumer_ended(&mut self, channel: ChannelId, tag: &ShortStr) {
        let mut queue = None;
        if let Some(c) = self.channel_mut(channel) {
            c.consumers.retain(|r| {
                if r.consume.consumer_tag == *tag {
                    queue = Some(r.consume.queue.clone());
                    false
                } else {
                    true
                }
            });
        }
        if let Some(queue) = queue {
            self.forget_auto_delete_queue(&queue);
        }
    }

    /// The broker deletes an auto-delete queue with its last consumer: so do we.
    fn forget_auto_delete_queue(&mut self, queue: &ShortStr) {
        let auto_delete = self
            .entries
            .iter()
            .any(|e| matches!(e, Entry::Queue { declare, name, .. } if name == queue && declare.auto_delete));
        let consumed = self.channels.iter().any(|c| c.consumers.iter().any(|r| r.consume.queue == *queue));
        if auto_delete && !consumed {
            self.forget_queue(queue);
        }
    }

    fn forget_queue(&mut self, queue: &ShortStr) {
        self.entries.retain(|e| match e {
            Entry::Queue { name, .. } => name != queue,
            Entry::QueueBind(b) => b.queue != *queue,
            _ => true,
        });
    }

    fn channel_mut(&mut self, id: ChannelId) -> Option<&mut ChannelRecord<Q>> {
        self.channels.iter_mut().find(|c| c.id == id)
    }

    // ---- names ------------------------------------------------------------------------

    /// The current name of a queue known by `name` (itself unless it was renamed).
    pub(crate) fn current(&self, name: &ShortStr) -> ShortStr {
        self.renames.get(name).cloned().unwrap_or_else(|| name.clone())
    }

    /// The queue names a method carries, translated to their current names.
    pub(crate) fn translate(&self, method: &mut Method) {
        if self.renames.is_empty() {
            return;
        }
        let queue = match method {
            Method::QueueDeclare(m) => &mut m.queue,
            Method::QueueBind(m) => &mut m.queue,
            Method::QueueUnbind(m) => &mut m.queue,
            Method::QueuePurge(m) => &mut m.queue,
            Method::QueueDelete(m) => &mut m.queue,
            Method::BasicConsume(m) => &mut m.queue,
            Method::BasicGet(m) => &mut m.queue,
            _ => return,
        };
        *queue = self.current(queue);
    }

    /// A queue replayed by [`Step::Declare`] at `entry` came back named `name`. A
    /// server-named queue's new name replaces the old everywhere.
    pub(crate) fn queue_recovered(&mut self, entry: usize, name: &ShortStr) {
        let Some(Entry::Queue { name: old, .. }) = self.entries.get(entry) else { return };
        let old = old.clone();
        if old == *name {
            return;
        }
        for e in &mut self.entries {
            match e {
                Entry::Queue { name: n, .. } if *n == old => *n = name.clone(),
                Entry::QueueBind(b) if b.queue == old => b.queue = name.clone(),
                _ => {}
            }
        }
        for c in &mut self.channels {
            for r in &mut c.consumers {
                if r.consume.queue == old {
                    r.consume.queue = name.clone();
                }
            }
        }
        // Every earlier name of this queue now points at the newest.
        for current in self.renames.values_mut() {
            if *current == old {
                *current = name.clone();
            }
        }
        self.renames.insert(old, name.clone());
    }

    // ---- queries ----------------------------------------------------------------------

    /// Whether a consumer with `tag` is recorded on `channel`.
    pub(crate) fn has_consumer(&self, channel: ChannelId, tag: &ShortStr) -> bool {
        self.channels.iter().any(|c| c.id == channel && c.consumers.iter().any(|r| r.consume.consumer_tag == *tag))
    }

    /// The tokens of `channel`'s recorded consumers.
    pub(crate) fn consumers_of(&self, channel: ChannelId) -> Vec<Q> {
        self.channels
            .iter()
            .filter(|c| c.id == channel)
            .flat_map(|c| c.consumers.iter().map(|r| r.queue.clone()))
            .collect()
    }

    /// The tokens of every recorded consumer.
    pub(crate) fn consumer_queues(&self) -> Vec<Q> {
        self.channels.iter().flat_map(|c| c.consumers.iter().map(|r| r.queue.clone())).collect()
    }

    /// Earlier names of server-named queues, to their current ones.
    pub(crate) fn renames(&self) -> HashMap<ShortStr, ShortStr> {
        self.renames.clone()
    }

    // ---- replay -----------------------------------------------------------------------

    /// The replay after a reconnection, in order: every channel reopened (with its former
    /// id, before anything else takes one), then the connection-wide objects in declaration
    /// order, then each channel's QoS, modes and consumers. With `topology` off only the
    /// channels come back. Queue names in the steps are the ones known now: translate them
    /// with [`Topology::translate`] when a step runs (a queue replayed earlier may have been
    /// renamed).
    pub(crate) fn plan(&self, filter: Option<&TopologyFilter>, topology: bool) -> Vec<Step<Q>> {
        let mut steps: Vec<Step<Q>> = self.channels.iter().map(|c| Step::OpenChannel(c.id)).collect();
        if !topology {
            return steps;
        }
        let keep = |item: TopologyItem<'_>| filter.is_none_or(|f| f(&item));
        steps.extend(self.entries.iter().enumerate().filter_map(|(i, e)| Self::entry_step(i, e, keep)));
        for c in &self.channels {
            steps.extend(Self::channel_steps(c, keep));
        }
        steps
    }

    /// The replay of one channel: reopened, with its QoS, modes and consumers.
    pub(crate) fn channel_plan(&self, channel: ChannelId) -> Vec<Step<Q>> {
        let mut steps = Vec::new();
        for c in self.channels.iter().filter(|c| c.id == channel) {
            steps.push(Step::OpenChannel(c.id));
            steps.extend(Self::channel_steps(c, |_| true));
        }
        steps
    }

    fn channel_steps(c: &ChannelRecord<Q>, keep: impl Fn(TopologyItem<'_>) -> bool) -> Vec<Step<Q>> {
        let mut steps: Vec<Step<Q>> =
            c.qos.iter().flatten().map(|q| Step::ChannelMethod(c.id, q.clone().into())).collect();
        if c.confirm {
            steps.push(Step::ChannelMethod(c.id, lepus_codec::method::confirm::Select::default().into()));
        }
        if c.tx {
            steps.push(Step::ChannelMethod(c.id, lepus_codec::method::tx::Select {}.into()));
        }
        for r in &c.consumers {
            let (queue, tag) = (r.consume.queue.as_str().unwrap_or(""), r.consume.consumer_tag.as_str().unwrap_or(""));
            if keep(TopologyItem::Consumer { queue, tag }) {
                steps.push(Step::Consume { channel: c.id, consume: r.consume.clone(), queue: r.queue.clone() });
            }
        }
        steps
    }

    fn entry_step(index: usize, entry: &Entry, keep: impl Fn(TopologyItem<'_>) -> bool) -> Option<Step<Q>> {
        let s = |s: &ShortStr| s.as_str().unwrap_or("").to_owned();
        let (item, method, description) = match entry {
            Entry::Exchange(d) => (
                TopologyItem::Exchange { name: d.exchange.as_str().unwrap_or("") },
                Method::from(d.clone()),
                format!("exchange {:?}", s(&d.exchange)),
            ),
            Entry::Queue { declare, name, server_named } => {
                let mut d = declare.clone();
                // A server-named queue is declared nameless again: the broker names it anew.
                if !server_named {
                    d.queue = name.clone();
                }
                let item = TopologyItem::Queue { name: name.as_str().unwrap_or(""), server_named: *server_named };
                (item, Method::from(d), format!("queue {:?}", s(name)))
            }
            Entry::QueueBind(b) => (
                TopologyItem::Binding {
                    source: b.exchange.as_str().unwrap_or(""),
                    destination: b.queue.as_str().unwrap_or(""),
                    routing_key: b.routing_key.as_str().unwrap_or(""),
                },
                Method::from(b.clone()),
                format!("binding of queue {:?} to {:?} ({:?})", s(&b.queue), s(&b.exchange), s(&b.routing_key)),
            ),
            Entry::ExchangeBind(b) => (
                TopologyItem::Binding {
                    source: b.source.as_str().unwrap_or(""),
                    destination: b.destination.as_str().unwrap_or(""),
                    routing_key: b.routing_key.as_str().unwrap_or(""),
                },
                Method::from(b.clone()),
                format!("binding of exchange {:?} to {:?} ({:?})", s(&b.destination), s(&b.source), s(&b.routing_key)),
            ),
        };
        keep(item).then_some(Step::Declare { method, entry: index, description })
    }
}

#[cfg(test)]
mod tests;
