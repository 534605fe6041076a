//! `QueueArguments` against the real RabbitMQ: every option is accepted (and remembered:
//! redeclaring with another value is refused), and each one does what it says — TTLs
//! expire, length limits drop or refuse, priorities overtake, rejected messages are
//! dead-lettered with `x-death`, a single active consumer gets everything.

use std::time::{Duration, Instant};

use lepus::{
    BasicProperties, Channel, Confirmation, ConsumeOptions, Consumer, Delivery, ExchangeDeclareOptions, ExchangeKind,
    FieldTable, FieldValue, Overflow, PublishOptions, QueueArguments, QueueDeclareOptions, QueueDeleteOptions,
    QueueType, ReplyCode,
};
use lepus_tests::bounded::{Bounded, within};
use lepus_tests::util::{assert_channel_error, connect, exclusive, passive, ready, unique};

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

async fn publish(channel: &Channel, queue: &str, body: &str, properties: BasicProperties) -> Confirmation {
    let options = PublishOptions { mandatory: true, properties };
    let confirm = channel.basic_publish("", queue, body.to_owned().into_bytes(), options).within(WAIT).await.unwrap();
    within(WAIT, "a confirm", confirm).await.unwrap()
}

/// The bodies `basic.get` finds in `queue`, in order, until it is empty.
async fn drain(channel: &Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some((d, _)) = channel.basic_get(queue, true).within(WAIT).await.unwrap() {
        bodies.push(String::from_utf8(d.body.to_vec()).unwrap());
    }
    bodies
}

