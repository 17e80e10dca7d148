"""Guided sampling: composable prompts, negative prompts, interpolation and inpainting.

One denoising step of a composed prompt ``s_1:w_1 AND ... AND s_K:w_K`` (see
:mod:`medti.diffusion.prompts`) evaluates the UNet on the unconditional branch (or the negative
prompt, which replaces it) and on every sub-prompt, and combines the outputs as

    out = out_uncond + g * sum_i w_i (out_i - out_uncond)

(Composable Diffusion, as AUTOMATIC1111 writes it).  The combination is linear, so it is applied
to the model output whatever the model predicts (epsilon for SD 1.x, v for SD 2.x); the
scheduler's ``step`` then handles the prediction type.  A sub-prompt of weight 0 contributes
nothing and is not evaluated.  With ``guidance_rescale`` phi > 0 the combination is then rescaled
as diffusers' ``guidance_rescale`` does (Lin et al. 2023, sec. 3.4: to the per-image standard
deviation of the unguided prediction, mixed phi : 1 - phi), the unguided prediction of a composition
being its guidance-1 combination ``out_uncond + sum_i w_i (out_i - out_uncond)``: each ``AND`` term
adds guidance, and this keeps a K-term composition from over-exposing.  With ``guidance_interval``
(start, stop) the guidance scale applies only on the steps ``int(start * N) <= k < int(stop * N)`` of
the N-step schedule (Kynkaenniemi et al. 2024, "Applying guidance in a limited interval"; the
``start``/``stop`` of diffusers' guiders), and the guidance-1 combination is used on the others (the
text branch alone, for a plain prompt).  Inpainting with ``strength`` < 1 counts k from the full
schedule's start, so the interval always names the same noise levels.  With ``guidance_threshold``
q > 0, on guided steps each term ``out_i - out_uncond`` is kept only where its magnitude reaches the
q quantile over its image's latent positions, per channel, and is zero elsewhere (SEGA's edit
threshold, Brack et al. 2023, as diffusers' ``SemanticStableDiffusionPipeline`` applies it): a
concept then steers only the part of the image it acts on most.

All branches of all images of a step go through the UNet as **one batch** (rows = images x
branches), split only into chunks of at most ``max_rows`` rows to bound memory.  Rows are laid
out branch-major (all unconditional rows, then every image's first sub-prompt, ...), which for a
plain prompt is exactly diffusers' ``[uncond..., cond...]`` layout.

Text conditioning is encoded here, with the base's own text encoder, from
:func:`medti.diffusion.prompts.resolve`'s ``expanded_texts`` (each concept already written as its
n vector tokens, after :func:`medti.diffusion.embeddings.load_into`), so diffusers never expands
a token a second time.

Determinism: image ``i`` of a request owns a CPU ``torch.Generator`` seeded with its seed
(``seed + i`` for :meth:`GuidedSampler.sample`, as in :func:`medti.diffusion.sampling.sample_prompt`);
its initial latents are drawn from it on the CPU and ancestral schedulers draw their per-step
noise from it too, so the same request and seed give byte-identical images on the CPU.  (Floating
point results of a UNet call may differ in the last bits with the batch they are computed in, so
an image is reproduced exactly when its batch is the same - ``batch`` and ``max_rows`` equal.)

Schedulers (:data:`SCHEDULERS`): ``ddim``, ``euler``, ``euler_a`` (Euler ancestral), ``dpmpp``
(DPM-Solver++ 2M), each built with ``from_config(base.scheduler.config)`` so the base's noise
schedule and prediction type carry over.

Inpainting (:meth:`GuidedSampler.inpaint`) regenerates only the masked region:

- regular (4-channel) checkpoint: the image is VAE-encoded, noised to ``strength`` (img2img: the
  first ``1 - strength`` of the steps are skipped) and after every step the latents outside the
  latent-resolution mask (max-pooled, dilated by ``dilate`` latent pixels) are replaced by the
  original latents noised to the current timestep (``scheduler.add_noise``), with RePaint
  resampling: every step but the last runs ``resample`` times (default 2), the latents diffused
  back to the step's start in between (:func:`diffuse_back`, with alpha/sigma read through the
  scheduler's own ``add_noise`` and its multistep state restored), so the region is denoised again
  knowing the re-imposed surroundings;
- inpainting (9-channel, ``unet.config.in_channels == 9``) checkpoint: the UNet input is
  ``[latents, mask, masked-image latents]`` as in diffusers' ``StableDiffusionInpaintPipeline``;

in both cases the decoded image is pasted back into the original with a mask feathered *inward*
(``feather`` pixels), so every pixel outside the mask keeps its original value exactly.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medti.data.dataset import DatasetError

#: Scheduler names medti exposes -> diffusers class names.
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp": "DPMSolverMultistepScheduler",
}


class SynthesisError(DatasetError):
    """A synthesis request that cannot be carried out (bad spec key, mask, scheduler, prompt...);
    the message names the culprit.  A :class:`DatasetError`, so every front end reports it."""


# ----------------------------------------------------------------------------- helpers
def make_scheduler(config: Mapping[str, Any], name: str):
    """A fresh diffusers scheduler ``name`` (see :data:`SCHEDULERS`) built from a base's config."""
    import diffusers

    if name not in SCHEDULERS:
        raise SynthesisError(f"scheduler {name!r} is not one of {', '.join(SCHEDULERS)}")
    cls = getattr(diffusers, SCHEDULERS[name])
    kw: dict[str, Any] = {}
    if name == "dpmpp":
        kw = dict(algorithm_type="dpmsolver++", solver_order=2)
    return cls.from_config(dict(config), **kw)


