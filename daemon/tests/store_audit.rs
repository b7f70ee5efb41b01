//! Audit chain tamper detection, outbox semantics, data-subject export/removal and crypto-erase.

use std::path::Path;

use facegate::store::{
    AuditAction, AuditEntry, EMBEDDING_DIM, FoldInput, Kek, NewPerson, NewTemplate, OutboxLimits,
    Store, StoreError, schema,
};
use redb::{ReadableDatabase, ReadableTable};
use sha2::{Digest, Sha256};

fn v(seed: u32) -> Vec<f32> {
    (0..EMBEDDING_DIM)
        .map(|i| ((seed + 3) as f32 * (i as f32 + 1.0) * 0.01).sin())
        .collect()
}

fn setup(dir: &Path) -> (std::path::PathBuf, Kek) {
    let path = dir.join("s.redb");
    let kek = Kek::generate_key_file(&dir.join("k")).unwrap();
    let s = Store::create(&path, &kek, "cli:root").unwrap();
    for i in 0..4 {
        let p = NewPerson {
            id: format!("p{i}"),
            label: format!("Secret Name {i}"),
            external_id: Some(format!("HR-{i}")),
        };
        s.add_person(&p, &[NewTemplate::anchor(v(i), "m", "1")], "cli:root")
            .unwrap();
    }
    s.remove_person("p3", "cli:root").unwrap();
    (path, kek)
}

fn raw_entries(path: &Path) -> Vec<(u64, AuditEntry)> {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let t = txn.open_table(schema::AUDIT).unwrap();
    t.iter()
        .unwrap()
        .map(|r| {
            let (k, v) = r.unwrap();
            (k.value(), serde_json::from_slice(v.value()).unwrap())
        })
        .collect()
}

fn write_raw(path: &Path, f: impl FnOnce(&mut redb::Table<u64, &[u8]>)) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    f(&mut txn.open_table(schema::AUDIT).unwrap());
    txn.commit().unwrap();
}

fn broken_at(path: &Path, kek: &Kek) -> (u64, String) {
    match Store::open(path, kek).unwrap().verify_audit() {
        Err(StoreError::AuditBroken { seq, problem }) => (seq, problem),
        other => panic!("tampering not detected: {other:?}"),
    }
}

#[test]
fn audit_chain_verifies_and_names_first_broken_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (path, kek) = setup(dir.path());
    let s = Store::open(&path, &kek).unwrap();
    let ok = s.verify_audit().unwrap();
    assert_eq!(ok.entries, 6); // init + 4 enrol + remove
    let all = s.audit_entries(None, 100).unwrap();
    assert_eq!(all[0].action, AuditAction::KeysInit);
    assert_eq!(all[5].action, AuditAction::Remove);
    assert_eq!(all[5].subject.as_deref(), Some("p3"));
    for e in &all {
        let json = serde_json::to_string(e).unwrap();
        assert!(
            !json.contains("Secret Name") && !json.contains("HR-"),
            "personal field in audit: {json}"
        );
    }
    drop(s);
    let pristine = std::fs::read(&path).unwrap();

    // 1. Edit one entry's content.
    write_raw(&path, |t| {
        let mut e: AuditEntry = serde_json::from_slice(t.get(3).unwrap().unwrap().value()).unwrap();
        e.detail = Some("nothing happened".into());
        t.insert(3, serde_json::to_vec(&e).unwrap().as_slice())
            .unwrap();
    });
    assert_eq!(broken_at(&path, &kek).0, 3);

    // 2. Delete an entry in the middle.
    std::fs::write(&path, &pristine).unwrap();
    write_raw(&path, |t| {
        t.remove(4).unwrap();
    });
    assert_eq!(broken_at(&path, &kek).0, 4);

    // 3. Truncate the tail (hide the removal).
    std::fs::write(&path, &pristine).unwrap();
    write_raw(&path, |t| {
        t.remove(6).unwrap();
    });
    let (seq, problem) = broken_at(&path, &kek);
    assert_eq!(seq, 6, "{problem}");

    // 4. Rewrite history consistently (recompute every hash) without the key: the sealed head catches it.
    std::fs::write(&path, &pristine).unwrap();
    let mut entries = raw_entries(&path);
    let mut prev = [0u8; 32];
    for (_, e) in entries.iter_mut() {
        if e.seq == 2 {
            e.actor = "someone-else".into();
        }
        e.prev = hex::encode(prev);
        #[derive(serde::Serialize)]
        struct Canon<'a> {
            seq: u64,
            ts: u64,
            actor: &'a str,
            action: AuditAction,
            subject: Option<&'a str>,
            outcome: facegate::store::AuditOutcome,
            detail: Option<&'a str>,
        }
        let c = Canon {
            seq: e.seq,
            ts: e.ts,
            actor: &e.actor,
            action: e.action,
            subject: e.subject.as_deref(),
            outcome: e.outcome,
            detail: e.detail.as_deref(),
        };
        let mut h = Sha256::new();
        h.update(prev);
        h.update(serde_json::to_vec(&c).unwrap());
        prev = h.finalize().into();
        e.hash = hex::encode(prev);
    }
    write_raw(&path, |t| {
        for (k, e) in &entries {
            t.insert(*k, serde_json::to_vec(e).unwrap().as_slice())
                .unwrap();
        }
    });
    let (seq, problem) = broken_at(&path, &kek);
    assert!(problem.contains("rewritten"), "{seq}: {problem}");

    std::fs::write(&path, &pristine).unwrap();
    Store::open(&path, &kek).unwrap().verify_audit().unwrap();
}

