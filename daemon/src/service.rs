//! The long-running service: wires models, store, pipeline, door and fleet link together, and
//! owns start-up order, systemd notification, the watchdog and graceful shutdown.
//!
//! Start-up: models (verified) → store (key from the credential) → matcher → door (driven
//! locked) → camera + pipeline → fleet link → `READY=1`. Shutdown on the first SIGTERM/SIGINT:
//! `STOPPING=1`, stop capture, let the workers finish the frame in hand, relock and join the door
//! thread, publish `offline` and disconnect, drop the store (redb commits are already durable),
//! exit 0. A second signal during shutdown is ignored; systemd's `TimeoutStopSec` is the
//! backstop. A panic anywhere relocks the door from the panic hook before the default handler runs.
//!
//! [`Service::start`] takes the hardware as trait objects so the same wiring runs on a board,
//! in tests and in `facegate demo` (SIMULATED devices).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use crate::config::{CameraSource, Config, LockBackend};
use crate::door::{Button, Contact, DoorController, DoorRequest, RelayHandle, UnlockCause};
use crate::events::{DaemonEvent, EventSink};
use crate::liveness::{LivenessPolicy, PassiveAntiSpoof};
use crate::matcher::{Matcher, SharedMatcher};
use crate::models::Manifest;
use crate::pipeline::{CameraOpener, Engines, Pipeline, PipelineOutput, Running};
use crate::sensors::Sensors;
use crate::store::{Kek, Store};
use crate::vision::Vision;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A model is missing, tampered or does not load.
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    /// The store cannot be opened (missing, wrong key, corrupt).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Hardware that the configuration names could not be set up.
    #[error("hardware: {0}")]
    Hardware(String),
    /// Anything else at start-up.
    #[error("{0}")]
    Other(String),
}

/// The devices the service drives.
pub struct Hardware {
    /// Opens (and after a disconnect reopens) the RGB camera.
    pub camera: CameraOpener,
    /// The lock relay.
    pub relay: RelayHandle,
    /// Door contact, if fitted.
    pub contact: Option<Box<dyn Contact>>,
    /// Exit button, if fitted.
    pub button: Option<Box<dyn Button>>,
}

impl std::fmt::Debug for Hardware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hardware").finish_non_exhaustive()
    }
}

/// Load and verify the models and the liveness policy from a configuration; `sensors` are the
/// IR/depth sensors the policy reads (their geometry maps face boxes into their images). Also
/// sizes the process-wide inference thread pool (`[pipeline] inference_threads`).
pub fn load_engines(cfg: &Config, sensors: Sensors) -> Result<Engines, ServiceError> {
    crate::models::set_inference_threads(crate::models::resolve_inference_threads(
        cfg.pipeline.inference_threads,
    ))?;
    let manifest = Manifest::embedded();
    let dir = cfg.models_dir();
    let vision = Vision::load(&manifest, &dir, &cfg.vision)?;
    let passive = PassiveAntiSpoof::load(&manifest, &dir, cfg.liveness.passive.clone())?;
    let policy = LivenessPolicy::new(cfg.liveness.clone(), sensors.registration())
        .map_err(|e| ServiceError::Other(e.to_string()))?;
    Ok(Engines {
        vision,
        passive,
        policy,
        sensors,
    })
}

/// Open the IR and depth sensors the configuration names (none on an RGB-only board).
pub fn sensors_from_config(cfg: &Config) -> Result<Sensors, ServiceError> {
    let rgb = crate::hal::registration::CameraModel {
        width: cfg.camera.width,
        height: cfg.camera.height,
        intrinsics: crate::liveness::fusion::intrinsics_for_hfov(
            cfg.camera.width,
            cfg.camera.height,
            cfg.camera.hfov_deg,
        ),
    };
    Sensors::start(rgb, &cfg.ir, &cfg.depth).map_err(ServiceError::Hardware)
}

/// Open the store named by the configuration with its key.
pub fn open_store(cfg: &Config) -> Result<Store, ServiceError> {
    let path = cfg.store_path()?;
    let kek = Kek::resolve(cfg.paths.key_file.as_deref())?;
    Ok(Store::open(&path, &kek)?)
}

/// The door hardware: relay, optional contact, optional exit button.
type DoorParts = (
    RelayHandle,
    Option<Box<dyn Contact>>,
    Option<Box<dyn Button>>,
);

