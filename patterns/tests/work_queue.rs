//! Work queues against the real RabbitMQ: messages shared out among workers exactly once,
//! handlers that fail or panic never lose their message nor stop their worker, outcomes
//! ack/requeue/dead-letter as said, graceful shutdown finishes what is in flight.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use lepus::{Confirmation, Connection, Error, FieldValue, QueueDeclareOptions, ReplyCode};
use lepus_patterns::work_queue::{
    DeadLetter, HandlerError, Job, Outcome, WorkQueue, WorkQueueOptions, Worker, WorkerOptions,
};
use tokio::sync::Notify;

mod common;
use common::{Cleanup, STEP, Within, connect, ready, unique, wait_until, wait_until_async};

/// A work queue with a unique name, and its cleanup (the queue and its dead-letter queue).
async fn work_queue(conn: &Connection, name: &str) -> (WorkQueue, Cleanup) {
    let name = unique(name);
    let cleanup = Cleanup::queues(vec![name.clone(), format!("{name}.dead")]);
    (WorkQueue::declare(conn, &name).within("declaring the work queue").await.unwrap(), cleanup)
}

/// Publishes `body` and checks the broker took it.
async fn publish(tasks: &WorkQueue, body: impl Into<bytes::Bytes>) {
    assert_eq!(tasks.publish(body).within("publishing").await.unwrap(), Confirmation::Ack);
}

fn text(job: &Job) -> String {
    job.body_str().unwrap_or("<binary>").to_owned()
}

type Log = Arc<Mutex<Vec<(usize, String)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_ten_messages_each_processed_exactly_once() {
    let conn = connect().await;
    let (tasks, _cleanup) = work_queue(&conn, "wq.share").await;
    let log: Log = Arc::default();
    let mut workers = Vec::new();
    for id in 0..2 {
        let log = log.clone();
        let worker = tasks
            .worker(WorkerOptions::prefetch(1), move |job: Job| {
                let log = log.clone();
                async move {
                    // Simulated work, slow enough that one worker cannot take everything.
                    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                    log.lock().unwrap().push((id, text(&job)));
                }
            })
            .within("starting a worker")
            .await
            .unwrap();
        workers.push(worker);
    }
    for i in 0..10 {
        publish(&tasks, format!("task {i}").into_bytes()).await;
    }
    wait_until(STEP, "ten messages processed", || log.lock().unwrap().len() >= 10).await;
    // Stopped, the workers can process nothing more: anything processed twice is in the log.
    let mut stats = Vec::new();
    for worker in workers {
        stats.push(worker.shutdown().within("stopping a worker").await.unwrap());
    }

    let log = log.lock().unwrap().clone();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (_, body) in &log {
        *seen.entry(body.clone()).or_default() += 1;
    }
    let want: BTreeMap<String, usize> = (0..10).map(|i| (format!("task {i}"), 1)).collect();
    assert_eq!(seen, want, "each message exactly once");
    for (id, stats) in stats.iter().enumerate() {
        let n = log.iter().filter(|(w, _)| *w == id).count();
        assert!(n > 0, "worker {id} got no work: {log:?}");
        assert_eq!(stats.acked, n as u64, "worker {id} acked what it handled");
        assert_eq!((stats.requeued, stats.dead_lettered, stats.panicked), (0, 0, 0), "worker {id}: {stats:?}");
    }
    assert_eq!(ready(&conn, tasks.name()).await, 0, "nothing left, nothing requeued");
    assert_eq!(ready(&conn, tasks.dead_letter_queue().unwrap()).await, 0);
    conn.close().within("closing").await.unwrap();
}

