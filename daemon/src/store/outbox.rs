//! Durable, bounded queue of events waiting to be published (the MQTT publisher drains it).
//!
//! Events survive power loss and network outages: the daemon appends, the publisher peeks a
//! batch in order, publishes, then deletes what the broker acknowledged. Sequence numbers are
//! monotonic and never reused (counter in meta), so a late delete can never hit a newer event.
//! Payloads are sealed like every other value because events name people.
//!
//! # Bounds and the overflow summary
//!
//! A terminal that cannot reach its broker for weeks must not fill its SD card, so every append
//! is checked against [`OutboxLimits`] (rows and sealed bytes). When an append would exceed a
//! bound, the **oldest** events are removed and folded into one *overflow summary* kept in the
//! reserved row `0` of the outbox table, in the same write transaction as the removal and the
//! append — a crash can never drop events without the summary that counts them. What the summary
//! contains is decided by the caller's fold function (see `mqtt::publisher`): the store only
//! guarantees atomicity, the bounds, and that there is at most one summary: a later overflow
//! folds into the existing summary instead of creating a chain of them.
//!
//! The summary row counts towards both bounds (so `outbox_len() <= max_events` always holds)
//! and is never returned by [`Store::outbox_peek_batch`]; the publisher reads it with
//! [`Store::outbox_summary`] and acknowledges it with [`Store::outbox_ack_summary`]. Every write
//! of the summary gets a new *revision* (meta counter): an acknowledgement deletes the summary
//! only if it is still the revision that was published, so events folded in while it was in
//! flight are never lost with it.
//!
//! The byte total is kept as a meta counter (updated in the same transactions as the rows) so a
//! bounded append costs O(1) instead of a scan; stores written before the counter existed get it
//! initialised by one scan on their first append.

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::Store;
use super::error::{Result, StoreError};
use super::schema::{self, META, OUTBOX, meta};

/// Row key of the overflow summary (event sequence numbers start at 1).
pub const SUMMARY_SEQ: u64 = 0;
/// Sealed bytes reserved for the summary when deciding how many events to roll up; the actual
/// summary is measured afterwards and more events are rolled up if it is larger.
pub const SUMMARY_RESERVE_BYTES: u64 = 2048;
/// Events folded per call of the fold function, so rolling up after a large cut of the limits
/// never holds the whole backlog in memory.
const FOLD_CHUNK: usize = 256;

/// Default bound on queued rows: ~3 days of a busy door at one event per 3 s.
pub const DEFAULT_MAX_EVENTS: u64 = 100_000;
/// Default bound on sealed bytes: 64 MiB, small beside the smallest supported SD card.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
const MIN_EVENTS: u64 = 10;
const MAX_EVENTS: u64 = 10_000_000;
const MIN_BYTES: u64 = 64 << 10;
const MAX_BYTES: u64 = 1 << 30;

/// `[outbox]` limits: how much an unreachable broker may make the terminal queue before the
/// oldest events are rolled into the overflow summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxLimits {
    /// Most rows queued at once, the overflow summary included (`outbox.max_events`).
    pub max_events: u64,
    /// Most sealed bytes queued at once, the overflow summary included (`outbox.max_bytes`).
    pub max_bytes: u64,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            max_events: DEFAULT_MAX_EVENTS,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

impl OutboxLimits {
    /// Refuse limits that would make the queue useless (0, too small to hold a summary and an
    /// event) or absurd for the hardware; the message names the configuration key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(MIN_EVENTS..=MAX_EVENTS).contains(&self.max_events) {
            return Err(format!(
                "outbox.max_events = {} is out of range: use {MIN_EVENTS}-{MAX_EVENTS}",
                self.max_events
            ));
        }
        if !(MIN_BYTES..=MAX_BYTES).contains(&self.max_bytes) {
            return Err(format!(
                "outbox.max_bytes = {} is out of range: use {MIN_BYTES}-{MAX_BYTES} (64 KiB - 1 GiB)",
                self.max_bytes
            ));
        }
        Ok(())
    }
}

/// One queued event.
#[derive(Debug)]
pub struct OutboxItem {
    /// Position in the queue; pass to [`Store::outbox_delete`] once published.
    pub seq: u64,
    /// Event bytes (typically JSON), wiped when dropped.
    pub payload: Zeroizing<Vec<u8>>,
}

