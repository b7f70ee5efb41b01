//! `facegate doctor`: every start-up dependency checked on its own, each with ✔/✖ and a hint
//! that says what to do, so a technician on site can fix a terminal without reading code.
//!
//! The checks open the real devices (camera, GPIO) and the store, so run doctor with the
//! service stopped (`systemctl stop facegate`): redb locks the store file and V4L2 devices are
//! single-reader. The GPIO check drives the relay to its *locked* state, never the other way.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{CameraSource, Config, LockBackend};
use crate::models::{self, Manifest};
use crate::pipeline::Camera;
use crate::store::now_unix;

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Short name (`config`, `models`, `store`, `camera`, ...).
    pub name: &'static str,
    /// `true` passed, `false` failed; skipped checks are not failures.
    pub ok: bool,
    /// Not applicable on this board/configuration.
    pub skipped: bool,
    /// What was found.
    pub detail: String,
    /// What to do about a failure.
    pub hint: Option<String>,
}

impl Check {
    fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            ok: true,
            skipped: false,
            detail: detail.into(),
            hint: None,
        }
    }
    fn fail(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            name,
            ok: false,
            skipped: false,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }
    fn skip(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            ok: true,
            skipped: true,
            detail: detail.into(),
            hint: None,
        }
    }
}

/// Run every check for the configuration at `path`.
pub fn run(path: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    let cfg = match Config::load(path) {
        Ok(c) => {
            out.push(Check::pass(
                "config",
                format!("{} is valid", path.display()),
            ));
            c
        }
        Err(e) => {
            out.push(Check::fail(
                "config",
                e.to_string(),
                "fix the key named above; config/facegate.toml documents every key and range",
            ));
            return out;
        }
    };
    out.push(check_models(&cfg));
    out.push(check_clock());
    let (store_check, newest_audit) = check_store(&cfg);
    out.push(store_check);
    if let Some(ts) = newest_audit {
        out.push(check_clock_vs_store(ts));
    }
    out.push(check_disk(&cfg));
    out.push(check_camera(&cfg));
    out.extend(check_sensors(&cfg));
    out.push(check_gpio(&cfg));
    out.push(check_broker(&cfg));
    out
}

fn check_models(cfg: &Config) -> Check {
    let dir = cfg.models_dir();
    let manifest = Manifest::embedded();
    let mut bad = Vec::new();
    let mut n = 0;
    for e in manifest.models.iter().filter(|e| e.default) {
        n += 1;
        if let Err(err) = models::verify(e, &dir) {
            bad.push(format!("{}: {err}", e.id));
        }
    }
    if bad.is_empty() {
        Check::pass(
            "models",
            format!(
                "{n} model files present in {} with good SHA-256",
                dir.display()
            ),
        )
    } else {
        Check::fail(
            "models",
            bad.join("; "),
            format!(
                "reinstall verified copies: `facegate models fetch --dest {}`",
                dir.display()
            ),
        )
    }
}

fn check_store(cfg: &Config) -> (Check, Option<u64>) {
    match crate::service::open_store(cfg) {
        Ok(store) => {
            let people = store.list_people().map(|p| p.len()).unwrap_or(0);
            let outbox = store.outbox_len().unwrap_or(0);
            let newest = store
                .audit_entries(None, 1)
                .ok()
                .and_then(|v| v.last().map(|e| e.ts));
            (
                Check::pass(
                    "store",
                    format!(
                        "{} opens with key {}: {people} people, outbox {outbox}",
                        store.path().display(),
                        store.key_id()
                    ),
                ),
                newest,
            )
        }
        Err(e) => {
            let msg = e.to_string();
            let hint = if msg.contains("already open") || msg.contains("lock") {
                "the service holds the store: `systemctl stop facegate`, then rerun doctor"
            } else if msg.contains("key") {
                "the key does not unlock this store: check the credential facegate.key (systemd-creds) or [paths] key_file"
            } else {
                "create it with `facegate keys init` (see README), or fix [paths] store"
            };
            (Check::fail("store", msg, hint), None)
        }
    }
}

fn check_clock() -> Check {
    let now = now_unix();
    // 2025-01-01 .. 2100-01-01: anything else is an unset RTC or a bad NTP source.
    if (1_735_689_600..4_102_444_800).contains(&now) {
        Check::pass(
            "clock",
            format!("system time {}", crate::store::format_unix(now)),
        )
    } else {
        Check::fail(
            "clock",
            format!(
                "system time {} is implausible",
                crate::store::format_unix(now)
            ),
            "enable NTP (`timedatectl set-ntp true`) or fit an RTC: bundles and remote commands are time-checked",
        )
    }
}

