"""medti classify: train a ResNet-18 on real and/or synthetic dataset dirs, evaluate it on real test cases,
export it to ONNX, predict with either form."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medti.classify.train import ClassifierConfig
from medti.cli._common import Seed, fail, run

app = typer.Typer(help="Diagnostic classifier: train, evaluate, export to ONNX, predict.", no_args_is_help=True)
DEFAULTS = ClassifierConfig(train=[], val=Path(), targets=[], out=Path())

Force = Annotated[bool, typer.Option("--force", help="Replace an existing output of this step (never anything else).")]


def _dirs(first: list[Path], ctx: typer.Context) -> list[Path]:
    """--train A B C: click takes one value per flag; the rest arrive as extra arguments."""
    extra = []
    for a in ctx.args:
        if a.startswith("-"):
            fail(f"unexpected option {a!r}")
        extra.append(Path(a))
    return [*first, *extra]


@app.command("train", context_settings={"allow_extra_args": True})
def train_cmd(
    ctx: typer.Context,
    train: Annotated[list[Path], typer.Option("--train", help="Dataset dir(s) whose train split is trained on: real, "
                                              "synthetic, or both (list several after the flag or repeat it).")],
    val: Annotated[Path, typer.Option("--val", help="Dataset dir whose val split picks the checkpoint and threshold.")],
    target: Annotated[list[str], typer.Option("--target", help="Finding to classify; repeat for multi-label.")],
    out: Annotated[Path, typer.Option("--out", help="Output classifier dir.")],
    seed: Seed = DEFAULTS.seed,
    steps: Annotated[int, typer.Option("--steps", help="Optimiser steps.")] = DEFAULTS.steps,
    batch: Annotated[int, typer.Option("--batch")] = DEFAULTS.batch,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (warm-up, then cosine).")] = DEFAULTS.lr,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Score the validation split every N steps.")]
    = DEFAULTS.eval_every,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every")] = DEFAULTS.checkpoint_every,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Kornia augmentation (train only).")]
    = DEFAULTS.augment,
    pretrained: Annotated[Path | None, typer.Option("--pretrained", help="Local transformers ResNet dir to start "
                                                     "from (e.g. a downloaded microsoft/resnet-18); default random init.")]
    = None,
    min_per_class: Annotated[int, typer.Option("--min-per-class", help="Validation gate, as in data validate.")]
    = DEFAULTS.min_per_class,
    restart: Annotated[bool, typer.Option("--restart", help="Discard an unfinished run's checkpoints instead of "
                                          "continuing it.")] = False,
    threads: Annotated[int | None, typer.Option("--threads", help="Torch CPU threads.")] = None,
    force: Force = False,
):
    """Train a ResNet-18; keeps the checkpoint with the best validation AUC. A killed run continues when the
    same command is run again."""
    from medti.classify.train import train_classifier

    cfg = ClassifierConfig(
        train=_dirs(train, ctx), val=val, targets=target, out=out, seed=seed, steps=steps, batch=batch, lr=lr,
        eval_every=eval_every, checkpoint_every=checkpoint_every, augment=augment, pretrained=pretrained,
        min_per_class=min_per_class, restart=restart, threads=threads, overwrite=force,
    )
    typer.echo(run(train_classifier, cfg, interrupted="interrupted; the checkpoints so far are kept: run the same "
                   "command again to continue from the last one").summary())


@app.command("evaluate")
def evaluate_cmd(
    model: Annotated[Path, typer.Option("--model", help="Classifier dir or exported .onnx.")],
    test: Annotated[Path, typer.Option("--test", help="Dataset dir with real test cases.")],
    out: Annotated[Path, typer.Option("--out", help="Output dir: metrics.json, predictions.csv, roc.png.")],
    split: Annotated[str, typer.Option("--split", help="Split of --test to evaluate on.")] = "test",
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=100, help="Bootstrap replicates of the AUC interval.")]
    = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
    force: Force = False,
):
    """AUC with a stratified bootstrap 95 % interval, sensitivity/specificity at the validation threshold,
    ROC curve, per-case predictions."""
    from medti.classify.evaluate import EvaluateConfig, evaluate_classifier

    cfg = EvaluateConfig(model=model, test=test, out=out, split=split, n_boot=bootstrap, seed=seed, overwrite=force)
    typer.echo(run(evaluate_classifier, cfg).summary())


@app.command("export")
def export_cmd(
    model: Annotated[Path, typer.Option("--model", help="Classifier dir.")],
    out: Annotated[Path, typer.Option("--out", help="Output .onnx file.")],
    force: Force = False,
):
    """Export to ONNX ([0, 1] images in, probabilities out; the classifier's metadata inside), checked against
    torch."""
    from medti.classify.onnx import ExportConfig, export_onnx

    typer.echo(run(export_onnx, ExportConfig(model=model, out=out, overwrite=force)).summary())


@app.command("predict")
def predict_cmd(
    model: Annotated[Path, typer.Option("--model", help="Exported .onnx (onnxruntime) or classifier dir (torch).")],
    data: Annotated[Path, typer.Option("--data", help="Dataset dir.")],
    out: Annotated[Path, typer.Option("--out", help="Output CSV (case_id, source, label and probability per target).")],
    split: Annotated[str | None, typer.Option("--split", help="Only this split (default: every case).")] = None,
    force: Force = False,
):
    """Probabilities for every case of a dataset dir."""
    from medti.classify.onnx import PredictConfig, predict

    typer.echo(run(predict, PredictConfig(model=model, data=data, out=out, split=split, overwrite=force)).summary())
