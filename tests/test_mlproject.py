"""The MLproject: every entry point is a thin call of a real medti command with options it has, and
``mlflow run`` of one (validate_data, --env-manager local) nests medti's tracked run under the project's run,
in the same experiment."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml
from typer.core import TyperArgument, TyperOption
from typer.testing import CliRunner

from medti.cli import app

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {"validate_data", "train_embedding", "synthesize", "train_classifier", "train_classifier_mixed",
                "evaluate", "register_classifier", "register_embedding", "pipeline"}
#: the medti command each entry point calls
COMMANDS = {"validate_data": ("data", "validate"), "train_embedding": ("embed", "train"),
            "synthesize": ("synth", "dataset"), "train_classifier": ("classify", "train"),
            "train_classifier_mixed": ("classify", "train"), "evaluate": ("classify", "evaluate"),
            "register_classifier": ("registry", "register-classifier"),
            "register_embedding": ("registry", "register-embedding"), "pipeline": ("pipeline", "run")}
#: a MLproject parameter type and the Python types of the medti options it may feed
TYPES = {"int": (int,), "float": (float,), "path": (Path,), "string": (str, Path)}


def _spec() -> dict:
    return yaml.safe_load((ROOT / "MLproject").read_text())


def _params(entry: dict) -> dict[str, dict]:
    return {k: ({"type": v} if isinstance(v, str) else dict(v)) for k, v in (entry.get("parameters") or {}).items()}


def _medti_call(command: str) -> list[str]:
    """The tokens of the medti invocation in an entry point's command (parameters left as ``{name}``)."""
    calls = [shlex.split(part) for part in command.split("&&")]
    calls = [c for c in calls if c and c[0] == "medti"]
    assert len(calls) == 1, f"expected one medti call in {command!r}"
    return calls[0]


def _split(tokens: list[str], cmd) -> tuple[dict[str, list[str]], list[str]]:
    """``--option value`` pairs (values as given, several for a repeated option) and the positional arguments
    of ``tokens`` parsed against ``cmd``'s options."""
    flags = {o for p in cmd.params if isinstance(p, TyperOption) and p.is_flag for o in p.opts + p.secondary_opts}
    options: dict[str, list[str]] = {}
    args: list[str] = []
    it = iter(tokens)
    for tok in it:
        if tok.startswith("--"):
            options.setdefault(tok, []).append("" if tok in flags else next(it))
        else:
            args.append(tok)
    return options, args


def _option(cmd, opt: str) -> TyperOption | None:
    return next((p for p in cmd.params if isinstance(p, TyperOption) and opt in p.opts + p.secondary_opts), None)


def _type(o: TyperOption) -> type:
    """The Python type of one value of option ``o`` (``list[Path]`` -> Path)."""
    ann = o.type_descriptor.annotation
    return getattr(ann, "__args__", (ann,))[0] if getattr(ann, "__origin__", None) is list else ann


