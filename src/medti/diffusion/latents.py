"""VAE latents of a set of images, encoded once: base training and textual inversion both draw every step's
latent sample from this cache instead of re-encoding."""

from __future__ import annotations


def encode_latent_cache(vae, images, *, batch: int = 16, dtype=None, device=None, progress: bool = False):
    """Posterior mean and std of every image, computed once (images: float [N,3,H,W] in [-1,1])."""
    import torch
    from tqdm.auto import tqdm

    means, stds = [], []
    with torch.no_grad():
        for i in tqdm(range(0, len(images), batch), desc="encode latents", disable=not progress, leave=False):
            x = images[i : i + batch].to(device=device, dtype=dtype)
            dist = vae.encode(x).latent_dist
            means.append(dist.mean.float().cpu())
            stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)
