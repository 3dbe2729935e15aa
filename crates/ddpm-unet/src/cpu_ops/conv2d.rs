//! 2-D convolution (cross-correlation, as in PyTorch and candle) as unfolding + gemm, with
//! the weight and bias gradients as gemms accumulated per thread. Work is split over the
//! batch; each sample's gemms run on one thread.
//!
//! For an input x (B, C, H, W), weight w (O, C, KH, KW), bias b (O), stride s, padding p:
//! y[n, o, i, j] = b\[o\] + Σ_{c,u,v} w[o, c, u, v]·x[n, c, s·i + u − p, s·j + v − p], with x
//! zero outside the image; OH = (H + 2p − KH)/s + 1, and likewise OW.
//! With cols_n (C·KH·KW, OH·OW) the unfolded patches of sample n (im2col):
//! y_n = W·cols_n + b, ∂L/∂cols_n = Wᵀ·g_n (folded back by col2im),
//! ∂L/∂W = Σ_n g_n·cols_nᵀ, ∂L/∂b = Σ_{n,i,j} g_n.
//!
//! Two shortcuts for stride 1 with OW = W (3×3 with padding 1, the U-Net's convolutions):
//! - only the KW horizontal taps are unfolded, into rows with p zero rows above and below
//!   ([`unfold_row_taps`]); each vertical tap u is those rows shifted by u image rows, so
//!   y_n = b + Σ_u W_u·rows_n(shifted by u) and ∂L/∂W_u = Σ_n g_n·rows_n(shifted by u)ᵀ,
//!   KH gemms over an unfolding KH times smaller than cols;
//! - with a square kernel and O ≤ C, ∂L/∂x is itself a stride-1 convolution of the output
//!   gradient with the flipped, transposed kernel (see `Geometry::transposed`), with no
//!   col2im.
//!
//! And 3×3 forwards (so also those input gradients) on images from 7×7 to 128×128 run as
//! Winograd's F(4×4, 3×3) instead ([`winograd`], `Geometry::winograd`).

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::element::{self, contiguous, dispatch, with_scratch, Element};
use super::simd::vectorized_fn;
use super::winograd::{self, Shape3x3};

/// The shapes of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    batch: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    padding: usize,
    oh: usize,
    ow: usize,
}

impl Geometry {
    fn new(x: &Shape, weight: &Shape, stride: usize, padding: usize) -> Result<Self> {
        let (batch, c_in, h, w) = x.dims4()?;
        let (c_out, c_w, kh, kw) = weight.dims4()?;
        if c_w != c_in {
            candle_core::bail!("conv2d: input has {c_in} channels, weight expects {c_w}");
        }
        if stride == 0 || h + 2 * padding < kh || w + 2 * padding < kw {
            candle_core::bail!(
                "conv2d: kernel {kh}×{kw} with stride {stride}, padding {padding} does not fit {h}×{w}"
            );
        }
        Ok(Self {
            batch,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            stride,
            padding,
            oh: (h + 2 * padding - kh) / stride + 1,
            ow: (w + 2 * padding - kw) / stride + 1,
        })
    }

    /// Rows of cols: C·KH·KW.
    fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }
    fn in_size(&self) -> usize {
        self.c_in * self.h * self.w
    }
    fn out_pixels(&self) -> usize {
        self.oh * self.ow
    }
    /// Stride 1 and an output as wide as the input (KW = 2p + 1, e.g. 3×3 with padding 1):
    /// each tap's patches are the input shifted by a constant offset (see [`TapShift`]).
    fn is_row_shift(&self) -> bool {
        self.stride == 1 && self.ow == self.w
    }
    /// Elements of one row of [`unfold_row_taps`]: the plane with p zero rows above and
    /// below, (H + 2p)·W.
    fn padded_plane(&self) -> usize {
        (self.h + 2 * self.padding) * self.w
    }
    /// Whether the convolution unfolds only its horizontal taps ([`unfold_row_taps`]).
    fn by_row_taps(&self) -> bool {
        self.is_row_shift() && !self.is_pointwise()
    }
    /// Whether the [row-tap](Self::by_row_taps) forward computes its output transposed, pixel
    /// by channel ([`forward`]): for at most 196 pixels (14×14) and 64 to 128 output channels,
    /// a multiple of 16. gemm's 64-row microkernel then runs down the channels, which fill
    /// it, instead of down the pixels (49 of 64 rows at 7×7, and a prepacked copy of the
    /// unfolding for every tap whenever the pixel count is not a multiple of 16), and, with
    /// products of at most 48 pixels and at most 128 channels, packs nothing (gemm packs the
    /// unfolding once more than 128 rows reuse it). Measured call by call against the
    /// untransposed product: 12–16% less time at 7×7 and 14×14 in training, 15–26% in
    /// sampling; 13% more at 28×28 with 32 or 64 channels. 1×1 convolutions, tried the same
    /// way, were slower (q, k, v's 192 and 288 channels re-pack x for every product).
    fn channels_as_rows(&self) -> bool {
        self.by_row_taps()
            && self.out_pixels() <= 196
            && (64..=128).contains(&self.c_out)
            && self.c_out.is_multiple_of(16)
    }
    /// Whether the forward (and through [`transposed`](Self::transposed), the input
    /// gradient) runs as Winograd's F(4×4, 3×3) ([`winograd`]), with 4 times fewer
    /// multiplications: a 3×3 kernel with stride 1 and padding 1, an image of 7×7 to
    /// 128×128 pixels, at least 16 input and output channels, and at least one sample per
    /// thread (its work is split over the samples). Measured call by call at batch 64
    /// against F(2×2, 3×3), which it replaced: 30–40% less time at 28×28, 15–30% at 14×14;
    /// and against the unfolding at 7×7, 15–50% less. Smaller images waste too much of the
    /// 4×4 tiles (32 channels at 4×4: 65% more time than the unfolding). Its blocks hold
    /// whole samples, so a block's transforms grow with the image: at 128×128 and 128
    /// channels, 40 MB a thread. Larger images take the unfolding. The weight gradient
    /// runs by the same algorithm's adjoint ([`winograd::grad_weight`]) under the same
    /// conditions: 40–50% less time than the unfolding at 28×28, 10–30% at 14×14, and at
    /// 7×7 about even at first, a quarter less since its partial sums are added without
    /// zeroed identities.
    fn winograd(&self) -> Option<Shape3x3> {
        let fits = self.kh == 3
            && self.kw == 3
            && self.stride == 1
            && self.padding == 1
            && self.h * self.w >= 7 * 7
            && self.h * self.w <= 128 * 128
            && self.c_in >= 16
            && self.c_out >= 16
            && self.batch >= super::threads();
        fits.then_some(Shape3x3 {
            batch: self.batch,
            c_in: self.c_in,
            c_out: self.c_out,
            h: self.h,
            w: self.w,
        })
    }
    /// A 1×1 convolution with stride 1 and no padding needs no unfolding: cols = x.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0
    }
    /// For stride 1, a square kernel, a padding below the kernel size and no more output
    /// than input channels: the convolution whose output is ∂L/∂x,
    /// ∂L/∂x[n, c, i, j] = Σ_{o,u,v} g[n, o, i + u − p′, j + v − p′]·w′[c, o, u, v], with w′
    /// the flipped, transposed kernel ([`flip_transpose`]), p′ = K − 1 − p, and the output
    /// gradient g zero outside the image. It unfolds the gradient's O·KH·KW rows instead of
    /// forming and folding back (col2im) the input's C·KH·KW, and its gemm sums over O·KH·KW
    /// terms instead of O. With more output than input channels (the first convolution,
    /// and the first of each level that widens: 32→64, 64→96 in the fashion-mnist model)
    /// the unfolded gradient would be the larger, and col2im is cheaper (measured for 1→32:
    /// 2.2 against 6.7 ms; about even for the other two). A [Winograd](Self::winograd)
    /// convolution unfolds nothing, and takes the transposed convolution whatever O and C.
    fn transposed(&self) -> Option<Geometry> {
        let square = self.kh == self.kw;
        if self.stride != 1
            || !square
            || self.padding >= self.kh
            || self.is_pointwise()
            || (self.c_out > self.c_in && self.winograd().is_none())
        {
            return None;
        }
        let padding = self.kh - 1 - self.padding;
        Some(Geometry {
            batch: self.batch,
            c_in: self.c_out,
            h: self.oh,
            w: self.ow,
            c_out: self.c_in,
            kh: self.kh,
            kw: self.kw,
            stride: 1,
            padding,
            oh: self.h,
            ow: self.w,
        })
    }

    /// The shape for [`super::profile`], e.g. `64→64 3×3 @14×14 s1, batch 64`.
    fn label(&self) -> String {
        format!(
            "{}→{} {}×{} @{}×{} s{}, batch {}",
            self.c_in, self.c_out, self.kh, self.kw, self.h, self.w, self.stride, self.batch
        )
    }

    /// Split the batch over threads (one gemm per sample) when there are enough samples;
    /// otherwise let each gemm use the threads.
    fn gemm_parallelism(&self) -> Parallelism {
        let threads = super::threads();
        if self.batch >= threads || threads == 1 {
            Parallelism::None
        } else {
            Parallelism::Rayon(threads)
        }
    }
}

