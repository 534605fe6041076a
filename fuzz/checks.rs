//! The checks behind the fuzz targets, shared with the corpus replay test.
//!
//! Each fuzz target in `fuzz_targets/` and the ordinary test `codec/tests/fuzz_corpus.rs`
//! include this one file (`#[path = ...] mod checks;`), so a corpus or regression input is
//! held to exactly the same rules under `cargo fuzz` and under `cargo test`. It depends on
//! `lepus_codec` and `bytes` only, and does no IO.
//!
//! Every check feeds arbitrary bytes to the public API and panics (through `assert!`) only
//! when the codec breaks one of its promises:
//!
//! - decoding never panics, and an error maps to a connection-level reply code;
//! - a decoded frame re-encodes, never to more bytes than it came in, and the re-encoded
//!   bytes decode to an equal frame that encodes to the very same bytes again (encoding is
//!   stable after one round; the first round may normalise, e.g. a `bit` octet `0xFF`
//!   comes back as `0x01`);
//! - `decode_frame` asks for more bytes (`Ok(None)`) on a proper prefix of a frame (0, 1,
//!   6, 7 bytes, half of it, all but its last byte), and consumes nothing when it does;
//! - field tables decode the same wherever they sit, and the nesting limit is exact;
//! - `ContentAssembler` agrees with a small reference model of AMQP §4.2.6 and hands out
//!   bodies whose length is the header's `body_size`.

use bytes::{Bytes, BytesMut};
use lepus_codec::{
    BASIC_CLASS_ID, Content, ContentAssembler, ContentHeader, DecodeError, EncodeError, FRAME_END, FRAME_HEADER,
    FRAME_METHOD, FRAME_OVERHEAD, FieldArray, FieldTable, FieldValue, Frame, Limits, Method, decode_frame,
};

/// A check over one fuzz input.
pub(crate) type Check = fn(&[u8]);

/// Every target, by the name of its corpus directory, with the check that replays it.
pub(crate) const TARGETS: [(&str, Check); 4] = [
    ("frame", check_frame),
    ("field_table", check_field_table),
    ("method", check_method),
    ("content_header", check_content_header),
];

/// Limits before tuning (4096-byte frames) and after RabbitMQ's usual tune (128 KiB).
fn frame_limits() -> [Limits; 2] {
    [Limits::default(), Limits::default().tuned(131_072, Limits::DEFAULT_CONTROL_FRAME_MAX)]
}

/// Limits that let any fuzz input through as one frame, so only the payload is judged.
fn roomy_limits() -> Limits {
    Limits { frame_max: u32::MAX, control_frame_max: u32::MAX, ..Limits::default() }
}

/// Target `frame`: the bytes as a read buffer, decoded frame after frame, under both
/// [`frame_limits`].
pub(crate) fn check_frame(data: &[u8]) {
    for limits in frame_limits() {
        check_stream(data, &limits);
    }
}

/// Decodes `data` until it runs out or fails, checking every frame on the way.
fn check_stream(data: &[u8], limits: &Limits) {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        let offset = data.len() - before;
        match decode_frame(&mut buf, limits) {
            Ok(Some(frame)) => {
                let used = before - buf.len();
                let wire = data.get(offset..offset + used).unwrap_or_default();
                check_frame_size(&frame, used, limits);
                check_prefixes(wire, limits);
                check_roundtrip(&frame, limits, used);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) must consume nothing");
                break;
            }
            Err(error) => {
                check_error(&error);
                break;
            }
        }
    }
}

/// A decoded frame took at least the envelope and at most the limit for its type.
fn check_frame_size(frame: &Frame, used: usize, limits: &Limits) {
    assert!(used >= FRAME_OVERHEAD, "a frame of {used} bytes is shorter than its envelope");
    let max = match frame {
        Frame::Body(..) => limits.frame_max,
        _ => limits.control_frame_max.max(limits.frame_max),
    };
    assert!(used as u64 <= u64::from(max), "a {used}-byte frame got past the limit {max}");
    if let Frame::Body(_, body) = frame {
        assert_eq!(body.len() + FRAME_OVERHEAD, used, "a body frame's payload is the whole payload");
    }
}

/// Proper prefixes of a complete frame are "need more bytes" and leave the buffer be. A
/// sample of cut points, the ones around the header and the end, keeps this cheap.
fn check_prefixes(wire: &[u8], limits: &Limits) {
    let len = wire.len();
    for cut in [0, 1, 6, 7, len / 2, len.saturating_sub(1)] {
        if cut >= len {
            continue;
        }
        let prefix = wire.get(..cut).unwrap_or_default();
        let mut buf = BytesMut::from(prefix);
        let result = decode_frame(&mut buf, limits);
        assert_eq!(result, Ok(None), "{cut} of {len} bytes of a good frame");
        assert_eq!(&buf[..], prefix, "an incomplete frame must stay in the buffer");
    }
}

