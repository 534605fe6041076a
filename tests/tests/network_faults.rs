//! The client through an in-test TCP proxy to the real RabbitMQ: a half-open link (N1), a
//! drip feed that splits every frame at every byte (N3), the link cut at a random byte of
//! 10,000 confirmed publishes (N5), and publish and RPC futures dropped at random await
//! points (C2). Case ids are from `RELIABILITY.md`. Random choices are seeded; the seed is
//! printed, and `LEPUS_SEED=<seed>` replays a run.

use std::{
    collections::HashSet,
    future::Future,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use lepus::{
    BasicProperties, Confirmation, Connection, ConnectionOptions, ConsumeOptions, Error, PublishOptions,
    QueueDeclareOptions, QueueDeleteOptions, ShortStr,
    codec::{Method, encode_publish, method::basic},
};
use lepus_tests::bounded::{Bounded, within};
use lepus_tests::seeded::SeededRng;
use lepus_tests::{
    fake_broker::options_for,
    proxy::{Direction, Proxy},
};

/// The longest any single client operation may take in these tests before it counts as a hang.
const WAIT: Duration = Duration::from_secs(10);

async fn connect(options: ConnectionOptions) -> Connection {
    within(WAIT, "connect", Connection::connect_with(options)).await.expect("connect")
}

/// Options for a direct connection to the broker, past the proxy.
fn direct() -> ConnectionOptions {
    let addr = lepus_tests::broker_addr().parse().expect("AMQP_ADDR is host:port with an IP address");
    options_for(addr)
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("lepus.test.{prefix}.{}.{nanos}", std::process::id())
}

fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions { exclusive: true, ..QueueDeclareOptions::default() }
}

// ---- N1: a half-open link -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n1_half_open_link_is_declared_dead_within_5s_and_everything_pending_fails() {
    let proxy = Proxy::to_broker().within(WAIT).await.unwrap();
    let conn = connect(proxy.options().heartbeat(2)).await;
    assert_eq!(conn.tuning().heartbeat, 2, "the broker accepts our 2 s");
    let channel = within(WAIT, "open", conn.open_channel()).await.unwrap();
    let queue = within(WAIT, "declare", channel.queue_declare("", exclusive(), Default::default())).await.unwrap().name;
    within(WAIT, "confirm.select", channel.confirm_select()).await.unwrap();
    let mut consumer = within(WAIT, "consume", channel.basic_consume(&queue, ConsumeOptions::default())).await.unwrap();

    // Nothing passes any more, and both sockets stay open.
    proxy.stall();
    let stalled_at = Instant::now();
    let confirm = within(WAIT, "publish", channel.basic_publish("", &queue, &b"lost"[..], PublishOptions::default()))
        .await
        .unwrap();
    let call = {
        let channel = channel.clone();
        tokio::spawn(async move { channel.queue_declare("", exclusive(), Default::default()).within(WAIT).await })
    };

    let error = within(WAIT, "declared dead", conn.closed()).await;
    let dead_after = stalled_at.elapsed();
    assert!(matches!(error, Error::MissedHeartbeats(_)), "{error:?}");
    // The broker's last frame came at most one interval before the stall.
    assert!(dead_after <= Duration::from_secs(5), "declared dead {dead_after:?} after the stall");
    println!("half-open link declared dead {dead_after:?} after the stall");
    let confirm = within(Duration::from_secs(1), "the pending confirm", confirm).await;
    assert!(matches!(confirm, Err(Error::MissedHeartbeats(_))), "{confirm:?}");
    let call = within(Duration::from_secs(1), "the pending call", call).await.unwrap();
    assert!(matches!(call, Err(Error::MissedHeartbeats(_))), "{call:?}");
    let delivery = within(Duration::from_secs(1), "the consumer", consumer.next()).await;
    assert!(matches!(delivery, Some(Err(Error::MissedHeartbeats(_)))), "{delivery:?}");
}

// ---- N3: one byte every 10 ms ---------------------------------------------------------------

