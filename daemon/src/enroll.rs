//! Enrolment quality gates: decide whether a photo is good enough to become an anchor template.
//!
//! A poor anchor hurts every future decision for that person (false rejects) and, worse, a photo
//! of a photo or a blurred crowd shot can enrol the wrong face. Each image must show exactly one
//! face, large enough, confidently detected, sharp, roughly frontal, and live by the passive
//! anti-spoof check. Every rejected image gets a reason a person can act on ("face too small:
//! 41 px, need 64 px"). The duplicate check (refuse a face that already matches someone else)
//! lives with the command, which holds the store.

use std::collections::BTreeMap;

use facegate_hal::Frame;
use serde::{Deserialize, Serialize};

use crate::align;
use crate::detect::Face;
use crate::embed::Embedding;
use crate::liveness::PassiveAntiSpoof;
use crate::vision::{Vision, VisionError};

/// Thresholds of the enrolment gates (config table `[enroll]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    /// Minimum face box side (the shorter of width and height), in original-image pixels.
    pub min_face_px: f32,
    /// Minimum detector score.
    pub min_detector_score: f32,
    /// Minimum sharpness: variance of the Laplacian of the aligned 112×112 grey crop.
    pub min_sharpness: f32,
    /// Maximum |yaw index|: nose offset from the eye midpoint over the eye distance
    /// (0 frontal; about 0.5 at 45° of head turn).
    pub max_yaw_index: f32,
    /// Maximum roll (eye line tilt) in degrees.
    pub max_roll_deg: f32,
    /// Require the passive anti-spoof check to pass (a printed photo must not become an anchor).
    pub require_live: bool,
    /// Anchors kept per person (the best-quality ones when more images pass).
    pub max_anchors: usize,
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            min_face_px: 64.0,
            min_detector_score: 0.8,
            min_sharpness: 15.0,
            max_yaw_index: 0.35,
            max_roll_deg: 25.0,
            require_live: true,
            max_anchors: 5,
        }
    }
}

impl QualityConfig {
    /// Refuse values that would disable a gate by accident.
    pub fn validate(&self) -> Result<(), String> {
        if self.min_face_px.is_nan() || self.min_face_px < 16.0 {
            return Err(format!(
                "enroll.min_face_px = {} must be >= 16",
                self.min_face_px
            ));
        }
        if !(0.0..1.0).contains(&self.min_detector_score) {
            return Err("enroll.min_detector_score must be in [0, 1)".into());
        }
        if self.min_sharpness.is_nan() || self.min_sharpness < 0.0 {
            return Err("enroll.min_sharpness must be >= 0".into());
        }
        if !(self.max_yaw_index > 0.0 && self.max_yaw_index <= 1.0) {
            return Err("enroll.max_yaw_index must be in (0, 1]".into());
        }
        if !(self.max_roll_deg > 0.0 && self.max_roll_deg <= 90.0) {
            return Err("enroll.max_roll_deg must be in (0, 90]".into());
        }
        if !(1..=32).contains(&self.max_anchors) {
            return Err("enroll.max_anchors must be in [1, 32]".into());
        }
        Ok(())
    }
}

