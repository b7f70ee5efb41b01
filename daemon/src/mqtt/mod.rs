//! Fleet sync over MQTT with mutual TLS: events out, status out, bundles and commands in.
//!
//! # Topics (versioned prefix `facegate/v1`)
//!
//! | topic | direction | QoS / retain | content |
//! |---|---|---|---|
//! | `facegate/v1/{site}/{device}/events` | out | 1 | door events and overflow summaries from the bounded outbox ([`events`], [`publisher`]) |
//! | `facegate/v1/{site}/{device}/status` | out | 1, retained | `online` report; Last Will `offline` ([`status`]) |
//! | `facegate/v1/{site}/{device}/bundles` | in | 1 | signed template bundles for this device |
//! | `facegate/v1/{site}/all/bundles` | in | 1 | signed template bundles for the whole site |
//! | `facegate/v1/{site}/{device}/bundles/result` | out | 1 | outcome of each received bundle (with its SHA-256) |
//! | `facegate/v1/{site}/{device}/cmd/{name}` | in | 1 | `status`, `resync`, signed `open`, `reload-config` ([`commands`]) |
//! | `facegate/v1/{site}/{device}/cmd/{name}/result` | out | 1 | command result echoing `request_id` |
//!
//! The broker authenticates terminals by client certificate (Mosquitto:
//! `require_certificate true`, `use_identity_as_username true`) and its ACL must confine each
//! device to its own `{site}/{device}/#` plus read access to `{site}/all/bundles`. Operator
//! tools ([`operator`]: `facegate bundle publish`, `facegate cmd send`) use their own certificate
//! with write access to `{site}/+/bundles` and `{site}/+/cmd/+` and read access to the results.
//!
//! # Session
//!
//! Client id = device id, clean session off (subscriptions survive short outages), keep-alive
//! from config, reconnect with capped exponential backoff and full jitter ([`Backoff`]). The
//! redb outbox is the source of truth for events: rumqttc's in-memory queue is discarded at every
//! reconnect and everything unacknowledged is re-sent from the outbox (consumers drop duplicates
//! by event id). Subscriptions are re-sent on every ConnAck.
//!
//! Credentials: CA, client certificate and key as PEM files given in the configuration, or by
//! default `mqtt-ca.pem`, `mqtt-cert.pem` and `mqtt-key.pem` in systemd's
//! `$CREDENTIALS_DIRECTORY` (`LoadCredential[Encrypted]=`).

pub mod commands;
pub mod events;
pub mod operator;
pub mod probe;
pub mod publisher;
pub mod status;
pub mod tls;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::store::StoreError;

pub use commands::{CommandOutcome, RemoteCommand};
pub use events::{AccessEvent, Decision, EventKind, RecordedEvent, record_event};
pub use probe::probe;
pub use publisher::{FleetHandle, FleetLink, LinkStats};
pub use status::StatusSource;

/// Versioned topic prefix; bump the version when payloads change incompatibly.
pub const TOPIC_PREFIX: &str = "facegate/v1";
/// Credential file names looked up in `$CREDENTIALS_DIRECTORY`.
pub const CREDENTIAL_CA: &str = "mqtt-ca.pem";
/// Client certificate credential name.
pub const CREDENTIAL_CERT: &str = "mqtt-cert.pem";
/// Client key credential name.
pub const CREDENTIAL_KEY: &str = "mqtt-key.pem";

