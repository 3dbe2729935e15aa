//! The optimizer, clipping, warm-up and EMA against numbers computed independently:
//! PyTorch 2.15's `torch.optim.AdamW` and `clip_grad_norm_` on the same inputs (f64), and
//! hand-evaluated formulas.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use ddpm_train::{clip_grad_norm, AdamW, AdamWConfig, Ema, StepForm, WarmupSchedule};

fn var(values: &[f64]) -> Var {
    Var::from_tensor(&Tensor::new(values, &Device::Cpu).unwrap()).unwrap()
}

/// A GradStore holding `g` for `v`: the gradient of Σ g·v.
fn grads_for(pairs: &[(&Var, &[f64])]) -> GradStore {
    let mut loss = Tensor::new(0f64, &Device::Cpu).unwrap();
    for (v, g) in pairs {
        let g = Tensor::new(*g, &Device::Cpu).unwrap();
        loss = (loss + (v.as_tensor() * g).unwrap().sum_all().unwrap()).unwrap();
    }
    loss.backward().unwrap()
}

fn values(v: &Var) -> Vec<f64> {
    v.as_tensor().to_vec1::<f64>().unwrap()
}

// The reference values are PyTorch's printed 17-digit reprs, kept verbatim.
#[allow(clippy::excessive_precision)]
#[test]
fn adamw_matches_pytorch() {
    let theta = var(&[1.0, -2.0, 0.3]);
    let config = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let mut opt = AdamW::new(
        HashMap::from([("theta".to_string(), theta.clone())]),
        config,
    )
    .unwrap();
    let grads = [[0.5, -0.1, 0.0], [0.2, 0.3, -1.0], [-0.4, 0.05, 2.0]];
    // torch.optim.AdamW(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01), f64.
    let torch = [
        [0.89900000199999996, -1.898000009999999, 0.29969999999999997],
        [
            0.80824348390092815,
            -1.9455209911100655,
            0.37381398130459292,
        ],
        [
            0.78980735472230412,
            -1.9912891857410102,
            0.34201155061724142,
        ],
    ];
    for (g, want) in grads.iter().zip(torch) {
        opt.step(&grads_for(&[(&theta, g)]), 0.1).unwrap();
        for (got, want) in values(&theta).iter().zip(want) {
            assert!((got - want).abs() < 1e-14, "{got} vs {want}");
        }
    }
    assert_eq!(opt.steps(), 3);
}

#[test]
fn adamw_state_restores_exactly() {
    let config = AdamWConfig::default();
    let (a, b) = (var(&[0.5, 1.5]), var(&[0.5, 1.5]));
    let mut opt_a = AdamW::new(HashMap::from([("w".to_string(), a.clone())]), config).unwrap();
    opt_a.step(&grads_for(&[(&a, &[0.3, -0.7])]), 0.01).unwrap();
    // A second optimizer over an equal variable, restored from the first's state.
    b.set(a.as_tensor()).unwrap();
    let mut opt_b = AdamW::new(HashMap::from([("w".to_string(), b.clone())]), config).unwrap();
    opt_b.load_state(&opt_a.state(), opt_a.steps()).unwrap();
    for g in [[0.1, 0.2], [-0.5, 0.4]] {
        opt_a.step(&grads_for(&[(&a, &g)]), 0.01).unwrap();
        opt_b.step(&grads_for(&[(&b, &g)]), 0.01).unwrap();
    }
    assert_eq!(values(&a), values(&b));
    let err = opt_b.load_state(&HashMap::new(), 0).err().unwrap();
    assert!(err.to_string().contains("missing m.w"), "{err}");
}

