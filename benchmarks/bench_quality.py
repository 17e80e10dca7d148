"""What the memorisation audit costs: its nearest-neighbour search vs a per-image numpy loop, and a whole audit of
a 10,000-image synthetic set.

Side by side in one run, on prostate phantoms at 64 px (``--train`` training images, ``--synthetic`` query images
of another seed):

- ``audit``: :class:`medti.quality.nearest.PixelSearch`, as the audit calls it - the queries' windows standardised
  once, the training windows of several shifts and mirrors stacked into one matrix, one float32 matrix product
  per block of 1,024 queries and group of shifts, a running best;
- ``per-image loop``: the brute-force numpy baseline - the same similarity (the same standardised windows of the
  same 98 shifts and mirrors, computed once per variant), but one synthetic image and one shift at a time: a
  matrix-vector product against every training image and an argmax, in a Python loop.

Both must find the same nearest training image of every query (checked). Rounds of the two sides are interleaved
(which goes first alternates); best and median are reported.

Then one whole :func:`medti.quality.memorization.audit_memorization` of ``--audit-n`` synthetic images against the
same training images (held-out real cases: the val and test splits of the training set's dataset), timed as a
user waits for it: PNGs read, searched, calibrated, every output written. With ``--features`` once more with a
ResNet-18 feature space (random init; what a classifier's forward pass costs, not what it finds).

    python benchmarks/bench_quality.py                                              # defaults
    python benchmarks/bench_quality.py --rounds 1 --synthetic 200 --audit-n 500 --no-write   # smoke test
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

AUDIT_TARGET = 60.0  # seconds: the audit of a 10,000-image set on 2 cores
SIZE = 64


def phantoms(out: Path, n: int, seed: int) -> Path:
    from medti.data.phantoms import PhantomConfig, generate_phantoms

    return generate_phantoms(PhantomConfig(kind="prostate", out=out, n=n, size=SIZE, seed=seed)).out


def per_image_loop(search, images):
    """The baseline: ``search``'s similarity, one query image and one shift / mirror at a time."""
    import numpy as np

    windows = [search._windows(search.ref, dy, dx, mirror=f) for f, dy, dx in search.variants]
    query = search._windows(images, 0, 0)
    best = np.full(len(images), -np.inf, np.float32)
    index = np.zeros(len(images), np.int64)
    for i, q in enumerate(query):
        for w in windows:
            sims = w @ q
            j = int(sims.argmax())
            if sims[j] > best[i]:
                best[i], index[i] = sims[j], j
    return best, index


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train", type=int, default=200, help="training images searched")
    ap.add_argument("--synthetic", type=int, default=2000, help="query images of the search benchmark")
    ap.add_argument("--audit-n", type=int, default=10000, help="synthetic images of the whole-audit timing")
    ap.add_argument("--features", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the whole audit with a ResNet-18 feature space")
    ap.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    args = ap.parse_args()
    from _report import check_positive

    check_positive(ap, args, ("rounds", "train", "synthetic", "audit_n"))

    import numpy as np
    import torch

    from _report import command_line, interleave, machine, write_section
    from medti._quiet import quiet_libraries
    from medti.quality.images import load_set
    from medti.quality.memorization import MemorizationConfig, audit_memorization
    from medti.quality.nearest import PixelSearch

    quiet_libraries()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # the training set is the train split (34 %) of a phantom set; its val + test splits are the held-out cases
        real = phantoms(tmp / "real", int(args.train / 0.34) + 3, seed=1)
        train = load_set(real, role="train", split="train")
        train = train.subset(np.arange(len(train)) < args.train)
        queries = load_set(phantoms(tmp / "syn", args.synthetic, seed=2), role="synthetic").images

        # 1. The search, side by side
        search = PixelSearch(train.images)
        fast, slow = search(queries), per_image_loop(search, queries)
        same = float(np.mean(fast.index == slow[1]))
        gap = float(np.max(np.abs(fast.similarity - slow[0])))
        assert same == 1.0 and gap < 1e-4, f"the two sides disagree: {same:.4f} same nearest, max gap {gap:.2e}"
        rates = interleave({"audit": lambda: timed(lambda: search(queries))[0],
                            "per-image loop": lambda: timed(lambda: per_image_loop(search, queries))[0]},
                           args.rounds, len(queries), "images/s", "search")

        # 2. The whole audit of a large synthetic set
        big = phantoms(tmp / "syn-big", args.audit_n, seed=3)
        audits = {}
        secs, res = timed(lambda: audit_memorization(MemorizationConfig(train=real, synthetic=big, out=tmp / "a1")))
        audits["pixel space"] = (secs, res)
        if args.features:
            from transformers import ResNetModel

            from medti.classify.model import resnet18_config

            torch.manual_seed(0)
            ResNetModel(resnet18_config(1)).save_pretrained(tmp / "resnet18", safe_serialization=True)
            secs, res = timed(lambda: audit_memorization(MemorizationConfig(
                train=real, synthetic=big, out=tmp / "a2", features=tmp / "resnet18")))
            audits["pixel + ResNet-18 feature space"] = (secs, res)
    load_end = os.getloadavg()[0]

    # 3. Report
    best = {k: max(v) for k, v in rates.items()}
    med = {k: statistics.median(v) for k, v in rates.items()}
    speedup, speedup_med = best["audit"] / best["per-image loop"], med["audit"] / med["per-image loop"]
    cmd = command_line(ap, args, "bench_quality.py")
    variants = len(search.variants)
    rows = "\n".join(f"| {name} | {args.audit_n} | {r.n_train} | {r.n_heldout} | {s:.1f} s | "
                     f"{'met' if s <= AUDIT_TARGET else 'missed'} |" for name, (s, r) in audits.items())
    first = next(iter(audits.values()))[1]
    body = f"""## Memorisation audit: nearest-neighbour search vs a per-image numpy loop; a 10,000-image audit

`{cmd}` on {machine()}; numpy {np.__version__}, torch {torch.get_num_threads()} thread(s). 1-minute load average
{load_start:.2f} at the start, {load_end:.2f} at the end (more than 2 means other jobs shared the cores).

Search: the nearest of {len(train)} training images (prostate phantoms, 64 px) for each of {len(queries)} synthetic
images, by the audit's pixel similarity ({search.description}: {variants} shifts and mirrors of every training
image). `audit` = `PixelSearch` (stacked windows, one float32 matrix product per block of queries and group of
shifts); `per-image loop` = the same windows, one synthetic image and one shift at a time (a matrix-vector product
and an argmax in a Python loop). Both find the same nearest image for every query (checked: {same:.0%} agree, largest
similarity gap {gap:.1e}). Best of {args.rounds} interleaved rounds, median beside it.

| side | images/s, best | images/s, median |
|---|---|---|
| `audit` (`PixelSearch`) | {best["audit"]:.0f} | {med["audit"]:.0f} |
| `per-image loop` | {best["per-image loop"]:.0f} | {med["per-image loop"]:.0f} |

`PixelSearch` is **{speedup:.1f}x** the per-image loop (median {speedup_med:.1f}x).

Whole audit (`audit_memorization`, one run each, as a user waits for it: PNGs read, nearest neighbours of every
synthetic and held-out image, calibration, audit.json, nearest.csv, calibration.csv, both PNGs; the feature space's
network is a random-init ResNet-18, timed for its forward passes): target under {AUDIT_TARGET:.0f} s on 2 cores.

| audit | synthetic | training | held-out | wall time | target |
|---|---|---|---|---|---|
{rows}

Verdict on these phantoms of another seed: {"pass" if first.passed else "fail"}, {first.flagged} flagged (copy rate
{first.copy_rate:.4f}), pixel threshold {first.threshold:.4f} (held-out max {first.heldout_max:.4f}).
"""
    print(body)
    if not args.no_write:
        write_section("quality-memorization", body)


if __name__ == "__main__":
    main()
