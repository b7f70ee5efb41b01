//! Events at the door and the bounded outbox they wait in: what the daemon records, what the
//! fleet receives, and what is left when the outbox overflows.
//!
//! # Events
//!
//! [`record_event`] commits an event to the bounded redb outbox (call it before reporting the
//! door decision as done). Every door state change is an event ([`EventKind`]): access decisions,
//! door opened/closed/held/forced, exit button, throttling, remote opens, faults. The JSON
//! carries a UUIDv7 event id (unique, time-ordered: consumers drop redeliveries by it), `kind`,
//! the device id, the person id (`unknown` for an unmatched access attempt; absent for door
//! events without a person), `decision` (only when set), scores rounded to 3 decimals, a short
//! machine `reason`, an optional short machine `detail`, and the device clock. The outbox
//! sequence number — monotonic, never reused, surviving restarts — is added as `seq` at
//! publication. Never images or vectors; `reason` and `detail` are cut to short printable ASCII
//! so a caller cannot smuggle bulk data into them.
//!
//! # Overflow
//!
//! The outbox is bounded ([`OutboxLimits`]). When an append would exceed a bound, the oldest
//! events are removed and counted into one `outbox_overflow` summary event in the same redb
//! transaction (see [`crate::store::outbox`]), which is published before the remaining events:
//!
//! ```text
//! {"event_id", "kind":"outbox_overflow", "device", "reason":"outbox_full",
//!  "summary_id", "revision", "rolled_up", "first_seq", "last_seq",
//!  "first_time_ms", "last_time_ms", "first_time", "last_time",
//!  "by_kind": {"access": n, "door_forced": n, ...}, "by_decision": {"granted": n, "denied": n, "none": n},
//!  "unreadable", "max_events", "max_bytes", "device_time", "device_time_ms"}
//! ```
//!
//! `rolled_up` = Σ `by_kind` + `unreadable` = Σ `by_decision` + `unreadable`. Further overflows
//! fold into the same summary while it is undelivered; each write is a new `revision` with a new
//! `event_id`, and a later revision of the same `summary_id` **supersedes** earlier ones (it is
//! cumulative), so consumers keep the highest revision per `summary_id`. Once a revision is
//! acknowledged and nothing was folded in meanwhile, the summary is deleted; the next overflow
//! starts a new `summary_id`. A rolled-up event that was in flight when it was removed may
//! still reach the broker; its `seq` then lies in `[first_seq, last_seq]`.
//!
//! The summary deliberately holds **no person ids**: it must stay small and fixed-size (it lives
//! in a reserved slot of the budget it protects, and a list of ids would grow with the loss),
//! and ids without their times and decisions would not let anyone rebuild attendance anyway —
//! what the fleet needs is *how much* was lost, of which kinds, over which period, so it can
//! raise an alarm and reconcile from other records. The counts per kind keep security-relevant
//! losses (`door_forced`, `door_held_open`) visible.
//!
//! The alarm: the first overflow logs an `error` (`FACEGATE_EVENT=outbox_overflow`, with counts
//! and limits), further ones a `warn` each time the pending count crosses a power of two, and the
//! retained status carries `outbox_overflow` counts and a fault while a summary is undelivered.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::store::{FoldInput, OutboxLimits, Store, StoreError, format_unix};

/// Outcome of an access attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Door opened.
    Granted,
    /// Refused (unknown face, spoof, schedule...).
    Denied,
}

