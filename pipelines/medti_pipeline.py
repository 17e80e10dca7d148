"""The medti pipeline: does synthetic data help a classifier for this dataset, and which versions serve?

    check data version ─(changed)─▶ validate ─▶ ParallelFor concepts: train_embedding
        ─▶ synthesize ─▶ audit_memorization
                    ─▶ ParallelFor conditions × seeds: train_classifier ─▶ evaluate
        ─▶ collect ─▶ register (champion / challenger gate; the embedding only with a passed audit) ─▶ finish
    check data version ─(unchanged)─▶ finish (skipped, and why)

Every task logs to MLflow as a child of the one parent run the first step opens. The Kubernetes settings live
here: GPU tasks ask for one GPU and the memory and CPU an SD-2 run needs, training tasks retry with backoff (and
resume from their checkpoints), and caching keys on the dataset's DVC version: Kubeflow caches a task by its input
values and artifact URIs, so the cacheable tasks take that version (and find their MLflow parent run by it), never
the parent run's id, which is new in every pipeline run. A forced rerun on the same data, or one with other
classifier settings, reuses the validated data, the embeddings and the synthetic set. ``make_pipeline(parallelism)`` builds
the same graph with another fan-out limit; ``medti pipeline run`` uses 1 (one CPU-bound task at a time here).

    python -m pipelines.medti_pipeline      # = medti pipeline compile: writes pipelines/medti_pipeline.yaml
"""


from pathlib import Path

from kfp import dsl

from components.audit_memorization import audit_memorization
from components.check_data_version import check_data_version
from components.collect import collect
from components.evaluate import evaluate
from components.finish import finish
from components.register import register
from components.synthesize import synthesize
from components.train_classifier import train_classifier
from components.train_embedding import train_embedding
from components.validate_data import validate_data

YAML = Path(__file__).with_suffix(".yaml")

CONCEPTS = [{"concept": "csPCa", "label": 1}, {"concept": "healthy", "label": 0}]
CONDITIONS = [{"condition": c, "seed": s} for c in ("real", "mixed", "synthetic") for s in (0, 1, 2)]


def _gpu(task: dsl.PipelineTask, memory: str = "32G", cpu: str = "8") -> dsl.PipelineTask:
    """One GPU and what an SD-2 textual inversion / sampling / ResNet run needs beside it."""
    return (task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
            .set_memory_request(memory).set_memory_limit(memory).set_cpu_request(cpu))


def _retried(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """A training task killed or failed half-way runs again and continues from its checkpoints."""
    return task.set_retry(num_retries=2, backoff_duration="10s", backoff_factor=2.0, backoff_max_duration="300s")


def make_pipeline(parallelism: int = 4):
    @dsl.pipeline(name="medti", description="Textual inversion on a medical dataset, synthetic data, and whether it "
                                            "helps a ResNet-18 on the real test split; registers the winners.")
    def medti_pipeline(
        data: str,
        target: str = "csPCa",
        concepts: list = CONCEPTS,
        conditions: list = CONDITIONS,
        base: str = "tiny",
        vectors: int = 16,
        embedding_steps: int = 2000,
        embedding_cases: int = 100,
        synthetic_count: int = 2000,
        sampler_steps: int = 20,
        guidance: float = 3.0,
        classifier_steps: int = 500,
        tracking_uri: str = "",
        experiment_name: str = "medti-pipeline",
        force: bool = False,
    ):
        track = {"tracking_uri": tracking_uri, "experiment_name": experiment_name}
        # Step 1: the parent run; is there anything new to learn from?
        check = check_data_version(data=data, target=target, force=force, **track).set_caching_options(False)
        run = {**track, "dataset_version": check.outputs["dataset_version"]}  # the cache key; the parent run by it
        parent = {**track, "parent_run_id": check.outputs["parent_run_id"]}  # for the uncached tasks
        with dsl.If(check.outputs["changed"] == True, name="new-data"):  # noqa: E712 - a pipeline condition
            # Step 2: the validation gate; its output is the data every later task reads
            val = validate_data(data=data, **run)
            real = val.outputs["dataset"]
            # Step 3: one embedding per concept
            with dsl.ParallelFor(concepts, parallelism=parallelism, name="concepts") as concept:
                emb = _retried(_gpu(train_embedding(
                    data=real, concept=concept.concept, target=target, label=concept.label, base=base,
                    vectors=vectors, steps=embedding_steps, max_images=embedding_cases, **run)))
            # Step 4: the synthetic dataset
            syn = _retried(_gpu(synthesize(data=real, embeddings=dsl.Collected(emb.outputs["embedding"]), target=target, concepts=concepts,
                                           count=synthetic_count, base=base, sampler_steps=sampler_steps,
                                           guidance=guidance, **run)))
            # Step 5: is any synthetic image a copy of a training case? (register refuses the embedding if so)
            aud = audit_memorization(real=real, synthetic=syn.outputs["synthetic"],
                                     embeddings=dsl.Collected(emb.outputs["embedding"]), **run)
            # Step 6: a classifier per condition and seed, judged on the real test split
            with dsl.ParallelFor(conditions, parallelism=parallelism, name="conditions") as cond:
                clf = _retried(_gpu(train_classifier(
                    real=real, synthetic=syn.outputs["synthetic"], target=target, condition=cond.condition,
                    seed=cond.seed, steps=classifier_steps, **run), memory="16G", cpu="4"))
                ev = evaluate(classifier=clf.outputs["classifier"], test=real, seed=cond.seed, **run)
            # Step 7: the table, and the versions worth registering
            col = collect(evaluations=dsl.Collected(ev.outputs["evaluation"]))
            reg = register(real=real, chosen=col.outputs["chosen"], embedding_evidence=col.outputs["embedding_evidence"],
                           embeddings=dsl.Collected(emb.outputs["embedding"]), audit=aud.outputs["audit"], concept=target, dataset_version=check.outputs["dataset_version"],
                           base=base, **parent).set_caching_options(False)
            finish(parent_run_id=check.outputs["parent_run_id"], summary=col.outputs["Output"], registered=reg.output,
                   **track).set_caching_options(False)
        with dsl.Else(name="no-new-data"):
            finish(parent_run_id=check.outputs["parent_run_id"], skipped_reason=check.outputs["reason"],
                   **track).set_caching_options(False)

    return medti_pipeline


medti_pipeline = make_pipeline()


def compile_pipeline(out: Path = YAML) -> Path:
    from kfp import compiler

    compiler.Compiler().compile(medti_pipeline, str(out))
    return out


if __name__ == "__main__":
    print(compile_pipeline())
