//! The inner loops of one attention head, on its N×N weights stored transposed: `wt` holds
//! W(i, j) (query i, key j) at `wt[j·ld + i]`, a row per key with the queries contiguous,
//! `ld` = [`leading`]`(n)`. Q, K, V and their gradients are stored channels first (d×N),
//! so every product below runs with the queries (or keys) in the 16 lanes of an AVX-512
//! register and a channel's value broadcast, and the softmax, a reduction over keys for
//! each query, is a vertical reduction down the rows, lane by lane.
//!
//! With S = Q·Kᵀ, P = softmax(s·S) by rows, O = P·V:
//! - [`scores_t`] writes Sᵀ (and, in the backward pass, dPᵀ = (dO·Vᵀ)ᵀ);
//! - [`softmax_columns`] turns Sᵀ into Pᵀ, [`softmax_columns_backward`] dPᵀ into dSᵀ;
//! - [`softmax_weights_t`] does both for Pᵀ, and can leave the normalisation to [`mix`];
//! - [`mix`] writes O = P·V, channels first (and dQ = dS·K);
//! - [`transpose`] gives P and dS by rows, for dV = Pᵀ·dO and dK = dSᵀ·Q through [`mix`].
//!
//! f32 on AVX-512 CPUs runs hand-written kernels (gemm's packing of these strided operands
//! was a scalar loop as costly as the products); other types and CPUs take gemm and plain
//! loops.

use std::mem::MaybeUninit;

use gemm::Parallelism;

use super::conv2d::{matmul, matmul_strided};
use super::element::{self, Element};
use super::simd::vectorized_fn;

/// The row stride of transposed weights for `n` tokens: n rounded up to whole 16-lane
/// vectors, so that a row's last vector stays inside it.
pub(super) fn leading(n: usize) -> usize {
    n.div_ceil(16) * 16
}

/// `wt[j·ld + i]` = Σ_c a[c·n + i]·b[c·n + j] for i, j < n, c < d: (A·Bᵀ)ᵀ for A and B (N×d)
/// stored channels first. Columns n..ld of each row are left finite (zero on AVX-512) or
/// untouched.
pub(super) fn scores_t<T: Element>(n: usize, d: usize, a: &[T], b: &[T], wt: &mut [T], ld: usize) {
    assert!(a.len() >= n * d && b.len() >= n * d && ld >= leading(n) && wt.len() >= n * ld);
    #[cfg(target_arch = "x86_64")]
    if super::avx512::available() {
        if let (Some(a), Some(b), Some(wt)) = (T::as_f32(a), T::as_f32(b), T::as_f32_mut(wt)) {
            // SAFETY: `available` confirmed AVX-512F; the lengths are asserted above.
            unsafe { kernels::scores_t(n, d, a, b, wt, ld, None) };
            return;
        }
    }
    // Row j of wt is Σ_c b[c, j]·a[c, ·]: lhs B (j, c), rhs A (c, i).
    matmul_strided(
        n,
        n,
        d,
        (wt, ld),
        false,
        b,
        (1, n),
        a,
        (n, 1),
        Parallelism::None,
    );
}

/// `out[c·n + i]` = r_i·Σ_j wt[j·ld + i]·x[c·n + j] for i < n, c < d: W·X for W (N×N) given
/// transposed and X (N×d) channels first, written channels first into `out`, which may be
/// uninitialised (all of its first n·d elements are written); r_i = `scale_by[i]` (as
/// [`softmax_weights_t`] leaves it), or 1.
pub(super) fn mix<T: Element>(
    n: usize,
    d: usize,
    wt: &[T],
    ld: usize,
    x: &[T],
    out: &mut [MaybeUninit<T>],
    scale_by: Option<&[T]>,
) {
    assert!(x.len() >= n * d && out.len() >= n * d && ld >= leading(n) && wt.len() >= n * ld);
    assert!(scale_by.is_none_or(|r| r.len() >= leading(n)));
    #[cfg(target_arch = "x86_64")]
    if super::avx512::available() {
        // The row scales as f32 too, when given.
        let r = match scale_by {
            None => Some(None),
            Some(r) => T::as_f32(r).map(Some),
        };
        if let (Some(wt), Some(x), Some(out), Some(r)) =
            (T::as_f32(wt), T::as_f32(x), T::as_f32_uninit(out), r)
        {
            // SAFETY: `available` confirmed AVX-512F; the lengths are asserted above.
            unsafe { kernels::mix(n, d, wt, ld, x, out, r) };
            return;
        }
    }
    // out (c, i) = Σ_j x (c, j)·wt (j, i).
    let out = element::zeroed(&mut out[..n * d]);
    matmul(
        d,
        n,
        n,
        out,
        false,
        x,
        (n, 1),
        wt,
        (ld, 1),
        Parallelism::None,
    );
    if let Some(r) = scale_by {
        for row in out.chunks_mut(n) {
            for (value, &r) in row.iter_mut().zip(r) {
                *value = *value * r;
            }
        }
    }
}

