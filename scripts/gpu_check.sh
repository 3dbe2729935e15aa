#!/usr/bin/env bash
# The GPU check of the CUDA issue, as one script for a machine with an NVIDIA GPU:
#
#   1. a forward and backward of the fashion-mnist U-Net on CUDA against the CPU (1e-4);
#   2. training images/s of the fashion-mnist config at batch 128 and 512, f32 and bf16;
#   3. sampling 1,000 images with DDIM-50, images/s.
#
# Build the binary first (here, on a machine without a GPU, with the PyPI toolkit):
#
#   eval "$(scripts/cuda_toolkit.sh)"
#   cargo build --release -p ddpm-cli --features cuda --target-dir target/cuda
#   strip -o target/gpu/ddpm target/cuda/release/ddpm
#
# and run this from the repository root on the GPU machine. The training data is the
# shipped subset (assets/fashion-mnist-subset): throughput does not depend on which images.
# Everything is written under $OUT (default target/gpu-check): the log, the sample grid,
# and summary.txt. Rehearse it on the CPU with small numbers:
#
#   DEVICE=cpu DDPM=target/release/ddpm STEPS=3 BATCHES="4" PRECISIONS="f32" \
#     SAMPLE_N=8 SAMPLE_STEPS=2 scripts/gpu_check.sh
set -uo pipefail

ddpm="${DDPM:-target/gpu/ddpm}"
device="${DEVICE:-cuda}"
steps="${STEPS:-60}"
batches="${BATCHES:-128 512}"
precisions="${PRECISIONS:-f32 bf16}"
sample_n="${SAMPLE_N:-1000}"
sample_steps="${SAMPLE_STEPS:-50}"
out="${OUT:-target/gpu-check}"
mkdir -p "$out"
summary="$out/summary.txt"
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }

say "== machine"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$summary"
fi
if [[ ! -x "$ddpm" ]]; then
  say "no binary at $ddpm (see the build lines at the top of this script)"
  exit 2
fi
missing="$(ldd "$ddpm" 2>/dev/null | grep 'not found' || true)"
if [[ -n "$missing" ]]; then
  say "shared libraries not found (the CUDA 13 runtime libraries must be installed):"
  say "$missing"
  exit 2
fi

status=0
say "== 1. forward and backward against the CPU"
if ! "$ddpm" device-check --device "$device" --batch 8 --tolerance 1e-4 2>&1 | tee -a "$summary"; then
  status=1
fi

say "== 2. training images/s (steps 1-10 are warm-up and not counted)"
say "batch precision images_per_s final_loss"
for batch in $batches; do
  for precision in $precisions; do
    runs="$out/runs-$batch-$precision"
    rm -rf "$runs"
    "$ddpm" train --device "$device" --runs-dir "$runs" \
      --set data.dir=assets/fashion-mnist-subset --set data.download=false \
      --set data.verify_md5=false \
      --set training.batch_size="$batch" --set training.precision="$precision" \
      --set training.steps="$steps" --set training.log_every=1 \
      --set training.checkpoint_every=100000 --set training.sample_every=0 \
      --set sampling.count=16 --set sampling.steps=2 \
      >> "$out/train-$batch-$precision.log" 2>&1
    metrics="$(ls "$runs"/*/metrics.csv 2>/dev/null | head -n 1)"
    if [[ -z "$metrics" ]]; then
      say "$batch $precision FAILED (see $out/train-$batch-$precision.log)"
      tail -n 5 "$out/train-$batch-$precision.log" | tee -a "$summary"
      status=1
      continue
    fi
    # Median of the per-step rates after warm-up.
    rate="$(awk -F, 'NR > 11 { print $6 }' "$metrics" | sort -g \
      | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "n/a" }')"
    loss="$(tail -n 1 "$metrics" | cut -d, -f3)"
    say "$batch $precision $rate $loss"
  done
done

say "== 2b. the same from ddpm bench (model only, no data pipeline), f32 and bf16"
for precision in $precisions; do
  "$ddpm" bench --device "$device" --precision "$precision" --reps 10 \
    $(for b in $batches; do echo --batch "$b"; done) --sample-batch 64 \
    --json "$out/bench-$precision.json" 2>&1 | tee -a "$summary" || status=1
done

say "== 3. sampling $sample_n images, DDIM-$sample_steps"
checkpoint="$(ls "$out"/runs-*-f32/*/step-*.safetensors 2>/dev/null | head -n 1)"
if [[ -d assets/fashion-mnist-ddpm ]]; then
  checkpoint=assets/fashion-mnist-ddpm
fi
if [[ -z "$checkpoint" ]]; then
  say "no checkpoint to sample from"
  status=1
else
  start=$(date +%s.%N)
  if "$ddpm" sample --device "$device" --checkpoint "$checkpoint" --n "$sample_n" \
      --batch "$sample_n" --sampler ddim --steps "$sample_steps" --nrow 40 \
      --out "$out/samples.png" >> "$out/sample.log" 2>&1; then
    end=$(date +%s.%N)
    say "$(awk -v n="$sample_n" -v a="$start" -v b="$end" \
      'BEGIN { printf "%d images in %.2f s: %.1f images/s (including start-up)", n, b - a, n / (b - a) }')"
  else
    say "sampling FAILED (see $out/sample.log)"
    tail -n 5 "$out/sample.log" | tee -a "$summary"
    status=1
  fi
fi
exit $status
