//! Priority, TTL and bounded queues against the real RabbitMQ: a high-priority message
//! overtakes waiting low-priority ones, messages expire, full queues drop the oldest or
//! refuse the newest.

use std::time::{Duration, Instant};

use lepus::{Channel, Confirmation, Connection, Error, Overflow, QueueArguments, QueueDeclareOptions, ReplyCode};

mod common;
use common::{Cleanup, STEP, Within, connect, ready, unique, wait_until_async};
use lepus_patterns::queue_kinds::{BoundedQueue, Bounds, PriorityQueue, TtlQueue};

/// A connection and a channel in confirm mode. The tests' queues are exclusive: they go
/// away with the connection, whatever happens.
async fn channel() -> (Connection, Channel) {
    let conn = connect().await;
    let channel = conn.open_channel().within("opening a channel").await.unwrap();
    channel.confirm_select().within("confirm mode").await.unwrap();
    (conn, channel)
}

/// Waits for a publish's confirm and checks it.
async fn confirmed<F, C>(publish: F, want: Confirmation)
where
    F: std::future::Future<Output = Result<C, Error>>,
    C: std::future::Future<Output = Result<Confirmation, Error>>,
{
    let confirm = publish.within("publishing").await.unwrap();
    assert_eq!(confirm.within("the broker's confirm").await.unwrap(), want);
}

const EXCLUSIVE: QueueDeclareOptions =
    QueueDeclareOptions { passive: false, durable: false, exclusive: true, auto_delete: false, nowait: false };

/// Bodies left in `queue`, in delivery order, with their priorities.
async fn drain(channel: &Channel, queue: &str) -> Vec<(String, Option<u8>)> {
    let mut got = Vec::new();
    while let Some((delivery, _)) = channel.basic_get(queue, true).within("getting a message").await.unwrap() {
        got.push((String::from_utf8(delivery.body.to_vec()).unwrap(), delivery.properties.priority));
    }
    got
}

#[tokio::test]
async fn a_high_priority_message_overtakes_waiting_low_priority_ones() {
    let (conn, channel) = channel().await;
    let name = unique("priority");
    let queue = PriorityQueue::declare_with(&channel, &name, 10, EXCLUSIVE, QueueArguments::new())
        .within("declaring")
        .await
        .unwrap();
    assert_eq!((queue.name(), queue.max_priority()), (name.as_str(), 10));
    for i in 1..=5 {
        confirmed(queue.publish(&channel, format!("low {i}").into_bytes(), 1), Confirmation::Ack).await;
    }
    confirmed(queue.publish(&channel, &b"normal"[..], 5), Confirmation::Ack).await;
    // Above the maximum: capped at it.
    confirmed(queue.publish(&channel, &b"urgent"[..], 200), Confirmation::Ack).await;
    let got = drain(&channel, &name).await;
    let want = [
        ("urgent", Some(10)),
        ("normal", Some(5)),
        ("low 1", Some(1)),
        ("low 2", Some(1)),
        ("low 3", Some(1)),
        ("low 4", Some(1)),
        ("low 5", Some(1)),
    ];
    assert_eq!(got, want.map(|(b, p)| (b.to_owned(), p)));

    // The broker remembers: the same name with another maximum is refused.
    let other = conn.open_channel().within("opening a channel").await.unwrap();
    let err = PriorityQueue::declare_with(&other, &name, 5, EXCLUSIVE, QueueArguments::new())
        .within("redeclaring")
        .await
        .unwrap_err();
    assert_eq!(err.reply_code(), Some(ReplyCode::PRECONDITION_FAILED), "{err}");
    let refused = PriorityQueue::declare(&channel, &name, 0).within("declaring").await;
    assert!(matches!(refused, Err(Error::InvalidOperation(_))), "{refused:?}");
    conn.close().within("closing").await.unwrap();
}

