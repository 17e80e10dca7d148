"""check_data_version: open the pipeline's MLflow run; go on only when the dataset's DVC version is not the one
the current champion classifier was trained on (or when forced)."""

from typing import NamedTuple

from kfp import dsl

from components import MEDTI_IMAGE


@dsl.component(base_image=MEDTI_IMAGE, install_kfp_package=False)
def check_data_version(
    data: str, target: str, tracking_uri: str = "", experiment_name: str = "", force: bool = False,
) -> NamedTuple("Outputs", [("parent_run_id", str), ("dataset_version", str), ("changed", bool), ("reason", str)]):
    """data: the real dataset dir (on the data volume); target: the finding the classifier is registered for."""
    from pathlib import Path

    from medti.tracking.pipeline import begin, classifier_model

    b = begin(Path(data), classifier_model(Path(data), target), uri=tracking_uri, experiment=experiment_name,
              params={"data": data, "target": target, "force": force}, force=force)
    print(b.reason)
    return (b.parent_run_id, b.dataset_version, b.changed, b.reason)
