//! C = A·B in f32 with AVX-512, reading A and B where they lie.
//!
//! gemm copies ("packs") both operands into its own layout on every call. For Winograd's 36
//! products per block of tiles, M_ξ = U_ξ·V_ξ, that copy is waste: V_ξ's rows are already
//! contiguous vectors, and U_ξ is small enough to stay in the L1 or L2 cache while it is
//! broadcast element by element. gemm's packing took 4–5% of a forward convolution there,
//! and its calls and edge kernels 3–5% more. (1×1 convolutions, Y_n = W·X_n + b with the
//! bias in the accumulators, measured no faster than gemm in session 13: 19.96–23.86
//! against 19.76–21.18 ms for the network's 1×1 forwards, alternated call by call.)

use std::arch::x86_64::*;

/// f32 lanes per vector.
const LANES: usize = 16;

/// C (m × n) = A (m × k) · B (k × n), or C += A·B when `accumulate`: A's, B's and C's rows
/// `a_rs`, `b_rs` and `c_rs` elements apart (each row's elements contiguous), n a multiple
/// of 16. By blocks of 6 rows of C and 64 columns (24 accumulators, as gemm's
/// microkernels; fewer at the edges): for each of the k, four loads of B's row and 6
/// broadcasts of A's column feed 24 fused multiply-adds.
///
/// # Safety
/// The CPU must support AVX-512F ([`super::avx512::available`]); C has m rows of n elements
/// `c_rs` apart from `c`, not overlapping A or B, and initialised when `accumulate` (when
/// not, they are written and not read, and may be uninitialised).
pub(super) unsafe fn product(
    (m, k, n): (usize, usize, usize),
    (a, a_rs): (&[f32], usize),
    (b, b_rs): (&[f32], usize),
    (c, c_rs): (*mut f32, usize),
    accumulate: bool,
) {
    assert!(n.is_multiple_of(LANES) && n <= b_rs && n <= c_rs && k <= a_rs);
    assert!(m == 0 || a.len() >= (m - 1) * a_rs + k);
    assert!(k == 0 || b.len() >= (k - 1) * b_rs + n);
    for column in (0..n).step_by(4 * LANES) {
        let vectors = ((n - column) / LANES).min(4);
        for row in (0..m).step_by(6) {
            let geometry = Block {
                row,
                column,
                k,
                a_rs,
                b_rs,
                c_rs,
                accumulate,
            };
            // SAFETY: rows row … row + R − 1 < m and columns column … column + 16·NV − 1 < n
            // of C, B's same columns, A's same rows (the caller's guarantee and the
            // assertions above).
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
/// strides of A, B and C, and whether C is added to.
#[derive(Clone, Copy)]
struct Block {
    row: usize,
    column: usize,
    k: usize,
    a_rs: usize,
    b_rs: usize,
    c_rs: usize,
    accumulate: bool,
}

/// Rows `row` … `row` + R − 1 and vectors `column` … `column` + 16·NV − 1 of [`product`].
///
/// # Safety
/// AVX-512F; those rows and columns lie in A, B and C.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn block<const R: usize, const NV: usize>(at: Block, a: &[f32], b: &[f32], c: *mut f32) {
    let mut acc = [[_mm512_setzero_ps(); NV]; R];
    // SAFETY (the loads and stores): the caller's guarantee.
    unsafe {
        let at_c = |r: usize, j: usize| c.add((at.row + r) * at.c_rs + at.column + j * LANES);
        if at.accumulate {
            for (r, acc) in acc.iter_mut().enumerate() {
                for (j, value) in acc.iter_mut().enumerate() {
                    *value = _mm512_loadu_ps(at_c(r, j));
                }
            }
        }
        let (a, b) = (a.as_ptr().add(at.row * at.a_rs), b.as_ptr().add(at.column));
        for k in 0..at.k {
            let mut bk = [_mm512_setzero_ps(); NV];
            for (j, slot) in bk.iter_mut().enumerate() {
                *slot = _mm512_loadu_ps(b.add(k * at.b_rs + j * LANES));
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
                _mm512_storeu_ps(at_c(r, j), *value);
            }
        }
    }
}
