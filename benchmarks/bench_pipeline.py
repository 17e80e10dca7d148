"""What Kubeflow's orchestration costs: the medti pipeline through kfp.local vs the same steps in one process.

Side by side in one run, on prostate phantoms and an embedded base (built once, outside the timed rounds):

- kfp.local: :func:`pipelines.local.run_local` (``cache=False``, ``quiet=True``): the pipeline graph, every task a
  subprocess of this Python (``SubprocessRunner(use_venv=False)``), one at a time;
- in process: :func:`in_process`, the same steps called here in the pipeline's order with exactly the configs the
  components (``components/*.py``) build from the same parameters: begin, validate, one textual inversion per
  concept, synthesis, the memorisation audit, a classifier + its evaluation per (condition, seed), collect,
  register, finish.

Both sides track to MLflow the same way (the parent run, every step a child run through
:func:`medti.tracking.pipeline.run_step`, the registry's champion/challenger gate), each round and side to its own
fresh sqlite store, so that no registration or gate state leaks from one run into the next. Both sides send their
output to a log file. Orchestration overhead = (kfp.local - in process) / kfp.local, of the whole run.

Rounds of the two sides are interleaved (which goes first alternates); best and median are reported, with where
the overhead goes: per task, the task's wall time under kfp.local minus its step's time in process, the time of
kfp.local's driver between tasks, and what a bare Python start + the imports of a task cost.

    python benchmarks/bench_pipeline.py                                            # 3 rounds, demo settings, tiny
    python benchmarks/bench_pipeline.py --rounds 1 --preset small --base micro --no-write   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # pipelines/ and components/

TARGET = 0.10  # orchestration may cost at most this share of the run
EXPERIMENT = "bench-pipeline"
#: a few steps of everything: 2 concepts, 8 synthetic images, 2 conditions x 1 seed (tests/test_pipeline.py's)
SMALL = {"embedding_steps": 4, "vectors": 2, "embedding_cases": 10, "synthetic_count": 8, "sampler_steps": 2,
         "classifier_steps": 4, "conditions": [{"condition": "real", "seed": 0}, {"condition": "mixed", "seed": 0}]}
#: what a task's subprocess imports before its step runs (kfp's executor, the component module, medti's steps)
TASK_IMPORTS = ("import kfp.dsl.executor_main, components.train_embedding, torch, mlflow, "
                "medti.tracking.run, medti.diffusion.textual_inversion")


# ----------------------------------------------------------------------------- the in-process side
def _default(component, name: str) -> Any:
    """A component input's default, as the compiled component has it (inputs the pipeline does not pass)."""
    return component.component_spec.inputs[name].default


