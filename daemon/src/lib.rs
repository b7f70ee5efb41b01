//! facegate: a face-recognition door terminal daemon.
//!
//! The data path, one module per step:
//!
//! ```text
//! camera (facegate-hal) → detect → liveness → align → embed → match → door / event
//! ```
//!
//! - [`models`]: the pinned model manifest, integrity checks, installation, loading into tract
//!   (with [`onnx_fold`] making block-quantized files loadable);
//! - [`detect`]: YuNet face + landmark detection;
//! - [`align`]: 5-point similarity warp onto the 112×112 template;
//! - [`embed`]: SFace identity vectors and cosine similarity;
//! - [`vision`]: the above wired together with one notion of "the face in this frame";
//! - [`enroll`]: enrolment quality gates (one sharp, frontal, live face);
//! - [`liveness`]: passive RGB anti-spoof (and the IR/depth checks);
//! - [`store`]: the encrypted template store (redb + AES-256-GCM), audit log, event outbox;
//! - [`matcher`]: the in-memory 1:N matcher with look-alike margin;
//! - [`bundle`]: signed, site-encrypted template bundles from fleet operators;
//! - [`mqtt`]: fleet sync over mutual-TLS MQTT (outbox publisher, status, bundles, commands);
//! - [`eval`]: verification accuracy on labelled pairs (accuracy, TAR at FAR, EER);
//! - [`bench`]: measured figures for every stage (never timed tests).

#![warn(missing_docs)]

pub mod align;
pub mod bench;
pub mod bundle;
pub mod detect;
pub mod embed;
pub mod enroll;
pub mod eval;
pub mod liveness;
pub mod matcher;
pub mod models;
pub mod mqtt;
pub mod onnx_fold;
pub mod store;
pub mod vision;

pub use facegate_hal as hal;
