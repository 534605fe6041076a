//! Field-level reading and writing: the AMQP domains (octet, short, long, longlong, bit,
//! shortstr, longstr, timestamp, table) over a frame payload.
//!
//! Reading works over `&[u8]` with fixed-width reads (`split_first_chunk` + `from_be_bytes`,
//! which inline, where nom's generic parsers did not and cost a sixth of a delivery's
//! decode). Long strings come back as `Bytes` slices of the frame; short strings of up to
//! 38 bytes are copied inline, which is cheaper than sharing them (no reference counting).
//! Consecutive `bit` fields share octets, as the specification packs them: any other field,
//! and the end of the method, starts a fresh octet.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{DecodeError, EncodeError, FieldTable, ShortStr, field_table};

/// Reads fields from one frame payload.
///
/// A reader is either *shared*, over a payload split off the read buffer as `Bytes`, or
/// *borrowed*, straight over the read buffer's bytes. Splitting a frame off costs two
/// atomic reference-count operations and a few dozen instructions, which a method or
/// header frame whose strings are all short (so copied inline) does not need: those are
/// read borrowed first. A borrowed reader refuses the fields that would have to share the
/// payload (long strings, short strings over the inline size, tables) and sets
/// [`Reader::needs_shared`]; the caller then reads the frame again, shared.
pub(crate) struct Reader<'a> {
    /// The whole payload when shared, so that strings can be returned as slices of it.
    payload: Option<&'a Bytes>,
    /// What is left to read; when shared, always a sub-slice of `payload` (a suffix, or
    /// for a sub-reader a table's body).
    rest: &'a [u8],
    bits: u8,
    /// Next bit to hand out from `bits`; 8 means "read a fresh octet".
    bit_pos: u8,
    /// Set by a borrowed reader that met a field it cannot return without sharing the
    /// payload; the error it returned then only means "read this frame shared".
    pub(crate) needs_shared: bool,
    pub(crate) max_depth: usize,
}

impl<'a> Reader<'a> {
    /// A shared reader over a whole payload.
    #[inline]
    pub(crate) fn new(payload: &'a Bytes, max_depth: usize) -> Self {
        Reader { payload: Some(payload), rest: payload, bits: 0, bit_pos: 8, needs_shared: false, max_depth }
    }

    /// A borrowed reader over payload bytes still in the read buffer.
    #[inline]
    pub(crate) fn borrowed(payload: &'a [u8], max_depth: usize) -> Self {
        Reader { payload: None, rest: payload, bits: 0, bit_pos: 8, needs_shared: false, max_depth }
    }

    /// Marks this borrowed reader as needing a shared payload; returns the error to bail
    /// out with (the caller looks at [`Reader::needs_shared`], not at the error).
    #[cold]
    fn bail_to_shared(&mut self, field: &'static str) -> DecodeError {
        self.needs_shared = true;
        DecodeError::Truncated { field }
    }

