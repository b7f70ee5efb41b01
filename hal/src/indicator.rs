//! User feedback: the terminal's LEDs and buzzer.
//!
//! The daemon reports outcomes as a small set of states; each backend decides how a state looks
//! and sounds on its hardware. States are steady levels: blinking or beep patterns are timing,
//! which is the caller's job (set the state, sleep, set [`IndicatorState::Off`]).

use crate::error::Error;

/// What the terminal wants to tell the person in front of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndicatorState {
    /// Nothing to report: all outputs off.
    Off,
    /// Access granted (typically green LED, buzzer on).
    Granted,
    /// Access denied (typically red LED, buzzer on).
    Denied,
    /// The terminal cannot operate (sensor or lock fault): typically red LED, buzzer silent.
    Fault,
}

/// LEDs and buzzer, driven as one device so states cannot be half-applied by the caller.
pub trait Indicator {
    /// Backend-specific failure, classified by [`Error::kind`].
    type Error: Error;

    /// Show `state` until the next call.
    fn set_indicator(&mut self, state: IndicatorState) -> Result<(), Self::Error>;
}
