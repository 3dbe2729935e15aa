//! The forward process, the training loss, the reverse step and reproducibility, against
//! formulas evaluated here in f64.

mod common;

use candle_core::{Device, Tensor};
use common::{cpu, mean_std, values};
use ddpm_diffusion::{
    ClassifierFreeGuidance, DiffusionError, GaussianDiffusion, LossWeighting, NoiseRng, Objective,
    ReverseVariance, SampleOptions, Sampler,
};
use ddpm_schedule::{BetaSchedule, NoiseSchedule, Spacing};

fn linear() -> NoiseSchedule {
    NoiseSchedule::new(BetaSchedule::linear(), 1000).unwrap()
}

/// ᾱ_t of the paper's linear schedule, from its definition.
fn linear_alpha_bar(t: usize) -> f64 {
    (1..=t)
        .map(|s| 1.0 - (1e-4 + (0.02 - 1e-4) * (s - 1) as f64 / 999.0))
        .product()
}

#[test]
fn q_sample_has_the_closed_form_moments() {
    // 200,000 draws per t: the mean's standard error is √(1−ᾱ)/√n and the variance's is
    // (1−ᾱ)·√(2/n); 5 standard errors each.
    let n = 200_000;
    let x0_value = 0.8f32;
    let diffusion = GaussianDiffusion::epsilon(linear(), &cpu()).unwrap();
    let mut rng = NoiseRng::new(3);
    for t in [1usize, 10, 300, 700, 1000] {
        let x0 = Tensor::full(x0_value, (n, 1), &cpu()).unwrap();
        let noise = rng.randn((n, 1), &cpu()).unwrap();
        let ts = Tensor::full(t as u32, n, &cpu()).unwrap();
        let xt = diffusion.q_sample(&x0, &ts, &noise).unwrap();
        let (mean, std) = mean_std(&values(&xt));
        let ab = linear_alpha_bar(t);
        let want_var = 1.0 - ab;
        assert!(
            (mean - ab.sqrt() * 0.8).abs() < 5.0 * want_var.sqrt() / (n as f64).sqrt(),
            "t={t}: mean {mean}"
        );
        assert!(
            (std * std - want_var).abs() < 5.0 * want_var * (2.0 / n as f64).sqrt(),
            "t={t}: var {}",
            std * std
        );
    }
}

#[test]
fn q_sample_is_exact_per_sample_and_t_zero_is_the_data() {
    let diffusion = GaussianDiffusion::epsilon(linear(), &cpu()).unwrap();
    let x0 = Tensor::new(&[[0.5f32, -0.25], [1.0, 0.0], [0.1, 0.2]], &cpu()).unwrap();
    let eps = Tensor::new(&[[1.0f32, 2.0], [-1.0, 0.5], [0.3, 0.3]], &cpu()).unwrap();
    let t = Tensor::new(&[0u32, 1, 1000], &cpu()).unwrap();
    let xt = diffusion
        .q_sample(&x0, &t, &eps)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(xt[0], vec![0.5, -0.25]);
    for (row, tt) in [(1usize, 1usize), (2, 1000)] {
        let ab = linear_alpha_bar(tt);
        let x = x0.get(row).unwrap().to_vec1::<f32>().unwrap();
        let e = eps.get(row).unwrap().to_vec1::<f32>().unwrap();
        for j in 0..2 {
            let want = ab.sqrt() * x[j] as f64 + (1.0 - ab).sqrt() * e[j] as f64;
            assert!(
                (xt[row][j] as f64 - want).abs() < 1e-6,
                "row {row}: {} vs {want}",
                xt[row][j]
            );
        }
    }
    let bad = Tensor::new(&[0u32, 1, 1001], &cpu()).unwrap();
    assert!(matches!(
        diffusion.q_sample(&x0, &bad, &eps),
        Err(DiffusionError::TimestepOutOfRange {
            value: 1001,
            timesteps: 1000
        })
    ));
}

