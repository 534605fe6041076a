//! Property-based round trips of the whole codec: for every wire type, `decode(encode(x))`
//! gives `x` back, `encode(decode(b))` gives `b` back, and decoding consumes exactly the
//! encoded bytes — whole, concatenated, or fed one byte at a time. Also the splitting of a
//! publish into frames at `frame_max`, vectored or not.

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::strategies::{
    MAX_NESTING, basic_properties, content_header, field_array, field_table, field_value, frame, long_str, method,
    method_arms, patterned_body, publish, short_str,
};
use lepus_codec::{
    BasicProperties, ContentHeader, EncodeError, FRAME_OVERHEAD, FieldTable, FieldValue, Frame, Limits, Method,
    ShortStr, decode_frame, encode_publish, encode_publish_vectored,
    method::{basic, channel, connection, queue},
};
use proptest::{
    collection::vec,
    prelude::*,
    strategy::ValueTree,
    test_runner::{TestCaseError, TestRunner},
};

/// Generous decode limits: no practical frame-size cap, and nesting far beyond what the
/// strategies generate.
fn limits() -> Limits {
    let limits = Limits::default().tuned(0, 16 << 20);
    assert!(limits.max_depth >= MAX_NESTING);
    limits
}

fn fail(what: &str, err: impl std::fmt::Debug) -> TestCaseError {
    TestCaseError::fail(format!("{what}: {err:?}"))
}

fn encode(frame: &Frame) -> Result<BytesMut, TestCaseError> {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf).map_err(|e| fail("encode", e))?;
    Ok(buf)
}

/// Decodes every frame in `buf`, which must hold whole frames only.
fn decode_all(mut buf: BytesMut, limits: &Limits) -> Result<Vec<Frame>, TestCaseError> {
    let mut frames = Vec::new();
    while !buf.is_empty() {
        match decode_frame(&mut buf, limits) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return Err(fail("incomplete frame at the end of the buffer", buf.len())),
            Err(e) => return Err(fail("decode", e)),
        }
    }
    Ok(frames)
}

