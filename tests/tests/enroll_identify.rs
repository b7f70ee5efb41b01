//! Enrolment and identification end to end through the CLI, against a scratch encrypted store.
//!
//! Issue #4: enrol the dev people (two images each where available), identify every remaining
//! image correctly, reject an unenrolled person and a printed photo, refuse a duplicate enrolment.

use std::path::Path;

use facegate_tests::*;
use serde_json::Value;

fn cli(store: &Path, key: &Path, args: &[&str]) -> std::process::Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend([
        "--store",
        store.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    run_cli(&all)
}

fn json_ok(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn enrol_dev_people_then_identify_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = (dir.path().join("s.redb"), dir.path().join("k.key"));
    let out = run_cli(&[
        "keys",
        "init",
        "--create-key-file",
        "--store",
        store.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // One person stays unenrolled to prove unknown faces are rejected.
    let unenrolled = "anthony_hopkins";
    let mut remaining = Vec::new();
    for (person, imgs) in dev_people() {
        if person == unenrolled {
            remaining.extend(imgs.into_iter().map(|p| (None, p)));
            continue;
        }
        let (enrol, rest) = imgs.split_at(imgs.len().min(2));
        let mut args = vec!["enroll", "--id", &person, "--label", &person, "--json"];
        let paths: Vec<String> = enrol.iter().map(|p| p.display().to_string()).collect();
        args.extend(paths.iter().map(|s| s.as_str()));
        let v = json_ok(&cli(&store, &key, &args));
        println!("enrolled {person}: {v}");
        assert!(v["templates"].as_u64().unwrap() >= 1);
        remaining.extend(rest.iter().cloned().map(|p| (Some(person.clone()), p)));
    }
    assert!(remaining.len() >= 4, "{remaining:?}");
    for (expected, img) in &remaining {
        let v = json_ok(&cli(
            &store,
            &key,
            &["identify", img.to_str().unwrap(), "--json"],
        ));
        println!("{} -> {v}", img.display());
        match expected {
            Some(p) => {
                assert_eq!(v["decision"], "granted", "{}: {v}", img.display());
                assert_eq!(v["person"].as_str(), Some(p.as_str()));
            }
            None => {
                assert_eq!(v["decision"], "denied", "{}: {v}", img.display());
                assert_eq!(v["person"], Value::Null);
                assert_eq!(v["reason"], "below_threshold");
            }
        }
    }

    // A printed photo of an enrolled person is denied by liveness before matching.
    let v = json_ok(&cli(
        &store,
        &key,
        &[
            "identify",
            face("spoof-samples/minivision_F1.jpg").to_str().unwrap(),
            "--json",
        ],
    ));
    assert_eq!(v["decision"], "denied");
    assert_eq!(v["reason"], "liveness");

    // The same face under another id is refused, and nothing is written.
    let before = json_ok(&cli(&store, &key, &["people", "list", "--json"]));
    let obama4 = face("dev/obama/obama_4.jpg");
    let out = cli(
        &store,
        &key,
        &[
            "enroll",
            "--id",
            "someone_else",
            "--label",
            "x",
            obama4.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("matches enrolled person `obama`"), "{err}");
    let after = json_ok(&cli(&store, &key, &["people", "list", "--json"]));
    assert_eq!(before, after);

    // Enrolling the same id twice is refused too.
    let out = cli(
        &store,
        &key,
        &[
            "enroll",
            "--id",
            "obama",
            "--label",
            "x",
            obama4.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn enrolment_gates_give_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = (dir.path().join("s.redb"), dir.path().join("k.key"));
    assert!(
        run_cli(&[
            "keys",
            "init",
            "--create-key-file",
            "--store",
            store.to_str().unwrap(),
            "--key-file",
            key.to_str().unwrap()
        ])
        .status
        .success()
    );
    // Several faces, a printed photo, and a blank image: all refused with their reasons.
    let blank = dir.path().join("blank.png");
    image::RgbImage::from_pixel(200, 200, image::Rgb([90, 90, 90]))
        .save(&blank)
        .unwrap();
    let scene = face("dev/scenes/obama_and_biden.jpg");
    let print = face("spoof-samples/minivision_F2.jpg");
    let out = cli(
        &store,
        &key,
        &[
            "enroll",
            "--id",
            "p1",
            "--label",
            "x",
            scene.to_str().unwrap(),
            print.to_str().unwrap(),
            blank.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("faces in the image; enrolment needs exactly one"),
        "{err}"
    );
    assert!(err.contains("liveness check failed"), "{err}");
    assert!(err.contains("no face found"), "{err}");
    assert!(err.contains("all 3 rejected"), "{err}");
}
