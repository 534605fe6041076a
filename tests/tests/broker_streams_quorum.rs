//! Streams and quorum queues through lepus's typed arguments, against the real RabbitMQ
//! (3.10 here): what the broker does with each, and the errors it gives where it lacks a
//! feature.
//!
//! Quorum queues need one node only, so their tests use the shared broker. Streams, the
//! `stream_queue` feature flag and the dead-letter worker's retry interval are set up on a
//! node of this test's own (`TestNode`), never on the shared one: one `#[test]` starts it
//! and runs every stream step in turn; the node is stopped when the test ends, failed or
//! not. `LEPUS_KEEP_NODE_DIR=1` keeps its directory (config, logs).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lepus::{
    Channel, Connection, ConnectionEvent, ConsumeOptions, Consumer, DeadLetterStrategy, Delivery, Error, ExchangeKind,
    FieldTable, FieldValue, Initiator, Overflow, PublishOptions, QueueArguments, QueueDeclareOptions,
    QueueDeleteOptions, QueueType, RecoveryOptions, ReplyCode, StreamInterval, StreamOffset,
};
use lepus_tests::bounded::{Bounded, eventually, until, within};
use lepus_tests::node::{TestNode, TestNodeConfig};
use lepus_tests::proxy::Proxy;
use lepus_tests::recovery_load::next_event;
use lepus_tests::util::{assert_channel_error, connect, exclusive, unique};

/// The most any single expected event may take.
const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing (more) arrives" is watched for.
const QUIET: Duration = Duration::from_millis(500);
/// The longest a whole stream step may take before it counts as hung.
const STEP: Duration = Duration::from_secs(90);
/// Our node's name prefix (see `TestNodeConfig::name`).
const NODE_NAME: &str = "lepus_streams";
/// The dead-letter worker's retry interval on our node (RabbitMQ's default is 3 minutes).
const DLX_RETRY_MS: u32 = 500;

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions { durable: true, ..Default::default() }
}

async fn next(consumer: &mut Consumer) -> Delivery {
    match within(WAIT, "a delivery", consumer.next()).await {
        Some(Ok(d)) => d,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

async fn assert_quiet(consumer: &mut Consumer, what: &str) {
    if let Ok(item) = tokio::time::timeout(QUIET, consumer.next()).await {
        panic!("{what}: expected no delivery within {QUIET:?}, got {item:?}");
    }
}

fn body(d: &Delivery) -> String {
    String::from_utf8(d.body.to_vec()).unwrap()
}

fn header_str<'a>(d: &'a Delivery, key: &str) -> Option<&'a str> {
    d.properties.headers.as_ref()?.get(key)?.as_str()
}

/// Publishes `body` to `queue` through the default exchange and waits for the broker's ack.
async fn publish(channel: &Channel, queue: &str, body: &str, options: PublishOptions) {
    let confirm = channel.basic_publish("", queue, body.to_owned().into_bytes(), options).within(WAIT).await.unwrap();
    assert!(within(WAIT, "a confirm", confirm).await.unwrap().is_ack(), "{body} not acked");
}