/// What happened at the door: the fleet needs every state change, not only decisions, to tell
/// a forced door from a normal passage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A face was presented and a decision taken (`decision` is set).
    Access,
    /// The door contact reports open.
    DoorOpened,
    /// The door contact reports closed.
    DoorClosed,
    /// Open longer than allowed after a release.
    DoorHeldOpen,
    /// Opened without a release (break-in or mechanical override).
    DoorForced,
    /// Released by the exit button (request to exit).
    ExitButton,
    /// Attempts refused for a while after too many failures.
    Throttled,
    /// Released by a verified remote `open` command.
    RemoteOpen,
    /// Summary of events the bounded outbox had to drop (written by the outbox itself).
    OutboxOverflow,
    /// A hardware or software fault (camera, lock, sensor...).
    Fault,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 10] = [
        EventKind::Access,
        EventKind::DoorOpened,
        EventKind::DoorClosed,
        EventKind::DoorHeldOpen,
        EventKind::DoorForced,
        EventKind::ExitButton,
        EventKind::Throttled,
        EventKind::RemoteOpen,
        EventKind::OutboxOverflow,
        EventKind::Fault,
    ];

    /// The wire name (`door_forced`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Access => "access",
            EventKind::DoorOpened => "door_opened",
            EventKind::DoorClosed => "door_closed",
            EventKind::DoorHeldOpen => "door_held_open",
            EventKind::DoorForced => "door_forced",
            EventKind::ExitButton => "exit_button",
            EventKind::Throttled => "throttled",
            EventKind::RemoteOpen => "remote_open",
            EventKind::OutboxOverflow => "outbox_overflow",
            EventKind::Fault => "fault",
        }
    }
}

/// What the daemon reports about one event at the door.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessEvent {
    /// What happened.
    pub kind: EventKind,
    /// Matched person id. For [`EventKind::Access`], `None` publishes `unknown`; for other
    /// kinds `None` publishes no person at all.
    pub person_id: Option<String>,
    /// Decision, for access attempts (published only when set).
    pub decision: Option<Decision>,
    /// Best match score, if a face was matched.
    pub match_score: Option<f32>,
    /// Liveness score, if measured.
    pub liveness_score: Option<f32>,
    /// Short machine reason (`match`, `no_match`, `spoof`, `contact`, ...); at most 64
    /// printable ASCII characters are kept.
    pub reason: String,
    /// Optional short machine detail (`relay=1`, a request id, a fault code); never biometric;
    /// at most 128 printable ASCII characters are kept.
    pub detail: Option<String>,
}

impl AccessEvent {
    /// An access decision.
    pub fn access(
        decision: Decision,
        person_id: Option<String>,
        match_score: Option<f32>,
        liveness_score: Option<f32>,
        reason: &str,
    ) -> Self {
        AccessEvent {
            kind: EventKind::Access,
            person_id,
            decision: Some(decision),
            match_score,
            liveness_score,
            reason: reason.into(),
            detail: None,
        }
    }

    /// A door state change or other non-decision event.
    pub fn door(kind: EventKind, reason: &str) -> Self {
        AccessEvent {
            kind,
            person_id: None,
            decision: None,
            match_score: None,
            liveness_score: None,
            reason: reason.into(),
            detail: None,
        }
    }

