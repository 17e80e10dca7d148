"""Distribution metrics (medti quality distribution): FD, KID and PRDC against the real-vs-real baseline, per class,
reproducible per seed; the feature networks a user may give (dirs and a .safetensors ResNetModel state dict, never
a pickle); bad inputs refused naming the file and field; the CLI writes its files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from medti.data.dataset import Dataset, DatasetWriter, load_image, read_info
from medti.data.phantoms import PhantomConfig, generate_phantoms
from medti.io import OutputError
from medti.quality import QualityError

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(kid_subsets=20, kid_subset_size=12, nearest_k=3)


def _write_set(out: Path, src: Path, splits: dict[str, str], image=None, labels=None, size: int | None = None) -> Path:
    """A dataset dir of ``src``'s cases in ``splits`` (source split -> split written), each image passed through
    ``image`` and its labels through ``labels`` (None drops the case)."""
    from PIL import Image

    info = read_info(src)
    if size:
        info.image_size = [size, size]
    with DatasetWriter(out, info) as w:
        for c in Dataset(src).cases():
            if c.split not in splits:
                continue
            lab = labels(dict(c.labels)) if labels else dict(c.labels)
            if lab is None:
                continue
            img = load_image(c.path)
            if size:
                img = np.asarray(Image.fromarray(img).resize((size, size)))
            w.add(case_id=c.case_id, patient_id=c.patient_id, split=splits[c.split],
                  image=image(img) if image else img, labels=lab)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Real phantoms (train / val / test), a copy of their test split, blurred images, one-class images, and a
    small random-init transformers ResNet dir as the feature network."""
    import torch
    from PIL import Image, ImageFilter
    from transformers import ResNetConfig, ResNetModel

    root = tmp_path_factory.mktemp("dist")
    real = root / "real"
    generate_phantoms(PhantomConfig(kind="prostate", out=real, n=96, size=32, seed=3))
    copy = _write_set(root / "copy-of-test", real, {"test": "train"})
    blur = _write_set(root / "blurred", real, {"train": "train", "val": "train"},
                      image=lambda a: np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(2.5))))
    negatives = _write_set(root / "negatives-only", real, {"train": "train", "val": "train"},
                           labels=lambda lab: lab if lab["csPCa"] == 0 else None)
    torch.manual_seed(0)
    net = root / "net"
    ResNetModel(ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1],
                             layer_type="basic")).save_pretrained(net)
    return {"root": root, "real": real, "copy": copy, "blur": blur, "negatives": negatives, "net": net}


def _run(data, out, synthetic, **kw):
    from medti.quality.distribution import DistributionConfig, distribution

    args = dict(real=data["real"], synthetic=synthetic, out=out, features=data["net"], seeds=(0,), **FAST)
    args.update(kw)
    return distribution(DistributionConfig(**args))


# ----------------------------------------------------------------------------- the figures
@pytest.fixture(scope="module")
def same(data):
    """The real test split given as the synthetic set: the reference itself."""
    return _run(data, data["root"] / "same", data["copy"])


@pytest.fixture(scope="module")
def blurred(data):
    """Blurred real images as the synthetic set, two seeds."""
    return _run(data, data["root"] / "blurred-out", data["blur"], seeds=(0, 1))


def test_identical_sets_give_fd_near_zero_and_full_precision_recall_coverage(same):
    s, b = same.synthetic, same.baseline
    assert abs(s["fd"]) < 1e-3 * b["fd"]
    assert s["precision"] == s["recall"] == s["coverage"] == 1.0
    assert abs(s["kid"]) < s["kid_std"]  # KID draws real and synthetic subsets apart: ~0 within its spread
    # the baseline is a second real sample: close, but not the same images
    assert b["fd"] > 0 and b["precision"] > 0.5


def test_a_different_distribution_scores_far_above_the_real_baseline(blurred):
    s, b = blurred.synthetic, blurred.baseline
    assert s["fd"] > 5 * b["fd"] and s["kid"] > 5 * max(b["kid"], 1e-4)
    assert s["precision"] < b["precision"] - 0.3 and s["coverage"] < b["coverage"] - 0.3