/// The real devices named by the configuration (V4L2 camera, GPIO relay and inputs), or the
/// SIMULATED ones where the configuration asks for them (announced in the log).
pub fn hardware_from_config(cfg: &Config) -> Result<Hardware, ServiceError> {
    let cam = cfg.camera.clone();
    let camera: CameraOpener = match cam.source {
        CameraSource::V4l2 => Box::new(move || {
            let mut v = crate::hal::v4l2::V4l2Config::new(
                cam.device.clone(),
                cam.format,
                cam.width,
                cam.height,
            );
            v.fps = Some(cam.fps);
            v.timeout_ms = cam.timeout_ms;
            crate::hal::v4l2::V4l2Camera::open(&v)
                .map(|c| Box::new(c) as Box<dyn crate::pipeline::Camera>)
                .map_err(|e| e.to_string())
        }),
        CameraSource::Replay => {
            tracing::warn!("camera: SIMULATED replay of {:?}", cam.replay_dir);
            Box::new(move || {
                let dir = cam.replay_dir.clone().unwrap_or_default();
                crate::hal::sim::ReplaySource::from_dir(&dir)
                    .map(|r| {
                        Box::new(r.fps(f64::from(cam.fps))) as Box<dyn crate::pipeline::Camera>
                    })
                    .map_err(|e| e.to_string())
            })
        }
    };
    let d = &cfg.door;
    let (relay, contact, button): DoorParts = match d.lock {
        LockBackend::Simulated => {
            tracing::warn!("door: SIMULATED relay: no door is driven");
            (
                RelayHandle::new(Box::new(crate::hal::sim::SimLock::new(d.strike)), d.strike),
                None,
                None,
            )
        }
        LockBackend::Gpio => gpio_hardware(cfg)?,
    };
    Ok(Hardware {
        camera,
        relay,
        contact,
        button,
    })
}

#[cfg(feature = "gpio")]
fn gpio_hardware(cfg: &Config) -> Result<DoorParts, ServiceError> {
    use crate::hal::gpio::{
        InputPinConfig, LockPinConfig, Pull, RppalDoorSensor, RppalExitButton, RppalLock,
    };
    let d = &cfg.door;
    let hw = |e: crate::hal::gpio::GpioError| ServiceError::Hardware(e.to_string());
    let lock = RppalLock::new(LockPinConfig {
        pin: d.relay_pin,
        active_high: d.relay_active_high,
        strike: d.strike,
    })
    .map_err(hw)?;
    let input = |pin| InputPinConfig {
        pin,
        pull: if d.inputs_active_high {
            Pull::Down
        } else {
            Pull::Up
        },
        active_high: d.inputs_active_high,
        debounce_ms: 20,
    };
    let contact = match d.contact_pin {
        Some(p) => Some(Box::new(RppalDoorSensor::new(input(p)).map_err(hw)?) as Box<dyn Contact>),
        None => None,
    };
    let button = match d.exit_button_pin {
        Some(p) => Some(Box::new(crate::door::ExitButtonInput(
            RppalExitButton::new(input(p)).map_err(hw)?,
        )) as Box<dyn Button>),
        None => None,
    };
    Ok((RelayHandle::new(Box::new(lock), d.strike), contact, button))
}

#[cfg(not(feature = "gpio"))]
fn gpio_hardware(_cfg: &Config) -> Result<DoorParts, ServiceError> {
    Err(ServiceError::Hardware(
        "door.lock = \"gpio\" but this binary was built without the `gpio` feature".into(),
    ))
}