/// Why an image was refused for enrolment; `Display` is the message shown to the operator.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "gate", rename_all = "snake_case")]
pub enum Rejection {
    /// The image could not be decoded.
    Unreadable {
        /// Decoder message.
        why: String,
    },
    /// No face found.
    NoFace,
    /// More than one face: ambiguous whose template this would be.
    SeveralFaces {
        /// Faces found.
        count: usize,
    },
    /// Face too small for a reliable template.
    TooSmall {
        /// Shorter box side, px.
        px: f32,
        /// Required, px.
        min: f32,
    },
    /// Detector not confident.
    LowScore {
        /// Detector score.
        score: f32,
        /// Required.
        min: f32,
    },
    /// Crop too blurred.
    Blurry {
        /// Laplacian variance.
        sharpness: f32,
        /// Required.
        min: f32,
    },
    /// Head turned or tilted too far.
    Pose {
        /// Yaw index.
        yaw_index: f32,
        /// Roll, degrees.
        roll_deg: f32,
    },
    /// Passive anti-spoof check failed.
    NotLive {
        /// Fused live score.
        score: f32,
        /// Threshold.
        threshold: f32,
    },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Unreadable { why } => write!(f, "unreadable image: {why}"),
            Rejection::NoFace => write!(f, "no face found"),
            Rejection::SeveralFaces { count } => {
                write!(f, "{count} faces in the image; enrolment needs exactly one")
            }
            Rejection::TooSmall { px, min } => {
                write!(
                    f,
                    "face too small: {px:.0} px, need {min:.0} px (move closer or use a larger photo)"
                )
            }
            Rejection::LowScore { score, min } => {
                write!(
                    f,
                    "face detection not confident: score {score:.2}, need {min:.2}"
                )
            }
            Rejection::Blurry { sharpness, min } => {
                write!(
                    f,
                    "face too blurred: sharpness {sharpness:.1}, need {min:.1}"
                )
            }
            Rejection::Pose {
                yaw_index,
                roll_deg,
            } => write!(
                f,
                "face not frontal: yaw index {yaw_index:.2}, roll {roll_deg:.0}°; look straight at the camera"
            ),
            Rejection::NotLive { score, threshold } => write!(
                f,
                "liveness check failed: score {score:.2} < {threshold:.2} (photo of a photo or a screen?)"
            ),
        }
    }
}

/// An image that passed every gate.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The face in original-image coordinates.
    pub face: Face,
    /// Its embedding.
    pub embedding: Embedding,
    /// Quality figures stored with the template (and used to keep the best anchors).
    pub quality: BTreeMap<String, f32>,
}

impl Accepted {
    /// One number to rank anchors: detector score × frontalness × sharpness (saturating).
    pub fn rank(&self) -> f32 {
        let q = |k: &str| self.quality.get(k).copied().unwrap_or(0.0);
        q("detector_score") * (1.0 - q("yaw_index").abs()) * (q("sharpness") / 100.0).min(1.0)
    }
}

/// Yaw index and roll (degrees) from the five landmarks.
pub fn pose(face: &Face) -> (f32, f32) {
    let [re, le, nose, _, _] = face.landmarks;
    let (dx, dy) = (le[0] - re[0], le[1] - re[1]);
    let eye_dist = (dx * dx + dy * dy).sqrt().max(1e-3);
    let mid = [(re[0] + le[0]) / 2.0, (re[1] + le[1]) / 2.0];
    // Nose offset projected on the eye line, relative to the eye distance.
    let yaw = ((nose[0] - mid[0]) * dx + (nose[1] - mid[1]) * dy) / (eye_dist * eye_dist);
    (yaw, dy.atan2(dx).to_degrees())
}

