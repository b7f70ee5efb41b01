//! Key-encryption keys: where they come from, how they are checked, rotated and destroyed.
//!
//! # Sources (never the config file)
//!
//! 1. `--key-file PATH` given explicitly.
//! 2. The systemd credential `$CREDENTIALS_DIRECTORY/facegate.key` (works with
//!    `LoadCredentialEncrypted=` sealed to a TPM or the host key).
//!
//! Both must be regular files owned by the effective user with no group/other permission bits
//! (mode 0600 or 0400); anything else is refused with a message saying what to fix.
//!
//! # Key file format
//!
//! Either exactly 32 raw bytes, or 64 hex characters optionally followed by a newline
//! (`openssl rand -hex 32 > facegate.key`). `keys init --create-key-file` writes the hex form.
//!
//! # Rotation protocol (`keys rotate`)
//!
//! The DEK never changes; rotation re-wraps it under a fresh KEK. The store holds one wrapped
//! copy ("key slot") per accepted KEK id, and each step below is atomic (a redb commit or a
//! `rename(2)` followed by a directory fsync):
//!
//! 1. write the new key to `KEYFILE.new` (0600, fsynced) — store still sealed to the old key only;
//! 2. commit: add the new slot and record `rotation = {old, new}` — store opens with either key;
//! 3. rename `KEYFILE.new` over `KEYFILE` — the key file now holds the new key;
//! 4. commit: drop the old slot, clear `rotation`, audit entry — store opens with the new key only.
//!
//! Whatever step a crash interrupts, the key *in `KEYFILE`* opens the store and the data is
//! untouched. Recovery: opening with the new key finishes step 4 automatically; running
//! `keys rotate` again while the file still holds the old key discards the half-made new slot and
//! starts over. A credential cannot be rewritten by facegate, so rotation requires a key file.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use redb::ReadableTableMetadata;
use serde::Serialize;
use zeroize::Zeroizing;

use super::crypto::{KEY_LEN, SecretKey};
use super::error::{Result, StoreError};
use super::schema::{self, KEYSLOTS, META, meta};
use super::{AuditAction, AuditEvent, PendingRotation, Store, wrap_dek};

/// Name of the systemd credential holding the KEK.
pub const CREDENTIAL_NAME: &str = "facegate.key";
const KEK_DOMAIN: &str = "facegate-kek";
const MAX_KEY_FILE: u64 = 1024;

/// Effective uid of this process: key files must belong to it.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions, cannot fail and touches no memory we own.
    unsafe { libc::geteuid() }
}

/// Where a KEK was loaded from; decides whether it can be rotated in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KekSource {
    /// A key file on disk (rotatable).
    KeyFile(PathBuf),
    /// A systemd credential (read-only to facegate).
    Credential(PathBuf),
    /// Built in memory (tests, benchmarks).
    Memory,
}

/// A key-encryption key with its public id. The secret is wiped on drop and never printed.
#[derive(Debug)]
pub struct Kek {
    key: SecretKey,
    id: String,
    source: KekSource,
}

impl Kek {
    /// Find the KEK the way every store command does: explicit key file, else systemd credential.
    pub fn resolve(key_file: Option<&Path>) -> Result<Kek> {
        if let Some(p) = key_file {
            return Self::from_key_file(p);
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let p = Path::new(&dir).join(CREDENTIAL_NAME);
            let key = read_key_file_as(&p, true)?;
            return Ok(Self::from_secret(key, KekSource::Credential(p)));
        }
        Err(StoreError::NoKey)
    }

    /// Load a key file, enforcing ownership and 0600/0400 permissions.
    pub fn from_key_file(path: &Path) -> Result<Kek> {
        Ok(Self::from_secret(
            read_key_file(path)?,
            KekSource::KeyFile(path.into()),
        ))
    }

    /// Wrap an in-memory key (tests, benchmarks, or a caller with its own key source).
    pub fn from_secret(key: SecretKey, source: KekSource) -> Kek {
        let id = key.fingerprint(KEK_DOMAIN);
        Kek { key, id, source }
    }

    /// Create a new random key file (refuses to overwrite) and return it as a KEK.
    pub fn generate_key_file(path: &Path) -> Result<Kek> {
        let key = SecretKey::random()?;
        write_key_file(path, &key, false)?;
        Ok(Self::from_secret(key, KekSource::KeyFile(path.into())))
    }

