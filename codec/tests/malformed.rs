//! The malformed-input catalogue of `RELIABILITY.md` at codec level: M1 (frame envelope),
//! M2 (oversized frames, and R2), M3 (oversized content), M4 (content sequencing), M6
//! (lengths, tags, ids, flags, heartbeats) and the codec side of M8 (`frame_max` when
//! encoding and tuning). M5 (nesting depth) is in `nesting_depth.rs`.
//!
//! Frames are built by hand so that every malformed byte is visible in the test. Every test
//! checks the exact `DecodeError` and the reply code the connection would be closed with.

use std::fmt::Debug;

use bytes::{BufMut, Bytes, BytesMut};

mod common;
use common::wire::{connection_start_args, frame, frame_header, frame_with_end, header_payload, method_payload};
use lepus_codec::{
    BasicProperties, Content, ContentAssembler, ContentHeader, DecodeError, EncodeError, FRAME_BODY, FRAME_HEADER,
    FRAME_HEARTBEAT, FRAME_METHOD, FieldTable, FieldValue, Frame, Limits, Method, ReplyCode, ShortStr, decode_frame,
    encode_publish,
    method::{basic, connection},
};

// ---------------------------------------------------------------------------------------
// Helpers: frames and payloads by hand.
// ---------------------------------------------------------------------------------------

/// A length-prefixed field table around raw entry bytes.
fn table(entries: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.put_u32(u32::try_from(entries.len()).unwrap());
    t.put_slice(entries);
    t
}

/// A `connection.start` frame whose `server_properties` are the raw bytes `table`.
fn connection_start_frame(table: &[u8]) -> BytesMut {
    frame(FRAME_METHOD, 0, &method_payload(10, 10, &connection_start_args(table)))
}

/// A content header frame whose `headers` property is the raw bytes `table`.
fn headers_frame(table: &[u8]) -> BytesMut {
    frame(FRAME_HEADER, 1, &header_payload(60, 0, &[0x2000], table))
}

fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
    decode_frame(buf, &Limits::default())
}

/// Limits after `connection.tune` negotiated `frame_max` 131072, default control cap.
fn tuned() -> Limits {
    Limits::default().tuned(131_072, Limits::DEFAULT_CONTROL_FRAME_MAX)
}

/// Asserts that `result` is exactly `expected` and that it maps to `code`.
#[track_caller]
fn assert_err<T: Debug>(result: Result<T, DecodeError>, expected: &DecodeError, code: ReplyCode) {
    match result {
        Err(e) => {
            assert_eq!(&e, expected);
            assert_eq!(e.reply_code(), code, "reply code of {e:?}");
        }
        Ok(v) => panic!("expected {expected:?}, decoded {v:?}"),
    }
}

fn deliver() -> Method {
    Method::from(basic::Deliver {
        consumer_tag: ShortStr::from_static("ctag").unwrap(),
        delivery_tag: 1,
        ..basic::Deliver::default()
    })
}

fn content_header(body_size: u64) -> ContentHeader {
    ContentHeader::new(body_size, BasicProperties::default())
}

/// Runs a complete small message through `asm`, proving it is idle and usable.
#[track_caller]
fn assert_usable(asm: &mut ContentAssembler) {
    assert!(asm.is_idle());
    assert_eq!(asm.method(deliver()), Ok(None));
    assert_eq!(asm.header(content_header(3)), Ok(None));
    let content = asm.body(Bytes::from_static(b"abc")).unwrap().expect("a whole message");
    assert_eq!(content, Content { method: deliver(), header: content_header(3), body: Bytes::from_static(b"abc") });
    assert!(asm.is_idle());
}

// ---------------------------------------------------------------------------------------
// M1: frame envelope.
// ---------------------------------------------------------------------------------------

#[test]
fn m1_bad_frame_end_octet() {
    let ack = method_payload(60, 80, &[0, 0, 0, 0, 0, 0, 0, 1, 0]);
    let cases: [(u8, u16, &[u8], u8); 4] = [
        (FRAME_HEARTBEAT, 0, &[], 0x00),
        (FRAME_METHOD, 1, &ack, 0xCF),
        (FRAME_BODY, 1, b"hello", 0xFF),
        (FRAME_BODY, 1, b"", 0xCD),
    ];
    for (ty, ch, payload, end) in cases {
        let mut buf = frame_with_end(ty, ch, payload, end);
        assert_err(decode(&mut buf), &DecodeError::BadFrameEnd { found: end }, ReplyCode::FRAME_ERROR);
    }
}

