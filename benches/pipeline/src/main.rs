//! `pgmux-pipeline URL CONNECTIONS DEPTH SECONDS`: keeps DEPTH prepared selects in
//! flight on each of CONNECTIONS connections for SECONDS, then prints the number of
//! statements answered. tokio-postgres sends each request as its own
//! Bind/Execute/Sync as soon as it is issued, so a connection's requests queue on the
//! server's socket behind the one it is running.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, connections, depth, seconds] = &args[..] else {
        return Err("usage: pgmux-pipeline URL CONNECTIONS DEPTH SECONDS".into());
    };
    let (connections, depth): (usize, usize) = (connections.parse()?, depth.parse()?);
    let deadline = Instant::now() + Duration::from_secs(seconds.parse()?);
    let answered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        let client = Arc::new(client);
        let select = client
            .prepare("SELECT abalance FROM pgbench_accounts WHERE aid = $1")
            .await?;
        for _ in 0..depth {
            let (client, select, answered) = (client.clone(), select.clone(), answered.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let aid: i32 = rand::random_range(1..=1_000_000);
                    client.query_opt(&select, &[&aid]).await?;
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<(), tokio_postgres::Error>(())
            }));
        }
    }
    for task in tasks {
        task.await??;
    }
    println!("{}", answered.load(Ordering::Relaxed));
    Ok(())
}
