//! Long statements on the shared primary, found while they run and cancelled: for
//! the tests of query cancellation.

use std::io::{Read, Write};
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use super::{poll_until, shared_primary, wire, Pgmux};

/// How long a test waits for a statement to start or a cancel to land.
const PATIENCE: Duration = Duration::from_secs(30);

/// Starts `select pg_sleep(30)` tagged with `marker` on `client` and returns once it
/// runs on a server: the client's cancel token and the statement's outcome to come.
pub async fn start_long_sleep(
    client: tokio_postgres::Client,
    marker: &'static str,
) -> (
    tokio_postgres::CancelToken,
    tokio::task::JoinHandle<Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>>,
) {
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move {
        client
            .simple_query(&format!("select pg_sleep(30) /* {marker} */"))
            .await
    });
    wait_until_running_async(marker).await;
    (token, sleeper)
}

/// Cancels a sleep from [`start_long_sleep`] and checks that it ended with 57014.
pub async fn cancel_long_sleep(
    token: tokio_postgres::CancelToken,
    sleeper: tokio::task::JoinHandle<
        Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>,
    >,
) {
    token.cancel_query(NoTls).await.unwrap();
    let err = sleeper
        .await
        .unwrap()
        .expect_err("the statement was cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
}

/// The pid of the backend running a statement that contains `marker`, once one
/// is active; panics after [`PATIENCE`].
pub fn wait_until_running(marker: &str) -> i32 {
    let mut pid = None;
    let found = poll_until(PATIENCE, || {
        pid = running_pid(marker);
        pid.is_some()
    });
    assert!(found, "no statement containing {marker:?} started running");
    pid.expect("found")
}

/// [`wait_until_running`] from async code, off the runtime's threads.
pub async fn wait_until_running_async(marker: &'static str) -> i32 {
    tokio::task::spawn_blocking(move || wait_until_running(marker))
        .await
        .unwrap()
}

pub fn running_pid(marker: &str) -> Option<i32> {
    shared_primary()
        .sql(
            "postgres",
            &format!(
                "select pid from pg_stat_activity where state = 'active' \
                 and query like '%{marker}%' and pid <> pg_backend_pid()"
            ),
        )
        .lines()
        .next()
        .map(|l| l.trim().parse().unwrap())
}

/// Waits until pgmux has read every byte `client` sent: its query has reached
/// Sends a CancelRequest on a connection of its own and waits until pgmux closes
/// it.
pub fn send_raw_cancel(px: &Pgmux, bytes: &[u8]) {
    let mut tcp = wire::tcp(px.port);
    tcp.write_all(bytes).unwrap();
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest);
    assert!(rest.is_empty(), "a cancel gets no reply: {rest:?}");
}

pub fn random_key() -> (i32, i32) {
    // Good enough for a made-up key: the clock's nanoseconds and our pid.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let pid = (nanos as i32 & 0x3fff_ffff) | 1;
    (
        pid,
        (std::process::id() as i32).wrapping_mul(nanos as i32 | 1),
    )
}