/// An event removed by an overflow, handed to the fold function.
#[derive(Debug)]
pub struct RolledEvent {
    /// Its sequence number.
    pub seq: u64,
    /// Its plaintext; `None` if the sealed value failed authentication (it is counted anyway).
    pub payload: Option<Zeroizing<Vec<u8>>>,
}

/// Input of one fold step: the summary so far and the next events rolled into it.
#[derive(Debug)]
pub struct FoldInput<'a> {
    /// Current summary plaintext (`None`: start a new summary).
    pub previous: Option<&'a [u8]>,
    /// Events rolled up in this step, oldest first.
    pub rolled: &'a [RolledEvent],
    /// Events counted by a previous summary whose sealed value no longer opens (its details
    /// are lost, its count is not).
    pub lost_from_previous: u64,
    /// Revision this write of the summary will have (see [`Store::outbox_ack_summary`]).
    pub revision: u64,
}

/// The fold: builds the next summary plaintext from a [`FoldInput`]. Must be deterministic and
/// return a small value (a few hundred bytes): it is called in the middle of a write transaction.
pub type Fold<'f> = dyn FnMut(FoldInput<'_>) -> Result<Vec<u8>> + 'f;

/// What one bounded append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Sequence number of the appended event.
    pub seq: u64,
    /// Events rolled into the summary by this append (0 when there was room).
    pub rolled_up: u64,
    /// Events counted by the summary now waiting in the outbox (0 when there is none).
    pub pending_rolled_up: u64,
    /// Whether this append started a new summary (the first overflow since the last delivery).
    pub new_summary: bool,
}

/// The overflow summary waiting for publication.
#[derive(Debug)]
pub struct OutboxSummary {
    /// Revision; acknowledge it with [`Store::outbox_ack_summary`].
    pub revision: u64,
    /// Plaintext built by the fold, wiped when dropped.
    pub payload: Zeroizing<Vec<u8>>,
}

/// Overflow bookkeeping for status reports (counts only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OverflowState {
    /// Events counted by the summary still waiting in the outbox.
    pub pending: u64,
    /// Events ever rolled up in this store.
    pub total: u64,
}

fn get_u64<T: ReadableTable<&'static str, &'static [u8]>>(t: &T, key: &str) -> Result<u64> {
    Ok(schema::be_u64(t.get(key)?.as_ref().map(|v| v.value())))
}

fn put_u64(txn: &WriteTransaction, key: &str, v: u64) -> Result<()> {
    txn.open_table(META)?
        .insert(key, v.to_be_bytes().as_slice())?;
    Ok(())
}

impl Store {
    /// Sealed bytes of event rows (summary excluded), from the meta counter, initialising it by
    /// one scan if this store has none yet.
    fn outbox_event_bytes_in(txn: &WriteTransaction) -> Result<u64> {
        if let Some(v) = txn.open_table(META)?.get(meta::OUTBOX_BYTES)? {
            return Ok(schema::be_u64(Some(v.value())));
        }
        let mut total = 0u64;
        for row in txn.open_table(OUTBOX)?.range(SUMMARY_SEQ + 1..)? {
            total += row?.1.value().len() as u64;
        }
        put_u64(txn, meta::OUTBOX_BYTES, total)?;
        Ok(total)
    }

