//! Clients' scripts run straight against Postgres and through pgmux, and what each
//! client saw compared message by message.
//!
//! The scripts are random (from a fixed seed, so a failure repeats): simple Queries,
//! several statements in one Query, extended-protocol units with named and unnamed
//! statements and portals, errors in the middle of units, transactions, savepoints,
//! cursors, `SET`/`RESET`/`DISCARD`, `COPY ... TO STDOUT`, simple Queries among
//! extended-protocol messages before their Sync, and units sent behind one another
//! without waiting. Through pgmux, the clients share the server connections,
//! so their transactions move between connections all the time, and each round
//! meets what the rounds before left on them. A client must not be able to tell: the
//! same rows, the same errors (by SQLSTATE), the same transaction status after every
//! unit, and the same parameter values reported to it.
//!
//! The same runs in session mode, where each client keeps its server connection.
//!
//! The clients take turns, batch by batch, so every run is the same run.
//! `PGMUX_DIFF_CONCURRENT=1` runs each client on a thread of its own instead, racing
//! for a pool of two (for clients that do not pin); `PGMUX_DIFF_ROUNDS` runs more
//! rounds (each with new scripts) than the default; `PGMUX_DIFF_FROM=N` skips the
//! rounds before N; `PGMUX_DIFF_CLIENT=N` runs client N's scripts alone.

mod support;

use std::collections::BTreeMap;
use std::thread;

use support::extended::{cstr, error_fields, message, Wire};
use support::{pgmux_config, shared_primary, start_pgmux};

/// Clients running at once.
const CLIENTS: usize = 6;
/// Units in each client's script.
const STEPS: usize = 60;

/// splitmix64: a fixed seed gives the same scripts on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// Simple Queries any client may send.
const QUERIES: &[&str] = &[
    "SELECT 1",
    "SELECT 1/0",
    "SELEC 1",
    "",
    "SELECT 1; SELECT 2",
    "SELECT 1; SELECT 1/0; SELECT 3",
    "BEGIN",
    "BEGIN",
    "BEGIN ISOLATION LEVEL REPEATABLE READ",
    "COMMIT",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT a",
    "ROLLBACK TO SAVEPOINT a",
    "RELEASE SAVEPOINT a",
    "BEGIN; SELECT 1",
    "SET search_path = pg_catalog, public",
    "SET statement_timeout = '7s'",
    "SET application_name = 'diff'",
    "SET DateStyle = 'German'",
    "SET TIME ZONE 'America/New_York'",
    "SET LOCAL statement_timeout = '3s'",
    "SET SESSION work_mem = '8MB'",
    "RESET ALL",
    "RESET statement_timeout",
    "RESET DateStyle",
    "DISCARD ALL",
    "SHOW statement_timeout",
    "SHOW search_path",
    "SHOW work_mem",
    "SHOW DateStyle",
    "SELECT current_setting('application_name')",
    "SELECT '2020-01-02 03:04:05+00'::timestamptz::text",
    "SELECT '2020-01-02'::date::text",
    "SELECT set_config('search_path', 'public', false)",
    "SELECT set_config('work_mem', '16MB', true)",
    "DECLARE c CURSOR FOR SELECT generate_series(1, 5)",
    "FETCH 2 FROM c",
    "CLOSE c",
    "SELECT pg_sleep(0.002)",
    "SELECT repeat('x', 20000)",
    "COPY (SELECT generate_series(1, 3)) TO STDOUT",
    "SELECT count(*) FROM t WHERE id < 0",
    "DEALLOCATE ALL",
];

/// Simple Queries that need the client's own server connection (pgmux pins the
/// client to it); `{c}` is the client's number.
const PINNING_QUERIES: &[&str] = &[
    "CREATE TEMP TABLE IF NOT EXISTS tt (a int)",
    "INSERT INTO tt VALUES (1)",
    "SELECT count(*) FROM tt",
    "LISTEN ch_{c}",
    "NOTIFY ch_{c}, 'hi'",
    "UNLISTEN *",
    "PREPARE q(int) AS SELECT $1 + 1",
    "EXECUTE q(1)",
    "DEALLOCATE q",
    "DECLARE h CURSOR WITH HOLD FOR SELECT generate_series(1, 3)",
    "FETCH h",
    "SELECT pg_advisory_lock(4200 + {c})",
    "SELECT pg_advisory_unlock_all()",
];

