"""``distribution(DistributionConfig) -> DistributionResult``: how close the synthetic images lie to real ones in a
feature space, each figure beside what two real samples give.

The recipe, in order:

1. check every input before any work: the config's numbers; the output dir; the real dir's reference split
   (``test``) and baseline split (``train``); that real and synthetic images are of one kind
   (:func:`~medti.quality.images.check_comparable`); that the sets are large enough for KID's subset size and PRDC's
   k; the feature network and the images it was made for;
2. the feature space (:mod:`medti.quality.features`): the user's network, or by default a ResNet-18 trained here on
   the real dir's train split (val split for the checkpoint) into ``OUT/feature-classifier`` and reused from there;
3. features of every image, once; the same features serve all figures;
4. per seed, every set subsampled (seeded) to one size ``n``, the smallest set's, because FD, KID and PRDC all
   move with set size; then against the real reference sample:

   - synthetic sample   -> the figures asked for,
   - real train sample  -> the real-vs-real baseline (what a second real sample scores; absolute values in a
     non-Inception space mean nothing alone),

   Fréchet distance (torchmetrics' ``FrechetInceptionDistance``), KID mean and std over subsets (torchmetrics'
   ``KernelInceptionDistance``), precision / recall (Kynkäänniemi et al. 2019) and density / coverage (Naeem et al.
   2020) with ``prdc``; the precomputed features reach torchmetrics through a pass-through feature module;
5. the same per class of every finding both sets label (csPCa=1 synthetic vs csPCa=1 real, ...);
6. ``distribution.json``, ``distribution.md`` (metric | synthetic vs real | real vs real) and ``distribution.png``
   (a 2-D PCA of the features plus the table) written to OUT atomically.

Every figure is a proxy for realism in the chosen feature space and says so in its outputs.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medti.quality import QualityError

DISTRIBUTION_JSON = "distribution.json"
DISTRIBUTION_MD = "distribution.md"
DISTRIBUTION_PNG = "distribution.png"
FEATURE_CLASSIFIER = "feature-classifier"
#: what an interrupted run leaves in OUT (the feature classifier, or its checkpoints): continued without ``overwrite``
_LEFTOVERS = {FEATURE_CLASSIFIER, f".{FEATURE_CLASSIFIER}.checkpoints", f".{FEATURE_CLASSIFIER}.lock"}
METRICS = ("fd", "kid", "kid_std", "precision", "recall", "density", "coverage")
LABELS = {"fd": "Fréchet distance (lower = closer)", "kid": "KID (lower = closer)", "kid_std": "KID std over subsets",
          "precision": "precision (higher = more realistic)", "recall": "recall (higher = more diverse)",
          "density": "density", "coverage": "coverage (higher = more of real covered)"}
PROXY_NOTE = ("These figures are proxies for realism measured in a learnt feature space, not Inception FIDs: read "
              "each beside its real-vs-real baseline (the same figure for a second real sample), never alone.")


@dataclass(frozen=True)
class DistributionConfig:
    real: Path  # dataset dir with a train and a test split (and a val split when the feature classifier is trained)
    synthetic: Path  # dataset dir; every case is used
    out: Path  # output dir
    #: "classifier" (a ResNet-18 trained here on the real train split) or a path: a medti classifier dir, a
    #: transformers ResNet dir, or a .safetensors ResNetModel state dict
    features: str | Path = "classifier"
    seeds: tuple[int, ...] = (0, 1, 2)  # one equal-size subsample per seed; figures are the mean over seeds
    kid_subsets: int = 100
    kid_subset_size: int = 100
    nearest_k: int = 5  # k of the PRDC k-nearest-neighbour balls
    reference_split: str = "test"  # the real sample every set is compared with
    baseline_split: str = "train"  # the second real sample: the real-vs-real baseline
    classifier_steps: int = 300  # optimiser steps of the feature classifier trained when features="classifier"
    #: run the validation gate on the real dir before training the feature classifier on it; an executor that
    #: already validated it (an experiment's validate task) turns it off
    validate: bool = True
    overwrite: bool = False


@dataclass
class DistributionResult:
    out: Path
    feature_space: str
    n: int  # images in every compared set (overall)
    synthetic: dict[str, float]  # figure -> mean over seeds, synthetic vs real
    baseline: dict[str, float]  # figure -> mean over seeds, real vs real
    per_class: dict[str, dict] = field(default_factory=dict)  # "csPCa=1" -> {"n", "synthetic", "baseline"} or skipped
    classifier_trained: bool = False  # a feature classifier was trained by this run (not reused, not given)
    report: Path | None = None
    table: Path | None = None
    figure: Path | None = None

    def summary(self) -> str:
        lines = [f"distribution in {self.feature_space}, {self.n} images a set -> {self.out}",
                 f"  {'':10s} {'synthetic vs real':>18s} {'real vs real':>14s}"]
        for m in METRICS:
            lines.append(f"  {m:10s} {self.synthetic[m]:18.4g} {self.baseline[m]:14.4g}")
        for key, c in self.per_class.items():
            if "skipped" in c:
                lines.append(f"  {key}: skipped ({c['skipped']})")
            else:
                s, b = c["synthetic"], c["baseline"]
                lines.append(f"  {key} (n={c['n']}): FD {s['fd']:.4g} vs {b['fd']:.4g}, KID {s['kid']:.3g} vs "
                             f"{b['kid']:.3g}, precision {s['precision']:.3f} vs {b['precision']:.3f}, recall "
                             f"{s['recall']:.3f} vs {b['recall']:.3f}")
        lines.append("  (proxies for realism: read each figure beside its real-vs-real baseline)")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- the step
def distribution(cfg: DistributionConfig) -> DistributionResult:
    from medti.io import output_lock

    _check_config(cfg)
    _check_output(cfg)
    with output_lock(Path(cfg.out), "quality distribution"):
        return _distribution(cfg)


def _distribution(cfg: DistributionConfig) -> DistributionResult:
    from medti.quality.images import check_comparable, load_set

    # 1. Check inputs (nothing is trained or written before these pass)
    real, syn_dir = Path(cfg.real), Path(cfg.synthetic)
    _check_splits(real, cfg)
    ref = load_set(real, role="real", split=cfg.reference_split)
    base = load_set(real, role="real", split=cfg.baseline_split)
    syn = load_set(syn_dir, role="synthetic")
    check_comparable(ref, syn, a_role="real", b_role="synthetic")
    n = min(len(ref), len(base), len(syn))
    _check_sizes(cfg, n, {f"real {cfg.reference_split}": len(ref), f"real {cfg.baseline_split}": len(base),
                          "synthetic": len(syn)})

    # 2. The feature space
    net, trained = _feature_net(cfg, ref)
    net.check_images(ref.modality, ref.channels, ref.size, where=real)

    # 3. Features of every image, once
    feats = {"reference": net(ref.images), "baseline": net(base.images), "synthetic": net(syn.images)}

    # 4-5. Figures per seed, overall and per class
    everyone = {k: np.ones(len(v), dtype=bool) for k, v in feats.items()}
    per_seed = [_compare(feats, everyone, n, cfg, seed, cfg.kid_subset_size, "all") for seed in cfg.seeds]
    overall = _mean_over_seeds(per_seed)
    per_class = _per_class(cfg, feats, ref, base, syn)

    # 6. Write the outputs atomically
    doc = {
        "kind": "medti-distribution", "note": PROXY_NOTE,
        "feature_space": {"name": net.name, "source": Path(net.source).name, "dim": net.dim, **net.info,
                          "trained_here": trained},
        "real": {"dir": real.name, "version": _version(real), "reference_split": cfg.reference_split,
                 "baseline_split": cfg.baseline_split, "cases": {cfg.reference_split: len(ref),
                                                                 cfg.baseline_split: len(base)}},
        "synthetic": {"dir": syn_dir.name, "version": _version(syn_dir), "cases": len(syn)},
        "n": n,
        "equal_size": (f"every set is subsampled (seeded, without replacement) to {n} images, the smallest set's "
                       "size, because FD, KID and PRDC all depend on set size"),
        "seeds": list(cfg.seeds),
        "settings": {"kid_subsets": cfg.kid_subsets, "kid_subset_size": cfg.kid_subset_size,
                     "nearest_k": cfg.nearest_k, "kid_kernel": "polynomial degree 3, gamma 1/dim, coef 1"},
        "figures": overall,
        "per_seed": [{"seed": s, **f} for s, f in zip(cfg.seeds, per_seed, strict=True)],
        "per_class": per_class,
    }
    out = Path(cfg.out)
    _write(out, doc, feats, ref, base, syn, cfg)
    return DistributionResult(
        out=out, feature_space=net.name, n=n, synthetic=overall["synthetic"], baseline=overall["baseline"],
        per_class={k: ({"skipped": c["skipped"]} if "skipped" in c else
                       {"n": c["n"], "synthetic": c["figures"]["synthetic"], "baseline": c["figures"]["baseline"]})
                   for k, c in per_class.items()},
        classifier_trained=trained, report=out / DISTRIBUTION_JSON, table=out / DISTRIBUTION_MD,
        figure=out / DISTRIBUTION_PNG,
    )


# ----------------------------------------------------------------------------- checks
def _check_config(cfg: DistributionConfig) -> None:
    seeds = cfg.seeds
    if not isinstance(seeds, tuple | list) or not seeds or any(isinstance(s, bool) or not isinstance(s, int)
                                                               for s in seeds):
        raise QualityError(f"distribution seeds={seeds!r} must be a non-empty list of integers")
    if len(set(seeds)) != len(seeds):
        raise QualityError(f"distribution seeds={list(seeds)} repeat a seed; each seed is one subsample")
    for name, lo in (("kid_subsets", 1), ("kid_subset_size", 2), ("nearest_k", 1), ("classifier_steps", 1)):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise QualityError(f"distribution {name}={v!r} must be an integer >= {lo}")
    if cfg.reference_split == cfg.baseline_split:
        raise QualityError(f"distribution reference_split and baseline_split are both {cfg.reference_split!r}; the "
                           "baseline compares two different real splits")
    if isinstance(cfg.features, str) and cfg.features != "classifier" and not cfg.features.strip():
        raise QualityError("distribution features is empty; give 'classifier' or a path to a network")


def _check_output(cfg: DistributionConfig) -> None:
    from medti.io import check_output_dir

    out = Path(cfg.out)
    # an interrupted run leaves only its feature classifier (or its checkpoints): the same command continues it
    if out.is_dir() and any(out.iterdir()) and {p.name for p in out.iterdir()} <= _LEFTOVERS:
        return
    check_output_dir(out, cfg.overwrite, (DISTRIBUTION_JSON,), "medti distribution dir")


def _check_splits(real: Path, cfg: DistributionConfig) -> None:
    from medti.data.dataset import Dataset, DatasetError

    if not real.is_dir():
        raise QualityError(f"real dataset {real}: not a directory")
    try:
        counts: dict[str, int] = {}
        for c in Dataset(real).cases():
            counts[c.split] = counts.get(c.split, 0) + 1
    except DatasetError as e:
        raise QualityError(f"real dataset {real}: {e}") from e
    for split in (cfg.reference_split, cfg.baseline_split):
        if not counts.get(split):
            raise QualityError(
                f"real dataset {real}: no cases in split {split!r} (manifest.csv split column; it has "
                f"{dict(sorted(counts.items()))}); the real-vs-real baseline compares its {cfg.baseline_split!r} "
                f"split with its {cfg.reference_split!r} split, so it needs both"
            )


def _check_sizes(cfg: DistributionConfig, n: int, sizes: dict[str, int]) -> None:
    told = ", ".join(f"{k} {v}" for k, v in sizes.items())
    if n < cfg.kid_subset_size:
        raise QualityError(
            f"distribution kid_subset_size={cfg.kid_subset_size} is larger than the compared sets ({told}; all are "
            f"subsampled to {n}); give a kid_subset_size <= {n} or more images"
        )
    if n < cfg.nearest_k + 2:
        raise QualityError(f"distribution nearest_k={cfg.nearest_k} needs at least {cfg.nearest_k + 2} images a set "
                           f"({told}); give a smaller nearest_k or more images")


def _version(path: Path) -> str | None:
    from medti.data.versions import content_version

    try:
        return content_version(path)
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- the feature space
def _feature_net(cfg: DistributionConfig, ref):
    """(FeatureNet, trained here?) for ``cfg.features``."""
    from medti.quality.features import open_features

    if not (isinstance(cfg.features, str) and cfg.features == "classifier"):
        return open_features(Path(cfg.features)), False
    model_dir = Path(cfg.out) / FEATURE_CLASSIFIER
    trained = not _reusable(model_dir, cfg)
    if trained:
        _train_feature_classifier(cfg, model_dir, list(ref.labels))
    net = open_features(model_dir)
    net.name = f"{net.name}, trained by this step on {Path(cfg.real).name}/train ({FEATURE_CLASSIFIER}/)"
    return net, trained


def _reusable(model_dir: Path, cfg: DistributionConfig) -> bool:
    """A feature classifier left in OUT by an earlier run, trained on this real data with these settings."""
    from medti.classify import ClassifierError
    from medti.classify.model import read_meta

    try:
        meta = read_meta(model_dir)
    except ClassifierError:
        return False
    train = [t.get("version") for t in meta.get("train") or [] if isinstance(t, dict)]
    config = meta.get("config") or {}
    return (train == [_version(Path(cfg.real))] and config.get("steps") == cfg.classifier_steps
            and config.get("seed") == cfg.seeds[0])


def _train_feature_classifier(cfg: DistributionConfig, model_dir: Path, findings: list[str]) -> None:
    """A ResNet-18 on the real train split, the checkpoint picked on its val split: medti's own classifier step,
    seeded by the first seed. Its penultimate layer is a feature space that knows what separates the findings."""
    from medti.classify import ClassifierError
    from medti.classify.train import ClassifierConfig, train_classifier

    if not findings:
        raise QualityError(f"real dataset {cfg.real}: labels no findings (dataset.json), so no classifier can be "
                           "trained for the feature space; give features as a network path")
    try:
        train_classifier(ClassifierConfig(train=[Path(cfg.real)], val=Path(cfg.real), targets=findings, out=model_dir,
                                          seed=cfg.seeds[0], steps=cfg.classifier_steps, validate=cfg.validate,
                                          overwrite=True))
    except ClassifierError as e:
        raise QualityError(f"features: cannot train the feature classifier on {cfg.real} ({e}); give features as "
                           "a network path instead") from e


# ----------------------------------------------------------------------------- figures
def _stream(*parts: object) -> int:
    """A stable integer for a name (a seed stream per set and class; Python's hash() is salted per process)."""
    return zlib.crc32("/".join(str(p) for p in parts).encode())


def _pick(mask: np.ndarray, n: int, seed: int, *stream: object) -> np.ndarray:
    """``n`` of the indices where ``mask`` holds, drawn without replacement by a generator seeded with
    (seed, stream), in index order."""
    idx = np.flatnonzero(mask)
    return np.sort(np.random.default_rng([seed, _stream(*stream)]).choice(idx, size=n, replace=False))


def _compare(feats: dict[str, np.ndarray], masks: dict[str, np.ndarray], n: int, cfg: DistributionConfig, seed: int,
             subset_size: int, group: str) -> dict[str, dict[str, float]]:
    """Synthetic and baseline samples (``n`` each) against one reference sample (``n``), for one seed."""
    ref = feats["reference"][_pick(masks["reference"], n, seed, group, "reference")]
    out = {}
    for role in ("synthetic", "baseline"):
        other = feats[role][_pick(masks[role], n, seed, group, role)]
        out[role] = figures(ref, other, kid_subsets=cfg.kid_subsets, kid_subset_size=subset_size,
                            nearest_k=cfg.nearest_k, seed=_stream(seed, group, role))
    return out


def figures(real: np.ndarray, other: np.ndarray, *, kid_subsets: int, kid_subset_size: int, nearest_k: int,
            seed: int) -> dict[str, float]:
    """FD, KID (mean, std over subsets), precision, recall, density and coverage of ``other`` against ``real``
    (both N x D features), with torchmetrics and prdc."""
    import torch
    from prdc import compute_prdc
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    given = _given_features(real.shape[1])
    r = torch.from_numpy(np.asarray(real, dtype=np.float64))
    o = torch.from_numpy(np.asarray(other, dtype=np.float64))
    fid = FrechetInceptionDistance(feature=given)
    fid.update(r, real=True)
    fid.update(o, real=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(feature=given, subsets=kid_subsets, subset_size=kid_subset_size)
    kid.update(r, real=True)
    kid.update(o, real=False)
    # KID draws its subsets with torch's global generator: seed a forked one, so the figure is reproducible and
    # the caller's random state is left as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        prdc = compute_prdc(real_features=np.asarray(real, np.float32), fake_features=np.asarray(other, np.float32),
                            nearest_k=nearest_k)
    return {"fd": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std),
            **{k: float(prdc[k]) for k in ("precision", "recall", "density", "coverage")}}


