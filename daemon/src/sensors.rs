//! The liveness sensors beside the RGB camera: a near-infrared camera and a depth sensor, each
//! captured on its own thread into a one-frame mailbox, and paired with an RGB frame by capture
//! time when a worker needs evidence.
//!
//! A sensor that is not configured gives [`Reading::Absent`]; one whose thread reports an error,
//! or whose newest frame is further than `max_skew_ms` from the RGB frame, gives
//! [`Reading::Faulty`] with the reason — so a policy that *requires* it denies with that reason
//! (there is no fail-open path). The sensors are assumed co-registered with the RGB camera (same
//! optical axis, e.g. an RGB-D module with depth aligned to colour) with pinhole intrinsics from
//! each sensor's horizontal field of view; boards with a calibrated offset need a calibration
//! file (not supported by the daemon yet: `docs/liveness.md`).
//!
//! The IR emitter is left as the board powers it: the on/off differential and emitter
//! self-test of [`crate::liveness::ir`] need emitter control, which the daemon does not drive
//! yet, so the IR check runs on the lit frame alone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::hal::registration::{CameraModel, RegistrationError};
use crate::hal::v4l2::{PixelFormat, V4l2Config};
use crate::hal::{Captured, DepthMap, DepthSource, GreyFrame, IrSource, Registration};
use crate::liveness::Reading;
use crate::liveness::fusion::{co_registered, intrinsics_for_hfov};

/// Backend of an optional sensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SensorSource {
    /// Not fitted.
    #[default]
    None,
    /// A V4L2 device.
    V4l2,
}

/// `[ir]` or `[depth]`: an optional liveness sensor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SensorConfig {
    /// Backend.
    pub source: SensorSource,
    /// Device node (required when `source = "v4l2"`).
    pub device: Option<std::path::PathBuf>,
    /// Pixel format (`grey`, `y10`, `y16` for IR, default `grey`; `z16` for depth, the default).
    pub format: Option<PixelFormat>,
    /// Requested width.
    pub width: u32,
    /// Requested height.
    pub height: u32,
    /// Requested frame rate.
    pub fps: u32,
    /// Horizontal field of view, degrees (pinhole intrinsics are derived from it).
    pub hfov_deg: f64,
    /// Largest capture-time difference to the RGB frame for a pair, ms.
    pub max_skew_ms: u64,
    /// Depth only: micrometres per count (1000 = 1 mm).
    pub depth_unit_um: u32,
}

impl Default for SensorConfig {
    fn default() -> Self {
        Self {
            source: SensorSource::None,
            device: None,
            format: None,
            width: 640,
            height: 480,
            fps: 15,
            hfov_deg: 60.0,
            max_skew_ms: 100,
            depth_unit_um: 1000,
        }
    }
}

impl SensorConfig {
    /// `[ir]` defaults (not fitted).
    pub fn ir_default() -> Self {
        Self::default()
    }

    /// `[depth]` defaults (not fitted).
    pub fn depth_default() -> Self {
        Self::default()
    }

    fn format_for(&self, table: &str) -> PixelFormat {
        self.format.unwrap_or(if table == "ir" {
            PixelFormat::Grey
        } else {
            PixelFormat::Z16
        })
    }

    /// Range checks, naming the key (`table` is `ir` or `depth`).
    pub fn validate(&self, table: &str) -> Result<(), String> {
        if self.source == SensorSource::None {
            return Ok(());
        }
        if self.device.is_none() {
            return Err(format!(
                "{table}.device is required when {table}.source = \"v4l2\""
            ));
        }
        let f = self.format_for(table);
        let ok_format = match table {
            "ir" => matches!(f, PixelFormat::Grey | PixelFormat::Y10 | PixelFormat::Y16),
            _ => f == PixelFormat::Z16,
        };
        if !ok_format {
            return Err(format!(
                "{table}.format = {f:?} is not valid for this sensor"
            ));
        }
        if !(16..=4096).contains(&self.width) || !(16..=4096).contains(&self.height) {
            return Err(format!("{table}.width/height must be in [16, 4096]"));
        }
        if !(1..=120).contains(&self.fps) {
            return Err(format!("{table}.fps = {} must be in [1, 120]", self.fps));
        }
        if !(20.0..=150.0).contains(&self.hfov_deg) {
            return Err(format!(
                "{table}.hfov_deg = {} must be in [20, 150]",
                self.hfov_deg
            ));
        }
        if !(5..=1000).contains(&self.max_skew_ms) {
            return Err(format!(
                "{table}.max_skew_ms = {} must be in [5, 1000]",
                self.max_skew_ms
            ));
        }
        Ok(())
    }

