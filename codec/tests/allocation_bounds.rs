//! No allocation larger than the bytes actually present (RELIABILITY.md M2, M3, M6): length
//! prefixes, frame sizes and announced body sizes the peer controls are never trusted for an
//! allocation.
//!
//! Measured with `dhat` as the global allocator. `dhat` allows one profiler at a time, and
//! the test harness must not allocate in parallel, so this file holds exactly one test that
//! runs every case in turn: the malicious input is built first, then a profiler is started
//! around the decode alone, and its peak heap (`max_bytes`) is checked against the input.

use bytes::{BufMut, BytesMut};

mod common;
use common::wire::{frame, header_payload, method_payload};
use lepus_codec::{
    ContentAssembler, DecodeError, FRAME_BODY, FRAME_HEADER, FRAME_METHOD, FieldValue, Frame, Limits, Method, ShortStr,
    decode_frame, method::basic,
};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// A `connection.start` frame around raw `server_properties` bytes (length prefix included).
fn connection_start(server_properties: &[u8]) -> BytesMut {
    let mut args = vec![0, 9];
    args.put_slice(server_properties);
    args.put_u32(5);
    args.put_slice(b"PLAIN");
    args.put_u32(5);
    args.put_slice(b"en_US");
    frame(FRAME_METHOD, 0, &method_payload(10, 10, &args))
}

fn table(entries: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.put_u32(u32::try_from(entries.len()).unwrap());
    t.put_slice(entries);
    t
}

/// Limits after tuning to 131072 with the default 1 MiB control cap.
fn tuned() -> Limits {
    Limits::default().tuned(131_072, Limits::DEFAULT_CONTROL_FRAME_MAX)
}

