"""The model registry: embeddings and classifiers as MLflow model versions, and which one is in use.

- :func:`register_embedding`: an embedding (with, optionally, other concepts of the same base that a prompt may
  compose it with) as a version of ``medti-<dataset>-<concept>``, a pyfunc model that serves images
  (:class:`~medti.tracking.serving.EmbeddingModel`);
- :func:`register_classifier`: a classifier in ONNX form as a version of ``medti-<dataset>-<target>-classifier``
  (:class:`~medti.tracking.serving.ClassifierModel`: base64 PNGs in, probabilities out);
- :func:`promote`: the gate. The first version becomes ``champion``; a later one becomes champion only when its
  AUC on the real test split is at least the champion's, and ``challenger`` otherwise, with a tag saying why
  (both figures);
- :func:`list_models` / :func:`show_model`: what the registry holds, as plain data for the CLI's tables.

Each version carries the lineage tags of :mod:`~medti.tracking.lineage`, the evaluation figures it was judged on
(``medti.eval.*``), and the sha256 of every file of its model (``medti.files``). An alias moves only after the
version is READY and its artifacts, downloaded back from the store, match those hashes: a registration killed
half-way leaves at most a version without an alias, never an alias on an incomplete version.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medti.tracking import TrackingError
from medti.tracking.context import RunContext

CHAMPION, CHALLENGER = "champion", "challenger"
FIGURE = "medti.eval.auc"  # the figure the gate compares: mean AUC over the targets, on the real test split
FILES = "medti.files"  # {relative path: sha256} of the model's files, what verification compares
DECISION = "medti.promotion"
MODEL_DIR = "model"  # the run artifact dir a version's model is logged to
#: the guidance an embedded base is served at by default (its working range; SD-size bases: 7.5)
GUIDANCE = {"tiny": 3.0, "micro": 3.0}


@dataclass
class RegisterEmbeddingConfig:
    embedding: Path
    data: Path | None = None  # the dataset it learned from: names the model medti-<dataset>-<concept>
    name: str | None = None  # or the registered model's name, given
    companions: list[Path] = field(default_factory=list)  # other concepts of the same base, served with it
    base: str = "tiny"  # the base reference a server loads (its hash is checked against the embedding's)
    guidance: float | None = None  # default guidance of a request: 3.0 for the embedded bases, else 7.5
    evaluation: Path | None = None  # an evaluation dir (metrics.json) on the real test split
    promote: bool = True  # run the champion/challenger gate after registering
    #: a memorisation audit (medti quality memorization: its dir or audit.json) of a synthetic set made with this
    #: embedding: a failed one refuses the registration, a passing one's verdict and copy rate become tags
    audit: Path | None = None
    #: the real data's version, tagged ``medti.dataset_version``: default the one the embedding recorded when it
    #: was trained; a pipeline passes its source's, since the dir it trained on is a validated copy
    dataset_version: str | None = None


@dataclass
class RegisterClassifierConfig:
    model: Path  # a classifier dir (exported to ONNX here) or its .onnx
    data: Path | None = None  # the real dataset: names the model medti-<dataset>-<target>-classifier
    name: str | None = None
    evaluation: Path | None = None
    promote: bool = True
    #: the real data's version, tagged ``medti.dataset_version`` (what a scheduled run compares): default that of
    #: ``data``; a pipeline passes its source's, since the dir it registers from is a copy
    dataset_version: str | None = None


@dataclass
class RegisterResult:
    name: str
    version: str
    run_id: str
    figures: dict[str, float]
    decision: str = ""
    aliases: list[str] = field(default_factory=list)

    def summary(self) -> str:
        auc = f", test AUC {self.figures['auc']:.4f}" if "auc" in self.figures else ""
        said = f"\n{self.decision}" if self.decision else ""
        return f"registered {self.name} version {self.version}{auc} (run {self.run_id}){said}"


# ----------------------------------------------------------------------------- helpers
def model_name(*parts: str) -> str:
    """``medti-<parts>``, in the characters MLflow and URLs take."""
    return "-".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", p).strip("-") for p in ("medti", *parts) if p)


def _dataset_name(data: Path | None, what: str) -> str:
    from medti.tracking.lineage import dataset_name

    if data is None:
        raise TrackingError(f"{what}: give the dataset it was trained on (data) or the registered model's name")
    if not (Path(data) / "dataset.json").is_file():
        raise TrackingError(f"{data}: not a medti dataset dir (no dataset.json)")
    return dataset_name(Path(data))


def read_figures(evaluation: Path | None) -> dict[str, float]:
    """``{"auc": mean AUC, "<target>.auc": ..., "<target>.sensitivity": ...}`` of an evaluation dir or its
    metrics.json; empty without one."""
    if evaluation is None:
        return {}
    path = Path(evaluation)
    path = path / "metrics.json" if path.is_dir() else path
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        metrics = doc["metrics"]
        figures = {f"{t}.{k}": float(v) for t, m in metrics.items() for k, v in m.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)}
        figures["auc"] = sum(float(m["auc"]) for m in metrics.values()) / len(metrics)
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as e:
        raise TrackingError(f"{path}: not a medti evaluation (metrics.json with an AUC per target): {e}") from e
    return figures


def _file_hashes(root: Path) -> dict[str, str]:
    from medti.io import sha256_file

    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _ensure_model(client, name: str, description: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, description=description)
        except MlflowException:  # registered meanwhile by another process
            client.get_registered_model(name)


def _register(run: RunContext, step: str, cfg: Any, name: str, description: str, save, tags: dict[str, str],
              figures: dict[str, float], promote_after: bool) -> RegisterResult:
    """Log the model ``save(dir)`` writes to a new run, make it a version of ``name``, verify it, and gate it."""
    from medti.tracking.run import end_run, log_metrics, metric_key, start_run

    client = run.client
    run_id = start_run(run, step, cfg, tags={"medti.registered_model": name, **tags})
    try:
        with tempfile.TemporaryDirectory(prefix="medti-register-") as tmp:
            local = save(Path(tmp) / MODEL_DIR)
            files = _file_hashes(local)
            client.log_artifacts(run_id, str(local), MODEL_DIR)
        log_metrics(client, run_id, {metric_key(f"eval.{k}"): v for k, v in figures.items()})
        _ensure_model(client, name, description)
        version_tags = {**tags, FILES: json.dumps(files, sort_keys=True)}
        version_tags.update({f"medti.eval.{k}": f"{v:.6g}" for k, v in figures.items()})
        source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{MODEL_DIR}"
        mv = client.create_model_version(name, source, run_id=run_id, tags=version_tags, description=description)
        res = RegisterResult(name=name, version=str(mv.version), run_id=run_id, figures=figures)
        if promote_after:
            res.decision, res.aliases = promote(run, name, res.version)
    except BaseException as e:
        end_run(client, run_id, e)
        raise
    end_run(client, run_id, None)
    return res


# ----------------------------------------------------------------------------- registering
def register_embedding(cfg: RegisterEmbeddingConfig, run: RunContext) -> RegisterResult:
    """Register ``cfg.embedding`` (and its companions) as a new version of its model."""
    from medti.diffusion.embeddings import load_embedding
    from medti.tracking.lineage import git_commit
    from medti.tracking.serving import save_embedding_model

    emb = load_embedding(Path(cfg.embedding))
    audit_tags = _memorization_gate(cfg.audit, Path(cfg.embedding), emb.version) if cfg.audit is not None else {}
    concept = emb.metadata.get("concept") or emb.concept
    base_hash = emb.metadata.get("base_model_hash", "")
    embeddings, versions = {concept: Path(cfg.embedding)}, {concept: emb.version}
    for p in cfg.companions:
        other = load_embedding(Path(p))
        companion = other.metadata.get("concept") or other.concept
        embeddings[companion], versions[companion] = Path(p), other.version
    name = cfg.name or model_name(_dataset_name(cfg.data, f"embedding {cfg.embedding}"), concept)
    guidance = cfg.guidance if cfg.guidance is not None else GUIDANCE.get(cfg.base, 7.5)
    tags = {
        "medti.kind": "embedding", "medti.concept": concept, "medti.token": emb.token,
        "medti.vectors": str(emb.vectors.shape[0]), "medti.embedding_version": emb.version,
        "medti.base": cfg.base, "medti.base_hash": base_hash,
        "medti.base_model": emb.metadata.get("base_model", ""),
        "medti.dataset_version": cfg.dataset_version or emb.metadata.get("dataset_version", ""),
        "medti.embeddings": ";".join(f"{c}:{v}" for c, v in versions.items()),
        "medti.prompt_template": _template(emb.metadata.get("modality", "")).format(concept),
        "medti.version": emb.metadata.get("medti_version", ""),
    }
    commit = git_commit()
    if commit:
        tags["medti.git_commit"] = commit
    tags = {k: v for k, v in tags.items() if v} | audit_tags
    figures = read_figures(cfg.evaluation)
    description = (f"Textual-inversion embedding of {concept} ({emb.vectors.shape[0]} vectors) for base {cfg.base} "
                   f"({base_hash or 'hash unknown'}); serves PNG images for prompts that use "
                   f"{', '.join(embeddings)}.")
    return _register(
        run, "register_embedding", cfg, name, description,
        lambda d: save_embedding_model(d, embeddings, cfg.base, base_hash, guidance), tags, figures, cfg.promote,
    )


def _memorization_gate(audit_path: Path, embedding: Path, version: str) -> dict[str, str]:
    """Refuse an embedding whose synthetic set failed its memorisation audit (naming the flagged images), or whose
    audit is of a set made with other embeddings; the tags a passing audit puts on the version."""
    from medti.quality import QualityError
    from medti.quality.memorization import read_audit

    try:
        audit = read_audit(Path(audit_path))
    except QualityError as e:
        raise TrackingError(f"embedding {embedding}: not registered: {e}") from e
    if not audit.passed:
        raise TrackingError(
            f"embedding {embedding}: not registered: its synthetic set {audit.synthetic} failed the memorisation "
            f"audit {audit.path} ({len(audit.flagged)} of {audit.n_synthetic} images flagged as copies of training "
            f"cases, copy rate {audit.copy_rate:.4f}): {audit.flagged_summary()}"
        )
    if version not in {e.rsplit(":", 1)[-1] for e in audit.embeddings}:
        made_with = ", ".join(audit.embeddings) or "no embedding named in its manifest"
        raise TrackingError(
            f"embedding {embedding}: not registered: the memorisation audit {audit.path} is of {audit.synthetic}, "
            f"made with {made_with}, not with this embedding (version {version}); audit a set synthesised with it"
        )
    return {"medti.memorization": "pass", "medti.memorization.copy_rate": f"{audit.copy_rate:.6g}",
            "medti.memorization.synthetic": audit.synthetic}


def _template(modality: str) -> str:
    from medti.diffusion.templates import TEMPLATES

    return TEMPLATES.get(modality, TEMPLATES["default"])[1]


def register_classifier(cfg: RegisterClassifierConfig, run: RunContext) -> RegisterResult:
    """Register a classifier (exported to ONNX when given as a dir) as a new version of its model."""
    from medti.classify.onnx import ExportConfig, Predictor, export_onnx
    from medti.io import sha256_file
    from medti.tracking.lineage import dataset_version, git_commit
    from medti.tracking.serving import save_classifier_model

    with tempfile.TemporaryDirectory(prefix="medti-onnx-") as tmp:
        onnx = Path(cfg.model)
        if onnx.is_dir():
            onnx = export_onnx(ExportConfig(model=onnx, out=Path(tmp) / "model.onnx")).out
        predictor = Predictor(onnx)  # refuses a file that is not a medti classifier, naming it
        spec, targets = predictor.image_spec, list(predictor.targets)
        name = cfg.name or model_name(_dataset_name(cfg.data, f"classifier {cfg.model}"), "-".join(targets),
                                      "classifier")
        meta = predictor.meta
        versions = ";".join(f"{t.get('dir')}@{t.get('version')}" for t in meta.get("train", []))
        tags = {"medti.kind": "classifier", "medti.targets": ",".join(targets), "medti.onnx_sha256": sha256_file(onnx),
                "medti.image_size": "x".join(map(str, spec.image_size)), "medti.modality": spec.modality,
                "medti.datasets": versions, "medti.val_auc": f"{meta.get('val_auc', '')}",
                "medti.dataset_version": cfg.dataset_version or (dataset_version(Path(cfg.data)) if cfg.data else ""),
                "medti.version": meta.get("medti_version", "")}
        commit = git_commit()
        if commit:
            tags["medti.git_commit"] = commit
        tags = {k: str(v) for k, v in tags.items() if v}
        description = (f"ResNet-18 for {', '.join(targets)} on {spec.describe()}, ONNX; serves "
                       "probabilities for base64 PNGs.")
        return _register(run, "register_classifier", cfg, name, description,
                         lambda d: save_classifier_model(d, onnx), tags, read_figures(cfg.evaluation), cfg.promote)


# ----------------------------------------------------------------------------- the gate
def _alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def verify_version(run: RunContext, name: str, version: str, timeout: float = 120.0) -> None:
    """Wait for the version to be READY, download its model back and compare every file with the hashes recorded
    at registration; raise :class:`TrackingError` naming what is missing or differs."""
    from mlflow.artifacts import download_artifacts

    client = run.client
    deadline = time.time() + timeout
    while True:
        mv = client.get_model_version(name, version)
        if mv.status == "READY":
            break
        if mv.status == "FAILED_REGISTRATION" or time.time() > deadline:
            raise TrackingError(f"{name} version {version} is {mv.status}: {mv.status_message or 'not ready'}")
        time.sleep(0.5)
    expected = json.loads(mv.tags.get(FILES, "{}"))
    if not expected:
        raise TrackingError(f"{name} version {version} records no file hashes ({FILES}): not registered by medti")
    with tempfile.TemporaryDirectory(prefix="medti-verify-") as tmp:
        try:
            local = Path(download_artifacts(artifact_uri=client.get_model_version_download_uri(name, version),
                                            dst_path=tmp, tracking_uri=run.uri))
        except Exception as e:  # an artifact store that lost the files
            raise TrackingError(f"{name} version {version}: its artifacts cannot be read back: {e}") from e
        got = _file_hashes(local)
    missing = sorted(set(expected) - set(got))
    changed = sorted(k for k in expected if k in got and got[k] != expected[k])
    if missing or changed:
        raise TrackingError(
            f"{name} version {version}: artifacts incomplete (missing: {', '.join(missing) or 'none'}; "
            f"changed: {', '.join(changed) or 'none'}); no alias was moved"
        )


def _figure(mv) -> float | None:
    v = mv.tags.get(FIGURE)
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


def promote(run: RunContext, name: str, version: str) -> tuple[str, list[str]]:
    """The gate: ``version`` becomes champion when there is none, or when its test AUC is at least the champion's;
    challenger otherwise. Returns (the decision in words, the version's aliases)."""
    client = run.client
    verify_version(run, name, version)
    mv = client.get_model_version(name, version)
    mine = _figure(mv)
    champ = _alias(client, name, CHAMPION)
    if champ is not None and str(champ.version) == str(version):
        return f"{name} v{version} is already {CHAMPION}", [CHAMPION]
    theirs = _figure(champ) if champ is not None else None
    if champ is None:
        decision, alias = f"{CHAMPION}: the first version of {name}", CHAMPION
    elif mine is None:
        decision, alias = f"{CHALLENGER}: v{version} has no test AUC to compare with {CHAMPION} v{champ.version}", \
            CHALLENGER
    elif theirs is None or mine >= theirs:
        was = f"{theirs:.4f}" if theirs is not None else "none"
        decision, alias = f"{CHAMPION}: test AUC {mine:.4f} >= {CHAMPION} v{champ.version}'s {was}", CHAMPION
    else:
        decision, alias = (f"{CHALLENGER}: test AUC {mine:.4f} < {CHAMPION} v{champ.version}'s {theirs:.4f}",
                           CHALLENGER)
    client.set_model_version_tag(name, version, DECISION, decision)
    client.set_registered_model_alias(name, alias, version)
    return f"{name} v{version} -> {decision}", [alias]


# ----------------------------------------------------------------------------- reading
def list_models(run: RunContext) -> list[dict[str, Any]]:
    """One dict per registered model: name, kind, latest version, aliases, description."""
    client = run.client
    out = []
    for m in client.search_registered_models(max_results=1000):
        versions = client.search_model_versions(f"name = '{m.name}'")
        latest = max((int(v.version) for v in versions), default=0)
        out.append({"name": m.name, "versions": len(versions), "latest": latest,
                    "aliases": {a: str(v) for a, v in (m.aliases or {}).items()},
                    "kind": next((v.tags.get("medti.kind", "") for v in versions), ""),
                    "description": m.description or ""})
    return sorted(out, key=lambda m: m["name"])


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``NAME``, ``NAME@ALIAS`` or ``NAME/VERSION`` -> (name, alias, version)."""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, alias, None
    m = re.fullmatch(r"(.+)/(\d+)", ref)
    if m:
        return m.group(1), None, m.group(2)
    return ref, None, None


def show_model(run: RunContext, ref: str) -> list[dict[str, Any]]:
    """The versions ``ref`` names (all of a model's, or the one an alias or number picks): version, status,
    aliases, figures, lineage tags, run."""
    from mlflow.exceptions import MlflowException

    client = run.client
    name, alias, version = parse_ref(ref)
    try:
        model = client.get_registered_model(name)
        if alias:
            versions = [client.get_model_version_by_alias(name, alias)]
        elif version:
            versions = [client.get_model_version(name, version)]
        else:
            versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    except MlflowException as e:
        known = ", ".join(m["name"] for m in list_models(run)) or "none"
        raise TrackingError(f"{ref}: no such registered model, alias or version (registered: {known})") from e
    by_version: dict[str, list[str]] = {}
    for a, v in (model.aliases or {}).items():
        by_version.setdefault(str(v), []).append(a)
    return [{
        "name": name, "version": str(v.version), "status": v.status, "aliases": by_version.get(str(v.version), []),
        "figures": {k.removeprefix("medti.eval."): t for k, t in v.tags.items() if k.startswith("medti.eval.")},
        "decision": v.tags.get(DECISION, ""), "run_id": v.run_id,
        "lineage": {k: t for k, t in v.tags.items() if k.startswith("medti.") and not k.startswith("medti.eval.")
                    and k not in (FILES, DECISION)},
    } for v in versions]
