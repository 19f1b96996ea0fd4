//! Reading the TOML file into [`Config`], collecting every problem with its key path.
//!
//! Loading runs in three passes, and only the first can stop the others:
//!
//! 1. **Syntax.** `toml` parses the text into a table. A syntax error is reported alone
//!    (with toml's line, column and snippet): nothing after it can be trusted.
//! 2. **Shape.** Each section — `[proxy]`, `[tls]`, `[upstream_tls]`, every `[[users]]`
//!    entry, every `[databases.NAME]` and every one of its `shards` — is deserialized
//!    on its own into a raw serde struct with `deny_unknown_fields`, through
//!    `serde_path_to_error` so that each error carries its full key path
//!    (`databases.tenants.shards[1].primary`). Units, addresses and keywords are parsed
//!    here too. When a key is wrong it is reported, removed, and the section read again,
//!    so one typo never hides the next.
//! 3. **Meaning.** Rules that span keys (`min_pool_size <= pool_size`, `tls.mode =
//!    "require"` needs `cert` and `key`, unique user names, ...) are checked on what
//!    was read, each problem again with its key path. Defaults fill omitted keys.
//!
//! Files named in the config (TLS certificates and keys) are not opened here: that
//! happens when TLS starts, so `pgmux check` can run on another machine.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

use super::{
    AuthMethod, Config, DatabaseConfig, LoadBalance, LogFormat, Password, PoolMode, ProxyConfig,
    ReplicaLag, ServerAddr, ShardConfig, ShardingKeyType, TlsConfig, TlsMode, UpstreamTlsConfig,
    UpstreamTlsMode, UserConfig,
};
use crate::auth::scram::ScramSecret;

mod shape;
#[cfg(test)]
mod tests;

use shape::*;

/// One problem in a config file: where (`proxy.query_wait_timeout`, `users[0].nmae`;
/// empty for the file as a whole) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

/// Every problem found in a config file, in a stable order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// Defaults for omitted keys (CONTRACT.md section 2).
const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 6432));
const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9930));
const DEFAULT_MAX_CLIENT_CONN: usize = 10_000;
const DEFAULT_CLIENT_LOGIN_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_QUERY_WAIT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_SERVER_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_SERVER_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_SERVER_LIFETIME: Duration = Duration::from_secs(3600);
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_MAX_MESSAGE_SIZE: u64 = 64 * 1024 * 1024;
const DEFAULT_MAX_PREPARED_STATEMENTS: usize = 200;
const DEFAULT_SERVER_PIPELINING_THRESHOLD: Duration = Duration::from_millis(2);
const DEFAULT_POOL_SIZE: usize = 20;
const DEFAULT_MAX_REPLICA_LAG: ReplicaLag = ReplicaLag::Bytes(10 * 1024 * 1024);

/// Postgres itself refuses allocations of 1 GiB or more (`MaxAllocSize`), so no
/// message a server would accept is bigger; below 1 KiB ordinary queries fail.
const MIN_MESSAGE_SIZE: usize = 1024;
const MAX_MESSAGE_SIZE: usize = 1024 * 1024 * 1024;

/// The database name clients use for the admin console (CONTRACT.md section 6).
const ADMIN_DATABASE: &str = "pgmux";

const SECTIONS: &[&str] = &["proxy", "tls", "upstream_tls", "users", "databases"];

