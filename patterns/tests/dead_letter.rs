//! Dead-lettering with broker-side retries against the real RabbitMQ: a handler failing a
//! few times then succeeding (delays growing), a handler always failing (the message ends
//! in the DLQ with the lepus headers), what the broker dead-letters on its own (TTL,
//! max-length), and the DLQ tools. Every test declares a topology of its own and deletes it.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use lepus::{
    BasicProperties, Connection, ExchangeDeclareOptions, ExchangeKind, FieldTable, FieldValue, PublishOptions, ShortStr,
};

mod common;
use common::{Cleanup, STEP, Within, connect, ready, unique, wait_until, wait_until_async};
use lepus_patterns::{
    dead_letter::{DeadLetterTopology, headers},
    dlq::DeadLetterQueue,
    retry::{HandlerFailure, RetryConsumer, RetryOptions, RetryPolicy},
};

/// Declares the topology, and returns a guard that deletes it (its queues and its
/// dead-letter exchange) when the test ends, however it ends.
async fn declare(conn: &Connection, topology: &DeadLetterTopology) -> Cleanup {
    let declaring = async {
        let ch = conn.open_channel().await.unwrap();
        topology.declare(&ch).await.unwrap();
        ch.close().await.unwrap();
    };
    declaring.within("declaring the topology").await;
    let mut queues: Vec<String> = topology.retry_queues().into_iter().map(|(name, _)| name).collect();
    queues.push(topology.queue().to_owned());
    queues.push(topology.dead_letter_queue_name().to_owned());
    Cleanup { queues, exchanges: vec![topology.dead_letter_exchange_name().to_owned()] }
}

/// Deletes the topology: the test's own check that it can. The guard deletes again, which
/// the broker allows (deleting a missing queue or exchange is not an error).
async fn delete(conn: &Connection, topology: &DeadLetterTopology, cleanup: Cleanup) {
    let deleting = async {
        let ch = conn.open_channel().await.unwrap();
        topology.delete(&ch).await.unwrap();
        ch.close().await.unwrap();
    };
    deleting.within("deleting the topology").await;
    drop(cleanup);
}

