//! [`MetricsFacade`]: the [`Metrics`] events as counters and a histogram of the `metrics`
//! crate, for whatever exporter the application installed (a Prometheus exporter, for one).

use std::time::Duration;

use metrics::{Counter, Histogram, Label, Unit};

use super::Metrics;

/// Records a connection's events through the [`metrics`](https://docs.rs/metrics) facade
/// (feature `metrics`):
///
/// | name | kind | what |
/// |---|---|---|
/// | `lepus_connections_opened_total` | counter | connections opened |
/// | `lepus_connections_closed_total` | counter | connections closed for good |
/// | `lepus_connection_recoveries_total` | counter | lost connections recovered |
/// | `lepus_connection_blocked_seconds` | histogram | how long each block by the broker lasted |
/// | `lepus_channels_opened_total` | counter | channels opened |
/// | `lepus_channels_closed_total` | counter | channels closed for good |
/// | `lepus_messages_published_total` | counter | messages handed to the connection |
/// | `lepus_published_bytes_total` | counter | their body bytes |
/// | `lepus_messages_confirmed_total` | counter | publisher confirms, label `outcome` = `ack` or `nack` |
/// | `lepus_messages_returned_total` | counter | mandatory messages returned |
/// | `lepus_messages_delivered_total` | counter | messages delivered (consumers and `basic.get`) |
/// | `lepus_delivered_bytes_total` | counter | their body bytes |
/// | `lepus_acks_total` | counter | `basic.ack`s sent |
/// | `lepus_nacks_total` | counter | `basic.nack`s sent |
/// | `lepus_rejects_total` | counter | `basic.reject`s sent |
///
/// The metrics are registered when the value is made, with the recorder in effect then:
/// install the recorder first. Recording is then a handle's increment, without a lookup.
///
/// ```
/// use std::sync::Arc;
/// use lepus::{ConnectionOptions, metrics::MetricsFacade};
///
/// // After installing the application's recorder (e.g. a Prometheus exporter):
/// let metrics = MetricsFacade::with_labels([("service", "billing")]);
/// let options = ConnectionOptions::new().metrics(Arc::new(metrics));
/// # let _ = options;
/// ```
#[derive(Debug)]
pub struct MetricsFacade {
    connections_opened: Counter,
    connections_closed: Counter,
    recoveries: Counter,
    blocked: Histogram,
    channels_opened: Counter,
    channels_closed: Counter,
    published: Counter,
    published_bytes: Counter,
    acked_confirms: Counter,
    nacked_confirms: Counter,
    returned: Counter,
    delivered: Counter,
    delivered_bytes: Counter,
    acks: Counter,
    nacks: Counter,
    rejects: Counter,
}

impl MetricsFacade {
    /// The metrics, without labels.
    pub fn new() -> Self {
        Self::with_labels(std::iter::empty::<(&str, &str)>())
    }

    /// The metrics, each with these labels (e.g. the service or the connection's role).
    pub fn with_labels<K, V>(labels: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<metrics::SharedString>,
        V: Into<metrics::SharedString>,
    {
        let labels: Vec<Label> = labels.into_iter().map(|(k, v)| Label::new(k, v)).collect();
        let counter = |name: &'static str, description: &'static str, unit: Unit| {
            metrics::describe_counter!(name, unit, description);
            metrics::counter!(name, labels.iter())
        };
        let outcome = |outcome: &'static str| {
            let mut labels = labels.clone();
            labels.push(Label::new("outcome", outcome));
            metrics::counter!("lepus_messages_confirmed_total", labels)
        };
        metrics::describe_counter!(
            "lepus_messages_confirmed_total",
            Unit::Count,
            "Publisher confirms, by the broker's outcome (ack or nack)"
        );
        metrics::describe_histogram!(
            "lepus_connection_blocked_seconds",
            Unit::Seconds,
            "How long each block of the connection by the broker lasted"
        );
        MetricsFacade {
            connections_opened: counter("lepus_connections_opened_total", "Connections opened", Unit::Count),
            connections_closed: counter("lepus_connections_closed_total", "Connections closed for good", Unit::Count),
            recoveries: counter("lepus_connection_recoveries_total", "Lost connections recovered", Unit::Count),
            blocked: metrics::histogram!("lepus_connection_blocked_seconds", labels.iter()),
            channels_opened: counter("lepus_channels_opened_total", "Channels opened", Unit::Count),
            channels_closed: counter("lepus_channels_closed_total", "Channels closed for good", Unit::Count),
            published: counter("lepus_messages_published_total", "Messages handed to the connection", Unit::Count),
            published_bytes: counter("lepus_published_bytes_total", "Body bytes of messages published", Unit::Bytes),
            acked_confirms: outcome("ack"),
            nacked_confirms: outcome("nack"),
            returned: counter("lepus_messages_returned_total", "Mandatory messages returned", Unit::Count),
            delivered: counter("lepus_messages_delivered_total", "Messages delivered", Unit::Count),
            delivered_bytes: counter("lepus_delivered_bytes_total", "Body bytes of messages delivered", Unit::Bytes),
            acks: counter("lepus_acks_total", "basic.ack sent", Unit::Count),
            nacks: counter("lepus_nacks_total", "basic.nack sent", Unit::Count),
            rejects: counter("lepus_rejects_total", "basic.reject sent", Unit::Count),
        }
    }
}

