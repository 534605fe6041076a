//! Running a user's handler: in a task of its own, within an optional time limit.
//!
//! Every pattern that calls application code per message (the work queue's workers, the
//! RPC server, the retry consumer, the event bus's groups) goes through [`run`], so they
//! agree on what can happen to a handler:
//!
//! - it panics: the panic stays in its task and comes back as [`Failure::Panicked`]; the
//!   consumer loop that called it goes on. Calling the handler happens inside the task too,
//!   so a panic before its first await is caught the same way.
//! - it overruns the limit: its task is aborted, [`Failure::TimedOut`].
//! - whoever waits for it goes away (a consumer shut down or aborted): its task is aborted
//!   with it, so no handler outlives the loop that started it.

use std::{any::Any, fmt, future::Future, time::Duration};

use tokio::task::AbortHandle;

/// Why a handler produced no output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// It panicked; the panic's message (or a placeholder when it had none).
    Panicked(String),
    /// It was still running after the limit; it has been aborted.
    TimedOut(Duration),
    /// Its task was cancelled from outside (the runtime shutting down).
    Cancelled,
}

/// Texts without the panic's payload: they travel to other parties (RPC callers, dead-letter
/// headers), while the payload is logged where the panic is seen.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Panicked(_) => f.write_str("the handler panicked"),
            Failure::TimedOut(limit) => write!(f, "the handler did not finish within {limit:?}"),
            Failure::Cancelled => f.write_str("the handler was cancelled"),
        }
    }
}

/// Runs `handler()` in a task of its own and waits for it, at most `limit` if given.
///
/// The task is aborted when the limit passes and when the returned future is dropped before
/// the handler finished.
pub(crate) async fn run<F, Fut>(limit: Option<Duration>, handler: F) -> Result<Fut::Output, Failure>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let mut task = tokio::spawn(async move { handler().await });
    // Aborting a finished task does nothing: the guard can stay armed on every path.
    let _abort = AbortOnDrop(task.abort_handle());
    let joined = match limit {
        Some(limit) => match tokio::time::timeout(limit, &mut task).await {
            Ok(joined) => joined,
            Err(_) => return Err(Failure::TimedOut(limit)),
        },
        None => (&mut task).await,
    };
    match joined {
        Ok(output) => Ok(output),
        Err(error) if error.is_panic() => {
            let message = panic_message(&error.into_panic());
            tracing::error!(panic = %message, "a handler panicked");
            Err(Failure::Panicked(message))
        }
        Err(_) => Err(Failure::Cancelled),
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The message a panic was raised with: `panic!` and `assert!` carry a `&str` or a
/// `String`; anything else (`panic_any`) has no text to show.
fn panic_message(payload: &Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use tokio::sync::oneshot;

    use super::*;

    /// Bounds a test's own waits: a broken `run` fails the test instead of hanging it.
    async fn within<F: Future>(what: &str, f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(5), f).await.unwrap_or_else(|_| panic!("{what}: not within 5 s"))
    }

    /// Sets its flag when dropped: shows a handler's future was dropped (aborted or done).
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn panic_messages() {
        let s: Box<dyn Any + Send> = Box::new("static");
        assert_eq!(panic_message(&s), "static");
        let s: Box<dyn Any + Send> = Box::new(String::from("owned"));
        assert_eq!(panic_message(&s), "owned");
        let s: Box<dyn Any + Send> = Box::new(5u8);
        assert_eq!(panic_message(&s), "a panic without a message");
    }

    #[test]
    fn failures_say_what_happened_without_the_panic_payload() {
        assert_eq!(Failure::Panicked("secret detail".into()).to_string(), "the handler panicked");
        assert_eq!(
            Failure::TimedOut(Duration::from_millis(250)).to_string(),
            "the handler did not finish within 250ms"
        );
        assert_eq!(Failure::Cancelled.to_string(), "the handler was cancelled");
    }

    #[tokio::test]
    async fn a_handler_that_finishes_gives_its_output() {
        let output = within("run", run(Some(Duration::from_secs(5)), || async { 41 + 1 })).await;
        assert_eq!(output, Ok(42));
        let output = within("run", run(None, || async { "no limit" })).await;
        assert_eq!(output, Ok("no limit"));
    }

    #[tokio::test]
    async fn a_panic_after_an_await_comes_back_with_its_message() {
        let output = within(
            "run",
            run(None, || async {
                tokio::task::yield_now().await;
                panic!("a bug at {}", 7);
            }),
        )
        .await;
        assert_eq!(output, Err::<(), _>(Failure::Panicked("a bug at 7".into())));
    }

    #[tokio::test]
    async fn a_panic_while_calling_the_handler_is_caught_too() {
        let handler = |n: u32| -> std::future::Ready<u32> {
            assert!(n != 0, "the handler refuses zero");
            std::future::ready(n)
        };
        let output = within("run", run(Some(Duration::from_secs(5)), move || handler(0))).await;
        assert_eq!(output, Err(Failure::Panicked("the handler refuses zero".into())));
    }

    #[tokio::test]
    async fn an_overrun_times_out_and_the_handler_is_aborted() {
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = DropFlag(dropped.clone());
        let limit = Duration::from_millis(100);
        let output = run(Some(limit), move || async move {
            let _flag = flag;
            std::future::pending::<()>().await;
        })
        .await;
        assert_eq!(output, Err(Failure::TimedOut(limit)));
        // Aborting is asynchronous: the task's future is dropped at its next poll.
        within("the abort", async {
            while !dropped.load(Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
        })
        .await;
    }

    #[tokio::test]
    async fn dropping_the_wait_aborts_the_handler() {
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = DropFlag(dropped.clone());
        let (started_tx, started) = oneshot::channel();
        let waiting = tokio::spawn(run(None, move || async move {
            let _flag = flag;
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
        }));
        within("the handler's start", started).await.expect("the handler started");
        waiting.abort();
        let joined = within("the waiting task", waiting).await;
        assert!(joined.is_err_and(|e| e.is_cancelled()), "the waiting task was aborted");
        within("the handler's abort", async {
            while !dropped.load(Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
        })
        .await;
    }
}