/// Polls `basic.get` (bounded) until `queue` yields a message.
async fn get_eventually(channel: &Channel, queue: &str) -> Delivery {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some((d, _)) = channel.basic_get(queue, true).within(WAIT).await.unwrap() {
            return d;
        }
        assert!(Instant::now() < deadline, "nothing arrived in {queue}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_option_is_accepted_and_remembered() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    let q = unique("all-arguments");
    let all = || {
        QueueArguments::new()
            .message_ttl(Duration::from_secs(90))
            .expires(Duration::from_secs(90))
            .max_length(1000)
            .max_length_bytes(1 << 20)
            .overflow(Overflow::RejectPublishDlx)
            .dead_letter_exchange("amq.direct")
            .dead_letter_routing_key("dead")
            .max_priority(5)
            .queue_type(QueueType::Classic)
            .single_active_consumer(true)
            .raw("x-queue-mode", "lazy")
    };
    ch.queue_declare(&q, exclusive(), all().build().unwrap()).within(WAIT).await.unwrap();
    // The same arguments again: equivalent, accepted.
    ch.queue_declare(&q, exclusive(), all().into()).within(WAIT).await.unwrap();

    // Each one was stored: a redeclare that changes only it is refused, naming it.
    let changes: Vec<(&str, QueueArguments)> = vec![
        ("x-message-ttl", all().message_ttl(Duration::from_secs(91))),
        ("x-expires", all().expires(Duration::from_secs(91))),
        ("x-max-length", all().max_length(1001)),
        ("x-max-length-bytes", all().max_length_bytes(2 << 20)),
        ("x-overflow", all().overflow(Overflow::DropHead)),
        ("x-dead-letter-exchange", all().dead_letter_exchange("amq.fanout")),
        ("x-dead-letter-routing-key", all().dead_letter_routing_key("other")),
        ("x-max-priority", all().max_priority(6)),
        ("x-queue-type", all().queue_type(QueueType::Quorum)),
        ("x-single-active-consumer", all().single_active_consumer(false)),
        ("x-queue-mode", all().raw("x-queue-mode", "default")),
    ];
    for (key, changed) in changes {
        let side = conn.open_channel().within(WAIT).await.unwrap();
        let err = side.queue_declare(&q, exclusive(), changed.build().unwrap()).within(WAIT).await.unwrap_err();
        assert_channel_error(&err, ReplyCode::PRECONDITION_FAILED);
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
    for overflow in [Overflow::DropHead, Overflow::RejectPublish] {
        let args = QueueArguments::new().overflow(overflow).build().unwrap();
        ch.queue_declare(&unique("overflow"), exclusive(), args).within(WAIT).await.unwrap();
    }
    // What the broker refuses, `build` refuses first; unchecked, the broker says 406.
    let zero = QueueArguments::new().expires(Duration::ZERO);
    assert!(zero.clone().build().is_err());
    let side = conn.open_channel().within(WAIT).await.unwrap();
    let err = side.queue_declare(&unique("zero-expires"), exclusive(), zero.into()).within(WAIT).await.unwrap_err();
    assert_channel_error(&err, ReplyCode::PRECONDITION_FAILED);
    assert!(ch.is_open());
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn quorum_and_stream_queues_declare() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };

    let quorum = unique("quorum");
    // x-expires is a safety net: if the test fails before the delete, the queue still goes.
    let args = |kind| {
        QueueArguments::new()
            .queue_type(kind)
            .expires(Duration::from_secs(90))
            .max_length(100)
            .overflow(Overflow::RejectPublish)
            .dead_letter_exchange("")
            .single_active_consumer(true)
    };
    ch.queue_declare(&quorum, durable, args(QueueType::Quorum).build().unwrap()).within(WAIT).await.unwrap();
    assert_eq!(publish(&ch, &quorum, "replicated", BasicProperties::default()).await, Confirmation::Ack);
    // basic.get is refused on a quorum queue with a single active consumer (405): consume.
    let mut consumer = ch.basic_consume(&quorum, ConsumeOptions::default()).within(WAIT).await.unwrap();
    let d = next(&mut consumer).await;
    assert_eq!(&d.body[..], b"replicated");
    d.ack().within(WAIT).await.unwrap();
    consumer.cancel().within(WAIT).await.unwrap();
    let side = conn.open_channel().within(WAIT).await.unwrap();
    let err =
        side.queue_declare(&quorum, durable, args(QueueType::Classic).build().unwrap()).within(WAIT).await.unwrap_err();
    assert_channel_error(&err, ReplyCode::PRECONDITION_FAILED);
    assert!(err.to_string().contains("x-queue-type"), "{err}");
    assert_eq!(ch.queue_delete(&quorum, QueueDeleteOptions::default()).within(WAIT).await.unwrap(), 0);

    let stream = unique("stream");
    let args = QueueArguments::new().queue_type(QueueType::Stream).max_length_bytes(10 << 20).build().unwrap();
    ch.queue_declare(&stream, durable, args).within(WAIT).await.unwrap();
    assert_eq!(publish(&ch, &stream, "logged", BasicProperties::default()).await, Confirmation::Ack);
    ch.queue_delete(&stream, QueueDeleteOptions::default()).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn message_ttl_expires_messages() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let short = unique("ttl");
    let args = QueueArguments::new().message_ttl(Duration::from_millis(200)).build().unwrap();
    ch.queue_declare(&short, exclusive(), args).within(WAIT).await.unwrap();
    let control = ch.queue_declare(&unique("no-ttl"), exclusive(), FieldTable::new()).within(WAIT).await.unwrap().name;

    let published = Instant::now();
    publish(&ch, &short, "fleeting", BasicProperties::default()).await;
    publish(&ch, &control, "lasting", BasicProperties::default()).await;
    assert_eq!(ready(&ch, &short).await, 1, "there before its TTL");
    let deadline = published + Duration::from_secs(1);
    while ready(&ch, &short).await != 0 {
        assert!(Instant::now() < deadline, "a 200 ms TTL message still there after 1 s");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(published.elapsed() >= Duration::from_millis(150), "expired early: {:?}", published.elapsed());
    assert_eq!(ready(&ch, &control).await, 1, "without a TTL it stays");
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn expires_deletes_an_unused_queue() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    let q = unique("expires");
    let args = QueueArguments::new().expires(Duration::from_millis(300)).build().unwrap();
    ch.queue_declare(&q, exclusive(), args).within(WAIT).await.unwrap();
    // A declare (even a passive one) counts as use and restarts the timer, so look less
    // often than the expiry.
    let deadline = Instant::now() + WAIT;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let probe = conn.open_channel().within(WAIT).await.unwrap();
        match probe.queue_declare(&q, passive(), FieldTable::new()).within(WAIT).await {
            Err(err) => {
                assert_channel_error(&err, ReplyCode::NOT_FOUND);
                break;
            }
            Ok(_) => assert!(Instant::now() < deadline, "the unused queue was never deleted"),
        }
    }
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn max_length_drop_head_keeps_the_newest() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let by_count = unique("max-length");
    let args = QueueArguments::new().max_length(2).overflow(Overflow::DropHead).build().unwrap();
    ch.queue_declare(&by_count, exclusive(), args).within(WAIT).await.unwrap();
    for body in ["1", "2", "3"] {
        assert_eq!(publish(&ch, &by_count, body, BasicProperties::default()).await, Confirmation::Ack);
    }
    assert_eq!(drain(&ch, &by_count).await, ["2", "3"]);

    let by_bytes = unique("max-length-bytes");
    let args = QueueArguments::new().max_length_bytes(10).build().unwrap();
    ch.queue_declare(&by_bytes, exclusive(), args).within(WAIT).await.unwrap();
    for body in ["aaaaaa", "bbbbbb"] {
        publish(&ch, &by_bytes, body, BasicProperties::default()).await;
    }
    assert_eq!(drain(&ch, &by_bytes).await, ["bbbbbb"], "12 bytes do not fit in 10: the oldest goes");
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn overflow_reject_publish_nacks_and_reject_publish_dlx_dead_letters() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let q = unique("reject-publish");
    let args = QueueArguments::new().max_length(1).overflow(Overflow::RejectPublish).build().unwrap();
    ch.queue_declare(&q, exclusive(), args).within(WAIT).await.unwrap();
    assert_eq!(publish(&ch, &q, "first", BasicProperties::default()).await, Confirmation::Ack);
    assert_eq!(publish(&ch, &q, "second", BasicProperties::default()).await, Confirmation::Nack);
    assert_eq!(drain(&ch, &q).await, ["first"], "the oldest stays, the newest was refused");

    let dead =
        ch.queue_declare(&unique("overflow-dead"), exclusive(), FieldTable::new()).within(WAIT).await.unwrap().name;
    let q = unique("reject-publish-dlx");
    let args = QueueArguments::new()
        .max_length(1)
        .overflow(Overflow::RejectPublishDlx)
        .dead_letter_exchange("")
        .dead_letter_routing_key(&dead)
        .build()
        .unwrap();
    ch.queue_declare(&q, exclusive(), args).within(WAIT).await.unwrap();
    assert_eq!(publish(&ch, &q, "first", BasicProperties::default()).await, Confirmation::Ack);
    assert_eq!(publish(&ch, &q, "second", BasicProperties::default()).await, Confirmation::Nack);
    assert_eq!(&get_eventually(&ch, &dead).await.body[..], b"second");
    assert_eq!(drain(&ch, &q).await, ["first"]);
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn max_priority_lets_a_high_priority_message_overtake() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let q = unique("priority");
    ch.queue_declare(&q, exclusive(), QueueArguments::new().max_priority(10).build().unwrap())
        .within(WAIT)
        .await
        .unwrap();
    let priority = |p| BasicProperties { priority: Some(p), ..Default::default() };
    for body in ["low1", "low2", "low3"] {
        publish(&ch, &q, body, priority(1)).await;
    }
    publish(&ch, &q, "high", priority(9)).await;
    assert_eq!(drain(&ch, &q).await, ["high", "low1", "low2", "low3"]);

    // Without x-max-priority the same publishes keep their order.
    let plain =
        ch.queue_declare(&unique("no-priority"), exclusive(), FieldTable::new()).within(WAIT).await.unwrap().name;
    publish(&ch, &plain, "low", priority(1)).await;
    publish(&ch, &plain, "high", priority(9)).await;
    assert_eq!(drain(&ch, &plain).await, ["low", "high"]);
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn dead_letter_exchange_receives_rejected_messages_with_x_death() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let dlx = unique("dlx");
    ch.exchange_declare(&dlx, ExchangeKind::Direct, ExchangeDeclareOptions::default(), FieldTable::new())
        .within(WAIT)
        .await
        .unwrap();
    let dead = ch.queue_declare(&unique("dead"), exclusive(), FieldTable::new()).within(WAIT).await.unwrap().name;
    ch.queue_bind(&dead, &dlx, "dead", FieldTable::new()).within(WAIT).await.unwrap();
    let q = unique("dead-lettering");
    let args = QueueArguments::new().dead_letter_exchange(&dlx).dead_letter_routing_key("dead").build().unwrap();
    ch.queue_declare(&q, exclusive(), args).within(WAIT).await.unwrap();

    publish(&ch, &q, "unwanted", BasicProperties::default()).await;
    let (d, _) = ch.basic_get(&q, false).within(WAIT).await.unwrap().expect("the message");
    d.reject(false).within(WAIT).await.unwrap();

    let dead_letter = get_eventually(&ch, &dead).await;
    assert_eq!(&dead_letter.body[..], b"unwanted");
    assert_eq!(dead_letter.exchange, dlx.as_str());
    assert_eq!(dead_letter.routing_key, "dead", "the dead-letter routing key replaced the original");
    let headers = dead_letter.properties.headers.as_ref().expect("headers");
    let deaths = headers.get("x-death").and_then(FieldValue::as_array).expect("an x-death array");
    let death = deaths.0.first().and_then(FieldValue::as_table).expect("one x-death entry");
    assert_eq!(death.get("reason").and_then(FieldValue::as_str), Some("rejected"));
    assert_eq!(death.get("queue").and_then(FieldValue::as_str), Some(q.as_str()));
    assert_eq!(death.get("exchange").and_then(FieldValue::as_str), Some(""));
    assert_eq!(death.get("count").and_then(FieldValue::as_i64), Some(1));
    let keys = death.get("routing-keys").and_then(FieldValue::as_array).expect("routing-keys");
    assert_eq!(keys.0.first().and_then(FieldValue::as_str), Some(q.as_str()));
    assert_eq!(ready(&ch, &q).await, 0);
    ch.exchange_delete(&dlx, false).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn single_active_consumer_gives_everything_to_the_first() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let q = unique("single-active");
    ch.queue_declare(&q, exclusive(), QueueArguments::new().single_active_consumer(true).build().unwrap())
        .within(WAIT)
        .await
        .unwrap();
    let first_ch = conn.open_channel().within(WAIT).await.unwrap();
    let second_ch = conn.open_channel().within(WAIT).await.unwrap();
    let mut first = first_ch.basic_consume(&q, ConsumeOptions::default()).within(WAIT).await.unwrap();
    let mut second = second_ch.basic_consume(&q, ConsumeOptions::default()).within(WAIT).await.unwrap();
    for i in 0..5 {
        publish(&ch, &q, &i.to_string(), BasicProperties::default()).await;
    }
    for i in 0..5 {
        let d = next(&mut first).await;
        assert_eq!(d.body, i.to_string().as_bytes());
        d.ack().within(WAIT).await.unwrap();
    }
    assert_quiet(&mut second).await;

    // When the active consumer goes, the waiting one takes over.
    first.cancel().within(WAIT).await.unwrap();
    publish(&ch, &q, "for the second", BasicProperties::default()).await;
    assert_eq!(&next(&mut second).await.body[..], b"for the second");
    conn.close().within(WAIT).await.unwrap();
}
