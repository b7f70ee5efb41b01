//! Raspberry Pi GPIO backend (cargo feature `gpio-rppal`): lock relay, door contact, exit button,
//! indicator LEDs/buzzer, through the `rppal` crate.
//!
//! Pins are BCM GPIO numbers, not header positions. Outputs are driven to their safe level the
//! moment they are claimed (the level is set before the pin is switched to output, so there is
//! no glitch) and again on drop; they are then left driven instead of reverting to inputs, so a
//! relay board with its own pull-up does not click the door open when the daemon exits. Power
//! loss and a crashed kernel are outside software's reach: choose the strike type and relay
//! wiring so the de-energised state is the one you want (see [`StrikeType`]).
//!
//! Off a Raspberry Pi this compiles, and constructors fail with rppal's "unknown model",
//! classified as [`ErrorKind::NotFound`].

use std::time::{Duration, Instant};

use rppal::gpio::{Gpio, InputPin, Level, OutputPin};

use crate::debounce::Debouncer;
use crate::door::{DoorSensor, DoorState, ExitButton, LockOutput, LockState, StrikeType};
use crate::error::{Error, ErrorKind};
use crate::indicator::{Indicator, IndicatorState};

/// A GPIO failure: which pin, what was being done, and rppal's error.
#[derive(Debug, thiserror::Error)]
#[error("GPIO {pin}: {op}: {source}")]
pub struct GpioError {
    /// BCM pin number.
    pub pin: u8,
    /// What was being done.
    pub op: &'static str,
    /// The underlying error.
    #[source]
    pub source: rppal::gpio::Error,
}

impl Error for GpioError {
    fn kind(&self) -> ErrorKind {
        classify(&self.source)
    }
}

fn classify(e: &rppal::gpio::Error) -> ErrorKind {
    use rppal::gpio::Error as E;
    match e {
        // Not a Raspberry Pi, or the pin does not exist on this SoC: the hardware is absent.
        E::UnknownModel | E::PinNotAvailable(_) => ErrorKind::NotFound,
        E::PinUsed(_) => ErrorKind::Busy,
        E::PermissionDenied(_) => ErrorKind::Permission,
        E::Io(io) => ErrorKind::from_io(io),
        _ => ErrorKind::Other,
    }
}

fn claim(pin: u8) -> Result<rppal::gpio::Pin, GpioError> {
    let err = |op| move |source| GpioError { pin, op, source };
    Gpio::new()
        .map_err(err("open GPIO"))?
        .get(pin)
        .map_err(err("claim pin"))
}

/// Claim `pin` as an output already at `level`, left driven (not reset to input) when dropped.
fn output_at(pin: u8, level: Level) -> Result<OutputPin, GpioError> {
    let p = claim(pin)?;
    let mut out = match level {
        Level::High => p.into_output_high(),
        Level::Low => p.into_output_low(),
    };
    out.set_reset_on_drop(false);
    Ok(out)
}

fn level(on: bool, active_high: bool) -> Level {
    if on == active_high {
        Level::High
    } else {
        Level::Low
    }
}

/// Wiring of the lock relay output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockPinConfig {
    /// BCM pin driving the relay (through a transistor/relay board).
    pub pin: u8,
    /// `true` if a high pin energises the coil; many relay boards are active-low (`false`).
    pub active_high: bool,
    /// The strike type, which decides the safe (locked) state.
    pub strike: StrikeType,
}

/// Lock relay on a GPIO output. Driven to the locked state on construction and on drop.
#[derive(Debug)]
pub struct RppalLock {
    pin: OutputPin,
    cfg: LockPinConfig,
    state: LockState,
}

impl RppalLock {
    /// Claim the pin, driving it to the strike's locked state before it becomes an output.
    pub fn new(cfg: LockPinConfig) -> Result<Self, GpioError> {
        let state = cfg.strike.locked_state();
        let pin = output_at(
            cfg.pin,
            level(state == LockState::Energised, cfg.active_high),
        )?;
        Ok(Self { pin, cfg, state })
    }

    fn drive(&mut self, state: LockState) {
        // A memory-mapped register write: it cannot fail once the pin is claimed.
        self.pin
            .write(level(state == LockState::Energised, self.cfg.active_high));
        self.state = state;
    }
}

impl LockOutput for RppalLock {
    type Error = GpioError;

    fn energise(&mut self) -> Result<(), GpioError> {
        self.drive(LockState::Energised);
        Ok(())
    }

    fn release(&mut self) -> Result<(), GpioError> {
        self.drive(LockState::Released);
        Ok(())
    }

    fn state(&self) -> LockState {
        self.state
    }
}

impl Drop for RppalLock {
    fn drop(&mut self) {
        self.drive(self.cfg.strike.locked_state());
    }
}

/// Internal pull resistor for an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pull {
    /// Pull up (contact switches to ground: the usual wiring).
    Up,
    /// Pull down (contact switches to 3.3 V).
    Down,
    /// No internal pull (external resistor fitted).
    None,
}

fn default_debounce_ms() -> u64 {
    20
}

/// Wiring of a contact input (door contact or exit button).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputPinConfig {
    /// BCM pin.
    pub pin: u8,
    /// Internal pull resistor.
    pub pull: Pull,
    /// `true` if a high level means "active" (door closed / button pressed). With a pull-up and
    /// a contact to ground, active is low: `false`.
    pub active_high: bool,
    /// Debounce period in milliseconds (default 20).
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
}

/// A debounced GPIO input shared by the door contact and the exit button.
#[derive(Debug)]
struct DebouncedInput {
    pin: InputPin,
    active_high: bool,
    debouncer: Debouncer,
}

