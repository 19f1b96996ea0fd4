//! Session state in transaction mode (CONTRACT.md section 3): a client's `SET`s and
//! startup settings follow it onto every server connection it gets, and never reach
//! another client; rolled-back and `SET LOCAL` changes do not stick; `RESET`,
//! `RESET ALL` and `DISCARD ALL` restore the defaults. Features that need one server
//! for the whole session pin the client to its connection, keep working, and are
//! cleaned off the connection once the client leaves; `pgmux_pinned_clients` counts
//! the pinned clients.
//!
//! Most tests steer clients onto a chosen server connection of a two-connection pool
//! (see [`Steering`]), so "on every server connection" is checked deterministically.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

/// Postgres 15's defaults for the settings the tests change.
const DEFAULT_STATEMENT_TIMEOUT: &str = "0";
const DEFAULT_SEARCH_PATH: &str = "\"$user\", public";
const DEFAULT_WORK_MEM: &str = "4MB";
/// How long a cleanup pgmux does after a client leaves may take to show.
const CLEANUP_DEADLINE: Duration = Duration::from_secs(30);

fn app_url(px: &Pgmux) -> String {
    px.url(APP_USER, APP_PASSWORD, APP_DB)
}

/// pgmux with a pool of `pool_size` connections to the shared primary.
fn pgmux_with_pool(pool_size: usize) -> Pgmux {
    start_pgmux(&pgmux_config(
        shared_primary(),
        "",
        &format!("pool_size = {pool_size}"),
    ))
}

/// Runs one simple query and returns the first column of its rows as text.
async fn simple(client: &Client, sql: &str) -> Vec<String> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("NULL").to_string()),
            _ => None,
        })
        .collect()
}

async fn pid(client: &Client) -> i32 {
    client
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// `current_setting(name)` and the backend pid, in one statement (one transaction).
async fn setting_and_pid(client: &Client, name: &str) -> (String, i32) {
    let row = client
        .query_one(
            "select current_setting($1), pg_backend_pid()",
            &[&name.to_string()],
        )
        .await
        .unwrap_or_else(|e| panic!("current_setting({name}): {e}"));
    (row.get(0), row.get(1))
}

/// Steers clients onto a chosen server connection of a `pool_size = 2` pool: two
/// holder clients keep both connections in open transactions, and [`Steering::free`]
/// commits one of them so that connection is the only one anybody can get. The
/// holders are clients too: [`Steering::retake`] checks that they see `settings`
/// (name, value) on the connection they take back — another client's settings must
/// not leak to them.
struct Steering {
    holders: [Client; 2],
    /// The backend pid of each of the two server connections.
    pids: [i32; 2],
}

impl Steering {
    async fn new(url: &str) -> Steering {
        let holders = [connect(url).await, connect(url).await];
        let mut pids = [0; 2];
        for (h, pid) in holders.iter().zip(pids.iter_mut()) {
            h.batch_execute("BEGIN").await.unwrap();
            *pid = self::pid(h).await;
        }
        assert_ne!(pids[0], pids[1], "the holders share a server connection");
        Steering { holders, pids }
    }

    /// Makes connection `i` the only free one.
    async fn free(&self, i: usize) {
        self.holders[i].batch_execute("COMMIT").await.unwrap();
    }

    /// Takes connection `i` back (the only one its holder can get) and checks what
    /// the holder sees of `settings` there.
    async fn retake(&self, i: usize, settings: &[(&str, &str)]) {
        let holder = &self.holders[i];
        holder.batch_execute("BEGIN").await.unwrap();
        assert_eq!(pid(holder).await, self.pids[i], "holder {i} moved");
        for (name, want) in settings {
            let (got, _) = setting_and_pid(holder, name).await;
            assert_eq!(
                &got, want,
                "another client sees {name} = {got:?} on connection {i}"
            );
        }
    }

    /// Runs `sql` (simple protocol) as `client` on connection `i`; the first column of
    /// its rows, or the error.
    async fn run_on(
        &self,
        i: usize,
        client: &Client,
        sql: &str,
        defaults: &[(&str, &str)],
    ) -> Result<Vec<String>, tokio_postgres::Error> {
        self.free(i).await;
        let result = client.simple_query(sql).await.map(|messages| {
            messages
                .into_iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("NULL").to_string()),
                    _ => None,
                })
                .collect()
        });
        self.retake(i, defaults).await;
        result
    }

    /// Ends both holders' transactions, leaving the pool to everybody else.
    async fn release(&self) {
        self.free(0).await;
        self.free(1).await;
    }

    /// Checks `client`'s view of `name` on each of the two connections in turn, and
    /// the holders' view of `defaults` after it.
    async fn expect_on_both(
        &self,
        client: &Client,
        name: &str,
        want: &str,
        defaults: &[(&str, &str)],
    ) {
        for i in [0, 1] {
            self.free(i).await;
            let (got, pid) = setting_and_pid(client, name).await;
            assert_eq!(pid, self.pids[i], "the client did not get connection {i}");
            assert_eq!(got, want, "{name} on connection {i}");
            self.retake(i, defaults).await;
        }
    }
}

/// Clients running short transactions until stopped, each checking it sees the
/// `defaults`; they keep the pool busy around the client under test.
struct Competitors {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<u64>>,
}