async fn publish(conn: &Connection, exchange: &str, routing_key: &str, body: &str, message_id: &str) {
    let publishing = async {
        let ch = conn.open_channel().await.unwrap();
        ch.confirm_select().await.unwrap();
        let properties =
            BasicProperties { message_id: Some(ShortStr::try_from(message_id).unwrap()), ..Default::default() };
        let options = PublishOptions { mandatory: true, properties };
        let confirm = ch.basic_publish(exchange, routing_key, body.to_owned().into_bytes(), options).await.unwrap();
        assert!(confirm.await.unwrap().is_ack());
        ch.close().await.unwrap();
    };
    publishing.within("publishing").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_failing_three_times_then_succeeding_is_retried_with_growing_delays() {
    let conn = connect().await;
    let policy = RetryPolicy::exponential(Duration::from_millis(50), 4).without_jitter();
    let topology = DeadLetterTopology::new(unique("flaky")).durable(false).retry_policy(policy);
    let cleanup = declare(&conn, &topology).await;
    let names: Vec<String> = topology.retry_queues().into_iter().map(|(n, _)| n).collect();
    let q = topology.queue().to_owned();
    assert_eq!(names, [50, 100, 200, 400].map(|ms| format!("{q}.retry.{ms}")));

    // (when, retries the handler was told, x-death entries)
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let seen = attempts.clone();
    let consumer = RetryConsumer::start(&conn, &topology, RetryOptions::default(), move |message| {
        let mut seen = seen.lock().unwrap();
        seen.push((Instant::now(), message.retries, lepus_patterns::dead_letter::x_death(&message.properties)));
        let failures = seen.len();
        async move { if failures <= 3 { Err(HandlerFailure::retry(format!("flaky #{failures}"))) } else { Ok(()) } }
    })
    .within("starting the consumer")
    .await
    .unwrap();

    publish(&conn, "", &q, "work", "m-1").await;
    wait_until(STEP, "the fourth attempt succeeds", || consumer.stats().succeeded == 1).await;
    let stats = consumer.stats();
    assert_eq!((stats.retried, stats.dead_lettered, stats.rejected), (3, 0, 0));

    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 4);
    let retries: Vec<u32> = attempts.iter().map(|a| a.1).collect();
    assert_eq!(retries, [0, 1, 2, 3], "the count travels with the message");
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1].0 - w[0].0).collect();
    for (gap, delay) in gaps.iter().zip([50u64, 100, 200]) {
        let delay = Duration::from_millis(delay);
        assert!(*gap >= delay, "retried after {gap:?}, before its {delay:?}");
        assert!(*gap < delay + Duration::from_secs(1), "retried after {gap:?}, long after its {delay:?}");
    }
    assert!(gaps[0] < gaps[1] && gaps[1] < gaps[2], "delays grow: {gaps:?}");
    // The broker did the waiting: the last attempt's x-death names each retry queue once.
    let deaths = &attempts[3].2;
    for name in &names[..3] {
        let death = deaths.iter().find(|d| &d.queue == name).unwrap_or_else(|| panic!("no x-death for {name}"));
        assert_eq!((death.reason.as_str(), death.count), ("expired", 1));
    }

    for queue in names.iter().chain([&q, &topology.dead_letter_queue_name().to_owned()]) {
        assert_eq!(ready(&conn, queue).await, 0, "{queue} is empty");
    }
    consumer.shutdown().within("stopping the consumer").await.unwrap();
    delete(&conn, &topology, cleanup).await;
    conn.close().within("closing").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_always_failing_sends_the_message_to_the_dlq_with_the_story_in_headers() {
    let conn = connect().await;
    let exchange = unique("orders-exchange");
    let _exchange_cleanup = Cleanup { queues: Vec::new(), exchanges: vec![exchange.clone()] };
    let ch = conn.open_channel().within("opening a channel").await.unwrap();
    ch.exchange_declare(&exchange, ExchangeKind::Direct, ExchangeDeclareOptions::default(), FieldTable::new())
        .within("declaring the exchange")
        .await
        .unwrap();
    let policy = RetryPolicy { jitter_percent: 20, ..RetryPolicy::exponential(Duration::from_millis(50), 2) };
    let topology = DeadLetterTopology::new(unique("doomed"))
        .durable(false)
        .dlq_message_ttl(Duration::from_secs(24 * 3600))
        .dlq_max_length(1000)
        .retry_policy(policy)
        .bind(&exchange, "order.placed");
    let cleanup = declare(&conn, &topology).await;
    assert_eq!(topology.retry_queues().len(), 6, "3 jitter steps for each of 2 delays");

    let attempts = Arc::new(AtomicU32::new(0));
    let counted = attempts.clone();
    let consumer = RetryConsumer::start(&conn, &topology, RetryOptions::default(), move |message| {
        counted.fetch_add(1, Ordering::Relaxed);
        async move {
            if message.body.as_ref() == b"malformed" {
                return Err(HandlerFailure::permanent("cannot parse"));
            }
            Err(HandlerFailure::retry(format!("payment service down (attempt {})", message.retries + 1)))
        }
    })
    .within("starting the consumer")
    .await
    .unwrap();

    let started = lepus_now();
    publish(&conn, &exchange, "order.placed", "order 42", "m-42").await;
    wait_until(STEP, "dead-lettered", || consumer.stats().dead_lettered == 1).await;
    assert_eq!(attempts.load(Ordering::Relaxed), 3, "one attempt and two retries");
    assert_eq!(consumer.stats().retried, 2);

    let dlq = DeadLetterQueue::for_topology(&conn, &topology);
    assert_eq!(dlq.count().within("counting the DLQ").await.unwrap(), 1);
    let letters = dlq.peek(10).within("peeking at the DLQ").await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(&letter.body[..], b"order 42");
    assert_eq!(letter.message_id(), Some("m-42"));
    assert_eq!(letter.error.as_deref(), Some("payment service down (attempt 3)"));
    assert_eq!(letter.reason(), letter.error.as_deref());
    assert_eq!(letter.retries, 2);
    let (first, last) = (letter.first_failure.unwrap(), letter.last_failure.unwrap());
    assert!(started <= first && first <= last && last <= lepus_now(), "{started} {first} {last}");
    assert_eq!(letter.original_exchange.as_deref(), Some(exchange.as_str()));
    assert_eq!(letter.original_routing_key.as_deref(), Some("order.placed"));
    assert_eq!(letter.origin(), Some((exchange.as_str(), "order.placed")));
    let queue_header = letter.properties.headers.as_ref().unwrap().get(headers::QUEUE);
    assert_eq!(queue_header.and_then(FieldValue::as_str), Some(topology.queue()));
    let expired: u64 = letter.deaths.iter().filter(|d| d.reason == "expired").map(|d| d.count).sum();
    assert_eq!(expired, 2, "two stays in retry queues: {:?}", letter.deaths);
    assert_eq!(dlq.count().within("counting the DLQ").await.unwrap(), 1, "peeking leaves it there");

    // A permanent failure skips the retries.
    publish(&conn, &exchange, "order.placed", "malformed", "m-bad").await;
    wait_until(STEP, "dead-lettered at once", || consumer.stats().dead_lettered == 2).await;
    assert_eq!(attempts.load(Ordering::Relaxed), 4);
    let letters = dlq.peek(10).within("peeking at the DLQ").await.unwrap();
    assert_eq!(letters.len(), 2);
    assert_eq!((letters[1].message_id(), letters[1].retries), (Some("m-bad"), 0));
    assert_eq!(letters[1].error.as_deref(), Some("cannot parse"));

    consumer.shutdown().within("stopping the consumer").await.unwrap();
    delete(&conn, &topology, cleanup).await;
    ch.exchange_delete(&exchange, false).within("deleting the exchange").await.unwrap();
    conn.close().within("closing").await.unwrap();
}

