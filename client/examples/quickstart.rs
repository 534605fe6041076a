//! The lepus client in one page: connect, declare a queue, publish three messages with
//! publisher confirms, consume and acknowledge them, delete the queue, close.
//!
//! `cargo run -p lepus --example quickstart`
//! (broker: `AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`)

use std::time::Duration;

use lepus::{Connection, ConsumeOptions, FieldValue, PublishOptions, QueueDeclareOptions, QueueDeleteOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let conn = Connection::connect(&url).await?;
    let props = conn.server_properties();
    let about = |key| props.get(key).and_then(FieldValue::as_str).unwrap_or("?").to_owned();
    println!("connected to {} {} (frame_max {})", about("product"), about("version"), conn.tuning().frame_max);

    let channel = conn.open_channel().await?;
    // Exclusive: only this connection uses it, and the broker removes it if we vanish.
    let options = QueueDeclareOptions { exclusive: true, ..Default::default() };
    let name = format!("lepus.quickstart.{}", std::process::id());
    let queue = channel.queue_declare(&name, options, Default::default()).await?.name;
    println!("declared queue {queue}");

    // In confirm mode every publish resolves to the broker's verdict.
    channel.confirm_select().await?;
    for i in 1..=3 {
        let body = format!("hello #{i}");
        let confirm = channel.basic_publish("", &queue, body.clone().into_bytes(), PublishOptions::default()).await?;
        println!("published {body:?}: {:?}", confirm.await?);
    }

    let mut consumer = channel.basic_consume(&queue, ConsumeOptions::default()).await?;
    for _ in 0..3 {
        let delivery = match tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
            Ok(Some(delivery)) => delivery?,
            Ok(None) => return Err("the consumer ended early".into()),
            Err(_) => return Err("no message within 5 s".into()),
        };
        println!("received {:?} (delivery tag {})", String::from_utf8_lossy(&delivery.body), delivery.delivery_tag);
        delivery.ack().await?;
    }
    consumer.cancel().await?;

    let left = channel.queue_delete(&queue, QueueDeleteOptions::default()).await?;
    println!("deleted queue {queue} ({left} messages left in it)");
    conn.close().await?;
    println!("closed");
    Ok(())
}
