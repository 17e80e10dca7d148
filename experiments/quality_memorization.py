"""Issue 28's measurement: does textual inversion copy its training images? The memorisation audit of the synthetic
sets of an augmentation experiment, made from 100-case and from 10-case embeddings.

Reads an experiment dir of ``medti experiment augment`` (default: the `full` preset's,
``~/.cache/medti/runs/augment-full``; regenerate it with
``medti experiment augment --preset full --out ~/.cache/medti/runs/augment-full``, about 2.7 h of task time on 2
cores). From its plan.json: each synthesis task's synthetic set and embeddings, and the dataset those embeddings
learnt from; each set is audited against exactly the cases its embeddings learnt from (``embeddings=``), held-out
real cases = the val and test splits of the dataset the training set was drawn from (the audit's default), pixel
space and the feature space of the real-data classifier (row ``real-200``, seed 0: trained on the same real cases).

Two controls on real data show what the audit sees on these images:

- positive: the `oracle` row's 2,000 real training cases audited as if synthetic against the 100-case embeddings'
  training cases - the cases in both are true copies and must be flagged, the others not;
- negative: the 200 real test cases audited as if synthetic (calibrated on the source's val split only) - new
  patients, which must pass.

    python experiments/quality_memorization.py [RUN_DIR] [--no-write]

Writes each audit beside its set (``<set>.memorization``; the controls' to a temp dir), the "quality-memorization"
section of docs/results.md, and docs/img/quality_memorization_{c100,c10}.png (closest pairs) and
docs/img/quality_memorization_hist_{c100,c10}.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
IMG = ROOT / "docs" / "img"
DEFAULT_RUN = Path.home() / ".cache" / "medti" / "runs" / "augment-full"


def plan_sets(run: Path) -> list[dict]:
    """Per synthesis task: its synthetic set, embeddings, the dataset they learnt from, and the embeddings' cases."""
    tasks = json.loads((run / "plan.json").read_text())["tasks"]
    embeds = {t["config"]["out"]: t["config"] for t in tasks if t["step"] == "train_embedding"}
    out = []
    for t in tasks:
        if t["step"] != "synthesize":
            continue
        cfg = t["config"]
        learnt = {embeds[e]["data"] for e in cfg["embeddings"]}
        if len(learnt) != 1:
            raise SystemExit(f"{t['id']}: its embeddings learnt from several datasets {sorted(learnt)}")
        out.append({"name": t["id"].removeprefix("synthesize-"), "synthetic": run / cfg["out"],
                    "train": run / learnt.pop(), "embeddings": tuple(run / e for e in cfg["embeddings"]),
                    "cases": {embeds[e]["max_images"] for e in cfg["embeddings"]}.pop()})
    return sorted(out, key=lambda s: -s["cases"])


def real_classifier(run: Path, train: Path) -> Path | None:
    """The seed-0 classifier trained on ``train`` alone (the real-data classifier)."""
    for t in json.loads((run / "plan.json").read_text())["tasks"]:
        c = t["config"]
        if t["step"] == "train_classifier" and t.get("seed") == 0 and [run / p for p in c["train"]] == [train]:
            return run / c["out"]
    return None


def small_png(src: Path, dst: Path) -> None:
    """A copy for the docs in 128 colours (a third of the bytes; the pictures are flat colour and text)."""
    from PIL import Image

    with Image.open(src) as im:
        im.convert("RGB").quantize(colors=128).save(dst, optimize=True)


