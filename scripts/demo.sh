#!/usr/bin/env bash
# Command 1 of the README: the terminal's main job on a machine without hardware.
#
# Installs the build packages, builds the release binary, then `facegate demo`: verified models,
# a temporary encrypted store, the people of ../shared/faces/dev enrolled, and a scripted session
# through the real pipeline with a SIMULATED camera and door relay (an enrolled person, an unknown
# person, a printed photo, a screen replay). Exit code 0 only if every outcome is the expected one.
# Extra arguments go to `facegate demo` (e.g. --fixtures DIR, --show-events).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked -q -p facegate
exec "${CARGO_TARGET_DIR:-target}/release/facegate" demo "$@"
