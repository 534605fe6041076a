//! Pub/sub with a fanout exchange: two services subscribe with their names; the analytics
//! service goes down, three events are published, the email service gets them live, and
//! analytics gets them when it comes back. Then cleanup.
//!
//! `cargo run --example fanout` (broker: `AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`)

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lepus::Connection;
use lepus_patterns::{
    pubsub::FanoutExchange,
    work_queue::{Job, WorkerOptions},
};

/// A service's handler: prints each event and counts it.
fn service(
    name: &'static str,
    seen: &Arc<AtomicUsize>,
) -> impl Fn(Job) -> std::future::Ready<()> + Send + Sync + use<> {
    let seen = seen.clone();
    move |job: Job| {
        println!("  {name} received {}", job.body_str().unwrap_or("?"));
        seen.fetch_add(1, Ordering::SeqCst);
        std::future::ready(())
    }
}

async fn wait_for(counter: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter.load(Ordering::SeqCst) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let conn = Connection::connect(&url).await?;
    let name = format!("lepus.example.order-events.{}", std::process::id());
    let events = FanoutExchange::declare(&conn, &name).await?;
    println!("declared fanout exchange {name}");

    let (email_seen, analytics_seen) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let email = events.subscribe("email").await?;
    let email_worker = email.worker(WorkerOptions::prefetch(10), service("email", &email_seen)).await?;
    let analytics = events.subscribe("analytics").await?;
    println!("subscribed: {} and {}", email.queue(), analytics.queue());
    let analytics_worker = analytics.worker(WorkerOptions::prefetch(10), service("analytics", &analytics_seen)).await?;
    analytics_worker.shutdown().await?;
    println!("analytics is down");

    for i in 1..=3 {
        let event = format!(r#"{{"event":"order.placed","order_id":"ord-{i}"}}"#);
        println!("published {event}: {:?}", events.publish(event.clone().into_bytes()).await?);
    }
    wait_for(&email_seen, 3).await;
    println!("analytics has {} events waiting in its queue", analytics.counts().await?.message_count);

    println!("analytics comes back");
    let analytics_worker = analytics.worker(WorkerOptions::prefetch(10), service("analytics", &analytics_seen)).await?;
    wait_for(&analytics_seen, 3).await;
    email_worker.shutdown().await?;
    analytics_worker.shutdown().await?;
    println!(
        "email got {}, analytics got {}",
        email_seen.load(Ordering::SeqCst),
        analytics_seen.load(Ordering::SeqCst)
    );

    email.unsubscribe().await?;
    analytics.unsubscribe().await?;
    events.delete().await?;
    println!("deleted the queues and the exchange");
    conn.close().await?;
    Ok(())
}
