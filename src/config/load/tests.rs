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
    let errors = refused("[[users]]\nname = \"u\"\npassword = \"p\"\n[databases.d]\nshards = []\n");
    assert_error(&errors, "databases.d.shards", "missing");
}

#[test]
fn shipped_example_config_loads() {
    let config = load(include_str!("../../../config/pgmux.toml"));
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
             \"127.0.0.1:5432/app\", \"[::1]:5432/app\" or \"/var/run/postgresql:5432/app\", \
             found \"replica-without-port/tenants\"",
            "databases.tenants.shards[1].primary: expected host:port/dbname such as \
             \"127.0.0.1:5432/app\", \"[::1]:5432/app\" or \"/var/run/postgresql:5432/app\", \
             found \"127.0.0.1:5452\"",
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
fn server_addresses_take_a_unix_socket_directory() {
    let unix = parse_server_addr("/var/run/postgresql:5432/app").unwrap();
    assert_eq!(unix, addr("/var/run/postgresql", 5432, "app"));
    assert_eq!(
        unix.socket_path().unwrap(),
        std::path::Path::new("/var/run/postgresql/.s.PGSQL.5432")
    );
    assert_eq!(unix.to_string(), "/var/run/postgresql:5432/app");
    // A colon in the directory name: the port follows the last one.
    let odd = parse_server_addr("/srv/pg:a:6000/app").unwrap();
    assert_eq!(odd, addr("/srv/pg:a", 6000, "app"));
    assert_eq!(odd.to_string(), "/srv/pg:a:6000/app");
    assert_eq!(addr("127.0.0.1", 5432, "app").socket_path(), None);

    for bad in [
        "/var/run/postgresql/app",
        "/tmp:5432/",
        "/tmp:x/app",
        "tmp/pg:5432/app",
    ] {
        let err = parse_server_addr(bad).unwrap_err();
        assert!(err.starts_with("expected host:port/dbname"), "{bad}: {err}");
    }
    let long = format!("/{}:5432/app", "d".repeat(100));
    assert!(parse_server_addr(&long)
        .unwrap_err()
        .contains("bytes a Unix-domain socket address holds"));
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

mod users;
