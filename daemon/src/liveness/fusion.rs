//! Fusion: run every check that has input, apply the configured policy, and produce one
//! [`LivenessVerdict`] per frame.
//!
//! **Rule.** `live` is true iff every check in `liveness.required` ran and passed, no required
//! sensor is faulty, and (when enabled) the head-turn challenge has passed. It is a logical AND
//! of independent layers, not a weighted vote: each layer stops attacks the others miss (depth
//! stops flat prints and screens, IR stops screens and close-held photos, the passive models stop
//! prints and replays on RGB-only boards), and averaging would let a strong layer hide a failing
//! one. Checks that are not required still run when their input is present and are reported (and
//! their faults listed) but do not change `live`. A required check whose sensor is absent or
//! faulty denies with a reason naming the sensor; there is no fail-open mode. Across frames, the
//! per-frame `live` feeds [`crate::liveness::TrackAggregator`] (k-of-n).
//!
//! **Geometry.** Faces are found in RGB; the RGB box is mapped into the depth image first (over
//! the depth check's distance range, then again at the measured median distance), and into the
//! IR image at the measured distance, or at the distance the box size implies for a human face
//! when there is no depth sensor. Without a calibration the sensors must be co-registered with
//! the RGB camera ([`co_registered`]).

use facegate_hal::registration::{CameraModel, RegistrationError, SensorCalibration};
use facegate_hal::{
    DepthAssumption, DepthMap, GreyFrame, Intrinsics, PixelBox, Registration, Sensor,
};

use super::challenge::ChallengeStatus;
use super::config::{CheckKind, ConfigError, LivenessConfig};
use super::depth::{self, DepthOutcome};
use super::ir::{self, IrObservation, IrOutcome};
use super::passive::PassiveScores;
use super::verdict::{CheckResult, CheckStatus, Fault, FaultSource, LivenessVerdict};

/// What one sensor delivered for a frame.
#[derive(Debug, Clone)]
pub enum Reading<T> {
    /// The sensor is not fitted (or no input was given).
    Absent,
    /// The sensor is fitted but failed (timeout, disconnected, inference error): why.
    Faulty(String),
    /// The data.
    Present(T),
}

/// NIR frames for the IR check: lit, and unlit when the emitter was switched off for a pair.
#[derive(Debug, Clone, Copy)]
pub struct IrPair<'a> {
    /// Emitter on (or the only frame).
    pub lit: &'a GreyFrame,
    /// Emitter off.
    pub unlit: Option<&'a GreyFrame>,
}

/// Everything the sensors gave for one frame of one face.
#[derive(Debug, Clone)]
pub struct Evidence<'a> {
    /// Passive model scores on the RGB frame.
    pub passive: Reading<PassiveScores>,
    /// NIR frames.
    pub ir: Reading<IrPair<'a>>,
    /// Depth map (its intrinsics come from the registration's depth calibration).
    pub depth: Reading<&'a DepthMap>,
    /// State of the head-turn challenge for this track, if one was issued.
    pub challenge: Option<&'a ChallengeStatus>,
}

impl Evidence<'_> {
    /// No sensor data at all (every reading absent).
    pub fn none() -> Self {
        Self {
            passive: Reading::Absent,
            ir: Reading::Absent,
            depth: Reading::Absent,
            challenge: None,
        }
    }
}

/// The configured policy plus the sensor geometry: turns [`Evidence`] into a verdict.
#[derive(Debug, Clone)]
pub struct LivenessPolicy {
    config: LivenessConfig,
    registration: Option<Registration>,
}

/// The pinhole intrinsics of a `width`×`height` camera with horizontal field of view
/// `hfov_deg`, principal point at the centre: a stand-in when no calibration exists.
pub fn intrinsics_for_hfov(width: u32, height: u32, hfov_deg: f64) -> Intrinsics {
    let f = width as f64 / 2.0 / (hfov_deg.to_radians() / 2.0).tan();
    Intrinsics {
        fx: f,
        fy: f,
        cx: width as f64 / 2.0,
        cy: height as f64 / 2.0,
    }
}

/// A registration for sensors that share the RGB camera's optical centre and axis (identity
/// pose), each with its own image size and intrinsics: e.g. an RGB-D module whose depth is
/// already aligned to colour, or test fixtures.
pub fn co_registered(
    rgb: CameraModel,
    ir: Option<CameraModel>,
    depth: Option<CameraModel>,
) -> Result<Registration, RegistrationError> {
    let cal = |c: CameraModel| SensorCalibration {
        width: c.width,
        height: c.height,
        intrinsics: c.intrinsics,
        rotation: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        translation_mm: [0.0; 3],
    };
    Registration::new(rgb, ir.map(cal), depth.map(cal))
}

