//! With the exact optimal ε-predictor of known data, every sampler must reproduce the data
//! distribution, and a deliberately wrong predictor must not.
//!
//! Two checks per sampler, for Gaussian data:
//! - Sharp: with the exact predictor every step is affine in x, so the sampler's output is
//!   exactly Gaussian with moments given by a recursion coded here from the papers' update
//!   equations, in f64. Sample moments must match those within 5 standard errors (the
//!   mean's is σ/√N, the standard deviation's σ/√(2N)).
//! - Against the data: finitely many Gaussian steps only approximate the reverse process, so
//!   the exact moments differ from (μ, s) by a discretisation error that is a property of
//!   the sampler, not of the code (DDIM-50 with η = 1 on the linear schedule: s·0.886).
//!   Each sampler's allowance is stated below, above the error the recursion gives.

mod common;

use common::{cpu, gaussian_oracle, mean_std, values, Mixture};
use ddpm_diffusion::{
    Denoiser, GaussianDiffusion, NoiseRng, ReverseVariance, SampleOptions, Sampler,
};
use ddpm_schedule::{BetaSchedule, NoiseSchedule, Spacing};

const N: usize = 40_000;
const MU: f64 = 0.4;
const S: f64 = 0.5;

fn draw(schedule: &NoiseSchedule, model: &impl Denoiser, sampler: Sampler, seed: u64) -> Vec<f32> {
    let diffusion = GaussianDiffusion::epsilon(schedule.clone(), &cpu()).unwrap();
    let mut rng = NoiseRng::new(seed);
    let out = diffusion
        .sample(
            model,
            &sampler,
            (N, 1),
            &mut rng,
            SampleOptions::default(),
            &mut |_, _| {},
        )
        .unwrap();
    values(&out.images)
}

fn samplers() -> Vec<(&'static str, Sampler, f64)> {
    // (name, sampler, allowed discretisation error on the standard deviation; the recursion
    // gives at most 0.0008, 0.004, 0.009, 0.028 and 0.057 over both schedules)
    vec![
        ("ddpm-1000", Sampler::default(), 0.003),
        (
            "ddpm-1000-posterior-variance",
            Sampler::Ddpm {
                steps: None,
                spacing: Spacing::Even,
                variance: ReverseVariance::PosteriorVariance,
            },
            0.006,
        ),
        (
            "ddpm-100",
            Sampler::Ddpm {
                steps: Some(100),
                spacing: Spacing::Even,
                variance: ReverseVariance::Beta,
            },
            0.012,
        ),
        (
            "ddim-50-eta0",
            Sampler::Ddim {
                steps: 50,
                spacing: Spacing::Even,
                eta: 0.0,
            },
            0.035,
        ),
        (
            "ddim-50-eta1",
            Sampler::Ddim {
                steps: 50,
                spacing: Spacing::Even,
                eta: 1.0,
            },
            0.065,
        ),
    ]
}

