//! Checks a captured byte stream (see [`crate::proxy::Proxy::capture`]) the way a broker
//! would read it: every frame whole and valid, every message's frames in order (method,
//! header, exactly `body_size` bytes of body) and never interleaved with another method on
//! its channel, and nothing half-written at the end.

use std::collections::HashMap;

use bytes::BytesMut;
use lepus::codec::{Frame, Limits, Method, PROTOCOL_HEADER, decode_frame};

/// What a well-formed stream held.
#[derive(Debug, Default)]
pub struct Stream {
    /// Every method, in order, with its channel.
    pub methods: Vec<(u16, Method)>,
    /// Whole messages (method, header and body), over all channels.
    pub messages: usize,
    /// Heartbeat frames.
    pub heartbeats: usize,
}

/// Where a channel is in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    /// A content method came; its header is next.
    Header,
    /// This many body bytes are still to come.
    Body(u64),
}

/// Reads `bytes` (one direction of one connection, from its first byte) as frames.
/// `from_client` streams start with the protocol header. `frame_max` is the negotiated one.
///
/// # Errors
///
/// What is wrong and where (frame index and byte offset): an invalid or half-written frame,
/// a message whose frames are out of order, interleaved or cut short.
pub fn check_stream(bytes: &[u8], from_client: bool, frame_max: u32) -> Result<Stream, String> {
    let mut rest = bytes;
    if from_client {
        rest = rest.strip_prefix(&PROTOCOL_HEADER[..]).ok_or("the stream does not start with the protocol header")?;
    }
    let limits = Limits::default().tuned(frame_max, Limits::DEFAULT_CONTROL_FRAME_MAX);
    let mut buf = BytesMut::from(rest);
    let mut stream = Stream::default();
    let mut content: HashMap<u16, Content> = HashMap::new();
    let mut index = 0usize;
    loop {
        let offset = bytes.len() - buf.len();
        let frame = match decode_frame(&mut buf, &limits) {
            Ok(Some(frame)) => frame,
            Ok(None) if buf.is_empty() => break,
            Ok(None) => return Err(format!("{} bytes of a half-written frame at byte {offset}", buf.len())),
            Err(e) => return Err(format!("frame {index} at byte {offset} is invalid: {e}")),
        };
        let at = format!("frame {index} at byte {offset}");
        match frame {
            Frame::Method(channel, method) => {
                if let Some(state) = content.get(&channel) {
                    return Err(format!(
                        "{at}: {} on channel {channel} in the middle of a message ({state:?})",
                        method.name()
                    ));
                }
                if matches!(
                    method,
                    Method::BasicPublish(_) | Method::BasicDeliver(_) | Method::BasicReturn(_) | Method::BasicGetOk(_)
                ) {
                    content.insert(channel, Content::Header);
                }
                stream.methods.push((channel, method));
            }
            Frame::Header(channel, header) => match content.get(&channel) {
                Some(Content::Header) if header.body_size == 0 => {
                    content.remove(&channel);
                    stream.messages += 1;
                }
                Some(Content::Header) => {
                    content.insert(channel, Content::Body(header.body_size));
                }
                other => return Err(format!("{at}: a content header on channel {channel} where {other:?} was due")),
            },
            Frame::Body(channel, body) => match content.get(&channel) {
                Some(Content::Body(left)) if (body.len() as u64) < *left => {
                    content.insert(channel, Content::Body(*left - body.len() as u64));
                }
                Some(Content::Body(left)) if body.len() as u64 == *left => {
                    content.remove(&channel);
                    stream.messages += 1;
                }
                other => {
                    return Err(format!(
                        "{at}: {} body bytes on channel {channel} where {other:?} was due",
                        body.len()
                    ));
                }
            },
            Frame::Heartbeat => stream.heartbeats += 1,
        }
        index += 1;
    }
    if let Some((channel, state)) = content.iter().next() {
        return Err(format!("the stream ends inside a message on channel {channel} ({state:?})"));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lepus::codec::{BasicProperties, ShortStr, encode_publish, method::basic, method::queue};

    fn publish(channel: u16, body: &[u8]) -> Vec<u8> {
        let publish = basic::Publish { routing_key: ShortStr::try_from("q").unwrap(), ..basic::Publish::default() };
        let mut out = BytesMut::new();
        encode_publish(&mut out, channel, &publish, &BasicProperties::default(), body, 4096).unwrap();
        out.to_vec()
    }

    fn method(channel: u16) -> Vec<u8> {
        let mut out = BytesMut::new();
        Frame::Method(channel, queue::Declare::default().into()).encode(&mut out).unwrap();
        out.to_vec()
    }

    #[test]
    fn whole_messages_pass_and_every_kind_of_damage_is_named() {
        let two = [publish(1, &[7; 10_000]), method(2), publish(2, b"")].concat();
        let stream = check_stream(&two, false, 4096).unwrap();
        assert_eq!((stream.messages, stream.methods.len()), (2, 3));
        let mut with_header = PROTOCOL_HEADER.to_vec();
        with_header.extend_from_slice(&two);
        assert_eq!(check_stream(&with_header, true, 4096).unwrap().messages, 2);

        let whole = publish(1, &[7; 10_000]);
        let cut = check_stream(&whole[..whole.len() - 1], false, 4096).unwrap_err();
        assert!(cut.contains("half-written"), "{cut}");
        let first_body_frame_end = whole.len() - (10_000 - 2 * 4088) - 8;
        let short = check_stream(&whole[..first_body_frame_end], false, 4096).unwrap_err();
        assert!(short.contains("inside a message"), "{short}");
        let body_start = whole.len() - 10_000 - 3 * 8;
        let interleaved = [&whole[..body_start], &method(1)[..], &whole[body_start..]].concat();
        let err = check_stream(&interleaved, false, 4096).unwrap_err();
        assert!(err.contains("in the middle of a message"), "{err}");
        assert!(check_stream(&two, true, 4096).unwrap_err().contains("protocol header"));
    }
}