/// Why the MQTT link could not be set up or failed.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// Invalid configuration value.
    #[error("mqtt config: {0}")]
    Config(String),
    /// A credential file is missing, unreadable, malformed or too widely readable.
    #[error("mqtt credential {path}: {problem}")]
    Credential {
        /// File.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// TLS configuration could not be built.
    #[error("mqtt tls: {0}")]
    Tls(String),
    /// Client library failure that is not a routine disconnect.
    #[error("mqtt client: {0}")]
    Client(String),
    /// An operator request got no answer in time (the message says which step was missing).
    #[error("mqtt timeout: {0}")]
    Timeout(String),
    /// Outbox or store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Result alias of this module.
pub type Result<T, E = MqttError> = std::result::Result<T, E>;

fn default_port() -> u16 {
    8883
}
fn default_keep_alive() -> u64 {
    30
}
fn default_backoff_initial() -> u64 {
    500
}
fn default_backoff_max() -> u64 {
    30_000
}
fn default_window() -> u16 {
    16
}
fn default_status_interval() -> u64 {
    300
}
fn default_max_bundle() -> usize {
    crate::bundle::DEFAULT_MAX_BYTES
}
fn default_open_max_duration() -> u64 {
    30_000
}
fn default_open_max_window() -> u64 {
    60
}
fn default_open_skew() -> u64 {
    5
}
fn default_command_timeout() -> u64 {
    10_000
}

/// `[mqtt]` section of the daemon configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host name or IP (must match the broker certificate).
    pub host: String,
    /// Broker TLS port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Site id (topic segment); filled from the daemon's `[device]` table when empty.
    #[serde(default)]
    pub site: String,
    /// Device id: topic segment, MQTT client id, and the broker's username (certificate CN);
    /// filled from the daemon's `[device]` table when empty.
    #[serde(default)]
    pub device: String,
    /// CA certificate (PEM) the broker's certificate must chain to; nothing else is trusted.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Client private key (PEM, mode 0600/0400).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// MQTT keep-alive, seconds (≥ 1).
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// First reconnect delay, milliseconds.
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_ms: u64,
    /// Reconnect delay cap, milliseconds.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    /// Events in flight (published, not yet acknowledged) at once.
    #[serde(default = "default_window")]
    pub window: u16,
    /// Period of status republication, seconds.
    #[serde(default = "default_status_interval")]
    pub status_interval_secs: u64,
    /// Largest bundle accepted, bytes (also the incoming MQTT packet limit).
    #[serde(default = "default_max_bundle")]
    pub max_bundle_bytes: usize,
    /// Longest door release a signed `open` may ask for, milliseconds (1-300000).
    #[serde(default = "default_open_max_duration")]
    pub open_max_duration_ms: u64,
    /// Longest validity window a signed `open` may have, seconds (1-3600): bounds how long a
    /// captured command stays usable and how long its request id must be remembered.
    #[serde(default = "default_open_max_window")]
    pub open_max_window_secs: u64,
    /// Clock difference tolerated at both ends of an `open`'s window, seconds (0-300).
    #[serde(default = "default_open_skew")]
    pub open_clock_skew_secs: u64,
    /// How long the link waits for the daemon to answer a forwarded command before
    /// publishing a `timeout` result, milliseconds (100-300000).
    #[serde(default = "default_command_timeout")]
    pub command_timeout_ms: u64,
}

/// Topic-segment ids: no wildcards or separators, so an id can never widen a subscription.
pub fn validate_segment(what: &str, s: &str) -> Result<()> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if s.is_empty() || s.len() > 64 || !s.chars().all(ok) {
        return Err(MqttError::Config(format!(
            "{what} `{s}` must be 1-64 characters of [A-Za-z0-9._-]"
        )));
    }
    Ok(())
}

