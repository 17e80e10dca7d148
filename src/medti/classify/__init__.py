"""Diagnostic classifier: does synthetic data help a model that reads real images?

What this layer owns, one file a job:

- ``data``      load the cases of one or more dataset dirs (real and synthetic mixed) as tensors, after the
                same validation gate as every step, and refuse mixes that cannot be trained together;
- ``model``     a ResNet-18 from transformers (random init, or the user's local pretrained weights) wrapped so
                that it takes images in [0, 1] and gives probabilities; the classifier dir format;
- ``augment``   the reference work's heavy augmentation, batched on tensors with kornia (train only);
- ``train``     ``train_classifier(ClassifierConfig) -> ClassifierResult``: best-validation-AUC checkpoint,
                resumable, byte-reproducible on CPU;
- ``metrics``   AUC with a stratified bootstrap interval, the validation-chosen threshold, sensitivity and
                specificity (scikit-learn);
- ``evaluate``  ``evaluate_classifier(EvaluateConfig) -> EvaluateResult``: metrics.json, ROC PNG, predictions CSV;
- ``onnx``      export to ONNX and predict through onnxruntime (the form that is registered and served).

Heavy imports (torch, transformers, kornia, onnxruntime) stay inside functions.
"""

from __future__ import annotations


class ClassifierError(ValueError):
    """Bad input to a classifier step; the message names the file, the value and the rule."""


__all__ = ["ClassifierError"]
