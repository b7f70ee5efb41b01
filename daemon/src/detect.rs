//! Step 1 of the data path: find faces and their five landmarks in a frame (YuNet).
//!
//! YuNet is a tiny anchor-free detector. It predicts, for every cell of three feature maps
//! (strides 8, 16 and 32), a class score, an objectness score, a box and five landmarks. We feed it
//! the frame in BGR 0-255 (its training convention). The network is fully convolutional (its
//! reshapes are `[1, -1, 1]`), so like OpenCV's `FaceDetectorYN` we run it at the frame's own size
//! zero-padded bottom/right to a multiple of 32, with one optimised plan per input size. Frames
//! larger than the model's nominal input (640×640, 320×320; `max_side` for the dynamic export),
//! or than `detect_side` (default 640, the reference protocol; 320 trades landmark precision for
//! a 4× cheaper detection), are first scaled down (OpenCV `INTER_LINEAR`, bit-exact), never up;
//! coordinates map back by one division, so callers always get working-frame coordinates.
//! Decoding follows `FaceDetectorYN`: score = sqrt(cls × obj), threshold, greedy NMS.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use facegate_hal::Frame;
use serde::{Deserialize, Serialize};
use tract_onnx::prelude::*;

use crate::models::{self, Manifest, ModelEntry, ModelError, Role};

/// Landmark order, as YuNet emits them (viewer's left first): why the aligner's template matches.
pub const LANDMARK_NAMES: [&str; 5] = [
    "right_eye",
    "left_eye",
    "nose_tip",
    "right_mouth_corner",
    "left_mouth_corner",
];

/// One detected face, in the coordinates of the frame given to [`Detector::detect`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Face {
    /// Bounding box `[x, y, w, h]` (top-left corner and size, pixels; may extend past the frame).
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// Five landmarks `[x, y]`, in [`LANDMARK_NAMES`] order.
    pub landmarks: [[f32; 2]; 5],
    /// Detector confidence in [0, 1].
    pub score: f32,
}

impl Face {
    /// Box area in square pixels; "largest face" is the one the terminal serves.
    pub fn area(&self) -> f32 {
        self.bbox[2].max(0.0) * self.bbox[3].max(0.0)
    }

    /// Intersection over union with another box.
    pub fn iou(&self, other: &Face) -> f32 {
        iou(&self.bbox, &other.bbox)
    }

    /// The same face with every coordinate multiplied by `s` (map between frame scales).
    pub fn scaled(&self, sx: f32, sy: f32) -> Face {
        let mut f = *self;
        f.bbox = [
            self.bbox[0] * sx,
            self.bbox[1] * sy,
            self.bbox[2] * sx,
            self.bbox[3] * sy,
        ];
        for (d, s) in f.landmarks.iter_mut().zip(self.landmarks.iter()) {
            *d = [s[0] * sx, s[1] * sy];
        }
        f
    }
}

/// Intersection over union of two `[x, y, w, h]` boxes.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let x1 = a[0].max(b[0]);
    let y1 = a[1].max(b[1]);
    let x2 = (a[0] + a[2]).min(b[0] + b[2]);
    let y2 = (a[1] + a[3]).min(b[1] + b[3]);
    let inter = (x2 - x1).max(0.0) * (y2 - y1).max(0.0);
    let union = a[2] * a[3] + b[2] * b[3] - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

/// Detector settings; defaults reproduce the reference (OpenCV, score 0.6, NMS 0.3).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// Manifest id of the YuNet model: `yunet_640` (default), `yunet_320`, `yunet_dynamic`, ...
    pub model: String,
    /// Minimum score sqrt(cls*obj) for a candidate.
    pub score_threshold: f32,
    /// IoU above which the weaker of two overlapping candidates is suppressed.
    pub nms_threshold: f32,
    /// Most faces returned per frame (after NMS, strongest first).
    pub top_k: usize,
    /// Long side of the working frame (alignment and anti-spoof crops are cut from it; larger
    /// frames are scaled down first); also the detector input of dynamic-size models.
    pub max_side: u32,
    /// Long side of the image YuNet itself runs on: the working frame is scaled down to this
    /// for detection only, and boxes and landmarks are mapped back. Detection cost grows with
    /// the square of it. 640 (default) is the reference protocol (OpenCV's `FaceDetectorYN` on
    /// the working frame). 320 detects about 4× faster and still finds every face a door sees,
    /// but its landmarks are coarser: measured on the dev photos, embeddings move to cosine
    /// 0.93–0.97 of the reference ones and the lowest same-person score drops from 0.68 to 0.62
    /// (docs/performance.md), so it trades recognition margin for speed.
    pub detect_side: u32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            model: "yunet_640".into(),
            score_threshold: 0.6,
            nms_threshold: 0.3,
            top_k: 750,
            max_side: 640,
            detect_side: 640,
        }
    }
}

