"""Guided sampling on an untrained micro base: composition math and batching, every scheduler x
both prediction types, determinism, interpolation strips, inpainting (4- and 9-channel UNets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medti.diffusion.base import build_micro, load_base
from medti.diffusion.embeddings import Embedding, EmbeddingError
from medti.diffusion.guided import (
    SCHEDULERS,
    GuidedSampler,
    SynthesisError,
    compose,
    make_scheduler,
    paste,
    threshold_terms,
)
from medti.diffusion.prompts import PromptError
from medti.diffusion.sampling import to_uint8_images


def _emb(concept: str, seed: int, n: int = 3, dim: int = 32) -> Embedding:
    g = torch.Generator().manual_seed(seed)
    return Embedding(f"<{concept.lower()}>", torch.randn(n, dim, generator=g) * 0.5, {"concept": concept})


EMBS = [_emb("csPCa", 1), _emb("healthy", 2), _emb("pleural_effusion", 3, n=2)]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    return {p: load_base(str(build_micro(root / p, prediction_type=p))) for p in ("v_prediction", "epsilon")}


def _sampler(base, **kw) -> GuidedSampler:
    args = dict(scheduler="ddim", steps=3, guidance=5.0, batch=4)
    args.update(kw)
    return GuidedSampler(base, EMBS, **args)


class _Counter:
    """Counts UNet forward calls and remembers their batch sizes / input channels."""

    def __init__(self, unet):
        self.rows, self.channels = [], []
        self.h = unet.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        x = args[0] if args else kwargs["sample"]
        self.rows.append(int(x.shape[0]))
        self.channels.append(int(x.shape[1]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.h.remove()


# ----------------------------------------------------------------------------- composition math
def test_compose_is_the_composable_diffusion_formula():
    g = torch.Generator().manual_seed(0)
    u, a, b = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    # weights (1): exactly classifier-free guidance
    assert torch.equal(compose(u, [a], [1.0], 7.5), u + 7.5 * (a - u))
    out = compose(u, [a, b], [0.3, 0.7], 4.0)
    assert torch.allclose(out, u + 4.0 * (0.3 * (a - u) + 0.7 * (b - u)), atol=1e-6)
    # a negative weight pushes away from a concept
    assert torch.allclose(compose(u, [a, b], [1.0, -0.5], 2.0), u + 2.0 * ((a - u) - 0.5 * (b - u)), atol=1e-6)


@pytest.mark.parametrize("name", ["ddim", "euler_a"])
def test_plain_prompt_gives_exactly_diffusers_cfg(bases, name):
    base = bases["v_prediction"]
    s = _sampler(base, scheduler=name, batch=3)
    ours = s.sample("axial prostate mri", n=3, seed=11)
    pipe = base.pipeline()
    pipe.scheduler = make_scheduler(base.scheduler.config, name)
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(11 + i) for i in range(3)]
    ref = pipe(["axial prostate mri"] * 3, num_inference_steps=3, guidance_scale=5.0, generator=gens, output_type="np").images
    assert np.array_equal(ours, to_uint8_images(ref))


@pytest.mark.parametrize("pred", ["v_prediction", "epsilon"])
def test_guidance_rescale_gives_exactly_diffusers(bases, pred):
    base = bases[pred]
    # guidance 20: on this untrained micro base guidance moves pixels little, so make it strong
    ours = _sampler(base, batch=2, guidance=20.0, guidance_rescale=0.7).sample("axial prostate mri", n=2, seed=3)
    pipe = base.pipeline()
    pipe.scheduler = make_scheduler(base.scheduler.config, "ddim")
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(3 + i) for i in range(2)]
    kw = dict(num_inference_steps=3, guidance_scale=20.0, generator=gens, output_type="np")
    ref = pipe(["axial prostate mri"] * 2, guidance_rescale=0.7, **kw).images
    assert np.array_equal(ours, to_uint8_images(ref))
    plain = pipe(["axial prostate mri"] * 2, **{**kw, "generator": [torch.Generator().manual_seed(3 + i) for i in range(2)]}).images
    assert (ours != to_uint8_images(plain)).mean() > 0.3  # the rescale changed most pixels


def _reference_loop(base, sampler, prompt, negative, seed, guidance, rescale=0.0, guided=(0, 1, 2), threshold=0.0):
    """Composable diffusion written out naively: one UNet call per branch, DDIM, one image; with
    ``rescale``, the guided output is rescaled to the guidance-1 combination's spread (Lin et al.);
    with ``threshold`` q, each branch's term is zeroed where its magnitude is below numpy's q quantile
    over that channel's positions (SEGA); steps not in ``guided`` use guidance 1 and no threshold."""

    def term(e, u, k):
        d = base.unet(x, t, e).sample - u
        if threshold and k in guided:
            cut = np.quantile(d.abs().flatten(2).numpy(), threshold, axis=2)  # [1, C]
            d = torch.where(d.abs() >= torch.from_numpy(cut).float()[..., None, None], d, torch.zeros_like(d))
        return d

    r = sampler.resolve(prompt, negative)
    tok, te = base.tokenizer, base.text_encoder

    def enc(t):
        ids = tok([t], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
        return te(ids)[0]

    sched = make_scheduler(base.scheduler.config, "ddim")
    sched.set_timesteps(3)
    lat = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed)) * sched.init_noise_sigma
    with torch.no_grad():
        e_u = enc(r.negative_expanded)
        e_c = [enc(t) for t in r.expanded_texts]
        for k, t in enumerate(sched.timesteps):
            x = sched.scale_model_input(lat, t)
            u = base.unet(x, t, e_u).sample
            delta = sum(w * term(e, u, k) for w, e in zip(r.weights, e_c, strict=True))
            out = u + (guidance if k in guided else 1.0) * delta
            if rescale:
                ref = u + delta
                out = rescale * out * (ref.std() / out.std()) + (1 - rescale) * out
            lat = sched.step(out, t, lat).prev_sample
        img = base.vae.decode(lat / base.vae.config.scaling_factor).sample
    return to_uint8_images((img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy())[0]


@pytest.mark.parametrize("pred", ["v_prediction", "epsilon"])
def test_composition_with_negative_matches_a_per_concept_loop(bases, pred):
    base = bases[pred]
    prompt, negative = "csPCa:0.3 AND axial prostate mri, healthy:0.7 AND pleural_effusion:-0.2", "blurry csPCa"
    ours = _sampler(base).sample(prompt, n=1, seed=4, negative=negative)[0]
    ref = _reference_loop(base, _sampler(base), prompt, negative, 4, 5.0)
    assert np.abs(ours.astype(int) - ref).max() <= 1  # float summation order only
    plain = _sampler(base).sample("csPCa", n=1, seed=4)[0]
    assert np.abs(ours.astype(int) - plain).mean() > 1  # the composition did something


@pytest.mark.parametrize(
    ("options", "reference"),
    [
        (dict(guidance_rescale=0.7), dict(rescale=0.7)),
        # 3 steps, interval (0.5, 1): int(1.5) = 1, so the first step runs at guidance 1 and the others at 20
        (dict(guidance_interval=(0.5, 1.0)), dict(guided=(1, 2))),
        (dict(guidance_threshold=0.8), dict(threshold=0.8)),
        # the unguided first step takes every term whole
        (dict(guidance_threshold=0.8, guidance_interval=(0.5, 1.0)), dict(threshold=0.8, guided=(1, 2))),
    ],
    ids=["rescale", "interval", "threshold", "threshold+interval"],
)
def test_guidance_options_on_a_composition_match_a_per_concept_loop(bases, options, reference):
    base = bases["v_prediction"]
    prompt = "csPCa AND healthy:-0.5"
    ours = _sampler(base, guidance=20.0, **options).sample(prompt, n=1, seed=6)[0]
    ref = _reference_loop(base, _sampler(base), prompt, None, 6, 20.0, **reference)
    assert np.abs(ours.astype(int) - ref).max() <= 1  # float summation order only
    assert (ours != _sampler(base, guidance=20.0).sample(prompt, n=1, seed=6)[0]).mean() > 0.3  # the option acted


def test_guidance_interval_guides_only_its_steps_as_diffusers_guiders_count_them(bases):
    from diffusers.guiders import ClassifierFreeGuidance

    from medti.diffusion.guided import guided_step

    # the step rule is diffusers' guiders' start/stop rule (a guider with CFG on predicts 2 branches)
    for n in (3, 10, 25, 30):
        for interval in ((0.0, 1.0), (0.3, 1.0), (0.1, 0.8), (0.5, 0.6)):
            guider = ClassifierFreeGuidance(guidance_scale=5.0, start=interval[0], stop=interval[1])
            for k in range(n):
                guider.set_state(step=k, num_inference_steps=n, timestep=torch.tensor(0))
                assert guided_step(k, n, interval) == (guider.num_conditions == 2), (n, interval, k)
    base, prompt = bases["v_prediction"], "csPCa AND healthy:0.8"
    full = _sampler(base, guidance=20.0, guidance_interval=[0, 1]).sample(prompt, n=1, seed=6)[0]
    assert np.array_equal(full, _sampler(base, guidance=20.0).sample(prompt, n=1, seed=6)[0])


def test_threshold_terms_keeps_the_strongest_positions_of_each_image_and_channel():
    d = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    d[1] *= 100.0  # another image's scale must not move this image's cut
    kept = threshold_terms(d, 0.75)
    for row in range(3):
        for c in range(4):
            a, k = d[row, c].flatten(), kept[row, c].flatten()
            top = set(a.abs().argsort(descending=True)[:16].tolist())
            assert set(k.nonzero().flatten().tolist()) == top  # the 16 of 64 strongest (no ties in random data)
            assert torch.equal(k[list(top)], a[list(top)])  # kept unchanged
    assert threshold_terms(d, 0.0) is d


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, True, "0.9", float("nan")])
def test_a_bad_guidance_threshold_is_refused_naming_it(bases, bad):
    with pytest.raises(SynthesisError, match="guidance_threshold=.* must be a number from 0 up to"):
        _sampler(bases["epsilon"], guidance_threshold=bad)


