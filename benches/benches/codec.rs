//! Codec micro-benchmarks: lepus-codec against amq-protocol (the codec under lapin), doing
//! the same work side by side in each criterion group, then a table of the ratios.
//!
//! Run with `cargo bench -p lepus-benches --bench codec` (criterion options after `--`).
//!
//! - `publish_encode`: `basic.publish` + content header without properties + body frames
//!   at `frame_max` 131072, into a reused buffer. lepus: `encode_publish` (and
//!   `encode_publish_vectored` at 128 KiB). amq-protocol, as lapin does it: an `AMQPFrame`
//!   per frame (the body chunk copied into the frame's `Vec`, the names into `ShortString`s),
//!   each serialised by `gen_frame` into the reused `Vec`. `amq-protocol-gen-only` times
//!   `gen_frame` alone over frames built beforehand, a lower bound for amq-protocol.
//! - `publish_decode`, `deliver_decode`: every frame of a publish, and of a delivery
//!   (`basic.deliver` + header + 64 B body, without and with two properties), out of a read
//!   buffer. Each iteration first refills the buffer with one `memcpy` into its existing
//!   allocation (`BytesMut` for lepus, `Vec<u8>` for amq-protocol, parsed as a slice), as a
//!   socket read would; `refill-only` times that copy alone, and the table's "net ratio"
//!   subtracts it from both sides. Each decoded frame is looked at in place
//!   (`black_box(&frame)`) and dropped, so neither side is charged for moving frames around.
//! - `field_table_encode`, `field_table_decode`: a 20-entry table of mixed types as the
//!   `headers` property of a content header frame, the public way either codec encodes one.
//!
//! After criterion's report comes a table: lepus and amq-protocol in ns/op and GB/s, and the
//! ratio. Its times come from a second, short pass in which the two codecs' routines take
//! turns (fastest of many ~2 ms rounds), so that other work on a shared machine weighs on
//! both alike; the ratio of criterion's own estimates is printed beside it.
//!
//! The setup checks, once and untimed, that both codecs produce and accept the same bytes,
//! and that lepus does not copy bodies: decoded bodies point into the read buffer, and
//! `encode_publish_vectored` hands the body back as slices of itself.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a bench binary: a broken setup must stop it loudly"
)]

use std::{hint::black_box, mem, time::Duration};

use amq_protocol::{
    frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame, parse_frame},
    protocol::{AMQPClass, basic as amq_basic},
    types::{
        AMQPValue, ByteArray, DecimalValue, FieldArray as AmqArray, FieldTable as AmqTable, LongString, ShortString,
    },
};
use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput, measurement::WallTime};
use lepus_benches::{
    Recorder, Routine, Row, Sample, address_range,
    fixtures::{self, CHANNEL, FRAME_MAX, Value},
    interleaved_min, option_value, points_into, refill_bytes_mut, refill_vec, routine,
};
use lepus_codec::{
    BasicProperties, Frame, Limits, Method, decode_frame, encode_publish, encode_publish_vectored, method::basic,
};

static RECORDER: Recorder = Recorder::new();

