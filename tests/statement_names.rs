//! Statement names over the wire in transaction mode, as Postgres keeps them for one
//! session: a name in use cannot be parsed again, a failed or skipped Parse leaves its
//! name free, the unnamed statement is the client's own across units, and a unit sent
//! behind a failed one sees what Postgres would show it. Hand-written protocol
//! clients (`extended::Wire`), as drivers never send some of these sequences.

mod support;

use support::extended;
use support::*;

/// As in Postgres, a name in use cannot be prepared again (42P05) until it is closed,
/// and the first statement stands; a Parse that failed leaves its name free.
#[test]
fn a_name_in_use_cannot_be_prepared_again_and_a_failed_parse_leaves_it_free() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 1"));
    let mut w = extended::Wire::connect(px.port);

    w.prepare("dup", "select 1");
    let again = w.try_prepare("dup", "select 2");
    let (code, message) = again.error.expect("a second Parse of a name in use fails");
    assert_eq!(code, "42P05");
    assert_eq!(
        message, r#"prepared statement "dup" already exists"#,
        "the error names the client's statement, as Postgres does"
    );
    assert_eq!(w.execute("dup", &[]), ["1"], "the first statement stands");

    // Inside a transaction the refusal fails the transaction, as it would directly.
    w.simple("begin");
    let again = w.try_prepare("dup", "select 3");
    assert_eq!(again.code(), Some("42P05"));
    assert_eq!(again.status, 'E', "the transaction has failed");
    w.simple("rollback");
    assert_eq!(w.execute("dup", &[]), ["1"]);

    let bad = w.try_prepare("fixed", "selec 4");
    assert_eq!(bad.code(), Some("42601"));
    w.prepare("fixed", "select 4");
    assert_eq!(w.execute("fixed", &[]), ["4"]);

    w.close_statement("dup");
    w.prepare("dup", "select 5");
    assert_eq!(w.execute("dup", &[]), ["5"]);
}

/// A driver that parses a name again and closes it in the same batch (a statement
/// cache that replaces an entry) gets the 42P05 under its own name, though the Close
/// is read before the server's refusal comes back.
#[test]
fn a_name_parsed_again_then_closed_in_one_batch_is_named_as_the_client_named_it() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 1"));
    let mut w = extended::Wire::connect(px.port);

    let mut out = Vec::new();
    for text in ["select 1", "select 2"] {
        extended::parse(&mut out, "dup", text);
    }
    extended::message(&mut out, b'S', &[]);
    extended::message(&mut out, b'C', b"Sdup\0");
    extended::message(&mut out, b'S', &[]);
    w.send(&out);

    let refused = w.until_ready();
    let (code, message) = refused.error.expect("the second Parse of \"dup\" fails");
    assert_eq!(code, "42P05");
    assert_eq!(message, r#"prepared statement "dup" already exists"#);
    let closed = w.until_ready();
    assert!(closed.error.is_none(), "{:?}", closed.error);

    w.prepare("dup", "select 3");
    assert_eq!(w.execute("dup", &[]), ["3"]);
}

/// Errors that name a statement name the client's: a Bind with the wrong number of
/// parameters, a SQL `EXECUTE` with the wrong number of arguments. On the server the
/// statement goes by pgmux's name.
#[test]
fn errors_naming_a_statement_name_it_as_the_client_did() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 1"));
    let mut w = extended::Wire::connect(px.port);

    w.prepare("two_args", "select $1::int + $2::int");
    let wrong = w.try_execute("two_args", &["1"]);
    let (code, message) = wrong
        .error
        .expect("a Bind with one of two parameters fails");
    assert_eq!(code, "08P01");
    assert_eq!(
        message,
        r#"bind message supplies 1 parameters, but prepared statement "two_args" requires 2"#
    );

    let mut out = Vec::new();
    extended::parse(&mut out, "", "execute two_args(1)");
    extended::bind_execute_sync(&mut out, "", &[]);
    w.send(&out);
    let wrong = w.until_ready();
    let (code, message) = wrong
        .error
        .expect("an EXECUTE with one of two arguments fails");
    assert_eq!(code, "42601");
    assert!(
        message.contains(r#""two_args""#) && !message.contains("pgmux_"),
        "{message}"
    );
    assert_eq!(w.execute("two_args", &["1", "2"]), ["3"]);

    // Closed right behind the failing Bind, before the error comes back.
    let mut out = Vec::new();
    extended::bind_execute_sync(&mut out, "two_args", &[]);
    extended::message(&mut out, b'C', b"Stwo_args\0");
    extended::message(&mut out, b'S', &[]);
    w.send(&out);
    let (code, message) = w
        .until_ready()
        .error
        .expect("a Bind without parameters fails");
    assert_eq!(code, "08P01");
    assert_eq!(
        message,
        r#"bind message supplies 0 parameters, but prepared statement "two_args" requires 2"#
    );
    assert_eq!(w.until_ready().error, None);
}

