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

echo "== cargo clippy (all targets, -D warnings; and the HAL with its Raspberry Pi GPIO feature)"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p facegate-hal --all-targets --features gpio-rppal --locked -- -D warnings

echo "== V4L2 backend against a real kernel driver (vivid in a QEMU VM)"
# Exit 77 means "cannot run here" (reason printed); anything else non-zero is a failure.
set +e
bash tests/v4l2-vm/run.sh
vm=$?
set -e
if [ "$vm" -eq 77 ]; then
  echo "V4L2 VM test could not run on this machine (see the reason above)" >&2
  [ "${CI:-}" = "true" ] && exit 1
elif [ "$vm" -ne 0 ]; then
  exit "$vm"
fi

echo "== packaging: systemd unit, sysusers/tmpfiles, sandbox exposure, Yocto layer (oelint-adv)"
bash scripts/check-packaging.sh

echo "== cargo test --workspace"
# --nocapture: the golden tests print the figures they measured (min same / max different, ...).
# --all-targets: unit, integration and example targets (the crates have no doc tests to run).
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-targets --locked -- --nocapture 2>&1 | tee "$log"
# One closing line with the totals over every test binary.
totals=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { printf "%d passed, %d failed", p, f }' "$log")

echo "== done in $(( $(date +%s) - start )) s"
echo "tests: ${totals}"
