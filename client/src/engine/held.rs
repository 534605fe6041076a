//! Confirms answered and consumers woken together, once the driver is about to park.
//!
//! On tokio's multi-thread runtime the task awaiting a confirm or a delivery usually runs
//! on another thread than the driver. Answering each confirm (or waking each consumer) as
//! the state machine reports it wakes that thread once per socket read: it takes what is
//! there, publishes or acks, waits again and parks, and the driver's next read, often
//! already in its buffer, wakes it again. Held until the driver has nothing left to do (or
//! for a few turns at most), a burst wakes its task once, after the driver's write rather
//! than in the middle of it. Deliveries are queued for their consumer at once all the same:
//! a consumer that is running takes them without waiting for the wake.
//!
//! Released together, their window places go back to the channel's semaphore under one
//! lock, not one lock each. The driver holds only on the multi-thread runtime: on the
//! current-thread one the waiting task cannot run before the driver parks anyway, and the
//! release would cost the driver one more turn of its loop per burst (measured: about
//! 0.2 µs more per confirmed publish).
//!
//! Only answers are held; a failure is sent at once, after everything held before it.

use std::{sync::Arc, task::Waker};

use tokio::sync::OwnedSemaphorePermit;

use crate::{Error, command::ConfirmTx, proto};

/// Turns an answer or a wake may be held for while the driver stays busy (a socket that is
/// always readable must not keep them back).
const MAX_HELD_TURNS: u32 = 4;

/// The confirms answered by the broker and not yet handed to their waiters, and the
/// consumers to wake.
#[derive(Default)]
pub(crate) struct Held {
    /// Whether anything is held at all (the driver holds; the engine's tests see each
    /// answer and wake at once).
    holding: bool,
    answers: Vec<(ConfirmTx, proto::Confirmation)>,
    /// Consumers with new deliveries (or whose stream ended).
    wakers: Vec<Waker>,
    /// Driver turns since the oldest held answer or wake came.
    turns: u32,
}

impl Held {
    /// Holds answers from now on (`true`) or hands each over at once (`false`).
    pub(crate) fn set_holding(&mut self, holding: bool) {
        self.holding = holding;
        if !holding {
            self.release();
        }
    }

    /// The broker answered `token`'s publish.
    pub(crate) fn answered(&mut self, token: ConfirmTx, confirmation: proto::Confirmation) {
        if self.holding {
            self.answers.push((token, confirmation));
        } else {
            let _ = token.tx.send(Ok(confirmation));
        }
    }

    /// `token`'s publish failed: everything answered before goes first, then the failure.
    pub(crate) fn failed(&mut self, token: ConfirmTx, error: Error) {
        self.release();
        let _ = token.tx.send(Err(error));
    }

    /// A consumer is to be woken.
    pub(crate) fn wake(&mut self, waker: Waker) {
        self.wakers.push(waker);
    }

    /// The state machine's events of a turn are routed: without holding, wakes go now.
    pub(crate) fn routed(&mut self) {
        if !self.holding {
            self.wake_consumers();
        }
    }

    fn wake_consumers(&mut self) {
        for waker in self.wakers.drain(..) {
            waker.wake();
        }
    }

