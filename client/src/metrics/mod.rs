//! A hook for counting what a connection does: implement [`Metrics`] and hand it to
//! [`ConnectionOptions::metrics`](crate::ConnectionOptions::metrics).
//!
//! Every event is one call of a trait method, made where the event happens (often on the
//! publishing or consuming task, or on the connection's own task), with no allocation. A
//! connection without a hook pays one `Option` check per event. The methods have empty
//! defaults, so an implementation overrides only what it counts; they must be quick and
//! must not block (use atomics, not locks held for long).
//!
//! ```
//! use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
//!
//! #[derive(Default)]
//! struct Published(AtomicU64);
//!
//! impl lepus::metrics::Metrics for Published {
//!     fn published(&self, _body_bytes: usize) {
//!         self.0.fetch_add(1, Ordering::Relaxed);
//!     }
//! }
//!
//! let published = Arc::new(Published::default());
//! let options = lepus::ConnectionOptions::new().metrics(published.clone());
//! # let _ = options;
//! ```
//!
//! With the `metrics` feature, [`MetricsFacade`] records these events through the
//! [`metrics`](https://docs.rs/metrics) crate's facade.

#[cfg(feature = "metrics")]
mod facade;

use std::time::Duration;

#[cfg(feature = "metrics")]
pub use facade::MetricsFacade;

use crate::proto;

/// Receives a connection's events as they happen. Every method does nothing by default.
///
/// Counting rules, so that totals add up:
/// - a connection is opened once (its first handshake) and closed once (when it ends for
///   good); a loss that recovery repairs is neither, but a [`Metrics::recovered`];
/// - a channel is opened when [`Connection::open_channel`](crate::Connection::open_channel)
///   returns it, and closed once when it ends for good (not when recovery reopens it);
/// - every publish in confirm mode that gets the broker's verdict is one
///   [`Metrics::confirmed`]; a returned mandatory message is a [`Metrics::returned`], and
///   in confirm mode also the broker's ack that follows the return;
/// - acks, nacks and rejects are counted as they are handed to the connection, one per
///   call: a `multiple` one settles an unknown number of deliveries.
pub trait Metrics: Send + Sync + 'static {
    /// A connection completed its first handshake.
    fn connection_opened(&self) {}

    /// A connection that had opened closed for good.
    fn connection_closed(&self) {}

    /// A lost connection was recovered: reconnected and its topology replayed.
    fn recovered(&self) {}

    /// The broker stopped blocking the connection (or the connection ended while blocked)
    /// after `duration` of blocking it.
    fn blocked(&self, duration: Duration) {
        let _ = duration;
    }

    /// A channel was opened for the application.
    fn channel_opened(&self) {}

    /// A channel that had been opened closed for good.
    fn channel_closed(&self) {}

    /// A message with a body of `body_bytes` was handed to the connection for sending.
    fn published(&self, body_bytes: usize) {
        let _ = body_bytes;
    }

    /// The broker confirmed a publish: `acked`, or nacked when false.
    fn confirmed(&self, acked: bool) {
        let _ = acked;
    }

    /// The broker returned a mandatory message that no queue took.
    fn returned(&self) {}

    /// A message with a body of `body_bytes` was delivered: queued for a consumer, or
    /// fetched by `basic.get`.
    fn delivered(&self, body_bytes: usize) {
        let _ = body_bytes;
    }

    /// A `basic.ack` was sent (`multiple`: for every earlier delivery too).
    fn acked(&self, multiple: bool) {
        let _ = multiple;
    }

    /// A `basic.nack` was sent.
    fn nacked(&self, multiple: bool, requeue: bool) {
        let _ = (multiple, requeue);
    }

    /// A `basic.reject` was sent.
    fn rejected(&self, requeue: bool) {
        let _ = requeue;
    }
}

/// Counts a publisher confirm as it resolves.
pub(crate) fn confirmation(metrics: &dyn Metrics, confirmation: &proto::Confirmation) {
    match confirmation {
        proto::Confirmation::Ack => metrics.confirmed(true),
        proto::Confirmation::Nack => metrics.confirmed(false),
        proto::Confirmation::Returned(_) => {
            metrics.returned();
            metrics.confirmed(true);
        }
    }
}

/// An ack, nack or reject, as counted.
#[derive(Clone, Copy)]
pub(crate) enum Settlement {
    Ack { multiple: bool },
    Nack { multiple: bool, requeue: bool },
    Reject { requeue: bool },
    Other,
}

impl Settlement {
    pub(crate) fn of(method: &lepus_codec::Method) -> Self {
        use lepus_codec::Method;
        match method {
            Method::BasicAck(m) => Settlement::Ack { multiple: m.multiple },
            Method::BasicNack(m) => Settlement::Nack { multiple: m.multiple, requeue: m.requeue },
            Method::BasicReject(m) => Settlement::Reject { requeue: m.requeue },
            _ => Settlement::Other,
        }
    }

    pub(crate) fn count(self, metrics: &dyn Metrics) {
        match self {
            Settlement::Ack { multiple } => metrics.acked(multiple),
            Settlement::Nack { multiple, requeue } => metrics.nacked(multiple, requeue),
            Settlement::Reject { requeue } => metrics.rejected(requeue),
            Settlement::Other => {}
        }
    }
}
