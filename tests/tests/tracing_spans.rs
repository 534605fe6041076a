//! The client's `tracing` spans, captured by a layer of this test against the real broker
//! (through a proxy, to cut the link once for a recovery): connecting, opening and closing
//! a channel, each synchronous call and each reconnection attempt have a span with the
//! connection's name and the channel, method, attempt or address; publishing, delivering
//! and acknowledging make none.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use lepus::{ConsumeOptions, PublishOptions, RecoveryOptions};
use lepus_tests::{
    bounded::{Bounded, until},
    proxy::Proxy,
    util::{connect_with, exclusive, unique},
};
use tracing::{
    Subscriber,
    field::{Field, Visit},
    span::{Attributes, Id, Record},
};
use tracing_subscriber::{
    layer::{Context, Layer, SubscriberExt},
    util::SubscriberInitExt,
};

/// The longest any single client operation may take here before it counts as a hang.
const WAIT: Duration = Duration::from_secs(10);

/// One span as created, with the fields recorded on it later.
#[derive(Debug, Clone)]
struct Captured {
    name: &'static str,
    fields: BTreeMap<String, String>,
}

/// Every span created while it is the default subscriber's layer.
#[derive(Clone, Default)]
struct Spans {
    all: Arc<Mutex<Vec<Captured>>>,
    /// Span id to its index in `all` (ids are reused once a span closes).
    by_id: Arc<Mutex<HashMap<u64, usize>>>,
}

impl Spans {
    fn all(&self) -> Vec<Captured> {
        self.all.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The spans named `name` whose fields include every one of `fields`.
    fn matching(&self, name: &str, fields: &[(&str, &str)]) -> Vec<Captured> {
        self.all()
            .into_iter()
            .filter(|s| s.name == name && fields.iter().all(|(k, v)| s.fields.get(*k).is_some_and(|f| f == v)))
            .collect()
    }

    #[track_caller]
    fn assert_one(&self, name: &str, fields: &[(&str, &str)]) {
        let found = self.matching(name, fields);
        assert_eq!(found.len(), 1, "one span {name} with {fields:?}; all spans: {:#?}", self.all());
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: Subscriber> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut all = self.all.lock().unwrap_or_else(PoisonError::into_inner);
        all.push(Captured { name: attrs.metadata().name(), fields });
        self.by_id.lock().unwrap_or_else(PoisonError::into_inner).insert(id.into_u64(), all.len() - 1);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let Some(&index) = self.by_id.lock().unwrap_or_else(PoisonError::into_inner).get(&id.into_u64()) else {
            return;
        };
        if let Some(span) = self.all.lock().unwrap_or_else(PoisonError::into_inner).get_mut(index) {
            values.record(&mut Fields(&mut span.fields));
        }
    }
}

// The runtime is current-thread: the connection's own task runs on this thread too, where
// the capturing subscriber is the default, so its spans are captured as well.
#[tokio::test]
async fn connect_channels_calls_and_recovery_have_spans_and_the_hot_path_has_none() {
    let spans = Spans::default();
    let _guard = tracing_subscriber::registry().with(spans.clone()).set_default();
    let proxy = Proxy::to_broker().within(WAIT).await.unwrap();
    let address = proxy.addr().to_string();
    let name = unique("spans");
    let recovery = RecoveryOptions::new().backoff(Duration::from_millis(50), Duration::from_millis(200));
    let conn = connect_with(proxy.options().connection_name(name.clone()).recovery(recovery)).await;
    let channel = conn.open_channel().within(WAIT).await.unwrap();
    let queue = channel.queue_declare("", exclusive(), Default::default()).within(WAIT).await.unwrap().name;
    channel.basic_qos(10, false).within(WAIT).await.unwrap();
    channel.confirm_select().within(WAIT).await.unwrap();
    let mut consumer = channel.basic_consume(&queue, ConsumeOptions::default()).within(WAIT).await.unwrap();

    let before = spans.all().len();
    for i in 0..20 {
        let body = format!("message {i}");
        let confirm = channel.basic_publish("", &queue, body, PublishOptions::default()).within(WAIT).await.unwrap();
        assert!(confirm.within(WAIT).await.unwrap().is_ack());
        let delivery = consumer.next().within(WAIT).await.expect("the consumer is open").unwrap();
        delivery.ack().within(WAIT).await.unwrap();
    }
    let hot = spans.all().split_off(before);
    assert!(hot.is_empty(), "publishing, delivering and acking made spans: {hot:#?}");

    proxy.cut();
    until(WAIT, "the loss to be seen", || conn.is_recovering()).await;
    proxy.resume();
    until(WAIT, "the connection to recover", || conn.recoveries() == 1).await;
    channel.close().within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();

    let conn_name = name.as_str();
    spans.assert_one("lepus.connect", &[("connection", conn_name), ("address", &address)]);
    spans.assert_one("lepus.channel.open", &[("connection", conn_name), ("channel", "1")]);
    for method in ["queue.declare", "basic.qos", "confirm.select", "basic.consume", "channel.close"] {
        spans.assert_one("lepus.call", &[("connection", conn_name), ("channel", "1"), ("method", method)]);
    }
    spans.assert_one("lepus.channel.close", &[("connection", conn_name), ("channel", "1")]);
    spans.assert_one("lepus.call", &[("connection", conn_name), ("channel", "0"), ("method", "connection.close")]);
    // The first attempt may find the link still cut; each attempt has its own span.
    let attempts = spans.matching("lepus.recovery", &[("connection", conn_name), ("address", &address)]);
    assert!(!attempts.is_empty(), "no recovery span; all spans: {:#?}", spans.all());
    for (n, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt.fields.get("attempt"), Some(&(n + 1).to_string()), "{attempts:#?}");
    }
}
