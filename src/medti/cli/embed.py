"""``medti embed``: textual inversion, embedding file formats."""

from __future__ import annotations

from pathlib import Path

import typer

from medti.cli._common import Base, Seed, run
from medti.diffusion.textual_inversion import EmbeddingConfig

app = typer.Typer(help="Concept embeddings: textual inversion, file formats.", no_args_is_help=True)


# the defaults are EmbeddingConfig's (its module imports nothing heavy, so `medti --help` stays instant)
@app.command("train")
def embed_train_cmd(
    data: Path = typer.Option(..., "--data", help="Dataset dir."),
    concept: str = typer.Option(..., "--concept", help="Concept name; the token is <NAME>."),
    where: str = typer.Option(EmbeddingConfig.where, "--where", help="Label filter, e.g. 'csPCa=1'."),
    base: Base = EmbeddingConfig.base,
    split: str = typer.Option(EmbeddingConfig.split, "--split"),
    vectors: int = typer.Option(EmbeddingConfig.vectors, "--vectors", help="Vectors per token (1-128)."),
    init_text: str = typer.Option(EmbeddingConfig.init_text, "--init-text", help="Text whose token embeddings initialise the vectors."),
    steps: int = typer.Option(
        EmbeddingConfig.steps, "--steps",
        help="Optimiser steps; 6000 at batch 8 is the reference work's 50k-100k images seen (phantoms: 1500 left the "
        "lesion embedding unreliable, see docs/results.md).",
    ),
    lr: float = typer.Option(EmbeddingConfig.lr, "--lr"),
    batch: int = typer.Option(EmbeddingConfig.batch, "--batch"),
    max_images: int = typer.Option(EmbeddingConfig.max_images, "--max-images", help="Use at most this many cases."),
    out: Path = typer.Option(EmbeddingConfig.out, "--out", help="Output .safetensors (default embeddings/NAME.safetensors)."),
    resume: bool = typer.Option(EmbeddingConfig.resume, "--resume", help="Continue from the last checkpoint."),
    restart: bool = typer.Option(
        EmbeddingConfig.restart, "--restart", help="Discard an unfinished run's checkpoints and start again (never done without it)."
    ),
    force: bool = typer.Option(EmbeddingConfig.overwrite, "--force", help="Replace an existing embedding file at --out."),
    checkpoint_every: int = typer.Option(EmbeddingConfig.checkpoint_every, "--checkpoint-every"),
    sample_every: int = typer.Option(EmbeddingConfig.sample_every, "--sample-every", help="Also write a sample grid every N steps."),
    precision: str = typer.Option(EmbeddingConfig.precision, "--precision", help="auto | no | bf16 | fp16 (GPU only)."),
    gradient_checkpointing: bool = typer.Option(
        EmbeddingConfig.gradient_checkpointing, "--gradient-checkpointing",
        help="Recompute the UNet's activations in backward: less memory (SD 2.x at 512 px on a small GPU), slower steps.",
    ),
    max_norm: str = typer.Option(
        EmbeddingConfig.max_norm, "--max-norm",
        help="Cap each vector's L2 norm after every step: a number, or 'vocab' = the longest of the base's own token "
        "embeddings (keeps the vectors where real tokens live; see docs/results.md). Default: uncapped.",
    ),
    seed: Seed = EmbeddingConfig.seed,
    min_per_class: int = typer.Option(
        EmbeddingConfig.min_per_class, "--min-per-class",
        help="The data must pass validation with this many train cases per class of every finding (as in data "
        "validate); 0 accepts a dataset whose other findings have no positive case.",
    ),
):
    """Textual inversion: learn VECTORS token vectors for one concept against a frozen base."""
    from medti.diffusion.textual_inversion import train_embedding

    cfg = EmbeddingConfig(
        data=data, concept=concept, where=where, base=base, split=split, vectors=vectors,
        init_text=init_text, steps=steps, lr=lr, batch=batch, max_images=max_images, out=out,
        resume=resume, restart=restart, overwrite=force, checkpoint_every=checkpoint_every, sample_every=sample_every,
        precision=precision, gradient_checkpointing=gradient_checkpointing, seed=seed, max_norm=max_norm,
        min_per_class=min_per_class,
    )
    typer.echo(run(
        train_embedding, cfg,
        interrupted=f"interrupted; the checkpoints written so far (one every {checkpoint_every} steps) are kept: run the "
        "same command with --resume to continue from the last one",
    ).summary())


@app.command("convert")
def embed_convert_cmd(
    src: Path = typer.Argument(..., help="Input embedding (.safetensors or A1111 .pt)."),
    dst: Path = typer.Argument(..., help="Output embedding (.safetensors or .pt)."),
    token: str = typer.Option(None, "--token", help="Token name (default: from the input file name)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output file."),
):
    """Convert between medti .safetensors and AUTOMATIC1111 .pt."""
    from medti.diffusion.embeddings import convert_embedding

    out = run(lambda c: convert_embedding(*c), (src, dst, token, force))
    typer.echo(f"wrote {out}")


@app.command("inspect")
def embed_inspect_cmd(file: Path = typer.Argument(..., help="Embedding file.")):
    """Print concept, vectors, dim, norm stats and base model of an embedding file."""
    import json

    from medti.diffusion.embeddings import inspect_embedding

    info = run(inspect_embedding, file)
    info.pop("metadata", None)
    typer.echo(json.dumps(info, indent=2))
