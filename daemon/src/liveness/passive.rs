//! Passive RGB anti-spoofing: three small CNNs that judge whether a face crop is a live face or a
//! presentation attack (printed photo, screen replay), from one RGB frame.
//!
//! - MiniFASNetV2 (crop 2.7× the face box) and MiniFASNetV1SE (4.0×), 80×80 BGR raw 0-255, three
//!   classes with class 1 = live (minivision's Silent-Face-Anti-Spoofing);
//! - minifas_128 (square crop 1.5× the box's long side, reflect-padded, 128×128 RGB/255, two
//!   classes with index 0 = live), which catches printed photos the pair lets through.
//!
//! Crops follow the reference code to the pixel (minivision `CropImage`, OpenCV `INTER_LINEAR`
//! through [`Frame::resize_linear`], `BORDER_REFLECT_101`), because these models react to one-level
//! pixel differences. The fusion rule is a weighted mean of the three live probabilities (see
//! [`PassiveConfig`]); its weights and threshold are configuration, and `facegate bench pad` reports
//! what they do on labelled data.

use facegate_hal::Frame;
use serde::{Deserialize, Serialize};
use tract_onnx::prelude::*;

use crate::detect::Face;
use crate::models::{self, LoadedModel, Manifest, ModelError, Role};

/// Fusion weights and threshold of the passive check.
///
/// Default: live score = 0.5·p(V2) + 0.1·p(V1SE) + 0.4·p(minifas_128), pass at ≥ 0.5. The weights
/// were chosen on the labelled fixture set (`shared/faces/spoof`, the only one we have), where
/// MiniFASNetV1SE is the weakest of the three: there it passes 1 of 48 prints and 0 of 13 replays at
/// a BPCER of 2 of 65 (`facegate bench pad` measures it; see `docs/liveness.md`). Expect worse on unseen
/// attacks: the passive check is one layer of several (frames, IR, depth).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveConfig {
    /// Weight of MiniFASNetV2's live probability.
    pub weight_v2: f32,
    /// Weight of MiniFASNetV1SE's live probability.
    pub weight_v1se: f32,
    /// Weight of minifas_128's live probability.
    pub weight_128: f32,
    /// Fused live score at or above which the check passes.
    pub threshold: f32,
}

impl Default for PassiveConfig {
    fn default() -> Self {
        Self {
            weight_v2: 0.5,
            weight_v1se: 0.1,
            weight_128: 0.4,
            threshold: 0.5,
        }
    }
}

impl PassiveConfig {
    /// Weights must be non-negative and sum to 1; the threshold must lie in (0, 1).
    pub fn validate(&self) -> Result<(), String> {
        let w = [self.weight_v2, self.weight_v1se, self.weight_128];
        if w.iter().any(|x| !(x.is_finite() && *x >= 0.0)) {
            return Err("liveness.passive weights must be finite and >= 0".into());
        }
        let sum: f32 = w.iter().sum();
        if (sum - 1.0).abs() > 1e-3 {
            return Err(format!(
                "liveness.passive weights must sum to 1 (they sum to {sum})"
            ));
        }
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            return Err(format!(
                "liveness.passive.threshold = {} must be in (0, 1)",
                self.threshold
            ));
        }
        Ok(())
    }
}

/// Raw and fused outputs of the passive check for one face.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct PassiveScores {
    /// MiniFASNetV2 logits (class 1 = live).
    pub v2_logits: [f32; 3],
    /// MiniFASNetV1SE logits (class 1 = live).
    pub v1se_logits: [f32; 3],
    /// minifas_128 logits (index 0 = live).
    pub m128_logits: [f32; 2],
    /// Live probability of MiniFASNetV2: `softmax(v2_logits)` at index 1.
    pub v2_live: f32,
    /// Live probability of MiniFASNetV1SE: `softmax(v1se_logits)` at index 1.
    pub v1se_live: f32,
    /// Live probability of minifas_128: `softmax(m128_logits)` at index 0.
    pub m128_live: f32,
    /// Weighted fusion, the number compared with the threshold.
    pub fused: f32,
}

/// Why the passive check could not run (never "spoof": that is a score).
#[derive(Debug, thiserror::Error)]
pub enum PassiveError {
    /// A model failed to run.
    #[error("anti-spoof inference failed ({model}): {why}")]
    Inference {
        /// Model id.
        model: String,
        /// tract's message.
        why: String,
    },
    /// The face box is unusable (empty or non-finite).
    #[error("face box {0:?} is unusable for an anti-spoof crop")]
    BadBox([f32; 4]),
}

