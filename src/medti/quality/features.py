"""The feature space quality figures are computed in.

Inception features (what FID means by default) need weights medti cannot download, and they describe natural
photographs anyway.  medti's default is the penultimate layer (the pooled 512-d output) of the real-data
classifier: a network that has learnt what tells the findings apart in this modality.  A user may supply a
network instead (e.g. RadImageNet ResNet-50 weights converted to a transformers ResNet dir).  Either way the
figures are proxies for realism, read beside their real-vs-real baseline.

:func:`open_features` takes

- a medti classifier dir (``classifier.json``): its ResNet's pooled features, with its normalisation;
- a transformers ResNet dir (``config.json`` + ``model.safetensors``, as ``save_pretrained`` writes): its
  pooled features, with ImageNet normalisation.

Anything else is refused naming the path and what was expected.  Weights are read with safetensors only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medti.quality import QualityError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class FeatureNet:
    """``net(images)`` -> N x D float32 features of N x 3 x H x W uint8 images."""

    name: str  # what the reports call the space, e.g. "classifier penultimate layer (512-d)"
    source: Path
    dim: int
    _forward: Callable  # float tensor N x 3 x H x W in [0, 1] -> N x D tensor
    batch: int = 128

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        if images.ndim != 4 or images.shape[1] != 3:
            raise QualityError(f"features: images must be N x 3 x H x W, got shape {images.shape}")
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch):
                x = torch.from_numpy(np.ascontiguousarray(images[i:i + self.batch])).float() / 255.0
                out.append(self._forward(x).reshape(len(x), -1).float().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)


def _resnet_forward(resnet, mean, std) -> Callable:
    import torch

    m = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
    resnet.eval()

    def forward(x):
        return resnet(pixel_values=(x - m) / s).pooler_output

    return forward


def open_features(path: Path) -> FeatureNet:
    """The feature network at ``path`` (see the module doc for what it may be)."""
    path = Path(path)
    if not path.exists():
        raise QualityError(f"features {path}: no such file or directory")
    if path.is_dir() and (path / "classifier.json").is_file():
        from medti.classify import ClassifierError
        from medti.classify.model import MEAN, STD, load_classifier

        try:
            model, meta = load_classifier(path)
        except (ClassifierError, OSError, ValueError) as e:
            raise QualityError(f"features {path}: cannot load the medti classifier ({e})") from e
        resnet = model.net.resnet
        dim = int(resnet.config.hidden_sizes[-1])
        return FeatureNet(f"classifier penultimate layer ({dim}-d)", path, dim, _resnet_forward(resnet, (MEAN,) * 3, (STD,) * 3))
    if path.is_dir() and (path / "config.json").is_file():
        try:
            cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise QualityError(f"features {path / 'config.json'}: not valid JSON ({e})") from e
        if not isinstance(cfg, dict) or cfg.get("model_type") != "resnet":
            kind = cfg.get("model_type") if isinstance(cfg, dict) else None
            raise QualityError(
                f"features {path / 'config.json'}: model_type is {kind!r}; medti reads a transformers ResNet "
                "(model_type 'resnet') or a medti classifier dir"
            )
        from transformers import ResNetModel

        try:
            resnet = ResNetModel.from_pretrained(path, local_files_only=True, use_safetensors=True)
        except (OSError, ValueError) as e:
            raise QualityError(f"features {path}: cannot load a ResNet with safetensors weights from it ({e})") from e
        dim = int(resnet.config.hidden_sizes[-1])
        return FeatureNet(f"{path.name} pooled features ({dim}-d)", path, dim,
                          _resnet_forward(resnet, IMAGENET_MEAN, IMAGENET_STD))
    raise QualityError(
        f"features {path}: not a network medti can read; give a medti classifier dir (classifier.json) or a "
        "transformers ResNet dir (config.json + model.safetensors)"
    )