def test_equal_sizes_baseline_and_proxy_note_are_written(data, blurred):
    res = blurred
    doc = json.loads((res.out / "distribution.json").read_text())
    n_test = len(Dataset(data["real"]).cases("test"))
    assert res.n == doc["n"] == n_test  # the smallest set (the real test split) sets the size of all
    assert doc["synthetic"]["cases"] > n_test and "subsampled" in doc["equal_size"]
    assert "proxies" in doc["note"] and doc["seeds"] == [0, 1] and len(doc["per_seed"]) == 2
    assert doc["figures"]["synthetic"] == pytest.approx(res.synthetic)
    md = (res.out / "distribution.md").read_text()
    assert "| metric | synthetic vs real | real vs real (baseline) |" in md and "proxies" in md
    assert f"{res.synthetic['fd']:.4g} ±" in md and f"{res.baseline['fd']:.4g} ±" in md
    png = res.out / "distribution.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000
    # no patient id reaches the outputs
    pids = {c.patient_id for c in Dataset(data["real"]).cases()}
    text = "".join((res.out / f).read_text() for f in ("distribution.json", "distribution.md"))
    assert not any(p in text for p in pids)


def test_per_class_figures_compare_like_with_like_and_skip_a_missing_class(data, same, tmp_path):
    assert set(same.per_class) == {"csPCa=0", "csPCa=1"}
    for c in same.per_class.values():
        # each class subsampled to the smallest set's count: the copy's sample overlaps the reference's
        assert c["n"] >= 5 and c["synthetic"]["fd"] < 0.5 * c["baseline"]["fd"]
    one = _run(data, tmp_path / "one", data["negatives"])
    assert "n" in one.per_class["csPCa=0"]
    assert "0 images" in one.per_class["csPCa=1"]["skipped"]
    assert "## csPCa=1\n\nSkipped: 0 images" in (one.out / "distribution.md").read_text()


def test_the_same_seed_gives_the_same_figures_and_another_seed_other_ones(data, blurred, tmp_path):
    again = _run(data, tmp_path / "again", data["blur"], seeds=(0, 1))
    assert (again.out / "distribution.json").read_bytes() == (blurred.out / "distribution.json").read_bytes()
    other = _run(data, tmp_path / "other", data["blur"], seeds=(5,))
    assert other.synthetic != blurred.synthetic


# ----------------------------------------------------------------------------- feature networks
def _features(path, images):
    from medti.quality.features import open_features

    return open_features(path)(images)


