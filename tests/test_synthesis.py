"""Synthesis steps on an untrained micro base: resumable synthetic datasets that validate, spec
errors that name the key, and the `medti synth` commands."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from medti.cli import app
from medti.data.dataset import DatasetError, encode_png, load_image, read_manifest
from medti.data.validate import ValidateConfig, validate_dataset
from medti.diffusion.base import build_micro
from medti.diffusion.embeddings import Embedding, load_embedding, save_embedding
from medti.diffusion.synthesis import (
    SynthesisConfig,
    SynthesisError,
    load_spec,
    synthesize,
    work_dir,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    base = build_micro(root / "micro", prediction_type="v_prediction")
    embs = {}
    for i, concept in enumerate(("csPCa", "healthy")):
        vec = torch.randn(3, 32, generator=torch.Generator().manual_seed(i)) * 0.5
        emb = Embedding(f"<{concept.lower()}>", vec, {"concept": concept, "modality": "prostate_mri"})
        embs[concept] = save_embedding(emb, root / "emb" / f"{concept}.safetensors")
    return {"root": root, "base": base, "embs": embs}


def _spec(env, path, **over):
    spec = {
        "base": str(env["base"]),
        "embeddings": ["emb/csPCa.safetensors", "emb/healthy.safetensors"],
        "modality": "prostate_mri",
        "findings": ["csPCa"],
        "seed": 100,
        "sampler": {"scheduler": "euler_a", "steps": 2, "guidance": 4.0, "guidance_rescale": 0.7,
                    "guidance_interval": [0.5, 1.0], "guidance_threshold": 0.5, "batch": 3, "negative": "blurry image"},
        "classes": [
            {"name": "pos", "prompt": "axial prostate mri, csPCa", "count": 4, "labels": {"csPCa": 1}},
            {"name": "neg", "prompt": "healthy:0.7 AND csPCa:0.3", "count": 3, "labels": {"csPCa": 0}},
        ],
    }
    spec.update(over)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_interrupted_dataset_run_resumes_to_identical_files_that_validate(env, tmp_path):
    spec = _spec(env, env["root"] / "spec.yaml")
    full = synthesize(SynthesisConfig(spec=spec, out=tmp_path / "a", progress=False, validate=False))
    assert full.n == 7 and full.generated == 7 and full.counts == {"pos": 4, "neg": 3}

    out_b = tmp_path / "b"
    with pytest.raises(SynthesisError, match="stopped after 1 chunk"):
        synthesize(SynthesisConfig(spec=spec, out=out_b, stop_after=1, progress=False, validate=False))
    assert not out_b.exists()  # nothing half-written where the dataset goes
    assert len(list(work_dir(out_b).glob("chunk-*.npy"))) == 1
    resumed = synthesize(SynthesisConfig(spec=spec, out=out_b, progress=False, validate=True))
    assert resumed.generated == 4  # 3 images came from the interrupted run
    assert not work_dir(out_b).exists()
    assert _files(tmp_path / "a") == _files(out_b)  # manifest, dataset.json and every image

    res = validate_dataset(ValidateConfig(dataset=out_b, report=tmp_path / "report", data_docs=False))
    assert res.ok, [str(f) for f in res.failures]
    rows = read_manifest(out_b)
    assert [r["csPCa"] for r in rows] == ["1"] * 4 + ["0"] * 3
    assert {r["source"] for r in rows} == {"synthetic"} and {r["split"] for r in rows} == {"train"}
    assert [r["seed"] for r in rows] == [str(100 + i) for i in range(7)]
    assert rows[0]["prompt"] == "axial prostate mri, csPCa" and rows[4]["prompt"] == "healthy:0.7 AND csPCa:0.3"
    v_pos = load_embedding(env["embs"]["csPCa"]).version
    v_neg = load_embedding(env["embs"]["healthy"]).version
    assert rows[0]["embedding_version"] == f"csPCa:{v_pos}"
    assert rows[4]["embedding_version"] == f"healthy:{v_neg};csPCa:{v_pos}"
    assert len({r["patient_id"] for r in rows}) == 7 and all(r["patient_id"].startswith("SYN-") for r in rows)
    info = json.loads((out_b / "dataset.json").read_text())
    assert info["source"] == "synthetic" and info["image_size"] == [32, 32]
    assert info["extra"]["synthesis"]["scheduler"] == "euler_a"
    assert info["extra"]["synthesis"]["guidance_rescale"] == 0.7
    assert info["extra"]["synthesis"]["guidance_interval"] == [0.5, 1.0]
    assert info["extra"]["synthesis"]["guidance_threshold"] == 0.5


def test_resume_refuses_other_settings_and_restart_discards(env, tmp_path):
    spec = _spec(env, tmp_path / "spec.yaml")
    for e in ("csPCa", "healthy"):
        (tmp_path / "emb").mkdir(exist_ok=True)
        (tmp_path / "emb" / f"{e}.safetensors").write_bytes(env["embs"][e].read_bytes())
    out = tmp_path / "ds"
    with pytest.raises(SynthesisError, match="stopped"):
        synthesize(SynthesisConfig(spec=spec, out=out, stop_after=1, progress=False, validate=False))
    _spec(env, spec, seed=5)
    with pytest.raises(SynthesisError, match="--restart"):
        synthesize(SynthesisConfig(spec=spec, out=out, progress=False, validate=False))
    res = synthesize(SynthesisConfig(spec=spec, out=out, restart=True, progress=False, validate=False))
    assert res.generated == 7 and read_manifest(out)[0]["seed"] == "5"
    with pytest.raises(SynthesisError, match="already exists"):
        synthesize(SynthesisConfig(spec=spec, out=out, progress=False, validate=False))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sampelr": {}}, "unknown key 'sampelr' .*did you mean 'sampler'"),
        ({"base": None}, "base: must be a non-empty string"),
        ({"classes": [{"prompt": "csPCa", "count": -3, "labels": {"csPCa": 1}}]}, r"classes\[0\] \(class0\).count: must be an integer >= 1, got -3"),
        ({"classes": [{"prompt": "csPCa", "count": 2, "labels": {}}]}, r"classes\[0\] \(class0\).labels: missing a value for finding\(s\) \['csPCa'\]"),
        ({"classes": [{"prompt": "csPCa", "count": 2, "labels": {"csPCa": 2}}]}, r"labels.csPCa: must be 0 or 1"),
        ({"sampler": {"scheduler": "heun"}}, "sampler.scheduler 'heun'"),
        ({"sampler": {"guidance_rescale": 2}}, "sampler.guidance_rescale must be a number from 0 to 1, got 2"),
        ({"sampler": {"guidance_interval": [0.7, 0.2]}}, r"sampler.guidance_interval must be a list \[start, stop\].*got \[0.7, 0.2\]"),
        ({"sampler": {"guidance_interval": "0.3,1"}}, r"sampler.guidance_interval must be a list .*got '0.3,1'"),
        ({"sampler": {"guidance_threshold": 1}}, r"sampler.guidance_threshold must be a number from 0 up to 1 \(not 1\), got 1"),
        ({"embeddings": ["emb/missing.safetensors"]}, r"embeddings\[0\] 'emb/missing.safetensors': file not found"),
        ({"classes": [{"name": "p", "prompt": "pneumonia", "count": 1, "labels": {"csPCa": 1}}]}, r"classes\[0\] \(p\).prompt: .*unknown concept 'pneumonia'"),
    ],
)
def test_bad_spec_names_the_key(env, tmp_path, change, message):
    spec = _spec(env, env["root"] / f"bad-{abs(hash(message)) % 10**6}.yaml", **change)
    with pytest.raises(SynthesisError, match=message):
        synthesize(SynthesisConfig(spec=spec, out=tmp_path / "x", progress=False, validate=False))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("device", ["tpu", "cuda:99", "cuda"])
def test_an_unusable_device_is_refused_by_name(env, tmp_path, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda is usable")
    r = CliRunner().invoke(app, ["synth", "generate", *_common(env), "--embeddings", str(env["embs"]["csPCa"]),
                                 "--prompt", "csPCa", "--n", "1", "--device", device,
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and f"--device {device}" in r.output.replace("'", "") and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


def test_generate_refuses_a_negative_seed_and_a_non_dataset_out_before_sampling(env, tmp_path):
    args = ["synth", "generate", *_common(env), "--embeddings", str(env["embs"]["csPCa"]), "--prompt", "csPCa", "--n", "1"]
    r = CliRunner().invoke(app, [*args, "--seed", "-1", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "--seed: must be an integer >= 0, got -1" in r.output and not (tmp_path / "o").exists()
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "notes.md").write_text("mine")
    r = CliRunner().invoke(app, [*args, "--out", str(mine), "--force"])
    assert r.exit_code == 1 and "is not a medti dataset dir" in r.output and "sample" not in r.output
    assert [p.name for p in mine.iterdir()] == ["notes.md"]


def test_ctrl_c_keeps_the_chunks_says_how_to_continue_and_the_rerun_finishes(env, tmp_path):
    # a real SIGINT to a real `medti synth dataset` process, once its first chunk is on disk
    import signal
    import subprocess
    import sys
    import time

    spec = _spec(env, env["root"] / "sigint.yaml", classes=[
        {"name": "pos", "prompt": "axial prostate mri, csPCa", "count": 120, "labels": {"csPCa": 1}},
    ])
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "medti.cli", "synth", "dataset", "--spec", str(spec), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not list(work_dir(out).glob("chunk-*.npy")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted; the images made so far are kept: run the same command again to continue" in err
    assert "Traceback" not in err and not out.exists()
    kept = len(list(work_dir(out).glob("chunk-*.npy")))
    assert 1 <= kept < 120 // 3
    again = synthesize(SynthesisConfig(spec=spec, out=out, progress=False, validate=False))
    assert again.n == 120 and again.generated == 120 - 3 * kept and len(read_manifest(out)) == 120


def test_a_second_run_on_the_same_output_fails_at_once_while_the_first_holds_it(env, tmp_path):
    from medti.io import OutputError, output_lock

    spec = _spec(env, env["root"] / "lock.yaml")
    out = tmp_path / "ds"
    with output_lock(out, "synth dataset"):  # what a running `medti synth dataset` holds
        with pytest.raises(OutputError, match="another synth dataset run is writing .*ds right now"):
            synthesize(SynthesisConfig(spec=spec, out=out, progress=False, validate=False))
        assert not work_dir(out).exists()  # it started nothing
    res = synthesize(SynthesisConfig(spec=spec, out=out, progress=False, validate=False))
    assert res.n == 7 and sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no lock file left behind


def test_the_readme_example_spec_loads(env, tmp_path):
    # the README is where users copy a spec from; it must stay a spec that load_spec accepts
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Synthetic dataset spec", 1)[1]
    text = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    for concept, src in env["embs"].items():
        (tmp_path / "emb").mkdir(exist_ok=True)
        (tmp_path / "emb" / f"{concept}.safetensors").write_bytes(src.read_bytes())
    (tmp_path / "spec.yaml").write_text(text)
    spec = load_spec(tmp_path / "spec.yaml")
    assert [(c.name, c.count, c.labels) for c in spec.classes] == [
        ("positive", 1000, {"csPCa": 1}), ("negative", 1000, {"csPCa": 0})
    ]
    assert [c.negative for c in spec.classes] == ["axial prostate mri, healthy", "axial prostate mri, csPCa"]
    assert spec.sampler.scheduler == "dpmpp" and spec.sampler.steps == 30 and spec.findings == ["csPCa"]
    assert spec.embeddings == [tmp_path / "emb" / "csPCa.safetensors", tmp_path / "emb" / "healthy.safetensors"]


def test_spec_defaults(env):
    spec = load_spec(_spec(env, env["root"] / "defaults.yaml"))
    assert spec.channels == ["T2W", "ADC", "DWI"] and spec.split == "train" and spec.total == 7
    assert spec.name == "synthetic-prostate_mri" and spec.sampler.max_rows == 64
    assert isinstance(SynthesisError("x"), DatasetError)


# ----------------------------------------------------------------------------- CLI
def _common(env):
    return ["--base", str(env["base"]), "--steps", "2", "--guidance", "3", "--scheduler", "ddim"]


def test_cli_generate_writes_images_grid_and_manifest(env, tmp_path):
    out = tmp_path / "gen"
    r = CliRunner().invoke(
        app,
        ["synth", "generate", *_common(env), "--embeddings", str(env["embs"]["csPCa"]), str(env["embs"]["healthy"]),
         "--prompt", "csPCa:30% AND healthy:70%", "--negative", "blurry image", "--n", "3", "--seed", "7",
         "--guidance-rescale", "0.7", "--guidance-interval", "0.3,1", "--guidance-threshold", "0.9", "--out", str(out)],
    )
    assert r.exit_code == 0, r.output
    settings = json.loads((out / "dataset.json").read_text())["extra"]["synthesis"]
    assert settings["guidance_rescale"] == 0.7 and settings["guidance_interval"] == [0.3, 1.0]
    assert settings["guidance_threshold"] == 0.9
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert [r_["seed"] for r_ in rows] == ["7", "8", "9"]
    assert rows[0]["prompt"] == "csPCa:0.3 AND healthy:0.7"
    v = {k: load_embedding(p).version for k, p in env["embs"].items()}
    assert rows[0]["embedding_version"] == f"csPCa:{v['csPCa']};healthy:{v['healthy']}"
    assert (out / "grid.png").exists() and len(list((out / "images").glob("*.png"))) == 3


def test_cli_interpolate_writes_one_strip_per_seed(env, tmp_path):
    out = tmp_path / "interp"
    r = CliRunner().invoke(
        app,
        ["synth", "interpolate", *_common(env), "--embeddings", str(env["embs"]["healthy"]),
         "--embeddings", str(env["embs"]["csPCa"]), "--from", "healthy", "--to", "csPCa", "--weights", "0,0.5,1",
         "--seed", "3", "--n-seeds", "2", "--guidance-rescale", "0.5", "--guidance-interval", "0,0.8", "--out", str(out)],
    )
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.glob("strip-*.png")) == ["strip-seed3.png", "strip-seed4.png"]
    meta = json.loads((out / "interpolation.json").read_text())
    assert meta["prompts"] == ["healthy AND csPCa:0", "healthy:0.5 AND csPCa:0.5", "healthy:0 AND csPCa"]
    assert meta["guidance_rescale"] == 0.5 and meta["guidance_interval"] == [0.0, 0.8]
    strip = load_image(out / "strip-seed3.png")
    assert strip.shape[1] > 3 * strip.shape[0] // 2  # a horizontal strip of 3 images
    # above the images, a white band with the title and each column's weight of --to written in it
    overview = load_image(out / "strips.png")
    tile = 32 * 4  # 32-px images enlarged 4x
    band = strip.shape[0] - (tile + 2 * 2 * 4)
    assert band > 0 and overview.shape[0] - band == 2 * tile + 3 * 2 * 4
    top = strip[:band].min(axis=2)
    assert top.min() < 100 and (top > 200).mean() > 0.8
    col_w = (strip.shape[1] - 8) // 3
    assert all((top[:, 8 + k * col_w : 8 + (k + 1) * col_w] < 100).any() for k in range(3))
    # a re-run into the same dir needs --force, and then leaves only its own strips (not seed 4's)
    rerun = ["synth", "interpolate", *_common(env), "--embeddings", str(env["embs"]["healthy"]), "--embeddings",
             str(env["embs"]["csPCa"]), "--from", "healthy", "--to", "csPCa", "--weights", "0,1", "--seed", "3", "--out", str(out)]
    r = CliRunner().invoke(app, rerun)
    assert r.exit_code == 1 and "already exists and is not empty (use --force" in r.output
    r = CliRunner().invoke(app, [*rerun, "--force"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["interpolation.json", "strip-seed3.png", "strips.png"]
    assert json.loads((out / "interpolation.json").read_text())["weights"] == [0.0, 1.0]
    bad = CliRunner().invoke(app, ["synth", "interpolate", *_common(env), "--from", "a", "--to", "b", "--weights", "0,x", "--out", str(out)])
    assert bad.exit_code != 0 and "'x' is not a number" in bad.output
    bad = CliRunner().invoke(app, ["synth", "interpolate", *_common(env), "--from", "a", "--to", "b", "--guidance-interval", "1,0.3", "--out", str(out)])
    assert bad.exit_code != 0 and "'1,0.3': write START,STOP" in bad.output
    bad = CliRunner().invoke(app, ["synth", "interpolate", *_common(env), "--from", "a", "--to", "b", "--guidance-threshold", "1", "--out", str(out)])
    assert bad.exit_code != 0 and "--guidance-threshold 1.0: give Q from 0 up to" in bad.output


def test_cli_inpaint_keeps_pixels_outside_the_mask(env, tmp_path):
    rng = np.random.default_rng(1)
    img = (rng.random((32, 32, 3)) * 100 + 50).astype(np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[10:20, 12:22] = 255
    (tmp_path / "img.png").write_bytes(encode_png(img))
    (tmp_path / "mask.png").write_bytes(encode_png(mask))
    base_args = ["synth", "inpaint", *_common(env), "--embeddings", str(env["embs"]["csPCa"]), "--image",
                 str(tmp_path / "img.png"), "--mask", str(tmp_path / "mask.png"), "--prompt", "csPCa",
                 "--strength", "0.9", "--steps", "4"]

    def inpaint(name, *extra):
        r = CliRunner().invoke(app, [*base_args, *extra, "--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
        return load_image(tmp_path / name)

    out = tmp_path / "out.png"
    new = inpaint("out.png")
    m = mask > 0
    assert np.array_equal(new[~m], img[~m]) and not np.array_equal(new[m], img[m])
    # each option gives the same pixels outside and another region inside: --resample 1 (masked denoising
    # without RePaint's passes), the first denoising steps unguided, guidance rescale
    for name, extra in (("plain.png", ["--resample", "1"]), ("late.png", ["--guidance-interval", "0.5,1"]),
                        ("rescaled.png", ["--guidance-rescale", "0.7"])):
        other = inpaint(name, *extra)
        assert np.array_equal(other[~m], img[~m]) and not np.array_equal(other[m], new[m]), name
    empty = tmp_path / "empty.png"
    empty.write_bytes(encode_png(np.zeros((32, 32), np.uint8)))
    bad = CliRunner().invoke(
        app, ["synth", "inpaint", *_common(env), "--image", str(tmp_path / "img.png"), "--mask", str(empty),
              "--prompt", "x", "--out", str(tmp_path / "o2.png")],
    )
    assert bad.exit_code == 1 and "empty" in bad.output and not (tmp_path / "o2.png").exists()
    # an existing output (here the input image itself) is not replaced without --force, and a
    # name that promises a lossy format is refused: the pixels outside the mask must stay exact
    before = (tmp_path / "img.png").read_bytes()
    args = ["synth", "inpaint", *_common(env), "--embeddings", str(env["embs"]["csPCa"]), "--image",
            str(tmp_path / "img.png"), "--mask", str(tmp_path / "mask.png"), "--prompt", "csPCa", "--steps", "2"]
    bad = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "img.png")])
    assert bad.exit_code == 1 and "already exists and is the --image itself" in bad.output
    assert (tmp_path / "img.png").read_bytes() == before
    from PIL import Image

    Image.fromarray(img[..., 0].astype(np.uint16) * 256).save(tmp_path / "img16.png")  # a 16-bit grey PNG
    bad = CliRunner().invoke(app, [*[a if a != str(tmp_path / "img.png") else str(tmp_path / "img16.png") for a in args],
                                   "--out", str(tmp_path / "o16.png")])
    assert bad.exit_code == 1 and "16-bit or float" in bad.output and not (tmp_path / "o16.png").exists()
    bad = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o3.jpg")])
    assert bad.exit_code == 1 and "give a name ending in .png" in bad.output and not (tmp_path / "o3.jpg").exists()
    again = CliRunner().invoke(app, [*args, "--out", str(out), "--force"])
    assert again.exit_code == 0, again.output
    assert np.array_equal(load_image(out)[~m], img[~m])


def test_cli_dataset_and_bad_spec(env, tmp_path):
    spec = _spec(env, env["root"] / "cli.yaml")
    r = CliRunner().invoke(app, ["synth", "dataset", "--spec", str(spec), "--out", str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output
    assert "7 images" in r.output and len(read_manifest(tmp_path / "ds")) == 7
    bad = _spec(env, env["root"] / "cli-bad.yaml", classes=[{"prompt": "csPCa", "cnt": 1}])
    r = CliRunner().invoke(app, ["synth", "dataset", "--spec", str(bad), "--out", str(tmp_path / "ds2")])
    assert r.exit_code == 1 and "unknown key 'cnt'" in r.output


def test_warns_only_for_embeddings_trained_on_another_base(env, tmp_path):
    from medti.diffusion.base import load_base, weights_hash
    from medti.diffusion.synthesis import load_sampler

    here = load_base(str(env["base"])).model_hash
    legacy = weights_hash(env["base"], legacy=True)  # what embeddings trained before 2026-11-30 recorded
    files = []
    for name, h in (("same", here), ("legacy", legacy), ("other", "0123456789abcdef"), ("unrecorded", "")):
        emb = Embedding(f"<{name}>", torch.zeros(2, 32), {"concept": name, "base_model": "micro", "base_model_hash": h})
        files.append(save_embedding(emb, tmp_path / f"{name}.safetensors"))
    _, warns = load_sampler(str(env["base"]), files)
    assert len(warns) == 1 and warns[0].startswith(str(files[2])) and "0123456789abcdef" in warns[0]
    assert "embedded" not in warns[0]  # a user's own base dir: nothing to say about builds


def test_warning_for_another_build_of_the_embedded_base_says_what_differs(env, tmp_path, monkeypatch):
    from medti.diffusion.base import load_base
    from medti.diffusion.synthesis import load_sampler

    monkeypatch.setenv("MEDTI_CACHE", str(env["root"] / "cache"))
    model_id = load_base("micro").model_id
    emb = Embedding("<c>", torch.zeros(2, 32), {"concept": "c", "base_model": model_id, "base_model_hash": "0" * 16})
    f = save_embedding(emb, tmp_path / "c.safetensors")
    g = save_embedding(Embedding("<d>", torch.zeros(2, 32), {**emb.metadata, "concept": "d"}), tmp_path / "d.safetensors")
    _, warns = load_sampler("micro", [f, g])
    assert [w.split(":")[0] for w in warns[:2]] == [str(f), str(g)]
    assert len(warns) == 3 and "builds of the embedded micro base" in warns[2] and "token" in warns[2]  # said once
