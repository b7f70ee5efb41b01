//! What the daemon reports: every access decision and door state change becomes one journal
//! line with structured fields and one outbox event for the fleet.
//!
//! **Journal fields** (filter with `journalctl FACEGATE_EVENT=access DECISION=denied`):
//! `FACEGATE_EVENT` (kind), `DECISION`, `REASON`, `PERSON_ID` (opaque id; the label only when
//! `[logging] person_labels = true`), `MATCH_SCORE`, `MARGIN`, `LIVENESS_SCORE`,
//! `LATENCY_{DETECT,LIVENESS,EMBED,MATCH,TOTAL}_MS`, `FAULT_SOURCE`, `OUTBOX_SEQ`, `DETAIL`.
//! Never images, vectors or key material: the types below cannot even carry them.
//!
//! **Outbox events** follow the MQTT event schema ([`crate::mqtt::publisher`]); they are
//! committed before the decision counts as done (see [`EventSink::record`]).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::door::{DoorEvent, UnlockCause};
use crate::mqtt::{AccessEvent, Decision, EventKind, RecordedEvent};
use crate::store::{OutboxLimits, Store, StoreError};

/// Per-stage latency of one decision, milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct DecisionTimes {
    /// Working-frame preparation + YuNet, summed over the frames of the presentation.
    pub detect_ms: f64,
    /// Liveness checks, summed over the frames.
    pub liveness_ms: f64,
    /// Alignment + SFace.
    pub embed_ms: f64,
    /// 1:N match.
    pub match_ms: f64,
    /// From the capture of the deciding frame to the decision (what a person waits for after
    /// the last frame that was needed).
    pub frame_to_decision_ms: f64,
    /// Frames of this presentation that were analysed.
    pub frames: u32,
}

/// One access decision of the pipeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessDecision {
    /// Open the door or not.
    pub granted: bool,
    /// The granted person (only when granted).
    pub person: Option<String>,
    /// Machine reason: `match`, `below_threshold`, `ambiguous_margin`, `liveness`, `throttled`...
    pub reason: String,
    /// Human detail (which liveness check failed and why); no biometric data.
    pub detail: String,
    /// Best match score, when matching ran.
    pub match_score: Option<f32>,
    /// Lead over the next person, when matching ran.
    pub margin: Option<f32>,
    /// Fused passive liveness score of the deciding frame.
    pub liveness_score: Option<f32>,
    /// Latency.
    pub times: DecisionTimes,
    /// Face track id (per process).
    pub track: u64,
    /// Capture time of the deciding frame (for `bench e2e`: frame → lock command).
    #[serde(skip)]
    pub captured_at: Option<std::time::Instant>,
}

/// Everything the daemon records.
#[derive(Debug, Clone)]
pub enum DaemonEvent {
    /// A face decision.
    Access(AccessDecision),
    /// The door thread reported a change.
    Door(DoorEvent),
    /// Too many denials: matching paused.
    Throttled {
        /// Pause length.
        pause: Duration,
    },
    /// A hardware or pipeline fault (camera lost, sensor faulty...).
    Fault {
        /// Which part.
        source: &'static str,
        /// What happened.
        detail: String,
    },
}

impl DaemonEvent {
    /// The `FACEGATE_EVENT` value.
    pub fn kind(&self) -> &'static str {
        match self {
            DaemonEvent::Access(_) => "access",
            DaemonEvent::Door(d) => match d {
                DoorEvent::Unlocked { .. } => "door_unlocked",
                DoorEvent::Relocked { .. } => "door_relocked",
                DoorEvent::Opened => "door_opened",
                DoorEvent::Closed => "door_closed",
                DoorEvent::HeldOpen { .. } => "door_held_open",
                DoorEvent::Forced => "door_forced",
                DoorEvent::ExitButton => "exit_button",
                DoorEvent::Fault(_) => "fault",
                DoorEvent::FaultCleared(_) => "fault_cleared",
            },
            DaemonEvent::Throttled { .. } => "throttled",
            DaemonEvent::Fault { .. } => "fault",
        }
    }
}

fn cause_text(c: &UnlockCause) -> String {
    match c {
        UnlockCause::Face(p) => format!("face:{p}"),
        UnlockCause::ExitButton => "exit_button".into(),
        UnlockCause::Remote(id) => format!("remote:{id}"),
    }
}

/// Writes events to the outbox and the journal, and keeps the list of current faults that the
/// retained MQTT status reports (a fault event adds its source, `fault_cleared` removes it).
#[derive(Clone)]
pub struct EventSink {
    store: Arc<Store>,
    device: String,
    limits: OutboxLimits,
    on_recorded: Option<Arc<dyn Fn() + Send + Sync>>,
    faults: Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>,
    status: Option<crate::mqtt::StatusSource>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink")
            .field("device", &self.device)
            .finish()
    }
}