def _given_features(dim: int):
    """A pass-through feature module: torchmetrics takes features through an ``nn.Module``, and here they are
    computed once beforehand, so FD, KID and PRDC see the same numbers. ``num_features`` spares torchmetrics its
    probe with a random image."""
    import torch

    class GivenFeatures(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.num_features = dim

        def forward(self, x):
            return x

    return GivenFeatures()


def _mean_over_seeds(per_seed: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for role in ("synthetic", "baseline"):
        vals = {m: [s[role][m] for s in per_seed] for m in METRICS}
        out[role] = {m: float(np.mean(v)) for m, v in vals.items()}
        out[f"{role}_std_over_seeds"] = {m: float(np.std(v)) for m, v in vals.items()}
    return out


def _per_class(cfg: DistributionConfig, feats, ref, base, syn) -> dict[str, dict]:
    """Per finding and value that all three sets label: the same comparison restricted to that class."""
    from medti.quality.images import shared_findings

    out: dict[str, dict] = {}
    for finding in shared_findings(ref, syn):
        if finding not in base.labels:
            continue
        for value in (0, 1):
            key = f"{finding}={value}"
            masks = {"reference": ref.labels[finding] == value, "baseline": base.labels[finding] == value,
                     "synthetic": syn.labels[finding] == value}
            counts = {k: int(m.sum()) for k, m in masks.items()}
            n = min(counts.values())
            if n < cfg.nearest_k + 2:
                out[key] = {"skipped": f"{n} images in the smallest set (counts {counts}); PRDC with k="
                                       f"{cfg.nearest_k} needs {cfg.nearest_k + 2}", "counts": counts}
                continue
            # KID is unbiased at any subset size; a class smaller than the asked size draws subsets of half its
            # images, so that the subsets differ and their std still says something
            size = cfg.kid_subset_size if n >= cfg.kid_subset_size else max(2, n // 2)
            per_seed = [_compare(feats, masks, n, cfg, seed, size, key) for seed in cfg.seeds]
            out[key] = {"n": n, "counts": counts, "kid_subset_size": size, "figures": _mean_over_seeds(per_seed)}
    return out


# ----------------------------------------------------------------------------- outputs
def _fmt(mean: float, std: float, many: bool) -> str:
    if not math.isfinite(mean):
        return "n/a"
    if abs(std) < 1e-9 * max(1.0, abs(mean)):  # rounding noise of identical subsamples
        std = 0.0
    return f"{mean:.4g} ± {std:.2g}" if many else f"{mean:.4g}"


def table_md(doc: dict) -> str:
    """distribution.md: the figures beside their baseline, overall and per class, with what they mean."""
    many = len(doc["seeds"]) > 1
    spread = " (mean ± std over seeds)" if many else ""
    lines = [
        f"# Distribution: {doc['synthetic']['dir']} vs {doc['real']['dir']}",
        "",
        f"Feature space: {doc['feature_space']['name']} ({doc['feature_space']['source']}).",
        f"Reference: real `{doc['real']['reference_split']}` split; baseline: real `{doc['real']['baseline_split']}` "
        f"split against the same reference. {doc['equal_size'][0].upper()}{doc['equal_size'][1:]}; seeds "
        f"{', '.join(map(str, doc['seeds']))}{spread}.",
        "",
        f"> {doc['note']}",
        "",
        "| metric | synthetic vs real | real vs real (baseline) |",
        "|---|---|---|",
    ]

    def rows(figs: dict) -> list[str]:
        return [f"| {LABELS[m]} | {_fmt(figs['synthetic'][m], figs['synthetic_std_over_seeds'][m], many)} | "
                f"{_fmt(figs['baseline'][m], figs['baseline_std_over_seeds'][m], many)} |" for m in METRICS]

    lines += rows(doc["figures"])
    for key, c in doc["per_class"].items():
        lines += ["", f"## {key}", ""]
        if "skipped" in c:
            lines.append(f"Skipped: {c['skipped']}.")
            continue
        lines += [f"{c['n']} images a set; KID subsets of {c['kid_subset_size']}.", "",
                  "| metric | synthetic vs real | real vs real (baseline) |", "|---|---|---|", *rows(c["figures"])]
    return "\n".join(lines) + "\n"


def _write(out: Path, doc: dict, feats, ref, base, syn, cfg: DistributionConfig) -> None:
    from medti.io import link_tree, written_dir

    with written_dir(out) as tmp:
        trained_here = isinstance(cfg.features, str) and cfg.features == "classifier"
        if trained_here and (out / FEATURE_CLASSIFIER / "classifier.json").is_file():  # kept, for reuse
            link_tree(out / FEATURE_CLASSIFIER, tmp / FEATURE_CLASSIFIER)
        (tmp / DISTRIBUTION_JSON).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / DISTRIBUTION_MD).write_text(table_md(doc), encoding="utf-8")
        figure_png(tmp / DISTRIBUTION_PNG, doc, feats, ref, base, syn, cfg)


def figure_png(path: Path, doc: dict, feats, ref, base, syn, cfg: DistributionConfig) -> None:
    """Left: a 2-D PCA of the first seed's samples (real reference, real baseline, synthetic), marker by set,
    colour by class of the first shared finding. Right: the table's overall numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    from medti.quality.images import shared_findings

    seed, n = cfg.seeds[0], doc["n"]
    sets = {"reference": ref, "baseline": base, "synthetic": syn}
    picks = {k: _pick(np.ones(len(v), bool), n, seed, "all", k) for k, v in sets.items()}
    pca = PCA(n_components=2, random_state=0).fit(np.concatenate([feats[k][picks[k]] for k in sets]))
    finding = next((f for f in shared_findings(ref, syn) if f in base.labels), None)
    names = {"reference": f"real {cfg.reference_split}", "baseline": f"real {cfg.baseline_split}",
             "synthetic": "synthetic"}
    markers = {"reference": "o", "baseline": "^", "synthetic": "x"}
    colours = {-1: "#7f7f7f", 0: "#1f77b4", 1: "#d62728"}

    fig, (ax, tx) = plt.subplots(1, 2, figsize=(10, 4.6), dpi=110, gridspec_kw={"width_ratios": [1.1, 1]})
    for k, s in sets.items():
        xy = pca.transform(feats[k][picks[k]])
        cls = s.labels[finding][picks[k]] if finding else np.full(len(xy), -1)
        for v in np.unique(cls):
            sel = cls == v
            label = f"{names[k]}" + (f", {finding}={v}" if finding and v >= 0 else "")
            ax.scatter(xy[sel, 0], xy[sel, 1], s=14, marker=markers[k], c=colours.get(int(v), "#2ca02c"),
                       alpha=0.35 if k == "baseline" else 0.6, linewidths=0.8, label=label)
    ev = pca.explained_variance_ratio_
    ax.set_xlabel(f"PC1 ({ev[0]:.0%})")
    ax.set_ylabel(f"PC2 ({ev[1]:.0%})")
    ax.set_title(f"{doc['feature_space']['name']}: 2-D PCA, {n} a set (seed {seed})", fontsize=8)
    ax.legend(fontsize=6, loc="best", framealpha=0.7)

    tx.axis("off")
    figs = doc["figures"]
    cells = [[m, f"{figs['synthetic'][m]:.4g}", f"{figs['baseline'][m]:.4g}"] for m in METRICS]
    t = tx.table(cellText=cells, colLabels=["metric", "synthetic vs real", "real vs real"], loc="center",
                 cellLoc="center")
    t.auto_set_font_size(False)
    t.set_fontsize(8)
    t.scale(1, 1.4)
    tx.set_title(f"{doc['synthetic']['dir']} vs {doc['real']['dir']}; proxies for realism:\nread each figure beside "
                 "its real-vs-real baseline", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
