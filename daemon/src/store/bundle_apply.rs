//! Applying a verified template bundle to the store in **one** write transaction.
//!
//! [`crate::bundle`] authenticates, decrypts and validates a bundle without touching the store;
//! this module then performs every operation of the bundle (replace people with their templates,
//! remove people, record thresholds), records the bundle version, bumps the matcher generation
//! and appends the audit entries — all in a single redb commit. Either the whole bundle is
//! visible afterwards or none of it is; a crash mid-apply leaves the previous state.
//!
//! The version check is repeated *inside* the transaction, so two concurrent appliers cannot
//! both install bundles and an older bundle can never overwrite a newer one.
//!
//! Person and template rows are written in exactly the layout of [`super::people`] (sealed
//! person record JSON; `[u32 BE header length][TemplateMeta JSON][f32 LE × EMBEDDING_DIM]`
//! template plaintext); the round-trip tests below read them back through the public people
//! API so the two writers cannot drift apart silently.

use redb::{ReadableTable, WriteTransaction};
use serde::Serialize;
use zeroize::Zeroizing;

use super::audit::{AuditAction, AuditEvent};
use super::error::{Result, StoreError};
use super::people::{
    self, MAX_TEMPLATES_PER_PERSON, NewPerson, NewTemplate, PersonRecord, TemplateMeta, validate_id,
};
use super::schema::{META, PEOPLE, TEMPLATES, meta};
use super::{Store, now_unix};

/// Meta key holding the thresholds JSON of the last bundle that set them (non-personal).
pub const BUNDLE_THRESHOLDS: &str = "bundle_thresholds";

/// One operation of a verified bundle, borrowed from the decoded bundle.
#[derive(Debug)]
pub enum BundleOp<'a> {
    /// Replace (or create) a person and all their templates.
    Upsert {
        /// The person's fields.
        person: &'a NewPerson,
        /// Their complete new template set (old templates are deleted).
        templates: &'a [NewTemplate],
    },
    /// Delete a person and their templates (absent ids are not an error: bundles are
    /// idempotent descriptions of the desired state).
    Remove(&'a str),
    /// Record matcher/liveness thresholds (JSON, non-personal), read back with
    /// [`Store::bundle_thresholds`].
    SetThresholds(&'a [u8]),
}

/// What an applied bundle changed (counts only: safe to log and to publish as a result).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BundleApplyReport {
    /// Bundle version now recorded in the store.
    pub version: u64,
    /// People created or replaced.
    pub upserted: usize,
    /// People removed (that existed).
    pub removed: usize,
    /// Templates written.
    pub templates: usize,
    /// Whether thresholds were recorded.
    pub thresholds: bool,
}

fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::InvalidInput(msg.into())
}

/// The same checks `Store::add_people` applies (one definition in `people.rs`), with the person
/// named in the message because a bundle carries many.
fn check_person(person: &NewPerson, templates: &[NewTemplate]) -> Result<()> {
    validate_id(&person.id)?;
    let named = |e: StoreError| match e {
        StoreError::InvalidInput(m) => invalid(format!("person {}: {m}", person.id)),
        other => other,
    };
    if person.label.is_empty() {
        return Err(invalid(format!("person {}: label is empty", person.id)));
    }
    people::validate_text("label", &person.label).map_err(named)?;
    if let Some(e) = &person.external_id {
        people::validate_text("external id", e).map_err(named)?;
    }
    if templates.is_empty() || templates.len() > MAX_TEMPLATES_PER_PERSON {
        return Err(invalid(format!(
            "person {}: needs 1-{MAX_TEMPLATES_PER_PERSON} templates",
            person.id
        )));
    }
    templates
        .iter()
        .try_for_each(people::validate_template)
        .map_err(named)
}

fn parse_version(bytes: &[u8]) -> Result<u64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| invalid("the recorded bundle version is not a number; refusing to compare"))
}

impl Store {
    /// Thresholds JSON recorded by the last bundle that carried them.
    pub fn bundle_thresholds(&self) -> Result<Option<Vec<u8>>> {
        use redb::ReadableDatabase;
        let txn = self.db.begin_read()?;
        let m = txn.open_table(META)?;
        Ok(m.get(BUNDLE_THRESHOLDS)?.map(|v| v.value().to_vec()))
    }

