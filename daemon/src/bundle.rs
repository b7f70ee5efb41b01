//! Signed template bundles: how fleet operators push people and templates to terminals.
//!
//! A bundle is produced by `facegate bundle create` on an operator machine, carried by MQTT
//! (`facegate/v1/{site}/{device|all}/bundles`) or copied by a technician, and applied with
//! [`apply_bundle`]. Only holders of a fleet signing key can make one, a terminal only accepts
//! bundles for its own site and device, never an older one than it has, and the broker never
//! sees personal data: everything about a person is sealed to the site key.
//!
//! # Wire format (version 1)
//!
//! ```text
//! offset      size  field
//! 0           8     magic "FGBUNDL1"
//! 8           4     H = header length, u32 big-endian
//! 12          H     header: UTF-8 JSON object, see BundleHeader (critical: unknown fields rejected)
//! 12+H        4     B = body length, u32 big-endian
//! 16+H        B     body: UTF-8 JSON object {"ops": [...]} (critical: unknown fields/ops rejected)
//! 16+H+B      64    Ed25519 signature
//! ```
//!
//! **Canonical bytes.** The signature covers `"facegate-bundle-v1\0"` followed by bytes
//! `[0, 16+H+B)` of the file exactly as transmitted — magic, both length prefixes, header and
//! body. The verifier checks the signature over the raw bytes *before* parsing any JSON and never
//! re-serialises, so JSON canonicalisation cannot cause ambiguity: the length prefixes make the
//! split between header and body unambiguous and the domain string keeps these signatures apart
//! from any other use of a fleet key. Nothing may follow the signature.
//!
//! **Operations** (`"op"` tag): `upsert_person {id, sealed}` replaces a person and all their
//! templates; `remove_person {id}`; `set_thresholds {thresholds}`. `sealed` is hex of
//! `[1][nonce 12][AES-256-GCM ciphertext+tag]` (the store's record format) under the site key with
//! associated data binding it to `("bundle-person", site ‖ 0 ‖ person id, site key id, 1)`; the
//! plaintext is JSON `{label, external_id, templates: [{model_id, model_version, vector}]}`.
//!
//! # Checks, in order (each a distinct [`BundleError`])
//!
//! size limit → framing (magic, truncation, trailing bytes) → signature by one of the configured
//! fleet keys (several allowed, for rollover) → header schema → key id consistency → site and
//! device target → validity window → version strictly newer than the applied one → site key id →
//! body schema → decryption and validation of every person. Nothing is written unless every
//! check passes; then [`crate::store::Store::apply_bundle_ops`] applies it in one transaction.
//!
//! Key material: the signing key file is the 32-byte Ed25519 seed in the store's key-file format
//! (64 hex chars, mode 0600); the fleet public-keys file has one `ed25519:<64 hex>` per line; the
//! site key file is a 32-byte AES key in the same key-file format. Keys are zeroized on drop and
//! never printed — only their ids (truncated SHA-256 fingerprints).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::store::bundle_apply::{BundleApplyReport, BundleOp};
use crate::store::crypto::{self, Aad};
use crate::store::{
    EMBEDDING_DIM, Kek, NewPerson, NewTemplate, SecretKey, Store, StoreError, TemplateKind,
};

/// File magic: identifies a facegate bundle and its framing version.
pub const MAGIC: &[u8; 8] = b"FGBUNDL1";
/// Header `format` this build understands.
pub const FORMAT: u32 = 1;
/// Domain separation prefix of the signed message.
pub const SIGNING_DOMAIN: &[u8] = b"facegate-bundle-v1\0";
/// Default size limit (bytes) when the configuration sets none: ~2,000 people × 3 templates.
pub const DEFAULT_MAX_BYTES: usize = 16 << 20;
/// Target value addressing every terminal of the site.
pub const TARGET_ALL: &str = "all";
/// Ed25519 signature length in bytes.
pub const SIG_LEN: usize = 64;
const FIXED_LEN: usize = 8 + 4 + 4 + SIG_LEN;
const SEAL_TABLE: &str = "bundle-person";

