//! `StreamOffset` and `StreamInterval`: where a stream consumer starts reading
//! (`x-stream-offset`), and RabbitMQ's `"7D"`-style durations (also `x-max-age`), typed.
//!
//! RabbitMQ tells the kinds of `x-stream-offset` apart by the argument's *field type*, not
//! by its text: the strings `first`, `last` and `next` name a position, any other long
//! string is an interval back from now, an AMQP timestamp (`T`) is seconds since the epoch,
//! and an integer is an offset. The seconds of a timestamp sent as an integer would be read
//! as an offset far beyond the end of the stream (the consumer then waits for new
//! messages); [`StreamOffset`] sends each kind with the type that means it.

use std::{
    fmt,
    num::NonZeroU32,
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use lepus_codec::FieldValue;

/// Where a consumer of a stream starts (`x-stream-offset`, a consumer argument).
///
/// Use it with [`ConsumeOptions::stream`](crate::ConsumeOptions::stream), which also sets
/// what a stream consumer needs besides (manual acknowledgements; a prefetch is set with
/// [`Channel::basic_qos`](crate::Channel::basic_qos) before consuming).
///
/// ```
/// use lepus::{FieldValue, StreamInterval, StreamOffset};
///
/// assert_eq!(FieldValue::from(StreamOffset::First).as_str(), Some("first"));
/// assert_eq!(FieldValue::from(StreamOffset::Offset(50)), FieldValue::I64(50));
/// assert_eq!(FieldValue::from(StreamOffset::Timestamp(1_700_000_000)), FieldValue::Timestamp(1_700_000_000));
/// let last_hour = StreamOffset::Interval("1h".parse::<StreamInterval>()?);
/// assert_eq!(FieldValue::from(last_hour).as_str(), Some("1h"));
/// # Ok::<(), lepus::InvalidInterval>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamOffset {
    /// The first message still in the stream (sent as the long string `first`).
    First,
    /// The last chunk written: the most recent message and the few written with it in one
    /// batch, then everything after (`last`).
    Last,
    /// Only messages written after the consumer starts (`next`): RabbitMQ's default.
    Next,
    /// The message at this offset (sent as a signed 64-bit integer, `l`). Offsets count
    /// from 0 for the first message ever written; one no longer in the stream starts at
    /// the first one still there, one beyond the end waits for it. Above `i64::MAX` it is
    /// sent as `i64::MAX`, which waits the same way.
    Offset(u64),
    /// The first chunk written at or after this time, in seconds since the Unix epoch (sent
    /// as an AMQP timestamp, `T`). RabbitMQ compares it with when each chunk was *written*
    /// (not the messages' `timestamp` property), and delivers whole chunks, so a few
    /// messages written up to a second or so earlier can come too.
    Timestamp(u64),
    /// Messages written within this interval before the consumer starts, by the broker's
    /// clock (sent as a long string such as `"10m"`).
    Interval(StreamInterval),
}

impl StreamOffset {
    /// [`StreamOffset::Timestamp`] at `time`, to the whole second below; a time before the
    /// epoch is the epoch.
    pub fn at(time: SystemTime) -> Self {
        StreamOffset::Timestamp(time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
    }

    /// The value of the `x-stream-offset` argument, with the field type that carries this
    /// kind of offset.
    pub fn to_field_value(&self) -> FieldValue {
        match *self {
            StreamOffset::First => FieldValue::LongString(Bytes::from_static(b"first")),
            StreamOffset::Last => FieldValue::LongString(Bytes::from_static(b"last")),
            StreamOffset::Next => FieldValue::LongString(Bytes::from_static(b"next")),
            // Saturating: past the end either way, so the broker waits for new messages.
            StreamOffset::Offset(n) => FieldValue::I64(i64::try_from(n).unwrap_or(i64::MAX)),
            StreamOffset::Timestamp(secs) => FieldValue::Timestamp(secs),
            StreamOffset::Interval(interval) => FieldValue::LongString(Bytes::from(interval.to_string())),
        }
    }
}

impl From<StreamOffset> for FieldValue {
    fn from(offset: StreamOffset) -> FieldValue {
        offset.to_field_value()
    }
}

impl From<StreamInterval> for StreamOffset {
    fn from(interval: StreamInterval) -> StreamOffset {
        StreamOffset::Interval(interval)
    }
}

/// A unit of a [`StreamInterval`]. Case matters on the wire: `M` is months, `m` minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntervalUnit {
    /// `Y`: 365 days, as RabbitMQ counts them.
    Years,
    /// `M`: 30 days, as RabbitMQ counts them.
    Months,
    /// `D`: days.
    Days,
    /// `h`: hours.
    Hours,
    /// `m`: minutes.
    Minutes,
    /// `s`: seconds.
    Seconds,
}

