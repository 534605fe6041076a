//! W3C Trace Context in message headers (feature `trace-context`): a distributed trace
//! carried across the broker, with no OpenTelemetry SDK needed.
//!
//! A [`TraceContext`] is what the W3C `traceparent` header says (trace id, parent id, trace
//! flags) plus the optional vendor list `tracestate`. [`inject`] writes both into a
//! message's headers table as long strings under the lowercase names `traceparent` and
//! `tracestate`; [`extract`] reads them back. AMQP 0-9-1 has no W3C binding of its own (the
//! W3C's AMQP draft is for AMQP 1.0), and string headers under these names are what the
//! OpenTelemetry instrumentations of other RabbitMQ clients use, so a tracer on either side
//! can pick the context up.
//!
//! Parsing follows the W3C Trace Context recommendation's rules for a receiver:
//! lowercase hex only; all-zero trace or parent ids, version `ff`, and version `00` with
//! anything after the flags are invalid; a higher version is read for its first four
//! fields (only its sampled flag is kept) and re-emitted as version `00`; an invalid
//! `tracestate` is dropped without affecting the `traceparent`, and a `tracestate` without
//! a valid `traceparent` is ignored. Header names are matched in any case, as the
//! recommendation asks.
//!
//! ```
//! use lepus::{BasicProperties, trace_context::{self, TraceContext}};
//!
//! // The context this service was called with (e.g. from an HTTP request).
//! let incoming: TraceContext = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse()?;
//! // A message sent on its behalf carries a child: same trace, a new parent id.
//! let mut properties = BasicProperties::default();
//! trace_context::inject(&incoming.child(), &mut properties);
//!
//! // The consumer's side.
//! let received = trace_context::extract(&properties).expect("a traceparent header");
//! assert_eq!(received.trace_id(), incoming.trace_id());
//! assert_ne!(received.parent_id(), incoming.parent_id());
//! assert!(received.is_sampled());
//! # Ok::<(), lepus::trace_context::TraceContextError>(())
//! ```

use std::{
    fmt,
    hash::{BuildHasher, Hasher},
    str::FromStr,
    sync::atomic::{AtomicU64, Ordering},
};

use bytes::Bytes;
use lepus_codec::{BasicProperties, FieldTable, FieldValue, ShortStr};

/// The header carrying the trace id, parent id and flags.
pub const TRACEPARENT: &str = "traceparent";
/// The header carrying the vendors' `key=value` list.
pub const TRACESTATE: &str = "tracestate";

/// Length of a version `00` `traceparent`, and the least any version may have.
const TRACEPARENT_LEN: usize = 55;
/// Most `key=value` members a `tracestate` may hold.
const MAX_MEMBERS: usize = 32;
/// Most characters in a `tracestate` value.
const MAX_VALUE_LEN: usize = 256;

/// Why a trace context was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceContextError {
    /// The `traceparent` value (or ids given to [`TraceContext::new`]) breaks the format.
    #[error("invalid traceparent: {0}")]
    Traceparent(&'static str),
    /// The `tracestate` value breaks the format.
    #[error("invalid tracestate: {0}")]
    Tracestate(&'static str),
}

/// A position in a distributed trace: the W3C `traceparent` fields and the `tracestate`
/// list. Ids are never all zeros and a `tracestate` is always valid (normalised: no
/// empty members, no optional whitespace), by construction.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
    tracestate: Option<String>,
}

impl TraceContext {
    /// The `sampled` trace flag: the caller may have recorded this trace.
    pub const SAMPLED: u8 = 0x01;
    /// The `random-trace-id` trace flag (Trace Context Level 2): the trace id's right
    /// seven bytes are random.
    pub const RANDOM_TRACE_ID: u8 = 0x02;
    /// The flags a child keeps; the others are reserved and must be sent as zero.
    const KNOWN_FLAGS: u8 = Self::SAMPLED | Self::RANDOM_TRACE_ID;

