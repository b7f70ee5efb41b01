//! Outbox → broker: access events as QoS 1 messages, in order, deleted only on PUBACK.
//!
//! # Events
//!
//! [`record_event`] commits an event to the redb outbox (call it before reporting the door
//! decision as done). The JSON carries a UUIDv7 event id (unique, time-ordered: consumers drop
//! redeliveries by it), the device id, the person id or `unknown`, the decision, scores rounded
//! to 3 decimals, a reason and the device clock. The outbox sequence number — monotonic, never
//! reused, surviving restarts — is added as `seq` at publication. Never images or vectors.
//!
//! # Link
//!
//! [`FleetLink::run`] owns the connection. rumqttc's event loop is polled in a helper task that
//! forwards every event; the control loop (this task) publishes, maps packet ids to outbox
//! sequences and deletes acknowledged events. Correctness rests on three rules:
//!
//! 1. Outgoing publishes are matched to packet ids through rumqttc's `Outgoing::Publish(pkid)`
//!    events, which come in request order because only this task publishes.
//! 2. After any connection error the poll task stops until the control loop has forgotten all
//!    in-flight state (and waited out the backoff); it then discards every request queued in
//!    rumqttc (stale requests, and rumqttc's own retransmissions) before and after reconnecting,
//!    so no packet id of a new connection is ever matched to an old request.
//! 3. On every ConnAck everything still in the outbox is re-sent from the oldest entry
//!    (duplicates possible, losses not), subscriptions are renewed and status is republished.
//!
//! Incoming bundles are verified and applied (see [`crate::bundle`]); a refused bundle writes
//! nothing to the store and is reported on `bundles/result` and in the log. Commands `status`
//! and `resync` are answered; other command names get an `unsupported` result.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::status::{self, StatusSource};
use super::{Backoff, MqttConfig, MqttError, Result, Topics};
use crate::bundle::Verifier;
use crate::store::{AuditAction, AuditEvent, Store, StoreError, format_unix, now_unix};

/// Outcome of an access attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Door opened.
    Granted,
    /// Refused (unknown face, spoof, schedule...).
    Denied,
}

/// TEMPORARY shim until the fleet-sync branch lands: what kind of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Face access decision.
    Access,
    /// Door unlocked / contact open.
    DoorOpened,
    /// Door relocked / contact closed.
    DoorClosed,
    /// Door held open.
    DoorHeldOpen,
    /// Door forced.
    DoorForced,
    /// Exit button.
    ExitButton,
    /// Throttled.
    Throttled,
    /// Remote open.
    RemoteOpen,
    /// Outbox overflow summary.
    OutboxOverflow,
    /// Hardware fault.
    Fault,
}

/// What the pipeline reports about one access attempt.
#[derive(Debug, Clone)]
pub struct AccessEvent {
    /// Kind.
    pub kind: EventKind,
    /// Matched person id; `None` publishes `unknown`.
    pub person_id: Option<String>,
    /// Decision.
    pub decision: Option<Decision>,
    /// Detail.
    pub detail: Option<String>,
    /// Best match score, if a face was matched.
    pub match_score: Option<f32>,
    /// Liveness score, if measured.
    pub liveness_score: Option<f32>,
    /// Short machine reason (`match`, `no_match`, `spoof`, ...).
    pub reason: String,
}

#[derive(Serialize)]
struct EventJson<'a> {
    event_id: String,
    device: &'a str,
    kind: EventKind,
    person_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: Option<Decision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    match_score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    liveness_score: Option<f64>,
    reason: &'a str,
    device_time: String,
    device_time_ms: u64,
}

fn round3(v: Option<f32>) -> Option<f64> {
    v.filter(|x| x.is_finite())
        .map(|x| (f64::from(x) * 1000.0).round() / 1000.0)
}

/// Commit an event to the outbox; returns its event id and outbox sequence. Once this
/// returns the event will be published eventually, whatever happens to process or broker.
pub fn record_event(
    store: &Store,
    device: &str,
    ev: &AccessEvent,
    _limits: &crate::store::OutboxLimits,
) -> std::result::Result<(uuid::Uuid, u64), StoreError> {
    let id = uuid::Uuid::now_v7();
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let j = EventJson {
        event_id: id.to_string(),
        device,
        kind: ev.kind,
        person_id: ev.person_id.as_deref().unwrap_or("unknown"),
        decision: ev.decision,
        detail: ev.detail.as_deref(),
        match_score: round3(ev.match_score),
        liveness_score: round3(ev.liveness_score),
        reason: &ev.reason,
        device_time: format_unix(ms / 1000),
        device_time_ms: ms,
    };
    let bytes = serde_json::to_vec(&j)
        .map_err(|_| StoreError::InvalidInput("unserialisable event".into()))?;
    let seq = store.outbox_append(&bytes)?;
    Ok((id, seq))
}

