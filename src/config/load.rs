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
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, Visitor};
use serde::Deserialize;
use toml::{Table, Value};

use super::units::{parse_duration, parse_size};
use super::{
    AuthMethod, Config, DatabaseConfig, LoadBalance, LogFormat, Password, PoolMode, ProxyConfig,
    ReplicaLag, ServerAddr, ShardConfig, ShardingKeyType, TlsConfig, TlsMode, UpstreamTlsConfig,
    UpstreamTlsMode, UserConfig,
};
use crate::auth::scram::ScramSecret;

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
// Pass 2: the shape of each section
// ---------------------------------------------------------------------------------

/// Deserializes one section (a TOML table) into its raw struct.
///
/// Every key that fails is reported and dropped, and the rest read again, so a section
/// with three bad keys gives three errors. The result is `None` only when the section
/// is unusable (not a table, or a required key missing); otherwise it holds what could
/// be read, so that pass 3 can still find problems among the good keys.
fn read_section<T: DeserializeOwned>(
    value: &Value,
    path: &KeyPath,
    problems: &mut Problems,
) -> Option<T> {
    let Some(table) = value.as_table() else {
        problems.add(path, format!("expected a table, found {}", kind_of(value)));
        return None;
    };
    let mut table = table.clone();
    let mut dropped: Vec<String> = Vec::new();
    loop {
        let error = match serde_path_to_error::deserialize(Value::Table(table.clone())) {
            Ok(raw) => return Some(raw),
            Err(error) => error,
        };
        let message = error.inner().message().to_string();
        let top_key = match error.path().iter().next() {
            Some(serde_path_to_error::Segment::Map { key }) if table.contains_key(key) => {
                Some(key.clone())
            }
            _ => None,
        };
        if let Some(key) = top_key {
            let message = match message.strip_prefix("unknown field") {
                Some(rest) => unknown_key_message(&key, rest),
                None => plain_words(message),
            };
            problems.add(&path.join(error.path()), message);
            table.remove(&key);
            dropped.push(key);
            continue;
        }
        match quoted_field(&message, "missing field `") {
            // Already reported: its value was wrong, not absent.
            Some(key) if dropped.iter().any(|d| d == key) => {}
            Some(key) => problems.add(&path.key(key), "missing; this key is required"),
            None => problems.add(&path.join(error.path()), plain_words(message)),
        }
        return None;
    }
}

/// Turns serde's ``unknown field `lsten`, expected one of `listen`, ...`` (given
/// without its first two words, as `rest`) into a suggestion when one key is close.
fn unknown_key_message(key: &str, rest: &str) -> String {
    let expected: Vec<&str> = rest
        .split_once("expected")
        .map(|(_, list)| list.split('`').skip(1).step_by(2).collect())
        .unwrap_or_default();
    let closest = expected
        .iter()
        .map(|candidate| (edit_distance(key, candidate), *candidate))
        .min();
    match closest {
        Some((distance, candidate)) if distance <= 2 && distance < key.len() => {
            format!("unknown key `{key}`; did you mean `{candidate}`?")
        }
        _ => format!("unknown key{rest}"),
    }
}

/// Levenshtein distance, for "did you mean" suggestions on short keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// Says serde's Rust words in TOML's: "expected usize" → "expected a whole number".
fn plain_words(message: String) -> String {
    const WORDS: &[(&str, &str)] = &[
        ("expected usize", "expected a whole number of 0 or more"),
        ("expected u64", "expected a whole number of 0 or more"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a table"),
        ("expected a borrowed string", "expected a string"),
    ];
    WORDS
        .iter()
        .fold(message, |message, (rust, toml)| message.replace(rust, toml))
}

/// `Some("password")` for ``missing field `password` `` when `prefix` is
/// ``missing field ` ``: serde's messages name the field this way.
fn quoted_field<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    message.strip_prefix(prefix)?.split('`').next()
}

