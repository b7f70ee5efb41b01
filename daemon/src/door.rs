//! The last step of the data path: the door. Relay pulses, the hard on-time cap, and the
//! door-contact and exit-button logic, all on one dedicated blocking thread.
//!
//! **Fail-secure by construction.** The relay is driven to the locked state when the controller
//! starts, after every pulse, on every error, on shutdown, when the request channel closes, when
//! the thread unwinds (a drop guard), and from the process panic hook ([`RelayHandle::lock_now`]).
//! The maximum unlock time is enforced here, independently of whoever asked: a grant, the exit
//! button or a remote `open` can extend an unlock but never past `max_unlock_ms` after the relay
//! was first energised. A relay that cannot be driven to "locked" is retried on every poll and
//! reported as a fault.
//!
//! **Door contact** (optional). Opened while the lock is engaged (and not within a short grace
//! after relocking) = `door_forced`; open for `held_open_secs` after the lock re-engaged =
//! `door_held_open`. A contact that cannot be read is a fault (and the door logic assumes open:
//! the alarming state, as the wiring convention in [`crate::hal::DoorSensor`] prescribes).
//!
//! Every state change is reported as a [`DoorEvent`] through the callback given to
//! [`DoorController::run`]; the daemon turns them into outbox events and journal lines.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::DoorConfig;
use crate::hal::{DoorSensor, DoorState, ExitButton, LockOutput, LockState, StrikeType};

/// A relay the controller can drive, whatever its backend (object-safe view of [`LockOutput`]).
pub trait Relay: Send {
    /// Drive the coil to `state`; the error text is for logs.
    fn drive(&mut self, state: LockState) -> Result<(), String>;
}

impl<L: LockOutput + Send> Relay for L {
    fn drive(&mut self, state: LockState) -> Result<(), String> {
        match state {
            LockState::Energised => self.energise(),
            LockState::Released => self.release(),
        }
        .map_err(|e| e.to_string())
    }
}

/// Object-safe view of a [`DoorSensor`].
pub trait Contact: Send {
    /// Current (debounced) door position.
    fn read(&mut self) -> Result<DoorState, String>;
}

impl<S: DoorSensor + Send> Contact for S {
    fn read(&mut self) -> Result<DoorState, String> {
        self.door_state().map_err(|e| e.to_string())
    }
}

/// Object-safe view of an [`ExitButton`].
pub trait Button: Send {
    /// Whether the button is held now.
    fn pressed(&mut self) -> Result<bool, String>;
}

/// Adapter so an [`ExitButton`] can be boxed as a [`Button`] (a blanket impl would clash with
/// [`Contact`]'s for types implementing both).
pub struct ExitButtonInput<B>(pub B);

impl<B: ExitButton + Send> Button for ExitButtonInput<B> {
    fn pressed(&mut self) -> Result<bool, String> {
        self.0.is_pressed().map_err(|e| e.to_string())
    }
}

/// Shared access to the relay, so the panic hook can lock the door even if the door thread is
/// gone or stuck. Cloning gives another handle to the same relay.
#[derive(Clone)]
pub struct RelayHandle {
    relay: Arc<Mutex<Box<dyn Relay>>>,
    strike: StrikeType,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle")
            .field("strike", &self.strike)
            .finish()
    }
}

impl RelayHandle {
    /// Wrap a relay for a strike type. Does not drive it (the controller does on start).
    pub fn new(relay: Box<dyn Relay>, strike: StrikeType) -> Self {
        Self {
            relay: Arc::new(Mutex::new(relay)),
            strike,
        }
    }

    fn drive(&self, state: LockState) -> Result<(), String> {
        let mut r = self.relay.lock().unwrap_or_else(|e| e.into_inner());
        r.drive(state)
    }

    /// Drive the locked state now (panic hook, drop guard, shutdown). Waits at most ~200 ms
    /// for the relay mutex, so a panic inside a relay call cannot hang the hook.
    pub fn lock_now(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_millis(200);
        loop {
            match self.relay.try_lock() {
                Ok(mut r) => return r.drive(self.strike.locked_state()),
                Err(std::sync::TryLockError::Poisoned(p)) => {
                    return p.into_inner().drive(self.strike.locked_state());
                }
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(std::sync::TryLockError::WouldBlock) => {
                    return Err("relay busy: could not lock within 200 ms".into());
                }
            }
        }
    }
}