#[test]
fn m1_unknown_frame_type_reported_from_the_first_byte() {
    for ty in [0u8, 4, 7, 9, 0xFF] {
        // Only the type octet has arrived: no need to wait for the rest.
        let mut first = BytesMut::from(&[ty][..]);
        assert_err(decode(&mut first), &DecodeError::UnknownFrameType(ty), ReplyCode::FRAME_ERROR);
        // Same for a whole, otherwise well-formed frame.
        let mut whole = frame(ty, 0, b"xyz");
        assert_err(decode(&mut whole), &DecodeError::UnknownFrameType(ty), ReplyCode::FRAME_ERROR);
    }
}

#[test]
fn m1_protocol_header_reply_is_protocol_refused() {
    let cases: [(&[u8], DecodeError); 2] = [
        (b"AMQP\x00\x00\x09\x01", DecodeError::ProtocolRefused { protocol_id: 0, major: 0, minor: 9, revision: 1 }),
        (b"AMQP\x01\x01\x00\x0a", DecodeError::ProtocolRefused { protocol_id: 1, major: 1, minor: 0, revision: 10 }),
    ];
    for (header, expected) in cases {
        let mut buf = BytesMut::from(header);
        assert_err(decode(&mut buf), &expected, ReplyCode::FRAME_ERROR);
        // Every strict prefix waits for more bytes.
        for len in 1..header.len() {
            let mut partial = BytesMut::from(&header[..len]);
            assert_eq!(decode(&mut partial), Ok(None), "prefix of {len} bytes");
        }
    }
}

#[test]
fn m1_partial_protocol_header_waits() {
    let mut buf = BytesMut::from(&b"AMQ"[..]);
    assert_eq!(decode(&mut buf), Ok(None));
    assert_eq!(&buf[..], b"AMQ");
    // An `A` that does not go on as `AMQP` is not a protocol header: type 0x41 is unknown.
    let mut buf = BytesMut::from(&b"AMX"[..]);
    assert_err(decode(&mut buf), &DecodeError::UnknownFrameType(b'A'), ReplyCode::FRAME_ERROR);
}

// ---------------------------------------------------------------------------------------
// M2: frame sizes, checked from the 7-byte header alone.
// ---------------------------------------------------------------------------------------

/// Feeds only the 7 header bytes and expects `FrameTooLarge` at once: the frame is refused
/// before a single payload byte is waited for, buffered or allocated.
#[track_caller]
fn assert_refused_from_header(ty: u8, size: u32, limits: &Limits, max: u32) {
    let mut buf = frame_header(ty, 1, size);
    if ty == FRAME_HEARTBEAT {
        buf = frame_header(ty, 0, size);
    }
    let expected = DecodeError::FrameTooLarge { size: u64::from(size) + 8, max };
    assert_err(decode_frame(&mut buf, limits), &expected, ReplyCode::FRAME_ERROR);
    assert_eq!(buf.len(), 7, "nothing consumed");
}

/// Feeds only the 7 header bytes of a frame exactly at the limit: it is accepted (waits).
#[track_caller]
fn assert_waits_from_header(ty: u8, size: u32, limits: &Limits) {
    let mut buf = frame_header(ty, 1, size);
    assert_eq!(decode_frame(&mut buf, limits), Ok(None), "type {ty} size {size}");
}

#[test]
fn m2_oversized_frame_size_before_tune() {
    let limits = Limits::default();
    assert_eq!(limits.frame_max, 4096);
    for ty in [FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT] {
        // 0xFFFFFFFF, 0x80000000, and frame_max + 1 (payload 4089 + 8 = 4097 bytes).
        for size in [u32::MAX, 0x8000_0000, 4096 - 7] {
            assert_refused_from_header(ty, size, &limits, 4096);
        }
    }
    for ty in [FRAME_METHOD, FRAME_HEADER, FRAME_BODY] {
        assert_waits_from_header(ty, 4096 - 8, &limits);
    }
}

