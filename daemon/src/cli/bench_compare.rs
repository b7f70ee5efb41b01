//! `facegate bench compare`: our pipeline and the reference pipeline (OpenCV + onnxruntime +
//! FAISS, `bench/peers/peers.py`) timed side by side on the same images and model files.
//!
//! Noise on a shared machine moves absolute numbers by tens of percent, so only ratios measured
//! in one run mean anything. The two sides therefore run *interleaved*: the peer is one
//! long-lived Python process, and for every image and every round we time our decision, then
//! theirs, then ours again. Each image is first run once untimed on both sides (tract plans and
//! OpenCV reshapes its network per input size; a camera has one size). Decisions are timed at
//! every thread count of `--threads` (default: 1, and one per core), both sides at the same
//! count, interleaved too; 1 thread is the reference protocol, the core count is what the
//! daemon runs (`[pipeline] inference_threads = 0`). Identify runs one query at a time on one
//! thread on both sides. Memory is measured in fresh processes (`bench rss-probe` for us, at the
//! daemon's thread count; `peers.py --rss-probe` for them, single-threaded) holding all models
//! and a 10k-template gallery after one decision, read from `/proc/self/status`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow};
use facegate::bench::{self, DecisionTimes};
use facegate::matcher::{MatchParams, Matcher};
use facegate::models::{self, Manifest};
use rand::SeedableRng;
use serde::Serialize;
use serde_json::{Value, json};

use super::common::ModelArgs;
use super::{bad_input, print_json};

/// Arguments of `facegate bench compare`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory of JPEG/PNG images (recursive) [default: ../shared/faces/dev]
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Timed rounds per image and per gallery size, ours and theirs alternating
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Identify calls per gallery size and round
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// Gallery sizes for identify vs FAISS IndexFlatIP
    #[arg(long = "templates", value_name = "N", num_args = 1.., default_values_t = [1_000usize, 10_000, 100_000])]
    pub templates: Vec<usize>,
    /// Thread counts to time decisions at, both sides alike [default: 1 and the number of cores]
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub threads: Vec<usize>,
    /// Python of the reference venv [default: ${XDG_CACHE_HOME:-~/.cache}/facegate-peers/venv/bin/python]
    #[arg(long, value_name = "PATH")]
    pub peers_python: Option<PathBuf>,
    /// The reference pipeline script [default: bench/peers/peers.py in this repository]
    #[arg(long, value_name = "PATH")]
    pub peers_script: Option<PathBuf>,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: ModelArgs,
}

/// Arguments of the hidden `facegate bench rss-probe` (run by `compare` in a fresh process).
#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// Image for the one decision made before reading the memory figures
    #[arg(long, value_name = "FILE")]
    pub image: PathBuf,
    /// Gallery size held in memory
    #[arg(long, default_value_t = 10_000)]
    pub templates: usize,
    /// Inference threads (0 = one per core, what the daemon runs)
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub models: ModelArgs,
}

/// Gallery size of the time-to-decision figure and of the memory probe.
const DECISION_GALLERY: usize = 10_000;
const GALLERY_SEED: u64 = 7;
const QUERY_SEED: u64 = 11;

fn default_python() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
    cache.join("facegate-peers/venv/bin/python")
}

fn default_script() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/peers/peers.py");
    if repo.is_file() {
        repo
    } else {
        PathBuf::from("bench/peers/peers.py")
    }
}

/// The reference pipeline as a child process speaking `peers.py --serve`'s line protocol.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: Arc<Mutex<String>>,
}

impl Peer {
    fn spawn(mut cmd: Command) -> anyhow::Result<(Self, Value)> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the reference pipeline")?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().context("peer stderr")?;
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = String::new();
            let _ = std::io::Read::read_to_string(&mut err_pipe, &mut buf);
            *sink.lock().unwrap_or_else(|p| p.into_inner()) = buf;
        });
        let mut peer = Peer {
            stdin: child.stdin.take().context("peer stdin")?,
            stdout: BufReader::new(child.stdout.take().context("peer stdout")?),
            child,
            stderr,
        };
        let ready = peer.read()?;
        Ok((peer, ready))
    }

    fn read(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line)?;
        if n == 0 {
            let _ = self.child.wait();
            std::thread::sleep(Duration::from_millis(100));
            let err = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
            let tail: String = err
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            return Err(anyhow!("the reference pipeline exited early:\n{tail}"));
        }
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("reference pipeline sent non-JSON: {line}"))?;
        if let Some(e) = v.get("error") {
            return Err(anyhow!("reference pipeline: {e}"));
        }
        Ok(v)
    }

    fn request(&mut self, line: &str) -> anyhow::Result<Value> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        self.read()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

