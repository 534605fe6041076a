//! The checks behind the `proto` fuzz target, shared with the corpus replay test.
//!
//! The fuzz target `fuzz_targets/proto.rs` and the ordinary test
//! `client/tests/proto_fuzz_corpus.rs` include this folder (`#[path = ...] mod
//! proto_checks;`), so a corpus or regression input is held to the same rules under
//! `cargo fuzz` and under `cargo test`. It depends on `lepus`, `lepus_codec` and `bytes`,
//! and does no IO.
//!
//! An input is a script (see [`script`]): the connection's configuration, then steps that
//! feed `lepus::proto::Connection` what the driver would — frames from the broker, built
//! from templates or decoded from raw bytes with `decode_frame` under `limits()`, exactly
//! as `driver::decode` does; the application's commands (`open_channel`, `call`,
//! `consume`, `send`, `publish`, `update_secret`, `close`); clock steps, socket errors,
//! `set_reading`; and the driver's `poll_transmit` and `poll_event` at times the input
//! chooses, so output and events can pile up. When the input ends the connection is closed
//! (`close()`, then a socket error or the close deadline passing) and drained.
//!
//! What must hold, checked as it happens (see [`ledger`], [`wire`], [`harness`]):
//!
//! - nothing panics;
//! - every reply and confirm token handed in comes back in exactly one event, by the time
//!   the connection is closed, and a reply is one the call can have (a `queue.declare`
//!   gets `declare-ok`, not the `qos-ok` of another call); a confirm comes back `Returned`
//!   only for a mandatory publish; `open_channel` and `publish` hand back the tokens they
//!   refuse;
//! - every channel gets exactly one `ChannelClosed`, and no channel event after it; every
//!   consumer at most one `ConsumerEnded` and no delivery after it, and its deliveries carry
//!   its channel and tag; `Connected` and `Closed` come at most once, nothing succeeds
//!   before `Connected`, and only failures follow `Closed`;
//! - bounded memory: after every step, the bytes the client wrote plus those waiting
//!   (`pending_transmit()`) are at most `8 + 512 × units + supplied`, where a unit is a
//!   step or a frame from the broker and `supplied` counts the bytes the application
//!   handed in (methods as encoded, publishes, secrets); events polled so far are at most
//!   `2 × (units + 1)` (so are those waiting, which `max_queued_events` records); no more
//!   channels are open than `channel_max`, no channel keeps more than 256 unmatched returns
//!   (the state machine's own cap) or more unconfirmed publishes than confirm tokens out;
//!   the fuzz target runs under `-rss_limit_mb=256`;
//! - everything the client writes is the protocol header and then valid frames
//!   (`decode_frame`), none over the negotiated `frame_max`, none on a channel it has not
//!   opened (within `channel_max`) or has closed; the output ends on a frame boundary
//!   unless the socket was dropped; `pending_transmit()` is what `poll_transmit` hands
//!   out; nothing is queued after the connection closed;
//! - `handle_timeout(now)` leaves no deadline at or before `now` (a driver would spin).
//!
//! Why a hand-rolled interpreter and not the `arbitrary` crate: the seed corpus must be
//! written by a program (a real handshake, deliveries, confirms), and a format of our own
//! has an encoder ([`script::Script`]) next to its reader, while `arbitrary`'s byte layout
//! is an implementation detail that has changed between its versions (which would silently
//! turn the committed corpus into noise); most bytes here pick from small tables (a known
//! channel, a consumer tag the client sent) so short inputs reach deep states, and every
//! byte string is a valid script; and the replay test needs no new dependency in `lepus`.

mod build;
mod harness;
mod ledger;
mod script;
mod seeds;
mod wire;

pub(crate) use ledger::{Summary, self_test_double_reply, self_test_lost_reply};
pub(crate) use seeds::seeds;

/// Target `proto`: runs the input as a script and checks every promise on the way.
pub(crate) fn check_proto(data: &[u8]) {
    harness::run(data);
}

/// Runs the input as a script, like [`check_proto`], and says what happened.
pub(crate) fn run(data: &[u8]) -> Summary {
    harness::run(data)
}

impl Summary {
    /// Whether this run made at least everything `least` counts happen.
    pub(crate) fn covers(&self, least: &Summary) -> bool {
        let counts = |s: &Summary| {
            [
                s.replies_ok,
                s.replies_failed,
                s.acks,
                s.nacks,
                s.confirms_returned,
                s.confirms_failed,
                s.deliveries,
                s.deliveries_refused,
                s.consumers_ended,
                s.returned,
                s.channels_closed,
                s.flow_events,
                s.blocked_events,
            ]
        };
        (self.connected || !least.connected)
            && (self.closed || !least.closed)
            && counts(self).iter().zip(counts(least)).all(|(got, least)| *got >= least)
    }
}
