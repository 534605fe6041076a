//! The run's exchange, queue and binding: declared before the run on the run's own
//! connection, and the server-named queue deleted after it.

use lepus::{Connection, Error, ExchangeDeclareOptions, FieldTable, QueueDeclareOptions};

use crate::{args::Args, connect::CLOSE_TIMEOUT};

/// Where producers publish and consumers consume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Topology {
    /// The queue's name (the broker's choice when `-u` was not given).
    pub(crate) queue: String,
    /// The exchange producers publish to ("" is the default exchange).
    pub(crate) exchange: String,
    /// The routing key of every publish and of the binding.
    pub(crate) routing_key: String,
    /// Whether the broker named the queue, so the run owns it and deletes it at the end.
    pub(crate) server_named: bool,
}

/// Declares what `args` asks for on `conn` (or with `-p` only checks that the queue
/// exists): the exchange unless it is the default or an `amq.*` one, the queue, and the
/// binding between them.
pub(crate) async fn declare(conn: &Connection, args: &Args) -> Result<Topology, Error> {
    let channel = conn.open_channel().await?;
    let queue = if args.predeclared {
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        channel.queue_declare(&args.queue, passive, FieldTable::new()).await?.name
    } else {
        if !args.exchange.is_empty() && !args.exchange.starts_with("amq.") {
            let options = ExchangeDeclareOptions { durable: args.queue_durable(), ..ExchangeDeclareOptions::default() };
            channel.exchange_declare(&args.exchange, args.exchange_type.into(), options, FieldTable::new()).await?;
        }
        let options = QueueDeclareOptions {
            durable: args.queue_durable(),
            exclusive: args.exclusive,
            auto_delete: args.queue_auto_delete(),
            ..QueueDeclareOptions::default()
        };
        channel.queue_declare(&args.queue, options, args.queue_arguments()).await?.name
    };
    let routing_key = args.routing_key.clone().unwrap_or_else(|| queue.clone());
    if !args.predeclared && !args.exchange.is_empty() {
        channel.queue_bind(&queue, &args.exchange, &routing_key, FieldTable::new()).await?;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close()).await;
    Ok(Topology { queue, exchange: args.exchange.clone(), routing_key, server_named: args.queue.is_empty() })
}

/// Deletes the queue if the broker named it for this run (an auto-delete queue may
/// already be gone, which RabbitMQ answers with delete-ok too). A queue named with `-u`
/// is left as it is.
pub(crate) async fn remove(conn: &Connection, topology: &Topology) -> Result<(), Error> {
    if !topology.server_named {
        return Ok(());
    }
    let channel = conn.open_channel().await?;
    channel.queue_delete(&topology.queue, Default::default()).await?;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close()).await;
    Ok(())
}
