//! The `facegate` CLI as scripts use it: JSON contract, verdicts, exit codes, model integrity.

use facegate_tests::*;
use serde_json::Value;

fn json_of(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

fn p(rel: &str) -> String {
    face(rel).display().to_string()
}

#[test]
fn compare_obama_same_and_obama_biden_different() {
    let same = json_of(&run_cli(&[
        "compare",
        &p("dev/obama/obama_1.jpg"),
        &p("dev/obama/obama_2.jpg"),
        "--json",
    ]));
    assert_eq!(same["same_person"], Value::Bool(true), "{same}");
    assert!((same["threshold"].as_f64().unwrap() - 0.363).abs() < 1e-6);
    let diff = json_of(&run_cli(&[
        "compare",
        &p("dev/obama/obama_1.jpg"),
        &p("dev/biden/biden_1.jpg"),
        "--json",
    ]));
    assert_eq!(diff["same_person"], Value::Bool(false), "{diff}");
    assert!(same["similarity"].as_f64().unwrap() > diff["similarity"].as_f64().unwrap());
    println!(
        "obama/obama {}  obama/biden {}",
        same["similarity"], diff["similarity"]
    );
}

#[test]
fn detect_json_contract_in_original_coordinates() {
    // obama_and_biden.jpg is larger than 640 px: coordinates must come back in the original image.
    let v = json_of(&run_cli(&[
        "detect",
        &p("dev/scenes/obama_and_biden.jpg"),
        "--json",
    ]));
    let frame = facegate::hal::Frame::open(face("dev/scenes/obama_and_biden.jpg")).unwrap();
    assert_eq!(v["width"].as_u64().unwrap(), frame.width() as u64);
    assert_eq!(v["height"].as_u64().unwrap(), frame.height() as u64);
    let faces = v["faces"].as_array().unwrap();
    assert!(faces.len() >= 2, "{v}");
    let reference = opencv_reference()
        .into_iter()
        .find(|i| i.file == "dev/scenes/obama_and_biden.jpg")
        .unwrap();
    let scale = frame.width() as f32 / reference.width as f32;
    for f in faces {
        let b: Vec<f32> = f["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(b.len(), 4);
        assert_eq!(f["landmarks"].as_array().unwrap().len(), 5);
        let s = f["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&s));
        // Each face maps onto a reference face scaled back to the original image.
        let ours = [b[0], b[1], b[2], b[3]];
        let best = reference
            .faces
            .iter()
            .map(|rf| facegate::detect::iou(&ours, &rf.bbox.map(|x| x * scale)))
            .fold(0.0f32, f32::max);
        assert!(
            best > 0.85,
            "face {ours:?} matches no reference face (best IoU {best})"
        );
    }
}

#[test]
fn embed_text_hides_vector_json_has_it() {
    let out = run_cli(&["embed", &p("dev/biden/biden_1.jpg")]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("128 dims") && text.contains("norm 1.0000"),
        "{text}"
    );
    let v = json_of(&run_cli(&["embed", &p("dev/biden/biden_1.jpg"), "--json"]));
    let e = v["embedding"].as_array().unwrap();
    assert_eq!(e.len(), 128);
    let norm: f64 = e
        .iter()
        .map(|x| x.as_f64().unwrap().powi(2))
        .sum::<f64>()
        .sqrt();
    assert!((norm - 1.0).abs() < 1e-4);
    assert!(v["face"]["box"].is_array());
}

#[test]
fn bad_inputs_exit_2_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    // Corrupt (truncated) JPEG.
    let bytes = std::fs::read(face("dev/obama/obama_1.jpg")).unwrap();
    let trunc = dir.path().join("trunc.jpg");
    std::fs::write(&trunc, &bytes[..600]).unwrap();
    let out = run_cli(&["detect", trunc.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("trunc.jpg"));
    // Not an image at all.
    let junk = dir.path().join("junk.png");
    std::fs::write(&junk, b"definitely not a png").unwrap();
    assert_eq!(
        run_cli(&["embed", junk.to_str().unwrap()]).status.code(),
        Some(2)
    );
    // A valid image with no face.
    let blank = dir.path().join("blank.png");
    image::RgbImage::from_pixel(320, 240, image::Rgb([120, 120, 120]))
        .save(&blank)
        .unwrap();
    let out = run_cli(&["embed", blank.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no face"));
    // Missing file.
    assert_eq!(
        run_cli(&["detect", "/nonexistent/face.jpg"]).status.code(),
        Some(2)
    );
    // Invalid threshold is refused, not clamped.
    let out = run_cli(&[
        "compare",
        &p("dev/obama/obama_1.jpg"),
        &p("dev/obama/obama_2.jpg"),
        "--threshold",
        "1.5",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn tampered_or_missing_model_is_refused_with_file_and_hash() {
    let src = models_dir();
    let manifest = facegate::models::Manifest::embedded();
    let sface = manifest.get("sface").unwrap();
    let dir = tempfile::tempdir().unwrap();
    for e in &manifest.models {
        std::fs::copy(src.join(&e.file), dir.path().join(&e.file)).unwrap();
    }
    let run = |args: &[&str]| {
        std::process::Command::new(facegate_bin())
            .args(args)
            .arg("--models")
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let img = p("dev/obama/obama_1.jpg");
    assert!(run(&["embed", &img]).status.success());
    // Flip one byte in the middle of the recogniser.
    let path = dir.path().join(&sface.file);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let out = run(&["embed", &img]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&sface.file) && err.contains(&sface.sha256),
        "{err}"
    );
    assert!(err.contains("integrity"), "{err}");
    // Truncate it.
    std::fs::write(&path, &bytes[..1000]).unwrap();
    let out = run(&["embed", &img]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("truncated") && err.contains(&sface.sha256),
        "{err}"
    );
    // Remove it; `models verify` reports it too.
    std::fs::remove_file(&path).unwrap();
    let out = run(&["compare", &img, &img]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("missing") && err.contains(&sface.sha256),
        "{err}"
    );
    let out = std::process::Command::new(facegate_bin())
        .args(["models", "verify", "--models"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL  sface"));
}

#[test]
fn models_fetch_installs_verified_files_from_a_mirror() {
    let dest = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(facegate_bin())
        .args(["models", "fetch", "--json", "--mirror"])
        .arg(shared_dir().join("models"))
        .arg("--dest")
        .arg(dest.path())
        .output()
        .unwrap();
    let v = json_of(&out);
    let n = v["models"].as_array().unwrap().len();
    assert!(n >= 7, "{v}");
    let out = std::process::Command::new(facegate_bin())
        .args(["models", "verify", "--models"])
        .arg(dest.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // No temp files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dest.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".part"))
        .collect();
    assert!(leftovers.is_empty());
}