/// A running service.
pub struct Service {
    /// The store (shared with the fleet link).
    pub store: Arc<Store>,
    /// The current matcher.
    pub matcher: Arc<SharedMatcher>,
    /// Event recording.
    pub sink: EventSink,
    running: Option<Running>,
    door_tx: mpsc::Sender<DoorRequest>,
    door_thread: Option<std::thread::JoinHandle<()>>,
    relay: RelayHandle,
    cfg: Config,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

/// Everything the service reports, for an observer (the demo, tests) besides the journal.
pub type Observer = Arc<dyn Fn(&DaemonEvent) + Send + Sync>;

impl Service {
    /// Start the door thread (driven locked first), then the pipeline.
    pub fn start(
        cfg: &Config,
        engines: Arc<Engines>,
        store: Arc<Store>,
        hw: Hardware,
        wake_publisher: Option<Arc<dyn Fn() + Send + Sync>>,
        status: Option<crate::mqtt::StatusSource>,
        observer: Option<Observer>,
    ) -> Result<Service, ServiceError> {
        let model = (
            engines.vision.embedder.model_id().to_string(),
            engines.vision.embedder.model_version().to_string(),
        );
        let matcher = Arc::new(SharedMatcher::new(Matcher::from_store(
            &store,
            Some((&model.0, &model.1)),
        )?));
        let mut sink = EventSink::new(store.clone(), &cfg.device.id, cfg.outbox, wake_publisher);
        if let Some(s) = status {
            sink = sink.with_status(s);
        }

        // Door thread.
        let (door_tx, door_rx) = mpsc::channel();
        let controller =
            DoorController::new(hw.relay.clone(), hw.contact, hw.button, cfg.door.clone());
        let door_sink = sink.clone();
        let door_obs = observer.clone();
        let door_thread = std::thread::Builder::new()
            .name("door".into())
            .spawn(move || {
                controller.run(door_rx, |e| {
                    let ev = DaemonEvent::Door(e);
                    let _ = door_sink.record(&ev, None);
                    if let Some(o) = &door_obs {
                        o(&ev);
                    }
                })
            })
            .map_err(|e| ServiceError::Other(format!("spawning the door thread: {e}")))?;

        // Pipeline → events (committed first) → door.
        let out_sink = sink.clone();
        let out_door = door_tx.clone();
        let unlock = Duration::from_millis(cfg.door.unlock_ms);
        let out_obs = observer.clone();
        let labels = cfg.logging.person_labels;
        let label_store = store.clone();
        let output = Box::new(move |o: PipelineOutput| {
            let ev = match o {
                PipelineOutput::Decision(d) => DaemonEvent::Access(d),
                PipelineOutput::Throttled(pause) => DaemonEvent::Throttled { pause },
                PipelineOutput::Fault { source, detail } => DaemonEvent::Fault { source, detail },
                PipelineOutput::Recovered(what) => {
                    DaemonEvent::Door(crate::door::DoorEvent::FaultCleared(what))
                }
            };
            let label = match (&ev, labels) {
                (DaemonEvent::Access(a), true) => a
                    .person
                    .as_deref()
                    .and_then(|p| label_store.get_person(p).ok().flatten())
                    .map(|p| p.label.clone()),
                _ => None,
            };
            let recorded = out_sink.record(&ev, label.as_deref());
            if let DaemonEvent::Access(a) = &ev
                && a.granted
            {
                // Never unlock on an error: an access that cannot be recorded is not granted.
                match (&recorded, &a.person) {
                    (Ok(_), Some(p)) => {
                        let _ = out_door.send(DoorRequest::Unlock {
                            cause: UnlockCause::Face(p.clone()),
                            duration: unlock,
                        });
                    }
                    _ => tracing::error!(
                        facegate_event = "fault",
                        fault_source = "store",
                        "granted decision not acted on: the event could not be recorded"
                    ),
                }
            }
            if let Some(obs) = &out_obs {
                obs(&ev);
            }
        });
        let pipeline = Pipeline::new(cfg.pipeline, cfg.throttle, engines, matcher.clone(), output)
            .map_err(ServiceError::Other)?;
        let running = pipeline.start(hw.camera);
        Ok(Service {
            store,
            matcher,
            sink,
            running: Some(running),
            door_tx,
            door_thread: Some(door_thread),
            relay: hw.relay,
            cfg: cfg.clone(),
        })
    }

    /// The relay handle (for the panic hook).
    pub fn relay(&self) -> RelayHandle {
        self.relay.clone()
    }

    /// Ask the door for a timed unlock (remote `open`); the door thread caps it.
    pub fn remote_open(&self, request_id: &str, duration: Duration) -> bool {
        self.door_tx
            .send(DoorRequest::Unlock {
                cause: UnlockCause::Remote(request_id.into()),
                duration,
            })
            .is_ok()
    }

    /// Pipeline counters.
    pub fn progress(&self) -> Option<Arc<crate::pipeline::Progress>> {
        self.running.as_ref().map(|r| r.pipeline.progress().clone())
    }

    /// Rebuild the matcher if the store changed (bundle applied, person removed). Returns
    /// whether it was rebuilt.
    pub fn refresh_matcher(&self, model: (&str, &str)) -> Result<bool, ServiceError> {
        let generation = self.store.generation()?;
        if generation == self.matcher.current().generation() {
            return Ok(false);
        }
        let m = Matcher::from_store(&self.store, Some(model))?;
        tracing::info!(
            facegate_event = "matcher_reloaded",
            templates = m.len(),
            people = m.people(),
            "templates reloaded"
        );
        self.matcher.replace(m);
        Ok(true)
    }

