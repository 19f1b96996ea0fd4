//! The `pgmux` command line: run the proxy, check a config, or ask which shard owns a key.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pgmux::config::Config;

#[derive(Parser)]
#[command(name = "pgmux", version, about = "A connection-pooling Postgres proxy")]
struct Cli {
    /// The config file (falls back to $PGMUX_CONFIG, then config/pgmux.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config file: print every problem with its key path.
    Check,
    /// Print the shard index (0-based) that owns KEY in a sharded database.
    Shard {
        #[arg(long)]
        database: String,
        key: String,
    },
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .or_else(|| std::env::var_os("PGMUX_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("config/pgmux.toml"))
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        for e in &errors.0 {
            eprintln!("{}: {e}", path.display());
        }
        ExitCode::from(1)
    })
}

// Every transaction allocates and frees a few buffers and boxed handlers; mimalloc's
// per-thread free lists make that a pointer pop where glibc's bins cost measurably.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = config_path(&cli);
    match &cli.command {
        Some(Command::Check) => match load(&path) {
            Ok(_) => {
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Some(Command::Shard { database, key }) => {
            let cfg = match load(&path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match cfg.database(database) {
                None => {
                    eprintln!("database \"{database}\" is not in {}", path.display());
                    ExitCode::from(1)
                }
                Some(db) if db.sharding_key.is_none() || db.shards.len() < 2 => {
                    println!("database \"{database}\" is not sharded: every key is on shard 0");
                    let _ = key;
                    ExitCode::SUCCESS
                }
                Some(_) => {
                    eprintln!("sharding is not available in this version of pgmux");
                    ExitCode::from(1)
                }
            }
        }
        None => {
            let cfg = match load(&path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            pgmux::observe::init_logging(cfg.proxy.log_format);
            let workers = pgmux::workers::count(cfg.proxy.workers);
            let uring = pgmux::uring::init(workers);
            tracing::debug!(workers, io_uring = uring, "event loops");
            // The main thread is worker 0: it also runs the Unix-domain socket's accept
            // loop, signals and the metrics endpoint.
            let rt = match pgmux::workers::runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            let result = rt.block_on(async {
                let shared = pgmux::proxy::Shared::new(cfg)?;
                let loops = pgmux::workers::Workers::start(workers)
                    .map_err(pgmux::proxy::StartError::Runtime)?;
                let result = pgmux::proxy::run(shared, &loops).await;
                Ok::<_, pgmux::proxy::StartError>((result, loops))
            });
            let result = match result {
                Ok((result, loops)) => {
                    // Replies and FATAL notices handed to io_uring go out before the
                    // exit, on every worker.
                    loops.stop();
                    rt.block_on(pgmux::uring::drain(std::time::Duration::from_secs(2)));
                    result
                }
                Err(e) => Err(e),
            };
            rt.shutdown_timeout(std::time::Duration::from_millis(200));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("pgmux: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
