//! SIMULATED near-infrared camera (with emitter) and depth sensor, returning scripted frames.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{FaultSwitch, ReplayMode, SimError, lock};
use crate::camera::{Captured, DepthSource, IrEmitter, IrSource};
use crate::error::ErrorKind;
use crate::{DepthMap, GreyFrame, Intrinsics};

const IR: &str = "IR camera";
const EMITTER: &str = "IR emitter";
const DEPTH: &str = "depth sensor";

#[derive(Debug, Default)]
struct EmitterState {
    on: bool,
    dead: bool,
}

/// Pick the frame for sequence number `seq` from a script, honouring the replay mode.
fn scripted<T: Clone>(
    script: &[T],
    seq: u64,
    mode: ReplayMode,
    device: &'static str,
) -> Result<T, SimError> {
    let len = script.len() as u64;
    if len == 0 {
        return Err(SimError::new(
            device,
            ErrorKind::EndOfStream,
            "empty script",
        ));
    }
    if mode == ReplayMode::Stop && seq >= len {
        return Err(SimError::new(
            device,
            ErrorKind::EndOfStream,
            format!("all {len} frames replayed"),
        ));
    }
    Ok(script[(seq % len) as usize].clone())
}

/// SIMULATED NIR camera returning scripted frames, with its emitter built in.
///
/// Two scripts: frames seen with the emitter lit and with it off. Each call returns the next
/// frame of the script selected by the emitter's current state (both scripts share one frame
/// counter). In dead-emitter mode the "lit" command has no effect, so on and off frames are the
/// same unlit frames, exactly what the daemon's emitter self-test must detect. Switching takes
/// effect on the next frame ([`IrEmitter::settle_frames`] is 0). The emitter starts off.
pub struct SimIr {
    lit: Vec<GreyFrame>,
    unlit: Vec<GreyFrame>,
    mode: ReplayMode,
    next_seq: u64,
    emitter: Arc<Mutex<EmitterState>>,
    faults: FaultSwitch,
}

impl std::fmt::Debug for SimIr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimIr(SIMULATED)")
            .field("lit_frames", &self.lit.len())
            .field("unlit_frames", &self.unlit.len())
            .field("emitter", &*lock(&self.emitter))
            .finish_non_exhaustive()
    }
}

impl SimIr {
    /// A camera whose frames do not depend on the emitter (e.g. no emitter fitted, or
    /// ambient-lit fixtures). The script loops by default.
    pub fn new(frames: Vec<GreyFrame>) -> Self {
        Self::with_emitter(frames.clone(), frames)
    }

    /// A camera returning `lit` frames while the emitter is on and `unlit` ones while off.
    pub fn with_emitter(lit: Vec<GreyFrame>, unlit: Vec<GreyFrame>) -> Self {
        Self {
            lit,
            unlit,
            mode: ReplayMode::Loop,
            next_seq: 0,
            emitter: Arc::default(),
            faults: FaultSwitch::default(),
        }
    }

    /// Loop the scripts (default) or stop with `EndOfStream` after the last frame.
    pub fn mode(mut self, mode: ReplayMode) -> Self {
        self.mode = mode;
        self
    }

    /// Simulate a dead (or disconnected) emitter: frames are unlit whatever is commanded,
    /// while `set_emitter` still succeeds, as a real driver transistor would.
    pub fn set_dead_emitter(&self, dead: bool) {
        lock(&self.emitter).dead = dead;
    }

    /// A separate handle to this camera's emitter, for when the daemon owns the camera and the
    /// emitter as two devices (e.g. a V4L2 camera plus a GPIO-switched LED ring).
    pub fn emitter(&self) -> SimIrEmitter {
        SimIrEmitter {
            state: self.emitter.clone(),
            faults: FaultSwitch::default(),
        }
    }

    /// A handle to inject camera faults while the daemon owns this source.
    pub fn fault_switch(&self) -> FaultSwitch {
        self.faults.clone()
    }
}

impl IrSource for SimIr {
    type Error = SimError;

    fn next_ir(&mut self) -> Result<Captured<GreyFrame>, SimError> {
        self.faults.check(IR)?;
        let lit = {
            let s = lock(&self.emitter);
            s.on && !s.dead
        };
        let script = if lit { &self.lit } else { &self.unlit };
        let frame = scripted(script, self.next_seq, self.mode, IR)?;
        let sequence = self.next_seq;
        self.next_seq += 1;
        Ok(Captured {
            frame,
            timestamp: Instant::now(),
            sequence,
        })
    }
}

impl IrEmitter for SimIr {
    type Error = SimError;

    fn set_emitter(&mut self, on: bool) -> Result<(), SimError> {
        self.emitter().set_emitter(on)
    }

    fn emitter_on(&self) -> bool {
        lock(&self.emitter).on
    }

    fn settle_frames(&self) -> u32 {
        0
    }
}

/// SIMULATED IR emitter handle sharing state with a [`SimIr`] camera.
#[derive(Clone)]
pub struct SimIrEmitter {
    state: Arc<Mutex<EmitterState>>,
    faults: FaultSwitch,
}

impl std::fmt::Debug for SimIrEmitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimIrEmitter(SIMULATED)")
            .field("state", &*lock(&self.state))
            .finish()
    }
}

