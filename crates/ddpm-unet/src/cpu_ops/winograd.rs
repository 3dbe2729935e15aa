//! 3×3 convolutions with stride 1 and padding 1 by Winograd's minimal filtering F(4×4, 3×3)
//! (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks").
//!
//! The output is cut into 4×4 tiles. Tile (ty, tx) of output channel o is
//!
//! Y = Aᵀ [Σ_c (G w_{o,c} Gᵀ) ⊙ (Bᵀ d_c B)] A,
//!
//! with d_c the 6×6 input patch at rows 4ty − 1 … 4ty + 4 and columns 4tx − 1 … 4tx + 4 of
//! channel c (zero outside the image), ⊙ the elementwise product, and the transforms of the
//! interpolation points 0, −1, 1, −2, 2 and ∞:
//!
//! ```text
//!      ⎡4  0 −5  0  1  0⎤       ⎡ 1/4     0     0 ⎤       ⎡1  1  1  1  1  0⎤
//!      ⎢0 −4 −4  1  1  0⎥       ⎢−1/6  −1/6  −1/6 ⎥  Aᵀ = ⎢0  1 −1  2 −2  0⎥
//! Bᵀ = ⎢0  4 −4 −1  1  0⎥   G = ⎢−1/6   1/6  −1/6 ⎥       ⎢0  1  1  4  4  0⎥
//!      ⎢0 −2 −1  2  1  0⎥       ⎢1/24  1/12   1/6 ⎥       ⎣0  1 −1  8 −8  1⎦
//!      ⎢0  2 −1 −2  1  0⎥       ⎢1/24 −1/12   1/6 ⎥
//!      ⎣0  4  0 −5  0  1⎦       ⎣  0     0     1  ⎦
//! ```
//!
//! For each of the 36 positions ξ of the 6×6 transforms, the sum over c is one matrix
//! product, M_ξ (O × tiles) = U_ξ (O × C) · V_ξ (C × tiles), with U = G w Gᵀ and V = Bᵀ d B.
//! That is 36·O·C multiplications per tile of 16 outputs against 144·O·C for the direct
//! convolution: 4 times fewer, for the cost of the transforms.
//!
//! The input gradient of such a convolution is a convolution of the same kind (with the
//! flipped, transposed kernel), so [`forward`] computes it too. The weight gradient is the
//! adjoint ([`grad_weight`]): ∂U_ξ = Σ_tiles (A ∂Y Aᵀ)_ξ · V_ξᵀ, 36 products O × C summed
//! over the tiles, and ∂w = Gᵀ ∂U G.
//!
//! Work is split over groups of samples, one thread each. A group's tiles are numbered
//! sample by sample, row by row, and taken a block of whole samples (about
//! [`FORWARD_BLOCK_TILES`] or [`GRAD_BLOCK_TILES`] tiles) at a time, so that a block's V
//! and M stay in the core's cache between the transforms and the products. The transforms
//! work on 16 tiles at a time, whichever samples and rows they come from: the input's and
//! the output gradient's patches are read by contiguous loads and permutes
//! ([`input_transform`], [`grad_transform`]), and the outputs are put back into the
//! image's rows by the inverse permutes ([`output_transform`]).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::conv2d::{matmul, matmul_uninit};
use super::element::{self, with_scratch, Element};
use super::simd::vectorized_fn;
#[cfg(target_arch = "x86_64")]
use super::unpacked_gemm;

/// Tiles per block of [`forward`], about: one 28×28 image, four 14×14 ones, sixteen 7×7
/// ones. A block's V and M (36·(C + O)·4 bytes a tile) then take 0.6 MB at 32 + 32
/// channels and 1.2 MB at 64 + 64, against 1.9 and 3.8 MB with 196 tiles, beyond the
/// core's 2 MB L2. With 196 tiles, 14×14 and 7×7 convolutions took 10–15% longer
/// (session 12).
const FORWARD_BLOCK_TILES: usize = 64;

/// Tiles per block of [`grad_weight`] for images of more than 16 tiles, about: four 28×28
/// images (see [`Shape3x3::grad_block`]).
const GRAD_BLOCK_TILES: usize = 196;

/// Positions of the 6×6 transforms.
const XI: usize = 36;

/// Tiles (and pixels) per vector step: 16 f32 are one AVX-512 register.
const LANES: usize = 16;

/// Elements from one of the 36 matrices of a block's transforms (V, M, Z: `rows` × `stride`)
/// to the next: their rows, and one cache line more. Without the line, the 36 elements a
/// tile's transform writes or reads (one per matrix) lie a multiple of 4 KB apart whenever
/// `rows`·`stride` is a multiple of 1,024 (always, for channel counts that are multiples of
/// 16), so all fall into one of the L1 cache's 64 sets, whose 12 ways cannot hold them.
fn matrix_stride(rows: usize, stride: usize) -> usize {
    rows * stride + LANES
}

/// Elements of each of the 6 rows of E (stage 1 of [`input_transform`]'s AVX-512 path) for
/// `stride` columns: a vector before position 0 (position −1 is read), the 4·`stride`
/// positions, and a vector after (positions 4·`stride` and 4·`stride` + 1 are read).
fn e_len(stride: usize) -> usize {
    LANES + 4 * stride + LANES
}

/// The lanes of step q (tiles 16q … 16q + 15) that hold one of a block's `tiles` tiles.
fn valid_lanes(tiles: usize, q: usize) -> u16 {
    match tiles.saturating_sub(q * LANES) {
        n if n >= LANES => u16::MAX,
        n => ((1u32 << n) - 1) as u16,
    }
}

/// The shapes of a 3×3 convolution with stride 1 and padding 1: input (B, C, H, W), output
/// (B, O, H, W).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Shape3x3 {
    pub batch: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub h: usize,
    pub w: usize,
}

impl Shape3x3 {
    /// Tile rows per image, ⌈H/4⌉.
    fn tile_rows(&self) -> usize {
        self.h.div_ceil(4)
    }
    /// Tiles per tile row, ⌈W/4⌉.
    fn tile_cols(&self) -> usize {
        self.w.div_ceil(4)
    }
    /// Tiles per image.
    fn tiles(&self) -> usize {
        self.tile_rows() * self.tile_cols()
    }
    fn plane(&self) -> usize {
        self.h * self.w
    }
    /// Samples per block of about `tiles` tiles, at least one sample.
    fn block(&self, tiles: usize) -> usize {
        (tiles / self.tiles()).max(1)
    }
    /// Samples per block of [`grad_weight`]: as the forward's for small images (four or more
    /// to a block), about [`GRAD_BLOCK_TILES`] tiles for larger ones. Session 12's
    /// interleaved probes: blocks of 64 tiles took 10–17% less time than 196 at 14×14 and
    /// 7×7; at 28×28 a 64-tile block is one image (49 tiles in 64 columns) and was slower.
    fn grad_block(&self) -> usize {
        match self.block(FORWARD_BLOCK_TILES) {
            samples if samples >= 4 => samples,
            _ => self.block(GRAD_BLOCK_TILES),
        }
    }
    /// Samples per group: an even share of the batch per thread. (Whole blocks per group
    /// left 14×14 at batch 64 with groups of 24, 24 and 16 samples for two threads: one
    /// thread did 40 samples' work while the other waited. A group's last block may be
    /// partial.)
    fn group(&self) -> usize {
        self.batch.div_ceil(super::threads()).max(1)
    }
    /// Columns of a block's transforms: its tiles, rounded up to whole vector steps.
    fn columns(&self, samples: usize) -> usize {
        (samples * self.tiles()).next_multiple_of(LANES)
    }
}

