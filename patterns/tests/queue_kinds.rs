//! Priority, TTL and bounded queues against the real RabbitMQ: a high-priority message
//! overtakes waiting low-priority ones, messages expire, full queues drop the oldest or
//! refuse the newest.

use std::time::Duration;

use lepus::{Channel, Confirmation, Connection, Error, Overflow, QueueArguments, QueueDeclareOptions};

mod common;
use common::{Cleanup, unique, url};
use lepus_patterns::queue_kinds::{BoundedQueue, Bounds, PriorityQueue, TtlQueue};

/// A connection and a channel in confirm mode. The tests' queues are exclusive: they go
/// away with the connection, whatever happens.
async fn channel() -> (Connection, Channel) {
    let conn = match Connection::connect(&url()).await {
        Ok(conn) => conn,
        Err(e) => panic!("cannot connect to the test broker at {} (is it running?): {e}", url()),
    };
    let channel = conn.open_channel().await.unwrap();
    channel.confirm_select().await.unwrap();
    (conn, channel)
}

const EXCLUSIVE: QueueDeclareOptions =
    QueueDeclareOptions { passive: false, durable: false, exclusive: true, auto_delete: false, nowait: false };

/// Bodies left in `queue`, in delivery order, with their priorities.
async fn drain(channel: &Channel, queue: &str) -> Vec<(String, Option<u8>)> {
    let mut got = Vec::new();
    while let Some((delivery, _)) = channel.basic_get(queue, true).await.unwrap() {
        got.push((String::from_utf8(delivery.body.to_vec()).unwrap(), delivery.properties.priority));
    }
    got
}

#[tokio::test]
async fn a_high_priority_message_overtakes_waiting_low_priority_ones() {
    let (conn, channel) = channel().await;
    let name = unique("priority");
    let queue = PriorityQueue::declare_with(&channel, &name, 10, EXCLUSIVE, QueueArguments::new()).await.unwrap();
    assert_eq!((queue.name(), queue.max_priority()), (name.as_str(), 10));
    for i in 1..=5 {
        let verdict = queue.publish(&channel, format!("low {i}").into_bytes(), 1).await.unwrap().await.unwrap();
        assert_eq!(verdict, Confirmation::Ack);
    }
    assert!(queue.publish(&channel, &b"normal"[..], 5).await.unwrap().await.unwrap().is_ack());
    // Above the maximum: capped at it.
    assert!(queue.publish(&channel, &b"urgent"[..], 200).await.unwrap().await.unwrap().is_ack());
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
    let other = conn.open_channel().await.unwrap();
    let err = PriorityQueue::declare_with(&other, &name, 5, EXCLUSIVE, QueueArguments::new()).await.unwrap_err();
    assert_eq!(err.reply_code(), Some(lepus::ReplyCode::PRECONDITION_FAILED), "{err}");
    assert!(matches!(PriorityQueue::declare(&channel, &name, 0).await, Err(Error::InvalidOperation(_))));
    conn.close().await.unwrap();
}

#[tokio::test]
async fn messages_expire_after_the_queues_ttl_or_their_own() {
    let (conn, channel) = channel().await;
    let short = unique("ttl.short");
    let queue = TtlQueue::declare_with(&channel, &short, Duration::from_millis(100), EXCLUSIVE, QueueArguments::new())
        .await
        .unwrap();
    assert_eq!(queue.ttl(), Duration::from_millis(100));
    assert!(queue.publish(&channel, &b"fleeting"[..]).await.unwrap().await.unwrap().is_ack());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(drain(&channel, &short).await.is_empty(), "expired after 100 ms");

    let long = unique("ttl.long");
    let queue = TtlQueue::declare_with(&channel, &long, Duration::from_secs(60), EXCLUSIVE, QueueArguments::new())
        .await
        .unwrap();
    assert!(
        queue
            .publish_expiring(&channel, &b"own ttl"[..], Duration::from_millis(50))
            .await
            .unwrap()
            .await
            .unwrap()
            .is_ack()
    );
    assert!(queue.publish(&channel, &b"stays"[..]).await.unwrap().await.unwrap().is_ack());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(drain(&channel, &long).await, [("stays".to_owned(), None)], "the shorter TTL wins");
    conn.close().await.unwrap();
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
    .await
    .unwrap();
    assert_eq!(queue.bounds().max_length, Some(2));
    for body in ["1", "2", "3"] {
        assert!(queue.publish(&channel, body.as_bytes().to_vec()).await.unwrap().await.unwrap().is_ack());
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
    .await
    .unwrap();
    assert_eq!(queue.publish(&channel, &b"first"[..]).await.unwrap().await.unwrap(), Confirmation::Ack);
    assert_eq!(queue.publish(&channel, &b"second"[..]).await.unwrap().await.unwrap(), Confirmation::Nack);
    let bodies: Vec<String> = drain(&channel, &inbox).await.into_iter().map(|(b, _)| b).collect();
    assert_eq!(bodies, ["first"], "the newest was refused");

    let bytes = unique("bounded.bytes");
    let by_size = Bounds { max_length: None, max_length_bytes: Some(10), overflow: Overflow::RejectPublish };
    let queue = BoundedQueue::declare_with(&channel, &bytes, by_size, EXCLUSIVE, QueueArguments::new()).await.unwrap();
    assert!(queue.publish(&channel, &b"12345678"[..]).await.unwrap().await.unwrap().is_ack());
    assert_eq!(queue.publish(&channel, &b"12345"[..]).await.unwrap().await.unwrap(), Confirmation::Nack);

    let unbounded = Bounds { max_length: None, max_length_bytes: None, overflow: Overflow::DropHead };
    let err = BoundedQueue::declare(&channel, &unique("bounded.none"), unbounded).await.unwrap_err();
    assert!(matches!(err, Error::InvalidOperation(_)), "{err}");
    conn.close().await.unwrap();
}

#[tokio::test]
async fn the_plain_declares_make_durable_queues() {
    let (conn, channel) = channel().await;
    let name = unique("kinds.durable");
    let _cleanup = Cleanup::queues(vec![name.clone()]);
    let queue = PriorityQueue::declare(&channel, &name, 3).await.unwrap();
    // Durable: redeclaring it as non-durable is refused.
    let other = conn.open_channel().await.unwrap();
    let plain = QueueArguments::new().max_priority(3).build().unwrap();
    let err = other.queue_declare(&name, QueueDeclareOptions::default(), plain).await.unwrap_err();
    assert_eq!(err.reply_code(), Some(lepus::ReplyCode::PRECONDITION_FAILED), "{err}");
    assert!(queue.publish(&channel, &b"kept"[..], 2).await.unwrap().await.unwrap().is_ack());
    let (delivery, _) = channel.basic_get(&name, true).await.unwrap().unwrap();
    assert_eq!(delivery.properties.delivery_mode, Some(2), "published persistent");
    conn.close().await.unwrap();
}
