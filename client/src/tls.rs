//! TLS (`amqps://`) with rustls and the `ring` crypto provider.
//!
//! [`TlsOptions`] says which certificate authorities to trust, which client certificate to
//! present for mutual TLS, and which name to verify the server against. TLS 1.2 and 1.3
//! only; the crypto provider is passed explicitly, so nothing depends on a process-wide
//! rustls default.
//!
//! ```no_run
//! use lepus::tls::{Roots, TlsOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Trust only the broker's private CA, present a client certificate, and verify the
//! // server's certificate against a name other than the host connected to.
//! let tls = TlsOptions::new()
//!     .roots(Roots::None)
//!     .add_ca_pem(&std::fs::read("/etc/rabbitmq/ca.pem")?)?
//!     .client_auth_pem(&std::fs::read("client.pem")?, &std::fs::read("client.key")?)?
//!     .server_name("rabbit.internal");
//! # Ok(()) }
//! ```
//!
//! PEM inputs are checked when given:
//!
//! ```
//! use lepus::tls::{PemInput, TlsError, TlsOptions};
//!
//! let err = TlsOptions::new().add_ca_pem(b"not PEM at all").unwrap_err();
//! assert!(matches!(err, TlsError::NoCertificates { input: PemInput::CaCertificates }));
//! ```

use std::fmt;
use std::io;
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The set of root certificates a [`TlsOptions`] starts from, before
/// [`TlsOptions::add_ca_pem`] adds more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Roots {
    /// The operating system's trust store (read with `rustls-native-certs`; on Linux it
    /// honours `SSL_CERT_FILE` and `SSL_CERT_DIR`). If it yields no usable certificate at
    /// all, as in a minimal container without `ca-certificates`, the Mozilla roots of
    /// [`Roots::WebPki`] are used instead, so that brokers with public certificates still
    /// verify. The default.
    #[default]
    System,
    /// The Mozilla root program's certificates compiled into the binary (`webpki-roots`).
    WebPki,
    /// No roots: only the CAs added with [`TlsOptions::add_ca_pem`].
    None,
}

/// How to set up TLS to the broker: trusted roots, an optional client certificate, an
/// optional server name. Cheap to clone; `Debug` shows no key material.
///
/// Certificates and keys are parsed when they are added, so a bad PEM file is reported by
/// the call that gives it.
#[derive(Clone, Default)]
pub struct TlsOptions {
    roots: Roots,
    extra_roots: Vec<CertificateDer<'static>>,
    client_auth: Option<ClientAuth>,
    server_name: Option<String>,
}

#[derive(Clone)]
struct ClientAuth {
    chain: Vec<CertificateDer<'static>>,
    // PrivateKeyDer is not Clone (on purpose); the Arc lets TlsOptions be.
    key: Arc<PrivateKeyDer<'static>>,
}

impl TlsOptions {
    /// System roots, no client certificate, the server's name taken from the host.
    pub fn new() -> Self {
        TlsOptions::default()
    }

    /// Chooses the root certificates to start from.
    #[must_use]
    pub fn roots(mut self, roots: Roots) -> Self {
        self.roots = roots;
        self
    }

    /// Also trusts every CA certificate in `pem` (one or more `CERTIFICATE` blocks; other
    /// blocks are skipped).
    pub fn add_ca_pem(mut self, pem: &[u8]) -> Result<Self, TlsError> {
        let certs = parse_certs(pem, PemInput::CaCertificates)?;
        for cert in &certs {
            // Parse it as a trust anchor now, so that the error names this call.
            RootCertStore::empty()
                .add(cert.clone())
                .map_err(|e| TlsError::BadCertificate { input: PemInput::CaCertificates, reason: e.to_string() })?;
        }
        self.extra_roots.extend(certs);
        Ok(self)
    }

