#!/usr/bin/env bash
# Load benchmark: direct Postgres vs PgBouncer vs pgmux, same Postgres, same pool size,
# SCRAM everywhere, transaction pooling (issue 8). See BENCHMARKS.md.
#
#   bash benches/load.sh                 # full run (10 s per pgbench run, 10,000 idle clients)
#   QUICK=1 bash benches/load.sh         # self-check: 2 s runs, 1,000 idle clients
#   WORKERS="1 2" bash benches/load.sh   # one pgmux column per worker count
#   WORKERS="1 1e" bash benches/load.sh  # io_uring (default) against epoll (PGMUX_IO=epoll)
#   WORKERS="1n 1" bash benches/load.sh  # without and with server_pipelining
#   PGMUX_BASELINE=/path/to/pgmux WORKERS="1 1b" bash benches/load.sh  # this build against another
#
# Environment (defaults in brackets):
#   DURATION      seconds per pgbench run                        [10; QUICK: 2]
#   ROUNDS        rounds of every workload × target; medians     [1]
#   WORKERS       pgmux [proxy].workers; a list runs one pgmux each  [0 = one per core]
#                 (an "e" suffix runs that one on epoll: PGMUX_IO=epoll; an "n"
#                 suffix with server_pipelining = false, "p" with it on, the
#                 default; a "b" suffix runs the binary PGMUX_BASELINE instead of
#                 this build, to compare two builds in one run)
#   IDLE_CLIENTS  idle logged-in clients for the memory figure   [10000; QUICK: 1000]
#   SCALE         pgbench -i scale                               [10]
#   POOL_SIZE     server connections per pool (both proxies)     [20]
#   JOBS          pgbench -j                                     [2]
#   ONLY          regex: run only the workloads whose name matches (e.g. 'select')
#   SKIP_MEMORY=1 skip the idle-client memory measurement
#   KEEP=1        keep the temp dir (logs, configs) after the run
#   UPSTREAM      how both proxies reach Postgres: tcp (127.0.0.1) or unix (its   [tcp]
#                 socket directory, as a co-located pooler would); clients always use TCP
#   CLIENTS       how pgbench reaches every target: tcp (127.0.0.1) or unix (each    [tcp]
#                 one's socket directory: Postgres', and PgBouncer's and pgmux's
#                 unix_socket_dir, as clients on the proxy's machine would); the
#                 idle-client memory test always uses TCP
#   FLOOR=1       also measure benches/floor: byte forwarders with no pooling logic, on
#                 epoll and on io_uring (what a proxy costs at least, per I/O model;
#                 with UPSTREAM=unix only the io_uring one)
#   OUT           also write the report to this file        [target/bench/load-last.md]
#
# It installs what it needs (scripts/install-deps.sh), builds pgmux in release, starts
# one throwaway Postgres 15, PgBouncer 1.18 and pgmux on free 127.0.0.1 ports, runs the
# workloads interleaved (each round: every workload against every target back to back,
# target order rotating between rounds) and prints a markdown table. Everything it
# started is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    DURATION=${DURATION:-2}
    IDLE_CLIENTS=${IDLE_CLIENTS:-1000}
fi
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-1}
WORKERS=${WORKERS:-0}
IDLE_CLIENTS=${IDLE_CLIENTS:-10000}
SCALE=${SCALE:-10}
POOL_SIZE=${POOL_SIZE:-20}
JOBS=${JOBS:-2}
ONLY=${ONLY:-}
SKIP_MEMORY=${SKIP_MEMORY:-0}
FLOOR=${FLOOR:-0}
KEEP=${KEEP:-0}
OUT=${OUT:-$ROOT/target/bench/load-last.md}
UPSTREAM=${UPSTREAM:-tcp}
CLIENTS=${CLIENTS:-tcp}

PG_BIN=${PGMUX_PG_BIN:-/usr/lib/postgresql/15/bin}
BENCH_USER=bench
# Logs in with md5 everywhere (its password stored as md5 in Postgres): the
# connect-per-transaction workload again without libpq's PBKDF2 on the client side.
MD5_USER=bench_md5
BENCH_PASSWORD=bench-secret-$$
BENCH_DB=bench

log() { printf '[load %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
case "$UPSTREAM" in tcp | unix) ;; *) die "UPSTREAM is tcp or unix, not $UPSTREAM" ;; esac
case "$CLIENTS" in tcp | unix) ;; *) die "CLIENTS is tcp or unix, not $CLIENTS" ;; esac
[ "$CLIENTS" = unix ] && [ "$FLOOR" = 1 ] && die "the floor forwarders listen on TCP only: FLOOR=1 needs CLIENTS=tcp"

