//! Depth liveness check: the face must have the 3D relief and the metric size of a human face.
//!
//! Input: a depth map (millimetres along the optical axis, 0 = no measurement), the depth
//! sensor's intrinsics, and the face box mapped into depth pixels. Steps:
//!
//! 1. **Coverage.** The central 80 % of the box must hold at least `min_valid_fraction` valid
//!    pixels, and their median distance must lie in the operating range
//!    `[min_distance_mm, max_distance_mm]`.
//! 2. **Cells.** The region is divided into a 12×12 grid; each cell's value is the mean of its
//!    valid pixels (cells with < 25 % valid pixels are dropped), and cells further than
//!    `gate_mm` from the median are dropped (background seen past the cheeks, hair, a hand in
//!    front). Averaging ~10–40 pixels per cell divides sensor noise by 3–6 while a nose (≈ 20 mm
//!    wide) still spans 2–3 cells. At least 40 cells must remain.
//! 3. **Plane fit** (least squares over all cells, z = aX + bY + c in metric X, Y). `relief_mm` is
//!    the 95th percentile of how far the *central* cells (columns 3–8, rows 3–9 of 12: eyes, nose,
//!    inner cheeks) stand out toward the camera from that plane; only the centre counts, so fingers
//!    holding a print by its edge or a raised collar cannot fake relief. A face (nose,
//!    cheeks and forehead bulging out of the plane through its rim) gives tens of mm; a flat
//!    photo or screen gives sensor noise.
//! 4. **Quadric fit** (least squares, z = full second-order polynomial in X, Y). A print bent
//!    around an axis is a smooth sheet that a quadric fits to within a millimetre or two, while a
//!    face keeps a local bump (the nose) that no quadric absorbs. `local_relief_mm` is the
//!    third-largest protrusion of a central cell toward the camera beyond the quadric (third, so one or two bad
//!    cells cannot fake it).
//! 5. **Metric width.** Box width in depth pixels × median distance / fx must be human
//!    (`[min_face_width_mm, max_face_width_mm]`, default 120–220 mm): a small photo held close
//!    is too narrow, a poster far away too wide.
//!
//! The limits come from facial anthropometry (nose tip 15–30 mm in front of the cheek/eye
//! plane; face breadth ≈ 130–160 mm, detector boxes a little wider), not from tuning. What it
//! cannot do: a rigid 3D mask or a life-size head sculpture has the relief and the size of a
//! face and passes; the IR and passive checks (and an attended enrolment) must carry those.

use facegate_hal::{DepthMap, Intrinsics, PixelBox};
use serde::{Deserialize, Serialize};

use super::CheckStatus;
use super::verdict::{Bound, CheckResult, margin_score};

const GRID: usize = 12;
/// Grid columns/rows where the nose, cheeks and eyes lie: relief is measured there only (the
/// fits use every cell), so fingers at the edge of a held print or a collar cannot fake it.
const CENTRAL_X: std::ops::Range<usize> = 3..9;
const CENTRAL_Y: std::ops::Range<usize> = 3..10;

/// Limits of the depth check (`[liveness.depth]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DepthConfig {
    /// Minimum fraction of valid depth pixels in the face region.
    pub min_valid_fraction: f32,
    /// Nearest accepted face distance, mm.
    pub min_distance_mm: f32,
    /// Farthest accepted face distance, mm.
    pub max_distance_mm: f32,
    /// Cells further than this from the median face distance are ignored, mm.
    pub gate_mm: f32,
    /// Minimum protrusion toward the camera from the best-fit plane (95th percentile), mm.
    pub min_relief_mm: f32,
    /// Minimum protrusion beyond the best-fit quadric (third-largest cell), mm.
    pub min_local_relief_mm: f32,
    /// Narrowest accepted metric face width, mm.
    pub min_face_width_mm: f32,
    /// Widest accepted metric face width, mm.
    pub max_face_width_mm: f32,
}