    fn model(&self) -> CameraModel {
        CameraModel {
            width: self.width,
            height: self.height,
            intrinsics: intrinsics_for_hfov(self.width, self.height, self.hfov_deg),
        }
    }

    fn v4l2(&self, table: &str) -> V4l2Config {
        let mut v = V4l2Config::new(
            self.device.clone().unwrap_or_default(),
            self.format_for(table),
            self.width,
            self.height,
        );
        v.fps = Some(self.fps);
        v.depth_unit_um = self.depth_unit_um;
        v
    }
}

struct Slot<T> {
    latest: Mutex<Option<Captured<T>>>,
    fault: Mutex<Option<String>>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self {
            latest: Mutex::new(None),
            fault: Mutex::new(None),
        }
    }
}

impl<T: Clone> Slot<T> {
    fn reading(&self, at: Instant, max_skew: Duration) -> Reading<T> {
        if let Some(f) = self.fault.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Reading::Faulty(f);
        }
        match &*self.latest.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Reading::Faulty("no frame received yet".into()),
            Some(c) => {
                let skew = if c.timestamp > at {
                    c.timestamp - at
                } else {
                    at - c.timestamp
                };
                if skew > max_skew {
                    Reading::Faulty(format!(
                        "newest frame is {} ms from the RGB frame (limit {} ms)",
                        skew.as_millis(),
                        max_skew.as_millis()
                    ))
                } else {
                    Reading::Present(c.frame.clone())
                }
            }
        }
    }
}

/// The running IR/depth capture threads and how to pair their frames with RGB frames.
pub struct Sensors {
    ir: Option<(Arc<Slot<GreyFrame>>, Duration)>,
    depth: Option<(Arc<Slot<DepthMap>>, Duration)>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    registration: Option<Registration>,
}

impl std::fmt::Debug for Sensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sensors")
            .field("ir", &self.ir.is_some())
            .field("depth", &self.depth.is_some())
            .finish()
    }
}

/// Evidence for one RGB frame (owned, so the worker can borrow it for the policy).
#[derive(Debug)]
pub struct SensorReadings {
    /// NIR frame.
    pub ir: Reading<GreyFrame>,
    /// Depth map.
    pub depth: Reading<DepthMap>,
}

fn spawn_capture<T: Send + 'static>(
    name: &str,
    slot: Arc<Slot<T>>,
    stop: Arc<AtomicBool>,
    mut next: impl FnMut() -> Result<Captured<T>, String> + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let what = name.to_string();
    std::thread::Builder::new().name(name.into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match next() {
                Ok(c) => {
                    *slot.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
                    slot.fault.lock().unwrap_or_else(|e| e.into_inner()).take();
                }
                Err(e) => {
                    let mut f = slot.fault.lock().unwrap_or_else(|e| e.into_inner());
                    if f.is_none() {
                        tracing::error!(facegate_event = "fault", fault_source = %what, detail = %e, "{what} fault: {e}");
                    }
                    *f = Some(e);
                    drop(f);
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    })
}

impl Sensors {
    /// No IR or depth sensor (RGB-only board).
    pub fn none() -> Self {
        Self {
            ir: None,
            depth: None,
            stop: Arc::default(),
            threads: Vec::new(),
            registration: None,
        }
    }