/// A unit pipelined behind one whose Parse Postgres skipped (an error came first in
/// its unit) sees what Postgres would show it: no such statement (26000), named or
/// unnamed, and a name still free to parse. pgmux holds such a unit back until the
/// earlier one's replies tell which way it went; a unit using a statement an earlier
/// unit parsed without error is answered as before.
#[test]
fn a_unit_behind_one_whose_parse_was_skipped_sees_no_such_statement() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 1"));
    let mut w = extended::Wire::connect(px.port);
    let parse = extended::parse;
    let failing = |out: &mut Vec<u8>| {
        // A Bind of a statement nobody has: 26000, and the rest of the unit skipped.
        let mut body = Vec::new();
        extended::cstr(&mut body, "");
        extended::cstr(&mut body, "nobody_has_this");
        body.extend_from_slice(&[0; 4]);
        extended::message(out, b'B', &body);
    };

    let mut out = Vec::new();
    failing(&mut out);
    parse(&mut out, "skipped", "select 1");
    parse(&mut out, "", "select 2");
    extended::message(&mut out, b'S', &[]);
    extended::bind_execute_sync(&mut out, "skipped", &[]);
    extended::bind_execute_sync(&mut out, "", &[]);
    parse(&mut out, "skipped", "select 3");
    extended::message(&mut out, b'S', &[]);
    parse(&mut out, "parsed", "select 4");
    extended::message(&mut out, b'S', &[]);
    extended::bind_execute_sync(&mut out, "parsed", &[]);
    w.send(&out);

    let first = w.until_ready();
    assert_eq!(first.code(), Some("26000"));
    let named = w.until_ready();
    let (code, message) = named.error.expect("the skipped statement is unknown");
    assert_eq!(code, "26000");
    assert_eq!(message, r#"prepared statement "skipped" does not exist"#);
    assert!(named.values.is_empty(), "{:?}", named.values);
    let unnamed = w.until_ready();
    assert_eq!(unnamed.code(), Some("26000"));
    assert!(unnamed.values.is_empty(), "{:?}", unnamed.values);
    let again = w.until_ready();
    assert!(again.error.is_none(), "the name is free: {:?}", again.error);
    let parsed = w.until_ready();
    assert!(parsed.error.is_none(), "{:?}", parsed.error);
    assert_eq!(w.until_ready().values, ["4"]);
    assert_eq!(w.execute("skipped", &[]), ["3"]);

    // Queries among messages not yet synced end units the server answers only at
    // the Sync behind them: a Parse of a name an earlier such unit parsed is sent
    // on, not held back for replies that wait for it.
    let mut out = Vec::new();
    failing(&mut out);
    extended::message(&mut out, b'Q', b"select 42\0");
    parse(&mut out, "inner", "select 5");
    extended::message(&mut out, b'Q', b"select 42\0");
    parse(&mut out, "inner", "select 6");
    extended::message(&mut out, b'S', &[]);
    extended::bind_execute_sync(&mut out, "inner", &[]);
    w.send(&out);
    let skipped = w.until_ready();
    assert_eq!(skipped.code(), Some("26000"));
    let unknown = w.until_ready();
    assert_eq!(unknown.code(), Some("26000"));
}

