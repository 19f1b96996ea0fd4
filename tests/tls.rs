//! Over what clients and pgmux connect: TLS towards clients (`[tls]`), TLS towards
//! Postgres (`[upstream_tls]`), and the Unix-domain socket (`unix_socket_dir`).

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use support::wire::{self, read_byte, read_message};
use support::*;
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

/// A client that opens with a TLS handshake instead of an SSLRequest (libpq 17 and
/// later with `sslnegotiation=direct`) is served over TLS, as by Postgres 17; one
/// that did not negotiate ALPN `postgresql` is refused with 08P01 over that TLS.
#[tokio::test]
async fn direct_tls_is_served_and_needs_alpn_postgresql() {
    let pg = shared_primary();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let px = start_pgmux(&pgmux_config(pg, &tls_section("require", &certs), ""));

    // libpq 18, from psycopg's binary wheel.
    let script = format!(
        "import psycopg\n\
         c = psycopg.connect('{} password={APP_PASSWORD}')\n\
         print(c.pgconn.ssl_in_use, c.execute('select current_user').fetchone()[0])\n",
        conninfo(
            &px,
            APP_USER,
            &format!(
                "sslnegotiation=direct sslmode=verify-full sslrootcert={}",
                certs.ca.display()
            )
        )
    );
    assert_eq!(run_python(&script), format!("True {APP_USER}"));

    // The same handshake without ALPN.
    let mut tls = direct_tls_client(&px, &certs, false);
    tls.write_all(&wire::startup_message(&[
        ("user", APP_USER),
        ("database", APP_DB),
    ]))
    .unwrap();
    let m = read_message(&mut tls).expect("read the refusal");
    assert_eq!(m.sqlstate().as_deref(), Some("08P01"), "{m:?}");
    assert!(m.field(b'M').unwrap().contains("ALPN"), "{m:?}");
}

/// A TLS connection to pgmux opened with the handshake itself (no SSLRequest),
/// trusting the test CA, offering ALPN `postgresql` when `alpn`.
fn direct_tls_client(
    px: &Pgmux,
    certs: &Certs,
    alpn: bool,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_file(&certs.ca).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    if alpn {
        config.alpn_protocols = vec![b"postgresql".to_vec()];
    }
    let conn =
        rustls::ClientConnection::new(std::sync::Arc::new(config), "localhost".try_into().unwrap())
            .unwrap();
    rustls::StreamOwned::new(conn, wire::tcp(px.port))
}

/// libpq 17's cancel API (psycopg's `cancel_safe`) sends its CancelRequest over TLS
/// when the session uses TLS, and counts a close without TLS close_notify as a
/// failure: pgmux closes as Postgres does, and the cancel succeeds, by SSLRequest
/// and by direct TLS.
#[test]
fn a_cancel_request_over_tls_is_answered_with_a_clean_tls_close() {
    let pg = shared_primary();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let px = start_pgmux(&pgmux_config(pg, &tls_section("require", &certs), ""));
    for negotiation in ["postgres", "direct"] {
        let script = format!(
            r#"
import threading, time, psycopg
info = '{} password={APP_PASSWORD}'
c = psycopg.connect(info, autocommit=True)
watch = psycopg.connect(info, autocommit=True)
got = []
def run():
    try:
        c.execute('select pg_sleep(60)')
        got.append('ran')
    except psycopg.Error as e:
        got.append(e.sqlstate)
t = threading.Thread(target=run)
t.start()
deadline = time.time() + 60
while not watch.execute("select count(*) from pg_stat_activity where query = 'select pg_sleep(60)' and state = 'active'").fetchone()[0]:
    assert time.time() < deadline, 'the statement never started'
    time.sleep(0.05)
c.cancel_safe(timeout=30)
t.join(60)
print(got[0], c.execute('select 1').fetchone()[0])
"#,
            conninfo(
                &px,
                APP_USER,
                &format!("sslmode=require sslnegotiation={negotiation}")
            )
        );
        assert_eq!(run_python(&script), "57014 1", "{negotiation}");
    }
}

