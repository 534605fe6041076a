//! Everything a connection is opened with: where, as whom, with which limits and timeouts.
//!
//! ```
//! use std::time::Duration;
//! use lepus::options::ConnectionOptions;
//!
//! let opts = ConnectionOptions::from_uri("amqp://app:s3cret@rabbit.internal/orders?heartbeat=30")?
//!     .connection_name("billing")
//!     .connection_timeout(Duration::from_secs(5));
//! assert_eq!(opts.get_vhost(), "orders");
//! // Display writes the URI back, without the password.
//! assert_eq!(
//!     opts.to_string(),
//!     "amqp://app:***@rabbit.internal:5672/orders?heartbeat=30&connection_timeout=5000&connection_name=billing"
//! );
//! # Ok::<(), lepus::uri::UriError>(())
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use lepus_codec::Limits;

use crate::auth::{AuthMechanism, Credentials, Password};
use crate::recovery::{Address, AddressOrder, CredentialsProvider, RecoveryOptions};
use crate::tls::TlsOptions;
use crate::uri::{AMQP_PORT, AMQPS_PORT, DEFAULT_VHOST, ParsedUri, UriError};

/// How to open a connection. Build it with [`ConnectionOptions::new`] or
/// [`ConnectionOptions::from_uri`] and the setters, each of which takes and returns the
/// options; read it back with the `get_*` methods.
///
/// `Debug` and `Display` never show the password. `Display` is the URI form: the
/// URI-expressible settings that differ from the defaults (not TLS details, the message
/// size cap, the publish window or the blocked-publish timeout).
#[derive(Clone)]
pub struct ConnectionOptions {
    // The fields are crate-visible for the driver; users go through the getters, so that
    // the representation can change.
    pub(crate) host: String,
    /// `None`: the default for the transport, 5672 or 5671 with TLS (see `get_port`).
    pub(crate) port: Option<u16>,
    pub(crate) credentials: Credentials,
    pub(crate) vhost: String,
    pub(crate) heartbeat: u16,
    pub(crate) frame_max: u32,
    pub(crate) channel_max: u16,
    pub(crate) connection_timeout: Duration,
    pub(crate) auth_mechanism: AuthMechanism,
    pub(crate) connection_name: Option<String>,
    pub(crate) tls: Option<TlsOptions>,
    pub(crate) max_message_size: u64,
    pub(crate) publish_window: usize,
    pub(crate) blocked_publish_timeout: Option<Duration>,
    pub(crate) call_timeout: Option<Duration>,
    pub(crate) close_timeout: Duration,
    pub(crate) max_unread_bytes: usize,
    /// Addresses after the first (`host`, `port`).
    pub(crate) more_addresses: Vec<Address>,
    pub(crate) address_order: AddressOrder,
    pub(crate) recovery: RecoveryOptions,
    pub(crate) credentials_provider: Option<CredentialsProvider>,
}

impl fmt::Debug for ConnectionOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("more_addresses", &self.more_addresses)
            .field("address_order", &self.address_order)
            .field("credentials", &self.credentials)
            .field("credentials_provider", &self.credentials_provider.is_some())
            .field("vhost", &self.vhost)
            .field("heartbeat", &self.heartbeat)
            .field("frame_max", &self.frame_max)
            .field("channel_max", &self.channel_max)
            .field("connection_timeout", &self.connection_timeout)
            .field("auth_mechanism", &self.auth_mechanism)
            .field("connection_name", &self.connection_name)
            .field("tls", &self.tls)
            .field("max_message_size", &self.max_message_size)
            .field("publish_window", &self.publish_window)
            .field("blocked_publish_timeout", &self.blocked_publish_timeout)
            .field("call_timeout", &self.call_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("max_unread_bytes", &self.max_unread_bytes)
            .field("recovery", &self.recovery)
            .finish()
    }
}