/// Handshake, declare, publish and get with `dir` dripped one byte per 10 ms. One direction
/// at a time: both at once take longer than RabbitMQ's 10 s handshake timeout.
async fn n3_round_trip(dir: Direction) {
    let proxy = Proxy::to_broker().within(WAIT).await.unwrap();
    proxy.drip_one_way(dir, 1, Duration::from_millis(10));
    let started = Instant::now();
    let slow = Duration::from_secs(20);
    let conn = within(slow, "connect", Connection::connect_with(proxy.options().connection_timeout(slow)))
        .await
        .expect("the handshake works one byte at a time");
    let handshake = started.elapsed();
    let channel = within(slow, "open", conn.open_channel()).await.unwrap();
    let queue = format!("n3.{}.{:?}", std::process::id(), dir);
    within(slow, "declare", channel.queue_declare(&queue, exclusive(), Default::default())).await.unwrap();
    let properties = BasicProperties {
        content_type: Some(ShortStr::try_from("text/plain").unwrap()),
        delivery_mode: Some(1),
        ..BasicProperties::default()
    };
    let body = &b"one byte at a time"[..];
    let publish = PublishOptions { properties: properties.clone(), ..PublishOptions::default() };
    let confirm = within(slow, "publish", channel.basic_publish("", &queue, body, publish)).await.unwrap();
    assert_eq!(confirm.within(WAIT).await.unwrap(), Confirmation::NotRequested);
    let (delivery, _) = within(slow, "get", channel.basic_get(&queue, true)).await.unwrap().expect("the message");
    assert_eq!(&delivery.body[..], body);
    assert_eq!(delivery.properties, properties);
    let took = started.elapsed();
    let dripped = proxy.forwarded(dir);
    // Everything before the close went one byte at a time.
    assert!(dripped > 300, "only {dripped} bytes went {dir:?}");
    proxy.resume();
    within(WAIT, "close", conn.close()).await.unwrap();
    println!("{dir:?} dripped: {dripped} bytes one by one, handshake {handshake:?}, round trip {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n3_client_to_broker_one_byte_per_10ms_still_works() {
    n3_round_trip(Direction::ClientToBroker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n3_broker_to_client_one_byte_per_10ms_still_works() {
    n3_round_trip(Direction::BrokerToClient).await;
}

// ---- N5: the link cut during confirmed publishes ------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ack,
    Nack,
    Failed(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n5_link_cut_at_a_random_byte_of_10k_confirmed_publishes() {
    const PUBLISHES: usize = 10_000;
    let mut rng = SeededRng::seeded("n5");
    let queue = unique("n5");
    let admin = connect(direct()).await;
    let admin_channel = within(WAIT, "open", admin.open_channel()).await.unwrap();
    within(WAIT, "declare", admin_channel.queue_declare(&queue, QueueDeclareOptions::default(), Default::default()))
        .await
        .unwrap();

    let proxy = Proxy::to_broker().within(WAIT).await.unwrap();
    let conn = connect(proxy.options().publish_window(1000)).await;
    let channel = within(WAIT, "open", conn.open_channel()).await.unwrap();
    within(WAIT, "confirm.select", channel.confirm_select()).await.unwrap();

    // Where to cut: anywhere in the publishes going out (the smallest publish times their
    // number, so the cut always comes), or in the first acks coming back; FIN or RST.
    let mut smallest = BytesMut::new();
    let publish = basic::Publish { routing_key: ShortStr::try_from(queue.as_str()).unwrap(), ..Default::default() };
    encode_publish(&mut smallest, channel.id(), &publish, &BasicProperties::default(), b"0", 131_072).unwrap();
    let dir = if rng.below(4) == 0 { Direction::BrokerToClient } else { Direction::ClientToBroker };
    let span = match dir {
        Direction::ClientToBroker => (PUBLISHES * smallest.len()) as u64,
        // basic.ack frames are 21 bytes; RabbitMQ sends many of them for 10k publishes.
        Direction::BrokerToClient => 400,
    };
    let at = proxy.forwarded(dir) + rng.below(span);
    let reset = rng.below(2) == 1;
    if reset {
        proxy.reset_after(dir, at);
    } else {
        proxy.cut_after(dir, at);
    }
    println!("n5: {} after {at} bytes {dir:?}", if reset { "RST" } else { "FIN" });

    let started = Instant::now();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; PUBLISHES];
    let mut confirms = Vec::new();
    for (i, outcome) in outcomes.iter_mut().enumerate() {
        let publish = channel.basic_publish("", &queue, i.to_string().into_bytes(), PublishOptions::default());
        match within(WAIT, "publish", publish).await {
            Ok(confirm) => confirms.push((i, confirm)),
            Err(e) => *outcome = Some(Outcome::Failed(e.to_string())),
        }
    }
    for (i, confirm) in confirms {
        let outcome = match within(WAIT, "confirm", confirm).await {
            Ok(Confirmation::Ack) => Outcome::Ack,
            Ok(Confirmation::Nack) => Outcome::Nack,
            Ok(other) => panic!("publish {i}: unexpected confirmation {other:?}"),
            Err(e) => Outcome::Failed(e.to_string()),
        };
        let previous = outcomes[i].replace(outcome);
        assert!(previous.is_none(), "publish {i} resolved twice");
    }
    let took = started.elapsed();
    let closed = within(WAIT, "the cut to close the connection", conn.closed()).await;
    assert!(matches!(closed, Error::Io(_)), "the cut closes the connection with an I/O error: {closed:?}");

    let acked: HashSet<usize> =
        outcomes.iter().enumerate().filter(|(_, o)| *o == &Some(Outcome::Ack)).map(|(i, _)| i).collect();
    let nacked = outcomes.iter().filter(|o| *o == &Some(Outcome::Nack)).count();
    let failed = outcomes.iter().filter(|o| matches!(o, Some(Outcome::Failed(_)))).count();
    assert_eq!(acked.len() + nacked + failed, PUBLISHES, "every publish resolved exactly once");
    assert!(failed > 0, "the cut failed no publish: it came too late to test anything");

    // Every acked message is in the queue, once.
    let ready = within(
        WAIT,
        "passive declare",
        admin_channel.queue_declare(
            &queue,
            QueueDeclareOptions { passive: true, ..Default::default() },
            Default::default(),
        ),
    )
    .await
    .unwrap()
    .message_count;
    let mut consumer = within(
        WAIT,
        "consume",
        admin_channel.basic_consume(&queue, ConsumeOptions { no_ack: true, ..Default::default() }),
    )
    .await
    .unwrap();
    let mut present = HashSet::new();
    for _ in 0..ready {
        let delivery = within(WAIT, "a queued message", consumer.next()).await.unwrap().unwrap();
        let index: usize = std::str::from_utf8(&delivery.body).unwrap().parse().unwrap();
        assert!(index < PUBLISHES, "a message nobody published: {index}");
        assert!(present.insert(index), "message {index} is in the queue twice");
    }
    let missing: Vec<_> = acked.difference(&present).copied().collect();
    assert!(missing.is_empty(), "acked but not in the queue: {missing:?}");
    println!("n5: {} acked, {nacked} nacked, {failed} failed in {took:?}; {} in the queue", acked.len(), present.len());
    // Awaited: a dropped consumer's cancel would race the delete (see the C2 consumer test).
    within(WAIT, "cancel", consumer.cancel()).await.unwrap();
    within(WAIT, "delete", admin_channel.queue_delete(&queue, QueueDeleteOptions::default())).await.unwrap();
    within(WAIT, "close", admin.close()).await.unwrap();
}

// ---- C2: futures dropped at random await points ------------------------------------------------

/// Where a future is dropped: after a timer (0 ms drops it after its first poll), or after
/// a number of scheduler yields.
#[derive(Debug, Clone, Copy)]
enum DropPoint {
    Timer(Duration),
    Yields(u32),
}

impl DropPoint {
    fn random(rng: &mut SeededRng) -> DropPoint {
        if rng.below(2) == 0 {
            DropPoint::Timer(Duration::from_micros(rng.below(2_000)))
        } else {
            DropPoint::Yields(rng.below(40) as u32)
        }
    }

    /// Runs `f` until it finishes or the drop point comes, whichever is first.
    async fn race<F: Future>(self, f: F) -> Option<F::Output> {
        match self {
            DropPoint::Timer(d) => tokio::time::timeout(d, f).await.ok(),
            DropPoint::Yields(n) => {
                let yields = async {
                    for _ in 0..n {
                        tokio::task::yield_now().await;
                    }
                };
                tokio::select! {
                    biased;
                    out = f => Some(out),
                    () = yields => None,
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2_futures_dropped_at_10k_random_await_points_leave_no_half_written_frame() {
    const ROUNDS: usize = 10_000;
    let mut rng = SeededRng::seeded("c2");
    let proxy = Proxy::to_broker().within(WAIT).await.unwrap();
    // Every byte both ways, read back at the end as the broker and the client read them.
    proxy.capture(Direction::ClientToBroker);
    proxy.capture(Direction::BrokerToClient);
    let started = Instant::now();
    let conn = connect(proxy.options()).await;
    let channel = within(WAIT, "open", conn.open_channel()).await.unwrap();
    within(WAIT, "confirm.select", channel.confirm_select()).await.unwrap();
    // Named by us: RabbitMQ refuses to redeclare a server-named (`amq.gen-*`) queue.
    let queue = unique("c2");
    within(WAIT, "declare", channel.queue_declare(&queue, exclusive(), Default::default())).await.unwrap();

    let (mut finished, mut dropped) = (0usize, 0usize);
    for round in 0..ROUNDS {
        let at = DropPoint::random(&mut rng);
        let body = format!("c2 {round}").into_bytes();
        let done = match rng.below(4) {
            0 => at.race(channel.queue_declare(&queue, exclusive(), Default::default())).within(WAIT).await.map(|r| {
                r.unwrap();
            }),
            // The publish dropped; if it got through, its confirm is dropped unawaited.
            1 => at.race(channel.basic_publish("", &queue, body, PublishOptions::default())).within(WAIT).await.map(
                |r| {
                    drop(r.unwrap());
                },
            ),
            // The publish and its confirm, dropped anywhere in between.
            2 => at
                .race(async {
                    channel
                        .basic_publish("", &queue, body, PublishOptions::default())
                        .within(WAIT)
                        .await?
                        .within(WAIT)
                        .await
                })
                .await
                .map(|r| assert_eq!(r.unwrap(), Confirmation::Ack)),
            _ => at.race(channel.basic_get(&queue, true)).within(WAIT).await.map(|r| {
                r.unwrap();
            }),
        };
        if done.is_some() {
            finished += 1;
        } else {
            dropped += 1;
        }
        // Without this, a dead connection would only show at the end.
        assert!(conn.is_open(), "round {round} ({at:?}): {:?}", conn.close_reason());
    }
    println!("c2: {finished} futures finished, {dropped} dropped mid-way");
    assert!(finished > ROUNDS / 20 && dropped > ROUNDS / 20, "the drop points must hit both before and after the end");

    // The broker saw no half-written frame (it would have closed with 501/505): the same
    // connection and channel still work.
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    within(WAIT, "declare", channel.queue_declare(&queue, passive, Default::default())).await.unwrap();
    let confirm = within(WAIT, "publish", channel.basic_publish("", &queue, &b"last"[..], PublishOptions::default()))
        .await
        .unwrap();
    assert_eq!(within(WAIT, "confirm", confirm).await.unwrap(), Confirmation::Ack);
    let other = within(WAIT, "open", conn.open_channel()).await.unwrap();
    within(WAIT, "declare", other.queue_declare(&queue, passive, Default::default())).await.unwrap();
    assert!(conn.is_open() && channel.is_open(), "{:?}", conn.close_reason());
    within(WAIT, "close", conn.close()).await.unwrap();

    // What the client wrote: whole frames, each message's frames together, nothing cut off.
    let frame_max = conn.tuning().frame_max;
    let sent = lepus_tests::wire_check::check_stream(&proxy.captured(Direction::ClientToBroker), true, frame_max)
        .unwrap_or_else(|e| panic!("the client's stream: {e}"));
    // What the broker answered: no close of any kind but the close-ok of ours.
    let received = lepus_tests::wire_check::check_stream(&proxy.captured(Direction::BrokerToClient), false, frame_max)
        .unwrap_or_else(|e| panic!("the broker's stream: {e}"));
    let closes: Vec<String> = received
        .methods
        .iter()
        .filter(|(_, m)| matches!(m, Method::ConnectionClose(_) | Method::ChannelClose(_)))
        .map(|(ch, m)| format!("{} on channel {ch}: {m:?}", m.name()))
        .collect();
    assert!(closes.is_empty(), "the broker closed something: {closes:?}");
    assert!(matches!(received.methods.last(), Some((0, Method::ConnectionCloseOk(_)))), "the close was answered");
    println!(
        "c2: {ROUNDS} rounds in {:?}; the client sent {} whole messages in {} methods, the broker {} in {}",
        started.elapsed(),
        sent.messages,
        sent.methods.len(),
        received.messages,
        received.methods.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2_dropped_consumer_then_a_call_on_its_channel_keeps_the_connection() {
    // Dropping a consumer sends basic.cancel without waiting; the application's next call
    // on the channel goes right behind it. RabbitMQ answers that call before the cancel
    // (its cancel-ok comes from the queue process), which is legal for the broker: the
    // client matches cancel-ok by consumer tag, not by position.
    let proxy = Proxy::to_broker().within(WAIT).await.unwrap();
    let conn = connect(proxy.options()).await;
    for round in 0..10 {
        let channel = within(WAIT, "open", conn.open_channel()).await.unwrap();
        let queue = unique("c2.consumer");
        within(WAIT, "declare", channel.queue_declare(&queue, exclusive(), Default::default())).await.unwrap();
        let consumer = within(WAIT, "consume", channel.basic_consume(&queue, ConsumeOptions::default())).await.unwrap();
        drop(consumer);
        let deleted = within(WAIT, "delete", channel.queue_delete(&queue, QueueDeleteOptions::default())).await;
        assert!(deleted.is_ok(), "round {round}: {deleted:?}");
        within(WAIT, "close", channel.close()).await.unwrap();
    }
    assert!(conn.is_open(), "{:?}", conn.close_reason());
    within(WAIT, "close", conn.close()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_consume_and_a_call_pipelined_on_one_channel_keep_the_connection() {
    // Two tasks use one channel at once: basic.consume, and a call right behind it.
    // RabbitMQ sends consume-ok from the queue process, after the second call's reply: the
    // client matches consume-ok by consumer tag, not by position.
    let proxy = Proxy::to_broker().within(WAIT).await.unwrap();
    let conn = connect(proxy.options()).await;
    for round in 0..10 {
        let channel = within(WAIT, "open", conn.open_channel()).await.unwrap();
        let queue = unique("c1.consume");
        within(WAIT, "declare", channel.queue_declare(&queue, exclusive(), Default::default())).await.unwrap();
        let both = async {
            tokio::join!(
                channel.basic_consume(&queue, ConsumeOptions::default()),
                channel.queue_declare(&queue, exclusive(), Default::default())
            )
        };
        let (consumed, declared) = within(WAIT, "consume and declare", both).await;
        assert!(consumed.is_ok() && declared.is_ok(), "round {round}: {:?} / {:?}", consumed.err(), declared.err());
        within(WAIT, "close", channel.close()).await.unwrap();
    }
    within(WAIT, "close", conn.close()).await.unwrap();
}
