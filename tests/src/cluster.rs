//! A RabbitMQ cluster of the test's own on loopback: [`TestNode`]s booted in parallel, then
//! joined to the first one with RabbitMQ's own clustering (`stop_app`, `reset`,
//! `join_cluster`, `start_app`), as shared/BROKER.md describes. Every node is stopped when
//! the cluster is dropped, the test failed or not (each node's own `Drop`).
//!
//! ```no_run
//! use lepus_tests::cluster::TestCluster;
//!
//! let cluster = TestCluster::start("lepus_doc_cluster", 3).expect("the cluster forms");
//! for node in cluster.nodes() {
//!     println!("{} on {}", node.nodename(), node.amqp_url());
//! }
//! ```

use std::io;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::node::{DEFAULT_START_TIMEOUT, TestNode, TestNodeConfig, free_ports, stop_orphans};

/// Where the cluster's ports start looking (AMQP, then distribution), away from the
/// single test node's 5673/25673.
const AMQP_PORT_BASE: u16 = 5681;
const DIST_PORT_BASE: u16 = 25681;

/// A cluster of [`TestNode`]s, the first being the one the others joined.
#[derive(Debug)]
pub struct TestCluster {
    nodes: Vec<TestNode>,
    /// How long booting the nodes (in parallel) took.
    pub boot_took: Duration,
    /// How long joining them took.
    pub join_took: Duration,
}

impl TestCluster {
    /// Starts `size` nodes named `PREFIX_<letter>_p<pid>@host` on free ports near 5681 and
    /// 25681, in parallel, then joins every node after the first to the first.
    pub fn start(prefix: &str, size: usize) -> io::Result<TestCluster> {
        let names: Vec<String> = (0..size).map(|i| format!("{prefix}_{}", char::from(b'a' + (i % 26) as u8))).collect();
        for name in &names {
            stop_orphans(name);
        }
        // All ports chosen at once, so that parallel boots never pick the same one.
        let preferred: Vec<u16> = (0..size as u16).flat_map(|i| [AMQP_PORT_BASE + i, DIST_PORT_BASE + i]).collect();
        let ports = free_ports(&preferred);
        let configs: Vec<TestNodeConfig> = names
            .iter()
            .enumerate()
            .map(|(i, name)| TestNodeConfig {
                name: name.clone(),
                amqp_port: ports[2 * i],
                dist_port: ports[2 * i + 1],
                tls: None,
                start_timeout: DEFAULT_START_TIMEOUT,
            })
            .collect();
        let booting = Instant::now();
        let started: Vec<io::Result<TestNode>> = std::thread::scope(|scope| {
            let handles: Vec<_> = configs.iter().map(|config| scope.spawn(|| TestNode::start(config))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(io::Error::other("a node's start panicked"))))
                .collect()
        });
        let boot_took = booting.elapsed();
        // On an error, the nodes that did start are dropped here, and so stopped.
        let nodes = started.into_iter().collect::<io::Result<Vec<TestNode>>>()?;
        let joining = Instant::now();
        let cluster = TestCluster { nodes, boot_took, join_took: Duration::ZERO };
        let Some((first, rest)) = cluster.nodes.split_first() else { return Ok(cluster) };
        for node in rest {
            node.ctl(&["stop_app"])?;
            node.ctl(&["reset"])?;
            node.ctl(&["join_cluster", first.nodename()])?;
            node.ctl(&["start_app"])?;
            node.ctl(&["await_startup", "--timeout", "60"])?;
        }
        Ok(TestCluster { join_took: joining.elapsed(), ..cluster })
    }

    /// The nodes, the first being the one the others joined.
    pub fn nodes(&self) -> &[TestNode] {
        &self.nodes
    }

    /// The node with this name, if it is one of the cluster's.
    pub fn by_name(&self, nodename: &str) -> Option<&TestNode> {
        self.nodes.iter().find(|n| n.nodename() == nodename)
    }
}

/// Runs `rabbitmqctl -n NODE ARGS...` (blocking): its standard output, or an error with what
/// it printed. A free function, so that a test can run it on a blocking thread with only the
/// node's name.
pub fn ctl(nodename: &str, args: &[&str]) -> io::Result<String> {
    let out = Command::new("rabbitmqctl").arg("-n").arg(nodename).args(args).stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "rabbitmqctl -n {nodename} {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