/// Why a bundle was refused. Messages name the problem (and ids), never personal data or keys.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Larger than the configured limit: refused before any parsing.
    #[error("bundle is {size} bytes, over the {limit}-byte limit")]
    Oversized {
        /// Bytes received.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// Does not start with the bundle magic: random bytes or another file type.
    #[error("not a facegate bundle (bad magic)")]
    BadMagic,
    /// Framing promises more bytes than present.
    #[error("bundle is truncated: {0}")]
    Truncated(&'static str),
    /// Framing or JSON is malformed (not an unknown field).
    #[error("malformed bundle {section}: {detail}")]
    Malformed {
        /// `frame`, `header`, `body` or `person <id>`.
        section: String,
        /// What is wrong (never personal content).
        detail: String,
    },
    /// A critical section has a field or operation this build does not understand.
    #[error(
        "bundle {section} has an unknown field or operation ({detail}); refusing a bundle this version cannot fully understand"
    )]
    UnknownField {
        /// Section.
        section: String,
        /// Parser message naming the field.
        detail: String,
    },
    /// Header `format` is not [`FORMAT`].
    #[error("bundle format {0} is not supported (this build reads format {FORMAT})")]
    UnsupportedFormat(u32),
    /// No configured fleet key verifies the signature (forged, corrupted, or unknown signer).
    #[error("bad signature: no configured fleet key ({known}) verifies this bundle")]
    BadSignature {
        /// Ids of the configured keys.
        known: String,
    },
    /// The header names a different key than the one whose signature verified.
    #[error("header key id {header} does not match the verifying key {actual}")]
    KeyIdMismatch {
        /// Key id in the header.
        header: String,
        /// Key that verified.
        actual: String,
    },
    /// Addressed to another site or device.
    #[error("bundle is for {found}, this terminal is {expected}")]
    WrongTarget {
        /// This terminal's `site/device`.
        expected: String,
        /// The bundle's `site/target`.
        found: String,
    },
    /// Past its expiry.
    #[error("bundle expired at {expires_at} (now {now})")]
    Expired {
        /// Expiry (Unix s).
        expires_at: u64,
        /// Terminal clock.
        now: u64,
    },
    /// Created in the future beyond the allowed clock skew.
    #[error("bundle created at {created_at} is in the future (now {now}); check the clocks")]
    NotYetValid {
        /// Creation (Unix s).
        created_at: u64,
        /// Terminal clock.
        now: u64,
    },
    /// Version not newer than the applied one: a replay or a rollback.
    #[error(
        "bundle version {version} is not newer than the applied version {applied} (replay or rollback)"
    )]
    Replay {
        /// Offered version.
        version: u64,
        /// Applied version.
        applied: u64,
    },
    /// Sealed to a different site key than this terminal holds.
    #[error("bundle is sealed to site key {found}, this terminal holds {expected}")]
    SiteKeyMismatch {
        /// Terminal's site key id.
        expected: String,
        /// Bundle's site key id.
        found: String,
    },
    /// A sealed person failed authentication.
    #[error(
        "sealed record of person {0} does not decrypt with the site key (tampered or wrong key)"
    )]
    Decrypt(String),
    /// A semantically invalid operation (duplicate id, bad vector, ...).
    #[error("invalid bundle operation: {0}")]
    InvalidOp(String),
    /// Key file or public-key list problem.
    #[error("key problem: {0}")]
    Key(String),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BundleError {
    /// Stable machine-readable code for result messages (`bad_signature`, `replay`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            BundleError::Oversized { .. } => "oversized",
            BundleError::BadMagic => "bad_magic",
            BundleError::Truncated(_) => "truncated",
            BundleError::Malformed { .. } => "malformed",
            BundleError::UnknownField { .. } => "unknown_field",
            BundleError::UnsupportedFormat(_) => "unsupported_format",
            BundleError::BadSignature { .. } => "bad_signature",
            BundleError::KeyIdMismatch { .. } => "key_id_mismatch",
            BundleError::WrongTarget { .. } => "wrong_target",
            BundleError::Expired { .. } => "expired",
            BundleError::NotYetValid { .. } => "not_yet_valid",
            BundleError::Replay { .. } => "replay",
            BundleError::SiteKeyMismatch { .. } => "site_key_mismatch",
            BundleError::Decrypt(_) => "decrypt",
            BundleError::InvalidOp(_) => "invalid_op",
            BundleError::Key(_) => "key",
            BundleError::Store(_) => "store",
        }
    }

    /// Whether the bundle (not the terminal) is at fault: CLI exit code 2.
    pub fn is_bad_input(&self) -> bool {
        match self {
            BundleError::Store(e) => e.is_bad_input(),
            _ => true,
        }
    }
}

/// Result alias of this module.
pub type Result<T, E = BundleError> = std::result::Result<T, E>;

/// Signed header: who may apply the bundle, when, and which keys are involved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleHeader {
    /// Must equal [`FORMAT`].
    pub format: u32,
    /// Site id the bundle is for.
    pub site: String,
    /// Device id, or [`TARGET_ALL`].
    pub target: String,
    /// Monotonic version; a terminal applies only versions above the one it has.
    pub version: u64,
    /// Unix seconds of creation.
    pub created_at: u64,
    /// Unix seconds after which the bundle is refused.
    pub expires_at: u64,
    /// Id of the fleet signing key ([`key_id`]).
    pub key_id: String,
    /// Id of the site key the people are sealed to ([`SiteKey::id`]).
    pub site_key_id: String,
}

/// Matcher/liveness thresholds a bundle may set (absent = unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Cosine similarity needed to accept a match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_threshold: Option<f32>,
    /// Required gap between best and second-best person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<f32>,
    /// Liveness score needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<f32>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireBody {
    ops: Vec<WireOp>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum WireOp {
    UpsertPerson { id: String, sealed: String },
    RemovePerson { id: String },
    SetThresholds { thresholds: Thresholds },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedPerson {
    label: String,
    #[serde(default)]
    external_id: Option<String>,
    templates: Vec<SealedTemplate>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedTemplate {
    model_id: String,
    model_version: String,
    vector: Vec<f32>,
}

/// A decoded, authenticated operation (vectors in zeroizing buffers).
#[derive(Debug, Clone)]
pub enum Operation {
    /// Create or replace a person with exactly these templates.
    Upsert {
        /// Person fields.
        person: NewPerson,
        /// Complete template set.
        templates: Vec<NewTemplate>,
    },
    /// Remove a person (no error if absent).
    Remove {
        /// Person id.
        id: String,
    },
    /// Set thresholds.
    SetThresholds(Thresholds),
}

/// Site key: AES-256 key shared by the fleet and a site's terminals, sealing people in bundles.
#[derive(Clone)]
pub struct SiteKey {
    key: SecretKey,
    id: String,
}

impl std::fmt::Debug for SiteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SiteKey({})", self.id)
    }
}

