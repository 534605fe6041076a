//! A work queue: ten tasks published with confirms to a durable queue, shared out between
//! two workers (prefetch 1); one task makes its handler panic and ends up in the
//! dead-letter queue while both workers carry on. Then a graceful shutdown, and cleanup.
//!
//! `cargo run --example work_queue` (broker: `AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`)

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lepus::Connection;
use lepus_patterns::work_queue::{Job, WorkQueue, WorkerOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let conn = Connection::connect(&url).await?;
    // One line per panic instead of the default report: the worker handles them.
    std::panic::set_hook(Box::new(|info| eprintln!("  (a handler panicked: {info})")));

    let name = format!("lepus.example.tasks.{}", std::process::id());
    let tasks = WorkQueue::declare(&conn, &name).await?;
    println!("declared durable queue {name} and its dead-letter queue {}", tasks.dead_letter_queue().unwrap_or("-"));

    let handled = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for id in 1..=2 {
        let handled = handled.clone();
        let worker = tasks
            .worker(WorkerOptions::prefetch(1), move |job: Job| {
                let handled = handled.clone();
                async move {
                    handled.fetch_add(1, Ordering::SeqCst);
                    let task = job.body_str().unwrap_or("?").to_owned();
                    assert!(task != "task 7", "task 7 is poison");
                    tokio::time::sleep(Duration::from_millis(50)).await; // the work
                    println!("worker {id}: done with {task:?}");
                }
            })
            .await?;
        workers.push(worker);
    }

    for i in 0..10 {
        let verdict = tasks.publish(format!("task {i}").into_bytes()).await?;
        println!("published \"task {i}\": {verdict:?}");
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    while handled.load(Ordering::SeqCst) < 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (id, worker) in workers.into_iter().enumerate() {
        let stats = worker.shutdown().await?;
        println!(
            "worker {} shut down: {} acked, {} dead-lettered, {} panicked",
            id + 1,
            stats.acked,
            stats.dead_lettered,
            stats.panicked
        );
    }

    if let Some(dead) = tasks.dead_letter_queue() {
        let channel = conn.open_channel().await?;
        while let Some((delivery, _)) = channel.basic_get(dead, true).await? {
            println!("dead-lettered: {:?}", String::from_utf8_lossy(&delivery.body));
        }
    }
    let left = tasks.delete().await?;
    println!("deleted the queues ({left} messages left)");
    conn.close().await?;
    Ok(())
}