    /// Queue an event durably within `limits`; returns its sequence number and what, if
    /// anything, was rolled into the overflow summary (see the module docs). `fold` builds the
    /// summary; it runs inside the write transaction, so the removal of old events, the summary
    /// and the new event commit together or not at all.
    pub fn outbox_append(
        &self,
        payload: &[u8],
        limits: &OutboxLimits,
        fold: &mut Fold<'_>,
    ) -> Result<AppendOutcome> {
        limits.validate().map_err(StoreError::InvalidInput)?;
        let txn = self.begin_write()?;
        let seq = Self::bump(&txn, meta::NEXT_OUTBOX_SEQ)? + 1;
        let sealed = self.seal_row("outbox", &seq.to_be_bytes(), payload)?;
        let new_len = sealed.len() as u64;
        if new_len.saturating_add(SUMMARY_RESERVE_BYTES) > limits.max_bytes {
            return Err(StoreError::InvalidInput(format!(
                "event of {new_len} bytes cannot fit outbox.max_bytes = {}",
                limits.max_bytes
            )));
        }
        let mut bytes = Self::outbox_event_bytes_in(&txn)?;
        let (mut pending, rev, total) = {
            let m = txn.open_table(META)?;
            (
                get_u64(&m, meta::OUTBOX_SUMMARY_PENDING)?,
                get_u64(&m, meta::OUTBOX_SUMMARY_REV)?,
                get_u64(&m, meta::OUTBOX_ROLLED_TOTAL)?,
            )
        };
        let mut outbox = txn.open_table(OUTBOX)?;
        let old_summary: Option<Vec<u8>> = outbox.get(SUMMARY_SEQ)?.map(|v| v.value().to_vec());
        let mut events = outbox.len()? - u64::from(old_summary.is_some());
        let summary_len = old_summary.as_ref().map_or(0, |s| s.len() as u64);
        let fits = |events: u64, bytes: u64, summary: Option<u64>| {
            events + 1 + u64::from(summary.is_some()) <= limits.max_events
                && bytes + new_len + summary.unwrap_or(0) <= limits.max_bytes
        };
        let mut outcome = AppendOutcome {
            seq,
            rolled_up: 0,
            pending_rolled_up: if old_summary.is_some() { pending } else { 0 },
            new_summary: false,
        };
        if !fits(events, bytes, old_summary.as_ref().map(|_| summary_len)) {
            let revision = rev + 1;
            let (mut current, mut lost) = match &old_summary {
                Some(s) => match self.open_row(
                    "outbox",
                    &SUMMARY_SEQ.to_be_bytes(),
                    || "0 (overflow summary)".into(),
                    s,
                ) {
                    Ok(plain) => (Some(plain), 0),
                    Err(_) => {
                        tracing::error!(
                            counted = pending,
                            "outbox overflow summary fails authentication; its details are lost, its count is kept"
                        );
                        (None, pending)
                    }
                },
                None => {
                    pending = 0;
                    (None, 0)
                }
            };
            outcome.new_summary = old_summary.is_none();
            let mut reserve = summary_len.max(SUMMARY_RESERVE_BYTES);
            let mut chunk: Vec<RolledEvent> = Vec::new();
            let mut folded_once = false;
            let sealed_summary = loop {
                while !fits(events, bytes, Some(reserve)) {
                    let first = outbox
                        .range(SUMMARY_SEQ + 1..)?
                        .next()
                        .transpose()?
                        .map(|(k, _)| k.value());
                    let Some(old) = first else { break };
                    let value = outbox
                        .remove(old)?
                        .map(|v| v.value().to_vec())
                        .unwrap_or_default();
                    events -= 1;
                    bytes = bytes.saturating_sub(value.len() as u64);
                    let plain = self
                        .open_row("outbox", &old.to_be_bytes(), || old.to_string(), &value)
                        .ok();
                    chunk.push(RolledEvent {
                        seq: old,
                        payload: plain,
                    });
                    outcome.rolled_up += 1;
                    if chunk.len() >= FOLD_CHUNK {
                        current = Some(Zeroizing::new(fold(FoldInput {
                            previous: current.as_deref().map(Vec::as_slice),
                            rolled: &chunk,
                            lost_from_previous: std::mem::take(&mut lost),
                            revision,
                        })?));
                        folded_once = true;
                        chunk.clear();
                    }
                }
                if !chunk.is_empty() || !folded_once {
                    current = Some(Zeroizing::new(fold(FoldInput {
                        previous: current.as_deref().map(Vec::as_slice),
                        rolled: &chunk,
                        lost_from_previous: std::mem::take(&mut lost),
                        revision,
                    })?));
                    folded_once = true;
                    chunk.clear();
                }
                let plain = current.as_deref().map(Vec::as_slice).unwrap_or_default();
                let s = self.seal_row("outbox", &SUMMARY_SEQ.to_be_bytes(), plain)?;
                if fits(events, bytes, Some(s.len() as u64)) || events == 0 {
                    break s;
                }
                reserve = s.len() as u64;
            };
            outbox.insert(SUMMARY_SEQ, sealed_summary.as_slice())?;
            pending += outcome.rolled_up;
            outcome.pending_rolled_up = pending;
            drop(outbox);
            put_u64(&txn, meta::OUTBOX_SUMMARY_REV, revision)?;
            put_u64(&txn, meta::OUTBOX_SUMMARY_PENDING, pending)?;
            put_u64(
                &txn,
                meta::OUTBOX_ROLLED_TOTAL,
                total.saturating_add(outcome.rolled_up),
            )?;
            outbox = txn.open_table(OUTBOX)?;
        }
        outbox.insert(seq, sealed.as_slice())?;
        drop(outbox);
        put_u64(&txn, meta::OUTBOX_BYTES, bytes + new_len)?;
        txn.commit()?;
        Ok(outcome)
    }

