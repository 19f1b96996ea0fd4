//! What a statement does to the *session*, read from its text without a full parse.
//!
//! Transaction pooling hands a client a different server connection for each
//! transaction, so pgmux must know which statements leave state on the server:
//! `SET`/`RESET` are tracked and re-applied elsewhere; `LISTEN`, session advisory
//! locks, temporary tables, `WITH HOLD` cursors and SQL `PREPARE` pin the client to
//! its server; `DEALLOCATE` and `DISCARD ALL` forget the client's named statements.
//! It also notes the two statements pgmux acts on itself: a backend-signalling call
//! (`signal`), and DDL that needs a database nobody is connected to.
//!
//! This runs on every simple Query, so the common case (a plain SELECT/INSERT/UPDATE/
//! DELETE) costs one first-word check and two or three case-insensitive substring
//! scans.

mod cache;
mod do_block;
mod execute;
mod fingerprint;
mod lex;
mod set_config;
mod signal;

pub use cache::{analyze_parse, Plain};
pub use execute::{execute_target, execute_targets};
pub use fingerprint::fingerprint;
pub use lex::contains_ci;
use lex::{trim, Statements, Tokens, Word, Words};
use set_config::set_config_calls;
use signal::signal_call;
pub use signal::{Signal, SignalArg, SignalKind};

/// Why a client must keep its server connection for the rest of its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinReason {
    Listen,
    AdvisoryLock,
    TempTable,
    HoldCursor,
    SqlPrepare,
    SessionCharacteristics,
    SetConfig,
    UntrackedSettings,
    DoBlock,
}

impl PinReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PinReason::Listen => "LISTEN",
            PinReason::AdvisoryLock => "session advisory lock",
            PinReason::TempTable => "temporary table",
            PinReason::HoldCursor => "WITH HOLD cursor",
            PinReason::SqlPrepare => "SQL PREPARE",
            PinReason::SessionCharacteristics => "SET SESSION CHARACTERISTICS",
            PinReason::SetConfig => "set_config() with a value known only to the server",
            PinReason::UntrackedSettings => {
                "settings changed in a transaction whose outcome pgmux could not follow"
            }
            PinReason::DoBlock => "session state changed inside a DO block",
        }
    }
}

