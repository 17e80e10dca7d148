"""``medti base``: build the embedded bases, train or fine-tune a base model."""

from __future__ import annotations

from pathlib import Path

import typer

from medti.cli._common import Seed, run
from medti.diffusion.base_train import BaseTrainConfig

app = typer.Typer(help="Base models: build/train the tiny base, fine-tune a checkpoint.", no_args_is_help=True)


# the defaults are BaseTrainConfig's (its module imports nothing heavy, so `medti --help` stays instant)
@app.command("train")
def base_train_cmd(
    data: list[Path] = typer.Option(..., "--data", help="Captioned dataset dir(s) (caption column)."),
    out: Path = typer.Option(..., "--out", help="Output diffusers pipeline dir."),
    base: str = typer.Option(BaseTrainConfig.base, "--base", help="Fine-tune this base (dir, checkpoint, hub id); default: train the tiny architecture from scratch."),
    steps: int = typer.Option(BaseTrainConfig.steps, "--steps", help="UNet steps."),
    vae_steps: int = typer.Option(BaseTrainConfig.vae_steps, "--vae-steps", help="VAE steps (from scratch only)."),
    batch: int = typer.Option(BaseTrainConfig.batch, "--batch"),
    lr: float = typer.Option(BaseTrainConfig.lr, "--lr"),
    train_text_encoder: bool = typer.Option(BaseTrainConfig.train_text_encoder, "--train-text-encoder", help="Also train the text encoder."),
    seed: Seed = BaseTrainConfig.seed,
    force: bool = typer.Option(BaseTrainConfig.overwrite, "--force", help="Replace an existing pipeline dir at --out (e.g. fine-tune in place)."),
):
    """Train the VAE (tiny only) and the UNet on image+caption pairs; writes a diffusers dir."""
    from medti.diffusion.base_train import train_base

    cfg = BaseTrainConfig(
        data=data, out=out, base=base, steps=steps, vae_steps=vae_steps, batch=batch, lr=lr,
        train_text_encoder=train_text_encoder, seed=seed, overwrite=force,
    )
    typer.echo(run(train_base, cfg).summary())


@app.command("build")
def base_build_cmd(name: str = typer.Argument("tiny", help="Embedded base: tiny | micro.")):
    """Build (or find in the cache) an embedded base and print where it is."""
    from medti.diffusion.base import ensure_embedded

    typer.echo(str(run(ensure_embedded, name)))