#[test]
fn m2_oversized_frame_size_after_tune() {
    let limits = tuned();
    let control = Limits::DEFAULT_CONTROL_FRAME_MAX;
    // Body frames: the negotiated frame_max, strictly.
    for size in [u32::MAX, 0x8000_0000, 131_072 - 7] {
        assert_refused_from_header(FRAME_BODY, size, &limits, 131_072);
    }
    assert_waits_from_header(FRAME_BODY, 131_072 - 8, &limits);
    // Method and header frames: the separate control cap.
    for ty in [FRAME_METHOD, FRAME_HEADER] {
        for size in [u32::MAX, 0x8000_0000, control - 7] {
            assert_refused_from_header(ty, size, &limits, control);
        }
        assert_waits_from_header(ty, 131_072 - 7, &limits);
        assert_waits_from_header(ty, control - 8, &limits);
    }
}

#[test]
fn m2_oversized_frame_size_with_a_small_tuned_frame_max() {
    // frame_max + 1 on a connection tuned to 4096 and to 10000.
    for frame_max in [4096u32, 10_000] {
        let limits = Limits::default().tuned(frame_max, Limits::DEFAULT_CONTROL_FRAME_MAX);
        assert_refused_from_header(FRAME_BODY, frame_max - 7, &limits, frame_max);
        assert_waits_from_header(FRAME_BODY, frame_max - 8, &limits);
    }
}

#[test]
fn r2_large_header_frame_accepted_on_connection_tuned_to_4096() {
    let limits = Limits::default().tuned(4096, Limits::DEFAULT_CONTROL_FRAME_MAX);
    let mut headers = FieldTable::new();
    headers.insert("x-big", FieldValue::LongString(Bytes::from(vec![b'h'; 20_000]))).unwrap();
    let header = ContentHeader::new(10, BasicProperties { headers: Some(headers), ..BasicProperties::default() });
    let mut wire = BytesMut::new();
    Frame::Header(1, header.clone()).encode(&mut wire).unwrap();
    assert!(wire.len() > 20_000);
    let mut before_tune = wire.clone();
    assert_eq!(decode_frame(&mut wire, &limits), Ok(Some(Frame::Header(1, header))));
    assert!(wire.is_empty());

    // The same header before tuning is over the 4096 limit.
    let size = before_tune.len() as u64;
    assert_err(decode(&mut before_tune), &DecodeError::FrameTooLarge { size, max: 4096 }, ReplyCode::FRAME_ERROR);

    // A 20 KB body frame on the same connection is refused.
    let mut body = frame(FRAME_BODY, 1, &vec![0u8; 20_000]);
    assert_err(
        decode_frame(&mut body, &limits),
        &DecodeError::FrameTooLarge { size: 20_008, max: 4096 },
        ReplyCode::FRAME_ERROR,
    );
}

// ---------------------------------------------------------------------------------------
// M3: content announcing a body over the inbound message cap.
// ---------------------------------------------------------------------------------------

/// A header frame announcing `body_size` decodes (the frame is small); the assembler refuses it.
fn header_too_large(asm: &mut ContentAssembler, body_size: u64, cap: u64) {
    let mut wire = frame(FRAME_HEADER, 1, &header_payload(60, body_size, &[0], &[]));
    let Ok(Some(Frame::Header(1, header))) = decode_frame(&mut wire, &tuned()) else {
        panic!("the header frame itself is well-formed");
    };
    assert_eq!(header.body_size, body_size);
    assert_eq!(asm.method(deliver()), Ok(None));
    assert_err(
        asm.header(header),
        &DecodeError::MessageTooLarge { size: body_size, max: cap },
        ReplyCode::CONTENT_TOO_LARGE,
    );
}

#[test]
fn m3_body_size_cap_plus_one_is_discarded_then_idle() {
    let cap = 1024;
    let mut asm = ContentAssembler::new(cap);
    header_too_large(&mut asm, cap + 1, cap);
    // Its body frames are consumed and dropped, never delivered.
    assert_eq!(asm.body(Bytes::from(vec![1u8; 1000])), Ok(None));
    assert!(!asm.is_idle());
    assert_eq!(asm.body(Bytes::from(vec![1u8; 25])), Ok(None));
    assert_usable(&mut asm);

    // The default cap is RabbitMQ's 128 MiB.
    let mut asm = ContentAssembler::default();
    header_too_large(&mut asm, Limits::DEFAULT_MAX_MESSAGE_SIZE + 1, Limits::DEFAULT_MAX_MESSAGE_SIZE);
}

