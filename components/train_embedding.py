"""train_embedding: textual inversion of one concept (one GPU); resumes from its checkpoints when retried."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components import MEDTI_IMAGE


@dsl.component(base_image=MEDTI_IMAGE, install_kfp_package=False)
def train_embedding(
    data: Input[Dataset], embedding: Output[Artifact], concept: str, target: str, label: int,
    base: str = "tiny", vectors: int = 16, steps: int = 2000, lr: float = 0.005, batch: int = 8,
    max_images: int = 100, init_text: str = "mri", seed: int = 0,
    tracking_uri: str = "", experiment_name: str = "", dataset_version: str = "",
) -> float:
    """Learns ``<concept>`` from the train cases with ``target == label``; returns the final loss. The embedding is
    ``<concept>.safetensors`` in the output artifact, its checkpoints beside it (a retry continues from them)."""
    from pathlib import Path

    from medti.diffusion.textual_inversion import EmbeddingConfig
    from medti.diffusion.textual_inversion import train_embedding as step
    from medti.tracking.pipeline import run_step

    out = Path(embedding.path) / f"{concept}.safetensors"
    cfg = EmbeddingConfig(data=Path(data.path), concept=concept, where=f"{target}={label}", base=base,
                          vectors=vectors, steps=steps, lr=lr, batch=batch, max_images=max_images,
                          init_text=init_text, seed=seed, out=out, resume=True, overwrite=True,
                          validate=False)  # its input is validate_data's validated copy
    res = run_step(step, cfg, uri=tracking_uri, experiment=experiment_name, dataset_version=dataset_version,
                   name=f"train_embedding-{concept}")
    embedding.metadata.update({"concept": concept, "final_loss": res.final_loss, "file": out.name})
    return res.final_loss
