//! Helpers shared by the codec's integration tests. Each test binary that declares
//! `mod common;` compiles its own copy and uses only part of it.
#![allow(dead_code)]

pub(crate) mod strategies;
pub(crate) mod wire;