#[tokio::test]
async fn a_panicking_handler_dead_letters_its_message_and_the_worker_goes_on() {
    let conn = connect().await;
    let (tasks, _cleanup) = work_queue(&conn, "wq.panic").await;
    let done: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = done.clone();
    let worker = tasks
        .worker(WorkerOptions::default(), move |job: Job| {
            let log = log.clone();
            async move {
                let body = text(&job);
                assert!(body != "boom", "the handler panics on {body}");
                log.lock().unwrap().push(body);
            }
        })
        .within("starting a worker")
        .await
        .unwrap();
    for body in ["one", "boom", "two"] {
        publish(&tasks, body.as_bytes().to_vec()).await;
    }
    wait_until(STEP, "the others processed", || done.lock().unwrap().len() == 2).await;
    // The worker is alive: it takes new work after the panic.
    publish(&tasks, &b"three"[..]).await;
    wait_until(STEP, "a message after the panic processed", || done.lock().unwrap().len() == 3).await;
    assert_eq!(*done.lock().unwrap(), ["one", "two", "three"]);
    assert!(!worker.is_finished());
    let stats = worker.shutdown().within("stopping the worker").await.unwrap();
    assert_eq!((stats.acked, stats.panicked, stats.dead_lettered, stats.requeued), (3, 1, 1, 0), "{stats:?}");

    // The message is not lost: it waits in the dead-letter queue, with the broker's x-death.
    let channel = conn.open_channel().within("opening a channel").await.unwrap();
    let got = channel.basic_get(tasks.dead_letter_queue().unwrap(), true).within("getting the dead letter").await;
    let (dead, left) = got.unwrap().unwrap();
    assert_eq!((&dead.body[..], left), (&b"boom"[..], 0));
    let x_death = dead.properties.headers.as_ref().and_then(|h| h.get("x-death")).and_then(FieldValue::as_array);
    let first = x_death.and_then(|a| a.0.first()).and_then(FieldValue::as_table).unwrap();
    assert_eq!(first.get("reason").and_then(FieldValue::as_str), Some("rejected"));
    assert_eq!(first.get("queue").and_then(FieldValue::as_str), Some(tasks.name()));
    assert_eq!(dead.properties.delivery_mode, Some(2), "published persistent");
    assert_eq!(ready(&conn, tasks.name()).await, 0);
    conn.close().within("closing").await.unwrap();
}

#[tokio::test]
async fn a_panic_can_requeue_instead_and_the_retry_succeeds() {
    let conn = connect().await;
    let (tasks, _cleanup) = work_queue(&conn, "wq.panic-requeue").await;
    let done: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let log = done.clone();
    let options = WorkerOptions { on_panic: Outcome::Requeue, ..WorkerOptions::default() };
    let worker = tasks
        .worker(options, move |job: Job| {
            let log = log.clone();
            async move {
                // Panics before its first await, on the first delivery only.
                assert!(job.redelivered, "not on the first try");
                log.lock().unwrap().push((text(&job), job.redelivered));
            }
        })
        .within("starting a worker")
        .await
        .unwrap();
    publish(&tasks, &b"flaky"[..]).await;
    wait_until(STEP, "the retry processed", || !done.lock().unwrap().is_empty()).await;
    let stats = worker.shutdown().within("stopping the worker").await.unwrap();
    assert_eq!(*done.lock().unwrap(), [("flaky".to_owned(), true)]);
    assert_eq!((stats.panicked, stats.requeued, stats.acked, stats.dead_lettered), (1, 1, 1, 0), "{stats:?}");
    assert_eq!(ready(&conn, tasks.dead_letter_queue().unwrap()).await, 0);
    conn.close().within("closing").await.unwrap();
}

#[tokio::test]
async fn handler_errors_requeue_or_dead_letter_as_they_say() {
    let conn = connect().await;
    let (tasks, _cleanup) = work_queue(&conn, "wq.errors").await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = acked.clone();
    let worker = tasks
        .worker(WorkerOptions::parallel(4), move |job: Job| {
            let log = log.clone();
            async move {
                let body = text(&job);
                match body.as_str() {
                    "busy" if !job.redelivered => return Err(HandlerError::requeue("database busy")),
                    // Any std error: dead-letter.
                    "not a number" => {
                        body.parse::<u32>()?;
                    }
                    _ => {}
                }
                log.lock().unwrap().push(body);
                Ok(())
            }
        })
        .within("starting a worker")
        .await
        .unwrap();
    for body in ["busy", "not a number", "fine"] {
        publish(&tasks, body.as_bytes().to_vec()).await;
    }
    wait_until(STEP, "busy retried and fine done", || acked.lock().unwrap().len() == 2).await;
    wait_until(STEP, "not a number dead-lettered", || worker.stats().dead_lettered == 1).await;
    let stats = worker.shutdown().within("stopping the worker").await.unwrap();
    let mut got = acked.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, ["busy", "fine"]);
    assert_eq!((stats.acked, stats.requeued, stats.dead_lettered, stats.panicked), (2, 1, 1, 0), "{stats:?}");
    let channel = conn.open_channel().within("opening a channel").await.unwrap();
    let got = channel.basic_get(tasks.dead_letter_queue().unwrap(), true).within("getting the dead letter").await;
    let (dead, _) = got.unwrap().unwrap();
    assert_eq!(&dead.body[..], b"not a number");
    conn.close().within("closing").await.unwrap();
}