impl ConnectionOptions {
    /// The default host.
    pub const DEFAULT_HOST: &'static str = "127.0.0.1";
    /// The default heartbeat interval asked for, in seconds (RabbitMQ's own default).
    pub const DEFAULT_HEARTBEAT: u16 = 60;
    /// The default largest frame asked for (RabbitMQ's own default).
    pub const DEFAULT_FRAME_MAX: u32 = 131_072;
    /// The default highest channel number asked for (RabbitMQ's own default).
    pub const DEFAULT_CHANNEL_MAX: u16 = 2047;
    /// The default time allowed for TCP connect, TLS and the AMQP handshake together.
    pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default cap on publishes awaiting a broker confirm, per channel.
    pub const DEFAULT_PUBLISH_WINDOW: usize = 1000;
    /// The default time `connection.close` waits for the broker's `close-ok`.
    pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
    /// The default cap on delivered bytes the application has not taken yet, across all
    /// consumers of the connection, before the socket stops being read.
    pub const DEFAULT_MAX_UNREAD_BYTES: usize = 16 << 20;

    /// `amqp://guest:guest@127.0.0.1:5672/` with PLAIN, heartbeat 60 s, `frame_max` 131072,
    /// `channel_max` 2047, a 30 s connection timeout, no TLS, a 128 MiB message cap, a
    /// publish window of 1000 and no blocked-publish timeout.
    ///
    /// ```
    /// use lepus::options::ConnectionOptions;
    /// let opts = ConnectionOptions::new().host("rabbit.internal").credentials("app", "s3cret").vhost("orders");
    /// assert_eq!(opts.get_port(), 5672);
    /// assert!(!format!("{opts:?}").contains("s3cret"));
    /// ```
    pub fn new() -> Self {
        ConnectionOptions {
            host: Self::DEFAULT_HOST.to_owned(),
            port: None,
            credentials: Credentials::default(),
            vhost: DEFAULT_VHOST.to_owned(),
            heartbeat: Self::DEFAULT_HEARTBEAT,
            frame_max: Self::DEFAULT_FRAME_MAX,
            channel_max: Self::DEFAULT_CHANNEL_MAX,
            connection_timeout: Self::DEFAULT_CONNECTION_TIMEOUT,
            auth_mechanism: AuthMechanism::Plain,
            connection_name: None,
            tls: None,
            max_message_size: Limits::DEFAULT_MAX_MESSAGE_SIZE,
            publish_window: Self::DEFAULT_PUBLISH_WINDOW,
            blocked_publish_timeout: None,
            call_timeout: None,
            close_timeout: Self::DEFAULT_CLOSE_TIMEOUT,
            max_unread_bytes: Self::DEFAULT_MAX_UNREAD_BYTES,
            more_addresses: Vec::new(),
            address_order: AddressOrder::InOrder,
            recovery: RecoveryOptions::new(),
            credentials_provider: None,
        }
    }