/// The range of output columns j whose input column s·j + v − p lies inside 0..w.
fn valid_range(g: &Geometry, v: usize, size: usize, out: usize) -> (usize, usize) {
    let (s, p) = (g.stride as isize, g.padding as isize);
    let offset = v as isize - p;
    // s·j + offset ≥ 0  ⇔  j ≥ ceil(−offset/s);  s·j + offset ≤ size − 1.
    let lo = if offset >= 0 {
        0
    } else {
        ((-offset) + s - 1) / s
    };
    let hi = if size as isize - 1 - offset < 0 {
        0
    } else {
        (size as isize - 1 - offset) / s + 1
    };
    let lo = (lo as usize).min(out);
    (lo, (hi as usize).clamp(lo, out))
}

/// Unfolds one sample x (C, H, W) into cols (C·KH·KW, OH·OW), row by row of the output.
/// (Row-shift geometries unfold only their horizontal taps: [`unfold_row_taps`].)
fn im2col<T: Element>(g: &Geometry, x: &[T], cols: &mut [T]) {
    let ohw = g.out_pixels();
    #[cfg(target_arch = "x86_64")]
    if (g.stride, g.kw, g.padding) == (2, 3, 1) && super::avx512::available() {
        if let (Some(x), Some(cols)) = (T::as_f32(x), T::as_f32_mut(cols)) {
            assert!(x.len() >= g.c_in * g.h * g.w && cols.len() >= g.c_in * g.kh * 3 * ohw);
            for c in 0..g.c_in {
                let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
                for u in 0..g.kh {
                    for i in 0..g.oh {
                        // Input row 2i + u − 1, or none (zero padding).
                        let row = (2 * i + u)
                            .checked_sub(1)
                            .filter(|&iy| iy < g.h)
                            .map(|iy| &plane[iy * g.w..(iy + 1) * g.w]);
                        let at = (c * g.kh + u) * 3 * ohw + i * g.ow;
                        // SAFETY: AVX-512F is available; the three rows (c, u, v) of cols
                        // hold output row i's `ow` columns at `at + v·ohw` (asserted above).
                        unsafe { stride_two_taps(row, g.ow, cols[at..].as_mut_ptr(), ohw) };
                    }
                }
            }
            return;
        }
    }
    for c in 0..g.c_in {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for u in 0..g.kh {
            let (y_lo, y_hi) = valid_range(g, u, g.h, g.oh);
            for v in 0..g.kw {
                let (x_lo, x_hi) = valid_range(g, v, g.w, g.ow);
                let row = ((c * g.kh + u) * g.kw + v) * ohw;
                let row = &mut cols[row..row + ohw];
                row[..y_lo * g.ow].fill(T::ZERO);
                row[y_hi * g.ow..].fill(T::ZERO);
                for i in y_lo..y_hi {
                    let iy = i * g.stride + u - g.padding;
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    let dst = &mut row[i * g.ow..(i + 1) * g.ow];
                    dst[..x_lo].fill(T::ZERO);
                    dst[x_hi..].fill(T::ZERO);
                    if g.stride == 1 {
                        let start = x_lo + v - g.padding;
                        dst[x_lo..x_hi].copy_from_slice(&src[start..start + (x_hi - x_lo)]);
                    } else {
                        for j in x_lo..x_hi {
                            dst[j] = src[j * g.stride + v - g.padding];
                        }
                    }
                }
            }
        }
    }
}

/// The three taps v of a stride-2, padding-1 row of [`im2col`]: `out + v·tap_stride` gets
/// `row[2j + v − 1]` for the `ow` output columns j (zero outside the row, or everywhere
/// when `row` is None, zero padding). By chunks of 15 columns: the 31 input columns
/// 2j₀ − 1 … 2j₀ + 29 in two masked loads, and one permute per tap.
///
/// # Safety
/// AVX-512F; the three rows of `ow` elements at `out + v·tap_stride` lie in out's
/// allocation.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn stride_two_taps(row: Option<&[f32]>, ow: usize, out: *mut f32, tap_stride: usize) {
    use std::arch::x86_64::*;
    // Lane j of tap v: element 2j + v of the window.
    let index = [
        _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0),
        _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1),
        _mm512_set_epi32(32, 30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2),
    ];
    for first in (0..ow).step_by(15) {
        let n = (ow - first).min(15);
        let start = 2 * first as isize - 1;
        let (low, high) = match row {
            // SAFETY: AVX-512F is available (the caller's guarantee).
            Some(row) => unsafe { (window(row, start), window(row, start + 16)) },
            None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
        };
        let store = super::avx512::tail_mask(n);
        for (v, index) in index.iter().enumerate() {
            let taps = _mm512_permutex2var_ps(low, *index, high);
            // SAFETY: the caller's guarantee.
            unsafe { _mm512_mask_storeu_ps(out.add(v * tap_stride + first), store, taps) };
        }
    }
}

