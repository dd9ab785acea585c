#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, unit and integration tests.
# Usage: ci/test.sh        (from anywhere; installs what it needs first)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing dependencies"
ci/install-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test --workspace"
# The hostile-guest test sends 1,000 malformed chains in a plain `cargo test`; CI sends the full
# 10,000 that issue 3 asks for.
export SOCKBYPASS_HOSTILE_CHAINS="${SOCKBYPASS_HOSTILE_CHAINS:-10000}"
cargo test --workspace 2>&1 | tee target/test-output.log
# Sum the per-binary results into one closing line.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "\n%d passed, %d failed, %d skipped\n", p, f, i }' target/test-output.log
