//! Load and bookkeeping for recovery tests (`tests/tests/broker_recovery.rs`): a publisher
//! that records how each confirm ended, a consumer that records what it got, a log of a
//! connection's events that a test can look back on, and a wait for the next event.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lepus::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionEvent, Consumer, Delivery, Error, PublishOptions,
};

use crate::bounded::Bounded;

/// Locks `m`, also after a panic elsewhere (the data is bookkeeping, still valid).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A persistent message.
pub fn persistent() -> PublishOptions {
    PublishOptions {
        properties: BasicProperties { delivery_mode: Some(2), ..Default::default() },
        ..Default::default()
    }
}

/// A delivery's body as text.
pub fn body(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.body).into_owned()
}

/// The next event from `events` that `pred` accepts, skipping the others (and a lag),
/// within `limit`.
///
/// # Panics
///
/// When none comes within `limit`, or the events end first.
pub async fn next_event(
    events: &mut tokio::sync::broadcast::Receiver<ConnectionEvent>,
    limit: Duration,
    what: &str,
    pred: impl Fn(&ConnectionEvent) -> bool,
) -> ConnectionEvent {
    use tokio::sync::broadcast::error::RecvError;
    crate::bounded::within(limit, what, async {
        loop {
            match events.recv().await {
                Ok(e) if pred(&e) => return e,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => panic!("events ended while waiting for {what}"),
            }
        }
    })
    .await
}

/// Every connection event, with when it came, collected by a task of its own so that a
/// step can look back (an event may come before the step starts waiting for it).
#[derive(Clone)]
pub struct EventLog(Arc<Mutex<Vec<(Instant, ConnectionEvent)>>>);