impl SiteKey {
    /// Wrap a key (tests, or a caller with its own key source).
    pub fn from_secret(key: SecretKey) -> Self {
        let id = key.fingerprint("facegate-site-key");
        SiteKey { key, id }
    }

    /// Load a site key file (64 hex chars or 32 bytes, owned by us, mode 0600/0400).
    pub fn from_file(path: &Path) -> Result<Self> {
        let kek = Kek::from_key_file(path)?;
        Ok(Self::from_secret(kek.secret().clone()))
    }

    /// Create a new random site key file (refuses to overwrite).
    pub fn generate_file(path: &Path) -> Result<Self> {
        let kek = Kek::generate_key_file(path)?;
        Ok(Self::from_secret(kek.secret().clone()))
    }

    /// Public fingerprint (safe to print).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Public fingerprint of a fleet verifying key: 16 hex chars of SHA-256(domain ‖ key).
pub fn key_id(key: &VerifyingKey) -> String {
    let mut h = Sha256::new();
    h.update(b"facegate-fleet-key\0");
    h.update(key.as_bytes());
    hex::encode(&h.finalize()[..8])
}

/// Render a public key for the fleet keys file: `ed25519:<hex>`.
pub fn format_public_key(key: &VerifyingKey) -> String {
    format!("ed25519:{}", hex::encode(key.as_bytes()))
}

/// Load a fleet signing key (the Ed25519 seed in key-file format).
pub fn load_signing_key(path: &Path) -> Result<SigningKey> {
    let kek = Kek::from_key_file(path)?;
    Ok(SigningKey::from_bytes(kek.secret().expose()))
}

/// Create a fleet signing key file (0600, refuses to overwrite) and `PATH.pub` beside it.
/// Returns the public key.
pub fn generate_signing_key(path: &Path) -> Result<VerifyingKey> {
    let kek = Kek::generate_key_file(path)?;
    let sk = SigningKey::from_bytes(kek.secret().expose());
    let vk = sk.verifying_key();
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    std::fs::write(&pub_path, format!("{}\n", format_public_key(&vk))).map_err(|e| {
        BundleError::Key(format!("writing {}: {e}", Path::new(&pub_path).display()))
    })?;
    Ok(vk)
}

/// The fleet public keys a terminal trusts (more than one during key rollover).
#[derive(Debug, Clone, Default)]
pub struct FleetKeys {
    keys: Vec<(String, VerifyingKey)>,
}

impl FleetKeys {
    /// Build from keys in memory.
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        FleetKeys {
            keys: keys.into_iter().map(|k| (key_id(&k), k)).collect(),
        }
    }

    /// Parse one `ed25519:<64 hex>` (or bare hex) per line; `#` starts a comment.
    pub fn parse(text: &str) -> Result<Self> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let hexpart = line.strip_prefix("ed25519:").unwrap_or(line);
            let mut raw = [0u8; 32];
            hex::decode_to_slice(hexpart, &mut raw)
                .ok()
                .and_then(|_| VerifyingKey::from_bytes(&raw).ok())
                .map(|k| keys.push(k))
                .ok_or_else(|| {
                    BundleError::Key(format!(
                        "fleet keys line {}: expected ed25519:<64 hex chars>",
                        n + 1
                    ))
                })?;
        }
        if keys.is_empty() {
            return Err(BundleError::Key("no fleet public keys configured".into()));
        }
        Ok(Self::new(keys))
    }

    /// Read and parse a fleet keys file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BundleError::Key(format!("reading {}: {e}", path.display())))?;
        Self::parse(&text)
    }

    /// Ids of the trusted keys.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// Id of the first trusted key whose strict Ed25519 verification of `signature` over
    /// `message` succeeds (one place for bundles and signed commands, so both accept exactly the
    /// same keys and reject malleable signatures alike).
    pub fn verify(&self, message: &[u8], signature: &[u8; SIG_LEN]) -> Option<&str> {
        let sig = Signature::from_bytes(signature);
        self.keys
            .iter()
            .find(|(_, k)| k.verify_strict(message, &sig).is_ok())
            .map(|(id, _)| id.as_str())
    }
}

/// Who this terminal is and what it accepts; from configuration.
#[derive(Debug, Clone)]
pub struct BundlePolicy {
    /// This terminal's site id.
    pub site: String,
    /// This terminal's device id.
    pub device: String,
    /// Largest bundle accepted, in bytes.
    pub max_bytes: usize,
    /// Tolerated clock difference for `created_at` in the future, seconds.
    pub max_clock_skew_secs: u64,
}

impl BundlePolicy {
    /// Policy with the default limits.
    pub fn new(site: &str, device: &str) -> Self {
        BundlePolicy {
            site: site.into(),
            device: device.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            max_clock_skew_secs: 300,
        }
    }
}

