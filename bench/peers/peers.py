#!/usr/bin/env python3
"""The reference pipeline facegate is measured against (issue #7), on the same model files.

OpenCV's own `FaceDetectorYN` (YuNet) and `FaceRecognizerSF.alignCrop`, onnxruntime for SFace and
the three passive anti-spoof models (sequential; single thread unless `--threads` lists more
counts, each with its own onnxruntime sessions), FAISS `IndexFlatIP` for 1:N search (one thread,
one query at a time). Each stage mirrors what facegate does, so the two sides time the same work:

  decode   cv2.imdecode of the file bytes (already in memory)
  prepare  long side > 640: cv2.resize INTER_LINEAR to long side 640 (facegate's working frame)
  detect   FaceDetectorYN at the working frame's own size (OpenCV pads to a multiple of 32)
  passive  MiniFASNetV2 (2.7x box), MiniFASNetV1SE (4.0x), minifas_128 (1.5x square, reflect-101)
           on the full-resolution image with the largest face's box mapped back, as facegate does
  align    FaceRecognizerSF.alignCrop on the working frame
  embed    SFace on onnxruntime (RGB raw 0-255, L2-normalised)
  match    FAISS IndexFlatIP top-2 search over the 10k-template gallery
  total    decode -> match, one wall-clock interval (time to decision)

Every stage runs for every image with a face (no early exit on a liveness fail), on both sides.

Modes:
  peers.py --images DIR [--rounds N] [--json]   standalone: medians and p95 per stage + FAISS
  peers.py --serve --image F ...                line protocol used by `facegate bench compare`
  peers.py --rss-probe --image F                RSS with all models and 10k templates loaded

Set up with bench/peers/setup.sh (its own venv, pinned versions).
"""

import os

# Single-threaded everywhere, before any native library starts its pools; a decision run with
# more threads raises OpenCV's and onnxruntime's counts explicitly (`--threads`).
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import faiss  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

DIM = 128
MAX_SIDE = 640
FILES = {
    "yunet": "face_detection_yunet_2023mar.onnx",
    "sface": "face_recognition_sface_2021dec_int8bq.onnx",
    "v2": "2.7_80x80_MiniFASNetV2.onnx",
    "v1se": "4_0_0_80x80_MiniFASNetV1SE.onnx",
    "m128": "minifas_128_98.20.onnx",
}
STAGES = ["decode", "prepare", "detect", "passive", "align", "embed", "match", "total"]
GALLERY_SEED = 7
QUERY_SEED = 11


def status_kb(field):
    """A `kB` figure of /proc/self/status (VmRSS, VmHWM, ...), or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def threads_now():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def random_unit(n, seed):
    """n random unit vectors (Gaussian, normalised): a gallery with no structure to exploit."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def session(path, threads=1):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # the SFace file lists its initialisers as inputs: noisy warnings
    # Each session owns its intra-op pool, and by default those threads busy-wait after a run:
    # with four sessions on a 2-core machine the spinning pool of one model steals the cores
    # from the next (measured: SFace 59 ms at 1 thread, 116 ms at 2). Sleeping workers are
    # what a terminal idle between faces wants anyway.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def minivision_box(src_w, src_h, box, scale):
    """minivision CropImage._get_new_box, in float32 like the reference (box is float32)."""
    f = np.float32
    x, y, bw, bh = (f(v) for v in box)
    sw, sh = f(src_w), f(src_h)
    scale = min((sh - f(1)) / bh, min((sw - f(1)) / bw, f(scale)))
    nw, nh = bw * scale, bh * scale
    cx, cy = bw / f(2) + x, bh / f(2) + y
    l, t, r, b = cx - nw / f(2), cy - nh / f(2), cx + nw / f(2), cy + nh / f(2)
    if l < 0:
        r -= l
        l = f(0)
    if t < 0:
        b -= t
        t = f(0)
    if r > sw - 1:
        l -= r - sw + f(1)
        r = sw - f(1)
    if b > sh - 1:
        t -= b - sh + f(1)
        b = sh - f(1)
    return int(l), int(t), int(r), int(b)