/// In place, for each query i < n: wt[·, i] ← softmax(s·wt[·, i]) over the n keys,
/// e^(s·x_j − m)/Σ_j e^(s·x_j − m) with m = max_j s·x_j. Columns n..ld take part but are
/// never read by the callers.
pub(super) fn softmax_columns<T: Element>(wt: &mut [T], n: usize, ld: usize, scale: f64) {
    assert!(ld >= leading(n) && wt.len() >= n * ld);
    if n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if super::avx512::available() {
        if let Some(wt) = T::as_f32_mut(wt) {
            // SAFETY: `available` confirmed AVX-512F; the length is asserted above.
            unsafe { kernels::softmax_columns(wt, n, ld, scale as f32) };
            return;
        }
    }
    softmax_columns_vectorized(wt, n, ld, scale)
}

/// Pᵀ = softmax(s·A·Bᵀ)ᵀ into `wt` for A, B (N×d) channels first: [`scores_t`], then
/// [`softmax_columns`]. With `inv`, the columns are left unnormalised, e^(s·x − m), and
/// `inv[i]` (of [`leading`]`(n)` elements) gets 1/Σ_j e^(s·x_j − m) for [`mix`] to scale
/// O by (one pass over the weights fewer). f32 on AVX-512 CPUs with s > 0 tracks each
/// query's maximum while the scores are computed (another pass fewer: max s·x = s·max x);
/// otherwise `inv` is all ones.
pub(super) fn softmax_weights_t<T: Element>(
    (n, d): (usize, usize),
    a: &[T],
    b: &[T],
    scale: f64,
    wt: &mut [T],
    ld: usize,
    mut inv: Option<&mut [T]>,
) {
    assert!(a.len() >= n * d && b.len() >= n * d && ld >= leading(n) && wt.len() >= n * ld);
    assert!(inv.as_ref().is_none_or(|inv| inv.len() >= leading(n)));
    #[cfg(target_arch = "x86_64")]
    if super::avx512::available() && scale > 0.0 && n > 0 {
        let inv32 = match inv.as_deref_mut() {
            None => Some(None),
            Some(inv) => T::as_f32_mut(inv).map(Some),
        };
        if let (Some(a), Some(b), Some(wt), Some(inv)) =
            (T::as_f32(a), T::as_f32(b), T::as_f32_mut(wt), inv32)
        {
            let mut max = vec![0.0f32; leading(n)];
            // SAFETY: `available` confirmed AVX-512F; the lengths are asserted above.
            unsafe {
                kernels::scores_t(n, d, a, b, wt, ld, Some(&mut max));
                kernels::exp_columns(wt, (n, ld), scale as f32, &max, inv);
            }
            return;
        }
    }
    scores_t(n, d, a, b, wt, ld);
    softmax_columns(wt, n, ld, scale);
    if let Some(inv) = inv {
        inv.fill(T::ONE);
    }
}

vectorized_fn!(
    /// [`softmax_columns`] for any element type, through the compiler's vectorisation (the
    /// loops over a row's queries).
    fn softmax_columns_vectorized<T: Element>(wt: &mut [T], n: usize, ld: usize, scale: f64)
        => softmax_columns_generic {
        let s = T::from_f64(scale);
        let rows = &mut wt[..n * ld];
        let mut shift: Vec<T> = rows[..n].iter().map(|&x| s * x).collect();
        for row in rows.chunks(ld).skip(1) {
            for (m, &x) in shift.iter_mut().zip(row) {
                *m = m.max(s * x);
            }
        }
        let mut sum = vec![T::ZERO; n];
        for row in rows.chunks_mut(ld) {
            for ((x, &m), total) in row.iter_mut().zip(&shift).zip(sum.iter_mut()) {
                *x = (s * *x - m).exp();
                *total += *x;
            }
        }
        let inv: Vec<T> = sum.iter().map(|&t| T::ONE / t).collect();
        for row in rows.chunks_mut(ld) {
            for (x, &r) in row.iter_mut().zip(&inv) {
                *x = *x * r;
            }
        }
    }
);