impl Config {
    /// Parses and validates a config file's text. `path` is only remembered, for
    /// reloads. Every problem is returned, each with its key path.
    ///
    /// `[tls]` absent or with `mode = "disable"` gives `tls: None`; `[upstream_tls]`
    /// absent gives `upstream_tls: None`.
    pub fn from_toml_str(text: &str, path: Option<PathBuf>) -> Result<Config, ConfigErrors> {
        let table: Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: e.to_string().trim_end().to_string(),
            }])
        })?;
        let mut problems = Problems::default();
        let root = KeyPath::default();

        for key in table.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                let expected: Vec<String> = SECTIONS.iter().map(|s| format!("`{s}`")).collect();
                let rest = format!(" `{key}`, expected one of {}", expected.join(", "));
                problems.add(&root.key(key), unknown_key_message(key, &rest));
            }
        }

        let proxy_raw = match table.get("proxy") {
            Some(value) => read_section::<RawProxy>(value, &root.key("proxy"), &mut problems),
            None => Some(RawProxy::default()),
        };
        let proxy = build_proxy(
            proxy_raw.unwrap_or_default(),
            &root.key("proxy"),
            &mut problems,
        );

        let tls = table
            .get("tls")
            .and_then(|value| read_section::<RawTls>(value, &root.key("tls"), &mut problems))
            .and_then(|raw| build_tls(raw, &root.key("tls"), &mut problems));

        let upstream_tls = table
            .get("upstream_tls")
            .and_then(|value| {
                read_section::<RawUpstreamTls>(value, &root.key("upstream_tls"), &mut problems)
            })
            .map(|raw| build_upstream_tls(raw, &root.key("upstream_tls"), &mut problems));

        let users = match table.get("users") {
            Some(value) => read_users(value, &root.key("users"), &proxy, &mut problems),
            None => Vec::new(),
        };

        let databases = match table.get("databases") {
            Some(value) => read_databases(value, &root.key("databases"), &proxy, &mut problems),
            None => BTreeMap::new(),
        };

        if !problems.0.is_empty() {
            return Err(ConfigErrors(problems.0));
        }
        Ok(Config {
            path,
            proxy,
            tls,
            upstream_tls,
            users,
            databases,
        })
    }

    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: format!("cannot read config file {}: {e}", path.display()),
            }])
        })?;
        Config::from_toml_str(&text, Some(path.to_path_buf()))
    }
}

// ---------------------------------------------------------------------------------
// Key paths and the problem list
// ---------------------------------------------------------------------------------

/// A key path as `pgmux check` prints it: `databases.tenants.shards[1].primary`.
#[derive(Debug, Clone, Default)]
struct KeyPath(String);

impl KeyPath {
    fn key(&self, key: &str) -> KeyPath {
        let bare = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let key = if bare {
            key.to_string()
        } else {
            format!("{key:?}")
        };
        if self.0.is_empty() {
            KeyPath(key)
        } else {
            KeyPath(format!("{}.{key}", self.0))
        }
    }

    fn index(&self, index: usize) -> KeyPath {
        KeyPath(format!("{}[{index}]", self.0))
    }

    fn join(&self, path: &serde_path_to_error::Path) -> KeyPath {
        path.iter()
            .fold(self.clone(), |acc, segment| match segment {
                serde_path_to_error::Segment::Seq { index } => acc.index(*index),
                serde_path_to_error::Segment::Map { key } => acc.key(key),
                serde_path_to_error::Segment::Enum { variant } => acc.key(variant),
                serde_path_to_error::Segment::Unknown => acc,
            })
    }
}

#[derive(Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    fn add(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.0.clone(),
            message: message.into(),
        });
    }
}

// ---------------------------------------------------------------------------------
// Pass 3: meaning, and defaults
// ---------------------------------------------------------------------------------

