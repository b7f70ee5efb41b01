//! In-memory 1:N and 1:1 face matcher over decrypted templates.
//!
//! Templates are decrypted once (from [`crate::store::Store::load_all_templates`]) into one
//! contiguous row-major `f32` matrix, L2-normalised so cosine similarity is a dot product, with
//! rows grouped by person. A query scans every row once: the dot product runs over 16-lane
//! chunks with independent accumulators, which LLVM turns into SIMD (NEON on the Pi, SSE/AVX on
//! x86) without `unsafe`. The matrix is zeroized when the matcher is dropped.
//!
//! A daemon holds the matcher in a [`SharedMatcher`]: lookups clone an `Arc` and run lock-free;
//! when the store changes (see [`crate::store::Store::generation`]) a new matcher is built off to
//! the side and swapped in atomically; the old one is wiped when its last reader finishes.
//!
//! Decision rule (look-alike protection): identify takes, per person, the best score over their
//! templates; it grants only if the best person's score ≥ `threshold` **and** exceeds the best
//! score of any *other* person by ≥ `margin`. Verify (1:1) grants if the claimed person's score
//! ≥ `threshold` and nobody else scores higher.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde::Serialize;
use zeroize::{Zeroize, Zeroizing};

use crate::store::{EMBEDDING_DIM, Result, Store, StoreError, Template};

const LANES: usize = 16;

/// Default look-alike margin: the best person must lead every other person by this much cosine.
/// On the dev set same-person scores are ≥ 0.67 and different-person ≤ 0.29, so a genuine
/// match leads by far more; 0.05 only bites when two enrolled people both match.
pub const DEFAULT_MARGIN: f32 = 0.05;

/// Acceptance thresholds, from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MatchParams {
    /// Minimum cosine similarity to accept.
    pub threshold: f32,
    /// Minimum lead of the best person over the best other person.
    pub margin: f32,
}

/// Grant or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Access may be granted.
    Granted,
    /// Access must be denied (see [`DenyReason`]).
    Denied,
}

/// Why a match was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// No templates (for this model / this person).
    EmptyGallery,
    /// Query has the wrong length, non-finite values or zero norm.
    InvalidQuery,
    /// Best score below threshold: unknown face.
    BelowThreshold,
    /// Another person scores too close (identify) or higher (verify): possible look-alike.
    AmbiguousMargin,
    /// Verify: the claimed person is not enrolled.
    UnknownPerson,
}

/// Outcome of identify/verify. `person` is set only when granted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MatchResult {
    /// Granted person.
    pub person: Option<String>,
    /// Best (identify) or claimed (verify) person's score; 0 when there was nothing to score.
    pub score: f32,
    /// Score lead over the best other person; `None` when there is no other person.
    pub margin: Option<f32>,
    /// Grant or deny.
    pub decision: Decision,
    /// Set when denied.
    pub reason: Option<DenyReason>,
    /// Best-scoring candidate even when denied (for logs/diagnostics; never shown at the door).
    pub candidate: Option<String>,
}

impl MatchResult {
    fn denied(reason: DenyReason) -> Self {
        MatchResult {
            person: None,
            score: 0.0,
            margin: None,
            decision: Decision::Denied,
            reason: Some(reason),
            candidate: None,
        }
    }
}

/// Immutable gallery of normalised templates. Build a new one to change it.
pub struct Matcher {
    /// `rows × EMBEDDING_DIM` values, row-major, grouped by person.
    data: Vec<f32>,
    /// Per person: `[start, end)` row range.
    ranges: Vec<(usize, usize)>,
    persons: Vec<String>,
    index: HashMap<String, usize>,
    generation: u64,
}

impl Drop for Matcher {
    fn drop(&mut self) {
        self.data.zeroize();
    }
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matcher")
            .field("templates", &self.len())
            .field("people", &self.persons.len())
            .field("generation", &self.generation)
            .finish()
    }
}

/// Dot product of two equal-length rows, written so it autovectorises: 16 independent lanes.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for ((s, p), q) in acc.iter_mut().zip(x).zip(y) {
            *s += p * q;
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(p, q)| p * q).sum();
    acc.iter().sum::<f32>() + tail
}