/// The unnamed statement lives until the client's next unnamed Parse or simple Query,
/// across Syncs (psql's `\gdesc`, libpq's `PQprepare(conn, "", …)` then
/// `PQexecPrepared`): a later unit uses the client's own, whichever server connection
/// it gets, and never one another client left on that connection.
#[test]
fn the_unnamed_statement_is_the_clients_own_across_syncs() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 1"));
    let (mut a, mut b, mut c) = (
        extended::Wire::connect(px.port),
        extended::Wire::connect(px.port),
        extended::Wire::connect(px.port),
    );

    a.prepare("", "select 'a' as a_col");
    b.prepare("", "select 'secret of b' as b_col");
    assert_eq!(a.describe_statement("").columns, ["a_col"]);
    assert_eq!(a.execute("", &[]), ["a"]);
    assert_eq!(b.execute("", &[]), ["secret of b"]);

    // A client that never parsed one has none, whatever its connection holds.
    let none = c.try_execute("", &[]);
    assert_eq!(none.code(), Some("26000"));
    assert!(none.values.is_empty());
    let none = c.describe_statement("");
    assert_eq!(none.code(), Some("26000"));

    // A simple Query ends the client's unnamed statement, as in Postgres.
    assert_eq!(a.simple("select 1"), ["1"]);
    let gone = a.try_execute("", &[]);
    assert_eq!(gone.code(), Some("26000"));
    assert_eq!(b.execute("", &[]), ["secret of b"]);

    // So does closing it.
    b.close_statement("");
    a.prepare("", "select 'a again'");
    let gone = b.try_execute("", &[]);
    assert_eq!(gone.code(), Some("26000"));
    assert_eq!(a.execute("", &[]), ["a again"]);

    // A Parse that fails leaves no unnamed statement: Postgres drops the old one first.
    let failed = a.try_prepare("", "select * from no_such_table_for_unnamed");
    assert_eq!(failed.code(), Some("42P01"));
    for _ in 0..2 {
        let gone = a.try_execute("", &[]);
        assert_eq!(gone.code(), Some("26000"));
    }
    assert_eq!(b.simple("select 2"), ["2"]);
    let gone = a.describe_statement("");
    assert_eq!(gone.code(), Some("26000"));
}

/// Appends a Describe of a portal that does not exist, which fails its unit: Postgres
/// skips what follows up to the Sync.
fn failing_describe(out: &mut Vec<u8>) {
    let mut body = vec![b'P'];
    extended::cstr(&mut body, "no_such_portal");
    extended::message(out, b'D', &body);
}

