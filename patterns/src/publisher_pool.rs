//! Publishing with confirms from many tasks through a small pool of confirm-mode channels
//! on one connection: [`PublisherPool`].
//!
//! A channel is a sequence: one channel shared by every task serialises their publishes
//! behind one confirm window, while a channel per task costs the broker a process each.
//! The pool keeps a fixed number of channels and hands publishes to them in turn.
//!
//! A channel the broker closes — a publish to an exchange that does not exist closes it
//! with 404 — is replaced by a fresh one on the next publish that picks it; later
//! publishes never see the broken one. Each publish still resolves to its own outcome:
//! the publish that broke the channel, and the others in flight on it then, get the
//! channel's error; a publish that had not been handed to the channel yet (its
//! `basic_publish` saw the channel closed) is sent again on the replacement, once, since
//! the broker never saw it.

use std::{
    fmt,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use lepus::{Channel, Confirmation, Connection, PublishOptions, PublisherConfirm};

/// Settings of a [`PublisherPool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherPoolOptions {
    /// Channels in the pool; at least 1 (default 4).
    pub size: usize,
    /// How long [`PublisherPool::publish`] waits for the broker's confirm, and for a
    /// replacement channel to open (default 30 s).
    pub confirm_timeout: Duration,
}

impl Default for PublisherPoolOptions {
    fn default() -> Self {
        PublisherPoolOptions { size: 4, confirm_timeout: Duration::from_secs(30) }
    }
}

struct Slot {
    current: Mutex<Channel>,
    /// Held while a replacement opens, so one closed channel is replaced once.
    reopening: tokio::sync::Mutex<()>,
}

impl Slot {
    fn channel(&self) -> Channel {
        self.current.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

struct Shared {
    conn: Connection,
    slots: Vec<Slot>,
    next: AtomicUsize,
    replaced: AtomicU64,
    timeout: Duration,
}

/// A pool of confirm-mode channels shared by any number of publishing tasks. Cheap to
/// clone; clones share the channels.
///
/// ```no_run
/// use lepus::{Confirmation, Connection, PublishOptions};
/// use lepus_patterns::publisher_pool::{PublisherPool, PublisherPoolOptions};
///
/// # async fn demo() -> Result<(), lepus::Error> {
/// let conn = Connection::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
/// let pool = PublisherPool::new(&conn, PublisherPoolOptions::default()).await?;
/// let mut tasks = Vec::new();
/// for t in 0..16 {
///     let pool = pool.clone();
///     tasks.push(tokio::spawn(async move {
///         for i in 0..100 {
///             let body = format!("task {t} message {i}");
///             match pool.publish("", "jobs", body, PublishOptions::default()).await {
///                 Ok(Confirmation::Ack) => {}
///                 Ok(other) => eprintln!("not taken: {other:?}"),
///                 Err(e) => eprintln!("failed: {e}"),
///             }
///         }
///     }));
/// }
/// for task in tasks {
///     let _ = task.await;
/// }
/// pool.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PublisherPool {
    shared: Arc<Shared>,
}

impl fmt::Debug for PublisherPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublisherPool")
            .field("size", &self.size())
            .field("replaced", &self.replaced_channels())
            .finish_non_exhaustive()
    }
}

async fn open_confirm_channel(conn: &Connection, timeout: Duration) -> Result<Channel, lepus::Error> {
    let open = async {
        let channel = conn.open_channel().await?;
        channel.confirm_select().await?;
        Ok(channel)
    };
    tokio::time::timeout(timeout, open).await.map_err(|_| lepus::Error::Timeout("opening a confirm-mode channel"))?
}

impl PublisherPool {
    /// Opens the pool's channels on `conn`, in confirm mode.
    pub async fn new(conn: &Connection, options: PublisherPoolOptions) -> Result<PublisherPool, lepus::Error> {
        let mut slots = Vec::new();
        for _ in 0..options.size.max(1) {
            let channel = open_confirm_channel(conn, options.confirm_timeout).await?;
            slots.push(Slot { current: Mutex::new(channel), reopening: tokio::sync::Mutex::new(()) });
        }
        Ok(PublisherPool {
            shared: Arc::new(Shared {
                conn: conn.clone(),
                slots,
                next: AtomicUsize::new(0),
                replaced: AtomicU64::new(0),
                timeout: options.confirm_timeout,
            }),
        })
    }

    /// Channels in the pool.
    pub fn size(&self) -> usize {
        self.shared.slots.len()
    }

    /// Channels replaced so far because they had closed.
    pub fn replaced_channels(&self) -> u64 {
        self.shared.replaced.load(Ordering::Relaxed)
    }

    /// Publishes through the next channel in turn and waits for the broker's verdict:
    /// `Ok(Ack)`, `Ok(Nack)`, `Ok(Returned(..))` for a mandatory message no queue took, or
    /// the error that closed the channel first (a 404 for a missing exchange), or
    /// [`lepus::Error::Timeout`] after the confirm timeout.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: impl Into<Bytes>,
        options: PublishOptions,
    ) -> Result<Confirmation, lepus::Error> {
        let confirm = self.start_publish(exchange, routing_key, body, options).await?;
        match tokio::time::timeout(self.shared.timeout, confirm).await {
            Ok(result) => result,
            Err(_) => Err(lepus::Error::Timeout("waiting for a publisher confirm")),
        }
    }

    /// Hands the message to the next channel in turn and returns its confirm without
    /// waiting for it, so one task can keep several publishes in flight. The confirm
    /// resolves when the broker answers or the channel closes; bound the wait yourself.
    pub async fn start_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: impl Into<Bytes>,
        options: PublishOptions,
    ) -> Result<PublisherConfirm, lepus::Error> {
        let body = body.into();
        let at = self.shared.next.fetch_add(1, Ordering::Relaxed) % self.shared.slots.len().max(1);
        let Some(slot) = self.shared.slots.get(at) else {
            return Err(lepus::Error::InvalidOperation("the publisher pool has no channels"));
        };
        let mut retried = false;
        loop {
            let channel = self.open_channel(slot).await?;
            match channel.basic_publish(exchange, routing_key, body.clone(), options.clone()).await {
                Ok(confirm) => return Ok(confirm),
                // The channel closed before taking the message: the broker never saw it,
                // so it goes once more, on the replacement.
                Err(lepus::Error::ChannelClosed(_)) if !retried && !channel.is_open() => retried = true,
                Err(e) => return Err(e),
            }
        }
    }

    /// The slot's channel, replaced first if it has closed.
    async fn open_channel(&self, slot: &Slot) -> Result<Channel, lepus::Error> {
        let channel = slot.channel();
        if channel.is_open() {
            return Ok(channel);
        }
        let _reopening = slot.reopening.lock().await;
        // Someone else may have replaced it while we waited.
        let channel = slot.channel();
        if channel.is_open() {
            return Ok(channel);
        }
        let fresh = open_confirm_channel(&self.shared.conn, self.shared.timeout).await?;
        tracing::debug!(closed = ?channel.close_reason(), "publisher pool: replacing a closed channel");
        *slot.current.lock().unwrap_or_else(PoisonError::into_inner) = fresh.clone();
        self.shared.replaced.fetch_add(1, Ordering::Relaxed);
        Ok(fresh)
    }

    /// Closes the pool's channels (publishes in flight on them fail).
    pub async fn close(&self) {
        for slot in &self.shared.slots {
            let _ = tokio::time::timeout(self.shared.timeout, slot.channel().close()).await;
        }
    }
}
