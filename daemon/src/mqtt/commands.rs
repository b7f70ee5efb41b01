//! Remote commands arriving on `facegate/v1/{site}/{device}/cmd/{name}`: what the link hands to
//! the daemon, and the signed `open` command's format and checks.
//!
//! # Names
//!
//! | name | payload | handled by |
//! |---|---|---|
//! | `status` | `{"request_id"?}` | the link: republishes status |
//! | `resync` | `{"request_id"?}` | the link: re-sends everything still in the outbox |
//! | `open` | [`SignedOpen`] | verified here, then the daemon ([`RemoteCommand::Open`]) |
//! | `reload-config` | `{"request_id"}` | the daemon ([`RemoteCommand::ReloadConfig`]) |
//!
//! Every command is answered on `.../cmd/{name}/result` with
//! `{"request_id", "ok", "code", "message", "ts"}`. Results are best effort (QoS 1 while the
//! connection lasts, not queued in the outbox): a result lost in an outage is recovered by asking
//! `status`, never by re-sending an `open`.
//!
//! # Why `open` is signed
//!
//! The broker and its ACL decide who may *publish* a command, but a compromised broker or broker
//! account must not be able to open doors. `open` therefore carries an Ed25519 signature by one
//! of the fleet keys that also sign template bundles ([`crate::bundle::FleetKeys`]), over
//! [`OpenRequest::signed_message`]:
//!
//! ```text
//! "facegate-open-v1\0" ‖ format u32 ‖ site ‖ target ‖ request_id ‖ duration_ms u64
//!                      ‖ not_before u64 ‖ not_after u64 ‖ key_id
//! ```
//!
//! (integers big-endian, strings as u32 big-endian length + UTF-8 bytes). The domain string keeps
//! these signatures apart from bundle signatures made with the same key; the length prefixes make
//! the encoding unambiguous; the JSON is never re-serialised for checking.
//!
//! # Checks, in order (each refusal has its own [`OpenRefusal::code`])
//!
//! size → JSON shape → signature present (`unsigned`) → format → signature by a fleet key
//! (`bad_signature`) → key id → site and device (`wrong_target`; `all` is never accepted: one
//! message must not open every door of a site) → window sane (`bad_window`) and not longer than
//! `open_max_window_secs` (`window_too_long`) → device clock inside the window, with
//! `open_clock_skew_secs` of slack (`not_yet_valid`, `expired`) → duration within
//! `open_max_duration_ms` (`duration_too_long`) → signed after this link started (`stale`) →
//! request id not seen before (`replay`).
//!
//! Replay protection keeps every accepted request id until its window (plus skew) has passed;
//! windows are short, so at most [`REPLAY_CAPACITY`] ids are remembered and an `open` arriving
//! while that many are live is refused (`busy`) rather than forgetting one early. The memory is
//! not persisted: instead, an `open` whose window started before this link was created is
//! refused as `stale`, so a message captured before a restart cannot be replayed after it.
//! A verified `open` is used up even if the daemon cannot take it at that moment (`busy`,
//! `unavailable`, `timeout`): the operator signs a new one rather than the terminal keeping a
//! usable command around.
//!
//! A refused `open` is answered on the result topic, logged as a structured line
//! (`FACEGATE_EVENT=command_refused`, code, request id if well-formed, key id if verified) and
//! never reaches the door; like a refused bundle it writes nothing to the store.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::bundle::{FleetKeys, SIG_LEN, TARGET_ALL};

/// Domain separation prefix of the signed `open` message.
pub const OPEN_SIGNING_DOMAIN: &[u8] = b"facegate-open-v1\0";
/// `format` of [`SignedOpen`] this build understands.
pub const OPEN_FORMAT: u32 = 1;
/// Largest command payload accepted, bytes (commands are a few hundred bytes).
pub const MAX_COMMAND_BYTES: usize = 4096;
/// Most request ids remembered at once for replay protection.
pub const REPLAY_CAPACITY: usize = 1024;

