"""A tracked step: ``tracked(step, cfg, run=ctx)`` runs ``step(cfg)`` inside an MLflow run.

The run holds the step's whole config as params, its lineage as tags (:mod:`~medti.tracking.lineage`), the
datasets it read as inputs, its curves as metric histories while it runs, and afterwards its result: numbers as
metrics, the files a person would open (reports, Data Docs, sample grids, strips, ROC curves, tables, manifests)
as artifacts. The step itself is untouched: curves reach MLflow through the ``report`` callback that training
steps already offer (``report(step, {"loss": ...})``), which only puts them on a queue; a background thread
sends them in batches, so the training loop never waits for the server.

A failed or interrupted step ends its run FAILED or KILLED with the error's type only (a message may quote a
source file name, which may hold a patient identifier), and the error goes on to the caller unchanged.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from medti.tracking.context import RunContext
from medti.tracking.lineage import datasets_read, input_datasets, lineage_tags, result_tags

R = TypeVar("R")

#: files of an output dir a person opens (the rest - images/, checkpoints, weights - stay out of MLflow)
ARTIFACT_SUFFIXES = {".png", ".json", ".csv", ".md", ".html", ".yaml", ".txt"}
#: sub-dirs logged whole: a validation report with its Data Docs
ARTIFACT_DIRS = {"validation"}
#: a single file larger than this is not copied into MLflow (a classifier's weights; the registry has the ONNX)
MAX_ARTIFACT_BYTES = 20 * 2**20
#: a param value longer than MLflow's limit is cut, saying so
MAX_PARAM = 6000
#: config fields never logged: the pseudonym salt (with it, pseudonyms could be checked against guessed ids)
SECRET = re.compile(r"(^|\.)(salt|.*password.*|.*secret.*|.*credential.*)$", re.I)


@dataclass
class Tracked(Generic[R]):
    result: R
    run_id: str


# ----------------------------------------------------------------------------- names and values
_BAD = re.compile(r"[^\w./\- :]")


def metric_key(name: str) -> str:
    """A metric name MLflow accepts (``csPCa=1`` -> ``csPCa_1``)."""
    return _BAD.sub("_", name).strip("/") or "_"


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def params_of(cfg: Any) -> dict[str, str]:
    """The config's fields as params; nested configs flattened with dots (``sampler.steps``)."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
            return
        if callable(value) or SECRET.search(prefix):
            return
        text = str(value) if not isinstance(value, list | tuple) else ",".join(str(v) for v in value)
        if len(text) > MAX_PARAM:
            text = text[: MAX_PARAM - 20] + " ...(truncated)"
        flat[metric_key(prefix)] = text

    walk("", _plain(cfg) if dataclasses.is_dataclass(cfg) or isinstance(cfg, dict) else {"config": cfg})
    return flat


