//! 3×3 convolutions with stride 1 and padding 1 by Winograd's minimal filtering F(2×2, 3×3)
//! (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks").
//!
//! The output is cut into 2×2 tiles. Tile (ty, tx) of output channel o is
//!
//! Y = Aᵀ [Σ_c (G w_{o,c} Gᵀ) ⊙ (Bᵀ d_c B)] A,
//!
//! with d_c the 4×4 input patch at rows 2ty − 1 … 2ty + 2 and columns 2tx − 1 … 2tx + 2 of
//! channel c (zero outside the image), ⊙ the elementwise product, and
//!
//! ```text
//!      ⎡1  0 −1  0⎤       ⎡1   0   0⎤       ⎡1  1  1  0⎤
//! Bᵀ = ⎢0  1  1  0⎥   G = ⎢½   ½   ½⎥  Aᵀ = ⎣0  1 −1 −1⎦
//!      ⎢0 −1  1  0⎥       ⎢½  −½   ½⎥
//!      ⎣0  1  0 −1⎦       ⎣0   0   1⎦
//! ```
//!
//! For each of the 16 positions ξ of the 4×4 transforms, the sum over c is one matrix
//! product, M_ξ (O × tiles) = U_ξ (O × C) · V_ξ (C × tiles), with U = G w Gᵀ and V = Bᵀ d B.
//! That is 16·O·C multiplications per tile of 4 outputs against 36·O·C for the direct
//! convolution: 2.25 times fewer, for the cost of the transforms, which are additions.
//!
//! The input gradient of such a convolution is a convolution of the same kind (with the
//! flipped, transposed kernel), so [`forward`] computes it too. (The weight gradient by the
//! adjoint of the same map, ∂U_ξ = Σ_tiles (A ∂Y Aᵀ)_ξ · V_ξᵀ and ∂w = Gᵀ ∂U G, was not
//! faster than the unfolding: −10% to +6% at 28×28, 4–27% slower at 14×14, as its products
//! have only O × C outputs.)
//!
//! Work is split over groups of samples, one thread each; within a group, the tiles are
//! taken a block of about [`BLOCK_TILES`] at a time, so that a block's V and M stay in the
//! core's cache between the transforms and the products.

use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use super::conv2d::matmul;
use super::element::{with_scratch, Element};
use super::simd::vectorized_fn;

/// Tiles per block: one 28×28 image or four 14×14 ones (before the spare tile of each tile
/// row). 100, 256 and 400 were slower.
const BLOCK_TILES: usize = 196;

/// The shapes of a 3×3 convolution with stride 1 and padding 1: input (B, C, H, W), output
/// (B, O, H, W).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Shape3x3 {
    pub batch: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub h: usize,
    pub w: usize,
}

impl Shape3x3 {
    /// Tile rows per image, ⌈H/2⌉.
    fn tile_rows(&self) -> usize {
        self.h.div_ceil(2)
    }
    /// Tiles per tile row, ⌈W/2⌉.
    fn tile_cols(&self) -> usize {
        self.w.div_ceil(2)
    }
    fn plane(&self) -> usize {
        self.h * self.w
    }
    /// Samples per group: enough for about [`BLOCK_TILES`] tiles, but no fewer groups than
    /// threads while the batch allows.
    fn group(&self) -> usize {
        let tiles = self.tile_rows() * self.tile_cols();
        let per_thread = self.batch.div_ceil(super::threads()).max(1);
        BLOCK_TILES.div_ceil(tiles).clamp(1, per_thread)
    }
    /// Tile rows per block.
    fn block_rows(&self) -> usize {
        (BLOCK_TILES / self.tile_cols()).max(1)
    }
    /// Columns per tile row in the transforms' layout (see [`input_transform`]): ⌈W/2⌉ and
    /// one unused.
    fn row_len(&self) -> usize {
        self.tile_cols() + 1
    }
    /// The columns of the transforms of the block of tile rows `rows`: a multiple of 16,
    /// which gemm takes without edge kernels, and wide enough for each segment's last
    /// [vector step](wide).
    fn block_stride(&self, rows: Range<usize>) -> usize {
        segments(self, rows)
            .map(|(_, ty, column)| column + wide(ty.len() * self.row_len()))
            .max()
            .unwrap_or(0)
            .next_multiple_of(16)
    }
    /// The most columns of any block's transforms.
    fn most_columns(&self) -> usize {
        (self.block_rows() * self.row_len() + LANES).next_multiple_of(16)
    }
    /// Scratch for the transforms (the input's four parity planes, or twelve rows of tiles).
    fn small_scratch(&self) -> usize {
        let n = self.row_len();
        (12 * wide(self.block_rows() * n)).max(4 * ((self.block_rows() + 1) * n + 1 + LANES))
    }
}