/// A command the daemon must carry out; the link waits for the reply (up to
/// `command_timeout_ms`) and publishes it as the command's result.
#[derive(Debug)]
pub enum RemoteCommand {
    /// Release the door for `duration` (already verified: signature, target, window,
    /// duration limit, replay). Reply as soon as the door is released or refused — not when it
    /// closes again.
    Open {
        /// Operator's request id, echoed in the result.
        request_id: String,
        /// How long to keep the lock released (never above `open_max_duration_ms`).
        duration: Duration,
        /// Where the outcome goes.
        reply: oneshot::Sender<CommandOutcome>,
    },
    /// Re-read the configuration file and apply what can change at run time.
    ReloadConfig {
        /// Operator's request id, echoed in the result.
        request_id: String,
        /// Where the outcome goes.
        reply: oneshot::Sender<CommandOutcome>,
    },
}

impl RemoteCommand {
    /// The request id, for logs.
    pub fn request_id(&self) -> &str {
        match self {
            RemoteCommand::Open { request_id, .. }
            | RemoteCommand::ReloadConfig { request_id, .. } => request_id,
        }
    }
}

/// How a command ended, as published in its result (`code` is a stable machine word such as
/// `opened`, `reloaded`, `door_fault`; `message` is for humans and holds no personal data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutcome {
    /// Whether the command was carried out.
    pub ok: bool,
    /// Stable machine-readable code.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

impl CommandOutcome {
    /// A successful outcome.
    pub fn ok(code: &str, message: impl Into<String>) -> Self {
        CommandOutcome {
            ok: true,
            code: code.into(),
            message: message.into(),
        }
    }

    /// A refused or failed outcome.
    pub fn refused(code: &str, message: impl Into<String>) -> Self {
        CommandOutcome {
            ok: false,
            code: code.into(),
            message: message.into(),
        }
    }
}

/// Request ids are echoed into topics' payloads and logs: a short token, nothing else.
pub fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// What an operator authorises with an `open`: which door, how long, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRequest {
    /// Site id.
    pub site: String,
    /// Device id (never `all`).
    pub target: String,
    /// Unique id of this request (replay protection, result correlation).
    pub request_id: String,
    /// How long the lock is released, milliseconds.
    pub duration_ms: u64,
    /// Unix seconds from which the command is valid.
    pub not_before: u64,
    /// Unix seconds after which the command is refused.
    pub not_after: u64,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl OpenRequest {
    /// The exact bytes signed (see the module docs), for the signer with id `key_id`.
    pub fn signed_message(&self, key_id: &str) -> Vec<u8> {
        let mut m = Vec::with_capacity(128);
        m.extend_from_slice(OPEN_SIGNING_DOMAIN);
        m.extend_from_slice(&OPEN_FORMAT.to_be_bytes());
        put_str(&mut m, &self.site);
        put_str(&mut m, &self.target);
        put_str(&mut m, &self.request_id);
        m.extend_from_slice(&self.duration_ms.to_be_bytes());
        m.extend_from_slice(&self.not_before.to_be_bytes());
        m.extend_from_slice(&self.not_after.to_be_bytes());
        put_str(&mut m, key_id);
        m
    }
}

/// The JSON payload of `cmd/open` (unknown fields refused: a field this build does not
/// understand might have been meant to restrict the command).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedOpen {
    /// Must equal [`OPEN_FORMAT`].
    pub format: u32,
    /// Site id.
    pub site: String,
    /// Device id.
    pub target: String,
    /// Request id.
    pub request_id: String,
    /// Release time, milliseconds.
    pub duration_ms: u64,
    /// Valid from (Unix s).
    pub not_before: u64,
    /// Valid until (Unix s).
    pub not_after: u64,
    /// Id of the signing fleet key ([`crate::bundle::key_id`]).
    pub key_id: String,
    /// Hex of the 64-byte Ed25519 signature over [`OpenRequest::signed_message`].
    pub signature: String,
}

