//! A client connection from accept to goodbye: the startup phase (SSLRequest,
//! GSSENCRequest, CancelRequest, StartupMessage), authentication, the login reply, and
//! then the [`session::Session`] relay.
//!
//! Postgres docs, "Start-up": the client may ask for TLS first (pgmux answers `S` when
//! `[tls]` allows, else `N`), GSS encryption is refused with `N`, and a CancelRequest
//! arrives on a connection of its own.

pub mod session;
pub mod sql;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth::scram::ScramServer;
use crate::auth::AuthError;
use crate::config::{AuthMethod, Config, TlsMode};
use crate::pool::{Pool, Reported};
use crate::protocol::build::{self, PgError};
use crate::protocol::startup::{self, FirstPacket, StartupParams};
use crate::protocol::{complete_frame, fe, SqlState, TxStatus};
use crate::proxy::{ClientSlot, Shared, UserEntry};
use crate::server::{ServerError, Settings};
use crate::tls::MaybeTls;
pub use crate::workers::Accepted;
use session::{Limits, Session};

/// Largest message accepted during authentication.
const MAX_AUTH_MESSAGE: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
enum LoginError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The client was sent a FATAL error already.
    #[error("{0}")]
    Refused(PgError),
}

/// Serves one accepted connection until it closes.
///
/// Every byte of the returned future is held for as long as the client is connected,
/// so it is built to stay small (see the test below):
/// - the login's futures (TLS handshake, SCRAM) are large and short-lived: boxed,
///   before the future is made, so that it keeps a pointer rather than room for the
///   socket and the shared state it no longer needs after the login;
/// - the session is moved into its run future within one statement, so the task does
///   not keep a second, moved-from copy of it across the await.
pub fn serve(shared: Arc<Shared>, conn: Accepted) -> impl std::future::Future<Output = ()> + Send {
    let login = Box::pin(login_phase(shared, conn));
    async move {
        let run = match login.await {
            Some((session, slot)) => session.run(slot),
            None => return,
        };
        run.await;
    }
}

async fn login_phase(shared: Arc<Shared>, conn: Accepted) -> Option<(Session, ClientSlot)> {
    let stream = match conn {
        Accepted::Tcp(tcp) => {
            let _ = tcp.set_nodelay(true);
            MaybeTls::from(tcp)
        }
        Accepted::Unix(unix) => MaybeTls::from(unix),
    };
    let cfg = shared.config();
    let timeout = cfg.proxy.client_login_timeout;
    match tokio::time::timeout(timeout, login(&shared, &cfg, stream)).await {
        Ok(Ok(logged_in)) => logged_in,
        Ok(Err(LoginError::Refused(e))) => {
            tracing::info!(error = %e, "login refused");
            None
        }
        Ok(Err(LoginError::Io(e))) => {
            tracing::debug!(error = %e, "client left during login");
            None
        }
        Err(_) => {
            tracing::info!(
                ?timeout,
                "client did not log in within client_login_timeout"
            );
            None
        }
    }
}

async fn refuse(stream: &mut MaybeTls, err: PgError) -> LoginError {
    let mut out = BytesMut::new();
    err.encode(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
    LoginError::Refused(err)
}

/// A TLS handshake record: what a client with `sslnegotiation=direct` (libpq 17 and
/// later) sends first, instead of an SSLRequest.
const TLS_HANDSHAKE: u8 = 0x16;

/// With `[tls]` on, a connection that opens with a TLS handshake is accepted as TLS
/// at once, as Postgres 17 does; the client must have negotiated ALPN `postgresql`,
/// which tells a Postgres client from anything else speaking TLS to this port.
/// Returns the stream, and the channel binding data of the TLS connection, if any.
async fn direct_tls(shared: &Shared, stream: MaybeTls) -> Result<Encrypted, LoginError> {
    let (MaybeTls::Plain(tcp), Some(tls_cfg)) = (&stream, shared.tls_acceptor()) else {
        return Ok((stream, None));
    };
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? != 1 || first[0] != TLS_HANDSHAKE {
        return Ok((stream, None));
    }
    let MaybeTls::Plain(tcp) = stream else {
        unreachable!("matched Plain above")
    };
    let tls = tls_cfg.acceptor.accept(tcp).await?;
    let alpn = tls.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_POSTGRESQL);
    let mut stream = MaybeTls::from(tls);
    if !alpn {
        let e = PgError::fatal(
            SqlState::PROTOCOL_VIOLATION,
            "received direct SSL connection request without ALPN protocol negotiation extension",
        )
        .with_hint("offer ALPN \"postgresql\" (libpq 17 and later do), or connect with sslnegotiation=postgres");
        return Err(refuse(&mut stream, e).await);
    }
    Ok((stream, tls_cfg.end_point.clone()))
}

