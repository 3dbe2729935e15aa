//! The hand-written CPU kernels against candle's own ops (forward and autograd backward, f32)
//! and against central finite differences (f64).

use candle_core::{DType, Device, Module, Tensor, Var};
use ddpm_unet::cpu_ops::{conv2d, group_norm};

/// Max |a − b| / (1 + max |b|).
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let diff = (a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let scale = b.abs().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
    diff / (1.0 + scale)
}

fn randn(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    // A deterministic pseudo-random fill (candle's randn is unseeded).
    let n: usize = shape.iter().product();
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let values: Vec<f64> = (0..n)
        .map(|_| {
            let mut u = [0.0f64; 2];
            for v in &mut u {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *v = ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            }
            (-2.0 * u[0].ln()).sqrt() * (2.0 * std::f64::consts::PI * u[1]).cos()
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// The gradients of L = Σ y·r.
fn grads_of_weighted_sum(y: &Tensor, r: &Tensor) -> candle_core::backprop::GradStore {
    (y * r).unwrap().sum_all().unwrap().backward().unwrap()
}

/// (x shape, weight shape, stride, padding). Which path each case takes:
/// - stride 1 with OW = W (cases 0, 5, 7, 8, 9, 10, 12; case 8 has a 1×3 kernel, cases 9
///   and 12 images one column wide) unfolds only the horizontal taps, forward and for the
///   weight gradient, and takes the row-shift col2im; cases 3 and 19 are 1×1 (no
///   unfolding); the others take the general im2col/col2im;
/// - the input gradient is a convolution with the flipped, transposed kernel for stride 1,
///   a square kernel and no more output than input channels (cases 7, 10, 11, 12; for case
///   11 that convolution has padding 2 and takes the general im2col), and gemm + col2im for
///   the others;
/// - the forward is computed transposed, pixel by channel, for at least 64 output channels
///   (a multiple of 16) and at most 196 pixels, unless Winograd takes it (cases 13 and 14,
///   63 and 30 pixels, the first in two products of 48 and 15).
const CONV_CASES: [([usize; 4], [usize; 4], usize, usize); 25] = [
    ([4, 3, 7, 9], [5, 3, 3, 3], 1, 1),
    ([3, 4, 8, 8], [4, 4, 3, 3], 2, 1),
    ([3, 4, 9, 7], [2, 4, 3, 3], 2, 0),
    ([5, 6, 5, 5], [3, 6, 1, 1], 1, 0),
    ([2, 2, 6, 5], [3, 2, 3, 3], 1, 0),
    ([1, 3, 6, 6], [4, 3, 3, 3], 1, 1),
    ([3, 2, 5, 6], [2, 2, 5, 3], 3, 2),
    ([2, 3, 6, 7], [2, 3, 5, 5], 1, 2),
    ([2, 2, 4, 5], [3, 2, 1, 3], 1, 1),
    ([2, 2, 4, 1], [3, 2, 3, 3], 1, 1),
    ([3, 4, 5, 6], [4, 4, 3, 3], 1, 1),
    ([2, 5, 7, 6], [3, 5, 3, 3], 1, 0),
    ([2, 3, 5, 1], [2, 3, 3, 3], 1, 1),
    ([2, 32, 7, 9], [64, 32, 5, 5], 1, 2),
    ([2, 16, 5, 6], [80, 16, 3, 3], 1, 1),
    // Winograd's forward (7×7 to 128×128, ≥ 16 channels, when the batch has a sample per
    // thread); the input gradient too, with more output than input channels and with fewer,
    // odd sizes whose edge tiles hang over the image, exact 4×4 tiles, and a batch that
    // splits unevenly over two threads.
    ([2, 16, 14, 15], [24, 16, 3, 3], 1, 1),
    ([3, 20, 15, 14], [16, 20, 3, 3], 1, 1),
    ([2, 16, 7, 7], [16, 16, 3, 3], 1, 1),
    ([3, 16, 8, 8], [24, 16, 3, 3], 1, 1),
    // 1×1 with 13 output channels and 77 pixels.
    ([3, 20, 7, 11], [13, 20, 1, 1], 1, 0),
    // 1×1 weight gradients on AVX-512 CPUs with the input transposed (16 and 32 input
    // channels, fewer than the output's or the only multiple of 16), and with the output
    // gradient transposed (48 output channels); 81 and 35 pixels, a partial 16-lane block.
    ([5, 32, 9, 9], [48, 32, 1, 1], 1, 0),
    ([3, 16, 5, 7], [13, 16, 1, 1], 1, 0),
    ([3, 20, 9, 9], [48, 20, 1, 1], 1, 0),
    // 1×1 with one sample: with more threads than samples, gemm splits each product.
    ([1, 16, 5, 7], [32, 16, 1, 1], 1, 0),
    // Stride 2, 3×3, padding 1 (the downsampling convolution), 17 output columns: its
    // unfolding by chunks of 15 and 2 on AVX-512 CPUs, with an odd height.
    ([2, 3, 9, 33], [4, 3, 3, 3], 2, 1),
];

/// One convolution case against candle's `conv2d` plus a broadcast bias, forward and
/// backward (f32). The bias is (O), or (B, O) when `per_sample_bias`.
fn check_conv_against_candle(
    label: &str,
    (xs, ws, stride, padding): ([usize; 4], [usize; 4], usize, usize),
    per_sample_bias: bool,
    seed: u64,
) {
    let x = Var::from_tensor(&randn(&xs, DType::F32, seed)).unwrap();
    let w = Var::from_tensor(&randn(&ws, DType::F32, seed + 1)).unwrap();
    let bias_shape = if per_sample_bias {
        vec![xs[0], ws[0]]
    } else {
        vec![ws[0]]
    };
    let b = Var::from_tensor(&randn(&bias_shape, DType::F32, seed + 2)).unwrap();
    let ours = conv2d(&x, &w, Some(&b), stride, padding).unwrap();
    let b4 = if per_sample_bias {
        b.unsqueeze(2).unwrap().unsqueeze(3).unwrap()
    } else {
        b.reshape((1, ws[0], 1, 1)).unwrap()
    };
    let reference = x
        .conv2d(&w, padding, stride, 1, 1)
        .unwrap()
        .broadcast_add(&b4)
        .unwrap();
    assert_eq!(ours.dims(), reference.dims(), "{label}");
    let err = rel_diff(&ours, &reference);
    assert!(err < 1e-5, "{label}: forward differs by {err}");

    let r = randn(reference.dims(), DType::F32, seed + 3);
    let (g_ours, g_ref) = (
        grads_of_weighted_sum(&ours, &r),
        grads_of_weighted_sum(&reference, &r),
    );
    for (name, var) in [("x", &x), ("w", &w), ("b", &b)] {
        let a = g_ours.get(var).unwrap();
        let e = g_ref.get(var).unwrap();
        assert_eq!(a.dims(), e.dims(), "{label}: ∂/∂{name} shape");
        let err = rel_diff(a, e);
        assert!(err < 1e-5, "{label}: ∂/∂{name} differs by {err}");
    }
}

#[test]
fn conv2d_matches_candle_forward_and_backward() {
    for (i, case) in CONV_CASES.into_iter().enumerate() {
        check_conv_against_candle(&format!("case {i}"), case, false, 10 * i as u64);
    }
}

#[test]
fn conv2d_without_bias_equals_zero_bias() {
    let x = randn(&[2, 3, 5, 5], DType::F32, 1);
    let w = randn(&[4, 3, 3, 3], DType::F32, 2);
    let zero = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
    let a = conv2d(&x, &w, None, 1, 1).unwrap();
    let b = conv2d(&x, &w, Some(&zero), 1, 1).unwrap();
    assert_eq!(rel_diff(&a, &b), 0.0);
}

/// An input that tracks no gradient (the U-Net's noisy image) gets none, and the weight
/// and bias gradients are still candle's.
#[test]
fn conv2d_skips_the_gradient_of_an_untracked_input() {
    let x = randn(&[2, 3, 6, 5], DType::F32, 31);
    let w = Var::from_tensor(&randn(&[4, 3, 3, 3], DType::F32, 32)).unwrap();
    let b = Var::from_tensor(&randn(&[4], DType::F32, 33)).unwrap();
    let r = randn(&[2, 4, 6, 5], DType::F32, 34);
    let ours = grads_of_weighted_sum(&conv2d(&x, &w, Some(&b), 1, 1).unwrap(), &r);
    let reference = x
        .conv2d(&w, 1, 1, 1, 1)
        .unwrap()
        .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
        .unwrap();
    let expected = grads_of_weighted_sum(&reference, &r);
    assert!(ours.get(&x).is_none());
    for (name, var) in [("w", &w), ("b", &b)] {
        let err = rel_diff(ours.get(var).unwrap(), expected.get(var).unwrap());
        assert!(err < 1e-5, "∂/∂{name} differs by {err}");
    }
}

/// A bias per sample and channel (B, O), as a residual block's time embedding uses it,
/// against candle's convolution plus a broadcast add, forward and backward, and against
/// finite differences in f64.
#[test]
fn conv2d_with_per_sample_bias() {
    for (i, case) in CONV_CASES.into_iter().enumerate().step_by(3) {
        let seed = 500 + 10 * i as u64;
        let label = format!("per-sample bias, case {i}");
        check_conv_against_candle(&label, case, true, seed);
        let (xs, ws, stride, padding) = case;
        let inputs = [
            randn(&xs, DType::F64, seed + 4),
            randn(&ws, DType::F64, seed + 5),
            randn(&[xs[0], ws[0]], DType::F64, seed + 6),
        ];
        check_gradients(
            &label,
            &inputs,
            &|t| conv2d(&t[0], &t[1], Some(&t[2]), stride, padding).unwrap(),
            seed + 7,
        );
    }
}

/// Central differences of L = Σ f(inputs)·r with respect to a few elements of each input,
/// against the analytic gradient. f64 throughout; step 1e-6, so truncation (∝ h²) and
/// rounding (∝ ε/h) errors are ~1e-10 relative: 1e-6 leaves a wide margin.
fn check_gradients(label: &str, inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Tensor, seed: u64) {
    check_gradients_with_step(label, inputs, f, seed, 1e-6)
}

/// [`check_gradients`] with central differences of step `h`.
fn check_gradients_with_step(
    label: &str,
    inputs: &[Tensor],
    f: &dyn Fn(&[Tensor]) -> Tensor,
    seed: u64,
    h: f64,
) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let as_tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&as_tensors);
    let r = randn(out.dims(), DType::F64, seed);
    let loss = |ts: &[Tensor]| -> f64 {
        (f(ts) * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let grads = grads_of_weighted_sum(&out, &r);
    for (k, var) in vars.iter().enumerate() {
        let analytic: Vec<f64> = grads
            .get(var)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = inputs[k].flatten_all().unwrap().to_vec1().unwrap();
        let n = base.len();
        for probe in 0..6.min(n) {
            let idx = (probe * 7919 + seed as usize) % n;
            let shifted = |delta: f64| {
                let mut values = base.clone();
                values[idx] += delta;
                let mut ts = inputs.to_vec();
                ts[k] = Tensor::from_vec(values, inputs[k].shape(), &Device::Cpu).unwrap();
                loss(&ts)
            };
            let numeric = (shifted(h) - shifted(-h)) / (2.0 * h);
            let err = (numeric - analytic[idx]).abs() / (1.0 + numeric.abs());
            assert!(
                err < 1e-6,
                "{label}: input {k} element {idx}: numeric {numeric} analytic {}",
                analytic[idx]
            );
        }
    }
}

/// A convolution is linear in each single element of x, w and b, so a central difference
/// has no truncation error at any step, and its rounding error falls as the step grows: with
/// 1e-6, the 64-channel cases' sums (L of magnitude ~2000) left 3e-6 of rounding noise in
/// the difference; with 1e-3, about 3e-9.
#[test]
fn conv2d_gradients_match_finite_differences() {
    for (i, (xs, ws, stride, padding)) in CONV_CASES.into_iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let inputs = [
            randn(&xs, DType::F64, seed),
            randn(&ws, DType::F64, seed + 1),
            randn(&[ws[0]], DType::F64, seed + 2),
        ];
        check_gradients_with_step(
            &format!("conv2d case {i}"),
            &inputs,
            &|t| conv2d(&t[0], &t[1], Some(&t[2]), stride, padding).unwrap(),
            seed + 3,
            1e-3,
        );
    }
}

/// (shape, groups)
const NORM_CASES: [(&[usize], usize); 4] = [
    (&[4, 8, 5, 5], 4),
    (&[3, 6, 7, 3], 6),
    (&[2, 4, 3, 3], 1),
    (&[1, 12, 2, 2], 3),
];

#[test]
fn group_norm_matches_candle() {
    for (i, (shape, groups)) in NORM_CASES.into_iter().enumerate() {
        let seed = 300 + 10 * i as u64;
        let c = shape[1];
        // Offset and scale the input so that the mean and variance matter.
        let x = randn(shape, DType::F32, seed).affine(3.0, 1.5).unwrap();
        let gamma = randn(&[c], DType::F32, seed + 1);
        let beta = randn(&[c], DType::F32, seed + 2);
        let reference = candle_nn::GroupNorm::new(gamma.clone(), beta.clone(), c, groups, 1e-5)
            .unwrap()
            .forward(&x)
            .unwrap();
        let ours = group_norm(&x, &gamma, &beta, groups, 1e-5, false).unwrap();
        let err = rel_diff(&ours, &reference);
        assert!(err < 1e-5, "case {i}: forward differs by {err}");
        let ours = group_norm(&x, &gamma, &beta, groups, 1e-5, true).unwrap();
        let err = rel_diff(&ours, &reference.silu().unwrap());
        assert!(err < 1e-5, "case {i}: forward with SiLU differs by {err}");
    }
}

#[test]
fn group_norm_gradients_match_finite_differences() {
    for (i, (shape, groups)) in NORM_CASES.into_iter().enumerate() {
        for silu in [false, true] {
            let seed = 500 + 10 * i as u64 + u64::from(silu);
            let c = shape[1];
            let inputs = [
                randn(shape, DType::F64, seed).affine(2.0, -0.5).unwrap(),
                randn(&[c], DType::F64, seed + 1),
                randn(&[c], DType::F64, seed + 2),
            ];
            check_gradients(
                &format!("group_norm case {i} silu {silu}"),
                &inputs,
                &|t| group_norm(&t[0], &t[1], &t[2], groups, 1e-5, silu).unwrap(),
                seed + 3,
            );
        }
    }
}

#[test]
fn softmax_matches_its_definition_and_finite_differences() {
    use ddpm_unet::cpu_ops::softmax_last_dim;
    for (i, (shape, scale)) in [
        (&[3usize, 5, 7][..], 1.0),
        (&[2, 130, 9][..], 0.25),
        (&[1, 4][..], 3.0),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 700 + 10 * i as u64;
        // Large logits: the max-shift must keep exp() finite.
        let x = randn(shape, DType::F32, seed).affine(20.0, 5.0).unwrap();
        let ours = softmax_last_dim(&x, scale).unwrap();
        let e = (x.affine(scale, 0.0).unwrap().to_dtype(DType::F64).unwrap()
            - x.affine(scale, 0.0)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .max_keepdim(candle_core::D::Minus1)
                .unwrap()
                .broadcast_as(shape)
                .unwrap())
        .unwrap()
        .exp()
        .unwrap();
        let reference = e
            .broadcast_div(&e.sum_keepdim(candle_core::D::Minus1).unwrap())
            .unwrap();
        let err = rel_diff(&ours, &reference);
        assert!(err < 1e-6, "case {i}: forward differs by {err}");
        let inputs = [randn(shape, DType::F64, seed + 1)];
        check_gradients(
            &format!("softmax case {i}"),
            &inputs,
            &|t| softmax_last_dim(&t[0], scale).unwrap(),
            seed + 2,
        );
    }
}

/// softmax(s·Q·Kᵀ)·V composed of candle's ops by hand, on (G, N, d) tokens: softmax over
/// the last dim, shifted by its detached maximum.
fn reference_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
    let s = q
        .matmul(&k.t().unwrap())
        .unwrap()
        .affine(scale, 0.0)
        .unwrap();
    let e = s
        .broadcast_sub(&s.max_keepdim(2).unwrap().detach())
        .unwrap()
        .exp()
        .unwrap();
    let p = e.broadcast_div(&e.sum_keepdim(2).unwrap()).unwrap();
    p.matmul(v).unwrap()
}

/// One attention case: `attend` against softmax(s·Q·Kᵀ)·V composed of candle's ops,
/// forward and backward (f32), and against finite differences (f64). Channels first, the
/// inputs are (G, d, N), and the reference works on their transposes.
fn check_attention(
    label: &str,
    shape: [usize; 3],
    scale: f64,
    channels_first: bool,
    attend: &dyn Fn(&Tensor, &Tensor, &Tensor, f64) -> Tensor,
    seed: u64,
) {
    let q = Var::from_tensor(&randn(&shape, DType::F32, seed)).unwrap();
    let k = Var::from_tensor(&randn(&shape, DType::F32, seed + 1)).unwrap();
    let v = Var::from_tensor(&randn(&shape, DType::F32, seed + 2)).unwrap();
    let ours = attend(&q, &k, &v, scale);
    assert_eq!(ours.dims(), shape, "{label}: output shape");
    let tokens = |t: &Tensor| {
        if channels_first {
            t.t().unwrap()
        } else {
            t.clone()
        }
    };
    let reference = tokens(&reference_attention(
        &tokens(&q),
        &tokens(&k),
        &tokens(&v),
        scale,
    ));
    let err = rel_diff(&ours, &reference);
    assert!(err < 1e-5, "{label}: forward differs by {err}");
    let r = randn(&shape, DType::F32, seed + 3);
    let (g_ours, g_ref) = (
        grads_of_weighted_sum(&ours, &r),
        grads_of_weighted_sum(&reference, &r),
    );
    for (name, var) in [("q", &q), ("k", &k), ("v", &v)] {
        let err = rel_diff(g_ours.get(var).unwrap(), g_ref.get(var).unwrap());
        assert!(err < 1e-5, "{label}: ∂/∂{name} differs by {err}");
    }
    let inputs = [
        randn(&shape, DType::F64, seed + 4),
        randn(&shape, DType::F64, seed + 5),
        randn(&shape, DType::F64, seed + 6),
    ];
    check_gradients(
        label,
        &inputs,
        &|t| attend(&t[0], &t[1], &t[2], scale),
        seed + 7,
    );
}

#[test]
fn attention_matches_candle_and_finite_differences() {
    use ddpm_unet::cpu_ops::attention;
    for (i, (shape, scale)) in [([3usize, 7, 4], 0.5), ([2, 19, 3], 0.3), ([1, 1, 2], 1.0)]
        .into_iter()
        .enumerate()
    {
        check_attention(
            &format!("attention case {i}"),
            shape,
            scale,
            false,
            &|q, k, v, s| attention(q, k, v, s).unwrap(),
            900 + 10 * i as u64,
        );
    }
}

/// Channels-first attention on (G, d, N).
#[test]
fn channels_first_attention_matches_candle_and_finite_differences() {
    use ddpm_unet::cpu_ops::attention_channels_first;
    for (i, (shape, scale)) in [([3usize, 4, 7], 0.5), ([2, 3, 19], 0.3), ([1, 2, 1], 1.0)]
        .into_iter()
        .enumerate()
    {
        check_attention(
            &format!("channels-first attention case {i}"),
            shape,
            scale,
            true,
            &|q, k, v, s| attention_channels_first(q, k, v, s).unwrap(),
            1900 + 10 * i as u64,
        );
    }
}

/// Multi-head attention on Q, K, V packed in one (B, 3·heads·d, N) tensor: each head against
/// softmax(s·Q_hᵀ·K_h)·V_hᵀ composed of candle's ops on the unpacked heads, forward and
/// backward (f32), and against finite differences (f64). Several samples and heads catch a
/// head or a part (q, k, v) read from or written to the wrong place; the last case has the
/// model's heads of 32 channels, and 37 tokens: a block of two 16-lane vectors of queries,
/// then a partial one, and keys past the kernels' 6-key steps.
#[test]
fn packed_qkv_attention_matches_candle_and_finite_differences() {
    use ddpm_unet::cpu_ops::attention_qkv;
    for (i, ([b, heads, d, n], scale)) in [
        ([2usize, 3, 4, 7], 0.5),
        ([3, 2, 3, 19], 0.3),
        ([1, 1, 2, 1], 1.0),
        ([2, 2, 32, 37], 0.18),
    ]
    .into_iter()
    .enumerate()
    {
        let label = format!("packed attention case {i}");
        let seed = 2900 + 10 * i as u64;
        let c = heads * d;
        let shape = [b, 3 * c, n];
        let qkv = Var::from_tensor(&randn(&shape, DType::F32, seed)).unwrap();
        let ours = attention_qkv(&qkv, heads, scale).unwrap();
        assert_eq!(ours.dims(), [b, c, n], "{label}: output shape");
        // Head h of part j (q, k, v) is channels j·C + h·d .. + d; as (B·heads, N, d) tokens.
        let part = |j: usize| {
            qkv.narrow(1, j * c, c)
                .unwrap()
                .reshape((b * heads, d, n))
                .unwrap()
                .t()
                .unwrap()
        };
        let reference = reference_attention(&part(0), &part(1), &part(2), scale)
            .t()
            .unwrap()
            .reshape((b, c, n))
            .unwrap();
        let err = rel_diff(&ours, &reference);
        assert!(err < 1e-5, "{label}: forward differs by {err}");
        let r = randn(&[b, c, n], DType::F32, seed + 1);
        let (g_ours, g_ref) = (
            grads_of_weighted_sum(&ours, &r),
            grads_of_weighted_sum(&reference, &r),
        );
        let err = rel_diff(g_ours.get(&qkv).unwrap(), g_ref.get(&qkv).unwrap());
        assert!(err < 1e-5, "{label}: ∂/∂qkv differs by {err}");
        check_gradients(
            &label,
            &[randn(&shape, DType::F64, seed + 2)],
            &|t| attention_qkv(&t[0], heads, scale).unwrap(),
            seed + 3,
        );
    }
}

/// The channel concatenation against `Tensor::cat`, forward (exactly: a copy) and backward
/// (each input's gradient its part of the weights r, exactly), on shapes with one and several
/// samples, and an input used twice, whose two gradients the store must add.
#[test]
fn concat_channels_matches_candle_cat() {
    use ddpm_unet::cpu_ops::concat_channels;
    for (i, (a_shape, c2)) in [
        ([1usize, 2, 3, 5], 3usize),
        ([4, 5, 2, 2], 1),
        ([3, 1, 7, 4], 6),
    ]
    .into_iter()
    .enumerate()
    {
        let label = format!("concat case {i}");
        let seed = 3100 + 10 * i as u64;
        let [b, c1, h, w] = a_shape;
        let a = Var::from_tensor(&randn(&a_shape, DType::F32, seed)).unwrap();
        let other = Var::from_tensor(&randn(&[b, c2, h, w], DType::F32, seed + 1)).unwrap();
        let ours = concat_channels(&a, &other).unwrap();
        let reference = Tensor::cat(&[a.as_tensor(), other.as_tensor()], 1).unwrap();
        assert_eq!(ours.dims(), [b, c1 + c2, h, w], "{label}: shape");
        assert_eq!(rel_diff(&ours, &reference), 0.0, "{label}: forward");
        let r = randn(&[b, c1 + c2, h, w], DType::F32, seed + 2);
        let (g_ours, g_ref) = (
            grads_of_weighted_sum(&ours, &r),
            grads_of_weighted_sum(&reference, &r),
        );
        for (name, var) in [("a", &a), ("b", &other)] {
            let (got, want) = (g_ours.get(var).unwrap(), g_ref.get(var).unwrap());
            assert_eq!(got.dims(), var.dims(), "{label}: ∂/∂{name} shape");
            assert_eq!(rel_diff(got, want), 0.0, "{label}: ∂/∂{name}");
        }
        // [a; a]: ∂/∂a is the sum of both parts.
        let twice = concat_channels(&a, &a).unwrap();
        let r = randn(&[b, 2 * c1, h, w], DType::F32, seed + 3);
        let g = grads_of_weighted_sum(&twice, &r);
        let want = (r.narrow(1, 0, c1).unwrap() + r.narrow(1, c1, c1).unwrap()).unwrap();
        assert!(
            rel_diff(g.get(&a).unwrap(), &want) < 1e-7,
            "{label}: [a; a]"
        );
    }
    // No channels on one side: the other, unchanged.
    let b = randn(&[2, 3, 3, 5], DType::F32, 3190);
    let none = Tensor::zeros((2, 0, 3, 5), DType::F32, &Device::Cpu).unwrap();
    for joined in [concat_channels(&none, &b), concat_channels(&b, &none)] {
        assert_eq!(
            rel_diff(&joined.unwrap(), &b),
            0.0,
            "concat with no channels"
        );
    }
}

/// The convolution that adds a residual as it writes its output, against candle's
/// convolution plus the bias and the residual (f32, forward and all four gradients), on each
/// of the kernel's paths: Winograd, 1×1, the horizontal taps, the general unfolding with
/// stride 2, the transposed forward; with and without a bias. And by f64 finite differences.
#[test]
fn conv2d_residual_matches_candle() {
    use ddpm_unet::cpu_ops::conv2d_residual;
    let cases = [
        ([2usize, 16, 10, 20], [16usize, 16, 3, 3], 1usize, 1usize),
        ([3, 20, 9, 9], [48, 20, 1, 1], 1, 0),
        ([3, 4, 5, 6], [4, 4, 3, 3], 1, 1),
        ([2, 3, 9, 33], [4, 3, 3, 3], 2, 1),
        ([2, 32, 7, 9], [64, 32, 5, 5], 1, 2),
    ];
    for (i, (xs, ws, stride, padding)) in cases.into_iter().enumerate() {
        for with_bias in [true, false] {
            let label = format!("residual case {i}, bias {with_bias}");
            let seed = 3300 + 10 * i as u64;
            let x = Var::from_tensor(&randn(&xs, DType::F32, seed)).unwrap();
            let w = Var::from_tensor(&randn(&ws, DType::F32, seed + 1)).unwrap();
            let b = Var::from_tensor(&randn(&[ws[0]], DType::F32, seed + 2)).unwrap();
            let bias = with_bias.then_some(b.as_tensor());
            let plain = x.conv2d(&w, padding, stride, 1, 1).unwrap();
            let res = Var::from_tensor(&randn(plain.dims(), DType::F32, seed + 3)).unwrap();
            let ours = conv2d_residual(&x, &w, bias, &res, stride, padding).unwrap();
            let mut reference = (plain + res.as_tensor()).unwrap();
            if with_bias {
                reference = reference
                    .broadcast_add(&b.reshape((1, ws[0], 1, 1)).unwrap())
                    .unwrap();
            }
            assert_eq!(ours.dims(), reference.dims(), "{label}");
            let err = rel_diff(&ours, &reference);
            assert!(err < 1e-5, "{label}: forward differs by {err}");
            let r = randn(reference.dims(), DType::F32, seed + 4);
            let (g_ours, g_ref) = (
                grads_of_weighted_sum(&ours, &r),
                grads_of_weighted_sum(&reference, &r),
            );
            let mut vars = vec![("x", &x), ("w", &w), ("residual", &res)];
            if with_bias {
                vars.push(("b", &b));
            }
            for (name, var) in vars {
                let (a, e) = (g_ours.get(var).unwrap(), g_ref.get(var).unwrap());
                assert_eq!(a.dims(), e.dims(), "{label}: ∂/∂{name} shape");
                let err = rel_diff(a, e);
                assert!(err < 1e-5, "{label}: ∂/∂{name} differs by {err}");
            }
        }
    }
    // f64, against finite differences: a Winograd shape and a 1×1 one.
    for (i, (xs, ws, padding)) in [
        ([2usize, 2, 8, 8], [3usize, 2, 3, 3], 1usize),
        ([2, 3, 4, 5], [2, 3, 1, 1], 0),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 3400 + 10 * i as u64;
        let ys = [xs[0], ws[0], xs[2], xs[3]];
        check_gradients(
            &format!("residual case {i}, f64"),
            &[
                randn(&xs, DType::F64, seed),
                randn(&ws, DType::F64, seed + 1),
                randn(&[ws[0]], DType::F64, seed + 2),
                randn(&ys, DType::F64, seed + 3),
            ],
            &|t| conv2d_residual(&t[0], &t[1], Some(&t[2]), &t[3], 1, padding).unwrap(),
            seed + 4,
        );
    }
}
