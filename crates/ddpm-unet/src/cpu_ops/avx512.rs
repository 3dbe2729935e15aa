//! f32 kernels written with AVX-512 intrinsics, for loops that the compiler's vectorisation
//! of the generic kernels leaves slow: rows too short for its 16-wide main loop to dominate
//! (a scalar tail of up to 15 elements, partial sums combined in f64), and a polynomial
//! without fused multiply-adds (Rust does not contract `a * b + c`).
//!
//! Callers check [`available`] first; every function here is `unsafe` only because it needs
//! the CPU features that check confirms.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::simd::{simd_level, SimdLevel};

/// Whether this CPU (and `DDPM_SIMD`) allows the kernels here.
pub(super) fn available() -> bool {
    simd_level() == SimdLevel::Avx512
}

/// The lanes of a 16-lane register that hold the first `len` (≤ 16) elements.
#[inline(always)]
pub(super) fn tail_mask(len: usize) -> __mmask16 {
    debug_assert!(len <= 16);
    ((1u32 << len) - 1) as __mmask16
}

/// e^x in each lane: the algorithm of [`exp_f32`](super::element::exp_f32) (Cephes'
/// `expf`: x = n·ln 2 + r, |r| ≤ ln2/2, a degree-5 polynomial for e^r) with fused
/// multiply-adds, and 2^n applied by `vscalefps`. Inputs are clamped to [−87, 88].
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn exp16(x: __m512) -> __m512 {
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-87.0)),
        _mm512_set1_ps(88.0),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let e_r = _mm512_fmadd_ps(
        p,
        _mm512_mul_ps(r, r),
        _mm512_add_ps(r, _mm512_set1_ps(1.0)),
    );
    _mm512_scalef_ps(e_r, n)
}

/// One row, in place: x ← softmax(s·x) = e^(s·x − m)/Σ e^(s·x − m), m = max s·x. Two passes
/// over the row: the maximum, then the exponentials with their sum; then the scaling.
///
/// # Safety
/// The CPU must support AVX-512F ([`available`]).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn softmax_row(row: &mut [f32], scale: f32) {
    let (len, ptr) = (row.len(), row.as_mut_ptr());
    let (full, rest) = (len / 16 * 16, len % 16);
    let s = _mm512_set1_ps(scale);
    // SAFETY (all loads and stores below): offsets i < full step by 16 with i + 16 ≤ len;
    // the tail's masked accesses touch only the `rest` lanes inside the row.
    let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
    for i in (0..full).step_by(16) {
        m = _mm512_max_ps(m, _mm512_mul_ps(s, unsafe { _mm512_loadu_ps(ptr.add(i)) }));
    }
    if rest > 0 {
        let mask = tail_mask(rest);
        let x = unsafe { _mm512_maskz_loadu_ps(mask, ptr.add(full)) };
        m = _mm512_mask_max_ps(m, mask, m, _mm512_mul_ps(s, x));
    }
    let shift = _mm512_set1_ps(_mm512_reduce_max_ps(m));
    let mut sum = _mm512_setzero_ps();
    for i in (0..full).step_by(16) {
        let e = exp16(_mm512_fmsub_ps(
            s,
            unsafe { _mm512_loadu_ps(ptr.add(i)) },
            shift,
        ));
        unsafe { _mm512_storeu_ps(ptr.add(i), e) };
        sum = _mm512_add_ps(sum, e);
    }
    if rest > 0 {
        let mask = tail_mask(rest);
        let x = unsafe { _mm512_maskz_loadu_ps(mask, ptr.add(full)) };
        let e = exp16(_mm512_fmsub_ps(s, x, shift));
        unsafe { _mm512_mask_storeu_ps(ptr.add(full), mask, e) };
        sum = _mm512_mask_add_ps(sum, mask, sum, e);
    }
    let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
    for i in (0..full).step_by(16) {
        unsafe { _mm512_storeu_ps(ptr.add(i), _mm512_mul_ps(inv, _mm512_loadu_ps(ptr.add(i)))) };
    }
    if rest > 0 {
        let mask = tail_mask(rest);
        let y = unsafe { _mm512_maskz_loadu_ps(mask, ptr.add(full)) };
        unsafe { _mm512_mask_storeu_ps(ptr.add(full), mask, _mm512_mul_ps(inv, y)) };
    }
}

