//! Decoding and vectored encoding never copy a body: the `Bytes` handed out point into the
//! buffer the frames were read into (or, when encoding, into the caller's body).

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use lepus_codec::{
    BasicProperties, ContentHeader, FieldTable, Frame, Limits, Method, ShortStr, decode_frame, encode_publish_vectored,
    method::{basic, connection},
};

fn range_of(buf: &[u8]) -> Range<usize> {
    let start = buf.as_ptr() as usize;
    start..start + buf.len()
}

fn inside(range: &Range<usize>, b: &[u8]) -> bool {
    b.is_empty() || (range.contains(&(b.as_ptr() as usize)) && b.as_ptr() as usize + b.len() <= range.end)
}

#[test]
fn delivered_body_and_strings_point_into_the_read_buffer() {
    let mut wire = BytesMut::new();
    // A routing key longer than the inline limit (38 bytes) is shared with the frame;
    // shorter strings are copied inline, which costs less than reference counting.
    let long_key = "orders.europe.west.placed.priority.high.v2";
    let deliver = basic::Deliver {
        consumer_tag: ShortStr::from_static("ctag").unwrap(),
        delivery_tag: 9,
        exchange: ShortStr::from_static("amq.topic").unwrap(),
        routing_key: ShortStr::from_static(long_key).unwrap(),
        ..basic::Deliver::default()
    };
    let body = vec![0x78; 4000];
    Frame::Method(1, deliver.into()).encode(&mut wire).unwrap();
    Frame::Header(1, ContentHeader::new(body.len() as u64, BasicProperties::default())).encode(&mut wire).unwrap();
    Frame::Body(1, Bytes::from(body.clone())).encode(&mut wire).unwrap();

    let mut read_buf = BytesMut::with_capacity(wire.len());
    read_buf.extend_from_slice(&wire);
    let region = range_of(&read_buf);
    let limits = Limits::default();

    let Some(Frame::Method(1, Method::BasicDeliver(d))) = decode_frame(&mut read_buf, &limits).unwrap() else {
        panic!("deliver expected")
    };
    assert!(inside(&region, &d.routing_key), "a long short-string was copied");
    assert_eq!(d.routing_key, long_key);
    assert_eq!((d.consumer_tag.as_str(), d.exchange.as_str()), (Some("ctag"), Some("amq.topic")));
    assert!(matches!(decode_frame(&mut read_buf, &limits).unwrap(), Some(Frame::Header(1, _))));
    let Some(Frame::Body(1, got)) = decode_frame(&mut read_buf, &limits).unwrap() else { panic!("body expected") };
    assert_eq!(&got[..], &body[..]);
    assert!(inside(&region, &got), "the body was copied out of the read buffer");
}

#[test]
fn header_strings_over_the_inline_limit_and_tables_point_into_the_read_buffer() {
    // Method and header frames are read in place first; a field that has to share the
    // frame's memory makes the decoder split the frame off and read it again.
    let long_id = "correlation-7d0c3f0e-5d6b-4a4b-9a59-3c1f8a0d2e11";
    let mut headers = FieldTable::new();
    headers.insert("trace", "0af7651916cd43dd8448eb211c80319c").unwrap();
    let properties = BasicProperties {
        content_type: Some(ShortStr::from_static("application/json").unwrap()),
        headers: Some(headers.clone()),
        correlation_id: Some(ShortStr::from_static(long_id).unwrap()),
        ..BasicProperties::default()
    };
    let sent = ContentHeader::new(3, properties);
    let mut wire = BytesMut::new();
    Frame::Header(1, sent.clone()).encode(&mut wire).unwrap();
    let region = range_of(&wire);
    let Some(Frame::Header(1, got)) = decode_frame(&mut wire, &Limits::default()).unwrap() else {
        panic!("header expected")
    };
    assert!(wire.is_empty());
    assert_eq!(got, sent);
    let id = got.properties.correlation_id.as_ref().unwrap();
    assert!(inside(&region, id), "a long short-string property was copied");
    let trace = match got.properties.headers.as_ref().and_then(|h| h.get("trace")) {
        Some(lepus_codec::FieldValue::LongString(b)) => b.clone(),
        other => panic!("{other:?}"),
    };
    assert!(inside(&region, &trace), "a header table's long string was copied");
}

#[test]
fn long_strings_and_table_values_point_into_the_read_buffer() {
    let mut props = FieldTable::new();
    props.insert("product", "RabbitMQ").unwrap();
    let start = connection::Start {
        server_properties: props,
        mechanisms: Bytes::from_static(b"PLAIN AMQPLAIN"),
        ..connection::Start::default()
    };
    let mut wire = BytesMut::new();
    Frame::Method(0, Method::from(start)).encode(&mut wire).unwrap();
    let region = range_of(&wire);
    let Some(Frame::Method(0, Method::ConnectionStart(s))) = decode_frame(&mut wire, &Limits::default()).unwrap()
    else {
        panic!("start expected")
    };
    assert!(inside(&region, &s.mechanisms));
    let product = match s.server_properties.get("product") {
        Some(lepus_codec::FieldValue::LongString(b)) => b.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(&product[..], b"RabbitMQ");
    assert!(inside(&region, &product), "a table's long string was copied");
}

#[test]
fn vectored_publish_hands_back_the_body_itself() {
    let body = Bytes::from(vec![7u8; 300_000]);
    let body_region = range_of(&body);
    let (mut buf, mut segments) = (BytesMut::new(), Vec::new());
    encode_publish_vectored(
        &mut buf,
        1,
        &basic::Publish::default(),
        &BasicProperties::default(),
        &body,
        131_072,
        &mut segments,
    )
    .unwrap();
    let body_bytes: usize = segments.iter().filter(|s| inside(&body_region, s)).map(Bytes::len).sum();
    assert_eq!(body_bytes, body.len(), "every body byte goes out as a slice of the caller's Bytes");
    // Envelopes are small: 3 body frames need 3 headers and 3 end octets beside the prefix.
    let envelope_bytes: usize = segments.iter().filter(|s| !inside(&body_region, s)).map(Bytes::len).sum();
    assert!(envelope_bytes < 100, "{envelope_bytes}");
}