/// Statements for Parse, with their number of parameters.
const STATEMENTS: &[(&str, usize)] = &[
    ("SELECT $1::int + 1", 1),
    ("SELECT generate_series(1, $1::int)", 1),
    // Divides at Execute whatever the plan: with a constant divisor, a custom plan
    // (made at Bind) would fail at Bind, a generic one at Execute, and which one a
    // connection uses depends on how often that statement ran there before.
    ("SELECT 1/($1::int + 0 * random()::int)", 1),
    ("SELECT $1::text AS v, $2::int AS w", 2),
    ("SHOW statement_timeout", 0),
    ("SELECT current_setting('search_path')", 0),
    ("SELEC", 0),
    ("BEGIN", 0),
    ("COMMIT", 0),
    ("SET statement_timeout = '9s'", 0),
    ("SELECT count(*) FROM t WHERE id = $1::int", 1),
    ("SELECT pg_sleep(0.001)", 0),
];

const STATEMENT_NAMES: &[&str] = &["", "", "s1", "s2"];
const PORTAL_NAMES: &[&str] = &["", "", "p1"];
const VALUES: &[Option<&str>] = &[Some("1"), Some("3"), Some("0"), Some("x"), None];

/// One unit: a simple Query, or extended-protocol messages ending in Sync. Either
/// gets one ReadyForQuery, but for the simple Queries among the extended messages
/// that run (see `Unit::query`).
struct Step {
    bytes: Vec<u8>,
    what: String,
    /// Sent once the server asks for COPY data (CopyInResponse), as drivers do.
    copy_data: Vec<u8>,
    /// Simple Queries among the extended messages, before the Sync.
    inner_queries: usize,
}

struct Script {
    steps: Vec<Step>,
    /// How many steps go out in each write.
    batches: Vec<usize>,
}

fn query_step(sql: &str) -> Step {
    let mut body = Vec::new();
    cstr(&mut body, sql);
    let mut bytes = Vec::new();
    message(&mut bytes, b'Q', &body);
    Step {
        bytes,
        what: format!("Query {sql:?}"),
        copy_data: Vec::new(),
        inner_queries: 0,
    }
}

/// Extended-protocol messages, added one by one, then Sync.
struct Unit {
    bytes: Vec<u8>,
    what: Vec<String>,
    inner_queries: usize,
}

impl Unit {
    fn parse(&mut self, name: &str, sql: &str) {
        let mut body = Vec::new();
        cstr(&mut body, name);
        cstr(&mut body, sql);
        body.extend_from_slice(&0i16.to_be_bytes());
        message(&mut self.bytes, b'P', &body);
        self.what.push(format!("Parse {name:?} {sql:?}"));
    }

    fn bind(&mut self, portal: &str, stmt: &str, values: &[Option<&str>]) {
        let mut body = Vec::new();
        cstr(&mut body, portal);
        cstr(&mut body, stmt);
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            match v {
                Some(v) => {
                    body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    body.extend_from_slice(v.as_bytes());
                }
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        body.extend_from_slice(&0i16.to_be_bytes());
        message(&mut self.bytes, b'B', &body);
        self.what
            .push(format!("Bind {portal:?} to {stmt:?} {values:?}"));
    }

    fn describe(&mut self, kind: u8, name: &str) {
        let mut body = vec![kind];
        cstr(&mut body, name);
        message(&mut self.bytes, b'D', &body);
        self.what
            .push(format!("Describe {} {name:?}", kind as char));
    }

    fn execute(&mut self, portal: &str, max_rows: i32) {
        let mut body = Vec::new();
        cstr(&mut body, portal);
        body.extend_from_slice(&max_rows.to_be_bytes());
        message(&mut self.bytes, b'E', &body);
        self.what.push(format!("Execute {portal:?} max {max_rows}"));
    }

    fn close(&mut self, kind: u8, name: &str) {
        let mut body = vec![kind];
        cstr(&mut body, name);
        message(&mut self.bytes, b'C', &body);
        self.what.push(format!("Close {} {name:?}", kind as char));
    }

    fn flush(&mut self) {
        message(&mut self.bytes, b'H', &[]);
        self.what.push("Flush".into());
    }

    /// A simple Query before the Sync: it runs, with a ReadyForQuery of its own, if
    /// the messages before it succeeded; else Postgres skips it with the rest. Its
    /// statement cannot fail, so an error before a ReadyForQuery tells the reader
    /// that the Sync's came (see `read_step`). No driver sends this.
    fn query(&mut self, sql: &str) {
        let mut body = Vec::new();
        cstr(&mut body, sql);
        message(&mut self.bytes, b'Q', &body);
        self.what.push(format!("Query {sql:?}"));
        self.inner_queries += 1;
    }

    fn sync(mut self) -> Step {
        message(&mut self.bytes, b'S', &[]);
        Step {
            bytes: self.bytes,
            what: format!("{} Sync", self.what.join("; ")),
            copy_data: Vec::new(),
            inner_queries: self.inner_queries,
        }
    }
}

/// Values for a statement of `n` parameters; now and then a wrong number of them.
fn values(rng: &mut Rng, n: usize) -> Vec<Option<&'static str>> {
    let n = if rng.chance(5) { rng.below(3) } else { n };
    (0..n).map(|_| rng.pick(VALUES)).collect()
}