def minivision_crop(img, box, scale, out):
    h, w = img.shape[:2]
    l, t, r, b = minivision_box(w, h, box, scale)
    return cv2.resize(img[t : b + 1, l : r + 1], (out, out))


def square_reflect_crop(img, box, k, out):
    x, y, w, h = (float(v) for v in box)
    side = int(k * max(w, h))
    half = k * max(w, h) / 2.0
    x0 = int(x + w / 2.0 - half)
    y0 = int(y + h / 2.0 - half)
    ih, iw = img.shape[:2]
    top, left = max(0, -y0), max(0, -x0)
    bottom, right = max(0, y0 + side - ih), max(0, x0 + side - iw)
    if top or left or bottom or right:
        img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_REFLECT_101)
    sq = img[y0 + top : y0 + top + side, x0 + left : x0 + left + side]
    return cv2.resize(sq, (out, out))


def nchw(img):
    return np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32)


class Pipeline:
    """All models loaded once, as a terminal would hold them."""

    def __init__(self, models, threads=(1,)):
        cv2.setNumThreads(1)
        faiss.omp_set_num_threads(1)
        p = {k: os.path.join(models, v) for k, v in FILES.items()}
        for k, v in p.items():
            if not os.path.isfile(v):
                raise SystemExit(f"peers.py: model file {v} not found ({k})")
        t0 = time.perf_counter()
        self.detector = cv2.FaceDetectorYN.create(p["yunet"], "", (MAX_SIDE, MAX_SIDE), 0.6, 0.3)
        # alignCrop is a method of the recogniser object; it needs the SFace file to exist.
        self.aligner = cv2.FaceRecognizerSF.create(p["sface"], "")
        # One set of onnxruntime sessions per thread count (their pools are fixed at creation).
        self.sessions = {
            t: {k: session(p[k], t) for k in ("sface", "v2", "v1se", "m128")} for t in threads
        }
        self.use_threads(threads[0])
        # The int8bq file declares its 29 float weight tensors as graph inputs too, although no
        # node reads them (the quantized copies are used). onnxruntime insists on a feed: NaN
        # proves they are unused (a NaN would otherwise reach the output; checked at load).
        self.sface_feed = {}
        for i in self.sface.get_inputs()[1:]:
            shape = [d if isinstance(d, int) else 1 for d in i.shape]
            self.sface_feed[i.name] = np.full(shape, np.nan, dtype=np.float32)
        self.sface_in = self.sface.get_inputs()[0].name
        self.load_ms = (time.perf_counter() - t0) * 1e3
        probe = self.embed_blob(np.zeros((1, 3, 112, 112), np.float32))
        if not np.all(np.isfinite(probe)):
            raise SystemExit("peers.py: SFace output not finite with NaN unused inputs")
        self.gallery10k = self.index(10_000)

    def use_threads(self, t):
        """Run the next decisions with `t` threads (OpenCV and onnxruntime; FAISS stays at 1)."""
        if t not in self.sessions:
            raise ValueError(f"no sessions for {t} threads (start with --threads including {t})")
        cv2.setNumThreads(t)
        s = self.sessions[t]
        self.sface, self.v2, self.v1se, self.m128 = s["sface"], s["v2"], s["v1se"], s["m128"]
        self.threads = t

    def index(self, n):
        idx = faiss.IndexFlatIP(DIM)
        idx.add(random_unit(n, GALLERY_SEED + n))
        return idx

    def embed_blob(self, blob):
        feed = dict(self.sface_feed)
        feed[self.sface_in] = blob
        return self.sface.run(None, feed)[0][0]

    def passive(self, img, box):
        c2 = minivision_crop(img, box, 2.7, 80)
        c4 = minivision_crop(img, box, 4.0, 80)
        c128 = square_reflect_crop(img, box, 1.5, 128)
        v2 = self.v2.run(None, {"input": nchw(c2)})[0][0]
        v1se = self.v1se.run(None, {"input": nchw(c4)})[0][0]
        rgb = c128[:, :, ::-1].astype(np.float32) / np.float32(255.0)
        m128 = self.m128.run(None, {"input": nchw(rgb)})[0][0]
        return 0.5 * softmax(v2)[1] + 0.1 * softmax(v1se)[1] + 0.4 * softmax(m128)[0]

    def decide(self, data):
        """One time-to-decision on encoded bytes; stage times in ms, or None without a face."""
        pc = time.perf_counter
        t0 = pc()
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        t1 = pc()
        h, w = img.shape[:2]
        sx = sy = 1.0
        work = img
        if max(w, h) > MAX_SIDE:
            s = MAX_SIDE / max(w, h)
            nw, nh = max(1, int(np.floor(w * s + 0.5))), max(1, int(np.floor(h * s + 0.5)))
            work = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
            sx, sy = w / nw, h / nh
        t2 = pc()
        self.detector.setInputSize((work.shape[1], work.shape[0]))
        _, faces = self.detector.detect(work)
        t3 = pc()
        if faces is None or len(faces) == 0:
            return None
        areas = faces[:, 2].clip(0) * faces[:, 3].clip(0)
        face = faces[int(np.argmax(areas))]
        box = (face[:4] * np.array([sx, sy, sx, sy], np.float32)).astype(np.float32)
        self.passive(img, box)
        t4 = pc()
        crop = self.aligner.alignCrop(work, face)
        t5 = pc()
        v = self.embed_blob(nchw(crop[:, :, ::-1]))
        v = (v / np.linalg.norm(v)).astype(np.float32)
        t6 = pc()
        self.gallery10k.search(v.reshape(1, DIM), 2)
        t7 = pc()
        ms = lambda a, b: (b - a) * 1e3  # noqa: E731
        return {
            "decode": ms(t0, t1),
            "prepare": ms(t1, t2),
            "detect": ms(t2, t3),
            "passive": ms(t3, t4),
            "align": ms(t4, t5),
            "embed": ms(t5, t6),
            "match": ms(t6, t7),
            "total": ms(t0, t7),
        }


