//! In-memory 1:N and 1:1 face matcher over decrypted templates.
//!
//! Templates are decrypted once (from [`crate::store::Store::load_all_templates`]) into one
//! contiguous row-major `f32` matrix, L2-normalised so cosine similarity is a dot product, with
//! rows grouped by person. The matrices are zeroized when the matcher is dropped.
//!
//! Identify is exact but does not read the whole `f32` matrix: a 1:N scan is limited by memory
//! traffic (100k templates are 51 MB of `f32`, more than any cache on a terminal), so each row
//! also has an int8 copy (a quarter of the bytes) and a proven bound on that copy's error. A
//! query first scans the int8 rows (integer dot products; AVX2 on x86 when the CPU has it,
//! NEON on aarch64), which gives every person an interval that surely holds their exact score;
//! only the people whose interval reaches the second-best lower bound can be in the top two,
//! and only they are scored again in `f32`. The result, best and runner-up scores included, is
//! the one a full `f32` scan gives (a unit test compares both on random galleries). Where no
//! fast integer path exists (x86 without AVX2, 32-bit Arm) the full `f32` scan runs instead.
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

mod prefilter;
pub use prefilter::Kernel;
use prefilter::Prefilter;

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
    /// The int8 prefilter (see [`prefilter`]); `None` where it would not be faster.
    coarse: Option<Prefilter>,
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
            coarse: None,
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
        m.coarse = prefilter::Kernel::fastest().map(|k| Prefilter::build(&m.data, &m.ranges, k));
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
        let coarse = self.coarse.as_ref().map_or(0, Prefilter::memory_bytes);
        self.data.capacity() * 4
            + coarse
            + self.ranges.capacity() * 16
            + strings
            + self.index.capacity() * 8
    }

    /// The int8 prefilter kernel identify runs through, `None` for the plain `f32` scan.
    pub fn prefilter_kernel(&self) -> Option<Kernel> {
        self.coarse.as_ref().map(Prefilter::kernel)
    }

    /// Identify through `kernel`'s int8 prefilter, or with `None` by scanning every row in
    /// `f32`. Results are the same either way; [`Matcher::from_templates`] already picks the
    /// fastest for this CPU, so only benchmarks and tests need this.
    pub fn set_prefilter(&mut self, kernel: Option<Kernel>) {
        self.coarse = kernel.map(|k| Prefilter::build(&self.data, &self.ranges, k));
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

    /// Best and runner-up (different person) scores, optionally skipping one person: through
    /// the int8 prefilter when there is one, else by scoring everybody in `f32`. Same result.
    fn top2(&self, q: &[f32], skip: Option<usize>) -> (Option<(usize, f32)>, f32) {
        match &self.coarse {
            Some(c) if self.persons.len() > 2 => {
                let candidates = c.candidates(q, &self.ranges, skip);
                self.top2_of(q, candidates.into_iter())
            }
            _ => self.top2_of(q, (0..self.persons.len()).filter(|&p| Some(p) != skip)),
        }
    }

    /// Exact best and runner-up among `people` (in order; ties keep the first).
    fn top2_of(
        &self,
        q: &[f32],
        people: impl Iterator<Item = usize>,
    ) -> (Option<(usize, f32)>, f32) {
        let (mut best, mut second) = (None::<(usize, f32)>, f32::NEG_INFINITY);
        for p in people {
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

    /// The int8 prefilter must give exactly what scoring everybody in `f32` gives: best person,
    /// best score and runner-up score, for identify and verify, on galleries with near-duplicate
    /// people (the hard case for a coarse filter) and queries equal to enrolled templates.
    #[test]
    fn prefilter_is_exact() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let params = MatchParams {
            threshold: 0.3,
            margin: 0.05,
        };
        for n in [3usize, 10, 257, 3000] {
            let mut templates = Vec::new();
            let mut vecs: Vec<Vec<f32>> = Vec::new();
            for i in 0..n {
                // Every fifth template is a slightly perturbed copy of an earlier one.
                let v = if i % 5 == 4 {
                    let base = &vecs[rng.random_range(0..vecs.len())];
                    base.iter()
                        .map(|x| x + rng.random_range(-0.002..0.002))
                        .collect()
                } else {
                    crate::bench::random_unit(&mut rng)
                };
                vecs.push(v.clone());
                templates.push(t(&format!("p{:05}", i * 2 / 3), v));
            }
            let mut queries: Vec<Vec<f32>> = (0..40)
                .map(|_| crate::bench::random_unit(&mut rng))
                .collect();
            queries.extend(vecs.iter().step_by(7).take(40).cloned());
            for kernel in prefilter::Kernel::available() {
                let k = kernel.name();
                let mut m = Matcher::from_templates(&templates, None, 0).unwrap();
                m.coarse = Some(Prefilter::build(&m.data, &m.ranges, kernel));
                for q in &queries {
                    let qn = Matcher::query(q).unwrap();
                    let everybody = m.top2_of(qn.as_slice(), 0..m.people());
                    assert_eq!(m.top2(qn.as_slice(), None), everybody, "n={n} {k}");
                    let fast = m.identify(q, &params);
                    let coarse = m.coarse.take();
                    assert_eq!(fast, m.identify(q, &params), "n={n} {k}");
                    let claimed = m.persons[n % m.people()].clone();
                    let slow_verify = m.verify(&claimed, q, &params);
                    m.coarse = coarse;
                    assert_eq!(m.verify(&claimed, q, &params), slow_verify, "n={n} {k}");
                }
                // The filter must actually filter on a large random gallery, or it is no faster.
                if n == 3000 {
                    let c = m.coarse.as_ref().unwrap();
                    let q = Matcher::query(&queries[0]).unwrap();
                    let kept = c.candidates(q.as_slice(), &m.ranges, None).len();
                    assert!(
                        kept < m.people() / 10,
                        "prefilter kept {kept} of {}",
                        m.people()
                    );
                }
            }
        }
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
