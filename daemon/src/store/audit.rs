//! Append-only, hash-chained audit log.
//!
//! Each entry records who did what to whom, when, and the outcome — never images, vectors, keys
//! or personal fields (the subject is a person *id*). Entry `n` stores
//! `hash_n = SHA-256(hash_{n-1} ‖ canonical JSON of entry n)` (with `hash_0` = 32 zero bytes),
//! so editing, deleting or reordering any entry breaks every later link. The newest `(seq, hash)`
//! is also kept *sealed* under the data key in meta, so truncating the tail or rewriting the whole
//! chain without the key is detected too. Entries are written in the same transaction as the
//! change they describe (enrol, removal, rotation, ...), so log and data cannot disagree.
//!
//! Entries are stored as plaintext JSON: they hold no personal data, and this keeps the log
//! readable for investigation even if a record elsewhere is damaged.

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::{Result, StoreError};
use super::schema::{AUDIT, META, meta};
use super::{Store, now_unix};

/// What kind of event an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// Store created (`keys init`).
    KeysInit,
    /// Person enrolled.
    Enrol,
    /// Person and templates removed.
    Remove,
    /// Data-subject export produced.
    Export,
    /// Adaptive template added (and possibly the oldest replaced).
    AdaptiveTemplate,
    /// Key-encryption key rotated.
    KeyRotation,
    /// Crypto-erase started.
    Erase,
    /// Enrolment bundle applied.
    BundleApplied,
    /// Remote command received (MQTT/control socket).
    CommandReceived,
}

/// How the action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// Done.
    Ok,
    /// Refused by policy.
    Denied,
    /// Attempted and failed.
    Failed,
}

/// An event to append; the store adds sequence, time and chain hashes.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// Who: `cli:<user>`, `daemon`, `mqtt:<client>`, ...
    pub actor: String,
    /// What.
    pub action: AuditAction,
    /// Person id concerned, if any (never a label).
    pub subject: Option<String>,
    /// Outcome.
    pub outcome: AuditOutcome,
    /// Short non-personal detail (counts, model version, key ids).
    pub detail: Option<String>,
}

impl AuditEvent {
    /// Shorthand for a successful action.
    pub fn ok(
        actor: &str,
        action: AuditAction,
        subject: Option<&str>,
        detail: Option<String>,
    ) -> Self {
        AuditEvent {
            actor: actor.into(),
            action,
            subject: subject.map(Into::into),
            outcome: AuditOutcome::Ok,
            detail,
        }
    }
}

/// A stored entry, as listed and exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// 1-based position in the chain.
    pub seq: u64,
    /// Unix seconds.
    pub ts: u64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: AuditAction,
    /// Person id, if any.
    pub subject: Option<String>,
    /// Outcome.
    pub outcome: AuditOutcome,
    /// Detail.
    pub detail: Option<String>,
    /// Hex hash of the previous entry.
    pub prev: String,
    /// Hex hash of this entry.
    pub hash: String,
}

/// The hashed part of an entry; field order is the canonical order.
#[derive(Serialize)]
struct Canonical<'a> {
    seq: u64,
    ts: u64,
    actor: &'a str,
    action: AuditAction,
    subject: Option<&'a str>,
    outcome: AuditOutcome,
    detail: Option<&'a str>,
}

impl AuditEntry {
    fn compute_hash(&self, prev: &[u8; 32]) -> [u8; 32] {
        let canon = Canonical {
            seq: self.seq,
            ts: self.ts,
            actor: &self.actor,
            action: self.action,
            subject: self.subject.as_deref(),
            outcome: self.outcome,
            detail: self.detail.as_deref(),
        };
        let mut h = Sha256::new();
        h.update(prev);
        // Serializing a plain struct of strings and integers cannot fail.
        h.update(serde_json::to_vec(&canon).unwrap_or_default());
        h.finalize().into()
    }
}

/// Result of a successful [`Store::verify_audit`].
#[derive(Debug, Clone, Serialize)]
pub struct AuditVerification {
    /// Entries checked.
    pub entries: u64,
    /// Hex hash of the newest entry (zeros if empty).
    pub head: String,
}

fn broken(seq: u64, problem: impl Into<String>) -> StoreError {
    StoreError::AuditBroken {
        seq,
        problem: problem.into(),
    }
}

fn decode32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok().map(|_| out)
}

impl Store {
    /// Append an event in its own transaction (daemon events: command received, ...).
    pub fn append_audit(&self, event: &AuditEvent) -> Result<u64> {
        let txn = self.begin_write()?;
        let seq = self.audit_in(&txn, event)?;
        txn.commit()?;
        Ok(seq)
    }