/// The blocks of a group of `samples` samples: ranges of its tile rows, counted across
/// its samples (tile row r is row r mod ⌈H/2⌉ of sample r div ⌈H/2⌉).
fn blocks(s: &Shape3x3, samples: usize) -> impl Iterator<Item = Range<usize>> {
    let (rows, step) = (samples * s.tile_rows(), s.block_rows());
    (0..rows)
        .step_by(step)
        .map(move |first| first..(first + step).min(rows))
}

/// U = G w Gᵀ for every (o, c): 16 matrices O × C, element (ξ, o, c).
fn filter_transform<T: Element>(s: &Shape3x3, w: &[T]) -> Vec<T> {
    let half = T::from_f64(0.5);
    let (o_n, c_n) = (s.c_out, s.c_in);
    let mut u = vec![T::ZERO; 16 * o_n * c_n];
    for (oc, k) in w.chunks_exact(9).enumerate() {
        // G k: 4 rows of 3.
        let mut gk = [[T::ZERO; 3]; 4];
        for v in 0..3 {
            let (a, b, c) = (k[v], k[3 + v], k[6 + v]);
            gk[0][v] = a;
            gk[1][v] = (a + b + c) * half;
            gk[2][v] = (a - b + c) * half;
            gk[3][v] = c;
        }
        // (G k) Gᵀ: 4 × 4.
        for (i, row) in gk.iter().enumerate() {
            let (a, b, c) = (row[0], row[1], row[2]);
            let t = [a, (a + b + c) * half, (a - b + c) * half, c];
            for (j, &value) in t.iter().enumerate() {
                u[(4 * i + j) * o_n * c_n + oc] = value;
            }
        }
    }
    u
}

/// Elements per vector step of [`zip_map`]: 16 f32 are one AVX-512 register.
const LANES: usize = 16;

/// `len` rounded up to whole vector steps: the transforms compute their rows of tiles this
/// wide, so that no loop ends in a scalar remainder. The extra columns hold values nobody
/// reads, or are overwritten by the next segment (see [`Shape3x3::block_stride`]).
fn wide(len: usize) -> usize {
    len.next_multiple_of(LANES)
}

/// `out[t] = f(inputs[0][t], …, inputs[N − 1][t])` for every t of `out` (each input at least
/// as long), [`LANES`] at a time, so that the loop vectorises into whole registers; a
/// remainder, if any, runs one by one.
#[inline(always)]
fn zip_map<T: Element, const N: usize>(out: &mut [T], inputs: [&[T]; N], f: impl Fn([T; N]) -> T) {
    let len = out.len();
    let main = len / LANES * LANES;
    for base in (0..main).step_by(LANES) {
        // Whole arrays by value: loads and stores of one register each, with no aliasing
        // for the compiler to rule out.
        let values: [[T; LANES]; N] = std::array::from_fn(|i| {
            let mut chunk = [T::ZERO; LANES];
            chunk.copy_from_slice(&inputs[i][base..base + LANES]);
            chunk
        });
        let result: [T; LANES] = std::array::from_fn(|t| f(std::array::from_fn(|i| values[i][t])));
        out[base..base + LANES].copy_from_slice(&result);
    }
    for t in main..len {
        out[t] = f(std::array::from_fn(|i| inputs[i][t]));
    }
}