impl MqttConfig {
    /// Minimal configuration with defaults (tests, programmatic use).
    pub fn new(host: &str, port: u16, site: &str, device: &str) -> Self {
        MqttConfig {
            host: host.into(),
            port,
            site: site.into(),
            device: device.into(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            keep_alive_secs: default_keep_alive(),
            backoff_initial_ms: default_backoff_initial(),
            backoff_max_ms: default_backoff_max(),
            window: default_window(),
            status_interval_secs: default_status_interval(),
            max_bundle_bytes: default_max_bundle(),
            open_max_duration_ms: default_open_max_duration(),
            open_max_window_secs: default_open_max_window(),
            open_clock_skew_secs: default_open_skew(),
            command_timeout_ms: default_command_timeout(),
        }
    }

    /// Reject values that would misroute topics or make the client library panic.
    pub fn validate(&self) -> Result<()> {
        validate_segment("site", &self.site)?;
        validate_segment("device", &self.device)?;
        if self.device == crate::bundle::TARGET_ALL {
            return Err(MqttError::Config("device id `all` is reserved".into()));
        }
        if self.host.is_empty() {
            return Err(MqttError::Config("host is empty".into()));
        }
        if self.keep_alive_secs == 0 || self.keep_alive_secs > 3600 {
            return Err(MqttError::Config("keep_alive_secs must be 1-3600".into()));
        }
        if self.backoff_initial_ms == 0 || self.backoff_max_ms < self.backoff_initial_ms {
            return Err(MqttError::Config(
                "backoff needs 0 < backoff_initial_ms <= backoff_max_ms".into(),
            ));
        }
        if self.window == 0 || self.window > 1000 {
            return Err(MqttError::Config("window must be 1-1000".into()));
        }
        if !(1..=300_000).contains(&self.open_max_duration_ms) {
            return Err(MqttError::Config(
                "open_max_duration_ms must be 1-300000 (at most 5 minutes)".into(),
            ));
        }
        if !(1..=3600).contains(&self.open_max_window_secs) {
            return Err(MqttError::Config(
                "open_max_window_secs must be 1-3600".into(),
            ));
        }
        if self.open_clock_skew_secs > 300 {
            return Err(MqttError::Config(
                "open_clock_skew_secs must be 0-300".into(),
            ));
        }
        if !(100..=300_000).contains(&self.command_timeout_ms) {
            return Err(MqttError::Config(
                "command_timeout_ms must be 100-300000".into(),
            ));
        }
        Ok(())
    }

    /// The limits a signed `open` is checked against.
    pub fn open_policy(&self) -> commands::OpenPolicy {
        commands::OpenPolicy {
            site: self.site.clone(),
            device: self.device.clone(),
            max_duration_ms: self.open_max_duration_ms,
            max_window_secs: self.open_max_window_secs,
            clock_skew_secs: self.open_clock_skew_secs,
        }
    }

    /// `(ca, cert, key)` paths: explicit ones win, else `$CREDENTIALS_DIRECTORY/mqtt-*.pem`.
    pub fn credential_paths(&self) -> Result<(PathBuf, PathBuf, PathBuf)> {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        let pick = |explicit: &Option<PathBuf>, name: &str| -> Result<PathBuf> {
            explicit
                .clone()
                .or_else(|| dir.as_deref().map(|d| Path::new(d).join(name)))
                .ok_or_else(|| {
                    MqttError::Config(format!(
                        "no path for {name}: set it in [mqtt] or run under systemd with LoadCredential={name}"
                    ))
                })
        };
        Ok((
            pick(&self.ca_file, CREDENTIAL_CA)?,
            pick(&self.cert_file, CREDENTIAL_CERT)?,
            pick(&self.key_file, CREDENTIAL_KEY)?,
        ))
    }

    /// Topic names for this device.
    pub fn topics(&self) -> Topics {
        Topics::new(&self.site, &self.device)
    }
}

/// Every topic a device uses, built once from site and device id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    base: String,
    all: String,
}

impl Topics {
    /// Topics of `device` at `site` (ids must already be validated).
    pub fn new(site: &str, device: &str) -> Self {
        Topics {
            base: format!("{TOPIC_PREFIX}/{site}/{device}"),
            all: format!("{TOPIC_PREFIX}/{site}/all"),
        }
    }
    /// Attendance/access events (out).
    pub fn events(&self) -> String {
        format!("{}/events", self.base)
    }
    /// Retained status (out).
    pub fn status(&self) -> String {
        format!("{}/status", self.base)
    }
    /// Bundles for this device (in).
    pub fn bundles(&self) -> String {
        format!("{}/bundles", self.base)
    }
    /// Bundles for every device of the site (in).
    pub fn all_bundles(&self) -> String {
        format!("{}/bundles", self.all)
    }
    /// Bundle outcomes (out).
    pub fn bundle_result(&self) -> String {
        format!("{}/bundles/result", self.base)
    }
    /// Subscription filter for all commands (in).
    pub fn cmd_filter(&self) -> String {
        format!("{}/cmd/+", self.base)
    }
    /// One command's topic.
    pub fn cmd(&self, name: &str) -> String {
        format!("{}/cmd/{name}", self.base)
    }
    /// One command's result topic (out).
    pub fn cmd_result(&self, name: &str) -> String {
        format!("{}/cmd/{name}/result", self.base)
    }
    /// Command name if `topic` is one of this device's command topics.
    pub fn parse_cmd<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let rest = topic
            .strip_prefix(self.base.as_str())?
            .strip_prefix("/cmd/")?;
        (!rest.is_empty() && !rest.contains('/')).then_some(rest)
    }
}

