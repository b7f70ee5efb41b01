//! SIMULATED door hardware: a lock that records its history, scriptable inputs, an indicator.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{FaultSwitch, SimError, lock};
use crate::door::{DoorSensor, DoorState, ExitButton, LockOutput, LockState, StrikeType};
use crate::indicator::{Indicator, IndicatorState};

const LOCK: &str = "lock relay";

/// One change of the simulated relay's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockTransition {
    /// When the output changed.
    pub at: Instant,
    /// The state it changed to.
    pub state: LockState,
}

#[derive(Debug)]
struct LockShared {
    state: LockState,
    history: Vec<LockTransition>,
    failed_attempts: u64,
}

/// SIMULATED lock relay. Like the GPIO backend it drives the strike's locked state on
/// construction and again when dropped; every state change is recorded with its time, for
/// tests to assert on through a [`SimLockProbe`].
pub struct SimLock {
    shared: Arc<Mutex<LockShared>>,
    strike: StrikeType,
    faults: FaultSwitch,
}

impl std::fmt::Debug for SimLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimLock(SIMULATED)")
            .field("strike", &self.strike)
            .field("state", &lock(&self.shared).state)
            .finish()
    }
}

impl SimLock {
    /// A relay for this strike type, starting (and recorded as starting) in the locked state.
    pub fn new(strike: StrikeType) -> Self {
        let state = strike.locked_state();
        Self {
            shared: Arc::new(Mutex::new(LockShared {
                state,
                history: vec![LockTransition {
                    at: Instant::now(),
                    state,
                }],
                failed_attempts: 0,
            })),
            strike,
            faults: FaultSwitch::default(),
        }
    }

    /// A handle that keeps reading the history (and injecting faults) after the lock itself
    /// has been moved into the daemon or dropped.
    pub fn probe(&self) -> SimLockProbe {
        SimLockProbe {
            shared: self.shared.clone(),
            faults: self.faults.clone(),
        }
    }

    fn drive(&mut self, state: LockState) -> Result<(), SimError> {
        let mut s = lock(&self.shared);
        if let Err(e) = self.faults.check(LOCK) {
            // A failed write leaves the output where it was.
            s.failed_attempts += 1;
            return Err(e);
        }
        if s.state != state {
            s.state = state;
            s.history.push(LockTransition {
                at: Instant::now(),
                state,
            });
        }
        Ok(())
    }
}

impl LockOutput for SimLock {
    type Error = SimError;

    fn energise(&mut self) -> Result<(), SimError> {
        self.drive(LockState::Energised)
    }

    fn release(&mut self) -> Result<(), SimError> {
        self.drive(LockState::Released)
    }

    fn state(&self) -> LockState {
        lock(&self.shared).state
    }
}

impl Drop for SimLock {
    fn drop(&mut self) {
        // Same contract as the GPIO backend: leave the door locked. An injected fault models
        // a broken driver, which cannot do that either.
        let _ = self.drive(self.strike.locked_state());
    }
}

/// Test-side view of a [`SimLock`]: history, current state, fault injection.
#[derive(Clone)]
pub struct SimLockProbe {
    shared: Arc<Mutex<LockShared>>,
    faults: FaultSwitch,
}

impl std::fmt::Debug for SimLockProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimLockProbe(SIMULATED)")
            .finish_non_exhaustive()
    }
}

impl SimLockProbe {
    /// Every state the relay took, in order, starting with the locked state at construction.
    pub fn transitions(&self) -> Vec<LockTransition> {
        lock(&self.shared).history.clone()
    }

    /// Just the sequence of states, for compact assertions.
    pub fn states(&self) -> Vec<LockState> {
        lock(&self.shared).history.iter().map(|t| t.state).collect()
    }

    /// The current output state.
    pub fn state(&self) -> LockState {
        lock(&self.shared).state
    }

    /// How many energise/release calls failed because of an injected fault.
    pub fn failed_attempts(&self) -> u64 {
        lock(&self.shared).failed_attempts
    }

    /// While set, energise/release fail with the given kind and the output does not change.
    pub fn fault_switch(&self) -> FaultSwitch {
        self.faults.clone()
    }
}

/// SIMULATED door contact. Clones share one state: the test keeps a clone to open and close
/// the "door" while the daemon polls another.
#[derive(Clone)]
pub struct SimDoorSensor {
    state: Arc<Mutex<DoorState>>,
    faults: FaultSwitch,
}

impl std::fmt::Debug for SimDoorSensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimDoorSensor(SIMULATED, {:?})", *lock(&self.state))
    }
}

impl SimDoorSensor {
    /// A contact reporting `initial`.
    pub fn new(initial: DoorState) -> Self {
        Self {
            state: Arc::new(Mutex::new(initial)),
            faults: FaultSwitch::default(),
        }
    }

    /// Move the simulated door.
    pub fn set(&self, state: DoorState) {
        *lock(&self.state) = state;
    }

    /// A handle to inject read faults.
    pub fn fault_switch(&self) -> FaultSwitch {
        self.faults.clone()
    }
}