def compose(uncond, conds: Sequence, weights: Sequence[float], scale: float):
    """``uncond + scale * sum_i weights[i] * (conds[i] - uncond)`` (the guidance combination)."""
    acc = None
    for c, w in zip(conds, weights, strict=True):
        term = (c - uncond) * float(w)
        acc = term if acc is None else acc + term
    return uncond if acc is None else uncond + scale * acc


def check_guidance_rescale(phi: float) -> float:
    """``phi`` must be a number in [0, 1] (0: plain guidance; 0.7: Lin et al.'s choice for v-prediction)."""
    if isinstance(phi, bool) or not isinstance(phi, int | float) or not 0.0 <= float(phi) <= 1.0:
        raise SynthesisError(f"guidance_rescale={phi!r} must be a number from 0 to 1")
    return float(phi)


def check_guidance_interval(interval) -> tuple[float, float]:
    """``(start, stop)``, fractions of the denoising steps with 0 <= start < stop <= 1; returned as floats."""
    try:
        start, stop = (float(v) for v in interval if not isinstance(v, bool))
    except (TypeError, ValueError):
        start = stop = float("nan")
    if not 0.0 <= start < stop <= 1.0:
        raise SynthesisError(
            f"guidance_interval={interval!r} must be two fractions of the steps, start < stop, from 0 to 1 (e.g. 0.3,1)"
        )
    return start, stop


def parse_guidance_interval(text: str) -> tuple[float, float]:
    """``"START,STOP"`` (a command-line value) as a checked ``(start, stop)``."""
    try:
        return check_guidance_interval(tuple(float(v) for v in str(text).split(",")))
    except (ValueError, SynthesisError):
        raise SynthesisError(
            f"{text!r}: write START,STOP, fractions of the steps with 0 <= START < STOP <= 1, e.g. 0.3,1"
        ) from None


def check_guidance_threshold(q: float) -> float:
    """``q`` must be a number in [0, 1) (0: every term applied everywhere; SEGA's default is 0.9)."""
    if isinstance(q, bool) or not isinstance(q, int | float) or not 0.0 <= float(q) < 1.0:
        raise SynthesisError(f"guidance_threshold={q!r} must be a number from 0 up to (not including) 1, e.g. 0.9")
    return float(q)


