"""The AUC bootstrap interval every evaluation reports: medti's weighted Mann-Whitney form vs scikit-learn per replicate.

Side by side in one run, on the same scores and seeds:

- ``medti``: :func:`medti.classify.metrics.bootstrap_auc` - each replicate's draw held as a count per case, its AUC
  read off one cumulative sum over the negatives sorted once (O(n) per replicate, ``block`` replicates at a time);
- ``reference``: the loop most evaluation code writes (and medti shipped before): per replicate, index the scores
  with the drawn cases and call ``sklearn.metrics.roc_auc_score``.

Both draw the same cases in the same order (``numpy.random.default_rng(seed)``, positives then negatives per
replicate); the script checks that the intervals agree before it reports a time. Scores are synthetic: labels with a
30 % positive rate, scores uniform plus a shift for positives, rounded to 2 decimals (ties, as a classifier's
probabilities at a few hundred cases have them). Rounds are interleaved (which side goes first alternates); best and
median are reported.

    python benchmarks/bench_metrics.py                      # 3 rounds, 2000 replicates, test sets of 200 and 2000
    python benchmarks/bench_metrics.py --rounds 1 --boot 200 --no-write   # smoke test
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGET = 10.0  # medti's interval at least this many times the reference's speed


def reference_bootstrap_auc(y, p, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """The per-replicate scikit-learn loop (medti's ``bootstrap_auc`` before 2026-12-04)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    for b in range(n_boot):
        idx = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        stats[b] = roc_auc_score(labels, p[idx])
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    y = (g.random(n) < 0.3).astype(int)
    y[:2] = (1, 0)
    return y, np.round(g.random(n) + 0.3 * y, 2)


def main() -> None:
    from _report import check_positive, command_line, machine, write_section
    from medti.classify.metrics import bootstrap_auc

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--boot", type=int, default=2000, help="replicates per interval (evaluate's default)")
    ap.add_argument("--sizes", default="200,2000", help="test-set sizes, comma-separated")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md as it is")
    args = ap.parse_args()
    check_positive(ap, args, ["rounds", "boot"])
    sizes = [int(s) for s in args.sizes.split(",")]
    load0 = os.getloadavg()[0]

    rows = []
    for n in sizes:
        y, p = scores(n, seed=n)
        sides = {"medti": lambda y=y, p=p: bootstrap_auc(y, p, n_boot=args.boot, seed=1),
                 "reference": lambda y=y, p=p: reference_bootstrap_auc(y, p, n_boot=args.boot, seed=1)}
        got = {k: f() for k, f in sides.items()}
        gap = max(abs(a - b) for a, b in zip(got["medti"], got["reference"], strict=True))
        if gap > 1e-12:
            sys.exit(f"n={n}: the two intervals differ ({got}); not timing different computations")
        times: dict[str, list[float]] = {k: [] for k in sides}
        for r in range(args.rounds):
            for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
                t = time.perf_counter()
                sides[name]()
                times[name].append(time.perf_counter() - t)
                print(f"n={n} round {r + 1}: {name:10s} {times[name][-1]:8.3f} s", flush=True)
        rows.append((n, int(y.sum()), got["medti"], gap, times))

    load1 = os.getloadavg()[0]
    lines = [
        "## AUC bootstrap interval: weighted Mann-Whitney vs scikit-learn per replicate",
        "",
        f"`{command_line(ap, args, 'bench_metrics.py')}` on {machine()}; numpy {np.__version__}. 1-minute load "
        f"average {load0:.2f} at the start, {load1:.2f} at the end (more than 1 means other jobs shared the core "
        f"this runs on). Best of {args.rounds} interleaved rounds, median beside it; {args.boot} replicates per interval.",
        "",
        "`medti` = `medti.classify.metrics.bootstrap_auc` (each replicate a count per case, its AUC read off one "
        "cumulative sum over the negatives sorted once); `reference` = the same draws, `roc_auc_score` per replicate. "
        "Both give the same interval (largest gap below).",
        "",
        "| test cases (positives) | interval | largest gap | medti best, s | medti median, s | reference best, s "
        "| reference median, s | speed-up, best | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, n_pos, ci, gap, t in rows:
        ratio = min(t["reference"]) / min(t["medti"])
        lines.append(f"| {n} ({n_pos}) | {ci[0]:.4f}-{ci[1]:.4f} | {gap:.1e} | {min(t['medti']):.3f} | "
                     f"{statistics.median(t['medti']):.3f} | {min(t['reference']):.2f} | "
                     f"{statistics.median(t['reference']):.2f} | **{ratio:.0f}x** | "
                     f">= {TARGET:.0f}x: {'met' if ratio >= TARGET else 'missed'} |")
    lines += ["", f"The target ({TARGET:.0f}x) is medti's own: the interval was 3-4 s of every evaluation (about half of an "
              "evaluate task's step at the demo's settings, and paid once per classifier in an experiment's grid); at "
              f"{TARGET:.0f}x it is noise beside the forward pass over the test split."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("metrics-bootstrap-auc", body)


if __name__ == "__main__":
    main()
