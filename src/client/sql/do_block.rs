//! `DO` blocks: their body runs on the server, where pgmux cannot follow what it sets.
//! A body that changes session settings (a `SET` or `RESET` statement, `set_config`,
//! or such a statement built as a string for `EXECUTE`) would leave them on a server
//! connection other clients get next, so its client is pinned instead. `SET LOCAL`
//! and `UPDATE … SET` change no session setting and pin nothing.

use std::borrow::Cow;

use super::lex::{contains_ci, skip_token, Statements, Word, Words};

/// Whether the `DO` statement `stmt` may change session settings.
pub(super) fn changes_settings(stmt: &[u8]) -> bool {
    let Some(body) = body(stmt) else {
        return false;
    };
    contains_ci(&body, b"set_config") || Statements::new(&body).any(sets_or_resets)
}

/// The code of a `DO [LANGUAGE name] 'code'` statement: the first string constant,
/// dollar-quoted or not.
fn body(stmt: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut i = 0;
    while i < stmt.len() {
        let c = stmt[i];
        let end = skip_token(stmt, i);
        match c {
            b'\'' => {
                let inner = &stmt[i + 1..end.saturating_sub(1).max(i + 1)];
                return Some(Cow::Owned(unescape(inner)));
            }
            b'$' if end > i => {
                let tag = stmt[i + 1..].iter().position(|&b| b == b'$')? + 2;
                return Some(Cow::Borrowed(stmt.get(i + tag..end.checked_sub(tag)?)?));
            }
            _ => i = end.max(i + 1),
        }
    }
    None
}

/// A single-quoted constant's text: `''` stands for one quote.
fn unescape(inner: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        out.push(inner[i]);
        i += if inner[i] == b'\'' && inner.get(i + 1) == Some(&b'\'') {
            2
        } else {
            1
        };
    }
    out
}

/// Whether one statement of a body starts a `SET` (not `LOCAL`) or `RESET`, after
/// the block words that may come before it, or runs a string that does (`EXECUTE
/// 'SET …'`, `EXECUTE format('SET …')`).
fn sets_or_resets(stmt: &[u8]) -> bool {
    let words: Vec<&[u8]> = Words::new(stmt).collect();
    words.iter().enumerate().any(|(i, w)| {
        let at_start = i == 0
            || ["begin", "then", "else", "loop"]
                .iter()
                .any(|k| Word(words[i - 1]).is(k));
        let word = Word(w);
        let not_local = |next: Option<&&[u8]>| {
            !next.is_some_and(|n| {
                let n = Word(n);
                n.is("local") || n.is("transaction") || n.is("constraints")
            })
        };
        (at_start && (word.is("reset") || (word.is("set") && not_local(words.get(i + 1)))))
            || (w.first() == Some(&b'\'')
                && i > 0
                && (Word(words[i - 1]).is("execute") || Word(words[i - 1]).is("format"))
                && dynamic_set(w))
    })
}

/// A string constant holding a `SET` or `RESET` statement, for `EXECUTE`.
fn dynamic_set(literal: &[u8]) -> bool {
    let text = literal[1..].trim_ascii_start();
    let starts = |kw: &[u8]| {
        text.get(..kw.len())
            .is_some_and(|t| t.eq_ignore_ascii_case(kw))
            && text
                .get(kw.len())
                .is_none_or(|c| !c.is_ascii_alphanumeric() && *c != b'_')
    };
    starts(b"reset")
        || (starts(b"set")
            && !Words::new(&text[3..])
                .next()
                .is_some_and(|n| Word(n).is("local")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_changed_in_a_body_are_seen() {
        for sql in [
            "DO $$ BEGIN PERFORM set_config('work_mem', '11MB', false); END $$",
            "do $$begin set search_path = app; end$$",
            "DO LANGUAGE plpgsql $body$ BEGIN IF true THEN SET work_mem = '8MB'; END IF; END $body$",
            "DO 'BEGIN RESET ALL; END'",
            "DO $$ BEGIN EXECUTE 'SET search_path = ' || quote_ident('x'); END $$",
            "DO $$ BEGIN EXECUTE format('set %I = 1', 'x'); END $$",
            "DO $$ DECLARE n int; BEGIN n := 1; SET SESSION statement_timeout = 5; END $$",
            "DO 'BEGIN EXECUTE ''RESET work_mem''; END'",
        ] {
            assert!(changes_settings(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn bodies_that_set_no_session_setting_are_left_alone() {
        for sql in [
            "DO $$ BEGIN UPDATE t SET a = 1; END $$",
            "DO $$ BEGIN SET LOCAL work_mem = '8MB'; END $$",
            "DO $$ BEGIN SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; END $$",
            "DO $$ BEGIN SET CONSTRAINTS ALL DEFERRED; END $$",
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'mood') THEN CREATE TYPE mood AS ENUM ('settled'); END IF; END $$",
            "DO $$ BEGIN EXECUTE 'UPDATE t SET a = 2'; EXECUTE 'SET LOCAL x = 1'; END $$",
            "DO $$ BEGIN RAISE NOTICE 'set it'; END $$",
            "DO",
            "DO $$ unterminated",
        ] {
            assert!(!changes_settings(sql.as_bytes()), "{sql}");
        }
    }
}
