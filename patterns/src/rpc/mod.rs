//! Request/reply (RPC) over RabbitMQ: [`RpcClient`] sends requests and matches replies by
//! correlation id, many calls at once on one channel; [`RpcServer`] answers them with a
//! handler per queue.
//!
//! # How a call travels
//!
//! 1. The client registers the call under a fresh correlation id (`<random prefix>.<n>`),
//!    then publishes the request with `correlation_id`, `reply_to` and `mandatory = true`
//!    on its own channel, which is in confirm mode.
//! 2. The broker's confirm tells the call at once whether the request reached a queue:
//!    [`Confirmation::Returned`](lepus::Confirmation::Returned) (no queue bound for it) fails the call with
//!    [`RpcError::Unroutable`], a nack with [`RpcError::Nacked`]. Confirms were chosen over
//!    the channel's returns stream because the client already matches a `basic.return` to
//!    its publish, so no second table keyed by correlation id is needed, and a nack (e.g.
//!    a full request queue with `reject-publish`) is reported too.
//! 3. The server consumes the request queue with a prefetch, runs the handler, publishes
//!    the reply to `reply_to` through the default exchange with the request's correlation
//!    id, and only then acknowledges the request. A connection lost in between redelivers
//!    the request: a handler may see a request twice.
//! 4. One task per client reads the reply queue and hands each reply to the call waiting
//!    for its correlation id. A reply nobody waits for (its call timed out) is dropped and
//!    counted ([`RpcClient::discarded_replies`]).
//!
//! Replies come by default through RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`,
//! consumed with `no_ack` on the publishing channel before the first request, as RabbitMQ
//! requires): no queue is created. [`ReplyQueue::Exclusive`] uses an exclusive,
//! server-named queue instead, e.g. where replies must survive a slow client for a while.
//!
//! # Bounded
//!
//! Every call has a timeout ([`RpcClientOptions::timeout`], or per request): when it fires,
//! or when the caller drops the call's future, the call's entry leaves the table, so the
//! table never holds more than the calls in progress, and at most
//! [`RpcClientOptions::max_in_flight`] of those. A handler error travels back in the
//! [`ERROR_HEADER`] header and fails the call with [`RpcError::Remote`].
//!
//! # Traced (feature `trace-context`)
//!
//! Each request carries a W3C `traceparent` (and `tracestate`): a child of the caller's
//! context (`RpcRequest::trace_context`), or a new trace. The handler finds it with
//! `IncomingRequest::trace_context`, and the reply carries a child of it back
//! (`RpcReply::trace_context`): one trace id from caller to server and back, a new parent
//! id at each hop.
//!
//! ```no_run
//! use lepus::Connection;
//! use lepus_patterns::rpc::{RpcClient, RpcClientOptions, RpcResponse, RpcServer, ServeOptions};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let conn = Connection::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
//!
//! let mut server = RpcServer::new(&conn);
//! server
//!     .serve("rpc.upper", ServeOptions::default(), |request| async move {
//!         let text = String::from_utf8_lossy(&request.body).to_uppercase();
//!         Ok(RpcResponse::from(text))
//!     })
//!     .await?;
//!
//! let client = RpcClient::new(&conn, RpcClientOptions::default()).await?;
//! let reply = client.call("rpc.upper", "hello").await?;
//! assert_eq!(&reply.body[..], b"HELLO");
//!
//! server.shutdown().await?;
//! conn.close().await?;
//! # Ok(()) }
//! ```

mod client;
mod server;

use std::time::Duration;

pub use client::{ReplyQueue, RpcClient, RpcClientOptions, RpcError, RpcReply, RpcRequest};
pub use server::{IncomingRequest, RpcHandlerError, RpcResponse, RpcServer, ServeOptions};

/// RabbitMQ's pseudo-queue for direct reply-to.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The reply header that carries a handler's error message (a long string); a reply with
/// it fails the call with [`RpcError::Remote`].
pub const ERROR_HEADER: &str = "x-rpc-error";

/// How long setting up a client or a server (opening a channel, declaring, consuming) may
/// take before it fails with a timeout.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long stopping waits for the broker (cancel, close).
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
