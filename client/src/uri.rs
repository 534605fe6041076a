//! AMQP URIs, as RabbitMQ specifies them:
//! `amqp[s]://[user[:password]@][host][:port][/vhost][?parameter=value&...]`.
//!
//! - `amqp` defaults to port 5672, `amqps` (TLS) to 5671.
//! - The user name, password, host and vhost are percent-decoded. An IPv6 address goes in
//!   brackets: `amqp://[::1]:5672`.
//! - The vhost is the one path segment after the host: no path at all means the default
//!   vhost `/` (`amqp://host`); an empty segment is the vhost named `""` (`amqp://host/`);
//!   a vhost containing `/` is written `%2F` (`amqp://host/%2F` is `/`). A second unencoded
//!   `/` is an error.
//! - Query parameters: `heartbeat` (seconds), `frame_max` (bytes: 0 or at least 4096),
//!   `channel_max`, `connection_timeout` (milliseconds, above 0), `auth_mechanism` (`plain`,
//!   `amqplain` or `external`, any case) and `connection_name`. Their values are
//!   form-decoded: `%XX` escapes, and `+` for a space. Anything else is an error, as is a
//!   parameter given twice.
//!
//! Errors name the part and the value at fault but never the password. For that reason an
//! `@` anywhere after the host is refused: it means a user name or password holds an
//! unencoded `/`, `?` or `#` that cut it in two, and the rest would otherwise be echoed as
//! a vhost or a parameter. Write `@` in a vhost or a connection name as `%40`.
//!
//! ```
//! use lepus::uri::ParsedUri;
//!
//! let uri: ParsedUri = "amqps://app:s3cret@rabbit.internal/orders?heartbeat=30".parse()?;
//! assert!(uri.tls);
//! assert_eq!(uri.host.as_deref(), Some("rabbit.internal"));
//! assert_eq!(uri.port, 5671);
//! assert_eq!(uri.vhost, "orders");
//! assert_eq!(uri.heartbeat, Some(30));
//! assert_eq!(uri.to_string(), "amqps://app:***@rabbit.internal:5671/orders?heartbeat=30");
//! # Ok::<(), lepus::uri::UriError>(())
//! ```

use std::fmt::{self, Write as _};
use std::net::Ipv6Addr;
use std::str::FromStr;
use std::time::Duration;

use crate::auth::{AuthMechanism, Password};

/// The default port of `amqp://`.
pub const AMQP_PORT: u16 = 5672;
/// The default port of `amqps://`.
pub const AMQPS_PORT: u16 = 5671;
/// The vhost of a URI without a path.
pub const DEFAULT_VHOST: &str = "/";

/// The parts of an AMQP URI. A `None` is a part the URI left out, for the caller's default
/// (see [`ConnectionOptions::from_uri`](crate::options::ConnectionOptions::from_uri)); the
/// port and the vhost have defaults set by the URI specification itself and are filled in.
///
/// `Debug` and `Display` mask the password; `Display` writes the URI back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ParsedUri {
    /// `amqps://`: connect with TLS.
    pub tls: bool,
    /// The user name, decoded; `None` without userinfo (`amqp://host`).
    pub username: Option<String>,
    /// The password, decoded; `None` without a `:` in the userinfo.
    pub password: Option<Password>,
    /// The host, decoded, IPv6 without brackets; `None` if empty (`amqp://:5673`).
    pub host: Option<String>,
    /// The port: as given, or 5672 for `amqp`, 5671 for `amqps`.
    pub port: u16,
    /// The vhost, decoded: `/` without a path, `""` for a bare `/`.
    pub vhost: String,
    /// Further addresses after the first (`amqp://h1:5672,h2:5673/vhost`), tried in turn
    /// when connecting and recovering; each port defaults like the first one's.
    pub more_addresses: Vec<crate::recovery::Address>,
    /// `heartbeat`: the heartbeat interval to ask for, in seconds (0 disables).
    pub heartbeat: Option<u16>,
    /// `frame_max`: the largest frame to ask for, in bytes (0 for no limit).
    pub frame_max: Option<u32>,
    /// `channel_max`: the most channels to ask for (0 for no limit).
    pub channel_max: Option<u16>,
    /// `connection_timeout`, given in milliseconds.
    pub connection_timeout: Option<Duration>,
    /// `auth_mechanism`.
    pub auth_mechanism: Option<AuthMechanism>,
    /// `connection_name`, decoded: shown in the RabbitMQ management UI.
    pub connection_name: Option<String>,
}

