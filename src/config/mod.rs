//! pgmux's configuration: the TOML file of CONTRACT.md section 2, parsed once into
//! typed values (durations as `Duration`, sizes as bytes, addresses as `ServerAddr`).
//!
//! Loading never stops at the first problem: [`Config::load`] returns every error with
//! its key path (`databases.app.shards[0].primary: expected host:port/dbname`), so
//! `pgmux check` can print them all. The running configuration is an immutable
//! `Arc<Config>` that a reload swaps whole.

mod load;
pub mod units;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use load::{ConfigError, ConfigErrors};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolMode {
    Session,
    Transaction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ScramSha256,
    Md5,
    Trust,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    Prefer,
    Require,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTlsMode {
    Disable,
    Prefer,
    Require,
    VerifyFull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadBalance {
    LeastBusy,
    RoundRobin,
    Random,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardingKeyType {
    Bigint,
    Integer,
    Text,
    Uuid,
}

/// `max_replica_lag`: either bytes of WAL or time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaLag {
    Bytes(u64),
    Time(Duration),
}

/// A Postgres server as written in the config: `host:port/dbname`, where `host` may
/// be the directory of a Unix-domain socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerAddr {
    pub host: String,
    pub port: u16,
    pub dbname: String,
}

impl ServerAddr {
    /// The Unix-domain socket to connect to when `host` names a directory (it starts
    /// with `/`, as in libpq): `{host}/.s.PGSQL.{port}`, where Postgres puts it.
    pub fn socket_path(&self) -> Option<PathBuf> {
        self.host
            .starts_with('/')
            .then(|| PathBuf::from(format!("{}/.s.PGSQL.{}", self.host, self.port)))
    }
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') && !self.host.starts_with('/') {
            // An IPv6 address, bracketed as in the config.
            write!(f, "[{}]:{}/{}", self.host, self.port, self.dbname)
        } else {
            write!(f, "{}:{}/{}", self.host, self.port, self.dbname)
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this was loaded from, for reloads.
    pub path: Option<PathBuf>,
    pub proxy: ProxyConfig,
    pub tls: Option<TlsConfig>,
    pub upstream_tls: Option<UpstreamTlsConfig>,
    pub users: Vec<UserConfig>,
    /// Keyed by the dbname clients put in their DATABASE_URL.
    pub databases: BTreeMap<String, DatabaseConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// `None` when `metrics_listen = ""`.
    pub metrics_listen: Option<SocketAddr>,
    pub pool_mode: PoolMode,
    pub max_client_conn: usize,
    /// 0 = one per core.
    pub workers: usize,
    pub auth_method: AuthMethod,
    pub admin_users: Vec<String>,
    pub client_login_timeout: Duration,
    pub query_wait_timeout: Duration,
    /// Zero = off.
    pub idle_transaction_timeout: Duration,
    /// Zero = off.
    pub query_timeout: Duration,
    pub server_connect_timeout: Duration,
    pub server_idle_timeout: Duration,
    pub server_lifetime: Duration,
    pub shutdown_timeout: Duration,
    pub health_check_interval: Duration,
    pub max_message_size: usize,
    pub log_format: LogFormat,
    /// Named statements kept prepared on one server connection before the least
    /// recently used is closed (PgBouncer's `max_prepared_statements`).
    pub max_prepared_statements: usize,
    /// Where to also listen on a Unix-domain socket, `.s.PGSQL.<listen port>` as
    /// libpq names it (PgBouncer's `unix_socket_dir`); `None` when unset or `""`.
    pub unix_socket_dir: Option<PathBuf>,
    /// A client's statement may be sent to a busy server connection, behind another
    /// client's statement that leaves the connection idle and unchanged, in preference
    /// to an idle connection (see `pool::follow`).
    pub server_pipelining: bool,
    /// Only a statement that averaged less than this lately is queued behind (see
    /// `pool::estimate`); zero: any statement.
    pub server_pipelining_threshold: Duration,
}

impl ProxyConfig {
    /// The Unix-domain socket's path for TCP port `port`, when one is configured.
    pub fn unix_socket_path(&self, port: u16) -> Option<PathBuf> {
        let dir = self.unix_socket_dir.as_ref()?;
        Some(dir.join(format!(".s.PGSQL.{port}")))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub mode: TlsMode,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTlsConfig {
    pub mode: UpstreamTlsMode,
    pub ca: Option<PathBuf>,
}

/// A user's password as written in the config.
#[derive(Clone, PartialEq)]
pub enum Password {
    Plain(String),
    /// A `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` verifier, as in pg_authid.
    ScramVerifier(String),
    /// An `md5<hex>` hash of password+username, as in pg_authid.
    Md5Hash(String),
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Password::Plain(_) => f.write_str("Plain(<secret>)"),
            Password::ScramVerifier(_) => f.write_str("ScramVerifier(<secret>)"),
            Password::Md5Hash(_) => f.write_str("Md5Hash(<secret>)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserConfig {
    pub name: String,
    pub password: Password,
    /// Defaults to `name`.
    pub server_user: String,
    /// Defaults to `password` when that is plain text; `None` otherwise.
    pub server_password: Option<String>,
    /// How this user logs in; already resolved against `[proxy].auth_method`.
    pub auth_method: AuthMethod,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseConfig {
    pub name: String,
    pub pool_size: usize,
    /// Already resolved against `[proxy].pool_mode`.
    pub pool_mode: PoolMode,
    pub min_pool_size: usize,
    pub read_write_split: bool,
    pub read_your_writes: bool,
    pub max_replica_lag: ReplicaLag,
    pub load_balance: LoadBalance,
    pub read_only_functions: Vec<String>,
    pub sharding_key: Option<String>,
    pub sharding_key_type: ShardingKeyType,
    pub shards: Vec<ShardConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ShardConfig {
    pub primary: ServerAddr,
    pub replicas: Vec<ServerAddr>,
}

impl Config {
    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }

    pub fn database(&self, name: &str) -> Option<&DatabaseConfig> {
        self.databases.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_print_as_written() {
        let v4 = ServerAddr {
            host: "127.0.0.1".into(),
            port: 5432,
            dbname: "app".into(),
        };
        let v6 = ServerAddr {
            host: "::1".into(),
            port: 5432,
            dbname: "app".into(),
        };
        assert_eq!(v4.to_string(), "127.0.0.1:5432/app");
        assert_eq!(v6.to_string(), "[::1]:5432/app");
    }
}