/// `decode(encode(frame)) == frame`, consuming exactly the encoded bytes, and
/// `encode(decode(b)) == b`.
fn check_roundtrip(frame: &Frame) -> Result<(), TestCaseError> {
    let wire = encode(frame)?;
    let mut buf = wire.clone();
    let decoded = decode_frame(&mut buf, &limits()).map_err(|e| fail("decode", e))?;
    prop_assert_eq!(decoded.as_ref(), Some(frame));
    prop_assert!(buf.is_empty(), "{} bytes left after decoding one frame", buf.len());
    // Followed by more bytes, decoding stops at the frame's end.
    let mut buf = wire.clone();
    buf.put_slice(&[8, 0, 0]);
    let decoded_again = decode_frame(&mut buf, &limits()).map_err(|e| fail("decode", e))?;
    prop_assert_eq!(decoded_again.as_ref(), Some(frame));
    prop_assert_eq!(&buf[..], &[8, 0, 0][..]);
    if let Some(decoded) = decoded {
        let reencoded = encode(&decoded)?;
        prop_assert_eq!(&reencoded[..], &wire[..]);
    }
    Ok(())
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn short_str_roundtrips(channel in any::<u16>(), s in short_str()) {
        check_roundtrip(&Frame::Method(channel, basic::ConsumeOk { consumer_tag: s.clone() }.into()))?;
        let properties = BasicProperties { message_id: Some(s), ..BasicProperties::default() };
        check_roundtrip(&Frame::Header(channel, ContentHeader::new(0, properties)))?;
    }

    #[test]
    fn long_str_roundtrips(channel in any::<u16>(), s in long_str()) {
        check_roundtrip(&Frame::Method(channel, channel::OpenOk { channel_id: s.clone() }.into()))?;
        let mut table = FieldTable::new();
        table.push(ShortStr::new(), FieldValue::LongString(s.clone()));
        table.push(ShortStr::new(), FieldValue::ByteArray(s));
        check_roundtrip(&Frame::Method(channel, connection::Start { server_properties: table, ..Default::default() }.into()))?;
    }

    #[test]
    fn field_value_roundtrips(channel in any::<u16>(), key in short_str(), value in field_value()) {
        let mut table = FieldTable::new();
        table.push(key, value.clone());
        check_roundtrip(&Frame::Method(channel, connection::Start { server_properties: table, ..Default::default() }.into()))?;
        let mut table = FieldTable::new();
        table.push(ShortStr::new(), FieldValue::Array([value].into_iter().collect()));
        check_roundtrip(&Frame::Method(channel, connection::StartOk { client_properties: table, ..Default::default() }.into()))?;
    }

    #[test]
    fn field_table_roundtrips(channel in any::<u16>(), table in field_table(), array in field_array()) {
        check_roundtrip(&Frame::Method(channel, queue::Declare { arguments: table.clone(), ..Default::default() }.into()))?;
        let mut headers = table;
        headers.push(ShortStr::new(), FieldValue::Array(array));
        let properties = BasicProperties { headers: Some(headers), ..BasicProperties::default() };
        check_roundtrip(&Frame::Header(channel, ContentHeader::new(1, properties)))?;
    }

    #[test]
    fn basic_properties_roundtrip(channel in any::<u16>(), body_size in any::<u64>(), properties in basic_properties()) {
        check_roundtrip(&Frame::Header(channel, ContentHeader::new(body_size, properties)))?;
    }

    #[test]
    fn content_header_roundtrips(channel in any::<u16>(), header in content_header()) {
        check_roundtrip(&Frame::Header(channel, header))?;
    }

    #[test]
    fn method_roundtrips(channel in any::<u16>(), m in method()) {
        check_roundtrip(&Frame::Method(channel, m))?;
    }

    #[test]
    fn frame_roundtrips(f in frame()) {
        check_roundtrip(&f)?;
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn concatenated_frames_decode_in_order(frames in vec(frame(), 1..=8)) {
        let mut wire = BytesMut::new();
        for f in &frames {
            wire.put_slice(&encode(f)?);
        }
        let decoded = decode_all(wire.clone(), &limits())?;
        prop_assert_eq!(&decoded, &frames);
        let mut reencoded = BytesMut::new();
        for f in &decoded {
            reencoded.put_slice(&encode(f)?);
        }
        prop_assert_eq!(&reencoded[..], &wire[..]);
    }

    /// RELIABILITY N3: a stream split anywhere decodes to the same frames. Fed one byte at a
    /// time, the decoder answers `Ok(None)` until a frame's last byte is in, then returns
    /// exactly that frame and leaves nothing behind.
    #[test]
    fn n3_split_at_every_boundary_decodes(frames in vec(frame(), 1..=6)) {
        let mut wire = BytesMut::new();
        let mut ends = Vec::new();
        for f in &frames {
            wire.put_slice(&encode(f)?);
            ends.push(wire.len());
        }
        let limits = limits();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for (at, &byte) in wire.iter().enumerate() {
            buf.put_u8(byte);
            while let Some(f) = decode_frame(&mut buf, &limits).map_err(|e| fail("decode", e))? {
                decoded.push((at + 1, f));
            }
        }
        prop_assert!(buf.is_empty(), "{} bytes left over", buf.len());
        let expected: Vec<_> = ends.into_iter().zip(frames).collect();
        prop_assert_eq!(decoded, expected);
    }
}

/// Body payload per frame for a `frame_max` (0 = no limit), as the spec defines it.
fn chunk(frame_max: u32) -> usize {
    if frame_max == 0 { u32::MAX as usize - FRAME_OVERHEAD } else { frame_max as usize - FRAME_OVERHEAD }
}

/// Bytes already waiting in the write buffer before a publish is appended: a heartbeat.
const PENDING: [u8; 8] = [8, 0, 0, 0, 0, 0, 0, 0xCE];

proptest! {
    #![proptest_config(config(128))]

    /// `encode_publish` writes the method, a header announcing the body size, and body
    /// frames no larger than `frame_max` (whole frame, 8 bytes of overhead included) that
    /// concatenate to the body; `encode_publish_vectored` produces the same bytes.
    #[test]
    fn publish_splits_body_at_frame_max(
        channel in any::<u16>(),
        publish in publish(),
        properties in basic_properties(),
        seed in any::<u64>(),
        len in 0..=300_000usize,
        frame_max in prop::sample::select(vec![4096u32, 4097, 131_072, 0]),
    ) {
        let body = patterned_body(seed, len);
        let header = ContentHeader::new(len as u64, properties.clone());
        let header_len = encode(&Frame::Header(channel, header.clone()))?.len();

        let mut buf = BytesMut::from(&PENDING[..]);
        let copied = encode_publish(&mut buf, channel, &publish, &properties, &body, frame_max);
        let mut vbuf = BytesMut::from(&PENDING[..]);
        let mut out = Vec::new();
        let vectored = encode_publish_vectored(&mut vbuf, channel, &publish, &properties, &body, frame_max, &mut out);

        if frame_max != 0 && header_len > frame_max as usize {
            // The header frame alone does not fit: refused, and nothing written.
            let expected = EncodeError::FrameTooLarge { what: "content header", size: header_len, frame_max };
            prop_assert_eq!(copied, Err(expected.clone()));
            prop_assert_eq!(vectored, Err(expected));
            prop_assert_eq!(&buf[..], &PENDING[..]);
            prop_assert_eq!(&vbuf[..], &PENDING[..]);
            prop_assert!(out.is_empty());
            return Ok(());
        }
        copied.map_err(|e| fail("encode_publish", e))?;
        vectored.map_err(|e| fail("encode_publish_vectored", e))?;

        let joined: Vec<u8> = out.iter().flat_map(|s| s.iter().copied()).collect();
        prop_assert!(vbuf.is_empty(), "vectored left {} bytes in buf", vbuf.len());
        prop_assert_eq!(joined.len(), buf.len());
        prop_assert!(joined[..] == buf[..], "vectored segments differ from encode_publish output");

        let mut frames = decode_all(buf, &Limits::default().tuned(frame_max, 16 << 20))?.into_iter();
        prop_assert_eq!(frames.next(), Some(Frame::Heartbeat));
        prop_assert_eq!(frames.next(), Some(Frame::Method(channel, Method::from(publish))));
        prop_assert_eq!(frames.next(), Some(Frame::Header(channel, header)));
        let mut received = BytesMut::new();
        let mut count = 0;
        for f in frames {
            let Frame::Body(ch, payload) = f else {
                return Err(fail("expected a body frame", f));
            };
            prop_assert_eq!(ch, channel);
            prop_assert!(!payload.is_empty(), "empty body frame");
            if frame_max != 0 {
                prop_assert!(payload.len() + FRAME_OVERHEAD <= frame_max as usize,
                    "body frame of {} bytes over frame_max {}", payload.len() + FRAME_OVERHEAD, frame_max);
            }
            received.put_slice(&payload);
            count += 1;
        }
        prop_assert_eq!(count, len.div_ceil(chunk(frame_max)));
        prop_assert!(received[..] == body[..], "body frames do not concatenate to the body");
    }

    /// A content header that does not fit in `frame_max` is refused by both encoders.
    #[test]
    fn publish_header_over_frame_max_is_refused(
        frame_max in prop::sample::select(vec![4096u32, 4097, 8192]),
        extra in 0..=8192usize,
    ) {
        let mut headers = FieldTable::new();
        headers.push(ShortStr::new(), FieldValue::LongString(Bytes::from(vec![b'h'; frame_max as usize + extra])));
        let properties = BasicProperties { headers: Some(headers), ..BasicProperties::default() };
        let mut buf = BytesMut::from(&PENDING[..]);
        let result = encode_publish(&mut buf, 1, &basic::Publish::default(), &properties, b"x", frame_max);
        prop_assert!(matches!(result, Err(EncodeError::FrameTooLarge { what: "content header", .. })), "{:?}", result);
        prop_assert_eq!(&buf[..], &PENDING[..]);
        let mut out = Vec::new();
        let body = Bytes::from_static(b"x");
        let result = encode_publish_vectored(&mut buf, 1, &basic::Publish::default(), &properties, &body, frame_max, &mut out);
        prop_assert!(matches!(result, Err(EncodeError::FrameTooLarge { what: "content header", .. })), "{:?}", result);
        prop_assert_eq!(&buf[..], &PENDING[..]);
        prop_assert!(out.is_empty());
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// A `frame_max` under the AMQP minimum is an error from both encoders, never a panic
    /// or an endless loop, and leaves the buffers as they were.
    #[test]
    fn publish_frame_max_below_minimum_is_refused(
        frame_max in 1..Limits::FRAME_MIN_SIZE,
        seed in any::<u64>(),
        len in 0..=10_000usize,
    ) {
        let body = patterned_body(seed, len);
        let properties = BasicProperties::default();
        let mut buf = BytesMut::from(&PENDING[..]);
        let result = encode_publish(&mut buf, 1, &basic::Publish::default(), &properties, &body, frame_max);
        prop_assert_eq!(result, Err(EncodeError::FrameMaxTooSmall(frame_max)));
        prop_assert_eq!(&buf[..], &PENDING[..]);
        let mut out = Vec::new();
        let result = encode_publish_vectored(&mut buf, 1, &basic::Publish::default(), &properties, &body, frame_max, &mut out);
        prop_assert_eq!(result, Err(EncodeError::FrameMaxTooSmall(frame_max)));
        prop_assert_eq!(&buf[..], &PENDING[..]);
        prop_assert!(out.is_empty());
    }

    /// No constructor makes a short string over 255 bytes; up to 255 every one succeeds
    /// and keeps the bytes.
    #[test]
    fn short_str_over_255_bytes_cannot_be_constructed(len in 0..=1024usize, byte in any::<u8>()) {
        let bytes = vec![byte; len];
        let text = "s".repeat(len);
        let results = [
            ShortStr::try_from(bytes.as_slice()),
            ShortStr::try_from(Bytes::from(bytes.clone())),
            ShortStr::from_bytes(Bytes::from(bytes.clone())),
            ShortStr::try_from(text.as_str()),
            ShortStr::try_from(text.clone()),
        ];
        let mut table = FieldTable::new();
        let inserted = table.insert(text.as_str(), true);
        if len > ShortStr::MAX_LEN {
            for result in results {
                prop_assert_eq!(result, Err(EncodeError::ShortStringTooLong { len }));
            }
            prop_assert_eq!(inserted, Err(EncodeError::ShortStringTooLong { len }));
            prop_assert!(table.is_empty());
        } else {
            for result in &results[..3] {
                prop_assert_eq!(result.as_ref().map(ShortStr::as_bytes), Ok(bytes.as_slice()));
            }
            for result in &results[3..] {
                prop_assert_eq!(result.as_ref().map(ShortStr::as_bytes), Ok(text.as_bytes()));
            }
            prop_assert_eq!(inserted, Ok(None));
        }
    }
}

/// The method strategy has one arm per `Method` variant, in `Method::ALL` order, each arm
/// generates only its own variant, and the union over them reaches every variant.
#[test]
fn method_strategy_covers_every_variant() {
    let arms = method_arms();
    assert_eq!(arms.len(), Method::ALL.len());
    let mut ids: Vec<(u16, u16)> = Method::ALL.iter().map(|&(c, m, _, _)| (c, m)).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), Method::ALL.len(), "Method::ALL has duplicate ids");

    let mut runner = TestRunner::deterministic();
    for ((name, arm), &(class_id, method_id, spec, _)) in arms.iter().zip(Method::ALL) {
        assert_eq!(*name, spec);
        for _ in 0..4 {
            let m = arm.new_tree(&mut runner).expect("generate").current();
            assert_eq!((m.class_id(), m.method_id(), m.name()), (class_id, method_id, spec));
        }
    }

    let strategy = method();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..2000 {
        let m = strategy.new_tree(&mut runner).expect("generate").current();
        seen.insert((m.class_id(), m.method_id()));
    }
    let missing: Vec<_> = ids.iter().filter(|id| !seen.contains(id)).collect();
    assert!(missing.is_empty(), "method() never generated {missing:?}");
}
