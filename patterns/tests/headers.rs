//! Headers routing against the real RabbitMQ: `x-match` all and any, presence-only
//! bindings, and `x-` headers left out unless asked for.

use std::collections::{BTreeMap, BTreeSet};

use lepus::{BasicProperties, Confirmation, FieldTable, FieldValue, PublishOptions, ReplyCode};

mod common;
use common::{Cleanup, Within, connect, unique};
use lepus_patterns::headers::{HeadersExchange, XMatch, header_table};

/// Subscribes each `(queue, x-match, headers)`, publishes each `(label, headers)`, and
/// returns the labels each queue received.
async fn route(
    bindings: &[(&str, XMatch, FieldTable)],
    messages: &[(&str, FieldTable)],
) -> BTreeMap<String, BTreeSet<String>> {
    let conn = connect().await;
    let name = unique("headers");
    let mut cleanup = Cleanup { queues: vec![], exchanges: vec![name.clone()] };
    let exchange = HeadersExchange::declare(&conn, &name).within("declaring the exchange").await.unwrap();
    let mut subscriptions = Vec::new();
    for (queue, x_match, headers) in bindings {
        let queue_name = format!("{name}.{queue}");
        cleanup.queues.push(queue_name.clone());
        let subscription =
            exchange.subscribe(&queue_name, *x_match, headers.clone()).within("subscribing").await.unwrap();
        subscriptions.push((*queue, subscription));
    }
    for (label, headers) in messages {
        let verdict = exchange.publish(headers.clone(), label.as_bytes().to_vec()).within("publishing").await.unwrap();
        assert_eq!(verdict, Confirmation::Ack);
    }
    let channel = conn.open_channel().within("opening a channel").await.unwrap();
    let mut routed = BTreeMap::new();
    for (queue, subscription) in subscriptions {
        let mut got = BTreeSet::new();
        while let Some((delivery, _)) =
            channel.basic_get(subscription.queue(), true).within("getting a message").await.unwrap()
        {
            let label = String::from_utf8(delivery.body.to_vec()).unwrap();
            assert!(got.insert(label.clone()), "{label} reached {queue} twice");
        }
        routed.insert(queue.to_owned(), got);
    }
    exchange.delete().within("deleting the exchange").await.unwrap();
    conn.close().within("closing").await.unwrap();
    routed
}

fn table(pairs: &[(&str, FieldValue)]) -> FieldTable {
    header_table(pairs.iter().map(|(k, v)| (*k, v.clone()))).unwrap()
}

fn s(v: &str) -> FieldValue {
    FieldValue::from(v)
}

fn expected(rows: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
    rows.iter().map(|(q, labels)| ((*q).to_owned(), labels.iter().map(|l| (*l).to_owned()).collect())).collect()
}

#[tokio::test]
async fn x_match_all_needs_every_header_and_any_needs_one() {
    let wanted = table(&[("format", s("pdf")), ("type", s("report"))]);
    let bindings = [("all", XMatch::All, wanted.clone()), ("any", XMatch::Any, wanted)];
    let messages = [
        ("pdf-report", table(&[("format", s("pdf")), ("type", s("report"))])),
        ("pdf-report-extra", table(&[("type", s("report")), ("format", s("pdf")), ("lang", s("en"))])),
        ("pdf-log", table(&[("format", s("pdf")), ("type", s("log"))])),
        ("report-only", table(&[("type", s("report"))])),
        ("zip", table(&[("format", s("zip"))])),
        ("no-headers", FieldTable::new()),
        ("case", table(&[("format", s("PDF")), ("Type", s("report"))])),
    ];
    let routed = route(&bindings, &messages).await;
    let want = expected(&[
        ("all", &["pdf-report", "pdf-report-extra"]),
        ("any", &["pdf-report", "pdf-report-extra", "pdf-log", "report-only"]),
    ]);
    assert_eq!(routed, want);
}

#[tokio::test]
async fn void_means_present_and_x_headers_only_count_with_x() {
    let bindings = [
        // Any value, as long as the header is there.
        ("has-tenant", XMatch::All, table(&[("tenant", FieldValue::Void)])),
        ("x-ignored", XMatch::All, table(&[("x-tenant", s("acme"))])),
        ("x-all", XMatch::AllWithX, table(&[("x-tenant", s("acme"))])),
        ("x-any", XMatch::AnyWithX, table(&[("x-tenant", s("acme")), ("format", s("pdf"))])),
        ("typed", XMatch::All, table(&[("pages", FieldValue::I32(12))])),
    ];
    let messages = [
        ("tenant-a", table(&[("tenant", s("a"))])),
        ("x-acme", table(&[("x-tenant", s("acme"))])),
        ("x-other", table(&[("x-tenant", s("other"))])),
        ("pdf", table(&[("format", s("pdf"))])),
        // Integers compare by value across widths: a 64-bit 12 matches a bound 32-bit 12.
        ("pages-12", table(&[("pages", FieldValue::I64(12))])),
        ("pages-13", table(&[("pages", FieldValue::I32(13))])),
        ("pages-text", table(&[("pages", s("12"))])),
    ];
    let routed = route(&bindings, &messages).await;
    let want = expected(&[
        ("has-tenant", &["tenant-a"]),
        // An `x-` binding header is ignored under plain `all`: nothing left to check, so
        // everything matches.
        ("x-ignored", &["tenant-a", "x-acme", "x-other", "pdf", "pages-12", "pages-13", "pages-text"]),
        ("x-all", &["x-acme"]),
        ("x-any", &["x-acme", "pdf"]),
        ("typed", &["pages-12"]),
    ]);
    assert_eq!(routed, want);
}

#[tokio::test]
async fn extra_bindings_and_unroutable_messages() {
    let conn = connect().await;
    let name = unique("headers.bind");
    let queue = format!("{name}.q");
    let _cleanup = Cleanup { queues: vec![queue.clone()], exchanges: vec![name.clone()] };
    let exchange = HeadersExchange::declare(&conn, &name).within("declaring the exchange").await.unwrap();
    let subscription =
        exchange.subscribe(&queue, XMatch::All, table(&[("format", s("pdf"))])).within("subscribing").await.unwrap();
    exchange.bind(&queue, XMatch::Any, &table(&[("urgent", FieldValue::Bool(true))])).within("binding").await.unwrap();
    for (headers, body) in [
        (table(&[("format", s("pdf"))]), "1"),
        (table(&[("urgent", FieldValue::Bool(true))]), "2"),
        (table(&[("format", s("txt"))]), "3"),
    ] {
        assert!(exchange.publish(headers, body.as_bytes().to_vec()).within("publishing").await.unwrap().is_ack());
    }
    assert_eq!(subscription.counts().within("the queue's counts").await.unwrap().message_count, 2);
    let options = PublishOptions {
        mandatory: true,
        properties: BasicProperties { headers: Some(table(&[("format", s("txt"))])), ..Default::default() },
    };
    match exchange.publish_with(&b"4"[..], options).within("publishing").await.unwrap() {
        Confirmation::Returned(returned) => assert_eq!(returned.reply_code, ReplyCode::NO_ROUTE),
        other => panic!("expected the message back, got {other:?}"),
    }
    conn.close().within("closing").await.unwrap();
}
