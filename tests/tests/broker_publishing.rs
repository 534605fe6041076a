//! Publishing against the real RabbitMQ: transactions, publisher confirms, returned
//! messages, and a publish the broker refuses (404). Each test asserts what the broker did
//! with the message, not only that the call returned.

use std::time::Duration;

use lepus::{BasicProperties, Channel, Confirmation, Error, FieldTable, PublishOptions, ReplyCode};
use lepus_tests::bounded::{Bounded, within};
use lepus_tests::util::{assert_channel_error, connect, exclusive_queue, passive, ready, unique};

/// The most any single expected event may take.
const WAIT: Duration = Duration::from_secs(5);

/// Publishes on a confirm-mode channel, mandatory, and returns the broker's verdict.
async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    key: &str,
    body: &str,
    properties: BasicProperties,
) -> Confirmation {
    let options = PublishOptions { mandatory: true, properties };
    let confirm =
        channel.basic_publish(exchange, key, body.to_owned().into_bytes(), options).within(WAIT).await.unwrap();
    within(WAIT, "a confirm", confirm).await.unwrap()
}

#[tokio::test]
async fn tx_commit_publishes_and_rollback_discards() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    let q = exclusive_queue(&ch, "tx").await;
    let tx = conn.open_channel().within(WAIT).await.unwrap();
    tx.tx_select().within(WAIT).await.unwrap();

    let confirm = tx.basic_publish("", &q, &b"committed"[..], PublishOptions::default()).within(WAIT).await.unwrap();
    assert_eq!(confirm.within(WAIT).await.unwrap(), Confirmation::NotRequested);
    // A synchronous call on the same channel: the broker has seen the publish.
    tx.queue_declare(&q, passive(), FieldTable::new()).within(WAIT).await.unwrap();
    assert_eq!(ready(&ch, &q).await, 0, "not visible before the commit");
    tx.tx_commit().within(WAIT).await.unwrap();
    assert_eq!(ready(&ch, &q).await, 1, "visible after the commit");

    let confirm = tx.basic_publish("", &q, &b"rolled back"[..], PublishOptions::default()).within(WAIT).await.unwrap();
    assert_eq!(confirm.within(WAIT).await.unwrap(), Confirmation::NotRequested);
    tx.tx_rollback().within(WAIT).await.unwrap();
    tx.tx_commit().within(WAIT).await.unwrap();
    assert_eq!(ready(&ch, &q).await, 1, "the rolled-back publish never arrives");
    let (d, _) = ch.basic_get(&q, true).within(WAIT).await.unwrap().unwrap();
    assert_eq!(&d.body[..], b"committed");

    // Transactions and confirms exclude each other, refused before anything is sent.
    assert!(matches!(tx.confirm_select().within(WAIT).await, Err(Error::InvalidOperation(_))));
    assert!(tx.is_open());
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn confirms_ack_routed_and_return_unroutable_mandatory_messages() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    let q = exclusive_queue(&ch, "confirms").await;
    // Outside confirm mode nothing is confirmed.
    let unconfirmed = ch.basic_publish("", &q, &b"plain"[..], PublishOptions::default()).within(WAIT).await.unwrap();
    assert_eq!(unconfirmed.within(WAIT).await.unwrap(), Confirmation::NotRequested);

    ch.confirm_select().within(WAIT).await.unwrap();
    let mut confirms = Vec::new();
    for i in 0..50u32 {
        confirms.push(
            ch.basic_publish("", &q, i.to_be_bytes().to_vec(), PublishOptions::default()).within(WAIT).await.unwrap(),
        );
    }
    for c in confirms {
        assert_eq!(within(WAIT, "a confirm", c).await.unwrap(), Confirmation::Ack);
    }
    assert_eq!(ready(&ch, &q).await, 51);

    // Mandatory and unroutable: given back whole, 312 NO_ROUTE.
    let missing = unique("nobody-home");
    let props = BasicProperties { correlation_id: Some("c-1".try_into().unwrap()), ..Default::default() };
    let Confirmation::Returned(r) = publish_confirmed(&ch, "", &missing, "lost?", props).await else {
        panic!("expected the message back");
    };
    assert_eq!(r.reply_code, ReplyCode::NO_ROUTE);
    assert_eq!(r.reply_code.0, 312);
    assert_eq!(r.reply_text, "NO_ROUTE");
    assert_eq!((&r.body[..], &r.exchange[..], &r.routing_key[..]), (&b"lost?"[..], &b""[..], missing.as_bytes()));
    assert_eq!(r.properties.correlation_id.as_ref().map(|s| &s[..]), Some(&b"c-1"[..]));

    // Not mandatory: the broker drops it and still acks.
    let dropped =
        ch.basic_publish("", &missing, &b"dropped"[..], PublishOptions::default()).within(WAIT).await.unwrap();
    assert_eq!(within(WAIT, "a confirm", dropped).await.unwrap(), Confirmation::Ack);
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn mandatory_unroutable_without_confirms_arrives_on_returns() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    let mut returns = ch.returns().expect("the returns stream");
    assert!(ch.returns().is_none(), "taken once");
    let missing = unique("returns");
    let options = PublishOptions { mandatory: true, ..Default::default() };
    let confirm = ch.basic_publish("", &missing, &b"come back"[..], options).within(WAIT).await.unwrap();
    assert_eq!(confirm.within(WAIT).await.unwrap(), Confirmation::NotRequested);
    let r = within(WAIT, "the returned message", returns.next()).await.expect("a returned message");
    assert_eq!((r.reply_code, &r.body[..]), (ReplyCode::NO_ROUTE, &b"come back"[..]));
    assert_eq!(r.routing_key, missing.as_str());
    assert!(ch.is_open());
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn publish_to_a_missing_exchange_fails_its_confirm_with_404() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let missing = unique("no-such-exchange");
    let confirm = ch.basic_publish(&missing, "k", &b"x"[..], PublishOptions::default()).within(WAIT).await.unwrap();
    let err = within(WAIT, "the confirm of a publish to a missing exchange", confirm).await.unwrap_err();
    assert_channel_error(&err, ReplyCode::NOT_FOUND);
    assert!(err.to_string().contains(&missing), "{err}");
    assert!(!ch.is_open());
    // Later publishes on that channel fail at once with the same reason.
    let err = ch.basic_publish("", "k", &b"x"[..], PublishOptions::default()).within(WAIT).await.unwrap_err();
    assert_channel_error(&err, ReplyCode::NOT_FOUND);
    assert!(conn.is_open());
    conn.close().within(WAIT).await.unwrap();
}
