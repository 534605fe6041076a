//! Field tables and arrays with RabbitMQ's type letters.
//!
//! Every value keeps its exact wire type (an `i` u32 stays a `U32`, a `x` byte array stays a
//! `ByteArray`), entries keep their order, and floats compare by bit pattern, so a decoded
//! table re-encodes to the same bytes and `decode(encode(x)) == x` holds for every value.

use std::fmt;

use bytes::{BufMut, Bytes};

use crate::{
    DecodeError, EncodeError, ShortStr,
    wire::{Reader, Writer},
};

/// An AMQP decimal: `value / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Decimal {
    /// Number of decimal places.
    pub scale: u8,
    /// The unscaled value.
    pub value: u32,
}

/// One field-table or field-array value, tagged with its RabbitMQ type letter.
#[derive(Debug, Clone)]
pub enum FieldValue {
    /// `t`: boolean.
    Bool(bool),
    /// `b`: signed 8-bit.
    I8(i8),
    /// `B`: unsigned 8-bit.
    U8(u8),
    /// `s`: signed 16-bit.
    I16(i16),
    /// `u`: unsigned 16-bit.
    U16(u16),
    /// `I`: signed 32-bit.
    I32(i32),
    /// `i`: unsigned 32-bit.
    U32(u32),
    /// `l`: signed 64-bit.
    I64(i64),
    /// `f`: 32-bit float (compared by bit pattern).
    F32(f32),
    /// `d`: 64-bit float (compared by bit pattern).
    F64(f64),
    /// `D`: decimal.
    Decimal(Decimal),
    /// `S`: long string (bytes, usually UTF-8), zero-copy.
    LongString(Bytes),
    /// `A`: array.
    Array(FieldArray),
    /// `T`: timestamp, seconds since the epoch.
    Timestamp(u64),
    /// `F`: nested table.
    Table(FieldTable),
    /// `V`: no value.
    Void,
    /// `x`: byte array, zero-copy.
    ByteArray(Bytes),
}

impl FieldValue {
    /// The RabbitMQ type letter of this value.
    pub const fn type_letter(&self) -> u8 {
        match self {
            FieldValue::Bool(_) => b't',
            FieldValue::I8(_) => b'b',
            FieldValue::U8(_) => b'B',
            FieldValue::I16(_) => b's',
            FieldValue::U16(_) => b'u',
            FieldValue::I32(_) => b'I',
            FieldValue::U32(_) => b'i',
            FieldValue::I64(_) => b'l',
            FieldValue::F32(_) => b'f',
            FieldValue::F64(_) => b'd',
            FieldValue::Decimal(_) => b'D',
            FieldValue::LongString(_) => b'S',
            FieldValue::Array(_) => b'A',
            FieldValue::Timestamp(_) => b'T',
            FieldValue::Table(_) => b'F',
            FieldValue::Void => b'V',
            FieldValue::ByteArray(_) => b'x',
        }
    }

    /// The value as a string, if it is a UTF-8 long string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::LongString(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value as an `i64`, if it is any integer type.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            FieldValue::I8(v) => Some(v.into()),
            FieldValue::U8(v) => Some(v.into()),
            FieldValue::I16(v) => Some(v.into()),
            FieldValue::U16(v) => Some(v.into()),
            FieldValue::I32(v) => Some(v.into()),
            FieldValue::U32(v) => Some(v.into()),
            FieldValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a `bool`, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            FieldValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The nested table, if this is one.
    pub fn as_table(&self) -> Option<&FieldTable> {
        match self {
            FieldValue::Table(t) => Some(t),
            _ => None,
        }
    }

