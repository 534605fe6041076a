//! SASL authentication: the mechanisms lepus speaks, the credentials it sends, and the
//! `connection.start-ok` response bytes for each.
//!
//! Passwords live in a [`Password`] newtype whose `Debug` and `Display` print `***`, so a
//! `{:?}` of [`Credentials`], of the connection options or of a parsed URI never shows one.

use std::fmt;
use std::str::FromStr;

use bytes::{BufMut, Bytes, BytesMut};

/// A SASL mechanism for the AMQP handshake.
///
/// ```
/// use lepus::auth::AuthMechanism;
/// let mech: AuthMechanism = "amqplain".parse()?;
/// assert_eq!(mech, AuthMechanism::AmqPlain);
/// assert_eq!(mech.name(), "AMQPLAIN");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AuthMechanism {
    /// `PLAIN` (RFC 4616): user name and password. RabbitMQ's default.
    #[default]
    Plain,
    /// `AMQPLAIN`: user name and password in a field table, RabbitMQ's legacy mechanism.
    AmqPlain,
    /// `EXTERNAL`: the identity comes from outside AMQP, in RabbitMQ from the client's TLS
    /// certificate (the `rabbitmq_auth_mechanism_ssl` plugin). Sends no credentials.
    External,
}

impl AuthMechanism {
    /// The mechanism's name as it appears on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            AuthMechanism::Plain => "PLAIN",
            AuthMechanism::AmqPlain => "AMQPLAIN",
            AuthMechanism::External => "EXTERNAL",
        }
    }
}

impl fmt::Display for AuthMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error of parsing an [`AuthMechanism`] from a name lepus does not speak.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown SASL mechanism {name:?}: expected PLAIN, AMQPLAIN or EXTERNAL")]
pub struct UnknownMechanism {
    /// The name that was given.
    pub name: String,
}

impl FromStr for AuthMechanism {
    type Err = UnknownMechanism;

    /// Parses a mechanism name, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [AuthMechanism::Plain, AuthMechanism::AmqPlain, AuthMechanism::External]
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownMechanism { name: s.to_owned() })
    }
}

/// A password that never shows itself: `Debug` and `Display` print `***`.
///
/// ```
/// use lepus::auth::Password;
/// let password = Password::new("s3cret");
/// assert_eq!(format!("{password} {password:?}"), "*** ***");
/// assert_eq!(password.expose(), "s3cret");
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(password: impl Into<String>) -> Self {
        Password(password.into())
    }

    /// The password itself, for sending it. Keep it out of logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Password {
    fn from(password: String) -> Self {
        Password(password)
    }
}

impl From<&str> for Password {
    fn from(password: &str) -> Self {
        Password(password.to_owned())
    }
}

/// A user name and password. `Debug` masks the password.
///
/// ```
/// use lepus::auth::Credentials;
/// let creds = Credentials::new("app", "s3cret");
/// assert!(!format!("{creds:?}").contains("s3cret"));
/// assert_eq!(Credentials::default(), Credentials::new("guest", "guest"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: Password,
}

impl Credentials {
    /// Credentials from a user name and a password.
    pub fn new(username: impl Into<String>, password: impl Into<Password>) -> Self {
        Credentials { username: username.into(), password: password.into() }
    }
}

impl Default for Credentials {
    /// RabbitMQ's default user, `guest`/`guest` (which it accepts only over loopback).
    fn default() -> Self {
        Credentials::new("guest", "guest")
    }
}

/// The `response` field of `connection.start-ok` for `mech`.
///
/// - `PLAIN`: `\0user\0password` (RFC 4616, empty authorization identity).
/// - `AMQPLAIN`: a field table with `LOGIN` and `PASSWORD` as long strings, **without** the
///   table's 4-byte length prefix: RabbitMQ's `rabbit_auth_mechanism_amqplain` parses the
///   response bytes directly as table entries (checked against RabbitMQ, which resets the
///   connection when the prefix is present).
/// - `EXTERNAL`: empty; the broker takes the identity from the TLS client certificate.
///
/// A user name containing NUL cannot be expressed in PLAIN; it is sent as is and the broker
/// refuses the login, which is the right outcome for such a name.
pub(crate) fn sasl_response(mech: AuthMechanism, credentials: &Credentials) -> Bytes {
    let user = credentials.username.as_bytes();
    let pass = credentials.password.expose().as_bytes();
    match mech {
        AuthMechanism::Plain => {
            let mut out = BytesMut::with_capacity(2 + user.len() + pass.len());
            out.put_u8(0);
            out.put_slice(user);
            out.put_u8(0);
            out.put_slice(pass);
            out.freeze()
        }
        AuthMechanism::AmqPlain => {
            let mut out = BytesMut::with_capacity(2 * 6 + 13 + user.len() + pass.len());
            put_longstr_entry(&mut out, b"LOGIN", user);
            put_longstr_entry(&mut out, b"PASSWORD", pass);
            out.freeze()
        }
        AuthMechanism::External => Bytes::new(),
    }
}

