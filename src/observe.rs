//! Logging setup and the HTTP endpoint (`metrics_listen`): `/metrics` in Prometheus
//! text format, `/healthz`.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::config::LogFormat;
use crate::proxy::Shared;

/// Logs go to stderr, one event a line; JSON objects with `log_format = "json"`.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Binds the metrics endpoint and returns the task that serves it.
pub async fn serve(
    shared: Arc<Shared>,
    addr: SocketAddr,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let handle = recorder().clone();
    let listener = TcpListener::bind(addr).await?;
    Ok(async move {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = shared.shutdown.cancelled() => return,
            };
            let Ok((mut sock, _)) = accepted else {
                continue;
            };
            let handle = handle.clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut req = [0u8; 1024];
                let n = match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    sock.read(&mut req),
                )
                .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let line = String::from_utf8_lossy(&req[..n]);
                let path = line.split_whitespace().nth(1).unwrap_or("/");
                let (status, body) = match path {
                    "/metrics" => {
                        publish_pool_counters(&shared);
                        handle.run_upkeep();
                        ("200 OK", handle.render())
                    }
                    "/healthz" => ("200 OK", "ok\n".to_string()),
                    _ => ("404 Not Found", "not found\n".to_string()),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    })
}

/// Counters the pools keep in atomics, so the relay does no metric work of its own.
fn publish_pool_counters(shared: &Shared) {
    let mut by_db: std::collections::BTreeMap<String, u64> = Default::default();
    for pool in shared.pools.all() {
        *by_db.entry(pool.key.database.to_string()).or_default() += pool.stats().handoffs;
    }
    for (database, n) in by_db {
        metrics::counter!("pgmux_pipelined_total", "database" => database).absolute(n);
    }
}
