#!/usr/bin/env bash
# Command 1 of the README: the terminal's main job on still photos, no hardware, embedded defaults.
#
# Installs the verified models, creates a scratch encrypted store with a fresh key, enrols two
# people, then runs three scripted arrivals through detect -> passive liveness -> embed -> match:
# an enrolled person (granted), an unknown person (denied), a printed photo (denied by liveness).
# Exit code 0 only if every outcome is the expected one.
set -euo pipefail
cd "$(dirname "$0")/.."
faces="${FACEGATE_FACES:-../shared/faces}"
[ -d "$faces/dev" ] || { echo "try: fixtures not found at $faces (set FACEGATE_FACES)" >&2; exit 2; }

bash scripts/setup.sh
cargo build --release -q -p facegate
bin="${CARGO_TARGET_DIR:-target}/release/facegate"
"$bin" models fetch

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
store=(--store "$scratch/facegate.redb" --key-file "$scratch/facegate.key")
"$bin" keys init --create-key-file "${store[@]}"
"$bin" enroll --id emp-0001 --label "Barack Obama" "${store[@]}" "$faces/dev/obama/obama_1.jpg" "$faces/dev/obama/obama_2.jpg"
"$bin" enroll --id emp-0002 --label "Kit Harington" "${store[@]}" "$faces/dev/kit_harington/kit_1.jpg" "$faces/dev/kit_harington/kit_2.jpg"

failed=0
scenario() { # name, image, expected decision
  local out decision reason
  out="$("$bin" identify "$2" --json "${store[@]}")"
  decision="$(sed -n 's/.*"decision":"\([a-z]*\)".*/\1/p' <<<"$out")"
  reason="$(sed -n 's/.*"reason":"\([a-z_]*\)".*/\1/p' <<<"$out")"
  echo "scenario $1: ${decision^^} ${reason:+($reason)} $out"
  [ "$decision" = "$3" ] || { echo "  expected ${3^^}" >&2; failed=1; }
}
scenario enrolled-person "$faces/dev/obama/obama_3.jpg" granted
scenario unknown-person "$faces/dev/anthony_hopkins/hopkins_1.jpg" denied
scenario printed-photo "$faces/spoof-samples/minivision_F1.jpg" denied
"$bin" audit verify "${store[@]}"
exit "$failed"
