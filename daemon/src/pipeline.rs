//! The pipeline between camera and door: capture → detect → liveness → embed → match → decision.
//!
//! - **Capture** runs on its own thread and only ever keeps the newest frame in a one-slot
//!   mailbox ([`FrameSlot`]): when the analysis is slower than the camera, older frames are
//!   overwritten (counted), never queued — a person at the door cares about latency, not about
//!   every frame. A camera error of kind `Timeout`/`Format` is transient; `Disconnected` makes
//!   the capture thread reopen the device with backoff; every fault is reported.
//! - **Analysis** runs on `pipeline.workers` blocking threads (never the async reactor). A frame
//!   older than `max_frame_age_ms` when a worker picks it up is dropped. Per frame: detect the
//!   largest face; follow it as a track (IoU with the previous box, gap ≤ `max_gap_ms`); run the
//!   liveness policy; feed the track's k-of-n window; only a live track is embedded and matched.
//! - **Decision**: at most one per presentation (track) within `decision_hold_ms`. Granted when
//!   the window is live and the matcher grants (threshold + margin); denied with `liveness` when
//!   the window is full and not live, with the matcher's reason after `match_attempts` live
//!   frames without a grant, with `throttled` while matching is paused. Every error on the way
//!   (a model failing, a sensor fault) is a denial or no decision — never a grant.
//!
//! The pipeline reports decisions and faults through [`PipelineOutput`]; the service wires them to
//! the door and the event sink. [`Progress`] counters feed the watchdog and the status line.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::config::PipelineConfig;
use crate::detect::{self, Face};
use crate::events::{AccessDecision, DecisionTimes};
use crate::hal::{Captured, ErrorKind, Frame, FrameSource};
use crate::liveness::{
    CheckStatus, Evidence, IrPair, LivenessPolicy, LivenessVerdict, PassiveAntiSpoof, Reading,
    TrackAggregator,
};
use crate::matcher::{Decision, MatchParams, SharedMatcher};
use crate::sensors::Sensors;
use crate::throttle::Throttle;
use crate::vision::Vision;

/// An RGB camera the capture thread can own, whatever its backend.
pub trait Camera: Send {
    /// Next frame, or the error's kind and text.
    fn next(&mut self) -> Result<Captured<Frame>, (ErrorKind, String)>;
}

impl<S: FrameSource + Send> Camera for S {
    fn next(&mut self) -> Result<Captured<Frame>, (ErrorKind, String)> {
        self.next_frame().map_err(|e| {
            use crate::hal::Error as _;
            (e.kind(), e.to_string())
        })
    }
}

/// Opens (or reopens, after a disconnect) the camera.
pub type CameraOpener = Box<dyn FnMut() -> Result<Box<dyn Camera>, String> + Send>;

/// One-frame mailbox between the capture thread and the workers.
#[derive(Debug, Default)]
pub struct FrameSlot {
    state: Mutex<SlotState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct SlotState {
    frame: Option<Captured<Frame>>,
    closed: bool,
}

impl FrameSlot {
    /// Put the newest frame; returns whether an unanalysed frame was overwritten.
    pub fn put(&self, f: Captured<Frame>) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let replaced = s.frame.replace(f).is_some();
        self.cv.notify_one();
        replaced
    }

    /// Wait up to `timeout` for a frame; `Err(())` once closed and empty.
    #[allow(clippy::result_unit_err)]
    pub fn take(&self, timeout: Duration) -> Result<Option<Captured<Frame>>, ()> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (mut s, _) = self
            .cv
            .wait_timeout_while(s, timeout, |s| s.frame.is_none() && !s.closed)
            .unwrap_or_else(|e| e.into_inner());
        match s.frame.take() {
            Some(f) => Ok(Some(f)),
            None if s.closed => Err(()),
            None => Ok(None),
        }
    }

    /// No more frames: wake every worker so it can exit.
    pub fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.cv.notify_all();
    }
}

