//! The daemon's configuration file (`/etc/facegate/facegate.toml`), parsed and validated once.
//!
//! Every table has documented defaults (see `config/facegate.toml` in the repository), so an
//! empty file is a working RGB-only configuration — except for hardware, which must be named:
//! the camera and the lock default to real devices, and the SIMULATED ones are opt-in and
//! announce themselves in every log line. Values that are present but invalid are refused with
//! a message naming the key and the allowed range; nothing security-relevant (thresholds,
//! liveness policy, unlock times, throttling) is ever clamped or replaced by a default.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::hal::StrikeType;
use crate::hal::v4l2::PixelFormat;
use crate::liveness::CheckKind;
use crate::liveness::LivenessConfig;
use crate::matcher::DEFAULT_MARGIN;
use crate::mqtt::MqttConfig;
use crate::sensors::{SensorConfig, SensorSource};
use crate::store::OutboxLimits;
use crate::vision::VisionConfig;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, or a value of the wrong type (the message names the key).
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and key.
        message: String,
    },
    /// A value outside its allowed range.
    #[error("config: {0}")]
    Invalid(String),
}

/// Which device this is: topic segments, event `device` field, MQTT client id.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceConfig {
    /// Site id (`[A-Za-z0-9._-]`, 1-64 characters).
    pub site: String,
    /// Device id (`[A-Za-z0-9._-]`, 1-64 characters, not `all`).
    pub id: String,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            site: "site-1".into(),
            id: "door-1".into(),
        }
    }
}

/// Where files live. Unset paths follow systemd's directories (`$STATE_DIRECTORY`,
/// `$CREDENTIALS_DIRECTORY`) and the packaged model directory.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    /// Model directory (else `$FACEGATE_MODELS`, the repository's `models/`, `/usr/share/facegate/models`).
    pub models: Option<PathBuf>,
    /// Template store file (else `$STATE_DIRECTORY/facegate.redb`).
    pub store: Option<PathBuf>,
    /// Store key-encryption key file (else the credential `$CREDENTIALS_DIRECTORY/facegate.key`).
    pub key_file: Option<PathBuf>,
}

/// Where RGB frames come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraSource {
    /// A V4L2 camera (`device`, `format`, `width`, `height`, `fps`).
    V4l2,
    /// SIMULATED: a folder of still images replayed as a camera (`replay_dir`, `fps`).
    Replay,
}

/// `[camera]`: the RGB camera.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameraConfig {
    /// Backend.
    pub source: CameraSource,
    /// V4L2 device node (prefer a stable `/dev/v4l/by-id/...` link).
    pub device: PathBuf,
    /// Requested pixel format (`mjpeg` or `yuyv`).
    pub format: PixelFormat,
    /// Requested width.
    pub width: u32,
    /// Requested height.
    pub height: u32,
    /// Requested frame rate (V4L2) or replay rate (SIMULATED).
    pub fps: u32,
    /// SIMULATED replay: folder of images, looped.
    pub replay_dir: Option<PathBuf>,
    /// A capture call that waits longer than this is a camera fault.
    pub timeout_ms: u64,
    /// Horizontal field of view, degrees: maps face boxes into the IR/depth images.
    pub hfov_deg: f64,
}

impl Default for CameraConfig {
    fn default() -> Self {
        Self {
            source: CameraSource::V4l2,
            device: "/dev/video0".into(),
            format: PixelFormat::Mjpeg,
            width: 640,
            height: 480,
            fps: 15,
            replay_dir: None,
            timeout_ms: 2000,
            hfov_deg: 60.0,
        }
    }
}

/// How the lock relay is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockBackend {
    /// A Raspberry Pi GPIO pin (`relay_pin`, `relay_active_high`).
    Gpio,
    /// SIMULATED relay that only records transitions (development, demos).
    Simulated,
}

