//! When the parking driver promises to take the command queue by itself within
//! [`DEFERRAL`], so that deferred commands (settlements, publishes in confirm mode) need not
//! wake it (see `command_queue/mod.rs`).
//!
//! The driver arms while it will look soon anyway: consumers hold deliveries they have not
//! yielded (they are about to ack them, and the next deliveries wake the driver), or
//! confirms are awaited (the broker's next `basic.ack` wakes it), or its last take held a
//! stream of publishes (more are coming, and taking them by the timer's clock costs one
//! wake-up per millisecond instead of one per handful). The timer keeps the promise when
//! nothing else comes. A timer that fired with nothing deferred to take stops the deferral
//! until deliveries come or deferred publishes are taken again: a consumer that holds
//! deliveries and stopped reading, or a broker slow to confirm, must not make the driver
//! tick. On a current-thread runtime the driver never arms.

use std::pin::Pin;

use tokio::time::Sleep;

use crate::{
    command_queue::{DEFERRAL, Taken},
    conn_shared::ConnShared,
};

/// The driver's side of the deferral: the timer and the decision to arm.
// Independent flags of one decision, each set on its own path.
#[allow(clippy::struct_excessive_bools)]
pub(crate) struct Deferral {
    /// `None` on a current-thread runtime: there the handles and the driver share the
    /// thread, a wake-up is no hand-off, and deferring saves nothing.
    timer: Option<Pin<Box<Sleep>>>,
    /// Armed at the last park.
    armed: bool,
    /// The timer fired in the last park.
    fired: bool,
    /// A fired timer found nothing deferred, and nothing since says a deferral would pay.
    idle: bool,
    /// The last take held a stream of publishes (see [`STREAM`]).
    streaming: bool,
}

/// Publishes in one take that make a stream: at that rate, waking the driver for each
/// handful costs more than it brings, and the driver arms to take the next ones by itself.
const STREAM: usize = 8;

impl Deferral {
    pub(crate) fn new() -> Self {
        Deferral {
            timer: (tokio::runtime::Handle::current().runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread)
                .then(|| Box::pin(tokio::time::sleep(DEFERRAL))),
            armed: false,
            fired: false,
            idle: true,
            streaming: false,
        }
    }

    /// The driver took the queue (which disarmed it).
    pub(crate) fn took(&mut self, taken: Taken) {
        self.armed = false;
        self.streaming = taken.publishes >= STREAM;
        if std::mem::take(&mut self.fired) {
            self.idle = taken.settlements == 0 && taken.publishes == 0;
        } else if taken.publishes > 0 {
            self.idle = false;
        }
    }

    /// The driver is about to park: arms while it will look soon anyway (see the module
    /// documentation).
    pub(crate) fn park(&mut self, conn: &ConnShared) {
        let queue = &conn.commands;
        if queue.take_delivered() {
            self.idle = false;
        }
        let Some(timer) = self.timer.as_mut() else { return };
        if self.armed || self.idle {
            return;
        }
        if !(self.streaming || queue.in_hand() || conn.unread() > 0 || queue.confirms_awaited()) {
            return;
        }
        if !queue.arm(self.streaming) {
            return;
        }
        // Later than the last deadline, mostly: tokio then moves it without its lock.
        timer.as_mut().reset(tokio::time::Instant::now() + DEFERRAL);
        self.armed = true;
    }

    /// Whether the runtime may run the handles on other threads than the driver.
    pub(crate) fn multi_thread(&self) -> bool {
        self.timer.is_some()
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
        // Until the next park: an elapsed timer must not fire again on every turn.
        self.armed = false;
        self.fired = true;
    }
}

#[cfg(test)]
mod tests {
    use super::{Deferral, STREAM};
    use crate::{ConnectionOptions, command_queue::Taken, connection::shared_state};

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_stream_of_publishes_arms_and_a_trickle_does_not() {
        let conn = shared_state(&ConnectionOptions::default());
        let mut deferral = Deferral::new();
        deferral.took(Taken { publishes: STREAM, ..Taken::default() });
        deferral.park(&conn);
        assert!(deferral.is_armed(), "a stream arms the driver");
        deferral.took(Taken { publishes: STREAM - 1, ..Taken::default() });
        deferral.park(&conn);
        assert!(!deferral.is_armed(), "a trickle wakes it for each publish, as before");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_current_thread_runtime_never_arms() {
        let conn = shared_state(&ConnectionOptions::default());
        let mut deferral = Deferral::new();
        deferral.took(Taken { publishes: STREAM * 10, ..Taken::default() });
        deferral.park(&conn);
        assert!(!deferral.is_armed());
    }
}