/// Why the door was unlocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnlockCause {
    /// A granted face: the person id.
    Face(String),
    /// The request-to-exit button.
    ExitButton,
    /// A verified remote `open` command: its request id.
    Remote(String),
}

/// A request to the door thread.
#[derive(Debug)]
pub enum DoorRequest {
    /// Unlock for `duration` (capped by `max_unlock_ms` since the relay was energised).
    Unlock {
        /// Why.
        cause: UnlockCause,
        /// Requested pulse.
        duration: Duration,
    },
    /// Lock immediately.
    Lock,
    /// Lock and end the thread.
    Shutdown,
}

/// A state change of the door, for events and the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DoorEvent {
    /// The relay was driven to unlocked (or an unlock was extended).
    Unlocked {
        /// Why.
        cause: UnlockCause,
        /// Until the relock, from now.
        for_ms: u64,
    },
    /// The relay was driven back to locked.
    Relocked {
        /// Whether the hard cap (not the pulse end) forced it.
        capped: bool,
    },
    /// The contact reports the door opened.
    Opened,
    /// The contact reports the door closed.
    Closed,
    /// The door stayed open after the lock re-engaged.
    HeldOpen {
        /// For how long so far.
        secs: u64,
    },
    /// The door opened while locked.
    Forced,
    /// The exit button was pressed.
    ExitButton,
    /// Hardware trouble (relay, contact, button).
    Fault(String),
    /// A fault cleared.
    FaultCleared(&'static str),
}

/// After relocking, the door may still swing open for this long without counting as forced
/// (the person pushed just as the pulse ended; the bolt needs time to engage).
const RELOCK_GRACE: Duration = Duration::from_millis(1500);

/// Owns the relay and inputs; see the module docs.
pub struct DoorController {
    relay: RelayHandle,
    contact: Option<Box<dyn Contact>>,
    button: Option<Box<dyn Button>>,
    cfg: DoorConfig,
}

impl std::fmt::Debug for DoorController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DoorController")
            .field("contact", &self.contact.is_some())
            .field("button", &self.button.is_some())
            .finish()
    }
}

/// Locks the relay when dropped: the thread's last act, even when it unwinds.
struct LockOnDrop(RelayHandle);

impl Drop for LockOnDrop {
    fn drop(&mut self) {
        let _ = self.0.lock_now();
    }
}

struct State {
    unlocked_since: Option<Instant>,
    until: Option<Instant>,
    relocked_at: Option<Instant>,
    door: Option<DoorState>,
    open_since: Option<Instant>,
    held_reported: u64,
    button_was: bool,
    relay_fault: bool,
    contact_fault: bool,
    button_fault: bool,
}

impl DoorController {
    /// A controller for `cfg` (validated by [`crate::config::Config`]).
    pub fn new(
        relay: RelayHandle,
        contact: Option<Box<dyn Contact>>,
        button: Option<Box<dyn Button>>,
        cfg: DoorConfig,
    ) -> Self {
        Self {
            relay,
            contact,
            button,
            cfg,
        }
    }