/// The exact mean and standard deviation of the sampler's output for data N(μ, s²) under
/// the exact predictor ε = a·x + b, a = √(1−ᾱ)/(ᾱs² + 1 − ᾱ), b = −a·√ᾱ·μ, starting from
/// x_T ~ N(0, 1). Each step maps x ↦ P·x + Q + σ·z, so (m, v) ↦ (P·m + Q, P²·v + σ²).
fn exact_moments(schedule: &NoiseSchedule, sampler: Sampler) -> (f64, f64) {
    let big_t = schedule.num_timesteps();
    let (kept, eta): (Vec<usize>, Option<f64>) = match sampler {
        Sampler::Ddpm { steps: None, .. } => ((1..=big_t).collect(), None),
        Sampler::Ddpm {
            steps: Some(n),
            spacing,
            ..
        } => (spacing.timesteps(big_t, n).unwrap(), None),
        Sampler::Ddim {
            steps,
            spacing,
            eta,
        } => (spacing.timesteps(big_t, steps).unwrap(), Some(eta)),
    };
    let betas = schedule.betas();
    let ab_at = |t: usize| -> f64 { (0..t).map(|i| 1.0 - betas[i]).product() };
    let (mut m, mut v) = (0.0f64, 1.0f64);
    for i in (0..kept.len()).rev() {
        let ab = ab_at(kept[i]);
        let ab_prev = if i == 0 { 1.0 } else { ab_at(kept[i - 1]) };
        let a = (1.0 - ab).sqrt() / (ab * S * S + 1.0 - ab);
        let b = -a * ab.sqrt() * MU;
        let (p, q, var) = match (sampler, eta) {
            (Sampler::Ddpm { variance, .. }, _) => {
                // x' = (x − β/√(1−ᾱ)·ε)/√α + σ·z, with α = ᾱ/ᾱ_prev over the kept steps.
                let alpha = ab / ab_prev;
                let beta = 1.0 - alpha;
                let c = beta / (1.0 - ab).sqrt();
                let var = match (i, variance) {
                    (0, _) => 0.0,
                    (_, ReverseVariance::Beta) => beta,
                    (_, ReverseVariance::PosteriorVariance) => beta * (1.0 - ab_prev) / (1.0 - ab),
                };
                ((1.0 - c * a) / alpha.sqrt(), -c * b / alpha.sqrt(), var)
            }
            (_, Some(eta)) => {
                // x̂0 = (x − √(1−ᾱ)·ε)/√ᾱ; x' = √ᾱ'·x̂0 + √(1 − ᾱ' − σ²)·ε + σ·z.
                let sigma =
                    eta * ((1.0 - ab_prev) / (1.0 - ab)).sqrt() * (1.0 - ab / ab_prev).sqrt();
                let d = (1.0 - ab_prev - sigma * sigma).max(0.0).sqrt();
                let (px, qx) = (
                    (1.0 - (1.0 - ab).sqrt() * a) / ab.sqrt(),
                    -(1.0 - ab).sqrt() * b / ab.sqrt(),
                );
                (
                    ab_prev.sqrt() * px + d * a,
                    ab_prev.sqrt() * qx + d * b,
                    sigma * sigma,
                )
            }
            _ => unreachable!("DDIM always has η"),
        };
        m = p * m + q;
        v = p * p * v + var;
    }
    (m, v.sqrt())
}

#[test]
fn samplers_reproduce_a_gaussian_with_the_exact_predictor() {
    for kind in [BetaSchedule::linear(), BetaSchedule::cosine()] {
        let schedule = NoiseSchedule::new(kind, 1000).unwrap();
        let oracle = gaussian_oracle(&schedule, MU, S);
        for (name, sampler, disc) in samplers() {
            let (mean, std) = mean_std(&draw(&schedule, &oracle, sampler, 1));
            let (exact_mean, exact_std) = exact_moments(&schedule, sampler);
            let se_mean = 5.0 * exact_std / (N as f64).sqrt();
            let se_std = 5.0 * exact_std / (2.0 * N as f64).sqrt();
            eprintln!(
                "{} {name}: mean {mean:.4} (exact {exact_mean:.4}, data {MU}), std {std:.4} (exact {exact_std:.4}, data {S})",
                kind.name()
            );
            assert!(
                (mean - exact_mean).abs() < se_mean,
                "{} {name}: mean {mean} vs {exact_mean}",
                kind.name()
            );
            assert!(
                (std - exact_std).abs() < se_std,
                "{} {name}: std {std} vs {exact_std}",
                kind.name()
            );
            assert!(
                (mean - MU).abs() < se_mean + 0.003,
                "{} {name}: mean {mean}",
                kind.name()
            );
            assert!(
                (std - S).abs() < se_std + disc,
                "{} {name}: std {std}",
                kind.name()
            );
        }
    }
}

