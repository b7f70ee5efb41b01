//! Key-rotation crash safety.
//!
//! The rotation runs in a child process (this test binary re-invoked with an env var) which
//! aborts — like a power cut or `kill -9` — right after each atomic step, and in a second test
//! is SIGKILLed at random moments while rotating in a loop. After every crash the parent checks:
//! the key currently in the key file opens the store, at most the old and the new key ids are
//! accepted, every template decrypts to its original value, and after the next open/rotation
//! exactly one key remains.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use facegate::store::{
    EMBEDDING_DIM, Kek, NewPerson, NewTemplate, RotationStep, Store, StoreError,
};

const CHILD_DIR: &str = "FACEGATE_TEST_ROTATION_DIR";
const CHILD_ABORT_AT: &str = "FACEGATE_TEST_ROTATION_ABORT_AT";

fn vector(seed: u32) -> Vec<f32> {
    (0..EMBEDDING_DIM)
        .map(|i| ((seed * 7 + i as u32) as f32 * 0.13).cos())
        .collect()
}

fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("facegate.redb"), dir.join("facegate.key"))
}

fn setup(dir: &Path) {
    let (store, key) = paths(dir);
    let kek = Kek::generate_key_file(&key).unwrap();
    let s = Store::create(&store, &kek, "test").unwrap();
    for p in 0..5u32 {
        let person = NewPerson {
            id: format!("p{p}"),
            label: format!("Person {p}"),
            external_id: None,
        };
        let t: Vec<_> = (0..3)
            .map(|j| NewTemplate::anchor(vector(p * 10 + j), "m", "1"))
            .collect();
        s.add_person(&person, &t, "test").unwrap();
    }
}

fn step_name(s: RotationStep) -> String {
    format!("{s:?}")
}

/// Child side: does nothing unless the parent set the env vars.
#[test]
fn rotation_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let (store, key) = paths(Path::new(&dir));
    let abort_at = std::env::var(CHILD_ABORT_AT).ok();
    loop {
        let mut hook = |s: RotationStep| {
            if abort_at.as_deref() == Some(step_name(s).as_str()) {
                std::process::abort();
            }
        };
        Store::rotate_key_file_with_hook(&store, &key, "test", &mut hook).unwrap();
        if abort_at.is_some() {
            return; // step never reached (e.g. ResolvedStale without a pending rotation)
        }
    }
}

fn child(dir: &Path) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["rotation_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir);
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    c
}

fn temp_key(key: &Path) -> PathBuf {
    PathBuf::from(format!("{}.new", key.display()))
}

/// The invariant after any crash. Returns the number of key slots seen before recovery.
fn check_after_crash(dir: &Path) -> usize {
    let (store, key) = paths(dir);
    let info = Store::inspect(&store).expect("store readable without repair after a crash");
    let current = Kek::from_key_file(&key).expect("key file intact");
    assert!(
        info.key_ids.contains(&current.id().to_string()),
        "key in key file does not open the store: {info:?}"
    );
    assert!(
        info.key_ids.len() <= 2,
        "more than two key slots: {:?}",
        info.key_ids
    );
    if info.key_ids.len() == 2 {
        let (old, new) = info
            .rotation_pending
            .clone()
            .expect("two slots only mid-rotation");
        assert!(old == current.id() || new == current.id());
    }
    let slots_before = info.key_ids.len();
    // A wrong key right after the crash is refused without touching the (unrepaired) file.
    let before = std::fs::read(&store).unwrap();
    let stranger = Kek::from_secret(
        facegate::store::SecretKey::random().unwrap(),
        facegate::store::KekSource::Memory,
    );
    assert!(matches!(
        Store::open(&store, &stranger),
        Err(StoreError::WrongKey { .. })
    ));
    assert!(
        std::fs::read(&store).unwrap() == before,
        "refused open modified the file"
    );
    let s = Store::open(&store, &current).expect("store opens with the key file");
    let all = s.load_all_templates().expect("all templates decrypt");
    assert_eq!(all.len(), 15);
    for t in &all {
        let p: u32 = t.person_id[1..].parse().unwrap();
        let j = (t.meta.seq - 1) % 3;
        assert_eq!(
            t.vector.as_slice(),
            vector(p * 10 + j as u32).as_slice(),
            "template {}/{} changed",
            t.person_id,
            t.meta.seq
        );
    }
    s.verify_audit().expect("audit chain intact");
    drop(s);
    slots_before
}