impl SignedOpen {
    /// The signed fields.
    pub fn request(&self) -> OpenRequest {
        OpenRequest {
            site: self.site.clone(),
            target: self.target.clone(),
            request_id: self.request_id.clone(),
            duration_ms: self.duration_ms,
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }
}

/// Sign `req` with a fleet key (operator side: `facegate cmd sign-open`).
pub fn sign_open(req: &OpenRequest, signer: &ed25519_dalek::SigningKey) -> SignedOpen {
    use ed25519_dalek::Signer;
    let key_id = crate::bundle::key_id(&signer.verifying_key());
    let sig = signer.sign(&req.signed_message(&key_id));
    SignedOpen {
        format: OPEN_FORMAT,
        site: req.site.clone(),
        target: req.target.clone(),
        request_id: req.request_id.clone(),
        duration_ms: req.duration_ms,
        not_before: req.not_before,
        not_after: req.not_after,
        key_id,
        signature: hex::encode(sig.to_bytes()),
    }
}

/// Why an `open` was refused. Messages name the problem and ids, never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenRefusal {
    /// This terminal has no fleet keys, so it cannot verify any `open`.
    #[error("this terminal has no fleet keys configured; it accepts no remote open")]
    NotConfigured,
    /// Payload larger than [`MAX_COMMAND_BYTES`].
    #[error("command is {size} bytes, over the {MAX_COMMAND_BYTES}-byte limit")]
    Oversized {
        /// Bytes received.
        size: usize,
    },
    /// Not the JSON shape of [`SignedOpen`].
    #[error("malformed open command: {0}")]
    Malformed(String),
    /// A field this build does not understand.
    #[error(
        "open command has an unknown field ({0}); refusing what this version cannot fully understand"
    )]
    UnknownField(String),
    /// No `signature` field.
    #[error("open command is not signed; sign it with a fleet key (`facegate cmd sign-open`)")]
    Unsigned,
    /// Format is not [`OPEN_FORMAT`].
    #[error("open format {0} is not supported (this build reads format {OPEN_FORMAT})")]
    UnsupportedFormat(u32),
    /// No configured fleet key verifies the signature.
    #[error("bad signature: no configured fleet key ({known}) verifies this open command")]
    BadSignature {
        /// Ids of the configured keys.
        known: String,
    },
    /// `key_id` names another key than the one that verified.
    #[error("key id {claimed} does not match the verifying key {actual}")]
    KeyIdMismatch {
        /// Key id in the payload.
        claimed: String,
        /// Key that verified.
        actual: String,
    },
    /// Addressed to another site or device (or to `all`).
    #[error("open is for {found}, this terminal is {expected}")]
    WrongTarget {
        /// This terminal's `site/device`.
        expected: String,
        /// The command's `site/target`.
        found: String,
    },
    /// `not_after` is not after `not_before`.
    #[error("validity window [{not_before}, {not_after}] is empty")]
    BadWindow {
        /// Start.
        not_before: u64,
        /// End.
        not_after: u64,
    },
    /// The window is longer than `open_max_window_secs`.
    #[error("validity window of {secs} s is longer than the {max} s this terminal allows")]
    WindowTooLong {
        /// Window length.
        secs: u64,
        /// Configured limit.
        max: u64,
    },
    /// The window starts in the future (beyond the skew allowance).
    #[error("open is valid from {not_before}, the terminal clock is {now}; check the clocks")]
    NotYetValid {
        /// Start.
        not_before: u64,
        /// Terminal clock.
        now: u64,
    },
    /// The window has ended (beyond the skew allowance).
    #[error("open expired at {not_after} (terminal clock {now})")]
    Expired {
        /// End.
        not_after: u64,
        /// Terminal clock.
        now: u64,
    },
    /// Duration 0 or above `open_max_duration_ms`.
    #[error("release time {ms} ms is outside 1-{max} ms")]
    DurationTooLong {
        /// Requested.
        ms: u64,
        /// Configured limit.
        max: u64,
    },
    /// Signed for a window that began before this link started (replay memory cannot vouch).
    #[error(
        "open was valid from {not_before}, before this terminal started its link at {started}; sign a new one"
    )]
    Stale {
        /// Start.
        not_before: u64,
        /// Link start.
        started: u64,
    },
    /// The request id was already accepted.
    #[error("request id {0} was already used (replay)")]
    Replay(String),
    /// Too many live request ids to remember another.
    #[error("too many open commands in flight ({REPLAY_CAPACITY}); try again shortly")]
    Busy,
}

