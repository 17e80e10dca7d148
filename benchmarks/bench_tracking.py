"""What MLflow costs: textual inversion tracked vs untracked, and images through ``mlflow models serve`` vs the
sampler called directly.

Side by side in one run, on the embedded tiny base and prostate phantoms:

- training: :func:`medti.diffusion.textual_inversion.train_embedding` alone vs the same config through
  :func:`medti.tracking.run.tracked` against a real ``mlflow server`` on 127.0.0.1 (sqlite backend, local
  artifacts): params, lineage tags, dataset input, the loss streamed every 25 steps, the embedding and its sample
  grid uploaded. The whole step is timed, base loading and the sample grid included, as a user waits for it;
- serving: a registered-model dir of that embedding served by ``mlflow models serve --env-manager local``, one
  request of ``--n`` images per round (JSON in, base64 PNGs out, over HTTP), vs
  :class:`~medti.diffusion.guided.GuidedSampler` ``sample_many`` on the same prompt, seeds, settings and batch in
  this process. Both sides use ``--threads`` torch threads.

Rounds of the two sides are interleaved (which goes first alternates); best and median are reported.

    python benchmarks/bench_tracking.py                                   # defaults: 3 rounds
    python benchmarks/bench_tracking.py --rounds 1 --steps 30 --n 2 --no-write   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # servers.py: the test suite's way to run mlflow on 127.0.0.1

TRACKING_TARGET = 0.03  # tracking may cost at most this share of the step's time
SERVING_TARGET = 0.9  # served images/s at least this fraction of the sampler's
PROMPT = "axial prostate mri, csPCa"


def train_config(data: Path, out: Path, steps: int):
    from medti.diffusion.textual_inversion import EmbeddingConfig

    return EmbeddingConfig(data=data, concept="csPCa", where="csPCa=1", base="tiny", vectors=16, steps=steps, batch=8,
                           out=out, overwrite=True, restart=True, progress=False, checkpoint_every=0)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def post(url: str, body: dict) -> list[dict]:
    req = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())["predictions"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300, help="textual-inversion steps per round (batch 8)")
    ap.add_argument("--n", type=int, default=8, help="images per serving round (one request)")
    ap.add_argument("--sample-steps", type=int, default=20, help="sampler steps of each served image")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads, both sides (the model server's too); default: torch's default")
    ap.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    args = ap.parse_args()
    from _report import check_positive

    check_positive(ap, args, ("rounds", "steps", "n", "sample_steps", "threads"))

    import mlflow
    import torch

    from _report import command_line, interleave, machine, write_section
    from medti._quiet import quiet_libraries
    from medti.data.phantoms import PhantomConfig, generate_phantoms
    from medti.diffusion.base import load_base
    from medti.diffusion.embeddings import load_embedding
    from medti.diffusion.sampler_settings import SamplerSettings
    from medti.diffusion.synthesis import load_sampler
    from medti.diffusion.textual_inversion import train_embedding
    from medti.tracking.context import RunContext
    from medti.tracking.run import tracked
    from medti.tracking.serving import save_embedding_model
    from servers import model_server, tracking_server

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the model server inherits it
    load_base("tiny", progress=True)  # built once (about 20 min on a fresh machine), outside every timed round
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = generate_phantoms(PhantomConfig(kind="prostate", out=tmp / "data", n=200, size=64)).out
        with tracking_server(tmp / "mlflow") as uri:
            # 1. Textual inversion, untracked vs tracked
            ctx = RunContext(uri, experiment="bench-tracking")
            counter = iter(range(10**6))

            def plain():
                train_embedding(train_config(data, tmp / f"plain-{next(counter)}.safetensors", args.steps))

            def with_tracking():
                tracked(train_embedding, train_config(data, tmp / f"tracked-{next(counter)}.safetensors", args.steps),
                        run=ctx)

            train_embedding(train_config(data, tmp / "warm-up.safetensors", 2))  # imports, base read, kernels
            secs = interleave({"untracked": lambda: timed(plain), "tracked": lambda: timed(with_tracking)},
                              args.rounds, 1, "runs/s", "train")
            secs = {k: [1 / v for v in vals] for k, vals in secs.items()}  # seconds per run
            runs = mlflow.MlflowClient(uri).search_runs([ctx.experiment_id])
            points = len(mlflow.MlflowClient(uri).get_metric_history(runs[0].info.run_id, "loss"))

        # 2. Serving: mlflow models serve vs the sampler in this process
        emb_path = sorted(tmp.glob("tracked-*.safetensors"))[-1]
        emb = load_embedding(emb_path)
        model = save_embedding_model(tmp / "model", {"csPCa": emb_path}, "tiny", emb.metadata["base_model_hash"], 3.0)
        settings = SamplerSettings(steps=args.sample_steps, guidance=3.0)
        sampler, _ = load_sampler("tiny", [emb_path], settings)
        resolved = sampler.resolve(PROMPT)
        rounds = iter(range(10**6))
        with model_server(str(model), tmp / "serve.log") as url:
            body = {"inputs": {"prompt": [PROMPT]}, "params": {"n": args.n, "steps": args.sample_steps, "guidance": 3.0}}
            post(url, {**body, "params": {**body["params"], "n": 1, "steps": 2}})  # warm-up: first request, kernels
            sampler.sample_many([(resolved, 0)])

            def served():
                seed = 1000 * next(rounds)
                assert len(post(url, {**body, "params": {**body["params"], "seed": seed}})) == args.n

            def direct():
                seed = 1000 * next(rounds)
                sampler.sample_many([(resolved, seed + i) for i in range(args.n)])

            rates = interleave({"served": lambda: timed(served), "direct": lambda: timed(direct)},
                               args.rounds, args.n, "images/s", "serve")
    load_end = os.getloadavg()[0]

    # 3. Report
    best = {k: min(v) for k, v in secs.items()}
    med = {k: statistics.median(v) for k, v in secs.items()}
    cost, cost_med = best["tracked"] / best["untracked"] - 1, med["tracked"] / med["untracked"] - 1
    rbest = {k: max(v) for k, v in rates.items()}
    rmed = {k: statistics.median(v) for k, v in rates.items()}
    sx, sx_med = rbest["served"] / rbest["direct"], rmed["served"] / rmed["direct"]
    cmd = command_line(ap, args, "bench_tracking.py")

    def met(ok: bool) -> str:
        return "met" if ok else "missed"

    body = f"""## MLflow: tracking overhead and serving throughput

