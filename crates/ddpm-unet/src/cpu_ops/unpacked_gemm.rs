//! C = A·B in f32 with AVX-512, reading A and B where they lie.
//!
//! gemm copies ("packs") both operands into its own layout on every call. For Winograd's 36
//! products per block of tiles, M_ξ = U_ξ·V_ξ, that copy is waste: V_ξ's rows are already
//! contiguous vectors, and U_ξ is small enough to stay in the L1 or L2 cache while it is
//! broadcast element by element. gemm's packing took 4–5% of a forward convolution there,
//! and its calls and edge kernels 3–5% more.
//!
//! The same holds for 1×1 convolutions, Y_n = W·X_n + b (+ R), whose rows are pixels: the
//! bias (and a residual) start the accumulators instead of being written into Y_n for gemm
//! to read back, and rows of 196 or 49 pixels end in a masked vector. Session 14, the
//! network's 1×1 convolutions alternated call by call: forward 24.30 / 21.85 → 19.59 /
//! 19.09 ms, forward and backward 96.97 / 85.30 → 82.08 / 79.06 ms. (Session 13's try, the
//! bias in the accumulators with the kernel then limited to rows of whole vectors, measured
//! no faster than gemm; what made this one faster was not isolated.)

use std::arch::x86_64::*;

/// f32 lanes per vector.
const LANES: usize = 16;

/// What C holds before the products are added ([`product`]).
#[derive(Clone, Copy)]
pub(super) enum Start<'a> {
    /// Nothing: C is written and not read (it may be uninitialised).
    Zero,
    /// C's own values: C += A·B.
    Accumulate,
    /// A value per row of C (a bias per output channel): C = r_i + A·B, C uninitialised.
    Rows(&'a [f32]),
    /// A value per row plus a matrix laid out as C (a residual): C = r_i + R + A·B.
    RowsPlus(&'a [f32], &'a [f32]),
}

/// C (m × n) = start + A (m × k) · B (k × n): A's, B's and C's rows `a_rs`, `b_rs` and
/// `c_rs` elements apart (each row's elements contiguous). By blocks of 6 rows of C and 64
/// columns (24 accumulators, as gemm's microkernels; fewer at the edges, the last vector
/// of each row masked when n is not a multiple of 16): for each of the k, four loads of
/// B's row and 6 broadcasts of A's column feed 24 fused multiply-adds.
///
/// # Safety
/// The CPU must support AVX-512F ([`super::avx512::available`]); C has m rows of n elements
/// `c_rs` apart from `c`, not overlapping A, B or the start's matrix, and initialised for
/// [`Start::Accumulate`].
pub(super) unsafe fn product(
    (m, k, n): (usize, usize, usize),
    (a, a_rs): (&[f32], usize),
    (b, b_rs): (&[f32], usize),
    (c, c_rs): (*mut f32, usize),
    start: Start,
) {
    assert!(n <= b_rs && n <= c_rs && k <= a_rs);
    assert!(m == 0 || a.len() >= (m - 1) * a_rs + k);
    assert!(k == 0 || b.len() >= (k - 1) * b_rs + n);
    match start {
        Start::Rows(r) => assert!(r.len() >= m),
        Start::RowsPlus(r, plus) => {
            assert!(r.len() >= m && (m == 0 || plus.len() >= (m - 1) * c_rs + n))
        }
        _ => {}
    }
    for column in (0..n).step_by(4 * LANES) {
        let vectors = (n - column).div_ceil(LANES).min(4);
        let tail = super::avx512::tail_mask((n - column - (vectors - 1) * LANES).min(LANES));
        for row in (0..m).step_by(6) {
            let geometry = Block {
                row,
                column,
                k,
                a_rs,
                b_rs,
                c_rs,
                start,
                tail,
            };
            // SAFETY: rows row … row + R − 1 < m and columns column … column + 16·NV − 1 < n
            // of C (the last vector's lanes masked to n), B's same columns, A's same rows
            // (the caller's guarantee and the assertions above).
            unsafe {
                macro_rules! rows {
                    ($nv:literal) => {
                        match m - row {
                            6.. => block::<6, $nv>(geometry, a, b, c),
                            5 => block::<5, $nv>(geometry, a, b, c),
                            4 => block::<4, $nv>(geometry, a, b, c),
                            3 => block::<3, $nv>(geometry, a, b, c),
                            2 => block::<2, $nv>(geometry, a, b, c),
                            _ => block::<1, $nv>(geometry, a, b, c),
                        }
                    };
                }
                match vectors {
                    4 => rows!(4),
                    3 => rows!(3),
                    2 => rows!(2),
                    _ => rows!(1),
                }
            }
        }
    }
}

/// Where a [`block`] lies: its first row and column of C, the k of the product, the row
/// strides of A, B and C, what C starts from, and the lanes of its last vector.
#[derive(Clone, Copy)]
struct Block<'a> {
    row: usize,
    column: usize,
    k: usize,
    a_rs: usize,
    b_rs: usize,
    c_rs: usize,
    start: Start<'a>,
    tail: __mmask16,
}

/// Rows `row` … `row` + R − 1 and vectors `column` … `column` + 16·NV − 1 of [`product`].
///
/// # Safety
/// AVX-512F; those rows and columns lie in A, B and C (the last vector's to its `tail`).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn block<const R: usize, const NV: usize>(at: Block, a: &[f32], b: &[f32], c: *mut f32) {
    let mut acc = [[_mm512_setzero_ps(); NV]; R];
    let mask = |j: usize| if j + 1 == NV { at.tail } else { u16::MAX };
    // SAFETY (the loads and stores): the caller's guarantee.
    unsafe {
        let offset = |r: usize, j: usize| (at.row + r) * at.c_rs + at.column + j * LANES;
        match at.start {
            Start::Zero => {}
            Start::Accumulate => {
                for (r, acc) in acc.iter_mut().enumerate() {
                    for (j, value) in acc.iter_mut().enumerate() {
                        *value = _mm512_maskz_loadu_ps(mask(j), c.add(offset(r, j)));
                    }
                }
            }
            Start::Rows(rows) => {
                for (r, acc) in acc.iter_mut().enumerate() {
                    *acc = [_mm512_set1_ps(rows[at.row + r]); NV];
                }
            }
            Start::RowsPlus(rows, plus) => {
                for (r, acc) in acc.iter_mut().enumerate() {
                    let base = _mm512_set1_ps(rows[at.row + r]);
                    for (j, value) in acc.iter_mut().enumerate() {
                        let p = _mm512_maskz_loadu_ps(mask(j), plus.as_ptr().add(offset(r, j)));
                        *value = _mm512_add_ps(base, p);
                    }
                }
            }
        }
        let (a, b) = (a.as_ptr().add(at.row * at.a_rs), b.as_ptr().add(at.column));
        for k in 0..at.k {
            let mut bk = [_mm512_setzero_ps(); NV];
            for (j, slot) in bk.iter_mut().enumerate() {
                *slot = _mm512_maskz_loadu_ps(mask(j), b.add(k * at.b_rs + j * LANES));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let ar = _mm512_set1_ps(*a.add(r * at.a_rs + k));
                for (j, slot) in acc.iter_mut().enumerate() {
                    *slot = _mm512_fmadd_ps(ar, bk[j], *slot);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (j, value) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(c.add(offset(r, j)), mask(j), *value);
            }
        }
    }
}
