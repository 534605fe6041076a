//! Field tables nested far deeper than the codec allows (catalogue M5), built as wire bytes:
//! the encoder refuses them, and a value this deep would recurse when dropped, so these
//! helpers never build one as a value.

/// The wire bytes (4-byte length prefix included) of a field table nested `depth` tables
/// deep: each level holds one entry `k` whose value is the next table; the innermost is
/// empty. `depth` 1 is an empty table.
pub fn nested_table(depth: usize) -> Vec<u8> {
    let depth = depth.max(1);
    // Level i starts with a length, then (except the innermost) "\x01k" and the 'F' tag.
    let mut out = Vec::with_capacity(depth * 7);
    let mut length_at = Vec::with_capacity(depth);
    for level in 1..=depth {
        length_at.push(out.len());
        out.extend_from_slice(&[0; 4]);
        if level < depth {
            out.extend_from_slice(&[1, b'k', b'F']);
        }
    }
    // Each table ends where the outermost does: its length is what follows its prefix.
    let end = out.len();
    for at in length_at {
        let len = u32::try_from(end - at - 4).unwrap_or(u32::MAX);
        if let Some(prefix) = out.get_mut(at..at + 4) {
            prefix.copy_from_slice(&len.to_be_bytes());
        }
    }
    out
}

/// A whole content header frame (class `basic`) on `channel` for a body of `body_size`
/// bytes, whose only property is `headers`, given as raw table bytes (e.g. [`nested_table`]).
pub fn header_frame_with_headers(channel: u16, body_size: u64, headers: &[u8]) -> Vec<u8> {
    /// The `headers` bit of basic's property flags.
    const HEADERS_FLAG: u16 = 0x2000;
    let mut payload = Vec::with_capacity(14 + headers.len());
    payload.extend_from_slice(&60u16.to_be_bytes());
    payload.extend_from_slice(&0u16.to_be_bytes());
    payload.extend_from_slice(&body_size.to_be_bytes());
    payload.extend_from_slice(&HEADERS_FLAG.to_be_bytes());
    payload.extend_from_slice(headers);
    let mut frame = Vec::with_capacity(payload.len() + 8);
    frame.push(2);
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.push(0xCE);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use lepus::codec::{DecodeError, FieldValue, Frame, Limits, decode_frame};

    #[test]
    fn a_table_at_the_limit_decodes_and_one_past_it_is_refused() {
        let limits = Limits::default();
        let mut at_limit = header_frame_with_headers(1, 0, &nested_table(Limits::DEFAULT_MAX_DEPTH)).as_slice().into();
        let Ok(Some(Frame::Header(1, header))) = decode_frame(&mut at_limit, &limits) else {
            panic!("a table nested exactly to the limit decodes")
        };
        let mut depth = 0;
        let mut table = header.properties.headers.as_ref();
        while let Some(t) = table {
            depth += 1;
            table = t.get("k").and_then(FieldValue::as_table);
        }
        assert_eq!(depth, Limits::DEFAULT_MAX_DEPTH);

        let mut past = header_frame_with_headers(1, 0, &nested_table(Limits::DEFAULT_MAX_DEPTH + 1)).as_slice().into();
        let err = decode_frame(&mut past, &limits).unwrap_err();
        assert_eq!(err, DecodeError::NestingTooDeep { limit: Limits::DEFAULT_MAX_DEPTH });
    }
}