/// Over TLS pgmux offers SCRAM-SHA-256-PLUS, bound to its certificate, as Postgres
/// does: libpq's `channel_binding=require` logs in, and a client that says it could
/// bind but thinks the server cannot (gs2 flag `y`) is refused with 28000, since
/// someone between them must have removed PLUS from the offer.
#[test]
fn scram_channel_binding_is_offered_over_tls_and_a_downgrade_is_refused() {
    let pg = shared_primary();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let px = start_pgmux(&pgmux_config(pg, &tls_section("prefer", &certs), ""));

    let bound = conninfo(
        &px,
        APP_USER,
        &format!(
            "sslmode=verify-full sslrootcert={} channel_binding=require",
            certs.ca.display()
        ),
    );
    let out = psql(
        &["-d", &bound, "-At", "-c", "select current_user"],
        &[("PGPASSWORD", APP_PASSWORD)],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), APP_USER);
    let wrong = psql(
        &["-d", &bound, "-At", "-c", "select 1"],
        &[("PGPASSWORD", "not-the-password")],
    );
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"),
        "{wrong:?}"
    );
    // In plain text there is nothing to bind to, and libpq gives up by itself.
    let plain = psql(
        &[
            "-d",
            &conninfo(&px, APP_USER, "sslmode=disable channel_binding=require"),
            "-c",
            "select 1",
        ],
        &[("PGPASSWORD", APP_PASSWORD)],
    );
    assert!(!plain.status.success(), "{plain:?}");

    let mut tls = direct_tls_client(&px, &certs, true);
    tls.write_all(&wire::startup_message(&[
        ("user", APP_USER),
        ("database", APP_DB),
    ]))
    .unwrap();
    let m = read_message(&mut tls).expect("read AuthenticationSASL");
    assert_eq!(m.auth_code(), Some(10), "{m:?}");
    assert_eq!(&m.body[4..], b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
    let first = b"y,,n=,r=0123456789abcdef";
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(first.len() as i32).to_be_bytes());
    body.extend_from_slice(first);
    tls.write_all(&wire::tagged(b'p', &body)).unwrap();
    let m = read_message(&mut tls).expect("read the refusal");
    assert_eq!(m.sqlstate().as_deref(), Some("28000"), "{m:?}");
    assert!(m.field(b'M').unwrap().contains("channel binding"), "{m:?}");
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

#[test]
fn plain_text_sent_behind_an_ssl_request_is_refused_as_postgres_refuses_it() {
    let pg = shared_primary();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let px = start_pgmux(&pgmux_config(pg, &tls_section("prefer", &certs), ""));

    // A client that does not wait for the answer: its startup packet would be taken
    // as if it had come over TLS (CVE-2021-23214).
    let mut tcp = wire::tcp(px.port);
    let startup = wire::startup_message(&[("user", APP_USER), ("database", APP_DB)]);
    tcp.write_all(&[wire::ssl_request(), startup].concat())
        .unwrap();
    assert_eq!(read_byte(&mut tcp).unwrap(), b'S');
    let m = read_message(&mut tcp).unwrap();
    assert_eq!(m.error(), ("FATAL".into(), "08P01".into()), "{m:?}");
    assert_eq!(
        m.field(b'M').as_deref(),
        Some("received unencrypted data after SSL request")
    );
    assert_eq!(
        read_byte(&mut tcp).unwrap_err().kind(),
        std::io::ErrorKind::UnexpectedEof
    );
}

#[test]
fn a_login_sent_in_one_write_with_the_ssl_request_and_a_query_is_served_in_order() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "auth_method = \"trust\"", ""));

    let mut tcp = wire::tcp(px.port);
    let startup = wire::startup_message(&[("user", APP_USER), ("database", APP_DB)]);
    let query = wire::query_message("select 7");
    tcp.write_all(&[wire::ssl_request(), startup, query].concat())
        .unwrap();
    assert_eq!(read_byte(&mut tcp).unwrap(), b'N');
    let mut tags = String::new();
    let mut value = None;
    while tags.matches('Z').count() < 2 {
        let m = read_message(&mut tcp).unwrap();
        if m.tag == b'D' {
            value = Some(m.first_column());
        }
        tags.push(m.tag as char);
    }
    assert!(tags.starts_with('R') && tags.ends_with("TDCZ"), "{tags}");
    assert_eq!(value.as_deref(), Some("7"));
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

/// A driver's batch (pgx's `SendBatch`, JDBC's `executeBatch`) is one unit of many
/// unnamed statements, sent before any reply is read. At each Bind pgmux asks whether
/// a Parse of an earlier unit is still unanswered; when that read the batch's own
/// Parses too, a batch cost the square of its size and held the worker thread, and
/// every client on it: a pgx batch of 100,000 statements took 17 s over TLS instead of
/// 0.7 s. Over TLS pgmux reads furthest ahead of the server, so the most Parses wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_150000_unnamed_statements_over_tls_holds_up_no_other_client() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let px = start_pgmux(&pgmux_config(
        shared_primary(),
        &format!("auth_method = \"trust\"{}", tls_section("prefer", &certs)),
        "pool_size = 2",
    ));
    let other = connect(&px.url(APP_USER, APP_PASSWORD, APP_DB)).await;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", px.port))
        .await
        .expect("connect to pgmux");
    tcp.write_all(&wire::ssl_request()).await.unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'S', "pgmux offers TLS");
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_file(&certs.ca).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("the TLS handshake");
    support::protocol::unnamed_batch(tls, 150_000, support::protocol::Batch::OneUnit, &other).await;
}