    /// Last applied bundle version as a number (`None` before the first bundle).
    pub fn applied_bundle_version(&self) -> Result<Option<u64>> {
        match self.bundle_version()? {
            Some(v) => parse_version(v.as_bytes()).map(Some),
            None => Ok(None),
        }
    }

    /// Apply all `ops` of bundle `version` atomically with their audit entries. Fails (and
    /// writes nothing) if any input is invalid or `version` is not newer than the applied one.
    pub fn apply_bundle_ops(
        &self,
        version: u64,
        ops: &[BundleOp<'_>],
        actor: &str,
        detail: &str,
    ) -> Result<BundleApplyReport> {
        for op in ops {
            match op {
                BundleOp::Upsert { person, templates } => check_person(person, templates)?,
                BundleOp::Remove(id) => validate_id(id)?,
                BundleOp::SetThresholds(_) => {}
            }
        }
        let txn = self.begin_write()?;
        {
            let m = txn.open_table(META)?;
            if let Some(v) = m.get(meta::BUNDLE_VERSION)? {
                let applied = parse_version(v.value())?;
                if version <= applied {
                    return Err(invalid(format!(
                        "bundle version {version} is not newer than the applied version {applied}"
                    )));
                }
            }
        }
        let mut report = BundleApplyReport {
            version,
            ..Default::default()
        };
        for op in ops {
            match op {
                BundleOp::Upsert { person, templates } => {
                    report.templates += self.upsert_in(&txn, person, templates)?;
                    report.upserted += 1;
                    self.audit_in(
                        &txn,
                        &AuditEvent::ok(
                            actor,
                            AuditAction::Enrol,
                            Some(&person.id),
                            Some(format!(
                                "{} templates via bundle {version}",
                                templates.len()
                            )),
                        ),
                    )?;
                }
                BundleOp::Remove(id) => {
                    if self.remove_in(&txn, id)? {
                        report.removed += 1;
                        self.audit_in(
                            &txn,
                            &AuditEvent::ok(
                                actor,
                                AuditAction::Remove,
                                Some(id),
                                Some(format!("via bundle {version}")),
                            ),
                        )?;
                    }
                }
                BundleOp::SetThresholds(json) => {
                    txn.open_table(META)?.insert(BUNDLE_THRESHOLDS, *json)?;
                    report.thresholds = true;
                }
            }
        }
        txn.open_table(META)?
            .insert(meta::BUNDLE_VERSION, version.to_string().as_bytes())?;
        Self::bump(&txn, meta::GENERATION)?;
        self.audit_in(
            &txn,
            &AuditEvent::ok(
                actor,
                AuditAction::BundleApplied,
                None,
                Some(format!(
                    "bundle {version}: {} upserted, {} removed, {} templates{}; {detail}",
                    report.upserted,
                    report.removed,
                    report.templates,
                    if report.thresholds {
                        ", thresholds"
                    } else {
                        ""
                    }
                )),
            ),
        )?;
        txn.commit()?;
        Ok(report)
    }

    /// Replace one person inside `txn`; returns the number of templates written.
    fn upsert_in(
        &self,
        txn: &WriteTransaction,
        person: &NewPerson,
        templates: &[NewTemplate],
    ) -> Result<usize> {
        let id = person.id.as_str();
        let now = now_unix();
        let mut people = txn.open_table(PEOPLE)?;
        let created = match people.get(id)? {
            Some(v) => self
                .open_row("people", id.as_bytes(), || id.to_string(), v.value())
                .ok()
                .and_then(|p| serde_json::from_slice::<PersonRecord>(&p).ok())
                .map(|r| r.created)
                .unwrap_or(now),
            None => now,
        };
        let rec = PersonRecord {
            label: person.label.clone(),
            external_id: person.external_id.clone(),
            created,
            updated: now,
        };
        let plain =
            Zeroizing::new(serde_json::to_vec(&rec).map_err(|_| invalid("unserialisable person"))?);
        people.insert(
            id,
            self.seal_row("people", id.as_bytes(), &plain)?.as_slice(),
        )?;
        let mut table = txn.open_table(TEMPLATES)?;
        table.retain_in((id, 0u64)..=(id, u64::MAX), |_, _| false)?;
        for t in templates {
            let seq = Self::bump(txn, meta::NEXT_TEMPLATE_SEQ)? + 1;
            let tm = TemplateMeta {
                seq,
                kind: t.kind,
                model_id: t.model_id.clone(),
                model_version: t.model_version.clone(),
                quality: t.quality.clone(),
                created: now,
            };
            let plain = people::encode_template(&tm, &t.vector)?;
            let sealed = self.seal_row("templates", &people::template_row(id, seq), &plain)?;
            table.insert((id, seq), sealed.as_slice())?;
        }
        Ok(templates.len())
    }

    /// Remove one person inside `txn`; `false` if they did not exist.
    fn remove_in(&self, txn: &WriteTransaction, id: &str) -> Result<bool> {
        let existed = txn.open_table(PEOPLE)?.remove(id)?.is_some();
        txn.open_table(TEMPLATES)?
            .retain_in((id, 0u64)..=(id, u64::MAX), |_, _| false)?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EMBEDDING_DIM, Kek, KekSource, SecretKey};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let kek = Kek::from_secret(SecretKey::random().unwrap(), KekSource::Memory);
        let s = Store::create(&dir.path().join("s.redb"), &kek, "test").unwrap();
        (dir, s)
    }

