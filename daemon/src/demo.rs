//! `facegate demo`: the daemon's main job on a machine without hardware.
//!
//! It installs the verified models, creates a temporary encrypted store, enrols the people of a
//! fixture folder, then replays a scripted session through the **real** service wiring
//! ([`crate::service::Service`]: capture thread, analysis worker, k-of-n liveness, matcher,
//! event sink, door thread) with a SIMULATED camera that shows one still photo per scenario at
//! a camera-like frame rate, and a SIMULATED lock relay whose transitions are checked. This
//! board profile has an RGB camera only (IR and depth not fitted), the default configuration;
//! the IR and depth checks are exercised by `bench pad` and the SIMULATED attack suite.
//!
//! Each scenario prints one line `scenario <name>: GRANTED|DENIED (<reason>) ...` with the
//! per-stage latency; the exit status is 0 only if every outcome (decision and relay) was the
//! expected one. The events left in the outbox are listed at the end.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::config::{CameraSource, Config, LockBackend};
use crate::door::RelayHandle;
use crate::enroll::{self, QualityConfig};
use crate::events::{AccessDecision, DaemonEvent};
use crate::hal::sim::{SimLock, SimLockProbe};
use crate::hal::{Captured, ErrorKind, Frame, LockState, StrikeType};
use crate::models::{self, Manifest};
use crate::pipeline::{Camera, Engines};
use crate::service::{Hardware, Service, ServiceError};
use crate::store::{Kek, KekSource, NewPerson, NewTemplate, SecretKey, Store, TemplateKind};

/// Why the demo could not run (a wrong outcome is not an error: it is reported and counted).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A fixture is missing.
    #[error("demo fixtures: {0}")]
    Fixtures(String),
    /// Models, store or service failed.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Vision failure while enrolling.
    #[error(transparent)]
    Vision(#[from] crate::vision::VisionError),
    /// I/O.
    #[error("{0}")]
    Io(String),
}

/// One scripted arrival at the door.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Short name printed after `scenario`.
    pub name: &'static str,
    /// The photo the SIMULATED camera shows.
    pub image: PathBuf,
    /// Whether the door must open.
    pub expect_granted: bool,
    /// What the scene is.
    pub what: &'static str,
}

/// The outcome of one scenario.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    /// The scenario.
    pub scenario: Scenario,
    /// The decision the service made (None = no decision within the time limit).
    pub decision: Option<AccessDecision>,
    /// Whether the SIMULATED relay was energised during the scenario.
    pub relay_energised: bool,
    /// Decision and relay as expected.
    pub ok: bool,
    /// Wall time from the first frame shown to the decision.
    pub wall_ms: f64,
}

/// The people folder's layout: one sub-folder per person (`scenes` is skipped); the last photo of
/// anyone with three or more is held back as that person's arrival.
#[derive(Debug, Clone)]
pub struct Roster {
    /// `(person id, photos to enrol)`.
    pub enrol: Vec<(String, Vec<PathBuf>)>,
    /// A held-back photo of an enrolled person.
    pub probe: (String, PathBuf),
}

/// Read the people folder.
pub fn roster(people: &Path) -> Result<Roster, DemoError> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(people)
        .map_err(|e| DemoError::Fixtures(format!("{}: {e}", people.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n != "scenes"))
        .collect();
    dirs.sort();
    let mut enrol = Vec::new();
    let mut probe = None;
    for d in dirs {
        let id = d
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let mut imgs = crate::bench::image_files(&d).unwrap_or_default();
        if imgs.is_empty() {
            continue;
        }
        if imgs.len() >= 3 {
            let held = imgs.pop().expect("len >= 3");
            // Prefer the person with the most photos as the arrival (best-enrolled).
            if probe.as_ref().is_none_or(|(_, _, n)| imgs.len() > *n) {
                probe = Some((id.clone(), held, imgs.len()));
            }
        }
        enrol.push((id, imgs));
    }
    let (pid, path, _) = probe.ok_or_else(|| {
        DemoError::Fixtures(format!(
            "{}: need one person with at least 3 photos (one is held back as the arrival)",
            people.display()
        ))
    })?;
    Ok(Roster {
        enrol,
        probe: (pid, path),
    })
}

