//! How a connection recovers: on by default, with exponential backoff and jitter, a give-up
//! rule, topology re-declaration, and what publishes and calls do while disconnected.

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use crate::{Credentials, Error};

/// How automatic recovery behaves. On by default; [`RecoveryOptions::disabled`] turns it off
/// (every handle then fails with the error that ended the connection, as before).
///
/// ```
/// use std::time::Duration;
/// use lepus::{ConnectionOptions, RecoveryOptions};
///
/// let opts = ConnectionOptions::new().recovery(
///     RecoveryOptions::new()
///         .backoff(Duration::from_millis(100), Duration::from_secs(5))
///         .give_up_after_attempts(Some(20)),
/// );
/// assert!(opts.get_recovery().is_enabled());
/// ```
#[derive(Clone)]
pub struct RecoveryOptions {
    pub(crate) enabled: bool,
    pub(crate) initial_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) max_duration: Option<Duration>,
    pub(crate) topology: bool,
    pub(crate) filter: Option<TopologyFilter>,
    pub(crate) republish_unconfirmed: bool,
    pub(crate) while_disconnected: WhileDisconnected,
    pub(crate) wait_timeout: Duration,
}

impl fmt::Debug for RecoveryOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveryOptions")
            .field("enabled", &self.enabled)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("max_attempts", &self.max_attempts)
            .field("max_duration", &self.max_duration)
            .field("topology", &self.topology)
            .field("filter", &self.filter.is_some())
            .field("republish_unconfirmed", &self.republish_unconfirmed)
            .field("while_disconnected", &self.while_disconnected)
            .field("wait_timeout", &self.wait_timeout)
            .finish()
    }
}

/// What a publish or a call does while the connection is recovering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WhileDisconnected {
    /// Wait for the connection to come back, up to [`RecoveryOptions::wait_timeout`] (and
    /// the call's own deadline); publishers are held back, nothing is buffered without bound.
    Wait,
    /// Fail at once with [`Error::Disconnected`]: nothing was sent.
    FailFast,
}

/// Decides which recorded objects are re-declared on recovery; `false` skips one.
pub type TopologyFilter = Arc<dyn Fn(&TopologyItem<'_>) -> bool + Send + Sync>;

/// A recorded object, as the [`TopologyFilter`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopologyItem<'a> {
    /// An exchange the application declared.
    Exchange {
        /// Its name.
        name: &'a str,
    },
    /// A queue the application declared.
    Queue {
        /// Its name (the broker's name for a server-named queue).
        name: &'a str,
        /// Whether the broker named it (it gets a new name on recovery).
        server_named: bool,
    },
    /// A queue or exchange-to-exchange binding.
    Binding {
        /// The source exchange.
        source: &'a str,
        /// The bound queue or exchange.
        destination: &'a str,
        /// The routing key.
        routing_key: &'a str,
    },
    /// A consumer.
    Consumer {
        /// The queue it consumes.
        queue: &'a str,
        /// Its tag.
        tag: &'a str,
    },
}

/// Called at each connect and reconnect for the credentials to log in with, so that a
/// refreshed OAuth 2 token or a rotated password is used. See
/// [`crate::ConnectionOptions::credentials_provider`].
pub type CredentialsProvider =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Credentials, Error>> + Send>> + Send + Sync>;

impl Default for RecoveryOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl RecoveryOptions {
    /// Recovery on: backoff from 200 ms doubling to 5 s with jitter (so a broker back from a
    /// restart is reached within about 5 s, as with the Java client's fixed interval), never giving up
    /// (except on errors that reconnecting cannot fix, see [`Error::is_recoverable`]),
    /// topology re-declared, unconfirmed publishes failed with [`Error::ConnectionLost`]
    /// (not republished), and publishes and calls waiting up to 60 s for the connection to
    /// come back.
    pub fn new() -> Self {
        RecoveryOptions {
            enabled: true,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_attempts: None,
            max_duration: None,
            topology: true,
            filter: None,
            republish_unconfirmed: false,
            while_disconnected: WhileDisconnected::Wait,
            wait_timeout: Duration::from_secs(60),
        }
    }

    /// Recovery off.
    pub fn disabled() -> Self {
        RecoveryOptions { enabled: false, ..Self::new() }
    }

    /// Whether recovery is on.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The first delay before reconnecting and the cap it doubles up to; each delay is
    /// drawn between half and all of its step (jitter), so that many clients do not
    /// reconnect in step.
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Gives up after this many failed attempts (`None`: never).
    #[must_use]
    pub fn give_up_after_attempts(mut self, attempts: Option<u32>) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Gives up once this long has passed since the connection was lost (`None`: never).
    #[must_use]
    pub fn give_up_after(mut self, duration: Option<Duration>) -> Self {
        self.max_duration = duration;
        self
    }

    /// Whether exchanges, queues, bindings, QoS, confirm mode and consumers are re-declared
    /// (on by default). Off, only the connection and its channels come back.
    #[must_use]
    pub fn topology(mut self, on: bool) -> Self {
        self.topology = on;
        self
    }

    /// Skips the recorded objects for which `filter` returns `false`.
    #[must_use]
    pub fn topology_filter(mut self, filter: impl Fn(&TopologyItem<'_>) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Arc::new(filter));
        self
    }

    /// Republishes, after recovery, the publishes that were awaiting their confirm when
    /// the connection was lost (at-least-once: the broker may have taken some of them
    /// already, so consumers may see duplicates). Their [`crate::PublisherConfirm`]s then
    /// resolve to the republished copy's confirm. Off by default: they fail with
    /// [`Error::ConnectionLost`] and the application decides. Costs a reference to each
    /// unconfirmed message's frames (no copy).
    #[must_use]
    pub fn republish_unconfirmed(mut self, on: bool) -> Self {
        self.republish_unconfirmed = on;
        self
    }

    /// What publishes and calls do while the connection is down (wait, by default).
    #[must_use]
    pub fn while_disconnected(mut self, policy: WhileDisconnected) -> Self {
        self.while_disconnected = policy;
        self
    }

    /// How long a publish or call waits for the connection to come back (60 s by default)
    /// before it fails with [`Error::Disconnected`]. This bounds calls and confirmed
    /// publishes sent just as the connection was lost too: they are held back for the
    /// replay, and fail once they have waited this long.
    #[must_use]
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// Whether publishes wait while disconnected.
    pub fn get_while_disconnected(&self) -> WhileDisconnected {
        self.while_disconnected
    }
}

/// How the addresses of a connection are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AddressOrder {
    /// In the order given, starting again from the first after the last.
    #[default]
    InOrder,
    /// Shuffled once per connection, so that clients spread over a cluster's nodes.
    Shuffled,
}