/// One row's softmax backward, in place: g ← s·y ⊙ (g − g·y), for y = softmax(s·x).
///
/// # Safety
/// The CPU must support AVX-512F ([`available`]); `y` is as long as `grad`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn softmax_row_backward(grad: &mut [f32], y: &[f32], scale: f32) {
    assert_eq!(grad.len(), y.len(), "softmax backward: row lengths");
    let (len, g, y) = (grad.len(), grad.as_mut_ptr(), y.as_ptr());
    let (full, rest) = (len / 16 * 16, len % 16);
    // SAFETY (all loads and stores below): as in `softmax_row`, on two rows of one length.
    let mut dot = _mm512_setzero_ps();
    for i in (0..full).step_by(16) {
        let (gv, yv) = unsafe { (_mm512_loadu_ps(g.add(i)), _mm512_loadu_ps(y.add(i))) };
        dot = _mm512_fmadd_ps(gv, yv, dot);
    }
    let mask = tail_mask(rest);
    if rest > 0 {
        let (gv, yv) = unsafe {
            (
                _mm512_maskz_loadu_ps(mask, g.add(full)),
                _mm512_maskz_loadu_ps(mask, y.add(full)),
            )
        };
        dot = _mm512_fmadd_ps(gv, yv, dot);
    }
    let (dot, s) = (
        _mm512_set1_ps(_mm512_reduce_add_ps(dot)),
        _mm512_set1_ps(scale),
    );
    let update =
        |gv: __m512, yv: __m512| _mm512_mul_ps(_mm512_mul_ps(s, yv), _mm512_sub_ps(gv, dot));
    for i in (0..full).step_by(16) {
        unsafe {
            let v = update(_mm512_loadu_ps(g.add(i)), _mm512_loadu_ps(y.add(i)));
            _mm512_storeu_ps(g.add(i), v);
        }
    }
    if rest > 0 {
        unsafe {
            let v = update(
                _mm512_maskz_loadu_ps(mask, g.add(full)),
                _mm512_maskz_loadu_ps(mask, y.add(full)),
            );
            _mm512_mask_storeu_ps(g.add(full), mask, v);
        }
    }
}

/// The 16×16 transpose of the rows `r`: 8 unpacks, 8 in-lane shuffles, then a 4×4
/// transpose of 128-bit lanes (16 lane shuffles).
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    let zero = _mm512_setzero_ps();
    // t[2k], t[2k + 1]: rows 2k and 2k + 1 interleaved, in each 128-bit lane L.
    let mut t = [zero; 16];
    for k in 0..8 {
        t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    // u[4g + m], lane L: rows 4g..4g + 4 of column 4L + m.
    let mut u = [zero; 16];
    for g in 0..4 {
        let b = 4 * g;
        u[b] = _mm512_shuffle_ps::<0x44>(t[b], t[b + 2]);
        u[b + 1] = _mm512_shuffle_ps::<0xEE>(t[b], t[b + 2]);
        u[b + 2] = _mm512_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
        u[b + 3] = _mm512_shuffle_ps::<0xEE>(t[b + 1], t[b + 3]);
    }
    // Column 4L + m gathers lane L of u[m], u[4 + m], u[8 + m], u[12 + m].
    let mut out = [zero; 16];
    for m in 0..4 {
        let (a, b, c, d) = (u[m], u[4 + m], u[8 + m], u[12 + m]);
        let (ab_lo, ab_hi) = (
            _mm512_shuffle_f32x4::<0x44>(a, b),
            _mm512_shuffle_f32x4::<0xEE>(a, b),
        );
        let (cd_lo, cd_hi) = (
            _mm512_shuffle_f32x4::<0x44>(c, d),
            _mm512_shuffle_f32x4::<0xEE>(c, d),
        );
        out[m] = _mm512_shuffle_f32x4::<0x88>(ab_lo, cd_lo);
        out[4 + m] = _mm512_shuffle_f32x4::<0xDD>(ab_lo, cd_lo);
        out[8 + m] = _mm512_shuffle_f32x4::<0x88>(ab_hi, cd_hi);
        out[12 + m] = _mm512_shuffle_f32x4::<0xDD>(ab_hi, cd_hi);
    }
    out
}

