//! Verification accuracy on labelled pairs (`facegate eval pairs`): how we compare with peers that
//! publish LFW-style figures, computed the same way on our own data.
//!
//! Input is a CSV of image pairs labelled same/different person. This module holds the parts that
//! need no model: parsing that CSV (two accepted dialects, every other value refused with its line
//! number) and the metric maths over scored pairs. The CLI embeds each distinct image once and
//! hands the scores here.
//!
//! Conventions, chosen so no figure flatters us:
//! - a pair is *accepted* when its cosine similarity is `>= threshold` (the recogniser's rule);
//! - a pair whose image had no detectable face has no score. It is **never dropped**: in accuracy it
//!   is an error whatever its label (the comparison did not happen); in TAR/FAR it follows the
//!   "generalized" rates of ISO/IEC 19795-1, where a failure to acquire is a rejection, so it is a
//!   false reject for a same pair and a (correct) non-acceptance for a different pair. Both
//!   denominators keep those pairs;
//! - TAR at FAR x uses the smallest threshold whose FAR is `<= x` on the negatives we have. With N
//!   negatives the only reachable FARs are k/N, so when x·N < 1 the point is really "FAR = 0";
//!   the report carries the achieved FAR, the false accepts and N so the figure cannot be misread.

use serde::Serialize;

/// One labelled pair as read from the CSV (paths as written, relative to the caller's root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledPair {
    /// First image.
    pub a: String,
    /// Second image.
    pub b: String,
    /// True when both images show the same person.
    pub same: bool,
    /// 1-based line number in the CSV, for error messages about this pair.
    pub line: usize,
}

/// Why a pairs file was refused; every message names the line so the file can be fixed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PairsError {
    /// The file has no header line.
    #[error("pairs file is empty (expected a header `file_x,file_y,decision` or `a,b,same`)")]
    Empty,
    /// The header is not one of the two dialects.
    #[error(
        "line 1: unknown header `{0}` (expected `file_x,file_y,decision` with Yes/No or `a,b,same` with 1/0)"
    )]
    Header(String),
    /// A row does not have exactly three fields.
    #[error("line {line}: expected 3 comma-separated fields, found {found}")]
    Fields {
        /// 1-based line number.
        line: usize,
        /// Fields found.
        found: usize,
    },
    /// A label is not a value of the file's dialect.
    #[error("line {line}: label `{value}` is not one of {expected}")]
    Label {
        /// 1-based line number.
        line: usize,
        /// The offending value.
        value: String,
        /// The accepted values.
        expected: &'static str,
    },
    /// An image path is empty.
    #[error("line {line}: empty image path")]
    EmptyPath {
        /// 1-based line number.
        line: usize,
    },
    /// The header was present but no pair followed.
    #[error("pairs file has a header but no pairs")]
    NoPairs,
}

#[derive(Clone, Copy)]
enum Dialect {
    /// `file_x,file_y,decision` with `Yes`/`No`.
    YesNo,
    /// `a,b,same` with `1`/`0`.
    OneZero,
}

fn fields(line: &str) -> Vec<String> {
    line.split(',')
        .map(|f| {
            let f = f.trim();
            f.strip_prefix('"')
                .and_then(|g| g.strip_suffix('"'))
                .unwrap_or(f)
                .to_string()
        })
        .collect()
}

