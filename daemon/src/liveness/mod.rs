//! Step 2 of the data path: is the face in front of the camera a live person?
//!
//! A face terminal that opens for a printed photo or a phone screen is worse than none, so every
//! decision is gated by liveness. Checks live one per file: [`passive`] judges the RGB crop with
//! anti-spoof CNNs; IR and depth checks (with the sensors behind `facegate-hal`) and the fusion
//! policy complete it.

pub mod passive;

pub use passive::{PassiveAntiSpoof, PassiveConfig, PassiveScores};
