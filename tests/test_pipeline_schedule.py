"""``medti pipeline schedule`` against a loopback stub of the Kubeflow Pipelines REST API (v2beta1).

No Kubeflow API server can run here, so what is tested is the request ``kfp.Client`` sends: a tiny HTTP server on
127.0.0.1 answers the endpoints the client calls as the v2beta1 API does and records every request.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from typer.testing import CliRunner

from servers import free_port

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipelines" / "medti_pipeline.yaml"
API = "/apis/v2beta1"
NOW = "2025-03-03T09:00:00Z"


def _experiment(name: str, exp_id: str | None = None) -> dict:
    return {"experiment_id": exp_id or str(uuid.uuid4()), "display_name": name, "description": "",
            "created_at": NOW, "namespace": "", "storage_state": "AVAILABLE",
            "last_run_created_at": "1970-01-01T00:00:00Z"}


class KfpStub(ThreadingHTTPServer):
    """The endpoints kfp.Client calls to schedule a run, with the server's JSON; ``fail`` maps
    ``(method, path)`` to ``(status, body)`` to answer with an error instead."""

    daemon_threads = True

    def __init__(self, experiments: list[dict] | None = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.experiments = list(experiments or [])
        self.recurring_runs: list[dict] = []
        self.requests: list[dict] = []
        self.fail: dict[tuple[str, str], tuple[int, dict]] = {}
        self.lock = threading.Lock()

    def calls(self, method: str, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"] == path]


class _Handler(BaseHTTPRequestHandler):
    server: KfpStub

    def log_message(self, *args):  # quiet
        pass

    def _answer(self, status: int, doc: dict) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        srv = self.server
        with srv.lock:
            srv.requests.append({"method": method, "path": url.path, "query": query, "body": body})
            if (method, url.path) in srv.fail:
                return self._answer(*srv.fail[method, url.path])
            route = (method, url.path)
            if route == ("GET", f"{API}/healthz"):
                return self._answer(200, {"commit_sha": "0a1b2c3", "tag_name": "2.4.0", "multi_user": False,
                                          "pipeline_store": "database"})
            if route == ("GET", f"{API}/experiments"):
                found = srv.experiments
                for p in json.loads(query.get("filter") or "{}").get("predicates", []):
                    assert p["key"] == "display_name" and p["operation"] in (1, "EQUALS"), p
                    found = [e for e in found if e["display_name"] == p["stringValue"]]
                return self._answer(200, {"experiments": found, "total_size": len(found)} if found else {})
            if route == ("POST", f"{API}/experiments"):
                exp = _experiment(body["display_name"])
                srv.experiments.append(exp)
                return self._answer(200, exp)
            if route == ("POST", f"{API}/recurringruns"):
                run = {**body, "recurring_run_id": str(uuid.uuid4()), "max_concurrency": str(body["max_concurrency"]),
                       "created_at": NOW, "updated_at": NOW, "status": "ENABLED", "namespace": ""}
                srv.recurring_runs.append(run)
                return self._answer(200, run)
        self._answer(404, {"error": "Not Found", "code": 5, "message": "Not Found", "details": []})

    def do_GET(self):  # noqa: N802 - http.server's names
        self._handle("GET")

    def do_POST(self):  # noqa: N802
        self._handle("POST")


@contextlib.contextmanager
def _stub(experiments: list[dict] | None = None) -> Iterator[KfpStub]:
    srv = KfpStub(experiments)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


@pytest.fixture
def kfp_api() -> Iterator[KfpStub]:
    """A Kubeflow Pipelines API without experiments."""
    with _stub() as srv:
        yield srv


@pytest.fixture
def params(tmp_path) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text("data: /mnt/data/prostate\nembedding_steps: 6000\n", encoding="utf-8")
    return p


def medti(*args: str):
    from medti.cli import app

    return CliRunner().invoke(app, ["pipeline", "schedule", *args])


def test_schedule_creates_one_weekly_recurring_run_of_the_compiled_pipeline(kfp_api, params):
    res = medti("--host", kfp_api.url, "--cron", "0 0 3 * * 1", "--config", str(params))
    assert res.exit_code == 0, res.output

    [created_exp] = kfp_api.calls("POST", f"{API}/experiments")
    assert created_exp["body"]["display_name"] == "medti"
    [call] = kfp_api.calls("POST", f"{API}/recurringruns")
    body = call["body"]
    assert body["display_name"] == "medti-retrain"
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 1"}}
    assert body["no_catchup"] is True
    assert int(body["max_concurrency"]) == 1
    assert body["mode"] == "ENABLE"
    assert body["experiment_id"] == kfp_api.experiments[0]["experiment_id"]
    assert body["runtime_config"]["parameters"] == {"data": "/mnt/data/prostate", "embedding_steps": 6000}
    assert body["pipeline_spec"] == yaml.safe_load(PACKAGE.read_text(encoding="utf-8"))

    run = kfp_api.recurring_runs[0]
    assert run["recurring_run_id"] in res.stdout and "medti-retrain" in res.stdout
    assert "0 0 3 * * 1" in res.stdout


def test_an_existing_experiment_is_reused_not_created_again(params):
    mine = _experiment("retrain-prostate", "5c1e0b52-4b7a-4f0e-9d7e-3f1a2b3c4d5e")
    with _stub([_experiment("someone-else"), mine]) as api:
        res = medti("--host", api.url, "--config", str(params), "--experiment", "retrain-prostate",
                    "--name", "weekly")
        assert res.exit_code == 0, res.output
        assert api.calls("POST", f"{API}/experiments") == []
        [call] = api.calls("POST", f"{API}/recurringruns")
        assert call["body"]["experiment_id"] == mine["experiment_id"]
        assert call["body"]["display_name"] == "weekly"
        assert len(api.experiments) == 2


@pytest.mark.parametrize("case", ["5-field cron", "no package", "not a pipeline", "unknown param", "no data"])
def test_bad_input_fails_before_any_request_naming_the_value(kfp_api, params, tmp_path, case):
    args = ["--host", kfp_api.url, "--config", str(params)]
    if case == "5-field cron":
        args += ["--cron", "0 3 * * 1"]
        expect = ["0 3 * * 1", "6", "0 0 3 * * 1"]
    elif case == "no package":
        args += ["--package", str(tmp_path / "nowhere.yaml")]
        expect = ["nowhere.yaml", "medti pipeline compile"]
    elif case == "not a pipeline":
        args += ["--package", str(params)]
        expect = ["params.yaml", "medti pipeline compile"]
    elif case == "unknown param":
        params.write_text("data: /mnt/data/prostate\nembeding_steps: 6000\n", encoding="utf-8")
        expect = ["embeding_steps", "embedding_steps"]
    else:
        params.write_text("embedding_steps: 6000\n", encoding="utf-8")
        expect = ["data"]
    res = medti(*args)
    assert res.exit_code != 0
    for word in expect:
        assert word in res.stderr, res.stderr
    assert "Traceback" not in res.output
    assert kfp_api.requests == []


@pytest.mark.parametrize(("route", "status", "message"), [
    (("GET", f"{API}/healthz"), 503, "upstream connect error or disconnect/reset before headers"),
    (("POST", f"{API}/recurringruns"), 400, "Failed to create a recurring run: Invalid input error: bad cron"),
])
def test_an_http_error_from_the_server_is_one_line_naming_host_and_status(kfp_api, params, route, status,
                                                                          message):
    kfp_api.fail[route] = (status, {"error": message, "code": 3, "message": f"{message}\nsecond line",
                                    "details": []})
    res = medti("--host", kfp_api.url, "--config", str(params))
    assert res.exit_code == 1
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert kfp_api.url in err and f"HTTP {status}" in err and message in err and "second line" not in err
    assert kfp_api.recurring_runs == []
    assert isinstance(res.exception, SystemExit)


def test_a_host_with_nothing_listening_fails_with_one_line_naming_it(params):
    host = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.run([str(Path(sys.executable).parent / "medti"), "pipeline", "schedule", "--host", host,
                           "--config", str(params)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and host in err, err
    assert "Traceback" not in proc.stderr + proc.stdout