    /// One-line status for systemd and technicians.
    pub fn status_line(&self) -> String {
        let m = self.matcher.current();
        let outbox = self.store.outbox_len().unwrap_or(0);
        let (a, d) = self
            .progress()
            .map(|p| {
                (
                    p.analysed.load(Ordering::Relaxed),
                    p.decisions.load(Ordering::Relaxed),
                )
            })
            .unwrap_or((0, 0));
        format!(
            "templates {} ({} people), outbox {outbox}, frames analysed {a}, decisions {d}",
            m.len(),
            m.people()
        )
    }

    /// Whether the pipeline analysed a frame within `pipeline.stall_ms` (watchdog condition).
    pub fn making_progress(&self) -> bool {
        self.progress().is_some_and(|p| {
            p.since_last_analysis() < Duration::from_millis(self.cfg.pipeline.stall_ms)
        })
    }

    /// Drain and stop: capture stops, workers finish, the door relocks and its thread ends.
    pub fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown();
        }
        let _ = self.door_tx.send(DoorRequest::Shutdown);
        if let Some(t) = self.door_thread.take() {
            let _ = t.join();
        }
        let _ = self.relay.lock_now();
    }
}

/// Install a panic hook that relocks the door first, then runs the default hook.
pub fn install_panic_relock(relay: RelayHandle) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let _ = relay.lock_now();
        default(info);
    }));
}

/// `facegate run --config FILE`: the daemon's main loop on the current thread's tokio runtime.
pub async fn run(config_path: &Path) -> Result<(), ServiceError> {
    let cfg = Config::load(config_path)?;
    let notifier =
        crate::notify::Notifier::from_env().map_err(|e| ServiceError::Other(e.to_string()))?;
    let t0 = Instant::now();
    let sensors = sensors_from_config(&cfg)?;
    let engines = Arc::new(tokio::task::block_in_place(|| load_engines(&cfg, sensors))?);
    let model = (
        engines.vision.embedder.model_id().to_string(),
        engines.vision.embedder.model_version().to_string(),
    );
    let store = Arc::new(open_store(&cfg)?);
    let hw = hardware_from_config(&cfg)?;
    install_panic_relock(hw.relay.clone());

    // Fleet link (optional).
    let status = crate::fleet::status_source(&cfg);
    let mut fleet = crate::fleet::start(&cfg, store.clone(), status.clone())?;
    let wake = fleet.as_ref().map(|f| f.waker());
    let service = Service::start(&cfg, engines, store.clone(), hw, wake, Some(status), None)?;
    let mut commands = fleet.as_mut().and_then(|f| f.take_commands());
    let ready = format!(
        "ready in {:.1} s: {}",
        t0.elapsed().as_secs_f64(),
        service.status_line()
    );
    tracing::info!(facegate_event = "startup", device = %cfg.device.id, "{ready}");
    let _ = notifier.ready(&ready);

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| ServiceError::Other(format!("installing SIGTERM handler: {e}")))?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let watchdog_every = notifier.watchdog_interval();
    let mut last_ping = Instant::now();
    let mut last_status = Instant::now();
    let mut stalled_reported = false;
    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!(facegate_event = "shutdown", "SIGTERM: shutting down"); break; }
            _ = tokio::signal::ctrl_c() => { tracing::info!(facegate_event = "shutdown", "SIGINT: shutting down"); break; }
            cmd = async { match commands.as_mut() { Some(c) => c.recv().await, None => std::future::pending().await } } => {
                if let Some(cmd) = cmd {
                    crate::fleet::handle_command(cmd, &service, config_path);
                }
            }
            _ = tick.tick() => {
                if let Err(e) = service.refresh_matcher((&model.0, &model.1)) {
                    tracing::error!(facegate_event = "fault", fault_source = "store", error = %e, "matcher reload failed");
                }
                let progressing = service.making_progress();
                if let Some(every) = watchdog_every
                    && last_ping.elapsed() >= every
                    && progressing
                {
                    let _ = notifier.watchdog();
                    last_ping = Instant::now();
                }
                if !progressing && !stalled_reported {
                    stalled_reported = true;
                    tracing::error!(facegate_event = "fault", fault_source = "pipeline",
                        "no frame analysed for {} ms: watchdog pings stopped", cfg.pipeline.stall_ms);
                } else if progressing {
                    stalled_reported = false;
                }
                if last_status.elapsed() >= Duration::from_secs(5) {
                    let _ = notifier.status(&service.status_line());
                    last_status = Instant::now();
                }
            }
        }
    }
    let _ = notifier.stopping();
    tokio::task::block_in_place(|| service.shutdown());
    if let Some(f) = fleet {
        f.shutdown().await;
    }
    drop(store);
    tracing::info!(
        facegate_event = "shutdown",
        "stopped: door locked, store closed"
    );
    Ok(())
}
