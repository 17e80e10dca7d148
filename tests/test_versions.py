"""Dataset versions with real DVC in a temporary git repo with a local remote: validate, add,
push, version = the md5 in the .dvc file; a failing dataset is refused with nothing written."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medti.cli import app
from medti.data.dataset import DatasetError
from medti.data.versions import SnapshotConfig, content_version, dataset_version, snapshot_dataset
from test_validate import BREAKAGES, FINDING, edit, make_dataset, noise, png, put_image


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Iterator[Path]:
    """A git + DVC repository whose default remote is a local dir (tmp/remote); DVC's
    site cache and global/system config live in tmp too, so the test is hermetic."""
    from repos import dvc_repo

    base = tmp_path_factory.mktemp("dvc")
    with pytest.MonkeyPatch.context() as mp:
        yield dvc_repo(base, mp, remote=base / "remote")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("pristine") / "ds")


def remote_files(repo: Path) -> set[str]:
    remote = repo.parent / "remote"
    return {p.relative_to(remote).as_posix() for p in remote.rglob("*") if p.is_file()} if remote.exists() else set()


def md5_in(dvc_file: Path) -> str:
    return yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]


def md5_file(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def in_remote(repo: Path, md5: str) -> Path:
    return repo.parent / "remote" / "files" / "md5" / md5[:2] / md5[2:]


def test_snapshot_adds_pushes_and_returns_the_recorded_md5(repo, pristine):
    data = repo / "data"
    shutil.copytree(pristine, data / "prostate")
    make_dataset(data / "cxr", seed=1)
    res = snapshot_dataset(SnapshotConfig(dataset=data))
    dvc_file = repo / "data.dvc"
    assert res.dvc_file == dvc_file and dvc_file.is_file()
    assert res.version == md5_in(dvc_file) and res.version.endswith(".dir")
    assert res.version in res.summary()
    assert sorted(d.name for d in res.datasets) == ["cxr", "prostate"]
    assert all(v.ok for v in res.validations)
    # the remote holds the directory listing and every file's object
    assert res.pushed and res.n_pushed > 0
    listing = json.loads(in_remote(repo, res.version.removesuffix(".dir") + ".dir").read_text())
    tracked = {e["relpath"] for e in listing}
    on_disk = {p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file()}
    # validation reports were written into each dataset but are not part of the version
    assert any(p.startswith("prostate/validation/") for p in on_disk)
    assert tracked == {p for p in on_disk if "/validation/" not in p}
    for e in listing:
        assert in_remote(repo, e["md5"]).is_file()
    img = data / "prostate" / "images" / "c00.png"
    assert in_remote(repo, md5_file(img)).read_bytes() == img.read_bytes()
    # lineage: the tracked dir and a dataset inside it
    assert dataset_version(data) == res.version
    assert dataset_version(data / "prostate") == f"{res.version}:prostate"
    assert dataset_version(data / "prostate" / "images") == f"{res.version}:prostate/images"
    # snapshotting unchanged data again gives the same version and uploads nothing new
    again = snapshot_dataset(SnapshotConfig(dataset=data))
    assert again.version == res.version and again.n_pushed == 0


def test_changing_one_image_changes_the_version(repo, pristine):
    ds = repo / "single"
    shutil.copytree(pristine, ds)
    v1 = snapshot_dataset(SnapshotConfig(dataset=ds, push=False))
    assert v1.dvc_file == repo / "single.dvc" and not v1.pushed
    assert dataset_version(ds) == v1.version
    put_image(ds, "c04", png(noise(seed=99)))  # a different, still valid image
    v2 = snapshot_dataset(SnapshotConfig(dataset=ds, push=False))
    assert v2.version != v1.version and v2.version == md5_in(repo / "single.dvc")
    assert dataset_version(ds) == v2.version


def test_failing_dataset_is_refused_with_nothing_written(repo, pristine):
    ds = repo / "guarded"
    shutil.copytree(pristine, ds)
    good = snapshot_dataset(SnapshotConfig(dataset=ds))
    dvc_before = (repo / "guarded.dvc").read_bytes()
    remote_before = remote_files(repo)
    edit(ds, "c01", **{FINDING: "2"})
    with pytest.raises(DatasetError) as e:
        snapshot_dataset(SnapshotConfig(dataset=ds))
    assert "[label_values] case c01" in str(e.value) and "refused" in str(e.value)
    assert (repo / "guarded.dvc").read_bytes() == dvc_before  # version unchanged
    assert remote_files(repo) == remote_before  # nothing pushed
    assert dataset_version(ds) == good.version


SNAPSHOT_REFUSED = ["corrupt_png", "wrong_size", "patient_in_two_splits", "symlink_outside",
                    "non_utf8_csv", "missing_column", "duplicate_image_bytes", "png_16bit_rgb"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("b", [b for b in BREAKAGES if b.name in SNAPSHOT_REFUSED], ids=SNAPSHOT_REFUSED)
def test_each_breakage_blocks_the_snapshot(repo, pristine, b):
    ds = repo / "kinds" / b.name
    shutil.copytree(pristine, ds, symlinks=True)
    b.apply(ds)
    remote_before = remote_files(repo)
    with pytest.raises(DatasetError, match=rf"\[{b.rule}\]"):
        snapshot_dataset(SnapshotConfig(dataset=ds, min_per_class=b.min_per_class))
    assert not list((repo / "kinds").glob("*.dvc"))
    assert not (repo / "kinds" / ".gitignore").exists()
    assert remote_files(repo) == remote_before


def test_one_bad_dataset_in_a_data_dir_blocks_all(repo, pristine):
    data = repo / "multi"
    shutil.copytree(pristine, data / "good")
    shutil.copytree(pristine, data / "bad")
    (data / "bad" / "images" / "c05.png").unlink()
    with pytest.raises(DatasetError, match=r"1 of 2 dataset\(s\) failed") as e:
        snapshot_dataset(SnapshotConfig(dataset=data))
    assert "[file_exists] case c05" in str(e.value)
    assert not (repo / "multi.dvc").exists()


def test_refusals_before_any_work(repo, tmp_path, pristine):
    with pytest.raises(DatasetError, match="no dataset here"):
        snapshot_dataset(SnapshotConfig(dataset=repo / ".dvc"))
    outside = shutil.copytree(pristine, tmp_path / "loose")
    with pytest.raises(DatasetError, match="not inside a DVC repository"):
        snapshot_dataset(SnapshotConfig(dataset=outside))
    ds = shutil.copytree(pristine, repo / "unpushable")
    with pytest.raises(DatasetError, match="remote 'nowhere' is not configured"):
        snapshot_dataset(SnapshotConfig(dataset=ds, remote="nowhere"))
    assert not (repo / "unpushable.dvc").exists() and not (ds / "validation").exists()


def test_untracked_dataset_gets_a_content_version(tmp_path, pristine):
    ds = shutil.copytree(pristine, tmp_path / "loose")
    v = dataset_version(ds)
    assert v.startswith("content:") and v == content_version(ds)
    put_image(ds, "c04", png(noise(seed=7)))  # changes the sha256 recorded in the manifest
    assert dataset_version(ds) != v
    with pytest.raises(DatasetError):
        dataset_version(tmp_path / "missing")


def test_cli_snapshot(repo, pristine, monkeypatch):
    ds = repo / "viacli"
    shutil.copytree(pristine, ds)
    runner = CliRunner()
    monkeypatch.chdir(repo)
    r = runner.invoke(app, ["data", "snapshot", "viacli"])
    assert r.exit_code == 0, r.output
    version = md5_in(repo / "viacli.dvc")
    assert f"dataset version: {version}" in r.output
    (ds / "images" / "c03.png").write_bytes(b"broken")
    r = runner.invoke(app, ["data", "snapshot", str(ds), "--no-push"])
    assert r.exit_code != 0
    # (the rule id "[decodes]" is in the message, but cli._fail prints it as rich markup,
    # which swallows "[...]"; see test_failing_dataset_is_refused_with_nothing_written)
    assert "case c03" in r.output and "does not decode" in r.output and "refused" in r.output
    assert md5_in(repo / "viacli.dvc") == version
