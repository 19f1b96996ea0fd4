//! Who may log in, and over what: client authentication (SCRAM-SHA-256, md5, trust),
//! the login errors of CONTRACT.md sections 3 and 4, GSSENCRequest, TLS towards
//! clients (`[tls]`), TLS towards Postgres (`[upstream_tls]`), and pgmux's own
//! login upstream with SCRAM and md5.

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use support::wire::{self, read_byte, read_message};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use std::io::Write;

// ------------------------------------------------------------------ helpers

/// A CA and a server certificate it signed, valid for `localhost` and 127.0.0.1,
/// as PEM files in `dir`.
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    cert_pem: String,
    key_pem: String,
}

fn make_certs(dir: &Path) -> Certs {
    let ca_key = KeyPair::generate().expect("generate the CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pgmux test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("self-sign the CA");

    let key = KeyPair::generate().expect("generate the server key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca).expect("sign the server cert");

    let certs = Certs {
        ca: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    std::fs::write(&certs.ca, ca.pem()).expect("write ca.crt");
    std::fs::write(&certs.cert, &certs.cert_pem).expect("write server.crt");
    std::fs::write(&certs.key, &certs.key_pem).expect("write server.key");
    certs
}

/// `[tls]` with `mode` and the files of `certs`, to end `extra_proxy` with.
fn tls_section(mode: &str, certs: &Certs) -> String {
    format!(
        "\n[tls]\nmode = \"{mode}\"\ncert = {:?}\nkey = {:?}\n",
        certs.cert.display().to_string(),
        certs.key.display().to_string()
    )
}

/// A libpq connection string for `user` on pgmux with extra `options`.
fn conninfo(px: &Pgmux, user: &str, options: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} dbname={APP_DB} {options}",
        px.port
    )
}

/// Runs `\conninfo` through psql with `conninfo`; (success, stdout + stderr).
fn psql_conninfo(conninfo: &str, password: &str) -> (bool, String) {
    let out = psql(
        &["-d", conninfo, "-c", "\\conninfo"],
        &[("PGPASSWORD", password)],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The code of the first Authentication request pgmux sends after a startup
/// message for `user` (0 ok, 5 md5, 10 SASL) and that message's body.
fn first_auth_request(px: &Pgmux, user: &str) -> (i32, Vec<u8>) {
    let mut tcp = wire::tcp(px.port);
    tcp.write_all(&wire::startup_message(&[
        ("user", user),
        ("database", APP_DB),
    ]))
    .expect("send the startup message");
    let m = read_message(&mut tcp).expect("read the authentication request");
    let code = m
        .auth_code()
        .unwrap_or_else(|| panic!("expected an Authentication message, got {m:?}"));
    (code, m.body)
}

/// The server's message of a database error (tokio-postgres' Display says only
/// "db error").
fn db_message(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map_or_else(|| err.to_string(), |e| e.message().to_owned())
}

async fn current_user_through(url: &str) -> String {
    let client = connect(url).await;
    client
        .query_one("select current_user::text", &[])
        .await
        .expect("select current_user")
        .get(0)
}

// ------------------------------------------------------------------ client auth

#[tokio::test]
async fn scram_sha_256_is_the_default_client_auth_and_logs_in() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", ""));

    let (code, body) = first_auth_request(&px, APP_USER);
    assert_eq!(code, 10, "pgmux must ask for SASL");
    assert!(
        body.windows(13).any(|w| w == b"SCRAM-SHA-256"),
        "the SASL mechanisms must offer SCRAM-SHA-256: {body:?}"
    );

    let client = connect(&px.url(APP_USER, APP_PASSWORD, APP_DB)).await;
    let row = client
        .query_one("select current_user::text, inet_server_port()", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), APP_USER);
    assert_eq!(row.get::<_, i32>(1), i32::from(pg.port));
}

#[tokio::test]
async fn md5_client_auth_logs_in_with_the_right_password_only() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "auth_method = \"md5\"", ""));

    let (code, body) = first_auth_request(&px, APP_USER);
    assert_eq!(code, 5, "pgmux must ask for an md5 password");
    assert_eq!(body.len(), 8, "the md5 request carries a 4-byte salt");

    assert_eq!(
        current_user_through(&px.url(APP_USER, APP_PASSWORD, APP_DB)).await,
        APP_USER
    );
    assert_eq!(
        current_user_through(&px.url(MD5_USER, MD5_PASSWORD, APP_DB)).await,
        MD5_USER
    );
    let err = try_connect(&px.url(APP_USER, "not-the-password", APP_DB))
        .await
        .expect_err("a wrong md5 password must not log in");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
}

