//! `facegate bench ...`: measured figures, printed as a table or `--json`.

use std::path::PathBuf;

use anyhow::Context;

use super::common::ModelArgs;
use super::{bad_input, print_json};

/// Benchmarks.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCmd {
    /// Median and p95 ms per vision stage (decode, prepare, detect, align, embed) over still images.
    Vision {
        /// Directory of JPEG/PNG images (searched recursively; default ../shared/faces/dev).
        #[arg(long, value_name = "DIR")]
        images: Option<PathBuf>,
        /// Timed repetitions per image.
        #[arg(long, default_value_t = 3)]
        iterations: usize,
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
            let vision = models.load_vision()?;
            let report = facegate::bench::vision(&vision, &files, iterations)?;
            if json {
                print_json(&report)
            } else {
                print!("{report}");
                Ok(())
            }
        }
        BenchCmd::Match(a) => super::bench_match::run(a),
        BenchCmd::Pad(a) => super::bench_pad::run(a),
        BenchCmd::E2e(a) => super::bench_e2e::run(a),
        BenchCmd::Compare(a) => super::bench_compare::run(a),
        BenchCmd::RssProbe(a) => super::bench_compare::rss_probe(a),
    }
}
