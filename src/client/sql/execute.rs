//! SQL `EXECUTE name [(args)]`, which names a prepared statement in its text, alone
//! or under `EXPLAIN` (sqlx's `describe` runs `EXPLAIN (VERBOSE, FORMAT JSON)
//! EXECUTE` of its own protocol-level statement to learn which columns may be null).

use super::lex::{contains_ci, Statements, Tokens, Word};

/// Each statement of `sql` that is an `EXECUTE name …` or an `EXPLAIN … EXECUTE name …`
/// ([`execute_target`]): the name's byte range in `sql` and the name as Postgres folds
/// it, in the order of the text.
pub fn execute_targets(sql: &[u8]) -> Vec<(std::ops::Range<usize>, String)> {
    let one =
        memchr::memchr(b';', sql).is_none_or(|i| sql[i + 1..].iter().all(u8::is_ascii_whitespace));
    if one {
        return execute_target(sql).into_iter().collect();
    }
    if !contains_ci(sql, b"execute") {
        return Vec::new();
    }
    let base = sql.as_ptr() as usize;
    Statements::new(sql)
        .filter_map(|stmt| {
            let at = stmt.as_ptr() as usize - base;
            execute_target(stmt).map(|(r, name)| (r.start + at..r.end + at, name))
        })
        .collect()
}

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
    fn finds_the_names_of_a_multi_statement_text() {
        let sql = b"select 1; EXECUTE a(1);explain (costs off) execute \"B\"; select 'execute c'";
        let found = execute_targets(sql);
        let names: Vec<_> = found.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["a", "B"]);
        assert_eq!(&sql[found[0].0.clone()], b"a");
        assert_eq!(&sql[found[1].0.clone()], b"\"B\"");
        assert_eq!(execute_targets(b"execute x(1);").len(), 1);
        assert!(execute_targets(b"select 1; select 2").is_empty());
        assert!(execute_targets(b"select 'execute x'; select 2").is_empty());
    }

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
