//! Settings a client logs in with: startup parameters and `options=-c name=value`
//! (CONTRACT.md section 3). They apply to that client on every server connection it
//! gets and to nobody else, and a set Postgres would refuse at login is refused at
//! login, with Postgres' SQLSTATE and words.

mod support;

use support::session::*;
use support::*;
use tokio_postgres::error::{DbError, SqlState};
use tokio_postgres::{Client, NoTls};

/// The first column of the first row of `sql`, over the simple protocol.
async fn simple_value(client: &Client, sql: &str) -> String {
    simple(client, sql)
        .await
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("`{sql}` returned no row"))
}

/// The FATAL error `err` carries, after checking its code.
#[track_caller]
fn assert_fatal<'e>(err: &'e tokio_postgres::Error, code: &SqlState) -> &'e DbError {
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("expected an ErrorResponse, got: {err:?}"));
    assert_eq!((db.severity(), db.code()), ("FATAL", code), "{db:?}");
    db
}

/// `app_url` with `options` (URL-encoded) in its query.
fn url_with_options(px: &Pgmux, options: &str) -> String {
    format!("{}?options={options}", app_url(px))
}

#[tokio::test]
async fn a_setting_postgres_refuses_at_login_is_refused_at_login_with_its_sqlstate() {
    // One server connection: a refused login must leave it clean and free.
    let px = pgmux_with_pool(1);
    let cases = [
        (
            "-c%20work_mem%3Dbad",
            SqlState::INVALID_PARAMETER_VALUE,
            "work_mem",
        ),
        (
            "-c%20no_such_setting%3D1",
            SqlState::UNDEFINED_OBJECT,
            "no_such_setting",
        ),
        // A good setting before the bad one: neither stays on the server.
        (
            "-c%20statement_timeout%3D4321%20-c%20work_mem%3Dbad",
            SqlState::INVALID_PARAMETER_VALUE,
            "work_mem",
        ),
    ];
    for _ in 0..2 {
        for (options, code, named) in &cases {
            let err = try_connect(&url_with_options(&px, options))
                .await
                .expect_err("Postgres refuses this login, and so does pgmux");
            let db = assert_fatal(&err, code);
            assert!(db.message().contains(named), "{db:?}");
        }
    }

    // The server connection the settings were tried on serves others, untouched.
    let other = connect(&app_url(&px)).await;
    assert_eq!(
        simple_value(&other, "show work_mem").await,
        DEFAULT_WORK_MEM
    );
    assert_eq!(
        simple_value(&other, "show statement_timeout").await,
        DEFAULT_STATEMENT_TIMEOUT
    );
    drop(other);

    // Good settings, first with one application_name then another, log in and apply.
    for name in ["first", "second"] {
        let url = format!(
            "{}&application_name={name}",
            url_with_options(&px, "-c%20work_mem%3D7MB")
        );
        let client = connect(&url).await;
        assert_eq!(simple_value(&client, "show work_mem").await, "7MB");
        assert_eq!(simple_value(&client, "show application_name").await, name);
    }
    let plain = connect(&app_url(&px)).await;
    assert_eq!(
        simple_value(&plain, "show work_mem").await,
        DEFAULT_WORK_MEM
    );
}

/// An `options` string Postgres cannot read is refused as Postgres refuses it (42601
/// after the login), not dropped in silence.
#[tokio::test]
async fn an_options_string_postgres_cannot_read_is_refused_with_42601() {
    let px = pgmux_with_pool(1);
    for (options, message) in [
        ("-c", "invalid command-line argument for server process: -c"),
        ("-c%20work_mem", "-c work_mem requires a value"),
        (
            "work_mem%3D7MB",
            "invalid command-line argument for server process: work_mem=7MB",
        ),
    ] {
        let err = try_connect(&url_with_options(&px, options))
            .await
            .expect_err("Postgres refuses this login, and so does pgmux");
        let db = assert_fatal(&err, &SqlState::SYNTAX_ERROR);
        assert_eq!(db.message(), message);
    }
    let client = connect(&url_with_options(&px, "-c%20work_mem%3D7MB")).await;
    assert_eq!(simple_value(&client, "show work_mem").await, "7MB");
}

#[tokio::test]
async fn a_setting_postgres_takes_only_at_connection_start_does_not_refuse_the_login() {
    // Postgres lets this login in; a pooled connection started long before cannot take
    // the setting, and the client keeps working, told so.
    let px = pgmux_with_pool(1);
    let client = connect(&url_with_options(&px, "-c%20ignore_system_indexes%3Don")).await;
    assert_eq!(simple_value(&client, "select 1").await, "1");
}

