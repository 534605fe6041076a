//! Fuzz target `content_header`: arbitrary bytes as a content header frame's payload
//! (round trip), then as a frame sequence fed to `ContentAssembler` and a reference model.
//!
//! The checks live in `../checks.rs`, shared with `codec/tests/fuzz_corpus.rs`.
#![no_main]

// Each target uses some of the shared checks.
#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check_content_header(data));
