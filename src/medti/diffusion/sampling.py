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


def label_columns(grid: np.ndarray, labels: list[str], title: str = "", pad: int = 2) -> np.ndarray:
    """``grid`` (uint8 [H,W,3], equal columns as ``grid_image`` lays them out) with a white band on
    top: ``title`` on its first line, then each column's label centred over it (Pillow's built-in
    font; nothing is downloaded).  Labels wider than their column are clipped, not wrapped."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    line = 14
    band = Image.new("RGB", (grid.shape[1], line * (2 if title else 1) + pad), "white")
    draw = ImageDraw.Draw(band)
    if title:
        draw.text((pad + 2, 1), title, fill="black", font=font)
    col_w = (grid.shape[1] - pad) / max(len(labels), 1)
    y = line if title else 1
    for k, text in enumerate(labels):
        w = draw.textlength(text, font=font)
        draw.text((pad + k * col_w + max((col_w - pad - w) / 2, 0), y), text, fill="black", font=font)
    return np.concatenate([np.asarray(band, np.uint8), grid], axis=0)


def save_grid(
    images, path: Path, cols: int | None = None, scale: int = 1, labels: list[str] | None = None, title: str = ""
) -> Path:
    """Write a PNG grid of ``images`` atomically; ``scale`` enlarges small images (nearest);
    ``labels`` (one per column) and ``title`` go in a band above it."""
    from medti.data.dataset import encode_png
    from medti.io import atomic_write_bytes

    g = grid_image(images, cols=cols)
    if scale > 1:
        g = g.repeat(scale, axis=0).repeat(scale, axis=1)
    if labels:
        g = label_columns(g, labels, title, pad=2 * scale)
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
    from medti.diffusion.templates import TEMPLATES

    base = load_base(base_ref)
    emb = load_embedding(embedding)
    load_into(base.tokenizer, base.text_encoder, emb)
    tmpl = TEMPLATES.get(emb.metadata.get("modality", ""), TEMPLATES["default"])
    prompt = (template or tmpl[1 if len(tmpl) > 1 else 0]).format(emb.token)
    return sample_prompt(base, prompt, n, seed, **kw)