fn build_proxy(raw: RawProxy, path: &KeyPath, problems: &mut Problems) -> ProxyConfig {
    let or = |value: Option<Dur>, default: Duration| value.map_or(default, |d| d.0);
    let max_message_size = raw
        .max_message_size
        .map_or(DEFAULT_MAX_MESSAGE_SIZE, |s| s.0);
    let proxy = ProxyConfig {
        listen: raw.listen.map_or(DEFAULT_LISTEN, |l| l.0),
        metrics_listen: raw
            .metrics_listen
            .map_or(Some(DEFAULT_METRICS_LISTEN), |m| m.0),
        pool_mode: raw.pool_mode.unwrap_or(PoolMode::Transaction),
        max_client_conn: raw.max_client_conn.unwrap_or(DEFAULT_MAX_CLIENT_CONN),
        workers: raw.workers.unwrap_or(0),
        auth_method: raw.auth_method.unwrap_or(AuthMethod::ScramSha256),
        admin_users: raw.admin_users.unwrap_or_default(),
        client_login_timeout: or(raw.client_login_timeout, DEFAULT_CLIENT_LOGIN_TIMEOUT),
        query_wait_timeout: or(raw.query_wait_timeout, DEFAULT_QUERY_WAIT_TIMEOUT),
        idle_transaction_timeout: or(raw.idle_transaction_timeout, Duration::ZERO),
        query_timeout: or(raw.query_timeout, Duration::ZERO),
        server_connect_timeout: or(raw.server_connect_timeout, DEFAULT_SERVER_CONNECT_TIMEOUT),
        server_idle_timeout: or(raw.server_idle_timeout, DEFAULT_SERVER_IDLE_TIMEOUT),
        server_lifetime: or(raw.server_lifetime, DEFAULT_SERVER_LIFETIME),
        shutdown_timeout: or(raw.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT),
        health_check_interval: or(raw.health_check_interval, DEFAULT_HEALTH_CHECK_INTERVAL),
        // Beyond usize only on 32-bit targets, where it is out of range anyway.
        max_message_size: usize::try_from(max_message_size).unwrap_or(usize::MAX),
        log_format: raw.log_format.unwrap_or(LogFormat::Text),
        max_prepared_statements: raw
            .max_prepared_statements
            .unwrap_or(DEFAULT_MAX_PREPARED_STATEMENTS),
        unix_socket_dir: raw.unix_socket_dir.filter(|d| !d.as_os_str().is_empty()),
        server_pipelining: raw.server_pipelining.unwrap_or(true),
        server_pipelining_threshold: or(
            raw.server_pipelining_threshold,
            DEFAULT_SERVER_PIPELINING_THRESHOLD,
        ),
    };
    check_proxy(&proxy, path, problems);
    proxy
}

fn check_proxy(proxy: &ProxyConfig, path: &KeyPath, problems: &mut Problems) {
    if proxy.metrics_listen == Some(proxy.listen) {
        problems.add(
            &path.key("metrics_listen"),
            "is the same address as listen; give the HTTP endpoint its own port",
        );
    }
    if proxy.max_client_conn == 0 {
        problems.add(&path.key("max_client_conn"), "must be at least 1");
    }
    if let (Some(dir), Some(socket)) = (
        &proxy.unix_socket_dir,
        proxy.unix_socket_path(proxy.listen.port()),
    ) {
        // sun_path holds 108 bytes, its terminating NUL included.
        if socket.as_os_str().len() > 107 {
            problems.add(
                &path.key("unix_socket_dir"),
                format!(
                    "the socket path {} is longer than the 107 bytes a Unix-domain socket allows; choose a shorter directory",
                    socket.display()
                ),
            );
        } else if !dir.is_dir() {
            problems.add(
                &path.key("unix_socket_dir"),
                format!("{} is not a directory", dir.display()),
            );
        }
    }
    for (i, name) in proxy.admin_users.iter().enumerate() {
        let entry = path.key("admin_users").index(i);
        if name.is_empty() {
            problems.add(&entry, "is empty; write a user name");
        } else if proxy.admin_users[..i].contains(name) {
            problems.add(&entry, format!("{name:?} is listed twice"));
        }
    }
    // Zero means "off" for idle_transaction_timeout and query_timeout, and "don't
    // wait" for shutdown_timeout; for the rest it would fail every connection.
    let must_be_positive = [
        ("client_login_timeout", proxy.client_login_timeout),
        ("query_wait_timeout", proxy.query_wait_timeout),
        ("server_connect_timeout", proxy.server_connect_timeout),
        ("server_idle_timeout", proxy.server_idle_timeout),
        ("server_lifetime", proxy.server_lifetime),
        ("health_check_interval", proxy.health_check_interval),
    ];
    for (key, value) in must_be_positive {
        if value.is_zero() {
            problems.add(
                &path.key(key),
                "must be longer than 0s (only idle_transaction_timeout and query_timeout \
                 use 0 for off)",
            );
        }
    }
    if !(MIN_MESSAGE_SIZE..=MAX_MESSAGE_SIZE).contains(&proxy.max_message_size) {
        problems.add(
            &path.key("max_message_size"),
            "must be between 1KiB and 1GiB (Postgres accepts no message of 1GiB or more)",
        );
    }
    if proxy.max_prepared_statements == 0 {
        problems.add(
            &path.key("max_prepared_statements"),
            "must be at least 1: prepared statements need room on each server connection",
        );
    }
}

