//! Acks, nacks and rejects on their way to the driver without waking it for each one.
//!
//! On tokio's multi-thread runtime the consumer and the driver run on different threads, and
//! a command sent while the driver is parked wakes it across threads (and often makes tokio
//! unpark a second worker). Acks are the bulk of those commands, and most of them can wait a
//! moment: the driver wakes anyway for the next deliveries, and the consumer, once it has
//! read everything it holds, waits for the driver too. So a settlement goes into this
//! per-connection buffer, and the driver takes the buffer at the start of every turn.
//!
//! On the multi-thread runtime the driver is woken for a settlement unless it has promised
//! to look soon by itself: it arms that promise when it parks while consumers still hold
//! deliveries they have not yielded (they will ack them), and keeps it with a timer of
//! [`DEFERRAL`]. So a settlement reaches the state machine at once, or within [`DEFERRAL`]
//! if the driver was armed, even when nothing else happens on the connection. A consumer
//! whose stream is about to wait wakes the driver if the buffered acks may be what the
//! broker waits for (half its channel's prefetch or more), so that a prefetch window does
//! not wait for the timer; with fewer, the broker still has room to deliver, and the driver
//! takes the acks when it reads those deliveries. A timer that fired with nothing to take
//! stops the deferral until the next deliveries come (a consumer that holds deliveries and
//! stopped reading must not make the driver tick). On the current-thread runtime the driver
//! never defers: the settling task and the driver share the thread, a wake-up is no
//! hand-off, and deferring measured slower there.
//!
//! Order: every other command a handle sends first moves the buffered settlements into the
//! command queue ([`Settlements::move_into`]), under the buffer's lock, so a settlement never
//! falls behind a later command of the same thread (a channel's close never overtakes its
//! acks). The driver applying the buffer ahead of older queued commands changes nothing the
//! broker can tell: the state machine refuses a settlement whose channel incarnation is gone.

use std::{
    pin::Pin,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use lepus_codec::Method;
use tokio::{sync::Notify, time::Sleep};

use crate::{
    command::{Command, DriverTokens},
    conn_shared::ConnShared,
    proto::{self, ChannelKey},
};

/// How long an armed driver may leave a settlement buffered.
pub(crate) const DEFERRAL: Duration = Duration::from_millis(1);
/// Buffered settlements past which the driver is woken even when armed (memory stays
/// bounded; in practice the prefetch bounds the buffer well below this).
const WAKE_AT: usize = 4096;

/// Buffered acks that make a waiting consumer wake the driver when its channel's prefetch
/// is not known (no `basic.qos`: unlimited, unless the broker sets a default).
const UNKNOWN_PREFETCH_WAKE: usize = 64;

/// One settlement: the method, for a delivery of channel incarnation `key`.
type Settlement = (ChannelKey, Method);

/// The buffer, in [`ConnShared`]: handles push, the driver takes.
pub(crate) struct Settlements {
    items: Mutex<Vec<Settlement>>,
    /// How many `items` holds, readable without the lock. Zeroed under the lock only once
    /// the items were taken by the driver or are in the command queue.
    len: AtomicUsize,
    /// The driver is parked and will take the buffer within [`DEFERRAL`] by itself.
    armed: AtomicBool,
    /// Wakes the driver to take the buffer.
    pub(crate) wake: Notify,
    /// Deliveries consumers have taken from their queues and not yet yielded.
    in_hand: AtomicUsize,
    /// Deliveries were queued for consumers since the driver last parked (driver only).
    delivered: AtomicBool,
}

impl Settlements {
    pub(crate) fn new() -> Self {
        Settlements {
            items: Mutex::new(Vec::new()),
            len: AtomicUsize::new(0),
            armed: AtomicBool::new(false),
            wake: Notify::new(),
            in_hand: AtomicUsize::new(0),
            delivered: AtomicBool::new(false),
        }
    }

    /// Buffers a settlement; wakes the driver unless it is armed (or the buffer is large).
    pub(crate) fn push(&self, key: ChannelKey, method: Method) {
        let n = {
            let mut items = self.items.lock().unwrap_or_else(PoisonError::into_inner);
            items.push((key, method));
            let n = items.len();
            self.len.store(n, Ordering::SeqCst);
            n
        };
        // SeqCst with the driver's disarming (store `armed`, then read `len`): either this
        // sees the driver disarmed and wakes it, or the driver sees this settlement. With
        // more than one buffered, whoever pushed the first made sure of the same.
        if (n == 1 && !self.armed.load(Ordering::SeqCst)) || n % WAKE_AT == 0 {
            self.wake.notify_one();
        }
    }

    /// Moves what is buffered into the command queue, ahead of a command about to be sent.
    /// Under the lock, so that whoever finds the buffer empty knows its settlements are
    /// already ahead of it.
    pub(crate) fn move_into(&self, mut send: impl FnMut(Command)) {
        if self.len.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut items = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, method) in items.drain(..) {
            send(Command::Settle { key, method });
        }
        self.len.store(0, Ordering::SeqCst);
    }

    /// A consumer on a channel with `prefetch` is about to wait for deliveries. If the
    /// buffered acks may be what the broker waits for before it delivers more (they are half
    /// the prefetch or more), they go out now rather than at the timer. Below that, the
    /// broker still has room to deliver, and the driver takes them when it reads the next
    /// deliveries (or at the timer if none come): waking it for them would cost a thread
    /// hand-off per burst for nothing. Without a known prefetch, a fixed share stands in.
    pub(crate) fn consumer_waits(&self, prefetch: u16) {
        let threshold = if prefetch == 0 { UNKNOWN_PREFETCH_WAKE } else { usize::from(prefetch).div_ceil(2) };
        if self.len.load(Ordering::SeqCst) >= threshold.max(1) {
            self.wake.notify_one();
        }
    }

    /// A consumer took `n` deliveries from its queue.
    pub(crate) fn taken(&self, n: usize) {
        if n > 0 {
            self.in_hand.fetch_add(n, Ordering::SeqCst);
        }
    }

    /// A consumer yielded (or dropped) `n` deliveries it had taken.
    pub(crate) fn yielded(&self, n: usize) {
        if n > 0 {
            self.in_hand.fetch_sub(n, Ordering::SeqCst);
        }
    }

    /// The driver queued a delivery for a consumer that acks.
    pub(crate) fn delivered(&self) {
        // Only the driver writes it: a plain store, no read-modify-write per delivery.
        if !self.delivered.load(Ordering::Relaxed) {
            self.delivered.store(true, Ordering::Relaxed);
        }
    }

    fn take(&self, into: &mut Vec<Settlement>) {
        if self.len.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut items = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut *items, into);
        self.len.store(0, Ordering::SeqCst);
    }
}