impl OpenRefusal {
    /// Stable machine-readable code for the result message and logs.
    pub fn code(&self) -> &'static str {
        match self {
            OpenRefusal::NotConfigured => "not_configured",
            OpenRefusal::Oversized { .. } => "oversized",
            OpenRefusal::Malformed(_) => "malformed",
            OpenRefusal::UnknownField(_) => "unknown_field",
            OpenRefusal::Unsigned => "unsigned",
            OpenRefusal::UnsupportedFormat(_) => "unsupported_format",
            OpenRefusal::BadSignature { .. } => "bad_signature",
            OpenRefusal::KeyIdMismatch { .. } => "key_id_mismatch",
            OpenRefusal::WrongTarget { .. } => "wrong_target",
            OpenRefusal::BadWindow { .. } => "bad_window",
            OpenRefusal::WindowTooLong { .. } => "window_too_long",
            OpenRefusal::NotYetValid { .. } => "not_yet_valid",
            OpenRefusal::Expired { .. } => "expired",
            OpenRefusal::DurationTooLong { .. } => "duration_too_long",
            OpenRefusal::Stale { .. } => "stale",
            OpenRefusal::Replay(_) => "replay",
            OpenRefusal::Busy => "busy",
        }
    }
}

/// Limits for `open`, from the `[mqtt]` configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenPolicy {
    /// This terminal's site.
    pub site: String,
    /// This terminal's device id.
    pub device: String,
    /// Longest release accepted, milliseconds.
    pub max_duration_ms: u64,
    /// Longest validity window accepted, seconds.
    pub max_window_secs: u64,
    /// Clock difference tolerated at both ends of the window, seconds.
    pub clock_skew_secs: u64,
}

/// An `open` that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedOpen {
    /// Request id.
    pub request_id: String,
    /// Release time.
    pub duration: Duration,
    /// Fleet key that signed it.
    pub key_id: String,
}

/// Verifies `open` commands and remembers accepted request ids (see the module docs).
#[derive(Debug)]
pub struct OpenVerifier {
    fleet: FleetKeys,
    policy: OpenPolicy,
    started_at: u64,
    /// Accepted request id → Unix second after which it can be forgotten.
    seen: HashMap<String, u64>,
}

impl OpenVerifier {
    /// Verifier trusting `fleet`, whose replay memory starts at `started_at` (Unix s).
    pub fn new(fleet: FleetKeys, policy: OpenPolicy, started_at: u64) -> Self {
        OpenVerifier {
            fleet,
            policy,
            started_at,
            seen: HashMap::new(),
        }
    }