/// Capped exponential backoff with full jitter: attempt n waits a random time in
/// `[d/2, d]` with `d = min(max, initial · 2ⁿ)`, so a fleet does not reconnect in lockstep
/// after a broker restart.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// New backoff starting at `initial`, never above `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    /// Delay before the next attempt (and count the attempt).
    pub fn next_delay(&mut self) -> Duration {
        use rand::Rng;
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        let d = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = d / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis().min(u64::MAX as u128) as u64);
        half + Duration::from_millis(jitter)
    }

    /// Connected again: start over from `initial`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_validation() {
        let t = Topics::new("hq", "door-1");
        assert_eq!(t.events(), "facegate/v1/hq/door-1/events");
        assert_eq!(t.all_bundles(), "facegate/v1/hq/all/bundles");
        assert_eq!(
            t.cmd_result("open"),
            "facegate/v1/hq/door-1/cmd/open/result"
        );
        assert_eq!(
            t.parse_cmd("facegate/v1/hq/door-1/cmd/status"),
            Some("status")
        );
        assert_eq!(t.parse_cmd("facegate/v1/hq/door-1/cmd/status/result"), None);
        assert_eq!(t.parse_cmd("facegate/v1/hq/door-2/cmd/status"), None);
        for bad in ["", "a/b", "+", "#", "x y"] {
            assert!(validate_segment("device", bad).is_err(), "{bad}");
        }
        let mut c = MqttConfig::new("localhost", 8883, "hq", "all");
        assert!(c.validate().is_err());
        c.device = "door-1".into();
        c.validate().unwrap();
        c.keep_alive_secs = 0;
        assert!(c.validate().is_err());
        let parsed: MqttConfig =
            toml::from_str("host = \"b\"\nsite = \"hq\"\ndevice = \"d\"\n").unwrap();
        assert_eq!(parsed.port, 8883);
        assert_eq!(
            (parsed.open_max_duration_ms, parsed.open_max_window_secs),
            (30_000, 60)
        );
        // site and device may be left to the daemon's [device] table, but never stay empty.
        let mut bare: MqttConfig = toml::from_str("host = \"b\"\n").unwrap();
        assert_eq!((bare.site.as_str(), bare.device.as_str()), ("", ""));
        let e = bare.validate().unwrap_err().to_string();
        assert!(e.contains("site"), "{e}");
        bare.site = "hq".into();
        assert!(bare.validate().unwrap_err().to_string().contains("device"));
        bare.device = "door-9".into();
        bare.validate().unwrap();
        for (field, bad) in [
            ("open_max_duration_ms", 0u64),
            ("open_max_duration_ms", 300_001),
            ("open_max_window_secs", 0),
            ("open_max_window_secs", 3601),
            ("open_clock_skew_secs", 301),
            ("command_timeout_ms", 99),
        ] {
            let c: MqttConfig = toml::from_str(&format!(
                "host = \"b\"\nsite = \"s\"\ndevice = \"d\"\n{field} = {bad}\n"
            ))
            .unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{field}={bad}: {e}");
        }
        assert!(
            toml::from_str::<MqttConfig>("host=\"b\"\nsite=\"s\"\ndevice=\"d\"\nprot=1\n").is_err()
        );
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let ds: Vec<_> = (0..12).map(|_| b.next_delay()).collect();
        assert!(ds[0] >= Duration::from_millis(50) && ds[0] <= Duration::from_millis(100));
        assert!(ds.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(ds[11] >= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
