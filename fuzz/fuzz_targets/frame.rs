//! Fuzz target `frame`: arbitrary bytes as a read buffer, decoded frame by frame under the
//! limits before and after tuning; every frame must survive a re-encode round trip.
//!
//! The checks live in `../checks.rs`, shared with `codec/tests/fuzz_corpus.rs`.
#![no_main]

// Each target uses some of the shared checks.
#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check_frame(data));