    /// Options from an AMQP URI (see [`crate::uri`] for the syntax); what the URI leaves out
    /// keeps the default of [`ConnectionOptions::new`], as RabbitMQ's URI specification
    /// asks (so `amqp://alice@host` logs in as `alice` with the default password).
    ///
    /// `amqps://` turns on TLS with [`TlsOptions::new`]: the system's root certificates,
    /// falling back to the bundled Mozilla roots if the system has none (see
    /// [`Roots::System`](crate::tls::Roots::System)). Call [`ConnectionOptions::tls`]
    /// afterwards to trust a private CA or to present a client certificate.
    ///
    /// ```
    /// use lepus::options::ConnectionOptions;
    /// let opts = ConnectionOptions::from_uri("amqps://rabbit.example.com/%2F?auth_mechanism=external")?;
    /// assert!(opts.get_tls().is_some());
    /// assert_eq!(opts.get_port(), 5671);
    /// assert_eq!(opts.get_vhost(), "/");
    /// # Ok::<(), lepus::uri::UriError>(())
    /// ```
    pub fn from_uri(uri: &str) -> Result<Self, UriError> {
        let parsed = ParsedUri::parse(uri)?;
        let mut opts = ConnectionOptions::new();
        if let Some(host) = parsed.host {
            opts.host = host;
        }
        opts.port = Some(parsed.port);
        if let Some(username) = parsed.username {
            opts.credentials.username = username;
        }
        if let Some(password) = parsed.password {
            opts.credentials.password = password;
        }
        opts.vhost = parsed.vhost;
        if parsed.tls {
            opts.tls = Some(TlsOptions::new());
        }
        opts.heartbeat = parsed.heartbeat.unwrap_or(opts.heartbeat);
        opts.frame_max = parsed.frame_max.unwrap_or(opts.frame_max);
        opts.channel_max = parsed.channel_max.unwrap_or(opts.channel_max);
        opts.connection_timeout = parsed.connection_timeout.unwrap_or(opts.connection_timeout);
        opts.auth_mechanism = parsed.auth_mechanism.unwrap_or(opts.auth_mechanism);
        opts.connection_name = parsed.connection_name;
        opts.more_addresses = parsed.more_addresses;
        Ok(opts)
    }

    /// Options from several URIs naming the nodes of one cluster: the settings come from the
    /// first, the addresses from all (each URI's host and port, and its further addresses).
    ///
    /// ```
    /// use lepus::options::ConnectionOptions;
    /// let opts = ConnectionOptions::from_uris(&["amqp://app:pw@node1:5672/orders", "amqp://node2:5673"])?;
    /// let ports: Vec<u16> = opts.get_addresses().iter().map(|a| a.port).collect();
    /// assert_eq!(ports, [5672, 5673]);
    /// # Ok::<(), lepus::uri::UriError>(())
    /// ```
    pub fn from_uris(uris: &[&str]) -> Result<Self, UriError> {
        let Some((first, rest)) = uris.split_first() else { return Err(UriError::MissingScheme) };
        let mut opts = Self::from_uri(first)?;
        for uri in rest {
            let parsed = ParsedUri::parse(uri)?;
            let host = parsed.host.unwrap_or_else(|| Self::DEFAULT_HOST.to_owned());
            opts.more_addresses.push(Address { host, port: parsed.port });
            opts.more_addresses.extend(parsed.more_addresses);
        }
        Ok(opts)
    }

    /// Further broker addresses after the first ([`ConnectionOptions::host`] and
    /// [`ConnectionOptions::port`]), e.g. the other nodes of a cluster. Connecting and
    /// recovering try them in turn (see [`ConnectionOptions::address_order`]).
    #[must_use]
    pub fn more_addresses(mut self, addresses: impl IntoIterator<Item = Address>) -> Self {
        self.more_addresses = addresses.into_iter().collect();
        self
    }

    /// The order the addresses are tried in (in the order given, by default).
    #[must_use]
    pub fn address_order(mut self, order: AddressOrder) -> Self {
        self.address_order = order;
        self
    }

    /// How the connection recovers (on by default; see [`RecoveryOptions`]).
    #[must_use]
    pub fn recovery(mut self, recovery: RecoveryOptions) -> Self {
        self.recovery = recovery;
        self
    }

    /// Called at each connect and reconnect for the credentials to log in with (instead of
    /// [`ConnectionOptions::credentials`]), so a refreshed token or a rotated password is
    /// used. On a live connection, [`crate::Connection::update_secret`] replaces the secret.
    ///
    /// ```
    /// use lepus::{Credentials, options::ConnectionOptions};
    /// let opts = ConnectionOptions::new().credentials_provider(|| async {
    ///     // e.g. fetch a fresh OAuth 2 token here
    ///     Ok(Credentials::new("app", "fresh-token"))
    /// });
    /// # let _ = opts;
    /// ```
    #[must_use]
    pub fn credentials_provider<F, Fut>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Credentials, crate::Error>> + Send + 'static,
    {
        self.credentials_provider = Some(std::sync::Arc::new(move || Box::pin(provider())));
        self
    }

