"""The pyfunc models ``mlflow models serve`` answers with: small adapters over medti's own steps.

- :class:`EmbeddingModel`: concept embeddings of one base (artifacts keyed by concept name; ``model_config``
  pins the base reference and the weights hash they were trained on).  A request is prompts (column
  ``prompt``, composition allowed: ``healthy:30% AND csPCa:70%``) and params ``n, seed, steps, guidance,
  scheduler, negative_prompt``; the answer is one row per image with a base64 PNG.  Image ``i`` of a prompt
  uses seed ``seed + i`` and the batches of ``medti synth generate``, so it is that command's image, and the
  same request gives the same bytes on the CPU.
- :class:`ClassifierModel`: an exported classifier ``.onnx``; base64 PNGs in, one probability column per target.

Every bad request is refused before any work, as an ``MlflowException`` with ``INVALID_PARAMETER_VALUE`` that
names the field, the row and the limit: the scoring server answers it with HTTP 400 and keeps serving.
(Any other exception from ``predict`` also becomes a 400, but with a generic message.)

Models are saved *from code* (a two-line file that imports the class here), never as pickles: MLflow 3 will
not unpickle a model unless told to, and the served code is the installed medti's.  ``*_model_kwargs`` yield
the arguments ``mlflow.pyfunc.save_model`` and ``mlflow.pyfunc.log_model`` share, so a registry logs exactly
what :func:`save_embedding_model` / :func:`save_classifier_model` save.
"""

from __future__ import annotations

import base64
import contextlib
import io
import math
import numbers
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

#: Request limits of an embedding model (``model_config["limits"]`` overrides any of them).
DEFAULT_LIMITS: dict[str, float] = {
    "n": 16,  # images per prompt
    "steps": 150,  # denoising steps
    "guidance": 30.0,  # largest guidance scale (the smallest is above 0)
    "prompt_chars": 1000,  # characters of a prompt or the negative prompt
    "images": 32,  # prompts x n in one request
}
#: Request params and their types; the defaults, except ``guidance``, which comes from the model's config
#: (7.5 for SD-size bases, 3.0 for the tiny one).
PARAMS: dict[str, str] = {"n": "long", "seed": "long", "steps": "long", "guidance": "double", "scheduler": "string",
                          "negative_prompt": "string"}
PARAM_DEFAULTS: dict[str, Any] = {"n": 4, "seed": 0, "steps": 30, "scheduler": "dpmpp", "negative_prompt": ""}
CLASSIFIER_ARTIFACT = "model"  # the artifact key of a classifier's .onnx
CLASSIFIER_MAX_IMAGES = 1024
_MAX_SEED = 2**63 - 1
_MODEL_CODE = "from mlflow.models import set_model\n\nfrom medti.tracking.serving import {cls}\n\nset_model({cls}())\n"


def _invalid(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _requirements() -> list[str]:
    # explicit, so mlflow never infers them (which loads the model in a subprocess)
    from medti import __version__

    return [f"medti=={__version__}"]


@contextlib.contextmanager
def _model_code(cls: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="medti-model-code-") as d:
        path = Path(d) / f"medti_{cls.removesuffix('Model').lower()}_model.py"
        path.write_text(_MODEL_CODE.format(cls=cls))
        yield path


def _save(path: Path, kwargs_of: contextlib.AbstractContextManager, overwrite: bool) -> Path:
    """``mlflow.pyfunc.save_model`` into a temp dir beside ``path``, renamed onto it when complete."""
    from medti.io import written_dir

    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise MlflowException(f"model dir {path} already exists (replace it with overwrite=True)",
                              error_code=INVALID_PARAMETER_VALUE)
    with written_dir(path, permissions=True) as tmp, kwargs_of as kw:
        mlflow.pyfunc.save_model(str(tmp), **kw)
    return path


def _column(model_input: Any, name: str) -> list[Any]:
    """The values of column ``name`` of a DataFrame, a dict of lists, or a plain list / string."""
    if isinstance(model_input, pd.DataFrame | Mapping):
        if name not in model_input:
            cols = list(model_input.columns if isinstance(model_input, pd.DataFrame) else model_input)
            raise _invalid(f"the input has no {name!r} column (columns: {cols}); send {{'inputs': {{'{name}': [...]}}}}")
        model_input = model_input[name]
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, pd.Series | np.ndarray | list | tuple):
        values = list(model_input)
        # mlflow's schema enforcement turns a dict of lists into one row holding the list
        return list(values[0]) if len(values) == 1 and isinstance(values[0], list | tuple | np.ndarray) else values
    raise _invalid(f"{name}: expected a list of strings, got {type(model_input).__name__}")


# ----------------------------------------------------------------------------- embedding model
#: An embedding model's answer: one row per image, ``image`` a base64 PNG.
OUTPUTS = {"prompt": "string", "index": "long", "seed": "long", "steps": "long", "guidance": "double",
           "scheduler": "string", "image": "string"}


