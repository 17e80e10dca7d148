"""medti quality: are synthetic images realistic (distribution), not copies of patients (memorization), and
can experts tell them apart (reader-study)?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# the configs' defaults are the options' defaults; these modules import numpy and the error classes only
from medti.quality.distribution import DistributionConfig
from medti.quality.memorization import MemorizationConfig
from medti.quality.reader_study.files import DEFAULT_QUESTION
from medti.quality.reader_study.make import MakeConfig

app = typer.Typer(help="Quality and privacy of synthetic data: distribution metrics, memorisation audit, "
                  "reader study.", no_args_is_help=True)
reader_study = typer.Typer(help="Blinded two-alternative forced-choice reader study: make the set, serve it to "
                           "readers in a browser, score their answers.", no_args_is_help=True)
app.add_typer(reader_study, name="reader-study")

# --- distribution ---------------------------------------------------------------------------------------------

_DIST = DistributionConfig(real=Path(), synthetic=Path(), out=Path())


@app.command("distribution")
def distribution_cmd(
    real: Annotated[Path, typer.Option("--real", help="Real dataset dir with a train and a test split (and a val "
                                       "split when the feature classifier is trained here).")],
    synthetic: Annotated[Path, typer.Option("--synthetic", help="Synthetic dataset dir (every case is used).")],
    out: Annotated[Path, typer.Option("--out", help="Output dir: distribution.json, distribution.md, "
                                      "distribution.png.")],
    features: Annotated[str, typer.Option(
        "--features", help="Feature space: 'classifier' (a ResNet-18 trained on --real's train split into "
        "OUT/feature-classifier, reused when there), a medti classifier dir, a transformers ResNet dir, or a "
        ".safetensors ResNetModel state dict (e.g. RadImageNet ResNet-50 in transformers naming).")] = "classifier",
    seed: Annotated[list[int] | None, typer.Option("--seed", help="Seed of one equal-size subsample; repeat for "
                                                   "several (figures are their mean). Default: 0 1 2.")] = None,
    kid_subsets: Annotated[int, typer.Option("--kid-subsets", help="KID subsets (mean and std over them).")]
    = _DIST.kid_subsets,
    kid_subset_size: Annotated[int, typer.Option("--kid-subset-size", help="Images in a KID subset.")]
    = _DIST.kid_subset_size,
    nearest_k: Annotated[int, typer.Option("--nearest-k", help="k of precision/recall/density/coverage.")]
    = _DIST.nearest_k,
    classifier_steps: Annotated[int, typer.Option("--classifier-steps", help="Training steps of the feature "
                                                  "classifier (--features classifier).")] = _DIST.classifier_steps,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing distribution dir at --out.")] = False,
):
    """Fréchet distance, KID and precision/recall/density/coverage of --synthetic against --real's test split,
    each beside the real-vs-real baseline (--real's train split against the same test split), overall and per
    class; every set subsampled to one size. Proxies for realism: read them beside the baseline."""
    from medti.cli._common import run
    from medti.quality.distribution import distribution

    cfg = DistributionConfig(
        real=real, synthetic=synthetic, out=out, features=features if features == "classifier" else Path(features),
        seeds=tuple(seed) if seed else _DIST.seeds, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
        nearest_k=nearest_k, classifier_steps=classifier_steps, overwrite=force,
    )
    typer.echo(run(distribution, cfg).summary())


# --- memorization ---------------------------------------------------------------------------------------------

_MEM = MemorizationConfig(train=Path(), synthetic=Path())


@app.command("memorization")
def memorization_cmd(
    train: Annotated[Path, typer.Option("--train", help="Real dataset dir the generator learnt from.")],
    synthetic: Annotated[Path, typer.Option("--synthetic", help="Synthetic dataset dir to audit (every case).")],
    out: Annotated[Path | None, typer.Option("--out", help="Output dir: audit.json, nearest.csv, calibration.csv, "
                                             "histogram.png, closest_pairs.png. Default: SYNTHETIC.memorization "
                                             "beside the synthetic set (never inside a dataset dir).")] = None,
    train_split: Annotated[str, typer.Option("--train-split", help="Split of --train trained on ('all': every "
                                             "case).")] = _MEM.train_split,
    embedding: Annotated[list[Path] | None, typer.Option(
        "--embedding", help="An embedding (medti embed train) the synthetic set was made with: the training set is "
        "then exactly the --train cases it learnt from (its split and where, first n by case id). Repeat for each "
        "concept.")] = None,
    heldout: Annotated[Path | None, typer.Option(
        "--heldout", help="Real cases the generator never saw, to calibrate the copy threshold. Default: the val "
        "and test splits of --train, or of the dataset --train is a subset of (a sibling dir).")] = None,
    heldout_split: Annotated[str | None, typer.Option("--heldout-split", help="Split of --heldout (default: every "
                                                      "case).")] = None,
    features: Annotated[Path | None, typer.Option(
        "--features", help="Also search a feature space: a medti classifier dir or a transformers ResNet dir. Images "
        "above its threshold alone are listed for review (see --flag-features).")] = None,
    flag_features: Annotated[bool, typer.Option(
        "--flag-features", help="Count feature-space exceedances as copies too (for a feature space trusted to see "
        "through crops, rotations, warps; a classifier's features also draw typical-looking non-copies).")]
    = _MEM.flag_features,
    margin: Annotated[float, typer.Option("--margin", help="Flag a synthetic image whose distance (1 - similarity) "
                                          "to its nearest training image is below this fraction of the smallest "
                                          "held-out real case's.")] = _MEM.margin,
    tolerance: Annotated[float, typer.Option("--tolerance", help="The largest copy rate (flagged share) that "
                                             "passes.")] = _MEM.tolerance,
    shift: Annotated[int, typer.Option("--shift", help="Pixel search: translations of up to this many pixels each "
                                       "way.")] = _MEM.shift,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Search mirrored training images too.")]
    = _MEM.flip,
    resolution: Annotated[int, typer.Option("--resolution", help="Pixel search: box-average images to about this "
                                            "many pixels first.")] = _MEM.resolution,
    pairs: Annotated[int, typer.Option("--pairs", help="Closest pairs drawn in closest_pairs.png.")] = _MEM.pairs,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing audit dir at --out.")] = False,
):
    """Memorisation audit: the nearest training image of every synthetic image (pixel space: normalised
    correlation, blind to brightness and contrast, trying flips and small shifts; and a feature space with
    --features), a copy threshold calibrated on held-out real cases, the flagged images, a histogram and the
    closest pairs. Exit status 1 when the audit fails (its report is written all the same)."""
    from medti.cli._common import run
    from medti.quality.memorization import audit_memorization

    cfg = MemorizationConfig(
        train=train, synthetic=synthetic, out=out, train_split=None if train_split == "all" else train_split,
        embeddings=tuple(embedding or ()), heldout=heldout, heldout_split=heldout_split, features=features,
        flag_features=flag_features, margin=margin, tolerance=tolerance, shift=shift, flip=flip, resolution=resolution, pairs=pairs,
        overwrite=force,
    )
    res = run(audit_memorization, cfg)
    typer.echo(res.summary())
    if not res.passed:
        raise typer.Exit(1)



# --- reader-study ---------------------------------------------------------------------------------------------

_MAKE = MakeConfig(a=Path(), b=Path(), out=Path())


@reader_study.command("make")
def reader_study_make_cmd(
    a: Annotated[Path, typer.Option("--a", help="Dataset dir of set A (e.g. the diffusion images): the "
                                    "preference reported is for A.")],
    b: Annotated[Path, typer.Option("--b", help="Dataset dir of set B (e.g. the GAN's images, or real ones).")],
    out: Annotated[Path, typer.Option("--out", help="Study dir: OUT/study is served to readers, OUT/key.json "
                                      "(which side is A) stays with you.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Pairs; each set must hold at least this many cases.")]
    = _MAKE.n,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the cases drawn, their order and the sides.")]
    = _MAKE.seed,
    question: Annotated[str, typer.Option("--question", help="What the page asks.")] = DEFAULT_QUESTION,
    split: Annotated[str | None, typer.Option("--split", help="Draw from this split of each set (default: every "
                                              "case).")] = None,
    view: Annotated[str, typer.Option("--view", help="auto | channels (one panel per channel, named as in "
                                      "dataset.json: T2W / ADC / DWI) | grey (one panel) | rgb.")] = _MAKE.view,
    display: Annotated[int, typer.Option("--display", help="Pixels: smaller images are upscaled to about this "
                                         "(long side); larger ones are kept.")] = _MAKE.display,
    resample: Annotated[str, typer.Option("--resample", help="Upscaling: bicubic | nearest (whole-pixel "
                                          "blocks).")] = _MAKE.resample,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing study dir at --out (never one "
                                        "holding readers' answers).")] = False,
):
    """Build a blinded two-alternative forced-choice set: n pairs (one image of A, one of B), A on a random half
    of the left sides, shuffled; neutral file names and no metadata in what readers see; the key kept apart."""
    from medti.cli._common import run
    from medti.quality.reader_study.make import make_study

    cfg = MakeConfig(a=a, b=b, out=out, n=n, seed=seed, question=question, split=split, view=view,
                     display=display, resample=resample, overwrite=force)
    res = run(make_study, cfg)
    typer.echo(res.summary())
    typer.echo(f"  start the page with: medti quality reader-study serve {res.study}")


@reader_study.command("serve")
def reader_study_serve_cmd(
    study: Annotated[Path, typer.Argument(help="The study folder (OUT/study of reader-study make).")],
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one).")] = 8765,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; 127.0.0.1 keeps it to this "
                                      "machine.")] = "127.0.0.1",
):
    """Serve the study page on a local web server until Ctrl-C. Readers open it with ?reader=NAME (or type a
    name), answer with a click or 1/2 (left/right arrows), go back with Backspace; every answer is saved to
    STUDY/answers/NAME.json at once, and a reopened page continues at the first unanswered pair."""
    from medti.cli._common import fail
    from medti.quality import QualityError
    from medti.quality.reader_study.serve import ServeConfig, serve_study

    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: listening on {host}: anyone who can reach it can open the page and answer", err=True)
    try:
        res = serve_study(ServeConfig(study=study, host=host, port=port), announce=typer.echo)
    except QualityError as e:
        fail(str(e))
    typer.echo(res.summary())


@reader_study.command("score")
def reader_study_score_cmd(
    answers: Annotated[list[Path], typer.Option("--answers", help="A reader's answers file (STUDY/answers/NAME."
                                                "json), or a folder of them; repeat for several readers.")],
    key: Annotated[Path, typer.Option("--key", help="The study's key.json.")],
    out: Annotated[Path, typer.Option("--out", help="Report dir: report.json, report.md.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing report dir at --out.")] = False,
):
    """How often each reader (and all together) chose A's image: the preference, its exact Clopper-Pearson 95 %
    interval, and the two-sided exact binomial test against 0.5. Unanswered pairs are listed, not counted."""
    from medti.cli._common import run
    from medti.quality.reader_study.score import ScoreConfig, score_study

    typer.echo(run(score_study, ScoreConfig(answers=tuple(answers), key=key, out=out, overwrite=force)).summary())
