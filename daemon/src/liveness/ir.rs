//! Near-infrared (NIR) liveness check and the emitter self-test.
//!
//! The NIR camera sees the scene in 850/940 nm light, where presentation attacks behave
//! differently from skin:
//!
//! - **Presence.** A phone or tablet screen emits no NIR (its backlight is filtered to the visible
//!   band) and its glass reflects ~4 % diffusely, so where the RGB detector found a face the NIR
//!   frame shows a dark, flat patch. The face region (the RGB box mapped into the IR image by
//!   the registration, central 60 % of it so hair and background stay out) must have a median
//!   of at least `min_face_mean` of full scale and not be saturated. (Medians throughout, so a
//!   finger or hair strand in the region cannot decide.)
//! - **Contrast.** Skin in NIR shows shading (the face is curved) and features (eyes, brows,
//!   nostrils): coefficient of variation (std / mean) within `[min_contrast, max_contrast]`. A
//!   print with NIR-transparent dye ink looks almost blank and falls below the minimum.
//! - **Emitter differential.** With an illuminator, an on frame and an off frame are compared.
//!   The rise Δ = median over the face of (on − off) comes from the emitter alone (ambient light
//!   cancels). For a Lambertian surface of NIR albedo ρ at distance d from an emitter co-located
//!   with the camera, the irradiance falls as 1/d² (a point source: the LED ring is a few cm
//!   across, faces are ≥ 20 cm away) while the camera's pixel sees radiance independent of
//!   distance, so **Δ(d) = Δ_ref · (ρ/ρ_skin) · (d_ref/d)²**. `skin_rise_at_reference` is Δ_ref,
//!   the median rise of a real face at `reference_distance_mm` (a per-device calibration: LED
//!   power, lens, exposure, gain). The check inverts the model, `ρ_rel = Δ · (d/d_ref)² /
//!   Δ_ref`, and requires it within `[min_relative_albedo, max_relative_albedo]`: a screen gives
//!   ρ_rel ≈ 0.1; a photo held much closer than its apparent size suggests returns far more light
//!   than skin at the distance the face size implies. The distance comes from the depth sensor
//!   when there is one, else from the box size assuming a human face width
//!   (`assumed_face_width_mm`). Fixed exposure and gain are required while the pair is taken:
//!   auto-exposure would undo the inverse-square law.
//! - **Emitter self-test.** The same pair proves the emitter works: the 95th percentile of the
//!   per-pixel rise over the whole frame must reach `self_test_min_rise`. Whenever a face is in
//!   front of the terminal something within ~1 m (the person, the attacker's hand and body) is
//!   lit; a dead LED string leaves only sensor noise. A failed self-test is a hardware
//!   [`Fault`], distinct from "spoof", and is never ignored.
//!
//! What it does not do: it does not re-detect the face in the NIR image (YuNet on NIR would
//! confirm the face shape; not done), and NIR reflectance alone cannot tell skin from a
//! skin-coloured rigid mask or a bright paper print with carbon ink (the depth check and the
//! passive models carry those).

use facegate_hal::{GreyFrame, PixelBox};
use serde::{Deserialize, Serialize};

use super::verdict::{Bound, CheckResult, Fault, FaultSource, margin_score};

/// Limits of the IR check (`[liveness.ir]`). Every value is validated; none is defaulted when
/// invalid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IrConfig {
    /// Whether the NIR camera has a switchable emitter. If true, every IR observation must come
    /// as an on/off pair; a missing off frame is a fault, not a pass.
    pub emitter: bool,
    /// Minimum median of the face region in the lit frame, fraction of full scale.
    pub min_face_mean: f32,
    /// Largest fraction of face-region samples at full scale (saturation hides everything).
    pub max_saturated_fraction: f32,
    /// Minimum coefficient of variation (std/mean) of the face region.
    pub min_contrast: f32,
    /// Maximum coefficient of variation of the face region.
    pub max_contrast: f32,
    /// Distance at which `skin_rise_at_reference` was calibrated, mm.
    pub reference_distance_mm: f32,
    /// Median on−off rise of a real face at the reference distance, fraction of full scale
    /// (device calibration).
    pub skin_rise_at_reference: f32,
    /// Lowest accepted distance-corrected rise relative to skin.
    pub min_relative_albedo: f32,
    /// Highest accepted distance-corrected rise relative to skin.
    pub max_relative_albedo: f32,
    /// Face width assumed to estimate distance from the box when no depth is available, mm.
    pub assumed_face_width_mm: f32,
    /// Emitter self-test: minimum 95th-percentile on−off rise over the whole frame.
    pub self_test_min_rise: f32,
}