impl ParsedUri {
    /// Parses an AMQP URI; see the [module documentation](self) for the rules.
    ///
    /// ```
    /// use lepus::uri::{ParsedUri, UriError};
    ///
    /// assert_eq!(ParsedUri::parse("amqp://localhost")?.vhost, "/");
    /// assert_eq!(ParsedUri::parse("amqp://localhost/")?.vhost, "");
    /// assert_eq!(ParsedUri::parse("amqp://localhost/a%2Fb")?.vhost, "a/b");
    /// assert!(matches!(ParsedUri::parse("amqp://localhost/a/b"), Err(UriError::VhostSlash { .. })));
    /// assert!(matches!(ParsedUri::parse("http://localhost"), Err(UriError::Scheme { .. })));
    /// # Ok::<(), UriError>(())
    /// ```
    pub fn parse(uri: &str) -> Result<Self, UriError> {
        let (scheme, rest) = uri.split_once("://").ok_or(UriError::MissingScheme)?;
        let tls = if scheme.eq_ignore_ascii_case("amqp") {
            false
        } else if scheme.eq_ignore_ascii_case("amqps") {
            true
        } else if is_scheme_syntax(scheme) {
            return Err(UriError::Scheme { scheme: scheme.to_owned() });
        } else {
            // Not a scheme at all, maybe `user:pass@host` with a `://` further on: echo nothing.
            return Err(UriError::MissingScheme);
        };

        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, after) = rest.split_at_checked(authority_end).unwrap_or((rest, ""));
        // Checked before anything can be echoed: see the module documentation.
        if after.contains('@') {
            return Err(UriError::AmbiguousUserinfo);
        }
        if after.contains('#') {
            return Err(UriError::Fragment);
        }

        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(userinfo) => {
                let (user, pass) = match userinfo.split_once(':') {
                    Some((user, pass)) => (user, Some(pass)),
                    None => (userinfo, None),
                };
                let user = decode(user, false)
                    .map_err(|()| UriError::Encoding { part: "user name", value: user.to_owned() })?;
                let pass = pass
                    .map(|pass| decode(pass, false).map(Password::from).map_err(|()| UriError::PasswordEncoding))
                    .transpose()?;
                (Some(user), pass)
            }
        };

        let default_port = if tls { AMQPS_PORT } else { AMQP_PORT };
        let port_of = |port: Option<&str>| match port {
            None | Some("") => Ok(default_port),
            Some(port) => parse_port(port, userinfo.is_some()),
        };
        let mut hostports = hostport.split(',');
        let (host, port) = split_host_port(hostports.next().unwrap_or_default())?;
        let port = port_of(port)?;
        let mut more_addresses = Vec::new();
        for other in hostports {
            let (other_host, other_port) = split_host_port(other)?;
            let Some(other_host) = other_host else {
                return Err(UriError::Host { value: String::new(), reason: "empty host in the address list" });
            };
            more_addresses.push(crate::recovery::Address { host: other_host, port: port_of(other_port)? });
        }

        let (path, query) = match after.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (after, None),
        };
        let vhost = match path.strip_prefix('/') {
            // `authority_end` stops at '/' or '?', so a non-empty path starts with '/'.
            None => DEFAULT_VHOST.to_owned(),
            Some(segment) if segment.contains('/') => return Err(UriError::VhostSlash { path: path.to_owned() }),
            Some(segment) => {
                decode(segment, false).map_err(|()| UriError::Encoding { part: "vhost", value: segment.to_owned() })?
            }
        };

        let mut parsed = ParsedUri {
            tls,
            username,
            password,
            host,
            port,
            vhost,
            more_addresses,
            heartbeat: None,
            frame_max: None,
            channel_max: None,
            connection_timeout: None,
            auth_mechanism: None,
            connection_name: None,
        };
        for pair in query.unwrap_or("").split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            parsed.set_parameter(key, value)?;
        }
        Ok(parsed)
    }

    fn set_parameter(&mut self, raw_key: &str, raw_value: &str) -> Result<(), UriError> {
        let key = decode(raw_key, true).unwrap_or_else(|()| raw_key.to_owned());
        macro_rules! set {
            ($field:ident, $name:literal, $expected:literal, $parse:expr) => {{
                if self.$field.is_some() {
                    return Err(UriError::DuplicateParameter { parameter: $name.to_owned() });
                }
                let invalid =
                    || UriError::InvalidValue { parameter: $name, value: raw_value.to_owned(), expected: $expected };
                let value = decode(raw_value, true).map_err(|()| invalid())?;
                let parse: fn(&str) -> Option<_> = $parse;
                self.$field = Some(parse(&value).ok_or_else(invalid)?);
            }};
        }
        match key.as_str() {
            "heartbeat" => set!(heartbeat, "heartbeat", "seconds, 0 to 65535", parse_ok),
            "frame_max" => set!(frame_max, "frame_max", "bytes, 0 or 4096 to 4294967295", |v| {
                v.parse().ok().filter(|&n: &u32| n == 0 || n >= 4096)
            }),
            "channel_max" => set!(channel_max, "channel_max", "a number from 0 to 65535", parse_ok),
            "connection_timeout" => set!(connection_timeout, "connection_timeout", "milliseconds above 0", |v| {
                v.parse().ok().filter(|&ms: &u64| ms > 0).map(Duration::from_millis)
            }),
            "auth_mechanism" => set!(auth_mechanism, "auth_mechanism", "plain, amqplain or external", parse_ok),
            "connection_name" => set!(connection_name, "connection_name", "UTF-8 text", |v| Some(v.to_owned())),
            _ => return Err(UriError::UnknownParameter { parameter: key }),
        }
        Ok(())
    }
}

