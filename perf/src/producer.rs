//! A producer: a connection and a channel of its own, publishing timestamped messages at
//! an optional rate, and with confirms, awaiting them in publish order beside the
//! publishing loop (the client's window holds the loop back when too many are out).

use std::{sync::Arc, time::Duration};

use lepus::{Channel, Confirmation, Connection, Error, PublishOptions, PublisherConfirm, Returns};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{connect::CLOSE_TIMEOUT, message::RunClock, phase::PublishingGuard, stats::Counters};

/// What every producer of a run publishes, and how.
#[derive(Debug, Clone)]
pub(crate) struct ProducerPlan {
    /// Exchange to publish to ("" is the default exchange).
    pub(crate) exchange: String,
    /// Routing key of every message.
    pub(crate) routing_key: String,
    /// Body size in bytes.
    pub(crate) size: usize,
    /// Messages per second; 0 is unlimited.
    pub(crate) rate: u32,
    /// Messages to publish before stopping, if limited.
    pub(crate) count: Option<u64>,
    /// Confirm window; 0 publishes without confirms.
    pub(crate) confirm_window: usize,
    /// Mandatory flag and properties of every publish.
    pub(crate) publish: PublishOptions,
}

/// What stops a producer, and where it reports.
#[derive(Debug, Clone)]
pub(crate) struct ProducerContext {
    /// The run's clock, to stamp bodies.
    pub(crate) clock: RunClock,
    /// The run's counters.
    pub(crate) counters: Arc<Counters>,
    /// Stop publishing (the time is up, or the run stops).
    pub(crate) stop_publishing: CancellationToken,
    /// Stop every wait: the run is over.
    pub(crate) stop_all: CancellationToken,
}

/// A producer ready to publish: its channel is open (in confirm mode if asked).
pub(crate) struct Producer {
    conn: Connection,
    channel: Channel,
    /// Returned messages when publishing mandatory without confirms.
    returns: Option<Returns>,
}

impl Producer {
    /// Opens the channel on `conn`, selects confirm mode if the plan asks for it.
    pub(crate) async fn start(conn: Connection, plan: &ProducerPlan) -> Result<Producer, Error> {
        let channel = conn.open_channel().await?;
        let returns = if plan.confirm_window > 0 {
            channel.confirm_select().await?;
            // In confirm mode a returned message resolves its confirm as Returned.
            None
        } else if plan.publish.mandatory {
            channel.returns()
        } else {
            None
        };
        Ok(Producer { conn, channel, returns })
    }

    /// Closes the connection, for a run that ends before it starts.
    pub(crate) async fn abandon(self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.conn.close()).await;
    }

    /// Publishes until the plan's count or `stop_publishing`, waits for the outstanding
    /// confirms and drops `publishing` to say so, then counts late returns until
    /// `stop_all` and closes the connection. An error ends it at once: a publish or a
    /// confirm failed (the channel or the connection closed).
    pub(crate) async fn run(
        self,
        plan: Arc<ProducerPlan>,
        cx: ProducerContext,
        publishing: PublishingGuard,
    ) -> Result<(), Error> {
        let Producer { conn, channel, returns } = self;
        let result = async {
            if plan.confirm_window > 0 {
                // Room for a whole window of resolved confirms not read yet: the client's
                // own window is what holds the publisher back.
                let (tx, rx) = mpsc::channel(plan.confirm_window);
                let (published, collected) = tokio::join!(
                    publish(&channel, &plan, &cx, Some(tx)),
                    collect_confirms(rx, &cx.counters, &cx.stop_all)
                );
                published.and(collected)?;
            } else {
                publish(&channel, &plan, &cx, None).await?;
            }
            drop(publishing);
            match returns {
                Some(returns) => count_returns(returns, &cx.counters, &cx.stop_all).await,
                None => cx.stop_all.cancelled().await,
            }
            Ok(())
        }
        .await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close()).await;
        result
    }
}

/// When message `n` (from 0) is due at `rate` per second from `start`.
fn due(start: Instant, n: u64, rate: u32) -> Option<Instant> {
    if rate == 0 {
        return None;
    }
    let nanos = u128::from(n) * 1_000_000_000 / u128::from(rate);
    start.checked_add(Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)))
}

/// The publishing loop; hands each confirm to the collector when there is one.
async fn publish(
    channel: &Channel,
    plan: &ProducerPlan,
    cx: &ProducerContext,
    confirms: Option<mpsc::Sender<PublisherConfirm>>,
) -> Result<(), Error> {
    let start = Instant::now();
    let mut sent = 0_u64;
    while plan.count.is_none_or(|count| sent < count) {
        if let Some(due) = due(start, sent, plan.rate)
            && due > Instant::now()
        {
            tokio::select! {
                biased;
                () = cx.stop_publishing.cancelled() => break,
                () = tokio::time::sleep_until(due) => {}
            }
        }
        let body = cx.clock.body(plan.size);
        let confirm = tokio::select! {
            biased;
            () = cx.stop_publishing.cancelled() => break,
            published = channel.basic_publish(&plan.exchange, &plan.routing_key, body, plan.publish.clone()) => published?,
        };
        cx.counters.sent();
        sent += 1;
        if let Some(confirms) = &confirms {
            tokio::select! {
                biased;
                () = cx.stop_all.cancelled() => break,
                // The collector is gone only after an error, which it reports itself.
                handed = confirms.send(confirm) => if handed.is_err() { break },
            }
        }
    }
    Ok(())
}

/// Awaits confirms in publish order (the broker confirms in that order too) until the
/// publisher has finished and every confirm is in, or the run stops.
async fn collect_confirms(
    mut confirms: mpsc::Receiver<PublisherConfirm>,
    counters: &Counters,
    stop_all: &CancellationToken,
) -> Result<(), Error> {
    loop {
        let confirm = tokio::select! {
            biased;
            () = stop_all.cancelled() => return Ok(()),
            next = confirms.recv() => match next {
                Some(confirm) => confirm,
                None => return Ok(()),
            },
        };
        let outcome = tokio::select! {
            biased;
            () = stop_all.cancelled() => return Ok(()),
            outcome = confirm => outcome?,
        };
        match outcome {
            Confirmation::Ack => counters.confirmed(),
            Confirmation::Nack => counters.nacked(),
            Confirmation::Returned(_) => {
                // The broker acks a returned message after returning it.
                counters.returned();
                counters.confirmed();
            }
            Confirmation::NotRequested => {}
        }
    }
}

/// Counts messages returned to a channel without confirms until the run stops.
async fn count_returns(mut returns: Returns, counters: &Counters, stop_all: &CancellationToken) {
    loop {
        tokio::select! {
            biased;
            () = stop_all.cancelled() => return,
            returned = returns.next() => match returned {
                Some(_) => counters.returned(),
                // The channel closed: the run's end (or an error the publisher reported).
                None => return stop_all.cancelled().await,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_spread_evenly_over_each_second() {
        let start = Instant::now();
        assert_eq!(due(start, 5, 0), None);
        assert_eq!(due(start, 0, 10), Some(start));
        assert_eq!(due(start, 5, 10), Some(start + Duration::from_millis(500)));
        assert_eq!(due(start, 3, 1000), Some(start + Duration::from_millis(3)));
    }
}
