//! Presentation-attack-detection metrics (ISO/IEC 30107-3) and the evaluations behind
//! `facegate bench pad`.
//!
//! - **APCER** (attack presentation classification error rate), per attack species: the fraction
//!   of attack presentations of that species accepted as live. ISO reports it per species (the
//!   worst one matters), never averaged over species.
//! - **BPCER** (bona fide presentation classification error rate): the fraction of live
//!   presentations rejected.
//!
//! A presentation where no face was detected has no score: a live one counts as a rejection
//! (the user is not let in), an attack one as rejected too (it is listed separately so a
//! detector failure is not mistaken for attack detection).
//!
//! **Sequences.** With k-of-n over frames, the unit is a sequence of frames of one presentation:
//! it is *accepted* if the [`TrackAggregator`] verdict was live after any of its frames (the
//! door opens at the first live verdict). Sequences with fewer than k frames can never be
//! accepted and are excluded from sequence-level rates (their number is reported).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::config::{CheckKind, FrameWindow, LivenessConfig};
use super::fusion::{Evidence, IrPair, LivenessPolicy, Reading};
use super::synthetic::{self, AttackKind, SyntheticSample};
use super::track::TrackAggregator;
use super::verdict::FaultSource;

/// `errors` out of `total`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Rate {
    /// Misclassified presentations.
    pub errors: usize,
    /// Presentations.
    pub total: usize,
}

impl Rate {
    /// The fraction, `None` when there is nothing to measure.
    pub fn value(&self) -> Option<f64> {
        (self.total > 0).then(|| self.errors as f64 / self.total as f64)
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.value() {
            Some(v) => write!(f, "{:5.1}% ({}/{})", v * 100.0, self.errors, self.total),
            None => write!(f, "  n/a (0)"),
        }
    }
}

/// One scored presentation (a frame).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scored {
    /// Attack species (`print`, `replay`, ...); `None` for bona fide.
    pub species: Option<String>,
    /// Live score; `None` when no face was detected.
    pub score: Option<f32>,
    /// Sequence the frame belongs to (frames of one video share it).
    pub group: String,
    /// Position of the frame in its sequence.
    pub order: u64,
}

/// APCER per species and BPCER at one operating point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rates {
    /// APCER per attack species.
    pub apcer: BTreeMap<String, Rate>,
    /// BPCER.
    pub bpcer: Rate,
    /// Attack presentations with no detected face (counted as rejected in APCER), per species.
    pub attack_no_face: BTreeMap<String, usize>,
    /// Bona fide presentations with no detected face (counted as errors in BPCER).
    pub bona_fide_no_face: usize,
}

/// Frame-level rates at `threshold` (live iff score >= threshold).
pub fn rates_at(samples: &[Scored], threshold: f32) -> Rates {
    let mut r = Rates {
        apcer: BTreeMap::new(),
        bpcer: Rate::default(),
        attack_no_face: BTreeMap::new(),
        bona_fide_no_face: 0,
    };
    for s in samples {
        let accepted = s.score.is_some_and(|v| v >= threshold);
        match &s.species {
            None => {
                r.bpcer.total += 1;
                r.bpcer.errors += usize::from(!accepted);
                r.bona_fide_no_face += usize::from(s.score.is_none());
            }
            Some(sp) => {
                let e = r.apcer.entry(sp.clone()).or_default();
                e.total += 1;
                e.errors += usize::from(accepted);
                if s.score.is_none() {
                    *r.attack_no_face.entry(sp.clone()).or_default() += 1;
                }
            }
        }
    }
    r
}

/// The largest threshold whose BPCER is at most `max_bpcer` (the most secure such operating
/// point), chosen among the bona fide scores; `None` if even accepting every scored bona fide
/// presentation exceeds it (e.g. too many without a detected face).
pub fn threshold_for_bpcer(
    samples: &[Scored],
    max_bpcer: f64,
    rates: impl Fn(f32) -> Rate,
) -> Option<f32> {
    let mut cands: Vec<f32> = samples
        .iter()
        .filter(|s| s.species.is_none())
        .filter_map(|s| s.score)
        .collect();
    cands.sort_by(|a, b| b.total_cmp(a));
    cands.dedup();
    cands
        .into_iter()
        .find(|&t| rates(t).value().is_some_and(|v| v <= max_bpcer + 1e-12))
}

