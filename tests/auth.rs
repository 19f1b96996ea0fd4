//! Who may log in: client authentication (SCRAM-SHA-256, md5, trust, and a user's
//! own method), the login errors of CONTRACT.md sections 3 and 4, GSSENCRequest, and
//! pgmux's own login upstream with SCRAM and md5.

mod support;

use support::wire::{self, read_byte, read_message};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use std::io::Write;

// ------------------------------------------------------------------ helpers

/// The code of the first Authentication request pgmux sends after a startup
/// message for `user` (0 ok, 5 md5, 10 SASL) and that message's body.
fn first_auth_request(px: &Pgmux, user: &str) -> (i32, Vec<u8>) {
    let (_, code, body) = auth_request(px, user);
    (code, body)
}

/// Sends `user`'s startup message and reads pgmux's first Authentication request;
/// returns the socket, to go on with the exchange, the request's code and its body.
fn auth_request(px: &Pgmux, user: &str) -> (std::net::TcpStream, i32, Vec<u8>) {
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
    (tcp, code, m.body)
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

/// An md5 password message holds one zero-terminated string and nothing else; any
/// other shape is 08P01, as in Postgres, rather than a wrong password or a login.
#[test]
fn an_md5_password_message_that_is_not_one_string_is_08p01() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "auth_method = \"md5\"", ""));
    // The right answer for the salt, so that only the shape is wrong.
    let answer = |salt: &[u8]| {
        let inner = md5_hex(format!("{APP_PASSWORD}{APP_USER}").as_bytes());
        let mut salted = inner.into_bytes();
        salted.extend_from_slice(salt);
        format!("md5{}", md5_hex(&salted)).into_bytes()
    };
    let shapes: [fn(Vec<u8>) -> Vec<u8>; 3] = [
        |_| Vec::new(),
        |a| a,
        |mut a| {
            a.extend_from_slice(b"\0junk");
            a
        },
    ];
    for shape in shapes {
        let (mut tcp, code, request) = auth_request(&px, APP_USER);
        assert_eq!(code, 5);
        let body = shape(answer(&request[4..8]));
        tcp.write_all(&wire::tagged(b'p', &body)).unwrap();
        let m = read_message(&mut tcp).unwrap();
        assert_eq!(
            m.error(),
            ("FATAL".into(), "08P01".into()),
            "{body:?}: {m:?}"
        );
    }
    let (mut tcp, _, request) = auth_request(&px, APP_USER);
    let mut body = answer(&request[4..8]);
    body.push(0);
    tcp.write_all(&wire::tagged(b'p', &body)).unwrap();
    assert_eq!(read_message(&mut tcp).unwrap().auth_code(), Some(0));
}

fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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

/// What Postgres refuses in a startup packet, pgmux refuses with the same SQLSTATE
/// before asking for a password: an empty user name (28000), a protocol other than
/// 3 (0A000), and a `replication` value that is neither a boolean nor `database`
/// (22023). A boolean spelled the way Postgres accepts it (`of`) is still one.
#[test]
fn a_startup_packet_postgres_would_refuse_gets_postgres_sqlstate() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", ""));
    let first_reply = |packet: Vec<u8>| {
        let mut tcp = wire::tcp(px.port);
        tcp.write_all(&packet).unwrap();
        read_message(&mut tcp).unwrap()
    };
    let refused = [
        (
            wire::startup_message(&[("user", ""), ("database", APP_DB)]),
            "28000",
        ),
        (
            wire::request(2 << 16, b"user\0app\0database\0app\0\0"),
            "0A000",
        ),
        (
            wire::startup_message(&[
                ("user", APP_USER),
                ("database", APP_DB),
                ("replication", "junk"),
            ]),
            "22023",
        ),
        (
            wire::startup_message(&[
                ("user", APP_USER),
                ("database", APP_DB),
                ("replication", "DATABASE"),
            ]),
            "22023",
        ),
    ];
    for (packet, code) in refused {
        let m = first_reply(packet);
        assert_eq!(m.error(), ("FATAL".to_string(), code.to_string()), "{m:?}");
    }
    let m = first_reply(wire::startup_message(&[
        ("user", APP_USER),
        ("database", APP_DB),
        ("replication", "of"),
    ]));
    assert_eq!(m.auth_code(), Some(10), "an ordinary login goes on: {m:?}");
}

