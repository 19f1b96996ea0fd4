//! SQL `EXECUTE name [(args)]`, which names a prepared statement in its text, alone
//! or under `EXPLAIN` (sqlx's `describe` runs `EXPLAIN (VERBOSE, FORMAT JSON)
//! EXECUTE` of its own protocol-level statement to learn which columns may be null).

use super::lex::{Tokens, Word};

/// The statement name in a text that is one `EXECUTE name …` statement, or one
/// `EXPLAIN [(options)] [ANALYZE] [VERBOSE] EXECUTE name …` (at most with a trailing
/// semicolon): its byte range in `sql` and the name as Postgres folds it.
pub fn execute_target(sql: &[u8]) -> Option<(std::ops::Range<usize>, String)> {
    let start = sql.iter().position(|b| !b.is_ascii_whitespace())?;
    let lead = sql[start..].get(..7)?;
    if !lead.eq_ignore_ascii_case(b"execute") && !lead.eq_ignore_ascii_case(b"explain") {
        return None;
    }
    if memchr::memchr(b';', sql).is_some_and(|i| !sql[i + 1..].iter().all(u8::is_ascii_whitespace))
    {
        return None;
    }
    let mut tokens = Tokens::new(sql);
    let mut tok = tokens.next()?;
    if Word(tok).is("explain") {
        tok = tokens.next()?;
        if tok == b"(" {
            // Options are words, numbers and quoted values: no parentheses inside.
            while tokens.next()? != b")" {}
            tok = tokens.next()?;
        }
        if Word(tok).is("analyze") || Word(tok).is("analyse") {
            tok = tokens.next()?;
        }
        if Word(tok).is("verbose") {
            tok = tokens.next()?;
        }
    }
    if !Word(tok).is("execute") {
        return None;
    }
    let name = tokens.next()?;
    let first = *name.first()?;
    if !(first.is_ascii_alphabetic() || first == b'_' || first == b'"' || first >= 0x80) {
        return None;
    }
    // A quoted name keeps its quotes in the range, so the replacement is one token.
    let at = name.as_ptr() as usize - sql.as_ptr() as usize;
    Some((at..at + name.len(), Word(name).name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_name() {
        let cases: &[(&str, &str, &str)] = &[
            ("EXECUTE foobar", "foobar", "foobar"),
            ("  execute FooBar(1, 'a');", "FooBar", "foobar"),
            ("EXECUTE \"Mixed\" (2)", "\"Mixed\"", "Mixed"),
            ("execute s1 ;  ", "s1", "s1"),
            (
                "EXPLAIN (VERBOSE, FORMAT JSON) EXECUTE sqlx_s_1(NULL::int4)",
                "sqlx_s_1",
                "sqlx_s_1",
            ),
            ("explain analyze verbose execute S2", "S2", "s2"),
            ("EXPLAIN ANALYSE EXECUTE s3 (1)", "s3", "s3"),
            (
                "explain /* c */ ( format 'yaml' , costs off ) execute \"Q\";",
                "\"Q\"",
                "Q",
            ),
        ];
        for (sql, token, folded) in cases {
            let (range, name) = execute_target(sql.as_bytes()).expect(sql);
            assert_eq!(&sql[range], *token, "{sql}");
            assert_eq!(name, *folded, "{sql}");
        }
    }

    #[test]
    fn other_texts_are_not_execute() {
        for sql in [
            "",
            "EXECUTE",
            "EXECUTES x",
            "select 1",
            "EXPLAIN SELECT 1",
            "EXPLAIN (COSTS OFF) SELECT execute",
            "EXPLAIN VERBOSE ANALYZE EXECUTE x",
            "EXPLAIN (FORMAT JSON",
            "EXECUTE (1)",
            "explain execute a; explain execute b",
            "EXECUTE a; EXECUTE b",
            "executed",
        ] {
            assert_eq!(execute_target(sql.as_bytes()), None, "{sql:?}");
        }
    }
}
