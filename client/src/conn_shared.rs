//! State of one connection that the driver writes and every handle reads: tuning, the
//! blocked and closed states, the events stream, and the budgets that bound what handles may
//! hand to the driver (publish bytes) and what the driver may hand to consumers (unread
//! deliveries). It holds no way to send commands, so the driver keeping it does not keep
//! the connection alive.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lepus_codec::{FieldTable, ReplyCode, ShortStr};
use tokio::sync::{Notify, Semaphore, broadcast, watch};

use crate::{CloseReason, ConnectionEvent, Error, command_queue::CommandQueue, metrics::Metrics, proto::Tuning};

/// Connection events kept for slow readers of [`crate::Connection::events`].
const EVENT_CAPACITY: usize = 64;

/// The limits handles apply, from the connection's options.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HandleLimits {
    /// Publishes a confirming channel may have awaiting their confirm.
    pub(crate) publish_window: usize,
    /// How long a publish may wait while the broker blocks the connection.
    pub(crate) blocked_timeout: Option<Duration>,
    /// The default deadline of every call a handle makes.
    pub(crate) call_timeout: Option<Duration>,
    /// Whether calls and publishes fail at once while recovering (else they wait).
    pub(crate) fail_fast_while_down: bool,
    /// How long they wait for recovery.
    pub(crate) recovery_wait: Duration,
    /// Whether confirmed publishes keep their frames for republishing after a recovery.
    pub(crate) republish: bool,
    /// Bytes of publishes handed to the driver and not yet taken by it.
    pub(crate) publish_budget: usize,
    /// Bytes of deliveries waiting for the application before the socket stops being read.
    pub(crate) max_unread: usize,
}

pub(crate) struct ConnShared {
    info: Mutex<Option<(Tuning, FieldTable)>>,
    /// The negotiated `frame_max`, read on every publish.
    frame_max: AtomicU32,
    blocked: watch::Sender<Option<String>>,
    closed: watch::Sender<Option<Error>>,
    /// Mirrors of `blocked` and `closed` being `Some`, for the publish path's checks: a
    /// plain load, where the watch takes its lock.
    is_blocked: AtomicBool,
    is_closed: AtomicBool,
    /// Set when the driver task has ended and released the socket.
    finished: watch::Sender<bool>,
    events: broadcast::Sender<ConnectionEvent>,
    pub(crate) limits: HandleLimits,
    /// Publishers take permits (bytes) before handing frames over; the driver gives them
    /// back as it takes the frames. Closed when the driver ends, failing every waiter.
    pub(crate) publish_budget: Semaphore,
    /// Bytes in consumer queues that the application has not taken yet.
    unread: AtomicUsize,
    /// Whether the driver stopped reading the socket because `unread` is too high.
    reading_paused: AtomicBool,
    /// Wakes the driver when the application has taken enough to resume reading.
    pub(crate) resume_reading: Notify,
    /// A close the application asked for, for a driver that is not taking commands (its
    /// output is stuck): it must still close, and the close must not wait behind publishes.
    close_request: Mutex<Option<(ReplyCode, String)>>,
    pub(crate) close_signal: Notify,
    /// Numbers the consumer tags chosen by the client.
    consumers: AtomicU64,
    /// Numbers channels (their identity across recoveries).
    channels: AtomicU64,
    /// `Some(cause)` while the connection is down and recovering.
    down: watch::Sender<Option<Error>>,
    /// Mirrors `down.is_some()` for the publish hot path.
    is_down: AtomicBool,
    /// Server-named queues renamed by recovery: earlier name to current.
    renames: Mutex<HashMap<ShortStr, ShortStr>>,
    has_renames: AtomicBool,
    /// Completed recoveries.
    recoveries: AtomicU64,
    /// The connection's name (the `connection_name` option), for tracing spans.
    name: Option<String>,
    /// Where events are counted, if anywhere.
    metrics: Option<Arc<dyn Metrics>>,
    /// Whether a handshake completed: only then does the close count as a connection closed.
    opened: AtomicBool,
    /// Since when the broker blocks the connection, to report how long it did.
    blocked_since: Mutex<Option<Instant>>,
    /// The handles' commands on their way to the driver (see `command_queue/mod.rs`).
    pub(crate) commands: CommandQueue,
}

impl ConnShared {
    pub(crate) fn new(limits: HandleLimits, name: Option<String>, metrics: Option<Arc<dyn Metrics>>) -> Self {
        ConnShared {
            info: Mutex::new(None),
            frame_max: AtomicU32::new(0),
            blocked: watch::Sender::new(None),
            closed: watch::Sender::new(None),
            is_blocked: AtomicBool::new(false),
            is_closed: AtomicBool::new(false),
            finished: watch::Sender::new(false),
            events: broadcast::Sender::new(EVENT_CAPACITY),
            publish_budget: Semaphore::new(limits.publish_budget),
            limits,
            unread: AtomicUsize::new(0),
            reading_paused: AtomicBool::new(false),
            resume_reading: Notify::new(),
            close_request: Mutex::new(None),
            close_signal: Notify::new(),
            consumers: AtomicU64::new(0),
            channels: AtomicU64::new(0),
            down: watch::Sender::new(None),
            is_down: AtomicBool::new(false),
            renames: Mutex::new(HashMap::new()),
            has_renames: AtomicBool::new(false),
            recoveries: AtomicU64::new(0),
            name,
            metrics,
            opened: AtomicBool::new(false),
            blocked_since: Mutex::new(None),
            commands: CommandQueue::new(),
        }
    }