    /// Run until [`DoorRequest::Shutdown`] or until every sender is gone; the relay is locked
    /// on return (and on unwind).
    pub fn run(mut self, rx: Receiver<DoorRequest>, mut emit: impl FnMut(DoorEvent)) {
        let guard = LockOnDrop(self.relay.clone());
        let locked = self.cfg.strike.locked_state();
        let unlocked = self.cfg.strike.unlocked_state();
        let max = Duration::from_millis(self.cfg.max_unlock_ms);
        let poll = Duration::from_millis(self.cfg.poll_ms);
        let held = Duration::from_secs(self.cfg.held_open_secs);
        let mut st = State {
            unlocked_since: None,
            until: None,
            relocked_at: None,
            door: None,
            open_since: None,
            held_reported: 0,
            button_was: false,
            relay_fault: false,
            contact_fault: false,
            button_fault: false,
        };
        // Start locked, whatever the relay did before.
        self.relock(&mut st, locked, false, &mut emit);
        loop {
            let mut request = match rx.recv_timeout(poll) {
                Ok(r) => Some(r),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(DoorRequest::Shutdown),
            };
            let now = Instant::now();
            // Exit button: a press (rising edge) is an unlock request like any other.
            if let Some(b) = self.button.as_mut() {
                match b.pressed() {
                    Ok(p) => {
                        if st.button_fault {
                            st.button_fault = false;
                            emit(DoorEvent::FaultCleared("exit_button"));
                        }
                        if p && !st.button_was {
                            emit(DoorEvent::ExitButton);
                            if request.is_none() {
                                request = Some(DoorRequest::Unlock {
                                    cause: UnlockCause::ExitButton,
                                    duration: Duration::from_millis(self.cfg.exit_unlock_ms),
                                });
                            }
                        }
                        st.button_was = p;
                    }
                    Err(e) if !st.button_fault => {
                        st.button_fault = true;
                        emit(DoorEvent::Fault(format!("exit button unreadable: {e}")));
                    }
                    Err(_) => {}
                }
            }
            match request {
                Some(DoorRequest::Shutdown) => {
                    self.relock(&mut st, locked, false, &mut emit);
                    break;
                }
                Some(DoorRequest::Lock) if st.unlocked_since.is_some() => {
                    self.relock(&mut st, locked, false, &mut emit);
                }
                Some(DoorRequest::Lock) => {}
                Some(DoorRequest::Unlock { cause, duration }) => {
                    let since = st.unlocked_since.unwrap_or(now);
                    let until = (now + duration).min(since + max);
                    if until <= now {
                        // Already at the cap: the relay stays as it is until the cap relocks.
                    } else {
                        match self.relay.drive(unlocked) {
                            Ok(()) => {
                                st.unlocked_since = Some(since);
                                st.until = Some(until);
                                emit(DoorEvent::Unlocked {
                                    cause,
                                    for_ms: (until - now).as_millis() as u64,
                                });
                            }
                            Err(e) => {
                                emit(DoorEvent::Fault(format!("relay unlock failed: {e}")));
                                self.relock(&mut st, locked, false, &mut emit);
                            }
                        }
                    }
                }
                None => {}
            }
            // Pulse end and the hard cap, checked on every poll.
            if let Some(since) = st.unlocked_since {
                let capped = now >= since + max;
                if capped || st.until.is_some_and(|u| now >= u) {
                    self.relock(&mut st, locked, capped, &mut emit);
                }
            } else if st.relay_fault {
                // A relock that failed earlier: keep trying every poll.
                self.relock(&mut st, locked, false, &mut emit);
            }
            self.poll_contact(&mut st, now, held, &mut emit);
        }
        drop(guard);
    }

    fn relock(
        &mut self,
        st: &mut State,
        locked: LockState,
        capped: bool,
        emit: &mut impl FnMut(DoorEvent),
    ) {
        let was_unlocked = st.unlocked_since.is_some();
        st.unlocked_since = None;
        st.until = None;
        match self.relay.drive(locked) {
            Ok(()) => {
                if st.relay_fault {
                    st.relay_fault = false;
                    emit(DoorEvent::FaultCleared("relay"));
                }
                if was_unlocked {
                    st.relocked_at = Some(Instant::now());
                    emit(DoorEvent::Relocked { capped });
                }
            }
            Err(e) => {
                if !st.relay_fault {
                    emit(DoorEvent::Fault(format!(
                        "relay could not be driven to locked: {e}"
                    )));
                }
                st.relay_fault = true;
            }
        }
    }

