"""Development probe: does longer textual inversion make the `csPCa` embedding reliably strong?

For one seed, trains `csPCa` (64 vectors, batch 8, lr 0.005, first 100 csPCa=1 cases of 600 prostate phantoms)
for each step count given, then measures with the tiny base (dpmpp, 25 steps, guidance 7.5):
- the mean lesion score of 32 plain samples of `axial prostate mri, csPCa` (fraction > 0.25);
- inpainting `csPCa` into the synthesis experiment's 100 healthy cases for that seed (RePaint, 2 passes,
  strength 1): the share whose lesion score in the mask rises (the Done-when figure, target >= 80 %).

    python experiments/ti_steps_probe.py --seed 5 --steps 1500,6000 [--keep DIR]

Prints one line per step count; writes nothing to docs (figures go to docs/results.md by hand, as a lead).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument(
        "--steps", default="1500,6000", help="comma-separated textual inversion step counts"
    )
    ap.add_argument("--keep", type=Path, default=None, help="keep the embeddings in this dir")
    args = ap.parse_args()

    import numpy as np

    from medti._quiet import quiet_libraries

    quiet_libraries()
    from synthesis_science import (
        first_seed,
        healthy_cases_with_lesion_masks,
        inpaint_case_seed,
        wordings,
    )

    from medti.data.phantoms import PhantomConfig, generate_phantoms, lesion_score
    from medti.diffusion.base import load_base
    from medti.diffusion.embeddings import load_embedding
    from medti.diffusion.guided import GuidedSampler
    from medti.diffusion.textual_inversion import EmbeddingConfig, train_embedding

    prompt = wordings("modality")[0]("csPCa")  # the experiment's wording: axial prostate mri, csPCa
    base = load_base("tiny")
    cases = healthy_cases_with_lesion_masks(100, base.image_size, seed=inpaint_case_seed(args.seed))
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp) / "emb"
        data = generate_phantoms(
            PhantomConfig(kind="prostate", out=Path(tmp) / "p", n=600, seed=args.seed)
        ).out
        for steps in (int(s) for s in args.steps.split(",")):
            t = time.time()
            res = train_embedding(
                EmbeddingConfig(
                    data=data,
                    concept="csPCa",
                    where="csPCa=1",
                    base="tiny",
                    vectors=64,
                    steps=steps,
                    batch=8,
                    lr=0.005,
                    seed=args.seed,
                    init_text="mri",
                    out=out / f"csPCa_s{args.seed}_{steps}.safetensors",
                    n_samples=0,
                    max_images=100,
                    progress=False,
                    overwrite=True,  # a kept dir is re-made on every run
                )
            )
            t_train = time.time() - t
            sampler = GuidedSampler(
                base,
                [load_embedding(res.path)],
                scheduler="dpmpp",
                steps=25,
                guidance=7.5,
                batch=16,
            )
            plain = np.array([lesion_score(x) for x in sampler.sample(prompt, n=32, seed=50_000)])
            before, after = [], []
            for i, (img, mask, _real) in enumerate(cases):
                new = sampler.inpaint(
                    img,
                    mask,
                    prompt,
                    n=1,
                    seed=first_seed(30_000, args.seed) + i,
                    strength=1.0,
                    resample=2,
                )[0]
                before.append(lesion_score(img, region=mask))
                after.append(lesion_score(new, region=mask))
            before, after = np.array(before), np.array(after)
            print(
                f"seed {args.seed}, {steps} steps (loss {res.final_loss:.4f}, {t_train:.0f} s): plain samples lesion score "
                f"{plain.mean():.3f} (> 0.25: {np.mean(plain > 0.25):.0%}); inpainting rise {np.mean(after > before):.0%}, "
                f"score after {after.mean():.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
