"""audit_memorization: is any synthetic image a copy of a training case? The synthetic set's memorisation audit
against the real cases its embeddings learnt from, calibrated on the real val + test cases they never saw."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components import MEDTI_IMAGE


@dsl.component(base_image=MEDTI_IMAGE, install_kfp_package=False)
def audit_memorization(
    real: Input[Dataset], synthetic: Input[Dataset], embeddings: Input[list[Artifact]], audit: Output[Artifact],
    tracking_uri: str = "", experiment_name: str = "", dataset_version: str = "",
) -> bool:
    """Returns whether the audit passed. A failed audit does not fail the pipeline: the classifiers are still
    trained and judged, and register refuses the embedding, naming the flagged images."""
    from pathlib import Path

    from medti.quality.memorization import MemorizationConfig
    from medti.quality.memorization import audit_memorization as step
    from medti.tracking.pipeline import run_step

    files = tuple(Path(e.path) / e.metadata["file"] for e in embeddings)
    cfg = MemorizationConfig(train=Path(real.path), synthetic=Path(synthetic.path), out=Path(audit.path),
                             embeddings=files, overwrite=True)
    res = run_step(step, cfg, uri=tracking_uri, experiment=experiment_name, dataset_version=dataset_version,
                   name="audit_memorization")
    audit.metadata.update({"passed": res.passed, "copy_rate": res.copy_rate, "flagged": res.flagged})
    return res.passed