/// Re-encodes a decoded frame and checks that encoding is stable after one round.
fn check_roundtrip(frame: &Frame, limits: &Limits, wire_len: usize) {
    let mut first = BytesMut::new();
    let encoded = frame.encode(&mut first);
    assert_eq!(encoded, Ok(()), "a decoded frame must encode: {frame:?}");
    assert!(first.len() <= wire_len, "re-encoding grew a {wire_len}-byte frame to {} bytes", first.len());

    // Encoding appends and leaves what was in the buffer alone.
    let mut appended = BytesMut::from(&b"prefix"[..]);
    assert_eq!(frame.encode(&mut appended), Ok(()));
    assert_eq!(appended.get(..6), Some(&b"prefix"[..]));
    assert_eq!(appended.get(6..), Some(&first[..]));

    let mut wire = first.clone();
    let again = decode_frame(&mut wire, limits);
    assert!(wire.is_empty(), "the re-encoded frame must decode whole: {again:?}");
    let again = match again {
        Ok(Some(again)) => again,
        other => {
            assert_eq!(other, Ok(Some(frame.clone())), "the re-encoded frame must decode");
            return;
        }
    };
    assert_eq!(&again, frame, "decode(encode(frame)) must equal frame");

    let mut second = BytesMut::new();
    assert_eq!(again.encode(&mut second), Ok(()));
    assert_eq!(first, second, "encode(decode(encode(frame))) must equal encode(frame)");
}

/// Every decode error closes the connection with one of the codes for bad input.
fn check_error(error: &DecodeError) {
    let code = error.reply_code();
    assert!(matches!(code.0, 501 | 502 | 503 | 505), "{error:?} maps to reply code {}, not a bad-input code", code.0);
    assert!(code.is_hard(), "{error:?} must close the connection");
    assert!(!error.to_string().is_empty());
}

/// Wraps `payload` in one frame and decodes it: the frame must be taken whole, or refused.
fn decode_single(frame_type: u8, channel: u16, payload: &[u8], limits: &Limits) -> Option<Result<Frame, DecodeError>> {
    let size = u32::try_from(payload.len()).ok()?;
    let mut wire = BytesMut::with_capacity(payload.len() + FRAME_OVERHEAD);
    wire.extend_from_slice(&[frame_type]);
    wire.extend_from_slice(&channel.to_be_bytes());
    wire.extend_from_slice(&size.to_be_bytes());
    wire.extend_from_slice(payload);
    wire.extend_from_slice(&[FRAME_END]);
    let wire_len = wire.len();
    match decode_frame(&mut wire, limits) {
        Ok(Some(frame)) => {
            assert!(wire.is_empty(), "one whole frame in, one frame out");
            assert_eq!(frame.channel(), channel);
            check_roundtrip(&frame, limits, wire_len);
            Some(Ok(frame))
        }
        Ok(None) => {
            assert!(wire_len < FRAME_OVERHEAD, "a whole {wire_len}-byte frame was not decoded");
            None
        }
        Err(error) => {
            check_error(&error);
            Some(Err(error))
        }
    }
}

/// Target `method`: the first two bytes are the channel, the rest a method frame's payload.
pub(crate) fn check_method(data: &[u8]) {
    let [hi, lo, payload @ ..] = data else {
        return;
    };
    let channel = u16::from_be_bytes([*hi, *lo]);
    let limits = Limits::default().tuned(131_072, Limits::DEFAULT_CONTROL_FRAME_MAX);
    match decode_single(FRAME_METHOD, channel, payload, &limits) {
        Some(Ok(Frame::Method(_, method))) => {
            let ids = payload.get(..4).map(|ids| {
                let [c0, c1, m0, m1] = <[u8; 4]>::try_from(ids).unwrap_or_default();
                (u16::from_be_bytes([c0, c1]), u16::from_be_bytes([m0, m1]))
            });
            assert_eq!(ids, Some((method.class_id(), method.method_id())), "ids of {method:?}");
            let listed =
                Method::ALL.iter().find(|(class, id, ..)| (*class, *id) == (method.class_id(), method.method_id()));
            assert_eq!(listed.map(|entry| entry.2), Some(method.name()), "Method::ALL lists {method:?}");
            if let Some(table) = method_table(&method) {
                check_table_value(table);
            }
        }
        Some(Ok(other)) => assert!(matches!(other, Frame::Method(..)), "a method frame decoded as {other:?}"),
        Some(Err(_)) | None => {}
    }
}

