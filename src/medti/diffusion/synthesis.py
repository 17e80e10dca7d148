"""Synthesis steps: generate, interpolate, inpaint, and reproducible synthetic datasets.

Each step is one function with one typed config and returns a result with ``.summary()``:

- :func:`generate_images` (``medti synth generate``): ``n`` images of one (composed) prompt,
  written as a dataset dir (``images/``, ``manifest.csv`` with prompt, seed and embedding
  versions per row, ``dataset.json``) plus ``grid.png``;
- :func:`interpolate_concepts` (``medti synth interpolate``): ``A:(1-w) AND B:w`` over a weight
  list, one strip PNG per seed with the same initial noise along the strip;
- :func:`inpaint_image` (``medti synth inpaint``): regenerate a masked region;
- :func:`synthesize` (``medti synth dataset``): a synthetic dataset from a YAML spec, in the
  same format as real data, resumable (a killed run continues where it stopped and ends with
  byte-identical files).

The sampler is :class:`medti.diffusion.guided.GuidedSampler`.  Errors a user can fix are
:class:`~medti.diffusion.guided.SynthesisError` (a ``DatasetError``) naming the key, file or value.

The dataset spec (YAML) is documented, with an example, in the README's "Synthetic dataset spec"
section; a test keeps that example loadable.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from medti._config import refuse_unknown
from medti.diffusion.guided import (
    SCHEDULERS,
    SynthesisError,
    check_guidance_interval,
    check_guidance_rescale,
    check_guidance_threshold,
)
from medti.diffusion.sampler_settings import SamplerSettings

SPEC_FORMAT = 1
WORK_SUFFIX = ".synth-work"
_KNOWN_CHANNELS = {"prostate_mri": ["T2W", "ADC", "DWI"], "cxr": ["grey", "grey", "grey"]}


# ----------------------------------------------------------------------------- shared
def _device_dtype(device: str | None, precision: str):
    import torch

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(dev)
    except (RuntimeError, TypeError):
        d = None
    if d is None or d.type not in ("cpu", "cuda"):
        raise SynthesisError(f"--device {dev!r}: use cpu or cuda (cuda:N for one GPU of several)")
    if d.type == "cuda" and not torch.cuda.is_available():
        raise SynthesisError(
            f"--device {dev}: no CUDA GPU is available here (torch {torch.__version__}); use --device cpu"
        )
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise SynthesisError(f"--device {dev}: this machine has {torch.cuda.device_count()} CUDA GPU(s), cuda:0 up")
    if precision not in ("auto", "no", "bf16", "fp16"):
        raise SynthesisError(f"precision {precision!r} must be auto, no, bf16 or fp16")
    if d.type == "cpu" or precision == "no":
        return dev, torch.float32
    if precision == "auto":
        return dev, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return dev, {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def load_sampler(
    base: str,
    embeddings,
    settings: SamplerSettings | None = None,
    *,
    device: str | None = None,
    precision: str = "auto",
    progress: bool = False,
):
    """Load a base and embedding files and return ``(GuidedSampler, warnings)``."""
    from medti._quiet import quiet_libraries
    from medti.diffusion.base import EMBEDDED, load_base
    from medti.diffusion.embeddings import load_embedding
    from medti.diffusion.guided import GuidedSampler

    quiet_libraries()
    settings = settings or SamplerSettings()
    if settings.scheduler not in SCHEDULERS:
        raise SynthesisError(f"--scheduler {settings.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    dev, dtype = _device_dtype(device, precision)
    b = load_base(base, device=dev, dtype=dtype, progress=progress)
    embs = [load_embedding(Path(p)) for p in embeddings]
    warns, same_recipe = [], False
    for p, e in zip(embeddings, embs, strict=True):
        h = e.metadata.get("base_model_hash", "")
        if h and not b.has_hash(h):
            trained_on = e.metadata.get("base_model", "?")
            warns.append(
                f"{p}: trained on base {trained_on} ({h}), sampling with {b.model_id} ({b.model_hash}); "
                "the concept may not transfer"
            )
            same_recipe |= trained_on == b.model_id and b.ref in EMBEDDED
    if same_recipe:  # said once, however many embeddings it concerns
        warns.append(
            f"(the same name, two hashes: two builds of the embedded {b.ref} base. A build made before 2026-11-30 has its "
            "tokens in another order, which changes no image; a build on another kind of device may differ slightly. "
            "See 'The embedded tiny base' in the README.)"
        )
    sampler = GuidedSampler(b, embs, **settings.sampler_kwargs(), progress=progress)
    return sampler, warns


def _resolve(sampler, prompt, negative, where: str):
    from medti.diffusion.prompts import PromptError

    try:
        return sampler.resolve(prompt, negative)
    except PromptError as e:
        raise SynthesisError(f"{where}: {e}") from e


def versions_text(versions: dict[str, str]) -> str:
    """What a manifest's ``embedding_version`` column holds: ``name:version;name:version``."""
    return ";".join(f"{k}:{v}" for k, v in versions.items())