def _numbers(prefix: str, value: Any) -> Iterator[tuple[str, float]]:
    if isinstance(value, bool):
        yield prefix, float(value)
    elif isinstance(value, int | float):
        if math.isfinite(value):
            yield prefix, float(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(f"{prefix}.{k}" if prefix else str(k), v)
    elif isinstance(value, list) and value and all(isinstance(v, dict) and isinstance(v.get("row", v.get("name")), str)
                                                   for v in value):
        for v in value:  # a table: one group of figures per named row (an experiment's rows)
            name = v.get("row", v.get("name"))
            yield from _numbers(f"{prefix}.{name}" if prefix else name, {k: x for k, x in v.items()
                                                                           if k not in ("row", "name")})


def result_metrics(result: Any) -> dict[str, float]:
    """The result's figures (numbers, and numbers in dicts and named tables) as ``{metric name: value}``;
    curves are histories, not figures."""
    if isinstance(result, dict):
        items = result.items()
    elif dataclasses.is_dataclass(result):
        items = ((f.name, getattr(result, f.name)) for f in dataclasses.fields(result))
    else:
        return {}
    return {metric_key(k): v for name, value in items if name != "curves" for k, v in _numbers(name, value)}


def result_curves(result: Any) -> list[tuple[int, dict[str, float]]]:
    """``(step, figures)`` of a result's ``curves`` (a list of dicts with ``step``)."""
    curves = getattr(result, "curves", None)
    out = []
    if isinstance(curves, list):
        for c in curves:
            if isinstance(c, dict) and isinstance(c.get("step"), int | float):
                out.append((int(c["step"]), {k: float(v) for k, v in c.items()
                                              if k != "step" and isinstance(v, int | float)}))
    return out


def _artifact_files(root: Path) -> Iterator[tuple[Path, str]]:
    """(file, artifact dir) pairs for an output: a file itself, or a dir's person-facing files."""
    if root.is_file():
        if root.stat().st_size <= MAX_ARTIFACT_BYTES and not root.name.startswith("."):
            yield root, ""
        return
    if not root.is_dir():
        return
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix.lower() in ARTIFACT_SUFFIXES and p.stat().st_size <= MAX_ARTIFACT_BYTES:
            yield p, ""
        elif p.is_dir() and p.name in ARTIFACT_DIRS:
            for q in sorted(p.rglob("*")):
                if q.is_file() and q.stat().st_size <= MAX_ARTIFACT_BYTES:
                    yield q, (Path(p.name) / q.parent.relative_to(p)).as_posix()


def result_artifacts(result: Any) -> list[tuple[Path, str]]:
    """(local file, artifact dir) for every output path in the result, each file once."""
    seen: set[Path] = set()
    out = []
    if not dataclasses.is_dataclass(result):
        return out
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        paths = [value] if isinstance(value, Path) else [v for v in value if isinstance(v, Path)] \
            if isinstance(value, list) else []
        for p in paths:
            for file, sub in _artifact_files(p):
                if file.resolve() in seen:
                    continue
                seen.add(file.resolve())
                out.append((file, sub))
    return out


# ----------------------------------------------------------------------------- streaming curves
class MetricStream:
    """``report(step, {name: value})`` for a training loop: queues the figures, and a background thread sends them
    to the run in batches (every ``interval`` seconds), so the loop never waits for the tracking server.

    Each batch costs a request here and a database write on the server, taken from the same cores as the training
    on a small machine; every 10 s keeps that a few requests per minute, and the UI still shows the loss move."""

    def __init__(self, client, run_id: str, interval: float = 10.0):
        self.client, self.run_id, self.interval = client, run_id, interval
        self.queue: queue.Queue = queue.Queue()
        self.error: Exception | None = None
        self.sent = 0
        self.keys: set[str] = set()  # the curves' names
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"mlflow-metrics-{run_id[:8]}", daemon=True)
        self._thread.start()

    def __call__(self, step: int, values: dict[str, float]) -> None:
        ts = int(time.time() * 1000)
        for k, v in values.items():
            if isinstance(v, int | float) and math.isfinite(v):
                self.keys.add(metric_key(k))
                self.queue.put((metric_key(k), float(v), ts, int(step)))

    def _drain(self) -> None:
        from mlflow.entities import Metric

        batch = []
        while True:
            try:
                k, v, ts, step = self.queue.get_nowait()
            except queue.Empty:
                break
            batch.append(Metric(k, v, ts, step))
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000], synchronous=True)
            self.sent += len(batch[i:i + 1000])

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._drain()
            except Exception as e:  # the server went away: keep training, say so at the end
                self.error = e
        try:
            self._drain()
        except Exception as e:
            self.error = e

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def accepts_report(step: Callable) -> bool:
    try:
        return "report" in inspect.signature(step).parameters
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------- the wrapper
def step_name(step: Callable) -> str:
    return getattr(step, "__name__", type(step).__name__).lstrip("_")


def run_name(step: Callable, cfg: Any) -> str:
    """An experiment's run is named after the experiment; any other after its step."""
    experiment = getattr(cfg, "experiment", None)
    return getattr(experiment, "name", None) or step_name(step)


def start_run(run: RunContext, name: str, cfg: Any, tags: dict[str, str] | None = None) -> str:
    """Create a run (nested under the context's parent) with the config's params, lineage and inputs."""
    client = run.client
    datasets = datasets_read(cfg)  # each version computed once, for the tags and the inputs
    all_tags = {"mlflow.runName": name, "medti.step": name, **lineage_tags(cfg, datasets), **run.tags,
                **(tags or {}), **run.parent_tags()}  # a caller's medti.step (the step, when named otherwise) wins
    run_id = client.create_run(run.experiment_id, tags=all_tags, run_name=name).info.run_id
    log_params(client, run_id, params_of(cfg))
    if datasets:
        client.log_inputs(run_id, datasets=input_datasets(datasets))
    return run_id


def log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def log_metrics(client, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = [Metric(k, v, ts, step) for k, v in metrics.items()]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i:i + 1000])


def figures(result: Any, curves: set[str]) -> dict[str, float]:
    """The result's figures; one that shares a curve's name (a classifier's best ``val_auc``) is logged as
    ``result.<name>``, so that the curve's history holds only the curve."""
    return {(f"result.{k}" if k in curves else k): v for k, v in result_metrics(result).items()}


