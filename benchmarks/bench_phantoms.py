"""Phantom generation speed: 600 cases at 64 px per kind, against the 30 s target (2 cores).

Times the whole step as the CLI runs it (``generate_phantoms``: render, PNG-encode, hash,
write the dataset dir atomically), 3 repeats, median; and one run at 256 px to show the larger
option stays practical.  Writes the ``phantoms`` section of docs/benchmarks.md.

    python benchmarks/bench_phantoms.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine, write_section  # noqa: E402
from medti.data.phantoms import PhantomConfig, generate_phantoms  # noqa: E402

N = 600
TARGET_S = 30.0
REPEATS = 3


def run(kind: str, size: int, seed: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate_phantoms(PhantomConfig(kind=kind, out=Path(tmp) / "ds", n=N, size=size, seed=seed))
        return time.perf_counter() - t0


def main() -> None:
    rows = []
    for kind in ("prostate", "cxr"):
        times = [run(kind, 64, seed) for seed in range(REPEATS)]
        med = statistics.median(times)
        rows.append(
            f"| {kind} | 64 | {N} | {med:.2f} s ({', '.join(f'{t:.2f}' for t in times)}) | "
            f"{1000 * med / N:.1f} ms | {TARGET_S:.0f} s | {TARGET_S / med:.0f}x under |"
        )
        print(rows[-1], flush=True)
    for kind in ("prostate", "cxr"):
        t = run(kind, 256, 0)
        rows.append(f"| {kind} | 256 | {N} | {t:.2f} s (1 run) | {1000 * t / N:.1f} ms | - | - |")
        print(rows[-1], flush=True)
    body = "\n".join(
        [
            "## Phantom generation",
            "",
            f"`python benchmarks/bench_phantoms.py` on {machine()}.",
            "",
            "Whole `generate_phantoms` step (render, PNG encode, hash, atomic dataset dir), "
            f"median of {REPEATS} seeds at 64 px; single-threaded numpy/scipy.",
            "",
            "| kind | px | cases | wall time (runs) | per case | target | margin |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    write_section("phantoms", body)
    print(body)


if __name__ == "__main__":
    main()
