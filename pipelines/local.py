"""The medti pipeline run here, with kfp.local: the same graph Kubeflow runs, each task a subprocess of this
Python (``SubprocessRunner(use_venv=False)``: medti is already installed, nothing is pip-installed), one task at a
time, outputs under ``ROOT/kfp``, kfp.local's cache under ``ROOT/kfp-cache``.

With ``quiet``, kfp's log (its own lines and every task's output) goes to ``ROOT/pipeline.log`` instead of the
terminal, and ``progress`` gets one line per task as it starts and ends, or is reused from kfp's cache (a rerun on
the same dataset version with the same settings; kfp.local says so only through the root logger at INFO).
"""

import contextlib
import logging
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([^']+)'")
_ENDED = re.compile(r"Task '([^']+)' finished with status (\w+)")
_CACHED = re.compile(r"Task (\S+) cache hit")
_REUSED = re.compile(r"Task '([^']+)' reused from kfp's cache")


def plain(text: str) -> str:
    """``text`` without kfp's terminal colours."""
    return _ANSI.sub("", text)


class _TaskLines:
    """A stdout stand-in: everything to ``log``, and the task start/end lines to ``progress``."""

    def __init__(self, log, progress: Callable[[str], None] | None):
        self.log, self.progress, self.buf = log, progress, ""
        self.terminal = sys.stdout  # progress lines go where stdout went before kfp's log was redirected here

    def write(self, text: str) -> int:
        self.log.write(text)
        self.buf += text
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            line = plain(line)
            if self.progress and (m := _STARTED.search(line) or _ENDED.search(line) or _REUSED.search(line)):
                with contextlib.redirect_stdout(self.terminal):
                    self.progress(f"[task] {m.group(1)} ..." if m.re is _STARTED else
                                  f"[task] {m.group(1)}: cached" if m.re is _REUSED else
                                  f"[task] {m.group(1)}: {m.group(2).lower()}")
        return len(text)

    def flush(self) -> None:
        self.log.flush()


class _CacheHits(logging.Handler):
    """kfp.local's cache-hit records (root logger, INFO) as lines of the log and the progress."""

    def __init__(self, out):
        super().__init__(logging.INFO)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        if m := _CACHED.search(record.getMessage()):
            self.out.write(f"Task '{m.group(1)}' reused from kfp's cache\n")


@contextlib.contextmanager
def _cache_hits(out):
    root, handler = logging.getLogger(), _CacheHits(out)
    level = root.level
    root.addHandler(handler)
    if level > logging.INFO:  # (NOTSET, 0, already lets everything through)
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def run_local(params: dict[str, Any], root: Path, *, cache: bool = True, quiet: bool = False,
              progress: Callable[[str], None] | None = None) -> Path:
    """Run the pipeline with ``params`` (its parameters by name; ``data`` required). Returns ``root``. Raises
    RuntimeError naming the task when a task fails after its retries (its output is in the log)."""
    from kfp import local

    from pipelines.medti_pipeline import make_pipeline

    root = Path(root).resolve()
    (root / "workspace").mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "kfp"),
               workspace_root=str(root / "workspace"), raise_on_error=True, enable_caching=cache,
               cache_root=str(root / "kfp-cache"))
    pipeline = make_pipeline(parallelism=1)  # two CPU-bound tasks at once only fight over the cores here
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        # kfp warns that the components name a non-Python image (here medti is installed in this Python) and
        # that GPU and memory settings do nothing locally
        warnings.filterwarnings("ignore", message=".*custom or non-Python base image", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner", category=UserWarning)
        if quiet:
            log = stack.enter_context(open(root / "pipeline.log", "a", encoding="utf-8"))
            stack.enter_context(contextlib.redirect_stdout(_TaskLines(log, progress)))
        stack.enter_context(_cache_hits(sys.stdout))
        pipeline(**params)
    return root
