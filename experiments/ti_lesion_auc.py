"""Issue 3's science check: do csPCa embeddings make lesions?

On the prostate phantoms with the tiny base: a `csPCa=1` and a `csPCa=0` embedding, each trained
by textual inversion from 100 training cases; 200 images are generated from each; the phantom
reference lesion scorer (pixels only) should score the positive embedding's images higher:
AUC >= 0.85.

    python experiments/ti_lesion_auc.py [--steps 1000] [--vectors 16] [--n 200] [--preset default|subtle]

Writes the "ti-lesion-auc" section of docs/results.md and docs/img/ti_samples.png (with `--preset subtle`:
"ti-lesion-auc-subtle" and docs/img/ti_samples_subtle.png, so the default preset's result stays).

One seed does not describe the method; over several fresh seeds (phantoms, textual inversion and sampling all
re-seeded per seed), with each finished seed appended to a JSON-lines log so a killed run loses nothing:

    python experiments/ti_lesion_auc.py --seeds 23,31,47,59,61 --preset subtle --log ti_seeds_subtle.jsonl

writes the "ti-lesion-auc-seeds-<preset>" section: one row per seed and the mean +- std (ddof=1) of both AUCs.
A rerun with the same --log and settings takes the seeds already logged from the log instead of re-running them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

PRESETS = ("default", "subtle")


def first_seed(seed: int) -> int:
    """The first sampling seed of an evaluation; another `seed` is a fresh evaluation."""
    return 10_000 + 1000 * seed


def evaluate(seed: int, preset: str, steps: int, vectors: int, batch: int, lr: float, n: int, guidance: float,
             max_norm: str | None, keep: Path | None = None) -> dict:
    """One evaluation: phantoms (``preset``, ``seed``), a `<csPCa>` and a `<healthy>` embedding trained on 100
    cases each (``seed``), ``n`` images from each (seeds ``first_seed(seed)``..) plain and with the other
    embedding as negative prompt, all scored by the phantom lesion scorer.

    Returns the figures: ``auc``, ``auc_contrast`` (cross negatives), ``auc_real`` (the scorer on the real test
    phantoms), mean lesion scores, times (s), final losses, the vector-norm note, the image size, and ``grids``
    (the first 16 plain images of each embedding, one row each, as arrays; not JSON)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from _report import norm_note
    from medti.data.dataset import Dataset, load_image
    from medti.data.phantoms import PhantomConfig, generate_phantoms, lesion_score
    from medti.diffusion.base import SPECS, ensure_embedded, load_base
    from medti.diffusion.embeddings import load_embedding
    from medti.diffusion.guided import GuidedSampler
    from medti.diffusion.sampling import grid_image, sample_embedding
    from medti.diffusion.templates import TEMPLATES
    from medti.diffusion.textual_inversion import EmbeddingConfig, max_norm_arg, train_embedding

    ensure_embedded("tiny")
    t_all = time.time()
    size = SPECS["tiny"].image_size  # phantoms at the base's size, as textual inversion would otherwise resize them
    fs = first_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_phantoms(
            PhantomConfig(kind="prostate", out=Path(tmp) / "prostate", n=600, seed=seed, size=size, preset=preset)
        ).out
        emb_dir = keep or Path(tmp) / "emb"
        res, scores, grids, secs = {}, {}, [], {}
        for concept, where in (("csPCa", "csPCa=1"), ("healthy", "csPCa=0")):
            t = time.process_time()
            tw = time.time()
            res[concept] = train_embedding(
                EmbeddingConfig(
                    data=data, concept=concept, where=where, base="tiny", vectors=vectors, steps=steps,
                    batch=batch, lr=lr, seed=seed, out=emb_dir / f"{concept}.safetensors", n_samples=0,
                    max_images=100, max_norm=max_norm_arg(max_norm), overwrite=True,  # keep: re-made
                )
            )
            secs[concept] = (time.time() - tw, time.process_time() - t)
            tg = time.time()
            imgs = sample_embedding("tiny", res[concept].path, n, seed=fs, guidance=guidance)
            secs[concept + "_gen"] = time.time() - tg
            scores[concept] = np.array([lesion_score(im) for im in imgs])
            grids.append(grid_image(imgs[:16], cols=16))
        # Each class sampled with the other class's embedding as its negative prompt, as a synthetic-dataset spec
        # would (`medti synth dataset`: per-class `negative`). Reported beside the plain protocol, not instead.
        base = load_base("tiny")
        embs = [load_embedding(res[c].path) for c in ("csPCa", "healthy")]
        sampler = GuidedSampler(base, embs, scheduler="ddim", steps=30, guidance=guidance, batch=16)
        tmpl = TEMPLATES["prostate_mri"][1]  # the template sample_embedding uses
        contrast = {}
        tc = time.time()
        for concept, other in (("csPCa", "healthy"), ("healthy", "csPCa")):
            imgs = sampler.sample(tmpl.format(f"<{concept}>"), n=n, seed=fs, negative=tmpl.format(f"<{other}>"))
            contrast[concept] = np.array([lesion_score(im) for im in imgs])
        secs["contrast_gen"] = time.time() - tc
        real = Dataset(data)
        real_pos = np.array([lesion_score(load_image(c.path)) for c in real.cases(split="test", where={"csPCa": 1})])
        real_neg = np.array([lesion_score(load_image(c.path)) for c in real.cases(split="test", where={"csPCa": 0})])
    y = np.r_[np.ones(n), np.zeros(n)]
    return {
        "seed": seed,
        "first_seed": fs,
        "size": size,
        "auc": float(roc_auc_score(y, np.r_[scores["csPCa"], scores["healthy"]])),
        "auc_contrast": float(roc_auc_score(y, np.r_[contrast["csPCa"], contrast["healthy"]])),
        "auc_real": float(roc_auc_score(np.r_[np.ones(len(real_pos)), np.zeros(len(real_neg))], np.r_[real_pos, real_neg])),
        "mean_score": {"csPCa": float(scores["csPCa"].mean()), "healthy": float(scores["healthy"].mean())},
        "mean_score_contrast": {"csPCa": float(contrast["csPCa"].mean()), "healthy": float(contrast["healthy"].mean())},
        "mean_score_real": {"pos": float(real_pos.mean()), "neg": float(real_neg.mean())},
        "n_real": {"pos": len(real_pos), "neg": len(real_neg)},
        "train_s": {c: {"wall": secs[c][0], "cpu": secs[c][1]} for c in ("csPCa", "healthy")},
        "gen_s": {"csPCa": secs["csPCa_gen"], "healthy": secs["healthy_gen"], "contrast": secs["contrast_gen"]},
        "total_s": time.time() - t_all,
        "final_loss": {c: float(res[c].final_loss) for c in ("csPCa", "healthy")},
        "norms": norm_note(res.values()),
        "negative_template": tmpl,
        "grids": grids,
    }


