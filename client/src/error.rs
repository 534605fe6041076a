//! `lepus::Error`: one error type, with close reasons kept whole.

use std::{fmt, sync::Arc};

use lepus_codec::{DecodeError, EncodeError, ReplyCode};

/// Who closed a channel or connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiator {
    /// This client (the application, or lepus on a protocol error it detected).
    Client,
    /// The broker.
    Server,
}

/// Why a channel or connection closed, exactly as `channel.close`/`connection.close` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// The AMQP reply code (e.g. 404 `NOT_FOUND`, 320 `CONNECTION_FORCED`).
    pub reply_code: ReplyCode,
    /// The human-readable text.
    pub reply_text: String,
    /// Class of the method that caused it, or 0.
    pub class_id: u16,
    /// Method that caused it, or 0.
    pub method_id: u16,
    /// Who closed it.
    pub initiator: Initiator,
}

impl CloseReason {
    /// A close this client initiates with `code` and `text`.
    pub fn client(code: ReplyCode, text: impl Into<String>) -> Self {
        CloseReason {
            reply_code: code,
            reply_text: text.into(),
            class_id: 0,
            method_id: 0,
            initiator: Initiator::Client,
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let by = match self.initiator {
            Initiator::Client => "client",
            Initiator::Server => "server",
        };
        write!(f, "{} {:?} (closed by {by}", self.reply_code, self.reply_text)?;
        if self.class_id != 0 || self.method_id != 0 {
            write!(f, ", caused by method {}.{}", self.class_id, self.method_id)?;
        }
        f.write_str(")")
    }
}

/// Everything that can go wrong, as data. `Clone`, because one closed connection fails
/// every future waiting on it with the same error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection is closed (by the broker, by us, or because it failed).
    #[error("connection closed: {0}")]
    ConnectionClosed(CloseReason),
    /// The channel is closed (by the broker, e.g. 404, or by us).
    #[error("channel closed: {0}")]
    ChannelClosed(CloseReason),
    /// The broker refused the credentials (403), with its text.
    #[error("access refused: {0}")]
    AccessRefused(String),
    /// No heartbeat or other frame from the broker for two heartbeat intervals.
    #[error("no frame from the broker for {0:?}: connection presumed dead")]
    MissedHeartbeats(std::time::Duration),
    /// The URI is not a valid AMQP URI (the message never contains the password).
    #[error("invalid AMQP URI: {0}")]
    Uri(#[from] crate::uri::UriError),
    /// TLS setup or the TLS handshake failed; the variant names what to fix.
    #[error("TLS: {0}")]
    Tls(Arc<crate::tls::TlsError>),
    /// The socket failed or was closed under us.
    #[error("I/O error: {0}")]
    Io(Arc<std::io::Error>),
    /// The broker sent bytes that are not valid AMQP.
    #[error("protocol error from the broker: {0}")]
    Decode(#[from] DecodeError),
    /// A value could not be encoded (e.g. a routing key over 255 bytes).
    #[error("cannot encode: {0}")]
    Encode(#[from] EncodeError),
    /// The broker broke the protocol in a way the decoder cannot see (e.g. an unexpected
    /// reply); the connection was closed with `reply_code`.
    #[error("protocol violation by the broker ({reply_code}): {text}")]
    Protocol {
        /// The code we closed the connection with.
        reply_code: ReplyCode,
        /// What happened.
        text: String,
    },
    /// The connection's negotiated tuning is unusable (e.g. `frame_max` below 4096).
    #[error("unacceptable tuning from the broker: {0}")]
    Tune(String),
    /// The server offers none of the mechanisms we can use.
    #[error("authentication mechanism {ours} not offered by the server (it offers {offered:?})")]
    AuthMechanism {
        /// Our mechanism.
        ours: &'static str,
        /// The server's list.
        offered: String,
    },
    /// All channel ids up to `channel_max` are in use.
    #[error("no free channel id (channel_max {0})")]
    ChannelLimit(u16),
    /// `connection.close` was sent but the broker did not confirm it (no `close-ok` within
    /// the close timeout, or the socket failed first). The connection is closed either way.
    #[error("the close was not confirmed by the broker: {0}")]
    CloseNotConfirmed(String),
    /// The connection was lost before this completed (a publish awaiting its confirm, a call
    /// awaiting its reply): whether the broker acted on it cannot be known. With recovery on,
    /// the connection itself comes back; this operation does not.
    #[error("connection lost, outcome unknown: {0}")]
    ConnectionLost(Box<Error>),
    /// The connection is down and recovering: nothing was sent. (Recovery set to fail fast,
    /// or the wait for the connection to come back timed out.)
    #[error("disconnected, recovering: {0}")]
    Disconnected(Box<Error>),
    /// Automatic recovery gave up: the attempts or time allowed ran out, or the last error
    /// is one that reconnecting cannot fix (see [`Error::is_recoverable`]).
    #[error("connection recovery gave up after {attempts} attempts: {last}")]
    RecoveryFailed {
        /// Reconnection attempts made.
        attempts: u32,
        /// The error that ended the last attempt (or the connection).
        last: Box<Error>,
    },
    /// An operation did not complete in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The broker cancelled the consumer (queue deleted, node down, ...).
    #[error("consumer {0:?} cancelled by the broker")]
    CancelledByBroker(String),
    /// An acknowledgement for a delivery whose channel has since closed (its tag is void).
    #[error("delivery tag {0} belongs to a channel that has closed")]
    StaleDeliveryTag(u64),
    /// The delivery was already acked, nacked or rejected, or a `multiple` ack or nack on its
    /// channel covered it; settling it again was not sent (the broker would close the channel
    /// with 406 for an unknown delivery tag).
    #[error("delivery tag {0} is already settled")]
    AlreadySettled(u64),
    /// The operation is not valid in the channel's current mode (e.g. a confirm-mode publish
    /// on a transactional channel).
    #[error("invalid operation: {0}")]
    InvalidOperation(&'static str),
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}

impl From<crate::tls::TlsError> for Error {
    fn from(e: crate::tls::TlsError) -> Self {
        Error::Tls(Arc::new(e))
    }
}

impl Error {
    /// Whether reconnecting may fix what this error ended: the network or the broker went
    /// away (I/O errors, end of file, missed heartbeats, a timeout), or the broker closed the
    /// connection for a reason of its own (320 `CONNECTION_FORCED` from `stop_app` or
    /// `close_connection`, 541 `INTERNAL_ERROR`, ...).
    ///
    /// Not recoverable, because a new connection would fail the same way or because someone
    /// chose it: a close by this application; refused credentials (403) and an unknown or
    /// forbidden vhost (530) — retried only a few times, for a credentials provider to
    /// refresh a token; protocol and syntax errors (501, 502, 503, 505, a broker that sent
    /// bytes we cannot decode), which would only repeat; an unacceptable tuning or SASL
    /// mechanism; TLS certificate and configuration errors.
    pub fn is_recoverable(&self) -> bool {
        match self {
            Error::Io(_) | Error::MissedHeartbeats(_) | Error::Timeout(_) | Error::ConnectionLost(_) => true,
            Error::Disconnected(e) => e.is_recoverable(),
            Error::ConnectionClosed(r) => {
                r.initiator == Initiator::Server
                    && !matches!(
                        r.reply_code,
                        ReplyCode::ACCESS_REFUSED
                            | ReplyCode::INVALID_PATH
                            | ReplyCode::NOT_ALLOWED
                            | ReplyCode::FRAME_ERROR
                            | ReplyCode::SYNTAX_ERROR
                            | ReplyCode::COMMAND_INVALID
                            | ReplyCode::CHANNEL_ERROR
                            | ReplyCode::UNEXPECTED_FRAME
                            | ReplyCode::NOT_IMPLEMENTED
                    )
            }
            Error::Tls(e) => matches!(**e, crate::tls::TlsError::Io(_) | crate::tls::TlsError::ClosedAfterHandshake(_)),
            _ => false,
        }
    }

    /// The AMQP reply code, where the error has one.
    pub fn reply_code(&self) -> Option<ReplyCode> {
        match self {
            Error::ConnectionClosed(r) | Error::ChannelClosed(r) => Some(r.reply_code),
            Error::AccessRefused(_) => Some(ReplyCode::ACCESS_REFUSED),
            Error::Decode(e) => Some(e.reply_code()),
            Error::Protocol { reply_code, .. } => Some(*reply_code),
            _ => None,
        }
    }
}