    /// Presents a client certificate for mutual TLS (and for RabbitMQ's `EXTERNAL`
    /// mechanism): `cert_chain_pem` holds the client's certificate first, then any
    /// intermediates; `key_pem` its private key (PKCS#8, PKCS#1 or SEC1).
    pub fn client_auth_pem(mut self, cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let chain = parse_certs(cert_chain_pem, PemInput::ClientCertificateChain)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            pem::Error::NoItemsFound => TlsError::NoCertificates { input: PemInput::ClientKey },
            // pem::Error can quote a line of its input: keep key material out of the message.
            _ => TlsError::BadPem { input: PemInput::ClientKey, reason: pem_error_kind(&e) },
        })?;
        // Let rustls check the key now (supported algorithm, matches the certificate)
        // rather than at the first connection.
        ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(RootCertStore::empty())
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| TlsError::BadKey { reason: e.to_string() })?;
        self.client_auth = Some(ClientAuth { chain, key: Arc::new(key) });
        Ok(self)
    }

    /// Verifies the server's certificate against `name`, and sends it as SNI, instead of
    /// the host connected to. A DNS name or an IP address (`"127.0.0.1"`, `"::1"`): an IP
    /// address is checked against the certificate's IP address entries, and not sent as
    /// SNI. Checked when connecting.
    #[must_use]
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// The roots started from.
    pub fn get_roots(&self) -> Roots {
        self.roots
    }

    /// The server name override, if set.
    pub fn get_server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// Whether a client certificate is configured.
    pub fn has_client_auth(&self) -> bool {
        self.client_auth.is_some()
    }
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("roots", &self.roots)
            .field("extra_roots", &self.extra_roots.len())
            .field("client_auth", &self.client_auth.as_ref().map(|auth| format!("{} certificate(s)", auth.chain.len())))
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// Which PEM input an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PemInput {
    /// The PEM given to [`TlsOptions::add_ca_pem`].
    CaCertificates,
    /// The certificate chain given to [`TlsOptions::client_auth_pem`].
    ClientCertificateChain,
    /// The private key given to [`TlsOptions::client_auth_pem`].
    ClientKey,
}

impl fmt::Display for PemInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PemInput::CaCertificates => "CA certificate PEM",
            PemInput::ClientCertificateChain => "client certificate chain PEM",
            PemInput::ClientKey => "client private key PEM",
        })
    }
}

/// A TLS setup or handshake failure, named for what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM input that does not parse.
    #[error("invalid {input}: {reason}")]
    BadPem {
        /// Which input.
        input: PemInput,
        /// What is wrong (never quotes key material).
        reason: String,
    },
    /// A PEM input without a single item of the kind wanted.
    #[error("no {} found in the {input}", if matches!(input, PemInput::ClientKey) { "private key" } else { "certificate" })]
    NoCertificates {
        /// Which input.
        input: PemInput,
    },
    /// A certificate that PEM-decodes but is not a usable X.509 certificate.
    #[error("unusable certificate in the {input}: {reason}")]
    BadCertificate {
        /// Which input.
        input: PemInput,
        /// What rustls reported.
        reason: String,
    },
    /// A client key that rustls cannot use, or that does not match the certificate.
    #[error("unusable client private key: {reason}")]
    BadKey {
        /// What rustls reported.
        reason: String,
    },
    /// A server name that is neither a DNS name nor an IP address.
    #[error("invalid TLS server name {name:?}: expected a DNS name or an IP address")]
    InvalidServerName {
        /// The name given.
        name: String,
    },
    /// No root certificate to verify the server with ([`Roots::None`] and no CA added).
    #[error("no root certificates to verify the server with: add the broker's CA or choose other roots")]
    NoRootCertificates,
    /// rustls refused the configuration.
    #[error("TLS configuration rejected: {0}")]
    Config(String),
    /// The server's certificate does not chain to a trusted root.
    #[error("the server's certificate is not trusted ({reason}): add its CA with add_ca_pem or check the roots")]
    UntrustedCertificate {
        /// The verifier's reason, e.g. an unknown issuer.
        reason: String,
    },
    /// The server's certificate is not valid for the name connected to.
    #[error(
        "the server's certificate is not valid for {expected:?} (it names {presented:?}): connect by one of those names or set server_name"
    )]
    WrongHostName {
        /// The name verified against.
        expected: String,
        /// The names the certificate holds, if rustls reported them.
        presented: Vec<String>,
    },
    /// The server's certificate has expired.
    #[error("the server's certificate has expired")]
    CertificateExpired,
    /// The server's certificate is not valid yet (or this machine's clock is behind).
    #[error("the server's certificate is not valid yet (is the clock right?)")]
    CertificateNotYetValid,
    /// Another problem with the server's certificate.
    #[error("the server's certificate is invalid: {0}")]
    InvalidCertificate(String),
    /// The server requires a client certificate and none was configured. With TLS 1.3
    /// this surfaces on the first read after the handshake, not in the handshake itself.
    #[error("the server requires a client certificate: configure one with client_auth_pem")]
    ClientCertificateRequired,
    /// The server refused our client certificate.
    #[error("the server rejected the client certificate (TLS alert {0})")]
    ClientCertificateRejected(String),
    /// The server dropped the connection right after the TLS handshake, before AMQP began.
    /// With TLS 1.3 the server checks the client certificate after the client considers
    /// the handshake done, and its alert can be lost to the reset that follows: this is
    /// what a missing or untrusted client certificate then looks like.
    #[error(
        "the server closed the connection right after the TLS handshake ({0}): it most likely refused the client \
         certificate (none configured, or signed by a CA it does not trust)"
    )]
    ClosedAfterHandshake(String),
    /// The server sent another fatal TLS alert.
    #[error("the server sent the TLS alert {0}")]
    AlertReceived(String),
    /// The peer does not speak TLS: probably a plain AMQP port (5672) given for `amqps`.
    #[error("the server did not answer with TLS: is this the plain AMQP port rather than the TLS one (5671)?")]
    NotTls,
    /// Any other handshake failure.
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// An I/O error that is not a TLS failure (connection reset or closed, ...).
    #[error("I/O error on the TLS connection: {0}")]
    Io(#[source] io::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn parse_certs(pem: &[u8], input: PemInput) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem { input, reason: pem_error_kind(&e) })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates { input });
    }
    Ok(certs)
}

