//! What a Parse's text tells pgmux, remembered per thread by the text itself.
//!
//! Drivers send the same parameterized texts again and again: an unnamed Parse for
//! every execution (`pgbench -M extended`, JDBC below its prepare threshold, most
//! ORMs), or the same named statement on each new connection. Reading a text again
//! ([`analyze`], [`leaves_idle`], [`fingerprint`]) cost more than the rest of the
//! message's handling (BENCHMARKS.md, finding 24); comparing it with the one
//! remembered costs a hash and a `memcmp`. Only texts without session effects are
//! kept: the others are rare, and their effects are applied per client.
//!
//! A slot holds the last text that hashed to it, so a thread keeps at most
//! [`SLOTS`] texts of at most [`MAX_TEXT`] bytes each.

use std::cell::RefCell;
use std::hash::BuildHasher;

use super::{analyze, fingerprint, leaves_idle, Effects};

const SLOTS: usize = 256;

/// Longer texts are read every time: they are rarely sent twice, and the slots hold
/// at most this much each.
const MAX_TEXT: usize = 2048;

/// What a text without session effects is, as far as pooling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plain {
    /// See [`leaves_idle`].
    pub leaves_idle: bool,
    /// See [`fingerprint`].
    pub key: u64,
}

struct Slot {
    text: Box<[u8]>,
    plain: Plain,
}

thread_local! {
    static TEXTS: RefCell<Box<[Option<Slot>]>> =
        RefCell::new((0..SLOTS).map(|_| None).collect());
}

/// `Ok` for a text without session effects, else its effects, as [`analyze`] finds
/// them.
pub fn analyze_parse(sql: &[u8]) -> Result<Plain, Effects> {
    if sql.len() > MAX_TEXT {
        return read(sql);
    }
    let slot = foldhash::fast::FixedState::with_seed(0).hash_one(sql) as usize % SLOTS;
    let known = TEXTS.with_borrow(|t| {
        t[slot]
            .as_ref()
            .filter(|s| *s.text == *sql)
            .map(|s| s.plain)
    });
    if let Some(plain) = known {
        return Ok(plain);
    }
    let plain = read(sql)?;
    TEXTS.with_borrow_mut(|t| {
        t[slot] = Some(Slot {
            text: sql.into(),
            plain,
        })
    });
    Ok(plain)
}

fn read(sql: &[u8]) -> Result<Plain, Effects> {
    let fx = analyze(sql);
    if !fx.is_empty() {
        return Err(fx);
    }
    Ok(Plain {
        leaves_idle: leaves_idle(sql),
        key: fingerprint(sql),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_text_reads_as_it_did_the_first_time() {
        let texts: [&[u8]; 4] = [
            b"SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            b"BEGIN",
            b"insert into t values ($1)",
            b"UPDATE t SET a = $1 WHERE b = $2; SELECT 1",
        ];
        for _ in 0..3 {
            for text in texts {
                assert_eq!(analyze_parse(text).ok(), read(text).ok(), "{text:?}");
            }
        }
        assert_eq!(
            analyze_parse(texts[0]),
            Ok(Plain {
                leaves_idle: true,
                key: fingerprint(texts[0]),
            })
        );
        assert!(!analyze_parse(texts[1]).unwrap().leaves_idle);
    }

    #[test]
    fn texts_with_session_effects_are_read_every_time() {
        for _ in 0..2 {
            let fx = analyze_parse(b"SET search_path TO a").unwrap_err();
            assert_eq!(fx.sets.len(), 1);
            assert!(analyze_parse(b"LISTEN x").unwrap_err().pin.is_some());
        }
    }

    #[test]
    fn texts_that_share_a_slot_each_read_as_their_own() {
        // More texts than slots: every slot is taken over at least once.
        let texts: Vec<String> = (0..SLOTS * 2)
            .map(|i| match i % 3 {
                0 => format!("select c{i} from t where a = $1"),
                1 => format!("begin; select {i}"),
                _ => format!("set application_name = 'a{i}'"),
            })
            .collect();
        for _ in 0..2 {
            for text in &texts {
                let got = analyze_parse(text.as_bytes());
                let want = read(text.as_bytes());
                assert_eq!(got.is_ok(), want.is_ok(), "{text}");
                assert_eq!(got.ok(), want.ok(), "{text}");
            }
        }
    }

    #[test]
    fn long_texts_are_read_and_not_kept() {
        let long = format!("select '{}'", "x".repeat(MAX_TEXT));
        assert!(analyze_parse(long.as_bytes()).unwrap().leaves_idle);
        let kept = TEXTS.with_borrow(|t| t.iter().flatten().any(|s| s.text.len() > MAX_TEXT));
        assert!(!kept);
    }
}