#[tokio::test]
async fn md5_client_auth_does_not_reveal_which_users_exist() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "auth_method = \"md5\"", ""));
    // An unknown user is asked for the same md5 answer as a known one, and
    // refused only after giving it.
    let (code, _) = first_auth_request(&px, "nobody_md5");
    assert_eq!(code, 5, "an unknown user must get the same md5 request");
    let err = try_connect(&px.url("nobody_md5", "whatever", APP_DB))
        .await
        .expect_err("an unknown user must not log in");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
    assert!(px.accepts_tcp(), "pgmux stays up");
}

#[tokio::test]
async fn trust_client_auth_asks_no_password_but_still_knows_its_users() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "auth_method = \"trust\"", ""));

    let (code, _) = first_auth_request(&px, APP_USER);
    assert_eq!(code, 0, "trust answers AuthenticationOk at once");
    // Whatever password the client has, it is never asked for.
    assert_eq!(
        current_user_through(&px.url(APP_USER, "anything", APP_DB)).await,
        APP_USER
    );

    let err = try_connect(&px.url("nobody_trusted", "anything", APP_DB))
        .await
        .expect_err("a user pgmux does not know must not log in, even with trust");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
}

#[tokio::test]
async fn a_users_own_auth_method_overrides_the_proxys() {
    let pg = shared_primary();
    let config = pgmux_config(pg, "", "").replacen(
        &format!("name = \"{MD5_USER}\"\n"),
        &format!("name = \"{MD5_USER}\"\nauth_method = \"trust\"\n"),
        1,
    );
    let px = start_pgmux(&config);

    assert_eq!(
        first_auth_request(&px, MD5_USER).0,
        0,
        "trusted: no password"
    );
    assert_eq!(first_auth_request(&px, APP_USER).0, 10, "the rest: SCRAM");
    assert_eq!(
        current_user_through(&px.url(MD5_USER, "anything", APP_DB)).await,
        MD5_USER
    );
    let err = try_connect(&px.url(APP_USER, "not-the-password", APP_DB))
        .await
        .expect_err("a wrong password must not log in");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
}

/// Passwords are SASLprep'ed as Postgres and libpq do: a configured password
/// with characters NFKC changes logs in whichever form the client types, and a
/// wrong one is still refused.
#[tokio::test]
async fn a_non_ascii_password_is_saslprepped_like_postgres_does() {
    let pg = shared_primary();
    let config = format!(
        "{}\n[[users]]\nname = \"nfkc\"\npassword = \"cha\u{ff6f}s\"\nserver_user = \"{APP_USER}\"\nserver_password = \"{APP_PASSWORD}\"\n",
        pgmux_config(pg, "", "")
    );
    let px = start_pgmux(&config);
    for typed in ["cha\u{ff6f}s", "cha\u{30c3}s"] {
        let url = px.url("nfkc", &urlencode(typed), APP_DB);
        assert_eq!(current_user_through(&url).await, APP_USER, "{typed}");
    }
    let err = try_connect(&px.url("nfkc", "chas", APP_DB))
        .await
        .expect_err("a wrong password is refused");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
}

/// Percent-encodes every byte that is not ASCII alphanumeric, for a URL.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn a_wrong_password_is_refused_with_28p01() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", ""));
    let err = try_connect(&px.url(APP_USER, "not-the-password", APP_DB))
        .await
        .expect_err("a wrong password must not log in");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
    assert!(
        db_message(&err).contains(APP_USER),
        "the message names the user: {err}"
    );
}

#[tokio::test]
async fn an_unknown_user_is_refused_with_28p01() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", ""));
    // The exchange looks like any other SCRAM login, so user names cannot be probed.
    let (code, _) = first_auth_request(&px, "nobody_at_all");
    assert_eq!(code, 10);
    let err = try_connect(&px.url("nobody_at_all", "whatever", APP_DB))
        .await
        .expect_err("an unknown user must not log in");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
}

#[tokio::test]
async fn an_unknown_database_is_refused_with_3d000() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", ""));
    let err = try_connect(&px.url(APP_USER, APP_PASSWORD, "no_such_db"))
        .await
        .expect_err("a database pgmux does not serve must not log in");
    assert_eq!(err.code(), Some(&SqlState::INVALID_CATALOG_NAME), "{err}");
    assert!(
        db_message(&err).contains("no_such_db"),
        "the message names the database: {err}"
    );
}

