"""train_classifier: a ResNet-18 on real, synthetic or mixed training data (one GPU); resumes when retried."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import MEDTI_IMAGE


@dsl.component(base_image=MEDTI_IMAGE, install_kfp_package=False)
def train_classifier(
    real: Input[Dataset], synthetic: Input[Dataset], classifier: Output[Model], target: str, condition: str,
    seed: int = 0, steps: int = 500, batch: int = 32, lr: float = 0.001, eval_every: int = 50,
    tracking_uri: str = "", experiment_name: str = "", dataset_version: str = "",
) -> float:
    """``condition``: real | synthetic | mixed (which train splits it learns from); the real dataset's val split
    picks the checkpoint. Returns the validation AUC."""
    from pathlib import Path

    from medti.classify.train import ClassifierConfig
    from medti.classify.train import train_classifier as step
    from medti.experiment.conditions import condition_dirs
    from medti.tracking.pipeline import run_step

    cfg = ClassifierConfig(train=condition_dirs(condition, Path(real.path), Path(synthetic.path)),
                           val=Path(real.path), targets=[target], out=Path(classifier.path), seed=seed, steps=steps,
                           batch=batch, lr=lr, eval_every=eval_every, validate=False, overwrite=True, progress=False)
    res = run_step(step, cfg, uri=tracking_uri, experiment=experiment_name, dataset_version=dataset_version,
                   name=f"train_classifier-{condition}-s{seed}")
    classifier.metadata.update({"condition": condition, "seed": seed, "val_auc": res.val_auc})
    return res.val_auc
