"""What produced a run: the tags every tracked run and registered version carries, and its input datasets.

- ``medti.version``, ``medti.git_commit`` (also as ``mlflow.source.git.commit``, which the MLflow UI shows);
- ``medti.dataset`` / ``medti.dataset_version`` for each dataset dir a step reads (its DVC md5, or a content
  hash for an untracked dir), several joined as ``name@version;...`` in ``medti.datasets``;
- ``medti.base`` and ``medti.base_hash``: the base model reference and the hash of its weights;
- ``medti.embeddings``: ``concept:version;...`` of the embedding files a step uses.

Values come from the step's config (read, never changed) and, after the run, from its result. Only names,
paths a user gave and hashes: never a manifest row, so no patient identifier can reach a tag.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from medti import __version__

#: config fields that name dataset dirs a step reads (a list for ``train``)
DATASET_FIELDS = ("data", "dataset", "train", "val", "test")


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the medti source tree this process runs from, when it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def _field(cfg: Any, name: str) -> Any:
    """A config field, from a dataclass or a mapping (an experiment task's config)."""
    return cfg.get(name) if isinstance(cfg, dict) else getattr(cfg, name, None)


def _paths(value: Any) -> Iterator[Path]:
    if isinstance(value, str | Path):
        yield Path(value)
    elif isinstance(value, list | tuple):
        for v in value:
            if isinstance(v, str | Path):
                yield Path(v)


@dataclass(frozen=True)
class DatasetRef:
    """A dataset dir a step reads: the config field that names it, its name and version (read once per run)."""

    field: str
    path: Path
    name: str
    version: str


def datasets_read(cfg: Any) -> list[DatasetRef]:
    """The existing dataset dirs (with a ``dataset.json``) the config's dataset fields name, in field order, each
    once (the first field naming it)."""
    if not (dataclasses.is_dataclass(cfg) or isinstance(cfg, dict)):
        return []
    out: list[DatasetRef] = []
    seen: set[Path] = set()
    for name in DATASET_FIELDS:
        for p in _paths(_field(cfg, name)):
            if (p / "dataset.json").is_file() and p.resolve() not in seen:
                seen.add(p.resolve())
                out.append(DatasetRef(name, p, dataset_name(p), dataset_version(p)))
    return out


def dataset_name(path: Path) -> str:
    import json

    try:
        info = json.loads((path / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    name = info.get("name") if isinstance(info, dict) else None
    return str(name) if name else path.name


def dataset_version(path: Path) -> str:
    from medti.data.versions import dataset_version as version

    try:
        return version(path)
    except Exception:  # a dataset the step itself rejects: the step's own error says why
        return "unknown"


def base_hash(ref: str) -> str | None:
    """The hash of a base's weights when they are on this machine (never builds or downloads one)."""
    from medti.diffusion.base import EMBEDDED, embedded_dir, resolve_base, weights_hash

    try:
        if ref in EMBEDDED:
            path = embedded_dir(ref)
            return weights_hash(path) if (path / "model_index.json").is_file() else None
        kind, loc = resolve_base(ref)
        return weights_hash(Path(loc)) if kind in ("dir", "single_file") else None
    except Exception:
        return None


def embedding_versions(paths: list[Path]) -> str:
    """``concept:version;...`` of embedding files (skipping any that does not load)."""
    from medti.diffusion.embeddings import load_embedding

    parts = []
    for p in paths:
        try:
            emb = load_embedding(Path(p))
        except Exception:
            continue
        parts.append(f"{emb.metadata.get('concept') or Path(p).stem}:{emb.version}")
    return ";".join(parts)


def lineage_tags(cfg: Any, datasets: list[DatasetRef]) -> dict[str, str]:
    """The lineage tags of a step about to run with ``cfg``, reading ``datasets`` (:func:`datasets_read`)."""
    tags = {"medti.version": __version__}
    commit = git_commit()
    if commit:
        tags["medti.git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    if datasets:
        tags["medti.dataset"] = datasets[0].name
        tags["medti.dataset_version"] = datasets[0].version
        if len(datasets) > 1:
            tags["medti.datasets"] = ";".join(f"{d.name}@{d.version}" for d in datasets)
    base = _field(cfg, "base")
    if isinstance(base, str) and base:
        tags["medti.base"] = base
        h = base_hash(base)
        if h:
            tags["medti.base_hash"] = h
    embeddings = list(_paths(_field(cfg, "embeddings")))
    if embeddings:
        versions = embedding_versions(embeddings)
        if versions:
            tags["medti.embeddings"] = versions
    return tags


def result_tags(result: Any) -> dict[str, str]:
    """Lineage a result adds: an embedding's base hash and dataset version, a snapshot's new version."""
    tags: dict[str, str] = {}
    meta = getattr(result, "metadata", None)
    if isinstance(meta, dict):
        for key, tag in (("base_model_hash", "medti.base_hash"), ("dataset_version", "medti.dataset_version"),
                         ("base_model", "medti.base_model")):
            if meta.get(key):
                tags[tag] = str(meta[key])
    version = getattr(result, "version", None)
    if isinstance(version, str) and version:
        tags["medti.dataset_version"] = version
    versions = getattr(result, "embedding_versions", None)
    if isinstance(versions, dict) and versions:
        tags["medti.embeddings"] = ";".join(f"{k}:{v}" for k, v in versions.items())
    return tags


def input_datasets(datasets: list[DatasetRef]) -> list[Any]:
    """``mlflow.entities.DatasetInput`` for each dataset dir the step reads: name, DVC version as the digest,
    the dir as the source, the config field as its context."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    out = []
    for d in datasets:
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": two local sources registered
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(str(d.path.resolve()))
        ds = MetaDataset(source=source, name=d.name, digest=d.version[:36])
        out.append(DatasetInput(dataset=ds._to_mlflow_entity(),
                                tags=[InputTag(key="mlflow.data.context", value=d.field)]))
    return out
