//! The event bus with consumer groups, as the RabbitMQ event-bus tutorials demo it:
//! publish/subscribe, two workers sharing one group's events, several groups each getting
//! every event, projections over several event types, and a handler that keeps failing —
//! retried, then dead-lettered — with the statistics.
//!
//! `cargo run -p lepus-patterns --example event_bus`
//! (broker: `AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`)

use std::{
    future::ready,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lepus::Connection;
use lepus_patterns::{
    event_bus::{ConsumerGroup, Event, EventBus, EventBusOptions, EventBusStats, GroupOptions},
    retry::{HandlerFailure, RetryPolicy},
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: String,
    customer_id: String,
    total_cents: u64,
}

impl Event for OrderPlaced {
    const AGGREGATE: &'static str = "order";
    const NAME: &'static str = "placed";
}

#[derive(Debug, Serialize, Deserialize)]
struct OrderShipped {
    order_id: String,
    tracking_number: String,
}

impl Event for OrderShipped {
    const AGGREGATE: &'static str = "order";
    const NAME: &'static str = "shipped";
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn order(i: u64) -> OrderPlaced {
    OrderPlaced { order_id: format!("ord-{i}"), customer_id: format!("cust-{i}"), total_cents: 1_000 * (i + 1) }
}

fn dollars(cents: u64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}

fn heading(title: &str) {
    println!("\n{}\n{title}\n{}", "=".repeat(60), "=".repeat(60));
}

/// Polls until `done` holds, for at most 10 s.
async fn wait_until(what: &str, done: impl Fn() -> bool) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("{what}: not within 10 s").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn print_stats(stats: &EventBusStats) {
    println!("  published {}, consumed {}", stats.published, stats.consumed);
    println!("  succeeded {}, failed {}", stats.succeeded, stats.failed);
    println!("  retried {}, dead-lettered {}", stats.retried, stats.dead_lettered);
    println!("  reconnections {} (no automatic recovery yet)", stats.reconnections);
    let ago = |t: Option<std::time::SystemTime>| {
        t.and_then(|t| t.elapsed().ok()).map_or_else(|| "never".to_owned(), |d| format!("{} ms ago", d.as_millis()))
    };
    println!("  last publish {}, last consume {}", ago(stats.last_publish_at), ago(stats.last_consume_at));
}

/// Demo 1: one event, one handler.
async fn basic(conn: &Connection, prefix: &str) -> Result<(), Error> {
    heading("Demo 1: Basic Publish/Subscribe");
    let bus = EventBus::declare(conn, &format!("{prefix}.demo1"), EventBusOptions::default()).await?;
    let received = Arc::new(Mutex::new(Vec::new()));
    let seen = received.clone();
    let group = bus.group("demo-consumers").on(move |event: OrderPlaced, meta| {
        println!("  Received: {} ({}) id {}", meta.routing_key, event.order_id, meta.message_id.unwrap_or_default());
        ready(seen.lock().map(|mut s| s.push(event.order_id)).map_err(|_| HandlerFailure::retry("poisoned")))
    });
    let member = group.start().await?;
    println!("Subscribed a handler to {} (queue {})", OrderPlaced::routing_key(), group.queue());
    println!("Publishing OrderPlaced ord-1");
    let published = bus.publish(&order(1)).await?;
    println!("Published {} as {}", published.routing_key, published.message_id);
    wait_until("the event arrives", || received.lock().map_or(0, |r| r.len()) == 1).await?;
    member.shutdown().await?;
    println!("Received {} event(s)", received.lock().map_or(0, |r| r.len()));
    bus.shutdown().await?;
    cleanup(&bus, &[group]).await
}

/// Demo 2: two workers in one group share its events.
async fn load_balancing(url: &str, prefix: &str) -> Result<(), Error> {
    heading("Demo 2: Consumer Groups and Load Balancing");
    // Two workers, as two processes would be: a connection and a bus handle each.
    let name = format!("{prefix}.demo2");
    let (conn1, conn2) = (Connection::connect(url).await?, Connection::connect(url).await?);
    let bus1 = EventBus::declare(&conn1, &name, EventBusOptions::default()).await?;
    let bus2 = EventBus::declare(&conn2, &name, EventBusOptions::default()).await?;
    let worker = |bus: &EventBus, n: u32| {
        bus.group("load-balanced-consumers").prefetch(1).on(move |event: OrderPlaced, _| async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            println!("  Worker {n} processed: {}", event.order_id);
            Ok(())
        })
    };
    let (group1, group2) = (worker(&bus1, 1), worker(&bus2, 2));
    let (member1, member2) = (group1.start().await?, group2.start().await?);
    println!("Both workers connected\n\nPublishing 10 events...");
    for i in 0..10 {
        bus1.publish(&order(i)).await?;
    }
    wait_until("10 events handled", || member1.stats().succeeded + member2.stats().succeeded == 10).await?;
    let (done1, done2) = (member1.stats().succeeded, member2.stats().succeeded);
    println!("\nResults:\n  Worker 1 processed: {done1} events\n  Worker 2 processed: {done2} events");
    println!("  Total: {} events", done1 + done2);
    bus1.shutdown().await?;
    bus2.shutdown().await?;
    cleanup(&bus1, &[group1]).await?;
    conn1.close().await?;
    conn2.close().await?;
    Ok(())
}

/// Demo 3: every group gets every event.
async fn fan_out(conn: &Connection, prefix: &str) -> Result<(), Error> {
    heading("Demo 3: Several Consumer Groups");
    let bus = EventBus::declare(conn, &format!("{prefix}.demo3"), EventBusOptions::default()).await?;
    let mut groups = Vec::new();
    let mut members = Vec::new();
    for name in ["projections", "notifications", "analytics"] {
        let group = bus.group(name).on(move |event: OrderPlaced, _| async move {
            println!("  [{name}] {}", event.order_id);
            Ok(())
        });
        members.push(group.start().await?);
        groups.push(group);
    }
    for i in 0..3 {
        bus.publish(&order(i)).await?;
    }
    wait_until("each group handled 3", || members.iter().all(|m| m.stats().succeeded == 3)).await?;
    for member in &members {
        println!("  group {}: {} events", member.group(), member.stats().succeeded);
    }
    bus.shutdown().await?;
    cleanup(&bus, &groups).await
}

#[derive(Debug, Default)]
struct OrderStatistics {
    orders: u64,
    revenue_cents: u64,
    shipped: u64,
    audit_log: Vec<String>,
}

/// Demo 4: a projection over two event types, and an audit log of every event.
async fn projections(conn: &Connection, prefix: &str) -> Result<(), Error> {
    heading("Demo 4: Integration with Projections");
    let bus = EventBus::declare(conn, &format!("{prefix}.demo4"), EventBusOptions::default()).await?;
    let state = Arc::new(Mutex::new(OrderStatistics::default()));
    let (placed, shipped, audit) = (state.clone(), state.clone(), state.clone());
    let group = bus
        .group("projection-consumers")
        .prefetch(1)
        .on(move |event: OrderPlaced, _| {
            println!("  [Stats] Order placed: {}", dollars(event.total_cents));
            ready(placed.lock().map_err(|_| HandlerFailure::retry("poisoned")).map(|mut s| {
                s.orders += 1;
                s.revenue_cents += event.total_cents;
            }))
        })
        .on(move |event: OrderShipped, _| {
            println!("  [Stats] Order shipped: {}", event.tracking_number);
            ready(shipped.lock().map(|mut s| s.shipped += 1).map_err(|_| HandlerFailure::retry("poisoned")))
        })
        .on_all(move |message| {
            let entry = format!("{} {}", message.routing_key, message.message_id.unwrap_or_default());
            ready(audit.lock().map(|mut s| s.audit_log.push(entry)).map_err(|_| HandlerFailure::retry("poisoned")))
        });
    println!("Subscribed the statistics projection and the audit log: {:?}", group.patterns());
    let member = group.start().await?;
    println!("\nProcessing order: ord-42");
    bus.publish(&OrderPlaced { order_id: "ord-42".into(), customer_id: "premium".into(), total_cents: 49_999 }).await?;
    bus.publish(&OrderShipped { order_id: "ord-42".into(), tracking_number: "TRACK-12345".into() }).await?;
    wait_until("both events handled", || member.stats().succeeded == 2).await?;
    bus.shutdown().await?;
    {
        let s = state.lock().map_err(|_| "poisoned")?;
        println!("\nProjection Results:\n  Total orders: {}", s.orders);
        println!("  Total revenue: {}\n  Shipped count: {}", dollars(s.revenue_cents), s.shipped);
        println!("\nAudit log entries: {}", s.audit_log.len());
    }
    cleanup(&bus, &[group]).await
}

/// Demo 5: a handler that keeps failing: retried after 100 ms and 200 ms, then
/// dead-lettered, and the statistics.
async fn failures(conn: &Connection, prefix: &str) -> Result<(), Error> {
    heading("Demo 5: Retries, Dead-Lettering and Statistics");
    let bus = EventBus::declare(conn, &format!("{prefix}.demo5"), EventBusOptions::default()).await?;
    let started = Instant::now();
    let options = GroupOptions {
        retry_policy: RetryPolicy::exponential(Duration::from_millis(100), 2).without_jitter(),
        ..GroupOptions::default()
    };
    let group = bus.group("billing").options(options).on(move |event: OrderPlaced, meta| async move {
        let at = started.elapsed().as_millis();
        println!("  {at:>4} ms  {} attempt {}: payment service down", event.order_id, meta.retries + 1);
        Err(HandlerFailure::retry("payment service down"))
    });
    let member = group.start().await?;
    bus.publish(&order(7)).await?;
    let dlq = group.dead_letters();
    wait_until("dead-lettered", || member.stats().dead_lettered == 1).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while dlq.count().await? == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for letter in dlq.peek(10).await? {
        println!(
            "  in {}: {} after {} retries: {}",
            dlq.queue(),
            letter.original_routing_key.as_deref().unwrap_or("?"),
            letter.retries,
            letter.reason().unwrap_or("?")
        );
    }
    bus.shutdown().await?;
    println!("Statistics:");
    print_stats(&bus.stats());
    cleanup(&bus, &[group]).await
}

async fn cleanup(bus: &EventBus, groups: &[ConsumerGroup]) -> Result<(), Error> {
    for group in groups {
        group.delete().await?;
    }
    bus.delete().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let prefix = format!("lepus.example.events.{}", std::process::id());
    heading("lepus event bus");
    let conn = Connection::connect(&url).await?;
    println!("Connected to RabbitMQ");
    basic(&conn, &prefix).await?;
    load_balancing(&url, &prefix).await?;
    fan_out(&conn, &prefix).await?;
    projections(&conn, &prefix).await?;
    failures(&conn, &prefix).await?;
    conn.close().await?;
    heading("Done");
    Ok(())
}
