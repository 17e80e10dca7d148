"""The classifier model and the classifier dir it is saved as.

A ResNet-18 from transformers (``ResNetConfig`` with basic blocks 64-512, as torchvision's resnet18) with one
logit per target, random init or the user's local pretrained weights. :class:`ProbabilityModel` wraps it so
that it takes images in [0, 1] (N x 3 x H x W float) and gives one probability per target: normalisation and
sigmoid are part of the model, so torch, ONNX and a served model all take the same input.

A classifier dir::

    config.json, model.safetensors   the ResNet (transformers' save_pretrained: safetensors, no pickle)
    classifier.json                  targets, image spec, normalisation, validation threshold and AUC, lineage
    curves.csv                       step, training loss, validation AUC
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medti.classify import ClassifierError

CLASSIFIER_JSON = "classifier.json"
KIND = "medti-classifier"
#: Images are scaled to [0, 1], then normalised with these (the same for every channel: the channels are
#: MRI sequences or a grey radiograph, not natural-image RGB).
MEAN, STD = 0.5, 0.25


def resnet18_config(num_labels: int):
    from transformers import ResNetConfig

    return ResNetConfig(
        num_channels=3, embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
        layer_type="basic", hidden_act="relu", downsample_in_first_stage=False, num_labels=num_labels,
    )


def build_resnet(num_labels: int, pretrained: Path | None = None):
    """A ResNet-18 with ``num_labels`` outputs: random init, or a local transformers ResNet dir's weights
    (its head replaced)."""
    from transformers import ResNetForImageClassification

    if pretrained is None:
        return ResNetForImageClassification(resnet18_config(num_labels))
    p = Path(pretrained)
    if not (p / "config.json").is_file():
        raise ClassifierError(
            f"pretrained {p}: not a transformers model dir (no config.json); give a dir saved with save_pretrained, "
            "e.g. a downloaded microsoft/resnet-18"
        )
    try:
        return ResNetForImageClassification.from_pretrained(
            p, num_labels=num_labels, ignore_mismatched_sizes=True, local_files_only=True, use_safetensors=True,
        )
    except (OSError, ValueError) as e:
        raise ClassifierError(f"pretrained {p}: cannot load a ResNet with safetensors weights from it ({e})") from e


def probability_model(resnet):
    """Wrap a transformers ResNet: [0, 1] images in, probabilities out."""
    import torch

    class ProbabilityModel(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.logits(images))

        def logits(self, images: torch.Tensor) -> torch.Tensor:
            return self.net(pixel_values=(images - MEAN) / STD).logits

    return ProbabilityModel(resnet)


def read_meta(model_dir: Path) -> dict[str, Any]:
    """``classifier.json`` of a classifier dir, checked to be one."""
    p = Path(model_dir) / CLASSIFIER_JSON
    if not p.is_file():
        raise ClassifierError(f"{model_dir}: not a medti classifier dir (no {CLASSIFIER_JSON})")
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClassifierError(f"{p}: not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise ClassifierError(f"{p}: not a medti classifier (kind {meta.get('kind') if isinstance(meta, dict) else None!r})")
    return meta


def load_classifier(model_dir: Path):
    """(probability model in eval mode, classifier.json) of a classifier dir."""
    from transformers import ResNetForImageClassification

    meta = read_meta(model_dir)
    net = ResNetForImageClassification.from_pretrained(model_dir, local_files_only=True, use_safetensors=True)
    return probability_model(net).eval(), meta
