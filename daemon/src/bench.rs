//! Measured performance figures (`facegate bench ...`): performance lives here, never in timed tests.
//!
//! Every number printed is measured in the same run on the same machine; nothing is estimated or
//! copied. `bench vision` times each stage of the vision core over a set of still images;
//! [`time_to_decision`], [`random_gallery`] and the `/proc` readers are the building blocks of
//! `bench compare`, which sets them side by side with the reference pipeline.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use facegate_hal::Frame;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::liveness::PassiveAntiSpoof;
use crate::matcher::{MatchParams, Matcher};
use crate::store::{EMBEDDING_DIM, Template, TemplateKind, TemplateMeta};
use crate::vision::{Vision, VisionError};
use crate::{align, detect};

/// Median and 95th percentile of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Median, ms.
    pub median_ms: f64,
    /// 95th percentile (nearest rank), ms.
    pub p95_ms: f64,
}

impl Summary {
    /// Summarise samples; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        let median = if n % 2 == 1 {
            ms[n / 2]
        } else {
            (ms[n / 2 - 1] + ms[n / 2]) / 2.0
        };
        let rank = ((0.95 * n as f64).ceil() as usize).clamp(1, n);
        Some(Self {
            n,
            median_ms: median,
            p95_ms: ms[rank - 1],
        })
    }
}

/// Result of `bench vision`.
#[derive(Debug, Serialize)]
pub struct VisionReport {
    /// Images timed (those with at least one face; others are listed in `no_face`).
    pub images: usize,
    /// Repetitions per image.
    pub iterations: usize,
    /// Model load (verify + fold + optimise) of the detector, ms.
    pub detector_load_ms: f64,
    /// Model load of the embedder, ms.
    pub embedder_load_ms: f64,
    /// Model load of the three passive anti-spoof models, ms.
    pub passive_load_ms: f64,
    /// Per-stage summaries, in pipeline order.
    pub stages: Vec<(String, Summary)>,
    /// Images where no face was found (timed up to detection only).
    pub no_face: Vec<PathBuf>,
    /// Detector model id.
    pub detector_model: String,
    /// Threads each network run could use ([`crate::models::set_inference_threads`]).
    pub inference_threads: usize,
}

impl std::fmt::Display for VisionReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "bench vision: {} images x {} iterations, detector {}, {} inference thread(s)",
            self.images, self.iterations, self.detector_model, self.inference_threads
        )?;
        writeln!(
            f,
            "model load: detector {:.1} ms, embedder {:.1} ms, passive anti-spoof {:.1} ms",
            self.detector_load_ms, self.embedder_load_ms, self.passive_load_ms
        )?;
        writeln!(
            f,
            "{:<10} {:>6} {:>10} {:>10}",
            "stage", "n", "median ms", "p95 ms"
        )?;
        for (name, s) in &self.stages {
            writeln!(
                f,
                "{:<10} {:>6} {:>10.2} {:>10.2}",
                name, s.n, s.median_ms, s.p95_ms
            )?;
        }
        for p in &self.no_face {
            writeln!(f, "note: no face in {}", p.display())?;
        }
        Ok(())
    }
}