#[test]
fn outbox_is_ordered_sealed_and_never_reuses_sequence_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (path, kek) = setup(dir.path());
    let s = Store::open(&path, &kek).unwrap();
    let limits = OutboxLimits::default();
    let mut no_overflow =
        |_: FoldInput<'_>| -> Result<Vec<u8>, StoreError> { panic!("no overflow expected") };
    let mut append = |p: &[u8]| s.outbox_append(p, &limits, &mut no_overflow).unwrap().seq;
    let seqs: Vec<u64> = (0..5)
        .map(|i| append(format!("{{\"event\":\"door-{i}-OUTBOXMARK\"}}").as_bytes()))
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    let batch = s.outbox_peek_batch(3).unwrap();
    assert_eq!(
        batch.iter().map(|i| i.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(
        batch[0].payload.as_slice(),
        b"{\"event\":\"door-0-OUTBOXMARK\"}"
    );
    assert!(s.outbox_delete(1).unwrap());
    assert!(s.outbox_delete(2).unwrap());
    assert!(!s.outbox_delete(2).unwrap());
    assert_eq!(s.outbox_len().unwrap(), 3);
    assert!(s.outbox_bytes().unwrap() > 3 * 30);
    assert_eq!(
        s.outbox_peek_batch(10)
            .unwrap()
            .iter()
            .map(|i| i.seq)
            .collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    for i in [3, 4, 5] {
        s.outbox_delete(i).unwrap();
    }
    assert_eq!(
        append(b"x"),
        6,
        "sequence continues after the queue drained"
    );
    drop(s);
    let raw = std::fs::read(&path).unwrap();
    assert!(
        !raw.windows(10).any(|w| w == b"OUTBOXMARK"),
        "outbox payload in clear"
    );
}

#[test]
fn export_and_removal_cover_everything_held() {
    let dir = tempfile::tempdir().unwrap();
    let (path, kek) = setup(dir.path());
    let s = Store::open(&path, &kek).unwrap();
    let e = s.export_person("p1", false, 50, "cli:dpo").unwrap();
    assert!(!e.sensitive && e.vectors.is_none());
    assert_eq!(
        (e.person.label.as_str(), e.person.external_id.as_deref()),
        ("Secret Name 1", Some("HR-1"))
    );
    assert_eq!(e.templates.len(), 1);
    // The export records itself before collecting the person's audit trail.
    assert_eq!(
        e.audit.iter().map(|a| a.action).collect::<Vec<_>>(),
        vec![AuditAction::Enrol, AuditAction::Export]
    );
    let json = serde_json::to_string(&e).unwrap();
    assert!(!json.contains("vectors"));
    let e2 = s.export_person("p1", true, 50, "cli:dpo").unwrap();
    assert!(e2.sensitive);
    assert_eq!(e2.vectors.as_ref().unwrap()[0].vector, v(1));
    assert_eq!(
        e2.audit.last().unwrap().action,
        AuditAction::Export,
        "exports are audited"
    );

    let list = s.list_people().unwrap();
    assert_eq!(
        list.iter()
            .map(|p| p.person.id.as_str())
            .collect::<Vec<_>>(),
        vec!["p0", "p1", "p2"]
    );
    assert_eq!(
        (list[0].anchors, list[0].adaptive, list[0].models.clone()),
        (1, 0, vec!["m@1".to_string()])
    );

    assert_eq!(s.remove_person("p1", "cli:dpo").unwrap(), 1);
    assert!(!s.person_exists("p1").unwrap());
    assert!(s.templates_of("p1").unwrap().is_empty());
    assert!(matches!(
        s.remove_person("p1", "cli:dpo"),
        Err(StoreError::PersonNotFound(_))
    ));
    assert!(matches!(
        s.export_person("p1", false, 5, "x"),
        Err(StoreError::PersonNotFound(_))
    ));
    assert!(
        s.load_all_templates()
            .unwrap()
            .iter()
            .all(|t| t.person_id != "p1")
    );
    assert!(matches!(
        s.add_person(
            &NewPerson {
                id: "p0".into(),
                label: "dup".into(),
                external_id: None
            },
            &[NewTemplate::anchor(v(9), "m", "1")],
            "x"
        ),
        Err(StoreError::PersonExists(_))
    ));
    assert!(matches!(
        s.add_person(
            &NewPerson {
                id: "bad id".into(),
                label: "x".into(),
                external_id: None
            },
            &[NewTemplate::anchor(v(9), "m", "1")],
            "x"
        ),
        Err(StoreError::InvalidInput(_))
    ));
    assert!(matches!(
        s.add_person(
            &NewPerson {
                id: "short".into(),
                label: "x".into(),
                external_id: None
            },
            &[NewTemplate::anchor(vec![1.0; 3], "m", "1")],
            "x"
        ),
        Err(StoreError::InvalidInput(_))
    ));
    s.verify_audit().unwrap();
}

#[test]
fn crypto_erase_destroys_key_slots_data_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let (path, kek) = setup(dir.path());
    let key = dir.path().join("k");
    let r = facegate::store::keys::erase_all(&path, Some(&key)).unwrap();
    assert_eq!(r.keyslots_destroyed, 1);
    assert!(r.store_removed && r.key_file_destroyed);
    assert!(!path.exists() && !key.exists());
    assert!(matches!(
        Store::open(&path, &kek),
        Err(StoreError::NotFound { .. })
    ));

    // Refuses to wipe something that is not a store.
    let other = dir.path().join("notes.txt");
    std::fs::write(&other, "important").unwrap();
    assert!(facegate::store::keys::erase_all(&other, None).is_err());
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "important");
}
