"""Embedding files: native safetensors, A1111 .pt, diffusers' loader, and refusing unsafe pickles."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medti.cli import app
from medti.diffusion.embeddings import (
    Embedding,
    EmbeddingError,
    convert_embedding,
    inspect_embedding,
    load_embedding,
    save_embedding,
)


@pytest.fixture(scope="module")
def micro_base(tmp_path_factory):
    from medti.diffusion.base import build_micro

    return build_micro(tmp_path_factory.mktemp("bases") / "micro")


def _emb(n=4, d=32, token="<cspca>", seed=0):
    g = torch.Generator().manual_seed(seed)
    return Embedding(token, torch.randn(n, d, generator=g), {"concept": "csPCa", "steps": "100", "base_model": "medti-micro", "base_model_hash": "abc"})


def test_the_same_embedding_is_saved_as_the_same_bytes(tmp_path):
    # safetensors writes metadata in hash-map order, different on every call: same training, another checksum
    files = [save_embedding(_emb(), tmp_path / str(k) / "csPCa.safetensors") for k in range(5)]
    assert len({f.read_bytes() for f in files}) == 1
    back = load_embedding(files[0])
    assert torch.equal(back.vectors, _emb().vectors) and back.metadata["base_model_hash"] == "abc"


def test_safetensors_pt_safetensors_round_trip(tmp_path):
    e = _emb()
    a = save_embedding(e, tmp_path / "csPCa.safetensors")
    b = convert_embedding(a, tmp_path / "csPCa.pt")
    c = convert_embedding(b, tmp_path / "again" / "csPCa.safetensors")
    back = load_embedding(c)
    assert back.token == "<cspca>" and back.concept == "csPCa"
    assert torch.equal(back.vectors, e.vectors)
    # converting onto an existing file (here: back onto the source) needs overwrite / --force
    before = a.read_bytes()
    with pytest.raises(EmbeddingError, match="already exists"):
        convert_embedding(b, a)
    assert a.read_bytes() == before
    assert load_embedding(convert_embedding(b, a, overwrite=True)).token == "<cspca>"
    native = load_embedding(a)
    assert native.metadata["concept"] == "csPCa" and native.metadata["vectors"] == "4"
    # the A1111 file carries the A1111 fields
    raw = torch.load(b, weights_only=True)
    assert set(raw) >= {"string_to_param", "string_to_token", "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
    assert raw["step"] == 100 and raw["sd_checkpoint_name"] == "medti-micro"


def test_diffusers_load_textual_inversion_reads_both_formats(tmp_path, micro_base):
    from diffusers import StableDiffusionPipeline

    e = _emb(n=3, d=32)
    st = save_embedding(e, tmp_path / "csPCa.safetensors")
    pt = save_embedding(e, tmp_path / "csPCa.pt")
    for path, token in ((st, None), (pt, "<cspca>")):
        pipe = StableDiffusionPipeline.from_pretrained(micro_base, safety_checker=None, requires_safety_checker=False)
        pipe.load_textual_inversion(str(path), token=token)
        ids = pipe.tokenizer.convert_tokens_to_ids(["<cspca>", "<cspca>_1", "<cspca>_2"])
        w = pipe.text_encoder.get_input_embeddings().weight
        assert torch.allclose(w[ids], e.vectors)
        # the bare token in a prompt expands to all three vectors (a mixed-case token would not)
        assert pipe.maybe_convert_prompt("mri of <cspca>", pipe.tokenizer).split()[-3:] == ["<cspca>", "<cspca>_1", "<cspca>_2"]


def test_token_comes_from_file_name_not_the_a1111_name_field(tmp_path):
    obj = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": torch.randn(2, 8)},
        "name": "prostate_pos-50000",
        "step": 50000,
        "sd_checkpoint": "09dd2ae4",
        "sd_checkpoint_name": "512-base-ema",
    }
    torch.save(obj, tmp_path / "csPCa.pt")
    e = load_embedding(tmp_path / "csPCa.pt")
    assert e.token == "<cspca>" and e.concept == "csPCa"
    assert e.metadata["a1111_name"] == "prostate_pos-50000"
    assert load_embedding(tmp_path / "csPCa.pt", token="lesion").token == "<lesion>"


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"string_to_param": {"*": _Evil(str(marker))}, "name": "x"}, f)
    with pytest.raises(EmbeddingError, match="refused"):
        load_embedding(evil)
    assert not marker.exists()
    r = CliRunner().invoke(app, ["embed", "inspect", str(evil)])
    # the refusal names what the pickle asked for, without torch's advice to retry unsafely
    assert r.exit_code != 0 and "refused" in r.output and "Details: " in r.output and "weights_only" not in r.output
    assert not marker.exists()
    text = tmp_path / "notes.pt"
    text.write_text("not an embedding")
    with pytest.raises(EmbeddingError, match="not a PyTorch file"):
        load_embedding(text)


def test_sd2_sized_embedding_is_under_one_megabyte(tmp_path):
    p = save_embedding(_emb(n=64, d=1024), tmp_path / "big.safetensors")
    assert p.stat().st_size < 1_000_000
    p2 = convert_embedding(p, tmp_path / "big.pt")
    assert p2.stat().st_size < 1_000_000


def test_bad_files_name_the_file(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(EmbeddingError, match="junk.safetensors"):
        load_embedding(tmp_path / "junk.safetensors")
    with pytest.raises(EmbeddingError, match="not found"):
        load_embedding(tmp_path / "missing.safetensors")
    nan = Embedding("<x>", torch.full((2, 4), float("nan")), {})
    save_embedding(nan, tmp_path / "x.safetensors")
    with pytest.raises(EmbeddingError, match="NaN"):
        load_embedding(tmp_path / "x.safetensors")


def test_inspect_cli_prints_concept_vectors_dim_and_base(tmp_path):
    p = save_embedding(_emb(n=5, d=16), tmp_path / "pleural_effusion.safetensors")
    r = CliRunner().invoke(app, ["embed", "inspect", str(p)])
    assert r.exit_code == 0, r.output
    assert '"vectors": 5' in r.output and '"dim": 16' in r.output and "medti-micro" in r.output
    info = inspect_embedding(p)
    assert info["token"] == "<pleural_effusion>" and info["norm_min"] <= info["norm_mean"] <= info["norm_max"]
