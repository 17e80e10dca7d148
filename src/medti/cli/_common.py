"""What every command group shares: one place that turns a step's errors into a message and an exit code,
and the option aliases that several commands declare alike.

Only the standard library, typer and light medti modules are imported here: every command module imports
this one, and ``medti --help`` loads them all.
"""

from __future__ import annotations

import dataclasses
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from medti.diffusion.sampler_settings import SamplerSettings

INTERRUPTED = "interrupted; nothing half-written was left (outputs are renamed into place only when complete)"


def fail(msg: str, code: int = 1) -> NoReturn:
    """Print ``error: MSG`` on stderr and exit with ``code``."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run(fn, cfg, interrupted: str = INTERRUPTED):
    """Call a library step; turn a user-facing error into a clean message and exit code, and Ctrl-C
    into one line saying what was kept and how to continue (exit code 130, as shells report SIGINT)."""
    # these modules import nothing heavy at their top level
    from medti.classify import ClassifierError
    from medti.diffusion.base import BaseModelError
    from medti.diffusion.embeddings import EmbeddingError
    from medti.diffusion.textual_inversion import TrainingError
    from medti.experiment import ExperimentError
    from medti.io import OutputError  # DatasetError and SynthesisError are OutputErrors too
    from medti.quality import QualityError

    user_errors = (OutputError, BaseModelError, EmbeddingError, TrainingError, ClassifierError, ExperimentError, QualityError,
                   FileNotFoundError, FileExistsError)
    tracking = _tracking() if dataclasses.is_dataclass(cfg) else None
    try:
        if tracking is None:
            return fn(cfg)
        return _tracked(fn, cfg, tracking)
    except user_errors as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail(interrupted, code=130)


#: what the root command's options say about tracking (set by the app's callback on every invocation)
TRACKING_OPTIONS: ContextVar[dict[str, str | None] | None] = ContextVar("medti_tracking_options", default=None)


def _tracking(default: str | None = None):
    """The MLflow run context the command line configures (``--tracking-uri`` or the environment); with neither,
    the one ``default`` names, or None (tracking off)."""
    obj = TRACKING_OPTIONS.get() or {}
    uri = obj.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or default
    if not uri:
        return None
    from medti.tracking.context import RunContext

    return RunContext.from_env(uri, obj.get("experiment"), obj.get("parent_run_id"))


def registry_context():
    """The run context registry commands use: the configured tracking store, or the local one."""
    from medti.tracking.context import LOCAL

    return _tracking(default=LOCAL)


def fail_if_mlflow_error(e: Exception, uri: str) -> None:
    """Exit with one line naming the store when ``e`` is MLflow's (or its HTTP or database client's) own error;
    return otherwise, for the caller to re-raise."""
    if type(e).__module__.startswith(("mlflow", "requests", "urllib3", "sqlalchemy")):
        first = str(e).splitlines()[0] if str(e) else ""
        fail(f"MLflow at {uri}: {type(e).__name__}: {first}")


def _tracked(fn, cfg, tracking):
    """``fn(cfg)`` as a tracked MLflow run; says on stderr where the run is. A tracking store that cannot be
    reached fails before the step starts, naming the URI."""
    from medti.tracking import TrackingError
    from medti.tracking.run import tracked

    try:
        out = tracked(fn, cfg, run=tracking)
    except TrackingError as e:
        fail(str(e))
    except Exception as e:  # noqa: BLE001 - only MLflow's own errors reach here unwrapped
        fail_if_mlflow_error(e, tracking.uri)
        raise
    typer.echo(f"mlflow run {out.run_id} (experiment {tracking.experiment!r} at {tracking.uri})", err=True)
    return out.result


# ----------------------------------------------------------------------------- option aliases
# Options several commands declare alike, typed once.  The default goes in the signature
# (``force: ForceDataset = False``); where a library dataclass has one, it is taken from there.

#: --force of a step that writes a dataset dir
ForceDataset = Annotated[
    bool, typer.Option("--force", help="Replace an existing dataset dir at --out (never a dir of anything else).")
]
#: --out of a step that writes a dataset dir
OutDataset = Annotated[Path, typer.Option("--out", help="Output dataset dir.")]
#: --seed where the command's help says nothing more about it
Seed = Annotated[int, typer.Option("--seed")]
#: --base of a step that loads a base model (default "tiny")
Base = Annotated[str, typer.Option("--base", help="tiny | diffusers dir | .ckpt/.safetensors | hub id.")]

# sampler options (synth generate / interpolate / inpaint); defaults are SamplerSettings'
SAMPLER_DEFAULTS = SamplerSettings()
Scheduler = Annotated[str, typer.Option("--scheduler", help="ddim | euler | euler_a | dpmpp.")]
Steps = Annotated[int, typer.Option("--steps")]
Guidance = Annotated[float, typer.Option("--guidance")]
GuidanceRescale = Annotated[
    float,
    typer.Option(
        "--guidance-rescale", min=0.0, max=1.0,
        help="Guidance rescale phi (Lin et al. 2023; diffusers' guidance_rescale): pulls the guided prediction's "
        "spread back to the unguided one's, against over-exposure at high guidance or many AND terms; 0.7 is the "
        "paper's choice for v-prediction models, 0 = off.",
    ),
]
#: a START,STOP string (parsed by the command): the default is SamplerSettings' interval written that way
GuidanceInterval = Annotated[
    str,
    typer.Option(
        "--guidance-interval",
        help="START,STOP: apply --guidance only on that fraction of the denoising steps and guidance 1 elsewhere "
        "(Kynkaenniemi et al. 2024; diffusers' guiders' start/stop). Skipping the first, noisiest steps (e.g. 0.3,1) "
        "tames the haze and colour casts of strong guidance; 0,1 = every step.",
    ),
]
GUIDANCE_INTERVAL = ",".join(f"{x:g}" for x in SAMPLER_DEFAULTS.guidance_interval)
GuidanceThreshold = Annotated[
    float,
    typer.Option(
        "--guidance-threshold",
        help="Q in [0, 1): apply each sub-prompt's guidance term only where it is among the strongest (1-Q) of the "
        "latent positions, per image and channel (SEGA's edit threshold, Brack et al. 2023; 0.9 is theirs). Keeps an "
        "over-guided concept from spreading over the whole image at high --guidance, and weakens guidance overall; "
        "0 = off.",
    ),
]