/// Criterion samples per benchmark (`--sample-size` overrides it).
const SAMPLE_SIZE: usize = 40;
/// Rounds of the interleaved timing behind the table, and the length of one batch.
const ROUNDS: usize = 41;
const BATCH: Duration = Duration::from_millis(2);
/// Body sizes of the publish benchmarks.
const SIZES: [usize; 3] = [64, 4096, 128 * 1024];
/// The codec lepus is compared with.
const OTHER: &str = "amq-protocol";
const LEPUS: &str = "lepus";
const LEPUS_VECTORED: &str = "lepus-vectored";
const OTHER_GEN_ONLY: &str = "amq-protocol-gen-only";
const REFILL: &str = "refill-only";
/// `basic`'s class id, for amq-protocol's content header.
const BASIC: u16 = 60;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(SAMPLE_SIZE)
        .nresamples(20_000)
        .configure_from_args();
    let mut rows = Vec::new();
    publish_encode(&mut c, &mut rows);
    publish_decode(&mut c, &mut rows);
    deliver_decode(&mut c, &mut rows);
    field_table(&mut c, &mut rows);
    c.final_summary();

    let last = option_value(&args, "--sample-size").and_then(|n| n.parse().ok()).unwrap_or(SAMPLE_SIZE);
    let rows: Vec<Row<'_>> = rows.iter().map(TableRow::as_row).collect();
    if let Some(table) = RECORDER.ratio_table(&rows, last, OTHER) {
        println!();
        println!("lepus-codec vs {OTHER}. ns/op: fastest of {ROUNDS} rounds of ~{BATCH:?}, the codecs");
        println!("taking turns (robust to other load on the machine); GB/s: wire bytes per ns.");
        println!("ratio = {OTHER} / lepus, how many times faster lepus is; net ratio: the same with the");
        println!("read-buffer refill (`refill-only`, part of both decode sides) subtracted; crit. ratio:");
        println!("the ratio of criterion's own estimates above.");
        println!();
        print!("{table}");
    }
}

/// An owned [`Row`].
struct TableRow {
    label: String,
    bytes: u64,
    lepus: String,
    other: String,
    baseline: Option<String>,
}

impl TableRow {
    fn as_row(&self) -> Row<'_> {
        Row {
            label: &self.label,
            bytes: self.bytes,
            lepus: &self.lepus,
            other: &self.other,
            baseline: self.baseline.as_deref(),
        }
    }
}

fn id(group: &str, function: &str, param: &str) -> String {
    format!("{group}/{function}/{param}")
}

/// A criterion group that knows its name, so that every benchmark is recorded by
/// [`RECORDER`] under the id criterion shows, `group/function/param`.
struct Group<'c> {
    name: &'static str,
    inner: BenchmarkGroup<'c, WallTime>,
}

impl<'c> Group<'c> {
    fn new(c: &'c mut Criterion, name: &'static str) -> Self {
        Group { name, inner: c.benchmark_group(name) }
    }

    fn id(&self, function: &str, param: &str) -> String {
        id(self.name, function, param)
    }

    /// Benchmarks every side with criterion (`bytes` per iteration), then times those that
    /// criterion measured again, interleaved, for the table.
    fn measure(&mut self, param: &str, bytes: usize, sides: &mut [(&str, &mut dyn Routine)]) {
        self.inner.throughput(Throughput::Bytes(bytes as u64));
        for (function, routine) in sides.iter_mut() {
            let id = self.id(function, param);
            self.inner.bench_function(BenchmarkId::new(*function, param), |b| {
                b.iter_custom(|iters| {
                    let elapsed = routine.run_batch(iters);
                    RECORDER.record(&id, Sample { iters, elapsed });
                    elapsed
                });
            });
        }
        let mut ids = Vec::new();
        let mut routines: Vec<&mut dyn Routine> = Vec::new();
        for (function, routine) in sides.iter_mut() {
            let id = self.id(function, param);
            if RECORDER.measured(&id) {
                ids.push(id);
                routines.push(&mut **routine);
            }
        }
        for (id, ns) in ids.iter().zip(interleaved_min(&mut routines, ROUNDS, BATCH)) {
            RECORDER.set_interleaved(id, ns);
        }
    }

    fn finish(self) {
        self.inner.finish();
    }
}

fn size_label(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) { format!("{}KiB", size / 1024) } else { format!("{size}B") }
}

// ---------------------------------------------------------------------------------------
// amq-protocol side
// ---------------------------------------------------------------------------------------

/// Serialises `frames` with amq-protocol's `gen_frame` into `out`, emptied first.
fn amq_gen<'a>(out: &mut Vec<u8>, frames: impl IntoIterator<Item = &'a AMQPFrame>) {
    out.clear();
    let mut w = WriteContext::from(mem::take(out));
    for frame in frames {
        w = gen_frame(frame)(w).expect("amq-protocol encodes");
    }
    *out = w.into_inner().0;
}