/// A replication connection (a walsender, with its own command language) cannot be
/// pooled: it is refused with 0A000 before any password is asked for, instead of
/// becoming an ordinary session that fails on IDENTIFY_SYSTEM. `replication=false`
/// is an ordinary session.
#[test]
fn a_replication_connection_is_refused_with_0a000() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", ""));
    for value in ["database", "true", "on", "1"] {
        let mut tcp = wire::tcp(px.port);
        tcp.write_all(&wire::startup_message(&[
            ("user", APP_USER),
            ("database", APP_DB),
            ("replication", value),
        ]))
        .unwrap();
        let m = read_message(&mut tcp).unwrap();
        assert_eq!(
            m.error(),
            ("FATAL".to_string(), "0A000".to_string()),
            "replication={value}: {m:?}"
        );
        assert!(
            m.field(b'M').unwrap().contains("replication"),
            "{:?}",
            m.field(b'M')
        );
    }
    let mut tcp = wire::tcp(px.port);
    tcp.write_all(&wire::startup_message(&[
        ("user", APP_USER),
        ("database", APP_DB),
        ("replication", "false"),
    ]))
    .unwrap();
    let m = read_message(&mut tcp).unwrap();
    assert_eq!(m.auth_code(), Some(10), "an ordinary login goes on: {m:?}");
}

#[tokio::test]
async fn a_gssenc_request_is_answered_n_and_the_login_proceeds_on_the_same_socket() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", ""));

    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", px.port))
        .await
        .unwrap();
    tcp.write_all(&wire::gssenc_request()).await.unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'N');

    // The same socket then carries an ordinary login (SSLRequest, answered N
    // without [tls], then SCRAM) and queries.
    let mut config: tokio_postgres::Config = px
        .url(APP_USER, APP_PASSWORD, APP_DB)
        .parse()
        .expect("a valid URL");
    config.ssl_mode(tokio_postgres::config::SslMode::Prefer);
    let (client, connection) = config.connect_raw(tcp, NoTls).await.unwrap();
    tokio::spawn(connection);
    let row = client.query_one("select 6 * 7", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}

#[test]
fn a_gssenc_request_then_an_ssl_request_are_both_refused_and_startup_goes_on() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", ""));
    let mut tcp = wire::tcp(px.port);
    tcp.write_all(&wire::gssenc_request()).unwrap();
    assert_eq!(read_byte(&mut tcp).unwrap(), b'N');
    tcp.write_all(&wire::ssl_request()).unwrap();
    assert_eq!(
        read_byte(&mut tcp).unwrap(),
        b'N',
        "no [tls]: no TLS either"
    );
    tcp.write_all(&wire::startup_message(&[
        ("user", APP_USER),
        ("database", APP_DB),
    ]))
    .unwrap();
    let m = read_message(&mut tcp).unwrap();
    assert_eq!(m.auth_code(), Some(10), "a SCRAM login starts: {m:?}");
}

// ------------------------------------------------------------------ TLS towards clients

#[test]
fn tls_require_serves_tls_clients_that_verify_the_certificate() {
    let pg = shared_primary();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let px = start_pgmux(&pgmux_config(pg, &tls_section("require", &certs), ""));

    // verify-full: the handshake succeeds only against the certificate pgmux was
    // given, for the address psql dialled.
    let verified = conninfo(
        &px,
        APP_USER,
        &format!("sslmode=verify-full sslrootcert={}", certs.ca.display()),
    );
    let (ok, text) = psql_conninfo(&verified, APP_PASSWORD);
    assert!(ok, "psql with sslmode=verify-full failed:\n{text}");
    assert!(text.contains("SSL connection"), "{text}");

    let out = psql(
        &["-d", &verified, "-At", "-c", "select current_user"],
        &[("PGPASSWORD", APP_PASSWORD)],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), APP_USER);
}

#[tokio::test]
async fn tls_require_refuses_plain_text_clients_with_28000() {
    let pg = shared_primary();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let px = start_pgmux(&pgmux_config(pg, &tls_section("require", &certs), ""));

    let err = try_connect(&px.url(APP_USER, APP_PASSWORD, APP_DB))
        .await
        .expect_err("plain text must be refused when tls.mode = \"require\"");
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{err}"
    );

    let plain = conninfo(&px, APP_USER, "sslmode=disable");
    let (ok, text) = tokio::task::spawn_blocking(move || psql_conninfo(&plain, APP_PASSWORD))
        .await
        .unwrap();
    assert!(!ok, "psql without TLS must be refused:\n{text}");
    assert!(
        text.contains("TLS"),
        "the message says TLS is needed: {text}"
    );
}

