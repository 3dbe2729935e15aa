//! The timestep convention and the step arithmetic against diffusers' own schedulers.
//!
//! `fixtures/diffusers_scheduler.json` was written by `scripts/diffusers_scheduler_fixture.py`
//! (diffusers 0.42.1): DDPMScheduler single steps with zero variance noise, and full 50-step
//! DDIM (η = 0) trajectories under three spacings, driven by the same analytic ε(x, k) of
//! the 0-based timestep k as below: the optimal predictor of N(0.2, 0.5²) plus
//! 0.02·√ᾱ·sin(k/7), a term that moves by up to 0.003 per unit of k, so feeding the network t
//! instead of t − 1 would miss by far more than the tolerance. The script runs diffusers'
//! scheduler code over f64 coefficients (after checking its own f32 schedule is the same);
//! our tensors are f32, so results agree to f32 rounding, amplified where √ᾱ or √α is
//! small (cosine at t = T): 1e-4·(1 + |value|).

mod common;

use candle_core::{Device, Tensor};
use ddpm_diffusion::{GaussianDiffusion, NoiseRng, ReverseVariance, SampleOptions, Sampler};
use ddpm_schedule::{BetaSchedule, NoiseSchedule, Spacing};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
struct Fixture {
    x: Vec<f32>,
    schedules: BTreeMap<String, ScheduleFixture>,
}

#[derive(Deserialize)]
struct ScheduleFixture {
    ddpm_steps: Vec<DdpmStep>,
    ddim: BTreeMap<String, DdimRun>,
}

#[derive(Deserialize)]
struct DdpmStep {
    model_timestep: u32,
    eps: Vec<f32>,
    prev_mean: Vec<f32>,
    posterior_variance: f64,
    beta: f64,
}

#[derive(Deserialize)]
struct DdimRun {
    timesteps: Vec<u32>,
    #[serde(rename = "final")]
    final_sample: Vec<f32>,
}

fn fixture() -> Fixture {
    let text = include_str!("fixtures/diffusers_scheduler.json");
    serde_json::from_str(text).expect("fixture parses")
}

/// The stand-in network of the fixture script, fed the 0-based timestep k; ᾱ at k is the
/// paper's ᾱ_{k+1}.
fn eps_model(
    sched: &NoiseSchedule,
) -> impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor> + '_ {
    move |x, k| {
        let k = k.to_vec1::<u32>()?[0] as usize;
        let ab = sched.alpha_bar(k + 1);
        let (mu, s) = (0.2, 0.5);
        let scale = (1.0 - ab).sqrt() / (ab * s * s + 1.0 - ab);
        x.affine(
            scale,
            -scale * ab.sqrt() * mu + 0.02 * ab.sqrt() * (k as f64 / 7.0).sin(),
        )
    }
}

fn schedule(name: &str) -> NoiseSchedule {
    let kind = match name {
        "linear" => BetaSchedule::linear(),
        "cosine" => BetaSchedule::cosine(),
        other => panic!("unknown schedule {other}"),
    };
    NoiseSchedule::new(kind, 1000).unwrap()
}

/// The largest error relative to 1 + |reference|.
fn max_scaled_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0, f32::max)
}

#[test]
fn ddpm_steps_match_diffusers_with_network_timestep_t_minus_one() {
    let fx = fixture();
    let x = Tensor::new(fx.x.as_slice(), &Device::Cpu).unwrap();
    for (name, sf) in &fx.schedules {
        let sched = schedule(name);
        let diffusion = GaussianDiffusion::epsilon(sched.clone(), &Device::Cpu).unwrap();
        for step in &sf.ddpm_steps {
            let t = step.model_timestep as usize + 1; // the paper's t
            assert!(
                (sched.beta(t) - step.beta).abs() < 1e-7 * step.beta.max(1e-3),
                "{name} β at t={t}"
            );
            assert!(
                (sched.posterior_variance(t) - step.posterior_variance).abs()
                    < 1e-6 * step.posterior_variance.max(1e-3) + 1e-12,
                "{name} β̃ at t={t}: {} vs {}",
                sched.posterior_variance(t),
                step.posterior_variance
            );
            let eps = Tensor::new(step.eps.as_slice(), &Device::Cpu).unwrap();
            let zero = x.zeros_like().unwrap();
            let got = diffusion
                .ddpm_step(&x, t, &eps, ReverseVariance::PosteriorVariance, &zero)
                .unwrap();
            let err = max_scaled_diff(&got.to_vec1::<f32>().unwrap(), &step.prev_mean);
            assert!(err < 1e-4, "{name} DDPM step at t={t}: max error {err}");
        }
    }
}

#[test]
fn ddim_trajectories_match_diffusers() {
    let fx = fixture();
    for (name, sf) in &fx.schedules {
        let sched = schedule(name);
        let diffusion = GaussianDiffusion::epsilon(sched.clone(), &Device::Cpu).unwrap();
        for (spacing_name, run) in &sf.ddim {
            let spacing = match spacing_name.as_str() {
                "leading" => Spacing::Leading,
                "trailing" => Spacing::Trailing,
                "linspace" => Spacing::Even,
                other => panic!("unknown spacing {other}"),
            };
            // The kept timesteps, as diffusers lists them (0-based, descending).
            let mut ours: Vec<u32> = spacing
                .timesteps(1000, 50)
                .unwrap()
                .iter()
                .map(|&t| t as u32 - 1)
                .collect();
            ours.reverse();
            assert_eq!(ours, run.timesteps, "{name} {spacing_name} timesteps");

            let x = Tensor::new(fx.x.as_slice(), &Device::Cpu)
                .unwrap()
                .reshape((1, fx.x.len()))
                .unwrap();
            let sampler = Sampler::Ddim {
                steps: 50,
                spacing,
                eta: 0.0,
            };
            let out = diffusion
                .sample_from(
                    &eps_model(&sched),
                    &sampler,
                    x,
                    &mut NoiseRng::new(0),
                    SampleOptions::default(),
                    &mut |_, _| {},
                )
                .unwrap();
            let got = out.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let err = max_scaled_diff(&got, &run.final_sample);
            if spacing == Spacing::Even {
                // diffusers' DDIMScheduler.step steps from t to t − ⌊T/S⌋ whatever the
                // spacing; with "linspace" the kept steps are 20 or 21 apart, so it lands
                // between its own listed timesteps. We step to the previous kept timestep
                // (the respaced process of Improved DDPM), so only the list is compared.
                continue;
            }
            assert!(err < 1e-4, "{name} DDIM-50 {spacing_name}: max error {err}");
        }
    }
}
