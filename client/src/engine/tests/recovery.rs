//! Recovery as a state machine on a manual clock: the backoff schedule and the address
//! rotation, give-up by duration and by refused credentials, the replay's order, renamed
//! server-named queues, stale delivery tags refused (N6), confirms lost with the connection
//! resolved exactly once, commands that raced the loss applied after the replay or expired,
//! and stream consumers resumed after their last delivery.

use std::time::Duration;

use lepus_codec::{BasicProperties, ContentHeader, FieldTable, FieldValue, Frame, Method, method::basic};

use super::{Harness, three_nodes};
use crate::{
    ConnectionEvent, ConsumeOptions, Error, ExchangeDeclareOptions, ExchangeKind, PublishOptions, QueueDeclareOptions,
    QueueDeleteOptions, RecoveryOptions, StreamOffset, WhileDisconnected,
    recovery::backoff::{Backoff, SplitMix64},
};

const MS: Duration = Duration::from_millis(1);

fn reset() -> Error {
    Error::Io(std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)))
}

fn refused() -> Error {
    Error::Io(std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)))
}

fn port(address: &crate::recovery::Address) -> u16 {
    address.port
}

/// The delays and ports of `n` failed attempts after one loss, with `seed`.
fn schedule(seed: u64, n: usize) -> (Vec<Duration>, Vec<u16>, Vec<ConnectionEvent>) {
    let options = three_nodes().recovery(RecoveryOptions::new().backoff(100 * MS, 1000 * MS));
    let mut h = Harness::connected(options, seed);
    h.events();
    h.lose(reset());
    let (mut delays, mut ports) = (Vec::new(), Vec::new());
    for number in 1..=n {
        let attempt = h.next_attempt().expect("recovery goes on");
        assert_eq!(attempt.number as usize, number);
        delays.push(attempt.at - h.now);
        ports.push(port(&attempt.address));
        h.fail(&attempt, &refused());
    }
    (delays, ports, h.events())
}

/// The schedule is the engine's alone: exponential steps capped at the maximum, each delay
/// jittered within the upper half of its step, the addresses taken in turn (the first was
/// the lost connection's, so the rotation starts at the second), and replayable from the
/// seed. Every attempt is announced with its number and address.
#[tokio::test]
async fn backoff_schedule_and_address_rotation() {
    let seed = 42;
    let (delays, ports, events) = schedule(seed, 7);
    // Each loss draws its schedule from the connection's generator.
    let mut expected = Backoff::new(100 * MS, 1000 * MS, SplitMix64(seed).next());
    let expected: Vec<Duration> = (0..7).map(|_| expected.next_delay()).collect();
    assert_eq!(delays, expected);
    let steps = [100, 200, 400, 800, 1000, 1000, 1000];
    for (delay, step) in delays.iter().zip(steps) {
        let step = step * MS;
        assert!(*delay >= step / 2 && *delay <= step, "{delay:?} for a step of {step:?}");
    }
    assert_eq!(ports, [2, 3, 1, 2, 3, 1, 2]);
    let described: Vec<String> = events.iter().map(|e| format!("{e:?}")).collect();
    assert!(matches!(&events[0], ConnectionEvent::Disconnected { .. }), "{described:?}");
    let recovering: Vec<(u32, String)> = events
        .iter()
        .filter_map(|e| match e {
            ConnectionEvent::Recovering { attempt, address } => Some((*attempt, address.clone())),
            _ => None,
        })
        .collect();
    let expected: Vec<(u32, String)> =
        ports.iter().zip(1..).map(|(port, n)| (n, format!("127.0.0.1:{port}"))).collect();
    assert_eq!(recovering, expected);

    let (again, ..) = schedule(seed, 7);
    assert_eq!(again, delays, "the same seed, the same schedule");
    let (other, ..) = schedule(seed + 1, 7);
    assert_ne!(other, delays, "another connection does not come back in step");
}