def _modality_of(sampler) -> str:
    mods = {e.metadata.get("modality", "") for e in sampler.embeddings.values()} - {""}
    return mods.pop() if len(mods) == 1 else "unknown"


def _scale_for(size: int) -> int:
    return max(1, 128 // max(size, 1))


def _synthetic_pid(key: str, i: int) -> str:
    return f"SYN-{key[:8]}-{i:06d}"


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- generate
@dataclass
class GenerateConfig:
    base: str
    prompt: str
    out: Path
    embeddings: list[Path] = field(default_factory=list)
    negative: str | None = None
    n: int = 8
    seed: int = 0
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    device: str | None = None
    precision: str = "auto"
    overwrite: bool = False
    progress: bool = True


@dataclass
class GenerateResult:
    out: Path
    n: int
    grid: Path
    prompt: str
    embedding_versions: dict[str, str]
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        v = ", ".join(f"{k} {x}" for k, x in self.embedding_versions.items()) or "none"
        s = (
            f"wrote {self.n} images of {self.prompt!r} to {self.out} (manifest.csv, images/), grid {self.grid}; "
            f"embeddings: {v}; {self.seconds:.1f} s ({self.n / max(self.seconds, 1e-9):.2f} images/s)"
        )
        return "\n".join([*(f"warning: {w}" for w in self.warnings), s])


def generate_images(cfg: GenerateConfig) -> GenerateResult:
    """``cfg.n`` images of one (composed) prompt as a dataset dir with a grid."""
    from medti.data.dataset import DatasetInfo, DatasetWriter
    from medti.diffusion.sampling import save_grid

    t0 = time.time()
    if isinstance(cfg.n, bool) or not isinstance(cfg.n, int) or cfg.n < 1:
        raise SynthesisError(f"--n {cfg.n!r} must be an integer >= 1")
    _int("--seed", cfg.seed, 0)
    out = _check_out(cfg.out, cfg.overwrite)
    sampler, warns = load_sampler(
        cfg.base, cfg.embeddings, cfg.sampler, device=cfg.device, precision=cfg.precision, progress=cfg.progress
    )
    resolved = _resolve(sampler, cfg.prompt, cfg.negative, "--prompt/--negative")
    versions = sampler.embedding_versions(resolved)
    images = sampler.sample(resolved.prompt, n=cfg.n, seed=cfg.seed, negative=cfg.negative)
    modality = _modality_of(sampler)
    size = int(images.shape[1])
    key = _fingerprint([sampler.base.model_hash, resolved.prompt.format(), resolved.negative, cfg.seed, versions])
    info = DatasetInfo(
        modality=modality,
        channels=_KNOWN_CHANNELS.get(modality, ["R", "G", "B"]),
        findings=[],
        image_size=[size, int(images.shape[2])],
        source="synthetic",
        name=f"synthetic-{modality}",
        created_by={"step": "synth generate", "generator": "medti.diffusion.synthesis"},
        extra={"synthesis": _settings(sampler, cfg.seed, negative=cfg.negative or "")},
    )
    with DatasetWriter(out, info, overwrite=cfg.overwrite) as w:
        for i, img in enumerate(images):
            w.add(
                case_id=f"gen-{i:06d}", patient_id=_synthetic_pid(key, i), split="train", image=img,
                source="synthetic", prompt=resolved.prompt.format(), seed=cfg.seed + i,
                embedding_version=versions_text(versions),
            )
    grid = save_grid(images, out / "grid.png", cols=int(math.ceil(math.sqrt(len(images)))), scale=_scale_for(size))
    return GenerateResult(out, len(images), grid, resolved.prompt.format(), versions, time.time() - t0, warns)


def _settings(sampler, seed: int, **extra) -> dict[str, Any]:
    b = sampler.base
    return {
        "base": b.model_id,
        "base_hash": b.model_hash,
        "prediction_type": b.prediction_type,
        "scheduler": sampler.scheduler_name,
        "steps": sampler.steps,
        "guidance": sampler.guidance,
        "guidance_rescale": sampler.guidance_rescale,
        "guidance_interval": list(sampler.guidance_interval),
        "guidance_threshold": sampler.guidance_threshold,
        "batch": sampler.batch,
        "max_rows": sampler.max_rows,
        "seed": seed,
        "embeddings": {k: {"version": e.version, "vectors": e.n_vectors} for k, e in sampler.embeddings.items()},
        **extra,
    }


# ----------------------------------------------------------------------------- interpolate
@dataclass
class InterpolateConfig:
    base: str
    from_prompt: str
    to_prompt: str
    out: Path
    embeddings: list[Path] = field(default_factory=list)
    weights: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    seed: int = 0
    n_seeds: int = 1
    negative: str | None = None
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    device: str | None = None
    precision: str = "auto"
    progress: bool = True
    overwrite: bool = False  # replace an existing interpolation dir at --out


@dataclass
class InterpolateResult:
    out: Path
    strips: list[Path]
    overview: Path
    weights: list[float]
    seeds: list[int]
    prompts: list[str]
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        s = (
            f"wrote {len(self.strips)} interpolation strip(s) ({len(self.weights)} weights: "
            f"{', '.join(f'{w:g}' for w in self.weights)}) to {self.out}; overview {self.overview}; "
            f"{self.seconds:.1f} s\n  " + "\n  ".join(self.prompts)
        )
        return "\n".join([*(f"warning: {w}" for w in self.warnings), s])


def interpolate_concepts(cfg: InterpolateConfig) -> InterpolateResult:
    """One strip per seed of ``from:(1-w) AND to:w`` over ``cfg.weights``, fixed noise per strip."""
    from medti.diffusion.sampling import save_grid
    from medti.io import atomic_write_text, replace_dir, temp_dir_for

    t0 = time.time()
    weights = [float(w) for w in cfg.weights]
    if not weights or not all(math.isfinite(w) for w in weights):
        raise SynthesisError(f"--weights {cfg.weights!r}: give one or more finite numbers, e.g. 0,0.25,0.5,0.75,1")
    if isinstance(cfg.n_seeds, bool) or not isinstance(cfg.n_seeds, int) or cfg.n_seeds < 1:
        raise SynthesisError(f"--n-seeds {cfg.n_seeds!r} must be an integer >= 1")
    _int("--seed", cfg.seed, 0)
    out = _check_out(cfg.out, cfg.overwrite, INTERPOLATION_JSON, "medti interpolation dir")
    sampler, warns = load_sampler(
        cfg.base, cfg.embeddings, cfg.sampler, device=cfg.device, precision=cfg.precision, progress=cfg.progress
    )
    from medti.diffusion.prompts import PromptError

    try:
        prompts = sampler.interpolation_prompts(cfg.from_prompt, cfg.to_prompt, weights)
    except PromptError as e:
        raise SynthesisError(f"--from/--to: {e}") from e
    resolved = [_resolve(sampler, p, cfg.negative, f"interpolation prompt {p.format()!r}") for p in prompts]
    versions: dict[str, str] = {}
    for r in resolved:
        versions.update(sampler.embedding_versions(r))
    seeds = list(range(cfg.seed, cfg.seed + cfg.n_seeds))
    strips = sampler.interpolate(cfg.from_prompt, cfg.to_prompt, weights, seeds, negative=cfg.negative)
    # built under a temp name and renamed into place: a re-run never leaves an earlier run's strips beside its own
    final, out = out, temp_dir_for(out)
    scale = _scale_for(strips.shape[2])
    # columns labelled with the weight of --to, as in the reference work's healthy -> diseased figure
    labels = [f"{w:g}" for w in weights]
    title = f"{cfg.from_prompt} -> {cfg.to_prompt} (weight of {cfg.to_prompt})"
    paths = [
        save_grid(strips[k], out / f"strip-seed{s}.png", cols=len(weights), scale=scale, labels=labels, title=f"{title}, seed {s}")
        for k, s in enumerate(seeds)
    ]
    overview = save_grid(
        strips.reshape(-1, *strips.shape[2:]), out / "strips.png", cols=len(weights), scale=scale, labels=labels,
        title=f"{title}; one row per seed ({seeds[0]} to {seeds[-1]})",
    )
    meta = {
        "from": cfg.from_prompt,
        "to": cfg.to_prompt,
        "weights": weights,
        "seeds": seeds,
        "prompts": [p.format() for p in prompts],
        "negative": cfg.negative or "",
        "embedding_versions": versions,
        "strips": [p.name for p in paths],
        **_settings(sampler, cfg.seed),
    }
    atomic_write_text(out / INTERPOLATION_JSON, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    try:
        replace_dir(out, final)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    paths = [final / p.name for p in paths]
    return InterpolateResult(
        final, paths, final / overview.name, weights, seeds, [p.format() for p in prompts], time.time() - t0, warns
    )


# ----------------------------------------------------------------------------- inpaint
@dataclass
class InpaintConfig:
    base: str
    image: Path
    mask: Path
    prompt: str
    out: Path
    embeddings: list[Path] = field(default_factory=list)
    negative: str | None = None
    strength: float = 0.75
    seed: int = 0
    sampler: SamplerSettings = field(default_factory=SamplerSettings)  # inpainting denoises one image: batch 1
    feather: float | None = None  # pixels; None = image size / 32
    dilate: int = 1  # latent pixels
    resample: int = 2  # RePaint passes per step (regular checkpoints); 1 = plain masked denoising
    device: str | None = None
    precision: str = "auto"
    progress: bool = True
    overwrite: bool = False  # replace an existing --out


@dataclass
class InpaintResult:
    out: Path
    mask_pixels: int
    mean_change_inside: float  # mean |new - old| inside the mask (0-255)
    max_change_outside: int  # always 0: outside the mask the original pixels are kept
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        s = (
            f"wrote {self.out}: {self.mask_pixels} masked pixels regenerated (mean change "
            f"{self.mean_change_inside:.1f}/255), outside the mask max change {self.max_change_outside}; "
            f"{self.seconds:.1f} s"
        )
        return "\n".join([*(f"warning: {w}" for w in self.warnings), s])


def inpaint_image(cfg: InpaintConfig) -> InpaintResult:
    """Regenerate the masked region of one image (white = regenerate) conditioned on a prompt."""
    from medti.data.dataset import DatasetError, encode_png, load_image
    from medti.io import atomic_write_bytes

    t0 = time.time()
    for what, p in (("--image", cfg.image), ("--mask", cfg.mask)):
        if not Path(p).is_file():
            raise SynthesisError(f"{what} {p}: file not found")
    _int("--seed", cfg.seed, 0)
    out_path = Path(cfg.out)
    if out_path.suffix.lower() != ".png":
        raise SynthesisError(
            f"--out {out_path}: the result is written as PNG (lossless, so pixels outside the mask stay exactly "
            "the original's); give a name ending in .png"
        )
    if out_path.exists() and not cfg.overwrite:
        same = out_path.resolve() == Path(cfg.image).resolve()
        raise SynthesisError(
            f"--out {out_path} already exists{' and is the --image itself' if same else ''} (use --force to replace it)"
        )
    try:
        # a 16-bit or float image is refused (clipped, the pixels outside the mask could not be kept)
        image = load_image(Path(cfg.image))
    except DatasetError as e:
        raise SynthesisError(f"--image {e}") from e
    except Exception as e:
        raise SynthesisError(f"--image {cfg.image}: not a readable image ({e})") from e
    try:
        from PIL import Image

        with Image.open(cfg.mask) as im:
            mask = np.asarray(im.convert("L")) > 127
    except Exception as e:
        raise SynthesisError(f"--mask {cfg.mask}: not a readable image ({e})") from e
    if mask.shape != image.shape[:2]:
        raise SynthesisError(f"--mask {cfg.mask} is {mask.shape[1]}x{mask.shape[0]} but --image is {image.shape[1]}x{image.shape[0]}")
    if not mask.any():
        raise SynthesisError(f"--mask {cfg.mask} is empty (no pixel > 127): nothing to inpaint")
    sampler, warns = load_sampler(
        cfg.base, cfg.embeddings, replace(cfg.sampler, batch=1), device=cfg.device, precision=cfg.precision,
        progress=cfg.progress,
    )
    resolved = _resolve(sampler, cfg.prompt, cfg.negative, "--prompt/--negative")
    out = sampler.inpaint(
        image, mask, resolved.prompt, n=1, seed=cfg.seed, negative=cfg.negative, strength=cfg.strength,
        feather=cfg.feather, dilate=cfg.dilate, resample=cfg.resample,
    )[0]
    atomic_write_bytes(out_path, encode_png(out))
    diff = np.abs(out.astype(int) - image.astype(int))
    return InpaintResult(
        out_path, int(mask.sum()), float(diff[mask].mean()), int(diff[~mask].max(initial=0)), time.time() - t0, warns
    )


# ----------------------------------------------------------------------------- dataset spec
@dataclass
class ClassSpec:
    name: str
    prompt: str
    count: int
    labels: dict[str, int]
    negative: str | None = None


@dataclass
class SamplerSpec(SamplerSettings):
    negative: str | None = None


@dataclass
class DatasetSpec:
    base: str
    embeddings: list[Path]
    modality: str
    findings: list[str]
    classes: list[ClassSpec]
    channels: list[str] = field(default_factory=list)
    seed: int = 0
    split: str = "train"
    name: str = ""
    sampler: SamplerSpec = field(default_factory=SamplerSpec)

    @property
    def total(self) -> int:
        return sum(c.count for c in self.classes)


_TOP_KEYS = {"base", "embeddings", "modality", "channels", "findings", "classes", "seed", "split", "name", "sampler"}
_SAMPLER_KEYS = {f.name for f in fields(SamplerSpec)}
_CLASS_KEYS = {"name", "prompt", "count", "labels", "negative"}


def _unknown(where: str, keys, allowed: set[str]) -> None:
    refuse_unknown(where, keys, allowed, SynthesisError)


def _check_out(out, overwrite: bool, marker: str | None = None, kind: str = "medti dataset dir") -> Path:
    """The output dir, checked before any sampling (exists without --force? not what this step writes?);
    by default a dataset dir."""
    from medti.data.dataset import INFO, MANIFEST
    from medti.io import OutputError, check_output_dir

    try:
        check_output_dir(Path(out), overwrite, (marker,) if marker else (INFO, MANIFEST), kind)
    except OutputError as e:
        raise SynthesisError(str(e)) from None
    return Path(out)


INTERPOLATION_JSON = "interpolation.json"


def _int(where: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise SynthesisError(f"{where}: must be an integer >= {lo}, got {v!r}")
    return v


def _str(where: str, v, empty_ok: bool = False) -> str:
    if not isinstance(v, str) or (not empty_ok and not v.strip()):
        raise SynthesisError(f"{where}: must be a non-empty string, got {v!r}")
    return v


def load_spec(path: Path) -> DatasetSpec:
    """Read and check a dataset spec (see the module doc); errors name the key."""
    import yaml

    from medti.data.dataset import SPLITS

    path = Path(path)
    if not path.is_file():
        raise SynthesisError(f"spec {path}: file not found")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SynthesisError(f"spec {path}: not valid YAML ({e})") from e
    if not isinstance(d, dict):
        raise SynthesisError(f"spec {path}: must be a mapping of keys (base, embeddings, classes, ...)")
    w = f"spec {path}"
    _unknown(w, d, _TOP_KEYS)
    for k in ("base", "modality", "findings", "classes"):
        if k not in d:
            raise SynthesisError(f"{w}: missing required key {k!r}")
    base = _str(f"{w}: base", d["base"])
    embs = d.get("embeddings") or []
    if isinstance(embs, str):
        embs = [embs]
    if not isinstance(embs, list) or not all(isinstance(e, str) and e for e in embs):
        raise SynthesisError(f"{w}: embeddings must be a list of file paths, got {embs!r}")
    emb_paths = []
    for i, e in enumerate(embs):
        p = Path(e).expanduser()
        p = p if p.is_absolute() else path.parent / p
        if not p.is_file():
            raise SynthesisError(f"{w}: embeddings[{i}] {e!r}: file not found (looked at {p})")
        emb_paths.append(p)
    modality = _str(f"{w}: modality", d["modality"])
    findings = d["findings"] if d["findings"] is not None else []
    if not isinstance(findings, list) or not all(isinstance(f, str) and f for f in findings):
        raise SynthesisError(f"{w}: findings must be a list of finding names, got {findings!r}")
    if len(set(findings)) != len(findings):
        raise SynthesisError(f"{w}: findings {findings!r} has duplicates")
    channels = d.get("channels", _KNOWN_CHANNELS.get(modality))
    if channels is None:
        raise SynthesisError(f"{w}: missing key 'channels' (the meaning of R, G, B) for modality {modality!r}")
    if not isinstance(channels, list) or len(channels) != 3 or not all(isinstance(c, str) for c in channels):
        raise SynthesisError(f"{w}: channels must be a list of 3 names (R, G, B), got {channels!r}")
    seed = _int(f"{w}: seed", d.get("seed", 0), 0)
    split = d.get("split", "train")
    if split not in SPLITS:
        raise SynthesisError(f"{w}: split {split!r} must be one of {', '.join(SPLITS)}")
    name = _str(f"{w}: name", d.get("name") or f"synthetic-{modality}")
    s = d.get("sampler") or {}
    if not isinstance(s, dict):
        raise SynthesisError(f"{w}: sampler must be a mapping ({', '.join(sorted(_SAMPLER_KEYS))})")
    _unknown(f"{w}: sampler", s, _SAMPLER_KEYS)
    sampler = SamplerSpec()
    if "scheduler" in s:
        if s["scheduler"] not in SCHEDULERS:
            raise SynthesisError(f"{w}: sampler.scheduler {s['scheduler']!r} must be one of {', '.join(SCHEDULERS)}")
        sampler.scheduler = s["scheduler"]
    for k in ("steps", "batch", "max_rows"):
        if k in s:
            setattr(sampler, k, _int(f"{w}: sampler.{k}", s[k], 1))
    if "guidance" in s:
        g = s["guidance"]
        if isinstance(g, bool) or not isinstance(g, int | float) or not math.isfinite(g):
            raise SynthesisError(f"{w}: sampler.guidance must be a number, got {g!r}")
        sampler.guidance = float(g)
    for key, check, rule in (
        ("guidance_rescale", check_guidance_rescale, "a number from 0 to 1"),
        ("guidance_interval", lambda v: check_guidance_interval(v if isinstance(v, list) else None),
         "a list [start, stop] of fractions of the steps, 0 <= start < stop <= 1"),
        ("guidance_threshold", check_guidance_threshold, "a number from 0 up to 1 (not 1)"),
    ):
        if key in s:
            try:
                setattr(sampler, key, check(s[key]))
            except SynthesisError:
                raise SynthesisError(f"{w}: sampler.{key} must be {rule}, got {s[key]!r}") from None
    if s.get("negative") is not None:
        sampler.negative = _str(f"{w}: sampler.negative", s["negative"], empty_ok=True)
    classes_raw = d["classes"]
    if not isinstance(classes_raw, list) or not classes_raw:
        raise SynthesisError(f"{w}: classes must be a non-empty list of {{name, prompt, count, labels}}")
    classes: list[ClassSpec] = []
    for i, c in enumerate(classes_raw):
        cw = f"{w}: classes[{i}]"
        if not isinstance(c, dict):
            raise SynthesisError(f"{cw}: must be a mapping with prompt, count, labels")
        _unknown(cw, c, _CLASS_KEYS)
        for k in ("prompt", "count"):
            if k not in c:
                raise SynthesisError(f"{cw}: missing required key {k!r}")
        cname = _str(f"{cw}.name", c.get("name") or f"class{i}")
        cw = f"{w}: classes[{i}] ({cname})"
        labels = c.get("labels") or {}
        if not isinstance(labels, dict):
            raise SynthesisError(f"{cw}.labels: must be a mapping finding -> 0/1, got {labels!r}")
        unknown = sorted(set(labels) - set(findings))
        if unknown:
            raise SynthesisError(f"{cw}.labels: {unknown} not among findings {findings}")
        missing = [f for f in findings if f not in labels]
        if missing:
            raise SynthesisError(f"{cw}.labels: missing a value for finding(s) {missing}")
        for f, v in labels.items():
            if isinstance(v, bool) or v not in (0, 1):
                raise SynthesisError(f"{cw}.labels.{f}: must be 0 or 1, got {v!r}")
        neg = c.get("negative")
        classes.append(
            ClassSpec(
                name=cname,
                prompt=_str(f"{cw}.prompt", c["prompt"]),
                count=_int(f"{cw}.count", c["count"], 1),
                labels={f: int(labels[f]) for f in findings},
                negative=_str(f"{cw}.negative", neg, empty_ok=True) if neg is not None else None,
            )
        )
    names = [c.name for c in classes]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SynthesisError(f"{w}: class name(s) {dup} given more than once")
    return DatasetSpec(
        base=base, embeddings=emb_paths, modality=modality, findings=list(findings), classes=classes,
        channels=list(channels), seed=seed, split=split, name=name, sampler=sampler,
    )


# ----------------------------------------------------------------------------- dataset step
@dataclass
class SynthesisConfig:
    spec: Path
    out: Path
    overwrite: bool = False
    restart: bool = False  # discard an unfinished run's work dir instead of resuming it
    stop_after: int | None = None  # stop (as if killed) after this many chunks - for resume tests
    validate: bool = True  # check the finished dataset (medti data validate rules)
    device: str | None = None
    precision: str = "auto"
    progress: bool = True


@dataclass
class SynthesisResult:
    out: Path
    n: int
    counts: dict[str, int]
    generated: int  # images generated by this run (the rest came from an interrupted run)
    seconds: float
    images_per_s: float
    fingerprint: str
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        per = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        resumed = "" if self.generated == self.n else f" ({self.n - self.generated} from the interrupted run)"
        s = (
            f"wrote synthetic dataset {self.out}: {self.n} images ({per}); generated {self.generated}{resumed} "
            f"in {self.seconds:.1f} s, {self.images_per_s:.2f} images/s"
        )
        return "\n".join([*(f"warning: {w}" for w in self.warnings), s])


def work_dir(out: Path) -> Path:
    """Where an unfinished :func:`synthesize` run keeps its chunks (next to the output)."""
    out = Path(out)
    return out.parent / f".{out.name}{WORK_SUFFIX}"


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def synthesize(cfg: SynthesisConfig) -> SynthesisResult:
    """Generate the dataset a spec describes; resumable, byte-identical to an uninterrupted run.
    One run at a time per output (a second fails at once, naming the lock)."""
    from medti.io import output_lock

    with output_lock(Path(cfg.out), "synth dataset"):
        return _synthesize(cfg)


def _synthesize(cfg: SynthesisConfig) -> SynthesisResult:
    from tqdm.auto import tqdm

    from medti.data.dataset import DatasetInfo, DatasetWriter
    from medti.io import atomic_write_bytes, atomic_write_text

    t0 = time.time()
    spec = load_spec(Path(cfg.spec))
    out = Path(cfg.out)
    _check_out(out, cfg.overwrite)
    if cfg.stop_after is not None and (isinstance(cfg.stop_after, bool) or cfg.stop_after < 1):
        raise SynthesisError(f"stop_after={cfg.stop_after!r} must be an integer >= 1")
    sp = spec.sampler
    sampler, warns = load_sampler(spec.base, spec.embeddings, sp, device=cfg.device, precision=cfg.precision, progress=False)
    resolved = []
    for i, c in enumerate(spec.classes):
        neg = c.negative if c.negative is not None else sp.negative
        resolved.append(_resolve(sampler, c.prompt, neg, f"spec {cfg.spec}: classes[{i}] ({c.name}).prompt"))
    versions = [versions_text(sampler.embedding_versions(r)) for r in resolved]
    plan = [(ci, spec.seed + i) for i, ci in enumerate(ci for ci, c in enumerate(spec.classes) for _ in range(c.count))]
    size = sampler.base.image_size
    b = sampler.base
    key_obj = {
        "format": SPEC_FORMAT,
        "base_hash": b.model_hash,
        "device": str(b.unet.device.type),
        "dtype": str(b.unet.dtype),
        "embeddings": {k: e.version for k, e in sampler.embeddings.items()},
        "sampler": asdict(sp),
        "seed": spec.seed,
        "split": spec.split,
        "name": spec.name,
        "modality": spec.modality,
        "channels": spec.channels,
        "findings": spec.findings,
        "classes": [asdict(c) for c in spec.classes],
        "size": size,
    }
    fp = _fingerprint(key_obj)

    wd = work_dir(out)
    if cfg.restart and wd.exists():
        shutil.rmtree(wd)
    prog = wd / "progress.json"
    chunk = sp.batch
    n_chunks = math.ceil(len(plan) / chunk)
    if prog.exists():
        try:
            old = json.loads(prog.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("fingerprint") != fp:
            raise SynthesisError(
                f"{wd} holds an unfinished run with other settings (spec, base, embeddings, sampler or "
                "device differ); run with --restart to discard it"
            )
    else:
        atomic_write_text(
            prog, json.dumps({"fingerprint": fp, "total": len(plan), "chunk": chunk, "chunks": n_chunks}, indent=2) + "\n"
        )

    def chunk_path(k: int) -> Path:
        return wd / f"chunk-{k:06d}.npy"

    done = [k for k in range(n_chunks) if chunk_path(k).exists()]
    done_images = sum(min(chunk, len(plan) - k * chunk) for k in done)
    generated, made, gen_secs = 0, 0, 0.0
    bar = tqdm(total=len(plan), initial=done_images, desc="synth dataset", unit="img", disable=not cfg.progress)
    try:
        for k in range(n_chunks):
            if chunk_path(k).exists():
                continue
            if cfg.stop_after is not None and made >= cfg.stop_after:
                raise SynthesisError(
                    f"stopped after {made} chunk(s) (stop_after), {done_images + generated}/{len(plan)} images done; "
                    f"run again to resume from {wd}"
                )
            part = plan[k * chunk : (k + 1) * chunk]
            tg = time.time()
            imgs = sampler.sample_many([(resolved[ci], s) for ci, s in part])
            gen_secs += time.time() - tg
            atomic_write_bytes(chunk_path(k), _npy_bytes(imgs))
            generated += len(part)
            made += 1
            bar.update(len(part))
    finally:
        bar.close()

    info = DatasetInfo(
        modality=spec.modality,
        channels=spec.channels,
        findings=spec.findings,
        image_size=[size, size],
        source="synthetic",
        name=spec.name,
        created_by={"step": "synth dataset", "generator": "medti.diffusion.synthesis"},
        extra={
            "synthesis": {
                **_settings(sampler, spec.seed, negative=sp.negative or ""),
                "fingerprint": fp,
                "embedding_files": {k: Path(p).name for k, p in zip(sampler.embeddings, spec.embeddings, strict=True)},
                "classes": [
                    {"name": c.name, "prompt": r.prompt.format(), "count": c.count, "labels": c.labels,
                     "negative": c.negative if c.negative is not None else (sp.negative or "")}
                    for c, r in zip(spec.classes, resolved, strict=True)
                ],
            }
        },
    )
    counts = {c.name: c.count for c in spec.classes}
    with DatasetWriter(out, info, overwrite=cfg.overwrite) as w:
        i = 0
        for k in range(n_chunks):
            try:
                imgs = np.load(chunk_path(k), allow_pickle=False)
            except (OSError, ValueError) as e:
                raise SynthesisError(f"{chunk_path(k)}: unreadable chunk ({e}); run with --restart") from e
            for img in imgs:
                ci, seed = plan[i]
                c = spec.classes[ci]
                w.add(
                    case_id=f"syn-{i:06d}", patient_id=_synthetic_pid(fp, i), split=spec.split, image=img,
                    labels=c.labels, source="synthetic", prompt=resolved[ci].prompt.format(), seed=seed,
                    embedding_version=versions[ci],
                )
                i += 1
        if i != len(plan):
            raise SynthesisError(f"{wd}: chunks hold {i} images, the spec asks for {len(plan)}; run with --restart")
    shutil.rmtree(wd, ignore_errors=True)
    if cfg.validate:
        from medti.data.validate import require_valid

        require_valid(out, min_per_class=0)
    secs = time.time() - t0
    return SynthesisResult(
        out=out, n=len(plan), counts=counts, generated=generated, seconds=secs,
        images_per_s=generated / gen_secs if gen_secs > 0 else 0.0, fingerprint=fp, warnings=warns,
    )
