//! Frames: the envelope `type:u8 channel:u16 size:u32 payload 0xCE`, and the protocol header.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{
    ContentHeader, DecodeError, EncodeError, Limits, Method,
    wire::{Reader, Writer, patch_u32_len},
};

/// Frame type octet of a method frame.
pub const FRAME_METHOD: u8 = 1;
/// Frame type octet of a content header frame.
pub const FRAME_HEADER: u8 = 2;
/// Frame type octet of a content body frame.
pub const FRAME_BODY: u8 = 3;
/// Frame type octet of a heartbeat frame.
pub const FRAME_HEARTBEAT: u8 = 8;
/// The octet that ends every frame.
pub const FRAME_END: u8 = 0xCE;
/// Bytes a frame adds around its payload: 7 of header, 1 end octet.
pub const FRAME_OVERHEAD: usize = 8;
/// The header a client sends first to ask for AMQP 0-9-1.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";

/// One AMQP frame.
// Headers are the largest variant; boxing them would cost an allocation per message,
// which matters more on the hot path than moving a few hundred bytes.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A method on a channel (channel 0 for `connection.*`).
    Method(u16, Method),
    /// A content header on a channel.
    Header(u16, ContentHeader),
    /// A content body fragment on a channel; shares the read buffer's memory.
    Body(u16, Bytes),
    /// A heartbeat (always channel 0).
    Heartbeat,
}

impl Frame {
    /// The channel the frame travels on.
    pub const fn channel(&self) -> u16 {
        match self {
            Frame::Method(c, _) | Frame::Header(c, _) | Frame::Body(c, _) => *c,
            Frame::Heartbeat => 0,
        }
    }

    /// Appends this frame to `buf`. Nesting is limited to [`Limits::DEFAULT_MAX_DEPTH`];
    /// use [`Frame::encode_with_depth`] for another limit.
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        self.encode_with_depth(buf, Limits::DEFAULT_MAX_DEPTH)
    }

    /// Appends this frame to `buf`, refusing tables nested deeper than `max_depth`.
    /// On error `buf` is left as it was.
    pub fn encode_with_depth(&self, buf: &mut BytesMut, max_depth: usize) -> Result<(), EncodeError> {
        let start = buf.len();
        let result = match self {
            Frame::Method(channel, method) => {
                encode_payload(buf, FRAME_METHOD, *channel, max_depth, |w| method.write(w))
            }
            Frame::Header(channel, header) => {
                encode_payload(buf, FRAME_HEADER, *channel, max_depth, |w| header.write(w))
            }
            Frame::Body(channel, body) => encode_body(buf, *channel, body),
            Frame::Heartbeat => {
                buf.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
                Ok(())
            }
        };
        if result.is_err() {
            buf.truncate(start);
        }
        result
    }
}

