//! The key of a statement's duration estimate (`pool::estimate`).

/// A hash of a statement's text without its constants (numbers and quoted strings),
/// so that runs of one statement with other values share it: the key of its duration
/// estimate (`pool::estimate`), not an identity — distinct statements may share one.
/// Never 0.
///
/// Runs on every unit a pipelining pool sends: constants are looked for, and the text
/// between them hashed, eight bytes at a time (30 ns for pgbench's select in
/// `benches/codec.rs`, against 89 for a byte-wise FNV).
pub fn fingerprint(sql: &[u8]) -> u64 {
    let mut h = RunHash(0x243f_6a88_85a3_08d3);
    let mut run = 0;
    let mut i = 0;
    // Only digits and quotes can start a constant: the scan for them keeps no state,
    // so that the branch it takes per byte is almost never taken.
    while let Some(off) = next_digit_or_quote(&sql[i..]) {
        i += off;
        let class = BYTE_CLASS[usize::from(sql[i])];
        // A digit inside a name (`t1`, `$1`) is part of it. A digit before it would
        // have been skipped with its number unless it was in the name too.
        if class == DIGIT && i > 0 && BYTE_CLASS[usize::from(sql[i - 1])] & (NAME | DIGIT) != 0 {
            i += 1;
            continue;
        }
        h.run(&sql[run..i]);
        if class == QUOTE {
            // To the closing quote; a doubled one is a quote inside.
            i += 1;
            loop {
                match memchr::memchr(b'\'', &sql[i.min(sql.len())..]) {
                    Some(e) if sql.get(i + e + 1) == Some(&b'\'') => i += e + 2,
                    Some(e) => break i += e + 1,
                    None => break i = sql.len(),
                }
            }
            h.mark(b'\'');
        } else {
            while sql.get(i).is_some_and(|c| c.is_ascii_digit() || *c == b'.') {
                i += 1;
            }
            h.mark(b'0');
        }
        run = i;
    }
    h.run(&sql[run..]);
    h.0 | 1
}

/// Where the first digit or quote is: eight bytes a step while there is none.
fn next_digit_or_quote(text: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut at = 0;
    let mut words = text.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().expect("eight bytes"));
        // Per byte, without carries between bytes: the high bit of `(b | 0x80) - n`
        // is set when the low seven bits of b are at least n.
        let low = (w & !HIGH) | HIGH;
        let at_least_0 = low.wrapping_sub(ONES * u64::from(b'0'));
        let above_9 = low.wrapping_sub(ONES * u64::from(b'9' + 1));
        let digit = at_least_0 & !above_9 & !w & HIGH;
        let q = w ^ (ONES * u64::from(b'\''));
        let quote = q.wrapping_sub(ONES) & !q & HIGH;
        if digit | quote != 0 {
            break;
        }
        at += 8;
    }
    text[at..]
        .iter()
        .position(|&b| BYTE_CLASS[usize::from(b)] & (DIGIT | QUOTE) != 0)
        .map(|i| at + i)
}

const OTHER: u8 = 0;
const NAME: u8 = 1;
const DIGIT: u8 = 2;
const QUOTE: u8 = 4;

/// What each byte is to [`fingerprint`].
static BYTE_CLASS: [u8; 256] = {
    let mut t = [OTHER; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = if c.is_ascii_digit() {
            DIGIT
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b'$' {
            NAME
        } else if c == b'\'' {
            QUOTE
        } else {
            OTHER
        };
        b += 1;
    }
    t
};

/// [`fingerprint`]'s hash: FxHash's step over eight-byte words.
struct RunHash(u64);

impl RunHash {
    const K: u64 = 0x517c_c1b7_2722_0a95;

    fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(Self::K);
    }

    fn run(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().expect("eight bytes")));
        }
        let rest = chunks.remainder();
        let mut tail = [0u8; 8];
        tail[..rest.len()].copy_from_slice(rest);
        // The length keeps "ab" + "c" apart from "a" + "bc" across a constant.
        self.word(u64::from_le_bytes(tail) ^ ((bytes.len() as u64) << 56));
    }

    fn mark(&mut self, kind: u8) {
        self.word(u64::from(kind));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_leaves_out_constants_but_not_names() {
        let f = |s: &str| fingerprint(s.as_bytes());
        let a = f("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;");
        assert_eq!(a, f("SELECT abalance FROM pgbench_accounts WHERE aid = 7;"));
        assert_eq!(
            f("select * from t where v = 'x' and n = 1.5"),
            f("select * from t where v = 'it''s long' and n = 20")
        );
        assert_ne!(a, f("SELECT bbalance FROM pgbench_branches WHERE bid = 1;"));
        assert_ne!(f("select * from t1"), f("select * from t2"));
        assert_ne!(f("select $1"), f("select $2"));
        assert_ne!(f(""), 0);
        for odd in ["'", "''", "'''", "a'b''", "1.2.3", "$", "''''x"] {
            assert_ne!(f(odd), 0, "{odd}");
        }
        // An unterminated string ends the text.
        assert_eq!(f("select 'abc"), f("select 'x"));
        // Digits in names, after names with digits, and next to other constants.
        assert_eq!(f("select col2, 3 from t10"), f("select col2, 47 from t10"));
        assert_ne!(f("select col2 from t10"), f("select col3 from t10"));
        assert_ne!(f("select $12"), f("select $13"));
        assert_eq!(f("select 'a''b',1.5,x9"), f("select 'c',2,x9"));
        assert_ne!(f("select 'a',x9"), f("select 'a',x8"));
        assert_eq!(f("where a=1and b=2"), f("where a=3and b=4"));
        // The word-wise scan finds what a byte-wise one finds.
        let plain = |t: &[u8]| t.iter().position(|b| b.is_ascii_digit() || *b == b'\'');
        for t in [
            &b""[..],
            b"abcdefgh",
            b"abcdefgh9",
            b"abcdefg'",
            b"/:/:/:/:/:/:/:/:0",
            b"\xb0\xb9\xa7\xff\x80abcdefgh'",
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 1",
        ] {
            assert_eq!(next_digit_or_quote(t), plain(t), "{t:?}");
        }
        for b in 0..=255u8 {
            for at in 0..17 {
                let mut t = vec![b'x'; 17];
                t[at] = b;
                assert_eq!(next_digit_or_quote(&t), plain(&t), "{b} at {at}");
            }
        }
        // A long text that differs past its first eight-byte words.
        assert_ne!(
            f("SELECT abalance FROM pgbench_accounts WHERE aid = 1"),
            f("SELECT abalance FROM pgbench_accountz WHERE aid = 1")
        );
    }
}