    /// Request ids currently remembered (for tests and monitoring).
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    /// Run every check on `payload` at terminal time `now` (Unix s). On success the request id
    /// is remembered, so the same payload is refused as a `replay` from then on.
    pub fn verify(&mut self, payload: &[u8], now: u64) -> Result<VerifiedOpen, OpenRefusal> {
        if payload.len() > MAX_COMMAND_BYTES {
            return Err(OpenRefusal::Oversized {
                size: payload.len(),
            });
        }
        let value: serde_json::Value = serde_json::from_slice(payload)
            .map_err(|e| OpenRefusal::Malformed(format!("not JSON ({e})")))?;
        let Some(obj) = value.as_object() else {
            return Err(OpenRefusal::Malformed("not a JSON object".into()));
        };
        if !obj.contains_key("signature") {
            return Err(OpenRefusal::Unsigned);
        }
        let cmd: SignedOpen = serde_json::from_value(value).map_err(|e| {
            let m = e.to_string();
            if m.contains("unknown field") {
                OpenRefusal::UnknownField(m)
            } else {
                OpenRefusal::Malformed(m)
            }
        })?;
        if cmd.format != OPEN_FORMAT {
            return Err(OpenRefusal::UnsupportedFormat(cmd.format));
        }
        let mut sig = [0u8; SIG_LEN];
        let known = || OpenRefusal::BadSignature {
            known: self.fleet.ids().join(", "),
        };
        hex::decode_to_slice(&cmd.signature, &mut sig).map_err(|_| known())?;
        let req = cmd.request();
        let actual = self
            .fleet
            .verify(&req.signed_message(&cmd.key_id), &sig)
            .ok_or_else(known)?
            .to_string();
        if actual != cmd.key_id {
            return Err(OpenRefusal::KeyIdMismatch {
                claimed: cmd.key_id,
                actual,
            });
        }
        let p = &self.policy;
        if req.site != p.site || req.target != p.device || req.target == TARGET_ALL {
            return Err(OpenRefusal::WrongTarget {
                expected: format!("{}/{}", p.site, p.device),
                found: format!("{}/{}", req.site, req.target),
            });
        }
        if !valid_request_id(&req.request_id) {
            return Err(OpenRefusal::Malformed(
                "request_id must be 1-64 characters of [A-Za-z0-9._:-]".into(),
            ));
        }
        if req.not_after <= req.not_before {
            return Err(OpenRefusal::BadWindow {
                not_before: req.not_before,
                not_after: req.not_after,
            });
        }
        let secs = req.not_after - req.not_before;
        if secs > p.max_window_secs {
            return Err(OpenRefusal::WindowTooLong {
                secs,
                max: p.max_window_secs,
            });
        }
        if now.saturating_add(p.clock_skew_secs) < req.not_before {
            return Err(OpenRefusal::NotYetValid {
                not_before: req.not_before,
                now,
            });
        }
        if now > req.not_after.saturating_add(p.clock_skew_secs) {
            return Err(OpenRefusal::Expired {
                not_after: req.not_after,
                now,
            });
        }
        if req.duration_ms == 0 || req.duration_ms > p.max_duration_ms {
            return Err(OpenRefusal::DurationTooLong {
                ms: req.duration_ms,
                max: p.max_duration_ms,
            });
        }
        if req.not_before < self.started_at {
            return Err(OpenRefusal::Stale {
                not_before: req.not_before,
                started: self.started_at,
            });
        }
        self.seen.retain(|_, until| *until >= now);
        if self.seen.contains_key(&req.request_id) {
            return Err(OpenRefusal::Replay(req.request_id));
        }
        if self.seen.len() >= REPLAY_CAPACITY {
            return Err(OpenRefusal::Busy);
        }
        self.seen.insert(
            req.request_id.clone(),
            req.not_after.saturating_add(p.clock_skew_secs),
        );
        Ok(VerifiedOpen {
            request_id: req.request_id,
            duration: Duration::from_millis(req.duration_ms),
            key_id: actual,
        })
    }
}