/// The 16 columns `from` … `from` + 15 of `row`, zero outside it.
///
/// # Safety
/// AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn window(row: &[f32], from: isize) -> std::arch::x86_64::__m512 {
    let lanes = (row.len() as isize - from).clamp(0, 16) as u32;
    let skip = (-from).clamp(0, 16) as u32;
    let mask = (((1u64 << lanes) - 1) & !((1u64 << skip) - 1)) as u16;
    // SAFETY: the lanes on are columns inside the row; the address of lane 0 may lie outside
    // it, but is not read then.
    unsafe { std::arch::x86_64::_mm512_maskz_loadu_ps(mask, row.as_ptr().wrapping_offset(from)) }
}

vectorized_fn!(
    /// Folds cols (C·KH·KW, OH·OW) back onto one sample dx (C, H, W), adding overlaps onto
    /// dx, which the caller provides zeroed. cols is scratch: its padding entries are zeroed.
    fn col2im<T: Element>(g: &Geometry, cols: &mut [T], dx: &mut [T]) => col2im_generic {
        if g.is_row_shift() {
            col2im_row_shift(g, cols, dx)
        } else {
            col2im_general(g, cols, dx)
        }
    }
);

/// For one tap (u, v) of a [row-shift](Geometry::is_row_shift) geometry: the rows of the
/// output that see the image (`y_lo..y_hi`), the valid columns (`x_lo..x_hi`), and the
/// offset of the input element under output element L = i·W + j: input index L + shift,
/// shift = (u − p)·W + (v − p).
struct TapShift {
    y_lo: usize,
    y_hi: usize,
    x_lo: usize,
    x_hi: usize,
    shift: isize,
}

impl TapShift {
    fn new(g: &Geometry, u: usize, v: usize) -> Self {
        let (y_lo, y_hi) = valid_range(g, u, g.h, g.oh);
        let (x_lo, x_hi) = valid_range(g, v, g.w, g.ow);
        let p = g.padding as isize;
        Self {
            y_lo,
            y_hi,
            x_lo,
            x_hi,
            shift: (u as isize - p) * g.w as isize + (v as isize - p),
        }
    }

    /// The output elements L from the first valid one of row y_lo to the last valid one of
    /// row y_hi − 1: one contiguous run, whose input elements L + shift are contiguous too.
    fn run(&self, w: usize) -> std::ops::Range<usize> {
        let start = self.y_lo * w + self.x_lo;
        let end = (self.y_hi * w).saturating_sub(w - self.x_hi);
        start..end.max(start)
    }

    /// Inside the run, the columns whose input element wrapped around from the neighbouring
    /// image row (j < x_lo or j ≥ x_hi): they belong to the zero padding.
    fn wrapped(&self, w: usize) -> impl Iterator<Item = usize> + '_ {
        (self.y_lo..self.y_hi)
            .flat_map(move |i| (0..self.x_lo).chain(self.x_hi..w).map(move |j| i * w + j))
    }
}

/// Unfolds the horizontal taps of one sample x (C, H, W) of a
/// [row-shift](Geometry::is_row_shift) geometry into `rows` (C·KW rows of (H + 2p)·W):
/// row (c, v) holds x[c, i − p, j + v − p] at (i, j), zero outside the image. The input under
/// output pixel L = i·W + j for the tap (u, v) is then element L + u·W of row (c, v): each
/// vertical tap is the same matrix shifted by whole rows, which never wrap around, so the
/// convolution is KH gemms over C·KW rows instead of one over an unfolding KH times larger.
/// Each row is one contiguous copy of the plane, shifted by v − p, with the columns that
/// wrapped around from the neighbouring image row zeroed.
fn unfold_row_taps<T: Element>(g: &Geometry, x: &[T], rows: &mut [T]) {
    let (w, hw) = (g.w, g.h * g.w);
    let pad = g.padding * w;
    for (c, plane) in x.chunks_exact(hw).enumerate() {
        for v in 0..g.kw {
            let row = &mut rows[(c * g.kw + v) * g.padded_plane()..][..g.padded_plane()];
            let (top, rest) = row.split_at_mut(pad);
            let (image, bottom) = rest.split_at_mut(hw);
            top.fill(T::ZERO);
            bottom.fill(T::ZERO);
            // image[L] = plane[L + s], s = v − p.
            let s = v as isize - g.padding as isize;
            let k = s.unsigned_abs().min(hw);
            if s >= 0 {
                image[..hw - k].copy_from_slice(&plane[k..]);
                image[hw - k..].fill(T::ZERO);
                // Columns j ≥ W − s read past the end of their row.
                zero_columns(image, w, w - k.min(w)..w);
            } else {
                image[k..].copy_from_slice(&plane[..hw - k]);
                image[..k].fill(T::ZERO);
                // Columns j < −s read before the start of their row.
                zero_columns(image, w, 0..k.min(w));
            }
        }
    }
}

/// Zeroes the given columns of an image of rows `w` wide, a column at a time: one or two
/// elements per row, where a per-row `fill` would cost a `memset` call each.
fn zero_columns<T: Element>(image: &mut [T], w: usize, columns: std::ops::Range<usize>) {
    for j in columns {
        for value in image[j..].iter_mut().step_by(w) {
            *value = T::ZERO;
        }
    }
}

/// The kernel regrouped by vertical tap for [`unfold_row_taps`]: KH matrices O × (C·KW),
/// element (u, o, c·KW + v) = w[o, c, u, v].
fn weights_by_row<T: Element>(g: &Geometry, w: &[T]) -> Vec<T> {
    let row_taps = g.c_in * g.kw;
    let mut out = vec![T::ZERO; w.len()];
    for_each_kernel_index(g, |i, o, c, u, v| {
        out[(u * g.c_out + o) * row_taps + c * g.kw + v] = w[i];
    });
    out
}

/// The kernel regrouped by vertical tap and transposed, for
/// [`channels_as_rows`](Geometry::channels_as_rows): KH matrices (C·KW) × O, element
/// (u, c·KW + v, o) = w[o, c, u, v] (the layout of the transposed weight gradient).
fn weights_by_row_transposed<T: Element>(g: &Geometry, w: &[T]) -> Vec<T> {
    let mut out = vec![T::ZERO; w.len()];
    for_each_kernel_index(g, |i, o, c, u, v| {
        out[((u * g.c_in + c) * g.kw + v) * g.c_out + o] = w[i];
    });
    out
}