/// The lane masks of one shape, for blocks of a given number of samples. Built per call: a
/// few hundred operations. (The gather tables it once held were cached per shape, since
/// building them took 0.3–0.6% of a training step.)
struct Plan {
    /// Per vector step q of a block's tiles (16q … 16q + 15): the lanes of tiles in the
    /// first tile column, and those in the last (see [`input_transform`]).
    edges: Vec<(u16, u16)>,
    /// Samples per block.
    block: usize,
}

impl Plan {
    /// The masks for blocks of `block` samples.
    fn new(s: &Shape3x3, block: usize) -> Plan {
        let tc = s.tile_cols();
        let edges = (0..s.columns(block) / LANES)
            .map(|q| {
                let lanes = |column: usize| {
                    (0..LANES)
                        .filter(|lane| (q * LANES + lane) % tc == column)
                        .fold(0u16, |mask, lane| mask | 1 << lane)
                };
                (lanes(0), lanes(tc - 1))
            })
            .collect();
        Plan { edges, block }
    }
    /// Columns of a block's transforms: `columns(block)`.
    fn columns(&self) -> usize {
        self.edges.len() * LANES
    }
}

/// The coefficients of G k Gᵀ: element (i, j) is Σ_{u,v} G_iu G_jv k_uv, so row ξ = 6i + j
/// of this 36 × 9 matrix holds G_iu G_jv at column 3u + v.
fn filter_coefficients<T: Element>() -> Vec<T> {
    (0..XI * 9)
        .map(|at| {
            let (xi, uv) = (at / 9, at % 9);
            let ((i, j), (u, v)) = ((xi / 6, xi % 6), (uv / 3, uv % 3));
            T::from_f64(G[i][u] * G[j][v])
        })
        .collect()
}

/// U = G w Gᵀ for every (o, c): 36 matrices O × C, element (ξ, o, c), one product of the
/// [coefficients](filter_coefficients) (36 × 9) and the kernels (9 × O·C).
fn filter_transform<T: Element>(s: &Shape3x3, w: &[T]) -> Vec<T> {
    let kernels = s.c_out * s.c_in;
    // Written whole by the product: no zeroed buffer first.
    let mut u = Vec::with_capacity(XI * kernels);
    matmul_uninit(
        XI,
        kernels,
        9,
        &mut u.spare_capacity_mut()[..XI * kernels],
        &filter_coefficients::<T>(),
        (9, 1),
        w,
        (1, 9),
        gemm::Parallelism::Rayon(super::threads()),
    );
    // SAFETY: the product wrote all XI × kernels elements.
    unsafe { u.set_len(XI * kernels) };
    u
}

