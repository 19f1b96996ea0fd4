#!/usr/bin/env bash
# A five-minute look at pgmux: a throwaway Postgres primary and streaming replica,
# pgmux in front of them, a pgbench workload through pgmux, and which server
# answered what. Everything lives in one temp dir and is removed on exit.
#
#   scripts/demo.sh             run, then keep everything up until Ctrl-C
#   scripts/demo.sh --no-wait   run the workload, clean up and exit
#
# Environment: PGMUX_BIN=path uses that binary instead of `cargo build --release`;
# PGMUX_PG_BIN=dir uses Postgres tools from dir (default /usr/lib/postgresql/15/bin).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

usage() { sed -n '2,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

wait_for_ctrl_c=1
for arg in "$@"; do
    case "$arg" in
        --no-wait) wait_for_ctrl_c=0 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "demo.sh: unknown argument $arg" >&2; usage >&2; exit 2 ;;
    esac
done

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'demo.sh: %s\n' "$*" >&2; exit 1; }

PG_BIN="${PGMUX_PG_BIN:-/usr/lib/postgresql/15/bin}"
bash scripts/install-deps.sh

# ---------------------------------------------------------------- cleanup
tmp=""
pgmux_pid=""
cleanup() {
    trap - EXIT INT TERM
    set +e
    if [ -n "$pgmux_pid" ] && kill -0 "$pgmux_pid" 2>/dev/null; then
        kill -TERM "$pgmux_pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pgmux_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pgmux_pid" 2>/dev/null
        wait "$pgmux_pid" 2>/dev/null
    fi
    if [ -n "$tmp" ]; then
        for data in "$tmp/replica/data" "$tmp/primary/data"; do
            if [ -f "$data/postmaster.pid" ]; then
                as_postgres "$PG_BIN/pg_ctl" -D "$data" stop -m immediate -w -t 30 >/dev/null 2>&1
            fi
        done
        rm -rf "$tmp"
    fi
    echo "demo.sh: cleaned up"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# ---------------------------------------------------------------- ports
chosen_ports=" "
# A port is taken when something listens on it, and also when a connection still
# holds it as its own end (a client's port, or one in TIME_WAIT after a burst of
# connections): a server's bind fails then too, so a bind is the test.
port_in_use() {
    ! python3 -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}
# Sets variable $1 to the first port from $2 up that nothing holds and this script
# has not chosen yet.
pick_port() {
    local port=$2
    while port_in_use "$port" || [[ "$chosen_ports" == *" $port "* ]]; do
        port=$((port + 1))
    done
    chosen_ports+="$port "
    printf -v "$1" '%s' "$port"
}

# ---------------------------------------------------------------- build
if [ -n "${PGMUX_BIN:-}" ]; then
    pgmux_bin=$PGMUX_BIN
else
    say "cargo build --release"
    cargo build --release --bin pgmux
    pgmux_bin="${CARGO_TARGET_DIR:-target}/release/pgmux"
fi
[ -x "$pgmux_bin" ] || die "no pgmux binary at $pgmux_bin"
pgmux_bin=$(cd "$(dirname "$pgmux_bin")" && pwd)/$(basename "$pgmux_bin")

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pgmux-demo.XXXXXX")
chmod 755 "$tmp"
mkdir "$tmp/primary" "$tmp/replica"
if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$tmp/primary" "$tmp/replica"
fi

pick_port primary_port 55432
pick_port replica_port $((primary_port + 1))
pick_port pgmux_port 6432
pick_port metrics_port 9930

# Settings for a throwaway server (the same as tests/support/postgres.rs).
write_settings() { # data_dir port socket_dir
    cat >"$1/pgmux_demo.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $2
unix_socket_directories = '$3'
password_encryption = 'scram-sha-256'
fsync = off
shared_buffers = 32MB
max_connections = 200
wal_level = replica
max_wal_senders = 5
hot_standby = on
CONF
    if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$1/pgmux_demo.conf"; fi
}

start_server() { # name
    as_postgres "$PG_BIN/pg_ctl" -D "$tmp/$1/data" -l "$tmp/$1/postgres.log" -w -t 120 start >/dev/null ||
        { tail -n 20 "$tmp/$1/postgres.log" >&2; die "$1 did not start"; }
}

# ---------------------------------------------------------------- primary
say "primary on 127.0.0.1:$primary_port"
as_postgres "$PG_BIN/initdb" -D "$tmp/primary/data" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >/dev/null
cat >"$tmp/primary/data/pg_hba.conf" <<'HBA'
# TYPE  DATABASE     USER     ADDRESS        METHOD
local   all          all                     trust
local   replication  all                     trust
host    all          md5user  127.0.0.1/32   md5
host    all          all      127.0.0.1/32   scram-sha-256
host    replication  all      127.0.0.1/32   scram-sha-256
HBA
echo "include 'pgmux_demo.conf'" >>"$tmp/primary/data/postgresql.conf"
write_settings "$tmp/primary/data" "$primary_port" "$tmp/primary"
start_server primary

superuser_sql() { # name db [psql args...]
    local name=$1 port=$primary_port db=$2
    shift 2
    [ "$name" = replica ] && port=$replica_port
    "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$tmp/$name" -p "$port" -U postgres -d "$db" "$@"
}
superuser_sql primary postgres -f - <<'SQL'
CREATE ROLE app LOGIN PASSWORD 'app-secret';
SET password_encryption = 'md5';
CREATE ROLE md5user LOGIN PASSWORD 'md5-secret';
RESET password_encryption;
CREATE DATABASE app OWNER app;
\connect app
CREATE TABLE t (id int PRIMARY KEY, v text);
ALTER TABLE t OWNER TO app;
GRANT SELECT, INSERT, UPDATE, DELETE ON t TO md5user;
SQL

# ---------------------------------------------------------------- replica
say "streaming replica on 127.0.0.1:$replica_port"
as_postgres "$PG_BIN/pg_basebackup" -h "$tmp/primary" -p "$primary_port" -U postgres \
    -D "$tmp/replica/data" -R -X stream -c fast --no-sync
write_settings "$tmp/replica/data" "$replica_port" "$tmp/replica"
start_server replica
[ "$(superuser_sql replica postgres -c 'select pg_is_in_recovery()')" = t ] ||
    die "the replica is not in recovery"

# ---------------------------------------------------------------- pgmux
config="$tmp/pgmux.toml"
cat >"$config" <<TOML
[proxy]
listen = "127.0.0.1:$pgmux_port"
metrics_listen = "127.0.0.1:$metrics_port"
pool_mode = "transaction"

[[users]]
name = "app"
password = "app-secret"

[databases.app]
pool_size = 8
read_write_split = true

[[databases.app.shards]]
primary = "127.0.0.1:$primary_port/app"
replicas = ["127.0.0.1:$replica_port/app"]
TOML

say "pgmux on 127.0.0.1:$pgmux_port (config $config)"
"$pgmux_bin" --config "$config" >"$tmp/pgmux.log" 2>&1 &
pgmux_pid=$!
ready=0
for _ in $(seq 300); do
    kill -0 "$pgmux_pid" 2>/dev/null || break
    if port_in_use "$pgmux_port"; then ready=1; break; fi
    sleep 0.1
done
if [ "$ready" != 1 ]; then
    cat "$tmp/pgmux.log" >&2
    die "pgmux did not start listening on 127.0.0.1:$pgmux_port"
fi

DATABASE_URL="postgres://app:app-secret@127.0.0.1:$pgmux_port/app"
echo "DATABASE_URL=$DATABASE_URL"
echo "metrics:     http://127.0.0.1:$metrics_port/metrics"

# ---------------------------------------------------------------- workload
export PGPASSWORD=app-secret
through_pgmux=(-h 127.0.0.1 -p "$pgmux_port" -U app)

xacts() { superuser_sql "$1" postgres -c "select xact_commit from pg_stat_database where datname = 'app'"; }
before_primary=$(xacts primary)
before_replica=$(xacts replica)

say "pgbench -i (through pgmux)"
"$PG_BIN/pgbench" "${through_pgmux[@]}" -i -s 1 app

say "pgbench -c 8 -T 5: TPC-B-like read/write transactions (through pgmux)"
"$PG_BIN/pgbench" "${through_pgmux[@]}" -c 8 -j 2 -T 5 app

say "pgbench -S -c 8 -T 5: select-only (through pgmux)"
"$PG_BIN/pgbench" "${through_pgmux[@]}" -S -c 8 -j 2 -T 5 app

# ---------------------------------------------------------------- where did it go
via_pgmux() { "$PG_BIN/psql" -X -q -At -F ' ' "${through_pgmux[@]}" -d app "$@"; }
show_where='select inet_server_port(), pg_is_in_recovery()'
say "where statements went (primary is port $primary_port, replica is port $replica_port)"
printf '%-44s %s\n' "" "port in_recovery"
printf '%-44s %s\n' "a plain select:" "$(via_pgmux -c "$show_where")"
printf '%-44s %s\n' "a select inside a read/write transaction:" \
    "$(via_pgmux -c begin -c "$show_where" -c commit)"
printf '%-44s %s\n' "a select with /* pgmux: route=primary */:" \
    "$(via_pgmux -c "/* pgmux: route=primary */ $show_where")"
printf '%-44s %s\n' "transactions committed on the primary:" \
    "$(($(xacts primary) - before_primary))"
printf '%-44s %s\n' "transactions committed on the replica:" \
    "$(($(xacts replica) - before_replica))"

if [ "$wait_for_ctrl_c" = 0 ]; then
    say "done (--no-wait): cleaning up"
    exit 0
fi

say "pgmux is running: psql \"$DATABASE_URL\"  (Ctrl-C stops everything)"
set +e
wait "$pgmux_pid"
status=$?
pgmux_pid=""
echo "pgmux exited with status $status; last log lines:" >&2
tail -n 20 "$tmp/pgmux.log" >&2
exit "$status"