/// Variance of the 4-neighbour Laplacian of the grey crop: low for blurred images.
pub fn sharpness(crop: &Frame) -> f32 {
    let (w, h) = (crop.width() as usize, crop.height() as usize);
    let grey: Vec<f32> = (0..h)
        .flat_map(|y| {
            crop.row(y as u32)
                .chunks_exact(3)
                .map(|p| 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    let mut vals = Vec::with_capacity(w * h);
    for y in 1..h.saturating_sub(1) {
        for x in 1..w.saturating_sub(1) {
            let c = grey[y * w + x];
            vals.push(
                grey[y * w + x - 1]
                    + grey[y * w + x + 1]
                    + grey[(y - 1) * w + x]
                    + grey[(y + 1) * w + x]
                    - 4.0 * c,
            );
        }
    }
    if vals.is_empty() {
        return 0.0;
    }
    let mean = vals.iter().sum::<f32>() / vals.len() as f32;
    vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / vals.len() as f32
}

/// Run every gate on one frame. `Ok(Err(_))` is a refused image; `Err(_)` an internal failure.
pub fn assess(
    vision: &Vision,
    passive: Option<&PassiveAntiSpoof>,
    frame: &Frame,
    cfg: &QualityConfig,
) -> Result<Result<Accepted, Rejection>, VisionError> {
    let work = vision.working(frame)?;
    let faces = vision.detector.detect(&work.frame)?;
    let face_w = match faces.len() {
        0 => return Ok(Err(Rejection::NoFace)),
        1 => faces[0],
        n => return Ok(Err(Rejection::SeveralFaces { count: n })),
    };
    let face = work.face_to_original(&face_w);
    let side = face.bbox[2].min(face.bbox[3]);
    if side < cfg.min_face_px {
        return Ok(Err(Rejection::TooSmall {
            px: side,
            min: cfg.min_face_px,
        }));
    }
    if face.score < cfg.min_detector_score {
        return Ok(Err(Rejection::LowScore {
            score: face.score,
            min: cfg.min_detector_score,
        }));
    }
    let (yaw_index, roll_deg) = pose(&face);
    if yaw_index.abs() > cfg.max_yaw_index || roll_deg.abs() > cfg.max_roll_deg {
        return Ok(Err(Rejection::Pose {
            yaw_index,
            roll_deg,
        }));
    }
    let crop = align::align(&work.frame, &face_w.landmarks)?;
    let sharp = sharpness(&crop);
    if sharp < cfg.min_sharpness {
        return Ok(Err(Rejection::Blurry {
            sharpness: sharp,
            min: cfg.min_sharpness,
        }));
    }
    let mut quality = BTreeMap::from([
        ("detector_score".to_string(), face.score),
        ("face_px".to_string(), side),
        ("sharpness".to_string(), sharp),
        ("yaw_index".to_string(), yaw_index),
        ("roll_deg".to_string(), roll_deg),
    ]);
    if let Some(p) = passive {
        let s = p.score(frame, &face)?;
        quality.insert("liveness".to_string(), s.fused);
        if cfg.require_live && !p.passes(&s) {
            return Ok(Err(Rejection::NotLive {
                score: s.fused,
                threshold: p.config().threshold,
            }));
        }
    }
    let embedding = vision.embedder.embed(&crop)?;
    Ok(Ok(Accepted {
        face,
        embedding,
        quality,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(lm: [[f32; 2]; 5]) -> Face {
        Face {
            bbox: [0.0, 0.0, 100.0, 100.0],
            landmarks: lm,
            score: 0.9,
        }
    }

    #[test]
    fn pose_of_frontal_turned_and_tilted_faces() {
        let frontal = face([
            [30.0, 40.0],
            [70.0, 40.0],
            [50.0, 60.0],
            [35.0, 80.0],
            [65.0, 80.0],
        ]);
        let (yaw, roll) = pose(&frontal);
        assert!(yaw.abs() < 1e-6 && roll.abs() < 1e-6);
        let turned = face([
            [30.0, 40.0],
            [70.0, 40.0],
            [66.0, 60.0],
            [35.0, 80.0],
            [65.0, 80.0],
        ]);
        assert!((pose(&turned).0 - 0.4).abs() < 1e-6);
        let tilted = face([
            [30.0, 40.0],
            [70.0, 80.0],
            [50.0, 60.0],
            [35.0, 80.0],
            [65.0, 80.0],
        ]);
        assert!((pose(&tilted).1 - 45.0).abs() < 1e-4);
    }

    #[test]
    fn sharpness_separates_edges_from_flat() {
        let flat = Frame::from_rgb8(16, 16, vec![128; 16 * 16 * 3]).unwrap();
        assert_eq!(sharpness(&flat), 0.0);
        let checker: Vec<u8> = (0..16 * 16)
            .flat_map(|i| {
                let v = if (i % 16 + i / 16) % 2 == 0 { 0 } else { 255 };
                [v, v, v]
            })
            .collect();
        let sharp = Frame::from_rgb8(16, 16, checker).unwrap();
        assert!(sharpness(&sharp) > 1000.0);
    }

    #[test]
    fn config_validation_refuses_disabled_gates() {
        assert!(QualityConfig::default().validate().is_ok());
        let c = QualityConfig {
            min_face_px: 0.0,
            ..Default::default()
        };
        assert!(c.validate().is_err());
        let c = QualityConfig {
            max_anchors: 0,
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }
}
