"""Is the embedded tiny base good enough? Sample phantoms from it with plain captions and check
that the phantom reference scorers recognise them: findings should appear in a fraction close to
the training corpus's (the corpus never names them, so the base draws them unprompted).

    python experiments/tiny_base_quality.py [--n 200]

Writes the "tiny-base" section of docs/results.md and docs/img/tiny_base_samples.png.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import json

    import numpy as np

    from _report import RESULTS, machine, write_section
    from medti.data.dataset import Dataset, load_image
    from medti.data.phantoms import (
        FINDING_THRESHOLDS,
        PhantomConfig,
        generate_phantoms,
        reference_scores,
    )
    from medti.diffusion.base import SPECS, embedded_dir, ensure_embedded, load_base
    from medti.diffusion.sampling import grid_image, sample_prompt, save_grid

    t0 = time.time()
    path = ensure_embedded("tiny")
    build = json.loads((path / "medti.json").read_text())
    base = load_base("tiny")
    prevalence = {kind: SPECS["tiny"].corpus_prevalence(kind) for kind in ("prostate", "cxr")}
    rows, grids = [], []
    prompts = {"prostate": ("prostate_mri", "axial prostate mri"), "cxr": ("cxr", "frontal chest radiograph")}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (kind, (modality, prompt)) in enumerate(prompts.items()):
            # the corpus recipe build_tiny renders: the base's size, its prevalence per modality
            ref = generate_phantoms(PhantomConfig(kind=kind, out=Path(tmp) / kind, n=args.n, seed=4242 + i, unlabeled=True,
                                                  size=base.image_size, positive_fraction=prevalence[kind]))
            real = np.stack([load_image(c.path) for c in Dataset(ref.out).cases()])
            gen = sample_prompt(base, prompt, args.n, seed=args.seed, steps=30, guidance=3.0)
            grids.append(grid_image(gen[:16], cols=16))
            for name, (r_frac, g_frac, r_mean, g_mean) in _fractions(modality, real, gen, reference_scores, FINDING_THRESHOLDS).items():
                rows.append(f"| {kind} | `{prompt}` | {name} | {r_frac:.2f} | {g_frac:.2f} | {r_mean:.3f} | {g_mean:.3f} |")
    img = ROOT / "docs" / "img" / "tiny_base_samples.png"
    save_grid(np.stack(grids), img, cols=1, scale=2)
    body = f"""## Tiny base: do its samples show what the corpus shows?

`python experiments/tiny_base_quality.py --n {args.n}` ({time.time() - t0:.0f} s on {machine()}).
The tiny base ({embedded_dir('tiny').name}: VAE {build['vae_steps']} steps, UNet {build['unet_steps']} steps at batch {build['batch']}
on {build['n_images']} unlabeled phantom images whose captions never name a finding; built in {build['seconds']:.0f} s on
{build['device']}) samples {args.n} images per plain caption (30 DDIM steps, guidance 3). The phantom reference
scorers (from pixels only; threshold = `FINDING_THRESHOLDS`) count how often each finding appears, against {args.n}
fresh real phantoms of the same corpus recipe ({base.image_size} px; prevalence of each finding 0.5 in the prostate corpus,
{prevalence['cxr']:g} in the chest x-ray corpus).

| corpus | prompt | finding | fraction in real phantoms | fraction in samples | mean score real | mean score samples |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

![tiny base samples](img/tiny_base_samples.png)
"""
    print(body)
    write_section("tiny-base", body, doc=RESULTS)


def _fractions(modality, real, gen, reference_scores, thresholds):
    import numpy as np

    out = {}
    rs = [reference_scores(modality, im) for im in real]
    gs = [reference_scores(modality, im) for im in gen]
    for name in rs[0]:
        thr = thresholds[name]
        r = np.array([s[name] for s in rs])
        g = np.array([s[name] for s in gs])
        out[name] = (float((r > thr).mean()), float((g > thr).mean()), float(r.mean()), float(g.mean()))
    return out


if __name__ == "__main__":
    main()