/// G, 6 × 3 (see the module's documentation).
const G: [[f64; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// Bᵀ z for a column z of 6: (4z₀ − 5z₂ + z₄, (z₄ − 4z₂) ± (z₃ − 4z₁), (z₄ − z₂) ± 2(z₃ − z₁),
/// 4z₁ − 5z₃ + z₅).
#[inline(always)]
fn bt<T: Element>(z: [T; 6]) -> [T; 6] {
    let (four, five, two) = (T::from_f64(4.0), T::from_f64(5.0), T::from_f64(2.0));
    let (t1, t2) = (z[4] - four * z[2], z[3] - four * z[1]);
    let (t3, t4) = (z[4] - z[2], two * (z[3] - z[1]));
    [
        four * z[0] - five * z[2] + z[4],
        t1 + t2,
        t1 - t2,
        t3 + t4,
        t3 - t4,
        four * z[1] - five * z[3] + z[5],
    ]
}

/// Aᵀ m for a column m of 6: with a, b = m₁ ± m₂ and c, d = m₃ ± m₄, (m₀ + a + c, b + 2d,
/// a + 4c, b + 8d + m₅).
#[inline(always)]
fn at<T: Element>(m: [T; 6]) -> [T; 4] {
    let (a, b) = (m[1] + m[2], m[1] - m[2]);
    let (c, d) = (m[3] + m[4], m[3] - m[4]);
    [
        m[0] + a + c,
        b + T::from_f64(2.0) * d,
        a + T::from_f64(4.0) * c,
        b + T::from_f64(8.0) * d + m[5],
    ]
}

/// A g for a column g of 4 (A = (Aᵀ)ᵀ, 6 × 4): with p, q = g₀ + g₂, g₁ + g₃ and p′, q′ =
/// g₀ + 4g₂, 2g₁ + 8g₃, (g₀, p + q, p − q, p′ + q′, p′ − q′, g₃). The adjoint of [`at`].
#[inline(always)]
fn a<T: Element>(g: [T; 4]) -> [T; 6] {
    let (p, q) = (g[0] + g[2], g[1] + g[3]);
    let (two, four, eight) = (T::from_f64(2.0), T::from_f64(4.0), T::from_f64(8.0));
    let (pp, qq) = (g[0] + four * g[2], two * g[1] + eight * g[3]);
    [g[0], p + q, p - q, pp + qq, pp - qq, g[3]]
}

vectorized_fn!(
    /// V = Bᵀ d B for a block of `samples` samples starting at `x` (the first one's input,
    /// C planes each, then the others'): 36 matrices C × `stride` ([`matrix_stride`]
    /// apart), element (ξ, c, tile), with the columns past the block's tiles zero. `e`:
    /// scratch of 6·[`e_len`]`(stride)` elements.
    ///
    /// f32 on AVX-512 CPUs, channel by channel, in two stages without gathers (16-lane
    /// gathers of each tile's 36 elements took 23–27% of a forward convolution):
    /// 1. Down the rows ([`kernels::down_rows`]): E_i = Σ_k Bᵀ_ik x[4ty − 1 + k, ·] for each
    ///    tile row and i, from contiguous loads of the image rows. Tile row r of the block
    ///    (sample, ty) is stored at positions 4⌈W/4⌉·r + x (x < 4⌈W/4⌉), so that column
    ///    4tx − 1 + l of tile t = (r, tx) lies at position 4t − 1 + l.
    /// 2. Along the columns, 16 tiles at a time ([`kernels::along_columns`]): the stride-4
    ///    positions 4t − 1 + l of each E_i by permutes of 64 consecutive ones, and
    ///    V_ij = Σ_l Bᵀ_jl E_i[4t − 1 + l], stored whole. Column −1 of a row's first tile and
    ///    column 4⌈W/4⌉ of its last (positions of the neighbouring rows) are zero padding:
    ///    those lanes are masked ([`Plan::edges`]).
    ///
    /// Otherwise tile by tile.
    fn input_transform<T: Element>(
        s: &Shape3x3,
        plan: &Plan,
        x: &[T],
        samples: usize,
        stride: usize,
        v: &mut [T],
        e: &mut [T],
    ) => input_transform_generic {
        let (plane, tiles) = (s.plane(), samples * s.tiles());
        let v_stride = matrix_stride(s.c_in, stride);
        assert!(x.len() >= samples * s.c_in * plane && stride <= plan.columns());
        assert!(v.len() >= XI * v_stride && stride >= tiles && stride.is_multiple_of(LANES));
        #[cfg(target_arch = "x86_64")]
        if super::avx512::available() {
            if let (Some(x), Some(v), Some(e)) = (T::as_f32(x), T::as_f32_mut(v), T::as_f32_mut(e)) {
                // SAFETY: AVX-512F is available.
                unsafe { by_rows_and_columns::<false>(s, plan, x, samples, stride, v, e) };
                return;
            }
        }
        let _ = e;
        for c in 0..s.c_in {
            for tile in 0..stride {
                let (sample, within) = (tile / s.tiles(), tile % s.tiles());
                let (y0, x0) = (4 * (within / s.tile_cols()), 4 * (within % s.tile_cols()));
                // The patch: rows y0 − 1 … y0 + 4 and columns x0 − 1 … x0 + 4, zero outside
                // the image and past the block's tiles.
                let z: [[T; 6]; 6] = std::array::from_fn(|i| {
                    std::array::from_fn(|j| {
                        let (y, x_at) = ((y0 + i).wrapping_sub(1), (x0 + j).wrapping_sub(1));
                        if tile < tiles && y < s.h && x_at < s.w {
                            x[(sample * s.c_in + c) * plane + y * s.w + x_at]
                        } else {
                            T::ZERO
                        }
                    })
                });
                // d B, row by row, then Bᵀ (d B), column by column.
                let rows: [[T; 6]; 6] = std::array::from_fn(|i| bt(z[i]));
                for j in 0..6 {
                    let column = bt(std::array::from_fn(|i| rows[i][j]));
                    for (i, &value) in column.iter().enumerate() {
                        v[(6 * i + j) * v_stride + c * stride + tile] = value;
                    }
                }
            }
        }
    }
);

/// The AVX-512 path of [`input_transform`] (GRAD false: `x` the input, C planes a sample,
/// `out` V) and of [`grad_transform`] (GRAD true: `x` ∂Y, O planes a sample, `out` Z), for
/// a block of `samples` samples: channel by channel, [`kernels::down_rows`] into `e`, then
/// [`kernels::along_columns`] into the channel's rows of the 36 matrices.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
unsafe fn by_rows_and_columns<const GRAD: bool>(
    s: &Shape3x3,
    plan: &Plan,
    x: &[f32],
    samples: usize,
    stride: usize,
    out: &mut [f32],
    e: &mut [f32],
) {
    let (plane, tiles) = (s.plane(), samples * s.tiles());
    let channels = if GRAD { s.c_out } else { s.c_in };
    let (out_stride, e_stride) = (matrix_stride(channels, stride), e_len(stride));
    assert!(x.len() >= samples * channels * plane && out.len() >= XI * out_stride);
    assert!(e.len() >= 6 * e_stride && stride <= plan.columns() && tiles <= stride);
    for channel in 0..channels {
        // SAFETY: AVX-512F (the caller's guarantee); the samples' planes of the channel lie
        // in x, E_i's positions −1 … 4·stride + 1 in e, and the channel's columns of the 36
        // matrices in out (all asserted above).
        unsafe {
            kernels::down_rows::<GRAD>(
                s,
                &x[channel * plane..],
                samples,
                e[LANES..].as_mut_ptr(),
                e_stride,
            );
            kernels::along_columns::<GRAD>(
                &plan.edges[..stride / LANES],
                tiles,
                e[LANES..].as_ptr(),
                e_stride,
                out[channel * stride..].as_mut_ptr(),
                out_stride,
            );
        }
    }
}

vectorized_fn!(
    /// Y = Aᵀ M A + bias (+ R) for a block of `samples` samples, written into `y` (their
    /// outputs, O planes each); M holds 36 matrices O × `stride` in [`input_transform`]'s
    /// layout. `addends`: `bias(sample, o)`, the bias of a block sample's output channel,
    /// and the residual (laid out as `y`) to add, if any. `scratch` holds 16·`stride`
    /// elements.
    ///
    /// f32 on AVX-512 CPUs, output channel by output channel, the inverse of
    /// [`input_transform`]'s stages: the 16 outputs (a, b) of 16 tiles at a time
    /// ([`kernels::output_rows`]), each row a's four vectors interleaved by permutes into
    /// positions 4t + b of row a's buffer (tile row r of the block at positions
    /// 4⌈W/4⌉·r + x, x = 4tx + b); then the image's rows 4ty + a copied out of the buffers
    /// with the bias ([`kernels::copy_row`]). (With 16-lane gathers of the outputs from the
    /// tiles instead, this transform took 13.9% of a forward probe's time, against 10.9%.)
    /// Otherwise tile by tile.
    // The index loops read the 6×6 values by columns: a transpose.
    #[allow(clippy::needless_range_loop)]
    fn output_transform<T: Element>(
        s: &Shape3x3,
        m: &[T],
        samples: usize,
        stride: usize,
        y: &mut [MaybeUninit<T>],
        addends: (&(dyn Fn(usize, usize) -> T + Sync), Option<&[T]>),
        scratch: &mut [T],
    ) => output_transform_generic {
        let (bias, residual) = addends;
        let (plane, tiles, tc) = (s.plane(), s.tiles(), s.tile_cols());
        let m_stride = matrix_stride(s.c_out, stride);
        assert!(y.len() >= samples * s.c_out * plane && m.len() >= XI * m_stride);
        assert!(residual.is_none_or(|r| r.len() >= samples * s.c_out * plane));
        assert!(scratch.len() >= 16 * stride && samples * tiles <= stride);
        assert!(stride.is_multiple_of(LANES));
        #[cfg(target_arch = "x86_64")]
        if super::avx512::available() {
            // The residual as f32 too, when given.
            let residual = match residual {
                None => Some(None),
                Some(r) => T::as_f32(r).map(Some),
            };
            if let (Some(m), Some(rows), Some(y), Some(residual)) =
                (T::as_f32(m), T::as_f32_mut(scratch), T::as_f32_uninit(y), residual)
            {
                let pitch = 4 * tc;
                for o in 0..s.c_out {
                    for q in 0..stride / LANES {
                        // SAFETY: AVX-512F is available; rows (ξ, o) of M hold `stride`
                        // elements, and the 4 buffers of 4·stride positions lie in the
                        // scratch (asserted above).
                        unsafe {
                            kernels::output_rows(
                                m[o * stride + q * LANES..].as_ptr(),
                                m_stride,
                                rows[4 * LANES * q..].as_mut_ptr(),
                                4 * stride,
                            )
                        };
                    }
                    for sample in 0..samples {
                        let b = T::as_f32(std::slice::from_ref(&bias(sample, o))).map_or(0.0, |b| b[0]);
                        let first = (sample * s.c_out + o) * plane;
                        let dst = &mut y[first..][..plane];
                        for (row, dst) in dst.chunks_exact_mut(s.w).enumerate() {
                            let (ty, a) = (row / 4, row % 4);
                            let at = a * 4 * stride + (sample * s.tile_rows() + ty) * pitch;
                            let r = residual.map(|r| &r[first + row * s.w..][..s.w]);
                            // SAFETY: AVX-512F is available; the row's W ≤ 4⌈W/4⌉ positions
                            // lie in buffer a.
                            unsafe { kernels::copy_row(&rows[at..at + s.w], b, r, dst) };
                        }
                    }
                }
                return;
            }
        }
        let _ = scratch;
        for o in 0..s.c_out {
            for tile in 0..samples * tiles {
                let (sample, within) = (tile / tiles, tile % tiles);
                let (y0, x0) = (4 * (within / tc), 4 * (within % tc));
                let b = bias(sample, o);
                // Aᵀ M, column by column, then (Aᵀ M) A, row by row.
                let at_m = |xi: usize| m[xi * m_stride + o * stride + tile];
                let columns: [[T; 4]; 6] =
                    std::array::from_fn(|j| at(std::array::from_fn(|i| at_m(6 * i + j))));
                for a in 0..4 {
                    let row = at(std::array::from_fn(|j| columns[j][a]));
                    for (bx, &value) in row.iter().enumerate() {
                        let (yy, xx) = (y0 + a, x0 + bx);
                        if yy < s.h && xx < s.w {
                            let at = (sample * s.c_out + o) * plane + yy * s.w + xx;
                            let r = residual.map_or(T::ZERO, |r| r[at]);
                            y[at].write(value + b + r);
                        }
                    }
                }
            }
        }
    }
);

vectorized_fn!(
    /// Z = A ∂Y Aᵀ for a block of `samples` samples starting at `dy` (the first one's output
    /// gradient, O planes each): 36 matrices O × `stride` ([`matrix_stride`] apart),
    /// element (ξ, o, tile), with the columns past the block's tiles zero. ∂Y is zero
    /// outside the image. `e`: scratch as [`input_transform`]'s. f32 on AVX-512 CPUs as
    /// [`input_transform`], with the output gradient's disjoint 4×4 patches; otherwise tile
    /// by tile.
    fn grad_transform<T: Element>(
        s: &Shape3x3,
        plan: &Plan,
        dy: &[T],
        samples: usize,
        stride: usize,
        z: &mut [T],
        e: &mut [T],
    ) => grad_transform_generic {
        let (plane, tiles) = (s.plane(), samples * s.tiles());
        assert!(dy.len() >= samples * s.c_out * plane && stride <= plan.columns());
        assert!(z.len() >= XI * matrix_stride(s.c_out, stride) && stride >= tiles);
        #[cfg(target_arch = "x86_64")]
        if super::avx512::available() {
            if let (Some(dy), Some(z), Some(e)) = (T::as_f32(dy), T::as_f32_mut(z), T::as_f32_mut(e)) {
                // SAFETY: AVX-512F is available.
                unsafe { by_rows_and_columns::<true>(s, plan, dy, samples, stride, z, e) };
                return;
            }
        }
        let _ = e;
        for o in 0..s.c_out {
            for tile in 0..stride {
                let (sample, within) = (tile / s.tiles(), tile % s.tiles());
                let (y0, x0) = (4 * (within / s.tile_cols()), 4 * (within % s.tile_cols()));
                // The patch: rows y0 … y0 + 3 and columns x0 … x0 + 3, zero outside the
                // image and past the block's tiles.
                let g: [[T; 4]; 4] = std::array::from_fn(|r| {
                    std::array::from_fn(|k| {
                        let (y, x) = (y0 + r, x0 + k);
                        if tile < tiles && y < s.h && x < s.w {
                            dy[(sample * s.c_out + o) * plane + y * s.w + x]
                        } else {
                            T::ZERO
                        }
                    })
                });
                // A g row by row (4 rows of 6), then A down each of the 6 columns.
                let rows: [[T; 6]; 4] = g.map(a);
                for j in 0..6 {
                    let column = a(std::array::from_fn(|r| rows[r][j]));
                    for (i, &value) in column.iter().enumerate() {
                        z[(6 * i + j) * matrix_stride(s.c_out, stride) + o * stride + tile] = value;
                    }
                }
            }
        }
    }
);

#[cfg(target_arch = "x86_64")]
mod kernels {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use super::LANES;

    /// [`super::bt`] on 16 lanes, with fused multiply-adds.
    ///
    /// # Safety
    /// AVX-512F. (A target-feature function, not a closure or a plain function, so that it
    /// is inlined into the kernels below.)
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn bt(z: [__m512; 6]) -> [__m512; 6] {
        let (four, five, two) = (
            _mm512_set1_ps(4.0),
            _mm512_set1_ps(5.0),
            _mm512_set1_ps(2.0),
        );
        let t1 = _mm512_fnmadd_ps(four, z[2], z[4]);
        let t2 = _mm512_fnmadd_ps(four, z[1], z[3]);
        let t3 = _mm512_sub_ps(z[4], z[2]);
        let t4 = _mm512_mul_ps(two, _mm512_sub_ps(z[3], z[1]));
        [
            _mm512_fmadd_ps(four, z[0], _mm512_fnmadd_ps(five, z[2], z[4])),
            _mm512_add_ps(t1, t2),
            _mm512_sub_ps(t1, t2),
            _mm512_add_ps(t3, t4),
            _mm512_sub_ps(t3, t4),
            _mm512_fmadd_ps(four, z[1], _mm512_fnmadd_ps(five, z[3], z[5])),
        ]
    }

    /// [`super::at`] on 16 lanes, with fused multiply-adds.
    ///
    /// # Safety
    /// AVX-512F (as [`bt`]).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn at(m: [__m512; 6]) -> [__m512; 4] {
        let (a, b) = (_mm512_add_ps(m[1], m[2]), _mm512_sub_ps(m[1], m[2]));
        let (c, d) = (_mm512_add_ps(m[3], m[4]), _mm512_sub_ps(m[3], m[4]));
        [
            _mm512_add_ps(_mm512_add_ps(m[0], a), c),
            _mm512_fmadd_ps(_mm512_set1_ps(2.0), d, b),
            _mm512_fmadd_ps(_mm512_set1_ps(4.0), c, a),
            _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8.0), d, b), m[5]),
        ]
    }

    /// [`super::a`] on 16 lanes, with fused multiply-adds.
    ///
    /// # Safety
    /// AVX-512F (as [`bt`]).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn a(g: [__m512; 4]) -> [__m512; 6] {
        let (p, q) = (_mm512_add_ps(g[0], g[2]), _mm512_add_ps(g[1], g[3]));
        let pp = _mm512_fmadd_ps(_mm512_set1_ps(4.0), g[2], g[0]);
        let qq = _mm512_fmadd_ps(
            _mm512_set1_ps(8.0),
            g[3],
            _mm512_mul_ps(_mm512_set1_ps(2.0), g[1]),
        );
        [
            g[0],
            _mm512_add_ps(p, q),
            _mm512_sub_ps(p, q),
            _mm512_add_ps(pp, qq),
            _mm512_sub_ps(pp, qq),
            g[3],
        ]
    }

    /// Stage 1 of [`super::input_transform`] for one channel of a block of `samples`
    /// samples (`x` at its plane in the first sample; the next sample's C·H·W further):
    /// E_i[4⌈W/4⌉·r + x] = Σ_k Bᵀ_ik x[4ty − 1 + k, x] for each tile row r = (sample, ty)
    /// and column x < 4⌈W/4⌉ (zero outside the image), E_i at `e + i·e_stride`. With GRAD,
    /// stage 1 of [`super::grad_transform`]: x is ∂Y (O planes a sample), and
    /// E_i = Σ_k A_ik ∂Y[4ty + k, x] over its 4 rows.
    ///
    /// # Safety
    /// AVX-512F; E_i's positions 0 … 4·tiles − 1 lie in e's allocation.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn down_rows<const GRAD: bool>(
        s: &super::Shape3x3,
        x: &[f32],
        samples: usize,
        e: *mut f32,
        e_stride: usize,
    ) {
        let (h, w, plane) = (s.h, s.w, s.plane());
        let (pitch, tile_rows) = (4 * s.tile_cols(), s.tile_rows());
        let channels = if GRAD { s.c_out } else { s.c_in };
        assert!(samples > 0 && x.len() >= (samples - 1) * channels * plane + plane);
        for r in 0..samples * tile_rows {
            let (sample, ty) = (r / tile_rows, r % tile_rows);
            let channel = &x[sample * channels * plane..][..plane];
            for first in (0..pitch).step_by(LANES) {
                let inside = super::super::avx512::tail_mask(w.saturating_sub(first).min(LANES));
                let mut d = [_mm512_setzero_ps(); 6];
                for (k, slot) in d.iter_mut().enumerate().take(if GRAD { 4 } else { 6 }) {
                    // Row −1 wraps past h, and is zero as the rows past h are.
                    let y = (4 * ty + k).wrapping_sub(usize::from(!GRAD));
                    if y < h {
                        // SAFETY: the lanes on are columns first … min(first + 16, w) − 1 of
                        // row y, inside the channel's plane; the address of lane 0 is not
                        // read when none is on.
                        *slot = unsafe {
                            _mm512_maskz_loadu_ps(
                                inside,
                                channel.as_ptr().wrapping_add(y * w + first),
                            )
                        };
                    }
                }
                let store = super::super::avx512::tail_mask((pitch - first).min(LANES));
                let e_rows = if GRAD {
                    a([d[0], d[1], d[2], d[3]])
                } else {
                    bt(d)
                };
                for (i, value) in e_rows.into_iter().enumerate() {
                    // SAFETY: position r·pitch + first + 15 < 4·tiles (the caller's
                    // guarantee), masked to the row's pitch.
                    unsafe {
                        _mm512_mask_storeu_ps(e.add(i * e_stride + r * pitch + first), store, value)
                    };
                }
            }
        }
    }

    /// Stage 2 of [`super::input_transform`] for one channel: for each step q of 16 tiles
    /// t = 16q + u (`edges[q]`: the lanes in the first and last tile columns; lanes from
    /// `tiles` on are zero), column l of tile t, E_i[4t − 1 + l], taken from the 64
    /// positions X = E_i[64q − 1 …] as D_l[u] = X[4u + l] for l < 4 (a stride-4 split of
    /// four vectors by eight permutes) and D_l[u] = D_(l−4)[u + 1] for l = 4, 5. Then
    /// V_ij = Σ_l Bᵀ_jl D_l, stored at `v + (6i + j)·v_stride + 16q`. With GRAD, stage 2
    /// of [`super::grad_transform`]: D_l[u] = E_i[4t + l] for l < 4 (no neighbouring
    /// columns: `edges` only gives the steps), and Z_ij = Σ_l A_jl D_l.
    ///
    /// # Safety
    /// AVX-512F; E_i (at `e + i·e_stride`, position 0) holds positions −1 … 64·q_max + 65,
    /// and v the 36 rows of 16·edges.len() elements.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn along_columns<const GRAD: bool>(
        edges: &[(u16, u16)],
        tiles: usize,
        e: *const f32,
        e_stride: usize,
        v: *mut f32,
        v_stride: usize,
    ) {
        // Stride-4 split of X (64) into D_0 … D_3 (16 each): first pairs of columns (l, l + 1)
        // of 8 tiles from 32 elements (lanes 2u + h ← 4u + h, or 4u + 2 + h), then the even
        // and odd lanes of two such (tiles 0–7 from the first, 8–15 from the second).
        let pairs_low = _mm512_set_epi32(29, 28, 25, 24, 21, 20, 17, 16, 13, 12, 9, 8, 5, 4, 1, 0);
        let pairs_high =
            _mm512_set_epi32(31, 30, 27, 26, 23, 22, 19, 18, 15, 14, 11, 10, 7, 6, 3, 2);
        let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        let odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
        for (q, &(first, last)) in edges.iter().enumerate() {
            let valid = super::valid_lanes(tiles, q);
            for i in 0..6 {
                if GRAD {
                    // SAFETY: positions 64q … 64q + 63 of E_i (the caller's guarantee).
                    let d = unsafe {
                        let x = e.add(i * e_stride + 64 * q);
                        let a = [0, 16, 32, 48].map(|at| _mm512_loadu_ps(x.add(at)));
                        let b01 = _mm512_permutex2var_ps(a[0], pairs_low, a[1]);
                        let b23 = _mm512_permutex2var_ps(a[0], pairs_high, a[1]);
                        let c01 = _mm512_permutex2var_ps(a[2], pairs_low, a[3]);
                        let c23 = _mm512_permutex2var_ps(a[2], pairs_high, a[3]);
                        [
                            _mm512_maskz_permutex2var_ps(valid, b01, even, c01),
                            _mm512_maskz_permutex2var_ps(valid, b01, odd, c01),
                            _mm512_maskz_permutex2var_ps(valid, b23, even, c23),
                            _mm512_maskz_permutex2var_ps(valid, b23, odd, c23),
                        ]
                    };
                    for (j, value) in a(d).into_iter().enumerate() {
                        // SAFETY: the caller's guarantee.
                        unsafe { _mm512_storeu_ps(v.add((6 * i + j) * v_stride + 16 * q), value) };
                    }
                    continue;
                }
                // SAFETY: positions 64q − 1 … 64q + 65 of E_i (the caller's guarantee).
                let d = unsafe {
                    let x = e.add(i * e_stride + 64 * q).sub(1);
                    let a = [0, 16, 32, 48].map(|at| _mm512_loadu_ps(x.add(at)));
                    let b01 = _mm512_permutex2var_ps(a[0], pairs_low, a[1]);
                    let b23 = _mm512_permutex2var_ps(a[0], pairs_high, a[1]);
                    let c01 = _mm512_permutex2var_ps(a[2], pairs_low, a[3]);
                    let c23 = _mm512_permutex2var_ps(a[2], pairs_high, a[3]);
                    let d0 = _mm512_permutex2var_ps(b01, even, c01);
                    let d1 = _mm512_permutex2var_ps(b01, odd, c01);
                    // Lane 15 of D_4 and D_5: X[64], X[65].
                    let (x64, x65) = (_mm512_set1_ps(*x.add(64)), _mm512_set1_ps(*x.add(65)));
                    [
                        _mm512_maskz_mov_ps(valid & !first, d0),
                        _mm512_maskz_mov_ps(valid, d1),
                        _mm512_maskz_permutex2var_ps(valid, b23, even, c23),
                        _mm512_maskz_permutex2var_ps(valid, b23, odd, c23),
                        _mm512_castsi512_ps(_mm512_maskz_alignr_epi32(
                            valid,
                            _mm512_castps_si512(x64),
                            _mm512_castps_si512(d0),
                            1,
                        )),
                        _mm512_castsi512_ps(_mm512_maskz_alignr_epi32(
                            valid & !last,
                            _mm512_castps_si512(x65),
                            _mm512_castps_si512(d1),
                            1,
                        )),
                    ]
                };
                for (j, value) in bt(d).into_iter().enumerate() {
                    // SAFETY: the caller's guarantee.
                    unsafe { _mm512_storeu_ps(v.add((6 * i + j) * v_stride + 16 * q), value) };
                }
            }
        }
    }

    /// The 16 outputs Aᵀ M A of 16 tiles (M_ξ at `m + ξ·m_stride`), row a interleaved into
    /// positions 4u + b of `r + a·r_stride` (tile u's output (a, b)): the inverse of
    /// [`along_columns`]' split, by eight permutes a row.
    ///
    /// # Safety
    /// AVX-512F; the 36 loads of 16 elements lie in m's allocation, and the 4 × 64 stored
    /// elements in r's.
    // The index loops read the 6×6 values by columns: a transpose.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn output_rows(m: *const f32, m_stride: usize, r: *mut f32, r_stride: usize) {
        // Lanes 2u + h of the first 8 tiles (or of the last 8) from rows h of two vectors.
        let pairs_low = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        let pairs_high =
            _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
        // Positions 4v + b (v < 4, or 4 ≤ v < 8) from the pairs of b = 0, 1 and b = 2, 3.
        let quads_low = _mm512_set_epi32(23, 22, 7, 6, 21, 20, 5, 4, 19, 18, 3, 2, 17, 16, 1, 0);
        let quads_high =
            _mm512_set_epi32(31, 30, 15, 14, 29, 28, 13, 12, 27, 26, 11, 10, 25, 24, 9, 8);
        let zero = _mm512_setzero_ps();
        // Aᵀ M, column by column.
        let mut columns = [[zero; 4]; 6];
        for (j, column) in columns.iter_mut().enumerate() {
            let mut d = [zero; 6];
            for (i, slot) in d.iter_mut().enumerate() {
                // SAFETY: the caller's guarantee.
                *slot = unsafe { _mm512_loadu_ps(m.add((6 * i + j) * m_stride)) };
            }
            *column = at(d);
        }
        // (Aᵀ M) A, row by row, each row interleaved.
        for a in 0..4 {
            let mut row = [zero; 6];
            for (j, slot) in row.iter_mut().enumerate() {
                *slot = columns[j][a];
            }
            let y = at(row);
            let b01 = _mm512_permutex2var_ps(y[0], pairs_low, y[1]);
            let c01 = _mm512_permutex2var_ps(y[0], pairs_high, y[1]);
            let b23 = _mm512_permutex2var_ps(y[2], pairs_low, y[3]);
            let c23 = _mm512_permutex2var_ps(y[2], pairs_high, y[3]);
            let x = [
                _mm512_permutex2var_ps(b01, quads_low, b23),
                _mm512_permutex2var_ps(b01, quads_high, b23),
                _mm512_permutex2var_ps(c01, quads_low, c23),
                _mm512_permutex2var_ps(c01, quads_high, c23),
            ];
            for (k, value) in x.into_iter().enumerate() {
                // SAFETY: the caller's guarantee.
                unsafe { _mm512_storeu_ps(r.add(a * r_stride + 16 * k), value) };
            }
        }
    }

    /// `dst[x] = src[x] + bias (+ residual[x])` for a row.
    ///
    /// # Safety
    /// AVX-512F; `src` (and `residual`) is as long as `dst`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn copy_row(
        src: &[f32],
        bias: f32,
        residual: Option<&[f32]>,
        dst: &mut [MaybeUninit<f32>],
    ) {
        let n = dst.len();
        assert!(src.len() >= n && residual.is_none_or(|r| r.len() >= n));
        let (b, from, to) = (
            _mm512_set1_ps(bias),
            src.as_ptr(),
            dst.as_mut_ptr().cast::<f32>(),
        );
        for x in (0..n).step_by(LANES) {
            let mask = super::super::avx512::tail_mask((n - x).min(LANES));
            // SAFETY: the lanes on lie in the rows (asserted above).
            unsafe {
                let mut value = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, from.add(x)), b);
                if let Some(r) = residual {
                    value = _mm512_add_ps(value, _mm512_maskz_loadu_ps(mask, r.as_ptr().add(x)));
                }
                _mm512_mask_storeu_ps(to.add(x), mask, value);
            }
        }
    }
}