fn assert_connection_error(err: &Error, code: ReplyCode, text: &str) {
    match err {
        Error::ConnectionClosed(reason) => {
            assert_eq!(reason.reply_code, code, "{err}");
            assert_eq!(reason.initiator, Initiator::Server, "{err}");
            assert!(reason.reply_text.contains(text), "{err}");
        }
        other => panic!("expected a {code} connection error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Quorum queues, on the shared broker.

#[tokio::test]
async fn quorum_delivery_limit_counts_returns_then_dead_letters() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let dead = ch.queue_declare(&unique("limit.dead"), exclusive(), FieldTable::new()).within(WAIT).await.unwrap().name;
    let source = unique("limit.quorum");
    // x-expires: if the test fails before its delete, the queue still goes.
    let args = QueueArguments::new()
        .queue_type(QueueType::Quorum)
        .delivery_limit(2)
        .dead_letter_exchange("")
        .dead_letter_routing_key(&dead)
        .expires(Duration::from_secs(90))
        .build()
        .unwrap();
    ch.queue_declare(&source, durable(), args).within(WAIT).await.unwrap();
    publish(&ch, &source, "poison", PublishOptions::default()).await;

    let mut consumer = ch.basic_consume(&source, ConsumeOptions::default()).within(WAIT).await.unwrap();
    // A limit of 2: delivered, returned twice more, and the third return passes the limit.
    let mut seen = Vec::new();
    for attempt in 0..3 {
        let d = next(&mut consumer).await;
        assert_eq!(body(&d), "poison");
        seen.push((d.delivery_count(), d.redelivered));
        // Both kinds of return count.
        if attempt == 1 { d.reject(true).within(WAIT).await.unwrap() } else { d.nack(true).within(WAIT).await.unwrap() }
    }
    assert_eq!(seen, [(None, false), (Some(1), true), (Some(2), true)], "(x-delivery-count, redelivered) per delivery");

    let mut dead_consumer =
        ch.basic_consume(&dead, ConsumeOptions { no_ack: true, ..Default::default() }).within(WAIT).await.unwrap();
    let d = next(&mut dead_consumer).await;
    assert_eq!(body(&d), "poison");
    assert_eq!(header_str(&d, "x-first-death-reason"), Some("delivery_limit"));
    assert_eq!(header_str(&d, "x-first-death-queue"), Some(source.as_str()));
    assert_eq!(d.acquired_count(), None, "3.10 does not set x-acquired-count");
    assert_quiet(&mut consumer, "a message past its delivery limit").await;

    assert_eq!(ch.queue_delete(&source, QueueDeleteOptions::default()).within(WAIT).await.unwrap(), 0);
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn quorum_delivery_limit_without_a_dead_letter_exchange_drops() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let source = unique("limit.drop");
    let args = QueueArguments::new()
        .queue_type(QueueType::Quorum)
        .delivery_limit(1)
        .expires(Duration::from_secs(90))
        .build()
        .unwrap();
    ch.queue_declare(&source, durable(), args).within(WAIT).await.unwrap();
    publish(&ch, &source, "doomed", PublishOptions::default()).await;
    publish(&ch, &source, "kept", PublishOptions::default()).await;

    let mut consumer = ch.basic_consume(&source, ConsumeOptions::default()).within(WAIT).await.unwrap();
    let mut counts = Vec::new();
    loop {
        let d = next(&mut consumer).await;
        if body(&d) == "kept" {
            d.ack().within(WAIT).await.unwrap();
            continue;
        }
        counts.push(d.delivery_count());
        d.nack(true).within(WAIT).await.unwrap();
        if counts.len() == 2 {
            break;
        }
    }
    assert_eq!(counts, [None, Some(1)]);
    assert_quiet(&mut consumer, "a message past its delivery limit, without a dead-letter exchange").await;
    consumer.cancel().within(WAIT).await.unwrap();
    let declared =
        ch.queue_declare(&source, QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::new());
    assert_eq!(declared.within(WAIT).await.unwrap().message_count, 0, "dropped, not kept");
    ch.queue_delete(&source, QueueDeleteOptions::default()).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

/// RabbitMQ refuses an argument it knows but the queue type does not support, naming it;
/// lepus keeps its reply code and text.
#[tokio::test]
async fn arguments_of_another_queue_type_are_refused_by_name() {
    let conn = connect().await;
    let cases: [(QueueArguments, QueueDeclareOptions, &str); 3] = [
        (QueueArguments::new().delivery_limit(5), exclusive(), "x-delivery-limit"),
        (
            QueueArguments::new()
                .dead_letter_strategy(DeadLetterStrategy::AtLeastOnce)
                .overflow(Overflow::RejectPublish)
                .dead_letter_exchange(""),
            exclusive(),
            "x-dead-letter-strategy",
        ),
        (QueueArguments::new().queue_type(QueueType::Quorum).max_age("7D".parse().unwrap()), durable(), "x-max-age"),
    ];
    for (args, options, key) in cases {
        let ch = conn.open_channel().within(WAIT).await.unwrap();
        let err =
            ch.queue_declare(&unique("wrong-type"), options, args.build().unwrap()).within(WAIT).await.unwrap_err();
        assert_channel_error(&err, ReplyCode::PRECONDITION_FAILED);
        assert!(err.to_string().contains(&format!("invalid arg '{key}'")), "{err}");
    }
    assert!(conn.is_open(), "a channel error leaves the connection open");
    conn.close().within(WAIT).await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Streams and at-least-once dead-lettering, on a node of our own.

#[test]
fn streams_and_at_least_once_dead_lettering_on_a_node_of_our_own() {
    let node = TestNode::start(&TestNodeConfig::new(NODE_NAME)).expect("our node starts");
    // Read at each quorum queue's start: dead letters are retried and queue counts refreshed
    // every half second instead of every 3 minutes and 5 seconds.
    node.ctl(&[
        "eval",
        &format!(
            "application:set_env(rabbit, dead_letter_worker_publisher_confirm_timeout, {DLX_RETRY_MS}), \
             application:set_env(rabbit, quorum_tick_interval, 500)."
        ),
    ])
    .expect("rabbitmqctl eval");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let url = node.amqp_url();
        within(STEP, "step: stream_queue flag disabled", stream_flag_disabled_is_the_brokers_error(&node, &url)).await;
        within(STEP, "step: stream offsets", stream_offsets(&url)).await;
        within(STEP, "step: a stream consumer resumes after a loss", stream_consumer_resumes_after_a_loss(&node)).await;
        within(STEP, "step: stream filters", stream_filters(&url)).await;
        within(STEP, "step: what streams refuse", what_streams_refuse(&url)).await;
        within(STEP, "step: at-least-once dead-lettering", at_least_once_keeps_unroutable_dead_letters(&node, &url))
            .await;
    });
}

async fn open(url: &str) -> (Connection, Channel) {
    let conn = within(WAIT, "connect to our node", Connection::connect(url)).await.unwrap();
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    (conn, ch)
}

fn stream_args() -> FieldTable {
    QueueArguments::new().queue_type(QueueType::Stream).max_length_bytes(50 << 20).build().unwrap()
}

/// A node whose `stream_queue` feature flag is off (as on a node upgraded from before 3.9
/// that never enabled it): declaring a stream closes the connection with the broker's 541
/// and its text, kept whole; once the flag is on, the same declare works.
async fn stream_flag_disabled_is_the_brokers_error(node: &TestNode, url: &str) {
    // A fresh 3.10 node enables every flag; this turns one off again on our node only.
    let ctl = |args: &[&str]| tokio::task::block_in_place(|| node.ctl(args)).expect("rabbitmqctl");
    ctl(&["eval", "rabbit_feature_flags:mark_as_enabled_locally(stream_queue, false)."]);
    let flags = ctl(&["list_feature_flags", "-q", "--no-table-headers", "name", "state"]);
    assert!(flags.lines().any(|l| l.split_whitespace().eq(["stream_queue", "disabled"])), "{flags}");

    let (conn, ch) = open(url).await;
    let stream = unique("flag-off");
    let err = ch.queue_declare(&stream, durable(), stream_args()).within(WAIT).await.unwrap_err();
    assert_connection_error(&err, ReplyCode::INTERNAL_ERROR, "the corresponding feature flag is disabled");
    let Error::ConnectionClosed(reason) = &err else { unreachable!() };
    assert_eq!((reason.class_id, reason.method_id), (50, 10), "caused by queue.declare");
    assert!(reason.reply_text.contains(&stream), "{err}");
    // The broker closed the connection for a reason of its own: with recovery on (the
    // default) the connection is being re-established, the refused declare not replayed.
    assert!(conn.is_open() && conn.is_recovering(), "recovering after the broker's 541");

    let _ = conn.close().within(WAIT).await;

    ctl(&["enable_feature_flag", "stream_queue"]);
    let (conn, ch) = open(url).await;
    ch.queue_declare(&stream, durable(), stream_args()).within(WAIT).await.unwrap();
    ch.queue_delete(&stream, QueueDeleteOptions::default()).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

/// Reads `n` deliveries, acking each (the credit for the next), as (body, stream offset).
async fn take(consumer: &mut Consumer, n: usize) -> Vec<(String, u64)> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        let d = next(consumer).await;
        let offset = d.stream_offset().unwrap_or_else(|| panic!("a stream delivery without x-stream-offset: {d:?}"));
        got.push((body(&d), offset));
        d.ack().within(WAIT).await.unwrap();
    }
    got
}

fn expected(prefix: &str, bodies: std::ops::Range<u64>, first_offset: u64) -> Vec<(String, u64)> {
    bodies.enumerate().map(|(i, b)| (format!("{prefix}{b}"), first_offset + i as u64)).collect()
}

/// A consumer of `stream` on its own channel with a prefetch of 10.
async fn stream_consumer(conn: &Connection, stream: &str, options: ConsumeOptions) -> Consumer {
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.basic_qos(10, false).within(WAIT).await.unwrap();
    ch.basic_consume(stream, options).within(WAIT).await.unwrap()
}

/// A new stream named after `prefix` holding `m0`..`m99` at offsets 0..99, each
/// confirmed; `ch` is left in confirm mode.
async fn stream_of_100(ch: &Channel, prefix: &str) -> String {
    ch.confirm_select().within(WAIT).await.unwrap();
    let stream = unique(prefix);
    ch.queue_declare(&stream, durable(), stream_args()).within(WAIT).await.unwrap();
    let mut confirms = Vec::new();
    for i in 0..100 {
        let publish = ch.basic_publish("", &stream, format!("m{i}").into_bytes(), PublishOptions::default());
        confirms.push(publish.within(WAIT).await.unwrap());
    }
    for confirm in confirms {
        assert!(within(WAIT, "a confirm", confirm).await.unwrap().is_ack());
    }
    stream
}

/// Publish 100, then read from each kind of offset and check exactly what arrives.
async fn stream_offsets(url: &str) {
    let (conn, ch) = open(url).await;
    let stream = stream_of_100(&ch, "offsets").await;

    let mut first = stream_consumer(&conn, &stream, ConsumeOptions::stream(StreamOffset::First)).await;
    assert_eq!(take(&mut first, 100).await, expected("m", 0..100, 0), "from first");
    assert_quiet(&mut first, "after the last message, from first").await;

    let mut from_50 = stream_consumer(&conn, &stream, ConsumeOptions::stream(StreamOffset::Offset(50))).await;
    assert_eq!(take(&mut from_50, 50).await, expected("m", 50..100, 50), "from offset 50");

    let mut next_only = stream_consumer(&conn, &stream, ConsumeOptions::stream(StreamOffset::Next)).await;
    assert_quiet(&mut next_only, "nothing old from next").await;
    // Published alone, after the 100 were confirmed: a chunk of its own.
    publish(&ch, &stream, "n100", PublishOptions::default()).await;
    assert_eq!(take(&mut next_only, 1).await, [("n100".to_owned(), 100)], "from next");
    assert_eq!(take(&mut first, 1).await, [("n100".to_owned(), 100)], "a live consumer gets it too");

    let mut last = stream_consumer(&conn, &stream, ConsumeOptions::stream(StreamOffset::Last)).await;
    assert_eq!(take(&mut last, 1).await, [("n100".to_owned(), 100)], "from last: the last chunk");

    // Chunks carry the time they were written (ms); a timestamp offset is whole seconds.
    // Every chunk so far was written before `mark`, everything after it at or after `mark`:
    // the wait goes half a second past it, because the broker's clock (Erlang's system
    // time) may lag ours a little, and a chunk it stamps before `mark` would make the
    // consumer below wait for messages that never come (the likely cause of one CI run in
    // which this consumer got nothing within 10 s; not reproduced in 4 runs here).
    let mark = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 1;
    until(Duration::from_secs(3), "the clock passes the mark", || {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() >= u128::from(mark) * 1000 + 500
    })
    .await;
    for i in 0..10 {
        publish(&ch, &stream, &format!("t{i}"), PublishOptions::default()).await;
    }
    let options = ConsumeOptions::stream(StreamOffset::Timestamp(mark));
    assert_eq!(options.arguments.get("x-stream-offset"), Some(&FieldValue::Timestamp(mark)));
    let mut since_mark = stream_consumer(&conn, &stream, options).await;
    assert_eq!(take(&mut since_mark, 10).await, expected("t", 0..10, 101), "from a timestamp");
    assert_quiet(&mut since_mark, "after the last message, from a timestamp").await;

    let an_hour_before = StreamOffset::Timestamp(mark - 3600);
    let mut from_before = stream_consumer(&conn, &stream, ConsumeOptions::stream(an_hour_before)).await;
    assert_eq!(take(&mut from_before, 1).await, [("m0".to_owned(), 0)], "a timestamp before the stream: its start");

    let last_hour: StreamInterval = "1h".parse().unwrap();
    let mut within_hour = stream_consumer(&conn, &stream, ConsumeOptions::stream(last_hour.into())).await;
    assert_eq!(take(&mut within_hour, 1).await, [("m0".to_owned(), 0)], "the last hour: everything");

    ch.queue_delete(&stream, QueueDeleteOptions::default()).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

/// A stream consumer whose connection is reset mid-stream (through a proxy) resumes after
/// the last delivery it was given, not where it first started: the rest of the stream
/// arrives once each, in order, and nothing after it. Acks of deliveries from before the
/// loss are refused as stale (for a stream they are only credit: nothing is lost).
async fn stream_consumer_resumes_after_a_loss(node: &TestNode) {
    let proxy = Proxy::start(format!("127.0.0.1:{}", node.amqp_port())).await.unwrap();
    let recovery = RecoveryOptions::new().backoff(Duration::from_millis(10), Duration::from_millis(100));
    let conn = within(WAIT, "connect through the proxy", Connection::connect_with(proxy.options().recovery(recovery)))
        .await
        .unwrap();
    let mut events = conn.events();
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    let stream = stream_of_100(&ch, "resume").await;
    let mut consumer = stream_consumer(&conn, &stream, ConsumeOptions::stream(StreamOffset::First)).await;
    assert_eq!(take(&mut consumer, 40).await, expected("m", 0..40, 0), "before the loss");

    proxy.reset();
    next_event(&mut events, WAIT, "disconnected", |e| matches!(e, ConnectionEvent::Disconnected { .. })).await;
    // The connection saw the reset: new ones may pass.
    proxy.resume();
    next_event(&mut events, WAIT, "recovered", |e| matches!(e, ConnectionEvent::Recovered { .. })).await;
    let mut got = Vec::new();
    let mut stale = 0;
    for _ in 40..100 {
        let d = next(&mut consumer).await;
        got.push((body(&d), d.stream_offset().expect("x-stream-offset")));
        match d.ack().within(WAIT).await {
            Ok(()) => {}
            Err(Error::StaleDeliveryTag(_)) => stale += 1,
            Err(e) => panic!("ack: {e}"),
        }
    }
    assert_eq!(got, expected("m", 40..100, 40), "after the loss: the rest, once each");
    assert_quiet(&mut consumer, "nothing twice after the last message").await;
    println!("stream consumer resumed at offset 40 + queued; {stale} stale acks refused");
    ch.queue_delete(&stream, QueueDeleteOptions::default()).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

/// The broker's `major.minor`, from its `version` server property.
fn broker_version(conn: &Connection) -> (u32, u32) {
    let props = conn.server_properties();
    let version = props.get("version").and_then(FieldValue::as_str).expect("a version server property");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Filter values go out and come back on every version; before 3.13 the broker filters
/// nothing, so a consumer must filter by `Delivery::stream_filter_value` itself (as it must
/// on 3.13+ too, whose Bloom filters let other messages through).
async fn stream_filters(url: &str) {
    let (conn, ch) = open(url).await;
    ch.confirm_select().within(WAIT).await.unwrap();
    let stream = unique("filters");
    // 3.10 has never heard of x-stream-filter-size-bytes and ignores it.
    let args =
        QueueArguments::new().queue_type(QueueType::Stream).stream_filter_size_bytes(32).max_length_bytes(50 << 20);
    ch.queue_declare(&stream, durable(), args.build().unwrap()).within(WAIT).await.unwrap();
    for i in 0..10 {
        let value = if i % 2 == 0 { "even" } else { "odd" };
        publish(&ch, &stream, &format!("f{i}"), PublishOptions::default().stream_filter_value(value)).await;
    }
    publish(&ch, &stream, "unfiltered", PublishOptions::default()).await;

    let options = ConsumeOptions::stream(StreamOffset::First).stream_filter(["even"]).stream_match_unfiltered(false);
    let mut consumer = stream_consumer(&conn, &stream, options).await;
    let mut arrived = Vec::new();
    let mut wanted = Vec::new();
    loop {
        let d = next(&mut consumer).await;
        let b = body(&d);
        if d.stream_filter_value() == Some("even") {
            wanted.push(b.clone());
        }
        arrived.push((b.clone(), d.stream_filter_value().map(str::to_owned)));
        d.ack().within(WAIT).await.unwrap();
        if (b == "f8" && broker_version(&conn) >= (3, 13)) || b == "unfiltered" {
            break;
        }
    }
    assert_eq!(wanted, ["f0", "f2", "f4", "f6", "f8"], "every wanted message, in order");
    if broker_version(&conn) < (3, 13) {
        let all: Vec<(String, Option<String>)> = (0..10)
            .map(|i| (format!("f{i}"), Some(if i % 2 == 0 { "even" } else { "odd" }.to_owned())))
            .chain([("unfiltered".to_owned(), None)])
            .collect();
        assert_eq!(arrived, all, "before 3.13 the broker filters nothing");
    }
    ch.queue_delete(&stream, QueueDeleteOptions::default()).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

/// What a stream consumer must not do, and the broker's answer for each, kept whole.
async fn what_streams_refuse(url: &str) {
    let (conn, ch) = open(url).await;
    ch.confirm_select().within(WAIT).await.unwrap();
    let stream = unique("refusals");
    ch.queue_declare(&stream, durable(), stream_args()).within(WAIT).await.unwrap();
    publish(&ch, &stream, "only", PublishOptions::default()).await;

    // No prefetch: 406 on the channel.
    let no_qos = conn.open_channel().within(WAIT).await.unwrap();
    let err =
        no_qos.basic_consume(&stream, ConsumeOptions::stream(StreamOffset::First)).within(WAIT).await.unwrap_err();
    assert_channel_error(&err, ReplyCode::PRECONDITION_FAILED);
    assert!(err.to_string().contains("consumer prefetch count is not set"), "{err}");

    // An interval RabbitMQ cannot read: 406 naming the argument. StreamInterval refuses it
    // before anything is sent.
    assert!("1h30m".parse::<StreamInterval>().is_err());
    let mut raw = FieldTable::new();
    raw.insert("x-stream-offset", "1h30m").unwrap();
    let bad = conn.open_channel().within(WAIT).await.unwrap();
    bad.basic_qos(10, false).within(WAIT).await.unwrap();
    let err = bad.basic_consume(&stream, ConsumeOptions { arguments: raw, ..Default::default() }).within(WAIT).await;
    let err = err.unwrap_err();
    assert_channel_error(&err, ReplyCode::PRECONDITION_FAILED);
    assert!(err.to_string().contains("x-stream-offset"), "{err}");
    assert!(conn.is_open(), "channel errors so far");

    // Automatic acknowledgement, basic.get, nack: 540 on the whole connection.
    let ack_less = ConsumeOptions { no_ack: true, ..ConsumeOptions::stream(StreamOffset::First) };
    let qos = conn.open_channel().within(WAIT).await.unwrap();
    qos.basic_qos(10, false).within(WAIT).await.unwrap();
    let err = qos.basic_consume(&stream, ack_less).within(WAIT).await.unwrap_err();
    assert_connection_error(&err, ReplyCode::NOT_IMPLEMENTED, "automatic acknowledgement not supported");

    let (conn, ch) = open(url).await;
    let err = ch.basic_get(&stream, false).within(WAIT).await.unwrap_err();
    assert_connection_error(&err, ReplyCode::NOT_IMPLEMENTED, "basic.get not supported by stream queues");

    let (conn2, _) = open(url).await;
    let mut consumer = stream_consumer(&conn2, &stream, ConsumeOptions::stream(StreamOffset::First)).await;
    let d = next(&mut consumer).await;
    d.nack(true).within(WAIT).await.unwrap();
    let err = within(WAIT, "the broker closing the connection", conn2.closed()).await;
    assert_connection_error(&err, ReplyCode::NOT_IMPLEMENTED, "basic.nack and basic.reject not supported");
    assert!(!conn.is_open());

    let (conn, ch) = open(url).await;
    ch.queue_delete(&stream, QueueDeleteOptions::default()).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

/// Counts of one queue from `rabbitmqctl list_queues`: (messages, ready, unacknowledged).
/// A quorum queue's `messages` includes dead letters it still holds for at-least-once.
fn queue_counts(node: &TestNode, queue: &str) -> Option<(u64, u64, u64)> {
    let columns =
        ["list_queues", "-q", "--no-table-headers", "name", "messages", "messages_ready", "messages_unacknowledged"];
    let listing = tokio::task::block_in_place(|| node.ctl(&columns)).expect("rabbitmqctl list_queues");
    listing.lines().find_map(|line| {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            [name, total, ready, unacked] if *name == queue => {
                Some((total.parse().ok()?, ready.parse().ok()?, unacked.parse().ok()?))
            }
            _ => None,
        }
    })
}

/// A dead letter that cannot be routed yet: at-least-once keeps it in the source queue and
/// delivers it once a route exists; at-most-once (the control) loses it.
async fn at_least_once_keeps_unroutable_dead_letters(node: &TestNode, url: &str) {
    let (conn, ch) = open(url).await;
    ch.confirm_select().within(WAIT).await.unwrap();
    let dlx = unique("dlx");
    ch.exchange_declare(&dlx, ExchangeKind::Direct, Default::default(), FieldTable::new()).within(WAIT).await.unwrap();
    let source = |strategy: DeadLetterStrategy| {
        QueueArguments::new()
            .queue_type(QueueType::Quorum)
            .dead_letter_strategy(strategy)
            .overflow(Overflow::RejectPublish)
            .dead_letter_exchange(&dlx)
            .dead_letter_routing_key("dead")
            .build()
            .unwrap()
    };
    let kept = unique("at-least-once");
    let lost = unique("at-most-once");
    for (queue, strategy) in [(&kept, DeadLetterStrategy::AtLeastOnce), (&lost, DeadLetterStrategy::AtMostOnce)] {
        ch.queue_declare(queue, durable(), source(strategy)).within(WAIT).await.unwrap();
        publish(&ch, queue, queue, PublishOptions::default()).await;
        let mut consumer = ch.basic_consume(queue, ConsumeOptions::default()).within(WAIT).await.unwrap();
        next(&mut consumer).await.nack(false).within(WAIT).await.unwrap();
        consumer.cancel().within(WAIT).await.unwrap();
    }
    // Nothing is bound to the dead-letter exchange yet. Held for at-least-once: counted,
    // neither ready nor unacknowledged; the at-most-once one is gone.
    eventually(WAIT, "the dead letter held by the at-least-once queue", || async {
        queue_counts(node, &kept) == Some((1, 0, 0)) && queue_counts(node, &lost) == Some((0, 0, 0))
    })
    .await;

    let target = ch.queue_declare(&unique("target"), exclusive(), FieldTable::new()).within(WAIT).await.unwrap().name;
    ch.queue_bind(&target, &dlx, "dead", FieldTable::new()).within(WAIT).await.unwrap();
    let mut consumer =
        ch.basic_consume(&target, ConsumeOptions { no_ack: true, ..Default::default() }).within(WAIT).await.unwrap();
    let d = next(&mut consumer).await;
    assert_eq!(body(&d), kept, "the held dead letter, retried once routable");
    assert_eq!(header_str(&d, "x-first-death-reason"), Some("rejected"));
    assert_eq!(header_str(&d, "x-first-death-queue"), Some(kept.as_str()));
    // Several retry intervals: the at-most-once dead letter never comes.
    assert!(tokio::time::timeout(Duration::from_millis(u64::from(DLX_RETRY_MS) * 4), consumer.next()).await.is_err());
    // Confirmed by the target, the source lets it go.
    eventually(WAIT, "the at-least-once queue empty", || async { queue_counts(node, &kept) == Some((0, 0, 0)) }).await;

    for queue in [&kept, &lost] {
        ch.queue_delete(queue, QueueDeleteOptions::default()).within(WAIT).await.unwrap();
    }
    ch.exchange_delete(&dlx, false).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}
