//! Options shared by every command that runs the vision core.

use std::path::{Path, PathBuf};

use anyhow::Context;
use facegate::hal::Frame;
use facegate::models::{self, Manifest};
use facegate::vision::{Vision, VisionConfig};

use super::bad_input;

/// Where the models are and which ones to run.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Models directory (else $FACEGATE_MODELS, else the repository's models/, else /usr/share/facegate/models).
    #[arg(long, value_name = "DIR")]
    pub models: Option<PathBuf>,
    /// Detector model id from the manifest (yunet_640, yunet_320, yunet_dynamic, yunet_n_640).
    #[arg(long, value_name = "ID")]
    pub detector: Option<String>,
    /// Minimum detector score.
    #[arg(long, value_name = "S")]
    pub score_threshold: Option<f32>,
    /// Long side of the image the detector runs on (default 640, OpenCV's protocol; 320 is ~4x faster, coarser landmarks).
    #[arg(long, value_name = "PX")]
    pub detect_side: Option<u32>,
    /// Same-person cosine threshold (default 0.363, OpenCV's operating point).
    #[arg(long, value_name = "T")]
    pub threshold: Option<f32>,
}

impl ModelArgs {
    /// The vision settings these flags describe (defaults for anything not given).
    pub fn config(&self) -> VisionConfig {
        let mut c = VisionConfig::default();
        if let Some(d) = &self.detector {
            c.detector.model = d.clone();
        }
        if let Some(s) = self.score_threshold {
            c.detector.score_threshold = s;
        }
        if let Some(s) = self.detect_side {
            c.detector.detect_side = s;
        }
        if let Some(t) = self.threshold {
            c.recognizer.threshold = t;
        }
        c
    }

    /// Verify and load the detector and embedder.
    pub fn load_vision(&self) -> anyhow::Result<Vision> {
        let c = self.config();
        c.detector.validate().map_err(bad_input)?;
        c.recognizer.validate().map_err(bad_input)?;
        let dir = models::resolve_models_dir(self.models.as_deref());
        Vision::load(&Manifest::embedded(), &dir, &c)
            .with_context(|| format!("loading models from {}", dir.display()))
    }
}

/// Inference thread counts a benchmark times: `requested` (each in 1..=64, as the
/// configuration allows; repeats in a row dropped), or by default 1 and the number of cores.
pub fn bench_thread_counts(requested: &[usize]) -> anyhow::Result<Vec<usize>> {
    let mut counts = if requested.is_empty() {
        vec![
            1,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        ]
    } else {
        requested.to_vec()
    };
    counts.dedup();
    if counts.iter().any(|&t| t == 0 || t > 64) {
        return Err(bad_input("--threads: every count must be in 1..=64"));
    }
    Ok(counts)
}

/// Verify and load the three passive anti-spoof models (default fusion settings).
pub fn load_passive(models: &ModelArgs) -> anyhow::Result<facegate::liveness::PassiveAntiSpoof> {
    let dir = models::resolve_models_dir(models.models.as_deref());
    facegate::liveness::PassiveAntiSpoof::load(&Manifest::embedded(), &dir, Default::default())
        .with_context(|| format!("loading anti-spoof models from {}", dir.display()))
}

/// Decode an image file; an unreadable or corrupt file is bad input (exit 2).
pub fn open_image(path: &std::path::Path) -> anyhow::Result<Frame> {
    Frame::open(path).map_err(|e| bad_input(e.to_string()))
}

/// `<fixture root>/<sub>`, where the fixture root is `../shared/faces` beside the project root (or
/// beside the working directory): the default input of the demo and the benchmarks.
pub fn shared_faces(sub: &str) -> Option<PathBuf> {
    [
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/faces"),
        PathBuf::from("../shared/faces"),
    ]
    .into_iter()
    .map(|root| root.join(sub))
    .find(|p| p.is_dir())
}