def _check(name: str, entry: dict) -> None:
    """Entry point ``name`` calls its medti command, nested under mlflow run's run, with options that command
    has, each fed by a parameter of a matching type whose default (if any) is the command's own."""
    root = typer.main.get_command(app)
    runner = CliRunner()
    where = f"entry point {name}"
    params = _params(entry)
    command = entry["command"]
    for p, info in params.items():
        assert info["type"] in TYPES, f"{where}: parameter {p} has type {info['type']!r}"
        assert "{" + p + "}" in command, f"{where}: parameter {p} is not used in its command"
    # MLflow fills the command with str.format: every other brace would break it
    command.format(**{p: "x" for p in params})

    tokens = _medti_call(command)[1:]
    # root options: the run nests under mlflow run's run, in its experiment
    root_opts = {}
    while tokens[0].startswith("--"):
        opt, value = tokens[0], tokens[1]
        assert _option(root, opt) is not None, f"{where}: medti has no root option {opt}"
        root_opts[opt] = value
        tokens = tokens[2:]
    assert root_opts.get("--parent-run-id") == "$MLFLOW_RUN_ID", f"{where}: not nested under $MLFLOW_RUN_ID"
    assert root_opts.get("--experiment-name") and "MLFLOW_EXPERIMENT_ID" in command, \
        f"{where}: no --experiment-name of experiment $MLFLOW_EXPERIMENT_ID"

    group, sub, rest = tokens[0], tokens[1], tokens[2:]
    assert (group, sub) == COMMANDS[name], f"{where}: calls medti {group} {sub}"
    res = runner.invoke(app, [group, sub, "--help"])
    assert res.exit_code == 0, f"{where}: medti {group} {sub} --help: {res.output}"
    assert f" {group} {sub} [OPTIONS]" in res.output, res.output
    cmd = root.commands[group].commands[sub]

    options, args = _split(rest, cmd)
    n_args = [p for p in cmd.params if isinstance(p, TyperArgument)]
    assert len(args) == len(n_args), f"{where}: {args} for arguments {[a.name for a in n_args]}"
    for a in args:
        assert a[1:-1] in params, f"{where}: argument {a} is not a parameter"
    for opt, values in options.items():
        o = _option(cmd, opt)
        assert o is not None, f"{where}: medti {group} {sub} has no option {opt}"
        assert opt in res.output, f"{where}: {opt} is not in medti {group} {sub} --help"
        assert len(values) == 1 or o.multiple, f"{where}: {opt} given {len(values)} times"
        for value in values:
            if o.is_flag:
                continue
            p = value[1:-1]
            assert value == "{" + p + "}" and p in params, f"{where}: {opt} {value} is not a parameter"
            ptype, default = params[p]["type"], params[p].get("default")
            assert _type(o) in TYPES[ptype], f"{where}: {opt} takes {_type(o)}, parameter {p} is {ptype}"
            if default is not None and o.default is not None and not o.multiple:
                assert _type(o)(default) == o.default, \
                    f"{where}: {p} defaults to {default!r}, medti's {opt} to {o.default!r}"
    for o in cmd.params:
        if isinstance(o, TyperOption) and o.required:
            assert set(o.opts) & set(options), f"{where}: required {o.opts[0]} is not given"


def test_entry_points_call_real_medti_commands_with_their_options():
    spec = _spec()
    assert spec["python_env"] == "python_env.yaml"
    assert set(spec["entry_points"]) == ENTRY_POINTS
    for name, entry in spec["entry_points"].items():
        _check(name, entry)


def _cmd(old: str, new: str):
    return lambda e: e.update(command=e["command"].replace(old, new))


def _param(**kw):
    return lambda e: e["parameters"].update(kw)


@pytest.mark.parametrize("edit, message", [
    pytest.param(_cmd("data validate", "data check"), "calls medti data check", id="another-command"),
    pytest.param(_cmd("{min_per_class}", "{min_per_class} --no-such {data}"), "has no option --no-such",
                 id="unknown-option"),
    pytest.param(_cmd("{min_per_class}", "{min_per_class} --report {min_per_class}"), "--report takes",
                 id="option-of-another-type"),
    pytest.param(_cmd(' --parent-run-id "$MLFLOW_RUN_ID"', ""), "not nested", id="not-nested"),
    pytest.param(_cmd(' --experiment-name "$experiment"', ""), "no --experiment-name", id="no-experiment"),
    pytest.param(_cmd("{data}", "{data} {data}"), "arguments", id="extra-argument"),
    pytest.param(_param(min_per_class={"type": "float", "default": 1.0}), "parameter min_per_class is float",
                 id="parameter-type"),
    pytest.param(_param(min_per_class={"type": "int", "default": 3}), "defaults to 3", id="default-drift"),
    pytest.param(_param(unused="string"), "parameter unused is not used", id="unused-parameter"),
])
def test_the_check_catches_a_broken_entry_point(edit, message):
    entry = _spec()["entry_points"]["validate_data"]
    _check("validate_data", entry)  # as written, fine
    edit(entry)
    with pytest.raises(AssertionError, match=message):
        _check("validate_data", entry)


