//! Integration-test support for lepus.
//!
//! [`raw::RawSession`] speaks AMQP with nothing but `lepus-codec` and a blocking socket: it
//! lets tests check the codec against the real RabbitMQ before (and beside) the client.

pub mod bounded;
pub mod cluster;
pub mod fake_broker;
pub mod memory;
pub mod nested;
pub mod node;
pub mod proxy;
pub mod raw;
pub mod recovery_load;
pub mod seeded;
pub mod steps;
pub mod traffic;
pub mod util;
pub mod wire_check;

/// The broker the tests use: `AMQP_ADDR` (`host:port`) or `127.0.0.1:5672`.
pub fn broker_addr() -> String {
    std::env::var("AMQP_ADDR").unwrap_or_else(|_| "127.0.0.1:5672".to_owned())
}

/// The README's code blocks, compiled and run as doc tests so the quick start stays true.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