/// Body sizes no peer can ever complete: body frames are dropped; the next method is the
/// protocol error it is (505), after which the assembler is idle and usable.
fn absurd_body_size(body_size: u64) {
    let mut asm = ContentAssembler::default();
    header_too_large(&mut asm, body_size, Limits::DEFAULT_MAX_MESSAGE_SIZE);
    for _ in 0..3 {
        assert_eq!(asm.body(Bytes::from(vec![0u8; 4088])), Ok(None));
    }
    assert_err(
        asm.method(deliver()),
        &DecodeError::UnexpectedFrame("method frame in the middle of content"),
        ReplyCode::UNEXPECTED_FRAME,
    );
    assert_usable(&mut asm);
}

#[test]
fn m3_body_size_u64_max_is_message_too_large() {
    absurd_body_size(u64::MAX);
}

#[test]
fn m3_body_size_2_pow_63_is_message_too_large() {
    absurd_body_size(1 << 63);
}

// ---------------------------------------------------------------------------------------
// M4: content sequencing (505, and never a partial message).
// ---------------------------------------------------------------------------------------

#[test]
fn m4_body_without_header() {
    let expected = DecodeError::UnexpectedFrame("body frame without a content header");
    // Nothing announced at all.
    let mut asm = ContentAssembler::default();
    assert_err(asm.body(Bytes::from_static(b"x")), &expected, ReplyCode::UNEXPECTED_FRAME);
    assert_usable(&mut asm);
    // A content method, then a body instead of the header.
    assert_eq!(asm.method(deliver()), Ok(None));
    assert_err(asm.body(Bytes::from_static(b"x")), &expected, ReplyCode::UNEXPECTED_FRAME);
    assert_usable(&mut asm);
}

#[test]
fn m4_header_without_content_method() {
    let expected = DecodeError::UnexpectedFrame("content header without a content method");
    let mut asm = ContentAssembler::default();
    assert_err(asm.header(content_header(3)), &expected, ReplyCode::UNEXPECTED_FRAME);
    assert_usable(&mut asm);
    // A method without content (basic.ack) does not open a message either.
    assert_eq!(asm.method(basic::Ack::default().into()), Ok(None));
    assert_err(asm.header(content_header(3)), &expected, ReplyCode::UNEXPECTED_FRAME);
    assert_usable(&mut asm);
}

#[test]
fn m4_header_class_not_basic() {
    for class_id in [0u16, 10, 50, 61, 0xFFFF] {
        let mut buf = frame(FRAME_HEADER, 1, &header_payload(class_id, 5, &[0], &[]));
        assert_err(decode(&mut buf), &DecodeError::HeaderClass(class_id), ReplyCode::UNEXPECTED_FRAME);
    }
}

#[test]
fn m4_more_body_bytes_than_body_size() {
    let expected = DecodeError::UnexpectedFrame("body frames longer than the header's body size");
    // In one frame.
    let mut asm = ContentAssembler::default();
    assert_eq!(asm.method(deliver()), Ok(None));
    assert_eq!(asm.header(content_header(5)), Ok(None));
    assert_err(asm.body(Bytes::from_static(b"123456")), &expected, ReplyCode::UNEXPECTED_FRAME);
    assert_usable(&mut asm);
    // Over several frames: the partial body is never handed out.
    assert_eq!(asm.method(deliver()), Ok(None));
    assert_eq!(asm.header(content_header(5)), Ok(None));
    assert_eq!(asm.body(Bytes::from_static(b"123")), Ok(None));
    assert_err(asm.body(Bytes::from_static(b"456")), &expected, ReplyCode::UNEXPECTED_FRAME);
    assert_usable(&mut asm);
}

#[test]
fn m4_method_in_the_middle_of_content() {
    let expected = DecodeError::UnexpectedFrame("method frame in the middle of content");
    let mut asm = ContentAssembler::default();
    // Between the content method and its header.
    assert_eq!(asm.method(deliver()), Ok(None));
    assert_err(asm.method(basic::Ack::default().into()), &expected, ReplyCode::UNEXPECTED_FRAME);
    assert_usable(&mut asm);
    // Between body frames.
    assert_eq!(asm.method(deliver()), Ok(None));
    assert_eq!(asm.header(content_header(10)), Ok(None));
    assert_eq!(asm.body(Bytes::from_static(b"12345")), Ok(None));
    assert_err(asm.method(deliver()), &expected, ReplyCode::UNEXPECTED_FRAME);
    assert_usable(&mut asm);
}

