"""The pyfunc serving models: an embedding model behind a real `mlflow models serve` (valid requests give the
same PNGs twice, every invalid one a 400 that names the field, and the server keeps serving), a base whose
hash differs refused at load, and a classifier model that agrees with the ONNX predictor."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from medti.data.dataset import encode_png, load_image, read_manifest
from medti.diffusion.base import build_micro, load_base
from medti.diffusion.embeddings import Embedding, save_embedding

mlflow = pytest.importorskip("mlflow")
from mlflow.exceptions import MlflowException  # noqa: E402

from medti.tracking.serving import save_classifier_model, save_embedding_model  # noqa: E402
from servers import model_server  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

PROMPT = "healthy:30% AND csPCa:70%"
VALID = {"inputs": {"prompt": [PROMPT]}, "params": {"n": 2, "seed": 0, "steps": 2, "guidance": 3.0}}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    base = build_micro(root / "micro")
    base_hash = load_base(str(base), progress=False).model_hash
    embs = {}
    for i, concept in enumerate(("csPCa", "healthy")):
        vec = torch.randn(3, 32, generator=torch.Generator().manual_seed(i)) * 0.5
        meta = {"concept": concept, "modality": "prostate_mri", "base_model_hash": base_hash}
        embs[concept] = save_embedding(Embedding(f"<{concept.lower()}>", vec, meta), root / "emb" / f"{concept}.safetensors")
    path = save_embedding_model(root / "model", embs, str(base), base_hash, guidance=3.0)
    return {"root": root, "path": path, "base_hash": base_hash}


@pytest.fixture(scope="module")
def server(model):
    with model_server(str(model["path"]), model["root"] / "server.log") as url:
        yield url


def _post(url: str, body, content_type: str = "application/json") -> tuple[int, str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"{url}/invocations", data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _request(prompt=PROMPT, **params) -> dict:
    return {"inputs": {"prompt": [prompt] if isinstance(prompt, str) else prompt}, "params": {"steps": 2, **params}}


# (request body, words its error must contain)
INVALID = [
    (_request(n=0), ["n=0", "1 to 16"]),
    (_request(n=1000), ["n=1000", "1 to 16"]),
    (_request(steps=0), ["steps=0", "1 to 150"]),
    (_request(steps=10000), ["steps=10000", "1 to 150"]),
    (_request(guidance=-1.0), ["guidance=-1", "30"]),
    (_request(guidance=31.0), ["guidance=31", "30"]),
    (_request(scheduler="plms"), ["scheduler='plms'", "dpmpp"]),
    (_request(seed=-1), ["seed=-1"]),
    (_request(n="two"), ["'n'", "two"]),  # wrong type: mlflow's param schema refuses it
    (_request(negative_prompt="blurry AND noisy"), ["negative_prompt", "AND"]),
    (_request("<nosuch>"), ["prompt (row 0)", "unknown concept 'nosuch'", "csPCa, healthy"]),
    (_request("nosuch:50% AND csPCa:50%"), ["prompt (row 0)", "unknown concept 'nosuch'"]),
    (_request("healthy:abc AND csPCa"), ["prompt (row 0)", "weight 'abc'"]),
    (_request(""), ["prompt (row 0) is empty"]),
    (_request("x" * 5000), ["prompt (row 0) is 5000 characters", "1000"]),
    (_request("axial prostate mri " * 30), ["prompt (row 0)", "tokens", "at most 75"]),  # the tokenizer budget
    (_request(["csPCa", "healthy", PROMPT], n=16), ["3 prompt(s) x n=16", "at most 32"]),
    (_request([]), ["prompt: the request has no prompts"]),
    ({"inputs": {"text": ["csPCa"]}, "params": {"n": 1}}, ["missing inputs ['prompt']"]),
    ({"params": {"n": 1}}, ["inputs"]),  # no inputs at all
    (b'{"inputs": {"prompt": ["csPCa"]', ["JSON"]),  # malformed body
]


def _images(body: str) -> list[bytes]:
    return [base64.b64decode(row["image"]) for row in json.loads(body)["predictions"]]


def test_the_served_embedding_model_answers_valid_requests_reproducibly_and_bad_ones_with_400(server):
    from PIL import Image

    status, body = _post(server, VALID)
    assert status == 200, body
    rows = json.loads(body)["predictions"]
    assert [(r["prompt"], r["index"], r["seed"], r["steps"], r["guidance"], r["scheduler"]) for r in rows] == [
        (PROMPT, 0, 0, 2, 3.0, "dpmpp"), (PROMPT, 1, 1, 2, 3.0, "dpmpp")]
    first = _images(body)
    for png in first:
        with Image.open(io.BytesIO(png)) as im:
            assert im.format == "PNG" and im.size == (32, 32) and im.mode == "RGB"  # the micro base's size
    assert first[0] != first[1]  # two seeds, two images
    assert _images(_post(server, VALID)[1]) == first  # the same request, the same bytes

    for request, words in INVALID:
        status, text = _post(server, request)
        assert 400 <= status < 500, (request, status, text[:300])
        assert all(w in text for w in words), (request, words, text[:600])
    assert _images(_post(server, VALID)[1]) == first  # still serving, still the same


def test_a_base_whose_weights_differ_is_refused_at_load_naming_both_hashes(model):
    other = build_micro(model["root"] / "other", seed=1)
    other_hash = load_base(str(other), progress=False).model_hash
    assert other_hash != model["base_hash"]
    with pytest.raises(MlflowException) as e:
        mlflow.pyfunc.load_model(str(model["path"]), model_config={"base": str(other)})
    assert model["base_hash"] in e.value.message and other_hash in e.value.message
    assert str(other) in e.value.message


def test_the_classifier_model_gives_the_onnx_predictor_probabilities_and_names_a_bad_row(tmp_path):
    import pandas as pd

    from medti.classify.onnx import ExportConfig, Predictor, export_onnx
    from medti.classify.train import ClassifierConfig, train_classifier
    from medti.data.phantoms import PhantomConfig, generate_phantoms

    data = generate_phantoms(PhantomConfig(kind="prostate", out=tmp_path / "prostate", n=24, size=32, seed=3)).out
    train_classifier(ClassifierConfig(train=[data], val=data, targets=["csPCa"], out=tmp_path / "cls", seed=1, steps=2,
                                      batch=8, eval_every=2, checkpoint_every=2, validate=False, progress=False))
    onnx_file = export_onnx(ExportConfig(model=tmp_path / "cls", out=tmp_path / "cls.onnx")).out
    served = mlflow.pyfunc.load_model(str(save_classifier_model(tmp_path / "model", onnx_file)))

    test = [r for r in read_manifest(data) if r["split"] == "test"]
    assert test
    pngs = [base64.b64encode((data / r["path"]).read_bytes()).decode() for r in test]
    got = served.predict(pd.DataFrame({"image": pngs}))
    want = Predictor(onnx_file)(np.stack([load_image(data / r["path"]).transpose(2, 0, 1) for r in test]))
    assert list(got.columns) == ["csPCa"]
    np.testing.assert_allclose(got.to_numpy(), want, atol=1e-5, rtol=0)

    small = base64.b64encode(encode_png(np.zeros((16, 16, 3), np.uint8))).decode()
    with pytest.raises(MlflowException, match=r"image \(row 1\) is a 16x16 RGB PNG; .* 32x32") as e:
        served.predict(pd.DataFrame({"image": [pngs[0], small]}))
    assert e.value.get_http_status_code() == 400
    with pytest.raises(MlflowException, match=r"image \(row 0\): not a base64 PNG of 32x32"):
        served.predict(pd.DataFrame({"image": ["not base64!"]}))
