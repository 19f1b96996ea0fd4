#!/usr/bin/env bash
# Runs drivers' own test suites through pgmux: asyncpg, psycopg2, pg8000 and PyGreSQL
# (their sdists from PyPI carry their tests), SQLAlchemy's PostgreSQL dialect tests over
# psycopg 3 and asyncpg, Django's whole test suite over psycopg 3 (its sdist carries
# it), Go's pgx v4, pgconn and lib/pq (Debian's -dev packages carry their sources and
# tests), tokio-postgres' and postgres' (the Rust crates from
# crates.io carry theirs; they expect the server on 127.0.0.1:5433, where a second
# pgmux listens, with `postgres` trusted and three users that log in by password), and
# sqlx's Postgres tests (its crate carries them; the three helpers they import from
# sqlx's unpublished sqlx-test crate are written here, and its query! macros describe
# their statements through pgmux at build time). A throwaway Postgres and pgmux live in one temp dir, removed
# on exit. Not part of scripts/test.sh: the suites take minutes, and some of their
# tests need things a pooler cannot give (below). Compare a run through pgmux with
# one straight to Postgres (MODE=direct) to tell the two apart.
#
#   scripts/driver-suites.sh [SUITE...]   SUITE: asyncpg psycopg2 pg8000 pygresql sqlalchemy
#                                                django go rust sqlx
#
# Environment: MODE=session|transaction|unpipelined|pipelining|tls|direct (default
# transaction, with server_pipelining as by default; unpipelined: transaction mode
# without it; pipelining: transaction mode sending statements behind statements of
# any duration, server_pipelining_threshold = "0s"; tls: transaction mode with clients
# on TLS, pg8000 excepted, which stays on plain text);
# PGMUX_BIN=path uses that binary instead of `cargo build --release`;
# PGMUX_PG_BIN=dir uses Postgres tools from dir (default /usr/lib/postgresql/15/bin).
#
# Failures that are not pgmux's, seen straight to Postgres too or by design:
# - asyncpg test_connect standby tests: they start clusters of their own (pg_ctl as
#   root refuses).
# - psycopg2 test_pgconn_ptr; test_backend_pid (the driver's BackendKeyData pid is
#   pgmux's, `pg_backend_pid()` the server's); test_external_close_async in
#   transaction mode (it terminates a server backend the client no longer holds).
# - asyncpg test_pool_remote_close in transaction mode, now and then: it terminates
#   the backend its pool's connection used, and in transaction mode the terminating
#   statement may run on that same backend (pgmux hands out the connection used
#   last), which then ends the statement's own client.
# - pg8000: its auth tests want users and pg_hba rules of their own; test_notify
#   compares the notifier's pid with `pg_backend_pid()`; in transaction mode
#   test_close_prepared_statement counts the server's pg_prepared_statements and
#   test_broken_pipe_* terminate a server backend by its pid.
# - SQLAlchemy test_array_str_collation: the en_US collation is not installed.
# - asyncpg test_executemany_server_failure_during_writes, now and then: it expects
#   the client to see the server's error before it has written all 4 MB of rows, a
#   race that a busy host loses more often through a proxy (with two busy loops on
#   the cores: 7-17 failures in 30 through pgmux, 1 in 30-40 through PgBouncer,
#   0-2 direct). Traced with perf: in the failing runs, Postgres got a core only
#   after the client had written all 4 MB into the kernel's socket buffers (the
#   client kept its core, or shared it with pgmux alone); pgmux forwarded the first
#   rows at once, and passes the error on as soon as it is read.
# - django: 3 tests of file permissions that root passes (test_permissions_error,
#   test_readonly_root, test_no_write_access), and test_aauthenticate_sensitive_variables
#   (its traceback shows the password under this Python).
# - go: lib/pq's TestHasCorrectRootGroupPermissions (root again); in transaction mode
#   its TestPing, which terminates the server backend its client used by its pid.
#   pgx's large-object tests leave their connections open inside a transaction until
#   the test binary exits, so they hold three server connections: with a pool_size of
#   three or less the tests after them wait out query_wait_timeout.
# - rust: skipped with MODE=direct (the crates' tests want their own pg_hba rules).
# - MODE=tls: asyncpg's TestConnectionGC tests (an unclosed TLS transport outlives the
#   collection they expect); PyGreSQL's 4 test_attribute_ssl_* (they expect no TLS).
# - sqlx: its migrate and test-attr tests are left out, through pgmux and direct alike:
#   `#[sqlx::test]` makes a database per test and connects to it, and pgmux serves only
#   the databases its configuration names.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODE="${MODE:-transaction}"
PG_BIN="${PGMUX_PG_BIN:-/usr/lib/postgresql/15/bin}"
SUITES=("$@")
[ ${#SUITES[@]} -gt 0 ] || SUITES=(asyncpg psycopg2 pg8000 pygresql sqlalchemy django go rust sqlx)
ASYNCPG=0.30.0 PSYCOPG2=2.9.10 PG8000=1.31.6 PYGRESQL=6.2.3 SQLALCHEMY=2.0.36 PSYCOPG=3.2.3
TOKIO_POSTGRES=0.7.12 POSTGRES=0.19.9 DJANGO=5.1.4 SQLX=0.8.2

say() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'driver-suites.sh: %s\n' "$*" >&2; exit 1; }
case "$MODE" in session | transaction | unpipelined | pipelining | tls | direct) ;; *) die "MODE=$MODE?" ;; esac

