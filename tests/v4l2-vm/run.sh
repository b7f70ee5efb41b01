#!/usr/bin/env bash
# Capture from a real V4L2 driver: boot a Debian kernel in QEMU (TCG, no KVM needed), load the
# `vivid` virtual-camera module, and run the statically linked `v4l2_probe` example from
# facegate-hal inside it. The host kernel cannot load modules; the VM can.
#
# Exit status: 0 = PASS, 1 = FAIL, 77 = could not run here (the reason is printed).
# Downloads are cached in ${XDG_CACHE_HOME:-$HOME/.cache}/facegate-v4l2-vm.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/facegate-v4l2-vm"
# The static (+crt-static) build shares no artifacts with the normal one, so it gets its own
# target dir, in the cache: warm on every later run on this machine, even from a fresh clone.
TARGET_DIR="${FACEGATE_VM_TARGET_DIR:-$CACHE/target}"
TRIPLE="x86_64-unknown-linux-gnu"
VM_TIMEOUT="${FACEGATE_VM_TIMEOUT:-150}"
START=$SECONDS

log() { printf '[v4l2-vm] %s\n' "$*" >&2; }
cannot_run() {
    printf '[v4l2-vm] SKIP (exit 77): cannot run the V4L2 VM test here: %s\n' "$*" >&2
    exit 77
}
fail() {
    printf '[v4l2-vm] FAIL: %s\n' "$*" >&2
    exit 1
}

[[ "$(uname -m)" == x86_64 ]] || cannot_run "needs an x86_64 host (this is $(uname -m))"
command -v apt-get >/dev/null || cannot_run "needs a Debian/Ubuntu host with apt-get"
command -v cargo >/dev/null || cannot_run "cargo is not installed"
mkdir -p "$CACHE"

as_root_apt() {
    [[ $EUID -eq 0 ]] || cannot_run "missing packages ($*) and not root, so cannot apt-get install them"
    log "apt-get install $* (log: $CACHE/apt.log)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends --no-remove "$@" >>"$CACHE/apt.log" 2>&1 ||
        cannot_run "apt-get install $* failed (no access to the package archive? see $CACHE/apt.log)"
}

apt_updated=0
apt_update_once() {
    if [[ $apt_updated == 0 && $EUID -eq 0 ]]; then
        # An index that fails for one (e.g. foreign, cross-build) architecture must not stop the
        # native install; apt-get install below says clearly if a package is really unavailable.
        apt-get update -qq >>"$CACHE/apt.log" 2>&1 || log "apt-get update reported errors (continuing; see $CACHE/apt.log)"
        apt_updated=1
    fi
}

# --- 1. Host tools: busybox-static, cpio, qemu-system-x86 -------------------------------------
need=()
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
if ((${#need[@]})); then
    apt_update_once
    as_root_apt "${need[@]}"
fi

if ! command -v qemu-system-x86_64 >/dev/null; then
    [[ $EUID -eq 0 ]] || cannot_run "qemu-system-x86_64 is not installed and not root (apt-get install qemu-system-x86)"
    apt_update_once
    # qemu-system-x86 and qemu-utils come from one source package; installing a different
    # version of the former would replace an installed qemu-utils. Install exactly the
    # installed qemu-utils version, from backports if that is where it came from.
    qv="$(dpkg-query -W -f='${db:Status-Abbrev}|${Version}' qemu-utils 2>/dev/null || true)"
    if [[ "$qv" == ii* ]]; then
        v="${qv#*|}"
        apt_extra=()
        if [[ "$v" == *bpo* ]]; then
            codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
            mirror="$(apt-get indextargets --format '$(REPO_URI)|$(RELEASE)' 'Identifier: Packages' |
                awk -F'|' -v s="$codename" '$2 == s { print $1; exit }')"
            [[ -n "$codename" && -n "$mirror" ]] || cannot_run "qemu-utils $v is from backports but no apt mirror for '$codename' is configured"
            lst="$CACHE/backports.list"
            { [[ -f /etc/apt/sources.list ]] && cat /etc/apt/sources.list; echo "deb $mirror $codename-backports main"; } >"$lst"
            apt_extra=(-o "Dir::Etc::sourcelist=$lst")
            apt-get "${apt_extra[@]}" -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0 update -qq >>"$CACHE/apt.log" 2>&1 ||
                cannot_run "cannot fetch the $codename-backports index"
            # Backports packages are not chosen by default: name the ones qemu needs from there.
            bpo_deps=(seabios/"$codename"-backports)
        else
            bpo_deps=()
        fi
        log "installing qemu-system-x86=$v to match the installed qemu-utils"
        DEBIAN_FRONTEND=noninteractive apt-get "${apt_extra[@]}" install -y --no-install-recommends --no-remove \
            "qemu-system-x86=$v" "qemu-system-common=$v" "qemu-system-data=$v" "${bpo_deps[@]}" >>"$CACHE/apt.log" 2>&1 ||
            cannot_run "cannot install qemu-system-x86=$v (matching qemu-utils) without replacing other packages (see $CACHE/apt.log)"
    else
        as_root_apt qemu-system-x86
    fi
fi
command -v qemu-system-x86_64 >/dev/null || cannot_run "qemu-system-x86_64 still missing after install"

# --- 2. Kernel + vivid modules from the distribution's linux-image package --------------------
kpkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')"
if [[ -z "$kpkg" ]]; then
    apt_update_once
    kpkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')"
fi
if [[ -z "$kpkg" ]]; then
    # Offline but cached: reuse whatever kernel was extracted before.
    kpkg="$(ls "$CACHE" 2>/dev/null | sed -n 's/^kernel-//p' | head -n1)"
    [[ -n "$kpkg" ]] || cannot_run "cannot find a linux-image-*-amd64 package (apt lists missing and nothing cached)"
fi
KDIR="$CACHE/kernel-$kpkg"
if [[ ! -f "$KDIR/.complete" ]]; then
    log "fetching $kpkg"
    rm -rf "$KDIR" && mkdir -p "$KDIR"
    (cd "$KDIR" && apt-get download "$kpkg" >>"$CACHE/apt.log" 2>&1) || cannot_run "apt-get download $kpkg failed (no access to the package archive?)"
    deb="$(ls "$KDIR"/*.deb)"
    # Unpack only the kernel image and the media modules (the full tree is ~400 MB).
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$KDIR" --wildcards \
        './boot/vmlinuz-*' './lib/modules/*/kernel/drivers/media/*' 2>/dev/null || true
    ls "$KDIR"/boot/vmlinuz-* >/dev/null 2>&1 || fail "no vmlinuz in $kpkg"
    rm -f "$deb"
    touch "$KDIR/.complete"
fi
VMLINUZ="$(ls "$KDIR"/boot/vmlinuz-* | head -n1)"
MODROOT="$(ls -d "$KDIR"/lib/modules/* | head -n1)"

# vivid and everything it depends on, dependencies first. The package has no modules.dep
# (depmod runs at install time), so read each module's own `depends=` from its .modinfo.
declare -A seen=()
order=()
mod_path() {
    local name="$1"
    find "$MODROOT/kernel" \( -name "$name.ko*" -o -name "${name//_/-}.ko*" -o -name "${name//-/_}.ko*" \) -print -quit
}
mod_deps() {
    local f="$1"
    case "$f" in
    *.xz) xz -dc "$f" ;; *.zst) zstd -qdc "$f" ;; *.gz) gzip -dc "$f" ;; *) cat "$f" ;;
    esac | tr '\0' '\n' | grep -a -m1 '^depends=' | cut -d= -f2 | tr ',' ' ' || true
}
add_module() {
    local name="$1" path d
    [[ -n "${seen[$name]:-}" ]] && return 0
    seen[$name]=1
    path="$(mod_path "$name")"
    [[ -n "$path" ]] || fail "module $name (needed by vivid) not found under $MODROOT/kernel/drivers/media"
    for d in $(mod_deps "$path"); do add_module "$d"; done
    order+=("$path")
}
add_module vivid