/// The raw pieces of a framed bundle (no checks beyond framing).
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Header JSON bytes.
    pub header: &'a [u8],
    /// Body JSON bytes.
    pub body: &'a [u8],
    /// Bytes covered by the signature (after the domain prefix).
    pub signed: &'a [u8],
    /// Signature bytes.
    pub signature: &'a [u8; SIG_LEN],
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// Split a bundle into its parts; never panics on any input.
pub fn parse_frame(bytes: &[u8]) -> Result<Frame<'_>> {
    let n = bytes.len().min(MAGIC.len());
    if bytes[..n] != MAGIC[..n] {
        return Err(BundleError::BadMagic);
    }
    if bytes.len() < FIXED_LEN {
        return Err(BundleError::Truncated("shorter than the fixed framing"));
    }
    let h = read_u32(bytes, 8).ok_or(BundleError::Truncated("header length"))?;
    let body_len_at = 12usize
        .checked_add(h)
        .ok_or(BundleError::Truncated("header"))?;
    let b = read_u32(bytes, body_len_at).ok_or(BundleError::Truncated("header or body length"))?;
    let body_at = body_len_at + 4;
    let sig_at = body_at
        .checked_add(b)
        .ok_or(BundleError::Truncated("body"))?;
    let end = sig_at
        .checked_add(SIG_LEN)
        .ok_or(BundleError::Truncated("body"))?;
    if bytes.len() < end {
        return Err(BundleError::Truncated(if bytes.len() < sig_at {
            "body"
        } else {
            "signature"
        }));
    }
    if bytes.len() > end {
        return Err(BundleError::Malformed {
            section: "frame".into(),
            detail: format!("{} trailing bytes after the signature", bytes.len() - end),
        });
    }
    let signature = bytes[sig_at..end]
        .try_into()
        .map_err(|_| BundleError::Truncated("signature"))?;
    Ok(Frame {
        header: &bytes[12..12 + h],
        body: &bytes[body_at..sig_at],
        signed: &bytes[..sig_at],
        signature,
    })
}

fn json_err(section: &str, e: &serde_json::Error, quote: bool) -> BundleError {
    let msg = e.to_string();
    let detail = if quote {
        msg.clone()
    } else {
        format!("line {} column {}", e.line(), e.column())
    };
    if msg.contains("unknown field") || msg.contains("unknown variant") {
        BundleError::UnknownField {
            section: section.into(),
            detail,
        }
    } else {
        BundleError::Malformed {
            section: section.into(),
            detail,
        }
    }
}

fn signed_message(signed: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_DOMAIN.len() + signed.len());
    m.extend_from_slice(SIGNING_DOMAIN);
    m.extend_from_slice(signed);
    m
}

/// Frame raw header and body JSON and sign them. Low level: [`build_bundle`] is the normal
/// way; tests and tools use this to produce deliberately odd but validly signed bundles.
pub fn sign_raw(header: &[u8], body: &[u8], signer: &SigningKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIXED_LEN + header.len() + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    let sig: Signature = signer.sign(&signed_message(&out));
    out.extend_from_slice(&sig.to_bytes());
    out
}

fn seal_aad<'a>(row: &'a [u8], site_key: &'a SiteKey) -> Aad<'a> {
    Aad {
        table: SEAL_TABLE,
        row,
        key_id: &site_key.id,
        schema: FORMAT,
    }
}

fn seal_row(site: &str, id: &str) -> Vec<u8> {
    let mut r = Vec::with_capacity(site.len() + id.len() + 1);
    r.extend_from_slice(site.as_bytes());
    r.push(0);
    r.extend_from_slice(id.as_bytes());
    r
}

/// What to put in a new bundle (operator side).
#[derive(Debug, Clone)]
pub struct BundleDraft {
    /// Site id.
    pub site: String,
    /// Device id or [`TARGET_ALL`].
    pub target: String,
    /// Version; must exceed what terminals have applied.
    pub version: u64,
    /// Unix seconds of creation.
    pub created_at: u64,
    /// Unix seconds of expiry.
    pub expires_at: u64,
    /// Operations, applied in order.
    pub ops: Vec<Operation>,
}