impl Default for MetricsFacade {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics for MetricsFacade {
    fn connection_opened(&self) {
        self.connections_opened.increment(1);
    }

    fn connection_closed(&self) {
        self.connections_closed.increment(1);
    }

    fn recovered(&self) {
        self.recoveries.increment(1);
    }

    fn blocked(&self, duration: Duration) {
        self.blocked.record(duration.as_secs_f64());
    }

    fn channel_opened(&self) {
        self.channels_opened.increment(1);
    }

    fn channel_closed(&self) {
        self.channels_closed.increment(1);
    }

    fn published(&self, body_bytes: usize) {
        self.published.increment(1);
        self.published_bytes.increment(body_bytes as u64);
    }

    fn confirmed(&self, acked: bool) {
        if acked { &self.acked_confirms } else { &self.nacked_confirms }.increment(1);
    }

    fn returned(&self) {
        self.returned.increment(1);
    }

    fn delivered(&self, body_bytes: usize) {
        self.delivered.increment(1);
        self.delivered_bytes.increment(body_bytes as u64);
    }

    fn acked(&self, _multiple: bool) {
        self.acks.increment(1);
    }

    fn nacked(&self, _multiple: bool, _requeue: bool) {
        self.nacks.increment(1);
    }

    fn rejected(&self, _requeue: bool) {
        self.rejects.increment(1);
    }
}

#[cfg(test)]
mod tests {
    use metrics_util::{
        CompositeKey, MetricKind,
        debugging::{DebugValue, DebuggingRecorder},
    };

    use super::*;

    fn counter(snapshot: &[(CompositeKey, DebugValue)], name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        snapshot.iter().find_map(|(key, value)| {
            let (kind, key) = (key.kind(), key.key());
            let same_labels = key.labels().map(|l| (l.key(), l.value())).eq(labels.iter().copied());
            match value {
                DebugValue::Counter(n) if kind == MetricKind::Counter && key.name() == name && same_labels => Some(*n),
                _ => None,
            }
        })
    }

    #[test]
    fn each_event_moves_its_own_metric() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let m = metrics::with_local_recorder(&recorder, || MetricsFacade::with_labels([("app", "t")]));
        m.connection_opened();
        m.channel_opened();
        m.published(10);
        m.published(5);
        m.confirmed(true);
        m.confirmed(true);
        m.confirmed(false);
        m.returned();
        m.delivered(7);
        m.acked(false);
        m.acked(true);
        m.nacked(false, true);
        m.rejected(false);
        m.blocked(Duration::from_millis(1500));
        m.recovered();
        m.channel_closed();
        m.connection_closed();

        let snapshot: Vec<_> = snapshotter.snapshot().into_vec().into_iter().map(|(k, _, _, v)| (k, v)).collect();
        let app = [("app", "t")];
        for (name, expected) in [
            ("lepus_connections_opened_total", 1),
            ("lepus_connections_closed_total", 1),
            ("lepus_connection_recoveries_total", 1),
            ("lepus_channels_opened_total", 1),
            ("lepus_channels_closed_total", 1),
            ("lepus_messages_published_total", 2),
            ("lepus_published_bytes_total", 15),
            ("lepus_messages_returned_total", 1),
            ("lepus_messages_delivered_total", 1),
            ("lepus_delivered_bytes_total", 7),
            ("lepus_acks_total", 2),
            ("lepus_nacks_total", 1),
            ("lepus_rejects_total", 1),
        ] {
            assert_eq!(counter(&snapshot, name, &app), Some(expected), "{name}");
        }
        let confirmed = "lepus_messages_confirmed_total";
        assert_eq!(counter(&snapshot, confirmed, &[("app", "t"), ("outcome", "ack")]), Some(2));
        assert_eq!(counter(&snapshot, confirmed, &[("app", "t"), ("outcome", "nack")]), Some(1));
        let blocked = snapshot.iter().find_map(|(key, value)| match value {
            DebugValue::Histogram(values) if key.key().name() == "lepus_connection_blocked_seconds" => {
                Some(values.iter().map(|v| v.into_inner()).collect::<Vec<f64>>())
            }
            _ => None,
        });
        assert_eq!(blocked, Some(vec![1.5]));
    }
}
