//! `ChannelLink`: what every handle of one channel shares (its state and the way to the
//! driver). It keeps the channel open: when the last channel handle, consumer and delivery
//! of the channel are dropped, the link asks the driver to close it.

use std::sync::Arc;

use lepus_codec::Method;
use tokio::sync::oneshot;

use crate::{
    Error,
    channel_shared::ChannelShared,
    command::{Command, CommandSender},
    proto::Reply,
};

pub(crate) struct ChannelLink {
    pub(crate) shared: Arc<ChannelShared>,
    pub(crate) commands: CommandSender,
}

impl ChannelLink {
    /// A synchronous call: the reply, or the error that closed the channel first.
    pub(crate) async fn call(&self, method: Method) -> Result<Reply, Error> {
        self.shared.conn.wait_up().await?;
        self.shared.check_open()?;
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Call { channel: self.shared.clone(), method, reply: tx })?;
        rx.await.map_err(|_| self.shared.close_reason_or_closed())?
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
