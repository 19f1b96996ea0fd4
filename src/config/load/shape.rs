//! Pass 2 of loading: the shape of each section. Each TOML table is deserialized
//! on its own into a raw serde struct, and every key that fails is reported with
//! its path and dropped, so that one typo never hides the next.

use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, Visitor};
use serde::Deserialize;
use toml::Value;

use crate::config::units::{parse_duration, parse_size};
use crate::config::{
    AuthMethod, LoadBalance, LogFormat, PoolMode, ReplicaLag, ServerAddr, ShardingKeyType, TlsMode,
    UpstreamTlsMode,
};

use super::{KeyPath, Problems};

// ---------------------------------------------------------------------------------
// Pass 2: the shape of each section
// ---------------------------------------------------------------------------------

/// Deserializes one section (a TOML table) into its raw struct.
///
/// Every key that fails is reported and dropped, and the rest read again, so a section
/// with three bad keys gives three errors. The result is `None` only when the section
/// is unusable (not a table, or a required key missing); otherwise it holds what could
/// be read, so that pass 3 can still find problems among the good keys.
pub(super) fn read_section<T: DeserializeOwned>(
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
pub(super) fn unknown_key_message(key: &str, rest: &str) -> String {
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
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
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
pub(super) fn plain_words(message: String) -> String {
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
pub(super) fn quoted_field<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    message.strip_prefix(prefix)?.split('`').next()
}

/// "a string", "an integer", ... for messages about a value of the wrong kind.
pub(super) fn kind_of(value: &Value) -> String {
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
pub(super) struct RawProxy {
    pub(super) listen: Option<Listen>,
    pub(super) metrics_listen: Option<MetricsListen>,
    pub(super) pool_mode: Option<PoolMode>,
    pub(super) max_client_conn: Option<usize>,
    pub(super) workers: Option<usize>,
    pub(super) auth_method: Option<AuthMethod>,
    pub(super) admin_users: Option<Vec<String>>,
    pub(super) client_login_timeout: Option<Dur>,
    pub(super) query_wait_timeout: Option<Dur>,
    pub(super) idle_transaction_timeout: Option<Dur>,
    pub(super) query_timeout: Option<Dur>,
    pub(super) server_connect_timeout: Option<Dur>,
    pub(super) server_idle_timeout: Option<Dur>,
    pub(super) server_lifetime: Option<Dur>,
    pub(super) shutdown_timeout: Option<Dur>,
    pub(super) health_check_interval: Option<Dur>,
    pub(super) max_message_size: Option<Size>,
    pub(super) log_format: Option<LogFormat>,
    pub(super) max_prepared_statements: Option<usize>,
    pub(super) unix_socket_dir: Option<PathBuf>,
    pub(super) server_pipelining: Option<bool>,
    pub(super) server_pipelining_threshold: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) mode: Option<TlsMode>,
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstreamTls {
    pub(super) mode: Option<UpstreamTlsMode>,
    pub(super) ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub(super) name: String,
    pub(super) password: String,
    pub(super) server_user: Option<String>,
    pub(super) server_password: Option<String>,
    pub(super) auth_method: Option<AuthMethod>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
    pub(super) pool_size: Option<usize>,
    pub(super) pool_mode: Option<PoolMode>,
    pub(super) min_pool_size: Option<usize>,
    pub(super) read_write_split: Option<bool>,
    pub(super) read_your_writes: Option<bool>,
    pub(super) max_replica_lag: Option<Lag>,
    pub(super) load_balance: Option<LoadBalance>,
    pub(super) read_only_functions: Option<Vec<String>>,
    pub(super) sharding_key: Option<String>,
    pub(super) sharding_key_type: Option<ShardingKeyType>,
    /// Read entry by entry in [`read_shards`], so each shard's errors are its own.
    #[serde(rename = "shards")]
    pub(super) _shards: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShard {
    pub(super) primary: Addr,
    pub(super) replicas: Option<Vec<Addr>>,
}

/// Parses a value written as a string (`"5s"`, `"64MiB"`, `"host:5432/db"`) with
/// `parse`, so that its error message gets the key path like any serde error. A bare
/// TOML integer is read as its digits: `0` is fine where `"0"` is, and `5` gets the
/// same "expected ..." message as `"5"`.
pub(super) struct ParseVisitor<T> {
    pub(super) expecting: &'static str,
    pub(super) parse: fn(&str) -> Result<T, String>,
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
        pub(super) struct $name(pub(super) $inner);

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
pub(super) fn parse_replica_lag(s: &str) -> Result<ReplicaLag, String> {
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

pub(super) fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!(
            "expected an IP address and port such as \"127.0.0.1:6432\" or \"[::]:6432\", \
             found {s:?}"
        )
    })
}

/// Parses `host:port/dbname`, where host is a name, an IPv4 address, an IPv6 address
/// in brackets (`[::1]:5432/app`; the brackets are not kept in `host`), or, as in
/// libpq, the directory of a Unix-domain socket (`/var/run/postgresql:5432/app`).
pub(super) fn parse_server_addr(s: &str) -> Result<ServerAddr, String> {
    let fail = |why: &str| {
        format!(
            "expected host:port/dbname such as \"127.0.0.1:5432/app\", \"[::1]:5432/app\" or \
             \"/var/run/postgresql:5432/app\"{why}, found {s:?}"
        )
    };
    // A socket directory holds slashes of its own: the dbname follows the last one.
    let split = if s.starts_with('/') {
        s.rsplit_once('/')
    } else {
        s.split_once('/')
    };
    let (host_port, dbname) = split.ok_or_else(|| fail(""))?;
    if dbname.is_empty() || dbname.contains(char::is_whitespace) {
        return Err(fail(""));
    }
    let (host, port) = if host_port.starts_with('/') {
        let (dir, port) = host_port.rsplit_once(':').ok_or_else(|| fail(""))?;
        if dir.contains('\0') {
            return Err(fail(""));
        }
        (dir, port)
    } else if let Some(rest) = host_port.strip_prefix('[') {
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
    let addr = ServerAddr {
        host: host.to_string(),
        port,
        dbname: dbname.to_string(),
    };
    if let Some(path) = addr.socket_path() {
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(fail(&format!(
                " (the socket path {} is longer than the {MAX_SOCKET_PATH} bytes a Unix-domain \
                 socket address holds)",
                path.display()
            )));
        }
    }
    Ok(addr)
}

/// `sun_path` holds 108 bytes on Linux, the last of them the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

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
