"""Sampling helpers shared by training (sample grids) and synthesis."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def to_uint8_images(images) -> np.ndarray:
    """[N,H,W,3] float in [0,1] (or uint8) -> uint8."""
    a = np.asarray(images)
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    return a


def grid_image(images, cols: int | None = None, pad: int = 2) -> np.ndarray:
    a = to_uint8_images(images)
    n, h, w, c = a.shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = a[i]
    return out


def save_grid(images, path: Path, cols: int | None = None, scale: int = 1) -> Path:
    """Write a PNG grid of ``images`` atomically; ``scale`` enlarges small images (nearest)."""
    from medti.data.dataset import atomic_write_bytes, encode_png

    g = grid_image(images, cols=cols)
    if scale > 1:
        g = g.repeat(scale, axis=0).repeat(scale, axis=1)
    atomic_write_bytes(Path(path), encode_png(g))
    return Path(path)


def sample_prompt(
    base,
    prompt: str,
    n: int,
    seed: int,
    *,
    steps: int = 30,
    guidance: float = 7.5,
    batch: int = 32,
    negative: str | None = None,
    progress: bool = False,
) -> np.ndarray:
    """``n`` images (uint8 [n,H,W,3]) for one plain prompt through diffusers' StableDiffusionPipeline.

    Image ``i`` uses its own generator seeded ``seed + i``, so an image does not depend on the batch
    it was generated in and the same seed gives identical images on CPU.
    """
    import torch
    from tqdm.auto import tqdm

    pipe = base.pipeline()
    pipe.set_progress_bar_config(disable=True)
    out = []
    for i in tqdm(range(0, n, batch), desc="sample", disable=not progress, leave=False):
        k = min(batch, n - i)
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(k)]
        with torch.no_grad():
            ims = pipe(
                [prompt] * k,
                negative_prompt=[negative] * k if negative else None,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=gens,
                output_type="np",
            ).images
        out.append(to_uint8_images(ims))
    return np.concatenate(out)


def sample_embedding(base_ref: str, embedding, n: int, seed: int, *, template: str | None = None, **kw) -> np.ndarray:
    """Images from an embedding file's concept in its modality's default template."""
    from medti.diffusion.base import load_base
    from medti.diffusion.embeddings import load_embedding, load_into
    from medti.diffusion.textual_inversion import TEMPLATES

    base = load_base(base_ref)
    emb = load_embedding(embedding)
    load_into(base.tokenizer, base.text_encoder, emb)
    tmpl = TEMPLATES.get(emb.metadata.get("modality", ""), TEMPLATES["default"])
    prompt = (template or tmpl[1 if len(tmpl) > 1 else 0]).format(emb.token)
    return sample_prompt(base, prompt, n, seed, **kw)
