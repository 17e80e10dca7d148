"""``make_plan(ExperimentConfig) -> Plan``: every task the experiment needs, in an order that runs.

A task is (id, step, config, needs): ``step`` names a function in :mod:`medti.experiment.steps`, ``config`` is
plain JSON (paths relative to the experiment dir), ``needs`` the ids whose outputs it reads. Shared work is
one task: the embeddings and synthetic set that several rows use are made once. The plan is pure (no file
is read or written) and round-trips through JSON, so the Kubeflow pipeline can fan out the same tasks.

Layout of an experiment dir::

    data/source            the real data (generated phantoms), or the user's dataset dir (absolute path)
    data/real-{val,test}   the validation / test cases
    data/real-train-N      N real training cases
    embeddings/cK/         the concept embeddings learned from K cases of each class
    data/synthetic-cK-N    N synthetic cases from them
    runs/ROW/seed-S/       classifier, evaluation
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from medti.experiment.config import ExperimentConfig, config_from_dict

STEPS = ("phantom", "validate", "subset", "train_embedding", "synthesize", "train_classifier", "evaluate", "summary")


@dataclass(frozen=True)
class Task:
    id: str
    step: str
    config: dict[str, Any]
    needs: tuple[str, ...] = ()
    row: str | None = None  # the row (and seed) a classifier task belongs to
    seed: int | None = None


@dataclass
class Plan:
    config: ExperimentConfig
    tasks: list[Task] = field(default_factory=list)

    def add(self, task: Task) -> Task:
        for t in self.tasks:
            if t.id == task.id:
                return t  # shared work: the first definition stands, and is what the caller builds on
        unknown = [n for n in task.needs if not any(t.id == n for t in self.tasks)]
        assert not unknown, f"task {task.id} needs {unknown}, not planned before it"
        self.tasks.append(task)
        return task

    def by_id(self, task_id: str) -> Task:
        return next(t for t in self.tasks if t.id == task_id)

    def to_json(self) -> str:
        return json.dumps({"config": self.config.to_dict(),
                           "tasks": [asdict(t) | {"needs": list(t.needs)} for t in self.tasks]}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        d = json.loads(text)
        tasks = [Task(t["id"], t["step"], t["config"], tuple(t["needs"]), t.get("row"), t.get("seed"))
                 for t in d["tasks"]]
        return cls(config_from_dict(d["config"]), tasks)


def make_plan(cfg: ExperimentConfig) -> Plan:
    plan = Plan(cfg)
    source = _source(plan)
    val = _subset(plan, source, "val", cfg.data.val, "real-val")
    test = _subset(plan, source, "test", cfg.data.test, "real-test")
    evals = []
    for row in cfg.rows:
        train_dirs, needs = [], [val.id]
        if row.real:
            real = _real_train(plan, source, row.real)
            train_dirs.append(real.config["out"])
            needs.append(real.id)
        if row.synthetic:
            syn = _synthetic(plan, source, cfg.embedding_cases(row), row.synthetic)
            train_dirs.append(syn.config["out"])
            needs.append(syn.id)
        for seed in cfg.seeds:
            run = f"runs/{row.name}/seed-{seed}"
            train = plan.add(Task(
                f"train-{row.name}-s{seed}", "train_classifier",
                {"train": train_dirs, "val": val.config["out"], "targets": [cfg.target], "out": f"{run}/classifier",
                 "seed": seed, **asdict(cfg.classifier)},
                tuple(needs), row.name, seed))
            evals.append(plan.add(Task(
                f"evaluate-{row.name}-s{seed}", "evaluate",
                {"model": train.config["out"], "test": test.config["out"], "out": f"{run}/evaluation", "seed": seed},
                (train.id, test.id), row.name, seed)))
    plan.add(Task("summary", "summary", {"out": "."}, tuple(t.id for t in evals)))
    return plan


def _source(plan: Plan) -> Task:
    cfg = plan.config
    d = cfg.data
    if d.dir is not None:
        out = d.dir
        needs: tuple[str, ...] = ()
    else:
        p = d.phantom
        assert p is not None
        pool = max([r.real for r in cfg.rows] + [cfg.embeddings.from_real])
        total = pool + d.val + d.test
        # patient-level splits land near their fractions, not on them: 6 % more cases than asked, then exact subsets
        n = int(total * 1.06) + 10
        out = "data/source"
        plan.add(Task("phantom", "phantom", {"kind": p.kind, "preset": p.preset, "size": p.size, "seed": p.seed,
                                             "n": n, "split_fractions": [pool / total, d.val / total, d.test / total],
                                             "out": out}))
        needs = ("phantom",)
    return plan.add(Task("validate-source", "validate", {"dataset": out, "report": "data/source-validation"}, needs))


def _subset(plan: Plan, source: Task, split: str, n: int, name: str) -> Task:
    return plan.add(Task(name, "subset", {"data": source.config["dataset"], "split": split, "n": n, "seed": 0,
                                          "out": f"data/{name}"}, (source.id,)))


def _real_train(plan: Plan, source: Task, n: int) -> Task:
    return _subset(plan, source, "train", n, f"real-train-{n}")


def _synthetic(plan: Plan, source: Task, cases: int, count: int) -> Task:
    """The synthetic set of ``count`` images from ``cases``-case embeddings: the largest set any row asks of
    those embeddings is generated once, smaller ones are subsets of it."""
    cfg = plan.config
    e, s = cfg.embeddings, cfg.synthesis
    real = _real_train(plan, source, e.from_real)
    emb_ids = []
    for concept, label in ((cfg.target, 1), ("healthy", 0)):
        t = plan.add(Task(
            f"embed-c{cases}-{concept}", "train_embedding",
            {"data": real.config["out"], "concept": concept, "where": f"{cfg.target}={label}", "base": cfg.base,
             "vectors": e.vectors, "init_text": e.init_text, "steps": e.steps, "lr": e.lr, "batch": e.batch,
             "max_images": cases, "seed": e.seed, "out": f"embeddings/c{cases}/{concept}.safetensors"},
            (real.id,)))
        emb_ids.append(t.id)
    largest = max(r.synthetic for r in cfg.rows if r.synthetic and cfg.embedding_cases(r) == cases)
    full = plan.add(Task(
        f"synthesize-c{cases}", "synthesize",
        {"base": cfg.base, "embeddings": [plan.by_id(i).config["out"] for i in emb_ids], "target": cfg.target,
         "data": real.config["out"],
         "concepts": [cfg.target, "healthy"], "count": largest, "negatives": s.negatives, "seed": s.seed,
         "sampler": {"scheduler": s.scheduler, "steps": s.steps, "guidance": s.guidance, "batch": s.batch},
         "out": f"data/synthetic-c{cases}-{largest}"},
        tuple(emb_ids)))
    if count == largest:
        return full
    return plan.add(Task(f"synthetic-c{cases}-{count}", "subset",
                         {"data": full.config["out"], "split": "train", "n": count, "seed": 0,
                          "out": f"data/synthetic-c{cases}-{count}"}, (full.id,)))
