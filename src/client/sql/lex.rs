//! Scanning SQL text without parsing it: statements, words and tokens, with quoted
//! text, dollar quotes and comments skipped.

pub(super) fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// Case-insensitive substring test; `needle` must be lower case ASCII.
pub fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    // Search for the needle's rarest letter in SQL rather than its first: the scan
    // stops at each candidate, and "a" or "t" occur in nearly every statement.
    let anchor = needle
        .iter()
        .position(|b| matches!(b, b'v' | b'x' | b'q' | b'z' | b'j' | b'k' | b'y'))
        .or_else(|| {
            needle
                .iter()
                .position(|b| matches!(b, b'm' | b'p' | b'h' | b'g'))
        })
        .unwrap_or(0);
    let (lower, upper) = (needle[anchor], needle[anchor].to_ascii_uppercase());
    let tail = needle.len() - anchor;
    let mut at = anchor;
    while at < hay.len() {
        let Some(i) = memchr::memchr2(lower, upper, &hay[at..]) else {
            return false;
        };
        let hit = at + i;
        if hay.len() - hit < tail {
            return false;
        }
        let start = hit - anchor;
        if hay[start..start + needle.len()].eq_ignore_ascii_case(needle) {
            return true;
        }
        at = hit + 1;
    }
    false
}

pub(super) struct Word<'a>(pub(super) &'a [u8]);

impl Word<'_> {
    pub(super) fn is(&self, kw: &str) -> bool {
        self.0.eq_ignore_ascii_case(kw.as_bytes())
    }

    pub(super) fn lower(&self) -> String {
        String::from_utf8_lossy(self.0).to_ascii_lowercase()
    }

    /// `pg_temp`, or a session's own `pg_temp_N`, quoted or not.
    pub(super) fn is_temp_schema(&self) -> bool {
        let w = self
            .0
            .strip_prefix(b"\"")
            .and_then(|w| w.strip_suffix(b"\""))
            .unwrap_or(self.0);
        w.len() >= 7
            && w[..7].eq_ignore_ascii_case(b"pg_temp")
            && (w.len() == 7
                || (w[7] == b'_' && w.len() > 8 && w[8..].iter().all(u8::is_ascii_digit)))
    }

    /// An unquoted identifier that is not a keyword which could continue a query.
    pub(super) fn is_plain_name(&self) -> bool {
        let first = self
            .0
            .first()
            .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_');
        let reserved = [
            "from", "where", "union", "limit", "order", "group", "into", "for",
        ];
        first && !reserved.iter().any(|k| self.is(k))
    }

    /// An identifier as Postgres folds it: quoted keeps case, unquoted is lowered.
    pub(super) fn name(&self) -> String {
        if self.0.len() >= 2 && self.0[0] == b'"' && self.0[self.0.len() - 1] == b'"' {
            String::from_utf8_lossy(&self.0[1..self.0.len() - 1]).replace("\"\"", "\"")
        } else {
            self.lower()
        }
    }
}

/// Splits SQL text into statements where Postgres does: at semicolons outside quoted
/// text, dollar quotes, comments and parentheses (a rule's actions), and outside the
/// `BEGIN ATOMIC … END` body of a function or procedure.
pub(super) struct Statements<'a> {
    sql: &'a [u8],
    pos: usize,
}

impl<'a> Statements<'a> {
    pub(super) fn new(sql: &'a [u8]) -> Self {
        Statements { sql, pos: 0 }
    }
}

/// How far a statement's first words read `CREATE [OR REPLACE] FUNCTION|PROCEDURE`,
/// the statements whose bodies may hold semicolons between `BEGIN` and `END`.
#[derive(Clone, Copy, PartialEq)]
enum Lead {
    Start,
    Create,
    Or,
    Replace,
    Routine,
    Other,
}

impl Lead {
    fn next(self, w: &Word) -> Lead {
        match self {
            Lead::Start if w.is("create") => Lead::Create,
            Lead::Create if w.is("or") => Lead::Or,
            Lead::Or if w.is("replace") => Lead::Replace,
            Lead::Create | Lead::Replace if w.is("function") || w.is("procedure") => Lead::Routine,
            Lead::Routine => Lead::Routine,
            _ => Lead::Other,
        }
    }
}