/// The scripted session for a fixture root laid out like `../shared/faces`.
pub fn scenarios(root: &Path, roster: &Roster) -> Result<Vec<Scenario>, DemoError> {
    let s = vec![
        Scenario {
            name: "enrolled-person",
            image: roster.probe.1.clone(),
            expect_granted: true,
            what: "an enrolled person (photo not used for enrolment)",
        },
        Scenario {
            name: "unknown-person",
            image: root.join("spoof/live/jom_reals_1.jpg"),
            expect_granted: false,
            what: "a live person who is not enrolled",
        },
        Scenario {
            name: "printed-photo",
            image: root.join("spoof-samples/minivision_F1.jpg"),
            expect_granted: false,
            what: "a printed photo held up to the camera",
        },
        Scenario {
            name: "screen-replay",
            image: root.join("spoof/replay/tvl_fake_f0026.png"),
            expect_granted: false,
            what: "a face replayed on a phone screen",
        },
    ];
    for sc in &s {
        if !sc.image.is_file() {
            return Err(DemoError::Fixtures(format!(
                "{} missing (scenario {})",
                sc.image.display(),
                sc.name
            )));
        }
    }
    Ok(s)
}

/// SIMULATED camera: shows the current scene (or an empty grey frame) at a fixed rate.
#[derive(Clone)]
pub struct ScriptedCamera {
    scene: Arc<Mutex<Option<Arc<Frame>>>>,
    blank: Arc<Frame>,
    period: Duration,
    next_at: Instant,
    seq: u64,
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for ScriptedCamera {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScriptedCamera(SIMULATED)")
    }
}

impl ScriptedCamera {
    /// A camera at `fps` showing an empty scene.
    pub fn new(fps: u32) -> Result<Self, DemoError> {
        let blank = Frame::from_rgb8(640, 480, vec![118; 640 * 480 * 3])
            .map_err(|e| DemoError::Io(e.to_string()))?;
        Ok(Self {
            scene: Arc::default(),
            blank: Arc::new(blank),
            period: Duration::from_secs_f64(1.0 / f64::from(fps.max(1))),
            next_at: Instant::now(),
            seq: 0,
            stopped: Arc::default(),
        })
    }

    /// Show `frame` from now on (`None` = nobody in front of the camera).
    pub fn show(&self, frame: Option<Arc<Frame>>) {
        *self.scene.lock().unwrap_or_else(|e| e.into_inner()) = frame;
    }

    /// Make the stream end (the capture thread stops).
    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Camera for ScriptedCamera {
    fn next(&mut self) -> Result<Captured<Frame>, (ErrorKind, String)> {
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return Err((ErrorKind::EndOfStream, "SIMULATED camera: demo over".into()));
        }
        let now = Instant::now();
        if self.next_at > now {
            std::thread::sleep(self.next_at - now);
        }
        self.next_at = Instant::now().max(self.next_at) + self.period;
        let scene = self.scene.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let frame = (*scene.unwrap_or_else(|| self.blank.clone())).clone();
        self.seq += 1;
        Ok(Captured {
            frame,
            timestamp: Instant::now(),
            sequence: self.seq,
        })
    }
}

/// A service running on SIMULATED camera and relay, with its decisions on a channel.
pub struct Simulated {
    /// The running service.
    pub service: Service,
    /// The camera the scenes are shown on.
    pub camera: ScriptedCamera,
    /// The relay's transition record.
    pub probe: SimLockProbe,
    /// Every access decision, as made.
    pub decisions: mpsc::Receiver<AccessDecision>,
}

impl std::fmt::Debug for Simulated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Simulated(SIMULATED camera and relay)")
    }
}