/// Median and p95 (nearest rank) of samples in the figure's unit.
#[derive(Debug, Clone, Copy, Serialize)]
struct Stat {
    n: usize,
    median: f64,
    p95: f64,
}

/// Same definitions as [`bench::Summary`]: median of the sorted samples, p95 by nearest rank.
fn stat(samples: &[f64]) -> Option<Stat> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    let rank = ((0.95 * n as f64).ceil() as usize).clamp(1, n);
    Some(Stat {
        n,
        median,
        p95: v[rank - 1],
    })
}

#[derive(Debug, Serialize)]
struct Figure {
    figure: String,
    unit: &'static str,
    ours: Option<Stat>,
    theirs: Option<Stat>,
    /// ours / theirs of the medians (< 1: we are faster or smaller).
    ratio: Option<f64>,
}

fn figure(name: impl Into<String>, unit: &'static str, ours: &[f64], theirs: &[f64]) -> Figure {
    let (o, t) = (stat(ours), stat(theirs));
    Figure {
        figure: name.into(),
        unit,
        ratio: match (o, t) {
            (Some(o), Some(t)) if t.median > 0.0 => Some(o.median / t.median),
            _ => None,
        },
        ours: o,
        theirs: t,
    }
}

const STAGES: [(&str, &str); 8] = [
    ("decode", "decode"),
    ("prepare", "prepare (resize to <= 640)"),
    ("detect", "detect (YuNet)"),
    ("passive", "passive liveness (3 models)"),
    ("align", "align"),
    ("embed", "embed (SFace int8bq file)"),
    ("match", "match (identify, 10k templates)"),
    ("total", "time to decision (1 face, 10k templates)"),
];

fn ours_stage(t: &DecisionTimes, key: &str) -> Duration {
    match key {
        "decode" => t.decode,
        "prepare" => t.prepare,
        "detect" => t.detect,
        "passive" => t.passive,
        "align" => t.align,
        "embed" => t.embed,
        "match" => t.matching,
        _ => t.total,
    }
}

fn params(threshold: f32) -> MatchParams {
    MatchParams {
        threshold,
        margin: facegate::matcher::DEFAULT_MARGIN,
    }
}

fn queries(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| bench::random_unit(&mut rng)).collect()
}

fn gallery(n: usize) -> Matcher {
    bench::random_gallery(n, GALLERY_SEED + n as u64)
}

/// Run `bench rss-probe`: load everything a terminal holds, decide once, print memory figures.
pub fn rss_probe(args: ProbeArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.image)
        .map_err(|e| bad_input(format!("cannot read {}: {e}", args.image.display())))?;
    models::set_inference_threads(models::resolve_inference_threads(args.threads))?;
    let vision = args.models.load_vision()?;
    let passive = super::common::load_passive(&args.models)?;
    let matcher = gallery(args.templates);
    let decided =
        bench::time_to_decision(&vision, &passive, &matcher, &params(0.363), &bytes)?.is_some();
    print_json(&json!({
        "vm_rss_kb": bench::proc_status("VmRSS"),
        "vm_hwm_kb": bench::proc_status("VmHWM"),
        "threads": bench::proc_status("Threads"),
        "inference_threads": models::inference_threads(),
        "templates": matcher.len(),
        "matcher_bytes": matcher.memory_bytes(),
        "face": decided,
    }))
}