/// `even[k] = src[2k]` and `odd[k] = src[2k + 1]`, for every element of src (by permutes in
/// registers with AVX-512, which the compiler does not find on its own).
#[inline(always)]
fn deinterleave<T: Element>(src: &[T], even: &mut [T], odd: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if super::avx512::available() {
        if let (Some(src), Some(even), Some(odd)) =
            (T::as_f32(src), T::as_f32_mut(even), T::as_f32_mut(odd))
        {
            // SAFETY: the CPU has AVX-512 (checked just above).
            unsafe { super::avx512::deinterleave(src, even, odd) };
            return;
        }
    }
    for (k, pair) in src.chunks(2).enumerate() {
        even[k] = pair[0];
        if let Some(&next) = pair.get(1) {
            odd[k] = next;
        }
    }
}

/// `dst[2k] = even[k]` and `dst[2k + 1] = odd[k]`, for every element of dst (by permutes with
/// AVX-512, as [`deinterleave`]).
#[inline(always)]
fn interleave<T: Element>(even: &[T], odd: &[T], dst: &mut [MaybeUninit<T>]) {
    #[cfg(target_arch = "x86_64")]
    if super::avx512::available() {
        if let (Some(even), Some(odd), Some(dst)) =
            (T::as_f32(even), T::as_f32(odd), T::as_f32_uninit(dst))
        {
            // SAFETY: the CPU has AVX-512 (checked just above).
            unsafe { super::avx512::interleave(even, odd, dst) };
            return;
        }
    }
    for (k, pair) in dst.chunks_mut(2).enumerate() {
        pair[0].write(even[k]);
        if let Some(slot) = pair.get_mut(1) {
            slot.write(odd[k]);
        }
    }
}

/// A block's tile rows that lie in one sample: (sample, its tile rows ty, the first column
/// of the transforms' layout, which gives every tile row [`Shape3x3::row_len`] columns).
fn segments(
    s: &Shape3x3,
    rows: Range<usize>,
) -> impl Iterator<Item = (usize, Range<usize>, usize)> {
    let (th, n) = (s.tile_rows(), s.row_len());
    let mut r = rows.start;
    std::iter::from_fn(move || {
        if r >= rows.end {
            return None;
        }
        let (sample, first) = (r / th, r % th);
        let last = th.min(first + rows.end - r);
        let segment = (sample, first..last, (r - rows.start) * n);
        r += last - first;
        Some(segment)
    })
}

/// Row i of Bᵀ is e_a + sign·e_b for (a, b, plus): (0, 2, −), (1, 2, +), (2, 1, −), (1, 3, −).
const BT_ROWS: [(usize, usize, bool); 4] =
    [(0, 2, false), (1, 2, true), (2, 1, false), (1, 3, false)];

/// V_{4i+j} = (Bᵀ d B)_{ij} = (d_{ia,ja} ± d_{ia,jb}) ± (d_{ib,ja} ± d_{ib,jb}) over `wide`
/// (a multiple of [`LANES`]) tiles: `d[i][j]` holds patch element (i, j) of each tile, and
/// V_ξ goes to `v[outs[ξ]..][..wide]`. f32 on AVX-512 CPUs per 16 tiles in registers (each
/// column combination of d's rows formed once); otherwise one output at a time.
fn combine_input<T: Element>(d: &[[&[T]; 4]; 4], v: &mut [T], outs: &[usize; 16], wide: usize) {
    assert!(wide.is_multiple_of(LANES));
    assert!(d.iter().flatten().all(|d| d.len() >= wide));
    assert!(outs.iter().all(|&at| at + wide <= v.len()));
    #[cfg(target_arch = "x86_64")]
    if super::avx512::available() && T::as_f32(d[0][0]).is_some() {
        // T is f32 (the check above), so every conversion succeeds.
        let d32 = d.map(|row| row.map(|x| T::as_f32(x).unwrap_or_default()));
        if let Some(v) = T::as_f32_mut(v) {
            // SAFETY: `available` confirmed AVX-512F; the lengths are asserted above, and the
            // 16 outputs are disjoint (different matrices of V).
            unsafe { kernels::combine_input(&d32, v, outs, wide) };
            return;
        }
    }
    for (i, &(ia, ib, i_plus)) in BT_ROWS.iter().enumerate() {
        for (j, &(ja, jb, j_plus)) in BT_ROWS.iter().enumerate() {
            let out = &mut v[outs[4 * i + j]..][..wide];
            let inputs = [d[ia][ja], d[ia][jb], d[ib][ja], d[ib][jb]];
            match (i_plus, j_plus) {
                (true, true) => zip_map(out, inputs, |[a, b, c, d]| (a + b) + (c + d)),
                (true, false) => zip_map(out, inputs, |[a, b, c, d]| (a - b) + (c - d)),
                (false, true) => zip_map(out, inputs, |[a, b, c, d]| (a + b) - (c + d)),
                (false, false) => zip_map(out, inputs, |[a, b, c, d]| (a - b) - (c - d)),
            }
        }
    }
}

