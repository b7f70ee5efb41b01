//! `facegate bench pad`: presentation-attack-detection figures (ISO/IEC 30107-3), measured in this
//! run.
//!
//! **Labelled images** (`--dataset DIR`, default `../shared/faces/spoof`): every image under
//! `DIR/live/` is a bona fide presentation, every image under any other subdirectory an attack
//! of that species (`print/`, `replay/`). The largest detected face of each image is scored by
//! the passive models; an image without a detected face counts as an error for live images and
//! as rejected for attacks (reported separately). Per check — MiniFASNetV2 alone, MiniFASNetV1SE
//! alone, the pair averaged (the reference practice), minifas_128 alone, the fused passive
//! default — it prints APCER per species and BPCER at the default threshold and at the largest
//! threshold with BPCER ≤ `--max-bpcer` (5 %). Then the fused passive check with k-of-n over
//! sequences (frames of one video; grouping in `liveness::pad::group_of`).
//!
//! **SIMULATED suite** (`liveness::synthetic`): APCER per attack kind and BPCER for the IR check
//! alone, the depth check alone and the fused IR+depth policy, plus the emitter self-test. The
//! passive models are not exercised there (no RGB images are rendered).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use facegate::detect::largest;
use facegate::liveness::pad::{
    Rate, Rates, Scored, SyntheticReport, evaluate_synthetic, group_of, rates_at, sequence_rates,
    threshold_for_bpcer,
};
use facegate::liveness::{LivenessConfig, PassiveAntiSpoof, PassiveScores};
use facegate::models::{self, Manifest};
use serde::Serialize;

use super::common::ModelArgs;
use super::{bad_input, print_json};

/// Arguments of `facegate bench pad`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Labelled dataset: `live/` (bona fide) and one subdirectory per attack species.
    #[arg(long, value_name = "DIR")]
    pub dataset: Option<PathBuf>,
    /// SIMULATED samples per kind for the synthetic suite (0 to skip it).
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub synthetic: usize,
    /// Seed of the synthetic suite.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// BPCER bound for the second operating point.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.05)]
    pub max_bpcer: f64,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: ModelArgs,
}

#[derive(Serialize)]
struct OperatingPoint {
    threshold: f32,
    rates: Rates,
}

#[derive(Serialize)]
struct CheckReport {
    name: &'static str,
    default: OperatingPoint,
    /// `None` when no threshold reaches the BPCER bound.
    at_max_bpcer: Option<OperatingPoint>,
}

#[derive(Serialize)]
struct SequenceReport {
    k: usize,
    n: usize,
    too_short: usize,
    default: OperatingPoint,
    at_max_bpcer: Option<OperatingPoint>,
}

#[derive(Serialize)]
struct Report {
    dataset: String,
    images: usize,
    per_species: BTreeMap<String, usize>,
    max_bpcer: f64,
    checks: Vec<CheckReport>,
    fused_k_of_n: SequenceReport,
    synthetic: Option<SyntheticReport>,
}

struct Frame {
    species: Option<String>,
    group: String,
    order: u64,
    scores: Option<PassiveScores>,
}

