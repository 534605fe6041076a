//! Publish/subscribe with a fanout exchange: every subscribed service receives every event,
//! and a service that was down receives what it missed.
//!
//! Each service subscribes with its name and gets a durable queue of its own,
//! `<exchange>.<service>`, bound to the exchange. The queue outlives the service's
//! consumers, so events published while the service is down wait in it. Several instances
//! of one service share its queue (and so its events, as a work queue); different services
//! each get a copy.
//!
//! [`Subscription`] is what [`FanoutExchange::subscribe`] (and the topic and headers
//! exchanges' `subscribe`) return: a bound queue to consume with a [`Worker`] or a plain
//! [`Consumer`].

use std::{fmt, future::Future, sync::Arc};

use bytes::Bytes;
use lepus::{
    Confirmation, Connection, ConsumeOptions, Consumer, Error, ExchangeDeclareOptions, ExchangeKind, PublishOptions,
    QueueDeclareOptions, QueueDeclared, QueueDeleteOptions,
};

use crate::work_queue::{IntoOutcome, Job, PublishChannel, Worker, WorkerOptions, on_throwaway_channel, persistent};

/// Declares a durable exchange of `kind` on a throwaway channel (a 406 for an existing
/// exchange of another kind closes only that channel).
pub(crate) async fn declare_exchange(conn: &Connection, name: &str, kind: ExchangeKind) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::InvalidOperation("the default exchange cannot be declared: give the exchange a name"));
    }
    let options = ExchangeDeclareOptions { durable: true, ..Default::default() };
    let name = name.to_owned();
    on_throwaway_channel(conn, |channel| async move {
        channel.exchange_declare(&name, kind, options, Default::default()).await
    })
    .await
}

/// Deletes an exchange on a throwaway channel.
pub(crate) async fn delete_exchange(conn: &Connection, name: &str) -> Result<(), Error> {
    let name = name.to_owned();
    on_throwaway_channel(conn, |channel| async move { channel.exchange_delete(&name, false).await }).await
}

/// A publisher of events on a durable exchange, with confirms.
#[derive(Clone)]
pub(crate) struct ExchangePublisher {
    pub(crate) name: String,
    pub(crate) channel: Arc<PublishChannel>,
}

impl fmt::Debug for ExchangePublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangePublisher").field("name", &self.name).finish_non_exhaustive()
    }
}

impl ExchangePublisher {
    pub(crate) fn new(conn: &Connection, name: &str) -> Self {
        ExchangePublisher { name: name.to_owned(), channel: Arc::new(PublishChannel::new(conn, true)) }
    }

    pub(crate) fn connection(&self) -> &Connection {
        self.channel.connection()
    }

    /// Publishes persistently (unless the properties say otherwise) and waits for the
    /// broker's verdict.
    pub(crate) async fn publish(
        &self,
        routing_key: &str,
        body: Bytes,
        options: PublishOptions,
    ) -> Result<Confirmation, Error> {
        let options = PublishOptions { properties: persistent(options.properties), ..options };
        self.channel.publish(&self.name, routing_key, body, options).await?.await
    }

    /// Declares the durable queue `queue` and binds it with each `(routing_key, arguments)`.
    pub(crate) async fn subscribe(
        &self,
        queue: &str,
        bindings: Vec<(String, lepus::FieldTable)>,
    ) -> Result<Subscription, Error> {
        if queue.is_empty() {
            return Err(Error::InvalidOperation("a subscription's queue needs a name (it outlives its consumers)"));
        }
        let exchange = self.name.clone();
        let name = queue.to_owned();
        on_throwaway_channel(self.connection(), |channel| async move {
            let durable = QueueDeclareOptions { durable: true, ..Default::default() };
            channel.queue_declare(&name, durable, Default::default()).await?;
            for (key, arguments) in bindings {
                channel.queue_bind(&name, &exchange, &key, arguments).await?;
            }
            Ok(())
        })
        .await?;
        Ok(Subscription { conn: self.connection().clone(), queue: queue.to_owned(), exchange: self.name.clone() })
    }
}

/// A durable fanout exchange to publish events to, and to subscribe services to.
///
/// ```no_run
/// use lepus::Connection;
/// use lepus_patterns::pubsub::FanoutExchange;
/// use lepus_patterns::work_queue::WorkerOptions;
///
/// # async fn demo() -> Result<(), lepus::Error> {
/// let conn = Connection::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
/// let events = FanoutExchange::declare(&conn, "order.events").await?;
///
/// // The email service: its queue `order.events.email-service` gets every event.
/// let email = events.subscribe("email-service").await?;
/// let worker = email
///     .worker(WorkerOptions::prefetch(10), |job| async move {
///         println!("email: {}", job.body_str().unwrap_or("?"));
///     })
///     .await?;
///
/// assert!(events.publish(&br#"{"event":"order.placed"}"#[..]).await?.is_ack());
/// worker.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FanoutExchange {
    publisher: ExchangePublisher,
}