/// One field-table entry `key 'S' value`. The keys are constants under 256 bytes; a value
/// over 4 GiB (which no broker would accept anyway) is cut to 4 GiB so the length prefix
/// stays true to the bytes that follow.
fn put_longstr_entry(out: &mut BytesMut, key: &'static [u8], value: &[u8]) {
    out.put_u8(key.len() as u8);
    out.put_slice(key);
    out.put_u8(b'S');
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    out.put_u32(len);
    out.put_slice(value.get(..len as usize).unwrap_or(value));
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use lepus_codec::{FieldValue, Frame, Limits, Method, decode_frame};

    use super::*;

    #[test]
    fn names_and_parsing() {
        for (mech, name) in [
            (AuthMechanism::Plain, "PLAIN"),
            (AuthMechanism::AmqPlain, "AMQPLAIN"),
            (AuthMechanism::External, "EXTERNAL"),
        ] {
            assert_eq!(mech.name(), name);
            assert_eq!(mech.to_string(), name);
            assert_eq!(name.parse::<AuthMechanism>(), Ok(mech));
            assert_eq!(name.to_lowercase().parse::<AuthMechanism>(), Ok(mech));
        }
        assert_eq!("AmqPlain".parse::<AuthMechanism>(), Ok(AuthMechanism::AmqPlain));
        let err = "CRAM-MD5".parse::<AuthMechanism>().unwrap_err();
        assert!(err.to_string().contains("CRAM-MD5"), "{err}");
        assert_eq!(AuthMechanism::default(), AuthMechanism::Plain);
    }

    #[test]
    fn password_never_shows() {
        let creds = Credentials::new("alice", "hunter2");
        let password = &creds.password;
        for shown in [format!("{creds:?}"), format!("{creds:#?}"), format!("{password}"), format!("{password:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        assert!(format!("{creds:?}").contains("alice"));
        assert_eq!(password.expose(), "hunter2");
    }

    #[test]
    fn plain_response() {
        let creds = Credentials::new("alice", "hunter2");
        assert_eq!(&sasl_response(AuthMechanism::Plain, &creds)[..], b"\0alice\0hunter2");
        let empty = Credentials::new("", "");
        assert_eq!(&sasl_response(AuthMechanism::Plain, &empty)[..], b"\0\0");
    }

    #[test]
    fn external_response_is_empty() {
        assert!(sasl_response(AuthMechanism::External, &Credentials::default()).is_empty());
    }

    #[test]
    fn amqplain_response_bytes() {
        let creds = Credentials::new("guest", "pw");
        let expected: &[u8] = b"\x05LOGINS\x00\x00\x00\x05guest\x08PASSWORDS\x00\x00\x00\x02pw";
        assert_eq!(&sasl_response(AuthMechanism::AmqPlain, &creds)[..], expected);
    }

    /// The AMQPLAIN bytes, given the length prefix a table field carries, decode as a field
    /// table with lepus-codec: they are exactly a table body. Checked by splicing them into
    /// the `client_properties` field of a hand-built `connection.start-ok` frame.
    #[test]
    fn amqplain_response_is_a_table_body() {
        let creds = Credentials::new("usér", "pä:ss\0word");
        let body = sasl_response(AuthMechanism::AmqPlain, &creds);

        let mut payload = BytesMut::new();
        payload.put_u16(10); // class connection
        payload.put_u16(11); // method start-ok
        payload.put_u32(u32::try_from(body.len()).unwrap());
        payload.put_slice(&body);
        payload.put_u8(8);
        payload.put_slice(b"AMQPLAIN");
        payload.put_u32(0); // response
        payload.put_u8(5);
        payload.put_slice(b"en_US");
        let mut wire = BytesMut::new();
        wire.put_u8(1);
        wire.put_u16(0);
        wire.put_u32(u32::try_from(payload.len()).unwrap());
        wire.put_slice(&payload);
        wire.put_u8(0xCE);

        let frame = decode_frame(&mut wire, &Limits::default()).unwrap().unwrap();
        let Frame::Method(0, Method::ConnectionStartOk(start_ok)) = frame else {
            panic!("not a start-ok: {frame:?}");
        };
        let table = &start_ok.client_properties;
        assert_eq!(table.len(), 2);
        assert_eq!(table.get("LOGIN").and_then(FieldValue::as_str), Some("usér"));
        assert_eq!(table.get("PASSWORD").and_then(FieldValue::as_str), Some("pä:ss\0word"));
        assert_eq!(start_ok.mechanism.as_bytes(), b"AMQPLAIN");
    }
}