/// Sequence-level rates at `threshold` with k-of-n aggregation (see the module doc). Returns
/// the rates and the number of sequences too short to be judged.
pub fn sequence_rates(samples: &[Scored], threshold: f32, window: FrameWindow) -> (Rates, usize) {
    let mut groups: BTreeMap<(Option<String>, String), Vec<&Scored>> = BTreeMap::new();
    for s in samples {
        groups
            .entry((s.species.clone(), s.group.clone()))
            .or_default()
            .push(s);
    }
    let mut seq = Vec::new();
    let mut short = 0;
    for ((species, group), mut frames) in groups {
        if frames.len() < window.k {
            short += 1;
            continue;
        }
        frames.sort_by_key(|s| s.order);
        let mut agg = TrackAggregator::new(window).expect("validated window");
        let t0 = Instant::now();
        let mut accepted = false;
        let mut no_face = true;
        for (i, f) in frames.iter().enumerate() {
            no_face &= f.score.is_none();
            let live = f.score.is_some_and(|v| v >= threshold);
            // Consecutive frames of one track, 1 ms apart: never a gap.
            accepted |= agg.push(0, t0 + Duration::from_millis(i as u64), live).live;
        }
        seq.push(Scored {
            species,
            score: (!no_face).then_some(if accepted { 1.0 } else { 0.0 }),
            group,
            order: 0,
        });
    }
    (rates_at(&seq, 0.5), short)
}

/// Group key of a file in `shared/faces/spoof`: frames of one video share a key.
///
/// - NUAA `nuaa_{cli|imp}_SUBJ_G_P_SESSION_FRAME.jpg`: one video per subject/glasses/position/
///   session, so the key drops the trailing frame number;
/// - `tvl_{real|fake}_fNNNN.png`: one video each (`tvl_real`, `tvl_fake`);
/// - anything else is its own sequence (single still images).
///
/// Returns `(group, frame order)`.
pub fn group_of(file_name: &str) -> (String, u64) {
    let stem = file_name
        .rsplit_once('.')
        .map_or(file_name, |(s, _)| s)
        .to_string();
    if stem.starts_with("nuaa_") {
        if let Some((g, f)) = stem.rsplit_once('_')
            && let Ok(n) = f.parse::<u64>()
        {
            return (g.to_string(), n);
        }
    } else if let Some(rest) = stem.strip_prefix("tvl_")
        && let Some((kind, f)) = rest.split_once("_f")
        && let Ok(n) = f.parse::<u64>()
    {
        return (format!("tvl_{kind}"), n);
    }
    (stem, 0)
}

/// Which checks a synthetic evaluation row ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyntheticCheck {
    /// IR alone (no depth: distance from the face size).
    IrAlone,
    /// Depth alone.
    DepthAlone,
    /// IR + depth, both required (the fused default for an RGB+IR+depth board, minus passive).
    FusedIrDepth,
}

impl SyntheticCheck {
    /// Label for reports.
    pub fn label(self) -> &'static str {
        match self {
            SyntheticCheck::IrAlone => "IR alone",
            SyntheticCheck::DepthAlone => "depth alone",
            SyntheticCheck::FusedIrDepth => "fused IR+depth",
        }
    }
}

/// APCER per attack kind and BPCER of one check on the SIMULATED suite.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyntheticRow {
    /// The check(s).
    pub check: SyntheticCheck,
    /// APCER per attack kind (by [`AttackKind::name`]).
    pub apcer: BTreeMap<&'static str, Rate>,
    /// BPCER on simulated live faces.
    pub bpcer: Rate,
}

/// The whole SIMULATED evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyntheticReport {
    /// Always true: these numbers come from rendered, not recorded, presentations.
    pub simulated: bool,
    /// Generator seed.
    pub seed: u64,
    /// Samples per kind.
    pub per_kind: usize,
    /// One row per check.
    pub rows: Vec<SyntheticRow>,
    /// Dead-emitter frames (live scenes) reported as an IR emitter fault.
    pub dead_emitter_detected: Rate,
    /// Working-emitter frames (all kinds) wrongly reported as an emitter fault.
    pub emitter_false_alarms: Rate,
}

fn policy(
    base: &LivenessConfig,
    required: &[CheckKind],
) -> Result<LivenessPolicy, super::ConfigError> {
    let mut c = base.clone();
    c.required = required.to_vec();
    let reg =
        SyntheticSample::registration().map_err(|e| super::ConfigError::Invalid(e.to_string()))?;
    LivenessPolicy::new(c, Some(reg))
}

fn evidence(s: &SyntheticSample, ir: bool, depth: bool) -> Evidence<'_> {
    Evidence {
        passive: Reading::Absent,
        ir: if ir {
            Reading::Present(IrPair {
                lit: &s.ir_on,
                unlit: Some(&s.ir_off),
            })
        } else {
            Reading::Absent
        },
        depth: if depth {
            Reading::Present(&s.depth)
        } else {
            Reading::Absent
        },
        challenge: None,
    }
}

