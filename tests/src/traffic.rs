//! Traffic that runs across faults and records everything for the recovery tests: a
//! publisher in confirm mode numbering its messages, and a manual-ack consumer that holds
//! back a few acknowledgements (so that some are made after a connection loss) and records
//! when each delivery came, when it was acked and what the ack returned.
//!
//! Each runs as a task until told to finish; every await in them is bounded, and what did
//! not finish in time is recorded, not waited for.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lepus::{Channel, Confirmation, Consumer, Delivery, Error, PublishOptions};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::bounded::within;

/// What became of one publish.
#[derive(Debug)]
pub enum Outcome {
    /// Confirmed.
    Ack,
    /// Refused by the broker.
    Nack,
    /// `basic_publish` itself failed (nothing was sent).
    PublishFailed(Error),
    /// The confirm resolved to an error (`ConnectionLost` when the connection went).
    Failed(Error),
    /// The confirm did not resolve within the publisher's limit.
    Hung,
}

/// Everything a [`Publisher`] did: `outcomes[id]` is message `id`'s.
#[derive(Debug, Default)]
pub struct Published {
    /// Per message id (the body is the id in decimal).
    pub outcomes: Vec<Option<Outcome>>,
}

impl Published {
    /// The ids whose confirm was an ack.
    pub fn acked(&self) -> Vec<u64> {
        self.ids(|o| matches!(o, Outcome::Ack))
    }

    /// The ids whose outcome matches `f`.
    pub fn ids(&self, f: impl Fn(&Outcome) -> bool) -> Vec<u64> {
        (0u64..).zip(&self.outcomes).filter(|(_, o)| o.as_ref().is_some_and(&f)).map(|(i, _)| i).collect()
    }
}

/// A task publishing `0`, `1`, `2`, ... (as decimal bodies) to a queue in confirm mode.
#[derive(Debug)]
pub struct Publisher {
    stop: Arc<AtomicBool>,
    published: Arc<AtomicU64>,
    task: JoinHandle<Published>,
}

impl Publisher {
    /// Starts publishing on `channel` (already in confirm mode) to `queue` through the
    /// default exchange, up to `count` messages (or until [`Publisher::finish`]). Each
    /// publish call may take `publish_wait`, each confirm `confirm_wait`.
    pub fn start(
        channel: Channel,
        queue: String,
        count: Option<u64>,
        publish_wait: Duration,
        confirm_wait: Duration,
    ) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicU64::new(0));
        let (stop_flag, counter) = (stop.clone(), published.clone());
        let task = tokio::spawn(async move {
            let (tx, mut rx) = mpsc::unbounded_channel::<(u64, lepus::PublisherConfirm)>();
            // Confirms are awaited in order by a task of their own, so that publishing
            // never waits for them beyond the connection's publish window.
            let resolver = tokio::spawn(async move {
                let mut resolved = Vec::new();
                while let Some((id, confirm)) = rx.recv().await {
                    let outcome = match tokio::time::timeout(confirm_wait, confirm).await {
                        Ok(Ok(Confirmation::Ack)) => Outcome::Ack,
                        Ok(Ok(Confirmation::Nack)) => Outcome::Nack,
                        Ok(Ok(other)) => Outcome::Failed(Error::InvalidOperation(if other.is_ack() {
                            "ack"
                        } else {
                            "a confirmation neither ack nor nack"
                        })),
                        Ok(Err(e)) => Outcome::Failed(e),
                        Err(_) => Outcome::Hung,
                    };
                    resolved.push((id, outcome));
                }
                resolved
            });
            let mut log = Published::default();
            let mut id = 0u64;
            while !stop_flag.load(Ordering::Acquire) && count.is_none_or(|c| id < c) {
                let publish = channel.basic_publish("", &queue, id.to_string(), PublishOptions::default());
                log.outcomes.push(None);
                match tokio::time::timeout(publish_wait, publish).await {
                    Ok(Ok(confirm)) => {
                        let _ = tx.send((id, confirm));
                    }
                    Ok(Err(e)) => log.outcomes[id as usize] = Some(Outcome::PublishFailed(e)),
                    Err(_) => log.outcomes[id as usize] = Some(Outcome::Hung),
                }
                id += 1;
                counter.store(id, Ordering::Release);
            }
            drop(tx);
            // The resolver ends within confirm_wait of the last confirm it was given.
            if let Ok(resolved) = resolver.await {
                for (id, outcome) in resolved {
                    log.outcomes[id as usize] = Some(outcome);
                }
            }
            log
        });
        Publisher { stop, published, task }
    }

    /// How many messages have been handed to `basic_publish` and returned from it.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Whether the publisher has published its `count` (or was stopped) and resolved all.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops publishing and returns the outcomes once every confirm resolved.
    ///
    /// # Panics
    ///
    /// When that takes over `limit`, or the task panicked.
    pub async fn finish(self, limit: Duration) -> Published {
        self.stop.store(true, Ordering::Release);
        within(limit, "the publisher to finish", self.task).await.expect("the publisher task")
    }
}