impl Competitors {
    async fn start(url: &str, n: usize, defaults: &'static [(&'static str, &'static str)]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..n {
            let client = connect(url).await;
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut done = 0u64;
                loop {
                    for (name, want) in defaults {
                        let (got, _) = setting_and_pid(&client, name).await;
                        assert_eq!(&got, want, "a competitor sees {name} = {got:?}");
                    }
                    client
                        .batch_execute("BEGIN; SELECT pg_backend_pid(); COMMIT")
                        .await
                        .unwrap();
                    done += 1;
                    if stop.load(Ordering::Relaxed) {
                        return done;
                    }
                }
            }));
        }
        Competitors { stop, tasks }
    }

    /// Stops them; panics if any of them failed.
    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let done = task.await.expect("a competitor failed");
            assert!(done > 0);
        }
    }
}

// ------------------------------------------------------------------- settings

const COMPETITOR_DEFAULTS: &[(&str, &str)] = &[
    ("statement_timeout", DEFAULT_STATEMENT_TIMEOUT),
    ("search_path", DEFAULT_SEARCH_PATH),
    ("work_mem", DEFAULT_WORK_MEM),
    ("application_name", ""),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_follows_the_client_to_every_server_connection_and_nobody_else_sees_it() {
    let px = pgmux_with_pool(2);
    let url = app_url(&px);
    let steer = Steering::new(&url).await;
    let competitors = Competitors::start(&url, 3, COMPETITOR_DEFAULTS).await;
    let client = connect(&url).await;

    steer.free(0).await;
    client
        .batch_execute("SET statement_timeout = '1234ms'")
        .await
        .unwrap();
    client
        .batch_execute("SET search_path = pgmux_session_a, public")
        .await
        .unwrap();
    steer.retake(0, COMPETITOR_DEFAULTS).await;

    for round in 0..10 {
        for i in [0, 1] {
            steer.free(i).await;
            let row = client
                .query_one(
                    "select current_setting('statement_timeout'), current_setting('search_path'), pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(row.get::<_, i32>(2), steer.pids[i]);
            assert_eq!(
                (row.get::<_, String>(0), row.get::<_, String>(1)),
                ("1234ms".into(), "pgmux_session_a, public".into()),
                "round {round}, connection {i}"
            );
            // The simple protocol and an explicit transaction see it too.
            assert_eq!(simple(&client, "SHOW statement_timeout").await, ["1234ms"]);
            let in_txn = simple(&client, "BEGIN; SHOW search_path; COMMIT").await;
            assert_eq!(in_txn, ["pgmux_session_a, public"]);
            steer.retake(i, COMPETITOR_DEFAULTS).await;
        }
    }
    steer.release().await;
    competitors.stop().await;
}

#[tokio::test]
async fn application_name_from_the_startup_packet_is_applied_on_every_server_connection() {
    let px = pgmux_with_pool(2);
    let url = app_url(&px);
    let steer = Steering::new(&url).await;
    let named = connect(&format!("{url}?application_name=pgmux_startup_app")).await;
    let defaults = [("application_name", "")];

    for _ in 0..3 {
        steer
            .expect_on_both(&named, "application_name", "pgmux_startup_app", &defaults)
            .await;
    }
    // Changed by SET, it follows the client too; RESET goes back to the startup value.
    steer
        .run_on(
            0,
            &named,
            "SET application_name = 'pgmux_changed_app'",
            &defaults,
        )
        .await
        .unwrap();
    steer
        .expect_on_both(&named, "application_name", "pgmux_changed_app", &defaults)
        .await;
    steer
        .run_on(1, &named, "RESET application_name", &defaults)
        .await
        .unwrap();
    steer
        .expect_on_both(&named, "application_name", "pgmux_startup_app", &defaults)
        .await;
}

/// As Postgres does: an application_name longer than an identifier is kept to 63
/// bytes, and the client is told so in a notice (42622) as it logs in.
#[tokio::test]
async fn a_startup_application_name_is_clipped_to_an_identifiers_length_with_a_notice() {
    let px = pgmux_with_pool(2);
    let long = "x".repeat(65);
    let (client, mut connection) =
        tokio_postgres::connect(&format!("{}?application_name={long}", app_url(&px)), NoTls)
            .await
            .unwrap();
    let (tx, mut notices) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notice(n) = message {
                let _ = tx.send((n.code().code().to_owned(), n.message().to_owned()));
            }
        }
    });
    let kept = "x".repeat(63);
    assert_eq!(
        simple(&client, "show application_name").await,
        std::slice::from_ref(&kept)
    );
    let (code, message) = notices.recv().await.expect("a notice at login");
    assert_eq!(code, "42622");
    assert_eq!(
        message,
        format!("identifier \"{long}\" will be truncated to \"{kept}\"")
    );
}

/// As Postgres 15 does: each byte of application_name that is not printable ASCII
/// becomes `?`, in the value reported at login as on the server.
#[test]
fn a_startup_application_name_is_reported_as_printable_ascii() {
    let px = start_pgmux(&pgmux_config(
        shared_primary(),
        "auth_method = \"trust\"",
        "pool_size = 1",
    ));
    let params = [
        ("user", APP_USER),
        ("database", APP_DB),
        ("application_name", "caf\u{e9}\u{1}x"),
    ];
    let (mut client, said) = wire::RawClient::login_trust_with(px.port, &params);
    let reported: Vec<&[u8]> = said
        .iter()
        .filter(|m| m.tag == b'S' && m.body.starts_with(b"application_name\0"))
        .map(|m| &m.body[b"application_name\0".len()..])
        .collect();
    assert_eq!(reported, [&b"caf???x\0"[..]]);
    assert_eq!(
        client.query("show application_name"),
        Ok(vec!["caf???x".to_string()])
    );
}

