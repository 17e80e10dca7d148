"""validate_data: the medti validation gate (schema, files, Great Expectations); the validated dataset becomes the
artifact every later step reads, with the validation report (Data Docs) beside it."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Output

from components import MEDTI_IMAGE


@dsl.component(base_image=MEDTI_IMAGE, install_kfp_package=False)
def validate_data(
    data: str, dataset: Output[Dataset], report: Output[Artifact], dataset_version: str = "",
    tracking_uri: str = "", experiment_name: str = "",
) -> int:
    """Returns the number of cases; fails (naming the rule and the rows) when the dataset does not validate.
    ``dataset_version`` (the DVC md5 the first step read) is what caching keys on: Kubeflow caches a task by its
    inputs, and a path string stays the same when the data behind it changes."""
    from pathlib import Path

    from medti.data.publish import PublishConfig, publish_validated
    from medti.tracking.pipeline import run_step

    res = run_step(publish_validated, PublishConfig(data=Path(data), out=Path(dataset.path),
                                                    report=Path(report.path)),
                   uri=tracking_uri, experiment=experiment_name, dataset_version=dataset_version, name="validate_data")
    dataset.metadata.update({"cases": res.cases, "dataset_version": dataset_version or res.dataset_version})
    return res.cases
