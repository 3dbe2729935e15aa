//! Runtime dispatch to the CPU's wider vector instructions.
//!
//! The crate is compiled for the x86-64 baseline (SSE2), so that one binary runs on every
//! x86-64 machine, and the kernels' element loops would vectorise only four f32 lanes wide,
//! without fused multiply-adds. [`vectorized_fn!`] defines a function that calls a kernel
//! inlined into a copy compiled for AVX-512 (or AVX2 with FMA) when the running CPU has it;
//! the `#[inline(always)]` helpers the kernel calls are inlined there too. (gemm does the
//! same for its own kernels.) The results are bit-identical to the baseline path's: Rust
//! never contracts `a·b + c` into a fused multiply-add on its own, so the wider code
//! performs the same IEEE operations in the same order.

#[cfg(target_arch = "x86_64")]
use std::sync::atomic::{AtomicU8, Ordering};

/// The instruction sets the dispatch chooses between, from the widest down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimdLevel {
    /// AVX-512 (F, VL, BW, DQ) with FMA: 16 f32 lanes.
    Avx512,
    /// AVX2 with FMA: 8 f32 lanes.
    Avx2,
    /// The compile-time target's instructions only (SSE2 on x86-64).
    Baseline,
}

#[cfg(target_arch = "x86_64")]
const UNKNOWN: u8 = u8::MAX;
#[cfg(target_arch = "x86_64")]
static LEVEL: AtomicU8 = AtomicU8::new(UNKNOWN);

/// The level the kernels use on this CPU: the widest it supports, unless capped by the
/// environment variable `DDPM_SIMD` (`avx512`, `avx2` or `baseline`), which is for
/// comparisons and never raises the level above what the CPU has.
pub fn simd_level() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        let cached = LEVEL.load(Ordering::Relaxed);
        if cached != UNKNOWN {
            return from_u8(cached);
        }
        let level = detect();
        LEVEL.store(level as u8, Ordering::Relaxed);
        level
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        SimdLevel::Baseline
    }
}

#[cfg(target_arch = "x86_64")]
fn from_u8(v: u8) -> SimdLevel {
    match v {
        0 => SimdLevel::Avx512,
        1 => SimdLevel::Avx2,
        _ => SimdLevel::Baseline,
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> SimdLevel {
    // Every feature the copies are compiled with (see `vectorized_fn!`).
    let avx2 = std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("avx")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("bmi1")
        && std::arch::is_x86_feature_detected!("bmi2")
        && std::arch::is_x86_feature_detected!("lzcnt");
    let avx512 = avx2
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512dq");
    let widest = if avx512 {
        SimdLevel::Avx512
    } else if avx2 {
        SimdLevel::Avx2
    } else {
        SimdLevel::Baseline
    };
    let cap = match std::env::var("DDPM_SIMD").as_deref() {
        Ok("baseline") => SimdLevel::Baseline,
        Ok("avx2") => SimdLevel::Avx2,
        _ => SimdLevel::Avx512,
    };
    // The enum is ordered from the widest down, so the narrower of the two is the larger.
    if (cap as u8) > (widest as u8) {
        cap
    } else {
        widest
    }
}

/// Defines `fn $name<$T: $bound>(args) -> ret`, which runs `$kernel` (an `#[inline(always)]`
/// function with the same signature) inlined into a copy compiled for the widest instruction
/// set of [`simd_level`]. The kernel should do a sizeable piece of work (a row, a block),
/// since each call costs a branch. (A closure passed to a `#[target_feature]` function is
/// not inlined into it, so the dispatch has to name the kernel.)
///
/// Two forms: `fn name<T: Bound>(args) -> ret => kernel { body }` also defines `kernel` with
/// that body (callable directly: the baseline copy); `fn name<T: Bound>(args) -> ret =>
/// path::to::kernel` dispatches to an existing one.
macro_rules! vectorized_fn {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident<$T:ident: $bound:path>($($arg:ident: $ty:ty),* $(,)?)
            $(-> $ret:ty)? => $kernel:ident $body:block
    ) => {
        $(#[$meta])*
        #[inline(always)]
        fn $kernel<$T: $bound>($($arg: $ty),*) $(-> $ret)? $body

        $crate::cpu_ops::simd::vectorized_fn!(
            $(#[$meta])*
            $vis fn $name<$T: $bound>($($arg: $ty),*) $(-> $ret)? => $kernel
        );
    };
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident<$T:ident: $bound:path>($($arg:ident: $ty:ty),* $(,)?)
            $(-> $ret:ty)? => $kernel:path
    ) => {
        $(#[$meta])*
        $vis fn $name<$T: $bound>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(
                    enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,avx,fma,bmi1,bmi2,lzcnt"
                )]
                unsafe fn avx512<$T: $bound>($($arg: $ty),*) $(-> $ret)? {
                    $kernel($($arg),*)
                }
                #[target_feature(enable = "avx2,avx,fma,bmi1,bmi2,lzcnt")]
                unsafe fn avx2<$T: $bound>($($arg: $ty),*) $(-> $ret)? {
                    $kernel($($arg),*)
                }
                match $crate::cpu_ops::simd::simd_level() {
                    // SAFETY: the CPU has the features these copies are compiled for
                    // (checked by `simd_level`).
                    $crate::cpu_ops::simd::SimdLevel::Avx512 => {
                        return unsafe { avx512($($arg),*) }
                    }
                    $crate::cpu_ops::simd::SimdLevel::Avx2 => {
                        return unsafe { avx2($($arg),*) }
                    }
                    $crate::cpu_ops::simd::SimdLevel::Baseline => {}
                }
            }
            $kernel($($arg),*)
        }
    };
}
pub(crate) use vectorized_fn;

#[cfg(test)]
mod tests {
    use super::super::element::{self, Element};

    vectorized_fn!(fn sum<T: Element>(xs: &[T]) -> f64 => sum_generic {
        element::sum(xs)
    });

    #[test]
    fn dispatched_kernel_matches_the_baseline_bit_for_bit() {
        // Values of mixed magnitude, so that a different order of additions would show.
        let xs: Vec<f32> = (0..1001)
            .map(|i| ((i * 7919 % 1013) as f32 - 500.0) * 1.37e-3 * (1 + i % 5) as f32)
            .collect();
        assert_eq!(sum(&xs).to_bits(), sum_generic(&xs).to_bits());
    }
}
