//! `tokio-util` codec adapters (feature `tokio-util`).

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::{DecodeError, EncodeError, Frame, Limits, decode_frame};

/// A `tokio_util::codec` `Decoder`/`Encoder` of AMQP frames.
///
/// Raise the limits with [`AmqpCodec::set_limits`] after `connection.tune`.
///
/// ```
/// use bytes::BytesMut;
/// use lepus_codec::{AmqpCodec, Frame};
/// use tokio_util::codec::{Decoder, Encoder};
/// let mut codec = AmqpCodec::default();
/// let mut buf = BytesMut::new();
/// codec.encode(Frame::Heartbeat, &mut buf).unwrap();
/// assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::Heartbeat));
/// ```
#[derive(Debug, Clone, Default)]
pub struct AmqpCodec {
    limits: Limits,
}

impl AmqpCodec {
    /// A codec with these limits.
    pub fn new(limits: Limits) -> Self {
        AmqpCodec { limits }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Replaces the limits (e.g. after tuning).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }
}

/// What can go wrong in a framed transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The peer sent something that is not AMQP.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A frame could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The transport failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Decoder for AmqpCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        Ok(decode_frame(src, &self.limits)?)
    }
}

impl Encoder<Frame> for AmqpCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode(&frame, dst)
    }
}

impl Encoder<&Frame> for AmqpCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(frame.encode_with_depth(dst, self.limits.max_depth)?)
    }
}