/// A client's stream, with the `tls-server-end-point` data SCRAM-SHA-256-PLUS binds
/// its login to when it is encrypted by a certificate that gives one.
type Encrypted = (MaybeTls, Option<Arc<[u8]>>);

async fn read_first_packet(
    stream: &mut MaybeTls,
    buf: &mut BytesMut,
) -> Result<Result<FirstPacket, PgError>, LoginError> {
    // What the client sent is read as it comes, mostly in one read: bytes past the
    // packet stay in `buf` for what reads next.
    let head: [u8; 4] = loop {
        if let Some(head) = buf.get(..4) {
            // Perhaps a Terminate: the client gave up before logging in (node-postgres
            // does when the application ends a connection still being made). Postgres,
            // reading it as a bad length, closes without a word; an error here would
            // reach the application as a failed login it never asked to finish. Its
            // last byte is read so that the close is not a reset.
            if head != b"X\0\0\0" || buf.len() > 4 {
                break head.try_into().expect("four bytes");
            }
        }
        read_more(stream, buf, 256).await?;
    };
    if head == *b"X\0\0\0" && buf[4] == 4 {
        return Err(LoginError::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the client sent Terminate instead of a startup packet",
        )));
    }
    let len = match startup::packet_len(head) {
        Ok(l) => l,
        Err(e) => {
            return Ok(Err(PgError::fatal(
                SqlState::PROTOCOL_VIOLATION,
                e.to_string(),
            )))
        }
    };
    while buf.len() < len {
        read_more(stream, buf, len - buf.len()).await?;
    }
    let packet = buf.split_to(len);
    Ok(startup::parse_first_packet(&packet).map_err(|e| {
        // As Postgres: another protocol is a feature pgmux lacks, not a violation.
        let code = match e {
            startup::StartupError::UnsupportedProtocol { .. } => SqlState::FEATURE_NOT_SUPPORTED,
            _ => SqlState::PROTOCOL_VIOLATION,
        };
        PgError::fatal(code, e.to_string())
    }))
}

