"""synthesize: a labelled synthetic dataset from the concepts' embeddings (one GPU); resumes when retried."""


from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components import MEDTI_IMAGE


@dsl.component(base_image=MEDTI_IMAGE, install_kfp_package=False)
def synthesize(
    data: Input[Dataset], embeddings: Input[list[Artifact]], synthetic: Output[Dataset], target: str,
    concepts: list, count: int = 2000, base: str = "tiny", negatives: bool = True, scheduler: str = "dpmpp",
    sampler_steps: int = 20, guidance: float = 3.0, batch: int = 8, seed: int = 0,
    tracking_uri: str = "", experiment_name: str = "", dataset_version: str = "",
) -> int:
    """``count`` images, half of the finding's concept (``concepts[0]``, labelled ``target`` = 1) and half of the
    other (``target`` = 0), each sampled with the other concept as negative prompt when ``negatives``."""
    from pathlib import Path

    from medti.diffusion.synthesis import SynthesisConfig
    from medti.diffusion.synthesis import synthesize as step
    from medti.experiment.steps import class_spec
    from medti.tracking.pipeline import run_step

    names = [c["concept"] for c in concepts]
    files = {Path(e.path) / e.metadata["file"]: e.metadata["concept"] for e in embeddings}
    out = Path(synthetic.path)
    spec = class_spec({
        "data": data.path, "out": str(out), "target": target, "concepts": names, "count": count, "base": base,
        "embeddings": sorted(str(f) for f in files), "negatives": negatives, "seed": seed,
        "sampler": {"scheduler": scheduler, "steps": sampler_steps, "guidance": guidance, "batch": batch},
    }, out.parent)
    res = run_step(step, SynthesisConfig(spec=spec, out=out, overwrite=True, progress=False), uri=tracking_uri,
                   experiment=experiment_name, dataset_version=dataset_version, name="synthesize")
    synthetic.metadata.update({"images": res.n})
    return res.n