def in_process(params: dict[str, Any], root: Path, timings: list[tuple[str, float]] | None = None) -> dict[str, Any]:
    """The pipeline's steps called in this process, in its order, on ``params`` (the pipeline's parameters, every
    one given), with the configs the components build; outputs under ``root`` laid out as kfp.local's artifacts.
    ``timings`` gets (kfp task name, seconds) per step. Returns the finish step's summary (or the skip reason)."""
    from components.synthesize import synthesize as c_synthesize
    from components.train_classifier import train_classifier as c_train_classifier
    from components.train_embedding import train_embedding as c_train_embedding
    from medti.classify.evaluate import EvaluateConfig, evaluate_classifier
    from medti.classify.train import ClassifierConfig, train_classifier
    from medti.data.publish import PublishConfig, publish_validated
    from medti.diffusion.synthesis import SynthesisConfig, synthesize
    from medti.diffusion.textual_inversion import EmbeddingConfig, train_embedding
    from medti.experiment.conditions import Evaluated, collect_evaluations, condition_dirs
    from medti.experiment.steps import class_spec
    from medti.io import link_tree
    from medti.quality.memorization import MemorizationConfig, audit_memorization
    from medti.tracking.pipeline import begin, classifier_model, finish, register, run_step

    p = params
    root = Path(root).resolve()
    timings = [] if timings is None else timings
    track = {"uri": p["tracking_uri"], "experiment": p["experiment_name"]}

    @contextlib.contextmanager
    def task(name: str):
        t0 = time.perf_counter()
        yield
        timings.append((name, time.perf_counter() - t0))

    # check_data_version
    with task("check-data-version"):
        data = p["data"]
        b = begin(Path(data), classifier_model(Path(data), p["target"]), **track,
                  params={"data": data, "target": p["target"], "force": p["force"]}, force=p["force"])
        print(b.reason)
    if not b.changed:
        with task("finish-2"):
            finish(b.parent_run_id, **track, skipped_reason=b.reason, summary={})
        return {"skipped": b.reason}
    run = {**track, "parent_run_id": b.parent_run_id}

    # validate_data
    with task("validate-data"):
        real, report = root / "validate-data" / "dataset", root / "validate-data" / "report"
        run_step(publish_validated, PublishConfig(data=Path(data), out=real, report=report), **run,
                 name="validate_data")

    # train_embedding, per concept
    embeddings: list[tuple[Path, str]] = []  # (file, concept), in the concepts' order (kfp's Collected)
    for i, concept in enumerate(p["concepts"]):
        with task("train-embedding"):
            name = concept["concept"]
            out = root / f"train-embedding-{i}" / "embedding" / f"{name}.safetensors"
            cfg = EmbeddingConfig(
                data=real, concept=name, where=f"{p['target']}={concept['label']}", base=p["base"],
                vectors=p["vectors"], steps=p["embedding_steps"], lr=_default(c_train_embedding, "lr"),
                batch=_default(c_train_embedding, "batch"), max_images=p["embedding_cases"],
                init_text=_default(c_train_embedding, "init_text"), seed=_default(c_train_embedding, "seed"),
                out=out, resume=True, overwrite=True, validate=False)
            run_step(train_embedding, cfg, **run, name=f"train_embedding-{name}")
            embeddings.append((out, name))

    # synthesize
    with task("synthesize"):
        synthetic = root / "synthesize" / "synthetic"
        spec = class_spec({
            "data": str(real), "out": str(synthetic), "target": p["target"],
            "concepts": [c["concept"] for c in p["concepts"]], "count": p["synthetic_count"], "base": p["base"],
            "embeddings": sorted(str(f) for f, _ in embeddings), "negatives": _default(c_synthesize, "negatives"),
            "seed": _default(c_synthesize, "seed"),
            "sampler": {"scheduler": _default(c_synthesize, "scheduler"), "steps": p["sampler_steps"],
                        "guidance": p["guidance"], "batch": _default(c_synthesize, "batch")},
        }, synthetic.parent)
        run_step(synthesize, SynthesisConfig(spec=spec, out=synthetic, overwrite=True, progress=False), **run,
                 name="synthesize")

    # audit_memorization
    with task("audit-memorization"):
        audit = root / "audit-memorization" / "audit"
        run_step(audit_memorization, MemorizationConfig(
            train=real, synthetic=synthetic, out=audit, embeddings=tuple(f for f, _ in embeddings), overwrite=True),
            **run, name="audit_memorization")

    # train_classifier + evaluate, per condition and seed
    evaluated: list[Evaluated] = []
    for i, cond in enumerate(p["conditions"]):
        condition, seed = cond["condition"], int(cond["seed"])
        with task("train-classifier"):
            clf = root / f"train-classifier-{i}" / "classifier"
            cfg = ClassifierConfig(
                train=condition_dirs(condition, real, synthetic), val=real, targets=[p["target"]], out=clf,
                seed=seed, steps=p["classifier_steps"], batch=_default(c_train_classifier, "batch"),
                lr=_default(c_train_classifier, "lr"), eval_every=_default(c_train_classifier, "eval_every"),
                validate=False, overwrite=True, progress=False)
            trained = run_step(train_classifier, cfg, **run, name=f"train_classifier-{condition}-s{seed}")
        with task("evaluate"):
            bundle = root / f"evaluate-{i}" / "evaluation"
            cfg = EvaluateConfig(model=clf, test=real, out=bundle / "evaluation", seed=seed, overwrite=True,
                                 validate=False)
            ev = run_step(evaluate_classifier, cfg, **run, name=f"evaluate-{condition}-s{seed}")
            link_tree(clf, bundle / "classifier")
            evaluated.append(Evaluated(bundle, condition, seed, float(ev.auc), float(trained.val_auc)))

    # collect, register, finish
    with task("collect"):
        col = root / "collect"
        summary = collect_evaluations(evaluated, table=col / "table", chosen=col / "chosen",
                                      embedding_evidence=col / "embedding_evidence")
    with task("register"):
        registered = register(data=real, chosen=col / "chosen", embedding_evidence=col / "embedding_evidence",
                              audit=audit, embeddings=[f for f, _ in embeddings], concept=p["target"],
                              dataset_version=b.dataset_version, base=p["base"], **run)
    with task("finish"):
        finish(b.parent_run_id, **track, skipped_reason="", summary={**summary, **registered})
    return {**summary, **registered}


