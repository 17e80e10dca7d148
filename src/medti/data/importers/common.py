"""Pieces shared by the real-dataset importers: the result type, resizing, progress."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from medti.data.dataset import SPLITS, DatasetError

T = TypeVar("T")


@dataclass
class ImportResult:
    """What an import wrote.  Holds no original identifier, so it is safe to print or log.

    ``counts`` has one entry per split (``train``/``val``/``test``) and, per finding,
    ``<finding>=1`` and ``<finding>=0``.  ``skip_reasons`` maps a reason (never a case) to
    how many studies/images it dropped; ``skipped`` is their total.
    """

    out: Path
    n: int
    counts: dict[str, int]
    skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    source: str = ""
    findings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"imported {self.n} {self.source} cases into {self.out}"]
        lines.append("  splits: " + ", ".join(f"{s} {self.counts.get(s, 0)}" for s in SPLITS))
        for f in self.findings:
            lines.append(
                f"  {f}: {self.counts.get(f'{f}=1', 0)} positive, {self.counts.get(f'{f}=0', 0)} negative"
            )
        if self.skipped:
            reasons = "; ".join(f"{r}: {k}" for r, k in sorted(self.skip_reasons.items()))
            lines.append(f"  skipped {self.skipped} ({reasons})")
        else:
            lines.append("  skipped 0")
        return "\n".join(lines)


def count_rows(rows: list[dict], findings: list[str]) -> dict[str, int]:
    counts = {s: 0 for s in SPLITS}
    for f in findings:
        counts[f"{f}=1"] = 0
        counts[f"{f}=0"] = 0
    for r in rows:
        counts[r["split"]] += 1
        for f in findings:
            counts[f"{f}={int(r[f])}"] += 1
    return counts


def check_size(size: int) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
        raise DatasetError(f"size {size!r}: the output image size must be an integer >= 8 pixels")
    return size


def resize_float(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a 2-D float image to ``size`` x ``size`` (PIL, antialiased when shrinking)."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32))
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D bool/0-1 mask to a ``size`` x ``size`` uint8 0/255 mask."""
    from PIL import Image

    im = Image.fromarray(np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8))
    return np.asarray(im.resize((size, size), Image.Resampling.NEAREST), dtype=np.uint8)


def progress(items: Iterable[T], *, total: int, desc: str) -> Iterator[T]:
    """A progress bar on stderr (hidden when stderr is not a terminal).  ``desc`` holds no ids."""
    from tqdm import tqdm

    yield from tqdm(items, total=total, desc=desc, unit="case", disable=None, leave=False)
