"""Composition vs guidance scale, with embeddings an earlier synthesis run kept (no training here).

For each guidance scale, measurement 2 of ``experiments/synthesis_science.py`` (its ``composition``:
100 images each of `pleural_effusion`, `pneumonia` and `pleural_effusion AND pneumonia`, in the CXR
caption, negative prompt `frontal chest radiograph`, the same seeds as that run's ``--seed``), so at the
run's guidance scales it reproduces the run's composition table exactly.  Shows where the 2x target holds
and how the single prompts' "both findings" rate moves with guidance.

    python experiments/synthesis_science.py --seed 7 --keep /tmp/emb7         # trains and keeps
    python experiments/composition_guidance_sweep.py --emb-dir /tmp/emb7 --seed 7 --guidance 1.5,3,5,7.5

Prints a markdown table; writes nothing to docs (figures go to docs/results.md by hand).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--emb-dir", type=Path, required=True, help="dir with pleural_effusion/pneumonia.safetensors")
    ap.add_argument("--seed", type=int, required=True, help="the --seed of the run that trained them (picks the noise)")
    ap.add_argument("--guidance", default="1.5,3,5,7.5")
    ap.add_argument("--guidance-rescale", type=float, default=0.0)
    ap.add_argument("--guidance-interval", default="0,1", help="START,STOP fractions of the steps that are guided")
    ap.add_argument("--guidance-threshold", type=float, default=0.0, help="SEGA edit threshold per guidance term")
    ap.add_argument("--scheduler", default="dpmpp", help="sampler scheduler (the science run's: dpmpp)")
    ap.add_argument("--steps", type=int, default=25, help="sampling steps (the science run's: 25)")
    ap.add_argument("--n", type=int, default=100, help="images per prompt")
    args = ap.parse_args()

    from synthesis_science import composition_sweep

    from medti._quiet import quiet_libraries
    from medti.diffusion.base import load_base
    from medti.diffusion.embeddings import load_embedding
    from medti.diffusion.guided import parse_guidance_interval

    quiet_libraries()
    base = load_base("tiny")
    embs = [load_embedding(args.emb_dir / f"{c}.safetensors") for c in ("pleural_effusion", "pneumonia")]
    print(f"embeddings {args.emb_dir} (run --seed {args.seed}); n {args.n} per prompt; {args.scheduler}, {args.steps} steps; guidance rescale {args.guidance_rescale:g}; "
          f"guidance interval {args.guidance_interval}; guidance threshold {args.guidance_threshold:g}\n")
    composition_sweep(base, embs, args.guidance, args.seed, args.n, scheduler=args.scheduler, steps=args.steps,
                      guidance_rescale=args.guidance_rescale,
                      guidance_interval=parse_guidance_interval(args.guidance_interval),
                      guidance_threshold=args.guidance_threshold)

if __name__ == "__main__":
    main()
