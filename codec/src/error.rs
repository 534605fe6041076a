//! Decode and encode errors. Every decode error names its cause and maps to the AMQP reply
//! code a peer would close the connection with.

use crate::ReplyCode;

/// Bytes from the peer that are not a valid AMQP 0-9-1 frame.
///
/// Each variant maps to a reply code through [`DecodeError::reply_code`]: 501 for a broken
/// frame envelope, 502 for a payload whose fields do not parse, 503 for a method that does
/// not exist, 505 for a frame that is not allowed where it came, and 311 (soft) for a
/// message over the inbound size cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The octet after the payload was not `0xCE`.
    #[error("frame error: frame-end octet is {found:#04x}, expected 0xce")]
    BadFrameEnd {
        /// The octet that was found instead.
        found: u8,
    },
    /// The frame type octet is not method (1), header (2), body (3) or heartbeat (8).
    #[error("frame error: unknown frame type {0}")]
    UnknownFrameType(u8),
    /// The frame's size field is larger than the limit in force (checked before buffering).
    #[error("frame error: frame of {size} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Whole frame size claimed by the header (header + payload + end octet).
        size: u64,
        /// The limit in force.
        max: u32,
    },
    /// The peer answered our protocol header with its own: it refuses AMQP 0-9-1.
    #[error("the peer refused AMQP 0-9-1 and offered protocol {protocol_id}-{major}-{minor}-{revision}")]
    ProtocolRefused {
        /// Protocol id octet (0 for AMQP 0-9-1 style headers).
        protocol_id: u8,
        /// Major version offered.
        major: u8,
        /// Minor version offered.
        minor: u8,
        /// Revision offered.
        revision: u8,
    },
    /// The payload ended before a field did (a length prefix points past the end).
    #[error("syntax error: payload ends inside {field}")]
    Truncated {
        /// What was being read.
        field: &'static str,
    },
    /// The payload has bytes after the last field.
    #[error("syntax error: {count} trailing bytes after {what}")]
    TrailingBytes {
        /// What was decoded.
        what: &'static str,
        /// How many bytes were left over.
        count: usize,
    },
    /// A field-table value has a type letter RabbitMQ does not define.
    #[error("syntax error: unknown field-table value type {0:#04x}")]
    UnknownFieldType(u8),
    /// Field tables/arrays nested deeper than the configured limit.
    #[error("syntax error: field tables nested deeper than {limit} levels")]
    NestingTooDeep {
        /// The limit in force.
        limit: usize,
    },
    /// A content header with property-flag bits this crate does not know.
    #[error("syntax error: unknown basic property flags {flags:#06x}")]
    UnknownPropertyFlags {
        /// The unknown bits.
        flags: u16,
    },
    /// A content header for a class other than basic (60).
    #[error("unexpected frame: content header for class {0}, only basic (60) carries content")]
    HeaderClass(u16),
    /// A heartbeat on a channel other than 0, or with a payload.
    #[error("frame error: malformed heartbeat (channel {channel}, {size} payload bytes)")]
    BadHeartbeat {
        /// Channel it came on.
        channel: u16,
        /// Payload size.
        size: u32,
    },
    /// A method id this crate does not know.
    #[error("command invalid: unknown method {class_id}.{method_id}")]
    UnknownMethod {
        /// Class id.
        class_id: u16,
        /// Method id.
        method_id: u16,
    },
    /// A content header announces a body larger than the inbound message cap.
    #[error("message too large: body of {size} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Announced body size.
        size: u64,
        /// The limit in force.
        max: u64,
    },
    /// A frame that may not come at this point of a content sequence (see [`crate::content`]).
    #[error("unexpected frame: {0}")]
    UnexpectedFrame(&'static str),
}

impl DecodeError {
    /// The AMQP reply code with which the connection should be closed for this error.
    pub const fn reply_code(&self) -> ReplyCode {
        match self {
            DecodeError::BadFrameEnd { .. }
            | DecodeError::UnknownFrameType(_)
            | DecodeError::FrameTooLarge { .. }
            | DecodeError::ProtocolRefused { .. }
            | DecodeError::BadHeartbeat { .. } => ReplyCode::FRAME_ERROR,
            DecodeError::Truncated { .. }
            | DecodeError::TrailingBytes { .. }
            | DecodeError::UnknownFieldType(_)
            | DecodeError::NestingTooDeep { .. }
            | DecodeError::UnknownPropertyFlags { .. } => ReplyCode::SYNTAX_ERROR,
            DecodeError::UnknownMethod { .. } => ReplyCode::COMMAND_INVALID,
            DecodeError::HeaderClass(_) | DecodeError::UnexpectedFrame(_) => ReplyCode::UNEXPECTED_FRAME,
            // About one message, not the framing: a soft code, so the connection can stay up
            // and the message be rejected (requeued) instead of lost.
            DecodeError::MessageTooLarge { .. } => ReplyCode::CONTENT_TOO_LARGE,
        }
    }
}

/// A value that cannot be represented on the wire. Encoding never truncates silently.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A short string longer than 255 bytes.
    #[error("short string of {len} bytes exceeds 255 bytes")]
    ShortStringTooLong {
        /// Its length.
        len: usize,
    },
    /// A long string, table or array longer than `u32::MAX` bytes.
    #[error("{what} of {len} bytes exceeds the 4 GiB wire limit")]
    TooLong {
        /// What was being encoded.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// A frame would exceed the negotiated `frame_max`.
    #[error("{what} frame of {size} bytes exceeds frame_max {frame_max}")]
    FrameTooLarge {
        /// Which frame.
        what: &'static str,
        /// Its size including header and end octet.
        size: usize,
        /// The negotiated limit.
        frame_max: u32,
    },
    /// A `frame_max` below the protocol minimum of 4096 (0 means "no limit" and is fine).
    #[error("frame_max {0} is below the AMQP minimum of 4096")]
    FrameMaxTooSmall(u32),
    /// Field tables/arrays nested deeper than the configured limit.
    #[error("field tables nested deeper than {limit} levels")]
    NestingTooDeep {
        /// The limit in force.
        limit: usize,
    },
    /// Heartbeats only travel on channel 0.
    #[error("heartbeat frames must use channel 0, not {0}")]
    HeartbeatChannel(u16),
}
