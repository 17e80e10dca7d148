"""The pipeline's collect step: classifiers evaluated per (condition, seed) into one table, and the choices.

A condition is which training data a classifier learned from: ``real`` (the real train split), ``synthetic``
(the synthetic set) or ``mixed`` (both). Each evaluated classifier is a bundle dir (``classifier/`` +
``evaluation/``). The classifier registered is the one with the best *validation* AUC: the real test split
judges it (its AUC is the figure the promotion gate compares), it must not also choose it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medti.experiment import ExperimentError

CONDITIONS = ("real", "synthetic", "mixed")


def condition_dirs(condition: str, real: Path, synthetic: Path) -> list[Path]:
    """The dataset dirs whose train splits a ``condition``'s classifier learns from."""
    dirs = {"real": [real], "synthetic": [synthetic], "mixed": [real, synthetic]}
    if condition not in dirs:
        raise ExperimentError(f"condition {condition!r}: must be one of {', '.join(CONDITIONS)}")
    return dirs[condition]


@dataclass(frozen=True)
class Evaluated:
    bundle: Path  # classifier/ + evaluation/
    condition: str
    seed: int
    auc: float  # real test split
    val_auc: float


def _table(runs: list[Evaluated]) -> tuple[str, dict[str, float]]:
    lines = ["| condition | AUC (mean ± std) | seeds | per seed |", "|---|---|---|---|"]
    means: dict[str, float] = {}
    for cond in sorted({r.condition for r in runs}, key=lambda c: (CONDITIONS + (c,)).index(c)):
        aucs = [r.auc for r in sorted(runs, key=lambda r: r.seed) if r.condition == cond]
        mean = statistics.fmean(aucs)
        std = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
        means[cond] = mean
        lines.append(f"| {cond} | **{mean:.3f}** ± {std:.3f} | {len(aucs)} | {', '.join(f'{a:.3f}' for a in aucs)} |")
    return "\n".join(lines) + "\n", means


def collect_evaluations(runs: list[Evaluated], *, table: Path, chosen: Path, embedding_evidence: Path) -> dict[str, Any]:
    """Write the table (markdown) and copy the chosen bundles; return the summary the parent run records."""
    from medti.io import atomic_write_text, link_tree

    if not runs:
        raise ExperimentError("collect: no evaluated classifier to choose from")
    text, means = _table(runs)
    atomic_write_text(Path(table), text)
    best = max(runs, key=lambda r: (r.val_auc, -r.seed))
    link_tree(best.bundle, Path(chosen))
    with_synthetic = [r for r in runs if r.condition != "real"]
    evidence = max(with_synthetic, key=lambda r: (r.val_auc, -r.seed)) if with_synthetic else None
    Path(embedding_evidence).mkdir(parents=True, exist_ok=True)
    if evidence is not None:
        link_tree(evidence.bundle, Path(embedding_evidence))
    summary: dict[str, Any] = {f"auc.{c}": m for c, m in means.items()}
    summary["table"] = text
    summary.update({"chosen": f"{best.condition}-s{best.seed}", "chosen_test_auc": best.auc,
                    "chosen_val_auc": best.val_auc})
    if evidence is not None:
        summary.update({"embedding_evidence": f"{evidence.condition}-s{evidence.seed}",
                        "embedding_test_auc": evidence.auc})
    return summary