/// The moments of all variables live in two flat vectors: a variable without a gradient
/// keeps its value and its moments (PyTorch skips it), and the others step exactly as they
/// would alone.
#[test]
fn adamw_leaves_a_variable_without_gradient_alone() {
    let config = AdamWConfig {
        weight_decay: 0.01,
        ..AdamWConfig::default()
    };
    let (a, b, alone) = (var(&[0.5, 1.5]), var(&[-1.0, 2.0, 3.0]), var(&[0.5, 1.5]));
    let mut opt = AdamW::new(
        HashMap::from([("a".to_string(), a.clone()), ("b".to_string(), b.clone())]),
        config,
    )
    .unwrap();
    let mut opt_alone =
        AdamW::new(HashMap::from([("a".to_string(), alone.clone())]), config).unwrap();
    // Step 1 moves both; step 2 has no gradient for b; step 3 moves both again.
    opt.step(
        &grads_for(&[(&a, &[0.3, -0.7]), (&b, &[1.0, 0.5, -2.0])]),
        0.1,
    )
    .unwrap();
    opt_alone
        .step(&grads_for(&[(&alone, &[0.3, -0.7])]), 0.1)
        .unwrap();
    let (b_before, state_before) = (values(&b), opt.state());
    opt.step(&grads_for(&[(&a, &[0.1, 0.2])]), 0.1).unwrap();
    opt_alone
        .step(&grads_for(&[(&alone, &[0.1, 0.2])]), 0.1)
        .unwrap();
    assert_eq!(values(&b), b_before, "b moved without a gradient");
    let state = opt.state();
    for key in ["m.b", "v.b"] {
        assert_eq!(
            state[key].to_vec1::<f64>().unwrap(),
            state_before[key].to_vec1::<f64>().unwrap(),
            "{key} changed without a gradient"
        );
    }
    assert_eq!(
        values(&a),
        values(&alone),
        "a differs from a lone optimizer's"
    );
    assert_eq!(
        state["m.a"].to_vec1::<f64>().unwrap(),
        opt_alone.state()["m.a"].to_vec1::<f64>().unwrap()
    );
    assert_eq!(state["m.b"].dims(), [3]);
    opt.step(
        &grads_for(&[(&a, &[0.2, 0.2]), (&b, &[0.5, 0.5, 0.5])]),
        0.1,
    )
    .unwrap();
    assert_ne!(values(&b), b_before);
}