impl Default for DepthConfig {
    fn default() -> Self {
        Self {
            min_valid_fraction: 0.5,
            min_distance_mm: 200.0,
            max_distance_mm: 1500.0,
            gate_mm: 150.0,
            min_relief_mm: 10.0,
            min_local_relief_mm: 5.0,
            min_face_width_mm: 120.0,
            max_face_width_mm: 220.0,
        }
    }
}

impl DepthConfig {
    /// Refuse values that would weaken or disable the check.
    pub fn validate(&self) -> Result<(), String> {
        let f = self.min_valid_fraction;
        if !(f.is_finite() && f > 0.0 && f <= 1.0) {
            return Err(format!(
                "liveness.depth.min_valid_fraction = {f} must be in (0, 1]"
            ));
        }
        let pos = [
            ("min_distance_mm", self.min_distance_mm),
            ("max_distance_mm", self.max_distance_mm),
            ("gate_mm", self.gate_mm),
            ("min_relief_mm", self.min_relief_mm),
            ("min_local_relief_mm", self.min_local_relief_mm),
            ("min_face_width_mm", self.min_face_width_mm),
            ("max_face_width_mm", self.max_face_width_mm),
        ];
        for (name, v) in pos {
            if !(v.is_finite() && v > 0.0 && v < 10_000.0) {
                return Err(format!(
                    "liveness.depth.{name} = {v} must be positive and below 10000"
                ));
            }
        }
        if self.max_distance_mm <= self.min_distance_mm {
            return Err("liveness.depth.max_distance_mm must exceed min_distance_mm".into());
        }
        if self.max_face_width_mm <= self.min_face_width_mm {
            return Err("liveness.depth.max_face_width_mm must exceed min_face_width_mm".into());
        }
        Ok(())
    }
}

/// What the depth check measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DepthMeasurements {
    /// Valid pixels / pixels in the central region.
    pub valid_fraction: f64,
    /// Median distance of the face region, mm (0 when no pixel is valid).
    pub median_mm: f64,
    /// Grid cells used for the fits.
    pub cells: usize,
    /// 95th-percentile protrusion from the plane, mm.
    pub relief_mm: f64,
    /// RMS residual of the plane fit, mm.
    pub plane_rms_mm: f64,
    /// Third-largest protrusion beyond the quadric, mm.
    pub local_relief_mm: f64,
    /// Metric width of the face box, mm.
    pub face_width_mm: f64,
}

/// The depth check's result and its measurements.
#[derive(Debug, Clone, PartialEq)]
pub struct DepthOutcome {
    /// The check result (name `depth`).
    pub result: CheckResult,
    /// What was measured, when anything could be.
    pub measurements: Option<DepthMeasurements>,
}

/// Median of the valid depths in the central `frac` of `face` (None if none is valid).
pub fn median_depth(map: &DepthMap, face: PixelBox, frac: f32) -> Option<f64> {
    let (x0, y0, x1, y1) = super::ir::inner_region(face, frac, map.width(), map.height())?;
    let mut v: Vec<u16> = (y0..y1)
        .flat_map(|y| map.row(y)[x0 as usize..x1 as usize].iter().copied())
        .filter(|&z| z != 0)
        .collect();
    if v.is_empty() {
        return None;
    }
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable(mid);
    Some(*m as f64)
}

