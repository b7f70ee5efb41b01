//! Encryption-at-rest and tamper tests for the template store: the raw file holds no personal
//! plaintext; flipped, moved or foreign values are rejected; a wrong key, a truncated file or a
//! newer schema is refused without changing a single byte of the file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use facegate::matcher::Matcher;
use facegate::store::{EMBEDDING_DIM, Kek, NewPerson, NewTemplate, Store, StoreError, schema};
use sha2::{Digest, Sha256};

const LABEL: &str = "Zelda Quartermaine-Vortigern";
const EXTERNAL: &str = "EXT-ID-99887766";

fn vector(seed: u32) -> Vec<f32> {
    (0..EMBEDDING_DIM)
        .map(|i| ((seed as f32 + 1.0) * 0.37 + i as f32 * 0.11).sin())
        .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: PathBuf,
    key: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("facegate.redb");
    let key = dir.path().join("facegate.key");
    let kek = Kek::generate_key_file(&key).unwrap();
    let s = Store::create(&store, &kek, "test").unwrap();
    for (i, id) in ["alice", "bob"].iter().enumerate() {
        let p = NewPerson {
            id: (*id).into(),
            label: format!("{LABEL}-{id}"),
            external_id: Some(format!("{EXTERNAL}-{id}")),
        };
        let t = [
            NewTemplate::anchor(vector(10 * i as u32), "m", "1"),
            NewTemplate::anchor(vector(10 * i as u32 + 1), "m", "1"),
        ];
        s.add_person(&p, &t, "test").unwrap();
    }
    Fixture {
        _dir: dir,
        store,
        key,
    }
}

fn sha(path: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Raw value of a template row, read with redb directly (as an attacker with the file would).
fn raw_template(store: &Path, person: &str, seq: u64) -> Vec<u8> {
    use redb::ReadableDatabase;
    let db = redb::Database::open(store).unwrap();
    let txn = db.begin_read().unwrap();
    let t = txn.open_table(schema::TEMPLATES).unwrap();
    t.get((person, seq)).unwrap().unwrap().value().to_vec()
}

#[test]
fn file_holds_no_plaintext_labels_external_ids_or_vectors() {
    let f = fixture();
    let raw = std::fs::read(&f.store).unwrap();
    for id in ["alice", "bob"] {
        assert!(
            !contains(&raw, format!("{LABEL}-{id}").as_bytes()),
            "label in clear"
        );
        assert!(!contains(&raw, LABEL.as_bytes()), "label prefix in clear");
        assert!(!contains(&raw, EXTERNAL.as_bytes()), "external id in clear");
    }
    for seed in [0, 1, 10, 11] {
        let bytes = le_bytes(&vector(seed));
        // Any 8 consecutive floats of a template would be a recognisable fragment.
        for w in bytes.chunks(32) {
            assert!(
                !contains(&raw, w),
                "template fragment of seed {seed} in clear"
            );
        }
        let be: Vec<u8> = vector(seed).iter().flat_map(|x| x.to_be_bytes()).collect();
        assert!(
            !contains(&raw, &be[..32]),
            "big-endian template fragment in clear"
        );
    }
    // Sanity check of the probe itself: the data is really there, encrypted.
    let kek = Kek::from_key_file(&f.key).unwrap();
    let s = Store::open(&f.store, &kek).unwrap();
    assert_eq!(
        s.get_person("alice").unwrap().unwrap().label,
        format!("{LABEL}-alice")
    );
    let all = s.load_all_templates().unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].vector.as_slice(), vector(0).as_slice());
}

#[test]
fn flipped_byte_rejects_that_record_only() {
    let f = fixture();
    let sealed = raw_template(&f.store, "alice", 1);
    let mut raw = std::fs::read(&f.store).unwrap();
    let mut hits = 0;
    let mut i = 0;
    while let Some(pos) = raw[i..]
        .windows(sealed.len())
        .position(|w| w == sealed.as_slice())
    {
        let at = i + pos + sealed.len() / 2;
        raw[at] ^= 0x40;
        hits += 1;
        i = i + pos + 1;
    }
    assert!(hits >= 1, "sealed value not found in file");
    std::fs::write(&f.store, &raw).unwrap();

    let s = Store::open(&f.store, &Kek::from_key_file(&f.key).unwrap()).unwrap();
    match s.load_all_templates() {
        Err(StoreError::Integrity {
            table: "templates",
            row,
        }) => assert_eq!(row, "alice/1"),
        other => panic!("expected integrity error, got {other:?}"),
    }
    assert!(
        Matcher::from_store(&s, None).is_err(),
        "a tampered gallery must not be served"
    );
    assert!(s.templates_of("alice").is_err());
    assert_eq!(
        s.templates_of("bob").unwrap().len(),
        2,
        "other records stay readable"
    );
    assert!(
        s.get_person("alice").unwrap().is_some(),
        "person row itself untouched"
    );
    // Recovery path: removal works without decrypting the damaged record.
    s.remove_person("alice", "test").unwrap();
    assert_eq!(Matcher::from_store(&s, None).unwrap().len(), 2);
}

