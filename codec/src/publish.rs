//! One-call encoding of a whole publish: method, content header and body frames split at
//! `frame_max`, either copied into one buffer or handed back as `Bytes` segments so that a
//! large body reaches the socket without being copied.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{
    BasicProperties, EncodeError, Limits,
    frame::{FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_METHOD, FRAME_OVERHEAD, encode_payload, put_frame_header},
    method::basic::Publish,
};

/// Largest body payload per frame for a negotiated `frame_max` (0 = no limit).
fn body_chunk(frame_max: u32) -> Result<usize, EncodeError> {
    match frame_max {
        0 => Ok(u32::MAX as usize - FRAME_OVERHEAD),
        n if n < Limits::FRAME_MIN_SIZE => Err(EncodeError::FrameMaxTooSmall(n)),
        n => Ok(n as usize - FRAME_OVERHEAD),
    }
}

/// Writes the method and content-header frames, checking the header frame against
/// `frame_max` (a huge `headers` table would otherwise make the broker drop us).
fn encode_prefix(
    buf: &mut BytesMut,
    channel: u16,
    publish: &Publish,
    properties: &BasicProperties,
    body_len: usize,
    frame_max: u32,
) -> Result<(), EncodeError> {
    let depth = Limits::DEFAULT_MAX_DEPTH;
    encode_payload(buf, FRAME_METHOD, channel, depth, |w| publish.write_with_ids(w))?;
    let header_start = buf.len();
    let header = HeaderRef { body_size: body_len as u64, properties };
    encode_payload(buf, FRAME_HEADER, channel, depth, |w| header.write(w))?;
    let header_len = buf.len() - header_start;
    if frame_max != 0 && header_len > frame_max as usize {
        return Err(EncodeError::FrameTooLarge { what: "content header", size: header_len, frame_max });
    }
    Ok(())
}

/// A content header over borrowed properties, so publishing clones nothing.
struct HeaderRef<'a> {
    body_size: u64,
    properties: &'a BasicProperties,
}

impl HeaderRef<'_> {
    fn write(&self, w: &mut crate::wire::Writer<'_>) -> Result<(), EncodeError> {
        w.short(crate::properties::BASIC_CLASS_ID)?;
        w.short(0)?;
        w.longlong(self.body_size)?;
        self.properties.write(w)
    }
}

impl Publish {
    /// Class and method ids followed by the arguments: a method frame payload.
    fn write_with_ids(&self, w: &mut crate::wire::Writer<'_>) -> Result<(), EncodeError> {
        w.short(Publish::CLASS_ID)?;
        w.short(Publish::METHOD_ID)?;
        self.write(w)
    }
}

/// Appends a whole publish to `buf`: the `basic.publish` method frame, the content header,
/// and the body split into frames of at most `frame_max` bytes (0 = no limit). The body is
/// copied into `buf`; for large bodies see [`encode_publish_vectored`].
///
/// On error nothing is left in `buf`.
///
/// ```
/// use bytes::BytesMut;
/// use lepus_codec::{BasicProperties, ShortStr, encode_publish, method::basic::Publish};
/// let publish = Publish { routing_key: ShortStr::from_static("jobs").unwrap(), ..Publish::default() };
/// let mut buf = BytesMut::new();
/// encode_publish(&mut buf, 1, &publish, &BasicProperties::default(), &[b'x'; 10_000], 4096).unwrap();
/// // method + header + three body frames (4088 + 4088 + 1824 bytes).
/// assert_eq!(buf.len(), 21 + 22 + 10_000 + 3 * 8);
/// ```
pub fn encode_publish(
    buf: &mut BytesMut,
    channel: u16,
    publish: &Publish,
    properties: &BasicProperties,
    body: &[u8],
    frame_max: u32,
) -> Result<(), EncodeError> {
    let start = buf.len();
    let result = (|| {
        let chunk = body_chunk(frame_max)?;
        encode_prefix(buf, channel, publish, properties, body.len(), frame_max)?;
        buf.reserve(body.len() + body.len().div_ceil(chunk) * FRAME_OVERHEAD);
        for part in body.chunks(chunk) {
            // `chunk` fits a u32 frame size by construction.
            put_frame_header(buf, FRAME_BODY, channel, part.len() as u32);
            buf.put_slice(part);
            buf.put_u8(FRAME_END);
        }
        Ok(())
    })();
    if result.is_err() {
        buf.truncate(start);
    }
    result
}

/// Like [`encode_publish`], but the body is never copied: `out` receives, in order, `Bytes`
/// segments to write (ideally with one vectored write) — frame envelopes encoded into `buf`
/// alternating with slices of `body`. Every segment shares memory with `buf`'s allocation
/// or with `body`. Bytes already in `buf` (an outgoing write buffer) go out first, at the
/// start of the first segment.
///
/// On error `out` and `buf` are left as they were.
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use lepus_codec::{BasicProperties, encode_publish_vectored, method::basic::Publish};
/// let body = Bytes::from(vec![7u8; 300_000]);
/// let (mut buf, mut out) = (BytesMut::new(), Vec::new());
/// encode_publish_vectored(&mut buf, 1, &Publish::default(), &BasicProperties::default(), &body, 131_072, &mut out).unwrap();
/// // Three body slices point into `body` itself.
/// let slices = out.iter().filter(|s| s.as_ptr() >= body.as_ptr() && s.len() > 100).count();
/// assert_eq!(slices, 3);
/// ```
pub fn encode_publish_vectored(
    buf: &mut BytesMut,
    channel: u16,
    publish: &Publish,
    properties: &BasicProperties,
    body: &Bytes,
    frame_max: u32,
    out: &mut Vec<Bytes>,
) -> Result<(), EncodeError> {
    let chunk = body_chunk(frame_max)?;
    let start = buf.len();
    if let Err(e) = encode_prefix(buf, channel, publish, properties, body.len(), frame_max) {
        buf.truncate(start);
        return Err(e);
    }
    let mut offset = 0;
    while offset < body.len() {
        let len = chunk.min(body.len() - offset);
        put_frame_header(buf, FRAME_BODY, channel, len as u32);
        out.push(buf.split().freeze());
        out.push(body.slice(offset..offset + len));
        buf.put_u8(FRAME_END);
        offset += len;
    }
    out.push(buf.split().freeze());
    Ok(())
}
