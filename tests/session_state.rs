//! Session state in transaction mode (CONTRACT.md section 3): a client's `SET`s,
//! `set_config` calls and startup settings follow it onto every server connection it
//! gets, and never reach another client; rolled-back and `SET LOCAL` changes do not
//! stick; `RESET`, `RESET ALL` and `DISCARD ALL` restore the defaults; who the client
//! is (`SET ROLE`, `SET SESSION AUTHORIZATION`) follows it in order. Pinning is in
//! `session_pinning.rs`.
//!
//! Most tests steer clients onto a chosen server connection of a two-connection pool
//! (see `support::session::Steering`), so "on every server connection" is checked
//! deterministically.

mod support;

use std::time::Duration;

use support::session::*;
use support::*;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

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
    assert_eq!(
        wire::parameter_statuses(&said, "application_name"),
        ["caf???x"]
    );
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
    pinned_then_cleaned(&url, client).await;
}

/// A DO block runs out of pgmux's sight: one that changes a session setting pins its
/// client, whose server connection is cleaned before anybody else gets it.
#[tokio::test]
async fn a_do_block_that_changes_a_setting_pins_and_is_cleaned_after() {
    let px = pgmux_with_pool(2);
    let url = app_url(&px);
    let client = connect(&url).await;
    client
        .batch_execute("DO $$ BEGIN IF true THEN SET statement_timeout = '5432ms'; END IF; END $$")
        .await
        .unwrap();
    pinned_then_cleaned(&url, client).await;
}

/// `client` set statement_timeout to 5432ms: it keeps it on the one server connection
/// it is pinned to, which shows the default to new clients once it has left.
async fn pinned_then_cleaned(url: &str, client: tokio_postgres::Client) {
    let pin = PinCheck::new(url, &client).await;
    for round in 0..ROUNDS {
        pin.round(&client, round).await;
        let (got, _) = setting_and_pid(&client, "statement_timeout").await;
        assert_eq!(got, "5432ms");
    }
    let pinned_pid = pin.pinned_pid;
    drop(pin);
    drop(client);

    // Both connections, the pinned one included, show the default to new clients.
    let (a, b) = (&connect(url).await, &connect(url).await);
    let came_back = poll_until_async(CLEANUP_DEADLINE, || async move {
        a.batch_execute("BEGIN").await.unwrap();
        b.batch_execute("BEGIN").await.unwrap();
        let seen = [
            setting_and_pid(a, "statement_timeout").await,
            setting_and_pid(b, "statement_timeout").await,
        ];
        a.batch_execute("COMMIT").await.unwrap();
        b.batch_execute("COMMIT").await.unwrap();
        for (got, _) in &seen {
            assert_eq!(got, DEFAULT_STATEMENT_TIMEOUT);
        }
        seen.iter().any(|(_, pid)| *pid == pinned_pid)
    })
    .await;
    assert!(came_back, "the pinned connection never came back");
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

/// A transaction may end between two statements of one Query or one extended-protocol
/// unit: each change counts by where its statement stands. Before a COMMIT it stays;
/// after it, it belongs to the next transaction, which an error rolls back; a COMMIT
/// in a failed transaction rolls back what came before it, and what follows it runs
/// in a transaction of its own.
#[tokio::test]
async fn settings_follow_transactions_that_end_in_mid_query() {
    let px = pgmux_with_pool(2);
    let url = app_url(&px);
    let steer = Steering::new(&url).await;
    let client = connect(&url).await;
    let defaults = [
        ("work_mem", DEFAULT_WORK_MEM),
        ("statement_timeout", DEFAULT_STATEMENT_TIMEOUT),
    ];

    let mixed = "BEGIN; SET work_mem = '4545kB'; COMMIT; \
                 SET statement_timeout = '4646ms'; SELECT 1 / 0";
    let failed = steer.run_on(0, &client, mixed, &defaults).await;
    assert!(failed.is_err(), "division by zero");
    steer
        .expect_on_both(&client, "work_mem", "4545kB", &defaults)
        .await;
    steer
        .expect_on_both(
            &client,
            "statement_timeout",
            DEFAULT_STATEMENT_TIMEOUT,
            &defaults,
        )
        .await;

    // A ROLLBACK in a Query's implicit transaction undoes what came before it there.
    let rolled_back = "SET work_mem = '5151kB'; ROLLBACK; SET statement_timeout = '5252ms'";
    steer
        .run_on(1, &client, rolled_back, &defaults)
        .await
        .unwrap();
    steer
        .expect_on_both(&client, "work_mem", "4545kB", &defaults)
        .await;
    steer
        .expect_on_both(&client, "statement_timeout", "5252ms", &defaults)
        .await;
    steer
        .run_on(1, &client, "RESET statement_timeout", &defaults)
        .await
        .unwrap();

    // COMMIT of a failed transaction, then a SET, in one Query.
    steer.free(1).await;
    client
        .batch_execute("BEGIN; SET statement_timeout = '4949ms'")
        .await
        .unwrap();
    client
        .batch_execute("SELECT 1 / 0")
        .await
        .expect_err("division by zero");
    client
        .batch_execute("COMMIT; SET work_mem = '4848kB'")
        .await
        .unwrap();
    steer.retake(1, &defaults).await;
    steer
        .expect_on_both(&client, "work_mem", "4848kB", &defaults)
        .await;
    steer
        .expect_on_both(
            &client,
            "statement_timeout",
            DEFAULT_STATEMENT_TIMEOUT,
            &defaults,
        )
        .await;
}

/// The same over the extended protocol, in one unit: a prepared COMMIT of a failed
/// transaction, then a SET. The SET sticks for its client, on the connection it
/// gets after another client's turn, and that other client never sees it.
#[test]
fn a_set_after_the_commit_of_a_failed_transaction_in_one_unit_sticks() {
    use support::extended::{cstr, message, Wire};
    let px = pgmux_with_pool(1);
    let mut w = Wire::connect(px.port);
    let mut other = Wire::connect(px.port);
    w.simple("BEGIN");
    w.simple("SET statement_timeout = '4949ms'");
    let failed = w.pipeline_simple(&["SELECT 1 / 0"]);
    assert_eq!(failed[0].status, 'E');
    let mut out = Vec::new();
    for sql in ["COMMIT", "SET work_mem = '4747kB'"] {
        let mut body = Vec::new();
        cstr(&mut body, "");
        cstr(&mut body, sql);
        body.extend_from_slice(&0i16.to_be_bytes());
        message(&mut out, b'P', &body);
        message(&mut out, b'B', &[0, 0, 0, 0, 0, 0, 0, 0]);
        message(&mut out, b'E', &[0, 0, 0, 0, 0]);
    }
    message(&mut out, b'S', &[]);
    w.send(&out);
    let reply = w.until_ready();
    assert_eq!((reply.error, reply.status), (None, 'I'));
    for _ in 0..3 {
        assert_eq!(other.simple("SHOW work_mem"), [DEFAULT_WORK_MEM]);
        assert_eq!(w.simple("SHOW work_mem"), ["4747kB"]);
        let timeout = w.simple("SHOW statement_timeout");
        assert_eq!(timeout, [DEFAULT_STATEMENT_TIMEOUT]);
    }
}
