//! Inputs of the codec benchmarks, lepus side: the publish, the delivery and the field table
//! every codec under comparison encodes and decodes.
//!
//! The field table is described once, codec-neutrally, as [`Value`]s, so that each codec
//! builds the same table from it; its keys are in byte order, the order in which a codec
//! that keeps tables sorted writes them, so both encodings can be compared byte for byte.

use bytes::{Bytes, BytesMut};
use lepus_codec::{
    BasicProperties, ContentHeader, Decimal, EncodeError, FieldArray, FieldTable, FieldValue, Frame, Limits, ShortStr,
    encode_publish, method::basic,
};

/// The channel every frame travels on.
pub const CHANNEL: u16 = 1;
/// The negotiated `frame_max` (RabbitMQ's default).
pub const FRAME_MAX: u32 = 131_072;
/// Exchange of the publish and the delivery.
pub const EXCHANGE: &str = "events";
/// Routing key of the publish and the delivery.
pub const ROUTING_KEY: &str = "orders.eu.created";
/// A consumer tag as RabbitMQ generates them.
pub const CONSUMER_TAG: &str = "amq.ctag-x7Qp1m3VdSWkA0wB2yLh4g";
/// Delivery tag of the delivery.
pub const DELIVERY_TAG: u64 = 1_234_567;
/// `content-type` of the delivery with properties.
pub const CONTENT_TYPE: &str = "application/json";
/// `delivery-mode` of the delivery with properties (persistent).
pub const DELIVERY_MODE: u8 = 2;

/// Decoder limits of a connection tuned to [`FRAME_MAX`].
pub fn limits() -> Limits {
    Limits::default().tuned(FRAME_MAX, Limits::DEFAULT_CONTROL_FRAME_MAX)
}