def identify_samples(idx, queries):
    """Top-2 search, one query at a time; microseconds per query."""
    pc = time.perf_counter_ns
    out = []
    for i in range(len(queries)):
        q = queries[i : i + 1]
        t = pc()
        idx.search(q, 2)
        out.append((pc() - t) / 1e3)
    return out


def summary(samples):
    if not samples:
        return None
    s = sorted(samples)
    n = len(s)
    med = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    rank = min(max(int(np.ceil(0.95 * n)), 1), n)
    return {"n": n, "median": med, "p95": s[rank - 1]}


def versions():
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "onnxruntime": ort.__version__,
        "faiss": faiss.__version__,
    }


def threads_info(pipe=None):
    return {
        "opencv": cv2.getNumThreads(),
        "onnxruntime_intra_op": pipe.threads if pipe else 1,
        "onnxruntime_inter_op": 1,
        "decision_thread_counts": sorted(pipe.sessions) if pipe else [1],
        "faiss_omp": faiss.omp_get_max_threads(),
        "os_threads": threads_now(),
    }


def list_images(d):
    out = []
    for root, _, files in os.walk(d):
        for f in files:
            if f.lower().endswith((".jpg", ".jpeg", ".png")):
                out.append(os.path.join(root, f))
    return sorted(out)