/// Seal every person to the site key, sign with the fleet key and frame the bundle.
pub fn build_bundle(
    draft: &BundleDraft,
    signer: &SigningKey,
    site_key: &SiteKey,
) -> Result<Vec<u8>> {
    let header = BundleHeader {
        format: FORMAT,
        site: draft.site.clone(),
        target: draft.target.clone(),
        version: draft.version,
        created_at: draft.created_at,
        expires_at: draft.expires_at,
        key_id: key_id(&signer.verifying_key()),
        site_key_id: site_key.id.clone(),
    };
    let mut ops = Vec::with_capacity(draft.ops.len());
    for op in &draft.ops {
        ops.push(match op {
            Operation::Upsert { person, templates } => {
                let sp = SealedPerson {
                    label: person.label.clone(),
                    external_id: person.external_id.clone(),
                    templates: templates
                        .iter()
                        .map(|t| SealedTemplate {
                            model_id: t.model_id.clone(),
                            model_version: t.model_version.clone(),
                            vector: t.vector.to_vec(),
                        })
                        .collect(),
                };
                let plain =
                    Zeroizing::new(serde_json::to_vec(&sp).map_err(|e| {
                        BundleError::InvalidOp(format!("person {}: {e}", person.id))
                    })?);
                let mut sp = sp;
                for t in &mut sp.templates {
                    zeroize::Zeroize::zeroize(&mut t.vector);
                }
                let row = seal_row(&draft.site, &person.id);
                let sealed = crypto::seal(&site_key.key, &seal_aad(&row, site_key), &plain)?;
                WireOp::UpsertPerson {
                    id: person.id.clone(),
                    sealed: hex::encode(sealed),
                }
            }
            Operation::Remove { id } => WireOp::RemovePerson { id: id.clone() },
            Operation::SetThresholds(t) => WireOp::SetThresholds { thresholds: *t },
        });
    }
    let h = serde_json::to_vec(&header).map_err(|e| BundleError::InvalidOp(e.to_string()))?;
    let b =
        serde_json::to_vec(&WireBody { ops }).map_err(|e| BundleError::InvalidOp(e.to_string()))?;
    Ok(sign_raw(&h, &b, signer))
}

/// A bundle that passed every check, decrypted and ready to apply.
#[derive(Debug)]
pub struct VerifiedBundle {
    /// Its header.
    pub header: BundleHeader,
    /// Its operations, in order.
    pub ops: Vec<Operation>,
}

/// Everything the terminal needs to judge a bundle.
#[derive(Debug, Clone)]
pub struct Verifier {
    /// Trusted fleet keys.
    pub fleet: FleetKeys,
    /// This site's key.
    pub site_key: SiteKey,
    /// Identity and limits.
    pub policy: BundlePolicy,
}

impl Verifier {
    /// Run every check (see the module docs) without touching any store. `applied` is the
    /// version already applied, `now` the terminal clock in Unix seconds.
    pub fn verify(&self, bytes: &[u8], applied: Option<u64>, now: u64) -> Result<VerifiedBundle> {
        if bytes.len() > self.policy.max_bytes {
            return Err(BundleError::Oversized {
                size: bytes.len(),
                limit: self.policy.max_bytes,
            });
        }
        let frame = parse_frame(bytes)?;
        let msg = signed_message(frame.signed);
        let signer = self
            .fleet
            .verify(&msg, frame.signature)
            .map(str::to_string)
            .ok_or_else(|| BundleError::BadSignature {
                known: self.fleet.ids().join(", "),
            })?;
        let header: BundleHeader =
            serde_json::from_slice(frame.header).map_err(|e| json_err("header", &e, true))?;
        if header.format != FORMAT {
            return Err(BundleError::UnsupportedFormat(header.format));
        }
        if header.key_id != signer {
            return Err(BundleError::KeyIdMismatch {
                header: header.key_id,
                actual: signer,
            });
        }
        let p = &self.policy;
        if header.site != p.site || (header.target != TARGET_ALL && header.target != p.device) {
            return Err(BundleError::WrongTarget {
                expected: format!("{}/{}", p.site, p.device),
                found: format!("{}/{}", header.site, header.target),
            });
        }
        if now >= header.expires_at {
            return Err(BundleError::Expired {
                expires_at: header.expires_at,
                now,
            });
        }
        if header.created_at > now.saturating_add(p.max_clock_skew_secs) {
            return Err(BundleError::NotYetValid {
                created_at: header.created_at,
                now,
            });
        }
        if let Some(applied) = applied
            && header.version <= applied
        {
            return Err(BundleError::Replay {
                version: header.version,
                applied,
            });
        }
        if header.site_key_id != self.site_key.id {
            return Err(BundleError::SiteKeyMismatch {
                expected: self.site_key.id.clone(),
                found: header.site_key_id,
            });
        }
        let body: WireBody =
            serde_json::from_slice(frame.body).map_err(|e| json_err("body", &e, true))?;
        let mut seen = BTreeSet::new();
        let mut ops = Vec::with_capacity(body.ops.len());
        for op in body.ops {
            ops.push(match op {
                WireOp::UpsertPerson { id, sealed } => {
                    if !seen.insert(id.clone()) {
                        return Err(BundleError::InvalidOp(format!("person {id} appears twice")));
                    }
                    self.open_person(&header.site, id, &sealed)?
                }
                WireOp::RemovePerson { id } => {
                    if !seen.insert(id.clone()) {
                        return Err(BundleError::InvalidOp(format!("person {id} appears twice")));
                    }
                    Operation::Remove { id }
                }
                WireOp::SetThresholds { thresholds } => {
                    let ok = |v: Option<f32>| {
                        v.is_none_or(|x| x.is_finite() && (-1.0..=1.0).contains(&x))
                    };
                    if !(ok(thresholds.match_threshold)
                        && ok(thresholds.margin)
                        && ok(thresholds.liveness))
                    {
                        return Err(BundleError::InvalidOp(
                            "thresholds must be finite, in [-1, 1]".into(),
                        ));
                    }
                    Operation::SetThresholds(thresholds)
                }
            });
        }
        Ok(VerifiedBundle { header, ops })
    }

