"""Training a base model on captioned images: how the embedded tiny base is made, and the
"fine-tune a medical diffusion model" path for a real checkpoint (full UNet fine-tune).

From scratch (no ``--base``): a CLIP BPE tokenizer is trained on the captions, the tiny
components are built from configs, the VAE is trained (MSE + small KL), its latent scale is
measured, then the UNet is trained on cached latents with 10% caption dropout (so classifier-free
guidance has an unconditional branch) and an EMA of its weights.  With ``--base REF`` the given
model's VAE and tokenizer are kept and its UNet (and, if asked, text encoder) are fine-tuned.
Either way the output is a standard diffusers directory that ``StableDiffusionPipeline.from_pretrained``
loads.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medti import __version__


@dataclass
class BaseTrainConfig:
    data: list[Path]
    out: Path
    base: str | None = None  # None: from scratch with the `spec` architecture
    spec: str = "tiny"
    steps: int | None = None  # UNet steps (default: the spec's recipe, or 1000 for a fine-tune)
    vae_steps: int | None = None  # VAE steps (from scratch only)
    batch: int | None = None
    lr: float = 1e-3
    vae_lr: float = 1e-3
    train_text_encoder: bool = False
    caption_dropout: float = 0.1
    ema_decay: float = 0.995
    snr_gamma: float | None = None  # min-SNR-gamma loss weighting; default: the spec's (from scratch) / off
    prediction_type: str | None = None  # from scratch only; default: the spec's (v_prediction)
    seed: int = 0
    device: str | None = None
    progress: bool = True
    overwrite: bool = False  # replace an existing pipeline dir at --out (--force)


@dataclass
class BaseTrainResult:
    out: Path
    n_images: int
    vae_steps: int
    unet_steps: int
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"base model -> {self.out} (diffusers dir): {self.n_images} images, VAE {self.vae_steps} steps, "
            f"UNet {self.unet_steps} steps, {self.seconds:.0f} s; final losses {self.stats.get('final', {})}"
        )


def _load_captioned(dirs: list[Path], size: int):
    """All images of the dataset dirs as uint8 [N,H,W,3] (resized to size) and their captions."""
    import numpy as np
    from PIL import Image

    from medti.data.dataset import Dataset, DatasetError

    imgs, caps = [], []
    for d in dirs:
        ds = Dataset(d)
        for c in ds.cases():
            with Image.open(c.path) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BICUBIC)
                imgs.append(np.asarray(im))
            caps.append(c.row.get("caption") or "")
    if not imgs:
        raise DatasetError(f"no images in {', '.join(map(str, dirs))}")
    return np.stack(imgs), caps


def _to_tensor(arr):
    import torch

    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def one_cycle(opt, lr: float, steps: int):
    """OneCycleLR with 5 % warm-up.  torch divides by (pct_start * steps - 1), so at exactly 20 steps
    0.05 would crash with ZeroDivisionError; 4 % is used there instead."""
    import torch

    pct = 0.04 if round(0.05 * steps, 9) == 1 else 0.05
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=pct)


def train_vae(
    vae,
    images,
    *,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    device,
    progress: bool,
    crop: int | None = None,
    decoder_only: bool = False,
) -> dict[str, float]:
    """L1 + MSE reconstruction + a small KL; returns final losses. ``images``: uint8 [N,H,W,3].

    ``crop``: train on random ``crop x crop`` patches (the VAE is fully convolutional), which
    costs a quarter per sample at half the size and lets many more steps fit in the budget.

    ``decoder_only``: freeze the encoder, so the latent space (and a UNet trained on it, and every
    embedding learned through it) stays valid, and fine-tune the decoder on the posteriors of the
    whole images (cropped together with the pixels when ``crop``).  This is how Stability made the
    ft-EMA / ft-MSE decoders for SD's VAE; in the tiny base it is what brings small lesions back.
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from medti.diffusion.latents import encode_latent_cache

    vae.to(device)
    f = 2 ** (len(vae.config.block_out_channels) - 1)  # pixels per latent
    x_all = _to_tensor(images)
    if decoder_only:
        vae.eval().requires_grad_(False)
        post_mean, post_std = encode_latent_cache(vae, x_all, batch=64, device=device)
        trained = [vae.decoder, vae.post_quant_conv]
    else:
        trained = [vae]
    for m in trained:
        m.train().requires_grad_(True)
    params = [p for m in trained for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = one_cycle(opt, lr, steps)
    gen = torch.Generator().manual_seed(seed)
    rec = kl = float("nan")
    bar = tqdm(range(steps), desc="train VAE decoder" if decoder_only else "train VAE", disable=not progress)
    for _ in bar:
        idx = torch.randint(0, len(x_all), (batch,), generator=gen)
        x = x_all[idx]
        lat = (post_mean[idx], post_std[idx]) if decoder_only else ()
        if crop and crop < x.shape[-1]:
            oy, ox = (int(v) for v in torch.randint(0, (x.shape[-1] - crop) // f + 1, (2,), generator=gen) * f)
            x = x[..., oy : oy + crop, ox : ox + crop]
            lat = tuple(a[..., oy // f : (oy + crop) // f, ox // f : (ox + crop) // f] for a in lat)
        x = x.to(device)
        if decoder_only:
            mean, std = (a.to(device) for a in lat)
            z = mean + std * torch.randn(mean.shape, generator=gen).to(device)
            loss_kl = torch.zeros((), device=device)
        else:
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(device)
            loss_kl = post.kl().mean() / z[0].numel()
        y = vae.decode(z).sample
        loss_rec = F.mse_loss(y, x) + F.l1_loss(y, x)
        loss = loss_rec + 1e-4 * loss_kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        rec, kl = float(loss_rec.detach()), float(loss_kl.detach())
        bar.set_postfix(mse=f"{rec:.4f}")
    vae.eval().requires_grad_(False)
    return {"vae_mse": rec, "vae_kl": kl} if not decoder_only else {"decoder_mse": rec}


def min_snr_weights(sched, t, gamma: float):
    """Per-sample loss weights of min-SNR-gamma (Hang et al. 2023) for timesteps ``t``: the
    epsilon-loss weight min(SNR, gamma) / SNR, expressed for the model's target (a v-prediction
    loss already carries a factor SNR + 1, so its weight is min(SNR, gamma) / (SNR + 1))."""
    import torch
    from diffusers.training_utils import compute_snr

    snr = compute_snr(sched, t)
    denom = snr + 1 if sched.config.prediction_type == "v_prediction" else snr
    return torch.clamp(snr, max=gamma) / denom


def train_unet(
    unet,
    text_encoder,
    tokenizer,
    noise_config: dict,
    latents_mean,
    latents_std,
    captions: list[str],
    *,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    device,
    caption_dropout: float,
    train_text_encoder: bool,
    ema_decay: float,
    progress: bool,
    snr_gamma: float | None = None,
) -> dict[str, float]:
    """Denoising training on cached (scaled) latent posteriors; EMA weights copied in at the end.

    ``snr_gamma``: min-SNR-gamma weighting (Hang et al. 2023), which stops the many easy low-noise
    timesteps from dominating the gradient; it converges several times faster at the same cost.
    """
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    sched = DDPMScheduler.from_config(noise_config)
    T = sched.config.num_train_timesteps
    uniq = sorted(set(captions) | {""})
    cap_index = torch.tensor([uniq.index(c) for c in captions])
    empty = uniq.index("")
    ids = tokenizer(uniq, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    unet.train().requires_grad_(True).to(device)
    text_encoder.to(device)
    params = list(unet.parameters())
    if train_text_encoder:
        text_encoder.train().requires_grad_(True)
        params += list(text_encoder.parameters())
        cached = None
    else:
        text_encoder.eval().requires_grad_(False)
        with torch.no_grad():
            cached = torch.cat([text_encoder(ids[i : i + 64].to(device))[0] for i in range(0, len(ids), 64)])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    lr_s = one_cycle(opt, lr, steps)
    ema = EMAModel(unet.parameters(), decay=ema_decay)
    gen = torch.Generator().manual_seed(seed)
    loss_v = float("nan")
    bar = tqdm(range(steps), desc="train UNet", disable=not progress)
    for _ in bar:
        idx = torch.randint(0, len(latents_mean), (batch,), generator=gen)
        lat = latents_mean[idx] + latents_std[idx] * torch.randn(latents_mean[idx].shape, generator=gen)
        noise = torch.randn(lat.shape, generator=gen)
        t = torch.randint(0, T, (batch,), generator=gen)
        drop = torch.rand(batch, generator=gen) < caption_dropout
        ci = torch.where(drop, torch.full_like(cap_index[idx], empty), cap_index[idx])
        lat, noise, t = lat.to(device), noise.to(device), t.to(device)
        noisy = sched.add_noise(lat, noise, t)
        target = sched.get_velocity(lat, noise, t) if sched.config.prediction_type == "v_prediction" else noise
        cond = cached[ci.to(device)] if cached is not None else text_encoder(ids[ci].to(device))[0]
        pred = unet(noisy, t, cond).sample
        if snr_gamma:
            w = min_snr_weights(sched, t, snr_gamma)
            loss = (F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3)) * w).mean()
        else:
            loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_s.step()
        ema.step(unet.parameters())
        loss_v = float(loss.detach())
        bar.set_postfix(loss=f"{loss_v:.4f}")
    ema.copy_to(unet.parameters())
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    return {"unet_loss": loss_v}


def train_base(cfg: BaseTrainConfig) -> BaseTrainResult:
    """Train (from scratch) or fine-tune a base model on captioned dataset dirs."""
    import torch
    from accelerate import Accelerator

    from medti._quiet import quiet_libraries
    from medti.diffusion.base import (
        BASE_VOCAB_TEXT,
        SPECS,
        build_components,
        load_base,
        save_pipeline_dir,
        train_tokenizer,
    )
    from medti.diffusion.latents import encode_latent_cache
    from medti.io import check_output_dir

    quiet_libraries()
    t0 = time.time()
    # before any training: a run of hours must not end in a refusal
    check_output_dir(cfg.out, cfg.overwrite, ("model_index.json",), "diffusers pipeline dir")
    torch.manual_seed(cfg.seed)
    device = Accelerator(cpu=(cfg.device == "cpu")).device
    stats: dict[str, Any] = {}
    if cfg.base is None:
        from dataclasses import replace

        spec = SPECS[cfg.spec]
        if cfg.prediction_type:
            spec = replace(spec, prediction_type=cfg.prediction_type)
        size = spec.image_size
        images, captions = _load_captioned(cfg.data, size)
        tok = train_tokenizer(captions + BASE_VOCAB_TEXT, spec.vocab_size)
        comps = build_components(spec, tok, seed=cfg.seed)
        vae_steps = cfg.vae_steps if cfg.vae_steps is not None else spec.vae_steps
        unet_steps = cfg.steps if cfg.steps is not None else spec.unet_steps
        batch = cfg.batch or spec.batch
        snr_gamma = cfg.snr_gamma if cfg.snr_gamma is not None else spec.snr_gamma
        # VAE phases: (steps, crop, decoder only, lr factor); with --vae-steps only the first
        phases = [(vae_steps, spec.vae_crop, False, 1.0)]
        if cfg.vae_steps is None:
            if spec.vae_crop and spec.vae_finish_steps:
                phases.append((spec.vae_finish_steps, None, False, 0.3))
            if spec.decoder_steps:
                phases.append((spec.decoder_steps, spec.decoder_crop, True, 1.0))
            if spec.decoder_finish_steps:
                phases.append((spec.decoder_finish_steps, None, True, 0.3))
        for k, (n, crop, decoder_only, lr_factor) in enumerate(phases):
            if n:
                stats.update(
                    train_vae(
                        comps["vae"], images, steps=n, batch=spec.vae_batch, lr=lr_factor * cfg.vae_lr,
                        seed=cfg.seed + k, device=device, progress=cfg.progress, crop=crop, decoder_only=decoder_only,
                    )
                )
        stats["vae_phases"] = [list(ph) for ph in phases]
        vae_steps = sum(ph[0] for ph in phases)
    else:
        b = load_base(cfg.base, progress=cfg.progress)
        comps = b.components()
        size = b.image_size
        images, captions = _load_captioned(cfg.data, size)
        vae_steps = 0
        unet_steps = cfg.steps if cfg.steps is not None else 1000
        batch = cfg.batch or 4
        snr_gamma = cfg.snr_gamma
    vae = comps["vae"].to(device)
    x = _to_tensor(images)
    mean, std = encode_latent_cache(vae, x, batch=64, device=device, progress=cfg.progress)
    if cfg.base is None:  # measure the latent scale, as SD did for its VAE
        scale = float(1.0 / (mean.std() + 1e-8))
        vae.register_to_config(scaling_factor=scale)
        stats["scaling_factor"] = scale
    sf = float(vae.config.scaling_factor)
    stats.update(
        train_unet(
            comps["unet"],
            comps["text_encoder"],
            comps["tokenizer"],
            dict(comps["scheduler"].config),
            mean * sf,
            std * sf,
            captions,
            steps=unet_steps,
            batch=batch,
            lr=cfg.lr,
            seed=cfg.seed,
            device=device,
            caption_dropout=cfg.caption_dropout,
            train_text_encoder=cfg.train_text_encoder,
            ema_decay=cfg.ema_decay,
            progress=cfg.progress,
            snr_gamma=snr_gamma,
        )
    )
    for k in ("vae", "unet", "text_encoder"):
        comps[k].to("cpu")
    seconds = time.time() - t0
    stats["final"] = {k: round(v, 5) for k, v in stats.items() if isinstance(v, float)}
    meta = {
        "medti_version": __version__,
        "from": cfg.base or f"scratch:{cfg.spec}",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k != "data"},
        "data": [str(d) for d in cfg.data],
        "n_images": int(len(images)),
        "vae_steps": vae_steps,
        "unet_steps": unet_steps,
        "batch": batch,
        "seconds": round(seconds, 1),
        "stats": stats,
        "device": str(device),
    }
    save_pipeline_dir(comps, cfg.out, meta=json.loads(json.dumps(meta, default=str)))
    return BaseTrainResult(out=Path(cfg.out), n_images=len(images), vae_steps=vae_steps, unet_steps=unet_steps, seconds=seconds, stats=stats)


def build_tiny(out: Path, progress: bool = True, spec: str = "tiny") -> Path:
    """Build the embedded tiny base: phantom corpora -> tokenizer -> VAE -> UNet -> diffusers dir.

    Deterministic: fixed seeds throughout, so a missing cache is rebuilt to the same model.  ``spec`` names
    another recipe in ``SPECS`` (experiments register variants of tiny's there); the corpora follow it.
    """
    import tempfile

    from medti.data.phantoms import PhantomConfig, generate_phantoms
    from medti.diffusion.base import SPECS

    name, spec = spec, SPECS[spec]
    if progress:
        print(
            "building the embedded tiny Stable Diffusion (first use only; about 20 min on 2 CPU cores, "
            "much less on a GPU) "
            f"-> {out}",
            flush=True,
        )
    with tempfile.TemporaryDirectory(prefix="medti-tiny-corpus-") as tmp:
        dirs = []
        for i, kind in enumerate(("prostate", "cxr")):
            d = Path(tmp) / kind
            generate_phantoms(
                PhantomConfig(kind=kind, out=d, n=spec.corpus_per_modality, size=spec.image_size, seed=1000 + i, unlabeled=True,
                             positive_fraction=spec.corpus_prevalence(kind))
            )
            dirs.append(d)
        res = train_base(BaseTrainConfig(data=dirs, out=out, spec=name, seed=spec.seed, progress=progress, overwrite=True))
    if progress:
        print(res.summary(), flush=True)
    return out
