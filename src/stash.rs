//! Spare I/O buffers, kept per thread.
//!
//! A client between transactions holds no buffer (its session and its socket drop
//! theirs), so that ten thousand idle clients cost little. Under load, the same client
//! is idle for a few microseconds between one transaction and the next, and dropping
//! its buffers then meant allocating them again a moment later: several allocations
//! and frees per transaction. What a client lets go of goes here instead, and the next
//! buffer a client on the same thread needs comes from here. The stash is bounded, so
//! idle clients still hold nothing and the stash itself stays small.

use std::cell::RefCell;

use bytes::BytesMut;

/// Buffers kept per thread: enough for every client of a busy worker to have its
/// buffers back at once; with [`LARGEST`], at most 2 MiB.
const KEPT: usize = 128;
/// A new buffer's capacity: a usual transaction's messages, and room to spare.
const FRESH: usize = 4096;
/// Buffers grown past this for a large message are not kept.
const LARGEST: usize = 16 * 1024;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer: a spare one, or a new one with room for a usual transaction.
pub fn take() -> BytesMut {
    SPARE
        .try_with(|s| s.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| BytesMut::with_capacity(FRESH))
}

/// Gives `buf` a spare buffer's room if it has none.
#[inline]
pub fn fill(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        *buf = take();
    }
}

/// Takes `buf`'s room back (leaving it empty, with none) for another client.
#[inline]
pub fn give(buf: &mut BytesMut) {
    if buf.capacity() != 0 {
        keep(std::mem::take(buf));
    }
}

fn keep(mut spare: BytesMut) {
    if !(FRESH / 2..=LARGEST).contains(&spare.capacity()) {
        return;
    }
    spare.clear();
    // On a thread's way out, the buffer is simply freed.
    let _ = SPARE.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < KEPT {
            s.push(spare);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept() -> usize {
        SPARE.with(|s| s.borrow().len())
    }

    #[test]
    fn a_given_buffer_is_taken_again_empty() {
        let mut a = take();
        a.extend_from_slice(b"some bytes");
        let room = a.as_ptr();
        give(&mut a);
        assert_eq!(a.capacity(), 0, "the giver keeps no room");
        let b = take();
        assert!(b.is_empty());
        assert_eq!(b.as_ptr(), room, "the same storage comes back");
    }

    #[test]
    fn fill_leaves_a_buffer_with_room_alone() {
        let mut a = BytesMut::with_capacity(100);
        a.extend_from_slice(b"x");
        fill(&mut a);
        assert_eq!(&a[..], b"x");
        let mut none = BytesMut::new();
        fill(&mut none);
        assert!(none.capacity() >= FRESH / 2);
    }

    #[test]
    fn small_and_large_buffers_are_not_kept_and_the_stash_is_bounded() {
        let before = kept();
        give(&mut BytesMut::with_capacity(64));
        give(&mut BytesMut::with_capacity(LARGEST * 4));
        assert_eq!(kept(), before);
        for _ in 0..KEPT * 2 {
            give(&mut BytesMut::with_capacity(FRESH));
        }
        assert_eq!(kept(), KEPT);
    }
}
