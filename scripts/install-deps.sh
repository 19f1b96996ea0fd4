#!/usr/bin/env bash
# Installs what the tests, the demo and the benches need, and nothing when it is
# already there (safe to run before every test run):
#   - Postgres server and client tools (initdb, pg_ctl, pg_basebackup, psql, pgbench)
#   - PgBouncer (the peer the benches compare against)
#   - python3 with venv (tests/support makes a virtualenv of Python drivers)
#   - Java and Debian's JDBC driver (tests/java runs with /usr/share/java/postgresql.jar)
#   - Node.js and npm (tests/node installs node-postgres from the npm registry)
# and checks that cargo (with rustfmt and clippy) is available.
set -euo pipefail

log() { printf 'install-deps: %s\n' "$*" >&2; }

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        log "need root to run: $*"
        return 1
    fi
}

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in postgresql pgbouncer libpostgresql-jdbc-java; do
        installed "$pkg" || missing+=("$pkg")
    done
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        missing+=(python3-venv)
    fi
    if ! command -v java >/dev/null 2>&1; then
        missing+=(default-jre-headless)
    fi
    # node-postgres runs under Node.js (tests/drivers.rs).
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        missing+=(nodejs npm)
    fi
else
    # Not Debian: check for the tools themselves and let the user install them.
    for tool in initdb pgbouncer python3; do
        if ! command -v "$tool" >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/"$tool" >/dev/null 2>&1; then
            log "missing $tool; install Postgres 15, PgBouncer and python3 with your package manager"
            exit 1
        fi
    done
fi

if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # apt-get update only when there are no package lists yet, or when the
    # install fails with the lists we have (they may be stale).
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        as_root apt-get update
    fi
    if ! as_root apt-get install -y --no-install-recommends "${missing[@]}"; then
        as_root apt-get update
        as_root apt-get install -y --no-install-recommends "${missing[@]}"
    fi
fi

pg_bin="${PGMUX_PG_BIN:-/usr/lib/postgresql/15/bin}"
if [ ! -x "$pg_bin/initdb" ]; then
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    log "no Postgres 15 tools in $pg_bin${found:+ (found $found; set PGMUX_PG_BIN=$found)}"
    exit 1
fi

if ! command -v cargo >/dev/null 2>&1; then
    log "cargo not found; install Rust from https://rustup.rs"
    exit 1
fi
for component in rustfmt clippy; do
    sub=${component/rustfmt/fmt}
    if ! cargo "$sub" --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
            log "adding the $component component"
            rustup component add "$component"
        else
            log "cargo $sub not available; install the $component component"
            exit 1
        fi
    fi
done
