//! `facegate bench pad` on the labelled spoof set: the fused passive default must do at least
//! as well as the reference (onnxruntime MiniFASNet pair, single frame: 1 of 48 prints accepted,
//! i.e. 2 %, at 11 % BPCER), and the fused IR+depth policy must stop the simulated print, screen
//! and close-photo attacks. About 126 images × 4 models: tens of seconds.

use facegate_tests::*;
use serde_json::Value;

fn rate(v: &Value) -> f64 {
    v["errors"].as_f64().unwrap() / v["total"].as_f64().unwrap()
}

#[test]
fn bench_pad_meets_the_reference_and_the_synthetic_requirements() {
    let dataset = face("spoof").display().to_string();
    let r = run_cli_json(&[
        "bench",
        "pad",
        "--dataset",
        &dataset,
        "--synthetic",
        "20",
        "--json",
    ]);
    assert_eq!(r["images"], 126, "{}", r["per_species"]);
    let checks = r["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 5);
    let fused = checks
        .iter()
        .find(|c| c["name"] == "fused passive (default)")
        .unwrap();
    let d = &fused["default"]["rates"];
    println!("fused default: {d}");
    assert!(rate(&d["apcer"]["print"]) <= 1.0 / 48.0 + 1e-9, "{d}");
    assert_eq!(d["apcer"]["replay"]["errors"], 0, "{d}");
    assert!(rate(&d["bpcer"]) <= 0.11, "{d}");
    // An operating point with BPCER <= 5 % exists for the fused check.
    let b = &fused["at_max_bpcer"]["rates"];
    assert!(rate(&b["bpcer"]) <= 0.05, "{b}");
    // k-of-n over sequences is reported.
    assert_eq!(r["fused_k_of_n"]["k"], 2);
    assert!(
        r["fused_k_of_n"]["default"]["rates"]["bpcer"]["total"]
            .as_u64()
            .unwrap()
            > 0
    );
    // Synthetic: labelled, fused IR+depth stops print, screen and held-close attacks.
    let s = &r["synthetic"];
    assert_eq!(s["simulated"], true);
    let rows = s["rows"].as_array().unwrap();
    let f = rows
        .iter()
        .find(|x| x["check"] == "fused_ir_depth")
        .unwrap();
    for k in [
        "flat_print",
        "curved_print",
        "screen_replay",
        "held_close_photo",
    ] {
        assert_eq!(f["apcer"][k]["errors"], 0, "{k}: {f}");
    }
    assert_eq!(f["bpcer"]["errors"], 0, "{f}");
}
