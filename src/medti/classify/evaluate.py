"""``evaluate_classifier(EvaluateConfig) -> EvaluateResult``: how a classifier does on held-out real cases.

Per target: AUC with a stratified bootstrap 95 % interval, and sensitivity / specificity at the threshold the
classifier chose on its validation split (never on the test split). Written to one dir, atomically::

    metrics.json       the figures, the model and data versions they belong to
    predictions.csv    case_id, source, label and probability per target (no patient ids)
    roc.png            the ROC curve of each target, with the operating point
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medti.classify import ClassifierError

METRICS_JSON = "metrics.json"
PREDICTIONS_CSV = "predictions.csv"
ROC_PNG = "roc.png"


@dataclass
class EvaluateConfig:
    model: Path  # classifier dir or .onnx
    test: Path  # dataset dir
    out: Path  # evaluation dir
    split: str = "test"
    n_boot: int = 2000
    seed: int = 0
    overwrite: bool = False
    validate: bool = True  # run the validation gate on the test dir (off when an executor already did)


@dataclass
class EvaluateResult:
    out: Path
    metrics: dict[str, dict] = field(default_factory=dict)  # target -> TargetMetrics.to_dict()
    n: int = 0

    @property
    def auc(self) -> float:
        """Mean AUC over the targets (the one figure an experiment row compares)."""
        return float(np.mean([m["auc"] for m in self.metrics.values()]))

    def summary(self) -> str:
        lines = [f"evaluated on {self.n} cases -> {self.out}"]
        for t, m in self.metrics.items():
            lo, hi = m["auc_ci"]
            lines.append(
                f"  {t}: AUC {m['auc']:.3f} (95 % CI {lo:.3f}-{hi:.3f}); at threshold {m['threshold']:.3f}: "
                f"sensitivity {m['sensitivity']:.3f}, specificity {m['specificity']:.3f} "
                f"({m['n_pos']} positive, {m['n_neg']} negative)"
            )
        return "\n".join(lines)


def evaluate_classifier(cfg: EvaluateConfig) -> EvaluateResult:
    from medti.classify.data import check_dirs, load_cases
    from medti.classify.metrics import target_metrics
    from medti.classify.onnx import open_predictor, predictions_csv
    from medti.data.versions import content_version
    from medti.io import check_output_dir, written_dir

    # 1. Check inputs and the output before any work
    check_output_dir(Path(cfg.out), cfg.overwrite, (METRICS_JSON,), "medti evaluation dir")
    pred = open_predictor(Path(cfg.model))
    check_dirs([cfg.test], pred.targets, role="test", expect=pred.image_spec, min_per_class=1 if cfg.validate else None)
    cases = load_cases([cfg.test], cfg.split, pred.targets, role="test", need_both_classes=True)

    # 2. Predict and measure
    p = pred(cases.images)
    thresholds = pred.meta.get("threshold") or {}
    metrics = {}
    for j, t in enumerate(pred.targets):
        if t not in thresholds:
            raise ClassifierError(f"model {cfg.model}: no validation threshold recorded for target {t!r}")
        metrics[t] = target_metrics(t, cases.labels[:, j], p[:, j], float(thresholds[t]), n_boot=cfg.n_boot,
                                    seed=cfg.seed).to_dict()

    # 3. Write the dir atomically
    with written_dir(Path(cfg.out)) as tmp:
        doc = {
            "model": {"path": Path(cfg.model).name, "targets": pred.targets, "val_auc": pred.meta.get("val_auc"),
                      "train": pred.meta.get("train")},
            "test": {"dir": Path(cfg.test).name, "split": cfg.split, "version": content_version(Path(cfg.test)),
                     "cases": len(cases)},
            "bootstrap": {"replicates": cfg.n_boot, "seed": cfg.seed, "stratified": True, "level": 0.95},
            "metrics": metrics,
        }
        (tmp / METRICS_JSON).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / PREDICTIONS_CSV).write_text(predictions_csv(cases, p), encoding="utf-8")
        roc_png(tmp / ROC_PNG, cases.labels, p, pred.targets, metrics)
    return EvaluateResult(out=Path(cfg.out), metrics=metrics, n=len(cases))


def roc_png(path: Path, y: np.ndarray, p: np.ndarray, targets: list[str], metrics: dict[str, dict]) -> None:
    """One ROC curve per target with its AUC, interval and the validation-chosen operating point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=120)
    for j, t in enumerate(targets):
        fpr, tpr, _ = roc_curve(y[:, j].astype(int), p[:, j])
        m = metrics[t]
        lo, hi = m["auc_ci"]
        line, = ax.plot(fpr, tpr, lw=1.6, label=f"{t}: AUC {m['auc']:.3f} ({lo:.3f}-{hi:.3f})")
        ax.plot(1 - m["specificity"], m["sensitivity"], "o", color=line.get_color(), ms=5)
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC on real test cases (dot: validation threshold)", fontsize=8)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
