"""Training augmentation on tensors, batched with kornia (the reference work's heavy set).

The reference work trained its ResNet-18 with albumentations on each image in a DataLoader worker: horizontal
flip, Gaussian noise, gamma, shift-scale-rotate, brightness/contrast, optical distortion and channel dropout.
Here the same kinds of transform run on the whole batch at once; optical distortion is a thin-plate-spline
warp (kornia has no lens model; both bend the image smoothly). Flips are used only where the anatomy is
left-right symmetric (as in textual inversion): a mirrored chest radiograph puts the heart on the wrong side.

Randomness comes from a seed per step, inside a forked RNG, so a run is the same whether or not it was
resumed, and the global RNG is left as it was.
"""

from __future__ import annotations


def build_augment(modality: str):
    """A kornia pipeline for batches of [0, 1] images (N x 3 x H x W)."""
    import kornia.augmentation as K

    from medti.data.dataset import FLIP_OK

    ops = [K.RandomHorizontalFlip(p=0.5)] if modality in FLIP_OK else []
    ops += [
        K.RandomAffine(degrees=10.0, translate=(0.0625, 0.0625), scale=(0.9, 1.1), p=0.5),  # shift-scale-rotate
        K.RandomThinPlateSpline(scale=0.05, p=0.3),  # optical / grid distortion
        K.ColorJiggle(brightness=0.15, contrast=0.15, p=0.5),
        K.RandomGamma(gamma=(0.8, 1.25), p=0.5),
        K.RandomGaussianNoise(mean=0.0, std=0.03, p=0.5),
        K.RandomChannelDropout(num_drop_channels=1, fill_value=0.0, p=0.1),
    ]
    return K.AugmentationSequential(*ops, data_keys=["input"])


def augment_batch(aug, images, seed: int):
    """Apply ``aug`` to ``images`` with randomness from ``seed`` only; clamp to [0, 1]."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = aug(images)
    return out.clamp_(0.0, 1.0)
