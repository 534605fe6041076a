//! Options and results of channel operations.

use lepus_codec::{BasicProperties, FieldTable};

/// An exchange type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routes on an exact routing-key match.
    Direct,
    /// Routes to every bound queue.
    Fanout,
    /// Routes on `*`/`#` patterns.
    Topic,
    /// Routes on header values (`x-match` all/any).
    Headers,
    /// A plugin's type, e.g. `x-consistent-hash`.
    Custom(String),
}

impl ExchangeKind {
    /// The type's name on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
            ExchangeKind::Custom(s) => s,
        }
    }
}

/// `exchange.declare` flags.
// These are the protocol's own bit fields.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExchangeDeclareOptions {
    /// Only check that it exists (404 closes the channel if not).
    pub passive: bool,
    /// Survive a broker restart.
    pub durable: bool,
    /// Delete when the last binding goes.
    pub auto_delete: bool,
    /// Only reachable through exchange-to-exchange bindings.
    pub internal: bool,
    /// Do not wait for declare-ok.
    pub nowait: bool,
}

/// `queue.declare` flags.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDeclareOptions {
    /// Only check that it exists and read its counts (404 closes the channel if not).
    pub passive: bool,
    /// Survive a broker restart.
    pub durable: bool,
    /// Only this connection may use it; it goes away with the connection.
    pub exclusive: bool,
    /// Delete when the last consumer goes.
    pub auto_delete: bool,
    /// Do not wait for declare-ok (the returned counts are then zero).
    pub nowait: bool,
}

/// What `queue.declare` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDeclared {
    /// The queue's name (the broker's choice for a server-named queue).
    pub name: String,
    /// Messages ready for delivery.
    pub message_count: u32,
    /// Active consumers.
    pub consumer_count: u32,
}

/// `queue.delete` conditions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDeleteOptions {
    /// Only if it has no consumers (406 otherwise).
    pub if_unused: bool,
    /// Only if it has no messages (406 otherwise).
    pub if_empty: bool,
}

/// `basic.consume` options.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumeOptions {
    /// Consumer tag; empty lets the client choose one unique on the connection.
    pub consumer_tag: String,
    /// Deliveries need no acknowledgement (at-most-once).
    pub no_ack: bool,
    /// The queue's only consumer.
    pub exclusive: bool,
    /// Consumer arguments (`x-priority`, `x-stream-offset`, ...).
    pub arguments: FieldTable,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        ConsumeOptions { consumer_tag: String::new(), no_ack: false, exclusive: false, arguments: FieldTable::new() }
    }
}

/// `basic.publish` options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Return the message (as [`crate::Confirmation::Returned`] in confirm mode, else on
    /// [`crate::Channel::returns`]) if no queue is bound for it.
    pub mandatory: bool,
    /// The message's properties.
    pub properties: BasicProperties,
}