#[tokio::test]
async fn tls_prefer_accepts_tls_and_plain_text_clients() {
    let pg = shared_primary();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let px = start_pgmux(&pgmux_config(pg, &tls_section("prefer", &certs), ""));

    assert_eq!(
        current_user_through(&px.url(APP_USER, APP_PASSWORD, APP_DB)).await,
        APP_USER,
        "a plain-text client is served"
    );

    let verified = conninfo(
        &px,
        APP_USER,
        &format!("sslmode=verify-full sslrootcert={}", certs.ca.display()),
    );
    let (ok, text) = tokio::task::spawn_blocking(move || psql_conninfo(&verified, APP_PASSWORD))
        .await
        .unwrap();
    assert!(ok, "psql with sslmode=verify-full failed:\n{text}");
    assert!(text.contains("SSL connection"), "{text}");
}

#[test]
fn tls_disable_answers_n_and_serves_plain_text() {
    let pg = shared_primary();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let px = start_pgmux(&pgmux_config(pg, &tls_section("disable", &certs), ""));

    let mut tcp = wire::tcp(px.port);
    tcp.write_all(&wire::ssl_request()).unwrap();
    assert_eq!(read_byte(&mut tcp).unwrap(), b'N');

    let (ok, text) = psql_conninfo(&conninfo(&px, APP_USER, "sslmode=prefer"), APP_PASSWORD);
    assert!(ok, "psql with sslmode=prefer failed:\n{text}");
    assert!(!text.contains("SSL connection"), "{text}");

    let (ok, text) = psql_conninfo(&conninfo(&px, APP_USER, "sslmode=require"), APP_PASSWORD);
    assert!(!ok, "sslmode=require must fail without TLS:\n{text}");
}

// ------------------------------------------------------------------ TLS towards Postgres

/// A Postgres server of this test binary that takes TCP logins only over TLS,
/// with a certificate for 127.0.0.1 signed by the CA whose PEM file is
/// `ca_path`.
struct TlsServer {
    pg: PgServer,
    ca_path: PathBuf,
}

fn tls_server() -> &'static TlsServer {
    static SERVER: OnceLock<TlsServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let pg = start_primary();
        let certs_dir = pg.dir.join("certs");
        std::fs::create_dir_all(&certs_dir).unwrap();
        let certs = make_certs(&certs_dir);
        pg.enable_tls(&certs.cert_pem, &certs.key_pem, true);
        TlsServer {
            ca_path: certs.ca,
            pg,
        }
    })
}

/// Whether the server connection of `url`'s next statement is encrypted.
async fn upstream_is_tls(url: &str) -> Result<bool, tokio_postgres::Error> {
    let client = connect(url).await;
    client
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await
        .map(|row| row.get(0))
}

#[tokio::test]
async fn the_tls_server_refuses_plain_text_logins() {
    let server = tls_server();
    let err = try_connect(&server.pg.url(APP_USER, APP_PASSWORD, APP_DB))
        .await
        .expect_err("hostssl only: a plain-text login must fail");
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{err}"
    );
}

#[tokio::test]
async fn upstream_tls_require_encrypts_the_server_connection() {
    let server = tls_server();
    let px = start_pgmux(&pgmux_config(
        &server.pg,
        "\n[upstream_tls]\nmode = \"require\"\n",
        "",
    ));
    for (user, password) in [(APP_USER, APP_PASSWORD), (MD5_USER, MD5_PASSWORD)] {
        let tls = upstream_is_tls(&px.url(user, password, APP_DB)).await;
        assert!(tls.unwrap(), "{user}'s server connection is not encrypted");
    }
}

#[tokio::test]
async fn upstream_tls_verify_full_accepts_a_server_signed_by_the_ca() {
    let server = tls_server();
    let px = start_pgmux(&pgmux_config(
        &server.pg,
        &format!(
            "\n[upstream_tls]\nmode = \"verify-full\"\nca = {:?}\n",
            server.ca_path.display().to_string()
        ),
        "",
    ));
    let tls = upstream_is_tls(&px.url(APP_USER, APP_PASSWORD, APP_DB)).await;
    assert!(tls.unwrap(), "the server connection is not encrypted");
}

