//! M5 of `/work/shared/RELIABILITY.md` at client level: a message whose headers are nested
//! 2,000 tables deep (published by a raw session and forwarded unchanged by RabbitMQ) and one
//! nested ~21,800 deep (sent by a fake broker) reach a consumer as a depth-limit error, with
//! the client running on 256 KiB stacks; and the message is rejected back to its queue while
//! the connection and its other channels carry on.
//!
//! Each test runs on a runtime of its own whose threads have 256 KiB stacks: a decoder that
//! recursed per level would overflow them and abort the test binary.

use std::{future::Future, io, time::Duration};

use bytes::Bytes;
use lepus::{
    Channel, Confirmation, Connection, ConsumeOptions, Consumer, Error, PublishOptions, ReplyCode,
    codec::{
        DecodeError, Frame, Limits, Method, ShortStr,
        method::{basic, confirm},
    },
};
use lepus_tests::{
    bounded::{Bounded, eventually, within},
    broker_addr,
    fake_broker::{self, FakeBroker, Running},
    nested::{header_frame_with_headers, nested_table},
    raw::RawSession,
    util::{connect, exclusive, exclusive_queue, ready},
};

/// The longest any single client operation may take here before it counts as a hang.
const WAIT: Duration = Duration::from_secs(10);
/// The stack of every thread the client runs on in these tests.
const SMALL_STACK: usize = 256 * 1024;
/// What RabbitMQ forwards unchanged.
const THROUGH_BROKER_DEPTH: usize = 2_000;
/// What a hostile peer can fit in a 256 KiB header frame.
const FROM_FAKE_DEPTH: usize = 21_800;
const BODY: &[u8] = b"too deep";

/// Runs `test` on a fresh runtime whose worker threads have [`SMALL_STACK`]; a panic in it
/// fails the calling test with the panic's own message.
fn on_small_stacks(test: impl Future<Output = ()> + Send + 'static) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(SMALL_STACK)
        .enable_all()
        .build()
        .expect("a runtime");
    let task = rt.spawn(test);
    if let Err(e) = rt.block_on(task) {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("the test task did not finish: {e}"),
        }
    }
}

/// Asserts that `item` is the depth-limit error: 502, naming the limit.
#[track_caller]
fn assert_too_deep(item: Option<Result<lepus::Delivery, Error>>, what: &str) {
    match item {
        Some(Err(e @ Error::Decode(DecodeError::NestingTooDeep { limit: Limits::DEFAULT_MAX_DEPTH }))) => {
            assert_eq!(e.reply_code(), Some(ReplyCode::SYNTAX_ERROR), "{what}: {e}");
        }
        other => panic!("{what}: expected the depth-limit error, got {other:?}"),
    }
}

// ---- through RabbitMQ ---------------------------------------------------------------------

/// Publishes a message whose headers are nested `depth` deep to `queue` from a raw session,
/// in confirm mode, and waits for the broker's ack: RabbitMQ took it whole.
fn publish_deep(queue: &str, depth: usize) -> io::Result<()> {
    let mut raw = RawSession::open(&broker_addr(), 131_072)?;
    raw.send(&Frame::Method(1, confirm::Select { nowait: false }.into()))?;
    let Method::ConfirmSelectOk(_) = raw.recv_method(1)? else { return Err(io::Error::other("no select-ok")) };
    let publish = basic::Publish {
        routing_key: ShortStr::try_from(queue).map_err(|e| io::Error::other(e.to_string()))?,
        ..basic::Publish::default()
    };
    raw.send(&Frame::Method(1, publish.into()))?;
    raw.send_bytes(&header_frame_with_headers(1, BODY.len() as u64, &nested_table(depth)))?;
    raw.send(&Frame::Body(1, Bytes::from_static(BODY)))?;
    match raw.recv_method(1)? {
        Method::BasicAck(ack) if ack.delivery_tag == 1 => raw.close(),
        other => Err(io::Error::other(format!("expected basic.ack for the deep message, got {}", other.name()))),
    }
}

/// A connection with the 2,000-deep message in an exclusive queue of its own, a consumer on
/// that queue, and a second channel with nothing to do with it.
struct ThroughBroker {
    conn: Connection,
    consumer: Consumer,
    queue: String,
    other: Channel,
}

async fn deep_message_through_rabbitmq() -> ThroughBroker {
    let conn = connect().await;
    let consuming = conn.open_channel().within(WAIT).await.unwrap();
    let queue = exclusive_queue(&consuming, "m5").await;
    let other = conn.open_channel().within(WAIT).await.unwrap();
    let target = queue.clone();
    within(WAIT, "the raw publish", tokio::task::spawn_blocking(move || publish_deep(&target, THROUGH_BROKER_DEPTH)))
        .await
        .unwrap()
        .expect("RabbitMQ takes a message with 2,000-deep headers");
    let consumer = consuming.basic_consume(&queue, ConsumeOptions::default()).within(WAIT).await.unwrap();
    ThroughBroker { conn, consumer, queue, other }
}

#[test]
fn m5_2000_levels_through_rabbitmq_are_a_depth_limit_error_on_a_256k_stack() {
    on_small_stacks(async {
        let ThroughBroker { conn, mut consumer, .. } = deep_message_through_rabbitmq().await;
        assert_too_deep(consumer.next().within(WAIT).await, "2,000 levels through RabbitMQ");
        conn.close().within(WAIT).await.unwrap();
    });
}

