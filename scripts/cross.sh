#!/usr/bin/env bash
# Cross-build the facegate binary for a Raspberry-Pi-class board WITHOUT containers, then run it
# under qemu-user to prove it works: `--version` and a real `detect` on a fixture, compared with
# the host binary's output.
#
#   bash scripts/cross.sh [aarch64|armv7] [--profile release|cross-ci] [--host-bin PATH]
#                         [--no-run] [--no-compare] [--check] [--print-env]
#
#   aarch64  aarch64-unknown-linux-gnu        (Pi 3/4/5, Zero 2 W with a 64-bit OS)   default
#   armv7    armv7-unknown-linux-gnueabihf    (Pi 2/3/4 with a 32-bit OS)
#
#   --profile release   the shipped build (workspace [profile.release]: thin LTO, 4 CGUs)
#   --profile cross-ci  release without LTO and with 16 codegen units: same optimisation level,
#                       cheaper to build on a 2-core CI machine. Defined here with --config so
#                       Cargo.toml and host builds are untouched.
#   --host-bin PATH     compare with this host facegate binary (e.g. the debug one `cargo test`
#                       already built) instead of building a host binary in the same profile
#   --no-run            build and report sizes only
#   --no-compare        run under qemu but do not compare with a host binary
#   --check             only `cargo check` for the target (type-checks the target's cfg code and
#                       runs the build scripts: bindgen, pkg-config); no code generation, no run
#   --print-env         print the target's environment as `export` lines and stop, for plain
#                       cargo: eval "$(bash scripts/cross.sh aarch64 --print-env)"
#                       cargo run --release -p facegate --target aarch64-unknown-linux-gnu -- --version
#                       (.cargo/config.toml supplies linker and the qemu runner)
#
# Environment: CARGO_TARGET_DIR (honoured; default cargo's), FACEGATE_SHARED (default ../shared),
# FACEGATE_FEATURES (extra cargo features for -p facegate; the `gpio` feature is added
# automatically when daemon/Cargo.toml declares one).
#
# Installs what it needs, idempotently (root needed only the first time):
#   rustup target; Debian gcc-<triple>, qemu-user-static, pkg-config, libclang1-14 (bindgen);
#   the TARGET's libturbojpeg via multiarch (dpkg --add-architecture + libturbojpeg0-dev:<arch>).
# People with a container engine can use `cross build --target ...` instead (see cross.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

arch=aarch64
profile=release
do_run=1
do_compare=1
host_bin=
check_only=0
print_env=0
while (($#)); do
    case "$1" in
        aarch64 | arm64) arch=aarch64 ;;
        armv7 | armhf) arch=armv7 ;;
        --profile) profile="${2:?--profile needs a value}"; shift ;;
        --profile=*) profile="${1#--profile=}" ;;
        --host-bin) host_bin="${2:?--host-bin needs a path}"; shift ;;
        --host-bin=*) host_bin="${1#--host-bin=}" ;;
        --no-run) do_run=0 ;;
        --check) check_only=1 ;;
        --print-env) print_env=1 ;;
        --no-compare) do_compare=0 ;;
        -h | --help) sed -n '2,34p' "$0"; exit 0 ;;
        *) echo "cross.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done

case "$arch" in
    aarch64) triple="aarch64-unknown-linux-gnu"     debarch="arm64" gnu="aarch64-linux-gnu"   qemu="qemu-aarch64-static" ;;
    armv7)   triple="armv7-unknown-linux-gnueabihf" debarch="armhf" gnu="arm-linux-gnueabihf" qemu="qemu-arm-static" ;;
esac
case "$profile" in
    release | cross-ci) ;;
    *) echo "cross.sh: --profile must be release or cross-ci" >&2; exit 2 ;;
esac
T="${triple//-/_}"          # aarch64_unknown_linux_gnu: suffix for target-scoped env variables
TU="${T^^}"                 # AARCH64_UNKNOWN_LINUX_GNU
SHARED="${FACEGATE_SHARED:-$REPO/../shared}"