impl SimIrEmitter {
    /// Simulate a dead emitter (see [`SimIr::set_dead_emitter`]).
    pub fn set_dead(&self, dead: bool) {
        lock(&self.state).dead = dead;
    }

    /// A handle to make `set_emitter` itself fail (driver error, not a dead LED).
    pub fn fault_switch(&self) -> FaultSwitch {
        self.faults.clone()
    }
}

impl IrEmitter for SimIrEmitter {
    type Error = SimError;

    fn set_emitter(&mut self, on: bool) -> Result<(), SimError> {
        self.faults.check(EMITTER)?;
        lock(&self.state).on = on;
        Ok(())
    }

    fn emitter_on(&self) -> bool {
        lock(&self.state).on
    }

    fn settle_frames(&self) -> u32 {
        0
    }
}

/// SIMULATED depth sensor returning a scripted sequence of depth maps (loops by default).
pub struct SimDepth {
    frames: Vec<DepthMap>,
    intrinsics: Intrinsics,
    mode: ReplayMode,
    next_seq: u64,
    faults: FaultSwitch,
}

impl std::fmt::Debug for SimDepth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDepth(SIMULATED)")
            .field("frames", &self.frames.len())
            .field("intrinsics", &self.intrinsics)
            .finish_non_exhaustive()
    }
}

impl SimDepth {
    /// A sensor with these intrinsics returning `frames` in order.
    pub fn new(intrinsics: Intrinsics, frames: Vec<DepthMap>) -> Self {
        Self {
            frames,
            intrinsics,
            mode: ReplayMode::Loop,
            next_seq: 0,
            faults: FaultSwitch::default(),
        }
    }

    /// Loop the script (default) or stop with `EndOfStream` after the last map.
    pub fn mode(mut self, mode: ReplayMode) -> Self {
        self.mode = mode;
        self
    }

    /// A handle to inject faults while the daemon owns this source.
    pub fn fault_switch(&self) -> FaultSwitch {
        self.faults.clone()
    }
}

impl DepthSource for SimDepth {
    type Error = SimError;

    fn next_depth(&mut self) -> Result<Captured<DepthMap>, SimError> {
        self.faults.check(DEPTH)?;
        let frame = scripted(&self.frames, self.next_seq, self.mode, DEPTH)?;
        let sequence = self.next_seq;
        self.next_seq += 1;
        Ok(Captured {
            frame,
            timestamp: Instant::now(),
            sequence,
        })
    }

    fn intrinsics(&self) -> Intrinsics {
        self.intrinsics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn grey(v: u16) -> GreyFrame {
        GreyFrame::new(1, 1, 10, vec![v]).unwrap()
    }

    #[test]
    fn emitter_selects_script_and_dead_emitter_makes_on_equal_off() {
        let mut ir = SimIr::with_emitter(vec![grey(800)], vec![grey(100)]);
        assert!(!ir.emitter_on());
        assert_eq!(ir.next_ir().unwrap().frame.sample(0, 0), 100);
        ir.set_emitter(true).unwrap();
        assert_eq!(ir.next_ir().unwrap().frame.sample(0, 0), 800);
        // Through a separate emitter handle, as the daemon may hold it.
        let mut em = ir.emitter();
        em.set_emitter(false).unwrap();
        assert_eq!(ir.next_ir().unwrap().frame.sample(0, 0), 100);
        em.set_dead(true);
        em.set_emitter(true).unwrap();
        assert!(ir.emitter_on());
        let f = ir.next_ir().unwrap();
        assert_eq!((f.frame.sample(0, 0), f.sequence), (100, 3));
        ir.set_dead_emitter(false);
        assert_eq!(ir.next_ir().unwrap().frame.sample(0, 0), 800);
        em.fault_switch().set(ErrorKind::Other);
        assert_eq!(em.set_emitter(false).unwrap_err().kind(), ErrorKind::Other);
        assert!(format!("{ir:?} {em:?}").contains("SIMULATED"));
    }

    #[test]
    fn scripted_sequence_stop_and_faults() {
        let mut ir = SimIr::new(vec![grey(1), grey(2)]).mode(ReplayMode::Stop);
        assert_eq!(ir.next_ir().unwrap().frame.sample(0, 0), 1);
        ir.fault_switch().set(ErrorKind::Disconnected);
        assert_eq!(ir.next_ir().unwrap_err().kind(), ErrorKind::Disconnected);
        ir.fault_switch().clear();
        assert_eq!(ir.next_ir().unwrap().frame.sample(0, 0), 2);
        assert_eq!(ir.next_ir().unwrap_err().kind(), ErrorKind::EndOfStream);

        let k = Intrinsics {
            fx: 380.0,
            fy: 380.0,
            cx: 320.0,
            cy: 240.0,
        };
        let maps = vec![
            DepthMap::new(1, 1, vec![500]).unwrap(),
            DepthMap::new(1, 1, vec![0]).unwrap(),
        ];
        let mut d = SimDepth::new(k, maps);
        assert_eq!(d.intrinsics(), k);
        let got: Vec<Option<u16>> = (0..3)
            .map(|_| d.next_depth().unwrap().frame.depth_mm(0, 0))
            .collect();
        assert_eq!(got, [Some(500), None, Some(500)]);
        assert_eq!(
            SimDepth::new(k, vec![]).next_depth().unwrap_err().kind(),
            ErrorKind::EndOfStream
        );
    }
}