/// In place, for each query i < n: dwt[j, i] ← s·wt[j, i]·(dwt[j, i] − Σ_k dwt[k, i]·wt[k, i]),
/// the softmax backward dS from dP, with `wt` = Pᵀ from [`softmax_columns`].
pub(super) fn softmax_columns_backward<T: Element>(
    dwt: &mut [T],
    wt: &[T],
    n: usize,
    ld: usize,
    scale: f64,
) {
    assert!(ld >= leading(n) && wt.len() >= n * ld && dwt.len() >= n * ld);
    #[cfg(target_arch = "x86_64")]
    if super::avx512::available() {
        if let (Some(dwt), Some(wt)) = (T::as_f32_mut(dwt), T::as_f32(wt)) {
            // SAFETY: `available` confirmed AVX-512F; the lengths are asserted above.
            unsafe { kernels::softmax_columns_backward(dwt, wt, n, ld, scale as f32) };
            return;
        }
    }
    softmax_columns_backward_vectorized(dwt, wt, n, ld, scale)
}

vectorized_fn!(
    /// [`softmax_columns_backward`] for any element type, through the compiler's
    /// vectorisation.
    fn softmax_columns_backward_vectorized<T: Element>(
        dwt: &mut [T],
        wt: &[T],
        n: usize,
        ld: usize,
        scale: f64,
    ) => softmax_columns_backward_generic {
        let s = T::from_f64(scale);
        let mut dot = vec![T::ZERO; n];
        for (drow, row) in dwt.chunks(ld).zip(wt.chunks(ld)).take(n) {
            for ((acc, &g), &y) in dot.iter_mut().zip(drow).zip(row) {
                *acc += g * y;
            }
        }
        for (drow, row) in dwt.chunks_mut(ld).zip(wt.chunks(ld)).take(n) {
            for ((g, &y), &t) in drow.iter_mut().zip(row).zip(&dot) {
                *g = s * y * (*g - t);
            }
        }
    }
);

