//! The one error type of the store, keys and matcher layers.
//!
//! Every failure an operator can act on gets its own variant with a message that names the
//! problem (wrong key, tampered record, truncated file, newer schema, bad key-file permissions),
//! so the CLI can print it as-is and the daemon can log it without ever including key material,
//! vectors or personal fields: variants carry only paths, table names, row keys and key ids.

use std::path::PathBuf;

/// Result alias used throughout [`crate::store`] and [`crate::matcher`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Why a store, key or matcher operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store file does not exist; opening never creates one implicitly (`keys init` does).
    #[error("store {path} does not exist (create it with `facegate keys init`)")]
    NotFound {
        /// Path that was looked up.
        path: PathBuf,
    },
    /// `keys init` refuses to reuse a path so an existing store is never clobbered.
    #[error("store {path} already exists; refusing to overwrite it")]
    AlreadyExists {
        /// Existing path.
        path: PathBuf,
    },
    /// Truncated, corrupted or foreign file: reported instead of repaired so nothing is overwritten.
    #[error("store {path} is unreadable (truncated, corrupted or not a facegate store): {detail}")]
    Corrupt {
        /// Store path.
        path: PathBuf,
        /// What was wrong, without any record content.
        detail: String,
    },
    /// The file was written by a newer facegate; opening it could clobber data we do not understand.
    #[error(
        "store schema version {found} is newer than this facegate supports ({supported}); refusing to open it (upgrade facegate)"
    )]
    NewerSchema {
        /// Version recorded in the store.
        found: u32,
        /// Highest version this build can read.
        supported: u32,
    },
    /// The key-encryption key does not unwrap the store's data key.
    #[error(
        "wrong key: key {key_id} does not unlock this store (it is sealed to key id(s) {expected})"
    )]
    WrongKey {
        /// Fingerprint of the key that was presented.
        key_id: String,
        /// Fingerprints the store accepts.
        expected: String,
    },
    /// A sealed value failed authentication: flipped bits, a value moved from another row or table,
    /// or a record written under a different data key. The record is not served.
    #[error(
        "integrity error in table `{table}`, record {row}: authentication failed (tampered, moved or corrupted value)"
    )]
    Integrity {
        /// Table holding the record.
        table: &'static str,
        /// Row key, rendered for humans (ids, never personal fields).
        row: String,
    },
    /// A key file or credential is missing, malformed or too widely readable.
    #[error("key file {path}: {problem}")]
    KeyFile {
        /// Key file path.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// No key source was configured.
    #[error(
        "no key: pass --key-file PATH or run under systemd with LoadCredential[Encrypted]=facegate.key (CREDENTIALS_DIRECTORY)"
    )]
    NoKey,
    /// No store path could be determined.
    #[error(
        "no store path: pass --store PATH or run under systemd with StateDirectory= (STATE_DIRECTORY)"
    )]
    NoPath,
    /// Another process (usually the running daemon) holds the store's exclusive lock.
    #[error("store {path} is in use by another process (is the facegate daemon running?)")]
    Locked {
        /// Store path.
        path: PathBuf,
    },
    /// Caller passed something the store cannot accept (wrong vector length, empty id, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The person id is unknown.
    #[error("person {0} not found")]
    PersonNotFound(String),
    /// The person id is already enrolled.
    #[error("person {0} already exists")]
    PersonExists(String),
    /// A key rotation was interrupted and must be resolved by re-running `keys rotate`.
    #[error("key rotation problem: {0}")]
    Rotation(String),
    /// The audit chain does not verify.
    #[error("audit log broken at entry {seq}: {problem}")]
    AuditBroken {
        /// Sequence number of the first bad entry.
        seq: u64,
        /// What failed.
        problem: String,
    },
    /// The OS random generator or the cipher failed (not an integrity problem).
    #[error("crypto failure: {0}")]
    Crypto(&'static str),
    /// Underlying database failure not covered above.
    #[error("database error: {0}")]
    Db(#[from] redb::Error),
    /// File-system failure around the store or key files.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
}

impl StoreError {
    /// Build an [`StoreError::Io`] with its path; keeps call sites short.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { path, source }
    }

    /// Whether the failure is the caller's fault (bad key, bad input, missing file), so the
    /// CLI can map it to exit code 2.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            StoreError::NotFound { .. }
                | StoreError::AlreadyExists { .. }
                | StoreError::WrongKey { .. }
                | StoreError::KeyFile { .. }
                | StoreError::NoKey
                | StoreError::NoPath
                | StoreError::InvalidInput(_)
                | StoreError::PersonNotFound(_)
                | StoreError::PersonExists(_)
                | StoreError::NewerSchema { .. }
        )
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(redb::Error::from(e))
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
