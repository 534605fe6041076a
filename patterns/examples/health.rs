//! Health checks: the connection, a queue with messages waiting and no consumer (degraded
//! against its expectations), and a queue that does not exist (unhealthy, with the
//! broker's 404 text) — without harming the application's own channel.
//!
//! `cargo run --example health` (broker: `AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`)

use lepus::{Connection, PublishOptions, QueueDeclareOptions};
use lepus_patterns::health::{HealthCheck, QueueExpectations};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let conn = Connection::connect(&url).await?;
    let channel = conn.open_channel().await?;
    let orders = format!("lepus.example.orders.{}", std::process::id());
    let exclusive = QueueDeclareOptions { exclusive: true, ..Default::default() };
    channel.queue_declare(&orders, exclusive, Default::default()).await?;
    channel.confirm_select().await?;
    for _ in 0..3 {
        channel.basic_publish("", &orders, &b"{}"[..], PublishOptions::default()).await?.await?;
    }
    let missing = format!("lepus.example.no-such-queue.{}", std::process::id());

    let health = HealthCheck::new(&conn)
        .expect_queue(&orders, QueueExpectations { max_messages: Some(1000), min_consumers: Some(1) });
    let report = health.check(&[&orders, &missing]).await;
    let c = &report.connection;
    println!(
        "connection: {} ({}, round trip {:?})",
        c.status,
        c.server.as_deref().unwrap_or("?"),
        c.round_trip.unwrap_or_default()
    );
    for q in &report.queues {
        let counts = match (q.message_count, q.consumer_count) {
            (Some(m), Some(c)) => format!("{m} messages, {c} consumers"),
            _ => "no counts".to_owned(),
        };
        println!("queue {}: {} ({counts}) {}", q.queue, q.status, q.reason.as_deref().unwrap_or(""));
    }
    println!("overall: {}", report.status);
    println!("our own channel is still open: {}", channel.is_open());
    conn.close().await?;
    Ok(())
}