/// dst[i·ld + j] = src[j·ld + i] for i, j < n: the weights by rows (query i's row holds the
/// keys) from their transpose. Columns n..[`leading`]`(n)` of dst's rows are zeroed, for
/// [`mix`]'s whole-vector loads.
pub(super) fn transpose<T: Element>(src: &[T], dst: &mut [T], n: usize, ld: usize) {
    assert!(ld >= leading(n) && src.len() >= n * ld && dst.len() >= n * ld);
    #[cfg(target_arch = "x86_64")]
    if super::avx512::available() {
        if let (Some(src), Some(dst)) = (T::as_f32(src), T::as_f32_mut(dst)) {
            // SAFETY: `available` confirmed AVX-512F; the lengths are asserted above.
            unsafe { kernels::transpose(src, dst, n, ld) };
            return;
        }
    }
    for row in dst.chunks_mut(ld).take(n) {
        row[n..].fill(T::ZERO);
    }
    /// Tile side: a tile of each fits in a few cache lines' worth of rows.
    const TILE: usize = 16;
    for i0 in (0..n).step_by(TILE) {
        for j0 in (0..n).step_by(TILE) {
            for j in j0..(j0 + TILE).min(n) {
                for i in i0..(i0 + TILE).min(n) {
                    dst[i * ld + j] = src[j * ld + i];
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod kernels {
    //! The AVX-512 versions. Queries (or keys) run in the lanes, 16 to a vector; a block of
    //! `V` vectors of them meets `J` broadcast keys (or `C` broadcast channels) at a time,
    //! V·J accumulators in registers, as in a gemm microkernel.

    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use super::super::avx512::{exp16, tail_mask, transpose16};

    /// Lanes of a block of `V` vectors starting at query `i0` of `n`: the masks of its
    /// vectors.
    #[inline(always)]
    fn masks<const V: usize>(n: usize, i0: usize) -> [__mmask16; V] {
        std::array::from_fn(|v| {
            let start = i0 + 16 * v;
            tail_mask(n.saturating_sub(start).min(16))
        })
    }

    /// Calls `f(i0)` on blocks of queries: two vectors while more than 16 remain, then one.
    #[inline(always)]
    fn query_blocks(n: usize, mut two: impl FnMut(usize), mut one: impl FnMut(usize)) {
        let mut i0 = 0;
        while i0 < n {
            if n - i0 > 16 {
                two(i0);
                i0 += 32;
            } else {
                one(i0);
                i0 += 16;
            }
        }
    }

    /// Keys per step of [`scores_block`].
    const KEYS: usize = 6;

    /// wt[j·ld + i0 + 16v + lane] for keys j0..j0 + J and the block's V vectors of queries.
    ///
    /// # Safety
    /// AVX-512F; a, b hold d·n elements, i0 + 16·V ≤ ld, j0 + J ≤ n, wt holds n·ld.
    // The register tile is indexed by key (or channel) and vector together.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn scores_block<const V: usize, const J: usize, const MAX: bool>(
        (n, d): (usize, usize),
        (a, b): (*const f32, *const f32),
        (i0, j0): (usize, usize),
        mask: [__mmask16; V],
        (wt, ld): (*mut f32, usize),
        max: *mut f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); J]; V];
        for c in 0..d {
            let row = c * n;
            // SAFETY: masked loads inside a's row c; b[row + j] with j < n.
            let q: [__m512; V] = std::array::from_fn(|v| unsafe {
                _mm512_maskz_loadu_ps(mask[v], a.add(row + i0 + 16 * v))
            });
            for jj in 0..J {
                let key = _mm512_set1_ps(unsafe { *b.add(row + j0 + jj) });
                for v in 0..V {
                    acc[v][jj] = _mm512_fmadd_ps(q[v], key, acc[v][jj]);
                }
            }
        }
        for jj in 0..J {
            for (v, acc) in acc.iter().enumerate() {
                // SAFETY: row j0 + jj < n of wt, lanes up to i0 + 16·V ≤ ld.
                unsafe { _mm512_storeu_ps(wt.add((j0 + jj) * ld + i0 + 16 * v), acc[jj]) };
            }
        }
        if MAX {
            for (v, acc) in acc.iter().enumerate() {
                let most = acc.iter().fold(_mm512_set1_ps(f32::NEG_INFINITY), |m, &x| {
                    _mm512_max_ps(m, x)
                });
                // SAFETY: lanes up to i0 + 16·V ≤ ld of the caller's `max`.
                unsafe {
                    let at = max.add(i0 + 16 * v);
                    _mm512_storeu_ps(at, _mm512_max_ps(_mm512_loadu_ps(at), most));
                }
            }
        }
    }

    /// [`super::scores_t`], and with `max` the maximum of each query's scores over the keys
    /// into `max[i]` (its first [`super::leading`]`(n)` elements, set to −∞ first).
    ///
    /// # Safety
    /// AVX-512F; a, b hold d·n elements, ld ≥ n rounded up to 16, wt holds n·ld.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scores_t(
        n: usize,
        d: usize,
        a: &[f32],
        b: &[f32],
        wt: &mut [f32],
        ld: usize,
        max: Option<&mut [f32]>,
    ) {
        let (a, b, wt) = (a.as_ptr(), b.as_ptr(), wt.as_mut_ptr());
        let full = n / KEYS * KEYS;
        macro_rules! all_keys {
            ($v:literal, $max:literal, $i0:expr, $at:expr) => {{
                let mask = masks::<$v>(n, $i0);
                for j0 in (0..full).step_by(KEYS) {
                    scores_block::<$v, KEYS, $max>((n, d), (a, b), ($i0, j0), mask, (wt, ld), $at);
                }
                for j0 in full..n {
                    scores_block::<$v, 1, $max>((n, d), (a, b), ($i0, j0), mask, (wt, ld), $at);
                }
            }};
        }
        // SAFETY (all blocks): the caller's contract; query blocks start at multiples of 16
        // below n, so i0 + 16·V ≤ leading(n) ≤ ld (and ≤ max's length, asserted).
        match max {
            Some(max) => {
                let top = super::leading(n);
                assert!(max.len() >= top);
                max[..top].fill(f32::NEG_INFINITY);
                let at = max.as_mut_ptr();
                query_blocks(
                    n,
                    |i0| unsafe { all_keys!(2, true, i0, at) },
                    |i0| unsafe { all_keys!(1, true, i0, at) },
                );
            }
            None => {
                let at = std::ptr::null_mut();
                query_blocks(
                    n,
                    |i0| unsafe { all_keys!(2, false, i0, at) },
                    |i0| unsafe { all_keys!(1, false, i0, at) },
                );
            }
        }
    }

    /// Channels per step of [`mix_block`].
    const CHANNELS: usize = 8;

    /// out[c·n + i0 + 16v + lane] for channels c0..c0 + C and the block's V vectors.
    ///
    /// # Safety
    /// AVX-512F; wt holds n·ld with i0 + 16·V ≤ ld, x and out hold d·n with c0 + C ≤ d.
    // The register tile is indexed by key (or channel) and vector together.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn mix_block<const V: usize, const C: usize>(
        n: usize,
        (wt, ld): (*const f32, usize),
        x: *const f32,
        (i0, c0): (usize, usize),
        mask: [__mmask16; V],
        (out, scale_by): (*mut f32, *const f32),
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; V];
        for j in 0..n {
            // SAFETY: row j < n of wt, lanes up to i0 + 16·V ≤ ld; x's rows c0.. < d.
            let w: [__m512; V] =
                std::array::from_fn(|v| unsafe { _mm512_loadu_ps(wt.add(j * ld + i0 + 16 * v)) });
            for cc in 0..C {
                let xv = _mm512_set1_ps(unsafe { *x.add((c0 + cc) * n + j) });
                for v in 0..V {
                    acc[v][cc] = _mm512_fmadd_ps(w[v], xv, acc[v][cc]);
                }
            }
        }
        if !scale_by.is_null() {
            for (v, acc) in acc.iter_mut().enumerate() {
                // SAFETY: lanes up to i0 + 16·V ≤ leading(n) of the caller's `scale_by`.
                let r = unsafe { _mm512_loadu_ps(scale_by.add(i0 + 16 * v)) };
                for value in acc.iter_mut() {
                    *value = _mm512_mul_ps(*value, r);
                }
            }
        }
        for cc in 0..C {
            for v in 0..V {
                // SAFETY: masked to the queries < n of out's row c0 + cc.
                unsafe {
                    _mm512_mask_storeu_ps(out.add((c0 + cc) * n + i0 + 16 * v), mask[v], acc[v][cc])
                };
            }
        }
    }

    /// [`super::mix`].
    ///
    /// # Safety
    /// AVX-512F; wt holds n·ld with ld ≥ n rounded up to 16, x and out hold d·n, scale_by
    /// (if any) leading(n).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn mix(
        n: usize,
        d: usize,
        wt: &[f32],
        ld: usize,
        x: &[f32],
        out: &mut [MaybeUninit<f32>],
        scale_by: Option<&[f32]>,
    ) {
        let (wt, x) = (wt.as_ptr(), x.as_ptr());
        let out = (
            out.as_mut_ptr().cast::<f32>(),
            scale_by.map_or(std::ptr::null(), |r| {
                assert!(r.len() >= super::leading(n));
                r.as_ptr()
            }),
        );
        let full = d / CHANNELS * CHANNELS;
        // SAFETY (both blocks): the caller's contract, as in `scores_t`.
        query_blocks(
            n,
            |i0| unsafe {
                let mask = masks::<2>(n, i0);
                for c0 in (0..full).step_by(CHANNELS) {
                    mix_block::<2, CHANNELS>(n, (wt, ld), x, (i0, c0), mask, out);
                }
                for c0 in full..d {
                    mix_block::<2, 1>(n, (wt, ld), x, (i0, c0), mask, out);
                }
            },
            |i0| unsafe {
                let mask = masks::<1>(n, i0);
                for c0 in (0..full).step_by(CHANNELS) {
                    mix_block::<1, CHANNELS>(n, (wt, ld), x, (i0, c0), mask, out);
                }
                for c0 in full..d {
                    mix_block::<1, 1>(n, (wt, ld), x, (i0, c0), mask, out);
                }
            },
        );
    }

    /// [`super::transpose`] in 16×16 tiles. Source rows past n read as zeros, which fills
    /// the destination's columns n..leading(n).
    ///
    /// # Safety
    /// AVX-512F; ld ≥ n rounded up to 16, src and dst hold n·ld.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose(src: &[f32], dst: &mut [f32], n: usize, ld: usize) {
        let (src, dst) = (src.as_ptr(), dst.as_mut_ptr());
        for i0 in (0..n).step_by(16) {
            for j0 in (0..n).step_by(16) {
                // SAFETY: rows j < n, lanes i0..i0 + 16 ≤ ld.
                let rows = std::array::from_fn(|k| {
                    let j = j0 + k;
                    if j < n {
                        unsafe { _mm512_loadu_ps(src.add(j * ld + i0)) }
                    } else {
                        _mm512_setzero_ps()
                    }
                });
                for (m, column) in transpose16(rows).into_iter().enumerate() {
                    let i = i0 + m;
                    if i < n {
                        // SAFETY: row i < n, lanes j0..j0 + 16 ≤ ld.
                        unsafe { _mm512_storeu_ps(dst.add(i * ld + j0), column) };
                    }
                }
            }
        }
    }

    /// [`super::softmax_columns`], a vector of 16 queries at a time: the maximum down the
    /// column, then the exponentials and their sum, then the scaling.
    ///
    /// # Safety
    /// AVX-512F; n ≥ 1, ld ≥ n rounded up to 16, wt holds n·ld.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn softmax_columns(wt: &mut [f32], n: usize, ld: usize, scale: f32) {
        let wt = wt.as_mut_ptr();
        let s = _mm512_set1_ps(scale);
        for i0 in (0..n).step_by(16) {
            // SAFETY (all accesses): rows j < n, lanes i0..i0 + 16 ≤ ld.
            let at = |j: usize| unsafe { wt.add(j * ld + i0) };
            let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
            for j in 0..n {
                m = _mm512_max_ps(m, _mm512_mul_ps(s, unsafe { _mm512_loadu_ps(at(j)) }));
            }
            let mut sum = _mm512_setzero_ps();
            for j in 0..n {
                let e = exp16(_mm512_fmsub_ps(s, unsafe { _mm512_loadu_ps(at(j)) }, m));
                unsafe { _mm512_storeu_ps(at(j), e) };
                sum = _mm512_add_ps(sum, e);
            }
            let inv = _mm512_div_ps(_mm512_set1_ps(1.0), sum);
            for j in 0..n {
                unsafe { _mm512_storeu_ps(at(j), _mm512_mul_ps(inv, _mm512_loadu_ps(at(j)))) };
            }
        }
    }

    /// [`super::softmax_weights_t`]'s second half: each query's column of `wt` (its scores,
    /// whose maximum over the keys is `max[i]`) turned into e^(s·x − s·max), then divided
    /// by its sum, or left so with 1/sum stored into `inv[i]`.
    ///
    /// # Safety
    /// AVX-512F; n ≥ 1, ld ≥ n rounded up to 16, wt holds n·ld, max (and inv) leading(n).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_columns(
        wt: &mut [f32],
        (n, ld): (usize, usize),
        scale: f32,
        max: &[f32],
        inv: Option<&mut [f32]>,
    ) {
        let top = super::leading(n);
        assert!(max.len() >= top && inv.as_ref().is_none_or(|inv| inv.len() >= top));
        let wt = wt.as_mut_ptr();
        let s = _mm512_set1_ps(scale);
        let inv = inv.map(|inv| inv.as_mut_ptr());
        for i0 in (0..n).step_by(16) {
            // SAFETY (all accesses): rows j < n, lanes i0..i0 + 16 ≤ ld, and ≤ leading(n)
            // of max and inv.
            let at = |j: usize| unsafe { wt.add(j * ld + i0) };
            let m = _mm512_mul_ps(s, unsafe { _mm512_loadu_ps(max.as_ptr().add(i0)) });
            let mut sum = _mm512_setzero_ps();
            for j in 0..n {
                let e = exp16(_mm512_fmsub_ps(s, unsafe { _mm512_loadu_ps(at(j)) }, m));
                unsafe { _mm512_storeu_ps(at(j), e) };
                sum = _mm512_add_ps(sum, e);
            }
            let r = _mm512_div_ps(_mm512_set1_ps(1.0), sum);
            match inv {
                Some(inv) => unsafe { _mm512_storeu_ps(inv.add(i0), r) },
                None => {
                    for j in 0..n {
                        unsafe {
                            _mm512_storeu_ps(at(j), _mm512_mul_ps(r, _mm512_loadu_ps(at(j))))
                        };
                    }
                }
            }
        }
    }

    /// [`super::softmax_columns_backward`], 16 queries at a time.
    ///
    /// # Safety
    /// AVX-512F; ld ≥ n rounded up to 16, dwt and wt hold n·ld.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn softmax_columns_backward(
        dwt: &mut [f32],
        wt: &[f32],
        n: usize,
        ld: usize,
        scale: f32,
    ) {
        let (dwt, wt) = (dwt.as_mut_ptr(), wt.as_ptr());
        let s = _mm512_set1_ps(scale);
        for i0 in (0..n).step_by(16) {
            // SAFETY (all accesses): rows j < n, lanes i0..i0 + 16 ≤ ld.
            let mut dot = _mm512_setzero_ps();
            for j in 0..n {
                let (g, y) = unsafe {
                    (
                        _mm512_loadu_ps(dwt.add(j * ld + i0)),
                        _mm512_loadu_ps(wt.add(j * ld + i0)),
                    )
                };
                dot = _mm512_fmadd_ps(g, y, dot);
            }
            for j in 0..n {
                unsafe {
                    let g = _mm512_loadu_ps(dwt.add(j * ld + i0));
                    let y = _mm512_mul_ps(s, _mm512_loadu_ps(wt.add(j * ld + i0)));
                    _mm512_storeu_ps(
                        dwt.add(j * ld + i0),
                        _mm512_mul_ps(y, _mm512_sub_ps(g, dot)),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [−2, 2).
    fn values(len: usize, seed: u64) -> Vec<f64> {
        crate::cpu_ops::test_values(len, seed, 2.0)
    }

    /// (n, d) cases: one token, partial and whole vectors, two-vector blocks with a
    /// one-vector tail, key counts around the 6-key step, channel counts around 8.
    const CASES: [(usize, usize); 8] = [
        (1, 1),
        (5, 3),
        (16, 8),
        (17, 9),
        (33, 32),
        (49, 32),
        (50, 17),
        (97, 4),
    ];

    /// The four kernels and the transpose on f32 (the AVX-512 path where available) and
    /// f64 (the generic path), against the definitions evaluated in f64.
    fn check<T: Element>(tolerance: f64) {
        for (case, &(n, d)) in CASES.iter().enumerate() {
            let ld = leading(n);
            let seed = 10 * case as u64;
            let (a, b, x) = (
                values(n * d, seed),
                values(n * d, seed + 1),
                values(n * d, seed + 2),
            );
            let g = values(n * d, seed + 3);
            let cast = |v: &[f64]| v.iter().map(|&e| T::from_f64(e)).collect::<Vec<T>>();
            let back = |v: &[T], i: usize| v[i].to_f64();
            let scale = 0.7;
            let label = format!("n {n}, d {d}");

            // Sᵀ, then Pᵀ.
            let mut wt = vec![T::ZERO; n * ld];
            scores_t(n, d, &cast(&a), &cast(&b), &mut wt, ld);
            let s = |i: usize, j: usize| (0..d).map(|c| a[c * n + i] * b[c * n + j]).sum::<f64>();
            for i in 0..n {
                for j in 0..n {
                    let err = (back(&wt, j * ld + i) - s(i, j)).abs();
                    assert!(
                        err < tolerance * (1.0 + d as f64),
                        "{label}: S({i}, {j}) off by {err}"
                    );
                }
            }
            let wt_s: Vec<f64> = (0..n * ld).map(|e| back(&wt, e)).collect();
            softmax_columns(&mut wt, n, ld, scale);
            let p = |i: usize, j: usize| {
                let m = (0..n)
                    .map(|k| scale * wt_s[k * ld + i])
                    .fold(f64::MIN, f64::max);
                let z: f64 = (0..n).map(|k| (scale * wt_s[k * ld + i] - m).exp()).sum();
                (scale * wt_s[j * ld + i] - m).exp() / z
            };
            for i in 0..n {
                for j in 0..n {
                    let err = (back(&wt, j * ld + i) - p(i, j)).abs();
                    assert!(err < tolerance, "{label}: P({i}, {j}) off by {err}");
                }
            }
            let pt: Vec<f64> = (0..n * ld).map(|e| back(&wt, e)).collect();

            // The same weights in one call (the maximum tracked with the scores on AVX-512
            // f32), normalised, and unnormalised with the sums' reciprocals.
            let mut fused = vec![T::from_f64(7.0); n * ld];
            softmax_weights_t((n, d), &cast(&a), &cast(&b), scale, &mut fused, ld, None);
            let mut unnormalised = vec![T::from_f64(7.0); n * ld];
            let mut inv = vec![T::from_f64(7.0); ld];
            let ab = (cast(&a), cast(&b));
            softmax_weights_t(
                (n, d),
                &ab.0,
                &ab.1,
                scale,
                &mut unnormalised,
                ld,
                Some(&mut inv),
            );
            for i in 0..n {
                for j in 0..n {
                    let err = (back(&fused, j * ld + i) - p(i, j)).abs();
                    assert!(err < tolerance, "{label}: fused P({i}, {j}) off by {err}");
                    let e = back(&unnormalised, j * ld + i) * back(&inv, i);
                    let err = (e - p(i, j)).abs();
                    assert!(err < tolerance, "{label}: E({i}, {j})·r({i}) off by {err}");
                }
            }

            // O = P·X, over stale values; and from the unnormalised weights, scaled by r.
            for (weights, scale_by) in [(&wt, None), (&unnormalised, Some(&inv[..]))] {
                let mut out = vec![MaybeUninit::new(T::from_f64(7.0)); n * d];
                mix(n, d, weights, ld, &cast(&x), &mut out, scale_by);
                // SAFETY: initialised above (and overwritten by `mix`).
                let out: Vec<T> = out
                    .into_iter()
                    .map(|v| unsafe { v.assume_init() })
                    .collect();
                for c in 0..d {
                    for i in 0..n {
                        let want: f64 = (0..n).map(|j| pt[j * ld + i] * x[c * n + j]).sum();
                        let err = (back(&out, c * n + i) - want).abs();
                        assert!(err < tolerance, "{label}: O({c}, {i}) off by {err}");
                    }
                }
            }

            // dS from dP = G (given transposed in the rows of a scores matrix).
            let mut dwt = vec![T::ZERO; n * ld];
            for j in 0..n {
                for i in 0..n {
                    dwt[j * ld + i] = T::from_f64(g[(i * n + j) % g.len()]);
                }
            }
            let dp: Vec<f64> = (0..n * ld).map(|e| back(&dwt, e)).collect();
            softmax_columns_backward(&mut dwt, &wt, n, ld, scale);
            for i in 0..n {
                let dot: f64 = (0..n).map(|k| dp[k * ld + i] * pt[k * ld + i]).sum();
                for j in 0..n {
                    let want = scale * pt[j * ld + i] * (dp[j * ld + i] - dot);
                    let err = (back(&dwt, j * ld + i) - want).abs();
                    assert!(err < tolerance, "{label}: dS({i}, {j}) off by {err}");
                }
            }

            // P by rows, over stale values, with the padding columns zeroed.
            let mut rows = vec![T::from_f64(7.0); n * ld];
            transpose(&wt, &mut rows, n, ld);
            for i in 0..n {
                for j in 0..ld {
                    let want = if j < n { pt[j * ld + i] } else { 0.0 };
                    assert_eq!(
                        back(&rows, i * ld + j),
                        want,
                        "{label}: P({i}, {j}) by rows"
                    );
                }
            }
        }
    }

    #[test]
    fn kernels_match_their_definitions_in_f64() {
        check::<f64>(1e-12);
    }

    /// f32 takes the AVX-512 kernels on CPUs that have them; the bound is a few f32 roundings
    /// of sums of up to 97 terms of size ≤ 4.
    #[test]
    fn kernels_match_their_definitions_in_f32() {
        check::<f32>(2e-5);
    }
}
