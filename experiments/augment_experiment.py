"""The augmentation experiment (does synthetic data help a ResNet-18?) on the phantom preset, written to
docs/results.md with its settings, time and figures.

    python experiments/augment_experiment.py --preset quick --out runs/augment-quick
    python experiments/augment_experiment.py --preset full --out runs/augment-full

It is `medti experiment augment --preset P --out DIR` plus the write-up: a killed run continues (finished tasks
are reused), and the time reported is the wall time of the tasks this invocation ran and reused, by step.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="quick", choices=("quick", "full"))
    ap.add_argument("--config", type=Path, default=None, help="YAML over the preset")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    import yaml

    from _report import RESULTS, machine, write_section
    from medti.experiment.config import load_config, preset
    from medti.experiment.runner import RECORDS, RunConfig, run_plan

    cfg = preset(args.preset)
    if args.config:
        cfg = load_config(args.config, base=cfg)

    def report(i, n, task, state, result):
        if state != "start":
            print(f"[{i + 1}/{n}] {task.id}: {state} {json.dumps(result, default=str)[:160] if result else ''}",
                  flush=True)

    t0 = time.time()
    res = run_plan(RunConfig(experiment=cfg, out=args.out, on_task=report, threads=args.threads))
    wall = time.time() - t0
    by_step: dict[str, float] = {}
    for rec in (args.out / RECORDS).glob("*.json"):
        r = json.loads(rec.read_text())
        by_step[r["step"]] = by_step.get(r["step"], 0.0) + r["seconds"]
    total = sum(by_step.values())
    print(res.text())
    if args.no_write:
        return
    img = ROOT / "docs" / "img"
    names = {}
    for src in ("figure.png", "roc.png", *res.summary.get("samples", [])):
        if (args.out / src).is_file():
            dst = f"augment_{args.preset}_{src}"
            shutil.copyfile(args.out / src, img / dst)
            names[src] = dst
    steps = ", ".join(f"{k} {v / 60:.1f} min" for k, v in sorted(by_step.items(), key=lambda kv: -kv[1]))
    samples = "\n".join(f"![{n}](img/{d})" for n, d in names.items() if n.startswith("samples-"))
    body = f"""## Does synthetic data help a ResNet-18? The augmentation experiment, preset `{args.preset}`

`python experiments/augment_experiment.py --preset {args.preset}` (= `medti experiment augment --preset
{args.preset}`) on {machine()}. All tasks together: **{total / 60:.1f} min** of task time ({steps}); this invocation's
wall time {wall / 60:.1f} min ({len(res.ran)} tasks run, {len(res.reused)} reused from an earlier, interrupted run).

AUC on the {cfg.data.test} real test cases; mean ± sample std over the classifier seeds {list(cfg.seeds)}; "gap closed" =
(row - smallest all-real row) / (oracle - smallest all-real row). Embeddings and synthetic sets are made once per
setting and shared by the seeds (the seeds vary the classifier: initial weights, batches, augmentation).

{(args.out / "table.md").read_text()}
Settings (the experiment's `config.yaml`):

```yaml
{yaml.safe_dump(cfg.to_dict(), sort_keys=False).strip()}
```

![AUC per row]({'img/' + names['figure.png'] if 'figure.png' in names else ''})
![ROC per row]({'img/' + names['roc.png'] if 'roc.png' in names else ''})

Synthetic samples (top: the `{cfg.target}` class, bottom: healthy):

{samples}
"""
    print(body)
    write_section(f"augment-{args.preset}", body, doc=RESULTS)


if __name__ == "__main__":
    main()