/// A change to a session setting, as the client wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetOp {
    /// `name` (lower case) and the statement that sets it, to replay verbatim.
    Set {
        name: String,
        statement: String,
    },
    Reset {
        name: String,
    },
    ResetAll,
    /// Savepoint markers: a `ROLLBACK TO` undoes the changes made since its savepoint.
    Savepoint(String),
    Release(String),
    RollbackTo(String),
    /// `ROLLBACK AND CHAIN`: every change so far is undone, the transaction goes on.
    RollbackAll,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deallocate {
    Name(String),
    All,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Effects {
    pub pin: Option<PinReason>,
    /// Each change with the place of its statement in the text (0 for the first):
    /// the replies come statement by statement, and a transaction may end between two.
    pub sets: Vec<(u32, SetOp)>,
    pub deallocate: Vec<Deallocate>,
    pub discard_all: bool,
    /// The statement is `SELECT pg_cancel_backend(…)` or `pg_terminate_backend(…)`.
    pub signal: Option<Signal>,
    /// `DROP DATABASE`, `ALTER DATABASE … RENAME` or `CREATE DATABASE … TEMPLATE`
    /// of this database, which no other session may be connected to.
    pub needs_database_free: Option<String>,
}

impl Effects {
    /// Splits off what running the statement does to the session (its settings, the
    /// prepared statements it drops): a prepared statement does that each time it
    /// runs, not when it is parsed.
    pub fn take_run_effects(&mut self) -> Option<Box<Effects>> {
        if self.sets.is_empty() && self.deallocate.is_empty() && !self.discard_all {
            return None;
        }
        Some(Box::new(Effects {
            sets: std::mem::take(&mut self.sets),
            deallocate: std::mem::take(&mut self.deallocate),
            discard_all: std::mem::take(&mut self.discard_all),
            ..Effects::default()
        }))
    }

    pub fn is_empty(&self) -> bool {
        self.pin.is_none()
            && self.sets.is_empty()
            && self.deallocate.is_empty()
            && !self.discard_all
            && self.signal.is_none()
            && self.needs_database_free.is_none()
    }
}

/// Reads the session effects of a (possibly multi-statement) SQL text.
pub fn analyze(sql: &[u8]) -> Effects {
    let mut fx = Effects::default();
    // Most texts are one statement, at most with a trailing semicolon: skip the
    // splitter, which must look at every byte for quotes and comments.
    match memchr::memchr(b';', sql) {
        None => analyze_one(sql, &mut fx),
        Some(i) if sql[i + 1..].iter().all(u8::is_ascii_whitespace) => {
            analyze_one(&sql[..i], &mut fx)
        }
        Some(_) => {
            // Postgres answers each statement but an empty one.
            let stmts = Statements::new(sql).filter(|s| Tokens::new(s).next().is_some());
            for (at, stmt) in stmts.enumerate() {
                let before = fx.sets.len();
                analyze_one(stmt, &mut fx);
                let at = u32::try_from(at).unwrap_or(u32::MAX);
                for op in &mut fx.sets[before..] {
                    op.0 = at;
                }
            }
            // Only a call that is the whole text has a reply pgmux can tell apart.
            fx.signal = None;
        }
    }
    fx
}

/// Whether a text whose [`analyze`] found no session effects is one statement that
/// runs in a transaction of its own outside a transaction block and leaves none open
/// (a query or a data change): the connection is idle and unchanged after its reply.
pub fn leaves_idle(sql: &[u8]) -> bool {
    let one = match memchr::memchr(b';', sql) {
        None => sql,
        Some(i) if sql[i + 1..].iter().all(u8::is_ascii_whitespace) => &sql[..i],
        Some(_) => return false,
    };
    let Some(first) = Words::new(one).next() else {
        return false;
    };
    let first = Word(first);
    [
        "select", "with", "insert", "update", "delete", "values", "table", "merge",
    ]
    .iter()
    .any(|kw| first.is(kw))
}

/// Whether a text whose [`analyze`] found no session effects is one statement that
/// ends a transaction block (`COMMIT`, `END`, `ROLLBACK`, `ABORT`; not `AND CHAIN`,
/// not `COMMIT PREPARED`): sent inside a block, it leaves the connection idle.
pub fn ends_block(sql: &[u8]) -> bool {
    let one = match memchr::memchr(b';', sql) {
        None => sql,
        Some(i) if sql[i + 1..].iter().all(u8::is_ascii_whitespace) => &sql[..i],
        Some(_) => return false,
    };
    let mut words = Words::new(one);
    let Some(first) = words.next().map(Word) else {
        return false;
    };
    (first.is("commit") || first.is("end") || first.is("rollback") || first.is("abort"))
        && words.all(|w| {
            let w = Word(w);
            w.is("work") || w.is("transaction")
        })
}

fn analyze_one(stmt: &[u8], fx: &mut Effects) {
    let mut words = Words::new(stmt);
    let Some(first) = words.next() else {
        return;
    };
    let first = Word(first);
    if first.is("select")
        || first.is("with")
        || first.is("insert")
        || first.is("update")
        || first.is("delete")
        || first.is("values")
        || first.is("merge")
    {
        // Only functions and SELECT INTO can leave session state here; a statement
        // without a parenthesis calls no function.
        if contains_ci(stmt, b"temp") && has_into_temp(stmt) {
            fx.pin.get_or_insert(PinReason::TempTable);
        }
        if memchr::memchr(b'(', stmt).is_none() {
            return;
        }
        if contains_ci(stmt, b"advisory") && has_session_advisory_lock(stmt) {
            fx.pin.get_or_insert(PinReason::AdvisoryLock);
        }
        if contains_ci(stmt, b"set_config") {
            set_config_calls(stmt, fx);
        }
        if first.is("select") && contains_ci(stmt, b"_backend") {
            fx.signal = signal_call(stmt);
        }
        return;
    }
    if first.is("listen") {
        fx.pin.get_or_insert(PinReason::Listen);
    } else if first.is("prepare") {
        if !words.next().is_some_and(|w| Word(w).is("transaction")) {
            fx.pin.get_or_insert(PinReason::SqlPrepare);
        }
    } else if first.is("drop") || first.is("alter") {
        if words.next().is_some_and(|w| Word(w).is("database")) {
            let mut name = words.next();
            if first.is("drop") && name.is_some_and(|w| Word(w).is("if")) {
                words.next();
                name = words.next();
            }
            let renames = first.is("drop") || words.next().is_some_and(|w| Word(w).is("rename"));
            if let (Some(n), true) = (name, renames) {
                fx.needs_database_free = Some(Word(n).name());
            }
        } else if first.is("alter")
            && contains_ci(stmt, b"advisory")
            && has_session_advisory_lock(stmt)
        {
            fx.pin.get_or_insert(PinReason::AdvisoryLock);
        }
    } else if first.is("create") {
        let mut ahead = Words::new(stmt).skip(1);
        if ahead.next().is_some_and(|w| Word(w).is("database")) {
            let rest: Vec<&[u8]> = ahead.skip(1).collect();
            if let Some(i) = rest.iter().position(|w| Word(w).is("template")) {
                let name = rest[i + 1..].iter().find(|w| **w != b"=");
                if let Some(n) = name {
                    fx.needs_database_free = Some(Word(n).name());
                }
            }
            return;
        }
        let temp = words
            .by_ref()
            .take(3)
            .any(|w| Word(w).is("temp") || Word(w).is("temporary"));
        // `CREATE TABLE pg_temp.t`, `CREATE FUNCTION pg_temp.f()`: temporary too.
        let in_temp_schema = || Words::new(stmt).any(|w| Word(w).is_temp_schema());
        if temp || (contains_ci(stmt, b"temp") && (has_into_temp(stmt) || in_temp_schema())) {
            fx.pin.get_or_insert(PinReason::TempTable);
        }
    } else if first.is("declare") {
        let w: Vec<&[u8]> = Words::new(stmt).collect();
        if w.windows(2)
            .any(|p| Word(p[0]).is("with") && Word(p[1]).is("hold"))
        {
            fx.pin.get_or_insert(PinReason::HoldCursor);
        }
    } else if first.is("set") {
        analyze_set(stmt, words, fx);
    } else if first.is("reset") {
        match words.next().map(Word) {
            Some(w) if w.is("all") => fx.sets.push((0, SetOp::ResetAll)),
            Some(w) if w.is("time") => fx.sets.push((
                0,
                SetOp::Reset {
                    name: "timezone".into(),
                },
            )),
            Some(w) if w.is("session") => fx.sets.push((
                0,
                SetOp::Reset {
                    name: "session_authorization".into(),
                },
            )),
            Some(w) => fx.sets.push((0, SetOp::Reset { name: w.lower() })),
            None => {}
        }
    } else if first.is("savepoint") {
        if let Some(n) = words.next() {
            fx.sets.push((0, SetOp::Savepoint(Word(n).name())));
        }
    } else if first.is("release") {
        let mut n = words.next();
        if n.is_some_and(|w| Word(w).is("savepoint")) {
            n = words.next();
        }
        if let Some(n) = n {
            fx.sets.push((0, SetOp::Release(Word(n).name())));
        }
    } else if first.is("rollback") || first.is("abort") {
        // ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name; a plain ROLLBACK (or
        // ABORT) ends the transaction and is seen in its reply instead.
        let rest: Vec<&[u8]> = words.collect();
        if let Some(to) = rest.iter().position(|w| Word(w).is("to")) {
            let mut i = to + 1;
            if rest.get(i).is_some_and(|w| Word(w).is("savepoint")) {
                i += 1;
            }
            if let Some(n) = rest.get(i) {
                fx.sets.push((0, SetOp::RollbackTo(Word(n).name())));
            }
        } else if rest.last().is_some_and(|w| Word(w).is("chain"))
            && !rest.iter().any(|w| Word(w).is("no"))
        {
            // ROLLBACK AND CHAIN: the transaction goes on, without the changes so far.
            fx.sets.push((0, SetOp::RollbackAll));
        }
    } else if first.is("discard") {
        if words.next().is_some_and(|w| Word(w).is("all")) {
            fx.discard_all = true;
            // DISCARD ALL is also SET SESSION AUTHORIZATION DEFAULT, which RESET ALL
            // leaves alone.
            fx.sets.push((0, SetOp::ResetAll));
            for name in ["session_authorization", "role"] {
                let name = name.to_string();
                fx.sets.push((0, SetOp::Reset { name }));
            }
        }
    } else if first.is("deallocate") {
        let mut next = words.next();
        if next.is_some_and(|w| Word(w).is("prepare")) {
            next = words.next();
        }
        match next.map(Word) {
            Some(w) if w.is("all") => fx.deallocate.push(Deallocate::All),
            Some(w) => fx.deallocate.push(Deallocate::Name(w.name())),
            None => {}
        }
    } else if first.is("do") || first.is("call") {
        if contains_ci(stmt, b"advisory") && has_session_advisory_lock(stmt) {
            fx.pin.get_or_insert(PinReason::AdvisoryLock);
        } else if first.is("do") && do_block::changes_session(stmt) {
            fx.pin.get_or_insert(PinReason::DoBlock);
        }
    }
}

fn analyze_set<'a>(stmt: &'a [u8], mut words: Words<'a>, fx: &mut Effects) {
    let Some(mut w) = words.next() else {
        return;
    };
    // Each of these lasts until the transaction ends.
    if Word(w).is("local") || Word(w).is("transaction") || Word(w).is("constraints") {
        return;
    }
    if Word(w).is("session") {
        let Some(n) = words.next() else {
            return;
        };
        if Word(n).is("characteristics") {
            fx.pin.get_or_insert(PinReason::SessionCharacteristics);
            return;
        }
        w = n;
    }
    let name = match Word(w) {
        x if x.is("time") => "timezone".to_string(),
        x if x.is("names") => "client_encoding".to_string(),
        x if x.is("schema") => "search_path".to_string(),
        x if x.is("authorization") => "session_authorization".to_string(),
        x => x.lower(),
    };
    // `SET x TO DEFAULT` is a RESET.
    let rest: Vec<&[u8]> = words.collect();
    let value = rest
        .iter()
        .skip_while(|v| Word(v).is("to") || **v == b"=")
        .copied()
        .collect::<Vec<_>>();
    if value.len() == 1 && Word(value[0]).is("default") {
        fx.sets.push((0, SetOp::Reset { name }));
        return;
    }
    if name == "search_path" && contains_ci(stmt, b"pg_temp") {
        // Unqualified CREATEs now make temporary objects.
        fx.pin.get_or_insert(PinReason::TempTable);
    }
    let statement = String::from_utf8_lossy(trim(stmt)).into_owned();
    fx.sets.push((0, SetOp::Set { name, statement }));
}

