//! TLS: connect with `amqps://`, trusting a private CA and presenting a client certificate
//! (mutual TLS, and RabbitMQ's `EXTERNAL` login if the URL asks for it), then publish one
//! confirmed message to a queue of our own, read it back and close.
//!
//! `cargo run -p lepus --example tls`, set up by environment variables:
//!
//! - `AMQP_URL`: an `amqps://` URL; default `amqps://localhost:5671/%2f`.
//!   Add `?auth_mechanism=external` to log in as the client certificate's common name.
//! - `TLS_CA_FILE`: PEM file of the CA(s) to trust *instead of* the system's roots.
//! - `TLS_CERT_FILE` and `TLS_KEY_FILE`: PEM client certificate chain and its private key.
//! - `TLS_SERVER_NAME`: the name to check the server's certificate against (and send as
//!   SNI), if not the URL's host.
//!
//! Against the TLS node of the project's broker notes (listener on 5674 that requires a
//! client certificate from its CA, `EXTERNAL` enabled, certificates in `D/tls/`):
//!
//! ```sh
//! AMQP_URL='amqps://localhost:5674/%2f?auth_mechanism=external' \
//!   TLS_CA_FILE=D/tls/ca.pem TLS_CERT_FILE=D/tls/client.pem TLS_KEY_FILE=D/tls/client.key \
//!   cargo run -p lepus --example tls
//! ```
//!
//! Without `?auth_mechanism=external` it logs in with the URL's user and password
//! (`guest:guest` by default, which RabbitMQ accepts from loopback only).

use std::time::Duration;

use lepus::options::ConnectionOptions;
use lepus::{Connection, ConsumeOptions, PublishOptions, QueueDeclareOptions, Roots, TlsOptions};

type BoxError = Box<dyn std::error::Error>;

/// An environment variable, if set and not empty.
fn setting(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// A file named by the environment variable `name`, if it is set.
fn file(name: &str) -> Result<Option<Vec<u8>>, BoxError> {
    match setting(name) {
        None => Ok(None),
        Some(path) => std::fs::read(&path).map(Some).map_err(|e| format!("{name}={path}: {e}").into()),
    }
}

/// TLS settings from the environment.
fn tls_options() -> Result<TlsOptions, BoxError> {
    let mut tls = TlsOptions::new();
    if let Some(ca) = file("TLS_CA_FILE")? {
        // A private CA only: a public root has no business vouching for this broker.
        tls = tls.roots(Roots::None).add_ca_pem(&ca)?;
    }
    match (file("TLS_CERT_FILE")?, file("TLS_KEY_FILE")?) {
        (Some(cert), Some(key)) => tls = tls.client_auth_pem(&cert, &key)?,
        (None, None) => {}
        _ => return Err("TLS_CERT_FILE and TLS_KEY_FILE go together".into()),
    }
    if let Some(name) = setting("TLS_SERVER_NAME") {
        tls = tls.server_name(name);
    }
    Ok(tls)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = setting("AMQP_URL").unwrap_or_else(|| "amqps://localhost:5671/%2f".to_owned());
    let options = ConnectionOptions::from_uri(&url)?;
    if options.get_tls().is_none() {
        return Err(format!("AMQP_URL must be an amqps:// URL, not {options}").into());
    }
    let tls = tls_options()?;
    let client_cert = if tls.has_client_auth() { "with a client certificate" } else { "without a client certificate" };
    let options = options.tls(tls).connection_timeout(Duration::from_secs(10));
    println!("connecting to {options} {client_cert} ({:?})", options.get_auth_mechanism());
    let conn = Connection::connect_with(options).await?;
    println!("connected over TLS; frame_max {}", conn.tuning().frame_max);

    let channel = conn.open_channel().await?;
    let exclusive = QueueDeclareOptions { exclusive: true, ..Default::default() };
    let queue = channel.queue_declare("", exclusive, Default::default()).await?.name;
    channel.confirm_select().await?;
    let confirm = channel.basic_publish("", &queue, &b"hello over TLS"[..], PublishOptions::default()).await?;
    println!("published to {queue}: {:?}", confirm.await?);

    let mut consumer = channel.basic_consume(&queue, ConsumeOptions::default()).await?;
    let delivery = match tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
        Ok(Some(delivery)) => delivery?,
        Ok(None) => return Err("the consumer ended early".into()),
        Err(_) => return Err("no message within 5 s".into()),
    };
    println!("received {:?}", String::from_utf8_lossy(&delivery.body));
    delivery.ack().await?;

    conn.close().await?;
    println!("closed");
    Ok(())
}
