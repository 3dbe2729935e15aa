//! The backward pass against finite differences in f64, on a tiny configuration that has
//! every kind of layer: convolutions, GroupNorm, multi-head attention, the time MLP, the
//! class embedding, down- and upsampling, 1×1 shortcuts.
//!
//! Central differences with h = 1e-6 in f64 have truncation error O(h²) ≈ 1e-12, and the
//! rounding error of the two loss evaluations divided by 2h: the loss (a sum of 32 outputs of
//! a few thousand operations each, of order 1–10) rounds to about 1e-14, which gives
//! differences off by up to about 1e-8. The analytic gradient must meet a 1e-4 relative
//! tolerance against max(|numeric|, |analytic|, 1e-4), so an absolute 1e-8 where the
//! gradient is below 1e-4. (With a floor of 1e-6, two runs in 95 failed on a
//! gradient near 6e-6 off by 2.6e-9: the initialisation is random, as candle's CPU generator
//! cannot be seeded.) A dropped or overwritten gradient (candle 0.11's fused softmax, fast
//! norms, `upsample_nearest2d`) is off by O(1).

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use ddpm_unet::{upsample_nearest_2x, DownBlockKind, UNet, UNetConfig, UpBlockKind};

fn tiny() -> UNetConfig {
    UNetConfig {
        in_channels: 1,
        out_channels: 1,
        block_out_channels: vec![8, 16],
        layers_per_block: 1,
        down_block_types: vec![DownBlockKind::DownBlock2D, DownBlockKind::AttnDownBlock2D],
        up_block_types: vec![UpBlockKind::AttnUpBlock2D, UpBlockKind::UpBlock2D],
        add_attention: true,
        norm_num_groups: 4,
        norm_eps: 1e-5,
        dropout: 0.0,
        flip_sin_to_cos: true,
        freq_shift: 0,
        attention_head_dim: Some(8),
        downsample_padding: 1,
        num_class_embeds: Some(3),
        sample_size: Some(4),
    }
}

struct Problem {
    unet: UNet,
    varmap: VarMap,
    x: Var,
    t: Tensor,
    y: Tensor,
    weights: Tensor,
}

impl Problem {
    fn new() -> Self {
        let dev = Device::Cpu;
        let (unet, varmap) = UNet::init(&tiny(), DType::F64, &dev).unwrap();
        // Non-trivial norms: perturb every GroupNorm scale and bias away from 1 and 0.
        for (name, var) in varmap.data().lock().unwrap().iter() {
            if name.contains("norm") {
                let noise = Tensor::randn(0f64, 0.3, var.shape(), &dev).unwrap();
                var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
            }
        }
        let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, 1, 4, 4), &dev).unwrap()).unwrap();
        let weights = Tensor::randn(0f64, 1.0, (2, 1, 4, 4), &dev).unwrap();
        let t = Tensor::new(&[7u32, 420], &dev).unwrap();
        let y = Tensor::new(&[0u32, 2], &dev).unwrap();
        Self {
            unet,
            varmap,
            x,
            t,
            y,
            weights,
        }
    }

    /// L = Σ w ⊙ ε_θ(x, t, y), a scalar whose gradient reaches every weight.
    fn loss(&self) -> Tensor {
        let out = self
            .unet
            .forward(self.x.as_tensor(), &self.t, Some(&self.y), false)
            .unwrap();
        (out * &self.weights).unwrap().sum_all().unwrap()
    }

    fn loss_value(&self) -> f64 {
        self.loss().to_scalar::<f64>().unwrap()
    }
}

/// Central difference of the loss along coordinate `i` of `var`.
fn numeric(problem: &Problem, var: &Var, i: usize) -> f64 {
    let h = 1e-6;
    let original = var
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let shifted = |delta: f64| {
        let mut v = original.clone();
        v[i] += delta;
        var.set(&Tensor::from_vec(v, var.shape(), var.device()).unwrap())
            .unwrap();
        problem.loss_value()
    };
    let (plus, minus) = (shifted(h), shifted(-h));
    var.set(&Tensor::from_vec(original, var.shape(), var.device()).unwrap())
        .unwrap();
    (plus - minus) / (2.0 * h)
}

