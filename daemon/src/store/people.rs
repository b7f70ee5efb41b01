//! People and their face templates: enrolment, adaptive updates, listing, export and removal.
//!
//! A person row holds the sealed personal fields (label, external id, dates); each template row,
//! keyed `(person id, seq)`, holds a sealed vector plus its kind, quality figures and the model
//! that produced it. Sequence numbers are global and monotonic, so "oldest adaptive template" is
//! simply the smallest seq of that kind. Anchors (enrolment) are never replaced by adaptive
//! templates (learned from confident live matches), which lets matching follow slow appearance
//! change without drifting away from the enrolled identity.
//!
//! Every mutation commits together with its audit entry and a bump of the meta `generation`
//! counter, which tells a running matcher to rebuild.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::audit::{AuditAction, AuditEntry, AuditEvent};
use super::error::{Result, StoreError};
use super::schema::{PEOPLE, TEMPLATES, meta};
use super::{Store, format_unix, now_unix};

/// Length of every face embedding this store accepts.
pub const EMBEDDING_DIM: usize = 128;
/// Upper bound on templates per person (anchors + adaptive), to bound matcher size.
pub const MAX_TEMPLATES_PER_PERSON: usize = 64;
const MAX_ID: usize = 128;
const MAX_TEXT: usize = 256;

/// Why a template exists: enrolled, or learned from live matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateKind {
    /// From enrolment; never evicted by adaptation.
    Anchor,
    /// From a confident live match; capped per person, oldest evicted first.
    Adaptive,
}

/// Person to enrol. `Debug` redacts the personal fields so it can never leak into logs.
#[derive(Clone)]
pub struct NewPerson {
    /// Stable id (`[A-Za-z0-9._:@-]`, ≤128 bytes); stored in clear as the row key, so prefer an
    /// opaque id (e.g. a UUIDv7) over a name.
    pub id: String,
    /// Display label (sealed).
    pub label: String,
    /// Id in an external system, e.g. the access-control database (sealed).
    pub external_id: Option<String>,
}

impl std::fmt::Debug for NewPerson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewPerson")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Template to store. The vector is wiped when dropped.
#[derive(Clone)]
pub struct NewTemplate {
    /// Anchor or adaptive ([`Store::add_adaptive_template`] forces adaptive).
    pub kind: TemplateKind,
    /// `EMBEDDING_DIM` finite values; need not be normalised (the matcher normalises).
    pub vector: Zeroizing<Vec<f32>>,
    /// Embedding model id; templates only match queries from the same model.
    pub model_id: String,
    /// Embedding model version.
    pub model_version: String,
    /// Quality figures from the enrolment gates (detector score, sharpness, pose, ...).
    pub quality: BTreeMap<String, f32>,
}

impl NewTemplate {
    /// Anchor template with no quality figures (tests, simple callers).
    pub fn anchor(vector: Vec<f32>, model_id: &str, model_version: &str) -> Self {
        NewTemplate {
            kind: TemplateKind::Anchor,
            vector: Zeroizing::new(vector),
            model_id: model_id.into(),
            model_version: model_version.into(),
            quality: BTreeMap::new(),
        }
    }
}

impl std::fmt::Debug for NewTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewTemplate")
            .field("kind", &self.kind)
            .field("model_id", &self.model_id)
            .finish_non_exhaustive()
    }
}

/// Everything about a template except the vector (safe for listings and exports).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateMeta {
    /// Global sequence number (age order).
    pub seq: u64,
    /// Anchor or adaptive.
    pub kind: TemplateKind,
    /// Embedding model id.
    pub model_id: String,
    /// Embedding model version.
    pub model_version: String,
    /// Quality figures.
    pub quality: BTreeMap<String, f32>,
    /// Unix seconds.
    pub created: u64,
}

/// A decrypted template, as handed to the matcher.
pub struct Template {
    /// Owner.
    pub person_id: String,
    /// Metadata.
    pub meta: TemplateMeta,
    /// The embedding, wiped on drop.
    pub vector: Zeroizing<Vec<f32>>,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template")
            .field("person_id", &self.person_id)
            .field("meta", &self.meta)
            .finish()
    }
}

/// A person's decrypted record. `Debug` redacts personal fields; `Serialize` is for the
/// operator-facing `people show/export` output only.
#[derive(Clone, Serialize, Deserialize)]
pub struct Person {
    /// Row id.
    pub id: String,
    /// Display label.
    pub label: String,
    /// External id.
    pub external_id: Option<String>,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds of the last change (enrolment or adaptive template).
    pub updated: u64,
}

