//! Hand-written CPU kernels, with analytic backward passes, for the layers that dominate the
//! U-Net's training step: 2-D convolution (im2col/col2im around a gemm, parallel over the
//! batch; Winograd's F(4×4, 3×3) for 3×3 convolutions on images from 7×7 to 128×128) and
//! GroupNorm with an optional fused SiLU. candle 0.11's own CPU convolution backward goes
//! through a plain-loop transposed convolution, and its GroupNorm is a chain of small
//! single-threaded tensor ops; these replace both on the CPU for f32 and f64, and
//! attention runs as one fused op per (sample, head) that recomputes its softmax weights in
//! the backward pass.
//!
//! On other devices and dtypes the layers fall back to candle's ops (cuDNN on CUDA), and
//! [`set_enabled`] switches the kernels off process-wide, for benchmarks against candle.
//! Each kernel is checked against candle's op on random inputs and by f64 finite
//! differences (`tests/cpu_ops.rs`).

mod attention;
mod attention_kernels;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod concat;
mod conv2d;
mod element;
mod group_norm;
pub mod profile;
mod simd;
mod softmax;
#[cfg(target_arch = "x86_64")]
mod unpacked_gemm;
mod upsample;
mod winograd;

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Tensor};

pub use attention::{attention, attention_channels_first, attention_qkv};
pub use concat::concat_channels;
pub use conv2d::{conv2d, conv2d_residual};
pub use group_norm::group_norm;
pub use simd::{simd_level, SimdLevel};
pub use softmax::softmax_last_dim;
pub use upsample::upsample_nearest_2x;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the hand-written CPU kernels on (the default) or off for the whole process.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether the hand-written CPU kernels are in use.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether the kernels apply to this tensor: CPU, f32 or f64, and switched on.
pub(crate) fn applies_to(x: &Tensor) -> bool {
    enabled() && x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// Threads the kernels may split work over (candle's rayon pool).
pub(crate) fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// Deterministic values in [−scale, scale) (a 64-bit LCG), for the kernels' unit tests.
#[cfg(test)]
pub(crate) fn test_values(len: usize, seed: u64, scale: f64) -> Vec<f64> {
    let step = |s: u64| {
        s.wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
    };
    let mut state = step(seed);
    (0..len)
        .map(|_| {
            state = step(state);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 * scale - scale
        })
        .collect()
}
