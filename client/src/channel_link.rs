//! `ChannelLink`: what every handle of one channel shares (its state and the way to the
//! driver). It keeps the channel open: when the last channel handle, consumer and delivery
//! of the channel are dropped, the link asks the driver to close it.

use std::sync::Arc;

use lepus_codec::Method;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::{
    Error,
    channel_shared::ChannelShared,
    command::{Command, CommandSender},
    connection::call_span,
    metrics::Settlement,
    proto::{ChannelKey, Reply},
};

pub(crate) struct ChannelLink {
    pub(crate) shared: Arc<ChannelShared>,
    pub(crate) commands: CommandSender,
}

impl ChannelLink {
    /// A synchronous call: the reply, or the error that closed the channel first.
    pub(crate) async fn call(&self, method: Method) -> Result<Reply, Error> {
        let span = self.span(method.name());
        async {
            self.shared.conn.wait_up().await?;
            self.shared.check_open()?;
            let (tx, rx) = oneshot::channel();
            self.commands.send(Command::Call { channel: self.shared.clone(), method, reply: tx })?;
            rx.await.map_err(|_| self.shared.close_reason_or_closed())?
        }
        .instrument(span)
        .await
    }

    /// The tracing span of a synchronous call of `method` on this channel.
    pub(crate) fn span(&self, method: &'static str) -> tracing::Span {
        call_span(&self.shared.conn, self.shared.key().id, method)
    }

    /// Hands an ack, nack or reject for a delivery of incarnation `key` to the driver
    /// (which may wait for a driver that looks soon anyway, see `command_queue/mod.rs`).
    pub(crate) fn settle(&self, key: ChannelKey, method: Method) -> Result<(), Error> {
        // Read before the method moves into the command, counted once it is handed over.
        let count = self.shared.conn.metrics().map(|metrics| (metrics, Settlement::of(&method)));
        self.commands.settle(key, method)?;
        if let Some((metrics, settlement)) = count {
            settlement.count(metrics);
        }
        Ok(())
    }
}

impl Drop for ChannelLink {
    fn drop(&mut self) {
        if !self.shared.is_closed() {
            // After everything this channel's handles sent: the queue is ordered.
            let _ = self.commands.send(Command::ChannelDropped { channel: self.shared.clone() });
        }
    }
}
