"""The sampler options a user sets, in a module that imports nothing heavy: the command line takes its
defaults from here and still starts at once."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass
class SamplerSettings:
    """How every synth step samples (the :class:`~medti.diffusion.guided.GuidedSampler` options a user sets):
    one set of fields for ``synth generate``, ``interpolate``, ``inpaint`` and a dataset spec's ``sampler:``."""

    scheduler: str = "dpmpp"
    steps: int = 30
    guidance: float = 7.5
    guidance_rescale: float = 0.0  # Lin et al.'s phi (diffusers' guidance_rescale); 0 = off
    guidance_interval: tuple[float, float] = (0.0, 1.0)  # fractions of the steps that are guided
    guidance_threshold: float = 0.0  # SEGA's edit threshold per guidance term; 0 = off (every term everywhere)
    batch: int = 8
    max_rows: int = 64

    def sampler_kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(SamplerSettings)}