/// `set_config(name, value, false)` changes a setting for the session as `SET` does:
/// it follows the client and never reaches another one (the usual way to hand a
/// tenant to row-level security); with `true` it ends with the transaction.
#[tokio::test]
async fn set_config_for_the_session_follows_the_client_and_never_leaks() {
    let px = pgmux_with_pool(2);
    let url = app_url(&px);
    let steer = Steering::new(&url).await;
    let client = connect(&url).await;
    let defaults = [("statement_timeout", DEFAULT_STATEMENT_TIMEOUT)];

    steer
        .run_on(
            0,
            &client,
            "select set_config('statement_timeout', '4321ms', false)",
            &defaults,
        )
        .await
        .unwrap();
    steer
        .expect_on_both(&client, "statement_timeout", "4321ms", &defaults)
        .await;

    // Local to its transaction: nothing stays.
    steer
        .run_on(
            1,
            &client,
            "begin; select set_config('work_mem', '7777kB', true); commit",
            &defaults,
        )
        .await
        .unwrap();
    steer
        .expect_on_both(&client, "work_mem", DEFAULT_WORK_MEM, &defaults)
        .await;

    // Rolled back: nothing stays either.
    steer
        .run_on(
            1,
            &client,
            "begin; select set_config('statement_timeout', '999ms', false); rollback",
            &defaults,
        )
        .await
        .unwrap();
    steer
        .expect_on_both(&client, "statement_timeout", "4321ms", &defaults)
        .await;

    steer
        .run_on(0, &client, "RESET statement_timeout", &defaults)
        .await
        .unwrap();
    steer
        .expect_on_both(
            &client,
            "statement_timeout",
            DEFAULT_STATEMENT_TIMEOUT,
            &defaults,
        )
        .await;
}