/// The payload as published: the stored event JSON with the outbox `seq` added.
fn wire_payload(seq: u64, stored: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(stored) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.insert("seq".into(), seq.into());
            serde_json::to_vec(&m).unwrap_or_else(|_| stored.to_vec())
        }
        _ => stored.to_vec(),
    }
}

/// Counters for monitoring and tests.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Successful connections (ConnAcks).
    pub connects: AtomicU64,
    /// Connection errors seen.
    pub errors: AtomicU64,
    /// Event publishes handed to the client (including re-sends).
    pub published: AtomicU64,
    /// Events acknowledged and deleted from the outbox.
    pub acked: AtomicU64,
    /// Bundles applied.
    pub bundles_applied: AtomicU64,
    /// Bundles refused.
    pub bundles_refused: AtomicU64,
    /// Whether a connection is up now.
    pub connected: AtomicBool,
}

/// Handle for the rest of the daemon: wake the publisher, stop the link, read counters.
#[derive(Debug, Clone)]
pub struct FleetHandle {
    wake: Arc<Notify>,
    stop: Arc<Notify>,
    /// Live counters.
    pub stats: Arc<LinkStats>,
}

impl FleetHandle {
    /// Tell the publisher new events are in the outbox (cheap; call after [`record_event`]).
    pub fn notify_new_event(&self) {
        self.wake.notify_one();
    }

    /// Ask the link to publish `offline`, disconnect and return.
    pub fn shutdown(&self) {
        self.stop.notify_one();
    }
}

