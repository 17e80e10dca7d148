"""finish: end the pipeline's MLflow run: with the summary and the registry's decisions, or skipped and why."""

from kfp import dsl

from components import MEDTI_IMAGE


@dsl.component(base_image=MEDTI_IMAGE, install_kfp_package=False)
def finish(parent_run_id: str, summary: dict = {}, registered: dict = {}, skipped_reason: str = "",  # noqa: B006
           tracking_uri: str = "", experiment_name: str = "") -> str:
    from medti.tracking.pipeline import finish as step

    step(parent_run_id, uri=tracking_uri, experiment=experiment_name, skipped_reason=skipped_reason,
         summary={**summary, **registered})
    return skipped_reason or "finished"
