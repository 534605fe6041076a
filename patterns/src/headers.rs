//! Headers routing: a headers exchange routes on a message's application headers instead
//! of its routing key.
//!
//! A queue is bound with a table of header values and an [`XMatch`]: with
//! [`XMatch::All`] a message must carry every bound header with an equal value; with
//! [`XMatch::Any`], at least one. A bound header whose value is void
//! ([`lepus::FieldValue::Void`]) only asks for the header to be present. Headers whose name
//! starts with `x-` are left out of matching unless [`XMatch::AllWithX`] or
//! [`XMatch::AnyWithX`] says otherwise.
//!
//! ```no_run
//! use lepus::Connection;
//! use lepus_patterns::headers::{HeadersExchange, XMatch, header_table};
//!
//! # async fn demo() -> Result<(), lepus::Error> {
//! let conn = Connection::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
//! let reports = HeadersExchange::declare(&conn, "reports").await?;
//! // PDF reports of any kind.
//! let pdf = reports.subscribe("pdf-reports", XMatch::All, header_table([("format", "pdf")])?).await?;
//! let headers = header_table([("format", "pdf"), ("type", "report")])?;
//! assert!(reports.publish(headers, &b"%PDF-1.7"[..]).await?.is_ack());
//! let mut consumer = pdf.consume(1).await?;
//! # Ok(()) }
//! ```

use bytes::Bytes;
use lepus::{
    BasicProperties, Confirmation, Connection, Error, ExchangeKind, FieldTable, FieldValue, PublishOptions, ShortStr,
};

use crate::pubsub::{ExchangePublisher, Subscription, declare_exchange, delete_exchange};
use crate::work_queue::on_throwaway_channel;

/// How a binding's headers must match a message's (`x-match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XMatch {
    /// Every bound header, equal (`all`, RabbitMQ's default).
    All,
    /// At least one bound header, equal (`any`).
    Any,
    /// Like `All`, and `x-` headers take part too (`all-with-x`).
    AllWithX,
    /// Like `Any`, and `x-` headers take part too (`any-with-x`).
    AnyWithX,
}

impl XMatch {
    /// The value on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            XMatch::All => "all",
            XMatch::Any => "any",
            XMatch::AllWithX => "all-with-x",
            XMatch::AnyWithX => "any-with-x",
        }
    }
}

/// A header table from `(name, value)` pairs, in order (a repeated name keeps its last
/// value); fails only for a name over 255 bytes.
///
/// ```
/// use lepus::FieldValue;
/// use lepus_patterns::headers::header_table;
///
/// let t = header_table([("format", FieldValue::from("pdf")), ("pages", FieldValue::from(12i32))])?;
/// assert_eq!(t.get("pages"), Some(&FieldValue::I32(12)));
/// # Ok::<(), lepus::Error>(())
/// ```
pub fn header_table<K, V, I>(pairs: I) -> Result<FieldTable, Error>
where
    K: AsRef<str>,
    V: Into<FieldValue>,
    I: IntoIterator<Item = (K, V)>,
{
    let mut table = FieldTable::new();
    for (key, value) in pairs {
        table.insert(key.as_ref(), value)?;
    }
    Ok(table)
}

/// The arguments of a headers binding: `x-match` and then the headers to match.
pub fn binding_arguments(x_match: XMatch, headers: &FieldTable) -> FieldTable {
    let mut arguments = FieldTable::new();
    if let Ok(key) = ShortStr::from_static("x-match") {
        arguments.push(key, x_match.as_str().into());
    }
    for (key, value) in headers.iter().filter(|(k, _)| k.as_bytes() != b"x-match") {
        arguments.push(key.clone(), value.clone());
    }
    arguments
}

/// A durable headers exchange.
#[derive(Debug, Clone)]
pub struct HeadersExchange {
    publisher: ExchangePublisher,
}

impl HeadersExchange {
    /// Declares the durable headers exchange `name` (idempotent; a 406 if an exchange of
    /// that name exists with another type).
    pub async fn declare(conn: &Connection, name: &str) -> Result<HeadersExchange, Error> {
        declare_exchange(conn, name, ExchangeKind::Headers).await?;
        Ok(HeadersExchange { publisher: ExchangePublisher::new(conn, name) })
    }

    /// The exchange's name.
    pub fn name(&self) -> &str {
        &self.publisher.name
    }

    /// Publishes a persistent message with these headers and waits for the broker's verdict
    /// (a message no binding matches is acked and dropped).
    pub async fn publish(&self, headers: FieldTable, body: impl Into<Bytes>) -> Result<Confirmation, Error> {
        let properties = BasicProperties { headers: Some(headers), ..Default::default() };
        self.publisher.publish("", body.into(), PublishOptions { mandatory: false, properties }).await
    }

    /// Publishes with full properties (the headers in `options.properties.headers`) and
    /// options: with `mandatory`, a message no binding matches comes back as
    /// [`Confirmation::Returned`].
    pub async fn publish_with(&self, body: impl Into<Bytes>, options: PublishOptions) -> Result<Confirmation, Error> {
        self.publisher.publish("", body.into(), options).await
    }

    /// Declares the durable queue `queue` and binds it to match `headers` as `x_match` says.
    pub async fn subscribe(&self, queue: &str, x_match: XMatch, headers: FieldTable) -> Result<Subscription, Error> {
        self.publisher.subscribe(queue, vec![(String::new(), binding_arguments(x_match, &headers))]).await
    }

    /// Adds another binding to an existing queue (it then receives what either matches).
    pub async fn bind(&self, queue: &str, x_match: XMatch, headers: &FieldTable) -> Result<(), Error> {
        let (queue, exchange, arguments) =
            (queue.to_owned(), self.name().to_owned(), binding_arguments(x_match, headers));
        on_throwaway_channel(self.publisher.connection(), |channel| async move {
            channel.queue_bind(&queue, &exchange, "", arguments).await
        })
        .await
    }

    /// Deletes the exchange (its queues stay, unbound).
    pub async fn delete(&self) -> Result<(), Error> {
        delete_exchange(self.publisher.connection(), self.name()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_arguments_put_x_match_first_and_only_once() {
        let headers = header_table([("x-match", "any"), ("format", "pdf")]).unwrap();
        let args = binding_arguments(XMatch::All, &headers);
        let keys: Vec<String> = args.iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(keys, ["x-match", "format"]);
        assert_eq!(args.get("x-match").and_then(FieldValue::as_str), Some("all"));
    }

    #[test]
    fn header_table_refuses_long_names() {
        assert!(header_table([("k".repeat(256), 1i32)]).is_err());
        let t = header_table([("a", 1i32), ("a", 2i32)]).unwrap();
        assert_eq!((t.len(), t.get("a")), (1, Some(&FieldValue::I32(2))));
    }
}