/// MQTT packet limit for incoming messages: well above the bundle limit, so an oversized
/// bundle reaches the verifier and gets an `oversized` result instead of breaking the
/// connection (and being redelivered forever). Brokers should cap packets too.
fn incoming_limit(max_bundle: usize) -> usize {
    max_bundle
        .saturating_mul(16)
        .saturating_add(64 << 10)
        .min(256 << 20)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum PollMsg {
    Event(Event),
    Error(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Event(u64),
    Other,
}

/// The connection task: owns the MQTT client, drains the outbox, handles incoming messages.
pub struct FleetLink {
    store: Arc<Store>,
    cfg: MqttConfig,
    topics: Topics,
    options: MqttOptions,
    verifier: Option<Verifier>,
    status: StatusSource,
    handle: FleetHandle,
}

struct Session {
    connected: bool,
    /// Tags of publishes sent to rumqttc, waiting for their `Outgoing::Publish`.
    awaiting: VecDeque<Tag>,
    /// QoS 1 publishes on the wire, by packet id.
    inflight: HashMap<u16, Tag>,
    /// Events sent and not yet acknowledged in this connection.
    events_out: usize,
    /// Highest outbox seq sent in this connection.
    last_sent: u64,
}

impl Session {
    fn reset(&mut self) {
        self.awaiting.clear();
        self.inflight.clear();
        self.events_out = 0;
        self.last_sent = 0;
    }
}

#[derive(Deserialize)]
struct CmdRequest {
    #[serde(default)]
    request_id: Option<String>,
}

impl FleetLink {
    /// Prepare a link (nothing connects until [`FleetLink::run`]). `verifier` enables bundle
    /// application; without it bundles are refused with `not_configured`.
    pub fn new(
        store: Arc<Store>,
        cfg: MqttConfig,
        tls: rustls::ClientConfig,
        verifier: Option<Verifier>,
        status: StatusSource,
    ) -> Result<(FleetLink, FleetHandle)> {
        cfg.validate()?;
        let topics = cfg.topics();
        let mut o = MqttOptions::new(cfg.device.clone(), cfg.host.clone(), cfg.port);
        o.set_keep_alive(Duration::from_secs(cfg.keep_alive_secs))
            .set_clean_session(false)
            .set_inflight(cfg.window.saturating_add(8))
            .set_max_packet_size(incoming_limit(cfg.max_bundle_bytes), 1 << 20)
            .set_last_will(status::last_will(&topics.status(), &cfg.device))
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls),
            )));
        let handle = FleetHandle {
            wake: Arc::new(Notify::new()),
            stop: Arc::new(Notify::new()),
            stats: Arc::default(),
        };
        Ok((
            FleetLink {
                store,
                cfg,
                topics,
                options: o,
                verifier,
                status,
                handle: handle.clone(),
            },
            handle,
        ))
    }

    /// TEMPORARY shim until the fleet-sync branch lands (commands are not forwarded yet).
    pub fn with_commands(self, _tx: mpsc::Sender<super::commands::RemoteCommand>) -> Self {
        self
    }

    /// Run until [`FleetHandle::shutdown`]. Connection problems are retried forever with
    /// backoff; only store failures end the task with an error.
    pub async fn run(self) -> Result<()> {
        let cap = usize::from(self.cfg.window) * 2 + 32;
        let (client, eventloop) = AsyncClient::new(self.options.clone(), cap);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (resume_tx, resume_rx) = mpsc::unbounded_channel();
        // Aborted when this future ends or is dropped, so the socket never outlives the link
        // (a dropped link then looks like a dead device: the broker sends the Last Will).
        let _poller = AbortOnDrop(tokio::spawn(poll_loop(eventloop, tx, resume_rx)));
        let mut s = Session {
            connected: false,
            awaiting: VecDeque::new(),
            inflight: HashMap::new(),
            events_out: 0,
            last_sent: 0,
        };
        let mut backoff = Backoff::new(
            Duration::from_millis(self.cfg.backoff_initial_ms),
            Duration::from_millis(self.cfg.backoff_max_ms),
        );
        let mut retry_at: Option<Instant> = None;
        let mut status_tick =
            tokio::time::interval(Duration::from_secs(self.cfg.status_interval_secs.max(1)));
        let stats = self.handle.stats.clone();
        let result = loop {
            let sleep_until = retry_at.unwrap_or_else(Instant::now);
            tokio::select! {
                msg = rx.recv() => match msg {
                    None => break Err(MqttError::Client("event loop task ended".into())),
                    Some(PollMsg::Event(ev)) => {
                        if let Err(e) = self.on_event(&client, &mut s, &mut backoff, ev) {
                            break Err(e);
                        }
                    }
                    Some(PollMsg::Error(e)) => {
                        if s.connected {
                            tracing::warn!(error = %e, "mqtt connection lost");
                        } else {
                            tracing::debug!(error = %e, "mqtt connect failed");
                        }
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        stats.connected.store(false, Ordering::Relaxed);
                        s.connected = false;
                        s.reset();
                        retry_at = Some(Instant::now() + backoff.next_delay());
                    }
                },
                _ = tokio::time::sleep_until(sleep_until), if retry_at.is_some() => {
                    retry_at = None;
                    if resume_tx.send(()).is_err() {
                        break Err(MqttError::Client("event loop task ended".into()));
                    }
                }
                _ = self.handle.wake.notified() => {
                    if s.connected && let Err(e) = self.top_up(&client, &mut s) {
                        break Err(e);
                    }
                }
                _ = status_tick.tick() => {
                    if s.connected {
                        self.publish_status(&client, &mut s);
                    }
                }
                _ = self.handle.stop.notified() => {
                    if s.connected {
                        let _ = client.try_publish(
                            self.topics.status(), QoS::AtLeastOnce, true,
                            status::offline(&self.cfg.device, "shutdown"));
                        let _ = client.try_disconnect();
                        // Give the event loop a moment to flush the goodbye.
                        let deadline = Instant::now() + Duration::from_secs(2);
                        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                            if matches!(m, PollMsg::Error(_)) { break; }
                        }
                    }
                    break Ok(());
                }
            }
        };
        stats.connected.store(false, Ordering::Relaxed);
        result
    }

    fn on_event(
        &self,
        client: &AsyncClient,
        s: &mut Session,
        backoff: &mut Backoff,
        ev: Event,
    ) -> Result<()> {
        let stats = &self.handle.stats;
        match ev {
            Event::Incoming(Incoming::ConnAck(ack)) => {
                tracing::info!(session_present = ack.session_present, "mqtt connected");
                backoff.reset();
                s.reset();
                s.connected = true;
                stats.connects.fetch_add(1, Ordering::Relaxed);
                stats.connected.store(true, Ordering::Relaxed);
                for t in [
                    self.topics.bundles(),
                    self.topics.all_bundles(),
                    self.topics.cmd_filter(),
                ] {
                    if let Err(e) = client.try_subscribe(t, QoS::AtLeastOnce) {
                        tracing::warn!(error = %e, "mqtt subscribe not queued");
                    }
                }
                self.publish_status(client, s);
                self.top_up(client, s)?;
            }
            Event::Incoming(Incoming::SubAck(ack))
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure)) =>
            {
                tracing::error!(
                    "mqtt broker refused a subscription (check the ACL for this device)"
                );
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let tag = s.awaiting.pop_front().unwrap_or(Tag::Other);
                if pkid != 0 {
                    s.inflight.insert(pkid, tag);
                } else if let Tag::Event(_) = tag {
                    s.events_out = s.events_out.saturating_sub(1);
                }
            }
            Event::Incoming(Incoming::PubAck(ack)) => {
                if let Some(Tag::Event(seq)) = s.inflight.remove(&ack.pkid) {
                    self.store.outbox_delete(seq)?;
                    s.events_out = s.events_out.saturating_sub(1);
                    stats.acked.fetch_add(1, Ordering::Relaxed);
                    self.top_up(client, s)?;
                }
            }
            Event::Incoming(Incoming::Publish(p)) => {
                self.on_message(client, s, &p.topic, &p.payload);
            }
            _ => {}
        }
        Ok(())
    }

    fn send(
        &self,
        client: &AsyncClient,
        s: &mut Session,
        topic: String,
        retain: bool,
        payload: Vec<u8>,
        tag: Tag,
    ) -> bool {
        match client.try_publish(topic, QoS::AtLeastOnce, retain, payload) {
            Ok(()) => {
                s.awaiting.push_back(tag);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "mqtt publish not queued");
                false
            }
        }
    }

    /// Send outbox events after the last one sent, up to the window.
    fn top_up(&self, client: &AsyncClient, s: &mut Session) -> Result<()> {
        let window = usize::from(self.cfg.window);
        while s.events_out < window {
            let batch = match self.store.outbox_peek_batch(window + s.events_out) {
                Ok(b) => b,
                Err(StoreError::Integrity {
                    table: "outbox",
                    row,
                }) => {
                    // An undecryptable entry would block the queue forever: report and drop it.
                    tracing::error!(seq = %row, "outbox entry fails authentication; dropping it");
                    if let Ok(seq) = row.parse::<u64>() {
                        self.store.outbox_delete(seq)?;
                        self.status
                            .faults
                            .lock()
                            .map(|mut f| f.push(format!("outbox entry {seq} corrupt, dropped")))
                            .ok();
                        continue;
                    }
                    return Err(StoreError::Integrity {
                        table: "outbox",
                        row,
                    }
                    .into());
                }
                Err(e) => return Err(e.into()),
            };
            let mut sent_any = false;
            let from = s.last_sent;
            for item in batch.iter().filter(|i| i.seq > from) {
                if s.events_out >= window {
                    break;
                }
                let payload = wire_payload(item.seq, &item.payload);
                if !self.send(
                    client,
                    s,
                    self.topics.events(),
                    false,
                    payload,
                    Tag::Event(item.seq),
                ) {
                    return Ok(());
                }
                s.last_sent = item.seq;
                s.events_out += 1;
                sent_any = true;
                self.handle.stats.published.fetch_add(1, Ordering::Relaxed);
            }
            if !sent_any {
                break;
            }
        }
        Ok(())
    }

    fn publish_status(&self, client: &AsyncClient, s: &mut Session) {
        let payload = status::online(&self.store, &self.cfg.device, &self.status);
        self.send(client, s, self.topics.status(), true, payload, Tag::Other);
    }

    fn on_message(&self, client: &AsyncClient, s: &mut Session, topic: &str, payload: &[u8]) {
        if topic == self.topics.bundles() || topic == self.topics.all_bundles() {
            if payload.is_empty() {
                return; // a cleared retained bundle
            }
            let result = self.handle_bundle(payload);
            self.send(
                client,
                s,
                self.topics.bundle_result(),
                false,
                result,
                Tag::Other,
            );
        } else if let Some(name) = self.topics.parse_cmd(topic) {
            let name = name.to_string();
            let req: Option<CmdRequest> = serde_json::from_slice(payload).ok();
            let request_id = req.and_then(|r| r.request_id);
            let _ = self.store.append_audit(&AuditEvent::ok(
                &format!("mqtt:{}", self.cfg.device),
                AuditAction::CommandReceived,
                None,
                Some(format!("cmd {name}")),
            ));
            let (ok, code) = match name.as_str() {
                "status" => {
                    self.publish_status(client, s);
                    (true, "ok")
                }
                "resync" => {
                    self.publish_status(client, s);
                    // Re-send everything still queued (duplicates are dropped by event id).
                    s.last_sent = 0;
                    s.events_out = 0;
                    s.inflight.retain(|_, t| *t == Tag::Other);
                    s.awaiting.iter_mut().for_each(|t| *t = Tag::Other);
                    let _ = self.top_up(client, s);
                    (true, "ok")
                }
                _ => (false, "unsupported"),
            };
            let body = serde_json::json!({
                "request_id": request_id, "ok": ok, "code": code, "ts": format_unix(now_unix()),
            });
            self.send(
                client,
                s,
                self.topics.cmd_result(&name),
                false,
                body.to_string().into_bytes(),
                Tag::Other,
            );
        }
    }

    /// Verify and apply one bundle; returns the result message JSON.
    fn handle_bundle(&self, payload: &[u8]) -> Vec<u8> {
        let stats = &self.handle.stats;
        let Some(v) = &self.verifier else {
            stats.bundles_refused.fetch_add(1, Ordering::Relaxed);
            return serde_json::json!({"ok": false, "code": "not_configured",
                "message": "this terminal has no fleet keys configured"})
            .to_string()
            .into_bytes();
        };
        let actor = format!("mqtt:{}", self.cfg.device);
        match v.apply(&self.store, payload, &actor, now_unix()) {
            Ok(report) => {
                stats.bundles_applied.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    version = report.version,
                    upserted = report.upserted,
                    removed = report.removed,
                    "bundle applied"
                );
                serde_json::json!({"ok": true, "code": "applied", "report": report})
                    .to_string()
                    .into_bytes()
            }
            Err(e) => {
                stats.bundles_refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(code = e.code(), error = %e, "bundle refused");
                serde_json::json!({"ok": false, "code": e.code(), "message": e.to_string()})
                    .to_string()
                    .into_bytes()
            }
        }
    }
}