/// With a give-up duration, attempts stop at the first one due at or past it, measured on
/// the engine's clock from the loss; the handles then see `RecoveryFailed`.
#[tokio::test]
async fn gives_up_after_its_duration() {
    let recovery = RecoveryOptions::new().backoff(400 * MS, 400 * MS).give_up_after(Some(Duration::from_secs(2)));
    let mut h = Harness::connected(three_nodes().recovery(recovery), 7);
    let ch = h.open_channel().await;
    let lost_at = h.now;
    h.lose(reset());
    let mut made = 0;
    while let Some(attempt) = h.next_attempt() {
        assert!(attempt.at - lost_at < Duration::from_secs(3), "an attempt long past the give-up");
        made += 1;
        h.fail(&attempt, &refused());
    }
    assert!(h.now - lost_at >= Duration::from_secs(2), "gave up early, at {:?}", h.now - lost_at);
    // Delays of 200 to 400 ms: between 5 and 10 attempts fit in 2 s.
    assert!((5..=10).contains(&made), "{made} attempts");
    let failed = h.events().into_iter().find_map(|e| match e {
        ConnectionEvent::RecoveryFailed(error) => Some(error),
        _ => None,
    });
    assert!(matches!(failed, Some(Error::RecoveryFailed { attempts, .. }) if attempts == made), "{failed:?}");
    h.shut_down();
    let after = h.run(ch.basic_qos(1, false)).await;
    assert!(matches!(after, Err(Error::RecoveryFailed { .. })), "{after:?}");
}

/// A refused login is retried (a credentials provider may have a fresh token), but not
/// forever: the third refusal ends recovery, naming the refusal.
#[tokio::test]
async fn refused_credentials_end_recovery_on_the_third_refusal() {
    let mut h = Harness::connected(three_nodes(), 1);
    h.lose(reset());
    for _ in 0..3 {
        let attempt = h.next_attempt().expect("refusals are retried up to three times");
        h.fail(&attempt, &Error::AccessRefused("ACCESS_REFUSED - login refused".into()));
    }
    assert!(h.next_attempt().is_none());
    let failed = h.events().into_iter().find_map(|e| match e {
        ConnectionEvent::RecoveryFailed(error) => Some(error),
        _ => None,
    });
    assert!(
        matches!(&failed, Some(Error::RecoveryFailed { attempts: 3, last }) if matches!(**last, Error::AccessRefused(_))),
        "{failed:?}"
    );
}

/// The replay, method by method: the channel reopened with its id, then a channel of its
/// own for the declarations in the order they were made (the deleted queue forgotten, the
/// server-named queue renamed and its binding following), then the channel's QoS, confirm
/// mode and consumer on the new name. Later publishes to the old name follow the rename.
#[tokio::test]
async fn replay_order_and_renamed_queues() {
    let mut h = Harness::connected(three_nodes(), 3);
    let ch = h.open_channel().await;
    let options = ExchangeDeclareOptions::default();
    h.run(ch.exchange_declare("x.source", ExchangeKind::Topic, options, FieldTable::new())).await.unwrap();
    h.run(ch.exchange_declare("x.dest", ExchangeKind::Fanout, options, FieldTable::new())).await.unwrap();
    let exclusive = QueueDeclareOptions { exclusive: true, ..QueueDeclareOptions::default() };
    let named = h.run(ch.queue_declare("", exclusive, FieldTable::new())).await.unwrap().name;
    assert_eq!(named, "amq.gen-c0-1");
    h.run(ch.queue_bind(&named, "x.source", "k.#", FieldTable::new())).await.unwrap();
    h.run(ch.exchange_bind("x.dest", "x.source", "all", FieldTable::new())).await.unwrap();
    h.run(ch.queue_declare("q.gone", QueueDeclareOptions::default(), FieldTable::new())).await.unwrap();
    h.run(ch.queue_delete("q.gone", QueueDeleteOptions::default())).await.unwrap();
    h.run(ch.basic_qos(10, false)).await.unwrap();
    h.run(ch.confirm_select()).await.unwrap();
    let consume = ConsumeOptions { consumer_tag: "c.kept".into(), ..ConsumeOptions::default() };
    let _consumer = h.run(ch.basic_consume(&named, consume)).await.unwrap();

    h.lose(reset());
    let attempt = h.next_attempt().unwrap();
    h.connect(attempt);
    assert!(h.events().iter().any(|e| matches!(e, ConnectionEvent::Recovered { address } if address == "127.0.0.1:2")));

    let app = ch.id();
    let own = app + 1;
    let replay: Vec<String> =
        h.broker.described(1).into_iter().skip_while(|m| !m.ends_with("connection.open")).collect();
    let expected = vec![
        "0 connection.open".to_owned(),
        format!("{app} channel.open"),
        format!("{own} channel.open"),
        format!("{own} exchange.declare x.source"),
        format!("{own} exchange.declare x.dest"),
        format!("{own} queue.declare \"\""),
        format!("{own} queue.bind amq.gen-c1-2<-x.source"),
        format!("{own} exchange.bind x.dest<-x.source"),
        format!("{app} basic.qos 10"),
        format!("{app} confirm.select"),
        format!("{app} basic.consume amq.gen-c1-2 c.kept"),
        format!("{own} channel.close"),
    ];
    assert_eq!(replay, expected);

    let confirm = h.run(ch.basic_publish("", &named, &b"hello"[..], PublishOptions::default())).await.unwrap();
    drop(confirm);
    h.turns();
    let last = h.broker.described(1).pop();
    assert_eq!(last, Some(format!("{app} basic.publish \"\" amq.gen-c1-2")));
}

