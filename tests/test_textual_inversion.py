"""Textual inversion on an untrained micro base: mechanics, resume, prediction types, errors."""

from __future__ import annotations

import re

import pytest
import torch
from typer.testing import CliRunner

from diffusion_fixtures import make_blob_dataset
from medti.cli import app
from medti.diffusion.base import BaseModelError, build_micro, load_base
from medti.diffusion.embeddings import EmbeddingError, load_embedding
from medti.diffusion.textual_inversion import (
    EmbeddingConfig,
    TrainingError,
    VectorSubstitution,
    train_embedding,
)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    return {p: build_micro(root / p, prediction_type=p) for p in ("v_prediction", "epsilon")}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_blob_dataset(tmp_path_factory.mktemp("ds") / "blobs")


def _cfg(data, base, out, **kw):
    args = dict(
        data=data, concept="pos", where="csPCa=1", base=str(base), vectors=4, steps=12, batch=4,
        out=out, n_samples=4, sample_steps=2, checkpoint_every=4, progress=False,
    )
    args.update(kw)
    return EmbeddingConfig(**args)


@pytest.mark.parametrize("pred", ["v_prediction", "epsilon"])
def test_both_prediction_types_train_only_the_new_vectors(tmp_path, bases, data, pred):
    base_dir = bases[pred]
    before = {k: v.clone() for k, v in load_base(str(base_dir)).unet.state_dict().items()}
    res = train_embedding(_cfg(data, base_dir, tmp_path / "pos.safetensors"))
    emb = load_embedding(res.path)
    assert emb.token == "<pos>" and tuple(emb.vectors.shape) == (4, 32)
    assert emb.metadata["prediction_type"] == pred
    assert emb.metadata["base_model_hash"] and emb.metadata["dataset_version"]
    # vectors moved away from their initialisation (the init text's token embedding)
    b = load_base(str(base_dir))
    init_id = b.tokenizer("mri", add_special_tokens=False).input_ids[0]
    init = b.text_encoder.get_input_embeddings().weight[init_id]
    assert (emb.vectors - init).abs().max() > 1e-3
    # the frozen base on disk is untouched
    assert all(torch.equal(before[k], v) for k, v in b.unet.state_dict().items())
    assert res.samples is not None and res.samples.exists()
    assert torch.isfinite(torch.tensor(res.final_loss))
    # checkpoints are cleaned up after a complete run
    assert not list(tmp_path.glob("*.checkpoints/*"))


def test_hook_gives_gradients_only_to_the_parameter(bases):
    b = load_base(str(bases["epsilon"]))
    te = b.text_encoder
    first = te.get_input_embeddings().weight.shape[0] - 2
    param = torch.nn.Parameter(torch.randn(2, 32))
    te.get_input_embeddings().weight.requires_grad_(True)
    hook = VectorSubstitution(te.get_input_embeddings(), first, param)
    ids = torch.tensor([[0, 5, first, first + 1, 1]])
    out = te(ids)[0]
    # (a plain sum would be flat: the final LayerNorm makes each row sum to a constant)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    hook.remove()
    assert param.grad is not None and param.grad.abs().sum() > 0
    w_grad = te.get_input_embeddings().weight.grad
    assert w_grad is None or w_grad[first : first + 2].abs().sum() == 0


def _inversion(base, **kw):
    """A trainer over 4 random images on the CPU (for tests that take single steps)."""
    from accelerate import Accelerator

    from medti.diffusion.textual_inversion import Inversion

    return Inversion(base, torch.rand(4, 3, 32, 32) * 2 - 1, modality="prostate_mri", token="<c>", vectors=2,
                     init_text="mri", lr=0.005, batch=2, seed=0, weight_dtype=torch.float32,
                     accelerator=Accelerator(cpu=True), **kw)


