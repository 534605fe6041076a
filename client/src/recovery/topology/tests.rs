//! Recording and replay order, renames, forgetting.

use lepus_codec::{
    FieldTable, Method, ShortStr,
    method::{basic, exchange, queue},
};

use super::{Step, Topology};

fn s(v: &str) -> ShortStr {
    ShortStr::try_from(v).unwrap()
}

fn declare_queue(t: &mut Topology<u32>, requested: &str, named: &str, auto_delete: bool) {
    let d = queue::Declare { queue: s(requested), auto_delete, ..Default::default() };
    let ok = queue::DeclareOk { queue: s(named), message_count: 0, consumer_count: 0 };
    t.record(1, &d.into(), &ok.into());
}

fn declare_exchange(t: &mut Topology<u32>, name: &str) {
    let d = exchange::Declare { exchange: s(name), kind: s("topic"), ..Default::default() };
    t.record(1, &d.into(), &exchange::DeclareOk {}.into());
}

fn bind(t: &mut Topology<u32>, q: &str, x: &str, key: &str) {
    let b = queue::Bind { queue: s(q), exchange: s(x), routing_key: s(key), ..Default::default() };
    t.record(1, &b.into(), &queue::BindOk {}.into());
}

fn consume(t: &mut Topology<u32>, channel: u64, q: &str, tag: &str, token: u32) {
    let c = basic::Consume { queue: s(q), consumer_tag: s(tag), ..Default::default() };
    t.consumer_started(channel, &c, token);
}

/// Every step, described.
fn plan(t: &Topology<u32>) -> Vec<String> {
    t.plan(None, true).iter().map(describe).collect()
}

fn describe(step: &Step<u32>) -> String {
    match step {
        Step::Declare { method, .. } => match method {
            Method::ExchangeDeclare(d) => format!("exchange {}", d.exchange),
            Method::QueueDeclare(d) => format!("queue {:?}", d.queue.as_str().unwrap_or("")),
            Method::QueueBind(b) => format!("bind {} {} {}", b.queue, b.exchange, b.routing_key),
            Method::ExchangeBind(b) => format!("xbind {} {}", b.destination, b.source),
            other => other.name().to_owned(),
        },
        Step::OpenChannel(c) => format!("open {c}"),
        Step::ChannelMethod(c, m) => format!("{c}: {}", m.name()),
        Step::Consume { channel, consume, queue } => {
            format!("{channel}: consume {} {} ({queue})", consume.queue, consume.consumer_tag)
        }
    }
}

#[test]
fn replays_in_declaration_order_then_channels_with_their_state() {
    let mut t = Topology::<u32>::default();
    t.channel_opened(1);
    t.channel_opened(2);
    declare_exchange(&mut t, "orders");
    declare_queue(&mut t, "billing", "billing", false);
    bind(&mut t, "billing", "orders", "order.*");
    t.record(2, &basic::Qos { prefetch_count: 10, ..Default::default() }.into(), &basic::QosOk {}.into());
    t.record(
        2,
        &lepus_codec::method::confirm::Select::default().into(),
        &lepus_codec::method::confirm::SelectOk {}.into(),
    );
    consume(&mut t, 2, "billing", "c1", 7);
    let xb = exchange::Bind { destination: s("audit"), source: s("orders"), ..Default::default() };
    t.record(1, &xb.into(), &exchange::BindOk {}.into());
    assert_eq!(
        plan(&t),
        [
            "open 1",
            "open 2",
            "exchange orders",
            "queue \"billing\"",
            "bind billing orders order.*",
            "xbind audit orders",
            "2: basic.qos",
            "2: confirm.select",
            "2: consume billing c1 (7)",
        ]
    );
}

#[test]
fn a_server_named_queue_is_declared_nameless_and_its_new_name_followed() {
    let mut t = Topology::<u32>::default();
    t.channel_opened(1);
    declare_exchange(&mut t, "events");
    declare_queue(&mut t, "", "amq.gen-old", false);
    bind(&mut t, "amq.gen-old", "events", "#");
    consume(&mut t, 1, "amq.gen-old", "c", 1);
    assert_eq!(plan(&t)[2], "queue \"\"", "declared without a name: the broker names it");
    let steps = t.plan(None, true);
    let Step::Declare { entry, .. } = &steps[2] else { panic!() };
    t.queue_recovered(*entry, &s("amq.gen-new"));
    let p = plan(&t);
    assert_eq!(p[3], "bind amq.gen-new events #");
    assert_eq!(p[4], "1: consume amq.gen-new c (1)");
    // Commands naming the old queue reach the new one, through further renames too.
    let mut purge = Method::from(queue::Purge { queue: s("amq.gen-old"), ..Default::default() });
    t.translate(&mut purge);
    assert!(matches!(&purge, Method::QueuePurge(p) if p.queue == s("amq.gen-new")));
    t.queue_recovered(1, &s("amq.gen-newer"));
    assert_eq!(t.current(&s("amq.gen-old")), s("amq.gen-newer"));
    assert_eq!(t.current(&s("amq.gen-new")), s("amq.gen-newer"));
}