fn extended_step(rng: &mut Rng, params: &mut BTreeMap<&'static str, usize>) -> Step {
    let mut unit = Unit {
        bytes: Vec::new(),
        what: Vec::new(),
        inner_queries: 0,
    };
    if rng.chance(60) {
        // What drivers send: Parse, Bind, Describe, Execute.
        let name = rng.pick(STATEMENT_NAMES);
        let (sql, n) = rng.pick(STATEMENTS);
        let reuse = !name.is_empty() && params.contains_key(name) && rng.chance(70);
        if !reuse {
            unit.parse(name, sql);
            params.insert(name, n);
        }
        let n = params.get(name).copied().unwrap_or(0);
        let portal = rng.pick(PORTAL_NAMES);
        unit.bind(portal, name, &values(rng, n));
        unit.describe(b'P', portal);
        unit.execute(portal, rng.pick(&[0, 0, 0, 2]));
        if rng.chance(20) {
            unit.execute(portal, 0);
        }
        return unit.sync();
    }
    // Postgres 15 crashes (SIGSEGV) on an Execute, in a failed transaction, of a
    // portal bound in an earlier unit to a statement dropped since: an Execute here
    // runs only a portal this unit bound.
    let mut bound: Vec<&str> = Vec::new();
    // The unnamed statement is used only after this unit parsed it, as drivers do.
    // (When the server skips an unnamed Parse after an error, Postgres keeps the
    // unnamed statement from before; pgmux then counts it as gone.)
    let mut unnamed = false;
    for _ in 0..1 + rng.below(5) {
        let used = match rng.pick(STATEMENT_NAMES) {
            "" if !unnamed => "s1",
            name => name,
        };
        match rng.below(7) {
            0 => {
                let name = rng.pick(STATEMENT_NAMES);
                let (sql, n) = rng.pick(STATEMENTS);
                unit.parse(name, sql);
                params.insert(name, n);
                unnamed |= name.is_empty();
            }
            1 => {
                let name = used;
                let n = params.get(name).copied().unwrap_or(0);
                let portal = rng.pick(PORTAL_NAMES);
                unit.bind(portal, name, &values(rng, n));
                bound.push(portal);
            }
            2 => {
                if rng.chance(50) {
                    unit.describe(b'S', used);
                } else {
                    unit.describe(b'P', rng.pick(PORTAL_NAMES));
                }
            }
            3 => {
                if !bound.is_empty() {
                    unit.execute(rng.pick(&bound), rng.pick(&[0, 1]));
                }
            }
            4 => {
                if rng.chance(50) {
                    unit.close(b'S', rng.pick(STATEMENT_NAMES));
                } else {
                    unit.close(b'P', rng.pick(PORTAL_NAMES));
                }
            }
            5 => unit.flush(),
            _ if rng.chance(25) => {
                // In a failed transaction the Parse fails, so the Query never meets
                // an error of its own.
                unit.parse("", "SELECT 1");
                unnamed = true;
                unit.bind("", "", &[]);
                unit.execute("", 0);
                unit.query(rng.pick(&["SELECT 'inner'", "SET application_name = 'inner'"]));
            }
            _ => {
                let name = rng.pick(STATEMENT_NAMES);
                let (sql, n) = rng.pick(STATEMENTS);
                unit.parse(name, sql);
                params.insert(name, n);
                unnamed |= name.is_empty();
                unit.bind("", name, &values(rng, n));
                bound.push("");
                unit.execute("", 0);
            }
        }
    }
    unit.sync()
}

