//! Step 2 of the data path: is the face in front of the camera a live person?
//!
//! A face terminal that opens for a printed photo or a phone screen is worse than none, so every
//! decision is gated by liveness. One file per concept:
//!
//! - [`passive`]: RGB anti-spoof CNNs on the face crop (every board has an RGB camera);
//! - [`ir`]: near-infrared presence, contrast, emitter on/off differential and emitter self-test;
//! - [`depth`]: relief (plane and quadric fits) and metric face size from a depth map;
//! - [`challenge`]: optional active head-turn challenge from landmark yaw;
//! - [`config`]: the policy (`[liveness]`), validated at load;
//! - [`fusion`]: runs the checks on one frame's evidence and applies the policy;
//! - [`track`]: k-of-n over consecutive frames of one face track;
//! - [`verdict`]: the result types (`LivenessVerdict`, `CheckResult`, `Fault`);
//! - [`depth_file`]: the on-disk depth map format of `facegate liveness --depth`;
//! - [`synthetic`]: the SIMULATED attack suite (NIR pairs + depth maps) for tests and benches;
//! - [`pad`]: ISO/IEC 30107-3 metrics (APCER, BPCER) and the evaluations behind `bench pad`.

pub mod challenge;
pub mod config;
pub mod depth;
pub mod depth_file;
pub mod fusion;
pub mod ir;
pub mod pad;
pub mod passive;
pub mod synthetic;
pub mod track;
pub mod verdict;

pub use challenge::{ChallengeConfig, ChallengeStatus, HeadTurnChallenge, TurnDirection};
pub use config::{CheckKind, ConfigError, FrameWindow, LivenessConfig};
pub use depth::{DepthConfig, check_depth};
pub use fusion::{Evidence, IrPair, LivenessPolicy, Reading};
pub use ir::{IrConfig, check_ir, emitter_self_test};
pub use passive::{PassiveAntiSpoof, PassiveConfig, PassiveScores};
pub use track::{TrackAggregator, TrackState};
pub use verdict::{CheckResult, CheckStatus, Fault, FaultSource, LivenessVerdict};