# ---------------------------------------------------------------- setup

log "checking dependencies"
bash scripts/install-deps.sh
command -v pgbouncer >/dev/null || die "pgbouncer not installed"
[ -x "$PG_BIN/pgbench" ] || die "no pgbench in $PG_BIN"
[ "$(id -u)" = 0 ] || die "run as root (Postgres and PgBouncer are started as the postgres user)"

# 10,000 idle clients: pgbouncer, pgmux and the client process each need that many fds.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$SKIP_MEMORY" != 1 ] && [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((IDLE_CLIENTS + 512)) ]; then
    log "open-file limit $(ulimit -n) is too low for $IDLE_CLIENTS idle clients; using $(( $(ulimit -n) - 512 ))"
    IDLE_CLIENTS=$(( $(ulimit -n) - 512 ))
fi

log "building pgmux (release)"
cargo build --release --quiet
PGMUX_BIN=$ROOT/target/release/pgmux

# Python with asyncpg for the idle clients: the test venv when it has asyncpg,
# else a venv of our own under target/.
PY=""
if [ "$SKIP_MEMORY" != 1 ]; then
    for cand in "$ROOT/target/pyvenv/bin/python" "$ROOT/target/bench-venv/bin/python"; do
        if [ -x "$cand" ] && "$cand" -c 'import asyncpg' 2>/dev/null; then PY=$cand; break; fi
    done
    if [ -z "$PY" ]; then
        log "making target/bench-venv with asyncpg"
        python3 -m venv "$ROOT/target/bench-venv"
        "$ROOT/target/bench-venv/bin/pip" install --quiet asyncpg
        PY=$ROOT/target/bench-venv/bin/python
    fi
fi

CLK_TCK=$(getconf CLK_TCK)
TMP=$(mktemp -d /tmp/pgmux-load.XXXXXX)
chmod 755 "$TMP"
mkdir -p "$TMP/pg" "$TMP/pgbouncer" "$TMP/runs"
chown postgres:postgres "$TMP/pg" "$TMP/pgbouncer"

