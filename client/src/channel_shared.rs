//! State of one channel that the driver writes and the channel's handles read: which
//! incarnation it is, whether it is closed or paused by the broker, its confirm window, its
//! returned messages and its settle-once coverage. The driver hands it to the state machine
//! as the channel's token, so the channel's events come back carrying it.

use std::sync::{
    Arc, Mutex, PoisonError,
    atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU64, Ordering},
};

use lepus_codec::Content;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::{Error, ReturnedMessage, conn_shared::ConnShared, proto::ChannelKey, settle::CoveredThrough};

/// Returned messages kept for a channel's [`crate::Returns`] stream before new ones are dropped.
const RETURNS_CAPACITY: usize = 256;

pub(crate) struct ChannelShared {
    /// The channel's identity across its incarnations (recovery reopens it as itself).
    pub(crate) id: u64,
    /// The current incarnation as `epoch << 16 | id`; 0 until the driver has opened it.
    key: AtomicU64,
    pub(crate) conn: Arc<ConnShared>,
    closed: watch::Sender<Option<Error>>,
    flow: watch::Sender<bool>,
    /// Mirrors of `closed` being `Some` and of `flow`, for the publish path's checks: a
    /// plain load, where the watch takes its lock.
    is_closed: AtomicBool,
    flow_active: AtomicBool,
    /// The confirm window: a confirmed publish holds a permit until it is resolved.
    pub(crate) window: Arc<Semaphore>,
    confirm_mode: AtomicBool,
    returns_tx: mpsc::Sender<ReturnedMessage>,
    returns_rx: Mutex<Option<mpsc::Receiver<ReturnedMessage>>>,
    returns_dropped: AtomicU64,
    /// Which delivery tags a `multiple` ack or nack has settled on this incarnation.
    pub(crate) covered: CoveredThrough,
    /// For the metrics hook: `NOT_COUNTED`, `COUNTED_OPEN` or `COUNTED_CLOSED`, so that a
    /// channel counts as closed only if it counted as opened, and each once.
    counted: AtomicU8,
    /// The `basic.qos` prefetch count last set on this channel (0: none, or unlimited): how
    /// many unacked deliveries make the broker wait for acks (see `command_queue/mod.rs`).
    prefetch: AtomicU16,
}

const NOT_COUNTED: u8 = 0;
const COUNTED_OPEN: u8 = 1;
const COUNTED_CLOSED: u8 = 2;

fn pack(key: ChannelKey) -> u64 {
    (key.epoch << 16) | u64::from(key.id)
}

fn unpack(packed: u64) -> ChannelKey {
    // The low 16 bits are the id by construction.
    ChannelKey { id: (packed & 0xffff) as u16, epoch: packed >> 16 }
}

impl ChannelShared {
    pub(crate) fn new(conn: Arc<ConnShared>) -> Arc<Self> {
        let (returns_tx, returns_rx) = mpsc::channel(RETURNS_CAPACITY);
        let window = Arc::new(Semaphore::new(conn.limits.publish_window));
        Arc::new(ChannelShared {
            id: conn.next_channel_number(),
            key: AtomicU64::new(0),
            conn,
            closed: watch::Sender::new(None),
            flow: watch::Sender::new(true),
            is_closed: AtomicBool::new(false),
            flow_active: AtomicBool::new(true),
            window,
            confirm_mode: AtomicBool::new(false),
            returns_tx,
            returns_rx: Mutex::new(Some(returns_rx)),
            returns_dropped: AtomicU64::new(0),
            covered: CoveredThrough::default(),
            counted: AtomicU8::new(NOT_COUNTED),
            prefetch: AtomicU16::new(0),
        })
    }

    // ---- written by the driver ---------------------------------------------------------

    /// The driver opened (or reopened) the channel as `key`.
    pub(crate) fn set_key(&self, key: ChannelKey) {
        // Tags start again at 1 on a new incarnation.
        self.covered.reset();
        self.key.store(pack(key), Ordering::Release);
    }