/// Counters for the watchdog, the status line and `bench e2e`.
#[derive(Debug)]
pub struct Progress {
    /// Frames delivered by the camera.
    pub captured: AtomicU64,
    /// Frames analysed by a worker.
    pub analysed: AtomicU64,
    /// Frames overwritten in the slot or too old when picked up.
    pub dropped: AtomicU64,
    /// Camera errors.
    pub camera_errors: AtomicU64,
    /// Decisions made.
    pub decisions: AtomicU64,
    started: Instant,
    last_analysed_ms: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            captured: AtomicU64::new(0),
            analysed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            camera_errors: AtomicU64::new(0),
            decisions: AtomicU64::new(0),
            started: Instant::now(),
            last_analysed_ms: AtomicU64::new(0),
        }
    }
}

impl Progress {
    fn mark_analysed(&self) {
        self.analysed.fetch_add(1, Ordering::Relaxed);
        self.last_analysed_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Time since a worker last finished a frame (since start if none yet).
    pub fn since_last_analysis(&self) -> Duration {
        let last = Duration::from_millis(self.last_analysed_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// What the pipeline tells the rest of the daemon.
#[derive(Debug, Clone)]
pub enum PipelineOutput {
    /// A decision (the service unlocks on `granted` and records it).
    Decision(AccessDecision),
    /// Matching paused after too many denials.
    Throttled(Duration),
    /// A camera or analysis fault (detail is for technicians; no biometric data).
    Fault {
        /// Which part.
        source: &'static str,
        /// What happened.
        detail: String,
    },
    /// The camera fault cleared.
    Recovered(&'static str),
}

/// Loaded models and policy, shared by the workers.
pub struct Engines {
    /// Detector + embedder.
    pub vision: Vision,
    /// Passive RGB anti-spoof models.
    pub passive: PassiveAntiSpoof,
    /// The liveness policy (required checks, limits, k-of-n).
    pub policy: LivenessPolicy,
    /// IR and depth sensors (none on an RGB-only board).
    pub sensors: Sensors,
}

impl std::fmt::Debug for Engines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engines").finish_non_exhaustive()
    }
}

struct Track {
    id: u64,
    last_box: [f32; 4],
    last_at: Instant,
    attempts: u32,
    decided_at: Option<Instant>,
    times: DecisionTimes,
}

struct Decider {
    next_track: u64,
    track: Option<Track>,
    window: TrackAggregator,
    throttle: Throttle,
}

/// The running pipeline's shared state.
pub struct Pipeline {
    cfg: PipelineConfig,
    engines: Arc<Engines>,
    matcher: Arc<SharedMatcher>,
    decider: Mutex<Decider>,
    slot: Arc<FrameSlot>,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    output: Box<dyn Fn(PipelineOutput) + Send + Sync>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").finish_non_exhaustive()
    }
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let x0 = a[0].max(b[0]);
    let y0 = a[1].max(b[1]);
    let x1 = (a[0] + a[2]).min(b[0] + b[2]);
    let y1 = (a[1] + a[3]).min(b[1] + b[3]);
    let inter = (x1 - x0).max(0.0) * (y1 - y0).max(0.0);
    let union = a[2] * a[3] + b[2] * b[3] - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Handles to a started pipeline.
#[derive(Debug)]
pub struct Running {
    /// The shared state.
    pub pipeline: Arc<Pipeline>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Stop capturing, let the workers finish the frame in hand, join every thread.
    pub fn shutdown(self) {
        self.pipeline.stop.store(true, Ordering::SeqCst);
        self.pipeline.slot.close();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

impl Pipeline {
    /// Build the shared state; nothing runs until [`Pipeline::start`].
    pub fn new(
        cfg: PipelineConfig,
        throttle: crate::config::ThrottleConfig,
        engines: Arc<Engines>,
        matcher: Arc<SharedMatcher>,
        output: Box<dyn Fn(PipelineOutput) + Send + Sync>,
    ) -> Result<Arc<Self>, String> {
        let window = TrackAggregator::new(engines.policy.config().frames)?;
        Ok(Arc::new(Self {
            cfg,
            engines,
            matcher,
            decider: Mutex::new(Decider {
                next_track: 1,
                track: None,
                window,
                throttle: Throttle::new(throttle),
            }),
            slot: Arc::default(),
            progress: Arc::default(),
            stop: Arc::default(),
            output,
        }))
    }

    /// Counters.
    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    /// Start the capture thread (owning the camera from `open`) and the workers.
    pub fn start(self: &Arc<Self>, open: CameraOpener) -> Running {
        let mut threads = Vec::new();
        let p = self.clone();
        threads.push(
            std::thread::Builder::new()
                .name("capture".into())
                .spawn(move || p.capture_loop(open))
                .expect("spawning the capture thread"),
        );
        for i in 0..self.cfg.workers {
            let p = self.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("analysis-{i}"))
                    .spawn(move || p.worker_loop())
                    .expect("spawning an analysis thread"),
            );
        }
        Running {
            pipeline: self.clone(),
            threads,
        }
    }

    fn emit(&self, o: PipelineOutput) {
        (self.output)(o);
    }

    fn capture_loop(&self, mut open: CameraOpener) {
        let mut backoff = Duration::from_millis(500);
        let mut camera: Option<Box<dyn Camera>> = None;
        let mut faulty = false;
        let mut transient_streak = 0u32;
        while !self.stop.load(Ordering::Relaxed) {
            let cam = match camera.as_mut() {
                Some(c) => c,
                None => match open() {
                    Ok(c) => {
                        backoff = Duration::from_millis(500);
                        camera.insert(c)
                    }
                    Err(e) => {
                        if !faulty {
                            faulty = true;
                            self.emit(PipelineOutput::Fault {
                                source: "camera",
                                detail: format!("cannot open camera: {e}"),
                            });
                        }
                        self.sleep_unless_stopped(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                },
            };
            match cam.next() {
                Ok(f) => {
                    transient_streak = 0;
                    if faulty {
                        faulty = false;
                        self.emit(PipelineOutput::Recovered("camera"));
                    }
                    self.progress.captured.fetch_add(1, Ordering::Relaxed);
                    if self.slot.put(f) {
                        self.progress.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err((kind, msg)) => {
                    self.progress.camera_errors.fetch_add(1, Ordering::Relaxed);
                    match kind {
                        ErrorKind::EndOfStream => {
                            tracing::info!(detail = %msg, "camera stream ended");
                            break;
                        }
                        ErrorKind::Timeout | ErrorKind::Format => {
                            transient_streak += 1;
                            // One corrupt frame is noise; a run of them is a fault.
                            if transient_streak == 5 && !faulty {
                                faulty = true;
                                self.emit(PipelineOutput::Fault {
                                    source: "camera",
                                    detail: format!("{kind}: {msg} (5 in a row)"),
                                });
                            }
                        }
                        _ => {
                            if !faulty {
                                faulty = true;
                                self.emit(PipelineOutput::Fault {
                                    source: "camera",
                                    detail: format!("{kind}: {msg}; reopening"),
                                });
                            }
                            camera = None;
                            self.sleep_unless_stopped(backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(10));
                        }
                    }
                }
            }
        }
        self.slot.close();
    }

    fn sleep_unless_stopped(&self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end && !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20).min(d));
        }
    }

    fn worker_loop(&self) {
        let max_age = Duration::from_millis(self.cfg.max_frame_age_ms);
        loop {
            let cap = match self.slot.take(Duration::from_millis(200)) {
                Err(()) => return,
                Ok(None) => continue,
                Ok(Some(c)) => c,
            };
            if cap.timestamp.elapsed() > max_age {
                self.progress.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let outcome = self.analyse(&cap);
            self.progress.mark_analysed();
            match outcome {
                Ok(Some(d)) => {
                    self.progress.decisions.fetch_add(1, Ordering::Relaxed);
                    self.emit(PipelineOutput::Decision(d));
                }
                Ok(None) => {}
                Err(detail) => self.emit(PipelineOutput::Fault {
                    source: "analysis",
                    detail,
                }),
            }
        }
    }

    fn lock_decider(&self) -> std::sync::MutexGuard<'_, Decider> {
        self.decider.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Analyse one frame; `Ok(Some)` when it completes a decision. Errors deny nothing by
    /// themselves (no decision) but are reported; they can never produce a grant.
    fn analyse(&self, cap: &Captured<Frame>) -> Result<Option<AccessDecision>, String> {
        let e = &*self.engines;
        let at = cap.timestamp;
        let t = Instant::now();
        let work = e.vision.working(&cap.frame).map_err(|x| x.to_string())?;
        let faces = e
            .vision
            .detector
            .detect(&work.frame)
            .map_err(|x| x.to_string())?;
        let detect_ms = ms(t.elapsed());
        let Some(i) = detect::largest(&faces) else {
            return Ok(None);
        };
        let face_work = faces[i];
        let face: Face = work.face_to_original(&face_work);
        let max_gap = Duration::from_millis(e.policy.config().frames.max_gap_ms);
        let hold = Duration::from_millis(self.cfg.decision_hold_ms);

        // Track bookkeeping; skip a presentation that was already decided.
        let track_id = {
            let mut d = self.lock_decider();
            let same = d.track.as_ref().is_some_and(|tr| {
                at.saturating_duration_since(tr.last_at) <= max_gap.max(hold)
                    && iou(&tr.last_box, &face.bbox) >= 0.2
            });
            if !same {
                let id = d.next_track;
                d.next_track += 1;
                d.track = Some(Track {
                    id,
                    last_box: face.bbox,
                    last_at: at,
                    attempts: 0,
                    decided_at: None,
                    times: DecisionTimes::default(),
                });
            }
            let tr = d.track.as_mut().expect("track set above");
            tr.last_box = face.bbox;
            tr.last_at = at;
            if tr
                .decided_at
                .is_some_and(|w| at.saturating_duration_since(w) < hold)
            {
                return Ok(None);
            }
            if tr.decided_at.is_some() {
                // The hold expired with the same face still there: a new presentation.
                tr.decided_at = None;
                tr.attempts = 0;
                tr.times = DecisionTimes::default();
                d.window.reset();
            }
            let id = d.track.as_ref().map(|t| t.id).unwrap_or(0);
            if d.throttle.paused(at) {
                let tr = d.track.as_mut().expect("track set above");
                tr.decided_at = Some(at);
                return Ok(Some(AccessDecision {
                    granted: false,
                    person: None,
                    reason: "throttled".into(),
                    detail: "matching paused after repeated denials".into(),
                    match_score: None,
                    margin: None,
                    liveness_score: None,
                    times: DecisionTimes {
                        detect_ms,
                        frame_to_decision_ms: ms(at.elapsed()),
                        frames: 1,
                        ..Default::default()
                    },
                    track: id,
                    captured_at: Some(at),
                }));
            }
            id
        };

        // Liveness on this frame.
        let t = Instant::now();
        let passive = match e.passive.score(&cap.frame, &face) {
            Ok(s) => Reading::Present(s),
            Err(x) => Reading::Faulty(x.to_string()),
        };
        let passive_score = match &passive {
            Reading::Present(s) => Some(s.fused),
            _ => None,
        };
        let readings = e.sensors.readings(at);
        let evidence = Evidence {
            passive,
            ir: match &readings.ir {
                Reading::Absent => Reading::Absent,
                Reading::Faulty(m) => Reading::Faulty(m.clone()),
                Reading::Present(g) => Reading::Present(IrPair {
                    lit: g,
                    unlit: None,
                }),
            },
            depth: match &readings.depth {
                Reading::Absent => Reading::Absent,
                Reading::Faulty(m) => Reading::Faulty(m.clone()),
                Reading::Present(d) => Reading::Present(d),
            },
            challenge: None,
        };
        let verdict: LivenessVerdict = e.policy.evaluate(&face.bbox, &evidence);
        let liveness_ms = ms(t.elapsed());

        let state = {
            let mut d = self.lock_decider();
            let st = d.window.push(track_id, at, verdict.live);
            if let Some(tr) = d.track.as_mut().filter(|tr| tr.id == track_id) {
                tr.times.detect_ms += detect_ms;
                tr.times.liveness_ms += liveness_ms;
                tr.times.frames += 1;
            }
            st
        };
        let n = e.policy.config().frames.n;
        if !state.live {
            if state.window < n {
                return Ok(None);
            }
            let failing: Vec<String> = verdict
                .checks
                .iter()
                .filter(|c| !c.pass && (c.required || c.status != CheckStatus::Disabled))
                .map(|c| format!("{}: {}", c.name, c.reason))
                .collect();
            return Ok(self.finish(track_id, at, |times| AccessDecision {
                granted: false,
                person: None,
                reason: "liveness".into(),
                detail: format!(
                    "{} of the last {} frames live (need {}); {}",
                    state.passed,
                    state.window,
                    e.policy.config().frames.k,
                    failing.join("; ")
                ),
                match_score: None,
                margin: None,
                liveness_score: passive_score,
                times,
                track: track_id,
                captured_at: Some(at),
            }));
        }

        // Live: embed and match.
        let t = Instant::now();
        let emb = e
            .vision
            .embed_face(&work, &face_work)
            .map_err(|x| x.to_string())?;
        let embed_ms = ms(t.elapsed());
        let t = Instant::now();
        let params = MatchParams {
            threshold: e.vision.threshold(),
            margin: self.cfg.margin,
        };
        let r = self.matcher.current().identify(emb.as_slice(), &params);
        let match_ms = ms(t.elapsed());
        let granted = r.decision == Decision::Granted;
        let reason = if granted {
            "match".to_string()
        } else {
            r.reason
                .and_then(|x| serde_json::to_value(x).ok())
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_else(|| "denied".into())
        };
        let attempts = {
            let mut d = self.lock_decider();
            match d.track.as_mut().filter(|tr| tr.id == track_id) {
                Some(tr) => {
                    tr.attempts += 1;
                    tr.times.embed_ms += embed_ms;
                    tr.times.match_ms += match_ms;
                    tr.attempts
                }
                None => return Ok(None),
            }
        };
        if !granted && attempts < self.cfg.match_attempts {
            return Ok(None);
        }
        Ok(self.finish(track_id, at, |times| AccessDecision {
            granted,
            person: r.person.clone(),
            reason,
            detail: String::new(),
            match_score: Some(r.score),
            margin: r.margin,
            liveness_score: passive_score,
            times,
            track: track_id,
            captured_at: Some(at),
        }))
    }

    /// Close a track's presentation with a decision; applies throttling.
    fn finish(
        &self,
        track_id: u64,
        at: Instant,
        make: impl FnOnce(DecisionTimes) -> AccessDecision,
    ) -> Option<AccessDecision> {
        let mut d = self.lock_decider();
        let tr = d.track.as_mut().filter(|tr| tr.id == track_id)?;
        if tr.decided_at.is_some() {
            return None; // another worker decided this presentation first
        }
        tr.decided_at = Some(at);
        let mut times = tr.times;
        times.frame_to_decision_ms = ms(at.elapsed());
        let decision = make(times);
        d.window.reset();
        if decision.granted {
            d.throttle.record_grant();
        } else if let Some(pause) = d.throttle.record_denial(Instant::now()) {
            drop(d);
            self.emit(PipelineOutput::Throttled(pause));
        }
        Some(decision)
    }
}