/// What ends the unnamed statement or replaces it and is skipped after an error in
/// its unit leaves the statement as it was, as in Postgres: a skipped unnamed Parse
/// leaves the one before (one that fails itself leaves none), and so does a skipped
/// Query, or both; a skipped Close leaves it. Each is used in the next unit, sent
/// right behind or after the replies.
#[test]
fn what_postgres_skips_leaves_the_unnamed_statement_as_it_was() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 1"));
    let mut w = extended::Wire::connect(px.port);

    type Ender = fn(&mut Vec<u8>);
    let skipped_parse: Ender = |out| extended::parse(out, "", "select 'replaced'");
    let skipped_query: Ender = |out| extended::message(out, b'Q', b"select 'ran'\0");
    let skipped_close: Ender = |out| extended::message(out, b'C', b"S\0");
    let skipped_both: Ender = |out| {
        extended::parse(out, "", "select 'replaced'");
        extended::message(out, b'Q', b"select 'ran'\0");
    };
    for (i, end) in [skipped_parse, skipped_query, skipped_close, skipped_both]
        .into_iter()
        .enumerate()
    {
        for behind in [false, true] {
            let text = format!("select 'kept {i}'");
            w.prepare("", &text);
            let mut out = Vec::new();
            failing_describe(&mut out);
            end(&mut out);
            extended::message(&mut out, b'S', &[]);
            if !behind {
                w.send(&out);
                let failed = w.until_ready();
                assert_eq!(failed.code(), Some("34000"));
                out.clear();
            }
            extended::bind_execute_sync(&mut out, "", &[]);
            w.send(&out);
            if behind {
                let failed = w.until_ready();
                assert_eq!(failed.code(), Some("34000"));
            }
            let used = w.until_ready();
            assert_eq!(used.error, None, "case {i}, behind: {behind}");
            assert_eq!(
                used.values,
                [format!("kept {i}")],
                "case {i}, behind: {behind}"
            );
        }
    }

    // A skipped Close is undone, but not a Query that ran after it: sent behind it
    // before its reply came, the Query ended the unnamed statement.
    w.prepare("", "select 'closed later'");
    let mut out = Vec::new();
    failing_describe(&mut out);
    extended::message(&mut out, b'C', b"S\0");
    extended::message(&mut out, b'S', &[]);
    extended::message(&mut out, b'Q', b"select 'ends it'\0");
    extended::bind_execute_sync(&mut out, "", &[]);
    w.send(&out);
    let failed = w.until_ready();
    assert_eq!(failed.code(), Some("34000"));
    assert_eq!(w.until_ready().values, ["ends it"]);
    let gone = w.until_ready();
    assert_eq!(gone.code(), Some("26000"));

    // In a failed transaction the restored statement is the server's still: a Bind
    // of it gets Postgres' own complaint about its parameters, as straight to it.
    w.simple("begin");
    w.prepare("", "select $1::int");
    let mut out = Vec::new();
    failing_describe(&mut out);
    extended::parse(&mut out, "", "select 'skipped'");
    extended::message(&mut out, b'S', &[]);
    extended::bind_execute_sync(&mut out, "", &[]);
    w.send(&out);
    let failed = w.until_ready();
    assert_eq!(failed.code(), Some("34000"));
    let wrong = w.until_ready();
    let (code, message) = wrong.error.expect("a Bind without the parameter fails");
    assert_eq!(code, "08P01");
    assert_eq!(
        message,
        r#"bind message supplies 0 parameters, but prepared statement "" requires 1"#
    );
    w.simple("rollback");

    // An unnamed Parse that fails after a Bind and an Execute that succeed in its
    // unit is the unit's error: the old statement is gone.
    w.prepare("", "select 'old'");
    let mut out = Vec::new();
    extended::parse(&mut out, "", "select 'first'");
    extended::bind_execute(&mut out, "", &[]);
    extended::parse(&mut out, "", "select * from no_such_table_for_unnamed");
    extended::message(&mut out, b'S', &[]);
    extended::bind_execute_sync(&mut out, "", &[]);
    w.send(&out);
    let failed = w.until_ready();
    assert_eq!(failed.values, ["first"]);
    assert_eq!(failed.code(), Some("42P01"));
    let gone = w.until_ready();
    assert_eq!(gone.code(), Some("26000"));
}

/// A `DEALLOCATE` Postgres skips (an error earlier in its unit) leaves the statement,
/// also for a unit sent right behind it that uses the name or parses it again.
#[test]
fn a_skipped_deallocate_leaves_the_statement_for_the_units_behind_it() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 1"));
    let mut w = extended::Wire::connect(px.port);

    w.prepare("keep", "select 7");
    let mut out = Vec::new();
    failing_describe(&mut out);
    extended::parse(&mut out, "", "deallocate keep");
    extended::bind_execute_sync(&mut out, "", &[]);
    extended::bind_execute_sync(&mut out, "keep", &[]);
    extended::parse(&mut out, "keep", "select 8");
    extended::message(&mut out, b'S', &[]);
    w.send(&out);
    let failed = w.until_ready();
    assert_eq!(failed.code(), Some("34000"));
    let used = w.until_ready();
    assert_eq!(used.error, None);
    assert_eq!(used.values, ["7"]);
    let again = w.until_ready();
    assert_eq!(again.code(), Some("42P05"));
    assert_eq!(w.execute("keep", &[]), ["7"]);

    // A skipped `DEALLOCATE ALL` then a skipped Parse of the name in the same unit:
    // the statement from before both stands.
    let mut out = Vec::new();
    failing_describe(&mut out);
    extended::parse(&mut out, "", "deallocate all");
    extended::bind_execute(&mut out, "", &[]);
    extended::parse(&mut out, "keep", "select 9");
    extended::message(&mut out, b'S', &[]);
    w.send(&out);
    assert_eq!(w.until_ready().code(), Some("34000"));
    assert_eq!(w.execute("keep", &[]), ["7"]);
}