/// "a string", "an integer", ... for messages about a value of the wrong kind.
fn kind_of(value: &Value) -> String {
    let kind = value.type_str();
    let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {kind}")
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    listen: Option<Listen>,
    metrics_listen: Option<MetricsListen>,
    pool_mode: Option<PoolMode>,
    max_client_conn: Option<usize>,
    workers: Option<usize>,
    auth_method: Option<AuthMethod>,
    admin_users: Option<Vec<String>>,
    client_login_timeout: Option<Dur>,
    query_wait_timeout: Option<Dur>,
    idle_transaction_timeout: Option<Dur>,
    query_timeout: Option<Dur>,
    server_connect_timeout: Option<Dur>,
    server_idle_timeout: Option<Dur>,
    server_lifetime: Option<Dur>,
    shutdown_timeout: Option<Dur>,
    health_check_interval: Option<Dur>,
    max_message_size: Option<Size>,
    log_format: Option<LogFormat>,
    max_prepared_statements: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    mode: Option<TlsMode>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    mode: Option<UpstreamTlsMode>,
    ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password: String,
    server_user: Option<String>,
    server_password: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    pool_size: Option<usize>,
    pool_mode: Option<PoolMode>,
    min_pool_size: Option<usize>,
    read_write_split: Option<bool>,
    read_your_writes: Option<bool>,
    max_replica_lag: Option<Lag>,
    load_balance: Option<LoadBalance>,
    read_only_functions: Option<Vec<String>>,
    sharding_key: Option<String>,
    sharding_key_type: Option<ShardingKeyType>,
    /// Read entry by entry in [`read_shards`], so each shard's errors are its own.
    #[serde(rename = "shards")]
    _shards: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShard {
    primary: Addr,
    replicas: Option<Vec<Addr>>,
}

/// Parses a value written as a string (`"5s"`, `"64MiB"`, `"host:5432/db"`) with
/// `parse`, so that its error message gets the key path like any serde error. A bare
/// TOML integer is read as its digits: `0` is fine where `"0"` is, and `5` gets the
/// same "expected ..." message as `"5"`.
struct ParseVisitor<T> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
}

impl<T> Visitor<'_> for ParseVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
}

/// A newtype around a value parsed from a string by `$parse`.
macro_rules! parsed_value {
    ($(#[$doc:meta])* $name:ident($inner:ty), $expecting:literal, $parse:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        struct $name($inner);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(ParseVisitor {
                    expecting: $expecting,
                    parse: $parse,
                })
                .map($name)
            }
        }
    };
}

parsed_value!(
    /// A duration: `"500ms"`, `"5s"`, `"10m"`, `"1h"`.
    Dur(Duration),
    "a duration such as \"5s\" (units: ms, s, m, h)",
    parse_duration
);
parsed_value!(
    /// A size in bytes: `"64MiB"`.
    Size(u64),
    "a size such as \"64MiB\" (units: B, kB, KiB, MB, MiB, GB, GiB)",
    parse_size
);
parsed_value!(
    /// `max_replica_lag`: WAL bytes (`"10MB"`) or time (`"5s"`).
    Lag(ReplicaLag),
    "a WAL size such as \"10MB\" or a time such as \"5s\"",
    parse_replica_lag
);
parsed_value!(
    /// A server as `host:port/dbname`.
    Addr(ServerAddr),
    "host:port/dbname",
    parse_server_addr
);
parsed_value!(
    /// An address to listen on.
    Listen(SocketAddr),
    "an IP address and port such as \"127.0.0.1:6432\"",
    parse_listen
);
parsed_value!(
    /// `metrics_listen`, where `""` turns the HTTP endpoint off.
    MetricsListen(Option<SocketAddr>),
    "an IP address and port such as \"127.0.0.1:9930\", or \"\" to disable",
    |s| match s {
        "" => Ok(None),
        s => parse_listen(s).map(Some),
    }
);

/// `"10MB"` → bytes of WAL; `"5s"` → time. A bare `"0"` means zero bytes: only
/// replicas that have replayed everything get reads.
fn parse_replica_lag(s: &str) -> Result<ReplicaLag, String> {
    parse_size(s)
        .map(ReplicaLag::Bytes)
        .or_else(|_| parse_duration(s).map(ReplicaLag::Time))
        .map_err(|_| {
            format!(
                "expected a WAL size such as \"10MB\" (units: B, kB, KiB, MB, MiB, GB, GiB) \
                 or a time such as \"5s\" (units: ms, s, m, h), found {s:?}"
            )
        })
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!(
            "expected an IP address and port such as \"127.0.0.1:6432\" or \"[::]:6432\", \
             found {s:?}"
        )
    })
}

/// Parses `host:port/dbname`, where host is a name, an IPv4 address, or an IPv6
/// address in brackets (`[::1]:5432/app`). The brackets are not kept in `host`.
fn parse_server_addr(s: &str) -> Result<ServerAddr, String> {
    let fail = |why: &str| {
        format!(
            "expected host:port/dbname such as \"127.0.0.1:5432/app\" or \"[::1]:5432/app\"{why}, \
             found {s:?}"
        )
    };
    let (host_port, dbname) = s.split_once('/').ok_or_else(|| fail(""))?;
    if dbname.is_empty() || dbname.contains(char::is_whitespace) {
        return Err(fail(""));
    }
    let (host, port) = if let Some(rest) = host_port.strip_prefix('[') {
        let (ip, port) = rest.split_once("]:").ok_or_else(|| fail(""))?;
        ip.parse::<Ipv6Addr>().map_err(|_| fail(""))?;
        (ip, port)
    } else {
        let (host, port) = host_port.rsplit_once(':').ok_or_else(|| fail(""))?;
        if host.contains(':') {
            return Err(fail(" (write IPv6 addresses in brackets)"));
        }
        let valid_name = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if !valid_name {
            return Err(fail(""));
        }
        (host, port)
    };
    let port = match port.parse::<u16>() {
        Ok(port) if port != 0 => port,
        _ => return Err(fail(" (the port is a number from 1 to 65535)")),
    };
    Ok(ServerAddr {
        host: host.to_string(),
        port,
        dbname: dbname.to_string(),
    })
}