    /// A context with these ids and flags, and no `tracestate`. All-zero ids are invalid.
    pub fn new(trace_id: [u8; 16], parent_id: [u8; 8], flags: u8) -> Result<Self, TraceContextError> {
        if trace_id == [0; 16] {
            return Err(TraceContextError::Traceparent("the trace-id is all zeros"));
        }
        if parent_id == [0; 8] {
            return Err(TraceContextError::Traceparent("the parent-id is all zeros"));
        }
        Ok(TraceContext { trace_id, parent_id, flags, tracestate: None })
    }

    /// The start of a new trace: fresh trace and parent ids, `sampled` as said, no
    /// `tracestate`.
    pub fn new_root(sampled: bool) -> Self {
        let mut trace_id = [0; 16];
        let (high, low) = trace_id.split_at_mut(8);
        high.copy_from_slice(&random_nonzero_u64().to_be_bytes());
        low.copy_from_slice(&random_nonzero_u64().to_be_bytes());
        let flags = if sampled { Self::SAMPLED } else { 0 };
        TraceContext { trace_id, parent_id: random_nonzero_u64().to_be_bytes(), flags, tracestate: None }
    }

    /// The context for an operation made on behalf of this one (publishing a message,
    /// answering a request): the same trace id, flags and `tracestate`, a new parent id.
    #[must_use]
    pub fn child(&self) -> Self {
        TraceContext {
            trace_id: self.trace_id,
            parent_id: random_nonzero_u64().to_be_bytes(),
            flags: self.flags & Self::KNOWN_FLAGS,
            tracestate: self.tracestate.clone(),
        }
    }

    /// Parses a `traceparent` value and, if given, a `tracestate` value. An invalid
    /// `tracestate` is dropped, not an error: the recommendation keeps the two apart.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Result<Self, TraceContextError> {
        let mut context = parse_traceparent(traceparent)?;
        context.tracestate = tracestate.and_then(|value| normalise_tracestate([value]).ok().flatten());
        Ok(context)
    }

    /// This context with `tracestate` as its vendor list (normalised; empty means none).
    pub fn with_tracestate(mut self, tracestate: &str) -> Result<Self, TraceContextError> {
        self.tracestate = normalise_tracestate([tracestate])?;
        Ok(self)
    }

    /// The trace id: the whole distributed trace.
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The parent id: the operation that sent this context.
    pub fn parent_id(&self) -> [u8; 8] {
        self.parent_id
    }

    /// The trace flags (see [`TraceContext::SAMPLED`]).
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// True if the `sampled` flag is set.
    pub fn is_sampled(&self) -> bool {
        self.flags & Self::SAMPLED != 0
    }

    /// The `tracestate` list, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The `traceparent` value: `00-<trace id>-<parent id>-<flags>`, lowercase hex.
    pub fn traceparent(&self) -> String {
        self.to_string()
    }
}

/// The `traceparent` value.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("00-")?;
        write_hex(f, &self.trace_id)?;
        f.write_str("-")?;
        write_hex(f, &self.parent_id)?;
        write!(f, "-{:02x}", self.flags)
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Hex<'a>(&'a [u8]);
        impl fmt::Debug for Hex<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, self.0)
            }
        }
        f.debug_struct("TraceContext")
            .field("trace_id", &Hex(&self.trace_id))
            .field("parent_id", &Hex(&self.parent_id))
            .field("flags", &format_args!("{:02x}", self.flags))
            .field("tracestate", &self.tracestate)
            .finish()
    }
}

/// Parses a `traceparent` value (no `tracestate`).
impl FromStr for TraceContext {
    type Err = TraceContextError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_traceparent(s)
    }
}

/// Writes `context` into the message's headers as `traceparent` and, if it has one,
/// `tracestate` (long strings), replacing any earlier trace headers in whatever case.
pub fn inject(context: &TraceContext, properties: &mut BasicProperties) {
    let headers = properties.headers.get_or_insert_with(FieldTable::new);
    remove_all(headers, TRACEPARENT);
    remove_all(headers, TRACESTATE);
    // Both names are static and far under 255 bytes: the keys cannot be refused.
    if let Ok(key) = ShortStr::from_static(TRACEPARENT) {
        headers.push(key, FieldValue::LongString(Bytes::from(context.to_string())));
    }
    if let (Some(state), Ok(key)) = (&context.tracestate, ShortStr::from_static(TRACESTATE)) {
        headers.push(key, FieldValue::LongString(Bytes::from(state.clone())));
    }
}

