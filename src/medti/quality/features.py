"""The feature space quality figures are computed in.

Inception features (what FID means by default) need weights medti cannot download, and they describe natural
photographs anyway.  medti's default is the penultimate layer (the pooled 512-d output) of the real-data
classifier: a network that has learnt what tells the findings apart in this modality.  A user may supply a
network instead (e.g. RadImageNet ResNet-50 weights converted to a transformers ResNet dir).  Either way the
figures are proxies for realism, read beside their real-vs-real baseline.

:func:`open_features` takes

- a medti classifier dir (``classifier.json``): its ResNet's pooled features, with its normalisation;
- a transformers ResNet dir (``config.json`` + ``model.safetensors``, as ``save_pretrained`` writes): its
  pooled features, with ImageNet normalisation;
- a single ``.safetensors`` file holding a transformers ``ResNetModel`` state dict (or a
  ``ResNetForImageClassification`` one, whose ``resnet.`` prefix is dropped and head ignored): the config is read
  off the tensor names and shapes (:func:`resnet_config_from_shapes`), ImageNet normalisation.  What weights cannot
  show, the strides, follows transformers' defaults (``downsample_in_bottleneck=False``: the stride in the 3x3 conv,
  torchvision's v1.5 layout); a network laid out otherwise is given as a transformers dir with its config.json.

Anything else is refused naming the path and what was expected.  Weights are read with safetensors only; a
pickle (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) is refused without being opened.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
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
    #: what the network says about the images it was made for (a medti classifier's classifier.json: modality,
    #: channels, image_size); empty when it does not say
    expects: dict = field(default_factory=dict)
    #: how the network was read (e.g. the ResNet config inferred from a .safetensors file), for reports
    info: dict = field(default_factory=dict)

    def check_images(self, modality: str, channels: tuple[str, ...], size: tuple[int, int], *, where: Path) -> None:
        """Refuse images of another kind than the network was trained on (naming the network's file and field)."""
        have = {"modality": modality, "channels": list(channels), "image_size": list(size)}
        for key, want in self.expects.items():
            if key in have and want is not None and have[key] != want:
                raise QualityError(
                    f"features {self.source}: the network was trained on {key} {want} (classifier.json) but the "
                    f"dataset {where} has {key} {have[key]} (dataset.json); give a network made for these images"
                )

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
        expects = {k: meta.get(k) for k in ("modality", "channels", "image_size") if meta.get(k) is not None}
        return FeatureNet(f"classifier penultimate layer ({dim}-d)", path, dim,
                          _resnet_forward(resnet, (MEAN,) * 3, (STD,) * 3), expects=expects)
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
    if path.is_file() and path.suffix.lower() == ".safetensors":
        return _open_safetensors_resnet(path)
    if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
        raise QualityError(
            f"features {path}: a {path.suffix} file is a pickle, which medti never opens (unpickling runs code); "
            "convert the weights to a .safetensors ResNetModel state dict or a transformers ResNet dir"
        )
    raise QualityError(
        f"features {path}: not a network medti can read; give a medti classifier dir (classifier.json), a "
        "transformers ResNet dir (config.json + model.safetensors) or a .safetensors file holding a transformers "
        "ResNetModel state dict"
    )


PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
_STEM = "embedder.embedder.convolution.weight"
_LAYER_CONV = re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.weight$")


def resnet_config_from_shapes(shapes: dict[str, tuple[int, ...]], *, where: Path) -> dict:
    """The transformers ``ResNetConfig`` fields a ``ResNetModel`` state dict implies, from its tensor names and
    shapes: input channels and stem width from the 7x7 stem conv; per stage, its depth (layers) and width (the
    last conv's output channels); basic blocks (two convs a layer) or bottlenecks (three)."""
    stem = shapes.get(_STEM)
    if stem is None or len(stem) != 4:
        raise QualityError(
            f"features {where}: holds no transformers ResNetModel weights (no 4-d tensor {_STEM!r}); expected the "
            "state dict of a transformers ResNetModel (e.g. RadImageNet ResNet-50 converted to transformers naming)"
        )
    convs: dict[int, dict[int, dict[int, tuple[int, ...]]]] = {}
    for name, shape in shapes.items():
        m = _LAYER_CONV.match(name)
        if m:
            stage, layer, conv = (int(g) for g in m.groups())
            convs.setdefault(stage, {}).setdefault(layer, {})[conv] = shape
    if not convs or sorted(convs) != list(range(len(convs))):
        raise QualityError(
            f"features {where}: the ResNet stages are missing or not numbered 0..n-1 (tensors "
            "'encoder.stages.<i>.layers.<j>.layer.<k>.convolution.weight'); not a transformers ResNetModel state dict"
        )
    depths, hidden, kinds = [], [], set()
    for stage in range(len(convs)):
        layers = convs[stage]
        if sorted(layers) != list(range(len(layers))):
            raise QualityError(f"features {where}: stage {stage} has layers {sorted(layers)}; expected 0..n-1")
        per_layer = {len(c) for c in layers.values()}
        if per_layer - {2, 3} or len(per_layer) != 1:
            raise QualityError(
                f"features {where}: stage {stage} has layers of {sorted(per_layer)} convolutions; a ResNet layer has "
                "2 (basic block) or 3 (bottleneck)"
            )
        kinds |= per_layer
        depths.append(len(layers))
        first = layers[0]
        hidden.append(int(first[max(first)][0]))
    if len(kinds) != 1:
        raise QualityError(f"features {where}: mixes basic and bottleneck layers across stages; not a ResNetModel")
    layer_type = "basic" if kinds == {2} else "bottleneck"
    embedding = int(stem[0])
    # A basic first stage as wide as the stem has a shortcut only when it downsamples; the bottleneck's first
    # layer always has one (it widens), so there the weights cannot tell and transformers' default stands.
    first_shortcut = "encoder.stages.0.layers.0.shortcut.convolution.weight" in shapes
    downsample_first = layer_type == "basic" and embedding == hidden[0] and first_shortcut
    return {"num_channels": int(stem[1]), "embedding_size": embedding, "hidden_sizes": hidden, "depths": depths,
            "layer_type": layer_type, "downsample_in_first_stage": downsample_first}


def _open_safetensors_resnet(path: Path) -> FeatureNet:
    """A ResNetModel built from the config its weights imply, the weights loaded strictly (every tensor used,
    none missing), so a file of other tensors is refused rather than run half-initialised."""
    import torch
    from safetensors import SafetensorError, safe_open
    from transformers import ResNetConfig, ResNetModel

    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
            shapes = {n: tuple(f.get_slice(n).get_shape()) for n in names}
            # a ResNetForImageClassification state dict: the backbone under "resnet.", a head beside it
            prefix = "resnet." if _STEM not in shapes and f"resnet.{_STEM}" in shapes else ""
            keep = [n for n in names if n.startswith(prefix)]
            config = resnet_config_from_shapes({n[len(prefix):]: shapes[n] for n in keep}, where=path)
            state = {n[len(prefix):]: f.get_tensor(n) for n in keep}
    except (SafetensorError, OSError) as e:
        raise QualityError(f"features {path}: not a readable safetensors file ({e})") from e
    resnet = ResNetModel(ResNetConfig(**config))
    try:
        loaded = resnet.load_state_dict(
            {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}, strict=False)
    except RuntimeError as e:  # a tensor of the wrong shape
        raise QualityError(
            f"features {path}: its tensors do not fit the ResNet their names imply ({config}): "
            f"{' '.join(str(e).split())[:400]}"
        ) from e
    # batch-norm step counters are bookkeeping that converters often drop; every weight must be there
    missing = [k for k in loaded.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or loaded.unexpected_keys:
        raise QualityError(
            f"features {path}: not a whole transformers ResNetModel state dict for {config}: "
            f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}, "
            f"unexpected {loaded.unexpected_keys[:3]}{' ...' if len(loaded.unexpected_keys) > 3 else ''}"
        )
    dim = int(config["hidden_sizes"][-1])
    return FeatureNet(f"{path.stem} pooled features ({dim}-d)", path, dim,
                      _resnet_forward(resnet, IMAGENET_MEAN, IMAGENET_STD), info={"resnet_config": config})
