//! SQL `EXECUTE name [(args)]`, which names a prepared statement in its text.

use super::lex::{Word, Words};

/// The statement name in a text that is one `EXECUTE name …` statement (at most with a
/// trailing semicolon): its byte range in `sql` and the name as Postgres folds it.
pub fn execute_target(sql: &[u8]) -> Option<(std::ops::Range<usize>, String)> {
    let start = sql.iter().position(|b| !b.is_ascii_whitespace())?;
    if !sql[start..]
        .get(..7)
        .is_some_and(|w| w.eq_ignore_ascii_case(b"execute"))
    {
        return None;
    }
    if memchr::memchr(b';', sql).is_some_and(|i| !sql[i + 1..].iter().all(u8::is_ascii_whitespace))
    {
        return None;
    }
    let mut words = Words::new(sql);
    if !words.next().is_some_and(|w| Word(w).is("execute")) {
        return None;
    }
    let name = words.next()?;
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
            "EXPLAIN EXECUTE x",
            "EXECUTE a; EXECUTE b",
            "executed",
        ] {
            assert_eq!(execute_target(sql.as_bytes()), None, "{sql:?}");
        }
    }
}