    /// Open the configured sensors and start their capture threads. `rgb` is the colour
    /// camera's model (size and field of view), needed to map face boxes into sensor pixels.
    pub fn start(
        rgb: CameraModel,
        ir: &SensorConfig,
        depth: &SensorConfig,
    ) -> Result<Self, String> {
        let mut s = Self::none();
        let ir_model = (ir.source != SensorSource::None).then(|| ir.model());
        let depth_model = (depth.source != SensorSource::None).then(|| depth.model());
        if ir_model.is_none() && depth_model.is_none() {
            return Ok(s);
        }
        s.registration = Some(
            co_registered(rgb, ir_model, depth_model)
                .map_err(|e: RegistrationError| format!("sensor geometry: {e}"))?,
        );
        if ir.source == SensorSource::V4l2 {
            let mut dev =
                crate::hal::v4l2::V4l2Ir::open(&ir.v4l2("ir")).map_err(|e| e.to_string())?;
            let slot: Arc<Slot<GreyFrame>> = Arc::default();
            s.threads.push(
                spawn_capture("ir", slot.clone(), s.stop.clone(), move || {
                    dev.next_ir().map_err(|e| e.to_string())
                })
                .map_err(|e| e.to_string())?,
            );
            s.ir = Some((slot, Duration::from_millis(ir.max_skew_ms)));
        }
        if depth.source == SensorSource::V4l2 {
            let intr = depth.model().intrinsics;
            let mut dev = crate::hal::v4l2::V4l2Depth::open(&depth.v4l2("depth"), intr)
                .map_err(|e| e.to_string())?;
            let slot: Arc<Slot<DepthMap>> = Arc::default();
            s.threads.push(
                spawn_capture("depth", slot.clone(), s.stop.clone(), move || {
                    dev.next_depth().map_err(|e| e.to_string())
                })
                .map_err(|e| e.to_string())?,
            );
            s.depth = Some((slot, Duration::from_millis(depth.max_skew_ms)));
        }
        Ok(s)
    }

    /// The geometry the liveness policy needs when IR or depth data is given.
    pub fn registration(&self) -> Option<Registration> {
        self.registration.clone()
    }

    /// Readings paired with an RGB frame captured at `at`.
    pub fn readings(&self, at: Instant) -> SensorReadings {
        SensorReadings {
            ir: match &self.ir {
                None => Reading::Absent,
                Some((slot, skew)) => slot.reading(at, *skew),
            },
            depth: match &self.depth {
                None => Reading::Absent,
                Some((slot, skew)) => slot.reading(at, *skew),
            },
        }
    }

    /// Stop the capture threads.
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Sensors {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairing_by_capture_time_and_faults() {
        let slot: Slot<u32> = Slot::default();
        let t0 = Instant::now();
        assert!(
            matches!(slot.reading(t0, Duration::from_millis(50)), Reading::Faulty(m) if m.contains("no frame"))
        );
        *slot.latest.lock().unwrap() = Some(Captured {
            frame: 7,
            timestamp: t0,
            sequence: 1,
        });
        assert!(matches!(
            slot.reading(t0 + Duration::from_millis(30), Duration::from_millis(50)),
            Reading::Present(7)
        ));
        assert!(matches!(
            slot.reading(t0 + Duration::from_millis(80), Duration::from_millis(50)),
            Reading::Faulty(m) if m.contains("80 ms")
        ));
        *slot.fault.lock().unwrap() = Some("disconnected".into());
        assert!(matches!(
            slot.reading(t0, Duration::from_millis(50)),
            Reading::Faulty(m) if m == "disconnected"
        ));
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = SensorConfig::ir_default();
        assert!(c.validate("ir").is_ok());
        c.source = SensorSource::V4l2;
        assert!(c.validate("ir").unwrap_err().contains("ir.device"));
        c.device = Some("/dev/video2".into());
        assert!(c.validate("ir").is_ok());
        c.format = Some(PixelFormat::Z16);
        assert!(c.validate("ir").unwrap_err().contains("ir.format"));
        let mut d = SensorConfig::depth_default();
        d.source = SensorSource::V4l2;
        d.device = Some("/dev/video4".into());
        d.hfov_deg = 5.0;
        assert!(d.validate("depth").unwrap_err().contains("depth.hfov_deg"));
    }
}