/// Parse a pairs CSV. Blank lines are skipped; a UTF-8 BOM and `\r\n` endings are tolerated.
pub fn parse_pairs_csv(text: &str) -> Result<Vec<LabelledPair>, PairsError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let (_, header) = lines
        .by_ref()
        .find(|(_, l)| !l.trim().is_empty())
        .ok_or(PairsError::Empty)?;
    let h: Vec<String> = fields(header).iter().map(|f| f.to_lowercase()).collect();
    let dialect = match h.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["file_x", "file_y", "decision"] => Dialect::YesNo,
        ["a", "b", "same"] => Dialect::OneZero,
        _ => return Err(PairsError::Header(header.trim().to_string())),
    };
    let mut out = Vec::new();
    for (line, text) in lines {
        if text.trim().is_empty() {
            continue;
        }
        let f = fields(text);
        if f.len() != 3 {
            return Err(PairsError::Fields {
                line,
                found: f.len(),
            });
        }
        if f[0].is_empty() || f[1].is_empty() {
            return Err(PairsError::EmptyPath { line });
        }
        let same = match (dialect, f[2].as_str()) {
            (Dialect::YesNo, v) if v.eq_ignore_ascii_case("yes") => true,
            (Dialect::YesNo, v) if v.eq_ignore_ascii_case("no") => false,
            (Dialect::OneZero, "1") => true,
            (Dialect::OneZero, "0") => false,
            (d, v) => {
                return Err(PairsError::Label {
                    line,
                    value: v.to_string(),
                    expected: match d {
                        Dialect::YesNo => "Yes/No",
                        Dialect::OneZero => "1/0",
                    },
                });
            }
        };
        out.push(LabelledPair {
            a: f[0].clone(),
            b: f[1].clone(),
            same,
            line,
        });
    }
    if out.is_empty() {
        return Err(PairsError::NoPairs);
    }
    Ok(out)
}

/// A labelled pair after embedding: its cosine, or `None` when one image had no face.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoredPair {
    /// Same person?
    pub same: bool,
    /// Cosine similarity of the two largest faces; `None` = failure to acquire.
    pub score: Option<f32>,
}

/// TAR at one FAR target, with what is needed to judge it on a small set.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TarAtFar {
    /// The FAR asked for (0.01 = 1 %).
    pub target_far: f64,
    /// Smallest threshold (accept `>=`) whose FAR is `<=` the target.
    pub threshold: f32,
    /// True accept rate at that threshold (same pairs with a missing face count as rejects).
    pub tar: f64,
    /// FAR actually reached: `false_accepts / negatives`.
    pub achieved_far: f64,
    /// Different-person pairs accepted at that threshold.
    pub false_accepts: usize,
    /// Different-person pairs (the FAR denominator, missing faces included).
    pub negatives: usize,
    /// True when `target_far × negatives < 1`: too few negatives to resolve the target, so the
    /// figure is TAR at FAR = 0 on this set, not a measurement at the target.
    pub below_resolution: bool,
}

/// Equal error rate: where FAR and FRR are closest over all thresholds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Eer {
    /// (FAR + FRR) / 2 at [`Eer::threshold`].
    pub eer: f64,
    /// The threshold (accept `>=`).
    pub threshold: f32,
    /// FAR there.
    pub far: f64,
    /// FRR there.
    pub frr: f64,
}

/// Every figure `facegate eval pairs` reports.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PairsReport {
    /// Pairs in the file (none dropped).
    pub pairs: usize,
    /// Same-person pairs.
    pub same_pairs: usize,
    /// Different-person pairs.
    pub different_pairs: usize,
    /// Same pairs with a missing face (false rejects at every threshold).
    pub missing_face_same_pairs: usize,
    /// Different pairs with a missing face (errors in accuracy, non-accepts in FAR).
    pub missing_face_different_pairs: usize,
    /// The threshold accuracy is reported at (the recogniser's, unless overridden).
    pub threshold: f32,
    /// Fraction of pairs decided correctly at `threshold`; missing-face pairs are errors.
    pub accuracy: f64,
    /// Different pairs accepted at `threshold`.
    pub false_accepts: usize,
    /// Same pairs rejected at `threshold` (missing faces included).
    pub false_rejects: usize,
    /// The threshold with the highest accuracy: the middle of the widest best gap between
    /// consecutive scores (so it does not sit on a sample).
    pub best_threshold: f32,
    /// Accuracy at `best_threshold`.
    pub best_accuracy: f64,
    /// Every threshold in `(best_range[0], best_range[1]]` gives `best_accuracy`.
    pub best_range: [f32; 2],
    /// TAR at FAR 1 % and 0.1 %.
    pub tar_at_far: Vec<TarAtFar>,
    /// Equal error rate; `None` without both same and different pairs.
    pub eer: Option<Eer>,
    /// Lowest same-person score (scored pairs only).
    pub min_same: Option<f32>,
    /// Highest different-person score (scored pairs only).
    pub max_different: Option<f32>,
}

