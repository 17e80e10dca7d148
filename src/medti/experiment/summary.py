"""The experiment's answer: a table, a figure, ROC curves and what the synthetic images look like.

Per row: AUC on the real test cases, mean +- std (sample std) over the seeds, every seed's value, and the
fraction of the real-data gap it closes: (row - baseline) / (oracle - baseline), where the baseline is the
smallest all-real row and the oracle the largest (2000 real phantom cases: the headroom only phantoms can show).
Written to the experiment dir: ``table.md``, ``table.csv``, ``figure.png`` (each seed's point, the mean, the
reference work's value beside it), ``roc.png`` (each row's first seed) and ``samples-<set>.png``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from medti.experiment.plan import Plan


def row_table(plan: Plan, root: Path) -> list[dict[str, Any]]:
    """One dict per row: counts, per-seed AUCs, mean, std, gap closed, reference."""
    cfg = plan.config
    rows = []
    for r in cfg.rows:
        aucs = []
        for s in cfg.seeds:
            m = root / "runs" / r.name / f"seed-{s}" / "evaluation" / "metrics.json"
            if m.is_file():
                metrics = json.loads(m.read_text())["metrics"]
                aucs.append(float(np.mean([v["auc"] for v in metrics.values()])))
        rows.append({
            "row": r.name, "real": r.real, "synthetic": r.synthetic,
            "embedding_cases": cfg.embedding_cases(r) if r.synthetic else "",
            "seeds": len(aucs), "auc_mean": float(np.mean(aucs)) if aucs else float("nan"),
            "auc_std": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else float("nan"),
            "aucs": aucs, "reference": r.reference,
        })
    real_rows = [x for x in rows if x["synthetic"] == 0 and x["real"] > 0 and x["seeds"]]
    base = min(real_rows, key=lambda x: x["real"]) if real_rows else None
    oracle = max(real_rows, key=lambda x: x["real"]) if real_rows else None
    for x in rows:
        x["gap_closed"] = float("nan")
        if base and oracle and oracle["real"] > base["real"] and x["seeds"]:
            gap = oracle["auc_mean"] - base["auc_mean"]
            if abs(gap) > 1e-9:
                x["gap_closed"] = (x["auc_mean"] - base["auc_mean"]) / gap
    return rows


def _fmt(v: float, digits: int = 3) -> str:
    return "-" if v != v else f"{v:.{digits}f}"  # NaN -> "-"


def table_md(rows: list[dict[str, Any]], plan: Plan) -> str:
    cfg = plan.config
    lines = [
        f"| row | real | synthetic | embedding cases | AUC (mean ± std over {len(cfg.seeds)} seeds) | per seed | "
        "gap closed | reference AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in rows:
        ref = f"{x['reference'][0]:.3f} ± {x['reference'][1]:.3f}" if x["reference"] else "-"
        per = ", ".join(f"{a:.3f}" for a in x["aucs"])
        gap = "-" if x["gap_closed"] != x["gap_closed"] else f"{100 * x['gap_closed']:.0f} %"
        lines.append(f"| {x['row']} | {x['real']} | {x['synthetic']} | {x['embedding_cases'] or '-'} | "
                     f"**{_fmt(x['auc_mean'])}** ± {_fmt(x['auc_std'])} | {per} | {gap} | {ref} |")
    return "\n".join(lines) + "\n"


def table_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "real", "synthetic", "embedding_cases", "seeds", "auc_mean", "auc_std", "gap_closed",
                "aucs", "reference_mean", "reference_std"])
    for x in rows:
        ref = x["reference"] or ("", "")
        w.writerow([x["row"], x["real"], x["synthetic"], x["embedding_cases"], x["seeds"], _fmt(x["auc_mean"], 4),
                    _fmt(x["auc_std"], 4), _fmt(x["gap_closed"], 4), ";".join(f"{a:.4f}" for a in x["aucs"]), *ref])
    return buf.getvalue()


def figure_png(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.3 * len(rows) + 2.5, 3.6), dpi=120)
    for i, x in enumerate(rows):
        ax.scatter(np.full(len(x["aucs"]), i - 0.08) + np.linspace(-0.05, 0.05, len(x["aucs"])), x["aucs"], s=14,
                   color="tab:blue", alpha=0.7, label="medti, each seed" if i == 0 else None)
        if x["seeds"]:
            ax.errorbar(i - 0.08, x["auc_mean"], yerr=0 if x["auc_std"] != x["auc_std"] else x["auc_std"],
                        fmt="_", ms=18, color="tab:blue", capsize=3, label="medti, mean ± std" if i == 0 else None)
        if x["reference"]:
            ax.errorbar(i + 0.12, x["reference"][0], yerr=x["reference"][1], fmt="o", mfc="none", color="tab:orange",
                        capsize=3, label="reference work (PI-CAI)" if not any(y["reference"] for y in rows[:i]) else None)
    ax.set_xticks(range(len(rows)), [f"{x['row']}\n{x['real']} real + {x['synthetic']} syn" for x in rows],
                  fontsize=7)
    ax.axhline(0.5, ls=":", color="grey", lw=1)
    ax.set_ylabel("AUC on real test cases")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def roc_png(path: Path, plan: Plan, root: Path) -> bool:
    """ROC of each row's first seed, from its predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    cfg = plan.config
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    drawn = False
    for r in cfg.rows:
        p = root / "runs" / r.name / f"seed-{cfg.seeds[0]}" / "evaluation" / "predictions.csv"
        if not p.is_file():
            continue
        rows = list(csv.DictReader(p.open()))
        y = np.array([int(x[cfg.target]) for x in rows])
        s = np.array([float(x[f"{cfg.target}_probability"]) for x in rows])
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.4, label=f"{r.name}: {roc_auc_score(y, s):.3f}")
        drawn = True
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"ROC on real test cases, seed {cfg.seeds[0]}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    if drawn:
        fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return drawn