PIDS=()          # proxies we started
IDLE_PID=""      # the idle-clients helper, while it runs
RUN_PIDS=()      # pgbench and its CPU sampler, while they run
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "$IDLE_PID" ] && kill "$IDLE_PID" 2>/dev/null || true
    for pid in "${RUN_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ -f "$TMP/pg/data/postmaster.pid" ]; then
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$TMP/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    if [ "$KEEP" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
set -E
trap 'log "failed at line $LINENO: $BASH_COMMAND"' ERR
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # PORT PID NAME LOG
    local i
    for i in $(seq 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        if [ -n "$2" ] && ! kill -0 "$2" 2>/dev/null; then
            tail -n 30 "$4" >&2 || true
            die "$3 exited before listening on $1"
        fi
        sleep 0.1
    done
    tail -n 30 "$4" >&2 || true
    die "$3 is not listening on $1 after 30 s"
}

read -r -a WORKER_LIST <<<"$WORKERS"
N_PGMUX=${#WORKER_LIST[@]}

# ---- Postgres 15
PG_PORT=$(free_port)
# 256 direct clients while every proxy keeps its two pools open (bench's, and
# bench_md5's from the md5 workload of the round before), plus reserved slots.
MAX_CONN=$(( 256 + 2 * POOL_SIZE * (1 + N_PGMUX) + 20 ))
[ "$MAX_CONN" -lt 300 ] && MAX_CONN=300
log "starting Postgres on 127.0.0.1:$PG_PORT (max_connections=$MAX_CONN)"
runuser -u postgres -- "$PG_BIN/initdb" -D "$TMP/pg/data" -U postgres -E UTF8 --no-sync \
    --auth-local=trust --auth-host=scram-sha-256 >"$TMP/pg/initdb.log" 2>&1 \
    || { cat "$TMP/pg/initdb.log" >&2; die "initdb failed"; }
cat >>"$TMP/pg/data/postgresql.conf" <<EOF
# benches/load.sh
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$TMP/pg'
max_connections = $MAX_CONN
shared_buffers = 128MB
fsync = off
password_encryption = 'scram-sha-256'
EOF
cat >"$TMP/pg/data/pg_hba.conf" <<EOF
local   all  postgres            trust
local   all  $MD5_USER           md5
local   all  all                 scram-sha-256
host    all  $MD5_USER  127.0.0.1/32   md5
host    all  all  127.0.0.1/32   scram-sha-256
EOF
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$TMP/pg/data" -l "$TMP/pg/server.log" -w start >/dev/null \
    || { tail -n 30 "$TMP/pg/server.log" >&2; die "Postgres did not start"; }
psql_su() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$TMP/pg" -p "$PG_PORT" -U postgres "$@"; }
psql_su -d postgres -c "CREATE ROLE $BENCH_USER LOGIN PASSWORD '$BENCH_PASSWORD'" \
    -c "CREATE DATABASE $BENCH_DB OWNER $BENCH_USER" \
    -c "SET password_encryption = 'md5'" \
    -c "CREATE ROLE $MD5_USER LOGIN PASSWORD '$BENCH_PASSWORD' IN ROLE $BENCH_USER"
export PGPASSWORD=$BENCH_PASSWORD
log "pgbench -i -s $SCALE"
"$PG_BIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U "$BENCH_USER" "$BENCH_DB" \
    >"$TMP/pg/pgbench-init.log" 2>&1 || { cat "$TMP/pg/pgbench-init.log" >&2; die "pgbench -i failed"; }

# Where the proxies listen for clients on a Unix-domain socket (CLIENTS=unix).
mkdir -p "$TMP/clients"
chmod 1777 "$TMP/clients"
PROXY_SOCKET_DIR=""
[ "$CLIENTS" = unix ] && PROXY_SOCKET_DIR=$TMP/clients

# Where both proxies find Postgres: libpq's host, a socket directory for unix.
UPSTREAM_HOST=127.0.0.1
[ "$UPSTREAM" = unix ] && UPSTREAM_HOST=$TMP/pg

# ---- PgBouncer
BOUNCER_PORT=""
BOUNCER_PID=""
start_pgbouncer() {
    BOUNCER_PORT=$(free_port)
    cat >"$TMP/pgbouncer/userlist.txt" <<EOF
"$BENCH_USER" "$BENCH_PASSWORD"
"$MD5_USER" "$BENCH_PASSWORD"
EOF
    cat >"$TMP/pgbouncer/hba.conf" <<EOF
local all $MD5_USER md5
local all all scram-sha-256
host all $MD5_USER 127.0.0.1/32 md5
host all all 127.0.0.1/32 scram-sha-256
EOF
    cat >"$TMP/pgbouncer/pgbouncer.ini" <<EOF
[databases]
$BENCH_DB = host=$UPSTREAM_HOST port=$PG_PORT dbname=$BENCH_DB

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir = $PROXY_SOCKET_DIR
auth_type = hba
auth_hba_file = $TMP/pgbouncer/hba.conf
auth_file = $TMP/pgbouncer/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = $(( IDLE_CLIENTS + 1000 ))
ignore_startup_parameters = extra_float_digits
logfile = $TMP/pgbouncer/pgbouncer.log
log_connections = 0
log_disconnections = 0
EOF
    chown -R postgres:postgres "$TMP/pgbouncer"
    # setpriv execs pgbouncer in place, so $! is pgbouncer itself.
    setpriv --reuid=postgres --regid=postgres --init-groups -- \
        pgbouncer "$TMP/pgbouncer/pgbouncer.ini" >>"$TMP/pgbouncer/stdout.log" 2>&1 &
    BOUNCER_PID=$!
    PIDS+=("$BOUNCER_PID")
    wait_port "$BOUNCER_PORT" "$BOUNCER_PID" pgbouncer "$TMP/pgbouncer/pgbouncer.log"
}
stop_proxy() { # PID: stops it and forgets it (its number may be reused later)
    local p keep=()
    kill -INT "$1" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# ---- pgmux (one per entry of WORKERS)
declare -A PGMUX_PORT PGMUX_PID
pgmux_name() { if [ "$N_PGMUX" = 1 ]; then echo pgmux; else echo "pgmux-w$1"; fi; }
start_pgmux() { # WORKERS, with optional suffixes "e" (epoll), "n" or "p" (server_pipelining off, on) and "b" (PGMUX_BASELINE)
    local w=${1//[epnb]/} io=io_uring pipelining=true bin=$PGMUX_BIN name port mport dir
    [[ $1 == *e* ]] && io=epoll
    [[ $1 == *n* ]] && pipelining=false
    if [[ $1 == *b* ]]; then
        bin=${PGMUX_BASELINE:?"a \"b\" suffix needs PGMUX_BASELINE, the path of another pgmux binary"}
    fi
    name=$(pgmux_name "$1")
    dir=$TMP/$name
    mkdir -p "$dir"
    port=$(free_port)
    mport=$(free_port)
    cat >"$dir/pgmux.toml" <<EOF
[proxy]
listen = "127.0.0.1:$port"
metrics_listen = "127.0.0.1:$mport"
pool_mode = "transaction"
max_client_conn = $(( IDLE_CLIENTS + 1000 ))
workers = $w
auth_method = "scram-sha-256"
unix_socket_dir = "$PROXY_SOCKET_DIR"
server_pipelining = $pipelining

[[users]]
name = "$BENCH_USER"
password = "$BENCH_PASSWORD"

[[users]]
name = "$MD5_USER"
password = "$BENCH_PASSWORD"
auth_method = "md5"

[databases.$BENCH_DB]
pool_size = $POOL_SIZE

[[databases.$BENCH_DB.shards]]
primary = "$UPSTREAM_HOST:$PG_PORT/$BENCH_DB"
replicas = []
EOF
    PGMUX_IO=$io "$bin" --config "$dir/pgmux.toml" >>"$dir/pgmux.log" 2>&1 &
    PGMUX_PID[$name]=$!
    PGMUX_PORT[$name]=$port
    PIDS+=("$!")
    wait_port "$port" "$!" "$name" "$dir/pgmux.log"
}

start_pgbouncer
log "PgBouncer $(pgbouncer --version | head -n 1 | awk '{print $2}') on 127.0.0.1:$BOUNCER_PORT (pid $BOUNCER_PID)"
for w in "${WORKER_LIST[@]}"; do
    start_pgmux "$w"
    n=$(pgmux_name "$w")
    log "$n (workers=$w) on 127.0.0.1:${PGMUX_PORT[$n]} (pid ${PGMUX_PID[$n]})"
done

TARGETS=(direct pgbouncer)
for w in "${WORKER_LIST[@]}"; do TARGETS+=("$(pgmux_name "$w")"); done

# The floor: forwarders that pass bytes between one client and one server connection
# of their own, nothing else (benches/floor). They share the pgmux bookkeeping.
if [ "$FLOOR" = 1 ]; then
    log "building benches/floor"
    cargo build --release --quiet --manifest-path "$ROOT/benches/floor/Cargo.toml" --target-dir "$ROOT/target/floor"
    floors=(floor-epoll floor-uring)
    floor_upstream=127.0.0.1:$PG_PORT
    if [ "$UPSTREAM" = unix ]; then
        # Only the io_uring forwarder speaks to a Unix-domain socket.
        floors=(floor-uring)
        floor_upstream=$TMP/pg/.s.PGSQL.$PG_PORT
    fi
    for f in "${floors[@]}"; do
        port=$(free_port)
        "$ROOT/target/floor/release/$f" "127.0.0.1:$port" "$floor_upstream" >>"$TMP/$f.log" 2>&1 &
        PGMUX_PID[$f]=$!
        PGMUX_PORT[$f]=$port
        PIDS+=("$!")
        wait_port "$port" "$!" "$f" "$TMP/$f.log"
        log "$f on 127.0.0.1:$port (pid $!)"
        TARGETS+=("$f")
    done
fi

target_port() {
    case $1 in
        direct) echo "$PG_PORT" ;;
        pgbouncer) echo "$BOUNCER_PORT" ;;
        *) echo "${PGMUX_PORT[$1]}" ;;
    esac
}
target_pid() {
    case $1 in
        direct) echo "" ;;
        pgbouncer) echo "$BOUNCER_PID" ;;
        *) echo "${PGMUX_PID[$1]}" ;;
    esac
}
cpu_ticks() { # PID -> utime+stime of the whole process, in clock ticks
    # Fields after "(comm) ": state is 1st, utime the 12th, stime the 13th.
    sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# ---------------------------------------------------------------- workloads

# name | pgbench arguments | targets that cannot run it ("n/a")
WORKLOADS=(
    "select-simple-c32|-S -M simple -c 32|"
    "select-extended-c32|-S -M extended -c 32|"
    "select-prepared-c32|-S -M prepared -c 32|pgbouncer"
    "tpcb-simple-c32|-M simple -c 32|"
    "select-simple-c256|-S -M simple -c 256|"
    "select-connect-c16|-S -C -c 16|"
    "select-connect-md5-c16|-S -C -c 16 -U $MD5_USER|floor-epoll floor-uring"
)
declare -A W_ARGS W_NA W_LABEL
W_NAMES=()
for spec in "${WORKLOADS[@]}"; do
    IFS='|' read -r name args na <<<"$spec"
    if [ -n "$ONLY" ] && ! [[ $name =~ $ONLY ]]; then continue; fi
    W_NAMES+=("$name"); W_ARGS[$name]=$args; W_NA[$name]=$na
done
W_LABEL[select-simple-c32]='`-S -M simple -c 32`'
W_LABEL[select-extended-c32]='`-S -M extended -c 32`'
W_LABEL[select-prepared-c32]='`-S -M prepared -c 32`'
W_LABEL[tpcb-simple-c32]='TPC-B-like `-M simple -c 32`'
W_LABEL[select-simple-c256]='`-S -M simple -c 256`'
W_LABEL[select-connect-c16]='`-S -C -c 16`'
W_LABEL[select-connect-md5-c16]='`-S -C -c 16`, md5 logins'

is_na() { [[ " ${W_NA[$1]} " == *" $2 "* ]]; }

pgbench_run() { # TARGET DURATION OUTPREFIX ARGS...
    local target=$1 dur=$2 prefix=$3; shift 3
    local port host=127.0.0.1; port=$(target_port "$target")
    if [ "$CLIENTS" = unix ]; then
        host=$PROXY_SOCKET_DIR
        [ "$target" = direct ] && host=$TMP/pg
    fi
    # pgbench waits forever for a connection that never completes: bounded here, so a
    # target that hangs is a PROBLEM line rather than the end of the run.
    # shellcheck disable=SC2086
    timeout --signal=INT --kill-after=10 $((dur * 3 + 60)) \
        "$PG_BIN/pgbench" -n -T "$dur" -j "$JOBS" -h "$host" -p "$port" -U "$BENCH_USER" \
        "$@" "$BENCH_DB" >"$prefix.out" 2>"$prefix.err"
}

# Samples the utime+stime of process PID every 100 ms while process WATCH runs, as
# "epoch_us ticks" lines, without forking (the machine has 2 cores to share).
sample_cpu() { # PID WATCH OUT
    local pid=$1 watch=$2 line fd f
    exec {fd}<> <(:)
    while kill -0 "$watch" 2>/dev/null; do
        read -r line <"/proc/$pid/stat" || break
        read -r -a f <<<"${line##*) }"
        echo "${EPOCHREALTIME/[.,]/} $(( f[11] + f[12] ))"
        read -r -t 0.1 -u "$fd" || true
    done >"$3"
}

# Seconds pgbench needs for its initial logins (each a SCRAM exchange) before the
# steady window starts: -T counts them.
connect_allowance() { # ARGS...
    local c=1 connect=0
    while [ $# -gt 0 ]; do
        case $1 in -c) c=$2; shift ;; -C) connect=1 ;; esac
        shift
    done
    if [ "$connect" = 1 ]; then echo 0; else echo $(( 1 + (c * 50 / JOBS + 999) / 1000 )); fi
}

