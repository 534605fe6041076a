//! RELIABILITY.md M5: field tables and arrays nested far deeper than any real message
//! (2,000 levels, which RabbitMQ forwards unchanged, and ~21,800 levels from a hostile peer)
//! are refused with `NestingTooDeep` (502) at the configured depth, and neither decoding nor
//! encoding overflows even a 256 KiB stack.
//!
//! Deep inputs are built as bytes only: a decoded or constructed value 21,800 levels deep
//! would itself recurse when dropped.

use std::fmt::Debug;

use bytes::{BufMut, BytesMut};

mod common;
use common::wire::{connection_start_args, frame, header_payload, method_payload};
use lepus_codec::{
    BasicProperties, ContentHeader, DecodeError, EncodeError, FRAME_HEADER, FRAME_METHOD, FieldTable, Frame, Limits,
    ReplyCode, decode_frame, encode_publish,
    method::{basic, queue},
};

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

#[derive(Clone, Copy)]
enum Kind {
    Table,
    Array,
}

/// The wire bytes of a field table nested `depth` containers deep (the outermost table is
/// level 1); `kind(level)` picks each inner container. Each container holds only the next;
/// the innermost is empty. Only bytes are built: a decoded or constructed value this deep
/// would itself recurse when dropped.
fn nested_bytes(depth: usize, kind: impl Fn(usize) -> Kind) -> Vec<u8> {
    let mut out = Vec::with_capacity(depth * 7);
    let mut length_at = Vec::with_capacity(depth);
    let mut current = Kind::Table;
    for level in 1..=depth {
        length_at.push(out.len());
        out.put_u32(0);
        if level < depth {
            if let Kind::Table = current {
                out.put_slice(&[1, b'k']);
            }
            current = kind(level + 1);
            out.put_u8(match current {
                Kind::Table => b'F',
                Kind::Array => b'A',
            });
        }
    }
    // Every container ends where the outermost does.
    let end = out.len();
    for at in length_at {
        let len = u32::try_from(end - at - 4).unwrap();
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
    out
}

fn tables(depth: usize) -> Vec<u8> {
    nested_bytes(depth, |_| Kind::Table)
}

fn arrays(depth: usize) -> Vec<u8> {
    nested_bytes(depth, |_| Kind::Array)
}

fn mixed(depth: usize) -> Vec<u8> {
    nested_bytes(depth, |level| if level % 2 == 0 { Kind::Array } else { Kind::Table })
}

/// Runs `f` on a thread with a 256 KiB stack; a stack overflow aborts the test binary.
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new().stack_size(256 * 1024).spawn(f).unwrap().join().unwrap();
}

/// A `connection.start` frame whose `server_properties` are `nested`.
fn connection_start_frame(nested: &[u8]) -> BytesMut {
    frame(FRAME_METHOD, 0, &method_payload(10, 10, &connection_start_args(nested)))
}

/// A content header frame whose `headers` property is `nested`.
fn headers_frame(nested: &[u8]) -> BytesMut {
    frame(FRAME_HEADER, 1, &header_payload(60, 0, &[0x2000], nested))
}

/// Limits before tuning, with a control-frame cap large enough for the deep tables to reach
/// the field-table decoder (with 4096 they are refused as too large first, see below).
fn big_control_before_tune() -> Limits {
    Limits { control_frame_max: Limits::DEFAULT_CONTROL_FRAME_MAX, ..Limits::default() }
}

#[track_caller]
fn assert_too_deep(mut buf: BytesMut, limits: &Limits) {
    assert_err(
        decode_frame(&mut buf, limits),
        &DecodeError::NestingTooDeep { limit: Limits::DEFAULT_MAX_DEPTH },
        ReplyCode::SYNTAX_ERROR,
    );
}

#[test]
fn m5_tables_nested_2000_levels_in_connection_start() {
    on_small_stack(|| {
        let nested = tables(2000);
        assert_too_deep(connection_start_frame(&nested), &big_control_before_tune());
        // With the default pre-tune limits the frame is refused on its size alone.
        let mut buf = connection_start_frame(&nested);
        let size = buf.len() as u64;
        assert_err(decode(&mut buf), &DecodeError::FrameTooLarge { size, max: 4096 }, ReplyCode::FRAME_ERROR);
    });
}

#[test]
fn m5_tables_nested_21800_levels_in_connection_start() {
    on_small_stack(|| assert_too_deep(connection_start_frame(&tables(21_800)), &big_control_before_tune()));
}

#[test]
fn m5_tables_nested_2000_levels_in_content_headers() {
    on_small_stack(|| assert_too_deep(headers_frame(&tables(2000)), &tuned()));
}

#[test]
fn m5_tables_nested_21800_levels_in_content_headers() {
    on_small_stack(|| assert_too_deep(headers_frame(&tables(21_800)), &tuned()));
}

#[test]
fn m5_tables_nested_within_a_4096_frame_before_tune() {
    // About 580 levels fit in a frame of 4096 bytes: refused for depth, not size.
    on_small_stack(|| {
        let nested = tables(580);
        let buf = connection_start_frame(&nested);
        assert!(buf.len() <= 4096);
        assert_too_deep(buf, &Limits::default());
    });
}