    /// The connection was lost: no incarnation is live until recovery reopens the channel
    /// (with the same id), so a delivery tag of the lost one is stale at once.
    pub(crate) fn lost(&self) {
        let id = self.key().id;
        self.key.store(pack(ChannelKey { id, epoch: 0 }), Ordering::Release);
        // A new channel starts with flow on.
        self.set_flow(true);
    }

    pub(crate) fn closed(&self, error: Error) {
        self.closed.send_if_modified(|c| {
            if c.is_none() {
                *c = Some(error);
                true
            } else {
                false
            }
        });
        self.is_closed.store(true, Ordering::Release);
        // Publishers waiting for window space or flow must wake up and see the close.
        self.window.close();
        self.set_flow(true);
        if self.counted.swap(COUNTED_CLOSED, Ordering::AcqRel) == COUNTED_OPEN
            && let Some(metrics) = self.conn.metrics()
        {
            metrics.channel_closed();
        }
    }

    pub(crate) fn set_flow(&self, active: bool) {
        self.flow_active.store(active, Ordering::Release);
        self.flow.send_replace(active);
    }

    pub(crate) fn returned(&self, content: Content) {
        if let Some(metrics) = self.conn.metrics() {
            metrics.returned();
        }
        if self.returns_tx.try_send(ReturnedMessage::from_content(content)).is_err() {
            let dropped = self.returns_dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let id = self.key().id;
            tracing::warn!(channel = id, dropped, "returned message dropped: nobody reads Channel::returns");
        }
    }

    // ---- written by handles ------------------------------------------------------------

    /// The application got the channel open: it counts as opened, unless it already closed.
    pub(crate) fn count_opened(&self) {
        let opened = self.counted.compare_exchange(NOT_COUNTED, COUNTED_OPEN, Ordering::AcqRel, Ordering::Acquire);
        if opened.is_ok()
            && let Some(metrics) = self.conn.metrics()
        {
            metrics.channel_opened();
        }
    }

    // ---- read by everyone --------------------------------------------------------------

    /// The current incarnation (id 0 before the driver opened it).
    pub(crate) fn key(&self) -> ChannelKey {
        unpack(self.key.load(Ordering::Acquire))
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.is_closed.load(Ordering::Acquire)
    }

    pub(crate) fn check_open(&self) -> Result<(), Error> {
        if self.is_closed.load(Ordering::Acquire)
            && let Some(e) = &*self.closed.borrow()
        {
            return Err(e.clone());
        }
        self.conn.check_open()
    }

    pub(crate) fn closed_rx(&self) -> watch::Receiver<Option<Error>> {
        self.closed.subscribe()
    }

    pub(crate) fn flow_active(&self) -> bool {
        self.flow_active.load(Ordering::Acquire)
    }

    pub(crate) fn flow_rx(&self) -> watch::Receiver<bool> {
        self.flow.subscribe()
    }

    /// The prefetch count the broker accepted last on this channel (0 if none).
    pub(crate) fn prefetch(&self) -> u16 {
        self.prefetch.load(Ordering::Relaxed)
    }

    /// The broker accepted `basic.qos` with this prefetch count.
    pub(crate) fn set_prefetch(&self, prefetch_count: u16) {
        self.prefetch.store(prefetch_count, Ordering::Relaxed);
    }

    pub(crate) fn confirm_mode(&self) -> bool {
        self.confirm_mode.load(Ordering::Acquire)
    }

    /// Publishes queued from now on are in confirm mode on the wire too.
    pub(crate) fn set_confirm_mode(&self) {
        self.confirm_mode.store(true, Ordering::Release);
    }

    pub(crate) fn take_returns(&self) -> Option<mpsc::Receiver<ReturnedMessage>> {
        self.returns_rx.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// The error to report when a waiter's reply channel broke: the channel's close reason,
    /// else the connection's.
    pub(crate) fn close_reason_or_closed(&self) -> Error {
        self.check_open().err().unwrap_or_else(|| self.conn.closed_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_the_packed_form() {
        for key in [
            ChannelKey { id: 1, epoch: 1 },
            ChannelKey { id: u16::MAX, epoch: 7 },
            ChannelKey { id: 42, epoch: (1 << 47) + 3 },
        ] {
            assert_eq!(unpack(pack(key)), key);
        }
    }
}