#[tokio::test]
async fn a_startup_packet_over_4_kib_with_options_is_accepted_and_the_options_apply() {
    let px = pgmux_with_pool(2);
    // A search_path of 400 schemas that do not exist, then public (where table t is).
    let mut schemas: Vec<String> = (0..400).map(|i| format!("schema_{i:04}")).collect();
    schemas.push("public".into());
    let search_path = schemas.join(",");
    let options = format!("-c search_path={search_path} -c statement_timeout=4321");
    assert!(options.len() > 4096, "{} bytes", options.len());

    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(px.port)
        .user(APP_USER)
        .password(APP_PASSWORD)
        .dbname(APP_DB)
        .options(&options)
        .connect(NoTls)
        .await
        .expect("a startup packet over 4 KiB logs in");
    tokio::spawn(connection);

    assert_eq!(
        simple_value(&client, "show statement_timeout").await,
        "4321ms"
    );
    assert_eq!(simple_value(&client, "show search_path").await, search_path);
    // Extended protocol, and the list is a list: t is found in its last schema.
    let row = client
        .query_one(
            "select current_setting('statement_timeout'), (select count(*) from t) >= 0",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "4321ms");
    assert!(row.get::<_, bool>(1));
}

#[tokio::test]
async fn options_in_the_connection_url_apply_to_that_client_only() {
    let pg = shared_primary();
    pg.sql(
        APP_DB,
        &format!(
            "drop schema if exists url_options cascade; \
             create schema url_options authorization {APP_USER}; \
             create table url_options.only_here (id int); \
             alter table url_options.only_here owner to {APP_USER}"
        ),
    );
    // One server connection shared with a client without options: the settings are
    // applied for this client each time, and never leak to the other.
    let px = pgmux_with_pool(1);
    let url = format!(
        "{}?options=-c%20statement_timeout%3D1234%20-c%20application_name%3Dfrom_options\
         %20-c%20search_path%3Durl_options%2Cpublic",
        app_url(&px)
    );
    let client = connect(&url).await;
    let other = connect(&app_url(&px)).await;
    for _ in 0..2 {
        assert_eq!(
            simple_value(&client, "show statement_timeout").await,
            "1234ms"
        );
        assert_eq!(
            simple_value(&client, "select current_setting('application_name')").await,
            "from_options"
        );
        assert_eq!(
            simple_value(&client, "show search_path").await,
            "url_options,public"
        );
        let row = client
            .query_one(
                "select (select count(*) from only_here), (select count(*) from t) >= 0",
                &[],
            )
            .await
            .expect("both schemas of the search_path are searched");
        assert_eq!(row.get::<_, i64>(0), 0);

        assert_eq!(simple_value(&other, "show statement_timeout").await, "0");
        assert_eq!(
            simple_value(&other, "show search_path").await,
            "\"$user\", public"
        );
    }
}

#[tokio::test]
async fn what_one_user_may_set_at_login_another_is_still_refused() {
    shared_primary().sql(
        APP_DB,
        &format!("grant set on parameter log_min_messages to {MD5_USER}"),
    );
    let px = pgmux_with_pool(1);
    let options = "-c%20log_min_messages%3Ddebug1";
    let allowed = connect(&format!(
        "{}?options={options}",
        px.url(MD5_USER, MD5_PASSWORD, APP_DB)
    ))
    .await;
    assert_eq!(
        simple_value(&allowed, "show log_min_messages").await,
        "debug1"
    );

    let err = try_connect(&url_with_options(&px, options))
        .await
        .expect_err("a user without the grant cannot set it");
    assert_fatal(&err, &SqlState::INSUFFICIENT_PRIVILEGE);
    assert_eq!(
        simple_value(&allowed, "show log_min_messages").await,
        "debug1"
    );
}

/// Postgres applies `options` first and the other startup parameters after them,
/// wherever `options` stands in the packet. Go's lib/pq sends its parameters in a
/// random order, `client_encoding=UTF8` among them, and its users' `options` must not
/// win over it one login in two.
#[test]
fn startup_parameters_win_over_options_wherever_options_stand() {
    let px = start_pgmux(&pgmux_config(
        shared_primary(),
        "auth_method = \"trust\"",
        "pool_size = 1",
    ));
    let params = [
        ("user", APP_USER),
        ("database", APP_DB),
        ("work_mem", "5MB"),
        ("client_encoding", "UTF8"),
        (
            "options",
            "-c work_mem=3MB -c client_encoding=SQL_ASCII -c statement_timeout=4321",
        ),
    ];
    let (mut client, said) = wire::RawClient::login_trust_with(px.port, &params);
    assert_eq!(wire::parameter_statuses(&said, "client_encoding"), ["UTF8"]);
    for (setting, value) in [
        ("work_mem", "5MB"),
        ("client_encoding", "UTF8"),
        ("statement_timeout", "4321ms"),
    ] {
        assert_eq!(
            client.query(&format!("show {setting}")),
            Ok(vec![value.to_string()]),
            "{setting}"
        );
    }
}
