//! `Channel`: declare and bind, consume, get, acknowledge, transactions (publishing is in
//! `publish.rs`).

use std::{sync::Arc, time::Duration};

use lepus_codec::{
    Content, FieldTable, Method, ReplyCode,
    method::{basic, channel as chan, confirm, exchange, queue, tx},
};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::{
    ConsumeOptions, Consumer, Delivery, Error, ExchangeDeclareOptions, ExchangeKind, QueueDeclareOptions,
    QueueDeclared, QueueDeleteOptions, Returns,
    channel_link::ChannelLink,
    channel_shared::ChannelShared,
    command::{Command, CommandSender},
    connection::short,
    deadline::within,
    delivery::Acker,
    delivery_queue::DeliveryQueue,
    proto::Reply,
};

/// An AMQP channel. Cheap to clone; clones share the channel. It closes when
/// [`Channel::close`] is called, when the broker closes it (e.g. 404), or when the last
/// clone, consumer and delivery of it are dropped.
#[derive(Clone)]
pub struct Channel {
    pub(crate) link: Arc<ChannelLink>,
    /// The deadline of this handle's calls.
    pub(crate) timeout: Option<Duration>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("id", &self.id()).finish_non_exhaustive()
    }
}

pub(crate) fn unexpected(reply: &Reply) -> Error {
    let name = match reply {
        Reply::Method(m) => m.name(),
        Reply::Get(_) => "basic.get-ok",
        Reply::Sent => "nothing",
    };
    Error::Protocol { reply_code: ReplyCode::COMMAND_INVALID, text: format!("unexpected reply {name}") }
}

impl Channel {
    pub(crate) fn new(shared: Arc<ChannelShared>, commands: CommandSender, timeout: Option<Duration>) -> Self {
        Channel { link: Arc::new(ChannelLink { shared, commands }), timeout }
    }

    pub(crate) fn shared(&self) -> &ChannelShared {
        &self.link.shared
    }

