//! # lepus
//!
//! An AMQP 0-9-1 client for RabbitMQ that never panics on what the network or the broker
//! does, never leaves a future hanging, and never copies a message body it does not have to.
//!
//! - [`Connection`] connects (`amqp://`, `amqps://` with rustls) and opens [`Channel`]s.
//! - A [`Channel`] declares, binds, publishes ([`Channel::basic_publish`], with
//!   [`PublisherConfirm`]s in confirm mode), consumes ([`Consumer`], a `Stream` of
//!   [`Delivery`]s), gets and acknowledges.
//! - Every waiter resolves with its result or with the [`Error`] that closed its channel or
//!   connection, reply code and text kept whole.
//! - Underneath, [`proto`] is the connection as a pure state machine and one task owns the
//!   socket; the wire format is [`codec`] ([`lepus_codec`]).
//!
//! ```
//! use lepus::{Connection, ConsumeOptions, PublishOptions, QueueDeclareOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lepus::Error> {
//! # tokio::time::timeout(std::time::Duration::from_secs(30), async {
//! let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
//! let conn = Connection::connect(&url).await?;
//! let channel = conn.open_channel().await?;
//! // A server-named queue that only this connection uses.
//! let exclusive = QueueDeclareOptions { exclusive: true, ..Default::default() };
//! let queue = channel.queue_declare("", exclusive, Default::default()).await?.name;
//! channel.confirm_select().await?;
//! let confirm = channel.basic_publish("", &queue, &b"hi"[..], PublishOptions::default()).await?;
//! assert!(confirm.await?.is_ack());
//! let mut consumer = channel.basic_consume(&queue, ConsumeOptions::default()).await?;
//! let delivery = consumer.next().await.expect("the consumer is open")?;
//! assert_eq!(&delivery.body[..], b"hi");
//! delivery.ack().await?;
//! conn.close().await?;
//! # Ok::<(), lepus::Error>(())
//! # }).await.expect("the example finishes within 30 s")
//! # }
//! ```
//!
//! Runnable programs ship in the crate's `examples/`: `quickstart`, and `tls` (`amqps://`
//! with a private CA and a client certificate).

// The README's examples run as doc tests too, without becoming part of these docs.
#![cfg_attr(doctest, doc = include_str!("../README.md"))]
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

pub use lepus_codec as codec;

pub mod auth;
mod channel;
mod channel_link;
mod channel_options;
mod channel_shared;
mod client_config;
mod command;
mod command_queue;
mod confirm;
mod conn_shared;
mod connect;
mod connection;
mod consumer;
mod deadline;
mod delivery;
mod delivery_headers;
mod delivery_queue;
mod driver;
mod encode_chunk;
mod engine;
mod error;
mod events;
pub mod metrics;
pub mod options;
pub mod proto;
mod publish;
mod queue_args;
pub mod recovery;
mod settle;
mod stream_offset;
pub mod tls;
#[cfg(feature = "trace-context")]
pub mod trace_context;
pub mod uri;

pub use auth::{AuthMechanism, Credentials, Password};
pub use channel::Channel;
pub use channel_options::{
    ConsumeOptions, ExchangeDeclareOptions, ExchangeKind, PublishOptions, QueueDeclareOptions, QueueDeclared,
    QueueDeleteOptions,
};
pub use confirm::{Confirmation, PublisherConfirm, ReturnedMessage, Returns};
pub use connection::Connection;
pub use consumer::Consumer;
pub use delivery::Delivery;
pub use error::{CloseReason, Error, Initiator};
pub use events::ConnectionEvent;
pub use lepus_codec::{BasicProperties, FieldTable, FieldValue, ReplyCode, ShortStr};
pub use options::ConnectionOptions;
pub use queue_args::{DeadLetterStrategy, Overflow, QueueArguments, QueueType};
pub use recovery::{Address, AddressOrder, RecoveryOptions, WhileDisconnected};
pub use stream_offset::{IntervalUnit, InvalidInterval, StreamInterval, StreamOffset};
pub use tls::{Roots, TlsOptions};
