//! After the runs the broker must hold no `bench.` or `rpc.` queue: find the ones left
//! (every name this process handed out, checked with a passive declare, plus whatever
//! `rabbitmqctl list_queues` shows when it is available) and delete them.

use std::process::Command;

use lepus::{Connection, QueueDeclareOptions, QueueDeleteOptions};

use super::{BenchError, created_queues};

/// True for the names the benchmark runs use.
pub fn is_bench_queue(name: &str) -> bool {
    name.starts_with("bench.") || name.starts_with("rpc.")
}

/// `bench.`/`rpc.` queues `rabbitmqctl list_queues` reports, or `None` if it cannot run
/// here (another host, no rabbitmqctl, no permission).
pub fn listed_by_rabbitmqctl() -> Option<Vec<String>> {
    let output = Command::new("rabbitmqctl").args(["list_queues", "-q", "name"]).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Some(text.lines().map(str::trim).filter(|l| is_bench_queue(l)).map(str::to_owned).collect())
}

/// Which of `names` exist, by passive declare (a missing queue closes the channel with 404,
/// so each check that fails costs a new channel).
async fn existing(conn: &Connection, names: &[String]) -> Result<Vec<String>, BenchError> {
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let mut channel = conn.open_channel().await?;
    let mut found = Vec::new();
    for name in names {
        match channel.queue_declare(name, passive, Default::default()).await {
            Ok(_) => found.push(name.clone()),
            Err(_) => channel = conn.open_channel().await?,
        }
    }
    Ok(found)
}

/// Deletes every leftover `bench.`/`rpc.` queue; returns their names (empty when the runs
/// cleaned up after themselves). With `all_listed`, queues that `rabbitmqctl` lists are
/// removed too, not only the ones this process created.
pub async fn remove_leftovers(url: &str, all_listed: bool) -> Result<Vec<String>, BenchError> {
    let conn = Connection::connect(url).await?;
    let mut leftovers = existing(&conn, &created_queues()).await?;
    if all_listed {
        for name in listed_by_rabbitmqctl().unwrap_or_default() {
            if !leftovers.contains(&name) {
                leftovers.push(name);
            }
        }
    }
    let channel = conn.open_channel().await?;
    for name in &leftovers {
        channel.queue_delete(name, QueueDeleteOptions::default()).await?;
    }
    conn.close().await?;
    Ok(leftovers)
}

#[cfg(test)]
mod tests {
    use super::is_bench_queue;

    #[test]
    fn prefixes() {
        assert!(is_bench_queue("bench.lepus.publish.0123"));
        assert!(is_bench_queue("rpc.0123"));
        assert!(!is_bench_queue("amq.gen-abc"));
        assert!(!is_bench_queue("benchmark"));
    }
}
