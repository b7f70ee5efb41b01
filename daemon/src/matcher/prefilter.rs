//! The int8 prefilter that makes 1:N identify exact without reading the whole `f32` gallery.
//!
//! A 1:N scan is limited by memory traffic and multiply throughput: 100k templates are 51 MB of
//! `f32`, more than any cache of a terminal's CPU. Each template row therefore also has an int8
//! copy (a quarter of the bytes) with its own scale, and the build records the largest L2 error
//! `E` of any row's copy. A query is quantised to 7-bit codes (±64, so one `u8 × i8` pair sum
//! cannot saturate 16 bits) with its exact error `e_q`. For unit rows `x` and query `y`,
//! `|x·y − x̂·ŷ| ≤ e_q + E + E·e_q` (expand `x·y − (x − e_x)·(y − e_y)`), so every row gets an
//! interval that surely holds its exact score, and every person the interval of their best row.
//! Only the people whose interval reaches the second-highest lower bound of distinct people can
//! be in the top two; the matcher scores just those in `f32`, which gives the result of a full
//! `f32` scan, best and runner-up scores included.
//!
//! One pass finds that bound: it keeps the best approximate score and its person, and the best
//! score of anybody else, skipping blocks of eight rows whose best cannot change either (almost
//! all of them once the first rows are seen); rows that might still qualify are kept and
//! filtered with the final bound. The integer dot products are exact whatever the kernel, and the
//! scaling is the same `f32` operations, so the SIMD kernels return the portable kernel's numbers
//! bit for bit (unit tests check this and the bounds; the matcher's tests check the top two).
//!
//! Kernels: AVX2 on x86-64 when the CPU has it (run-time check; `vpmaddubsw` takes 32 codes per
//! multiply), NEON on aarch64 (baseline on every 64-bit Raspberry Pi; `smull` + `sadalp`).
//! Elsewhere the portable kernel is no faster than the `f32` scan, so the matcher builds no
//! prefilter at all.

use zeroize::Zeroize;

use crate::store::EMBEDDING_DIM;

const DIM: usize = EMBEDDING_DIM;
const _: () = assert!(
    DIM.is_multiple_of(32),
    "the SIMD kernels step 16 or 32 codes at a time"
);

/// Largest magnitude of a row code.
const ROW_CODE_MAX: f32 = 127.0;
/// Largest magnitude of a query code. The AVX2 kernel multiplies `query + 64` (0..=128, as
/// `u8`) by row codes (±127) and sums pairs in `i16`: 2 × 128 × 127 = 32512 ≤ 32767.
const QUERY_CODE_MAX: f32 = 64.0;
/// Offset that makes a query code a `u8` for `vpmaddubsw`.
const QUERY_OFFSET: i32 = 64;
/// Added to every bound for the `f32` rounding of scales, products, norms and of the `f32`
/// re-scoring itself (each well under 1e-5 for unit vectors); bounds need only be safe.
const BOUND_SLACK: f32 = 1e-4;
/// Rows are stored in blocks of this many (zero rows with zero scale pad the last block).
const BLOCK: usize = 8;
/// Rows scored per kernel call (a multiple of BLOCK; 1 KiB of stack).
const CHUNK: usize = 256;
const _: () = assert!(CHUNK.is_multiple_of(BLOCK));

/// Which integer dot-product kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust; the reference the SIMD kernels are tested against.
    Portable,
    /// x86-64 AVX2: `vpmaddubsw` + `vpmaddwd`, 8 rows at a time.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// aarch64 NEON: `smull` + `sadalp`, 4 rows at a time.
    #[cfg(target_arch = "aarch64")]
    Neon,
}

impl Kernel {
    /// The fast kernel this CPU runs, or `None` where only the portable one exists (the matcher
    /// then scans `f32` directly, which is as fast).
    pub fn fastest() -> Option<Kernel> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Some(Kernel::Avx2);
        }
        #[cfg(target_arch = "aarch64")]
        return Some(Kernel::Neon);
        #[allow(unreachable_code)]
        None
    }

    /// Every kernel this CPU can run (tests and `bench match` compare them).
    pub fn available() -> Vec<Kernel> {
        let mut k = vec![Kernel::Portable];
        k.extend(Self::fastest());
        k
    }

    /// Name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => "avx2",
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => "neon",
        }
    }
}