/// After recovery exactly one key opens the store: the one in the key file.
fn check_exactly_one(dir: &Path, other_keys: &[Kek]) {
    let (store, key) = paths(dir);
    let current = Kek::from_key_file(&key).unwrap();
    let info = Store::inspect(&store).unwrap();
    assert_eq!(info.key_ids, vec![current.id().to_string()]);
    for k in other_keys.iter().filter(|k| k.id() != current.id()) {
        assert!(matches!(
            Store::open(&store, k),
            Err(StoreError::WrongKey { .. })
        ));
    }
}

#[test]
fn crash_after_every_rotation_step_leaves_a_store_that_opens() {
    let steps = [
        "Opened",
        "WroteNewKeyFile",
        "CommittedBothSlots",
        "SwappedKeyFile",
        "Finished",
    ];
    for step in steps {
        let dir = tempfile::tempdir().unwrap();
        setup(dir.path());
        let (_, key) = paths(dir.path());
        let old = Kek::from_key_file(&key).unwrap();
        let status = child(dir.path())
            .env(CHILD_ABORT_AT, step)
            .status()
            .unwrap();
        assert!(!status.success(), "child did not crash at {step}");
        let slots = check_after_crash(dir.path());
        let new = Kek::from_key_file(&key).unwrap();
        let tmp_new = Kek::from_key_file(&temp_key(&key)).ok();
        match step {
            "Opened" => assert_eq!((new.id(), slots), (old.id(), 1)),
            "WroteNewKeyFile" => assert_eq!((new.id(), slots), (old.id(), 1)),
            "CommittedBothSlots" => {
                assert_eq!((new.id(), slots), (old.id(), 2));
                // Both keys work until the rotation is resolved.
                let pending = tmp_new.expect("new key still in KEYFILE.new");
                Store::inspect(&paths(dir.path()).0).unwrap();
                // Re-running rotation discards the half-made slot and finishes cleanly.
                Store::rotate_key_file(&paths(dir.path()).0, &key, "test").unwrap();
                check_after_crash(dir.path());
                check_exactly_one(dir.path(), &[old, pending]);
                continue;
            }
            "SwappedKeyFile" => {
                assert_ne!(new.id(), old.id());
                assert_eq!(slots, 2, "old slot still present before step 4");
            }
            _ => assert_ne!(new.id(), old.id()),
        }
        // check_after_crash opened with the key file, which completes an interrupted rotation.
        check_exactly_one(dir.path(), &[old, new]);
        assert!(!temp_key(&key).exists() || step == "WroteNewKeyFile");
        // And a further rotation still works.
        Store::rotate_key_file(&paths(dir.path()).0, &key, "test").unwrap();
        check_after_crash(dir.path());
    }
}

#[test]
fn crash_while_resolving_a_stale_rotation() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let status = child(dir.path())
        .env(CHILD_ABORT_AT, "CommittedBothSlots")
        .status()
        .unwrap();
    assert!(!status.success());
    let status = child(dir.path())
        .env(CHILD_ABORT_AT, "ResolvedStale")
        .status()
        .unwrap();
    assert!(
        !status.success(),
        "second rotation should have found the stale one"
    );
    check_after_crash(dir.path());
    Store::rotate_key_file(&paths(dir.path()).0, &paths(dir.path()).1, "test").unwrap();
    check_after_crash(dir.path());
    check_exactly_one(dir.path(), &[]);
}

#[test]
fn random_sigkill_during_rotation_loop() {
    use rand::Rng;
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let mut rng = rand::rng();
    let rounds: u32 = std::env::var("FACEGATE_TEST_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let mut saw_two_slots = 0;
    for _ in 0..rounds {
        let mut c = child(dir.path()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(5..120)));
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
        if check_after_crash(dir.path()) == 2 {
            saw_two_slots += 1;
        }
    }
    let (_, key) = paths(dir.path());
    Store::rotate_key_file(&paths(dir.path()).0, &key, "test").unwrap();
    check_exactly_one(dir.path(), &[]);
    eprintln!("{rounds} kills, {saw_two_slots} landed mid-rotation");
}