/// Start the real service wiring on a [`ScriptedCamera`] at `fps` and a fail-secure [`SimLock`].
pub fn start_simulated(
    cfg: &Config,
    engines: Arc<Engines>,
    store: Arc<Store>,
    fps: u32,
) -> Result<Simulated, DemoError> {
    let camera = ScriptedCamera::new(fps)?;
    let lock = SimLock::new(StrikeType::FailSecure);
    let probe = lock.probe();
    let (tx, rx) = mpsc::channel::<AccessDecision>();
    let tx = Mutex::new(tx);
    let observer: crate::service::Observer = Arc::new(move |ev: &DaemonEvent| {
        if let DaemonEvent::Access(a) = ev {
            let _ = tx.lock().unwrap_or_else(|e| e.into_inner()).send(a.clone());
        }
    });
    let mut once = Some(camera.clone());
    let hw = Hardware {
        camera: Box::new(move || {
            once.take()
                .map(|c| Box::new(c) as Box<dyn Camera>)
                .ok_or_else(|| "SIMULATED camera already consumed".to_string())
        }),
        relay: RelayHandle::new(Box::new(lock), StrikeType::FailSecure),
        contact: None,
        button: None,
    };
    let service = Service::start(cfg, engines, store, hw, None, None, Some(observer))?;
    Ok(Simulated {
        service,
        camera,
        probe,
        decisions: rx,
    })
}

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Fixture root (with `dev/`, `spoof/`, `spoof-samples/`).
    pub fixtures: PathBuf,
    /// People folder (default `<fixtures>/dev`).
    pub people: Option<PathBuf>,
    /// Model directory override.
    pub models: Option<PathBuf>,
    /// SIMULATED camera frame rate.
    pub fps: u32,
    /// Longest wait for one decision.
    pub timeout: Duration,
    /// Publish the outbox to the broker of this configuration (its `[device]` and `[mqtt]`).
    pub broker: Option<Config>,
}

/// Everything the demo did.
#[derive(Debug)]
pub struct DemoReport {
    /// People enrolled and the photos used.
    pub enrolled: Vec<(String, usize)>,
    /// Per scenario.
    pub results: Vec<ScenarioResult>,
    /// Outbox events (JSON as stored; no vectors or images exist in them).
    pub outbox: Vec<String>,
    /// Model load time.
    pub load_ms: f64,
    /// With a broker: events acknowledged by it (the outbox drained), and how long it took.
    pub published: Option<(u64, f64)>,
}

impl DemoReport {
    /// Whether every outcome was the expected one.
    pub fn all_ok(&self) -> bool {
        !self.results.is_empty() && self.results.iter().all(|r| r.ok)
    }
}

/// Run the scripted session; `progress` receives a line per step for the terminal.
pub fn run(opts: &DemoOptions, mut progress: impl FnMut(&str)) -> Result<DemoReport, DemoError> {
    let people = opts
        .people
        .clone()
        .unwrap_or_else(|| opts.fixtures.join("dev"));
    let roster = roster(&people)?;
    let script = scenarios(&opts.fixtures, &roster)?;

    // Models: verified install from the mirror (or upstream), then load.
    let mut cfg = Config::default();
    if let Some(b) = &opts.broker {
        cfg.device = b.device.clone();
        cfg.mqtt = b.mqtt.clone();
    }
    cfg.paths.models = opts.models.clone();
    cfg.camera.source = CameraSource::Replay; // SIMULATED (the demo supplies its own camera)
    cfg.door.lock = LockBackend::Simulated;
    cfg.pipeline.decision_hold_ms = 1500;
    let dir = cfg.models_dir();
    let manifest = Manifest::embedded();
    let mirror = models::default_mirror();
    for e in manifest.models.iter().filter(|e| e.default) {
        models::fetch_one(e, mirror.as_deref(), &dir)
            .map_err(|x| DemoError::Service(ServiceError::Model(x)))?;
    }
    progress(&format!("models verified in {}", dir.display()));
    let t = Instant::now();
    let engines = Arc::new(crate::service::load_engines(
        &cfg,
        crate::sensors::Sensors::none(),
    )?);
    let load_ms = t.elapsed().as_secs_f64() * 1000.0;

    // Temporary encrypted store with a fresh key (in memory: nothing to leak when we exit).
    let tmp = tempfile::tempdir().map_err(|e| DemoError::Io(e.to_string()))?;
    let kek = Kek::from_secret(SecretKey::random()?, KekSource::Memory);
    let store = Arc::new(Store::create(
        &tmp.path().join("facegate.redb"),
        &kek,
        "demo",
    )?);
    let enrolled = enrol(&engines, &store, &roster, &mut progress)?;

    let Simulated {
        service,
        camera,
        probe,
        decisions: rx,
    } = start_simulated(&cfg, engines, store.clone(), opts.fps)?;

    let mut results = Vec::new();
    for sc in script {
        let frame = Frame::open(&sc.image).map_err(|e| DemoError::Io(e.to_string()))?;
        while rx.try_recv().is_ok() {}
        let before = probe.transitions().len();
        let t0 = Instant::now();
        camera.show(Some(Arc::new(frame)));
        let decision = rx.recv_timeout(opts.timeout).ok();
        let wall_ms = t0.elapsed().as_secs_f64() * 1000.0;
        camera.show(None);
        // Let the door pulse end and the face track expire before the next arrival.
        let settle = Duration::from_millis(cfg.door.unlock_ms + 300)
            .max(Duration::from_millis(cfg.pipeline.decision_hold_ms + 200));
        if decision.as_ref().is_some_and(|d| d.granted) {
            std::thread::sleep(settle);
        } else {
            std::thread::sleep(Duration::from_millis(cfg.pipeline.decision_hold_ms + 200));
        }
        let relay_energised = probe.transitions()[before..]
            .iter()
            .any(|t| t.state == LockState::Energised);
        let ok = decision
            .as_ref()
            .is_some_and(|d| d.granted == sc.expect_granted)
            && relay_energised == sc.expect_granted
            && probe.state() == LockState::Released;
        results.push(ScenarioResult {
            scenario: sc,
            decision,
            relay_energised,
            ok,
            wall_ms,
        });
    }
    camera.stop();
    service.shutdown();
    let outbox = store
        .outbox_peek_batch(10_000)?
        .iter()
        .map(|i| String::from_utf8_lossy(&i.payload).into_owned())
        .collect();
    let published = match cfg.mqtt.is_some() {
        true => Some(publish(&cfg, store.clone(), &mut progress)?),
        false => None,
    };
    Ok(DemoReport {
        enrolled,
        results,
        outbox,
        load_ms,
        published,
    })
}

