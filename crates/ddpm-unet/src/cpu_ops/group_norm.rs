//! GroupNorm (Wu & He 2018), optionally followed by SiLU, in one pass, with its analytic
//! backward. Work is split over (sample, group) blocks, which are contiguous in NCHW.
//!
//! Per block of N = (C/G)·H·W values: μ = mean(x), σ² = mean((x − μ)²), r = 1/√(σ² + ε),
//! x̂ = (x − μ)·r, z = γ_c·x̂ + β_c, y = z (or SiLU(z) = z·σ(z)).
//! Backward, with dz = dy (or dy·σ(z)·(1 + z·(1 − σ(z)))) and d = dz·γ_c:
//! ∂L/∂γ_c = Σ dz·x̂, ∂L/∂β_c = Σ dz, ∂L/∂x = r·(d − mean(d) − x̂·mean(d·x̂)).
//!
//! f32 blocks on AVX-512 CPUs go to the intrinsics kernels of [`super::avx512`] (fused
//! multiply-adds, masked tails, the dz pass fused with its two sums): 25–40% faster than the
//! vectorised generic blocks below, which serve f64 and other CPUs.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::element::{self, contiguous, dispatch, Element};
use super::simd::vectorized_fn;

#[derive(Debug, Clone, Copy)]
struct Geometry {
    channels: usize,
    groups: usize,
    /// H·W (or the product of all trailing dims).
    pixels: usize,
}

impl Geometry {
    fn new(shape: &Shape, groups: usize) -> Result<Self> {
        let dims = shape.dims();
        if dims.len() < 2 {
            candle_core::bail!("group_norm: expected (B, C, …), got {dims:?}");
        }
        let channels = dims[1];
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!("group_norm: {groups} groups do not divide {channels} channels");
        }
        Ok(Self {
            channels,
            groups,
            pixels: dims[2..].iter().product(),
        })
    }
    fn per_group(&self) -> usize {
        self.channels / self.groups
    }
    fn block(&self) -> usize {
        self.per_group() * self.pixels
    }
}

