"""The cases a classifier trains, selects or is tested on: one or more dataset dirs read as one tensor set.

Every dir passes the validation gate first (:func:`medti.data.validate.require_valid`), then the dirs must
agree on what an image is (size, channels, modality) and each must label every target; a split that AUC
cannot be computed on (one class only) is refused. All of it happens before any training, and every message
names the dir, the value and the rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medti.classify import ClassifierError


@dataclass
class ImageSet:
    """Cases as arrays: ``images`` N x 3 x H x W uint8, ``labels`` N x T float32 (0/1), one row per case."""

    images: np.ndarray
    labels: np.ndarray
    case_ids: list[str]
    sources: list[str]  # the dataset dir each case came from (its name, never a patient id)
    targets: list[str]

    def __len__(self) -> int:
        return len(self.case_ids)


@dataclass(frozen=True)
class ImageSpec:
    """What an image is, as a dataset dir declares it; dirs trained or tested together must agree."""

    modality: str
    channels: tuple[str, ...]
    image_size: tuple[int, int]

    def describe(self) -> str:
        h, w = self.image_size
        return f"{self.modality}, {h}x{w}, channels {'/'.join(self.channels)}"


def image_spec(root: Path) -> ImageSpec:
    from medti.data.dataset import read_info

    info = read_info(root)
    return ImageSpec(info.modality, tuple(info.channels), tuple(int(x) for x in info.image_size))


def check_dirs(dirs: Sequence[Path], targets: Sequence[str], *, min_per_class: int | None = 1, role: str = "train",
               expect: ImageSpec | None = None) -> ImageSpec:
    """Validate each dir (unless ``min_per_class`` is None: already validated) and check that it labels every
    target and matches ``expect`` (or the first dir)."""
    from medti.data.dataset import read_info
    from medti.data.validate import require_valid

    if not dirs:
        raise ClassifierError(f"no {role} dataset dir given")
    if not targets:
        raise ClassifierError("no target given (name the finding to classify, e.g. csPCa)")
    if len(set(targets)) != len(targets):
        raise ClassifierError(f"targets {list(targets)} name a finding twice")
    spec = expect
    first = None
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise ClassifierError(f"{role} dataset {d}: not a directory")
        if min_per_class is not None:
            require_valid(d, min_per_class=min_per_class, option="min_per_class")
        info = read_info(d)
        missing = [t for t in targets if t not in info.findings]
        if missing:
            raise ClassifierError(
                f"{role} dataset {d}: target {missing[0]!r} is not one of its findings "
                f"({', '.join(info.findings) or 'none'}; dataset.json)"
            )
        this = image_spec(d)
        if spec is None:
            spec, first = this, d
        elif this != spec:
            against = f"the {role} dataset {first}" if first is not None else "the classifier's"
            raise ClassifierError(
                f"{role} dataset {d}: images are {this.describe()}, but {against} are {spec.describe()}; "
                "a classifier takes one kind of image (import or synthesise at the same size and channels)"
            )
    assert spec is not None
    return spec


def load_cases(dirs: Sequence[Path], split: str | None, targets: Sequence[str], *, role: str,
               need_both_classes: bool = False) -> ImageSet:
    """Read the ``split`` cases (every case when None) of ``dirs``; refuse an empty set, and with
    ``need_both_classes`` a set where a target has one class only (its AUC would be undefined)."""
    from medti.data.dataset import Dataset, load_image

    images, labels, ids, sources = [], [], [], []
    for d in dirs:
        ds = Dataset(Path(d))
        cases = ds.cases(split)
        if not cases:
            where = f"split {split!r}" if split else "any split"
            raise ClassifierError(f"{role} dataset {d}: no cases in {where} (manifest.csv)")
        for c in cases:
            img = load_image(c.path)
            images.append(np.ascontiguousarray(np.moveaxis(img, -1, 0)))
            labels.append([float(c.labels[t]) for t in targets])
            ids.append(c.case_id)
            sources.append(Path(d).name)
    y = np.asarray(labels, dtype=np.float32).reshape(len(ids), len(targets))
    if need_both_classes:
        for j, t in enumerate(targets):
            pos = int(y[:, j].sum())
            if pos == 0 or pos == len(y):
                only = "positives" if pos else "negatives"
                raise ClassifierError(
                    f"{role} dataset {', '.join(str(d) for d in dirs)}: split {split!r} has only {only} for target "
                    f"{t!r} ({len(y)} cases), so its AUC is undefined; it needs cases of both classes"
                )
    return ImageSet(np.stack(images), y, ids, sources, list(targets))
