//! SIMULATED devices: replayed cameras, scripted IR/depth sensors, a recording lock and
//! scriptable door inputs.
//!
//! Nothing in this module touches hardware. It exists so the daemon's pipeline, liveness policy
//! and door logic run end-to-end in tests and demos, including the failure paths that are hard
//! to provoke on real hardware: every simulated device has a [`FaultSwitch`] that makes it fail
//! with a chosen [`ErrorKind`] until cleared, and the replay source can fail after N frames.
//! Every simulated device says SIMULATED in its `Debug` output and its error messages, so a
//! log can never pass a simulation off as a real sensor.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, ErrorKind};

mod door;
mod replay;
mod sensors;

pub use door::{LockTransition, SimDoorSensor, SimExitButton, SimIndicator, SimLock, SimLockProbe};
pub use replay::ReplaySource;
pub use sensors::{SimDepth, SimIr, SimIrEmitter};

/// The error every simulated device returns: an [`ErrorKind`] and what happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SIMULATED {device}: {kind}: {message}")]
pub struct SimError {
    /// Which simulated device failed.
    pub device: &'static str,
    /// The classification the daemon acts on.
    pub kind: ErrorKind,
    /// Details (an injected fault, a bad fixture file, end of the recording).
    pub message: String,
}

impl SimError {
    pub(crate) fn new(device: &'static str, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            device,
            kind,
            message: message.into(),
        }
    }
}

impl Error for SimError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

/// What a finite simulated stream does after its last frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplayMode {
    /// Start again from the first frame (the default: a camera never runs dry).
    #[default]
    Loop,
    /// Return [`ErrorKind::EndOfStream`] from then on.
    Stop,
}

/// A shared fault-injection switch: while set, the device it belongs to fails every call with
/// the given kind (e.g. `Disconnected` to simulate a pulled USB cable, `Timeout` for a stall).
/// Cloning gives another handle to the same switch, so a test keeps one while the daemon owns
/// the device.
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch(Arc<Mutex<Option<ErrorKind>>>);

impl FaultSwitch {
    /// Make every subsequent call fail with `kind`.
    pub fn set(&self, kind: ErrorKind) {
        *lock(&self.0) = Some(kind);
    }

    /// Let calls succeed again.
    pub fn clear(&self) {
        *lock(&self.0) = None;
    }

    /// The fault currently injected, if any.
    pub fn get(&self) -> Option<ErrorKind> {
        *lock(&self.0)
    }

    pub(crate) fn check(&self, device: &'static str) -> Result<(), SimError> {
        match self.get() {
            Some(kind) => Err(SimError::new(device, kind, "injected fault")),
            None => Ok(()),
        }
    }
}

/// Lock a mutex, ignoring poisoning: simulated state stays usable after a panicking test thread.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
