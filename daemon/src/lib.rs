//! facegate: a face-recognition door terminal daemon.
//!
//! The data path, one module per step:
//!
//! ```text
//! camera (facegate-hal) → detect → liveness → align → embed → match → door / event
//! ```
//!
//! - [`models`]: the pinned model manifest, integrity checks, installation, loading into tract
//!   (with [`onnx_fold`] making block-quantized files loadable, [`tract_ops`] making PReLU one pass);
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
//! - [`sensors`]: the optional IR and depth sensors, paired with RGB frames by capture time;
//! - [`pipeline`]: capture → detect → liveness → embed → match → decision, on blocking threads;
//! - [`door`]: the relay pulse, its hard cap, door contact and exit button (fail-secure);
//! - [`throttle`]: failed-attempt throttling;
//! - [`events`]: decisions and door changes → journal fields and outbox events;
//! - [`service`]: start-up order, systemd notification and watchdog ([`notify`]), shutdown;
//!   [`config`] is its file, [`logging`] its journal, [`fleet`] its MQTT side;
//! - [`doctor`]: on-site checks, each with a fix hint;
//! - [`demo`]: the scripted end-to-end session with SIMULATED devices;
//! - [`eval`]: verification accuracy on labelled pairs (accuracy, TAR at FAR, EER);
//! - [`bench`], [`bench_e2e`], [`bench_profile`]: measured figures for every stage, end to end and
//!   per network operator (never timed tests).

#![warn(missing_docs)]

pub mod align;
pub mod bench;
pub mod bench_e2e;
pub mod bench_profile;
pub mod bundle;
pub mod config;
pub mod demo;
pub mod detect;
pub mod doctor;
pub mod door;
pub mod embed;
pub mod enroll;
pub mod eval;
pub mod events;
pub mod fleet;
pub mod liveness;
pub mod logging;
pub mod matcher;
pub mod models;
pub mod mqtt;
pub mod notify;
pub mod onnx_fold;
pub mod pipeline;
pub mod sensors;
pub mod service;
pub mod store;
pub mod throttle;
pub mod tract_ops;
pub mod vision;

pub use facegate_hal as hal;