async fn login(
    shared: &Arc<Shared>,
    cfg: &Arc<Config>,
    stream: MaybeTls,
) -> Result<Option<(Session, ClientSlot)>, LoginError> {
    let (mut stream, mut end_point) = direct_tls(shared, stream).await?;
    let mut buf = BytesMut::new();
    let params: StartupParams = loop {
        let packet = match read_first_packet(&mut stream, &mut buf).await? {
            Ok(p) => p,
            Err(e) => return Err(refuse(&mut stream, e).await),
        };
        match packet {
            FirstPacket::SslRequest => {
                let tls_cfg = match (&stream, shared.tls_acceptor()) {
                    (MaybeTls::Plain(_), Some(a)) => a,
                    // As Postgres: no encryption over a Unix-domain socket.
                    (MaybeTls::Plain(_), None) | (MaybeTls::Unix(_), _) => {
                        stream.write_all(b"N").await?;
                        continue;
                    }
                    _ => {
                        let e = PgError::fatal(
                            SqlState::PROTOCOL_VIOLATION,
                            "SSLRequest over an encrypted connection",
                        );
                        return Err(refuse(&mut stream, e).await);
                    }
                };
                stream.write_all(b"S").await?;
                if !buf.is_empty() {
                    // As Postgres (CVE-2021-23214): bytes sent before the handshake
                    // could be an attacker's, made to look as if they came encrypted.
                    let e = PgError::fatal(
                        SqlState::PROTOCOL_VIOLATION,
                        "received unencrypted data after SSL request",
                    )
                    .with_hint("a client must wait for the server's answer to SSLRequest before it starts TLS");
                    return Err(refuse(&mut stream, e).await);
                }
                let MaybeTls::Plain(tcp) = stream else {
                    unreachable!("matched Plain above")
                };
                // Plaintext that comes after the check fails the handshake.
                let tls = tls_cfg.acceptor.accept(tcp).await?;
                stream = MaybeTls::from(tls);
                end_point = tls_cfg.end_point.clone();
            }
            FirstPacket::GssEncRequest => stream.write_all(b"N").await?,
            FirstPacket::Cancel { pid, secret } => {
                shared
                    .cancels
                    .cancel(pid, secret, cfg.proxy.server_connect_timeout)
                    .await;
                // Over TLS, a close without close_notify is an error to libpq 17's
                // cancel API (psycopg's `cancel_safe`): end the session as Postgres does.
                let _ = stream.shutdown().await;
                return Ok(None);
            }
            FirstPacket::Startup(p) => break p,
        }
    };

    if params.minor_version > 0 || params.protocol_options().next().is_some() {
        // Postgres docs, "Protocol versions": answer with the version pgmux speaks.
        let mut out = BytesMut::new();
        build::negotiate_protocol_version(&mut out, params.protocol_options());
        stream.write_all(&out).await?;
    }
    let Some(slot) = shared.client_slot(cfg.proxy.max_client_conn) else {
        let e = PgError::fatal(
            SqlState::TOO_MANY_CONNECTIONS,
            format!(
                "sorry, too many clients already (max_client_conn = {})",
                cfg.proxy.max_client_conn
            ),
        )
        .with_hint("raise [proxy].max_client_conn, or close idle connections");
        return Err(refuse(&mut stream, e).await);
    };
    // As Postgres' `hostssl`: a Unix-domain socket is local, and needs no TLS.
    let local = matches!(stream, MaybeTls::Unix(_));
    if !stream.is_tls() && !local && cfg.tls.as_ref().is_some_and(|t| t.mode == TlsMode::Require) {
        let e = PgError::fatal(
            SqlState::INVALID_AUTHORIZATION,
            "pgmux requires TLS (tls.mode = \"require\")",
        )
        .with_hint("connect with sslmode=require");
        return Err(refuse(&mut stream, e).await);
    }
    // An empty name is no name, as in Postgres.
    let Some(user_name) = params.user().filter(|u| !u.is_empty()).map(str::to_string) else {
        let e = PgError::fatal(
            SqlState::INVALID_AUTHORIZATION,
            "no user name in the startup packet",
        )
        .with_hint("give a user name in the connection string");
        return Err(refuse(&mut stream, e).await);
    };
    let Some(replication) = params.wants_replication() else {
        let e = PgError::fatal(
            SqlState::INVALID_PARAMETER_VALUE,
            format!(
                "invalid value for parameter \"replication\": \"{}\"",
                params.get("replication").unwrap_or_default()
            ),
        )
        .with_hint("valid values are \"false\", 0, \"true\", 1 and \"database\"");
        return Err(refuse(&mut stream, e).await);
    };
    if replication {
        let e = PgError::fatal(
            SqlState::FEATURE_NOT_SUPPORTED,
            "pgmux does not proxy replication connections",
        )
        .with_hint("connect a replication client to the Postgres server itself");
        return Err(refuse(&mut stream, e).await);
    }
    let database = params.database().unwrap_or_default().to_string();
    let user = shared.user(&user_name);

    // An unknown user gets the default method's exchange, and fails it.
    let method = user
        .as_deref()
        .map_or(cfg.proxy.auth_method, |u| u.config.auth_method);
    let mut out = authenticate(
        shared,
        method,
        (&mut stream, end_point),
        &mut buf,
        &user_name,
        user.as_deref(),
    )
    .await?;
    let user = user.expect("authentication fails for unknown users");

    let Some(db) = cfg.database(&database) else {
        let e = PgError::fatal(
            SqlState::INVALID_CATALOG_NAME,
            format!("database \"{database}\" does not exist"),
        )
        .with_hint("pgmux serves the databases listed under [databases] in its config");
        // As in Postgres, the client learns of the database after its login succeeded.
        stream.write_all(&out).await?;
        return Err(refuse(&mut stream, e).await);
    };
    let pool = crate::route::primary_pool(shared, cfg, db, &user);
    if let Some(keys) = user.scram_keys() {
        pool.offer_scram_keys(keys.0, keys.1);
    }

    if let Some(problem) = params.options_error() {
        let e = PgError::fatal(SqlState::SYNTAX_ERROR, problem)
            .with_hint("write each setting in options as -c name=value");
        stream.write_all(&out).await?;
        return Err(refuse(&mut stream, e).await);
    }
    let mut client_values = params.session_settings();
    let clipped = crate::protocol::startup::clean_application_name(&mut client_values);
    let startup_settings = shared.startup_settings.intern_pairs(&client_values);
    let reachable = match check_startup_settings(cfg, &pool, &startup_settings).await {
        Ok(reachable) => reachable,
        Err(e) => {
            stream.write_all(&out).await?;
            return Err(refuse(&mut stream, e).await);
        }
    };
    let reported = server_parameters(cfg, &pool, reachable).await;
    if let Some((given, kept)) = clipped {
        build::notice_with_code(
            &mut out,
            "42622",
            &format!("identifier \"{given}\" will be truncated to \"{kept}\""),
        );
    }
    let cancel = shared.cancels.register(pool.key.user.clone());
    report_parameters(&mut out, &reported, &client_values);
    build::backend_key_data(&mut out, cancel.pid, cancel.secret);
    build::ready_for_query(&mut out, TxStatus::Idle);
    stream.write_all(&out).await?;
    stream.flush().await?;

    let limits = Limits {
        max_message_size: session::message_limit(cfg.proxy.max_message_size),
        query_wait_timeout: cfg.proxy.query_wait_timeout.into(),
        query_timeout: cfg.proxy.query_timeout.into(),
        idle_transaction_timeout: cfg.proxy.idle_transaction_timeout.into(),
        pool_mode: db.pool_mode,
        pipeline: cfg.proxy.server_pipelining,
        pipeline_threshold_us: session::micros(cfg.proxy.server_pipelining_threshold),
    };
    let session = Session::new(
        shared.clone(),
        stream.into_uring()?,
        buf,
        pool,
        Arc::from(database.as_str()),
        limits,
        cancel,
        startup_settings,
    );
    Ok(Some((session, slot)))
}

