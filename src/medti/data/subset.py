"""``subset_dataset(SubsetConfig) -> SubsetResult``: a dataset dir holding ``n`` cases of one split of another.

What a learning-curve or augmentation experiment needs to ask "what do 200 of these 2000 cases give?": the
cases are drawn at random (seeded) from one split, every column kept, into a dataset dir of the same format,
written atomically, that passes the same validation. Provenance (source dataset, split, n, seed, the
source's version) is recorded in dataset.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medti.data.dataset import Dataset, DatasetError, DatasetWriter, load_image, load_mask


@dataclass
class SubsetConfig:
    data: Path
    out: Path
    n: int
    split: str = "train"
    seed: int = 0
    overwrite: bool = False


@dataclass
class SubsetResult:
    out: Path
    n: int
    positives: dict[str, int]

    def summary(self) -> str:
        pos = ", ".join(f"{k} {v}" for k, v in self.positives.items())
        return f"wrote {self.n} cases to {self.out}" + (f" (positives: {pos})" if pos else "")


def subset_dataset(cfg: SubsetConfig) -> SubsetResult:
    from medti.data.versions import content_version

    ds = Dataset(Path(cfg.data))
    cases = sorted(ds.cases(cfg.split), key=lambda c: c.case_id)
    if isinstance(cfg.n, bool) or not isinstance(cfg.n, int) or cfg.n < 1:
        raise DatasetError(f"subset n={cfg.n!r} must be an integer >= 1")
    if cfg.n > len(cases):
        raise DatasetError(f"{cfg.data}: subset of {cfg.n} {cfg.split} cases asked, but it has {len(cases)}")
    pick = np.random.default_rng(cfg.seed).permutation(len(cases))[: cfg.n]
    chosen = [cases[i] for i in sorted(pick)]
    info = ds.info
    info.name = f"{info.name or Path(cfg.data).name}-{cfg.split}{cfg.n}"
    info.created_by = {"step": "data subset"}
    info.extra = {**info.extra, "subset_of": {"dataset": Path(cfg.data).name, "version": content_version(Path(cfg.data)),
                                              "split": cfg.split, "n": cfg.n, "seed": cfg.seed}}
    positives = {f: 0 for f in info.findings}
    with DatasetWriter(Path(cfg.out), info, overwrite=cfg.overwrite) as w:
        for c in chosen:
            r = c.row
            mask = c.mask_path
            w.add(
                case_id=c.case_id, patient_id=c.patient_id, split=c.split, image=load_image(c.path),
                labels=c.labels, mask=None if mask is None else load_mask(mask).astype(np.uint8) * 255,
                source=r.get("source") or None, caption=r.get("caption", ""), prompt=r.get("prompt", ""),
                seed=r.get("seed", ""), embedding_version=r.get("embedding_version", ""),
            )
            for f, v in c.labels.items():
                positives[f] += int(v)
    return SubsetResult(Path(cfg.out), len(chosen), positives)