/// A client that gives up before logging in sends Terminate where its startup packet
/// belongs (node-postgres does, when the application ends a connection still being
/// made): as Postgres, pgmux closes without an answer, before and after an
/// SSLRequest, so the driver reports the connection ended rather than a failed login.
/// A first packet whose length is otherwise impossible is still refused with 08P01.
#[test]
fn a_terminate_before_the_startup_packet_is_answered_by_a_silent_close() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", ""));
    let read_all = |tcp: &mut std::net::TcpStream| {
        let mut got = Vec::new();
        std::io::Read::read_to_end(tcp, &mut got).expect("pgmux closes the connection");
        got
    };
    let mut tcp = wire::tcp(px.port);
    tcp.write_all(&wire::terminate_message()).unwrap();
    assert_eq!(read_all(&mut tcp), b"", "nothing is sent back");

    let mut tcp = wire::tcp(px.port);
    tcp.write_all(&wire::ssl_request()).unwrap();
    assert_eq!(read_byte(&mut tcp).unwrap(), b'N');
    tcp.write_all(&wire::terminate_message()).unwrap();
    assert_eq!(
        read_all(&mut tcp),
        b"",
        "nothing is sent back after the N either"
    );

    let mut tcp = wire::tcp(px.port);
    tcp.write_all(&[b'Q', 0, 0, 0, 4]).unwrap();
    let m = read_message(&mut tcp).unwrap();
    assert_eq!(
        m.error(),
        ("FATAL".to_string(), "08P01".to_string()),
        "{m:?}"
    );

    let (_, code, _) = auth_request(&px, APP_USER);
    assert_eq!(code, 10, "the next login goes on as usual");
}

/// A SASLInitialResponse whose length does not match the bytes that follow is
/// malformed (08P01), not read as far as it goes and taken for a wrong password; an
/// authorization identity or a mandatory extension, which Postgres does not support,
/// is refused as Postgres refuses it (0A000).
#[test]
fn a_client_first_message_postgres_would_refuse_gets_postgres_sqlstate() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", ""));
    let initial = |declared: i32, data: &str| {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&declared.to_be_bytes());
        body.extend_from_slice(data.as_bytes());
        wire::tagged(b'p', &body)
    };
    let first = "n,,n=,r=0123456789abcdefghijklmn";
    let len = first.len() as i32;
    let cases = [
        (initial(len + 100, first), "08P01", "SASLInitialResponse"),
        (initial(len - 1, first), "08P01", "SASLInitialResponse"),
        (initial(-1, ""), "08P01", "SASLInitialResponse"),
        (
            initial(len + 5, "n,a=bob,n=,r=0123456789abcdefghijklmn"),
            "0A000",
            "authorization identity",
        ),
        (
            initial(len + 6, "n,,m=ext,n=,r=0123456789abcdefghijklmn"),
            "0A000",
            "extension",
        ),
    ];
    for user in [APP_USER, "nobody_at_all"] {
        for (message, code, says) in &cases {
            let (mut tcp, auth, _) = auth_request(&px, user);
            assert_eq!(auth, 10);
            tcp.write_all(message).unwrap();
            let m = read_message(&mut tcp).unwrap();
            assert_eq!(m.error(), ("FATAL".into(), (*code).into()), "{user}: {m:?}");
            assert!(m.field(b'M').unwrap().contains(says), "{m:?}");
        }
    }
}