/// Int8 copies of the gallery rows, with per-row scales and the largest copy error.
pub struct Prefilter {
    /// `padded rows × DIM` codes: `row ≈ scale × codes`; padding rows are zero.
    codes: Vec<i8>,
    /// Per padded row: the scale of its codes (0 for padding).
    scale: Vec<f32>,
    /// Per padded row: the sum of its codes (undoes the query offset of the AVX2 kernel).
    code_sum: Vec<i32>,
    /// Per real row: the person (index into the matcher's ranges) it belongs to.
    person: Vec<u32>,
    /// Upper bound of `‖row − scale × codes‖₂` over all rows.
    err_max: f32,
    kernel: Kernel,
}

impl Drop for Prefilter {
    fn drop(&mut self) {
        self.codes.zeroize();
        self.scale.zeroize();
        self.code_sum.zeroize();
    }
}

/// Codes of `v` with `max |code| = max_code`; returns the scale and the exact L2 error.
fn quantise<T: Copy>(
    v: &[f32],
    max_code: f32,
    out: &mut [T],
    cast: impl Fn(f32) -> T,
) -> (f32, f32) {
    let peak = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let scale = if peak > 0.0 { peak / max_code } else { 1.0 };
    let mut err2 = 0.0f64;
    for (o, &x) in out.iter_mut().zip(v) {
        let c = (x / scale).round().clamp(-max_code, max_code);
        *o = cast(c);
        let d = f64::from(x) - f64::from(c) * f64::from(scale);
        err2 += d * d;
    }
    (scale, err2.sqrt() as f32)
}

/// A quantised query in the forms the kernels read.
struct Query {
    /// Codes, −64..=64.
    codes: [i8; DIM],
    /// `codes + 64` as `u8` (AVX2).
    offset: [u8; DIM],
}

impl Drop for Query {
    fn drop(&mut self) {
        self.codes.zeroize();
        self.offset.zeroize();
    }
}

impl Prefilter {
    /// Quantise `data` (`rows × DIM`, unit rows, grouped by person as `ranges` says) for
    /// `kernel`.
    pub fn build(data: &[f32], ranges: &[(usize, usize)], kernel: Kernel) -> Prefilter {
        let rows = data.len() / DIM;
        let padded = rows.div_ceil(BLOCK) * BLOCK;
        let mut p = Prefilter {
            codes: vec![0; padded * DIM],
            scale: vec![0.0; padded],
            code_sum: vec![0; padded],
            person: vec![0; rows],
            err_max: 0.0,
            kernel,
        };
        for (r, (row, out)) in data
            .chunks_exact(DIM)
            .zip(p.codes.chunks_exact_mut(DIM))
            .enumerate()
        {
            let (scale, err) = quantise(row, ROW_CODE_MAX, out, |x| x as i8);
            p.scale[r] = scale;
            p.code_sum[r] = out.iter().map(|&c| i32::from(c)).sum();
            p.err_max = p.err_max.max(err);
        }
        for (i, &(s, e)) in ranges.iter().enumerate() {
            p.person[s..e].fill(i as u32);
        }
        p
    }

    /// Heap bytes held.
    pub fn memory_bytes(&self) -> usize {
        self.codes.capacity()
            + 4 * (self.scale.capacity() + self.code_sum.capacity() + self.person.capacity())
    }

