//! Fuzz target `field_table`: arbitrary bytes as the body of a field table, decoded inside
//! `connection.start` and inside a content header's `headers`; both must agree, round-trip,
//! and respect the nesting limit exactly.
//!
//! The checks live in `../checks.rs`, shared with `codec/tests/fuzz_corpus.rs`.
#![no_main]

// Each target uses some of the shared checks.
#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check_field_table(data));