/// `None` when TLS towards clients is off (`mode = "disable"`).
fn build_tls(raw: RawTls, path: &KeyPath, problems: &mut Problems) -> Option<TlsConfig> {
    let mode = raw.mode.unwrap_or(TlsMode::Prefer);
    if mode == TlsMode::Disable {
        return None;
    }
    let mode_word = if mode == TlsMode::Require {
        "require"
    } else {
        "prefer"
    };
    let mut file = |key: &str, value: Option<PathBuf>, what: &str| match value {
        Some(file) if !file.as_os_str().is_empty() => Some(file),
        _ => {
            problems.add(
                &path.key(key),
                format!("missing: tls.mode = \"{mode_word}\" needs the server's {what} file (PEM)"),
            );
            None
        }
    };
    let cert = file("cert", raw.cert, "certificate");
    let key = file("key", raw.key, "private key");
    Some(TlsConfig {
        mode,
        cert: cert?,
        key: key?,
    })
}

fn build_upstream_tls(
    raw: RawUpstreamTls,
    path: &KeyPath,
    problems: &mut Problems,
) -> UpstreamTlsConfig {
    let mode = raw.mode.unwrap_or(UpstreamTlsMode::Disable);
    let ca = raw.ca.filter(|ca| !ca.as_os_str().is_empty());
    if mode == UpstreamTlsMode::VerifyFull && ca.is_none() {
        problems.add(
            &path.key("ca"),
            "missing: upstream_tls.mode = \"verify-full\" needs the CA certificate file (PEM) \
             that signed the servers' certificates",
        );
    }
    UpstreamTlsConfig { mode, ca }
}

fn read_users(
    value: &Value,
    path: &KeyPath,
    proxy: &ProxyConfig,
    problems: &mut Problems,
) -> Vec<UserConfig> {
    let Some(entries) = value.as_array() else {
        problems.add(
            path,
            format!(
                "expected an array of tables ([[users]]), found {}",
                kind_of(value)
            ),
        );
        return Vec::new();
    };
    let mut users: Vec<UserConfig> = Vec::new();
    let mut first_index: BTreeMap<String, usize> = BTreeMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let entry_path = path.index(i);
        let Some(raw) = read_section::<RawUser>(entry, &entry_path, problems) else {
            continue;
        };
        let Some(user) = build_user(raw, &entry_path, proxy, problems) else {
            continue;
        };
        if let Some(first) = first_index.get(&user.name) {
            problems.add(
                &entry_path.key("name"),
                format!("user {:?} is already defined at users[{first}]", user.name),
            );
            continue;
        }
        first_index.insert(user.name.clone(), i);
        users.push(user);
    }
    users
}