#[test]
fn values_moved_between_rows_or_tables_are_rejected() {
    let f = fixture();
    {
        let db = redb::Database::open(&f.store).unwrap();
        let txn = db.begin_write().unwrap();
        {
            use redb::ReadableTable;
            let mut t = txn.open_table(schema::TEMPLATES).unwrap();
            let alice1 = t.get(("alice", 1)).unwrap().unwrap().value().to_vec();
            let bob3 = t.get(("bob", 3)).unwrap().unwrap().value().to_vec();
            t.insert(("bob", 4), alice1.as_slice()).unwrap(); // other row, other person
            t.insert(("alice", 2), bob3.as_slice()).unwrap(); // other row, same table
            let mut p = txn.open_table(schema::PEOPLE).unwrap();
            let alice = p.get("alice").unwrap().unwrap().value().to_vec();
            p.insert("bob", alice.as_slice()).unwrap(); // swap personal fields
            p.insert("carol", bob3.as_slice()).unwrap(); // template value into people table
        }
        txn.commit().unwrap();
    }
    let s = Store::open(&f.store, &Kek::from_key_file(&f.key).unwrap()).unwrap();
    let err = |r: Result<_, StoreError>| match r {
        Err(StoreError::Integrity { table, row }) => format!("{table}:{row}"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("moved value was accepted"),
    };
    assert_eq!(err(s.templates_of("bob").map(|_| ())), "templates:bob/4");
    assert_eq!(
        err(s.templates_of("alice").map(|_| ())),
        "templates:alice/2"
    );
    assert_eq!(err(s.get_person("bob").map(|_| ())), "people:bob");
    assert_eq!(err(s.get_person("carol").map(|_| ())), "people:carol");
    assert!(s.get_person("alice").unwrap().is_some());
}

#[test]
fn wrong_key_is_refused_and_file_is_unchanged() {
    let f = fixture();
    let before = sha(&f.store);
    let listing = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let dir_before = listing(f.store.parent().unwrap());
    let other = Kek::generate_key_file(&f.store.with_file_name("other.key")).unwrap();
    match Store::open(&f.store, &other) {
        Err(StoreError::WrongKey { key_id, expected }) => {
            assert_eq!(key_id, other.id());
            assert_eq!(expected, Kek::from_key_file(&f.key).unwrap().id());
        }
        other => panic!("expected WrongKey, got {other:?}"),
    }
    assert_eq!(
        sha(&f.store),
        before,
        "store bytes changed by a refused open"
    );
    let mut dir_after = listing(f.store.parent().unwrap());
    dir_after.retain(|n| n != "other.key");
    assert_eq!(dir_after, dir_before, "files appeared next to the store");
    // The right key still works afterwards.
    Store::open(&f.store, &Kek::from_key_file(&f.key).unwrap()).unwrap();
}

#[test]
fn truncated_or_garbage_file_is_a_clear_error_and_untouched() {
    let f = fixture();
    let full = std::fs::read(&f.store).unwrap();
    let kek = Kek::from_key_file(&f.key).unwrap();
    for cut in [full.len() / 2, 4096, 100, 1] {
        std::fs::write(&f.store, &full[..cut]).unwrap();
        let before = sha(&f.store);
        match Store::open(&f.store, &kek) {
            Err(StoreError::Corrupt { .. }) => {}
            other => panic!("truncated to {cut}: expected Corrupt, got {other:?}"),
        }
        assert_eq!(
            sha(&f.store),
            before,
            "truncated file (cut {cut}) was modified"
        );
    }
    std::fs::write(&f.store, b"").unwrap();
    assert!(matches!(
        Store::open(&f.store, &kek),
        Err(StoreError::Corrupt { .. })
    ));
    std::fs::remove_file(&f.store).unwrap();
    assert!(matches!(
        Store::open(&f.store, &kek),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn newer_schema_is_refused_not_clobbered() {
    let f = fixture();
    {
        let db = redb::Database::open(&f.store).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(schema::META)
            .unwrap()
            .insert(schema::meta::SCHEMA_VERSION, 99u32.to_be_bytes().as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let before = sha(&f.store);
    match Store::open(&f.store, &Kek::from_key_file(&f.key).unwrap()) {
        Err(StoreError::NewerSchema {
            found: 99,
            supported,
        }) => assert_eq!(supported, schema::SCHEMA_VERSION),
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    assert_eq!(sha(&f.store), before);
}

#[test]
fn key_file_permissions_and_format_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    Kek::generate_key_file(&key).unwrap();
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        Kek::generate_key_file(&key).is_err(),
        "must not overwrite a key"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    match Kek::from_key_file(&key) {
        Err(e @ StoreError::KeyFile { .. }) => assert!(e.to_string().contains("chmod 600"), "{e}"),
        other => panic!("0644 key accepted: {other:?}"),
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    let hex_kek = Kek::from_key_file(&key).unwrap();
    // Raw 32-byte form of the same key has the same id.
    let raw = dir.path().join("raw");
    let text = std::fs::read_to_string(&key).unwrap();
    std::fs::write(&raw, hex::decode(text.trim()).unwrap()).unwrap();
    std::fs::set_permissions(&raw, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(Kek::from_key_file(&raw).unwrap().id(), hex_kek.id());
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "not a key\n").unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(
        Kek::from_key_file(&bad)
            .unwrap_err()
            .to_string()
            .contains("malformed")
    );
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&raw, &link).unwrap();
    assert!(
        Kek::from_key_file(&link).is_err(),
        "symlinked key files are refused"
    );
    assert!(
        !format!("{hex_kek:?}").contains(text.trim()),
        "Debug must not print key material"
    );
}
