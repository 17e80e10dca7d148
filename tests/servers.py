"""Real servers for tests, on 127.0.0.1: a subprocess in its own session, waited for until it answers, and always
stopped (the whole session it leads: ``mlflow`` runs uvicorn in a child)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(args: list[str], health: str, log_path: Path, env: dict[str, str] | None = None,
            timeout: float = 120.0) -> Iterator[subprocess.Popen]:
    """Start ``args`` (a server), wait until GET ``health`` answers 200, yield the process, stop it."""
    env = dict(env or os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # mlflow starts uvicorn by name
    env.setdefault("OMP_NUM_THREADS", "1")
    with open(log_path, "w+b") as log:
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(health, timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"{' '.join(args[:3])} did not come up (exit {proc.poll()}):\n"
                                       f"{log.read().decode(errors='replace')[-4000:]}")
                time.sleep(0.25)
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextlib.contextmanager
def model_server(model_uri: str, log_path: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """``mlflow models serve -m MODEL_URI --env-manager local`` on a free port; yields its URL."""
    port = free_port()
    args = [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
            "-h", "127.0.0.1", "-p", str(port), "--workers", "1"]
    url = f"http://127.0.0.1:{port}"
    with running(args, f"{url}/ping", log_path, env):
        yield url


@contextlib.contextmanager
def tracking_server(root: Path) -> Iterator[str]:
    """``mlflow server`` with a sqlite backend and a local artifact dir under ``root``; yields its URI."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")]
    uri = f"http://127.0.0.1:{port}"
    with running(args, f"{uri}/health", root / "server.log"):
        yield uri
