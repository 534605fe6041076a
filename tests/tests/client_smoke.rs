//! The client against the real RabbitMQ: the basic round trip every user does first.

use std::time::Duration;

use lepus::{Confirmation, Connection, ConsumeOptions, PublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lepus_tests::bounded::Bounded;

/// The longest any single client operation may take here before it counts as a hang.
const WAIT: Duration = Duration::from_secs(10);

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("lepus.test.{prefix}.{}.{nanos}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_declare_publish_confirm_consume_ack_close() {
    let conn = Connection::connect(&url()).within(WAIT).await.unwrap();
    assert!(conn.server_capability("publisher_confirms"));
    let channel = conn.open_channel().within(WAIT).await.unwrap();
    let q = unique("smoke");
    let declared =
        channel.queue_declare(&q, QueueDeclareOptions::default(), Default::default()).within(WAIT).await.unwrap();
    assert_eq!(declared.name, q);
    channel.confirm_select().within(WAIT).await.unwrap();
    let mut confirms = Vec::new();
    for i in 0..100u32 {
        confirms.push(
            channel
                .basic_publish("", &q, i.to_string().into_bytes(), PublishOptions::default())
                .within(WAIT)
                .await
                .unwrap(),
        );
    }
    for c in confirms {
        assert_eq!(c.within(WAIT).await.unwrap(), Confirmation::Ack);
    }
    let mut consumer = channel.basic_consume(&q, ConsumeOptions::default()).within(WAIT).await.unwrap();
    for i in 0..100u32 {
        let d = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(&d.body[..], i.to_string().as_bytes());
        d.ack().within(WAIT).await.unwrap();
    }
    consumer.cancel().within(WAIT).await.unwrap();
    assert!(consumer.next().within(WAIT).await.is_none(), "the stream ends after our cancel");
    let left = channel.queue_delete(&q, QueueDeleteOptions::default()).within(WAIT).await.unwrap();
    assert_eq!(left, 0, "every message was acked");
    channel.close().within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
    assert!(!conn.is_open());
}

#[tokio::test]
async fn a_404_closes_only_the_channel_with_the_reply_code() {
    let conn = Connection::connect(&url()).within(WAIT).await.unwrap();
    let channel = conn.open_channel().within(WAIT).await.unwrap();
    let err = channel
        .queue_declare(
            &unique("missing"),
            QueueDeclareOptions { passive: true, ..Default::default() },
            Default::default(),
        )
        .within(WAIT)
        .await
        .unwrap_err();
    lepus_tests::util::assert_channel_error(&err, lepus::ReplyCode::NOT_FOUND);
    assert!(!channel.is_open());
    let other = conn.open_channel().within(WAIT).await.unwrap();
    other
        .queue_declare("", QueueDeclareOptions { exclusive: true, ..Default::default() }, Default::default())
        .within(WAIT)
        .await
        .unwrap();
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection_cleanly() {
    let conn = Connection::connect(&url()).within(WAIT).await.unwrap();
    let channel = conn.open_channel().within(WAIT).await.unwrap();
    let mut events = conn.events();
    let q = unique("drop");
    channel
        .queue_declare(&q, QueueDeclareOptions { exclusive: true, ..Default::default() }, Default::default())
        .within(WAIT)
        .await
        .unwrap();
    drop(channel);
    drop(conn);
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.expect("closed in time").unwrap();
    let lepus::ConnectionEvent::Closed(reason) = event else { panic!("{event:?}") };
    assert_eq!(reason.reply_code(), Some(lepus::ReplyCode::REPLY_SUCCESS), "{reason}");
    assert!(reason.to_string().contains("every handle was dropped"), "{reason}");
}

#[tokio::test]
async fn plain_and_amqplain_both_log_in() {
    for mechanism in [lepus::AuthMechanism::Plain, lepus::AuthMechanism::AmqPlain] {
        let options = lepus::ConnectionOptions::from_uri(&url()).unwrap().auth_mechanism(mechanism);
        let conn =
            Connection::connect_with(options).within(WAIT).await.unwrap_or_else(|e| panic!("{mechanism:?}: {e}"));
        let channel = conn.open_channel().within(WAIT).await.unwrap();
        channel
            .queue_declare("", QueueDeclareOptions { exclusive: true, ..Default::default() }, Default::default())
            .within(WAIT)
            .await
            .unwrap();
        conn.close().within(WAIT).await.unwrap();
    }
    // And a wrong password through AMQPLAIN is refused with the broker's text.
    let options = lepus::ConnectionOptions::from_uri(&url())
        .unwrap()
        .credentials("guest", "wrong")
        .auth_mechanism(lepus::AuthMechanism::AmqPlain);
    let err = Connection::connect_with(options).within(WAIT).await.unwrap_err();
    assert!(matches!(&err, lepus::Error::AccessRefused(text) if text.contains("AMQPLAIN")), "{err}");
}

#[tokio::test]
async fn deliveries_buffered_in_a_dropped_consumer_go_back_to_the_queue() {
    let conn = Connection::connect(&url()).within(WAIT).await.unwrap();
    let channel = conn.open_channel().within(WAIT).await.unwrap();
    let q = unique("dropped");
    channel
        .queue_declare(&q, QueueDeclareOptions { exclusive: true, ..Default::default() }, Default::default())
        .within(WAIT)
        .await
        .unwrap();
    channel.confirm_select().within(WAIT).await.unwrap();
    for i in 0..20u32 {
        channel
            .basic_publish("", &q, i.to_be_bytes().to_vec(), PublishOptions::default())
            .within(WAIT)
            .await
            .unwrap()
            .within(WAIT)
            .await
            .unwrap();
    }
    let mut consumer = channel.basic_consume(&q, ConsumeOptions::default()).within(WAIT).await.unwrap();
    // Read one, so the rest are surely buffered, then drop the consumer; the channel stays.
    let first = consumer.next().within(WAIT).await.unwrap().unwrap();
    first.ack().within(WAIT).await.unwrap();
    drop(consumer);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let declared = channel.queue_declare(&q, passive, Default::default()).within(WAIT).await.unwrap();
        if declared.message_count == 19 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {} of 19 back in the queue", declared.message_count);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(channel.is_open());
    conn.close().within(WAIT).await.unwrap();
}
