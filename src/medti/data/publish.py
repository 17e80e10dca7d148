"""``publish_validated(PublishConfig) -> PublishResult``: a dataset dir, validated, copied whole to where the next
steps read it.

The pipeline's validate step: its input is a dataset dir on the data volume (where ``medti data add`` and
``medti data snapshot`` keep it), its output the copy every later task reads (a Kubeflow artifact). Nothing is
copied unless the dataset passes the validation gate; the copy is written beside its target and renamed onto it
when complete, its files hard-linked where the file system allows. The version recorded is the source's (its DVC
md5 when tracked), since the copy is no DVC workspace.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medti.data.dataset import DatasetError


@dataclass
class PublishConfig:
    data: Path  # the dataset dir
    out: Path  # where the validated copy goes (replaced when it exists)
    report: Path  # the validation report dir (validation.json and Data Docs)
    min_per_class: int = 1


@dataclass
class PublishResult:
    out: Path
    report: Path
    cases: int
    dataset_version: str

    def summary(self) -> str:
        return f"{self.cases} validated cases of version {self.dataset_version} at {self.out}"


def publish_validated(cfg: PublishConfig) -> PublishResult:
    from medti.data.validate import ValidateConfig, validate_dataset
    from medti.data.versions import dataset_version
    from medti.io import link_tree, written_dir

    src = Path(cfg.data)
    # 1. The gate: nothing is copied when it fails
    res = validate_dataset(ValidateConfig(dataset=src, report=Path(cfg.report), min_per_class=cfg.min_per_class))
    if not res.ok:
        raise DatasetError(res.summary())
    # 2. The copy, whole or not at all
    version = dataset_version(src)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with written_dir(out) as tmp:
        link_tree(src, tmp)
    return PublishResult(out=out, report=Path(cfg.report), cases=res.n_rows, dataset_version=version)