/// `[door]`: the lock relay, door contact, exit button and the timing rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DoorConfig {
    /// Relay backend.
    pub lock: LockBackend,
    /// Strike type: `fail-secure` (energise to unlock) or `fail-safe` (energise to lock).
    pub strike: StrikeType,
    /// BCM pin of the relay.
    pub relay_pin: u8,
    /// Whether a high pin energises the coil (many relay boards are active-low).
    pub relay_active_high: bool,
    /// Unlock pulse for a granted face, milliseconds.
    pub unlock_ms: u64,
    /// Hard maximum the relay may stay unlocked, whatever asks (grant, exit button, remote
    /// open), milliseconds. Enforced by the door task itself.
    pub max_unlock_ms: u64,
    /// Unlock pulse for the exit button, milliseconds.
    pub exit_unlock_ms: u64,
    /// BCM pin of the door contact (closed = door shut); none = no contact fitted.
    pub contact_pin: Option<u8>,
    /// BCM pin of the request-to-exit button; none = no button.
    pub exit_button_pin: Option<u8>,
    /// Whether an active input reads high (pull-down wiring) instead of low (pull-up to ground).
    pub inputs_active_high: bool,
    /// Door open longer than this after the lock re-engaged raises `door_held_open`, seconds.
    pub held_open_secs: u64,
    /// How often the door task polls its inputs, milliseconds.
    pub poll_ms: u64,
}

impl Default for DoorConfig {
    fn default() -> Self {
        Self {
            lock: LockBackend::Gpio,
            strike: StrikeType::FailSecure,
            relay_pin: 17,
            relay_active_high: true,
            unlock_ms: 3000,
            max_unlock_ms: 10_000,
            exit_unlock_ms: 5000,
            contact_pin: None,
            exit_button_pin: None,
            inputs_active_high: false,
            held_open_secs: 30,
            poll_ms: 20,
        }
    }
}

/// `[throttle]`: failed-attempt throttling.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// Denials within `window_secs` that trigger a pause.
    pub max_denials: u32,
    /// Sliding window, seconds.
    pub window_secs: u64,
    /// How long matching pauses (every presentation is denied with `throttled`), seconds.
    pub pause_secs: u64,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            max_denials: 5,
            window_secs: 60,
            pause_secs: 30,
        }
    }
}

/// `[pipeline]`: frame handling between camera and decision.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Analysis threads (vision + liveness run here, never on the async reactor).
    pub workers: usize,
    /// Threads one network run may spread its matrix products over; 0 = one per CPU core.
    /// A person at the door waits for one analysis, so on a multi-core board its convolutions
    /// share the cores (measured: `facegate bench vision`, `bench compare`).
    pub inference_threads: usize,
    /// A frame older than this when a worker is free is dropped (latency over completeness), ms.
    pub max_frame_age_ms: u64,
    /// Frames of one presentation that may be matched before it is denied as unknown.
    pub match_attempts: u32,
    /// After a decision, the same face track gets no new decision for this long, ms.
    pub decision_hold_ms: u64,
    /// The look-alike margin: the best person must lead every other by this much.
    pub margin: f32,
    /// Watchdog: the pipeline counts as stuck when no frame was analysed for this long, ms.
    pub stall_ms: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            inference_threads: 0,
            max_frame_age_ms: 300,
            match_attempts: 3,
            decision_hold_ms: 4000,
            margin: DEFAULT_MARGIN,
            stall_ms: 10_000,
        }
    }
}

/// `[fleet]`: who may push template bundles and remote commands, and the site sealing key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// File of trusted fleet public keys (`ed25519:<hex>` per line). None = bundles refused.
    pub keys_file: Option<PathBuf>,
    /// Site key file (AES-256) bundles' templates are sealed to (else the credential
    /// `$CREDENTIALS_DIRECTORY/site.key`).
    pub site_key_file: Option<PathBuf>,
}

/// `[logging]`: what technicians see in the journal.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// Log person labels (names) next to ids. Off: only opaque ids reach the journal.
    pub person_labels: bool,
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Identity.
    pub device: DeviceConfig,
    /// File locations.
    pub paths: PathsConfig,
    /// RGB camera.
    pub camera: CameraConfig,
    /// Near-infrared camera (optional).
    pub ir: SensorConfig,
    /// Depth sensor (optional).
    pub depth: SensorConfig,
    /// Lock, contact, button, timings.
    pub door: DoorConfig,
    /// Failed-attempt throttling.
    pub throttle: ThrottleConfig,
    /// Frame handling.
    pub pipeline: PipelineConfig,
    /// Detector and recogniser (incl. the same-person threshold).
    pub vision: VisionConfig,
    /// Liveness policy.
    pub liveness: LivenessConfig,
    /// Outbox bounds.
    pub outbox: OutboxLimits,
    /// Fleet sync; absent = an offline terminal (events stay in the outbox, bounded).
    pub mqtt: Option<MqttConfig>,
    /// Fleet keys for bundles and remote commands.
    pub fleet: FleetConfig,
    /// Journal output.
    pub logging: LoggingConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            device: DeviceConfig::default(),
            paths: PathsConfig::default(),
            camera: CameraConfig::default(),
            ir: SensorConfig::ir_default(),
            depth: SensorConfig::depth_default(),
            door: DoorConfig::default(),
            throttle: ThrottleConfig::default(),
            pipeline: PipelineConfig::default(),
            vision: VisionConfig::default(),
            liveness: LivenessConfig::default(),
            outbox: OutboxLimits::default(),
            mqtt: None,
            fleet: FleetConfig::default(),
            logging: LoggingConfig::default(),
        }
    }
}