def test_python_env():
    env = yaml.safe_load((ROOT / "python_env.yaml").read_text())
    assert str(env["python"]) == "3.11"
    assert {"pip", "wheel"} <= set(env["build_dependencies"])
    assert any(d.startswith("setuptools") for d in env["build_dependencies"])
    assert env["dependencies"] in (["."], ["-e ."])


# ----------------------------------------------------------------------------- mlflow run, for real
@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A small phantom dataset, a sqlite tracking store and an experiment whose artifacts stay in the temp dir:
    (tmp dir, dataset dir, tracking URI, experiment id)."""
    from mlflow import MlflowClient

    from medti.data.phantoms import PhantomConfig, generate_phantoms

    tmp = tmp_path_factory.mktemp("mlproject")
    data = tmp / "data"
    generate_phantoms(PhantomConfig(kind="prostate", out=data, n=40, size=64))
    uri = f"sqlite:///{(tmp / 'mlflow.db').as_posix()}"
    exp = MlflowClient(uri).create_experiment("mlproject-test", artifact_location=(tmp / "artifacts").as_uri())
    return tmp, data, uri, exp


def _mlflow_run(uri: str, *args: str) -> subprocess.CompletedProcess:
    """``mlflow run . ARGS --env-manager local`` from the repo, with this Python's bin dir (medti, python)
    first on PATH and no MLFLOW_* of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    bindir = str(Path(sys.executable).parent)
    env.update(MLFLOW_TRACKING_URI=uri, PATH=os.pathsep.join([bindir, env.get("PATH", "")]),
               OMP_NUM_THREADS="1")
    return subprocess.run([str(Path(bindir) / "mlflow"), "run", ".", "--env-manager", "local",
                           "--experiment-name", "mlproject-test", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def _runs(uri: str, exp: str):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    return client, client.search_runs([exp])


def test_mlflow_run_validate_data_nests_medti_run(project):
    tmp, data, uri, exp = project
    out = _mlflow_run(uri, "-e", "validate_data", "-P", f"data={data}")
    assert out.returncode == 0, out.stdout + out.stderr

    client, runs = _runs(uri, exp)
    projects = [r for r in runs if r.data.tags.get("mlflow.project.entryPoint") == "validate_data"]
    assert len(projects) == 1, [r.data.tags for r in runs]
    parent = projects[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["data"] == str(data)

    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 1, [r.data.tags for r in runs]
    child = children[0]
    assert child.info.experiment_id == exp == parent.info.experiment_id
    assert child.info.status == "FINISHED"
    assert child.data.tags["medti.step"] == "validate_dataset"
    assert child.data.tags["medti.dataset"] == "phantom-prostate"
    assert child.data.tags["medti.dataset_version"]
    assert child.info.run_id in out.stderr  # medti says where its run is
    report = [f.path for f in client.list_artifacts(child.info.run_id, "validation")]
    assert "validation/validation.json" in report
    # artifacts went where the experiment says, none into the project dir
    assert (tmp / "artifacts" / child.info.run_id / "artifacts" / "validation" / "validation.json").is_file()


@pytest.mark.slow  # a second `mlflow run`: 12 s
def test_mlflow_run_fails_on_a_dir_that_is_not_a_dataset(project):
    tmp, _, uri, exp = project
    bad = tmp / "not-a-dataset"
    bad.mkdir()
    (bad / "notes.txt").write_text("no manifest here\n")
    out = _mlflow_run(uri, "-e", "validate_data", "-P", f"data={bad}")
    assert out.returncode != 0
    assert str(bad) in out.stdout + out.stderr
    _, runs = _runs(uri, exp)
    failed = [r for r in runs if r.data.params.get("data") == str(bad)]
    assert [r.info.status for r in failed] == ["FAILED"]