/// `dst[t·rows + r] = src[r·src_rs + t]` for r < `rows` (a multiple of 16) and t <
/// `columns`: the transpose of a `rows` × `columns` matrix, by 16×16 blocks (the last
/// block's columns masked).
///
/// # Safety
/// The CPU must support AVX-512F ([`available`]); src's `rows` rows of `columns` elements,
/// `src_rs` apart, are readable, and dst holds `columns`·`rows` elements.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose(
    (src, src_rs): (*const f32, usize),
    (rows, columns): (usize, usize),
    dst: *mut f32,
) {
    assert!(rows.is_multiple_of(16));
    for r0 in (0..rows).step_by(16) {
        for t0 in (0..columns).step_by(16) {
            let width = (columns - t0).min(16);
            let mask = tail_mask(width);
            // SAFETY (the loads and stores): the caller's guarantee.
            let block: [__m512; 16] = std::array::from_fn(|r| unsafe {
                _mm512_maskz_loadu_ps(mask, src.add((r0 + r) * src_rs + t0))
            });
            for (t, value) in transpose16(block).into_iter().take(width).enumerate() {
                unsafe { _mm512_storeu_ps(dst.add((t0 + t) * rows + r0), value) };
            }
        }
    }
}

/// The sum of the 16 lanes, in f64.
#[inline]
#[target_feature(enable = "avx512f")]
fn reduce_add_f64(v: __m512) -> f64 {
    let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
        _mm512_castps_pd(v),
    )));
    _mm512_reduce_add_pd(_mm512_add_pd(lo, hi))
}

/// Calls `f(offset, mask)` for each block of 16 elements of a row of `len`: full blocks with
/// an all-ones mask, then the tail's lanes.
#[inline(always)]
fn blocks16(len: usize, mut f: impl FnMut(usize, __mmask16)) {
    let full = len / 16 * 16;
    for i in (0..full).step_by(16) {
        f(i, 0xffff);
    }
    if len > full {
        f(full, tail_mask(len - full));
    }
}

/// The lanes of `ptr[i..]` under `mask`, zero elsewhere.
///
/// # Safety
/// `ptr.add(i + lane)` must be readable for every lane set in `mask`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load(ptr: *const f32, i: usize, mask: __mmask16) -> __m512 {
    // SAFETY: the caller's contract.
    unsafe { _mm512_maskz_loadu_ps(mask, ptr.add(i)) }
}

/// Stores the lanes of `v` under `mask` at `ptr[i..]`.
///
/// # Safety
/// `ptr.add(i + lane)` must be writable for every lane set in `mask`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store(ptr: *mut f32, i: usize, mask: __mmask16, v: __m512) {
    // SAFETY: the caller's contract.
    unsafe { _mm512_mask_storeu_ps(ptr.add(i), mask, v) }
}

/// σ(z) = 1/(1 + e^(−z)) in each lane. (A `vrcp14ps` reciprocal refined by a Newton step
/// instead of the division measured no faster in GroupNorm: the exponential dominates.)
#[inline]
#[target_feature(enable = "avx512f")]
fn sigmoid16(z: __m512) -> __m512 {
    let one = _mm512_set1_ps(1.0);
    _mm512_div_ps(
        one,
        _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), z))),
    )
}

/// GroupNorm's (μ, 1/√(σ² + ε)) of one block, two passes as the generic `moments` in
/// [`super::group_norm`](mod@super::group_norm): Σ x, then Σ (x − μ)², lane sums combined
/// in f64.
#[target_feature(enable = "avx512f")]
fn moments(x: &[f32], eps: f64) -> (f64, f64) {
    let (n, ptr) = (x.len() as f64, x.as_ptr());
    let mut sum = _mm512_setzero_ps();
    // SAFETY (every `load` here): `blocks16` yields lanes inside `x`.
    blocks16(x.len(), |i, m| {
        sum = _mm512_add_ps(sum, unsafe { load(ptr, i, m) })
    });
    let mean = reduce_add_f64(sum) / n;
    let mu = _mm512_set1_ps(mean as f32);
    let mut ssd = _mm512_setzero_ps();
    blocks16(x.len(), |i, m| {
        // Masked-off lanes load 0; their deviation is masked off too.
        let d = _mm512_maskz_sub_ps(m, unsafe { load(ptr, i, m) }, mu);
        ssd = _mm512_fmadd_ps(d, d, ssd);
    });
    (mean, 1.0 / (reduce_add_f64(ssd) / n + eps).sqrt())
}

