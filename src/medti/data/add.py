"""``add_cases(AddConfig) -> AddResult``: new cases into an existing dataset dir (``medti data add``).

How new cases reach a dataset between scheduled retraining runs: the new dir (an import of the new studies) must
pass validation and be the same kind of data (modality, channels, findings, image size); its case ids must be
new; a patient already in the dataset keeps the split it has (a patient in two splits would leak between train
and test). The merged dataset is built beside the old one (unchanged files hard-linked, not copied), validated,
and renamed onto it only when complete: a killed ``add`` leaves the dataset as it was. A snapshot
(``medti data snapshot``) then gives it a new DVC version, which the pipeline's first step compares with the one
the current champion was trained on.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from medti.data.dataset import (
    INFO,
    MANIFEST,
    DatasetError,
    read_info,
    read_manifest,
    safe_join,
    write_manifest,
)

#: dataset.json fields two dirs must share to be one dataset
SAME = ("modality", "channels", "findings", "image_size")


@dataclass
class AddConfig:
    to: Path  # the dataset dir that grows
    source: Path  # a dataset dir holding the new cases
    min_per_class: int = 0  # validation of the new dir alone (a few new cases need not hold every class)


@dataclass
class AddResult:
    to: Path
    added: int
    n: int
    splits: dict[str, int] = field(default_factory=dict)  # new cases per split

    def summary(self) -> str:
        per = ", ".join(f"{k} {v}" for k, v in sorted(self.splits.items()))
        return (f"added {self.added} case(s) to {self.to} ({per}); it now holds {self.n}. Snapshot it "
                f"(medti data snapshot {self.to}) to give it a new version")


def add_cases(cfg: AddConfig) -> AddResult:
    from medti.data.validate import require_valid
    from medti.io import link_tree, output_lock, written_dir

    to, src = Path(cfg.to), Path(cfg.source)
    with output_lock(to, "data add"):
        # 1. Both are datasets of the same kind; the new one passes validation on its own
        require_valid(to, min_per_class=0)
        require_valid(src, min_per_class=cfg.min_per_class)
        have, new = read_info(to), read_info(src)
        for key in SAME:
            if getattr(have, key) != getattr(new, key):
                raise DatasetError(f"{src / INFO}: {key} {getattr(new, key)!r} differs from {to / INFO}'s "
                                   f"{getattr(have, key)!r}; only cases of the same kind can be added")
        rows, incoming = read_manifest(to), read_manifest(src)
        # 2. New case ids; a patient keeps the split they have
        ids = {r["case_id"] for r in rows}
        clash = sorted(r["case_id"] for r in incoming if r["case_id"] in ids)
        if clash:
            raise DatasetError(f"{src / MANIFEST}: case id(s) already in {to}: {', '.join(clash[:10])}"
                               + (f" and {len(clash) - 10} more" if len(clash) > 10 else ""))
        split_of = {r["patient_id"]: r["split"] for r in rows}
        moved = sorted({f"{r['patient_id']} ({r['split']}, already {split_of[r['patient_id']]})" for r in incoming
                        if r["patient_id"] in split_of and split_of[r["patient_id"]] != r["split"]})
        if moved:
            raise DatasetError(f"{src / MANIFEST}: patient(s) already in {to} under another split, which would leak "
                               f"between splits: {', '.join(moved[:10])}")
        # 3. The merged dir beside the old one, validated, then renamed onto it
        with written_dir(to) as tmp:
            link_tree(to, tmp)
            for r in incoming:
                for col in ("path", "mask"):
                    if r.get(col):
                        dst = safe_join(tmp, r[col], what=col)
                        if dst.exists():
                            raise DatasetError(f"{src / MANIFEST}: case {r['case_id']}: {r[col]} already exists in {to}")
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(safe_join(src, r[col], what=col), dst)
            write_manifest(tmp / MANIFEST, rows + incoming, have.findings)
            require_valid(tmp, min_per_class=0)
    splits: dict[str, int] = {}
    for r in incoming:
        splits[r["split"]] = splits.get(r["split"], 0) + 1
    return AddResult(to=to, added=len(incoming), n=len(rows) + len(incoming), splits=splits)