    fn open_person(&self, site: &str, id: String, sealed_hex: &str) -> Result<Operation> {
        crate::store::people::validate_id(&id)
            .map_err(|_| BundleError::InvalidOp("invalid person id".into()))?;
        let sealed = hex::decode(sealed_hex).map_err(|_| BundleError::Malformed {
            section: format!("person {id}"),
            detail: "sealed record is not hex".into(),
        })?;
        let row = seal_row(site, &id);
        let plain = crypto::open(&self.site_key.key, &seal_aad(&row, &self.site_key), &sealed)
            .ok_or_else(|| BundleError::Decrypt(id.clone()))?;
        let sp: SealedPerson = serde_json::from_slice(&plain)
            .map_err(|e| json_err(&format!("person {id}"), &e, false))?;
        let SealedPerson {
            label,
            external_id,
            templates,
        } = sp;
        let mut out = Vec::with_capacity(templates.len());
        for t in templates {
            let vector = Zeroizing::new(t.vector);
            if vector.len() != EMBEDDING_DIM || !vector.iter().all(|v| v.is_finite()) {
                return Err(BundleError::InvalidOp(format!(
                    "person {id}: template must have {EMBEDDING_DIM} finite values"
                )));
            }
            out.push(NewTemplate {
                kind: TemplateKind::Anchor,
                vector,
                model_id: t.model_id,
                model_version: t.model_version,
                quality: BTreeMap::new(),
            });
        }
        Ok(Operation::Upsert {
            person: NewPerson {
                id,
                label,
                external_id,
            },
            templates: out,
        })
    }

    /// Verify `bytes` against `store`'s applied version and apply it in one transaction.
    /// A refused bundle writes nothing at all.
    pub fn apply(
        &self,
        store: &Store,
        bytes: &[u8],
        actor: &str,
        now: u64,
    ) -> Result<BundleApplyReport> {
        let verified = self.verify(bytes, store.applied_bundle_version()?, now)?;
        apply_verified(store, &verified, actor)
    }
}

/// Apply an already verified bundle (one transaction; the version is re-checked inside it).
pub fn apply_verified(store: &Store, b: &VerifiedBundle, actor: &str) -> Result<BundleApplyReport> {
    let mut thresholds = Vec::new();
    for op in &b.ops {
        if let Operation::SetThresholds(t) = op {
            thresholds
                .push(serde_json::to_vec(t).map_err(|e| BundleError::InvalidOp(e.to_string()))?);
        }
    }
    let mut th = thresholds.iter();
    let ops: Vec<BundleOp<'_>> = b
        .ops
        .iter()
        .map(|op| match op {
            Operation::Upsert { person, templates } => BundleOp::Upsert { person, templates },
            Operation::Remove { id } => BundleOp::Remove(id),
            Operation::SetThresholds(_) => {
                BundleOp::SetThresholds(th.next().map(Vec::as_slice).unwrap_or(b"{}"))
            }
        })
        .collect();
    let detail = format!("signed by {}, target {}", b.header.key_id, b.header.target);
    Ok(store.apply_bundle_ops(b.header.version, &ops, actor, &detail)?)
}

/// Convenience for callers holding loose parts: see [`Verifier::apply`].
pub fn apply_bundle(
    store: &Store,
    bytes: &[u8],
    verifier: &Verifier,
    actor: &str,
) -> Result<BundleApplyReport> {
    verifier.apply(store, bytes, actor, crate::store::now_unix())
}

/// Operator-facing summary of a bundle: header, counts and ids — never vectors or labels.
#[derive(Debug, Clone, Serialize)]
pub struct BundleSummary {
    /// Total size.
    pub bytes: usize,
    /// Parsed header.
    pub header: BundleHeader,
    /// People created or replaced (ids).
    pub upsert: Vec<String>,
    /// People removed (ids).
    pub remove: Vec<String>,
    /// Thresholds set, if any.
    pub thresholds: Option<Thresholds>,
    /// Id of the trusted key that verified the signature (`None`: not checked or no match).
    pub verified_by: Option<String>,
}

/// Parse a bundle for display. Checks the signature only if `fleet` is given; decrypts nothing.
pub fn inspect(bytes: &[u8], fleet: Option<&FleetKeys>) -> Result<BundleSummary> {
    let frame = parse_frame(bytes)?;
    let header: BundleHeader =
        serde_json::from_slice(frame.header).map_err(|e| json_err("header", &e, true))?;
    let body: WireBody =
        serde_json::from_slice(frame.body).map_err(|e| json_err("body", &e, true))?;
    let verified_by = fleet.and_then(|f| {
        f.verify(&signed_message(frame.signed), frame.signature)
            .map(str::to_string)
    });
    let mut s = BundleSummary {
        bytes: bytes.len(),
        header,
        upsert: Vec::new(),
        remove: Vec::new(),
        thresholds: None,
        verified_by,
    };
    for op in body.ops {
        match op {
            WireOp::UpsertPerson { id, .. } => s.upsert.push(id),
            WireOp::RemovePerson { id } => s.remove.push(id),
            WireOp::SetThresholds { thresholds } => s.thresholds = Some(thresholds),
        }
    }
    Ok(s)
}

