#!/usr/bin/env bash
# What Postgres spends per statement when a server connection's next request is
# already queued as it finishes one (BENCHMARKS.md, finding 16).
#
#   bash benches/pipeline.sh            # 8 s runs, 2 rounds
#   ROUNDS=3 DURATION=10 bash benches/pipeline.sh
#
# benches/pipeline (a tokio-postgres load generator) keeps DEPTH prepared single-row
# selects in flight on each of CONNECTIONS connections, each its own Bind/Execute/Sync,
# against one throwaway Postgres 15 directly and through pgmux (one worker,
# transaction mode, pool_size 20, Postgres over its Unix-domain socket). For each
# CONNECTIONS×DEPTH it prints statements per second, the CPU everything but the
# generator spent per statement (all CPU time of the machine from /proc/stat, less the
# generator's own: Postgres, the kernel's socket work, and pgmux where it is in the
# path), and pgmux's own CPU per statement. Medians over the rounds.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-2}
SHAPES=${SHAPES:-"32x1 20x1 16x2 8x4"}
PG_BIN=${PGMUX_PG_BIN:-/usr/lib/postgresql/15/bin}

log() { printf '[pipeline %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root (Postgres runs as the postgres user)"; exit 1; }
bash scripts/install-deps.sh
log "building pgmux and benches/pipeline (release)"
cargo build --release --quiet
cargo build --release --quiet --manifest-path benches/pipeline/Cargo.toml --target-dir target/pipeline
GEN=$ROOT/target/pipeline/release/pgmux-pipeline

TMP=$(mktemp -d /tmp/pgmux-pipeline.XXXXXX)
chmod 755 "$TMP"
mkdir -p "$TMP/pg"
chown postgres:postgres "$TMP/pg"
MUX_PID=""
cleanup() {
    [ -n "$MUX_PID" ] && kill -INT "$MUX_PID" 2>/dev/null && wait "$MUX_PID" 2>/dev/null
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$TMP/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port)
MUX_PORT=$(free_port)
runuser -u postgres -- "$PG_BIN/initdb" -D "$TMP/pg/data" -U postgres -E UTF8 --no-sync \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
cat >>"$TMP/pg/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$TMP/pg'
max_connections = 100
shared_buffers = 128MB
fsync = off
password_encryption = 'scram-sha-256'
CONF
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$TMP/pg/data" -l "$TMP/pg/server.log" -w start >/dev/null
"$PG_BIN/psql" -X -q -h "$TMP/pg" -p "$PG_PORT" -U postgres -d postgres \
    -c "CREATE ROLE bench LOGIN PASSWORD 'bench'" -c "CREATE DATABASE bench OWNER bench"
PGPASSWORD=bench "$PG_BIN/pgbench" -i -q -s 10 -h 127.0.0.1 -p "$PG_PORT" -U bench bench >/dev/null 2>&1

cat >"$TMP/pgmux.toml" <<CONF
[proxy]
listen = "127.0.0.1:$MUX_PORT"
metrics_listen = ""
pool_mode = "transaction"
workers = 1
[[users]]
name = "bench"
password = "bench"
[databases.bench]
pool_size = 20
[[databases.bench.shards]]
primary = "$TMP/pg:$PG_PORT/bench"
replicas = []
CONF
"$ROOT/target/release/pgmux" --config "$TMP/pgmux.toml" >"$TMP/pgmux.log" 2>&1 &
MUX_PID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$MUX_PORT") 2>/dev/null && break; sleep 0.1; done

busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
proc_cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
TIMEFORMAT='%U %S'
RESULTS=$TMP/results
run() { # TARGET PORT CONNECTIONS DEPTH
    local url="host=127.0.0.1 port=$2 user=bench password=bench dbname=bench"
    local b0 m0 b1 m1 out
    b0=$(busy); m0=$(proc_cpu "$MUX_PID")
    out=$({ time "$GEN" "$url" "$3" "$4" "$DURATION"; } 2>&1)
    b1=$(busy); m1=$(proc_cpu "$MUX_PID")
    python3 - "$1" "$3x$4" "$out" "$b0" "$b1" "$m0" "$m1" "$(getconf CLK_TCK)" "$DURATION" <<'PY' | tee -a "$RESULTS" >&2
import sys
target, shape, out, b0, b1, m0, m1, hz, secs = sys.argv[1:]
n_line, times = out.strip().splitlines()[-2:]
n = int(n_line)
gen = sum(float(x) for x in times.split())
rest = (int(b1) - int(b0)) / int(hz) - gen
mux = (int(m1) - int(m0)) / int(hz) if target == "pgmux" else 0.0
print(f"{target} {shape} {n / int(secs):.0f} {rest / n * 1e6:.1f} {mux / n * 1e6:.1f}")
PY
}
log "warm-up"
run direct "$PG_PORT" 8 1 >/dev/null 2>&1
run pgmux "$MUX_PORT" 8 1 >/dev/null 2>&1
: >"$RESULTS"
for r in $(seq "$ROUNDS"); do
    for shape in $SHAPES; do
        c=${shape%x*} d=${shape#*x}
        run direct "$PG_PORT" "$c" "$d"
        run pgmux "$MUX_PORT" "$c" "$d"
    done
done
python3 - "$RESULTS" "$DURATION" "$ROUNDS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    t, shape, sps, rest, mux = line.split()
    rows.setdefault((shape, t), []).append((float(sps), float(rest), float(mux)))
print(f"Command: `ROUNDS={sys.argv[3]} DURATION={sys.argv[2]} bash benches/pipeline.sh` (medians)\n")
print("| connections × in flight each | target | statements/s | CPU µs per statement, all but the generator | of which pgmux |")
print("|---|---|---:|---:|---:|")
for (shape, t), v in rows.items():
    med = [statistics.median(x[i] for x in v) for i in range(3)]
    mux = f"{med[2]:.1f}" if t == "pgmux" else "–"
    print(f"| {shape.replace('x', ' × ')} | {t} | {med[0]:,.0f} | {med[1]:.1f} | {mux} |")
PY