    /// Oldest `n` events, in order, without removing them (never the overflow summary). A
    /// damaged entry is an [`super::StoreError::Integrity`] naming its sequence (delete it to
    /// move on).
    pub fn outbox_peek_batch(&self, n: usize) -> Result<Vec<OutboxItem>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OUTBOX)?;
        let mut out = Vec::with_capacity(n.min(1024));
        for row in table.range(SUMMARY_SEQ + 1..)?.take(n) {
            let (k, v) = row?;
            let seq = k.value();
            let payload =
                self.open_row("outbox", &seq.to_be_bytes(), || seq.to_string(), v.value())?;
            out.push(OutboxItem { seq, payload });
        }
        Ok(out)
    }

    /// Remove a published event (or, with [`SUMMARY_SEQ`], the summary whatever its
    /// revision); `false` if it was already gone.
    pub fn outbox_delete(&self, seq: u64) -> Result<bool> {
        let txn = self.begin_write()?;
        let removed = txn
            .open_table(OUTBOX)?
            .remove(seq)?
            .map(|v| v.value().len() as u64);
        if let Some(len) = removed {
            if seq == SUMMARY_SEQ {
                put_u64(&txn, meta::OUTBOX_SUMMARY_PENDING, 0)?;
            } else {
                let counter = txn
                    .open_table(META)?
                    .get(meta::OUTBOX_BYTES)?
                    .map(|v| schema::be_u64(Some(v.value())));
                // Absent counter: the next append initialises it by a scan.
                if let Some(b) = counter {
                    put_u64(&txn, meta::OUTBOX_BYTES, b.saturating_sub(len))?;
                }
            }
        }
        txn.commit()?;
        Ok(removed.is_some())
    }

    /// The overflow summary waiting for publication, if any. A damaged summary is an
    /// [`super::StoreError::Integrity`] for row `0` (delete it with [`Store::outbox_delete`]).
    pub fn outbox_summary(&self) -> Result<Option<OutboxSummary>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OUTBOX)?;
        let Some(v) = table.get(SUMMARY_SEQ)? else {
            return Ok(None);
        };
        let payload = self.open_row(
            "outbox",
            &SUMMARY_SEQ.to_be_bytes(),
            || SUMMARY_SEQ.to_string(),
            v.value(),
        )?;
        let revision = get_u64(&txn.open_table(META)?, meta::OUTBOX_SUMMARY_REV)?;
        Ok(Some(OutboxSummary { revision, payload }))
    }

    /// The broker acknowledged summary `revision`: delete it if it is still that revision
    /// (returns `true`); a summary rewritten since is kept, to be published again.
    pub fn outbox_ack_summary(&self, revision: u64) -> Result<bool> {
        let txn = self.begin_write()?;
        let current = get_u64(&txn.open_table(META)?, meta::OUTBOX_SUMMARY_REV)?;
        let deleted = current == revision && txn.open_table(OUTBOX)?.remove(SUMMARY_SEQ)?.is_some();
        if deleted {
            put_u64(&txn, meta::OUTBOX_SUMMARY_PENDING, 0)?;
        }
        txn.commit()?;
        Ok(deleted)
    }

    /// Overflow counts for status reports.
    pub fn outbox_overflow(&self) -> Result<OverflowState> {
        let txn = self.db.begin_read()?;
        let has_summary = txn.open_table(OUTBOX)?.get(SUMMARY_SEQ)?.is_some();
        let m = txn.open_table(META)?;
        Ok(OverflowState {
            pending: if has_summary {
                get_u64(&m, meta::OUTBOX_SUMMARY_PENDING)?
            } else {
                0
            },
            total: get_u64(&m, meta::OUTBOX_ROLLED_TOTAL)?,
        })
    }

    /// Number of queued rows: events plus the overflow summary, if any.
    pub fn outbox_len(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(OUTBOX)?.len()?)
    }

    /// Sealed bytes queued, the overflow summary included (what [`OutboxLimits::max_bytes`]
    /// bounds).
    pub fn outbox_bytes(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OUTBOX)?;
        let summary = table
            .get(SUMMARY_SEQ)?
            .map_or(0, |v| v.value().len() as u64);
        let counter = txn
            .open_table(META)?
            .get(meta::OUTBOX_BYTES)?
            .map(|v| schema::be_u64(Some(v.value())));
        let events = match counter {
            Some(b) => b,
            None => {
                let mut total = 0u64;
                for row in table.range(SUMMARY_SEQ + 1..)? {
                    total += row?.1.value().len() as u64;
                }
                total
            }
        };
        Ok(events + summary)
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

    /// A fold that keeps `count,first,last,revision` so the tests can check exact arithmetic.
    fn counting_fold(f: FoldInput<'_>) -> Result<Vec<u8>> {
        let (mut n, mut first, mut last) = match f.previous {
            Some(p) => {
                let t = std::str::from_utf8(p).unwrap();
                let v: Vec<u64> = t.split(',').map(|x| x.parse().unwrap()).collect();
                (v[0], v[1], v[2])
            }
            None => (0, u64::MAX, 0),
        };
        n += f.rolled.len() as u64 + f.lost_from_previous;
        for r in f.rolled {
            assert!(r.payload.is_some());
            first = first.min(r.seq);
            last = last.max(r.seq);
        }
        Ok(format!("{n},{first},{last},{}", f.revision).into_bytes())
    }

    fn parse(s: &OutboxSummary) -> Vec<u64> {
        std::str::from_utf8(&s.payload)
            .unwrap()
            .split(',')
            .map(|x| x.parse().unwrap())
            .collect()
    }

    #[test]
    fn limits_validate_and_deserialize() {
        OutboxLimits::default().validate().unwrap();
        let e = OutboxLimits {
            max_events: 0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("outbox.max_events"), "{e}");
        let e = OutboxLimits {
            max_bytes: 1 << 40,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("outbox.max_bytes"), "{e}");
        let l: OutboxLimits = toml::from_str("max_events = 50").unwrap();
        assert_eq!((l.max_events, l.max_bytes), (50, DEFAULT_MAX_BYTES));
        assert!(toml::from_str::<OutboxLimits>("max_event = 50").is_err());
    }

    #[test]
    fn event_bound_rolls_oldest_into_one_merged_summary() {
        let (_d, s) = store();
        let limits = OutboxLimits {
            max_events: 10,
            max_bytes: DEFAULT_MAX_BYTES,
        };
        let mut fold = counting_fold;
        for i in 1..=10u64 {
            let o = s.outbox_append(b"{}", &limits, &mut fold).unwrap();
            assert_eq!((o.seq, o.rolled_up, o.new_summary), (i, 0, false));
        }
        assert!(s.outbox_summary().unwrap().is_none());
        // 11th: 10 events + summary + new would be 12 rows → roll up 2.
        let o = s.outbox_append(b"{}", &limits, &mut fold).unwrap();
        assert_eq!(
            (o.rolled_up, o.pending_rolled_up, o.new_summary),
            (2, 2, true)
        );
        for _ in 0..89 {
            let o = s.outbox_append(b"{}", &limits, &mut fold).unwrap();
            assert_eq!((o.rolled_up, o.new_summary), (1, false));
            assert_eq!(s.outbox_len().unwrap(), 10);
        }
        let sum = s.outbox_summary().unwrap().unwrap();
        // 100 appended, 9 left as events, 91 rolled into one summary covering seqs 1..=91.
        assert_eq!(parse(&sum)[..3], [91, 1, 91]);
        assert_eq!(parse(&sum)[3], sum.revision);
        let left: Vec<u64> = s
            .outbox_peek_batch(100)
            .unwrap()
            .iter()
            .map(|i| i.seq)
            .collect();
        assert_eq!(left, (92..=100).collect::<Vec<_>>());
        assert_eq!(
            s.outbox_overflow().unwrap(),
            OverflowState {
                pending: 91,
                total: 91
            }
        );
        // An acknowledgement of an older revision keeps the summary; the current one deletes it.
        assert!(!s.outbox_ack_summary(sum.revision - 1).unwrap());
        assert!(s.outbox_ack_summary(sum.revision).unwrap());
        assert!(s.outbox_summary().unwrap().is_none());
        assert_eq!(s.outbox_overflow().unwrap().pending, 0);
        // The next overflow starts a new summary; the lifetime total keeps counting.
        let o = s.outbox_append(b"{}", &limits, &mut fold).unwrap();
        assert_eq!(o.rolled_up, 0, "9 events + 1 fit in 10 rows");
        let o = s.outbox_append(b"{}", &limits, &mut fold).unwrap();
        assert_eq!((o.rolled_up, o.new_summary), (2, true));
        assert_eq!(s.outbox_overflow().unwrap().total, 91 + o.pending_rolled_up);
        assert!(s.outbox_len().unwrap() <= 10);
    }

    #[test]
    fn summary_rewritten_in_flight_survives_the_old_ack() {
        let (_d, s) = store();
        let limits = OutboxLimits {
            max_events: 10,
            max_bytes: DEFAULT_MAX_BYTES,
        };
        let mut fold = counting_fold;
        for _ in 0..12 {
            s.outbox_append(b"{}", &limits, &mut fold).unwrap();
        }
        let sent = s.outbox_summary().unwrap().unwrap();
        s.outbox_append(b"{}", &limits, &mut fold).unwrap(); // folds one more while "in flight"
        assert!(!s.outbox_ack_summary(sent.revision).unwrap());
        let now = s.outbox_summary().unwrap().unwrap();
        assert_eq!(parse(&now)[0], parse(&sent)[0] + 1, "cumulative");
        assert!(now.revision > sent.revision);
    }

    #[test]
    fn byte_bound_holds_and_counts_are_exact() {
        let (_d, s) = store();
        let limits = OutboxLimits {
            max_events: 1_000_000,
            max_bytes: 64 << 10,
        };
        let mut fold = counting_fold;
        let payload = vec![b'x'; 300];
        let mut rolled = 0;
        for _ in 0..1000 {
            rolled += s
                .outbox_append(&payload, &limits, &mut fold)
                .unwrap()
                .rolled_up;
            assert!(s.outbox_bytes().unwrap() <= limits.max_bytes);
        }
        let events = s.outbox_peek_batch(10_000).unwrap().len() as u64;
        let sum = s.outbox_summary().unwrap().unwrap();
        assert_eq!(parse(&sum)[0], rolled);
        assert_eq!(rolled + events, 1000);
        assert!(events > 150, "{events} events kept in 64 KiB");
        // Deleting keeps the byte counter exact: drain and compare with a fresh scan.
        for i in s.outbox_peek_batch(10_000).unwrap() {
            s.outbox_delete(i.seq).unwrap();
        }
        assert!(s.outbox_delete(SUMMARY_SEQ).unwrap());
        assert_eq!(s.outbox_bytes().unwrap(), 0);
        assert_eq!(s.outbox_len().unwrap(), 0);
    }

    #[test]
    fn shrinking_the_limits_rolls_a_large_backlog_in_one_append() {
        let (_d, s) = store();
        let mut fold = counting_fold;
        for _ in 0..700 {
            s.outbox_append(b"{}", &OutboxLimits::default(), &mut fold)
                .unwrap();
        }
        let small = OutboxLimits {
            max_events: 10,
            max_bytes: DEFAULT_MAX_BYTES,
        };
        let o = s.outbox_append(b"{}", &small, &mut fold).unwrap();
        assert_eq!(o.rolled_up, 692);
        assert_eq!(s.outbox_len().unwrap(), 10);
        assert_eq!(
            parse(&s.outbox_summary().unwrap().unwrap())[..3],
            [692, 1, 692]
        );
    }

    #[test]
    fn oversized_event_is_refused_without_touching_the_queue() {
        let (_d, s) = store();
        let limits = OutboxLimits {
            max_events: 10,
            max_bytes: 64 << 10,
        };
        let mut fold = counting_fold;
        s.outbox_append(b"{}", &limits, &mut fold).unwrap();
        let e = s
            .outbox_append(&vec![0u8; 64 << 10], &limits, &mut fold)
            .unwrap_err();
        assert!(e.to_string().contains("outbox.max_bytes"), "{e}");
        assert_eq!(s.outbox_len().unwrap(), 1);
        assert_eq!(s.outbox_append(b"{}", &limits, &mut fold).unwrap().seq, 2);
    }
}