fn lepus_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_count_peek_replay_and_purge() {
    let conn = connect().await;
    let topology = DeadLetterTopology::new(unique("tools"))
        .durable(false)
        .retry_policy(RetryPolicy::exponential(Duration::from_millis(20), 1).without_jitter());
    let cleanup = declare(&conn, &topology).await;
    let q = topology.queue().to_owned();

    // A consumer that fails everything until it is "fixed".
    let broken = Arc::new(AtomicBool::new(true));
    let replayed_seen = Arc::new(Mutex::new(Vec::new()));
    let (is_broken, seen) = (broken.clone(), replayed_seen.clone());
    let consumer = RetryConsumer::start(&conn, &topology, RetryOptions::default(), move |message| {
        let fail = is_broken.load(Ordering::Relaxed);
        if !fail {
            let replayed = message.properties.headers.as_ref().and_then(|h| h.get(headers::REPLAYED)).cloned();
            seen.lock().unwrap().push((message.properties.message_id.clone(), replayed, message.retries));
        }
        async move { if fail { Err(HandlerFailure::permanent("bug #7")) } else { Ok(()) } }
    })
    .within("starting the consumer")
    .await
    .unwrap();
    for i in 0..4 {
        publish(&conn, "", &q, &format!("job {i}"), &format!("m-{i}")).await;
    }
    wait_until(STEP, "all dead-lettered", || consumer.stats().dead_lettered == 4).await;

    let dlq = DeadLetterQueue::for_topology(&conn, &topology).with_timeout(Duration::from_secs(5));
    assert_eq!(dlq.count().within("counting the DLQ").await.unwrap(), 4);
    let ids = |letters: &[lepus_patterns::dlq::DeadLetter]| {
        letters.iter().map(|l| l.message_id().unwrap_or("?").to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(ids(&dlq.peek(2).within("peeking at the DLQ").await.unwrap()), ["m-0", "m-1"]);
    let all = dlq.peek(100).within("peeking at the DLQ").await.unwrap();
    assert_eq!(ids(&all), ["m-0", "m-1", "m-2", "m-3"], "peeking keeps the order");
    assert!(all[0].redelivered, "peeked before: marked redelivered");
    assert_eq!(dlq.count().within("counting the DLQ").await.unwrap(), 4);

    // Fixed: replay one chosen message, then the head, then purge the rest.
    broken.store(false, Ordering::Relaxed);
    let report = dlq.replay(10, |l| l.message_id() == Some("m-2")).within("replaying").await.unwrap();
    assert_eq!((report.replayed, report.skipped, report.failed), (1, 3, 0), "{report:?}");
    wait_until(STEP, "the replayed message handled", || consumer.stats().succeeded == 1).await;
    let left = dlq.peek(100).within("peeking at the DLQ").await.unwrap();
    assert_eq!(ids(&left), ["m-0", "m-1", "m-3"], "the others kept their places");

    let report = dlq.replay_one().within("replaying").await.unwrap();
    assert_eq!(report.replayed, 1);
    wait_until(STEP, "the head handled", || consumer.stats().succeeded == 2).await;
    {
        let seen = replayed_seen.lock().unwrap();
        let seen: Vec<(Option<&str>, Option<&FieldValue>, u32)> =
            seen.iter().map(|(id, r, n)| (id.as_ref().and_then(|i| i.as_str()), r.as_ref(), *n)).collect();
        let yes = FieldValue::Bool(true);
        assert_eq!(seen, [(Some("m-2"), Some(&yes), 0), (Some("m-0"), Some(&yes), 0)], "marked, count reset");
    }
    assert_eq!(dlq.count().within("counting the DLQ").await.unwrap(), 2);

    assert_eq!(dlq.purge().within("purging").await.unwrap(), 2);
    assert_eq!(dlq.count().within("counting the DLQ").await.unwrap(), 0);
    assert!(dlq.peek(10).within("peeking at the DLQ").await.unwrap().is_empty());
    assert_eq!(dlq.replay_all().within("replaying").await.unwrap().replayed, 0);

    consumer.shutdown().within("stopping the consumer").await.unwrap();
    delete(&conn, &topology, cleanup).await;
    conn.close().within("closing").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_broker_dead_letters_itself_lands_in_the_dlq_and_replays_to_its_origin() {
    let conn = connect().await;
    // No consumer: messages wait 300 ms at most, and only 2 fit.
    let topology = DeadLetterTopology::new(unique("expiring"))
        .durable(false)
        .message_ttl(Duration::from_millis(300))
        .max_length(2);
    let cleanup = declare(&conn, &topology).await;
    let q = topology.queue().to_owned();
    for i in 0..3 {
        publish(&conn, "", &q, &format!("m {i}"), &format!("m-{i}")).await;
    }
    let dlq = DeadLetterQueue::for_topology(&conn, &topology);
    wait_until_async(STEP, "all three dead-lettered", async || dlq.count().await.unwrap() == 3).await;
    let letters = dlq.peek(10).within("peeking at the DLQ").await.unwrap();
    let reasons: Vec<(Option<&str>, Option<&str>)> = letters.iter().map(|l| (l.message_id(), l.reason())).collect();
    assert_eq!(
        reasons,
        [(Some("m-0"), Some("maxlen")), (Some("m-1"), Some("expired")), (Some("m-2"), Some("expired"))]
    );
    for letter in &letters {
        assert_eq!(letter.error, None, "no lepus headers: the broker did it");
        assert_eq!(letter.origin(), Some(("", q.as_str())), "the origin comes from x-death");
    }

    let report = dlq.replay_all().within("replaying").await.unwrap();
    assert_eq!((report.replayed, report.failed, report.skipped), (3, 0, 0), "{report:?}");
    // Back through the work queue, where the same limits send them to the DLQ again.
    wait_until_async(STEP, "dead-lettered again", async || dlq.count().await.unwrap() == 3).await;
    for letter in dlq.peek(10).within("peeking at the DLQ").await.unwrap() {
        let replayed = letter.properties.headers.as_ref().and_then(|h| h.get(headers::REPLAYED));
        assert_eq!(replayed, Some(&FieldValue::Bool(true)), "{:?}", letter.message_id());
        assert_eq!(letter.deaths.len(), 1, "x-death started over: {:?}", letter.deaths);
    }

    delete(&conn, &topology, cleanup).await;
    conn.close().within("closing").await.unwrap();
}