bash scripts/install-deps.sh

tmp=""
pgmux_pid=""
rust_pid=""
cleanup() {
    trap - EXIT INT TERM
    set +e
    for pid in $pgmux_pid $rust_pid; do kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    if [ -n "$tmp" ]; then
        [ -f "$tmp/pg/data/postmaster.pid" ] &&
            as_postgres "$PG_BIN/pg_ctl" -D "$tmp/pg/data" stop -m immediate -w -t 30 >/dev/null 2>&1
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

as_postgres() {
    if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

tmp="$(mktemp -d /tmp/pgmux-suites.XXXXXX)"
chmod 755 "$tmp"
mkdir -p "$tmp/pg"
[ "$(id -u)" = 0 ] && chown postgres "$tmp/pg"

say "Postgres 15 on a free port"
pg_port="$(free_port)"
as_postgres "$PG_BIN/initdb" -D "$tmp/pg/data" -A trust -U postgres >/dev/null
as_postgres "$PG_BIN/pg_ctl" -D "$tmp/pg/data" -l "$tmp/pg/log" -w -t 60 start \
    -o "-p $pg_port -k $tmp/pg -c listen_addresses=127.0.0.1 -c max_connections=300 -c max_prepared_transactions=10 -c fsync=off" >/dev/null
psql_pg() { PGSSLMODE=disable psql -X -q -h 127.0.0.1 -p "$pg_port" -U postgres "$@"; }
psql_pg -d postgres -c "alter user postgres password 'pw'"
# PyGreSQL's tests leave views behind, which SQLAlchemy's reflection tests would see.
# Django's test databases are made here, as pgmux serves only the databases it knows;
# its runs keep them (--keepdb).
DATABASES=(postgres psycopg2_test test pygresql_test testdb asyncpg_intro_test pgx_test test_default test_other sqlx)
for db in "${DATABASES[@]:1:3}" "${DATABASES[@]:6}"; do psql_pg -d postgres -c "create database $db"; done
psql_pg -d pgx_test -c "create extension hstore" -c "create domain uint64 as numeric(20,0)"
psql_pg -d test -c "create schema test_schema; create schema test_schema_2; create extension hstore"
for u in pass_user md5_user scram_user; do psql_pg -d postgres -c "create user $u password 'password'"; done

port="$pg_port"
if [ "$MODE" != direct ]; then
    say "pgmux in $MODE mode"
    if [ -n "${PGMUX_BIN:-}" ]; then bin="$PGMUX_BIN"; else
        cargo build --release --quiet
        bin=target/release/pgmux
    fi
    port="$(free_port)"
    pgmux_config() { # PORT USERS_TOML: the mode's config, listening on PORT
        echo '[proxy]'
        echo "listen = \"127.0.0.1:$1\""
        echo 'metrics_listen = ""'
        [ "$MODE" = session ] && echo 'pool_mode = "session"' || echo 'pool_mode = "transaction"'
        [ "$MODE" = pipelining ] && echo 'server_pipelining_threshold = "0s"'
        [ "$MODE" = unpipelined ] && echo 'server_pipelining = false'
        echo 'admin_users = ["postgres"]'
        if [ "$MODE" = tls ]; then
            openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 \
                -keyout "$tmp/tls.key" -out "$tmp/tls.crt" 2>/dev/null
            printf '\n[tls]\nmode = "prefer"\ncert = "%s"\nkey = "%s"\n' "$tmp/tls.crt" "$tmp/tls.key"
        fi
        printf '%s\n' "$2"
        for db in "${DATABASES[@]}"; do
            printf '\n[databases.%s]\npool_size = 20\n[[databases.%s.shards]]\nprimary = "127.0.0.1:%s/%s"\n' \
                "$db" "$db" "$pg_port" "$db"
        done
    }
    start_pgmux() { # NAME PORT: waits until it serves; its pid in $started
        "$bin" --config "$tmp/$1.toml" >"$tmp/$1.log" 2>&1 &
        started=$!
        for _ in $(seq 300); do
            PGPASSWORD=pw psql -X -q -h 127.0.0.1 -p "$2" -U postgres -d postgres -c 'select 1' >/dev/null 2>&1 && return
            kill -0 "$started" 2>/dev/null || { cat "$tmp/$1.log" >&2; die "pgmux exited"; }
            sleep 0.1
        done
        die "pgmux on port $2 did not serve within 30 s"
    }
    pgmux_config "$port" "$(printf '\n[[users]]\nname = "postgres"\npassword = "pw"\n')" >"$tmp/pgmux.toml"
    start_pgmux pgmux "$port"
    pgmux_pid=$started
    if [[ " ${SUITES[*]} " == *" rust "* ]]; then
        users='[[users]]\nname = "postgres"\npassword = "pw"\nauth_method = "trust"\n'
        for u in pass_user md5_user scram_user; do users+="[[users]]\nname = \"$u\"\npassword = \"password\"\n"; done
        pgmux_config 5433 "$(printf "$users")" >"$tmp/rust.toml"
        start_pgmux rust 5433
        rust_pid=$started
    fi
fi

say "the drivers and their sdists"
python3 -m venv "$tmp/venv"
# shellcheck disable=SC1091
. "$tmp/venv/bin/activate"
pip install -q "asyncpg==$ASYNCPG" "psycopg2-binary==$PSYCOPG2" "pg8000==$PG8000" "pygresql==$PYGRESQL" \
    "sqlalchemy==$SQLALCHEMY" "psycopg[binary,pool]==$PSYCOPG" greenlet pytest pytest-timeout \
    pytest-benchmark distro pytz uvloop
(cd "$tmp" && pip download -q --no-binary :all: --no-deps \
    "asyncpg==$ASYNCPG" "psycopg2==$PSYCOPG2" "pg8000==$PG8000" "pygresql==$PYGRESQL" \
    "sqlalchemy==$SQLALCHEMY" "django==$DJANGO" &&
    for f in *.tar.gz; do tar xzf "$f"; done)

results=()
count() { grep -cE "$1" "$2" || true; } # PATTERN FILE: lines that match, 0 for none
# DIR: the sqlx-test crate that sqlx's Postgres tests import, written here as it is
# not published: a connection and a pool to DATABASE_URL, and macros that decode a
# value from a simple query and from a prepared one, and bind it to the prepared one.
sqlx_test_crate() {
    mkdir -p "$1/src"
    cat >"$1/Cargo.toml" <<EOF
[package]
name = "sqlx-test"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
sqlx = { path = "../sqlx-$SQLX", default-features = false }
anyhow = "1"
paste = "1"
EOF
    cat >"$1/src/lib.rs" <<'EOF'
use sqlx::pool::{Pool, PoolOptions};
use sqlx::{Connection, Database};

#[doc(hidden)]
pub use paste as __paste;

pub fn setup_if_needed() {}

fn url() -> anyhow::Result<String> {
    Ok(std::env::var("DATABASE_URL")?)
}

pub async fn new<DB: Database>() -> anyhow::Result<DB::Connection> {
    Ok(DB::Connection::connect(&url()?).await?)
}

pub async fn pool<DB: Database>() -> anyhow::Result<Pool<DB>> {
    Ok(PoolOptions::<DB>::new().max_connections(5).connect(&url()?).await?)
}

#[macro_export]
macro_rules! test_type {
    ($name:ident<$ty:ty>($db:ident, $sql:literal, $($text:literal == $value:expr),+ $(,)?)) => {
        $crate::test_prepared_type!($name<$ty>($db, $sql, $($text == $value),+));
        $crate::test_unprepared_type!($name<$ty>($db, $($text == $value),+));
    };
    ($name:ident<$ty:ty>($db:ident, $($text:literal == $value:expr),+ $(,)?)) => {
        $crate::test_prepared_type!($name<$ty>($db, $($text == $value),+));
        $crate::test_unprepared_type!($name<$ty>($db, $($text == $value),+));
    };
    ($name:ident($db:ident, $($text:literal == $value:expr),+ $(,)?)) => {
        $crate::test_type!($name<$name>($db, $($text == $value),+));
    };
}

#[macro_export]
macro_rules! test_decode_type {
    ($name:ident<$ty:ty>($db:ident, $($text:literal == $value:expr),+ $(,)?)) => {
        $crate::test_unprepared_type!($name<$ty>($db, $($text == $value),+));
        $crate::__paste::paste! {
            #[tokio::test]
            async fn [< test_prepared_decode_type_ $name >]() -> anyhow::Result<()> {
                use sqlx::Row;
                let mut conn = sqlx_test::new::<$db>().await?;
                $(
                    let row = sqlx::query(&format!("SELECT {} as _1", $text)).fetch_one(&mut conn).await?;
                    let got = row.try_get::<$ty, _>("_1")?;
                    assert!($value == got, "{} decoded as {:?}", $text, got);
                )+
                Ok(())
            }
        }
    };
}

#[macro_export]
macro_rules! test_unprepared_type {
    ($name:ident<$ty:ty>($db:ident, $($text:literal == $value:expr),+ $(,)?)) => {
        $crate::__paste::paste! {
            #[tokio::test]
            async fn [< test_unprepared_type_ $name >]() -> anyhow::Result<()> {
                use futures::TryStreamExt;
                use sqlx::{Executor, Row};
                let mut conn = sqlx_test::new::<$db>().await?;
                $(
                    let query = format!("SELECT {} as _1", $text);
                    let row = conn.fetch(&*query).try_next().await?.expect("a row");
                    let got = row.try_get::<$ty, _>("_1")?;
                    assert!($value == got, "{} decoded as {:?}", $text, got);
                )+
                Ok(())
            }
        }
    };
}

#[macro_export]
macro_rules! test_prepared_type {
    ($name:ident<$ty:ty>($db:ident, $sql:literal, $($text:literal == $value:expr),+ $(,)?)) => {
        $crate::__paste::paste! {
            #[tokio::test]
            async fn [< test_prepared_type_ $name >]() -> anyhow::Result<()> {
                use sqlx::Row;
                let mut conn = sqlx_test::new::<$db>().await?;
                $(
                    let row = sqlx::query(&format!($sql, $text))
                        .bind($value).bind($value).fetch_one(&mut conn).await?;
                    let same: i32 = row.try_get(0)?;
                    let returned: $ty = row.try_get(1)?;
                    let round_trip: $ty = row.try_get(2)?;
                    assert_eq!(same, 1, "{}", $text);
                    assert!($value == returned, "{} returned {:?}", $text, returned);
                    assert!($value == round_trip, "{} round trip {:?}", $text, round_trip);
                )+
                Ok(())
            }
        }
    };
    ($name:ident<$ty:ty>($db:ident, $($text:literal == $value:expr),+ $(,)?)) => {
        $crate::__paste::paste! {
            #[tokio::test]
            async fn [< test_prepared_type_ $name >]() -> anyhow::Result<()> {
                use sqlx::Row;
                let mut conn = sqlx_test::new::<$db>().await?;
                $(
                    let query = format!(
                        "SELECT {0} is not distinct from $1, $2::text as _1, {0} as _2, $3 as _3",
                        $text
                    );
                    let row = sqlx::query(&query)
                        .bind($value).bind($value).bind($value).fetch_one(&mut conn).await?;
                    let same: bool = row.try_get(0)?;
                    let received: Option<String> = row.try_get(1)?;
                    let returned: $ty = row.try_get(2)?;
                    let round_trip: $ty = row.try_get(3)?;
                    assert!(same, "{}: the server read {:?}", $text, received);
                    assert!($value == returned, "{} returned {:?}", $text, returned);
                    assert!($value == round_trip, "{} round trip {:?}", $text, round_trip);
                )+
                Ok(())
            }
        }
    };
}
EOF
}
run() { # NAME DIR ARGS...: pytest in DIR, its last line kept
    local name="$1" dir="$2"
    shift 2
    say "$name"
    (cd "$dir" && timeout 1800 python -m pytest -q -p no:cacheprovider "$@" >"$tmp/$name.log" 2>&1) || true
    grep -E '^(FAILED|ERROR) ' "$tmp/$name.log" | sed 's/ - .*//' >&2 || true
    results+=("$name: $(tail -n 1 "$tmp/$name.log")")
}
export PGPASSWORD=pw
ssl_query=""
if [ "$MODE" = tls ]; then
    export PGSSLMODE=require # libpq (psycopg2, psycopg) and asyncpg
    ssl_query="?sslmode=require"
fi
for suite in "${SUITES[@]}"; do
    case "$suite" in
        asyncpg)
            # Its own package's tests, run against the installed build.
            mkdir -p "$tmp/asyncpg-run" && cp -r "$tmp/asyncpg-$ASYNCPG/tests" "$tmp/asyncpg-run/"
            PGHOST=127.0.0.1 PGPORT="$port" PGUSER=postgres run asyncpg "$tmp/asyncpg-run" tests \
                --deselect tests/test__sourcecode.py --timeout 120
            ;;
        psycopg2)
            PSYCOPG2_TESTDB=psycopg2_test PSYCOPG2_TESTDB_HOST=127.0.0.1 PSYCOPG2_TESTDB_PORT="$port" \
                PSYCOPG2_TESTDB_USER=postgres run psycopg2 "$tmp/psycopg2-$PSYCOPG2" tests --timeout 120
            ;;
        pg8000)
            PGSSLMODE=disable PGHOST=127.0.0.1 PGPORT="$port" run pg8000 "$tmp/pg8000-$PG8000" test \
                --timeout 120 --benchmark-disable
            ;;
        pygresql)
            # Its tests alone, so that they import the installed build.
            mkdir -p "$tmp/pygresql-run" && cp -r "$tmp/pygresql-$PYGRESQL/tests" "$tmp/pygresql-run/"
            PYGRESQL_DB=pygresql_test PYGRESQL_HOST=127.0.0.1 PYGRESQL_PORT="$port" PYGRESQL_USER=postgres \
                run pygresql "$tmp/pygresql-run" tests --timeout 120
            ;;
        sqlalchemy)
            for driver in psycopg asyncpg; do
                query="$ssl_query"
                [ "$driver" = asyncpg ] && [ -n "$query" ] && query="?ssl=require"
                run "sqlalchemy-$driver" "$tmp/sqlalchemy-$SQLALCHEMY" test/dialect/postgresql \
                    --dburi "postgresql+$driver://postgres:pw@127.0.0.1:$port/test$query"
            done
            ;;
        django)
            say "django"
            django_dir="$(ls -d "$tmp"/[Dd]jango-"$DJANGO")"
            pip install -q -e "$django_dir"
            cat >"$django_dir/tests/pgmux_suite_settings.py" <<EOF