impl IntervalUnit {
    /// The unit's letter on the wire.
    pub fn symbol(self) -> char {
        match self {
            IntervalUnit::Years => 'Y',
            IntervalUnit::Months => 'M',
            IntervalUnit::Days => 'D',
            IntervalUnit::Hours => 'h',
            IntervalUnit::Minutes => 'm',
            IntervalUnit::Seconds => 's',
        }
    }

    /// The unit for a letter, if RabbitMQ knows it.
    pub fn from_symbol(symbol: char) -> Option<IntervalUnit> {
        Some(match symbol {
            'Y' => IntervalUnit::Years,
            'M' => IntervalUnit::Months,
            'D' => IntervalUnit::Days,
            'h' => IntervalUnit::Hours,
            'm' => IntervalUnit::Minutes,
            's' => IntervalUnit::Seconds,
            _ => return None,
        })
    }

    /// The unit's length in seconds, as RabbitMQ reckons it.
    pub fn seconds(self) -> u64 {
        const DAY: u64 = 24 * 3600;
        match self {
            IntervalUnit::Years => 365 * DAY,
            IntervalUnit::Months => 30 * DAY,
            IntervalUnit::Days => DAY,
            IntervalUnit::Hours => 3600,
            IntervalUnit::Minutes => 60,
            IntervalUnit::Seconds => 1,
        }
    }
}

/// A duration in RabbitMQ's stream notation: a positive whole number and one unit letter,
/// `"7D"`, `"12h"`, `"10m"`, `"30s"` (also `Y` years and `M` months). It is an
/// [`StreamOffset::Interval`] back from now, and a stream's retention
/// ([`QueueArguments::max_age`](crate::QueueArguments::max_age)).
///
/// RabbitMQ accepts nothing else (no `"1h30m"`, no spaces, no `"0s"`); an `x-stream-offset`
/// string it cannot read closes the channel. Parsing here refuses the same strings first,
/// with the reason.
///
/// ```
/// use std::time::Duration;
/// use lepus::{IntervalUnit, StreamInterval};
///
/// let week: StreamInterval = "7D".parse()?;
/// assert_eq!(week, StreamInterval::new(7, IntervalUnit::Days)?);
/// assert_eq!(week.as_duration(), Duration::from_secs(7 * 86_400));
/// assert_eq!(week.to_string(), "7D");
/// assert!("1h30m".parse::<StreamInterval>().is_err());
/// # Ok::<(), lepus::InvalidInterval>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamInterval {
    amount: NonZeroU32,
    unit: IntervalUnit,
}

impl StreamInterval {
    /// `amount` units; at least 1.
    pub fn new(amount: u32, unit: IntervalUnit) -> Result<StreamInterval, InvalidInterval> {
        let amount = NonZeroU32::new(amount).ok_or(InvalidInterval::Zero)?;
        Ok(StreamInterval { amount, unit })
    }

    /// How many units.
    pub fn amount(&self) -> u32 {
        self.amount.get()
    }

    /// The unit.
    pub fn unit(&self) -> IntervalUnit {
        self.unit
    }

