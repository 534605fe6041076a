//! T5 of `/work/shared/RELIABILITY.md`: the password never shows, neither in what the
//! client logs (captured here with a real `tracing` subscriber at TRACE level while it
//! connects, fails to log in, and closes) nor in the `Debug`/`Display` of options and errors.
//! (`amqps://` never falling back to plain TCP is the `t5` step of `own_node.rs`.)

use std::{
    io::Write,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use lepus::{AuthMechanism, Connection, ConnectionOptions, Error};
use lepus_tests::{
    bounded::{Bounded, within},
    fake_broker::FakeBroker,
    util::options,
};
use tracing_subscriber::{filter::LevelFilter, fmt::MakeWriter, util::SubscriberInitExt};

/// The longest any single client operation may take here before it counts as a hang.
const WAIT: Duration = Duration::from_secs(10);

/// Everything the subscriber writes, kept for searching.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Asserts that none of `shown` contains `secret`.
#[track_caller]
fn assert_hidden(secret: &str, shown: &[(&str, String)]) {
    for (what, text) in shown {
        assert!(!text.contains(secret), "the password shows in {what}: {text}");
    }
}

// The runtime is current-thread: every task of the client runs on this thread, where the
// capturing subscriber is the default, so every event it logs is captured.
#[tokio::test]
async fn t5_the_password_never_reaches_the_logs() {
    let logs = Captured::default();
    let _guard = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(LevelFilter::TRACE)
        .with_ansi(false)
        .finish()
        .set_default();

    // A login that works (the fake accepts anyone), a channel, and a close, from a URI.
    let accepted = "T5-accepted-Xq7pLm";
    let fake = FakeBroker::new()
        .start(|mut peer| async move {
            let response = peer.start_ok.as_ref().map(|ok| ok.response.clone()).unwrap_or_default();
            peer.serve_until_closed().await?;
            Ok(response)
        })
        .within(WAIT)
        .await
        .expect("the fake listens");
    let uri = format!("amqp://guest:{accepted}@127.0.0.1:{}/%2f", fake.addr().port());
    let conn = within(WAIT, "connect", Connection::connect(&uri)).await.expect("the fake accepts the login");
    let channel = conn.open_channel().within(WAIT).await.unwrap();
    channel.close().within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
    let response = fake.finish().await;
    // The password did travel (PLAIN: \0user\0password): it is the logs that must not have it.
    assert_eq!(&response[..], format!("\0guest\0{accepted}").as_bytes());

    // Logins the broker refuses, by both mechanisms.
    let refused = "T5-refused-Vb3nQw";
    let mut errors = Vec::new();
    for mechanism in [AuthMechanism::Plain, AuthMechanism::AmqPlain] {
        let options = options().credentials("guest", refused).auth_mechanism(mechanism);
        let err = within(WAIT, "the refusal", Connection::connect_with(options)).await.unwrap_err();
        assert!(matches!(err, Error::AccessRefused(_)), "{mechanism:?}: {err:?}");
        errors.push(err);
    }

    let logs = logs.text();
    // The capture works: the client's own events are in it.
    for expected in ["connected", "closing the connection", "the broker closed the connection"] {
        assert!(logs.contains(expected), "no {expected:?} event captured:\n{logs}");
    }
    println!("T5: {} lines of client logs captured:\n{logs}", logs.lines().count());
    for secret in [accepted, refused] {
        assert_hidden(secret, &[("the logs", logs.clone())]);
    }
    for err in &errors {
        assert_hidden(refused, &[("an error's Display", err.to_string()), ("an error's Debug", format!("{err:?}"))]);
    }
}

#[test]
fn t5_options_credentials_and_errors_never_show_the_password() {
    let secret = "T5-shown-Kd9sRt";
    let from_uri = ConnectionOptions::from_uri(&format!("amqp://guest:{secret}@127.0.0.1:5672/%2f")).unwrap();
    let built = ConnectionOptions::new().credentials("guest", secret);
    for options in [&from_uri, &built] {
        assert_eq!(options.get_credentials().password.expose(), secret, "the password is kept");
        let credentials = options.get_credentials();
        assert_hidden(
            secret,
            &[
                ("the options' Debug", format!("{options:?}")),
                ("the options' pretty Debug", format!("{options:#?}")),
                ("the options' Display", options.to_string()),
                ("the credentials' Debug", format!("{credentials:?}")),
                ("the password's Debug", format!("{:?}", credentials.password)),
                ("the password's Display", credentials.password.to_string()),
            ],
        );
    }
    // A URI that fails to parse after its password: the error names the problem, not it.
    for bad in [
        format!("amqp://guest:{secret}@127.0.0.1:notaport/%2f"),
        format!("amqp://guest:{secret}@127.0.0.1:5672/%2f?heartbeat=forever"),
        format!("amqx://guest:{secret}@127.0.0.1/"),
    ] {
        let err = ConnectionOptions::from_uri(&bad).expect_err("an invalid URI");
        let err = Error::from(err);
        assert!(matches!(err, Error::Uri(_)), "{err:?}");
        assert_hidden(
            secret,
            &[("a URI error's Display", err.to_string()), ("a URI error's Debug", format!("{err:?}"))],
        );
    }
}