/// The field-table argument of a method, for those that have one.
fn method_table(method: &Method) -> Option<&FieldTable> {
    match method {
        Method::ConnectionStart(m) => Some(&m.server_properties),
        Method::ConnectionStartOk(m) => Some(&m.client_properties),
        Method::ExchangeDeclare(m) => Some(&m.arguments),
        Method::ExchangeBind(m) => Some(&m.arguments),
        Method::ExchangeUnbind(m) => Some(&m.arguments),
        Method::QueueDeclare(m) => Some(&m.arguments),
        Method::QueueBind(m) => Some(&m.arguments),
        Method::QueueUnbind(m) => Some(&m.arguments),
        Method::BasicConsume(m) => Some(&m.arguments),
        _ => None,
    }
}

/// Target `content_header`: the bytes as a content header frame's payload, and then again
/// as a sequence of frames fed to [`ContentAssembler`]s (see [`check_content_sequence`]).
pub(crate) fn check_content_header(data: &[u8]) {
    let limits = Limits::default().tuned(131_072, Limits::DEFAULT_CONTROL_FRAME_MAX);
    if let Some(Ok(frame)) = decode_single(FRAME_HEADER, 1, data, &limits) {
        let Frame::Header(_, header) = &frame else {
            assert!(matches!(frame, Frame::Header(..)), "a header frame decoded as {frame:?}");
            return;
        };
        let short_at =
            |at: usize| data.get(at..at + 2).and_then(|b| <[u8; 2]>::try_from(b).ok()).map(u16::from_be_bytes);
        assert_eq!(header.class_id, BASIC_CLASS_ID);
        assert_eq!(short_at(2), Some(header.weight));
        let size = data.get(4..12).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes);
        assert_eq!(size, Some(header.body_size));
        // The low bit only says another flag word follows; the rest name the properties.
        assert_eq!(short_at(12).map(|flags| flags & !1), Some(header.properties.flags()));
        if let Some(table) = &header.properties.headers {
            check_table_value(table);
        }
    }
    check_content_sequence(data);
}

/// Target `field_table`: the bytes as the body of a field table (its length prefix is
/// added), placed once in `connection.start` and once in a content header's `headers`.
pub(crate) fn check_field_table(data: &[u8]) {
    let Ok(len) = u32::try_from(data.len()) else {
        return;
    };
    let limits = roomy_limits();

    let mut start = Vec::with_capacity(data.len() + 18);
    start.extend_from_slice(&[0, 10, 0, 10, 0, 9]);
    start.extend_from_slice(&len.to_be_bytes());
    start.extend_from_slice(data);
    start.extend_from_slice(&[0; 8]); // empty mechanisms and locales
    let in_method = decode_single(FRAME_METHOD, 0, &start, &limits).map(|result| {
        result.map(|frame| match frame {
            Frame::Method(0, Method::ConnectionStart(start)) => start.server_properties,
            other => {
                assert!(matches!(other, Frame::Method(0, Method::ConnectionStart(_))), "decoded {other:?}");
                FieldTable::new()
            }
        })
    });

    let header = header_payload_around(data, len);
    let in_header = decode_single(FRAME_HEADER, 1, &header, &limits).map(|result| {
        result.map(|frame| match frame {
            Frame::Header(_, header) => header.properties.headers.unwrap_or_default(),
            other => {
                assert!(matches!(other, Frame::Header(..)), "decoded {other:?}");
                FieldTable::new()
            }
        })
    });

    assert_eq!(in_method, in_header, "a table must decode the same in a method and in a header");
    if let Some(Ok(table)) = in_method {
        check_table_value(&table);
        check_depth_limit(&table, &header);
    }
}

/// A content header payload whose only property is a `headers` table with this body.
fn header_payload_around(table_body: &[u8], len: u32) -> Vec<u8> {
    let mut header = Vec::with_capacity(table_body.len() + 18);
    header.extend_from_slice(&BASIC_CLASS_ID.to_be_bytes());
    header.extend_from_slice(&[0, 0]); // weight
    header.extend_from_slice(&[0; 8]); // body size
    header.extend_from_slice(&[0x20, 0x00]); // flags: headers only
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(table_body);
    header
}

/// Nesting level of a table: 1 for a flat one, one more per table or array inside.
fn table_depth(table: &FieldTable) -> usize {
    1 + table.iter().map(|(_, value)| value_depth(value)).max().unwrap_or(0)
}