impl Default for Settlements {
    fn default() -> Self {
        Settlements::new()
    }
}

/// The driver's side: takes the buffer each turn, and decides when it parks whether to
/// arm the deferral.
pub(crate) struct Deferral {
    /// `None` on a current-thread runtime: there the settling task and the driver share the
    /// thread, a wake-up is no hand-off, and deferring saves nothing.
    timer: Option<Pin<Box<Sleep>>>,
    /// Mirrors `Settlements::armed`, as the driver last set it.
    armed: bool,
    /// The timer fired in the last park.
    fired: bool,
    /// No delivery to be acked came since a fired timer found nothing (or since the
    /// start): do not defer (no-ack consumers never make the driver defer).
    idle: bool,
    batch: Vec<Settlement>,
}

impl Deferral {
    pub(crate) fn new() -> Self {
        Deferral {
            timer: (tokio::runtime::Handle::current().runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread)
                .then(|| Box::pin(tokio::time::sleep(DEFERRAL))),
            armed: false,
            fired: false,
            idle: true,
            batch: Vec::new(),
        }
    }

    /// The start of a driver turn: disarms (from now on a settlement wakes the driver), then
    /// hands every buffered settlement to the state machine. A stale one (its channel
    /// incarnation is gone) is refused there, never sent.
    pub(crate) fn apply(&mut self, conn: &ConnShared, proto: &mut proto::Connection<DriverTokens>) {
        let settlements = &conn.settlements;
        if self.armed {
            self.armed = false;
            settlements.armed.store(false, Ordering::SeqCst);
        }
        settlements.take(&mut self.batch);
        if std::mem::take(&mut self.fired) {
            self.idle = self.batch.is_empty();
        }
        for (key, method) in self.batch.drain(..) {
            if let Err(e) = proto.send(key, method) {
                tracing::debug!(error = %e, "settlement not sent: its channel is gone");
            }
        }
    }

    /// The driver is about to park: arms the deferral while consumers hold deliveries they
    /// have not yielded (they are about to ack them, and the driver looks again when the
    /// next deliveries come, when a consumer waits with many acks buffered, or at the
    /// timer), unless a timer found nothing since the last deliveries.
    pub(crate) fn park(&mut self, conn: &ConnShared) {
        let settlements = &conn.settlements;
        if settlements.delivered.load(Ordering::Relaxed) {
            settlements.delivered.store(false, Ordering::Relaxed);
            self.idle = false;
        }
        let Some(timer) = self.timer.as_mut() else { return };
        if self.idle || (settlements.in_hand.load(Ordering::SeqCst) == 0 && conn.unread() == 0) {
            return;
        }
        // Later than the last deadline, mostly: tokio then moves it without its lock.
        timer.as_mut().reset(tokio::time::Instant::now() + DEFERRAL);
        settlements.armed.store(true, Ordering::SeqCst);
        self.armed = true;
    }

    /// Whether the timer is to be waited for.
    pub(crate) fn is_armed(&self) -> bool {
        self.armed
    }

    /// Completes when the armed timer fires.
    pub(crate) async fn expired(&mut self) {
        match self.timer.as_mut() {
            Some(timer) => timer.as_mut().await,
            None => std::future::pending().await,
        }
        self.fired = true;
    }
}

impl Default for Deferral {
    fn default() -> Self {
        Deferral::new()
    }
}