/// What a bundle's header *claims* about itself — version and signing key id — read without
/// checking the signature, for the audit line and result message of a refused bundle (so an
/// operator can tell which bundle was refused). Unauthenticated: never base a decision on it.
/// The key id is kept only if it has the shape of a real one (16 hex characters), so a forged
/// header cannot inject text into logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BundleClaims {
    /// Claimed version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Claimed signing key id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// Read [`BundleClaims`] from raw bytes; empty claims when the framing or header does not parse.
pub fn claims(bytes: &[u8]) -> BundleClaims {
    #[derive(Deserialize)]
    struct Loose {
        #[serde(default)]
        version: Option<u64>,
        #[serde(default)]
        key_id: Option<String>,
    }
    let Ok(frame) = parse_frame(bytes) else {
        return BundleClaims::default();
    };
    let Ok(h) = serde_json::from_slice::<Loose>(frame.header) else {
        return BundleClaims::default();
    };
    BundleClaims {
        version: h.version,
        key_id: h
            .key_id
            .filter(|k| k.len() == 16 && k.bytes().all(|b| b.is_ascii_hexdigit())),
    }
}

/// Fuzzing entry point: run the full verifier on arbitrary bytes with fixed keys. Must never
/// panic; returns whether the bytes were accepted (practically never).
pub fn fuzz_verify(bytes: &[u8]) -> bool {
    let signer = SigningKey::from_bytes(&[7u8; 32]);
    let verifier = Verifier {
        fleet: FleetKeys::new([signer.verifying_key()]),
        site_key: SiteKey::from_secret(SecretKey::from_bytes([9u8; 32])),
        policy: BundlePolicy::new("site", "dev"),
    };
    let _ = inspect(bytes, Some(&verifier.fleet));
    verifier.verify(bytes, Some(1), 1_700_000_000).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{KekSource, now_unix};

    struct Fx {
        _dir: tempfile::TempDir,
        store: Store,
        signer: SigningKey,
        other: SigningKey,
        verifier: Verifier,
    }

    fn fx() -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let kek = Kek::from_secret(SecretKey::random().unwrap(), KekSource::Memory);
        let store = Store::create(&dir.path().join("s.redb"), &kek, "t").unwrap();
        let signer = SigningKey::from_bytes(&[1u8; 32]);
        let rollover = SigningKey::from_bytes(&[2u8; 32]);
        let other = SigningKey::from_bytes(&[3u8; 32]);
        let verifier = Verifier {
            fleet: FleetKeys::new([rollover.verifying_key(), signer.verifying_key()]),
            site_key: SiteKey::from_secret(SecretKey::from_bytes([5u8; 32])),
            policy: BundlePolicy::new("hq", "door-1"),
        };
        Fx {
            _dir: dir,
            store,
            signer,
            other,
            verifier,
        }
    }

    fn draft(version: u64) -> BundleDraft {
        let now = now_unix();
        let mut v = vec![0.02f32; EMBEDDING_DIM];
        v[1] = 0.9;
        BundleDraft {
            site: "hq".into(),
            target: TARGET_ALL.into(),
            version,
            created_at: now,
            expires_at: now + 3600,
            ops: vec![
                Operation::Upsert {
                    person: NewPerson {
                        id: "p-1".into(),
                        label: "Ada".into(),
                        external_id: Some("E1".into()),
                    },
                    templates: vec![NewTemplate::anchor(v, "sface", "2021dec")],
                },
                Operation::SetThresholds(Thresholds {
                    match_threshold: Some(0.36),
                    ..Default::default()
                }),
            ],
        }
    }

    #[test]
    fn valid_bundle_applies_and_replay_is_refused() {
        let f = fx();
        let b = build_bundle(&draft(2), &f.signer, &f.verifier.site_key).unwrap();
        let r = apply_bundle(&f.store, &b, &f.verifier, "t").unwrap();
        assert_eq!((r.upserted, r.templates, r.thresholds), (1, 1, true));
        assert_eq!(f.store.get_person("p-1").unwrap().unwrap().label, "Ada");
        let e = apply_bundle(&f.store, &b, &f.verifier, "t").unwrap_err();
        assert!(
            matches!(
                e,
                BundleError::Replay {
                    version: 2,
                    applied: 2
                }
            ),
            "{e}"
        );
        // Rollover: the second configured key is accepted too.
        let b3 = build_bundle(
            &draft(3),
            &SigningKey::from_bytes(&[2u8; 32]),
            &f.verifier.site_key,
        )
        .unwrap();
        apply_bundle(&f.store, &b3, &f.verifier, "t").unwrap();
    }

    #[test]
    fn every_bad_bundle_has_its_own_error() {
        let f = fx();
        let sk = &f.verifier.site_key;
        let good = build_bundle(&draft(5), &f.signer, sk).unwrap();
        let mut d = draft(5);
        let check = |bytes: &[u8], code: &str| {
            let e = f.verifier.verify(bytes, Some(4), now_unix()).unwrap_err();
            assert_eq!(e.code(), code, "{e}");
            assert!(!e.to_string().contains("Ada"));
        };
        check(&build_bundle(&d, &f.other, sk).unwrap(), "bad_signature");
        let mut flipped = good.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 1;
        check(&flipped, "bad_signature");
        d.target = "door-2".into();
        check(&build_bundle(&d, &f.signer, sk).unwrap(), "wrong_target");
        d = draft(5);
        d.site = "branch".into();
        check(&build_bundle(&d, &f.signer, sk).unwrap(), "wrong_target");
        d = draft(4);
        check(&build_bundle(&d, &f.signer, sk).unwrap(), "replay");
        d = draft(5);
        d.expires_at = d.created_at - 1;
        d.created_at -= 7200;
        check(&build_bundle(&d, &f.signer, sk).unwrap(), "expired");
        d = draft(5);
        d.created_at += 86_400;
        d.expires_at += 86_400;
        check(&build_bundle(&d, &f.signer, sk).unwrap(), "not_yet_valid");
        let other_site = SiteKey::from_secret(SecretKey::from_bytes([6u8; 32]));
        check(
            &build_bundle(&draft(5), &f.signer, &other_site).unwrap(),
            "site_key_mismatch",
        );
        check(&good[..good.len() - 1], "truncated");
        check(&good[..good.len() / 3], "truncated");
        check(&good[..5], "truncated");
        check(b"", "truncated");
        check(&[good.clone(), vec![0]].concat(), "malformed");
        check(&[0x42u8; 100], "bad_magic");
        let big = vec![0u8; f.verifier.policy.max_bytes * 10];
        check(&big, "oversized");
        // Unknown fields in signed critical sections.
        let frame = parse_frame(&good).unwrap();
        let mut h: serde_json::Value = serde_json::from_slice(frame.header).unwrap();
        h["unlock_all_doors"] = true.into();
        let hb = serde_json::to_vec(&h).unwrap();
        check(&sign_raw(&hb, frame.body, &f.signer), "unknown_field");
        check(
            &sign_raw(
                frame.header,
                br#"{"ops":[{"op":"grant_admin","id":"x"}]}"#,
                &f.signer,
            ),
            "unknown_field",
        );
        check(
            &sign_raw(frame.header, br#"{"ops":[],"extra":1}"#, &f.signer),
            "unknown_field",
        );
        check(
            &sign_raw(frame.header, b"{not json", &f.signer),
            "malformed",
        );
        let mut h: serde_json::Value = serde_json::from_slice(frame.header).unwrap();
        h["format"] = 2.into();
        check(
            &sign_raw(&serde_json::to_vec(&h).unwrap(), frame.body, &f.signer),
            "unsupported_format",
        );
        // Sealed record moved to another person id: AAD binds it.
        let body = String::from_utf8(frame.body.to_vec())
            .unwrap()
            .replace("\"p-1\"", "\"p-2\"");
        check(
            &sign_raw(frame.header, body.as_bytes(), &f.signer),
            "decrypt",
        );
        assert!(f.verifier.verify(&good, Some(4), now_unix()).is_ok());
    }

    #[test]
    fn random_and_mutated_inputs_never_panic() {
        use rand::{Rng, RngCore};
        let f = fx();
        let good = build_bundle(&draft(5), &f.signer, &f.verifier.site_key).unwrap();
        let mut rng = rand::rng();
        for i in 0..3000 {
            let mut b = if i % 2 == 0 {
                good.clone()
            } else {
                let mut v = vec![0u8; rng.random_range(0..400)];
                rng.fill_bytes(&mut v);
                if i % 4 == 1 {
                    v.splice(0..0, MAGIC.iter().copied());
                }
                v
            };
            for _ in 0..rng.random_range(0..4) {
                if !b.is_empty() {
                    let at = rng.random_range(0..b.len());
                    b[at] = rng.random();
                }
            }
            let _ = f.verifier.verify(&b, None, now_unix());
            let _ = inspect(&b, Some(&f.verifier.fleet));
        }
        assert!(!fuzz_verify(&good));
    }

    #[test]
    fn claims_are_read_without_trusting_them() {
        let f = fx();
        let good = build_bundle(&draft(9), &f.other, &f.verifier.site_key).unwrap();
        assert_eq!(
            claims(&good),
            BundleClaims {
                version: Some(9),
                key_id: Some(key_id(&f.other.verifying_key())),
            },
            "claims are read even when the signature would not verify"
        );
        assert_eq!(claims(b"garbage"), BundleClaims::default());
        assert_eq!(claims(&good[..good.len() - 1]), BundleClaims::default());
        let frame = parse_frame(&good).unwrap();
        let mut h: serde_json::Value = serde_json::from_slice(frame.header).unwrap();
        h["key_id"] = "x\nFACEGATE_EVENT=forged".into();
        let forged = sign_raw(&serde_json::to_vec(&h).unwrap(), frame.body, &f.other);
        assert_eq!(claims(&forged).key_id, None, "log injection filtered");
        assert_eq!(claims(&forged).version, Some(9));
    }

    #[test]
    fn inspect_shows_ids_not_vectors() {
        let f = fx();
        let b = build_bundle(&draft(9), &f.signer, &f.verifier.site_key).unwrap();
        let s = inspect(&b, Some(&f.verifier.fleet)).unwrap();
        assert_eq!(s.upsert, vec!["p-1".to_string()]);
        assert_eq!(
            s.verified_by.as_deref(),
            Some(key_id(&f.signer.verifying_key()).as_str())
        );
        let text = serde_json::to_string(&s).unwrap();
        assert!(!text.contains("Ada") && !text.contains("0.9"));
    }
}