/// M_ξ (O × `stride`) = U_ξ (O × C) · V_ξ (C × `stride`), the rows of V_ξ and M_ξ `stride`
/// elements apart. f32 on AVX-512 CPUs by [`unpacked_gemm::product`], which reads U_ξ and
/// V_ξ where they lie; otherwise by `gemm`, which first copies both into its own layout (that
/// copying took 4–5% of a forward convolution, and gemm's calls and edge kernels 3–5% more).
/// Session 13, interleaved: the network's forward 3×3 convolutions 65.4 / 64.6 ms (gemm) →
/// 62.9 / 61.5 ms.
fn products<T: Element>(s: &Shape3x3, stride: usize, u: &[T], v: &[T], m: &mut [T]) {
    assert!(u.len() == s.c_out * s.c_in && v.len() >= s.c_in * stride);
    assert!(m.len() >= s.c_out * stride && stride.is_multiple_of(LANES));
    #[cfg(target_arch = "x86_64")]
    if super::avx512::available() {
        if let (Some(u), Some(v), Some(m)) = (T::as_f32(u), T::as_f32(v), T::as_f32_mut(m)) {
            let out = m[..s.c_out * stride].as_mut_ptr();
            // SAFETY: AVX-512F is available; M holds O rows of `stride` (asserted above).
            unsafe {
                unpacked_gemm::product(
                    (s.c_out, s.c_in, stride),
                    (u, s.c_in),
                    (v, stride),
                    (out, stride),
                    unpacked_gemm::Start::Zero,
                )
            };
            return;
        }
    }
    matmul(
        s.c_out,
        stride,
        s.c_in,
        m,
        false,
        u,
        (s.c_in, 1),
        v,
        (stride, 1),
        gemm::Parallelism::None,
    );
}

