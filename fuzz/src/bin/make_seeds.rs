//! Writes the seed corpora of the fuzz targets into `fuzz/corpus/<target>/`.
//!
//! ```text
//! cd fuzz && cargo run --release --bin make_seeds
//! ```
//!
//! The seeds are the golden RabbitMQ captures in `codec/tests/fixtures/golden/*.bin` plus
//! values encoded with the codec's own API: every method with its default arguments, methods
//! with every bit set and with argument tables, field tables with every type letter and
//! nesting up to and just past the depth limit, content headers with each of the 14
//! properties and with all of them, and content sequences (method, header, bodies) for the
//! assembler. Output is deterministic: every run writes the same `seed-*` files, after
//! removing the old ones (files the fuzzer merged in, named by their SHA-1, are left alone).
//!
//! Input formats, per target:
//! - `frame`: a read buffer, frames back to back;
//! - `method`: the channel (2 bytes, big-endian), then a method frame's payload;
//! - `field_table`: a field table's body, without its length prefix;
//! - `content_header`: a content header frame's payload, or a frame sequence (the target
//!   tries both readings on every input);
//! - `proto`: a script for `lepus::proto::Connection` (see `proto_checks/script.rs`); its
//!   seeds are written by `proto_checks/seeds.rs`, next to the format's reader, and
//!   `client/tests/proto_fuzz_corpus.rs` checks that the committed ones are current.

use std::{
    fs,
    io::{self, ErrorKind},
    path::{Path, PathBuf},
    process::ExitCode,
};

// Only the seed scripts are used here.
#[allow(dead_code, unused_imports)]
#[path = "../../proto_checks/mod.rs"]
mod proto_checks;

use bytes::{Bytes, BytesMut};
use lepus_codec::{
    BasicProperties, ContentHeader, Decimal, FRAME_OVERHEAD, FieldArray, FieldTable, FieldValue, Frame, Limits, Method,
    PROTOCOL_HEADER, ReplyCode, ShortStr, decode_frame, encode_publish,
    method::{access, basic, channel, confirm, connection, exchange, queue, tx},
};

/// Where the corpora go: `fuzz/corpus/`.
const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus");
/// Where the golden captures are.
const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../codec/tests/fixtures/golden");
/// Golden captures in the order they came off the wire, for the stream seeds.
const GOLDEN_ORDER: [&str; 10] = [
    "connection_start",
    "connection_tune",
    "basic_deliver",
    "basic_deliver_header",
    "basic_deliver_body",
    "basic_return",
    "basic_return_header",
    "basic_return_body",
    "basic_ack_single",
    "basic_ack_multiple",
];
/// Nesting depth the codec's encoder is allowed for the "one level too deep" seeds.
const DEEP: usize = Limits::DEFAULT_MAX_DEPTH + 8;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// One target's corpus directory.
struct Corpus {
    dir: PathBuf,
    written: usize,
}

