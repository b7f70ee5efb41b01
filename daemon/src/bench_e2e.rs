//! `bench e2e`: the whole daemon path measured with SIMULATED camera and relay.
//!
//! - **time to decision**: from the capture of the frame that completed a presentation to the
//!   relay being energised (the lock command), for an enrolled face; and from the person
//!   appearing (first frame shown) to the unlock, which includes the k-of-n liveness frames;
//! - **sustained throughput**: frames analysed per second while a face stays in view (the
//!   camera runs faster than the analysis, so this is the pipeline's own rate);
//! - peak RSS and cold start to READY are measured on a real `facegate run` process by the CLI.
//!
//! Every figure comes from this run; the SIMULATED camera delivers decoded frames, so camera
//! decoding (MJPEG) is not included — `bench vision` reports decode separately.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bench::Summary;
use crate::config::{CameraSource, Config, LockBackend};
use crate::demo::{DemoError, Simulated, enrol, roster, start_simulated};
use crate::hal::{Frame, LockState};
use crate::store::{Kek, KekSource, SecretKey, Store};

/// What `bench e2e` measured in-process.
#[derive(Debug, Serialize)]
pub struct E2eReport {
    /// Granted presentations timed.
    pub rounds: usize,
    /// Deciding frame captured → relay energised, ms.
    pub frame_to_unlock: Summary,
    /// Face first shown → relay energised (includes the k-of-n frames), ms.
    pub arrival_to_unlock: Summary,
    /// Frames analysed per second with a face in view.
    pub sustained_fps: f64,
    /// Frames dropped (stale) per analysed frame during the throughput run.
    pub dropped_per_analysed: f64,
    /// Analysis threads.
    pub workers: usize,
}

/// Run `rounds` granted presentations and a `sustain`-long throughput run.
pub fn run(
    fixtures: &Path,
    models: Option<&Path>,
    rounds: usize,
    sustain: Duration,
    workers: usize,
) -> Result<E2eReport, DemoError> {
    let people = fixtures.join("dev");
    let roster = roster(&people)?;
    let mut cfg = Config::default();
    cfg.paths.models = models.map(Path::to_path_buf);
    cfg.camera.source = CameraSource::Replay;
    cfg.door.lock = LockBackend::Simulated;
    cfg.door.unlock_ms = 200;
    cfg.pipeline.decision_hold_ms = 0;
    cfg.pipeline.workers = workers;
    let engines = Arc::new(crate::service::load_engines(
        &cfg,
        crate::sensors::Sensors::none(),
    )?);
    let tmp = tempfile::tempdir().map_err(|e| DemoError::Io(e.to_string()))?;
    let kek = Kek::from_secret(SecretKey::random()?, KekSource::Memory);
    let store = Arc::new(Store::create(&tmp.path().join("e2e.redb"), &kek, "bench")?);
    enrol(&engines, &store, &roster, &mut |_| {})?;

    let Simulated {
        service,
        camera,
        probe,
        decisions: rx,
    } = start_simulated(&cfg, engines, store.clone(), 30)?;
    let face = Arc::new(Frame::open(&roster.probe.1).map_err(|e| DemoError::Io(e.to_string()))?);

    let mut frame_to_unlock = Vec::new();
    let mut arrival_to_unlock = Vec::new();
    for _ in 0..rounds {
        while rx.try_recv().is_ok() {}
        let before = probe.transitions().len();
        let shown = Instant::now();
        camera.show(Some(face.clone()));
        let d = rx.recv_timeout(Duration::from_secs(30)).ok();
        camera.show(None);
        // Wait for the pulse to end and the track to expire before the next arrival.
        std::thread::sleep(Duration::from_millis(
            cfg.door.unlock_ms + cfg.liveness.frames.max_gap_ms + 200,
        ));
        let Some(d) = d.filter(|d| d.granted) else {
            continue;
        };
        let unlocked = probe.transitions()[before..]
            .iter()
            .find(|t| t.state == LockState::Energised)
            .map(|t| t.at);
        if let (Some(at), Some(cap)) = (unlocked, d.captured_at) {
            frame_to_unlock.push(at.saturating_duration_since(cap));
            arrival_to_unlock.push(at.saturating_duration_since(shown));
        }
    }

    // Throughput: a face in view for `sustain`; no decisions get in the way (hold expires).
    let progress = service
        .progress()
        .ok_or_else(|| DemoError::Io("pipeline not running".into()))?;
    camera.show(Some(face));
    std::thread::sleep(Duration::from_millis(500));
    let a0 = progress.analysed.load(Ordering::Relaxed);
    let d0 = progress.dropped.load(Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(sustain);
    let analysed = progress.analysed.load(Ordering::Relaxed) - a0;
    let dropped = progress.dropped.load(Ordering::Relaxed) - d0;
    let secs = t0.elapsed().as_secs_f64();
    camera.stop();
    service.shutdown();
    let empty = || DemoError::Io("no granted presentation was timed".into());
    Ok(E2eReport {
        rounds: frame_to_unlock.len(),
        frame_to_unlock: Summary::of(&frame_to_unlock).ok_or_else(empty)?,
        arrival_to_unlock: Summary::of(&arrival_to_unlock).ok_or_else(empty)?,
        sustained_fps: analysed as f64 / secs,
        dropped_per_analysed: dropped as f64 / (analysed.max(1) as f64),
        workers,
    })
}