    /// The array, if this is one.
    pub fn as_array(&self) -> Option<&FieldArray> {
        match self {
            FieldValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl PartialEq for FieldValue {
    fn eq(&self, other: &Self) -> bool {
        use FieldValue as V;
        match (self, other) {
            (V::Bool(a), V::Bool(b)) => a == b,
            (V::I8(a), V::I8(b)) => a == b,
            (V::U8(a), V::U8(b)) => a == b,
            (V::I16(a), V::I16(b)) => a == b,
            (V::U16(a), V::U16(b)) => a == b,
            (V::I32(a), V::I32(b)) => a == b,
            (V::U32(a), V::U32(b)) => a == b,
            (V::I64(a), V::I64(b)) => a == b,
            // Bitwise, so NaN payloads and -0.0 round-trip as themselves.
            (V::F32(a), V::F32(b)) => a.to_bits() == b.to_bits(),
            (V::F64(a), V::F64(b)) => a.to_bits() == b.to_bits(),
            (V::Decimal(a), V::Decimal(b)) => a == b,
            (V::LongString(a), V::LongString(b)) | (V::ByteArray(a), V::ByteArray(b)) => a == b,
            (V::Array(a), V::Array(b)) => a == b,
            (V::Timestamp(a), V::Timestamp(b)) => a == b,
            (V::Table(a), V::Table(b)) => a == b,
            (V::Void, V::Void) => true,
            _ => false,
        }
    }
}

impl Eq for FieldValue {}

macro_rules! from_impls {
    ($($t:ty => $variant:ident),* $(,)?) => {
        $(impl From<$t> for FieldValue {
            fn from(v: $t) -> Self { FieldValue::$variant(v.into()) }
        })*
    };
}

from_impls! {
    bool => Bool, i8 => I8, u8 => U8, i16 => I16, u16 => U16, i32 => I32, u32 => U32,
    i64 => I64, f32 => F32, f64 => F64, Decimal => Decimal, Bytes => LongString,
    String => LongString, FieldTable => Table, FieldArray => Array,
}

impl From<&str> for FieldValue {
    fn from(s: &str) -> Self {
        FieldValue::LongString(Bytes::copy_from_slice(s.as_bytes()))
    }
}

/// An AMQP field table: named values in wire order.
///
/// Lookups are linear; the tables AMQP carries (arguments, headers, capabilities) are small.
///
/// ```
/// use lepus_codec::{FieldTable, FieldValue};
/// let mut args = FieldTable::new();
/// args.insert("x-max-priority", 10u8).unwrap();
/// args.insert("x-queue-type", "quorum").unwrap();
/// assert_eq!(args.get("x-max-priority"), Some(&FieldValue::U8(10)));
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct FieldTable(Vec<(ShortStr, FieldValue)>);

impl FieldTable {
    /// An empty table.
    pub const fn new() -> Self {
        FieldTable(Vec::new())
    }

    /// Sets `key` to `value`, replacing an earlier value of the same key in place.
    /// Returns the old value. Fails only for a key over 255 bytes.
    pub fn insert<K, V>(&mut self, key: K, value: V) -> Result<Option<FieldValue>, EncodeError>
    where
        K: TryInto<ShortStr, Error = EncodeError>,
        V: Into<FieldValue>,
    {
        let key = key.try_into()?;
        let value = value.into();
        if let Some(slot) = self.0.iter_mut().find(|(k, _)| *k == key) {
            return Ok(Some(std::mem::replace(&mut slot.1, value)));
        }
        self.0.push((key, value));
        Ok(None)
    }

    /// Appends an entry without looking for an earlier one of the same key (decoder use,
    /// and for reproducing tables with duplicate keys exactly).
    pub fn push(&mut self, key: ShortStr, value: FieldValue) {
        self.0.push((key, value));
    }

    /// The first value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0.iter().find(|(k, _)| k.as_bytes() == key.as_bytes()).map(|(_, v)| v)
    }

    /// Removes and returns the first value stored under `key`.
    pub fn remove(&mut self, key: &str) -> Option<FieldValue> {
        let at = self.0.iter().position(|(k, _)| k.as_bytes() == key.as_bytes())?;
        Some(self.0.remove(at).1)
    }

    /// The entries in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&ShortStr, &FieldValue)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for FieldTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter().map(|(k, v)| (k, v))).finish()
    }
}

impl FromIterator<(ShortStr, FieldValue)> for FieldTable {
    fn from_iter<I: IntoIterator<Item = (ShortStr, FieldValue)>>(iter: I) -> Self {
        FieldTable(iter.into_iter().collect())
    }
}

impl IntoIterator for FieldTable {
    type Item = (ShortStr, FieldValue);
    type IntoIter = std::vec::IntoIter<(ShortStr, FieldValue)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// An AMQP field array (type letter `A`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldArray(pub Vec<FieldValue>);

impl FieldArray {
    /// An empty array.
    pub const fn new() -> Self {
        FieldArray(Vec::new())
    }
}

impl FromIterator<FieldValue> for FieldArray {
    fn from_iter<I: IntoIterator<Item = FieldValue>>(iter: I) -> Self {
        FieldArray(iter.into_iter().collect())
    }
}

fn check_depth_decode(depth: usize, limit: usize) -> Result<(), DecodeError> {
    if depth > limit { Err(DecodeError::NestingTooDeep { limit }) } else { Ok(()) }
}

fn check_depth_encode(depth: usize, limit: usize) -> Result<(), EncodeError> {
    if depth > limit { Err(EncodeError::NestingTooDeep { limit }) } else { Ok(()) }
}

/// Reads a length-prefixed table at nesting level `depth` (1 for a method argument).
///
/// Entries are pushed as they parse, so memory grows only with bytes actually present;
/// the length prefix is checked against the payload, never trusted for an allocation.
pub(crate) fn read_table(r: &mut Reader<'_>, depth: usize) -> Result<FieldTable, DecodeError> {
    check_depth_decode(depth, r.max_depth)?;
    let len = r.long()? as usize;
    let mut inner = r.sub(len, "field table")?;
    let mut table = Vec::new();
    while !inner.is_empty() {
        let key = inner.shortstr()?;
        let value = read_value(&mut inner, depth)?;
        table.push((key, value));
    }
    Ok(FieldTable(table))
}

fn read_array(r: &mut Reader<'_>, depth: usize) -> Result<FieldArray, DecodeError> {
    check_depth_decode(depth, r.max_depth)?;
    let len = r.long()? as usize;
    let mut inner = r.sub(len, "field array")?;
    let mut values = Vec::new();
    while !inner.is_empty() {
        values.push(read_value(&mut inner, depth)?);
    }
    Ok(FieldArray(values))
}

/// Reads one tagged value inside a container at level `depth`.
///
/// This function and the two container readers are the recursion: scalars are read in
/// [`read_scalar`], whose frame is gone again before the next level starts, so each level
/// costs as little stack as possible (a debug build would otherwise need about 4 KiB per
/// level, and 64 levels would overflow a 256 KiB stack).
fn read_value(r: &mut Reader<'_>, depth: usize) -> Result<FieldValue, DecodeError> {
    match r.octet()? {
        b'A' => read_array(r, depth + 1).map(FieldValue::Array),
        b'F' => read_table(r, depth + 1).map(FieldValue::Table),
        tag => read_scalar(r, tag),
    }
}

/// Reads a value that is not a container.
#[inline(never)]
fn read_scalar(r: &mut Reader<'_>, tag: u8) -> Result<FieldValue, DecodeError> {
    Ok(match tag {
        b't' => FieldValue::Bool(r.octet()? != 0),
        b'b' => FieldValue::I8(r.octet()?.cast_signed()),
        b'B' => FieldValue::U8(r.octet()?),
        b's' => FieldValue::I16(r.short()?.cast_signed()),
        b'u' => FieldValue::U16(r.short()?),
        b'I' => FieldValue::I32(r.long()?.cast_signed()),
        b'i' => FieldValue::U32(r.long()?),
        b'l' => FieldValue::I64(r.longlong()?.cast_signed()),
        b'f' => FieldValue::F32(f32::from_bits(r.long()?)),
        b'd' => FieldValue::F64(f64::from_bits(r.longlong()?)),
        b'D' => FieldValue::Decimal(Decimal { scale: r.octet()?, value: r.long()? }),
        b'S' => FieldValue::LongString(r.longstr()?),
        b'x' => FieldValue::ByteArray(r.longstr()?),
        b'T' => FieldValue::Timestamp(r.timestamp()?),
        b'V' => FieldValue::Void,
        other => return Err(DecodeError::UnknownFieldType(other)),
    })
}

/// Writes a length-prefixed table at nesting level `depth`.
pub(crate) fn write_table(w: &mut Writer<'_>, table: &FieldTable, depth: usize) -> Result<(), EncodeError> {
    check_depth_encode(depth, w.max_depth)?;
    let at = w.begin_len();
    for (key, value) in &table.0 {
        w.shortstr(key)?;
        write_value(w, value, depth)?;
    }
    w.patch_len(at, "field table")
}

fn write_array(w: &mut Writer<'_>, array: &FieldArray, depth: usize) -> Result<(), EncodeError> {
    check_depth_encode(depth, w.max_depth)?;
    let at = w.begin_len();
    for value in &array.0 {
        write_value(w, value, depth)?;
    }
    w.patch_len(at, "field array")
}

fn write_value(w: &mut Writer<'_>, value: &FieldValue, depth: usize) -> Result<(), EncodeError> {
    w.buf.put_u8(value.type_letter());
    match value {
        FieldValue::Bool(v) => w.buf.put_u8(u8::from(*v)),
        FieldValue::I8(v) => w.buf.put_i8(*v),
        FieldValue::U8(v) => w.buf.put_u8(*v),
        FieldValue::I16(v) => w.buf.put_i16(*v),
        FieldValue::U16(v) => w.buf.put_u16(*v),
        FieldValue::I32(v) => w.buf.put_i32(*v),
        FieldValue::U32(v) => w.buf.put_u32(*v),
        FieldValue::I64(v) => w.buf.put_i64(*v),
        FieldValue::F32(v) => w.buf.put_u32(v.to_bits()),
        FieldValue::F64(v) => w.buf.put_u64(v.to_bits()),
        FieldValue::Decimal(d) => {
            w.buf.put_u8(d.scale);
            w.buf.put_u32(d.value);
        }
        FieldValue::LongString(b) | FieldValue::ByteArray(b) => w.longstr(b)?,
        FieldValue::Array(a) => write_array(w, a, depth + 1)?,
        FieldValue::Timestamp(t) => w.buf.put_u64(*t),
        FieldValue::Table(t) => write_table(w, t, depth + 1)?,
        FieldValue::Void => {}
    }
    Ok(())
}
