//! Door hardware traits: the lock relay output, the door-position contact, the exit button.
//!
//! These describe electrical facts, not door policy. Whether energising the relay unlocks or
//! locks depends on the strike ([`StrikeType`]); the door logic (grant time, held-open alarm,
//! forced-open detection) lives in the daemon and is written against these traits. All calls
//! are synchronous and return promptly (a GPIO write or read); inputs are polled.

use crate::error::Error;

/// The commanded state of the lock relay's coil (or solid-state switch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockState {
    /// Current flows through the coil / the lock's supply is switched on.
    Energised,
    /// No current: the state the hardware falls back to on power loss.
    Released,
}

/// How the lock hardware reacts to power; decides which [`LockState`] means "locked".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrikeType {
    /// Electric strike / motor lock that stays locked without power (energise to unlock).
    /// Keeps the door secure on power loss: the usual choice for terminals.
    FailSecure,
    /// Magnetic lock or strike that needs power to hold (energise to lock). Opens on power
    /// loss, as fire codes often require for escape routes.
    FailSafe,
}

impl StrikeType {
    /// The relay state that keeps the door locked. Backends drive this on start and on drop.
    pub fn locked_state(self) -> LockState {
        match self {
            StrikeType::FailSecure => LockState::Released,
            StrikeType::FailSafe => LockState::Energised,
        }
    }

    /// The relay state that lets the door open.
    pub fn unlocked_state(self) -> LockState {
        match self {
            StrikeType::FailSecure => LockState::Energised,
            StrikeType::FailSafe => LockState::Released,
        }
    }
}

/// The door lock relay.
///
/// Hardware truth: [`LockOutput::energise`] switches current to the coil; with a fail-secure
/// strike this unlocks the door, with a fail-safe maglock it locks it. [`LockOutput::release`]
/// de-energises the coil; with a fail-secure strike this locks the door. A relay needs a few
/// milliseconds to change over and a strike some tens of milliseconds to move; `Ok` means
/// the output was driven, not that the bolt moved (use the [`DoorSensor`] for that).
pub trait LockOutput {
    /// Backend-specific failure, classified by [`Error::kind`].
    type Error: Error;

    /// Drive current to the coil.
    fn energise(&mut self) -> Result<(), Self::Error>;

    /// Stop driving current to the coil (the power-loss state).
    fn release(&mut self) -> Result<(), Self::Error>;

    /// The last state driven successfully: what was commanded, not a measurement. A welded
    /// relay contact or a cut wire is not visible here.
    fn state(&self) -> LockState;
}

/// Position of the door leaf as reported by its contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DoorState {
    /// The contact reports the door shut against its frame.
    Closed,
    /// The contact reports the door away from its frame (or the loop is cut: see [`DoorSensor`]).
    Open,
}

/// The door-position contact (reed switch + magnet, or the lock's built-in monitor).
///
/// Hardware truth: wire it normally-closed-when-door-closed so a cut or unplugged cable
/// reads as [`DoorState::Open`] (fail to the alarming state). "Closed" does not mean
/// "locked": the bolt may be retracted.
pub trait DoorSensor {
    /// Backend-specific failure, classified by [`Error::kind`].
    type Error: Error;

    /// Current debounced door position.
    fn door_state(&mut self) -> Result<DoorState, Self::Error>;
}

/// The request-to-exit button on the secure side of the door.
///
/// Hardware truth: mechanical contacts bounce for a few milliseconds; implementations
/// debounce. Inputs are polled, so a press shorter than the polling interval can be missed:
/// poll at least every half debounce period while a press matters.
pub trait ExitButton {
    /// Backend-specific failure, classified by [`Error::kind`].
    type Error: Error;

    /// Whether the button is held down right now (debounced).
    fn is_pressed(&mut self) -> Result<bool, Self::Error>;
}