fn load_dataset(
    dir: &std::path::Path,
    models: &ModelArgs,
    passive: &PassiveAntiSpoof,
) -> anyhow::Result<Vec<Frame>> {
    let vision = models.load_vision()?;
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| bad_input(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    if !subdirs
        .iter()
        .any(|p| p.file_name().is_some_and(|n| n == "live"))
    {
        return Err(bad_input(format!(
            "{}: expected a live/ subdirectory (bona fide) and one per attack species",
            dir.display()
        )));
    }
    let mut frames = Vec::new();
    for sub in subdirs {
        let name = sub
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let species = (name != "live").then(|| name.clone());
        let mut files = facegate::bench::image_files(&sub)
            .with_context(|| format!("listing {}", sub.display()))?;
        files.sort();
        for f in files {
            let frame = facegate::hal::Frame::open(&f)
                .map_err(|e| bad_input(format!("{}: {e}", f.display())))?;
            let faces = vision.detect(&frame)?;
            let scores = match largest(&faces) {
                Some(i) => Some(
                    passive
                        .score(&frame, &faces[i])
                        .with_context(|| format!("scoring {}", f.display()))?,
                ),
                None => None,
            };
            let file = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let (group, order) = group_of(&file);
            frames.push(Frame {
                species: species.clone(),
                group,
                order,
                scores,
            });
        }
    }
    Ok(frames)
}

fn scored(frames: &[Frame], f: impl Fn(&PassiveScores) -> f32) -> Vec<Scored> {
    frames
        .iter()
        .map(|fr| Scored {
            species: fr.species.clone(),
            score: fr.scores.as_ref().map(&f),
            group: fr.group.clone(),
            order: fr.order,
        })
        .collect()
}

fn rate_cell(r: &Rates, species: &str) -> String {
    r.apcer
        .get(species)
        .map_or("n/a".to_string(), |x| x.to_string())
}

/// The row for the threshold that meets the BPCER target, or a line saying none does.
fn print_operating_point(p: Option<&OperatingPoint>, max_bpcer: f64, species: &[String]) {
    match p {
        Some(p) => print_row(
            &format!("  at BPCER <= {:.0}%", max_bpcer * 100.0),
            p.threshold,
            &p.rates,
            species,
        ),
        None => println!(
            "    no threshold reaches BPCER <= {:.0}%",
            max_bpcer * 100.0
        ),
    }
}

fn print_row(label: &str, thr: f32, r: &Rates, species: &[String]) {
    let mut line = format!("  {label:<34} {thr:>6.3}");
    for s in species {
        line += &format!("  {:>18}", rate_cell(r, s));
    }
    line += &format!("  {:>18}", r.bpcer.to_string());
    println!("{line}");
}

fn print_synthetic(s: &SyntheticReport) {
    println!();
    println!(
        "SIMULATED attack suite (rendered NIR pairs + depth maps, seed {}, {} per kind; NOT real captures).",
        s.seed, s.per_kind
    );
    println!(
        "Passive RGB models are not exercised here (no RGB is rendered). APCER per attack kind, BPCER on simulated live faces:"
    );
    let kinds: Vec<&str> = s
        .rows
        .first()
        .map(|r| r.apcer.keys().copied().collect())
        .unwrap_or_default();
    let mut head = format!("  {:<16}", "check");
    for k in &kinds {
        head += &format!("  {k:>18}");
    }
    println!("{head}  {:>18}", "BPCER");
    for r in &s.rows {
        let mut line = format!("  {:<16}", r.check.label());
        for k in &kinds {
            line += &format!("  {:>18}", r.apcer[k].to_string());
        }
        println!("{line}  {:>18}", r.bpcer.to_string());
    }
    println!(
        "  emitter self-test: dead emitter reported as an IR emitter fault (and denied) in {}; false alarms with a working emitter {}",
        pct(s.dead_emitter_detected),
        pct(s.emitter_false_alarms)
    );
    for r in &s.rows {
        let missed: Vec<String> = r
            .apcer
            .iter()
            .filter(|(_, v)| v.errors > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!(
            "  {} lets through: {}",
            r.check.label(),
            if missed.is_empty() {
                "none of the simulated attacks".to_string()
            } else {
                missed.join(", ")
            }
        );
    }
}

fn pct(r: Rate) -> String {
    format!("{}/{}", r.errors, r.total)
}

/// Run `bench pad`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if !(args.max_bpcer.is_finite() && args.max_bpcer > 0.0 && args.max_bpcer < 1.0) {
        return Err(bad_input("--max-bpcer must be in (0, 1)"));
    }
    let dir = args
        .dataset
        .clone()
        .or_else(|| super::common::shared_faces("spoof"))
        .ok_or_else(|| bad_input("no dataset: pass --dataset DIR"))?;
    let config = LivenessConfig::default();
    let models_dir = models::resolve_models_dir(args.models.models.as_deref());
    let passive =
        PassiveAntiSpoof::load(&Manifest::embedded(), &models_dir, config.passive.clone())
            .with_context(|| format!("loading anti-spoof models from {}", models_dir.display()))?;
    let frames = load_dataset(&dir, &args.models, &passive)?;
    if frames.is_empty() {
        return Err(bad_input(format!("no images under {}", dir.display())));
    }
    let mut per_species: BTreeMap<String, usize> = BTreeMap::new();
    for f in &frames {
        *per_species
            .entry(f.species.clone().unwrap_or_else(|| "live".into()))
            .or_default() += 1;
    }
    let pc = config.passive.clone();
    type ScoreFn = Box<dyn Fn(&PassiveScores) -> f32>;
    let checks: Vec<(&'static str, ScoreFn, f32)> = vec![
        ("MiniFASNetV2 alone", Box::new(|s| s.v2_live), 0.5),
        ("MiniFASNetV1SE alone", Box::new(|s| s.v1se_live), 0.5),
        (
            "V2+V1SE averaged (reference)",
            Box::new(|s| (s.v2_live + s.v1se_live) / 2.0),
            0.5,
        ),
        ("minifas_128 alone", Box::new(|s| s.m128_live), 0.5),
        (
            "fused passive (default)",
            Box::new(move |s| {
                pc.weight_v2 * s.v2_live
                    + pc.weight_v1se * s.v1se_live
                    + pc.weight_128 * s.m128_live
            }),
            config.passive.threshold,
        ),
    ];
    let mut reports = Vec::new();
    let mut fused_scored = Vec::new();
    for (name, f, thr) in &checks {
        let s = scored(&frames, f);
        let t = threshold_for_bpcer(&s, args.max_bpcer, |t| rates_at(&s, t).bpcer);
        reports.push(CheckReport {
            name,
            default: OperatingPoint {
                threshold: *thr,
                rates: rates_at(&s, *thr),
            },
            at_max_bpcer: t.map(|t| OperatingPoint {
                threshold: t,
                rates: rates_at(&s, t),
            }),
        });
        fused_scored = s;
    }
    let w = config.frames;
    let (seq_default, too_short) = sequence_rates(&fused_scored, config.passive.threshold, w);
    let seq_t = threshold_for_bpcer(&fused_scored, args.max_bpcer, |t| {
        sequence_rates(&fused_scored, t, w).0.bpcer
    });
    let fused_k_of_n = SequenceReport {
        k: w.k,
        n: w.n,
        too_short,
        default: OperatingPoint {
            threshold: config.passive.threshold,
            rates: seq_default,
        },
        at_max_bpcer: seq_t.map(|t| OperatingPoint {
            threshold: t,
            rates: sequence_rates(&fused_scored, t, w).0,
        }),
    };
    let synthetic = (args.synthetic > 0)
        .then(|| evaluate_synthetic(&config, args.seed, args.synthetic))
        .transpose()?;
    let report = Report {
        dataset: dir.display().to_string(),
        images: frames.len(),
        per_species,
        max_bpcer: args.max_bpcer,
        checks: reports,
        fused_k_of_n,
        synthetic,
    };
    if args.json {
        return print_json(&report);
    }
    print_report(&report);
    Ok(())
}