def _settings(args) -> dict:
    """What makes two logged evaluations of one seed the same evaluation."""
    return {"preset": args.preset, "steps": args.steps, "vectors": args.vectors, "batch": args.batch, "lr": args.lr,
            "n": args.n, "guidance": args.guidance, "max_norm": args.max_norm}


def _flags(args, seed_flags: str) -> str:
    """The command line of a run (flags at their defaults left out, as before)."""
    return (
        f"python experiments/ti_lesion_auc.py{f' --preset {args.preset}' if args.preset != 'default' else ''}"
        f"{seed_flags} --steps {args.steps} --vectors {args.vectors} --batch {args.batch} --n {args.n}"
        f"{f' --lr {args.lr:g}' if args.lr != 0.005 else ''}{f' --guidance {args.guidance:g}' if args.guidance != 7.5 else ''}"
        f"{f' --max-norm {args.max_norm}' if args.max_norm else ''}"
    )


def _line(r: dict) -> str:
    return (
        f"seed {r['seed']}: AUC {r['auc']:.3f}, cross negatives {r['auc_contrast']:.3f}, real {r['auc_real']:.3f}; "
        f"mean lesion score <csPCa> / <healthy> {r['mean_score']['csPCa']:.3f} / {r['mean_score']['healthy']:.3f}; "
        f"final loss {r['final_loss']['csPCa']:.4f} / {r['final_loss']['healthy']:.4f}; "
        f"train {r['train_s']['csPCa']['wall']:.0f} s / {r['train_s']['healthy']['wall']:.0f} s, "
        f"generate {r['gen_s']['csPCa']:.0f} s (plain, per embedding) + {r['gen_s']['contrast']:.0f} s (cross, both), "
        f"total {r['total_s']:.0f} s"
    )


