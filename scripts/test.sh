#!/usr/bin/env bash
# The one test command: dependencies, formatting, lints, then every test target
# (unit tests, integration tests against real Postgres, bench smoke runs).
# Exits non-zero on the first failure; cargo test's own summary is the last output.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "scripts/install-deps.sh"
bash scripts/install-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test --all-targets"
exec cargo test --all-targets
