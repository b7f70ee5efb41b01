//! Device status on `.../status`: retained `online` report while connected, retained
//! `offline` via the MQTT Last Will when the device vanishes (crash, power or network loss),
//! and an explicit retained `offline` on a clean shutdown.
//!
//! The report holds only operational facts — software version, model ids, template count,
//! outbox depth and overflow counts, hardware faults — never people, labels or vectors.
//!
//! The outbox overflow alarm is computed from the store at every report (not pushed into
//! [`StatusSource::faults`], which other tasks replace wholesale): while an overflow summary is
//! waiting for delivery, `faults` contains an `outbox_overflow: ...` entry and `outbox_overflow`
//! gives the counts; the lifetime total stays in `outbox_overflow.total` afterwards.

use std::sync::{Arc, Mutex};

use rumqttc::{LastWill, QoS};
use serde::Serialize;

use crate::store::{Store, format_unix, now_unix};

/// Facts the rest of the daemon feeds into status reports.
#[derive(Debug, Clone, Default)]
pub struct StatusSource {
    /// Software version.
    pub version: String,
    /// Loaded model ids (`id@version`).
    pub model_ids: Vec<String>,
    /// Current hardware/software faults (set by the HAL and other tasks).
    pub faults: Arc<Mutex<Vec<String>>>,
}

impl StatusSource {
    /// Source for this build's version and the given models.
    pub fn new(model_ids: Vec<String>) -> Self {
        StatusSource {
            version: env!("CARGO_PKG_VERSION").into(),
            model_ids,
            faults: Arc::default(),
        }
    }

    /// Replace the fault list (empty = healthy).
    pub fn set_faults(&self, faults: Vec<String>) {
        if let Ok(mut f) = self.faults.lock() {
            *f = faults;
        }
    }
}

/// The JSON published on the status topic.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// `online` or `offline`.
    pub state: &'static str,
    /// Device id.
    pub device: String,
    /// Software version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Loaded model ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub model_ids: Vec<String>,
    /// Templates in the store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_count: Option<u64>,
    /// Events awaiting publication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox_depth: Option<u64>,
    /// Applied bundle version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_version: Option<u64>,
    /// Events rolled into overflow summaries (absent if it never happened).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox_overflow: Option<OverflowReport>,
    /// Faults (empty when healthy).
    pub faults: Vec<String>,
    /// Why offline (`last_will`, `shutdown`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Device clock, RFC 3339.
    pub ts: String,
}

/// Overflow counts in the status report.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct OverflowReport {
    /// Events counted by the overflow summary not yet delivered.
    pub pending: u64,
    /// Events ever rolled up on this terminal.
    pub total: u64,
}

/// Build the `online` report from the store and the source; store failures become faults.
pub fn online(store: &Store, device: &str, src: &StatusSource) -> Vec<u8> {
    let mut faults = src.faults.lock().map(|f| f.clone()).unwrap_or_default();
    let mut note = |what: &str, e: &dyn std::fmt::Display| faults.push(format!("{what}: {e}"));
    let template_count = match store.load_all_templates() {
        Ok(t) => Some(t.len() as u64),
        Err(e) => {
            note("templates", &e);
            None
        }
    };
    let outbox_depth = match store.outbox_len() {
        Ok(n) => Some(n),
        Err(e) => {
            note("outbox", &e);
            None
        }
    };
    let bundle_version = store.applied_bundle_version().ok().flatten();
    let outbox_overflow = match store.outbox_overflow() {
        Ok(o) if o.total > 0 => {
            if o.pending > 0 {
                faults.push(format!(
                    "outbox_overflow: {} oldest events rolled into an undelivered summary ({} since the store was created)",
                    o.pending, o.total
                ));
            }
            Some(OverflowReport {
                pending: o.pending,
                total: o.total,
            })
        }
        Ok(_) => None,
        Err(e) => {
            faults.push(format!("outbox overflow state: {e}"));
            None
        }
    };
    let r = StatusReport {
        state: "online",
        device: device.into(),
        version: Some(src.version.clone()),
        model_ids: src.model_ids.clone(),
        template_count,
        outbox_depth,
        bundle_version,
        outbox_overflow,
        faults,
        reason: None,
        ts: format_unix(now_unix()),
    };
    serde_json::to_vec(&r).unwrap_or_default()
}

/// The `offline` report (`reason`: `last_will` or `shutdown`).
pub fn offline(device: &str, reason: &'static str) -> Vec<u8> {
    let r = StatusReport {
        state: "offline",
        device: device.into(),
        version: None,
        model_ids: Vec::new(),
        template_count: None,
        outbox_depth: None,
        bundle_version: None,
        outbox_overflow: None,
        faults: Vec::new(),
        reason: Some(reason),
        ts: format_unix(now_unix()),
    };
    serde_json::to_vec(&r).unwrap_or_default()
}

/// Retained QoS 1 Last Will announcing `offline` on `topic`.
pub fn last_will(topic: &str, device: &str) -> LastWill {
    LastWill::new(topic, offline(device, "last_will"), QoS::AtLeastOnce, true)
}