def test_a_base_built_from_components_is_frozen_by_the_trainer(bases):
    """A Base assembled by hand (a benchmark, a notebook) has trainable modules; the trainer must
    still learn only its vectors, not fill a gradient for every UNet and text-encoder weight."""
    from medti.diffusion.base import Base

    loaded = load_base(str(bases["epsilon"]))
    comps = {k: getattr(loaded, k) for k in ("tokenizer", "text_encoder", "unet", "vae", "scheduler")}
    for m in (comps["text_encoder"], comps["unet"], comps["vae"]):
        m.requires_grad_(True)
    base = Base(ref="hand", model_id="hand", model_hash="", **comps)
    inv = _inversion(base)
    inv.step()
    for name, m in (("text encoder", base.text_encoder), ("unet", base.unet), ("vae", base.vae)):
        with_grad = [n for n, p in m.named_parameters() if p.grad is not None]
        assert not with_grad, f"{name} weights got gradients: {with_grad[:3]}"
    assert inv.param.grad is not None and inv.param.grad.abs().sum() > 0


def test_interrupted_and_resumed_run_ends_with_the_same_embedding(tmp_path, bases, data):
    base = bases["v_prediction"]
    full = train_embedding(_cfg(data, base, tmp_path / "a" / "pos.safetensors", n_samples=0))
    out_b = tmp_path / "b" / "pos.safetensors"
    with pytest.raises(TrainingError, match="stopped after step 5"):
        train_embedding(_cfg(data, base, out_b, n_samples=0, stop_after=5))
    assert not out_b.exists()  # a killed run leaves no half-written embedding
    kept = sorted((tmp_path / "b").glob("pos.safetensors.checkpoints/step-*.safetensors"))
    assert kept
    # a run started again without --resume does not throw the unfinished one away
    with pytest.raises(TrainingError, match="stopped at step 5; continue it with --resume, or discard it with --restart"):
        train_embedding(_cfg(data, base, out_b, n_samples=0))
    assert sorted((tmp_path / "b").glob("pos.safetensors.checkpoints/step-*.safetensors")) == kept
    resumed = train_embedding(_cfg(data, base, out_b, n_samples=0, resume=True))
    assert torch.equal(load_embedding(full.path).vectors, load_embedding(resumed.path).vectors)
    assert full.path.read_bytes() == resumed.path.read_bytes()  # the same file, metadata included
    # a finished embedding is not replaced by a new run without overwrite (--force)
    before = out_b.read_bytes()
    with pytest.raises(TrainingError, match="already exists"):
        train_embedding(_cfg(data, base, out_b, n_samples=0, lr=0.01))
    assert out_b.read_bytes() == before
    # --restart discards it and trains from step 0 (the same seed: the same embedding)
    out_c = tmp_path / "c" / "pos.safetensors"
    with pytest.raises(TrainingError):
        train_embedding(_cfg(data, base, out_c, n_samples=0, stop_after=3, lr=0.01))
    restarted = train_embedding(_cfg(data, base, out_c, n_samples=0, restart=True))
    assert torch.equal(load_embedding(full.path).vectors, load_embedding(restarted.path).vectors)


def test_the_same_run_on_two_threads_gives_the_same_file(tmp_path, bases):
    """Same inputs and seed on CPU, same bytes. With 2+ torch threads the backward of an indexing gather accumulated
    in thread order: three identical runs here learned three different sets of vectors (ulp apart)."""
    data = make_blob_dataset(tmp_path / "blobs", n=32)
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        files = [train_embedding(_cfg(data, bases["v_prediction"], tmp_path / str(k) / "pos.safetensors", batch=16,
                                      steps=6, n_samples=0)).path for k in range(3)]
    finally:
        torch.set_num_threads(n)
    assert len({f.read_bytes() for f in files}) == 1


def test_an_output_name_that_cannot_be_saved_fails_before_any_training(tmp_path, data):
    # the base does not exist: the name is checked first, so a long run never ends unable to save
    with pytest.raises(EmbeddingError, match="unknown embedding format"):
        train_embedding(_cfg(data, tmp_path / "no-such-base", tmp_path / "pos.txt"))
    assert list(tmp_path.iterdir()) == []


def test_a_second_training_of_the_same_file_fails_at_once_while_the_first_runs(tmp_path, bases, data):
    from medti.io import OutputError, output_lock

    out = tmp_path / "pos.safetensors"
    with output_lock(out, "embed train"):  # what a running `medti embed train --out pos.safetensors` holds
        with pytest.raises(OutputError, match="another embed train run is writing"):
            train_embedding(_cfg(data, bases["epsilon"], out, n_samples=0))
    assert not out.exists() and not list(tmp_path.glob("*.checkpoints"))


