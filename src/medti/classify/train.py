"""``train_classifier(ClassifierConfig) -> ClassifierResult``: a ResNet-18 on any mix of real and synthetic
dataset dirs, kept at its best validation AUC.

The recipe, in order: check every input (validation gate, targets, image kinds, both classes in the
validation split) before anything is written; load every case once as a uint8 tensor (the images are small;
decoding them per step is what makes the usual DataLoader loop slow); then per step draw a batch (numpy
generator seeded by (seed, step)), augment it on the tensor with kornia, take an AdamW step on a warm-up +
cosine learning rate, and every ``eval_every`` steps score the validation split and keep the best weights.

Checkpoints (every ``checkpoint_every`` steps, beside the output) hold the weights, the best weights so far,
the optimizer and the curves; everything random is a function of (seed, step), so a run killed and started
again with the same config continues where it stopped and ends with the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medti import Report, __version__
from medti.classify import ClassifierError
from medti.classify.model import CLASSIFIER_JSON, KIND, MEAN, STD

CURVES_CSV = "curves.csv"


@dataclass
class ClassifierConfig:
    train: list[Path]  # dataset dirs whose ``train`` split is trained on (real, synthetic, or both)
    val: Path  # dataset dir whose ``val`` split picks the checkpoint and the threshold
    targets: list[str]  # finding column(s); one = binary, several = multi-label
    out: Path  # classifier dir
    seed: int = 0
    steps: int = 600
    batch: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: float = 0.05  # fraction of the steps with a linear learning-rate warm-up
    eval_every: int = 50
    checkpoint_every: int = 50
    augment: bool = True
    pretrained: Path | None = None  # a local transformers ResNet dir; None = random init
    min_per_class: int = 1  # validation gate of the input dirs (as data validate's --min-per-class)
    #: run the validation gate on the input dirs; an executor that already validated them (an experiment's
    #: validate task) turns it off so that one dataset is not validated again by every classifier trained on it
    validate: bool = True
    overwrite: bool = False  # replace an existing classifier dir at ``out``
    restart: bool = False  # discard an unfinished run's checkpoints instead of continuing it
    threads: int | None = None  # torch CPU threads; None = torch's default
    progress: bool = True


@dataclass
class ClassifierResult:
    out: Path
    targets: list[str]
    best_step: int
    val_auc: float  # mean over targets at the kept checkpoint
    threshold: dict[str, float]
    n_train: int
    steps: int
    seconds: float
    resumed_from: int = 0
    curves: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> str:
        resumed = f", continued from step {self.resumed_from}" if self.resumed_from else ""
        return (
            f"classifier for {', '.join(self.targets)} -> {self.out}: best validation AUC {self.val_auc:.3f} at step "
            f"{self.best_step}/{self.steps} ({self.n_train} training images, {self.seconds:.0f} s{resumed})"
        )


# ----------------------------------------------------------------------------- checks
def _check_config(cfg: ClassifierConfig) -> None:
    for name, lo in (("steps", 1), ("batch", 1), ("eval_every", 1), ("checkpoint_every", 1)):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ClassifierError(f"classifier {name}={v!r} must be an integer >= {lo}")
    if not (isinstance(cfg.lr, int | float) and math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ClassifierError(f"classifier lr={cfg.lr!r} must be a positive number")
    if not 0.0 <= cfg.warmup < 1.0:
        raise ClassifierError(f"classifier warmup={cfg.warmup!r} must be a fraction of the steps in [0, 1)")


def _check_output(cfg: ClassifierConfig) -> None:
    from medti.io import check_output_dir

    check_output_dir(Path(cfg.out), cfg.overwrite, (CLASSIFIER_JSON,), "medti classifier dir")


def _ckpt_dir(out: Path) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.checkpoints"


def _fingerprint(cfg: ClassifierConfig, versions: list[str]) -> str:
    keep = {k: v for k, v in asdict(cfg).items()
            if k not in ("out", "overwrite", "restart", "progress", "threads", "checkpoint_every", "validate")}
    keep["train"] = [str(Path(p).resolve()) for p in cfg.train]
    keep["val"] = str(Path(cfg.val).resolve())
    keep["pretrained"] = str(cfg.pretrained) if cfg.pretrained else None
    keep["data"] = versions
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def lr_at(step: int, cfg: ClassifierConfig) -> float:
    """Linear warm-up over ``warmup`` of the steps, then cosine decay to zero."""
    warm = max(1, int(round(cfg.warmup * cfg.steps)))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))


# ----------------------------------------------------------------------------- checkpoints
def _flat_optimizer(opt) -> tuple[dict[str, Any], dict[str, Any]]:
    sd = opt.state_dict()
    tensors = {f"optim.{i}.{k}": v.detach().cpu().contiguous().reshape(-1) if k == "step" else v.detach().cpu().contiguous()
               for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def _save_checkpoint(d: Path, step: int, model, best_state, opt, meta: dict[str, Any]) -> None:
    from medti.diffusion.embeddings import safetensors_bytes
    from medti.io import atomic_write_bytes

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if best_state is not None:
        tensors.update({f"best.{k}": v.contiguous() for k, v in best_state.items()})
    opt_t, opt_meta = _flat_optimizer(opt)
    tensors.update(opt_t)
    text = {"step": str(step), "meta": json.dumps({**meta, **opt_meta}, sort_keys=True)}
    atomic_write_bytes(d / f"step-{step:07d}.safetensors", safetensors_bytes(tensors, text))
    for old in sorted(d.glob("step-*.safetensors"))[:-2]:  # keep the last two
        old.unlink(missing_ok=True)


def _load_checkpoint(path: Path, model, opt, fingerprint: str):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        text = f.metadata() or {}
        t = {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(text.get("meta", "{}"))
    if meta.get("fingerprint") != fingerprint:
        raise ClassifierError(
            f"{path}: an unfinished classifier run with other settings or data left its checkpoints here; run it with "
            "the settings it was started with, or discard it (restart)"
        )
    model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
    best = {k[5:]: v for k, v in t.items() if k.startswith("best.")} or None
    state: dict[int, dict[str, Any]] = {}
    for k, v in t.items():
        if k.startswith("optim."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v.reshape(()) if name == "step" else v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(text["step"]), best, meta


# ----------------------------------------------------------------------------- the step
def train_classifier(cfg: ClassifierConfig, report: Report | None = None) -> ClassifierResult:
    """Train, keep the best validation AUC, write the classifier dir. One run per output at a time.
    ``report(step, {"loss": x, "val_auc": y})``, when given, is called at every validation."""
    from medti.io import output_lock

    _check_config(cfg)
    _check_output(cfg)
    from medti._threads import torch_threads

    with output_lock(Path(cfg.out), "classify train"), torch_threads(cfg.threads):
        return _train(cfg, report)


def _inputs(cfg: ClassifierConfig):
    """# 1. Check every input, then read the cases (nothing is written before this passes)."""
    from medti.classify.data import check_dirs, load_cases
    from medti.data.versions import content_version

    gate = cfg.min_per_class if cfg.validate else None
    spec = check_dirs(cfg.train, cfg.targets, min_per_class=gate, role="train")
    same = Path(cfg.val).resolve() in {Path(p).resolve() for p in cfg.train}  # validated just above
    check_dirs([cfg.val], cfg.targets, min_per_class=None if same else gate, role="validation", expect=spec)
    train = load_cases(cfg.train, "train", cfg.targets, role="train")
    val = load_cases([cfg.val], "val", cfg.targets, role="validation", need_both_classes=True)
    versions = [content_version(Path(p)) for p in [*cfg.train, cfg.val]]
    return spec, train, val, versions


