//! `facegate eval pairs`: verification accuracy on a labelled pairs file, so we can state our
//! accuracy the way peers do (LFW-style pairs) on whatever data the operator has.
//!
//! Each distinct image is embedded once (largest face); the metric maths and the conventions for
//! images without a face live in [`facegate::eval`]. JSON (`--json`) is the [`PairsReport`] plus
//! `images`, `no_face_images` and `far_method`; fields may be added, never renamed.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use facegate::embed::Embedding;
use facegate::eval::{self, PairsReport, ScoredPair};
use serde::Serialize;

use super::common::{ModelArgs, open_image};
use super::{bad_input, print_json};

/// `facegate eval ...`.
#[derive(clap::Subcommand, Debug)]
pub enum EvalCmd {
    /// Accuracy, best threshold, TAR at FAR 1 % / 0.1 % and EER on a CSV of labelled image pairs.
    Pairs(PairsArgs),
}

/// `facegate eval pairs`.
#[derive(clap::Args, Debug)]
pub struct PairsArgs {
    /// CSV with a header: `file_x,file_y,decision` (Yes/No) or `a,b,same` (1/0).
    #[arg(long, value_name = "FILE")]
    pub pairs: PathBuf,
    /// Directory the image paths in the CSV are relative to (absolute paths are used as they are).
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: ModelArgs,
}

/// How FAR operating points are chosen, stated in every JSON report.
const FAR_METHOD: &str = "threshold = smallest with FAR <= target (accept if cosine >= threshold); \
FAR = false accepts / different-person pairs; with N negatives only k/N is reachable, so when \
target*N < 1 the point is TAR at FAR 0 (below_resolution = true); pairs with a missing face are \
rejects (ISO/IEC 19795-1 generalized rates) and errors in accuracy";

#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    report: PairsReport,
    images: usize,
    no_face_images: Vec<String>,
    far_method: &'static str,
}

/// Run `eval pairs`.
pub fn run(cmd: EvalCmd) -> anyhow::Result<()> {
    let EvalCmd::Pairs(args) = cmd;
    let text = std::fs::read_to_string(&args.pairs)
        .map_err(|e| bad_input(format!("cannot read {}: {e}", args.pairs.display())))?;
    let pairs = eval::parse_pairs_csv(&text)
        .map_err(|e| bad_input(format!("{}: {e}", args.pairs.display())))?;
    if !args.root.is_dir() {
        return Err(bad_input(format!(
            "--root {} is not a directory",
            args.root.display()
        )));
    }
    let vision = args.models.load_vision()?;

    // Distinct images in order of first use, each embedded once.
    let mut order: Vec<(&str, usize)> = Vec::new();
    let mut seen = HashMap::new();
    for p in &pairs {
        for img in [p.a.as_str(), p.b.as_str()] {
            if seen.insert(img, ()).is_none() {
                order.push((img, p.line));
            }
        }
    }
    let mut embeddings: HashMap<&str, Option<Embedding>> = HashMap::new();
    let mut no_face = Vec::new();
    for (img, line) in &order {
        let path = args.root.join(img);
        let frame = open_image(&path).with_context(|| {
            format!(
                "{} line {line}: image {}",
                args.pairs.display(),
                path.display()
            )
        })?;
        let fe = vision.largest_face_embedding(&frame)?;
        if fe.is_none() {
            no_face.push(img.to_string());
        }
        embeddings.insert(img, fe.map(|f| f.embedding));
    }
    let scored: Vec<ScoredPair> = pairs
        .iter()
        .map(|p| ScoredPair {
            same: p.same,
            score: match (&embeddings[p.a.as_str()], &embeddings[p.b.as_str()]) {
                (Some(a), Some(b)) => Some(a.cosine(b)),
                _ => None,
            },
        })
        .collect();
    let report = Report {
        report: eval::evaluate(&scored, vision.threshold()),
        images: order.len(),
        no_face_images: no_face,
        far_method: FAR_METHOD,
    };
    if args.json {
        return print_json(&report);
    }
    print_text(&report);
    Ok(())
}

fn pct(x: f64) -> String {
    format!("{:.2} %", 100.0 * x)
}

fn print_text(r: &Report) {
    let e = &r.report;
    println!(
        "{} pairs ({} same, {} different) over {} images; no face in {} image(s)",
        e.pairs,
        e.same_pairs,
        e.different_pairs,
        r.images,
        r.no_face_images.len()
    );
    for img in &r.no_face_images {
        println!("  no face: {img}");
    }
    let missing = e.missing_face_same_pairs + e.missing_face_different_pairs;
    println!(
        "accuracy at threshold {}: {} ({} false accepts, {} false rejects; {missing} pair(s) with a missing face counted as errors)",
        e.threshold,
        pct(e.accuracy),
        e.false_accepts,
        e.false_rejects
    );
    println!(
        "best threshold {:.4}: {} (any threshold in ({:.4}, {:.4}] gives it)",
        e.best_threshold,
        pct(e.best_accuracy),
        e.best_range[0],
        e.best_range[1]
    );
    for t in &e.tar_at_far {
        println!(
            "TAR @ FAR {}: {} at threshold {:.6} (achieved FAR {}: {} false accepts of {} negatives){}",
            pct(t.target_far),
            pct(t.tar),
            t.threshold,
            pct(t.achieved_far),
            t.false_accepts,
            t.negatives,
            if t.below_resolution {
                "; too few negatives to resolve this FAR: it is TAR at FAR 0 on this set"
            } else {
                ""
            }
        );
    }
    if let Some(x) = &e.eer {
        println!(
            "EER {} at threshold {:.4} (FAR {}, FRR {})",
            pct(x.eer),
            x.threshold,
            pct(x.far),
            pct(x.frr)
        );
    }
    if let (Some(s), Some(d)) = (e.min_same, e.max_different) {
        println!("lowest same-person score {s:.4}, highest different-person score {d:.4}");
    }
}