/// The 2×2 outputs Aᵀ M A + b of `wide` (a multiple of [`LANES`]) tiles into `out` (the
/// output parities (0, 0), (0, 1), (1, 0), (1, 1), each at least `wide` long) from the 16
/// products `m[ξ]`, by the AVX-512 kernel where it applies (f32 on AVX-512 CPUs): 16 tiles
/// at a time in registers, the additions in the generic path's order. Returns false, having
/// done nothing, where it does not.
fn combine_output_avx512<T: Element>(
    m: &[&[T]; 16],
    out: &mut [&mut [T]],
    wide: usize,
    b: T,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if super::avx512::available() && T::as_f32(m[0]).is_some() {
        assert!(wide.is_multiple_of(LANES) && out.len() == 4);
        assert!(m.iter().all(|m| m.len() >= wide) && out.iter().all(|o| o.len() >= wide));
        // T is f32 (the check above), so every conversion succeeds.
        let m32 = m.map(|x| T::as_f32(x).unwrap_or_default());
        let mut parts = out.iter_mut();
        let mut out32: [&mut [f32]; 4] = std::array::from_fn(|_| {
            parts
                .next()
                .and_then(|o| T::as_f32_mut(o))
                .unwrap_or_default()
        });
        let b32 = T::as_f32(std::slice::from_ref(&b)).map_or(0.0, |x| x[0]);
        // SAFETY: `available` confirmed AVX-512F; the lengths are asserted above.
        unsafe { kernels::combine_output(&m32, &mut out32, wide, b32) };
        return true;
    }
    let _ = (m, out, wide, b);
    false
}

#[cfg(target_arch = "x86_64")]
mod kernels {
    use std::arch::x86_64::*;

    use super::{BT_ROWS, LANES};

