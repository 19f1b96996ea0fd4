#!/usr/bin/env bash
# The one test command: dependencies, formatting, lints, then every test target
# (unit tests, integration tests against real Postgres, bench smoke runs, and the
# protocol and pool suites once more with two workers, the relay on epoll, and the
# client protocol suites with server_pipelining).
# Exits non-zero on the first failure; cargo test's own summary is the last output.
# PGMUX_TEST_THREADS (default: cargo's) bounds tests run at once within a binary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "scripts/install-deps.sh"
bash scripts/install-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test --benches (the benchmarks run once each, as a smoke test)"
cargo test --benches

# The tests run pgmux with two workers (two event loops sharing the pools), whose
# relay uses io_uring where the kernel allows it. The protocol, pool and lifecycle
# suites run again with one worker, and on epoll.
step "protocol, pool, cancel and lifecycle suites with 1 worker"
PGMUX_TEST_WORKERS=1 cargo test --test protocol --test errors --test pools --test cancel --test lifecycle

step "protocol, pool, cancel and lifecycle suites on epoll"
PGMUX_IO=epoll cargo test --test protocol --test errors --test pools --test cancel --test lifecycle

step "client protocol suites with server_pipelining behind statements of any duration"
PGMUX_TEST_PIPELINE=any cargo test --test protocol --test errors --test prepared_statements --test statement_names --test prepared_schema_changes --test drivers --test session_state --test differential --test cancel --test pools --test lifecycle

step "cargo test (unit and integration tests)"
exec cargo test