fn build_user(
    raw: RawUser,
    path: &KeyPath,
    proxy: &ProxyConfig,
    problems: &mut Problems,
) -> Option<UserConfig> {
    let mut ok = true;
    if raw.name.is_empty() {
        problems.add(
            &path.key("name"),
            "is empty; write the user name clients log in with",
        );
        ok = false;
    }
    let password = classify_password(raw.password);
    let auth_method = raw.auth_method.unwrap_or(proxy.auth_method);
    match &password {
        Password::Plain(p) if p.is_empty() => {
            problems.add(
                &path.key("password"),
                "is empty; write the password, or a SCRAM-SHA-256 verifier",
            );
            ok = false;
        }
        Password::ScramVerifier(verifier) => {
            // The same parser logins use, so a verifier that loads is one that works.
            if let Err(error) = ScramSecret::parse_verifier(verifier) {
                problems.add(&path.key("password"), error.to_string());
                ok = false;
            }
        }
        Password::Md5Hash(_) if auth_method == AuthMethod::ScramSha256 => {
            let whose = if raw.auth_method.is_some() {
                "this user's auth_method"
            } else {
                "proxy.auth_method"
            };
            problems.add(
                &path.key("password"),
                format!(
                    "is an md5 hash, which cannot check a SCRAM-SHA-256 login \
                     ({whose} = \"scram-sha-256\"); write the plain password or a \
                     SCRAM-SHA-256 verifier, or set auth_method = \"md5\""
                ),
            );
            ok = false;
        }
        _ => {}
    }
    let server_user = raw.server_user.unwrap_or_else(|| raw.name.clone());
    if server_user.is_empty() {
        problems.add(
            &path.key("server_user"),
            "is empty; leave it out to log in to Postgres as name",
        );
        ok = false;
    }
    let server_password = raw.server_password.or_else(|| match &password {
        Password::Plain(p) => Some(p.clone()),
        Password::ScramVerifier(_) | Password::Md5Hash(_) => None,
    });
    ok.then_some(UserConfig {
        name: raw.name,
        password,
        server_user,
        server_password,
        auth_method,
    })
}

/// Tells a stored secret from a plain password the way Postgres reads `pg_authid`.
fn classify_password(password: String) -> Password {
    let is_md5_hash = password.len() == 35
        && password.starts_with("md5")
        && password[3..].bytes().all(|b| b.is_ascii_hexdigit());
    if password.starts_with("SCRAM-SHA-256$") {
        Password::ScramVerifier(password)
    } else if is_md5_hash {
        Password::Md5Hash(password)
    } else {
        Password::Plain(password)
    }
}

fn read_databases(
    value: &Value,
    path: &KeyPath,
    proxy: &ProxyConfig,
    problems: &mut Problems,
) -> BTreeMap<String, DatabaseConfig> {
    let Some(table) = value.as_table() else {
        problems.add(
            path,
            format!(
                "expected tables ([databases.NAME]), found {}",
                kind_of(value)
            ),
        );
        return BTreeMap::new();
    };
    let mut databases = BTreeMap::new();
    for (name, value) in table {
        let db_path = path.key(name);
        if name.is_empty() {
            problems.add(&db_path, "the database name is empty");
            continue;
        }
        if name == ADMIN_DATABASE {
            problems.add(
                &db_path,
                format!("{ADMIN_DATABASE:?} is the admin console's database name; choose another"),
            );
            continue;
        }
        let raw = read_section::<RawDatabase>(value, &db_path, problems);
        let shards = match value.get("shards") {
            Some(shards) => read_shards(shards, &db_path.key("shards"), problems),
            None => Vec::new(),
        };
        // Shards that are listed but wrong have been reported already; only a
        // database with none listed is missing them.
        let listed = value
            .get("shards")
            .and_then(toml::Value::as_array)
            .is_some_and(|a| !a.is_empty());
        if let Some(raw) = raw {
            let database = build_database(name, raw, shards, listed, &db_path, proxy, problems);
            databases.insert(name.clone(), database);
        }
    }
    databases
}

