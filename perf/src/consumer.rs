//! A consumer: a channel (on a connection of its own unless the queue is exclusive),
//! receiving, timing and acknowledging messages until the run stops.

use std::sync::Arc;

use lepus::{Channel, Connection, ConsumeOptions, Consumer as Deliveries, Error};
use tokio_util::sync::CancellationToken;

use crate::{
    connect::CLOSE_TIMEOUT,
    message::RunClock,
    phase::Drain,
    stats::{Counters, Recorder},
};

/// How every consumer of a run consumes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConsumerPlan {
    /// Prefetch (0: unlimited).
    pub(crate) prefetch: u16,
    /// Consume without acknowledgements.
    pub(crate) autoack: bool,
}

/// Where a consumer reports, and what stops it.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerContext {
    /// The run's clock, to time bodies.
    pub(crate) clock: RunClock,
    /// The run's counters.
    pub(crate) counters: Arc<Counters>,
    /// Told about every received message, to end the drain.
    pub(crate) drain: Arc<Drain>,
    /// Stop every wait: the run is over.
    pub(crate) stop_all: CancellationToken,
}

/// A consumer whose `basic.consume` the broker has accepted.
pub(crate) struct Consumer {
    conn: Connection,
    /// Whether the connection is this consumer's own, to close at the end (otherwise it
    /// belongs to the run, and only the channel is closed).
    owns_connection: bool,
    channel: Channel,
    deliveries: Deliveries,
}

impl Consumer {
    /// Opens a channel on `conn`, sets the prefetch and starts consuming `queue`.
    pub(crate) async fn start(
        conn: Connection,
        owns_connection: bool,
        queue: &str,
        plan: ConsumerPlan,
    ) -> Result<Consumer, Error> {
        let channel = conn.open_channel().await?;
        if plan.prefetch > 0 && !plan.autoack {
            channel.basic_qos(plan.prefetch, false).await?;
        }
        let options = ConsumeOptions { no_ack: plan.autoack, ..ConsumeOptions::default() };
        let deliveries = channel.basic_consume(queue, options).await?;
        Ok(Consumer { conn, owns_connection, channel, deliveries })
    }

    /// Closes what it opened, for a run that ends before it starts.
    pub(crate) async fn abandon(self) {
        close(&self.conn, self.owns_connection, &self.channel).await;
    }

    /// Receives until the run stops; each message is timed, acked (unless autoack) and
    /// then counted, so a message counted as received is one whose ack has been handed to
    /// the connection. An error (the channel or connection closed, the broker cancelled
    /// the consumer) ends it at once.
    pub(crate) async fn run(self, recorder: Arc<Recorder>, autoack: bool, cx: ConsumerContext) -> Result<(), Error> {
        let Consumer { conn, owns_connection, channel, mut deliveries } = self;
        let result = async {
            loop {
                let next = tokio::select! {
                    biased;
                    () = cx.stop_all.cancelled() => return Ok(()),
                    next = deliveries.next() => next,
                };
                let delivery = match next {
                    Some(delivery) => delivery?,
                    // Ends only after our own cancel, which the run's end does.
                    None => return Ok(()),
                };
                if let Some(latency) = cx.clock.latency(&delivery.body) {
                    recorder.record(latency);
                }
                if !autoack {
                    tokio::select! {
                        biased;
                        () = cx.stop_all.cancelled() => return Ok(()),
                        // An ack that loses the race with a close says only that its tag
                        // went stale; the channel's close reason is the cause to report.
                        acked = delivery.ack() => acked.map_err(|e| channel.close_reason().unwrap_or(e))?,
                    }
                }
                cx.drain.observe(cx.counters.received());
            }
        }
        .await;
        // Unacked deliveries go back to the queue when the channel closes.
        drop(deliveries);
        close(&conn, owns_connection, &channel).await;
        result
    }
}

/// Closes the consumer's connection if it is its own, else only its channel (bounded).
async fn close(conn: &Connection, owns_connection: bool, channel: &Channel) {
    if owns_connection {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close()).await;
    } else {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close()).await;
    }
}
