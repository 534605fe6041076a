//! The one ordered queue from the handles to the driver, and when a command wakes it.
//!
//! On tokio's multi-thread runtime the handles and the driver run on different threads,
//! and a command sent while the driver is parked wakes it across threads: a futex or
//! eventfd write, a context switch, often a second worker unparked. Most commands need
//! that. Two kinds can wait a moment, because the driver will look soon by itself:
//!
//! - **settlements** (acks, nacks, rejects) while consumers hold deliveries: the driver
//!   wakes for the next deliveries anyway;
//! - **publishes in confirm mode** while confirms are awaited: the driver wakes for the
//!   broker's next `basic.ack` anyway;
//! - **plain publishes** while the connection publishes a stream (the driver's last take
//!   held eight or more, and it armed for that): then a wake per handful of messages costs
//!   more than it brings, and the timer below takes the next ones. Armed for any other
//!   reason, the driver is still woken by a plain publish: an RPC request must not wait
//!   for a timer because a reply is being consumed.
//!
//! Such a command is *deferred*: it is queued in order like any other, but it wakes the
//! driver only if the driver has not promised to look soon. The driver makes that
//! promise when it parks ([`CommandQueue::arm`]), keeping it with a timer of
//! [`DEFERRAL`] (see `driver/deferral.rs`), so a deferred command reaches the state
//! machine at the driver's next turn, which comes at the latest [`DEFERRAL`] later, even
//! if nothing else happens on the connection. The driver takes the whole queue at the
//! start of every turn, so what was deferred goes out in the same vectored write as the
//! answer to whatever woke it.
//!
//! A handle about to wait for something only the driver can bring rings the driver
//! first when what it deferred may be what that wait depends on:
//! - a consumer that has run dry, for its acks once they are half its prefetch (the
//!   broker may be waiting for them), and for any deferred publish;
//! - a publisher waiting for a confirm, for the window or for the budget, once its
//!   deferred publishes are half of those whose confirms are awaited or more (with fewer,
//!   the broker is still confirming enough to wake the driver soon).
//!
//! Every other command wakes the driver unless a wake is already on its way. On the
//! current-thread runtime the driver never arms: the handles and the driver share the
//! thread, a wake-up is no hand-off, and deferring measured slower there.
//!
//! Order: one queue, one lock, so a command never overtakes one queued before it from the
//! same thread (a channel's close never overtakes its acks, publishes keep their order).
//! Its size is bounded elsewhere: each caller of a synchronous method waits for its reply,
//! settlements are bounded by the deliveries they settle, and publishes take bytes from the
//! connection's publish budget before they are queued, which the driver gives back as it
//! takes them.

use std::{
    collections::VecDeque,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;

use crate::command::Command;

/// How long an armed driver may leave a deferred command queued.
pub(crate) const DEFERRAL: Duration = Duration::from_millis(1);

/// Queued commands past which a deferred one wakes the driver even when armed (memory
/// stays bounded; in practice the prefetch and the publish window bound it well below).
const WAKE_AT: usize = 4096;

/// Buffered acks that make a waiting consumer wake the driver when its channel's prefetch
/// is not known (no `basic.qos`: unlimited, unless the broker sets a default).
const UNKNOWN_PREFETCH_WAKE: usize = 64;

/// How a queued command may wake the driver.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Wake {
    /// At once (unless a wake is already on its way).
    Now,
    /// A settlement: may wait for an armed driver.
    Settlement,
    /// A publish in confirm mode: may wait for an armed driver.
    Publish,
    /// A plain publish: may wait for a driver armed because it is taking a stream of
    /// publishes (any other reason to arm says nothing about when it looks next for this).
    Stream,
}

/// The queue, in `ConnShared`: handles push, the driver takes.
pub(crate) struct CommandQueue {
    state: Mutex<State>,
    /// Wakes the driver.
    pub(crate) wake: Notify,
    /// Live `CommandSender`s: when the last is dropped, the driver closes the connection.
    senders: AtomicUsize,
    /// Deferred settlements and publishes queued since the driver last took the queue
    /// (mirrors of `State`'s, readable without the lock by a handle about to wait).
    deferred_settlements: AtomicUsize,
    deferred_publishes: AtomicUsize,
    /// Publishes whose confirm is awaited (queued or written), connection-wide.
    awaiting_confirms: AtomicUsize,
    /// Deliveries consumers have taken from their queues and not yet yielded.
    in_hand: AtomicUsize,
    /// Deliveries were queued for consumers since the driver last parked (driver only).
    delivered: AtomicBool,
}

