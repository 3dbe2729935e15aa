//! The schedule's numbers against closed forms computed independently here: direct
//! formulas, products and logarithms rather than the crate's running products.

use ddpm_schedule::{BetaSchedule, NoiseSchedule, ScheduleError, Spacing};

const T: usize = 1000;

/// Relative error, with an absolute floor for values near zero.
fn rel_err(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

fn cosine_f(t: f64, big_t: f64, s: f64) -> f64 {
    (((t / big_t + s) / (1.0 + s)) * std::f64::consts::PI / 2.0)
        .cos()
        .powi(2)
}

#[test]
fn linear_betas_and_alpha_bars_match_the_paper() {
    let sched = NoiseSchedule::new(BetaSchedule::linear(), T).unwrap();
    assert_eq!(sched.num_timesteps(), T);
    for t in 1..=T {
        let beta = 1e-4 + (0.02 - 1e-4) * (t - 1) as f64 / (T - 1) as f64;
        assert!((sched.beta(t) - beta).abs() < 1e-15, "beta({t})");
        assert!((sched.alpha(t) - (1.0 - beta)).abs() < 1e-15, "alpha({t})");
        // ᾱ_t through logarithms: exp(Σ ln(1 − β_s)), a different rounding path from a product.
        let log_ab: f64 = (1..=t)
            .map(|s| (1.0 - (1e-4 + (0.02 - 1e-4) * (s - 1) as f64 / (T - 1) as f64)).ln())
            .sum();
        assert!(
            rel_err(sched.alpha_bar(t), log_ab.exp()) < 1e-12,
            "alpha_bar({t})"
        );
    }
    assert_eq!(sched.beta(1), 1e-4);
    assert_eq!(sched.beta(T), 0.02);
    // The well-known endpoint of the paper's schedule: √ᾱ_T ≈ 0.00635, ᾱ_T ≈ 4.0358e-5.
    assert!(rel_err(sched.alpha_bar(T), 4.035_829_765_375_675e-5) < 1e-10);
}

#[test]
fn scaled_linear_is_linear_in_sqrt_beta() {
    let kind = BetaSchedule::ScaledLinear {
        beta_start: 0.00085,
        beta_end: 0.012,
    };
    let sched = NoiseSchedule::new(kind, T).unwrap();
    for t in [1, 2, 500, 999, 1000] {
        let root =
            0.00085f64.sqrt() + (0.012f64.sqrt() - 0.00085f64.sqrt()) * (t - 1) as f64 / 999.0;
        assert!(rel_err(sched.beta(t), root * root) < 1e-13, "beta({t})");
    }
}

#[test]
fn cosine_alpha_bar_is_the_ratio_of_cosines_until_the_clip() {
    let sched = NoiseSchedule::new(BetaSchedule::cosine(), T).unwrap();
    let f0 = cosine_f(0.0, T as f64, 0.008);
    for t in 1..T {
        let expected = cosine_f(t as f64, T as f64, 0.008) / f0;
        assert!(
            rel_err(sched.alpha_bar(t), expected) < 1e-10,
            "alpha_bar({t})"
        );
    }
    // f(T) = cos(π/2)² ≈ 0, so 1 − ᾱ_T/ᾱ_{T−1} ≈ 1 is clipped to max_beta = 0.999 and ᾱ_T is
    // recomputed from the clipped β: ᾱ_T = 0.001·ᾱ_{T−1}.
    assert_eq!(sched.beta(T), 0.999);
    assert!(rel_err(sched.alpha_bar(T), 0.001 * sched.alpha_bar(T - 1)) < 1e-12);
    assert!(sched.betas().iter().all(|&b| b <= 0.999));
}

#[test]
fn cosine_clip_keeps_alpha_bar_consistent_with_clipped_betas() {
    // A low clip engages over many steps; ᾱ must still be the product of the clipped α's.
    let sched = NoiseSchedule::new(
        BetaSchedule::Cosine {
            s: 0.008,
            max_beta: 0.02,
        },
        T,
    )
    .unwrap();
    let clipped = sched.betas().iter().filter(|&&b| b == 0.02).count();
    let unclipped_above = (1..=T)
        .filter(|&t| {
            1.0 - cosine_f(t as f64, T as f64, 0.008) / cosine_f((t - 1) as f64, T as f64, 0.008)
                >= 0.02
        })
        .count();
    assert_eq!(clipped, unclipped_above);
    assert!(
        clipped > 50,
        "expected a long clipped tail, got {clipped} steps"
    );
    let mut product = 1.0;
    for t in 1..=T {
        product *= 1.0 - sched.beta(t);
        assert!(
            rel_err(sched.alpha_bar(t), product) < 1e-12,
            "alpha_bar({t})"
        );
    }
}

#[test]
fn sigmoid_schedule_matches_its_closed_form() {
    let sched = NoiseSchedule::new(BetaSchedule::sigmoid(), T).unwrap();
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    let g = |t: f64| (sig(3.0) - sig(t / T as f64 * 6.0 - 3.0)) / (sig(3.0) - sig(-3.0));
    for t in [1, 10, 250, 500, 750, 990] {
        assert!(
            rel_err(sched.alpha_bar(t), g(t as f64)) < 1e-10,
            "alpha_bar({t})"
        );
    }
    assert_eq!(sched.beta(T), 0.999);
}

#[test]
fn alpha_bar_decreases_strictly_for_every_family() {
    for kind in [
        BetaSchedule::linear(),
        BetaSchedule::cosine(),
        BetaSchedule::sigmoid(),
        BetaSchedule::ScaledLinear {
            beta_start: 0.00085,
            beta_end: 0.012,
        },
    ] {
        let sched = NoiseSchedule::new(kind, T).unwrap();
        let ab = sched.alpha_bars();
        assert!(ab[0] < 1.0 && ab[T - 1] > 0.0, "{kind:?}");
        assert!(
            ab.windows(2).all(|w| w[1] < w[0]),
            "{kind:?} ᾱ not strictly decreasing"
        );
        let snr = sched.snrs();
        assert!(
            snr.windows(2).all(|w| w[1] < w[0]),
            "{kind:?} SNR not strictly decreasing"
        );
    }
    let lin = NoiseSchedule::new(BetaSchedule::linear(), T).unwrap();
    assert!(lin.betas().windows(2).all(|w| w[1] > w[0]));
}

#[test]
fn derived_coefficients_match_their_definitions() {
    for kind in [BetaSchedule::linear(), BetaSchedule::cosine()] {
        let s = NoiseSchedule::new(kind, T).unwrap();
        for t in [1, 2, 3, 100, 500, 999, 1000] {
            let (b, ab) = (s.beta(t), s.alpha_bar(t));
            let ab_prev = if t == 1 { 1.0 } else { s.alpha_bar(t - 1) };
            assert_eq!(s.alpha_bar_prev(t), ab_prev);
            assert!(rel_err(s.sqrt_alpha_bar(t), ab.sqrt()) < 1e-15);
            assert!(rel_err(s.sqrt_one_minus_alpha_bar(t), (1.0 - ab).sqrt()) < 1e-15);
            assert!(rel_err(s.sqrt_recip_alpha(t), (1.0 - b).powf(-0.5)) < 1e-14);
            assert!(rel_err(s.snr(t), ab / (1.0 - ab)) < 1e-14);
            // x̂_0 from x_t and ε inverts the forward process exactly.
            let (x0, eps) = (0.37, -1.4);
            let xt = ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps;
            let x0_hat = s.sqrt_recip_alpha_bar(t) * xt - s.sqrt_recip_m1_alpha_bar(t) * eps;
            assert!(
                (x0_hat - x0).abs() < 1e-9,
                "x0 reconstruction at t={t}: {x0_hat}"
            );

            // Posterior variance by Gaussian conditioning: precision = 1/(1−ᾱ_{t−1}) + α_t/β_t.
            if t > 1 {
                let by_precision = 1.0 / (1.0 / (1.0 - ab_prev) + (1.0 - b) / b);
                assert!(
                    rel_err(s.posterior_variance(t), by_precision) < 1e-10,
                    "β̃({t})"
                );
                assert!(s.posterior_variance(t) <= b);
                assert!(rel_err(s.posterior_log_variance_clipped(t), by_precision.ln()) < 1e-10);
            }
            // With no noise (x_t = √ᾱ_t·x_0) the posterior mean is √ᾱ_{t−1}·x_0.
            let mean = s.posterior_mean_coef1(t) * x0 + s.posterior_mean_coef2(t) * ab.sqrt() * x0;
            assert!((mean - ab_prev.sqrt() * x0).abs() < 1e-12, "μ̃ at t={t}");
        }
        assert_eq!(s.posterior_variance(1), 0.0);
        assert_eq!(
            s.posterior_log_variance_clipped(1),
            s.posterior_variance(2).ln()
        );
    }
}

#[test]
fn spacings_match_the_reference_implementations() {
    // 0-based indices as diffusers prints them for T = 1000, S = 10.
    let leading: Vec<usize> = (0..10).map(|i| i * 100).collect();
    let trailing: Vec<usize> = (0..10).map(|i| i * 100 + 99).collect();
    let even = [0, 111, 222, 333, 444, 555, 666, 777, 888, 999];
    let one_based = |v: &[usize]| v.iter().map(|k| k + 1).collect::<Vec<_>>();
    assert_eq!(
        Spacing::Leading.timesteps(T, 10).unwrap(),
        one_based(&leading)
    );
    assert_eq!(
        Spacing::Trailing.timesteps(T, 10).unwrap(),
        one_based(&trailing)
    );
    assert_eq!(Spacing::Even.timesteps(T, 10).unwrap(), one_based(&even));
    // Improved DDPM's space_timesteps(1000, [250]) keeps round(i·999/249): 0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, ...
    let iddpm = Spacing::Even.timesteps(T, 250).unwrap();
    assert_eq!(&iddpm[..4], &[1, 5, 9, 13]);
    assert_eq!(iddpm[249], T);
    assert_eq!(Spacing::Even.timesteps(T, 1).unwrap(), vec![1]);
    assert_eq!(
        Spacing::Even.timesteps(T, T).unwrap(),
        (1..=T).collect::<Vec<_>>()
    );
}

#[test]
fn respacing_keeps_alpha_bar_and_recomputes_beta() {
    let full = NoiseSchedule::new(BetaSchedule::cosine(), T).unwrap();
    for spacing in [Spacing::Even, Spacing::Leading, Spacing::Trailing] {
        let short = full.respace(spacing, 50).unwrap();
        assert_eq!(short.num_steps(), 50);
        let s = short.schedule();
        let mut prev_ab = 1.0;
        for i in 1..=50 {
            let tau = short.original_timestep(i);
            assert_eq!(s.alpha_bar(i), full.alpha_bar(tau), "{spacing:?} i={i}");
            assert!(rel_err(s.beta(i), 1.0 - full.alpha_bar(tau) / prev_ab) < 1e-12);
            prev_ab = full.alpha_bar(tau);
        }
    }
    // Keeping every step reproduces the schedule.
    let same = full.respace(Spacing::Even, T).unwrap();
    for t in 1..=T {
        assert!(
            rel_err(same.schedule().beta(t), full.beta(t)) < 1e-9,
            "t={t}"
        );
    }
}

#[test]
fn invalid_parameters_are_typed_errors_naming_the_value() {
    assert_eq!(
        NoiseSchedule::new(BetaSchedule::linear(), 0),
        Err(ScheduleError::ZeroTimesteps)
    );
    let err = NoiseSchedule::new(
        BetaSchedule::Linear {
            beta_start: 0.0,
            beta_end: 0.02,
        },
        10,
    )
    .unwrap_err();
    assert!(
        matches!(&err, ScheduleError::BetaOutOfRange { name, value } if name == "beta_start" && *value == 0.0)
    );
    assert!(err.to_string().contains("beta_start = 0"), "{err}");
    let err = NoiseSchedule::new(
        BetaSchedule::Linear {
            beta_start: 1e-4,
            beta_end: 1.5,
        },
        10,
    )
    .unwrap_err();
    assert!(matches!(&err, ScheduleError::BetaOutOfRange { name, .. } if name == "beta_end"));
    let err = NoiseSchedule::new(
        BetaSchedule::Linear {
            beta_start: 0.02,
            beta_end: 1e-4,
        },
        10,
    )
    .unwrap_err();
    assert_eq!(
        err,
        ScheduleError::DecreasingBetas {
            beta_start: 0.02,
            beta_end: 1e-4
        }
    );
    for s in [0.0, -0.1, f64::NAN] {
        let err = NoiseSchedule::new(BetaSchedule::Cosine { s, max_beta: 0.999 }, 10).unwrap_err();
        assert!(
            matches!(err, ScheduleError::NonPositiveOffset(_)),
            "s = {s}"
        );
    }
    let err = NoiseSchedule::new(
        BetaSchedule::Cosine {
            s: 0.008,
            max_beta: 1.0,
        },
        10,
    )
    .unwrap_err();
    assert!(matches!(&err, ScheduleError::BetaOutOfRange { name, .. } if name == "max_beta"));
    let err = NoiseSchedule::from_betas(vec![0.1, 0.2, 1.0]).unwrap_err();
    assert!(err.to_string().contains("beta[t=3] = 1"), "{err}");

    let sched = NoiseSchedule::new(BetaSchedule::linear(), 100).unwrap();
    for steps in [0, 101] {
        assert_eq!(
            sched.respace(Spacing::Even, steps).unwrap_err(),
            ScheduleError::InvalidRespacing {
                requested: steps,
                timesteps: 100
            }
        );
    }
    assert_eq!(
        sched.respace_to(&[1, 5, 5]).unwrap_err(),
        ScheduleError::InvalidKeptTimestep {
            position: 2,
            value: 5,
            timesteps: 100
        }
    );
    assert!(sched.respace_to(&[0, 5]).is_err());
    assert!(sched.respace_to(&[5, 101]).is_err());
}

#[test]
#[should_panic(expected = "outside 1..=1000")]
fn timestep_zero_is_rejected_by_accessors() {
    let sched = NoiseSchedule::new(BetaSchedule::linear(), T).unwrap();
    let _ = sched.alpha_bar(0);
}

#[test]
fn a_single_step_schedule_is_well_defined() {
    let sched = NoiseSchedule::new(BetaSchedule::linear(), 1).unwrap();
    assert_eq!(sched.beta(1), 1e-4);
    assert_eq!(sched.posterior_log_variance_clipped(1), 1e-4f64.ln());
    let sched = NoiseSchedule::new(BetaSchedule::cosine(), 1).unwrap();
    assert!(sched.alpha_bar(1) > 0.0);
}