impl Default for IrConfig {
    fn default() -> Self {
        Self {
            emitter: true,
            min_face_mean: 0.06,
            max_saturated_fraction: 0.2,
            min_contrast: 0.05,
            max_contrast: 0.8,
            reference_distance_mm: 500.0,
            skin_rise_at_reference: 0.30,
            min_relative_albedo: 0.5,
            max_relative_albedo: 1.8,
            assumed_face_width_mm: 150.0,
            self_test_min_rise: 0.03,
        }
    }
}

impl IrConfig {
    /// Refuse values that would weaken or disable the check.
    pub fn validate(&self) -> Result<(), String> {
        let unit = |name: &str, v: f32| {
            if v.is_finite() && v > 0.0 && v < 1.0 {
                Ok(())
            } else {
                Err(format!("liveness.ir.{name} = {v} must be in (0, 1)"))
            }
        };
        unit("min_face_mean", self.min_face_mean)?;
        unit("max_saturated_fraction", self.max_saturated_fraction)?;
        unit("min_contrast", self.min_contrast)?;
        unit("skin_rise_at_reference", self.skin_rise_at_reference)?;
        unit("self_test_min_rise", self.self_test_min_rise)?;
        if !(self.max_contrast.is_finite() && self.max_contrast > self.min_contrast) {
            return Err("liveness.ir.max_contrast must exceed min_contrast".into());
        }
        if !(self.min_relative_albedo.is_finite()
            && self.min_relative_albedo > 0.0
            && self.max_relative_albedo.is_finite()
            && self.max_relative_albedo > self.min_relative_albedo)
        {
            return Err(
                "liveness.ir relative albedo window must satisfy 0 < min_relative_albedo < max_relative_albedo"
                    .into(),
            );
        }
        for (name, v) in [
            ("reference_distance_mm", self.reference_distance_mm),
            ("assumed_face_width_mm", self.assumed_face_width_mm),
        ] {
            if !(v.is_finite() && (10.0..=5000.0).contains(&v)) {
                return Err(format!("liveness.ir.{name} = {v} must be in [10, 5000]"));
            }
        }
        Ok(())
    }
}

/// One NIR observation of a face: the lit frame, the unlit frame if the emitter was switched
/// off for a pair, where the face is in the IR image, and how far away it is if measured.
#[derive(Debug, Clone, Copy)]
pub struct IrObservation<'a> {
    /// Frame with the emitter on (or the only frame, without an emitter).
    pub lit: &'a GreyFrame,
    /// Frame with the emitter off, same exposure and gain, taken right before or after `lit`.
    pub unlit: Option<&'a GreyFrame>,
    /// The face box mapped into IR pixels.
    pub face: PixelBox,
    /// Measured face distance (depth sensor), mm.
    pub measured_distance_mm: Option<f64>,
    /// Distance implied by the face box size under `assumed_face_width_mm`, mm.
    pub size_implied_distance_mm: Option<f64>,
}

/// Face-region statistics of the IR check (also what `facegate liveness` prints).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct IrMeasurements {
    /// Median of the face region, lit frame, fraction of full scale.
    pub face_mean: f64,
    /// Coefficient of variation of the face region.
    pub contrast: f64,
    /// Fraction of face samples at full scale.
    pub saturated: f64,
    /// Median on−off rise over the face region, if a pair was given.
    pub rise: Option<f64>,
    /// Distance used for the inverse-square correction, mm.
    pub distance_mm: Option<f64>,
    /// Distance-corrected rise relative to calibrated skin.
    pub relative_albedo: Option<f64>,
    /// 95th percentile of the whole-frame rise (emitter self-test), if a pair was given.
    pub frame_rise_p95: Option<f64>,
}