fn pixel_box(b: &[f32; 4]) -> PixelBox {
    PixelBox {
        x0: b[0],
        y0: b[1],
        x1: b[0] + b[2],
        y1: b[1] + b[3],
    }
}

fn absent(kind: CheckKind, required: bool, what: &str) -> CheckResult {
    let reason = if required {
        format!("{what} absent but required by policy: deny")
    } else {
        format!("{what} absent (not required by policy)")
    };
    let status = if required {
        CheckStatus::Absent
    } else {
        CheckStatus::Disabled
    };
    CheckResult::not_run(kind.name(), status, reason)
}

impl LivenessPolicy {
    /// Validate `config`; `registration` maps RGB boxes into the IR and depth images (needed as
    /// soon as IR or depth data is given).
    pub fn new(
        config: LivenessConfig,
        registration: Option<Registration>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            registration,
        })
    }

    /// The policy in force.
    pub fn config(&self) -> &LivenessConfig {
        &self.config
    }

    /// Judge one face (`face_box` = `[x, y, w, h]` in RGB pixels) given this frame's evidence.
    pub fn evaluate(&self, face_box: &[f32; 4], ev: &Evidence<'_>) -> LivenessVerdict {
        let mut faults = Vec::new();
        let mut checks = Vec::new();
        let rgb_box = pixel_box(face_box);
        let box_ok =
            face_box.iter().all(|v| v.is_finite()) && face_box[2] >= 1.0 && face_box[3] >= 1.0;

        // Passive.
        let req = self.config.requires(CheckKind::Passive);
        checks.push(match &ev.passive {
            Reading::Absent => absent(CheckKind::Passive, req, "RGB anti-spoof input"),
            Reading::Faulty(why) => {
                faults.push(Fault::new(FaultSource::Rgb, why.clone()));
                CheckResult::not_run(
                    "passive",
                    CheckStatus::Fault,
                    format!("passive check failed to run: {why}"),
                )
            }
            Reading::Present(s) => {
                let c = &self.config.passive;
                let fused = c.weight_v2 * s.v2_live
                    + c.weight_v1se * s.v1se_live
                    + c.weight_128 * s.m128_live;
                let pass = fused >= c.threshold;
                CheckResult::ran(
                    "passive",
                    fused,
                    pass,
                    format!(
                        "fused {fused:.3} {} {:.2} (V2 {:.3}, V1SE {:.3}, m128 {:.3})",
                        if pass { ">=" } else { "<" },
                        c.threshold,
                        s.v2_live,
                        s.v1se_live,
                        s.m128_live
                    ),
                )
            }
        });

        // Depth (first: its distance feeds the IR check's geometry).
        let req = self.config.requires(CheckKind::Depth);
        let mut measured_distance = None;
        checks.push(match &ev.depth {
            Reading::Absent => absent(CheckKind::Depth, req, "depth sensor"),
            Reading::Faulty(why) => {
                faults.push(Fault::new(FaultSource::Depth, why.clone()));
                CheckResult::not_run(
                    "depth",
                    CheckStatus::Fault,
                    format!("depth sensor fault: {why}"),
                )
            }
            Reading::Present(map) => match self.depth_check(rgb_box, box_ok, map) {
                Ok(o) => {
                    measured_distance = o.measurements.map(|m| m.median_mm).filter(|&d| d > 0.0);
                    o.result
                }
                Err(f) => {
                    let r = CheckResult::not_run("depth", CheckStatus::Fault, f.detail.clone());
                    faults.push(f);
                    r
                }
            },
        });

        // IR.
        let req = self.config.requires(CheckKind::Ir);
        let ir_result = match &ev.ir {
            Reading::Absent => absent(CheckKind::Ir, req, "IR camera"),
            Reading::Faulty(why) => {
                faults.push(Fault::new(FaultSource::IrCamera, why.clone()));
                CheckResult::not_run("ir", CheckStatus::Fault, format!("IR camera fault: {why}"))
            }
            Reading::Present(pair) => match self.ir_check(rgb_box, box_ok, pair, measured_distance)
            {
                Ok(o) => {
                    if let Some(f) = o.fault {
                        faults.push(f);
                    }
                    o.result
                }
                Err(f) => {
                    let r = CheckResult::not_run("ir", CheckStatus::Fault, f.detail.clone());
                    faults.push(f);
                    r
                }
            },
        };
        // Fixed order in the output: passive, ir, depth, challenge.
        checks.insert(1, ir_result);

        if self.config.challenge.enabled {
            checks.push(match ev.challenge {
                None => CheckResult::not_run(
                    "challenge",
                    CheckStatus::Absent,
                    "head-turn challenge enabled but not issued: deny",
                ),
                Some(ChallengeStatus::Passed) => {
                    CheckResult::ran("challenge", 1.0, true, "requested head turn seen")
                }
                Some(ChallengeStatus::Pending) => CheckResult::ran(
                    "challenge",
                    0.0,
                    false,
                    "waiting for the requested head turn",
                ),
                Some(ChallengeStatus::Failed(why)) => {
                    CheckResult::ran("challenge", 0.0, false, why.clone())
                }
            });
        }

        for c in &mut checks {
            c.required = match c.name {
                "passive" => self.config.requires(CheckKind::Passive),
                "ir" => self.config.requires(CheckKind::Ir),
                "depth" => self.config.requires(CheckKind::Depth),
                "challenge" => true,
                _ => false,
            };
            if c.required && c.status == CheckStatus::Fault && !c.reason.contains("deny") {
                c.reason = format!("{}: required check could not run: deny", c.reason);
            }
        }
        let live = checks.iter().filter(|c| c.required).all(|c| c.pass);
        LivenessVerdict {
            live,
            checks,
            faults,
        }
    }

    fn registration(&self, sensor: Sensor) -> Result<&Registration, Fault> {
        self.registration
            .as_ref()
            .filter(|r| r.sensor(sensor).is_some())
            .ok_or_else(|| {
                Fault::new(
                    FaultSource::Registration,
                    format!("no calibration for the {sensor:?} sensor: its data cannot be related to the RGB face box"),
                )
            })
    }

    fn depth_check(
        &self,
        rgb_box: PixelBox,
        box_ok: bool,
        map: &DepthMap,
    ) -> Result<DepthOutcome, Fault> {
        let reg = self.registration(Sensor::Depth)?;
        let map_err =
            |e: RegistrationError| Fault::new(FaultSource::Registration, format!("depth: {e}"));
        if !box_ok {
            return Err(Fault::new(FaultSource::Registration, "unusable face box"));
        }
        let cfg = &self.config.depth;
        let coarse = reg
            .map_box_rgb_to(
                Sensor::Depth,
                rgb_box,
                DepthAssumption::Range {
                    near_mm: cfg.min_distance_mm as f64,
                    far_mm: cfg.max_distance_mm as f64,
                },
            )
            .map_err(map_err)?;
        let fine = match depth::median_depth(map, coarse, 0.6) {
            Some(z) => reg
                .map_box_rgb_to(Sensor::Depth, rgb_box, DepthAssumption::Fixed(z))
                .map_err(map_err)?,
            None => coarse,
        };
        let cal = reg.sensor(Sensor::Depth).expect("checked above");
        if (map.width(), map.height()) != (cal.width, cal.height) {
            return Err(Fault::new(
                FaultSource::Depth,
                format!(
                    "depth map is {}x{} but the depth calibration is for {}x{}",
                    map.width(),
                    map.height(),
                    cal.width,
                    cal.height
                ),
            ));
        }
        Ok(depth::check_depth(cfg, map, &cal.intrinsics, fine))
    }

    fn ir_check(
        &self,
        rgb_box: PixelBox,
        box_ok: bool,
        pair: &IrPair<'_>,
        measured: Option<f64>,
    ) -> Result<IrOutcome, Fault> {
        let reg = self.registration(Sensor::Ir)?;
        if !box_ok {
            return Err(Fault::new(FaultSource::Registration, "unusable face box"));
        }
        let cfg = &self.config.ir;
        let size_implied = Some(
            reg.rgb().intrinsics.fx * cfg.assumed_face_width_mm as f64 / rgb_box.width() as f64,
        );
        let assume = match measured.or(size_implied) {
            Some(z) if z.is_finite() && z > 0.0 => DepthAssumption::Fixed(z),
            _ => DepthAssumption::Range {
                near_mm: 200.0,
                far_mm: 1500.0,
            },
        };
        let face = reg
            .map_box_rgb_to(Sensor::Ir, rgb_box, assume)
            .map_err(|e| Fault::new(FaultSource::Registration, format!("IR: {e}")))?;
        let cal = reg.sensor(Sensor::Ir).expect("checked above");
        if (pair.lit.width(), pair.lit.height()) != (cal.width, cal.height) {
            return Err(Fault::new(
                FaultSource::IrCamera,
                format!(
                    "IR frame is {}x{} but the IR calibration is for {}x{}",
                    pair.lit.width(),
                    pair.lit.height(),
                    cal.width,
                    cal.height
                ),
            ));
        }
        Ok(ir::check_ir(
            cfg,
            &IrObservation {
                lit: pair.lit,
                unlit: pair.unlit,
                face,
                measured_distance_mm: measured,
                size_implied_distance_mm: size_implied,
            },
        ))
    }
}
