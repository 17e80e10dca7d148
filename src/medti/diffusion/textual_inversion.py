"""Textual inversion: learn ``n`` token vectors for one concept against a frozen Stable Diffusion.

What makes it cheap, compared with the common reference script:

- only an ``n x d`` fp32 parameter is trained; the token-embedding matrix itself is never touched
  (a forward hook on the embedding layer substitutes the learned rows for the placeholder ids);
- the UNet, VAE and text encoder are frozen, and on a GPU run in bf16 (fp16 where bf16 is
  missing; SD 2.x in fp16 is known to give NaN loss, so that case falls back to fp32 and says so);
- each image (and its mirror, where the anatomy allows) is VAE-encoded once and the posterior
  mean/std cached; every step draws a fresh latent sample from the cache instead of re-encoding;
- accelerate handles device and precision; checkpoints every N steps hold the parameter, the
  optimizer state and the RNG state, so ``resume`` continues exactly where the run stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medti import Report, __version__
from medti.diffusion.latents import encode_latent_cache
from medti.diffusion.templates import TEMPLATES

#: Training reads its losses back (progress bar, NaN check) once per this many steps, not every step:
#: a read waits for the GPU, and a step that waits cannot be queued while the previous one runs.
LOSS_EVERY = 25


class TrainingError(RuntimeError):
    """A textual inversion run that cannot go on; the message says why and what to do."""


@dataclass
class EmbeddingConfig:
    data: Path
    concept: str
    base: str = "tiny"
    where: str = ""  # e.g. "csPCa=1"
    split: str = "train"
    vectors: int = 64
    init_text: str = "mri"
    steps: int = 6000  # x batch 8 = 48k image presentations, the reference work's budget (50k-100k at batch 1)
    lr: float = 0.005
    batch: int = 8
    out: Path | None = None  # default: embeddings/<concept>.safetensors
    resume: bool = False
    #: discard an unfinished run's checkpoints and start again (without it, or ``resume``, they are
    #: never deleted: a forgotten --resume must not throw away hours of training)
    restart: bool = False
    #: replace an existing embedding file at the output path (--force)
    overwrite: bool = False
    seed: int = 0
    max_images: int = 100
    checkpoint_every: int = 250
    sample_every: int = 0  # 0 = only at the end
    n_samples: int = 8
    sample_steps: int = 30
    guidance: float = 7.5
    flip: bool | None = None  # None: mirror only where the anatomy allows (prostate yes, cxr no)
    precision: str = "auto"  # auto | no | bf16 | fp16
    #: recompute the UNet's activations in backward instead of keeping them: less memory, more time
    #: (diffusers' enable_gradient_checkpointing; the reference script's --gradient_checkpointing)
    gradient_checkpointing: bool = False
    #: cap on each learned vector's L2 norm, applied after every step: None = uncapped; a number; or
    #: "vocab" = the largest norm among the base's own token embeddings (the vectors stay where real
    #: tokens live instead of drifting far outside them; see max_norm_value)
    max_norm: float | str | None = None
    device: str | None = None  # None: accelerate picks (cuda when present)
    validate: bool = True
    #: the data must pass validation with this many train cases per class of every finding (data validate's
    #: --min-per-class); 0 lets a dataset through whose other findings have no positive case
    min_per_class: int = 1
    progress: bool = True
    stop_after: int | None = None  # stop (as if killed) after this many steps - for resume tests

    def out_path(self) -> Path:
        return Path(self.out) if self.out else Path("embeddings") / f"{self.concept}.safetensors"


@dataclass
class EmbeddingResult:
    path: Path
    token: str
    steps: int
    final_loss: float
    seconds: float
    samples: Path | None
    n_images: int
    metadata: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        s = (
            f"embedding {self.token} ({self.metadata.get('vectors')} x {self.metadata.get('dim')}) -> {self.path} "
            f"[{self.path.stat().st_size / 1024:.0f} KB], {self.steps} steps on {self.n_images} images, "
            f"final loss {self.final_loss:.4f}, {self.seconds:.0f} s"
        )
        if self.samples:
            s += f"\nsample grid: {self.samples}"
        return s


# ----------------------------------------------------------------------------- helpers
def pick_precision(requested: str, device_type: str, prediction_type: str) -> tuple[str, str | None]:
    """(mixed precision for the frozen modules, warning or None)."""
    import torch

    if device_type != "cuda":
        if requested in ("bf16", "fp16"):
            return "no", f"--precision {requested} ignored on {device_type}: frozen modules run in fp32"
        return "no", None
    if requested == "auto":
        requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "fp16" and prediction_type == "v_prediction":
        return "no", (
            "fp16 with a v-prediction (SD 2.x) model is known to give NaN loss; "
            "running the frozen modules in fp32 instead (use a GPU with bf16 for speed)"
        )
    return requested, None


def placeholder_tokens(token: str, n: int) -> list[str]:
    return [token] + [f"{token}_{i}" for i in range(1, n)]


class VectorSubstitution:
    """Forward hook on the token-embedding layer: rows of placeholder ids come from ``param``.

    Only ``param`` (n x d, fp32) receives gradients; the embedding matrix is left as it was.
    """

    def __init__(self, layer, first_id: int, param):
        self.first_id = first_id
        self.param = param
        self.handle = layer.register_forward_hook(self)

    def __call__(self, module, args, out):
        import torch

        ids = args[0] if args else None
        if ids is None:
            return out
        n = self.param.shape[0]
        rel = ids - self.first_id
        mask = (rel >= 0) & (rel < n)
        if not bool(mask.any()):
            return out
        idx = rel.clamp(0, n - 1)  # index_select: a backward that does not depend on thread order (see Inversion)
        rows = self.param.index_select(0, idx.reshape(-1)).reshape(*idx.shape, -1).to(out.dtype)
        return torch.where(mask[..., None], rows, out)

    def remove(self) -> None:
        self.handle.remove()


def concept_cases(ds, split: str | None, where: dict[str, int], limit: int | None) -> list:
    """The cases an embedding learns from: those of ``split`` matching ``where``, sorted by case id, the first
    ``limit``. The one rule: :func:`load_concept_images` trains on these, and the memorisation audit's
    ``--embedding`` reads them back from an embedding's metadata (``split``, ``where``, ``n_images``)."""
    return sorted(ds.cases(split=split, where=where), key=lambda c: c.case_id)[:limit]