    #[inline]
    fn take<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        self.bit_pos = 8;
        let (head, rest) = self.rest.split_first_chunk::<N>().ok_or(DecodeError::Truncated { field })?;
        self.rest = rest;
        Ok(*head)
    }

    #[inline]
    pub(crate) fn octet(&mut self) -> Result<u8, DecodeError> {
        self.take::<1>("octet").map(|[b]| b)
    }

    #[inline]
    pub(crate) fn short(&mut self) -> Result<u16, DecodeError> {
        self.take("short").map(u16::from_be_bytes)
    }

    #[inline]
    pub(crate) fn long(&mut self) -> Result<u32, DecodeError> {
        self.take("long").map(u32::from_be_bytes)
    }

    #[inline]
    pub(crate) fn longlong(&mut self) -> Result<u64, DecodeError> {
        self.take("longlong").map(u64::from_be_bytes)
    }

    #[inline]
    pub(crate) fn timestamp(&mut self) -> Result<u64, DecodeError> {
        self.take("timestamp").map(u64::from_be_bytes)
    }

    pub(crate) fn bit(&mut self) -> Result<bool, DecodeError> {
        if self.bit_pos >= 8 {
            let (&[octet], rest) = self.rest.split_first_chunk::<1>().ok_or(DecodeError::Truncated { field: "bit" })?;
            self.rest = rest;
            self.bits = octet;
            self.bit_pos = 0;
        }
        let value = self.bits & (1 << self.bit_pos) != 0;
        self.bit_pos += 1;
        Ok(value)
    }

    /// `len` bytes as a zero-copy slice of the payload.
    pub(crate) fn bytes(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        let Some(payload) = self.payload else {
            return Err(self.bail_to_shared(field));
        };
        self.bit_pos = 8;
        let (taken, rest) = self.rest.split_at_checked(len).ok_or(DecodeError::Truncated { field })?;
        self.rest = rest;
        // `rest` (of this reader or of a sub-reader) always lies inside `payload`, so
        // `slice_ref` finds it; it shares the payload's memory instead of copying.
        Ok(payload.slice_ref(taken))
    }

    #[inline]
    pub(crate) fn shortstr(&mut self) -> Result<ShortStr, DecodeError> {
        let [len] = self.take::<1>("shortstr length")?;
        let len = usize::from(len);
        if let Some(s) = ShortStr::inline_prefix(self.rest, len) {
            // `inline_prefix` checked that `rest` holds `len` bytes.
            self.rest = self.rest.get(len..).unwrap_or_default();
            return Ok(s);
        }
        self.shortstr_shared(len)
    }

    /// A short string too long to copy inline, or truncated.
    #[inline(never)]
    fn shortstr_shared(&mut self, len: usize) -> Result<ShortStr, DecodeError> {
        let bytes = self.bytes(len, "shortstr")?;
        Ok(ShortStr::from_bytes_unchecked(bytes))
    }

    pub(crate) fn longstr(&mut self) -> Result<Bytes, DecodeError> {
        let len = u32::from_be_bytes(self.take("longstr length")?);
        self.bytes(len as usize, "longstr")
    }

    pub(crate) fn table(&mut self) -> Result<FieldTable, DecodeError> {
        // Tables hold long strings, and their sub-readers could not report back here.
        if self.payload.is_none() {
            return Err(self.bail_to_shared("field table"));
        }
        field_table::read_table(self, 1)
    }

    /// A sub-reader over the next `len` bytes (a table or array body); this reader skips them.
    pub(crate) fn sub(&mut self, len: usize, field: &'static str) -> Result<Reader<'a>, DecodeError> {
        self.bit_pos = 8;
        let (inner, rest) = self.rest.split_at_checked(len).ok_or(DecodeError::Truncated { field })?;
        self.rest = rest;
        Ok(Reader {
            payload: self.payload,
            rest: inner,
            bits: 0,
            bit_pos: 8,
            needs_shared: false,
            max_depth: self.max_depth,
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Fails if any bytes are left after `what` was decoded.
    pub(crate) fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.rest.is_empty() { Ok(()) } else { Err(DecodeError::TrailingBytes { what, count: self.rest.len() }) }
    }
}

/// Writes fields into a caller's buffer, packing consecutive bits.
///
/// Every writer returns `Result` so the method table can call them uniformly, even those
/// that cannot fail.
pub(crate) struct Writer<'a> {
    pub(crate) buf: &'a mut BytesMut,
    bits: u8,
    /// Bits pending in `bits`; 0 means none.
    bit_count: u8,
    pub(crate) max_depth: usize,
}

#[allow(clippy::unnecessary_wraps)]
impl<'a> Writer<'a> {
    pub(crate) fn new(buf: &'a mut BytesMut, max_depth: usize) -> Self {
        Writer { buf, bits: 0, bit_count: 0, max_depth }
    }

    /// Writes pending bits, if any. Every non-bit field, and the end of a method, calls it.
    pub(crate) fn flush_bits(&mut self) {
        if self.bit_count > 0 {
            self.buf.put_u8(self.bits);
            self.bits = 0;
            self.bit_count = 0;
        }
    }

    pub(crate) fn octet(&mut self, v: u8) -> Result<(), EncodeError> {
        self.flush_bits();
        self.buf.put_u8(v);
        Ok(())
    }

    pub(crate) fn short(&mut self, v: u16) -> Result<(), EncodeError> {
        self.flush_bits();
        self.buf.put_u16(v);
        Ok(())
    }

    pub(crate) fn long(&mut self, v: u32) -> Result<(), EncodeError> {
        self.flush_bits();
        self.buf.put_u32(v);
        Ok(())
    }

    pub(crate) fn longlong(&mut self, v: u64) -> Result<(), EncodeError> {
        self.flush_bits();
        self.buf.put_u64(v);
        Ok(())
    }

    pub(crate) fn timestamp(&mut self, v: u64) -> Result<(), EncodeError> {
        self.longlong(v)
    }

    pub(crate) fn bit(&mut self, v: bool) -> Result<(), EncodeError> {
        if self.bit_count == 8 {
            self.flush_bits();
        }
        self.bits |= u8::from(v) << self.bit_count;
        self.bit_count += 1;
        Ok(())
    }

    pub(crate) fn shortstr(&mut self, s: &ShortStr) -> Result<(), EncodeError> {
        self.flush_bits();
        // ShortStr guarantees at most 255 bytes.
        self.buf.put_u8(s.len() as u8);
        self.buf.put_slice(s);
        Ok(())
    }

    pub(crate) fn longstr(&mut self, s: &[u8]) -> Result<(), EncodeError> {
        self.flush_bits();
        let len = u32::try_from(s.len()).map_err(|_| EncodeError::TooLong { what: "long string", len: s.len() })?;
        self.buf.put_u32(len);
        self.buf.put_slice(s);
        Ok(())
    }

    pub(crate) fn table(&mut self, t: &FieldTable) -> Result<(), EncodeError> {
        self.flush_bits();
        field_table::write_table(self, t, 1)
    }

    /// Reserves a u32 length prefix; returns its position for [`Writer::patch_len`].
    pub(crate) fn begin_len(&mut self) -> usize {
        self.flush_bits();
        let at = self.buf.len();
        self.buf.put_u32(0);
        at
    }

    /// Fills in the length prefix reserved at `at` with the bytes written since.
    pub(crate) fn patch_len(&mut self, at: usize, what: &'static str) -> Result<(), EncodeError> {
        patch_u32_len(self.buf, at, what)
    }
}

/// Patches the u32 at `at` with the number of bytes written after it.
pub(crate) fn patch_u32_len(buf: &mut BytesMut, at: usize, what: &'static str) -> Result<(), EncodeError> {
    let len = buf.len() - at - 4;
    let len32 = u32::try_from(len).map_err(|_| EncodeError::TooLong { what, len })?;
    if let Some(slot) = buf.get_mut(at..at + 4) {
        slot.copy_from_slice(&len32.to_be_bytes());
    }
    Ok(())
}