fn check(name: &str, var: &Var, analytic: &Tensor, problem: &Problem) {
    let analytic = analytic.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let n = analytic.len();
    // Coordinates spread over the tensor, always including the first and last.
    let picks: Vec<usize> = (0..4).map(|k| k * (n - 1) / 3).collect();
    for i in picks {
        let num = numeric(problem, var, i);
        let scale = num.abs().max(analytic[i].abs()).max(1e-4);
        let rel = (num - analytic[i]).abs() / scale;
        assert!(
            rel < 1e-4,
            "{name}[{i}]: analytic {} vs numeric {num} (relative error {rel:e})",
            analytic[i]
        );
    }
}

#[test]
fn gradients_match_finite_differences_for_every_kind_of_layer() {
    let problem = Problem::new();
    let grads = problem.loss().backward().unwrap();
    check(
        "input",
        &problem.x,
        grads.get(&problem.x).unwrap(),
        &problem,
    );
    let data = problem.varmap.data().lock().unwrap().clone();
    let names = [
        "conv_in.weight",
        "time_embedding.linear_1.weight",
        "time_embedding.linear_2.bias",
        "class_embedding.weight",
        "down_blocks.0.resnets.0.norm1.weight",
        "down_blocks.0.resnets.0.conv1.weight",
        "down_blocks.0.resnets.0.time_emb_proj.weight",
        "down_blocks.0.resnets.0.norm2.bias",
        "down_blocks.0.downsamplers.0.conv.weight",
        "down_blocks.1.resnets.0.conv_shortcut.weight",
        "down_blocks.1.attentions.0.group_norm.weight",
        "down_blocks.1.attentions.0.to_q.weight",
        "down_blocks.1.attentions.0.to_k.weight",
        "down_blocks.1.attentions.0.to_v.bias",
        "down_blocks.1.attentions.0.to_out.0.weight",
        "mid_block.attentions.0.to_q.weight",
        "mid_block.resnets.1.conv2.weight",
        "up_blocks.0.resnets.1.conv1.weight",
        "up_blocks.0.attentions.1.to_k.weight",
        "up_blocks.0.upsamplers.0.conv.weight",
        "up_blocks.1.resnets.0.conv_shortcut.bias",
        "conv_norm_out.weight",
        "conv_out.weight",
    ];
    for name in names {
        let var = data
            .get(name)
            .unwrap_or_else(|| panic!("no variable {name}"));
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        check(name, var, grad, &problem);
    }
}

#[test]
fn every_parameter_receives_a_gradient() {
    let problem = Problem::new();
    let grads = problem.loss().backward().unwrap();
    let data = problem.varmap.data().lock().unwrap();
    assert!(data.len() > 50);
    for (name, var) in data.iter() {
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        let norm = grad
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(norm > 0.0, "{name} has a zero gradient");
    }
}

/// Nearest upsampling copies each pixel to a 2×2 block (checked against candle's forward) and
/// its backward sums the gradients of the four copies (computed here by hand), over several
/// samples and channels.
#[test]
fn upsampling_sums_the_gradients_of_the_copies() {
    let dev = Device::Cpu;
    let (b, c, h, w) = (2, 3, 2, 3);
    let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (b, c, h, w), &dev).unwrap()).unwrap();
    let up = upsample_nearest_2x(x.as_tensor()).unwrap();
    let reference = x.as_tensor().upsample_nearest2d(2 * h, 2 * w).unwrap();
    let diff = (&up - &reference)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert_eq!(
        diff, 0.0,
        "forward differs from candle's upsample_nearest2d"
    );

    let weights = Tensor::randn(0f64, 1.0, (b, c, 2 * h, 2 * w), &dev).unwrap();
    let loss = (up * &weights).unwrap().sum_all().unwrap();
    let grad = loss
        .backward()
        .unwrap()
        .get(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let wv = weights.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    for (p, g) in grad.iter().enumerate() {
        let (plane, i, j) = (p / (h * w), p % (h * w) / w, p % w);
        let want: f64 = (0..2)
            .flat_map(|a| (0..2).map(move |d| (2 * i + a) * 2 * w + 2 * j + d))
            .map(|k| wv[plane * 4 * h * w + k])
            .sum();
        assert!((g - want).abs() < 1e-12, "element {p}: {g} vs {want}");
    }
}