# ----------------------------------------------------------------------------- measuring
def mlflow_runs(uri: str) -> list[str]:
    """The names of every run in the benchmark's experiment of the store at ``uri`` (sorted)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    return sorted(r.info.run_name for r in client.search_runs([exp.experiment_id])) if exp else []


def task_start_seconds(cmd: str, n: int = 3) -> float:
    """Best of ``n`` wall times of a fresh ``python -c cmd`` (this Python, this environment)."""
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", cmd], check=True, cwd=HERE.parent, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


@contextlib.contextmanager
def logged(path: Path):
    """stdout and stderr of this process to ``path`` (kfp.local's ``quiet`` does the same with its tasks')."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        yield


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--base", default="tiny",
                    help="an embedded base (tiny: 64 px phantoms; micro: 32 px, untrained, for smoke tests)")
    ap.add_argument("--preset", choices=("demo", "small"), default="demo",
                    help="demo: pipelines.demo.DEMO's parameters (make demo's); small: a few steps of each")
    ap.add_argument("--n", type=int, default=600, help="phantom cases")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads, both sides (OMP_NUM_THREADS for the tasks); default: torch's default")
    ap.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    args = ap.parse_args()
    from _report import check_positive

    check_positive(ap, args, ("rounds", "n", "threads"))

    from medti.diffusion.base import EMBEDDED, SPECS

    if args.base not in EMBEDDED:
        ap.error(f"--base {args.base}: one of the embedded bases, {', '.join(EMBEDDED)}")

    import torch

    from _report import command_line, machine, write_section
    from medti._quiet import quiet_libraries
    from medti.data.phantoms import PhantomConfig, generate_phantoms
    from medti.diffusion.base import ensure_embedded, load_base
    from pipelines.demo import DEMO
    from pipelines.local import run_local
    from pipelines.medti_pipeline import make_pipeline

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the tasks' subprocesses inherit it
    threads = torch.get_num_threads()
    ensure_embedded(args.base, progress=True)  # tiny: built once (about 20 min on a fresh machine), untimed
    load_base(args.base, progress=False)  # and read once, so that neither side pays the first read from disk
    size = SPECS[args.base].image_size
    preset = DEMO if args.preset == "demo" else SMALL
    defaults = {k: v.default for k, v in make_pipeline(1).component_spec.inputs.items() if v.default is not None}

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        tmp = Path(tmp)
        data = generate_phantoms(PhantomConfig(kind="prostate", out=tmp / "data", n=args.n, size=size,
                                               preset="subtle")).out

        def params(store: Path) -> dict[str, Any]:
            store.mkdir(parents=True, exist_ok=True)
            return {**defaults, **preset, "data": str(Path(data).resolve()), "base": args.base, "force": False,
                    "tracking_uri": f"sqlite:///{(store / 'mlflow.db').resolve()}", "experiment_name": EXPERIMENT}

        secs: dict[str, list[float]] = {"kfp.local": [], "in process": []}
        kfp_tasks: list[list[tuple[str, float]]] = []  # per round: (task, seconds) as kfp.local ran them
        own_tasks: list[list[tuple[str, float]]] = []
        runs: dict[str, list[str]] = {}

        def with_kfp(r: int) -> float:
            root = tmp / f"round-{r}" / "kfp"
            p = params(root / "store")
            started: dict[str, float] = {}
            tasks: list[tuple[str, float]] = []

            def progress(line: str) -> None:
                now = time.perf_counter()
                name = line.removeprefix("[task] ")
                if name.endswith(" ..."):
                    started[name[:-4]] = now
                else:
                    task, _, _status = name.rpartition(": ")
                    tasks.append((task, now - started.pop(task)))

            t0 = time.perf_counter()
            run_local(p, root / "run", cache=False, quiet=True, progress=progress)
            s = time.perf_counter() - t0
            kfp_tasks.append(tasks)
            runs["kfp.local"] = mlflow_runs(p["tracking_uri"])
            return s

        def with_steps(r: int) -> float:
            root = tmp / f"round-{r}" / "in-process"
            p = params(root / "store")
            tasks: list[tuple[str, float]] = []
            with logged(root / "run.log"):
                t0 = time.perf_counter()
                in_process(p, root / "run", tasks)
                s = time.perf_counter() - t0
            own_tasks.append(tasks)
            runs["in process"] = mlflow_runs(p["tracking_uri"])
            return s

        # untimed: the small preset once in process, so that the in-process side's rounds start with every module
        # imported and every lazy first use (MLflow's sqlite schema code, the registry, kernels) behind it
        warm = tmp / "warm-up"
        with logged(warm / "run.log"):
            in_process({**params(warm / "store"), **SMALL}, warm / "run")
        load_start = os.getloadavg()[0]
        sides = {"kfp.local": with_kfp, "in process": with_steps}
        for r in range(args.rounds):
            for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
                secs[name].append(sides[name](r))
                print(f"pipeline round {r + 1}: {name:10s} {secs[name][-1]:8.1f} s", flush=True)
            if runs["kfp.local"] != runs["in process"]:
                raise SystemExit(f"the two sides logged different MLflow runs: kfp.local {runs['kfp.local']}, "
                                 f"in process {runs['in process']}")
        python_s = task_start_seconds("pass")
        imports_s = task_start_seconds(TASK_IMPORTS)
    load_end = os.getloadavg()[0]

    # ----------------------------------------------------------------------------- report
    best = {k: min(v) for k, v in secs.items()}
    med = {k: statistics.median(v) for k, v in secs.items()}
    cost = (best["kfp.local"] - best["in process"]) / best["kfp.local"]
    cost_med = (med["kfp.local"] - med["in process"]) / med["kfp.local"]
    per_round = [k - i for k, i in zip(secs["kfp.local"], secs["in process"], strict=True)]
    n_tasks = len(kfp_tasks[0])
    n_steps = len(own_tasks[0])
    task_wall = [sum(s for _, s in t) for t in kfp_tasks]
    driver = statistics.median(k - w for k, w in zip(secs["kfp.local"], task_wall, strict=True))
    per_task_over = statistics.median(
        (w - sum(s for _, s in o)) / n_tasks for w, o in zip(task_wall, own_tasks, strict=True))

    # per task kind: medians over rounds of the summed seconds of that kind's tasks
    kinds = list(dict.fromkeys(n for n, _ in kfp_tasks[0]))

    def by_kind(rounds: list[list[tuple[str, float]]]) -> dict[str, tuple[int, float]]:
        out = {}
        for kind in kinds:
            out[kind] = (sum(1 for n, _ in rounds[0] if n == kind),
                         statistics.median(sum(s for n, s in t if n == kind) for t in rounds))
        return out

    kfp_kind, own_kind = by_kind(kfp_tasks), by_kind(own_tasks)
    rows = "\n".join(
        f"| {k} | {kfp_kind[k][0]} | {kfp_kind[k][1]:.1f} | {own_kind[k][1]:.1f} | "
        f"{kfp_kind[k][1] - own_kind[k][1]:+.1f} | {(kfp_kind[k][1] - own_kind[k][1]) / kfp_kind[k][0]:+.1f} |"
        for k in kinds)
    cmd = command_line(ap, args, "bench_pipeline.py")
    shown = ", ".join(f"{k} {v}" for k, v in preset.items() if k != "conditions")
    conds = ", ".join(f"{c['condition']}-s{c['seed']}" for c in preset["conditions"])
    met = "met" if cost <= TARGET else "missed"

    import kfp
    import mlflow

    body = f"""## Kubeflow pipeline: kfp.local vs the same steps in one process

`{cmd}` on {machine()}, kfp {kfp.__version__}, mlflow {mlflow.__version__}; torch {threads} thread(s) in this
process (the tasks' subprocesses start with the same environment). 1-minute load average {load_start:.2f} at the
start, {load_end:.2f} at the end (more than {threads} means other jobs shared the cores). Best of {args.rounds}
interleaved rounds, median beside it.

The pipeline on {args.n} prostate phantoms at {size} px (`subtle`), the embedded `{args.base}` base, `{args.preset}`
parameters ({shown}; conditions {conds}), caching off. kfp.local = `pipelines.local.run_local` (`SubprocessRunner`,
every task a subprocess of this Python, one at a time); in process = `in_process` in this script: the same steps
and configs called here, after one untimed warm-up run of the `small` parameters (imports and first uses behind
it). Both sides track the parent run, {len(runs["kfp.local"])} runs
in all (the same names on both sides) and the registry gate to a fresh sqlite store per round and side.

| side | best, s | median, s |
|---|---|---|
| kfp.local | {best["kfp.local"]:.1f} | {med["kfp.local"]:.1f} |
| in process | {best["in process"]:.1f} | {med["in process"]:.1f} |

Orchestration overhead, (kfp.local - in process) / kfp.local: **{100 * cost:.1f} %** of the run (median
{100 * cost_med:.1f} %; target <= {100 * TARGET:g} %: {met}); {statistics.median(per_round):.1f} s per run (median).

Where it goes ({n_tasks} kfp tasks, {n_steps} steps in process; medians over rounds): kfp.local's driver between
tasks {driver:.1f} s in all; inside the tasks {per_task_over:.1f} s per task more than the step alone. A bare
`python -c pass` starts in {python_s:.2f} s here, and importing what a task imports before its step
(kfp's executor, the component, torch, mlflow, medti's steps) takes {imports_s:.2f} s: every task pays its share
of that, the in-process side paid it once, in the warm-up.

| task | tasks | kfp.local, s | in process, s | overhead, s | per task, s |
|---|---|---|---|---|---|
{rows}
"""
    print(body)
    if not args.no_write:
        write_section("pipeline-kfp-local", body)


if __name__ == "__main__":
    main()
