#!/usr/bin/env bash
# Draws N samples in pieces of PIECE images, one `ddpm sample --tensors` file per piece,
# then evaluates them all with `ddpm eval --samples`. Pieces already on disk are kept, so
# the script resumes where an interrupted run stopped: run the same command again.
# Piece i is drawn with seed i (one batch per piece), so no two pieces share images.
#
#   scripts/eval_in_pieces.sh OUT_DIR N PIECE [sampler options for `ddpm sample`…]
#
#   DDPM=/tmp/ddpm-run CHECKPOINT=assets/fashion-mnist-ddpm \
#     scripts/eval_in_pieces.sh runs/eval/ddpm-1000 500 100 --sampler ddpm
#
# DDPM: the binary (default target/release/ddpm; long runs should use a copy, so that a
# rebuild cannot replace it under them). CHECKPOINT: the model (default: the shipped one).
# Writes OUT_DIR/piece-*.safetensors, OUT_DIR/report.json and OUT_DIR/report.txt.
set -euo pipefail
if [ $# -lt 3 ]; then
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
out=$1 n=$2 piece=$3
shift 3
ddpm=${DDPM:-target/release/ddpm}
checkpoint=${CHECKPOINT:-assets/fashion-mnist-ddpm}
if ! [[ $n =~ ^[0-9]+$ && $piece =~ ^[0-9]+$ ]] || [ "$piece" -eq 0 ] || [ $((n % piece)) -ne 0 ]; then
    echo "N ($n) must be a multiple of PIECE ($piece)" >&2
    exit 2
fi
[ -x "$ddpm" ] || { echo "$ddpm: not found (cargo build --release -p ddpm-cli, or set DDPM)" >&2; exit 2; }
mkdir -p "$out"
pieces=$((n / piece))
files=()
for ((i = 0; i < pieces; i++)); do
    file=$(printf '%s/piece-%04d.safetensors' "$out" "$i")
    files+=("$file")
    if [ -f "$file" ]; then
        continue
    fi
    echo "piece $((i + 1))/$pieces -> $file" >&2
    "$ddpm" sample --checkpoint "$checkpoint" --n "$piece" --batch "$piece" --seed "$i" \
        --out "$out/piece-grid.png" --tensors "$file" "$@"
done
"$ddpm" eval --samples "${files[@]}" --json "$out/report.json" | tee "$out/report.txt"