/// N6 and confirms: a delivery received before the loss cannot be acked after it (a
/// distinct error, nothing sent), the consumer's stream goes on with the redelivery, and
/// publishes awaiting their confirm at the loss resolve once, with `ConnectionLost`; the
/// new connection's ack of tag 1 confirms the new publish, not a lost one.
#[tokio::test]
async fn stale_tags_refused_and_lost_confirms_resolve_once() {
    let mut h = Harness::connected(three_nodes(), 5);
    h.broker.deliver_on_consume = true;
    let ch = h.open_channel().await;
    h.run(ch.confirm_select()).await.unwrap();
    let consume = ConsumeOptions { consumer_tag: "c".into(), ..ConsumeOptions::default() };
    let mut consumer = h.run(ch.basic_consume("q", consume)).await.unwrap();
    let old = h.run(consumer.next()).await.unwrap().unwrap();
    assert_eq!(&old.body[..], b"message on connection 0");
    let mut pending = Vec::new();
    for i in 0..3 {
        let body = format!("unconfirmed {i}").into_bytes();
        pending.push(h.run(ch.basic_publish("", "q", body, PublishOptions::default())).await.unwrap());
    }
    h.turns();

    h.lose(reset());
    for confirm in pending {
        let result = h.run(confirm).await;
        assert!(matches!(result, Err(Error::ConnectionLost(_))), "{result:?}");
    }
    h.broker.confirm_publishes = true;
    let attempt = h.next_attempt().unwrap();
    h.connect(attempt);

    let new = h.run(consumer.next()).await.unwrap().unwrap();
    assert_eq!(&new.body[..], b"message on connection 1");
    let stale = h.run(old.ack()).await;
    assert!(matches!(stale, Err(Error::StaleDeliveryTag(1))), "{stale:?}");
    h.run(new.ack()).await.unwrap();
    let confirm = h.run(ch.basic_publish("", "q", &b"after"[..], PublishOptions::default())).await.unwrap();
    assert!(h.run(confirm).await.unwrap().is_ack());
    let acks: Vec<String> = h.broker.described(1).into_iter().filter(|m| m.contains("basic.ack")).collect();
    assert_eq!(acks, [format!("{} basic.ack 1", ch.id())], "one ack on the new connection: the new delivery's");
}