#[test]
fn m4_zero_body_size_followed_by_a_body() {
    let mut asm = ContentAssembler::default();
    assert_eq!(asm.method(deliver()), Ok(None));
    // A zero-size body completes the message at the header.
    let content = asm.header(content_header(0)).unwrap().expect("complete at the header");
    assert!(content.body.is_empty());
    assert!(asm.is_idle());
    assert_err(
        asm.body(Bytes::from_static(b"x")),
        &DecodeError::UnexpectedFrame("body frame without a content header"),
        ReplyCode::UNEXPECTED_FRAME,
    );
    assert_usable(&mut asm);
}

#[test]
fn m4_sequences_from_the_wire_never_deliver_a_partial_message() {
    // method, header(5), body "abc", method: decoded from bytes and fed frame by frame.
    let mut wire = BytesMut::new();
    Frame::Method(1, deliver()).encode(&mut wire).unwrap();
    Frame::Header(1, content_header(5)).encode(&mut wire).unwrap();
    Frame::Body(1, Bytes::from_static(b"abc")).encode(&mut wire).unwrap();
    Frame::Method(1, deliver()).encode(&mut wire).unwrap();
    let mut asm = ContentAssembler::default();
    let mut results = Vec::new();
    while let Some(frame) = decode(&mut wire).unwrap() {
        results.push(match frame {
            Frame::Method(_, m) => asm.method(m),
            Frame::Header(_, h) => asm.header(h),
            Frame::Body(_, b) => asm.body(b),
            Frame::Heartbeat => Ok(None),
        });
    }
    assert_eq!(
        results,
        [Ok(None), Ok(None), Ok(None), Err(DecodeError::UnexpectedFrame("method frame in the middle of content"))]
    );
}

// ---------------------------------------------------------------------------------------
// M6: lengths beyond the payload, unknown tags, ids and flags, malformed heartbeats.
// ---------------------------------------------------------------------------------------

#[test]
fn m6_shortstr_length_beyond_payload() {
    // basic.deliver whose consumer tag claims 255 bytes with 3 left.
    let mut args = vec![255];
    args.put_slice(b"abc");
    let mut buf = frame(FRAME_METHOD, 1, &method_payload(60, 60, &args));
    assert_err(decode(&mut buf), &DecodeError::Truncated { field: "shortstr" }, ReplyCode::SYNTAX_ERROR);
    // A shortstr key inside a table.
    let mut buf = headers_frame(&table(&[255, b'k', b'V']));
    assert_err(decode(&mut buf), &DecodeError::Truncated { field: "shortstr" }, ReplyCode::SYNTAX_ERROR);
}

#[test]
fn m6_longstr_length_beyond_payload() {
    // connection.secure whose challenge claims 0xFFFFFFFF bytes.
    let mut args = Vec::new();
    args.put_u32(u32::MAX);
    args.put_slice(b"abc");
    let mut buf = frame(FRAME_METHOD, 0, &method_payload(10, 20, &args));
    assert_err(decode(&mut buf), &DecodeError::Truncated { field: "longstr" }, ReplyCode::SYNTAX_ERROR);
    // A long string (`S`) and a byte array (`x`) inside a table.
    for tag in [b'S', b'x'] {
        let mut entry = vec![1, b'k', tag];
        entry.put_u32(u32::MAX);
        entry.put_slice(b"abc");
        let mut buf = connection_start_frame(&table(&entry));
        assert_err(decode(&mut buf), &DecodeError::Truncated { field: "longstr" }, ReplyCode::SYNTAX_ERROR);
    }
}

#[test]
fn m6_table_length_beyond_payload() {
    let mut huge = Vec::new();
    huge.put_u32(0xFFFF_FFF0);
    huge.put_slice(&[1, b'k', b'V']);
    let expected = DecodeError::Truncated { field: "field table" };
    let mut buf = connection_start_frame(&huge);
    assert_err(decode(&mut buf), &expected, ReplyCode::SYNTAX_ERROR);
    let mut buf = headers_frame(&huge);
    assert_err(decode(&mut buf), &expected, ReplyCode::SYNTAX_ERROR);
    // A nested table whose length runs past its parent.
    let mut entry = vec![1, b'k', b'F'];
    entry.put_u32(0xFFFF_FFF0);
    let mut buf = connection_start_frame(&table(&entry));
    assert_err(decode(&mut buf), &expected, ReplyCode::SYNTAX_ERROR);
}