def predict_array(model, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Probabilities (N x T) for uint8 N x 3 x H x W images."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i : i + batch]).float().div_(255.0)
            out.append(model(x).numpy())
    return np.concatenate(out).astype(np.float64)


def _val_auc(model, val) -> float:
    from medti.classify.metrics import auc

    model.eval()
    p = predict_array(model, val.images)
    model.train()
    return float(np.mean([auc(val.labels[:, j], p[:, j]) for j in range(len(val.targets))]))


def draw_batch(images, labels, aug, seed: int, step: int, batch: int):
    """The batch of ``step``: cases drawn with replacement by a generator seeded with (seed, step), scaled to
    [0, 1] and augmented with a seed drawn from the same generator, so a resumed run draws what it would have."""
    import torch

    from medti.classify.augment import augment_batch

    rng = np.random.default_rng([seed, step])
    idx = torch.from_numpy(rng.integers(0, len(images), batch))
    x = images.index_select(0, idx).float().div_(255.0)
    if aug is not None:
        x = augment_batch(aug, x, seed=int(rng.integers(0, 2**31 - 1)))
    return x, labels.index_select(0, idx)


def optimizer_step(model, opt, loss_fn, x, y, lr: float) -> float:
    """One AdamW step at learning rate ``lr``; the batch's loss."""
    for g in opt.param_groups:
        g["lr"] = lr
    loss = loss_fn(model.logits(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _train(cfg: ClassifierConfig, report: Report | None = None) -> ClassifierResult:
    import torch
    from tqdm.auto import tqdm

    from medti.classify.augment import build_augment
    from medti.classify.model import build_resnet, probability_model

    t0 = time.time()
    spec, train, val, versions = _inputs(cfg)
    fingerprint = _fingerprint(cfg, versions)
    ckpts = _ckpt_dir(cfg.out)
    if cfg.restart and ckpts.exists():
        shutil.rmtree(ckpts)

    # 2. Model, optimizer, augmentation (the initial weights come from the seed alone)
    torch.manual_seed(cfg.seed)
    model = probability_model(build_resnet(len(cfg.targets), cfg.pretrained)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    aug = build_augment(spec.modality) if cfg.augment else None
    loss_fn = torch.nn.BCEWithLogitsLoss()

    # 3. Continue an unfinished run
    start, best_state, best_auc, best_step, curves = 0, None, -1.0, 0, []
    existing = sorted(ckpts.glob("step-*.safetensors"))
    if existing:
        start, best_state, meta = _load_checkpoint(existing[-1], model, opt, fingerprint)
        best_auc, best_step, curves = meta["best_auc"], meta["best_step"], meta["curves"]
    running = meta["running"] if existing else None  # the smoothed loss the progress bar and curves show
    resumed_from = start

    # 4. Train: per-step batch and augmentation from (seed, step), best validation AUC kept
    images = torch.from_numpy(train.images)
    labels = torch.from_numpy(train.labels)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="classify train", unit="step",
               disable=None if cfg.progress else True)
    for step in bar:
        x, y = draw_batch(images, labels, aug, cfg.seed, step, cfg.batch)
        value = optimizer_step(model, opt, loss_fn, x, y, lr_at(step, cfg))
        running = value if running is None else 0.9 * running + 0.1 * value
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            v = _val_auc(model, val)
            curves.append({"step": done, "loss": round(running, 6), "val_auc": round(v, 6)})
            if report is not None:
                report(done, {"loss": running, "val_auc": v})
            if v > best_auc:
                best_auc, best_step = v, done
                best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
            bar.set_postfix(loss=f"{running:.3f}", val_auc=f"{v:.3f}", best=f"{best_auc:.3f}")
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            meta = {"fingerprint": fingerprint, "best_auc": best_auc, "best_step": best_step, "curves": curves,
                    "running": running}
            _save_checkpoint(ckpts, done, model, best_state, opt, meta)
    bar.close()

    # 5. Keep the best weights; choose the threshold on the validation split; write the dir atomically
    model.load_state_dict(best_state)
    model.eval()
    threshold = _thresholds(model, val)
    _write(cfg, model, spec, train, versions, best_auc, best_step, threshold, curves)
    shutil.rmtree(ckpts, ignore_errors=True)
    return ClassifierResult(
        out=Path(cfg.out), targets=list(cfg.targets), best_step=best_step, val_auc=best_auc, threshold=threshold,
        n_train=len(train), steps=cfg.steps, seconds=time.time() - t0, resumed_from=resumed_from, curves=curves,
    )


def _thresholds(model, val) -> dict[str, float]:
    from medti.classify.metrics import youden_threshold

    p = predict_array(model, val.images)
    return {t: youden_threshold(val.labels[:, j], p[:, j]) for j, t in enumerate(val.targets)}


def _write(cfg, model, spec, train, versions, best_auc, best_step, threshold, curves) -> None:
    from medti.io import written_dir

    with written_dir(Path(cfg.out)) as tmp:
        model.net.save_pretrained(tmp, safe_serialization=True)
        counts: dict[str, int] = {}
        for s in train.sources:
            counts[s] = counts.get(s, 0) + 1
        meta = {
            "kind": KIND,
            "medti_version": __version__,
            "architecture": "resnet18",
            "targets": list(cfg.targets),
            "modality": spec.modality,
            "channels": list(spec.channels),
            "image_size": list(spec.image_size),
            "input": "float32 N x 3 x H x W in [0, 1] (8-bit image / 255), channels as in the dataset",
            "normalize": {"mean": MEAN, "std": STD},
            "output": "probability per target (sigmoid)",
            "threshold": threshold,
            "val_auc": best_auc,
            "best_step": best_step,
            "train": [{"dir": Path(p).name, "version": v, "cases": counts.get(Path(p).name, 0)}
                      for p, v in zip(cfg.train, versions, strict=False)],
            "val": {"dir": Path(cfg.val).name, "version": versions[-1]},
            "config": {k: v for k, v in asdict(cfg).items()
                       if k in ("seed", "steps", "batch", "lr", "weight_decay", "warmup", "eval_every", "augment")},
            "pretrained": str(cfg.pretrained) if cfg.pretrained else None,
        }
        (tmp / CLASSIFIER_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        lines = ["step,loss,val_auc"] + [f"{c['step']},{c['loss']},{c['val_auc']}" for c in curves]
        (tmp / CURVES_CSV).write_text("\n".join(lines) + "\n", encoding="utf-8")