/// The parameters a server of `pool` reported at login, to report to the client as
/// its own; made up ([`fallback_parameters`]) when no server can be reached.
async fn server_parameters(cfg: &Config, pool: &Arc<Pool>, reachable: bool) -> Reported {
    match pool.reported() {
        Some(r) => r,
        None if !reachable => Arc::new(fallback_parameters()),
        None => match pool.checkout(cfg.proxy.query_wait_timeout).await {
            Ok(co) => {
                let r = co.pool().reported();
                co.release();
                r.unwrap_or_default()
            }
            Err(e) => {
                tracing::warn!(database = %pool.key.database, error = %e, "no server to learn its parameters from");
                Arc::new(fallback_parameters())
            }
        },
    }
}

/// A ParameterStatus for each of the server's `reported` parameters, with the
/// client's own value where its startup packet set one.
fn report_parameters(out: &mut BytesMut, reported: &Reported, client_values: &[(String, String)]) {
    // One allocation for them all (and the BackendKeyData and ReadyForQuery behind).
    let len: usize = reported.iter().map(|(n, v)| n.len() + v.len() + 7).sum();
    out.reserve(len + 64);
    for (name, value) in reported.iter() {
        let own = client_values
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(k, v)| {
                // Postgres reports the encoding's own name, which drivers check and
                // decode by ('utf-8' → UTF8); an unknown one is the server's to refuse.
                if k.eq_ignore_ascii_case("client_encoding") {
                    crate::server::settings::canonical_client_encoding(v)
                } else {
                    Some(v.as_str())
                }
            });
        build::parameter_status(out, name.as_bytes(), own.unwrap_or(value).as_bytes());
    }
}

/// Postgres' `cant_change_runtime_param`: the setting can be made only at connection
/// start, or not at all (`server_version`). Only the message's words, which follow
/// `lc_messages`, tell the two apart, so neither refuses a login.
const CANT_CHANGE_NOW: &str = "55P02";