/// One (sample, group) block of GroupNorm's forward, `pixels` values per channel:
/// y = z or z·σ(z), z = γ_c·(x − μ)·r + β_c.
///
/// # Safety
/// The CPU must support AVX-512F ([`available`]); `y` is as long as `x`, a whole number of
/// channels, and γ and β hold at least that many.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn group_norm_forward_block(
    y: &mut [MaybeUninit<f32>],
    x: &[f32],
    pixels: usize,
    (gamma, beta): (&[f32], &[f32]),
    eps: f64,
    silu: bool,
) {
    assert!(y.len() == x.len() && pixels > 0 && x.len().is_multiple_of(pixels));
    let (mean, rstd) = moments(x, eps);
    for (c, (y_c, x_c)) in y.chunks_mut(pixels).zip(x.chunks(pixels)).enumerate() {
        // z = a·x + b with a = γ·r, b = β − μ·γ·r.
        let a = f64::from(gamma[c]) * rstd;
        let b = f64::from(beta[c]) - mean * a;
        let (a, b) = (_mm512_set1_ps(a as f32), _mm512_set1_ps(b as f32));
        let (xp, yp) = (x_c.as_ptr(), y_c.as_mut_ptr().cast::<f32>());
        // SAFETY: `blocks16` yields lanes inside the channel's rows of x and y (which is
        // only written).
        blocks16(pixels, |i, m| {
            let z = _mm512_fmadd_ps(a, unsafe { load(xp, i, m) }, b);
            let v = if silu {
                _mm512_mul_ps(z, sigmoid16(z))
            } else {
                z
            };
            unsafe { store(yp, i, m, v) }
        });
    }
}