#[tokio::test]
async fn messages_expire_after_the_queues_ttl_or_their_own() {
    let (conn, channel) = channel().await;
    let short = unique("ttl.short");
    let ttl = Duration::from_millis(100);
    let queue = TtlQueue::declare_with(&channel, &short, ttl, EXCLUSIVE, QueueArguments::new())
        .within("declaring")
        .await
        .unwrap();
    assert_eq!(queue.ttl(), ttl);
    let published = Instant::now();
    confirmed(queue.publish(&channel, &b"fleeting"[..]), Confirmation::Ack).await;
    wait_until_async(STEP, "the message expiring", async || ready(&conn, &short).await == 0).await;
    assert!(published.elapsed() >= ttl, "gone after {:?}, before its TTL", published.elapsed());
    assert!(drain(&channel, &short).await.is_empty(), "expired after 100 ms");

    let long = unique("ttl.long");
    let queue = TtlQueue::declare_with(&channel, &long, Duration::from_secs(60), EXCLUSIVE, QueueArguments::new())
        .within("declaring")
        .await
        .unwrap();
    let own = Duration::from_millis(50);
    let published = Instant::now();
    confirmed(queue.publish_expiring(&channel, &b"own ttl"[..], own), Confirmation::Ack).await;
    confirmed(queue.publish(&channel, &b"stays"[..]), Confirmation::Ack).await;
    wait_until_async(STEP, "the message with its own TTL expiring", async || ready(&conn, &long).await == 1).await;
    assert!(published.elapsed() >= own, "gone after {:?}, before its TTL", published.elapsed());
    assert_eq!(drain(&channel, &long).await, [("stays".to_owned(), None)], "the shorter TTL wins");
    conn.close().within("closing").await.unwrap();
}

#[tokio::test]
async fn a_full_queue_drops_the_oldest_or_refuses_the_newest() {
    let (conn, channel) = channel().await;
    let latest = unique("bounded.drop-head");
    let queue = BoundedQueue::declare_with(
        &channel,
        &latest,
        Bounds::messages(2, Overflow::DropHead),
        EXCLUSIVE,
        QueueArguments::new(),
    )
    .within("declaring")
    .await
    .unwrap();
    assert_eq!(queue.bounds().max_length, Some(2));
    for body in ["1", "2", "3"] {
        confirmed(queue.publish(&channel, body.as_bytes().to_vec()), Confirmation::Ack).await;
    }
    let bodies: Vec<String> = drain(&channel, &latest).await.into_iter().map(|(b, _)| b).collect();
    assert_eq!(bodies, ["2", "3"], "the oldest made room");

    let inbox = unique("bounded.reject");
    let queue = BoundedQueue::declare_with(
        &channel,
        &inbox,
        Bounds::messages(1, Overflow::RejectPublish),
        EXCLUSIVE,
        QueueArguments::new(),
    )
    .within("declaring")
    .await
    .unwrap();
    confirmed(queue.publish(&channel, &b"first"[..]), Confirmation::Ack).await;
    confirmed(queue.publish(&channel, &b"second"[..]), Confirmation::Nack).await;
    let bodies: Vec<String> = drain(&channel, &inbox).await.into_iter().map(|(b, _)| b).collect();
    assert_eq!(bodies, ["first"], "the newest was refused");

    let bytes = unique("bounded.bytes");
    let by_size = Bounds { max_length: None, max_length_bytes: Some(10), overflow: Overflow::RejectPublish };
    let queue = BoundedQueue::declare_with(&channel, &bytes, by_size, EXCLUSIVE, QueueArguments::new())
        .within("declaring")
        .await
        .unwrap();
    confirmed(queue.publish(&channel, &b"12345678"[..]), Confirmation::Ack).await;
    confirmed(queue.publish(&channel, &b"12345"[..]), Confirmation::Nack).await;

    let unbounded = Bounds { max_length: None, max_length_bytes: None, overflow: Overflow::DropHead };
    let err =
        BoundedQueue::declare(&channel, &unique("bounded.none"), unbounded).within("declaring").await.unwrap_err();
    assert!(matches!(err, Error::InvalidOperation(_)), "{err}");
    conn.close().within("closing").await.unwrap();
}

#[tokio::test]
async fn the_plain_declares_make_durable_queues() {
    let (conn, channel) = channel().await;
    let name = unique("kinds.durable");
    let _cleanup = Cleanup::queues(vec![name.clone()]);
    let queue = PriorityQueue::declare(&channel, &name, 3).within("declaring").await.unwrap();
    // Durable: redeclaring it as non-durable is refused.
    let other = conn.open_channel().within("opening a channel").await.unwrap();
    let plain = QueueArguments::new().max_priority(3).build().unwrap();
    let err =
        other.queue_declare(&name, QueueDeclareOptions::default(), plain).within("redeclaring").await.unwrap_err();
    assert_eq!(err.reply_code(), Some(ReplyCode::PRECONDITION_FAILED), "{err}");
    confirmed(queue.publish(&channel, &b"kept"[..], 2), Confirmation::Ack).await;
    let (delivery, _) = channel.basic_get(&name, true).within("getting the message").await.unwrap().unwrap();
    assert_eq!(delivery.properties.delivery_mode, Some(2), "published persistent");
    conn.close().within("closing").await.unwrap();
}