/// ∂L/∂w (O, C, KH, KW) from the transposed gradient that [`grad_weight_bias`] accumulates:
/// for [row taps](Geometry::by_row_taps) element (u, c·KW + v, o), otherwise (c·KH·KW +
/// u·KW + v, o).
fn weight_grad_from_transposed<T: Element>(g: &Geometry, dwt: &[T]) -> Vec<T> {
    let mut dw = vec![T::ZERO; dwt.len()];
    for_each_kernel_index(g, |i, o, c, u, v| {
        let row = if g.by_row_taps() {
            (u * g.c_in + c) * g.kw + v
        } else {
            (c * g.kh + u) * g.kw + v
        };
        dw[i] = dwt[row * g.c_out + o];
    });
    dw
}

/// Calls `f(i, o, c, u, v)` for every element of a kernel (O, C, KH, KW), i being its index
/// ((o·C + c)·KH + u)·KW + v.
fn for_each_kernel_index(g: &Geometry, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
    let mut i = 0;
    for o in 0..g.c_out {
        for c in 0..g.c_in {
            for u in 0..g.kh {
                for v in 0..g.kw {
                    f(i, o, c, u, v);
                    i += 1;
                }
            }
        }
    }
}

/// [`col2im`] for stride 1 with OW = W: the wrapped-around columns of each tap's row of cols
/// are zeroed, then the whole run is added onto dx in one loop.
#[inline(always)]
fn col2im_row_shift<T: Element>(g: &Geometry, cols: &mut [T], dx: &mut [T]) {
    let (ohw, w) = (g.out_pixels(), g.w);
    for c in 0..g.c_in {
        let plane = &mut dx[c * g.h * w..(c + 1) * g.h * w];
        for u in 0..g.kh {
            for v in 0..g.kw {
                let tap = TapShift::new(g, u, v);
                let row = ((c * g.kh + u) * g.kw + v) * ohw;
                let row = &mut cols[row..row + ohw];
                for l in tap.wrapped(w) {
                    row[l] = T::ZERO;
                }
                let run = tap.run(w);
                if !run.is_empty() {
                    let dst = (run.start as isize + tap.shift) as usize;
                    for (d, s) in plane[dst..dst + run.len()].iter_mut().zip(&row[run]) {
                        *d += *s;
                    }
                }
            }
        }
    }
}

/// [`col2im`] for any geometry: row by row of the output.
#[inline(always)]
fn col2im_general<T: Element>(g: &Geometry, cols: &[T], dx: &mut [T]) {
    let ohw = g.out_pixels();
    for c in 0..g.c_in {
        let plane = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        for u in 0..g.kh {
            let (y_lo, y_hi) = valid_range(g, u, g.h, g.oh);
            for v in 0..g.kw {
                let (x_lo, x_hi) = valid_range(g, v, g.w, g.ow);
                let row = ((c * g.kh + u) * g.kw + v) * ohw;
                let row = &cols[row..row + ohw];
                for i in y_lo..y_hi {
                    let iy = i * g.stride + u - g.padding;
                    let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                    let src = &row[i * g.ow..(i + 1) * g.ow];
                    if g.stride == 1 {
                        let start = x_lo + v - g.padding;
                        for (d, s) in dst[start..start + (x_hi - x_lo)]
                            .iter_mut()
                            .zip(&src[x_lo..x_hi])
                        {
                            *d += *s;
                        }
                    } else {
                        for j in x_lo..x_hi {
                            dst[j * g.stride + v - g.padding] += src[j];
                        }
                    }
                }
            }
        }
    }
}

/// dst (m×n) = [dst +] lhs (m×k) · rhs (k×n), with explicit row and column strides.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul<T: Element>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    accumulate: bool,
    lhs: &[T],
    lhs_strides: (usize, usize),
    rhs: &[T],
    rhs_strides: (usize, usize),
    parallelism: Parallelism,
) {
    matmul_strided(
        m,
        n,
        k,
        (dst, n),
        accumulate,
        lhs,
        lhs_strides,
        rhs,
        rhs_strides,
        parallelism,
    )
}

/// [`matmul`] into a destination whose rows are `dst_rs` (≥ n) elements apart.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_strided<T: Element>(
    m: usize,
    n: usize,
    k: usize,
    (dst, dst_rs): (&mut [T], usize),
    accumulate: bool,
    lhs: &[T],
    lhs_strides: (usize, usize),
    rhs: &[T],
    rhs_strides: (usize, usize),
    parallelism: Parallelism,
) {
    assert!(dst_rs >= n);
    assert!(m == 0 || n == 0 || dst.len() >= (m - 1) * dst_rs + n);
    // SAFETY: dst holds every element the strides address (checked above), is initialised,
    // and does not alias lhs/rhs (a unique borrow).
    unsafe {
        gemm_into(
            (m, n, k),
            (dst.as_mut_ptr(), dst_rs),
            accumulate,
            (lhs, lhs_strides),
            (rhs, rhs_strides),
            parallelism,
        )
    }
}

/// [`matmul`] without accumulating, into uninitialised memory: every one of the m × n
/// elements of dst is written (gemm does not read dst when it does not accumulate).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_uninit<T: Element>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [MaybeUninit<T>],
    lhs: &[T],
    lhs_strides: (usize, usize),
    rhs: &[T],
    rhs_strides: (usize, usize),
    parallelism: Parallelism,
) {
    assert!(dst.len() >= m * n);
    // SAFETY: dst holds m × n elements (checked above) and does not alias lhs/rhs (a unique
    // borrow); without accumulating, gemm never reads them.
    unsafe {
        gemm_into(
            (m, n, k),
            (dst.as_mut_ptr().cast::<T>(), n),
            false,
            (lhs, lhs_strides),
            (rhs, rhs_strides),
            parallelism,
        )
    }
}

