//! Connecting: the first reachable broker of the `--uri` list, then every connection of the
//! run to that one broker, each named after its role so `rabbitmqctl list_connections`
//! and the management UI tell them apart.

use std::{fmt, time::Duration};

use lepus::{Connection, Error};

use crate::args::Broker;

/// How long closing a connection (or a channel) may take at the end of a run.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// No broker of the list accepted a connection: each one's error, in order.
#[derive(Debug)]
pub(crate) struct Unreachable(pub(crate) Vec<(String, Error)>);

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cannot connect to any broker")?;
        for (i, (uri, error)) in self.0.iter().enumerate() {
            let sep = if i == 0 { ": " } else { "; " };
            write!(f, "{sep}{uri}: {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Unreachable {}

/// Connects to the first broker that accepts, trying them in order; each attempt is
/// bounded by its URI's connection timeout.
pub(crate) async fn first_reachable(brokers: &[Broker], name: &str) -> Result<(Broker, Connection), Unreachable> {
    let mut failures = Vec::new();
    for broker in brokers {
        match connect(broker, name.to_owned(), None).await {
            Ok(conn) => return Ok((broker.clone(), conn)),
            Err(error) => failures.push((broker.to_string(), error)),
        }
    }
    Err(Unreachable(failures))
}

/// Connects to `broker` with the connection name `name`, and a publish window if given.
pub(crate) async fn connect(broker: &Broker, name: String, publish_window: Option<usize>) -> Result<Connection, Error> {
    let mut options = broker.options.clone().connection_name(name);
    if let Some(window) = publish_window {
        options = options.publish_window(window);
    }
    Connection::connect_with(options).await
}