    /// The kernel in use.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Approximate scores (in units of the query scale) of the padded rows `first..first + n`
    /// into `out[..n]`: `(codes · query) as f32 × row scale`.
    fn scores(&self, first: usize, q: &Query, out: &mut [f32]) {
        let n = out.len();
        debug_assert!(n.is_multiple_of(BLOCK) && first.is_multiple_of(BLOCK));
        let codes = &self.codes[first * DIM..(first + n) * DIM];
        let scale = &self.scale[first..first + n];
        let sums = &self.code_sum[first..first + n];
        match self.kernel {
            Kernel::Portable => scores_portable(codes, scale, &q.codes, out),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Kernel::Avx2` is only chosen after `is_x86_feature_detected!("avx2")`
            // returned true (`Kernel::fastest`, `Kernel::available`); slice lengths agree
            // (asserted inside).
            Kernel::Avx2 => unsafe { scores_avx2(codes, scale, sums, &q.offset, out) },
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => scores_neon(codes, scale, &q.codes, out),
        }
        let _ = sums;
    }

    /// The people (indices into `ranges`, each a `[start, end)` row range, in row order) who can
    /// be in the exact top two of `q` (a unit query), in order, never `skip`. See the module doc.
    pub fn candidates(
        &self,
        q: &[f32],
        ranges: &[(usize, usize)],
        skip: Option<usize>,
    ) -> Vec<usize> {
        let mut query = Query {
            codes: [0; DIM],
            offset: [0; DIM],
        };
        let (q_scale, q_err) = quantise(q, QUERY_CODE_MAX, &mut query.codes, |x| x as i8);
        query.offset = query.codes.map(|c| (i32::from(c) + QUERY_OFFSET) as u8);
        let bound = q_err + self.err_max + self.err_max * q_err + BOUND_SLACK;
        // A person qualifies when their upper bound reaches the second-highest lower bound, in
        // units of the query scale: a_p·s + B ≥ a2·s − B, i.e. some row has a ≥ a2 − 2B/s.
        let reach = 2.0 * bound / q_scale;
        let skip = skip.map(|s| s as u32);
        let rows = self.person.len();
        // Best row overall (score, person) and the best row of anybody else.
        let (mut a1, mut p1, mut a2) = (f32::NEG_INFINITY, u32::MAX, f32::NEG_INFINITY);
        // Rows that may still qualify; the cut only rises, the final one is applied below.
        let mut kept: Vec<(u32, f32)> = Vec::new();
        let mut buf = [0.0f32; CHUNK];
        let padded = self.scale.len();
        let mut first = 0;
        while first < padded {
            let n = CHUNK.min(padded - first);
            self.scores(first, &query, &mut buf[..n]);
            for (b, block) in buf[..n].chunks_exact(BLOCK).enumerate() {
                // Nothing in this block can change a1, a2 or qualify: skip it.
                let top = block.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                if top < a2 - reach {
                    continue;
                }
                let base = first + b * BLOCK;
                for (i, &a) in block.iter().enumerate() {
                    let r = base + i;
                    if r >= rows {
                        break;
                    }
                    let p = self.person[r];
                    if Some(p) == skip {
                        continue;
                    }
                    if p == p1 {
                        a1 = a1.max(a);
                    } else if a > a1 {
                        a2 = a1;
                        a1 = a;
                        p1 = p;
                    } else if a > a2 {
                        a2 = a;
                    }
                    if a >= a2 - reach {
                        kept.push((p, a));
                    }
                }
            }
            first += n;
        }
        if a2 == f32::NEG_INFINITY {
            // At most one person to rank: nothing to filter.
            return (0..ranges.len())
                .filter(|&p| Some(p as u32) != skip)
                .collect();
        }
        let cut = a2 - reach;
        let mut out: Vec<usize> = kept
            .into_iter()
            .filter(|&(_, a)| a >= cut)
            .map(|(p, _)| p as usize)
            .collect();
        out.dedup();
        out
    }
}

fn scores_portable(codes: &[i8], scale: &[f32], q: &[i8; DIM], out: &mut [f32]) {
    for ((o, row), &s) in out.iter_mut().zip(codes.chunks_exact(DIM)).zip(scale) {
        let d: i32 = row
            .iter()
            .zip(q)
            .map(|(&c, &w)| i32::from(c) * i32::from(w))
            .sum();
        *o = d as f32 * s;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scores_avx2(codes: &[i8], scale: &[f32], sums: &[i32], q: &[u8; DIM], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = out.len();
    assert!(
        n.is_multiple_of(BLOCK) && codes.len() == n * DIM && scale.len() == n && sums.len() == n
    );
    // SAFETY (whole body): every load reads 32 codes at `r * DIM + k` with r < BLOCK and
    // k + 32 <= DIM inside the block's BLOCK * DIM codes, 32 query bytes at k + 32 <= DIM, or
    // 8 scales / sums at a block start inside their slices; the store writes 8 f32 into the
    // block's 8 slots of `out`. All loads and stores are unaligned ones.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut qv = [_mm256_setzero_si256(); DIM / 32];
        for (j, v) in qv.iter_mut().enumerate() {
            *v = _mm256_loadu_si256(q.as_ptr().add(32 * j) as *const __m256i);
        }
        for b in 0..n / BLOCK {
            let block = codes.as_ptr().add(b * BLOCK * DIM);
            let mut acc = [_mm256_setzero_si256(); BLOCK];
            for (j, &qj) in qv.iter().enumerate() {
                for (r, a) in acc.iter_mut().enumerate() {
                    let c = _mm256_loadu_si256(block.add(r * DIM + 32 * j) as *const __m256i);
                    // (q + 64) × code, pairs summed in i16 (no saturation, see QUERY_OFFSET),
                    // then pairs of those summed in i32.
                    let pairs = _mm256_maddubs_epi16(qj, c);
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(pairs, ones));
                }
            }
            // Transpose-reduce 8 accumulators of 8 lanes into one vector of 8 row sums.
            let s01 = _mm256_hadd_epi32(acc[0], acc[1]);
            let s23 = _mm256_hadd_epi32(acc[2], acc[3]);
            let s45 = _mm256_hadd_epi32(acc[4], acc[5]);
            let s67 = _mm256_hadd_epi32(acc[6], acc[7]);
            let s0123 = _mm256_hadd_epi32(s01, s23);
            let s4567 = _mm256_hadd_epi32(s45, s67);
            let lo = _mm256_permute2x128_si256::<0x20>(s0123, s4567);
            let hi = _mm256_permute2x128_si256::<0x31>(s0123, s4567);
            let raw = _mm256_add_epi32(lo, hi);
            // Undo the offset: Σ (q + 64)·c − 64·Σ c = Σ q·c, exactly.
            let sum = _mm256_loadu_si256(sums.as_ptr().add(b * BLOCK) as *const __m256i);
            const _: () = assert!(QUERY_OFFSET == 1 << 6);
            let dot = _mm256_sub_epi32(raw, _mm256_slli_epi32::<6>(sum));
            let s = _mm256_loadu_ps(scale.as_ptr().add(b * BLOCK));
            _mm256_storeu_ps(
                out.as_mut_ptr().add(b * BLOCK),
                _mm256_mul_ps(_mm256_cvtepi32_ps(dot), s),
            );
        }
    }
}

#[cfg(target_arch = "aarch64")]
fn scores_neon(codes: &[i8], scale: &[f32], q: &[i8; DIM], out: &mut [f32]) {
    use std::arch::aarch64::*;
    let n = out.len();
    assert!(n.is_multiple_of(4) && codes.len() == n * DIM && scale.len() == n);
    for b in 0..n / 4 {
        // SAFETY: NEON is part of the aarch64 baseline. Every load reads 16 codes at
        // `r * DIM + k` with r < 4 and k + 16 <= DIM inside rows 4b..4b+4 of `codes`, or 16
        // query codes at k + 16 <= DIM.
        unsafe {
            let rows = codes.as_ptr().add(4 * b * DIM);
            let mut acc = [vdupq_n_s32(0); 4];
            for k in (0..DIM).step_by(16) {
                let qv = vld1q_s8(q.as_ptr().add(k));
                for (r, a) in acc.iter_mut().enumerate() {
                    let c = vld1q_s8(rows.add(r * DIM + k));
                    // i8 × i8 products fit i16 (127 × 64); pairs of them accumulate into i32.
                    *a = vpadalq_s16(*a, vmull_s8(vget_low_s8(c), vget_low_s8(qv)));
                    *a = vpadalq_s16(*a, vmull_high_s8(c, qv));
                }
            }
            for (r, a) in acc.into_iter().enumerate() {
                let i = 4 * b + r;
                out[i] = vaddvq_s32(a) as f32 * scale[i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn ranges_of_two(rows: usize) -> Vec<(usize, usize)> {
        (0..rows)
            .step_by(2)
            .map(|s| (s, (s + 2).min(rows)))
            .collect()
    }

    /// Every kernel gives the portable kernel's scores bit for bit, extreme codes included.
    #[test]
    fn kernels_agree_exactly() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let rows = 3 * CHUNK + 5 * BLOCK + 3;
        let data: Vec<f32> = (0..rows)
            .flat_map(|_| crate::bench::random_unit(&mut rng))
            .collect();
        let ranges = ranges_of_two(rows);
        for kernel in Kernel::available() {
            let mut p = Prefilter::build(&data, &ranges, kernel);
            // The overflow argument's worst cases: all codes at ±127 against queries at ±64.
            p.codes[..DIM].fill(-127);
            p.codes[DIM..2 * DIM].fill(127);
            for r in 0..2 {
                p.code_sum[r] = p.codes[r * DIM..(r + 1) * DIM]
                    .iter()
                    .map(|&c| i32::from(c))
                    .sum();
                p.scale[r] = 1.0;
            }
            let padded = p.scale.len();
            for codes in [
                [64i8; DIM],
                [-64i8; DIM],
                std::array::from_fn(|_| rng.random_range(-64..=64)),
            ] {
                let q = Query {
                    codes,
                    offset: codes.map(|c| (i32::from(c) + QUERY_OFFSET) as u8),
                };
                let mut want = vec![0.0f32; padded];
                scores_portable(&p.codes, &p.scale, &q.codes, &mut want);
                let mut got = vec![0.0f32; padded];
                for first in (0..padded).step_by(CHUNK) {
                    let n = CHUNK.min(padded - first);
                    p.scores(first, &q, &mut got[first..first + n]);
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{}", kernel.name());
                let c0 = i32::from(codes[0]);
                if codes.iter().all(|&c| i32::from(c) == c0) {
                    assert_eq!(got[0], (-127 * c0 * DIM as i32) as f32);
                    assert_eq!(got[1], (127 * c0 * DIM as i32) as f32);
                }
                // Padding rows score zero.
                assert!(got[rows..].iter().all(|&d| d == 0.0));
            }
        }
    }

    /// The recorded error bounds hold: `|x·y − approx| ≤ bound` on random unit vectors.
    #[test]
    fn error_bound_holds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let rows = 64;
        let data: Vec<f32> = (0..rows)
            .flat_map(|_| crate::bench::random_unit(&mut rng))
            .collect();
        let p = Prefilter::build(&data, &ranges_of_two(rows), Kernel::Portable);
        let mut worst = 0.0f64;
        for _ in 0..50 {
            let y = crate::bench::random_unit(&mut rng);
            let mut qc = [0i8; DIM];
            let (qs, qe) = quantise(&y, QUERY_CODE_MAX, &mut qc, |x| x as i8);
            let mut approx = vec![0.0f32; p.scale.len()];
            scores_portable(&p.codes, &p.scale, &qc, &mut approx);
            let bound = f64::from(qe + p.err_max + p.err_max * qe);
            for (r, x) in data.chunks_exact(DIM).enumerate() {
                let exact: f64 = x
                    .iter()
                    .zip(&y)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                let err = (exact - f64::from(approx[r]) * f64::from(qs)).abs();
                worst = worst.max(err / bound);
                assert!(err <= bound + 1e-6, "row {r}: error {err} > bound {bound}");
            }
        }
        assert!(p.err_max > 0.0 && p.err_max < 0.02, "err_max {}", p.err_max);
        println!("prefilter: worst error / bound {worst:.3}");
    }
}