def db(name):
    return {"ENGINE": "django.db.backends.postgresql", "NAME": name, "USER": "postgres",
            "PASSWORD": "pw", "HOST": "127.0.0.1", "PORT": $port, "TEST": {"NAME": "test_" + name}}
DATABASES = {"default": db("default"), "other": db("other")}
SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
EOF
            (cd "$django_dir/tests" && timeout 3600 python runtests.py --settings=pgmux_suite_settings \
                --parallel 1 --keepdb --noinput >"$tmp/django.log" 2>&1) || true
            grep -E '^(FAIL|ERROR): ' "$tmp/django.log" | sed 's/^/FAILED /' >&2 || true
            results+=("django: $(grep -E '^Ran ' "$tmp/django.log" | tail -n 1), $(grep -E '^(OK|FAILED)' "$tmp/django.log" | tail -n 1)")
            ;;
        go)
            say "pgx v4, pgconn and lib/pq"
            pkgs=(golang-go golang-github-jackc-pgx-v4-dev golang-github-jackc-pgmock-dev
                golang-github-lib-pq-dev golang-github-masterminds-semver-dev)
            dpkg-query -W -f='${Status}\n' "${pkgs[@]}" 2>/dev/null | grep -c 'install ok installed' |
                grep -qx "${#pkgs[@]}" || DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >/dev/null
            # GOPATH mode over a copy of Debian's sources, so that nothing is written under
            # /usr. pgx imports semver by its module path.
            gopath="$tmp/gopath"
            mkdir -p "$gopath/src/github.com/jackc" "$gopath/src/github.com/lib" "$gopath/src/github.com/Masterminds/semver"
            cp -r /usr/share/gocode/src/github.com/jackc/{pgx,pgconn} "$gopath/src/github.com/jackc/"
            cp -r /usr/share/gocode/src/github.com/lib/pq "$gopath/src/github.com/lib/"
            ln -s /usr/share/gocode/src/github.com/Masterminds/semver "$gopath/src/github.com/Masterminds/semver/v3"
            url="postgres://postgres:pw@127.0.0.1:$port/pgx_test${ssl_query}"
            # pgconn's stmtcache tests are left out: they count the server's
            # pg_prepared_statements, which in transaction mode are pgmux's.
            for pkg in jackc/pgx/v4 jackc/pgconn lib/pq; do
                name="go-${pkg//\//-}"
                target=.
                [ "$pkg" = jackc/pgx/v4 ] && target=./...
                # lib/pq takes its server from libpq's variables; pgconn's tests of
                # config parsing must not see them (the URL has it all).
                pq_env=(-u PGPASSWORD -u PGSSLMODE)
                [ "$pkg" = lib/pq ] && pq_env=(PGHOST=127.0.0.1 PGPORT="$port" PGUSER=postgres PGDATABASE=pgx_test)
                (cd "$gopath/src/github.com/$pkg" && GO111MODULE=off GOFLAGS= GOPATH="$gopath:/usr/share/gocode" \
                    GOCACHE="$tmp/gocache" PGX_TEST_DATABASE="$url" PGX_TEST_CONN_STRING="$url" \
                    PGX_TEST_TCP_CONN_STRING="$url" PGX_TEST_PGBOUNCER_CONN_STRING="$url" \
                    env "${pq_env[@]}" timeout 1800 go test -count=1 "$target" >"$tmp/$name.log" 2>&1) || true
                grep -E '^--- FAIL' "$tmp/$name.log" | sed 's/^--- FAIL: /FAILED /' >&2 || true
                results+=("$name: $(count '^ok ' "$tmp/$name.log") packages ok, $(count '^FAIL[[:space:]]' "$tmp/$name.log") failed")
            done
            ;;
        rust)
            [ "$MODE" = direct ] && { results+=("rust: skipped (MODE=direct)"); continue; }
            say "tokio-postgres and postgres"
            # Here rather than at the start: asyncpg's tests drop hstore when done.
            psql_pg -d postgres -c "create extension if not exists hstore" \
                -c "create extension if not exists citext" -c "create extension if not exists ltree"
            for c in "tokio-postgres-$TOKIO_POSTGRES" "postgres-$POSTGRES"; do
                curl -fsSL "https://static.crates.io/crates/${c%-*}/$c.crate" | tar xz -C "$tmp"
                (cd "$tmp/$c" && CARGO_TARGET_DIR="$tmp/rust-target" timeout 1800 \
                    cargo test --quiet >"$tmp/$c.log" 2>&1) || true
                grep -E '^    [A-Za-z0-9_:]+$' "$tmp/$c.log" | sed 's/^ */FAILED /' >&2 || true
                results+=("$c: $(awk '/^test result/ { p += $4; f += $6; i += $8 }
                    END { printf "%d passed, %d failed, %d ignored", p, f, i }' "$tmp/$c.log")")
            done
            ;;
        sqlx)
            say "sqlx"
            curl -fsSL "https://static.crates.io/crates/sqlx/sqlx-$SQLX.crate" | tar xz -C "$tmp"
            sqlx_dir="$tmp/sqlx-$SQLX"
            # Its toolchain pin names a release this machine cannot fetch.
            rm -f "$sqlx_dir/rust-toolchain.toml"
            psql_pg -d sqlx -q -f "$sqlx_dir/tests/postgres/setup.sql" >/dev/null
            sqlx_test_crate "$tmp/sqlx-test"
            sed -i 's|^\[dev-dependencies.anyhow\]|[dev-dependencies.sqlx-test]\npath = "../sqlx-test"\n\n&|' \
                "$sqlx_dir/Cargo.toml"
            targets=()
            for t in postgres postgres-types postgres-describe postgres-macros postgres-derives \
                postgres-error postgres-query-builder; do targets+=(--test "$t"); done
            (cd "$sqlx_dir" && DATABASE_URL="postgres://postgres:pw@127.0.0.1:$port/sqlx${ssl_query}" \
                CARGO_TARGET_DIR="$tmp/rust-target" timeout 1800 cargo test --quiet --no-default-features \
                --features any,postgres,macros,_unstable-all-types,runtime-tokio,tls-rustls "${targets[@]}" \
                >"$tmp/sqlx.log" 2>&1) || true
            grep -E '^    [A-Za-z0-9_:]+$' "$tmp/sqlx.log" | sed 's/^ */FAILED /' >&2 || true
            results+=("sqlx-$SQLX: $(awk '/^test result/ { p += $4; f += $6; i += $8 }
                END { printf "%d passed, %d failed, %d ignored", p, f, i }' "$tmp/sqlx.log")")
            if grep -qE '^error(\[|:)' "$tmp/sqlx.log"; then
                grep -E -A5 '^error(\[|:)' "$tmp/sqlx.log" >&2
                results+=("sqlx: the tests did not build")
            fi
            ;;
        *) die "unknown suite $suite" ;;
    esac
done

say "results ($MODE)"
printf '%s\n' "${results[@]}"