def log_result(client, run_id: str, result: Any, *, curves: set[str] | None = None) -> None:
    """The result's figures as metrics, its curves as histories (unless ``curves`` were streamed), its lineage as
    tags, and its person-facing files as artifacts."""
    from mlflow.entities import RunTag

    log_metrics(client, run_id, figures(result, curves or set()))
    if not curves:
        for step, values in result_curves(result):
            log_metrics(client, run_id, {metric_key(k): v for k, v in values.items()}, step=step)
    tags = result_tags(result)
    if tags:
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    log_files(client, run_id, result_artifacts(result))


def log_files(client, run_id: str, files: list[tuple[Path, str]]) -> None:
    """Upload (local file, artifact dir) pairs."""
    for file, sub in files:
        client.log_artifact(run_id, str(file), artifact_path=sub or None)


def call_streaming(client, run_id: str, go: Callable[[MetricStream | None], R],
                   stream: bool = True) -> tuple[R, set[str]]:
    """``go(report)``, ``report`` a :class:`MetricStream` on the run (None when ``stream`` is off: a step that
    offers no curves); returns (its result, the curves it streamed). A failure ends the run FAILED (KILLED on
    Ctrl-C) and goes on to the caller."""
    metrics = MetricStream(client, run_id) if stream else None
    try:
        result = go(metrics)
    except BaseException as e:
        if metrics is not None:
            metrics.close()
        end_run(client, run_id, e)
        raise
    if metrics is None:
        return result, set()
    metrics.close()
    return result, metrics.keys


def end_run(client, run_id: str, error: BaseException | None) -> None:
    if error is None:
        client.set_terminated(run_id, "FINISHED")
        return
    status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
    try:  # the type only: a message may quote a source file name
        client.set_tag(run_id, "medti.error", type(error).__name__)
        client.set_terminated(run_id, status)
    except Exception:  # the server is gone: the step's own error is what the user must see
        pass


def tracked(step: Callable[..., R], cfg: Any, *, run: RunContext, name: str | None = None,
            tags: dict[str, str] | None = None) -> Tracked[R]:
    """Run ``step(cfg)`` inside a new MLflow run (a child of ``run.parent_run_id`` when set). A step whose config
    has a ``call_task`` field (an experiment) gets one that runs each of its tasks as a child run of this one."""
    name = name or run_name(step, cfg)
    client = run.client
    run_id = start_run(run, name, cfg, {"medti.step": step_name(step), **(tags or {})})
    if dataclasses.is_dataclass(cfg) and any(f.name == "call_task" for f in dataclasses.fields(cfg)):
        cfg = dataclasses.replace(cfg, call_task=task_runner(run.child(run_id), Path(cfg.out)))
    curved = accepts_report(step)
    result, curves = call_streaming(client, run_id, lambda report: step(cfg, report=report) if curved else step(cfg),
                                    stream=curved)
    log_result(client, run_id, result, curves=curves)
    end_run(client, run_id, None)
    return Tracked(result, run_id)


# ----------------------------------------------------------------------------- an experiment's tasks
def _resolved(config: dict[str, Any], root: Path) -> dict[str, Any]:
    """A task config with its relative paths made absolute (they are relative to the experiment dir)."""
    def fix(v: Any) -> Any:
        if isinstance(v, str) and v and not Path(v).is_absolute() and (root / v).exists():
            return str(root / v)
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return {k: fix(v) for k, v in config.items()}


def task_runner(run: RunContext, root: Path) -> Callable:
    """``call_task`` for an experiment's runner: each task a child run (params = the task's config, its curves
    streamed, its figures as metrics, the files of its output as artifacts)."""

    def call(task, go):
        config = _resolved(task.config, root)
        tags = {"medti.step": task.step, "medti.task": task.id}
        if task.row:
            tags["medti.row"] = task.row
        if task.seed is not None:
            tags["medti.seed"] = str(task.seed)
        client = run.client
        run_id = start_run(run, task.id, config, tags)
        result, curves = call_streaming(client, run_id, go)
        log_metrics(client, run_id, figures(result, curves))
        written = _resolved(task.config, root)  # outputs exist now
        outputs = [Path(v) for k in ("out", "report") if isinstance(v := written.get(k), str) and Path(v).exists()]
        log_files(client, run_id, [pair for out in outputs for pair in _artifact_files(out)])
        end_run(client, run_id, None)
        return result

    return call
