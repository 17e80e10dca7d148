"""``audit_memorization(MemorizationConfig) -> MemorizationResult``: is any synthetic image a copy of a training
image (a patient)?

For every synthetic image, its nearest training image in pixel space (and, given a network, in feature space;
the search is :mod:`medti.quality.nearest`). Whether "nearest" means "copied" is judged against real data: held-out
real cases are by construction not copies of the training cases, so how close they come to the training set is
how close an independent image of this modality comes by nature. The copy threshold is calibrated on them:

    distance = 1 - similarity;  flagged when  distance < margin x (the smallest held-out real distance)

so with the default margin 0.5 a synthetic image is flagged when it is at least twice as close to a training
image as any held-out real case comes. Taking the smallest held-out distance (not a quantile) means no real case
would be flagged; the margin allows for a synthetic set being larger than the held-out one (its closest image
comes a little closer by chance alone). The audit passes when the flagged share (copy rate) is at most
``tolerance`` (default 0: no copies).

With a feature network, feature space is searched and calibrated the same way, but by default an image above
its feature threshold alone is listed for review, not flagged: a generator's images are more typical of their class
than real cases are, so in a classifier's feature space they sit closer to the training set as a whole (on the
prostate phantoms, median nearest-training similarity 0.98 for synthetic images against 0.95 for held-out real
ones) and the tail of that shift crosses a threshold calibrated on real cases without any image being a copy. In
pixel space no such shift holds the synthetic images up. ``flag_features`` counts feature-space exceedances as
copies too, for a feature space trusted to see through transforms the pixel search does not try (crops,
rotations, warps). The report names the space behind every flag and review entry.

Written to ``out`` (default: a sibling dir ``<synthetic>.memorization``, never inside a dataset dir, whose DVC
version it would change), atomically::

    audit.json          verdict, threshold and how it was calibrated, copy rate, every flagged image
    nearest.csv         every synthetic image: nearest training case, similarity, transform (per space)
    calibration.csv     the same for every held-out real case
    histogram.png       nearest-training similarity, synthetic vs held-out real, with the threshold
    closest_pairs.png   the closest synthetic images beside their nearest training images

Outputs name cases by case id only, never by patient id.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medti.quality import QualityError
from medti.quality.images import ImageSet, check_comparable, load_set
from medti.quality.nearest import Nearest

AUDIT_JSON = "audit.json"
NEAREST_CSV = "nearest.csv"
CALIBRATION_CSV = "calibration.csv"
HISTOGRAM_PNG = "histogram.png"
PAIRS_PNG = "closest_pairs.png"
SUFFIX = ".memorization"
HELDOUT_SPLITS = ("val", "test")


@dataclass(frozen=True)
class MemorizationConfig:
    train: Path  # dataset dir of the real cases the generator learnt from
    synthetic: Path  # dataset dir of the synthetic set to audit
    out: Path | None = None  # default: <synthetic>.memorization beside it
    train_split: str | None = "train"  # None: every case of train
    #: embeddings (medti embed train) whose training cases are the training set: the cases of their split that
    #: match their where, first n_images by case id (as embed train picks them); replaces train_split
    embeddings: tuple[Path, ...] = ()
    heldout: Path | None = None  # real cases never trained on; default: the val + test splits of train or its source
    heldout_split: str | None = None  # of heldout; None: every case of it
    features: Path | None = None  # a medti classifier dir or transformers ResNet dir: feature space too
    flag_features: bool = False  # count feature-space exceedances as copies (default: listed for review)
    margin: float = 0.5  # flagged below this fraction of the smallest held-out distance
    tolerance: float = 0.0  # the largest copy rate that passes
    shift: int = 3  # pixel search: translations of up to this many pixels each way
    flip: bool = True  # pixel and feature search: mirrored training images too
    resolution: int = 32  # pixel search: images box-averaged to about this size first
    pairs: int = 16  # closest pairs drawn
    overwrite: bool = False


@dataclass
class MemorizationResult:
    out: Path
    passed: bool
    copy_rate: float
    flagged: int
    n_synthetic: int
    n_train: int
    n_heldout: int
    threshold: float  # pixel similarity above which an image is flagged
    heldout_max: float  # the highest nearest-training pixel similarity of a held-out real case
    feature_threshold: float | None = None
    feature_heldout_max: float | None = None
    report: Path | None = None
    nearest: Path | None = None
    histogram: Path | None = None
    closest_pairs: Path | None = None
    flagged_ids: list[str] = field(default_factory=list)
    review_ids: list[str] = field(default_factory=list)  # above the feature threshold alone, not counted

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        lines = [f"memorisation audit {verdict}: {self.flagged} of {self.n_synthetic} synthetic images flagged as "
                 f"copies (copy rate {self.copy_rate:.4f}) -> {self.out}",
                 f"  pixel threshold {self.threshold:.4f} (held-out real max {self.heldout_max:.4f}; "
                 f"{self.n_heldout} held-out vs {self.n_train} training cases)"]
        if self.feature_threshold is not None:
            lines.append(f"  feature threshold {self.feature_threshold:.4f} (held-out real max "
                         f"{self.feature_heldout_max:.4f})")
        if self.flagged_ids:
            lines.append("  flagged: " + describe_ids(self.flagged_ids))
        if self.review_ids:
            lines.append(f"  for review (feature space alone, not counted): {describe_ids(self.review_ids)}")
        return "\n".join(lines)


def describe_ids(ids: list[str], first: int = 5) -> str:
    """``a, b, c, d, e and 12 more``."""
    more = f" and {len(ids) - first} more" if len(ids) > first else ""
    return ", ".join(ids[:first]) + more


def default_out(synthetic: Path) -> Path:
    """``<synthetic>.memorization`` beside the synthetic dataset dir."""
    p = Path(synthetic).resolve()
    return p.with_name(p.name + SUFFIX)


# ----------------------------------------------------------------------------- the step
def audit_memorization(cfg: MemorizationConfig) -> MemorizationResult:
    from medti.io import check_output_dir, written_dir
    from medti.quality.nearest import FeatureSearch, PixelSearch

    # 1. Check inputs and the output before any work
    out = Path(cfg.out) if cfg.out is not None else default_out(cfg.synthetic)
    _check_settings(cfg)
    _check_not_inside(out, [cfg.train, cfg.synthetic, cfg.heldout])
    check_output_dir(out, cfg.overwrite, (AUDIT_JSON,), "medti memorisation audit dir")
    train, train_desc = _load_train(cfg)
    synthetic = load_set(Path(cfg.synthetic), role="synthetic")
    heldout, heldout_desc = _load_heldout(cfg)
    check_comparable(train, synthetic, a_role="train", b_role="synthetic")
    check_comparable(train, heldout, a_role="train", b_role="held-out")
    _check_disjoint(train, heldout)
    net = None
    if cfg.features is not None:
        from medti.quality.features import open_features

        net = open_features(Path(cfg.features))

    # 2. Nearest training image of every synthetic and held-out image
    try:
        search = PixelSearch(train.images, shift=cfg.shift, flip=cfg.flip, resolution=cfg.resolution)
    except ValueError as e:
        raise QualityError(f"memorisation audit: shift = {cfg.shift}: {e}") from e
    spaces = {"pixel": (search(synthetic.images), search(heldout.images), search.description)}
    if net is not None:
        mirrored = net(np.ascontiguousarray(train.images[..., ::-1])) if cfg.flip else None
        fsearch = FeatureSearch(net(train.images), mirrored)
        spaces["feature"] = (fsearch(net(synthetic.images)), fsearch(net(heldout.images)),
                             f"cosine similarity of {net.name} features about the training images' mean"
                             + (", best over every training image and its mirror image" if cfg.flip else ""))

    # 3. Calibrate on the held-out real cases, flag
    calibration = {name: _calibrate(name, held, train, heldout, cfg.margin) for name, (_, held, _) in spaces.items()}
    counted = list(spaces) if cfg.flag_features else ["pixel"]
    flags = _flags(spaces, calibration, synthetic, train, counted)
    review = [f for f in _flags(spaces, calibration, synthetic, train, list(spaces)) if f not in flags]
    flagged_ids = [f["case_id"] for f in flags]
    copy_rate = len(flags) / len(synthetic)
    passed = copy_rate <= cfg.tolerance

    # 4. Write the dir atomically
    doc = {
        "verdict": "pass" if passed else "fail",
        "passed": passed,
        "copy_rate": copy_rate,
        "flagged": len(flags),
        "tolerance": cfg.tolerance,
        "synthetic": _set_doc(synthetic, None) | {"embeddings": _embedding_versions(Path(cfg.synthetic))},
        "train": train_desc,
        "heldout": heldout_desc,
        "spaces": {name: {"search": desc, "counted": name in counted, **calibration[name]}
                   for name, (_, _, desc) in spaces.items()},
        "flags": flags,
        "review": review,
    }
    with written_dir(out) as tmp:
        (tmp / AUDIT_JSON).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        (tmp / NEAREST_CSV).write_text(_nearest_csv(synthetic, train, spaces, 0, set(flagged_ids),
                                                    {f["case_id"] for f in review}), encoding="utf-8")
        (tmp / CALIBRATION_CSV).write_text(_nearest_csv(heldout, train, spaces, 1, set(), set()), encoding="utf-8")
        histogram_png(tmp / HISTOGRAM_PNG, {k: (v[0].similarity, v[1].similarity) for k, v in spaces.items()},
                      {k: (c["threshold"], "copy" if k in counted else "review") for k, c in calibration.items()},
                      Path(cfg.synthetic).name)
        closest_pairs_png(tmp / PAIRS_PNG, synthetic, train, spaces["pixel"][0], calibration["pixel"]["threshold"],
                          cfg.pairs)
    feature = calibration.get("feature", {})
    return MemorizationResult(
        out=out, passed=passed, copy_rate=copy_rate, flagged=len(flags), n_synthetic=len(synthetic),
        n_train=len(train), n_heldout=len(heldout), threshold=calibration["pixel"]["threshold"],
        heldout_max=calibration["pixel"]["heldout_max"], feature_threshold=feature.get("threshold"),
        feature_heldout_max=feature.get("heldout_max"), report=out / AUDIT_JSON, nearest=out / NEAREST_CSV,
        histogram=out / HISTOGRAM_PNG, closest_pairs=out / PAIRS_PNG, flagged_ids=flagged_ids,
        review_ids=[f["case_id"] for f in review],
    )


# ----------------------------------------------------------------------------- 1. checks and inputs
def _check_settings(cfg: MemorizationConfig) -> None:
    checks = (
        ("margin", cfg.margin, 0 < cfg.margin <= 1, "in (0, 1]"),
        ("tolerance", cfg.tolerance, 0 <= cfg.tolerance < 1, "in [0, 1)"),
        ("shift", cfg.shift, isinstance(cfg.shift, int) and cfg.shift >= 0, "an integer >= 0"),
        ("resolution", cfg.resolution, isinstance(cfg.resolution, int) and cfg.resolution >= 8, "an integer >= 8"),
        ("pairs", cfg.pairs, isinstance(cfg.pairs, int) and cfg.pairs >= 1, "an integer >= 1"),
    )
    for name, value, ok, rule in checks:
        if not ok:
            raise QualityError(f"memorisation audit: {name} = {value!r} must be {rule}")


def _check_not_inside(out: Path, dirs: list[Path | None]) -> None:
    target = out.resolve()
    for d in dirs:
        if d is None:
            continue
        d = Path(d).resolve()
        if target == d or d in target.parents:
            raise QualityError(f"output {out} is inside the dataset dir {d}: writing there would change the "
                               f"dataset (and its DVC version); give an output dir beside it (default "
                               f"{default_out(d).name})")


def _concat(sets: list[ImageSet]) -> ImageSet:
    first = sets[0]
    if len(sets) == 1:
        return first
    labels = {k: np.concatenate([s.labels[k] for s in sets]) for k in first.labels}
    return ImageSet(first.root, np.concatenate([s.images for s in sets]), labels,
                    [c for s in sets for c in s.case_ids], first.modality, first.channels)


def _load_train(cfg: MemorizationConfig) -> tuple[ImageSet, dict]:
    from medti.data.versions import dataset_version

    root = Path(cfg.train)
    if not cfg.embeddings:
        train = load_set(root, role="train", split=cfg.train_split)
        return train, _set_doc(train, cfg.train_split) | {"version": dataset_version(root)}
    chosen, described = embedding_cases(root, cfg.embeddings)
    splits = {s for s, _ in chosen.values()}
    train = load_set(root, role="train", split=splits.pop() if len(splits) == 1 else None)
    train = train.subset(np.array([c in chosen for c in train.case_ids]))
    return train, _set_doc(train, None) | {"version": dataset_version(root), "embeddings": described}


def embedding_cases(root: Path, embeddings: tuple[Path, ...]) -> tuple[dict[str, tuple[str, str]], list[dict]]:
    """{case id: (split, embedding file)} of the cases the embeddings learnt from, chosen as ``embed train`` chose
    them (:func:`~medti.diffusion.textual_inversion.concept_cases` on its metadata), and a description of each."""
    from medti.data.dataset import Dataset, DatasetError, parse_where
    from medti.data.versions import dataset_version
    from medti.diffusion.embeddings import EmbeddingError, load_embedding
    from medti.diffusion.textual_inversion import concept_cases

    ds, version = Dataset(root), dataset_version(root)
    chosen: dict[str, tuple[str, str]] = {}
    described = []
    for path in embeddings:
        try:
            meta = load_embedding(Path(path)).metadata
        except (EmbeddingError, OSError) as e:
            raise QualityError(f"embedding {path}: {e}") from e
        missing = [k for k in ("where", "n_images") if k not in meta]
        if missing:
            raise QualityError(f"embedding {path}: its metadata has no {', '.join(missing)}; it was not written by "
                               "medti embed train, so which cases it learnt from is unknown (audit against train "
                               "without embeddings)")
        learnt = meta.get("dataset_version", "")
        if learnt and learnt != version:
            raise QualityError(f"embedding {path}: dataset_version is {learnt}, but the train dataset {root} is "
                               f"{version}; give the dataset it learnt from as train")
        split = meta.get("split") or None
        try:
            cases = concept_cases(ds, split, parse_where(meta["where"]), int(meta["n_images"]))
        except DatasetError as e:
            raise QualityError(f"embedding {path}: where {meta['where']!r}: {e}") from e
        if len(cases) != int(meta["n_images"]):
            raise QualityError(f"embedding {path}: learnt from {meta['n_images']} cases ({meta['where']}), but the "
                               f"train dataset {root} has {len(cases)} such {split or ''} cases")
        chosen.update({c.case_id: (c.split, str(path)) for c in cases})
        described.append({"file": Path(path).name, "concept": meta.get("concept", ""), "where": meta["where"],
                          "split": split, "n": len(cases)})
    return chosen, described


def _load_heldout(cfg: MemorizationConfig) -> tuple[ImageSet, dict]:
    """The held-out real cases: ``heldout`` (its ``heldout_split``, or all), else the val + test splits of the train
    dir, else those of the dataset it is a subset of (a sibling dir named in its dataset.json)."""
    from medti.data.dataset import Dataset, DatasetError
    from medti.data.versions import dataset_version

    if cfg.heldout is not None:
        root = Path(cfg.heldout)
        sets = [load_set(root, role="held-out", split=cfg.heldout_split)]
        split = cfg.heldout_split
    else:
        tried = []
        for root in _heldout_candidates(Path(cfg.train)):
            try:
                ds = Dataset(root)
            except DatasetError as e:
                raise QualityError(f"held-out dataset {root}: {e}") from e
            present = [s for s in HELDOUT_SPLITS if ds.cases(s)]
            tried.append(str(root))
            if present:
                break
        else:
            raise QualityError(
                f"no held-out real cases: {' and '.join(tried)} {'has' if len(tried) == 1 else 'have'} no val or "
                "test split; give real cases the generator never saw as heldout (--heldout DIR, with --heldout-split)"
            )
        sets = [load_set(root, role="held-out", split=s) for s in present]
        split = "+".join(present)
    held = _concat(sets)
    return held, _set_doc(held, split) | {"version": dataset_version(root)}


def _heldout_candidates(train: Path) -> list[Path]:
    out = [train]
    try:
        info = json.loads((train / "dataset.json").read_text(encoding="utf-8"))
        source = (info.get("extra") or {}).get("subset_of", {}).get("dataset")
    except (OSError, ValueError, AttributeError):
        source = None
    if isinstance(source, str) and source and (train.parent / source / "dataset.json").is_file():
        out.append(train.parent / source)
    return out


def _check_disjoint(train: ImageSet, heldout: ImageSet) -> None:
    """Held-out cases must be new cases of new patients, and not the same pictures: otherwise the threshold is
    calibrated on copies and nothing could be flagged."""
    from medti.data.dataset import Dataset

    def role(s: ImageSet) -> str:
        return f"held-out dataset {s.root}" if s is heldout else f"train dataset {s.root}"

    shared = sorted(set(train.case_ids) & set(heldout.case_ids))
    if shared:
        raise QualityError(f"{role(heldout)}: {len(shared)} of its cases are training cases too ({describe_ids(shared)}; "
                           "manifest.csv case_id); held-out cases must be cases the generator never saw")
    def patients(s: ImageSet) -> dict[str, str]:
        wanted = set(s.case_ids)
        return {c.case_id: c.patient_id for c in Dataset(s.root).cases() if c.case_id in wanted}

    train_of = {p: c for c, p in patients(train).items()}
    same = sorted(f"{c} (training case {train_of[p]})" for c, p in patients(heldout).items() if p in train_of)
    if same:
        raise QualityError(f"{role(heldout)}: {len(same)} cases are of patients in the training set: "
                           f"{describe_ids(same)} (manifest.csv patient_id); use a patient-level held-out split")
    import hashlib

    digest = {hashlib.sha256(img.tobytes()).hexdigest(): c for img, c in zip(train.images, train.case_ids, strict=True)}
    dup = [f"{c} (= training case {digest[h]})" for img, c in zip(heldout.images, heldout.case_ids, strict=True)
           if (h := hashlib.sha256(img.tobytes()).hexdigest()) in digest]
    if dup:
        raise QualityError(f"{role(heldout)}: {len(dup)} images are identical to training images: {describe_ids(dup)}; "
                           "the copy threshold cannot be calibrated on copies")


def _set_doc(s: ImageSet, split: str | None) -> dict:
    return {"dir": s.root.name, "split": split, "n": len(s)}


def _embedding_versions(root: Path) -> list[str]:
    """The ``concept:version`` of every embedding the synthetic set's rows name (manifest embedding_version)."""
    from medti.data.dataset import Dataset

    found = set()
    for c in Dataset(root).cases():
        for part in (c.row.get("embedding_version") or "").split(";"):
            if part.strip():
                found.add(part.strip())
    return sorted(found)


