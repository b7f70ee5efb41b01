//! Optional active challenge: "turn your head left/right", judged from the detector's landmarks.
//!
//! Off by default (`[liveness.challenge] enabled = false`): it slows every entry and annoys
//! users, but some deployments want it because a replayed video or a photo cannot follow a
//! random instruction. It does not stop a person wearing a mask (they can turn their head).
//!
//! **Yaw from 5 landmarks.** With the eyes' midpoint `m`, the inter-ocular distance `iod` and the
//! nose tip `n` (image x), a head turned by yaw θ moves the nose tip sideways by ≈ D·sin θ while
//! the eyes' spacing shrinks to ≈ IOD·cos θ, where D is how far the nose tip stands in front of
//! the eyes (≈ 0.5 · IOD for adults: ~32 mm vs ~63 mm). So `r = (n.x − m.x) / iod ≈ 0.5 · tan θ`
//! and `θ ≈ atan(2 r)`. Accurate to roughly ±10° (faces differ); enough to tell "turned well to
//! one side" from "frontal". Positive yaw = the nose moves toward the image's right, i.e. the
//! subject turned to *their* left (camera not mirrored).
//!
//! **Challenge.** Issued with a random direction; passes when, within `window_ms` of the start,
//! the track is first seen roughly frontal (|yaw| ≤ `frontal_max_deg`) and then turned at least
//! `min_turn_deg` in the requested direction. Turning the wrong way fails immediately.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Settings of the head-turn challenge (`[liveness.challenge]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ChallengeConfig {
    /// Whether a live verdict also requires a passed challenge.
    pub enabled: bool,
    /// Time allowed to complete the turn, ms.
    pub window_ms: u64,
    /// Yaw the turn must reach in the requested direction, degrees.
    pub min_turn_deg: f32,
    /// Largest |yaw| that counts as facing the camera before the turn, degrees.
    pub frontal_max_deg: f32,
}

impl Default for ChallengeConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            window_ms: 3000,
            min_turn_deg: 20.0,
            frontal_max_deg: 10.0,
        }
    }
}

impl ChallengeConfig {
    /// Refuse windows and angles that cannot work or would be trivially met.
    pub fn validate(&self) -> Result<(), String> {
        if !(500..=30_000).contains(&self.window_ms) {
            return Err(format!(
                "liveness.challenge.window_ms = {} must be in [500, 30000]",
                self.window_ms
            ));
        }
        if !(self.frontal_max_deg.is_finite()
            && self.frontal_max_deg > 0.0
            && self.min_turn_deg.is_finite()
            && self.min_turn_deg > self.frontal_max_deg
            && self.min_turn_deg < 60.0)
        {
            return Err(
                "liveness.challenge: need 0 < frontal_max_deg < min_turn_deg < 60".to_string(),
            );
        }
        Ok(())
    }
}

/// Estimated yaw in degrees from YuNet's 5 landmarks (right eye, left eye, nose tip, mouth
/// corners; first point on the image's left). `None` for degenerate landmarks.
pub fn yaw_degrees(landmarks: &[[f32; 2]; 5]) -> Option<f32> {
    let (a, b, n) = (landmarks[0], landmarks[1], landmarks[2]);
    let iod = ((b[0] - a[0]).powi(2) + (b[1] - a[1]).powi(2)).sqrt();
    if !(iod.is_finite() && iod > 1.0 && n[0].is_finite()) {
        return None;
    }
    let r = (n[0] - (a[0] + b[0]) / 2.0) / iod;
    Some((2.0 * r).atan().to_degrees())
}

/// Which way the subject is asked to turn (their own left/right).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TurnDirection {
    /// Subject's left: positive yaw.
    Left,
    /// Subject's right: negative yaw.
    Right,
}

/// Where a challenge stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum ChallengeStatus {
    /// Still waiting for the turn.
    Pending,
    /// The requested turn was seen in time.
    Passed,
    /// Timed out or turned the wrong way.
    Failed(String),
}

