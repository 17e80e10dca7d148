"""register: the chosen classifier and the finding's embedding as MLflow model versions, through the
champion/challenger gate (a version becomes champion only when its real-test AUC is at least the champion's), the
embedding only when its synthetic set passed the memorisation audit."""


from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input

from components import MEDTI_IMAGE


@dsl.component(base_image=MEDTI_IMAGE, install_kfp_package=False)
def register(
    real: Input[Dataset], chosen: Input[Artifact], embedding_evidence: Input[Artifact],
    embeddings: Input[list[Artifact]], audit: Input[Artifact], concept: str, dataset_version: str,
    base: str = "tiny", tracking_uri: str = "", experiment_name: str = "", parent_run_id: str = "",
) -> dict:
    """Returns the registered versions and the gate's decisions (an embedding whose synthetic set failed the
    memorisation ``audit`` is refused, naming the flagged images; the classifier is registered all the same)."""
    from pathlib import Path

    from medti.tracking.pipeline import register as step

    files = [Path(e.path) / e.metadata["file"] for e in embeddings]
    return step(data=Path(real.path), chosen=Path(chosen.path), embeddings=files, concept=concept,
                embedding_evidence=Path(embedding_evidence.path), dataset_version=dataset_version, base=base,
                audit=Path(audit.path), uri=tracking_uri, experiment=experiment_name, parent_run_id=parent_run_id)
