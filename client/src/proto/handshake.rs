//! Connection-level methods: the handshake (start, secure, tune, open), and afterwards
//! close, blocked/unblocked and update-secret.

use std::time::{Duration, Instant};

use bytes::Bytes;
use lepus_codec::{FieldTable, Frame, Limits, Method, ReplyCode, ShortStr, method::connection};

use super::{Connection, Event, Reply, State, Tokens, Violation, violation};
use crate::error::{CloseReason, Error, Initiator};

/// What the client proposes and presents in the handshake.
#[derive(Clone)]
pub struct Config {
    /// Virtual host to open.
    pub vhost: ShortStr,
    /// SASL mechanism name (`PLAIN`, `AMQPLAIN`, `EXTERNAL`).
    pub mechanism: &'static str,
    /// The SASL response for that mechanism (contains the password: never log it).
    pub sasl_response: Bytes,
    /// Client properties, capabilities included.
    pub client_properties: FieldTable,
    /// Highest channel number we want (0 = no limit).
    pub channel_max: u16,
    /// Largest frame we want (0 = no limit; otherwise at least 4096).
    pub frame_max: u32,
    /// Heartbeat interval we want, in seconds (0 = whatever the server proposes).
    pub heartbeat: u16,
    /// Largest message body we accept.
    pub max_message_size: u64,
    /// Cap on method and header frames from the broker.
    pub control_frame_max: u32,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("vhost", &self.vhost)
            .field("mechanism", &self.mechanism)
            .field("sasl_response", &"<secret>")
            .field("channel_max", &self.channel_max)
            .field("frame_max", &self.frame_max)
            .field("heartbeat", &self.heartbeat)
            .finish_non_exhaustive()
    }
}

/// The limits both sides agreed on in `connection.tune-ok`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tuning {
    /// Highest channel number (0 = no limit).
    pub channel_max: u16,
    /// Largest frame (0 = no limit).
    pub frame_max: u32,
    /// Heartbeat interval in seconds (0 = none).
    pub heartbeat: u16,
}

/// The lower of two proposals where 0 means "no limit".
fn lower_nonzero<N: Copy + Ord + Default>(ours: N, theirs: N) -> N {
    let zero = N::default();
    match (ours == zero, theirs == zero) {
        (true, _) => theirs,
        (_, true) => ours,
        _ => ours.min(theirs),
    }
}

/// Negotiates `connection.tune`: each value is the lower non-zero proposal. A server
/// `frame_max` below the AMQP minimum is refused, and ours is never below it either, so the
/// result is 0 ("no limit", only when both said so) or at least 4096.
pub(crate) fn negotiate(ours: &Config, server: &connection::Tune) -> Result<Tuning, Error> {
    if server.frame_max != 0 && server.frame_max < Limits::FRAME_MIN_SIZE {
        return Err(Error::Tune(format!(
            "frame_max {} is below the AMQP minimum of {}",
            server.frame_max,
            Limits::FRAME_MIN_SIZE
        )));
    }
    let our_frame_max = match ours.frame_max {
        0 => 0,
        n => n.max(Limits::FRAME_MIN_SIZE),
    };
    Ok(Tuning {
        channel_max: lower_nonzero(ours.channel_max, server.channel_max),
        frame_max: lower_nonzero(our_frame_max, server.frame_max),
        heartbeat: lower_nonzero(ours.heartbeat, server.heartbeat),
    })
}

