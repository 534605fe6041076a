//! Health checks for an application's health endpoint: is the connection alive, and how
//! are its queues doing (messages waiting, consumers attached)?
//!
//! A queue is inspected with a passive `queue.declare` on a **throwaway channel**: a missing
//! queue makes the broker close that channel with 404, never the caller's. Every check is
//! bounded by a timeout and never fails: problems are reported as a [`Status`] with a
//! reason, e.g. `NOT_FOUND - no queue 'orders' in vhost '/'` for a missing queue.
//!
//! ```no_run
//! use lepus::Connection;
//! use lepus_patterns::health::{HealthCheck, QueueExpectations};
//!
//! # async fn demo() -> Result<(), lepus::Error> {
//! let conn = Connection::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
//! let health = HealthCheck::new(&conn).expect_queue("orders", QueueExpectations { max_messages: Some(10_000), min_consumers: Some(1) });
//! let report = health.check(&["orders", "notifications"]).await;
//! if !report.is_healthy() {
//!     eprintln!("unhealthy: {report:#?}");
//! }
//! # Ok(()) }
//! ```

use std::{
    fmt,
    time::{Duration, Instant},
};

use lepus::{Connection, Error, FieldValue, QueueDeclareOptions, ReplyCode};

use crate::work_queue::on_throwaway_channel;

/// How healthy something is; ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// All well.
    Healthy,
    /// Working, but not as expected: the broker blocks publishing (memory or disk alarm),
    /// or a queue is deeper or has fewer consumers than expected.
    Degraded,
    /// Not working: the connection is closed or does not answer, the queue does not exist.
    Unhealthy,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Healthy => "healthy",
            Status::Degraded => "degraded",
            Status::Unhealthy => "unhealthy",
        })
    }
}

/// The connection's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionHealth {
    /// The verdict.
    pub status: Status,
    /// Why it is not healthy.
    pub reason: Option<String>,
    /// How long opening and closing a channel took (a round trip to the broker and back,
    /// twice), when the broker answered.
    pub round_trip: Option<Duration>,
    /// The broker's product and version, e.g. `RabbitMQ 3.10.8`.
    pub server: Option<String>,
}

/// What a queue should look like to be healthy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueExpectations {
    /// More ready messages than this: [`Status::Degraded`] (consumers fall behind).
    pub max_messages: Option<u32>,
    /// Fewer consumers than this: [`Status::Degraded`] (nobody, or too few, working).
    pub min_consumers: Option<u32>,
}

/// One queue's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueHealth {
    /// The queue.
    pub queue: String,
    /// The verdict.
    pub status: Status,
    /// Why it is not healthy: the broker's text for a missing queue (`NOT_FOUND - no queue
    /// 'x' in vhost '/'`), the error, or the expectation not met.
    pub reason: Option<String>,
    /// The broker's reply code when it refused the check (404 for a missing queue, 403 for
    /// a queue this user may not access).
    pub reply_code: Option<ReplyCode>,
    /// Messages ready for delivery, when the queue could be inspected.
    pub message_count: Option<u32>,
    /// Consumers attached, when the queue could be inspected.
    pub consumer_count: Option<u32>,
}

/// The connection's and some queues' health together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// The worst of the parts.
    pub status: Status,
    /// The connection.
    pub connection: ConnectionHealth,
    /// The queues, in the order asked for.
    pub queues: Vec<QueueHealth>,
}

impl HealthReport {
    /// True if everything is [`Status::Healthy`].
    pub fn is_healthy(&self) -> bool {
        self.status == Status::Healthy
    }
}

/// Health checks on one connection.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    conn: Connection,
    timeout: Duration,
    expectations: Vec<(String, QueueExpectations)>,
}

impl HealthCheck {
    /// Checks on `conn`, each bounded by 5 s.
    pub fn new(conn: &Connection) -> HealthCheck {
        HealthCheck { conn: conn.clone(), timeout: Duration::from_secs(5), expectations: Vec::new() }
    }