fn amq_publish_method(exchange: &str, routing_key: &str) -> AMQPFrame {
    AMQPFrame::Method(
        CHANNEL,
        AMQPClass::Basic(amq_basic::AMQPMethod::Publish(amq_basic::Publish {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            mandatory: false,
            immediate: false,
        })),
    )
}

fn amq_header(body_size: usize, properties: amq_basic::AMQPProperties) -> AMQPFrame {
    AMQPFrame::Header(CHANNEL, AMQPContentHeader { class_id: BASIC, body_size: body_size as u64, properties })
}

/// Every frame of a publish, built beforehand (for the gen-only benchmark).
fn amq_publish_frames(body: &[u8]) -> Vec<AMQPFrame> {
    let mut frames = vec![
        amq_publish_method(fixtures::EXCHANGE, fixtures::ROUTING_KEY),
        amq_header(body.len(), amq_basic::AMQPProperties::default()),
    ];
    frames.extend(body.chunks(FRAME_MAX as usize - 8).map(|chunk| AMQPFrame::Body(CHANNEL, chunk.to_vec())));
    frames
}

/// A whole publish the way lapin sends one: each frame built as an `AMQPFrame` (names into
/// `ShortString`s, each body chunk copied into its frame) and serialised into `out`.
fn amq_encode_publish(out: &mut Vec<u8>, exchange: &str, routing_key: &str, body: &[u8]) {
    out.clear();
    let mut w = WriteContext::from(mem::take(out));
    w = gen_frame(&amq_publish_method(exchange, routing_key))(w).expect("amq-protocol encodes");
    w = gen_frame(&amq_header(body.len(), amq_basic::AMQPProperties::default()))(w).expect("amq-protocol encodes");
    for chunk in body.chunks(FRAME_MAX as usize - 8) {
        w = gen_frame(&AMQPFrame::Body(CHANNEL, chunk.to_vec()))(w).expect("amq-protocol encodes");
    }
    *out = w.into_inner().0;
}

/// Parses `count` frames off the front of `input` with amq-protocol. Each frame is looked
/// at in place, as [`lepus_decode`] does, so neither side pays for moving it around.
fn amq_parse(mut input: &[u8], count: usize) -> usize {
    for _ in 0..count {
        let result = parse_frame(input);
        match &result {
            Ok((rest, frame)) => {
                black_box(frame);
                input = rest;
            }
            Err(e) => panic!("amq-protocol failed to decode: {e:?}"),
        }
    }
    input.len()
}

