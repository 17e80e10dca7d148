"""``make_study(MakeConfig) -> MakeResult``: a blinded two-alternative forced-choice set from two dataset dirs.

n cases are drawn from each set (seeded), paired in a shuffled order, and each pair's A image is put on the left
in half the pairs (at random which half), so position cannot stand in for the set. What readers are served is
rendered afresh: PNGs without metadata named ``pair-017-left.png`` (or ``-1``, ``-2``, ``-3`` per channel panel),
upscaled to a readable size, and a ``study.json`` with the question and the panel names only. Which side is A,
and which cases were shown, goes to ``key.json`` beside the served folder, for the organiser alone. The same
inputs and seed write the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medti.quality import QualityError
from medti.quality.reader_study.files import (
    ANSWERS,
    DEFAULT_QUESTION,
    IMAGES,
    KEY_FORMAT,
    KEY_JSON,
    STUDY_DIR,
    STUDY_FORMAT,
    STUDY_JSON,
    pair_id,
)

VIEWS = ("auto", "channels", "grey", "rgb")
RESAMPLES = ("bicubic", "nearest")


@dataclass(frozen=True)
class MakeConfig:
    a: Path  # dataset dir of set A (e.g. the diffusion model's images): the preference reported is for A
    b: Path  # dataset dir of set B (e.g. the GAN's, or real images)
    out: Path  # study dir: out/study/ is served to readers, out/key.json stays with the organiser
    n: int = 50  # pairs; each set must hold at least n cases
    seed: int = 0
    question: str = DEFAULT_QUESTION
    split: str | None = None  # draw from this split of each set (None: every case)
    #: how a pair side is shown: "channels" one grey panel per channel, labelled with dataset.json's channel
    #: names (T2W | ADC | DWI); "grey" one panel (a radiograph stored as three equal channels); "rgb" one colour
    #: panel; "auto" channels when the channel names differ, else grey
    view: str = "auto"
    display: int = 384  # px: images smaller than this (long side) are upscaled to about it; larger ones kept
    resample: str = "bicubic"  # "bicubic" | "nearest" (whole-pixel blocks, for readers who want to see pixels)
    overwrite: bool = False


@dataclass
class MakeResult:
    study: Path  # the folder to serve
    key: str  # key.json; a str, not a Path, so that MLflow tracking (which uploads a result's paths) leaves it out
    study_id: str
    n_pairs: int
    a_left: int  # pairs with A on the left
    panels: list[str]

    def summary(self) -> str:
        return (f"reader study {self.study_id}: {self.n_pairs} pairs (A on the left in {self.a_left}), panels "
                f"{' | '.join(self.panels)} -> {self.study}\n"
                f"  serve {self.study} to the readers; keep the key {self.key} from them")


def make_study(cfg: MakeConfig) -> MakeResult:
    # 1. check the settings and the output before reading anything
    _check_config(cfg)
    # 2. list both sets and draw the cases and sides (the one random step)
    a_info, a_cases = _cases(cfg.a, "A", cfg.split, cfg.n)
    b_info, b_cases = _cases(cfg.b, "B", cfg.split, cfg.n)
    rng = np.random.default_rng(cfg.seed)
    a_pick = rng.permutation(len(a_cases))[: cfg.n]
    b_pick = rng.permutation(len(b_cases))[: cfg.n]
    a_left = _balanced_sides(cfg.n, rng)
    # 3. read the drawn images; refuse sets a reader could tell apart by size or kind alone
    a_set = _load(cfg.a, "A", a_info, [a_cases[i] for i in a_pick])
    b_set = _load(cfg.b, "B", b_info, [b_cases[i] for i in b_pick])
    from medti.quality.images import check_comparable

    check_comparable(a_set, b_set, a_role="A", b_role="B")
    view = _view(cfg.view, a_set, b_set)
    panels = _panels(view, list(a_set.channels))
    # 4. render the pairs and write study/ and key.json together
    names = (a_info.name or Path(cfg.a).name, b_info.name or Path(cfg.b).name)
    return _write(cfg, a_set, b_set, names, a_left, view, panels)


# ----------------------------------------------------------------------------- 1. checks
def _check_config(cfg: MakeConfig) -> None:
    from medti.io import check_output_dir

    if not isinstance(cfg.n, int) or cfg.n < 1:
        raise QualityError(f"n = {cfg.n!r}: a study needs at least one pair")
    if cfg.view not in VIEWS:
        raise QualityError(f"view {cfg.view!r} is not one of {', '.join(VIEWS)}")
    if cfg.resample not in RESAMPLES:
        raise QualityError(f"resample {cfg.resample!r} is not one of {', '.join(RESAMPLES)}")
    if not 16 <= cfg.display <= 4096:
        raise QualityError(f"display = {cfg.display}: the panel size must be 16-4096 px")
    if not cfg.question.strip() or len(cfg.question) > 500:
        raise QualityError(f"question {cfg.question[:60]!r}: must be 1-500 characters")
    if Path(cfg.a).resolve() == Path(cfg.b).resolve():
        raise QualityError(f"A and B are the same dataset dir ({cfg.a}); a study compares two sets")
    out = Path(cfg.out)
    answers = out / STUDY_DIR / ANSWERS
    if answers.is_dir() and any(answers.iterdir()):
        # --force replaces the study; it must not take readers' answers with it
        raise QualityError(f"{answers} holds readers' answers; move them away before replacing this study")
    check_output_dir(out, cfg.overwrite, (KEY_JSON, STUDY_DIR), "reader study dir")


# ----------------------------------------------------------------------------- 2. draw
def _cases(root: Path, role: str, split: str | None, n: int):
    from medti.quality.images import read_cases

    ds, cases = read_cases(root, role=role, split=split)
    if len(cases) < n:
        where = f"in split {split!r}" if split else "in all"
        raise QualityError(f"{role} dataset {root}: {len(cases)} cases {where} (manifest.csv), fewer than the "
                           f"{n} pairs asked for; ask for at most {len(cases)}")
    return ds.info, cases


def _balanced_sides(n: int, rng: np.random.Generator) -> np.ndarray:
    """A on the left in n/2 pairs exactly (which pairs is random; for odd n, which side gets the extra too)."""
    lefts = n // 2 + (int(rng.integers(2)) if n % 2 else 0)
    return rng.permutation(np.arange(n) < lefts)


# ----------------------------------------------------------------------------- 3. read
def _load(root: Path, role: str, info, cases):
    from medti.data.dataset import DatasetError, load_image
    from medti.quality.images import ImageSet

    images = []
    for c in cases:
        try:
            img = load_image(c.path)
        except (DatasetError, OSError) as e:
            raise QualityError(f"{role} dataset {root}: case {c.case_id}: image {c.path} cannot be read ({e})") from e
        if images and img.shape != images[0].shape:
            raise QualityError(f"{role} dataset {root}: case {c.case_id}: image {c.path} is "
                               f"{img.shape[0]}x{img.shape[1]}, but case {cases[0].case_id} is "
                               f"{images[0].shape[0]}x{images[0].shape[1]}; a set holds one image size")
        images.append(img)
    arr = np.ascontiguousarray(np.moveaxis(np.stack(images), -1, 1))
    return ImageSet(Path(root), arr, {}, [c.case_id for c in cases], info.modality, tuple(info.channels))


def _grey(s) -> bool:
    return bool((s.images[:, 0] == s.images[:, 1]).all() and (s.images[:, 0] == s.images[:, 2]).all())


def _view(view: str, a_set, b_set) -> str:
    if view == "auto":
        if len(set(a_set.channels)) > 1:
            view = "channels"
        else:
            return "grey" if _grey(a_set) and _grey(b_set) else "rgb"
    if view == "grey":
        for role, s in (("A", a_set), ("B", b_set)):
            if not _grey(s):
                raise QualityError(f"{role} dataset {s.root}: view 'grey' needs images whose three channels are "
                                   "equal, and these differ; use view 'channels' or 'rgb'")
    if view == "channels" and len(a_set.channels) != 3:
        raise QualityError(f"A dataset {a_set.root}: channels is {list(a_set.channels)} (dataset.json); view "
                           "'channels' names one panel per image channel, so it needs three names")
    return view


def _panels(view: str, channels: list[str]) -> list[str]:
    if view == "channels":
        return [str(c) for c in channels]
    return ["colour"] if view == "rgb" else [str(channels[0]) if channels else "grey"]


# ----------------------------------------------------------------------------- 4. render and write
def _render(image: np.ndarray, view: str, display: int, resample: str) -> list[bytes]:
    """One PNG per panel of a 3 x H x W image, upscaled so that its long side is about ``display`` px.
    PIL writes no text chunks unless given some, so the files carry no name, date or software."""
    from PIL import Image

    from medti.data.dataset import encode_png

    hwc = np.moveaxis(image, 0, -1)
    planes = [hwc[..., c] for c in range(3)] if view == "channels" else [hwc[..., 0]] if view == "grey" else [hwc]
    h, w = hwc.shape[:2]
    long = max(h, w)
    out = []
    for p in planes:
        if long < display:
            if resample == "nearest":  # whole-pixel blocks: every image pixel the same number of screen pixels
                k = max(1, display // long)
                size, method = (w * k, h * k), Image.Resampling.NEAREST
            else:
                f = display / long
                size, method = (round(w * f), round(h * f)), Image.Resampling.BICUBIC
            p = np.asarray(Image.fromarray(np.ascontiguousarray(p)).resize(size, method))
        out.append(encode_png(np.ascontiguousarray(p)))
    return out


def _write(cfg: MakeConfig, a_set, b_set, names: tuple[str, str], a_left: np.ndarray, view: str,
           panels: list[str]) -> MakeResult:
    from medti.io import written_dir

    n = cfg.n
    ids = [pair_id(i, n) for i in range(n)]
    key_pairs = {pid: {"a_side": "left" if a_left[i] else "right", "a_case": a_set.case_ids[i],
                       "b_case": b_set.case_ids[i]} for i, pid in enumerate(ids)}

    def about(s, name: str) -> dict:  # which set was A and which B, for the report
        return {"dir": str(s.root.resolve()), "name": name, "split": cfg.split}

    key = {"format": KEY_FORMAT, "version": 1, "study_id": "", "question": cfg.question, "seed": cfg.seed,
           "n_pairs": n, "a": about(a_set, names[0]), "b": about(b_set, names[1]), "pairs": key_pairs}
    study_pairs = []
    for pid in ids:
        sides = {}
        for s in ("left", "right"):
            names = [f"{pid}-{s}.png"] if len(panels) == 1 else [f"{pid}-{s}-{k + 1}.png" for k in range(len(panels))]
            sides[s] = [f"{IMAGES}/{name}" for name in names]
        study_pairs.append({"id": pid, **sides})
    study = {"format": STUDY_FORMAT, "version": 1, "study_id": "", "question": cfg.question, "n_pairs": n,
             "modality": a_set.modality, "panels": panels, "resample": cfg.resample, "pairs": study_pairs}
    # the id ties answers to their key: a digest of both (so a re-made study with other draws gets another id);
    # a digest cannot be read back into sides
    digest = hashlib.sha256(json.dumps([key, study], sort_keys=True).encode()).hexdigest()[:16]
    key["study_id"] = study["study_id"] = digest

    with written_dir(Path(cfg.out)) as tmp:
        served = tmp / STUDY_DIR
        (served / IMAGES).mkdir(parents=True)
        for i, pair in enumerate(study_pairs):
            shown = {"left": a_set if a_left[i] else b_set, "right": b_set if a_left[i] else a_set}
            for s in ("left", "right"):
                pngs = _render(shown[s].images[i], view, cfg.display, cfg.resample)
                for rel, png in zip(pair[s], pngs, strict=True):
                    (served / rel).write_bytes(png)
        (served / STUDY_JSON).write_text(json.dumps(study, indent=1) + "\n", encoding="utf-8")
        (tmp / KEY_JSON).write_text(json.dumps(key, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    out = Path(cfg.out)
    return MakeResult(study=out / STUDY_DIR, key=str(out / KEY_JSON), study_id=digest, n_pairs=n,
                      a_left=int(a_left.sum()), panels=panels)
