"""medti command line: one sub-command per step; parse, build the config, call the library, print.

Heavy imports (torch, diffusers, great_expectations, dvc) happen inside the commands so that
``medti --help`` is instant.  No logic lives here.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="medti: textual inversion for medical imaging. Learn concept embeddings for a frozen "
    "Stable Diffusion from ~100 cases, synthesise, and measure whether synthetic data helps.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: phantoms, importers, validation, versions.", no_args_is_help=True)
phantom_app = typer.Typer(help="Generate embedded phantom datasets.", no_args_is_help=True)
import_app = typer.Typer(help="Import real datasets into the medti dataset format.", no_args_is_help=True)
base_app = typer.Typer(help="Base models: build/train the tiny base, fine-tune a checkpoint.", no_args_is_help=True)
embed_app = typer.Typer(help="Concept embeddings: textual inversion, file formats.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(base_app, name="base")
app.add_typer(embed_app, name="embed")
synth_app = typer.Typer(
    help="Synthesis: composable prompts, interpolation, inpainting, synthetic datasets.", no_args_is_help=True
)
app.add_typer(synth_app, name="synth")
data_app.add_typer(phantom_app, name="phantom")
data_app.add_typer(import_app, name="import")


def _fail(msg: str, code: int = 1) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


_INTERRUPTED = "interrupted; nothing half-written was left (outputs are renamed into place only when complete)"


def _run(fn, cfg, interrupted: str = _INTERRUPTED):
    """Call a library step; turn a user-facing error into a clean message and exit code, and Ctrl-C
    into one line saying what was kept and how to continue (exit code 130, as shells report SIGINT)."""
    # these modules import nothing heavy at their top level
    from medti.diffusion.base import BaseModelError
    from medti.diffusion.embeddings import EmbeddingError
    from medti.diffusion.textual_inversion import TrainingError
    from medti.io import OutputError  # DatasetError and SynthesisError are OutputErrors too

    user_errors = (OutputError, BaseModelError, EmbeddingError, TrainingError, FileNotFoundError, FileExistsError)
    try:
        return fn(cfg)
    except user_errors as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail(interrupted, code=130)


# ----------------------------------------------------------------------------- data phantom
def _split_fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        _fail(f"--splits {text!r}: expected three numbers like 0.34,0.33,0.33")
    if len(parts) != 3:
        _fail(f"--splits {text!r}: expected three numbers like 0.34,0.33,0.33")
    return parts  # type: ignore[return-value]


def _phantom(kind: str, out, n, size, seed, positive_fraction, unlabeled, splits, force):
    from medti.data.phantoms import PhantomConfig, generate_phantoms

    cfg = PhantomConfig(
        kind=kind,
        out=out,
        n=n,
        size=size,
        seed=seed,
        positive_fraction=positive_fraction,
        unlabeled=unlabeled,
        split_fractions=_split_fractions(splits),
        overwrite=force,
    )
    res = _run(generate_phantoms, cfg)
    typer.echo(res.summary())


@phantom_app.command("prostate")
def phantom_prostate(
    out: Path = typer.Option(..., "--out", help="Output dataset dir."),
    n: int = typer.Option(600, "--n", help="Number of cases."),
    size: int = typer.Option(64, "--size", help="Image size in pixels (square)."),
    seed: int = typer.Option(0, "--seed"),
    positive_fraction: float = typer.Option(0.5, "--positive-fraction", help="Fraction with csPCa."),
    unlabeled: bool = typer.Option(False, "--unlabeled", help="Captioned corpus without diagnosis."),
    splits: str = typer.Option("0.34,0.33,0.33", "--splits", help="train,val,test patient fractions."),
    force: bool = typer.Option(False, "--force", help="Replace an existing dataset dir at --out (never a dir of anything else)."),
):
    """Prostate MRI phantoms: R=T2W, G=ADC, B=high-b DWI; csPCa lesions with masks."""
    _phantom("prostate", out, n, size, seed, positive_fraction, unlabeled, splits, force)


@phantom_app.command("cxr")
def phantom_cxr(
    out: Path = typer.Option(..., "--out", help="Output dataset dir."),
    n: int = typer.Option(600, "--n", help="Number of cases."),
    size: int = typer.Option(64, "--size", help="Image size in pixels (square)."),
    seed: int = typer.Option(0, "--seed"),
    positive_fraction: float = typer.Option(
        0.5, "--positive-fraction", help="Prevalence of each finding (independent)."
    ),
    unlabeled: bool = typer.Option(False, "--unlabeled", help="Captioned corpus without diagnosis."),
    splits: str = typer.Option("0.34,0.33,0.33", "--splits", help="train,val,test patient fractions."),
    force: bool = typer.Option(False, "--force", help="Replace an existing dataset dir at --out (never a dir of anything else)."),
):
    """Frontal chest x-ray phantoms: pleural_effusion, pneumonia, cardiomegaly (multi-label)."""
    _phantom("cxr", out, n, size, seed, positive_fraction, unlabeled, splits, force)


# ----------------------------------------------------------------------------- data import
@import_app.command("picai")
def import_picai_cmd(
    images: Path = typer.Option(..., "--images", help="PI-CAI images root (<patient>/<patient>_<study>_t2w.mha ...)."),
    labels: Path = typer.Option(..., "--labels", help="PI-CAI labels root (csPCa_lesion_delineations, gland masks)."),
    out: Path = typer.Option(..., "--out", help="Output dataset dir."),
    size: int = typer.Option(512, "--size", help="Output image size (pixels)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the patient-level split."),
    force: bool = typer.Option(False, "--force", help="Replace an existing dataset dir at --out (never a dir of anything else)."),
):
    """Import PI-CAI biparametric MRI: T2W/ADC/HBV as RGB, one slice per study."""
    from medti.data.importers import PicaiImportConfig, import_picai

    res = _run(import_picai, PicaiImportConfig(images=images, labels=labels, out=out, size=size, seed=seed, overwrite=force))
    typer.echo(res.summary())


@import_app.command("chexpert")
def import_chexpert_cmd(
    csv: Path = typer.Option(..., "--csv", help="CheXpert CSV (train.csv / valid.csv)."),
    root: Path = typer.Option(..., "--root", help="Dir the CSV's Path column is relative to."),
    out: Path = typer.Option(..., "--out", help="Output dataset dir."),
    uncertain: str = typer.Option("ignore", "--uncertain", help="-1 labels: ignore (drop case) | positive | negative."),
    size: int = typer.Option(512, "--size", help="Output image size (pixels)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the patient-level split."),
    force: bool = typer.Option(False, "--force", help="Replace an existing dataset dir at --out (never a dir of anything else)."),
):
    """Import CheXpert frontal views with pleural_effusion / pneumonia / cardiomegaly labels."""
    from medti.data.importers import ChexpertImportConfig, import_chexpert

    res = _run(
        import_chexpert,
        ChexpertImportConfig(csv=csv, root=root, out=out, uncertain=uncertain, size=size, seed=seed, overwrite=force),
    )
    typer.echo(res.summary())


# ----------------------------------------------------------------------------- data validate / snapshot
@data_app.command("validate")
def validate_cmd(
    dataset: Path = typer.Argument(..., help="Dataset dir to check."),
    report: Path = typer.Option(None, "--report", help="Where to write the JSON summary and GX Data Docs (default DATASET/validation)."),
    min_per_class: int = typer.Option(1, "--min-per-class", help="Minimum train cases per class of every finding."),
):
    """Great Expectations checks over the manifest and every image; non-zero exit on failure."""
    from medti.data.validate import ValidateConfig, validate_dataset

    res = _run(validate_dataset, ValidateConfig(dataset=dataset, report=report, min_per_class=min_per_class))
    typer.echo(res.summary())
    if not res.ok:
        raise typer.Exit(1)


@data_app.command("snapshot")
def snapshot_cmd(
    dataset: Path = typer.Argument(..., help="Dataset dir inside a DVC repo (e.g. data/)."),
    push: bool = typer.Option(True, "--push/--no-push", help="Push to the default DVC remote."),
    min_per_class: int = typer.Option(1, "--min-per-class"),
):
    """Validate, `dvc add`, `dvc push`; print the dataset version (md5 in the .dvc file)."""
    from medti.data.versions import SnapshotConfig, snapshot_dataset

    res = _run(snapshot_dataset, SnapshotConfig(dataset=dataset, push=push, min_per_class=min_per_class))
    typer.echo(res.summary())


# ----------------------------------------------------------------------------- base
@base_app.command("train")
def base_train_cmd(
    data: list[Path] = typer.Option(..., "--data", help="Captioned dataset dir(s) (caption column)."),
    out: Path = typer.Option(..., "--out", help="Output diffusers pipeline dir."),
    base: str = typer.Option(None, "--base", help="Fine-tune this base (dir, checkpoint, hub id); default: train the tiny architecture from scratch."),
    steps: int = typer.Option(None, "--steps", help="UNet steps."),
    vae_steps: int = typer.Option(None, "--vae-steps", help="VAE steps (from scratch only)."),
    batch: int = typer.Option(None, "--batch"),
    lr: float = typer.Option(1e-3, "--lr"),
    train_text_encoder: bool = typer.Option(False, "--train-text-encoder", help="Also train the text encoder."),
    seed: int = typer.Option(0, "--seed"),
    force: bool = typer.Option(False, "--force", help="Replace an existing pipeline dir at --out (e.g. fine-tune in place)."),
):
    """Train the VAE (tiny only) and the UNet on image+caption pairs; writes a diffusers dir."""
    from medti.diffusion.base_train import BaseTrainConfig, train_base

    cfg = BaseTrainConfig(
        data=data, out=out, base=base, steps=steps, vae_steps=vae_steps, batch=batch, lr=lr,
        train_text_encoder=train_text_encoder, seed=seed, overwrite=force,
    )
    typer.echo(_run(train_base, cfg).summary())


@base_app.command("build")
def base_build_cmd(name: str = typer.Argument("tiny", help="Embedded base: tiny | micro.")):
    """Build (or find in the cache) an embedded base and print where it is."""
    from medti.diffusion.base import ensure_embedded

    typer.echo(str(_run(ensure_embedded, name)))


# ----------------------------------------------------------------------------- embed
@embed_app.command("train")
def embed_train_cmd(
    data: Path = typer.Option(..., "--data", help="Dataset dir."),
    concept: str = typer.Option(..., "--concept", help="Concept name; the token is <NAME>."),
    where: str = typer.Option("", "--where", help="Label filter, e.g. 'csPCa=1'."),
    base: str = typer.Option("tiny", "--base", help="tiny | diffusers dir | .ckpt/.safetensors | hub id."),
    split: str = typer.Option("train", "--split"),
    vectors: int = typer.Option(64, "--vectors", help="Vectors per token (1-128)."),
    init_text: str = typer.Option("mri", "--init-text", help="Text whose token embeddings initialise the vectors."),
    steps: int = typer.Option(
        6000, "--steps",
        help="Optimiser steps; 6000 at batch 8 is the reference work's 50k-100k images seen (phantoms: 1500 left the "
        "lesion embedding unreliable, see docs/results.md).",
    ),
    lr: float = typer.Option(0.005, "--lr"),
    batch: int = typer.Option(8, "--batch"),
    max_images: int = typer.Option(100, "--max-images", help="Use at most this many cases."),
    out: Path = typer.Option(None, "--out", help="Output .safetensors (default embeddings/NAME.safetensors)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
    restart: bool = typer.Option(
        False, "--restart", help="Discard an unfinished run's checkpoints and start again (never done without it)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing embedding file at --out."),
    checkpoint_every: int = typer.Option(250, "--checkpoint-every"),
    sample_every: int = typer.Option(0, "--sample-every", help="Also write a sample grid every N steps."),
    precision: str = typer.Option("auto", "--precision", help="auto | no | bf16 | fp16 (GPU only)."),
    gradient_checkpointing: bool = typer.Option(
        False, "--gradient-checkpointing",
        help="Recompute the UNet's activations in backward: less memory (SD 2.x at 512 px on a small GPU), slower steps.",
    ),
    max_norm: str = typer.Option(
        None, "--max-norm",
        help="Cap each vector's L2 norm after every step: a number, or 'vocab' = the longest of the base's own token "
        "embeddings (keeps the vectors where real tokens live; see docs/results.md). Default: uncapped.",
    ),
    seed: int = typer.Option(0, "--seed"),
    min_per_class: int = typer.Option(
        1, "--min-per-class",
        help="The data must pass validation with this many train cases per class of every finding (as in data "
        "validate); 0 accepts a dataset whose other findings have no positive case.",
    ),
):
    """Textual inversion: learn VECTORS token vectors for one concept against a frozen base."""
    from medti.diffusion.textual_inversion import EmbeddingConfig, train_embedding

    cfg = EmbeddingConfig(
        data=data, concept=concept, where=where, base=base, split=split, vectors=vectors,
        init_text=init_text, steps=steps, lr=lr, batch=batch, max_images=max_images, out=out,
        resume=resume, restart=restart, overwrite=force, checkpoint_every=checkpoint_every, sample_every=sample_every,
        precision=precision, gradient_checkpointing=gradient_checkpointing, seed=seed, max_norm=max_norm,
        min_per_class=min_per_class,
    )
    typer.echo(_run(
        train_embedding, cfg,
        interrupted=f"interrupted; the checkpoints written so far (one every {checkpoint_every} steps) are kept: run the "
        "same command with --resume to continue from the last one",
    ).summary())


@embed_app.command("convert")
def embed_convert_cmd(
    src: Path = typer.Argument(..., help="Input embedding (.safetensors or A1111 .pt)."),
    dst: Path = typer.Argument(..., help="Output embedding (.safetensors or .pt)."),
    token: str = typer.Option(None, "--token", help="Token name (default: from the input file name)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output file."),
):
    """Convert between medti .safetensors and AUTOMATIC1111 .pt."""
    from medti.diffusion.embeddings import convert_embedding

    out = _run(lambda c: convert_embedding(*c), (src, dst, token, force))
    typer.echo(f"wrote {out}")


@embed_app.command("inspect")
def embed_inspect_cmd(file: Path = typer.Argument(..., help="Embedding file.")):
    """Print concept, vectors, dim, norm stats and base model of an embedding file."""
    import json

    from medti.diffusion.embeddings import inspect_embedding

    info = _run(inspect_embedding, file)
    info.pop("metadata", None)
    typer.echo(json.dumps(info, indent=2))


# ----------------------------------------------------------------------------- synth
_EXTRA_ARGS = {"allow_extra_args": True}
_EMB_HELP = "Embedding file(s) (.safetensors / A1111 .pt); repeat the flag or list several after it."


def _synth_embeddings(embeddings: list[Path] | None, ctx: typer.Context) -> list[Path]:
    """--embeddings A B C: click takes one value per flag, the rest arrive as extra arguments."""
    extra = []
    for a in ctx.args:
        if not a.endswith((".safetensors", ".pt", ".bin")):
            _fail(f"unexpected argument {a!r} (embedding files end in .safetensors, .pt or .bin)")
        extra.append(Path(a))
    return [*(embeddings or []), *extra]


def _weights(text: str) -> list[float]:
    out = []
    for part in text.split(","):
        try:
            out.append(float(part))
        except ValueError:
            _fail(f"--weights {text!r}: {part.strip()!r} is not a number (write e.g. 0,0.25,0.5,0.75,1)")
    return out


_GUIDANCE_RESCALE = typer.Option(
    0.0, "--guidance-rescale", min=0.0, max=1.0,
    help="Guidance rescale phi (Lin et al. 2023; diffusers' guidance_rescale): pulls the guided prediction's "
    "spread back to the unguided one's, against over-exposure at high guidance or many AND terms; 0.7 is the "
    "paper's choice for v-prediction models, 0 = off.",
)


def _interval(text: str) -> tuple[float, float]:
    from medti.diffusion.guided import SynthesisError, parse_guidance_interval

    try:
        return parse_guidance_interval(text)
    except SynthesisError as e:
        raise typer.BadParameter(str(e)) from None


_GUIDANCE_INTERVAL = typer.Option(
    "0,1", "--guidance-interval",
    help="START,STOP: apply --guidance only on that fraction of the denoising steps and guidance 1 elsewhere "
    "(Kynkaenniemi et al. 2024; diffusers' guiders' start/stop). Skipping the first, noisiest steps (e.g. 0.3,1) "
    "tames the haze and colour casts of strong guidance; 0,1 = every step.",
)


_GUIDANCE_THRESHOLD = typer.Option(
    0.0, "--guidance-threshold",
    help="Q in [0, 1): apply each sub-prompt's guidance term only where it is among the strongest (1-Q) of the "
    "latent positions, per image and channel (SEGA's edit threshold, Brack et al. 2023; 0.9 is theirs). Keeps an over-guided concept "
    "from spreading over the whole image at high --guidance, and weakens guidance overall; 0 = off.",
)


def _sampler(scheduler: str, steps: int, guidance: float, rescale: float, interval: str, threshold: float, **kw):
    from medti.diffusion.guided import SynthesisError, check_guidance_threshold
    from medti.diffusion.synthesis import SamplerSettings

    try:
        check_guidance_threshold(threshold)
    except SynthesisError:
        raise typer.BadParameter(f"--guidance-threshold {threshold!r}: give Q from 0 up to (not including) 1, e.g. 0.9") from None
    return SamplerSettings(
        scheduler=scheduler, steps=steps, guidance=guidance, guidance_rescale=rescale,
        guidance_interval=_interval(interval), guidance_threshold=threshold, **kw,
    )


@synth_app.command("generate", context_settings=_EXTRA_ARGS)
def synth_generate_cmd(
    ctx: typer.Context,
    base: str = typer.Option("tiny", "--base", help="tiny | diffusers dir | .ckpt/.safetensors | hub id."),
    embeddings: list[Path] = typer.Option(None, "--embeddings", help=_EMB_HELP),
    prompt: str = typer.Option(..., "--prompt", help="Prompt; 'a:0.3 AND b:0.7' composes concepts."),
    negative: str = typer.Option(None, "--negative", help="Negative prompt (replaces the unconditional branch)."),
    n: int = typer.Option(8, "--n", help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Image i uses seed + i."),
    steps: int = typer.Option(30, "--steps"),
    guidance: float = typer.Option(7.5, "--guidance"),
    guidance_rescale: float = _GUIDANCE_RESCALE,
    guidance_interval: str = _GUIDANCE_INTERVAL,
    guidance_threshold: float = _GUIDANCE_THRESHOLD,
    scheduler: str = typer.Option("dpmpp", "--scheduler", help="ddim | euler | euler_a | dpmpp."),
    batch: int = typer.Option(8, "--batch", help="Images denoised together."),
    max_rows: int = typer.Option(64, "--max-rows", help="Most rows (images x branches) per UNet call."),
    device: str = typer.Option(None, "--device", help="cpu | cuda (default: cuda when present)."),
    out: Path = typer.Option(..., "--out", help="Output dir (dataset format + grid.png)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing dataset dir at --out (never a dir of anything else)."),
):
    """Generate images of a (composed) prompt: PNGs, a grid, a manifest row per image."""
    from medti.diffusion.synthesis import GenerateConfig, generate_images

    cfg = GenerateConfig(
        base=base, embeddings=_synth_embeddings(embeddings, ctx), prompt=prompt, negative=negative, n=n, seed=seed,
        sampler=_sampler(scheduler, steps, guidance, guidance_rescale, guidance_interval, guidance_threshold,
                         batch=batch, max_rows=max_rows),
        device=device, out=out, overwrite=force,
    )
    typer.echo(_run(generate_images, cfg).summary())


@synth_app.command("interpolate", context_settings=_EXTRA_ARGS)
def synth_interpolate_cmd(
    ctx: typer.Context,
    base: str = typer.Option("tiny", "--base", help="tiny | diffusers dir | .ckpt/.safetensors | hub id."),
    embeddings: list[Path] = typer.Option(None, "--embeddings", help=_EMB_HELP),
    from_: str = typer.Option(..., "--from", help="Concept name or sub-prompt at weight 0."),
    to: str = typer.Option(..., "--to", help="Concept name or sub-prompt at weight 1."),
    weights: str = typer.Option("0,0.25,0.5,0.75,1", "--weights", help="Weights w of 'FROM:(1-w) AND TO:w'."),
    seed: int = typer.Option(0, "--seed", help="First seed; strip k uses seed + k."),
    n_seeds: int = typer.Option(1, "--n-seeds", help="Number of strips."),
    negative: str = typer.Option(None, "--negative"),
    steps: int = typer.Option(30, "--steps"),
    guidance: float = typer.Option(7.5, "--guidance"),
    guidance_rescale: float = _GUIDANCE_RESCALE,
    guidance_interval: str = _GUIDANCE_INTERVAL,
    guidance_threshold: float = _GUIDANCE_THRESHOLD,
    scheduler: str = typer.Option("dpmpp", "--scheduler", help="ddim | euler | euler_a | dpmpp."),
    batch: int = typer.Option(8, "--batch"),
    device: str = typer.Option(None, "--device"),
    out: Path = typer.Option(..., "--out", help="Output dir: strip-seed<S>.png, strips.png, interpolation.json."),
    force: bool = typer.Option(False, "--force", help="Replace an existing interpolation dir at --out."),
):
    """Interpolate between two concepts with fixed noise per seed: one strip PNG per seed."""
    from medti.diffusion.synthesis import InterpolateConfig, interpolate_concepts

    cfg = InterpolateConfig(
        base=base, embeddings=_synth_embeddings(embeddings, ctx), from_prompt=from_, to_prompt=to,
        weights=_weights(weights), seed=seed, n_seeds=n_seeds, negative=negative,
        sampler=_sampler(scheduler, steps, guidance, guidance_rescale, guidance_interval, guidance_threshold, batch=batch),
        device=device, out=out, overwrite=force,
    )
    typer.echo(_run(interpolate_concepts, cfg).summary())


@synth_app.command("inpaint", context_settings=_EXTRA_ARGS)
def synth_inpaint_cmd(
    ctx: typer.Context,
    base: str = typer.Option("tiny", "--base", help="tiny | diffusers dir | .ckpt/.safetensors | hub id."),
    embeddings: list[Path] = typer.Option(None, "--embeddings", help=_EMB_HELP),
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
    seed: int = typer.Option(0, "--seed"),
    steps: int = typer.Option(30, "--steps"),
    guidance: float = typer.Option(7.5, "--guidance"),
    guidance_rescale: float = _GUIDANCE_RESCALE,
    guidance_interval: str = _GUIDANCE_INTERVAL,
    guidance_threshold: float = _GUIDANCE_THRESHOLD,
    scheduler: str = typer.Option("dpmpp", "--scheduler", help="ddim | euler | euler_a | dpmpp."),
    device: str = typer.Option(None, "--device"),
    out: Path = typer.Option(..., "--out", help="Output PNG."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
):
    """Regenerate the masked region of an image; pixels outside the mask are kept exactly."""
    from medti.diffusion.synthesis import InpaintConfig, inpaint_image

    cfg = InpaintConfig(
        base=base, embeddings=_synth_embeddings(embeddings, ctx), image=image, mask=mask, prompt=prompt,
        negative=negative, strength=strength, resample=resample, seed=seed,
        sampler=_sampler(scheduler, steps, guidance, guidance_rescale, guidance_interval, guidance_threshold),
        device=device, out=out, overwrite=force,
    )
    typer.echo(_run(inpaint_image, cfg).summary())


@synth_app.command("dataset")
def synth_dataset_cmd(
    spec: Path = typer.Option(..., "--spec", help="Dataset spec YAML (base, embeddings, sampler, classes); example in the README, 'Synthetic dataset spec'."),
    out: Path = typer.Option(..., "--out", help="Output dataset dir."),
    force: bool = typer.Option(False, "--force", help="Replace an existing dataset dir at --out (never a dir of anything else)."),
    restart: bool = typer.Option(False, "--restart", help="Discard an unfinished run instead of resuming it."),
    device: str = typer.Option(None, "--device"),
):
    """Synthetic dataset from a spec, in the real-data format; a killed run resumes where it stopped."""
    from medti.diffusion.synthesis import SynthesisConfig, synthesize

    cfg = SynthesisConfig(spec=spec, out=out, overwrite=force, restart=restart, device=device)
    typer.echo(_run(
        synthesize, cfg,
        interrupted="interrupted; the images made so far are kept: run the same command again to continue "
        "(the result is the same as an uninterrupted run)",
    ).summary())


# ----------------------------------------------------------------------------- demo
@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Where the demo writes its outputs."),
):
    """Run the main job on the embedded default (phantoms, validation, versions, ...)."""
    from medti.demo import DemoConfig, run_demo

    res = _run(
        run_demo, DemoConfig(out=out),
        interrupted="interrupted; run the demo again to continue (textual inversion resumes from its last checkpoint)",
    )
    typer.echo(res.summary())


if __name__ == "__main__":  # pragma: no cover
    app()
