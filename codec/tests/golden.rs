//! Frames captured from a real RabbitMQ (see `fixtures/golden/README.md`) decode to the
//! values the capture script recorded in `expected.json`, and re-encode to the same bytes.

use std::path::PathBuf;

use bytes::BytesMut;
use lepus_codec::{ContentHeader, FieldTable, FieldValue, Frame, Limits, Method, decode_frame};
use serde_json::{Value, json};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(golden_dir().join("expected.json")).unwrap()).unwrap()
}

/// A field value in the capture script's notation: `{"type": letter, "value": ...}`.
fn value_json(v: &FieldValue) -> Value {
    let value = match v {
        FieldValue::Bool(b) => json!(b),
        FieldValue::LongString(s) => json!(String::from_utf8_lossy(s)),
        FieldValue::Table(t) => table_json(t),
        other => json!(other.as_i64().unwrap_or_else(|| panic!("add {other:?} to the golden test"))),
    };
    json!({ "type": char::from(v.type_letter()).to_string(), "value": value })
}

fn table_json(t: &FieldTable) -> Value {
    Value::Array(t.iter().map(|(k, v)| json!([k.to_string(), value_json(v)])).collect())
}

fn text(b: &[u8]) -> Value {
    json!(String::from_utf8_lossy(b))
}

/// The arguments of the methods RabbitMQ sent us, in `expected.json`'s shape.
fn arguments_json(m: &Method) -> Value {
    match m {
        Method::ConnectionStart(s) => json!({
            "version_major": s.version_major, "version_minor": s.version_minor,
            "server_properties": table_json(&s.server_properties),
            "mechanisms": text(&s.mechanisms), "locales": text(&s.locales),
        }),
        Method::ConnectionTune(t) => json!({
            "channel_max": t.channel_max, "frame_max": t.frame_max, "heartbeat": t.heartbeat,
        }),
        Method::BasicDeliver(d) => json!({
            "consumer_tag": d.consumer_tag.to_string(), "delivery_tag": d.delivery_tag,
            "redelivered": d.redelivered, "exchange": d.exchange.to_string(), "routing_key": d.routing_key.to_string(),
        }),
        Method::BasicReturn(r) => json!({
            "reply_code": r.reply_code.0, "reply_text": r.reply_text.to_string(),
            "exchange": r.exchange.to_string(), "routing_key": r.routing_key.to_string(),
        }),
        Method::BasicAck(a) => json!({ "delivery_tag": a.delivery_tag, "multiple": a.multiple }),
        other => panic!("add {} to the golden test", other.name()),
    }
}

fn header_json(h: &ContentHeader) -> Value {
    let p = &h.properties;
    let mut props = serde_json::Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            props.insert(k.to_owned(), v);
        }
    };
    put("content_type", p.content_type.as_ref().map(|s| json!(s.to_string())));
    put("content_encoding", p.content_encoding.as_ref().map(|s| json!(s.to_string())));
    put("headers", p.headers.as_ref().map(table_json));
    put("delivery_mode", p.delivery_mode.map(|v| json!(v)));
    put("priority", p.priority.map(|v| json!(v)));
    put("correlation_id", p.correlation_id.as_ref().map(|s| json!(s.to_string())));
    put("reply_to", p.reply_to.as_ref().map(|s| json!(s.to_string())));
    put("expiration", p.expiration.as_ref().map(|s| json!(s.to_string())));
    put("message_id", p.message_id.as_ref().map(|s| json!(s.to_string())));
    put("timestamp", p.timestamp.map(|v| json!(v)));
    put("type", p.kind.as_ref().map(|s| json!(s.to_string())));
    put("user_id", p.user_id.as_ref().map(|s| json!(s.to_string())));
    put("app_id", p.app_id.as_ref().map(|s| json!(s.to_string())));
    json!({
        "class_id": h.class_id, "weight": h.weight, "body_size": h.body_size,
        "property_flags": p.flags(), "properties": props,
    })
}

#[test]
fn golden_frames_decode_to_the_recorded_values_and_reencode_identically() {
    let expected = expected();
    let files = expected["files"].as_object().unwrap();
    assert_eq!(files.len(), 10, "every captured frame is checked");
    let limits = Limits::default().tuned(131_072, Limits::DEFAULT_CONTROL_FRAME_MAX);
    for (file, want) in files {
        let bytes = std::fs::read(golden_dir().join(file)).unwrap();
        assert_eq!(bytes.len() as u64, want["frame_size"].as_u64().unwrap(), "{file}: size");
        let mut buf = BytesMut::from(&bytes[..]);
        let frame = decode_frame(&mut buf, &limits).unwrap().unwrap_or_else(|| panic!("{file}: incomplete"));
        assert!(buf.is_empty(), "{file}: the whole frame was consumed");
        assert_eq!(u64::from(frame.channel()), want["channel"].as_u64().unwrap(), "{file}: channel");

        match &frame {
            Frame::Method(_, m) => {
                assert_eq!(u64::from(m.class_id()), want["class_id"].as_u64().unwrap(), "{file}");
                assert_eq!(u64::from(m.method_id()), want["method_id"].as_u64().unwrap(), "{file}");
                assert_eq!(arguments_json(m), want["arguments"], "{file}: arguments");
            }
            Frame::Header(_, h) => {
                let got = header_json(h);
                for key in ["class_id", "weight", "body_size", "property_flags", "properties"] {
                    assert_eq!(got[key], want[key], "{file}: {key}");
                }
            }
            Frame::Body(_, body) => assert_eq!(hex(body), want["body_hex"].as_str().unwrap(), "{file}: body"),
            Frame::Heartbeat => panic!("{file}: no heartbeat was captured"),
        }

        let mut again = BytesMut::new();
        frame.encode(&mut again).unwrap();
        assert_eq!(&again[..], &bytes[..], "{file}: re-encoding is byte-identical");
    }
}

#[test]
fn golden_ack_multiple_has_the_multiple_bit() {
    let bytes = std::fs::read(golden_dir().join("basic_ack_multiple.bin")).unwrap();
    let frame = decode_frame(&mut BytesMut::from(&bytes[..]), &Limits::default()).unwrap().unwrap();
    let Frame::Method(1, Method::BasicAck(ack)) = frame else { panic!("not an ack: {frame:?}") };
    assert!(ack.multiple);
    assert!(ack.delivery_tag > 1);
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}