    /// [`super::combine_input`] on 16 tiles at a time: per column combination j, the 4 rows'
    /// d_{r,ja} ± d_{r,jb} (8 loads), then the 4 outputs of that column (4 stores), all in
    /// registers; the additions in the order of the generic path, so the bits agree.
    ///
    /// # Safety
    /// AVX-512F; every `d` slice holds `wide` elements, `outs[ξ] + wide ≤ v.len()`, the 16
    /// output ranges are disjoint, and `wide` is a multiple of 16.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn combine_input(
        d: &[[&[f32]; 4]; 4],
        v: &mut [f32],
        outs: &[usize; 16],
        wide: usize,
    ) {
        let d: [[*const f32; 4]; 4] = d.map(|row| row.map(|x| x.as_ptr()));
        let v = v.as_mut_ptr();
        let combine = |a: __m512, b: __m512, plus: bool| {
            if plus {
                _mm512_add_ps(a, b)
            } else {
                _mm512_sub_ps(a, b)
            }
        };
        for k in (0..wide).step_by(LANES) {
            for (j, &(ja, jb, j_plus)) in BT_ROWS.iter().enumerate() {
                // SAFETY: k + 16 ≤ wide ≤ each slice's length.
                let columns: [__m512; 4] = std::array::from_fn(|r| unsafe {
                    combine(
                        _mm512_loadu_ps(d[r][ja].add(k)),
                        _mm512_loadu_ps(d[r][jb].add(k)),
                        j_plus,
                    )
                });
                for (i, &(ia, ib, i_plus)) in BT_ROWS.iter().enumerate() {
                    let value = combine(columns[ia], columns[ib], i_plus);
                    // SAFETY: outs[4i + j] + k + 16 ≤ outs[4i + j] + wide ≤ v.len().
                    unsafe { _mm512_storeu_ps(v.add(outs[4 * i + j] + k), value) };
                }
            }
        }
    }

    /// [`super::combine_output_avx512`] on 16 tiles at a time: each column j of Aᵀ M
    /// ((M0j + M1j) + M2j and (M1j − M2j) − M3j) from its 4 products, then the 4 outputs,
    /// all in registers: 16 loads and 4 stores.
    ///
    /// # Safety
    /// AVX-512F; every `m` and `out` slice holds `wide` elements, a multiple of 16.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn combine_output(
        m: &[&[f32]; 16],
        out: &mut [&mut [f32]; 4],
        wide: usize,
        bias: f32,
    ) {
        let m: [*const f32; 16] = m.map(|x| x.as_ptr());
        let out: [*mut f32; 4] = std::array::from_fn(|i| out[i].as_mut_ptr());
        let b = _mm512_set1_ps(bias);
        for k in (0..wide).step_by(LANES) {
            // SAFETY: k + 16 ≤ wide ≤ each slice's length.
            let load = |xi: usize| unsafe { _mm512_loadu_ps(m[xi].add(k)) };
            // Column j of Aᵀ M: (M0j + M1j) + M2j and (M1j − M2j) − M3j.
            let columns: [(__m512, __m512); 4] = std::array::from_fn(|j| {
                let (m0, m1, m2, m3) = (load(j), load(4 + j), load(8 + j), load(12 + j));
                (
                    _mm512_add_ps(_mm512_add_ps(m0, m1), m2),
                    _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3),
                )
            });
            let t = [columns.map(|c| c.0), columns.map(|c| c.1)];
            for (a, row) in t.iter().enumerate() {
                let even = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(row[0], row[1]), row[2]), b);
                let odd = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(row[1], row[2]), row[3]), b);
                // SAFETY: k + 16 ≤ wide ≤ each output's length.
                unsafe {
                    _mm512_storeu_ps(out[2 * a].add(k), even);
                    _mm512_storeu_ps(out[2 * a + 1].add(k), odd);
                }
            }
        }
    }
}

