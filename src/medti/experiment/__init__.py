"""Experiments: does synthetic data help a diagnostic classifier? One plan, two executors.

- ``config``   the experiment config (real data, base, embedding / synthesis / classifier settings, rows x seeds),
               read from YAML with unknown keys refused, and the named presets (``quick``, ``full``);
- ``plan``     ``make_plan(config) -> Plan``: every task (row x seed and the data, embeddings and synthetic sets
               they need) with its step, its config and the tasks it needs; pure, JSON round-trip. The
               Kubeflow pipeline fans out the same plan;
- ``steps``    the step each task names, as a call of the existing library step (phantoms, validation, subset,
               textual inversion, synthetic dataset, classifier training and evaluation); none re-implemented;
- ``runner``   ``run_plan(RunConfig) -> RunResult``: the local executor, one process, task by task; a task whose
               inputs are unchanged is reused, a killed experiment continues where it stopped;
- ``summary``  ``summarise(...)``: table (mean +- std per row, per-seed values, the fraction of the real-data gap
               closed), the figure with the reference work's values beside it, ROC curves, sample grids.
"""

from __future__ import annotations


class ExperimentError(ValueError):
    """A bad experiment config or plan; the message names the key and the value."""


__all__ = ["ExperimentError"]