/// dst (m × n, rows `dst_rs` apart) = lhs·rhs, or += when `accumulate`, by gemm; the
/// operands' (row, column) strides given.
///
/// # Safety
/// dst addresses (m − 1)·dst_rs + n writable elements that alias neither operand; they
/// must be initialised when `accumulate` (otherwise gemm only writes them).
unsafe fn gemm_into<T: Element>(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut T, usize),
    accumulate: bool,
    (lhs, (lhs_rs, lhs_cs)): (&[T], (usize, usize)),
    (rhs, (rhs_rs, rhs_cs)): (&[T], (usize, usize)),
    parallelism: Parallelism,
) {
    debug_assert!(m == 0 || k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    debug_assert!(k == 0 || n == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: dst by the caller's guarantee; the operands cover every element their strides
    // address (in debug builds checked above, and by construction of the callers' shapes).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { T::ONE } else { T::ZERO },
            T::ONE,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// The most pixels per product in the [transposed forward](Geometry::channels_as_rows):
/// gemm packs its first operand when the product has more than 48 columns (here, pixels).
const UNPACKED_PIXELS: usize = 48;

/// y = conv(x, w) + b (+ r), with b either per channel (O) or per sample and channel (B·O),
/// and the residual r, when given, of y's shape.
fn forward<T: Element>(g: &Geometry, x: &[T], w: &[T], b: &[T], residual: Option<&[T]>) -> Vec<T> {
    if let Some(shape) = g.winograd() {
        return winograd::forward(&shape, x, w, b, residual);
    }
    let (k, ohw, per) = (g.k(), g.out_pixels(), g.c_out * g.out_pixels());
    let per_channel = b.len() == g.c_out;
    let parallelism = g.gemm_parallelism();
    let transposed = g.channels_as_rows();
    let by_row = (g.by_row_taps() && !transposed).then(|| weights_by_row(g, w));
    let by_row_t = transposed.then(|| weights_by_row_transposed(g, w));
    assert!(residual.is_none_or(|r| r.len() == g.batch * per));
    let sample = |n: usize, y_n: &mut [MaybeUninit<T>], x_n: &[T]| {
        let bias = |o: usize| {
            if per_channel {
                b[o]
            } else {
                b[n * g.c_out + o]
            }
        };
        let r_n = residual.map(|r| &r[n * per..][..per]);
        if let Some(by_row_t) = &by_row_t {
            // y_nᵀ (pixels × O) = Σ_u (rows shifted by u image rows)ᵀ · W_uᵀ, in products of
            // at most 48 pixels (see `channels_as_rows`), then transposed back with the bias.
            let (row_taps, plane) = (g.c_in * g.kw, g.padded_plane());
            with_scratch(row_taps * plane + ohw * g.c_out, |scratch| {
                let (rows, y_t) = scratch.split_at_mut(row_taps * plane);
                unfold_row_taps(g, x_n, rows);
                for (u, w_t) in by_row_t.chunks_exact(row_taps * g.c_out).enumerate() {
                    for first in (0..ohw).step_by(UNPACKED_PIXELS) {
                        matmul(
                            UNPACKED_PIXELS.min(ohw - first),
                            g.c_out,
                            row_taps,
                            &mut y_t[first * g.c_out..],
                            u > 0,
                            &rows[u * g.w + first..],
                            (1, plane),
                            w_t,
                            (g.c_out, 1),
                            parallelism,
                        );
                    }
                }
                for (o, row) in y_n.chunks_mut(ohw).enumerate() {
                    let b_o = bias(o);
                    for (j, (slot, &v)) in row
                        .iter_mut()
                        .zip(y_t[o..].iter().step_by(g.c_out))
                        .enumerate()
                    {
                        slot.write(v + b_o + r_n.map_or(T::ZERO, |r| r[o * ohw + j]));
                    }
                }
            });
            return;
        }
        // 1×1 on AVX-512 CPUs in f32: the unpacked kernel, one sample per thread (with fewer
        // samples than threads, gemm splits each product over the threads instead).
        #[cfg(target_arch = "x86_64")]
        if g.is_pointwise() && unpacked_applies(parallelism) {
            let b_n = if per_channel {
                b
            } else {
                &b[n * g.c_out..][..g.c_out]
            };
            let r32 = match r_n {
                None => Some(None),
                Some(r) => T::as_f32(r).map(Some),
            };
            if let (Some(y32), Some(w32), Some(x32), Some(b32), Some(r32)) = (
                T::as_f32_uninit(y_n),
                T::as_f32(w),
                T::as_f32(x_n),
                T::as_f32(b_n),
                r32,
            ) {
                use super::unpacked_gemm::{product, Start};
                let start = match r32 {
                    None => Start::Rows(b32),
                    Some(r) => Start::RowsPlus(b32, r),
                };
                // SAFETY: AVX-512F is available; y_n holds O rows of OHW, w O rows of C,
                // x_n C rows of OHW (k = C), and the residual y_n's layout.
                unsafe {
                    product(
                        (g.c_out, k, ohw),
                        (w32, k),
                        (x32, ohw),
                        (y32.as_mut_ptr().cast::<f32>(), ohw),
                        start,
                    )
                };
                return;
            }
        }
        // Each sample's output starts as the bias (and the residual; gemm adds onto it),
        // written just before its gemms, while it is in cache, and never zero-filled.
        let y_n = element::fill_rows(y_n, ohw, bias, r_n);
        if let Some(by_row) = &by_row {
            // y_n += Σ_u W_u · rows shifted by u image rows.
            let (row_taps, plane) = (g.c_in * g.kw, g.padded_plane());
            with_scratch(row_taps * plane, |rows| {
                unfold_row_taps(g, x_n, rows);
                for (u, w_u) in by_row.chunks_exact(g.c_out * row_taps).enumerate() {
                    matmul(
                        g.c_out,
                        ohw,
                        row_taps,
                        y_n,
                        true,
                        w_u,
                        (row_taps, 1),
                        &rows[u * g.w..],
                        (plane, 1),
                        parallelism,
                    );
                }
            });
            return;
        }
        let mut product = |rhs: &[T]| {
            matmul(
                g.c_out,
                ohw,
                k,
                y_n,
                true,
                w,
                (k, 1),
                rhs,
                (ohw, 1),
                parallelism,
            )
        };
        if g.is_pointwise() {
            product(x_n)
        } else {
            with_scratch(k * ohw, |cols| {
                im2col(g, x_n, cols);
                product(cols)
            })
        }
    };
    let len = g.batch * per;
    let mut y = Vec::with_capacity(len);
    for_each_sample(
        parallelism,
        &mut y.spare_capacity_mut()[..len],
        per,
        x,
        g.in_size(),
        sample,
    );
    // SAFETY: `sample` wrote every element of each sample's `per` outputs (`fill_rows`, or
    // the transposed path's loop over all O rows of `ohw`), and the batch's samples cover
    // the first `len`.
    unsafe { y.set_len(len) };
    y
}

/// Runs `sample(n, out_n, in_n)` on each sample's output and input (`out_per` and `in_per`
/// elements): in parallel over the batch when each gemm runs on one thread, in order when
/// the gemms use the threads.
fn for_each_sample<T: Element, U: Send>(
    parallelism: Parallelism,
    out: &mut [U],
    out_per: usize,
    input: &[T],
    in_per: usize,
    sample: impl Fn(usize, &mut [U], &[T]) + Sync + Send,
) {
    if let Parallelism::None = parallelism {
        out.par_chunks_mut(out_per)
            .zip(input.par_chunks(in_per))
            .enumerate()
            .for_each(|(n, (out_n, in_n))| sample(n, out_n, in_n));
    } else {
        for (n, (out_n, in_n)) in out
            .chunks_mut(out_per)
            .zip(input.chunks(in_per))
            .enumerate()
        {
            sample(n, out_n, in_n)
        }
    }
}

/// The kernel of the transposed convolution: w′[c, o, u, v] = w[o, c, KH − 1 − u, KW − 1 − v].
fn flip_transpose<T: Element>(g: &Geometry, w: &[T]) -> Vec<T> {
    let (kh, kw) = (g.kh, g.kw);
    let mut flipped = vec![T::ZERO; w.len()];
    for_each_kernel_index(g, |i, o, c, u, v| {
        flipped[((c * g.c_out + o) * kh + kh - 1 - u) * kw + kw - 1 - v] = w[i];
    });
    flipped
}

/// ∂L/∂x from the output gradient.
fn grad_input<T: Element>(g: &Geometry, grad: &[T], w: &[T]) -> Vec<T> {
    if let Some(transposed) = g.transposed() {
        let no_bias = vec![T::ZERO; g.c_in];
        return forward(&transposed, grad, &flip_transpose(g, w), &no_bias, None);
    }
    let (k, ohw) = (g.k(), g.out_pixels());
    let parallelism = g.gemm_parallelism();
    if g.is_pointwise() {
        // dx_n = Wᵀ·g_n, written whole: no zeroed buffer to allocate first.
        let len = g.batch * g.in_size();
        let mut dx = Vec::with_capacity(len);
        // On AVX-512 CPUs in f32, by the unpacked kernel from Wᵀ (C × O) stored as such, one
        // sample per thread (as the forward).
        #[cfg(target_arch = "x86_64")]
        let wt: Option<Vec<f32>> = unpacked_applies(parallelism)
            .then(|| T::as_f32(w))
            .flatten()
            .map(|w| {
                let mut wt = vec![0.0f32; w.len()];
                for (o, row) in w.chunks_exact(k).enumerate() {
                    for (c, &v) in row.iter().enumerate() {
                        wt[c * g.c_out + o] = v;
                    }
                }
                wt
            });
        let sample = |_: usize, dx_n: &mut [MaybeUninit<T>], g_n: &[T]| {
            #[cfg(target_arch = "x86_64")]
            if let (Some(wt), Some(g32), Some(dx32)) = (&wt, T::as_f32(g_n), T::as_f32_uninit(dx_n))
            {
                // SAFETY: AVX-512F is available (`wt` exists only then); dx_n holds C rows of
                // OHW, wt C rows of O, g_n O rows of OHW.
                unsafe {
                    super::unpacked_gemm::product(
                        (k, g.c_out, ohw),
                        (wt, g.c_out),
                        (g32, ohw),
                        (dx32.as_mut_ptr().cast::<f32>(), ohw),
                        super::unpacked_gemm::Start::Zero,
                    )
                };
                return;
            }
            matmul_uninit(k, ohw, g.c_out, dx_n, w, (1, k), g_n, (ohw, 1), parallelism)
        };
        for_each_sample(
            parallelism,
            &mut dx.spare_capacity_mut()[..len],
            g.in_size(),
            grad,
            g.c_out * ohw,
            sample,
        );
        // SAFETY: each sample's product wrote all k × ohw = in_size elements of its dx_n,
        // and the samples cover the first len.
        unsafe { dx.set_len(len) };
        return dx;
    }
    let mut dx = vec![T::ZERO; g.batch * g.in_size()];
    let sample = |_: usize, dx_n: &mut [T], g_n: &[T]| {
        // Wᵀ (K×O): element (r, o) = w[o·K + r].
        let product = |dst: &mut [T]| {
            matmul(
                k,
                ohw,
                g.c_out,
                dst,
                false,
                w,
                (1, k),
                g_n,
                (ohw, 1),
                parallelism,
            )
        };
        with_scratch(k * ohw, |cols| {
            product(cols);
            col2im(g, cols, dx_n);
        })
    };
    for_each_sample(
        parallelism,
        &mut dx,
        g.in_size(),
        grad,
        g.c_out * ohw,
        sample,
    );
    dx
}

vectorized_fn!(
    /// Σ of one row.
    fn row_sum<T: Element>(row: &[T]) -> f64 => element::sum
);

/// Whether the 1×1 convolutions take [`unpacked_gemm`](super::unpacked_gemm)'s kernel: on
/// AVX-512 CPUs, when each sample's products run on one thread (`Parallelism::None`, a
/// sample or more per thread); the caller checks for f32.
#[cfg(target_arch = "x86_64")]
fn unpacked_applies(parallelism: Parallelism) -> bool {
    matches!(parallelism, Parallelism::None) && super::avx512::available()
}

/// ∂L/∂Wᵀ (C × O) = Σ_n x_n·g_nᵀ over the samples of `x` and `dy` for a
/// [pointwise](Geometry::is_pointwise) convolution, into `dwt`, on AVX-512 CPUs when C or O
/// is a multiple of 16; false (and `dwt` untouched) otherwise.
///
/// Both operands hold the pixels they sum over contiguously, so one is transposed per
/// sample (16×16 blocks, into the thread's scratch), the one with fewer channels, and
/// [`unpacked_gemm::product`](super::unpacked_gemm::product) multiplies them where they
/// lie. (gemm copies both into its own layout, g_nᵀ's elements a row apart.)
#[cfg(target_arch = "x86_64")]
fn pointwise_grad_weight(g: &Geometry, x: &[f32], dy: &[f32], dwt: &mut [f32]) -> bool {
    let (c, o, pixels) = (g.c_in, g.c_out, g.out_pixels());
    if !super::avx512::available() {
        return false;
    }
    // Transpose x_n (P × C) and accumulate ∂L/∂W (O × C), or transpose g_n (P × O) and
    // accumulate ∂L/∂Wᵀ (C × O).
    let by_input = match (c.is_multiple_of(16), o.is_multiple_of(16)) {
        (true, true) => c <= o,
        (by_input, by_output) if by_input || by_output => by_input,
        _ => return false,
    };
    let (x_per, dy_per) = (c * pixels, o * pixels);
    let samples = x.len() / x_per;
    assert!(x.len() == samples * x_per && dy.len() == samples * dy_per && dwt.len() == c * o);
    let narrow = if by_input { c } else { o };
    with_scratch(pixels * narrow + c * o, |scratch: &mut [f32]| {
        let (t, dw) = scratch.split_at_mut(pixels * narrow);
        for n in 0..samples {
            let (x_n, dy_n) = (&x[n * x_per..][..x_per], &dy[n * dy_per..][..dy_per]);
            let (transposed, other, rows, acc) = if by_input {
                (x_n, dy_n, o, &mut *dw)
            } else {
                (dy_n, x_n, c, &mut *dwt)
            };
            // SAFETY: AVX-512F is available; `transposed` holds `narrow` rows of `pixels`,
            // t holds pixels × narrow elements, `other` `rows` rows of `pixels`, and acc
            // rows × narrow elements (the lengths asserted above).
            unsafe {
                super::avx512::transpose(
                    (transposed.as_ptr(), pixels),
                    (narrow, pixels),
                    t.as_mut_ptr(),
                );
                super::unpacked_gemm::product(
                    (rows, pixels, narrow),
                    (other, pixels),
                    (t, narrow),
                    (acc.as_mut_ptr(), narrow),
                    if n > 0 {
                        super::unpacked_gemm::Start::Accumulate
                    } else {
                        super::unpacked_gemm::Start::Zero
                    },
                );
            }
        }
        if by_input && samples > 0 {
            for (i, row) in dw.chunks_exact(c).enumerate() {
                for (j, &value) in row.iter().enumerate() {
                    dwt[j * o + i] = value;
                }
            }
        }
    });
    true
}

/// [∂L/∂W (O·K), ∂L/∂b] from the input and the output gradient; ∂L/∂b has O entries, or
/// B·O (one per sample and channel) when `per_sample_bias`.
fn grad_weight_bias<T: Element>(
    g: &Geometry,
    x: &[T],
    grad: &[T],
    per_sample_bias: bool,
) -> Vec<T> {
    let (k, ohw, o) = (g.k(), g.out_pixels(), g.c_out);
    let threads = super::threads();
    let per_chunk = g.batch.div_ceil(threads).max(1);
    let parallelism = g.gemm_parallelism();
    // The gradient is accumulated transposed, ∂L/∂Wᵀ = Σ_n cols_n·g_nᵀ (K×O), so that gemm
    // reads the unfolded input where it lies (unit stride along the pixels it sums over) and
    // packs only g_n, O rows instead of K. g_nᵀ (OHW×O): element (j, o) = g_n[o·OHW + j].
    let partial = |(x_chunk, g_chunk): (&[T], &[T])| -> Vec<T> {
        let mut dwt = vec![T::ZERO; k * o];
        #[cfg(target_arch = "x86_64")]
        if g.is_pointwise() && unpacked_applies(parallelism) {
            if let (Some(x), Some(dy), Some(out)) = (
                T::as_f32(x_chunk),
                T::as_f32(g_chunk),
                T::as_f32_mut(&mut dwt),
            ) {
                if pointwise_grad_weight(g, x, dy, out) {
                    return dwt;
                }
            }
        }
        for (n, (x_n, g_n)) in x_chunk
            .chunks(g.in_size())
            .zip(g_chunk.chunks(o * ohw))
            .enumerate()
        {
            if g.by_row_taps() {
                // ∂L/∂W_uᵀ += (rows shifted by u image rows)·g_nᵀ, for each vertical tap u:
                // element (u, c·KW + v, o).
                let (row_taps, plane) = (g.c_in * g.kw, g.padded_plane());
                with_scratch(row_taps * plane, |rows| {
                    unfold_row_taps(g, x_n, rows);
                    for (u, dwt_u) in dwt.chunks_exact_mut(row_taps * o).enumerate() {
                        matmul(
                            row_taps,
                            o,
                            ohw,
                            dwt_u,
                            n > 0,
                            &rows[u * g.w..],
                            (plane, 1),
                            g_n,
                            (1, ohw),
                            parallelism,
                        );
                    }
                });
                continue;
            }
            let mut product = |cols: &[T]| {
                matmul(
                    k,
                    o,
                    ohw,
                    &mut dwt,
                    n > 0,
                    cols,
                    (ohw, 1),
                    g_n,
                    (1, ohw),
                    parallelism,
                )
            };
            if g.is_pointwise() {
                product(x_n)
            } else {
                with_scratch(k * ohw, |cols| {
                    im2col(g, x_n, cols);
                    product(cols)
                })
            }
        }
        dwt
    };
    let mut packed = if let Some(shape) = g.winograd() {
        winograd::grad_weight(&shape, x, grad)
    } else {
        let chunks = x
            .par_chunks(per_chunk * g.in_size())
            .zip(grad.par_chunks(per_chunk * o * ohw));
        let packed = if let Parallelism::None = parallelism {
            element::sum_partials(chunks.map(partial).collect(), o * k)
        } else {
            partial((x, grad))
        };
        weight_grad_from_transposed(g, &packed)
    };
    // ∂L/∂b[n, o] = Σ over the pixels of grad[n, o]; summed over n for a per-channel bias.
    let sums: Vec<f64> = grad.par_chunks(ohw).map(row_sum).collect();
    if per_sample_bias {
        packed.extend(sums.iter().map(|&v| T::from_f64(v)));
    } else {
        packed.extend((0..o).map(|c| T::from_f64(sums.iter().skip(c).step_by(o).sum())));
    }
    packed
}

/// The forward op on (x, w, b).
struct Conv2dOp {
    stride: usize,
    padding: usize,
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "ddpm-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1.shape(), l2.shape(), self.stride, self.padding)?;
        if l3.dims() != [g.c_out] && l3.dims() != [g.batch, g.c_out] {
            candle_core::bail!(
                "conv2d: bias shape {:?}, expected [{}] or [{}, {}]",
                l3.dims(),
                g.c_out,
                g.batch,
                g.c_out
            );
        }
        let shape = Shape::from((g.batch, g.c_out, g.oh, g.ow));
        super::profile::time(
            "conv2d",
            || g.label(),
            || {
                dispatch!(s1, "ddpm-conv2d", |T| {
                    let x = contiguous::<T>(s1, l1, "ddpm-conv2d")?;
                    let w = contiguous::<T>(s2, l2, "ddpm-conv2d")?;
                    let b = contiguous::<T>(s3, l3, "ddpm-conv2d")?;
                    Ok((T::storage(forward(&g, x, w, b, None)), shape))
                })
            },
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, packed) = gradients(x, w, grad, (self.stride, self.padding), b.rank() == 2)?;
        let n = w.elem_count();
        let dw = packed.narrow(0, 0, n)?.reshape(w.shape())?;
        let db = packed.narrow(0, n, b.elem_count())?.reshape(b.shape())?;
        Ok((dx, Some(dw), Some(db)))
    }
}

/// The backward of a convolution on x with kernel w and output gradient `grad`: ∂L/∂x (none
/// when x tracks no gradient, as the first convolution's input, the noisy image), and
/// [∂L/∂w; ∂L/∂b] packed in one vector (b per channel, or per sample and channel).
fn gradients(
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
    (stride, padding): (usize, usize),
    per_sample_bias: bool,
) -> Result<(Option<Tensor>, Tensor)> {
    let grad = grad.contiguous()?;
    let dx = if x.track_op() {
        Some(grad.apply_op2_no_bwd(
            w,
            &Conv2dGradInput {
                stride,
                padding,
                h: x.dim(2)?,
                w: x.dim(3)?,
            },
        )?)
    } else {
        None
    };
    let packed = x.apply_op2_no_bwd(
        &grad,
        &Conv2dGradWeight {
            stride,
            padding,
            weight: w.shape().clone(),
            per_sample_bias,
        },
    )?;
    Ok((dx, packed))
}

/// The forward op on (x, [w; b], r): y = conv(x, w) + b + r, the weight and the per-channel
/// bias packed into one vector (candle's custom ops take three inputs) and the residual r of
/// y's shape.
struct Conv2dResidualOp {
    stride: usize,
    padding: usize,
    weight: Shape,
}

impl CustomOp3 for Conv2dResidualOp {
    fn name(&self) -> &'static str {
        "ddpm-conv2d-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1.shape(), &self.weight, self.stride, self.padding)?;
        let n = self.weight.elem_count();
        if l2.dims() != [n + g.c_out] {
            candle_core::bail!(
                "conv2d: packed weight and bias {:?}, expected [{}]",
                l2.dims(),
                n + g.c_out
            );
        }
        let shape = Shape::from((g.batch, g.c_out, g.oh, g.ow));
        if l3.shape() != &shape {
            candle_core::bail!(
                "conv2d: residual {:?}, expected the output's {:?}",
                l3.dims(),
                shape.dims()
            );
        }
        super::profile::time(
            "conv2d",
            || g.label(),
            || {
                dispatch!(s1, "ddpm-conv2d-residual", |T| {
                    let x = contiguous::<T>(s1, l1, "ddpm-conv2d-residual")?;
                    let (w, b) = contiguous::<T>(s2, l2, "ddpm-conv2d-residual")?.split_at(n);
                    let r = contiguous::<T>(s3, l3, "ddpm-conv2d-residual")?;
                    Ok((T::storage(forward(&g, x, w, b, Some(r))), shape))
                })
            },
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        wb: &Tensor,
        _r: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let w = wb
            .narrow(0, 0, self.weight.elem_count())?
            .reshape(&self.weight)?;
        // [∂L/∂w; ∂L/∂b], packed as the input.
        let (dx, dwb) = gradients(x, &w, grad, (self.stride, self.padding), false)?;
        Ok((dx, Some(dwb), Some(grad.clone())))
    }
}

/// ∂L/∂x on (grad, w).
struct Conv2dGradInput {
    stride: usize,
    padding: usize,
    h: usize,
    w: usize,
}

impl CustomOp2 for Conv2dGradInput {
    fn name(&self) -> &'static str {
        "ddpm-conv2d-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, _, _, _) = l1.shape().dims4()?;
        let (_, c_in, _, _) = l2.shape().dims4()?;
        let g = Geometry::new(
            &Shape::from((batch, c_in, self.h, self.w)),
            l2.shape(),
            self.stride,
            self.padding,
        )?;
        if l1.shape().dims() != [batch, g.c_out, g.oh, g.ow] {
            candle_core::bail!("conv2d backward: gradient shape {:?}", l1.dims());
        }
        super::profile::time(
            "conv2d ∂x",
            || g.label(),
            || {
                dispatch!(s1, "ddpm-conv2d-grad-input", |T| {
                    let grad = contiguous::<T>(s1, l1, "ddpm-conv2d-grad-input")?;
                    let w = contiguous::<T>(s2, l2, "ddpm-conv2d-grad-input")?;
                    Ok((
                        T::storage(grad_input(&g, grad, w)),
                        Shape::from((batch, c_in, self.h, self.w)),
                    ))
                })
            },
        )
    }
}

/// [∂L/∂W, ∂L/∂b] packed, on (x, grad).
struct Conv2dGradWeight {
    stride: usize,
    padding: usize,
    weight: Shape,
    /// The bias is (B, O), not (O).
    per_sample_bias: bool,
}

impl CustomOp2 for Conv2dGradWeight {
    fn name(&self) -> &'static str {
        "ddpm-conv2d-grad-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1.shape(), &self.weight, self.stride, self.padding)?;
        if l2.shape().dims() != [g.batch, g.c_out, g.oh, g.ow] {
            candle_core::bail!("conv2d backward: gradient shape {:?}", l2.dims());
        }
        super::profile::time(
            "conv2d ∂w ∂b",
            || g.label(),
            || {
                dispatch!(s1, "ddpm-conv2d-grad-weight", |T| {
                    let x = contiguous::<T>(s1, l1, "ddpm-conv2d-grad-weight")?;
                    let grad = contiguous::<T>(s2, l2, "ddpm-conv2d-grad-weight")?;
                    let packed = grad_weight_bias(&g, x, grad, self.per_sample_bias);
                    let len = packed.len();
                    Ok((T::storage(packed), Shape::from(len)))
                })
            },
        )
    }
}

