//! `DO` blocks: their body runs on the server, where pgmux cannot follow what it
//! leaves behind. A body holding a statement that changes the session (a `SET` or
//! `RESET`, `set_config`, a temporary table, `LISTEN`, SQL `PREPARE`…, also as a
//! string run by `EXECUTE`) would leave that on a server connection other clients get
//! next, so its client is pinned instead. `SET LOCAL`, `UPDATE … SET` and other
//! statements without session effects pin nothing.

use std::borrow::Cow;

use super::lex::{contains_ci, skip_token, Statements, Word, Words};
use super::{analyze_one, Effects};

/// Whether the `DO` statement `stmt` may change its session.
pub(super) fn changes_session(stmt: &[u8]) -> bool {
    let Some(body) = body(stmt) else {
        return false;
    };
    contains_ci(&body, b"set_config") || Statements::new(&body).any(changes_in)
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

/// Words after which a statement of a PL/pgSQL body may start.
const BLOCK_WORDS: [&str; 4] = ["begin", "then", "else", "loop"];

/// Whether one statement of a body (with the block words before it) has session
/// effects, or runs a string that does (`EXECUTE '…'`, `EXECUTE format('…')`). Each
/// statement read runs up to the next block word, so that a body is read in time
/// linear in its length, whatever it holds.
fn changes_in(stmt: &[u8]) -> bool {
    let words: Vec<&[u8]> = Words::new(stmt).collect();
    let is_block = |w: &[u8]| BLOCK_WORDS.iter().any(|k| Word(w).is(k));
    let offset = |w: &[u8]| w.as_ptr() as usize - stmt.as_ptr() as usize;
    words.iter().enumerate().any(|(i, w)| {
        let prev = i.checked_sub(1).map(|p| words[p]);
        let runs_string = w.first() == Some(&b'\'')
            && prev.is_some_and(|p| Word(p).is("execute") || Word(p).is("format"));
        if prev.is_none_or(is_block) && !is_block(w) {
            let end = words[i + 1..]
                .iter()
                .find(|n| is_block(n))
                .map_or(stmt.len(), |n| offset(n));
            has_effects(&stmt[offset(w)..end])
        } else if runs_string {
            has_effects(&unescape(&w[1..w.len().saturating_sub(1).max(1)]))
        } else {
            false
        }
    })
}

fn has_effects(stmt: &[u8]) -> bool {
    let mut fx = Effects::default();
    analyze_one(stmt, &mut fx);
    !fx.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_changes_in_a_body_are_seen() {
        for sql in [
            "DO $$ BEGIN PERFORM set_config('work_mem', '11MB', false); END $$",
            "do $$begin set search_path = app; end$$",
            "DO LANGUAGE plpgsql $body$ BEGIN IF true THEN SET work_mem = '8MB'; END IF; END $body$",
            "DO 'BEGIN RESET ALL; END'",
            "DO $$ BEGIN EXECUTE 'SET search_path = ' || quote_ident('x'); END $$",
            "DO $$ BEGIN EXECUTE format('set %I = 1', 'x'); END $$",
            "DO $$ BEGIN CREATE TEMP TABLE scratch (a int); END $$",
            "DO $$ BEGIN EXECUTE 'LISTEN chan'; END $$",
            "DO $$ BEGIN IF true THEN EXECUTE 'PREPARE p AS SELECT 1'; END IF; END $$",
            "DO $$ DECLARE n int; BEGIN n := 1; SET SESSION statement_timeout = 5; END $$",
            "DO 'BEGIN EXECUTE ''RESET work_mem''; END'",
        ] {
            assert!(changes_session(sql.as_bytes()), "{sql}");
        }
    }

    /// A body crafted to make each statement read the rest of the body again is
    /// still read in linear time (this would take minutes otherwise).
    #[test]
    fn a_long_body_is_read_in_linear_time() {
        let body = "BEGIN CREATE ".repeat(200_000);
        let sql = format!("DO $$ {body} $$");
        assert!(!changes_session(sql.as_bytes()));
        let sql = format!("DO $$ {body}; LISTEN x; END $$");
        assert!(changes_session(sql.as_bytes()));
    }

    #[test]
    fn bodies_that_change_no_session_are_left_alone() {
        for sql in [
            "DO $$ BEGIN UPDATE t SET a = 1; END $$",
            "DO $$ BEGIN SET LOCAL work_mem = '8MB'; END $$",
            "DO $$ BEGIN SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; END $$",
            "DO $$ BEGIN SET CONSTRAINTS ALL DEFERRED; END $$",
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'mood') THEN CREATE TYPE mood AS ENUM ('settled'); END IF; END $$",
            "DO $$ BEGIN EXECUTE 'UPDATE t SET a = 2'; EXECUTE 'SET LOCAL x = 1'; END $$",
            "DO $$ BEGIN RAISE NOTICE 'set it'; END $$",
            "DO $$ BEGIN CREATE TABLE IF NOT EXISTS kept (a int); END $$",
            "DO",
            "DO $$ unterminated",
        ] {
            assert!(!changes_session(sql.as_bytes()), "{sql}");
        }
    }
}
