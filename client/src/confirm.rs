//! Publisher confirms as futures, and returned messages.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_core::Stream;
use lepus_codec::{BasicProperties, Content, Method, ReplyCode, ShortStr};
use tokio::sync::{mpsc, oneshot};

use crate::{Error, conn_shared::ConnShared, proto};

/// A message the broker gave back: mandatory, and no queue was bound for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnedMessage {
    /// Why (312 `NO_ROUTE`).
    pub reply_code: ReplyCode,
    /// The broker's text.
    pub reply_text: ShortStr,
    /// Exchange it was published to.
    pub exchange: ShortStr,
    /// Its routing key.
    pub routing_key: ShortStr,
    /// Its properties.
    pub properties: BasicProperties,
    /// Its body.
    pub body: Bytes,
}

impl ReturnedMessage {
    pub(crate) fn from_content(content: Content) -> Self {
        let (reply_code, reply_text, exchange, routing_key) = match content.method {
            Method::BasicReturn(r) => (r.reply_code, r.reply_text, r.exchange, r.routing_key),
            _ => (ReplyCode::NO_ROUTE, ShortStr::new(), ShortStr::new(), ShortStr::new()),
        };
        ReturnedMessage {
            reply_code,
            reply_text,
            exchange,
            routing_key,
            properties: content.header.properties,
            body: content.body,
        }
    }
}

/// The broker's verdict on one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    /// The broker took responsibility for the message.
    Ack,
    /// The broker could not take it.
    Nack,
    /// Mandatory and unroutable: the broker returned it (and then acked it).
    Returned(Box<ReturnedMessage>),
    /// The channel is not in confirm mode: nothing will be confirmed.
    NotRequested,
}

impl Confirmation {
    /// True for [`Confirmation::Ack`].
    pub fn is_ack(&self) -> bool {
        matches!(self, Confirmation::Ack)
    }
}

impl From<proto::Confirmation> for Confirmation {
    fn from(c: proto::Confirmation) -> Self {
        match c {
            proto::Confirmation::Ack => Confirmation::Ack,
            proto::Confirmation::Nack => Confirmation::Nack,
            proto::Confirmation::Returned(content) => {
                Confirmation::Returned(Box::new(ReturnedMessage::from_content(*content)))
            }
        }
    }
}

/// Resolves to the broker's [`Confirmation`] of one publish, or to the error that closed its
/// channel or connection first, or to [`Error::Timeout`] past the publishing handle's
/// deadline ([`crate::Channel::with_timeout`]; the outcome is then unknown). Dropping it does
/// not cancel the publish.
#[must_use = "a confirm that is never awaited tells nobody whether the message arrived"]
pub struct PublisherConfirm {
    rx: Option<oneshot::Receiver<Result<proto::Confirmation, Error>>>,
    conn: Arc<ConnShared>,
    /// The publishing handle's deadline, counted from the publish.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl std::fmt::Debug for PublisherConfirm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublisherConfirm").field("requested", &self.rx.is_some()).finish_non_exhaustive()
    }
}

impl PublisherConfirm {
    pub(crate) fn pending(
        rx: oneshot::Receiver<Result<proto::Confirmation, Error>>,
        conn: Arc<ConnShared>,
        timeout: Option<Duration>,
    ) -> Self {
        let deadline = timeout.map(|t| Box::pin(tokio::time::sleep(t)));
        PublisherConfirm { rx: Some(rx), conn, deadline }
    }

    pub(crate) fn not_requested(conn: Arc<ConnShared>) -> Self {
        PublisherConfirm { rx: None, conn, deadline: None }
    }
    /// Pending, or the timeout once the deadline has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<Result<Confirmation, Error>> {
        match self.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
            // The outcome is unknown: the broker may still confirm (or not) the message.
            Some(Poll::Ready(())) => Poll::Ready(Err(Error::Timeout("waiting for a publisher confirm"))),
            _ => Poll::Pending,
        }
    }
}

impl Future for PublisherConfirm {
    type Output = Result<Confirmation, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(rx) = self.rx.as_mut() else { return Poll::Ready(Ok(Confirmation::NotRequested)) };
        match Pin::new(rx).poll(cx) {
            Poll::Pending => {
                // What this publisher deferred may be what the broker has left to confirm.
                self.conn.commands.publisher_waits();
                self.poll_deadline(cx)
            }
            Poll::Ready(Ok(result)) => Poll::Ready(result.map(Confirmation::from)),
            // The driver is gone without answering: it closed, and that is the answer.
            Poll::Ready(Err(_)) => Poll::Ready(Err(self.conn.closed_error())),
        }
    }
}

/// Returned messages of a channel not in confirm mode, as a `Stream`.
#[derive(Debug)]
pub struct Returns {
    pub(crate) rx: mpsc::Receiver<ReturnedMessage>,
}

impl Returns {
    /// The next returned message; `None` once the channel has closed.
    pub async fn next(&mut self) -> Option<ReturnedMessage> {
        self.rx.recv().await
    }
}

impl Stream for Returns {
    type Item = ReturnedMessage;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ReturnedMessage>> {
        self.rx.poll_recv(cx)
    }
}