#[test]
fn a_wrong_predictor_is_detected() {
    // The oracle of N(0.7, 0.25²) used for data N(0.4, 0.5²): the samplers must follow the
    // predictor, so the bounds of the test above must reject what comes out.
    let schedule = NoiseSchedule::new(BetaSchedule::linear(), 1000).unwrap();
    let wrong = gaussian_oracle(&schedule, 0.7, 0.25);
    for (name, sampler, disc) in samplers() {
        let (mean, std) = mean_std(&draw(&schedule, &wrong, sampler, 1));
        let bound = 5.0 * S / (N as f64).sqrt();
        assert!((mean - MU).abs() > bound + 0.003, "{name}: mean {mean}");
        assert!((std - S).abs() > bound + disc, "{name}: std {std}");
    }
}

#[test]
fn samplers_recover_both_modes_of_a_mixture_in_proportion() {
    let mix = Mixture {
        weights: [0.3, 0.7],
        means: [-0.6, 0.5],
        std: 0.1,
    };
    // The fraction below 0 is Binomial: 5 standard errors is 5·√(0.21/N) ≈ 0.011.
    let se_frac = 5.0 * (0.3f64 * 0.7 / N as f64).sqrt();
    for kind in [BetaSchedule::linear(), BetaSchedule::cosine()] {
        let schedule = NoiseSchedule::new(kind, 1000).unwrap();
        let oracle = mix.oracle(&schedule);
        for (name, sampler, disc) in samplers() {
            let xs = draw(&schedule, &oracle, sampler, 2);
            let (left, right): (Vec<f32>, Vec<f32>) = xs.iter().partition(|&&v| v < -0.05);
            let frac = left.len() as f64 / N as f64;
            let (m0, s0) = mean_std(&left);
            let (m1, s1) = mean_std(&right);
            eprintln!(
                "{} {name}: frac {frac:.4} modes {m0:.3}±{s0:.3} {m1:.3}±{s1:.3}",
                kind.name()
            );
            assert!(
                (frac - 0.3).abs() < se_frac + disc,
                "{} {name}: fraction {frac}",
                kind.name()
            );
            assert!(
                (m0 + 0.6).abs() < 0.02 + disc && (m1 - 0.5).abs() < 0.02 + disc,
                "{name}: {m0} {m1}"
            );
            assert!(
                (s0 - 0.1).abs() < 0.02 + disc && (s1 - 0.1).abs() < 0.02 + disc,
                "{name}: {s0} {s1}"
            );
        }
    }
}

/// A model with trainable weights (a candle `Var`) must not make the samples carry an
/// autograd graph: each step's graph would hold the previous one, so memory would grow with
/// the number of steps. The output of every sampler is untracked.
#[test]
fn samples_carry_no_autograd_graph() {
    let schedule = NoiseSchedule::new(BetaSchedule::linear(), 1000).unwrap();
    let diffusion = GaussianDiffusion::epsilon(schedule, &cpu()).unwrap();
    let weight = candle_core::Var::new(0.5f32, &cpu()).unwrap();
    let model = |x: &candle_core::Tensor, _t: &candle_core::Tensor| x.broadcast_mul(&weight);
    assert!(
        model(
            &candle_core::Tensor::ones(2, candle_core::DType::F32, &cpu()).unwrap(),
            &candle_core::Tensor::zeros(2, candle_core::DType::U32, &cpu()).unwrap()
        )
        .unwrap()
        .track_op(),
        "the model itself is tracked, else this test proves nothing"
    );
    for (name, sampler, _) in samplers() {
        let out = diffusion
            .sample(
                &model,
                &sampler,
                (4, 1),
                &mut NoiseRng::new(0),
                SampleOptions {
                    clip_x0: false,
                    snapshots: 3,
                },
                &mut |_, _| {},
            )
            .unwrap();
        assert!(!out.images.track_op(), "{name}: samples are tracked");
        assert!(
            out.snapshots.iter().all(|s| !s.x.track_op()),
            "{name}: snapshots are tracked"
        );
    }
}
