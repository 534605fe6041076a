//! Pub/sub fan-out against the real RabbitMQ: every service gets every event, and a service
//! that was down gets what it missed when it comes back.

use std::sync::{Arc, Mutex};

use lepus::{Confirmation, Error, PublishOptions, ReplyCode};

mod common;
use common::{Cleanup, STEP, Within, connect, unique, wait_until, wait_until_async};
use lepus_patterns::{
    pubsub::FanoutExchange,
    work_queue::{Job, WorkerOptions},
};

type Received = Arc<Mutex<Vec<String>>>;

/// A handler that records each event's body.
fn recorder(into: &Received) -> impl Fn(Job) -> std::future::Ready<()> + Send + Sync + 'static {
    let into = into.clone();
    move |job: Job| {
        into.lock().unwrap().push(job.body_str().unwrap_or("<binary>").to_owned());
        std::future::ready(())
    }
}

#[tokio::test]
async fn every_service_gets_every_event_and_a_service_that_was_down_catches_up() {
    let conn = connect().await;
    let name = unique("fanout");
    let events = FanoutExchange::declare(&conn, &name).within("declaring the exchange").await.unwrap();
    let (email_queue, audit_queue) = (events.queue_for("email"), events.queue_for("audit"));
    let _cleanup = Cleanup { queues: vec![email_queue.clone(), audit_queue.clone()], exchanges: vec![name.clone()] };
    assert_eq!(email_queue, format!("{name}.email"));

    // Both services subscribe; email keeps running, audit goes down.
    let email_got: Received = Arc::default();
    let email = events.subscribe("email").within("subscribing").await.unwrap();
    let email_worker =
        email.worker(WorkerOptions::prefetch(10), recorder(&email_got)).within("starting a worker").await.unwrap();
    let audit_got: Received = Arc::default();
    let audit = events.subscribe("audit").within("subscribing").await.unwrap();
    let audit_worker =
        audit.worker(WorkerOptions::prefetch(10), recorder(&audit_got)).within("starting a worker").await.unwrap();
    assert_eq!(audit.counts().within("the queue's counts").await.unwrap().consumer_count, 1);
    drop(audit_worker);
    wait_until_async(STEP, "the dropped worker's consumer gone", async || {
        audit.counts().await.unwrap().consumer_count == 0
    })
    .await;

    let sent: Vec<String> = (1..=5).map(|i| format!(r#"{{"event":"order.placed","order_id":"ord-{i}"}}"#)).collect();
    for event in &sent {
        assert_eq!(events.publish(event.clone().into_bytes()).within("publishing").await.unwrap(), Confirmation::Ack);
    }

    // The live service got them all, in order.
    wait_until(STEP, "email got every event", || email_got.lock().unwrap().len() == sent.len()).await;
    assert_eq!(*email_got.lock().unwrap(), sent);
    // The one that was down has them waiting, and gets them when it comes back.
    assert!(audit_got.lock().unwrap().is_empty());
    assert_eq!(audit.counts().within("the queue's counts").await.unwrap().message_count, 5);
    let audit = events.subscribe("audit").within("subscribing").await.unwrap();
    let audit_worker =
        audit.worker(WorkerOptions::prefetch(10), recorder(&audit_got)).within("starting a worker").await.unwrap();
    wait_until(STEP, "audit caught up", || audit_got.lock().unwrap().len() == sent.len()).await;
    assert_eq!(*audit_got.lock().unwrap(), sent);

    // Nobody got anything twice: stopped, the workers take nothing more, and they acked
    // exactly what they recorded.
    assert_eq!(email_worker.shutdown().within("stopping a worker").await.unwrap().acked, 5);
    assert_eq!(audit_worker.shutdown().within("stopping a worker").await.unwrap().acked, 5);
    assert_eq!(email_got.lock().unwrap().len(), 5);
    assert_eq!(audit_got.lock().unwrap().len(), 5);

    // Unsubscribing deletes the queue: later events no longer collect there.
    assert_eq!(audit.unsubscribe().within("unsubscribing").await.unwrap(), 0);
    assert!(events.publish(&b"after"[..]).within("publishing").await.unwrap().is_ack());
    assert_eq!(email.counts().within("the queue's counts").await.unwrap().message_count, 1);
    events.delete().within("deleting the exchange").await.unwrap();
    conn.close().within("closing").await.unwrap();
}

#[tokio::test]
async fn events_without_subscribers_and_plain_consumers() {
    let conn = connect().await;
    let name = unique("fanout.plain");
    let events = FanoutExchange::declare(&conn, &name).within("declaring the exchange").await.unwrap();
    let queue = events.queue_for("reader");
    let _cleanup = Cleanup { queues: vec![queue.clone()], exchanges: vec![name.clone()] };

    // Nobody subscribed: acked and dropped, or returned when mandatory.
    assert!(events.publish(&b"into the void"[..]).within("publishing").await.unwrap().is_ack());
    let mandatory = PublishOptions { mandatory: true, ..Default::default() };
    match events.publish_with(&b"anyone?"[..], mandatory).within("publishing").await.unwrap() {
        Confirmation::Returned(returned) => assert_eq!(returned.reply_code, ReplyCode::NO_ROUTE),
        other => panic!("expected the event back, got {other:?}"),
    }

    // A plain consumer acknowledges by itself.
    let reader = events.subscribe("reader").within("subscribing").await.unwrap();
    assert_eq!(reader.queue(), queue);
    assert_eq!(reader.exchange(), name);
    assert!(events.publish(&b"hello"[..]).within("publishing").await.unwrap().is_ack());
    let mut consumer = reader.consume(5).within("consuming").await.unwrap();
    let delivery = consumer.next().within("the delivery").await.unwrap().unwrap();
    assert_eq!(&delivery.body[..], b"hello");
    assert_eq!(delivery.properties.delivery_mode, Some(2), "events are persistent");
    delivery.ack().within("acknowledging").await.unwrap();
    consumer.cancel().within("cancelling").await.unwrap();

    // Names are checked before anything is declared.
    assert!(matches!(events.subscribe("").within("subscribing").await, Err(Error::InvalidOperation(_))));
    assert!(matches!(FanoutExchange::declare(&conn, "").within("declaring").await, Err(Error::InvalidOperation(_))));
    // An exchange of that name but another type: the broker's 406, the connection unharmed.
    let err = lepus_patterns::topic::TopicExchange::declare(&conn, &name).within("redeclaring").await.unwrap_err();
    assert_eq!(err.reply_code(), Some(ReplyCode::PRECONDITION_FAILED), "{err}");
    assert!(events.publish(&b"still fine"[..]).within("publishing").await.unwrap().is_ack());
    conn.close().within("closing").await.unwrap();
}
