//! Health checks against the real RabbitMQ: a live connection, a queue's message and
//! consumer counts, a missing queue reported as unhealthy with the broker's 404 text — on a
//! throwaway channel, so the caller's channels stay open — and a closed connection.

use std::time::Duration;

use lepus::{ConsumeOptions, PublishOptions, QueueDeclareOptions, ReplyCode};

mod common;
use common::{Within, connect, unique};
use lepus_patterns::health::{HealthCheck, QueueExpectations, Status};

const EXCLUSIVE: QueueDeclareOptions =
    QueueDeclareOptions { passive: false, durable: false, exclusive: true, auto_delete: false, nowait: false };

#[tokio::test]
async fn a_queue_reports_its_messages_and_consumers_against_expectations() {
    let conn = connect().await;
    let channel = conn.open_channel().within("opening a channel").await.unwrap();
    let queue = unique("health.queue");
    channel.queue_declare(&queue, EXCLUSIVE, Default::default()).within("declaring").await.unwrap();
    channel.confirm_select().within("confirm mode").await.unwrap();
    for i in 0..3 {
        let confirm =
            channel.basic_publish("", &queue, vec![i], PublishOptions::default()).within("publishing").await.unwrap();
        assert!(confirm.within("the broker's confirm").await.unwrap().is_ack());
    }

    let plain = HealthCheck::new(&conn).queue(&queue).within("checking the queue").await;
    assert_eq!(plain.status, Status::Healthy, "{plain:?}");
    assert_eq!((plain.message_count, plain.consumer_count, plain.reason), (Some(3), Some(0), None));

    let expectations = QueueExpectations { max_messages: Some(1), min_consumers: Some(1) };
    let strict = HealthCheck::new(&conn).expect_queue(&queue, expectations);
    let health = strict.queue(&queue).within("checking the queue").await;
    assert_eq!(health.status, Status::Degraded, "{health:?}");
    assert_eq!(health.reason.as_deref(), Some("3 messages waiting, more than 1; 0 consumers, fewer than 1"));

    // A consumer attaches and takes one message (prefetch 1, not acked): 2 ready, 1 consumer.
    let consuming = conn.open_channel().within("opening a channel").await.unwrap();
    consuming.basic_qos(1, false).within("setting the prefetch").await.unwrap();
    let mut consumer = consuming.basic_consume(&queue, ConsumeOptions::default()).within("consuming").await.unwrap();
    let _held = consumer.next().within("a delivery").await.unwrap().unwrap();
    let strict = strict.expect_queue(&queue, QueueExpectations { max_messages: Some(2), min_consumers: Some(1) });
    let health = strict.queue(&queue).within("checking the queue").await;
    assert_eq!(health.status, Status::Healthy, "{health:?}");
    assert_eq!((health.message_count, health.consumer_count), (Some(2), Some(1)));
    conn.close().within("closing").await.unwrap();
}

#[tokio::test]
async fn a_missing_queue_is_unhealthy_with_the_404_text_and_the_callers_channel_survives() {
    let conn = connect().await;
    let mine = conn.open_channel().within("opening a channel").await.unwrap();
    let existing = unique("health.exists");
    mine.queue_declare(&existing, EXCLUSIVE, Default::default()).within("declaring").await.unwrap();
    let missing = unique("health.missing");

    let report = HealthCheck::new(&conn).check(&[&existing, &missing]).within("checking").await;
    assert_eq!(report.status, Status::Unhealthy, "{report:#?}");
    assert!(!report.is_healthy());
    assert_eq!(report.connection.status, Status::Healthy, "{:?}", report.connection);
    assert!(report.connection.round_trip.is_some());
    assert!(report.connection.server.as_deref().is_some_and(|s| s.starts_with("RabbitMQ")), "{:?}", report.connection);
    let [ok, gone] = &report.queues[..] else { panic!("two queues asked for: {report:#?}") };
    assert_eq!((ok.queue.as_str(), ok.status), (existing.as_str(), Status::Healthy));
    assert_eq!((gone.queue.as_str(), gone.status), (missing.as_str(), Status::Unhealthy));
    assert_eq!(gone.reply_code, Some(ReplyCode::NOT_FOUND));
    let reason = gone.reason.as_deref().unwrap_or_default();
    assert_eq!(reason, format!("NOT_FOUND - no queue '{missing}' in vhost '/'"));
    assert_eq!((gone.message_count, gone.consumer_count), (None, None));

    // The 404 closed the throwaway channel only.
    assert!(mine.is_open() && conn.is_open());
    mine.queue_declare(&existing, QueueDeclareOptions { passive: true, ..Default::default() }, Default::default())
        .within("declaring passively")
        .await
        .unwrap();
    conn.close().within("closing").await.unwrap();
}

#[tokio::test]
async fn a_closed_connection_is_unhealthy_and_says_why() {
    let conn = connect().await;
    let check = HealthCheck::new(&conn).timeout(Duration::from_secs(2));
    assert_eq!(check.connection().within("checking the connection").await.status, Status::Healthy);
    conn.close().within("closing").await.unwrap();
    let health = check.connection().within("checking the connection").await;
    assert_eq!(health.status, Status::Unhealthy, "{health:?}");
    assert!(health.reason.as_deref().unwrap_or_default().starts_with("connection closed"), "{health:?}");
    let queue = check.queue("anything").within("checking a queue").await;
    assert_eq!(queue.status, Status::Unhealthy);
    // The reason the application closed it with: 200, and the same text as the connection's.
    assert_eq!((queue.reply_code, queue.message_count), (Some(ReplyCode::REPLY_SUCCESS), None), "{queue:?}");
    assert_eq!(
        queue.reason,
        health.reason.map(|r| r.trim_start_matches("connection closed: ").to_owned()),
        "{queue:?}"
    );
    assert_eq!(check.check(&["anything"]).within("checking").await.status, Status::Unhealthy);
}
