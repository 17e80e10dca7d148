"""Shared fixtures for diffusion tests: an untrained micro base and a tiny labelled dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medti.data.dataset import DatasetInfo, DatasetWriter


def make_blob_dataset(out: Path, n: int = 16, size: int = 32, seed: int = 0, unseen: tuple[str, ...] = ()) -> Path:
    """Tiny prostate-like dataset: positives carry a bright blue blob (a 'lesion'). ``unseen``: more findings,
    negative in every case."""
    info = DatasetInfo(
        modality="prostate_mri",
        channels=["T2W", "ADC", "DWI"],
        findings=["csPCa", *unseen],
        image_size=[size, size],
        source="phantom",
    )
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    with DatasetWriter(out, info, overwrite=True) as w:
        for i in range(n):
            img = rng.normal(0.4, 0.08, (size, size, 3))
            pos = i % 2
            if pos:
                cy, cx = rng.integers(4, size - 4, 2)
                blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < 10
                img[blob, 2] = 0.95
                img[blob, 1] = 0.1
            img8 = np.clip(img * 255, 0, 255).astype(np.uint8)
            split = ("train", "val", "test")[i % 3] if i >= 8 else "train"
            w.add(case_id=f"case-{i:03d}", patient_id=f"PH-{i:03d}", split=split, labels={"csPCa": pos, **dict.fromkeys(unseen, 0)}, image=img8)
    return out