    /// The same event with `detail` set.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// Longest `reason` kept.
pub const MAX_REASON: usize = 64;
/// Longest `detail` kept.
pub const MAX_DETAIL: usize = 128;

/// Keep machine text machine text: printable ASCII only (others become `_`), cut at `max`.
pub(crate) fn machine_text(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[derive(Serialize)]
struct EventJson<'a> {
    event_id: String,
    kind: EventKind,
    device: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    person_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: Option<Decision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    match_score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    liveness_score: Option<f64>,
    reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    device_time: String,
    device_time_ms: u64,
}

fn round3(v: Option<f32>) -> Option<f64> {
    v.filter(|x| x.is_finite())
        .map(|x| (f64::from(x) * 1000.0).round() / 1000.0)
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What [`record_event`] committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedEvent {
    /// The event's UUIDv7 (`event_id` on the wire).
    pub event_id: uuid::Uuid,
    /// Its outbox sequence (`seq` on the wire).
    pub seq: u64,
    /// Oldest events rolled into the overflow summary to make room for it (0 normally).
    pub rolled_up: u64,
    /// Events counted by the undelivered overflow summary after this append.
    pub pending_rolled_up: u64,
}

/// Commit an event to the outbox within `limits`. Once this returns the event will be
/// published eventually, whatever happens to process or broker — unless later overflows roll it
/// into the (counted) overflow summary. Raises the overflow alarm (see the module docs).
pub fn record_event(
    store: &Store,
    device: &str,
    ev: &AccessEvent,
    limits: &OutboxLimits,
) -> std::result::Result<RecordedEvent, StoreError> {
    let id = uuid::Uuid::now_v7();
    let ms = now_ms();
    let person_id = match (&ev.person_id, ev.kind) {
        (Some(p), _) => Some(p.as_str()),
        (None, EventKind::Access) => Some("unknown"),
        (None, _) => None,
    };
    let j = EventJson {
        event_id: id.to_string(),
        kind: ev.kind,
        device,
        person_id,
        decision: ev.decision,
        match_score: round3(ev.match_score),
        liveness_score: round3(ev.liveness_score),
        reason: machine_text(&ev.reason, MAX_REASON),
        detail: ev.detail.as_deref().map(|d| machine_text(d, MAX_DETAIL)),
        device_time: format_unix(ms / 1000),
        device_time_ms: ms,
    };
    let bytes = Zeroizing::new(
        serde_json::to_vec(&j)
            .map_err(|_| StoreError::InvalidInput("unserialisable event".into()))?,
    );
    let mut fold = |input: FoldInput<'_>| fold_overflow(device, limits, input);
    let out = store.outbox_append(&bytes, limits, &mut fold)?;
    if out.rolled_up > 0 {
        let before = out.pending_rolled_up.saturating_sub(out.rolled_up);
        if out.new_summary {
            tracing::error!(
                FACEGATE_EVENT = "outbox_overflow",
                device = %device,
                rolled_up = out.rolled_up,
                pending = out.pending_rolled_up,
                max_events = limits.max_events,
                max_bytes = limits.max_bytes,
                "outbox full: the oldest events were rolled into an overflow summary (broker unreachable for long, or outbox limits too small)"
            );
        } else if before.checked_ilog2() != out.pending_rolled_up.checked_ilog2() {
            tracing::warn!(
                FACEGATE_EVENT = "outbox_overflow",
                device = %device,
                rolled_up = out.rolled_up,
                pending = out.pending_rolled_up,
                max_events = limits.max_events,
                max_bytes = limits.max_bytes,
                "outbox still full: more oldest events rolled into the overflow summary"
            );
        }
    }
    Ok(RecordedEvent {
        event_id: id,
        seq: out.seq,
        rolled_up: out.rolled_up,
        pending_rolled_up: out.pending_rolled_up,
    })
}

/// The `outbox_overflow` summary as stored and published (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OverflowSummary {
    event_id: String,
    kind: EventKind,
    device: String,
    reason: String,
    summary_id: String,
    revision: u64,
    rolled_up: u64,
    first_seq: u64,
    last_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    first_time_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_time_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    first_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_time: Option<String>,
    by_kind: BTreeMap<String, u64>,
    by_decision: BTreeMap<String, u64>,
    unreadable: u64,
    max_events: u64,
    max_bytes: u64,
    device_time: String,
    device_time_ms: u64,
}

/// The fields of a rolled-up event the summary counts (anything else is ignored).
#[derive(Deserialize)]
struct RolledFields {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    decision: Option<String>,
    #[serde(default)]
    device_time_ms: Option<u64>,
}

/// Fold rolled-up events into the overflow summary (the store's [`crate::store::Fold`]).
pub(crate) fn fold_overflow(
    device: &str,
    limits: &OutboxLimits,
    input: FoldInput<'_>,
) -> std::result::Result<Vec<u8>, StoreError> {
    let now = now_ms();
    let mut s = input
        .previous
        .and_then(|p| serde_json::from_slice::<OverflowSummary>(p).ok())
        .unwrap_or_else(|| OverflowSummary {
            event_id: String::new(),
            kind: EventKind::OutboxOverflow,
            device: device.into(),
            reason: "outbox_full".into(),
            summary_id: uuid::Uuid::now_v7().to_string(),
            revision: 0,
            rolled_up: 0,
            first_seq: 0,
            last_seq: 0,
            first_time_ms: None,
            last_time_ms: None,
            first_time: None,
            last_time: None,
            by_kind: BTreeMap::new(),
            by_decision: BTreeMap::new(),
            unreadable: 0,
            max_events: 0,
            max_bytes: 0,
            device_time: String::new(),
            device_time_ms: 0,
        });
    if s.revision != input.revision || s.event_id.is_empty() {
        s.event_id = uuid::Uuid::now_v7().to_string();
        s.revision = input.revision;
    }
    s.rolled_up += input.lost_from_previous;
    s.unreadable += input.lost_from_previous;
    for r in input.rolled {
        s.rolled_up += 1;
        s.first_seq = if s.first_seq == 0 {
            r.seq
        } else {
            s.first_seq.min(r.seq)
        };
        s.last_seq = s.last_seq.max(r.seq);
        let Some(f) = r
            .payload
            .as_deref()
            .and_then(|p| serde_json::from_slice::<RolledFields>(p).ok())
        else {
            s.unreadable += 1;
            continue;
        };
        // Events written before kinds existed were all access decisions.
        let kind = match f.kind.as_deref() {
            None => "access",
            Some(k) => EventKind::ALL
                .iter()
                .map(|k| k.as_str())
                .find(|n| *n == k)
                .unwrap_or("other"),
        };
        *s.by_kind.entry(kind.into()).or_default() += 1;
        let decision = match f.decision.as_deref() {
            Some("granted") => "granted",
            Some("denied") => "denied",
            Some(_) => "other",
            None => "none",
        };
        *s.by_decision.entry(decision.into()).or_default() += 1;
        if let Some(t) = f.device_time_ms {
            s.first_time_ms = Some(s.first_time_ms.map_or(t, |x| x.min(t)));
            s.last_time_ms = Some(s.last_time_ms.map_or(t, |x| x.max(t)));
        }
    }
    s.first_time = s.first_time_ms.map(|t| format_unix(t / 1000));
    s.last_time = s.last_time_ms.map(|t| format_unix(t / 1000));
    s.max_events = limits.max_events;
    s.max_bytes = limits.max_bytes;
    s.device_time_ms = now;
    s.device_time = format_unix(now / 1000);
    serde_json::to_vec(&s).map_err(|_| StoreError::InvalidInput("unserialisable summary".into()))
}

/// The payload as published: the stored event JSON with the outbox `seq` added.
pub(crate) fn wire_payload(seq: u64, stored: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(stored) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.insert("seq".into(), seq.into());
            serde_json::to_vec(&m).unwrap_or_else(|_| stored.to_vec())
        }
        _ => stored.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Kek, KekSource, SecretKey};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let kek = Kek::from_secret(SecretKey::random().unwrap(), KekSource::Memory);
        let s = Store::create(&dir.path().join("s.redb"), &kek, "t").unwrap();
        (dir, s)
    }

    fn published(store: &Store, n: usize) -> Vec<serde_json::Value> {
        store
            .outbox_peek_batch(n)
            .unwrap()
            .iter()
            .map(|i| serde_json::from_slice(&wire_payload(i.seq, &i.payload)).unwrap())
            .collect()
    }

    #[test]
    fn event_json_has_no_vectors_and_rounds_scores() {
        let (_d, store) = store();
        let r = record_event(
            &store,
            "door-1",
            &AccessEvent::access(
                Decision::Denied,
                None,
                Some(0.123_456),
                Some(f32::NAN),
                "no_match",
            ),
            &OutboxLimits::default(),
        )
        .unwrap();
        assert_eq!(r.rolled_up, 0);
        let v = &published(&store, 1)[0];
        assert_eq!(v["event_id"], r.event_id.to_string());
        assert_eq!(v["kind"], "access");
        assert_eq!(v["person_id"], "unknown");
        assert_eq!(v["decision"], "denied");
        assert_eq!(v["match_score"], 0.123);
        assert!(v.get("liveness_score").is_none());
        assert!(v.get("detail").is_none());
        assert_eq!(v["seq"], r.seq);
        assert_eq!(r.event_id.get_version_num(), 7);
    }

    #[test]
    fn door_events_carry_kind_and_detail_but_no_decision_or_person() {
        let (_d, store) = store();
        let limits = OutboxLimits::default();
        for kind in EventKind::ALL {
            let ev =
                AccessEvent::door(kind, "contact\u{7}").with_detail("relay=1 \u{e9}".repeat(40));
            record_event(&store, "door-1", &ev, &limits).unwrap();
        }
        let evs = published(&store, 100);
        assert_eq!(evs.len(), EventKind::ALL.len());
        for (v, kind) in evs.iter().zip(EventKind::ALL) {
            assert_eq!(v["kind"], kind.as_str());
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::from(kind.as_str())
            );
            assert!(v.get("decision").is_none(), "{v}");
            if kind == EventKind::Access {
                assert_eq!(
                    v["person_id"], "unknown",
                    "an access attempt always names a person or `unknown`"
                );
            } else {
                assert!(v.get("person_id").is_none(), "{v}");
            }
            assert_eq!(v["reason"], "contact_");
            let d = v["detail"].as_str().unwrap();
            assert_eq!(d.len(), MAX_DETAIL);
            assert!(d.starts_with("relay=1 _relay=1"), "{d}");
        }
        // A person on a non-access event (e.g. who pressed for a remote open) is kept.
        let mut ev = AccessEvent::door(EventKind::RemoteOpen, "signed_open");
        ev.person_id = Some("p-7".into());
        record_event(&store, "door-1", &ev, &limits).unwrap();
        assert_eq!(published(&store, 100).last().unwrap()["person_id"], "p-7");
    }

    #[test]
    fn overflow_summary_counts_exactly_and_names_nobody() {
        let (_d, store) = store();
        let limits = OutboxLimits {
            max_events: 20,
            max_bytes: crate::store::outbox::DEFAULT_MAX_BYTES,
        };
        let mut expect_kind: BTreeMap<String, u64> = BTreeMap::new();
        let mut expect_decision: BTreeMap<String, u64> = BTreeMap::new();
        let mut rolled_total = 0;
        let n = 200u64;
        let mut events = Vec::new();
        let summary_id = |s: &Store| {
            let p = s.outbox_summary().unwrap().unwrap().payload;
            serde_json::from_slice::<OverflowSummary>(&p)
                .unwrap()
                .summary_id
        };
        let mut first_id = None;
        for i in 0..n {
            let ev = match i % 4 {
                0 => AccessEvent::access(
                    Decision::Granted,
                    Some(format!("secret-person-{i}")),
                    Some(0.9),
                    None,
                    "match",
                ),
                1 => AccessEvent::access(Decision::Denied, None, None, None, "no_match"),
                2 => AccessEvent::door(EventKind::DoorForced, "contact"),
                _ => AccessEvent::door(EventKind::DoorClosed, "contact"),
            };
            let r = record_event(&store, "door-1", &ev, &limits).unwrap();
            rolled_total += r.rolled_up;
            if r.rolled_up > 0 && first_id.is_none() {
                first_id = Some(summary_id(&store));
            }
            events.push(ev);
        }
        // The rolled events are exactly the oldest ones.
        for ev in &events[..rolled_total as usize] {
            *expect_kind.entry(ev.kind.as_str().into()).or_default() += 1;
            let d = match ev.decision {
                Some(Decision::Granted) => "granted",
                Some(Decision::Denied) => "denied",
                None => "none",
            };
            *expect_decision.entry(d.into()).or_default() += 1;
        }
        let sum = store.outbox_summary().unwrap().unwrap();
        let text = String::from_utf8(sum.payload.to_vec()).unwrap();
        assert!(!text.contains("secret-person"), "{text}");
        let v: OverflowSummary = serde_json::from_str(&text).unwrap();
        let remaining = store.outbox_peek_batch(1000).unwrap().len() as u64;
        assert_eq!(remaining, 19);
        assert_eq!(v.rolled_up, rolled_total);
        assert_eq!(v.rolled_up + remaining, n);
        assert_eq!((v.first_seq, v.last_seq), (1, rolled_total));
        assert_eq!(v.by_kind, expect_kind);
        assert_eq!(v.by_decision, expect_decision);
        assert_eq!(v.unreadable, 0);
        assert_eq!(v.kind, EventKind::OutboxOverflow);
        assert_eq!(v.revision, sum.revision);
        assert!(v.first_time_ms.unwrap() <= v.last_time_ms.unwrap());
        assert_eq!(v.max_events, 20);
        // Merged, not chained: one summary id across all the overflows, one row.
        assert_eq!(first_id.unwrap(), v.summary_id);
        assert_eq!(store.outbox_len().unwrap(), 20);
        assert_eq!(store.outbox_overflow().unwrap().pending, rolled_total);
    }
}