    /// Bounds each check by `timeout` instead.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> HealthCheck {
        self.timeout = timeout;
        self
    }

    /// What `queue` should look like (replaces earlier expectations for it).
    #[must_use]
    pub fn expect_queue(mut self, queue: &str, expectations: QueueExpectations) -> HealthCheck {
        self.expectations.retain(|(q, _)| q != queue);
        self.expectations.push((queue.to_owned(), expectations));
        self
    }

    fn expectations_for(&self, queue: &str) -> QueueExpectations {
        self.expectations.iter().find(|(q, _)| q == queue).map(|(_, e)| *e).unwrap_or_default()
    }

    /// Whether the connection is open and the broker answers: a channel is opened and
    /// closed within the timeout. A broker that blocks publishing makes it
    /// [`Status::Degraded`].
    pub async fn connection(&self) -> ConnectionHealth {
        let server = server_name(&self.conn);
        let unhealthy = |reason: String| ConnectionHealth {
            status: Status::Unhealthy,
            reason: Some(reason),
            round_trip: None,
            server: server.clone(),
        };
        if let Some(error) = self.conn.close_reason() {
            return unhealthy(format!("connection closed: {}", reason_text(&error)));
        }
        let started = Instant::now();
        let probe = on_throwaway_channel(&self.conn, |_| async { Ok(()) });
        match tokio::time::timeout(self.timeout, probe).await {
            Err(_) => unhealthy(format!("the broker did not answer within {:?}", self.timeout)),
            Ok(Err(error)) => unhealthy(reason_text(&error)),
            Ok(Ok(())) => {
                let round_trip = Some(started.elapsed());
                match self.conn.blocked() {
                    Some(why) => ConnectionHealth {
                        status: Status::Degraded,
                        reason: Some(format!("the broker blocks publishing: {why}")),
                        round_trip,
                        server,
                    },
                    None => ConnectionHealth { status: Status::Healthy, reason: None, round_trip, server },
                }
            }
        }
    }

    /// A queue's message and consumer counts, by a passive declare on a throwaway channel,
    /// judged by its expectations ([`HealthCheck::expect_queue`]). A missing queue is
    /// [`Status::Unhealthy`] with the broker's 404 text as the reason.
    pub async fn queue(&self, queue: &str) -> QueueHealth {
        let mut health = QueueHealth {
            queue: queue.to_owned(),
            status: Status::Unhealthy,
            reason: None,
            reply_code: None,
            message_count: None,
            consumer_count: None,
        };
        let name = queue.to_owned();
        let inspect = on_throwaway_channel(&self.conn, |channel| async move {
            let passive = QueueDeclareOptions { passive: true, ..Default::default() };
            channel.queue_declare(&name, passive, Default::default()).await
        });
        let declared = match tokio::time::timeout(self.timeout, inspect).await {
            Err(_) => {
                health.reason = Some(format!("the broker did not answer within {:?}", self.timeout));
                return health;
            }
            Ok(Err(error)) => {
                health.reply_code = error.reply_code();
                health.reason = Some(reason_text(&error));
                return health;
            }
            Ok(Ok(declared)) => declared,
        };
        health.message_count = Some(declared.message_count);
        health.consumer_count = Some(declared.consumer_count);
        let expected = self.expectations_for(queue);
        let mut problems = Vec::new();
        if let Some(max) = expected.max_messages.filter(|max| declared.message_count > *max) {
            problems.push(format!("{} messages waiting, more than {max}", declared.message_count));
        }
        if let Some(min) = expected.min_consumers.filter(|min| declared.consumer_count < *min) {
            problems.push(format!("{} consumers, fewer than {min}", declared.consumer_count));
        }
        if problems.is_empty() {
            health.status = Status::Healthy;
        } else {
            health.status = Status::Degraded;
            health.reason = Some(problems.join("; "));
        }
        health
    }

    /// The connection and each queue (one after the other; each within the timeout).
    pub async fn check(&self, queues: &[&str]) -> HealthReport {
        let connection = self.connection().await;
        let mut results = Vec::with_capacity(queues.len());
        for queue in queues {
            results.push(self.queue(queue).await);
        }
        let status = results.iter().map(|q| q.status).chain([connection.status]).max().unwrap_or(Status::Healthy);
        HealthReport { status, connection, queues: results }
    }
}

/// The broker's own text for a close (`NOT_FOUND - no queue ...`), else the error.
fn reason_text(error: &Error) -> String {
    match error {
        Error::ChannelClosed(reason) | Error::ConnectionClosed(reason) => reason.reply_text.clone(),
        other => other.to_string(),
    }
}

fn server_name(conn: &Connection) -> Option<String> {
    let properties = conn.server_properties();
    let field = |key| properties.get(key).and_then(FieldValue::as_str).map(str::to_owned);
    match (field("product"), field("version")) {
        (Some(product), Some(version)) => Some(format!("{product} {version}")),
        (product, version) => product.or(version),
    }
}

#[cfg(test)]
mod tests {
    use lepus::CloseReason;

    use super::*;

    #[test]
    fn statuses_order_from_best_to_worst() {
        assert!(Status::Healthy < Status::Degraded && Status::Degraded < Status::Unhealthy);
        assert_eq!(Status::Degraded.to_string(), "degraded");
    }

    #[test]
    fn the_brokers_text_is_the_reason() {
        let closed = Error::ChannelClosed(CloseReason::client(ReplyCode::NOT_FOUND, "NOT_FOUND - no queue 'q'"));
        assert_eq!(reason_text(&closed), "NOT_FOUND - no queue 'q'");
        assert_eq!(reason_text(&Error::Timeout("x")), "timed out: x");
    }
}