fn range<T: PartialOrd + std::fmt::Display>(key: &str, v: T, lo: T, hi: T) -> Result<(), String> {
    if v < lo || v > hi {
        return Err(format!("{key} = {v} must be in [{lo}, {hi}]"));
    }
    Ok(())
}

impl Config {
    /// Read, parse and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parse and validate configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })?;
        if let Some(m) = &mut cfg.mqtt {
            if m.site.is_empty() {
                m.site = cfg.device.site.clone();
            }
            if m.device.is_empty() {
                m.device = cfg.device.id.clone();
            }
        }
        cfg.validate().map_err(ConfigError::Invalid)?;
        Ok(cfg)
    }

    /// Check every value; the first problem is reported with its key and allowed range.
    pub fn validate(&self) -> Result<(), String> {
        crate::mqtt::validate_segment("device.site", &self.device.site)
            .map_err(|e| e.to_string())?;
        crate::mqtt::validate_segment("device.id", &self.device.id).map_err(|e| e.to_string())?;
        if self.device.id == crate::bundle::TARGET_ALL {
            return Err("device.id `all` is reserved (it addresses every device)".into());
        }
        let c = &self.camera;
        range("camera.width", c.width, 64, 4096)?;
        range("camera.height", c.height, 64, 4096)?;
        range("camera.fps", c.fps, 1, 120)?;
        range("camera.timeout_ms", c.timeout_ms, 50, 60_000)?;
        range("camera.hfov_deg", c.hfov_deg, 20.0, 150.0)?;
        if !matches!(c.format, PixelFormat::Mjpeg | PixelFormat::Yuyv) {
            return Err(format!(
                "camera.format = {:?} is not a colour format (use \"mjpeg\" or \"yuyv\")",
                c.format
            ));
        }
        if c.source == CameraSource::Replay && c.replay_dir.is_none() {
            return Err("camera.source = \"replay\" needs camera.replay_dir".into());
        }
        let d = &self.door;
        range("door.relay_pin", d.relay_pin, 0, 27)?;
        range("door.max_unlock_ms", d.max_unlock_ms, 200, 60_000)?;
        range("door.unlock_ms", d.unlock_ms, 200, d.max_unlock_ms)?;
        range(
            "door.exit_unlock_ms",
            d.exit_unlock_ms,
            200,
            d.max_unlock_ms,
        )?;
        range("door.held_open_secs", d.held_open_secs, 1, 3600)?;
        range("door.poll_ms", d.poll_ms, 5, 200)?;
        for (k, p) in [
            ("door.contact_pin", d.contact_pin),
            ("door.exit_button_pin", d.exit_button_pin),
        ] {
            if let Some(p) = p {
                range(k, p, 0, 27)?;
                if p == d.relay_pin {
                    return Err(format!("{k} = {p} is the relay pin"));
                }
            }
        }
        let t = &self.throttle;
        range("throttle.max_denials", t.max_denials, 1, 1000)?;
        range("throttle.window_secs", t.window_secs, 1, 86_400)?;
        range("throttle.pause_secs", t.pause_secs, 1, 86_400)?;
        let p = &self.pipeline;
        range("pipeline.workers", p.workers, 1, 8)?;
        range("pipeline.inference_threads", p.inference_threads, 0, 64)?;
        range("pipeline.max_frame_age_ms", p.max_frame_age_ms, 20, 5000)?;
        range("pipeline.match_attempts", p.match_attempts, 1, 50)?;
        range("pipeline.decision_hold_ms", p.decision_hold_ms, 0, 60_000)?;
        range("pipeline.stall_ms", p.stall_ms, 1000, 600_000)?;
        if !(0.0..1.0).contains(&p.margin) {
            return Err(format!("pipeline.margin = {} must be in [0, 1)", p.margin));
        }
        self.vision.detector.validate()?;
        self.vision.recognizer.validate()?;
        self.liveness.validate().map_err(|e| e.to_string())?;
        self.ir.validate("ir")?;
        self.depth.validate("depth")?;
        for (check, sensor, table) in [
            (CheckKind::Ir, &self.ir, "ir"),
            (CheckKind::Depth, &self.depth, "depth"),
        ] {
            if self.liveness.requires(check) && sensor.source == SensorSource::None {
                return Err(format!(
                    "liveness.required contains \"{table}\" but [{table}] source = \"none\": \
                     every presentation would be denied; fit the sensor or remove it from the policy"
                ));
            }
        }
        self.outbox.validate()?;
        if let Some(m) = &self.mqtt {
            m.validate().map_err(|e| e.to_string())?;
            if m.site != self.device.site || m.device != self.device.id {
                return Err(format!(
                    "mqtt.site/mqtt.device ({}/{}) differ from device.site/device.id ({}/{}): \
                     leave them out of [mqtt]",
                    m.site, m.device, self.device.site, self.device.id
                ));
            }
        }
        Ok(())
    }

    /// The store path: `[paths] store`, else `$STATE_DIRECTORY/facegate.redb`.
    pub fn store_path(&self) -> Result<PathBuf, crate::store::StoreError> {
        crate::store::resolve_store_path(None, self.paths.store.as_deref())
    }

    /// The model directory: `[paths] models`, else the usual search order.
    pub fn models_dir(&self) -> PathBuf {
        crate::models::resolve_models_dir(self.paths.models.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_documented_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.door.unlock_ms, 3000);
        assert_eq!(c.door.lock, LockBackend::Gpio);
        assert_eq!(c.camera.source, CameraSource::V4l2);
        assert!(c.mqtt.is_none());
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../../config/facegate.toml");
        let c = Config::parse(text).unwrap();
        assert_eq!(c.device.id, "door-1");
    }

    #[test]
    fn errors_name_the_key_and_range() {
        let e = Config::parse("[door]\nunlock_ms = 50\n").unwrap_err();
        assert!(e.to_string().contains("door.unlock_ms = 50"), "{e}");
        let e = Config::parse("[door]\nunlock_ms = 20000\n").unwrap_err();
        assert!(e.to_string().contains("[200, 10000]"), "{e}");
        let e = Config::parse("[pipeline]\nmargin = 1.5\n").unwrap_err();
        assert!(e.to_string().contains("pipeline.margin"), "{e}");
        let e = Config::parse("[vision.recognizer]\nthreshold = 1.5\n").unwrap_err();
        assert!(e.to_string().contains("threshold"), "{e}");
        let e = Config::parse("[liveness]\nrequired = []\n").unwrap_err();
        assert!(e.to_string().contains("required"), "{e}");
        let e = Config::parse("[door]\nunlok_ms = 3000\n").unwrap_err();
        assert!(e.to_string().contains("unlok_ms"), "{e}");
        let e = Config::parse("[liveness]\nrequired = [\"passive\", \"depth\"]\n").unwrap_err();
        assert!(e.to_string().contains("[depth] source"), "{e}");
        let e = Config::parse(
            "[ir]\nsource = \"v4l2\"\ndevice = \"/dev/video2\"\nformat = \"mjpeg\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("ir.format"), "{e}");
        let e = Config::parse("[door]\nexit_button_pin = 17\n").unwrap_err();
        assert!(e.to_string().contains("relay pin"), "{e}");
    }

    #[test]
    fn mqtt_identity_comes_from_device() {
        let c = Config::parse(
            "[device]\nsite = \"hq\"\nid = \"d7\"\n[mqtt]\nhost = \"broker.example\"\n",
        )
        .unwrap();
        let m = c.mqtt.unwrap();
        assert_eq!((m.site.as_str(), m.device.as_str()), ("hq", "d7"));
        let e = Config::parse("[mqtt]\nhost = \"b\"\nsite = \"other\"\n").unwrap_err();
        assert!(e.to_string().contains("differ"), "{e}");
    }
}
