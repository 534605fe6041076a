//! Acks, publishes in confirm mode and streams of plain publishes may wait in the
//! connection's command queue without waking the driver when it will look soon anyway
//! (`client/src/command_queue/mod.rs`). These tests hold that to its guarantees: a deferred
//! command reaches the broker in bounded time even when nothing else ever happens on the
//! connection, and a later command (a channel's close) never overtakes it.
//!
//! For acks the broker's view is read with `basic.qos` prefetch 2: of three messages it
//! delivers two and keeps the third ready until an ack frees a slot, so the ready count (a
//! passive `queue.declare`, from a second connection so that its commands do not carry the
//! ack along) drops to 0 exactly when the ack has arrived. For publishes a fake broker that
//! never confirms stands in: RabbitMQ confirms at once, and each confirm would carry the
//! deferred publishes along.

use std::time::Duration;

use bytes::Bytes;
use lepus::{
    Channel, Confirmation, ConsumeOptions, Consumer, Delivery, FieldTable, PublishOptions, QueueDeleteOptions,
};
use lepus_codec::Method;
use lepus_tests::bounded::{Bounded, eventually, within};
use lepus_tests::fake_broker::{FakeBroker, Running};
use lepus_tests::util::{connect, connect_with, ready, unique};
use tokio::sync::oneshot;

/// The most any single expected event may take.
const WAIT: Duration = Duration::from_secs(10);
/// How long a buffered ack may take to reach the broker here: the deferral is 1 ms, the
/// rest is the broker's round trip on a busy machine. Heartbeats (60 s) are far beyond it.
const ACK_WITHIN: Duration = Duration::from_secs(2);

/// A connection with a channel under test, and a second connection whose channel reads the
/// broker's view (its commands never carry the first connection's along).
struct Observed {
    conn: lepus::Connection,
    ch: Channel,
    observer_conn: lepus::Connection,
    observer: Channel,
}

impl Observed {
    async fn open() -> Self {
        let conn = connect().await;
        let ch = conn.open_channel().within(WAIT).await.unwrap();
        let observer_conn = connect().await;
        let observer = observer_conn.open_channel().within(WAIT).await.unwrap();
        Observed { conn, ch, observer_conn, observer }
    }

    /// Deletes `q` and closes both connections.
    async fn close(self, q: &str) {
        self.observer.queue_delete(q, QueueDeleteOptions::default()).within(WAIT).await.unwrap();
        drop(self.ch);
        self.conn.close().within(WAIT).await.unwrap();
        self.observer_conn.close().within(WAIT).await.unwrap();
    }
}

async fn next(consumer: &mut Consumer) -> Delivery {
    match within(WAIT, "a delivery", consumer.next()).await {
        Some(Ok(d)) => d,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

/// A queue of three confirmed messages, consumed with prefetch 2 on `ch`, once the broker
/// has sent the two it may (one left ready, as `observer` sees it).
async fn two_of_three_delivered(ch: &Channel, observer: &Channel, name: &str) -> (String, Consumer) {
    let q = unique(name);
    ch.queue_declare(&q, Default::default(), FieldTable::new()).within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    for i in 0..3u8 {
        let confirm = ch.basic_publish("", &q, Bytes::from(vec![i]), PublishOptions::default()).within(WAIT).await;
        assert_eq!(within(WAIT, "a confirm", confirm.unwrap()).await.unwrap(), Confirmation::Ack);
    }
    ch.basic_qos(2, false).within(WAIT).await.unwrap();
    let consumer = ch.basic_consume(&q, ConsumeOptions::default()).within(WAIT).await.unwrap();
    eventually(WAIT, "two of three delivered", || async { ready(observer, &q).await == 1 }).await;
    (q, consumer)
}

/// An ack made while the consumer still holds an unread delivery (the driver defers then),
/// from another task, with the consumer never polled again and nothing else sent on the
/// connection: the broker still gets it, and delivers the third message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_reaches_the_broker_when_nothing_else_happens() {
    let Observed { conn, ch, observer_conn, observer } = Observed::open().await;
    let (q, mut consumer) = two_of_three_delivered(&ch, &observer, "settle.no_hang").await;

    let first = next(&mut consumer).await;
    assert_eq!(first.body.as_ref(), [0]);
    // The second delivery stays unread for the rest of the test.
    within(WAIT, "the ack task", tokio::spawn(async move { first.ack().await })).await.unwrap().unwrap();
    eventually(ACK_WITHIN, "the broker got the ack and delivered the third", || async {
        ready(&observer, &q).await == 0
    })
    .await;

    drop(consumer);
    Observed { conn, ch, observer_conn, observer }.close(&q).await;
}

/// An ack, then at once the channel's close: the ack arrives first, so of the three only
/// the unacked second and third are requeued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_close_does_not_overtake_its_acks() {
    let Observed { conn, ch, observer_conn, observer } = Observed::open().await;
    let (q, mut consumer) = two_of_three_delivered(&ch, &observer, "settle.close_order").await;

    let first = next(&mut consumer).await;
    first.ack().within(WAIT).await.unwrap();
    ch.close().within(WAIT).await.unwrap();
    eventually(WAIT, "the unacked messages requeued", || async { ready(&observer, &q).await >= 2 }).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(ready(&observer, &q).await, 2, "the close overtook the ack: the first message was requeued");

    drop(consumer);
    Observed { conn, ch, observer_conn, observer }.close(&q).await;
}