    /// The host to connect to: a DNS name or an IP address (IPv6 without brackets).
    #[must_use]
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// The port. Without one, 5672, or 5671 once [`ConnectionOptions::tls`] is set.
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The user name and password.
    #[must_use]
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<Password>) -> Self {
        self.credentials = Credentials::new(username, password);
        self
    }

    /// The virtual host (`"/"` by default).
    #[must_use]
    pub fn vhost(mut self, vhost: impl Into<String>) -> Self {
        self.vhost = vhost.into();
        self
    }

    /// The heartbeat interval to ask for, in seconds; 0 asks for none. The broker's
    /// `connection.tune` may lower it.
    #[must_use]
    pub fn heartbeat(mut self, seconds: u16) -> Self {
        self.heartbeat = seconds;
        self
    }

    /// The largest frame to ask for, in bytes; 0 means no limit. A value below 4096, the
    /// AMQP minimum, is raised to 4096.
    #[must_use]
    pub fn frame_max(mut self, bytes: u32) -> Self {
        self.frame_max = if bytes == 0 { 0 } else { bytes.max(Limits::FRAME_MIN_SIZE) };
        self
    }

    /// The highest channel number to ask for; 0 means no limit (65535).
    #[must_use]
    pub fn channel_max(mut self, channels: u16) -> Self {
        self.channel_max = channels;
        self
    }

    /// The time allowed for the TCP connect, the TLS handshake and the AMQP handshake
    /// together.
    #[must_use]
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// The SASL mechanism. [`AuthMechanism::External`] needs a client certificate
    /// ([`TlsOptions::client_auth_pem`]).
    #[must_use]
    pub fn auth_mechanism(mut self, mechanism: AuthMechanism) -> Self {
        self.auth_mechanism = mechanism;
        self
    }

    /// A name for the connection, shown in the RabbitMQ management UI.
    #[must_use]
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = Some(name.into());
        self
    }

    /// Connects with TLS.
    #[must_use]
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The largest message body accepted from the broker (128 MiB by default, RabbitMQ's
    /// own maximum); a larger one closes the connection with an error.
    #[must_use]
    pub fn max_message_size(mut self, bytes: u64) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// How many publishes a confirming channel may have awaiting the broker's confirm
    /// (1000 by default); a publish beyond it waits for room. 0 is taken as 1.
    #[must_use]
    pub fn publish_window(mut self, publishes: usize) -> Self {
        self.publish_window = publishes.max(1);
        self
    }

    /// A deadline for every call a handle makes (`None`, the default: no deadline). It covers
    /// every wait a call can make: for the command to be taken while the socket is backed up,
    /// for a blocked connection or a paused channel, for room in the confirm window, for the
    /// broker's reply, and for a publisher confirm. A call past it fails with
    /// [`crate::Error::Timeout`]. Waiting for the next delivery of a consumer is not a call
    /// and is not bounded. [`crate::Connection::with_timeout`] and
    /// [`crate::Channel::with_timeout`] set it per handle.
    ///
    /// With heartbeats on, a dead broker fails every call within two heartbeat intervals
    /// anyway; this bounds calls when heartbeats are off, and bounds a live but slow broker.
    #[must_use]
    pub fn call_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// How long a close waits for the broker's `close-ok` (5 s by default). Past it the
    /// socket is closed anyway and [`crate::Connection::close`] reports
    /// [`crate::Error::CloseNotConfirmed`].
    #[must_use]
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// How many delivered bytes (each delivery counted at least 512) the application may
    /// leave untaken across all consumers before the connection stops reading the socket
    /// (16 MiB by default). Each consumer's backlog is bounded by the broker's prefetch
    /// ([`crate::Channel::basic_qos`]); this bounds consumers without one (and `no_ack`
    /// consumers, which prefetch does not limit). While reading is paused, a consumer that
    /// is not read holds up the others, so set a prefetch.
    #[must_use]
    pub fn max_unread_bytes(mut self, bytes: usize) -> Self {
        self.max_unread_bytes = bytes.max(1);
        self
    }

    /// How long a publish may wait while the broker has blocked the connection (a memory or
    /// disk alarm) before it fails; `None`, the default, waits until the broker unblocks.
    #[must_use]
    pub fn blocked_publish_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.blocked_publish_timeout = timeout;
        self
    }

    /// The host.
    pub fn get_host(&self) -> &str {
        &self.host
    }

    /// The port: as set, or the default for the transport (5672, or 5671 with TLS).
    pub fn get_port(&self) -> u16 {
        self.port.unwrap_or(if self.tls.is_some() { AMQPS_PORT } else { AMQP_PORT })
    }

    /// The credentials.
    pub fn get_credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The virtual host.
    pub fn get_vhost(&self) -> &str {
        &self.vhost
    }

    /// The heartbeat interval asked for, in seconds.
    pub fn get_heartbeat(&self) -> u16 {
        self.heartbeat
    }

    /// The largest frame asked for.
    pub fn get_frame_max(&self) -> u32 {
        self.frame_max
    }

    /// The highest channel number asked for.
    pub fn get_channel_max(&self) -> u16 {
        self.channel_max
    }

    /// The connection timeout.
    pub fn get_connection_timeout(&self) -> Duration {
        self.connection_timeout
    }

    /// The SASL mechanism.
    pub fn get_auth_mechanism(&self) -> AuthMechanism {
        self.auth_mechanism
    }

    /// The connection name, if set.
    pub fn get_connection_name(&self) -> Option<&str> {
        self.connection_name.as_deref()
    }

    /// The TLS options, if TLS is on.
    pub fn get_tls(&self) -> Option<&TlsOptions> {
        self.tls.as_ref()
    }

    /// The largest message body accepted.
    pub fn get_max_message_size(&self) -> u64 {
        self.max_message_size
    }

    /// The publish window.
    pub fn get_publish_window(&self) -> usize {
        self.publish_window
    }

    /// The blocked-publish timeout.
    pub fn get_blocked_publish_timeout(&self) -> Option<Duration> {
        self.blocked_publish_timeout
    }

    /// The deadline of every call (see [`ConnectionOptions::call_timeout`]).
    pub fn get_call_timeout(&self) -> Option<Duration> {
        self.call_timeout
    }

    /// How long a close waits for `close-ok`.
    pub fn get_close_timeout(&self) -> Duration {
        self.close_timeout
    }

    /// The cap on delivered bytes not yet taken by the application.
    pub fn get_max_unread_bytes(&self) -> usize {
        self.max_unread_bytes
    }

    /// Every address, the first one (host and port) first.
    pub fn get_addresses(&self) -> Vec<Address> {
        let mut all = vec![Address { host: self.host.clone(), port: self.get_port() }];
        all.extend(self.more_addresses.iter().cloned());
        all
    }

    /// The order the addresses are tried in.
    pub fn get_address_order(&self) -> AddressOrder {
        self.address_order
    }

    /// How the connection recovers.
    pub fn get_recovery(&self) -> &RecoveryOptions {
        &self.recovery
    }

    /// The credentials provider, if one is set.
    pub fn get_credentials_provider(&self) -> Option<&CredentialsProvider> {
        self.credentials_provider.as_ref()
    }

    /// The URI form, as a [`ParsedUri`] with the settings that differ from the defaults.
    fn to_parsed_uri(&self) -> ParsedUri {
        fn differs<T: PartialEq>(value: T, default: &T) -> Option<T> {
            (value != *default).then_some(value)
        }
        let defaults = ConnectionOptions::new();
        ParsedUri {
            tls: self.tls.is_some(),
            username: Some(self.credentials.username.clone()),
            password: Some(self.credentials.password.clone()),
            host: Some(self.host.clone()),
            port: self.get_port(),
            vhost: self.vhost.clone(),
            more_addresses: self.more_addresses.clone(),
            heartbeat: differs(self.heartbeat, &defaults.heartbeat),
            frame_max: differs(self.frame_max, &defaults.frame_max),
            channel_max: differs(self.channel_max, &defaults.channel_max),
            connection_timeout: differs(self.connection_timeout, &defaults.connection_timeout),
            auth_mechanism: differs(self.auth_mechanism, &defaults.auth_mechanism),
            connection_name: self.connection_name.clone(),
        }
    }
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        ConnectionOptions::new()
    }
}

