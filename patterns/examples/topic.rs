//! Topic routing: the routing table of the pika guide ("Topic Exchange") on a real broker —
//! five queues bound with patterns, four events, and where each one landed, next to what
//! `topic_matches` predicts. Then cleanup.
//!
//! `cargo run --example topic` (broker: `AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`)

use lepus::Connection;
use lepus_patterns::topic::{TopicExchange, topic_matches};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let conn = Connection::connect(&url).await?;
    let name = format!("lepus.example.events.{}", std::process::id());
    let events = TopicExchange::declare(&conn, &name).await?;
    println!("declared topic exchange {name}");

    let bindings: [(&str, &[&str]); 5] = [
        ("order_events", &["order.*", "order.#"]),
        ("payment_events", &["payment.*"]),
        ("all_created", &["*.created"]),
        ("audit_log", &["#"]),
        ("critical_alerts", &["*.failed", "*.error"]),
    ];
    let mut subscriptions = Vec::new();
    for (queue, patterns) in bindings {
        let subscription = events.subscribe(&format!("{name}.{queue}"), patterns).await?;
        println!("bound {queue} to {patterns:?}");
        subscriptions.push((queue, patterns, subscription));
    }

    let keys = ["order.created", "order.payment.completed", "payment.failed", "user.created"];
    for key in keys {
        events.publish(key, key.as_bytes().to_vec()).await?;
        let predicted: Vec<&str> =
            bindings.iter().filter(|(_, ps)| ps.iter().any(|p| topic_matches(p, key))).map(|(q, _)| *q).collect();
        println!("published {key:?}: topic_matches predicts {predicted:?}");
    }

    let channel = conn.open_channel().await?;
    for (queue, _, subscription) in subscriptions {
        let mut got = Vec::new();
        while let Some((delivery, _)) = channel.basic_get(subscription.queue(), true).await? {
            got.push(delivery.routing_key.to_string());
        }
        println!("{queue:>15} received {got:?}");
        subscription.unsubscribe().await?;
    }
    events.delete().await?;
    println!("deleted the queues and the exchange");
    conn.close().await?;
    Ok(())
}
