//! The IR and depth checks and the fusion policy on the SIMULATED attack suite, plus the
//! policy's behaviour on missing/faulty sensors and a dead IR emitter (through the HAL's
//! simulated devices). No models needed: these run in a second or two.

use std::time::{Duration, Instant};

use facegate::hal::sim::{SimDepth, SimIr};
use facegate::hal::{DepthSource, ErrorKind, IrEmitter, IrSource};
use facegate::liveness::pad::{SyntheticCheck, evaluate_synthetic};
use facegate::liveness::synthetic::{self, AttackKind, SyntheticSample};
use facegate::liveness::*;

const SEED: u64 = 20240611;
const PER_KIND: usize = 40;

fn policy(required: &[CheckKind]) -> LivenessPolicy {
    let c = LivenessConfig {
        required: required.to_vec(),
        ..Default::default()
    };
    LivenessPolicy::new(c, Some(SyntheticSample::registration().unwrap())).unwrap()
}

fn live_scores() -> PassiveScores {
    PassiveScores {
        v2_logits: [0.0, 5.0, 0.0],
        v1se_logits: [0.0, 5.0, 0.0],
        m128_logits: [5.0, 0.0],
        v2_live: 0.99,
        v1se_live: 0.99,
        m128_live: 0.99,
        fused: 0.99,
    }
}

#[test]
fn fused_ir_depth_stops_prints_screens_and_close_photos_and_accepts_live() {
    let r = evaluate_synthetic(&LivenessConfig::default(), SEED, PER_KIND).unwrap();
    assert!(r.simulated);
    let fused = r
        .rows
        .iter()
        .find(|x| x.check == SyntheticCheck::FusedIrDepth)
        .unwrap();
    for kind in [
        "flat_print",
        "curved_print",
        "screen_replay",
        "held_close_photo",
    ] {
        assert_eq!(
            fused.apcer[kind].errors, 0,
            "{kind}: {:?}",
            fused.apcer[kind]
        );
        assert_eq!(fused.apcer[kind].total, PER_KIND);
    }
    assert_eq!(
        fused.bpcer.errors, 0,
        "simulated live faces rejected: {:?}",
        fused.bpcer
    );
    assert_eq!(
        r.dead_emitter_detected.errors, PER_KIND,
        "every dead emitter reported"
    );
    assert_eq!(r.emitter_false_alarms.errors, 0);
}

#[test]
fn each_check_alone_has_known_blind_spots() {
    let r = evaluate_synthetic(&LivenessConfig::default(), SEED, PER_KIND).unwrap();
    let row = |c| r.rows.iter().find(|x| x.check == c).unwrap();
    let depth = row(SyntheticCheck::DepthAlone);
    // A rigid mask has a face's relief and size: depth alone cannot stop it.
    assert_eq!(depth.apcer["rigid_mask"].errors, PER_KIND);
    for kind in [
        "flat_print",
        "curved_print",
        "screen_replay",
        "held_close_photo",
    ] {
        assert_eq!(depth.apcer[kind].errors, 0, "depth alone missed {kind}");
    }
    // NIR reflectance alone cannot tell skin from bright paper or skin-toned mask material.
    let ir = row(SyntheticCheck::IrAlone);
    assert!(ir.apcer["flat_print"].errors > 0);
    assert!(ir.apcer["rigid_mask"].errors > PER_KIND / 2);
    assert_eq!(ir.apcer["held_close_photo"].errors, 0);
    assert_eq!(ir.bpcer.errors, 0);
    // The fused policy inherits the mask blind spot: it is reported, not hidden.
    assert!(row(SyntheticCheck::FusedIrDepth).apcer["rigid_mask"].errors > 0);
}

