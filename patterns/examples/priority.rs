//! A priority queue: low, normal and urgent tasks published in that order, then taken
//! urgent first. Then a bounded queue that refuses a message
//! when full, and a queue whose messages expire. All queues are exclusive: they go away
//! with the connection.
//!
//! `cargo run --example priority` (broker: `AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`)

use std::time::Duration;

use lepus::{Connection, Overflow, QueueArguments, QueueDeclareOptions};
use lepus_patterns::queue_kinds::{BoundedQueue, Bounds, PriorityQueue, TtlQueue};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let conn = Connection::connect(&url).await?;
    let channel = conn.open_channel().await?;
    channel.confirm_select().await?;
    let exclusive = QueueDeclareOptions { exclusive: true, ..Default::default() };
    let pid = std::process::id();

    let name = format!("lepus.example.priority_tasks.{pid}");
    let tasks = PriorityQueue::declare_with(&channel, &name, 10, exclusive, QueueArguments::new()).await?;
    println!("declared priority queue {name} (priorities 0..={})", tasks.max_priority());
    for (task, priority) in [("cleanup_logs", 1), ("send_report", 5), ("urgent_alert", 10)] {
        let verdict = tasks.publish(&channel, task.as_bytes().to_vec(), priority).await?.await?;
        println!("published {task:?} with priority {priority}: {verdict:?}");
    }
    while let Some((delivery, _)) = channel.basic_get(&name, true).await? {
        let priority = delivery.properties.priority.unwrap_or(0);
        println!("took {:?} (priority {priority})", String::from_utf8_lossy(&delivery.body));
    }

    let name = format!("lepus.example.inbox.{pid}");
    let inbox = BoundedQueue::declare_with(
        &channel,
        &name,
        Bounds::messages(2, Overflow::RejectPublish),
        exclusive,
        QueueArguments::new(),
    )
    .await?;
    println!("declared {name}: at most 2 messages, reject-publish");
    for i in 1..=3 {
        println!("publish #{i}: {:?}", inbox.publish(&channel, vec![i],).await?.await?);
    }

    let name = format!("lepus.example.quotes.{pid}");
    let quotes =
        TtlQueue::declare_with(&channel, &name, Duration::from_millis(200), exclusive, QueueArguments::new()).await?;
    quotes.publish(&channel, &b"EURUSD 1.0842"[..]).await?.await?;
    println!("published a quote to {name} (TTL 200 ms)");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let left = channel.basic_get(&name, true).await?;
    println!("400 ms later the quote is {}", if left.is_some() { "still there" } else { "gone" });

    conn.close().await?;
    println!("closed (the exclusive queues went with the connection)");
    Ok(())
}
