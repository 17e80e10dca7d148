"""medti: textual inversion for medical imaging on one GPU (or a CPU)."""

from collections.abc import Callable

__version__ = "0.1.0"

#: the callback a training step offers for its curves: ``report(step, {"loss": 0.12, "val_auc": 0.8})``.
#: Tracking passes one that streams them to MLflow; a step without one runs as it always did.
Report = Callable[[int, dict[str, float]], None]
