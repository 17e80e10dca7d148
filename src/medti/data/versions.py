"""Dataset versions with DVC: validate, ``dvc add``, ``dvc push``; the version is the md5.

The repository's ``data/`` is tracked by ``data.dvc``; ``.dvc/config`` names a default
local remote (``.dvc-storage/`` at the repository root) that a user can point at S3/GCS with
``dvc remote add -d``/``dvc remote modify``.  A dataset's *version* is the md5 DVC records in
the ``.dvc`` file (``"<md5>.dir"`` for a directory), so the version in an MLflow run or a
Kubeflow artifact names exactly the bytes ``dvc pull`` brings back.

:func:`snapshot_dataset` validates every dataset under the dir first and refuses (writing no
``.dvc`` file and pushing nothing) when any fails.  Validation reports go to each dataset's
``validation/`` dir, which ``.dvcignore`` excludes so they never change the version.

DVC runs through its Python API (:class:`dvc.repo.Repo`); analytics and the update check
are off (``DVC_NO_ANALYTICS=1``, ``core.check_update=false`` in the project config).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from medti.data.dataset import INFO, MANIFEST, DatasetError
from medti.data.validate import REPORT_DIR, ValidateConfig, ValidationResult, validate_dataset
from medti.io import atomic_write_text

DVC_DIR = ".dvc"
DVCIGNORE = ".dvcignore"
IGNORE_RULE = f"{REPORT_DIR}/"


@dataclass
class SnapshotConfig:
    dataset: Path  # a dataset dir, or a dir whose immediate children are dataset dirs (data/)
    push: bool = True
    min_per_class: int = 1
    remote: str | None = None  # a named DVC remote; default: the repository's default remote


@dataclass
class SnapshotResult:
    dataset: Path
    version: str  # md5 recorded in the .dvc file, e.g. "3f2a...c1.dir"
    dvc_file: Path
    pushed: bool
    n_pushed: int = 0  # files transferred by this push (0 when the remote already had them)
    datasets: list[Path] = field(default_factory=list)
    remote: str | None = None
    validations: list[ValidationResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"validated {len(self.datasets)} dataset(s): " + ", ".join(_show(d) for d in self.datasets)]
        lines.append(f"dvc add {_show(self.dataset)} -> {_show(self.dvc_file)}")
        if self.pushed:
            lines.append(f"dvc push -> remote {self.remote!r}: {self.n_pushed} file(s) transferred")
        else:
            lines.append("not pushed (--no-push); run `dvc push` to upload")
        lines += self.notes
        lines.append(f"dataset version: {self.version}")
        return "\n".join(lines)


def _show(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


# ----------------------------------------------------------------------------- discovery
def find_datasets(path: Path) -> list[Path]:
    """``path`` itself if it holds a manifest, else its immediate children that do."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{path} is not a directory")
    if (path / MANIFEST).is_file():
        return [path]
    found = sorted(c for c in path.iterdir() if c.is_dir() and not c.name.startswith(".") and (c / MANIFEST).is_file())
    if not found:
        raise DatasetError(
            f"{path}: no dataset here - neither {path}/{MANIFEST} nor any {path}/*/{MANIFEST}"
        )
    return found


def find_dvc_root(path: Path) -> Path | None:
    """The nearest ancestor of ``path`` (or itself) holding a ``.dvc`` dir, else None."""
    p = Path(path).resolve()
    for d in [p, *p.parents]:
        if (d / DVC_DIR).is_dir():
            return d
    return None


# ----------------------------------------------------------------------------- DVC
@contextmanager
def _dvc_repo(root: Path) -> Iterator[object]:
    """Open the DVC repo quietly (no analytics, no update check, no INFO chatter)."""
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    logger = logging.getLogger("dvc")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            yield repo
    finally:
        logger.setLevel(level)


def _dvc_error(what: str, e: Exception) -> DatasetError:
    return DatasetError(f"{what} failed: {type(e).__name__}: {e}")


