//! Fuzz target `method`: two bytes of channel, then arbitrary bytes as a method frame's
//! payload; whatever decodes must round-trip.
//!
//! The checks live in `../checks.rs`, shared with `codec/tests/fuzz_corpus.rs`.
#![no_main]

// Each target uses some of the shared checks.
#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check_method(data));