vectorized_fn!(
    /// V = Bᵀ d B for the tiles of tile rows `rows` of a group `x` (its samples' inputs, C
    /// planes each): 16 matrices C × `stride`, element (ξ, c, column), the tile (ty, tx) of
    /// the block's tile row `local` in column local·(⌈W/2⌉ + 1) + tx. (Column tx = ⌈W/2⌉ of
    /// each tile row is a tile that is never used, so that each sample's rows of tiles are
    /// one vector.) Each segment's vectors run on to a multiple of [`LANES`] columns (see
    /// [`wide`]); the columns past those are left as they are. `scratch` holds
    /// [`Shape3x3::small_scratch`] elements.
    ///
    /// The padded plane P[y′, x′] = d[y′ − 1, x′ − 1] (zero outside the image) is split by the
    /// parity of its row and column, Q_{py,px}[r·n + k] = P[2r + py, 2k + px] with n = ⌈W/2⌉
    /// + 1. Tile f = ty·n + tx's patch element (i, j) is then Q_{i mod 2, j mod 2}[f + ⌊i/2⌋·n
    /// + ⌊j/2⌋]: each of the 16 is one vector over the tiles.
    fn input_transform<T: Element>(
        s: &Shape3x3,
        x: &[T],
        rows: Range<usize>,
        stride: usize,
        v: &mut [T],
        scratch: &mut [T],
    ) => input_transform_generic {
        let (n, w) = (s.row_len(), s.w);
        let q_len = (s.block_rows() + 1) * n + 1 + LANES;
        for c in 0..s.c_in {
            for (sample, ty, column) in segments(s, rows.clone()) {
                let plane = &x[(sample * s.c_in + c) * s.plane()..][..s.plane()];
                let len = ty.len() * n;
                let mut q = scratch.chunks_exact_mut(q_len);
                let mut q: [&mut [T]; 4] = std::array::from_fn(|_| q.next().unwrap_or_default());
                for part in q.iter_mut() {
                    part[..len + n + 1].fill(T::ZERO);
                }
                for rr in 0..=ty.len() {
                    for py in 0..2 {
                        let y = (2 * (ty.start + rr) + py).wrapping_sub(1);
                        if y >= s.h {
                            continue;
                        }
                        // Column x lands at x′ = x + 1: even x in Q_{py,1}[x/2], odd x in
                        // Q_{py,0}[(x + 1)/2].
                        let (even, odd) = q.split_at_mut(2 * py + 1);
                        let (q0, q1) = (&mut even[2 * py][rr * n + 1..], &mut odd[0][rr * n..]);
                        deinterleave(&plane[y * w..(y + 1) * w], q1, q0);
                    }
                }
                let wide = wide(len);
                let d: [[&[T]; 4]; 4] = std::array::from_fn(|i| {
                    std::array::from_fn(|j| &q[2 * (i % 2) + j % 2][(i / 2) * n + j / 2..][..wide])
                });
                let outs = std::array::from_fn(|xi| (xi * s.c_in + c) * stride + column);
                combine_input(&d, v, &outs, wide);
            }
        }
    }
);

vectorized_fn!(
    /// Y = Aᵀ M A + bias for the tiles of tile rows `rows` of a group, written into `y` (the
    /// group's outputs, O planes each); M holds 16 matrices O × `stride` in
    /// [`input_transform`]'s layout. `bias(sample, o)` gives the bias of a sample's output
    /// channel. `scratch` holds [`Shape3x3::small_scratch`] elements.
    fn output_transform<T: Element>(
        s: &Shape3x3,
        m: &[T],
        rows: Range<usize>,
        stride: usize,
        y: &mut [MaybeUninit<T>],
        bias: &(dyn Fn(usize, usize) -> T + Sync),
        scratch: &mut [T],
    ) => output_transform_generic {
        let (n, w, tw) = (s.row_len(), s.w, s.tile_cols());
        let most = wide(s.block_rows() * n);
        for o in 0..s.c_out {
            for (sample, ty, column) in segments(s, rows.clone()) {
                let wide = wide(ty.len() * n);
                let b = bias(sample, o);
                let mut parts = scratch.chunks_exact_mut(most);
                let mut t: [&mut [T]; 12] = std::array::from_fn(|_| parts.next().unwrap_or_default());
                let at = |xi: usize| &m[(xi * s.c_out + o) * stride + column..][..wide];
                let (t, out) = t.split_at_mut(8);
                if !combine_output_avx512(&std::array::from_fn(at), out, wide, b) {
                    // Aᵀ M, on each column j: rows M0j + M1j + M2j and M1j − M2j − M3j.
                    for j in 0..4 {
                        let (m0, m1, m2, m3) = (at(j), at(4 + j), at(8 + j), at(12 + j));
                        zip_map(&mut t[j][..wide], [m0, m1, m2], |[a, b, c]| a + b + c);
                        zip_map(&mut t[4 + j][..wide], [m1, m2, m3], |[b, c, d]| b - c - d);
                    }
                    // (Aᵀ M) A, on each row: a + b + c and b − c − d of its 4 columns, + bias.
                    for a in 0..2 {
                        let row = |j: usize| &t[4 * a + j][..wide];
                        zip_map(&mut out[2 * a][..wide], [row(0), row(1), row(2)], |[p, q, r]| p + q + r + b);
                        zip_map(&mut out[2 * a + 1][..wide], [row(1), row(2), row(3)], |[q, r, u]| q - r - u + b);
                    }
                }
                let plane = &mut y[(sample * s.c_out + o) * s.plane()..][..s.plane()];
                for (rr, ty) in ty.enumerate() {
                    for a in 0..2 {
                        let oy = 2 * ty + a;
                        if oy < s.h {
                            let (even, odd) = (&out[2 * a][rr * n..][..tw], &out[2 * a + 1][rr * n..][..tw]);
                            interleave(even, odd, &mut plane[oy * w..(oy + 1) * w]);
                        }
                    }
                }
            }
        }
    }
);