/// The table a test's COPY steps fill: one per test (by its seed), as they run at
/// once.
fn copy_table(test_seed: u64) -> String {
    format!("copy_sink_{test_seed:x}")
}

/// `COPY … FROM STDIN` over the simple or the extended protocol, its data whole,
/// with a bad row, or given up with CopyFail. As drivers do, the data goes once the
/// server asks for it (CopyInResponse), and over the extended protocol the statement
/// comes with a Sync (which the server ignores during the copy) and the data ends
/// with another; now and then the data goes right behind the statement instead, in
/// the same write, which the protocol allows too.
fn copy_step(rng: &mut Rng, params: &mut BTreeMap<&'static str, usize>, table: &str) -> Step {
    let sql = format!("COPY {table} FROM STDIN");
    let extended = rng.chance(40);
    let early = rng.chance(20);
    let mut unit = Unit {
        bytes: Vec::new(),
        what: Vec::new(),
        inner_queries: 0,
    };
    if extended {
        unit.parse("", &sql);
        params.insert("", 0);
        unit.bind("", "", &[]);
        unit.execute("", 0);
    } else {
        let mut body = Vec::new();
        cstr(&mut body, &sql);
        message(&mut unit.bytes, b'Q', &body);
        unit.what.push(format!("Query {sql:?}"));
    }
    let mut statement = std::mem::take(&mut unit.bytes);
    if extended && !early {
        message(&mut statement, b'S', &[]);
        unit.what.push("Sync".into());
        unit.what.push("(CopyInResponse)".into());
    }
    let data = rng.pick(&["1\n2\n3\n", "1\nx\n3\n", "4\n"]);
    message(&mut unit.bytes, b'd', data.as_bytes());
    unit.what.push(format!("CopyData {data:?}"));
    if rng.chance(80) {
        message(&mut unit.bytes, b'c', &[]);
        unit.what.push("CopyDone".into());
    } else {
        let mut body = Vec::new();
        cstr(&mut body, "given up");
        message(&mut unit.bytes, b'f', &body);
        unit.what.push("CopyFail".into());
    }
    if extended {
        message(&mut unit.bytes, b'S', &[]);
        unit.what.push("Sync".into());
    }
    let what = unit.what.join("; ");
    if early {
        statement.extend_from_slice(&unit.bytes);
        return Step {
            bytes: statement,
            what: format!("{what} (in one write)"),
            copy_data: Vec::new(),
            inner_queries: 0,
        };
    }
    Step {
        bytes: statement,
        what,
        copy_data: unit.bytes,
        inner_queries: 0,
    }
}

/// A step that names, closes or deallocates prepared statements goes out last in its
/// write. pgmux records such changes as it sends the step; when the server skips them
/// (an earlier message of the unit failed), they are undone with the step's
/// ReadyForQuery, but a step sent behind it before that saw them done, where Postgres,
/// which reads one step after the other, never did them.
fn drops_statements(step: &Step) -> bool {
    step.what.contains("Parse \"s")
        || step.what.contains("Close S")
        || step.what.contains("DEALLOCATE")
        || step.what.contains("DISCARD")
}