/// ∂U_ξᵀ (C × O) = V_ξ (C × `tiles`) · Z_ξᵀ (`tiles` × O) for the 36 ξ, or += when
/// `accumulate`: the weight gradient's products for one block, the rows of V_ξ and Z_ξ
/// `stride` elements apart, `dut` 36 matrices C × O.
///
/// f32 on AVX-512 CPUs with O a multiple of 16: Z_ξ transposed into `zt` (`stride` × O),
/// then [`unpacked_gemm::product`], which reads V_ξ where it lies. Otherwise by `gemm`,
/// which copies both into its own layout, Z_ξᵀ's elements `stride` apart.
fn weight_products<T: Element>(
    s: &Shape3x3,
    (tiles, stride): (usize, usize),
    (v, z): (&[T], &[T]),
    zt: &mut [T],
    dut: &mut [T],
    accumulate: bool,
) {
    let kernels = s.c_in * s.c_out;
    assert!(tiles <= stride && stride.is_multiple_of(LANES) && dut.len() >= XI * kernels);
    let (v_stride, z_stride) = (
        matrix_stride(s.c_in, stride),
        matrix_stride(s.c_out, stride),
    );
    assert!(v.len() >= XI * v_stride && z.len() >= XI * z_stride);
    #[cfg(target_arch = "x86_64")]
    if super::avx512::available() && s.c_out.is_multiple_of(LANES) {
        if let (Some(v), Some(z), Some(zt), Some(dut)) = (
            T::as_f32(v),
            T::as_f32(z),
            T::as_f32_mut(zt),
            T::as_f32_mut(dut),
        ) {
            // Z_ξ's columns up to `tiles`, rounded up to whole vectors (the rest are zero).
            let columns = tiles.next_multiple_of(LANES);
            assert!(zt.len() >= columns * s.c_out);
            for xi in 0..XI {
                // SAFETY: AVX-512F is available; Z_ξ's O rows of `stride` ≥ `columns`
                // elements lie in z, and zt holds columns × O elements (asserted above).
                unsafe {
                    super::avx512::transpose(
                        (z[xi * z_stride..].as_ptr(), stride),
                        (s.c_out, columns),
                        zt.as_mut_ptr(),
                    );
                    unpacked_gemm::product(
                        (s.c_in, tiles, s.c_out),
                        (&v[xi * v_stride..], stride),
                        (zt, s.c_out),
                        (dut[xi * kernels..][..kernels].as_mut_ptr(), s.c_out),
                        if accumulate {
                            unpacked_gemm::Start::Accumulate
                        } else {
                            unpacked_gemm::Start::Zero
                        },
                    );
                }
            }
            return;
        }
    }
    let _ = zt;
    for xi in 0..XI {
        matmul(
            s.c_in,
            s.c_out,
            stride,
            &mut dut[xi * kernels..],
            accumulate,
            &v[xi * v_stride..],
            (stride, 1),
            &z[xi * z_stride..],
            (1, stride),
            gemm::Parallelism::None,
        );
    }
}

