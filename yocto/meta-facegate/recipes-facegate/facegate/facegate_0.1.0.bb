# nooelint: oelint.var.suggestedvar.BUGTRACKER,oelint.var.bbclassextend - no public issue tracker yet; a target daemon (no native/SDK variant)
SUMMARY = "Face-recognition door terminal daemon"
DESCRIPTION = "facegate runs camera -> face detection -> liveness -> embedding -> 1:N match \
               -> door relay on the board's CPU (tract), keeps templates in an AES-256-GCM \
               encrypted store and syncs events and signed template bundles over MQTT with \
               mutual TLS."
HOMEPAGE = "https://example.invalid/facegate"
SECTION = "security"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=22a53954e4e0ec258dfce4391e905dac"

# libjpeg-turbo: libturbojpeg, found through pkg-config (turbojpeg-sys, feature pkg-config).
# clang-native (meta-clang): libclang for bindgen, which the v4l crate's v4l2-sys-mit runs.
DEPENDS = "clang-native libjpeg-turbo"

# This layer lives in the facegate repository and builds it. Point FACEGATE_GIT_URI at your
# clone or mirror, and pin SRCREV to a release commit for production images (AUTOREV follows
# the branch: convenient for development, not reproducible). facegate-crates.inc must come from
# the same commit as the Cargo.lock it describes; CI checks that within every commit.
FACEGATE_GIT_URI ?= "git://example.invalid/facegate.git;protocol=https;branch=main"
SRC_URI = "${FACEGATE_GIT_URI}"
# nooelint: oelint.vars.autorev - development default only; production images pin SRCREV (README.md)
SRCREV ?= "${AUTOREV}"
S = "${WORKDIR}/git"

require facegate-crates.inc

# oe-core's cargo class (not meta-rust-bin's cargo_bin): it fetches the crates above with the
# crate:// fetcher, vendors them and builds with `cargo --frozen`, fully offline.
# NOTE: facegate needs Rust >= 1.91 (edition 2024, rust-version in Cargo.toml); scarthgap's
# oe-core ships Rust 1.75, so a newer Rust must come from another layer (see README.md).
inherit cargo pkgconfig systemd useradd

# Build only the `facegate` package of the workspace (the manifest in daemon/); the workspace
# Cargo.lock and [profile.release] (thin LTO) still apply.
CARGO_SRC_DIR = "daemon"

# gpio: Raspberry Pi GPIO (lock relay, door contact, exit button) via rppal; the daemon's
# default feature. Without it the door must be configured as `lock = "simulated"`.
PACKAGECONFIG ??= "gpio"
CARGO_BUILD_FLAGS:append = " --no-default-features${@bb.utils.contains('PACKAGECONFIG', 'gpio', ' --features gpio', '', d)}"

# bindgen: libclang from the native sysroot, headers (linux/videodev2.h) from the target's.
export LIBCLANG_PATH = "${STAGING_LIBDIR_NATIVE}"
export BINDGEN_EXTRA_CLANG_ARGS = "--sysroot=${STAGING_DIR_TARGET} ${TUNE_CCARGS}"

do_install() {
    # Only the binary: cargo_do_install would also install the facegate library's .rlib.
    install -D -m 0755 ${B}/target/${CARGO_TARGET_SUBDIR}/facegate ${D}${bindir}/facegate

    install -D -m 0644 ${S}/systemd/facegate.service ${D}${systemd_system_unitdir}/facegate.service
    install -D -m 0644 ${S}/systemd/facegate.sysusers ${D}${nonarch_libdir}/sysusers.d/facegate.conf
    install -D -m 0644 ${S}/systemd/facegate.tmpfiles ${D}${nonarch_libdir}/tmpfiles.d/facegate.conf
    install -D -m 0644 ${S}/systemd/facegate-gpio.rules ${D}${nonarch_base_libdir}/udev/rules.d/60-facegate-gpio.rules

    # Default configuration (root-owned, read-only for the service). Credentials are NOT part
    # of the image: they are provisioned per device (README.md, "Credentials").
    install -D -m 0644 ${S}/config/facegate.toml ${D}${sysconfdir}/facegate/facegate.toml
    install -d -m 0700 ${D}${sysconfdir}/facegate/credentials

    install -D -m 0644 ${S}/systemd/README.md ${D}${docdir}/${BPN}/README.md
}

SYSTEMD_SERVICE:${PN} = "facegate.service"

# Same account as systemd/facegate.sysusers, created at image build time so that a read-only
# rootfs works too (systemd-sysusers then finds it and changes nothing).
USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system -f gpio"
USERADD_PARAM:${PN} = "--system --home-dir ${localstatedir}/lib/facegate --no-create-home \
                       --shell ${base_sbindir}/nologin --user-group --groups video,gpio facegate"

CONFFILES:${PN} = "${sysconfdir}/facegate/facegate.toml"
FILES:${PN} += "${systemd_system_unitdir}/facegate.service \
                ${nonarch_libdir}/sysusers.d/facegate.conf \
                ${nonarch_libdir}/tmpfiles.d/facegate.conf \
                ${nonarch_base_libdir}/udev/rules.d/60-facegate-gpio.rules \
                ${sysconfdir}/facegate"

# The models the daemon loads (/usr/share/facegate/models); libturbojpeg is found by shlibs.
RDEPENDS:${PN} = "facegate-models"

CVE_PRODUCT = "facegate"