/// A body of `len` bytes with a non-constant pattern.
pub fn body(len: usize) -> Bytes {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// The `basic.publish` to [`EXCHANGE`] with [`ROUTING_KEY`].
pub fn publish() -> Result<basic::Publish, EncodeError> {
    Ok(basic::Publish {
        exchange: ShortStr::from_static(EXCHANGE)?,
        routing_key: ShortStr::from_static(ROUTING_KEY)?,
        ..basic::Publish::default()
    })
}

/// A whole publish of `body` without properties, as lepus encodes it at [`FRAME_MAX`].
pub fn publish_wire(body: &[u8]) -> Result<Bytes, EncodeError> {
    let mut buf = BytesMut::new();
    encode_publish(&mut buf, CHANNEL, &publish()?, &BasicProperties::default(), body, FRAME_MAX)?;
    Ok(buf.freeze())
}

/// The `basic.deliver` of the delivery benchmark.
pub fn deliver() -> Result<basic::Deliver, EncodeError> {
    Ok(basic::Deliver {
        consumer_tag: ShortStr::from_static(CONSUMER_TAG)?,
        delivery_tag: DELIVERY_TAG,
        redelivered: false,
        exchange: ShortStr::from_static(EXCHANGE)?,
        routing_key: ShortStr::from_static(ROUTING_KEY)?,
    })
}

/// The properties of the delivery: none, or [`CONTENT_TYPE`] and [`DELIVERY_MODE`].
pub fn deliver_properties(with_properties: bool) -> Result<BasicProperties, EncodeError> {
    if !with_properties {
        return Ok(BasicProperties::default());
    }
    Ok(BasicProperties {
        content_type: Some(ShortStr::from_static(CONTENT_TYPE)?),
        delivery_mode: Some(DELIVERY_MODE),
        ..BasicProperties::default()
    })
}

/// A delivery as the broker sends it: `basic.deliver`, content header, one body frame.
pub fn deliver_wire(body: &Bytes, with_properties: bool) -> Result<Bytes, EncodeError> {
    let mut buf = BytesMut::new();
    Frame::Method(CHANNEL, deliver()?.into()).encode(&mut buf)?;
    let header = ContentHeader::new(body.len() as u64, deliver_properties(with_properties)?);
    Frame::Header(CHANNEL, header).encode(&mut buf)?;
    Frame::Body(CHANNEL, body.clone()).encode(&mut buf)?;
    Ok(buf.freeze())
}

/// A field value, codec-neutral: each codec maps it to its own type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `t`.
    Bool(bool),
    /// `b`.
    I8(i8),
    /// `B`.
    U8(u8),
    /// `s`.
    I16(i16),
    /// `u`.
    U16(u16),
    /// `I`.
    I32(i32),
    /// `i`.
    U32(u32),
    /// `l`.
    I64(i64),
    /// `f`.
    F32(f32),
    /// `d`.
    F64(f64),
    /// `D`: scale, unscaled value.
    Decimal(u8, u32),
    /// `S`.
    Str(&'static str),
    /// `x`.
    Bytes(&'static [u8]),
    /// `T`.
    Timestamp(u64),
    /// `A`.
    Array(Vec<Value>),
    /// `F`, keys in byte order.
    Table(Vec<(&'static str, Value)>),
}

/// The 20-entry table of the field-table benchmark, keys in byte order: strings, integers
/// of every width, booleans, floats, a decimal, a timestamp, a byte array, an array and a
/// nested table.
pub fn table_spec() -> Vec<(&'static str, Value)> {
    vec![
        ("amount", Value::Decimal(2, 123_456)),
        ("app-id", Value::Str("billing-service")),
        ("attempt", Value::U8(3)),
        ("compressed", Value::Bool(false)),
        ("content-language", Value::Str("en-GB")),
        ("correlation", Value::Str("7d0c3f0e-5d6b-4a4b-9a59-3c1f8a0d2e11")),
        ("created-at", Value::Timestamp(1_700_000_000)),
        ("delay-ms", Value::I32(1500)),
        ("durable", Value::Bool(true)),
        ("priority-hint", Value::I16(-4)),
        ("ratio", Value::F64(0.75)),
        ("region", Value::Str("eu-west-1")),
        (
            "retry",
            Value::Table(vec![
                ("count", Value::I32(2)),
                ("reason", Value::Str("timeout")),
                ("requeue", Value::Bool(true)),
            ]),
        ),
        ("route", Value::Array(vec![Value::Str("eu"), Value::Str("orders"), Value::I32(7), Value::Bool(true)])),
        ("score", Value::F32(1.5)),
        ("sequence", Value::U32(4_000_000_000)),
        ("shard", Value::U16(17)),
        ("signature", Value::Bytes(b"\x8f\x12\x00\xa4\x5e\x77\x01\xfe\x33\x9c\x4d\x02\xb6\xe1\x10\x6a")),
        ("trace", Value::I8(-1)),
        ("x-death-count", Value::I64(2)),
    ]
}

/// [`table_spec`] as a lepus `FieldTable`.
pub fn lepus_table(spec: &[(&'static str, Value)]) -> Result<FieldTable, EncodeError> {
    let mut table = FieldTable::new();
    for (key, value) in spec {
        table.push(ShortStr::from_static(key)?, lepus_value(value)?);
    }
    Ok(table)
}

fn lepus_value(value: &Value) -> Result<FieldValue, EncodeError> {
    Ok(match value {
        Value::Bool(v) => FieldValue::Bool(*v),
        Value::I8(v) => FieldValue::I8(*v),
        Value::U8(v) => FieldValue::U8(*v),
        Value::I16(v) => FieldValue::I16(*v),
        Value::U16(v) => FieldValue::U16(*v),
        Value::I32(v) => FieldValue::I32(*v),
        Value::U32(v) => FieldValue::U32(*v),
        Value::I64(v) => FieldValue::I64(*v),
        Value::F32(v) => FieldValue::F32(*v),
        Value::F64(v) => FieldValue::F64(*v),
        Value::Decimal(scale, value) => FieldValue::Decimal(Decimal { scale: *scale, value: *value }),
        Value::Str(s) => FieldValue::LongString(Bytes::from_static(s.as_bytes())),
        Value::Bytes(b) => FieldValue::ByteArray(Bytes::from_static(b)),
        Value::Timestamp(t) => FieldValue::Timestamp(*t),
        Value::Array(values) => FieldValue::Array(values.iter().map(lepus_value).collect::<Result<FieldArray, _>>()?),
        Value::Table(entries) => FieldValue::Table(lepus_table(entries)?),
    })
}

/// A content header frame carrying `table` as its `headers` property: how a field table
/// travels with every message. The field-table benchmarks encode and decode this frame.
pub fn headers_frame(table: FieldTable) -> Frame {
    let properties = BasicProperties { headers: Some(table), ..BasicProperties::default() };
    Frame::Header(CHANNEL, ContentHeader::new(0, properties))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_20_entries_in_byte_order() {
        let spec = table_spec();
        assert_eq!(spec.len(), 20);
        assert!(spec.windows(2).all(|w| w[0].0.as_bytes() < w[1].0.as_bytes()));
        assert_eq!(lepus_table(&spec).unwrap().len(), 20);
    }

    #[test]
    fn fixtures_decode() {
        let wire = publish_wire(&body(200_000)).unwrap();
        // Method frame (40), header frame (22), two body frames.
        assert_eq!(wire.len(), 40 + 22 + 200_000 + 2 * 8);
        let mut buf = BytesMut::from(&deliver_wire(&body(64), true).unwrap()[..]);
        let limits = limits();
        let mut frames = 0;
        while let Some(_frame) = lepus_codec::decode_frame(&mut buf, &limits).unwrap() {
            frames += 1;
        }
        assert_eq!(frames, 3);
    }
}
