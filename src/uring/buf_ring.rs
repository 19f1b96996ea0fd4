//! The ring's pool of receive buffers (Linux "provided buffer rings"): the kernel
//! takes one when a receive has data, and pgmux gives it back once it is copied out.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{types, IoUring};

pub(super) const BUF_SIZE: usize = 16 * 1024;
/// Receive buffers per ring at most: 2 MiB. The kernel cycles through all of them, so
/// all become resident. A burst of more receives than buffers between two reaps gets
/// ENOBUFS for the rest, which are re-armed after the reap.
pub(super) const BUF_COUNT: u16 = 128;
/// Receive buffers per ring in this process (see [`buffers_per_ring`]).
static RING_BUFS: AtomicU16 = AtomicU16::new(BUF_COUNT);
pub(super) const BUF_GROUP: u16 = 0;

/// Sizes the rings made from now on for `workers` of them.
pub(super) fn size_for(workers: usize) {
    RING_BUFS.store(buffers_per_ring(workers), Ordering::Relaxed);
}

/// Receive buffers for each of `workers` rings: 256 shared out, as a power of two (the
/// kernel requires one), at most 128 (2 MiB) and at least 32 (512 KiB) a ring. Each
/// ring serves only its own worker's clients, and the resident total stays bounded:
/// 4 MiB up to eight workers, 8 MiB at sixteen, where 2 MiB a ring would be 32 MiB,
/// 3.3 KB per client at 10,000 clients.
pub(super) fn buffers_per_ring(workers: usize) -> u16 {
    let share = (2 * usize::from(BUF_COUNT) / workers.max(1)).max(1);
    // The largest power of two not above the share.
    let pow = 1usize << (usize::BITS - 1 - share.leading_zeros());
    pow.clamp(32, usize::from(BUF_COUNT)) as u16
}

/// One ring's buffers, registered with its kernel ring as group [`BUF_GROUP`].
pub(super) struct BufRing {
    entries: *mut types::BufRingEntry,
    /// Never freed: the kernel tears a ring down asynchronously and may still write
    /// to a buffer after the ring's descriptor is closed. A ring lives as long as its
    /// thread, and a process has one per runtime thread.
    mem: &'static mut [u8],
    tail: u16,
    /// Buffers in the ring, a power of two.
    count: u16,
}

// SAFETY: the entries are written only under the driver's lock, and read by the
// kernel as the ring's protocol prescribes (the tail is published with release).
unsafe impl Send for BufRing {}

impl BufRing {
    fn layout(count: u16) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(
            count as usize * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .expect("valid layout")
    }

    pub(super) fn new(ring: &IoUring) -> io::Result<BufRing> {
        let count = RING_BUFS.load(Ordering::Relaxed);
        // SAFETY: a non-zero size; zeroed memory is a valid empty ring.
        let entries =
            unsafe { std::alloc::alloc_zeroed(Self::layout(count)) } as *mut types::BufRingEntry;
        if entries.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let mut bufs = BufRing {
            entries,
            mem: Box::leak(vec![0u8; BUF_SIZE * count as usize].into_boxed_slice()),
            tail: 0,
            count,
        };
        // SAFETY: the entries, like the buffers, are never freed.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, count, BUF_GROUP, 0)?;
        }
        for bid in 0..count {
            bufs.add(bid);
        }
        bufs.publish();
        Ok(bufs)
    }

    fn add(&mut self, bid: u16) {
        let slot = (self.tail & (self.count - 1)) as usize;
        // SAFETY: slot < count entries; the kernel does not read slots past the
        // published tail.
        let e = unsafe { &mut *self.entries.add(slot) };
        e.set_addr(self.mem[bid as usize * BUF_SIZE..].as_ptr() as u64);
        e.set_len(BUF_SIZE as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the ring's tail is the u16 that overlays the first entry's reserved
        // field (`struct io_uring_buf_ring`), 14 bytes in, 2-aligned.
        let tail = unsafe { &*((self.entries as *const u8).add(14) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }

    pub(super) fn get(&self, bid: u16, len: usize) -> &[u8] {
        let start = bid as usize * BUF_SIZE;
        &self.mem[start..start + len.min(BUF_SIZE)]
    }

    pub(super) fn recycle(&mut self, bid: u16) {
        self.add(bid);
        self.publish();
    }
}
