//! Opening a socket to one broker address (TCP, then TLS if configured) and the state
//! machine's configuration for it; used for the first connection and for every reconnection.

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use crate::{ConnectionOptions, Credentials, Error, driver::SocketControl, proto, recovery::Address};

/// A connected byte stream: TCP or TLS over TCP.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// An open socket, ready for the AMQP handshake.
pub(crate) struct Opened {
    pub(crate) stream: Box<dyn Stream>,
    pub(crate) control: SocketControl,
    pub(crate) tls: bool,
}

/// Connects to `address` (TCP, then TLS when the options ask for it).
pub(crate) async fn open(address: &Address, options: &ConnectionOptions) -> Result<Opened, Error> {
    let tcp = TcpStream::connect((address.host.as_str(), address.port)).await?;
    tcp.set_nodelay(true)?;
    let control = SocketControl::for_tcp(&tcp);
    match options.get_tls() {
        Some(tls) => {
            let stream = crate::tls::connect(tcp, &address.host, tls).await?;
            Ok(Opened { stream: Box::new(stream), control, tls: true })
        }
        None => Ok(Opened { stream: Box::new(tcp), control, tls: false }),
    }
}

/// The credentials to log in with now: the provider's, if one is set.
pub(crate) async fn credentials(options: &ConnectionOptions) -> Result<Credentials, Error> {
    match options.get_credentials_provider() {
        Some(provider) => provider().await,
        None => Ok(options.get_credentials().clone()),
    }
}

/// A state machine for a new connection, its handshake queued.
pub(crate) async fn state_machine(
    options: &ConnectionOptions,
) -> Result<proto::Connection<crate::command::DriverTokens>, Error> {
    let credentials = credentials(options).await?;
    let config = crate::client_config::build(options, &credentials)?;
    Ok(proto::Connection::new(config, std::time::Instant::now()))
}
