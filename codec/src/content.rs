//! Content assembly: a content-bearing method, then its header, then body frames, checked
//! against the rules of AMQP 0-9-1 §4.2.6 — nothing else may interleave on that channel.
//!
//! Pure and per channel; the client keeps one assembler for each open channel. Memory grows
//! with body bytes actually received, never with the size a header announces.

use bytes::{Bytes, BytesMut};

use crate::{ContentHeader, DecodeError, Limits, Method};

/// A complete message: the method that announced it, its header, and the whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// `basic.deliver`, `basic.return`, `basic.get-ok` (or `basic.publish` on a server).
    pub method: Method,
    /// The content header.
    pub header: ContentHeader,
    /// The body. A body that came in one frame shares the read buffer's memory.
    pub body: Bytes,
}

// One per channel, and the body variant is the common one: no point boxing it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Default)]
enum State {
    #[default]
    Idle,
    Header(Method),
    Body {
        method: Method,
        header: ContentHeader,
        /// The first body frame, kept without copying in case it is the only one.
        first: Option<Bytes>,
        /// Later frames, appended as they come.
        rest: BytesMut,
        received: u64,
    },
    /// A message over the size cap: its body frames are consumed and dropped.
    Discard {
        remaining: u64,
    },
}

/// Assembles content frames on one channel. See the module documentation.
///
/// ```
/// use bytes::Bytes;
/// use lepus_codec::{BasicProperties, ContentAssembler, ContentHeader, Method, method::basic};
/// let mut asm = ContentAssembler::new(1 << 20);
/// assert_eq!(asm.method(Method::from(basic::Deliver::default())), Ok(None));
/// assert_eq!(asm.header(ContentHeader::new(5, BasicProperties::default())), Ok(None));
/// let content = asm.body(Bytes::from_static(b"hello")).unwrap().unwrap();
/// assert_eq!(content.body, "hello");
/// ```
#[derive(Debug)]
pub struct ContentAssembler {
    state: State,
    max_message_size: u64,
    /// The method of the last message refused as too large, for the caller to reject it.
    rejected: Option<Method>,
}

impl Default for ContentAssembler {
    fn default() -> Self {
        Self::new(Limits::DEFAULT_MAX_MESSAGE_SIZE)
    }
}

impl ContentAssembler {
    /// An idle assembler that refuses bodies over `max_message_size` bytes.
    pub fn new(max_message_size: u64) -> Self {
        ContentAssembler { state: State::Idle, max_message_size, rejected: None }
    }

    /// True between messages: a non-content method may come now.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle)
    }

    /// Feeds a method frame. A content-bearing method starts a message; any method while
    /// a message is incomplete is a 505 error. Returns `Ok(None)`: a method alone is never
    /// a whole message.
    pub fn method(&mut self, method: Method) -> Result<Option<Content>, DecodeError> {
        if !self.is_idle() {
            self.state = State::Idle;
            return Err(DecodeError::UnexpectedFrame("method frame in the middle of content"));
        }
        if method.has_content() {
            self.state = State::Header(method);
        }
        Ok(None)
    }

    /// Feeds a content header. A zero-size body completes the message at once.
    ///
    /// A body over the cap is [`DecodeError::MessageTooLarge`]; its body frames are then
    /// consumed silently, so the connection stays usable and the caller may reject the
    /// message (whose method it saw) rather than lose it.
    pub fn header(&mut self, header: ContentHeader) -> Result<Option<Content>, DecodeError> {
        let State::Header(method) = std::mem::take(&mut self.state) else {
            return Err(DecodeError::UnexpectedFrame("content header without a content method"));
        };
        if header.body_size > self.max_message_size {
            self.state = State::Discard { remaining: header.body_size };
            self.rejected = Some(method);
            return Err(DecodeError::MessageTooLarge { size: header.body_size, max: self.max_message_size });
        }
        if header.body_size == 0 {
            return Ok(Some(Content { method, header, body: Bytes::new() }));
        }
        self.state = State::Body { method, header, first: None, rest: BytesMut::new(), received: 0 };
        Ok(None)
    }

    /// Refuses the message whose header is due, announced with `body_size` bytes, because
    /// its header could not be read (see [`crate::header_frame_prefix`]): its body frames
    /// are then consumed silently, and its method is kept for [`ContentAssembler::take_rejected`].
    /// Without a content method before it, the header itself is out of place.
    pub fn refuse_header(&mut self, body_size: u64) -> Result<(), DecodeError> {
        let State::Header(method) = std::mem::take(&mut self.state) else {
            return Err(DecodeError::UnexpectedFrame("content header without a content method"));
        };
        if body_size > 0 {
            self.state = State::Discard { remaining: body_size };
        }
        self.rejected = Some(method);
        Ok(())
    }

    /// The method (e.g. `basic.deliver`, with its delivery tag) of the last message refused
    /// (with [`DecodeError::MessageTooLarge`], or by [`ContentAssembler::refuse_header`]), so the caller can reject it rather than lose it.
    pub fn take_rejected(&mut self) -> Option<Method> {
        self.rejected.take()
    }

    /// Feeds a body frame. Returns the message when its last byte arrived.
    pub fn body(&mut self, payload: Bytes) -> Result<Option<Content>, DecodeError> {
        let len = payload.len() as u64;
        match &mut self.state {
            State::Body { header, first, rest, received, .. } => {
                if *received + len > header.body_size {
                    self.state = State::Idle;
                    return Err(DecodeError::UnexpectedFrame("body frames longer than the header's body size"));
                }
                *received += len;
                if first.is_none() && rest.is_empty() {
                    *first = Some(payload);
                } else {
                    if let Some(first) = first.take() {
                        rest.extend_from_slice(&first);
                    }
                    rest.extend_from_slice(&payload);
                }
                if *received < header.body_size {
                    return Ok(None);
                }
            }
            State::Discard { remaining } => {
                *remaining = remaining.saturating_sub(len);
                if *remaining == 0 {
                    self.state = State::Idle;
                }
                return Ok(None);
            }
            State::Idle | State::Header(_) => {
                self.state = State::Idle;
                return Err(DecodeError::UnexpectedFrame("body frame without a content header"));
            }
        }
        match std::mem::take(&mut self.state) {
            State::Body { method, header, first, rest, .. } => {
                let body = first.unwrap_or_else(|| rest.freeze());
                Ok(Some(Content { method, header, body }))
            }
            // The match above returned for every other state.
            _ => Ok(None),
        }
    }
}