/// y = conv(x, w) + b (+ r) for a 3×3 kernel w (O, C, 3, 3), stride 1 and padding 1; b is
/// per output channel (O) or per sample and channel (B·O), and the residual r, when given,
/// has y's shape.
pub(super) fn forward<T: Element>(
    s: &Shape3x3,
    x: &[T],
    w: &[T],
    b: &[T],
    residual: Option<&[T]>,
) -> Vec<T> {
    let u = filter_transform(s, w);
    let plan = Plan::new(s, s.block(FORWARD_BLOCK_TILES));
    let per_channel = b.len() == s.c_out;
    let (group, block, plane) = (s.group(), plan.block, s.plane());
    let (in_per, out_per) = (s.c_in * plane, s.c_out * plane);
    let len = s.batch * out_per;
    assert!(residual.is_none_or(|r| r.len() == len));
    let most = s.columns(block);
    let mut y = Vec::with_capacity(len);
    y.spare_capacity_mut()[..len]
        .par_chunks_mut(group * out_per)
        .zip(x.par_chunks(group * in_per))
        .enumerate()
        .for_each(|(index, (y_g, x_g))| {
            let (v_len, m_len) = (
                XI * matrix_stride(s.c_in, most),
                XI * matrix_stride(s.c_out, most),
            );
            with_scratch(
                v_len + m_len + 16 * most + 6 * e_len(most),
                |scratch: &mut [T]| {
                    let (v, rest) = scratch.split_at_mut(v_len);
                    let (m, rest) = rest.split_at_mut(m_len);
                    let (small, e) = rest.split_at_mut(16 * most);
                    let samples = x_g.len() / in_per;
                    for first in (0..samples).step_by(block) {
                        let n = block.min(samples - first);
                        let stride = s.columns(n);
                        let sample0 = index * group + first;
                        let bias = move |sample: usize, o: usize| {
                            if per_channel {
                                b[o]
                            } else {
                                b[(sample0 + sample) * s.c_out + o]
                            }
                        };
                        input_transform(s, &plan, &x_g[first * in_per..], n, stride, v, e);
                        // M_ξ = U_ξ · V_ξ.
                        for xi in 0..XI {
                            products(
                                s,
                                stride,
                                &u[xi * s.c_out * s.c_in..][..s.c_out * s.c_in],
                                &v[xi * matrix_stride(s.c_in, stride)..],
                                &mut m[xi * matrix_stride(s.c_out, stride)..],
                            );
                        }
                        let r = residual.map(|r| &r[(index * group + first) * out_per..]);
                        output_transform(
                            s,
                            m,
                            n,
                            stride,
                            &mut y_g[first * out_per..],
                            (&bias, r),
                            small,
                        );
                    }
                },
            );
        });
    // SAFETY: every output element (sample, o, oy, ox) belongs to one block of one group,
    // and `output_transform` writes every pixel of each of the block's planes.
    unsafe { y.set_len(len) };
    y
}

