//! A consumer that survives its broker: recovery is on by default, so when the broker
//! restarts the connection is re-established, the queue and the consumer are re-declared,
//! and the same `Consumer` stream keeps yielding. A publisher on the same connection sends a
//! message a second with confirms; the events say what the connection went through.
//!
//! Run it, and in another terminal restart the broker's application:
//!
//! ```sh
//! cargo run -p lepus --example robust_consumer
//! sudo rabbitmqctl stop_app; sleep 3; sudo rabbitmqctl start_app
//! ```
//!
//! It prints `disconnected`, `recovering` and `recovered`, then goes on receiving. It stops
//! after `ROBUST_SECONDS` (default 60) or on Ctrl-C. Broker: `AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f` (a multi-host URI `amqp://h1:5672,h2:5673/%2f`
//! fails over between nodes).

use std::time::Duration;

use lepus::{
    Connection, ConnectionEvent, ConnectionOptions, ConsumeOptions, PublishOptions, QueueDeclareOptions,
    RecoveryOptions,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let seconds = std::env::var("ROBUST_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let options = ConnectionOptions::from_uri(&url)?.connection_name("lepus robust_consumer").recovery(
        // The defaults, spelled out: back off from 200 ms to 5 s, never give up, re-declare
        // the topology, wait (up to 60 s) rather than fail while disconnected.
        RecoveryOptions::new().backoff(Duration::from_millis(200), Duration::from_secs(5)),
    );
    let conn = Connection::connect_with(options).await?;

    let mut events = conn.events();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            match event {
                ConnectionEvent::Disconnected { reason } => println!("disconnected: {reason}"),
                ConnectionEvent::Recovering { attempt, address } => {
                    println!("recovering: attempt {attempt} to {address}");
                }
                ConnectionEvent::Recovered { address } => println!("recovered on {address}"),
                ConnectionEvent::RecoveryFailed(error) => println!("recovery failed: {error}"),
                ConnectionEvent::TopologyRecoveryFailed { what, error } => {
                    println!("could not re-declare {what}: {error}");
                }
                other => println!("event: {other:?}"),
            }
        }
    });

    let channel = conn.open_channel().await?;
    // Durable, so that messages published before a restart are still there after it.
    let queue = "lepus.robust_consumer";
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(queue, durable, Default::default()).await?;
    channel.basic_qos(50, false).await?;
    let mut consumer = channel.basic_consume(queue, ConsumeOptions::default()).await?;

    let publisher = conn.open_channel().await?;
    publisher.confirm_select().await?;
    let publishing = tokio::spawn(async move {
        let persistent = PublishOptions {
            properties: lepus::BasicProperties { delivery_mode: Some(2), ..Default::default() },
            ..Default::default()
        };
        for n in 1u64.. {
            let body = format!("tick {n}");
            // While the connection is down this waits for it to come back; a publish whose
            // confirm was outstanding at the loss resolves with ConnectionLost.
            match publisher.basic_publish("", queue, body.clone().into_bytes(), persistent.clone()).await {
                Ok(confirm) => match confirm.await {
                    Ok(c) if c.is_ack() => {}
                    Ok(c) => println!("{body}: not taken by the broker: {c:?}"),
                    Err(e) => println!("{body}: outcome unknown ({e}); publish it again if it matters"),
                },
                Err(e) => println!("{body}: not sent: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });

    let deadline = tokio::time::sleep(Duration::from_secs(seconds));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    println!("received {:?}", String::from_utf8_lossy(&delivery.body));
                    if let Err(e) = delivery.ack().await {
                        // A delivery from before a reconnection cannot be acked on the new
                        // connection; the broker redelivers it.
                        println!("ack refused: {e}");
                    }
                }
                Some(Err(e)) => println!("consumer error: {e}"),
                None => break,
            },
            () = &mut deadline => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    publishing.abort();
    println!("recovered {} time(s); closing", conn.recoveries());
    conn.close().await?;
    Ok(())
}
