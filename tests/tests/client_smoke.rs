//! The client against the real RabbitMQ: the basic round trip every user does first.

use std::time::Duration;

use lepus::{Confirmation, Connection, ConsumeOptions, PublishOptions, QueueDeclareOptions, QueueDeleteOptions};

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("lepus.test.{prefix}.{}.{nanos}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_declare_publish_confirm_consume_ack_close() {
    let conn = Connection::connect(&url()).await.unwrap();
    assert!(conn.server_capability("publisher_confirms"));
    let channel = conn.open_channel().await.unwrap();
    let q = unique("smoke");
    let declared = channel.queue_declare(&q, QueueDeclareOptions::default(), Default::default()).await.unwrap();
    assert_eq!(declared.name, q);
    channel.confirm_select().await.unwrap();
    let mut confirms = Vec::new();
    for i in 0..100u32 {
        confirms
            .push(channel.basic_publish("", &q, i.to_string().into_bytes(), PublishOptions::default()).await.unwrap());
    }
    for c in confirms {
        assert_eq!(c.await.unwrap(), Confirmation::Ack);
    }
    let mut consumer = channel.basic_consume(&q, ConsumeOptions::default()).await.unwrap();
    for i in 0..100u32 {
        let d = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(&d.body[..], i.to_string().as_bytes());
        d.ack().await.unwrap();
    }
    consumer.cancel().await.unwrap();
    assert!(consumer.next().await.is_none(), "the stream ends after our cancel");
    let left = channel.queue_delete(&q, QueueDeleteOptions::default()).await.unwrap();
    assert_eq!(left, 0, "every message was acked");
    channel.close().await.unwrap();
    conn.close().await.unwrap();
    assert!(!conn.is_open());
}

#[tokio::test]
async fn a_404_closes_only_the_channel_with_the_reply_code() {
    let conn = Connection::connect(&url()).await.unwrap();
    let channel = conn.open_channel().await.unwrap();
    let err = channel
        .queue_declare(
            &unique("missing"),
            QueueDeclareOptions { passive: true, ..Default::default() },
            Default::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.reply_code(), Some(lepus::ReplyCode::NOT_FOUND), "{err}");
    assert!(!channel.is_open());
    let other = conn.open_channel().await.unwrap();
    other
        .queue_declare("", QueueDeclareOptions { exclusive: true, ..Default::default() }, Default::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection_cleanly() {
    let conn = Connection::connect(&url()).await.unwrap();
    let channel = conn.open_channel().await.unwrap();
    let mut events = conn.events();
    let q = unique("drop");
    channel
        .queue_declare(&q, QueueDeclareOptions { exclusive: true, ..Default::default() }, Default::default())
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
        let conn = Connection::connect_with(options).await.unwrap_or_else(|e| panic!("{mechanism:?}: {e}"));
        let channel = conn.open_channel().await.unwrap();
        channel
            .queue_declare("", QueueDeclareOptions { exclusive: true, ..Default::default() }, Default::default())
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    // And a wrong password through AMQPLAIN is refused with the broker's text.
    let options = lepus::ConnectionOptions::from_uri(&url())
        .unwrap()
        .credentials("guest", "wrong")
        .auth_mechanism(lepus::AuthMechanism::AmqPlain);
    let err = Connection::connect_with(options).await.unwrap_err();
    assert!(matches!(&err, lepus::Error::AccessRefused(text) if text.contains("AMQPLAIN")), "{err}");
}

#[tokio::test]
async fn deliveries_buffered_in_a_dropped_consumer_go_back_to_the_queue() {
    let conn = Connection::connect(&url()).await.unwrap();
    let channel = conn.open_channel().await.unwrap();
    let q = unique("dropped");
    channel
        .queue_declare(&q, QueueDeclareOptions { exclusive: true, ..Default::default() }, Default::default())
        .await
        .unwrap();
    channel.confirm_select().await.unwrap();
    for i in 0..20u32 {
        channel
            .basic_publish("", &q, i.to_be_bytes().to_vec(), PublishOptions::default())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut consumer = channel.basic_consume(&q, ConsumeOptions::default()).await.unwrap();
    // Read one, so the rest are surely buffered, then drop the consumer; the channel stays.
    let first = consumer.next().await.unwrap().unwrap();
    first.ack().await.unwrap();
    drop(consumer);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let declared = channel.queue_declare(&q, passive, Default::default()).await.unwrap();
        if declared.message_count == 19 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {} of 19 back in the queue", declared.message_count);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(channel.is_open());
    conn.close().await.unwrap();
}