def sample_grid(path: Path, dataset: Path, target: str, per_class: int = 8) -> None:
    """The first ``per_class`` images of each class of a (synthetic) dataset: positives on top."""
    from PIL import Image

    from medti.data.dataset import Dataset, load_image

    ds = Dataset(dataset)
    rows = []
    for label in (1, 0):
        imgs = [load_image(c.path) for c in ds.cases(where={target: label})[:per_class]]
        if imgs:
            rows.append(np.concatenate(imgs + [np.zeros_like(imgs[0])] * (per_class - len(imgs)), axis=1))
    if rows:
        grid = np.concatenate(rows, axis=0)
        scale = max(1, 128 // grid.shape[0] * 2)
        Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)


def write_summary(root: Path) -> dict[str, Any]:
    from medti.experiment.runner import PLAN_JSON
    from medti.io import atomic_write_text

    root = Path(root)
    plan = Plan.from_json((root / PLAN_JSON).read_text(encoding="utf-8"))
    rows = row_table(plan, root)
    atomic_write_text(root / "table.md", table_md(rows, plan))
    atomic_write_text(root / "table.csv", table_csv(rows))
    figure_png(root / "figure.png", rows, f"{plan.config.name}: {plan.config.target}, AUC on real test cases")
    out: dict[str, Any] = {"table_md": "table.md", "table_csv": "table.csv", "figure": "figure.png",
                           "rows": [{k: v for k, v in x.items() if k != "reference"} for x in rows]}
    if roc_png(root / "roc.png", plan, root):
        out["roc"] = "roc.png"
    for t in plan.tasks:
        if t.step == "synthesize" and (root / t.config["out"]).is_dir():
            name = f"samples-{Path(t.config['out']).name}.png"
            sample_grid(root / name, root / t.config["out"], plan.config.target)
            out.setdefault("samples", []).append(name)
    return out