/// The FAR targets reported.
pub const FAR_TARGETS: [f64; 2] = [0.01, 0.001];

/// Accept/reject counts at one threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    true_accepts: usize,
    false_accepts: usize,
    correct: usize,
}

fn counts(pairs: &[ScoredPair], t: f32) -> Counts {
    let mut c = Counts {
        true_accepts: 0,
        false_accepts: 0,
        correct: 0,
    };
    for p in pairs {
        let Some(s) = p.score else { continue };
        let accept = s >= t;
        match (p.same, accept) {
            (true, true) => {
                c.true_accepts += 1;
                c.correct += 1;
            }
            (false, true) => c.false_accepts += 1,
            (false, false) => c.correct += 1,
            (true, false) => {}
        }
    }
    c
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Candidate thresholds: below every score, between each pair of consecutive distinct scores,
/// above every score. Each candidate carries the scores bounding its gap.
fn candidates(pairs: &[ScoredPair]) -> Vec<(f32, f32, f32)> {
    let mut s: Vec<f32> = pairs.iter().filter_map(|p| p.score).collect();
    s.sort_by(f32::total_cmp);
    s.dedup();
    let mut out = Vec::with_capacity(s.len() + 1);
    match (s.first(), s.last()) {
        (Some(&lo), Some(&hi)) => {
            out.push((lo - 1.0, f32::NEG_INFINITY, lo));
            for w in s.windows(2) {
                out.push(((w[0] + w[1]) / 2.0, w[0], w[1]));
            }
            out.push((hi.next_up(), hi, f32::INFINITY));
        }
        _ => out.push((0.0, f32::NEG_INFINITY, f32::INFINITY)),
    }
    out
}

/// TAR at a FAR target: the smallest threshold with FAR `<=` target (see the module doc).
pub fn tar_at_far(pairs: &[ScoredPair], target: f64) -> Option<TarAtFar> {
    let negatives = pairs.iter().filter(|p| !p.same).count();
    let positives = pairs.len() - negatives;
    if negatives == 0 || positives == 0 {
        return None;
    }
    let mut diff: Vec<f32> = pairs
        .iter()
        .filter(|p| !p.same)
        .filter_map(|p| p.score)
        .collect();
    diff.sort_by(|a, b| b.total_cmp(a));
    // At most k false accepts are allowed; the (k+1)-th highest different score must be refused.
    let k = (target * negatives as f64 + 1e-9).floor() as usize;
    let threshold = match diff.get(k) {
        Some(&d) => d.next_up(),
        // Fewer scored negatives than allowed accepts: every score may pass.
        None => {
            let lowest = pairs
                .iter()
                .filter_map(|p| p.score)
                .fold(f32::INFINITY, f32::min);
            if lowest.is_finite() { lowest } else { 0.0 }
        }
    };
    let c = counts(pairs, threshold);
    Some(TarAtFar {
        target_far: target,
        threshold,
        tar: ratio(c.true_accepts, positives),
        achieved_far: ratio(c.false_accepts, negatives),
        false_accepts: c.false_accepts,
        negatives,
        below_resolution: target * (negatives as f64) < 1.0,
    })
}

/// Equal error rate over the candidate thresholds (closest FAR and FRR; ties: lower maximum).
pub fn eer(pairs: &[ScoredPair]) -> Option<Eer> {
    let negatives = pairs.iter().filter(|p| !p.same).count();
    let positives = pairs.len() - negatives;
    if negatives == 0 || positives == 0 {
        return None;
    }
    let mut best: Option<Eer> = None;
    for (t, _, _) in candidates(pairs) {
        let c = counts(pairs, t);
        let far = ratio(c.false_accepts, negatives);
        let frr = 1.0 - ratio(c.true_accepts, positives);
        let key = ((far - frr).abs(), far.max(frr));
        let better = best.as_ref().is_none_or(|b| {
            let bk = ((b.far - b.frr).abs(), b.far.max(b.frr));
            key.0 < bk.0 - 1e-12 || ((key.0 - bk.0).abs() <= 1e-12 && key.1 < bk.1)
        });
        if better {
            best = Some(Eer {
                eer: (far + frr) / 2.0,
                threshold: t,
                far,
                frr,
            });
        }
    }
    best
}

/// Compute every figure of the report at `threshold`.
pub fn evaluate(pairs: &[ScoredPair], threshold: f32) -> PairsReport {
    let n = pairs.len();
    let same_pairs = pairs.iter().filter(|p| p.same).count();
    let missing_same = pairs.iter().filter(|p| p.same && p.score.is_none()).count();
    let missing_diff = pairs
        .iter()
        .filter(|p| !p.same && p.score.is_none())
        .count();
    let at = counts(pairs, threshold);
    // Best accuracy: widest gap among the optimal candidates.
    let mut best = (0usize, 0.0f32, f32::NEG_INFINITY, f32::INFINITY, -1.0f64);
    for (t, lo, hi) in candidates(pairs) {
        let c = counts(pairs, t).correct;
        let width = if lo.is_finite() && hi.is_finite() {
            (hi - lo) as f64
        } else {
            0.0
        };
        if c > best.0 || (c == best.0 && width > best.4) {
            best = (c, t, lo, hi, width);
        }
    }
    let scores = |same: bool| {
        pairs
            .iter()
            .filter(move |p| p.same == same)
            .filter_map(|p| p.score)
    };
    PairsReport {
        pairs: n,
        same_pairs,
        different_pairs: n - same_pairs,
        missing_face_same_pairs: missing_same,
        missing_face_different_pairs: missing_diff,
        threshold,
        accuracy: ratio(at.correct, n),
        false_accepts: at.false_accepts,
        false_rejects: same_pairs - at.true_accepts,
        best_threshold: best.1,
        best_accuracy: ratio(best.0, n),
        best_range: [best.2, best.3],
        tar_at_far: FAR_TARGETS
            .iter()
            .filter_map(|&f| tar_at_far(pairs, f))
            .collect(),
        eer: eer(pairs),
        min_same: scores(true).reduce(f32::min),
        max_different: scores(false).reduce(f32::max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(same: bool, score: f32) -> ScoredPair {
        ScoredPair {
            same,
            score: Some(score),
        }
    }

    #[test]
    fn parses_both_dialects_and_names_bad_lines() {
        let p = parse_pairs_csv("a,b,same\nx.jpg,y.jpg,1\n\nx.jpg,z.jpg,0\n").unwrap();
        assert_eq!(p.len(), 2);
        assert!(p[0].same && !p[1].same);
        assert_eq!((p[0].line, p[1].line), (2, 4));
        let p =
            parse_pairs_csv("\u{feff}file_x,file_y,decision\r\nx,y,Yes\r\n\"x\",z,no\r\n").unwrap();
        assert_eq!((p[0].same, p[1].same, p[1].a.as_str()), (true, false, "x"));

        let e = parse_pairs_csv("a,b,same\nx,y,1\nx,z,yes\n").unwrap_err();
        assert_eq!(
            e,
            PairsError::Label {
                line: 3,
                value: "yes".into(),
                expected: "1/0"
            }
        );
        assert!(e.to_string().starts_with("line 3:"), "{e}");
        let e = parse_pairs_csv("file_x,file_y,decision\nx,y,1\n").unwrap_err();
        assert!(e.to_string().contains("line 2") && e.to_string().contains("Yes/No"));
        assert!(matches!(
            parse_pairs_csv("a,b,same\nx,y\n"),
            Err(PairsError::Fields { line: 2, found: 2 })
        ));
        assert!(matches!(
            parse_pairs_csv("left,right,label\n"),
            Err(PairsError::Header(_))
        ));
        assert_eq!(parse_pairs_csv(" \n"), Err(PairsError::Empty));
        assert_eq!(parse_pairs_csv("a,b,same\n"), Err(PairsError::NoPairs));
        assert_eq!(
            parse_pairs_csv("a,b,same\n,y,1\n"),
            Err(PairsError::EmptyPath { line: 2 })
        );
    }

    #[test]
    fn separable_set_is_perfect() {
        let pairs = vec![
            sp(true, 0.9),
            sp(true, 0.7),
            sp(false, 0.3),
            sp(false, 0.1),
            sp(false, 0.2),
        ];
        let r = evaluate(&pairs, 0.5);
        assert_eq!((r.pairs, r.same_pairs, r.different_pairs), (5, 2, 3));
        assert_eq!(r.accuracy, 1.0);
        assert_eq!(r.best_accuracy, 1.0);
        assert_eq!(r.best_range, [0.3, 0.7]);
        assert!((r.best_threshold - 0.5).abs() < 1e-6);
        let e = r.eer.unwrap();
        assert_eq!((e.eer, e.far, e.frr), (0.0, 0.0, 0.0));
        assert_eq!(r.tar_at_far.len(), 2);
        for t in &r.tar_at_far {
            assert_eq!((t.tar, t.false_accepts, t.negatives), (1.0, 0, 3));
            assert!(t.below_resolution);
            assert!(t.threshold > 0.3 && t.threshold < 0.31);
        }
        assert_eq!((r.min_same, r.max_different), (Some(0.7), Some(0.3)));
    }

    #[test]
    fn errors_and_tar_at_far_with_enough_negatives() {
        // 200 negatives: FAR 1 % allows 2 false accepts.
        let mut pairs: Vec<ScoredPair> = (0..200).map(|i| sp(false, i as f32 / 1000.0)).collect();
        // Three negatives score high; the third one must be refused at FAR 1 %.
        pairs[0] = sp(false, 0.95);
        pairs[1] = sp(false, 0.85);
        pairs[2] = sp(false, 0.75);
        pairs.extend([sp(true, 0.9), sp(true, 0.8), sp(true, 0.7), sp(true, 0.6)]);
        let t = tar_at_far(&pairs, 0.01).unwrap();
        assert_eq!(t.false_accepts, 2);
        assert_eq!(t.achieved_far, 0.01);
        assert!(!t.below_resolution);
        assert_eq!(t.threshold, 0.75f32.next_up());
        assert_eq!(t.tar, 0.5); // 0.9 and 0.8 pass, 0.7 and 0.6 do not
        let t = tar_at_far(&pairs, 0.001).unwrap();
        assert_eq!((t.false_accepts, t.tar), (0, 0.0));
        assert!(t.below_resolution);
        let r = evaluate(&pairs, 0.5);
        assert_eq!(r.false_accepts, 3);
        assert_eq!(r.false_rejects, 0);
        assert!((r.accuracy - 201.0 / 204.0).abs() < 1e-12);
    }

    #[test]
    fn missing_faces_are_errors_never_dropped() {
        let pairs = vec![
            sp(true, 0.9),
            ScoredPair {
                same: true,
                score: None,
            },
            sp(false, 0.1),
            ScoredPair {
                same: false,
                score: None,
            },
        ];
        let r = evaluate(&pairs, 0.5);
        assert_eq!(r.pairs, 4);
        assert_eq!(
            (r.missing_face_same_pairs, r.missing_face_different_pairs),
            (1, 1)
        );
        // Both missing-face pairs are errors in accuracy, whatever the threshold.
        assert_eq!(r.accuracy, 0.5);
        assert_eq!(r.best_accuracy, 0.5);
        assert_eq!((r.false_rejects, r.false_accepts), (1, 0));
        // The same pair with no face is a false reject: TAR at most 1/2; the different one keeps
        // its place in the FAR denominator.
        let t = &r.tar_at_far[0];
        assert_eq!((t.tar, t.negatives), (0.5, 2));
        let e = r.eer.unwrap();
        assert!(e.frr >= 0.5 - 1e-12);
    }

    #[test]
    fn degenerate_inputs() {
        assert!(tar_at_far(&[sp(true, 0.5)], 0.01).is_none());
        assert!(eer(&[sp(false, 0.5)]).is_none());
        let none = [ScoredPair {
            same: true,
            score: None,
        }];
        let r = evaluate(&none, 0.4);
        assert_eq!((r.accuracy, r.min_same), (0.0, None));
    }
}