# From pgbench's per-transaction logs (client, txn, latency_us, script, epoch_s, us) and
# the CPU samples: the steady window is from the moment every client has finished a
# transaction to the moment the first client finished its last one. Prints
# "window_s txns tps p50_us p99_us cpu_us_per_txn".
analyze_run() { # PREFIX HAS_CPU
    local prefix=$1
    { cat "$prefix".log.* 2>/dev/null || true; } | awk '$3 ~ /^[0-9]+$/ { printf "%s %s %.0f\n", $1, $3, $5 * 1000000 + $6 }' >"$prefix.txn"
    read -r ws we < <(awk '
        { if (!($1 in first) || $3 < first[$1]) first[$1] = $3; if ($3 > last[$1]) last[$1] = $3 }
        END { ws = 0; we = -1; for (c in first) { if (first[c] > ws) ws = first[c]; if (we < 0 || last[c] < we) we = last[c] }
              printf "%.0f %.0f\n", ws, we }' "$prefix.txn")
    awk -v ws="$ws" -v we="$we" '$3 > ws && $3 <= we { print $2 }' "$prefix.txn" | sort -n >"$prefix.lat"
    local n; n=$(wc -l <"$prefix.lat")
    local p50 p99 cpu="-"
    p50=$(percentile 0.50 "$prefix.lat"); p99=$(percentile 0.99 "$prefix.lat")
    if [ "$2" = 1 ] && [ -s "$prefix.cpu" ] && [ "$n" -gt 0 ]; then
        # ticks at ws and we, linearly interpolated between samples
        cpu=$(awk -v ws="$ws" -v we="$we" -v hz="$CLK_TCK" -v n="$n" '
            function at(x,   i) { if (x <= t[1]) return v[1]
                for (i = 2; i <= N; i++) if (t[i] >= x) return v[i-1] + (v[i] - v[i-1]) * (x - t[i-1]) / (t[i] - t[i-1])
                return v[N] }
            { N++; t[N] = $1; v[N] = $2 }
            END { printf "%.1f\n", (at(we) - at(ws)) * 1e6 / hz / n }' "$prefix.cpu")
    fi
    awk -v ws="$ws" -v we="$we" -v n="$n" -v p50="$p50" -v p99="$p99" -v cpu="$cpu" 'BEGIN {
        w = (we - ws) / 1e6; printf "%.2f %d %s %s %s %s\n", w, n, (w > 0 ? sprintf("%.1f", n / w) : "0"), p50, p99, cpu }'
}

percentile() { # P FILE(sorted numbers) -> value
    awk -v p="$1" '{a[NR]=$1} END { if (NR == 0) { print "-"; exit }
        i = int(p * NR + 0.999999); if (i < 1) i = 1; if (i > NR) i = NR; print a[i] }' "$2"
}

