"""``medti registry``: register embeddings and classifiers as MLflow model versions, promote, list, show.

The registry is the tracking store's (``--tracking-uri`` / ``MLFLOW_TRACKING_URI``); without one, the local store
``sqlite:///mlflow.db`` + ``mlartifacts/`` in the working directory.
"""

from __future__ import annotations

from pathlib import Path

import typer

from medti.cli._common import fail, fail_if_mlflow_error, registry_context

app = typer.Typer(help="The MLflow model registry: register, promote (champion / challenger), list, show.",
                  no_args_is_help=True)

Evaluation = typer.Option(None, "--evaluation", help="Evaluation dir (medti classify evaluate) on the real test split: "
                          "the figures the version carries and the gate compares.")
Promote = typer.Option(True, "--promote/--no-promote", help="Run the champion / challenger gate after registering.")


def _call(fn, *args):
    """A registry action; its errors as one line naming the model, version or store."""
    from medti.classify import ClassifierError
    from medti.diffusion.embeddings import EmbeddingError
    from medti.tracking import TrackingError

    ctx = registry_context()
    try:
        return fn(*args, ctx)
    except (TrackingError, EmbeddingError, ClassifierError, FileNotFoundError) as e:
        fail(str(e))
    except Exception as e:
        fail_if_mlflow_error(e, ctx.uri)
        raise


@app.command("register-embedding")
def register_embedding_cmd(
    embedding: Path = typer.Argument(..., help="Embedding .safetensors (medti embed train)."),
    data: Path = typer.Option(None, "--data", help="The dataset it learned from: names the model medti-<dataset>-<concept>."),
    name: str = typer.Option(None, "--name", help="The registered model's name instead."),
    companions: list[Path] = typer.Option(
        [], "--with", help="Another concept's embedding of the same base, served with it for composed prompts "
        "(healthy:30% AND csPCa:70%). Repeat for more."),
    base: str = typer.Option("tiny", "--base", help="The base a server loads (its hash must match the embedding's)."),
    guidance: float = typer.Option(None, "--guidance", help="Default guidance of a request (3.0 for tiny, else 7.5)."),
    evaluation: Path = Evaluation,
    promote: bool = Promote,
    audit: Path = typer.Option(None, "--audit", help="Memorisation audit (medti quality memorization: its dir or "
                               "audit.json) of a synthetic set made with this embedding: a failed audit refuses the "
                               "registration, naming the flagged images."),
):
    """Register an embedding as a pyfunc model version that serves images."""
    from medti.tracking.registry import RegisterEmbeddingConfig, register_embedding

    cfg = RegisterEmbeddingConfig(embedding=embedding, data=data, name=name, companions=list(companions), base=base,
                                  guidance=guidance, evaluation=evaluation, promote=promote, audit=audit)
    typer.echo(_call(register_embedding, cfg).summary())


@app.command("register-classifier")
def register_classifier_cmd(
    model: Path = typer.Argument(..., help="Classifier dir (exported to ONNX here) or its .onnx."),
    data: Path = typer.Option(None, "--data", help="The real dataset: names the model medti-<dataset>-<target>-classifier."),
    name: str = typer.Option(None, "--name", help="The registered model's name instead."),
    evaluation: Path = Evaluation,
    promote: bool = Promote,
):
    """Register a classifier in ONNX form as a pyfunc model version that serves probabilities for PNGs."""
    from medti.tracking.registry import RegisterClassifierConfig, register_classifier

    cfg = RegisterClassifierConfig(model=model, data=data, name=name, evaluation=evaluation, promote=promote)
    typer.echo(_call(register_classifier, cfg).summary())


@app.command("promote")
def promote_cmd(
    name: str = typer.Argument(..., help="Registered model name."),
    version: str = typer.Argument(..., help="The version to judge."),
):
    """Make VERSION champion if its test AUC is at least the champion's (or there is none); challenger otherwise."""
    from medti.tracking.registry import promote

    decision, _ = _call(lambda n, v, ctx: promote(ctx, n, v), name, version)
    typer.echo(decision)


@app.command("list")
def list_cmd():
    """The registered models: kind, versions, aliases."""
    from rich.console import Console
    from rich.table import Table

    from medti.tracking.registry import list_models

    models = _call(lambda ctx: list_models(ctx))
    table = Table(title=f"registered models ({registry_context().uri})")
    for col in ("name", "kind", "versions", "latest", "aliases"):
        table.add_column(col)
    for m in models:
        aliases = ", ".join(f"{a}=v{v}" for a, v in sorted(m["aliases"].items())) or "-"
        table.add_row(m["name"], m["kind"] or "-", str(m["versions"]), str(m["latest"]), aliases)
    Console(width=160).print(table if models else "no registered models")


@app.command("show")
def show_cmd(ref: str = typer.Argument(..., help="NAME, NAME@ALIAS (champion, challenger) or NAME/VERSION.")):
    """Versions of a registered model: status, aliases, test figures, lineage, the run that made it."""
    from rich.console import Console
    from rich.table import Table

    from medti.tracking.registry import show_model

    versions = _call(lambda r, ctx: show_model(ctx, r), ref)
    table = Table(title=ref, show_lines=True)
    for col in ("version", "aliases", "status", "test AUC", "gate", "lineage", "run"):
        table.add_column(col, overflow="fold")
    for v in versions:
        lineage = "\n".join(f"{k.removeprefix('medti.')}: {t}" for k, t in sorted(v["lineage"].items()))
        table.add_row(v["version"], ", ".join(v["aliases"]) or "-", v["status"], v["figures"].get("auc", "-"),
                      v["decision"] or "-", lineage, v["run_id"] or "-")
    Console(width=200).print(table)