fn parse_ok<T: FromStr>(value: &str) -> Option<T> {
    value.parse().ok()
}

impl FromStr for ParsedUri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ParsedUri::parse(s)
    }
}

impl fmt::Display for ParsedUri {
    /// The URI, percent-encoded so that it parses back to the same value, with the password
    /// written `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        out.push_str(if self.tls { "amqps://" } else { "amqp://" });
        if self.username.is_some() || self.password.is_some() {
            encode_into(&mut out, self.username.as_deref().unwrap_or(""));
            if self.password.is_some() {
                out.push_str(":***");
            }
            out.push('@');
        }
        if let Some(host) = &self.host {
            push_host(&mut out, host);
        }
        let _ = write!(out, ":{}", self.port);
        for other in &self.more_addresses {
            out.push(',');
            push_host(&mut out, &other.host);
            let _ = write!(out, ":{}", other.port);
        }
        if self.vhost != DEFAULT_VHOST {
            out.push('/');
            encode_into(&mut out, &self.vhost);
        }
        let mut query = QueryWriter::new(&mut out);
        query.param("heartbeat", self.heartbeat);
        query.param("frame_max", self.frame_max);
        query.param("channel_max", self.channel_max);
        query.param("connection_timeout", self.connection_timeout.map(|t| t.as_millis()));
        query.param("auth_mechanism", self.auth_mechanism.map(|m| m.name().to_ascii_lowercase()));
        query.encoded("connection_name", self.connection_name.as_deref());
        f.write_str(&out)
    }
}

