"""Classifier figures: AUC with a stratified bootstrap interval, the validation-chosen threshold, and the
sensitivity and specificity it gives (scikit-learn computes the curves).

The bootstrap resamples positives and negatives separately (stratified), so every replicate keeps the
test set's class balance and has an AUC; the interval is the 2.5th-97.5th percentile of the replicates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from medti.classify import ClassifierError


def auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    if y.min() == y.max():
        raise ClassifierError(f"AUC is undefined with one class only ({len(y)} cases, all {int(y[0])})")
    return float(roc_auc_score(y, p))


def bootstrap_auc(y: np.ndarray, p: np.ndarray, *, n_boot: int = 2000, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float]:
    """Stratified bootstrap interval of the AUC: positives and negatives resampled with replacement,
    each to its own count, ``n_boot`` times (numpy's generator seeded with ``seed``)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if not len(pos) or not len(neg):
        raise ClassifierError("a bootstrap AUC interval needs positive and negative cases")
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    for b in range(n_boot):
        idx = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        stats[b] = roc_auc_score(labels, p[idx])
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The probability threshold that maximises sensitivity + specificity - 1 (Youden's J) on these cases."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(np.asarray(y).astype(int), p)
    k = int(np.argmax(tpr - fpr))
    return float(min(thr[k], 1.0))  # roc_curve's first threshold is inf (nothing called positive)


def sens_spec(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float]:
    y = np.asarray(y).astype(int)
    called = np.asarray(p) >= threshold
    pos, neg = y == 1, y == 0
    return float(called[pos].mean()), float((~called[neg]).mean())


@dataclass
class TargetMetrics:
    target: str
    auc: float
    auc_ci: tuple[float, float]
    threshold: float
    sensitivity: float
    specificity: float
    n_pos: int
    n_neg: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["auc_ci"] = list(self.auc_ci)
        return d


def target_metrics(target: str, y: np.ndarray, p: np.ndarray, threshold: float, *, n_boot: int = 2000,
                   seed: int = 0) -> TargetMetrics:
    sens, spec = sens_spec(y, p, threshold)
    y = np.asarray(y).astype(int)
    return TargetMetrics(
        target=target, auc=auc(y, p), auc_ci=bootstrap_auc(y, p, n_boot=n_boot, seed=seed), threshold=threshold,
        sensitivity=sens, specificity=spec, n_pos=int(y.sum()), n_neg=int((1 - y).sum()),
    )
