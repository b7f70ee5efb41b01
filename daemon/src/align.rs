//! Step 3 of the data path: warp a detected face onto the canonical 112×112 crop SFace expects.
//!
//! The recogniser was trained on faces whose five landmarks sit at fixed template positions
//! (the standard ArcFace template). We estimate the least-squares similarity transform (rotation,
//! uniform scale, translation: Umeyama's method, in the closed form it takes in 2-D) from the
//! detected landmarks to that template, exactly as OpenCV's `FaceRecognizerSF::alignCrop` does
//! (same template, same hard-coded template mean), and resample with bilinear interpolation and a
//! black border, like its `warpAffine(INTER_LINEAR, BORDER_CONSTANT)`.

use facegate_hal::Frame;

/// Side of the aligned crop, in pixels.
pub const CROP: usize = 112;

/// Landmark positions in the 112×112 crop: right eye, left eye, nose, right and left mouth corner.
pub const TEMPLATE: [[f64; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// OpenCV hard-codes the template mean (rounded); we use the same numbers to match it exactly.
const TEMPLATE_MEAN: [f64; 2] = [56.0262, 71.9008];

/// Why a face could not be aligned.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AlignError {
    /// Landmarks are non-finite or all on one point: no transform exists.
    #[error("landmarks are degenerate (non-finite or collapsed); cannot align the face")]
    Degenerate,
}

/// A 2×3 similarity matrix mapping frame coordinates to crop coordinates:
/// `[u, v] = [[a, -b, tx], [b, a, ty]] · [x, y, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Similarity {
    /// scale · cos(angle)
    pub a: f64,
    /// scale · sin(angle)
    pub b: f64,
    /// Translation x.
    pub tx: f64,
    /// Translation y.
    pub ty: f64,
}

impl Similarity {
    /// Least-squares similarity from `src` landmarks onto [`TEMPLATE`] (Umeyama, no reflection).
    pub fn estimate(src: &[[f32; 2]; 5]) -> Result<Self, AlignError> {
        if src.iter().flatten().any(|v| !v.is_finite()) {
            return Err(AlignError::Degenerate);
        }
        let n = src.len() as f64;
        let mx = src.iter().map(|p| p[0] as f64).sum::<f64>() / n;
        let my = src.iter().map(|p| p[1] as f64).sum::<f64>() / n;
        // a = tr(A), b = A10 - A01 for the covariance A = dst_demeanᵀ · src_demean / n; in 2-D
        // the optimal proper rotation is atan2(b, a) and the Umeyama scale is |(a, b)| / var(src).
        let (mut a, mut b, mut var) = (0.0, 0.0, 0.0);
        for (p, d) in src.iter().zip(TEMPLATE.iter()) {
            let (xs, ys) = (p[0] as f64 - mx, p[1] as f64 - my);
            let (xd, yd) = (d[0] - TEMPLATE_MEAN[0], d[1] - TEMPLATE_MEAN[1]);
            a += xd * xs + yd * ys;
            b += yd * xs - xd * ys;
            var += xs * xs + ys * ys;
        }
        if var < 1e-9 {
            return Err(AlignError::Degenerate);
        }
        let (a, b) = (a / var, b / var);
        Ok(Self {
            a,
            b,
            tx: TEMPLATE_MEAN[0] - (a * mx - b * my),
            ty: TEMPLATE_MEAN[1] - (b * mx + a * my),
        })
    }

    /// Map a frame point into the crop.
    pub fn apply(&self, x: f64, y: f64) -> (f64, f64) {
        (
            self.a * x - self.b * y + self.tx,
            self.b * x + self.a * y + self.ty,
        )
    }

    /// Map a crop point back into the frame (the warp samples the frame there).
    pub fn invert(&self, u: f64, v: f64) -> (f64, f64) {
        let k = self.a * self.a + self.b * self.b;
        let (du, dv) = (u - self.tx, v - self.ty);
        (
            (self.a * du + self.b * dv) / k,
            (-self.b * du + self.a * dv) / k,
        )
    }

    /// The uniform scale factor (crop pixels per frame pixel).
    pub fn scale(&self) -> f64 {
        (self.a * self.a + self.b * self.b).sqrt()
    }
}

/// Align a face: estimate the similarity from `landmarks` and warp `frame` into a 112×112 crop.
pub fn align(frame: &Frame, landmarks: &[[f32; 2]; 5]) -> Result<Frame, AlignError> {
    let m = Similarity::estimate(landmarks)?;
    Ok(warp(frame, &m))
}