#[tokio::test]
async fn upstream_tls_verify_full_refuses_a_server_signed_by_another_ca() {
    let server = tls_server();
    let dir = tempfile::tempdir().unwrap();
    let other = make_certs(dir.path());
    let px = start_pgmux(&pgmux_config(
        &server.pg,
        &format!(
            "\n[upstream_tls]\nmode = \"verify-full\"\nca = {:?}\n",
            other.ca.display().to_string()
        ),
        "",
    ));
    let err = upstream_is_tls(&px.url(APP_USER, APP_PASSWORD, APP_DB))
        .await
        .expect_err("an unverifiable server must not be used");
    assert_eq!(err.code(), Some(&SqlState::CONNECTION_FAILURE), "{err}");
    assert!(
        db_message(&err).contains(&server.pg.port.to_string()),
        "the error names the server: {err}"
    );
}

#[tokio::test]
async fn upstream_tls_disable_cannot_log_in_to_a_server_that_requires_tls() {
    let server = tls_server();
    let px = start_pgmux(&pgmux_config(&server.pg, "", ""));
    let err = upstream_is_tls(&px.url(APP_USER, APP_PASSWORD, APP_DB))
        .await
        .expect_err("plain text towards a hostssl-only server must fail");
    assert_eq!(err.code(), Some(&SqlState::CONNECTION_FAILURE), "{err}");
}

// ------------------------------------------------------------------ pgmux's own login upstream

#[tokio::test]
async fn pgmux_logs_in_upstream_with_scram_for_app_and_md5_for_md5user() {
    let pg = shared_primary();
    // pg_hba.conf gives md5user the md5 method and everyone else scram-sha-256;
    // the stored verifiers say which exchange each login must have been.
    let app_verifier = pg.sql(
        "postgres",
        &format!("select rolpassword from pg_authid where rolname = '{APP_USER}'"),
    );
    assert!(app_verifier.starts_with("SCRAM-SHA-256$"), "{app_verifier}");
    let md5_verifier = pg.sql(
        "postgres",
        &format!("select rolpassword from pg_authid where rolname = '{MD5_USER}'"),
    );
    assert!(md5_verifier.starts_with("md5"), "{md5_verifier}");

    let px = start_pgmux(&pgmux_config(pg, "", ""));
    assert_eq!(
        current_user_through(&px.url(APP_USER, APP_PASSWORD, APP_DB)).await,
        APP_USER
    );
    let md5 = connect(&px.url(MD5_USER, MD5_PASSWORD, APP_DB)).await;
    let row = md5
        .query_one("select current_user::text, count(*) from t", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), MD5_USER);
}

#[tokio::test]
async fn a_user_configured_with_a_scram_verifier_logs_in_upstream_with_the_clients_proof() {
    let pg = shared_primary();
    let role = "auth_verifier_user";
    let password = "verifier-secret";
    pg.sql(
        "postgres",
        &format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"),
    );
    let verifier = pg.sql(
        "postgres",
        &format!("select rolpassword from pg_authid where rolname = '{role}'"),
    );
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");

    // No plain password anywhere in the config: pgmux can log in upstream only
    // with the keys the client's own SCRAM proof reveals.
    let px = start_pgmux(&pgmux_config(
        pg,
        &format!("\n[[users]]\nname = \"{role}\"\npassword = \"{verifier}\"\n"),
        "",
    ));
    assert_eq!(
        current_user_through(&px.url(role, password, APP_DB)).await,
        role
    );
    let err = try_connect(&px.url(role, "not-the-password", APP_DB))
        .await
        .expect_err("a wrong password must not log in");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
}

// ------------------------------------------------------------------ Unix-domain socket

/// `[proxy] unix_socket_dir = "DIR"`, then `rest` (e.g. a `[tls]` table).
fn unix_socket_section(dir: &Path, rest: &str) -> String {
    format!("unix_socket_dir = {:?}\n{rest}", dir.display().to_string())
}