impl DetectorConfig {
    /// Refuse nonsensical settings instead of silently clamping them.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.score_threshold) {
            return Err(format!(
                "detector.score_threshold = {} must be in [0, 1]",
                self.score_threshold
            ));
        }
        if !(0.0..=1.0).contains(&self.nms_threshold) {
            return Err(format!(
                "detector.nms_threshold = {} must be in [0, 1]",
                self.nms_threshold
            ));
        }
        if self.top_k == 0 {
            return Err("detector.top_k must be at least 1".into());
        }
        if !(32..=4096).contains(&self.max_side) {
            return Err(format!(
                "detector.max_side = {} must be in [32, 4096]",
                self.max_side
            ));
        }
        if !(32..=4096).contains(&self.detect_side) {
            return Err(format!(
                "detector.detect_side = {} must be in [32, 4096]",
                self.detect_side
            ));
        }
        Ok(())
    }
}

/// Why detection failed on a frame (not "no face": that is an empty result).
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The model could not be loaded or planned.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// tract failed while running the network.
    #[error("detector inference failed: {0}")]
    Inference(String),
    /// The frame could not be prepared (resize failure).
    #[error("frame rejected by detector: {0}")]
    Frame(String),
}

/// A loaded YuNet detector. Cheap to share between threads (`&self` API).
pub struct Detector {
    config: DetectorConfig,
    entry: ModelEntry,
    bytes: Vec<u8>,
    /// Largest input (width, height) before the frame is scaled down: the model's nominal
    /// input (or `max_side` for dynamic models), capped at `detect_side`.
    max_input: (usize, usize),
    /// One optimised plan (with its reusable state) per padded input size; a camera stream
    /// needs exactly one.
    plans: Mutex<HashMap<(usize, usize), Arc<models::Runner>>>,
    load_time: std::time::Duration,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

const STRIDES: [usize; 3] = [8, 16, 32];

/// Plans kept for distinct input sizes before the cache is reset.
const MAX_PLANS: usize = 8;

impl Detector {
    /// Verify and load the configured YuNet model from `dir` (planned for its nominal size).
    pub fn load(
        manifest: &Manifest,
        dir: &std::path::Path,
        config: DetectorConfig,
    ) -> Result<Self, ModelError> {
        config.validate().map_err(ModelError::Manifest)?;
        let entry = manifest.get_role(&config.model, Role::Detector)?;
        let start = std::time::Instant::now();
        let bytes = models::read_verified(entry, dir)?;
        let max_side = config.max_side as usize;
        let side = config.detect_side as usize;
        let (mw, mh) = entry.fixed_input().unwrap_or((max_side, max_side));
        let max_input = (mw.min(side), mh.min(side));
        let d = Self {
            config,
            entry: entry.clone(),
            bytes,
            max_input,
            plans: Mutex::new(HashMap::new()),
            load_time: std::time::Duration::ZERO,
        };
        // Plan the nominal size now: a corrupt or unsupported file fails at start-up, not on the
        // first face, and the common camera geometry is ready.
        d.plan(padded_input(max_input.0, max_input.1))?;
        models::release_freed_memory();
        Ok(Self {
            load_time: start.elapsed(),
            ..d
        })
    }

    fn plan(&self, size: (usize, usize)) -> Result<Arc<models::Runner>, ModelError> {
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = plans.get(&size) {
            return Ok(p.clone());
        }
        let p = Arc::new(models::Runner::new(models::plan_for_shape(
            &self.entry,
            &self.bytes,
            &[1, 3, size.1, size.0],
        )?));
        // A camera needs one size; a batch of photos many. Bound the memory plans can take.
        if plans.len() >= MAX_PLANS {
            plans.clear();
        }
        plans.insert(size, p.clone());
        Ok(p)
    }

    /// Time spent verifying and planning the model at load.
    pub fn load_time(&self) -> std::time::Duration {
        self.load_time
    }