def _read_log(path: Path | None, settings: dict) -> dict[int, dict]:
    """Seed -> the last logged result of that seed under these settings."""
    done: dict[int, dict] = {}
    if path is None or not path.exists():
        return done
    for ln in path.read_text().splitlines():
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if isinstance(rec, dict) and rec.get("settings") == settings and "seed" in rec:
            done[int(rec["seed"])] = rec
    return done


def run_seeds(args, seeds: list[int]) -> None:
    import numpy as np

    from _report import RESULTS, machine, write_section

    settings = _settings(args)
    done = _read_log(args.log, settings)
    mach = machine()
    results = []
    for seed in seeds:
        if seed in done:
            r = done[seed]
            print(f"{_line(r)} (from {args.log})", flush=True)
        else:
            keep = args.keep / f"seed{seed}" if args.keep else None
            r = evaluate(seed, args.preset, args.steps, args.vectors, args.batch, args.lr, args.n, args.guidance,
                         args.max_norm, keep)
            r = {k: v for k, v in r.items() if k != "grids"}
            r["settings"] = settings
            r["machine"] = mach
            if args.log:
                args.log.parent.mkdir(parents=True, exist_ok=True)
                with open(args.log, "a") as f:
                    f.write(json.dumps(r) + "\n")
            print(_line(r), flush=True)
        results.append(r)

    auc = np.array([r["auc"] for r in results])
    con = np.array([r["auc_contrast"] for r in results])

    def ms(a: np.ndarray) -> str:
        return f"{a.mean():.3f} ± {a.std(ddof=1):.3f}" if len(a) > 1 else f"{a.mean():.3f} (one seed: no std)"

    r0 = results[0]
    rows = "\n".join(
        f"| {r['seed']} | {r['auc']:.3f} | {r['auc_contrast']:.3f} | {r['auc_real']:.3f} | "
        f"{r['final_loss']['csPCa']:.4f} / {r['final_loss']['healthy']:.4f} | {r['total_s']:.0f} |"
        for r in results
    )
    machines = sorted({r.get("machine", mach) for r in results})
    on = machines[0] if len(machines) == 1 else "; ".join(machines)
    norms = " / ".join(sorted({r["norms"] for r in results}))
    seed_list = ",".join(str(s) for s in seeds)
    body = f"""## Textual inversion on prostate phantoms over {len(seeds)} seeds, `{args.preset}` preset (tiny base)

`{_flags(args, f' --seeds {seed_list}')}`
on {on}.

Settings: per seed s, 600 prostate phantoms ({r0['size']} px, conspicuity preset `{args.preset}`, seed s); one embedding from
the first 100 `csPCa=1` training cases and one from the first 100 `csPCa=0` training cases (textual inversion seed s);
{args.vectors} vectors, {args.steps} steps at batch {args.batch}, lr {args.lr}, vector norms {norms}, mirrored images, frozen tiny base.
{args.n} images per embedding (30 DDIM steps, guidance {args.guidance}, seeds 10000 + 1000 s ..), each scored by the phantom
reference lesion scorer (pixels only); "cross negatives": each embedding's images sampled with the other embedding as negative
prompt (`{r0['negative_template'].format('<healthy>')}` for `<csPCa>` and vice versa; medti's DDIM sampler). Real AUC: the same
scorer on that seed's real test phantoms (csPCa=1 vs 0), for reference. Time: one seed's whole evaluation, wall.

| seed | AUC `<csPCa>` vs `<healthy>` | AUC, cross negatives | AUC, real test phantoms | final loss `<csPCa>` / `<healthy>` | time (s) |
|---|---|---|---|---|---|
{rows}
| **mean ± std** (ddof=1) | **{ms(auc)}** | **{ms(con)}** | | | |
"""
    print(body)
    if not args.no_write:
        write_section(f"ti-lesion-auc-seeds-{args.preset}", body, doc=RESULTS)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--vectors", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="phantoms, textual inversion and sampling seeds (other values: a fresh evaluation)")
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--keep", type=Path, default=None, help="keep the embeddings in this dir (with --seeds: in seed<N>/ under it)")
    ap.add_argument("--max-norm", default=None,
                    help="cap on each vector's norm ('vocab', a number or 'none'; default: the trainer's)")
    ap.add_argument("--preset", choices=PRESETS, default="default", help="the phantoms' lesion-conspicuity preset")
    ap.add_argument("--seeds", default=None,
                    help="comma-separated seeds (e.g. 23,31,47,59,61): one fresh evaluation each, reported as mean +- std "
                         "in the ti-lesion-auc-seeds-<preset> section (instead of --seed)")
    ap.add_argument("--log", type=Path, default=None,
                    help="with --seeds: append each finished seed's figures to this JSON-lines file; seeds already "
                         "in it under the same settings are not run again")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.seeds is not None:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            ap.error(f"--seeds {args.seeds!r}: comma-separated integers, e.g. 23,31,47,59,61")
        if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
            ap.error(f"--seeds {args.seeds!r}: one or more distinct integers >= 0")
        if args.seed:
            ap.error("--seed and --seeds: give one")
        run_seeds(args, seeds)
        return
    if args.log:
        ap.error("--log goes with --seeds")

    from _report import RESULTS, machine, write_section
    from medti.diffusion.sampling import save_grid

    r = evaluate(args.seed, args.preset, args.steps, args.vectors, args.batch, args.lr, args.n, args.guidance,
                 args.max_norm, args.keep)
    suffix = "" if args.preset == "default" else f"-{args.preset}"  # another preset does not overwrite the default's
    img = f"ti_samples{suffix.replace('-', '_')}.png"
    if not args.no_write:  # --no-write leaves docs/ alone, the figure included
        import numpy as np

        save_grid(np.stack(r["grids"]), ROOT / "docs" / "img" / img, cols=1, scale=2)
    ms, mc, mr = r["mean_score"], r["mean_score_contrast"], r["mean_score_real"]
    tr, gen = r["train_s"], r["gen_s"]
    phantoms = f"{r['size']} px, seed {args.seed}" + (f", conspicuity preset `{args.preset}`" if suffix else "")
    body = f"""## Textual inversion on prostate phantoms: csPCa vs healthy embeddings (tiny base{f', `{args.preset}` preset' if suffix else ''})

`{_flags(args, '')}{f' --seed {args.seed}' if args.seed else ''}`
on {machine()}.

Settings: 600 prostate phantoms ({phantoms}); one embedding from the first 100 `csPCa=1` training cases and one
from the first 100 `csPCa=0` training cases; {args.vectors} vectors, {args.steps} steps at batch {args.batch}, lr {args.lr}, vector norms {r['norms']},
mirrored images, frozen tiny base (fp32 on CPU). {args.n} images per embedding (30 DDIM steps, guidance {args.guidance}, seeds
{r['first_seed']}..), each scored by the phantom reference lesion scorer (pixels only).

| | value |
|---|---|
| **AUC, `<csPCa>` images vs `<healthy>` images (lesion score)** | **{r['auc']:.3f}**{' (target >= 0.85)' if not suffix else ''} |
| AUC with each embedding's images sampled with the other embedding as negative prompt (`{r['negative_template'].format('<healthy>')}` for `<csPCa>` and vice versa; medti's DDIM sampler) | {r['auc_contrast']:.3f} (mean lesion score {mc['csPCa']:.3f} / {mc['healthy']:.3f}) |
| same scorer on real test phantoms (csPCa=1 vs 0), for reference | {r['auc_real']:.3f} |
| mean lesion score: `<csPCa>` / `<healthy>` images | {ms['csPCa']:.3f} / {ms['healthy']:.3f} |
| mean lesion score: real positives / negatives | {mr['pos']:.3f} / {mr['neg']:.3f} |
| training time per embedding (wall / CPU) | {tr['csPCa']['wall']:.0f} s / {tr['csPCa']['cpu']:.0f} s; {tr['healthy']['wall']:.0f} s / {tr['healthy']['cpu']:.0f} s |
| generation time for {args.n} images | {gen['csPCa']:.0f} s |
| final training loss `<csPCa>` / `<healthy>` | {r['final_loss']['csPCa']:.4f} / {r['final_loss']['healthy']:.4f} |

Top row `<csPCa>`, bottom row `<healthy>`:

![textual inversion samples](img/{img})
"""
    print(body)
    if not args.no_write:
        write_section(f"ti-lesion-auc{suffix}", body, doc=RESULTS)


if __name__ == "__main__":
    main()