/// Drain the outbox through the real fleet link (mutual TLS) and wait for every PUBACK.
fn publish(
    cfg: &Config,
    store: Arc<Store>,
    progress: &mut impl FnMut(&str),
) -> Result<(u64, f64), DemoError> {
    let before = store.outbox_len()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DemoError::Io(e.to_string()))?;
    let t = Instant::now();
    let left = rt.block_on(async {
        let fleet = crate::fleet::start(cfg, store.clone(), crate::fleet::status_source(cfg))?
            .ok_or_else(|| ServiceError::Other("no [mqtt] table".into()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while store.outbox_len().unwrap_or(1) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        fleet.shutdown().await;
        Ok::<u64, ServiceError>(store.outbox_len().unwrap_or(before))
    })?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if left > 0 {
        return Err(DemoError::Io(format!(
            "{left} of {before} event(s) not acknowledged by the broker within 30 s"
        )));
    }
    progress(&format!(
        "published {before} event(s) to the broker in {ms:.0} ms"
    ));
    Ok((before, ms))
}

/// Enrol every person of the roster into `store` (quality gates as `facegate enroll`).
pub fn enrol(
    engines: &Engines,
    store: &Store,
    roster: &Roster,
    progress: &mut impl FnMut(&str),
) -> Result<Vec<(String, usize)>, DemoError> {
    let q = QualityConfig::default();
    let mut out = Vec::new();
    for (id, photos) in &roster.enrol {
        let mut templates = Vec::new();
        for p in photos {
            let Ok(frame) = Frame::open(p) else { continue };
            if let Ok(a) = enroll::assess(&engines.vision, Some(&engines.passive), &frame, &q)? {
                templates.push(NewTemplate {
                    kind: TemplateKind::Anchor,
                    vector: zeroize::Zeroizing::new(a.embedding.as_slice().to_vec()),
                    model_id: engines.vision.embedder.model_id().to_string(),
                    model_version: engines.vision.embedder.model_version().to_string(),
                    quality: a.quality.clone(),
                });
            }
        }
        if templates.is_empty() {
            progress(&format!(
                "enrol {id}: no photo passed the quality gates; skipped"
            ));
            continue;
        }
        store.add_person(
            &NewPerson {
                id: id.clone(),
                label: id.replace('_', " "),
                external_id: None,
            },
            &templates,
            "demo",
        )?;
        progress(&format!(
            "enrolled {id} from {} of {} photo(s)",
            templates.len(),
            photos.len()
        ));
        out.push((id.clone(), templates.len()));
    }
    Ok(out)
}
