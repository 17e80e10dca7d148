"""The augmentation experiment: the plan (shared work made once, JSON round-trip), the config's refusals, and a
whole run on the micro base: table, figure, ROC curves, sample grids; reuse on a second run; a killed run
continues; a changed setting reruns only what depends on it."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest

from medti.experiment import ExperimentError
from medti.experiment.config import (
    PRESETS,
    REFERENCE_ROWS,
    ClassifierSpec,
    ExperimentConfig,
    config_from_dict,
    load_config,
)
from medti.experiment.plan import Plan, make_plan

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_reference_plan_makes_each_embedding_and_synthetic_set_once():
    plan = make_plan(ExperimentConfig(rows=REFERENCE_ROWS))
    ids = [t.id for t in plan.tasks]
    assert len(ids) == len(set(ids))
    embeds = [t for t in plan.tasks if t.step == "train_embedding"]
    # csPCa + healthy for the 100-case embeddings and for the 10-case ones
    assert sorted(t.id for t in embeds) == ["embed-c10-csPCa", "embed-c10-healthy", "embed-c100-csPCa",
                                            "embed-c100-healthy"]
    assert {t.config["max_images"] for t in embeds} == {10, 100}
    synth = [t for t in plan.tasks if t.step == "synthesize"]
    assert sorted(t.config["count"] for t in synth) == [2000, 2000]
    # every row x seed trains and evaluates; every task needs only tasks planned before it
    for row in REFERENCE_ROWS:
        for s in range(5):
            assert f"train-{row.name}-s{s}" in ids and f"evaluate-{row.name}-s{s}" in ids
    for i, t in enumerate(plan.tasks):
        assert set(t.needs) <= set(ids[:i])
    oracle = plan.by_id("train-oracle-real-2000-s0")
    assert oracle.config["train"] == ["data/real-train-2000"]
    mixed = plan.by_id("train-real-200+syn-2000-s3")
    assert mixed.config["train"] == ["data/real-train-200", "data/synthetic-c100-2000"] and mixed.config["seed"] == 3
    assert plan.by_id("summary").needs == tuple(t.id for t in plan.tasks if t.step == "evaluate")


def test_a_plan_round_trips_through_json():
    plan = make_plan(PRESETS["quick"])
    again = Plan.from_json(plan.to_json())
    assert again.tasks == plan.tasks and again.config == plan.config


def test_a_smaller_synthetic_row_is_a_subset_of_the_largest_set():
    cfg = replace(PRESETS["quick"], rows=(*PRESETS["quick"].rows[:2], *config_from_dict(
        {"rows": [{"name": "real-200+syn-100", "real": 200, "synthetic": 100}]}).rows))
    plan = make_plan(cfg)
    sub = plan.by_id("synthetic-c100-100")
    assert sub.step == "subset" and sub.config["data"] == "data/synthetic-c100-600" and sub.config["n"] == 100


@pytest.mark.parametrize(
    "doc, words",
    [
        ({"classifer": {}}, ["unknown key 'classifer'", "did you mean 'classifier'"]),
        ({"classifier": {"step": 3}}, ["classifier", "unknown key 'step'", "'steps'"]),
        ({"classifier": {"steps": "many"}}, ["classifier.steps", "'many'"]),
        ({"seeds": 0}, ["seeds", "0"]),
        ({"seeds": [1, 1]}, ["seeds", "repeats"]),
        ({"rows": [{"name": "a", "real": 10}, {"name": "a", "real": 20}]}, ["'a'", "more than once"]),
        ({"rows": [{"name": "x", "real": 0, "synthetic": 10, "embedding_cases": 500}]}, ["x", "from_real"]),
        ({"rows": [{"name": "../escape", "real": 10}]}, ["'../escape'", "names dirs"]),
        ({"rows": [{"name": "none", "real": 0}]}, ["none", "trains on nothing"]),
        ({"data": {"phantom": {"preset": 3}}}, ["data.phantom.preset", "3"]),
    ],
)
def test_bad_configs_are_refused_naming_the_key_and_value(tmp_path, doc, words):
    import yaml

    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(ExperimentError) as e:
        load_config(p)
    assert str(p) in str(e.value)
    for w in words:
        assert w in str(e.value)


# ----------------------------------------------------------------------------- a whole run (micro base)
MICRO = {
    "name": "micro-test",
    "target": "csPCa",
    "seeds": [0, 1],
    "base": "micro",
    "data": {"phantom": {"kind": "prostate", "preset": "subtle", "size": 32, "seed": 5}, "val": 8, "test": 8},
    "embeddings": {"cases": 4, "from_real": 20, "vectors": 2, "steps": 3, "batch": 2, "lr": 0.005},
    "synthesis": {"steps": 2, "guidance": 3.0, "batch": 4},
    "classifier": {"steps": 4, "batch": 8, "eval_every": 2},
    "rows": [
        {"name": "real-20", "real": 20, "reference": [0.78, 0.017]},
        {"name": "real-20+syn-8", "real": 20, "synthetic": 8},
        {"name": "syn-12", "real": 0, "synthetic": 12},
        {"name": "oracle-real-40", "real": 40},
    ],
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from medti.experiment.runner import RunConfig, run_plan

    root = tmp_path_factory.mktemp("exp") / "run"
    cfg = config_from_dict(MICRO)
    seen = []

    def interrupt_at_the_first_mixed_classifier(i, n, task, state, result):
        seen.append((task.id, state))
        if task.id == "train-real-20+syn-8-s0" and state == "start":
            raise KeyboardInterrupt  # Ctrl-C between two tasks

    with pytest.raises(KeyboardInterrupt):
        run_plan(RunConfig(experiment=cfg, out=root, on_task=interrupt_at_the_first_mixed_classifier))
    done_before = [t for t, s in seen if s == "done"]
    res = run_plan(RunConfig(experiment=cfg, out=root))
    return root, cfg, res, done_before


def test_a_killed_experiment_continues_with_the_tasks_it_had_finished(finished):
    _, _, res, done_before = finished
    assert "synthesize-c4" in done_before and "embed-c4-csPCa" in done_before and "train-real-20-s1" in done_before
    assert set(done_before) <= set(res.reused)
    assert "train-real-20+syn-8-s0" in res.ran


def test_the_run_writes_the_table_figure_roc_and_sample_grid(finished):
    from PIL import Image

    root, cfg, _, _ = finished
    rows = {r["row"]: r for r in csv.DictReader(open(root / "table.csv"))}
    assert list(rows) == [r.name for r in cfg.rows]
    for name, r in rows.items():
        aucs = [float(a) for a in r["aucs"].split(";")]
        assert len(aucs) == 2 and int(r["seeds"]) == 2
        evals = [json.loads((root / "runs" / name / f"seed-{s}" / "evaluation" / "metrics.json").read_text())
                 for s in (0, 1)]
        assert aucs == pytest.approx([e["metrics"]["csPCa"]["auc"] for e in evals], abs=1e-4)
        assert float(r["auc_mean"]) == pytest.approx(sum(aucs) / 2, abs=1e-4)
    base, oracle = float(rows["real-20"]["auc_mean"]), float(rows["oracle-real-40"]["auc_mean"])
    if abs(oracle - base) > 1e-6:
        want = (float(rows["syn-12"]["auc_mean"]) - base) / (oracle - base)
        assert float(rows["syn-12"]["gap_closed"]) == pytest.approx(want, abs=2e-3)
    assert rows["real-20"]["reference_mean"] == "0.78"
    md = (root / "table.md").read_text()
    assert "real-20+syn-8" in md and "0.780 ± 0.017" in md
    for png in ("figure.png", "roc.png", "samples-synthetic-c4-12.png"):
        assert Image.open(root / png).size[0] > 50
    # the mixed row trained on 20 real + 8 synthetic cases
    meta = json.loads((root / "runs" / "real-20+syn-8" / "seed-0" / "classifier" / "classifier.json").read_text())
    assert [t["cases"] for t in meta["train"]] == [20, 8]


def test_a_second_run_reuses_everything(finished):
    from medti.experiment.runner import RunConfig, run_plan

    root, cfg, _, _ = finished
    again = run_plan(RunConfig(experiment=cfg, out=root))
    assert again.ran == ["summary"]


@pytest.mark.slow  # it retrains every classifier of the plan: 40 s the 10-minute suite cannot spare
def test_a_changed_setting_reruns_only_what_depends_on_it(finished):
    from medti.experiment.runner import RunConfig, run_plan

    root, cfg, _, _ = finished
    changed = replace(cfg, classifier=replace(cfg.classifier, steps=6))
    assert isinstance(changed.classifier, ClassifierSpec)
    res = run_plan(RunConfig(experiment=changed, out=root))
    assert all(t.startswith(("train-", "evaluate-", "summary")) for t in res.ran)
    assert "synthesize-c4" in res.reused and "embed-c4-healthy" in res.reused


def test_the_experiment_commands_print_the_plan_and_refuse_a_bad_config(tmp_path):
    from typer.testing import CliRunner

    from medti.cli import app

    cli = CliRunner()
    r = cli.invoke(app, ["experiment", "plan", "--quick"])
    assert r.exit_code == 0, r.output
    assert "synthesize-c100" in r.output and "train-oracle-real-2000-s1" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("classifier: {stepz: 3}\n")
    r = cli.invoke(app, ["experiment", "augment", "--config", str(bad), "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "unknown key 'stepz'" in r.output and str(bad) in r.output
    assert not (tmp_path / "x").exists()
