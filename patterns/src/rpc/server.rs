//! The answering side: [`RpcServer`] consumes request queues and runs a handler per
//! request.

use std::{fmt, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use lepus::{
    BasicProperties, Channel, Connection, ConsumeOptions, Consumer, Delivery, FieldTable, PublishOptions,
    QueueDeclareOptions,
};
use tokio::{
    sync::watch,
    task::{JoinHandle, JoinSet},
};

use super::{ERROR_HEADER, SETUP_TIMEOUT, STOP_TIMEOUT};

/// A request as the server's handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingRequest {
    /// The request's body.
    pub body: Bytes,
    /// Its properties (`correlation_id` and `reply_to` among them).
    pub properties: BasicProperties,
    /// The exchange it was published to.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// True if the broker delivered it before (a server stopped before acknowledging it).
    pub redelivered: bool,
}

#[cfg(feature = "trace-context")]
impl IncomingRequest {
    /// The caller's trace context from the request's `traceparent`/`tracestate` headers, if
    /// it has a valid one. Calls the handler makes on the request's behalf should carry a
    /// [`child`](lepus::trace_context::TraceContext::child) of it; the reply does
    /// already, unless the handler puts a `traceparent` in the response's headers itself.
    pub fn trace_context(&self) -> Option<lepus::trace_context::TraceContext> {
        lepus::trace_context::extract(&self.properties)
    }
}

/// What a handler answers: a body and properties (`correlation_id` is set by the server).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RpcResponse {
    /// The reply's body.
    pub body: Bytes,
    /// The reply's properties (content type, headers, ...).
    pub properties: BasicProperties,
}

impl RpcResponse {
    /// A reply with this body and no properties.
    pub fn new(body: impl Into<Bytes>) -> Self {
        RpcResponse { body: body.into(), properties: BasicProperties::default() }
    }

    /// Sets the reply's properties.
    #[must_use]
    pub fn with_properties(mut self, properties: BasicProperties) -> Self {
        self.properties = properties;
        self
    }
}

impl From<Bytes> for RpcResponse {
    fn from(body: Bytes) -> Self {
        RpcResponse::new(body)
    }
}

impl From<Vec<u8>> for RpcResponse {
    fn from(body: Vec<u8>) -> Self {
        RpcResponse::new(body)
    }
}

impl From<String> for RpcResponse {
    fn from(body: String) -> Self {
        RpcResponse::new(body)
    }
}

impl From<&'static str> for RpcResponse {
    fn from(body: &'static str) -> Self {
        RpcResponse::new(body)
    }
}

impl From<&'static [u8]> for RpcResponse {
    fn from(body: &'static [u8]) -> Self {
        RpcResponse::new(body)
    }
}

/// A handler's failure: its message goes back to the caller in the [`ERROR_HEADER`]
/// header, and the call fails with [`RpcError::Remote`](super::RpcError::Remote).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcHandlerError {
    message: String,
}

impl RpcHandlerError {
    /// A failure with this message.
    pub fn new(message: impl Into<String>) -> Self {
        RpcHandlerError { message: message.into() }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<String> for RpcHandlerError {
    fn from(message: String) -> Self {
        RpcHandlerError { message }
    }
}

impl From<&str> for RpcHandlerError {
    fn from(message: &str) -> Self {
        RpcHandlerError { message: message.to_owned() }
    }
}

impl fmt::Display for RpcHandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RpcHandlerError {}

/// How [`RpcServer::serve`] consumes its queue.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeOptions {
    /// Requests handled at once (the consumer's prefetch); at least 1 (default 32).
    pub prefetch: u16,
    /// Declare the queue before consuming it (default true); the declaration must match an
    /// existing queue's, or the broker refuses it (406).
    pub declare: bool,
    /// Flags for that declaration (default: none — a transient, shared queue).
    pub queue_options: QueueDeclareOptions,
    /// Arguments for that declaration.
    pub queue_arguments: FieldTable,
    /// How long a handler may take; after that the caller gets an error reply and the
    /// request is acknowledged (default 30 s).
    pub handler_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            prefetch: 32,
            declare: true,
            queue_options: QueueDeclareOptions::default(),
            queue_arguments: FieldTable::new(),
            handler_timeout: Duration::from_secs(30),
        }
    }
}