/// The request id of a payload if it has a well-formed one (to echo in a refusal's result);
/// never trusted for anything else.
pub fn claimed_request_id(payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Loose {
        #[serde(default)]
        request_id: Option<String>,
    }
    if payload.len() > MAX_COMMAND_BYTES {
        return None;
    }
    serde_json::from_slice::<Loose>(payload)
        .ok()?
        .request_id
        .filter(|r| valid_request_id(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    const NOW: u64 = 1_750_000_000;

    fn policy() -> OpenPolicy {
        OpenPolicy {
            site: "hq".into(),
            device: "door-1".into(),
            max_duration_ms: 30_000,
            max_window_secs: 60,
            clock_skew_secs: 5,
        }
    }

    fn signer() -> SigningKey {
        SigningKey::from_bytes(&[21u8; 32])
    }

    fn verifier() -> OpenVerifier {
        OpenVerifier::new(
            FleetKeys::new([
                SigningKey::from_bytes(&[22u8; 32]).verifying_key(),
                signer().verifying_key(),
            ]),
            policy(),
            NOW - 100,
        )
    }

    fn req(id: &str) -> OpenRequest {
        OpenRequest {
            site: "hq".into(),
            target: "door-1".into(),
            request_id: id.into(),
            duration_ms: 5000,
            not_before: NOW - 1,
            not_after: NOW + 29,
        }
    }

    fn payload(s: &SignedOpen) -> Vec<u8> {
        serde_json::to_vec(s).unwrap()
    }

    #[test]
    fn valid_open_is_accepted_once() {
        let mut v = verifier();
        let p = payload(&sign_open(&req("r-1"), &signer()));
        let ok = v.verify(&p, NOW).unwrap();
        assert_eq!(ok.duration, Duration::from_millis(5000));
        assert_eq!(ok.key_id, crate::bundle::key_id(&signer().verifying_key()));
        assert_eq!(v.verify(&p, NOW).unwrap_err().code(), "replay");
        // Forgotten only once its window has passed — and then it is expired anyway.
        assert_eq!(v.verify(&p, NOW + 40).unwrap_err().code(), "expired");
        assert_eq!(v.remembered(), 1);
    }

    #[test]
    fn every_bad_open_has_its_own_code() {
        let mut v = verifier();
        let check = |v: &mut OpenVerifier, p: Vec<u8>, code: &str| {
            let e = v.verify(&p, NOW).unwrap_err();
            assert_eq!(e.code(), code, "{e}");
        };
        let good = sign_open(&req("r-2"), &signer());
        let mut unsigned: serde_json::Value = serde_json::to_value(&good).unwrap();
        unsigned.as_object_mut().unwrap().remove("signature");
        check(&mut v, serde_json::to_vec(&unsigned).unwrap(), "unsigned");
        check(
            &mut v,
            br#"{"request_id":"x","duration_ms":1}"#.to_vec(),
            "unsigned",
        );
        check(
            &mut v,
            payload(&sign_open(&req("r-2"), &SigningKey::from_bytes(&[9u8; 32]))),
            "bad_signature",
        );
        // Any signed field changed after signing breaks the signature.
        for f in [
            |s: &mut SignedOpen| s.duration_ms = 9000,
            |s: &mut SignedOpen| s.target = "door-2".into(),
            |s: &mut SignedOpen| s.not_after += 1,
            |s: &mut SignedOpen| s.request_id = "r-3".into(),
        ] {
            let mut t = good.clone();
            f(&mut t);
            check(&mut v, payload(&t), "bad_signature");
        }
        let mut t = good.clone();
        t.signature = "zz".into();
        check(&mut v, payload(&t), "bad_signature");
        let mut t = good.clone();
        t.key_id = crate::bundle::key_id(&SigningKey::from_bytes(&[22u8; 32]).verifying_key());
        check(&mut v, payload(&t), "bad_signature");
        let mut r = req("r-2");
        r.target = "door-2".into();
        check(&mut v, payload(&sign_open(&r, &signer())), "wrong_target");
        r.target = TARGET_ALL.into();
        check(&mut v, payload(&sign_open(&r, &signer())), "wrong_target");
        let mut r = req("r-2");
        r.site = "branch".into();
        check(&mut v, payload(&sign_open(&r, &signer())), "wrong_target");
        let mut r = req("r-2");
        r.not_before = NOW - 120;
        r.not_after = NOW - 60;
        check(&mut v, payload(&sign_open(&r, &signer())), "expired");
        let mut r = req("r-2");
        r.not_before = NOW + 30;
        r.not_after = NOW + 60;
        check(&mut v, payload(&sign_open(&r, &signer())), "not_yet_valid");
        let mut r = req("r-2");
        r.not_after = r.not_before + 61;
        check(
            &mut v,
            payload(&sign_open(&r, &signer())),
            "window_too_long",
        );
        let mut r = req("r-2");
        r.not_after = r.not_before;
        check(&mut v, payload(&sign_open(&r, &signer())), "bad_window");
        let mut r = req("r-2");
        r.duration_ms = 30_001;
        check(
            &mut v,
            payload(&sign_open(&r, &signer())),
            "duration_too_long",
        );
        r.duration_ms = 0;
        check(
            &mut v,
            payload(&sign_open(&r, &signer())),
            "duration_too_long",
        );
        let mut r = req("r-2");
        r.request_id = "bad id\n".into();
        check(&mut v, payload(&sign_open(&r, &signer())), "malformed");
        let mut long = serde_json::to_value(&good).unwrap();
        long["extra"] = "x".repeat(5000).into();
        check(&mut v, serde_json::to_vec(&long).unwrap(), "oversized");
        long["extra"] = true.into();
        check(&mut v, serde_json::to_vec(&long).unwrap(), "unknown_field");
        let mut t = good.clone();
        t.format = 2;
        check(&mut v, payload(&t), "unsupported_format");
        check(&mut v, b"[1,2]".to_vec(), "malformed");
        check(&mut v, b"\xff\x00".to_vec(), "malformed");
        // Signed before the link started: the replay memory cannot vouch for it.
        let mut late = OpenVerifier::new(FleetKeys::new([signer().verifying_key()]), policy(), NOW);
        check(&mut late, payload(&good), "stale");
        // None of the refusals consumed the request id: the genuine command still works.
        assert_eq!(v.remembered(), 0);
        v.verify(&payload(&good), NOW).unwrap();
    }

    #[test]
    fn open_signatures_are_not_bundle_signatures() {
        // The same key signs bundles; the domain prefixes keep the two apart.
        let r = req("r-9");
        let s = sign_open(&r, &signer());
        let msg = r.signed_message(&s.key_id);
        assert!(msg.starts_with(OPEN_SIGNING_DOMAIN));
        assert!(!msg.starts_with(crate::bundle::SIGNING_DOMAIN));
        // Length prefixes: moving a character between adjacent fields changes the message.
        let mut a = r.clone();
        a.site = "hqd".into();
        a.target = "oor-1".into();
        assert_ne!(a.signed_message(&s.key_id), msg);
    }

    #[test]
    fn replay_memory_is_bounded() {
        let mut v = OpenVerifier::new(
            FleetKeys::new([signer().verifying_key()]),
            OpenPolicy {
                max_window_secs: 3600,
                ..policy()
            },
            0,
        );
        for i in 0..REPLAY_CAPACITY {
            v.verify(&payload(&sign_open(&req(&format!("r{i}")), &signer())), NOW)
                .unwrap();
        }
        let e = v
            .verify(&payload(&sign_open(&req("one-more"), &signer())), NOW)
            .unwrap_err();
        assert_eq!(e.code(), "busy");
        // Once their windows have passed the ids are forgotten and new opens are accepted.
        let mut r = req("later");
        r.not_before = NOW + 100;
        r.not_after = NOW + 120;
        v.verify(&payload(&sign_open(&r, &signer())), NOW + 100)
            .unwrap();
        assert_eq!(v.remembered(), 1);
    }

    #[test]
    fn claimed_request_id_is_filtered() {
        assert_eq!(
            claimed_request_id(br#"{"request_id":"r-1","x":1}"#).as_deref(),
            Some("r-1")
        );
        assert_eq!(claimed_request_id(br#"{"request_id":"a\nb"}"#), None);
        assert_eq!(claimed_request_id(b"garbage"), None);
    }
}