/// With `republish_unconfirmed`, the lost publishes are sent again after the replay and
/// their confirms resolve with the copies' acks, each once.
#[tokio::test]
async fn unconfirmed_publishes_are_republished_after_the_replay() {
    let recovery = RecoveryOptions::new().republish_unconfirmed(true);
    let mut h = Harness::connected(three_nodes().recovery(recovery), 9);
    let ch = h.open_channel().await;
    h.run(ch.confirm_select()).await.unwrap();
    let mut pending = Vec::new();
    for i in 0..3 {
        let body = format!("m{i}").into_bytes();
        pending.push(h.run(ch.basic_publish("", "q", body, PublishOptions::default())).await.unwrap());
    }
    h.turns();
    h.lose(reset());
    h.broker.confirm_publishes = true;
    let attempt = h.next_attempt().unwrap();
    h.connect(attempt);
    for confirm in pending {
        assert!(h.run(confirm).await.unwrap().is_ack());
    }
    let sent = h.broker.described(1);
    let confirm_at = sent.iter().position(|m| m.ends_with("confirm.select")).unwrap();
    let publishes: Vec<usize> =
        sent.iter().enumerate().filter(|(_, m)| m.contains("basic.publish")).map(|(i, _)| i).collect();
    assert_eq!(publishes.len(), 3, "{sent:?}");
    assert!(publishes.iter().all(|&i| i > confirm_at), "republished after the replay: {sent:?}");
}

/// A command that raced the loss (queued before the engine learnt of it) is held back
/// while the connection is down, then applied after the replay, in order.
#[tokio::test]
async fn commands_that_raced_the_loss_run_after_the_replay() {
    let mut h = Harness::connected(three_nodes(), 11);
    let ch = h.open_channel().await;
    h.run(ch.basic_qos(5, false)).await.unwrap();
    // The handle queues its call; the engine reads the socket's failure before taking it.
    let mut call = Box::pin(ch.basic_qos(7, false));
    assert!(poll_once(&mut call).await.is_none());
    h.lose(reset());
    h.turns();
    let attempt = h.next_attempt().unwrap();
    h.advance(Duration::from_millis(1));
    h.connect(attempt);
    h.run(call).await.unwrap();
    let sent = h.broker.described(1);
    let id = ch.id();
    let qos: Vec<&String> = sent.iter().filter(|m| m.contains("basic.qos")).collect();
    assert_eq!(qos, [&format!("{id} basic.qos 5"), &format!("{id} basic.qos 7")], "{sent:?}");
}

/// A call and a confirmed publish that raced the loss wait for recovery no longer than a
/// call made while down would (`wait_timeout`, on the engine's clock), then fail with
/// `Disconnected` naming the loss; the publish's budget is given back. Under `FailFast`
/// they fail at once.
#[tokio::test]
async fn commands_that_raced_the_loss_expire_after_the_wait_timeout() {
    for (policy, wait) in
        [(WhileDisconnected::Wait, Duration::from_secs(5)), (WhileDisconnected::FailFast, Duration::ZERO)]
    {
        let recovery = RecoveryOptions::new().wait_timeout(Duration::from_secs(5)).while_disconnected(policy);
        let mut h = Harness::connected(three_nodes().recovery(recovery), 13);
        let ch = h.open_channel().await;
        h.run(ch.confirm_select()).await.unwrap();
        let budget = h.engine.shared.publish_budget.available_permits();
        let mut call = Box::pin(ch.basic_qos(7, false));
        assert!(poll_once(&mut call).await.is_none());
        let confirm = h.run(ch.basic_publish("", "q", &b"raced"[..], PublishOptions::default())).await.unwrap();
        assert!(h.engine.shared.publish_budget.available_permits() < budget, "the publish holds budget");
        let lost_at = h.now;
        h.lose(reset());
        h.turns();
        assert_eq!(h.engine.poll_timeout(), Some(lost_at + wait), "{policy:?}");
        if !wait.is_zero() {
            h.advance(wait.saturating_sub(MS));
            h.engine.handle_timeout(h.now);
            assert!(poll_once(&mut call).await.is_none(), "{policy:?}: expired early");
            h.advance(MS);
        }
        h.engine.handle_timeout(h.now);
        let call = h.run(call).await;
        assert!(matches!(&call, Err(Error::Disconnected(cause)) if matches!(**cause, Error::Io(_))), "{call:?}");
        let confirm = h.run(confirm).await;
        assert!(matches!(confirm, Err(Error::Disconnected(_))), "{confirm:?}");
        assert_eq!(h.engine.shared.publish_budget.available_permits(), budget, "{policy:?}: budget given back");
        assert_eq!(h.engine.poll_timeout(), None);
        // Recovery goes on; nothing expired reaches the new connection.
        let attempt = h.next_attempt().unwrap();
        h.connect(attempt);
        let sent = h.broker.described(1);
        assert!(!sent.iter().any(|m| m.contains("basic.qos") || m.contains("basic.publish")), "{sent:?}");
    }
}