    fn person(id: &str) -> NewPerson {
        NewPerson {
            id: id.into(),
            label: format!("label {id}"),
            external_id: None,
        }
    }

    fn tpl(x: f32) -> NewTemplate {
        let mut v = vec![0.01f32; EMBEDDING_DIM];
        v[0] = x;
        NewTemplate::anchor(v, "sface", "2021dec")
    }

    #[test]
    fn upsert_remove_roundtrip_through_people_api() {
        let (_d, s) = store();
        s.add_person(&person("old"), &[tpl(1.0)], "t").unwrap();
        let (a, b) = (person("a"), person("old"));
        let ta = [tpl(0.5), tpl(0.7)];
        let tb = [tpl(0.9)];
        let ops = [
            BundleOp::Upsert {
                person: &a,
                templates: &ta,
            },
            BundleOp::Upsert {
                person: &b,
                templates: &tb,
            },
            BundleOp::SetThresholds(br#"{"match_threshold":0.4}"#),
        ];
        let gen0 = s.generation().unwrap();
        let r = s.apply_bundle_ops(3, &ops, "t", "test").unwrap();
        assert_eq!((r.upserted, r.templates, r.thresholds), (2, 3, true));
        assert!(s.generation().unwrap() > gen0);
        let all = s.load_all_templates().unwrap();
        assert_eq!(all.len(), 3);
        let mine: Vec<_> = all.iter().filter(|t| t.person_id == "old").collect();
        assert_eq!(mine.len(), 1, "upsert replaces the old template set");
        assert!((mine[0].vector[0] - 0.9).abs() < 1e-6);
        assert_eq!(s.get_person("a").unwrap().unwrap().label, "label a");
        assert_eq!(s.applied_bundle_version().unwrap(), Some(3));
        assert!(s.bundle_thresholds().unwrap().is_some());
        let rm = [BundleOp::Remove("a"), BundleOp::Remove("nobody")];
        let r = s.apply_bundle_ops(4, &rm, "t", "test").unwrap();
        assert_eq!(r.removed, 1);
        assert!(!s.person_exists("a").unwrap());
        assert_eq!(s.load_all_templates().unwrap().len(), 1);
        s.verify_audit().unwrap();
    }

    #[test]
    fn old_version_and_bad_input_write_nothing() {
        let (_d, s) = store();
        let a = person("a");
        let ta = [tpl(0.5)];
        s.apply_bundle_ops(
            5,
            &[BundleOp::Upsert {
                person: &a,
                templates: &ta,
            }],
            "t",
            "",
        )
        .unwrap();
        let audit = s.audit_entries(None, 1000).unwrap().len();
        for v in [4, 5] {
            assert!(
                s.apply_bundle_ops(v, &[BundleOp::Remove("a")], "t", "")
                    .is_err()
            );
        }
        let bad = [NewTemplate::anchor(vec![1.0; 3], "m", "1")];
        let b = person("b");
        let ops = [
            BundleOp::Remove("a"),
            BundleOp::Upsert {
                person: &b,
                templates: &bad,
            },
        ];
        assert!(s.apply_bundle_ops(9, &ops, "t", "").is_err());
        assert!(
            s.person_exists("a").unwrap(),
            "nothing of a failed bundle applies"
        );
        assert_eq!(s.applied_bundle_version().unwrap(), Some(5));
        assert_eq!(s.audit_entries(None, 1000).unwrap().len(), audit);
    }
}
