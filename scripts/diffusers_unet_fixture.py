#!/usr/bin/env python3
"""Writes the U-Net parity fixtures under crates/ddpm-unet/tests/fixtures/.

Two small diffusers UNet2DModels with random (perturbed) weights, each saved as a diffusers
model directory, plus `io.safetensors` holding a fixed input, timesteps, class labels and
diffusers' output. The Rust test loads the directory with UNet::from_diffusers and compares.

With --check-ours DIR, instead loads a directory written by ddpm's UNet::save_diffusers
into diffusers and compares its output with the fixture of the same name, proving that our
checkpoints load in diffusers.

Run on demand (not in CI), from the repo root:
    python3 -m venv .venv && .venv/bin/pip install torch diffusers safetensors
    .venv/bin/python scripts/diffusers_unet_fixture.py
"""
import argparse
from pathlib import Path

import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent / "crates/ddpm-unet/tests/fixtures"

MODELS = {
    # Multi-head attention at the lower level.
    "small": dict(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=8,
    ),
    # Attention at two levels, class embeddings, one head, the DDPM release's embedding
    # (sin first, freq_shift 1) and downsampling (padding 0: pad right and bottom).
    "class_cond": dict(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16, 16), layers_per_block=2,
        down_block_types=("AttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D"),
        norm_num_groups=8, norm_eps=1e-6, attention_head_dim=None, num_class_embeds=5,
        flip_sin_to_cos=False, freq_shift=1, downsample_padding=0,
    ),
}


def inputs(name: str, config: dict):
    g = torch.Generator().manual_seed(1)
    c, s = config["in_channels"], config["sample_size"]
    x = torch.randn(2, c, s, s, generator=g)
    t = torch.tensor([3, 917], dtype=torch.int64)
    y = torch.tensor([1, 4], dtype=torch.int64) if config.get("num_class_embeds") else None
    return x, t, y


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check-ours", type=Path)
    args = parser.parse_args()
    if args.check_ours:
        model = UNet2DModel.from_pretrained(args.check_ours).eval()
        name = args.check_ours.name
        io = load_file(ROOT / name / "io.safetensors")
        with torch.no_grad():
            out = model(io["x"], io["t"].long(), class_labels=io["y"].long() if "y" in io else None).sample
        print(f"{name}: max |diffusers(ours) - fixture| = {(out - io['out']).abs().max().item():.3e}")
        return
    for name, config in MODELS.items():
        torch.manual_seed(0)
        model = UNet2DModel(**config).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        x, t, y = inputs(name, config)
        with torch.no_grad():
            out = model(x, t, class_labels=y).sample
        directory = ROOT / name
        model.save_pretrained(directory, safe_serialization=True)
        io = {"x": x, "t": t.to(torch.int32), "out": out.contiguous()}
        if y is not None:
            io["y"] = y.to(torch.int32)
        save_file(io, directory / "io.safetensors")
        print(f"wrote {directory} ({sum(p.numel() for p in model.parameters())} parameters)")


if __name__ == "__main__":
    main()