/// Run `bench compare`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.rounds == 0 || args.queries == 0 || args.templates.contains(&0) {
        return Err(bad_input(
            "--rounds, --queries and --templates must be positive",
        ));
    }
    let python = args.peers_python.clone().unwrap_or_else(default_python);
    if !python.is_file() {
        return Err(bad_input(format!(
            "the reference pipeline is not set up: {} not found; run `bash bench/peers/setup.sh` \
             (or pass --peers-python PATH to a Python with opencv-python-headless, onnxruntime, \
             faiss-cpu and numpy)",
            python.display()
        )));
    }
    let script = args.peers_script.clone().unwrap_or_else(default_script);
    if !script.is_file() {
        return Err(bad_input(format!(
            "{} not found: run from the repository root or pass --peers-script PATH",
            script.display()
        )));
    }
    let dir = args
        .images
        .clone()
        .or_else(|| super::common::shared_faces("dev"))
        .ok_or_else(|| bad_input("no image directory: pass --images DIR"))?;
    let files = bench::image_files(&dir).with_context(|| format!("listing {}", dir.display()))?;
    if files.is_empty() {
        return Err(bad_input(format!(
            "no JPEG/PNG images under {}",
            dir.display()
        )));
    }
    let images: Vec<(PathBuf, Vec<u8>)> = files
        .iter()
        .map(|p| {
            std::fs::read(p)
                .map(|b| (p.clone(), b))
                .map_err(|e| bad_input(format!("cannot read {}: {e}", p.display())))
        })
        .collect::<anyhow::Result<_>>()?;

    // Both sides run the very same model files: ours verified against the manifest.
    let models_dir = models::resolve_models_dir(args.models.models.as_deref());
    let cfg = args.models.config();
    let detector_file = Manifest::embedded()
        .get(&cfg.detector.model)
        .map_err(|e| bad_input(e.to_string()))?
        .file
        .clone();
    let vision = args.models.load_vision()?;
    let passive = super::common::load_passive(&args.models)?;
    let decision_gallery = gallery(DECISION_GALLERY);
    let p = params(vision.threshold());

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = super::common::bench_thread_counts(&args.threads)?;

    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .arg("--serve")
        .arg("--models")
        .arg(&models_dir)
        .arg("--yunet")
        .arg(&detector_file)
        .arg("--threads")
        .arg(
            threads
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(","),
        )
        .arg("--sizes")
        .arg(
            args.templates
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
    for (path, _) in &images {
        cmd.arg("--image").arg(path);
    }
    let (mut peer, ready) = Peer::spawn(cmd)?;
    let load_start = loadavg();

    let total_steps = (images.len() * threads.len() + args.templates.len()) * args.rounds;
    let bar = indicatif::ProgressBar::new(total_steps as u64);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "  {msg} {pos}/{len} {bar:30} {eta}",
    )?);

    // Time to decision, per image: warm both sides once per thread count, then alternate timed
    // runs: ours, theirs at each thread count in turn, round after round.
    let mut ours: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); STAGES.len()]; threads.len()];
    let mut theirs: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); STAGES.len()]; threads.len()];
    let mut no_face = Vec::new();
    let mut timed_images = 0;
    bar.set_message("decisions");
    'images: for (i, (path, bytes)) in images.iter().enumerate() {
        for &t in &threads {
            models::set_inference_threads(t)?;
            let o = bench::time_to_decision(&vision, &passive, &decision_gallery, &p, bytes)
                .with_context(|| path.display().to_string())?;
            let reply = peer.request(&format!("decide {i} {t}"))?;
            let their_face = reply.get("stages").is_some();
            if o.is_none() || !their_face {
                no_face.push(json!({
                    "image": path.display().to_string(),
                    "ours": o.is_some(),
                    "theirs": their_face,
                }));
                bar.inc((args.rounds * threads.len()) as u64);
                continue 'images;
            }
        }
        timed_images += 1;
        for _ in 0..args.rounds {
            for (ti, &t) in threads.iter().enumerate() {
                models::set_inference_threads(t)?;
                let o = bench::time_to_decision(&vision, &passive, &decision_gallery, &p, bytes)?
                    .ok_or_else(|| anyhow!("{}: face vanished between runs", path.display()))?;
                let reply = peer.request(&format!("decide {i} {t}"))?;
                let st = reply
                    .get("stages")
                    .ok_or_else(|| anyhow!("{}: peer lost the face", path.display()))?;
                for (k, (key, _)) in STAGES.iter().enumerate() {
                    ours[ti][k].push(ours_stage(&o, key).as_secs_f64() * 1e3);
                    theirs[ti][k].push(
                        st.get(*key)
                            .and_then(Value::as_f64)
                            .ok_or_else(|| anyhow!("peer reply lacks `{key}`"))?,
                    );
                }
                bar.inc(1);
            }
        }
    }
    models::set_inference_threads(1)?;
    let decisions: Vec<Value> = threads
        .iter()
        .enumerate()
        .map(|(ti, &t)| {
            let figures: Vec<Figure> = STAGES
                .iter()
                .enumerate()
                .map(|(k, (_, name))| figure(*name, "ms", &ours[ti][k], &theirs[ti][k]))
                .collect();
            json!({"threads": t, "figures": figures})
        })
        .collect();
    // The daemon as shipped (one thread per core) against the single-threaded reference.
    let total = STAGES.len() - 1;
    let shipped = threads
        .iter()
        .position(|&t| t == cores)
        .zip(threads.iter().position(|&t| t == 1))
        .map(|(tn, t1)| {
            figure(
                format!("time to decision, ours at {cores} threads vs theirs at 1"),
                "ms",
                &ours[tn][total],
                &theirs[t1][total],
            )
        });
    let mut figures: Vec<Figure> = Vec::new();
    drop(decision_gallery);

    // Identify vs FAISS IndexFlatIP, top-2, one query at a time, alternating per round.
    for &n in &args.templates {
        bar.set_message(format!("identify {n}"));
        let m = gallery(n);
        let (mut o, mut t) = (Vec::new(), Vec::new());
        for r in 0..args.rounds {
            let seed = QUERY_SEED + r as u64;
            let qs = queries(args.queries, seed);
            o.extend(
                bench::identify_samples(&m, &qs, &p)
                    .iter()
                    .map(|d| d.as_secs_f64() * 1e6),
            );
            let reply = peer.request(&format!("identify {n} {} {seed}", args.queries))?;
            let s = reply
                .get("samples_us")
                .and_then(Value::as_array)
                .ok_or_else(|| anyhow!("peer reply lacks samples_us"))?;
            t.extend(s.iter().filter_map(Value::as_f64));
            bar.inc(1);
        }
        figures.push(figure(
            format!("identify {n} templates (top-2, 1 query)"),
            "us",
            &o,
            &t,
        ));
    }
    bar.finish_and_clear();
    drop(peer);
    let load_end = loadavg();

    // Memory, each side in a fresh process holding all models and 10k templates.
    let first = images
        .iter()
        .map(|(p, _)| p)
        .find(|p| {
            !no_face
                .iter()
                .any(|n| n["image"] == p.display().to_string())
        })
        .ok_or_else(|| bad_input("no image with a face on both sides"))?;
    let mut probe = Command::new(std::env::current_exe()?);
    probe
        .args(["bench", "rss-probe", "--image"])
        .arg(first)
        .arg("--models")
        .arg(&models_dir)
        .arg("--detector")
        .arg(&cfg.detector.model);
    let ours_mem = run_json(probe, "bench rss-probe")?;
    let mut probe = Command::new(&python);
    probe
        .arg(&script)
        .arg("--rss-probe")
        .arg("--models")
        .arg(&models_dir)
        .arg("--yunet")
        .arg(&detector_file)
        .arg("--image")
        .arg(first);
    let theirs_mem = run_json(probe, "peers.py --rss-probe")?;
    for (field, name) in [
        ("vm_hwm_kb", "peak RSS VmHWM (all models, 10k templates)"),
        ("vm_rss_kb", "RSS VmRSS after one decision"),
    ] {
        let mb = |v: &Value| v.get(field).and_then(Value::as_f64).map(|kb| kb / 1024.0);
        let (o, t) = (mb(&ours_mem), mb(&theirs_mem));
        figures.push(figure(name, "MiB", o.as_slice(), t.as_slice()));
    }

    let report = json!({
        "bench": "compare",
        "machine": {
            "cpu": bench::cpu_model(),
            "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
            "loadavg_1min_start": load_start,
            "loadavg_1min_end": load_end,
        },
        "threads": {
            "decisions": threads,
            "ours_probe": {"inference": ours_mem.get("inference_threads"), "os_threads": ours_mem.get("threads")},
            "theirs": ready.get("threads"),
        },
        "versions": {
            "facegate": env!("CARGO_PKG_VERSION"),
            "theirs": ready.get("versions"),
        },
        "detector": cfg.detector.model,
        "detect_side": cfg.detector.detect_side,
        "images": timed_images,
        "rounds": args.rounds,
        "queries": args.queries,
        "decisions": decisions,
        "shipped_vs_reference": shipped,
        "figures": figures,
        "no_face": no_face,
        "memory": {"ours": ours_mem, "theirs": theirs_mem},
    });
    if args.json {
        return print_json(&report);
    }
    print_table(&report);
    Ok(())
}