#[test]
fn deleted_objects_and_closed_channels_are_forgotten() {
    let mut t = Topology::<u32>::default();
    t.channel_opened(1);
    t.channel_opened(2);
    declare_exchange(&mut t, "x");
    declare_queue(&mut t, "q", "q", false);
    declare_queue(&mut t, "r", "r", false);
    bind(&mut t, "q", "x", "k");
    bind(&mut t, "r", "x", "k");
    consume(&mut t, 2, "r", "c", 1);
    t.record(1, &queue::Delete { queue: s("q"), ..Default::default() }.into(), &queue::DeleteOk::default().into());
    let unbind = queue::Unbind {
        queue: s("r"),
        exchange: s("x"),
        routing_key: s("k"),
        arguments: FieldTable::new(),
        ..Default::default()
    };
    t.record(1, &unbind.into(), &queue::UnbindOk {}.into());
    t.channel_closed(2);
    assert_eq!(plan(&t), ["open 1", "exchange x", "queue \"r\""]);
    t.record(1, &exchange::Delete { exchange: s("x"), ..Default::default() }.into(), &exchange::DeleteOk {}.into());
    assert_eq!(plan(&t), ["open 1", "queue \"r\""]);
}

#[test]
fn an_auto_delete_queue_goes_with_its_last_consumer() {
    let mut t = Topology::<u32>::default();
    t.channel_opened(1);
    declare_queue(&mut t, "tmp", "tmp", true);
    bind(&mut t, "tmp", "amq.topic", "#");
    consume(&mut t, 1, "tmp", "a", 1);
    consume(&mut t, 1, "tmp", "b", 2);
    t.consumer_ended(1, &s("a"));
    assert_eq!(plan(&t).len(), 4, "one consumer left: the queue stays");
    t.consumer_ended(1, &s("b"));
    assert_eq!(plan(&t), ["open 1"]);
}

#[test]
fn passive_declares_are_not_recorded_and_redeclares_replace() {
    let mut t = Topology::<u32>::default();
    let passive = queue::Declare { queue: s("q"), passive: true, ..Default::default() };
    t.record(1, &passive.into(), &queue::DeclareOk { queue: s("q"), ..Default::default() }.into());
    assert!(plan(&t).is_empty());
    declare_queue(&mut t, "q", "q", false);
    declare_queue(&mut t, "q", "q", false);
    bind(&mut t, "q", "x", "k");
    bind(&mut t, "q", "x", "k");
    assert_eq!(plan(&t), ["queue \"q\"", "bind q x k"]);
}

#[test]
fn a_filter_skips_what_it_refuses() {
    let mut t = Topology::<u32>::default();
    t.channel_opened(1);
    declare_queue(&mut t, "keep", "keep", false);
    declare_queue(&mut t, "skip", "skip", false);
    consume(&mut t, 1, "skip", "c", 1);
    let filter: crate::recovery::TopologyFilter = std::sync::Arc::new(|item| {
        !matches!(
            item,
            crate::recovery::TopologyItem::Queue { name: "skip", .. }
                | crate::recovery::TopologyItem::Consumer { queue: "skip", .. }
        )
    });
    let steps: Vec<String> = t.plan(Some(&filter), true).iter().map(describe).collect();
    assert_eq!(steps, ["open 1", "queue \"keep\""]);
    let channels_only: Vec<String> = t.plan(None, false).iter().map(describe).collect();
    assert_eq!(channels_only, ["open 1"], "with topology off only channels come back");
}

#[test]
fn one_channel_replays_alone() {
    let mut t = Topology::<u32>::default();
    t.channel_opened(1);
    t.channel_opened(2);
    declare_queue(&mut t, "q", "q", false);
    t.record(2, &basic::Qos { prefetch_count: 5, ..Default::default() }.into(), &basic::QosOk {}.into());
    consume(&mut t, 2, "q", "c", 9);
    let steps: Vec<String> = t.channel_plan(2).iter().map(describe).collect();
    assert_eq!(steps, ["open 2", "2: basic.qos", "2: consume q c (9)"]);
    assert!(t.has_consumer(2, &s("c")) && !t.has_consumer(1, &s("c")));
    assert_eq!(t.consumers_of(2), [9]);
}
