"""Issue 3's science check: do csPCa embeddings make lesions?

On the prostate phantoms with the tiny base: a `csPCa=1` and a `csPCa=0` embedding, each trained
by textual inversion from 100 training cases; 200 images are generated from each; the phantom
reference lesion scorer (pixels only) should score the positive embedding's images higher:
AUC >= 0.85.

    python experiments/ti_lesion_auc.py [--steps 1000] [--vectors 16] [--n 200]

Writes the "ti-lesion-auc" section of docs/results.md and docs/img/ti_samples.png.
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
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--vectors", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="phantoms, textual inversion and sampling seeds (other values: a fresh evaluation)")
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--keep", type=Path, default=None, help="keep the embeddings in this dir")
    ap.add_argument("--max-norm", default=None,
                    help="cap on each vector's norm ('vocab', a number or 'none'; default: the trainer's)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    first_seed = 10_000 + 1000 * args.seed  # sampling seeds; another --seed is a fresh evaluation

    import numpy as np
    from sklearn.metrics import roc_auc_score

    from _report import RESULTS, machine, norm_note, write_section
    from medti.data.dataset import Dataset, load_image
    from medti.data.phantoms import PhantomConfig, generate_phantoms, lesion_score
    from medti.diffusion.base import SPECS, ensure_embedded, load_base
    from medti.diffusion.embeddings import load_embedding
    from medti.diffusion.guided import GuidedSampler
    from medti.diffusion.sampling import grid_image, sample_embedding, save_grid
    from medti.diffusion.templates import TEMPLATES
    from medti.diffusion.textual_inversion import EmbeddingConfig, max_norm_arg, train_embedding

    ensure_embedded("tiny")
    size = SPECS["tiny"].image_size  # phantoms at the base's size, as textual inversion would otherwise resize them
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_phantoms(PhantomConfig(kind="prostate", out=Path(tmp) / "prostate", n=600, seed=args.seed, size=size)).out
        emb_dir = args.keep or Path(tmp) / "emb"
        res, scores, grids, secs = {}, {}, [], {}
        for concept, where in (("csPCa", "csPCa=1"), ("healthy", "csPCa=0")):
            t = time.process_time()
            tw = time.time()
            res[concept] = train_embedding(
                EmbeddingConfig(
                    data=data, concept=concept, where=where, base="tiny", vectors=args.vectors, steps=args.steps,
                    batch=args.batch, lr=args.lr, seed=args.seed, out=emb_dir / f"{concept}.safetensors", n_samples=0,
                    max_images=100, max_norm=max_norm_arg(args.max_norm), overwrite=True,  # --keep: re-made
                )
            )
            secs[concept] = (time.time() - tw, time.process_time() - t)
            tg = time.time()
            imgs = sample_embedding("tiny", res[concept].path, args.n, seed=first_seed, guidance=args.guidance)
            secs[concept + "_gen"] = time.time() - tg
            scores[concept] = np.array([lesion_score(im) for im in imgs])
            grids.append(grid_image(imgs[:16], cols=16))
        # Each class sampled with the other class's embedding as its negative prompt, as a synthetic-dataset spec
        # would (`medti synth dataset`: per-class `negative`). Reported beside the plain protocol, not instead.
        base = load_base("tiny")
        embs = [load_embedding(res[c].path) for c in ("csPCa", "healthy")]
        sampler = GuidedSampler(base, embs, scheduler="ddim", steps=30, guidance=args.guidance, batch=16)
        tmpl = TEMPLATES["prostate_mri"][1]  # the template sample_embedding uses
        contrast = {}
        for concept, other in (("csPCa", "healthy"), ("healthy", "csPCa")):
            imgs = sampler.sample(tmpl.format(f"<{concept}>"), n=args.n, seed=first_seed, negative=tmpl.format(f"<{other}>"))
            contrast[concept] = np.array([lesion_score(im) for im in imgs])
        real = Dataset(data)
        real_pos = np.array([lesion_score(load_image(c.path)) for c in real.cases(split="test", where={"csPCa": 1})])
        real_neg = np.array([lesion_score(load_image(c.path)) for c in real.cases(split="test", where={"csPCa": 0})])
    y = np.r_[np.ones(args.n), np.zeros(args.n)]
    auc = roc_auc_score(y, np.r_[scores["csPCa"], scores["healthy"]])
    auc_contrast = roc_auc_score(y, np.r_[contrast["csPCa"], contrast["healthy"]])
    auc_real = roc_auc_score(np.r_[np.ones(len(real_pos)), np.zeros(len(real_neg))], np.r_[real_pos, real_neg])
    if not args.no_write:  # --no-write leaves docs/ alone, the figure included
        save_grid(np.stack(grids), ROOT / "docs" / "img" / "ti_samples.png", cols=1, scale=2)
    body = f"""## Textual inversion on prostate phantoms: csPCa vs healthy embeddings (tiny base)

`python experiments/ti_lesion_auc.py --steps {args.steps} --vectors {args.vectors} --batch {args.batch} --n {args.n}{f' --max-norm {args.max_norm}' if args.max_norm else ''}{f' --seed {args.seed}' if args.seed else ''}`
on {machine()}.

Settings: 600 prostate phantoms ({size} px, seed {args.seed}); one embedding from the first 100 `csPCa=1` training cases and one
from the first 100 `csPCa=0` training cases; {args.vectors} vectors, {args.steps} steps at batch {args.batch}, lr {args.lr}, vector norms {norm_note(res.values())},
mirrored images, frozen tiny base (fp32 on CPU). {args.n} images per embedding (30 DDIM steps, guidance {args.guidance}, seeds
{first_seed}..), each scored by the phantom reference lesion scorer (pixels only).

| | value |
|---|---|
| **AUC, `<csPCa>` images vs `<healthy>` images (lesion score)** | **{auc:.3f}** (target >= 0.85) |
| AUC with each embedding's images sampled with the other embedding as negative prompt (`{tmpl.format('<healthy>')}` for `<csPCa>` and vice versa; medti's DDIM sampler) | {auc_contrast:.3f} (mean lesion score {contrast['csPCa'].mean():.3f} / {contrast['healthy'].mean():.3f}) |
| same scorer on real test phantoms (csPCa=1 vs 0), for reference | {auc_real:.3f} |
| mean lesion score: `<csPCa>` / `<healthy>` images | {scores['csPCa'].mean():.3f} / {scores['healthy'].mean():.3f} |
| mean lesion score: real positives / negatives | {real_pos.mean():.3f} / {real_neg.mean():.3f} |
| training time per embedding (wall / CPU) | {secs['csPCa'][0]:.0f} s / {secs['csPCa'][1]:.0f} s; {secs['healthy'][0]:.0f} s / {secs['healthy'][1]:.0f} s |
| generation time for {args.n} images | {secs['csPCa_gen']:.0f} s |
| final training loss `<csPCa>` / `<healthy>` | {res['csPCa'].final_loss:.4f} / {res['healthy'].final_loss:.4f} |

Top row `<csPCa>`, bottom row `<healthy>`:

![textual inversion samples](img/ti_samples.png)
"""
    print(body)
    if not args.no_write:
        write_section("ti-lesion-auc", body, doc=RESULTS)


if __name__ == "__main__":
    main()