impl EventSink {
    /// A sink for `device`; `on_recorded` wakes the publisher after each commit.
    pub fn new(
        store: Arc<Store>,
        device: &str,
        limits: OutboxLimits,
        on_recorded: Option<Arc<dyn Fn() + Send + Sync>>,
    ) -> Self {
        Self {
            store,
            device: device.into(),
            limits,
            on_recorded,
            faults: Arc::default(),
            status: None,
        }
    }

    /// Mirror the current faults into this status source (published as `faults`).
    pub fn with_status(mut self, status: crate::mqtt::StatusSource) -> Self {
        self.status = Some(status);
        self
    }

    /// Current faults as `source: detail` lines.
    pub fn faults(&self) -> Vec<String> {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect()
    }

    fn track_fault(&self, ev: &DaemonEvent) {
        let change = match ev {
            DaemonEvent::Fault { source, detail } => {
                Some((source.to_string(), Some(detail.clone())))
            }
            DaemonEvent::Door(DoorEvent::Fault(m)) => Some(("door".to_string(), Some(m.clone()))),
            DaemonEvent::Door(DoorEvent::FaultCleared(what)) => {
                let key = match *what {
                    "relay" | "door_contact" | "exit_button" => "door",
                    other => other,
                };
                Some((key.to_string(), None))
            }
            _ => None,
        };
        let Some((source, detail)) = change else {
            return;
        };
        let mut f = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        match detail {
            Some(d) => {
                f.insert(source, d);
            }
            None => {
                f.remove(&source);
            }
        }
        let list: Vec<String> = f.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        drop(f);
        if let Some(s) = &self.status {
            s.set_faults(list);
        }
    }

    /// The outbox event for `ev`: what the fleet sees.
    pub fn outbox_event(ev: &DaemonEvent) -> AccessEvent {
        let mut e = AccessEvent {
            kind: EventKind::Access,
            person_id: None,
            decision: None,
            match_score: None,
            liveness_score: None,
            reason: String::new(),
            detail: None,
        };
        match ev {
            DaemonEvent::Access(a) => {
                e.person_id = a.person.clone();
                e.decision = Some(if a.granted {
                    Decision::Granted
                } else {
                    Decision::Denied
                });
                e.match_score = a.match_score;
                e.liveness_score = a.liveness_score;
                e.reason = a.reason.clone();
            }
            DaemonEvent::Door(d) => match d {
                DoorEvent::Unlocked { cause, for_ms } => {
                    e.kind = match cause {
                        UnlockCause::Remote(_) => EventKind::RemoteOpen,
                        _ => EventKind::DoorOpened,
                    };
                    if let UnlockCause::Face(p) = cause {
                        e.person_id = Some(p.clone());
                    }
                    e.reason = "unlocked".into();
                    e.detail = Some(format!("{} for {for_ms} ms", cause_text(cause)));
                }
                DoorEvent::Relocked { capped } => {
                    e.kind = EventKind::DoorClosed;
                    e.reason = if *capped { "relocked_cap" } else { "relocked" }.into();
                }
                DoorEvent::Opened => {
                    e.kind = EventKind::DoorOpened;
                    e.reason = "contact_open".into();
                }
                DoorEvent::Closed => {
                    e.kind = EventKind::DoorClosed;
                    e.reason = "contact_closed".into();
                }
                DoorEvent::HeldOpen { secs } => {
                    e.kind = EventKind::DoorHeldOpen;
                    e.reason = "held_open".into();
                    e.detail = Some(format!("{secs} s"));
                }
                DoorEvent::Forced => {
                    e.kind = EventKind::DoorForced;
                    e.reason = "forced_open".into();
                }
                DoorEvent::ExitButton => {
                    e.kind = EventKind::ExitButton;
                    e.reason = "exit_button".into();
                }
                DoorEvent::Fault(m) => {
                    e.kind = EventKind::Fault;
                    e.reason = "door_hardware".into();
                    e.detail = Some(m.clone());
                }
                DoorEvent::FaultCleared(what) => {
                    e.kind = EventKind::Fault;
                    e.reason = "fault_cleared".into();
                    e.detail = Some((*what).into());
                }
            },
            DaemonEvent::Throttled { pause } => {
                e.kind = EventKind::Throttled;
                e.reason = "too_many_denials".into();
                e.detail = Some(format!("matching paused {} s", pause.as_secs()));
            }
            DaemonEvent::Fault { source, detail } => {
                e.kind = EventKind::Fault;
                e.reason = (*source).into();
                e.detail = Some(detail.clone());
            }
        }
        e
    }