/// The IR check's result, its measurements, and a hardware fault if one was found.
#[derive(Debug, Clone, PartialEq)]
pub struct IrOutcome {
    /// The check result (name `ir`).
    pub result: CheckResult,
    /// What was measured (absent when the frames were unusable).
    pub measurements: Option<IrMeasurements>,
    /// A fault (dead emitter, frame size mismatch, missing off frame).
    pub fault: Option<Fault>,
}

fn fault(source: FaultSource, detail: String) -> IrOutcome {
    IrOutcome {
        result: CheckResult::not_run("ir", super::CheckStatus::Fault, detail.clone()),
        measurements: None,
        fault: Some(Fault::new(source, detail)),
    }
}

/// Integer pixel range covered by a box shrunk about its centre to `frac`, clamped to the frame.
pub(crate) fn inner_region(b: PixelBox, frac: f32, w: u32, h: u32) -> Option<(u32, u32, u32, u32)> {
    if ![b.x0, b.y0, b.x1, b.y1].iter().all(|v| v.is_finite()) {
        return None;
    }
    let (cx, cy) = ((b.x0 + b.x1) / 2.0, (b.y0 + b.y1) / 2.0);
    let (hw, hh) = (b.width() * frac / 2.0, b.height() * frac / 2.0);
    let x0 = (cx - hw).floor().clamp(0.0, w as f32) as u32;
    let x1 = (cx + hw).ceil().clamp(0.0, w as f32) as u32;
    let y0 = (cy - hh).floor().clamp(0.0, h as f32) as u32;
    let y1 = (cy + hh).ceil().clamp(0.0, h as f32) as u32;
    (x1 > x0 && y1 > y0).then_some((x0, y0, x1, y1))
}

