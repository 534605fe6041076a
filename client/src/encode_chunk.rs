//! Where small publishes are encoded: slices of one buffer per thread, not one allocation
//! each.
//!
//! A publish is encoded on the caller's thread and its buffer freed on the driver's once
//! written. Allocated and freed on different threads, one small buffer per message kept
//! the allocator in its slow paths (`_int_malloc` was about 15% of a confirm-mode
//! publisher's time on the multi-thread runtime). Each thread now encodes small publishes
//! into a chunk of [`CHUNK`] bytes and hands over a slice of it; the chunk is freed once
//! the last of its slices is written.
//!
//! A slice keeps its whole chunk alive, so only frames that are dropped once written use
//! it: not those kept for republishing after a recovery, which may live as long as their
//! confirm takes.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

/// The size of a thread's chunk.
const CHUNK: usize = 16 * 1024;
/// Frames larger than this get a buffer of their own (a chunk would hold too few).
const LARGEST: usize = CHUNK / 4;

thread_local! {
    static CHUNK_BUF: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Runs `encode` on an empty buffer with room for about `need` bytes, and returns what it
/// wrote. `shared_chunk`: the frames may share this thread's chunk (they are dropped once
/// written). `encode` leaves the buffer as it found it when it fails.
pub(crate) fn encode<E>(
    need: usize,
    shared_chunk: bool,
    encode: impl FnOnce(&mut BytesMut) -> Result<(), E>,
) -> Result<Bytes, E> {
    if !shared_chunk || need > LARGEST {
        let mut buf = BytesMut::with_capacity(need);
        encode(&mut buf)?;
        return Ok(buf.freeze());
    }
    CHUNK_BUF.with(|cell| {
        // Nothing in `encode` reaches this thread's chunk again; a second borrow would get
        // a buffer of its own rather than panic.
        let Ok(mut buf) = cell.try_borrow_mut() else {
            let mut buf = BytesMut::with_capacity(need);
            encode(&mut buf)?;
            return Ok(buf.freeze());
        };
        if buf.capacity() - buf.len() < need {
            *buf = BytesMut::with_capacity(CHUNK);
        }
        encode(&mut buf)?;
        Ok(buf.split().freeze())
    })
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;

    fn put(bytes: &'static [u8]) -> impl FnOnce(&mut BytesMut) -> Result<(), ()> {
        move |buf| {
            buf.put_slice(bytes);
            Ok(())
        }
    }

    #[test]
    fn slices_of_one_chunk_hold_their_own_bytes() {
        let a = encode(8, true, put(b"first")).unwrap();
        let b = encode(8, true, put(b"second")).unwrap();
        assert_eq!((&a[..], &b[..]), (&b"first"[..], &b"second"[..]));
        // Adjacent in one allocation.
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
        drop(a);
        assert_eq!(&b[..], b"second");
    }

    #[test]
    fn a_failed_encoding_leaves_nothing_behind() {
        let failed = encode(8, true, |buf: &mut BytesMut| {
            let start = buf.len();
            buf.put_slice(b"partial");
            buf.truncate(start);
            Err("too long")
        });
        assert_eq!(failed, Err("too long"));
        assert_eq!(&encode(8, true, put(b"next")).unwrap()[..], b"next");
    }

    #[test]
    fn a_full_chunk_is_replaced_and_the_old_slices_stay_valid() {
        let mut kept = Vec::new();
        for i in 0..(2 * CHUNK / 1000) {
            let bytes: &'static [u8] = if i % 2 == 0 { &[b'a'; 1000] } else { &[b'b'; 1000] };
            kept.push(encode(1000, true, put(bytes)).unwrap());
        }
        for (i, slice) in kept.iter().enumerate() {
            assert!(slice.iter().all(|&c| c == if i % 2 == 0 { b'a' } else { b'b' }));
        }
    }

    #[test]
    fn large_or_kept_frames_get_a_buffer_of_their_own() {
        let a = encode(8, true, put(b"chunk")).unwrap();
        let own = encode(8, false, put(b"own")).unwrap();
        let b = encode(8, true, put(b"chunk2")).unwrap();
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr(), "the kept frames did not use the chunk");
        assert_eq!(&own[..], b"own");
        let large = encode(LARGEST + 1, true, put(b"large")).unwrap();
        assert_eq!(&large[..], b"large");
    }
}