/// Decodes every frame in `buf`; returns the first error, or how many frames decoded.
fn decode_all(mut buf: BytesMut, limits: &Limits) -> Result<usize, DecodeError> {
    let mut n = 0;
    while decode_frame(&mut buf, limits)?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// One measured case: its name, the bytes it feeds, the bound on the peak heap, and what
/// the decode returned (checked after the profiler stopped).
struct Measured<T> {
    name: &'static str,
    input_len: usize,
    max_bytes: usize,
    bound: usize,
    outcome: T,
}

/// The default bound: the decoder may hold a few times what arrived, plus a small constant.
fn small_bound(input_len: usize) -> usize {
    4 * input_len + 4096
}

/// Runs `decode` under a fresh profiler and records its peak heap.
fn measure<T>(name: &'static str, input_len: usize, bound: usize, decode: impl FnOnce() -> T) -> Measured<T> {
    let profiler = dhat::Profiler::builder().testing().build();
    let outcome = decode();
    let stats = dhat::HeapStats::get();
    drop(profiler);
    Measured { name, input_len, max_bytes: stats.max_bytes, bound, outcome }
}

#[track_caller]
fn check<T: PartialEq + std::fmt::Debug>(m: &Measured<T>, expected: &T) {
    eprintln!("{}: peak {} bytes for {} input bytes (bound {})", m.name, m.max_bytes, m.input_len, m.bound);
    assert_eq!(&m.outcome, expected, "{}", m.name);
    assert!(
        m.max_bytes <= m.bound,
        "{}: peak heap {} bytes for {} input bytes (bound {})",
        m.name,
        m.max_bytes,
        m.input_len,
        m.bound
    );
}

#[test]
fn no_allocation_larger_than_the_bytes_present() {
    length_prefixes_inside_a_valid_frame();
    frame_headers_claiming_4_gib();
    content_announcing_huge_bodies();
    containers_with_many_tiny_entries();
    deeply_nested_tables();
}

/// M6: string, table and array lengths far beyond the payload, inside a well-formed frame.
fn length_prefixes_inside_a_valid_frame() {
    let mut secure = Vec::new();
    secure.put_u32(u32::MAX);
    secure.put_slice(b"abc");
    let secure = frame(FRAME_METHOD, 0, &method_payload(10, 20, &secure));

    let mut huge_table = Vec::new();
    huge_table.put_u32(0xFFFF_FFF0);
    huge_table.put_slice(&[1, b'k', b'V']);
    let huge_table = connection_start(&huge_table);

    let mut array_entry = vec![1, b'k', b'A'];
    array_entry.put_u32(0xFFFF_FFF0);
    array_entry.put_u8(b'V');
    let huge_array = connection_start(&table(&array_entry));

    let mut string_entry = vec![1, b'k', b'S'];
    string_entry.put_u32(u32::MAX);
    string_entry.put_slice(b"abc");
    let huge_string = connection_start(&table(&string_entry));

    let cases = [
        ("longstr length 0xFFFFFFFF", secure, "longstr"),
        ("table length 0xFFFFFFF0", huge_table, "field table"),
        ("array length 0xFFFFFFF0", huge_array, "field array"),
        ("longstr length 0xFFFFFFFF in a table", huge_string, "longstr"),
    ];
    for (name, input, field) in cases {
        let len = input.len();
        let m = measure(name, len, small_bound(len), || decode_all(input, &tuned()));
        check(&m, &Err(DecodeError::Truncated { field }));
    }
}

/// M2: a frame header claiming 0xFFFFFFFF payload bytes, refused or (with limits raised to
/// the maximum) waited for, but never reserved.
fn frame_headers_claiming_4_gib() {
    let header = || {
        let mut h = BytesMut::new();
        h.put_u8(FRAME_BODY);
        h.put_u16(1);
        h.put_u32(u32::MAX);
        h
    };
    let input = header();
    let m = measure("frame size 0xFFFFFFFF before tune", 7, small_bound(7), || decode_all(input, &Limits::default()));
    check(&m, &Err(DecodeError::FrameTooLarge { size: 0x1_0000_0007, max: 4096 }));

    let input = header();
    let m = measure("frame size 0xFFFFFFFF after tune", 7, small_bound(7), || decode_all(input, &tuned()));
    check(&m, &Err(DecodeError::FrameTooLarge { size: 0x1_0000_0007, max: 131_072 }));

    // Limits as large as they go: the decoder waits for the bytes and reserves nothing.
    let no_limits = Limits { frame_max: u32::MAX, control_frame_max: u32::MAX, ..Limits::default() };
    let mut input = header();
    input.put_slice(&[0; 100]);
    let m = measure("frame size 0xFFFFFFF7 with limits at the maximum", 107, small_bound(107), || {
        input[3..7].copy_from_slice(&(u32::MAX - 8).to_be_bytes());
        let outcome = decode_frame(&mut input, &no_limits).map(|f| f.is_some());
        (outcome, input.len(), input.capacity() <= 107)
    });
    check(&m, &(Ok(false), 107, true));
}

/// M3: content headers announcing `u64::MAX`, 2^63 and exactly the cap, followed by body
/// frames: memory follows the body bytes that arrive, never the announced size.
fn content_announcing_huge_bodies() {
    let deliver = {
        let mut wire = BytesMut::new();
        Frame::Method(1, Method::from(basic::Deliver::default())).encode(&mut wire).unwrap();
        wire
    };
    let cap = Limits::DEFAULT_MAX_MESSAGE_SIZE;
    let cases = [
        ("body size u64::MAX", u64::MAX, Err(DecodeError::MessageTooLarge { size: u64::MAX, max: cap })),
        ("body size 2^63", 1 << 63, Err(DecodeError::MessageTooLarge { size: 1 << 63, max: cap })),
        ("body size cap + 1", cap + 1, Err(DecodeError::MessageTooLarge { size: cap + 1, max: cap })),
        ("body size exactly the cap", cap, Ok(())),
    ];
    for (name, body_size, expected_header) in cases {
        let mut input = deliver.clone();
        input.put_slice(&frame(FRAME_HEADER, 1, &header_payload(60, body_size, &[0], &[])));
        for _ in 0..4 {
            input.put_slice(&frame(FRAME_BODY, 1, &[0x42; 4000]));
        }
        let len = input.len();
        let m = measure(name, len, small_bound(len), move || {
            let mut input = input;
            let mut asm = ContentAssembler::new(cap);
            let mut header_result = Ok(());
            let mut completed = 0;
            while let Some(frame) = decode_frame(&mut input, &tuned()).unwrap() {
                let fed = match frame {
                    Frame::Method(_, m) => asm.method(m),
                    Frame::Header(_, h) => asm.header(h).inspect_err(|e| header_result = Err(e.clone())),
                    Frame::Body(_, b) => asm.body(b),
                    Frame::Heartbeat => Ok(None),
                };
                if let Ok(Some(_)) = fed {
                    completed += 1;
                }
            }
            (header_result, completed, asm.is_idle())
        });
        check(&m, &(expected_header, 0, false));
    }
}

/// M6: a table of thousands of minimal entries (empty key, `V`: two bytes each) and an
/// array of thousands of `V` (one byte each). A decoded entry is larger than its wire form
/// (`size_of` below), so the bound is linear in the entries present: at most one doubling
/// of the vector that holds them. Never anything sized from a length prefix.
fn containers_with_many_tiny_entries() {
    let entry_size = std::mem::size_of::<(ShortStr, FieldValue)>();
    let value_size = std::mem::size_of::<FieldValue>();
    for count in [2_000usize, 60_000] {
        let mut entries = Vec::with_capacity(2 * count);
        for _ in 0..count {
            entries.put_slice(&[0, b'V']);
        }
        let mut values = vec![1, b'k', b'A'];
        values.put_u32(u32::try_from(count).unwrap());
        values.resize(values.len() + count, b'V');
        let cases = [
            ("table with many tiny entries", connection_start(&table(&entries)), 2 * count * entry_size),
            ("array with many tiny values", connection_start(&table(&values)), 2 * count * value_size),
        ];
        for (name, input, growth) in cases {
            let len = input.len();
            let m = measure(name, len, small_bound(len) + growth, || {
                let mut input = input;
                match decode_frame(&mut input, &tuned()) {
                    Ok(Some(Frame::Method(_, Method::ConnectionStart(start)))) => {
                        let props = start.server_properties;
                        Ok(props.get("k").and_then(FieldValue::as_array).map_or(props.len(), |a| a.0.len()))
                    }
                    other => Err(format!("{other:?}")),
                }
            });
            check(&m, &Ok(count));
            // Linear in the input with a constant factor (one decoded value per wire byte).
            assert!(m.max_bytes <= 96 * len + 4096, "{name}: {} bytes for {len}", m.max_bytes);
        }
    }
}

/// M5: 21,800 nested tables are refused at the depth limit having allocated next to nothing.
fn deeply_nested_tables() {
    let depth = 21_800;
    let mut nested = Vec::with_capacity(depth * 7);
    let mut length_at = Vec::with_capacity(depth);
    for level in 1..=depth {
        length_at.push(nested.len());
        nested.put_u32(0);
        if level < depth {
            nested.put_slice(&[1, b'k', b'F']);
        }
    }
    let end = nested.len();
    for at in length_at {
        let len = u32::try_from(end - at - 4).unwrap();
        nested[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
    let input = connection_start(&nested);
    let len = input.len();
    let m = measure("tables nested 21,800 levels", len, 4096, || decode_all(input, &tuned()));
    check(&m, &Err(DecodeError::NestingTooDeep { limit: Limits::DEFAULT_MAX_DEPTH }));
}
