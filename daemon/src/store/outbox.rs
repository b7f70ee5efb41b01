//! Durable queue of events waiting to be published (the MQTT publisher drains it).
//!
//! Events survive power loss and network outages: the daemon appends, the publisher peeks a
//! batch in order, publishes, then deletes what the broker acknowledged. Sequence numbers are
//! monotonic and never reused (counter in meta), so a late delete can never hit a newer event.
//! Payloads are sealed like every other value because events name people.

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use zeroize::Zeroizing;

use super::Store;
use super::error::Result;
use super::schema::{OUTBOX, meta};

/// One queued event.
#[derive(Debug)]
pub struct OutboxItem {
    /// Position in the queue; pass to [`Store::outbox_delete`] once published.
    pub seq: u64,
    /// Event bytes (typically JSON), wiped when dropped.
    pub payload: Zeroizing<Vec<u8>>,
}

/// TEMPORARY (replaced by the fleet-sync branch): outbox bounds from `[outbox]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxLimits {
    /// Most events kept.
    pub max_events: u64,
    /// Most payload bytes kept.
    pub max_bytes: u64,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        Self {
            max_events: 100_000,
            max_bytes: 64 << 20,
        }
    }
}

impl OutboxLimits {
    /// Refuse zero bounds.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.max_events == 0 || self.max_bytes == 0 {
            return Err("outbox.max_events and outbox.max_bytes must be > 0".into());
        }
        Ok(())
    }
}

impl Store {
    /// Queue an event durably; returns its sequence number.
    pub fn outbox_append(&self, payload: &[u8]) -> Result<u64> {
        let txn = self.begin_write()?;
        let seq = Self::bump(&txn, meta::NEXT_OUTBOX_SEQ)? + 1;
        let sealed = self.seal_row("outbox", &seq.to_be_bytes(), payload)?;
        txn.open_table(OUTBOX)?.insert(seq, sealed.as_slice())?;
        txn.commit()?;
        Ok(seq)
    }

    /// Oldest `n` events, in order, without removing them. A damaged entry is an
    /// [`super::StoreError::Integrity`] naming its sequence (delete it to move on).
    pub fn outbox_peek_batch(&self, n: usize) -> Result<Vec<OutboxItem>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OUTBOX)?;
        let mut out = Vec::with_capacity(n.min(1024));
        for row in table.iter()?.take(n) {
            let (k, v) = row?;
            let seq = k.value();
            let payload =
                self.open_row("outbox", &seq.to_be_bytes(), || seq.to_string(), v.value())?;
            out.push(OutboxItem { seq, payload });
        }
        Ok(out)
    }

    /// Remove a published event; `false` if it was already gone.
    pub fn outbox_delete(&self, seq: u64) -> Result<bool> {
        let txn = self.begin_write()?;
        let existed = txn.open_table(OUTBOX)?.remove(seq)?.is_some();
        txn.commit()?;
        Ok(existed)
    }

    /// Number of queued events.
    pub fn outbox_len(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(OUTBOX)?.len()?)
    }

    /// Bytes of sealed payloads queued (for back-pressure / disk budgets).
    pub fn outbox_bytes(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        let mut total = 0u64;
        for row in txn.open_table(OUTBOX)?.iter()? {
            total += row?.1.value().len() as u64;
        }
        Ok(total)
    }
}
