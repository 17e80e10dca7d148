"""Textual inversion throughput and peak memory: medti's trainer vs the common reference loop.

Side by side in one run, same model, batch and data:

- ``medti``: :class:`medti.diffusion.textual_inversion.Inversion` - an ``n x d`` parameter
  substituted by a hook, VAE posteriors cached once, frozen modules in bf16 on a GPU;
- ``reference``: what the common reference script (diffusers'
  ``examples/textual_inversion/textual_inversion.py``) does per step: load + preprocess the
  images, VAE-encode them, train the whole token-embedding matrix with AdamW and restore its
  frozen rows afterwards, text encoder in fp32 (UNet/VAE in the same precision as ours).

Each method runs in a fresh subprocess so that its peak memory (CPU: max RSS of the process;
GPU: ``torch.cuda.max_memory_allocated``) is its own.

    python benchmarks/bench_textual_inversion.py                # tiny architecture on this machine
    python benchmarks/bench_textual_inversion.py --model sd2    # SD 2.0-base configs, random weights, 512 px (GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

N_IMAGES = 100


# ----------------------------------------------------------------------------- models
def sd2_components():
    """Random-weight components with the Stable Diffusion 2.0 (512-base, v-prediction) configs."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from medti.diffusion.base import BASE_VOCAB_TEXT, train_tokenizer

    tok = train_tokenizer(BASE_VOCAB_TEXT, 1000)
    torch.manual_seed(0)
    te = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
            num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )
    )
    # placeholder rows must not collide with the 49408-row matrix: pad the tokenizer to it
    tok.add_tokens([f"<pad{i}>" for i in range(49408 - len(tok))])
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024, use_linear_projection=True,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    sched = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    return dict(tokenizer=tok, text_encoder=te, unet=unet, vae=vae, scheduler=sched)


def tiny_components():
    """The tiny base when it is cached (weights do not change the speed), else its architecture."""
    from medti.diffusion.base import (
        BASE_VOCAB_TEXT,
        SPECS,
        build_components,
        embedded_dir,
        load_base,
        train_tokenizer,
    )

    if (embedded_dir("tiny") / "model_index.json").exists():
        b = load_base("tiny")
        return b.components(), "tiny (trained, cached)"
    spec = SPECS["tiny"]
    return build_components(spec, train_tokenizer(BASE_VOCAB_TEXT, spec.vocab_size)), "tiny architecture (random weights)"


def image_size(model: str) -> int:
    """Pixels of the benchmarked model's images: SD 2.0-base's 512, or the embedded tiny base's."""
    from medti.diffusion.base import SPECS

    return 512 if model == "sd2" else SPECS["tiny"].image_size


def make_data(size: int, out: Path) -> Path:
    from medti.data.phantoms import PhantomConfig, generate_phantoms

    generate_phantoms(PhantomConfig(kind="prostate", out=out, n=2 * N_IMAGES + 20, size=size, seed=7, positive_fraction=0.5))
    return out


def load_images(data: Path, size: int):
    """The 100 positive training images, as file paths (the reference loop reads files each step)."""
    from medti.data.dataset import Dataset

    cases = Dataset(data).cases(where={"csPCa": 1})[:N_IMAGES]
    return [c.path for c in cases]


def tensor_images(paths, size):
    import numpy as np
    import torch
    from PIL import Image

    arr = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC), np.float32) / 127.5 - 1 for p in paths]
    return torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------- the two loops
def run_medti(comps, paths, size, batch, steps, warmup, vectors, device, precision, gradient_checkpointing=False):
    import torch
    from accelerate import Accelerator

    from medti.diffusion.base import Base
    from medti.diffusion.textual_inversion import Inversion

    acc = Accelerator(cpu=device == "cpu")
    wd = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    base = Base(ref="bench", model_id="bench", model_hash="", **comps)
    t_setup = time.perf_counter()
    images = tensor_images(paths, size)
    inv = Inversion(base, images, modality="prostate_mri", token="<bench>", vectors=vectors, init_text="mri",
                    lr=0.005, batch=batch, seed=0, weight_dtype=wd, accelerator=acc,
                    gradient_checkpointing=gradient_checkpointing)
    setup = time.perf_counter() - t_setup
    for _ in range(warmup):
        inv.step_async()
    _sync(device)
    _reset_peak(device)
    t = time.perf_counter()
    for _ in range(steps):
        inv.step_async()
    _sync(device)
    return time.perf_counter() - t, setup


