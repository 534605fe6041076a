//! Publisher confirms: an ack, a mandatory message nobody can take (returned), a nack from
//! a full queue that rejects publishes, and a pool of confirm channels shared by many tasks
//! that replaces a channel the broker closed.
//!
//! `cargo run -p lepus-patterns --example confirms`
//! (broker: `AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`)

use std::time::Instant;

use lepus::{Confirmation, Connection, Overflow, PublishOptions, QueueArguments, QueueDeclareOptions};
use lepus_patterns::publisher_pool::{PublisherPool, PublisherPoolOptions};

fn describe(outcome: &Confirmation) -> String {
    match outcome {
        Confirmation::Ack => "ack: the broker took it".to_owned(),
        Confirmation::Nack => "nack: the broker refused it".to_owned(),
        Confirmation::Returned(r) => format!("returned: {} {} (then acked)", r.reply_code, r.reply_text),
        Confirmation::NotRequested => "not confirmed (channel not in confirm mode)".to_owned(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let conn = Connection::connect(&url).await?;
    let channel = conn.open_channel().await?;
    channel.confirm_select().await?;
    let exclusive = QueueDeclareOptions { exclusive: true, ..Default::default() };
    let mandatory = PublishOptions { mandatory: true, ..Default::default() };

    let queue = channel.queue_declare("", exclusive, Default::default()).await?.name;
    let outcome = channel.basic_publish("", &queue, "hello", mandatory.clone()).await?.await?;
    println!("to {queue}: {}", describe(&outcome));

    let outcome = channel.basic_publish("", "lepus.example.nobody-home", "hello?", mandatory.clone()).await?.await?;
    println!("to a queue that does not exist, mandatory: {}", describe(&outcome));

    // One message fits; the broker refuses the next with a nack instead of dropping one.
    let arguments = QueueArguments::new().max_length(1).overflow(Overflow::RejectPublish).build()?;
    let full = channel.queue_declare("", exclusive, arguments).await?.name;
    for body in ["first", "second"] {
        let outcome = channel.basic_publish("", &full, body, PublishOptions::default()).await?.await?;
        println!("{body:?} to {full} (max-length 1, reject-publish): {}", describe(&outcome));
    }

    // Many tasks, four confirm channels.
    let pool = PublisherPool::new(&conn, PublisherPoolOptions { size: 4, ..Default::default() }).await?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8 {
        let (pool, queue) = (pool.clone(), queue.clone());
        tasks.spawn(async move {
            let mut acked = 0;
            for i in 0..250 {
                if pool.publish("", &queue, format!("{t}/{i}"), PublishOptions::default()).await?.is_ack() {
                    acked += 1;
                }
            }
            Ok::<_, lepus::Error>(acked)
        });
    }
    let mut acked = 0;
    while let Some(done) = tasks.join_next().await {
        acked += done??;
    }
    println!("pool of {}: {acked} of 2000 publishes from 8 tasks acked in {:?}", pool.size(), started.elapsed());

    match pool.publish("lepus.example.no-such-exchange", "x", "lost", PublishOptions::default()).await {
        Err(e) => println!("to a missing exchange: {e}"),
        Ok(outcome) => println!("to a missing exchange: {}", describe(&outcome)),
    }
    let mut acked = 0;
    for i in 0..8 {
        if pool.publish("", &queue, format!("after {i}"), PublishOptions::default()).await?.is_ack() {
            acked += 1;
        }
    }
    println!("then {acked} of 8 acked; channels replaced: {}", pool.replaced_channels());

    pool.close().await;
    conn.close().await?;
    println!("done");
    Ok(())
}