#[test]
fn m6_array_length_beyond_payload() {
    let mut entry = vec![1, b'k', b'A'];
    entry.put_u32(0xFFFF_FFF0);
    entry.put_u8(b'V');
    let mut buf = connection_start_frame(&table(&entry));
    assert_err(decode(&mut buf), &DecodeError::Truncated { field: "field array" }, ReplyCode::SYNTAX_ERROR);
}

#[test]
fn m6_unknown_field_type_tag() {
    for tag in [0u8, b'U', b'Z', b'a', 0xFF] {
        let mut buf = connection_start_frame(&table(&[1, b'k', tag, 0, 0, 0, 0]));
        assert_err(decode(&mut buf), &DecodeError::UnknownFieldType(tag), ReplyCode::SYNTAX_ERROR);
        // Inside an array, inside headers.
        let mut entry = vec![1, b'k', b'A'];
        entry.put_u32(1);
        entry.put_u8(tag);
        let mut buf = headers_frame(&table(&entry));
        assert_err(decode(&mut buf), &DecodeError::UnknownFieldType(tag), ReplyCode::SYNTAX_ERROR);
    }
}

#[test]
fn m6_unknown_method_id() {
    for (class_id, method_id) in [(60, 999), (60, 0), (10, 12), (77, 10), (0xFFFF, 0xFFFF)] {
        let mut buf = frame(FRAME_METHOD, 1, &method_payload(class_id, method_id, &[0; 8]));
        assert_err(decode(&mut buf), &DecodeError::UnknownMethod { class_id, method_id }, ReplyCode::COMMAND_INVALID);
    }
}

#[test]
fn m6_trailing_bytes_after_method() {
    // basic.ack: delivery tag (8) + bits (1), then one byte too many.
    let mut buf = frame(FRAME_METHOD, 1, &method_payload(60, 80, &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0xAA]));
    assert_err(decode(&mut buf), &DecodeError::TrailingBytes { what: "basic.ack", count: 1 }, ReplyCode::SYNTAX_ERROR);
    // connection.tune-ok with three extra bytes.
    let mut buf = frame(FRAME_METHOD, 0, &method_payload(10, 31, &[0, 0, 0, 0, 16, 0, 0, 60, 1, 2, 3]));
    assert_err(
        decode(&mut buf),
        &DecodeError::TrailingBytes { what: "connection.tune-ok", count: 3 },
        ReplyCode::SYNTAX_ERROR,
    );
    // A content header with bytes after its properties.
    let mut buf = frame(FRAME_HEADER, 1, &header_payload(60, 0, &[0x1000], &[2, 0xBB]));
    assert_err(
        decode(&mut buf),
        &DecodeError::TrailingBytes { what: "content header", count: 1 },
        ReplyCode::SYNTAX_ERROR,
    );
}

#[test]
fn m6_unknown_property_flags() {
    // Bit 1 of the first word names no basic property.
    let mut buf = frame(FRAME_HEADER, 1, &header_payload(60, 0, &[0x0002], &[]));
    assert_err(decode(&mut buf), &DecodeError::UnknownPropertyFlags { flags: 0x0002 }, ReplyCode::SYNTAX_ERROR);
    // A continuation word carrying flags: basic has only 14 properties.
    let mut buf = frame(FRAME_HEADER, 1, &header_payload(60, 0, &[0x0001, 0x8000], &[]));
    assert_err(decode(&mut buf), &DecodeError::UnknownPropertyFlags { flags: 0x8000 }, ReplyCode::SYNTAX_ERROR);
}

#[test]
fn m6_bad_heartbeat() {
    let mut buf = frame(FRAME_HEARTBEAT, 3, &[]);
    assert_err(decode(&mut buf), &DecodeError::BadHeartbeat { channel: 3, size: 0 }, ReplyCode::FRAME_ERROR);
    let mut buf = frame(FRAME_HEARTBEAT, 0, &[1, 2]);
    assert_err(decode(&mut buf), &DecodeError::BadHeartbeat { channel: 0, size: 2 }, ReplyCode::FRAME_ERROR);
    // A good one still decodes.
    let mut buf = frame(FRAME_HEARTBEAT, 0, &[]);
    assert_eq!(decode(&mut buf), Ok(Some(Frame::Heartbeat)));
}