# ----------------------------------------------------------------------------- 3. calibrate and flag
def _calibrate(space: str, held: Nearest, train: ImageSet, heldout: ImageSet, margin: float) -> dict:
    i = int(np.argmax(held.similarity))
    top = float(held.similarity[i])
    if top >= 0.999:
        raise QualityError(
            f"held-out dataset {heldout.root}: case {heldout.case_ids[i]} matches training case "
            f"{train.case_ids[held.index[i]]} at {space} similarity {top:.4f} ({held.transform(i)}): a held-out case "
            "that is (nearly) a training image leaves no room for a copy threshold; remove the duplicate"
        )
    threshold = 1.0 - margin * (1.0 - top)
    return {
        "threshold": threshold,
        "heldout_max": top,
        "heldout_median": float(np.median(held.similarity)),
        "heldout_closest": {"case_id": heldout.case_ids[i], "train_case_id": train.case_ids[held.index[i]],
                            "transform": held.transform(i)},
        "margin": margin,
        "rule": f"flagged when 1 - similarity < {margin:g} x (1 - {top:.4f}), the smallest distance of a held-out "
                f"real case ({len(heldout)} cases) to the training set",
    }


def _flags(spaces: dict, calibration: dict, synthetic: ImageSet, train: ImageSet, counted: list[str]) -> list[dict]:
    """One entry per synthetic image above the threshold of any of the ``counted`` spaces, closest first by pixel
    similarity; ``flagged_by`` names every space whose threshold it is above."""
    by_space = {name: near.similarity > calibration[name]["threshold"] for name, (near, _, _) in spaces.items()}
    flagged = np.logical_or.reduce([by_space[name] for name in counted])
    pixel = spaces["pixel"][0]
    out = []
    for i in np.flatnonzero(flagged)[np.argsort(-pixel.similarity[flagged], kind="stable")]:
        entry = {"case_id": synthetic.case_ids[i], "flagged_by": [n for n in spaces if by_space[n][i]]}
        for name, (near, _, _) in spaces.items():
            entry[name] = {"train_case_id": train.case_ids[near.index[i]], "similarity": float(near.similarity[i]),
                           "transform": near.transform(i)}
        out.append(entry)
    return out