/// One-minute load average: other work on the machine during the run, for the reader to judge.
fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn run_json(mut cmd: Command, what: &str) -> anyhow::Result<Value> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        return Err(anyhow!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("{what} printed non-JSON: {text}"))
}

fn print_table(r: &Value) {
    let s = |v: &Value| match v {
        Value::String(x) => x.clone(),
        Value::Null => "?".into(),
        v => v.to_string(),
    };
    println!(
        "bench compare: {} images x {} rounds (time to decision), {} queries x {} rounds (identify); ours and theirs interleaved",
        r["images"], r["rounds"], r["queries"], r["rounds"]
    );
    println!(
        "machine: {}, {} cores, {}/{}; 1-min load average {} at start, {} at end (other work on the machine)",
        s(&r["machine"]["cpu"]),
        s(&r["machine"]["cores"]),
        s(&r["machine"]["os"]),
        s(&r["machine"]["arch"]),
        s(&r["machine"]["loadavg_1min_start"]),
        s(&r["machine"]["loadavg_1min_end"])
    );
    let tv = &r["versions"]["theirs"];
    println!(
        "ours:   facegate {} (tract), detector {} at long side <= {} (theirs: the working frame, <= 640)",
        s(&r["versions"]["facegate"]),
        s(&r["detector"]),
        s(&r["detect_side"]),
    );
    println!(
        "theirs: OpenCV {} + onnxruntime {} + FAISS {} (Python {})",
        s(&tv["opencv"]),
        s(&tv["onnxruntime"]),
        s(&tv["faiss"]),
        s(&tv["python"]),
    );
    let header = || {
        println!(
            "{:<52} {:>4} {:>10} {:>10} {:>7} {:>10} {:>10}",
            "figure", "unit", "ours med", "theirs med", "ratio", "ours p95", "theirs p95"
        )
    };
    let row = |fig: &Value| {
        let f = |side: &str, key: &str| {
            fig[side][key]
                .as_f64()
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{:<52} {:>4} {:>10} {:>10} {:>7} {:>10} {:>10}",
            s(&fig["figure"]),
            s(&fig["unit"]),
            f("ours", "median"),
            f("theirs", "median"),
            fig["ratio"]
                .as_f64()
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "-".into()),
            f("ours", "p95"),
            f("theirs", "p95")
        );
    };
    for d in r["decisions"].as_array().into_iter().flatten() {
        println!(
            "-- decisions at {} thread(s) on both sides (tract; OpenCV + onnxruntime intra-op)",
            d["threads"]
        );
        header();
        for fig in d["figures"].as_array().into_iter().flatten() {
            row(fig);
        }
    }
    if !r["shipped_vs_reference"].is_null() {
        println!(
            "-- the daemon's default (one inference thread per core) vs the single-threaded reference"
        );
        header();
        row(&r["shipped_vs_reference"]);
    }
    println!(
        "-- identify (one query at a time, 1 thread each) and memory (fresh processes; ours at {} inference thread(s), theirs at 1)",
        s(&r["threads"]["ours_probe"]["inference"])
    );
    header();
    for fig in r["figures"].as_array().into_iter().flatten() {
        row(fig);
    }
    if let Some(list) = r["no_face"].as_array() {
        for n in list {
            println!(
                "note: {} not timed (face found: ours {}, theirs {})",
                s(&n["image"]),
                n["ours"],
                n["theirs"]
            );
        }
    }
    println!("ratio = ours / theirs (medians); < 1 means we are faster or smaller");
}