log() { printf '[cross %s] %s\n' "$arch" "$*" >&2; }
die() { printf '[cross %s] ERROR: %s\n' "$arch" "$*" >&2; exit 1; }

# --- 1. toolchain and target libraries (idempotent) ---------------------------------------------
if ! rustup target list --installed | grep -qx "$triple"; then
    log "rustup target add $triple"
    rustup target add "$triple"
fi

pkg_ok() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }
need=()
pkg_ok "gcc-$gnu" || need+=("gcc-$gnu")                     # cross linker + C compiler (ring's C/asm)
pkg_ok "libc6-dev-$debarch-cross" || need+=("libc6-dev-$debarch-cross")   # glibc + kernel headers (bindgen)
pkg_ok qemu-user-static || need+=(qemu-user-static)          # to run the result
pkg_ok pkg-config || pkg_ok pkgconf || need+=(pkg-config)   # how turbojpeg-sys finds libturbojpeg
# bindgen (v4l2-sys-mit) dlopens libclang (Debian libclang1-NN: libclang.so.1, libclang-NN.so.*).
# NOT libclang-cpp.so.NN, which llvm-NN pulls in and clang-sys deliberately skips.
compgen -G '/usr/lib/llvm-*/lib/libclang.so.1' >/dev/null ||
    compgen -G '/usr/lib/*-linux-gnu/libclang-[0-9]*.so*' >/dev/null || need+=(libclang1-14)
# The TARGET's libjpeg-turbo, co-installed through Debian multiarch (same version as the host's).
pkg_ok "libturbojpeg0-dev:$debarch" || need+=("libturbojpeg0-dev:$debarch")