@pytest.mark.parametrize("layer_type", ["basic", "bottleneck"])
def test_a_safetensors_resnet_state_dict_gives_the_same_features_as_its_transformers_dir(layer_type, tmp_path):
    import torch
    from safetensors.torch import save_file
    from transformers import ResNetConfig, ResNetForImageClassification

    from medti.quality.features import open_features

    hidden = [8, 16] if layer_type == "basic" else [16, 32]
    torch.manual_seed(1)
    # a classification model: its file has the "resnet." prefix and a head, as converted checkpoints often do
    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=hidden, depths=[2, 1],
                                                      layer_type=layer_type, num_labels=3)).eval()
    model.resnet.save_pretrained(tmp_path / "dir")
    save_file({k: v.contiguous() for k, v in model.resnet.state_dict().items()}, tmp_path / "backbone.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "classifier.safetensors")
    x = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    want = _features(tmp_path / "dir", x)
    for name in ("backbone.safetensors", "classifier.safetensors"):
        net = open_features(tmp_path / name)
        assert net.info["resnet_config"] == {"num_channels": 3, "embedding_size": 8, "hidden_sizes": hidden,
                                             "depths": [2, 1], "layer_type": layer_type,
                                             "downsample_in_first_stage": False}
        np.testing.assert_allclose(net(x), want, rtol=1e-5, atol=1e-6)


def test_a_downsampling_first_stage_is_read_off_its_shortcut():
    from medti.quality.features import resnet_config_from_shapes

    shapes = {"embedder.embedder.convolution.weight": (8, 3, 7, 7),
              "encoder.stages.0.layers.0.shortcut.convolution.weight": (8, 8, 1, 1),
              "encoder.stages.0.layers.0.layer.0.convolution.weight": (8, 8, 3, 3),
              "encoder.stages.0.layers.0.layer.1.convolution.weight": (8, 8, 3, 3)}
    assert resnet_config_from_shapes(shapes, where=Path("x"))["downsample_in_first_stage"] is True


# ----------------------------------------------------------------------------- the default: a classifier trained here
def test_the_default_feature_space_is_a_classifier_trained_on_the_real_train_split_and_reused(data, tmp_path):
    out = tmp_path / "out"
    first = _run(data, out, data["blur"], features="classifier", classifier_steps=4, validate=False)
    model = out / "feature-classifier"
    meta = json.loads((model / "classifier.json").read_text())
    assert first.classifier_trained and meta["train"][0]["dir"] == "real" and meta["config"]["steps"] == 4
    assert first.feature_space.startswith("classifier penultimate layer (512-d)")
    weights = (model / "model.safetensors").read_bytes()
    again = _run(data, out, data["blur"], features="classifier", classifier_steps=4, validate=False,
                 overwrite=True)
    assert not again.classifier_trained and (model / "model.safetensors").read_bytes() == weights
    assert again.synthetic == first.synthetic
    # a classifier made for other images is refused, naming its classifier.json field
    small = _write_set(tmp_path / "small", data["real"], {"train": "train", "test": "test"}, size=16)
    with pytest.raises(QualityError) as e:
        _run(data, tmp_path / "x", small, real=small, features=model, kid_subset_size=4)
    assert str(model) in str(e.value) and "image_size [32, 32] (classifier.json)" in str(e.value)


# ----------------------------------------------------------------------------- bad inputs
def test_bad_inputs_fail_naming_the_file_and_field(data, tmp_path):
    from safetensors.torch import save_file

    root = tmp_path
    small = _write_set(root / "small", data["real"], {"train": "train"}, size=16)
    no_test = _write_set(root / "no-test", data["real"], {"train": "train", "val": "val"})
    csv = root / "weights.csv"
    csv.write_text("a,b\n1,2\n")
    unrelated = root / "unrelated.safetensors"
    import torch

    save_file({"text_model.embeddings.weight": torch.zeros(4, 4)}, unrelated)
    marker = root / "unpickled"

    class Payload:  # unpickling this file would create the marker
        def __reduce__(self):
            return (Path.touch, (marker,))

    pt = root / "weights.pt"
    pt.write_bytes(pickle.dumps(Payload()))
    full = root / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")

    cases = [
        (dict(synthetic=small), [str(small), "image_size", "[16, 16]", "[32, 32]"]),
        (dict(real=no_test), [str(no_test), "split 'test'", "baseline"]),
        (dict(kid_subset_size=500), ["kid_subset_size=500", "synthetic"]),
        (dict(nearest_k=40, kid_subset_size=4), ["nearest_k=40"]),
        (dict(seeds=()), ["seeds=()"]),
        (dict(features=csv), [str(csv), "not a network", ".safetensors"]),
        (dict(features=unrelated), [str(unrelated), "no transformers ResNetModel weights"]),
        (dict(features=pt), [str(pt), "pickle", "never opens"]),
        (dict(features=root / "missing"), [str(root / "missing"), "no such file"]),
        (dict(synthetic=root / "nowhere"), [str(root / "nowhere"), "synthetic", "not a directory"]),
    ]
    for kw, parts in cases:
        out = root / "out"
        with pytest.raises(QualityError) as e:
            _run(data, out, kw.pop("synthetic", data["blur"]), **kw)
        for part in parts:
            assert part in str(e.value), (kw, str(e.value))
        assert not out.exists() or not any(out.iterdir())
    assert not marker.exists()
    with pytest.raises(OutputError, match="already exists"):
        _run(data, full, data["blur"])
    assert (full / "keep.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- the command
def test_the_cli_writes_the_report_table_and_figure(data, tmp_path):
    from typer.testing import CliRunner

    from medti.cli import app

    out = tmp_path / "cli"
    args = ["quality", "distribution", "--real", str(data["real"]), "--synthetic", str(data["blur"]), "--out",
            str(out), "--features", str(data["net"]), "--seed", "0", "--kid-subsets", "10", "--kid-subset-size", "12"]
    r = CliRunner().invoke(app, args, env={"MLFLOW_TRACKING_URI": ""})
    assert r.exit_code == 0, r.output
    assert "synthetic vs real" in r.output and "real vs real" in r.output and "csPCa=1" in r.output
    for name in ("distribution.json", "distribution.md", "distribution.png"):
        assert (out / name).is_file()
    r = CliRunner().invoke(app, args, env={"MLFLOW_TRACKING_URI": ""})
    assert r.exit_code == 1 and "already exists" in r.output and "Traceback" not in r.output
