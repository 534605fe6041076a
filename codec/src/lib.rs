//! # lepus-codec
//!
//! The AMQP 0-9-1 wire format, bytes to frames and back, as RabbitMQ speaks it. No IO, no
//! clock, no async runtime: the client crate `lepus` drives it.
//!
//! - **Zero-copy decoding.** [`decode_frame`] checks the 7-byte frame header against the
//!   [`Limits`] before waiting for the payload, and returns body payloads, long strings and
//!   short strings over 38 bytes as `Bytes` pointing into the read buffer (shorter strings
//!   are copied inline, which is cheaper than sharing them).
//! - **Direct encoding.** [`Frame::encode`] and [`encode_publish`] write into the caller's
//!   `BytesMut`; [`encode_publish_vectored`] hands a large body back as slices of itself.
//! - **Every method** of every class, RabbitMQ's extensions included ([`method`]), the 14
//!   basic properties ([`BasicProperties`]) and field tables with RabbitMQ's type letters
//!   ([`FieldTable`]), round-tripping byte for byte.
//! - **Errors, not panics.** Malformed input is a [`DecodeError`] that maps to the AMQP
//!   reply code ([`ReplyCode`]) to close the connection with; unrepresentable values are an
//!   [`EncodeError`].
//!
//! ```
//! use bytes::BytesMut;
//! use lepus_codec::{Frame, Limits, Method, decode_frame, method::basic};
//!
//! let mut wire = BytesMut::new();
//! Frame::Method(1, Method::from(basic::Ack { delivery_tag: 42, multiple: false })).encode(&mut wire).unwrap();
//! let frame = decode_frame(&mut wire, &Limits::default()).unwrap().unwrap();
//! assert!(matches!(frame, Frame::Method(1, Method::BasicAck(basic::Ack { delivery_tag: 42, .. }))));
//! ```

// The README's examples run as doc tests too, without becoming part of these docs.
#![cfg_attr(doctest, doc = include_str!("../README.md"))]
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod content;
mod error;
mod field_table;
mod frame;
mod limits;
pub mod method;
mod properties;
mod publish;
mod reply_code;
mod short_str;
#[cfg(feature = "tokio-util")]
mod tokio_codec;
mod wire;

pub use content::{Content, ContentAssembler};
pub use error::{DecodeError, EncodeError};
pub use field_table::{Decimal, FieldArray, FieldTable, FieldValue};
pub use frame::{
    FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, FRAME_OVERHEAD, Frame, PROTOCOL_HEADER,
    decode_frame, header_frame_prefix,
};
pub use limits::Limits;
pub use method::Method;
pub use properties::{BASIC_CLASS_ID, BasicProperties, ContentHeader};
pub use publish::{encode_publish, encode_publish_vectored};
pub use reply_code::ReplyCode;
pub use short_str::ShortStr;
#[cfg(feature = "tokio-util")]
pub use tokio_codec::{AmqpCodec, CodecError};
