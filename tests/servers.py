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


# ----------------------------------------------------------------------------- the production tracking backend
# ``mlflow server`` as deployed: PostgreSQL for runs and the registry, an S3-compatible store for artifacts. Tested
# with PostgreSQL from Debian packages (``.ci/run`` installs them) and moto's S3 server, both on 127.0.0.1.

S3_KEY = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def postgres_bin() -> Path | None:
    """The bin dir of the newest PostgreSQL installed from Debian packages (``/usr/lib/postgresql/N/bin``), else
    the one ``initdb`` on PATH is in; None when there is none."""
    import glob
    import shutil

    found = sorted((Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
                   key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if found:
        return found[-1]
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _postgres_user() -> tuple[list[str], int | None, int | None]:
    """(command prefix, uid, gid) to run the server as: postgres refuses to run as root, so root runs it as the
    ``postgres`` user the Debian package creates (or a system user made here); anyone else runs it as themselves."""
    import pwd

    if os.geteuid() != 0:
        return [], None, None
    for name in ("postgres", "medti-pg"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--"], pw.pw_uid, pw.pw_gid
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "medti-pg"],
                   check=True, capture_output=True)
    pw = pwd.getpwnam("medti-pg")
    return ["runuser", "-u", "medti-pg", "--"], pw.pw_uid, pw.pw_gid


@contextlib.contextmanager
def postgres_server(bin_dir: Path, user: str = "mlflow", password: str = "mlflow-test",
                    database: str = "mlflow") -> Iterator[str]:
    """A throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``) in a temporary dir of its own, listening on
    127.0.0.1 only (no Unix socket), password auth over TCP; yields ``postgresql://user:password@127.0.0.1:PORT/
    database``. The cluster is stopped and its dir removed on the way out.

    The dir is made with ``tempfile`` under the system temp dir, not under pytest's (mode 0700, root's) tmp_path,
    which the postgres user could not enter."""
    import shutil
    import tempfile

    prefix, uid, gid = _postgres_user()
    root = Path(tempfile.mkdtemp(prefix="medti-pg-"))
    data, log, pwfile = root / "data", root / "server.log", root / "pw"
    pwfile.write_text(password + "\n")
    if uid is not None:
        os.chown(root, uid, gid)
        os.chown(pwfile, uid, gid)

    def pg(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run([*prefix, *args], capture_output=True, text=True, cwd=root, timeout=120)
        if check and res.returncode != 0:
            tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed (exit {res.returncode}):\n{res.stdout}{res.stderr}{tail}")
        return res

    port = free_port()
    started = False
    try:
        pg(str(bin_dir / "initdb"), "-D", str(data), "-U", user, f"--pwfile={pwfile}", "--auth-local=trust",
           "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' -c fsync=off"
        started = True
        pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "60", "start")
        import psycopg  # the driver SQLAlchemy (so mlflow) picks for a plain postgresql:// URI

        with psycopg.connect(host="127.0.0.1", port=port, user=user, password=password, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        yield f"postgresql://{user}:{password}@127.0.0.1:{port}/{database}"
    finally:
        if started:
            pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def s3_server(root: Path, bucket: str = "mlflow-artifacts") -> Iterator[str]:
    """moto's S3-compatible server (``moto_server``) on a free port with ``bucket`` created; yields its URL."""
    import boto3

    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **S3_KEY}
    with running([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], f"{url}/moto-api/data.json",
                 root / "s3.log", env):
        boto3.client("s3", endpoint_url=url, **s3_credentials()).create_bucket(Bucket=bucket)
        yield url


def s3_credentials() -> dict[str, str]:
    """The dummy credentials the S3 server takes, as boto3 client keywords."""
    return {"aws_access_key_id": S3_KEY["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": S3_KEY["AWS_SECRET_ACCESS_KEY"],
            "region_name": S3_KEY["AWS_DEFAULT_REGION"]}


@contextlib.contextmanager
def production_tracking_server(root: Path, backend_uri: str, s3_url: str,
                               bucket: str = "mlflow-artifacts") -> Iterator[str]:
    """``mlflow server`` with ``backend_uri`` (PostgreSQL) and artifacts proxied to ``s3://bucket/`` at ``s3_url``,
    run in ``root/cwd`` (where a local artifact store would appear); yields its URI."""
    cwd = root / "cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    args = ["env", "-C", str(cwd), str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--backend-store-uri", backend_uri, "--artifacts-destination", f"s3://{bucket}/"]
    # no job runner (mlflow's background jobs, which medti does not use): its worker processes double the start-up
    env = {**os.environ, **S3_KEY, "MLFLOW_S3_ENDPOINT_URL": s3_url, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with running(args, f"{uri}/health", root / "server.log", env, timeout=180):
        yield uri
