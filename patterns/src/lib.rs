//! # lepus-patterns
//!
//! The messaging patterns RabbitMQ users write by hand from tutorials, as a library over
//! `lepus`'s public API: work queues, pub/sub fan-out, topic and headers routing, RPC,
//! dead-lettering with broker-side retries, publisher pools and health checks.

// The README's examples run as doc tests too, without becoming part of these docs.
#![cfg_attr(doctest, doc = include_str!("../README.md"))]
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

// Work queues, pub/sub, topic and headers routing, queue kinds, health checks.
pub mod headers;
pub mod health;
pub mod pubsub;
pub mod queue_kinds;
pub mod topic;
pub mod work_queue;

// RPC, dead-lettering with broker-side retries, dead-letter queue tools, publisher pools.
pub mod dead_letter;
pub mod dlq;
pub mod event_bus;
pub mod publisher_pool;
pub mod retry;
pub mod rpc;

// How every pattern runs a user's handler: its own task, a time limit, panics caught.
mod handler;
