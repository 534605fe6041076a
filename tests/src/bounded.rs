//! Bounded waiting for tests: a hang fails the test at once, naming what hung and the limit,
//! instead of stalling CI until its global timeout.
//!
//! - [`within`]`(limit, what, fut)` awaits `fut` for at most `limit`.
//! - [`Bounded::within`] does the same as a method (`fut.within(WAIT).await`), naming the
//!   caller's file and line; it is meant for the many plain awaits of a test, where the line
//!   says enough.
//! - [`until`] and [`eventually`] wait for a condition with a deadline, where a test would
//!   otherwise sleep and hope.
//! - [`stays_pending`] checks that something keeps waiting (a publish held by a block, ...).
//!
//! Each test file keeps its own bounds and passes them in.
//!
//! ```no_run
//! # async fn demo(conn: lepus::Connection) {
//! use std::time::Duration;
//! use lepus_tests::bounded::{Bounded, within};
//!
//! const WAIT: Duration = Duration::from_secs(10);
//! let channel = within(WAIT, "open a channel", conn.open_channel()).await.unwrap();
//! channel.confirm_select().within(WAIT).await.unwrap();
//! # }
//! ```

use std::{
    fmt::Display,
    future::{Future, IntoFuture},
    panic::Location,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::{Instant, Timeout};

/// How often [`until`] and [`eventually`] look again.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// A future bounded by a time limit; it panics, naming what it waited for, when the limit
/// passes first. Made by [`within`] and [`Bounded::within`].
#[must_use = "futures do nothing unless awaited"]
pub struct Within<F> {
    inner: Pin<Box<Timeout<F>>>,
    limit: Duration,
    what: String,
}

impl<F> std::fmt::Debug for Within<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Within").field("limit", &self.limit).field("what", &self.what).finish_non_exhaustive()
    }
}

impl<F: Future> Future for Within<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.inner.as_mut().poll(cx) {
            Poll::Ready(Ok(out)) => Poll::Ready(out),
            Poll::Ready(Err(_)) => panic!("{} did not finish within {:?}", self.what, self.limit),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Awaits `fut` for at most `limit`.
///
/// # Panics
///
/// When `limit` passes first: the message names `what` and the limit. Also when called
/// outside a tokio runtime with timers enabled.
pub fn within<F: IntoFuture>(limit: Duration, what: impl Display, fut: F) -> Within<F::IntoFuture> {
    Within { inner: Box::pin(tokio::time::timeout(limit, fut)), limit, what: what.to_string() }
}

/// [`within`] as a method on every future, naming the caller's file and line.
pub trait Bounded: IntoFuture + Sized {
    /// Awaits `self` for at most `limit`; see [`within`].
    ///
    /// # Panics
    ///
    /// When `limit` passes first, naming where the future was awaited.
    #[track_caller]
    fn within(self, limit: Duration) -> Within<Self::IntoFuture> {
        let at = Location::caller();
        within(limit, format_args!("the future awaited at {}:{}", at.file(), at.line()), self)
    }
}

impl<F: IntoFuture> Bounded for F {}

/// Waits until `condition()` holds, looking every 10 ms.
///
/// # Panics
///
/// When it still does not hold after `limit`, naming `what`.
pub async fn until(limit: Duration, what: impl Display, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not so within {limit:?}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Waits until the async `check()` returns `true`, looking again 10 ms after each `false`.
/// Each check is itself bounded by what is left of `limit`.
///
/// # Panics
///
/// When it is still `false` after `limit` (or a check hangs past it), naming `what`.
pub async fn eventually<Fut: Future<Output = bool>>(
    limit: Duration,
    what: impl Display,
    mut check: impl FnMut() -> Fut,
) {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if within(left, format!("{what} (a check)"), check()).await {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not so within {limit:?}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Asserts that `fut` is still pending after `duration` (it may finish later): for what
/// must keep waiting, such as a publish while the broker blocks the connection.
///
/// # Panics
///
/// When `fut` finishes within `duration`, naming `what`.
pub async fn stays_pending<F: Future + Unpin>(duration: Duration, what: impl Display, fut: &mut F)
where
    F::Output: std::fmt::Debug,
{
    if let Ok(out) = tokio::time::timeout(duration, fut).await {
        panic!("{what}: finished within {duration:?} but must keep waiting: {out:?}");
    }
}