/// ∂L/∂w (O, C, 3, 3) of [`forward`] from its input x and output gradient ∂Y, by the
/// adjoint of the same algorithm: ∂U_ξ = Σ_tiles (A ∂Y Aᵀ)_ξ · V_ξᵀ with V = Bᵀ d B, then
/// ∂w = Σ_ξ ∂U_ξ G_iu G_jv. Per group of samples (one thread each), the 36 products of each
/// block accumulate ∂U_ξᵀ (C × O); the groups' sums are added
/// ([`element::sum_partials`]), and one product with the
/// [coefficients](filter_coefficients) gives ∂w.
pub(super) fn grad_weight<T: Element>(s: &Shape3x3, x: &[T], dy: &[T]) -> Vec<T> {
    let plan = Plan::new(s, s.grad_block());
    let (group, block, plane) = (s.group(), plan.block, s.plane());
    let (in_per, out_per, kernels) = (s.c_in * plane, s.c_out * plane, s.c_in * s.c_out);
    let most = s.columns(block);
    let partial = |(x_g, dy_g): (&[T], &[T])| -> Vec<T> {
        let mut dut = vec![T::ZERO; XI * kernels];
        let (v_len, z_len) = (
            XI * matrix_stride(s.c_in, most),
            XI * matrix_stride(s.c_out, most),
        );
        let e_total = 6 * e_len(most);
        with_scratch(
            v_len + z_len + e_total + most * s.c_out,
            |scratch: &mut [T]| {
                let (v, rest) = scratch.split_at_mut(v_len);
                let (z, rest) = rest.split_at_mut(z_len);
                let (e, zt) = rest.split_at_mut(e_total);
                let samples = x_g.len() / in_per;
                for first in (0..samples).step_by(block) {
                    let n = block.min(samples - first);
                    let stride = s.columns(n);
                    input_transform(s, &plan, &x_g[first * in_per..], n, stride, v, e);
                    grad_transform(s, &plan, &dy_g[first * out_per..], n, stride, z, e);
                    // ∂U_ξᵀ (C × O) += V_ξ · Z_ξᵀ.
                    let tiles = n * s.tiles();
                    weight_products(s, (tiles, stride), (v, z), zt, &mut dut, first > 0);
                }
            },
        );
        dut
    };
    // One partial sum per group, added into the first: no zeroed identities to add.
    let dut = element::sum_partials(
        x.par_chunks(group * in_per)
            .zip(dy.par_chunks(group * out_per))
            .map(partial)
            .collect(),
        XI * kernels,
    );
    // ∂w, element ((c, o), 3u + v): Σ_ξ ∂U_ξᵀ[c, o]·G_iu G_jv.
    let mut by_input = Vec::with_capacity(kernels * 9);
    matmul_uninit(
        kernels,
        9,
        XI,
        &mut by_input.spare_capacity_mut()[..kernels * 9],
        &dut,
        (1, kernels),
        &filter_coefficients::<T>(),
        (9, 1),
        gemm::Parallelism::Rayon(super::threads()),
    );
    // SAFETY: the product wrote all kernels × 9 elements.
    unsafe { by_input.set_len(kernels * 9) };
    let mut dw = vec![T::ZERO; kernels * 9];
    for (at, k) in by_input.chunks_exact(9).enumerate() {
        let (c, o) = (at / s.c_out, at % s.c_out);
        dw[(o * s.c_in + c) * 9..][..9].copy_from_slice(k);
    }
    dw
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

    /// Even and odd sizes (odd ones have tiles that hang over the edge), blocks of one and
    /// several samples, groups of one and several blocks (the 4×450 images: 113 tiles, a
    /// block a sample), a single column and row, and a batch beyond 16.
    const SHAPES: [Shape3x3; 9] = [
        // 12 tiles a sample, blocks of 5 samples: 48 columns (with one or two threads) for the
        // f32 products' blocks of 3 vectors, and 13 output channels for rows 6 + 6 + 1.
        Shape3x3 {
            batch: 8,
            c_in: 5,
            c_out: 13,
            h: 12,
            w: 16,
        },
        // 16 tiles a sample: with two threads, groups of 6 samples, in blocks of 4 and a
        // partial one of 2.
        Shape3x3 {
            batch: 12,
            c_in: 3,
            c_out: 2,
            h: 16,
            w: 16,
        },
        // Groups of 10 samples (with two threads) in one block each, 6 tiles a sample.
        Shape3x3 {
            batch: 20,
            c_in: 3,
            c_out: 2,
            h: 5,
            w: 9,
        },
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
                let exact = direct(s, &x, &w, &b);
                let err = max_abs_diff(&forward(s, &x, &w, &b, None), &exact);
                // Sums of at most 9·C products of values below 1: rounding alone is < 1e-13.
                assert!(err < 1e-12, "{s:?}: differs by {err}");
                // With a residual added as the output is written.
                let r = values(exact.len(), seed + 4);
                let plus: Vec<f64> = exact.iter().zip(&r).map(|(y, r)| y + r).collect();
                let err = max_abs_diff(&forward(s, &x, &w, &b, Some(&r)), &plus);
                assert!(err < 1e-12, "{s:?}: with a residual, differs by {err}");
            }
        }
    }

    /// In f32 (which takes the AVX-512 kernels where the CPU has them), every
    /// shape above and the network's three image sizes, against the f64 definition.
    #[test]
    fn f32_stays_close_to_f64() {
        let wide = [(14, 64), (28, 32), (7, 96)].map(|(side, channels)| Shape3x3 {
            batch: 2,
            c_in: channels,
            c_out: channels,
            h: side,
            w: side,
        });
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
        for (i, s) in SHAPES.iter().chain(&wide).enumerate() {
            let seed = 100 + 10 * i as u64;
            let x = values(s.batch * s.c_in * s.plane(), seed);
            let w = values(s.c_out * s.c_in * 9, seed + 1);
            let b = values(s.c_out, seed + 2);
            // With a residual (the network's skip paths) on every other shape.
            let r = values(s.batch * s.c_out * s.plane(), seed + 3);
            let with_r = i % 2 == 1;
            let y = forward(
                s,
                &to32(&x),
                &to32(&w),
                &to32(&b),
                with_r.then(|| to32(&r)).as_deref(),
            );
            // F(4×4, 3×3) rounds more than the direct sum: the transforms' coefficients (up
            // to 5 in Bᵀ, 8 in Aᵀ, 1/24 in G) scale the rounding errors of the transformed
            // values, and the 36 products of each tile cancel to give outputs smaller than
            // themselves. Measured here: 1e-7 to 6e-6 of the result's scale (direct f32
            // sums: about 2e-7). A misplaced element or a wrong coefficient is off by O(1).
            let mut exact = direct(s, &x, &w, &b);
            if with_r {
                exact.iter_mut().zip(&r).for_each(|(y, r)| *y += r);
            }
            let err = worst(&y, &exact);
            assert!(err < 2e-5, "{s:?}: f32 differs by {err}");
        }
    }

    /// ∂L/∂w of Σ y·g for an output gradient g, by the definition: ∂w[o, c, u, v] =
    /// Σ_{n,i,j} g[n, o, i, j]·x[n, c, i + u − 1, j + v − 1], in f64.
    fn direct_grad_weight(s: &Shape3x3, x: &[f64], g: &[f64]) -> Vec<f64> {
        let mut dw = vec![0.0; s.c_out * s.c_in * 9];
        for n in 0..s.batch {
            for o in 0..s.c_out {
                for c in 0..s.c_in {
                    for u in 0..3 {
                        for v in 0..3 {
                            let mut sum = 0.0;
                            for i in 0..s.h {
                                for j in 0..s.w {
                                    let (iy, ix) =
                                        ((i + u).wrapping_sub(1), (j + v).wrapping_sub(1));
                                    if iy < s.h && ix < s.w {
                                        sum += g[((n * s.c_out + o) * s.h + i) * s.w + j]
                                            * x[((n * s.c_in + c) * s.h + iy) * s.w + ix];
                                    }
                                }
                            }
                            dw[((o * s.c_in + c) * 3 + u) * 3 + v] += sum;
                        }
                    }
                }
            }
        }
        dw
    }

    #[test]
    fn grad_weight_matches_the_definition() {
        // Output channels past whole vectors (gemm's path), then multiples of 16 (the f32
        // products without gemm: 3 and 5 vectors, 13 input channels for rows 6 + 6 + 1, and
        // groups of two blocks, whole and partial: 6 samples of 28×28 as 4 + 2, 20 of 7×7
        // as 16 + 4, with two threads).
        let wide = [
            (3, 14, 32, 40),
            (3, 28, 16, 24),
            (3, 7, 48, 56),
            (12, 28, 10, 48),
            (40, 7, 13, 80),
        ]
        .map(|(batch, side, c_in, c_out)| Shape3x3 {
            batch,
            c_in,
            c_out,
            h: side,
            w: side,
        });
        for (i, s) in SHAPES.iter().chain(&wide).enumerate() {
            let seed = 500 + 10 * i as u64;
            let x = values(s.batch * s.c_in * s.plane(), seed);
            let g = values(s.batch * s.c_out * s.plane(), seed + 1);
            let exact = direct_grad_weight(s, &x, &g);
            let scale = exact.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            // f64: rounding alone, far below 1e-12 of the scale.
            let err = max_abs_diff(&grad_weight(s, &x, &g), &exact) / scale;
            assert!(err < 1e-12, "{s:?}: f64 differs by {err}");
            // f32 (the AVX-512 kernels where the CPU has them): as the forward's f32 test,
            // a few 1e-6 of the scale from the transforms' coefficients.
            let to32 = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
            let dw = grad_weight(s, &to32(&x), &to32(&g));
            let dw: Vec<f64> = dw.iter().map(|&v| f64::from(v)).collect();
            let err = max_abs_diff(&dw, &exact) / scale;
            assert!(err < 2e-5, "{s:?}: f32 differs by {err}");
        }
    }
}
