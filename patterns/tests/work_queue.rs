//! Work queues against the real RabbitMQ: messages shared out among workers exactly once,
//! handlers that fail or panic never lose their message nor stop their worker, outcomes
//! ack/requeue/dead-letter as said, graceful shutdown finishes what is in flight.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lepus::{Confirmation, Connection, Error, FieldValue, QueueDeclareOptions};
use lepus_patterns::work_queue::{
    DeadLetter, HandlerError, Job, Outcome, WorkQueue, WorkQueueOptions, Worker, WorkerOptions,
};
use tokio::sync::Notify;

mod common;
use common::{Cleanup, connect, unique};

const WAIT: Duration = Duration::from_secs(10);

/// A work queue with a unique name, and its cleanup (the queue and its dead-letter queue).
async fn work_queue(conn: &Connection, name: &str) -> (WorkQueue, Cleanup) {
    let name = unique(name);
    let cleanup = Cleanup::queues(vec![name.clone(), format!("{name}.dead")]);
    (WorkQueue::declare(conn, &name).await.unwrap(), cleanup)
}

/// Ready messages in `queue` (passive declare on a channel of its own).
async fn ready(conn: &Connection, queue: &str) -> u32 {
    let channel = conn.open_channel().await.unwrap();
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let n = channel.queue_declare(queue, passive, Default::default()).await.unwrap().message_count;
    channel.close().await.unwrap();
    n
}

