//! The client against the real RabbitMQ, one test per group of operations: exchanges,
//! queues, QoS, consuming, getting, acknowledging and recovering. Each test asserts what the
//! broker did (routing, counts, redeliveries, channel errors), not only that the call
//! returned. Publishing (transactions, confirms, returns) is in `broker_publishing.rs`, the
//! connection itself in `broker_connection.rs`, queue arguments in
//! `broker_queue_arguments.rs`.
//!
//! Queues are exclusive wherever the test allows it, so the broker removes them even if a
//! test fails half-way; everything else is deleted at the end of its test.

use std::time::Duration;

use lepus::{
    BasicProperties, Channel, Confirmation, ConsumeOptions, Consumer, Delivery, Error, ExchangeDeclareOptions,
    ExchangeKind, FieldTable, PublishOptions, QueueDeleteOptions, ReplyCode,
};
use lepus_tests::bounded::{Bounded, eventually, within};
use lepus_tests::util::{
    assert_channel_error, connect, exclusive, exclusive_queue, passive, ready, string_table, unique,
};

/// The most any single expected event may take.
const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

async fn next(consumer: &mut Consumer) -> Delivery {
    match within(WAIT, "a delivery", consumer.next()).await {
        Some(Ok(d)) => d,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

async fn assert_quiet(consumer: &mut Consumer) {
    if let Ok(item) = tokio::time::timeout(QUIET, consumer.next()).await {
        panic!("expected no delivery within {QUIET:?}, got {item:?}");
    }
}

/// Waits (bounded) until `queue` holds `n` ready messages.
async fn eventually_ready(channel: &Channel, queue: &str, n: u32) {
    eventually(WAIT, format!("{queue} to hold {n} ready"), || async { ready(channel, queue).await == n }).await;
}

/// Publishes on a confirm-mode channel, mandatory, and returns the broker's verdict.
async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    key: &str,
    body: &str,
    properties: BasicProperties,
) -> Confirmation {
    let options = PublishOptions { mandatory: true, properties };
    let confirm =
        channel.basic_publish(exchange, key, body.to_owned().into_bytes(), options).within(WAIT).await.unwrap();
    within(WAIT, "a confirm", confirm).await.unwrap()
}

/// On a confirm-mode channel: did a mandatory publish reach a queue (Ack) or come back
/// unroutable (312)?
async fn routed(channel: &Channel, exchange: &str, key: &str, properties: BasicProperties) -> bool {
    match publish_confirmed(channel, exchange, key, key, properties).await {
        Confirmation::Ack => true,
        Confirmation::Returned(r) => {
            assert_eq!(r.reply_code, ReplyCode::NO_ROUTE);
            false
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn exchange_kinds_route_by_their_rules() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let q = exclusive_queue(&ch, "kinds").await;
    let none = BasicProperties::default;
    let with_headers = |pairs: &[(&str, &str)]| BasicProperties { headers: Some(string_table(pairs)), ..none() };

    for kind in [ExchangeKind::Direct, ExchangeKind::Fanout, ExchangeKind::Topic, ExchangeKind::Headers] {
        let x = unique(kind.as_str());
        ch.exchange_declare(&x, kind.clone(), ExchangeDeclareOptions::default(), FieldTable::new())
            .within(WAIT)
            .await
            .unwrap();
        match kind {
            ExchangeKind::Direct => {
                ch.queue_bind(&q, &x, "k", FieldTable::new()).within(WAIT).await.unwrap();
                assert!(routed(&ch, &x, "k", none()).await);
                assert!(!routed(&ch, &x, "other", none()).await);
            }
            ExchangeKind::Fanout => {
                ch.queue_bind(&q, &x, "ignored", FieldTable::new()).within(WAIT).await.unwrap();
                assert!(routed(&ch, &x, "anything", none()).await);
            }
            ExchangeKind::Topic => {
                ch.queue_bind(&q, &x, "a.*", FieldTable::new()).within(WAIT).await.unwrap();
                assert!(routed(&ch, &x, "a.b", none()).await);
                assert!(!routed(&ch, &x, "a.b.c", none()).await, "* matches exactly one word");
            }
            ExchangeKind::Headers => {
                let args = string_table(&[("x-match", "all"), ("h", "v")]);
                ch.queue_bind(&q, &x, "", args).within(WAIT).await.unwrap();
                assert!(routed(&ch, &x, "", with_headers(&[("h", "v")])).await);
                assert!(!routed(&ch, &x, "", with_headers(&[("h", "w")])).await);
            }
            ExchangeKind::Custom(_) => unreachable!(),
        }
        ch.exchange_delete(&x, false).within(WAIT).await.unwrap();
    }
    // One message per kind reached the queue, and only those.
    assert_eq!(ch.queue_purge(&q).within(WAIT).await.unwrap(), 4);
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn exchange_flags_durable_auto_delete_internal_and_passive() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    let q = exclusive_queue(&ch, "xflags").await;
    let opts = |durable, auto_delete, internal| ExchangeDeclareOptions {
        durable,
        auto_delete,
        internal,
        ..Default::default()
    };
    let passive = ExchangeDeclareOptions { passive: true, ..Default::default() };

    // durable: the broker remembers it, so redeclaring as transient is refused (406).
    let durable = unique("durable");
    ch.exchange_declare(&durable, ExchangeKind::Direct, opts(true, false, false), FieldTable::new())
        .within(WAIT)
        .await
        .unwrap();
    let side = conn.open_channel().within(WAIT).await.unwrap();
    let err = side
        .exchange_declare(&durable, ExchangeKind::Direct, opts(false, false, false), FieldTable::new())
        .within(WAIT)
        .await
        .unwrap_err();
    assert_channel_error(&err, ReplyCode::PRECONDITION_FAILED);
    assert!(err.to_string().contains("durable"), "{err}");
    assert!(!side.is_open());
    ch.exchange_declare(&durable, ExchangeKind::Direct, passive, FieldTable::new()).within(WAIT).await.unwrap();
    ch.exchange_delete(&durable, false).within(WAIT).await.unwrap();

    // auto-delete: it goes when its last binding goes.
    let auto = unique("autodelete");
    ch.exchange_declare(&auto, ExchangeKind::Direct, opts(false, true, false), FieldTable::new())
        .within(WAIT)
        .await
        .unwrap();
    ch.queue_bind(&q, &auto, "k", FieldTable::new()).within(WAIT).await.unwrap();
    ch.queue_unbind(&q, &auto, "k", FieldTable::new()).within(WAIT).await.unwrap();
    let probe = conn.open_channel().within(WAIT).await.unwrap();
    let err =
        probe.exchange_declare(&auto, ExchangeKind::Direct, passive, FieldTable::new()).within(WAIT).await.unwrap_err();
    assert_channel_error(&err, ReplyCode::NOT_FOUND);

    // internal: publishing to it directly is refused (403) — and closes only that channel.
    let internal = unique("internal");
    ch.exchange_declare(&internal, ExchangeKind::Fanout, opts(false, false, true), FieldTable::new())
        .within(WAIT)
        .await
        .unwrap();
    let publisher = conn.open_channel().within(WAIT).await.unwrap();
    publisher.confirm_select().within(WAIT).await.unwrap();
    let confirm =
        publisher.basic_publish(&internal, "", &b"x"[..], PublishOptions::default()).within(WAIT).await.unwrap();
    let err = within(WAIT, "the confirm of a publish to an internal exchange", confirm).await.unwrap_err();
    assert_channel_error(&err, ReplyCode::ACCESS_REFUSED);
    assert!(err.to_string().contains("internal"), "{err}");
    ch.exchange_delete(&internal, false).within(WAIT).await.unwrap();

    // passive on a missing exchange: 404 on that channel only.
    let probe = conn.open_channel().within(WAIT).await.unwrap();
    let err = probe
        .exchange_declare(&unique("missing"), ExchangeKind::Direct, passive, FieldTable::new())
        .within(WAIT)
        .await
        .unwrap_err();
    assert_channel_error(&err, ReplyCode::NOT_FOUND);
    assert!(!probe.is_open());
    assert_eq!(probe.close_reason().and_then(|e| e.reply_code()), Some(ReplyCode::NOT_FOUND));
    assert!(ch.is_open() && conn.is_open());
    ch.exchange_declare("amq.direct", ExchangeKind::Direct, passive, FieldTable::new()).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn exchange_delete_if_unused_refuses_while_bound() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    let q = exclusive_queue(&ch, "xdelete").await;
    let x = unique("xdelete");
    ch.exchange_declare(&x, ExchangeKind::Direct, ExchangeDeclareOptions::default(), FieldTable::new())
        .within(WAIT)
        .await
        .unwrap();
    ch.queue_bind(&q, &x, "k", FieldTable::new()).within(WAIT).await.unwrap();

    let side = conn.open_channel().within(WAIT).await.unwrap();
    let err = side.exchange_delete(&x, true).within(WAIT).await.unwrap_err();
    assert_channel_error(&err, ReplyCode::PRECONDITION_FAILED);

    ch.queue_unbind(&q, &x, "k", FieldTable::new()).within(WAIT).await.unwrap();
    ch.exchange_delete(&x, true).within(WAIT).await.unwrap();
    let probe = conn.open_channel().within(WAIT).await.unwrap();
    let passive = ExchangeDeclareOptions { passive: true, ..Default::default() };
    let err =
        probe.exchange_declare(&x, ExchangeKind::Direct, passive, FieldTable::new()).within(WAIT).await.unwrap_err();
    assert_channel_error(&err, ReplyCode::NOT_FOUND);
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn exchange_to_exchange_binding_routes_until_unbound() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let q = exclusive_queue(&ch, "e2e").await;
    let source = unique("e2e.source");
    let destination = unique("e2e.destination");
    ch.exchange_declare(&source, ExchangeKind::Direct, ExchangeDeclareOptions::default(), FieldTable::new())
        .within(WAIT)
        .await
        .unwrap();
    // Internal: reachable only through the exchange binding.
    let internal = ExchangeDeclareOptions { internal: true, ..Default::default() };
    ch.exchange_declare(&destination, ExchangeKind::Fanout, internal, FieldTable::new()).within(WAIT).await.unwrap();
    ch.queue_bind(&q, &destination, "", FieldTable::new()).within(WAIT).await.unwrap();

    assert!(!routed(&ch, &source, "k", BasicProperties::default()).await, "not bound yet");
    ch.exchange_bind(&destination, &source, "k", FieldTable::new()).within(WAIT).await.unwrap();
    assert!(routed(&ch, &source, "k", BasicProperties::default()).await);
    assert!(!routed(&ch, &source, "other", BasicProperties::default()).await, "the binding key applies");
    let (d, left) = ch.basic_get(&q, true).within(WAIT).await.unwrap().expect("the message routed through the binding");
    assert_eq!((&d.body[..], &d.exchange[..], left), (&b"k"[..], source.as_bytes(), 0));

    ch.exchange_unbind(&destination, &source, "k", FieldTable::new()).within(WAIT).await.unwrap();
    assert!(!routed(&ch, &source, "k", BasicProperties::default()).await, "unbound");
    assert!(ch.basic_get(&q, true).within(WAIT).await.unwrap().is_none());

    ch.exchange_delete(&source, false).within(WAIT).await.unwrap();
    ch.exchange_delete(&destination, false).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn queue_declare_named_server_named_and_counts() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();

    let name = unique("declare");
    let declared = ch.queue_declare(&name, exclusive(), FieldTable::new()).within(WAIT).await.unwrap();
    assert_eq!((declared.name.as_str(), declared.message_count, declared.consumer_count), (name.as_str(), 0, 0));

    let server_named = ch.queue_declare("", exclusive(), FieldTable::new()).within(WAIT).await.unwrap();
    assert!(server_named.name.starts_with("amq.gen-"), "{server_named:?}");
    assert!(server_named.name.len() > "amq.gen-".len());

    for i in 0..5 {
        assert_eq!(
            publish_confirmed(&ch, "", &name, &i.to_string(), BasicProperties::default()).await,
            Confirmation::Ack
        );
    }
    let again = ch.queue_declare(&name, exclusive(), FieldTable::new()).within(WAIT).await.unwrap();
    assert_eq!((again.message_count, again.consumer_count), (5, 0), "a redeclare reports the counts");
    let checked = ch.queue_declare(&name, passive(), FieldTable::new()).within(WAIT).await.unwrap();
    assert_eq!((checked.name.as_str(), checked.message_count), (name.as_str(), 5));

    let _consumer = ch.basic_consume(&server_named.name, ConsumeOptions::default()).within(WAIT).await.unwrap();
    let counted = ch.queue_declare(&server_named.name, passive(), FieldTable::new()).within(WAIT).await.unwrap();
    assert_eq!((counted.message_count, counted.consumer_count), (0, 1));

    assert_eq!(ch.queue_delete(&name, QueueDeleteOptions::default()).within(WAIT).await.unwrap(), 5);
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn queue_bind_and_unbind_change_routing() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let q = exclusive_queue(&ch, "bind").await;
    let x = unique("bind");
    ch.exchange_declare(&x, ExchangeKind::Direct, ExchangeDeclareOptions::default(), FieldTable::new())
        .within(WAIT)
        .await
        .unwrap();
    let props = BasicProperties::default;

    ch.queue_bind(&q, &x, "k1", FieldTable::new()).within(WAIT).await.unwrap();
    assert!(routed(&ch, &x, "k1", props()).await);
    assert!(!routed(&ch, &x, "k2", props()).await);
    ch.queue_bind(&q, &x, "k2", FieldTable::new()).within(WAIT).await.unwrap();
    assert!(routed(&ch, &x, "k2", props()).await);
    ch.queue_unbind(&q, &x, "k1", FieldTable::new()).within(WAIT).await.unwrap();
    assert!(!routed(&ch, &x, "k1", props()).await, "unbound key");
    assert!(routed(&ch, &x, "k2", props()).await, "the other binding stays");
    assert_eq!(ch.queue_purge(&q).within(WAIT).await.unwrap(), 3);

    ch.exchange_delete(&x, false).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn queue_purge_returns_how_many_it_removed() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let q = exclusive_queue(&ch, "purge").await;
    for i in 0..7 {
        publish_confirmed(&ch, "", &q, &i.to_string(), BasicProperties::default()).await;
    }
    assert_eq!(ch.queue_purge(&q).within(WAIT).await.unwrap(), 7);
    assert!(ch.basic_get(&q, true).within(WAIT).await.unwrap().is_none());
    assert_eq!(ch.queue_purge(&q).within(WAIT).await.unwrap(), 0);
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn queue_delete_if_empty_and_if_unused_refuse_with_406() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let q = exclusive_queue(&ch, "qdelete").await;
    publish_confirmed(&ch, "", &q, "m", BasicProperties::default()).await;

    let side = conn.open_channel().within(WAIT).await.unwrap();
    let err = side
        .queue_delete(&q, QueueDeleteOptions { if_empty: true, ..Default::default() })
        .within(WAIT)
        .await
        .unwrap_err();
    assert_channel_error(&err, ReplyCode::PRECONDITION_FAILED);

    let consuming = conn.open_channel().within(WAIT).await.unwrap();
    let mut consumer = consuming.basic_consume(&q, ConsumeOptions::default()).within(WAIT).await.unwrap();
    let side = conn.open_channel().within(WAIT).await.unwrap();
    let err = side
        .queue_delete(&q, QueueDeleteOptions { if_unused: true, ..Default::default() })
        .within(WAIT)
        .await
        .unwrap_err();
    assert_channel_error(&err, ReplyCode::PRECONDITION_FAILED);
    // The consumer did not notice.
    let d = next(&mut consumer).await;
    assert_eq!(&d.body[..], b"m");
    consumer.cancel().within(WAIT).await.unwrap();
    // Closing the consuming channel requeues its unacknowledged message.
    drop(d);
    consuming.close().within(WAIT).await.unwrap();
    eventually_ready(&ch, &q, 1).await;

    assert_eq!(
        ch.queue_delete(&q, QueueDeleteOptions { if_unused: true, ..Default::default() }).within(WAIT).await.unwrap(),
        1
    );
    let probe = conn.open_channel().within(WAIT).await.unwrap();
    assert_channel_error(
        &probe.queue_declare(&q, passive(), FieldTable::new()).within(WAIT).await.unwrap_err(),
        ReplyCode::NOT_FOUND,
    );
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn basic_qos_limits_unacknowledged_deliveries() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let q1 = exclusive_queue(&ch, "qos1").await;
    let q2 = exclusive_queue(&ch, "qos2").await;
    for i in 0..10 {
        publish_confirmed(&ch, "", &q1, &i.to_string(), BasicProperties::default()).await;
        publish_confirmed(&ch, "", &q2, &i.to_string(), BasicProperties::default()).await;
    }

    // Per consumer: two unacknowledged at a time.
    let per_consumer = conn.open_channel().within(WAIT).await.unwrap();
    per_consumer.basic_qos(2, false).within(WAIT).await.unwrap();
    let mut consumer = per_consumer.basic_consume(&q1, ConsumeOptions::default()).within(WAIT).await.unwrap();
    let first = next(&mut consumer).await;
    let second = next(&mut consumer).await;
    assert_eq!((&first.body[..], &second.body[..]), (&b"0"[..], &b"1"[..]));
    assert_quiet(&mut consumer).await;
    first.ack().within(WAIT).await.unwrap();
    assert_eq!(&next(&mut consumer).await.body[..], b"2", "one ack makes room for one more");
    assert_quiet(&mut consumer).await;
    per_consumer.close().within(WAIT).await.unwrap();

    // Global (per channel): three unacknowledged across two consumers.
    let global = conn.open_channel().within(WAIT).await.unwrap();
    global.basic_qos(3, true).within(WAIT).await.unwrap();
    let mut c1 = global.basic_consume(&q1, ConsumeOptions::default()).within(WAIT).await.unwrap();
    let mut c2 = global.basic_consume(&q2, ConsumeOptions::default()).within(WAIT).await.unwrap();
    let mut received = Vec::new();
    loop {
        let item = tokio::time::timeout(QUIET, async {
            tokio::select! {
                d = c1.next() => d,
                d = c2.next() => d,
            }
        })
        .await;
        match item {
            Ok(Some(Ok(d))) => received.push(d),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    assert_eq!(received.len(), 3, "the channel-wide prefetch caps both consumers together");
    global.close().within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn exclusive_consumer_refuses_a_second_one_with_403() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let q = exclusive_queue(&ch, "exclusive-consumer").await;
    let owner = conn.open_channel().within(WAIT).await.unwrap();
    let mut consumer =
        owner.basic_consume(&q, ConsumeOptions { exclusive: true, ..Default::default() }).within(WAIT).await.unwrap();

    let other = conn.open_channel().within(WAIT).await.unwrap();
    let err = other.basic_consume(&q, ConsumeOptions::default()).within(WAIT).await.unwrap_err();
    assert_channel_error(&err, ReplyCode::ACCESS_REFUSED);
    assert!(!other.is_open());

    // The exclusive consumer carries on.
    publish_confirmed(&ch, "", &q, "still mine", BasicProperties::default()).await;
    let d = next(&mut consumer).await;
    assert_eq!(&d.body[..], b"still mine");
    d.ack().within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn no_ack_consumer_removes_messages_on_delivery() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let q = exclusive_queue(&ch, "noack").await;
    for i in 0..3 {
        publish_confirmed(&ch, "", &q, &i.to_string(), BasicProperties::default()).await;
    }
    let consuming = conn.open_channel().within(WAIT).await.unwrap();
    let mut consumer =
        consuming.basic_consume(&q, ConsumeOptions { no_ack: true, ..Default::default() }).within(WAIT).await.unwrap();
    let mut deliveries = Vec::new();
    for i in 0..3 {
        let d = next(&mut consumer).await;
        assert_eq!(d.body, i.to_string().as_bytes());
        deliveries.push(d);
    }
    assert!(
        matches!(deliveries[0].ack().within(WAIT).await, Err(Error::InvalidOperation(_))),
        "nothing to acknowledge"
    );
    // Closing the channel requeues nothing: the broker forgot them on delivery.
    consuming.close().within(WAIT).await.unwrap();
    assert_eq!(ready(&ch, &q).await, 0);
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn consumer_priority_prefers_the_higher_x_priority() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let q = exclusive_queue(&ch, "consumer-priority").await;
    let mut args = FieldTable::new();
    args.insert("x-priority", 10i32).unwrap();
    let high_ch = conn.open_channel().within(WAIT).await.unwrap();
    let low_ch = conn.open_channel().within(WAIT).await.unwrap();
    // The low one subscribes first, so plain round-robin would favour it.
    let mut low = low_ch.basic_consume(&q, ConsumeOptions::default()).within(WAIT).await.unwrap();
    let mut high =
        high_ch.basic_consume(&q, ConsumeOptions { arguments: args, ..Default::default() }).within(WAIT).await.unwrap();
    for i in 0..20 {
        publish_confirmed(&ch, "", &q, &i.to_string(), BasicProperties::default()).await;
    }
    for i in 0..20 {
        let d = next(&mut high).await;
        assert_eq!(d.body, i.to_string().as_bytes());
        d.ack().within(WAIT).await.unwrap();
    }
    assert_quiet(&mut low).await;

    // With the high-priority consumer gone, the low one gets the next message.
    high.cancel().within(WAIT).await.unwrap();
    publish_confirmed(&ch, "", &q, "for low", BasicProperties::default()).await;
    assert_eq!(&next(&mut low).await.body[..], b"for low");
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn cancel_ends_the_stream_and_stops_deliveries() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let q = exclusive_queue(&ch, "cancel").await;
    let tag = "lepus-test-tag";
    let mut consumer = ch
        .basic_consume(&q, ConsumeOptions { consumer_tag: tag.to_owned(), ..Default::default() })
        .within(WAIT)
        .await
        .unwrap();
    assert_eq!(consumer.tag(), tag);
    let mut generated =
        ch.basic_consume(&q, ConsumeOptions { no_ack: true, ..Default::default() }).within(WAIT).await.unwrap();
    assert!(!generated.tag().is_empty() && generated.tag() != tag, "{}", generated.tag());
    generated.cancel().within(WAIT).await.unwrap();
    assert!(within(WAIT, "the end of the stream", generated.next()).await.is_none());

    publish_confirmed(&ch, "", &q, "before", BasicProperties::default()).await;
    let d = next(&mut consumer).await;
    assert_eq!(d.consumer_tag, tag);
    d.ack().within(WAIT).await.unwrap();
    consumer.cancel().within(WAIT).await.unwrap();
    assert!(within(WAIT, "the end of the stream", consumer.next()).await.is_none());
    assert!(consumer.cancel().within(WAIT).await.is_ok(), "cancelling twice is harmless");

    publish_confirmed(&ch, "", &q, "after", BasicProperties::default()).await;
    assert_eq!(ready(&ch, &q).await, 1, "nobody consumes after the cancel");
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn basic_get_returns_messages_with_the_remaining_count_then_none() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let q = exclusive_queue(&ch, "get").await;
    assert!(ch.basic_get(&q, false).within(WAIT).await.unwrap().is_none(), "empty queue");
    let props = BasicProperties { message_id: Some("id-0".try_into().unwrap()), ..Default::default() };
    publish_confirmed(&ch, "", &q, "0", props).await;
    for i in 1..3 {
        publish_confirmed(&ch, "", &q, &i.to_string(), BasicProperties::default()).await;
    }
    for i in 0..3u32 {
        let (d, left) = ch.basic_get(&q, false).within(WAIT).await.unwrap().expect("a message");
        assert_eq!(d.body, i.to_string().as_bytes());
        assert_eq!(left, 2 - i);
        assert!(!d.redelivered);
        assert_eq!(d.routing_key, q.as_str());
        assert!(d.consumer_tag.is_empty());
        if i == 0 {
            assert_eq!(d.properties.message_id.as_ref().map(|s| &s[..]), Some(&b"id-0"[..]));
        }
        d.ack().within(WAIT).await.unwrap();
    }
    assert!(ch.basic_get(&q, false).within(WAIT).await.unwrap().is_none());
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn ack_nack_reject_and_ack_multiple_settle_what_they_say() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let q = exclusive_queue(&ch, "settle").await;
    let publish = |body: &'static str| publish_confirmed(&ch, "", &q, body, BasicProperties::default());

    // nack with requeue: back in the queue, flagged redelivered.
    publish("a").await;
    let (d, _) = ch.basic_get(&q, false).within(WAIT).await.unwrap().unwrap();
    assert!(!d.redelivered);
    d.nack(true).within(WAIT).await.unwrap();
    let (d, _) = within(WAIT, "the requeued message", ch.basic_get(&q, false)).await.unwrap().expect("requeued");
    assert!(d.redelivered);
    assert_eq!(&d.body[..], b"a");
    // reject without requeue: gone.
    d.reject(false).within(WAIT).await.unwrap();
    assert!(ch.basic_get(&q, false).within(WAIT).await.unwrap().is_none());

    // ack_multiple settles every earlier delivery of the channel too.
    let getter = conn.open_channel().within(WAIT).await.unwrap();
    for body in ["m1", "m2", "m3"] {
        publish(body).await;
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(getter.basic_get(&q, false).within(WAIT).await.unwrap().unwrap().0);
    }
    got[2].ack_multiple().within(WAIT).await.unwrap();
    getter.close().within(WAIT).await.unwrap();
    assert_eq!(ready(&ch, &q).await, 0, "all three were acknowledged");

    // A single ack settles only its own: closing the channel requeues the other.
    let getter = conn.open_channel().within(WAIT).await.unwrap();
    for body in ["s1", "s2"] {
        publish(body).await;
    }
    let (first, _) = getter.basic_get(&q, false).within(WAIT).await.unwrap().unwrap();
    let (_second, _) = getter.basic_get(&q, false).within(WAIT).await.unwrap().unwrap();
    first.ack().within(WAIT).await.unwrap();
    getter.close().within(WAIT).await.unwrap();
    eventually_ready(&ch, &q, 1).await;

    // The channel-level forms, by tag.
    let getter = conn.open_channel().within(WAIT).await.unwrap();
    publish("t2").await;
    let (a, _) = getter.basic_get(&q, false).within(WAIT).await.unwrap().unwrap();
    let (b, _) = getter.basic_get(&q, false).within(WAIT).await.unwrap().unwrap();
    assert_eq!((&a.body[..], &b.body[..]), (&b"s2"[..], &b"t2"[..]));
    getter.basic_nack(a.delivery_tag, false, true).within(WAIT).await.unwrap();
    getter.basic_reject(b.delivery_tag, false).within(WAIT).await.unwrap();
    let (again, _) = within(WAIT, "the nacked message", getter.basic_get(&q, false)).await.unwrap().expect("requeued");
    assert_eq!((&again.body[..], again.redelivered), (&b"s2"[..], true));
    getter.basic_ack(again.delivery_tag, false).within(WAIT).await.unwrap();
    getter.close().within(WAIT).await.unwrap();
    assert_eq!(ready(&ch, &q).await, 0);
    conn.close().within(WAIT).await.unwrap();
}

/// A delivery settles once: a second ack/nack/reject, or one of a delivery an earlier
/// `multiple` ack or nack covered, is refused locally with `AlreadySettled`. Sent, RabbitMQ
/// would close the channel with 406 (shown first with the by-tag form, which does send).
#[tokio::test]
async fn a_delivery_settles_once_and_a_second_settlement_is_never_sent() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let q = exclusive_queue(&ch, "once").await;
    for body in ["d1", "d2", "d3", "d4", "d5", "d6"] {
        publish_confirmed(&ch, "", &q, body, BasicProperties::default()).await;
    }

    // What a double ack does on the wire: the broker closes the channel with 406.
    let raw = conn.open_channel().within(WAIT).await.unwrap();
    let (d, _) = raw.basic_get(&q, false).within(WAIT).await.unwrap().unwrap();
    raw.basic_ack(d.delivery_tag, false).within(WAIT).await.unwrap();
    raw.basic_ack(d.delivery_tag, false).within(WAIT).await.unwrap();
    let closed = raw.closed(WAIT).within(WAIT).await.expect("the broker closes the channel");
    assert_eq!(closed.reply_code(), Some(ReplyCode::PRECONDITION_FAILED), "{closed:?}");

    let getter = conn.open_channel().within(WAIT).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(getter.basic_get(&q, false).within(WAIT).await.unwrap().unwrap().0);
    }
    let [d2, d3, d4, d5, d6] = <[Delivery; 5]>::try_from(got).unwrap();
    assert_eq!(&d2.body[..], b"d2");
    assert!(!d2.is_settled());

    // Twice the same settlement, then each other kind.
    d2.ack().within(WAIT).await.unwrap();
    assert!(d2.is_settled());
    for second in [
        d2.ack().within(WAIT).await,
        d2.nack(true).within(WAIT).await,
        d2.reject(false).within(WAIT).await,
        d2.ack_multiple().within(WAIT).await,
    ] {
        assert!(matches!(second, Err(Error::AlreadySettled(tag)) if tag == d2.delivery_tag), "{second:?}");
    }
    // A multiple nack covers the earlier unsettled ones: they are settled without a call.
    d4.nack_multiple(false).within(WAIT).await.unwrap();
    assert!(d3.is_settled() && d4.is_settled() && !d5.is_settled());
    assert!(matches!(d3.ack().within(WAIT).await, Err(Error::AlreadySettled(_))));
    // The by-tag multiple form counts too.
    getter.basic_ack(d5.delivery_tag, true).within(WAIT).await.unwrap();
    assert!(matches!(d5.reject(true).within(WAIT).await, Err(Error::AlreadySettled(_))));
    // Concurrent settlements of one delivery: exactly one is sent.
    let (a, b) = tokio::join!(d6.ack(), d6.ack());
    assert_eq!(u8::from(a.is_ok()) + u8::from(b.is_ok()), 1, "{a:?} {b:?}");

    // Had any second settlement reached the broker, the channel would be closed by now: a
    // round trip on it is answered after every ack sent before it.
    getter.queue_declare(&q, passive(), Default::default()).within(WAIT).await.unwrap();
    assert!(getter.is_open());
    getter.close().within(WAIT).await.unwrap();
    // d1 was acked through `raw` before its 406; d2..d6 are acked or dropped (nack without
    // requeue): nothing went back to the queue.
    assert_eq!(ready(&ch, &q).await, 0);
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn basic_recover_redelivers_unacknowledged_messages() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let q = exclusive_queue(&ch, "recover").await;
    let consuming = conn.open_channel().within(WAIT).await.unwrap();
    let mut consumer = consuming.basic_consume(&q, ConsumeOptions::default()).within(WAIT).await.unwrap();
    publish_confirmed(&ch, "", &q, "once more", BasicProperties::default()).await;
    let first = next(&mut consumer).await;
    assert!(!first.redelivered);
    consuming.basic_recover(true).within(WAIT).await.unwrap();
    let again = next(&mut consumer).await;
    assert_eq!((&again.body[..], again.redelivered), (&b"once more"[..], true));
    again.ack().within(WAIT).await.unwrap();
    assert_quiet(&mut consumer).await;
    consuming.close().within(WAIT).await.unwrap();
    assert_eq!(ready(&ch, &q).await, 0);

    // RabbitMQ does not implement recover without requeue: a 540 connection error, typed.
    let other = connect().await;
    let err = other.open_channel().within(WAIT).await.unwrap().basic_recover(false).within(WAIT).await.unwrap_err();
    assert_eq!(err.reply_code(), Some(ReplyCode::NOT_IMPLEMENTED), "{err}");
    assert!(matches!(err, Error::ConnectionClosed(_)), "{err:?}");
    assert_eq!(within(WAIT, "the close", other.closed()).await.reply_code(), Some(ReplyCode::NOT_IMPLEMENTED));
    conn.close().within(WAIT).await.unwrap();
}