def snapshot_dataset(cfg: SnapshotConfig) -> SnapshotResult:
    """Validate every dataset in ``cfg.dataset``, then ``dvc add`` it and ``dvc push``.

    Nothing is written (no ``.dvc`` file created or changed, nothing pushed) when any dataset
    fails validation; the error lists every failure.
    """
    target = Path(cfg.dataset)
    if not target.is_dir():
        raise DatasetError(f"{target} does not exist or is not a directory")
    target = target.resolve()
    datasets = find_datasets(target)
    root = find_dvc_root(target)
    if root is None:
        raise DatasetError(
            f"{target} is not inside a DVC repository (run `git init && dvc init` at the repository root)"
        )
    if target == root:
        raise DatasetError(f"{target} is the repository root; snapshot a data dir inside it (e.g. data/)")

    from dvc.exceptions import DvcException

    with _dvc_repo(root) as repo:
        remote = cfg.remote or repo.config["core"].get("remote")
        remotes = dict(repo.config.get("remote", {}))
        if cfg.push:
            if not remote:
                raise DatasetError(
                    "no default DVC remote configured: add one with `dvc remote add -d NAME URL` "
                    "(or snapshot with --no-push)"
                )
            if remote not in remotes:
                raise DatasetError(f"DVC remote {remote!r} is not configured (see `dvc remote list`)")

        # 1. validate everything first; refuse before touching any DVC state.
        results = [
            validate_dataset(ValidateConfig(dataset=d, min_per_class=cfg.min_per_class)) for d in datasets
        ]
        bad = [r for r in results if not r.ok]
        if bad:
            parts = [f"snapshot of {target} refused: {len(bad)} of {len(results)} dataset(s) failed "
                     "validation; no .dvc file was written and nothing was pushed"]
            parts += [r.summary(max_failures=20) for r in bad]
            raise DatasetError("\n".join(parts))

        # 2. the reports just written must not change the version.
        ignored = all(repo.dvcignore.is_ignored_dir(str(d / REPORT_DIR)) for d in datasets)
    notes = []
    if not ignored:
        _add_ignore_rule(root)
        notes.append(f"added '{IGNORE_RULE}' to {root / DVCIGNORE} (validation reports are not data)")

    # 3. dvc add + dvc push (a fresh Repo so that it reads the ignore rules as they are now).
    with _dvc_repo(root) as repo:
        try:
            stages = repo.add([str(target)])
        except DvcException as e:
            raise _dvc_error(f"dvc add {target}", e) from e
        if not stages:
            raise DatasetError(f"dvc add {target} tracked nothing")
        dvc_file = Path(stages[0].path)
        version = _recorded_md5(dvc_file, target)
        if version is None:
            raise DatasetError(f"{dvc_file}: no md5 recorded for {target}")
        n_pushed = 0
        if cfg.push:
            try:
                n_pushed = int(repo.push(targets=[str(dvc_file)], remote=cfg.remote) or 0)
            except DvcException as e:
                raise _dvc_error(
                    f"{dvc_file} was written (version {version}) but dvc push to {remote!r}", e
                ) from e

    return SnapshotResult(
        dataset=target,
        version=version,
        dvc_file=dvc_file,
        pushed=cfg.push,
        n_pushed=n_pushed,
        datasets=datasets,
        remote=remote if cfg.push else None,
        validations=results,
        notes=notes,
    )


def _add_ignore_rule(root: Path) -> None:
    p = root / DVCIGNORE
    text = p.read_text(encoding="utf-8") if p.is_file() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    text += f"# medti validation reports (derived, not data)\n{IGNORE_RULE}\n"
    atomic_write_text(p, text)


# ----------------------------------------------------------------------------- versions
def _recorded_md5(dvc_file: Path, tracked: Path) -> str | None:
    """The md5 that ``dvc_file`` records for the output at ``tracked`` (None if none)."""
    import yaml

    try:
        doc = yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise DatasetError(f"{dvc_file}: cannot read ({e})") from e
    tracked = Path(tracked).resolve()
    for out in doc.get("outs") or []:
        if not isinstance(out, dict) or "path" not in out:
            continue
        if (dvc_file.parent / str(out["path"])).resolve() == tracked and out.get("md5"):
            return str(out["md5"])
    return None


def dataset_version(path: Path) -> str:
    """A version string for lineage.

    * ``"<md5>"`` recorded in the ``.dvc`` file tracking ``path``;
    * ``"<md5>:<sub/path>"`` when ``path`` lies inside a tracked dir (its nearest tracked ancestor);
    * ``"content:<sha256>"`` of ``manifest.csv`` + ``dataset.json`` for an untracked dataset.

    The md5 is what was recorded at the last snapshot; ``dvc status`` shows whether the
    workspace has changed since.
    """
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p} does not exist")
    p = p.resolve()
    root = find_dvc_root(p)
    if root is not None:
        for anc in [p, *p.parents]:
            if anc == root or root not in anc.parents:
                break
            dvc_file = anc.parent / f"{anc.name}.dvc"
            if dvc_file.is_file():
                md5 = _recorded_md5(dvc_file, anc)
                if md5:
                    rel = p.relative_to(anc).as_posix()
                    return md5 if rel == "." else f"{md5}:{rel}"
    return content_version(p)


def content_version(path: Path) -> str:
    """``"content:" + sha256`` over a dataset's ``manifest.csv`` and ``dataset.json``.

    The manifest lists each image's sha256, so this names the images as well.
    """
    p = Path(path)
    if not p.is_dir() or not (p / MANIFEST).is_file():
        raise DatasetError(f"{p}: not tracked by DVC and not a dataset dir (no {MANIFEST})")
    h = hashlib.sha256()
    for name in (MANIFEST, INFO):
        f = p / name
        h.update(name.encode() + b"\0")
        h.update(f.read_bytes() if f.is_file() else b"")
        h.update(b"\0")
    return "content:" + h.hexdigest()