const SETTING_HINT: &str = "the setting comes from this connection's startup parameters or \
                            its options (-c name=value); correct or remove it";

/// Has a server apply a login's settings (startup parameters, `options=-c ...`) once
/// per distinct set, so that a set Postgres would refuse at login is refused at login,
/// with the server's SQLSTATE and words, instead of failing on every server connection
/// the client gets later. Without a server to ask, the login goes on, and such a
/// failure reaches the client as a notice. Ok(false) when no server could be had.
async fn check_startup_settings(
    cfg: &Config,
    pool: &Arc<Pool>,
    settings: &Settings,
) -> Result<bool, PgError> {
    if !pool.taken_settings.needs_check(settings) {
        return Ok(true);
    }
    // A login does not queue long behind busy connections for this: the settings
    // are applied on the client's first server connection in any case.
    let wait = cfg
        .proxy
        .query_wait_timeout
        .min(cfg.proxy.server_connect_timeout);
    let mut co = match pool.checkout(wait).await {
        Ok(co) => co,
        Err(e) => {
            tracing::warn!(error = %e, "no server to try the login's settings on");
            return Ok(false);
        }
    };
    let conn = co.conn();
    let Some(sql) = settings.sync_sql(&conn.settings) else {
        pool.taken_settings.taken(settings);
        co.release();
        return Ok(true);
    };
    let wait = cfg.proxy.server_connect_timeout;
    match tokio::time::timeout(wait, conn.run(&sql)).await {
        Ok(Ok(())) => {
            conn.settings = settings.clone();
            pool.taken_settings.taken(settings);
            co.release();
            Ok(true)
        }
        // A setting Postgres takes only at connection start (`ignore_system_indexes`)
        // cannot be applied on a pooled connection, and Postgres would have let this
        // login in: so does pgmux, and the client hears of it as before.
        Ok(Err(ServerError::Refused { code, .. })) if code == CANT_CHANGE_NOW => {
            co.release();
            Ok(true)
        }
        // A multi-statement query is one transaction: none of the settings stayed.
        Ok(Err(ServerError::Refused { code, message })) => {
            co.release();
            Err(PgError::fatal(SqlState::of_setting_error(&code), message).with_hint(SETTING_HINT))
        }
        // The connection is in doubt and closes; the client's first statement will
        // find a server.
        _ => Ok(true),
    }
}