fn read_shards(value: &Value, path: &KeyPath, problems: &mut Problems) -> Vec<ShardConfig> {
    let Some(entries) = value.as_array() else {
        problems.add(
            path,
            format!(
                "expected an array of tables ([[...shards]]), found {}",
                kind_of(value)
            ),
        );
        return Vec::new();
    };
    let mut shards = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let shard_path = path.index(i);
        let Some(raw) = read_section::<RawShard>(entry, &shard_path, problems) else {
            continue;
        };
        let primary = raw.primary.0;
        let mut replicas: Vec<ServerAddr> = Vec::new();
        for (j, replica) in raw.replicas.into_iter().flatten().enumerate() {
            let replica_path = shard_path.key("replicas").index(j);
            if replica.0 == primary {
                problems.add(
                    &replica_path,
                    "is the shard's primary; a replica must be another server",
                );
            } else if replicas.contains(&replica.0) {
                problems.add(&replica_path, format!("{} is listed twice", replica.0));
            } else {
                replicas.push(replica.0);
            }
        }
        shards.push((i, ShardConfig { primary, replicas }));
    }
    // Two shards on one server database would hold each other's rows.
    let mut first_index: BTreeMap<&ServerAddr, usize> = BTreeMap::new();
    for (i, shard) in &shards {
        match first_index.get(&shard.primary) {
            Some(first) => problems.add(
                &path.index(*i).key("primary"),
                format!(
                    "is also the primary of shards[{first}]; each shard needs its own database"
                ),
            ),
            None => {
                first_index.insert(&shard.primary, *i);
            }
        }
    }
    shards.into_iter().map(|(_, shard)| shard).collect()
}

fn build_database(
    name: &str,
    raw: RawDatabase,
    shards: Vec<ShardConfig>,
    shards_listed: bool,
    path: &KeyPath,
    proxy: &ProxyConfig,
    problems: &mut Problems,
) -> DatabaseConfig {
    let pool_size = raw.pool_size.unwrap_or(DEFAULT_POOL_SIZE);
    if pool_size == 0 {
        problems.add(&path.key("pool_size"), "must be at least 1");
    }
    let min_pool_size = raw.min_pool_size.unwrap_or(0);
    if min_pool_size > pool_size {
        problems.add(
            &path.key("min_pool_size"),
            format!("is {min_pool_size}, larger than pool_size ({pool_size})"),
        );
    }

    let read_only_functions = raw.read_only_functions.unwrap_or_default();
    for (i, function) in read_only_functions.iter().enumerate() {
        if function.is_empty() {
            problems.add(
                &path.key("read_only_functions").index(i),
                "is empty; write a function name",
            );
        }
    }

    let sharding_key = raw.sharding_key;
    if sharding_key.as_deref() == Some("") {
        problems.add(
            &path.key("sharding_key"),
            "is empty; write the column that names the tenant",
        );
    }
    if sharding_key.is_none() && raw.sharding_key_type.is_some() {
        problems.add(
            &path.key("sharding_key_type"),
            "has no effect without sharding_key; set sharding_key or remove this key",
        );
    }
    if shards.is_empty() && !shards_listed {
        problems.add(
            &path.key("shards"),
            format!(
                "missing: add a [[databases.{name}.shards]] entry with the primary server \
                 (host:port/dbname)"
            ),
        );
    } else if shards.len() > 1 && sharding_key.is_none() {
        problems.add(
            &path.key("sharding_key"),
            format!(
                "missing: this database has {} shards, so it needs the column that names the \
                 tenant (or keep one shard)",
                shards.len()
            ),
        );
    }

    DatabaseConfig {
        name: name.to_string(),
        pool_size,
        pool_mode: raw.pool_mode.unwrap_or(proxy.pool_mode),
        min_pool_size,
        read_write_split: raw.read_write_split.unwrap_or(false),
        read_your_writes: raw.read_your_writes.unwrap_or(false),
        max_replica_lag: raw.max_replica_lag.map_or(DEFAULT_MAX_REPLICA_LAG, |l| l.0),
        load_balance: raw.load_balance.unwrap_or(LoadBalance::LeastBusy),
        read_only_functions,
        sharding_key,
        sharding_key_type: raw.sharding_key_type.unwrap_or(ShardingKeyType::Bigint),
        shards,
    }
}
