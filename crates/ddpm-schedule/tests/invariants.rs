//! Invariants over random T and parameters (proptest).

use ddpm_schedule::{BetaSchedule, NoiseSchedule, Spacing};
use proptest::prelude::*;

fn any_schedule() -> impl Strategy<Value = BetaSchedule> {
    prop_oneof![
        (1e-6f64..0.05, 0.0f64..0.5).prop_map(|(start, extra)| BetaSchedule::Linear {
            beta_start: start,
            beta_end: (start + extra).min(0.99),
        }),
        (1e-4f64..0.5, 0.05f64..0.9999)
            .prop_map(|(s, max_beta)| BetaSchedule::Cosine { s, max_beta }),
        (-6.0f64..0.0, 0.5f64..6.0, 0.3f64..2.0).prop_map(|(start, end, tau)| {
            BetaSchedule::Sigmoid {
                start,
                end,
                tau,
                max_beta: 0.999,
            }
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn schedules_are_valid_diffusions(kind in any_schedule(), timesteps in 1usize..2000) {
        let s = NoiseSchedule::new(kind, timesteps).unwrap();
        prop_assert_eq!(s.num_timesteps(), timesteps);
        let mut product = 1.0;
        for t in 1..=timesteps {
            let beta = s.beta(t);
            prop_assert!(beta > 0.0 && beta < 1.0, "β({}) = {}", t, beta);
            product *= 1.0 - beta;
            prop_assert!((s.alpha_bar(t) - product).abs() <= 1e-12 * product.max(1e-300) + 1e-300);
            prop_assert!(s.alpha_bar(t) < s.alpha_bar_prev(t));
            prop_assert!(s.posterior_variance(t) <= beta);
            prop_assert!(s.posterior_variance(t) >= 0.0);
        }
    }

    #[test]
    fn respacing_preserves_alpha_bar(
        kind in any_schedule(),
        timesteps in 1usize..1500,
        frac in 0.0f64..1.0,
        which in 0usize..3,
    ) {
        let full = NoiseSchedule::new(kind, timesteps).unwrap();
        let steps = 1 + ((timesteps - 1) as f64 * frac) as usize;
        let spacing = [Spacing::Even, Spacing::Leading, Spacing::Trailing][which];
        let short = full.respace(spacing, steps).unwrap();
        prop_assert_eq!(short.num_steps(), steps);
        let taus = short.original_timesteps();
        prop_assert!(taus.windows(2).all(|w| w[0] < w[1]));
        prop_assert!(taus[0] >= 1 && taus[steps - 1] <= timesteps);
        let mut product = 1.0;
        for i in 1..=steps {
            prop_assert_eq!(short.schedule().alpha_bar(i), full.alpha_bar(taus[i - 1]));
            // α is exact; β = 1 − α may round to 1.0 when α < 1e-16 (a kept step that
            // jumps across almost all of the signal).
            let (alpha, beta) = (short.schedule().alpha(i), short.schedule().beta(i));
            prop_assert!(alpha > 0.0 && alpha < 1.0, "α = {}", alpha);
            prop_assert!(beta > 0.0 && beta <= 1.0, "β = {}", beta);
            prop_assert!((alpha - (1.0 - beta)).abs() < 1e-15);
            product *= alpha;
            let ab = full.alpha_bar(taus[i - 1]);
            prop_assert!((product - ab).abs() <= 1e-10 * ab);
        }
    }
}