fn has_session_advisory_lock(stmt: &[u8]) -> bool {
    Words::new(stmt).any(|w| {
        let w = Word(w);
        w.is("pg_advisory_lock")
            || w.is("pg_try_advisory_lock")
            || w.is("pg_advisory_lock_shared")
            || w.is("pg_try_advisory_lock_shared")
    })
}

fn has_into_temp(stmt: &[u8]) -> bool {
    let mut prev_into = false;
    for w in Words::new(stmt) {
        let w = Word(w);
        if prev_into && (w.is("temp") || w.is("temporary") || w.is_temp_schema()) {
            return true;
        }
        prev_into = w.is("into");
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(sql: &[u8]) -> Vec<SetOp> {
        analyze(sql).sets.into_iter().map(|(_, op)| op).collect()
    }

    #[test]
    fn only_single_statements_outside_transaction_control_leave_a_connection_idle() {
        for sql in [
            "select 1",
            "  SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
            "/* tagged */ insert into t values (1)",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "update t set a = 1 ; ",
            "values (1)",
        ] {
            assert!(leaves_idle(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "begin",
            "BEGIN; SELECT 1",
            "select 1; select 2",
            "commit",
            "set x = 1",
            "call p()",
            "copy t from stdin",
            "execute s(1)",
            "",
            "select 'a;b'",
        ] {
            assert!(!leaves_idle(sql.as_bytes()), "{sql}");
        }
        for sql in ["commit", "END;", "rollback work", "abort transaction"] {
            assert!(ends_block(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "commit and chain",
            "commit prepared 'x'",
            "rollback to s",
            "commit; begin",
            "select 1",
        ] {
            assert!(!ends_block(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn statements_that_need_a_database_without_sessions_name_it() {
        for (sql, want) in [
            ("DROP DATABASE app_test", Some("app_test")),
            ("drop database if exists \"App\" with (force)", Some("App")),
            ("ALTER DATABASE Old RENAME TO new", Some("old")),
            ("alter database app set work_mem = '1MB'", None),
            ("CREATE DATABASE copy TEMPLATE source", Some("source")),
            (
                "create database copy with owner app template = \"Src\"",
                Some("Src"),
            ),
            ("create database plain", None),
            ("drop table database", None),
        ] {
            let got = analyze(sql.as_bytes()).needs_database_free;
            assert_eq!(got.as_deref(), want, "{sql}");
        }
    }

    #[test]
    fn a_backend_signal_call_is_recognised_with_its_argument() {
        use SignalArg::{Param, Pid};
        use SignalKind::{Cancel, Terminate};
        for (sql, want) in [
            (
                "select pg_cancel_backend(12345678)",
                Some((Cancel, Pid(12345678))),
            ),
            (
                "SELECT pg_terminate_backend(12345678)",
                Some((Terminate, Pid(12345678))),
            ),
            (
                "select pg_terminate_backend($1)",
                Some((Terminate, Param(1))),
            ),
            (
                "select pg_terminate_backend($1::int)",
                Some((Terminate, Param(1))),
            ),
            (
                "select pg_terminate_backend(42::bigint);",
                Some((Terminate, Pid(42))),
            ),
            (
                "SELECT pg_catalog.pg_cancel_backend( $2 ) AS ok",
                Some((Cancel, Param(2))),
            ),
            ("select pg_cancel_backend(7) ok;  ", Some((Cancel, Pid(7)))),
            (
                "select pg_terminate_backend(7, 5000)",
                Some((Terminate, Pid(7))),
            ),
            (
                "select pg_terminate_backend(7, timeout => (1+2))",
                Some((Terminate, Pid(7))),
            ),
            (
                "/* why */ select -- c\n pg_cancel_backend(7)",
                Some((Cancel, Pid(7))),
            ),
            ("select pg_cancel_backend(pid) from pg_stat_activity", None),
            ("select pg_cancel_backend(7) from t", None),
            ("select pg_cancel_backend(7), 1", None),
            ("select pg_cancel_backend(7::text)", None),
            ("select pg_cancel_backend('7')", None),
            ("select pg_cancel_backend(99999999999)", None),
            ("select my_pg_cancel_backend(7)", None),
            ("select 'pg_cancel_backend(7)'", None),
            ("select pg_cancel_backend(7); select 1", None),
        ] {
            let got = analyze(sql.as_bytes()).signal.map(|s| (s.kind, s.arg));
            assert_eq!(got, want, "{sql}");
        }
    }

    #[test]
    fn contains_ci_finds_a_needle_anywhere_in_any_case() {
        for (hay, needle, want) in [
            ("select pg_advisory_lock(1)", "advisory", true),
            ("SELECT PG_ADVISORY_LOCK(1)", "advisory", true),
            ("advisory", "advisory", true),
            ("ADVISORy", "advisory", true),
            ("dvisory", "advisory", false),
            ("xx advisor", "advisory", false),
            ("select 1 into temp t", "temp", true),
            ("TEMP", "temp", true),
            ("emp", "temp", false),
            ("tem", "temp", false),
            ("select m, tm, temP", "temp", true),
            ("", "temp", false),
        ] {
            assert_eq!(
                contains_ci(hay.as_bytes(), needle.as_bytes()),
                want,
                "{hay:?} / {needle:?}"
            );
        }
    }

    fn pin(sql: &str) -> Option<PinReason> {
        analyze(sql.as_bytes()).pin
    }

    #[test]
    fn plain_statements_have_no_effects() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42;",
            "insert into t values (1, 'temp')",
            "UPDATE t SET v = 'x' WHERE id = 1",
            "select * from template_table",
            "BEGIN; SELECT 1; COMMIT",
        ] {
            assert!(analyze(sql.as_bytes()).is_empty(), "{sql}");
        }
    }

    #[test]
    fn session_features_pin() {
        assert_eq!(pin("LISTEN chan"), Some(PinReason::Listen));
        assert_eq!(
            pin("select pg_advisory_lock(1)"),
            Some(PinReason::AdvisoryLock)
        );
        assert_eq!(
            pin("SELECT PG_TRY_ADVISORY_LOCK(1, 2)"),
            Some(PinReason::AdvisoryLock)
        );
        assert_eq!(pin("select pg_advisory_xact_lock(1)"), None);
        assert_eq!(
            pin("create temp table x(a int)"),
            Some(PinReason::TempTable)
        );
        assert_eq!(
            pin("CREATE LOCAL TEMPORARY TABLE x(a int)"),
            Some(PinReason::TempTable)
        );
        assert_eq!(pin("select 1 into temp x"), Some(PinReason::TempTable));
        for temp in [
            "CREATE TABLE pg_temp.foo (a int)",
            "create type PG_TEMP.mood as enum ('ok')",
            "create domain \"pg_temp\".d as int",
            "create or replace function pg_temp.f() returns int as 'select 1' language sql",
            "create table pg_temp_3.t as select 1",
            "select 1 into pg_temp.x",
            "SET search_path = pg_temp, public",
            "set search_path to 'pg_temp'",
        ] {
            assert_eq!(pin(temp), Some(PinReason::TempTable), "{temp}");
        }
        for not_temp in [
            "create table pg_temporary_stuff (a int)",
            "create table pg_temp_x.t (a int)",
            "select * from pg_temp.t",
            "set search_path = app",
        ] {
            assert_eq!(pin(not_temp), None, "{not_temp}");
        }
        assert_eq!(
            pin("declare c cursor with hold for select 1"),
            Some(PinReason::HoldCursor)
        );
        assert_eq!(pin("declare c cursor for select 1"), None);
        assert_eq!(pin("PREPARE p AS select 1"), Some(PinReason::SqlPrepare));
        assert_eq!(pin("prepare transaction 'x'"), None);
        assert_eq!(pin("begin; listen x; commit"), Some(PinReason::Listen));
    }

    #[test]
    fn keywords_inside_literals_and_comments_do_not_count() {
        assert_eq!(pin("select 'listen'; select 1"), None);
        assert_eq!(pin("select 1 /* pg_advisory_lock(1) */"), None);
        assert_eq!(pin("select $$ ; listen x $$"), None);
    }

    #[test]
    fn set_forms_are_tracked() {
        let fx = analyze(b"SET search_path TO a, b");
        assert_eq!(
            fx.sets.into_iter().map(|(_, op)| op).collect::<Vec<_>>(),
            vec![SetOp::Set {
                name: "search_path".into(),
                statement: "SET search_path TO a, b".into()
            }]
        );
        let fx = analyze(b"set session statement_timeout = '5s'");
        assert!(matches!(&fx.sets[0].1, SetOp::Set { name, .. } if name == "statement_timeout"));
        let fx = analyze(b"SET TIME ZONE 'UTC'");
        assert!(matches!(&fx.sets[0].1, SetOp::Set { name, .. } if name == "timezone"));
        assert!(ops(b"SET LOCAL work_mem = '1MB'").is_empty());
        assert!(ops(b"SET CONSTRAINTS ALL DEFERRED").is_empty());
        assert!(ops(b"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").is_empty());
        assert_eq!(
            ops(b"SET work_mem TO DEFAULT"),
            vec![SetOp::Reset {
                name: "work_mem".into()
            }]
        );
        assert_eq!(ops(b"RESET ALL"), vec![SetOp::ResetAll]);
        assert_eq!(
            ops(b"reset Work_Mem"),
            vec![SetOp::Reset {
                name: "work_mem".into()
            }]
        );
    }

    #[test]
    fn savepoint_markers() {
        assert_eq!(ops(b"SAVEPOINT a"), vec![SetOp::Savepoint("a".into())]);
        assert_eq!(
            ops(b"release savepoint A"),
            vec![SetOp::Release("a".into())]
        );
        assert_eq!(ops(b"RELEASE a"), vec![SetOp::Release("a".into())]);
        assert_eq!(
            ops(b"ROLLBACK TO SAVEPOINT a"),
            vec![SetOp::RollbackTo("a".into())]
        );
        assert_eq!(
            ops(b"rollback work to a"),
            vec![SetOp::RollbackTo("a".into())]
        );
        assert!(ops(b"ROLLBACK").is_empty());
        for chained in [
            "ROLLBACK AND CHAIN",
            "rollback work and chain",
            "ABORT AND CHAIN",
        ] {
            assert_eq!(
                ops(chained.as_bytes()),
                vec![SetOp::RollbackAll],
                "{chained}"
            );
        }
        assert!(ops(b"ROLLBACK AND NO CHAIN").is_empty());
        assert!(ops(b"abort").is_empty());
    }

    #[test]
    fn changes_know_their_statements_place() {
        let fx = analyze(b"BEGIN; SET a.x = 1; ; COMMIT; /* none */; SET a.y = 2; RESET ALL");
        let at: Vec<u32> = fx.sets.iter().map(|(at, _)| *at).collect();
        assert_eq!(at, vec![1, 3, 4]);
        // Semicolons inside a rule's actions or a routine's BEGIN ATOMIC body do not
        // end the statement.
        let fx = analyze(
            b"CREATE RULE r AS ON INSERT TO t DO ALSO (SELECT 1; SELECT 2); \
              CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC \
                SELECT CASE WHEN true THEN 1 END; SELECT 2; END; \
              SET a.x = 1",
        );
        assert_eq!(
            fx.sets.iter().map(|(at, _)| *at).collect::<Vec<_>>(),
            vec![2]
        );
        let fx = analyze(b"SELECT 'begin;' ; SET a.x = 1");
        assert_eq!(fx.sets[0].0, 1);
    }

    #[test]
    fn deallocate_and_discard() {
        assert_eq!(
            analyze(b"DEALLOCATE PREPARE s1").deallocate,
            vec![Deallocate::Name("s1".into())]
        );
        assert_eq!(
            analyze(b"deallocate \"S1\"").deallocate,
            vec![Deallocate::Name("S1".into())]
        );
        assert_eq!(analyze(b"DEALLOCATE ALL").deallocate, vec![Deallocate::All]);
        assert!(analyze(b"DISCARD ALL").discard_all);
        assert!(!analyze(b"DISCARD PLANS").discard_all);
    }

    #[test]
    fn garbage_does_not_panic() {
        for sql in [
            &b"'"[..],
            b"$",
            b"$a",
            b"/*",
            b"--",
            b"\"",
            b"set",
            b"reset",
            b"e'\\",
            b"\xff\xfe",
        ] {
            let _ = analyze(sql);
        }
    }
}
