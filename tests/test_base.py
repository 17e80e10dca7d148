"""Base models: resolving --base, the embedded micro base, and `medti base train` (scratch + fine-tune)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from medti.cli import app
from medti.data.phantoms import PhantomConfig, generate_phantoms
from medti.diffusion.base import BaseModelError, build_micro, load_base, resolve_base
from medti.diffusion.base_train import BaseTrainConfig, train_base


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "prostate"
    return generate_phantoms(PhantomConfig(kind="prostate", out=out, n=24, size=32, seed=3, unlabeled=True)).out


def test_resolve_kinds(tmp_path):
    assert resolve_base("tiny") == ("embedded", "tiny")
    assert resolve_base("stabilityai/stable-diffusion-2-base")[0] == "hub"
    with pytest.raises(BaseModelError, match="not found"):
        resolve_base(str(tmp_path / "sd2.ckpt"))
    with pytest.raises(BaseModelError, match="no such file"):
        resolve_base("./nope")


def test_corrupt_single_file_checkpoint_gives_a_clear_error(tmp_path):
    bad = tmp_path / "512-base-ema.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(BaseModelError, match="512-base-ema.safetensors"):
        load_base(str(bad))


def test_train_from_scratch_writes_a_standard_diffusers_dir(tmp_path, corpus):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "base"
    res = train_base(BaseTrainConfig(data=[corpus], out=out, spec="micro", steps=3, vae_steps=2, batch=4, progress=False))
    assert res.unet_steps == 3 and res.vae_steps == 2
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False)
    # the tokenizer was trained on the captions: caption words are whole tokens
    assert "gland</w>" in pipe.tokenizer.get_vocab()
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on the data, as SD did for its VAE
    img = pipe("axial prostate mri", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 32, 32, 3)


@pytest.mark.parametrize("train_te", [False, True])
def test_fine_tune_changes_the_unet_and_keeps_vae_and_tokenizer(tmp_path, corpus, train_te):
    src = build_micro(tmp_path / "micro", prediction_type="epsilon")
    out = tmp_path / "tuned"
    train_base(BaseTrainConfig(data=[corpus], out=out, base=str(src), steps=2, batch=2, train_text_encoder=train_te, progress=False))
    a, b = load_base(str(src)), load_base(str(out))
    assert any(not torch.equal(v, b.unet.state_dict()[k]) for k, v in a.unet.state_dict().items())
    assert all(torch.equal(v, b.vae.state_dict()[k]) for k, v in a.vae.state_dict().items())
    te_same = all(torch.equal(v, b.text_encoder.state_dict()[k]) for k, v in a.text_encoder.state_dict().items())
    assert te_same != train_te
    assert b.prediction_type == "epsilon" and len(a.tokenizer) == len(b.tokenizer)


def test_cli_base_train(tmp_path, corpus):
    out = tmp_path / "cli-base"
    r = CliRunner().invoke(app, ["base", "train", "--data", str(corpus), "--out", str(out), "--base", str(build_micro(tmp_path / "m")), "--steps", "1", "--batch", "2"])
    assert r.exit_code == 0, r.output
    assert (out / "model_index.json").exists()
    # an existing pipeline dir is replaced only with --force (here: fine-tuned in place), and a
    # non-empty dir that is not one (a mistyped --out, the data itself) never, before any training
    base_args = ["base", "train", "--data", str(corpus), "--base", str(out), "--steps", "1", "--batch", "2"]
    again = CliRunner().invoke(app, [*base_args, "--out", str(out)])
    assert again.exit_code != 0 and "already exists and is not empty (use --force" in again.output
    again = CliRunner().invoke(app, [*base_args, "--out", str(out), "--force"])
    assert again.exit_code == 0, again.output
    before = sorted(p.relative_to(corpus) for p in corpus.rglob("*"))
    bad = CliRunner().invoke(app, [*base_args, "--out", str(corpus), "--force"])
    assert bad.exit_code != 0 and "is not a diffusers pipeline dir" in bad.output and "training" not in bad.output
    assert sorted(p.relative_to(corpus) for p in corpus.rglob("*")) == before


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_cap_the_easy_low_noise_timesteps(prediction_type):
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    from medti.diffusion.base_train import min_snr_weights

    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    t = torch.arange(0, 1000, 10)
    w, snr = min_snr_weights(sched, t, 5.0), compute_snr(sched, t)
    # expressed as a weight on the epsilon loss: min(SNR, 5) / SNR - 1 where SNR <= 5, less where above
    eps_w = w * (snr + 1) / snr if prediction_type == "v_prediction" else w
    hard, easy = snr <= 5, snr > 5
    assert torch.allclose(eps_w[hard], torch.ones(int(hard.sum())), atol=1e-5)
    assert torch.allclose(eps_w[easy], 5 / snr[easy], rtol=1e-5)
    assert easy.any() and hard.any() and bool((w > 0).all())


def test_vae_trained_on_crops_reconstructs_whole_images_better(corpus):
    """The recipe trains the VAE on random crops (4x the steps per second); the fully convolutional
    VAE must then reconstruct whole images better than before training."""
    import numpy as np

    from medti.diffusion.base import SPECS, build_components, train_tokenizer
    from medti.diffusion.base_train import _load_captioned, _to_tensor, train_vae

    images, caps = _load_captioned([corpus], 32)
    vae = build_components(SPECS["micro"], train_tokenizer(caps, 300), seed=0)["vae"]
    x = _to_tensor(images)

    def err() -> float:
        with torch.no_grad():
            return float((vae.decode(vae.encode(x).latent_dist.mean).sample - x).abs().mean())

    before = err()
    train_vae(vae, images, steps=40, batch=8, lr=3e-3, seed=0, device="cpu", progress=False, crop=16)
    assert vae.decode(vae.encode(x[:1]).latent_dist.mean).sample.shape == (1, 3, 32, 32)
    assert err() < 0.8 * before, (before, err())
    assert np.isfinite(err())


def test_decoder_only_finetune_keeps_the_latent_space_and_improves_reconstruction(corpus):
    """The tiny recipe's last VAE phase fine-tunes the decoder alone: the encoder (so every latent
    a UNet was trained on, and every embedding learned through it) must be bit-identical, and the
    decoder must reconstruct better than the one it started from."""
    from medti.diffusion.base import SPECS, build_components, train_tokenizer
    from medti.diffusion.base_train import _load_captioned, _to_tensor, train_vae

    images, caps = _load_captioned([corpus], 32)
    vae = build_components(SPECS["micro"], train_tokenizer(caps, 300), seed=0)["vae"]
    train_vae(vae, images, steps=20, batch=8, lr=3e-3, seed=0, device="cpu", progress=False)
    x = _to_tensor(images)
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean
    enc = {k: v.clone() for k, v in vae.state_dict().items() if not k.startswith(("decoder.", "post_quant_conv."))}

    def err() -> float:
        with torch.no_grad():
            return float((vae.decode(z).sample - x).abs().mean())

    before = err()
    # as the recipe does: patches first, then whole images (GroupNorm and attention see the full size again)
    train_vae(vae, images, steps=80, batch=8, lr=3e-3, seed=1, device="cpu", progress=False, crop=16, decoder_only=True)
    stats = train_vae(vae, images, steps=30, batch=8, lr=1e-3, seed=2, device="cpu", progress=False, decoder_only=True)
    after = vae.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in enc.items())
    with torch.no_grad():
        assert torch.equal(vae.encode(x).latent_dist.mean, z)
    assert err() < 0.85 * before, (before, err())
    assert set(stats) == {"decoder_mse"}


def test_text_encoder_init_depends_on_token_strings_not_on_the_trainers_id_order(corpus):
    """The tokenizers BPE trainer numbers tokens in hash-map order, which changes between processes. A rebuilt
    base must still see the same conditioning for the same caption, or it trains to a different model."""
    from transformers import CLIPTokenizer

    from medti.diffusion.base import SPECS, build_components, train_tokenizer
    from medti.diffusion.base_train import _load_captioned

    _, caps = _load_captioned([corpus], 32)
    tok = train_tokenizer(caps, 300)
    vocab = tok.get_vocab()
    # the same tokens and merges, other ids: what a trainer run in another process can hand back
    order = sorted(vocab, key=lambda t: (-len(t), t))
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    other = CLIPTokenizer(vocab={t: i for i, t in enumerate(order)}, merges=merges, model_max_length=77)
    caption = caps[0]
    assert tok(caption).input_ids != other(caption).input_ids  # the ids really differ
    outs = []
    for t in (tok, other):
        te = build_components(SPECS["micro"], t, seed=0)["text_encoder"].eval()
        with torch.no_grad():
            outs.append(te(t(caption, return_tensors="pt").input_ids)[0])
    assert torch.equal(outs[0], outs[1])


# loads a --base in a fresh process (its own tokenizers hash-map seed, its own env) and prints id and hash
_LOAD_BASE = """
import sys
from medti.diffusion.base import load_base
b = load_base(sys.argv[1], progress=False)
print(b.model_id, b.model_hash)
"""


@pytest.mark.slow  # two micro builds in fresh processes: 19 s the 10-minute suite cannot spare
def test_embedded_base_rebuilt_in_another_cache_has_the_same_hash(tmp_path):
    """Embeddings and synthetic datasets record their base's hash; a colleague's rebuild of the embedded base
    (another machine, another process) must give the same one, or every shared embedding warns that it
    'may not transfer'."""
    import os
    import subprocess
    import sys

    hashes = []
    for k in range(2):
        env = {**os.environ, "MEDTI_CACHE": str(tmp_path / f"cache{k}"), "PYTHONHASHSEED": str(k)}
        res = subprocess.run([sys.executable, "-c", _LOAD_BASE, "micro"], env=env, capture_output=True, text=True, check=True)
        hashes.append(res.stdout.split()[-1])
    assert hashes[0] == hashes[1] and len(hashes[0]) == 16


def test_hash_covers_the_weights_not_the_build_log(tmp_path):
    from medti.diffusion.base import BUILD_LOG, save_pipeline_dir, weights_hash

    base = load_base(str(build_micro(tmp_path / "m0")))
    a = save_pipeline_dir(base.components(), tmp_path / "a", meta={"seconds": 600.1, "data": ["/tmp/corpus-x"]})
    b = save_pipeline_dir(base.components(), tmp_path / "b", meta={"seconds": 612.9, "data": ["/tmp/corpus-y"]})
    assert weights_hash(a) == weights_hash(b)
    with torch.no_grad():
        base.unet.conv_out.bias.add_(1e-3)
    c = save_pipeline_dir(base.components(), tmp_path / "c", meta={"seconds": 600.1, "data": ["/tmp/corpus-x"]})
    assert weights_hash(c) != weights_hash(a)
    # a hash recorded before the build log was left out still names the same dir
    old = weights_hash(a, legacy=True)
    assert old != weights_hash(a) and (a / BUILD_LOG).is_file()
    loaded = load_base(str(a))
    assert loaded.has_hash(old) and loaded.has_hash(loaded.model_hash) and not loaded.has_hash(weights_hash(c))


def test_hash_reads_only_what_loading_reads(tmp_path, monkeypatch):
    """A hub download of an SD repo holds, beside the pipeline's own weights, single-file checkpoints, fp16
    variants, .bin twins and a safety checker: 20-40 GB that medti never loads. The hash must not read them (it ran
    on every command) nor depend on them."""
    import shutil

    import medti.diffusion.base as base_mod
    from medti.diffusion.base import model_files, weights_hash

    clean = build_micro(tmp_path / "clean")
    hub = tmp_path / "hub"
    shutil.copytree(clean, hub)
    (hub / "v1-5-pruned-emaonly.ckpt").write_bytes(b"c" * 1000)
    for comp, stem in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model")):
        (hub / comp / f"{stem}.fp16.safetensors").write_bytes(b"h" * 100)
        (hub / comp / f"{stem}.fp16-00001-of-00002.safetensors").write_bytes(b"s" * 100)
        (hub / comp / ("pytorch_model.bin" if comp == "text_encoder" else f"{stem}.bin")).write_bytes(b"b" * 100)
    (hub / "safety_checker").mkdir()
    (hub / "safety_checker" / "model.safetensors").write_bytes(b"x" * 100)
    (hub / "feature_extractor").mkdir()
    (hub / "feature_extractor" / "preprocessor_config.json").write_text("{}")
    (hub / "unet" / "notes.txt").write_text("fine-tuned on ...")  # text beside weights that loading never reads
    (hub / "text_encoder" / "pytorch_model.bin.index.json").write_text("{}")  # the index of the unused format
    assert weights_hash(hub) == weights_hash(clean)
    names = {p.relative_to(hub).as_posix() for p in model_files(hub)}
    assert "unet/diffusion_pytorch_model.safetensors" in names and "tokenizer/tokenizer.json" in names
    assert not any("fp16" in n or n.endswith((".bin", ".ckpt")) or n.startswith(("safety", "feature")) for n in names)
    # the pipeline's own weights still count
    (hub / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"changed")
    assert weights_hash(hub) != weights_hash(clean)
    # in a dir saved with fp16 weights only, those are the model
    (hub / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (hub / "unet" / "diffusion_pytorch_model.bin").unlink()
    fp16_only = weights_hash(hub)
    (hub / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"other fp16 weights")
    assert weights_hash(hub) != fp16_only
    # a pre-2026-11-30 hash over such a dir is not recomputed: it would read every unused checkpoint
    old = weights_hash(clean, legacy=True)
    b = load_base(str(clean))
    assert b.has_hash(old)
    monkeypatch.setattr(base_mod, "_LEGACY_EXTRA_LIMIT", 10)
    assert not b.has_hash(old)


def test_a_model_dir_is_read_for_its_hash_once_until_a_file_changes(tmp_path, monkeypatch):
    """An SD model is 2-7 GB; hashing it on every command re-read it every time (minutes on a network share)."""
    import os

    import medti.diffusion.base as base_mod
    from medti.diffusion.base import weights_hash

    monkeypatch.setenv("MEDTI_CACHE", str(tmp_path / "cache"))
    reads = []
    real = base_mod._hash_files
    monkeypatch.setattr(base_mod, "_hash_files", lambda root, files: reads.append(root) or real(root, files))
    d = build_micro(tmp_path / "m")
    first = weights_hash(d)
    assert weights_hash(d) == first and len(reads) == 1
    w = d / "unet" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:-1] + b"x")  # same size, new content (and mtime)
    changed = weights_hash(d)
    assert changed != first and len(reads) == 2
    os.utime(w, ns=(1, 1))  # only the mtime: read again, same hash
    assert weights_hash(d) == changed and len(reads) == 3
    ckpt = tmp_path / "sd.safetensors"  # single-file checkpoints too
    ckpt.write_bytes(b"weights" * 100)
    assert weights_hash(ckpt) == weights_hash(ckpt) and len(reads) == 4
    (tmp_path / "cache" / "model-hashes.json").write_text("{not json")  # a damaged record costs a re-read
    assert weights_hash(d) == changed and len(reads) == 5
    # an embedding from another base: the check for a pre-2026-11-30 hash reads the dir once, not per command
    b = load_base(str(d))
    n = len(reads)
    assert not b.has_hash("0123456789abcdef") and not b.has_hash("0123456789abcdef") and len(reads) == n + 1


@pytest.mark.slow  # a fresh process loading a base: 10 s
def test_hub_id_from_the_local_cache_hashes_like_a_local_copy_of_the_repo(tmp_path):
    """`--base org/name` (from the Hugging Face cache) and `--base models/name` (the same repo downloaded with
    --local-dir) are one model: embeddings trained on one must not warn on the other."""
    import os
    import shutil
    import subprocess
    import sys

    local = build_micro(tmp_path / "micro-test")
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--medti--micro-test"
    shutil.copytree(local, repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", _LOAD_BASE, "medti/micro-test"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    model_id, h = res.stdout.split()[-2:]
    assert model_id == "medti/micro-test" and h == load_base(str(local)).model_hash


def test_saved_pipeline_dir_gets_the_umask_permissions(tmp_path):
    """safetensors writes weights through 0600 temp files; a base dir (`base train`, the embedded cache) must
    be readable by whoever may read its configs: colleagues, pipeline steps running as another user."""
    import os

    old = os.umask(0o027)
    try:
        out = build_micro(tmp_path / "base")
    finally:
        os.umask(old)
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert "unet/diffusion_pytorch_model.safetensors" in modes
    assert modes == {k: 0o750 if (out / k).is_dir() else 0o640 for k in modes}


def test_a_background_build_is_waited_for_not_built_twice(tmp_path, monkeypatch, capsys):
    """`make demo` starts the embedded base's build in a process of its own while the rest installs; the demo's
    own ensure_embedded then says it waits for that build, and uses what it built."""
    import fcntl
    import threading

    from medti.diffusion import base as b

    monkeypatch.setenv("MEDTI_CACHE", str(tmp_path / "cache"))
    d = b.embedded_dir("micro")
    # a build in progress elsewhere: the lock is held; a background start leaves it alone, ensure_embedded waits
    d.parent.mkdir(parents=True)
    with open(b._lock_path("micro"), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert b.build_in_background("micro") == b.build_log("micro")
        waiter = threading.Thread(target=b.ensure_embedded, args=("micro",))
        waiter.start()
        waiter.join(timeout=2)
        assert waiter.is_alive()  # waiting for the other build
        build_micro(d)  # ... which finishes
    waiter.join(timeout=60)
    assert not waiter.is_alive()
    assert "being built by another process" in capsys.readouterr().out
    # nothing to do once built; otherwise a detached build that a later ensure_embedded finds done
    assert b.build_in_background("micro") is None
    monkeypatch.setenv("MEDTI_CACHE", str(tmp_path / "cache2"))
    log = b.build_in_background("micro")
    assert log is not None and log.parent == b.embedded_dir("micro").parent
    assert (b.ensure_embedded("micro") / "model_index.json").is_file()
    with pytest.raises(b.BaseModelError, match="not one of"):
        b.build_in_background("sd2")