/// A value pgmux cannot read (a parameter) pins the client; its server connection
/// is cleaned before anybody else gets it.
#[tokio::test]
async fn set_config_with_a_parameter_pins_and_is_cleaned_after() {
    let px = pgmux_with_pool(2);
    let url = app_url(&px);
    let client = connect(&url).await;
    client
        .query(
            "select set_config('statement_timeout', $1, false)",
            &[&"5432ms".to_string()],
        )
        .await
        .unwrap();
    let pin = PinCheck::new(&url, &client).await;
    for round in 0..ROUNDS {
        pin.round(&client, round).await;
        let (got, _) = setting_and_pid(&client, "statement_timeout").await;
        assert_eq!(got, "5432ms");
    }
    let pinned_pid = pin.pinned_pid;
    drop(pin);
    drop(client);

    // Both connections, the pinned one included, show the default to new clients.
    let deadline = std::time::Instant::now() + CLEANUP_DEADLINE;
    let (a, b) = (connect(&url).await, connect(&url).await);
    loop {
        a.batch_execute("BEGIN").await.unwrap();
        b.batch_execute("BEGIN").await.unwrap();
        let seen = [
            setting_and_pid(&a, "statement_timeout").await,
            setting_and_pid(&b, "statement_timeout").await,
        ];
        a.batch_execute("COMMIT").await.unwrap();
        b.batch_execute("COMMIT").await.unwrap();
        if seen.iter().any(|(_, pid)| *pid == pinned_pid) {
            for (got, _) in &seen {
                assert_eq!(got, DEFAULT_STATEMENT_TIMEOUT);
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pinned connection never came back: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn set_in_a_rolled_back_transaction_neither_sticks_nor_leaks() {
    let px = pgmux_with_pool(2);
    let url = app_url(&px);
    let steer = Steering::new(&url).await;
    let client = connect(&url).await;
    let defaults = [
        ("statement_timeout", DEFAULT_STATEMENT_TIMEOUT),
        ("work_mem", DEFAULT_WORK_MEM),
    ];

    // Rolled back explicitly, with separate messages.
    steer.free(0).await;
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("SET statement_timeout = '777ms'")
        .await
        .unwrap();
    assert_eq!(simple(&client, "SHOW statement_timeout").await, ["777ms"]);
    client.batch_execute("ROLLBACK").await.unwrap();
    steer.retake(0, &defaults).await;
    steer
        .expect_on_both(
            &client,
            "statement_timeout",
            DEFAULT_STATEMENT_TIMEOUT,
            &defaults,
        )
        .await;

    // In one message.
    steer
        .run_on(
            1,
            &client,
            "BEGIN; SET work_mem = '1234kB'; ROLLBACK",
            &defaults,
        )
        .await
        .unwrap();
    steer
        .expect_on_both(&client, "work_mem", DEFAULT_WORK_MEM, &defaults)
        .await;

    // Failed by an error, then rolled back.
    steer.free(0).await;
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("SET statement_timeout = '778ms'")
        .await
        .unwrap();
    client
        .batch_execute("SELECT 1 / 0")
        .await
        .expect_err("division by zero");
    client.batch_execute("ROLLBACK").await.unwrap();
    steer.retake(0, &defaults).await;
    steer
        .expect_on_both(
            &client,
            "statement_timeout",
            DEFAULT_STATEMENT_TIMEOUT,
            &defaults,
        )
        .await;

    // Undone by ROLLBACK TO SAVEPOINT inside a committed transaction.
    let savepoint = "BEGIN; SAVEPOINT a; SET statement_timeout = '779ms'; \
                     ROLLBACK TO SAVEPOINT a; COMMIT";
    steer
        .run_on(1, &client, savepoint, &defaults)
        .await
        .unwrap();
    steer
        .expect_on_both(
            &client,
            "statement_timeout",
            DEFAULT_STATEMENT_TIMEOUT,
            &defaults,
        )
        .await;

    // A committed SET survives a later rolled-back one.
    let committed = "BEGIN; SET statement_timeout = '1234ms'; COMMIT";
    steer
        .run_on(0, &client, committed, &defaults)
        .await
        .unwrap();
    let rolled_back = "BEGIN; SET statement_timeout = '780ms'; ROLLBACK";
    steer
        .run_on(0, &client, rolled_back, &defaults)
        .await
        .unwrap();
    steer
        .expect_on_both(&client, "statement_timeout", "1234ms", &defaults)
        .await;
}

#[tokio::test]
async fn set_before_a_savepoint_that_recovered_from_an_error_sticks() {
    let px = pgmux_with_pool(2);
    let url = app_url(&px);
    let steer = Steering::new(&url).await;
    let client = connect(&url).await;

    let defaults = [("statement_timeout", DEFAULT_STATEMENT_TIMEOUT)];

    steer.free(0).await;
    client
        .batch_execute("BEGIN; SET statement_timeout = '999ms'; SAVEPOINT a")
        .await
        .unwrap();
    client
        .batch_execute("SELECT 1 / 0")
        .await
        .expect_err("division by zero");
    client
        .batch_execute("ROLLBACK TO SAVEPOINT a; COMMIT")
        .await
        .unwrap();
    steer.retake(0, &defaults).await;
    // Postgres keeps the SET made before the savepoint.
    steer
        .expect_on_both(&client, "statement_timeout", "999ms", &defaults)
        .await;
}

#[tokio::test]
async fn reset_reset_all_and_discard_all_restore_the_defaults() {
    let px = pgmux_with_pool(2);
    let url = app_url(&px);
    let steer = Steering::new(&url).await;
    let client = connect(&format!("{url}?application_name=pgmux_reset_app")).await;
    let defaults = [
        ("statement_timeout", DEFAULT_STATEMENT_TIMEOUT),
        ("search_path", DEFAULT_SEARCH_PATH),
        ("application_name", ""),
    ];
    let set_all = "SET statement_timeout = '1234ms'; SET search_path = pgmux_reset, public; \
                   SET application_name = 'pgmux_reset_changed'";
    let run = |i: usize, sql: &'static str| {
        let (steer, client, defaults) = (&steer, &client, &defaults);
        async move { steer.run_on(i, client, sql, defaults).await.unwrap() }
    };

    run(0, set_all).await;
    steer
        .expect_on_both(&client, "statement_timeout", "1234ms", &defaults)
        .await;
    run(1, "RESET statement_timeout").await;
    steer
        .expect_on_both(
            &client,
            "statement_timeout",
            DEFAULT_STATEMENT_TIMEOUT,
            &defaults,
        )
        .await;
    steer
        .expect_on_both(&client, "search_path", "pgmux_reset, public", &defaults)
        .await;

    run(0, "RESET ALL").await;
    steer
        .expect_on_both(&client, "search_path", DEFAULT_SEARCH_PATH, &defaults)
        .await;
    // RESET ALL goes back to what the client asked for at startup.
    steer
        .expect_on_both(&client, "application_name", "pgmux_reset_app", &defaults)
        .await;

    run(1, set_all).await;
    steer
        .expect_on_both(&client, "search_path", "pgmux_reset, public", &defaults)
        .await;
    run(0, "DISCARD ALL").await;
    for (name, want) in [
        ("statement_timeout", DEFAULT_STATEMENT_TIMEOUT),
        ("search_path", DEFAULT_SEARCH_PATH),
        ("application_name", "pgmux_reset_app"),
    ] {
        steer.expect_on_both(&client, name, want, &defaults).await;
    }

    // SET name TO DEFAULT is a RESET too.
    run(1, "SET statement_timeout = '1234ms'").await;
    run(0, "SET statement_timeout TO DEFAULT").await;
    steer
        .expect_on_both(
            &client,
            "statement_timeout",
            DEFAULT_STATEMENT_TIMEOUT,
            &defaults,
        )
        .await;
}

#[tokio::test]
async fn reset_all_pipelined_behind_another_statement_restores_the_startup_settings() {
    let px = pgmux_with_pool(2);
    let url = app_url(&px);
    let steer = Steering::new(&url).await;
    let client = connect(&format!("{url}?application_name=pgmux_pipelined_app")).await;
    let defaults = [("application_name", "")];

    for sql in ["RESET ALL", "RESET application_name"] {
        steer
            .run_on(
                0,
                &client,
                "SET application_name = 'pgmux_pipelined_changed'",
                &defaults,
            )
            .await
            .unwrap();
        steer
            .expect_on_both(
                &client,
                "application_name",
                "pgmux_pipelined_changed",
                &defaults,
            )
            .await;
        // Both queries go out before either is answered: the first one's end must not
        // count as the end of the second.
        steer.free(1).await;
        let (first, reset) =
            tokio::join!(client.simple_query("SELECT 1"), client.simple_query(sql));
        first.unwrap();
        reset.unwrap();
        steer.retake(1, &defaults).await;
        steer
            .expect_on_both(
                &client,
                "application_name",
                "pgmux_pipelined_app",
                &defaults,
            )
            .await;
    }
}

#[tokio::test]
async fn set_local_does_not_leak() {
    let px = pgmux_with_pool(2);
    let url = app_url(&px);
    let steer = Steering::new(&url).await;
    let client = connect(&url).await;
    let defaults = [
        ("statement_timeout", DEFAULT_STATEMENT_TIMEOUT),
        ("application_name", ""),
    ];

    for i in [0, 1] {
        steer.free(i).await;
        let inside = simple(
            &client,
            "BEGIN; SET LOCAL statement_timeout = '555ms'; SHOW statement_timeout",
        )
        .await;
        assert_eq!(inside, ["555ms"]);
        client
            .batch_execute("SET LOCAL application_name = 'pgmux_local'")
            .await
            .unwrap();
        let (app, pid) = setting_and_pid(&client, "application_name").await;
        assert_eq!((app.as_str(), pid), ("pgmux_local", steer.pids[i]));
        client.batch_execute("COMMIT").await.unwrap();
        steer.retake(i, &defaults).await;
    }
    steer
        .expect_on_both(
            &client,
            "statement_timeout",
            DEFAULT_STATEMENT_TIMEOUT,
            &defaults,
        )
        .await;
    steer
        .expect_on_both(&client, "application_name", "", &defaults)
        .await;
}

// ------------------------------------------------------------------- pinning

/// Checks that a pinned client stays on its server connection while another client
/// runs transactions: the other client must get the other connection (the pinned one
/// is never free), and the pinned client always its own.
struct PinCheck {
    other: Client,
    pinned_pid: i32,
}

/// Rounds of transactions each pinning test runs.
const ROUNDS: usize = 5;

impl PinCheck {
    async fn new(url: &str, pinned: &Client) -> PinCheck {
        PinCheck {
            other: connect(url).await,
            pinned_pid: pid(pinned).await,
        }
    }

    async fn round(&self, pinned: &Client, round: usize) {
        self.other.batch_execute("BEGIN").await.unwrap();
        assert_ne!(
            pid(&self.other).await,
            self.pinned_pid,
            "round {round}: another client got the pinned client's server connection"
        );
        assert_eq!(
            pid(pinned).await,
            self.pinned_pid,
            "round {round}: the pinned client moved"
        );
        self.other.batch_execute("COMMIT").await.unwrap();
    }
}

/// tokio-postgres with its connection polled here, so that notifications reach the
/// test (the harness's [`connect`] drops them).
async fn connect_listening(url: &str) -> (Client, mpsc::UnboundedReceiver<String>) {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    (client, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_pins_the_client_and_notifications_arrive() {
    let px = pgmux_with_pool(2);
    let url = app_url(&px);
    let competitors = Competitors::start(&url, 2, &[]).await;
    let (listener, mut notes) = connect_listening(&url).await;
    let notifier = connect(&url).await;

    listener
        .batch_execute("LISTEN pgmux_pin_listen")
        .await
        .unwrap();
    let pin = PinCheck::new(&url, &listener).await;
    for round in 0..ROUNDS {
        pin.round(&listener, round).await;
        let payload = format!("hello {round}");
        notifier
            .execute("select pg_notify('pgmux_pin_listen', $1)", &[&payload])
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(30), notes.recv())
            .await
            .expect("no notification within 30 s")
            .expect("the listener's connection ended");
        assert_eq!(got, payload);
    }
    competitors.stop().await;
}

/// asyncpg asks for `client_encoding='utf-8'` (quotes included) and checks that the
/// server reports `UTF8`, the encoding's Postgres name, as Postgres itself does.
#[test]
fn a_startup_client_encoding_is_reported_by_its_postgres_name() {
    use std::io::Write as _;
    let px = start_pgmux(&pgmux_config(
        shared_primary(),
        "auth_method = \"trust\"",
        "",
    ));
    let mut tcp = support::wire::tcp(px.port);
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    tcp.write_all(&support::wire::startup_message(&[
        ("user", APP_USER),
        ("database", APP_DB),
        ("client_encoding", "'utf-8'"),
    ]))
    .unwrap();
    let mut reported = None;
    loop {
        let m = support::wire::read_message(&mut tcp).expect("a login reply");
        match m.tag {
            b'S' => {
                let mut parts = m.body.split(|b| *b == 0);
                let name = parts.next().unwrap_or_default();
                if name == b"client_encoding" {
                    let value = parts.next().unwrap_or_default();
                    reported = Some(String::from_utf8_lossy(value).into_owned());
                }
            }
            b'E' => panic!("login refused: {:?}", m.sqlstate()),
            b'Z' => break,
            _ => {}
        }
    }
    assert_eq!(reported.as_deref(), Some("UTF8"));
}

/// The process id a notification names, as drivers compare it with BackendKeyData:
/// the sending client's, for its own NOTIFY and for another client's, in either pool
/// mode.
#[test]
fn notifications_name_the_process_id_pgmux_gave_the_sending_client() {
    for mode in ["transaction", "session"] {
        let px = start_pgmux(&pgmux_config(
            shared_primary(),
            "auth_method = \"trust\"",
            &format!("pool_size = 2\npool_mode = \"{mode}\""),
        ));
        let mut listener = support::wire::RawClient::login_trust(px.port, APP_USER, APP_DB);
        let mut other = support::wire::RawClient::login_trust(px.port, APP_USER, APP_DB);
        listener
            .stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        listener.query("LISTEN pgmux_own_pid").unwrap();

        listener.send_query("NOTIFY pgmux_own_pid, 'mine'");
        let replies = listener.read_until_ready();
        let own = notification_pid(&replies).expect("the own notification arrives");
        assert_eq!(
            own, listener.pid,
            "{mode} mode: the client's own notification"
        );

        other.query("NOTIFY pgmux_own_pid, 'theirs'").unwrap();
        let theirs = support::wire::read_message(&mut listener.stream)
            .expect("another client's notification arrives");
        assert_eq!(theirs.tag, b'A');
        let theirs = notification_pid(std::slice::from_ref(&theirs)).unwrap();
        assert_eq!(
            theirs, other.pid,
            "{mode} mode: another client's notification"
        );
    }
}

/// The sender's process id of the first NotificationResponse among `replies`.
fn notification_pid(replies: &[support::wire::Message]) -> Option<i32> {
    let m = replies.iter().find(|m| m.tag == b'A')?;
    Some(i32::from_be_bytes(m.body[..4].try_into().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_advisory_lock_pins_the_client_and_stays_held() {
    const KEY: i64 = 7_310_001;
    let pg = shared_primary();
    let px = pgmux_with_pool(2);
    let url = app_url(&px);
    let competitors = Competitors::start(&url, 2, &[]).await;
    let locker = connect(&url).await;
    let other = connect(&url).await;

    locker
        .execute("select pg_advisory_lock($1)", &[&KEY])
        .await
        .unwrap();
    let pin = PinCheck::new(&url, &locker).await;
    for round in 0..ROUNDS {
        pin.round(&locker, round).await;
        let holder = pg.sql(
            APP_DB,
            &format!(
                "select pid from pg_locks where locktype = 'advisory' and granted \
                 and ((classid::bigint << 32) | objid::bigint) = {KEY}"
            ),
        );
        assert_eq!(holder, pin.pinned_pid.to_string(), "who holds the lock");
        let free: bool = other
            .query_one("select pg_try_advisory_xact_lock($1)", &[&KEY])
            .await
            .unwrap()
            .get(0);
        assert!(!free, "another client got the lock the pinned client holds");
    }
    let unlocked: bool = locker
        .query_one("select pg_advisory_unlock($1)", &[&KEY])
        .await
        .unwrap()
        .get(0);
    assert!(unlocked, "the pinned client no longer held its lock");
    competitors.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_table_pins_the_client_and_survives_between_transactions() {
    temp_table_survives("CREATE TEMP TABLE pgmux_pin_tmp (x int)", "pgmux_pin_tmp").await;
}

/// A table made in the `pg_temp` schema is a temporary table too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_created_in_pg_temp_pins_the_client_like_a_temp_table() {
    temp_table_survives(
        "CREATE TABLE pg_temp.pgmux_pin_tmp_schema (x int)",
        "pg_temp.pgmux_pin_tmp_schema",
    )
    .await;
}

async fn temp_table_survives(create: &str, table: &str) {
    let px = pgmux_with_pool(2);
    let url = app_url(&px);
    let competitors = Competitors::start(&url, 2, &[]).await;
    let client = connect(&url).await;

    client.batch_execute(create).await.unwrap();
    let pin = PinCheck::new(&url, &client).await;
    for round in 0..ROUNDS {
        pin.round(&client, round).await;
        let x = round as i32;
        client
            .execute(&format!("insert into {table} values ($1)"), &[&x])
            .await
            .unwrap();
        let n: i64 = client
            .query_one(&format!("select count(*) from {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, i64::from(x) + 1);
    }
    competitors.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_hold_cursor_pins_the_client_and_keeps_its_position() {
    let px = pgmux_with_pool(2);
    let url = app_url(&px);
    let competitors = Competitors::start(&url, 2, &[]).await;
    let client = connect(&url).await;

    client
        .batch_execute(
            "BEGIN; DECLARE pgmux_pin_cur CURSOR WITH HOLD FOR \
             SELECT g FROM generate_series(1, 100) g; COMMIT",
        )
        .await
        .unwrap();
    let pin = PinCheck::new(&url, &client).await;
    for round in 0..ROUNDS {
        pin.round(&client, round).await;
        let got = simple(&client, "FETCH 2 FROM pgmux_pin_cur").await;
        let first = round * 2 + 1;
        assert_eq!(got, [first.to_string(), (first + 1).to_string()]);
    }
    competitors.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_pins_the_client_and_execute_works() {
    let px = pgmux_with_pool(2);
    let url = app_url(&px);
    let competitors = Competitors::start(&url, 2, &[]).await;
    let client = connect(&url).await;

    client
        .batch_execute("PREPARE pgmux_pin_p (int) AS SELECT $1 + 100")
        .await
        .unwrap();
    let pin = PinCheck::new(&url, &client).await;
    for round in 0..ROUNDS {
        pin.round(&client, round).await;
        let got = simple(&client, &format!("EXECUTE pgmux_pin_p({round})")).await;
        assert_eq!(got, [(round + 100).to_string()]);
    }
    client
        .batch_execute("DEALLOCATE pgmux_pin_p")
        .await
        .unwrap();
    competitors.stop().await;
}

#[tokio::test]
async fn a_pinned_clients_server_connection_is_reset_when_it_leaves() {
    const KEY: i64 = 7_310_002;
    let pg = shared_primary();
    let px = pgmux_with_pool(1);
    let url = app_url(&px);
    let lock_held = format!(
        "select count(*) from pg_locks where locktype = 'advisory' \
         and ((classid::bigint << 32) | objid::bigint) = {KEY}"
    );
    let temp_table_exists = "select count(*) from pg_class where relname = 'pgmux_reset_tmp'";

    let pinned = connect(&url).await;
    pinned
        .batch_execute(
            "LISTEN pgmux_reset_chan; \
             CREATE TEMP TABLE pgmux_reset_tmp (x int); \
             PREPARE pgmux_reset_p AS SELECT 1",
        )
        .await
        .unwrap();
    pinned
        .execute("select pg_advisory_lock($1)", &[&KEY])
        .await
        .unwrap();
    pinned
        .batch_execute("BEGIN; DECLARE pgmux_reset_cur CURSOR WITH HOLD FOR SELECT 1; COMMIT")
        .await
        .unwrap();
    let pinned_pid = pid(&pinned).await;
    assert_eq!(pg.sql(APP_DB, &lock_held), "1");
    assert_eq!(pg.sql(APP_DB, temp_table_exists), "1");
    drop(pinned);

    let lock_query = lock_held.clone();
    let (lock_gone, table_gone) = blocking(move || {
        (
            poll_until(CLEANUP_DEADLINE, || pg.sql(APP_DB, &lock_query) == "0"),
            poll_until(CLEANUP_DEADLINE, || {
                pg.sql(APP_DB, temp_table_exists) == "0"
            }),
        )
    })
    .await;
    assert!(
        lock_gone,
        "the advisory lock is still held after the client left"
    );
    assert!(
        table_gone,
        "the temporary table still exists after the client left"
    );
    let next = connect(&url).await;
    assert_eq!(
        pid(&next).await,
        pinned_pid,
        "the server connection was not reused (pool_size = 1)"
    );
    for (what, sql) in [
        ("LISTEN", "select count(*) from pg_listening_channels()"),
        (
            "the WITH HOLD cursor",
            "select count(*) from pg_cursors where name = 'pgmux_reset_cur'",
        ),
        (
            "the SQL prepared statement",
            "select count(*) from pg_prepared_statements where name = 'pgmux_reset_p'",
        ),
        (
            "the temporary table",
            "select count(*) from pg_class where relname = 'pgmux_reset_tmp'",
        ),
        ("the advisory lock", lock_held.as_str()),
    ] {
        assert_eq!(simple(&next, sql).await, ["0"], "{what} survived");
    }
}

/// Runs blocking `f` (polls that sleep, psql) off the runtime, so that connection
/// tasks — a dropped client's goodbye — keep running meanwhile.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a blocking check panicked")
}

/// `GET /metrics` from pgmux's HTTP endpoint; `None` while it does not answer.
fn fetch_metrics(port: u16) -> Option<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The value of `pgmux_pinned_clients{database="app"}`; 0 before it was ever set.
fn pinned_clients(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("pgmux_pinned_clients{"))
        .filter(|l| l.contains(&format!("database=\"{APP_DB}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .next()
        .unwrap_or(0.0)
}

#[tokio::test]
async fn pinned_clients_gauge_counts_clients_while_they_are_pinned() {
    let metrics_port = support::process::free_port();
    let config = pgmux_config(shared_primary(), "", "pool_size = 2").replace(
        "metrics_listen = \"\"",
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""),
    );
    let px = start_pgmux(&config);
    let url = app_url(&px);
    let gauge_becomes = |want: f64| async move {
        let last = blocking(move || {
            let mut last = None;
            poll_until(Duration::from_secs(30), || {
                last = fetch_metrics(metrics_port).map(|m| pinned_clients(&m));
                last == Some(want)
            });
            last
        })
        .await;
        assert_eq!(last, Some(want), "pgmux_pinned_clients");
    };

    let plain = connect(&url).await;
    simple(&plain, "SELECT 1").await;
    gauge_becomes(0.0).await;

    let listener = connect(&url).await;
    listener
        .batch_execute("LISTEN pgmux_gauge_chan")
        .await
        .unwrap();
    gauge_becomes(1.0).await;
    let temp = connect(&url).await;
    temp.batch_execute("CREATE TEMP TABLE pgmux_gauge_tmp (x int)")
        .await
        .unwrap();
    gauge_becomes(2.0).await;

    drop(listener);
    gauge_becomes(1.0).await;
    drop(temp);
    gauge_becomes(0.0).await;
    simple(&plain, "SELECT 1").await;
}

// ------------------------------------------------------------------ identity

/// A superuser pgmux logs in as, and roles to take: `SET SESSION AUTHORIZATION` needs
/// a superuser login. Created once on the shared primary.
fn identity_roles() -> Pgmux {
    let pg = shared_primary();
    pg.sql(
        "postgres",
        "DO $$ BEGIN
           CREATE ROLE pgmux_su LOGIN SUPERUSER PASSWORD 'su-secret';
           CREATE ROLE pgmux_low NOLOGIN;
           CREATE ROLE pgmux_sa NOLOGIN;
         EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    );
    pg.sql("postgres", "GRANT pgmux_low TO pgmux_sa");
    let config = format!(
        "{}\n[[users]]\nname = \"pgmux_su\"\npassword = \"su-secret\"\n",
        pgmux_config(pg, "", "pool_size = 1")
    );
    start_pgmux(&config)
}

async fn who(client: &Client) -> (String, String) {
    let row = client
        .query_one("select current_user::text, session_user::text", &[])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Who a client is follows it onto each server connection, and never reaches another
/// client: session authorization is taken before role (it drops a SET ROLE), `RESET
/// ALL` leaves both (as in Postgres), `DISCARD ALL` clears both. With one server
/// connection, each statement below follows the other client's.
#[tokio::test]
async fn set_role_and_session_authorization_follow_their_client_in_order() {
    let px = identity_roles();
    let url = px.url("pgmux_su", "su-secret", APP_DB);
    let (a, b) = (connect(&url).await, connect(&url).await);
    let su = || ("pgmux_su".to_string(), "pgmux_su".to_string());
    let pair = |c: &str, s: &str| (c.to_string(), s.to_string());

    b.batch_execute("SET ROLE pgmux_low").await.unwrap();
    a.batch_execute("SET SESSION AUTHORIZATION pgmux_sa")
        .await
        .unwrap();
    assert_eq!(who(&b).await, pair("pgmux_low", "pgmux_su"));
    assert_eq!(who(&a).await, pair("pgmux_sa", "pgmux_sa"));

    a.batch_execute("SET ROLE pgmux_low").await.unwrap();
    assert_eq!(who(&b).await, pair("pgmux_low", "pgmux_su"));
    assert_eq!(who(&a).await, pair("pgmux_low", "pgmux_sa"));

    // RESET ALL leaves role and session authorization alone.
    b.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(who(&a).await, pair("pgmux_low", "pgmux_sa"));
    assert_eq!(who(&b).await, pair("pgmux_low", "pgmux_su"));

    // DISCARD ALL clears both.
    a.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(who(&b).await, pair("pgmux_low", "pgmux_su"));
    assert_eq!(who(&a).await, su());
    b.batch_execute("RESET ROLE").await.unwrap();
    assert_eq!(who(&a).await, su());
    assert_eq!(who(&b).await, su());

    // A fresh client is nobody but its login.
    let c = connect(&url).await;
    assert_eq!(who(&c).await, su());
}

// ------------------------------------------------------------------ chained transactions

/// `COMMIT AND CHAIN` commits what came before it; `ROLLBACK AND CHAIN` undoes it:
/// both keep the transaction going, and the client's settings follow what the server
/// kept.
#[tokio::test]
async fn settings_around_commit_and_rollback_and_chain_follow_the_server() {
    let px = pgmux_with_pool(2);
    let url = app_url(&px);
    let steer = Steering::new(&url).await;
    let client = connect(&url).await;
    let defaults = [
        ("work_mem", DEFAULT_WORK_MEM),
        ("statement_timeout", DEFAULT_STATEMENT_TIMEOUT),
    ];

    steer.free(0).await;
    for sql in [
        "BEGIN",
        "SET work_mem = '5656kB'",
        "COMMIT AND CHAIN",
        "SET statement_timeout = '3434ms'",
        "ROLLBACK AND CHAIN",
        "SHOW work_mem",
        "COMMIT",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    steer.retake(0, &defaults).await;
    steer
        .expect_on_both(&client, "work_mem", "5656kB", &defaults)
        .await;
    steer
        .expect_on_both(
            &client,
            "statement_timeout",
            DEFAULT_STATEMENT_TIMEOUT,
            &defaults,
        )
        .await;

    steer.free(1).await;
    for sql in [
        "BEGIN",
        "SET work_mem = '1111kB'",
        "ROLLBACK AND CHAIN",
        "SET statement_timeout = '2222ms'",
        "COMMIT",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    steer.retake(1, &defaults).await;
    steer
        .expect_on_both(&client, "work_mem", "5656kB", &defaults)
        .await;
    steer
        .expect_on_both(&client, "statement_timeout", "2222ms", &defaults)
        .await;
}

/// Statements after a COMMIT in one Query: which changes stuck cannot be told from
/// the replies, so the client keeps its server connection, which knows.
#[tokio::test]
async fn a_setting_committed_mid_query_pins_rather_than_being_lost() {
    let px = pgmux_with_pool(2);
    let url = app_url(&px);
    let client = connect(&url).await;
    client
        .batch_execute("BEGIN; SET work_mem = '4545kB'; COMMIT; SELECT 1")
        .await
        .unwrap();
    let pin = PinCheck::new(&url, &client).await;
    for round in 0..ROUNDS {
        pin.round(&client, round).await;
        let (got, _) = setting_and_pid(&client, "work_mem").await;
        assert_eq!(got, "4545kB", "round {round}");
        let (other, _) = setting_and_pid(&pin.other, "work_mem").await;
        assert_eq!(other, DEFAULT_WORK_MEM, "round {round}");
    }
}
