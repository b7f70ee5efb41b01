//! The liveness policy as configured (`[liveness]` table): which checks are required, each
//! check's limits, k-of-n over frames of a track, and the optional head-turn challenge.
//!
//! Absent keys take the documented defaults; present but invalid values are refused at load
//! time with a message naming the key (never silently replaced by a default), because every
//! value here decides whether a door opens for a photo. Defaults describe the RGB-only board:
//!
//! ```toml
//! [liveness]
//! required = ["passive"]          # any of "passive", "ir", "depth"; never empty
//! [liveness.frames]
//! k = 2                           # live only if >= k of the last n frames of the track passed
//! n = 3
//! max_gap_ms = 2000               # a longer gap between analysed frames starts the window afresh
//! [liveness.passive]              # PassiveConfig: weight_v2, weight_v1se, weight_128, threshold
//! [liveness.ir]                   # IrConfig (see ir.rs)
//! [liveness.depth]                # DepthConfig (see depth.rs)
//! [liveness.challenge]            # ChallengeConfig, enabled = false
//! ```
//!
//! A required check whose sensor is missing or faulty denies, and the verdict says why; there is
//! no "fail open" setting.

use serde::{Deserialize, Serialize};

use super::challenge::ChallengeConfig;
use super::depth::DepthConfig;
use super::ir::IrConfig;
use super::passive::PassiveConfig;

/// A liveness check that policy can require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// Passive RGB anti-spoof models.
    Passive,
    /// Near-infrared check (with emitter differential and self-test when an emitter is fitted).
    Ir,
    /// Depth relief and metric size.
    Depth,
}

impl CheckKind {
    /// The name used in results and JSON.
    pub fn name(self) -> &'static str {
        match self {
            CheckKind::Passive => "passive",
            CheckKind::Ir => "ir",
            CheckKind::Depth => "depth",
        }
    }
}

/// k-of-n aggregation over consecutive frames of one face track (`[liveness.frames]`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FrameWindow {
    /// Passing frames needed in the window.
    pub k: usize,
    /// Window length (the last n frames of the track).
    pub n: usize,
    /// A gap longer than this between two frames of a track restarts the window, ms.
    pub max_gap_ms: u64,
}

impl Default for FrameWindow {
    fn default() -> Self {
        Self {
            k: 2,
            n: 3,
            max_gap_ms: 2000,
        }
    }
}

impl FrameWindow {
    /// `1 <= k <= n <= 64`, `max_gap_ms` in `1..=10000`.
    pub fn validate(&self) -> Result<(), String> {
        if !(1 <= self.k && self.k <= self.n && self.n <= 64) {
            return Err(format!(
                "liveness.frames: need 1 <= k <= n <= 64 (k = {}, n = {})",
                self.k, self.n
            ));
        }
        if !(1..=10_000).contains(&self.max_gap_ms) {
            return Err(format!(
                "liveness.frames.max_gap_ms = {} must be in [1, 10000]",
                self.max_gap_ms
            ));
        }
        Ok(())
    }
}

/// The whole liveness policy (`[liveness]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LivenessConfig {
    /// Checks that must run and pass for a live verdict.
    pub required: Vec<CheckKind>,
    /// k-of-n over frames of a track.
    pub frames: FrameWindow,
    /// Passive model fusion weights and threshold.
    pub passive: PassiveConfig,
    /// IR check limits.
    pub ir: IrConfig,
    /// Depth check limits.
    pub depth: DepthConfig,
    /// Active head-turn challenge (off by default).
    pub challenge: ChallengeConfig,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            required: vec![CheckKind::Passive],
            frames: FrameWindow::default(),
            passive: PassiveConfig::default(),
            ir: IrConfig::default(),
            depth: DepthConfig::default(),
            challenge: ChallengeConfig::default(),
        }
    }
}

/// A liveness policy that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The TOML does not parse or has unknown keys.
    #[error("liveness config: {0}")]
    Parse(String),
    /// A value is out of range.
    #[error("liveness config: {0}")]
    Invalid(String),
}

impl LivenessConfig {
    /// Check every value; the first problem is returned naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let inv = ConfigError::Invalid;
        if self.required.is_empty() {
            return Err(inv(
                "liveness.required must name at least one check (an empty list would accept any face)"
                    .into(),
            ));
        }
        for (i, c) in self.required.iter().enumerate() {
            if self.required[..i].contains(c) {
                return Err(inv(format!("liveness.required lists `{}` twice", c.name())));
            }
        }
        self.frames.validate().map_err(inv)?;
        self.passive.validate().map_err(inv)?;
        self.ir.validate().map_err(inv)?;
        self.depth.validate().map_err(inv)?;
        self.challenge.validate().map_err(inv)?;
        Ok(())
    }

    /// Parse the body of a `[liveness]` table (or a standalone file with these keys) and
    /// validate it.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let c: Self = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// Whether `check` is required.
    pub fn requires(&self, check: CheckKind) -> bool {
        self.required.contains(&check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_rgb_only() {
        let c = LivenessConfig::default();
        c.validate().unwrap();
        assert_eq!(c.required, vec![CheckKind::Passive]);
        assert!(!c.challenge.enabled);
    }

    #[test]
    fn parses_and_refuses_invalid_values() {
        let c = LivenessConfig::from_toml(
            "required = [\"ir\", \"depth\"]\n[frames]\nk = 3\nn = 5\n[depth]\nmin_relief_mm = 12.0\n",
        )
        .unwrap();
        assert!(c.requires(CheckKind::Depth) && !c.requires(CheckKind::Passive));
        assert_eq!((c.frames.k, c.frames.n), (3, 5));
        for bad in [
            "required = []",
            "required = [\"passive\", \"passive\"]",
            "required = [\"retina\"]",
            "[frames]\nk = 4\nn = 3",
            "[ir]\nmin_face_mean = -1.0",
            "[depth]\nmin_face_width_mm = 300.0",
            "[passive]\nthreshold = 1.5",
            "unknown_key = 1",
        ] {
            assert!(LivenessConfig::from_toml(bad).is_err(), "accepted: {bad}");
        }
    }
}