    /// Whether anything is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.answers.is_empty() && self.wakers.is_empty()
    }

    /// A driver turn ends without parking: what was held for too many turns goes now.
    pub(crate) fn turn_ended(&mut self) {
        if self.is_empty() {
            return;
        }
        self.turns += 1;
        if self.turns >= MAX_HELD_TURNS {
            self.release();
        }
    }

    /// Wakes the consumers, then hands every held answer to its waiter, in the order they
    /// came. Their window places are given back together (one lock per channel and burst,
    /// not one per confirm), and so is their count of awaited confirms.
    pub(crate) fn release(&mut self) {
        self.turns = 0;
        self.wake_consumers();
        if self.answers.is_empty() {
            return;
        }
        let mut window: Option<OwnedSemaphorePermit> = None;
        let mut conn = None;
        let mut settled = 0;
        for (token, confirmation) in self.answers.drain(..) {
            let ConfirmTx { tx, _permit: permit, resend, _awaited: awaited } = token;
            drop(resend);
            if let Some(c) = awaited.settle_later() {
                settled += 1;
                conn.get_or_insert(c);
            }
            match window.as_mut() {
                Some(held) if Arc::ptr_eq(held.semaphore(), permit.semaphore()) => held.merge(permit),
                _ => drop(window.replace(permit)),
            }
            let _ = tx.send(Ok(confirmation));
        }
        drop(window);
        if let Some(conn) = conn {
            conn.commands.confirms_settled(settled);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // An answer is never lost, whatever ends the driver.
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::Arc,
        task::{Wake, Waker},
    };

    use tokio::sync::{Semaphore, oneshot};

    use super::{Held, MAX_HELD_TURNS};
    use crate::{
        ConnectionOptions, Error,
        command::{AwaitedConfirm, ConfirmTx},
        conn_shared::ConnShared,
        connection::shared_state,
        proto::{self, Confirmation},
    };

    type Answer = oneshot::Receiver<Result<Confirmation, Error>>;

    fn token(conn: &Arc<ConnShared>, window: &Arc<Semaphore>) -> (ConfirmTx, Answer) {
        let (tx, rx) = oneshot::channel();
        let permit = window.clone().try_acquire_owned().expect("the tests' windows have room");
        (ConfirmTx { tx, _permit: permit, resend: None, _awaited: AwaitedConfirm::new(conn) }, rx)
    }

    fn holding() -> Held {
        let mut held = Held::default();
        held.set_holding(true);
        held
    }

    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn answers_wait_for_the_release_and_give_the_window_back_together() {
        let conn = shared_state(&ConnectionOptions::default());
        let window = Arc::new(Semaphore::new(3));
        let mut held = holding();
        let mut answers = Vec::new();
        for _ in 0..3 {
            let (token, rx) = token(&conn, &window);
            held.answered(token, proto::Confirmation::Ack);
            answers.push(rx);
        }
        assert!(answers.iter_mut().all(|rx| rx.try_recv().is_err()), "nothing is answered before the release");
        assert_eq!(window.available_permits(), 0);
        assert!(conn.commands.confirms_awaited());
        held.release();
        assert!(held.is_empty());
        for mut rx in answers {
            assert!(matches!(rx.try_recv(), Ok(Ok(Confirmation::Ack))));
        }
        assert_eq!(window.available_permits(), 3, "every window place is back");
        assert!(!conn.commands.confirms_awaited(), "no confirm is counted as awaited any more");
    }

    #[test]
    fn a_failure_goes_after_the_answers_held_before_it() {
        let conn = shared_state(&ConnectionOptions::default());
        let window = Arc::new(Semaphore::new(2));
        let mut held = holding();
        let (first, mut first_rx) = token(&conn, &window);
        let (second, mut second_rx) = token(&conn, &window);
        held.answered(first, proto::Confirmation::Nack);
        held.failed(second, Error::Timeout("test"));
        assert!(matches!(first_rx.try_recv(), Ok(Ok(Confirmation::Nack))));
        assert!(matches!(second_rx.try_recv(), Ok(Err(Error::Timeout("test")))));
        assert_eq!(window.available_permits(), 2);
        assert!(!conn.commands.confirms_awaited());
    }

    #[test]
    fn a_busy_driver_holds_for_a_few_turns_at_most() {
        let conn = shared_state(&ConnectionOptions::default());
        let window = Arc::new(Semaphore::new(1));
        let mut held = holding();
        let (token, mut rx) = token(&conn, &window);
        held.answered(token, proto::Confirmation::Ack);
        let woken = Arc::new(Count(0.into()));
        held.wake(Waker::from(woken.clone()));
        held.routed();
        for _ in 1..MAX_HELD_TURNS {
            held.turn_ended();
            assert!(rx.try_recv().is_err());
        }
        assert_eq!(woken.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        held.turn_ended();
        assert!(matches!(rx.try_recv(), Ok(Ok(Confirmation::Ack))));
        assert_eq!(woken.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn nothing_held_is_lost_when_the_driver_goes() {
        let conn = shared_state(&ConnectionOptions::default());
        let window = Arc::new(Semaphore::new(1));
        let mut held = holding();
        let (token, mut rx) = token(&conn, &window);
        held.answered(token, proto::Confirmation::Ack);
        drop(held);
        assert!(matches!(rx.try_recv(), Ok(Ok(Confirmation::Ack))));
        assert_eq!(window.available_permits(), 1);
    }

    #[test]
    fn without_holding_everything_goes_at_once() {
        let conn = shared_state(&ConnectionOptions::default());
        let window = Arc::new(Semaphore::new(1));
        let mut held = Held::default();
        let (token, mut rx) = token(&conn, &window);
        held.answered(token, proto::Confirmation::Ack);
        assert!(matches!(rx.try_recv(), Ok(Ok(Confirmation::Ack))));
        let woken = Arc::new(Count(0.into()));
        held.wake(Waker::from(woken.clone()));
        held.routed();
        assert_eq!(woken.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(held.is_empty());
    }

    #[test]
    fn windows_of_different_channels_each_get_their_places_back() {
        let conn = shared_state(&ConnectionOptions::default());
        let (a, b) = (Arc::new(Semaphore::new(2)), Arc::new(Semaphore::new(1)));
        let mut held = holding();
        for window in [&a, &b, &a] {
            let (token, _rx) = token(&conn, window);
            held.answered(token, proto::Confirmation::Ack);
        }
        held.release();
        assert_eq!((a.available_permits(), b.available_permits()), (2, 1));
    }
}