    // ---- written by the driver ---------------------------------------------------------

    pub(crate) fn connected(&self, tuning: Tuning, server_properties: FieldTable) {
        self.frame_max.store(tuning.frame_max, Ordering::Release);
        *self.info.lock().unwrap_or_else(PoisonError::into_inner) = Some((tuning, server_properties));
        if !self.opened.swap(true, Ordering::AcqRel)
            && let Some(metrics) = self.metrics()
        {
            metrics.connection_opened();
        }
    }

    pub(crate) fn set_blocked(&self, reason: Option<String>) {
        let event = match &reason {
            Some(r) => ConnectionEvent::Blocked(r.clone()),
            None => ConnectionEvent::Unblocked,
        };
        if reason.is_some() {
            self.blocked_since.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert_with(Instant::now);
        } else {
            self.block_ended();
        }
        self.send_blocked(reason);
        // Nobody listening is fine: events never wait for readers.
        let _ = self.events.send(event);
    }

    fn send_blocked(&self, reason: Option<String>) {
        self.is_blocked.store(reason.is_some(), Ordering::Release);
        self.blocked.send_replace(reason);
    }

    /// The connection is over (the driver may still be releasing the socket).
    pub(crate) fn closed(&self, error: &Error) {
        if self.closed.borrow().is_some() {
            return;
        }
        self.closed.send_replace(Some(error.clone()));
        self.is_closed.store(true, Ordering::Release);
        // A closed connection blocks nobody: publishers waiting for the block to lift wake
        // up and find the connection closed.
        self.block_ended();
        self.send_blocked(None);
        if self.opened.load(Ordering::Acquire)
            && let Some(metrics) = self.metrics()
        {
            metrics.connection_closed();
        }
        // Publishers waiting for budget fail now rather than when the socket is released.
        self.publish_budget.close();
        let _ = self.events.send(ConnectionEvent::Closed(error.clone()));
    }

    /// Sends a connection event (nobody listening is fine).
    pub(crate) fn event(&self, event: ConnectionEvent) {
        let _ = self.events.send(event);
    }

    /// The connection went down and recovery starts (`Some`), or it is back (`None`).
    pub(crate) fn set_down(&self, cause: Option<Error>) {
        let down = cause.is_some();
        if down {
            // A new connection starts unblocked; waiters must see the recovery instead.
            self.block_ended();
            self.send_blocked(None);
        } else {
            self.recoveries.fetch_add(1, Ordering::Relaxed);
            if let Some(metrics) = self.metrics() {
                metrics.recovered();
            }
        }
        self.is_down.store(down, Ordering::Release);
        self.down.send_replace(cause);
    }

    /// A block by the broker is over (lifted, or the connection is gone): report its length.
    fn block_ended(&self) {
        let since = self.blocked_since.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let (Some(since), Some(metrics)) = (since, self.metrics()) {
            metrics.blocked(since.elapsed());
        }
    }

    /// Recovery renamed server-named queues: publishes naming them follow.
    pub(crate) fn set_renames(&self, renames: HashMap<ShortStr, ShortStr>) {
        self.has_renames.store(!renames.is_empty(), Ordering::Release);
        *self.renames.lock().unwrap_or_else(PoisonError::into_inner) = renames;
    }

    /// The driver has ended: the socket is released and every waiter answered.
    pub(crate) fn finished(&self) {
        self.publish_budget.close();
        self.finished.send_replace(true);
    }

    /// Records whether reading is paused for unread deliveries.
    pub(crate) fn set_reading_paused(&self, paused: bool) {
        self.reading_paused.store(paused, Ordering::SeqCst);
    }