impl FanoutExchange {
    /// Declares the durable fanout exchange `name` (idempotent; a 406 if an exchange of
    /// that name exists with another type).
    pub async fn declare(conn: &Connection, name: &str) -> Result<FanoutExchange, Error> {
        declare_exchange(conn, name, ExchangeKind::Fanout).await?;
        Ok(FanoutExchange { publisher: ExchangePublisher::new(conn, name) })
    }

    /// The exchange's name.
    pub fn name(&self) -> &str {
        &self.publisher.name
    }

    /// The queue a service subscribes with: `<exchange>.<service>`.
    pub fn queue_for(&self, service: &str) -> String {
        format!("{}.{service}", self.publisher.name)
    }

    /// Publishes a persistent event to every subscribed service and waits for the broker's
    /// verdict ([`Confirmation::Ack`]; an event with no subscriber at all is acked and
    /// dropped by the broker).
    pub async fn publish(&self, body: impl Into<Bytes>) -> Result<Confirmation, Error> {
        self.publisher.publish("", body.into(), PublishOptions::default()).await
    }

    /// Publishes with properties (persistent unless `delivery_mode` is set) and options:
    /// with `mandatory`, an event no service is subscribed to comes back as
    /// [`Confirmation::Returned`].
    pub async fn publish_with(&self, body: impl Into<Bytes>, options: PublishOptions) -> Result<Confirmation, Error> {
        self.publisher.publish("", body.into(), options).await
    }

    /// Subscribes `service`: declares its durable queue `<exchange>.<service>` and binds it.
    /// From now on the queue receives every event, whether or not a consumer is running.
    pub async fn subscribe(&self, service: &str) -> Result<Subscription, Error> {
        if service.is_empty() {
            return Err(Error::InvalidOperation("a subscribing service needs a name"));
        }
        self.publisher.subscribe(&self.queue_for(service), vec![(String::new(), Default::default())]).await
    }

    /// Deletes the exchange (the services' queues stay, unbound).
    pub async fn delete(&self) -> Result<(), Error> {
        delete_exchange(self.publisher.connection(), &self.publisher.name).await
    }
}

/// A durable queue bound to an exchange: consume it with [`Subscription::worker`] or
/// [`Subscription::consume`]. Dropping it changes nothing on the broker; the queue keeps
/// collecting events until [`Subscription::unsubscribe`].
#[derive(Clone)]
pub struct Subscription {
    conn: Connection,
    queue: String,
    exchange: String,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("queue", &self.queue)
            .field("exchange", &self.exchange)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The subscription's queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The exchange it is bound to.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// Starts a [`Worker`] on the queue: each event goes to the handler, which acks,
    /// requeues or dead-letters it (see [`crate::work_queue`]).
    pub async fn worker<F, Fut, O>(&self, options: WorkerOptions, handler: F) -> Result<Worker, Error>
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = O> + Send + 'static,
        O: IntoOutcome + Send + 'static,
    {
        Worker::start(&self.conn, &self.queue, options, handler).await
    }

    /// A plain [`Consumer`] on the queue, on a channel of its own with this prefetch
    /// (0: unlimited); acknowledge each delivery yourself.
    pub async fn consume(&self, prefetch: u16) -> Result<Consumer, Error> {
        let channel = self.conn.open_channel().await?;
        channel.basic_qos(prefetch, false).await?;
        channel.basic_consume(&self.queue, ConsumeOptions::default()).await
    }

    /// Messages waiting in the queue and its consumers, by a passive declare on a throwaway
    /// channel (a deleted queue is an error, and closes only that channel).
    pub async fn counts(&self) -> Result<QueueDeclared, Error> {
        let queue = self.queue.clone();
        on_throwaway_channel(&self.conn, |channel| async move {
            let passive = QueueDeclareOptions { passive: true, ..Default::default() };
            channel.queue_declare(&queue, passive, Default::default()).await
        })
        .await
    }

    /// Deletes the queue: the service stops receiving events, and what waited in it is
    /// gone. Returns how many messages it held.
    pub async fn unsubscribe(self) -> Result<u32, Error> {
        let queue = self.queue.clone();
        on_throwaway_channel(&self.conn, |channel| async move {
            channel.queue_delete(&queue, QueueDeleteOptions::default()).await
        })
        .await
    }
}
