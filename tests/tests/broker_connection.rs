//! The connection against the real RabbitMQ: what the broker says about itself,
//! update-secret, and refused logins (T4) and secrets kept out of sight (T5).

use std::time::Duration;

use lepus::{Connection, ConnectionOptions, Error, FieldValue, Initiator, ReplyCode};
use lepus_tests::bounded::{Bounded, within};
use lepus_tests::util::{connect, exclusive_queue, options, ready, unique};

/// The most any single expected event may take.
const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn update_secret_with_the_same_password() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    // RabbitMQ's internal backend has no expiring state: it accepts the new secret as is
    // (update-secret-ok), and the connection carries on.
    let password = options().get_credentials().password.expose().to_owned();
    within(WAIT, "update-secret-ok", conn.update_secret(password.into_bytes(), "lepus test refresh")).await.unwrap();
    assert!(conn.is_open());
    let q = exclusive_queue(&ch, "secret").await;
    assert_eq!(ready(&ch, &q).await, 0);
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn server_properties_and_capabilities_are_readable() {
    let conn = connect().await;
    let props = conn.server_properties();
    assert_eq!(props.get("product").and_then(FieldValue::as_str), Some("RabbitMQ"));
    let version = props.get("version").and_then(FieldValue::as_str).expect("a version");
    assert!(version.starts_with("3."), "{version}");
    let capabilities = props.get("capabilities").and_then(FieldValue::as_table).expect("capabilities");
    assert_eq!(capabilities.get("publisher_confirms").and_then(FieldValue::as_bool), Some(true));
    for capability in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        assert!(conn.server_capability(capability), "{capability}");
    }
    assert!(!conn.server_capability("lepus_no_such_capability"));
    assert!(!conn.server_capability("product"), "not a capability");
    let tuning = conn.tuning();
    assert_eq!((tuning.frame_max, tuning.channel_max, tuning.heartbeat), (131_072, 2047, 60));
    conn.close().within(WAIT).await.unwrap();
}

#[tokio::test]
async fn t4_wrong_password_is_access_refused_with_the_brokers_text() {
    let secret = "lepus-wrong-password-Zq9";
    let options = options().credentials("guest", secret);
    let err = within(WAIT, "the refusal", Connection::connect_with(options)).await.unwrap_err();
    let Error::AccessRefused(text) = &err else { panic!("expected AccessRefused, got {err:?}") };
    assert!(text.contains("ACCESS_REFUSED") && text.contains("PLAIN"), "{text}");
    assert_eq!(err.reply_code(), Some(ReplyCode::ACCESS_REFUSED));
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains(secret), "{shown}");
    }
}

#[tokio::test]
async fn t4_unknown_vhost_is_530() {
    let vhost = unique("no-such-vhost");
    let options = options().vhost(vhost.clone());
    let err = within(WAIT, "the refusal", Connection::connect_with(options)).await.unwrap_err();
    assert_eq!(err.reply_code(), Some(ReplyCode::NOT_ALLOWED), "{err:?}");
    let Error::ConnectionClosed(reason) = &err else { panic!("expected ConnectionClosed, got {err:?}") };
    assert_eq!(reason.initiator, Initiator::Server);
    assert!(reason.reply_text.contains(&vhost), "{reason}");
}

#[tokio::test]
async fn t5_options_from_a_uri_never_show_the_password() {
    let secret = "Pw-T5-3xq";
    let options = ConnectionOptions::from_uri(&format!("amqp://guest:{secret}@127.0.0.1:5672/%2f")).unwrap();
    assert_eq!(options.get_credentials().password.expose(), secret, "the password is kept");
    for shown in [format!("{options:?}"), format!("{options:#?}"), options.to_string()] {
        assert!(!shown.contains(secret), "{shown}");
    }
    // Nor does the error of a failed login with it.
    let err = within(WAIT, "the refusal", Connection::connect_with(options)).await.unwrap_err();
    assert!(matches!(err, Error::AccessRefused(_)), "{err:?}");
    assert!(!format!("{err} {err:?}").contains(secret));
}
