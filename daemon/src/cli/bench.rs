//! `facegate bench ...`: measured figures, printed as a table or `--json`.

use std::path::PathBuf;

use anyhow::Context;

use super::common::ModelArgs;
use super::{bad_input, print_json};

/// Benchmarks.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCmd {
    /// Median and p95 ms per stage (decode, prepare, detect, passive liveness, align, embed) over still images.
    Vision {
        /// Directory of JPEG/PNG images (searched recursively; default ../shared/faces/dev).
        #[arg(long, value_name = "DIR")]
        images: Option<PathBuf>,
        /// Timed repetitions per image.
        #[arg(long, default_value_t = 3)]
        iterations: usize,
        /// Inference thread counts to time, one pass each (default: 1 and the number of cores).
        #[arg(long, value_delimiter = ',', value_name = "N,...")]
        threads: Vec<usize>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        models: ModelArgs,
    },
    /// Identify latency (median, p99) and memory of the 1:N matcher at 1k/10k/100k templates.
    Match(super::bench_match::Args),
    /// Presentation-attack detection figures (ISO/IEC 30107-3 APCER/BPCER) per check and fused.
    Pad(super::bench_pad::Args),
    /// Time to decision through the daemon path, frames/s, cold start to READY and peak RSS.
    E2e(super::bench_e2e::Args),
    /// Ours vs the reference pipeline (OpenCV + onnxruntime + FAISS), interleaved, with ratios.
    Compare(super::bench_compare::Args),
    /// Wall time per tract operator inside each network (what to optimise next).
    Profile {
        /// Manifest ids to profile (default: yunet_640, yunet_320, sface and the three anti-spoof models).
        #[arg(value_name = "ID")]
        ids: Vec<String>,
        /// Timed runs per model.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Detector input as WIDTHxHEIGHT (a camera frame, padded to multiples of 32).
        #[arg(long, default_value = "640x480", value_name = "WxH")]
        detector_input: String,
        /// Inference threads for tract's matrix products.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Also time each network planned with tract's own operators only, alternating with ours.
        #[arg(long)]
        vs_stock: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Models directory (else $FACEGATE_MODELS, else the repository's models/, else /usr/share/facegate/models).
        #[arg(long, value_name = "DIR")]
        models: Option<PathBuf>,
    },
    /// Memory of a fresh process holding all models and a gallery (run by `compare`).
    #[command(hide = true)]
    RssProbe(super::bench_compare::ProbeArgs),
}

/// Run a `bench` subcommand.
pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Vision {
            images,
            iterations,
            threads,
            json,
            models,
        } => {
            let dir = images
                .or_else(|| super::common::shared_faces("dev"))
                .ok_or_else(|| bad_input("no image directory: pass --images DIR"))?;
            let files = facegate::bench::image_files(&dir)
                .with_context(|| format!("listing {}", dir.display()))?;
            if files.is_empty() {
                return Err(bad_input(format!(
                    "no JPEG/PNG images under {}",
                    dir.display()
                )));
            }
            let threads = super::common::bench_thread_counts(&threads)?;
            let vision = models.load_vision()?;
            let passive = super::common::load_passive(&models)?;
            let mut reports = Vec::new();
            for n in threads {
                facegate::models::set_inference_threads(n)?;
                reports.push(facegate::bench::vision(
                    &vision, &passive, &files, iterations,
                )?);
            }
            if json {
                print_json(&reports)
            } else {
                for r in &reports {
                    print!("{r}");
                }
                Ok(())
            }
        }
        BenchCmd::Profile {
            ids,
            runs,
            detector_input,
            threads,
            vs_stock,
            json,
            models,
        } => profile(ids, runs, &detector_input, threads, vs_stock, json, models),
        BenchCmd::Match(a) => super::bench_match::run(a),
        BenchCmd::Pad(a) => super::bench_pad::run(a),
        BenchCmd::E2e(a) => super::bench_e2e::run(a),
        BenchCmd::Compare(a) => super::bench_compare::run(a),
        BenchCmd::RssProbe(a) => super::bench_compare::rss_probe(a),
    }
}

fn profile(
    ids: Vec<String>,
    runs: usize,
    detector_input: &str,
    threads: usize,
    vs_stock: bool,
    json: bool,
    models: Option<PathBuf>,
) -> anyhow::Result<()> {
    use facegate::detect;
    use facegate::models::{self, Lowering, Manifest, Role};
    let (w, h) = detector_input
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<usize>().ok()?, h.parse::<usize>().ok()?)))
        .filter(|&(w, h)| (32..=4096).contains(&w) && (32..=4096).contains(&h))
        .ok_or_else(|| bad_input("--detector-input must be WIDTHxHEIGHT, each 32..4096"))?;
    if threads == 0 {
        return Err(bad_input("--threads must be at least 1"));
    }
    models::set_inference_threads(threads)?;
    let manifest = Manifest::embedded();
    let dir = models::resolve_models_dir(models.as_deref());
    let ids = if ids.is_empty() {
        [
            "yunet_640",
            "yunet_320",
            "sface",
            "minifasnet_v2",
            "minifasnet_v1se",
            "minifas_128",
        ]
        .map(String::from)
        .to_vec()
    } else {
        ids
    };
    let mut out = Vec::new();
    for id in &ids {
        let entry = manifest.get(id).map_err(|e| bad_input(e.to_string()))?;
        let shape = match entry.role {
            Role::Detector => {
                let max_input = entry.fixed_input().unwrap_or((w, h));
                let (sw, sh) = detect::scaled_size(max_input, w, h).unwrap_or((w, h));
                let (iw, ih) = detect::padded_input(sw, sh);
                vec![1, 3, ih, iw]
            }
            _ => {
                let (iw, ih) = entry
                    .fixed_input()
                    .ok_or_else(|| bad_input(format!("{id}: no fixed input size")))?;
                vec![1, 3, ih, iw]
            }
        };
        let loaded = models::load_model(entry, &dir, &shape)
            .with_context(|| format!("loading {id} from {}", dir.display()))?;
        let mut p = facegate::bench_profile::profile(id, &loaded.plan, &shape, runs)
            .map_err(|e| anyhow::anyhow!("profiling {id}: {e:#}"))?;
        if vs_stock {
            let bytes = models::read_verified(entry, &dir)?;
            let stock = models::plan_for_shape_with(entry, &bytes, &shape, Lowering::TractStock)?;
            p.vs_stock = Some(
                facegate::bench_profile::vs_stock(&loaded.plan, &stock, &shape, runs)
                    .map_err(|e| anyhow::anyhow!("timing {id} against tract stock: {e:#}"))?,
            );
        }
        if !json {
            print!("{p}");
        }
        out.push(p);
    }
    if json { print_json(&out) } else { Ok(()) }
}