/// Collect `.jpg`/`.jpeg`/`.png` files under `dir` (recursively), sorted for repeatable runs.
pub fn image_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| matches!(x.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Time decode, prepare, detect, passive liveness, align, embed and their total over `images`,
/// `iterations` times each (after one untimed warm-up pass so first-use allocations and plans
/// are not counted). Every stage runs for every image with a face, as for a live person.
pub fn vision(
    vision: &Vision,
    passive: &PassiveAntiSpoof,
    images: &[PathBuf],
    iterations: usize,
) -> Result<VisionReport, VisionError> {
    let iterations = iterations.max(1);
    let (mut decode, mut prepare, mut detect, mut live, mut align, mut embed, mut total) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut no_face = Vec::new();
    let mut timed = 0;
    for path in images {
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        let Ok(frame) = Frame::decode(&bytes) else {
            continue;
        };
        match vision.largest_face_embedding(&frame)? {
            Some(fe) => {
                passive.score(&frame, &fe.face)?;
            }
            None => {
                no_face.push(path.clone());
                continue;
            }
        }
        timed += 1;
        for _ in 0..iterations {
            let t0 = Instant::now();
            let frame = match Frame::decode(&bytes) {
                Ok(f) => f,
                Err(_) => continue,
            };
            let t1 = Instant::now();
            let work = vision.working(&frame)?;
            let t2 = Instant::now();
            let faces = vision.detector.detect(&work.frame)?;
            let t3 = Instant::now();
            let Some(i) = detect::largest(&faces) else {
                continue;
            };
            black_box(passive.score(&frame, &work.face_to_original(&faces[i]))?);
            let t4 = Instant::now();
            let crop = align::align(&work.frame, &faces[i].landmarks)?;
            let t5 = Instant::now();
            black_box(vision.embedder.embed(&crop)?);
            let t6 = Instant::now();
            decode.push(t1 - t0);
            prepare.push(t2 - t1);
            detect.push(t3 - t2);
            live.push(t4 - t3);
            align.push(t5 - t4);
            embed.push(t6 - t5);
            total.push(t6 - t0);
        }
    }
    let mut stages = Vec::new();
    for (name, s) in [
        ("decode", &decode),
        ("prepare", &prepare),
        ("detect", &detect),
        ("passive", &live),
        ("align", &align),
        ("embed", &embed),
        ("total", &total),
    ] {
        if let Some(sum) = Summary::of(s) {
            stages.push((name.to_string(), sum));
        }
    }
    Ok(VisionReport {
        images: timed,
        iterations,
        detector_load_ms: vision.detector.load_time().as_secs_f64() * 1e3,
        embedder_load_ms: vision.embedder.load_time().as_secs_f64() * 1e3,
        passive_load_ms: passive.load_time().as_secs_f64() * 1e3,
        stages,
        no_face,
        detector_model: vision.detector.config().model.clone(),
        inference_threads: crate::models::inference_threads(),
    })
}

/// Why a timed decision could not be made (a missing face is not an error: it is `Ok(None)`).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The image bytes do not decode.
    #[error("image does not decode: {0}")]
    Decode(String),
    /// A model failed.
    #[error(transparent)]
    Vision(#[from] VisionError),
}

/// Wall time of each stage of one access decision, in pipeline order.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DecisionTimes {
    /// JPEG/PNG decode of bytes already in memory.
    pub decode: Duration,
    /// Scale to the working frame (long side <= 640).
    pub prepare: Duration,
    /// YuNet.
    pub detect: Duration,
    /// The three passive anti-spoof models, crops included.
    pub passive: Duration,
    /// Similarity warp to 112x112.
    pub align: Duration,
    /// SFace.
    pub embed: Duration,
    /// 1:N identify over the gallery.
    pub matching: Duration,
    /// Decode to decision, one interval (not the sum of the above).
    pub total: Duration,
}

/// One access decision on encoded image bytes, timed per stage: decode, prepare, detect, passive
/// liveness, align, embed, identify. Every stage runs even when liveness fails, so the figure is
/// the cost of a genuine (live, enrolled-size gallery) decision. `Ok(None)`: no face.
pub fn time_to_decision(
    vision: &Vision,
    passive: &PassiveAntiSpoof,
    matcher: &Matcher,
    params: &MatchParams,
    bytes: &[u8],
) -> Result<Option<DecisionTimes>, BenchError> {
    let t0 = Instant::now();
    let frame = Frame::decode(bytes).map_err(|e| BenchError::Decode(e.to_string()))?;
    let t1 = Instant::now();
    let work = vision.working(&frame)?;
    let t2 = Instant::now();
    let faces = vision
        .detector
        .detect(&work.frame)
        .map_err(VisionError::from)?;
    let t3 = Instant::now();
    let Some(i) = detect::largest(&faces) else {
        return Ok(None);
    };
    let scores = passive
        .score(&frame, &work.face_to_original(&faces[i]))
        .map_err(VisionError::from)?;
    black_box(passive.passes(&scores));
    let t4 = Instant::now();
    let crop = align::align(&work.frame, &faces[i].landmarks).map_err(VisionError::from)?;
    let t5 = Instant::now();
    let embedding = vision.embedder.embed(&crop).map_err(VisionError::from)?;
    let t6 = Instant::now();
    black_box(matcher.identify(embedding.as_slice(), params));
    let t7 = Instant::now();
    Ok(Some(DecisionTimes {
        decode: t1 - t0,
        prepare: t2 - t1,
        detect: t3 - t2,
        passive: t4 - t3,
        align: t5 - t4,
        embed: t6 - t5,
        matching: t7 - t6,
        total: t7 - t0,
    }))
}