def threshold_terms(delta, q: float):
    """SEGA's edit threshold (Brack et al. 2023; diffusers' ``SemanticStableDiffusionPipeline``):
    each guidance term ``delta`` [rows, C, h, w] kept only where its magnitude reaches the ``q``
    quantile of that row's channel over the latent positions, zero elsewhere."""
    import torch

    if q <= 0.0:
        return delta
    mag = delta.abs().flatten(start_dim=2).float()
    cut = torch.quantile(mag, q, dim=2, keepdim=True).view(*delta.shape[:2], 1, 1)
    return torch.where(delta.abs() >= cut.to(delta.dtype), delta, torch.zeros_like(delta))


def guided_step(k: int, n: int, interval: tuple[float, float]) -> bool:
    """Whether step ``k`` of an ``n``-step schedule is guided (diffusers' guiders' ``start``/``stop`` rule)."""
    return int(interval[0] * n) <= k < int(interval[1] * n)


def rescale_noise_cfg(guided, reference, phi: float):
    """Guidance rescale (Lin et al. 2023, sec. 3.4): ``guided`` rescaled to ``reference``'s per-image
    standard deviation, mixed ``phi`` : ``1 - phi`` with itself - diffusers' own function."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
        rescale_noise_cfg as _rescale,
    )

    return _rescale(guided, reference, guidance_rescale=phi)


def _check_steps(steps: int, guidance: float, batch: int, max_rows: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise SynthesisError(f"steps={steps!r} must be an integer >= 1")
    if not isinstance(guidance, int | float) or not np.isfinite(guidance):
        raise SynthesisError(f"guidance={guidance!r} must be a finite number")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise SynthesisError(f"batch={batch!r} must be an integer >= 1")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise SynthesisError(f"max_rows={max_rows!r} must be an integer >= 1")


def ensure_loaded(base, emb) -> None:
    """Load ``emb`` into the base's tokenizer/text encoder unless this very embedding is there."""
    import torch

    from medti.diffusion.embeddings import EmbeddingError, load_into

    vocab = base.tokenizer.get_vocab()
    if emb.token not in vocab:
        load_into(base.tokenizer, base.text_encoder, emb)
        return
    names = [emb.token] + [f"{emb.token}_{i}" for i in range(1, emb.n_vectors)]
    ids = base.tokenizer.convert_tokens_to_ids(names)
    w = base.text_encoder.get_input_embeddings().weight
    # compare in the matrix's dtype: a bf16/fp16 text encoder holds the vectors rounded to it
    if any(n not in vocab for n in names) or not torch.equal(
        w[ids].detach().cpu(), emb.vectors.to(dtype=w.dtype).cpu()
    ):
        raise EmbeddingError(
            f"token {emb.token!r} is already loaded into this base with other vectors; "
            "two embeddings of one concept name cannot be used together"
        )


@dataclass
class _Item:
    """One image to generate: its branch texts, their weights, the unconditional text, its seed."""

    texts: list[str]  # expanded conditional texts (non-zero weights only)
    weights: list[float]
    uncond: str | None  # expanded negative prompt ("" = empty prompt); None = no guidance (eps = cond)
    seed: int


@dataclass
class _Inpaint:
    """Per-request inpainting context at model resolution (tensors on the CPU, float32)."""

    image_latents: Any  # [1,4,h,w]
    latent_mask: Any  # [1,1,h,w] 1 = regenerate (max-pooled + dilated) - regular checkpoints
    mask9: Any  # [1,1,h,w] nearest-resized pixel mask - 9-channel checkpoints
    masked_latents: Any  # [1,4,h,w] latents of the image with the mask blanked - 9-channel
    strength: float
    resample: int  # RePaint's U: each step (but the last) runs this many times, diffused back in between


