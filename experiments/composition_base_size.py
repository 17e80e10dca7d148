"""Composition on a tiny base built at another image size or CXR corpus prevalence (the levers found on
composition at guidance 7.5).

Builds the embedded tiny base's recipe (``build_tiny``: same corpora, architecture, steps and seed; only
``--image-size`` and ``--cxr-prevalence`` changed, each defaulting to the shipped recipe's; the latents grow
with the size at the VAE's factor 4), trains the two CXR concepts on it as
``experiments/synthesis_science.py --seed S`` trains them on the shipped base (1300 phantoms at prevalence 0.25,
rendered at that size; first 100 matching training cases; 16 vectors, 6000 steps, batch 8, lr 0.005), and
measures composition as that run does (its measurement 2, the same noise seeds).  The base and the
embeddings are kept under ``--work`` and reused when present, so a second run only samples.

    python experiments/composition_base_size.py --image-size 128 --seed 8 --work /tmp/base128

``--cxr-prevalence`` sets the CXR corpus's prevalence of each finding (tiny-v7's is 0.5, the labelled
cases' 0.25); the recipe is written to ``--work``/recipe.json and a reused dir must match it.

On 2 CPU cores at 128 px: base ~46 min, each concept ~12.5 min, each guidance scale ~2 min.
Prints a markdown table and writes the first 8 images per prompt at each guidance to ``--work``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CONCEPTS = ("pleural_effusion", "pneumonia")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=None, help="default: the shipped recipe's")
    ap.add_argument("--seed", type=int, required=True, help="as synthesis_science.py --seed: phantoms, TI and noise")
    ap.add_argument("--work", type=Path, required=True, help="keeps base/ and embeddings/ between runs")
    ap.add_argument("--guidance", default="3,7.5")
    ap.add_argument("--scheduler", default="dpmpp", help="sampler scheduler (the science run's: dpmpp)")
    ap.add_argument("--n", type=int, default=100, help="images per prompt")
    ap.add_argument("--cxr-prevalence", type=float, default=None,
                    help="prevalence of each finding in the base's CXR corpus (default: the shipped recipe's, "
                    "tiny-v7's 0.5; the labelled cases': 0.25)")
    args = ap.parse_args()

    from PIL import Image
    from synthesis_science import composition_sweep

    from medti._quiet import quiet_libraries
    from medti.data.phantoms import PhantomConfig, generate_phantoms
    from medti.diffusion.base import SPECS, load_base
    from medti.diffusion.base_train import build_tiny
    from medti.diffusion.embeddings import load_embedding
    from medti.diffusion.sampling import grid_image
    from medti.diffusion.textual_inversion import EmbeddingConfig, train_embedding

    quiet_libraries()
    args.image_size = args.image_size or SPECS["tiny"].image_size
    name = f"tiny{args.image_size}"
    if args.cxr_prevalence is None:
        args.cxr_prevalence = SPECS["tiny"].cxr_corpus_prevalence
    SPECS[name] = spec = dataclasses.replace(SPECS["tiny"], name=name, image_size=args.image_size,
                                             cxr_corpus_prevalence=args.cxr_prevalence)
    base_dir = args.work / "base"
    recipe = {"image_size": args.image_size, "cxr_prevalence": args.cxr_prevalence}
    recipe_file = args.work / "recipe.json"
    if (base_dir / "model_index.json").exists():
        # dirs from before the option hold tiny-v7's corpus (0.5) at the base's own size
        found = json.loads(recipe_file.read_text()) if recipe_file.exists() else {
            "image_size": load_base(str(base_dir)).image_size, "cxr_prevalence": 0.5}
        if found != recipe:
            sys.exit(f"{args.work}: its base was built as {found}, not {recipe}; use another --work")
    else:
        t = time.time()
        build_tiny(base_dir, progress=False, spec=name)
        print(f"built {base_dir} in {time.time() - t:.0f} s with the corpora", flush=True)
        recipe_file.write_text(json.dumps(recipe) + "\n")
    emb_dir = args.work / f"embeddings_seed{args.seed}"
    with tempfile.TemporaryDirectory() as tmp:
        data = None
        for concept in CONCEPTS:
            out = emb_dir / f"{concept}.safetensors"
            if out.exists():
                continue
            if data is None:
                data = generate_phantoms(PhantomConfig(kind="cxr", out=Path(tmp) / "cxr", n=1300, size=spec.image_size,
                                                       seed=args.seed, positive_fraction=0.25)).out
            t = time.time()
            r = train_embedding(EmbeddingConfig(
                data=data, concept=concept, where=f"{concept}=1", base=str(base_dir), vectors=16, steps=6000, batch=8,
                lr=0.005, seed=args.seed, init_text="chest radiograph", out=out, n_samples=0, max_images=100,
                progress=False))
            print(f"trained {concept}: final loss {r.final_loss:.4f}, {time.time() - t:.0f} s", flush=True)
    embs = [load_embedding(emb_dir / f"{c}.safetensors") for c in CONCEPTS]
    base = load_base(str(base_dir))
    print(f"\nbase {base_dir} ({base.image_size} px, CXR corpus prevalence {args.cxr_prevalence:g}); embeddings {emb_dir}; n {args.n} per prompt; {args.scheduler}, 25 steps\n")
    for g, comp in composition_sweep(base, embs, args.guidance, args.seed, args.n, scheduler=args.scheduler, steps=25):
        grid = grid_image([im for v in comp.values() for im in v["images"][:8]], cols=8)
        tag = f"{g:g}".replace(".", "_")
        Image.fromarray(grid).convert("L").save(args.work / f"composition_seed{args.seed}_{args.scheduler}_g{tag}.png")

if __name__ == "__main__":
    main()