def embedding_signature(guidance_default: float) -> ModelSignature:
    """Prompts in, one row per image out; the request params with their defaults."""
    defaults = {**PARAM_DEFAULTS, "guidance": float(guidance_default)}
    return ModelSignature(inputs=Schema([ColSpec("string", "prompt")]),
                          outputs=Schema([ColSpec(t, n) for n, t in OUTPUTS.items()]),
                          params=ParamSchema([ParamSpec(k, t, defaults[k]) for k, t in PARAMS.items()]))


def _embedding_config(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """An embedding model's ``model_config``, checked, with every limit filled in."""
    raw = dict(raw or {})
    missing = [k for k in ("base", "base_hash", "guidance") if raw.get(k) in (None, "")]
    if missing:
        raise MlflowException(f"embedding model config: {', '.join(missing)} missing (it has {sorted(raw)})")
    limits = dict(raw.get("limits") or {})
    if unknown := sorted(set(limits) - set(DEFAULT_LIMITS)):
        raise _invalid(f"embedding model limits {unknown}: unknown; the limits are {sorted(DEFAULT_LIMITS)}")
    limits = {**DEFAULT_LIMITS, **limits}
    for k, v in limits.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0:
            raise _invalid(f"embedding model limit {k}={v!r} must be a number above 0")
    g = raw["guidance"]
    if isinstance(g, bool) or not isinstance(g, numbers.Real) or not 0 < g <= limits["guidance"]:
        raise _invalid(f"embedding model guidance={g!r} must be above 0 and at most {limits['guidance']:g}")
    return {"base": str(raw["base"]), "base_hash": str(raw["base_hash"]), "guidance": float(g), "limits": limits}


def _integer(name: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not lo <= v <= hi:
        raise _invalid(f"{name}={v!r}: must be an integer from {lo} to {hi}")
    return int(v)


def _request(params: Mapping[str, Any] | None, cfg: dict[str, Any], n_prompts: int) -> dict[str, Any]:
    """The request's params, checked against the model's limits, defaults filled in."""
    from medti.diffusion.guided import SCHEDULERS

    p = dict(params or {})
    if unknown := sorted(set(p) - set(PARAMS)):  # (mlflow drops unknown params before predict, with a warning)
        raise _invalid(f"params {unknown}: unknown; the params are {list(PARAMS)}")
    defaults = {**PARAM_DEFAULTS, "guidance": cfg["guidance"]}
    p = {k: defaults[k] if p.get(k) is None else p[k] for k in defaults}
    lim = cfg["limits"]
    n = _integer("n", p["n"], 1, int(lim["n"]))
    steps = _integer("steps", p["steps"], 1, int(lim["steps"]))
    seed = _integer("seed", p["seed"], 0, _MAX_SEED - n)
    g = p["guidance"]
    if isinstance(g, bool) or not isinstance(g, numbers.Real) or not math.isfinite(g) or not 0 < g <= lim["guidance"]:
        raise _invalid(f"guidance={g!r}: must be a number above 0 and at most {lim['guidance']:g}")
    if p["scheduler"] not in SCHEDULERS:
        raise _invalid(f"scheduler={p['scheduler']!r}: must be one of {', '.join(SCHEDULERS)}")
    neg = p["negative_prompt"]
    if not isinstance(neg, str) or len(neg) > lim["prompt_chars"]:
        raise _invalid(f"negative_prompt: must be a string of at most {int(lim['prompt_chars'])} characters")
    if n_prompts * n > lim["images"]:
        raise _invalid(f"{n_prompts} prompt(s) x n={n} is {n_prompts * n} images; a request may ask for at most "
                       f"{int(lim['images'])} (images limit): send fewer prompts or a smaller n")
    return {"n": n, "seed": seed, "steps": steps, "guidance": float(g), "scheduler": p["scheduler"], "negative": neg}


def _prompts(model_input: Any, limit: float) -> list[str]:
    values = _column(model_input, "prompt")
    if not values:
        raise _invalid("prompt: the request has no prompts; send at least one")
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise _invalid(f"prompt (row {i}): must be a string, got {type(v).__name__}")
        if not v.strip():
            raise _invalid(f"prompt (row {i}) is empty; write a prompt, e.g. 'healthy:30% AND csPCa:70%'")
        if len(v) > limit:
            raise _invalid(f"prompt (row {i}) is {len(v)} characters; the limit is {int(limit)} (prompt_chars)")
    return values


class EmbeddingModel(mlflow.pyfunc.PythonModel):
    """Concept embeddings of one base, served: prompts in, base64 PNGs out (see the module doc)."""

    def load_context(self, context) -> None:
        # Every torch call of this model runs on one thread of its own. A server answers requests on pool threads,
        # and each thread that runs torch gets its own OpenMP team; with more teams than cores, OpenMP stops
        # spinning between parallel regions and the UNet's many small ops ran about 2x slower on 2 cores
        # (docs/benchmarks.md, mlflow-tracking-serving). One thread also serialises requests, since the model
        # and its tokenizer are not thread-safe.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medti-sampler")
        self._cfg = _embedding_config(context.model_config)
        self._sampler = self._worker.submit(self._load, self._cfg, context.artifacts).result()

    @staticmethod
    def _load(cfg: dict[str, Any], artifacts: Mapping[str, str]):
        from medti.diffusion.synthesis import load_sampler

        names = sorted(artifacts)
        try:  # the device is cuda when one is available, else the CPU
            sampler, _ = load_sampler(cfg["base"], [Path(artifacts[k]) for k in names])
        except Exception as e:
            raise MlflowException(f"embedding model: cannot load base {cfg['base']!r} with embeddings {names}: {e}") from e
        base = sampler.base
        if not base.has_hash(cfg["base_hash"]):
            raise MlflowException(
                f"embedding model: its embeddings were trained on base {cfg['base']!r} with hash {cfg['base_hash']}, but "
                f"base {cfg['base']!r} here ({base.path or base.model_id}) has hash {base.model_hash}: serve it where the "
                "same base weights are installed, or register embeddings trained on this base"
            )
        if sorted(sampler.embeddings) != names:
            raise MlflowException(f"embedding model: artifacts {names} hold concepts {sorted(sampler.embeddings)}; "
                                  "each artifact key must be its embedding's concept name")
        return sampler

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        # 1. Check the whole request; nothing is sampled before every field passes
        prompts = _prompts(model_input, self._cfg["limits"]["prompt_chars"])
        req = _request(params, self._cfg, len(prompts))
        n, seed = req["n"], req["seed"]

        def sample() -> list[np.ndarray]:
            resolved = [self._resolve(i, p, req["negative"]) for i, p in enumerate(prompts)]
            # 2. Sample each prompt as `medti synth generate` does, with this request's settings
            sampler = self._request_sampler(req)
            return [sampler.sample_many([(r, seed + i) for i in range(n)]) for r in resolved]

        images = self._worker.submit(sample).result()  # on the model's own thread (see load_context)
        # 3. One row per image
        from medti.data.dataset import encode_png

        rows = [
            {"prompt": p, "index": i, "seed": seed + i, "steps": req["steps"], "guidance": req["guidance"],
             "scheduler": req["scheduler"], "image": base64.b64encode(encode_png(img)).decode("ascii")}
            for p, imgs in zip(prompts, images, strict=True)
            for i, img in enumerate(imgs)
        ]
        return pd.DataFrame(rows, columns=list(OUTPUTS))

    def _resolve(self, row: int, prompt: str, negative: str):
        from medti.diffusion.prompts import PromptError

        try:
            return self._sampler.resolve(prompt, negative or None)
        except PromptError as e:
            field = "negative_prompt" if str(e).startswith("negative prompt") else f"prompt (row {row})"
            raise _invalid(f"{field}: {e}") from None

    def _request_sampler(self, req: dict[str, Any]):
        from dataclasses import replace

        from medti.diffusion.guided import GuidedSampler
        from medti.diffusion.sampler_settings import SamplerSettings

        s = replace(SamplerSettings(), scheduler=req["scheduler"], steps=req["steps"], guidance=req["guidance"])
        return GuidedSampler(self._sampler.base, self._sampler.embeddings.values(), **s.sampler_kwargs())


@contextlib.contextmanager
def embedding_model_kwargs(
    embeddings: Mapping[str, Path], base: str, base_hash: str, guidance: float,
    limits: Mapping[str, float] | None = None,
) -> Iterator[dict[str, Any]]:
    """The arguments ``mlflow.pyfunc.save_model`` / ``log_model`` take for an embedding model, valid inside
    the block (the model-code file lives in a temp dir)::

        with embedding_model_kwargs(embs, "tiny", h, 3.0) as kw:
            mlflow.pyfunc.log_model(name="model", registered_model_name="csPCa", **kw)

    ``embeddings``: ``{concept: .safetensors}``, each embedding of that concept and, where it records one,
    trained on ``base_hash``."""
    from medti.diffusion.embeddings import load_embedding

    cfg = _embedding_config({"base": base, "base_hash": base_hash, "guidance": guidance, "limits": dict(limits or {})})
    if not embeddings:
        raise _invalid("an embedding model needs at least one embedding")
    for name, path in embeddings.items():
        emb = load_embedding(Path(path))
        if emb.concept != name:
            raise _invalid(f"embedding {path}: holds concept {emb.concept!r}, registered as {name!r}; use its concept name")
        trained_on = emb.metadata.get("base_model_hash", "")
        if trained_on and trained_on != base_hash:
            raise _invalid(f"embedding {path}: trained on base hash {trained_on}, not {base_hash}; "
                           "all embeddings of a model must share the base they were trained on")
    with _model_code("EmbeddingModel") as code:
        yield {
            "python_model": str(code),
            "artifacts": {name: str(Path(p).resolve()) for name, p in embeddings.items()},
            "model_config": cfg,
            "signature": embedding_signature(cfg["guidance"]),
            "pip_requirements": _requirements(),
        }


def save_embedding_model(
    path: Path, embeddings: Mapping[str, Path], base: str, base_hash: str, guidance: float, *,
    limits: Mapping[str, float] | None = None, overwrite: bool = False,
) -> Path:
    """Save an embedding model dir (``mlflow models serve -m PATH``); see :func:`embedding_model_kwargs`."""
    return _save(Path(path), embedding_model_kwargs(embeddings, base, base_hash, guidance, limits), overwrite)


# ----------------------------------------------------------------------------- classifier model
def classifier_signature(targets: list[str]) -> ModelSignature:
    """Base64 PNGs in (column ``image``), one probability column per target out."""
    return ModelSignature(inputs=Schema([ColSpec("string", "image")]),
                          outputs=Schema([ColSpec("double", t) for t in targets]))


def _decode_images(model_input: Any, spec, limit: int) -> np.ndarray:
    """uint8 N x 3 x H x W from base64 PNGs of the classifier's size and channels."""
    from PIL import Image

    values = _column(model_input, "image")
    if not 1 <= len(values) <= limit:
        raise _invalid(f"image: a request holds 1 to {limit} images, got {len(values)}")
    h, w = spec.image_size
    grey = len(set(spec.channels)) == 1  # a grey PNG is the same picture only when every channel is the same
    want = f"a base64 PNG of {h}x{w} pixels, {'grey or ' if grey else ''}RGB (channels {'/'.join(spec.channels)})"
    out = np.empty((len(values), 3, h, w), np.uint8)
    for i, v in enumerate(values):
        where = f"image (row {i})"
        if not isinstance(v, str):
            raise _invalid(f"{where}: expected {want}, got {type(v).__name__}")
        try:
            with Image.open(io.BytesIO(base64.b64decode(v, validate=True))) as im:
                if im.format != "PNG" or im.size != (w, h) or im.mode not in (("L", "RGB") if grey else ("RGB",)):
                    raise _invalid(f"{where} is a {im.size[1]}x{im.size[0]} {im.mode} {im.format}; the classifier takes {want}")
                out[i] = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
        except MlflowException:
            raise
        except Exception as e:  # binascii.Error, PIL's UnidentifiedImageError, a truncated file...
            raise _invalid(f"{where}: not {want} ({type(e).__name__}: {e})") from None
    return out


class ClassifierModel(mlflow.pyfunc.PythonModel):
    """An exported medti classifier, served: base64 PNGs in, probabilities per target out."""

    def load_context(self, context) -> None:
        from medti.classify.onnx import Predictor

        self._predictor = Predictor(Path(context.artifacts[CLASSIFIER_ARTIFACT]))
        self._limit = int((context.model_config or {}).get("max_images", CLASSIFIER_MAX_IMAGES))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        images = _decode_images(model_input, self._predictor.image_spec, self._limit)
        return pd.DataFrame(self._predictor(images), columns=self._predictor.targets)


@contextlib.contextmanager
def classifier_model_kwargs(onnx_path: Path, max_images: int = CLASSIFIER_MAX_IMAGES) -> Iterator[dict[str, Any]]:
    """The arguments ``mlflow.pyfunc.save_model`` / ``log_model`` take for a classifier exported by
    :func:`medti.classify.onnx.export_onnx` (used as :func:`embedding_model_kwargs` is)."""
    from medti.classify import ClassifierError
    from medti.classify.onnx import read_onnx_meta

    try:
        meta = read_onnx_meta(Path(onnx_path))
    except ClassifierError as e:
        raise _invalid(str(e)) from None
    with _model_code("ClassifierModel") as code:
        yield {
            "python_model": str(code),
            "artifacts": {CLASSIFIER_ARTIFACT: str(Path(onnx_path).resolve())},
            "model_config": {"max_images": int(max_images)},
            "signature": classifier_signature(list(meta["targets"])),
            "pip_requirements": _requirements(),
        }


def save_classifier_model(path: Path, onnx_path: Path, *, max_images: int = CLASSIFIER_MAX_IMAGES,
                          overwrite: bool = False) -> Path:
    """Save a classifier model dir (``mlflow models serve -m PATH``); see :func:`classifier_model_kwargs`."""
    return _save(Path(path), classifier_model_kwargs(onnx_path, max_images), overwrite)
