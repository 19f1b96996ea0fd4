//! How long statements took lately, for `server_pipelining`: a connection is offered
//! to another client while busy only when its unit is known to be short (under
//! `server_pipelining_threshold`), so that nobody queues behind a long statement while
//! other connections come free.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const SLOTS: usize = 1024;

/// Averages by statement key, in a table of fixed size without locks. Each slot holds
/// a 32-bit tag of the key it belongs to and the average in microseconds (32 bits). Two keys sharing a slot take it from
/// each other; a key without its slot is unknown, and unknown is not short. Updates
/// race without harm: an average that loses a sample stays an average.
pub struct Durations {
    slots: Box<[AtomicU64]>,
}

impl Default for Durations {
    fn default() -> Self {
        Durations {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Durations {
    fn slot(&self, key: u64) -> (&AtomicU64, u64) {
        let slot = &self.slots[key as usize % SLOTS];
        // Never 0, which an empty slot holds.
        let tag = (key >> 32) | 1;
        (slot, tag)
    }

    /// Whether units of statement `key` took less than `limit_us` microseconds on
    /// average lately; with a limit of 0, any unit is short, known or not.
    pub fn short(&self, key: u64, limit_us: u32) -> bool {
        if limit_us == 0 {
            return true;
        }
        let (slot, tag) = self.slot(key);
        let v = slot.load(Ordering::Relaxed);
        key != 0 && v >> 32 == tag && v & 0xffff_ffff < u64::from(limit_us)
    }

    /// A unit of statement `key` took `took`.
    pub fn record(&self, key: u64, took: Duration) {
        let (slot, tag) = self.slot(key);
        let us = u64::try_from(took.as_micros())
            .unwrap_or(u64::MAX)
            .min(0xffff_ffff);
        let v = slot.load(Ordering::Relaxed);
        let avg = if v >> 32 == tag {
            // Each sample weighs an eighth: one slow run among fast ones makes the
            // statement long for the next few, then it is short again.
            ((v & 0xffff_ffff) * 7 + us) / 8
        } else {
            us
        };
        slot.store(tag << 32 | avg, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    /// The default threshold, 2 ms.
    const LIMIT: u32 = 2000;

    #[test]
    fn a_statement_is_short_once_seen_short_and_long_after_a_long_run() {
        let d = Durations::default();
        let key = 0xabcd_0000_0000_0042;
        assert!(!d.short(key, LIMIT), "an unknown statement counts as long");
        d.record(key, MS / 10);
        assert!(d.short(key, LIMIT));
        d.record(key, 60 * MS);
        assert!(!d.short(key, LIMIT), "a run of 60 ms makes it long");
        let mut runs = 0;
        while !d.short(key, LIMIT) {
            d.record(key, MS / 10);
            runs += 1;
            assert!(runs < 50, "fast runs never made it short again");
        }
    }

    #[test]
    fn keys_sharing_a_slot_take_it_from_each_other() {
        let d = Durations::default();
        let (a, b) = (0x1111_0000_0000_0007, 0x2222_0000_0000_0007u64);
        d.record(a, MS / 10);
        assert!(d.short(a, LIMIT));
        assert!(
            !d.short(b, LIMIT),
            "another key's average is not this one's"
        );
        d.record(b, MS / 10);
        assert!(d.short(b, LIMIT));
        assert!(!d.short(a, LIMIT));
    }

    #[test]
    fn a_statement_that_always_takes_long_stays_long() {
        let d = Durations::default();
        let key = 99;
        for _ in 0..20 {
            d.record(key, 10 * MS);
            assert!(!d.short(key, LIMIT));
        }
        d.record(key, Duration::from_secs(3600));
        assert!(!d.short(key, LIMIT), "the cap keeps a very long run long");
        let slow = 0x5151_0000_0000_0011;
        d.record(slow, Duration::from_millis(1500));
        assert!(
            !d.short(slow, 1_000_000),
            "1.5 s is not under a 1 s threshold"
        );
        assert!(d.short(slow, 2_000_000));
        assert!(d.short(key, 0), "a threshold of 0 takes any statement");
        assert!(d.short(0, 0));
        assert!(!d.short(0, LIMIT), "a unit without a key is unknown");
    }
}
