//! Checks the codec's tables against RabbitMQ's machine-readable AMQP 0-9-1 definition
//! (`../shared/spec/amqp-rabbitmq-0.9.1.json`): every class id, method id, argument name,
//! type and order, the 14 basic properties and their flag bits, and the constants.

use std::{collections::HashMap, path::PathBuf};

use lepus_codec::{
    BasicProperties, FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, Limits, Method, ReplyCode,
};
use serde_json::Value;

/// A method's name and its (argument, type) list, as the codec declares them.
type MethodEntry<'a> = (&'a str, &'a [(&'a str, &'a str)]);

fn spec() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/spec/amqp-rabbitmq-0.9.1.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).expect("the spec is valid JSON")
}

/// The spec's domain names resolved to wire types (`exchange-name` -> `shortstr`).
fn domains(spec: &Value) -> HashMap<String, String> {
    spec["domains"]
        .as_array()
        .expect("domains")
        .iter()
        .map(|d| (d[0].as_str().unwrap().to_owned(), d[1].as_str().unwrap().to_owned()))
        .collect()
}

/// Rust field names differ from the spec's only by `_` for `-`, and `type` (a keyword)
/// which is `kind`.
fn rust_name(spec_name: &str) -> String {
    match spec_name {
        "type" => "kind".to_owned(),
        other => other.replace('-', "_"),
    }
}

#[test]
fn every_spec_method_is_in_the_codec_with_the_same_arguments() {
    let spec = spec();
    let domains = domains(&spec);
    let ours: HashMap<(u16, u16), MethodEntry<'_>> =
        Method::ALL.iter().map(|&(c, m, name, args)| ((c, m), (name, args))).collect();
    let mut checked = 0;
    for class in spec["classes"].as_array().unwrap() {
        let class_name = class["name"].as_str().unwrap();
        let class_id = u16::try_from(class["id"].as_u64().unwrap()).unwrap();
        for method in class["methods"].as_array().unwrap() {
            let method_name = method["name"].as_str().unwrap();
            let method_id = u16::try_from(method["id"].as_u64().unwrap()).unwrap();
            let full = format!("{class_name}.{method_name}");
            let (name, args) = ours
                .get(&(class_id, method_id))
                .unwrap_or_else(|| panic!("{full} ({class_id},{method_id}) is missing from the codec"));
            assert_eq!(*name, full, "name of ({class_id},{method_id})");
            let expected: Vec<(String, String)> = method["arguments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    let ty = a["type"]
                        .as_str()
                        .map_or_else(|| domains[a["domain"].as_str().unwrap()].clone(), str::to_owned);
                    (rust_name(a["name"].as_str().unwrap()), ty)
                })
                .collect();
            let actual: Vec<(String, String)> = args.iter().map(|&(n, t)| (n.to_owned(), t.to_owned())).collect();
            assert_eq!(actual, expected, "arguments of {full}");
            checked += 1;
        }
    }
    assert_eq!(checked, Method::ALL.len(), "the codec knows methods the spec does not");
    assert_eq!(checked, 66);
}

#[test]
fn basic_properties_match_the_spec_in_order_type_and_flag_bit() {
    let spec = spec();
    let basic = spec["classes"].as_array().unwrap().iter().find(|c| c["name"] == "basic").unwrap();
    let expected: Vec<(String, String, u16)> = basic["properties"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        // The first property is flag bit 15, the next bit 14, and so on.
        .map(|(i, p)| {
            (rust_name(p["name"].as_str().unwrap()), p["type"].as_str().unwrap().to_owned(), 1u16 << (15 - i))
        })
        .collect();
    let actual: Vec<(String, String, u16)> =
        BasicProperties::SPEC.iter().map(|&(n, t, bit)| (n.to_owned(), t.to_owned(), bit)).collect();
    assert_eq!(actual.len(), 14);
    assert_eq!(actual, expected);
}

#[test]
fn constants_match_the_spec() {
    let spec = spec();
    for constant in spec["constants"].as_array().unwrap() {
        let name = constant["name"].as_str().unwrap();
        let value = constant["value"].as_u64().unwrap();
        match name {
            "FRAME-METHOD" => assert_eq!(u64::from(FRAME_METHOD), value),
            "FRAME-HEADER" => assert_eq!(u64::from(FRAME_HEADER), value),
            "FRAME-BODY" => assert_eq!(u64::from(FRAME_BODY), value),
            "FRAME-HEARTBEAT" => assert_eq!(u64::from(FRAME_HEARTBEAT), value),
            "FRAME-END" => assert_eq!(u64::from(FRAME_END), value),
            "FRAME-MIN-SIZE" => assert_eq!(u64::from(Limits::FRAME_MIN_SIZE), value),
            reply => {
                let code = ReplyCode(u16::try_from(value).unwrap());
                assert_eq!(code.name(), Some(reply.replace('-', "_").as_str()), "name of {value}");
                let hard = constant["class"].as_str() == Some("hard-error");
                assert_eq!(code.is_hard(), hard, "{reply} hard/soft");
            }
        }
    }
}