/// The three forms of the step (per variable, grouped in flat vectors as off the CPU, and
/// fused as on the CPU) compute every element with the same operations: the same values
/// and moments, bit for bit, in f64 and f32, over steps with and without a variable's
/// gradient, with and without weight decay; and one form's state restores into another.
#[test]
fn adamw_step_forms_agree_bit_for_bit() {
    let forms = [StepForm::PerVariable, StepForm::Grouped, StepForm::Fused];
    for (dtype, weight_decay) in [(DType::F64, 0.01), (DType::F32, 0.01), (DType::F32, 0.0)] {
        let config = AdamWConfig {
            weight_decay,
            ..AdamWConfig::default()
        };
        let typed = |values: &[f64]| {
            let t = Tensor::new(values, &Device::Cpu).unwrap();
            Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap()
        };
        let make = |form: StepForm| {
            // Sizes around the 8-element chunks and a larger variable.
            let a = typed(&[0.5, 1.5, -0.25]);
            let b = typed(&(0..37).map(|i| (i as f64 * 0.37).sin()).collect::<Vec<_>>());
            let opt = AdamW::new(
                HashMap::from([("a".to_string(), a.clone()), ("b".to_string(), b.clone())]),
                config,
            )
            .unwrap()
            .with_step_form(form);
            (a, b, opt)
        };
        let read = |t: &Tensor| t.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
        // The gradient of Σ g·v, in v's type.
        let grads = |pairs: &[(&Var, Vec<f64>)]| {
            let mut loss = Tensor::new(0f64, &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            for (v, g) in pairs {
                let g = Tensor::new(g.as_slice(), &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                loss = (loss + (v.as_tensor() * g).unwrap().sum_all().unwrap()).unwrap();
            }
            loss.backward().unwrap()
        };
        let gb = |k: f64| {
            (0..37)
                .map(|i| (i as f64 * k).cos() * 3.0)
                .collect::<Vec<_>>()
        };
        let mut runs: Vec<_> = forms.iter().map(|&form| make(form)).collect();
        let steps: [(Vec<f64>, Option<Vec<f64>>); 4] = [
            (vec![0.3, -0.7, 0.1], Some(gb(0.5))),
            (vec![0.1, 0.2, 0.3], None),
            (vec![-0.4, 0.2, 0.9], Some(gb(1.3))),
            (vec![0.0, 1.0, -1.0], Some(gb(-0.2))),
        ];
        for (i, (ga, gb)) in steps.iter().enumerate() {
            for (a, b, opt) in &mut runs {
                let grads = match gb {
                    Some(gb) => grads(&[(a, ga.clone()), (b, gb.clone())]),
                    None => grads(&[(a, ga.clone())]),
                };
                opt.step(&grads, 0.05).unwrap();
            }
            let (a1, b1, first) = &runs[0];
            for ((a, b, opt), form) in runs[1..].iter().zip(&forms[1..]) {
                let label = format!("{dtype:?}, λ {weight_decay}, step {i}, {form:?}");
                assert_eq!(read(a1.as_tensor()), read(a.as_tensor()), "a: {label}");
                assert_eq!(read(b1.as_tensor()), read(b.as_tensor()), "b: {label}");
                let (s1, s2) = (first.state(), opt.state());
                for key in ["m.a", "v.a", "m.b", "v.b"] {
                    assert_eq!(read(&s1[key]), read(&s2[key]), "{key}: {label}");
                }
            }
        }
        // Fused → per variable, and per variable → grouped, from the same state.
        for (from, to) in [(2, 0), (0, 1)] {
            let (a_to, b_to, mut restored) = make(forms[to]);
            let (a_from, b_from, opt_from) = &mut runs[from];
            a_to.set(a_from.as_tensor()).unwrap();
            b_to.set(b_from.as_tensor()).unwrap();
            restored
                .load_state(&opt_from.state(), opt_from.steps())
                .unwrap();
            opt_from
                .step(&grads(&[(a_from, vec![0.2; 3]), (b_from, gb(0.9))]), 0.05)
                .unwrap();
            restored
                .step(&grads(&[(&a_to, vec![0.2; 3]), (&b_to, gb(0.9))]), 0.05)
                .unwrap();
            assert_eq!(
                read(a_from.as_tensor()),
                read(a_to.as_tensor()),
                "{dtype:?}"
            );
            assert_eq!(
                read(b_from.as_tensor()),
                read(b_to.as_tensor()),
                "{dtype:?}"
            );
        }
    }
}

#[allow(clippy::excessive_precision)]
#[test]
fn clipping_matches_pytorch() {
    let (a, b) = (var(&[0.0, 0.0]), var(&[0.0]));
    // ‖(3, 4, 12)‖ = 13; clipped to 6.5 by the factor 6.5/(13 + 1e-6).
    let mut grads = grads_for(&[(&a, &[3.0, 4.0]), (&b, &[12.0])]);
    let norm = clip_grad_norm(&mut grads, &[a.clone(), b.clone()], 6.5).unwrap();
    assert_eq!(norm, 13.0);
    let got: Vec<f64> = [&a, &b]
        .iter()
        .flat_map(|v| grads.get(v.as_tensor()).unwrap().to_vec1::<f64>().unwrap())
        .collect();
    let torch = [1.4999998846153937, 1.9999998461538582, 5.9999995384615747];
    for (g, t) in got.iter().zip(torch) {
        assert!((g - t).abs() < 1e-14, "{g} vs {t}");
    }
    // Under the limit nothing changes.
    let mut grads = grads_for(&[(&a, &[0.3, 0.4])]);
    clip_grad_norm(&mut grads, std::slice::from_ref(&a), 1.0).unwrap();
    assert_eq!(
        grads.get(a.as_tensor()).unwrap().to_vec1::<f64>().unwrap(),
        vec![0.3, 0.4]
    );
}

#[test]
fn warmup_is_linear_then_constant() {
    let s = WarmupSchedule {
        lr: 2e-4,
        warmup_steps: 5000,
    };
    assert_eq!(s.at(1), 2e-4 / 5000.0);
    assert_eq!(s.at(2500), 1e-4);
    assert_eq!(s.at(5000), 2e-4);
    assert_eq!(s.at(90_000), 2e-4);
    assert_eq!(
        WarmupSchedule {
            lr: 1e-3,
            warmup_steps: 0
        }
        .at(1),
        1e-3
    );
}

#[test]
fn ema_copies_before_its_start_then_averages() {
    let w = var(&[1.0, 2.0]);
    let vars = HashMap::from([("w".to_string(), w.clone())]);
    let mut ema = Ema::new(&vars, 0.9, 3).unwrap();
    w.set(&Tensor::new(&[3.0f64, 4.0], &Device::Cpu).unwrap())
        .unwrap();
    ema.update(&vars, 2).unwrap(); // before the start: a copy
    assert_eq!(ema.tensors()["w"].to_vec1::<f64>().unwrap(), vec![3.0, 4.0]);
    w.set(&Tensor::new(&[13.0f64, -6.0], &Device::Cpu).unwrap())
        .unwrap();
    ema.update(&vars, 3).unwrap(); // 0.9·(3, 4) + 0.1·(13, −6) = (4, 3)
    let got = ema.tensors()["w"].to_vec1::<f64>().unwrap();
    assert!(
        (got[0] - 4.0).abs() < 1e-12 && (got[1] - 3.0).abs() < 1e-12,
        "{got:?}"
    );
    // The average is a copy: changing the weights later does not change it.
    w.set(&Tensor::zeros(2, DType::F64, &Device::Cpu).unwrap())
        .unwrap();
    assert!((ema.tensors()["w"].to_vec1::<f64>().unwrap()[0] - 4.0).abs() < 1e-12);
}

/// Warm-up: d_t = min(d, (1 + t)/(10 + t)), computed by hand.
#[test]
fn ema_warmup_follows_the_weights_early() {
    let w = var(&[1.0, 2.0]);
    let vars = HashMap::from([("w".to_string(), w.clone())]);
    let mut ema = Ema::new(&vars, 0.999, 0).unwrap().with_warmup(true);
    assert!((ema.decay_at(1) - 2.0 / 11.0).abs() < 1e-15);
    assert!((ema.decay_at(1000) - 1001.0 / 1010.0).abs() < 1e-15);
    assert_eq!(ema.decay_at(100_000), 0.999);
    w.set(&Tensor::new(&[11.0f64, 2.0], &Device::Cpu).unwrap())
        .unwrap();
    ema.update(&vars, 1).unwrap(); // (2/11)·(1, 2) + (9/11)·(11, 2) = (9 + 2/11, 2)
    let got = ema.tensors()["w"].to_vec1::<f64>().unwrap();
    assert!(
        (got[0] - (9.0 + 2.0 / 11.0)).abs() < 1e-12 && (got[1] - 2.0).abs() < 1e-12,
        "{got:?}"
    );
    // Without warm-up the decay is constant.
    assert_eq!(Ema::new(&vars, 0.999, 0).unwrap().decay_at(1), 0.999);
}

/// The averages are outside autograd, at the start and after updates: a tracked average
/// would hold every earlier average alive through its graph (a leak of three copies of the
/// weights a step, which ran a training run out of memory).
#[test]
fn ema_averages_are_not_tracked() {
    let w = var(&[1.0, 2.0]);
    let vars = HashMap::from([("w".to_string(), w.clone())]);
    let mut ema = Ema::new(&vars, 0.5, 0).unwrap();
    assert!(!ema.tensors()["w"].track_op());
    for step in 1..=3 {
        ema.update(&vars, step).unwrap();
        assert!(!ema.tensors()["w"].track_op(), "tracked after step {step}");
    }
}

/// A gradient that candle leaves attached to the forward graph (a variable's gradient through
/// candle's own ops: here ∂L/∂w = x·dy with x computed from another variable) must not attach
/// the moments: each step's moment would hold that step's forward pass and the previous
/// moment, every step's activations (f32 training on CUDA ran out of memory in 7 to 28
/// steps). Checked with clipping that rescales the gradients (one pass or tensor ops), and
/// without (AdamW alone, in each of its three forms).
#[test]
fn adamw_moments_and_clipped_gradients_are_not_tracked() {
    let forms = [
        (Some(1e-3), StepForm::Fused),
        (Some(1e-3), StepForm::PerVariable),
        (None, StepForm::PerVariable),
        (None, StepForm::Grouped),
        (None, StepForm::Fused),
    ];
    for (clip, form) in forms {
        let (w, u) = (var(&[1.0, 2.0]), var(&[0.5, -1.5]));
        let mut opt = AdamW::new(
            HashMap::from([("w".to_string(), w.clone()), ("u".to_string(), u.clone())]),
            AdamWConfig::default(),
        )
        .unwrap()
        .with_step_form(form);
        for step in 1..=3 {
            let x = (u.as_tensor() * 3.0).unwrap();
            let loss = (w.as_tensor() * &x)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            let mut grads = loss.backward().unwrap();
            assert!(
                grads.get(w.as_tensor()).unwrap().track_op(),
                "the premise: candle leaves this gradient attached"
            );
            if let Some(max) = clip {
                clip_grad_norm(&mut grads, &[w.clone(), u.clone()], max).unwrap();
                assert!(
                    !grads.get(w.as_tensor()).unwrap().track_op(),
                    "clipped gradient tracked at step {step}"
                );
            }
            opt.step(&grads, 0.1).unwrap();
            for (name, moment) in opt.state() {
                assert!(
                    !moment.track_op(),
                    "{name} tracked after step {step}, clip {clip:?}, {form:?}"
                );
            }
        }
    }
}