/// Poll rumqttc forever, forwarding events; after an error wait for the control loop's
/// go-ahead and discard everything rumqttc had queued (see the module docs, rule 2).
async fn poll_loop(
    mut el: EventLoop,
    tx: mpsc::UnboundedSender<PollMsg>,
    mut resume: mpsc::UnboundedReceiver<()>,
) {
    loop {
        match el.poll().await {
            Ok(ev) => {
                if matches!(ev, Event::Incoming(Incoming::ConnAck(_))) {
                    el.pending.clear();
                }
                if tx.send(PollMsg::Event(ev)).is_err() {
                    return;
                }
            }
            Err(e) => {
                if tx.send(PollMsg::Error(e.to_string())).is_err() || resume.recv().await.is_none()
                {
                    return;
                }
                el.clean();
                el.pending.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_has_no_vectors_and_rounds_scores() {
        let dir = tempfile::tempdir().unwrap();
        let kek = crate::store::Kek::from_secret(
            crate::store::SecretKey::random().unwrap(),
            crate::store::KekSource::Memory,
        );
        let store = Store::create(&dir.path().join("s.redb"), &kek, "t").unwrap();
        let (id, seq) = record_event(
            &store,
            "door-1",
            &AccessEvent {
                kind: EventKind::Access,
                detail: None,
                person_id: None,
                decision: Some(Decision::Denied),
                match_score: Some(0.123_456),
                liveness_score: Some(f32::NAN),
                reason: "no_match".into(),
            },
            &crate::store::OutboxLimits::default(),
        )
        .unwrap();
        let item = &store.outbox_peek_batch(1).unwrap()[0];
        assert_eq!(item.seq, seq);
        let v: serde_json::Value =
            serde_json::from_slice(&wire_payload(seq, &item.payload)).unwrap();
        assert_eq!(v["event_id"], id.to_string());
        assert_eq!(v["person_id"], "unknown");
        assert_eq!(v["decision"], "denied");
        assert_eq!(v["match_score"], 0.123);
        assert!(v.get("liveness_score").is_none());
        assert_eq!(v["seq"], seq);
        assert_eq!(id.get_version_num(), 7);
    }
}