fn array_depth(array: &FieldArray) -> usize {
    1 + array.0.iter().map(value_depth).max().unwrap_or(0)
}

fn value_depth(value: &FieldValue) -> usize {
    match value {
        FieldValue::Table(table) => table_depth(table),
        FieldValue::Array(array) => array_depth(array),
        _ => 0,
    }
}

/// The nesting limit is exact: a table of depth `d` decodes and encodes with limit `d` and
/// is refused, by the decoder and by the encoder, with limit `d - 1`.
fn check_depth_limit(table: &FieldTable, header_payload: &[u8]) {
    let depth = table_depth(table);
    assert!(depth <= Limits::DEFAULT_MAX_DEPTH, "a table of depth {depth} got past the limit");
    let exact = Limits { max_depth: depth, ..roomy_limits() };
    let shallow = Limits { max_depth: depth - 1, ..roomy_limits() };
    let decoded = decode_single(FRAME_HEADER, 1, header_payload, &exact);
    let decoded_table = decoded.and_then(|result| match result {
        Ok(Frame::Header(_, header)) => header.properties.headers,
        _ => None,
    });
    assert_eq!(decoded_table.as_ref(), Some(table), "depth {depth} with limit {depth}");
    let refused = decode_single(FRAME_HEADER, 1, header_payload, &shallow);
    assert_eq!(
        refused.map(|result| result.map(|_| ())),
        Some(Err(DecodeError::NestingTooDeep { limit: depth - 1 })),
        "depth {depth} with limit {}",
        depth - 1
    );

    let header =
        ContentHeader::new(0, lepus_codec::BasicProperties { headers: Some(table.clone()), ..Default::default() });
    let frame = Frame::Header(1, header);
    let mut buf = BytesMut::from(&b"kept"[..]);
    assert_eq!(frame.encode_with_depth(&mut buf, depth - 1), Err(EncodeError::NestingTooDeep { limit: depth - 1 }));
    assert_eq!(&buf[..], b"kept", "a failed encode must leave the buffer as it was");
    assert_eq!(frame.encode_with_depth(&mut buf, depth), Ok(()));
}

/// What can be checked on a decoded table by itself: lookups agree with iteration.
fn check_table_value(table: &FieldTable) {
    assert_eq!(table.len(), table.iter().count());
    assert_eq!(table.is_empty(), table.iter().next().is_none());
    // Lookups are linear: a few keys are enough to check that `get` finds the first entry.
    for (key, value) in table.iter().take(8) {
        let Some(name) = key.as_str() else {
            continue;
        };
        let first = table.iter().find(|(k, _)| k.as_bytes() == key.as_bytes()).map(|(_, v)| v);
        assert_eq!(table.get(name), first, "get({name:?})");
        if first == Some(value) {
            let mut copy = table.clone();
            assert_eq!(copy.remove(name).as_ref(), Some(value));
            assert_eq!(copy.len() + 1, table.len());
        }
    }
}

/// The largest messages the assemblers accept: one at the size of the golden delivery's
/// body (12 bytes, so the golden return's 15 are too many), and a roomier one.
const MAX_MESSAGE_SIZES: [u64; 2] = [12, 64 << 10];

/// The bytes as a sequence of frames, fed per channel to [`ContentAssembler`]s and to a
/// reference model, which must agree on every step. A heartbeat, which no assembler sees,
/// is where the refused methods are collected (`take_rejected`), so the fuzzer picks when.
pub(crate) fn check_content_sequence(data: &[u8]) {
    let limits = Limits::default().tuned(131_072, Limits::DEFAULT_CONTROL_FRAME_MAX);
    for max in MAX_MESSAGE_SIZES {
        let mut channels: Vec<Channel> = Vec::new();
        let mut buf = BytesMut::from(data);
        while let Ok(Some(frame)) = decode_frame(&mut buf, &limits) {
            if matches!(frame, Frame::Heartbeat) {
                channels.iter_mut().for_each(Channel::check_rejected);
                continue;
            }
            let id = frame.channel();
            let at = channels.iter().position(|c| c.id == id).unwrap_or_else(|| {
                channels.push(Channel {
                    id,
                    assembler: ContentAssembler::new(max),
                    model: Model::Idle,
                    rejected: None,
                });
                channels.len() - 1
            });
            if let Some(channel) = channels.get_mut(at) {
                channel.feed(frame, max);
            }
        }
        channels.iter_mut().for_each(Channel::check_rejected);
    }
}

