//! The vision core wired together: frame → working frame → detect → align → embed.
//!
//! Every caller (CLI, enrolment, the daemon's pipeline, benchmarks) goes through [`Vision`], so
//! there is one definition of "the face in this frame" and one place that decides the working
//! resolution. Frames larger than `max_side` (default 640, YuNet's native input) are first scaled
//! down with OpenCV's bilinear grid; detection and alignment both run on that working frame, which
//! is exactly the protocol of the reference implementation, and coordinates are mapped back to the
//! original frame for reporting.

use std::borrow::Cow;
use std::path::Path;
use std::time::{Duration, Instant};

use facegate_hal::Frame;
use serde::{Deserialize, Serialize};

use crate::align::{self, AlignError};
use crate::detect::{self, DetectError, Detector, DetectorConfig, Face};
use crate::embed::{EmbedError, Embedder, EmbedderConfig, Embedding};
use crate::models::{Manifest, ModelError};

/// Settings of the vision core (the `[vision]`, `[detector]` and `[recognizer]` config tables).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VisionConfig {
    /// YuNet settings.
    pub detector: DetectorConfig,
    /// SFace settings and the same-person threshold.
    pub recognizer: EmbedderConfig,
}

/// Why the vision core failed on a frame. "No face" is not an error: it is `Ok(None)`.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    /// Model problem (load or plan).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Detector failure.
    #[error(transparent)]
    Detect(#[from] DetectError),
    /// Alignment failure (degenerate landmarks).
    #[error(transparent)]
    Align(#[from] AlignError),
    /// Embedder failure.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// The passive anti-spoof models failed to run.
    #[error(transparent)]
    Passive(#[from] crate::liveness::passive::PassiveError),
}

/// A frame at the working resolution, and how to map back to the original.
#[derive(Debug)]
pub struct Working<'a> {
    /// The frame detection and alignment run on.
    pub frame: Cow<'a, Frame>,
    /// Original size / working size (1.0 when no resize was needed).
    pub to_original: (f32, f32),
}

impl Working<'_> {
    /// Map a face from working to original coordinates.
    pub fn face_to_original(&self, f: &Face) -> Face {
        f.scaled(self.to_original.0, self.to_original.1)
    }
}

/// Per-stage wall times of one analysis (what `bench vision` aggregates).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StageTimes {
    /// Resize to the working frame.
    pub prepare: Duration,
    /// YuNet.
    pub detect: Duration,
    /// Similarity warp.
    pub align: Duration,
    /// SFace.
    pub embed: Duration,
}

/// The largest face of a frame and its identity vector.
#[derive(Debug, Clone)]
pub struct FaceEmbedding {
    /// The face, in original-frame coordinates.
    pub face: Face,
    /// Its unit embedding.
    pub embedding: Embedding,
    /// Number of faces detected in the frame (the terminal serves the largest).
    pub faces_in_frame: usize,
}

/// Detector + embedder, loaded and verified once, shared by reference.
#[derive(Debug)]
pub struct Vision {
    /// The face detector.
    pub detector: Detector,
    /// The face embedder.
    pub embedder: Embedder,
}

impl Vision {
    /// Verify and load both models from `dir`.
    pub fn load(
        manifest: &Manifest,
        dir: &Path,
        config: &VisionConfig,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            detector: Detector::load(manifest, dir, config.detector.clone())?,
            embedder: Embedder::load(manifest, dir, config.recognizer.clone())?,
        })
    }

    /// Same-person cosine threshold in force.
    pub fn threshold(&self) -> f32 {
        self.embedder.config().threshold
    }

    /// Scale a frame down so its long side is at most `detector.max_side` (no upscaling).
    pub fn working<'a>(&self, frame: &'a Frame) -> Result<Working<'a>, VisionError> {
        let max_side = self.detector.config().max_side;
        let (w, h) = (frame.width(), frame.height());
        let long = w.max(h);
        if long <= max_side {
            return Ok(Working {
                frame: Cow::Borrowed(frame),
                to_original: (1.0, 1.0),
            });
        }
        let s = max_side as f64 / long as f64;
        let nw = ((w as f64 * s).round() as u32).max(1);
        let nh = ((h as f64 * s).round() as u32).max(1);
        let small = frame
            .resize_linear(nw, nh)
            .map_err(|e| DetectError::Frame(e.to_string()))?;
        Ok(Working {
            frame: Cow::Owned(small),
            to_original: (w as f32 / nw as f32, h as f32 / nh as f32),
        })
    }

    /// All faces in `frame`, strongest first, in original-frame coordinates.
    pub fn detect(&self, frame: &Frame) -> Result<Vec<Face>, VisionError> {
        let work = self.working(frame)?;
        let faces = self.detector.detect(&work.frame)?;
        Ok(faces.iter().map(|f| work.face_to_original(f)).collect())
    }

    /// Align and embed one face given in *working* coordinates.
    pub fn embed_face(&self, work: &Working<'_>, face: &Face) -> Result<Embedding, VisionError> {
        let crop = align::align(&work.frame, &face.landmarks)?;
        Ok(self.embedder.embed(&crop)?)
    }

    /// Detect, pick the largest face, align and embed it; `Ok(None)` when there is no face.
    pub fn largest_face_embedding(
        &self,
        frame: &Frame,
    ) -> Result<Option<FaceEmbedding>, VisionError> {
        self.largest_face_embedding_timed(frame, &mut StageTimes::default())
    }

    /// As [`Vision::largest_face_embedding`], recording per-stage wall times.
    pub fn largest_face_embedding_timed(
        &self,
        frame: &Frame,
        times: &mut StageTimes,
    ) -> Result<Option<FaceEmbedding>, VisionError> {
        let t = Instant::now();
        let work = self.working(frame)?;
        times.prepare = t.elapsed();
        let t = Instant::now();
        let faces = self.detector.detect(&work.frame)?;
        times.detect = t.elapsed();
        let Some(i) = detect::largest(&faces) else {
            return Ok(None);
        };
        let t = Instant::now();
        let crop = align::align(&work.frame, &faces[i].landmarks)?;
        times.align = t.elapsed();
        let t = Instant::now();
        let embedding = self.embedder.embed(&crop)?;
        times.embed = t.elapsed();
        Ok(Some(FaceEmbedding {
            face: work.face_to_original(&faces[i]),
            embedding,
            faces_in_frame: faces.len(),
        }))
    }
}