/// A SCRAM exchange the client breaks is a protocol violation (08P01), as in
/// Postgres, and says what broke it: another mechanism, a client-final-message
/// whose nonce or channel binding is not the exchange's, or one that is not a SCRAM
/// message at all. Only a proof that does not match is a wrong password (28P01);
/// an unknown user gets the same answers, so they tell nothing about who exists.
#[test]
fn a_broken_scram_exchange_is_08p01_and_only_a_wrong_proof_is_28p01() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", ""));
    let client_first = |mechanism: &str| {
        let bare = "n=,r=0123456789abcdefghijklmn";
        let mut body = format!("{mechanism}\0").into_bytes();
        body.extend_from_slice(&(3 + bare.len() as i32).to_be_bytes());
        body.extend_from_slice(format!("n,,{bare}").as_bytes());
        wire::tagged(b'p', &body)
    };
    // Logs `user` in up to the server-first-message; returns the socket and the
    // server's nonce.
    let begin = |user: &str| {
        let (mut tcp, code, _) = auth_request(&px, user);
        assert_eq!(code, 10);
        tcp.write_all(&client_first("SCRAM-SHA-256")).unwrap();
        let m = read_message(&mut tcp).unwrap();
        assert_eq!(m.auth_code(), Some(11), "{m:?}");
        let server_first = String::from_utf8(m.body[4..].to_vec()).unwrap();
        let nonce = server_first
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .expect("a nonce")
            .to_string();
        (tcp, nonce)
    };
    let proof = "p=eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHg=";
    for user in [APP_USER, "nobody_at_all"] {
        let (mut tcp, _, _) = auth_request(&px, user);
        tcp.write_all(&client_first("SCRAM-SHA-256-PLUS")).unwrap();
        let m = read_message(&mut tcp).unwrap();
        assert_eq!(m.error(), ("FATAL".into(), "08P01".into()), "{m:?}");
        assert!(m.field(b'M').unwrap().contains("mechanism"), "{m:?}");

        let finals = [
            (format!("c=biws,r=not-the-nonce,{proof}"), "08P01", "nonce"),
            (
                format!("c=eSws,r={{nonce}},{proof}"),
                "08P01",
                "channel binding",
            ),
            ("no attributes at all".to_string(), "08P01", "SCRAM"),
            (format!("c=biws,r={{nonce}},{proof}"), "28P01", "password"),
        ];
        for (final_message, code, says) in finals {
            let (mut tcp, nonce) = begin(user);
            let final_message = final_message.replace("{nonce}", &nonce);
            tcp.write_all(&wire::tagged(b'p', final_message.as_bytes()))
                .unwrap();
            let m = read_message(&mut tcp).unwrap();
            assert_eq!(
                m.error(),
                ("FATAL".into(), code.into()),
                "{user}, {final_message}: {m:?}"
            );
            assert!(m.field(b'M').unwrap().contains(says), "{m:?}");
        }
    }
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

/// A client asking for protocol 3.2 with an option pgmux does not know is told, as
/// Postgres 15 tells it, that 3.0 is spoken and which option was not recognised;
/// the login goes on. libpq 18 asks for 3.2 with `max_protocol_version=latest`.
#[test]
fn a_newer_protocol_version_is_negotiated_down_to_3_0_and_the_login_goes_on() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", ""));
    let mut tcp = wire::tcp(px.port);
    let mut body = Vec::new();
    for (k, v) in [
        ("user", APP_USER),
        ("database", APP_DB),
        ("_pq_.made_up", "1"),
    ] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    tcp.write_all(&wire::request((3 << 16) | 2, &body)).unwrap();
    let m = read_message(&mut tcp).expect("read NegotiateProtocolVersion");
    assert_eq!(m.tag, b'v', "{m:?}");
    let mut want = Vec::new();
    want.extend_from_slice(&(3i32 << 16).to_be_bytes());
    want.extend_from_slice(&1i32.to_be_bytes());
    want.extend_from_slice(b"_pq_.made_up\0");
    assert_eq!(m.body, want);
    let m = read_message(&mut tcp).expect("read the authentication request");
    assert_eq!(m.auth_code(), Some(10), "{m:?}");

    // libpq 18 (psycopg's binary wheel) accepts the answer and logs in.
    let script = format!(
        "import psycopg\n\
         c = psycopg.connect('host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} \
         dbname={APP_DB} max_protocol_version=latest')\n\
         print(c.pgconn.protocol_version, c.execute('select 6 * 7').fetchone()[0])\n",
        px.port
    );
    assert_eq!(run_python(&script), "3 42");
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