/// The emitter self-test on an on/off pair: `Ok(p95 rise)` when the emitter demonstrably lights
/// the scene, `Err(fault)` when it does not (dead LEDs, broken driver, disconnected ring) or the
/// frames cannot be compared.
pub fn emitter_self_test(cfg: &IrConfig, lit: &GreyFrame, unlit: &GreyFrame) -> Result<f64, Fault> {
    if (lit.width(), lit.height(), lit.bit_depth())
        != (unlit.width(), unlit.height(), unlit.bit_depth())
    {
        return Err(Fault::new(
            FaultSource::IrCamera,
            format!(
                "emitter on/off frames differ in format ({}x{}@{}bit vs {}x{}@{}bit)",
                lit.width(),
                lit.height(),
                lit.bit_depth(),
                unlit.width(),
                unlit.height(),
                unlit.bit_depth()
            ),
        ));
    }
    let full = lit.max_value() as f64;
    // Histogram of positive rises in 1/1024 steps of full scale: exact enough, O(n).
    let mut hist = [0u32; 1025];
    for (&a, &b) in lit.samples().iter().zip(unlit.samples()) {
        let d = (a as f64 - b as f64) / full;
        let bin = (d.max(0.0) * 1024.0).round() as usize;
        hist[bin.min(1024)] += 1;
    }
    let n = lit.samples().len() as u64;
    let target = (n as f64 * 0.95).ceil() as u64;
    let mut acc = 0u64;
    let mut p95 = 1.0;
    for (i, &c) in hist.iter().enumerate() {
        acc += c as u64;
        if acc >= target {
            p95 = i as f64 / 1024.0;
            break;
        }
    }
    if p95 >= cfg.self_test_min_rise as f64 {
        Ok(p95)
    } else {
        Err(Fault::new(
            FaultSource::IrEmitter,
            format!(
                "emitter self-test failed: 95th-percentile on/off rise {p95:.3} < {:.3} of full scale; the emitter is not lighting the scene (hardware fault)",
                cfg.self_test_min_rise
            ),
        ))
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mid = v.len() / 2;
    *v.select_nth_unstable_by(mid, f64::total_cmp).1
}

/// Run the IR check on one observation.
pub fn check_ir(cfg: &IrConfig, obs: &IrObservation<'_>) -> IrOutcome {
    let lit = obs.lit;
    let Some((x0, y0, x1, y1)) = inner_region(obs.face, 0.6, lit.width(), lit.height()) else {
        return fault(
            FaultSource::Registration,
            "the face box maps outside the IR image".into(),
        );
    };
    // Self-test first: a dead emitter makes the differential meaningless.
    let mut frame_rise_p95 = None;
    match (cfg.emitter, obs.unlit) {
        (true, None) => {
            return fault(
                FaultSource::IrEmitter,
                "an emitter is configured but no emitter-off frame was supplied: the emitter and the on/off differential cannot be verified".into(),
            );
        }
        (_, Some(unlit)) => match emitter_self_test(cfg, lit, unlit) {
            Ok(p) => frame_rise_p95 = Some(p),
            Err(f) => {
                return IrOutcome {
                    result: CheckResult::not_run("ir", super::CheckStatus::Fault, f.detail.clone()),
                    measurements: None,
                    fault: Some(f),
                };
            }
        },
        (false, None) => {}
    }
    let full = lit.max_value() as f64;
    let (mut n, mut sum, mut sum2, mut sat) = (0u64, 0.0f64, 0.0f64, 0u64);
    let mut values = Vec::with_capacity(((x1 - x0) * (y1 - y0)) as usize);
    let mut rises = Vec::with_capacity(if obs.unlit.is_some() {
        values.capacity()
    } else {
        0
    });
    for y in y0..y1 {
        let row = &lit.row(y)[x0 as usize..x1 as usize];
        let off = obs.unlit.map(|u| &u.row(y)[x0 as usize..x1 as usize]);
        for (i, &s) in row.iter().enumerate() {
            let v = s as f64 / full;
            n += 1;
            sum += v;
            sum2 += v * v;
            values.push(v);
            if s >= lit.max_value() {
                sat += 1;
            }
            if let Some(off) = off {
                rises.push(v - off[i] as f64 / full);
            }
        }
    }
    let nf = n as f64;
    let avg = sum / nf;
    let std = (sum2 / nf - avg * avg).max(0.0).sqrt();
    let contrast = if avg > 0.0 { std / avg } else { 0.0 };
    // Medians: a finger or a strand of hair in the region must not decide presence or rise.
    let mean = median(&mut values);
    let saturated = sat as f64 / nf;
    let rise = obs.unlit.map(|_| median(&mut rises));
    let distance_mm = obs
        .measured_distance_mm
        .or(obs.size_implied_distance_mm)
        .filter(|d| d.is_finite() && *d > 0.0);
    let relative_albedo = match (rise, distance_mm) {
        (Some(r), Some(d)) => {
            let k = d / cfg.reference_distance_mm as f64;
            Some(r * k * k / cfg.skin_rise_at_reference as f64)
        }
        _ => None,
    };

    let mut scores = vec![
        margin_score(mean, cfg.min_face_mean as f64, Bound::AtLeast),
        margin_score(saturated, cfg.max_saturated_fraction as f64, Bound::AtMost),
        margin_score(contrast, cfg.min_contrast as f64, Bound::AtLeast),
        margin_score(contrast, cfg.max_contrast as f64, Bound::AtMost),
    ];
    let mut fails = Vec::new();
    if mean < cfg.min_face_mean as f64 {
        fails.push(format!(
            "face region dark in NIR (median {mean:.3} < {:.3}: no skin where the face should be, e.g. a screen)",
            cfg.min_face_mean
        ));
    }
    if saturated > cfg.max_saturated_fraction as f64 {
        fails.push(format!(
            "face region saturated ({:.0}% > {:.0}%)",
            saturated * 100.0,
            cfg.max_saturated_fraction * 100.0
        ));
    }
    if contrast < cfg.min_contrast as f64 {
        fails.push(format!(
            "face region flat in NIR (contrast {contrast:.3} < {:.3})",
            cfg.min_contrast
        ));
    } else if contrast > cfg.max_contrast as f64 {
        fails.push(format!(
            "face region contrast {contrast:.3} > {:.3}",
            cfg.max_contrast
        ));
    }
    match (rise, relative_albedo) {
        (Some(_), Some(a)) => {
            scores.push(margin_score(
                a,
                cfg.min_relative_albedo as f64,
                Bound::AtLeast,
            ));
            scores.push(margin_score(
                a,
                cfg.max_relative_albedo as f64,
                Bound::AtMost,
            ));
            if a < cfg.min_relative_albedo as f64 {
                fails.push(format!(
                    "emitter rise too weak for a face at this distance (relative albedo {a:.2} < {:.2}: screen or NIR-absorbing surface)",
                    cfg.min_relative_albedo
                ));
            } else if a > cfg.max_relative_albedo as f64 {
                fails.push(format!(
                    "emitter rise too strong for skin at this distance (relative albedo {a:.2} > {:.2}: closer than the face size implies, or not skin)",
                    cfg.max_relative_albedo
                ));
            }
        }
        (Some(_), None) => {
            scores.push(0.0);
            fails.push("no distance for the emitter differential".into());
        }
        _ => {}
    }
    let score = scores.iter().copied().fold(1.0f32, f32::min);
    let pass = fails.is_empty();
    let mut reason = format!("NIR face median {mean:.3}, contrast {contrast:.3}");
    if let (Some(r), Some(d), Some(a)) = (rise, distance_mm, relative_albedo) {
        let src = if obs.measured_distance_mm.is_some() {
            "measured"
        } else {
            "from face size"
        };
        reason += &format!(", emitter rise {r:.3} at {d:.0} mm ({src}) = {a:.2}× skin");
    } else if !cfg.emitter {
        reason += ", no emitter (differential not checked)";
    }
    if !pass {
        reason = format!("{}; {reason}", fails.join("; "));
    }
    IrOutcome {
        result: CheckResult::ran("ir", score, pass, reason),
        measurements: Some(IrMeasurements {
            face_mean: mean,
            contrast,
            saturated,
            rise,
            distance_mm,
            relative_albedo,
            frame_rise_p95,
        }),
        fault: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(f: impl Fn(u32, u32) -> u16) -> GreyFrame {
        let (w, h) = (40, 40);
        let s = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| f(x, y));
        GreyFrame::new(w, h, 10, s.collect()).unwrap()
    }

    const BOX: PixelBox = PixelBox {
        x0: 10.0,
        y0: 10.0,
        x1: 30.0,
        y1: 30.0,
    };

    #[test]
    fn dead_emitter_is_a_fault_not_a_spoof() {
        let cfg = IrConfig::default();
        let off = frame(|x, y| 100 + ((x * 7 + y * 3) % 50) as u16);
        let obs = IrObservation {
            lit: &off,
            unlit: Some(&off),
            face: BOX,
            measured_distance_mm: Some(500.0),
            size_implied_distance_mm: None,
        };
        let o = check_ir(&cfg, &obs);
        assert!(!o.result.pass);
        assert_eq!(o.fault.as_ref().unwrap().source, FaultSource::IrEmitter);
        assert!(o.result.reason.contains("self-test"), "{}", o.result.reason);
    }

    #[test]
    fn skin_like_rise_passes_and_screen_like_fails() {
        let cfg = IrConfig::default();
        let off = frame(|x, y| 30 + ((x * 7 + y * 3) % 20) as u16);
        // +0.30 of full scale at 500 mm: exactly calibrated skin.
        let on = frame(|x, y| 30 + ((x * 7 + y * 3) % 20) as u16 + 307 + ((x + y) % 9) as u16 * 20);
        let mut obs = IrObservation {
            lit: &on,
            unlit: Some(&off),
            face: BOX,
            measured_distance_mm: Some(500.0),
            size_implied_distance_mm: None,
        };
        let o = check_ir(&cfg, &obs);
        assert!(o.result.pass, "{}", o.result.reason);
        assert!(o.result.score.unwrap() >= 0.5);
        // Same frames seen from twice as far: the rise should have been 4× smaller.
        obs.measured_distance_mm = Some(1000.0);
        let o = check_ir(&cfg, &obs);
        assert!(!o.result.pass, "{}", o.result.reason);
        // Missing off frame with an emitter configured: fault.
        obs.unlit = None;
        assert_eq!(
            check_ir(&cfg, &obs).fault.unwrap().source,
            FaultSource::IrEmitter
        );
    }
}