@pytest.mark.parametrize("bad", [(0.5, 0.5), (0.8, 0.2), (-0.1, 1.0), (0.0, 1.5), (0.3,), (0.1, 0.2, 0.3), "0.3,1", 0.3])
def test_a_bad_guidance_interval_is_refused_naming_it(bases, bad):
    with pytest.raises(SynthesisError, match="guidance_interval=.* must be two fractions"):
        _sampler(bases["epsilon"], guidance_interval=bad)


def test_all_branches_of_a_step_go_through_the_unet_as_one_batch(bases):
    base = bases["epsilon"]
    prompt = "csPCa AND healthy:0.5"
    with _Counter(base.unet) as c:
        one = _sampler(base, batch=3).sample(prompt, n=3, seed=0)
    assert c.rows == [9, 9, 9]  # 3 images x (uncond + 2 concepts), one call per step
    with _Counter(base.unet) as c:
        chunked = _sampler(base, batch=3, max_rows=4).sample(prompt, n=3, seed=0)
    assert c.rows == [4, 4, 1] * 3
    assert np.abs(one.astype(int) - chunked).max() <= 1  # same result up to float rounding
    with _Counter(base.unet) as c:
        _sampler(base, batch=3).sample("csPCa AND healthy:0", n=3, seed=0)
    assert c.rows == [6, 6, 6]  # a zero-weight sub-prompt is not evaluated