/// One channel's assembler, and what the model says about it.
struct Channel {
    id: u16,
    assembler: ContentAssembler,
    model: Model,
    /// The method of the last message refused as too large, not yet taken.
    rejected: Option<Method>,
}

impl Channel {
    /// Feeds one frame to the assembler and the model and compares their answers.
    fn feed(&mut self, frame: Frame, max: u64) {
        let expected = self.model.expect(&frame, max, &mut self.rejected);
        let actual = match frame {
            Frame::Method(_, method) => self.assembler.method(method),
            Frame::Header(_, header) => self.assembler.header(header),
            Frame::Body(_, payload) => self.assembler.body(payload),
            Frame::Heartbeat => return,
        };
        let actual = match actual {
            Ok(None) => Expect::Nothing,
            Ok(Some(content)) => {
                assert_eq!(content.body.len() as u64, content.header.body_size, "assembled body length");
                assert!(content.method.has_content(), "{:?} carries no content", content.method);
                Expect::Message(Box::new(content))
            }
            Err(DecodeError::MessageTooLarge { size, max }) => Expect::TooLarge { size, max },
            Err(error) => {
                check_error(&error);
                assert!(matches!(error, DecodeError::UnexpectedFrame(_)), "{error:?}");
                Expect::Unexpected
            }
        };
        assert_eq!(actual, expected, "ContentAssembler and the model disagree on channel {}", self.id);
        assert_eq!(self.assembler.is_idle(), matches!(self.model, Model::Idle), "idle state");
    }

    /// The assembler hands out the last refused method once.
    fn check_rejected(&mut self) {
        assert_eq!(self.assembler.take_rejected(), self.rejected.take(), "take_rejected on channel {}", self.id);
        assert_eq!(self.assembler.take_rejected(), None, "take_rejected twice");
    }
}

/// What a channel's content assembly should be doing, per AMQP §4.2.6.
enum Model {
    Idle,
    /// A content method came; its header is due.
    Header(Method),
    /// The header came; body bytes so far.
    Body(Box<Pending>),
    /// A message over the cap: this many body bytes are still to be dropped.
    Discard(u64),
}

/// A message whose body is under way.
struct Pending {
    method: Method,
    header: ContentHeader,
    body: Vec<u8>,
}

/// The outcome the model expects from one frame.
#[derive(Debug, PartialEq)]
enum Expect {
    Nothing,
    Message(Box<Content>),
    Unexpected,
    TooLarge { size: u64, max: u64 },
}

impl Model {
    /// Steps the model over one frame and says what the assembler should answer. A message
    /// refused as too large leaves its method in `rejected`.
    fn expect(&mut self, frame: &Frame, max: u64, rejected: &mut Option<Method>) -> Expect {
        match (std::mem::replace(self, Model::Idle), frame) {
            (Model::Idle, Frame::Method(_, method)) => {
                if method.has_content() {
                    *self = Model::Header(method.clone());
                }
                Expect::Nothing
            }
            (Model::Header(method), Frame::Header(_, header)) => {
                if header.body_size > max {
                    *self = Model::Discard(header.body_size);
                    *rejected = Some(method);
                    Expect::TooLarge { size: header.body_size, max }
                } else if header.body_size == 0 {
                    Expect::Message(Box::new(Content { method, header: header.clone(), body: Bytes::new() }))
                } else {
                    *self = Model::Body(Box::new(Pending { method, header: header.clone(), body: Vec::new() }));
                    Expect::Nothing
                }
            }
            (Model::Body(mut pending), Frame::Body(_, payload)) => {
                if (pending.body.len() + payload.len()) as u64 > pending.header.body_size {
                    return Expect::Unexpected;
                }
                pending.body.extend_from_slice(payload);
                if pending.body.len() as u64 == pending.header.body_size {
                    let Pending { method, header, body } = *pending;
                    Expect::Message(Box::new(Content { method, header, body: Bytes::from(body) }))
                } else {
                    *self = Model::Body(pending);
                    Expect::Nothing
                }
            }
            (Model::Discard(remaining), Frame::Body(_, payload)) => {
                let remaining = remaining.saturating_sub(payload.len() as u64);
                if remaining > 0 {
                    *self = Model::Discard(remaining);
                }
                Expect::Nothing
            }
            // Heartbeats never reach an assembler; the state stays as it was.
            (state, Frame::Heartbeat) => {
                *self = state;
                Expect::Nothing
            }
            // A method inside content, a header without its method, a body without its
            // header: each is refused, and the channel starts over.
            _ => Expect::Unexpected,
        }
    }
}