def load_concept_images(cfg: EmbeddingConfig, size: int):
    """Images of the selected cases as float [N,3,size,size] in [-1, 1], plus the dataset info."""
    import numpy as np
    import torch
    from PIL import Image

    from medti.data.dataset import Dataset, DatasetError, parse_where

    ds = Dataset(cfg.data)
    where = parse_where(cfg.where)
    unknown = set(where) - set(ds.info.findings)
    if unknown:
        raise DatasetError(f"--where {cfg.where!r}: {sorted(unknown)} not among findings {ds.info.findings} of {cfg.data}")
    cases = concept_cases(ds, cfg.split or None, where, cfg.max_images)
    if not cases:
        raise DatasetError(f"{cfg.data}: no {cfg.split} cases match --where {cfg.where!r}")
    arrs = []
    for c in cases:
        with Image.open(c.path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            arrs.append(np.asarray(im, dtype=np.float32) / 127.5 - 1.0)
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()
    return x, ds.info, [c.case_id for c in cases]


def _fingerprint(cfg: EmbeddingConfig, base_hash: str, case_ids: list[str]) -> str:
    keys = dict(
        concept=cfg.concept,
        where=cfg.where,
        split=cfg.split,
        vectors=cfg.vectors,
        init_text=cfg.init_text,
        lr=cfg.lr,
        batch=cfg.batch,
        seed=cfg.seed,
        flip=cfg.flip,
        base=base_hash,
        cases=hashlib.sha256("\n".join(case_ids).encode()).hexdigest(),
    )
    if cfg.max_norm is not None:
        keys["max_norm"] = str(parse_max_norm(cfg.max_norm))
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def _ckpt_dir(out: Path) -> Path:
    return out.with_name(out.name + ".checkpoints")


def _save_checkpoint(out: Path, step: int, param, optimizer, gen, fingerprint: str, losses: list[float]) -> Path:
    from medti.diffusion.embeddings import safetensors_bytes
    from medti.io import atomic_write_bytes

    state = optimizer.state[param]
    tensors = {
        "param": param.detach().cpu().contiguous(),
        "exp_avg": state["exp_avg"].detach().cpu().contiguous(),
        "exp_avg_sq": state["exp_avg_sq"].detach().cpu().contiguous(),
        "adam_step": state["step"].detach().cpu().reshape(1).float(),
        "rng": gen.get_state().contiguous(),
    }
    meta = {"step": str(step), "fingerprint": fingerprint, "losses": json.dumps(losses[-50:])}
    d = _ckpt_dir(out)
    path = d / f"step-{step:07d}.safetensors"
    atomic_write_bytes(path, safetensors_bytes(tensors, meta))
    for old in sorted(d.glob("step-*.safetensors"))[:-2]:  # keep the last two
        old.unlink(missing_ok=True)
    return path


def _checkpoint_step(path: Path) -> int:
    """The step a checkpoint file holds, from its name (``step-0000250.safetensors``)."""
    return int(path.stem.split("-", 1)[1])


def _latest_checkpoint(out: Path) -> Path | None:
    files = sorted(_ckpt_dir(out).glob("step-*.safetensors"))
    return files[-1] if files else None


def _load_checkpoint(path: Path, param, optimizer, gen, fingerprint: str) -> int:
    import torch
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        t = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("fingerprint") != fingerprint:
        raise TrainingError(
            f"{path}: checkpoint was written by a run with other settings (concept, data, vectors, lr, "
            "batch, seed, vector cap or base differ); run with the settings it was written with, or discard it "
            "with --restart instead of --resume"
        )
    with torch.no_grad():
        param.copy_(t["param"].to(param.device))
    optimizer.state[param] = {
        "step": t["adam_step"].reshape(()).to(torch.float32),
        "exp_avg": t["exp_avg"].to(param.device),
        "exp_avg_sq": t["exp_avg_sq"].to(param.device),
    }
    gen.set_state(t["rng"])
    return int(meta["step"])


class Inversion:
    """The trainable state and the step of textual inversion for one concept.

    Adds the placeholder tokens, initialises the ``n x d`` parameter from ``init_text``, installs
    the substitution hook, moves the frozen modules to the device in ``weight_dtype``, caches the
    VAE posteriors of ``images`` (float [N,3,H,W] in [-1,1]) and pre-tokenises the templates.
    ``step()`` runs one optimisation step and returns the loss.
    """

    def __init__(
        self,
        base,
        images,
        *,
        modality: str,
        token: str,
        vectors: int,
        init_text: str,
        lr: float,
        batch: int,
        seed: int,
        weight_dtype,
        accelerator,
        progress: bool = False,
        gradient_checkpointing: bool = False,
        max_norm: float | str | None = None,
    ):
        import torch
        from diffusers import DDPMScheduler

        tok, te, unet, vae = base.tokenizer, base.text_encoder, base.unet, base.vae
        device = accelerator.device
        #: the resolved cap on each vector's norm (None = uncapped), read before the placeholders exist
        self.max_norm = max_norm_value(te, max_norm)
        self.names = names = placeholder_tokens(token, vectors)
        clash = [t for t in names if t in tok.get_vocab()]
        if clash:
            raise TrainingError(f"token {clash[0]!r} already exists in the base's tokenizer; pick another concept name")
        tok.add_tokens(names)
        first_id = tok.convert_tokens_to_ids(names[0])
        if tok.convert_tokens_to_ids(names) != list(range(first_id, first_id + len(names))):
            raise TrainingError("placeholder tokens did not receive consecutive ids")
        te.resize_token_embeddings(len(tok))
        # initial vectors: the init text's token embeddings, cycled over the n vectors
        emb_w = te.get_input_embeddings().weight
        init_ids = tok(init_text, add_special_tokens=False).input_ids or [tok.eos_token_id]
        init = torch.stack([emb_w[init_ids[i % len(init_ids)]] for i in range(vectors)]).detach().float().clone()
        with torch.no_grad():
            emb_w[first_id : first_id + vectors] = init.to(emb_w.dtype)
        self.param = torch.nn.Parameter(init.to(device))

        self.templates = TEMPLATES.get(modality, TEMPLATES["default"])
        texts = [t.format(" ".join(names)) for t in self.templates]
        enc = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=False, return_tensors="pt")
        if enc.input_ids.shape[1] > tok.model_max_length:
            raise TrainingError(
                f"{vectors} vectors + template exceed the text encoder's {tok.model_max_length - 2} token budget"
            )
        self.template_ids = enc.input_ids.to(device)

        # the base stays frozen whoever built it (a Base made from components, not load_base, has
        # trainable modules): otherwise backward also fills a gradient for every UNet weight
        for m in (te, unet, vae):
            m.requires_grad_(False)
        if gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        te.to(device, dtype=weight_dtype)
        unet.to(device, dtype=weight_dtype)
        vae.to(device, dtype=weight_dtype)
        self.hook = VectorSubstitution(te.get_input_embeddings(), first_id, self.param)
        mean, std = encode_latent_cache(vae, images, dtype=weight_dtype, device=device, progress=progress)
        self.mean, self.std = mean.to(device), std.to(device)
        self.scaling = float(vae.config.scaling_factor)
        vae.to("cpu")  # not needed again until sampling
        self.noise_sched = DDPMScheduler.from_config(base.scheduler.config)
        self.T = self.noise_sched.config.num_train_timesteps
        self.v_pred = base.prediction_type == "v_prediction"
        self.te, self.unet = te, unet
        self.accelerator = accelerator
        self.weight_dtype = weight_dtype
        self.batch = batch
        self.device = device
        opt = torch.optim.AdamW([self.param], lr=lr, betas=(0.9, 0.999), weight_decay=0.0, eps=1e-8)
        prepared = accelerator.prepare(opt)
        self.prepared_optimizer = prepared
        self.optimizer = getattr(prepared, "optimizer", prepared)
        self.gen = torch.Generator(device="cpu").manual_seed(seed)

    def step(self) -> float:
        """One optimisation step; returns its loss (waits for the device; see :meth:`step_async`)."""
        return check_losses([self.step_async()])[0]

    def step_async(self):
        """One optimisation step without waiting for the device: returns the loss as a detached
        device tensor.  Nothing here reads a value back, so on a GPU the host queues the next step
        while this one runs; check the losses with :func:`check_losses` every few steps."""
        import torch
        import torch.nn.functional as F

        b, gen, shape = self.batch, self.gen, self.mean.shape[1:]
        # all randomness from one CPU generator, in a fixed order: resumable bit-for-bit
        idx = torch.randint(0, self.mean.shape[0], (b,), generator=gen)
        tsteps = torch.randint(0, self.T, (b,), generator=gen)
        eps_lat = torch.randn((b, *shape), generator=gen)
        noise = torch.randn((b, *shape), generator=gen)
        tmpl = torch.randint(0, len(self.templates), (b,), generator=gen)
        # the distinct templates of the batch, found on the host (torch.unique on a GPU would wait for it)
        uniq, inverse = torch.unique(tmpl, return_inverse=True)
        idx, tsteps, eps_lat, noise, uniq, inverse = (
            v.to(self.device) for v in (idx, tsteps, eps_lat, noise, uniq, inverse)
        )
        latents = (self.mean[idx] + self.std[idx] * eps_lat) * self.scaling
        noisy = self.noise_sched.add_noise(latents, noise, tsteps)
        target = self.noise_sched.get_velocity(latents, noise, tsteps) if self.v_pred else noise
        with self.accelerator.autocast():
            # the frozen text encoder runs once per distinct template in the batch (at most a
            # handful), not once per sample: the same values and gradients, a fraction of the work.
            # index_select, not [inverse]: on CPU the backward of an indexing gather accumulates
            # in thread order, so with 2+ threads the same run learned vectors a few ulp apart
            cond = self.te(self.template_ids[uniq])[0].index_select(0, inverse)
            pred = self.unet(noisy.to(self.weight_dtype), tsteps, cond.to(self.weight_dtype)).sample
        loss = F.mse_loss(pred.float(), target.float())
        self.prepared_optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self.prepared_optimizer.step()
        if self.max_norm is not None:
            with torch.no_grad():  # projected step: rows longer than the cap are scaled back onto it
                self.param.copy_(torch.renorm(self.param, 2, 0, self.max_norm))
        return loss.detach()


