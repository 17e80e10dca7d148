"""evaluate: a classifier on the real test split: AUC with its bootstrap interval, ROC curve, per-case CSV.

The output bundles the evaluation (``evaluation/``) with the classifier it judged (``classifier/``), so that the
collect step can hand the chosen one to register without a second list to keep in step."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components import MEDTI_IMAGE


@dsl.component(base_image=MEDTI_IMAGE, install_kfp_package=False)
def evaluate(
    classifier: Input[Model], test: Input[Dataset], evaluation: Output[Artifact], seed: int = 0,
    tracking_uri: str = "", experiment_name: str = "", dataset_version: str = "",
) -> float:
    """Returns the test AUC (mean over targets)."""
    from pathlib import Path

    from medti.classify.evaluate import EvaluateConfig, evaluate_classifier
    from medti.io import link_tree
    from medti.tracking.pipeline import run_step

    bundle = Path(evaluation.path)
    cfg = EvaluateConfig(model=Path(classifier.path), test=Path(test.path), out=bundle / "evaluation", seed=seed,
                         overwrite=True, validate=False)
    name = f"evaluate-{classifier.metadata.get('condition', '')}-s{int(classifier.metadata.get('seed', seed))}"
    res = run_step(evaluate_classifier, cfg, uri=tracking_uri, experiment=experiment_name,
                   dataset_version=dataset_version, name=name)
    link_tree(Path(classifier.path), bundle / "classifier")
    evaluation.metadata.update({**classifier.metadata, "auc": res.auc})
    return res.auc
