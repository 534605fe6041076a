//! Publisher confirms: every message either confirmed by the broker or reported as failed.
//!
//! Publishes `CONFIRMS_N` (default 10 000) persistent messages to a durable queue with a
//! window of outstanding confirms, then one mandatory message nobody can route, and says what
//! became of each: acked (the broker has it), nacked (it refused it), returned (no queue
//! took it) or failed (the connection was lost before the verdict: outcome unknown).
//!
//! `cargo run -p lepus --example confirms`
//! (broker: `AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`)

use std::{collections::VecDeque, time::Instant};

use lepus::{
    BasicProperties, Confirmation, Connection, PublishOptions, PublisherConfirm, QueueDeclareOptions,
    QueueDeleteOptions,
};

/// Confirms awaited at once: enough to keep the broker busy, bounded so memory is too.
const WINDOW: usize = 1000;

#[derive(Default, Debug)]
struct Tally {
    acked: u64,
    nacked: u64,
    returned: u64,
    failed: u64,
}

impl Tally {
    async fn settle(&mut self, confirm: PublisherConfirm) {
        match confirm.await {
            Ok(Confirmation::Ack | Confirmation::NotRequested) => self.acked += 1,
            Ok(Confirmation::Nack) => self.nacked += 1,
            Ok(Confirmation::Returned(_)) => self.returned += 1,
            Err(_) => self.failed += 1,
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let n: u32 = std::env::var("CONFIRMS_N").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let conn = Connection::connect(&url).await?;
    let channel = conn.open_channel().await?;
    let queue = format!("lepus.confirms.{}", std::process::id());
    channel
        .queue_declare(&queue, QueueDeclareOptions { durable: true, ..Default::default() }, Default::default())
        .await?;
    channel.confirm_select().await?;

    let persistent = PublishOptions {
        properties: BasicProperties { delivery_mode: Some(2), ..Default::default() },
        ..Default::default()
    };
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut in_flight = VecDeque::with_capacity(WINDOW);
    for i in 0..n {
        if in_flight.len() == WINDOW
            && let Some(oldest) = in_flight.pop_front()
        {
            tally.settle(oldest).await;
        }
        // `Err` here means the message was not handed to the connection: nothing was sent.
        let confirm =
            channel.basic_publish("", &queue, format!("message {i}").into_bytes(), persistent.clone()).await?;
        in_flight.push_back(confirm);
    }
    for confirm in in_flight {
        tally.settle(confirm).await;
    }
    let took = started.elapsed();
    println!("{n} published in {took:.2?} ({:.0} msg/s): {tally:?}", f64::from(n) / took.as_secs_f64());

    // Mandatory and unroutable: the broker returns it, then confirms it.
    let mandatory = PublishOptions { mandatory: true, ..Default::default() };
    let nowhere = format!("lepus.confirms.nowhere.{}", std::process::id());
    match channel.basic_publish("", &nowhere, &b"lost?"[..], mandatory).await?.await? {
        Confirmation::Returned(returned) => {
            println!("returned as it should be: {} {}", returned.reply_code, returned.reply_text);
        }
        other => println!("expected a return, got {other:?}"),
    }

    let left = channel.queue_delete(&queue, QueueDeleteOptions::default()).await?;
    println!("deleted {queue} with {left} messages in it");
    conn.close().await?;
    Ok(())
}