/// Why a string is not a valid AMQP URI. Never contains the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    /// No `scheme://` at the start.
    #[error("not an AMQP URI: expected amqp://... or amqps://...")]
    MissingScheme,
    /// A scheme other than `amqp` or `amqps`.
    #[error("unsupported URI scheme {scheme:?}: expected amqp or amqps")]
    Scheme {
        /// The scheme given.
        scheme: String,
    },
    /// A `%` not followed by two hex digits, or escapes that do not decode to UTF-8.
    #[error("invalid percent-encoding in the {part} {value:?}: '%' takes two hex digits, and the result must be UTF-8")]
    Encoding {
        /// Which part: `"user name"` or `"vhost"`.
        part: &'static str,
        /// The part as written.
        value: String,
    },
    /// Like [`UriError::Encoding`], in the password, which is not shown.
    #[error(
        "invalid percent-encoding in the password (not shown): '%' takes two hex digits, and the result must be UTF-8"
    )]
    PasswordEncoding,
    /// A malformed host.
    #[error("invalid host {value:?}: {reason}")]
    Host {
        /// The host as written.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A port that is not a number from 1 to 65535.
    #[error("invalid port{}: expected a number from 1 to 65535", match .value {
        Some(value) => format!(" {value:?}"),
        None => " (not shown: in a URI without '@' it may be a password)".to_owned(),
    })]
    Port {
        /// The port as written, if the URI has a userinfo (`user@`). Without one it is not
        /// kept: in `amqp://user:password`, the password sits where the port goes.
        value: Option<String>,
    },

    /// A path with more than one segment.
    #[error("invalid vhost path {path:?}: the vhost is a single path segment; write '/' inside it as %2F")]
    VhostSlash {
        /// The path as written.
        path: String,
    },
    /// An `@` after the host; see the [module documentation](self).
    #[error(
        "'@' after the host: percent-encode '/', '?', '#' and '@' in the user name and password, and '@' in the vhost or query as %40"
    )]
    AmbiguousUserinfo,
    /// A `#fragment`, which AMQP URIs do not have.
    #[error("'#' in the URI: AMQP URIs have no fragment; percent-encode '#' as %23")]
    Fragment,
    /// A query parameter lepus does not know.
    #[error(
        "unknown URI query parameter {parameter:?}: expected heartbeat, frame_max, channel_max, connection_timeout, auth_mechanism or connection_name"
    )]
    UnknownParameter {
        /// The parameter name, decoded.
        parameter: String,
    },
    /// A query parameter given more than once.
    #[error("URI query parameter {parameter} is given more than once")]
    DuplicateParameter {
        /// The parameter name.
        parameter: String,
    },
    /// A query parameter value that does not parse.
    #[error("invalid value {value:?} for URI query parameter {parameter}: expected {expected}")]
    InvalidValue {
        /// The parameter name.
        parameter: &'static str,
        /// The value as written.
        value: String,
        /// What the value should be.
        expected: &'static str,
    },
}

/// RFC 3986: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn is_scheme_syntax(scheme: &str) -> bool {
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Splits `host[:port]` or `[v6][:port]`; the host comes back decoded, `None` if empty.
fn split_host_port(hostport: &str) -> Result<(Option<String>, Option<&str>), UriError> {
    if let Some(bracketed) = hostport.strip_prefix('[') {
        let host_error = |reason| UriError::Host { value: hostport.to_owned(), reason };
        let (literal, after) = bracketed.split_once(']').ok_or_else(|| host_error("'[' without ']'"))?;
        if literal.parse::<Ipv6Addr>().is_err() {
            return Err(host_error("not an IPv6 address inside [ ]"));
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| host_error("unexpected text after ']'"))?),
        };
        return Ok((Some(literal.to_owned()), port));
    }
    let (host, port) = match hostport.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (hostport, None),
    };
    // Only the text before the first ':' is echoed: without an '@', what follows may be a
    // password (`amqp://user:pass:word`).
    let host_error = |reason| UriError::Host { value: host.to_owned(), reason };
    if port.is_some_and(|port| port.contains(':')) {
        return Err(host_error("more than one ':' (an IPv6 address must be written in brackets, e.g. [::1])"));
    }
    if host.contains(['[', ']']) {
        return Err(host_error("'[' and ']' only enclose an IPv6 address"));
    }
    let host = decode(host, false).map_err(|()| host_error("invalid percent-encoding"))?;
    Ok(((!host.is_empty()).then_some(host), port))
}

/// Parses a port. The value is echoed in the error only after a userinfo: without an '@',
/// `amqp://user:password` puts the password where the port goes.
fn parse_port(port: &str, echo: bool) -> Result<u16, UriError> {
    match port.parse::<u16>() {
        Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(UriError::Port { value: echo.then(|| port.to_owned()) }),
    }
}