struct Served {
    queue: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), lepus::Error>>,
}

/// The RPC server: one consumer, on a channel of its own, per queue it serves.
///
/// Each request runs its handler in a task of its own (up to the prefetch at once); the
/// reply goes to the request's `reply_to` with its `correlation_id`, and the request is
/// acknowledged after the reply was written. A request without `reply_to` is handled and
/// acknowledged with no reply. A handler that fails, panics or overruns its timeout
/// answers with the [`ERROR_HEADER`] header.
///
/// Dropping the server stops its consumers at once (unacknowledged requests go back to
/// their queues); [`RpcServer::shutdown`] lets requests in progress finish first.
pub struct RpcServer {
    conn: Connection,
    served: Vec<Served>,
}

impl fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcServer").field("queues", &self.queues().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

impl RpcServer {
    /// A server on `conn`, serving nothing yet.
    pub fn new(conn: &Connection) -> Self {
        RpcServer { conn: conn.clone(), served: Vec::new() }
    }

    /// Starts answering requests on `queue` with `handler`; returns once the consumer runs.
    ///
    /// ```no_run
    /// use lepus_patterns::rpc::{RpcHandlerError, RpcResponse, RpcServer, ServeOptions};
    ///
    /// # async fn demo(conn: lepus::Connection) -> Result<(), lepus::Error> {
    /// let mut server = RpcServer::new(&conn);
    /// let options = ServeOptions { prefetch: 8, ..Default::default() };
    /// server
    ///     .serve("calculator.sqrt", options, |request| async move {
    ///         let text = String::from_utf8_lossy(&request.body).into_owned();
    ///         let x: f64 = text.trim().parse().map_err(|_| RpcHandlerError::new(format!("not a number: {text}")))?;
    ///         if x < 0.0 {
    ///             return Err("negative input".into());
    ///         }
    ///         Ok(RpcResponse::from(x.sqrt().to_string()))
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn serve<F, Fut>(&mut self, queue: &str, options: ServeOptions, handler: F) -> Result<(), lepus::Error>
    where
        F: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<RpcResponse, RpcHandlerError>> + Send + 'static,
    {
        let prefetch = options.prefetch.max(1);
        let setup = async {
            let channel = self.conn.open_channel().await?;
            channel.basic_qos(prefetch, false).await?;
            if options.declare {
                channel.queue_declare(queue, options.queue_options, options.queue_arguments.clone()).await?;
            }
            let consume = ConsumeOptions::default();
            let consumer = channel.basic_consume(queue, consume).await?;
            Ok::<_, lepus::Error>((channel, consumer))
        };
        let (channel, consumer) = tokio::time::timeout(SETUP_TIMEOUT, setup)
            .await
            .map_err(|_| lepus::Error::Timeout("starting an RPC server"))??;
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(serve_loop(channel, consumer, Arc::new(handler), options.handler_timeout, stop_rx));
        tracing::debug!(queue, prefetch, "RPC server started");
        self.served.push(Served { queue: queue.to_owned(), stop, task });
        Ok(())
    }

    /// The queues served.
    pub fn queues(&self) -> impl Iterator<Item = &str> {
        self.served.iter().map(|s| s.queue.as_str())
    }