/// Reads the trace context from the message's headers: `None` if there is no
/// `traceparent`, more than one, or an invalid one. Several `tracestate` entries are
/// joined in order; an invalid `tracestate` is dropped.
pub fn extract(properties: &BasicProperties) -> Option<TraceContext> {
    let headers = properties.headers.as_ref()?;
    let mut traceparents = named(headers, TRACEPARENT);
    let traceparent = traceparents.next()?;
    if traceparents.next().is_some() {
        // Two parents cannot both be right: start afresh, as the recommendation says.
        return None;
    }
    let mut context = parse_traceparent(text(traceparent)?).ok()?;
    let states: Option<Vec<&str>> = named(headers, TRACESTATE).map(text).collect();
    context.tracestate = states.and_then(|states| normalise_tracestate(states).ok().flatten());
    Some(context)
}

/// The values under `name`, matched in any case.
fn named<'a>(headers: &'a FieldTable, name: &'a str) -> impl Iterator<Item = &'a FieldValue> + 'a {
    headers.iter().filter(move |(key, _)| key.as_bytes().eq_ignore_ascii_case(name.as_bytes())).map(|(_, value)| value)
}

/// A header's text: a long string or a byte array, as other clients send either.
fn text(value: &FieldValue) -> Option<&str> {
    match value {
        FieldValue::LongString(bytes) | FieldValue::ByteArray(bytes) => std::str::from_utf8(bytes).ok(),
        _ => None,
    }
}

fn remove_all(headers: &mut FieldTable, name: &str) {
    let stale: Vec<String> = headers
        .iter()
        .filter(|(key, _)| key.as_bytes().eq_ignore_ascii_case(name.as_bytes()))
        .map(|(key, _)| String::from_utf8_lossy(key.as_bytes()).into_owned())
        .collect();
    for key in stale {
        while headers.remove(&key).is_some() {}
    }
}

fn parse_traceparent(value: &str) -> Result<TraceContext, TraceContextError> {
    use TraceContextError::Traceparent as Invalid;
    // Optional whitespace around a header value is not part of it.
    let bytes = value.trim_matches([' ', '\t']).as_bytes();
    if bytes.len() < TRACEPARENT_LEN {
        return Err(Invalid("shorter than 55 characters"));
    }
    let field = |from: usize, to: usize| bytes.get(from..to).unwrap_or_default();
    let dash_at = |at: usize| bytes.get(at) == Some(&b'-');
    let [version] = lower_hex::<1>(field(0, 2)).ok_or(Invalid("the version is not 2 lowercase hex digits"))?;
    if !dash_at(2) {
        return Err(Invalid("no '-' after the version"));
    }
    if version == 0xff {
        return Err(Invalid("version ff is forbidden"));
    }
    let trace_id = lower_hex::<16>(field(3, 35)).ok_or(Invalid("the trace-id is not 32 lowercase hex digits"))?;
    if !dash_at(35) {
        return Err(Invalid("no '-' after the trace-id"));
    }
    let parent_id = lower_hex::<8>(field(36, 52)).ok_or(Invalid("the parent-id is not 16 lowercase hex digits"))?;
    if !dash_at(52) {
        return Err(Invalid("no '-' after the parent-id"));
    }
    let [flags] = lower_hex::<1>(field(53, 55)).ok_or(Invalid("the trace-flags are not 2 lowercase hex digits"))?;
    let flags = if version == 0 {
        if bytes.len() != TRACEPARENT_LEN {
            return Err(Invalid("version 00 has nothing after the trace-flags"));
        }
        flags
    } else {
        // A later version may add fields after a '-'; only its sampled flag is understood.
        if bytes.len() > TRACEPARENT_LEN && !dash_at(TRACEPARENT_LEN) {
            return Err(Invalid("no '-' after the trace-flags"));
        }
        flags & TraceContext::SAMPLED
    };
    TraceContext::new(trace_id, parent_id, flags)
}