/// A Close of a name that a unit still unanswered parses, skipped by Postgres, leaves
/// the name as that unit's replies say: here never prepared, so free to prepare.
#[test]
fn a_skipped_close_behind_a_skipped_parse_leaves_the_name_free() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 1"));
    let mut w = extended::Wire::connect(px.port);

    let mut out = Vec::new();
    failing_describe(&mut out);
    extended::parse(&mut out, "s1", "select 1");
    extended::message(&mut out, b'S', &[]);
    failing_describe(&mut out);
    extended::message(&mut out, b'C', b"Ss1\0");
    extended::message(&mut out, b'S', &[]);
    w.send(&out);
    assert_eq!(w.until_ready().code(), Some("34000"));
    assert_eq!(w.until_ready().code(), Some("34000"));

    w.prepare("s1", "select 2");
    assert_eq!(w.execute("s1", &[]), ["2"]);
}

/// A client without an unnamed statement whose Close of it Postgres skips is not left
/// running the server connection's unnamed statement, which another client parsed.
#[test]
fn a_skipped_close_of_the_unnamed_statement_never_runs_another_clients() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 1"));
    let (mut a, mut b) = (
        extended::Wire::connect(px.port),
        extended::Wire::connect(px.port),
    );
    a.prepare("", "select 'a'");
    assert_eq!(a.simple("select 1"), ["1"], "ends a's unnamed statement");
    b.prepare("", "select 'secret of b'");

    let mut out = Vec::new();
    failing_describe(&mut out);
    extended::message(&mut out, b'C', b"S\0");
    extended::message(&mut out, b'S', &[]);
    extended::bind_execute_sync(&mut out, "", &[]);
    a.send(&out);
    let failed = a.until_ready();
    assert_eq!(failed.code(), Some("34000"));
    let none = a.until_ready();
    assert!(
        none.values.is_empty(),
        "ran another client's statement: {:?}",
        none.values
    );
    assert_eq!(none.code(), Some("26000"));
    assert_eq!(b.execute("", &[]), ["secret of b"]);
}

/// Two units in one write, each a Bind of `stmt`, Execute and Sync; in the first, a
/// Describe of a portal that does not exist fails the unit before its Bind. The
/// first must fail that way; the rows of the second.
fn behind_a_failed_unit(w: &mut extended::Wire, stmt: &str) -> Vec<String> {
    let mut out = Vec::new();
    failing_describe(&mut out);
    extended::bind_execute_sync(&mut out, stmt, &[]);
    extended::bind_execute_sync(&mut out, stmt, &[]);
    w.send(&out);
    let failed = w.until_ready();
    assert_eq!(failed.code(), Some("34000"));
    let behind = w.until_ready();
    assert_eq!(behind.error, None, "the unit behind the failed one");
    behind.values
}

/// A unit that fails before the Parse pgmux put in it for a statement (one not on
/// the connection, or the client's unnamed statement) leaves the statement unprepared:
/// a unit the client sent behind it before the failure came back still runs the
/// client's own statement, as it would straight to Postgres.
#[test]
fn a_unit_pipelined_behind_a_failed_one_still_runs_the_clients_statement() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(
        pg,
        "max_prepared_statements = 1",
        "pool_size = 1",
    ));
    let mut w = extended::Wire::connect(px.port);
    let mut other = extended::Wire::connect(px.port);

    w.prepare("s", "select 's of w'");
    // The connection holds one statement: this one, not `s`.
    w.prepare("t", "select 't of w'");
    assert_eq!(behind_a_failed_unit(&mut w, "s"), ["s of w"]);

    w.prepare("", "select 'unnamed of w'");
    other.prepare("", "select 'unnamed of another client'");
    assert_eq!(behind_a_failed_unit(&mut w, ""), ["unnamed of w"]);
    // And in a later unit, once the failure is known.
    assert_eq!(w.execute("", &[]), ["unnamed of w"]);
    assert_eq!(w.execute("s", &[]), ["s of w"]);
    assert_eq!(other.execute("", &[]), ["unnamed of another client"]);
}
