//! Measured performance figures (`facegate bench ...`): performance lives here, never in timed tests.
//!
//! Every number printed is measured in the same run on the same machine; nothing is estimated or
//! copied. `bench vision` times each stage of the vision core over a set of still images.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use facegate_hal::Frame;
use serde::Serialize;

use crate::vision::{StageTimes, Vision, VisionError};

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
    /// Per-stage summaries, in pipeline order.
    pub stages: Vec<(String, Summary)>,
    /// Images where no face was found (timed up to detection only).
    pub no_face: Vec<PathBuf>,
    /// Detector model id.
    pub detector_model: String,
}

impl std::fmt::Display for VisionReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "bench vision: {} images x {} iterations, detector {}, tract single process",
            self.images, self.iterations, self.detector_model
        )?;
        writeln!(
            f,
            "model load: detector {:.1} ms, embedder {:.1} ms",
            self.detector_load_ms, self.embedder_load_ms
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

/// Time decode, prepare, detect, align, embed and their total over `images`, `iterations` times
/// each (after one untimed warm-up pass so first-use allocations are not counted).
pub fn vision(
    vision: &Vision,
    images: &[PathBuf],
    iterations: usize,
) -> Result<VisionReport, VisionError> {
    let iterations = iterations.max(1);
    let (mut decode, mut prepare, mut detect, mut align, mut embed, mut total) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut no_face = Vec::new();
    let mut timed = 0;
    for path in images {
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        let Ok(frame) = Frame::decode(&bytes) else {
            continue;
        };
        if vision.largest_face_embedding(&frame)?.is_none() {
            no_face.push(path.clone());
            continue;
        }
        timed += 1;
        for _ in 0..iterations {
            let t0 = Instant::now();
            let frame = match Frame::decode(&bytes) {
                Ok(f) => f,
                Err(_) => continue,
            };
            let dt = t0.elapsed();
            let mut st = StageTimes::default();
            vision.largest_face_embedding_timed(&frame, &mut st)?;
            total.push(t0.elapsed());
            decode.push(dt);
            prepare.push(st.prepare);
            detect.push(st.detect);
            align.push(st.align);
            embed.push(st.embed);
        }
    }
    let mut stages = Vec::new();
    for (name, s) in [
        ("decode", &decode),
        ("prepare", &prepare),
        ("detect", &detect),
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
        stages,
        no_face,
        detector_model: vision.detector.config().model.clone(),
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
}