/// pgmux also listens on `DIR/.s.PGSQL.<port>`, as libpq names a server's socket:
/// `psql -h DIR -p PORT` and drivers given a directory as host log in there, with a
/// password as over TCP. As for Postgres' `hostssl`, a local socket needs no TLS even
/// under `tls.mode = "require"`, and an SSLRequest there is answered `N`.
#[tokio::test]
async fn clients_log_in_over_the_unix_socket_without_tls_even_when_tcp_requires_it() {
    let pg = shared_primary();
    let certs_dir = tempfile::tempdir().unwrap();
    let certs = make_certs(certs_dir.path());
    let sock = tempfile::tempdir().unwrap();
    let px = start_pgmux(&pgmux_config(
        pg,
        &unix_socket_section(sock.path(), &tls_section("require", &certs)),
        "",
    ));
    let socket = sock.path().join(format!(".s.PGSQL.{}", px.port));
    assert!(socket.exists(), "no socket at {}", socket.display());

    let local = format!(
        "host={} port={} user={APP_USER} dbname={APP_DB}",
        sock.path().display(),
        px.port
    );
    let (ok, text) = {
        let local = local.clone();
        tokio::task::spawn_blocking(move || psql_conninfo(&local, APP_PASSWORD))
            .await
            .unwrap()
    };
    assert!(ok, "psql over the socket failed:\n{text}");
    assert!(text.contains("via socket"), "{text}");
    let (ok, text) = {
        let local = local.clone();
        tokio::task::spawn_blocking(move || psql_conninfo(&local, "wrong-password"))
            .await
            .unwrap()
    };
    assert!(
        !ok,
        "a wrong password over the socket must be refused:\n{text}"
    );

    let (client, connection) =
        tokio_postgres::connect(&format!("{local} password={APP_PASSWORD}"), NoTls)
            .await
            .expect("tokio-postgres over the socket");
    tokio::spawn(connection);
    let row = client
        .query_one("select $1::int + 1", &[&41i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);

    // An SSLRequest on the socket gets N, and the login goes on in plain text.
    let mut raw = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    raw.write_all(&wire::ssl_request()).unwrap();
    assert_eq!(read_byte(&mut raw).unwrap(), b'N');
    raw.write_all(&wire::startup_message(&[
        ("user", APP_USER),
        ("database", APP_DB),
    ]))
    .unwrap();
    let m = read_message(&mut raw).unwrap();
    assert_eq!(m.auth_code(), Some(10), "SASL is asked for: {m:?}");

    // TCP still requires TLS.
    let err = try_connect(&px.url(APP_USER, APP_PASSWORD, APP_DB))
        .await
        .expect_err("plain text over TCP must be refused");
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{err}"
    );
}

/// `config` listening on 127.0.0.1:`port` instead.
fn with_listen_port(config: &str, port: u16) -> String {
    let start = config.find("listen = \"127.0.0.1:").expect("a listen line");
    let end = start + config[start..].find('\n').expect("a line end");
    format!(
        "{}listen = \"127.0.0.1:{port}\"{}",
        &config[..start],
        &config[end..]
    )
}

/// A socket file a dead process left behind is replaced; a socket another process
/// still listens on is not taken over (pgmux exits 1 and says why); the socket is
/// removed when pgmux stops.
#[test]
fn the_unix_socket_replaces_a_stale_file_refuses_a_live_one_and_is_removed_at_exit() {
    let pg = shared_primary();

    let busy = tempfile::tempdir().unwrap();
    let port = support::process::free_port();
    let live = std::os::unix::net::UnixListener::bind(busy.path().join(format!(".s.PGSQL.{port}")))
        .unwrap();
    let config = with_listen_port(
        &pgmux_config(pg, &unix_socket_section(busy.path(), ""), ""),
        port,
    );
    let (_config_dir, path) = {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgmux.toml");
        std::fs::write(&path, &config).unwrap();
        (dir, path)
    };
    let out = support::process::run(
        pgmux_command().arg("--config").arg(&path),
        std::time::Duration::from_secs(60),
        "pgmux with a socket in use",
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another process is listening"), "{stderr}");
    drop(live);

    // `live` dropped: its file stays behind, stale.
    let stale = busy.path().join(format!(".s.PGSQL.{port}"));
    assert!(stale.exists());
    let mut px = start_pgmux(&config);
    let socket = busy.path().join(format!(".s.PGSQL.{}", px.port));
    let out = psql(
        &[
            "-h",
            &busy.path().display().to_string(),
            "-p",
            &px.port.to_string(),
            "-U",
            APP_USER,
            "-d",
            APP_DB,
            "-At",
            "-c",
            "select 7",
        ],
        &[("PGPASSWORD", APP_PASSWORD)],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7");

    px.send_signal(libc::SIGTERM);
    let status = px
        .wait_exit(std::time::Duration::from_secs(60))
        .expect("pgmux exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "the socket is removed at exit");
}
