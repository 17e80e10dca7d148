"""A dataset dir as arrays for the quality steps, and the check that two sets can be compared at all.

Real and synthetic sets share the dataset-dir format, so both are read here the same way: images as
N x 3 x H x W uint8, the 0/1 labels per finding, the case ids (which stay inside medti: the reports name
synthetic images by case id and training cases by case id, never by patient id).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medti.quality import QualityError


@dataclass
class ImageSet:
    """Images N x 3 x H x W uint8; ``labels`` finding -> N int array (-1 where a case leaves it blank)."""

    root: Path
    images: np.ndarray
    labels: dict[str, np.ndarray]
    case_ids: list[str]
    modality: str
    channels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.case_ids)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def subset(self, mask: np.ndarray) -> ImageSet:
        idx = np.flatnonzero(mask)
        return ImageSet(self.root, self.images[idx], {k: v[idx] for k, v in self.labels.items()},
                        [self.case_ids[i] for i in idx], self.modality, self.channels)


def read_cases(root: Path, *, role: str, split: str | None = None):
    """(the Dataset, its ``split`` cases) of a dataset dir, a bad dir refused as a QualityError naming it."""
    from medti.data.dataset import Dataset, DatasetError

    root = Path(root)
    if not root.is_dir():
        raise QualityError(f"{role} dataset {root}: not a directory")
    try:
        ds = Dataset(root)
        return ds, ds.cases(split)
    except (DatasetError, ValueError, KeyError) as e:  # a manifest row with a bad label or a missing column
        raise QualityError(f"{role} dataset {root}: {e}") from e


def load_set(root: Path, *, role: str, split: str | None = None) -> ImageSet:
    """Read the ``split`` cases (all when None) of a dataset dir; ``role`` names the set in messages
    ("real", "synthetic", "train", ...)."""
    from medti.data.dataset import DatasetError, load_image

    root = Path(root)
    ds, cases = read_cases(root, role=role, split=split)
    if not cases:
        where = f"in split {split!r}" if split else "at all"
        raise QualityError(f"{role} dataset {root}: no cases {where} (manifest.csv)")
    images = []
    for c in cases:
        if not c.path.is_file():
            raise QualityError(f"{role} dataset {root}: case {c.case_id}: image {c.path} is missing (manifest.csv)")
        try:
            img = load_image(c.path)
        except DatasetError as e:
            raise QualityError(f"{role} dataset {root}: case {c.case_id}: {e}") from e
        except OSError as e:
            raise QualityError(f"{role} dataset {root}: case {c.case_id}: {c.path} is not a readable image ({e})") from e
        if images and img.shape != images[0].shape:
            raise QualityError(
                f"{role} dataset {root}: case {c.case_id}: image {c.path} is {img.shape[0]}x{img.shape[1]}, but "
                f"case {cases[0].case_id} is {images[0].shape[0]}x{images[0].shape[1]}; a set holds one image size"
            )
        images.append(img)
    arr = np.ascontiguousarray(np.moveaxis(np.stack(images), -1, 1))
    labels = {f: np.asarray([c.labels.get(f, -1) for c in cases], dtype=np.int64) for f in ds.info.findings}
    return ImageSet(root, arr, labels, [c.case_id for c in cases], ds.info.modality, tuple(ds.info.channels))


def check_comparable(a: ImageSet, b: ImageSet, *, a_role: str, b_role: str) -> None:
    """Refuse to compare sets of different modality, channels or image size (the message names both dirs
    and the dataset.json field that differs)."""
    for field, va, vb in (("modality", a.modality, b.modality), ("channels", list(a.channels), list(b.channels)),
                          ("image_size", list(a.size), list(b.size))):
        if va != vb:
            raise QualityError(
                f"{b_role} dataset {b.root}: {field} is {vb} but the {a_role} dataset {a.root} has {va} "
                "(dataset.json); sets compared must hold the same kind of image"
            )


def shared_findings(a: ImageSet, b: ImageSet) -> list[str]:
    """Findings both sets label (per-class figures are computed for these)."""
    return [f for f in a.labels if f in b.labels]
