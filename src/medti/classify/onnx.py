"""ONNX: the form a classifier is registered and served in, and the predictor every consumer reads through.

``export_onnx`` writes the probability model (normalisation and sigmoid inside: [0, 1] images in,
probabilities out) with a dynamic batch and the classifier's ``classifier.json`` in the model's metadata
(``medti_classifier``), so an ONNX file carries its targets, image spec and thresholds and can be checked
before use. ``open_predictor`` reads either form: a classifier dir (torch) or an ``.onnx`` file
(onnxruntime, CPU); both give the same probabilities within 1e-4.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medti.classify import ClassifierError
from medti.classify.model import KIND

META_KEY = "medti_classifier"
INPUT, OUTPUT = "image", "probability"
OPSET = 17


@dataclass
class ExportConfig:
    model: Path  # classifier dir
    out: Path  # .onnx file
    overwrite: bool = False


@dataclass
class ExportResult:
    out: Path
    targets: list[str]
    max_abs_diff: float  # torch vs onnxruntime on a check batch
    seconds: float

    def summary(self) -> str:
        return (
            f"wrote {self.out} ({self.out.stat().st_size / 1e6:.1f} MB; targets {', '.join(self.targets)}); "
            f"onnxruntime matches torch within {self.max_abs_diff:.1e} on a check batch"
        )


def export_onnx(cfg: ExportConfig) -> ExportResult:
    """Export a classifier dir to ONNX, check it against torch, and write it atomically."""
    import torch

    from medti.classify.model import load_classifier
    from medti.io import default_permissions

    t0 = time.time()
    out = Path(cfg.out)
    if out.suffix != ".onnx":
        raise ClassifierError(f"export output {out}: give a file name ending in .onnx")
    if out.exists() and not cfg.overwrite:
        raise ClassifierError(f"output {out} already exists (replace it with overwrite / --force)")
    if out.exists() and not _is_medti_onnx(out):
        raise ClassifierError(f"output {out} exists and is not a medti classifier ONNX file; give another output")
    model, meta = load_classifier(Path(cfg.model))
    h, w = meta["image_size"]
    example = torch.zeros(1, 3, h, w)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        # the TorchScript exporter: deterministic, and needs no onnxscript (the dynamo exporter's dependency)
        with warnings.catch_warnings():  # its deprecation notice, and transformers' channel check traced as a constant
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example,), tmp, dynamo=False, input_names=[INPUT], output_names=[OUTPUT],
                dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=OPSET,
            )
        _stamp(Path(tmp), meta)
        diff = _parity(model, Path(tmp), h, w)
        default_permissions(Path(tmp))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ExportResult(out, list(meta["targets"]), diff, time.time() - t0)


def _stamp(path: Path, meta: dict[str, Any]) -> None:
    import onnx

    m = onnx.load(str(path))
    entry = m.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta, sort_keys=True)
    m.producer_name = "medti"
    onnx.save(m, str(path))


def _parity(model, path: Path, h: int, w: int) -> float:
    import torch

    x = np.random.default_rng(0).random((4, 3, h, w), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = _session(path).run([OUTPUT], {INPUT: x})[0]
    return float(np.abs(ref - got).max())


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _is_medti_onnx(path: Path) -> bool:
    try:
        return read_onnx_meta(path) is not None
    except ClassifierError:
        return False


def read_onnx_meta(path: Path) -> dict[str, Any]:
    """The ``classifier.json`` an exported file carries; refuses files that are not medti classifiers."""
    import onnx

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends from protobuf
        raise ClassifierError(f"{path}: not an ONNX model ({type(e).__name__})") from None
    props = {p.key: p.value for p in m.metadata_props}
    if META_KEY not in props:
        raise ClassifierError(f"{path}: an ONNX model, but not a medti classifier (no {META_KEY!r} metadata)")
    try:
        meta = json.loads(props[META_KEY])
    except json.JSONDecodeError:
        raise ClassifierError(f"{path}: its {META_KEY!r} metadata is not JSON") from None
    if meta.get("kind") != KIND:
        raise ClassifierError(f"{path}: its {META_KEY!r} metadata is not a medti classifier's")
    return meta


class Predictor:
    """Probabilities from a classifier dir (torch) or an exported ``.onnx`` (onnxruntime); ``threads`` sets
    onnxruntime's intra-op threads (default: one per physical core)."""

    def __init__(self, path: Path, threads: int | None = None):
        path = Path(path)
        self.path = path
        if path.is_dir():
            from medti.classify.model import load_classifier

            self.model, self.meta = load_classifier(path)
            self.session = None
            self.backend = "torch"
        elif path.is_file():
            self.meta = read_onnx_meta(path)
            self.session = _session(path, threads)
            self.model = None
            self.backend = "onnxruntime"
        else:
            raise ClassifierError(f"model {path}: no such classifier dir or .onnx file")
        self.targets: list[str] = list(self.meta["targets"])

    @property
    def image_spec(self):
        """What an input image is (modality, channels, size), as the classifier recorded it."""
        from medti.classify.data import ImageSpec

        m = self.meta
        return ImageSpec(m["modality"], tuple(m["channels"]), tuple(m["image_size"]))

    def __call__(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        """Probabilities (N x targets) for uint8 images N x 3 x H x W."""
        h, w = self.meta["image_size"]
        if images.ndim != 4 or images.shape[1:] != (3, h, w):
            raise ClassifierError(f"model {self.path} takes 3 x {h} x {w} images, got {tuple(images.shape[1:])}")
        if self.session is None:
            from medti.classify.train import predict_array

            return predict_array(self.model, images, batch)
        out = []
        for i in range(0, len(images), batch):
            x = images[i : i + batch].astype(np.float32) / np.float32(255.0)
            out.append(self.session.run([OUTPUT], {INPUT: x})[0])
        return np.concatenate(out).astype(np.float64)


def open_predictor(path: Path, threads: int | None = None) -> Predictor:
    return Predictor(path, threads)


# ----------------------------------------------------------------------------- predict step
@dataclass
class PredictConfig:
    model: Path  # classifier dir or .onnx
    data: Path  # dataset dir
    out: Path  # predictions CSV
    split: str | None = None  # None = every case
    overwrite: bool = False


@dataclass
class PredictResult:
    out: Path
    n: int
    backend: str

    def summary(self) -> str:
        return f"wrote {self.n} predictions ({self.backend}) to {self.out}"


def predict(cfg: PredictConfig) -> PredictResult:
    """Probabilities for every case of a dataset dir, as CSV (case_id, split, label and probability per target)."""
    from medti.classify.data import check_dirs, load_cases
    from medti.io import atomic_write_text

    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise ClassifierError(f"output {out} already exists (replace it with overwrite / --force)")
    pred = open_predictor(Path(cfg.model))
    check_dirs([cfg.data], pred.targets, role="prediction", expect=pred.image_spec)
    cases = load_cases([cfg.data], cfg.split, pred.targets, role="prediction")
    p = pred(cases.images)
    atomic_write_text(out, predictions_csv(cases, p))
    return PredictResult(out, len(cases), pred.backend)


def predictions_csv(cases, p: np.ndarray) -> str:
    """Per-case CSV: case_id, source dir, then label and probability per target (no patient ids)."""
    cols = ["case_id", "source"] + [f"{t}{s}" for t in cases.targets for s in ("", "_probability")]
    lines = [",".join(cols)]
    for i, cid in enumerate(cases.case_ids):
        vals = [cid, cases.sources[i]]
        for j in range(len(cases.targets)):
            vals += [str(int(cases.labels[i, j])), f"{p[i, j]:.6f}"]
        lines.append(",".join(vals))
    return "\n".join(lines) + "\n"
