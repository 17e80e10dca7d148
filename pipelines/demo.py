"""``make demo``'s pipeline half: the medti pipeline on the demo's prostate phantoms with the embedded base, run
with kfp.local and tracked to an MLflow store (by default the local one: ``sqlite:///mlflow.db`` +
``mlartifacts/`` in the working directory). Settings sized for 2 CPU cores: a run takes about 10 minutes once the
base is built."""

from collections.abc import Callable
from pathlib import Path

#: the demo's pipeline parameters (beside data, base and tracking)
DEMO = {
    "embedding_steps": 400, "vectors": 16, "embedding_cases": 100, "synthetic_count": 200, "sampler_steps": 20,
    "classifier_steps": 300,
    "conditions": [{"condition": "real", "seed": 0}, {"condition": "mixed", "seed": 0},
                   {"condition": "synthetic", "seed": 0}],
}


def local_store(cwd: Path | None = None) -> str:
    """The local MLflow store's URI, absolute (each task runs in a subprocess)."""
    return f"sqlite:///{(Path(cwd or Path.cwd()) / 'mlflow.db').resolve()}"


def run_demo_pipeline(data: Path, out: Path, *, base: str = "tiny", uri: str | None = None,
                      progress: Callable[[str], None] = print, **overrides) -> str:
    """Run the pipeline (``force``: the demo trains on every run, so a second run shows the gate at work); returns
    what to show: the table, the registered versions and the gate's decisions, the figures, the ``mlflow ui``
    command."""
    from medti.tracking.pipeline import last_pipeline_run
    from pipelines.local import run_local

    uri = uri or local_store()
    params = {"data": str(Path(data).resolve()), "base": base, "tracking_uri": uri, "experiment_name": "medti-demo",
              "force": True, **DEMO, **overrides}
    root = run_local(params, Path(out) / "pipeline", quiet=True, progress=progress)
    text = last_pipeline_run(uri, "medti-demo")
    runs = sorted((root / "kfp").glob("medti-*"), key=lambda d: d.stat().st_mtime)
    # ROC curves and sample grids, not the datasets' images and masks
    figures = sorted(p for p in runs[-1].rglob("*.png") if not {"images", "masks"} & set(p.parts)) if runs else []
    lines = [text, "", "figures:"] + [f"  {p}" for p in figures]
    lines.append(f"kfp's log: {root / 'pipeline.log'}")
    return "\n".join(lines)
