"""`medti demo` / `make demo`: the main job on the embedded default, end to end.

phantoms (prostate MRI + chest x-ray) -> validate -> DVC snapshot of data/ -> tiny base (built on
first use, cached) -> csPCa / healthy embeddings by textual inversion -> sample grids, and the
phantom reference scorer applied to what the embeddings generate.
"""

from __future__ import annotations

import json
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
    seed: int = 0
    ti_steps: int = 400
    ti_batch: int = 8
    vectors: int = 16
    n_eval: int = 64
    snapshot: bool = True
    train: bool = True


@dataclass
class DemoResult:
    out: Path
    lines: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return "\n".join(["medti demo finished. What it did and where the outputs are:", *self.lines])


def run_demo(cfg: DemoConfig) -> DemoResult:
    from medti.data.phantoms import PhantomConfig, generate_phantoms
    from medti.data.validate import ValidateConfig, validate_dataset

    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    res = DemoResult(out=out)
    say = _say(res)

    size = cfg.size or _base_image_size(cfg.base)
    datasets = {}
    for kind in ("prostate", "cxr"):
        d = Path(cfg.data) / kind
        r = generate_phantoms(PhantomConfig(kind=kind, out=d, n=cfg.n, size=size, seed=cfg.seed, overwrite=True))
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

    if cfg.train:
        _embeddings(cfg, datasets["prostate"], out, say)
    say(f"[done] {time.time() - t0:.0f} s; outputs under {out.resolve()}")
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


def _embeddings(cfg: DemoConfig, data: Path, out: Path, say) -> None:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from medti.data.phantoms import lesion_score
    from medti.diffusion.base import ensure_embedded
    from medti.diffusion.sampling import sample_embedding, save_grid
    from medti.diffusion.textual_inversion import EmbeddingConfig, train_embedding
    from medti.io import atomic_write_text

    if cfg.base in ("tiny", "micro"):
        say(f"[base] embedded {cfg.base} base at {ensure_embedded(cfg.base)}")
    scores = {}
    for concept, where in (("csPCa", "csPCa=1"), ("healthy", "csPCa=0")):
        r = train_embedding(
            EmbeddingConfig(
                data=data, concept=concept, where=where, base=cfg.base, vectors=cfg.vectors,
                steps=cfg.ti_steps, batch=cfg.ti_batch, out=out / "embeddings" / f"{concept}.safetensors",
                seed=cfg.seed, validate=False,  # validated above
                # a demo stopped mid-training continues when run again (same data and settings:
                # the same embedding as an uninterrupted run); with no checkpoint it starts afresh
                resume=True,
                overwrite=True,  # the demo re-makes its outputs on every run
            )
        )
        say(f"[embed] {r.summary()}")
        imgs = sample_embedding(cfg.base, r.path, cfg.n_eval, seed=cfg.seed * 100003)
        save_grid(imgs[:16], out / "samples" / f"{concept}.png", cols=8, scale=2)
        scores[concept] = [lesion_score(im) for im in imgs]
        say(f"[samples] {cfg.n_eval} images from <{concept}> -> {out / 'samples' / (concept + '.png')}")
    y = np.r_[np.ones(len(scores["csPCa"])), np.zeros(len(scores["healthy"]))]
    auc = roc_auc_score(y, np.r_[scores["csPCa"], scores["healthy"]])
    say(f"[measure] phantom lesion scorer on generated images: AUC(<csPCa> vs <healthy>) = {auc:.3f}")
    atomic_write_text(out / "demo_metrics.json", json.dumps({"lesion_auc_generated": auc}, indent=2) + "\n")