/// Reads an enum from one of its keywords (`"transaction"`, `"verify-full"`).
macro_rules! keyword_enum {
    ($ty:ident { $first:literal => $first_variant:ident $(, $word:literal => $variant:ident)* $(,)? }) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                const EXPECTING: &str = concat!("one of \"", $first, "\"" $(, ", \"", $word, "\"")*);
                d.deserialize_any(ParseVisitor {
                    expecting: EXPECTING,
                    parse: |s| match s {
                        $first => Ok($ty::$first_variant),
                        $($word => Ok($ty::$variant),)*
                        _ => Err(format!("expected {EXPECTING}, found {s:?}")),
                    },
                })
            }
        }
    };
}

keyword_enum!(PoolMode { "transaction" => Transaction, "session" => Session });
keyword_enum!(AuthMethod { "scram-sha-256" => ScramSha256, "md5" => Md5, "trust" => Trust });
keyword_enum!(LogFormat { "text" => Text, "json" => Json });
keyword_enum!(TlsMode { "disable" => Disable, "prefer" => Prefer, "require" => Require });
keyword_enum!(UpstreamTlsMode {
    "disable" => Disable,
    "prefer" => Prefer,
    "require" => Require,
    "verify-full" => VerifyFull,
});
keyword_enum!(LoadBalance {
    "least_busy" => LeastBusy,
    "round_robin" => RoundRobin,
    "random" => Random,
});
keyword_enum!(ShardingKeyType {
    "bigint" => Bigint,
    "integer" => Integer,
    "text" => Text,
    "uuid" => Uuid,
});

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
        Password::Md5Hash(_) if proxy.auth_method == AuthMethod::ScramSha256 => {
            problems.add(
                &path.key("password"),
                "is an md5 hash, which cannot check a SCRAM-SHA-256 login \
                 (proxy.auth_method = \"scram-sha-256\"); write the plain password or a \
                 SCRAM-SHA-256 verifier, or set auth_method = \"md5\"",
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// The full example of CONTRACT.md section 2, verbatim.
    const CONTRACT_EXAMPLE: &str = r#"
[proxy]
listen = "127.0.0.1:6432"          # Postgres clients connect here
metrics_listen = "127.0.0.1:9930"  # HTTP: /metrics /healthz /readyz ("" disables)
pool_mode = "transaction"          # "transaction" | "session"
max_client_conn = 10000            # more clients get FATAL 53300
workers = 0                        # runtime threads; 0 = one per core
auth_method = "scram-sha-256"      # clients: "scram-sha-256" | "md5" | "trust"
admin_users = ["admin"]            # may use the admin console (database "pgmux")
client_login_timeout = "5s"        # startup+auth must finish within this
query_wait_timeout = "30s"         # longest a client waits for a server connection
idle_transaction_timeout = "0s"    # 0 = off; idle-in-transaction clients are cut off
query_timeout = "0s"               # 0 = off; cancels a statement running longer
server_connect_timeout = "3s"
server_idle_timeout = "600s"
server_lifetime = "3600s"
shutdown_timeout = "30s"           # SIGTERM: wait this long for open transactions
health_check_interval = "1s"       # probes primaries/replicas; also measures replica lag
max_message_size = "64MiB"         # bigger messages from clients are refused (08P01)
log_format = "text"                # "text" | "json"

[tls]                               # optional: TLS towards clients (SSLRequest)
mode = "prefer"                     # "disable" | "prefer" | "require"
cert = "config/tls/server.crt"
key = "config/tls/server.key"

[upstream_tls]                      # optional: TLS towards Postgres servers
mode = "disable"                    # "disable" | "prefer" | "require" | "verify-full"
ca = "config/tls/ca.crt"

[[users]]                           # who may connect, and how pgmux logs in upstream
name = "app"
password = "app-secret"             # plain text or a "SCRAM-SHA-256$..." verifier
server_user = "app"                 # optional; defaults to name
server_password = "app-secret"      # optional; defaults to password when it is plain

[databases.app]                     # the dbname in the client's DATABASE_URL
pool_size = 20                      # server connections per (user, server)
pool_mode = "transaction"           # optional; overrides [proxy].pool_mode for this database
min_pool_size = 0
read_write_split = true             # reads may go to replicas
read_your_writes = true             # see 5.3
max_replica_lag = "10MB"            # bytes ("10MB") or time ("5s"); lagging replicas get no reads
load_balance = "least_busy"         # "least_busy" | "round_robin" | "random"
read_only_functions = ["now", "lower"]  # functions that are safe on a replica (built-in reads are known)

[[databases.app.shards]]            # one entry: not sharded
primary = "127.0.0.1:5432/app"      # host:port/dbname on the server side
replicas = ["127.0.0.1:5433/app"]

[databases.tenants]
pool_size = 10
sharding_key = "tenant_id"          # the column that names the tenant
sharding_key_type = "bigint"        # "bigint" | "integer" | "text" | "uuid" (the column's type)
[[databases.tenants.shards]]        # shard 0
primary = "127.0.0.1:5442/tenants"
replicas = []
[[databases.tenants.shards]]        # shard 1
primary = "127.0.0.1:5452/tenants"
replicas = ["127.0.0.1:5453/tenants"]
"#;

    /// The smallest useful file: one user, one database on one server.
    const MINIMAL: &str = r#"
[[users]]
name = "app"
password = "pw"

[databases.app]
[[databases.app.shards]]
primary = "127.0.0.1:5432/app"
"#;

    fn load(text: &str) -> Config {
        match Config::from_toml_str(text, None) {
            Ok(config) => config,
            Err(errors) => panic!("config should load, but:\n{errors}"),
        }
    }

    fn refused(text: &str) -> Vec<String> {
        match Config::from_toml_str(text, None) {
            Ok(_) => panic!("config should have been refused"),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    /// Asserts that some error is at `path` and its message contains `fragment`.
    fn assert_error(errors: &[String], path: &str, fragment: &str) {
        let prefix = format!("{path}: ");
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(&prefix) && e.contains(fragment)),
            "no error at {path} containing {fragment:?} in:\n{}",
            errors.join("\n")
        );
    }

    fn addr(host: &str, port: u16, dbname: &str) -> ServerAddr {
        ServerAddr {
            host: host.into(),
            port,
            dbname: dbname.into(),
        }
    }

    #[test]
    fn a_wrong_shard_is_reported_once_and_no_shards_at_all_is_refused() {
        let errors = refused(
            "[[users]]\nname = \"u\"\npassword = \"p\"\n[databases.d]\n[[databases.d.shards]]\nprimary = \"127.0.0.1:5442\"\n",
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_error(&errors, "databases.d.shards[0].primary", "host:port/dbname");
        let errors =
            refused("[[users]]\nname = \"u\"\npassword = \"p\"\n[databases.d]\nshards = []\n");
        assert_error(&errors, "databases.d.shards", "missing");
    }

    #[test]
    fn shipped_example_config_loads() {
        let config = load(include_str!("../../config/pgmux.toml"));
        assert_eq!(config.users.len(), 1);
        let app = config.database("app").expect("database app");
        assert_eq!(app.shards.len(), 1);
        assert_eq!(app.shards[0].primary, addr("127.0.0.1", 5432, "app"));
        assert!(app.shards[0].replicas.is_empty());
        assert!(config.tls.is_none());
        assert!(config.upstream_tls.is_none());
    }

    #[test]
    fn contract_example_loads() {
        let config = load(CONTRACT_EXAMPLE);
        assert_eq!(config.proxy.admin_users, vec!["admin".to_string()]);
        assert_eq!(
            config.tls,
            Some(TlsConfig {
                mode: TlsMode::Prefer,
                cert: "config/tls/server.crt".into(),
                key: "config/tls/server.key".into(),
            })
        );
        assert_eq!(
            config.upstream_tls,
            Some(UpstreamTlsConfig {
                mode: UpstreamTlsMode::Disable,
                ca: Some("config/tls/ca.crt".into()),
            })
        );
        let user = config.user("app").expect("user app");
        assert_eq!(user.password, Password::Plain("app-secret".into()));
        assert_eq!(user.server_password.as_deref(), Some("app-secret"));

        let app = config.database("app").expect("database app");
        assert!(app.read_write_split && app.read_your_writes);
        assert_eq!(app.max_replica_lag, ReplicaLag::Bytes(10 * MIB));
        assert_eq!(app.read_only_functions, vec!["now", "lower"]);
        assert_eq!(app.shards[0].replicas, vec![addr("127.0.0.1", 5433, "app")]);

        let tenants = config.database("tenants").expect("database tenants");
        assert_eq!(tenants.name, "tenants");
        assert_eq!(tenants.pool_size, 10);
        assert_eq!(tenants.sharding_key.as_deref(), Some("tenant_id"));
        assert_eq!(tenants.sharding_key_type, ShardingKeyType::Bigint);
        assert_eq!(tenants.shards.len(), 2);
        assert_eq!(
            tenants.shards[1].primary,
            addr("127.0.0.1", 5452, "tenants")
        );
        assert_eq!(
            tenants.shards[1].replicas,
            vec![addr("127.0.0.1", 5453, "tenants")]
        );
    }

    #[test]
    fn omitted_keys_take_their_defaults() {
        let config = load(MINIMAL);
        let proxy = &config.proxy;
        assert_eq!(proxy.listen, "127.0.0.1:6432".parse().unwrap());
        assert_eq!(
            proxy.metrics_listen,
            Some("127.0.0.1:9930".parse().unwrap())
        );
        assert_eq!(proxy.pool_mode, PoolMode::Transaction);
        assert_eq!(proxy.max_client_conn, 10_000);
        assert_eq!(proxy.workers, 0);
        assert_eq!(proxy.auth_method, AuthMethod::ScramSha256);
        assert!(proxy.admin_users.is_empty());
        assert_eq!(proxy.client_login_timeout, Duration::from_secs(5));
        assert_eq!(proxy.query_wait_timeout, Duration::from_secs(30));
        assert_eq!(proxy.idle_transaction_timeout, Duration::ZERO);
        assert_eq!(proxy.query_timeout, Duration::ZERO);
        assert_eq!(proxy.server_connect_timeout, Duration::from_secs(3));
        assert_eq!(proxy.server_idle_timeout, Duration::from_secs(600));
        assert_eq!(proxy.server_lifetime, Duration::from_secs(3600));
        assert_eq!(proxy.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(proxy.health_check_interval, Duration::from_secs(1));
        assert_eq!(proxy.max_message_size, 64 * 1024 * 1024);
        assert_eq!(proxy.log_format, LogFormat::Text);
        assert_eq!(proxy.max_prepared_statements, 200);
        assert!(config.tls.is_none());
        assert!(config.upstream_tls.is_none());

        let user = &config.users[0];
        assert_eq!(user.server_user, "app");
        assert_eq!(user.server_password.as_deref(), Some("pw"));

        let db = config.database("app").expect("database app");
        assert_eq!(db.name, "app");
        assert_eq!(db.pool_size, 20);
        assert_eq!(db.pool_mode, PoolMode::Transaction);
        assert_eq!(db.min_pool_size, 0);
        assert!(!db.read_write_split);
        assert!(!db.read_your_writes);
        assert_eq!(db.max_replica_lag, ReplicaLag::Bytes(10 * MIB));
        assert_eq!(db.load_balance, LoadBalance::LeastBusy);
        assert!(db.read_only_functions.is_empty());
        assert_eq!(db.sharding_key, None);
        assert_eq!(db.sharding_key_type, ShardingKeyType::Bigint);
        assert!(db.shards[0].replicas.is_empty());
    }

    #[test]
    fn database_pool_mode_defaults_to_the_proxy_pool_mode() {
        let config = load(&format!(
            "[proxy]\npool_mode = \"session\"\n{MINIMAL}\n\
             [databases.other]\npool_mode = \"transaction\"\n\
             [[databases.other.shards]]\nprimary = \"db:5432/other\"\n"
        ));
        assert_eq!(config.database("app").unwrap().pool_mode, PoolMode::Session);
        assert_eq!(
            config.database("other").unwrap().pool_mode,
            PoolMode::Transaction
        );
    }

    #[test]
    fn empty_metrics_listen_disables_the_http_endpoint() {
        let config = load(&format!("[proxy]\nmetrics_listen = \"\"\n{MINIMAL}"));
        assert_eq!(config.proxy.metrics_listen, None);
    }

    #[test]
    fn max_replica_lag_takes_bytes_or_time() {
        let with_lag = |lag: &str| {
            load(&MINIMAL.replace(
                "[databases.app]\n",
                &format!("[databases.app]\nmax_replica_lag = \"{lag}\"\n"),
            ))
            .database("app")
            .unwrap()
            .max_replica_lag
        };
        assert_eq!(with_lag("5s"), ReplicaLag::Time(Duration::from_secs(5)));
        assert_eq!(
            with_lag("250ms"),
            ReplicaLag::Time(Duration::from_millis(250))
        );
        assert_eq!(with_lag("16kB"), ReplicaLag::Bytes(16 * 1024));
        assert_eq!(with_lag("0"), ReplicaLag::Bytes(0));

        let errors = refused(&MINIMAL.replace(
            "[databases.app]\n",
            "[databases.app]\nmax_replica_lag = \"10 megs\"\n",
        ));
        assert_error(
            &errors,
            "databases.app.max_replica_lag",
            "expected a WAL size such as \"10MB\"",
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let errors = refused(
            r#"
proxi = 1

[proxy]
lsten = "127.0.0.1:6432"

[tls]
mode = "disable"
certificate = "x"

[[users]]
nmae = "app"
password = "pw"

[databases.app]
pool_sise = 10
[[databases.app.shards]]
primary = "127.0.0.1:5432/app"
replica = []
"#,
        );
        assert_error(
            &errors,
            "proxi",
            "unknown key `proxi`; did you mean `proxy`?",
        );
        assert_error(
            &errors,
            "proxy.lsten",
            "unknown key `lsten`; did you mean `listen`?",
        );
        assert_error(
            &errors,
            "tls.certificate",
            "unknown key `certificate`, expected one of `mode`, `cert`, `key`",
        );
        assert_error(&errors, "users[0].nmae", "did you mean `name`?");
        assert_error(
            &errors,
            "databases.app.pool_sise",
            "did you mean `pool_size`?",
        );
        assert_error(
            &errors,
            "databases.app.shards[0].replica",
            "did you mean `replicas`?",
        );
        // The typo hid `name`, so it is missing too; nothing else is wrong.
        assert_error(&errors, "users[0].name", "missing; this key is required");
        assert_eq!(errors.len(), 7, "{}", errors.join("\n"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errors = refused(
            r#"
[proxy]
query_wait_timeout = "30 seconds"
pool_mode = "sesion"
max_message_size = "512B"

[[users]]
nmae = "app"
password = "pw"

[databases.tenants]
pool_size = 0
sharding_key = "tenant_id"
[[databases.tenants.shards]]
primary = "127.0.0.1:5442/tenants"
[[databases.tenants.shards]]
primary = "127.0.0.1/tenants"
"#,
        );
        assert_error(
            &errors,
            "proxy.query_wait_timeout",
            "expected a duration such as \"5s\" (units: ms, s, m, h), found \"30 seconds\"",
        );
        assert_error(
            &errors,
            "proxy.pool_mode",
            "expected one of \"transaction\", \"session\", found \"sesion\"",
        );
        assert_error(&errors, "proxy.max_message_size", "between 1KiB and 1GiB");
        assert_error(&errors, "users[0].nmae", "unknown key");
        assert_error(&errors, "databases.tenants.pool_size", "at least 1");
        assert_error(
            &errors,
            "databases.tenants.shards[1].primary",
            "expected host:port/dbname",
        );
    }

    #[test]
    fn bad_server_address_names_its_key() {
        let errors = refused(
            r#"
[databases.tenants]
sharding_key = "tenant_id"
[[databases.tenants.shards]]
primary = "127.0.0.1:5442/tenants"
replicas = ["127.0.0.1:5443/tenants", "replica-without-port/tenants"]
[[databases.tenants.shards]]
primary = "127.0.0.1:5452"
"#,
        );
        assert_eq!(
            errors,
            vec![
                "databases.tenants.shards[0].replicas[1]: expected host:port/dbname such as \
                 \"127.0.0.1:5432/app\" or \"[::1]:5432/app\", found \
                 \"replica-without-port/tenants\"",
                "databases.tenants.shards[1].primary: expected host:port/dbname such as \
                 \"127.0.0.1:5432/app\" or \"[::1]:5432/app\", found \"127.0.0.1:5452\"",
            ]
        );
    }

    #[test]
    fn server_addresses_take_names_ipv4_and_bracketed_ipv6() {
        assert_eq!(
            parse_server_addr("db-1.internal:5432/app"),
            Ok(addr("db-1.internal", 5432, "app"))
        );
        assert_eq!(
            parse_server_addr("10.0.0.7:6543/app"),
            Ok(addr("10.0.0.7", 6543, "app"))
        );
        assert_eq!(
            parse_server_addr("[::1]:5432/app"),
            Ok(addr("::1", 5432, "app"))
        );
        for bad in [
            "",
            "db:5432",
            "db:5432/",
            "db/app",
            ":5432/app",
            "db:0/app",
            "db:65536/app",
            "db:port/app",
            "[::1/app",
            "[not-ip]:5432/app",
            "db host:5432/app",
        ] {
            let err = parse_server_addr(bad).unwrap_err();
            assert!(err.starts_with("expected host:port/dbname"), "{bad}: {err}");
        }
        assert!(parse_server_addr("::1:5432/app")
            .unwrap_err()
            .contains("write IPv6 addresses in brackets"));
        assert!(parse_server_addr("db:99999/app")
            .unwrap_err()
            .contains("the port is a number from 1 to 65535"));
    }

    #[test]
    fn listen_addresses_must_be_ip_and_port() {
        let errors = refused(&format!(
            "[proxy]\nlisten = \"localhost:6432\"\nmetrics_listen = \"9930\"\n{MINIMAL}"
        ));
        assert_error(&errors, "proxy.listen", "expected an IP address and port");
        assert_error(
            &errors,
            "proxy.metrics_listen",
            "expected an IP address and port",
        );

        let errors = refused(&format!(
            "[proxy]\nlisten = \"0.0.0.0:6432\"\nmetrics_listen = \"0.0.0.0:6432\"\n{MINIMAL}"
        ));
        assert_error(&errors, "proxy.metrics_listen", "same address as listen");
    }

    #[test]
    fn passwords_are_told_apart_like_pg_authid() {
        let verifier = postgres_protocol::password::scram_sha_256(b"pw");
        let md5 = format!("md5{}", "0123456789abcdef".repeat(2));
        let config = load(&format!(
            r#"
[proxy]
auth_method = "md5"

[[users]]
name = "plain"
password = "pw"
server_user = "plain_upstream"

[[users]]
name = "scram"
password = "{verifier}"

[[users]]
name = "hashed"
password = "{md5}"
server_password = "upstream-pw"

[[users]]
name = "md5-lookalike"
password = "md5-not-a-hash"

[databases.app]
[[databases.app.shards]]
primary = "127.0.0.1:5432/app"
"#
        ));
        let plain = config.user("plain").unwrap();
        assert_eq!(plain.password, Password::Plain("pw".into()));
        assert_eq!(plain.server_user, "plain_upstream");
        assert_eq!(plain.server_password.as_deref(), Some("pw"));

        let scram = config.user("scram").unwrap();
        assert_eq!(scram.password, Password::ScramVerifier(verifier));
        assert_eq!(scram.server_user, "scram");
        assert_eq!(scram.server_password, None);

        let hashed = config.user("hashed").unwrap();
        assert_eq!(hashed.password, Password::Md5Hash(md5));
        assert_eq!(hashed.server_password.as_deref(), Some("upstream-pw"));

        let lookalike = config.user("md5-lookalike").unwrap();
        assert_eq!(lookalike.password, Password::Plain("md5-not-a-hash".into()));
    }

    #[test]
    fn bad_secrets_are_refused() {
        let md5 = format!("md5{}", "0123456789abcdef".repeat(2));
        let errors = refused(&format!(
            r#"
[[users]]
name = "mangled"
password = "SCRAM-SHA-256$4096:c2FsdA==$notbase64!:alsonot"

[[users]]
name = "hashed"
password = "{md5}"

[[users]]
name = "empty"
password = ""

[[users]]
name = "nopassword"
"#
        ));
        assert_error(
            &errors,
            "users[0].password",
            "invalid SCRAM verifier (StoredKey is not 32 bytes of base64)",
        );
        assert_error(&errors, "users[1].password", "is an md5 hash");
        assert_error(&errors, "users[2].password", "is empty");
        assert_error(
            &errors,
            "users[3].password",
            "missing; this key is required",
        );
    }

    #[test]
    fn user_names_are_unique() {
        let errors = refused(&format!(
            "{MINIMAL}\n[[users]]\nname = \"other\"\npassword = \"x\"\n\
             [[users]]\nname = \"app\"\npassword = \"y\"\n"
        ));
        assert_eq!(
            errors,
            vec!["users[2].name: user \"app\" is already defined at users[0]"]
        );
    }

    #[test]
    fn pool_and_sharding_rules_are_checked() {
        let errors = refused(
            r#"
[databases.small]
pool_size = 5
min_pool_size = 6
sharding_key_type = "text"
read_only_functions = [""]
[[databases.small.shards]]
primary = "127.0.0.1:5432/small"
replicas = ["127.0.0.1:5432/small"]

[databases.empty]
pool_size = 5

[databases.unkeyed]
[[databases.unkeyed.shards]]
primary = "127.0.0.1:5432/a"
[[databases.unkeyed.shards]]
primary = "127.0.0.1:5432/a"

[databases.pgmux]
[[databases.pgmux.shards]]
primary = "127.0.0.1:5432/pgmux"
"#,
        );
        assert_error(
            &errors,
            "databases.small.min_pool_size",
            "larger than pool_size (5)",
        );
        assert_error(
            &errors,
            "databases.small.sharding_key_type",
            "has no effect without sharding_key",
        );
        assert_error(
            &errors,
            "databases.small.read_only_functions[0]",
            "is empty",
        );
        assert_error(
            &errors,
            "databases.small.shards[0].replicas[0]",
            "is the shard's primary",
        );
        assert_error(
            &errors,
            "databases.empty.shards",
            "missing: add a [[databases.empty.shards]] entry",
        );
        assert_error(&errors, "databases.unkeyed.sharding_key", "has 2 shards");
        assert_error(
            &errors,
            "databases.unkeyed.shards[1].primary",
            "also the primary of shards[0]",
        );
        assert_error(&errors, "databases.pgmux", "admin console");
        assert_eq!(errors.len(), 8, "{}", errors.join("\n"));
    }

    #[test]
    fn tls_modes_need_their_files() {
        let errors = refused(&format!(
            "[tls]\nmode = \"require\"\ncert = \"server.crt\"\n\
             [upstream_tls]\nmode = \"verify-full\"\n{MINIMAL}"
        ));
        assert_eq!(
            errors,
            vec![
                "tls.key: missing: tls.mode = \"require\" needs the server's private key file (PEM)",
                "upstream_tls.ca: missing: upstream_tls.mode = \"verify-full\" needs the CA \
                 certificate file (PEM) that signed the servers' certificates",
            ]
        );

        // The default mode is "prefer", which needs them too.
        let errors = refused(&format!("[tls]\n{MINIMAL}"));
        assert_error(&errors, "tls.cert", "tls.mode = \"prefer\" needs");
        assert_error(&errors, "tls.key", "tls.mode = \"prefer\" needs");

        let config = load(&format!("[tls]\nmode = \"disable\"\n{MINIMAL}"));
        assert_eq!(config.tls, None);
        let config = load(&format!("[upstream_tls]\nmode = \"require\"\n{MINIMAL}"));
        assert_eq!(
            config.upstream_tls,
            Some(UpstreamTlsConfig {
                mode: UpstreamTlsMode::Require,
                ca: None
            })
        );
    }

    #[test]
    fn proxy_limits_are_checked() {
        let errors = refused(&format!(
            r#"
[proxy]
max_client_conn = 0
max_prepared_statements = 0
query_wait_timeout = "0s"
health_check_interval = 0
max_message_size = "2GiB"
workers = -1
admin_users = ["admin", "admin"]
{MINIMAL}"#
        ));
        assert_error(&errors, "proxy.max_client_conn", "at least 1");
        assert_error(&errors, "proxy.max_prepared_statements", "at least 1");
        assert_error(&errors, "proxy.query_wait_timeout", "longer than 0s");
        assert_error(&errors, "proxy.health_check_interval", "longer than 0s");
        assert_error(&errors, "proxy.max_message_size", "between 1KiB and 1GiB");
        assert_error(
            &errors,
            "proxy.workers",
            "invalid value: integer `-1`, expected a whole number of 0 or more",
        );
        assert_error(&errors, "proxy.admin_users[1]", "listed twice");
        assert_eq!(errors.len(), 7, "{}", errors.join("\n"));
    }

    #[test]
    fn values_of_the_wrong_kind_name_what_was_expected() {
        let errors = refused(
            r#"
proxy = "oops"
users = { name = "app" }

[databases.app]
pool_size = "20"
shards = { primary = "127.0.0.1:5432/app" }
"#,
        );
        assert_error(&errors, "proxy", "expected a table, found a string");
        assert_error(&errors, "users", "expected an array of tables ([[users]])");
        assert_error(
            &errors,
            "databases.app.pool_size",
            "invalid type: string \"20\", expected a whole number of 0 or more",
        );
        assert_error(
            &errors,
            "databases.app.shards",
            "expected an array of tables",
        );
    }

    #[test]
    fn syntax_error_is_one_error_for_the_whole_file() {
        let err = Config::from_toml_str("[proxy]\nlisten = 127.0.0.1:6432\n", None).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].path, "");
        assert!(err.0[0].message.contains("line 2"), "{}", err.0[0].message);
    }

    #[test]
    fn odd_database_names_are_quoted_in_paths() {
        let errors = refused("[databases.\"my.db\"]\npool_size = 0\n[[databases.\"my.db\".shards]]\nprimary = \"h:1/d\"\n");
        assert_eq!(
            errors,
            vec!["databases.\"my.db\".pool_size: must be at least 1"]
        );
    }

    #[test]
    fn wrong_kinds_inside_sections_are_named_in_toml_words() {
        let errors = refused(&MINIMAL.replace(
            "primary = \"127.0.0.1:5432/app\"",
            "primary = \"127.0.0.1:5432/app\"\nreplicas = \"127.0.0.1:5433/app\"",
        ));
        assert_eq!(
            errors,
            vec![
                "databases.app.shards[0].replicas: invalid type: string \"127.0.0.1:5433/app\", \
                  expected an array"
            ]
        );
    }

    #[test]
    fn edit_distance_counts_single_character_edits() {
        assert_eq!(edit_distance("lsten", "listen"), 1);
        assert_eq!(edit_distance("pool_sise", "pool_size"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn errors_display_one_per_line() {
        let errors = ConfigErrors(vec![
            ConfigError {
                path: "proxy.listen".into(),
                message: "bad".into(),
            },
            ConfigError {
                path: String::new(),
                message: "whole file".into(),
            },
        ]);
        assert_eq!(errors.to_string(), "proxy.listen: bad\nwhole file");
    }

    #[test]
    fn load_reads_the_file_and_remembers_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgmux.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.path.as_deref(), Some(path.as_path()));

        let missing = dir.path().join("missing.toml");
        let err = Config::load(&missing).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(err.0[0].message.starts_with("cannot read config file"));
    }
}