/// Percent-decodes `s` to UTF-8; with `plus_is_space`, `+` is a space (query values).
fn decode(s: &str, plus_is_space: bool) -> Result<String, ()> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = bytes.next().and_then(hex).ok_or(())?;
                let lo = bytes.next().and_then(hex).ok_or(())?;
                out.push(hi << 4 | lo);
            }
            b'+' if plus_is_space => out.push(b' '),
            _ => out.push(b),
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

/// Appends `s` percent-encoded: everything but RFC 3986's unreserved characters is escaped,
/// so the result is safe in any part of a URI.
pub(crate) fn encode_into(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Appends a host, bracketing an IPv6 address.
pub(crate) fn push_host(out: &mut String, host: &str) {
    if host.parse::<Ipv6Addr>().is_ok() {
        out.push('[');
        out.push_str(host);
        out.push(']');
    } else {
        encode_into(out, host);
    }
}

/// Writes `?a=1&b=2`, skipping absent values.
pub(crate) struct QueryWriter<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> QueryWriter<'a> {
    pub(crate) fn new(out: &'a mut String) -> Self {
        QueryWriter { out, first: true }
    }

    fn key(&mut self, key: &str) {
        self.out.push(if self.first { '?' } else { '&' });
        self.first = false;
        self.out.push_str(key);
        self.out.push('=');
    }

    /// A value that needs no encoding (numbers, mechanism names).
    pub(crate) fn param(&mut self, key: &str, value: Option<impl fmt::Display>) {
        if let Some(value) = value {
            self.key(key);
            let _ = write!(self.out, "{value}");
        }
    }

    /// A free-form value, percent-encoded.
    pub(crate) fn encoded(&mut self, key: &str, value: Option<&str>) {
        if let Some(value) = value {
            self.key(key);
            encode_into(self.out, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(uri: &str) -> ParsedUri {
        ParsedUri::parse(uri).unwrap_or_else(|e| panic!("{uri}: {e}"))
    }

    fn err(uri: &str) -> UriError {
        match ParsedUri::parse(uri) {
            Ok(parsed) => panic!("{uri} parsed as {parsed:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn schemes_and_default_ports() {
        let plain = parse("amqp://host");
        assert!(!plain.tls);
        assert_eq!(plain.port, 5672);
        let tls = parse("amqps://host");
        assert!(tls.tls);
        assert_eq!(tls.port, 5671);
        assert!(parse("AMQPS://host").tls);
        assert_eq!(err("http://host"), UriError::Scheme { scheme: "http".into() });
        assert_eq!(err("amqp:/host"), UriError::MissingScheme);
        assert_eq!(err("host:5672"), UriError::MissingScheme);
        assert_eq!(err(""), UriError::MissingScheme);
        // `user:pass@host` with a `://` later is not echoed as a scheme.
        assert_eq!(err("user:pass@host/?x=a://b"), UriError::MissingScheme);
    }

    /// The examples table of RabbitMQ's URI specification.
    #[test]
    fn rabbitmq_spec_examples() {
        let p = parse("amqp://user:pass@host:10000/vhost");
        assert_eq!(
            (p.username.as_deref(), p.password.as_ref().map(Password::expose), p.host.as_deref(), p.port),
            (Some("user"), Some("pass"), Some("host"), 10000)
        );
        assert_eq!(p.vhost, "vhost");

        let p = parse("amqp://user%61:%61pass@ho%61st:10000/v%2fhost");
        assert_eq!(p.username.as_deref(), Some("usera"));
        assert_eq!(p.password.as_ref().map(Password::expose), Some("apass"));
        assert_eq!(p.host.as_deref(), Some("hoast"));
        assert_eq!(p.vhost, "v/host");

        let p = parse("amqp://");
        assert_eq!((p.username, p.password, p.host, p.port), (None, None, None, 5672));
        assert_eq!(p.vhost, "/");

        let p = parse("amqp://:@/");
        assert_eq!(p.username.as_deref(), Some(""));
        assert_eq!(p.password.as_ref().map(Password::expose), Some(""));
        assert_eq!(p.host, None);
        assert_eq!(p.vhost, "");

        let p = parse("amqp://user@");
        assert_eq!((p.username.as_deref(), p.password), (Some("user"), None));

        let p = parse("amqp://user:pass@");
        assert_eq!(p.password.as_ref().map(Password::expose), Some("pass"));

        assert_eq!(parse("amqp://host").host.as_deref(), Some("host"));
        let p = parse("amqp://:10000");
        assert_eq!((p.host, p.port), (None, 10000));
        assert_eq!(parse("amqp:///vhost").vhost, "vhost");
        assert_eq!(parse("amqp://host/").vhost, "");
        assert_eq!(parse("amqp://host/%2f").vhost, "/");
        assert_eq!(parse("amqp://host/%2F").vhost, "/");
        let p = parse("amqp://[::1]");
        assert_eq!((p.host.as_deref(), p.port), (Some("::1"), 5672));
    }

    #[test]
    fn userinfo() {
        // The last '@' of the authority ends the userinfo; the first ':' splits it.
        let p = parse("amqp://us%3Aer:p@ss:w:rd@host");
        assert_eq!(p.username.as_deref(), Some("us:er"));
        assert_eq!(p.password.as_ref().map(Password::expose), Some("p@ss:w:rd"));
        let p = parse("amqp://%C3%BCser:%2F%3F%23%40%25@host");
        assert_eq!(p.username.as_deref(), Some("üser"));
        assert_eq!(p.password.as_ref().map(Password::expose), Some("/?#@%"));
        // '+' is literal outside the query.
        assert_eq!(parse("amqp://a+b:c+d@h").username.as_deref(), Some("a+b"));
        assert_eq!(parse("amqp://a+b:c+d@h").password.as_ref().map(Password::expose), Some("c+d"));
        assert_eq!(err("amqp://us%zzer@host"), UriError::Encoding { part: "user name", value: "us%zzer".into() });
        assert_eq!(err("amqp://user:pa%zzss@host"), UriError::PasswordEncoding);
        assert_eq!(err("amqp://user:pa%ffss@host"), UriError::PasswordEncoding);
    }

    #[test]
    fn hosts_and_ports() {
        let p = parse("amqp://[::1]:5673/v");
        assert_eq!((p.host.as_deref(), p.port, p.vhost.as_str()), (Some("::1"), 5673, "v"));
        assert_eq!(parse("amqp://[fe80::1:2]").host.as_deref(), Some("fe80::1:2"));
        assert_eq!(parse("amqp://127.0.0.1:1").host.as_deref(), Some("127.0.0.1"));
        assert_eq!(parse("amqp://my%2Dhost").host.as_deref(), Some("my-host"));
        assert_eq!(parse("amqp://host:65535").port, 65535);
        // RFC 3986 allows an empty port: the default.
        assert_eq!(parse("amqps://host:").port, 5671);

        for (uri, value) in [("amqp://u@host:0", "0"), ("amqp://u@host:65536", "65536"), ("amqp://u:p@h:http", "http")]
        {
            assert_eq!(err(uri), UriError::Port { value: Some(value.into()) }, "{uri}");
        }
        for uri in ["amqp://host:0", "amqp://host:65536", "amqp://host:http", "amqp://host:-1", "amqp://host:+1"] {
            assert_eq!(err(uri), UriError::Port { value: None }, "{uri}");
        }
        assert_eq!(err("amqp://[::1]:99999"), UriError::Port { value: None });
        let text = err("amqp://u@host:65536").to_string();
        assert!(text.contains("\"65536\"") && text.contains("1 to 65535"), "{text}");

        assert!(matches!(err("amqp://[::1"), UriError::Host { reason: "'[' without ']'", .. }));
        assert!(matches!(err("amqp://[nothost]"), UriError::Host { .. }));
        assert!(matches!(err("amqp://[::1]x"), UriError::Host { .. }));
        assert!(matches!(err("amqp://::1"), UriError::Host { .. }));
        assert!(matches!(err("amqp://::1:5672"), UriError::Host { .. }));
        assert!(matches!(err("amqp://a]b"), UriError::Host { .. }));
        assert_eq!(err("amqp://ho%zst"), UriError::Host { value: "ho%zst".into(), reason: "invalid percent-encoding" });
    }

    #[test]
    fn vhosts() {
        assert_eq!(parse("amqp://h").vhost, "/");
        assert_eq!(parse("amqp://h?heartbeat=1").vhost, "/");
        assert_eq!(parse("amqp://h/").vhost, "");
        assert_eq!(parse("amqp://h/?heartbeat=1").vhost, "");
        assert_eq!(parse("amqp://h/%2f").vhost, "/");
        assert_eq!(parse("amqp://h/a%2Fb").vhost, "a/b");
        assert_eq!(parse("amqp://h/a%20b+c").vhost, "a b+c");
        assert_eq!(parse("amqp://h/%40x").vhost, "@x");
        assert_eq!(err("amqp://h/a/b"), UriError::VhostSlash { path: "/a/b".into() });
        assert_eq!(err("amqp://h//"), UriError::VhostSlash { path: "//".into() });
        assert_eq!(err("amqp://h/a%2"), UriError::Encoding { part: "vhost", value: "a%2".into() });
        assert_eq!(err("amqp://h/a%g0"), UriError::Encoding { part: "vhost", value: "a%g0".into() });
        assert_eq!(err("amqp://h/x#frag"), UriError::Fragment);
        assert_eq!(err("amqp://h#frag"), UriError::Fragment);
    }

    #[test]
    fn query_parameters() {
        let p = parse(
            "amqp://h/v?heartbeat=10&frame_max=4096&channel_max=0&connection_timeout=1500\
             &auth_mechanism=AMQPlain&connection_name=my+app%20%E2%9C%93%26",
        );
        assert_eq!(p.heartbeat, Some(10));
        assert_eq!(p.frame_max, Some(4096));
        assert_eq!(p.channel_max, Some(0));
        assert_eq!(p.connection_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(p.auth_mechanism, Some(AuthMechanism::AmqPlain));
        assert_eq!(p.connection_name.as_deref(), Some("my app ✓&"));

        assert_eq!(parse("amqp://h?auth_mechanism=plain").auth_mechanism, Some(AuthMechanism::Plain));
        assert_eq!(parse("amqp://h?auth_mechanism=EXTERNAL").auth_mechanism, Some(AuthMechanism::External));
        assert_eq!(parse("amqp://h?frame_max=0").frame_max, Some(0));
        assert_eq!(parse("amqp://h?heartbeat=0").heartbeat, Some(0));
        assert_eq!(parse("amqp://h?connection_name=").connection_name.as_deref(), Some(""));
        assert_eq!(parse("amqp://h?&heartbeat=5&").heartbeat, Some(5));
        assert_eq!(parse("amqp://h?").heartbeat, None);

        let invalid = |uri, parameter, value: &str| {
            let e = err(uri);
            assert!(
                matches!(&e, UriError::InvalidValue { parameter: p, value: v, .. } if *p == parameter && v == value),
                "{uri}: {e:?}"
            );
        };
        invalid("amqp://h?heartbeat=65536", "heartbeat", "65536");
        invalid("amqp://h?heartbeat=-1", "heartbeat", "-1");
        invalid("amqp://h?heartbeat=", "heartbeat", "");
        invalid("amqp://h?heartbeat", "heartbeat", "");
        invalid("amqp://h?heartbeat=1.5", "heartbeat", "1.5");
        invalid("amqp://h?frame_max=4095", "frame_max", "4095");
        invalid("amqp://h?frame_max=4294967296", "frame_max", "4294967296");
        invalid("amqp://h?channel_max=70000", "channel_max", "70000");
        invalid("amqp://h?connection_timeout=0", "connection_timeout", "0");
        invalid("amqp://h?connection_timeout=1s", "connection_timeout", "1s");
        invalid("amqp://h?auth_mechanism=cram-md5", "auth_mechanism", "cram-md5");
        invalid("amqp://h?connection_name=%zz", "connection_name", "%zz");
        invalid("amqp://h?connection_name=%FF", "connection_name", "%FF");

        assert_eq!(err("amqp://h?verify=verify_none"), UriError::UnknownParameter { parameter: "verify".into() });
        assert_eq!(err("amqp://h?Heartbeat=1"), UriError::UnknownParameter { parameter: "Heartbeat".into() });
        assert_eq!(
            err("amqp://h?heartbeat=1&heartbeat=1"),
            UriError::DuplicateParameter { parameter: "heartbeat".into() }
        );
        let text = err("amqp://h?heartbeat=x").to_string();
        assert!(text.contains("heartbeat") && text.contains("\"x\""), "{text}");
    }

    /// A password with an unencoded '/', '?' or '#' is cut in two; the tail must not be
    /// echoed as a vhost, a parameter or a port.
    #[test]
    fn unencoded_delimiters_in_credentials_are_refused_without_echo() {
        for uri in [
            "amqp://user:pa/ss@host",
            "amqp://user:pa?ss@host",
            "amqp://user:pa#ss@host",
            "amqp://user:pa?x=ss@host/v",
            "amqp://us/er:pass@host",
            "amqp://host/v@x",
            "amqp://host?connection_name=a@b",
        ] {
            assert_eq!(err(uri), UriError::AmbiguousUserinfo, "{uri}");
        }
        assert_eq!(parse("amqp://host?connection_name=a%40b").connection_name.as_deref(), Some("a@b"));
    }

    /// No error and no rendering of a parsed URI contains the password, whatever goes wrong.
    #[test]
    fn password_is_never_shown() {
        let secret = "Zx9Secret";
        let cases = [
            format!("amqp://user:{secret}@host"),
            format!("amqp://user:{secret}@host:0"),
            format!("amqp://user:{secret}@host:bad"),
            format!("amqp://user:{secret}@[::1"),
            format!("amqp://user:{secret}@host/a/b"),
            format!("amqp://user:{secret}@host/%zz"),
            format!("amqp://user:{secret}%zz@host"),
            format!("amqp://user:{secret}@host?nope=1"),
            format!("amqp://user:{secret}@host?heartbeat=x"),
            format!("amqp://user:{secret}@host?heartbeat=1&heartbeat=2"),
            format!("amqp://user:{secret}@host#x"),
            format!("amqp://user:{secret}/x@host"),
            format!("amqp://user:{secret}?x@host"),
            format!("amqp://user:{secret}#x@host"),
            format!("amqp://user:{secret}"),
            format!("amqp://user:{secret}/vhost"),
            format!("amqp://user:{secret}:x"),
            format!("amqp://user:{secret}[x"),
            format!("amqp://user:{secret}%zz"),
            format!("amqp://user:9{secret}"),
            format!("amqp://user:a/{secret}@host"),
            format!("amqp://user:a?{secret}=1@host"),
            format!("http://user:{secret}@host"),
            format!("user:{secret}@host"),
            format!("amqps://us%zz:{secret}@host"),
            format!("amqp://user:{secret}@host?auth_mechanism=x&connection_name=%zz"),
        ];
        for uri in &cases {
            let shown = match ParsedUri::parse(uri) {
                Ok(parsed) => format!("{parsed} {parsed:?} {parsed:#?}"),
                Err(e) => format!("{e} {e:?}"),
            };
            assert!(!shown.contains(secret), "{uri} shows the password: {shown}");
        }
    }

    #[test]
    fn display_round_trips_with_the_password_masked() {
        let p = parse(
            "amqps://us%20er:pw@[::1]:1234/v%2Fh?heartbeat=5&frame_max=8192&channel_max=9\
             &connection_timeout=250&auth_mechanism=external&connection_name=a%26b",
        );
        let shown = p.to_string();
        assert_eq!(
            shown,
            "amqps://us%20er:***@[::1]:1234/v%2Fh?heartbeat=5&frame_max=8192&channel_max=9\
             &connection_timeout=250&auth_mechanism=external&connection_name=a%26b"
        );
        let back = parse(&shown);
        assert_eq!(back.password.as_ref().map(Password::expose), Some("***"));
        assert_eq!(ParsedUri { password: p.password.clone(), ..back }, p);

        for uri in ["amqp://", "amqp://h", "amqp://h/", "amqp://u@h:1/x", "amqp://:@/", "amqp://:pw@h"] {
            let p = parse(uri);
            let back = parse(&p.to_string());
            assert_eq!(ParsedUri { password: p.password.clone(), ..back }, p, "{uri} -> {p}");
        }
        assert_eq!(parse("amqp://h").to_string(), "amqp://h:5672");
        assert_eq!(parse("amqp://h/").to_string(), "amqp://h:5672/");
    }
}
