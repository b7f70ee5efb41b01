//! `facegate eval pairs` end to end: the shipped dev pairs file through the real binary, both CSV
//! dialects, and the error paths (bad label, missing image, image without a face).

use std::path::{Path, PathBuf};

use facegate_tests::*;
use serde_json::Value;

fn pairs_file() -> PathBuf {
    repo_root().join("bench/pairs/dev-pairs.csv")
}

fn faces_root() -> String {
    shared_dir().join("faces").display().to_string()
}

fn eval_json(pairs: &Path) -> Value {
    run_cli_json(&[
        "eval",
        "pairs",
        "--pairs",
        &pairs.display().to_string(),
        "--root",
        &faces_root(),
        "--json",
    ])
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn dev_pairs_are_all_correct_at_the_default_threshold() {
    let r = eval_json(&pairs_file());
    // 15 dev images of 6 people: 13 same-person pairs, 92 different-person pairs.
    assert_eq!(r["pairs"], 105, "{r}");
    assert_eq!(r["same_pairs"], 13);
    assert_eq!(r["different_pairs"], 92);
    assert_eq!(r["images"], 15);
    assert_eq!(r["no_face_images"].as_array().unwrap().len(), 0);
    assert_eq!(r["missing_face_same_pairs"], 0);
    assert_eq!(r["missing_face_different_pairs"], 0);
    assert!((f(&r["threshold"]) - 0.363).abs() < 1e-6);
    assert_eq!(f(&r["accuracy"]), 1.0);
    assert_eq!(
        (r["false_accepts"].clone(), r["false_rejects"].clone()),
        (0.into(), 0.into())
    );
    // The golden tests measure min same 0.6765 and max different 0.2895 on these images.
    let (min_same, max_diff) = (f(&r["min_same"]), f(&r["max_different"]));
    assert!((min_same - 0.6765).abs() < 1e-3, "min same {min_same}");
    assert!((max_diff - 0.2895).abs() < 1e-3, "max different {max_diff}");
    assert_eq!(f(&r["best_accuracy"]), 1.0);
    assert_eq!(f(&r["best_range"][0]), max_diff);
    assert_eq!(f(&r["best_range"][1]), min_same);
    let best = f(&r["best_threshold"]);
    assert!(best > max_diff && best <= min_same, "best threshold {best}");
    // 92 negatives cannot resolve FAR 1 % (0.92 false accepts): both points are TAR at FAR 0.
    let tars = r["tar_at_far"].as_array().unwrap();
    assert_eq!(tars.len(), 2);
    for (t, target) in tars.iter().zip([0.01, 0.001]) {
        assert_eq!(f(&t["target_far"]), target);
        assert_eq!(f(&t["tar"]), 1.0);
        assert_eq!(f(&t["achieved_far"]), 0.0);
        assert_eq!(t["false_accepts"], 0);
        assert_eq!(t["negatives"], 92);
        assert_eq!(t["below_resolution"], true);
        assert!(f(&t["threshold"]) > max_diff && f(&t["threshold"]) < max_diff + 1e-6);
    }
    assert_eq!(f(&r["eer"]["eer"]), 0.0);
    assert!(r["far_method"].as_str().unwrap().contains("FAR <= target"));
}

#[test]
fn yes_no_dialect_and_text_output() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("pairs.csv");
    std::fs::write(
        &csv,
        "file_x,file_y,decision\n\
         dev/obama/obama_1.jpg,dev/obama/obama_2.jpg,Yes\n\
         dev/obama/obama_1.jpg,dev/biden/biden_1.jpg,No\n",
    )
    .unwrap();
    let r = eval_json(&csv);
    assert_eq!(
        (r["pairs"].clone(), r["same_pairs"].clone()),
        (2.into(), 1.into())
    );
    assert_eq!(r["images"], 3);
    assert_eq!(f(&r["accuracy"]), 1.0);

    let out = run_cli(&[
        "eval",
        "pairs",
        "--pairs",
        &csv.display().to_string(),
        "--root",
        &faces_root(),
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("accuracy at threshold 0.363: 100.00 %"),
        "{text}"
    );
    assert!(text.contains("TAR @ FAR 1.00 %"), "{text}");

    // A label of the other dialect is refused with its line number.
    std::fs::write(
        &csv,
        "file_x,file_y,decision\ndev/obama/obama_1.jpg,dev/obama/obama_2.jpg,Yes\na.jpg,b.jpg,1\n",
    )
    .unwrap();
    let out = run_cli(&[
        "eval",
        "pairs",
        "--pairs",
        &csv.display().to_string(),
        "--root",
        &faces_root(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("Yes/No"), "{err}");
}

#[test]
fn missing_image_is_bad_input_and_faceless_image_counts_as_errors() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("pairs.csv");
    std::fs::write(
        &csv,
        "a,b,same\ndev/obama/obama_1.jpg,dev/obama/obama_2.jpg,1\ndev/obama/no_such.jpg,dev/obama/obama_2.jpg,1\n",
    )
    .unwrap();
    let out = run_cli(&[
        "eval",
        "pairs",
        "--pairs",
        &csv.display().to_string(),
        "--root",
        &faces_root(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 3") && err.contains("no_such.jpg"),
        "{err}"
    );

    // A grey image has no face: its pairs stay in every denominator and count as errors.
    let blank = dir.path().join("blank.png");
    image::RgbImage::from_pixel(320, 240, image::Rgb([128, 128, 128]))
        .save(&blank)
        .unwrap();
    let b = blank.display();
    std::fs::write(
        &csv,
        format!(
            "a,b,same\n\
             dev/obama/obama_1.jpg,dev/obama/obama_2.jpg,1\n\
             dev/obama/obama_1.jpg,{b},1\n\
             {b},dev/biden/biden_1.jpg,0\n\
             dev/obama/obama_1.jpg,dev/biden/biden_1.jpg,0\n"
        ),
    )
    .unwrap();
    let r = eval_json(&csv);
    assert_eq!(r["pairs"], 4);
    assert_eq!(r["no_face_images"], serde_json::json!([b.to_string()]));
    assert_eq!(r["missing_face_same_pairs"], 1);
    assert_eq!(r["missing_face_different_pairs"], 1);
    assert_eq!(f(&r["accuracy"]), 0.5);
    assert_eq!(f(&r["best_accuracy"]), 0.5);
    assert_eq!(r["false_rejects"], 1);
    assert_eq!(r["false_accepts"], 0);
    assert_eq!(f(&r["tar_at_far"][0]["tar"]), 0.5);
    assert_eq!(r["tar_at_far"][0]["negatives"], 2);
}