/// `2 * N` lowercase hex digits as `N` bytes.
fn lower_hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (&high, &low) = (pair.first()?, pair.get(1)?);
        *byte = (nibble(high)? << 4) | nibble(low)?;
    }
    Some(out)
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

/// Joins `tracestate` header values into one list, checked and normalised (members
/// without their optional whitespace, empty ones dropped). `None` if no member is left.
fn normalise_tracestate<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Option<String>, TraceContextError> {
    use TraceContextError::Tracestate as Invalid;
    let mut members: Vec<(&str, &str)> = Vec::new();
    for member in values.into_iter().flat_map(|value| value.split(',')) {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        let (key, value) = member.split_once('=').ok_or(Invalid("a list member without '='"))?;
        if !valid_key(key) {
            return Err(Invalid("a key that is not a lowercase vendor name"));
        }
        if !valid_value(value) {
            return Err(Invalid("a value that is empty, too long or has a character not allowed"));
        }
        if members.iter().any(|(seen, _)| *seen == key) {
            return Err(Invalid("a key that appears twice"));
        }
        if members.len() == MAX_MEMBERS {
            return Err(Invalid("more than 32 list members"));
        }
        members.push((key, member));
    }
    if members.is_empty() {
        return Ok(None);
    }
    Ok(Some(members.iter().map(|(_, member)| *member).collect::<Vec<_>>().join(",")))
}

/// `simple-key`, or `tenant-id@system-id` for multi-tenant vendors.
fn valid_key(key: &str) -> bool {
    fn keychar(c: u8) -> bool {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'*' | b'/')
    }
    fn part(s: &str, max: usize, first: fn(u8) -> bool) -> bool {
        match s.as_bytes().split_first() {
            Some((&head, rest)) => s.len() <= max && first(head) && rest.iter().all(|&c| keychar(c)),
            None => false,
        }
    }
    let lower = |c: u8| c.is_ascii_lowercase();
    let lower_or_digit = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    match key.split_once('@') {
        None => part(key, 256, lower),
        Some((tenant, system)) => part(tenant, 241, lower_or_digit) && part(system, 14, lower),
    }
}

/// 1 to 256 printable ASCII characters but `,` and `=`, not ending in a space.
fn valid_value(value: &str) -> bool {
    let printable = |c: u8| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=';
    !value.is_empty() && value.len() <= MAX_VALUE_LEN && value.bytes().all(printable) && !value.ends_with(' ')
}