declare -A R_TPS R_P50 R_P99 R_CPU R_TXN   # key: workload/target -> space-separated, one per round
PROBLEMS=()
run_one() { # WORKLOAD TARGET ROUND
    local w=$1 t=$2 r=$3
    local prefix=$TMP/runs/$w.$t.r$r pid pgb sampler="" rc=0 errs="" allow
    pid=$(target_pid "$t")
    # shellcheck disable=SC2086
    allow=$(connect_allowance ${W_ARGS[$w]})
    # shellcheck disable=SC2086
    pgbench_run "$t" $((DURATION + allow)) "$prefix" ${W_ARGS[$w]} -l --log-prefix="$prefix.log" &
    pgb=$!
    RUN_PIDS=("$pgb")
    if [ -n "$pid" ]; then sample_cpu "$pid" "$pgb" "$prefix.cpu" & sampler=$!; RUN_PIDS+=("$sampler"); fi
    wait "$pgb" || rc=$?
    [ -n "$sampler" ] && wait "$sampler" 2>/dev/null
    RUN_PIDS=()
    local window txns tps p50 p99 cpu pg_tps failed
    # A run that logged nothing (pgbench could not connect) is a PROBLEM line below,
    # not the end of the benchmark.
    read -r window txns tps p50 p99 cpu < <(analyze_run "$prefix" "$([ -n "$pid" ] && echo 1 || echo 0)") \
        || { window=-; txns=0; tps=-; p50=-; p99=-; cpu=-; }
    rm -f "$prefix".log.* "$prefix.txn"
    pg_tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$prefix.out" | head -n 1)
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$prefix.out" | head -n 1)
    if [ "$rc" != 0 ] || [ "${failed:-0}" != 0 ] || [ "$txns" = 0 ] || grep -qiE 'error|fatal|abort' "$prefix.err"; then
        errs="rc=$rc failed=${failed:-?} txns=$txns: $( { grep -iE 'error|fatal|abort|fail' "$prefix.err" || true; } | sed 's/^client [0-9]* /client N /' | sort | uniq -c | sort -rn | head -n 3 | tr '\n' ';' | cut -c1-400)"
        PROBLEMS+=("$w via $t (round $r): $errs")
    fi
    local key=$w/$t
    R_TPS[$key]+="$tps "; R_P50[$key]+="$p50 "; R_P99[$key]+="$p99 "; R_CPU[$key]+="$cpu "; R_TXN[$key]+="$txns "
    log "$(printf '%-20s %-10s tps=%-8s (pgbench %s) window=%ss txns=%s p50=%sus p99=%sus cpu/txn=%sus%s' \
        "$w" "$t" "$tps" "${pg_tps:-?}" "$window" "$txns" "$p50" "$p99" "$cpu" "${errs:+  PROBLEM: $errs}")"
}