# ----------------------------------------------------------------------------- sampler
class GuidedSampler:
    """Composable-guidance sampler over a :class:`medti.diffusion.base.Base`.

    ``embeddings``: :class:`~medti.diffusion.embeddings.Embedding` objects (loaded into the base
    here); a prompt names a concept by its name (``csPCa``, ``<csPCa>``).  ``batch``: images per
    denoising group; ``max_rows``: most rows (images x branches) per UNet call.
    """

    def __init__(
        self,
        base,
        embeddings: Iterable[Any] = (),
        *,
        scheduler: str = "dpmpp",
        steps: int = 30,
        guidance: float = 7.5,
        batch: int = 8,
        max_rows: int = 64,
        eta: float = 0.0,
        guidance_rescale: float = 0.0,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        guidance_threshold: float = 0.0,
        progress: bool = False,
    ):
        from medti.diffusion.prompts import ConceptSpec

        _check_steps(steps, guidance, batch, max_rows)
        if scheduler not in SCHEDULERS:
            raise SynthesisError(f"scheduler {scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        self.base = base
        self.scheduler_name = scheduler
        self.steps, self.guidance, self.batch, self.max_rows = steps, float(guidance), batch, max_rows
        self.eta = float(eta)
        self.guidance_rescale = check_guidance_rescale(guidance_rescale)
        self.guidance_interval = check_guidance_interval(guidance_interval)
        self.guidance_threshold = check_guidance_threshold(guidance_threshold)
        self.progress = progress
        self.embeddings: dict[str, Any] = {}
        self.concepts: dict[str, ConceptSpec] = {}
        for emb in embeddings:
            name = emb.concept
            if name in self.embeddings:
                raise SynthesisError(f"two embeddings for concept {name!r}; pass each concept once")
            ensure_loaded(base, emb)
            self.embeddings[name] = emb
            self.concepts[name] = ConceptSpec.from_embedding(emb)
        self._enc_cache: dict[str, Any] = {}
        self.unet_calls = 0

    # ------------------------------------------------------------------ prompts
    def resolve(self, prompt, negative: str | None = None):
        """:func:`medti.diffusion.prompts.resolve` against the loaded concepts and the tokenizer."""
        from medti.diffusion.prompts import resolve

        return resolve(prompt, self.concepts, self.base.tokenizer, negative=negative or None)

    def embedding_versions(self, resolved) -> dict[str, str]:
        """``{concept: Embedding.version}`` of the concepts a resolved prompt uses."""
        return {name: self.embeddings[name].version for name in resolved.concepts}

    def _items(self, resolved, seeds: Iterable[int]) -> list[_Item]:
        texts, weights = [], []
        for t, w in zip(resolved.expanded_texts, resolved.weights, strict=True):
            if w != 0.0:
                texts.append(t)
                weights.append(float(w))
        neg = resolved.negative_expanded if resolved.negative else ""
        plain = len(texts) == 1 and weights[0] == 1.0 and self.guidance <= 1.0 and not neg
        return [_Item(list(texts), list(weights), None if plain else neg, int(s)) for s in seeds]

    # ------------------------------------------------------------------ public API
    def sample(self, prompt, n: int = 1, seed: int = 0, negative: str | None = None) -> np.ndarray:
        """``n`` images (uint8 [n,H,W,3]) of one (composed) prompt; image ``i`` uses seed ``seed + i``."""
        resolved = self.resolve(prompt, negative)
        return self._generate(self._items(resolved, range(seed, seed + n)))

    def sample_many(self, requests: Sequence[tuple[Any, int]], negative: str | None = None) -> np.ndarray:
        """One image per ``(prompt, seed)``; different prompts share UNet batches.  A prompt may be
        a :class:`~medti.diffusion.prompts.ResolvedPrompt` (its own negative prompt is used)."""
        from medti.diffusion.prompts import ResolvedPrompt

        items: list[_Item] = []
        cache: dict[str, Any] = {}
        for prompt, seed in requests:
            if isinstance(prompt, ResolvedPrompt):
                items += self._items(prompt, [seed])
                continue
            key = str(prompt)
            if key not in cache:
                cache[key] = self.resolve(prompt, negative)
            items += self._items(cache[key], [seed])
        return self._generate(items)

    def interpolation_prompts(self, a: str, b: str, weights: Sequence[float]):
        """``a:(1-w) AND b:w`` for every ``w`` (as :class:`~medti.diffusion.prompts.ComposedPrompt`)."""
        from medti.diffusion.prompts import ComposedPrompt, SubPrompt

        return [ComposedPrompt((SubPrompt(a, 1.0 - float(w)), SubPrompt(b, float(w)))) for w in weights]

    def interpolate(
        self, a: str, b: str, weights: Sequence[float], seeds: Sequence[int], negative: str | None = None
    ) -> np.ndarray:
        """Images [len(seeds), len(weights), H, W, 3] of ``a:(1-w) AND b:w``: one strip per seed,
        every image of a strip starting from the same noise (that seed's)."""
        if not len(weights):
            raise SynthesisError("interpolation needs at least one weight")
        prompts = self.interpolation_prompts(a, b, weights)
        resolved = [self.resolve(p, negative) for p in prompts]
        items = [it for s in seeds for r in resolved for it in self._items(r, [s])]
        out = self._generate(items)
        return out.reshape(len(seeds), len(weights), *out.shape[1:])

    def inpaint(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        prompt,
        n: int = 1,
        seed: int = 0,
        negative: str | None = None,
        strength: float = 0.75,
        feather: float | None = None,
        dilate: int = 1,
        resample: int = 2,
    ) -> np.ndarray:
        """``n`` inpainted versions (uint8 [n,H,W,3]) of ``image`` (uint8 HxWx3 or HxW): only
        ``mask`` (bool HxW, True = regenerate) changes; outside it the pixels are the original's.

        Regular checkpoints: masked latent denoising (the noised original's latents outside the
        latent mask after every step), with RePaint resampling (Lugmayr et al. 2022, jump length 1):
        each step but the last runs ``resample`` times, diffused back to its start in between, so the
        generated region is denoised again knowing the re-imposed surroundings; ``resample=1`` is
        plain masked denoising at half the UNet calls. 9-channel inpainting checkpoints see the mask
        and ignore ``resample``."""
        img, m = _check_image_mask(image, mask)
        if not 0.0 < float(strength) <= 1.0:
            raise SynthesisError(f"strength={strength!r} must be in (0, 1]")
        for name, v, lo, unit in (("dilate", dilate, 0, "latent pixels"), ("resample", resample, 1, "passes per step; 1 = no resampling")):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise SynthesisError(f"{name}={v!r} must be an integer >= {lo} ({unit})")
        h, w = m.shape
        size = self.base.image_size
        feather = max(1.0, round(min(h, w) / 32)) if feather is None else float(feather)
        if feather < 0:
            raise SynthesisError(f"feather={feather!r} must be >= 0 (pixels)")
        work_img, work_mask = img, m
        if (h, w) != (size, size):  # run the model at its own resolution, paste back at ours
            work_img = _resize(img, size, "bicubic")
            work_mask = _resize(m.astype(np.uint8) * 255, size, "nearest") > 127
            if not work_mask.any():
                work_mask = _resize(m.astype(np.uint8) * 255, size, "box") > 0
        ctx = self._inpaint_context(work_img, work_mask, float(strength), dilate, resample)
        resolved = self.resolve(prompt, negative)
        gen = self._generate(self._items(resolved, range(seed, seed + n)), ctx)
        out = np.empty((n, h, w, 3), np.uint8)
        for i in range(n):
            g = gen[i] if (h, w) == (size, size) else _resize(gen[i], (h, w), "bicubic")
            out[i] = paste(img, g, m, feather)
        return out

    # ------------------------------------------------------------------ internals
    @property
    def _device(self):
        return self.base.unet.device

    def _encode_texts(self, texts: list[str]):
        """Text-encoder hidden states [len(texts), L, D] (cached per text)."""
        import torch

        missing = [t for t in dict.fromkeys(texts) if t not in self._enc_cache]
        if missing:
            tok, te = self.base.tokenizer, self.base.text_encoder
            ids = tok(
                missing, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
            )
            te_dev = te.device
            mask = None
            if getattr(te.config, "use_attention_mask", False):
                mask = ids.attention_mask.to(te_dev)
            with torch.no_grad():
                hidden = te(ids.input_ids.to(te_dev), attention_mask=mask)[0]
            for t, hs in zip(missing, hidden, strict=True):
                self._enc_cache[t] = hs.to(device=self._device, dtype=self.base.unet.dtype)
        return torch.stack([self._enc_cache[t] for t in texts])

    def _inpaint_context(self, img: np.ndarray, mask: np.ndarray, strength: float, dilate: int, resample: int) -> _Inpaint:
        import torch
        import torch.nn.functional as F

        vae = self.base.vae
        sf = float(vae.config.scaling_factor)
        vsf = self.base.vae_scale_factor
        x = torch.from_numpy(img.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        mp = torch.from_numpy(mask.astype(np.float32))[None, None]
        h, w = img.shape[0] // vsf, img.shape[1] // vsf
        with torch.no_grad():
            lat = vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mean.float().cpu() * sf
            lm = F.adaptive_max_pool2d(mp, (h, w))
            if dilate:
                lm = F.max_pool2d(lm, 2 * dilate + 1, stride=1, padding=dilate)
            m9 = masked = None
            if self.base.unet.config.in_channels == 9:
                m9 = F.interpolate(mp, size=(h, w))
                xm = x * (mp < 0.5)
                masked = vae.encode(xm.to(vae.device, vae.dtype)).latent_dist.mean.float().cpu() * sf
        return _Inpaint(lat, lm, m9, masked, strength, resample)

    def _plan(self, items: list[_Item]):
        """Row layout of one group: (row_item, row_text, uncond_row, cond rows, their item, weights, texts)."""
        texts: dict[str, int] = {}

        def tid(t: str) -> int:
            return texts.setdefault(t, len(texts))

        row_item, row_text = [], []
        uncond_row = [0] * len(items)
        for i, it in enumerate(items):  # slot 0: the unconditional (or the only) branch
            uncond_row[i] = len(row_item)
            row_item.append(i)
            row_text.append(tid(it.uncond if it.uncond is not None else it.texts[0]))
        c_rows, c_item, c_w = [], [], []
        for j in range(max(len(it.texts) for it in items)):
            for i, it in enumerate(items):
                if it.uncond is None or j >= len(it.texts):
                    continue
                c_rows.append(len(row_item))
                c_item.append(i)
                c_w.append(it.weights[j])
                row_item.append(i)
                row_text.append(tid(it.texts[j]))
        return row_item, row_text, uncond_row, c_rows, c_item, c_w, list(texts)

    def _generate(self, items: list[_Item], inpaint: _Inpaint | None = None) -> np.ndarray:
        from tqdm.auto import tqdm

        out = []
        with tqdm(total=len(items), desc="sample", unit="img", disable=not self.progress, leave=False) as bar:
            for s in range(0, len(items), self.batch):
                out.append(self._group(items[s : s + self.batch], inpaint))
                bar.update(len(out[-1]))
        return np.concatenate(out) if out else np.zeros((0, 0, 0, 3), np.uint8)

    def _group(self, items: list[_Item], inpaint: _Inpaint | None) -> np.ndarray:
        import torch

        base, unet = self.base, self.base.unet
        device, dtype = self._device, unet.dtype
        sched = make_scheduler(base.scheduler.config, self.scheduler_name)
        sched.set_timesteps(self.steps, device=device)
        timesteps = sched.timesteps
        if inpaint is not None and inpaint.strength < 1.0:
            init = min(int(self.steps * inpaint.strength), self.steps)
            t_start = self.steps - init
            if init < 1:
                raise SynthesisError(
                    f"strength {inpaint.strength} with {self.steps} steps leaves no denoising step; "
                    "raise strength or steps"
                )
            timesteps = timesteps[t_start * sched.order :]
            if hasattr(sched, "set_begin_index"):
                sched.set_begin_index(t_start * sched.order)
        elif inpaint is not None and hasattr(sched, "set_begin_index"):
            sched.set_begin_index(0)

        n = len(items)
        lat_c = int(base.vae.config.latent_channels)
        size = unet.config.sample_size
        hw = tuple(inpaint.image_latents.shape[-2:]) if inpaint is not None else (size, size)
        gens = [torch.Generator(device="cpu").manual_seed(it.seed) for it in items]
        noise = torch.cat([torch.randn((1, lat_c, *hw), generator=g, dtype=torch.float32) for g in gens]).to(device)
        if inpaint is None or inpaint.strength >= 1.0:
            latents = noise * sched.init_noise_sigma
        else:
            img_lat = inpaint.image_latents.to(device).expand(n, -1, -1, -1)
            latents = sched.add_noise(img_lat, noise, timesteps[:1].repeat(n))
        regular = inpaint is not None and unet.config.in_channels != 9
        nine = inpaint is not None and unet.config.in_channels == 9
        if inpaint is not None:
            img_lat = inpaint.image_latents.to(device).expand(n, -1, -1, -1)
            lmask = inpaint.latent_mask.to(device)
        if nine:
            extra = torch.cat(
                [inpaint.mask9.expand(n, -1, -1, -1), inpaint.masked_latents.expand(n, -1, -1, -1)], dim=1
            ).to(device)
        elif unet.config.in_channels == 9:
            raise SynthesisError(
                "this base is an inpainting checkpoint (9-channel UNet); it can only inpaint (give an image and a mask)"
            )

        row_item, row_text, uncond_row, c_rows, c_item, c_w, texts = self._plan(items)
        enc = self._encode_texts(texts)
        row_item_t = torch.tensor(row_item, device=device)
        row_text_t = torch.tensor(row_text, device=device)
        uncond_t = torch.tensor(uncond_row, device=device)
        cond_enc = enc[row_text_t]
        if c_rows:
            c_rows_t = torch.tensor(c_rows, device=device)
            c_item_t = torch.tensor(c_item, device=device)
            c_uncond_t = uncond_t[c_item_t]
            c_w_t = torch.tensor(c_w, device=device, dtype=torch.float32).view(-1, 1, 1, 1)
        step_kw = {}
        params = inspect.signature(sched.step).parameters
        if "generator" in params:
            step_kw["generator"] = gens
        if "eta" in params:
            step_kw["eta"] = self.eta
        rows = len(row_item)
        first = self.steps - len(timesteps) // sched.order  # index of this run's first step in the schedule

        resample = inpaint.resample if regular else 1
        with torch.inference_mode():
            for i, t in enumerate(timesteps):
                on = guided_step(first + i // sched.order, self.steps, self.guidance_interval)
                g = self.guidance if on else 1.0
                q = self.guidance_threshold if on else 0.0
                again = resample if i < len(timesteps) - 1 else 1
                for u in range(again):
                    if u < again - 1:  # RePaint: run this step again from here, solver state included
                        saved, (a0, s0) = copy.deepcopy(sched), _alpha_sigma(sched, timesteps[i : i + 1])
                    x = sched.scale_model_input(latents, t)
                    x = x[row_item_t]
                    if nine:
                        x = torch.cat([x, extra[row_item_t]], dim=1)
                    x = x.to(dtype)
                    outs = []
                    for s in range(0, rows, self.max_rows):
                        self.unet_calls += 1
                        outs.append(unet(x[s : s + self.max_rows], t, encoder_hidden_states=cond_enc[s : s + self.max_rows]).sample)
                    o = (torch.cat(outs) if len(outs) > 1 else outs[0]).float()
                    pred = o[uncond_t]
                    if c_rows:
                        delta = threshold_terms(o[c_rows_t] - o[c_uncond_t], q) * c_w_t
                        acc = torch.zeros_like(pred).index_add_(0, c_item_t, delta)
                        guided = pred + g * acc
                        if self.guidance_rescale > 0.0:
                            # the guidance-1 combination plays the text branch's part (it is the text
                            # branch for a plain prompt): diffusers' rescale, per image
                            guided = rescale_noise_cfg(guided, pred + acc, self.guidance_rescale)
                        pred = guided
                    latents = sched.step(pred, t, latents, **step_kw, return_dict=False)[0]
                    if regular:
                        ref = img_lat
                        if i < len(timesteps) - 1:
                            ref = sched.add_noise(img_lat, noise, timesteps[i + 1 : i + 2])
                        latents = (1 - lmask) * ref + lmask * latents
                    if u < again - 1:
                        fresh = torch.cat([torch.randn((1, lat_c, *hw), generator=gg, dtype=torch.float32) for gg in gens])
                        latents = diffuse_back(latents, (a0, s0), _alpha_sigma(sched, timesteps[i + 1 : i + 2]), fresh.to(device))
                        sched = saved
            return self._decode(latents)

    def _decode(self, latents) -> np.ndarray:
        import torch

        from medti.diffusion.sampling import to_uint8_images

        vae = self.base.vae
        sf = float(vae.config.scaling_factor)
        ims = []
        with torch.inference_mode():
            for s in range(0, latents.shape[0], self.max_rows):
                z = (latents[s : s + self.max_rows] / sf).to(vae.device, vae.dtype)
                x = vae.decode(z).sample
                ims.append((x / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy())
        return to_uint8_images(np.concatenate(ims))


def diffuse_back(x, to: tuple, frm: tuple, noise):
    """A sample of q(x_t | x_s) for a noisier time t from ``x`` at a cleaner time s, with
    ``x_t = alpha_t x_0 + sigma_t eps`` at both ends (``to`` = (alpha_t, sigma_t), ``frm`` = (alpha_s, sigma_s)):
    ``x_t = (alpha_t / alpha_s) x_s + sqrt(sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2) noise``."""
    (a_t, s_t), (a_s, s_s) = to, frm
    r = a_t / a_s
    return r * x + (s_t**2 - (r * s_s) ** 2).clamp(min=0).sqrt() * noise


def _alpha_sigma(sched, t):
    """(alpha_t, sigma_t) of ``x_t = alpha_t x_0 + sigma_t eps`` at the scheduler's position ``t``,
    read through its own ``add_noise`` (VP schedulers: sqrt(abar), sqrt(1 - abar); Euler family: 1, sigma)."""
    import torch

    one, zero = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)
    return sched.add_noise(one, zero, t).flatten()[0], sched.add_noise(zero, one, t).flatten()[0]


# ----------------------------------------------------------------------------- pixel helpers
def _check_image_mask(image, mask) -> tuple[np.ndarray, np.ndarray]:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise SynthesisError(f"image must be uint8 HxWx3 (or HxW), got {img.dtype} {img.shape}")
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    if m.shape != img.shape[:2]:
        raise SynthesisError(f"mask is {m.shape[:2]} but the image is {img.shape[:2]}; they must match")
    m = m > 127 if m.dtype == np.uint8 else m.astype(bool)
    if not m.any():
        raise SynthesisError("mask is empty: nothing to inpaint (white/True = regenerate)")
    return img, m


def _resize(a: np.ndarray, size, mode: str) -> np.ndarray:
    from PIL import Image

    hw = (size, size) if isinstance(size, int) else tuple(size)
    res = {"bicubic": Image.BICUBIC, "nearest": Image.NEAREST, "box": Image.BOX}[mode]
    return np.asarray(Image.fromarray(a).resize((hw[1], hw[0]), res))


def feather_alpha(mask: np.ndarray, feather: float) -> np.ndarray:
    """Blend weight of the generated image: 0 outside ``mask``, rising to 1 within ``feather``
    pixels inside its border (a hard paste when ``feather`` is 0)."""
    from scipy import ndimage

    m = np.asarray(mask, bool)
    if feather <= 0:
        return m.astype(np.float64)
    d = ndimage.distance_transform_edt(m)  # distance to the nearest unmasked pixel (>= 1 inside)
    return np.clip(d / float(feather), 0.0, 1.0)


def paste(original: np.ndarray, generated: np.ndarray, mask: np.ndarray, feather: float) -> np.ndarray:
    """``generated`` pasted into ``original`` through the inward-feathered ``mask``; pixels
    outside the mask are the original's, exactly."""
    a = feather_alpha(mask, feather)[..., None]
    out = np.clip(np.rint(a * generated.astype(np.float64) + (1 - a) * original.astype(np.float64)), 0, 255)
    out = out.astype(np.uint8)
    out[~np.asarray(mask, bool)] = original[~np.asarray(mask, bool)]
    return out