@pytest.mark.parametrize("pred", ["v_prediction", "epsilon"])
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_is_deterministic_per_seed(bases, pred, name):
    base = bases[pred]
    prompt, neg = "csPCa:0.6 AND healthy:0.4", "pleural_effusion"
    a = _sampler(base, scheduler=name).sample(prompt, n=2, seed=3, negative=neg)
    b = _sampler(base, scheduler=name).sample(prompt, n=2, seed=3, negative=neg)
    assert a.dtype == np.uint8 and a.shape == (2, 32, 32, 3)
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a[0], a[1])  # seed + i per image
    c = _sampler(base, scheduler=name).sample(prompt, n=1, seed=4, negative=neg)
    assert np.array_equal(a[1], c[0]) or np.abs(a[1].astype(int) - c[0]).max() <= 1  # image i = seed + i


# ----------------------------------------------------------------------------- interpolation
def test_interpolation_strips_share_their_noise(bases):
    base = bases["v_prediction"]
    weights = [0.0, 0.5, 1.0]
    s = _sampler(base, scheduler="euler_a", batch=1)
    strips = s.interpolate("csPCa", "healthy", weights, seeds=[7, 8])
    assert strips.shape == (2, 3, 32, 32, 3)
    # weight 0 is exactly the A-only prompt at the strip's seed, weight 1 the B-only prompt
    assert np.array_equal(strips[0, 0], s.sample("csPCa", n=1, seed=7)[0])
    assert np.array_equal(strips[1, 2], s.sample("healthy", n=1, seed=8)[0])
    assert not np.array_equal(strips[0, 0], strips[0, 2])
    # batched across weights and seeds: the same images up to float rounding
    batched = _sampler(base, scheduler="euler_a", batch=6).interpolate("csPCa", "healthy", weights, seeds=[7, 8])
    assert np.abs(batched.astype(int) - strips).max() <= 1
    assert [p.format() for p in s.interpolation_prompts("csPCa", "healthy", [0.25])] == ["csPCa:0.75 AND healthy:0.25"]