#[test]
fn a_perfect_predictor_has_zero_loss_and_sees_t_minus_one() {
    // The model knows x_0 and recovers the noise from x_t, reading ᾱ at the 0-based index it
    // is given: if the network were fed t instead of t − 1, the loss would not vanish.
    let schedule = linear();
    let x0 = Tensor::new(&[[0.3f32, -0.7, 0.1], [0.9, 0.2, -0.4]], &cpu())
        .unwrap()
        .repeat((64, 1))
        .unwrap();
    for objective in [Objective::Epsilon, Objective::X0, Objective::V] {
        let diffusion =
            GaussianDiffusion::new(schedule.clone(), objective, LossWeighting::Uniform, &cpu())
                .unwrap();
        let oracle = |xt: &Tensor, t: &Tensor| -> candle_core::Result<Tensor> {
            let ab: Vec<f64> = t
                .to_vec1::<u32>()?
                .iter()
                .map(|&k| linear_alpha_bar(k as usize + 1))
                .collect();
            let (xt_v, x0_v) = (xt.to_vec2::<f32>()?, x0.to_vec2::<f32>()?);
            let out: Vec<Vec<f32>> = (0..xt_v.len())
                .map(|b| {
                    (0..3)
                        .map(|j| {
                            let (x, x0) = (xt_v[b][j] as f64, x0_v[b][j] as f64);
                            let eps = (x - ab[b].sqrt() * x0) / (1.0 - ab[b]).sqrt();
                            (match objective {
                                Objective::Epsilon => eps,
                                Objective::X0 => x0,
                                Objective::V => ab[b].sqrt() * eps - (1.0 - ab[b]).sqrt() * x0,
                            }) as f32
                        })
                        .collect()
                })
                .collect();
            Tensor::new(out, &Device::Cpu)
        };
        let mut rng = NoiseRng::new(11);
        let loss = diffusion
            .training_loss(&oracle, &x0, &mut rng)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // Recovering ε divides by √(1−ᾱ_1) = 0.01, amplifying f32 rounding of x_t (~6e-8) to ~1e-5.
        assert!(loss < 1e-8, "{objective:?}: loss {loss}");
        // A model that always predicts zero pays the target's second moment, ≈ 1 for ε.
        if objective == Objective::Epsilon {
            let zero = |x: &Tensor, _: &Tensor| x.zeros_like();
            let loss = diffusion
                .training_loss(&zero, &x0, &mut rng)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!((loss - 1.0).abs() < 0.2, "zero predictor: {loss}");
        }
    }
}

#[test]
fn min_snr_weights_the_loss_per_sample() {
    let schedule = linear();
    let diffusion = GaussianDiffusion::new(
        schedule.clone(),
        Objective::Epsilon,
        LossWeighting::MinSnr { gamma: 5.0 },
        &cpu(),
    )
    .unwrap();
    let x0 = Tensor::zeros((4, 2), candle_core::DType::F32, &cpu()).unwrap();
    let mut rng = NoiseRng::new(5);
    let batch = diffusion.training_batch(&x0, &mut rng).unwrap();
    // Predicting zero: per-sample loss is mean(ε²); weight min(SNR, 5)/SNR.
    let loss = diffusion
        .loss(&x0, &batch)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    let eps = batch.noise.to_vec2::<f32>().unwrap();
    let t = batch.t.to_vec1::<u32>().unwrap();
    let want: f64 = (0..4)
        .map(|b| {
            let ab = linear_alpha_bar(t[b] as usize);
            let snr = ab / (1.0 - ab);
            let w = snr.min(5.0) / snr;
            w * eps[b].iter().map(|&e| (e as f64).powi(2)).sum::<f64>() / 2.0
        })
        .sum::<f64>()
        / 4.0;
    assert!(
        (loss - want).abs() < 1e-5 * want.max(1.0),
        "{loss} vs {want}"
    );
    assert_eq!(
        batch.model_t.to_vec1::<u32>().unwrap(),
        t.iter().map(|t| t - 1).collect::<Vec<_>>()
    );
}

#[test]
fn one_reverse_step_matches_the_formula() {
    let diffusion = GaussianDiffusion::epsilon(linear(), &cpu()).unwrap();
    let x = [0.3f64, -1.2, 2.0];
    let eps = [0.1f64, 0.5, -0.3];
    let z = [0.7f64, -0.2, 1.1];
    let tensor = |v: [f64; 3]| Tensor::new(&v.map(|x| x as f32), &cpu()).unwrap();
    for t in [1usize, 2, 500, 1000] {
        let beta = 1e-4 + (0.02 - 1e-4) * (t - 1) as f64 / 999.0;
        let (alpha, ab) = (1.0 - beta, linear_alpha_bar(t));
        let ab_prev = linear_alpha_bar(t - 1);
        for variance in [ReverseVariance::Beta, ReverseVariance::PosteriorVariance] {
            let sigma2 = match variance {
                ReverseVariance::Beta => beta,
                ReverseVariance::PosteriorVariance => beta * (1.0 - ab_prev) / (1.0 - ab),
            };
            let got = diffusion
                .ddpm_step(&tensor(x), t, &tensor(eps), variance, &tensor(z))
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for j in 0..3 {
                let noise = if t == 1 { 0.0 } else { sigma2.sqrt() * z[j] };
                let want =
                    (x[j] - (1.0 - alpha) / (1.0 - ab).sqrt() * eps[j]) / alpha.sqrt() + noise;
                assert!(
                    (got[j] as f64 - want).abs() < 1e-6,
                    "t={t} {variance:?}: {} vs {want}",
                    got[j]
                );
            }
        }
    }
}