/// One delivery as the consumer saw it.
#[derive(Debug)]
pub struct Received {
    /// The message id (its body).
    pub id: u64,
    /// The broker's redelivered flag.
    pub redelivered: bool,
    /// When the consumer got it.
    pub at: Instant,
    /// When it was acked, and what the ack returned (`None`: not acked yet).
    pub ack: Option<(Instant, Result<(), Error>)>,
}

/// What a [`Consuming`] saw.
#[derive(Debug, Default)]
pub struct Consumed {
    /// Every delivery, in order.
    pub received: Vec<Received>,
    /// Errors the consumer stream yielded.
    pub errors: Vec<Error>,
    /// Whether the stream ended (`None` from `next`) while running.
    pub ended: bool,
}

impl Consumed {
    /// How many deliveries of `id` there were.
    pub fn count(&self, id: u64) -> usize {
        self.received.iter().filter(|r| r.id == id).count()
    }
}

/// A task consuming with manual acks, holding back the last `hold` deliveries unacked (each
/// is acked once `hold` newer ones came, or at the end).
#[derive(Debug)]
pub struct Consuming {
    log: Arc<Mutex<Consumed>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Consuming {
    /// Starts reading `consumer`; each ack may take `ack_wait`.
    pub fn start(mut consumer: Consumer, hold: usize, ack_wait: Duration) -> Consuming {
        let log = Arc::new(Mutex::new(Consumed::default()));
        let (stop, mut stop_rx) = watch::channel(false);
        let shared = log.clone();
        let task = tokio::spawn(async move {
            let mut held: VecDeque<(usize, Delivery)> = VecDeque::new();
            let ack = |index: usize, delivery: Delivery| {
                let shared = shared.clone();
                async move {
                    let result = match tokio::time::timeout(ack_wait, delivery.ack()).await {
                        Ok(r) => r,
                        Err(_) => Err(Error::Timeout("ack (test limit)")),
                    };
                    let mut log = shared.lock().unwrap_or_else(PoisonError::into_inner);
                    log.received[index].ack = Some((Instant::now(), result));
                }
            };
            loop {
                tokio::select! {
                    next = consumer.next() => match next {
                        Some(Ok(delivery)) => {
                            let id = std::str::from_utf8(&delivery.body).ok().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
                            let index = {
                                let mut log = shared.lock().unwrap_or_else(PoisonError::into_inner);
                                log.received.push(Received { id, redelivered: delivery.redelivered, at: Instant::now(), ack: None });
                                log.received.len() - 1
                            };
                            held.push_back((index, delivery));
                            while held.len() > hold {
                                if let Some((index, delivery)) = held.pop_front() {
                                    ack(index, delivery).await;
                                }
                            }
                        }
                        Some(Err(e)) => shared.lock().unwrap_or_else(PoisonError::into_inner).errors.push(e),
                        None => {
                            shared.lock().unwrap_or_else(PoisonError::into_inner).ended = true;
                            break;
                        }
                    },
                    _ = stop_rx.changed() => break,
                }
            }
            for (index, delivery) in held {
                ack(index, delivery).await;
            }
        });
        Consuming { log, stop, task }
    }

    /// Runs `f` on what has been consumed so far.
    pub fn with<R>(&self, f: impl FnOnce(&Consumed) -> R) -> R {
        f(&self.log.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Stops consuming (acking what it held) and returns what it saw. The consumer is
    /// dropped (its cancel goes to the broker).
    ///
    /// # Panics
    ///
    /// When that takes over `limit`, or the task panicked.
    pub async fn finish(self, limit: Duration) -> Consumed {
        let _ = self.stop.send(true);
        within(limit, "the consumer to finish", self.task).await.expect("the consumer task");
        std::mem::take(&mut *self.log.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Connection events with the time each was seen, collected by a task.
#[derive(Debug)]
pub struct EventLog {
    events: Arc<Mutex<Vec<(Instant, lepus::ConnectionEvent)>>>,
    task: JoinHandle<()>,
}

impl EventLog {
    /// Collects `conn`'s events from now on.
    pub fn start(conn: &lepus::Connection) -> EventLog {
        let mut rx = conn.events();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let task = tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(event) => sink.lock().unwrap_or_else(PoisonError::into_inner).push((Instant::now(), event)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        EventLog { events, task }
    }

    /// The events seen so far that `f` picks out, with their times.
    pub fn find<T>(&self, f: impl Fn(&lepus::ConnectionEvent) -> Option<T>) -> Vec<(Instant, T)> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|(at, e)| f(e).map(|t| (*at, t)))
            .collect()
    }

    /// Every event seen so far, for messages.
    pub fn all(&self) -> Vec<String> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).iter().map(|(_, e)| format!("{e:?}")).collect()
    }

    /// The `Disconnected` events' times.
    pub fn disconnects(&self) -> Vec<Instant> {
        self.find(|e| matches!(e, lepus::ConnectionEvent::Disconnected { .. }).then_some(()))
            .into_iter()
            .map(|(at, ())| at)
            .collect()
    }

    /// The `Recovered` events: times and addresses.
    pub fn recoveries(&self) -> Vec<(Instant, String)> {
        self.find(|e| match e {
            lepus::ConnectionEvent::Recovered { address } => Some(address.clone()),
            _ => None,
        })
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}
