//! Per-call deadlines: every await a handle makes can be bounded (see
//! [`crate::ConnectionOptions::call_timeout`] and the handles' `with_timeout`), so that nothing
//! waits without limit even when heartbeats are off.

use std::{future::Future, time::Duration};

use crate::Error;

/// Runs `call`, failing with [`Error::Timeout`] naming `what` if it takes longer than `limit`.
pub(crate) async fn within<T>(
    limit: Option<Duration>,
    what: &'static str,
    call: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match limit {
        None => call.await,
        Some(limit) => tokio::time::timeout(limit, call).await.unwrap_or(Err(Error::Timeout(what))),
    }
}