median() { # numbers... ("-" and "nan" ignored)
    printf '%s\n' "$@" | awk '$1 != "-" && $1 != "nan" && $1 != ""' | sort -g \
        | awk '{a[NR]=$1} END { if (NR == 0) { print "-"; exit }
            if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2] + a[NR/2+1]) / 2 }'
}

log "warm-up: 2 s of -S -c 32 against every target (fills the pools)"
for t in "${TARGETS[@]}"; do
    pgbench_run "$t" 2 "$TMP/runs/warmup.$t" -S -c 32 || log "warm-up against $t failed: $(head -c 300 "$TMP/runs/warmup.$t.err")"
done

START=$(date +%s)
for r in $(seq "$ROUNDS"); do
    log "round $r of $ROUNDS (${#W_NAMES[@]} workloads x ${#TARGETS[@]} targets, $DURATION s each)"
    for w in "${W_NAMES[@]}"; do
        n=${#TARGETS[@]}
        for i in $(seq 0 $((n - 1))); do
            t=${TARGETS[$(( (i + r - 1) % n ))]}
            is_na "$w" "$t" && continue
            run_one "$w" "$t" "$r"
        done
    done
done
RUN_SECONDS=$(( $(date +%s) - START ))

# ---------------------------------------------------------------- memory

declare -A M_BASE M_IDLE M_QUERIED M_INFO
measure_idle() { # NAME PID PORT
    local name=$1 pid=$2 port=$3 line base idle queried
    sleep 1
    base=$(rss_kib "$pid")
    coproc IDLE { exec "$PY" "$ROOT/benches/idle_clients.py" --port "$port" --user "$BENCH_USER" \
        --password "$BENCH_PASSWORD" --database "$BENCH_DB" -n "$IDLE_CLIENTS" 2>>"$TMP/idle.$name.err"; }
    IDLE_PID=$IDLE_PID
    local out=${IDLE[0]} in=${IDLE[1]}
    if ! read -r -t 900 line <&"$out"; then log "$name: idle clients did not report"; return 1; fi
    sleep 2
    idle=$(rss_kib "$pid")
    M_INFO[$name]="logins: $line"
    echo next >&"$in"
    if ! read -r -t 900 line <&"$out"; then log "$name: idle clients did not report"; return 1; fi
    sleep 2
    queried=$(rss_kib "$pid")
    M_INFO[$name]+="; $line"
    echo done >&"$in"
    wait "$IDLE_PID" 2>/dev/null || true
    IDLE_PID=""
    M_BASE[$name]=$base; M_IDLE[$name]=$idle; M_QUERIED[$name]=$queried
    log "$name: RSS ${base} KiB empty, ${idle} KiB with $IDLE_CLIENTS idle clients, ${queried} KiB after one query each (${M_INFO[$name]})"
    if [ -s "$TMP/idle.$name.err" ]; then
        PROBLEMS+=("memory test via $name: $(head -n 3 "$TMP/idle.$name.err" | tr '\n' ';' | cut -c1-400)")
    fi
}

MEM_TARGETS=()
if [ "$SKIP_MEMORY" != 1 ]; then
    log "memory: $IDLE_CLIENTS idle logged-in clients per proxy, each proxy freshly restarted"
    stop_proxy "$BOUNCER_PID"
    start_pgbouncer
    measure_idle pgbouncer "$BOUNCER_PID" "$BOUNCER_PORT" && MEM_TARGETS+=(pgbouncer)
    stop_proxy "$BOUNCER_PID"
    for w in "${WORKER_LIST[@]}"; do
        n=$(pgmux_name "$w")
        stop_proxy "${PGMUX_PID[$n]}"
        start_pgmux "$w"
        measure_idle "$n" "${PGMUX_PID[$n]}" "${PGMUX_PORT[$n]}" && MEM_TARGETS+=("$n")
        stop_proxy "${PGMUX_PID[$n]}"
    done
fi

# pgmux problems it logged itself (errors and warnings), for the report.
for w in "${WORKER_LIST[@]}"; do
    n=$(pgmux_name "$w")
    c=$(grep -ciE 'error|warn' "$TMP/$n/pgmux.log" || true)
    if [ "${c:-0}" -gt 0 ]; then
        PROBLEMS+=("$n logged $c error/warning lines, e.g.: $(grep -iE 'error|warn' "$TMP/$n/pgmux.log" | sed 's/^[^ ]* *//' | sort | uniq -c | sort -rn | head -n 3 | tr '\n' ';' | cut -c1-500)")
    fi
done

# ---------------------------------------------------------------- report

fmt_int() { awk -v x="$1" 'BEGIN { if (x == "-" || x == "") { print "-"; exit }
    s = sprintf("%d", x + 0.5); o = ""; while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) }; print s o }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f\n", a / b }'; }