/// (μ, r) of one block: two passes, partial sums combined in f64.
#[inline(always)]
fn moments<T: Element>(block: &[T], eps: f64) -> (f64, f64) {
    let n = block.len() as f64;
    let mean = element::sum(block) / n;
    let var = element::sum_squared_deviations(block, mean) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

fn forward<T: Element>(
    g: &Geometry,
    x: &[T],
    gamma: &[T],
    beta: &[T],
    eps: f64,
    silu: bool,
) -> Vec<T> {
    // Written block by block into uninitialised capacity: a zeroed vector would cost one
    // more pass over the output.
    let mut y = Vec::with_capacity(x.len());
    y.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(g.block())
        .zip(x.par_chunks(g.block()))
        .enumerate()
        .for_each(|(index, (y_b, x_b))| {
            let first = (index % g.groups) * g.per_group();
            let (gamma, beta) = (&gamma[first..], &beta[first..]);
            #[cfg(target_arch = "x86_64")]
            if super::avx512::available() {
                if let (Some(y), Some(x), Some(gm), Some(bt)) = (
                    T::as_f32_uninit(y_b),
                    T::as_f32(x_b),
                    T::as_f32(gamma),
                    T::as_f32(beta),
                ) {
                    // SAFETY: AVX-512F is available; y and x are one block of whole
                    // channels, and γ, β start at its first channel.
                    unsafe {
                        super::avx512::group_norm_forward_block(y, x, g.pixels, (gm, bt), eps, silu)
                    };
                    return;
                }
            }
            forward_block(g, element::zeroed(y_b), x_b, gamma, beta, eps, silu);
        });
    // SAFETY: each block wrote all of its elements, the kernel every lane of every channel.
    unsafe { y.set_len(x.len()) };
    y
}

vectorized_fn!(
    /// One (sample, group) block of the forward pass; γ and β start at the block's first
    /// channel.
    fn forward_block<T: Element>(
        g: &Geometry,
        y_b: &mut [T],
        x_b: &[T],
        gamma: &[T],
        beta: &[T],
        eps: f64,
        silu: bool,
    ) => forward_block_generic {
        let (mean, rstd) = moments(x_b, eps);
        for (c, (y_c, x_c)) in y_b
            .chunks_mut(g.pixels)
            .zip(x_b.chunks(g.pixels))
            .enumerate()
        {
            // z = a·x + b with a = γ·r, b = β − μ·γ·r.
            let a = gamma[c].to_f64() * rstd;
            let b = beta[c].to_f64() - mean * a;
            let (a, b) = (T::from_f64(a), T::from_f64(b));
            if silu {
                for (y, &x) in y_c.iter_mut().zip(x_c) {
                    let z = a * x + b;
                    *y = z * z.sigmoid();
                }
            } else {
                for (y, &x) in y_c.iter_mut().zip(x_c) {
                    *y = a * x + b;
                }
            }
        }
    }
);

/// [∂L/∂x (B·C·pixels), ∂L/∂γ (C), ∂L/∂β (C)].
fn backward<T: Element>(
    g: &Geometry,
    x: &[T],
    dy: &[T],
    gamma: &[T],
    beta: &[T],
    eps: f64,
    silu: bool,
) -> Vec<T> {
    // Uninitialised, as in the forward; ∂L/∂γ and ∂L/∂β are written last.
    let n = x.len();
    let mut dx = Vec::with_capacity(n + 2 * g.channels);
    let cg = g.per_group();
    // Per block: ∂L/∂γ and ∂L/∂β of its channels.
    let partials: Vec<Vec<f64>> = dx.spare_capacity_mut()[..n]
        .par_chunks_mut(g.block())
        .zip(x.par_chunks(g.block()).zip(dy.par_chunks(g.block())))
        .enumerate()
        .map(|(index, (dx_b, (x_b, dy_b)))| {
            let first = (index % g.groups) * cg;
            let (gamma, beta) = (&gamma[first..], &beta[first..]);
            #[cfg(target_arch = "x86_64")]
            if super::avx512::available() {
                if let (Some(dx), Some(x), Some(dy), Some(gm), Some(bt)) = (
                    T::as_f32_uninit(dx_b),
                    T::as_f32(x_b),
                    T::as_f32(dy_b),
                    T::as_f32(gamma),
                    T::as_f32(beta),
                ) {
                    // SAFETY: as in the forward, with dx and dy as long as x.
                    return unsafe {
                        super::avx512::group_norm_backward_block(
                            dx,
                            x,
                            dy,
                            g.pixels,
                            (gm, bt),
                            eps,
                            silu,
                        )
                    };
                }
            }
            backward_block(g, element::zeroed(dx_b), x_b, dy_b, gamma, beta, eps, silu)
        })
        .collect();
    let mut dgamma = vec![0.0f64; g.channels];
    let mut dbeta = vec![0.0f64; g.channels];
    for (index, sums) in partials.iter().enumerate() {
        let first = (index % g.groups) * cg;
        for c in 0..cg {
            dgamma[first + c] += sums[c];
            dbeta[first + c] += sums[cg + c];
        }
    }
    let params = &mut dx.spare_capacity_mut()[n..n + 2 * g.channels];
    for (i, (gm, bt)) in dgamma.into_iter().zip(dbeta).enumerate() {
        params[i].write(T::from_f64(gm));
        params[g.channels + i].write(T::from_f64(bt));
    }
    // SAFETY: the blocks wrote ∂L/∂x, all of it (as in the forward), and the loop above
    // the 2·C parameter gradients.
    unsafe { dx.set_len(n + 2 * g.channels) };
    dx
}

vectorized_fn!(
    /// One (sample, group) block of the backward pass: ∂L/∂x into `dx_b`, and the block's
    /// [∂L/∂γ per channel, ∂L/∂β per channel]; γ and β start at the block's first channel.
    #[allow(clippy::too_many_arguments)]
    fn backward_block<T: Element>(
        g: &Geometry,
        dx_b: &mut [T],
        x_b: &[T],
        dy_b: &[T],
        gamma: &[T],
        beta: &[T],
        eps: f64,
        silu: bool,
    ) -> Vec<f64> => backward_block_generic {
        let cg = g.per_group();
        let (mean, rstd) = moments(x_b, eps);
        let mut sums = vec![0.0f64; 2 * cg];
        let (mut sum_d, mut sum_dxhat) = (0.0f64, 0.0f64);
        for c in 0..cg {
            let range = c * g.pixels..(c + 1) * g.pixels;
            let (gm, bt) = (gamma[c], beta[c]);
            let (m, r) = (T::from_f64(mean), T::from_f64(rstd));
            // First d = dz·γ into dx and dz·x̂ sums, then the sums over the channel,
            // each vectorisable.
            let (x_c, dy_c) = (&x_b[range.clone()], &dy_b[range.clone()]);
            let d_c = &mut dx_b[range];
            for ((d_out, &xv), &dyv) in d_c.iter_mut().zip(x_c).zip(dy_c) {
                let dz = if silu {
                    let z = gm * ((xv - m) * r) + bt;
                    let s = z.sigmoid();
                    dyv * s * (T::ONE + z * (T::ONE - s))
                } else {
                    dyv
                };
                *d_out = dz;
            }
            // Σ dz·x̂ = r·(Σ dz·x − μ·Σ dz).
            let sum_dz = element::sum(d_c);
            let sum_dz_x = element::dot(d_c, x_c);
            let dgamma = rstd * (sum_dz_x - mean * sum_dz);
            let dbeta = sum_dz;
            let gm64 = gm.to_f64();
            sum_d += gm64 * dbeta;
            sum_dxhat += gm64 * dgamma;
            sums[c] = dgamma;
            sums[cg + c] = dbeta;
        }
        let n = x_b.len() as f64;
        let (mean_d, mean_dxhat) = (sum_d / n, sum_dxhat / n);
        // ∂L/∂x = r·(d − mean(d) − x̂·mean(d·x̂)) = a_c·dz + b·x + c, d = γ_c·dz.
        let b = T::from_f64(-rstd * rstd * mean_dxhat);
        let c = T::from_f64(-rstd * mean_d + rstd * rstd * mean * mean_dxhat);
        for (ch, (dx_c, x_c)) in dx_b
            .chunks_mut(g.pixels)
            .zip(x_b.chunks(g.pixels))
            .enumerate()
        {
            let a = T::from_f64(rstd * gamma[ch].to_f64());
            for (d_out, &xv) in dx_c.iter_mut().zip(x_c) {
                *d_out = a * *d_out + b * xv + c;
            }
        }
        sums
    }
);

/// The shape for [`super::profile`], e.g. `[64, 32, 28, 28], 8 groups +SiLU`.
fn label(dims: &[usize], groups: usize, silu: bool) -> String {
    format!(
        "{dims:?}, {groups} groups{}",
        if silu { " +SiLU" } else { "" }
    )
}

struct GroupNormOp {
    groups: usize,
    eps: f64,
    silu: bool,
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "ddpm-group-norm"
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
        let g = Geometry::new(l1.shape(), self.groups)?;
        if l2.dims() != [g.channels] || l3.dims() != [g.channels] {
            candle_core::bail!("group_norm: γ and β must have shape [{}]", g.channels);
        }
        super::profile::time(
            "group_norm",
            || label(l1.dims(), self.groups, self.silu),
            || {
                dispatch!(s1, "ddpm-group-norm", |T| {
                    let x = contiguous::<T>(s1, l1, "ddpm-group-norm")?;
                    let gamma = contiguous::<T>(s2, l2, "ddpm-group-norm")?;
                    let beta = contiguous::<T>(s3, l3, "ddpm-group-norm")?;
                    Ok((
                        T::storage(forward(&g, x, gamma, beta, self.eps, self.silu)),
                        l1.shape().clone(),
                    ))
                })
            },
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let params = Tensor::cat(&[gamma, beta], 0)?;
        let packed = x.apply_op3_no_bwd(
            &grad.contiguous()?,
            &params,
            &GroupNormBackward {
                groups: self.groups,
                eps: self.eps,
                silu: self.silu,
            },
        )?;
        let (n, c) = (x.elem_count(), gamma.elem_count());
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dgamma = packed.narrow(0, n, c)?;
        let dbeta = packed.narrow(0, n + c, c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// The packed backward on (x, grad, [γ, β]).
struct GroupNormBackward {
    groups: usize,
    eps: f64,
    silu: bool,
}

impl CustomOp3 for GroupNormBackward {
    fn name(&self) -> &'static str {
        "ddpm-group-norm-backward"
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
        let g = Geometry::new(l1.shape(), self.groups)?;
        if l2.shape() != l1.shape() || l3.dims() != [2 * g.channels] {
            candle_core::bail!("group_norm backward: mismatched shapes");
        }
        super::profile::time(
            "group_norm backward",
            || label(l1.dims(), self.groups, self.silu),
            || {
                dispatch!(s1, "ddpm-group-norm-backward", |T| {
                    let x = contiguous::<T>(s1, l1, "ddpm-group-norm-backward")?;
                    let dy = contiguous::<T>(s2, l2, "ddpm-group-norm-backward")?;
                    let params = contiguous::<T>(s3, l3, "ddpm-group-norm-backward")?;
                    let (gamma, beta) = params.split_at(g.channels);
                    let packed = backward(&g, x, dy, gamma, beta, self.eps, self.silu);
                    let len = packed.len();
                    Ok((T::storage(packed), Shape::from(len)))
                })
            },
        )
    }
}

/// GroupNorm of x (B, C, …) with `groups` groups, per-channel γ and β, then SiLU when
/// `silu`: the fused kernel on the CPU in f32/f64, candle's ops elsewhere.
pub fn group_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    if !super::applies_to(x) {
        // candle's ops; half precision is normalised in f32, as candle-nn's GroupNorm does.
        let dtype = x.dtype();
        let internal = match dtype {
            DType::F16 | DType::BF16 => DType::F32,
            other => other,
        };
        let x = &x.to_dtype(internal)?;
        let (gamma, beta) = (&gamma.to_dtype(internal)?, &beta.to_dtype(internal)?);
        let (b, c) = (x.dim(0)?, x.dim(1)?);
        let shape = x.shape().clone();
        let xg = x.reshape((b, groups, ()))?;
        let mean = xg.mean_keepdim(2)?;
        let centered = xg.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(2)?;
        let xhat = centered
            .broadcast_div(&(var + eps)?.sqrt()?)?
            .reshape(&shape)?;
        let mut param_shape = vec![1, c];
        param_shape.extend(std::iter::repeat_n(1, shape.rank() - 2));
        let y = xhat
            .broadcast_mul(&gamma.reshape(param_shape.as_slice())?)?
            .broadcast_add(&beta.reshape(param_shape.as_slice())?)?;
        let y = if silu { y.silu()? } else { y };
        return y.to_dtype(dtype);
    }
    x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        GroupNormOp { groups, eps, silu },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The copy compiled for this CPU's widest vector instructions computes the same IEEE
    /// operations in the same order as the baseline copy, so the bits agree.
    #[test]
    fn dispatched_blocks_match_the_baseline_bit_for_bit() {
        let g = Geometry {
            channels: 4,
            groups: 2,
            pixels: 37,
        };
        let wave = |i: usize, k: f32| (i as f32 * k).sin() * 3.0 + 0.25;
        let x: Vec<f32> = (0..g.block()).map(|i| wave(i, 0.37)).collect();
        let dy: Vec<f32> = (0..g.block()).map(|i| wave(i, 1.31)).collect();
        let (gamma, beta) = ([0.9f32, -1.3], [0.1f32, 0.7]);
        for silu in [false, true] {
            let (mut fast, mut base) = (vec![0.0; g.block()], vec![0.0; g.block()]);
            forward_block(&g, &mut fast, &x, &gamma, &beta, 1e-5, silu);
            forward_block_generic(&g, &mut base, &x, &gamma, &beta, 1e-5, silu);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&base), "forward, silu = {silu}");

            let (mut fast, mut base) = (vec![0.0; g.block()], vec![0.0; g.block()]);
            let sums_fast = backward_block(&g, &mut fast, &x, &dy, &gamma, &beta, 1e-5, silu);
            let sums_base =
                backward_block_generic(&g, &mut base, &x, &dy, &gamma, &beta, 1e-5, silu);
            assert_eq!(bits(&fast), bits(&base), "backward, silu = {silu}");
            assert_eq!(sums_fast, sums_base, "γ and β gradients, silu = {silu}");
        }
    }

    /// `xs` as the kernels' output type.
    #[cfg(target_arch = "x86_64")]
    fn as_uninit(xs: &mut [f32]) -> &mut [std::mem::MaybeUninit<f32>] {
        // SAFETY: MaybeUninit<f32> has f32's layout, and the kernels write only f32 values.
        unsafe { &mut *(xs as *mut [f32] as *mut [std::mem::MaybeUninit<f32>]) }
    }

    /// The AVX-512 intrinsics blocks against the generic ones in f64 (an independent
    /// summation order and polynomial, so to a tolerance): channels of 37 pixels (two full
    /// 16-lane blocks and a tail), 16 (no tail) and 5 (only a tail).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_blocks_match_the_generic_ones() {
        if !crate::cpu_ops::avx512::available() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        let wave = |i: usize, k: f64| (i as f64 * k).sin() * 3.0 + 0.25;
        for pixels in [37usize, 16, 5] {
            let g = Geometry {
                channels: 4,
                groups: 2,
                pixels,
            };
            let x: Vec<f64> = (0..g.block()).map(|i| wave(i, 0.37)).collect();
            let dy: Vec<f64> = (0..g.block()).map(|i| wave(i, 1.31)).collect();
            let (gamma, beta) = ([0.9f64, -1.3], [0.1f64, 0.7]);
            let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            let (x32, dy32, gamma32, beta32) = (f32s(&x), f32s(&dy), f32s(&gamma), f32s(&beta));
            let close = |ours: &[f32], exact: &[f64], what: &str| {
                let scale = exact.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                for (i, (&o, &e)) in ours.iter().zip(exact).enumerate() {
                    assert!(
                        (f64::from(o) - e).abs() <= 2e-6 * scale,
                        "{what}, {pixels} pixels, element {i}: {o} against {e}"
                    );
                }
            };
            for silu in [false, true] {
                let mut exact = vec![0.0f64; g.block()];
                forward_block_generic(&g, &mut exact, &x, &gamma, &beta, 1e-5, silu);
                let mut ours = vec![0.0f32; g.block()];
                // SAFETY: AVX-512F is available (checked above); one block of whole channels.
                unsafe {
                    crate::cpu_ops::avx512::group_norm_forward_block(
                        as_uninit(&mut ours),
                        &x32,
                        pixels,
                        (&gamma32, &beta32),
                        1e-5,
                        silu,
                    )
                };
                close(&ours, &exact, &format!("forward, silu = {silu}"));

                let mut exact = vec![0.0f64; g.block()];
                let exact_sums =
                    backward_block_generic(&g, &mut exact, &x, &dy, &gamma, &beta, 1e-5, silu);
                let mut ours = vec![0.0f32; g.block()];
                // SAFETY: as above, with dx and dy as long as x.
                let sums = unsafe {
                    crate::cpu_ops::avx512::group_norm_backward_block(
                        as_uninit(&mut ours),
                        &x32,
                        &dy32,
                        pixels,
                        (&gamma32, &beta32),
                        1e-5,
                        silu,
                    )
                };
                close(&ours, &exact, &format!("backward, silu = {silu}"));
                let sums32 = f32s(&sums);
                close(
                    &sums32,
                    &exact_sums,
                    &format!("γ, β gradients, silu = {silu}"),
                );
            }
        }
    }
}