/// Solve the `n`×`n` system `a x = b` by Gaussian elimination with partial pivoting; `None`
/// when singular (too few or collinear cells).
fn solve<const N: usize>(mut a: [[f64; N]; N], mut b: [f64; N]) -> Option<[f64; N]> {
    for col in 0..N {
        let piv = (col..N).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[piv][col].abs() < 1e-9 {
            return None;
        }
        a.swap(col, piv);
        b.swap(col, piv);
        let pivot = a[col];
        for row in col + 1..N {
            let f = a[row][col] / pivot[col];
            for (x, p) in a[row][col..].iter_mut().zip(&pivot[col..]) {
                *x -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0; N];
    for i in (0..N).rev() {
        let s: f64 = (i + 1..N).map(|k| a[i][k] * x[k]).sum();
        x[i] = (b[i] - s) / a[i][i];
    }
    Some(x)
}

/// Least-squares fit of `z ≈ Σ c_i f_i(x, y)`; returns residuals `z - fit` per point.
fn fit_residuals<const N: usize>(
    pts: &[[f64; 3]],
    basis: impl Fn(f64, f64) -> [f64; N],
) -> Option<Vec<f64>> {
    let mut ata = [[0.0; N]; N];
    let mut atb = [0.0; N];
    for p in pts {
        let f = basis(p[0], p[1]);
        for i in 0..N {
            for j in 0..N {
                ata[i][j] += f[i] * f[j];
            }
            atb[i] += f[i] * p[2];
        }
    }
    let c = solve(ata, atb)?;
    Some(
        pts.iter()
            .map(|p| {
                let f = basis(p[0], p[1]);
                p[2] - (0..N).map(|i| c[i] * f[i]).sum::<f64>()
            })
            .collect(),
    )
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let idx = ((v.len() - 1) as f64 * p).round() as usize;
    v[idx.min(v.len() - 1)]
}

fn measure(
    cfg: &DepthConfig,
    map: &DepthMap,
    k: &Intrinsics,
    face: PixelBox,
) -> Result<DepthMeasurements, String> {
    let (x0, y0, x1, y1) = super::ir::inner_region(face, 0.8, map.width(), map.height())
        .ok_or("the face box maps outside the depth image")?;
    let total = ((x1 - x0) * (y1 - y0)) as f64;
    let valid = (y0..y1)
        .map(|y| {
            map.row(y)[x0 as usize..x1 as usize]
                .iter()
                .filter(|&&z| z != 0)
                .count()
        })
        .sum::<usize>() as f64;
    let median = median_depth(map, face, 0.8).unwrap_or(0.0);
    let face_width_mm = face.width() as f64 * median / k.fx;
    let mut m = DepthMeasurements {
        valid_fraction: valid / total,
        median_mm: median,
        cells: 0,
        relief_mm: 0.0,
        plane_rms_mm: 0.0,
        local_relief_mm: 0.0,
        face_width_mm,
    };
    if median == 0.0 {
        return Ok(m);
    }
    let (gw, gh) = (
        (x1 - x0) as f64 / GRID as f64,
        (y1 - y0) as f64 / GRID as f64,
    );
    let mut pts = Vec::with_capacity(GRID * GRID);
    let mut central = Vec::with_capacity(GRID * GRID);
    for gy in 0..GRID {
        for gx in 0..GRID {
            let cx0 = x0 + (gx as f64 * gw) as u32;
            let cx1 = (x0 + ((gx + 1) as f64 * gw) as u32).min(x1).max(cx0 + 1);
            let cy0 = y0 + (gy as f64 * gh) as u32;
            let cy1 = (y0 + ((gy + 1) as f64 * gh) as u32).min(y1).max(cy0 + 1);
            let (mut n, mut s, mut all) = (0u32, 0.0f64, 0u32);
            for y in cy0..cy1.min(map.height()) {
                for &z in &map.row(y)[cx0 as usize..(cx1 as usize).min(map.width() as usize)] {
                    all += 1;
                    if z != 0 && (z as f64 - median).abs() <= cfg.gate_mm as f64 {
                        n += 1;
                        s += z as f64;
                    }
                }
            }
            if all == 0 || (n as f64) < 0.25 * all as f64 {
                continue;
            }
            let z = s / n as f64;
            let u = (cx0 + cx1) as f64 / 2.0;
            let v = (cy0 + cy1) as f64 / 2.0;
            let p = k.unproject(u, v, z);
            // Metric coordinates in decimetres keep the quadric's normal equations well scaled.
            pts.push([p[0] / 100.0, p[1] / 100.0, z]);
            central.push(CENTRAL_X.contains(&gx) && CENTRAL_Y.contains(&gy));
        }
    }
    m.cells = pts.len();
    if pts.len() < 40 {
        return Ok(m);
    }
    if let Some(r) = fit_residuals(&pts, |x, y| [x, y, 1.0]) {
        m.plane_rms_mm = (r.iter().map(|e| e * e).sum::<f64>() / r.len() as f64).sqrt();
        // Toward the camera = smaller z = negative residual; measured over the central cells.
        let prot = r.iter().zip(&central).filter(|(_, c)| **c).map(|(e, _)| -e);
        m.relief_mm = percentile(prot.collect(), 0.95);
    }
    if let Some(r) = fit_residuals(&pts, |x, y| [x * x, x * y, y * y, x, y, 1.0]) {
        let mut prot: Vec<f64> = r
            .iter()
            .zip(&central)
            .filter(|(_, c)| **c)
            .map(|(e, _)| -e)
            .collect();
        prot.sort_by(|a, b| b.total_cmp(a));
        m.local_relief_mm = prot.get(2).copied().unwrap_or(0.0);
    }
    Ok(m)
}

/// Run the depth check: `face` is the RGB face box mapped into depth pixels, `k` the depth
/// sensor's intrinsics.
pub fn check_depth(
    cfg: &DepthConfig,
    map: &DepthMap,
    k: &Intrinsics,
    face: PixelBox,
) -> DepthOutcome {
    let m = match measure(cfg, map, k, face) {
        Ok(m) => m,
        Err(why) => {
            return DepthOutcome {
                result: CheckResult::not_run("depth", CheckStatus::Fault, why),
                measurements: None,
            };
        }
    };
    let mut fails = Vec::new();
    let mut scores = vec![margin_score(
        m.valid_fraction,
        cfg.min_valid_fraction as f64,
        Bound::AtLeast,
    )];
    if m.valid_fraction < cfg.min_valid_fraction as f64 {
        fails.push(format!(
            "too few valid depth pixels on the face ({:.0}% < {:.0}%)",
            m.valid_fraction * 100.0,
            cfg.min_valid_fraction * 100.0
        ));
    }
    scores.push(margin_score(
        m.median_mm,
        cfg.min_distance_mm as f64,
        Bound::AtLeast,
    ));
    scores.push(margin_score(
        m.median_mm,
        cfg.max_distance_mm as f64,
        Bound::AtMost,
    ));
    if m.median_mm < cfg.min_distance_mm as f64 || m.median_mm > cfg.max_distance_mm as f64 {
        fails.push(format!(
            "face distance {:.0} mm outside [{:.0}, {:.0}]",
            m.median_mm, cfg.min_distance_mm, cfg.max_distance_mm
        ));
    }
    if m.cells < 40 {
        scores.push(0.0);
        fails.push(format!(
            "only {} usable depth cells on the face (need 40)",
            m.cells
        ));
    } else {
        scores.push(margin_score(
            m.relief_mm,
            cfg.min_relief_mm as f64,
            Bound::AtLeast,
        ));
        scores.push(margin_score(
            m.local_relief_mm,
            cfg.min_local_relief_mm as f64,
            Bound::AtLeast,
        ));
        if m.relief_mm < cfg.min_relief_mm as f64 {
            fails.push(format!(
                "flat: relief {:.1} mm < {:.1} mm (photo or screen)",
                m.relief_mm, cfg.min_relief_mm
            ));
        }
        if m.local_relief_mm < cfg.min_local_relief_mm as f64 {
            fails.push(format!(
                "smooth sheet: no nose-like relief beyond a curved surface ({:.1} mm < {:.1} mm; bent print?)",
                m.local_relief_mm, cfg.min_local_relief_mm
            ));
        }
    }
    scores.push(margin_score(
        m.face_width_mm,
        cfg.min_face_width_mm as f64,
        Bound::AtLeast,
    ));
    scores.push(margin_score(
        m.face_width_mm,
        cfg.max_face_width_mm as f64,
        Bound::AtMost,
    ));
    if m.face_width_mm < cfg.min_face_width_mm as f64 {
        fails.push(format!(
            "face {:.0} mm wide < {:.0} mm: too small for a human face (photo held close?)",
            m.face_width_mm, cfg.min_face_width_mm
        ));
    } else if m.face_width_mm > cfg.max_face_width_mm as f64 {
        fails.push(format!(
            "face {:.0} mm wide > {:.0} mm: too large for a human face (poster?)",
            m.face_width_mm, cfg.max_face_width_mm
        ));
    }
    let score = scores.iter().copied().fold(1.0f32, f32::min);
    let summary = format!(
        "relief {:.1} mm, local relief {:.1} mm, width {:.0} mm at {:.0} mm, {:.0}% valid",
        m.relief_mm,
        m.local_relief_mm,
        m.face_width_mm,
        m.median_mm,
        m.valid_fraction * 100.0
    );
    let pass = fails.is_empty();
    let reason = if pass {
        summary
    } else {
        format!("{}; {summary}", fails.join("; "))
    };
    DepthOutcome {
        result: CheckResult::ran("depth", score, pass, reason),
        measurements: Some(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: Intrinsics = Intrinsics {
        fx: 300.0,
        fy: 300.0,
        cx: 80.0,
        cy: 60.0,
    };

    fn map(f: impl Fn(f64, f64) -> f64) -> DepthMap {
        let (w, h) = (160u32, 120u32);
        let mm = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| f(x as f64, y as f64).round().clamp(0.0, 65535.0) as u16)
            .collect();
        DepthMap::new(w, h, mm).unwrap()
    }

    // A 150 mm box at 500 mm spans 90 px.
    const BOX: PixelBox = PixelBox {
        x0: 35.0,
        y0: 15.0,
        x1: 125.0,
        y1: 105.0,
    };

    #[test]
    fn flat_plane_fails_as_flat() {
        let d = map(|x, _| 500.0 + 0.1 * x);
        let o = check_depth(&DepthConfig::default(), &d, &K, BOX);
        assert!(!o.result.pass);
        assert!(o.result.reason.contains("flat"), "{}", o.result.reason);
        assert!(o.result.score.unwrap() < 0.5);
    }

    #[test]
    fn bump_on_a_dome_passes_and_size_is_checked() {
        let face = |x: f64, y: f64| {
            let (dx, dy) = ((x - 80.0) / 45.0, (y - 60.0) / 45.0);
            let dome = 60.0 * (1.0 - (dx * dx + dy * dy).min(1.0)).sqrt();
            let nose = 20.0 * (-((x - 80.0).powi(2) / 40.0 + (y - 62.0).powi(2) / 200.0)).exp();
            520.0 - dome - nose
        };
        let o = check_depth(&DepthConfig::default(), &map(face), &K, BOX);
        assert!(o.result.pass, "{}", o.result.reason);
        // The same map but every depth pixel invalid: not enough valid pixels.
        let o = check_depth(&DepthConfig::default(), &map(|_, _| 0.0), &K, BOX);
        assert!(!o.result.pass && o.result.reason.contains("valid"));
        // The same relief at 250 mm: the box now covers only ~75 mm.
        let near = map(|x, y| face(x, y) - 280.0);
        let o = check_depth(&DepthConfig::default(), &near, &K, BOX);
        assert!(
            !o.result.pass && o.result.reason.contains("too small"),
            "{}",
            o.result.reason
        );
    }

    #[test]
    fn config_refuses_inverted_limits() {
        let c = DepthConfig {
            max_face_width_mm: 100.0,
            ..Default::default()
        };
        assert!(c.validate().is_err());
        assert!(DepthConfig::default().validate().is_ok());
    }
}