/// A stream consumer resumes after the last delivery it was given, not where it first
/// started: the replayed `basic.consume` asks for the next offset, so nothing is delivered
/// twice; a delivery still queued is read after the recovery as before it. A stream
/// consumer that got nothing yet starts where it asked to.
#[tokio::test]
async fn stream_consumers_resume_after_their_last_delivery() {
    let mut h = Harness::connected(three_nodes(), 17);
    let ch = h.open_channel().await;
    h.run(ch.basic_qos(100, false)).await.unwrap();
    let consume = ConsumeOptions::stream(StreamOffset::First);
    let mut read = h
        .run(ch.basic_consume("events", ConsumeOptions { consumer_tag: "s.read".into(), ..consume.clone() }))
        .await
        .unwrap();
    let _idle =
        h.run(ch.basic_consume("events", ConsumeOptions { consumer_tag: "s.idle".into(), ..consume })).await.unwrap();
    for (tag, offset) in [(1, 10), (2, 11), (3, 12)] {
        h.feed(stream_delivery(ch.id(), "s.read", tag, offset));
    }
    h.turns();
    for offset in [10, 11] {
        let delivery = h.run(read.next()).await.unwrap().unwrap();
        assert_eq!(delivery.stream_offset(), Some(offset));
    }
    h.lose(reset());
    let attempt = h.next_attempt().unwrap();
    h.connect(attempt);
    let offsets: Vec<(String, Option<FieldValue>)> = h
        .broker
        .log
        .iter()
        .filter(|(i, ..)| *i == 1)
        .filter_map(|(_, _, m)| match m {
            Method::BasicConsume(c) => {
                Some((c.consumer_tag.as_str().unwrap().to_owned(), c.arguments.get("x-stream-offset").cloned()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        offsets,
        [
            ("s.read".to_owned(), Some(FieldValue::I64(13))),
            ("s.idle".to_owned(), Some(FieldValue::from(StreamOffset::First))),
        ]
    );
    let queued = h.run(read.next()).await.unwrap().unwrap();
    assert_eq!(queued.stream_offset(), Some(12), "the delivery queued at the loss is still read");
}

/// A delivery from a stream: `x-stream-offset` in its headers.
fn stream_delivery(channel: u16, consumer_tag: &str, delivery_tag: u64, offset: i64) -> Vec<Frame> {
    let mut headers = FieldTable::new();
    headers.insert("x-stream-offset", FieldValue::I64(offset)).unwrap();
    let properties = BasicProperties { headers: Some(headers), ..BasicProperties::default() };
    let deliver = basic::Deliver {
        consumer_tag: super::short(consumer_tag),
        delivery_tag,
        redelivered: false,
        exchange: lepus_codec::ShortStr::new(),
        routing_key: super::short("events"),
    };
    vec![
        Frame::Method(channel, deliver.into()),
        Frame::Header(channel, ContentHeader::new(4, properties)),
        Frame::Body(channel, bytes::Bytes::from_static(b"data")),
    ]
}

/// Polls `fut` once, within the runtime; `Some` if it finished.
async fn poll_once<F: std::future::Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut *fut).poll(cx) {
            std::task::Poll::Ready(out) => Some(out),
            std::task::Poll::Pending => None,
        })
    })
    .await
}