/// A description of a PEM error that does not quote its input.
fn pem_error_kind(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line".to_owned(),
        pem::Error::IllegalSectionStart { .. } => "malformed BEGIN line".to_owned(),
        pem::Error::Base64Decode(_) => "invalid base64 inside a section".to_owned(),
        pem::Error::NoItemsFound => "nothing found".to_owned(),
        other => format!("{other:?}").chars().take_while(|c| c.is_alphanumeric()).collect(),
    }
}

/// Builds the rustls client configuration for `opts`: ring provider, TLS 1.2 and 1.3, the
/// chosen roots plus the added CAs, the client certificate if any.
///
/// Reading the system store costs a few milliseconds: build the connector once and keep it
/// for reconnections.
pub(crate) fn connector(opts: &TlsOptions) -> Result<TlsConnector, TlsError> {
    let mut roots = RootCertStore::empty();
    match opts.roots {
        Roots::System => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _unparsable) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
        }
        Roots::WebPki => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Roots::None => {}
    }
    for ca in &opts.extra_roots {
        roots
            .add(ca.clone())
            .map_err(|e| TlsError::BadCertificate { input: PemInput::CaCertificates, reason: e.to_string() })?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoRootCertificates);
    }

    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let config = match &opts.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => builder
            .with_client_auth_cert(auth.chain.clone(), auth.key.clone_key())
            .map_err(|e| TlsError::BadKey { reason: e.to_string() })?,
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The name to verify: the override, or else the host connected to (brackets of an IPv6
/// literal removed).
fn server_name(host: &str, opts: &TlsOptions) -> Result<ServerName<'static>, TlsError> {
    let name = opts.server_name.as_deref().unwrap_or(host);
    let bare = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
    ServerName::try_from(bare.to_owned()).map_err(|_| TlsError::InvalidServerName { name: name.to_owned() })
}

/// Runs the TLS handshake over `tcp` to `host` (or to the configured server name).
///
/// With TLS 1.3 a server that rejects the client (for a missing or untrusted client
/// certificate) does so after the client's side of the handshake is done: that error comes
/// from the first read; pass it through [`describe_io_error`].
pub(crate) async fn connect(tcp: TcpStream, host: &str, opts: &TlsOptions) -> Result<TlsStream<TcpStream>, TlsError> {
    let name = server_name(host, opts)?;
    let connector = connector(opts)?;
    connector.connect(name.clone(), tcp).await.map_err(|e| match describe_io_error(&e) {
        TlsError::WrongHostName { expected, presented } if expected.is_empty() => {
            TlsError::WrongHostName { expected: name.to_str().into_owned(), presented }
        }
        other => other,
    })
}

