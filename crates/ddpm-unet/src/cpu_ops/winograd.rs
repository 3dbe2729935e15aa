//! 3×3 convolutions with stride 1 and padding 1 by Winograd's minimal filtering algorithm
//! F(2×2, 3×3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! The output is cut into 2×2 tiles. Tile (ty, tx) depends on the 4×4 input patch d at rows
//! 2ty − 1 … 2ty + 2 and columns 2tx − 1 … 2tx + 2 (zero outside the image). With
//!
//! ```text
//!      ⎡1  0 −1  0⎤        ⎡1   0   0⎤
//! Bᵀ = ⎢0  1  1  0⎥,   G = ⎢½   ½   ½⎥,   Aᵀ = ⎡1  1  1  0⎤
//!      ⎢0 −1  1  0⎥        ⎢½  −½   ½⎥         ⎣0  1 −1 −1⎦
//!      ⎣0  1  0 −1⎦        ⎣0   0   1⎦
//! ```
//!
//! each output tile is y_o = Aᵀ [Σ_c (G w_oc Gᵀ) ⊙ (Bᵀ d_c B)] A. Over a batch of tiles the
//! sums over c are 16 matrix products, one per position ξ of the 4×4 transformed tile:
//! M_ξ = U_ξ·V_ξ, with U_ξ (O×C) the transformed weights and V_ξ (C×tiles) the transformed
//! patches. That is 16 multiply-adds per 2×2 outputs and channel pair instead of 36.
//!
//! The backward passes are the adjoints of the same linear maps:
//! ∂L/∂M = A·∂L/∂y·Aᵀ per tile; ∂L/∂V_ξ = U_ξᵀ·∂L/∂M_ξ; ∂L/∂d = B·∂L/∂V·Bᵀ, added over the
//! overlapping patches; ∂L/∂U_ξ = Σ_tiles ∂L/∂M_ξ·V_ξᵀ; ∂L/∂w = Gᵀ·∂L/∂U·G.
//!
//! Layout. Tiles are numbered in rows of W′ = ⌈W/2⌉ + 1, one more than there are tiles
//! across. The padded input, split into its four (even/odd row, even/odd column) planes of
//! W′ columns, then holds every tile's patch element (k, l) at the tile's index plus the
//! constant offset ⌊k/2⌋·W′ + ⌊l/2⌋ in plane (k mod 2, l mod 2), so each transform is one
//! pass over whole planes in blocks of [`BLOCK`] lanes, which vectorises. The extra tile of
//! each row reads finite values and its output is dropped; its output gradient is zero, so it
//! adds nothing to the gradients.
//!
//! Work is split over chunks of samples (about [`TARGET_TILES`] tiles each, so that a
//! chunk's transformed tiles stay in cache); each chunk's 16 gemms run on one thread.

use std::sync::atomic::{AtomicU8, Ordering};

use gemm::Parallelism;
use rayon::prelude::*;

use super::conv2d::matmul;
use super::element::{with_scratch, Element};
use super::simd::vectorized_fn;

/// Lanes of one vectorised block of tiles.
const BLOCK: usize = 16;

/// Tiles per chunk of samples that one task transforms and multiplies.
const TARGET_TILES: usize = 512;

/// Whether 3×3 convolutions take this path: unset (the environment decides), on, off.
static MODE: AtomicU8 = AtomicU8::new(UNSET);
const UNSET: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;

/// Whether 3×3 convolutions with stride 1 and padding 1 take this path: yes, unless
/// [`set_enabled`] said otherwise or, before that, the environment variable `DDPM_CONV3X3`
/// is `im2col`.
pub(super) fn enabled() -> bool {
    match MODE.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => {
            let on = std::env::var("DDPM_CONV3X3").as_deref() != Ok("im2col");
            MODE.store(if on { ON } else { OFF }, Ordering::Relaxed);
            on
        }
    }
}

/// Turns this path on (the default) or off for the whole process, for comparisons with
/// im2col.
pub(super) fn set_enabled(enabled: bool) {
    MODE.store(if enabled { ON } else { OFF }, Ordering::Relaxed);
}

/// The shapes of one F(2×2, 3×3) convolution: input (B, C, H, W), weight (O, C, 3, 3),
/// output (B, O, H, W).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tiling {
    batch: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    /// Tile rows, ⌈H/2⌉.
    th: usize,
    /// Tiles per row including the extra one, ⌈W/2⌉ + 1.
    wp: usize,
}

