"""File safety for every step that writes: the ground floor of medti (it imports nothing from medti).

- checksums: :func:`sha256_bytes`, :func:`sha256_file`
- atomic writes: :func:`atomic_write_bytes` / :func:`atomic_write_text` (a temp file beside the target, then a
  rename), :func:`temp_dir_for` + :func:`replace_dir` for a whole dir, so a killed step leaves the old output or
  the new one, never half of one
- permissions: what lands in place gets what a plain ``open`` / ``mkdir`` would give (the umask), not the
  private 0600 / 0700 of a temp file (:func:`default_permissions`)
- output checks: :func:`check_output_dir` (replace a non-empty dir only when asked, and only a dir of the kind the
  step writes) and :func:`output_lock` (one run at a time per output); both raise :class:`OutputError`

The dataset format built on these lives in :mod:`medti.data.dataset`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


class OutputError(ValueError):
    """An output a step would write breaks a rule (it would replace the wrong thing, another run holds it);
    the message names which.  :class:`medti.data.dataset.DatasetError` is one too, so a front end that reports
    ``OutputError`` reports both."""


# ----------------------------------------------------------------------------- checksums
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- permissions
def _umask() -> int:
    """The process umask, read without changing it where Linux exposes it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def default_permissions(tree: Path) -> None:
    """Give every file and dir under ``tree`` the permissions a plain ``open`` / ``mkdir`` would give (0666 /
    0777 minus the umask). For what libraries write into a temp dir privately: safetensors >= 0.8 writes each
    weight file through a 0600 temp file (safetensors#782), so a saved pipeline's weights were readable by
    their owner only."""
    mask = _umask()
    for root, _dirs, files in os.walk(tree):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                os.chmod(p, 0o666 & ~mask)


# ----------------------------------------------------------------------------- atomic writes
def temp_dir_for(target: Path) -> Path:
    """A fresh temp dir beside ``target`` (its parent is created when missing), to be renamed onto it
    when complete.

    ``mkdtemp`` creates it 0700 (and ``mkstemp`` files 0600); once renamed into place that would
    leave outputs unreadable to colleagues and to pipeline steps running as another user, so it
    gets the permissions a plain ``mkdir`` would give (0777 minus the umask)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def replace_dir(new: Path, target: Path) -> None:
    """Swap the complete dir ``new`` into ``target`` (old contents removed after the swap)."""
    new, target = Path(new), Path(target)
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


def link_tree(src: Path, dst: Path) -> None:
    """``dst`` = a copy of ``src`` whose files are hard links where the file system allows (instant, no space)."""
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link, dirs_exist_ok=True)


@contextmanager
def written_dir(target: Path, permissions: bool = False) -> Iterator[Path]:
    """Write a dir whole: yields a temp dir beside ``target``; when the block ends normally it is renamed onto
    ``target`` (after :func:`default_permissions` when ``permissions``: for files a library wrote with its own
    modes), and when it raises (Ctrl-C too) it is removed and ``target`` is left as it was."""
    tmp = temp_dir_for(target)
    try:
        yield tmp
        if permissions:
            default_permissions(tmp)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same dir and an atomic rename; the file
    gets the permissions a plain ``open(path, "wb")`` would give (0666 minus the umask), not
    ``mkstemp``'s private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# ----------------------------------------------------------------------------- output checks
def check_output_dir(out: Path, overwrite: bool, markers: Sequence[str], kind: str) -> None:
    """Refuse an output dir that a step would replace wrongly.  A missing or empty dir is fine; a
    non-empty one needs ``overwrite`` (--force), and even then it must hold one of ``markers`` (it is
    the kind of dir the step writes), so a mistyped --out (``.``, a home or project dir, the input
    data) is never deleted to make room."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"output {out} exists and is not a directory")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise OutputError(f"output {out} already exists and is not empty (use --force to replace it)")
    if not any((out / m).exists() for m in markers):
        raise OutputError(
            f"output {out} is not empty and is not a {kind} (it has no {' or '.join(markers)}); --force replaces "
            "only what this step writes, so give another --out"
        )


@contextmanager
def output_lock(out: Path, step: str) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` for a resumable step, so that a second run of it (a
    retried pipeline task while the first still runs, a command typed twice) fails at once
    instead of both writing the same checkpoints.  The lock is ``.<name>.lock`` beside ``out``,
    released when the process ends however it ends, and removed after a run."""
    import fcntl

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.parent / f".{out.name}.lock"
    f = open(lock, "a+")  # noqa: SIM115 - held for the whole step
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(
                f"another {step} run is writing {out} right now (it holds {lock}); wait for it to finish or stop it"
            ) from None
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
    finally:
        f.close()