impl EventLog {
    /// Starts collecting `conn`'s events.
    pub fn watch(conn: &Connection) -> EventLog {
        let log = EventLog(Arc::default());
        let mut events = conn.events();
        let sink = log.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => lock(&sink.0).push((Instant::now(), event)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        eprintln!("    (event log lagged by {n})");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        log
    }

    /// How many events so far: a mark to search from.
    pub fn mark(&self) -> usize {
        lock(&self.0).len()
    }

    /// The first event at or after `from` for which `matches` holds, waiting up to `limit`.
    ///
    /// # Panics
    ///
    /// When none comes within `limit`, listing the events seen.
    pub async fn wait(
        &self,
        from: usize,
        limit: Duration,
        what: &str,
        matches: impl Fn(&ConnectionEvent) -> bool,
    ) -> (usize, Instant, ConnectionEvent) {
        let find = || {
            let log = lock(&self.0);
            log.iter().enumerate().skip(from).find(|(_, (_, e))| matches(e)).map(|(i, (at, e))| (i, *at, e.clone()))
        };
        let deadline = Instant::now() + limit;
        loop {
            if let Some(found) = find() {
                return found;
            }
            assert!(Instant::now() <= deadline, "no {what} event within {limit:?}; events: {:#?}", self.summary());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Every event so far, formatted.
    pub fn summary(&self) -> Vec<String> {
        lock(&self.0).iter().map(|(_, e)| format!("{e:?}")).collect()
    }

    /// How many events at or after `from` match.
    pub fn count(&self, from: usize, matches: impl Fn(&ConnectionEvent) -> bool) -> usize {
        lock(&self.0).iter().skip(from).filter(|(_, e)| matches(e)).count()
    }
}

/// How each publish of a [`Publisher`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The broker acked it.
    Acked,
    /// `Error::ConnectionLost`: the outcome is unknown.
    Lost,
    /// Anything else (a nack, another error, a hang): a failure of the contract.
    Other(String),
}

/// A task publishing persistent, confirmed messages `0, 1, 2, ...` to a queue until
/// stopped; each confirm is awaited by a task of its own (bounded), and its outcome
/// recorded once per id.
pub struct Publisher {
    stop: Arc<AtomicBool>,
    published: Arc<AtomicUsize>,
    outcomes: Arc<Mutex<BTreeMap<usize, Vec<Outcome>>>>,
    task: tokio::task::JoinHandle<Vec<tokio::task::JoinHandle<()>>>,
}

impl Publisher {
    /// Starts publishing on `ch` (in confirm mode) to `queue`, pausing `pace` between
    /// publishes (yielding only, if zero).
    ///
    /// # Panics
    ///
    /// In the task, when a publish fails or takes over 30 s.
    pub fn start(ch: Channel, queue: &'static str, pace: Duration) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicUsize::new(0));
        let outcomes: Arc<Mutex<BTreeMap<usize, Vec<Outcome>>>> = Arc::default();
        let (stop2, published2, outcomes2) = (stop.clone(), published.clone(), outcomes.clone());
        let task = tokio::spawn(async move {
            let mut waiters = Vec::new();
            let mut id = 0;
            while !stop2.load(Ordering::Acquire) {
                let confirm = ch
                    .basic_publish("", queue, id.to_string().into_bytes(), persistent())
                    .within(Duration::from_secs(30))
                    .await
                    .unwrap_or_else(|e| panic!("publish {id}: {e}"));
                published2.store(id + 1, Ordering::Release);
                let outcomes = outcomes2.clone();
                waiters.push(tokio::spawn(async move {
                    let outcome = match tokio::time::timeout(Duration::from_secs(30), confirm).await {
                        Ok(Ok(Confirmation::Ack)) => Outcome::Acked,
                        Ok(Err(Error::ConnectionLost(_))) => Outcome::Lost,
                        Ok(other) => Outcome::Other(format!("{other:?}")),
                        Err(_) => Outcome::Other("hung for 30 s".to_owned()),
                    };
                    lock(&outcomes).entry(id).or_default().push(outcome);
                }));
                id += 1;
                if pace.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(pace).await;
                }
            }
            waiters
        });
        Publisher { stop, published, outcomes, task }
    }

    /// How many were published so far.
    pub fn published(&self) -> usize {
        self.published.load(Ordering::Acquire)
    }

    /// Stops publishing, waits for every confirm, and returns each id's outcome, checking
    /// that every publish has exactly one.
    ///
    /// # Panics
    ///
    /// When a publish resolved other than once, or other than acked or `ConnectionLost`.
    pub async fn finish(self, what: &str) -> BTreeMap<usize, Outcome> {
        self.stop.store(true, Ordering::Release);
        let waiters = self.task.within(Duration::from_secs(35)).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        for waiter in waiters {
            waiter.within(Duration::from_secs(35)).await.unwrap();
        }
        let outcomes = lock(&self.outcomes).clone();
        let published = self.published.load(Ordering::Acquire);
        assert_eq!(outcomes.len(), published, "{what}: every publish's confirm resolved");
        outcomes
            .into_iter()
            .map(|(id, mut o)| {
                assert_eq!(o.len(), 1, "{what}: publish {id} resolved {} times: {o:?}", o.len());
                let outcome = o.remove(0);
                assert!(!matches!(outcome, Outcome::Other(_)), "{what}: publish {id}: {outcome:?}");
                (id, outcome)
            })
            .collect()
    }
}

/// The ids whose publish the broker acked.
pub fn acked(outcomes: &BTreeMap<usize, Outcome>) -> BTreeSet<usize> {
    outcomes.iter().filter(|(_, o)| **o == Outcome::Acked).map(|(id, _)| *id).collect()
}

/// A task consuming ids from a consumer, acking each; stale acks (deliveries of a lost
/// connection) and stream errors are counted.
pub struct Collector {
    seen: Arc<Mutex<BTreeSet<usize>>>,
    stale: Arc<AtomicUsize>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Consumer>,
}

impl Collector {
    /// Starts consuming from `consumer`.
    pub fn start(mut consumer: Consumer) -> Collector {
        let seen: Arc<Mutex<BTreeSet<usize>>> = Arc::default();
        let stale = Arc::new(AtomicUsize::new(0));
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stale2, errors2, stop2) = (seen.clone(), stale.clone(), errors.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !stop2.load(Ordering::Acquire) {
                match tokio::time::timeout(Duration::from_millis(200), consumer.next()).await {
                    Err(_) => {}
                    Ok(Some(Ok(d))) => {
                        if let Ok(id) = body(&d).parse() {
                            lock(&seen2).insert(id);
                        }
                        match d.ack().within(Duration::from_secs(30)).await {
                            Ok(()) => {}
                            Err(Error::StaleDeliveryTag(_)) => {
                                stale2.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => lock(&errors2).push(format!("ack: {e}")),
                        }
                    }
                    Ok(Some(Err(e))) => lock(&errors2).push(format!("stream: {e}")),
                    Ok(None) => {
                        lock(&errors2).push("stream ended".to_owned());
                        break;
                    }
                }
            }
            consumer
        });
        Collector { seen, stale, errors, stop, task }
    }

    /// The ids consumed so far.
    pub fn seen(&self) -> BTreeSet<usize> {
        lock(&self.seen).clone()
    }

    /// Stops consuming: the ids consumed, the stale acks, the errors seen, and the
    /// consumer.
    ///
    /// # Panics
    ///
    /// When the consuming task panicked or does not stop within 15 s.
    pub async fn finish(self) -> (BTreeSet<usize>, usize, Vec<String>, Consumer) {
        self.stop.store(true, Ordering::Release);
        let consumer = self.task.within(Duration::from_secs(15)).await.unwrap();
        let errors = lock(&self.errors).clone();
        let seen = lock(&self.seen).clone();
        (seen, self.stale.load(Ordering::Relaxed), errors, consumer)
    }
}