def test_resume_refuses_a_checkpoint_from_other_settings(tmp_path, bases, data):
    base = bases["v_prediction"]
    out = tmp_path / "pos.safetensors"
    with pytest.raises(TrainingError):
        train_embedding(_cfg(data, base, out, n_samples=0, stop_after=4))
    with pytest.raises(TrainingError, match="other settings"):
        train_embedding(_cfg(data, base, out, n_samples=0, resume=True, lr=0.01))


def test_gradient_checkpointing_recomputes_the_unet_and_learns_the_same_vectors(tmp_path, bases, data):
    calls = {}
    for ckpt in (False, True):
        base = load_base(str(bases["epsilon"]))
        inv = _inversion(base, gradient_checkpointing=ckpt)
        n, blk = [], base.unet.up_blocks[-1].resnets[0]
        forward = blk.forward  # counted at the call (the recomputation in backward bypasses forward hooks)
        blk.forward = lambda *a, n=n, forward=forward, **k: n.append(1) or forward(*a, **k)
        inv.step()
        calls[ckpt] = len(n)
    # a block downstream of the cross-attention runs again in backward: its activations were not kept
    assert calls == {False: 1, True: 2}
    a = train_embedding(_cfg(data, bases["epsilon"], tmp_path / "a.safetensors", steps=6, n_samples=0))
    b = train_embedding(_cfg(data, bases["epsilon"], tmp_path / "b.safetensors", steps=6, n_samples=0,
                             gradient_checkpointing=True))
    assert torch.allclose(load_embedding(a.path).vectors, load_embedding(b.path).vectors, atol=1e-6)


def test_a_diverging_run_stops_naming_the_step_and_writes_nothing(tmp_path, bases, data):
    """Losses are read back in groups (the GPU is not waited for every step), yet a NaN still stops
    the run with the step it appeared at, and no embedding or checkpoint is left behind."""
    out = tmp_path / "pos.safetensors"
    with pytest.raises(TrainingError, match=r"loss became nan at step 2\b"):
        train_embedding(_cfg(data, bases["epsilon"], out, lr=float("inf"), steps=30, checkpoint_every=0, n_samples=0))
    assert not list(tmp_path.iterdir())


@pytest.mark.timeout(120)  # a hang on network retries fails here instead of stalling the suite
def test_offline_hub_id_fails_at_once_with_what_to_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BaseModelError, match="huggingface-cli download stabilityai/stable-diffusion-2-base"):
        load_base("stabilityai/stable-diffusion-2-base")


def test_bad_requests_name_the_culprit(tmp_path, bases, data):
    with pytest.raises(Exception, match="pleural_effusion"):
        train_embedding(_cfg(data, bases["epsilon"], tmp_path / "x.safetensors", where="pleural_effusion=1"))
    with pytest.raises(TrainingError, match="between 1 and 128"):
        train_embedding(_cfg(data, bases["epsilon"], tmp_path / "x.safetensors", vectors=129))
    with pytest.raises(BaseModelError, match="model_index.json"):
        load_base(str(tmp_path))


def test_cli_embed_train(tmp_path, bases, data):
    out = tmp_path / "lesion.safetensors"
    r = CliRunner().invoke(
        app,
        ["embed", "train", "--data", str(data), "--concept", "lesion", "--where", "csPCa=1",
         "--base", str(bases["epsilon"]), "--vectors", "2", "--steps", "3", "--batch", "2", "--out", str(out)],
    )
    assert r.exit_code == 0, r.output
    assert out.exists() and "<lesion>" in r.output
    meta = load_embedding(out).metadata
    assert meta["precision"] == "no" and meta["gradient_checkpointing"] == "false"  # CPU: fp32
    r = CliRunner().invoke(
        app,
        ["embed", "train", "--data", str(data), "--concept", "lesion", "--where", "csPCa=1", "--gradient-checkpointing",
         "--base", str(bases["epsilon"]), "--vectors", "2", "--steps", "3", "--batch", "2", "--out", str(out), "--force"],
    )
    assert r.exit_code == 0, r.output
    assert load_embedding(out).metadata["gradient_checkpointing"] == "true"