#[tokio::test]
async fn shutdown_waits_for_the_handler_in_flight_and_requeues_the_rest() {
    let conn = connect().await;
    let (tasks, _cleanup) = work_queue(&conn, "wq.shutdown").await;
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let finished: Arc<Mutex<Vec<String>>> = Arc::default();
    let (s, r, f) = (started.clone(), release.clone(), finished.clone());
    // Prefetch 3, one handler at a time: one message in its handler, two prefetched.
    let worker = tasks
        .worker(WorkerOptions::prefetch(3), move |job: Job| {
            let (s, r, f) = (s.clone(), r.clone(), f.clone());
            async move {
                s.notify_one();
                r.notified().within("the test's release").await;
                f.lock().unwrap().push(text(&job));
            }
        })
        .within("starting a worker")
        .await
        .unwrap();
    for body in ["slow", "later-1", "later-2"] {
        publish(&tasks, body.as_bytes().to_vec()).await;
    }
    started.notified().within("the first handler starting").await;
    // The other two reach the worker's buffer: the queue has nothing ready.
    wait_until_async(STEP, "the worker prefetching the other two", async || ready(&conn, tasks.name()).await == 0)
        .await;
    let shutdown = tokio::spawn(worker.shutdown());
    // Shutdown gives the two waiting ones back first...
    wait_until_async(STEP, "the prefetched two given back", async || ready(&conn, tasks.name()).await == 2).await;
    // ... then can only wait: the handler in flight is held until it is released.
    assert!(!shutdown.is_finished(), "shutdown returned while a handler was still running");
    assert!(finished.lock().unwrap().is_empty());
    release.notify_one();
    let stats = shutdown.within("the shutdown").await.unwrap().unwrap();
    assert_eq!(*finished.lock().unwrap(), ["slow"], "the one in flight finished; no new one started");
    assert_eq!((stats.acked, stats.requeued), (1, 2), "the prefetched ones were given back: {stats:?}");
    assert_eq!(ready(&conn, tasks.name()).await, 2, "the rest wait for the next worker");
    conn.close().within("closing").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_handler_at_a_time_in_order_unless_told_otherwise() {
    let conn = connect().await;
    let (tasks, _cleanup) = work_queue(&conn, "wq.concurrency").await;
    for i in 0..8 {
        publish(&tasks, format!("{i}").into_bytes()).await;
    }
    // Prefetch 8, concurrency 1: in order, never two at once.
    let order: Arc<Mutex<Vec<String>>> = Arc::default();
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (log, now) = (order.clone(), running.clone());
    let worker = tasks
        .worker(WorkerOptions::prefetch(8), move |job: Job| {
            let (log, now) = (log.clone(), now.clone());
            async move {
                let overlapping = now.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0;
                // Simulated work: long enough for an overlap to show.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                log.lock().unwrap().push(if overlapping { "overlap".to_owned() } else { text(&job) });
            }
        })
        .within("starting a worker")
        .await
        .unwrap();
    wait_until(STEP, "eight handled", || order.lock().unwrap().len() == 8).await;
    worker.shutdown().within("stopping the worker").await.unwrap();
    let want: Vec<String> = (0..8).map(|i| i.to_string()).collect();
    assert_eq!(*order.lock().unwrap(), want);

    // concurrency 4: four handlers that only finish together do finish.
    for i in 0..4 {
        publish(&tasks, format!("{i}").into_bytes()).await;
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(4));
    let worker = tasks
        .worker(WorkerOptions::parallel(4), move |_job: Job| {
            let barrier = barrier.clone();
            async move {
                match tokio::time::timeout(STEP, barrier.wait()).await {
                    Ok(_) => Outcome::Ack,
                    Err(tokio::time::error::Elapsed { .. }) => Outcome::DeadLetter,
                }
            }
        })
        .within("starting a worker")
        .await
        .unwrap();
    wait_until(STEP, "four handlers running at once", || worker.stats().acked == 4).await;
    assert_eq!(worker.shutdown().within("stopping the worker").await.unwrap().dead_lettered, 0);
    conn.close().within("closing").await.unwrap();
}

#[tokio::test]
async fn handlers_past_the_shutdown_timeout_are_aborted_and_their_message_requeued() {
    let conn = connect().await;
    let (tasks, _cleanup) = work_queue(&conn, "wq.abort").await;
    let started = Arc::new(Notify::new());
    let s = started.clone();
    let limit = std::time::Duration::from_millis(100);
    let options = WorkerOptions { shutdown_timeout: Some(limit), ..WorkerOptions::default() };
    let worker = tasks
        .worker(options, move |_job: Job| {
            let s = s.clone();
            async move {
                s.notify_one();
                // Never finishes on its own: the shutdown timeout has to end it.
                std::future::pending::<()>().await;
            }
        })
        .within("starting a worker")
        .await
        .unwrap();
    publish(&tasks, &b"stuck"[..]).await;
    started.notified().within("the handler starting").await;
    let stats = worker.shutdown().within("the shutdown").await.unwrap();
    assert_eq!((stats.acked, stats.requeued, stats.dead_lettered), (0, 0, 0), "{stats:?}");
    // The channel closed with the message unacknowledged: it is back in the queue.
    wait_until_async(STEP, "the aborted handler's message back", async || ready(&conn, tasks.name()).await == 1).await;
    conn.close().within("closing").await.unwrap();
}

#[tokio::test]
async fn a_deleted_queue_stops_the_worker_with_the_brokers_cancel() {
    let conn = connect().await;
    let (tasks, _cleanup) = work_queue(&conn, "wq.deleted").await;
    let worker =
        tasks.worker(WorkerOptions::default(), |_job: Job| async {}).within("starting a worker").await.unwrap();
    tasks.delete().within("deleting the queue").await.unwrap();
    let result = worker.join().within("the worker stopping").await;
    assert!(matches!(result, Err(Error::CancelledByBroker(_))), "{result:?}");
    // Mandatory publishes to a queue that is gone come back.
    let verdict = tasks.publish(&b"lost?"[..]).within("publishing").await.unwrap();
    match verdict {
        Confirmation::Returned(returned) => assert_eq!(returned.reply_code, ReplyCode::NO_ROUTE),
        other => panic!("expected the message back, got {other:?}"),
    }
    conn.close().within("closing").await.unwrap();
}

#[tokio::test]
async fn options_dead_letter_elsewhere_or_nowhere_and_refuse_nonsense() {
    let conn = connect().await;
    let name = unique("wq.options");
    let dlq = format!("{name}.mine");
    let _cleanup =
        Cleanup::queues(vec![name.clone(), dlq.clone(), format!("{name}.none"), format!("{name}.none.dead")]);
    let channel = conn.open_channel().within("opening a channel").await.unwrap();
    channel.queue_declare(&dlq, QueueDeclareOptions::default(), Default::default()).within("declaring").await.unwrap();
    let options = WorkQueueOptions {
        dead_letter: DeadLetter::Exchange { exchange: String::new(), routing_key: Some(dlq.clone()) },
        ..WorkQueueOptions::default()
    };
    let tasks = WorkQueue::declare_with(&conn, &name, options).within("declaring the work queue").await.unwrap();
    assert_eq!(tasks.dead_letter_queue(), None);
    publish(&tasks, &b"reject me"[..]).await;
    let worker = tasks
        .worker(WorkerOptions::default(), |_job: Job| async { Outcome::DeadLetter })
        .within("starting a worker")
        .await
        .unwrap();
    wait_until_async(STEP, "dead-lettered to the chosen queue", async || ready(&conn, &dlq).await == 1).await;
    worker.shutdown().within("stopping the worker").await.unwrap();

    let none = WorkQueueOptions { dead_letter: DeadLetter::None, confirms: false, ..WorkQueueOptions::default() };
    let plain = WorkQueue::declare_with(&conn, &format!("{name}.none"), none).within("declaring").await.unwrap();
    assert_eq!(plain.publish(&b"x"[..]).within("publishing").await.unwrap(), Confirmation::NotRequested);

    assert!(matches!(WorkQueue::declare(&conn, "").within("declaring").await, Err(Error::InvalidOperation(_))));
    let zero = WorkerOptions::prefetch(0);
    let refused = Worker::start(&conn, &name, zero, |_job: Job| async {}).within("starting a worker").await;
    assert!(matches!(refused, Err(Error::InvalidOperation(_))), "{refused:?}");
    // Redeclaring with other arguments is the broker's 406, returned as an error.
    let err = WorkQueue::declare(&conn, &format!("{name}.none")).within("redeclaring").await.unwrap_err();
    assert_eq!(err.reply_code(), Some(ReplyCode::PRECONDITION_FAILED), "{err}");
    conn.close().within("closing").await.unwrap();
}
