#!/usr/bin/env bash
# Install what building and testing facegate needs on a fresh Debian machine (idempotent).
#
# - libclang (build time only): the `v4l` crate's v4l2 backend generates bindings with bindgen.
# - libturbojpeg0-dev: JPEG decoding with libjpeg-turbo, bit-identical with the reference pipeline.
# - pkg-config: how turbojpeg-sys finds libturbojpeg.
# - mosquitto: the MQTT broker the fleet-sync tests start (their own instance, on a free port).
# - model files: verified copies from ../shared/models (or the upstream URLs), via the binary's
#   own `models fetch`, done by the tests on first use as well.
# Everything is installed from Debian packages; nothing is downloaded from elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
# bindgen needs libclang itself (libclang.so* / libclang-NN.so*); libclang-cpp, which some
# machines carry for other reasons, is a different library and does not count.
have_libclang() {
  local f
  for f in /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* \
    /usr/lib/*-linux-gnu/libclang.so* /usr/lib/*-linux-gnu/libclang-[0-9]*.so*; do
    [ -e "$f" ] && return 0
  done
  return 1
}
have_libclang || need_pkgs+=(libclang1-14)
# Qualified with the native architecture: once a foreign one is added for cross builds
# (scripts/cross.sh), an unqualified `dpkg -s` of a multi-arch package is ambiguous and fails.
arch="$(dpkg --print-architecture)"
dpkg -s "libturbojpeg0-dev:$arch" >/dev/null 2>&1 || need_pkgs+=("libturbojpeg0-dev:$arch")
command -v pkg-config >/dev/null 2>&1 || need_pkgs+=(pkg-config)
[ -x /usr/sbin/mosquitto ] || need_pkgs+=(mosquitto)

if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need Debian packages: ${need_pkgs[*]} (run as root or install them)" >&2
    exit 1
  fi
  echo "setup: installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # A mirror mid-sync for one (foreign) architecture must not stop the install of native
  # packages: apt-get install below fails clearly if something needed is really missing.
  apt-get update -qq || echo "setup: apt-get update reported errors (continuing; install decides)" >&2
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi
echo "setup: system packages present"
