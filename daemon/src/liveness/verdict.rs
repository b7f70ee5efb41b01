//! What the liveness layer answers: one [`CheckResult`] per check, hardware [`Fault`]s, and the
//! fused [`LivenessVerdict`].
//!
//! These types are the contract between the checks, the fusion policy, the daemon and the CLI's
//! JSON output (`{"live":bool,"checks":[{"name","score","pass","reason",...}],"faults":[...]}`),
//! so fields may be added but never renamed. A check that could not run is never reported as a
//! pass: its `score` is `None` (JSON `null`), `pass` is `false` and `status` says why.

use serde::Serialize;

/// Why a check has (or has no) score: it ran, its sensor is absent, faulty, or policy disabled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// The check ran on real input and produced a score.
    Ran,
    /// The sensor (or its input) is not there: nothing to judge.
    Absent,
    /// The sensor is there but misbehaves (see the verdict's `faults`).
    Fault,
    /// Policy does not use this check and no input was given.
    Disabled,
}

/// The outcome of one liveness check on one frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckResult {
    /// `passive`, `ir`, `depth` or `challenge`.
    pub name: &'static str,
    /// Live-likeness in `[0, 1]`; for the IR and depth checks 0.5 is the pass boundary (see
    /// [`margin_score`]). `None` when the check did not run.
    pub score: Option<f32>,
    /// Whether the check passed. Always `false` when it did not run.
    pub pass: bool,
    /// Human-readable explanation with the measured values (never pixel data).
    pub reason: String,
    /// Whether policy requires this check for a live verdict.
    pub required: bool,
    /// Whether it ran, and if not, why.
    pub status: CheckStatus,
}

impl CheckResult {
    /// A check that ran.
    pub fn ran(name: &'static str, score: f32, pass: bool, reason: impl Into<String>) -> Self {
        Self {
            name,
            score: Some(if score.is_finite() { score } else { 0.0 }),
            pass,
            reason: reason.into(),
            required: false,
            status: CheckStatus::Ran,
        }
    }

    /// A check that could not run (`status` other than [`CheckStatus::Ran`]).
    pub fn not_run(name: &'static str, status: CheckStatus, reason: impl Into<String>) -> Self {
        Self {
            name,
            score: None,
            pass: false,
            reason: reason.into(),
            required: false,
            status,
        }
    }
}

/// Which device a fault concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultSource {
    /// The RGB camera (no frame, or the passive models could not run on it).
    Rgb,
    /// The near-infrared camera.
    IrCamera,
    /// The NIR illuminator paired with the IR camera.
    IrEmitter,
    /// The depth sensor.
    Depth,
    /// Sensor calibration / registration (a face box cannot be mapped).
    Registration,
}

/// A hardware or configuration problem found while judging liveness. Faults are reported to the
/// operator (and deny when they concern a required check); they are never folded silently into
/// a "spoof" score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fault {
    /// The device at fault.
    pub source: FaultSource,
    /// What is wrong, with the measured evidence.
    pub detail: String,
}

impl Fault {
    /// A fault of `source`.
    pub fn new(source: FaultSource, detail: impl Into<String>) -> Self {
        Self {
            source,
            detail: detail.into(),
        }
    }
}

/// The fused answer for one frame (or, from [`crate::liveness::TrackAggregator`], one track).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LivenessVerdict {
    /// True only if every required check ran and passed and no required sensor is faulty.
    pub live: bool,
    /// Every check, required or not, in a fixed order (passive, ir, depth, challenge).
    pub checks: Vec<CheckResult>,
    /// Hardware faults seen (also those of checks that are not required).
    pub faults: Vec<Fault>,
}

impl LivenessVerdict {
    /// The result of the check called `name`, if reported.
    pub fn check(&self, name: &str) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// Whether a measured value must stay above or below its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The value must be `>=` the limit.
    AtLeast,
    /// The value must be `<=` the limit.
    AtMost,
}

/// Map a measured value and its limit to `[0, 1]` with exactly 0.5 at the limit: `m / (1 + m)`
/// where `m = value / limit` (or `limit / value` for an upper bound). This makes every sensor
/// check's score comparable and monotone in its margin, so `score >= 0.5` iff within the limit.
/// Non-finite or non-positive inputs score 0 for a lower bound (no evidence of liveness).
pub fn margin_score(value: f64, limit: f64, bound: Bound) -> f32 {
    if !(value.is_finite() && limit.is_finite()) || limit <= 0.0 {
        return 0.0;
    }
    let m = match bound {
        Bound::AtLeast => value.max(0.0) / limit,
        Bound::AtMost if value <= 0.0 => return 1.0,
        Bound::AtMost => limit / value,
    };
    (m / (1.0 + m)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_score_is_half_at_the_limit_and_monotone() {
        assert_eq!(margin_score(10.0, 10.0, Bound::AtLeast), 0.5);
        assert_eq!(margin_score(10.0, 10.0, Bound::AtMost), 0.5);
        assert!(margin_score(20.0, 10.0, Bound::AtLeast) > 0.5);
        assert!(margin_score(5.0, 10.0, Bound::AtLeast) < 0.5);
        assert!(margin_score(20.0, 10.0, Bound::AtMost) < 0.5);
        assert_eq!(margin_score(f64::NAN, 10.0, Bound::AtLeast), 0.0);
        assert_eq!(margin_score(-3.0, 10.0, Bound::AtLeast), 0.0);
    }

    #[test]
    fn not_run_never_passes() {
        let c = CheckResult::not_run("ir", CheckStatus::Absent, "no IR camera");
        assert!(!c.pass && c.score.is_none());
        let j = serde_json::to_value(&c).unwrap();
        assert_eq!(j["score"], serde_json::Value::Null);
        assert_eq!(j["status"], "absent");
    }
}