/// Waits until `done` holds, polling.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
                    // Slow enough that one worker cannot take everything.
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    log.lock().unwrap().push((id, text(&job)));
                }
            })
            .await
            .unwrap();
        workers.push(worker);
    }
    for i in 0..10 {
        assert_eq!(tasks.publish(format!("task {i}").into_bytes()).await.unwrap(), Confirmation::Ack);
    }
    until("ten messages processed", || log.lock().unwrap().len() >= 10).await;
    // Anything processed twice would show up now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut stats = Vec::new();
    for worker in workers {
        stats.push(worker.shutdown().await.unwrap());
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
    }
    assert_eq!(ready(&conn, tasks.name()).await, 0, "nothing left, nothing requeued");
    assert_eq!(ready(&conn, tasks.dead_letter_queue().unwrap()).await, 0);
    conn.close().await.unwrap();
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
        .await
        .unwrap();
    for body in ["one", "boom", "two"] {
        assert!(tasks.publish(body.as_bytes().to_vec()).await.unwrap().is_ack());
    }
    until("the others processed", || done.lock().unwrap().len() == 2).await;
    // The worker is alive: it takes new work after the panic.
    assert!(tasks.publish(&b"three"[..]).await.unwrap().is_ack());
    until("a message after the panic processed", || done.lock().unwrap().len() == 3).await;
    assert_eq!(*done.lock().unwrap(), ["one", "two", "three"]);
    assert!(!worker.is_finished());
    let stats = worker.shutdown().await.unwrap();
    assert_eq!((stats.acked, stats.panicked, stats.dead_lettered, stats.requeued), (3, 1, 1, 0), "{stats:?}");

    // The message is not lost: it waits in the dead-letter queue, with the broker's x-death.
    let channel = conn.open_channel().await.unwrap();
    let (dead, left) = channel.basic_get(tasks.dead_letter_queue().unwrap(), true).await.unwrap().unwrap();
    assert_eq!((&dead.body[..], left), (&b"boom"[..], 0));
    let x_death = dead.properties.headers.as_ref().and_then(|h| h.get("x-death")).and_then(FieldValue::as_array);
    let first = x_death.and_then(|a| a.0.first()).and_then(FieldValue::as_table).unwrap();
    assert_eq!(first.get("reason").and_then(FieldValue::as_str), Some("rejected"));
    assert_eq!(first.get("queue").and_then(FieldValue::as_str), Some(tasks.name()));
    assert_eq!(dead.properties.delivery_mode, Some(2), "published persistent");
    assert_eq!(ready(&conn, tasks.name()).await, 0);
    conn.close().await.unwrap();
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
        .await
        .unwrap();
    assert!(tasks.publish(&b"flaky"[..]).await.unwrap().is_ack());
    until("the retry processed", || !done.lock().unwrap().is_empty()).await;
    let stats = worker.shutdown().await.unwrap();
    assert_eq!(*done.lock().unwrap(), [("flaky".to_owned(), true)]);
    assert_eq!((stats.panicked, stats.requeued, stats.acked, stats.dead_lettered), (1, 1, 1, 0), "{stats:?}");
    assert_eq!(ready(&conn, tasks.dead_letter_queue().unwrap()).await, 0);
    conn.close().await.unwrap();
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
        .await
        .unwrap();
    for body in ["busy", "not a number", "fine"] {
        assert!(tasks.publish(body.as_bytes().to_vec()).await.unwrap().is_ack());
    }
    until("busy retried and fine done", || acked.lock().unwrap().len() == 2).await;
    let stats = worker.shutdown().await.unwrap();
    let mut got = acked.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, ["busy", "fine"]);
    assert_eq!((stats.acked, stats.requeued, stats.dead_lettered, stats.panicked), (2, 1, 1, 0), "{stats:?}");
    let channel = conn.open_channel().await.unwrap();
    let (dead, _) = channel.basic_get(tasks.dead_letter_queue().unwrap(), true).await.unwrap().unwrap();
    assert_eq!(&dead.body[..], b"not a number");
    conn.close().await.unwrap();
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
                r.notified().await;
                f.lock().unwrap().push(text(&job));
            }
        })
        .await
        .unwrap();
    for body in ["slow", "later-1", "later-2"] {
        assert!(tasks.publish(body.as_bytes().to_vec()).await.unwrap().is_ack());
    }
    tokio::time::timeout(WAIT, started.notified()).await.unwrap();
    // The other two reach the worker's buffer: the queue has nothing ready.
    let deadline = Instant::now() + WAIT;
    while ready(&conn, tasks.name()).await != 0 {
        assert!(Instant::now() < deadline, "the worker did not prefetch the other two");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let shutdown = tokio::spawn(worker.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!shutdown.is_finished(), "shutdown returned while a handler was still running");
    release.notify_one();
    let stats = tokio::time::timeout(WAIT, shutdown).await.unwrap().unwrap().unwrap();
    assert_eq!(*finished.lock().unwrap(), ["slow"], "the one in flight finished; no new one started");
    assert_eq!((stats.acked, stats.requeued), (1, 2), "the prefetched ones were given back: {stats:?}");
    assert_eq!(ready(&conn, tasks.name()).await, 2, "the rest wait for the next worker");
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_handler_at_a_time_in_order_unless_told_otherwise() {
    let conn = connect().await;
    let (tasks, _cleanup) = work_queue(&conn, "wq.concurrency").await;
    for i in 0..8 {
        assert!(tasks.publish(format!("{i}").into_bytes()).await.unwrap().is_ack());
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
                tokio::time::sleep(Duration::from_millis(5)).await;
                now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                log.lock().unwrap().push(if overlapping { "overlap".to_owned() } else { text(&job) });
            }
        })
        .await
        .unwrap();
    until("eight handled", || order.lock().unwrap().len() == 8).await;
    worker.shutdown().await.unwrap();
    let want: Vec<String> = (0..8).map(|i| i.to_string()).collect();
    assert_eq!(*order.lock().unwrap(), want);

    // concurrency 4: four handlers that only finish together do finish.
    for i in 0..4 {
        assert!(tasks.publish(format!("{i}").into_bytes()).await.unwrap().is_ack());
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(4));
    let worker = tasks
        .worker(WorkerOptions::parallel(4), move |_job: Job| {
            let barrier = barrier.clone();
            async move {
                match tokio::time::timeout(WAIT, barrier.wait()).await {
                    Ok(_) => Outcome::Ack,
                    Err(_) => Outcome::DeadLetter,
                }
            }
        })
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while worker.stats().acked < 4 {
        assert!(Instant::now() < deadline, "four handlers did not run at once: {:?}", worker.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(worker.shutdown().await.unwrap().dead_lettered, 0);
    conn.close().await.unwrap();
}

#[tokio::test]
async fn handlers_past_the_shutdown_timeout_are_aborted_and_their_message_requeued() {
    let conn = connect().await;
    let (tasks, _cleanup) = work_queue(&conn, "wq.abort").await;
    let started = Arc::new(Notify::new());
    let s = started.clone();
    let options = WorkerOptions { shutdown_timeout: Some(Duration::from_millis(100)), ..WorkerOptions::default() };
    let worker = tasks
        .worker(options, move |_job: Job| {
            let s = s.clone();
            async move {
                s.notify_one();
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        })
        .await
        .unwrap();
    assert!(tasks.publish(&b"stuck"[..]).await.unwrap().is_ack());
    tokio::time::timeout(WAIT, started.notified()).await.unwrap();
    let stats = tokio::time::timeout(WAIT, worker.shutdown()).await.unwrap().unwrap();
    assert_eq!(stats.acked, 0);
    // The channel closed with the message unacknowledged: it is back in the queue.
    let deadline = Instant::now() + WAIT;
    while ready(&conn, tasks.name()).await != 1 {
        assert!(Instant::now() < deadline, "the aborted handler's message did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_deleted_queue_stops_the_worker_with_the_brokers_cancel() {
    let conn = connect().await;
    let (tasks, _cleanup) = work_queue(&conn, "wq.deleted").await;
    let worker = tasks.worker(WorkerOptions::default(), |_job: Job| async {}).await.unwrap();
    tasks.delete().await.unwrap();
    let result = tokio::time::timeout(WAIT, worker.join()).await.unwrap();
    assert!(matches!(result, Err(Error::CancelledByBroker(_))), "{result:?}");
    // Mandatory publishes to a queue that is gone come back.
    let verdict = tasks.publish(&b"lost?"[..]).await.unwrap();
    assert!(matches!(verdict, Confirmation::Returned(_)), "{verdict:?}");
    conn.close().await.unwrap();
}

#[tokio::test]
async fn options_dead_letter_elsewhere_or_nowhere_and_refuse_nonsense() {
    let conn = connect().await;
    let name = unique("wq.options");
    let dlq = format!("{name}.mine");
    let _cleanup =
        Cleanup::queues(vec![name.clone(), dlq.clone(), format!("{name}.none"), format!("{name}.none.dead")]);
    let channel = conn.open_channel().await.unwrap();
    channel.queue_declare(&dlq, QueueDeclareOptions::default(), Default::default()).await.unwrap();
    let options = WorkQueueOptions {
        dead_letter: DeadLetter::Exchange { exchange: String::new(), routing_key: Some(dlq.clone()) },
        ..WorkQueueOptions::default()
    };
    let tasks = WorkQueue::declare_with(&conn, &name, options).await.unwrap();
    assert_eq!(tasks.dead_letter_queue(), None);
    assert!(tasks.publish(&b"reject me"[..]).await.unwrap().is_ack());
    let worker = tasks.worker(WorkerOptions::default(), |_job: Job| async { Outcome::DeadLetter }).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while ready(&conn, &dlq).await == 0 {
        assert!(Instant::now() < deadline, "nothing dead-lettered to {dlq}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.shutdown().await.unwrap();

    let none = WorkQueueOptions { dead_letter: DeadLetter::None, confirms: false, ..WorkQueueOptions::default() };
    let plain = WorkQueue::declare_with(&conn, &format!("{name}.none"), none).await.unwrap();
    assert_eq!(plain.publish(&b"x"[..]).await.unwrap(), Confirmation::NotRequested);

    assert!(matches!(WorkQueue::declare(&conn, "").await, Err(Error::InvalidOperation(_))));
    let zero = WorkerOptions::prefetch(0);
    assert!(matches!(Worker::start(&conn, &name, zero, |_job: Job| async {}).await, Err(Error::InvalidOperation(_))));
    // Redeclaring with other arguments is the broker's 406, returned as an error.
    let err = WorkQueue::declare(&conn, &format!("{name}.none")).await.unwrap_err();
    assert_eq!(err.reply_code(), Some(lepus::ReplyCode::PRECONDITION_FAILED), "{err}");
    conn.close().await.unwrap();
}