def read_images(paths):
    out = []
    for p in paths:
        with open(p, "rb") as f:
            out.append((p, f.read()))
    return out


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def serve(pipe, images, sizes):
    """Line protocol, one JSON line per request:

    `decide I [T]`       time-to-decision stages (ms) for image I with T threads (default 1),
                         or {"no_face": true}
    `identify N Q SEED`  Q top-2 searches over the N-vector gallery (us each), after 5 warm-ups
    `info`, `quit`
    """
    indexes = {n: (pipe.gallery10k if n == 10_000 else pipe.index(n)) for n in sizes}
    emit({"ready": True, "load_ms": pipe.load_ms, "versions": versions(), "threads": threads_info(pipe)})
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "quit":
            break
        if cmd[0] == "info":
            emit({"versions": versions(), "threads": threads_info(pipe)})
        elif cmd[0] == "decide":
            pipe.use_threads(int(cmd[2]) if len(cmd) > 2 else 1)
            r = pipe.decide(images[int(cmd[1])][1])
            pipe.use_threads(1)
            emit({"no_face": True} if r is None else {"stages": r})
        elif cmd[0] == "identify":
            n, q, seed = int(cmd[1]), int(cmd[2]), int(cmd[3])
            if n not in indexes:
                indexes[n] = pipe.index(n)
            qs = random_unit(q, seed)
            identify_samples(indexes[n], qs[:5])  # warm caches, like facegate's side
            emit({"n": n, "samples_us": identify_samples(indexes[n], qs)})
        else:
            emit({"error": f"unknown command {cmd[0]!r}"})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=os.path.join(os.path.dirname(__file__), "../../../shared/models"))
    ap.add_argument("--yunet", default=FILES["yunet"], help="YuNet file name in --models")
    ap.add_argument("--images", help="directory of JPEG/PNG images (recursive)")
    ap.add_argument("--image", action="append", default=[], help="one image (repeatable)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--threads", default="1", help="thread counts decisions may run with, e.g. 1,2")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--serve", action="store_true")
    ap.add_argument("--rss-probe", action="store_true")
    a = ap.parse_args()
    paths = list(a.image) + (list_images(a.images) if a.images else [])
    if not paths:
        raise SystemExit("peers.py: no images (use --images DIR or --image FILE)")
    sizes = [int(s) for s in a.sizes.split(",") if s]
    images = read_images(paths)
    FILES["yunet"] = a.yunet
    threads = sorted({int(t) for t in a.threads.split(",") if t} | {1})
    pipe = Pipeline(a.models, tuple(threads))
    if a.rss_probe:
        pipe.decide(images[0][1])
        emit({"vm_rss_kb": status_kb("VmRSS"), "vm_hwm_kb": status_kb("VmHWM"), "templates": 10_000})
        return
    if a.serve:
        serve(pipe, images, sizes)
        return
    # Per image: one untimed run (per-size set-up: OpenCV reshapes its network for each new input
    # size, a camera has one), then --rounds timed runs; the same protocol as `bench compare`.
    stages = {s: [] for s in STAGES}
    no_face = []
    for path, data in images:
        if pipe.decide(data) is None:
            no_face.append(path)
            continue
        for _ in range(a.rounds):
            for k, v in pipe.decide(data).items():
                stages[k].append(v)
    ident = {}
    for n in sizes:
        idx = pipe.gallery10k if n == 10_000 else pipe.index(n)
        qs = random_unit(a.queries, QUERY_SEED)
        identify_samples(idx, qs[:5])
        ident[str(n)] = summary(identify_samples(idx, qs))
    report = {
        "bench": "peers",
        "images": len(images) - len(no_face),
        "rounds": a.rounds,
        "stages_ms": {k: summary(v) for k, v in stages.items()},
        "identify_us": ident,
        "no_face": no_face,
        "load_ms": pipe.load_ms,
        "versions": versions(),
        "threads": threads_info(pipe),
        "vm_hwm_kb": status_kb("VmHWM"),
    }
    if a.json:
        emit(report)
        return
    print(f"peers: {report['images']} images x {a.rounds} rounds; {report['versions']}")
    for k, s in report["stages_ms"].items():
        if s:
            print(f"  {k:<8} median {s['median']:8.2f} ms  p95 {s['p95']:8.2f} ms  (n={s['n']})")
    for n, s in ident.items():
        print(f"  identify {n:>7}: median {s['median']:8.1f} us  p95 {s['p95']:8.1f} us")


if __name__ == "__main__":
    main()
