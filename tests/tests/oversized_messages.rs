//! R4 of `/work/shared/RELIABILITY.md` against the real RabbitMQ: a consumer whose inbound
//! message cap is 1 MiB is sent a 2 MiB message. It gets a clear "message too large" error;
//! the message is not lost (the broker still holds it, whole); and it is not redelivered to
//! the same consumer in a hot loop.
//!
//! The consuming connection goes through the in-test proxy, which counts the bytes the broker
//! sends it: each delivery of the message is 2 MiB of them.

use std::time::Duration;

use bytes::Bytes;
use lepus::{
    Channel, Confirmation, Connection, ConsumeOptions, Consumer, Error, PublishOptions, QueueArguments,
    QueueDeclareOptions, QueueDeleteOptions, codec::DecodeError,
};
use lepus_tests::{
    bounded::{Bounded, eventually},
    proxy::{Direction, Proxy},
    util::{connect, connect_with, options, ready, unique},
};
use tokio::time::Instant;

/// The longest any single client operation may take here before it counts as a hang.
const WAIT: Duration = Duration::from_secs(10);
const CAP: u64 = 1 << 20;
const SIZE: usize = 2 << 20;
/// How long redeliveries are counted for.
const OBSERVE: Duration = Duration::from_secs(3);

/// A body whose every byte depends on its position, so a truncated or shifted copy shows.
fn body() -> Bytes {
    (0..SIZE).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
}

/// The 2 MiB message, confirmed into a queue of its own, and a consumer capped at 1 MiB on
/// it through the proxy.
struct Oversized {
    /// The publisher's connection and channel; they own the queue.
    admin: Connection,
    admin_channel: Channel,
    queue: String,
    proxy: Proxy,
    consumer_conn: Connection,
    consumer: Consumer,
    /// Bytes the broker had sent the consumer's connection before the publish.
    bytes_before: u64,
}

async fn oversized_message() -> Oversized {
    let admin = connect().await;
    let admin_channel = admin.open_channel().within(WAIT).await.unwrap();
    admin_channel.confirm_select().within(WAIT).await.unwrap();
    let queue = unique("r4");
    // Not exclusive (the consumer is on another connection); x-expires removes it should the
    // test fail before its delete.
    let expires = QueueArguments::new().expires(Duration::from_secs(90)).build().unwrap();
    admin_channel.queue_declare(&queue, QueueDeclareOptions::default(), expires).within(WAIT).await.unwrap();

    let proxy = Proxy::to_broker().within(WAIT).await.unwrap();
    let consumer_conn = connect_with(proxy.options().max_message_size(CAP)).await;
    let consuming = consumer_conn.open_channel().within(WAIT).await.unwrap();
    let consumer = consuming.basic_consume(&queue, ConsumeOptions::default()).within(WAIT).await.unwrap();
    let bytes_before = proxy.forwarded(Direction::BrokerToClient);

    let confirm = admin_channel.basic_publish("", &queue, body(), PublishOptions::default()).within(WAIT).await;
    assert_eq!(confirm.unwrap().within(WAIT).await.unwrap(), Confirmation::Ack, "the broker took the 2 MiB message");
    Oversized { admin, admin_channel, queue, proxy, consumer_conn, consumer, bytes_before }
}

/// Asserts that `item` is the clear "message too large" error, with the size and the cap.
#[track_caller]
fn assert_too_large(item: Option<Result<lepus::Delivery, Error>>) {
    match item {
        Some(Err(Error::Decode(DecodeError::MessageTooLarge { size, max }))) => {
            assert_eq!((size, max), (SIZE as u64, CAP), "the error names the size and the cap");
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
}

impl Oversized {
    /// Cancels the consumer, then shows the message back in the queue and fetches it whole
    /// on a connection with room for it; deletes the queue.
    async fn assert_still_queued_and_clean_up(self) {
        let Oversized { admin, admin_channel, queue, consumer_conn, consumer, .. } = self;
        consumer.cancel().within(WAIT).await.unwrap();
        // The broker's count, not the client's view: ready again once nobody holds it.
        eventually(WAIT, "the 2 MiB message ready in its queue", || async { ready(&admin_channel, &queue).await == 1 })
            .await;
        let roomy = connect_with(options().max_message_size(4 * CAP)).await;
        let getter = roomy.open_channel().within(WAIT).await.unwrap();
        let (got, left) = getter.basic_get(&queue, true).within(WAIT).await.unwrap().expect("the 2 MiB message");
        assert!(got.body == body(), "the message came back whole");
        assert!(got.redelivered, "it had been delivered before");
        assert_eq!(left, 0);
        assert!(
            consumer_conn.is_open(),
            "the too-large message left the connection open: {:?}",
            consumer_conn.close_reason()
        );
        admin_channel.queue_delete(&queue, QueueDeleteOptions::default()).within(WAIT).await.unwrap();
        for conn in [roomy, consumer_conn, admin] {
            conn.close().within(WAIT).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_a_2mib_message_over_a_1mib_cap_is_a_clear_error_and_stays_in_the_queue() {
    let mut case = oversized_message().await;
    assert_too_large(case.consumer.next().within(WAIT).await);
    assert!(case.consumer_conn.is_open(), "{:?}", case.consumer_conn.close_reason());
    case.assert_still_queued_and_clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_a_2mib_message_over_a_1mib_cap_is_not_redelivered_in_a_hot_loop() {
    let mut case = oversized_message().await;
    assert_too_large(case.consumer.next().within(WAIT).await);
    // Whatever the consumer yields meanwhile is counted; it must not be a delivery.
    let until = Instant::now() + OBSERVE;
    let mut errors = 0;
    while let Ok(item) = tokio::time::timeout_at(until, case.consumer.next()).await {
        match item {
            Some(Err(Error::Decode(DecodeError::MessageTooLarge { .. }))) => errors += 1,
            None => break,
            other => panic!("after the too-large error: {other:?}"),
        }
    }
    let sent = case.proxy.forwarded(Direction::BrokerToClient) - case.bytes_before;
    let deliveries = sent / SIZE as u64;
    println!(
        "R4: {deliveries} deliveries of the 2 MiB message ({sent} bytes) in the first {OBSERVE:?}; {errors} more errors"
    );
    // The first delivery, and at most one more a second.
    assert!(deliveries <= 1 + OBSERVE.as_secs(), "redelivered in a hot loop: {deliveries} deliveries in {OBSERVE:?}");
    case.assert_still_queued_and_clean_up().await;
}
