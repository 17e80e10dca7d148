"""Shared helpers for benchmarks: machine description and section-wise writing of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
RESULTS = DOC.with_name("results.md")
HEADERS = {
    "benchmarks.md": "# Benchmarks\n\nEach section is written by the benchmark named in it, side by side against its baseline in one run.\n",
    "results.md": "# Results\n\nEach section is measured on generated data with fixed seeds by the script named in it.\n",
}


def machine() -> str:
    """One line describing the machine the benchmark ran on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    dev = "no GPU"
    if torch.cuda.is_available():
        dev = f"GPU {torch.cuda.get_device_name(0)}"
    return (
        f"{cpu}, {len(os.sched_getaffinity(0))} cores usable{mem}, {dev}; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def norm_note(embeddings) -> str:
    """How the learned vectors' norms were held, from the embeddings' metadata (``max_norm``: "none" or the
    resolved cap), for an experiment's settings line: "uncapped" or "capped at X (`--max-norm`)"."""
    caps = {e.metadata["max_norm"] for e in embeddings}
    return "uncapped" if caps == {"none"} else "capped at " + " / ".join(sorted(caps)) + " (`--max-norm`)"


def write_section(name: str, body: str, doc: Path = DOC) -> None:
    """Replace (or append) the section between ``<!-- bench:name -->`` markers."""
    doc.parent.mkdir(parents=True, exist_ok=True)
    text = doc.read_text() if doc.exists() else HEADERS.get(doc.name, f"# {doc.stem}\n")
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pat = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pat.sub(lambda _m: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(doc)


def interleave(sides: dict, rounds: int, per_round: int, unit: str, label: str) -> dict[str, list[float]]:
    """Rates (``per_round`` / seconds) of every side per round; the first side alternates between rounds."""
    names = list(sides)
    rates: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            rates[name].append(per_round / sides[name]())
            print(f"{label} round {r + 1}: {name:12s} {rates[name][-1]:8.1f} {unit}", flush=True)
    return rates


def check_positive(ap, args, names) -> None:
    """``ap.error`` naming the first of ``names`` (argparse dests) that is given and below 1."""
    for name in names:
        v = getattr(args, name)
        if v is not None and v < 1:
            ap.error(f"--{name.replace('_', '-')}={v} must be >= 1")


def command_line(ap, args, script: str, always: tuple[str, ...] = ()) -> str:
    """``python benchmarks/SCRIPT`` with the options that differ from the parser's defaults (and ``always``), as a
    reader reruns it; ``--no-write`` is left out (it changes where the figures go, not what they are)."""
    parts = [f"python benchmarks/{script}"]
    for action in ap._actions:
        if not action.option_strings or action.dest in ("help", "no_write"):
            continue
        value = getattr(args, action.dest)
        if action.dest in always or value != action.default:
            parts.append(f"{action.option_strings[0]} {value}")
    return " ".join(parts)