impl std::fmt::Debug for Person {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Person")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Sealed part of a person row (also written by bundle application).
#[derive(Serialize, Deserialize)]
pub(super) struct PersonRecord {
    pub(super) label: String,
    pub(super) external_id: Option<String>,
    pub(super) created: u64,
    pub(super) updated: u64,
}

/// Listing line: the person plus template counts.
#[derive(Debug, Clone, Serialize)]
pub struct PersonSummary {
    /// The person.
    #[serde(flatten)]
    pub person: Person,
    /// Anchor templates.
    pub anchors: usize,
    /// Adaptive templates.
    pub adaptive: usize,
    /// Distinct `model_id@version` of the templates.
    pub models: Vec<String>,
}

/// A template vector in an export (only with `--include-templates`).
#[derive(Debug, Clone, Serialize)]
pub struct ExportedVector {
    /// Template seq.
    pub seq: u64,
    /// Raw embedding.
    pub vector: Vec<f32>,
}

/// What the terminal holds about one person (data-subject access request).
#[derive(Debug, Clone, Serialize)]
pub struct PersonExport {
    /// True when raw vectors are included: the output is biometric data.
    pub sensitive: bool,
    /// RFC 3339 time of the export.
    pub exported_at: String,
    /// Personal fields and dates.
    pub person: Person,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 last update.
    pub updated_at: String,
    /// Template metadata (no vectors).
    pub templates: Vec<TemplateMeta>,
    /// Raw vectors, only if explicitly requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vectors: Option<Vec<ExportedVector>>,
    /// Recent audit entries about this person.
    pub audit: Vec<AuditEntry>,
}

fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::InvalidInput(msg.into())
}

/// Validate a person id: it is a row key and part of the AAD, so keep it small and unambiguous.
pub fn validate_id(id: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-_.:@".contains(c);
    if id.is_empty() || id.len() > MAX_ID || !id.chars().all(ok_char) {
        return Err(invalid(format!(
            "person id must be 1-{MAX_ID} characters of [A-Za-z0-9._:@-]"
        )));
    }
    Ok(())
}

pub(super) fn validate_text(what: &str, s: &str) -> Result<()> {
    if s.len() > MAX_TEXT || s.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{what} must be at most {MAX_TEXT} bytes without control characters"
        )));
    }
    Ok(())
}

pub(super) fn validate_template(t: &NewTemplate) -> Result<()> {
    if t.vector.len() != EMBEDDING_DIM {
        return Err(invalid(format!(
            "template has {} values, expected {EMBEDDING_DIM}",
            t.vector.len()
        )));
    }
    if !t.vector.iter().all(|v| v.is_finite()) {
        return Err(invalid("template contains non-finite values"));
    }
    if t.vector.iter().map(|v| v * v).sum::<f32>() < 1e-12 {
        return Err(invalid("template is the zero vector"));
    }
    for (what, s) in [
        ("model id", &t.model_id),
        ("model version", &t.model_version),
    ] {
        if s.is_empty() {
            return Err(invalid(format!("{what} is empty")));
        }
        validate_text(what, s)?;
    }
    if t.quality
        .iter()
        .any(|(k, v)| k.len() > 64 || !v.is_finite())
    {
        return Err(invalid(
            "quality figures need names of at most 64 bytes and finite values",
        ));
    }
    Ok(())
}

pub(super) fn template_row(person: &str, seq: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(person.len() + 9);
    r.extend_from_slice(person.as_bytes());
    r.push(0);
    r.extend_from_slice(&seq.to_be_bytes());
    r
}