if ((${#need[@]})); then
    [[ $EUID -eq 0 ]] || die "need Debian packages: ${need[*]} (run once as root, or install them)"
    export DEBIAN_FRONTEND=noninteractive
    if ! dpkg --print-foreign-architectures | grep -qx "$debarch"; then
        log "dpkg --add-architecture $debarch"
        dpkg --add-architecture "$debarch"
    fi
    log "apt-get install ${need[*]}"
    # A mirror caught mid-sync fails `update` ("File has unexpected size") for one index while the
    # others are fine: retry once, then go on with what was fetched; the install below fails
    # clearly if a package it needs really is unavailable.
    if ! apt-get update -qq; then
        log "apt-get update failed; retrying in 20 s"
        sleep 20
        apt-get update -qq || log "WARNING: apt-get update still reports errors; trying the install with the indexes that were fetched"
    fi
    # The host's libturbojpeg0-dev must be at the same version as the :<arch> one (Multi-Arch:
    # same); apt upgrades it in the same transaction if the archive moved on.
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v "$gnu-gcc" >/dev/null || die "$gnu-gcc not found after install"
command -v "$qemu" >/dev/null || die "$qemu not found after install"

# --- 2. environment for the target (target-scoped, so host build scripts are unaffected) -------
# Linker and runner come from .cargo/config.toml; the C compiler for cc-rs (ring) is set here.
export "CC_$T=$gnu-gcc" "AR_$T=$gnu-ar"
export "CARGO_TARGET_${TU}_LINKER=$gnu-gcc"
# pkg-config: look ONLY at the target's multiarch .pc files (LIBDIR replaces the host's default
# search path, so the host libturbojpeg.pc can never be picked). The paths inside those files are
# already absolute host paths (/usr/lib/<gnu>), so the sysroot is "/" (a cross sysroot such as
# /usr/<gnu> would be wrong here). ALLOW_CROSS: the pkg-config crate refuses to cross otherwise.
export "PKG_CONFIG_LIBDIR_$T=/usr/lib/$gnu/pkgconfig:/usr/share/pkgconfig"
export "PKG_CONFIG_SYSROOT_DIR_$T=/"
export "PKG_CONFIG_ALLOW_CROSS_$T=1"
# bindgen passes --target=<triple> to libclang by itself; the target's kernel/glibc headers live in
# the cross sysroot (linux/videodev2.h, asm/types.h for that architecture).
export "BINDGEN_EXTRA_CLANG_ARGS_$T=--sysroot=/usr/$gnu -I/usr/$gnu/include"
if ((print_env)); then
    for v in "CC_$T" "AR_$T" "CARGO_TARGET_${TU}_LINKER" "PKG_CONFIG_LIBDIR_$T" "PKG_CONFIG_SYSROOT_DIR_$T" \
        "PKG_CONFIG_ALLOW_CROSS_$T" "BINDGEN_EXTRA_CLANG_ARGS_$T"; do
        printf 'export %s=%q\n' "$v" "${!v}"
    done
    exit 0
fi

# --- 3. build ------------------------------------------------------------------------------------
features=()
# The Raspberry Pi GPIO feature, if the daemon declares one (name `gpio`).
if cargo metadata --no-deps --format-version 1 --locked 2>/dev/null |
    python3 -c 'import json,sys; m=json.load(sys.stdin); sys.exit(0 if any(p["name"]=="facegate" and "gpio" in p["features"] for p in m["packages"]) else 1)'; then
    features+=(gpio)
fi
if [[ -n "${FACEGATE_FEATURES:-}" ]]; then
    IFS=', ' read -ra extra_features <<<"$FACEGATE_FEATURES"
    features+=("${extra_features[@]}")
fi
feat_args=()
((${#features[@]})) && feat_args=(--features "$(IFS=,; echo "${features[*]}")")

prof_args=(--release)
outdir=release
if [[ $profile == cross-ci ]]; then
    prof_args=(--config 'profile.cross-ci.inherits="release"' --config 'profile.cross-ci.lto=false'
               --config 'profile.cross-ci.codegen-units=16' --profile cross-ci)
    outdir=cross-ci
fi

tdir="${CARGO_TARGET_DIR:-$REPO/target}"
if ((check_only)); then
    log "cargo check --locked -p facegate --target $triple ${feat_args[*]}  (target dir $tdir)"
    t0=$SECONDS
    cargo check --locked -p facegate --target "$triple" "${feat_args[@]}"
    echo "cross[$arch]: cargo check ${triple}: $((SECONDS - t0)) s (features: ${features[*]:-none})"
    exit 0
fi
log "cargo build ${prof_args[*]} --locked -p facegate --target $triple ${feat_args[*]}  (target dir $tdir)"
t0=$SECONDS
cargo build "${prof_args[@]}" --locked -p facegate --target "$triple" "${feat_args[@]}"
build_s=$((SECONDS - t0))
bin="$tdir/$triple/$outdir/facegate"
[[ -x $bin ]] || die "no binary at $bin"

stripped="$(mktemp)"
trap 'rm -f "$stripped"; [[ -n "${tmpd:-}" ]] && rm -rf "$tmpd"' EXIT
"$gnu-strip" -o "$stripped" "$bin"
size=$(stat -c %s "$bin")
ssize=$(stat -c %s "$stripped")
echo "cross[$arch]: build ${build_s} s (profile $profile, features: ${features[*]:-none})"
echo "cross[$arch]: binary $bin: $size bytes ($((size / 1024)) KiB), stripped $ssize bytes ($((ssize / 1024)) KiB)"
file -b "$bin" 2>/dev/null | sed "s/^/cross[$arch]: /" || true

# One TLS crypto provider only: rustls with ring; aws-lc must not be in the target's tree.
tree="$(cargo tree --locked --target "$triple" -p facegate -e normal "${feat_args[@]}" --prefix none 2>/dev/null)"
if grep -q '^aws-lc' <<<"$tree"; then
    die "aws-lc is in the $triple dependency tree (only rustls+ring is allowed): $(grep '^aws-lc' <<<"$tree" | sort -u | tr '\n' ' ')"
fi
grep -q '^ring v' <<<"$tree" || die "ring is not in the $triple dependency tree"
echo "cross[$arch]: TLS provider: $(grep -m1 '^ring v' <<<"$tree" | cut -d' ' -f1-2), no aws-lc"
if [[ " ${features[*]} " == *" gpio "* ]]; then
    grep -q '^rppal v' <<<"$tree" && echo "cross[$arch]: gpio feature: $(grep -m1 '^rppal v' <<<"$tree" | cut -d' ' -f1-2) in the dependency tree"
fi

((do_run)) || exit 0

# --- 4. run under qemu-user ---------------------------------------------------------------------
# -L: the cross glibc (ld.so, libc, libgcc_s) from libc6-<arch>-cross; libturbojpeg.so.0 is found
# in /usr/lib/<gnu> (multiarch), which qemu falls back to when a path is not under -L.
run_target() { "$qemu" -L "/usr/$gnu" "$bin" "$@"; }
echo "cross[$arch]: qemu: $(run_target --version)"

img="$SHARED/faces/dev/obama/obama_1.jpg"
[[ -f $img ]] || die "fixture $img not found (set FACEGATE_SHARED)"
tmpd="$(mktemp -d)"
# Models: the cross binary installs its own verified copies (SHA-256 checked against the manifest
# compiled into it) from the shared mirror, so this also exercises sha2 on the target.
t0=$SECONDS
run_target models fetch --mirror "$SHARED/models" --dest "$tmpd/models" >/dev/null
echo "cross[$arch]: models fetch under qemu: $((SECONDS - t0)) s"
t0=$SECONDS
run_target detect "$img" --json --models "$tmpd/models" >"$tmpd/target.json"
echo "cross[$arch]: detect under qemu: $((SECONDS - t0)) s"
echo "cross[$arch]: target detect: $(cat "$tmpd/target.json")"

((do_compare)) || exit 0

# --- 5. the same command on a host binary --------------------------------------------------------
if [[ -z $host_bin ]]; then
    log "building the host binary for the comparison (same profile)"
    cargo build "${prof_args[@]}" --locked -p facegate "${feat_args[@]}"
    host_bin="$tdir/$outdir/facegate"
fi
[[ -x $host_bin ]] || die "host binary $host_bin not found"
"$host_bin" detect "$img" --json --models "$tmpd/models" >"$tmpd/host.json"
echo "cross[$arch]: host   detect ($host_bin): $(cat "$tmpd/host.json")"
python3 - "$tmpd/host.json" "$tmpd/target.json" "$arch" <<'EOF'
import json, sys
h, t = (json.load(open(p)) for p in sys.argv[1:3])
arch = sys.argv[3]
if (h["width"], h["height"]) != (t["width"], t["height"]) or len(h["faces"]) != len(t["faces"]):
    sys.exit(f"cross[{arch}]: MISMATCH: sizes or face counts differ")
worst_box = worst_lm = worst_score = 0.0
for a, b in zip(h["faces"], t["faces"]):
    worst_box = max([worst_box] + [abs(x - y) for x, y in zip(a["box"], b["box"])])
    worst_lm = max([worst_lm] + [abs(p - q) for u, v in zip(a["landmarks"], b["landmarks"]) for p, q in zip(u, v)])
    worst_score = max(worst_score, abs(a["score"] - b["score"]))
same = h == t
print(f"cross[{arch}]: host vs {arch}: {len(h['faces'])} face(s); identical JSON: {same}; "
      f"max |box diff| {worst_box:.3g} px, max |landmark diff| {worst_lm:.3g} px, max |score diff| {worst_score:.3g}")
if worst_box > 0.5 or worst_lm > 0.5 or worst_score > 1e-3:
    sys.exit(f"cross[{arch}]: MISMATCH beyond float noise (0.5 px / 1e-3)")
EOF