fn check_clock_vs_store(newest_audit: u64) -> Check {
    let now = now_unix();
    if newest_audit > now + 300 {
        Check::fail(
            "clock_monotonic",
            format!(
                "the newest audit entry ({}) is later than the system time ({}): the clock went backwards",
                crate::store::format_unix(newest_audit),
                crate::store::format_unix(now)
            ),
            "fix the clock (NTP/RTC) before starting the service",
        )
    } else {
        Check::pass(
            "clock_monotonic",
            "system time is after the newest audit entry",
        )
    }
}

fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path contains NUL"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable memory of the
    // right type; statvfs only writes into it and we read it only when it returned 0.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let st = unsafe { st.assume_init() };
    // `u64::from`: these are u32 on 32-bit ARM and u64 elsewhere.
    #[allow(clippy::useless_conversion)]
    Ok(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
}

fn check_disk(cfg: &Config) -> Check {
    let path = match cfg.store_path() {
        Ok(p) => p,
        Err(e) => {
            return Check::fail(
                "disk",
                e.to_string(),
                "set [paths] store or run under systemd (StateDirectory=)",
            );
        }
    };
    let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    // Room for a full outbox plus headroom for redb's copy-on-write pages.
    let need = cfg.outbox.max_bytes.saturating_mul(2).max(64 << 20);
    match free_bytes(&dir) {
        Ok(free) if free >= need => Check::pass(
            "disk",
            format!(
                "{} MB free in {} (need {} MB)",
                free >> 20,
                dir.display(),
                need >> 20
            ),
        ),
        Ok(free) => Check::fail(
            "disk",
            format!(
                "only {} MB free in {} (need {} MB)",
                free >> 20,
                dir.display(),
                need >> 20
            ),
            "free space on the data partition or lower [outbox] max_bytes",
        ),
        Err(e) => Check::fail(
            "disk",
            format!("{}: {e}", dir.display()),
            "create the state directory",
        ),
    }
}

fn check_camera(cfg: &Config) -> Check {
    let c = &cfg.camera;
    match c.source {
        CameraSource::Replay => Check::skip(
            "camera",
            format!(
                "SIMULATED replay camera ({:?}); no device to test",
                c.replay_dir
            ),
        ),
        CameraSource::V4l2 => {
            let mut v =
                crate::hal::v4l2::V4l2Config::new(c.device.clone(), c.format, c.width, c.height);
            v.fps = Some(c.fps);
            v.timeout_ms = c.timeout_ms;
            let mut cam = match crate::hal::v4l2::V4l2Camera::open(&v) {
                Ok(cam) => cam,
                Err(e) => {
                    return Check::fail(
                        "camera",
                        e.to_string(),
                        "check the cable and `facegate devices` for the node and formats; the service user needs the `video` group",
                    );
                }
            };
            let n = cam.negotiated().clone();
            let t = Instant::now();
            for i in 0..3 {
                if let Err((kind, msg)) = Camera::next(&mut cam) {
                    return Check::fail(
                        "camera",
                        format!("frame {i}: {kind}: {msg}"),
                        "the device opens but delivers no frames: try another USB port or format",
                    );
                }
            }
            let detail = format!(
                "{}: {:?} {}x{} @ {:?} fps, 3 frames in {:.0} ms",
                c.device.display(),
                n.format,
                n.width,
                n.height,
                n.fps,
                t.elapsed().as_secs_f64() * 1000.0
            );
            if n.matches_request() {
                Check::pass("camera", detail)
            } else {
                Check::fail(
                    "camera",
                    format!("{detail}; requested {}x{} @ {}", c.width, c.height, c.fps),
                    "set [camera] width/height/fps to a mode listed by `facegate devices`",
                )
            }
        }
    }
}

