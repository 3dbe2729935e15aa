#!/usr/bin/env python3
"""Writes crates/ddpm-diffusion/tests/fixtures/diffusers_scheduler.json.

The reference for the timestep convention: diffusers' DDPMScheduler and DDIMScheduler
driven by a fixed analytic "network" eps(x, k) of the 0-based timestep k they pass, so the
Rust samplers can be checked to feed t - 1 and to step exactly as diffusers does.

Run on demand (not in CI), from the repo root:
    python3 -m venv .venv && .venv/bin/pip install torch diffusers numpy
    .venv/bin/python scripts/diffusers_scheduler_fixture.py
"""
import json
import math
from pathlib import Path

import numpy as np
import torch
import diffusers
from diffusers import DDIMScheduler, DDPMScheduler
import diffusers.schedulers.scheduling_ddpm as ddpm_module

OUT = Path(__file__).resolve().parent.parent / "crates/ddpm-diffusion/tests/fixtures/diffusers_scheduler.json"
SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
N = 16


MU, S = 0.2, 0.5


def eps_model(x: torch.Tensor, k: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The stand-in network, fed the 0-based timestep k: the optimal predictor for data
    N(MU, S^2), plus 0.02*sqrt(ab)*sin(k/7), which varies fast enough in k that feeding t
    instead of t - 1 would show. The sqrt(ab) factor keeps the implied x0 error bounded by
    0.02, so trajectories stay well-conditioned even where ab is ~1e-9 (cosine at t = T)."""
    ab = float(alphas_cumprod[k])
    return (math.sqrt(1 - ab) * (x - math.sqrt(ab) * MU) / (ab * S * S + 1 - ab)
            + 0.02 * math.sqrt(ab) * math.sin(k / 7.0))


def betas_f64(name: str) -> torch.Tensor:
    """The papers' schedules in float64 (diffusers builds them in float32, and 0.999 in f32
    is off by 1.3e-5, which the cosine schedule's ᾱ_T ≈ 2e-9 amplifies)."""
    if name == "linear":
        return torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.tensor([min(1 - f(t + 1) / f(t), 0.999) for t in range(1000)], dtype=torch.float64)


def to_f64(scheduler, betas: torch.Tensor):
    """Runs diffusers' scheduler code over float64 coefficients, after checking that its own
    float32 schedule is the same schedule."""
    assert torch.allclose(scheduler.betas.double(), betas, rtol=1e-6, atol=0), "schedules differ"
    scheduler.betas = betas
    scheduler.alphas = 1.0 - betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
    scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


def main() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(N).astype(np.float32)
    out = {"diffusers_version": diffusers.__version__, "x": x.tolist(), "schedules": {}}
    # DDPM steps with the variance noise replaced by zeros: prev_sample is the reverse mean.
    ddpm_module.randn_tensor = lambda shape, **kw: torch.zeros(shape, dtype=torch.float64)
    for name, beta_schedule in SCHEDULES.items():
        entry = {"ddpm_steps": [], "ddim": {}}
        ddpm = to_f64(DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule,
                                    clip_sample=False, variance_type="fixed_small"), betas_f64(name))
        for k in [999, 500, 10, 1, 0]:
            xt = torch.tensor(x, dtype=torch.float64).reshape(1, N)
            eps = eps_model(xt, k, ddpm.alphas_cumprod)
            prev = ddpm.step(eps, k, xt).prev_sample
            entry["ddpm_steps"].append({
                "model_timestep": k,
                "eps": eps.flatten().tolist(),
                "prev_mean": prev.flatten().tolist(),
                "posterior_variance": float(ddpm._get_variance(k)),
                "beta": float(ddpm.betas[k]),
            })
        for spacing in ["leading", "trailing", "linspace"]:
            ddim = to_f64(DDIMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule,
                                        clip_sample=False, set_alpha_to_one=True,
                                        timestep_spacing=spacing), betas_f64(name))
            ddim.set_timesteps(50)
            xt = torch.tensor(x, dtype=torch.float64).reshape(1, N)
            for k in ddim.timesteps:
                xt = ddim.step(eps_model(xt, int(k), ddim.alphas_cumprod), k, xt, eta=0.0).prev_sample
            entry["ddim"][spacing] = {
                "timesteps": [int(k) for k in ddim.timesteps],
                "final": xt.flatten().tolist(),
            }
        out["schedules"][name] = entry
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
