#!/usr/bin/env bash
# Ships a finished fashion-mnist run in assets/: the EMA pipeline that `ddpm sample` uses by
# default (assets/fashion-mnist-ddpm), an 8×8 grid of EMA samples, a 10×10 grid with one
# class per column, a progression figure and a sampling GIF, and the run's record (config,
# metrics, loss curve, grids, segments) without its checkpoints. Prints the numbers the
# README gives: steps, images/s, final loss.
#
#   DDPM=/tmp/ddpm-copy scripts/finish_main_run.sh [RUN_DIR]   (default runs/fashion-mnist-main)
set -euo pipefail
run=${1:-runs/fashion-mnist-main}
ddpm=${DDPM:-target/release/ddpm}
if [ ! -d "$run/pipeline" ]; then
    echo "$run/pipeline: missing; the run has not finished (ddpm train writes it after the last step)" >&2
    exit 1
fi
rm -rf assets/fashion-mnist-ddpm.tmp
cp -r "$run/pipeline" assets/fashion-mnist-ddpm.tmp
rm -rf assets/fashion-mnist-ddpm
mv assets/fashion-mnist-ddpm.tmp assets/fashion-mnist-ddpm
du -sh assets/fashion-mnist-ddpm

# Sampled with the shipped pipeline (the default model), DDIM with 50 steps from its config.
"$ddpm" sample --n 64 --nrow 8 --seed 0 --out assets/fashion-mnist-samples-8x8.png \
    --progression assets/fashion-mnist-progression.png --gif assets/fashion-mnist-sampling.gif
"$ddpm" sample --n 100 --seed 1 --out assets/fashion-mnist-classes.png

record=assets/fashion-mnist-run
rm -rf "$record.tmp"
mkdir -p "$record.tmp"
for f in config.toml metrics.csv loss.png segments.csv samples; do
    [ -e "$run/$f" ] && cp -r "$run/$f" "$record.tmp/"
done
rm -rf "$record"
mv "$record.tmp" "$record"

python3 - "$run/metrics.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
last = rows[-1]
tail = [float(r["loss"]) for r in rows[-8:]]
rates = [float(r["images_per_s"]) for r in rows]
rates.sort()
print(f"steps {last['step']}, epoch {last['epoch']}")
print(f"loss: last logged {float(last['loss']):.4f}, mean of the last {len(tail)} logs {sum(tail)/len(tail):.4f}")
print(f"images/s: median {rates[len(rates)//2]:.1f} over {len(rates)} log intervals")
PY