    /// The settings in force.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Detect faces, strongest first, in `frame` coordinates.
    pub fn detect(&self, frame: &Frame) -> Result<Vec<Face>, DetectError> {
        let (w, h) = (frame.width() as usize, frame.height() as usize);
        // Downscale only (OpenCV grid, bit-exact), then pad to a multiple of 32.
        let resized;
        let (src, sx, sy) = match scaled_size(self.max_input, w, h) {
            Some((rw, rh)) => {
                resized = frame
                    .resize_linear(rw as u32, rh as u32)
                    .map_err(|e| DetectError::Frame(e.to_string()))?;
                (&resized, rw as f32 / w as f32, rh as f32 / h as f32)
            }
            None => (frame, 1.0, 1.0),
        };
        let (in_w, in_h) = padded_input(src.width() as usize, src.height() as usize);
        let plan = self.plan((in_w, in_h))?;
        let input = bgr_tensor(src, in_w, in_h);
        let outputs = plan
            .run(tvec!(input.into()))
            .map_err(|e| DetectError::Inference(format!("{e:#}")))?;
        let mut faces = decode(&outputs, in_w, in_h, self.config.score_threshold)
            .map_err(DetectError::Inference)?;
        faces = nms(faces, self.config.nms_threshold, self.config.top_k);
        Ok(faces
            .into_iter()
            .map(|f| f.scaled(1.0 / sx, 1.0 / sy))
            .collect())
    }
}

/// The size a `w`×`h` frame is scaled down to so it fits `max_input` (aspect kept, each side at
/// least 1), or `None` when it already fits: frames are never scaled up.
pub fn scaled_size(max_input: (usize, usize), w: usize, h: usize) -> Option<(usize, usize)> {
    let (mw, mh) = max_input;
    let scale = (mw as f64 / w as f64).min(mh as f64 / h as f64);
    (scale < 1.0).then(|| {
        (
            ((w as f64 * scale).round() as usize).clamp(1, mw),
            ((h as f64 * scale).round() as usize).clamp(1, mh),
        )
    })
}

/// The network input for a `w`×`h` image: zero-padded bottom/right to multiples of 32.
pub fn padded_input(w: usize, h: usize) -> (usize, usize) {
    (w.div_ceil(32) * 32, h.div_ceil(32) * 32)
}

/// NCHW f32 tensor, BGR order, raw 0-255, frame in the top-left corner, zero padding elsewhere.
fn bgr_tensor(frame: &Frame, in_w: usize, in_h: usize) -> Tensor {
    let mut data = vec![0f32; 3 * in_w * in_h];
    let plane = in_w * in_h;
    let cw = (frame.width() as usize).min(in_w);
    let ch = (frame.height() as usize).min(in_h);
    for y in 0..ch {
        let row = frame.row(y as u32);
        let o = y * in_w;
        for x in 0..cw {
            let p = &row[3 * x..3 * x + 3];
            data[o + x] = p[2] as f32; // B
            data[plane + o + x] = p[1] as f32; // G
            data[2 * plane + o + x] = p[0] as f32; // R
        }
    }
    // Shape and length agree by construction.
    Tensor::from_shape(&[1, 3, in_h, in_w], &data).expect("tensor shape matches buffer")
}

/// Decode YuNet's 12 outputs (cls×3, obj×3, bbox×3, kps×3, strides 8/16/32) into candidates.
fn decode(
    outputs: &[TValue],
    in_w: usize,
    in_h: usize,
    threshold: f32,
) -> Result<Vec<Face>, String> {
    if outputs.len() != 12 {
        return Err(format!(
            "YuNet returned {} outputs, expected 12",
            outputs.len()
        ));
    }
    let view = |i: usize, per: usize, n: usize| -> Result<&[f32], String> {
        let s = models::f32_output(&outputs[i]).map_err(|e| format!("output {i}: {e}"))?;
        if s.len() != per * n {
            return Err(format!(
                "output {i} has {} values, expected {}",
                s.len(),
                per * n
            ));
        }
        Ok(s)
    };
    let mut faces = Vec::new();
    for (k, &stride) in STRIDES.iter().enumerate() {
        let cols = in_w / stride;
        let rows = in_h / stride;
        let n = cols * rows;
        let cls = view(k, 1, n)?;
        let obj = view(3 + k, 1, n)?;
        let bbox = view(6 + k, 4, n)?;
        let kps = view(9 + k, 10, n)?;
        let s = stride as f32;
        for i in 0..n {
            let score = (cls[i].clamp(0.0, 1.0) * obj[i].clamp(0.0, 1.0)).sqrt();
            if score < threshold {
                continue;
            }
            let (r, c) = ((i / cols) as f32, (i % cols) as f32);
            let b = &bbox[4 * i..4 * i + 4];
            let cx = (c + b[0]) * s;
            let cy = (r + b[1]) * s;
            let bw = b[2].exp() * s;
            let bh = b[3].exp() * s;
            let kp = &kps[10 * i..10 * i + 10];
            let mut landmarks = [[0f32; 2]; 5];
            for (j, l) in landmarks.iter_mut().enumerate() {
                *l = [(c + kp[2 * j]) * s, (r + kp[2 * j + 1]) * s];
            }
            if !(cx.is_finite() && cy.is_finite() && bw.is_finite() && bh.is_finite()) {
                continue;
            }
            faces.push(Face {
                bbox: [cx - bw / 2.0, cy - bh / 2.0, bw, bh],
                landmarks,
                score,
            });
        }
    }
    Ok(faces)
}

/// Greedy non-maximum suppression, strongest first, at most `top_k` survivors.
fn nms(mut faces: Vec<Face>, threshold: f32, top_k: usize) -> Vec<Face> {
    faces.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut keep: Vec<Face> = Vec::new();
    for f in faces {
        if keep.len() >= top_k {
            break;
        }
        if keep.iter().all(|k| k.iou(&f) <= threshold) {
            keep.push(f);
        }
    }
    keep
}

/// Index of the largest face by box area (the person standing closest to the terminal); on a
/// tie the earlier (stronger) face wins.
pub fn largest(faces: &[Face]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, f) in faces.iter().enumerate() {
        if best.is_none_or(|b| f.area() > faces[b].area()) {
            best = Some(i);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x: f32, y: f32, w: f32, h: f32, score: f32) -> Face {
        Face {
            bbox: [x, y, w, h],
            landmarks: [[0.0; 2]; 5],
            score,
        }
    }

    #[test]
    fn iou_basics() {
        assert_eq!(iou(&[0.0, 0.0, 10.0, 10.0], &[0.0, 0.0, 10.0, 10.0]), 1.0);
        assert_eq!(iou(&[0.0, 0.0, 10.0, 10.0], &[20.0, 0.0, 10.0, 10.0]), 0.0);
        let v = iou(&[0.0, 0.0, 10.0, 10.0], &[5.0, 0.0, 10.0, 10.0]);
        assert!((v - 50.0 / 150.0).abs() < 1e-6);
    }

    #[test]
    fn nms_keeps_strongest_of_overlaps_and_respects_top_k() {
        let faces = vec![
            face(0.0, 0.0, 10.0, 10.0, 0.7),
            face(1.0, 1.0, 10.0, 10.0, 0.9),
            face(50.0, 50.0, 10.0, 10.0, 0.8),
        ];
        let kept = nms(faces.clone(), 0.3, 10);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].score, 0.9);
        assert_eq!(kept[1].score, 0.8);
        assert_eq!(nms(faces, 0.3, 1).len(), 1);
    }

    #[test]
    fn largest_picks_biggest_area() {
        let faces = vec![
            face(0.0, 0.0, 10.0, 10.0, 0.9),
            face(0.0, 0.0, 20.0, 5.0, 0.5),
        ];
        assert_eq!(largest(&faces), Some(0));
        assert_eq!(largest(&[]), None);
    }

    #[test]
    fn decode_maps_anchor_grid() {
        // A 32x32 input: stride 8 has 16 cells, 16 has 4, 32 has 1.
        let mk = |n: usize, per: usize, v: f32| -> TValue {
            Tensor::from_shape(&[1, n, per], &vec![v; n * per])
                .unwrap()
                .into()
        };
        let mut outs: Vec<TValue> = Vec::new();
        for (n, v) in [(16, 0.0), (4, 0.0), (1, 1.0)] {
            outs.push(mk(n, 1, v)); // cls: only the stride-32 cell fires
        }
        for n in [16, 4, 1] {
            outs.push(mk(n, 1, 1.0)); // obj
        }
        for n in [16, 4, 1] {
            outs.push(mk(n, 4, 0.5)); // bbox: centre offset 0.5 cell, log-size 0.5
        }
        for n in [16, 4, 1] {
            outs.push(mk(n, 10, 0.25));
        }
        let faces = decode(&outs, 32, 32, 0.5).unwrap();
        assert_eq!(faces.len(), 1);
        let f = faces[0];
        let side = 0.5f32.exp() * 32.0;
        assert!((f.bbox[2] - side).abs() < 1e-4);
        assert!((f.bbox[0] - (16.0 - side / 2.0)).abs() < 1e-4);
        assert_eq!(f.landmarks[0], [8.0, 8.0]);
        assert_eq!(f.score, 1.0);
        assert!(decode(&outs[..11], 32, 32, 0.5).is_err());
    }
}