/// Reads what the client has sent, at least `want` bytes of room given.
async fn read_more(
    stream: &mut MaybeTls,
    buf: &mut BytesMut,
    want: usize,
) -> Result<(), LoginError> {
    buf.reserve(want);
    if stream.read_buf(buf).await? == 0 {
        return Err(LoginError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(())
}

/// Reads one tagged message during authentication.
async fn read_auth_message(
    stream: &mut MaybeTls,
    buf: &mut BytesMut,
) -> Result<Result<(u8, Bytes), PgError>, LoginError> {
    loop {
        match complete_frame(buf, MAX_AUTH_MESSAGE) {
            Ok(Some((tag, len))) => {
                let frame = buf.split_to(len).freeze();
                return Ok(Ok((tag, frame.slice(5..))));
            }
            Ok(None) => {}
            Err(e) => {
                return Ok(Err(PgError::fatal(
                    SqlState::PROTOCOL_VIOLATION,
                    e.to_string(),
                )))
            }
        }
        read_more(stream, buf, 1024).await?;
    }
}

async fn expect_password(stream: &mut MaybeTls, buf: &mut BytesMut) -> Result<Bytes, LoginError> {
    match read_auth_message(stream, buf).await? {
        Ok((fe::PASSWORD, body)) => Ok(body),
        Ok((tag, _)) => {
            let e = PgError::fatal(
                SqlState::PROTOCOL_VIOLATION,
                format!(
                    "expected a password message, got message type {:?}",
                    tag as char
                ),
            );
            Err(refuse(stream, e).await)
        }
        Err(e) => Err(refuse(stream, e).await),
    }
}

fn auth_failed(user: &str) -> PgError {
    PgError::fatal(
        SqlState::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    )
}

/// A SCRAM exchange the client broke, as Postgres reports it: a message that breaks
/// the protocol is 08P01, channel binding that fails is 28000.
fn scram_error(e: AuthError) -> PgError {
    let hint = match e {
        AuthError::ChannelBindingCheck => {
            "the client's TLS connection does not end at pgmux; connect to pgmux directly, not through another TLS endpoint"
        }
        AuthError::ChannelBindingNegotiation => {
            "something between the client and pgmux removed SCRAM-SHA-256-PLUS from the offer; connect to pgmux directly"
        }
        AuthError::Unsupported(_) => {
            return PgError::fatal(SqlState::FEATURE_NOT_SUPPORTED, e.to_string())
        }
        _ => return PgError::fatal(SqlState::PROTOCOL_VIOLATION, e.to_string()),
    };
    PgError::fatal(SqlState::INVALID_AUTHORIZATION, e.to_string()).with_hint(hint)
}

async fn authenticate(
    shared: &Shared,
    method: AuthMethod,
    (stream, end_point): (&mut MaybeTls, Option<Arc<[u8]>>),
    buf: &mut BytesMut,
    user_name: &str,
    user: Option<&UserEntry>,
) -> Result<BytesMut, LoginError> {
    let mut out = BytesMut::new();
    let secret = user.map(|u| &u.secret);
    let use_md5 = match method {
        AuthMethod::Trust => {
            if user.is_none() {
                return Err(refuse(stream, auth_failed(user_name)).await);
            }
            build::auth_ok(&mut out);
            return Ok(out);
        }
        // Unknown users get the md5 request too: the kind of request must not
        // tell which user names exist.
        AuthMethod::Md5 => secret.is_none_or(|s| s.md5_hash.is_some()),
        AuthMethod::ScramSha256 => {
            secret.is_some_and(|s| s.scram.is_none() && s.md5_hash.is_some())
        }
    };
    if use_md5 {
        md5_exchange(stream, buf, &mut out, user_name, user).await?;
    } else {
        scram_exchange(shared, (stream, end_point), buf, &mut out, user_name, user).await?;
    }
    // Sent together with the login reply that follows, in one write.
    build::auth_ok(&mut out);
    Ok(out)
}

/// The md5 exchange: the salted hash of the user's password, or a refusal. Leaves
/// `out` empty for the login reply.
async fn md5_exchange(
    stream: &mut MaybeTls,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    user_name: &str,
    user: Option<&UserEntry>,
) -> Result<(), LoginError> {
    let salt: [u8; 4] = rand::random();
    build::auth_md5(out, salt);
    stream.write_all(out).await?;
    let body = expect_password(stream, buf).await?;
    // As Postgres: the message holds one string and its terminator, no more.
    if body.iter().position(|&b| b == 0) != Some(body.len().wrapping_sub(1)) {
        let e = PgError::fatal(SqlState::PROTOCOL_VIOLATION, "invalid password packet size")
            .with_hint("the password message must hold one zero-terminated string");
        return Err(refuse(stream, e).await);
    }
    out.clear();
    let hash = user
        .map(|u| &u.secret)
        .and_then(|s| s.md5_hash.as_deref())
        .unwrap_or_default();
    if user.is_none() || !crate::auth::md5::verify(hash, salt, &body) {
        return Err(refuse(stream, auth_failed(user_name)).await);
    }
    Ok(())
}

/// The SCRAM exchange, bound to the TLS connection when it gives `end_point` data
/// and the client chooses SCRAM-SHA-256-PLUS. Unknown users go through the same
/// exchange with a made-up secret, so a client cannot tell which user names exist.
/// Leaves the server-final message in `out`.
async fn scram_exchange(
    shared: &Shared,
    (stream, end_point): (&mut MaybeTls, Option<Arc<[u8]>>),
    buf: &mut BytesMut,
    out: &mut BytesMut,
    user_name: &str,
    user: Option<&UserEntry>,
) -> Result<(), LoginError> {
    let scram_secret = user
        .map(|u| &u.secret)
        .and_then(|s| s.scram.clone())
        .unwrap_or_else(|| shared.mock_scram_secret(user_name));
    let server_key = scram_secret.server_key;
    let mut server = ScramServer::with_end_point(scram_secret, end_point);
    build::auth_sasl(out, server.mechanisms());
    stream.write_all(out).await?;
    let body = expect_password(stream, buf).await?;
    // The mechanism, then the initial response: its length and exactly that many
    // bytes (Postgres refuses a message with bytes missing or left over).
    let parsed = crate::protocol::msg::cstr(&body).and_then(|(mech, rest)| {
        let (len, data) = rest.split_first_chunk::<4>()?;
        (usize::try_from(i32::from_be_bytes(*len)).ok()? == data.len()).then_some((mech, data))
    });
    let Some((mech, data)) = parsed else {
        let e = PgError::fatal(
            SqlState::PROTOCOL_VIOLATION,
            "malformed SASLInitialResponse",
        );
        return Err(refuse(stream, e).await);
    };
    if server.select(mech).is_err() {
        let e = PgError::fatal(
            SqlState::PROTOCOL_VIOLATION,
            "client selected an invalid SASL authentication mechanism",
        )
        .with_hint(format!(
            "pgmux offers {} on this connection",
            server.mechanisms().join(" and ")
        ));
        return Err(refuse(stream, e).await);
    }
    let first = match server.client_first(data) {
        Ok(f) => f,
        Err(e) => return Err(refuse(stream, scram_error(e)).await),
    };
    out.clear();
    build::auth_sasl_continue(out, &first);
    stream.write_all(out).await?;
    let body = expect_password(stream, buf).await?;
    let (last, client_key) = match server.client_final(&body) {
        Ok(r) if user.is_some() => r,
        // As Postgres: a message that breaks the exchange is a protocol violation,
        // whoever the user; only a proof that does not match is a wrong password.
        Err(
            e @ (AuthError::Malformed(_)
            | AuthError::ChannelBindingCheck
            | AuthError::ChannelBindingNegotiation),
        ) => return Err(refuse(stream, scram_error(e)).await),
        _ => return Err(refuse(stream, auth_failed(user_name)).await),
    };
    if let Some(u) = user {
        u.offer_scram_keys(client_key, server_key);
    }
    out.clear();
    build::auth_sasl_final(out, &last);
    Ok(())
}

/// The `server_version` of [`fallback_parameters`]. Drivers read it at connect
/// (asyncpg and JDBC fail without it) and pick their queries by it, so it names an
/// old release: a driver that takes the server for older than it is keeps to what
/// every newer one also understands.
const FALLBACK_SERVER_VERSION: &str = "12.0";

/// What pgmux reports at login when no server could be reached to learn the real
/// values; the client's statements then fail with 08006 until the server is back.
fn fallback_parameters() -> Vec<(String, String)> {
    [
        ("server_version", FALLBACK_SERVER_VERSION),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("IntervalStyle", "postgres"),
        ("server_encoding", "UTF8"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle client costs its task's future plus what the session owns, so the
    /// future must stay small (PgBouncer holds an idle client in about 1 KB).
    #[tokio::test]
    async fn a_client_task_stays_small() {
        let cfg = Config::from_toml_str(
            "[[users]]\nname = \"u\"\npassword = \"p\"\n[databases.d]\n[[databases.d.shards]]\nprimary = \"127.0.0.1:1/d\"\n",
            None,
        )
        .expect("valid config");
        let shared = Shared::new(cfg).expect("shared state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let fut = serve(shared, Accepted::Tcp(tcp));
        let size = std::mem::size_of_val(&fut);
        eprintln!(
            "client task future: {size} bytes; session: {} bytes; checkout: {} bytes; server conn: {} bytes; tls: {} bytes",
            std::mem::size_of::<Session>(),
            std::mem::size_of::<crate::pool::Checkout>(),
            std::mem::size_of::<crate::server::ServerConn>(),
            std::mem::size_of::<crate::tls::MaybeTls>(),
        );
        // 800 bytes when last measured. The wrappers of `workers.rs` make it 904 on
        // the accepting worker and 912 on the others (release build), and with
        // tokio's task header and trailer the task is 1,024 bytes. A wrapped future
        // over 920 bytes makes the task 1,152 (tokio aligns it to 128) and moves the
        // allocation up a size class: 256 bytes more per idle client.
        assert!(size <= 832, "client task future is {size} bytes");
    }
}