impl FromStr for ConnectionOptions {
    type Err = UriError;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        ConnectionOptions::from_uri(uri)
    }
}

impl fmt::Display for ConnectionOptions {
    /// The URI form, password written `***`; see [`ConnectionOptions`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.to_parsed_uri(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Roots;

    #[test]
    fn defaults() {
        let o = ConnectionOptions::new();
        assert_eq!(o.get_host(), "127.0.0.1");
        assert_eq!(o.get_port(), 5672);
        assert_eq!(o.get_credentials(), &Credentials::new("guest", "guest"));
        assert_eq!(o.get_vhost(), "/");
        assert_eq!(o.get_heartbeat(), 60);
        assert_eq!(o.get_frame_max(), 131_072);
        assert_eq!(o.get_channel_max(), 2047);
        assert_eq!(o.get_connection_timeout(), Duration::from_secs(30));
        assert_eq!(o.get_auth_mechanism(), AuthMechanism::Plain);
        assert_eq!(o.get_connection_name(), None);
        assert!(o.get_tls().is_none());
        assert_eq!(o.get_max_message_size(), 128 << 20);
        assert_eq!(o.get_publish_window(), 1000);
        assert_eq!(o.get_blocked_publish_timeout(), None);
        assert_eq!(o.to_string(), "amqp://guest:***@127.0.0.1:5672");
        assert_eq!(ConnectionOptions::default().to_string(), o.to_string());
    }

