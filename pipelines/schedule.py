"""Schedule the compiled pipeline as a Kubeflow Pipelines recurring run (``medti pipeline schedule``).

Everything that can be checked here is checked before the first request: the cron expression (Kubeflow's robfig
cron has six fields, seconds first), the compiled package, and the parameters (the package's own root inputs).
Then ``kfp.Client`` gets or creates the experiment by name and creates the recurring run: no catch-up, at most one
run at a time, enabled. Its REST calls (kfp 2.17, v2beta1 API): ``GET /apis/v2beta1/healthz`` (the client asks it
on start), ``GET /apis/v2beta1/experiments?filter=...`` (the experiment by display name), ``POST
/apis/v2beta1/experiments`` (only when there is none), ``POST /apis/v2beta1/recurringruns``. A server that cannot
be reached or answers with an HTTP error is a :class:`ScheduleError` naming the host, never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import urllib.error
import urllib.request
import warnings
from pathlib import Path

CRON_EXAMPLE = "0 0 3 * * 1"  # second minute hour day-of-month month day-of-week: Mondays 03:00
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*?,/#-]+$")
_TIMEOUT_S = 10.0


class ScheduleError(RuntimeError):
    """Why the recurring run was not created, in one line for the user."""


def _check_cron(cron: str) -> None:
    fields = str(cron).split()
    if len(fields) != 6:
        hint = (" (a 5-field crontab line would be read with seconds first, shifting every field)"
                if len(fields) == 5 else "")
        raise ScheduleError(f"cron {cron!r} has {len(fields)} field(s); Kubeflow's cron needs 6, seconds first: "
                            f"second minute hour day-of-month month day-of-week, e.g. {CRON_EXAMPLE!r} "
                            f"(Mondays 03:00){hint}")
    bad = [f for f in fields if not _CRON_FIELD.match(f)]
    if bad:
        raise ScheduleError(f"cron {cron!r}: field(s) {', '.join(map(repr, bad))} are not cron fields; "
                            f"e.g. {CRON_EXAMPLE!r} (Mondays 03:00)")


def _pipeline_spec(package: Path) -> dict:
    """The package's pipeline spec (its first YAML document), checked as kfp.Client will parse it."""
    import yaml
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    hint = "write it with `medti pipeline compile`"
    if not package.is_file():
        raise ScheduleError(f"{package}: no such pipeline package; {hint}")
    if package.suffix not in (".yaml", ".yml"):
        raise ScheduleError(f"{package}: not a compiled pipeline YAML (.yaml); {hint}")
    try:
        docs = list(yaml.safe_load_all(package.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ScheduleError(f"{package}: cannot read it as a compiled pipeline YAML ({type(e).__name__}); "
                            f"{hint}") from None
    spec = docs[0] if docs else None
    if not isinstance(spec, dict) or not {"pipelineInfo", "root", "deploymentSpec"} <= set(spec):
        raise ScheduleError(f"{package}: not a compiled pipeline YAML (no pipelineInfo/root/deploymentSpec); "
                            f"{hint}")
    try:
        json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
        for platform in docs[1:]:
            json_format.ParseDict(platform or {}, pipeline_spec_pb2.PlatformSpec())
    except json_format.ParseError as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ScheduleError(f"{package}: not a valid compiled pipeline ({first}); {hint}") from None
    return spec


def _check_params(params: object, spec: dict, package: Path) -> dict:
    if not isinstance(params, dict):
        raise ScheduleError(f"pipeline parameters must be a mapping of name: value, not {type(params).__name__}")
    declared = ((spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters") or {}
    unknown = sorted(set(map(str, params)) - set(declared))
    if unknown:
        raise ScheduleError(f"unknown pipeline parameter(s) {', '.join(unknown)} for {package}; known: "
                            f"{', '.join(sorted(declared))}")
    missing = sorted(k for k, d in declared.items()
                     if k not in params and not (d or {}).get("isOptional") and "defaultValue" not in (d or {}))
    if missing:
        raise ScheduleError(f"pipeline parameter(s) {', '.join(missing)} of {package} have no default; give them "
                            "in --config (data: the dataset's path as the cluster's pods see it)")
    return params


def _http_detail(status: object, reason: object, body: bytes | str | None) -> str:
    """``HTTP 503 Service Unavailable: <first line of the server's message>``."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    message = text
    with contextlib.suppress(ValueError):
        doc = json.loads(text)
        if isinstance(doc, dict):  # grpc-gateway: {"error": ..., "code": 3, "message": ..., "details": [...]}
            message = str(doc.get("message") or doc.get("error") or text)
    first = next((line.strip() for line in message.splitlines() if line.strip()), "")
    return f"HTTP {status} {reason or ''}".rstrip() + (f": {first[:300]}" if first else "")


def _probe(host: str) -> None:
    """One GET of the health endpoint, with a timeout: kfp.Client's own check retries an HTTP error five times,
    5 s apart, and waits without end on a host that does not answer."""
    url = f"{host}/apis/v2beta1/healthz"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # as kfp.Client: no proxy from env
    try:
        with opener.open(url, timeout=_TIMEOUT_S) as r:
            body = r.read()
    except urllib.error.HTTPError as e:
        raise ScheduleError(f"Kubeflow Pipelines at {host}: {_http_detail(e.code, e.reason, e.read())} "
                            "(GET /apis/v2beta1/healthz)") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise ScheduleError(f"Kubeflow Pipelines at {host}: cannot reach it ({reason})") from None
    try:
        ok = isinstance(json.loads(body), dict)
    except ValueError:
        ok = False
    if not ok:
        raise ScheduleError(f"{host} is not the Kubeflow Pipelines API: GET /apis/v2beta1/healthz did not answer "
                            "JSON (give the ml-pipeline API or the UI's address, e.g. http://ml-pipeline-ui.kubeflow)")


def schedule(host: str, package: Path | str, *, cron: str = CRON_EXAMPLE, params: dict | None = None,
             experiment: str = "medti", name: str = "medti-retrain") -> dict:
    """Create the recurring run of the compiled pipeline ``package`` on the Kubeflow Pipelines API at ``host``.

    Returns ``{"id", "name", "experiment_id"}`` of what the server created; raises :class:`ScheduleError`.
    """
    params = {} if params is None else params
    package = Path(package)
    _check_cron(cron)
    _check_params(params, _pipeline_spec(package), package)
    if not experiment or not str(experiment).strip() or not name or not str(name).strip():
        raise ScheduleError("the experiment and the recurring run need a name")
    host = str(host).strip().rstrip("/")
    if not host:
        raise ScheduleError("no Kubeflow Pipelines host given")
    if not host.startswith(("http://", "https://")):
        host = "https://" + host  # what kfp.Client does, said here rather than in its warning
    _probe(host)

    import kfp
    import urllib3
    from kfp_server_api.exceptions import ApiException

    step = "connecting"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2 and later"
            client = kfp.Client(host=host)
        step = f"getting or creating experiment {experiment!r}"
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the experiment's UI link
            exp = client.create_experiment(name=experiment)
        step = f"creating recurring run {name!r}"
        run = client.create_recurring_run(
            exp.experiment_id, job_name=name, cron_expression=cron, max_concurrency=1, no_catchup=True,
            params=params, pipeline_package_path=str(package), enabled=True)
    except ApiException as e:
        raise ScheduleError(f"Kubeflow Pipelines at {host}: {_http_detail(e.status, e.reason, e.body)} "
                            f"({step})") from None
    except (urllib3.exceptions.HTTPError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise ScheduleError(f"Kubeflow Pipelines at {host}: cannot reach it while {step} ({reason})") from None
    except ValueError as e:  # several experiments with this name
        raise ScheduleError(f"Kubeflow Pipelines at {host}: {str(e).splitlines()[0]} ({step})") from None
    return {"id": run.recurring_run_id, "name": run.display_name or name, "experiment_id": exp.experiment_id}
