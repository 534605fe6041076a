//! Shared by the patterns' broker tests: where the broker is, unique names, bounded waits,
//! and a guard that deletes what a test declared even when the test fails.
//!
//! Every await in these tests is bounded, so a hang fails the test with the step's name
//! instead of stalling the run: `.within("what")` for one step (up to [`STEP`]),
//! `.within_for(limit, "what")` for a longer one, [`wait_until`] / [`wait_until_async`]
//! to wait for a condition with a deadline. Tests never sleep to let something happen.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::{
    future::Future,
    panic::Location,
    pin::Pin,
    sync::atomic::{AtomicU32, Ordering},
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lepus::{Connection, QueueDeclareOptions, QueueDeleteOptions};
use lepus_patterns::event_bus::ConsumerGroup;

/// How long one step may take: a broker round trip, a delivery, a shutdown. Far above what
/// any takes on a loaded machine, far below a stalled CI job.
pub(crate) const STEP: Duration = Duration::from_secs(10);

/// How often [`wait_until`] looks at its condition.
const POLL: Duration = Duration::from_millis(10);

/// Bounds a future: it panics, naming the step and where it was awaited, if the future
/// has not finished in time.
pub(crate) trait Within: Future + Sized {
    /// This future, within [`STEP`].
    #[track_caller]
    fn within(self, what: &str) -> Bounded<Self> {
        self.within_for(STEP, what)
    }

    /// This future, within `limit`.
    #[track_caller]
    fn within_for(self, limit: Duration, what: &str) -> Bounded<Self> {
        Bounded { state: State::Idle(Some(self)), limit, what: what.to_owned(), at: Location::caller() }
    }
}

impl<F: Future> Within for F {}

/// A future with a deadline (from [`Within`]).
pub(crate) struct Bounded<F: Future> {
    state: State<F>,
    limit: Duration,
    what: String,
    at: &'static Location<'static>,
}

/// The timer starts at the first poll: a bounded future may be built outside a runtime.
enum State<F: Future> {
    Idle(Option<F>),
    Running(Pin<Box<tokio::time::Timeout<F>>>),
}

// The wrapped future is never polled where it lies: it is moved into the boxed timeout
// first, and pinned there. So moving a `Bounded` is fine whatever the future.
impl<F: Future> Unpin for Bounded<F> {}

impl<F: Future> Future for Bounded<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let limit = self.limit;
        if let State::Idle(future) = &mut self.state {
            let future = future.take().expect("a bounded future is polled after it finished");
            self.state = State::Running(Box::pin(tokio::time::timeout(limit, future)));
        }
        let State::Running(timeout) = &mut self.state else { unreachable!("started above") };
        match timeout.as_mut().poll(cx) {
            Poll::Ready(Ok(output)) => Poll::Ready(output),
            Poll::Ready(Err(_)) => {
                panic!("{} did not finish within {:?} (awaited at {})", self.what, self.limit, self.at)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Waits until `condition` holds, looking every 10 ms; panics after `limit`.
pub(crate) async fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_until`] for a condition that has to ask the broker: each look is bounded by
/// [`STEP`] too.
pub(crate) async fn wait_until_async(limit: Duration, what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition().within(what).await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// The broker: `AMQP_URL`, or the local RabbitMQ.
pub(crate) fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A name no other test, run or process uses at the same time.
pub(crate) fn unique(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("lepus.patterns.test.{name}.{}.{nanos}.{n}", std::process::id())
}

/// A connection to the test broker, or a panic that says where it looked.
pub(crate) async fn connect() -> Connection {
    match Connection::connect(&url()).within("connecting to the test broker").await {
        Ok(conn) => conn,
        Err(e) => panic!("cannot connect to the test broker at {} (is it running?): {e}", url()),
    }
}

/// Messages ready in `queue` (a passive declare on a channel of its own).
pub(crate) async fn ready(conn: &Connection, queue: &str) -> u32 {
    let count = async {
        let channel = conn.open_channel().await.unwrap();
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let declared = channel.queue_declare(queue, passive, Default::default()).await.unwrap();
        channel.close().await.unwrap();
        declared.message_count
    };
    count.within("counting a queue's messages").await
}

/// Deletes `queue` and returns how many messages it held.
pub(crate) async fn delete_queue(conn: &Connection, queue: &str) -> u32 {
    let delete = async {
        let channel = conn.open_channel().await.unwrap();
        let held = channel.queue_delete(queue, QueueDeleteOptions::default()).await.unwrap();
        channel.close().await.unwrap();
        held
    };
    delete.within("deleting a queue").await
}

/// Deletes queues and exchanges when dropped, even when the test failed: on a thread with a
/// runtime and a connection of its own.
pub(crate) struct Cleanup {
    pub(crate) queues: Vec<String>,
    pub(crate) exchanges: Vec<String>,
}

impl Cleanup {
    /// A guard for queues only.
    pub(crate) fn queues(queues: Vec<String>) -> Self {
        Cleanup { queues, exchanges: Vec::new() }
    }

    /// A guard for an event bus's exchange.
    pub(crate) fn bus(name: &str) -> Self {
        Cleanup { queues: Vec::new(), exchanges: vec![name.to_owned()] }
    }

    /// Adds a consumer group's queues and dead-letter exchange.
    pub(crate) fn group(&mut self, group: &ConsumerGroup) {
        let topology = group.topology();
        self.queues.extend(topology.retry_queues().into_iter().map(|(name, _)| name));
        self.queues.push(topology.queue().to_owned());
        self.queues.push(topology.dead_letter_queue_name().to_owned());
        self.exchanges.push(topology.dead_letter_exchange_name().to_owned());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut self.queues);
        let exchanges = std::mem::take(&mut self.exchanges);
        let cleaner = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let conn = connect().await;
                let channel = conn.open_channel().within("opening the cleanup channel").await.unwrap();
                for q in &queues {
                    channel.queue_delete(q, QueueDeleteOptions::default()).within("deleting a queue").await.unwrap();
                }
                for e in &exchanges {
                    channel.exchange_delete(e, false).within("deleting an exchange").await.unwrap();
                }
                conn.close().within("closing the cleanup connection").await.unwrap();
            });
        });
        let failed = cleaner.join().is_err();
        assert!(!failed || std::thread::panicking(), "cleaning up the test's queues and exchanges failed");
    }
}