/// A fake broker that never confirms and tells when it has read `first` publishes, then
/// one more.
async fn counting_publishes(first: usize) -> (Running<()>, oneshot::Receiver<()>, oneshot::Receiver<()>) {
    let (first_tx, first_rx) = oneshot::channel();
    let (next_tx, next_rx) = oneshot::channel();
    let fake = FakeBroker::new()
        .start(move |mut peer| async move {
            let publish = |_: u16, m: &Method| matches!(m, Method::BasicPublish(_));
            for _ in 0..first {
                peer.wait_for(publish).await?;
            }
            let _ = first_tx.send(());
            peer.wait_for(publish).await?;
            let _ = next_tx.send(());
            peer.serve_until_closed().await?;
            Ok(())
        })
        .await
        .unwrap();
    (fake, first_rx, next_rx)
}

/// A publish in confirm mode made while the driver is armed (a confirm is awaited), by a
/// task that then waits for something else entirely, with a broker that never confirms:
/// the broker still gets it, at the deferral's timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_publish_reaches_the_broker_when_nothing_else_happens() {
    let (fake, _first, second_rx) = counting_publishes(1).await;
    let conn = connect_with(fake.options()).await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let first = ch.basic_publish("", "q", Bytes::from_static(b"1"), PublishOptions::default()).within(WAIT).await;
    // The driver writes the first, then parks armed: its confirm is awaited.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = ch.basic_publish("", "q", Bytes::from_static(b"2"), PublishOptions::default()).within(WAIT).await;
    within(ACK_WITHIN, "the second publish at the broker", second_rx).await.unwrap();

    drop((first, second));
    conn.close().within(WAIT).await.unwrap();
    fake.finish().await;
}

/// A stream of plain publishes makes the driver arm: it takes the next ones by itself
/// rather than being woken for each handful. A publish made just after the stream reached
/// the broker, by a task that then waits for something else entirely, still reaches it, at
/// the latest at the deferral's timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_after_a_stream_reaches_the_broker_when_nothing_else_happens() {
    const N: usize = 2000;
    let (fake, stream_rx, last_rx) = counting_publishes(N).await;
    let conn = connect_with(fake.options()).await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    // All queued in one poll: the driver takes them in a few large batches.
    let stream = (0..N).map(|i| ch.basic_publish("", "q", Bytes::from(i.to_string()), PublishOptions::default()));
    for published in futures_util::future::join_all(stream).within(WAIT).await {
        drop(published.unwrap());
    }
    within(WAIT, "the stream at the broker", stream_rx).await.unwrap();
    // The driver took a stream and parked armed (unless its timer already fired).
    let last = ch.basic_publish("", "q", Bytes::from_static(b"last"), PublishOptions::default()).within(WAIT).await;
    drop(last.unwrap());
    within(ACK_WITHIN, "the publish after the stream at the broker", last_rx).await.unwrap();

    conn.close().within(WAIT).await.unwrap();
    fake.finish().await;
}

