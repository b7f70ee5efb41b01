//! Step 4 of the data path: turn an aligned 112×112 face into a 128-d identity vector (SFace).
//!
//! SFace takes the aligned crop in RGB, raw 0-255 (it normalises internally) and returns a 128-d
//! feature. We L2-normalise it so identity comparison is a dot product (cosine similarity);
//! OpenCV's published operating point for "same person" is cosine >= 0.363. The official model
//! file is int8 block-quantized; [`crate::models::load_model`] folds it to fp32 for tract.
//!
//! An [`Embedding`] is biometric data: its `Debug` prints no values and it is zeroized on drop.

use facegate_hal::Frame;
use serde::{Deserialize, Serialize};
use tract_onnx::prelude::*;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::align::CROP;
use crate::models::{self, Manifest, ModelError, Role};

/// Embedding dimension of SFace.
pub const DIM: usize = 128;

/// OpenCV's published cosine threshold for SFace (same person at or above).
pub const DEFAULT_THRESHOLD: f32 = 0.363;

/// A unit-length face embedding. Never logged, never published; zeroized when dropped.
#[derive(Clone, PartialEq, Zeroize, ZeroizeOnDrop)]
pub struct Embedding(Vec<f32>);

impl std::fmt::Debug for Embedding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Embedding(<{} dims redacted>)", self.0.len())
    }
}

impl Embedding {
    /// L2-normalise a raw feature vector; `None` if it is empty, non-finite or all zeros.
    pub fn from_raw(mut v: Vec<f32>) -> Option<Self> {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if v.is_empty() || !norm.is_finite() || norm < 1e-12 {
            v.zeroize();
            return None;
        }
        v.iter_mut().for_each(|x| *x /= norm);
        Some(Self(v))
    }

    /// The unit vector (for the matcher and the `--json` CLI output only).
    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }

    /// Cosine similarity with another embedding (both are unit vectors: a dot product).
    pub fn cosine(&self, other: &Embedding) -> f32 {
        self.0.iter().zip(&other.0).map(|(a, b)| a * b).sum()
    }

    /// Euclidean norm (1 up to rounding); shown by `facegate embed` as a sanity figure.
    pub fn norm(&self) -> f32 {
        self.0.iter().map(|x| x * x).sum::<f32>().sqrt()
    }
}

/// Embedder settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbedderConfig {
    /// Manifest id of the recogniser.
    pub model: String,
    /// Cosine similarity at or above which two faces are the same person.
    pub threshold: f32,
}

impl Default for EmbedderConfig {
    fn default() -> Self {
        Self {
            model: "sface".into(),
            threshold: DEFAULT_THRESHOLD,
        }
    }
}

impl EmbedderConfig {
    /// A threshold outside (0, 1) would accept everyone or no one: refuse it.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            return Err(format!(
                "recognizer.threshold = {} must be in (0, 1) (OpenCV's operating point is {DEFAULT_THRESHOLD})",
                self.threshold
            ));
        }
        Ok(())
    }
}

/// Why an embedding could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The crop is not 112×112.
    #[error("aligned crop must be {CROP}x{CROP}, got {0}x{1}")]
    CropSize(u32, u32),
    /// tract failed.
    #[error("embedder inference failed: {0}")]
    Inference(String),
    /// The network produced a zero or non-finite vector.
    #[error("embedder produced a degenerate vector")]
    Degenerate,
}

/// A loaded SFace model.
pub struct Embedder {
    config: EmbedderConfig,
    model: models::LoadedModel,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Verify, fold and load the configured recogniser.
    pub fn load(
        manifest: &Manifest,
        dir: &std::path::Path,
        config: EmbedderConfig,
    ) -> Result<Self, ModelError> {
        config.validate().map_err(ModelError::Manifest)?;
        let entry = manifest.get_role(&config.model, Role::Recognizer)?;
        let model = models::load_model(entry, dir, &[1, 3, CROP, CROP])?;
        Ok(Self { config, model })
    }

    /// The settings in force (threshold).
    pub fn config(&self) -> &EmbedderConfig {
        &self.config
    }

    /// Model id and file for events and status (never the weights).
    pub fn model_id(&self) -> &str {
        &self.model.entry.id
    }

    /// Time spent verifying and planning the model at load.
    pub fn load_time(&self) -> std::time::Duration {
        self.model.load_time
    }

    /// Version stored with every template: the first 12 hex digits of the model file's SHA-256,
    /// so templates never silently match queries from different weights.
    pub fn model_version(&self) -> &str {
        &self.model.entry.sha256[..12]
    }

    /// Run the network on NCHW [1,3,112,112] RGB 0-255 data and return the raw `fc1` output
    /// (not normalised). Exposed for golden tests against onnxruntime.
    pub fn run_nchw(&self, data: &[f32]) -> Result<Vec<f32>, EmbedError> {
        let input = Tensor::from_shape(&[1, 3, CROP, CROP], data)
            .map_err(|e| EmbedError::Inference(format!("input: {e}")))?;
        let out = self
            .model
            .run(tvec!(input.into()))
            .map_err(|e| EmbedError::Inference(format!("{e:#}")))?;
        let first = out
            .first()
            .ok_or_else(|| EmbedError::Inference("no output".into()))?;
        let v = models::f32_output(first)
            .map_err(EmbedError::Inference)?
            .to_vec();
        if v.len() != DIM {
            return Err(EmbedError::Inference(format!(
                "output has {} values, expected {DIM}",
                v.len()
            )));
        }
        Ok(v)
    }

    /// Embed an aligned 112×112 crop (see [`crate::align::align`]).
    pub fn embed(&self, crop: &Frame) -> Result<Embedding, EmbedError> {
        if crop.width() as usize != CROP || crop.height() as usize != CROP {
            return Err(EmbedError::CropSize(crop.width(), crop.height()));
        }
        let raw = self.run_nchw(&rgb_nchw(crop))?;
        Embedding::from_raw(raw).ok_or(EmbedError::Degenerate)
    }
}

/// NCHW f32 data in RGB order, raw 0-255.
pub fn rgb_nchw(frame: &Frame) -> Vec<f32> {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let plane = w * h;
    let mut data = vec![0f32; 3 * plane];
    for y in 0..h {
        let row = frame.row(y as u32);
        for x in 0..w {
            for c in 0..3 {
                data[c * plane + y * w + x] = row[3 * x + c] as f32;
            }
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_and_cosine() {
        let a = Embedding::from_raw(vec![3.0, 4.0]).unwrap();
        assert!((a.norm() - 1.0).abs() < 1e-6);
        let b = Embedding::from_raw(vec![4.0, 3.0]).unwrap();
        assert!((a.cosine(&b) - 24.0 / 25.0).abs() < 1e-6);
        assert!(Embedding::from_raw(vec![0.0, 0.0]).is_none());
        assert!(Embedding::from_raw(vec![f32::NAN, 1.0]).is_none());
        assert!(Embedding::from_raw(vec![]).is_none());
    }

    #[test]
    fn debug_never_prints_values() {
        let a = Embedding::from_raw(vec![0.123456, 0.5]).unwrap();
        let s = format!("{a:?}");
        assert!(!s.contains("0.2") && !s.contains("0.9"), "{s}");
    }

    #[test]
    fn threshold_is_validated() {
        let mut c = EmbedderConfig::default();
        assert!(c.validate().is_ok());
        c.threshold = 1.5;
        assert!(c.validate().is_err());
        c.threshold = f32::NAN;
        assert!(c.validate().is_err());
    }
}
