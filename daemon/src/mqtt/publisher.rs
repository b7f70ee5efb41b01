//! Outbox → broker: events as QoS 1 messages, in order, deleted only on PUBACK; and the
//! handling of bundles and commands arriving on the same connection.
//!
//! Events are built and queued by [`super::events`]; this module publishes them.
//!
//! # Link
//!
//! [`FleetLink::run`] owns the connection. rumqttc's event loop is polled in a helper task that
//! forwards every event; the control loop (this task) publishes, maps packet ids to outbox
//! sequences and deletes acknowledged events. Correctness rests on three rules:
//!
//! 1. Outgoing publishes are matched to packet ids through rumqttc's `Outgoing::Publish(pkid)`
//!    events, which come in request order because only this task publishes. (Command results
//!    computed elsewhere come back to this task through a channel and are published here.)
//! 2. After any connection error the poll task stops until the control loop has forgotten all
//!    in-flight state (and waited out the backoff); it then discards every request queued in
//!    rumqttc (stale requests, and rumqttc's own retransmissions) before and after reconnecting,
//!    so no packet id of a new connection is ever matched to an old request.
//! 3. On every ConnAck everything still in the outbox is re-sent from the oldest entry (the
//!    overflow summary first; duplicates possible, losses not), subscriptions are renewed and
//!    status is republished.
//!
//! # Bundles
//!
//! Incoming bundles are verified and applied (see [`crate::bundle`]). Results on
//! `bundles/result` carry `bundle_sha256` (so an operator can match the answer to what they sent)
//! and, for refusals, the version and key id the header *claims* when it parses.
//!
//! **A refused bundle writes nothing to the store** — the file stays byte-for-byte identical
//! (tested). The issue asked both for that and for an audit entry per refusal, which cannot both
//! hold for an in-store audit log; byte-identity wins, because whoever can publish bundles (a
//! compromised broker included) could otherwise grow the store without bound with garbage, and
//! because "refused input changes nothing" is the simpler property to verify. Every refusal is
//! instead recorded as a structured log line (journald) — `FACEGATE_EVENT=bundle_refused`,
//! `code`, `size`, `bundle_sha256`, and the claimed `version`/`key_id` when parseable — and on the
//! result topic. Applied bundles are audited in the store, in the applying transaction.
//!
//! # Commands
//!
//! See [`super::commands`]: `status` and `resync` are answered here; a verified `open` and
//! `reload-config` are forwarded to the daemon through the channel given to
//! [`FleetLink::with_commands`], and the daemon's answer (or `timeout` after
//! `command_timeout_ms`) is published on `cmd/{name}/result`. Without a channel the answer is
//! `unavailable`; unknown names get `unsupported`. Refused commands, like refused bundles, write
//! nothing to the store (log line `FACEGATE_EVENT=command_refused` and the result only);
//! executed or forwarded ones are audited.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::commands::{self, CommandOutcome, OpenRefusal, OpenVerifier, RemoteCommand};
use super::events::{machine_text, wire_payload};
use super::status::{self, StatusSource};
use super::{Backoff, MqttConfig, MqttError, Result, Topics};
use crate::bundle::{self, Verifier};
use crate::store::outbox::SUMMARY_SEQ;
use crate::store::{
    AuditAction, AuditEvent, AuditOutcome, Store, StoreError, format_unix, now_unix,
};

/// Counters for monitoring and tests.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Successful connections (ConnAcks).
    pub connects: AtomicU64,
    /// Connection errors seen.
    pub errors: AtomicU64,
    /// Event publishes (overflow summaries included) handed to the client, re-sends included.
    pub published: AtomicU64,
    /// Events acknowledged and deleted from the outbox.
    pub acked: AtomicU64,
    /// Overflow summary revisions acknowledged.
    pub summaries_acked: AtomicU64,
    /// Bundles applied.
    pub bundles_applied: AtomicU64,
    /// Bundles refused.
    pub bundles_refused: AtomicU64,
    /// Commands handed to the daemon.
    pub commands_forwarded: AtomicU64,
    /// Commands refused before reaching the daemon.
    pub commands_refused: AtomicU64,
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
    /// Tell the publisher new events are in the outbox (cheap; call after
    /// [`super::record_event`]).
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
    /// Overflow summary of this revision.
    Summary(u64),
    Other,
}