fn script(seed: u64, client: usize, pinning: bool, copy_table: &str) -> Script {
    let mut rng = Rng(seed ^ (client as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut params = BTreeMap::new();
    let mut steps = Vec::new();
    for _ in 0..STEPS {
        let step = if rng.chance(45) {
            extended_step(&mut rng, &mut params)
        } else if rng.chance(6) {
            copy_step(&mut rng, &mut params, copy_table)
        } else if pinning && rng.chance(15) {
            query_step(
                &rng.pick(PINNING_QUERIES)
                    .replace("{c}", &client.to_string()),
            )
        } else {
            query_step(rng.pick(QUERIES))
        };
        steps.push(step);
    }
    let mut batches = Vec::new();
    let mut next = 0;
    while next < steps.len() {
        let want = if rng.chance(30) { 2 + rng.below(2) } else { 1 };
        let mut n = 0;
        while n < want && next + n < steps.len() {
            n += 1;
            // Nothing goes behind a COPY that waits to be asked for its data.
            let last = &steps[next + n - 1];
            if drops_statements(last) || !last.copy_data.is_empty() {
                break;
            }
        }
        batches.push(n);
        next += n;
    }
    Script { steps, batches }
}

/// One client's connection, and what it saw of each step so far.
struct Client<'a> {
    script: &'a Script,
    wire: Wire,
    reported: BTreeMap<String, String>,
    seen: Vec<Vec<String>>,
    next_step: usize,
    next_batch: usize,
}

impl<'a> Client<'a> {
    fn connect(port: u16, script: &'a Script) -> Client<'a> {
        let wire = Wire::connect(port);
        let reported = wire.login_params.iter().cloned().collect();
        Client {
            script,
            wire,
            reported,
            seen: Vec::new(),
            next_step: 0,
            next_batch: 0,
        }
    }

    /// Sends the next batch and reads its replies; false when the script is done.
    /// What a client saw for each step: each message, in a form that does not depend
    /// on which server or connection answered.
    fn run_batch(&mut self) -> bool {
        let Some(&n) = self.script.batches.get(self.next_batch) else {
            return false;
        };
        let steps = &self.script.steps[self.next_step..self.next_step + n];
        let out: Vec<u8> = steps.iter().flat_map(|s| s.bytes.iter().copied()).collect();
        self.wire.send(&out);
        for _ in 0..n {
            let step = &self.script.steps[self.seen.len()];
            let step = read_step(&mut self.wire, &mut self.reported, step);
            self.seen.push(step);
        }
        self.next_step += n;
        self.next_batch += 1;
        true
    }
}

/// Messages up to and including ReadyForQuery. Parameter values are compared as the
/// client knows them at the end of the step, not message by message.
fn read_step(wire: &mut Wire, reported: &mut BTreeMap<String, String>, step: &Step) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut inner_left = step.inner_queries;
    loop {
        let (tag, body) = wire.read_message();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let line = match tag {
            b'S' => {
                let mut parts = body.split(|&b| b == 0);
                let name = text(parts.next().unwrap_or(b""));
                let value = text(parts.next().unwrap_or(b""));
                reported.insert(name, value);
                continue;
            }
            b'E' | b'N' => format!("{} {}", tag as char, error_fields(&body).0),
            b'C' | b'd' => format!("{} {}", tag as char, text(&body)),
            b'D' | b'T' | b't' => format!("{} {:?}", tag as char, body),
            b'A' => format!("A {}", text(&body[4..])),
            b'G' => {
                wire.send(&step.copy_data);
                "G".to_string()
            }
            b'Z' => {
                // After an error, the Sync's: the Queries left were skipped.
                let inner_ran = lines.last().is_some_and(|l| !l.starts_with("E "));
                lines.push(format!("Z {} {:?}", body[0] as char, reported));
                if inner_left > 0 && inner_ran {
                    inner_left -= 1;
                    continue;
                }
                return lines;
            }
            other => format!("{}", other as char),
        };
        lines.push(line);
    }
}

/// The clients' scripts: all connected at once, taking turns batch by batch (so the
/// same scripts meet the same pgmux states every run), or each on a thread of its
/// own (`concurrent`), so that they race for connections.
fn run_clients(port: u16, scripts: &[Script], concurrent: bool) -> Vec<Vec<Vec<String>>> {
    if concurrent {
        return thread::scope(|s| {
            let handles: Vec<_> = scripts
                .iter()
                .map(|script| {
                    s.spawn(move || {
                        let mut client = Client::connect(port, script);
                        while client.run_batch() {}
                        client.seen
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a client's thread"))
                .collect()
        });
    }
    let mut clients: Vec<Client> = scripts.iter().map(|s| Client::connect(port, s)).collect();
    loop {
        let mut any = false;
        for client in &mut clients {
            any |= client.run_batch();
        }
        if !any {
            break;
        }
    }
    clients.into_iter().map(|c| c.seen).collect()
}

/// Inside a failed transaction, what a step gets before its ReadyForQuery may differ.
/// Postgres answers a few messages there (a Describe of a statement without result
/// columns, a Bind that fails on its parameters first); pgmux must first prepare the
/// client's statement on its connection, and that Parse fails (25P02). Such a step
/// is compared by its ReadyForQuery: the transaction status and the reported values.
fn in_failed_transaction(step: &[String], failed_before: bool) -> Vec<String> {
    if !failed_before {
        return step.to_vec();
    }
    step.iter()
        .filter(|l| l.starts_with("Z "))
        .cloned()
        .collect()
}

/// A Describe of a statement without result columns (`BEGIN`, `SET`) is answered in a
/// failed transaction; through pgmux it may first have to be prepared on the
/// connection, and that Parse fails (25P02), which skips the rest of the unit: a
/// `COMMIT` or a Close after it does not happen. From there on the client's two
/// runs differ as a whole, so its comparison ends.
fn prepares_again_fails(what: &str, direct: &[String], pooled: &[String]) -> bool {
    what.contains("Describe S \"s")
        && pooled.first().is_some_and(|l| l == "E 25P02")
        && direct.first().is_none_or(|l| l != "E 25P02")
}

fn compare(
    round: u64,
    client: usize,
    script: &Script,
    direct: &[Vec<String>],
    pooled: &[Vec<String>],
) {
    let failed_before =
        |i: usize| i > 0 && direct[i - 1].last().is_some_and(|z| z.starts_with("Z E"));
    // Up to the step where the runs part as a whole, if they do.
    let comparable = (0..script.steps.len())
        .find(|&i| {
            failed_before(i) && prepares_again_fails(&script.steps[i].what, &direct[i], &pooled[i])
        })
        .unwrap_or(script.steps.len());
    let Some(i) = (0..comparable).find(|&i| {
        in_failed_transaction(&direct[i], failed_before(i))
            != in_failed_transaction(&pooled[i], failed_before(i))
    }) else {
        return;
    };
    let from = 0;
    let before: Vec<String> = (from..i)
        .map(|j| format!("  {j}: {}", script.steps[j].what))
        .collect();
    panic!(
        "round {round}, client {client}: step {i} differs\n\
         steps before it:\n{}\n\
         step {i}: {}\n\
         straight to Postgres:\n  {}\n\
         through pgmux:\n  {}",
        before.join("\n"),
        script.steps[i].what,
        direct[i].join("\n  "),
        pooled[i].join("\n  "),
    );
}

fn rounds(default: u64) -> u64 {
    std::env::var("PGMUX_DIFF_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `PGMUX_DIFF_FROM=N` starts at round N, to tell whether a difference needs what
/// the rounds before it left behind.
fn first_round() -> u64 {
    std::env::var("PGMUX_DIFF_FROM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `PGMUX_DIFF_CLIENT=N` runs client N's scripts alone, to tell whether a difference
/// needs the others.
fn only(client: usize) -> bool {
    std::env::var("PGMUX_DIFF_CLIENT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .is_none_or(|n| n == client)
}

fn differential(seed: u64, pinning: bool, pool_mode: &str) {
    let concurrent = std::env::var_os("PGMUX_DIFF_CONCURRENT").is_some();
    // Taking turns, a client may hold a connection (a transaction, pinned, a
    // session) while the others go on: every client must be able to get one.
    let pool_size = if concurrent && !pinning && pool_mode == "transaction" {
        2
    } else {
        CLIENTS
    };
    let pg = shared_primary();
    let mut setup = Wire::connect(pg.port);
    let table = copy_table(seed);
    setup.simple(&format!("CREATE TABLE IF NOT EXISTS {table} (a int)"));
    let px = start_pgmux(&pgmux_config(
        pg,
        &format!("pool_mode = \"{pool_mode}\"\n"),
        &format!("pool_size = {pool_size}\n"),
    ));
    // The same pgmux for every round: a round's clients must not see anything the
    // clients of the rounds before left on the server connections.
    for round in first_round()..rounds(10) {
        let seed = seed.wrapping_add(round.wrapping_mul(0x9E37_79B9));
        let clients: Vec<usize> = (0..CLIENTS).filter(|c| only(*c)).collect();
        let scripts: Vec<Script> = clients
            .iter()
            .map(|&c| script(seed, c, pinning, &table))
            .collect();
        let direct = run_clients(pg.port, &scripts, concurrent);
        let pooled = run_clients(px.port, &scripts, concurrent);
        for (i, &c) in clients.iter().enumerate() {
            compare(round, c, &scripts[i], &direct[i], &pooled[i]);
        }
    }
}

#[test]
fn clients_sharing_connections_see_what_they_would_see_alone() {
    differential(0x5EED_0001, false, "transaction");
}

#[test]
fn clients_that_pin_their_connections_see_what_they_would_see_alone() {
    differential(0x5EED_0002, true, "transaction");
}

/// In session mode each client keeps one server connection and its statement names
/// pass through as sent; pgmux still follows every unit to its ReadyForQuery.
#[test]
fn clients_in_session_mode_see_what_they_would_see_alone() {
    differential(0x5EED_0003, true, "session");
}