# ----------------------------------------------------------------------------- 4. outputs
def _nearest_csv(s: ImageSet, train: ImageSet, spaces: dict, which: int, flagged: set[str], review: set[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["case_id", "flagged", "review"]
    for name in spaces:
        head += [f"{name}_similarity", f"{name}_train_case_id", f"{name}_transform"]
    w.writerow(head)
    for i, case in enumerate(s.case_ids):
        row: list = [case, int(case in flagged), int(case in review)]
        for near in (v[which] for v in spaces.values()):
            row += [f"{near.similarity[i]:.6f}", train.case_ids[near.index[i]], near.transform(i)]
        w.writerow(row)
    return buf.getvalue()


def histogram_png(path: Path, sims: dict[str, tuple[np.ndarray, np.ndarray]],
                  thresholds: dict[str, tuple[float, str]], name: str) -> None:
    """Per space: histograms of the distance (1 - similarity) of the synthetic and the held-out real images to their
    nearest training image, on a log axis (the threshold is a fixed ratio of the closest held-out distance, so it
    sits a fixed step left of the held-out histogram), with the threshold (``(value, "copy" | "review")``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    floor = 1e-4  # copies (distance 0 up to float error) are drawn in the first bin
    fig, axes = plt.subplots(1, len(sims), figsize=(4.6 * len(sims), 3.3), dpi=110, squeeze=False)
    for ax, (space, (syn, held)) in zip(axes[0], sims.items(), strict=True):
        d_syn, d_held = (np.clip(1.0 - x.astype(np.float64), floor, 2.0) for x in (syn, held))
        value, kind = thresholds[space]
        lo = min(float(d_syn.min()), float(d_held.min()), 1.0 - value) / 1.5
        bins = np.geomspace(max(lo, floor), max(float(d_syn.max()), float(d_held.max())) * 1.05, 60)
        # share of each set per bin (a density over log-spaced bins would shrink the wide bins on the right)
        ax.hist(d_held, bins=bins, weights=np.full(len(d_held), 1 / len(d_held)), alpha=0.55, color="tab:blue",
                label=f"held-out real (n={len(held)})")
        ax.hist(d_syn, bins=bins, weights=np.full(len(d_syn), 1 / len(d_syn)), alpha=0.55, color="tab:orange",
                label=f"synthetic (n={len(syn)})")
        ax.axvline(1.0 - value, color="tab:red" if kind == "copy" else "tab:purple", lw=1.2, ls="--",
                   label=f"{kind} threshold: similarity {value:.4f}")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(f"{space} distance to the nearest training image, 1 - similarity", fontsize=8)
        ax.set_ylabel("share of the set")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"memorisation audit of {name} (left of the line: flagged)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def closest_pairs_png(path: Path, synthetic: ImageSet, train: ImageSet, near: Nearest, threshold: float,
                      pairs: int, per_row: int = 4) -> None:
    """The ``pairs`` synthetic images closest to a training image (pixel space), each beside that training image
    as stored (the caption gives the transform that maps it onto the synthetic one); flagged pairs in red. The
    images are laid out in one mosaic (one axes, not two per pair: a few times faster to draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(-near.similarity, kind="stable")[:pairs]
    rows, cols = -(-len(order) // per_row), min(per_row, len(order))
    h, w = synthetic.size
    inner, between, caption = max(1, w // 20), max(2, w // 3), max(8, int(h * 0.5))  # pixels of white
    cell_w, cell_h = 2 * w + inner + between, h + caption
    mosaic = np.full((rows * cell_h + caption, cols * cell_w - between, 3), 255, np.uint8)
    width = cols * 2.5
    height = width * mosaic.shape[0] / mosaic.shape[1] + 0.35
    fig = plt.figure(figsize=(width, height), dpi=100)
    ax = fig.add_axes((0.005, 0.005, 0.99, 1 - 0.35 / height - 0.01))
    texts = []
    for k, i in enumerate(order):
        r, c = divmod(k, per_row)
        y, x = r * cell_h + caption, c * cell_w
        j, copy = near.index[i], near.similarity[i] > threshold
        mosaic[y: y + h, x: x + w] = np.moveaxis(synthetic.images[i], 0, -1)
        mosaic[y: y + h, x + w + inner: x + 2 * w + inner] = np.moveaxis(train.images[j], 0, -1)
        colour = "tab:red" if copy else "black"
        texts += [(x + w / 2, y - 1, synthetic.case_ids[i], "bottom", colour),
                  (x + 1.5 * w + inner, y - 1, train.case_ids[j], "bottom", colour),
                  (x + w + inner / 2, y + h + 1, f"{near.similarity[i]:.3f}, {near.transform(i)}"
                   + (", COPY" if copy else ""), "top", colour)]
    ax.imshow(mosaic, interpolation="nearest")
    for x, y, text, va, colour in texts:
        ax.text(x, y, text, ha="center", va=va, fontsize=6, color=colour)
    ax.axis("off")
    fig.suptitle(f"closest synthetic / training pairs (pixel space; threshold {threshold:.4f})", fontsize=8,
                 y=1 - 0.08 / height)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


# ----------------------------------------------------------------------------- reading an audit back
@dataclass
class Audit:
    """What the registry gate reads of an audit.json."""

    path: Path
    passed: bool
    copy_rate: float
    flagged: list[dict]
    n_synthetic: int
    synthetic: str
    embeddings: list[str]  # concept:version of the embeddings the audited set was made with

    def flagged_summary(self, first: int = 5) -> str:
        """``syn-000003 (~ prostate-000041, pixel similarity 0.999, flip), ... and 12 more``."""
        parts = [f"{f['case_id']} (~ {f['pixel']['train_case_id']}, pixel similarity "
                 f"{f['pixel']['similarity']:.3f}, {f['pixel']['transform']})" for f in self.flagged[:first]]
        more = f" and {len(self.flagged) - first} more" if len(self.flagged) > first else ""
        return ", ".join(parts) + more


def read_audit(path: Path) -> Audit:
    """The audit in an audit dir (or its audit.json); a missing or malformed one is a :class:`QualityError`."""
    path = Path(path)
    file = path / AUDIT_JSON if path.is_dir() else path
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
        passed = doc["passed"]
        if not isinstance(passed, bool) or doc["verdict"] != ("pass" if passed else "fail"):
            raise ValueError(f"verdict {doc.get('verdict')!r} and passed {passed!r} disagree")
        return Audit(file, passed, float(doc["copy_rate"]), list(doc["flags"]), int(doc["synthetic"]["n"]),
                     str(doc["synthetic"]["dir"]), [str(e) for e in doc["synthetic"]["embeddings"]])
    except FileNotFoundError as e:
        raise QualityError(f"memorisation audit {file}: no such file (medti quality memorization writes it)") from e
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise QualityError(f"memorisation audit {file}: not a medti memorisation audit ({type(e).__name__}: {e})") \
            from e