/// Run the IR check alone, the depth check alone and the fused IR+depth policy (limits from
/// `base`) over `per_kind` SIMULATED samples of each kind, plus the emitter self-test on dead-
/// and working-emitter frames. The passive models are not exercised (no RGB is rendered).
pub fn evaluate_synthetic(
    base: &LivenessConfig,
    seed: u64,
    per_kind: usize,
) -> Result<SyntheticReport, super::ConfigError> {
    let setups = [
        (
            SyntheticCheck::IrAlone,
            policy(base, &[CheckKind::Ir])?,
            true,
            false,
        ),
        (
            SyntheticCheck::DepthAlone,
            policy(base, &[CheckKind::Depth])?,
            false,
            true,
        ),
        (
            SyntheticCheck::FusedIrDepth,
            policy(base, &[CheckKind::Ir, CheckKind::Depth])?,
            true,
            true,
        ),
    ];
    let mut rows: Vec<SyntheticRow> = setups
        .iter()
        .map(|(c, ..)| SyntheticRow {
            check: *c,
            apcer: BTreeMap::new(),
            bpcer: Rate::default(),
        })
        .collect();
    let mut dead = Rate::default();
    let mut false_alarm = Rate::default();
    for kind in AttackKind::ALL {
        for i in 0..per_kind {
            let s = synthetic::generate(kind, seed, i);
            for (row, (_, p, ir, depth)) in rows.iter_mut().zip(&setups) {
                let v = p.evaluate(&s.face_box, &evidence(&s, *ir, *depth));
                if *ir {
                    false_alarm.total += usize::from(row.check == SyntheticCheck::FusedIrDepth);
                    if row.check == SyntheticCheck::FusedIrDepth
                        && v.faults.iter().any(|f| f.source == FaultSource::IrEmitter)
                    {
                        false_alarm.errors += 1;
                    }
                }
                if kind.is_attack() {
                    let e = row.apcer.entry(kind.name()).or_default();
                    e.total += 1;
                    e.errors += usize::from(v.live);
                } else {
                    row.bpcer.total += 1;
                    row.bpcer.errors += usize::from(!v.live);
                }
            }
            if kind == AttackKind::Live {
                let d = synthetic::with_dead_emitter(&s, seed);
                let v = setups[2].1.evaluate(&d.face_box, &evidence(&d, true, true));
                dead.total += 1;
                dead.errors += usize::from(
                    !v.live && v.faults.iter().any(|f| f.source == FaultSource::IrEmitter),
                );
            }
        }
    }
    Ok(SyntheticReport {
        simulated: true,
        seed,
        per_kind,
        rows,
        dead_emitter_detected: dead,
        emitter_false_alarms: false_alarm,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(species: Option<&str>, score: Option<f32>, group: &str, order: u64) -> Scored {
        Scored {
            species: species.map(str::to_string),
            score,
            group: group.into(),
            order,
        }
    }

    #[test]
    fn grouping_follows_the_dataset_naming() {
        assert_eq!(
            group_of("nuaa_cli_0001_00_00_01_488.jpg"),
            ("nuaa_cli_0001_00_00_01".into(), 488)
        );
        assert_eq!(group_of("tvl_fake_f0026.png"), ("tvl_fake".into(), 26));
        assert_eq!(group_of("jom_reals_3.jpg"), ("jom_reals_3".into(), 0));
    }

    #[test]
    fn rates_threshold_and_sequences() {
        let v = vec![
            s(None, Some(0.9), "a", 1),
            s(None, Some(0.6), "a", 2),
            s(None, Some(0.3), "a", 3),
            s(None, None, "b", 1),
            s(Some("print"), Some(0.55), "p", 1),
            s(Some("print"), Some(0.2), "p", 2),
            s(Some("print"), None, "q", 1),
        ];
        let r = rates_at(&v, 0.5);
        assert_eq!(
            r.bpcer,
            Rate {
                errors: 2,
                total: 4
            }
        );
        assert_eq!(
            r.apcer["print"],
            Rate {
                errors: 1,
                total: 3
            }
        );
        assert_eq!((r.bona_fide_no_face, r.attack_no_face["print"]), (1, 1));
        // BPCER <= 50 %: the largest threshold keeping 2 of 4 is 0.6.
        let t = threshold_for_bpcer(&v, 0.5, |t| rates_at(&v, t).bpcer);
        assert_eq!(t, Some(0.6));
        assert_eq!(
            threshold_for_bpcer(&v, 0.1, |t| rates_at(&v, t).bpcer),
            None
        );
        // 2-of-3: group a (T T F) accepted; p (T F) not; b and q are too short.
        let w = FrameWindow {
            k: 2,
            n: 3,
            max_gap_ms: 100,
        };
        let (r, short) = sequence_rates(&v, 0.5, w);
        assert_eq!(short, 2);
        assert_eq!(
            r.bpcer,
            Rate {
                errors: 0,
                total: 1
            }
        );
        assert_eq!(
            r.apcer["print"],
            Rate {
                errors: 0,
                total: 1
            }
        );
    }
}