    pub(crate) fn take_close_request(&self) -> Option<(ReplyCode, String)> {
        self.close_request.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    // ---- read by everyone --------------------------------------------------------------

    /// Where events are counted: `None` unless the application set a hook, so that a
    /// counting site costs one branch without one.
    #[inline]
    pub(crate) fn metrics(&self) -> Option<&dyn Metrics> {
        self.metrics.as_deref()
    }

    /// The connection's name, for tracing spans (a missing one records no field).
    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    pub(crate) fn tuning(&self) -> Tuning {
        self.info.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(|(t, _)| *t).unwrap_or_default()
    }

    pub(crate) fn server_properties(&self) -> FieldTable {
        self.info.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(|(_, p)| p.clone()).unwrap_or_default()
    }

    /// The negotiated `frame_max` (0 before the handshake and for "no limit").
    pub(crate) fn frame_max(&self) -> u32 {
        self.frame_max.load(Ordering::Acquire)
    }

    pub(crate) fn blocked_rx(&self) -> watch::Receiver<Option<String>> {
        self.blocked.subscribe()
    }

    /// Whether the broker blocks publishing now, without subscribing (the publish hot path).
    pub(crate) fn is_blocked(&self) -> bool {
        self.is_blocked.load(Ordering::Acquire)
    }

    pub(crate) fn blocked_reason(&self) -> Option<String> {
        self.blocked.borrow().clone()
    }

    pub(crate) fn subscribe_events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.events.subscribe()
    }

    pub(crate) fn subscribe_finished(&self) -> watch::Receiver<bool> {
        self.finished.subscribe()
    }

    /// The error the connection closed with, or a generic one if it is still open (used when
    /// a reply channel broke, which only happens when the driver is gone).
    pub(crate) fn closed_error(&self) -> Error {
        self.closed.borrow().clone().unwrap_or_else(|| {
            Error::ConnectionClosed(CloseReason::client(ReplyCode::INTERNAL_ERROR, "the connection driver stopped"))
        })
    }

    pub(crate) fn check_open(&self) -> Result<(), Error> {
        if !self.is_closed.load(Ordering::Acquire) {
            return Ok(());
        }
        match &*self.closed.borrow() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    // ---- written by handles ------------------------------------------------------------

    /// Asks a driver whose output is stuck to close now (see `close_request`).
    pub(crate) fn request_close(&self, code: ReplyCode, text: &str) {
        *self.close_request.lock().unwrap_or_else(PoisonError::into_inner) = Some((code, text.to_owned()));
        self.close_signal.notify_one();
    }

    /// Waits while the connection is recovering: at once when it is up (one atomic load);
    /// else fails fast or waits for it to come back, as the recovery options say.
    pub(crate) async fn wait_up(&self) -> Result<(), Error> {
        if !self.is_down.load(Ordering::Acquire) {
            return Ok(());
        }
        let cause = || {
            let cause = self.down.borrow().clone();
            Error::Disconnected(Box::new(cause.unwrap_or_else(|| self.closed_error())))
        };
        if self.limits.fail_fast_while_down {
            return Err(cause());
        }
        let mut down = self.down.subscribe();
        let mut closed = self.closed.subscribe();
        let wait = async {
            tokio::select! {
                _ = down.wait_for(Option::is_none) => {}
                _ = closed.wait_for(Option::is_some) => {}
            }
        };
        if tokio::time::timeout(self.limits.recovery_wait, wait).await.is_err() {
            return Err(cause());
        }
        self.check_open()
    }

    /// Whether the connection is down and recovering.
    pub(crate) fn is_down(&self) -> bool {
        self.is_down.load(Ordering::Acquire)
    }

    /// How many times the connection recovered.
    pub(crate) fn recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::Relaxed)
    }

    /// The current name of a queue, after recovery's renames (the name itself if none).
    pub(crate) fn current_queue_name<'a>(&self, name: &'a str) -> std::borrow::Cow<'a, str> {
        if !self.has_renames.load(Ordering::Acquire) {
            return std::borrow::Cow::Borrowed(name);
        }
        let renames = self.renames.lock().unwrap_or_else(PoisonError::into_inner);
        let current = ShortStr::try_from(name).ok().and_then(|n| renames.get(&n).cloned());
        match current.and_then(|c| c.as_str().map(str::to_owned)) {
            Some(current) => std::borrow::Cow::Owned(current),
            None => std::borrow::Cow::Borrowed(name),
        }
    }

    /// A number for a channel's identity, unique on this connection.
    pub(crate) fn next_channel_number(&self) -> u64 {
        self.channels.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A number for a consumer tag, unique on this connection.
    pub(crate) fn next_consumer_number(&self) -> u64 {
        self.consumers.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// `bytes` of deliveries were queued for a consumer.
    pub(crate) fn add_unread(&self, bytes: usize) {
        self.unread.fetch_add(bytes, Ordering::AcqRel);
    }

    /// The application took `bytes` of deliveries: wake a driver that paused reading once
    /// enough has gone (half the limit, so that it does not flap on every delivery).
    pub(crate) fn sub_unread(&self, bytes: usize) {
        let left = self.unread.fetch_sub(bytes, Ordering::SeqCst).saturating_sub(bytes);
        if self.reading_paused.load(Ordering::SeqCst) && left <= self.limits.max_unread / 2 {
            self.resume_reading.notify_one();
        }
    }

    /// Bytes of deliveries the application has not taken.
    pub(crate) fn unread(&self) -> usize {
        self.unread.load(Ordering::SeqCst)
    }
}
