#!/usr/bin/env bash
# The project's test command (README): set-up, formatting, lints, then every test.
#
# Runs on a fresh 2-core Debian machine with ../shared beside the project root.
# Long benchmarks are NOT run here (see README: `facegate bench ...`).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

bash scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test --workspace"
# --nocapture: the golden tests print the figures they measured (min same / max different, ...).
cargo test --workspace --locked -- --nocapture

echo "== done in $(( $(date +%s) - start )) s"
