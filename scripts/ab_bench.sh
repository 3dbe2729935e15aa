#!/usr/bin/env bash
# Compares two `ddpm` binaries on this machine by alternating them, since its speed drifts
# by up to 1.5× between runs and one run of each proves nothing (docs/PERFORMANCE.md):
# ROUNDS times, A then B, each `ddpm bench --batch 64 --reps 3`; then the median training
# images/s and sampling-step ms of each, their ranges, and how many rounds B won.
#
#   cargo build --release -p ddpm-cli && cp target/release/ddpm /tmp/ddpm-new
#   scripts/ab_bench.sh /tmp/ddpm-old /tmp/ddpm-new 8
#
# Copy the binaries out of target/ first: a build while this runs would halve both.
set -euo pipefail
if [[ $# -lt 2 || $# -gt 3 ]]; then
    echo "usage: $0 BINARY_A BINARY_B [ROUNDS (default 8)]" >&2
    exit 2
fi
a=$1 b=$2 rounds=${3:-8}
for bin in "$a" "$b"; do
    [[ -x $bin ]] || { echo "$0: $bin is not an executable" >&2; exit 2; }
done
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for round in $(seq 1 "$rounds"); do
    for side in A B; do
        bin=$a
        [[ $side == B ]] && bin=$b
        out=$("$bin" bench --batch 64 --reps 3 2>&1) || { echo "$out" >&2; exit 1; }
        train=$(awk '/^train, batch 64/ {print $4}' <<<"$out")
        sample=$(awk '/^sampling step/ {print $5}' <<<"$out")
        echo "round $round $side train=$train images/s sample=$sample ms"
        echo "$round $side $train $sample" >>"$results"
    done
done
awk '
function median(v, n,    i, j, t) {
    for (i = 2; i <= n; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
    return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
}
{ n[$2]++; tr[$2, n[$2]] = $3; sa[$2, n[$2]] = $4; r[$2, $1] = $3; s[$2, $1] = $4 }
END {
    split("A B", sides, " ")
    for (x = 1; x <= 2; x++) {
        side = sides[x]; k = n[side]; lo_t = hi_t = tr[side, 1]; lo_s = hi_s = sa[side, 1]
        for (i = 1; i <= k; i++) {
            t[i] = tr[side, i]; q[i] = sa[side, i]
            if (t[i] < lo_t) lo_t = t[i]; if (t[i] > hi_t) hi_t = t[i]
            if (q[i] < lo_s) lo_s = q[i]; if (q[i] > hi_s) hi_s = q[i]
        }
        printf "%s: train median %.1f images/s (%.1f-%.1f), sampling step median %.0f ms (%.0f-%.0f)\n", \
            side, median(t, k), lo_t, hi_t, median(q, k), lo_s, hi_s
    }
    for (i = 1; i <= n["A"]; i++) { wt += r["B", i] > r["A", i]; ws += s["B", i] < s["A", i] }
    printf "B faster: training in %d of %d rounds, sampling in %d of %d\n", wt, n["A"], ws, n["A"]
}' "$results"