/// Plaintext layout: `[u32 BE header length][header JSON][EMBEDDING_DIM × f32 LE]`.
pub(super) fn encode_template(meta: &TemplateMeta, vector: &[f32]) -> Result<Zeroizing<Vec<u8>>> {
    let header =
        serde_json::to_vec(meta).map_err(|_| invalid("unserialisable template metadata"))?;
    let mut out = Zeroizing::new(Vec::with_capacity(4 + header.len() + 4 * vector.len()));
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    for v in vector {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

fn decode_template(plain: &[u8]) -> Option<(TemplateMeta, Zeroizing<Vec<f32>>)> {
    let len = u32::from_be_bytes(plain.get(..4)?.try_into().ok()?) as usize;
    let header = plain.get(4..4 + len)?;
    let body = plain.get(4 + len..)?;
    if body.len() != 4 * EMBEDDING_DIM {
        return None;
    }
    let meta: TemplateMeta = serde_json::from_slice(header).ok()?;
    let mut v = Zeroizing::new(Vec::with_capacity(EMBEDDING_DIM));
    for c in body.chunks_exact(4) {
        v.push(f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    }
    Some((meta, v))
}

type TemplatesTable<'t> = redb::Table<'t, (&'static str, u64), &'static [u8]>;

impl Store {
    fn seal_person(&self, id: &str, rec: &PersonRecord) -> Result<Vec<u8>> {
        let plain =
            Zeroizing::new(serde_json::to_vec(rec).map_err(|_| invalid("unserialisable person"))?);
        self.seal_row("people", id.as_bytes(), &plain)
    }

    fn open_person(&self, id: &str, sealed: &[u8]) -> Result<Person> {
        let plain = self.open_row("people", id.as_bytes(), || id.to_string(), sealed)?;
        let rec: PersonRecord =
            serde_json::from_slice(&plain).map_err(|_| StoreError::Integrity {
                table: "people",
                row: id.into(),
            })?;
        Ok(Person {
            id: id.into(),
            label: rec.label,
            external_id: rec.external_id,
            created: rec.created,
            updated: rec.updated,
        })
    }

    fn open_template(
        &self,
        person: &str,
        seq: u64,
        sealed: &[u8],
    ) -> Result<(TemplateMeta, Zeroizing<Vec<f32>>)> {
        let display = || format!("{person}/{seq}");
        let plain = self.open_row("templates", &template_row(person, seq), display, sealed)?;
        let (meta, v) = decode_template(&plain).ok_or_else(|| StoreError::Integrity {
            table: "templates",
            row: display(),
        })?;
        if meta.seq != seq {
            return Err(StoreError::Integrity {
                table: "templates",
                row: display(),
            });
        }
        Ok((meta, v))
    }

    fn insert_template(
        &self,
        table: &mut TemplatesTable<'_>,
        txn: &redb::WriteTransaction,
        person: &str,
        t: &NewTemplate,
        kind: TemplateKind,
    ) -> Result<u64> {
        let seq = Self::bump(txn, meta::NEXT_TEMPLATE_SEQ)? + 1;
        let meta = TemplateMeta {
            seq,
            kind,
            model_id: t.model_id.clone(),
            model_version: t.model_version.clone(),
            quality: t.quality.clone(),
            created: now_unix(),
        };
        let plain = encode_template(&meta, &t.vector)?;
        let sealed = self.seal_row("templates", &template_row(person, seq), &plain)?;
        table.insert((person, seq), sealed.as_slice())?;
        Ok(seq)
    }

    /// Enrol a person with their templates, in one transaction with its audit entry.
    /// Duplicate-face checks are the caller's job (they need the matcher); this refuses an id
    /// that already exists.
    pub fn add_person(
        &self,
        person: &NewPerson,
        templates: &[NewTemplate],
        actor: &str,
    ) -> Result<()> {
        self.add_people(&[(person, templates)], actor)
    }

    /// Enrol many people atomically (bundle sync, benchmarks): all or nothing, one commit.
    pub fn add_people(&self, batch: &[(&NewPerson, &[NewTemplate])], actor: &str) -> Result<()> {
        for (person, templates) in batch {
            validate_id(&person.id)?;
            validate_text("label", &person.label)?;
            if person.label.is_empty() {
                return Err(invalid("label is empty"));
            }
            if let Some(e) = &person.external_id {
                validate_text("external id", e)?;
            }
            if templates.is_empty() || templates.len() > MAX_TEMPLATES_PER_PERSON {
                return Err(invalid(format!(
                    "enrolment needs 1-{MAX_TEMPLATES_PER_PERSON} templates"
                )));
            }
            templates.iter().try_for_each(validate_template)?;
        }
        let txn = self.begin_write()?;
        for (person, templates) in batch {
            {
                let mut people = txn.open_table(PEOPLE)?;
                if people.get(person.id.as_str())?.is_some() {
                    return Err(StoreError::PersonExists(person.id.clone()));
                }
                let now = now_unix();
                let rec = PersonRecord {
                    label: person.label.clone(),
                    external_id: person.external_id.clone(),
                    created: now,
                    updated: now,
                };
                people.insert(
                    person.id.as_str(),
                    self.seal_person(&person.id, &rec)?.as_slice(),
                )?;
                let mut table = txn.open_table(TEMPLATES)?;
                for t in templates.iter() {
                    self.insert_template(&mut table, &txn, &person.id, t, t.kind)?;
                }
            }
            let models: BTreeSet<_> = templates
                .iter()
                .map(|t| format!("{}@{}", t.model_id, t.model_version))
                .collect();
            let models: Vec<_> = models.into_iter().collect();
            let detail = format!("{} templates, model {}", templates.len(), models.join(","));
            self.audit_in(
                &txn,
                &AuditEvent::ok(actor, AuditAction::Enrol, Some(&person.id), Some(detail)),
            )?;
        }
        Self::bump(&txn, meta::GENERATION)?;
        txn.commit()?;
        Ok(())
    }

    /// Whether `id` is enrolled (no decryption needed).
    pub fn person_exists(&self, id: &str) -> Result<bool> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(PEOPLE)?.get(id)?.is_some())
    }

    /// Decrypt one person's record.
    pub fn get_person(&self, id: &str) -> Result<Option<Person>> {
        let txn = self.db.begin_read()?;
        let people = txn.open_table(PEOPLE)?;
        let Some(v) = people.get(id)? else {
            return Ok(None);
        };
        self.open_person(id, v.value()).map(Some)
    }

    /// Template metadata of one person, oldest first (vectors are decrypted and dropped).
    pub fn templates_of(&self, id: &str) -> Result<Vec<TemplateMeta>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TEMPLATES)?;
        let mut out = Vec::new();
        for row in table.range((id, 0u64)..=(id, u64::MAX))? {
            let (k, v) = row?;
            let (_, seq) = k.value();
            out.push(self.open_template(id, seq, v.value())?.0);
        }
        Ok(out)
    }

    /// Every person with template counts, ordered by id.
    pub fn list_people(&self) -> Result<Vec<PersonSummary>> {
        let txn = self.db.begin_read()?;
        let mut counts: HashMap<String, (usize, usize, BTreeSet<String>)> = HashMap::new();
        for row in txn.open_table(TEMPLATES)?.iter()? {
            let (k, v) = row?;
            let (person, seq) = k.value();
            let (meta, _) = self.open_template(person, seq, v.value())?;
            let e = counts.entry(person.to_string()).or_default();
            match meta.kind {
                TemplateKind::Anchor => e.0 += 1,
                TemplateKind::Adaptive => e.1 += 1,
            }
            e.2.insert(format!("{}@{}", meta.model_id, meta.model_version));
        }
        let mut out = Vec::new();
        for row in txn.open_table(PEOPLE)?.iter()? {
            let (k, v) = row?;
            let person = self.open_person(k.value(), v.value())?;
            let (anchors, adaptive, models) = counts.remove(&person.id).unwrap_or_default();
            out.push(PersonSummary {
                person,
                anchors,
                adaptive,
                models: models.into_iter().collect(),
            });
        }
        Ok(out)
    }

    /// Delete a person's personal fields and all templates in one transaction (audited).
    /// Works without decrypting, so a damaged record can always be removed.
    pub fn remove_person(&self, id: &str, actor: &str) -> Result<usize> {
        let txn = self.begin_write()?;
        let removed;
        {
            let mut people = txn.open_table(PEOPLE)?;
            if people.remove(id)?.is_none() {
                return Err(StoreError::PersonNotFound(id.into()));
            }
            let mut table = txn.open_table(TEMPLATES)?;
            let before = table.len_of(id)?;
            table.retain_in((id, 0u64)..=(id, u64::MAX), |_, _| false)?;
            removed = before;
        }
        Self::bump(&txn, meta::GENERATION)?;
        let detail = format!("{removed} templates deleted");
        self.audit_in(
            &txn,
            &AuditEvent::ok(actor, AuditAction::Remove, Some(id), Some(detail)),
        )?;
        txn.commit()?;
        Ok(removed)
    }

    /// Add an adaptive template learned from a confident live match. At most `cap` adaptive
    /// templates are kept per person: the oldest are evicted first; anchors are never touched.
    /// Returns the new template's seq and the evicted seqs.
    pub fn add_adaptive_template(
        &self,
        id: &str,
        template: &NewTemplate,
        cap: usize,
        actor: &str,
    ) -> Result<(u64, Vec<u64>)> {
        validate_template(template)?;
        if cap == 0 {
            return Err(invalid("adaptive cap must be at least 1"));
        }
        let txn = self.begin_write()?;
        let (seq, evicted);
        {
            let mut people = txn.open_table(PEOPLE)?;
            let person = match people.get(id)? {
                Some(v) => self.open_person(id, v.value())?,
                None => return Err(StoreError::PersonNotFound(id.into())),
            };
            let mut table = txn.open_table(TEMPLATES)?;
            let mut adaptive = Vec::new();
            let mut total = 0;
            for row in table.range((id, 0u64)..=(id, u64::MAX))? {
                let (k, v) = row?;
                let (_, s) = k.value();
                total += 1;
                if self.open_template(id, s, v.value())?.0.kind == TemplateKind::Adaptive {
                    adaptive.push(s);
                }
            }
            let excess = (adaptive.len() + 1).saturating_sub(cap);
            evicted = adaptive[..excess.min(adaptive.len())].to_vec();
            if total - evicted.len() + 1 > MAX_TEMPLATES_PER_PERSON {
                return Err(invalid(format!(
                    "person already has {MAX_TEMPLATES_PER_PERSON} templates"
                )));
            }
            for s in &evicted {
                table.remove((id, *s))?;
            }
            seq = self.insert_template(&mut table, &txn, id, template, TemplateKind::Adaptive)?;
            let rec = PersonRecord {
                label: person.label,
                external_id: person.external_id,
                created: person.created,
                updated: now_unix(),
            };
            people.insert(id, self.seal_person(id, &rec)?.as_slice())?;
        }
        Self::bump(&txn, meta::GENERATION)?;
        let detail = format!("template {seq} added, {} evicted", evicted.len());
        self.audit_in(
            &txn,
            &AuditEvent::ok(actor, AuditAction::AdaptiveTemplate, Some(id), Some(detail)),
        )?;
        txn.commit()?;
        Ok((seq, evicted))
    }

    /// Decrypt every template (for building the matcher). Fails on the first damaged record,
    /// naming it, so a tampered gallery is never served; remove the affected person to recover.
    pub fn load_all_templates(&self) -> Result<Vec<Template>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TEMPLATES)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let (person, seq) = k.value();
            let (meta, vector) = self.open_template(person, seq, v.value())?;
            out.push(Template {
                person_id: person.to_string(),
                meta,
                vector,
            });
        }
        Ok(out)
    }

    /// Everything held about a person, for a data-subject request; raw vectors only when
    /// `include_templates` is set (then `sensitive` is true). The export itself is audited.
    pub fn export_person(
        &self,
        id: &str,
        include_templates: bool,
        audit_limit: usize,
        actor: &str,
    ) -> Result<PersonExport> {
        let person = self
            .get_person(id)?
            .ok_or_else(|| StoreError::PersonNotFound(id.into()))?;
        let mut templates = Vec::new();
        let mut vectors = Vec::new();
        {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(TEMPLATES)?;
            for row in table.range((id, 0u64)..=(id, u64::MAX))? {
                let (k, v) = row?;
                let (_, seq) = k.value();
                let (meta, vector) = self.open_template(id, seq, v.value())?;
                if include_templates {
                    vectors.push(ExportedVector {
                        seq,
                        vector: vector.to_vec(),
                    });
                }
                templates.push(meta);
            }
        }
        let detail = if include_templates {
            "metadata and raw templates"
        } else {
            "metadata"
        };
        self.append_audit(&AuditEvent::ok(
            actor,
            AuditAction::Export,
            Some(id),
            Some(detail.into()),
        ))?;
        Ok(PersonExport {
            sensitive: include_templates,
            exported_at: format_unix(now_unix()),
            created_at: format_unix(person.created),
            updated_at: format_unix(person.updated),
            person,
            templates,
            vectors: include_templates.then_some(vectors),
            audit: self.audit_entries(Some(id), audit_limit)?,
        })
    }
}

/// Count a person's templates inside a write transaction.
trait LenOf {
    fn len_of(&self, id: &str) -> Result<usize>;
}

impl LenOf for TemplatesTable<'_> {
    fn len_of(&self, id: &str) -> Result<usize> {
        let mut n = 0;
        for row in self.range((id, 0u64)..=(id, u64::MAX))? {
            row?;
            n += 1;
        }
        Ok(n)
    }
}
