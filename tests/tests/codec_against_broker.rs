//! The codec against the real RabbitMQ: what we encode the broker accepts, what it sends
//! back we decode, byte for byte. Needs the broker on 127.0.0.1:5672 (CI starts it).

use lepus::codec::{BasicProperties, FieldTable, FieldValue, ShortStr};
use lepus_tests::{broker_addr, raw::RawSession};

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("lepus.test.{prefix}.{}.{nanos}", std::process::id())
}

/// R1: at `frame_max` 4096, bodies of 0, 1, 4088 (one full frame), 4089 (one byte over),
/// 40960 and 5 MiB go through the broker and come back byte-identical.
#[test]
fn r1_bodies_across_frame_boundaries_arrive_byte_identical() {
    let mut s = RawSession::open(&broker_addr(), 4096).unwrap();
    assert_eq!(s.frame_max, 4096);
    let q = unique("r1");
    s.declare_queue(&q).unwrap();
    for size in [0usize, 1, 4088, 4089, 40960, 5 << 20] {
        // A pattern that changes every byte, so a misplaced frame boundary shows.
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        s.publish(&q, &BasicProperties::default(), &body).unwrap();
        let got = s.get(&q).unwrap().unwrap_or_else(|| panic!("{size}-byte message missing"));
        assert_eq!(got.header.body_size, size as u64);
        assert!(got.body[..] == body[..], "{size}-byte body differs");
    }
    s.delete_queue(&q).unwrap();
    s.close().unwrap();
}

/// Every basic property and a table with each field type the broker stores survive the
/// trip through RabbitMQ (it re-encodes headers itself).
#[test]
fn properties_and_header_tables_survive_the_broker() {
    let mut s = RawSession::open(&broker_addr(), 131_072).unwrap();
    let q = unique("props");
    s.declare_queue(&q).unwrap();
    let mut nested = FieldTable::new();
    nested.insert("inner", 7i32).unwrap();
    let mut headers = FieldTable::new();
    headers.insert("bool", true).unwrap();
    headers.insert("i8", -5i8).unwrap();
    headers.insert("i16", -300i16).unwrap();
    headers.insert("i32", -70_000i32).unwrap();
    headers.insert("i64", -5_000_000_000i64).unwrap();
    headers.insert("f64", 2.5f64).unwrap();
    headers.insert("string", "héllo").unwrap();
    headers.insert("table", nested).unwrap();
    headers
        .insert("array", FieldValue::Array([FieldValue::I32(1), FieldValue::from("two")].into_iter().collect()))
        .unwrap();
    headers.insert("time", FieldValue::Timestamp(1_700_000_000)).unwrap();
    headers.insert("void", FieldValue::Void).unwrap();
    let s_ = |v: &str| Some(ShortStr::try_from(v).unwrap());
    let props = BasicProperties {
        content_type: s_("application/json"),
        content_encoding: s_("identity"),
        headers: Some(headers),
        delivery_mode: Some(2),
        priority: Some(3),
        correlation_id: s_("corr"),
        reply_to: s_("replies"),
        expiration: s_("60000"),
        message_id: s_("m-1"),
        timestamp: Some(1_700_000_000),
        kind: s_("order.placed"),
        user_id: s_("guest"),
        app_id: s_("lepus-tests"),
        cluster_id: None,
    };
    s.publish(&q, &props, b"{}").unwrap();
    let got = s.get(&q).unwrap().expect("message");
    assert_eq!(got.header.properties, props);
    s.delete_queue(&q).unwrap();
    s.close().unwrap();
}

/// The broker identifies itself in connection.start and we decode its properties.
#[test]
fn handshake_reads_server_properties() {
    let s = RawSession::open(&broker_addr(), 0).unwrap();
    assert!(s.server_product().starts_with("RabbitMQ "), "{}", s.server_product());
    let caps = s.server_properties.get("capabilities").and_then(FieldValue::as_table).expect("capabilities");
    assert_eq!(caps.get("publisher_confirms").and_then(FieldValue::as_bool), Some(true));
    assert_eq!(s.frame_max, 131_072, "RabbitMQ 3.10 offers 131072 and we proposed no limit");
    s.close().unwrap();
}
