"""``medti data``: phantoms, importers, validation, dataset versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medti.cli._common import ForceDataset, OutDataset, Seed, fail, run

app = typer.Typer(help="Datasets: phantoms, importers, validation, versions.", no_args_is_help=True)
phantom_app = typer.Typer(help="Generate embedded phantom datasets.", no_args_is_help=True)
import_app = typer.Typer(help="Import real datasets into the medti dataset format.", no_args_is_help=True)
app.add_typer(phantom_app, name="phantom")
app.add_typer(import_app, name="import")


# ----------------------------------------------------------------------------- data phantom
# the options both phantom kinds share (--positive-fraction differs in its help)
Cases = Annotated[int, typer.Option("--n", help="Number of cases.")]
PhantomSize = Annotated[int, typer.Option("--size", help="Image size in pixels (square).")]
Unlabeled = Annotated[bool, typer.Option("--unlabeled", help="Captioned corpus without diagnosis.")]
Splits = Annotated[str, typer.Option("--splits", help="train,val,test patient fractions.")]


def _split_fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        fail(f"--splits {text!r}: expected three numbers like 0.34,0.33,0.33")
    if len(parts) != 3:
        fail(f"--splits {text!r}: expected three numbers like 0.34,0.33,0.33")
    return parts  # type: ignore[return-value]


def _range(option: str, text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        fail(f"{option} {text!r}: expected two numbers LOW,HIGH like 0.175,0.25")
    return lo, hi


def _phantom(kind: str, out, n, size, seed, positive_fraction, unlabeled, splits, force, **conspicuity):
    from medti.data.phantoms import PhantomConfig, generate_phantoms

    cfg = PhantomConfig(
        **conspicuity,
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
    res = run(generate_phantoms, cfg)
    typer.echo(res.summary())


@phantom_app.command("prostate")
def phantom_prostate(
    out: OutDataset,
    n: Cases = 600,
    size: PhantomSize = 64,
    seed: Seed = 0,
    positive_fraction: float = typer.Option(0.5, "--positive-fraction", help="Fraction with csPCa."),
    unlabeled: Unlabeled = False,
    splits: Splits = "0.34,0.33,0.33",
    force: ForceDataset = False,
    preset: Annotated[str, typer.Option(
        "--preset", help="Lesion conspicuity: default (the synthesis checks' phantoms) | subtle (contrast x0.25, size "
        "x0.6: the augmentation experiment's, where 200 cases leave a classifier room to improve).")] = "default",
    lesion_contrast: Annotated[str | None, typer.Option(
        "--lesion-contrast", help="LOW,HIGH: range of the lesion's opacity over the tissue, within (0, 1] "
        "(default preset: 0.7,1).")] = None,
    lesion_size: Annotated[str | None, typer.Option(
        "--lesion-size", help="LOW,HIGH: range of the lesion semi-axis, fraction of the half field of view "
        "(default preset: 0.09,0.18).")] = None,
    mimic_strength: Annotated[float | None, typer.Option(
        "--mimic-strength", help="Opacity of the benign mimics (prostatitis, TZ nodules), 0 = none, 1 = default.")]
    = None,
):
    """Prostate MRI phantoms: R=T2W, G=ADC, B=high-b DWI; csPCa lesions with masks. Lesion conspicuity is
    recorded in dataset.json."""
    _phantom("prostate", out, n, size, seed, positive_fraction, unlabeled, splits, force, preset=preset,
             lesion_contrast=_range("--lesion-contrast", lesion_contrast),
             lesion_size=_range("--lesion-size", lesion_size), mimic_strength=mimic_strength)


@phantom_app.command("cxr")
def phantom_cxr(
    out: OutDataset,
    n: Cases = 600,
    size: PhantomSize = 64,
    seed: Seed = 0,
    positive_fraction: float = typer.Option(
        0.5, "--positive-fraction", help="Prevalence of each finding (independent)."
    ),
    unlabeled: Unlabeled = False,
    splits: Splits = "0.34,0.33,0.33",
    force: ForceDataset = False,
):
    """Frontal chest x-ray phantoms: pleural_effusion, pneumonia, cardiomegaly (multi-label)."""
    _phantom("cxr", out, n, size, seed, positive_fraction, unlabeled, splits, force)


# ----------------------------------------------------------------------------- data import
ImportSize = Annotated[int, typer.Option("--size", help="Output image size (pixels).")]
SplitSeed = Annotated[int, typer.Option("--seed", help="Seed of the patient-level split.")]


@import_app.command("picai")
def import_picai_cmd(
    images: Path = typer.Option(..., "--images", help="PI-CAI images root (<patient>/<patient>_<study>_t2w.mha ...)."),
    labels: Path = typer.Option(..., "--labels", help="PI-CAI labels root (csPCa_lesion_delineations, gland masks)."),
    out: OutDataset = ...,
    size: ImportSize = 512,
    seed: SplitSeed = 0,
    force: ForceDataset = False,
):
    """Import PI-CAI biparametric MRI: T2W/ADC/HBV as RGB, one slice per study."""
    from medti.data.importers import PicaiImportConfig, import_picai

    res = run(import_picai, PicaiImportConfig(images=images, labels=labels, out=out, size=size, seed=seed, overwrite=force))
    typer.echo(res.summary())


@import_app.command("chexpert")
def import_chexpert_cmd(
    csv: Path = typer.Option(..., "--csv", help="CheXpert CSV (train.csv / valid.csv)."),
    root: Path = typer.Option(..., "--root", help="Dir the CSV's Path column is relative to."),
    out: OutDataset = ...,
    uncertain: str = typer.Option("ignore", "--uncertain", help="-1 labels: ignore (drop case) | positive | negative."),
    size: ImportSize = 512,
    seed: SplitSeed = 0,
    force: ForceDataset = False,
):
    """Import CheXpert frontal views with pleural_effusion / pneumonia / cardiomegaly labels."""
    from medti.data.importers import ChexpertImportConfig, import_chexpert

    res = run(
        import_chexpert,
        ChexpertImportConfig(csv=csv, root=root, out=out, uncertain=uncertain, size=size, seed=seed, overwrite=force),
    )
    typer.echo(res.summary())


# ----------------------------------------------------------------------------- data validate / snapshot
@app.command("validate")
def validate_cmd(
    dataset: Path = typer.Argument(..., help="Dataset dir to check."),
    report: Path = typer.Option(None, "--report", help="Where to write the JSON summary and GX Data Docs (default DATASET/validation)."),
    min_per_class: int = typer.Option(1, "--min-per-class", help="Minimum train cases per class of every finding."),
):
    """Great Expectations checks over the manifest and every image; non-zero exit on failure."""
    from medti.data.validate import ValidateConfig, validate_dataset

    res = run(validate_dataset, ValidateConfig(dataset=dataset, report=report, min_per_class=min_per_class))
    typer.echo(res.summary())
    if not res.ok:
        raise typer.Exit(1)


@app.command("snapshot")
def snapshot_cmd(
    dataset: Path = typer.Argument(..., help="Dataset dir inside a DVC repo (e.g. data/)."),
    push: bool = typer.Option(True, "--push/--no-push", help="Push to the default DVC remote."),
    min_per_class: int = typer.Option(1, "--min-per-class"),
):
    """Validate, `dvc add`, `dvc push`; print the dataset version (md5 in the .dvc file)."""
    from medti.data.versions import SnapshotConfig, snapshot_dataset

    res = run(snapshot_dataset, SnapshotConfig(dataset=dataset, push=push, min_per_class=min_per_class))
    typer.echo(res.summary())


@app.command("add")
def add_cmd(
    to: Path = typer.Option(..., "--to", help="The dataset dir that grows."),
    source: Path = typer.Option(..., "--from", help="A dataset dir of new cases (same modality, channels, findings, size)."),
    min_per_class: int = typer.Option(0, "--min-per-class", help="Validation of the new cases alone."),
):
    """Add new cases to a dataset (validated, new case ids, patients keep their split; atomic). Snapshot it after."""
    from medti.data.add import AddConfig, add_cases

    typer.echo(run(add_cases, AddConfig(to=to, source=source, min_per_class=min_per_class)).summary())