fn print_report(r: &Report) {
    let species: Vec<String> = r
        .per_species
        .keys()
        .filter(|k| *k != "live")
        .cloned()
        .collect();
    let counts: Vec<String> = r
        .per_species
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    println!(
        "PAD on {}: {} images ({})",
        r.dataset,
        r.images,
        counts.join(", ")
    );
    if let Some(c) = r.checks.first() {
        let nf: Vec<String> = c
            .default
            .rates
            .attack_no_face
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!(
            "no face detected: live {} (counted as rejected = BPCER errors), attacks: {} (counted as rejected)",
            c.default.rates.bona_fide_no_face,
            if nf.is_empty() {
                "none".to_string()
            } else {
                nf.join(", ")
            }
        );
    }
    println!(
        "ISO/IEC 30107-3, single frame, largest face: APCER = attacks accepted, BPCER = live rejected."
    );
    let mut head = format!("  {:<34} {:>6}", "check", "thr");
    for s in &species {
        head += &format!("  {:>18}", format!("APCER {s}"));
    }
    println!("{head}  {:>18}", "BPCER");
    for c in &r.checks {
        print_row(c.name, c.default.threshold, &c.default.rates, &species);
        print_operating_point(c.at_max_bpcer.as_ref(), r.max_bpcer, &species);
    }
    let s = &r.fused_k_of_n;
    println!();
    println!(
        "fused passive, k-of-n over sequences (k = {} of n = {}; frames of one video = one sequence; {} sequences shorter than k excluded):",
        s.k, s.n, s.too_short
    );
    print_row(
        "fused passive k-of-n (default)",
        s.default.threshold,
        &s.default.rates,
        &species,
    );
    print_operating_point(s.at_max_bpcer.as_ref(), r.max_bpcer, &species);
    println!(
        "note: the fused passive weights were chosen on this same set; expect worse on unseen attacks."
    );
    if let Some(syn) = &r.synthetic {
        print_synthetic(syn);
    }
}