def run_reference(comps, paths, size, batch, steps, warmup, vectors, device, precision):
    """The reference script's step, faithfully: per-step image loading, VAE encode, full matrix."""
    import random

    import numpy as np
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from PIL import Image

    from medti.diffusion.templates import TEMPLATES
    from medti.diffusion.textual_inversion import placeholder_tokens

    acc = Accelerator(cpu=device == "cpu", mixed_precision=precision if precision in ("bf16", "fp16") else "no")
    wd = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    tok, te, unet, vae = comps["tokenizer"], comps["text_encoder"], comps["unet"], comps["vae"]
    names = placeholder_tokens("<bench>", vectors)
    tok.add_tokens(names)
    ids = tok.convert_tokens_to_ids(names)
    te.resize_token_embeddings(len(tok))
    w = te.get_input_embeddings().weight
    init = tok("mri", add_special_tokens=False).input_ids[0]
    with torch.no_grad():
        for i in ids:
            w[i] = w[init].clone()
    vae.requires_grad_(False)
    unet.requires_grad_(False)
    tm = getattr(te, "text_model", te)  # transformers 5 flattened CLIPTextModel
    tm.encoder.requires_grad_(False)
    tm.final_layer_norm.requires_grad_(False)
    tm.embeddings.position_embedding.requires_grad_(False)
    te.get_input_embeddings().requires_grad_(True)
    opt = torch.optim.AdamW(te.get_input_embeddings().parameters(), lr=0.005, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    te, opt = acc.prepare(te, opt)
    unet.to(acc.device, dtype=wd)
    vae.to(acc.device, dtype=wd)
    sched = DDPMScheduler.from_config(comps["scheduler"].config)
    orig = acc.unwrap_model(te).get_input_embeddings().weight.data.clone()
    keep = torch.ones((len(tok),), dtype=torch.bool)
    keep[min(ids) : max(ids) + 1] = False
    templates = [t.format(" ".join(names)) for t in TEMPLATES["prostate_mri"]]
    rnd = random.Random(0)
    g = torch.Generator().manual_seed(0)

    def example(p):  # the script's Dataset.__getitem__: open, resize, flip, normalise, tokenize
        img = Image.open(p).convert("RGB").resize((size, size), resample=Image.BICUBIC)
        if rnd.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        a = np.asarray(img).astype(np.float32) / 127.5 - 1.0
        text = rnd.choice(templates)
        return torch.from_numpy(a).permute(2, 0, 1), tok(text, padding="max_length", truncation=True, max_length=tok.model_max_length, return_tensors="pt").input_ids[0]

    def step():
        te.train()
        ex = [example(rnd.choice(paths)) for _ in range(batch)]
        px = torch.stack([e[0] for e in ex]).to(acc.device)
        input_ids = torch.stack([e[1] for e in ex]).to(acc.device)
        with acc.accumulate(te):
            latents = vae.encode(px.to(dtype=wd)).latent_dist.sample().detach() * vae.config.scaling_factor
            noise = torch.randn(latents.shape, generator=g).to(latents.device, latents.dtype)
            t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=g).to(acc.device)
            noisy = sched.add_noise(latents, noise, t)
            cond = te(input_ids)[0].to(dtype=wd)
            pred = unet(noisy, t, cond).sample
            target = sched.get_velocity(latents, noise, t) if sched.config.prediction_type == "v_prediction" else noise
            loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
            acc.backward(loss)
            opt.step()
            opt.zero_grad()
            with torch.no_grad():
                acc.unwrap_model(te).get_input_embeddings().weight[keep] = orig[keep]

    for _ in range(warmup):
        step()
    _sync(device)
    _reset_peak(device)
    tt = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return time.perf_counter() - tt, 0.0


def _sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device):
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


