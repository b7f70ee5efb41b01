//! Table layout, schema version and the migration path.
//!
//! One redb file holds everything. Row keys are plaintext (person ids, sequence numbers); every
//! value that describes a person — personal fields, templates, queued events — is sealed (see
//! [`super::crypto`]) with associated data naming the table, the row key, the data-key id and the
//! schema version. The meta table holds only non-personal bookkeeping, readable before unlock so
//! that a newer schema or a wrong key is refused without writing anything.
//!
//! Bumping [`SCHEMA_VERSION`] requires appending one function to [`MIGRATIONS`]; it runs inside
//! the same write transaction that records the new version, so a crash mid-migration leaves the
//! old version intact. A store whose version is *newer* than this build is refused, never touched.

use redb::{TableDefinition, WriteTransaction};

use super::crypto::SecretKey;
use super::error::{Result, StoreError};

/// Version of the on-disk layout written by this build.
pub const SCHEMA_VERSION: u32 = 1;

/// Non-personal bookkeeping: versions, key ids, counters, the sealed audit head.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Wrapped data key, one slot per accepted key-encryption key id (two only mid-rotation).
pub const KEYSLOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("keyslots");
/// Person id → sealed personal fields (label, external id, dates).
pub const PEOPLE: TableDefinition<&str, &[u8]> = TableDefinition::new("people");
/// (person id, template seq) → sealed template (vector, kind, quality, model).
pub const TEMPLATES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("templates");
/// Event sequence → sealed event bytes awaiting publication; key 0 holds the overflow summary.
pub const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// Audit sequence → JSON entry (hash-chained, no personal fields or secrets).
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// Meta keys (values are big-endian integers or UTF-8 unless noted).
pub mod meta {
    /// u32: layout version.
    pub const SCHEMA_VERSION: &str = "schema_version";
    /// UTF-8: fingerprint of the data key; part of every record's AAD.
    pub const DEK_ID: &str = "dek_id";
    /// UTF-8: last applied enrolment bundle version.
    pub const BUNDLE_VERSION: &str = "bundle_version";
    /// JSON `{old,new}` key ids while a rotation is in flight.
    pub const ROTATION: &str = "rotation";
    /// u64: next template sequence number (monotonic, orders adaptive templates by age).
    pub const NEXT_TEMPLATE_SEQ: &str = "next_template_seq";
    /// u64: next outbox sequence number (never reused).
    pub const NEXT_OUTBOX_SEQ: &str = "next_outbox_seq";
    /// u64: sealed bytes of queued outbox events (summary excluded); absent in older stores
    /// until their first append.
    pub const OUTBOX_BYTES: &str = "outbox_bytes";
    /// u64: revision of the last write of the outbox overflow summary (never reused).
    pub const OUTBOX_SUMMARY_REV: &str = "outbox_summary_rev";
    /// u64: events counted by the overflow summary waiting in the outbox.
    pub const OUTBOX_SUMMARY_PENDING: &str = "outbox_summary_pending";
    /// u64: events ever rolled into overflow summaries.
    pub const OUTBOX_ROLLED_TOTAL: &str = "outbox_rolled_total";
    /// u64: bumped on every change to people/templates, so matchers know when to rebuild.
    pub const GENERATION: &str = "generation";
    /// Sealed: `seq ‖ hash` of the newest audit entry, detects truncation or rewrite of the log.
    pub const AUDIT_HEAD: &str = "audit_head";
}

/// One upgrade step: called with the open write transaction, the data key and its id.
pub type Migration = fn(&WriteTransaction, &SecretKey, &str) -> Result<()>;

/// `MIGRATIONS[i]` upgrades version `i + 1` to `i + 2`. Empty while only version 1 exists.
pub const MIGRATIONS: &[Migration] = &[];

const _: () = assert!(MIGRATIONS.len() as u32 == SCHEMA_VERSION - 1);

/// Refuse versions we cannot read, before anything is written.
pub fn check_version(found: u32) -> Result<()> {
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Bring an older store up to [`SCHEMA_VERSION`] inside `txn` (the caller commits).
pub fn migrate(txn: &WriteTransaction, found: u32, dek: &SecretKey, dek_id: &str) -> Result<()> {
    for v in found..SCHEMA_VERSION {
        MIGRATIONS[(v - 1) as usize](txn, dek, dek_id)?;
    }
    if found < SCHEMA_VERSION {
        txn.open_table(META)?.insert(
            meta::SCHEMA_VERSION,
            SCHEMA_VERSION.to_be_bytes().as_slice(),
        )?;
    }
    Ok(())
}

/// Decode a big-endian u64 counter (missing → 0).
pub fn be_u64(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}