def test_a_finding_without_positive_cases_blocks_training_until_min_per_class_is_lowered(tmp_path, bases):
    """A small curated set (100 effusion cases imported from CheXpert) can have no positive case of another finding:
    the validation gate refuses it, says which option lowers the rule, and --min-per-class 0 trains."""
    data = make_blob_dataset(tmp_path / "ds", unseen=("pirads5",))
    out = tmp_path / "lesion.safetensors"
    args = ["embed", "train", "--data", str(data), "--concept", "lesion", "--where", "csPCa=1",
            "--base", str(bases["epsilon"]), "--vectors", "2", "--steps", "2", "--batch", "2", "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and "'pirads5'" in r.output and "pass --min-per-class with a lower value" in r.output
    assert not out.exists()
    r = CliRunner().invoke(app, [*args, "--min-per-class", "0"])
    assert r.exit_code == 0, r.output
    assert out.exists()


@pytest.mark.parametrize("kind,modality", [("prostate", "prostate_mri"), ("cxr", "cxr")])
def test_sampling_template_is_worded_as_the_phantom_captions(tmp_path, kind, modality):
    """The template samples and experiments use (``TEMPLATES[m][1]``) must be the modality caption's own
    prefix: a word no caption has (the earlier "frontal chest x-ray" against captions saying "radiograph") is
    a direction the embedded base never learned to read, and guidance amplifies it into artefacts."""
    import csv

    from medti.data.phantoms import PhantomConfig, generate_phantoms
    from medti.diffusion.templates import TEMPLATES

    out = generate_phantoms(PhantomConfig(kind=kind, out=tmp_path / kind, n=6, seed=3)).out
    with open(out / "manifest.csv", newline="") as f:
        captions = [r["caption"] for r in csv.DictReader(f)]
    prefix = TEMPLATES[modality][1].format("").rstrip(", ")
    assert captions and all(c.startswith(prefix + ",") for c in captions), (prefix, captions[:2])


def test_max_norm_keeps_the_vectors_among_the_base_tokens(tmp_path, bases, data):
    """--max-norm vocab holds every learned vector to the longest of the base's token embeddings
    (an uncapped run leaves it), records the cap in the file, and a capped checkpoint is not resumed
    by an uncapped run."""
    base = bases["epsilon"]
    vocab = float(load_base(str(base)).text_encoder.get_input_embeddings().weight.norm(dim=1).max())
    free = load_embedding(train_embedding(_cfg(data, base, tmp_path / "free.safetensors", n_samples=0, lr=0.05)).path)
    capped = load_embedding(train_embedding(
        _cfg(data, base, tmp_path / "cap.safetensors", n_samples=0, lr=0.05, max_norm="vocab")).path)
    assert free.vectors.norm(dim=1).max() > 1.5 * vocab  # without the cap they leave the vocabulary's range
    assert capped.vectors.norm(dim=1).max() <= vocab * (1 + 1e-5)
    assert float(capped.metadata["max_norm"]) == pytest.approx(vocab, rel=1e-4) and free.metadata["max_norm"] == "none"
    out = tmp_path / "r.safetensors"
    with pytest.raises(TrainingError):
        train_embedding(_cfg(data, base, out, n_samples=0, stop_after=4, max_norm=0.5))
    with pytest.raises(TrainingError, match="other settings"):
        train_embedding(_cfg(data, base, out, n_samples=0, resume=True))


@pytest.mark.parametrize("bad", ["big", "0", "-1", "nan"])
def test_a_bad_max_norm_is_refused_naming_the_value(tmp_path, bases, data, bad):
    with pytest.raises(TrainingError, match=f"--max-norm '{bad}'"):
        train_embedding(_cfg(data, bases["epsilon"], tmp_path / "x.safetensors", max_norm=bad))


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("csPCa", "term 'csPCa' is not NAME=0|1"),
        ("csPCa=2", "value must be 0 or 1"),
        ("csPCa=1,csPCa=0", "names 'csPCa' twice"),
    ],
)
def test_where_filter_refuses_malformed_terms_naming_them(expr, message):
    from medti.data.dataset import DatasetError, parse_where

    assert parse_where(" pleural_effusion=1 , pneumonia=0 ") == {"pleural_effusion": 1, "pneumonia": 0}
    with pytest.raises(DatasetError, match=re.escape(message)):
        parse_where(expr)