    /// This channel handle with another deadline for its calls (`None`: none); other
    /// handles of the channel keep theirs. See [`crate::ConnectionOptions::call_timeout`].
    ///
    /// ```no_run
    /// # async fn demo(channel: lepus::Channel) -> Result<(), lepus::Error> {
    /// use std::time::Duration;
    /// let quick = channel.with_timeout(Some(Duration::from_secs(2)));
    /// quick.queue_declare("jobs", Default::default(), Default::default()).await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_timeout(&self, timeout: Option<Duration>) -> Channel {
        Channel { link: self.link.clone(), timeout }
    }

    /// The channel number.
    pub fn id(&self) -> u16 {
        self.shared().key().id
    }

    /// True until the channel closes.
    pub fn is_open(&self) -> bool {
        self.shared().check_open().is_ok()
    }

    /// Why the channel closed, once it has.
    pub fn close_reason(&self) -> Option<Error> {
        self.shared().check_open().err()
    }

    /// A synchronous call under this handle's deadline; `what` names it in a timeout.
    async fn call(&self, what: &'static str, method: Method) -> Result<Reply, Error> {
        within(self.timeout, what, self.link.call(method)).await
    }

    async fn call_ok(&self, what: &'static str, method: Method) -> Result<(), Error> {
        self.call(what, method).await.map(|_| ())
    }

    /// Declares an exchange.
    pub async fn exchange_declare(
        &self,
        name: &str,
        kind: ExchangeKind,
        options: ExchangeDeclareOptions,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        let m = exchange::Declare {
            ticket: 0,
            exchange: short(name)?,
            kind: short(kind.as_str())?,
            passive: options.passive,
            durable: options.durable,
            auto_delete: options.auto_delete,
            internal: options.internal,
            nowait: options.nowait,
            arguments,
        };
        self.call_ok("exchange_declare", m.into()).await
    }

    /// Deletes an exchange (`if_unused`: only when it has no bindings).
    pub async fn exchange_delete(&self, name: &str, if_unused: bool) -> Result<(), Error> {
        self.call_ok(
            "exchange_delete",
            exchange::Delete { exchange: short(name)?, if_unused, ..Default::default() }.into(),
        )
        .await
    }

    /// Binds exchange `destination` to `source` with a routing key.
    pub async fn exchange_bind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        let m = exchange::Bind {
            destination: short(destination)?,
            source: short(source)?,
            routing_key: short(routing_key)?,
            arguments,
            ..Default::default()
        };
        self.call_ok("exchange_bind", m.into()).await
    }

    /// Removes an exchange-to-exchange binding.
    pub async fn exchange_unbind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        let m = exchange::Unbind {
            destination: short(destination)?,
            source: short(source)?,
            routing_key: short(routing_key)?,
            arguments,
            ..Default::default()
        };
        self.call_ok("exchange_unbind", m.into()).await
    }

    /// Declares a queue; an empty name asks the broker to name it.
    pub async fn queue_declare(
        &self,
        name: &str,
        options: QueueDeclareOptions,
        arguments: FieldTable,
    ) -> Result<QueueDeclared, Error> {
        let m = queue::Declare {
            ticket: 0,
            queue: short(name)?,
            passive: options.passive,
            durable: options.durable,
            exclusive: options.exclusive,
            auto_delete: options.auto_delete,
            nowait: options.nowait,
            arguments,
        };
        match self.call("queue_declare", m.into()).await? {
            Reply::Method(Method::QueueDeclareOk(ok)) => Ok(QueueDeclared {
                name: ok.queue.to_string(),
                message_count: ok.message_count,
                consumer_count: ok.consumer_count,
            }),
            Reply::Sent => Ok(QueueDeclared { name: name.to_owned(), message_count: 0, consumer_count: 0 }),
            other => Err(unexpected(&other)),
        }
    }

    /// Binds a queue to an exchange.
    pub async fn queue_bind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        let m = queue::Bind {
            queue: short(queue)?,
            exchange: short(exchange)?,
            routing_key: short(routing_key)?,
            arguments,
            ..Default::default()
        };
        self.call_ok("queue_bind", m.into()).await
    }

    /// Removes a queue binding.
    pub async fn queue_unbind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        let m = queue::Unbind {
            queue: short(queue)?,
            exchange: short(exchange)?,
            routing_key: short(routing_key)?,
            arguments,
            ..Default::default()
        };
        self.call_ok("queue_unbind", m.into()).await
    }

    /// Removes every ready message; returns how many.
    pub async fn queue_purge(&self, queue: &str) -> Result<u32, Error> {
        match self.call("queue_purge", queue::Purge { queue: short(queue)?, ..Default::default() }.into()).await? {
            Reply::Method(Method::QueuePurgeOk(ok)) => Ok(ok.message_count),
            other => Err(unexpected(&other)),
        }
    }

    /// Deletes a queue; returns how many messages went with it.
    pub async fn queue_delete(&self, queue: &str, options: QueueDeleteOptions) -> Result<u32, Error> {
        let m = queue::Delete {
            queue: short(queue)?,
            if_unused: options.if_unused,
            if_empty: options.if_empty,
            ..Default::default()
        };
        match self.call("queue_delete", m.into()).await? {
            Reply::Method(Method::QueueDeleteOk(ok)) => Ok(ok.message_count),
            other => Err(unexpected(&other)),
        }
    }

    /// Sets the prefetch: per consumer (`global == false`, RabbitMQ's meaning) or per channel.
    pub async fn basic_qos(&self, prefetch_count: u16, global: bool) -> Result<(), Error> {
        self.call_ok("basic_qos", basic::Qos { prefetch_size: 0, prefetch_count, global }.into()).await?;
        self.shared().set_prefetch(prefetch_count);
        Ok(())
    }

    /// Starts a consumer on a queue. Without a consumer tag, one unique on this connection
    /// is chosen here (`lepus.<n>`), so that the consumer has its tag before the broker
    /// answers.
    pub async fn basic_consume(&self, queue: &str, options: ConsumeOptions) -> Result<Consumer, Error> {
        let consuming = async {
            let shared = self.shared();
            shared.conn.wait_up().await?;
            shared.check_open()?;
            let tag = if options.consumer_tag.is_empty() {
                short(&format!("lepus.{}", shared.conn.next_consumer_number()))?
            } else {
                short(&options.consumer_tag)?
            };
            let consume = basic::Consume {
                ticket: 0,
                queue: short(queue)?,
                consumer_tag: tag.clone(),
                no_local: false,
                no_ack: options.no_ack,
                exclusive: options.exclusive,
                nowait: false,
                arguments: options.arguments,
            };
            let stream = consume.arguments.get("x-stream-offset").is_some();
            let queue = DeliveryQueue::new(shared.conn.clone(), options.no_ack, tag.clone(), shared.id, stream);
            // Made before the consume is sent: if this call is abandoned, dropping it cancels
            // the consumer and returns what it was sent.
            let consumer = Consumer::new(tag, queue.clone(), self.link.clone());
            let (reply, reply_rx) = oneshot::channel();
            let cmd = Command::Consume { channel: self.link.shared.clone(), consume, reply, queue: queue.clone() };
            self.link.commands.send(cmd)?;
            let result = match reply_rx.await.map_err(|_| shared.close_reason_or_closed()).and_then(|r| r) {
                Ok(Reply::Method(Method::BasicConsumeOk(_))) => return Ok(consumer),
                Ok(other) => Err(unexpected(&other)),
                Err(e) => Err(e),
            };
            // Not consuming: nothing to cancel when the consumer is dropped.
            let _ = queue.end(result.as_ref().err().cloned());
            result
        };
        within(self.timeout, "basic_consume", consuming.instrument(self.link.span("basic.consume"))).await
    }

    /// Fetches one message, or `None` if the queue is empty. The message count is what
    /// remained in the queue.
    pub async fn basic_get(&self, queue: &str, no_ack: bool) -> Result<Option<(Delivery, u32)>, Error> {
        let get = basic::Get { queue: short(queue)?, no_ack, ..Default::default() };
        match self.call("basic_get", get.into()).await? {
            Reply::Get(content) => {
                let Content { method: Method::BasicGetOk(ok), header, body } = *content else {
                    return Err(Error::Protocol { reply_code: ReplyCode::COMMAND_INVALID, text: "bad get-ok".into() });
                };
                let key = self.shared().key();
                let delivery = crate::proto::Delivery {
                    channel: key,
                    consumer_tag: lepus_codec::ShortStr::new(),
                    delivery_tag: ok.delivery_tag,
                    redelivered: ok.redelivered,
                    exchange: ok.exchange,
                    routing_key: ok.routing_key,
                    properties: header.properties,
                    body,
                };
                let acker = Acker { link: self.link.clone(), key, no_ack };
                if let Some(metrics) = self.shared().conn.metrics() {
                    metrics.delivered(delivery.body.len());
                }
                Ok(Some((Delivery::new(delivery, acker), ok.message_count)))
            }
            Reply::Method(Method::BasicGetEmpty(_)) => Ok(None),
            other => Err(unexpected(&other)),
        }
    }

    /// Acknowledges by tag (for deliveries already dropped; prefer [`Delivery::ack`], which
    /// refuses to settle a delivery twice). With `multiple`, later [`Delivery::ack`]s of the
    /// covered deliveries return [`Error::AlreadySettled`] instead of reaching the broker.
    // Async so that a settlement may wait in the future (e.g. across recovery) without an
    // API change.
    #[allow(clippy::unused_async)]
    pub async fn basic_ack(&self, delivery_tag: u64, multiple: bool) -> Result<(), Error> {
        if multiple {
            self.shared().covered.record(delivery_tag);
        }
        self.settle(basic::Ack { delivery_tag, multiple }.into())
    }

    /// Negatively acknowledges by tag (see [`Channel::basic_ack`] on `multiple`).
    // Async so that a settlement may wait in the future (e.g. across recovery) without an
    // API change.
    #[allow(clippy::unused_async)]
    pub async fn basic_nack(&self, delivery_tag: u64, multiple: bool, requeue: bool) -> Result<(), Error> {
        if multiple {
            self.shared().covered.record(delivery_tag);
        }
        self.settle(basic::Nack { delivery_tag, multiple, requeue }.into())
    }

    /// Rejects by tag.
    // Async so that a settlement may wait in the future (e.g. across recovery) without an
    // API change.
    #[allow(clippy::unused_async)]
    pub async fn basic_reject(&self, delivery_tag: u64, requeue: bool) -> Result<(), Error> {
        self.settle(basic::Reject { delivery_tag, requeue }.into())
    }

    fn settle(&self, method: Method) -> Result<(), Error> {
        let shared = self.shared();
        shared.check_open()?;
        let key = shared.key();
        if key.epoch == 0 {
            // The connection was lost: every tag of the lost channel is void.
            let tag = match &method {
                Method::BasicAck(m) => m.delivery_tag,
                Method::BasicNack(m) => m.delivery_tag,
                Method::BasicReject(m) => m.delivery_tag,
                _ => 0,
            };
            return Err(Error::StaleDeliveryTag(tag));
        }
        self.link.settle(key, method)
    }

    /// Redelivers every unacknowledged message of the channel.
    pub async fn basic_recover(&self, requeue: bool) -> Result<(), Error> {
        self.call_ok("basic_recover", basic::Recover { requeue }.into()).await
    }

    /// Puts the channel in confirm mode: every publish resolves to the broker's verdict.
    pub async fn confirm_select(&self) -> Result<(), Error> {
        let selecting = async {
            let shared = self.shared();
            shared.conn.wait_up().await?;
            shared.check_open()?;
            let (tx, rx) = oneshot::channel();
            let method = confirm::Select::default().into();
            self.link.commands.send(Command::Call { channel: self.link.shared.clone(), method, reply: tx })?;
            // Publishes queued after the select are in confirm mode on the wire too.
            shared.set_confirm_mode();
            rx.await.map_err(|_| shared.close_reason_or_closed())?.map(|_| ())
        };
        within(self.timeout, "confirm_select", selecting.instrument(self.link.span("confirm.select"))).await
    }

    /// Puts the channel in transactional mode.
    pub async fn tx_select(&self) -> Result<(), Error> {
        self.call_ok("tx_select", tx::Select {}.into()).await
    }

    /// Commits the current transaction.
    pub async fn tx_commit(&self) -> Result<(), Error> {
        self.call_ok("tx_commit", tx::Commit {}.into()).await
    }

    /// Rolls the current transaction back.
    pub async fn tx_rollback(&self) -> Result<(), Error> {
        self.call_ok("tx_rollback", tx::Rollback {}.into()).await
    }

    /// Returned messages (mandatory, unroutable) when the channel is not in confirm mode.
    /// The stream can be taken once; later calls return `None`.
    pub fn returns(&self) -> Option<Returns> {
        self.shared().take_returns().map(|rx| Returns { rx })
    }

    /// Whether the broker lets this channel publish now (`channel.flow`); publishes wait
    /// while it does not.
    pub fn flow_active(&self) -> bool {
        self.shared().flow_active()
    }

    /// Closes the channel and waits for the broker's close-ok.
    pub async fn close(&self) -> Result<(), Error> {
        let shared = self.shared();
        let span = tracing::info_span!("lepus.channel.close", connection = shared.conn.name(), channel = self.id());
        match self.call("channel_close", chan::Close::default().into()).instrument(span).await {
            // A channel that had already closed: closing again is not an error.
            Ok(_) | Err(Error::ChannelClosed(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits up to `timeout` for the channel to close; returns why it closed.
    pub async fn closed(&self, timeout: Duration) -> Option<Error> {
        let mut rx = self.shared().closed_rx();
        let wait = rx.wait_for(Option::is_some);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(e)) => e.clone(),
            _ => None,
        }
    }
}