impl DebouncedInput {
    fn new(cfg: InputPinConfig) -> Result<Self, GpioError> {
        let p = claim(cfg.pin)?;
        let pin = match cfg.pull {
            Pull::Up => p.into_input_pullup(),
            Pull::Down => p.into_input_pulldown(),
            Pull::None => p.into_input(),
        };
        let active = (pin.read() == Level::High) == cfg.active_high;
        Ok(Self {
            pin,
            active_high: cfg.active_high,
            debouncer: Debouncer::new(
                Duration::from_millis(cfg.debounce_ms),
                active,
                Instant::now(),
            ),
        })
    }

    fn active(&mut self) -> bool {
        let raw = (self.pin.read() == Level::High) == self.active_high;
        self.debouncer.update(raw, Instant::now())
    }
}

/// Door contact on a GPIO input; "active" = door closed (so a cut wire reads open when wired
/// normally-closed with the pull resistor pulling to the inactive level).
#[derive(Debug)]
pub struct RppalDoorSensor(DebouncedInput);

impl RppalDoorSensor {
    /// Claim the pin as an input with the configured pull.
    pub fn new(cfg: InputPinConfig) -> Result<Self, GpioError> {
        DebouncedInput::new(cfg).map(Self)
    }
}

impl DoorSensor for RppalDoorSensor {
    type Error = GpioError;

    fn door_state(&mut self) -> Result<DoorState, GpioError> {
        Ok(if self.0.active() {
            DoorState::Closed
        } else {
            DoorState::Open
        })
    }
}

/// Exit button on a GPIO input; "active" = pressed.
#[derive(Debug)]
pub struct RppalExitButton(DebouncedInput);

impl RppalExitButton {
    /// Claim the pin as an input with the configured pull.
    pub fn new(cfg: InputPinConfig) -> Result<Self, GpioError> {
        DebouncedInput::new(cfg).map(Self)
    }
}

impl ExitButton for RppalExitButton {
    type Error = GpioError;

    fn is_pressed(&mut self) -> Result<bool, GpioError> {
        Ok(self.0.active())
    }
}

/// Wiring of the indicator outputs; any of them may be absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndicatorPinConfig {
    /// BCM pin of the green LED.
    pub green: Option<u8>,
    /// BCM pin of the red LED.
    pub red: Option<u8>,
    /// BCM pin of the buzzer (an active buzzer: it sounds while powered).
    pub buzzer: Option<u8>,
    /// `true` if a high pin turns an output on.
    pub active_high: bool,
}

/// LEDs and buzzer on GPIO outputs, all off on construction and on drop.
///
/// Mapping: `Granted` = green + buzzer, `Denied` = red + buzzer, `Fault` = red only,
/// `Off` = everything off.
#[derive(Debug)]
pub struct RppalIndicator {
    green: Option<OutputPin>,
    red: Option<OutputPin>,
    buzzer: Option<OutputPin>,
    active_high: bool,
}

impl RppalIndicator {
    /// Claim the configured pins, all driven off.
    pub fn new(cfg: IndicatorPinConfig) -> Result<Self, GpioError> {
        let off = level(false, cfg.active_high);
        let claim_off = |p: Option<u8>| p.map(|p| output_at(p, off)).transpose();
        Ok(Self {
            green: claim_off(cfg.green)?,
            red: claim_off(cfg.red)?,
            buzzer: claim_off(cfg.buzzer)?,
            active_high: cfg.active_high,
        })
    }

    fn apply(&mut self, green: bool, red: bool, buzzer: bool) {
        let ah = self.active_high;
        for (pin, on) in [
            (&mut self.green, green),
            (&mut self.red, red),
            (&mut self.buzzer, buzzer),
        ] {
            if let Some(p) = pin {
                p.write(level(on, ah));
            }
        }
    }
}

impl Indicator for RppalIndicator {
    type Error = GpioError;

    fn set_indicator(&mut self, state: IndicatorState) -> Result<(), GpioError> {
        match state {
            IndicatorState::Off => self.apply(false, false, false),
            IndicatorState::Granted => self.apply(true, false, true),
            IndicatorState::Denied => self.apply(false, true, true),
            IndicatorState::Fault => self.apply(false, true, false),
        }
        Ok(())
    }
}

impl Drop for RppalIndicator {
    fn drop(&mut self) {
        self.apply(false, false, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // No test claims a pin: on a real door terminal `cargo test` must not move the relay.

    #[test]
    fn levels_and_error_kinds() {
        assert_eq!(level(true, true), Level::High);
        assert_eq!(level(true, false), Level::Low);
        assert_eq!(level(false, false), Level::High);
        use rppal::gpio::Error as E;
        assert_eq!(classify(&E::UnknownModel), ErrorKind::NotFound);
        assert_eq!(classify(&E::PinUsed(17)), ErrorKind::Busy);
        assert_eq!(
            classify(&E::PermissionDenied("/dev/gpiomem".into())),
            ErrorKind::Permission
        );
        let e = GpioError {
            pin: 17,
            op: "open GPIO",
            source: E::UnknownModel,
        };
        assert_eq!(
            e.to_string(),
            "GPIO 17: open GPIO: Unknown Raspberry Pi model"
        );
    }

    #[test]
    fn config_parses() {
        let c: LockPinConfig =
            toml::from_str("pin = 17\nactive_high = false\nstrike = \"fail-secure\"").unwrap();
        assert_eq!(c.strike, StrikeType::FailSecure);
        let i: InputPinConfig =
            toml::from_str("pin = 27\npull = \"up\"\nactive_high = false").unwrap();
        assert_eq!(i.debounce_ms, 20);
    }
}
