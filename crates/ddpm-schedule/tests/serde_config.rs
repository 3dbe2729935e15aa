//! Schedules named in TOML configs (the `serde` feature).
#![cfg(feature = "serde")]

use ddpm_schedule::{BetaSchedule, Spacing};

#[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
struct Diffusion {
    schedule: BetaSchedule,
    spacing: Spacing,
}

#[test]
fn omitted_fields_take_the_paper_defaults() {
    let cfg: Diffusion =
        toml::from_str("schedule = { kind = \"cosine\" }\nspacing = \"trailing\"").unwrap();
    assert_eq!(cfg.schedule, BetaSchedule::cosine());
    assert_eq!(cfg.spacing, Spacing::Trailing);
    let cfg: Diffusion =
        toml::from_str("spacing = \"even\"\n[schedule]\nkind = \"linear\"\nbeta_end = 0.03")
            .unwrap();
    assert_eq!(
        cfg.schedule,
        BetaSchedule::Linear {
            beta_start: 1e-4,
            beta_end: 0.03
        }
    );
}

#[test]
fn round_trip_and_unknown_keys() {
    let cfg = Diffusion {
        schedule: BetaSchedule::sigmoid(),
        spacing: Spacing::Leading,
    };
    let text = toml::to_string(&cfg).unwrap();
    assert_eq!(toml::from_str::<Diffusion>(&text).unwrap(), cfg);
    let err = toml::from_str::<Diffusion>(
        "spacing = \"even\"\nschedule = { kind = \"cosine\", z = 1.0 }",
    )
    .unwrap_err();
    assert!(err.to_string().contains("unknown field `z`"), "{err}");
    let err =
        toml::from_str::<Diffusion>("spacing = \"even\"\nschedule = { kind = \"quadratic\" }")
            .unwrap_err();
    assert!(err.to_string().contains("quadratic"), "{err}");
}