fn amq_table(spec: &[(&'static str, Value)]) -> AmqTable {
    let mut table = AmqTable::default();
    for (key, value) in spec {
        table.insert(ShortString::from(*key), amq_value(value));
    }
    table
}

fn amq_value(value: &Value) -> AMQPValue {
    match value {
        Value::Bool(v) => AMQPValue::Boolean(*v),
        Value::I8(v) => AMQPValue::ShortShortInt(*v),
        Value::U8(v) => AMQPValue::ShortShortUInt(*v),
        Value::I16(v) => AMQPValue::ShortInt(*v),
        Value::U16(v) => AMQPValue::ShortUInt(*v),
        Value::I32(v) => AMQPValue::LongInt(*v),
        Value::U32(v) => AMQPValue::LongUInt(*v),
        Value::I64(v) => AMQPValue::LongLongInt(*v),
        Value::F32(v) => AMQPValue::Float(*v),
        Value::F64(v) => AMQPValue::Double(*v),
        Value::Decimal(scale, value) => AMQPValue::DecimalValue(DecimalValue { scale: *scale, value: *value }),
        Value::Str(s) => AMQPValue::LongString(LongString::from(*s)),
        Value::Bytes(b) => AMQPValue::ByteArray(ByteArray::from(*b)),
        Value::Timestamp(t) => AMQPValue::Timestamp(*t),
        Value::Array(values) => AMQPValue::FieldArray(AmqArray::from(values.iter().map(amq_value).collect::<Vec<_>>())),
        Value::Table(entries) => AMQPValue::FieldTable(amq_table(entries)),
    }
}

// ---------------------------------------------------------------------------------------
// lepus side and the groups
// ---------------------------------------------------------------------------------------

/// Decodes `count` frames off `buf` with lepus, looking at each in place.
fn lepus_decode(buf: &mut BytesMut, limits: &Limits, count: usize) -> usize {
    for _ in 0..count {
        let result = decode_frame(buf, limits);
        match &result {
            Ok(Some(frame)) => {
                black_box(frame);
            }
            other => panic!("lepus failed to decode: {other:?}"),
        }
    }
    buf.len()
}

/// Decodes every frame of `wire` from a refilled `buf` and returns them, after checking that
/// every body frame points into the buffer rather than being copied out of it.
fn lepus_decode_checked(buf: &mut BytesMut, wire: &[u8], limits: &Limits) -> Vec<Frame> {
    refill_bytes_mut(buf, wire);
    let region = address_range(buf);
    let mut frames = Vec::new();
    while let Some(frame) = decode_frame(buf, limits).expect("lepus decodes") {
        if let Frame::Body(_, body) = &frame {
            assert!(points_into(&region, body), "lepus copied a body frame out of the read buffer");
        }
        frames.push(frame);
    }
    assert!(buf.is_empty(), "lepus left {} bytes undecoded", buf.len());
    frames
}

/// Checks that `encode_publish_vectored` produces `wire` and passes `body` on as slices of
/// itself, not copies.
fn check_vectored(publish: &basic::Publish, body: &Bytes, wire: &[u8]) {
    let (mut buf, mut out) = (BytesMut::new(), Vec::new());
    encode_publish_vectored(&mut buf, CHANNEL, publish, &BasicProperties::default(), body, FRAME_MAX, &mut out)
        .expect("lepus encodes");
    assert_eq!(out.concat(), wire, "vectored and copying publish encodings differ");
    let region = address_range(body);
    let in_body: usize = out.iter().filter(|s| points_into(&region, s)).map(Bytes::len).sum();
    assert_eq!(in_body, body.len(), "encode_publish_vectored copied the body");
}

fn publish_encode(c: &mut Criterion, rows: &mut Vec<TableRow>) {
    let mut g = Group::new(c, "publish_encode");
    let publish = fixtures::publish().expect("fixture");
    let properties = BasicProperties::default();
    for size in SIZES {
        let body = fixtures::body(size);
        let wire = fixtures::publish_wire(&body).expect("fixture");
        let frames = amq_publish_frames(&body);
        let mut out = Vec::new();
        amq_gen(&mut out, &frames);
        assert_eq!(out, wire, "lepus and amq-protocol encode the publish differently");
        amq_encode_publish(&mut out, fixtures::EXCHANGE, fixtures::ROUTING_KEY, &body);
        assert_eq!(out, wire, "lepus and amq-protocol encode the publish differently");
        let vectored = size == 128 * 1024;
        if vectored {
            check_vectored(&publish, &body, &wire);
        }

        let mut buf = BytesMut::with_capacity(wire.len());
        let mut lepus = routine(|| {
            buf.clear();
            encode_publish(&mut buf, CHANNEL, &publish, &properties, &body, FRAME_MAX).expect("lepus encodes");
            buf.len()
        });
        let (mut vbuf, mut segments) = (BytesMut::with_capacity(256), Vec::with_capacity(8));
        let mut lepus_vectored = routine(|| {
            segments.clear();
            encode_publish_vectored(&mut vbuf, CHANNEL, &publish, &properties, &body, FRAME_MAX, &mut segments)
                .expect("lepus encodes");
            segments.len()
        });
        let mut out = Vec::with_capacity(wire.len());
        let mut amq = routine(|| {
            amq_encode_publish(&mut out, fixtures::EXCHANGE, fixtures::ROUTING_KEY, &body);
            out.len()
        });
        let mut gen_out = Vec::with_capacity(wire.len());
        let mut amq_gen_only = routine(|| {
            amq_gen(&mut gen_out, &frames);
            gen_out.len()
        });
        let p = size_label(size);
        if vectored {
            g.measure(
                &p,
                wire.len(),
                &mut [
                    (LEPUS, &mut lepus),
                    (LEPUS_VECTORED, &mut lepus_vectored),
                    (OTHER, &mut amq),
                    (OTHER_GEN_ONLY, &mut amq_gen_only),
                ],
            );
        } else {
            g.measure(
                &p,
                wire.len(),
                &mut [(LEPUS, &mut lepus), (OTHER, &mut amq), (OTHER_GEN_ONLY, &mut amq_gen_only)],
            );
        }

        let mut row = |label: String, lepus: &str, other: &str| {
            rows.push(TableRow {
                label,
                bytes: wire.len() as u64,
                lepus: g.id(lepus, &p),
                other: g.id(other, &p),
                baseline: None,
            });
        };
        row(format!("publish encode {p}"), LEPUS, OTHER);
        row(format!("publish encode {p} (amq gen only)"), LEPUS, OTHER_GEN_ONLY);
        if vectored {
            row(format!("publish encode {p} vectored"), LEPUS_VECTORED, OTHER);
        }
    }
    g.finish();
}

/// Benchmarks decoding all `count` frames of `wire` with both codecs, plus the refill
/// baseline, in group `g`; returns the table row.
fn decode_pair(g: &mut Group<'_>, label: String, p: &str, wire: &Bytes, count: usize) -> TableRow {
    let limits = fixtures::limits();
    let mut lbuf = BytesMut::with_capacity(wire.len());
    let mut lepus = routine(|| {
        refill_bytes_mut(&mut lbuf, wire);
        lepus_decode(&mut lbuf, &limits, count)
    });
    let mut abuf = Vec::with_capacity(wire.len());
    let mut amq = routine(|| {
        refill_vec(&mut abuf, wire);
        amq_parse(&abuf, count)
    });
    let mut rbuf = Vec::with_capacity(wire.len());
    let mut refill = routine(|| {
        refill_vec(&mut rbuf, wire);
        rbuf.len()
    });
    g.measure(p, wire.len(), &mut [(LEPUS, &mut lepus), (OTHER, &mut amq), (REFILL, &mut refill)]);
    TableRow {
        label,
        bytes: wire.len() as u64,
        lepus: g.id(LEPUS, p),
        other: g.id(OTHER, p),
        baseline: Some(g.id(REFILL, p)),
    }
}

/// Checks that amq-protocol parses all of `wire` as `count` frames.
fn check_amq_parses(wire: &[u8], count: usize) {
    assert_eq!(amq_parse(wire, count), 0, "amq-protocol left bytes undecoded");
}

fn publish_decode(c: &mut Criterion, rows: &mut Vec<TableRow>) {
    let mut g = Group::new(c, "publish_decode");
    let limits = fixtures::limits();
    for size in SIZES {
        let body = fixtures::body(size);
        let wire = fixtures::publish_wire(&body).expect("fixture");
        let mut buf = BytesMut::with_capacity(wire.len());
        let frames = lepus_decode_checked(&mut buf, &wire, &limits);
        assert!(matches!(frames.first(), Some(Frame::Method(CHANNEL, Method::BasicPublish(_)))));
        let bodies: Vec<u8> = frames
            .iter()
            .filter_map(|f| if let Frame::Body(_, b) = f { Some(b.to_vec()) } else { None })
            .flatten()
            .collect();
        assert_eq!(bodies, body, "lepus decoded another body");
        check_amq_parses(&wire, frames.len());
        let p = size_label(size);
        rows.push(decode_pair(&mut g, format!("publish decode {p}"), &p, &wire, frames.len()));
    }
    g.finish();
}

fn deliver_decode(c: &mut Criterion, rows: &mut Vec<TableRow>) {
    let mut g = Group::new(c, "deliver_decode");
    let limits = fixtures::limits();
    let body = fixtures::body(64);
    for with_properties in [false, true] {
        let wire = fixtures::deliver_wire(&body, with_properties).expect("fixture");
        let mut amq_wire = Vec::new();
        let properties = if with_properties {
            amq_basic::AMQPProperties::default()
                .with_content_type(fixtures::CONTENT_TYPE.into())
                .with_delivery_mode(fixtures::DELIVERY_MODE)
        } else {
            amq_basic::AMQPProperties::default()
        };
        let amq_deliver = AMQPFrame::Method(
            CHANNEL,
            AMQPClass::Basic(amq_basic::AMQPMethod::Deliver(amq_basic::Deliver {
                consumer_tag: fixtures::CONSUMER_TAG.into(),
                delivery_tag: fixtures::DELIVERY_TAG,
                redelivered: false,
                exchange: fixtures::EXCHANGE.into(),
                routing_key: fixtures::ROUTING_KEY.into(),
            })),
        );
        amq_gen(
            &mut amq_wire,
            &[amq_deliver, amq_header(body.len(), properties), AMQPFrame::Body(CHANNEL, body.to_vec())],
        );
        assert_eq!(amq_wire, wire, "lepus and amq-protocol encode the delivery differently");

        let mut buf = BytesMut::with_capacity(wire.len());
        let frames = lepus_decode_checked(&mut buf, &wire, &limits);
        let [Frame::Method(_, Method::BasicDeliver(deliver)), Frame::Header(_, header), Frame::Body(_, got)] =
            &frames[..]
        else {
            panic!("lepus decoded {frames:?}, not a delivery");
        };
        assert_eq!(
            (deliver, &header.properties, got),
            (
                &fixtures::deliver().expect("fixture"),
                &fixtures::deliver_properties(with_properties).expect("fixture"),
                &body
            )
        );
        check_amq_parses(&wire, 3);

        let param = if with_properties { "64B+props" } else { "64B" };
        rows.push(decode_pair(&mut g, format!("deliver decode {param}"), param, &wire, 3));
    }
    g.finish();
}

fn field_table(c: &mut Criterion, rows: &mut Vec<TableRow>) {
    let spec = fixtures::table_spec();
    let frame = fixtures::headers_frame(fixtures::lepus_table(&spec).expect("fixture"));
    let amq_frame = amq_header(0, amq_basic::AMQPProperties::default().with_headers(amq_table(&spec)));
    let mut wire = BytesMut::new();
    frame.encode(&mut wire).expect("lepus encodes");
    let wire = wire.freeze();
    let mut amq_wire = Vec::new();
    amq_gen(&mut amq_wire, [&amq_frame]);
    assert_eq!(amq_wire, wire, "lepus and amq-protocol encode the table differently");
    let p = "20-entries";

    let mut g = Group::new(c, "field_table_encode");
    let mut buf = BytesMut::with_capacity(wire.len());
    let mut lepus = routine(|| {
        buf.clear();
        frame.encode(&mut buf).expect("lepus encodes");
        buf.len()
    });
    let mut out = Vec::with_capacity(wire.len());
    let mut amq = routine(|| {
        amq_gen(&mut out, [&amq_frame]);
        out.len()
    });
    g.measure(p, wire.len(), &mut [(LEPUS, &mut lepus), (OTHER, &mut amq)]);
    rows.push(TableRow {
        label: "field table encode (20 entries)".to_owned(),
        bytes: wire.len() as u64,
        lepus: g.id(LEPUS, p),
        other: g.id(OTHER, p),
        baseline: None,
    });
    g.finish();

    let limits = fixtures::limits();
    let decoded = lepus_decode_checked(&mut BytesMut::new(), &wire, &limits);
    assert_eq!(decoded, [frame], "lepus decoded another table");
    check_amq_parses(&wire, 1);
    let mut g = Group::new(c, "field_table_decode");
    rows.push(decode_pair(&mut g, "field table decode (20 entries)".to_owned(), p, &wire, 1));
    g.finish();
}
