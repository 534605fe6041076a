//! `ShortStr`: an AMQP short string (at most 255 bytes), zero-copy over `Bytes`.

use std::{borrow::Borrow, fmt, ops::Deref};

use bytes::Bytes;

use crate::EncodeError;

/// An AMQP short string: at most 255 bytes, by construction.
///
/// Decoded short strings of up to 38 bytes (consumer tags, exchange names, most routing
/// keys) are stored inline; longer ones share the frame's memory. The bytes are kept as
/// received, so a string that is not UTF-8 still round-trips; [`ShortStr::as_str`] checks
/// the encoding.
///
/// ```
/// use lepus_codec::ShortStr;
/// let key = ShortStr::try_from("orders.eu").unwrap();
/// assert_eq!(key.as_str(), Some("orders.eu"));
/// assert!(ShortStr::try_from("x".repeat(256)).is_err());
/// ```
#[derive(Clone)]
pub struct ShortStr(Repr);

/// Longest string stored inline: the enum stays 40 bytes, close to `Bytes`' 32.
const INLINE: usize = 38;

/// Inline bytes, or a shared `Bytes`: copying a few bytes beats the two atomic operations
/// a shared slice costs (one to take it, one to drop it).
#[derive(Clone)]
enum Repr {
    Inline(u8, [u8; INLINE]),
    Shared(Bytes),
}

impl Default for ShortStr {
    fn default() -> Self {
        ShortStr::new()
    }
}
impl PartialEq for ShortStr {
    fn eq(&self, o: &Self) -> bool {
        self.as_bytes() == o.as_bytes()
    }
}
impl Eq for ShortStr {}
impl std::hash::Hash for ShortStr {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_bytes().hash(h);
    }
}
impl PartialOrd for ShortStr {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for ShortStr {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(o.as_bytes())
    }
}

impl ShortStr {
    /// The maximum length in bytes.
    pub const MAX_LEN: usize = 255;

    /// An empty short string.
    pub const fn new() -> Self {
        ShortStr(Repr::Shared(Bytes::new()))
    }

    /// The first `len` bytes of `src` copied inline, if `len` is small enough and `src`
    /// that long (decoder use).
    #[inline]
    pub(crate) fn inline_prefix(src: &[u8], len: usize) -> Option<Self> {
        if len > INLINE {
            return None;
        }
        let buf = if let Some(window) = src.first_chunk::<INLINE>() {
            // A fixed-size copy is a few vector moves where a copy of `len` bytes is a call
            // to `memcpy`. The bytes after `len` are never looked at.
            *window
        } else {
            let mut buf = [0u8; INLINE];
            buf.get_mut(..len)?.copy_from_slice(src.get(..len)?);
            buf
        };
        Some(ShortStr(Repr::Inline(len as u8, buf)))
    }

    /// A short string from a static string, without copying.
    ///
    /// Fails for strings over 255 bytes, like every other constructor.
    pub fn from_static(s: &'static str) -> Result<Self, EncodeError> {
        Self::from_bytes(Bytes::from_static(s.as_bytes()))
    }

    /// A short string over these bytes; fails if they are over 255 bytes.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, EncodeError> {
        if bytes.len() > Self::MAX_LEN {
            return Err(EncodeError::ShortStringTooLong { len: bytes.len() });
        }
        Ok(ShortStr(Repr::Shared(bytes)))
    }

    /// A literal known to be at most 255 bytes (spec defaults); checked in debug builds.
    pub(crate) const fn from_static_unchecked(s: &'static str) -> Self {
        debug_assert!(s.len() <= Self::MAX_LEN);
        ShortStr(Repr::Shared(Bytes::from_static(s.as_bytes())))
    }

    /// Wraps bytes already known to be at most 255 bytes long (decoder use).
    pub(crate) fn from_bytes_unchecked(bytes: Bytes) -> Self {
        debug_assert!(bytes.len() <= Self::MAX_LEN);
        ShortStr(Repr::Shared(bytes))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline(len, buf) => buf.get(..*len as usize).unwrap_or_default(),
            Repr::Shared(b) => b,
        }
    }

    /// The bytes as `&str`, or `None` if they are not UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.as_bytes()).ok()
    }

    /// The underlying `Bytes` (cheap clone).
    pub fn to_bytes(&self) -> Bytes {
        match &self.0 {
            Repr::Inline(..) => Bytes::copy_from_slice(self.as_bytes()),
            Repr::Shared(b) => b.clone(),
        }
    }

    /// Consumes the string, returning its `Bytes`.
    pub fn into_bytes(self) -> Bytes {
        match self.0 {
            Repr::Inline(..) => Bytes::copy_from_slice(self.as_bytes()),
            Repr::Shared(b) => b,
        }
    }
}

impl Deref for ShortStr {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for ShortStr {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Borrow<[u8]> for ShortStr {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(s) => fmt::Debug::fmt(s, f),
            None => write!(f, "b{:?}", String::from_utf8_lossy(self.as_bytes())),
        }
    }
}

impl fmt::Display for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl PartialEq<str> for ShortStr {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for ShortStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl TryFrom<&str> for ShortStr {
    type Error = EncodeError;
    /// Copies the string: inline when it is short (no allocation, as for every routing key
    /// and queue name up to 38 bytes), else into a new shared buffer.
    fn try_from(s: &str) -> Result<Self, EncodeError> {
        if let Some(inline) = Self::inline_prefix(s.as_bytes(), s.len()) {
            return Ok(inline);
        }
        Self::from_bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl TryFrom<String> for ShortStr {
    type Error = EncodeError;
    /// Takes the string's allocation without copying.
    fn try_from(s: String) -> Result<Self, EncodeError> {
        Self::from_bytes(Bytes::from(s))
    }
}

impl TryFrom<&String> for ShortStr {
    type Error = EncodeError;
    fn try_from(s: &String) -> Result<Self, EncodeError> {
        Self::try_from(s.as_str())
    }
}

impl TryFrom<Bytes> for ShortStr {
    type Error = EncodeError;
    fn try_from(b: Bytes) -> Result<Self, EncodeError> {
        Self::from_bytes(b)
    }
}

impl TryFrom<&[u8]> for ShortStr {
    type Error = EncodeError;
    fn try_from(b: &[u8]) -> Result<Self, EncodeError> {
        Self::from_bytes(Bytes::copy_from_slice(b))
    }
}