    /// Public fingerprint of the key (safe to print and log).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where the key came from.
    pub fn source(&self) -> &KekSource {
        &self.source
    }

    pub(crate) fn secret(&self) -> &SecretKey {
        &self.key
    }
}

fn key_err(path: &Path, problem: impl Into<String>) -> StoreError {
    StoreError::KeyFile {
        path: path.into(),
        problem: problem.into(),
    }
}

/// Whether `path` lies in systemd's credentials directory for this service (`$CREDENTIALS_DIRECTORY`).
///
/// systemd makes that directory private to the service (its own mount, 0500/0700 with the files
/// 0400) and, from systemd 254 on kernels with idmapped/ACL support, delivers the files owned by
/// root with an ACL granting the service user read access (`ls` shows 0440). Ownership and mode
/// checks meant for key files an operator placed by hand would wrongly refuse them.
pub fn is_systemd_credential(path: &Path) -> bool {
    std::env::var_os("CREDENTIALS_DIRECTORY").is_some_and(|d| {
        let d = Path::new(&d);
        path.parent().is_some_and(|p| p == d)
    })
}

/// Read and validate a key file an operator placed (owner and mode are checked).
fn read_key_file(path: &Path) -> Result<SecretKey> {
    read_key_file_as(path, is_systemd_credential(path))
}

/// Read and validate a key file or credential; `credential`: delivered by systemd into the
/// service's private credentials directory (see [`is_systemd_credential`]).
fn read_key_file_as(path: &Path, credential: bool) -> Result<SecretKey> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| key_err(path, format!("cannot open: {e}")))?;
    let md = file
        .metadata()
        .map_err(|e| key_err(path, format!("cannot stat: {e}")))?;
    if !md.is_file() {
        return Err(key_err(path, "not a regular file"));
    }
    let euid = effective_uid();
    if !credential && md.uid() != euid {
        return Err(key_err(
            path,
            format!(
                "owned by uid {} but facegate runs as uid {euid}; chown it to the service user",
                md.uid()
            ),
        ));
    }
    let mode = md.mode() & 0o777;
    if !credential && mode & 0o077 != 0 {
        return Err(key_err(
            path,
            format!("mode {mode:04o} lets other users read it; run `chmod 600` on it"),
        ));
    }
    if md.len() > MAX_KEY_FILE {
        return Err(key_err(path, "too large to be a key file"));
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(128));
    file.read_to_end(&mut buf)
        .map_err(|e| key_err(path, format!("cannot read: {e}")))?;
    parse_key(&buf).ok_or_else(|| {
        key_err(
            path,
            "malformed: expected 32 raw bytes or 64 hex characters (optionally newline-terminated)",
        )
    })
}

/// Parse the two documented key-file encodings.
fn parse_key(bytes: &[u8]) -> Option<SecretKey> {
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    if bytes.len() == KEY_LEN {
        out.copy_from_slice(bytes);
    } else {
        let text = bytes.trim_ascii();
        if text.len() != 2 * KEY_LEN {
            return None;
        }
        hex::decode_to_slice(text, out.as_mut_slice()).ok()?;
    }
    Some(SecretKey::from_bytes(*out))
}

/// Write `key` as hex to `path` with mode 0600 and fsync file and directory.
fn write_key_file(path: &Path, key: &SecretKey, replace_stale: bool) -> Result<()> {
    if replace_stale {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::Io {
                    path: path.into(),
                    source: e,
                });
            }
        }
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                key_err(path, "already exists; refusing to overwrite a key")
            }
            _ => StoreError::Io {
                path: path.into(),
                source: e,
            },
        })?;
    let mut text = Zeroizing::new(hex::encode(key.expose()));
    text.push('\n');
    f.write_all(text.as_bytes()).map_err(StoreError::io(path))?;
    f.sync_all().map_err(StoreError::io(path))?;
    sync_parent(path)
}

/// fsync the directory containing `path`, making a create/rename/unlink durable.
fn sync_parent(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io(dir))
}

/// Path of the temporary new key during rotation.
fn temp_key_path(key_file: &Path) -> PathBuf {
    let mut s = OsString::from(key_file.as_os_str());
    s.push(".new");
    PathBuf::from(s)
}