def parse_max_norm(max_norm: float | str | None) -> float | str | None:
    """A ``--max-norm`` value checked: None, "vocab", or a positive finite number (anything else raises,
    naming the value)."""
    if max_norm is None:
        return None
    if isinstance(max_norm, str) and max_norm.strip().lower() == "vocab":
        return "vocab"
    try:
        value = float(max_norm)
    except (TypeError, ValueError):
        value = float("nan")
    if not (value > 0 and math.isfinite(value)):
        raise TrainingError(f"--max-norm {max_norm!r}: give a positive number or 'vocab'")
    return value


def max_norm_value(text_encoder, max_norm: float | str | None) -> float | None:
    """The norm cap ``max_norm`` stands for: None, the number, or for "vocab" the largest L2 norm among the
    text encoder's token embeddings (call before placeholder rows are added)."""
    cap = parse_max_norm(max_norm)
    if cap == "vocab":
        return float(text_encoder.get_input_embeddings().weight.detach().float().norm(dim=1).max())
    return cap


def max_norm_arg(value: str | None):
    """An experiment's ``--max-norm`` as EmbeddingConfig takes it: None (not given) = the trainer's default,
    'none' = uncapped, else the value ('vocab' or a number)."""
    if value is None:
        return EmbeddingConfig.max_norm
    return None if value.strip().lower() == "none" else value