impl Corpus {
    /// Opens `corpus/<target>/`, creating it and removing the seeds of an earlier run.
    fn open(target: &str) -> Result<Self> {
        let dir = Path::new(CORPUS).join(target);
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("seed-")) {
                fs::remove_file(path)?;
            }
        }
        Ok(Corpus { dir, written: 0 })
    }

    /// Writes one seed as `seed-<name>`.
    fn add(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.dir.join(format!("seed-{name}"));
        if path.exists() {
            return Err(format!("two seeds named {name}").into());
        }
        fs::write(path, bytes)?;
        self.written += 1;
        Ok(())
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("make_seeds: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let golden = read_golden()?;
    let mut frame = Corpus::open("frame")?;
    let mut method = Corpus::open("method")?;
    let mut table = Corpus::open("field_table")?;
    let mut header = Corpus::open("content_header")?;
    let mut proto = Corpus::open("proto")?;

    frame_seeds(&mut frame, &golden)?;
    method_seeds(&mut method, &golden)?;
    table_seeds(&mut table, &golden)?;
    header_seeds(&mut header, &golden)?;
    for seed in proto_checks::seeds() {
        proto.add(seed.name, &seed.bytes)?;
    }

    for corpus in [&frame, &method, &table, &header, &proto] {
        println!("{:>4} seeds in {}", corpus.written, corpus.dir.display());
    }
    Ok(())
}

/// The golden captures, by name, in wire order.
fn read_golden() -> Result<Vec<(&'static str, Vec<u8>)>> {
    GOLDEN_ORDER
        .iter()
        .map(|name| {
            let path = Path::new(GOLDEN).join(format!("{name}.bin"));
            let bytes = fs::read(&path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            Ok((*name, bytes))
        })
        .collect()
}

fn golden_frame(golden: &[(&str, Vec<u8>)], name: &str) -> Result<Frame> {
    let bytes = golden.iter().find(|(n, _)| *n == name).map(|(_, b)| b).ok_or("missing golden frame")?;
    let limits = Limits::default().tuned(131_072, Limits::DEFAULT_CONTROL_FRAME_MAX);
    let frame = decode_frame(&mut BytesMut::from(&bytes[..]), &limits)?.ok_or("incomplete golden frame")?;
    Ok(frame)
}

/// One frame's wire bytes; deep tables allowed so the too-deep seeds can be made.
fn wire(frame: &Frame) -> Result<Vec<u8>> {
    let mut buf = BytesMut::new();
    frame.encode_with_depth(&mut buf, DEEP)?;
    Ok(buf.to_vec())
}

/// Frames back to back.
fn stream(frames: &[Frame]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for frame in frames {
        out.extend_from_slice(&wire(frame)?);
    }
    Ok(out)
}

/// A frame's payload: its wire bytes without the 7-byte header and the end octet.
fn payload(wire: &[u8]) -> Result<&[u8]> {
    let end = wire.len().checked_sub(1).ok_or(io::Error::from(ErrorKind::UnexpectedEof))?;
    Ok(wire.get(7..end).ok_or(io::Error::from(ErrorKind::UnexpectedEof))?)
}

/// The `method` target's input for a method frame: channel, then payload.
fn method_input(wire: &[u8]) -> Result<Vec<u8>> {
    let mut out = wire.get(1..3).ok_or(io::Error::from(ErrorKind::UnexpectedEof))?.to_vec();
    out.extend_from_slice(payload(wire)?);
    Ok(out)
}

fn s(text: &str) -> ShortStr {
    // Every literal here is far below 255 bytes.
    ShortStr::try_from(text).unwrap_or_default()
}

fn table(entries: Vec<(&str, FieldValue)>) -> FieldTable {
    entries.into_iter().map(|(k, v)| (s(k), v)).collect()
}

/// One value of every type letter: t b B s u I i l f d D S A T F V x.
fn every_type() -> Vec<(&'static str, FieldValue)> {
    vec![
        ("t", FieldValue::Bool(true)),
        ("b", FieldValue::I8(-128)),
        ("B", FieldValue::U8(255)),
        ("s", FieldValue::I16(-32768)),
        ("u", FieldValue::U16(65535)),
        ("I", FieldValue::I32(i32::MIN)),
        ("i", FieldValue::U32(u32::MAX)),
        ("l", FieldValue::I64(i64::MIN)),
        ("f", FieldValue::F32(1.5)),
        ("d", FieldValue::F64(-0.0)),
        ("D", FieldValue::Decimal(Decimal { scale: 2, value: 12_345 })),
        ("S", FieldValue::LongString(Bytes::from_static("λ long string".as_bytes()))),
        ("A", FieldValue::Array(FieldArray(vec![FieldValue::U8(1), FieldValue::from("two"), FieldValue::Void]))),
        ("T", FieldValue::Timestamp(1_700_000_000)),
        ("F", FieldValue::Table(table(vec![("inner", FieldValue::Bool(false))]))),
        ("V", FieldValue::Void),
        ("x", FieldValue::ByteArray(Bytes::from_static(&[0, 1, 0xFE, 0xFF]))),
    ]
}

/// A table with one of each type, as RabbitMQ's `x-death` or server properties look.
fn rich_table() -> FieldTable {
    let mut t = table(every_type());
    t.push(
        s("capabilities"),
        FieldValue::Table(table(vec![
            ("publisher_confirms", FieldValue::Bool(true)),
            ("consumer_cancel_notify", FieldValue::Bool(true)),
            ("connection.blocked", FieldValue::Bool(true)),
        ])),
    );
    t.push(
        s("x-death"),
        FieldValue::Array(FieldArray(vec![FieldValue::Table(table(vec![
            ("count", FieldValue::I64(3)),
            ("queue", FieldValue::from("orders")),
            ("reason", FieldValue::from("rejected")),
            ("routing-keys", FieldValue::Array(FieldArray(vec![FieldValue::from("orders.eu")]))),
            ("time", FieldValue::Timestamp(1_700_000_123)),
        ]))])),
    );
    t
}

/// A table nested `depth` levels deep (the outermost table is level 1), alternating
/// tables and arrays.
fn nested(depth: usize) -> FieldTable {
    let mut value = FieldValue::U8(7);
    for level in (2..=depth).rev() {
        value = if level % 2 == 0 {
            FieldValue::Array(FieldArray(vec![value]))
        } else {
            FieldValue::Table(table(vec![("n", value)]))
        };
    }
    table(vec![("n", value)])
}

/// The body of a field table (without its length prefix), cut from a content header that
/// carries it as `headers`: payload = class 2, weight 2, body size 8, flags 2, length 4.
fn table_body(t: &FieldTable) -> Result<Vec<u8>> {
    let props = BasicProperties { headers: Some(t.clone()), ..BasicProperties::default() };
    let wire = wire(&Frame::Header(1, ContentHeader::new(0, props)))?;
    Ok(payload(&wire)?.get(18..).ok_or(io::Error::from(ErrorKind::UnexpectedEof))?.to_vec())
}

/// Every method with its default arguments, in `Method::ALL` order.
fn default_methods() -> Vec<Method> {
    macro_rules! defaults {
        ($($class:ident::$ty:ident),* $(,)?) => { vec![$(Method::from($class::$ty::default())),*] };
    }
    defaults![
        connection::Start,
        connection::StartOk,
        connection::Secure,
        connection::SecureOk,
        connection::Tune,
        connection::TuneOk,
        connection::Open,
        connection::OpenOk,
        connection::Close,
        connection::CloseOk,
        connection::Blocked,
        connection::Unblocked,
        connection::UpdateSecret,
        connection::UpdateSecretOk,
        channel::Open,
        channel::OpenOk,
        channel::Flow,
        channel::FlowOk,
        channel::Close,
        channel::CloseOk,
        access::Request,
        access::RequestOk,
        exchange::Declare,
        exchange::DeclareOk,
        exchange::Delete,
        exchange::DeleteOk,
        exchange::Bind,
        exchange::BindOk,
        exchange::Unbind,
        exchange::UnbindOk,
        queue::Declare,
        queue::DeclareOk,
        queue::Bind,
        queue::BindOk,
        queue::Purge,
        queue::PurgeOk,
        queue::Delete,
        queue::DeleteOk,
        queue::Unbind,
        queue::UnbindOk,
        basic::Qos,
        basic::QosOk,
        basic::Consume,
        basic::ConsumeOk,
        basic::Cancel,
        basic::CancelOk,
        basic::Publish,
        basic::Return,
        basic::Deliver,
        basic::Get,
        basic::GetOk,
        basic::GetEmpty,
        basic::Ack,
        basic::Reject,
        basic::RecoverAsync,
        basic::Recover,
        basic::RecoverOk,
        basic::Nack,
        tx::Select,
        tx::SelectOk,
        tx::Commit,
        tx::CommitOk,
        tx::Rollback,
        tx::RollbackOk,
        confirm::Select,
        confirm::SelectOk,
    ]
}

/// Methods with every bit set, argument tables and edge values.
fn interesting_methods() -> Vec<(&'static str, u16, Method)> {
    let long_key = s(&"k".repeat(255));
    vec![
        (
            "connection.start-rich",
            0,
            Method::from(connection::Start {
                server_properties: rich_table(),
                mechanisms: Bytes::from_static(b"PLAIN AMQPLAIN EXTERNAL"),
                ..connection::Start::default()
            }),
        ),
        (
            "connection.start-ok-plain",
            0,
            Method::from(connection::StartOk {
                client_properties: table(vec![
                    ("product", FieldValue::from("lepus")),
                    ("capabilities", FieldValue::Table(table(vec![("publisher_confirms", FieldValue::Bool(true))]))),
                ]),
                response: Bytes::from_static(b"\0guest\0guest"),
                ..connection::StartOk::default()
            }),
        ),
        (
            "connection.tune-max",
            0,
            Method::from(connection::Tune { channel_max: u16::MAX, frame_max: u32::MAX, heartbeat: u16::MAX }),
        ),
        ("connection.open-insist", 0, Method::from(connection::Open { insist: true, ..connection::Open::default() })),
        (
            "connection.close-320",
            0,
            Method::from(connection::Close {
                reply_code: ReplyCode::CONNECTION_FORCED,
                reply_text: s("CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"),
                class_id: 0,
                method_id: 0,
            }),
        ),
        (
            "connection.update-secret",
            0,
            Method::from(connection::UpdateSecret {
                new_secret: Bytes::from_static(b"eyJhbGciOiJIUzI1NiJ9.e30.c2ln"),
                reason: s("refresh"),
            }),
        ),
        (
            "channel.close-406",
            1,
            Method::from(channel::Close {
                reply_code: ReplyCode::PRECONDITION_FAILED,
                reply_text: s("PRECONDITION_FAILED - inequivalent arg 'durable'"),
                class_id: 50,
                method_id: 10,
            }),
        ),
        ("channel.flow-active", 1, Method::from(channel::Flow { active: true })),
        ("access.request-all-bits", 1, Method::from(access::Request { exclusive: true, ..access::Request::default() })),
        (
            "exchange.declare-all-bits",
            1,
            Method::from(exchange::Declare {
                exchange: s("events"),
                kind: s("topic"),
                passive: true,
                durable: true,
                auto_delete: true,
                internal: true,
                nowait: true,
                arguments: table(vec![("alternate-exchange", FieldValue::from("unrouted"))]),
                ..exchange::Declare::default()
            }),
        ),
        (
            "exchange.bind-args",
            1,
            Method::from(exchange::Bind {
                destination: s("dst"),
                source: s("src"),
                routing_key: s("a.*.b"),
                nowait: true,
                arguments: table(vec![("x-match", FieldValue::from("any"))]),
                ..exchange::Bind::default()
            }),
        ),
        (
            "queue.declare-all-bits",
            1,
            Method::from(queue::Declare {
                queue: s("orders"),
                passive: true,
                durable: true,
                exclusive: true,
                auto_delete: true,
                nowait: true,
                arguments: table(vec![
                    ("x-queue-type", FieldValue::from("quorum")),
                    ("x-max-priority", FieldValue::U8(10)),
                    ("x-message-ttl", FieldValue::I32(60_000)),
                    ("x-dead-letter-exchange", FieldValue::from("dlx")),
                ]),
                ..queue::Declare::default()
            }),
        ),
        (
            "queue.declare-ok",
            1,
            Method::from(queue::DeclareOk {
                queue: s("amq.gen-JzTY20BRgKO-HjmUJj0wLg"),
                message_count: u32::MAX,
                consumer_count: 1,
            }),
        ),
        (
            "queue.delete-all-bits",
            1,
            Method::from(queue::Delete {
                queue: s("orders"),
                if_unused: true,
                if_empty: true,
                nowait: true,
                ..queue::Delete::default()
            }),
        ),
        ("basic.qos-global", 1, Method::from(basic::Qos { prefetch_size: 0, prefetch_count: 100, global: true })),
        (
            "basic.consume-all-bits",
            7,
            Method::from(basic::Consume {
                queue: s("orders"),
                consumer_tag: s("ctag-1"),
                no_local: true,
                no_ack: true,
                exclusive: true,
                nowait: true,
                arguments: table(vec![
                    ("x-priority", FieldValue::I32(5)),
                    ("x-stream-offset", FieldValue::from("first")),
                ]),
                ..basic::Consume::default()
            }),
        ),
        (
            "basic.deliver-long-key",
            65535,
            Method::from(basic::Deliver {
                consumer_tag: s("amq.ctag-abc"),
                delivery_tag: u64::MAX,
                redelivered: true,
                exchange: s("amq.topic"),
                routing_key: long_key,
            }),
        ),
        (
            "basic.get-ok",
            1,
            Method::from(basic::GetOk {
                delivery_tag: 1,
                redelivered: true,
                exchange: s(""),
                routing_key: s("orders"),
                message_count: 41,
            }),
        ),
        ("basic.ack-multiple", 1, Method::from(basic::Ack { delivery_tag: u64::MAX, multiple: true })),
        ("basic.nack-all-bits", 1, Method::from(basic::Nack { delivery_tag: 9, multiple: true, requeue: true })),
        ("basic.reject-no-requeue", 1, Method::from(basic::Reject { delivery_tag: 3, requeue: false })),
        ("confirm.select-nowait", 1, Method::from(confirm::Select { nowait: true })),
    ]
}

/// Headers with each property alone, and with all 14.
fn headers() -> Vec<(&'static str, ContentHeader)> {
    let all = BasicProperties {
        content_type: Some(s("application/json")),
        content_encoding: Some(s("gzip")),
        headers: Some(rich_table()),
        delivery_mode: Some(2),
        priority: Some(9),
        correlation_id: Some(s("corr-1")),
        reply_to: Some(s("amq.rabbitmq.reply-to")),
        expiration: Some(s("60000")),
        message_id: Some(s("msg-1")),
        timestamp: Some(1_700_000_000),
        kind: Some(s("order.created")),
        user_id: Some(s("guest")),
        app_id: Some(s("lepus")),
        cluster_id: Some(s("")),
    };
    let none = BasicProperties::default;
    let mut out = vec![
        ("all-properties", ContentHeader::new(12, all.clone())),
        ("no-properties", ContentHeader::new(0, none())),
        ("body-size-max", ContentHeader::new(u64::MAX, none())),
        ("weight", ContentHeader { weight: 0xFFFF, ..ContentHeader::new(1, none()) }),
    ];
    let single: [(&'static str, BasicProperties); 14] = [
        ("content-type", BasicProperties { content_type: all.content_type.clone(), ..none() }),
        ("content-encoding", BasicProperties { content_encoding: all.content_encoding.clone(), ..none() }),
        ("headers", BasicProperties { headers: all.headers.clone(), ..none() }),
        ("delivery-mode", BasicProperties { delivery_mode: all.delivery_mode, ..none() }),
        ("priority", BasicProperties { priority: all.priority, ..none() }),
        ("correlation-id", BasicProperties { correlation_id: all.correlation_id.clone(), ..none() }),
        ("reply-to", BasicProperties { reply_to: all.reply_to.clone(), ..none() }),
        ("expiration", BasicProperties { expiration: all.expiration.clone(), ..none() }),
        ("message-id", BasicProperties { message_id: all.message_id.clone(), ..none() }),
        ("timestamp", BasicProperties { timestamp: all.timestamp, ..none() }),
        ("type", BasicProperties { kind: all.kind.clone(), ..none() }),
        ("user-id", BasicProperties { user_id: all.user_id.clone(), ..none() }),
        ("app-id", BasicProperties { app_id: all.app_id.clone(), ..none() }),
        ("cluster-id", BasicProperties { cluster_id: all.cluster_id.clone(), ..none() }),
    ];
    for (name, props) in single {
        out.push((name, ContentHeader::new(5, props)));
    }
    out
}

fn frame_seeds(corpus: &mut Corpus, golden: &[(&str, Vec<u8>)]) -> Result<()> {
    let mut all = Vec::new();
    for (name, bytes) in golden {
        corpus.add(&format!("golden-{name}"), bytes)?;
        all.extend_from_slice(bytes);
    }
    corpus.add("golden-stream", &all)?;

    corpus.add("heartbeat", &wire(&Frame::Heartbeat)?)?;
    corpus.add("protocol-header", &PROTOCOL_HEADER)?;
    corpus.add("protocol-header-amqp-1-0", b"AMQP\x00\x01\x00\x00")?;

    let defaults: Vec<Frame> = default_methods().into_iter().map(|m| Frame::Method(1, m)).collect();
    corpus.add("default-methods-stream", &stream(&defaults)?)?;
    let interesting: Vec<Frame> = interesting_methods().into_iter().map(|(_, ch, m)| Frame::Method(ch, m)).collect();
    corpus.add("interesting-methods-stream", &stream(&interesting)?)?;
    let headers: Vec<Frame> = headers().into_iter().map(|(_, h)| Frame::Header(3, h)).collect();
    corpus.add("headers-stream", &stream(&headers)?)?;

    // Body frames at the edges of the 4096-byte limit in force before tuning.
    for len in [0, 1, 4096 - FRAME_OVERHEAD, 4096 - FRAME_OVERHEAD + 1] {
        let body = Bytes::from(vec![b'x'; len]);
        corpus.add(&format!("body-{len}"), &wire(&Frame::Body(1, body))?)?;
    }

    let mut publish = BytesMut::new();
    let props = BasicProperties { content_type: Some(s("text/plain")), delivery_mode: Some(2), ..Default::default() };
    encode_publish(
        &mut publish,
        1,
        &basic::Publish { routing_key: s("jobs"), ..Default::default() },
        &props,
        &[b'p'; 9000],
        4096,
    )?;
    corpus.add("publish-9000-at-4096", &publish)?;

    let mut mixed = wire(&Frame::Heartbeat)?;
    mixed
        .extend_from_slice(&wire(&Frame::Method(0, Method::from(connection::Blocked { reason: s("low on memory") })))?);
    mixed.extend_from_slice(&wire(&Frame::Method(0, Method::from(connection::Unblocked {})))?);
    mixed.extend_from_slice(&[1, 0, 0]); // a frame cut after its first three bytes
    corpus.add("blocked-unblocked-then-partial", &mixed)?;
    Ok(())
}

fn method_seeds(corpus: &mut Corpus, golden: &[(&str, Vec<u8>)]) -> Result<()> {
    for (name, bytes) in golden {
        if bytes.first() == Some(&lepus_codec::FRAME_METHOD) {
            corpus.add(&format!("golden-{name}"), &method_input(bytes)?)?;
        }
    }
    for method in default_methods() {
        let name = format!("default-{}", method.name());
        corpus.add(&name, &method_input(&wire(&Frame::Method(1, method))?)?)?;
    }
    for (name, channel, method) in interesting_methods() {
        corpus.add(name, &method_input(&wire(&Frame::Method(channel, method))?)?)?;
    }
    // Bits with the unused high bits set: decoding keeps the low bits, so re-encoding
    // normalises the octet.
    corpus.add("basic.ack-bits-ff", &[0, 1, 0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 0, 1, 0xFF])?;
    Ok(())
}

fn table_seeds(corpus: &mut Corpus, golden: &[(&str, Vec<u8>)]) -> Result<()> {
    if let Method::ConnectionStart(start) = match golden_frame(golden, "connection_start")? {
        Frame::Method(_, method) => method,
        _ => return Err("golden connection.start is not a method".into()),
    } {
        corpus.add("golden-server-properties", &table_body(&start.server_properties)?)?;
    }
    if let Frame::Header(_, header) = golden_frame(golden, "basic_deliver_header")? {
        let headers = header.properties.headers.ok_or("golden header has no headers")?;
        corpus.add("golden-headers", &table_body(&headers)?)?;
    }

    for (letter, value) in every_type() {
        // One seed per type letter; file names cannot tell `b` from `B` everywhere.
        let name = format!("type-{letter}-{:02x}", value.type_letter());
        corpus.add(&name, &table_body(&table(vec![("key", value)]))?)?;
    }
    corpus.add("every-type", &table_body(&table(every_type()))?)?;
    let array: FieldArray = every_type().into_iter().map(|(_, v)| v).collect();
    corpus.add("array-of-every-type", &table_body(&table(vec![("a", FieldValue::Array(array))]))?)?;
    corpus.add("rich", &table_body(&rich_table())?)?;
    corpus.add("empty", &[])?;

    let mut special = FieldTable::new();
    special.push(s("dup"), FieldValue::U8(1));
    special.push(s("dup"), FieldValue::U8(2));
    special.push(ShortStr::try_from(&[0xFF, 0xFE][..])?, FieldValue::from("non-UTF-8 key"));
    special.push(s(""), FieldValue::Void);
    special.push(s(&"k".repeat(255)), FieldValue::LongString(Bytes::new()));
    special.push(s("nan"), FieldValue::F64(f64::from_bits(0x7FF8_0000_0000_0001)));
    special.push(s("nan32"), FieldValue::F32(f32::from_bits(0xFFC0_0001)));
    special.push(s("empty-table"), FieldValue::Table(FieldTable::new()));
    special.push(s("empty-array"), FieldValue::Array(FieldArray::new()));
    corpus.add("duplicates-and-odd-keys", &table_body(&special)?)?;

    for depth in [2, 3, 5, 16, Limits::DEFAULT_MAX_DEPTH, Limits::DEFAULT_MAX_DEPTH + 1] {
        corpus.add(&format!("nested-{depth}"), &table_body(&nested(depth))?)?;
    }
    Ok(())
}

fn header_seeds(corpus: &mut Corpus, golden: &[(&str, Vec<u8>)]) -> Result<()> {
    for (name, bytes) in golden {
        if bytes.first() == Some(&lepus_codec::FRAME_HEADER) {
            corpus.add(&format!("golden-{name}"), payload(bytes)?)?;
        }
    }
    for (name, header) in headers() {
        corpus.add(name, payload(&wire(&Frame::Header(1, header))?)?)?;
    }
    // Flag words chained by bit 0: a second, empty word after content_type.
    let mut chained = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x01, 0x00, 0x00, 4];
    chained.extend_from_slice(b"text");
    corpus.add("flags-continued", &chained)?;

    // Content sequences, read as frames by the same target.
    let seq = |names: &[&str]| -> Vec<u8> {
        names
            .iter()
            .flat_map(|name| golden.iter().filter(move |(n, _)| n == name))
            .flat_map(|(_, b)| b.clone())
            .collect()
    };
    corpus.add("seq-golden-deliver", &seq(&["basic_deliver", "basic_deliver_header", "basic_deliver_body"]))?;
    corpus.add("seq-golden-return", &seq(&["basic_return", "basic_return_header", "basic_return_body"]))?;

    let deliver = |ch| Frame::Method(ch, Method::from(basic::Deliver { delivery_tag: 1, ..Default::default() }));
    let header = |ch, size| Frame::Header(ch, ContentHeader::new(size, BasicProperties::default()));
    let body = |ch, text: &'static [u8]| Frame::Body(ch, Bytes::from_static(text));
    let get_ok = Frame::Method(1, Method::from(basic::GetOk::default()));
    let ack = Frame::Method(1, Method::from(basic::Ack::default()));
    let sequences: Vec<(&str, Vec<Frame>)> = vec![
        ("seq-get-ok-empty-body", vec![get_ok.clone(), header(1, 0), ack.clone()]),
        (
            "seq-three-body-frames",
            vec![deliver(1), header(1, 10), body(1, b"abcd"), body(1, b""), body(1, b"efgh"), body(1, b"ij")],
        ),
        (
            "seq-interleaved-channels",
            vec![deliver(1), deliver(2), header(2, 3), Frame::Heartbeat, header(1, 2), body(2, b"two"), body(1, b"on")],
        ),
        (
            "seq-too-large-then-next",
            vec![
                deliver(1),
                header(1, 20),
                body(1, b"0123456789"),
                body(1, b"0123456789"),
                deliver(1),
                header(1, 1),
                body(1, b"!"),
            ],
        ),
        (
            "seq-too-large-heartbeats",
            vec![deliver(1), header(1, 20), Frame::Heartbeat, body(1, b"0123456789"), Frame::Heartbeat],
        ),
        ("seq-body-without-header", vec![body(1, b"stray"), deliver(1), header(1, 1), body(1, b"x")]),
        ("seq-method-inside-content", vec![deliver(1), header(1, 4), body(1, b"ab"), ack.clone(), deliver(1)]),
        ("seq-header-without-method", vec![header(1, 1), get_ok, header(1, 1), body(1, b"z")]),
        ("seq-body-too-long", vec![deliver(1), header(1, 2), body(1, b"abc"), body(1, b"ab")]),
        ("seq-empty-body-then-body", vec![deliver(1), header(1, 0), body(1, b"late")]),
    ];
    for (name, frames) in sequences {
        corpus.add(name, &stream(&frames)?)?;
    }

    let mut publish = BytesMut::new();
    let props = BasicProperties { message_id: Some(s("m-1")), ..Default::default() };
    encode_publish(&mut publish, 5, &basic::Publish::default(), &props, &[b'b'; 9000], 4096)?;
    corpus.add("seq-publish-9000-at-4096", &publish)?;
    Ok(())
}