/// Points between the atomic steps of a rotation, reported to the test hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationStep {
    /// Old key loaded, store opened.
    Opened,
    /// A previously interrupted rotation was rolled back.
    ResolvedStale,
    /// `KEYFILE.new` written and synced.
    WroteNewKeyFile,
    /// New slot and rotation record committed.
    CommittedBothSlots,
    /// `KEYFILE.new` renamed over `KEYFILE`.
    SwappedKeyFile,
    /// Old slot removed; rotation complete.
    Finished,
}

/// Outcome of a rotation (ids only).
#[derive(Debug, Clone, Serialize)]
pub struct RotationReport {
    /// Id of the retired key.
    pub old_key_id: String,
    /// Id of the key now in the key file.
    pub new_key_id: String,
}

impl Store {
    /// Rotate the KEK held in `key_file` (see the module docs for the crash-safety argument).
    pub fn rotate_key_file(
        store_path: &Path,
        key_file: &Path,
        actor: &str,
    ) -> Result<RotationReport> {
        Self::rotate_key_file_with_hook(store_path, key_file, actor, &mut |_| {})
    }

    /// [`Store::rotate_key_file`] with a callback after every atomic step, so tests can crash
    /// the process at each point.
    #[doc(hidden)]
    pub fn rotate_key_file_with_hook(
        store_path: &Path,
        key_file: &Path,
        actor: &str,
        hook: &mut dyn FnMut(RotationStep),
    ) -> Result<RotationReport> {
        let old = Kek::from_key_file(key_file)?;
        let store = Store::open(store_path, &old)?;
        hook(RotationStep::Opened);
        let tmp = temp_key_path(key_file);
        if let Some(rot) = store.pending_rotation()? {
            if rot.old != old.id() {
                return Err(StoreError::Rotation(format!(
                    "interrupted rotation {} -> {} does not involve key {}",
                    rot.old,
                    rot.new,
                    old.id()
                )));
            }
            let txn = store.begin_write()?;
            txn.open_table(KEYSLOTS)?.remove(rot.new.as_str())?;
            txn.open_table(META)?.remove(meta::ROTATION)?;
            txn.commit()?;
            hook(RotationStep::ResolvedStale);
        }
        let new = Kek::from_secret(SecretKey::random()?, KekSource::KeyFile(key_file.into()));
        write_key_file(&tmp, new.secret(), true)?;
        hook(RotationStep::WroteNewKeyFile);

        let rot = PendingRotation {
            old: old.id().into(),
            new: new.id().into(),
        };
        let txn = store.begin_write()?;
        txn.open_table(KEYSLOTS)?
            .insert(new.id(), wrap_dek(&new, &store.dek)?.as_slice())?;
        let rot_json = serde_json::to_vec(&rot).map_err(|_| StoreError::Crypto("serialize"))?;
        txn.open_table(META)?
            .insert(meta::ROTATION, rot_json.as_slice())?;
        txn.commit()?;
        hook(RotationStep::CommittedBothSlots);

        std::fs::rename(&tmp, key_file).map_err(StoreError::io(key_file))?;
        sync_parent(key_file)?;
        hook(RotationStep::SwappedKeyFile);

        store.finish_rotation(&rot, actor, "rotated")?;
        hook(RotationStep::Finished);
        Ok(RotationReport {
            old_key_id: rot.old,
            new_key_id: rot.new,
        })
    }

    /// Rotation record, if a rotation is between steps 2 and 4.
    pub(crate) fn pending_rotation(&self) -> Result<Option<PendingRotation>> {
        use redb::ReadableDatabase;
        let txn = self.db.begin_read()?;
        let m = txn.open_table(META)?;
        let v = m.get(meta::ROTATION)?;
        Ok(v.and_then(|v| serde_json::from_slice(v.value()).ok()))
    }

    /// Step 4: drop the old slot and the rotation record, audited.
    pub(crate) fn finish_rotation(
        &self,
        rot: &PendingRotation,
        actor: &str,
        how: &str,
    ) -> Result<()> {
        let txn = self.begin_write()?;
        txn.open_table(KEYSLOTS)?.remove(rot.old.as_str())?;
        txn.open_table(META)?.remove(meta::ROTATION)?;
        let detail = format!("{how}: {} -> {}", rot.old, rot.new);
        self.audit_in(
            &txn,
            &AuditEvent::ok(actor, AuditAction::KeyRotation, None, Some(detail)),
        )?;
        txn.commit()?;
        Ok(())
    }
}