    /// The length RabbitMQ gives it (a year is 365 days, a month 30).
    pub fn as_duration(&self) -> Duration {
        Duration::from_secs(u64::from(self.amount.get()) * self.unit.seconds())
    }
}

impl fmt::Display for StreamInterval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.amount, self.unit.symbol())
    }
}

impl FromStr for StreamInterval {
    type Err = InvalidInterval;

    fn from_str(s: &str) -> Result<StreamInterval, InvalidInterval> {
        let unit_at = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(unit_at);
        if digits.is_empty() {
            return Err(InvalidInterval::MissingAmount(s.to_owned()));
        }
        let mut letters = unit.chars();
        let unit = match (letters.next(), letters.next()) {
            (Some(letter), None) => {
                IntervalUnit::from_symbol(letter).ok_or_else(|| InvalidInterval::Unit(unit.to_owned()))?
            }
            _ => return Err(InvalidInterval::Unit(unit.to_owned())),
        };
        // Only ASCII digits are left, so the one way to fail is being too large.
        let amount: u32 = digits.parse().map_err(|_| InvalidInterval::TooLarge(s.to_owned()))?;
        StreamInterval::new(amount, unit)
    }
}

impl TryFrom<&str> for StreamInterval {
    type Error = InvalidInterval;

    fn try_from(s: &str) -> Result<StreamInterval, InvalidInterval> {
        s.parse()
    }
}