#[test]
fn m5_arrays_nested_2000_and_21800_levels() {
    on_small_stack(|| {
        for depth in [2000, 21_800] {
            assert_too_deep(connection_start_frame(&arrays(depth)), &big_control_before_tune());
            assert_too_deep(headers_frame(&arrays(depth)), &tuned());
        }
    });
}

#[test]
fn m5_mixed_table_and_array_nesting_2000_and_21800_levels() {
    on_small_stack(|| {
        for depth in [2000, 21_800] {
            assert_too_deep(connection_start_frame(&mixed(depth)), &big_control_before_tune());
            assert_too_deep(headers_frame(&mixed(depth)), &tuned());
        }
    });
}

#[test]
fn m5_nesting_exactly_at_the_limit_decodes() {
    on_small_stack(|| {
        let limit = Limits::DEFAULT_MAX_DEPTH;
        for nested in [tables(limit), arrays(limit), mixed(limit)] {
            let mut buf = headers_frame(&nested);
            let Ok(Some(Frame::Header(1, header))) = decode_frame(&mut buf, &tuned()) else {
                panic!("{limit} levels are within the limit");
            };
            assert!(header.properties.headers.is_some());
        }
        for nested in [tables(limit + 1), arrays(limit + 1), mixed(limit + 1)] {
            assert_too_deep(headers_frame(&nested), &tuned());
        }
    });
}

/// A table nested `depth` levels deep, built iteratively (no recursion to build it).
fn deep_table(depth: usize) -> FieldTable {
    let mut table = FieldTable::new();
    for _ in 1..depth {
        let mut outer = FieldTable::new();
        outer.insert("k", table).unwrap();
        table = outer;
    }
    table
}

#[test]
fn m5_encoding_a_table_nested_100_levels_is_an_error() {
    on_small_stack(|| {
        let arguments = deep_table(100);
        let expected = EncodeError::NestingTooDeep { limit: Limits::DEFAULT_MAX_DEPTH };
        let mut buf = BytesMut::from(&b"before"[..]);
        let declare = queue::Declare { arguments: arguments.clone(), ..queue::Declare::default() };
        assert_eq!(Frame::Method(1, declare.into()).encode(&mut buf), Err(expected.clone()));
        let header =
            ContentHeader::new(0, BasicProperties { headers: Some(arguments.clone()), ..BasicProperties::default() });
        assert_eq!(Frame::Header(1, header).encode(&mut buf), Err(expected.clone()));
        let publish = basic::Publish::default();
        let props = BasicProperties { headers: Some(arguments), ..BasicProperties::default() };
        assert_eq!(encode_publish(&mut buf, 1, &publish, &props, b"body", 4096), Err(expected));
        assert_eq!(&buf[..], b"before", "nothing written on error");

        // 64 levels encode.
        let at_limit = queue::Declare { arguments: deep_table(64), ..queue::Declare::default() };
        Frame::Method(1, at_limit.into()).encode(&mut buf).unwrap();
    });
}

#[test]
fn m5_depth_limit_is_configurable() {
    on_small_stack(|| {
        for max_depth in [1, 2, 10] {
            let limits = Limits { max_depth, ..tuned() };
            for nested in [tables(max_depth), arrays(max_depth), mixed(max_depth)] {
                let mut buf = headers_frame(&nested);
                assert!(matches!(decode_frame(&mut buf, &limits), Ok(Some(Frame::Header(1, _)))));
            }
            for nested in [tables(max_depth + 1), arrays(max_depth + 1), mixed(max_depth + 1)] {
                let mut buf = headers_frame(&nested);
                assert_err(
                    decode_frame(&mut buf, &limits),
                    &DecodeError::NestingTooDeep { limit: max_depth },
                    ReplyCode::SYNTAX_ERROR,
                );
            }
            // The encoder enforces the same limit.
            let mut buf = BytesMut::new();
            let declare = |depth| queue::Declare { arguments: deep_table(depth), ..queue::Declare::default() };
            Frame::Method(1, declare(max_depth).into()).encode_with_depth(&mut buf, max_depth).unwrap();
            assert_eq!(
                Frame::Method(1, declare(max_depth + 1).into()).encode_with_depth(&mut buf, max_depth),
                Err(EncodeError::NestingTooDeep { limit: max_depth })
            );
        }
    });
}

#[test]
fn nested_bytes_helper_builds_valid_containers() {
    // A table holding an array holding an empty array.
    assert_eq!(arrays(3), [0, 0, 0, 12, 1, b'k', b'A', 0, 0, 0, 5, b'A', 0, 0, 0, 0]);
    // Encoded by the codec, a three-level table has the same bytes as the helper's.
    let mut wire = BytesMut::new();
    let header = ContentHeader::new(0, BasicProperties { headers: Some(deep_table(3)), ..BasicProperties::default() });
    Frame::Header(1, header).encode(&mut wire).unwrap();
    assert_eq!(wire, headers_frame(&tables(3)));
}
