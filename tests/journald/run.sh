#!/usr/bin/env bash
# Run a command with its own systemd-journald, then dump what it logged as JSON.
#
# Usage: run.sh OUT_DIR -- COMMAND [ARGS...]
# In a private mount namespace (unshare -m, needs root) a tmpfs covers /run, systemd-journald is
# started on it, COMMAND runs with FACEGATE_LOG_TARGET=journal (so facegate writes to that journal
# through /run/systemd/journal/socket), and `journalctl -D /run/log/journal -o json` is written to
# OUT_DIR/journal.json; COMMAND's stdout/stderr go to OUT_DIR/stdout and OUT_DIR/stderr and its exit
# status to OUT_DIR/rc. The host's journal, /run and /var/log/journal are untouched (tmpfs over both).
set -euo pipefail
out="$1"; shift
[ "$1" = "--" ] && shift
mkdir -p "$out"
out="$(cd "$out" && pwd)"
journald=""
for j in /lib/systemd/systemd-journald /usr/lib/systemd/systemd-journald; do
  [ -x "$j" ] && journald="$j" && break
done
[ -n "$journald" ] || { echo "journald test: systemd-journald not found (Debian package systemd)" >&2; exit 3; }
command -v unshare >/dev/null || { echo "journald test: unshare not found (util-linux)" >&2; exit 3; }
[ "$(id -u)" -eq 0 ] || { echo "journald test: needs root for unshare -m" >&2; exit 3; }

exec unshare -m bash -s "$out" "$journald" "$@" <<'INNER'
set -euo pipefail
out="$1"; journald="$2"; shift 2
mount -t tmpfs tmpfs /run
# Keep journald off the host's persistent journal too (it moves entries there on a flush).
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
mkdir -p /run/systemd/journal /run/log/journal
"$journald" >"$out/journald.log" 2>&1 &
jpid=$!
for _ in $(seq 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
[ -S /run/systemd/journal/socket ] || { echo "journald did not start" >&2; cat "$out/journald.log" >&2; exit 3; }
set +e
FACEGATE_LOG_TARGET=journal FACEGATE_LOG="${FACEGATE_LOG:-info}" "$@" >"$out/stdout" 2>"$out/stderr"
echo $? >"$out/rc"
set -e
sleep 0.3
journalctl -D /run/log/journal -o json --no-pager >"$out/journal.json"
kill "$jpid" 2>/dev/null || true
wait "$jpid" 2>/dev/null || true
INNER
