//! Fuzz target `proto`: the input is a script (connection configuration, then frames from
//! the broker, raw socket bytes, commands, clock steps, socket errors, and the driver's
//! polls) driven into `lepus::proto::Connection`, which must never panic, answer every
//! token exactly once by the time it is closed, stay within its memory bounds, and write
//! only valid frames.
//!
//! The checks live in `../proto_checks/`, shared with `client/tests/proto_fuzz_corpus.rs`.
#![no_main]

// The seed scripts and self-tests are for the replay test and `make_seeds`.
#[allow(dead_code, unused_imports)]
#[path = "../proto_checks/mod.rs"]
mod proto_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| proto_checks::check_proto(data));