    fn poll_contact(
        &mut self,
        st: &mut State,
        now: Instant,
        held: Duration,
        emit: &mut impl FnMut(DoorEvent),
    ) {
        let Some(c) = self.contact.as_mut() else {
            return;
        };
        let door = match c.read() {
            Ok(d) => {
                if st.contact_fault {
                    st.contact_fault = false;
                    emit(DoorEvent::FaultCleared("door_contact"));
                }
                d
            }
            Err(e) => {
                if !st.contact_fault {
                    st.contact_fault = true;
                    emit(DoorEvent::Fault(format!(
                        "door contact unreadable (treated as open): {e}"
                    )));
                }
                DoorState::Open
            }
        };
        let previous = st.door.replace(door);
        match (previous, door) {
            (Some(DoorState::Closed), DoorState::Open) => {
                emit(DoorEvent::Opened);
                st.open_since = Some(now);
                st.held_reported = 0;
                let in_grace = st.relocked_at.is_some_and(|t| now < t + RELOCK_GRACE);
                if st.unlocked_since.is_none() && !in_grace && !st.contact_fault {
                    emit(DoorEvent::Forced);
                }
            }
            (Some(DoorState::Open), DoorState::Closed) => {
                emit(DoorEvent::Closed);
                st.open_since = None;
                st.held_reported = 0;
            }
            (None, DoorState::Open) => st.open_since = Some(now),
            _ => {}
        }
        // Held open: counted from the later of "opened" and "lock re-engaged".
        if door == DoorState::Open && st.unlocked_since.is_none() {
            let from = match (st.open_since, st.relocked_at) {
                (Some(o), Some(r)) => o.max(r),
                (Some(o), None) => o,
                _ => return,
            };
            let open_for = now.saturating_duration_since(from);
            // Report once at the limit, then once per further limit period.
            let periods = open_for.as_secs() / held.as_secs().max(1);
            if open_for >= held && periods > st.held_reported {
                st.held_reported = periods;
                emit(DoorEvent::HeldOpen {
                    secs: open_for.as_secs(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hal::sim::{SimDoorSensor, SimExitButton, SimLock};
    use crate::hal::{ErrorKind, LockState};
    use std::sync::mpsc;

    fn cfg() -> DoorConfig {
        DoorConfig {
            lock: crate::config::LockBackend::Simulated,
            unlock_ms: 200,
            max_unlock_ms: 400,
            exit_unlock_ms: 200,
            held_open_secs: 1,
            poll_ms: 5,
            ..DoorConfig::default()
        }
    }

    type Events = Arc<Mutex<Vec<(Instant, DoorEvent)>>>;

    fn start(
        lock: SimLock,
        contact: Option<SimDoorSensor>,
        button: Option<SimExitButton>,
    ) -> (
        mpsc::Sender<DoorRequest>,
        Events,
        std::thread::JoinHandle<()>,
    ) {
        let relay = RelayHandle::new(Box::new(lock), StrikeType::FailSecure);
        let ctl = DoorController::new(
            relay,
            contact.map(|c| Box::new(c) as Box<dyn Contact>),
            button.map(|b| Box::new(ExitButtonInput(b)) as Box<dyn Button>),
            cfg(),
        );
        let (tx, rx) = mpsc::channel();
        let events: Events = Arc::default();
        let ev = events.clone();
        let h = std::thread::spawn(move || {
            ctl.run(rx, |e| ev.lock().unwrap().push((Instant::now(), e)))
        });
        (tx, events, h)
    }

    fn kinds(ev: &Events) -> Vec<DoorEvent> {
        ev.lock().unwrap().iter().map(|(_, e)| e.clone()).collect()
    }

    #[test]
    fn pulse_then_relock_and_locked_at_exit() {
        let lock = SimLock::new(StrikeType::FailSecure);
        let probe = lock.probe();
        let (tx, ev, h) = start(lock, None, None);
        tx.send(DoorRequest::Unlock {
            cause: UnlockCause::Face("p1".into()),
            duration: Duration::from_millis(100),
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(probe.state(), LockState::Energised);
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(probe.state(), LockState::Released);
        tx.send(DoorRequest::Shutdown).unwrap();
        h.join().unwrap();
        assert_eq!(probe.state(), LockState::Released);
        let k = kinds(&ev);
        assert!(matches!(k[0], DoorEvent::Unlocked { .. }), "{k:?}");
        assert_eq!(k[1], DoorEvent::Relocked { capped: false });
    }

    #[test]
    fn hard_cap_holds_against_repeated_requests() {
        let lock = SimLock::new(StrikeType::FailSecure);
        let probe = lock.probe();
        let (tx, ev, h) = start(lock, None, None);
        let t0 = Instant::now();
        // Keep asking for long unlocks faster than they end: the cap (400 ms) must still win.
        while t0.elapsed() < Duration::from_millis(700) {
            tx.send(DoorRequest::Unlock {
                cause: UnlockCause::Remote("r".into()),
                duration: Duration::from_secs(60),
            })
            .unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(tx);
        h.join().unwrap();
        let t = probe.transitions();
        // The first energised period ends within the cap plus a poll or two.
        let on = t
            .iter()
            .find(|x| x.state == LockState::Energised)
            .unwrap()
            .at;
        let off = t
            .iter()
            .find(|x| x.state == LockState::Released && x.at > on)
            .unwrap()
            .at;
        let held = off - on;
        assert!(
            held >= Duration::from_millis(390) && held < Duration::from_millis(480),
            "unlocked for {held:?}"
        );
        assert!(kinds(&ev).contains(&DoorEvent::Relocked { capped: true }));
        assert_eq!(probe.state(), LockState::Released);
    }

    #[test]
    fn relay_failure_locks_and_reports_and_never_unlocks() {
        let lock = SimLock::new(StrikeType::FailSecure);
        let probe = lock.probe();
        probe.fault_switch().set(ErrorKind::Other);
        let (tx, ev, h) = start(lock, None, None);
        tx.send(DoorRequest::Unlock {
            cause: UnlockCause::Face("p".into()),
            duration: Duration::from_millis(100),
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(probe.state(), LockState::Released);
        probe.fault_switch().clear();
        std::thread::sleep(Duration::from_millis(50));
        drop(tx);
        h.join().unwrap();
        let k = kinds(&ev);
        assert!(
            k.iter()
                .any(|e| matches!(e, DoorEvent::Fault(m) if m.contains("could not be driven"))),
            "{k:?}"
        );
        assert!(k.contains(&DoorEvent::FaultCleared("relay")), "{k:?}");
        assert!(
            !probe
                .transitions()
                .iter()
                .any(|t| t.state == LockState::Energised)
        );
    }

    #[test]
    fn forced_and_held_open_and_exit_button() {
        let lock = SimLock::new(StrikeType::FailSecure);
        let probe = lock.probe();
        let contact = SimDoorSensor::new(DoorState::Closed);
        let button = SimExitButton::new();
        let (tx, ev, h) = start(lock, Some(contact.clone()), Some(button.clone()));
        std::thread::sleep(Duration::from_millis(30));
        // Forced: opened while locked.
        contact.set(DoorState::Open);
        std::thread::sleep(Duration::from_millis(30));
        contact.set(DoorState::Closed);
        std::thread::sleep(Duration::from_millis(30));
        // Exit button: unlocks; opening now is legitimate; staying open after relock = held.
        button.set_pressed(true);
        std::thread::sleep(Duration::from_millis(30));
        button.set_pressed(false);
        assert_eq!(probe.state(), LockState::Energised);
        contact.set(DoorState::Open);
        std::thread::sleep(Duration::from_millis(1500));
        drop(tx);
        h.join().unwrap();
        let k = kinds(&ev);
        let forced = k.iter().filter(|e| **e == DoorEvent::Forced).count();
        assert_eq!(forced, 1, "{k:?}");
        assert!(k.contains(&DoorEvent::ExitButton), "{k:?}");
        assert!(
            k.iter().any(|e| matches!(
                e,
                DoorEvent::Unlocked {
                    cause: UnlockCause::ExitButton,
                    ..
                }
            )),
            "{k:?}"
        );
        assert!(
            k.iter().any(|e| matches!(e, DoorEvent::HeldOpen { .. })),
            "{k:?}"
        );
        assert_eq!(probe.state(), LockState::Released);
    }

    #[test]
    fn panic_in_the_door_thread_leaves_it_locked() {
        let lock = SimLock::new(StrikeType::FailSecure);
        let probe = lock.probe();
        let relay = RelayHandle::new(Box::new(lock), StrikeType::FailSecure);
        let ctl = DoorController::new(relay, None, None, cfg());
        let (tx, rx) = mpsc::channel();
        let h = std::thread::spawn(move || {
            ctl.run(rx, |e| {
                if matches!(e, DoorEvent::Unlocked { .. }) {
                    panic!("simulated bug after unlocking");
                }
            })
        });
        tx.send(DoorRequest::Unlock {
            cause: UnlockCause::Face("p".into()),
            duration: Duration::from_secs(5),
        })
        .unwrap();
        assert!(h.join().is_err());
        assert_eq!(probe.state(), LockState::Released);
        assert!(
            probe
                .transitions()
                .iter()
                .any(|t| t.state == LockState::Energised)
        );
    }
}
