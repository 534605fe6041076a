//! AMQP reply codes as an open newtype, so codes this crate does not name survive intact.

use std::fmt;

/// An AMQP 0-9-1 reply code (`connection.close`, `channel.close`, `basic.return`).
///
/// The named constants are the codes of the 0-9-1 specification; any other value is kept
/// as-is, so a code from a newer broker is reported rather than lost.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyCode(pub u16);

macro_rules! reply_codes {
    ($($(#[$doc:meta])* $name:ident = $code:literal, hard = $hard:literal;)*) => {
        impl ReplyCode {
            $($(#[$doc])* pub const $name: ReplyCode = ReplyCode($code);)*

            /// The specification's name for this code, if it has one (`"NOT_FOUND"`).
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($code => Some(stringify!($name)),)*
                    _ => None,
                }
            }

            /// True for codes that close the whole connection (hard errors), false for
            /// those that close only a channel (soft errors) and for unknown codes.
            ///
            /// RabbitMQ treats 502 `SYNTAX_ERROR` as a connection error, and so does this.
            pub const fn is_hard(self) -> bool {
                match self.0 {
                    $($code => $hard,)*
                    _ => false,
                }
            }
        }
    };
}

reply_codes! {
    /// 200: success (`connection.close` / `channel.close` without an error).
    REPLY_SUCCESS = 200, hard = false;
    /// 311: the client published content too large for the broker.
    CONTENT_TOO_LARGE = 311, hard = false;
    /// 312: a mandatory message could not be routed (`basic.return`).
    NO_ROUTE = 312, hard = false;
    /// 313: an immediate message could not be delivered (`basic.return`).
    NO_CONSUMERS = 313, hard = false;
    /// 320: an operator closed the connection (e.g. `rabbitmqctl close_connection`).
    CONNECTION_FORCED = 320, hard = true;
    /// 402: the virtual host or path is not valid.
    INVALID_PATH = 402, hard = true;
    /// 403: access refused (bad credentials, missing permission).
    ACCESS_REFUSED = 403, hard = false;
    /// 404: the named exchange or queue does not exist.
    NOT_FOUND = 404, hard = false;
    /// 405: the resource is locked by another connection (exclusive queue).
    RESOURCE_LOCKED = 405, hard = false;
    /// 406: a precondition failed (e.g. redeclare with other arguments).
    PRECONDITION_FAILED = 406, hard = false;
    /// 501: a malformed frame.
    FRAME_ERROR = 501, hard = true;
    /// 502: a frame whose fields could not be parsed.
    SYNTAX_ERROR = 502, hard = true;
    /// 503: a method that is not valid here.
    COMMAND_INVALID = 503, hard = true;
    /// 504: a channel that is not open, or a channel error.
    CHANNEL_ERROR = 504, hard = true;
    /// 505: a frame type that was not expected here (e.g. a body without a header).
    UNEXPECTED_FRAME = 505, hard = true;
    /// 506: the peer ran out of a resource.
    RESOURCE_ERROR = 506, hard = true;
    /// 530: the operation is not allowed (e.g. an unknown virtual host).
    NOT_ALLOWED = 530, hard = true;
    /// 540: the functionality is not implemented by the peer.
    NOT_IMPLEMENTED = 540, hard = true;
    /// 541: the peer hit an internal error.
    INTERNAL_ERROR = 541, hard = true;
}

impl ReplyCode {
    /// True for 200 `REPLY_SUCCESS`.
    pub const fn is_success(self) -> bool {
        self.0 == 200
    }
}

impl fmt::Debug for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{}({name})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl From<u16> for ReplyCode {
    fn from(code: u16) -> Self {
        ReplyCode(code)
    }
}

impl From<ReplyCode> for u16 {
    fn from(code: ReplyCode) -> Self {
        code.0
    }
}

#[cfg(test)]
mod tests {
    use super::ReplyCode;

    #[test]
    fn hard_and_soft_codes_follow_rabbitmq() {
        for soft in [311, 312, 313, 403, 404, 405, 406] {
            assert!(!ReplyCode(soft).is_hard(), "{soft} must be soft");
        }
        for hard in [320, 402, 501, 502, 503, 504, 505, 506, 530, 540, 541] {
            assert!(ReplyCode(hard).is_hard(), "{hard} must be hard");
        }
        assert!(!ReplyCode(999).is_hard());
    }

    #[test]
    fn unknown_codes_survive_and_print() {
        assert_eq!(format!("{}", ReplyCode(404)), "404(NOT_FOUND)");
        assert_eq!(format!("{}", ReplyCode(777)), "777");
        assert_eq!(ReplyCode::from(777u16).0, 777);
    }
}