/// y = conv(x, w) + b for a 3×3 kernel w (O, C, 3, 3), stride 1 and padding 1; b is per
/// output channel (O) or per sample and channel (B·O).
pub(super) fn forward<T: Element>(s: &Shape3x3, x: &[T], w: &[T], b: &[T]) -> Vec<T> {
    let u = filter_transform(s, w);
    let per_channel = b.len() == s.c_out;
    let (group, plane) = (s.group(), s.plane());
    let (in_per, out_per) = (s.c_in * plane, s.c_out * plane);
    let len = s.batch * out_per;
    let mut y = Vec::with_capacity(len);
    y.spare_capacity_mut()[..len]
        .par_chunks_mut(group * out_per)
        .zip(x.par_chunks(group * in_per))
        .enumerate()
        .for_each(|(index, (y_g, x_g))| {
            let first = index * group;
            let bias = move |sample: usize, o: usize| {
                if per_channel {
                    b[o]
                } else {
                    b[(first + sample) * s.c_out + o]
                }
            };
            let samples = x_g.len() / in_per;
            let (v_len, m_len) = (
                16 * s.c_in * s.most_columns(),
                16 * s.c_out * s.most_columns(),
            );
            with_scratch(v_len + m_len + s.small_scratch(), |scratch: &mut [T]| {
                let (v, rest) = scratch.split_at_mut(v_len);
                let (m, small) = rest.split_at_mut(m_len);
                for rows in blocks(s, samples) {
                    let (tiles, stride) = (rows.len() * s.row_len(), s.block_stride(rows.clone()));
                    // The products span all `stride` columns. The extra ones of M are never
                    // read; those of V are zeroed all the same, so that whatever the scratch
                    // held (a NaN, a subnormal that slows the multiplications) costs nothing.
                    input_transform(s, x_g, rows.clone(), stride, v, small);
                    for row in v[..16 * s.c_in * stride].chunks_exact_mut(stride) {
                        row[tiles..].fill(T::ZERO);
                    }
                    // M_ξ = U_ξ · V_ξ.
                    for xi in 0..16 {
                        matmul(
                            s.c_out,
                            stride,
                            s.c_in,
                            &mut m[xi * s.c_out * stride..],
                            false,
                            &u[xi * s.c_out * s.c_in..],
                            (s.c_in, 1),
                            &v[xi * s.c_in * stride..],
                            (stride, 1),
                            gemm::Parallelism::None,
                        );
                    }
                    output_transform(s, m, rows, stride, y_g, &bias, small);
                }
            });
        });
    // SAFETY: every output element (sample, o, oy, ox) lies in exactly one tile, (oy / 2,
    // ox / 2), whose tile row belongs to one block of its sample's group, and
    // `output_transform` writes every element of each tile inside the image.
    unsafe { y.set_len(len) };
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: y[n, o, i, j] = b[o] + Σ_{c,u,v} w[o, c, u, v]·x[n, c, i + u − 1,
    /// j + v − 1], in f64.
    fn direct(s: &Shape3x3, x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
        let mut y = vec![0.0; s.batch * s.c_out * s.plane()];
        for n in 0..s.batch {
            for o in 0..s.c_out {
                for i in 0..s.h {
                    for j in 0..s.w {
                        let mut sum = b[if b.len() == s.c_out {
                            o
                        } else {
                            n * s.c_out + o
                        }];
                        for c in 0..s.c_in {
                            for u in 0..3 {
                                for v in 0..3 {
                                    let (iy, ix) =
                                        ((i + u).wrapping_sub(1), (j + v).wrapping_sub(1));
                                    if iy < s.h && ix < s.w {
                                        sum += w[((o * s.c_in + c) * 3 + u) * 3 + v]
                                            * x[((n * s.c_in + c) * s.h + iy) * s.w + ix];
                                    }
                                }
                            }
                        }
                        y[((n * s.c_out + o) * s.h + i) * s.w + j] = sum;
                    }
                }
            }
        }
        y
    }

    /// Deterministic values in [−1, 1).
    fn values(len: usize, seed: u64) -> Vec<f64> {
        crate::cpu_ops::test_values(len, seed, 1.0)
    }

    fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    /// Even and odd sizes (odd ones have tiles that hang over the edge), one and several
    /// tile rows per block, groups of one and several samples, a single column and row.
    const SHAPES: [Shape3x3; 6] = [
        Shape3x3 {
            batch: 3,
            c_in: 4,
            c_out: 5,
            h: 6,
            w: 8,
        },
        Shape3x3 {
            batch: 2,
            c_in: 3,
            c_out: 2,
            h: 7,
            w: 5,
        },
        Shape3x3 {
            batch: 5,
            c_in: 2,
            c_out: 3,
            h: 3,
            w: 3,
        },
        Shape3x3 {
            batch: 2,
            c_in: 2,
            c_out: 2,
            h: 1,
            w: 1,
        },
        Shape3x3 {
            batch: 1,
            c_in: 3,
            c_out: 4,
            h: 30,
            w: 29,
        },
        Shape3x3 {
            batch: 4,
            c_in: 2,
            c_out: 3,
            h: 4,
            w: 450,
        },
    ];

    #[test]
    fn forward_matches_the_direct_convolution() {
        for (i, s) in SHAPES.iter().enumerate() {
            let seed = 10 * i as u64;
            let x = values(s.batch * s.c_in * s.plane(), seed);
            let w = values(s.c_out * s.c_in * 9, seed + 1);
            for b in [
                values(s.c_out, seed + 2),
                values(s.batch * s.c_out, seed + 3),
            ] {
                let err = max_abs_diff(&forward(s, &x, &w, &b), &direct(s, &x, &w, &b));
                // Sums of at most 9·C products of values below 1: rounding alone is < 1e-13.
                assert!(err < 1e-12, "{s:?}: differs by {err}");
            }
        }
    }

    /// In f32 (which takes the AVX-512 permutes where the CPU has them), every shape above
    /// and a wide one, against the f64 definition.
    #[test]
    fn f32_stays_close_to_f64() {
        let wide = Shape3x3 {
            batch: 2,
            c_in: 64,
            c_out: 64,
            h: 14,
            w: 14,
        };
        let to32 = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        let worst = |ours: &[f32], exact: &[f64]| {
            let scale = exact.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let err = ours
                .iter()
                .zip(exact)
                .map(|(&a, &e)| (f64::from(a) - e).abs())
                .fold(0.0, f64::max);
            err / scale
        };
        for (i, s) in SHAPES.iter().chain([&wide]).enumerate() {
            let seed = 100 + 10 * i as u64;
            let x = values(s.batch * s.c_in * s.plane(), seed);
            let w = values(s.c_out * s.c_in * 9, seed + 1);
            let b = values(s.c_out, seed + 2);
            let y = forward(s, &to32(&x), &to32(&w), &to32(&b));
            // f32 sums of up to 9·C = 576 terms: a few 1e-7 of the result's scale, and the
            // transforms add a few roundings. A misplaced element is off by O(1).
            let err = worst(&y, &direct(s, &x, &w, &b));
            assert!(err < 1e-5, "{s:?}: f32 differs by {err}");
        }
    }
}