// ---------------------------------------------------------------------------------------
// M8 (codec level): frame_max when encoding and tuning.
// ---------------------------------------------------------------------------------------

#[test]
fn m8_encode_publish_frame_max_below_minimum() {
    let publish = basic::Publish::default();
    let props = BasicProperties::default();
    for frame_max in [1u32, 7, 8, 4095] {
        let mut buf = BytesMut::from(&b"queued"[..]);
        assert_eq!(
            encode_publish(&mut buf, 1, &publish, &props, b"body", frame_max),
            Err(EncodeError::FrameMaxTooSmall(frame_max))
        );
        assert_eq!(&buf[..], b"queued", "nothing written on error");
    }
    let mut buf = BytesMut::new();
    encode_publish(&mut buf, 1, &publish, &props, b"body", 4096).unwrap();
}

#[test]
fn m8_encode_publish_frame_max_zero_means_no_limit() {
    let body = vec![0x5A; 300_000];
    let mut buf = BytesMut::new();
    encode_publish(&mut buf, 1, &basic::Publish::default(), &BasicProperties::default(), &body, 0).unwrap();
    let limits = Limits::default().tuned(0, 1 << 20);
    let mut frames = Vec::new();
    while let Some(frame) = decode_frame(&mut buf, &limits).unwrap() {
        frames.push(frame);
    }
    assert!(buf.is_empty());
    assert_eq!(frames.len(), 3, "method, header and one body frame");
    assert!(matches!(&frames[0], Frame::Method(1, Method::BasicPublish(_))));
    assert!(matches!(&frames[1], Frame::Header(1, h) if h.body_size == 300_000));
    assert!(matches!(&frames[2], Frame::Body(1, b) if b[..] == body[..]));
}

#[test]
fn m8_tuned_frame_max_zero_keeps_memory_bounded() {
    let limits = Limits::default().tuned(0, Limits::DEFAULT_CONTROL_FRAME_MAX);
    assert_eq!(limits.frame_max, Limits::DEFAULT_CONTROL_FRAME_MAX);
    assert_refused_from_header(FRAME_BODY, u32::MAX, &limits, Limits::DEFAULT_CONTROL_FRAME_MAX);
    assert_refused_from_header(FRAME_METHOD, u32::MAX, &limits, Limits::DEFAULT_CONTROL_FRAME_MAX);
    // Even with no control cap given, the limit stays finite: the AMQP minimum.
    let limits = Limits::default().tuned(0, 0);
    assert_eq!((limits.frame_max, limits.control_frame_max), (4096, 4096));
    assert_refused_from_header(FRAME_BODY, 0x8000_0000, &limits, 4096);
}

#[test]
fn m8_tuned_frame_max_0x80000000_still_refuses_larger_frames() {
    let limits = Limits::default().tuned(0x8000_0000, Limits::DEFAULT_CONTROL_FRAME_MAX);
    assert_refused_from_header(FRAME_BODY, u32::MAX, &limits, 0x8000_0000);
    // The frame is waited for, not pre-allocated: the buffer holds only what arrived.
    let mut buf = frame_header(FRAME_BODY, 1, 0x8000_0000 - 8);
    assert_eq!(decode_frame(&mut buf, &limits), Ok(None));
    assert_eq!(buf.len(), 7);
}

/// The hand-built helpers agree with the codec's own encoder, so the malformed frames above
/// differ from valid ones only where each test says.
#[test]
fn helpers_match_the_codecs_own_encoding() {
    let mut wire = BytesMut::new();
    Frame::Method(0, connection::Start::default().into()).encode(&mut wire).unwrap();
    assert_eq!(wire, frame(FRAME_METHOD, 0, &method_payload(10, 10, &connection_start_args(&table(&[])))));
    let mut wire = BytesMut::new();
    Frame::Header(1, content_header(7)).encode(&mut wire).unwrap();
    assert_eq!(wire, frame(FRAME_HEADER, 1, &header_payload(60, 7, &[0], &[])));
}