def row(name: str, res, extra: str = "") -> dict:
    doc = json.loads(res.report.read_text())
    spaces = doc["spaces"]
    import csv

    near = list(csv.DictReader(open(res.nearest)))
    best = {s: max(float(r[f"{s}_similarity"]) for r in near) for s in spaces}
    med = {s: sorted(float(r[f"{s}_similarity"]) for r in near)[len(near) // 2] for s in spaces}
    by = {s: sum(s in f["flagged_by"] for f in doc["flags"] + doc["review"]) for s in spaces}
    return {"name": name, "extra": extra, "n": res.n_synthetic, "train": res.n_train, "heldout": res.n_heldout,
            "verdict": doc["verdict"], "flagged": res.flagged, "copy_rate": res.copy_rate,
            "spaces": {s: {"threshold": spaces[s]["threshold"], "heldout_max": spaces[s]["heldout_max"],
                           "heldout_median": spaces[s]["heldout_median"], "max": best[s], "median": med[s],
                           "flagged": by[s]} for s in spaces}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, nargs="?", default=DEFAULT_RUN, help="experiment dir (medti experiment augment)")
    ap.add_argument("--features", action=argparse.BooleanOptionalAction, default=True,
                    help="feature space of the real-data classifier too")
    ap.add_argument("--no-write", action="store_true", help="print only; do not update docs/")
    args = ap.parse_args()
    run = args.run.expanduser()
    if not (run / "plan.json").is_file():
        raise SystemExit(f"{run}: no plan.json; give the dir of a `medti experiment augment` run")

    import torch

    from _report import RESULTS, machine, write_section
    from medti._quiet import quiet_libraries
    from medti.data.dataset import Dataset
    from medti.quality.memorization import MemorizationConfig, audit_memorization, embedding_cases

    quiet_libraries()
    torch.set_num_threads(2)
    sets = plan_sets(run)
    rows, timings = [], {}
    features = real_classifier(run, sets[0]["train"]) if args.features else None
    for s in sets:
        t0 = time.perf_counter()
        res = audit_memorization(MemorizationConfig(train=s["train"], synthetic=s["synthetic"],
                                                    embeddings=s["embeddings"], features=features, pairs=8,
                                                    overwrite=True))
        timings[s["name"]] = time.perf_counter() - t0
        print(res.summary(), flush=True)
        rows.append(row(s["synthetic"].name, res, f"{s['cases']}-case embeddings"))
        if not args.no_write:
            IMG.mkdir(parents=True, exist_ok=True)
            small_png(res.closest_pairs, IMG / f"quality_memorization_{s['name']}.png")
            small_png(res.histogram, IMG / f"quality_memorization_hist_{s['name']}.png")

    big = sets[0]
    data = big["train"].parent
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pos = audit_memorization(MemorizationConfig(train=big["train"], synthetic=data / "real-train-2000",
                                                    embeddings=big["embeddings"], features=features,
                                                    out=tmp / "positive"))
        overlap = {c.case_id for c in Dataset(data / "real-train-2000").cases()}
        learnt = set(embedding_cases(big["train"], big["embeddings"])[0])
        true_copies = overlap & learnt
        caught = set(pos.flagged_ids)
        print(pos.summary(), flush=True)
        rows.append(row("real-train-2000 (control +)", pos, f"{len(true_copies)} of its cases are training cases"))
        neg = audit_memorization(MemorizationConfig(train=big["train"], synthetic=data / "real-test",
                                                    embeddings=big["embeddings"], features=features,
                                                    heldout=data / "source", heldout_split="val",
                                                    out=tmp / "negative"))
        print(neg.summary(), flush=True)
        rows.append(row("real-test (control -)", neg, "new patients"))
    pos_note = (f"flags {len(caught & true_copies)} of the {len(true_copies)} true copies and "
                f"{len(caught - true_copies)} other cases")
    print("positive control:", pos_note)

    def cell(r: dict, s: str) -> str:
        if s not in r["spaces"]:
            return "-"
        v = r["spaces"][s]
        return (f"{v['threshold']:.4f} | {v['heldout_max']:.4f} / {v['heldout_median']:.3f} | "
                f"{v['max']:.4f} / {v['median']:.3f} | {v['flagged']}")

    spaces = ["pixel"] + (["feature"] if features else [])
    head = " | ".join(f"{s} threshold | {s}: held-out max / median | {s}: audited max / median | above it"
                      for s in spaces)
    lines = [f"| set | what | audited | training cases | held-out | {head} | copy rate | verdict |",
             "|" + "---|" * (7 + 4 * len(spaces))]
    for r in rows:
        cells = " | ".join(cell(r, s) for s in spaces)
        lines.append(f"| {r['name']} | {r['extra']} | {r['n']} | {r['train']} | {r['heldout']} | {cells} | "
                     f"{r['copy_rate']:.4f} | **{r['verdict']}** |")
    table = "\n".join(lines)
    feat = (f"the feature space is the penultimate layer of `{features.relative_to(run)}` (trained on the same real "
            "cases; checkpoint chosen on real-val)" if features else "pixel space only")
    pics = "\n\n".join(f"![closest pairs, {s['name']}](img/quality_memorization_{s['name']}.png)\n"
                       f"![nearest-training similarity, {s['name']}](img/quality_memorization_hist_{s['name']}.png)"
                       for s in sets)
    body = f"""## Memorisation audit of the augmentation experiment's synthetic sets (100-case and 10-case embeddings)

`python experiments/quality_memorization.py {args.run}` (= `medti quality memorization --train
data/real-train-200 --synthetic data/synthetic-cN-2000 --embedding embeddings/cN/csPCa.safetensors --embedding
embeddings/cN/healthy.safetensors --features {features.relative_to(run) if features else ''}` in that dir) on
{machine()}, against the `full` augmentation experiment's run dir (regenerate: `medti experiment augment --preset
full --out {args.run}`). Each synthetic set is audited against exactly the cases its two embeddings learnt from;
held-out real = the val and test splits of `data/source` (the dataset `real-train-200` was drawn from); {feat}.
Default settings: 2x2 box averaging, shifts up to 3 px, mirrors, margin 0.5 (flagged when closer than half the
smallest held-out distance), tolerance 0. Audit wall time: {", ".join(f"{k} {v:.0f} s" for k, v in timings.items())}.

Similarities are to the nearest training image (1 = identical up to brightness and contrast); "held-out" is how
close new real patients come, which the threshold is calibrated on.

{table}

Positive control: {pos_note}. Negative control: the real test cases (new patients) against the same training set,
calibrated on the source's val split.

{pics}
"""
    print(body)
    if not args.no_write:
        write_section("quality-memorization", body, RESULTS)


if __name__ == "__main__":
    main()