impl Tiling {
    pub(super) fn new(batch: usize, c_in: usize, c_out: usize, h: usize, w: usize) -> Self {
        Self {
            batch,
            c_in,
            c_out,
            h,
            w,
            th: h.div_ceil(2),
            wp: w.div_ceil(2) + 1,
        }
    }

    /// Tiles of one sample, the extra column included.
    fn tiles(&self) -> usize {
        self.th * self.wp
    }

    /// Elements of one of the four interleaved planes: (⌈H/2⌉ + 1) rows of W′, plus slack
    /// for the constant offsets and a whole block past the last tile.
    fn plane_len(&self) -> usize {
        (self.th + 1) * self.wp + 1 + BLOCK
    }

    fn in_plane(&self) -> usize {
        self.h * self.w
    }

    /// Samples per chunk: about [`TARGET_TILES`] tiles, but at least two chunks per thread
    /// when the batch allows it.
    fn samples_per_chunk(&self) -> usize {
        let by_tiles = (TARGET_TILES / self.tiles()).max(1);
        by_tiles
            .min(self.batch.div_ceil(2 * super::threads()))
            .max(1)
    }

    /// One gemm thread per chunk when there are enough chunks to go round, otherwise all
    /// threads on each gemm.
    fn parallelism(&self) -> Parallelism {
        let threads = super::threads();
        if self.batch.div_ceil(self.samples_per_chunk()) >= threads || threads == 1 {
            Parallelism::None
        } else {
            Parallelism::Rayon(threads)
        }
    }
}

/// The distance between consecutive matrices ξ of transformed tiles (`channels` rows of
/// `tiles`): a block of slack after each, so that the transforms always move whole blocks.
fn matrix_stride(channels: usize, tiles: usize) -> usize {
    channels * tiles + BLOCK
}

/// A task's scratch: the four interleaved planes of one image, and the transformed tiles
/// (16 × channels × tiles of a chunk) on the input side (C) and the output side (O).
struct Scratch<'a, T> {
    planes: &'a mut [T],
    inputs: &'a mut [T],
    outputs: &'a mut [T],
}