impl<'a> Iterator for Statements<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let s = self.sql;
        if self.pos >= s.len() {
            return None;
        }
        let start = self.pos;
        let mut i = start;
        let mut parens = 0usize;
        let mut lead = Lead::Start;
        // Open BEGIN blocks of a routine's body; a CASE inside one ends with END too.
        let mut blocks = 0usize;
        while i < s.len() {
            let c = s[i];
            match c {
                b';' if parens == 0 && blocks == 0 => {
                    self.pos = i + 1;
                    return Some(&s[start..i]);
                }
                b'(' => {
                    parens += 1;
                    i += 1;
                }
                b')' => {
                    parens = parens.saturating_sub(1);
                    i += 1;
                }
                _ if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                    let end = s[i..]
                        .iter()
                        .position(|&b| {
                            !(b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80)
                        })
                        .map_or(s.len(), |n| i + n);
                    let w = Word(&s[i..end]);
                    if lead != Lead::Other {
                        lead = lead.next(&w);
                    }
                    if lead == Lead::Routine && parens == 0 {
                        if w.is("begin") || (blocks > 0 && w.is("case")) {
                            blocks += 1;
                        } else if w.is("end") {
                            blocks = blocks.saturating_sub(1);
                        }
                    }
                    i = end;
                }
                _ => i = skip_token(s, i).max(i + 1),
            }
        }
        self.pos = s.len();
        Some(&s[start..])
    }
}

/// If a quoted string, quoted identifier, dollar quote or comment starts at `i`,
/// returns the index just after it; otherwise `i`.
pub(super) fn skip_token(s: &[u8], i: usize) -> usize {
    match s[i] {
        b'\'' | b'"' => {
            let q = s[i];
            let mut j = i + 1;
            while j < s.len() {
                if s[j] == q {
                    if j + 1 < s.len() && s[j + 1] == q {
                        j += 2;
                        continue;
                    }
                    return j + 1;
                }
                if s[j] == b'\\' && q == b'\'' && i > 0 && (s[i - 1] == b'E' || s[i - 1] == b'e') {
                    j += 2;
                    continue;
                }
                j += 1;
            }
            s.len()
        }
        b'-' if s.get(i + 1) == Some(&b'-') => {
            memchr::memchr(b'\n', &s[i..]).map_or(s.len(), |n| i + n + 1)
        }
        b'/' if s.get(i + 1) == Some(&b'*') => {
            let mut depth = 0usize;
            let mut j = i;
            while j + 1 < s.len() {
                if s[j] == b'/' && s[j + 1] == b'*' {
                    depth += 1;
                    j += 2;
                } else if s[j] == b'*' && s[j + 1] == b'/' {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        return j;
                    }
                } else {
                    j += 1;
                }
            }
            s.len()
        }
        b'$' => {
            // $tag$ ... $tag$ (a positional parameter like $1 is not a dollar quote)
            let tag_end = s[i + 1..]
                .iter()
                .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_'))
                .map(|n| i + 1 + n);
            match tag_end {
                Some(e) if s[e] == b'$' && !s.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                    let tag = &s[i..=e];
                    let body = &s[e + 1..];
                    memchr::memmem::find(body, tag).map_or(s.len(), |n| e + 1 + n + tag.len())
                }
                _ => i,
            }
        }
        _ => i,
    }
}

/// Words of a statement: identifiers/keywords (quoted identifiers whole), `=`, and
/// string literals as one word; comments skipped.
pub(super) struct Words<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Words<'a> {
    pub(super) fn new(s: &'a [u8]) -> Self {
        Words { s, i: 0 }
    }
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let s = self.s;
        while self.i < s.len() {
            let c = s[self.i];
            if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
                let start = self.i;
                while self.i < s.len()
                    && (s[self.i].is_ascii_alphanumeric()
                        || s[self.i] == b'_'
                        || s[self.i] == b'$'
                        || s[self.i] >= 0x80)
                {
                    self.i += 1;
                }
                return Some(&s[start..self.i]);
            }
            if c == b'"' || c == b'\'' {
                let start = self.i;
                self.i = skip_token(s, self.i);
                return Some(&s[start..self.i]);
            }
            if c == b'=' {
                self.i += 1;
                return Some(&s[self.i - 1..self.i]);
            }
            let skipped = skip_token(s, self.i);
            self.i = if skipped > self.i {
                skipped
            } else {
                self.i + 1
            };
        }
        None
    }
}

/// Tokens of a short statement: words, numbers and `$n`, `::`, and single punctuation;
/// whitespace and comments skipped. A quoted literal is one token.
pub(super) struct Tokens<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Tokens<'a> {
    pub(super) fn new(s: &'a [u8]) -> Self {
        Tokens { s, i: 0 }
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let s = self.s;
        while self.i < s.len() {
            let start = self.i;
            let c = s[start];
            if c.is_ascii_whitespace() || c == b';' {
                self.i += 1;
                continue;
            }
            let skipped = skip_token(s, start);
            if skipped > start {
                self.i = skipped;
                if c == b'-' || c == b'/' {
                    continue;
                }
                return Some(&s[start..skipped]);
            }
            let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80;
            if word(c) || c == b'$' || c == b'-' || c == b'+' {
                self.i += 1;
                while self.i < s.len() && word(s[self.i]) {
                    self.i += 1;
                }
            } else if c == b':' && s.get(start + 1) == Some(&b':') {
                self.i += 2;
            } else {
                self.i += 1;
            }
            return Some(&s[start..self.i]);
        }
        None
    }
}