/// What `erase --all` destroyed.
#[derive(Debug, Clone, Serialize)]
pub struct EraseReport {
    /// Key slots (wrapped DEKs) deleted in the first commit.
    pub keyslots_destroyed: usize,
    /// The store file was overwritten and unlinked.
    pub store_removed: bool,
    /// The key file was overwritten and unlinked.
    pub key_file_destroyed: bool,
}

const REDB_MAGIC: &[u8] = b"redb";

/// Crypto-erase: (1) commit the deletion of every wrapped DEK, which makes all sealed data
/// unreadable; (2) delete all tables; (3) overwrite the file with zeros (stale copy-on-write
/// pages may still hold ciphertext or old key slots) and unlink it; (4) likewise destroy the key
/// file if given. Needs no key — losing the key must not prevent erasure — but refuses a file
/// that is not a redb database, so a mistyped path cannot wipe something else.
pub fn erase_all(store_path: &Path, key_file: Option<&Path>) -> Result<EraseReport> {
    let mut report = EraseReport {
        keyslots_destroyed: 0,
        store_removed: false,
        key_file_destroyed: false,
    };
    if store_path.exists() {
        let mut head = [0u8; 4];
        File::open(store_path)
            .and_then(|mut f| f.read_exact(&mut head))
            .map_err(|_| StoreError::Corrupt {
                path: store_path.into(),
                detail: "not a redb file; refusing to erase it".into(),
            })?;
        if head != REDB_MAGIC {
            return Err(StoreError::Corrupt {
                path: store_path.into(),
                detail: "not a redb file; refusing to erase it".into(),
            });
        }
        match super::guarded(store_path, || super::builder().open(store_path)) {
            Ok(mut db) => {
                let mut txn = db.begin_write()?;
                txn.set_quick_repair(true);
                {
                    let mut slots = txn.open_table(KEYSLOTS)?;
                    report.keyslots_destroyed = slots.len()? as usize;
                    slots.retain(|_, _| false)?;
                    let mut m = txn.open_table(META)?;
                    m.remove(meta::DEK_ID)?;
                    m.remove(meta::AUDIT_HEAD)?;
                }
                txn.commit()?;
                let mut txn = db.begin_write()?;
                txn.set_quick_repair(true);
                txn.delete_table(schema::PEOPLE)?;
                txn.delete_table(schema::TEMPLATES)?;
                txn.delete_table(schema::OUTBOX)?;
                txn.delete_table(schema::AUDIT)?;
                txn.commit()?;
                if let Err(e) = db.compact() {
                    tracing::warn!("erase: compaction failed ({e}); continuing with overwrite");
                }
                drop(db);
            }
            Err(e @ StoreError::Locked { .. }) => return Err(e),
            Err(e) => tracing::warn!("erase: store unreadable ({e}); overwriting it whole"),
        }
        shred(store_path)?;
        report.store_removed = true;
    }
    if let Some(k) = key_file.filter(|k| k.exists()) {
        shred(k)?;
        report.key_file_destroyed = true;
    }
    Ok(report)
}

/// Overwrite a file with zeros, fsync, unlink, fsync the directory.
fn shred(path: &Path) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(StoreError::io(path))?;
    let len = f.metadata().map_err(StoreError::io(path))?.len();
    let zeros = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n]).map_err(StoreError::io(path))?;
        left -= n as u64;
    }
    f.sync_all().map_err(StoreError::io(path))?;
    drop(f);
    std::fs::remove_file(path).map_err(StoreError::io(path))?;
    sync_parent(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn credentials_may_be_group_readable_hand_placed_key_files_may_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("facegate.key");
        std::fs::write(&p, "11".repeat(32)).unwrap();
        // What systemd >= 254 delivers: 0440 (root-owned with an ACL on a real system).
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o440)).unwrap();
        let e = read_key_file_as(&p, false).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        assert!(read_key_file_as(&p, true).is_ok());
        // Outside $CREDENTIALS_DIRECTORY a path is never taken for a credential.
        assert!(!is_systemd_credential(Path::new(
            "/etc/facegate/facegate.key"
        )));
    }
}