#[test]
fn m5_2000_levels_through_rabbitmq_go_back_to_the_queue_and_the_connection_stays() {
    on_small_stacks(async {
        let ThroughBroker { conn, mut consumer, queue, other } = deep_message_through_rabbitmq().await;
        assert_too_deep(consumer.next().within(WAIT).await, "2,000 levels through RabbitMQ");
        assert!(conn.is_open(), "the connection survives a too-deep message: {:?}", conn.close_reason());

        // Another channel carries on: a confirmed publish and a get on a queue of its own.
        other.confirm_select().within(WAIT).await.unwrap();
        let side = exclusive_queue(&other, "m5-side").await;
        let confirm = other.basic_publish("", &side, &b"fine"[..], PublishOptions::default()).within(WAIT).await;
        assert_eq!(confirm.unwrap().within(WAIT).await.unwrap(), Confirmation::Ack);
        let (got, _) = other.basic_get(&side, true).within(WAIT).await.unwrap().expect("the side message");
        assert_eq!(&got.body[..], b"fine");

        // The deep message is back in its queue once nobody consumes it.
        consumer.cancel().within(WAIT).await.unwrap();
        eventually(WAIT, "the too-deep message back in its queue", || async { ready(&other, &queue).await == 1 }).await;
        assert!(conn.is_open(), "{:?}", conn.close_reason());
        conn.close().within(WAIT).await.unwrap();
    });
}

// ---- from a fake broker -------------------------------------------------------------------

/// The fake's side: answers the setup, sends the too-deep delivery once the client consumes,
/// then answers generically and records every method the client sends until it closes.
async fn send_deep_delivery(mut peer: fake_broker::Peer) -> io::Result<Vec<(u16, Method)>> {
    let (channel, consume) = peer.wait_for(|_, m| matches!(m, Method::BasicConsume(_))).await?;
    peer.answer(channel, &consume).await?;
    let tag = peer.consumer_tags(channel).pop().ok_or_else(|| io::Error::other("no consumer tag"))?;
    let deliver = basic::Deliver {
        consumer_tag: tag,
        delivery_tag: 1,
        redelivered: false,
        exchange: ShortStr::new(),
        routing_key: ShortStr::try_from("m5").unwrap_or_default(),
    };
    let mut wire = fake_broker::encode(&[Frame::Method(channel, deliver.into())])?.to_vec();
    wire.extend(header_frame_with_headers(channel, BODY.len() as u64, &nested_table(FROM_FAKE_DEPTH)));
    wire.extend_from_slice(&fake_broker::encode(&[Frame::Body(channel, Bytes::from_static(BODY))])?);
    peer.send_raw(&wire).await?;
    let mut seen = Vec::new();
    loop {
        match peer.next_frame().await {
            Ok(Some(Frame::Method(ch, method))) => {
                peer.answer(ch, &method).await?;
                seen.push((ch, method));
            }
            Ok(Some(_)) => {}
            Ok(None) => return Ok(seen),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(seen),
            Err(e) => return Err(e),
        }
    }
}

/// A connection to a fake broker that sends a delivery with ~21,800-deep headers to the
/// consumer returned, and a second channel.
async fn deep_delivery_from_a_fake() -> (Running<Vec<(u16, Method)>>, Connection, Consumer, Channel) {
    let fake = FakeBroker::new().start(send_deep_delivery).within(WAIT).await.expect("the fake listens");
    let conn = within(WAIT, "connect", Connection::connect_with(fake.options())).await.unwrap();
    let consuming = conn.open_channel().within(WAIT).await.unwrap();
    let other = conn.open_channel().within(WAIT).await.unwrap();
    let consumer = consuming.basic_consume("m5", ConsumeOptions::default()).within(WAIT).await.unwrap();
    (fake, conn, consumer, other)
}

#[test]
fn m5_21800_levels_from_a_fake_broker_are_a_depth_limit_error_on_a_256k_stack() {
    on_small_stacks(async {
        let (fake, conn, mut consumer, _other) = deep_delivery_from_a_fake().await;
        assert_too_deep(consumer.next().within(WAIT).await, "21,800 levels from the fake broker");
        conn.close().within(WAIT).await.unwrap();
        fake.finish().await;
    });
}

#[test]
fn m5_21800_levels_from_a_fake_broker_are_rejected_to_the_queue_and_the_connection_stays() {
    on_small_stacks(async {
        let (fake, conn, mut consumer, other) = deep_delivery_from_a_fake().await;
        assert_too_deep(consumer.next().within(WAIT).await, "21,800 levels from the fake broker");
        assert!(conn.is_open(), "the connection survives a too-deep message: {:?}", conn.close_reason());
        let declared = other.queue_declare("m5.after", exclusive(), Default::default()).within(WAIT).await;
        assert_eq!(declared.expect("the other channel still works").name, "m5.after");
        conn.close().within(WAIT).await.unwrap();

        let seen = fake.finish().await;
        let requeued = seen.iter().any(|(_, m)| match m {
            Method::BasicReject(r) => r.delivery_tag == 1 && r.requeue,
            Method::BasicNack(n) => n.delivery_tag == 1 && n.requeue,
            _ => false,
        });
        assert!(requeued, "the client gives the too-deep message back to its queue; it sent {seen:?}");
        let closes: Vec<ReplyCode> = seen
            .iter()
            .filter_map(|(_, m)| match m {
                Method::ConnectionClose(c) => Some(c.reply_code),
                _ => None,
            })
            .collect();
        assert_eq!(closes, [ReplyCode::REPLY_SUCCESS], "only the test's own close: {seen:?}");
    });
}