/// Turns an I/O error from a TLS stream (handshake, read or write) into the [`TlsError`]
/// that names its cause. rustls reports TLS failures as an `io::Error` wrapping a
/// [`rustls::Error`]; anything else becomes [`TlsError::Io`].
pub(crate) fn describe_io_error(e: &io::Error) -> TlsError {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(tls) => describe_rustls_error(tls),
        None => TlsError::Io(io::Error::new(e.kind(), e.to_string())),
    }
}

fn describe_rustls_error(e: &rustls::Error) -> TlsError {
    use CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::UnknownIssuer | C::BadSignature => TlsError::UntrustedCertificate { reason: format!("{cert:?}") },
            C::NotValidForName => TlsError::WrongHostName { expected: String::new(), presented: Vec::new() },
            C::NotValidForNameContext { expected, presented } => {
                TlsError::WrongHostName { expected: expected.to_str().into_owned(), presented: presented.clone() }
            }
            C::Expired | C::ExpiredContext { .. } => TlsError::CertificateExpired,
            C::NotValidYet | C::NotValidYetContext { .. } => TlsError::CertificateNotYetValid,
            _ => TlsError::InvalidCertificate(e.to_string()),
        },
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired => TlsError::ClientCertificateRequired,
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied => TlsError::ClientCertificateRejected(format!("{alert:?}")),
            other => TlsError::AlertReceived(format!("{other:?}")),
        },
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => TlsError::NotTls,
        other => TlsError::Handshake(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    use rustls::server::WebPkiClientVerifier;
    use rustls::{ServerConfig, SupportedProtocolVersion};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;
    use tokio_rustls::TlsAcceptor;

    use super::*;

    /// A certificate authority made for the test.
    struct Ca {
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    impl Ca {
        fn new(name: &str) -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
        }

        /// A leaf certificate for `names` (DNS names or IP addresses), for a server or a client.
        fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
            self.leaf_with(names, usage, |_| {})
        }

        fn leaf_with(
            &self,
            names: &[&str],
            usage: ExtendedKeyUsagePurpose,
            tweak: impl FnOnce(&mut CertificateParams),
        ) -> Leaf {
            let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, "lepus test");
            params.use_authority_key_identifier_extension = true;
            params.extended_key_usages = vec![usage];
            tweak(&mut params);
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
        }
    }

    struct Leaf {
        cert_pem: String,
        key_pem: String,
    }

    fn server_leaf(ca: &Ca) -> Leaf {
        ca.leaf(&["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client_opts(ca: &Ca) -> TlsOptions {
        TlsOptions::new().roots(Roots::None).add_ca_pem(ca.pem.as_bytes()).unwrap()
    }

    /// A TLS server on 127.0.0.1 for one connection: it completes the handshake, reads the
    /// 8-byte AMQP protocol header and answers `b"welcome!"`. The task reports the server's
    /// side of things.
    async fn serve(
        leaf: &Leaf,
        client_ca: Option<&Ca>,
        versions: &[&'static SupportedProtocolVersion],
    ) -> (SocketAddr, JoinHandle<Result<(), String>>) {
        let chain = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let builder = ServerConfig::builder_with_provider(provider()).with_protocol_versions(versions).unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap()).unwrap();
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build().unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(chain, key).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let mut tls = TlsAcceptor::from(Arc::new(config)).accept(tcp).await.map_err(|e| e.to_string())?;
            let mut header = [0u8; 8];
            tls.read_exact(&mut header).await.map_err(|e| e.to_string())?;
            tls.write_all(b"welcome!").await.map_err(|e| e.to_string())?;
            tls.shutdown().await.map_err(|e| e.to_string())
        });
        (addr, task)
    }

    /// Connects with lepus's `connect`, sends the protocol header and reads the answer,
    /// mapping any I/O error as the driver will.
    async fn exchange(addr: SocketAddr, host: &str, opts: &TlsOptions) -> Result<Vec<u8>, TlsError> {
        exchange_staged(addr, host, opts).await.map_err(|(_, e)| e)
    }

    /// Where an exchange failed.
    #[derive(Debug, PartialEq)]
    enum Stage {
        Handshake,
        AfterHandshake,
    }

    async fn exchange_staged(addr: SocketAddr, host: &str, opts: &TlsOptions) -> Result<Vec<u8>, (Stage, TlsError)> {
        let run = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| (Stage::Handshake, TlsError::Io(e)))?;
            let mut tls = connect(tcp, host, opts).await.map_err(|e| (Stage::Handshake, e))?;
            let after = |e: io::Error| (Stage::AfterHandshake, describe_io_error(&e));
            tls.write_all(&lepus_codec::PROTOCOL_HEADER).await.map_err(after)?;
            let mut answer = [0u8; 8];
            tls.read_exact(&mut answer).await.map_err(after)?;
            Ok(answer.to_vec())
        };
        tokio::time::timeout(Duration::from_secs(10), run).await.unwrap()
    }

    const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
    const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

    #[test]
    fn pem_errors_name_the_input() {
        let err = TlsOptions::new().add_ca_pem(b"garbage").unwrap_err();
        assert!(matches!(err, TlsError::NoCertificates { input: PemInput::CaCertificates }), "{err:?}");
        assert!(err.to_string().contains("CA certificate"), "{err}");

        let bad_base64 = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let err = TlsOptions::new().add_ca_pem(bad_base64).unwrap_err();
        assert!(matches!(err, TlsError::BadPem { input: PemInput::CaCertificates, .. }), "{err:?}");

        let unterminated = b"-----BEGIN CERTIFICATE-----\nAAAA\n";
        let err = TlsOptions::new().add_ca_pem(unterminated).unwrap_err();
        assert!(matches!(err, TlsError::BadPem { input: PemInput::CaCertificates, .. }), "{err:?}");

        let not_a_cert = b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        let err = TlsOptions::new().add_ca_pem(not_a_cert).unwrap_err();
        assert!(matches!(err, TlsError::BadCertificate { input: PemInput::CaCertificates, .. }), "{err:?}");

        let ca = Ca::new("pem test CA");
        let client = ca.leaf(&["client"], ExtendedKeyUsagePurpose::ClientAuth);
        let err = TlsOptions::new().client_auth_pem(b"", client.key_pem.as_bytes()).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificates { input: PemInput::ClientCertificateChain }), "{err:?}");
        let err =
            TlsOptions::new().client_auth_pem(client.cert_pem.as_bytes(), client.cert_pem.as_bytes()).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificates { input: PemInput::ClientKey }), "{err:?}");
        assert!(err.to_string().contains("private key"), "{err}");

        // A broken key: the error does not quote it.
        let secret_line = "c2VjcmV0IGtleSBtYXRlcmlhbA=!";
        let broken_key = format!("-----BEGIN PRIVATE KEY-----\n{secret_line}\n-----END PRIVATE KEY-----\n");
        let err = TlsOptions::new().client_auth_pem(client.cert_pem.as_bytes(), broken_key.as_bytes()).unwrap_err();
        assert!(matches!(err, TlsError::BadPem { input: PemInput::ClientKey, .. }), "{err:?}");
        assert!(!format!("{err} {err:?}").contains("c2VjcmV0"), "{err:?}");

        // A well-formed key that is not the certificate's.
        let other = ca.leaf(&["other"], ExtendedKeyUsagePurpose::ClientAuth);
        let err = TlsOptions::new().client_auth_pem(client.cert_pem.as_bytes(), other.key_pem.as_bytes()).unwrap_err();
        assert!(matches!(err, TlsError::BadKey { .. }), "{err:?}");

        // Good inputs; Debug shows neither key nor certificate.
        let opts = TlsOptions::new()
            .add_ca_pem(ca.pem.as_bytes())
            .unwrap()
            .client_auth_pem(client.cert_pem.as_bytes(), client.key_pem.as_bytes())
            .unwrap();
        assert!(opts.has_client_auth());
        assert_eq!(opts.get_roots(), Roots::System);
        assert_eq!(opts.clone().server_name("x").get_server_name(), Some("x"));
        let shown = format!("{opts:?}");
        let key_body = client.key_pem.lines().nth(1).unwrap();
        assert!(!shown.contains(key_body), "{shown}");
        assert!(shown.contains("extra_roots: 1") && shown.contains("1 certificate(s)"), "{shown}");
    }

    #[test]
    fn root_choices() {
        assert!(matches!(connector(&TlsOptions::new().roots(Roots::None)), Err(TlsError::NoRootCertificates)));
        assert!(connector(&TlsOptions::new().roots(Roots::WebPki)).is_ok());
        // The system store, or the bundled roots when it is empty: never "no roots".
        assert!(connector(&TlsOptions::new()).is_ok());
        let ca = Ca::new("root choice CA");
        assert!(connector(&client_opts(&ca)).is_ok());
    }

    #[tokio::test]
    async fn invalid_server_name() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let err = connect(tcp, "localhost", &TlsOptions::new().server_name("not a name!")).await.unwrap_err();
        assert!(matches!(&err, TlsError::InvalidServerName { name } if name == "not a name!"), "{err:?}");
    }

    #[tokio::test]
    async fn handshake_with_the_right_ca_and_name() {
        let ca = Ca::new("good CA");
        for versions in [BOTH, TLS12] {
            let (addr, server) = serve(&server_leaf(&ca), None, versions).await;
            assert_eq!(exchange(addr, "localhost", &client_opts(&ca)).await.unwrap(), b"welcome!");
            server.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn another_ca_is_untrusted() {
        let (ca, other) = (Ca::new("server CA"), Ca::new("other CA"));
        let (addr, _server) = serve(&server_leaf(&ca), None, BOTH).await;
        let err = exchange(addr, "localhost", &client_opts(&other)).await.unwrap_err();
        assert!(matches!(err, TlsError::UntrustedCertificate { .. }), "{err:?}");
        assert!(err.to_string().contains("not trusted"), "{err}");
    }

    #[tokio::test]
    async fn wrong_host_name() {
        let ca = Ca::new("name CA");
        let (addr, _server) = serve(&server_leaf(&ca), None, BOTH).await;
        let err = exchange(addr, "rabbit.example", &client_opts(&ca)).await.unwrap_err();
        let TlsError::WrongHostName { expected, presented } = &err else { panic!("{err:?}") };
        assert_eq!(expected, "rabbit.example");
        assert!(presented.iter().any(|n| n.contains("localhost")), "{presented:?}");
        assert!(err.to_string().contains("rabbit.example"), "{err}");

        // The override is what gets verified, not the host.
        let (addr, _server) = serve(&server_leaf(&ca), None, BOTH).await;
        let opts = client_opts(&ca).server_name("elsewhere.example");
        let err = exchange(addr, "localhost", &opts).await.unwrap_err();
        assert!(matches!(&err, TlsError::WrongHostName { expected, .. } if expected == "elsewhere.example"), "{err:?}");
    }

    #[tokio::test]
    async fn ip_address_san() {
        let ca = Ca::new("IP CA");
        let leaf = ca.leaf(&["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
        // As the host connected to, and as an override of another host.
        let (addr, server) = serve(&leaf, None, BOTH).await;
        assert_eq!(exchange(addr, "127.0.0.1", &client_opts(&ca)).await.unwrap(), b"welcome!");
        server.await.unwrap().unwrap();
        let (addr, server) = serve(&leaf, None, BOTH).await;
        let opts = client_opts(&ca).server_name("127.0.0.1");
        assert_eq!(exchange(addr, "broker.example", &opts).await.unwrap(), b"welcome!");
        server.await.unwrap().unwrap();
        // A DNS name is not matched against an IP address entry.
        let (addr, _server) = serve(&leaf, None, BOTH).await;
        let err = exchange(addr, "localhost", &client_opts(&ca)).await.unwrap_err();
        assert!(matches!(err, TlsError::WrongHostName { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn expired_certificate() {
        let ca = Ca::new("expiry CA");
        let leaf = ca.leaf_with(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth, |p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        });
        let (addr, _server) = serve(&leaf, None, BOTH).await;
        let err = exchange(addr, "localhost", &client_opts(&ca)).await.unwrap_err();
        assert!(matches!(err, TlsError::CertificateExpired), "{err:?}");
    }

    #[tokio::test]
    async fn mutual_tls() {
        let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
        let client = client_ca.leaf(&["app"], ExtendedKeyUsagePurpose::ClientAuth);
        let with_cert = client_opts(&server_ca).client_auth_pem(client.cert_pem.as_bytes(), client.key_pem.as_bytes());
        let with_cert = with_cert.unwrap();

        for versions in [BOTH, TLS12] {
            let (addr, server) = serve(&server_leaf(&server_ca), Some(&client_ca), versions).await;
            assert_eq!(exchange(addr, "localhost", &with_cert).await.unwrap(), b"welcome!");
            server.await.unwrap().unwrap();

            // No client certificate. With TLS 1.3 the client's handshake completes and the
            // server's alert arrives on the first read; with TLS 1.2 the handshake fails.
            // Either way the error says what is missing.
            let (addr, server) = serve(&server_leaf(&server_ca), Some(&client_ca), versions).await;
            let (stage, err) = exchange_staged(addr, "localhost", &client_opts(&server_ca)).await.unwrap_err();
            assert!(matches!(err, TlsError::ClientCertificateRequired), "{versions:?}: {err:?}");
            let tls13 = versions.contains(&&rustls::version::TLS13);
            assert_eq!(stage, if tls13 { Stage::AfterHandshake } else { Stage::Handshake }, "{versions:?}");
            assert!(server.await.unwrap().is_err());

            // A client certificate from a CA the server does not trust.
            let stranger = server_ca.leaf(&["app"], ExtendedKeyUsagePurpose::ClientAuth);
            let opts =
                client_opts(&server_ca).client_auth_pem(stranger.cert_pem.as_bytes(), stranger.key_pem.as_bytes());
            let (addr, server) = serve(&server_leaf(&server_ca), Some(&client_ca), versions).await;
            let (stage, err) = exchange_staged(addr, "localhost", &opts.unwrap()).await.unwrap_err();
            assert!(matches!(err, TlsError::ClientCertificateRejected(_)), "{versions:?}: {err:?}");
            assert_eq!(stage, if tls13 { Stage::AfterHandshake } else { Stage::Handshake }, "{versions:?}");
            assert!(server.await.unwrap().is_err());
        }
    }

    /// `amqps` pointed at the plain AMQP port: the broker answers the `ClientHello` with its
    /// own protocol header and closes.
    #[tokio::test]
    async fn plain_amqp_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut hello = [0u8; 8];
            tcp.read_exact(&mut hello).await.unwrap();
            tcp.write_all(&lepus_codec::PROTOCOL_HEADER).await.unwrap();
        });
        let err = exchange(addr, "localhost", &TlsOptions::new().roots(Roots::WebPki)).await.unwrap_err();
        assert!(matches!(err, TlsError::NotTls), "{err:?}");
        assert!(err.to_string().contains("5671"), "{err}");
    }

    #[tokio::test]
    async fn connection_closed_during_handshake() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _server = tokio::spawn(async move { drop(listener.accept().await.unwrap()) });
        let err = exchange(addr, "localhost", &TlsOptions::new().roots(Roots::WebPki)).await.unwrap_err();
        assert!(matches!(err, TlsError::Io(_)), "{err:?}");
    }

    #[test]
    fn describe_plain_io_errors() {
        let err = describe_io_error(&io::Error::new(io::ErrorKind::ConnectionReset, "reset"));
        assert!(matches!(&err, TlsError::Io(e) if e.kind() == io::ErrorKind::ConnectionReset), "{err:?}");
        let wrapped =
            io::Error::new(io::ErrorKind::InvalidData, rustls::Error::AlertReceived(AlertDescription::DecodeError));
        assert!(matches!(describe_io_error(&wrapped), TlsError::AlertReceived(a) if a == "DecodeError"));
        let wrapped = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::NotValidYet),
        );
        assert!(matches!(describe_io_error(&wrapped), TlsError::CertificateNotYetValid));
        let wrapped =
            io::Error::new(io::ErrorKind::InvalidData, rustls::Error::InvalidCertificate(CertificateError::Revoked));
        assert!(matches!(describe_io_error(&wrapped), TlsError::InvalidCertificate(_)));
        let wrapped = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert!(matches!(describe_io_error(&wrapped), TlsError::Handshake(_)));
    }
}
