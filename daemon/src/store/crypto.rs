//! AES-256-GCM sealing of individual records.
//!
//! Every sealed value is `[format=1][nonce: 12 bytes][ciphertext || 16-byte tag]`. The nonce is
//! fresh from the OS RNG on every write (random 96-bit nonces are safe far beyond the number of
//! writes a door terminal will ever make under one data key). The associated data (AAD) is not
//! stored; it is rebuilt by the reader from *where* the value is found — table name, row key, the
//! data-key id and the schema version — so a value copied to another row or table, or replayed
//! from another store, fails authentication exactly like a flipped bit does.
//!
//! Plaintexts come back in [`Zeroizing`] buffers and keys live in [`SecretKey`], which wipes
//! itself on drop; tag comparison is constant-time inside `aes-gcm`.

use aes_gcm::{
    Aes256Gcm, Nonce,
    aead::{Aead, Generate, KeyInit, Payload},
};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::error::{Result, StoreError};

/// Length of every key (KEK and DEK): AES-256.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const FORMAT: u8 = 1;

/// A 256-bit secret key (KEK or DEK) that is wiped from memory when dropped and never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; KEY_LEN]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// Fresh key from the OS random generator (DEKs, new KEKs).
    pub fn random() -> Result<Self> {
        let bytes =
            <[u8; KEY_LEN]>::try_generate().map_err(|_| StoreError::Crypto("OS RNG failed"))?;
        Ok(Self(bytes))
    }

    /// Wrap raw bytes; the caller's copy should itself be zeroized.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Raw bytes, for writing a key file only.
    pub(crate) fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Public, non-reversible identifier of the key: first 16 hex chars of
    /// SHA-256(domain ‖ key). Lets `keys status` and errors name a key without revealing it.
    pub fn fingerprint(&self, domain: &str) -> String {
        let mut h = Sha256::new();
        h.update(domain.as_bytes());
        h.update([0u8]);
        h.update(self.0);
        hex::encode(&h.finalize()[..8])
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&self.0.into())
    }
}

/// Associated data that binds a sealed value to its location and context.
pub struct Aad<'a> {
    /// Table (or purpose, e.g. `"keyslot"`) the value belongs to.
    pub table: &'a str,
    /// Row key bytes, exactly as stored.
    pub row: &'a [u8],
    /// Id of the key used (DEK id for records, KEK id for key slots).
    pub key_id: &'a str,
    /// Schema version the value was written under.
    pub schema: u32,
}

impl Aad<'_> {
    /// Length-prefixed encoding, so no two distinct contexts share bytes.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.row.len());
        out.extend_from_slice(b"facegate-aad-v1");
        for part in [self.table.as_bytes(), self.row, self.key_id.as_bytes()] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        out.extend_from_slice(&self.schema.to_be_bytes());
        out
    }
}

/// Encrypt `plaintext` under `key` with a fresh nonce, bound to `aad`.
pub fn seal(key: &SecretKey, aad: &Aad<'_>, plaintext: &[u8]) -> Result<Vec<u8>> {
    let nonce = Nonce::<aes_gcm::aead::consts::U12>::try_generate()
        .map_err(|_| StoreError::Crypto("OS RNG failed"))?;
    let aad = aad.encode();
    let ct = key
        .cipher()
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| StoreError::Crypto("encryption failed"))?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
    out.push(FORMAT);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Decrypt a value produced by [`seal`]. Returns `None` on any authentication or format failure
/// (the caller turns that into a [`StoreError::Integrity`] naming table and row).
pub fn open(key: &SecretKey, aad: &Aad<'_>, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != FORMAT {
        return None;
    }
    let nonce = Nonce::<aes_gcm::aead::consts::U12>::try_from(&sealed[1..1 + NONCE_LEN]).ok()?;
    let aad = aad.encode();
    key.cipher()
        .decrypt(
            &nonce,
            Payload {
                msg: &sealed[1 + NONCE_LEN..],
                aad: &aad,
            },
        )
        .ok()
        .map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aad<'a>(table: &'a str, row: &'a [u8]) -> Aad<'a> {
        Aad {
            table,
            row,
            key_id: "k",
            schema: 1,
        }
    }

    #[test]
    fn roundtrip_and_binding() {
        let k = SecretKey::random().unwrap();
        let s1 = seal(&k, &aad("people", b"a"), b"hello").unwrap();
        let s2 = seal(&k, &aad("people", b"a"), b"hello").unwrap();
        assert_ne!(s1, s2, "nonces must differ per write");
        assert_eq!(
            open(&k, &aad("people", b"a"), &s1).unwrap().as_slice(),
            b"hello"
        );
        assert!(open(&k, &aad("people", b"b"), &s1).is_none(), "other row");
        assert!(
            open(&k, &aad("templates", b"a"), &s1).is_none(),
            "other table"
        );
        let other = SecretKey::random().unwrap();
        assert!(
            open(&other, &aad("people", b"a"), &s1).is_none(),
            "other key"
        );
        for i in 0..s1.len() {
            let mut t = s1.clone();
            t[i] ^= 0x01;
            assert!(open(&k, &aad("people", b"a"), &t).is_none(), "flip at {i}");
        }
        assert!(
            open(&k, &aad("people", b"a"), &s1[..s1.len() - 1]).is_none(),
            "truncated"
        );
    }
}