impl DoorSensor for SimDoorSensor {
    type Error = SimError;

    fn door_state(&mut self) -> Result<DoorState, SimError> {
        self.faults.check("door sensor")?;
        Ok(*lock(&self.state))
    }
}

/// SIMULATED exit button (already debounced). Clones share one state.
#[derive(Clone, Default)]
pub struct SimExitButton {
    pressed: Arc<Mutex<bool>>,
    faults: FaultSwitch,
}

impl std::fmt::Debug for SimExitButton {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SimExitButton(SIMULATED, pressed: {})",
            *lock(&self.pressed)
        )
    }
}

impl SimExitButton {
    /// A released button.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hold the button down (`true`) or let go (`false`).
    pub fn set_pressed(&self, pressed: bool) {
        *lock(&self.pressed) = pressed;
    }

    /// A handle to inject read faults.
    pub fn fault_switch(&self) -> FaultSwitch {
        self.faults.clone()
    }
}

impl ExitButton for SimExitButton {
    type Error = SimError;

    fn is_pressed(&mut self) -> Result<bool, SimError> {
        self.faults.check("exit button")?;
        Ok(*lock(&self.pressed))
    }
}

/// SIMULATED indicator recording every state it was set to. Clones share the history.
#[derive(Clone, Default)]
pub struct SimIndicator {
    history: Arc<Mutex<Vec<(Instant, IndicatorState)>>>,
    faults: FaultSwitch,
}

impl std::fmt::Debug for SimIndicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimIndicator(SIMULATED, {:?})", self.state())
    }
}

impl SimIndicator {
    /// An indicator that is off.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last state set (`Off` before any call).
    pub fn state(&self) -> IndicatorState {
        lock(&self.history)
            .last()
            .map_or(IndicatorState::Off, |e| e.1)
    }

    /// Every state set, with when, in order.
    pub fn history(&self) -> Vec<(Instant, IndicatorState)> {
        lock(&self.history).clone()
    }

    /// A handle to inject write faults.
    pub fn fault_switch(&self) -> FaultSwitch {
        self.faults.clone()
    }
}

impl Indicator for SimIndicator {
    type Error = SimError;

    fn set_indicator(&mut self, state: IndicatorState) -> Result<(), SimError> {
        self.faults.check("indicator")?;
        lock(&self.history).push((Instant::now(), state));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use crate::error::Error;
    use LockState::*;

    #[test]
    fn lock_records_transitions_and_locks_on_drop() {
        let mut l = SimLock::new(StrikeType::FailSecure);
        let probe = l.probe();
        assert_eq!(l.state(), Released);
        l.energise().unwrap();
        l.energise().unwrap(); // no change, not a transition
        l.release().unwrap();
        l.energise().unwrap();
        assert_eq!(probe.states(), [Released, Energised, Released, Energised]);
        let t = probe.transitions();
        assert!(t.windows(2).all(|w| w[0].at <= w[1].at));
        drop(l);
        assert_eq!(
            probe.states(),
            [Released, Energised, Released, Energised, Released]
        );
        assert_eq!(probe.state(), Released);

        // A fail-safe maglock is locked when energised.
        let l = SimLock::new(StrikeType::FailSafe);
        assert_eq!(l.probe().states(), [Energised]);
    }

    #[test]
    fn lock_failure_leaves_state_unchanged() {
        let mut l = SimLock::new(StrikeType::FailSecure);
        let probe = l.probe();
        probe.fault_switch().set(ErrorKind::Other);
        let err = l.energise().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Other);
        assert!(err.to_string().contains("SIMULATED lock relay"));
        assert_eq!((l.state(), probe.failed_attempts()), (Released, 1));
        probe.fault_switch().clear();
        l.energise().unwrap();
        assert_eq!(probe.states(), [Released, Energised]);
    }

    #[test]
    fn inputs_and_indicator() {
        let door = SimDoorSensor::new(DoorState::Closed);
        let mut daemon_side = door.clone();
        assert_eq!(daemon_side.door_state().unwrap(), DoorState::Closed);
        door.set(DoorState::Open);
        assert_eq!(daemon_side.door_state().unwrap(), DoorState::Open);
        door.fault_switch().set(ErrorKind::Disconnected);
        assert_eq!(
            daemon_side.door_state().unwrap_err().kind(),
            ErrorKind::Disconnected
        );

        let button = SimExitButton::new();
        let mut b = button.clone();
        assert!(!b.is_pressed().unwrap());
        button.set_pressed(true);
        assert!(b.is_pressed().unwrap());

        let ind = SimIndicator::new();
        let mut i = ind.clone();
        assert_eq!(ind.state(), IndicatorState::Off);
        i.set_indicator(IndicatorState::Granted).unwrap();
        i.set_indicator(IndicatorState::Off).unwrap();
        let states: Vec<_> = ind.history().into_iter().map(|e| e.1).collect();
        assert_eq!(states, [IndicatorState::Granted, IndicatorState::Off]);
        assert!(
            format!("{ind:?}{button:?}{door:?}")
                .matches("SIMULATED")
                .count()
                == 3
        );
    }
}
