"""``medti synth``: generate, interpolate, inpaint, synthetic datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medti.cli._common import (
    GUIDANCE_INTERVAL,
    SAMPLER_DEFAULTS,
    Base,
    ForceDataset,
    Guidance,
    GuidanceInterval,
    GuidanceRescale,
    GuidanceThreshold,
    OutDataset,
    Scheduler,
    Seed,
    Steps,
    fail,
    run,
)

app = typer.Typer(
    help="Synthesis: composable prompts, interpolation, inpainting, synthetic datasets.", no_args_is_help=True
)

#: --embeddings A B C: click takes one value per flag, the rest arrive as extra arguments (see _embeddings)
_EXTRA_ARGS = {"allow_extra_args": True}
Embeddings = Annotated[
    list[Path],
    typer.Option(
        "--embeddings", help="Embedding file(s) (.safetensors / A1111 .pt); repeat the flag or list several after it."
    ),
]


def _embeddings(embeddings: list[Path] | None, ctx: typer.Context) -> list[Path]:
    """--embeddings A B C: click takes one value per flag, the rest arrive as extra arguments."""
    extra = []
    for a in ctx.args:
        if not a.endswith((".safetensors", ".pt", ".bin")):
            fail(f"unexpected argument {a!r} (embedding files end in .safetensors, .pt or .bin)")
        extra.append(Path(a))
    return [*(embeddings or []), *extra]


def _weights(text: str) -> list[float]:
    out = []
    for part in text.split(","):
        try:
            out.append(float(part))
        except ValueError:
            fail(f"--weights {text!r}: {part.strip()!r} is not a number (write e.g. 0,0.25,0.5,0.75,1)")
    return out


def _interval(text: str) -> tuple[float, float]:
    from medti.diffusion.guided import SynthesisError, parse_guidance_interval

    try:
        return parse_guidance_interval(text)
    except SynthesisError as e:
        raise typer.BadParameter(str(e)) from None


def _sampler(scheduler: str, steps: int, guidance: float, rescale: float, interval: str, threshold: float, **kw):
    from medti.diffusion.guided import SynthesisError, check_guidance_threshold
    from medti.diffusion.sampler_settings import SamplerSettings

    try:
        check_guidance_threshold(threshold)
    except SynthesisError:
        raise typer.BadParameter(f"--guidance-threshold {threshold!r}: give Q from 0 up to (not including) 1, e.g. 0.9") from None
    return SamplerSettings(
        scheduler=scheduler, steps=steps, guidance=guidance, guidance_rescale=rescale,
        guidance_interval=_interval(interval), guidance_threshold=threshold, **kw,
    )


@app.command("generate", context_settings=_EXTRA_ARGS)
def synth_generate_cmd(
    ctx: typer.Context,
    base: Base = "tiny",
    embeddings: Embeddings = None,
    prompt: str = typer.Option(..., "--prompt", help="Prompt; 'a:0.3 AND b:0.7' composes concepts."),
    negative: str = typer.Option(None, "--negative", help="Negative prompt (replaces the unconditional branch)."),
    n: int = typer.Option(8, "--n", help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Image i uses seed + i."),
    steps: Steps = SAMPLER_DEFAULTS.steps,
    guidance: Guidance = SAMPLER_DEFAULTS.guidance,
    guidance_rescale: GuidanceRescale = SAMPLER_DEFAULTS.guidance_rescale,
    guidance_interval: GuidanceInterval = GUIDANCE_INTERVAL,
    guidance_threshold: GuidanceThreshold = SAMPLER_DEFAULTS.guidance_threshold,
    scheduler: Scheduler = SAMPLER_DEFAULTS.scheduler,
    batch: int = typer.Option(SAMPLER_DEFAULTS.batch, "--batch", help="Images denoised together."),
    max_rows: int = typer.Option(SAMPLER_DEFAULTS.max_rows, "--max-rows", help="Most rows (images x branches) per UNet call."),
    device: str = typer.Option(None, "--device", help="cpu | cuda (default: cuda when present)."),
    out: Path = typer.Option(..., "--out", help="Output dir (dataset format + grid.png)."),
    force: ForceDataset = False,
):
    """Generate images of a (composed) prompt: PNGs, a grid, a manifest row per image."""
    from medti.diffusion.synthesis import GenerateConfig, generate_images

    cfg = GenerateConfig(
        base=base, embeddings=_embeddings(embeddings, ctx), prompt=prompt, negative=negative, n=n, seed=seed,
        sampler=_sampler(scheduler, steps, guidance, guidance_rescale, guidance_interval, guidance_threshold,
                         batch=batch, max_rows=max_rows),
        device=device, out=out, overwrite=force,
    )
    typer.echo(run(generate_images, cfg).summary())


@app.command("interpolate", context_settings=_EXTRA_ARGS)
def synth_interpolate_cmd(
    ctx: typer.Context,
    base: Base = "tiny",
    embeddings: Embeddings = None,
    from_: str = typer.Option(..., "--from", help="Concept name or sub-prompt at weight 0."),
    to: str = typer.Option(..., "--to", help="Concept name or sub-prompt at weight 1."),
    weights: str = typer.Option("0,0.25,0.5,0.75,1", "--weights", help="Weights w of 'FROM:(1-w) AND TO:w'."),
    seed: int = typer.Option(0, "--seed", help="First seed; strip k uses seed + k."),
    n_seeds: int = typer.Option(1, "--n-seeds", help="Number of strips."),
    negative: str = typer.Option(None, "--negative"),
    steps: Steps = SAMPLER_DEFAULTS.steps,
    guidance: Guidance = SAMPLER_DEFAULTS.guidance,
    guidance_rescale: GuidanceRescale = SAMPLER_DEFAULTS.guidance_rescale,
    guidance_interval: GuidanceInterval = GUIDANCE_INTERVAL,
    guidance_threshold: GuidanceThreshold = SAMPLER_DEFAULTS.guidance_threshold,
    scheduler: Scheduler = SAMPLER_DEFAULTS.scheduler,
    batch: int = typer.Option(SAMPLER_DEFAULTS.batch, "--batch"),
    device: str = typer.Option(None, "--device"),
    out: Path = typer.Option(..., "--out", help="Output dir: strip-seed<S>.png, strips.png, interpolation.json."),
    force: bool = typer.Option(False, "--force", help="Replace an existing interpolation dir at --out."),
):
    """Interpolate between two concepts with fixed noise per seed: one strip PNG per seed."""
    from medti.diffusion.synthesis import InterpolateConfig, interpolate_concepts

    cfg = InterpolateConfig(
        base=base, embeddings=_embeddings(embeddings, ctx), from_prompt=from_, to_prompt=to,
        weights=_weights(weights), seed=seed, n_seeds=n_seeds, negative=negative,
        sampler=_sampler(scheduler, steps, guidance, guidance_rescale, guidance_interval, guidance_threshold, batch=batch),
        device=device, out=out, overwrite=force,
    )
    typer.echo(run(interpolate_concepts, cfg).summary())


@app.command("inpaint", context_settings=_EXTRA_ARGS)
def synth_inpaint_cmd(
    ctx: typer.Context,
    base: Base = "tiny",
    embeddings: Embeddings = None,
    image: Path = typer.Option(..., "--image", help="Image PNG."),
    mask: Path = typer.Option(..., "--mask", help="Mask PNG: white (> 127) = regenerate."),
    prompt: str = typer.Option(..., "--prompt"),
    negative: str = typer.Option(None, "--negative"),
    strength: float = typer.Option(0.75, "--strength", help="How far to noise the image (0-1]."),
    resample: int = typer.Option(
        2, "--resample", min=1,
        help="RePaint passes per denoising step (regular checkpoints): more blends the region into its surroundings; "
        "1 = plain masked denoising, half the time.",
    ),
    seed: Seed = 0,
    steps: Steps = SAMPLER_DEFAULTS.steps,
    guidance: Guidance = SAMPLER_DEFAULTS.guidance,
    guidance_rescale: GuidanceRescale = SAMPLER_DEFAULTS.guidance_rescale,
    guidance_interval: GuidanceInterval = GUIDANCE_INTERVAL,
    guidance_threshold: GuidanceThreshold = SAMPLER_DEFAULTS.guidance_threshold,
    scheduler: Scheduler = SAMPLER_DEFAULTS.scheduler,
    device: str = typer.Option(None, "--device"),
    out: Path = typer.Option(..., "--out", help="Output PNG."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
):
    """Regenerate the masked region of an image; pixels outside the mask are kept exactly."""
    from medti.diffusion.synthesis import InpaintConfig, inpaint_image

    cfg = InpaintConfig(
        base=base, embeddings=_embeddings(embeddings, ctx), image=image, mask=mask, prompt=prompt,
        negative=negative, strength=strength, resample=resample, seed=seed,
        sampler=_sampler(scheduler, steps, guidance, guidance_rescale, guidance_interval, guidance_threshold),
        device=device, out=out, overwrite=force,
    )
    typer.echo(run(inpaint_image, cfg).summary())


@app.command("dataset")
def synth_dataset_cmd(
    spec: Path = typer.Option(..., "--spec", help="Dataset spec YAML (base, embeddings, sampler, classes); example in the README, 'Synthetic dataset spec'."),
    out: OutDataset = ...,
    force: ForceDataset = False,
    restart: bool = typer.Option(False, "--restart", help="Discard an unfinished run instead of resuming it."),
    device: str = typer.Option(None, "--device"),
):
    """Synthetic dataset from a spec, in the real-data format; a killed run resumes where it stopped."""
    from medti.diffusion.synthesis import SynthesisConfig, synthesize

    cfg = SynthesisConfig(spec=spec, out=out, overwrite=force, restart=restart, device=device)
    typer.echo(run(
        synthesize, cfg,
        interrupted="interrupted; the images made so far are kept: run the same command again to continue "
        "(the result is the same as an uninterrupted run)",
    ).summary())