    /// Stops every consumer, lets requests in progress finish (each within its handler
    /// timeout), then closes the channels. Returns the first error a consumer ended with
    /// (e.g. its queue was deleted).
    pub async fn shutdown(mut self) -> Result<(), lepus::Error> {
        let served = std::mem::take(&mut self.served);
        for s in &served {
            s.stop.send_replace(true);
        }
        let mut first_error = None;
        for s in served {
            match s.task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => tracing::warn!(queue = %s.queue, error = %e, "RPC server task failed"),
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        for s in &self.served {
            s.task.abort();
        }
    }
}

async fn serve_loop<F, Fut>(
    channel: Channel,
    mut consumer: Consumer,
    handler: Arc<F>,
    handler_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<(), lepus::Error>
where
    F: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<RpcResponse, RpcHandlerError>> + Send + 'static,
{
    let mut requests = JoinSet::new();
    let result = loop {
        tokio::select! {
            // A stop request, or the server dropped without one.
            _ = stop.changed() => break Ok(()),
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    requests.spawn(answer(channel.clone(), delivery, handler.clone(), handler_timeout));
                }
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            },
        }
    };
    if result.is_ok() {
        let _ = tokio::time::timeout(STOP_TIMEOUT, consumer.cancel()).await;
    }
    // Requests in progress finish (each bounded by the handler timeout); the rest are
    // aborted when the set drops, and go back to the queue with the channel.
    let drain = async { while requests.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(handler_timeout.saturating_add(STOP_TIMEOUT), drain).await;
    drop(requests);
    drop(consumer);
    let _ = tokio::time::timeout(STOP_TIMEOUT, channel.close()).await;
    result
}

/// Runs the handler for one request, replies, acknowledges.
async fn answer<F, Fut>(channel: Channel, delivery: Delivery, handler: Arc<F>, limit: Duration)
where
    F: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<RpcResponse, RpcHandlerError>> + Send + 'static,
{
    let request = IncomingRequest {
        body: delivery.body.clone(),
        properties: delivery.properties.clone(),
        exchange: delivery.exchange.to_string(),
        routing_key: delivery.routing_key.to_string(),
        redelivered: delivery.redelivered,
    };
    // A task of its own, so a panicking handler becomes an error reply.
    let outcome = crate::handler::run(Some(limit), move || handler(request))
        .await
        .unwrap_or_else(|failure| Err(RpcHandlerError::new(failure.to_string())));
    let reply_to = delivery.properties.reply_to.as_ref().filter(|r| !r.is_empty());
    if let Some(reply_to) = reply_to {
        let (body, mut properties) = match outcome {
            Ok(response) => (response.body, response.properties),
            Err(e) => {
                tracing::debug!(error = %e, "RPC handler failed");
                let mut headers = FieldTable::new();
                // A static key, well under 255 bytes.
                let _ = headers.insert(ERROR_HEADER, e.message);
                (Bytes::new(), BasicProperties { headers: Some(headers), ..BasicProperties::default() })
            }
        };
        properties.correlation_id.clone_from(&delivery.properties.correlation_id);
        #[cfg(feature = "trace-context")]
        trace_reply(&delivery.properties, &mut properties);
        let options = PublishOptions { mandatory: false, properties };
        let reply_to = reply_to.to_string();
        let publish = channel.basic_publish("", &reply_to, body, options);
        match tokio::time::timeout(limit, publish).await {
            // Not in confirm mode: the confirm resolves at once to NotRequested.
            Ok(Ok(_confirm)) => {}
            Ok(Err(e)) => {
                // The channel closed: the request goes back to the queue, unacknowledged.
                tracing::warn!(error = %e, "RPC reply not sent");
                return;
            }
            Err(_) => {
                tracing::warn!("RPC reply not sent: publishing blocked");
                return;
            }
        }
    } else {
        tracing::debug!("RPC request without reply_to: handled, nothing to answer");
    }
    if let Err(e) = delivery.ack().await {
        tracing::warn!(error = %e, "RPC request not acknowledged");
    }
}

/// Answers in the request's trace: the reply carries a child of the request's context,
/// unless the handler set a `traceparent` of its own.
#[cfg(feature = "trace-context")]
fn trace_reply(request: &BasicProperties, reply: &mut BasicProperties) {
    use lepus::trace_context::{extract, inject};
    if let (Some(context), None) = (extract(request), extract(reply)) {
        inject(&context.child(), reply);
    }
}
