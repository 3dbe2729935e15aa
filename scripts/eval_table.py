#!/usr/bin/env python3
"""Prints the README's table of quality metrics: each report of `ddpm eval --json` given,
next to the floor (training images against the test set) at the same n, read from
assets/eval_floor_by_n.json.

    scripts/eval_table.py assets/eval_ddim-50.json assets/eval_ddim-100.json …
"""
import json
import sys


def row(name, r):
    kid = f"{r['kid']:.2f} ± {r['kid_std']:.2f}"
    return (f"| {name} | {r['n']:,} | {r['fid']:.2f} | {kid} | {r['precision']:.3f} | "
            f"{r['recall']:.3f} | {r['mean_confidence']:.3f} |")


def main(paths):
    floor = json.load(open("assets/eval_floor_by_n.json"))["by_n"]
    print("| images | n | FID | KID | precision | recall | mean confidence |")
    print("|---|---|---|---|---|---|---|")
    for path in paths:
        r = json.load(open(path))
        name = f"{r['sampler'].upper()}-{r['steps']}"
        print(row(name, r))
        f = floor.get(str(r["n"]))
        if f:
            print(row("train images (floor)", f))
        else:
            print(f"| train images (floor) | {r['n']:,} | not measured at this n | | | | |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
