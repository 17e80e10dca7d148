"""The package as a user first meets it: the console script and its hygiene."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_the_steps_and_imports_nothing_heavy():
    # `medti --help` must not import torch/diffusers/GX/DVC (that is what keeps it instant).
    code = (
        "import sys; from typer.testing import CliRunner; from medti.cli import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        "print(r.output); heavy = [m for m in ('torch', 'diffusers', 'great_expectations', 'dvc', 'mlflow') if m in sys.modules]; "
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "data" in out and "demo" in out
    assert "HEAVY []" in out


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    targets = [p for p in ("src", "tests", "benchmarks", "components", "pipelines") if (ROOT / p).exists()]
    r = subprocess.run([ruff, "check", *targets], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_torchvision_family_dependency():
    text = (ROOT / "pyproject.toml").read_text()
    for bad in ("torchvision", "timm", "open_clip"):
        assert f'"{bad}' not in text
