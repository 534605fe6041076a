//! Frames built by hand, byte by byte, for tests that must send what the encoder never would.

use bytes::{BufMut, BytesMut};

/// A whole frame: `type channel size payload 0xCE`.
pub(crate) fn frame(ty: u8, ch: u16, payload: &[u8]) -> BytesMut {
    frame_with_end(ty, ch, payload, 0xCE)
}

/// A whole frame with a chosen end octet.
pub(crate) fn frame_with_end(ty: u8, ch: u16, payload: &[u8], end: u8) -> BytesMut {
    let mut buf = frame_header(ty, ch, u32::try_from(payload.len()).unwrap());
    buf.put_slice(payload);
    buf.put_u8(end);
    buf
}

/// Only the 7-byte frame header, claiming `size` payload bytes that never follow.
pub(crate) fn frame_header(ty: u8, ch: u16, size: u32) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u8(ty);
    buf.put_u16(ch);
    buf.put_u32(size);
    buf
}

/// A method frame payload: class id, method id, raw argument bytes.
pub(crate) fn method_payload(class_id: u16, method_id: u16, args: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.put_u16(class_id);
    p.put_u16(method_id);
    p.put_slice(args);
    p
}

/// A content header payload: class, weight 0, body size, flag words, raw property bytes.
pub(crate) fn header_payload(class_id: u16, body_size: u64, flags: &[u16], props: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.put_u16(class_id);
    p.put_u16(0);
    p.put_u64(body_size);
    for f in flags {
        p.put_u16(*f);
    }
    p.put_slice(props);
    p
}

/// `connection.start` arguments (0-9, `server_properties`, mechanisms, locales) around raw
/// `server_properties` bytes (length prefix included).
pub(crate) fn connection_start_args(server_properties: &[u8]) -> Vec<u8> {
    let mut a = vec![0, 9];
    a.put_slice(server_properties);
    for s in [&b"PLAIN"[..], b"en_US"] {
        a.put_u32(u32::try_from(s.len()).unwrap());
        a.put_slice(s);
    }
    a
}
