//! Talks to RabbitMQ with nothing but lepus-codec and a blocking socket: handshake, declare,
//! publish a message split into 4 KiB frames, fetch it back, close — printing each step.
//!
//! `cargo run -p lepus-tests --example codec_demo` (broker: `AMQP_ADDR`, default 127.0.0.1:5672)

use lepus::codec::{BasicProperties, ShortStr};
use lepus_tests::{broker_addr, raw::RawSession};

fn main() -> std::io::Result<()> {
    let addr = broker_addr();
    let mut session = RawSession::open(&addr, 4096)?;
    println!("connected to {} at {addr}, frame_max {}", session.server_product(), session.frame_max);

    let (queue, _) = session.declare_queue("")?;
    println!("declared server-named queue {queue}");

    let body: Vec<u8> = b"lepus ".iter().copied().cycle().take(10_000).collect();
    let props = BasicProperties {
        content_type: Some(ShortStr::from_static("text/plain").map_err(std::io::Error::other)?),
        ..BasicProperties::default()
    };
    session.publish(&queue.to_string(), &props, &body)?;
    println!("published {} bytes (method + header + {} body frames)", body.len(), body.len().div_ceil(4088));

    match session.get(&queue.to_string())? {
        Some(msg) => println!(
            "got it back: {} bytes, identical: {}, content_type {:?}",
            msg.body.len(),
            msg.body[..] == body[..],
            msg.header.properties.content_type
        ),
        None => println!("the queue was empty?"),
    }
    session.delete_queue(&queue.to_string())?;
    session.close()?;
    println!("closed");
    Ok(())
}