impl Tiling {
    /// Runs `f` on this thread's reusable [`Scratch`] (stale contents: every user writes
    /// before it reads).
    fn with_scratch<T: Element, R>(&self, f: impl FnOnce(Scratch<'_, T>) -> R) -> R {
        let planes = 4 * self.plane_len();
        let chunk_tiles = self.samples_per_chunk() * self.tiles();
        let inputs = 16 * matrix_stride(self.c_in, chunk_tiles);
        let outputs = 16 * matrix_stride(self.c_out, chunk_tiles);
        with_scratch(planes + inputs + outputs, |buffer: &mut [T]| {
            let (planes, rest) = buffer.split_at_mut(planes);
            let (inputs, outputs) = rest.split_at_mut(inputs);
            f(Scratch {
                planes,
                inputs,
                outputs,
            })
        })
    }
}

/// Runs `task` on each chunk (the index of its first sample and its slices of `out` and
/// `input`, `out_per` and `in_per` elements per sample) with this thread's scratch: in
/// parallel when each chunk's gemms run on one thread, in order otherwise.
fn for_each_chunk<T: Element>(
    t: &Tiling,
    out: &mut [T],
    out_per: usize,
    input: &[T],
    in_per: usize,
    task: impl Fn(Scratch<'_, T>, usize, &mut [T], &[T]) + Sync + Send,
) {
    let s = t.samples_per_chunk();
    let run = |(i, (o, x)): (usize, (&mut [T], &[T]))| t.with_scratch(|scr| task(scr, i * s, o, x));
    if let Parallelism::None = t.parallelism() {
        out.par_chunks_mut(s * out_per)
            .zip(input.par_chunks(s * in_per))
            .enumerate()
            .for_each(run);
    } else {
        out.chunks_mut(s * out_per)
            .zip(input.chunks(s * in_per))
            .enumerate()
            .for_each(run);
    }
}

/// G·g for one column g of a 3×3 kernel.
#[inline(always)]
fn g_times<T: Element>(g: [T; 3]) -> [T; 4] {
    let half = T::from_f64(0.5);
    [
        g[0],
        (g[0] + g[1] + g[2]) * half,
        (g[0] - g[1] + g[2]) * half,
        g[2],
    ]
}

/// Gᵀ·u.
#[inline(always)]
fn g_transposed_times<T: Element>(u: [T; 4]) -> [T; 3] {
    let half = T::from_f64(0.5);
    [
        u[0] + (u[1] + u[2]) * half,
        (u[1] - u[2]) * half,
        (u[1] + u[2]) * half + u[3],
    ]
}

/// What the tile transforms compute on: single values (the weights) or blocks of lanes
/// (the tiles).
trait Value: Copy + std::ops::Add<Output = Self> + std::ops::Sub<Output = Self> {
    fn zero() -> Self;
}

impl<T: Element> Value for T {
    #[inline(always)]
    fn zero() -> Self {
        T::ZERO
    }
}

/// One value for each of [`BLOCK`] consecutive tiles; arithmetic is lane by lane, and the
/// fixed size lets the compiler keep a block in vector registers.
#[derive(Clone, Copy)]
struct Lanes<T>([T; BLOCK]);

impl<T: Element> Lanes<T> {
    /// The block at the start of `src`.
    #[inline(always)]
    fn load(src: &[T]) -> Self {
        let mut lanes = [T::ZERO; BLOCK];
        lanes.copy_from_slice(&src[..BLOCK]);
        Self(lanes)
    }

    /// The block at the start of `src`, with the lanes from `n` on zeroed (they lie past the
    /// last tile).
    #[inline(always)]
    fn load_first(src: &[T], n: usize) -> Self {
        let mut lanes = Self::load(src);
        for lane in &mut lanes.0[n..] {
            *lane = T::ZERO;
        }
        lanes
    }

    /// Writes the whole block at the start of `dst`. Lanes past the last tile land on the
    /// next sample's or channel's tiles, which are written after (the callers go through
    /// them in order), or on the slack after a matrix or plane.
    #[inline(always)]
    fn store(self, dst: &mut [T]) {
        dst[..BLOCK].copy_from_slice(&self.0);
    }

    /// Adds the block onto the start of `dst`.
    #[inline(always)]
    fn add_to(self, dst: &mut [T]) {
        for (d, v) in dst[..BLOCK].iter_mut().zip(self.0) {
            *d += v;
        }
    }
}

impl<T: Element> std::ops::Add for Lanes<T> {
    type Output = Self;
    #[inline(always)]
    fn add(self, other: Self) -> Self {
        Self(std::array::from_fn(|i| self.0[i] + other.0[i]))
    }
}

impl<T: Element> std::ops::Sub for Lanes<T> {
    type Output = Self;
    #[inline(always)]
    fn sub(self, other: Self) -> Self {
        Self(std::array::from_fn(|i| self.0[i] - other.0[i]))
    }
}

impl<T: Element> Value for Lanes<T> {
    #[inline(always)]
    fn zero() -> Self {
        Self([T::ZERO; BLOCK])
    }
}

/// Bᵀ·d.
#[inline(always)]
fn b_transposed_times<V: Value>(d: [V; 4]) -> [V; 4] {
    [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]
}

/// B·v.
#[inline(always)]
fn b_times<V: Value>(v: [V; 4]) -> [V; 4] {
    [
        v[0],
        v[1] - v[2] + v[3],
        v[1] + v[2] - v[0],
        V::zero() - v[3],
    ]
}

/// Aᵀ·m.
#[inline(always)]
fn a_transposed_times<V: Value>(m: [V; 4]) -> [V; 2] {
    [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]
}

/// A·y.
#[inline(always)]
fn a_times<V: Value>(y: [V; 2]) -> [V; 4] {
    [y[0], y[0] + y[1], y[0] - y[1], V::zero() - y[1]]
}

/// The offset of patch element (k, l) of a tile from the tile's index, in the four
/// interleaved planes of [`split_padded`]: plane (k mod 2, l mod 2), then ⌊k/2⌋ rows of W′
/// and ⌊l/2⌋ columns on.
fn patch_offsets(t: &Tiling) -> [usize; 16] {
    std::array::from_fn(|kl| {
        let (k, l) = (kl / 4, kl % 4);
        (2 * (k % 2) + l % 2) * t.plane_len() + (k / 2) * t.wp + l / 2
    })
}

/// U = G·w·Gᵀ for every (o, c), stored as U[ξ][o][c] (16 matrices O×C).
fn transform_weights<T: Element>(t: &Tiling, w: &[T]) -> Vec<T> {
    let (o_n, c_n) = (t.c_out, t.c_in);
    let mut u = vec![T::ZERO; 16 * o_n * c_n];
    for (oc, g) in w.chunks_exact(9).enumerate() {
        // Columns first: G·g, then the rows of that: (G·g)·Gᵀ.
        let cols: [[T; 4]; 3] = std::array::from_fn(|b| g_times([g[b], g[3 + b], g[6 + b]]));
        for i in 0..4 {
            let row = g_times([cols[0][i], cols[1][i], cols[2][i]]);
            for (j, &value) in row.iter().enumerate() {
                u[(4 * i + j) * o_n * c_n + oc] = value;
            }
        }
    }
    u
}

/// ∂L/∂w = Gᵀ·∂L/∂U·G for every (o, c), from ∂L/∂U stored as U is.
fn untransform_weight_grad<T: Element>(t: &Tiling, du: &[T]) -> Vec<T> {
    let oc_n = t.c_out * t.c_in;
    let mut dw = vec![T::ZERO; 9 * oc_n];
    for (oc, g) in dw.chunks_exact_mut(9).enumerate() {
        let at = |i: usize, j: usize| du[(4 * i + j) * oc_n + oc];
        // Rows first: each row of ∂L/∂U times G, then Gᵀ times the columns of that.
        let rows: [[T; 3]; 4] =
            std::array::from_fn(|i| g_transposed_times([at(i, 0), at(i, 1), at(i, 2), at(i, 3)]));
        for b in 0..3 {
            let col = g_transposed_times([rows[0][b], rows[1][b], rows[2][b], rows[3][b]]);
            for (a, &value) in col.iter().enumerate() {
                g[3 * a + b] = value;
            }
        }
    }
    dw
}

/// Splits a row into its even and odd elements, even[k] = row[2k] and odd[k] = row[2k + 1],
/// and zeroes the rest of `even` and `odd`.
#[inline(always)]
fn deinterleave<T: Element>(row: &[T], even: &mut [T], odd: &mut [T]) {
    let pairs = row.len() / 2;
    for ((e, o), pair) in even[..pairs]
        .iter_mut()
        .zip(&mut odd[..pairs])
        .zip(row.chunks_exact(2))
    {
        *e = pair[0];
        *o = pair[1];
    }
    let evens = row.len().div_ceil(2);
    if evens > pairs {
        even[pairs] = row[row.len() - 1];
    }
    even[evens..].fill(T::ZERO);
    odd[pairs..].fill(T::ZERO);
}

/// Interleaves row[2k] = even[k] + bias and row[2k + 1] = odd[k] + bias.
#[inline(always)]
fn interleave<T: Element>(even: &[T], odd: &[T], bias: T, row: &mut [T]) {
    let len = row.len();
    for (pair, (&e, &o)) in row.chunks_exact_mut(2).zip(even.iter().zip(odd)) {
        pair[0] = e + bias;
        pair[1] = o + bias;
    }
    if len % 2 == 1 {
        row[len - 1] = even[len / 2] + bias;
    }
}

vectorized_fn!(
    /// Splits one padded image plane into its four interleaved planes (even/odd row ×
    /// even/odd column of the padded image): plane (pr, pc) holds, at row i and column j of
    /// W′, x[2i + pr − 1, 2j + pc − 1], zero outside the image. (The slack after the rows
    /// is left as it is: it only feeds lanes past the last tile.)
    fn split_padded<T: Element>(t: &Tiling, x: &[T], planes: &mut [T]) => split_padded_generic {
        let (plane_len, wp) = (t.plane_len(), t.wp);
        let (top, bottom) = planes.split_at_mut(2 * plane_len);
        for (pr, pair) in [top, bottom].into_iter().enumerate() {
            let (p0, p1) = pair.split_at_mut(plane_len);
            for i in 0..=t.th {
                let (row0, row1) = (&mut p0[i * wp..(i + 1) * wp], &mut p1[i * wp..(i + 1) * wp]);
                match (2 * i + pr).checked_sub(1).filter(|&r| r < t.h) {
                    // Column pc = 1 holds x's even columns from j = 0, pc = 0 its odd ones
                    // from j = 1 (j = 0 is the left padding).
                    Some(r) => {
                        row0[0] = T::ZERO;
                        deinterleave(&x[r * t.w..(r + 1) * t.w], row1, &mut row0[1..]);
                    }
                    None => {
                        row0.fill(T::ZERO);
                        row1.fill(T::ZERO);
                    }
                }
            }
        }
    }
);

vectorized_fn!(
    /// Splits one output-gradient plane (H, W) into its four interleaved planes: plane (a, b)
    /// holds, at row i and column j of W′, g[2i + a, 2j + b], zero outside the image.
    fn split_output<T: Element>(t: &Tiling, g: &[T], planes: &mut [T]) => split_output_generic {
        let (plane_len, wp) = (t.plane_len(), t.wp);
        let (top, bottom) = planes.split_at_mut(2 * plane_len);
        for (a, pair) in [top, bottom].into_iter().enumerate() {
            let (p0, p1) = pair.split_at_mut(plane_len);
            for i in 0..t.th {
                let (row0, row1) = (&mut p0[i * wp..(i + 1) * wp], &mut p1[i * wp..(i + 1) * wp]);
                let r = 2 * i + a;
                if r < t.h {
                    deinterleave(&g[r * t.w..(r + 1) * t.w], row0, row1);
                } else {
                    row0.fill(T::ZERO);
                    row1.fill(T::ZERO);
                }
            }
        }
    }
);

vectorized_fn!(
    /// Interleaves the four output planes of one (sample, channel) into `y` (H, W), adding
    /// `bias`.
    fn interleave_output<T: Element>(t: &Tiling, planes: &[T], bias: T, y: &mut [T])
        => interleave_output_generic {
        let plane_len = t.plane_len();
        for (r, row) in y.chunks_exact_mut(t.w).enumerate() {
            let at = (2 * (r % 2)) * plane_len + (r / 2) * t.wp;
            interleave(&planes[at..at + t.wp], &planes[at + plane_len..], bias, row);
        }
    }
);

vectorized_fn!(
    /// The input gradient of one (sample, channel) from the four interleaved padded planes
    /// it was accumulated on: x[r, q] sits in plane ((r + 1) mod 2, (q + 1) mod 2) at row
    /// ⌊(r + 1)/2⌋, column ⌊(q + 1)/2⌋.
    fn extract_input_grad<T: Element>(t: &Tiling, planes: &[T], dx: &mut [T])
        => extract_input_grad_generic {
        let plane_len = t.plane_len();
        for (r, row) in dx.chunks_exact_mut(t.w).enumerate() {
            let at = (2 * ((r + 1) % 2)) * plane_len + r.div_ceil(2) * t.wp;
            // Even columns q = 2k from plane pc = 1 at j = k, odd ones from pc = 0 at k + 1.
            interleave(&planes[at + plane_len..], &planes[at + 1..], T::ZERO, row);
        }
    }
);

vectorized_fn!(
    /// V = Bᵀ·d·B for the `tiles` tiles of one channel of one sample, from its interleaved
    /// padded planes; V_ξ of tile τ goes to `out[ξ·stride + τ]`.
    fn input_transform<T: Element>(
        t: &Tiling,
        planes: &[T],
        out: &mut [T],
        stride: usize,
    ) => input_transform_generic {
        let offsets = patch_offsets(t);
        for base in (0..t.tiles()).step_by(BLOCK) {
            let d = |k: usize, l: usize| Lanes::load(&planes[offsets[4 * k + l] + base..]);
            let cols: [[Lanes<T>; 4]; 4] =
                std::array::from_fn(|l| b_transposed_times([d(0, l), d(1, l), d(2, l), d(3, l)]));
            for i in 0..4 {
                let row = b_transposed_times([cols[0][i], cols[1][i], cols[2][i], cols[3][i]]);
                for (j, v) in row.into_iter().enumerate() {
                    v.store(&mut out[(4 * i + j) * stride + base..]);
                }
            }
        }
    }
);

vectorized_fn!(
    /// ∂L/∂M = A·∂L/∂y·Aᵀ for the tiles of one channel of one sample, from the four
    /// interleaved planes of its output gradient; ξ of tile τ goes to `out[ξ·stride + τ]`.
    fn output_grad_transform<T: Element>(
        t: &Tiling,
        planes: &[T],
        out: &mut [T],
        stride: usize,
    ) => output_grad_transform_generic {
        let plane_len = t.plane_len();
        for base in (0..t.tiles()).step_by(BLOCK) {
            let g = |a: usize, b: usize| Lanes::load(&planes[(2 * a + b) * plane_len + base..]);
            let cols: [[Lanes<T>; 4]; 2] = std::array::from_fn(|b| a_times([g(0, b), g(1, b)]));
            for i in 0..4 {
                let row = a_times([cols[0][i], cols[1][i]]);
                for (j, m) in row.into_iter().enumerate() {
                    m.store(&mut out[(4 * i + j) * stride + base..]);
                }
            }
        }
    }
);

vectorized_fn!(
    /// y = Aᵀ·M·A for the tiles of one output channel of one sample, M_ξ of tile τ read at
    /// `m[ξ·stride + τ]`; the 2×2 outputs go to four interleaved planes (a, b), each
    /// [`Tiling::plane_len`] long, in `out`.
    fn output_transform<T: Element>(
        t: &Tiling,
        m: &[T],
        stride: usize,
        out: &mut [T],
    ) => output_transform_generic {
        let plane_len = t.plane_len();
        for base in (0..t.tiles()).step_by(BLOCK) {
            let x = |i: usize, j: usize| Lanes::load(&m[(4 * i + j) * stride + base..]);
            let cols: [[Lanes<T>; 2]; 4] =
                std::array::from_fn(|j| a_transposed_times([x(0, j), x(1, j), x(2, j), x(3, j)]));
            for a in 0..2 {
                let row = a_transposed_times([cols[0][a], cols[1][a], cols[2][a], cols[3][a]]);
                for (b, y) in row.into_iter().enumerate() {
                    y.store(&mut out[(2 * a + b) * plane_len + base..]);
                }
            }
        }
    }
);

vectorized_fn!(
    /// Adds ∂L/∂d = B·∂L/∂V·Bᵀ of the tiles of one input channel of one sample, ∂L/∂V_ξ of
    /// tile τ read at `dv[ξ·stride + τ]`, onto the four interleaved padded planes in `planes`
    /// (the layout of [`split_padded`]).
    fn input_grad_transform<T: Element>(
        t: &Tiling,
        dv: &[T],
        stride: usize,
        planes: &mut [T],
    ) => input_grad_transform_generic {
        let (offsets, tiles) = (patch_offsets(t), t.tiles());
        for base in (0..tiles).step_by(BLOCK) {
            // Lanes past the last tile are zeroed, and the planes have a block of slack, so
            // whole blocks are added.
            let n = BLOCK.min(tiles - base);
            let x = |i: usize, j: usize| Lanes::load_first(&dv[(4 * i + j) * stride + base..], n);
            let cols: [[Lanes<T>; 4]; 4] =
                std::array::from_fn(|j| b_times([x(0, j), x(1, j), x(2, j), x(3, j)]));
            for k in 0..4 {
                let row = b_times([cols[0][k], cols[1][k], cols[2][k], cols[3][k]]);
                for (l, d) in row.into_iter().enumerate() {
                    d.add_to(&mut planes[offsets[4 * k + l] + base..]);
                }
            }
        }
    }
);

/// The transformed patches V (16 matrices C × tiles of the chunk, [`matrix_stride`] apart)
/// of the samples in `x`. Channels outside, samples inside, so that each transform's
/// overhanging block lands on tiles written after it (see [`store`]).
fn transform_inputs<T: Element>(t: &Tiling, x: &[T], planes: &mut [T], v: &mut [T]) {
    let (sample, hw) = (t.c_in * t.in_plane(), t.in_plane());
    let tt = x.len() / sample * t.tiles();
    for c in 0..t.c_in {
        for (n, x_n) in x.chunks_exact(sample).enumerate() {
            split_padded(t, &x_n[c * hw..(c + 1) * hw], planes);
            let at = c * tt + n * t.tiles();
            input_transform(t, planes, &mut v[at..], matrix_stride(t.c_in, tt));
        }
    }
}

/// ∂L/∂M (16 matrices O × tiles of the chunk, [`matrix_stride`] apart) of the samples in the
/// output gradient `g`, in the order of [`transform_inputs`].
fn transform_output_grads<T: Element>(t: &Tiling, g: &[T], planes: &mut [T], dm: &mut [T]) {
    let (sample, hw) = (t.c_out * t.in_plane(), t.in_plane());
    let tt = g.len() / sample * t.tiles();
    for o in 0..t.c_out {
        for (n, g_n) in g.chunks_exact(sample).enumerate() {
            split_output(t, &g_n[o * hw..(o + 1) * hw], planes);
            let at = o * tt + n * t.tiles();
            output_grad_transform(t, planes, &mut dm[at..], matrix_stride(t.c_out, tt));
        }
    }
}

/// y = conv(x, w) + b, with b per output channel (O) or per sample and channel (B·O).
pub(super) fn forward<T: Element>(t: &Tiling, x: &[T], w: &[T], b: &[T]) -> Vec<T> {
    let u = transform_weights(t, w);
    let hw = t.in_plane();
    let per_channel = b.len() == t.c_out;
    let parallelism = t.parallelism();
    let mut y = vec![T::ZERO; t.batch * t.c_out * hw];
    let (c_n, o_n) = (t.c_in, t.c_out);
    for_each_chunk(
        t,
        &mut y,
        o_n * hw,
        x,
        c_n * hw,
        |Scratch {
             planes,
             inputs: v,
             outputs: m,
         },
         first,
         y_chunk,
         x_chunk| {
            let samples = x_chunk.len() / (c_n * hw);
            let tt = samples * t.tiles();
            let (ms_c, ms_o) = (matrix_stride(c_n, tt), matrix_stride(o_n, tt));
            transform_inputs(t, x_chunk, planes, v);
            for xi in 0..16 {
                matmul(
                    o_n,
                    tt,
                    c_n,
                    &mut m[xi * ms_o..xi * ms_o + o_n * tt],
                    false,
                    &u[xi * o_n * c_n..],
                    (c_n, 1),
                    &v[xi * ms_c..],
                    (tt, 1),
                    parallelism,
                );
            }
            for (n, y_n) in y_chunk.chunks_exact_mut(o_n * hw).enumerate() {
                for (o, y_o) in y_n.chunks_exact_mut(hw).enumerate() {
                    // The four output planes reuse the input planes' scratch.
                    let out = &mut planes[..];
                    output_transform(t, &m[o * tt + n * t.tiles()..], ms_o, out);
                    let bias = if per_channel {
                        b[o]
                    } else {
                        b[(first + n) * o_n + o]
                    };
                    interleave_output(t, out, bias, y_o);
                }
            }
        },
    );
    y
}

/// ∂L/∂x from the output gradient.
pub(super) fn grad_input<T: Element>(t: &Tiling, grad: &[T], w: &[T]) -> Vec<T> {
    let u = transform_weights(t, w);
    let hw = t.in_plane();
    let parallelism = t.parallelism();
    let mut dx = vec![T::ZERO; t.batch * t.c_in * hw];
    let (c_n, o_n) = (t.c_in, t.c_out);
    for_each_chunk(
        t,
        &mut dx,
        c_n * hw,
        grad,
        o_n * hw,
        |Scratch {
             planes,
             inputs: dv,
             outputs: dm,
         },
         _,
         dx_chunk,
         g_chunk| {
            let samples = g_chunk.len() / (o_n * hw);
            let tt = samples * t.tiles();
            let (ms_c, ms_o) = (matrix_stride(c_n, tt), matrix_stride(o_n, tt));
            transform_output_grads(t, g_chunk, planes, dm);
            for xi in 0..16 {
                // U_ξᵀ (C×O): element (c, o) = U_ξ[o·C + c].
                matmul(
                    c_n,
                    tt,
                    o_n,
                    &mut dv[xi * ms_c..xi * ms_c + c_n * tt],
                    false,
                    &u[xi * o_n * c_n..],
                    (1, c_n),
                    &dm[xi * ms_o..],
                    (tt, 1),
                    parallelism,
                );
            }
            for (n, dx_n) in dx_chunk.chunks_exact_mut(c_n * hw).enumerate() {
                for (c, dx_c) in dx_n.chunks_exact_mut(hw).enumerate() {
                    planes.fill(T::ZERO);
                    input_grad_transform(t, &dv[c * tt + n * t.tiles()..], ms_c, planes);
                    extract_input_grad(t, planes, dx_c);
                }
            }
        },
    );
    dx
}

/// ∂L/∂w (O, C, 3, 3) from the input and the output gradient.
pub(super) fn grad_weight<T: Element>(t: &Tiling, x: &[T], grad: &[T]) -> Vec<T> {
    let (s, hw) = (t.samples_per_chunk(), t.in_plane());
    let (c_n, o_n) = (t.c_in, t.c_out);
    let parallelism = t.parallelism();
    // ∂L/∂U of one chunk, added onto `du`.
    let chunk = |du: &mut [T], x_chunk: &[T], g_chunk: &[T]| {
        t.with_scratch(
            |Scratch {
                 planes,
                 inputs: v,
                 outputs: dm,
             }| {
                let samples = x_chunk.len() / (c_n * hw);
                let tt = samples * t.tiles();
                let (ms_c, ms_o) = (matrix_stride(c_n, tt), matrix_stride(o_n, tt));
                transform_inputs(t, x_chunk, planes, v);
                transform_output_grads(t, g_chunk, planes, dm);
                for xi in 0..16 {
                    // V_ξᵀ (tiles×C): element (τ, c) = V_ξ[c·tiles + τ].
                    matmul(
                        o_n,
                        c_n,
                        tt,
                        &mut du[xi * o_n * c_n..(xi + 1) * o_n * c_n],
                        true,
                        &dm[xi * ms_o..],
                        (tt, 1),
                        &v[xi * ms_c..],
                        (1, tt),
                        parallelism,
                    );
                }
            },
        )
    };
    let zeros = || vec![T::ZERO; 16 * o_n * c_n];
    let du = if let Parallelism::None = parallelism {
        x.par_chunks(s * c_n * hw)
            .zip(grad.par_chunks(s * o_n * hw))
            .fold(zeros, |mut du, (x_c, g_c)| {
                chunk(&mut du, x_c, g_c);
                du
            })
            .reduce(zeros, |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
                a
            })
    } else {
        let mut du = zeros();
        for (x_c, g_c) in x.chunks(s * c_n * hw).zip(grad.chunks(s * o_n * hw)) {
            chunk(&mut du, x_c, g_c);
        }
        du
    };
    untransform_weight_grad(t, &du)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 1-D transforms against the matrices in the module docs, and the identity
    /// F(2, 3) rests on: Aᵀ[(G·g) ⊙ (Bᵀ·d)] = the 2-output correlation of d with g.
    #[test]
    fn one_dimensional_transforms_compute_a_correlation() {
        let d = [0.3, -1.2, 2.5, 0.7];
        let g = [1.1, -0.4, 0.9];
        let product: [f64; 4] = std::array::from_fn(|i| g_times(g)[i] * b_transposed_times(d)[i]);
        let y = a_transposed_times(product);
        for (j, &yj) in y.iter().enumerate() {
            let direct: f64 = (0..3).map(|k| d[j + k] * g[k]).sum();
            assert!((yj - direct).abs() < 1e-12, "output {j}: {yj} vs {direct}");
        }
        // Each adjoint against ⟨M·a, b⟩ = ⟨a, Mᵀ·b⟩ on basis vectors.
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let e = |n: usize, i: usize| {
            (0..n)
                .map(|k| f64::from(u8::from(k == i)))
                .collect::<Vec<_>>()
        };
        for i in 0..4 {
            for j in 0..4 {
                let (ei, ej) = (e(4, i), e(4, j));
                let bt = b_transposed_times([ei[0], ei[1], ei[2], ei[3]]);
                let b = b_times([ej[0], ej[1], ej[2], ej[3]]);
                assert_eq!(dot(&bt, &ej), dot(&ei, &b));
            }
            for j in 0..3 {
                let g = g_times([e(3, j)[0], e(3, j)[1], e(3, j)[2]]);
                let gt = g_transposed_times([e(4, i)[0], e(4, i)[1], e(4, i)[2], e(4, i)[3]]);
                assert_eq!(g[i], gt[j]);
            }
            for j in 0..2 {
                let at = a_transposed_times([e(4, i)[0], e(4, i)[1], e(4, i)[2], e(4, i)[3]]);
                let a = a_times([e(2, j)[0], e(2, j)[1]]);
                assert_eq!(at[j], a[i]);
            }
        }
    }
}