`{cmd}` on {machine()}, mlflow {mlflow.__version__}; torch {threads} thread(s) on both sides (`OMP_NUM_THREADS` for the
model server). 1-minute load average {load_start:.2f} at the start, {load_end:.2f} at the end (this benchmark accounts
for {threads}; more means other jobs shared the cores). Best of {args.rounds} interleaved rounds, median beside it.

Training: textual inversion on the tiny base, 200 prostate phantoms at 64 px, 16 vectors, batch 8, {args.steps} steps,
the 8-image sample grid at the end; the whole step timed (base load included). Tracked = the same config through
`medti.tracking.run.tracked` against a real `mlflow server` on 127.0.0.1 (sqlite, local artifacts): params, lineage
tags, the dataset input, the loss streamed ({points} points per run), embedding and sample grid uploaded.

Serving: one request of {args.n} images of `{PROMPT}` ({args.sample_steps} dpmpp steps, guidance 3) per round to
`mlflow models serve --env-manager local` (JSON in, base64 PNGs out, over HTTP on 127.0.0.1) vs `GuidedSampler.sample_many`
on the same prompt, seeds, settings and batch in this process.

| measure | side | best | median |
|---|---|---|---|
| textual inversion, s per run | untracked | {best["untracked"]:.1f} | {med["untracked"]:.1f} |
| textual inversion, s per run | tracked | {best["tracked"]:.1f} | {med["tracked"]:.1f} |
| images/s | sampler, direct | {rbest["direct"]:.2f} | {rmed["direct"]:.2f} |
| images/s | `mlflow models serve` | {rbest["served"]:.2f} | {rmed["served"]:.2f} |

Tracking costs **{100 * cost:+.1f} %** of the step's time (median {100 * cost_med:+.1f} %; target <= {100 * TRACKING_TARGET:g} %:
{met(cost <= TRACKING_TARGET)}). Served / direct images/s: **{sx:.2f}x** (median {sx_med:.2f}x; target >= {SERVING_TARGET:g}x:
{met(sx >= SERVING_TARGET)}).
"""
    print(body)
    if not args.no_write:
        write_section("mlflow-tracking-serving", body)


if __name__ == "__main__":
    main()
