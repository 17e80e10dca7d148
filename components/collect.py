"""collect: every (condition, seed)'s test AUC into one table (mean ± std per condition), and the classifier to
register: the one with the best validation AUC (the test split judges it, it does not choose it)."""


from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Output

from components import MEDTI_IMAGE


@dsl.component(base_image=MEDTI_IMAGE, install_kfp_package=False)
def collect(evaluations: Input[list[Artifact]], table: Output[Markdown], chosen: Output[Artifact],
            embedding_evidence: Output[Artifact]) -> dict:
    """``chosen``: the bundle (classifier + evaluation) to register as the classifier; ``embedding_evidence``: the
    best bundle among those trained on synthetic data (empty when no condition used it), the figure an embedding
    version is judged on. Returns the summary (per-condition means, the choices)."""
    from pathlib import Path

    from medti.experiment.conditions import Evaluated, collect_evaluations

    runs = [Evaluated(Path(e.path), str(e.metadata["condition"]), int(e.metadata["seed"]), float(e.metadata["auc"]),
                      float(e.metadata["val_auc"])) for e in evaluations]
    return collect_evaluations(runs, table=Path(table.path), chosen=Path(chosen.path),
                               embedding_evidence=Path(embedding_evidence.path))