#[test]
fn missing_or_faulty_required_sensor_denies_with_a_reason() {
    let s = synthetic::generate(AttackKind::Live, SEED, 0);
    let p = policy(&[CheckKind::Passive, CheckKind::Ir, CheckKind::Depth]);
    let all = Evidence {
        passive: Reading::Present(live_scores()),
        ir: Reading::Present(IrPair {
            lit: &s.ir_on,
            unlit: Some(&s.ir_off),
        }),
        depth: Reading::Present(&s.depth),
        challenge: None,
    };
    let v = p.evaluate(&s.face_box, &all);
    assert!(v.live, "{:#?}", v.checks);
    assert!(v.faults.is_empty());

    // IR camera absent.
    let v = p.evaluate(
        &s.face_box,
        &Evidence {
            ir: Reading::Absent,
            ..all.clone()
        },
    );
    assert!(!v.live);
    let ir = v.check("ir").unwrap();
    assert!(ir.required && !ir.pass && ir.score.is_none());
    assert_eq!(ir.status, CheckStatus::Absent);
    assert!(
        ir.reason.contains("required") && ir.reason.contains("deny"),
        "{}",
        ir.reason
    );

    // Depth sensor disconnected mid-stream (HAL simulated device with an injected fault).
    let mut dev = SimDepth::new(SyntheticSample::intrinsics(), vec![s.depth.clone()]);
    dev.fault_switch().set(ErrorKind::Disconnected);
    let err = dev.next_depth().unwrap_err().to_string();
    let v = p.evaluate(
        &s.face_box,
        &Evidence {
            depth: Reading::Faulty(err),
            ..all.clone()
        },
    );
    assert!(!v.live);
    assert_eq!(v.faults[0].source, FaultSource::Depth);
    let d = v.check("depth").unwrap();
    assert_eq!(d.status, CheckStatus::Fault);
    assert!(
        d.reason.contains("SIMULATED") && d.reason.contains("deny"),
        "{}",
        d.reason
    );

    // A sensor that is not required may be absent: the RGB-only default stays live.
    let rgb_only = policy(&[CheckKind::Passive]);
    let v = rgb_only.evaluate(
        &s.face_box,
        &Evidence {
            passive: Reading::Present(live_scores()),
            ..Evidence::none()
        },
    );
    assert!(v.live);
    assert_eq!(v.check("depth").unwrap().status, CheckStatus::Disabled);
    // ... but its required passive input missing denies.
    assert!(!rgb_only.evaluate(&s.face_box, &Evidence::none()).live);
}

#[test]
fn dead_ir_emitter_is_reported_as_a_fault() {
    let s = synthetic::generate(AttackKind::Live, SEED, 1);
    let mut cam = SimIr::with_emitter(vec![s.ir_on.clone()], vec![s.ir_off.clone()]);
    let pair = |cam: &mut SimIr| {
        cam.set_emitter(true).unwrap();
        let on = cam.next_ir().unwrap().frame;
        cam.set_emitter(false).unwrap();
        let off = cam.next_ir().unwrap().frame;
        (on, off)
    };
    let p = policy(&[CheckKind::Ir, CheckKind::Depth]);
    let (on, off) = pair(&mut cam);
    let ev = |on, off| Evidence {
        passive: Reading::Absent,
        ir: Reading::Present(IrPair {
            lit: on,
            unlit: Some(off),
        }),
        depth: Reading::Present(&s.depth),
        challenge: None,
    };
    let v = p.evaluate(&s.face_box, &ev(&on, &off));
    assert!(v.live && v.faults.is_empty(), "{:#?}", v);

    cam.set_dead_emitter(true); // LEDs dead, driver still says OK
    let (on, off) = pair(&mut cam);
    let v = p.evaluate(&s.face_box, &ev(&on, &off));
    assert!(!v.live);
    assert_eq!(v.faults.len(), 1);
    assert_eq!(v.faults[0].source, FaultSource::IrEmitter);
    assert!(
        v.faults[0].detail.contains("self-test"),
        "{}",
        v.faults[0].detail
    );
    assert_eq!(v.check("ir").unwrap().status, CheckStatus::Fault);
    // The IR check not being required does not hide the fault either.
    let v = policy(&[CheckKind::Depth]).evaluate(&s.face_box, &ev(&on, &off));
    assert!(v.live, "depth alone decides");
    assert_eq!(v.faults[0].source, FaultSource::IrEmitter);
}

#[test]
fn k_of_n_aggregates_one_track() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let mut a = TrackAggregator::new(FrameWindow {
        k: 2,
        n: 3,
        max_gap_ms: 200,
    })
    .unwrap();
    let seq = [
        (true, false),  // T: 1 of 1
        (false, false), // T F
        (true, true),   // T F T: 2 of 3
        (true, true),   // F T T
        (false, true),  // T T F
        (false, false), // T F F
    ];
    for (i, (frame, want)) in seq.iter().enumerate() {
        assert_eq!(
            a.push(9, at(i as u64 * 40), *frame).live,
            *want,
            "frame {i}"
        );
    }
    // A different track never inherits passes.
    a.push(9, at(300), true);
    assert!(!a.push(10, at(320), true).live);
    assert!(
        TrackAggregator::new(FrameWindow {
            k: 0,
            n: 3,
            max_gap_ms: 200
        })
        .is_err()
    );
}

#[test]
fn invalid_policy_is_refused_not_defaulted() {
    for bad in [
        "required = []",
        "[ir]\nmin_relative_albedo = 2.0\nmax_relative_albedo = 1.0",
        "[depth]\nmin_valid_fraction = 0.0",
        "[frames]\nk = 5\nn = 3",
        "[challenge]\nmin_turn_deg = 5.0",
    ] {
        assert!(LivenessConfig::from_toml(bad).is_err(), "accepted: {bad}");
    }
}