one_decimal() { awk -v x="$1" 'BEGIN { if (x == "-") print "-"; else printf "%.1f", x }'; }
ms() { awk -v x="$1" 'BEGIN { if (x == "-") print "-"; else printf "%.2f", x / 1000 }'; }
cell() { # metric workload target -> median over rounds
    local -n arr=$1
    local v=${arr[$2/$3]:-}
    [ -z "$v" ] && { echo "-"; return; }
    # shellcheck disable=SC2086
    median $v
}

PGMUXES=("${TARGETS[@]:2}")
report() {
    echo "### pgmux load benchmark ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    local cmd="" v
    for v in QUICK DURATION ROUNDS WORKERS IDLE_CLIENTS SCALE POOL_SIZE JOBS ONLY SKIP_MEMORY UPSTREAM CLIENTS FLOOR; do
        if printenv "$v" >/dev/null; then cmd+="$v=$(printf '%q' "$(printenv "$v")") "; fi
    done
    echo "Command: \`${cmd}bash benches/load.sh\`"
    echo "Machine: $(nproc) cores, $(uname -r), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo '+dirty')."
    echo "Postgres $("$PG_BIN/postgres" --version | awk '{print $3}') (fsync=off, shared_buffers=128MB), PgBouncer $(pgbouncer --version | head -n 1 | awk '{print $2}'), pgmux release build; transaction mode, pool_size $POOL_SIZE, scram-sha-256 everywhere but the md5 row (its user logs in with md5 to every target); proxies reach Postgres over $( [ "$UPSTREAM" = unix ] && echo "its Unix-domain socket" || echo TCP), clients connect over $( [ "$CLIENTS" = unix ] && echo "each target's Unix-domain socket" || echo TCP); pgbench -s $SCALE, -T $DURATION, -j $JOBS, $ROUNDS round(s) (medians); pgmux workers: ${WORKER_LIST[*]} (0 = one per core)."
    echo
    local hdr="| workload | direct tps | pgbouncer tps"
    local sep="|---|---:|---:"
    for p in "${PGMUXES[@]}"; do hdr+=" | $p tps | $p/pgbouncer | $p/direct"; sep+="|---:|---:|---:"; done
    for t in "${TARGETS[@]}"; do hdr+=" | $t p50/p99 ms"; sep+="|---:"; done
    hdr+=" | pgbouncer CPU µs/txn"; sep+="|---:"
    for p in "${PGMUXES[@]}"; do hdr+=" | $p CPU µs/txn"; sep+="|---:"; done
    [ "${#W_NAMES[@]}" -gt 0 ] && { echo "$hdr |"; echo "$sep|"; }
    for w in "${W_NAMES[@]}"; do
        local row="| ${W_LABEL[$w]}" d b x
        d=$(cell R_TPS "$w" direct); b=$(cell R_TPS "$w" pgbouncer)
        row+=" | $(fmt_int "$d") | $( is_na "$w" pgbouncer && echo n/a || fmt_int "$b")"
        for p in "${PGMUXES[@]}"; do
            x=$(cell R_TPS "$w" "$p")
            row+=" | $(fmt_int "$x") | $(ratio "$x" "$b") | $(ratio "$x" "$d")"
        done
        for t in "${TARGETS[@]}"; do
            if is_na "$w" "$t"; then row+=" | n/a"; continue; fi
            row+=" | $(ms "$(cell R_P50 "$w" "$t")")/$(ms "$(cell R_P99 "$w" "$t")")"
        done
        row+=" | $( is_na "$w" pgbouncer && echo n/a || one_decimal "$(cell R_CPU "$w" pgbouncer)")"
        for p in "${PGMUXES[@]}"; do row+=" | $(one_decimal "$(cell R_CPU "$w" "$p")")"; done
        echo "$row |"
    done
    echo
    if [ "${#MEM_TARGETS[@]}" -gt 0 ]; then
        echo "RSS per idle client ($IDLE_CLIENTS logged-in clients held by one asyncpg process; each proxy freshly started; (RSS with clients − RSS empty) / clients):"
        echo
        echo "| proxy | RSS empty | RSS with $IDLE_CLIENTS idle clients | per idle client | after one \`select 1\` each | per client then |"
        echo "|---|---:|---:|---:|---:|---:|"
        for m in "${MEM_TARGETS[@]}"; do
            local b=${M_BASE[$m]} i=${M_IDLE[$m]} q=${M_QUERIED[$m]}
            printf '| %s | %.1f MiB | %.1f MiB | %s B | %.1f MiB | %s B |\n' "$m" \
                "$(awk -v x="$b" 'BEGIN{print x/1024}')" "$(awk -v x="$i" 'BEGIN{print x/1024}')" \
                "$(fmt_int "$(awk -v a="$i" -v b="$b" -v n="$IDLE_CLIENTS" 'BEGIN{print (a-b)*1024/n}')")" \
                "$(awk -v x="$q" 'BEGIN{print x/1024}')" \
                "$(fmt_int "$(awk -v a="$q" -v b="$b" -v n="$IDLE_CLIENTS" 'BEGIN{print (a-b)*1024/n}')")"
        done
        echo
        for m in "${MEM_TARGETS[@]}"; do echo "- $m ${M_INFO[$m]} (clients ok, failed, seconds)"; done
        echo
    fi
    echo "Workload runs took ${RUN_SECONDS} s."
    if [ "${#PROBLEMS[@]}" -gt 0 ]; then
        echo
        echo "Problems seen:"
        for p in "${PROBLEMS[@]}"; do echo "- $p"; done
    fi
}

mkdir -p "$(dirname "$OUT")"
report | tee "$OUT"
log "report written to $OUT"