/// Bilinear resampling of `frame` through the inverse of `m`; taps outside the frame read black.
pub fn warp(frame: &Frame, m: &Similarity) -> Frame {
    let (w, h) = (frame.width() as i64, frame.height() as i64);
    let mut out = vec![0u8; CROP * CROP * 3];
    let tap = |x: i64, y: i64| -> [f32; 3] {
        if x < 0 || y < 0 || x >= w || y >= h {
            [0.0; 3]
        } else {
            let p = frame.pixel(x as u32, y as u32);
            [p[0] as f32, p[1] as f32, p[2] as f32]
        }
    };
    for v in 0..CROP {
        for u in 0..CROP {
            let (sx, sy) = m.invert(u as f64, v as f64);
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = ((sx - x0) as f32, (sy - y0) as f32);
            let (x0, y0) = (x0 as i64, y0 as i64);
            let p00 = tap(x0, y0);
            let p10 = tap(x0 + 1, y0);
            let p01 = tap(x0, y0 + 1);
            let p11 = tap(x0 + 1, y0 + 1);
            let o = 3 * (v * CROP + u);
            for c in 0..3 {
                let top = p00[c] + (p10[c] - p00[c]) * fx;
                let bot = p01[c] + (p11[c] - p01[c]) * fx;
                out[o + c] = (top + (bot - top) * fy).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    // 112*112*3 bytes, packed: always a valid frame.
    Frame::from_rgb8(CROP as u32, CROP as u32, out).expect("crop geometry is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_f32(p: &[[f64; 2]; 5]) -> [[f32; 2]; 5] {
        p.map(|q| [q[0] as f32, q[1] as f32])
    }

    #[test]
    fn template_maps_to_itself() {
        let m = Similarity::estimate(&as_f32(&TEMPLATE)).unwrap();
        assert!((m.scale() - 1.0).abs() < 1e-6);
        for t in TEMPLATE {
            let (u, v) = m.apply(t[0], t[1]);
            // Exact up to OpenCV's rounded template mean (< 1e-3 px).
            assert!(
                (u - t[0]).abs() < 2e-3 && (v - t[1]).abs() < 2e-3,
                "{u},{v} vs {t:?}"
            );
        }
    }

    #[test]
    fn recovers_a_known_similarity() {
        // Scale 2, rotate 30°, translate: the landmarks of a face twice the template size.
        let (s, th) = (0.5f64, 30f64.to_radians());
        let truth = Similarity {
            a: s * th.cos(),
            b: s * th.sin(),
            tx: 7.0,
            ty: -3.0,
        };
        let src: [[f32; 2]; 5] = TEMPLATE.map(|t| {
            let (x, y) = truth.invert(t[0], t[1]);
            [x as f32, y as f32]
        });
        let m = Similarity::estimate(&src).unwrap();
        assert!((m.scale() - 0.5).abs() < 1e-4);
        assert!((m.b.atan2(m.a) - th).abs() < 1e-4);
        let (x, y) = m.invert(56.0, 72.0);
        let (u, v) = m.apply(x, y);
        assert!((u - 56.0).abs() < 1e-9 && (v - 72.0).abs() < 1e-9);
    }

    #[test]
    fn degenerate_landmarks_are_refused() {
        assert_eq!(
            Similarity::estimate(&[[5.0, 5.0]; 5]),
            Err(AlignError::Degenerate)
        );
        let mut p = as_f32(&TEMPLATE);
        p[2][0] = f32::NAN;
        assert_eq!(Similarity::estimate(&p), Err(AlignError::Degenerate));
    }

    #[test]
    fn warp_identity_copies_pixels_and_pads_black() {
        let mut data = vec![0u8; 3 * 200 * 200];
        for (i, px) in data.chunks_mut(3).enumerate() {
            px.copy_from_slice(&[(i % 200) as u8, (i / 200) as u8, 7]);
        }
        let f = Frame::from_rgb8(200, 200, data).unwrap();
        let id = Similarity {
            a: 1.0,
            b: 0.0,
            tx: 0.0,
            ty: 0.0,
        };
        let c = warp(&f, &id);
        assert_eq!(c.pixel(10, 20), [10, 20, 7]);
        let shifted = Similarity { tx: 100.0, ..id };
        let c = warp(&f, &shifted);
        assert_eq!(c.pixel(0, 0), [0, 0, 0]); // samples x = -100: outside, black
        assert_eq!(c.pixel(105, 3), [5, 3, 7]);
    }
}