# ----------------------------------------------------------------------------- driver
def child(args) -> None:
    import torch

    from medti._quiet import quiet_libraries

    quiet_libraries()
    torch.manual_seed(0)
    comps, label = (sd2_components(), "SD 2.0-base configs, random weights") if args.model == "sd2" else tiny_components()
    size = image_size(args.model)
    paths = load_images(Path(args.data), size)
    fn = run_reference if args.method == "reference" else run_medti
    kw = {"gradient_checkpointing": True} if args.method == "medti-ckpt" else {}
    secs, setup = fn(comps, paths, size, args.batch, args.steps, args.warmup, args.vectors, args.device, args.precision, **kw)
    peak = (torch.cuda.max_memory_allocated() if args.device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print("RESULT " + json.dumps(dict(method=args.method, seconds=secs, setup=setup, steps=args.steps, batch=args.batch, peak_bytes=peak, model=label)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["tiny", "sd2"], default="tiny")
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda when present)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--vectors", type=int, default=64)
    ap.add_argument("--precision", default=None, help="no | bf16 | fp16 (default: bf16 on cuda, no on cpu)")
    ap.add_argument("--also-checkpointing", action="store_true",
                    help="also time medti with --gradient-checkpointing (UNet activations recomputed in backward)")
    ap.add_argument("--method", choices=["medti", "reference", "medti-ckpt"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    args = ap.parse_args()
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.precision = args.precision or ("bf16" if args.device == "cuda" else "no")
    args.batch = args.batch or (4 if args.model == "sd2" else 32)
    args.steps = args.steps or (20 if args.model == "sd2" else 30)
    if args.method:
        return child(args)

    from _report import machine, write_section

    size = image_size(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(size, Path(tmp) / "data")
        results = {}
        for method in ("reference",) + (("medti-ckpt",) if args.also_checkpointing else ()) + ("medti",):
            cmd = [sys.executable, __file__, "--method", method, "--data", str(data)] + [
                f"--{k}={getattr(args, k)}" for k in ("model", "device", "batch", "steps", "warmup", "vectors", "precision")
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode != 0 or not line:
                sys.exit(f"{method} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            results[method] = json.loads(line[0][7:])
            r = results[method]
            print(f"{method:9s} {r['steps'] * r['batch'] / r['seconds']:8.2f} samples/s  peak {r['peak_bytes'] / 2**20:8.0f} MiB")
    ref, ours = results["reference"], results["medti"]
    sps = {k: v["steps"] * v["batch"] / v["seconds"] for k, v in results.items()}
    speed = sps["medti"] / sps["reference"]
    mem = ours["peak_bytes"] / ref["peak_bytes"]
    ckpt_row = ckpt_ratio = ""
    if "medti-ckpt" in results:
        c = results["medti-ckpt"]
        ckpt_row = (f"| medti `--gradient-checkpointing` | {c['steps'] / c['seconds']:.2f} | {sps['medti-ckpt']:.1f} | "
                    f"{c['peak_bytes'] / 2**20:.0f} MiB |\n")
        ckpt_ratio = (f"\nmedti `--gradient-checkpointing` / reference: **{sps['medti-ckpt'] / sps['reference']:.2f}x samples/s**, "
                      f"**{c['peak_bytes'] / ref['peak_bytes']:.2f}x peak memory**.")
    mem_kind = "peak GPU memory allocated" if args.device == "cuda" else "peak RSS of the process (models + Python + torch)"
    body = f"""## Textual inversion trainer vs reference loop ({args.model}, {args.device})

`python benchmarks/bench_textual_inversion.py --model {args.model}{' --also-checkpointing' if args.also_checkpointing else ''}` on {machine()}.
Model: {ours['model']}; {N_IMAGES} prostate phantom images at {size} px; batch {args.batch}, {args.vectors} vectors,
{args.steps} timed steps after {args.warmup} warm-up steps; precision {args.precision}. Reference = the common reference
script's step (per-step image loading + VAE encode, whole token-embedding matrix trained with AdamW and its frozen
rows restored each step, fp32 text encoder).

| loop | steps/s | samples/s | {mem_kind} |
|---|---|---|---|
| reference | {ref['steps'] / ref['seconds']:.2f} | {sps['reference']:.1f} | {ref['peak_bytes'] / 2**20:.0f} MiB |
| medti | {ours['steps'] / ours['seconds']:.2f} | {sps['medti']:.1f} | {ours['peak_bytes'] / 2**20:.0f} MiB |
{ckpt_row}
medti / reference: **{speed:.2f}x samples/s**, **{mem:.2f}x peak memory** (target: >= 2x samples/s, <= 0.5x peak GPU memory).{ckpt_ratio}
medti's one-off latent caching of {N_IMAGES} images (x2 with mirrors) took {ours['setup']:.1f} s, not included above.
"""
    print(body)
    if not args.no_write:
        write_section(f"textual-inversion-{args.model}-{args.device}", body)


if __name__ == "__main__":
    main()