/// The three passive anti-spoof models, loaded and verified.
pub struct PassiveAntiSpoof {
    config: PassiveConfig,
    v2: LoadedModel,
    v1se: LoadedModel,
    m128: LoadedModel,
}

impl std::fmt::Debug for PassiveAntiSpoof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassiveAntiSpoof")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn load(
    manifest: &Manifest,
    dir: &std::path::Path,
    id: &str,
    side: usize,
) -> Result<LoadedModel, ModelError> {
    let e = manifest.get_role(id, Role::Antispoof)?;
    models::load_model(e, dir, &[1, 3, side, side])
}

fn softmax<const N: usize>(x: &[f32; N]) -> [f32; N] {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut e = x.map(|v| (v - m).exp());
    let s: f32 = e.iter().sum();
    e.iter_mut().for_each(|v| *v /= s);
    e
}

impl PassiveAntiSpoof {
    /// Verify and load MiniFASNetV2, MiniFASNetV1SE and minifas_128 from `dir`.
    pub fn load(
        manifest: &Manifest,
        dir: &std::path::Path,
        config: PassiveConfig,
    ) -> Result<Self, ModelError> {
        config.validate().map_err(ModelError::Manifest)?;
        Ok(Self {
            v2: load(manifest, dir, "minifasnet_v2", 80)?,
            v1se: load(manifest, dir, "minifasnet_v1se", 80)?,
            m128: load(manifest, dir, "minifas_128", 128)?,
            config,
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &PassiveConfig {
        &self.config
    }

    /// Total model load time (for `bench`).
    pub fn load_time(&self) -> std::time::Duration {
        self.v2.load_time + self.v1se.load_time + self.m128.load_time
    }

    /// Score one face of `frame` (box in `frame` coordinates, ideally the full-resolution frame).
    pub fn score(&self, frame: &Frame, face: &Face) -> Result<PassiveScores, PassiveError> {
        let b = face.bbox;
        if b.iter().any(|v| !v.is_finite()) || b[2] < 1.0 || b[3] < 1.0 {
            return Err(PassiveError::BadBox(b));
        }
        let c2 = minivision_crop(frame, &b, 2.7, 80);
        let c4 = minivision_crop(frame, &b, 4.0, 80);
        let c128 = square_reflect_crop(frame, &b, 1.5, 128);
        let v2_logits: [f32; 3] = run(&self.v2, nchw(&c2, true, 1.0))?;
        let v1se_logits: [f32; 3] = run(&self.v1se, nchw(&c4, true, 1.0))?;
        let m128_logits: [f32; 2] = run(&self.m128, nchw(&c128, false, 1.0 / 255.0))?;
        let v2_live = softmax(&v2_logits)[1];
        let v1se_live = softmax(&v1se_logits)[1];
        let m128_live = softmax(&m128_logits)[0];
        let c = &self.config;
        let fused = c.weight_v2 * v2_live + c.weight_v1se * v1se_live + c.weight_128 * m128_live;
        Ok(PassiveScores {
            v2_logits,
            v1se_logits,
            m128_logits,
            v2_live,
            v1se_live,
            m128_live,
            fused,
        })
    }

    /// Whether scores pass the configured threshold.
    pub fn passes(&self, s: &PassiveScores) -> bool {
        s.fused >= self.config.threshold
    }
}

fn run<const N: usize>(m: &LoadedModel, input: Tensor) -> Result<[f32; N], PassiveError> {
    let err = |why: String| PassiveError::Inference {
        model: m.entry.id.clone(),
        why,
    };
    let out = m
        .run(tvec!(input.into()))
        .map_err(|e| err(format!("{e:#}")))?;
    let first = out.first().ok_or_else(|| err("no output".into()))?;
    let s = models::f32_output(first).map_err(err)?;
    s.try_into()
        .map_err(|_| err(format!("{} outputs, expected {N}", s.len())))
}

/// NCHW f32 tensor of a packed frame, BGR or RGB order, times `scale`.
fn nchw(f: &Frame, bgr: bool, scale: f32) -> Tensor {
    let (w, h) = (f.width() as usize, f.height() as usize);
    let plane = w * h;
    let mut data = vec![0f32; 3 * plane];
    for y in 0..h {
        let row = f.row(y as u32);
        for x in 0..w {
            for c in 0..3 {
                let src = if bgr { 2 - c } else { c };
                data[c * plane + y * w + x] = row[3 * x + src] as f32 * scale;
            }
        }
    }
    Tensor::from_shape(&[1, 3, h, w], &data).expect("tensor shape matches buffer")
}

/// minivision's `CropImage._get_new_box`: the box scaled about its centre (scale reduced so it fits),
/// shifted inside the image; inclusive integer corners `(left, top, right, bottom)`.
///
/// Computed in `f32` on purpose: the reference feeds the detector's float32 box through NumPy, so
/// its arithmetic is single precision, and at the image border the difference decides whether the
/// last row is inside the crop (which moves the logits by up to 0.4).
pub fn minivision_box(src_w: u32, src_h: u32, b: &[f32; 4], scale: f32) -> (i64, i64, i64, i64) {
    let (x, y, bw, bh) = (b[0], b[1], b[2], b[3]);
    let (sw, sh) = (src_w as f32, src_h as f32);
    let scale = ((sh - 1.0) / bh).min((sw - 1.0) / bw).min(scale);
    let (nw, nh) = (bw * scale, bh * scale);
    let (cx, cy) = (bw / 2.0 + x, bh / 2.0 + y);
    let (mut l, mut t, mut r, mut btm) =
        (cx - nw / 2.0, cy - nh / 2.0, cx + nw / 2.0, cy + nh / 2.0);
    if l < 0.0 {
        r -= l;
        l = 0.0;
    }
    if t < 0.0 {
        btm -= t;
        t = 0.0;
    }
    if r > sw - 1.0 {
        l -= r - sw + 1.0;
        r = sw - 1.0;
    }
    if btm > sh - 1.0 {
        t -= btm - sh + 1.0;
        btm = sh - 1.0;
    }
    // Python's int() truncates toward zero.
    (
        l.trunc() as i64,
        t.trunc() as i64,
        r.trunc() as i64,
        btm.trunc() as i64,
    )
}

/// Copy the inclusive rectangle, clamped to the frame, into a packed frame.
fn sub_frame(f: &Frame, l: i64, t: i64, r: i64, b: i64) -> Frame {
    let l = l.clamp(0, f.width() as i64 - 1) as u32;
    let t = t.clamp(0, f.height() as i64 - 1) as u32;
    let r = r.clamp(l as i64, f.width() as i64 - 1) as u32;
    let b = b.clamp(t as i64, f.height() as i64 - 1) as u32;
    let (w, h) = (r - l + 1, b - t + 1);
    let mut out = Vec::with_capacity(3 * (w * h) as usize);
    for y in t..=b {
        out.extend_from_slice(&f.row(y)[3 * l as usize..3 * (r + 1) as usize]);
    }
    Frame::from_rgb8(w, h, out).expect("sub-frame geometry is valid")
}

/// The MiniFASNet crop: [`minivision_box`], then resize to `out`×`out` (OpenCV INTER_LINEAR).
pub fn minivision_crop(f: &Frame, b: &[f32; 4], scale: f32, out: u32) -> Frame {
    let (l, t, r, btm) = minivision_box(f.width(), f.height(), b, scale);
    sub_frame(f, l, t, r, btm)
        .resize_linear(out, out)
        .expect("crop size is valid")
}

/// OpenCV `BORDER_REFLECT_101` index mapping (…, 2, 1 | 0, 1, 2, …, n-1 | n-2, …).
fn reflect101(i: i64, n: i64) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let m = i.rem_euclid(period);
    (if m < n { m } else { period - m }) as usize
}

/// The minifas_128 crop: a square of side `int(k·max(w,h))` at `int(centre - k·max(w,h)/2)`,
/// reflect-101 padded where it leaves the frame, resized to `out`×`out`.
pub fn square_reflect_crop(f: &Frame, b: &[f32; 4], k: f64, out: u32) -> Frame {
    let (x, y, w, h) = (b[0] as f64, b[1] as f64, b[2] as f64, b[3] as f64);
    let side =
        ((k * w.max(h)).trunc() as i64).clamp(1, 4 * facegate_hal::frame::MAX_DIMENSION as i64);
    // The offset uses the unrounded side, as the reference does: int(cx - k·max/2).
    let half = k * w.max(h) / 2.0;
    let x0 = (x + w / 2.0 - half).trunc() as i64;
    let y0 = (y + h / 2.0 - half).trunc() as i64;
    let (fw, fh) = (f.width() as i64, f.height() as i64);
    // Columns inside the frame are one contiguous copy per row; only the reflected margins go
    // pixel by pixel (same bytes as mapping every column through reflect101).
    let (lo, hi) = (x0.clamp(0, fw), (x0 + side).clamp(0, fw));
    let mut data = Vec::with_capacity((3 * side * side) as usize);
    for yy in y0..y0 + side {
        let row = f.row(reflect101(yy, fh) as u32);
        let px = |data: &mut Vec<u8>, i: i64| {
            let c = reflect101(i, fw);
            data.extend_from_slice(&row[3 * c..3 * c + 3]);
        };
        if lo < hi {
            (x0..lo).for_each(|i| px(&mut data, i));
            data.extend_from_slice(&row[3 * lo as usize..3 * hi as usize]);
            (hi..x0 + side).for_each(|i| px(&mut data, i));
        } else {
            (x0..x0 + side).for_each(|i| px(&mut data, i));
        }
    }
    let sq = Frame::from_rgb8(side as u32, side as u32, data).expect("square crop geometry");
    sq.resize_linear(out, out).expect("crop size is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect101_matches_opencv() {
        let n = 4;
        let got: Vec<usize> = (-5..9).map(|i| reflect101(i, n)).collect();
        // OpenCV: gfedcb|abcdefgh|gfedcba pattern for n=4: indices
        assert_eq!(got, vec![1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2]);
        assert_eq!(reflect101(-3, 1), 0);
    }

    /// The square crop before it copied in-frame runs at once: every column through reflect101.
    fn square_reflect_crop_per_pixel(f: &Frame, b: &[f32; 4], k: f64, out: u32) -> Frame {
        let (x, y, w, h) = (b[0] as f64, b[1] as f64, b[2] as f64, b[3] as f64);
        let side = (k * w.max(h)).trunc() as i64;
        let half = k * w.max(h) / 2.0;
        let x0 = (x + w / 2.0 - half).trunc() as i64;
        let y0 = (y + h / 2.0 - half).trunc() as i64;
        let (fw, fh) = (f.width() as i64, f.height() as i64);
        let mut data = Vec::new();
        for yy in y0..y0 + side {
            let row = f.row(reflect101(yy, fh) as u32);
            for i in x0..x0 + side {
                let c = reflect101(i, fw);
                data.extend_from_slice(&row[3 * c..3 * c + 3]);
            }
        }
        Frame::from_rgb8(side as u32, side as u32, data)
            .unwrap()
            .resize_linear(out, out)
            .unwrap()
    }

    #[test]
    fn square_reflect_crop_matches_per_pixel_reference() {
        let (w, h) = (97u32, 61u32);
        let px: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
        let f = Frame::from_rgb8(w, h, px).unwrap();
        // Inside, over each border, larger than the frame, and entirely outside it.
        for b in [
            [30.0, 20.0, 20.0, 18.0],
            [-10.0, -5.0, 30.0, 25.0],
            [80.0, 50.0, 30.0, 25.0],
            [-20.0, -20.0, 140.0, 100.0],
            [150.0, 10.0, 10.0, 10.0],
        ] {
            assert_eq!(
                square_reflect_crop(&f, &b, 1.5, 32).data(),
                square_reflect_crop_per_pixel(&f, &b, 1.5, 32).data(),
                "box {b:?}"
            );
        }
    }

    #[test]
    fn minivision_box_shrinks_and_shifts_inside() {
        // Box near the left edge: shifted right, size kept.
        let (l, t, r, b) = minivision_box(640, 480, &[10.0, 100.0, 100.0, 100.0], 2.7);
        assert_eq!((l, t), (0, 15));
        assert_eq!(r - l, 270);
        assert_eq!(b - t, 270);
        // Box too big for the scale: scale reduced to fit the height.
        let (_, t, _, b) = minivision_box(640, 480, &[200.0, 100.0, 200.0, 200.0], 4.0);
        assert_eq!((t, b), (0, 479));
    }

    #[test]
    fn softmax_sums_to_one() {
        let s = softmax(&[1.0f32, 2.0, 3.0]);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(s[2] > s[1] && s[1] > s[0]);
    }

    #[test]
    fn config_validation() {
        assert!(PassiveConfig::default().validate().is_ok());
        let c = PassiveConfig {
            weight_v2: 0.9,
            ..Default::default()
        };
        assert!(c.validate().is_err());
        let c = PassiveConfig {
            threshold: 0.0,
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }
}
