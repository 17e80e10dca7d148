"""The step each plan task names: build the library step's config from the task's JSON, call it, return plain
figures. Nothing here re-implements a step; both executors (the local runner, the Kubeflow pipeline) call these.

Every function takes (task config, experiment dir, report) and returns a JSON-able dict; paths in the config are
relative to the experiment dir (or absolute: a user's dataset dir). ``report`` is the training steps' curve
callback (:data:`medti.Report`), passed on to them and unused by the others.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from medti import Report


def _p(root: Path, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else root / p


def phantom(c: dict[str, Any], root: Path, report: Report | None = None) -> dict[str, Any]:
    from medti.data.phantoms import PhantomConfig, generate_phantoms

    res = generate_phantoms(PhantomConfig(
        kind=c["kind"], out=_p(root, c["out"]), n=c["n"], size=c["size"], seed=c["seed"], preset=c["preset"],
        split_fractions=tuple(c["split_fractions"]), overwrite=True,
    ))
    return {"cases": res.n, **res.counts}


def validate(c: dict[str, Any], root: Path, report: Report | None = None) -> dict[str, Any]:
    from medti.data.dataset import DatasetError
    from medti.data.validate import ValidateConfig, validate_dataset

    res = validate_dataset(ValidateConfig(dataset=_p(root, c["dataset"]), report=_p(root, c["report"])))
    if not res.ok:
        raise DatasetError(res.summary())
    return {"cases": res.n_rows, "rules": len(res.rules)}


def subset(c: dict[str, Any], root: Path, report: Report | None = None) -> dict[str, Any]:
    from medti.data.subset import SubsetConfig, subset_dataset

    res = subset_dataset(SubsetConfig(data=_p(root, c["data"]), out=_p(root, c["out"]), n=c["n"], split=c["split"],
                                      seed=c["seed"], overwrite=True))
    return {"cases": res.n, "positives": res.positives}


def train_embedding(c: dict[str, Any], root: Path, report: Report | None = None) -> dict[str, Any]:
    from medti.diffusion.textual_inversion import EmbeddingConfig
    from medti.diffusion.textual_inversion import train_embedding as step

    keys = ("concept", "where", "base", "vectors", "init_text", "steps", "lr", "batch", "max_images", "seed")
    res = step(EmbeddingConfig(
        data=_p(root, c["data"]), out=_p(root, c["out"]), resume=True, overwrite=True,
        min_per_class=1, **{k: c[k] for k in keys},
    ), report=report)
    return {"final_loss": res.final_loss, "images": res.n_images, "seconds": res.seconds}


def class_spec(c: dict[str, Any], root: Path) -> Path:
    """Write the synthetic-dataset spec of a two-class set beside ``c["out"]``: half the images of each class, the
    finding's concept (``concepts[0]``) labelled 1 and the other 0, each sampled with the other as negative prompt
    when ``c["negatives"]``. Returns its path."""
    import yaml

    from medti.data.dataset import read_info
    from medti.diffusion.templates import TEMPLATES
    from medti.io import atomic_write_text

    out = _p(root, c["out"])
    info = read_info(_p(root, c["data"]))  # the real cases the embeddings learned from: modality, channels
    template = TEMPLATES.get(info.modality, TEMPLATES["default"])[1]
    target, positive, negative = c["target"], *c["concepts"]
    n_pos = c["count"] // 2
    classes = []
    for name, concept, other, count, label in ((positive, positive, negative, n_pos, 1),
                                                (negative, negative, positive, c["count"] - n_pos, 0)):
        cls = {"name": name, "prompt": template.format(concept), "count": count, "labels": {target: label}}
        if c["negatives"]:
            cls["negative"] = template.format(other)
        classes.append(cls)
    spec = {
        "base": c["base"], "embeddings": [str(_p(root, e).resolve()) for e in c["embeddings"]], "seed": c["seed"],
        "split": "train", "name": f"synthetic-{out.name}", "modality": info.modality, "channels": info.channels,
        "findings": [target], "sampler": c["sampler"], "classes": classes,
    }
    spec_path = out.with_name(out.name + ".spec.yaml")
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(spec_path, yaml.safe_dump(spec, sort_keys=False))
    return spec_path


def synthesize(c: dict[str, Any], root: Path, report: Report | None = None) -> dict[str, Any]:
    """A synthetic-dataset spec (:func:`class_spec`), then the step."""
    from medti.diffusion.synthesis import SynthesisConfig
    from medti.diffusion.synthesis import synthesize as step

    res = step(SynthesisConfig(spec=class_spec(c, root), out=_p(root, c["out"]), overwrite=True, progress=False))
    return {"images": res.n, "images_per_s": res.images_per_s, "seconds": res.seconds}


def train_classifier(c: dict[str, Any], root: Path, report: Report | None = None) -> dict[str, Any]:
    from medti.classify.train import ClassifierConfig
    from medti.classify.train import train_classifier as step

    keys = ("targets", "seed", "steps", "batch", "lr", "eval_every")
    res = step(ClassifierConfig(
        train=[_p(root, d) for d in c["train"]], val=_p(root, c["val"]), out=_p(root, c["out"]),
        validate=False, overwrite=True, progress=False, **{k: c[k] for k in keys},
    ), report=report)
    return {"val_auc": res.val_auc, "best_step": res.best_step, "train_images": res.n_train, "seconds": res.seconds}


def evaluate(c: dict[str, Any], root: Path, report: Report | None = None) -> dict[str, Any]:
    from medti.classify.evaluate import EvaluateConfig, evaluate_classifier

    res = evaluate_classifier(EvaluateConfig(model=_p(root, c["model"]), test=_p(root, c["test"]),
                                             out=_p(root, c["out"]), seed=c["seed"], overwrite=True, validate=False))
    return {"auc": res.auc, "metrics": res.metrics}


def summary(c: dict[str, Any], root: Path, report: Report | None = None) -> dict[str, Any]:
    from medti.experiment.summary import write_summary

    return write_summary(root)


STEP_FUNCTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "phantom": phantom,
    "validate": validate,
    "subset": subset,
    "train_embedding": train_embedding,
    "synthesize": synthesize,
    "train_classifier": train_classifier,
    "evaluate": evaluate,
    "summary": summary,
}
