//! When the parking driver promises to take the command queue by itself within
//! [`DEFERRAL`], so that deferred commands (settlements, publishes in confirm mode) need not
//! wake it (see `command_queue/mod.rs`).
//!
//! The driver arms while it will look soon anyway: consumers hold deliveries they have not
//! yielded (they are about to ack them, and the next deliveries wake the driver), or
//! confirms are awaited (the broker's next `basic.ack` wakes it). The timer keeps the promise
//! when neither comes. A timer that fired with nothing deferred to take stops the deferral
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
}

impl Deferral {
    pub(crate) fn new() -> Self {
        Deferral {
            timer: (tokio::runtime::Handle::current().runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread)
                .then(|| Box::pin(tokio::time::sleep(DEFERRAL))),
            armed: false,
            fired: false,
            idle: true,
        }
    }

    /// The driver took the queue (which disarmed it).
    pub(crate) fn took(&mut self, taken: Taken) {
        self.armed = false;
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
        if !(queue.in_hand() || conn.unread() > 0 || queue.confirms_awaited()) {
            return;
        }
        if !queue.arm() {
            return;
        }
        // Later than the last deadline, mostly: tokio then moves it without its lock.
        timer.as_mut().reset(tokio::time::Instant::now() + DEFERRAL);
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
        // Until the next park: an elapsed timer must not fire again on every turn.
        self.armed = false;
        self.fired = true;
    }
}