    /// Append inside the caller's transaction, so the entry commits with the change it describes.
    pub(crate) fn audit_in(&self, txn: &WriteTransaction, event: &AuditEvent) -> Result<u64> {
        let mut table = txn.open_table(AUDIT)?;
        let (seq, prev) = match table.last()? {
            Some((_, v)) => {
                let last: AuditEntry = serde_json::from_slice(v.value())
                    .map_err(|_| broken(0, "newest entry is unreadable; run `audit verify`"))?;
                let prev =
                    decode32(&last.hash).ok_or_else(|| broken(last.seq, "malformed hash"))?;
                (last.seq + 1, prev)
            }
            None => (1, [0u8; 32]),
        };
        let mut entry = AuditEntry {
            seq,
            ts: now_unix(),
            actor: event.actor.clone(),
            action: event.action,
            subject: event.subject.clone(),
            outcome: event.outcome,
            detail: event.detail.clone(),
            prev: hex::encode(prev),
            hash: String::new(),
        };
        let hash = entry.compute_hash(&prev);
        entry.hash = hex::encode(hash);
        let json =
            serde_json::to_vec(&entry).map_err(|_| StoreError::Crypto("serialize audit entry"))?;
        table.insert(seq, json.as_slice())?;
        let mut head = seq.to_be_bytes().to_vec();
        head.extend_from_slice(&hash);
        let sealed = self.seal_row("meta", meta::AUDIT_HEAD.as_bytes(), &head)?;
        txn.open_table(META)?
            .insert(meta::AUDIT_HEAD, sealed.as_slice())?;
        Ok(seq)
    }

    /// Entries in order, optionally only those about `subject`, keeping the newest `limit`.
    pub fn audit_entries(&self, subject: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let mut out = std::collections::VecDeque::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let e: AuditEntry =
                serde_json::from_slice(v.value()).map_err(|_| broken(k.value(), "unreadable"))?;
            if subject.is_none_or(|s| e.subject.as_deref() == Some(s)) {
                out.push_back(e);
                if out.len() > limit {
                    out.pop_front();
                }
            }
        }
        Ok(out.into())
    }

    /// Check every link of the chain and the sealed head; the error names the first bad entry.
    pub fn verify_audit(&self) -> Result<AuditVerification> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let mut prev = [0u8; 32];
        let mut expected = 1u64;
        for row in table.iter()? {
            let (k, v) = row?;
            let k = k.value();
            let e: AuditEntry = serde_json::from_slice(v.value())
                .map_err(|_| broken(k, "entry is not valid JSON"))?;
            if k != expected {
                return Err(broken(
                    expected,
                    format!("missing (next stored entry is {k})"),
                ));
            }
            if e.seq != k {
                return Err(broken(
                    k,
                    format!("stored under {k} but numbered {}", e.seq),
                ));
            }
            let stored_prev = decode32(&e.prev).ok_or_else(|| broken(k, "malformed prev hash"))?;
            if !bool::from(stored_prev.ct_eq(&prev)) {
                return Err(broken(
                    k,
                    "prev hash does not match the preceding entry (inserted, removed or reordered)",
                ));
            }
            let stored = decode32(&e.hash).ok_or_else(|| broken(k, "malformed hash"))?;
            let computed = e.compute_hash(&prev);
            if !bool::from(stored.ct_eq(&computed)) {
                return Err(broken(k, "content altered (hash mismatch)"));
            }
            prev = computed;
            expected += 1;
        }
        let last = expected - 1;
        let m = txn.open_table(META)?;
        let head = m.get(meta::AUDIT_HEAD)?;
        match head {
            None if last == 0 => {}
            None => return Err(broken(last, "sealed head missing")),
            Some(v) => {
                let plain = self.open_row(
                    "meta",
                    meta::AUDIT_HEAD.as_bytes(),
                    || meta::AUDIT_HEAD.into(),
                    v.value(),
                )?;
                let (seq_b, hash_b) = plain.split_at(8.min(plain.len()));
                let head_seq = u64::from_be_bytes(
                    seq_b
                        .try_into()
                        .map_err(|_| broken(last, "malformed head"))?,
                );
                if head_seq > last {
                    return Err(broken(
                        last + 1,
                        format!("entries {}..={head_seq} missing (log truncated)", last + 1),
                    ));
                }
                if head_seq < last {
                    return Err(broken(
                        head_seq + 1,
                        "entry not covered by the sealed head (appended without the key)",
                    ));
                }
                if !bool::from(hash_b.ct_eq(&prev)) {
                    return Err(broken(
                        last,
                        "chain rewritten (does not match the sealed head)",
                    ));
                }
            }
        }
        Ok(AuditVerification {
            entries: last,
            head: hex::encode(prev),
        })
    }
}