    /// Commit `ev` to the outbox (durable when this returns), then log it. A store failure is
    /// logged as an error and returned; the caller has already acted safely (a denial, a
    /// relock) because recording never gates locking.
    pub fn record(&self, ev: &DaemonEvent, label: Option<&str>) -> Result<u64, StoreError> {
        self.track_fault(ev);
        let out = Self::outbox_event(ev);
        let result = crate::mqtt::record_event(&self.store, &self.device, &out, &self.limits);
        let seq = result.as_ref().ok().map(|r| r.seq);
        log_event(ev, label, seq);
        match result {
            Ok(RecordedEvent { seq, .. }) => {
                if let Some(f) = &self.on_recorded {
                    f();
                }
                Ok(seq)
            }
            Err(e) => {
                tracing::error!(
                    facegate_event = "fault",
                    fault_source = "store",
                    error = %e,
                    "event could not be committed to the outbox"
                );
                Err(e)
            }
        }
    }
}

fn log_event(ev: &DaemonEvent, label: Option<&str>, seq: Option<u64>) {
    let kind = ev.kind();
    match ev {
        DaemonEvent::Access(a) => {
            let decision = if a.granted { "granted" } else { "denied" };
            let t = &a.times;
            tracing::info!(
                facegate_event = kind,
                decision,
                reason = %a.reason,
                person_id = a.person.as_deref().unwrap_or("unknown"),
                person_label = label.unwrap_or(""),
                match_score = a.match_score.map(|s| format!("{s:.3}")).unwrap_or_default(),
                margin = a.margin.map(|s| format!("{s:.3}")).unwrap_or_default(),
                liveness_score = a.liveness_score.map(|s| format!("{s:.3}")).unwrap_or_default(),
                latency_detect_ms = format!("{:.1}", t.detect_ms),
                latency_liveness_ms = format!("{:.1}", t.liveness_ms),
                latency_embed_ms = format!("{:.1}", t.embed_ms),
                latency_match_ms = format!("{:.2}", t.match_ms),
                latency_total_ms = format!("{:.1}", t.frame_to_decision_ms),
                frames = t.frames,
                outbox_seq = seq.unwrap_or(0),
                detail = %a.detail,
                "access {decision}: {} ({})",
                a.person.as_deref().unwrap_or("unknown"),
                a.reason
            );
        }
        DaemonEvent::Door(DoorEvent::Fault(m)) => {
            tracing::error!(facegate_event = kind, fault_source = "door", detail = %m, outbox_seq = seq.unwrap_or(0), "door hardware fault: {m}");
        }
        DaemonEvent::Door(DoorEvent::Forced) | DaemonEvent::Door(DoorEvent::HeldOpen { .. }) => {
            tracing::warn!(
                facegate_event = kind,
                outbox_seq = seq.unwrap_or(0),
                "door alarm: {kind}"
            );
        }
        DaemonEvent::Door(d) => {
            let detail = match d {
                DoorEvent::Unlocked { cause, for_ms } => {
                    format!("{} for {for_ms} ms", cause_text(cause))
                }
                DoorEvent::Relocked { capped: true } => "maximum unlock time reached".into(),
                DoorEvent::FaultCleared(w) => (*w).to_string(),
                _ => String::new(),
            };
            tracing::info!(facegate_event = kind, detail = %detail, outbox_seq = seq.unwrap_or(0), "door: {kind} {detail}");
        }
        DaemonEvent::Throttled { pause } => {
            tracing::warn!(
                facegate_event = kind,
                pause_secs = pause.as_secs(),
                outbox_seq = seq.unwrap_or(0),
                "too many denials: matching paused for {} s",
                pause.as_secs()
            );
        }
        DaemonEvent::Fault { source, detail } => {
            tracing::error!(facegate_event = kind, fault_source = *source, detail = %detail, outbox_seq = seq.unwrap_or(0), "{source} fault: {detail}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Kek, KekSource, SecretKey};

    #[test]
    fn faults_reach_the_status_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let kek = Kek::from_secret(SecretKey::random().unwrap(), KekSource::Memory);
        let store = Arc::new(Store::create(&dir.path().join("s.redb"), &kek, "t").unwrap());
        let status = crate::mqtt::StatusSource::new(vec![]);
        let sink = EventSink::new(store.clone(), "d1", OutboxLimits::default(), None)
            .with_status(status.clone());
        sink.record(
            &DaemonEvent::Fault {
                source: "camera",
                detail: "disconnected".into(),
            },
            None,
        )
        .unwrap();
        sink.record(
            &DaemonEvent::Door(DoorEvent::Fault("relay stuck".into())),
            None,
        )
        .unwrap();
        assert_eq!(
            *status.faults.lock().unwrap(),
            vec!["camera: disconnected", "door: relay stuck"]
        );
        sink.record(&DaemonEvent::Door(DoorEvent::FaultCleared("camera")), None)
            .unwrap();
        sink.record(&DaemonEvent::Door(DoorEvent::FaultCleared("relay")), None)
            .unwrap();
        assert!(status.faults.lock().unwrap().is_empty());
        // Every one of them is an outbox event too.
        assert_eq!(store.outbox_len().unwrap(), 4);
    }
}