/// conv2d(x, weight) + bias + residual, the residual of the output's shape (a residual
/// block's skip path) added by the convolution as it writes its output, instead of by a
/// separate addition that reads both and writes a third tensor. On the CPU in f32/f64 the
/// kernel of [`conv2d`], whose bias may only be per channel here; elsewhere [`conv2d`] and
/// an addition.
pub fn conv2d_residual(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    if !super::applies_to(x) || bias.is_some_and(|b| b.rank() != 1) {
        return conv2d(x, weight, bias, stride, padding)? + residual;
    }
    let bias = match bias {
        Some(b) => b.clone(),
        None => Tensor::zeros(weight.dim(0)?, x.dtype(), x.device())?,
    };
    // The weight and the bias in one vector (a copy of the weights: small against the
    // activations).
    let packed = Tensor::cat(&[&weight.flatten_all()?, &bias], 0)?;
    x.contiguous()?.apply_op3(
        &packed,
        &residual.contiguous()?,
        Conv2dResidualOp {
            stride,
            padding,
            weight: weight.shape().clone(),
        },
    )
}

/// conv2d(x, weight) + bias with symmetric `padding`: the hand-written kernel on the CPU in
/// f32/f64 (see the module docs), candle's `conv2d` elsewhere. The bias is per output channel
/// (O), or per sample and output channel (B, O), which lets a time embedding ride on the
/// convolution instead of costing a broadcast add and, backward, a reduction.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    if !super::applies_to(x) {
        let y = x.conv2d(weight, padding, stride, 1, 1)?;
        return match bias {
            Some(b) if b.rank() == 2 => y.broadcast_add(&b.unsqueeze(2)?.unsqueeze(3)?),
            Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
            None => Ok(y),
        };
    }
    let zeros;
    let bias = match bias {
        Some(b) => b,
        None => {
            zeros = Tensor::zeros(weight.dim(0)?, x.dtype(), x.device())?;
            &zeros
        }
    };
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        Conv2dOp { stride, padding },
    )
}