/// Copy `v` normalised to unit length into `out`; `false` if not finite or zero.
fn normalise_into(v: &[f32], out: &mut [f32]) -> bool {
    if v.len() != out.len() || !v.iter().all(|x| x.is_finite()) {
        return false;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm.is_nan() || norm <= 1e-12 {
        return false;
    }
    for (o, x) in out.iter_mut().zip(v) {
        *o = x / norm;
    }
    true
}

impl Matcher {
    /// Build from decrypted templates. With `model = Some((id, version))`, templates from other
    /// models are skipped (their scores would be meaningless against this model's queries).
    pub fn from_templates(
        templates: &[Template],
        model: Option<(&str, &str)>,
        generation: u64,
    ) -> Result<Matcher> {
        let mut by_person: BTreeMap<&str, Vec<&[f32]>> = BTreeMap::new();
        for t in templates {
            if model.is_some_and(|(id, ver)| t.meta.model_id != id || t.meta.model_version != ver) {
                continue;
            }
            by_person.entry(&t.person_id).or_default().push(&t.vector);
        }
        let rows: usize = by_person.values().map(Vec::len).sum();
        let mut m = Matcher {
            data: vec![0.0; rows * EMBEDDING_DIM],
            ranges: Vec::with_capacity(by_person.len()),
            persons: Vec::with_capacity(by_person.len()),
            index: HashMap::with_capacity(by_person.len()),
            generation,
        };
        let mut row = 0;
        for (person, vecs) in by_person {
            let start = row;
            for v in vecs {
                let out = &mut m.data[row * EMBEDDING_DIM..(row + 1) * EMBEDDING_DIM];
                if !normalise_into(v, out) {
                    return Err(StoreError::InvalidInput(format!(
                        "template of {person} is not a valid {EMBEDDING_DIM}-d vector"
                    )));
                }
                row += 1;
            }
            m.index.insert(person.to_string(), m.persons.len());
            m.persons.push(person.to_string());
            m.ranges.push((start, row));
        }
        Ok(m)
    }

    /// Decrypt the store's templates and build; records the store generation it reflects.
    pub fn from_store(store: &Store, model: Option<(&str, &str)>) -> Result<Matcher> {
        let generation = store.generation()?;
        let templates = store.load_all_templates()?;
        Self::from_templates(&templates, model, generation)
    }

    /// Number of template rows.
    pub fn len(&self) -> usize {
        self.data.len() / EMBEDDING_DIM
    }

    /// True when nothing can match.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Number of people.
    pub fn people(&self) -> usize {
        self.persons.len()
    }

    /// Store generation this matcher was built from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Heap bytes held (matrix + index), for sizing on small boards.
    pub fn memory_bytes(&self) -> usize {
        let strings: usize = self
            .persons
            .iter()
            .map(|p| 2 * (p.capacity() + std::mem::size_of::<String>()))
            .sum();
        self.data.capacity() * 4 + self.ranges.capacity() * 16 + strings + self.index.capacity() * 8
    }

    fn person_score(&self, p: usize, q: &[f32]) -> f32 {
        let (s, e) = self.ranges[p];
        self.data[s * EMBEDDING_DIM..e * EMBEDDING_DIM]
            .chunks_exact(EMBEDDING_DIM)
            .map(|row| dot(row, q))
            .fold(f32::NEG_INFINITY, f32::max)
    }

    fn query(q: &[f32]) -> Option<Zeroizing<[f32; EMBEDDING_DIM]>> {
        let mut buf = Zeroizing::new([0.0f32; EMBEDDING_DIM]);
        normalise_into(q, buf.as_mut_slice()).then_some(buf)
    }

    /// Best and runner-up (different person) scores, optionally skipping one person.
    fn top2(&self, q: &[f32], skip: Option<usize>) -> (Option<(usize, f32)>, f32) {
        let (mut best, mut second) = (None::<(usize, f32)>, f32::NEG_INFINITY);
        for p in 0..self.persons.len() {
            if Some(p) == skip {
                continue;
            }
            let s = self.person_score(p, q);
            match best {
                Some((_, b)) if s <= b => second = second.max(s),
                Some((_, b)) => {
                    second = b;
                    best = Some((p, s));
                }
                None => best = Some((p, s)),
            }
        }
        (best, second)
    }

    /// 1:N identification with the threshold + margin rule.
    pub fn identify(&self, query: &[f32], params: &MatchParams) -> MatchResult {
        let Some(q) = Self::query(query) else {
            return MatchResult::denied(DenyReason::InvalidQuery);
        };
        let (best, second) = self.top2(q.as_slice(), None);
        let Some((p, score)) = best else {
            return MatchResult::denied(DenyReason::EmptyGallery);
        };
        let margin = second.is_finite().then_some(score - second);
        let reason = if score < params.threshold {
            Some(DenyReason::BelowThreshold)
        } else if margin.is_some_and(|m| m < params.margin) {
            Some(DenyReason::AmbiguousMargin)
        } else {
            None
        };
        let candidate = Some(self.persons[p].clone());
        MatchResult {
            person: if reason.is_none() {
                candidate.clone()
            } else {
                None
            },
            score,
            margin,
            decision: if reason.is_none() {
                Decision::Granted
            } else {
                Decision::Denied
            },
            reason,
            candidate,
        }
    }

    /// 1:1 verification of a claimed identity (e.g. card + face), same scores as identify.
    pub fn verify(&self, person: &str, query: &[f32], params: &MatchParams) -> MatchResult {
        let Some(q) = Self::query(query) else {
            return MatchResult::denied(DenyReason::InvalidQuery);
        };
        let Some(&p) = self.index.get(person) else {
            return MatchResult::denied(DenyReason::UnknownPerson);
        };
        let score = self.person_score(p, q.as_slice());
        let (other, _) = self.top2(q.as_slice(), Some(p));
        let margin = other.map(|(_, s)| score - s);
        let reason = if score < params.threshold {
            Some(DenyReason::BelowThreshold)
        } else if margin.is_some_and(|m| m < 0.0) {
            Some(DenyReason::AmbiguousMargin)
        } else {
            None
        };
        MatchResult {
            person: reason.is_none().then(|| person.to_string()),
            score,
            margin,
            decision: if reason.is_none() {
                Decision::Granted
            } else {
                Decision::Denied
            },
            reason,
            candidate: Some(person.to_string()),
        }
    }

    /// Best score of every person, unsorted (duplicate check at enrolment, brute-force tests).
    pub fn scores(&self, query: &[f32]) -> Vec<(String, f32)> {
        let Some(q) = Self::query(query) else {
            return Vec::new();
        };
        (0..self.persons.len())
            .map(|p| (self.persons[p].clone(), self.person_score(p, q.as_slice())))
            .collect()
    }
}

/// The daemon's current matcher, swapped atomically when the store changes.
#[derive(Debug)]
pub struct SharedMatcher {
    inner: RwLock<Arc<Matcher>>,
}

impl SharedMatcher {
    /// Start with `m`.
    pub fn new(m: Matcher) -> Self {
        SharedMatcher {
            inner: RwLock::new(Arc::new(m)),
        }
    }

    /// Snapshot for one lookup; cheap, and unaffected by a concurrent swap.
    pub fn current(&self) -> Arc<Matcher> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Install a freshly built matcher; in-flight lookups keep the old one until they finish.
    pub fn replace(&self, m: Matcher) {
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewTemplate, Template, TemplateKind, TemplateMeta};

    fn t(person: &str, v: Vec<f32>) -> Template {
        let nt = NewTemplate::anchor(v, "m", "1");
        Template {
            person_id: person.into(),
            meta: TemplateMeta {
                seq: 0,
                kind: TemplateKind::Anchor,
                model_id: nt.model_id.clone(),
                model_version: "1".into(),
                quality: Default::default(),
                created: 0,
            },
            vector: nt.vector,
        }
    }

    fn axis(i: usize) -> Vec<f32> {
        let mut v = vec![0.0; EMBEDDING_DIM];
        v[i] = 1.0;
        v
    }

    #[test]
    fn dot_matches_naive() {
        let a: Vec<f32> = (0..EMBEDDING_DIM).map(|i| (i as f32).sin()).collect();
        let b: Vec<f32> = (0..EMBEDDING_DIM).map(|i| (i as f32 * 0.3).cos()).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-4);
        assert!(
            (dot(&a[..37], &b[..37])
                - a[..37]
                    .iter()
                    .zip(&b[..37])
                    .map(|(x, y)| x * y)
                    .sum::<f32>())
            .abs()
                < 1e-4
        );
    }

    #[test]
    fn empty_invalid_and_model_filter() {
        let p = MatchParams {
            threshold: 0.5,
            margin: 0.1,
        };
        let m = Matcher::from_templates(&[t("a", axis(0))], Some(("other", "1")), 0).unwrap();
        assert_eq!(
            m.identify(&axis(0), &p).reason,
            Some(DenyReason::EmptyGallery)
        );
        let m = Matcher::from_templates(&[t("a", axis(0))], None, 0).unwrap();
        assert_eq!(
            m.identify(&[0.0; 3], &p).reason,
            Some(DenyReason::InvalidQuery)
        );
        assert_eq!(
            m.identify(&vec![f32::NAN; EMBEDDING_DIM], &p).reason,
            Some(DenyReason::InvalidQuery)
        );
        let r = m.identify(&axis(0), &p);
        assert_eq!((r.decision, r.margin), (Decision::Granted, None));
        assert_eq!(
            m.verify("zz", &axis(0), &p).reason,
            Some(DenyReason::UnknownPerson)
        );
    }
}
