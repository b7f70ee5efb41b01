#!/usr/bin/env bash
# Create the Python venv of the reference pipeline that `facegate bench compare` runs beside ours
# (OpenCV FaceDetectorYN + alignCrop, onnxruntime for SFace and the anti-spoof models, FAISS).
#
# Usage: bash bench/peers/setup.sh [VENV_DIR]
# Default VENV_DIR: ${XDG_CACHE_HOME:-$HOME/.cache}/facegate-peers/venv (where `bench compare`
# looks when --peers-python is not given). Idempotent: re-running only installs what is missing.
# Not part of the test command: the peers are a benchmark, not a dependency.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/facegate-peers/venv}"
python="${PYTHON:-python3}"

if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
  echo "setup.sh: $python lacks venv/ensurepip (Debian: apt-get install python3-venv)" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "== creating venv $venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
fi
echo "== installing pinned packages ($here/requirements.txt)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
"$venv/bin/python" - <<'PY'
import cv2, faiss, numpy, onnxruntime
print(f"numpy {numpy.__version__}, opencv {cv2.__version__}, onnxruntime {onnxruntime.__version__}, faiss {faiss.__version__}")
PY
echo "peers venv ready: $venv/bin/python"
