#!/usr/bin/env python3
"""Prints the README's table of quality metrics: the reports of `ddpm eval --json` given,
grouped by n, each group after the floor at that n (training images against the test set,
from assets/eval_floor_by_n.json).

    scripts/eval_table.py assets/eval/ddpm-1000.json assets/eval/ddim-50.json …
"""
import json
import sys


def row(name, r):
    kid = f"{r['kid']:.2f} ± {r['kid_std']:.2f}"
    return (f"| {name} | {r['n']:,} | {r['fid']:.2f} | {kid} | {r['precision']:.3f} | "
            f"{r['recall']:.3f} | {r['mean_confidence']:.3f} |")


def main(paths):
    floor = json.load(open("assets/eval_floor_by_n.json"))["by_n"]
    reports = [json.load(open(path)) for path in paths]
    print("| images | n | FID | KID | precision | recall | mean confidence |")
    print("|---|---|---|---|---|---|---|")
    # Grouped by n, the floor at that n first: FID is comparable only at equal n.
    for n in sorted({r["n"] for r in reports}):
        f = floor.get(str(n))
        if f:
            print(row("train images (the floor)", f))
        else:
            print(f"| train images (the floor) | {n:,} | not measured at this n | | | | |")
        for r in reports:
            if r["n"] == n:
                print(row(f"{r['sampler'].upper()}-{r['steps']}", r))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