impl<T: Tokens> Connection<T> {
    pub(super) fn connection_method(&mut self, now: Instant, method: Method) -> Result<(), Violation> {
        match (self.state, method) {
            (_, Method::ConnectionClose(close)) => {
                self.on_close(&close);
                Ok(())
            }
            (State::Closing, Method::ConnectionCloseOk(_)) => {
                self.close_outcome = Some(super::CloseOutcome::Confirmed);
                let error = self.close_error.take().unwrap_or_else(|| self.closed_error());
                self.finish(error);
                Ok(())
            }
            // While closing, everything but close and close-ok is discarded.
            (State::Closing, _) => Ok(()),
            (State::AwaitStart, Method::ConnectionStart(start)) => self.on_start(start),
            (State::AwaitTune, Method::ConnectionSecure(_)) => {
                // Our mechanisms complete in one step; answer with the same response.
                let secure_ok = connection::SecureOk { response: self.config.sasl_response.clone() };
                self.queue_control(&Frame::Method(0, secure_ok.into()));
                Ok(())
            }
            (State::AwaitTune, Method::ConnectionTune(tune)) => {
                self.on_tune(now, &tune);
                Ok(())
            }
            (State::AwaitOpenOk, Method::ConnectionOpenOk(_)) => {
                self.state = State::Open;
                tracing::info!(tuning = ?self.tuning, "connection open");
                self.events.push_back(Event::Connected);
                Ok(())
            }
            (State::Open, Method::ConnectionBlocked(blocked)) => {
                let reason = blocked.reason.to_string();
                tracing::warn!(%reason, "the broker blocked publishing on this connection");
                self.blocked = Some(reason.clone());
                self.events.push_back(Event::Blocked(reason));
                Ok(())
            }
            (State::Open, Method::ConnectionUnblocked(_)) => {
                tracing::info!("the broker unblocked this connection");
                self.blocked = None;
                self.events.push_back(Event::Unblocked);
                Ok(())
            }
            (State::Open, Method::ConnectionUpdateSecretOk(ok)) => match self.rpcs.pop_front() {
                Some(p) => {
                    p.answer(&mut self.events, Ok(Reply::Method(ok.into())));
                    Ok(())
                }
                None => Err(violation(ReplyCode::COMMAND_INVALID, "update-secret-ok without update-secret")),
            },
            (_, other) => Err(violation(
                ReplyCode::COMMAND_INVALID,
                format!("unexpected {} during {:?}", other.name(), self.state),
            )),
        }
    }

    fn on_start(&mut self, start: connection::Start) -> Result<(), Violation> {
        if (start.version_major, start.version_minor) != (0, 9) {
            return Err(violation(
                ReplyCode::NOT_IMPLEMENTED,
                format!("server speaks AMQP {}-{}", start.version_major, start.version_minor),
            ));
        }
        let offered = String::from_utf8_lossy(&start.mechanisms).into_owned();
        if !offered.split(' ').any(|m| m == self.config.mechanism) {
            self.out.clear();
            self.finish(Error::AuthMechanism { ours: self.config.mechanism, offered });
            return Ok(());
        }
        self.server_properties = start.server_properties;
        let start_ok = connection::StartOk {
            client_properties: self.config.client_properties.clone(),
            mechanism: ShortStr::from_bytes(Bytes::from_static(self.config.mechanism.as_bytes())).unwrap_or_default(),
            response: self.config.sasl_response.clone(),
            ..connection::StartOk::default()
        };
        self.queue_control(&Frame::Method(0, start_ok.into()));
        self.state = State::AwaitTune;
        Ok(())
    }

    fn on_tune(&mut self, now: Instant, tune: &connection::Tune) {
        let tuning = match negotiate(&self.config, tune) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "refusing the broker's tuning");
                let reason = CloseReason::client(ReplyCode::NOT_ALLOWED, e.to_string());
                self.send_connection_close(&reason);
                self.finish(e);
                return;
            }
        };
        self.tuning = tuning;
        let tune_ok = connection::TuneOk {
            channel_max: tuning.channel_max,
            frame_max: tuning.frame_max,
            heartbeat: tuning.heartbeat,
        };
        self.queue_control(&Frame::Method(0, tune_ok.into()));
        self.limits = self.limits.tuned(tuning.frame_max, self.config.control_frame_max);
        self.heartbeat = (tuning.heartbeat > 0).then(|| Duration::from_secs(u64::from(tuning.heartbeat)));
        self.last_read = now;
        self.last_write = now;
        let open = connection::Open { virtual_host: self.config.vhost.clone(), ..connection::Open::default() };
        self.queue_control(&Frame::Method(0, open.into()));
        self.state = State::AwaitOpenOk;
    }

    fn on_close(&mut self, close: &connection::Close) {
        self.queue_control(&Frame::Method(0, connection::CloseOk {}.into()));
        let reason = CloseReason {
            reply_code: close.reply_code,
            reply_text: close.reply_text.to_string(),
            class_id: close.class_id,
            method_id: close.method_id,
            initiator: Initiator::Server,
        };
        let error = match self.state {
            State::Closing => {
                // Both sides closed at once: the broker has seen ours.
                self.close_outcome = Some(super::CloseOutcome::Confirmed);
                self.close_error.take().unwrap_or(Error::ConnectionClosed(reason))
            }
            _ if close.reply_code == ReplyCode::ACCESS_REFUSED => Error::AccessRefused(reason.reply_text),
            _ => Error::ConnectionClosed(reason),
        };
        tracing::info!(%error, "the broker closed the connection");
        self.finish(error);
    }
}
