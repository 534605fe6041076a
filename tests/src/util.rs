//! Shared helpers for the client's real-broker tests: where the broker is, unique names,
//! connecting, and reading the broker's own view with `rabbitmqctl`.
//!
//! Nothing here needs a runtime; the tests bring tokio.

use std::{process::Command, time::Duration};

use lepus::{Channel, Connection, ConnectionOptions, Error, FieldTable, Initiator, QueueDeclareOptions, ReplyCode};

use crate::bounded::within;

/// How long each broker call made by these helpers may take before it counts as a hang.
pub const HELPER_WAIT: Duration = Duration::from_secs(10);

/// The broker's AMQP URI: `AMQP_URL`, else built from `AMQP_ADDR` (`host:port`), else
/// `amqp://guest:guest@127.0.0.1:5672/%2f`.
pub fn url() -> String {
    if let Ok(url) = std::env::var("AMQP_URL") {
        return url;
    }
    format!("amqp://guest:guest@{}/%2f", crate::broker_addr())
}

/// A name no other test (or run) uses: `lepus.test.<name>.<pid>.<nanos>`.
///
/// # Panics
/// If the system clock is before 1970.
pub fn unique(name: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_nanos();
    format!("lepus.test.{name}.{}.{nanos}", std::process::id())
}

/// Connection options for the test broker ([`url`]), with automatic recovery off: these
/// suites check what a connection does when it ends; the recovery suites turn it on.
///
/// # Panics
/// If [`url`] is not a valid AMQP URI.
pub fn options() -> ConnectionOptions {
    ConnectionOptions::from_uri(&url())
        .expect("AMQP_URL is a valid AMQP URI")
        .recovery(lepus::RecoveryOptions::disabled())
}

/// Connects to the test broker.
///
/// # Panics
/// If the broker cannot be reached or refuses the connection.
pub async fn connect() -> Connection {
    connect_with(options()).await
}

/// Connects with explicit options.
///
/// # Panics
/// If the broker cannot be reached or refuses the connection, or the connect takes over
/// [`HELPER_WAIT`].
pub async fn connect_with(options: ConnectionOptions) -> Connection {
    match within(HELPER_WAIT, "connecting to the test broker", Connection::connect_with(options)).await {
        Ok(conn) => conn,
        Err(e) => panic!("cannot connect to the test broker at {} (is it running?): {e}", crate::broker_addr()),
    }
}

/// Runs `rabbitmqctl` with `args` against the local node and returns its standard output.
///
/// This blocks the calling thread (~0.5 s per call): call it from `spawn_blocking` or a
/// multi-threaded runtime.
///
/// # Errors
/// The command's standard error (or why it could not run) when it fails.
pub fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let output = Command::new("rabbitmqctl").args(args).output().map_err(|e| format!("rabbitmqctl: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "rabbitmqctl {args:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        ))
    }
}

/// The broker's process id (`<rabbit@host.1.2.3>`) of the one connection whose client
/// properties carry `connection_name` (set with [`ConnectionOptions::connection_name`];
/// make it unique, e.g. with [`unique`]). `None` if no connection has it.
///
/// # Errors
/// When `rabbitmqctl` fails.
pub fn connection_pid(connection_name: &str) -> Result<Option<String>, String> {
    let listing = rabbitmqctl(&["list_connections", "-q", "--no-table-headers", "pid", "client_properties"])?;
    let quoted = format!("\"{connection_name}\"");
    Ok(listing
        .lines()
        .find(|line| line.contains(&quoted))
        .and_then(|line| line.split_whitespace().next())
        .map(str::to_owned))
}

/// How many channels the broker lists for the connection with process id `connection_pid`.
///
/// # Errors
/// When `rabbitmqctl` fails.
pub fn broker_channel_count(connection_pid: &str) -> Result<usize, String> {
    let listing = rabbitmqctl(&["list_channels", "-q", "--no-table-headers", "connection"])?;
    Ok(listing.lines().filter(|line| line.trim() == connection_pid).count())
}

/// `queue.declare` options that only check the queue and read its counts.
pub fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions { passive: true, ..Default::default() }
}

/// `queue.declare` options for a queue of this connection only: the broker deletes it when
/// the connection goes, so a failing test leaves nothing behind.
pub fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions { exclusive: true, ..Default::default() }
}

/// Declares an exclusive queue with a [`unique`] name and returns the name.
///
/// # Panics
/// If the broker refuses the declare, or it takes over [`HELPER_WAIT`].
pub async fn exclusive_queue(channel: &Channel, name: &str) -> String {
    let name = unique(name);
    let declare = channel.queue_declare(&name, exclusive(), FieldTable::new());
    within(HELPER_WAIT, "queue.declare", declare).await.expect("queue.declare").name
}

/// Ready messages in `queue`, from a passive declare.
///
/// # Panics
/// If the queue does not exist (which also closes the channel), or the declare takes over
/// [`HELPER_WAIT`].
pub async fn ready(channel: &Channel, queue: &str) -> u32 {
    let declare = channel.queue_declare(queue, passive(), FieldTable::new());
    within(HELPER_WAIT, "passive queue.declare", declare).await.expect("passive queue.declare").message_count
}

/// A field table of string values, e.g. message headers or binding arguments.
///
/// # Panics
/// If a key is longer than 255 bytes.
pub fn string_table(pairs: &[(&str, &str)]) -> FieldTable {
    let mut table = FieldTable::new();
    for (key, value) in pairs {
        table.insert(*key, *value).expect("a short key");
    }
    table
}

/// Asserts that `err` is the broker closing a channel with `code`.
///
/// # Panics
/// If it is not.
#[track_caller]
pub fn assert_channel_error(err: &Error, code: ReplyCode) {
    match err {
        Error::ChannelClosed(reason) => {
            assert_eq!(reason.reply_code, code, "{err}");
            assert_eq!(reason.initiator, Initiator::Server, "{err}");
        }
        other => panic!("expected a {code} channel error, got {other:?}"),
    }
}
