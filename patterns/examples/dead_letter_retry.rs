//! Retries with exponential backoff and jitter waited out by the broker, a dead-letter
//! queue for what keeps failing, and the DLQ tools: count, peek, replay, purge.
//!
//! `cargo run -p lepus-patterns --example dead_letter_retry`
//! (broker: `AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`)

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use lepus::{BasicProperties, Connection, PublishOptions, ShortStr};
use lepus_patterns::{
    dead_letter::DeadLetterTopology,
    dlq::DeadLetterQueue,
    retry::{HandlerFailure, RetryConsumer, RetryOptions, RetryPolicy},
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let conn = Connection::connect(&url).await?;
    let channel = conn.open_channel().await?;

    // 3 retries after ~100, ~200, ~400 ms (±10 %), then the DLQ, which keeps messages 24 h.
    let policy = RetryPolicy::exponential(Duration::from_millis(100), 3);
    let topology = DeadLetterTopology::new(format!("lepus.example.orders.{}", std::process::id()))
        .durable(false)
        .dlq_message_ttl(Duration::from_secs(24 * 3600))
        .dlq_max_length(10_000)
        .retry_policy(policy);
    topology.declare(&channel).await?;
    let (dlx, dlq) = (topology.dead_letter_exchange_name(), topology.dead_letter_queue_name());
    println!("declared {} with DLX {dlx} and DLQ {dlq}", topology.queue());
    for (name, delay) in topology.retry_queues() {
        println!("  retry queue {name} (TTL {delay:?})");
    }

    let started = Instant::now();
    let fixed = Arc::new(AtomicBool::new(false));
    let bug_fixed = fixed.clone();
    let consumer = RetryConsumer::start(&conn, &topology, RetryOptions::default(), move |message| {
        let body = String::from_utf8_lossy(&message.body).into_owned();
        let fixed = bug_fixed.load(Ordering::Relaxed);
        async move {
            let at = started.elapsed().as_millis();
            let outcome = match body.as_str() {
                "order flaky" if message.retries < 2 => Err(HandlerFailure::retry("inventory service timed out")),
                "order buggy" if !fixed => Err(HandlerFailure::retry("NullPointerException in tax rules")),
                "order ok" | "order flaky" | "order buggy" => Ok(()),
                _ => Err(HandlerFailure::permanent("cannot parse the order")),
            };
            let said = match &outcome {
                Ok(()) => "ok".to_owned(),
                Err(f) => format!("failed: {f}"),
            };
            println!("{at:>5} ms  {body:<13} attempt {} -> {said}", message.retries + 1);
            outcome
        }
    })
    .await?;

    channel.confirm_select().await?;
    for (i, body) in ["order ok", "order flaky", "order buggy", "order ???"].into_iter().enumerate() {
        let properties =
            BasicProperties { message_id: Some(ShortStr::try_from(format!("m-{i}"))?), ..Default::default() };
        let options = PublishOptions { mandatory: true, properties };
        channel.basic_publish("", topology.queue(), body, options).await?.await?;
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    while consumer.stats().succeeded < 2 || consumer.stats().dead_lettered < 2 {
        if Instant::now() > deadline {
            return Err(format!("the messages did not settle: {:?}", consumer.stats()).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("consumer: {:?}", consumer.stats());

    let dlq = DeadLetterQueue::for_topology(&conn, &topology);
    println!("DLQ holds {} messages:", dlq.count().await?);
    for letter in dlq.peek(10).await? {
        println!(
            "  {} {:?}: {} after {} retries (first failure at {:?}, last at {:?}), from exchange {:?} key {:?}",
            letter.message_id().unwrap_or("?"),
            String::from_utf8_lossy(&letter.body),
            letter.reason().unwrap_or("?"),
            letter.retries,
            letter.first_failure,
            letter.last_failure,
            letter.original_exchange.as_deref().unwrap_or("?"),
            letter.original_routing_key.as_deref().unwrap_or("?"),
        );
    }

    println!("fixing the bug, replaying m-2");
    fixed.store(true, Ordering::Relaxed);
    let report = dlq.replay(10, |letter| letter.message_id() == Some("m-2")).await?;
    println!("replay: {} replayed, {} left alone, {} failed", report.replayed, report.skipped, report.failed);
    let deadline = Instant::now() + Duration::from_secs(5);
    while consumer.stats().succeeded < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("consumer: {:?}", consumer.stats());
    println!("purged {} unparseable message(s); DLQ now holds {}", dlq.purge().await?, dlq.count().await?);

    consumer.shutdown().await?;
    let deleted = topology.delete(&channel).await?;
    println!("deleted the topology ({deleted} messages left in it)");
    conn.close().await?;
    Ok(())
}
