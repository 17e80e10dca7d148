"""``run_plan(RunConfig) -> RunResult``: the local executor. One process, the plan's tasks in order.

Each finished task leaves a record ``.tasks/<id>.json`` in the experiment dir: its key (a hash of its step,
its config and the keys of the tasks it needs) and its result. A task whose record has the same key is
reused, not run again; so a killed experiment continues where it stopped (the step it was in continues from
its own checkpoints: textual inversion, synthetic datasets and classifier training all resume), and changing
one setting reruns only the tasks that depend on it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medti import Report
from medti.experiment import ExperimentError
from medti.experiment.config import ExperimentConfig
from medti.experiment.plan import Plan, Task, make_plan

RECORDS = ".tasks"
PLAN_JSON = "plan.json"
CONFIG_YAML = "config.yaml"


@dataclass
class RunConfig:
    experiment: ExperimentConfig
    out: Path
    #: called with (task index, task count, task, "start" | "reused" | "done", result or None)
    on_task: Callable[[int, int, Task, str, dict | None], None] | None = None
    threads: int | None = None  # torch CPU threads for the whole run
    #: how each task's step is called: ``call_task(task, go)`` must return ``go(report)`` (``report`` a curve
    #: callback or None). None calls ``go(None)``. Tracking passes one that runs each task as a child MLflow run.
    call_task: Callable[[Task, Callable[[Report | None], dict]], dict] | None = None


@dataclass
class RunResult:
    out: Path
    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def text(self) -> str:
        lines = [f"experiment {self.out}: {len(self.ran)} tasks run, {len(self.reused)} reused, {self.seconds:.0f} s"]
        for name in ("table_md", "table_csv", "figure", "roc"):
            if name in self.summary:
                lines.append(f"{name.replace('_', '.')}: {self.out / self.summary[name]}")
        if (self.out / "table.md").is_file():
            lines += ["", (self.out / "table.md").read_text(encoding="utf-8")]
        return "\n".join(lines)


def task_keys(plan: Plan) -> dict[str, str]:
    """Each task's key: its step and config, and (recursively) the keys of what it needs."""
    keys: dict[str, str] = {}
    for t in plan.tasks:
        doc = {"step": t.step, "config": t.config, "needs": [keys[n] for n in t.needs]}
        keys[t.id] = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
    return keys


def _record(root: Path, task_id: str) -> Path:
    return root / RECORDS / f"{task_id}.json"


def read_record(root: Path, task_id: str) -> dict[str, Any] | None:
    p = _record(root, task_id)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def run_plan(cfg: RunConfig) -> RunResult:
    """Run (or continue) the experiment; one run per experiment dir at a time."""
    from medti._threads import torch_threads
    from medti.io import output_lock

    root = Path(cfg.out)
    with output_lock(root, "experiment"), torch_threads(cfg.threads):
        return _run(cfg, root)


def _run(cfg: RunConfig, root: Path) -> RunResult:
    import yaml

    from medti.experiment.steps import STEP_FUNCTIONS
    from medti.io import atomic_write_text

    t0 = time.time()
    plan = make_plan(cfg.experiment)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / CONFIG_YAML, yaml.safe_dump(cfg.experiment.to_dict(), sort_keys=False))
    atomic_write_text(root / PLAN_JSON, plan.to_json())
    keys = task_keys(plan)
    res = RunResult(out=root)
    for i, task in enumerate(plan.tasks):
        rec = read_record(root, task.id)
        if rec is not None and rec.get("key") == keys[task.id] and task.step != "summary":
            res.reused.append(task.id)
            if cfg.on_task:
                cfg.on_task(i, len(plan.tasks), task, "reused", rec.get("result"))
            continue
        if cfg.on_task:
            cfg.on_task(i, len(plan.tasks), task, "start", None)
        started = time.time()
        fn = STEP_FUNCTIONS.get(task.step)
        if fn is None:
            raise ExperimentError(f"task {task.id}: unknown step {task.step!r}")
        def go(report: Report | None, fn=fn, task=task) -> dict:
            return fn(task.config, root, report=report)

        result = cfg.call_task(task, go) if cfg.call_task else go(None)
        record = {"id": task.id, "step": task.step, "key": keys[task.id], "seconds": round(time.time() - started, 1),
                  "row": task.row, "seed": task.seed, "result": result}
        atomic_write_text(_record(root, task.id), json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        res.ran.append(task.id)
        if task.step == "summary":
            res.summary = result
        if cfg.on_task:
            cfg.on_task(i, len(plan.tasks), task, "done", result)
    res.seconds = time.time() - t0
    return res