# ----------------------------------------------------------------------------- inpainting
def _image_and_mask(size=32):
    rng = np.random.default_rng(0)
    img = (rng.random((size, size, 3)) * 80 + 60).astype(np.uint8)
    mask = np.zeros((size, size), bool)
    mask[size // 4 : size // 2, size // 4 : size // 2 + 4] = True
    return img, mask


@pytest.mark.parametrize(
    ("pred", "name", "strength", "resample"),
    [("v_prediction", "euler", 0.75, 2), ("epsilon", "dpmpp", 1.0, 2), ("epsilon", "ddim", 0.5, 1), ("v_prediction", "euler_a", 1.0, 3)],
)
def test_inpainting_changes_only_the_masked_region(bases, pred, name, strength, resample):
    base = bases[pred]
    img, mask = _image_and_mask()
    s = _sampler(base, scheduler=name, steps=4)
    with _Counter(base.unet) as c:
        out = s.inpaint(img, mask, "csPCa", n=2, seed=1, strength=strength, resample=resample)
    denoising_steps = int(4 * strength)
    assert len(c.rows) == resample * denoising_steps - (resample - 1)  # every step but the last, `resample` times
    assert out.shape == (2, 32, 32, 3)
    assert np.array_equal(out[:, ~mask], np.broadcast_to(img[~mask], out[:, ~mask].shape))
    assert np.abs(out[:, mask].astype(int) - img[mask]).mean() > 2
    again = _sampler(base, scheduler=name, steps=4).inpaint(img, mask, "csPCa", n=2, seed=1, strength=strength, resample=resample)
    assert out.tobytes() == again.tobytes()


@pytest.mark.parametrize("name", ["ddim", "euler", "dpmpp"])
def test_resampling_jump_has_the_forward_process_marginal(bases, name):
    """RePaint's jump back from a step's end t_{i+1} to its start t_i must leave a sample that
    looks exactly like the clean latents noised to t_i: mean alpha_i x0, spread sigma_i."""
    from medti.diffusion.guided import _alpha_sigma, diffuse_back

    sched = make_scheduler(bases["epsilon"].scheduler.config, name)
    sched.set_timesteps(10)
    ts = sched.timesteps
    i = 3
    (a0, s0), (a1, s1) = _alpha_sigma(sched, ts[i : i + 1]), _alpha_sigma(sched, ts[i + 1 : i + 2])
    if name == "euler":  # variance exploding: x_t = x0 + sigma eps
        assert float(a0) == 1.0 and float(s0) == pytest.approx(float(sched.sigmas[i]))
    else:  # variance preserving
        abar = float(sched.alphas_cumprod[int(ts[i])])
        assert float(a0) == pytest.approx(abar**0.5, rel=1e-4) and float(s0) == pytest.approx((1 - abar) ** 0.5, rel=1e-4)
    assert float(s0) > float(s1)  # t_i is the noisier end
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((1, 4, 128, 128), 0.7)
    x1 = a1 * x0 + s1 * torch.randn(x0.shape, generator=g)
    x = diffuse_back(x1, (a0, s0), (a1, s1), torch.randn(x0.shape, generator=g))
    assert float(x.mean()) == pytest.approx(0.7 * float(a0), abs=0.02 * float(s0) + 1e-3)
    assert float(x.std()) == pytest.approx(float(s0), rel=0.02)


def test_inpainting_at_another_resolution_pastes_back_at_the_original_one(bases):
    img, mask = _image_and_mask(48)
    out = _sampler(bases["epsilon"]).inpaint(img, mask, "healthy", seed=2)[0]
    assert out.shape == (48, 48, 3)
    assert np.array_equal(out[~mask], img[~mask]) and not np.array_equal(out[mask], img[mask])


def test_paste_feathers_inward_only():
    orig = np.zeros((16, 16, 3), np.uint8)
    gen = np.full((16, 16, 3), 200, np.uint8)
    mask = np.zeros((16, 16), bool)
    mask[4:12, 4:12] = True
    out = paste(orig, gen, mask, feather=2)
    assert (out[~mask] == 0).all()
    assert out[8, 8, 0] == 200  # the mask's interior is the generated image
    assert 0 < out[4, 8, 0] < 200  # its border is blended


def test_nine_channel_inpainting_checkpoint(bases, tmp_path):
    from diffusers import UNet2DConditionModel

    src = bases["epsilon"]
    torch.manual_seed(0)
    unet9 = UNet2DConditionModel.from_config({**dict(src.unet.config), "in_channels": 9}).eval()
    base = load_base(str(build_micro(tmp_path / "m", prediction_type="epsilon")))
    base.unet = unet9
    img, mask = _image_and_mask()
    s = _sampler(base, scheduler="dpmpp", steps=3)
    with _Counter(unet9) as c:
        out = s.inpaint(img, mask, "csPCa AND healthy:0.5", n=1, seed=0, strength=1.0)[0]
    assert set(c.channels) == {9} and c.rows == [3, 3, 3]
    assert np.array_equal(out[~mask], img[~mask]) and not np.array_equal(out[mask], img[mask])
    with pytest.raises(SynthesisError, match="inpainting checkpoint"):
        s.sample("csPCa", n=1)


# ----------------------------------------------------------------------------- errors
def test_bad_requests_name_the_culprit(bases):
    base = bases["epsilon"]
    with pytest.raises(SynthesisError, match="scheduler 'heun'"):
        _sampler(base, scheduler="heun")
    with pytest.raises(SynthesisError, match="guidance_rescale=1.5"):
        _sampler(base, guidance_rescale=1.5)
    with pytest.raises(PromptError, match="pneumonia"):
        _sampler(base).sample("pneumonia AND csPCa", n=1)
    img, mask = _image_and_mask()
    with pytest.raises(SynthesisError, match="empty"):
        _sampler(base).inpaint(img, np.zeros_like(mask), "csPCa")
    with pytest.raises(SynthesisError, match="mask is"):
        _sampler(base).inpaint(img, mask[:16], "csPCa")
    with pytest.raises(SynthesisError, match="strength"):
        _sampler(base).inpaint(img, mask, "csPCa", strength=0)
    with pytest.raises(SynthesisError, match="resample=0"):
        _sampler(base).inpaint(img, mask, "csPCa", resample=0)
    other = Embedding("<cspca>", torch.zeros(3, 32), {"concept": "csPCa"})
    with pytest.raises(EmbeddingError, match="already loaded"):
        GuidedSampler(base, [other])


def test_a_second_sampler_reuses_embeddings_loaded_into_a_bf16_text_encoder(tmp_path):
    """On a GPU the base runs in bf16: the loaded rows are the vectors rounded to bf16, and a second
    sampler (another batch size, another request in a server) must accept the same embedding file
    while still refusing other vectors under the same name."""
    base = load_base(str(build_micro(tmp_path / "m", prediction_type="epsilon")))
    base.text_encoder.to(torch.bfloat16)
    emb = _emb("csPCa", 0)
    assert not torch.equal(emb.vectors, emb.vectors.to(torch.bfloat16).float())  # rounding does change them
    GuidedSampler(base, [emb], steps=2)
    again = GuidedSampler(base, [emb], steps=2)
    assert again.resolve("csPCa").weights == [1.0]
    with pytest.raises(EmbeddingError, match="already loaded"):
        GuidedSampler(base, [_emb("csPCa", 1)])


@pytest.mark.parametrize("pred", ["v_prediction", "epsilon"])
def test_every_sampling_path_runs_on_a_bf16_base(tmp_path, pred):
    """A GPU runs the base in bf16 (the CPU suite otherwise only sees fp32): every scheduler, composition
    with rescale and an interval, interpolation and inpainting must work there, not fail on a dtype."""
    base = load_base(str(build_micro(tmp_path / "m", prediction_type=pred)))
    for m in (base.text_encoder, base.unet, base.vae):
        m.to(torch.bfloat16)
    for sched in ("ddim", "euler", "euler_a", "dpmpp"):
        s = GuidedSampler(base, EMBS, scheduler=sched, steps=3, guidance=5.0, batch=2, guidance_rescale=0.5,
                          guidance_interval=(0.3, 1.0))
        a = s.sample("csPCa AND healthy:0.5", n=2, seed=0, negative="healthy")
        assert a.shape == (2, 32, 32, 3) and a.dtype == np.uint8 and a.std() > 0
        assert np.array_equal(a, s.sample("csPCa AND healthy:0.5", n=2, seed=0, negative="healthy"))
    strips = s.interpolate("healthy", "csPCa", [0, 0.5, 1], [0, 1])
    assert np.asarray(strips).shape == (2, 3, 32, 32, 3)
    img, mask = _image_and_mask()
    out = s.inpaint(img, mask, "csPCa", n=1, seed=0, strength=0.75)[0]
    assert np.array_equal(out[~mask], img[~mask]) and not np.array_equal(out[mask], img[mask])