/// 64 unpredictable, non-zero bits for an id.
///
/// No dependency for this: std's `RandomState` keys `SipHash` with random bits from the OS
/// (once per process, then varied per instance), so hashing a process-wide counter and the
/// clock gives ids that differ within a process (the counter), across processes (the
/// keys) and cannot be guessed from earlier ones. Trace ids need uniqueness, not secrecy;
/// a cryptographic generator would add a dependency for no gain here.
fn random_nonzero_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    // An all-zero id is invalid; 1 in 2^64 is rare, but it must still not be sent.
    hasher.finish().max(1)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const TRACE_ID: [u8; 16] =
        [0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36];
    const PARENT_ID: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];

    fn headers(entries: &[(&str, &str)]) -> BasicProperties {
        let mut table = FieldTable::new();
        for (key, value) in entries {
            table.push(ShortStr::try_from(*key).unwrap(), FieldValue::from(*value));
        }
        BasicProperties { headers: Some(table), ..BasicProperties::default() }
    }

    #[test]
    fn the_recommendations_example_parses_and_formats_back() {
        let context: TraceContext = VALID.parse().unwrap();
        assert_eq!(context.trace_id(), TRACE_ID);
        assert_eq!(context.parent_id(), PARENT_ID);
        assert_eq!(context.flags(), 0x01);
        assert!(context.is_sampled());
        assert_eq!(context.traceparent(), VALID);
        let unsampled: TraceContext = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".parse().unwrap();
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn invalid_traceparents_from_the_recommendation_and_its_test_suite() {
        let invalid = [
            // version
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ".0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0.-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "000-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // trace-id
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-.bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47361-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            // parent-id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-.0f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b71-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            // trace-flags
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-.1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0.",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-001",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0F",
            // version 00 with something after the flags
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like",
            // a later version whose flags are not followed by a '-'
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.what-the-future-will-be-like",
            // separators
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
            "",
            "00",
        ];
        for value in invalid {
            let parsed = value.parse::<TraceContext>();
            assert!(matches!(parsed, Err(TraceContextError::Traceparent(_))), "{value:?} gave {parsed:?}");
            assert_eq!(extract(&headers(&[(TRACEPARENT, value)])), None, "{value:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_for_its_known_fields_and_sent_as_00() {
        for value in [
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like",
            // Only the sampled bit of a later version's flags is understood.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff",
        ] {
            let context: TraceContext = value.parse().unwrap();
            assert_eq!((context.trace_id(), context.parent_id(), context.flags()), (TRACE_ID, PARENT_ID, 0x01));
            assert_eq!(context.traceparent(), VALID, "{value}");
        }
    }

    #[test]
    fn whitespace_around_the_value_is_not_part_of_it() {
        for value in [format!(" {VALID}"), format!("\t{VALID}"), format!("{VALID} "), format!("\t {VALID} \t")] {
            assert_eq!(value.parse::<TraceContext>().unwrap().traceparent(), VALID, "{value:?}");
        }
    }

    #[test]
    fn all_zero_ids_are_refused_when_made_too() {
        assert!(matches!(TraceContext::new([0; 16], PARENT_ID, 1), Err(TraceContextError::Traceparent(_))));
        assert!(matches!(TraceContext::new(TRACE_ID, [0; 8], 1), Err(TraceContextError::Traceparent(_))));
        assert!(TraceContext::new(TRACE_ID, PARENT_ID, 1).is_ok());
    }

    #[test]
    fn roots_and_children() {
        let root = TraceContext::new_root(true);
        assert!(root.is_sampled());
        assert!(!TraceContext::new_root(false).is_sampled());
        assert_ne!(root.trace_id(), [0; 16]);
        assert_ne!(TraceContext::new_root(true).trace_id(), root.trace_id(), "each root is a new trace");
        let root = root.with_tracestate("congo=t61rcWkgMzE").unwrap();
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child.parent_id(), root.parent_id());
        assert_eq!((child.flags(), child.tracestate()), (root.flags(), root.tracestate()));
        // Reserved flags are sent as zero by whoever sets the new parent id.
        let odd = TraceContext::new(TRACE_ID, PARENT_ID, 0xff).unwrap();
        assert_eq!(odd.child().flags(), TraceContext::SAMPLED | TraceContext::RANDOM_TRACE_ID);
        let ids: std::collections::HashSet<[u8; 8]> = (0..10_000).map(|_| root.child().parent_id()).collect();
        assert_eq!(ids.len(), 10_000, "parent ids do not repeat");
    }

    #[test]
    fn inject_then_extract_carries_both_headers() {
        let context = TraceContext::parse(VALID, Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")).unwrap();
        let mut properties = BasicProperties::default();
        inject(&context, &mut properties);
        let table = properties.headers.as_ref().unwrap();
        assert_eq!(table.get(TRACEPARENT).and_then(FieldValue::as_str), Some(VALID));
        assert_eq!(table.get(TRACESTATE).and_then(FieldValue::as_str), Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
        assert_eq!(extract(&properties), Some(context));
    }

    #[test]
    fn inject_replaces_old_trace_headers_and_keeps_the_others() {
        let mut properties = headers(&[("TraceParent", VALID), ("x-order", "7"), ("tracestate", "old=1")]);
        let context = TraceContext::new_root(false);
        inject(&context, &mut properties);
        let table = properties.headers.as_ref().unwrap();
        let keys: Vec<&[u8]> = table.iter().map(|(k, _)| k.as_bytes()).collect();
        assert_eq!(keys, [&b"x-order"[..], b"traceparent"], "no tracestate: the context has none");
        assert_eq!(extract(&properties), Some(context));
    }

    #[test]
    fn extract_matches_names_in_any_case_and_joins_tracestates() {
        let properties = headers(&[("TrAcEpArEnT", VALID), ("TRACESTATE", "foo=1,bar=2"), ("tracestate", "baz=3")]);
        let context = extract(&properties).unwrap();
        assert_eq!(context.traceparent(), VALID);
        assert_eq!(context.tracestate(), Some("foo=1,bar=2,baz=3"));
    }

    #[test]
    fn extract_gives_up_on_missing_duplicated_or_misnamed_traceparents() {
        assert_eq!(extract(&BasicProperties::default()), None);
        assert_eq!(extract(&headers(&[("tracestate", "foo=1")])), None, "a tracestate alone means nothing");
        assert_eq!(extract(&headers(&[("trace-parent", VALID)])), None);
        let other = "00-12345678901234567890123456789012-1234567890123456-01";
        assert_eq!(extract(&headers(&[(TRACEPARENT, VALID), ("Traceparent", other)])), None);
        // Not a string.
        let mut table = FieldTable::new();
        table.insert(TRACEPARENT, 7i32).unwrap();
        assert_eq!(extract(&BasicProperties { headers: Some(table), ..Default::default() }), None);
        // A byte array is read like a string.
        let mut table = FieldTable::new();
        table.push(
            ShortStr::try_from(TRACEPARENT).unwrap(),
            FieldValue::ByteArray(Bytes::from_static(VALID.as_bytes())),
        );
        assert_eq!(
            extract(&BasicProperties { headers: Some(table), ..Default::default() }).unwrap().traceparent(),
            VALID
        );
    }

    #[test]
    fn an_invalid_tracestate_is_dropped_and_the_traceparent_kept() {
        let invalid = [
            "foo=1,foo=1",
            "foo=1,foo=2",
            "foo =1",
            "FOO=1",
            "foo.bar=1",
            "foo@=1,bar=2",
            "@foo=1,bar=2",
            "foo@@bar=1,bar=2",
            "foo@bar@baz=1,bar=2",
            "foo=bar=baz",
            "foo=,bar=3",
            "foo",
            "foo=a\tb",
            "1foo=1",
        ];
        for state in invalid {
            let context = extract(&headers(&[(TRACEPARENT, VALID), (TRACESTATE, state)])).unwrap();
            assert_eq!((context.traceparent().as_str(), context.tracestate()), (VALID, None), "{state:?}");
            assert!(
                matches!(TraceContext::new_root(true).with_tracestate(state), Err(TraceContextError::Tracestate(_))),
                "{state:?}"
            );
        }
    }

    #[test]
    fn tracestate_limits() {
        let members = |n: usize| (1..=n).map(|i| format!("bar{i:02}={i:02}")).collect::<Vec<_>>().join(",");
        let root = TraceContext::new_root(true);
        assert_eq!(root.clone().with_tracestate(&members(32)).unwrap().tracestate(), Some(members(32).as_str()));
        assert!(root.clone().with_tracestate(&members(33)).is_err());
        let key_ok = ["z".repeat(256), format!("{}@{}", "t".repeat(241), "v".repeat(14)), "0tenant@vendor".into()];
        for key in key_ok {
            assert!(root.clone().with_tracestate(&format!("{key}=1")).is_ok(), "{key}");
        }
        let key_bad =
            ["z".repeat(257), format!("{}@v", "t".repeat(242)), format!("t@{}", "v".repeat(15)), "t@0v".into()];
        for key in key_bad {
            assert!(root.clone().with_tracestate(&format!("{key}=1")).is_err(), "{key}");
        }
        assert!(root.clone().with_tracestate(&format!("k={}", "v".repeat(256))).is_ok());
        assert!(root.clone().with_tracestate(&format!("k={}", "v".repeat(257))).is_err());
    }

    #[test]
    fn tracestate_whitespace_and_empty_members() {
        let root = TraceContext::new_root(true);
        let state = root.clone().with_tracestate("foo=1 \t , \t bar=2,, \t baz=3").unwrap();
        assert_eq!(state.tracestate(), Some("foo=1,bar=2,baz=3"));
        // Leading spaces in a value are part of it; every allowed character survives.
        let value: String = (0x20u8..=0x7e).filter(|c| !matches!(c, b',' | b'=')).map(char::from).collect();
        let all = format!("abcdefghijklmnopqrstuvwxyz0123456789_-*/@a-z0-9_-*/={value}");
        assert_eq!(root.clone().with_tracestate(&all).unwrap().tracestate(), Some(all.as_str()));
        assert_eq!(root.clone().with_tracestate("").unwrap().tracestate(), None);
        assert_eq!(root.with_tracestate(" , ").unwrap().tracestate(), None);
    }

    fn lower_hex_string(bytes: &[u8]) -> String {
        use std::fmt::Write as _;
        bytes.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    proptest! {
        #[test]
        fn traceparents_round_trip(
            trace_id in any::<[u8; 16]>().prop_filter("not zero", |id| *id != [0; 16]),
            parent_id in any::<[u8; 8]>().prop_filter("not zero", |id| *id != [0; 8]),
            flags in any::<u8>(),
        ) {
            let context = TraceContext::new(trace_id, parent_id, flags).unwrap();
            let text = context.traceparent();
            prop_assert_eq!(
                &text,
                &format!("00-{}-{}-{flags:02x}", lower_hex_string(&trace_id), lower_hex_string(&parent_id))
            );
            prop_assert_eq!(text.parse::<TraceContext>().unwrap(), context.clone());
            let mut properties = BasicProperties::default();
            inject(&context, &mut properties);
            prop_assert_eq!(extract(&properties), Some(context));
        }

        #[test]
        fn tracestates_round_trip(
            members in proptest::collection::btree_map("[a-z][a-z0-9_*/-]{0,20}", r"[\x21-\x2b\x2d-\x3c\x3e-\x7e]([\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,30}[\x21-\x2b\x2d-\x3c\x3e-\x7e])?", 1..=32),
        ) {
            let state = members.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
            let context = TraceContext::new_root(true).with_tracestate(&state).unwrap();
            prop_assert_eq!(context.tracestate(), Some(state.as_str()));
            let mut properties = BasicProperties::default();
            inject(&context, &mut properties);
            prop_assert_eq!(extract(&properties), Some(context));
        }

        #[test]
        fn any_text_parses_or_is_refused_without_panicking(value in ".{0,80}", state in ".{0,80}") {
            if let Ok(context) = TraceContext::parse(&value, Some(&state)) {
                // Whatever was accepted formats as a version 00 value that parses to itself.
                prop_assert_eq!(context.traceparent().parse::<TraceContext>().unwrap().trace_id(), context.trace_id());
            }
        }

        #[test]
        fn any_traceparent_shaped_text_parses_or_is_refused(
            version in "[0-9a-fA-F.]{2}",
            trace in "[0-9a-fA-F]{32}",
            parent in "[0-9a-fA-F]{16}",
            flags in "[0-9a-f]{2}",
        ) {
            let value = format!("{version}-{trace}-{parent}-{flags}");
            let lower = |s: &str| s.bytes().all(|c| !c.is_ascii_uppercase());
            let valid = lower(&version) && !version.contains('.') && version != "ff"
                && lower(&trace) && trace != "0".repeat(32)
                && lower(&parent) && parent != "0".repeat(16);
            prop_assert_eq!(value.parse::<TraceContext>().is_ok(), valid, "{}", value);
        }
    }
}