/// A command result computed outside the control loop, to be published by it (rule 1).
struct CmdReply {
    name: &'static str,
    request_id: String,
    outcome: CommandOutcome,
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
    commands: Option<mpsc::Sender<RemoteCommand>>,
    open: Option<OpenVerifier>,
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
    /// Revision of the overflow summary sent and not yet acknowledged in this connection.
    summary_inflight: Option<u64>,
    /// `open` verification and replay memory (survives reconnects).
    open: Option<OpenVerifier>,
    /// Where forwarded commands' answers come back to the control loop.
    replies: mpsc::UnboundedSender<CmdReply>,
}

impl Session {
    fn reset(&mut self) {
        self.awaiting.clear();
        self.inflight.clear();
        self.events_out = 0;
        self.last_sent = 0;
        self.summary_inflight = None;
    }
}

impl FleetLink {
    /// Prepare a link (nothing connects until [`FleetLink::run`]). `verifier` enables bundle
    /// application and signed `open` commands (its fleet keys); without it bundles and opens are
    /// refused with `not_configured`. Forwarded commands need [`FleetLink::with_commands`].
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
        let open = verifier
            .as_ref()
            .map(|v| OpenVerifier::new(v.fleet.clone(), cfg.open_policy(), now_unix()));
        Ok((
            FleetLink {
                store,
                cfg,
                topics,
                options: o,
                verifier,
                status,
                handle: handle.clone(),
                commands: None,
                open,
            },
            handle,
        ))
    }

    /// Hand verified `open` and `reload-config` commands to the daemon through `tx`. The link
    /// never blocks on it: a full channel answers `busy`, a closed one `unavailable`.
    pub fn with_commands(mut self, tx: mpsc::Sender<RemoteCommand>) -> Self {
        self.commands = Some(tx);
        self
    }

    /// Run until [`FleetHandle::shutdown`]. Connection problems are retried forever with
    /// backoff; only store failures end the task with an error.
    pub async fn run(mut self) -> Result<()> {
        let cap = usize::from(self.cfg.window) * 2 + 32;
        let (client, eventloop) = AsyncClient::new(self.options.clone(), cap);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (resume_tx, resume_rx) = mpsc::unbounded_channel();
        let (reply_tx, mut reply_rx) = mpsc::unbounded_channel();
        // Aborted when this future ends or is dropped, so the socket never outlives the link
        // (a dropped link then looks like a dead device: the broker sends the Last Will).
        let _poller = AbortOnDrop(tokio::spawn(poll_loop(eventloop, tx, resume_rx)));
        let mut s = Session {
            connected: false,
            awaiting: VecDeque::new(),
            inflight: HashMap::new(),
            events_out: 0,
            last_sent: 0,
            summary_inflight: None,
            open: self.open.take(),
            replies: reply_tx,
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
                Some(r) = reply_rx.recv() => {
                    tracing::info!(
                        FACEGATE_EVENT = "command_result",
                        command = r.name,
                        request_id = %r.request_id,
                        ok = r.outcome.ok,
                        code = %r.outcome.code,
                        "remote command answered by the daemon"
                    );
                    self.publish_result(&client, &mut s, r.name, Some(&r.request_id), &r.outcome);
                }
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
                } else if let Tag::Summary(_) = tag {
                    s.summary_inflight = None;
                }
            }
            Event::Incoming(Incoming::PubAck(ack)) => match s.inflight.remove(&ack.pkid) {
                Some(Tag::Event(seq)) => {
                    self.store.outbox_delete(seq)?;
                    s.events_out = s.events_out.saturating_sub(1);
                    stats.acked.fetch_add(1, Ordering::Relaxed);
                    self.top_up(client, s)?;
                }
                Some(Tag::Summary(rev)) => {
                    let deleted = self.store.outbox_ack_summary(rev)?;
                    s.summary_inflight = None;
                    stats.summaries_acked.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        revision = rev,
                        deleted,
                        "outbox overflow summary acknowledged by the broker"
                    );
                    self.top_up(client, s)?;
                }
                _ => {}
            },
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

    fn note_fault(&self, fault: String) {
        self.status.faults.lock().map(|mut f| f.push(fault)).ok();
    }

    /// Publish the overflow summary if there is one and it is not already on the wire.
    fn send_summary(&self, client: &AsyncClient, s: &mut Session) -> Result<()> {
        if s.summary_inflight.is_some() {
            return Ok(());
        }
        match self.store.outbox_summary() {
            Ok(Some(sum)) => {
                if self.send(
                    client,
                    s,
                    self.topics.events(),
                    false,
                    sum.payload.to_vec(),
                    Tag::Summary(sum.revision),
                ) {
                    s.summary_inflight = Some(sum.revision);
                    self.handle.stats.published.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(StoreError::Integrity { .. }) => {
                tracing::error!("outbox overflow summary fails authentication; dropping it");
                self.store.outbox_delete(SUMMARY_SEQ)?;
                self.note_fault("outbox overflow summary corrupt, dropped".into());
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Send the overflow summary, then outbox events after the last one sent, up to the window.
    fn top_up(&self, client: &AsyncClient, s: &mut Session) -> Result<()> {
        self.send_summary(client, s)?;
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
                        self.note_fault(format!("outbox entry {seq} corrupt, dropped"));
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
            self.on_command(client, s, name, payload);
        }
    }

    fn audit_command(&self, outcome: AuditOutcome, detail: String) {
        let ev = AuditEvent {
            actor: format!("mqtt:{}", self.cfg.device),
            action: AuditAction::CommandReceived,
            subject: None,
            outcome,
            detail: Some(detail),
        };
        if let Err(e) = self.store.append_audit(&ev) {
            tracing::error!(error = %e, "audit entry for a remote command not written");
        }
    }

    fn refuse_command(
        &self,
        name: &str,
        request_id: Option<&str>,
        size: usize,
        code: &str,
        why: &str,
    ) {
        self.handle
            .stats
            .commands_refused
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            FACEGATE_EVENT = "command_refused",
            device = %self.cfg.device,
            command = name,
            code,
            request_id,
            size,
            "remote command refused: {why}"
        );
    }

    fn on_command(&self, client: &AsyncClient, s: &mut Session, name: &str, payload: &[u8]) {
        let claimed = commands::claimed_request_id(payload);
        let (name, answer): (&'static str, Option<CommandOutcome>) = match name {
            "status" => {
                self.audit_command(AuditOutcome::Ok, "cmd status".into());
                self.publish_status(client, s);
                (
                    "status",
                    Some(CommandOutcome::ok("ok", "status republished")),
                )
            }
            "resync" => {
                self.audit_command(AuditOutcome::Ok, "cmd resync".into());
                self.publish_status(client, s);
                // Re-send everything still queued (duplicates are dropped by event id).
                s.last_sent = 0;
                s.events_out = 0;
                s.summary_inflight = None;
                s.inflight.retain(|_, t| *t == Tag::Other);
                s.awaiting.iter_mut().for_each(|t| *t = Tag::Other);
                let _ = self.top_up(client, s);
                ("resync", Some(CommandOutcome::ok("ok", "outbox re-sent")))
            }
            "open" => ("open", self.on_open(s, payload, claimed.as_deref())),
            "reload-config" => (
                "reload-config",
                self.on_reload(s, payload, claimed.as_deref()),
            ),
            other => {
                let shown = if super::validate_segment("command", other).is_ok() {
                    other
                } else {
                    "<invalid name>"
                };
                let why = format!("unknown command `{shown}`");
                self.refuse_command(
                    shown,
                    claimed.as_deref(),
                    payload.len(),
                    "unsupported",
                    &why,
                );
                // Answer on the command's own result topic if it is a valid topic segment.
                if shown == other {
                    let outcome = CommandOutcome::refused("unsupported", why);
                    let body = result_json(claimed.as_deref(), &outcome);
                    self.send(
                        client,
                        s,
                        self.topics.cmd_result(other),
                        false,
                        body,
                        Tag::Other,
                    );
                }
                return;
            }
        };
        if let Some(outcome) = answer {
            self.publish_result(client, s, name, claimed.as_deref(), &outcome);
        }
    }

    /// Verify an `open`; forward it when valid. `Some` is the immediate answer, `None` means
    /// the daemon will answer.
    fn on_open(
        &self,
        s: &mut Session,
        payload: &[u8],
        claimed: Option<&str>,
    ) -> Option<CommandOutcome> {
        let verified = match s.open.as_mut() {
            None => Err(OpenRefusal::NotConfigured),
            Some(v) => v.verify(payload, now_unix()),
        };
        let v = match verified {
            Ok(v) => v,
            Err(e) => {
                self.refuse_command("open", claimed, payload.len(), e.code(), &e.to_string());
                return Some(CommandOutcome::refused(e.code(), e.to_string()));
            }
        };
        tracing::info!(
            FACEGATE_EVENT = "command_accepted",
            device = %self.cfg.device,
            command = "open",
            request_id = %v.request_id,
            key_id = %v.key_id,
            duration_ms = v.duration.as_millis() as u64,
            "signed remote open verified"
        );
        let request_id = v.request_id.clone();
        let answer = self.forward(s, "open", request_id.clone(), |reply| RemoteCommand::Open {
            request_id: v.request_id,
            duration: v.duration,
            reply,
        });
        self.audit_command(
            AuditOutcome::Ok,
            format!(
                "cmd open {request_id}: signed by {}, {} ms; {}",
                v.key_id,
                v.duration.as_millis(),
                answer
                    .as_ref()
                    .map_or("forwarded to the door".to_string(), |a| format!(
                        "not forwarded: {}",
                        a.code
                    ))
            ),
        );
        answer
    }

    fn on_reload(
        &self,
        s: &mut Session,
        payload: &[u8],
        claimed: Option<&str>,
    ) -> Option<CommandOutcome> {
        let Some(request_id) = claimed else {
            let why = "reload-config needs a request_id of 1-64 characters [A-Za-z0-9._:-]";
            self.refuse_command("reload-config", None, payload.len(), "malformed", why);
            return Some(CommandOutcome::refused("malformed", why));
        };
        let answer = self.forward(s, "reload-config", request_id.to_string(), |reply| {
            RemoteCommand::ReloadConfig {
                request_id: request_id.to_string(),
                reply,
            }
        });
        self.audit_command(
            AuditOutcome::Ok,
            format!(
                "cmd reload-config {request_id}: {}",
                answer.as_ref().map_or("forwarded".to_string(), |a| format!(
                    "not forwarded: {}",
                    a.code
                ))
            ),
        );
        answer
    }

    /// Hand a command to the daemon; its answer (or a timeout) comes back through
    /// `s.replies`. Returns the immediate answer when it cannot be handed over.
    fn forward(
        &self,
        s: &Session,
        name: &'static str,
        request_id: String,
        make: impl FnOnce(oneshot::Sender<CommandOutcome>) -> RemoteCommand,
    ) -> Option<CommandOutcome> {
        let Some(tx) = &self.commands else {
            self.refuse_command(
                name,
                Some(&request_id),
                0,
                "unavailable",
                "no command handler",
            );
            return Some(CommandOutcome::refused(
                "unavailable",
                "this terminal runs no handler for remote commands",
            ));
        };
        let (reply, answer) = oneshot::channel();
        match tx.try_send(make(reply)) {
            Ok(()) => {
                self.handle
                    .stats
                    .commands_forwarded
                    .fetch_add(1, Ordering::Relaxed);
                let replies = s.replies.clone();
                let timeout = Duration::from_millis(self.cfg.command_timeout_ms);
                tokio::spawn(async move {
                    let outcome = match tokio::time::timeout(timeout, answer).await {
                        Ok(Ok(o)) => o,
                        Ok(Err(_)) => CommandOutcome::refused(
                            "unavailable",
                            "the daemon dropped the command without answering",
                        ),
                        Err(_) => CommandOutcome::refused(
                            "timeout",
                            format!(
                                "no answer from the daemon within {} ms",
                                timeout.as_millis()
                            ),
                        ),
                    };
                    let _ = replies.send(CmdReply {
                        name,
                        request_id,
                        outcome,
                    });
                });
                None
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.refuse_command(name, Some(&request_id), 0, "busy", "command channel full");
                Some(CommandOutcome::refused(
                    "busy",
                    "the daemon is still handling earlier commands",
                ))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.refuse_command(
                    name,
                    Some(&request_id),
                    0,
                    "unavailable",
                    "command channel closed",
                );
                Some(CommandOutcome::refused(
                    "unavailable",
                    "the daemon's command handler has stopped",
                ))
            }
        }
    }

    fn publish_result(
        &self,
        client: &AsyncClient,
        s: &mut Session,
        name: &str,
        request_id: Option<&str>,
        outcome: &CommandOutcome,
    ) {
        let body = result_json(request_id, outcome);
        self.send(
            client,
            s,
            self.topics.cmd_result(name),
            false,
            body,
            Tag::Other,
        );
    }

    /// Verify and apply one bundle; returns the result message JSON.
    fn handle_bundle(&self, payload: &[u8]) -> Vec<u8> {
        let stats = &self.handle.stats;
        let sha = hex::encode(Sha256::digest(payload));
        let refused = |code: &str, message: String| {
            stats.bundles_refused.fetch_add(1, Ordering::Relaxed);
            // Claims are read only from bundles within the size limit (no parsing of the rest).
            let claims = if payload.len() <= self.cfg.max_bundle_bytes {
                bundle::claims(payload)
            } else {
                bundle::BundleClaims::default()
            };
            tracing::warn!(
                FACEGATE_EVENT = "bundle_refused",
                device = %self.cfg.device,
                code,
                size = payload.len(),
                bundle_sha256 = %sha,
                version = claims.version,
                key_id = claims.key_id.as_deref(),
                "bundle refused: {message}"
            );
            serde_json::json!({"ok": false, "code": code, "message": message,
                "bundle_sha256": sha, "size": payload.len(),
                "version": claims.version, "key_id": claims.key_id})
            .to_string()
            .into_bytes()
        };
        let Some(v) = &self.verifier else {
            return refused(
                "not_configured",
                "this terminal has no fleet keys configured".into(),
            );
        };
        let actor = format!("mqtt:{}", self.cfg.device);
        match v.apply(&self.store, payload, &actor, now_unix()) {
            Ok(report) => {
                stats.bundles_applied.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    FACEGATE_EVENT = "bundle_applied",
                    device = %self.cfg.device,
                    version = report.version,
                    upserted = report.upserted,
                    removed = report.removed,
                    bundle_sha256 = %sha,
                    "bundle applied"
                );
                serde_json::json!({"ok": true, "code": "applied", "report": report,
                    "bundle_sha256": sha, "size": payload.len()})
                .to_string()
                .into_bytes()
            }
            Err(e) => refused(e.code(), e.to_string()),
        }
    }
}

/// The JSON of a command result.
fn result_json(request_id: Option<&str>, outcome: &CommandOutcome) -> Vec<u8> {
    serde_json::json!({
        "request_id": request_id,
        "ok": outcome.ok,
        "code": machine_text(&outcome.code, 64),
        "message": outcome.message.chars().take(512).collect::<String>(),
        "ts": format_unix(now_unix()),
    })
    .to_string()
    .into_bytes()
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
    fn command_results_are_short_machine_text() {
        let o = CommandOutcome::refused("bad\ncode", "m".repeat(2000));
        let v: serde_json::Value = serde_json::from_slice(&result_json(Some("r-1"), &o)).unwrap();
        assert_eq!(v["request_id"], "r-1");
        assert_eq!(v["ok"], false);
        assert_eq!(v["code"], "bad_code");
        assert_eq!(v["message"].as_str().unwrap().len(), 512);
        let v: serde_json::Value =
            serde_json::from_slice(&result_json(None, &CommandOutcome::ok("ok", ""))).unwrap();
        assert!(v["request_id"].is_null());
    }
}
