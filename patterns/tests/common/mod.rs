//! Shared by the patterns' broker tests: where the broker is, unique names, and a guard that
//! deletes what a test declared even when the test fails.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use lepus::{Connection, QueueDeleteOptions};

/// The broker: `AMQP_URL`, or the local RabbitMQ.
pub(crate) fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A name no other test, run or process uses at the same time.
pub(crate) fn unique(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("lepus.patterns.test.{name}.{}.{nanos}.{n}", std::process::id())
}

/// A connection to the test broker, or a panic that says where it looked.
pub(crate) async fn connect() -> Connection {
    match Connection::connect(&url()).await {
        Ok(conn) => conn,
        Err(e) => panic!("cannot connect to the test broker at {} (is it running?): {e}", url()),
    }
}

/// Deletes queues and exchanges when dropped, even when the test failed: on a thread with a
/// runtime and a connection of its own.
pub(crate) struct Cleanup {
    pub(crate) queues: Vec<String>,
    pub(crate) exchanges: Vec<String>,
}

impl Cleanup {
    /// A guard for queues only.
    pub(crate) fn queues(queues: Vec<String>) -> Self {
        Cleanup { queues, exchanges: Vec::new() }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut self.queues);
        let exchanges = std::mem::take(&mut self.exchanges);
        let cleaner = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let conn = connect().await;
                let channel = conn.open_channel().await.unwrap();
                for q in &queues {
                    channel.queue_delete(q, QueueDeleteOptions::default()).await.unwrap();
                }
                for e in &exchanges {
                    channel.exchange_delete(e, false).await.unwrap();
                }
                conn.close().await.unwrap();
            });
        });
        let failed = cleaner.join().is_err();
        assert!(!failed || std::thread::panicking(), "cleaning up the test's queues and exchanges failed");
    }
}
