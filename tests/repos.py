"""A hermetic git + DVC repository for tests that version datasets."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def dvc_repo(base: Path, mp: pytest.MonkeyPatch, remote: Path | None = None) -> Path:
    """A git + DVC repository at ``base/repo``. DVC's site cache and global/system config live under ``base`` too,
    set in the environment (so the subprocesses a test starts use them as well); ``remote``, when given, is the
    default remote (named ``local``)."""
    from dvc.repo import Repo

    for var, sub in (("DVC_SITE_CACHE_DIR", "site-cache"), ("DVC_GLOBAL_CONFIG_DIR", "global"),
                     ("DVC_SYSTEM_CONFIG_DIR", "system")):
        mp.setenv(var, str(base / sub))
    root = base / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    Repo.init(str(root)).close()
    if remote is not None:
        with Repo(str(root)) as r, r.config.edit() as conf:
            conf["core"]["remote"] = "local"
            conf["core"]["check_update"] = False
            conf["remote"]["local"] = {"url": str(remote)}
    return root