/// Publishes in confirm mode, then at once the channel's close: the close does not overtake
/// them, so all of them are in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_close_does_not_overtake_deferred_publishes() {
    const N: usize = 500;
    let Observed { conn, ch, observer_conn, observer } = Observed::open().await;
    let q = unique("deferred.publish_order");
    observer.queue_declare(&q, Default::default(), FieldTable::new()).within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let mut confirms = Vec::with_capacity(N);
    for i in 0..N {
        let body = Bytes::from(i.to_string());
        confirms.push(ch.basic_publish("", &q, body, PublishOptions::default()).within(WAIT).await.unwrap());
    }
    ch.close().within(WAIT).await.unwrap();
    for confirm in confirms {
        // Confirmed, or failed with the close that came after: either way answered.
        let _ = within(WAIT, "a confirm", confirm).await;
    }
    eventually(WAIT, "every publish in the queue", || async { ready(&observer, &q).await == N as u32 }).await;

    Observed { conn, ch, observer_conn, observer }.close(&q).await;
}

/// Everything that defers at once, on one connection, on the multi-thread runtime: four
/// publishers in confirm mode (two await each confirm, two keep a window of them), and a
/// consumer acking each delivery with prefetch 50. Every confirm is an ack, every message
/// arrives once, and each publisher's messages arrive in the order it published them:
/// nothing is stranded in the queue, lost or reordered by the deferral.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_and_a_consumer_deferring_at_once_lose_and_reorder_nothing() {
    const PUBLISHERS: u32 = 4;
    const EACH: u32 = 2_000;
    let conn = connect().await;
    let q = unique("deferred.mixed");
    let setup = conn.open_channel().within(WAIT).await.unwrap();
    setup.queue_declare(&q, Default::default(), FieldTable::new()).within(WAIT).await.unwrap();
    let consume_ch = conn.open_channel().within(WAIT).await.unwrap();
    consume_ch.basic_qos(50, false).within(WAIT).await.unwrap();
    let mut consumer = consume_ch.basic_consume(&q, ConsumeOptions::default()).within(WAIT).await.unwrap();
    let consuming = tokio::spawn(async move {
        let mut expected = [0u32; PUBLISHERS as usize];
        for _ in 0..PUBLISHERS * EACH {
            let delivery = next(&mut consumer).await;
            let text = std::str::from_utf8(&delivery.body).unwrap().to_owned();
            let (publisher, seq) = text.split_once(':').unwrap();
            let (publisher, seq): (usize, u32) = (publisher.parse().unwrap(), seq.parse().unwrap());
            assert_eq!(seq, expected[publisher], "publisher {publisher}'s messages out of order");
            expected[publisher] += 1;
            delivery.ack().await.unwrap();
        }
        consumer
    });
    let mut publishing = Vec::new();
    for publisher in 0..PUBLISHERS {
        let ch = conn.open_channel().within(WAIT).await.unwrap();
        let q = q.clone();
        publishing.push(tokio::spawn(async move {
            ch.confirm_select().await.unwrap();
            let mut window = std::collections::VecDeque::new();
            for seq in 0..EACH {
                let body = Bytes::from(format!("{publisher}:{seq}"));
                let confirm = ch.basic_publish("", &q, body, PublishOptions::default()).await.unwrap();
                if publisher % 2 == 0 {
                    assert_eq!(confirm.await.unwrap(), Confirmation::Ack);
                } else {
                    window.push_back(confirm);
                    if window.len() == 100 {
                        assert_eq!(window.pop_front().unwrap().await.unwrap(), Confirmation::Ack);
                    }
                }
            }
            for confirm in window {
                assert_eq!(confirm.await.unwrap(), Confirmation::Ack);
            }
        }));
    }
    for publisher in publishing {
        within(WAIT * 6, "a publisher's confirms", publisher).await.unwrap();
    }
    let consumer = within(WAIT * 6, "every delivery", consuming).await.unwrap();
    eventually(WAIT, "every message acked", || async { ready(&setup, &q).await == 0 }).await;

    drop(consumer);
    setup.queue_delete(&q, QueueDeleteOptions::default()).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}
