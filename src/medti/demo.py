"""`medti demo` / `make demo`, its data half: phantoms (prostate MRI + chest x-ray) -> validate -> DVC snapshot
of data/ -> the embedded base (built once per machine, cached).

The other half is the Kubeflow pipeline on the prostate phantoms, run here with kfp.local and tracked to the local
MLflow store (``pipelines/demo.py``, started by the ``medti demo`` command): embeddings, a synthetic set,
classifiers on real / mixed / synthetic data, the table, and the registered champions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DemoConfig:
    out: Path = Path("demo-out")
    data: Path = Path("data")  # the DVC-tracked data dir of this repository
    base: str = "tiny"
    n: int = 600
    size: int | None = None  # phantom size; default: the embedded base's image size (64 for other bases)
    preset: str = "subtle"  # prostate lesion conspicuity: the experiment's, which leaves room for synthetic data
    seed: int = 0
    snapshot: bool = True


@dataclass
class DemoResult:
    out: Path
    lines: list[str] = field(default_factory=list)
    data: dict[str, Path] = field(default_factory=dict)  # kind -> dataset dir

    def summary(self) -> str:
        return "\n".join(["medti demo finished. What it did and where the outputs are:", *self.lines])


def run_demo(cfg: DemoConfig) -> DemoResult:
    from medti.data.phantoms import PhantomConfig, generate_phantoms
    from medti.data.validate import ValidateConfig, validate_dataset
    from medti.diffusion.base import EMBEDDED, build_in_background, ensure_embedded

    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    res = DemoResult(out=out)
    say = _say(res)
    if cfg.base in EMBEDDED and (log := build_in_background(cfg.base)):
        # the longest wait of a first demo; the data steps do not need it
        say(f"[base] the embedded {cfg.base} base is not built on this machine yet: building it in the background "
            f"while the data steps run (progress: {log})")

    size = cfg.size or _base_image_size(cfg.base)
    datasets = {}
    for kind in ("prostate", "cxr"):
        d = Path(cfg.data) / kind
        preset = cfg.preset if kind == "prostate" else "default"
        r = generate_phantoms(PhantomConfig(kind=kind, out=d, n=cfg.n, size=size, seed=cfg.seed, preset=preset,
                                            overwrite=True))
        say(f"[data] {r.n} {kind} phantom cases -> {d}")
        v = validate_dataset(ValidateConfig(dataset=d, report=out / "validation" / kind))
        if not v.ok:
            raise RuntimeError(v.summary())
        say(f"[validate] {kind}: passed ({v.n_rows} rows); report {v.report_json}, Data Docs {v.data_docs}")
        datasets[kind] = d

    if cfg.snapshot:
        try:
            from medti.data.versions import SnapshotConfig, snapshot_dataset

            s = snapshot_dataset(SnapshotConfig(dataset=Path(cfg.data)))
            say(f"[version] {cfg.data} tracked by DVC: version {s.version} ({s.dvc_file}), pushed to the default remote")
        except Exception as e:  # a checkout without git/DVC still gets the rest of the demo
            say(f"[version] DVC snapshot skipped: {e}")

    if cfg.base in EMBEDDED:
        t1 = time.time()
        path = ensure_embedded(cfg.base)  # shows its build's progress the first time on a machine
        say(f"[base] embedded {cfg.base} base at {path} ({time.time() - t1:.0f} s)")
    res.data = datasets
    say(f"[data done] {time.time() - t0:.0f} s")
    return res


def _base_image_size(base: str) -> int:
    """The embedded base's image size, so textual inversion sees the phantoms unresized; 64 for other bases
    (their size is known only once loaded, and textual inversion resizes to it)."""
    from medti.diffusion.base import EMBEDDED, SPECS

    return SPECS[base].image_size if base in EMBEDDED else 64


def _say(res: DemoResult):
    def say(line: str) -> None:
        print(line, flush=True)
        res.lines.append(line)

    return say
