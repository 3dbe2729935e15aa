#!/usr/bin/env python3
"""The PyTorch twin of `ddpm bench`: diffusers' UNet2DModel with our U-Net's config.

Run by `ddpm bench --vs-pytorch` as a worker that answers one request per line on stdin,
so that both frameworks' measurements can be interleaved in one run:

    train B    one training step (forward, MSE to the noise, backward, global-norm clip 1.0,
               AdamW step) at batch B            -> {"seconds": s}
    sample B   one sampling step (forward without gradients, DDPM update) at batch B
                                                 -> {"seconds": s}
    flops B    FLOPs of one training step's forward + backward at batch B, counted by
               torch.utils.flop_counter.FlopCounterMode      -> {"flops": n}
    quit

Usage: bench_pytorch.py --config unet_config.json [--threads 2]

If torch or diffusers is missing, the script creates ../.venv (next to scripts/), installs
both from PyPI into it, and re-runs itself there.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv")


def ensure_packages():
    try:
        import torch  # noqa: F401
        import diffusers  # noqa: F401
        return
    except ImportError:
        pass
    python = os.path.join(VENV, "bin", "python")
    if os.path.abspath(sys.executable) == os.path.abspath(python):
        sys.exit("bench_pytorch.py: torch/diffusers still missing inside " + VENV)
    if not os.path.exists(python):
        print(f"bench_pytorch.py: creating {VENV}", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    print("bench_pytorch.py: installing torch and diffusers from PyPI (once)", file=sys.stderr)
    subprocess.check_call(
        [python, "-m", "pip", "install", "-q", "torch", "diffusers", "numpy", "safetensors"],
        stdout=sys.stderr,
    )
    os.execv(python, [python] + sys.argv)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, help="UNet2DModel config.json")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    ensure_packages()

    import torch
    from diffusers import UNet2DModel

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(0)
    with open(args.config) as f:
        config = json.load(f)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    model = UNet2DModel(**config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.0)
    side = config.get("sample_size") or 32
    channels = config["in_channels"]
    timesteps = 1000
    betas = torch.linspace(1e-4, 0.02, timesteps)
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    # Class-conditional configs: labels cycle through the real classes (the last embedding
    # is the null class of guidance), as the Rust side does.
    classes = config.get("num_class_embeds")

    def labels(b):
        return torch.arange(b) % (classes - 1) if classes else None

    def batch(b):
        x0 = torch.randn(b, channels, side, side)
        t = torch.randint(0, timesteps, (b,))
        noise = torch.randn_like(x0)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise, t, noise

    def train_step(b):
        x_t, t, noise = batch(b)
        start = time.perf_counter()
        model.train()
        pred = model(x_t, t, class_labels=labels(b)).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return time.perf_counter() - start

    def sample_step(b):
        x_t = torch.randn(b, channels, side, side)
        t = torch.full((b,), 500)
        start = time.perf_counter()
        model.eval()
        with torch.no_grad():
            eps = model(x_t, t, class_labels=labels(b)).sample
            beta, alpha_bar = betas[500], alphas_cumprod[500]
            x_prev = (x_t - beta / (1 - alpha_bar).sqrt() * eps) / (1 - beta).sqrt()
            x_prev = x_prev + beta.sqrt() * torch.randn_like(x_prev)
        return time.perf_counter() - start

    def flops(b):
        from torch.utils.flop_counter import FlopCounterMode

        x_t, t, noise = batch(b)
        counter = FlopCounterMode(display=False)
        with counter:
            pred = model(x_t, t, class_labels=labels(b)).sample
            torch.nn.functional.mse_loss(pred, noise).backward()
        optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    warmed = set()
    print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "quit":
            break
        what, b = parts[0], int(parts[1])
        if what in ("train", "sample") and (what, b) not in warmed:
            (train_step if what == "train" else sample_step)(b)
            warmed.add((what, b))
        if what == "train":
            reply = {"seconds": train_step(b)}
        elif what == "sample":
            reply = {"seconds": sample_step(b)}
        elif what == "flops":
            reply = {"flops": flops(b)}
        else:
            reply = {"error": f"unknown request {what!r}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