/// Why a string is not a [`StreamInterval`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidInterval {
    /// It does not start with a number (`""`, `"D"`, `"-1D"`, `" 1D"`).
    #[error("stream interval {0:?} has no amount: write a whole number and a unit, e.g. \"7D\"")]
    MissingAmount(String),
    /// The amount is 0: RabbitMQ refuses it.
    #[error("a stream interval must be at least 1 unit")]
    Zero,
    /// The amount does not fit in 32 bits.
    #[error("stream interval {0:?} is too large (at most 4294967295 units)")]
    TooLarge(String),
    /// The unit is not exactly one of `Y`, `M`, `D`, `h`, `m`, `s` (this holds the rest of the
    /// string after the number).
    #[error("stream interval unit {0:?} is not one of Y, M, D, h, m, s (months M, minutes m)")]
    Unit(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_offset_kind_goes_out_with_the_field_type_rabbitmq_reads_it_by() {
        let cases = [
            (StreamOffset::First, b'S', FieldValue::LongString(Bytes::from_static(b"first"))),
            (StreamOffset::Last, b'S', FieldValue::LongString(Bytes::from_static(b"last"))),
            (StreamOffset::Next, b'S', FieldValue::LongString(Bytes::from_static(b"next"))),
            (StreamOffset::Offset(0), b'l', FieldValue::I64(0)),
            (StreamOffset::Offset(50), b'l', FieldValue::I64(50)),
            (StreamOffset::Timestamp(1_700_000_000), b'T', FieldValue::Timestamp(1_700_000_000)),
            (
                StreamOffset::Interval(StreamInterval::new(10, IntervalUnit::Minutes).unwrap()),
                b'S',
                FieldValue::LongString(Bytes::from_static(b"10m")),
            ),
        ];
        for (offset, letter, value) in cases {
            let encoded = FieldValue::from(offset);
            assert_eq!(encoded.type_letter(), letter, "{offset:?}");
            assert_eq!(encoded, value, "{offset:?}");
        }
    }

    #[test]
    fn a_timestamp_is_never_sent_as_an_integer_nor_an_offset_as_a_timestamp() {
        // RabbitMQ would read integer seconds as an offset far past the end.
        assert!(!matches!(StreamOffset::Timestamp(5).to_field_value(), FieldValue::I64(_)));
        assert!(!matches!(StreamOffset::Offset(5).to_field_value(), FieldValue::Timestamp(_)));
    }

    #[test]
    fn offsets_beyond_i64_saturate() {
        assert_eq!(StreamOffset::Offset(u64::MAX).to_field_value(), FieldValue::I64(i64::MAX));
        assert_eq!(StreamOffset::Offset(i64::MAX as u64).to_field_value(), FieldValue::I64(i64::MAX));
    }

    #[test]
    fn at_takes_whole_seconds_and_clamps_before_the_epoch() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_999);
        assert_eq!(StreamOffset::at(t), StreamOffset::Timestamp(1_700_000_000));
        assert_eq!(StreamOffset::at(UNIX_EPOCH - Duration::from_secs(10)), StreamOffset::Timestamp(0));
    }

    #[test]
    fn intervals_parse_and_print_rabbitmqs_notation() {
        for (text, amount, unit) in [
            ("1Y", 1, IntervalUnit::Years),
            ("2M", 2, IntervalUnit::Months),
            ("7D", 7, IntervalUnit::Days),
            ("12h", 12, IntervalUnit::Hours),
            ("10m", 10, IntervalUnit::Minutes),
            ("30s", 30, IntervalUnit::Seconds),
            ("4294967295s", u32::MAX, IntervalUnit::Seconds),
        ] {
            let parsed: StreamInterval = text.parse().unwrap();
            assert_eq!((parsed.amount(), parsed.unit()), (amount, unit), "{text}");
            assert_eq!(parsed.to_string(), text);
            assert_eq!(StreamInterval::try_from(text).unwrap(), parsed);
        }
        // Leading zeros are a number RabbitMQ reads too; they print without.
        assert_eq!("007D".parse::<StreamInterval>().unwrap().to_string(), "7D");
    }

    #[test]
    fn durations_use_rabbitmqs_month_and_year() {
        let d = |s: &str| s.parse::<StreamInterval>().unwrap().as_duration().as_secs();
        assert_eq!(d("1Y"), 365 * 86_400);
        assert_eq!(d("1M"), 30 * 86_400);
        assert_eq!(d("1D"), 86_400);
        assert_eq!(d("1h"), 3_600);
        assert_eq!(d("1m"), 60);
        assert_eq!(d("1s"), 1);
        assert_eq!(d("4294967295Y"), u64::from(u32::MAX) * 365 * 86_400);
    }

    #[test]
    fn what_rabbitmq_refuses_is_refused_with_the_reason() {
        let err = |s: &str| s.parse::<StreamInterval>().unwrap_err();
        for s in ["", "D", "-1D", " 1D", "+1D", "h1"] {
            assert!(matches!(err(s), InvalidInterval::MissingAmount(_)), "{s:?}: {:?}", err(s));
        }
        assert_eq!(err("0D"), InvalidInterval::Zero);
        assert_eq!(err("000s"), InvalidInterval::Zero);
        assert!(matches!(err("4294967296s"), InvalidInterval::TooLarge(_)));
        for (s, rest) in
            [("1", ""), ("1d", "d"), ("1H", "H"), ("1h30m", "h30m"), ("1 D", " D"), ("1Dx", "Dx"), ("1é", "é")]
        {
            assert_eq!(err(s), InvalidInterval::Unit(rest.to_owned()), "{s:?}");
        }
        assert_eq!(StreamInterval::new(0, IntervalUnit::Days), Err(InvalidInterval::Zero));
        assert!(err("1h30m").to_string().contains("not one of Y, M, D, h, m, s"));
    }

    #[test]
    fn every_unit_round_trips_through_its_symbol() {
        for unit in [
            IntervalUnit::Years,
            IntervalUnit::Months,
            IntervalUnit::Days,
            IntervalUnit::Hours,
            IntervalUnit::Minutes,
            IntervalUnit::Seconds,
        ] {
            assert_eq!(IntervalUnit::from_symbol(unit.symbol()), Some(unit));
        }
        assert_eq!(IntervalUnit::from_symbol('d'), None);
    }
}