#[test]
fn the_same_seed_gives_bit_identical_samples() {
    let diffusion = GaussianDiffusion::epsilon(
        NoiseSchedule::new(BetaSchedule::cosine(), 100).unwrap(),
        &cpu(),
    )
    .unwrap();
    let model = |x: &Tensor, t: &Tensor| -> candle_core::Result<Tensor> {
        let t = t
            .to_dtype(candle_core::DType::F32)?
            .reshape((x.dim(0)?, 1, 1, 1))?;
        x.affine(0.3, 0.0)?.broadcast_add(&(t / 100.0)?)
    };
    for sampler in [
        Sampler::default(),
        Sampler::Ddim {
            steps: 20,
            spacing: Spacing::Trailing,
            eta: 0.5,
        },
    ] {
        let run = |seed| {
            let mut rng = NoiseRng::new(seed);
            let out = diffusion
                .sample(
                    &model,
                    &sampler,
                    (3, 1, 4, 4),
                    &mut rng,
                    SampleOptions {
                        clip_x0: true,
                        snapshots: 5,
                    },
                    &mut |_, _| {},
                )
                .unwrap();
            assert_eq!(out.snapshots.len(), 5);
            assert_eq!(out.snapshots.last().unwrap().t, 0);
            values(&out.images)
        };
        let (a, b, c) = (run(9), run(9), run(10));
        assert_eq!(
            a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_ne!(a, c);
    }
}

#[test]
fn progress_reports_every_step_and_snapshots_run_from_noise_to_data() {
    let diffusion = GaussianDiffusion::epsilon(linear(), &cpu()).unwrap();
    let model = |x: &Tensor, _: &Tensor| x.zeros_like();
    let mut calls = Vec::new();
    let sampler = Sampler::Ddpm {
        steps: Some(10),
        spacing: Spacing::Even,
        variance: ReverseVariance::Beta,
    };
    let out = diffusion
        .sample(
            &model,
            &sampler,
            (2, 3),
            &mut NoiseRng::new(0),
            SampleOptions {
                clip_x0: false,
                snapshots: 3,
            },
            &mut |d, n| calls.push((d, n)),
        )
        .unwrap();
    assert_eq!(calls, (1..=10).map(|d| (d, 10)).collect::<Vec<_>>());
    let ts: Vec<usize> = out.snapshots.iter().map(|s| s.t).collect();
    // Even spacing keeps 1, 112, …, 1000; after 5 of 10 steps the state is x at the 5th kept step.
    assert_eq!(ts, vec![1000, 445, 0]);
}

#[test]
fn classifier_free_guidance_combines_one_batched_pass() {
    // ε(x, t, y) = y (as a float) when y is a class, 100 for the null label 10.
    let calls = std::cell::Cell::new(0);
    let model = |x: &Tensor, _t: &Tensor, y: &Tensor| -> candle_core::Result<Tensor> {
        calls.set(calls.get() + 1);
        let y = y
            .to_dtype(candle_core::DType::F32)?
            .reshape((x.dim(0)?, 1))?;
        let y = ((y.ge(10f32)?.to_dtype(candle_core::DType::F32)? * 90.0)? + y)?;
        y.broadcast_as(x.shape())?.contiguous()
    };
    let labels = Tensor::new(&[2u32, 7], &cpu()).unwrap();
    let guided = ClassifierFreeGuidance::new(&model, &labels, 10, 1.5).unwrap();
    use ddpm_diffusion::Denoiser;
    let x = Tensor::zeros((2, 3), candle_core::DType::F32, &cpu()).unwrap();
    let t = Tensor::new(&[5u32, 5], &cpu()).unwrap();
    let out = guided.predict(&x, &t).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(calls.get(), 1);
    // (1 + w)·c − w·100 with w = 1.5
    assert_eq!(out[0], vec![2.5 * 2.0 - 150.0; 3]);
    assert_eq!(out[1], vec![2.5 * 7.0 - 150.0; 3]);
    assert!(ClassifierFreeGuidance::new(&model, &labels, 10, -1.0).is_err());
}
