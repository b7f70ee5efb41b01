//! `facegate liveness` and `facegate devices` as scripts use them (JSON contract, exit codes).

use facegate::liveness::depth_file;
use facegate_tests::*;
use serde_json::Value;

fn p(rel: &str) -> String {
    face(rel).display().to_string()
}

fn check_contract(v: &Value) {
    assert!(v["live"].is_boolean(), "{v}");
    let checks = v["checks"].as_array().expect("checks array");
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["passive", "ir", "depth"]);
    for c in checks {
        assert!(c["pass"].is_boolean() && c["reason"].is_string(), "{c}");
        assert!(c["score"].is_number() || c["score"].is_null(), "{c}");
    }
    assert!(v["faults"].is_array());
}

#[test]
fn printed_photo_is_not_live_and_live_face_is() {
    let f1 = run_cli_json(&["liveness", &p("spoof-samples/minivision_F1.jpg"), "--json"]);
    check_contract(&f1);
    assert_eq!(f1["live"], false, "{f1}");
    assert_eq!(f1["checks"][0]["pass"], false);
    let t1 = run_cli_json(&["liveness", &p("spoof-samples/minivision_T1.jpg"), "--json"]);
    check_contract(&t1);
    assert_eq!(t1["live"], true, "{t1}");
    assert!(t1["checks"][0]["score"].as_f64().unwrap() >= 0.5);
    // Without IR/depth input those checks say so and do not count (RGB-only default policy).
    for i in [1, 2] {
        let c = &t1["checks"][i];
        assert_eq!(
            (c["pass"].as_bool(), c["required"].as_bool()),
            (Some(false), Some(false))
        );
        assert!(c["reason"].as_str().unwrap().contains("absent"), "{c}");
    }
}

#[test]
fn a_flat_depth_map_denies_a_live_looking_image() {
    // T1 passes the passive check, but the depth sensor sees a flat surface: a photo.
    let img = face("spoof-samples/minivision_T1.jpg");
    let frame = facegate::hal::Frame::open(&img).unwrap();
    let (w, h) = (frame.width(), frame.height());
    let flat = facegate::hal::DepthMap::new(w, h, vec![600; (w * h) as usize]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flat.png");
    depth_file::write_png(&path, &flat).unwrap();
    let v = run_cli_json(&[
        "liveness",
        &img.display().to_string(),
        "--depth",
        &path.display().to_string(),
        "--json",
    ]);
    check_contract(&v);
    assert_eq!(v["live"], false, "{v}");
    let d = &v["checks"][2];
    assert_eq!(
        (d["required"].as_bool(), d["pass"].as_bool()),
        (Some(true), Some(false))
    );
    assert!(d["reason"].as_str().unwrap().contains("flat"), "{d}");
    // An 8-bit image given as depth is refused as bad input (exit 2).
    let out = run_cli(&[
        "liveness",
        &img.display().to_string(),
        "--depth",
        &img.display().to_string(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn devices_lists_or_says_there_are_none() {
    let v = run_cli_json(&["devices", "--json"]);
    assert!(v["devices"].is_array(), "{v}");
    let out = run_cli(&["devices"]);
    assert!(out.status.success());
    if v["devices"].as_array().unwrap().is_empty() {
        assert!(String::from_utf8_lossy(&out.stdout).contains("no V4L2 devices"));
    }
}