    #[test]
    fn setters() {
        let o = ConnectionOptions::new()
            .host("::1")
            .credentials("app", "pw")
            .vhost("v/h")
            .heartbeat(0)
            .frame_max(100)
            .channel_max(0)
            .connection_timeout(Duration::from_millis(1500))
            .auth_mechanism(AuthMechanism::AmqPlain)
            .connection_name("name & more")
            .max_message_size(1 << 20)
            .publish_window(0)
            .blocked_publish_timeout(Some(Duration::from_secs(2)));
        assert_eq!(o.get_host(), "::1");
        assert_eq!(o.get_credentials().username, "app");
        assert_eq!(o.get_credentials().password.expose(), "pw");
        assert_eq!(o.get_vhost(), "v/h");
        assert_eq!(o.get_heartbeat(), 0);
        assert_eq!(o.get_frame_max(), 4096, "raised to the AMQP minimum");
        assert_eq!(ConnectionOptions::new().frame_max(0).get_frame_max(), 0);
        assert_eq!(o.get_channel_max(), 0);
        assert_eq!(o.get_connection_timeout(), Duration::from_millis(1500));
        assert_eq!(o.get_auth_mechanism(), AuthMechanism::AmqPlain);
        assert_eq!(o.get_connection_name(), Some("name & more"));
        assert_eq!(o.get_max_message_size(), 1 << 20);
        assert_eq!(o.get_publish_window(), 1, "0 is taken as 1");
        assert_eq!(o.get_blocked_publish_timeout(), Some(Duration::from_secs(2)));
        assert_eq!(
            o.to_string(),
            "amqp://app:***@[::1]:5672/v%2Fh?heartbeat=0&frame_max=4096&channel_max=0\
             &connection_timeout=1500&auth_mechanism=amqplain&connection_name=name%20%26%20more"
        );
    }