/// One (sample, group) block of GroupNorm's backward: ∂L/∂x into `dx`, and the block's
/// [∂L/∂γ per channel, ∂L/∂β per channel], as the generic `backward_block` in
/// [`super::group_norm`](mod@super::group_norm) computes them, with the dz pass and its two
/// sums fused.
///
/// # Safety
/// As [`group_norm_forward_block`], with `dx` and `dy` as long as `x`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn group_norm_backward_block(
    dx: &mut [MaybeUninit<f32>],
    x: &[f32],
    dy: &[f32],
    pixels: usize,
    (gamma, beta): (&[f32], &[f32]),
    eps: f64,
    silu: bool,
) -> Vec<f64> {
    assert!(dx.len() == x.len() && dy.len() == x.len() && pixels > 0);
    assert!(x.len().is_multiple_of(pixels));
    let cg = x.len() / pixels;
    let (mean, rstd) = moments(x, eps);
    let (m, r) = (_mm512_set1_ps(mean as f32), _mm512_set1_ps(rstd as f32));
    let one = _mm512_set1_ps(1.0);
    let mut sums = vec![0.0f64; 2 * cg];
    let (mut sum_d, mut sum_dxhat) = (0.0f64, 0.0f64);
    for c in 0..cg {
        let at = c * pixels;
        let (gm, bt) = (_mm512_set1_ps(gamma[c]), _mm512_set1_ps(beta[c]));
        // SAFETY: `blocks16` yields lanes inside this channel's rows of x, dy and dx.
        let (xp, dyp, dxp) = unsafe {
            (
                x.as_ptr().add(at),
                dy.as_ptr().add(at),
                dx.as_mut_ptr().add(at).cast::<f32>(),
            )
        };
        let (mut acc_dz, mut acc_dz_x) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        blocks16(pixels, |i, mask| {
            let (xv, dyv) = unsafe { (load(xp, i, mask), load(dyp, i, mask)) };
            let dz = if silu {
                let z = _mm512_fmadd_ps(gm, _mm512_mul_ps(_mm512_sub_ps(xv, m), r), bt);
                let s = sigmoid16(z);
                // dy·σ(z)·(1 + z·(1 − σ(z))); masked-off lanes have dy = 0.
                _mm512_mul_ps(
                    _mm512_mul_ps(dyv, s),
                    _mm512_fmadd_ps(z, _mm512_sub_ps(one, s), one),
                )
            } else {
                dyv
            };
            unsafe { store(dxp, i, mask, dz) };
            acc_dz = _mm512_add_ps(acc_dz, dz);
            acc_dz_x = _mm512_fmadd_ps(dz, xv, acc_dz_x);
        });
        // Σ dz·x̂ = r·(Σ dz·x − μ·Σ dz).
        let (sum_dz, sum_dz_x) = (reduce_add_f64(acc_dz), reduce_add_f64(acc_dz_x));
        let dgamma = rstd * (sum_dz_x - mean * sum_dz);
        let gm64 = f64::from(gamma[c]);
        sum_d += gm64 * sum_dz;
        sum_dxhat += gm64 * dgamma;
        sums[c] = dgamma;
        sums[cg + c] = sum_dz;
    }
    let n = x.len() as f64;
    let (mean_d, mean_dxhat) = (sum_d / n, sum_dxhat / n);
    // ∂L/∂x = r·(d − mean(d) − x̂·mean(d·x̂)) = a_c·dz + b·x + c, d = γ_c·dz.
    let b = _mm512_set1_ps((-rstd * rstd * mean_dxhat) as f32);
    let cst = _mm512_set1_ps((-rstd * mean_d + rstd * rstd * mean * mean_dxhat) as f32);
    for ((dx_c, x_c), &gm) in dx.chunks_mut(pixels).zip(x.chunks(pixels)).zip(gamma) {
        let a = _mm512_set1_ps((rstd * f64::from(gm)) as f32);
        let (xp, dxp) = (x_c.as_ptr(), dx_c.as_mut_ptr().cast::<f32>());
        // SAFETY: `blocks16` yields lanes inside the channel's rows, whose dz the first
        // pass wrote.
        blocks16(pixels, |i, mask| {
            let (xv, dz) = unsafe { (load(xp, i, mask), load(dxp, i, mask)) };
            let v = _mm512_fmadd_ps(a, dz, _mm512_fmadd_ps(b, xv, cst));
            unsafe { store(dxp, i, mask, v) }
        });
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp16_is_accurate() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let lanes: [f32; 16] = std::array::from_fn(|i| x + i as f32 * 1e-4);
            let mut out = [0f32; 16];
            // SAFETY: AVX-512F is available (checked above); 16 elements each way.
            unsafe {
                _mm512_storeu_ps(out.as_mut_ptr(), exp16(_mm512_loadu_ps(lanes.as_ptr())));
            }
            for (&v, &e) in lanes.iter().zip(&out) {
                let exact = f64::from(v).exp();
                worst = worst.max(((f64::from(e) - exact) / exact).abs());
            }
            x += 0.001_37 * 16.0;
        }
        assert!(worst < 2e-7, "worst relative error {worst:e}");
    }

    #[test]
    fn softmax_row_matches_f64() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        // Lengths around the 16-lane blocks, including a row of one and rows with a tail.
        for (len, scale) in [
            (1usize, 1.0f32),
            (5, 0.3),
            (16, 2.0),
            (17, -0.7),
            (196, 0.17),
        ] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 7919 + 13) % 101) as f32 / 10.0 - 5.0)
                .collect();
            let mut row = x.clone();
            // SAFETY: AVX-512F is available (checked above).
            unsafe { softmax_row(&mut row, scale) };
            let m = x
                .iter()
                .map(|&v| f64::from(scale * v))
                .fold(f64::MIN, f64::max);
            let e: Vec<f64> = x
                .iter()
                .map(|&v| (f64::from(scale * v) - m).exp())
                .collect();
            let total: f64 = e.iter().sum();
            for (i, (&ours, &ei)) in row.iter().zip(&e).enumerate() {
                let exact = ei / total;
                assert!(
                    (f64::from(ours) - exact).abs() <= 1e-6 * exact.max(1e-3),
                    "len {len}, element {i}: {ours} against {exact}"
                );
            }
            // The backward on this row: s·y_i·(g_i − Σ_j g_j·y_j), in f64 from the same y.
            let grad: Vec<f32> = (0..len).map(|i| ((i * 31 + 7) % 17) as f32 - 8.0).collect();
            let mut ours = grad.clone();
            // SAFETY: AVX-512F is available (checked above); both rows have `len` elements.
            unsafe { softmax_row_backward(&mut ours, &row, scale) };
            let dot: f64 = grad.iter().zip(&row).map(|(&g, &y)| f64::from(g * y)).sum();
            for (i, ((&o, &g), &y)) in ours.iter().zip(&grad).zip(&row).enumerate() {
                let exact = f64::from(scale) * f64::from(y) * (f64::from(g) - dot);
                assert!(
                    (f64::from(o) - exact).abs() <= 1e-5 * exact.abs().max(1e-3),
                    "len {len}, gradient {i}: {o} against {exact}"
                );
            }
        }
    }
}
