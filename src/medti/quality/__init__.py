"""Quality and privacy of synthetic data: is it realistic, diverse, and not a copy of a patient?

What this layer owns, one file a job:

- ``images``        read a dataset dir as an image array (with labels) and refuse sets that cannot be compared
                    (different sizes, channels or modality), naming the dir and the field;
- ``features``      the feature space the figures are computed in: the penultimate layer of the real-data
                    classifier (the default), or a network whose weights the user supplies;
- ``distribution``  Fréchet distance, KID and precision / recall / density / coverage, each beside its
                    real-vs-real baseline, overall and per class;
- ``memorization``  nearest training image of every synthetic image (pixel and feature space), a copy threshold
                    calibrated on held-out real cases, pass / fail, and the closest pairs as a PNG;
- ``reader_study``  a blinded two-alternative forced-choice set, the local web page readers answer it in, and
                    the exact binomial score of their answers.

The steps take a config and return a result, like every medti step; they run without MLflow or Kubeflow.
Heavy imports (torch, transformers, torchmetrics) stay inside functions.
"""

from __future__ import annotations


class QualityError(ValueError):
    """Bad input to a quality step; the message names the file, the field or value, and the rule."""


__all__ = ["QualityError"]