    #[test]
    fn tls_changes_the_default_port_only() {
        let o = ConnectionOptions::new().tls(TlsOptions::new());
        assert_eq!(o.get_port(), 5671);
        assert_eq!(o.to_string(), "amqps://guest:***@127.0.0.1:5671");
        let o = ConnectionOptions::new().port(5999).tls(TlsOptions::new());
        assert_eq!(o.get_port(), 5999);
        let o = ConnectionOptions::new().tls(TlsOptions::new()).port(5672);
        assert_eq!(o.get_port(), 5672);
    }

    #[test]
    fn from_uri_fills_what_the_uri_gives() {
        let o = ConnectionOptions::from_uri(
            "amqps://alice:wonder%40land@broker:1234/prod?heartbeat=15&frame_max=8192&channel_max=10\
             &connection_timeout=2500&auth_mechanism=External&connection_name=svc+a",
        )
        .unwrap();
        assert_eq!(o.get_host(), "broker");
        assert_eq!(o.get_port(), 1234);
        assert_eq!(o.get_credentials(), &Credentials::new("alice", "wonder@land"));
        assert_eq!(o.get_vhost(), "prod");
        assert_eq!(o.get_heartbeat(), 15);
        assert_eq!(o.get_frame_max(), 8192);
        assert_eq!(o.get_channel_max(), 10);
        assert_eq!(o.get_connection_timeout(), Duration::from_millis(2500));
        assert_eq!(o.get_auth_mechanism(), AuthMechanism::External);
        assert_eq!(o.get_connection_name(), Some("svc a"));
        assert_eq!(o.get_tls().map(TlsOptions::get_roots), Some(Roots::System));

        // Left out: defaults, including the password of a URI that names only the user.
        let o = ConnectionOptions::from_uri("amqp://alice@").unwrap();
        assert_eq!(o.get_host(), "127.0.0.1");
        assert_eq!(o.get_port(), 5672);
        assert_eq!(o.get_credentials(), &Credentials::new("alice", "guest"));
        assert_eq!(o.get_vhost(), "/");
        assert_eq!(o.get_heartbeat(), 60);
        assert!(o.get_tls().is_none());
        assert_eq!(ConnectionOptions::from_uri("amqp://h/").unwrap().get_vhost(), "");
        assert_eq!(ConnectionOptions::from_uri("amqps://h").unwrap().get_port(), 5671);
        assert_eq!("amqp://[::1]:1".parse::<ConnectionOptions>().unwrap().get_host(), "::1");

        assert!(matches!(ConnectionOptions::from_uri("amqp://h?x=1"), Err(UriError::UnknownParameter { .. })));
    }

    #[test]
    fn display_round_trips_except_the_password() {
        let uri = "amqps://alice:***@broker:1234/prod?heartbeat=15&connection_name=svc%20a";
        let o = ConnectionOptions::from_uri(uri).unwrap();
        assert_eq!(o.to_string(), uri);
        let again = ConnectionOptions::from_uri(&o.to_string()).unwrap();
        assert_eq!(again.to_string(), uri);
    }

    #[test]
    fn password_is_never_shown() {
        let secret = "Qv7SecretPw";
        for o in [
            ConnectionOptions::new().credentials("u", secret),
            ConnectionOptions::from_uri(&format!("amqps://u:{secret}@h/v?connection_name=n")).unwrap(),
            ConnectionOptions::new().credentials("u", secret).tls(TlsOptions::new().server_name("h")),
        ] {
            for shown in [format!("{o}"), format!("{o:?}"), format!("{o:#?}")] {
                assert!(!shown.contains(secret), "{shown}");
                assert!(shown.contains("***"), "{shown}");
            }
        }
    }
}