/// Writes one frame whose payload `write` produces, patching the size afterwards.
pub(crate) fn encode_payload(
    buf: &mut BytesMut,
    frame_type: u8,
    channel: u16,
    max_depth: usize,
    write: impl FnOnce(&mut Writer<'_>) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    buf.put_u8(frame_type);
    buf.put_u16(channel);
    let at = buf.len();
    buf.put_u32(0);
    let mut w = Writer::new(buf, max_depth);
    write(&mut w)?;
    w.flush_bits();
    patch_u32_len(buf, at, "frame payload")?;
    buf.put_u8(FRAME_END);
    Ok(())
}

/// Writes one body frame, copying `body` into `buf`.
pub(crate) fn encode_body(buf: &mut BytesMut, channel: u16, body: &[u8]) -> Result<(), EncodeError> {
    let size = u32::try_from(body.len()).map_err(|_| EncodeError::TooLong { what: "body frame", len: body.len() })?;
    buf.reserve(body.len() + FRAME_OVERHEAD);
    put_frame_header(buf, FRAME_BODY, channel, size);
    buf.put_slice(body);
    buf.put_u8(FRAME_END);
    Ok(())
}

pub(crate) fn put_frame_header(buf: &mut BytesMut, frame_type: u8, channel: u16, size: u32) {
    buf.put_u8(frame_type);
    buf.put_u16(channel);
    buf.put_u32(size);
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed. The 7-byte header is checked first — type,
/// and size against `limits` — so an oversized frame is refused before its payload is
/// waited for or buffered; nothing is allocated from a length prefix. A complete frame is
/// consumed from `buf` (also when it fails to decode). Body payloads, long strings and
/// short strings over 38 bytes are `Bytes` pointing into `buf`'s memory, not copies: such a
/// frame is split off without copying. Method and header frames whose strings are all short
/// enough to be copied inline are read in place and never split off, which saves the
/// reference counting.
///
/// If `buf` starts with `AMQP`, the peer refused our protocol version and sent its own
/// header: that is [`DecodeError::ProtocolRefused`].
///
/// ```
/// use bytes::BytesMut;
/// use lepus_codec::{Frame, Limits, decode_frame};
/// let mut buf = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 0, 0xCE][..]);
/// assert_eq!(decode_frame(&mut buf, &Limits::default()), Ok(Some(Frame::Heartbeat)));
/// assert!(buf.is_empty());
/// ```
pub fn decode_frame(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Frame>, DecodeError> {
    let Some(&frame_type) = buf.first() else {
        return Ok(None);
    };
    if frame_type == b'A' {
        return decode_protocol_header(buf);
    }
    if !matches!(frame_type, FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT) {
        return Err(DecodeError::UnknownFrameType(frame_type));
    }
    let Some((&[_, c0, c1, s0, s1, s2, s3], _)) = buf.split_first_chunk::<7>() else {
        return Ok(None);
    };
    let (channel, size) = (u16::from_be_bytes([c0, c1]), u32::from_be_bytes([s0, s1, s2, s3]));
    let whole = u64::from(size) + FRAME_OVERHEAD as u64;
    let max = limits.for_frame_type(frame_type);
    if whole > u64::from(max) {
        return Err(DecodeError::FrameTooLarge { size: whole, max });
    }
    // `whole <= max <= u32::MAX`, so it fits in usize on every supported platform.
    let whole = whole as usize;
    if buf.len() < whole {
        return Ok(None);
    }
    let end = buf.get(whole - 1).copied().unwrap_or_default();
    if end != FRAME_END {
        return Err(DecodeError::BadFrameEnd { found: end });
    }
    match frame_type {
        FRAME_BODY => Ok(Some(Frame::Body(channel, split_payload(buf, whole)))),
        FRAME_METHOD => decode_method(buf, channel, whole, limits),
        FRAME_HEADER => decode_header(buf, channel, whole, limits),
        // Only heartbeats remain: the type was checked before the payload was buffered.
        _ => {
            buf.advance(whole);
            if channel != 0 || size != 0 {
                return Err(DecodeError::BadHeartbeat { channel, size });
            }
            Ok(Some(Frame::Heartbeat))
        }
    }
}

/// The channel and announced body size of the content header frame at the front of `buf`,
/// read without decoding its properties; `None` if `buf` does not start with a whole enough
/// header frame.
///
/// A header whose properties cannot be decoded for a limit of ours (tables nested past
/// [`Limits::max_depth`]) is consumed by [`decode_frame`] like any other frame, so the stream
/// stays in step; with this, read before decoding, the receiver knows which message to refuse
/// (reject back to its queue) and how many body bytes of it to skip, instead of closing the
/// connection over one message.
///
/// ```
/// use bytes::BytesMut;
/// use lepus_codec::{BasicProperties, ContentHeader, Frame, header_frame_prefix};
/// let mut buf = BytesMut::new();
/// Frame::Header(3, ContentHeader::new(42, BasicProperties::default())).encode(&mut buf)?;
/// assert_eq!(header_frame_prefix(&buf), Some((3, 42)));
/// # Ok::<(), lepus_codec::EncodeError>(())
/// ```
pub fn header_frame_prefix(buf: &[u8]) -> Option<(u16, u64)> {
    // type, channel (2), size (4), then class (2), weight (2), body size (8).
    let (&[frame_type, c0, c1, _, _, _, _, _, _, _, _, b0, b1, b2, b3, b4, b5, b6, b7], _) =
        buf.split_first_chunk::<19>()?;
    (frame_type == FRAME_HEADER)
        .then(|| (u16::from_be_bytes([c0, c1]), u64::from_be_bytes([b0, b1, b2, b3, b4, b5, b6, b7])))
}

// Method and header frames are read straight from the buffer first, without splitting the
// frame off; that is enough unless a field has to share the payload (see `Reader`), and
// then the frame is split off and read again. Both functions consume the frame whatever
// the outcome, as splitting it off first did.

/// Decodes the method frame of `whole` bytes at the front of `buf`.
#[inline]
fn decode_method(
    buf: &mut BytesMut,
    channel: u16,
    whole: usize,
    limits: &Limits,
) -> Result<Option<Frame>, DecodeError> {
    let mut r = Reader::borrowed(payload_of(buf, whole), limits.max_depth);
    match Method::read(&mut r) {
        Ok(method) => {
            buf.advance(whole);
            Ok(Some(Frame::Method(channel, method)))
        }
        Err(_) if r.needs_shared => {
            let payload = split_payload(buf, whole);
            Ok(Some(Frame::Method(channel, Method::read(&mut Reader::new(&payload, limits.max_depth))?)))
        }
        Err(e) => {
            buf.advance(whole);
            Err(e)
        }
    }
}

/// Decodes the content header frame of `whole` bytes at the front of `buf`.
///
/// The header is filled in where it is returned from: built and then moved into the frame
/// and the result, its properties (hundreds of bytes) would be copied several times.
#[inline]
fn decode_header(
    buf: &mut BytesMut,
    channel: u16,
    whole: usize,
    limits: &Limits,
) -> Result<Option<Frame>, DecodeError> {
    let mut frame = Ok(Some(Frame::Header(channel, ContentHeader::default())));
    if let Ok(Some(Frame::Header(_, header))) = &mut frame {
        let mut r = Reader::borrowed(payload_of(buf, whole), limits.max_depth);
        match header.read_into(&mut r) {
            Err(_) if r.needs_shared => {
                let payload = split_payload(buf, whole);
                *header = ContentHeader::default();
                header.read_into(&mut Reader::new(&payload, limits.max_depth))?;
            }
            result => {
                buf.advance(whole);
                result?;
            }
        }
    }
    frame
}

/// The payload of the frame of `whole` bytes at the front of `buf`, in place.
#[inline]
fn payload_of(buf: &BytesMut, whole: usize) -> &[u8] {
    buf.get(7..whole - 1).unwrap_or_default()
}

/// Splits the frame of `whole` bytes off `buf`; returns its payload, sharing the memory.
#[inline]
fn split_payload(buf: &mut BytesMut, whole: usize) -> Bytes {
    let mut payload = buf.split_to(whole).freeze();
    payload.advance(7);
    payload.truncate(whole - FRAME_OVERHEAD);
    payload
}

/// The peer sent `AMQP` + version instead of a frame: it refuses the version we asked for.
fn decode_protocol_header(buf: &BytesMut) -> Result<Option<Frame>, DecodeError> {
    let prefix_len = buf.len().min(4);
    if buf.get(..prefix_len) != PROTOCOL_HEADER.get(..prefix_len) {
        return Err(DecodeError::UnknownFrameType(b'A'));
    }
    match buf.get(..8) {
        Some(&[_, _, _, _, protocol_id, major, minor, revision]) => {
            Err(DecodeError::ProtocolRefused { protocol_id, major, minor, revision })
        }
        _ => Ok(None),
    }
}