# --- 3. Static test binary ---------------------------------------------------------------------
log "building the static v4l2_probe"
(cd "$REPO" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$TARGET_DIR" \
    cargo build -q -p facegate-hal --example v4l2_probe --target "$TRIPLE" --config profile.dev.debug=false >&2) ||
    fail "building the v4l2_probe example failed"
PROBE="$TARGET_DIR/$TRIPLE/debug/examples/v4l2_probe"

# --- 4. initramfs ---------------------------------------------------------------------------------
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/root"
mkdir -p "$ROOT"/{bin,dev,proc,sys,modules}
cp /bin/busybox "$ROOT/bin/busybox"
cp "$PROBE" "$ROOT/bin/v4l2_probe"
: >"$ROOT/modules/order"
for m in "${order[@]}"; do
    name="$(basename "$m")"
    case "$name" in
    *.ko.xz) xz -dc "$m" >"$ROOT/modules/${name%.xz}" ;;
    *.ko.zst) zstd -qdc "$m" >"$ROOT/modules/${name%.zst}" ;;
    *.ko.gz) gzip -dc "$m" >"$ROOT/modules/${name%.gz}" ;;
    *) cp "$m" "$ROOT/modules/$name" ;;
    esac
    echo "${name%.ko*}.ko" >>"$ROOT/modules/order"
done
cat >"$ROOT/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules/order); do
    insmod "/modules/$m" || echo "V4L2-VM: insmod $m failed"
done
i=0
while [ ! -e /dev/video0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
/bin/v4l2_probe /dev/video0 10
echo "V4L2-VM: probe exited with status $?"
poweroff -f
EOF
chmod +x "$ROOT/init"
(cd "$ROOT" && find . | cpio -o -H newc --quiet) >"$WORK/initrd"

# --- 5. Boot ----------------------------------------------------------------------------------------
log "booting $(basename "$VMLINUZ") in QEMU (TCG) with vivid (${#order[@]} modules)"
SERIAL="$CACHE/last-run.log"
set +e
timeout "$VM_TIMEOUT" qemu-system-x86_64 -accel tcg -m 512 -smp 1 -nographic -no-reboot \
    -kernel "$VMLINUZ" -initrd "$WORK/initrd" \
    -append "console=ttyS0 panic=-1 loglevel=4" </dev/null >"$SERIAL" 2>&1
qrc=$?
set -e
tr -d '\r' <"$SERIAL" | grep -E '^V4L2-|node\(s\)|^/dev/|negotiated|^frame |expected error' |
    cut -c1-300 >&2 || true
elapsed=$((SECONDS - START))
if ((qrc == 124)); then
    fail "VM did not finish within ${VM_TIMEOUT}s (serial log: $SERIAL)"
fi
if tr -d '\r' <"$SERIAL" | grep -q '^V4L2-PROBE: PASS'; then
    log "PASS in ${elapsed}s"
    exit 0
fi
fail "no PASS line from the VM (qemu exit $qrc; serial log: $SERIAL)"