// Independent flags, read and written together under the queue's lock.
#[allow(clippy::struct_excessive_bools)]
struct State {
    items: VecDeque<Command>,
    /// A wake was given since the driver last took the queue.
    rung: bool,
    /// The driver parked having promised to take the queue within [`DEFERRAL`].
    armed: bool,
    /// ... and it armed because it is taking a stream of publishes.
    streaming: bool,
    /// Deferred settlements and publishes in `items`.
    settlements: usize,
    publishes: usize,
    /// The driver is gone: commands are refused.
    closed: bool,
    /// Every sender was dropped.
    orphaned: bool,
}

/// The queue refused a command: the driver is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

/// What the driver took from the queue.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Taken {
    /// Deferred settlements and publishes among the commands.
    pub(crate) settlements: usize,
    pub(crate) publishes: usize,
    /// Every sender was dropped (after the commands taken).
    pub(crate) orphaned: bool,
}

impl CommandQueue {
    pub(crate) fn new() -> Self {
        CommandQueue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                rung: false,
                armed: false,
                streaming: false,
                settlements: 0,
                publishes: 0,
                closed: false,
                orphaned: false,
            }),
            wake: Notify::new(),
            senders: AtomicUsize::new(0),
            deferred_settlements: AtomicUsize::new(0),
            deferred_publishes: AtomicUsize::new(0),
            awaiting_confirms: AtomicUsize::new(0),
            in_hand: AtomicUsize::new(0),
            delivered: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under this lock panics; a poisoned lock still holds a consistent queue.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `cmd`, waking the driver as `wake` says; refuses (and drops) it once the
    /// driver is gone.
    pub(crate) fn push(&self, cmd: Command, wake: Wake) -> Result<(), Closed> {
        let ring = {
            let mut s = self.lock();
            if s.closed {
                drop(s);
                // Dropped outside the lock: dropping it answers its waiter.
                drop(cmd);
                return Err(Closed);
            }
            s.items.push_back(cmd);
            let deferred = match wake {
                Wake::Now => false,
                Wake::Settlement => {
                    s.settlements += 1;
                    self.deferred_settlements.store(s.settlements, Ordering::Relaxed);
                    s.armed
                }
                Wake::Publish | Wake::Stream => {
                    s.publishes += 1;
                    self.deferred_publishes.store(s.publishes, Ordering::Relaxed);
                    s.armed && (wake == Wake::Publish || s.streaming)
                }
            };
            let ring = !s.rung && (!deferred || s.items.len() >= WAKE_AT);
            s.rung |= ring;
            ring
        };
        if ring {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Wakes the driver if it has deferred commands to take and no wake is on its way.
    fn ring(&self) {
        let ring = {
            let mut s = self.lock();
            let ring = !s.rung && !s.items.is_empty();
            s.rung |= ring;
            ring
        };
        if ring {
            self.wake.notify_one();
        }
    }

    /// A consumer on a channel with `prefetch` is about to wait for deliveries. Deferred
    /// publishes go out now (this task may be waiting for their answer), and so do the
    /// buffered acks if they may be what the broker waits for before it delivers more
    /// (half the prefetch or more). Below that, the broker still has room to deliver, and
    /// the driver takes them when it reads the next deliveries (or at the timer if none
    /// come): waking it for them would cost a thread hand-off per burst for nothing.
    pub(crate) fn consumer_waits(&self, prefetch: u16) {
        let threshold = if prefetch == 0 { UNKNOWN_PREFETCH_WAKE } else { usize::from(prefetch).div_ceil(2) };
        if self.deferred_settlements.load(Ordering::Relaxed) >= threshold.max(1)
            || self.deferred_publishes.load(Ordering::Relaxed) > 0
        {
            self.ring();
        }
    }

    /// A publisher is about to wait for a confirm or for room in its channel's window.
    /// Its deferred publishes go out now if they are half of the awaited confirms or more:
    /// then the broker may soon have nothing left to confirm, and nothing would wake the
    /// driver but the timer.
    pub(crate) fn publisher_waits(&self) {
        let deferred = self.deferred_publishes.load(Ordering::Relaxed);
        if deferred > 0 && deferred * 2 >= self.awaiting_confirms.load(Ordering::Relaxed) {
            self.ring();
        }
    }

    /// A publisher is about to wait for the publish budget, which the driver gives back as
    /// it takes publishes: everything deferred goes out now.
    pub(crate) fn budget_waits(&self) {
        if self.deferred_publishes.load(Ordering::Relaxed) > 0 || self.deferred_settlements.load(Ordering::Relaxed) > 0
        {
            self.ring();
        }
    }

    // ---- the driver's side ----------------------------------------------------------------

    /// Takes every queued command into `into` (empty), and disarms: from now on every
    /// command wakes the driver until it arms again.
    pub(crate) fn take(&self, into: &mut VecDeque<Command>) -> Taken {
        let mut s = self.lock();
        s.armed = false;
        s.rung = false;
        std::mem::swap(&mut s.items, into);
        let taken = Taken {
            settlements: std::mem::take(&mut s.settlements),
            publishes: std::mem::take(&mut s.publishes),
            orphaned: s.orphaned,
        };
        if taken.settlements > 0 {
            self.deferred_settlements.store(0, Ordering::Relaxed);
        }
        if taken.publishes > 0 {
            self.deferred_publishes.store(0, Ordering::Relaxed);
        }
        taken
    }

    /// The driver parks promising to take the queue within [`DEFERRAL`]. `false` (not
    /// armed) if commands are already queued: then a wake for them is on its way (given
    /// here if none was, as after a turn that could not take the queue).
    /// `streaming`: the driver arms because it is taking a stream of publishes (only then
    /// may plain publishes wait for it).
    pub(crate) fn arm(&self, streaming: bool) -> bool {
        let ring = {
            let mut s = self.lock();
            if s.items.is_empty() {
                s.armed = true;
                s.streaming = streaming;
                return true;
            }
            s.armed = false;
            let ring = !s.rung;
            s.rung = true;
            ring
        };
        if ring {
            self.wake.notify_one();
        }
        false
    }

    /// The driver is gone (or shutting down): refuses every command from now on and hands
    /// back those still queued.
    pub(crate) fn close(&self) -> VecDeque<Command> {
        let mut s = self.lock();
        s.closed = true;
        s.armed = false;
        s.settlements = 0;
        s.publishes = 0;
        self.deferred_settlements.store(0, Ordering::Relaxed);
        self.deferred_publishes.store(0, Ordering::Relaxed);
        std::mem::take(&mut s.items)
    }

    // ---- senders ----------------------------------------------------------------------------

    pub(crate) fn sender_added(&self) {
        self.senders.fetch_add(1, Ordering::Relaxed);
    }

    /// A sender was dropped; the last one tells the driver.
    pub(crate) fn sender_dropped(&self) {
        if self.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            {
                let mut s = self.lock();
                s.orphaned = true;
                s.rung = true;
            }
            self.wake.notify_one();
        }
    }

    // ---- hints for the driver's deferral ----------------------------------------------

    /// A publish whose confirm will be awaited is about to be queued.
    pub(crate) fn confirm_awaited(&self) {
        self.awaiting_confirms.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` publishes' confirm waiters are gone (answered, or dropped with their connection).
    pub(crate) fn confirms_settled(&self, n: usize) {
        if n > 0 {
            self.awaiting_confirms.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Whether confirms are awaited.
    pub(crate) fn confirms_awaited(&self) -> bool {
        self.awaiting_confirms.load(Ordering::Relaxed) > 0
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

    /// Whether consumers hold deliveries they have not yielded.
    pub(crate) fn in_hand(&self) -> bool {
        self.in_hand.load(Ordering::SeqCst) > 0
    }

    /// The driver queued a delivery for a consumer that acks.
    pub(crate) fn delivered(&self) {
        // Only the driver writes it: a plain store, no read-modify-write per delivery.
        if !self.delivered.load(Ordering::Relaxed) {
            self.delivered.store(true, Ordering::Relaxed);
        }
    }

    /// Whether deliveries came since the last call (driver only).
    pub(crate) fn take_delivered(&self) -> bool {
        let delivered = self.delivered.load(Ordering::Relaxed);
        if delivered {
            self.delivered.store(false, Ordering::Relaxed);
        }
        delivered
    }
}

#[cfg(test)]
mod tests;