fn check_sensors(cfg: &Config) -> Vec<Check> {
    use crate::liveness::Reading;
    use crate::sensors::SensorSource;
    let mut out = Vec::new();
    let fitted = |s: &crate::sensors::SensorConfig| s.source != SensorSource::None;
    if !fitted(&cfg.ir) {
        out.push(Check::skip(
            "ir",
            "no IR camera configured (RGB-only board)",
        ));
    }
    if !fitted(&cfg.depth) {
        out.push(Check::skip("depth", "no depth sensor configured"));
    }
    if !fitted(&cfg.ir) && !fitted(&cfg.depth) {
        return out;
    }
    let sensors = match crate::service::sensors_from_config(cfg) {
        Ok(s) => s,
        Err(e) => {
            out.push(Check::fail(
                "ir/depth",
                e.to_string(),
                "check `facegate devices` for the nodes and formats of the IR and depth sensors",
            ));
            return out;
        }
    };
    std::thread::sleep(Duration::from_millis(1500));
    let r = sensors.readings(Instant::now());
    if fitted(&cfg.ir) {
        out.push(match &r.ir {
            Reading::Present(g) => {
                let n = g.samples().len().max(1) as f64;
                let mean = g.samples().iter().map(|&v| f64::from(v)).sum::<f64>()
                    / n
                    / f64::from(g.max_value().max(1));
                if mean > 0.01 {
                    Check::pass("ir", format!("NIR frames arriving (mean level {mean:.3}); emitter self-test needs emitter control, which this build does not drive"))
                } else {
                    Check::fail("ir", format!("NIR frames are black (mean level {mean:.3})"), "the IR illuminator is off or dead: check its power and wiring")
                }
            }
            Reading::Faulty(m) => Check::fail("ir", m.clone(), "check the IR camera cable and [ir] settings"),
            Reading::Absent => Check::fail("ir", "no reading", "internal error"),
        });
    }
    if fitted(&cfg.depth) {
        out.push(match &r.depth {
            Reading::Present(d) => {
                let valid = d.data().iter().filter(|&&v| v > 0).count() as f64
                    / d.data().len().max(1) as f64;
                if valid > 0.2 {
                    Check::pass(
                        "depth",
                        format!("depth maps arriving, {:.0} % valid pixels", valid * 100.0),
                    )
                } else {
                    Check::fail(
                        "depth",
                        format!("only {:.0} % valid depth pixels", valid * 100.0),
                        "clean the sensor window; check the projector and the working distance",
                    )
                }
            }
            Reading::Faulty(m) => Check::fail(
                "depth",
                m.clone(),
                "check the depth sensor cable and [depth] settings",
            ),
            Reading::Absent => Check::fail("depth", "no reading", "internal error"),
        });
    }
    out
}

fn check_gpio(cfg: &Config) -> Check {
    match cfg.door.lock {
        LockBackend::Simulated => Check::skip("gpio", "SIMULATED relay configured; no GPIO used"),
        LockBackend::Gpio => gpio_probe(cfg),
    }
}

#[cfg(feature = "gpio")]
fn gpio_probe(cfg: &Config) -> Check {
    match crate::service::hardware_from_config(&Config {
        camera: crate::config::CameraConfig {
            source: CameraSource::Replay,
            replay_dir: Some("/nonexistent".into()),
            ..cfg.camera.clone()
        },
        ..cfg.clone()
    }) {
        Ok(hw) => {
            // Opening drove the relay to locked; say so.
            drop(hw);
            Check::pass(
                "gpio",
                format!(
                    "relay pin {} (driven locked), contact {:?}, exit button {:?} accessible",
                    cfg.door.relay_pin, cfg.door.contact_pin, cfg.door.exit_button_pin
                ),
            )
        }
        Err(e) => Check::fail(
            "gpio",
            e.to_string(),
            "on a Raspberry Pi: the service user needs /dev/gpiomem (group `gpio`); elsewhere set door.lock = \"simulated\" for development",
        ),
    }
}

#[cfg(not(feature = "gpio"))]
fn gpio_probe(_cfg: &Config) -> Check {
    Check::fail(
        "gpio",
        "this binary was built without the `gpio` feature",
        "rebuild with `--features gpio` (the default)",
    )
}

fn check_broker(cfg: &Config) -> Check {
    let Some(m) = cfg.mqtt.clone() else {
        return Check::skip("broker", "no [mqtt] section: offline terminal");
    };
    let tls = match crate::mqtt::tls::from_config(&m) {
        Ok(t) => t,
        Err(e) => {
            return Check::fail(
                "broker",
                e.to_string(),
                "provide mqtt-ca.pem, mqtt-cert.pem and mqtt-key.pem (credentials) or [mqtt] ca_file/cert_file/key_file",
            );
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Check::fail("broker", e.to_string(), "internal error"),
    };
    let target = format!("{}:{}", m.host, m.port);
    match rt.block_on(crate::mqtt::probe(&m, tls, Duration::from_secs(10))) {
        Ok(ms) => Check::pass(
            "broker",
            format!("{target}: TLS handshake and client certificate accepted in {ms:.0} ms"),
        ),
        Err(e) => Check::fail(
            "broker",
            format!("{target}: {e}"),
            "check network/DNS, that the broker's certificate chains to mqtt-ca.pem and its name matches [mqtt] host, and that this device's certificate is issued by the broker's client CA",
        ),
    }
}
