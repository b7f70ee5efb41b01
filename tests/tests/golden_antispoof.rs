//! Golden tests for the passive anti-spoof check against onnxruntime on the same boxes and crops.

use facegate::hal::Frame;
use facegate_tests::*;
use serde_json::Value;

fn arr<const N: usize>(v: &Value) -> [f32; N] {
    let a: Vec<f32> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    a.try_into().unwrap()
}

#[test]
fn antispoof_logits_match_onnxruntime() {
    let p = passive();
    let text =
        std::fs::read_to_string(shared_dir().join("reference/onnxruntime_antispoof.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    let mut worst = 0.0f32;
    let mut n = 0;
    let mut bad = Vec::new();
    for img in reference["images"].as_array().unwrap() {
        let Some(b) = img.get("box") else { continue };
        let file = img["file"].as_str().unwrap();
        let frame = Frame::open(face(file)).unwrap();
        let bbox: [f32; 4] = arr(b);
        let f = facegate::detect::Face {
            bbox,
            landmarks: [[0.0; 2]; 5],
            score: 1.0,
        };
        let s = p.score(&frame, &f).unwrap();
        let pairs: [(&str, &[f32], [f32; 3]); 2] = [
            (
                "MiniFASNetV2_logits",
                &s.v2_logits,
                arr(&img["MiniFASNetV2_logits"]),
            ),
            (
                "MiniFASNetV1SE_logits",
                &s.v1se_logits,
                arr(&img["MiniFASNetV1SE_logits"]),
            ),
        ];
        let mut err = 0.0f32;
        let mut which = Vec::new();
        for (name, ours, theirs) in pairs {
            for (a, b) in ours.iter().zip(theirs) {
                if (a - b).abs() > 1e-3 && !which.contains(&name) {
                    which.push(name);
                }
                err = err.max((a - b).abs());
            }
        }
        let m: [f32; 2] = arr(&img["minifas_128_logits"]);
        for (a, b) in s.m128_logits.iter().zip(m) {
            if (a - b).abs() > 1e-3 && !which.contains(&"minifas_128_logits") {
                which.push("minifas_128_logits");
            }
            err = err.max((a - b).abs());
        }
        worst = worst.max(err);
        n += 1;
        if err > 1e-3 {
            bad.push(format!("{file}: max logit error {err:.2e} in {which:?}"));
        }
    }
    println!("{n} images: worst logit error vs onnxruntime {worst:.2e}");
    assert!(n >= 100, "only {n} reference images");
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn printed_photo_samples_rejected_live_faces_pass() {
    let p = passive();
    let v = vision();
    let score = |path: std::path::PathBuf| {
        let frame = Frame::open(&path).unwrap();
        let faces = v.detect(&frame).unwrap();
        let i = facegate::detect::largest(&faces)
            .unwrap_or_else(|| panic!("no face in {}", path.display()));
        let s = p.score(&frame, &faces[i]).unwrap();
        println!(
            "{:<50} fused {:.3} (V2 {:.3}, V1SE {:.3}, m128 {:.3})",
            path.display(),
            s.fused,
            s.v2_live,
            s.v1se_live,
            s.m128_live
        );
        p.passes(&s)
    };
    assert!(
        !score(face("spoof-samples/minivision_F1.jpg")),
        "F1 (print) passed"
    );
    assert!(
        !score(face("spoof-samples/minivision_F2.jpg")),
        "F2 (print) passed"
    );
    assert!(
        score(face("spoof-samples/minivision_T1.jpg")),
        "T1 (live) rejected"
    );
    let mut rejected = Vec::new();
    for (_, imgs) in dev_people() {
        for img in imgs {
            if !score(img.clone()) {
                rejected.push(img.display().to_string());
            }
        }
    }
    assert!(
        rejected.is_empty(),
        "live dev images rejected: {rejected:?}"
    );
}