/// Uniform random unit vector (Box–Muller Gaussians, normalised): galleries with no structure a
/// search could exploit, for matcher benchmarks.
pub fn random_unit(rng: &mut impl Rng) -> Vec<f32> {
    let mut v: Vec<f32> = (0..EMBEDDING_DIM)
        .map(|_| {
            let (u1, u2): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
            (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// A matcher over `n` random unit templates, two per person (as enrolment keeps anchors), built
/// in memory without a store: what `bench compare` scans.
pub fn random_gallery(n: usize, seed: u64) -> Matcher {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let templates: Vec<Template> = (0..n)
        .map(|i| Template {
            person_id: format!("p{:07}", i / 2),
            meta: TemplateMeta {
                seq: i as u64,
                kind: TemplateKind::Anchor,
                model_id: "bench".into(),
                model_version: "1".into(),
                quality: Default::default(),
                created: 0,
            },
            vector: Zeroizing::new(random_unit(&mut rng)),
        })
        .collect();
    // Every vector is a finite unit vector by construction.
    Matcher::from_templates(&templates, None, 0).expect("random unit templates are valid")
}

/// Time `identify` once per query (after five untimed warm-up calls).
pub fn identify_samples(
    matcher: &Matcher,
    queries: &[Vec<f32>],
    params: &MatchParams,
) -> Vec<Duration> {
    for q in queries.iter().take(5) {
        black_box(matcher.identify(q, params));
    }
    queries
        .iter()
        .map(|q| {
            let t = Instant::now();
            black_box(matcher.identify(black_box(q), params));
            t.elapsed()
        })
        .collect()
}

/// A numeric field of `/proc/self/status` (`VmRSS`, `VmHWM` in kB; `Threads`), `None` off Linux.
pub fn proc_status(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The CPU as `/proc/cpuinfo` names it (x86 `model name`, Arm `Model`/`Hardware`), for reports.
pub fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    ["model name", "Model", "Hardware"].iter().find_map(|key| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == *key).then(|| v.trim().to_string())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_median_and_p95() {
        let d: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        let s = Summary::of(&d).unwrap();
        assert_eq!(s.n, 20);
        assert!((s.median_ms - 10.5).abs() < 1e-9);
        assert!((s.p95_ms - 19.0).abs() < 1e-9);
        assert!(Summary::of(&[]).is_none());
        let one = Summary::of(&[Duration::from_millis(3)]).unwrap();
        assert_eq!((one.median_ms, one.p95_ms), (3.0, 3.0));
    }

    #[test]
    fn random_gallery_is_unit_and_reproducible() {
        let g = random_gallery(10, 3);
        assert_eq!((g.len(), g.people()), (10, 5));
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let q = random_unit(&mut rng);
        assert!((q.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
        assert_eq!(
            random_gallery(10, 3).scores(&q),
            g.scores(&q),
            "same seed, same gallery"
        );
    }

    #[test]
    fn proc_status_reads_memory_and_threads() {
        if cfg!(target_os = "linux") {
            assert!(proc_status("VmRSS").unwrap() > 0);
            assert!(proc_status("VmHWM").unwrap() >= proc_status("VmRSS").unwrap() / 2);
            assert!(proc_status("Threads").unwrap() >= 1);
            assert!(proc_status("NoSuchField").is_none());
        }
    }
}
