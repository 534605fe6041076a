//! Commands held back while the connection is down or a replay runs: applied in arrival
//! order once the replay is done, or, for those whose caller waits on an answer, failed
//! with `Error::Disconnected` once they have waited as long as a call made while down
//! would (`RecoveryOptions::wait_timeout`; at once under `WhileDisconnected::FailFast`).
//! Without that bound, a call that raced the loss would wait for as long as recovery goes
//! on, which by default is forever.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use crate::{Error, command::Command};

#[derive(Default)]
pub(super) struct Parked {
    /// Each command with the instant its waiter gives up on it (`None`: it has no waiter,
    /// and waits for the replay however long that takes; the publish budget bounds those).
    commands: VecDeque<(Option<Instant>, Command)>,
}

impl Parked {
    pub(super) fn push(&mut self, now: Instant, limit: Duration, cmd: Command) {
        let expires = has_waiter(&cmd).then(|| now + limit);
        self.commands.push_back((expires, cmd));
    }

    /// The earliest instant a command expires.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.commands.iter().filter_map(|(expires, _)| *expires).min()
    }

    /// Fails the commands whose time is up with `Disconnected(cause)`; the others keep
    /// their order. Returns the publish budget (bytes) the failed publishes held.
    pub(super) fn expire(&mut self, now: Instant, cause: &Error) -> usize {
        if self.deadline().is_none_or(|at| at > now) {
            return 0;
        }
        let mut budget = 0;
        let error = || Error::Disconnected(Box::new(cause.clone()));
        let mut kept = VecDeque::with_capacity(self.commands.len());
        for (expires, cmd) in self.commands.drain(..) {
            if expires.is_none_or(|at| at > now) {
                kept.push_back((expires, cmd));
                continue;
            }
            match cmd {
                Command::OpenChannel { channel, reply } => {
                    channel.closed(error());
                    let _ = reply.send(Err(error()));
                }
                Command::Call { reply, .. } | Command::Consume { reply, .. } | Command::UpdateSecret { reply, .. } => {
                    let _ = reply.send(Err(error()));
                }
                Command::Publish { confirm: Some((token, _)), budget: held, .. } => {
                    budget += held as usize;
                    let _ = token.tx.send(Err(error()));
                }
                other => kept.push_back((None, other)),
            }
        }
        self.commands = kept;
        budget
    }

    /// Every command, in arrival order.
    pub(super) fn take(&mut self) -> Vec<Command> {
        self.commands.drain(..).map(|(_, cmd)| cmd).collect()
    }
}

/// Whether a caller waits for this command's answer.
fn has_waiter(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::OpenChannel { .. }
            | Command::Call { .. }
            | Command::Consume { .. }
            | Command::UpdateSecret { .. }
            | Command::Publish { confirm: Some(_), .. }
    )
}