/// One issued head-turn challenge for one track.
#[derive(Debug, Clone)]
pub struct HeadTurnChallenge {
    cfg: ChallengeConfig,
    direction: TurnDirection,
    started: Instant,
    seen_frontal: bool,
    status: ChallengeStatus,
}

impl HeadTurnChallenge {
    /// Issue a challenge at `started` (the caller picks `direction` at random and shows it).
    pub fn new(cfg: ChallengeConfig, direction: TurnDirection, started: Instant) -> Self {
        Self {
            cfg,
            direction,
            started,
            seen_frontal: false,
            status: ChallengeStatus::Pending,
        }
    }

    /// The requested direction.
    pub fn direction(&self) -> TurnDirection {
        self.direction
    }

    /// The current status.
    pub fn status(&self) -> &ChallengeStatus {
        &self.status
    }

    /// Feed the landmarks of one frame of the track, captured at `at`.
    pub fn observe(&mut self, landmarks: &[[f32; 2]; 5], at: Instant) -> &ChallengeStatus {
        if self.status != ChallengeStatus::Pending {
            return &self.status;
        }
        let elapsed = at.saturating_duration_since(self.started);
        if elapsed > Duration::from_millis(self.cfg.window_ms) {
            self.status = ChallengeStatus::Failed(format!(
                "no {:?} head turn within {} ms",
                self.direction, self.cfg.window_ms
            ));
            return &self.status;
        }
        let Some(yaw) = yaw_degrees(landmarks) else {
            return &self.status;
        };
        let signed = match self.direction {
            TurnDirection::Left => yaw,
            TurnDirection::Right => -yaw,
        };
        if yaw.abs() <= self.cfg.frontal_max_deg {
            self.seen_frontal = true;
        } else if self.seen_frontal && signed >= self.cfg.min_turn_deg {
            self.status = ChallengeStatus::Passed;
        } else if self.seen_frontal && -signed >= self.cfg.min_turn_deg {
            self.status = ChallengeStatus::Failed(format!("turned the wrong way (yaw {yaw:.0}°)"));
        }
        &self.status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Landmarks of a head turned by `deg` under the model in the module doc.
    fn lm(deg: f32) -> [[f32; 2]; 5] {
        let t = deg.to_radians();
        let iod = 60.0 * t.cos();
        let nose = 100.0 + 30.0 * t.sin();
        [
            [100.0 - iod / 2.0, 100.0],
            [100.0 + iod / 2.0, 100.0],
            [nose, 130.0],
            [85.0, 150.0],
            [115.0, 150.0],
        ]
    }

    #[test]
    fn yaw_estimate_follows_the_model() {
        for deg in [-30.0f32, -10.0, 0.0, 15.0, 35.0] {
            let y = yaw_degrees(&lm(deg)).unwrap();
            assert!((y - deg).abs() < 1.0, "{deg} -> {y}");
        }
        assert!(yaw_degrees(&[[0.0; 2]; 5]).is_none());
    }

    #[test]
    fn challenge_needs_frontal_then_requested_turn_in_time() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let cfg = ChallengeConfig::default();
        let mut c = HeadTurnChallenge::new(cfg.clone(), TurnDirection::Left, t0);
        assert_eq!(*c.observe(&lm(30.0), at(10)), ChallengeStatus::Pending); // not frontal yet
        c.observe(&lm(2.0), at(100));
        assert_eq!(*c.observe(&lm(28.0), at(800)), ChallengeStatus::Passed);

        let mut wrong = HeadTurnChallenge::new(cfg.clone(), TurnDirection::Left, t0);
        wrong.observe(&lm(0.0), at(100));
        assert!(matches!(
            wrong.observe(&lm(-30.0), at(200)),
            ChallengeStatus::Failed(_)
        ));

        let mut late = HeadTurnChallenge::new(cfg, TurnDirection::Right, t0);
        late.observe(&lm(0.0), at(100));
        assert!(matches!(
            late.observe(&lm(-30.0), at(5000)),
            ChallengeStatus::Failed(_)
        ));
    }
}