def check_losses(pending, first_step: int | None = None) -> list[float]:
    """The values of losses returned by :meth:`Inversion.step_async` (one wait for all of them);
    a non-finite one raises, naming its step (``first_step`` = the step number of ``pending[0]``)."""
    import torch

    values = torch.stack([v.reshape(()) for v in pending]).float().cpu().tolist()
    for i, v in enumerate(values):
        if not math.isfinite(v):
            at = "" if first_step is None else f" at step {first_step + i}"
            raise TrainingError(
                f"loss became {v}{at}; SD 2.x in fp16 is known to overflow - use --precision bf16 or no"
            )
    return values


# ----------------------------------------------------------------------------- the step
def train_embedding(cfg: EmbeddingConfig, report: Report | None = None) -> EmbeddingResult:
    """Train one concept embedding; write ``cfg.out_path()`` (+ checkpoints and a sample grid).
    One run at a time per output file (a second fails at once, naming the lock). ``report(step, {"loss": x})``,
    when given, is called with the mean loss of every ``LOSS_EVERY`` steps as they are read back."""
    from medti.io import output_lock

    with output_lock(cfg.out_path(), "embed train"):
        return _train_embedding(cfg, report)


def _train_embedding(cfg: EmbeddingConfig, report: Report | None = None) -> EmbeddingResult:
    import torch
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from medti._quiet import quiet_libraries
    from medti.data.dataset import FLIP_OK, DatasetError
    from medti.diffusion.base import load_base
    from medti.diffusion.embeddings import Embedding, check_save_path, save_embedding, token_for

    quiet_libraries()
    t0 = time.time()
    if not 1 <= cfg.vectors <= 128:
        raise TrainingError(f"--vectors {cfg.vectors}: must be between 1 and 128")
    if cfg.steps < 1 or cfg.batch < 1 or not cfg.lr > 0:
        raise TrainingError("--steps, --batch and --lr must be positive")
    parse_max_norm(cfg.max_norm)  # a bad value fails before the base is loaded
    out = check_save_path(cfg.out_path())
    if out.exists() and not cfg.overwrite:
        raise TrainingError(f"{out} already exists (use --force to replace it with a new embedding)")
    if cfg.resume and cfg.restart:
        raise TrainingError("--resume and --restart exclude each other: continue the unfinished run, or discard it")
    left = _latest_checkpoint(out)
    if left is not None and not (cfg.resume or cfg.restart):
        raise TrainingError(
            f"{left.parent}: an unfinished run of this embedding stopped at step {_checkpoint_step(left)}; "
            "continue it with --resume, or discard it with --restart"
        )
    token = token_for(cfg.concept)
    if cfg.validate:
        from medti.data.validate import require_valid

        require_valid(Path(cfg.data), min_per_class=cfg.min_per_class, option="--min-per-class")

    accelerator = Accelerator(cpu=(cfg.device == "cpu"), mixed_precision="no")
    device = accelerator.device
    base = load_base(cfg.base, progress=cfg.progress)
    precision, warning = pick_precision(cfg.precision, device.type, base.prediction_type)
    if warning:
        accelerator.print(f"warning: {warning}")
    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)

    size = base.image_size
    images, info, case_ids = load_concept_images(cfg, size)
    if len(case_ids) < 1:
        raise DatasetError("no images selected")
    flip = cfg.flip if cfg.flip is not None else info.modality in FLIP_OK
    if flip:
        images = torch.cat([images, images.flip(-1)])

    inv = Inversion(
        base,
        images,
        modality=info.modality,
        token=token,
        vectors=cfg.vectors,
        init_text=cfg.init_text,
        lr=cfg.lr,
        batch=cfg.batch,
        seed=cfg.seed,
        weight_dtype=weight_dtype,
        accelerator=accelerator,
        progress=cfg.progress,
        gradient_checkpointing=cfg.gradient_checkpointing,
        max_norm=cfg.max_norm,
    )
    param, hook, gen, templates = inv.param, inv.hook, inv.gen, inv.templates
    raw_opt = inv.optimizer  # the torch optimizer under accelerate's wrapper (for checkpoints)
    fingerprint = _fingerprint(cfg, base.model_hash, case_ids)

    start = 0
    if cfg.resume:
        if left is not None:  # found above; the output lock keeps it current
            start = _load_checkpoint(left, param, raw_opt, gen, fingerprint)
            accelerator.print(f"resumed from {left} at step {start}")
    elif cfg.restart:
        for old in _ckpt_dir(out).glob("step-*.safetensors"):
            old.unlink()

    losses: list[float] = []
    last_loss = float("nan")
    end = cfg.steps if cfg.stop_after is None else min(cfg.steps, start + cfg.stop_after)
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, desc=f"train {token}", disable=not cfg.progress)
    pending: list = []  # losses not yet read back: the device is waited for once per LOSS_EVERY steps
    for step in bar:
        pending.append(inv.step_async())
        done = step + 1
        checkpoint = bool(cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps)
        sample = bool(cfg.sample_every and done % cfg.sample_every == 0 and done < cfg.steps)
        if len(pending) >= LOSS_EVERY or checkpoint or sample or done == end:
            try:
                read = check_losses(pending, first_step=done - len(pending) + 1)
            except TrainingError as e:
                hook.remove()
                raise TrainingError(f"precision {precision}: {e}") from e
            losses.extend(read)
            if report is not None:
                report(done, {"loss": sum(read) / len(read)})
            pending = []
            last_loss = losses[-1]
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
        if checkpoint:
            _save_checkpoint(out, done, param, raw_opt, gen, fingerprint, losses)
        if sample:
            _sample_grid(base, token, templates, cfg, out.with_name(f"{out.stem}.samples-{done:06d}.png"))
    bar.close()
    if end < cfg.steps:  # simulated kill: leave only the checkpoint behind
        _save_checkpoint(out, end, param, raw_opt, gen, fingerprint, losses)
        hook.remove()
        raise TrainingError(f"stopped after step {end} (stop_after); resume with --resume")

    from medti.data.versions import dataset_version

    meta = {
        "concept": cfg.concept,
        "token": token,
        "vectors": str(cfg.vectors),
        "dim": str(param.shape[1]),
        "steps": str(cfg.steps),
        "lr": str(cfg.lr),
        "batch": str(cfg.batch),
        "seed": str(cfg.seed),
        "where": cfg.where,
        "split": cfg.split,
        "n_images": str(len(case_ids)),
        "init_text": cfg.init_text,
        "base_model": base.model_id,
        "base_model_hash": base.model_hash,
        "prediction_type": base.prediction_type,
        "modality": info.modality,
        "dataset_version": dataset_version(Path(cfg.data)),
        "medti_version": __version__,
        "final_loss": f"{last_loss:.6f}",
        # how it was computed: bf16/fp16 training gives other vectors than fp32; checkpointing does not
        "precision": precision,
        "gradient_checkpointing": str(bool(cfg.gradient_checkpointing)).lower(),
        # the cap each vector's norm was held to ("none", or the resolved number)
        "max_norm": "none" if inv.max_norm is None else f"{inv.max_norm:.6g}",
    }
    emb = Embedding(token, param.detach().float().cpu().clone(), meta)
    save_embedding(emb, out)
    samples = None
    if cfg.n_samples > 0:
        samples = _sample_grid(base, token, templates, cfg, out.with_name(f"{out.stem}.samples.png"))
    hook.remove()
    for old in _ckpt_dir(out).glob("step-*.safetensors"):
        old.unlink()
    if _ckpt_dir(out).exists() and not any(_ckpt_dir(out).iterdir()):
        _ckpt_dir(out).rmdir()
    return EmbeddingResult(
        path=out,
        token=token,
        steps=cfg.steps,
        final_loss=last_loss,
        seconds=time.time() - t0,
        samples=samples,
        n_images=len(case_ids),
        metadata=meta,
    )


def _sample_grid(base, token: str, templates: list[str], cfg: EmbeddingConfig, path: Path) -> Path:
    """Sample a grid with the current vectors (the substitution hook is active) and save it."""
    from medti.diffusion.sampling import sample_prompt, save_grid

    was = base.vae.device
    base.vae.to(base.unet.device)
    # diffusers expands the bare token into its n vector tokens itself (maybe_convert_prompt)
    prompt = templates[1 if len(templates) > 1 else 0].format(token)
    images = sample_prompt(base, prompt, cfg.n_samples, cfg.seed, steps=cfg.sample_steps, guidance=cfg.guidance)
    base.vae.to(was)
    return save_grid(images, path, cols=int(math.ceil(math.sqrt(cfg.n_samples))), scale=2)


def config_dict(cfg: EmbeddingConfig) -> dict[str, Any]:
    d = asdict(cfg)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
