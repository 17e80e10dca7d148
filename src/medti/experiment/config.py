"""The augmentation experiment's config: what real data, which base, how embeddings, synthetic sets and
classifiers are made, and the rows (real cases, synthetic cases, embedding cases) each run over N seeds.

Written as YAML (every key optional except where noted; unknown keys are refused, naming the key)::

    name: augment-prostate
    target: csPCa                      # the finding classified (required with data.dir)
    seeds: 5                           # or a list [0, 1, 2]; the classifier's seeds
    data:
      phantom: {kind: prostate, preset: subtle, size: 64, seed: 0}   # generated real data ...
      dir: null                        # ... or a dataset dir with train / val / test splits
      val: 200                         # validation and test cases (drawn from those splits)
      test: 200
    base: tiny
    embeddings: {cases: 100, from_real: 200, vectors: 64, steps: 6000, lr: 0.005, batch: 8, init_text: mri, seed: 0}
    synthesis: {scheduler: dpmpp, steps: 30, guidance: 3.0, batch: 8, seed: 0, negatives: true}
    classifier: {steps: 600, batch: 32, lr: 0.001, eval_every: 50}
    rows:
      - {name: real-200, real: 200, synthetic: 0, reference: [0.780, 0.017]}
      - {name: real-200+syn-2000, real: 200, synthetic: 2000}
      - {name: syn-2000-10case, real: 0, synthetic: 2000, embedding_cases: 10}

``embeddings.cases`` is how many cases of each class (target present / absent) an embedding learns from,
taken from the ``from_real`` real training cases; a row may ask for other ``embedding_cases``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from medti._config import refuse_unknown
from medti.experiment import ExperimentError


@dataclass(frozen=True)
class PhantomData:
    kind: str = "prostate"
    preset: str = "subtle"
    size: int = 64
    seed: int = 0


@dataclass(frozen=True)
class DataSpec:
    phantom: PhantomData | None = field(default_factory=PhantomData)
    dir: str | None = None
    val: int = 200
    test: int = 200


@dataclass(frozen=True)
class EmbeddingSpec:
    cases: int = 100
    from_real: int = 200
    vectors: int = 64
    steps: int = 6000
    lr: float = 0.005
    batch: int = 8
    init_text: str = "mri"
    seed: int = 0


@dataclass(frozen=True)
class SynthesisSpec:
    scheduler: str = "dpmpp"
    steps: int = 30
    guidance: float = 3.0  # the embedded tiny base's working range (DESIGN); 7.5 for SD-size bases
    batch: int = 8
    seed: int = 0
    negatives: bool = True  # each class's negative prompt names the other class's concept


@dataclass(frozen=True)
class ClassifierSpec:
    steps: int = 600
    batch: int = 32
    lr: float = 1e-3
    eval_every: int = 50


@dataclass(frozen=True)
class Row:
    name: str
    real: int
    synthetic: int = 0
    embedding_cases: int | None = None  # default: embeddings.cases
    reference: tuple[float, float] | None = None  # the reference work's AUC mean, std for this row

    def describe(self) -> str:
        return f"{self.real} real + {self.synthetic} synthetic"


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "augment"
    target: str = "csPCa"
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    data: DataSpec = field(default_factory=DataSpec)
    base: str = "tiny"
    embeddings: EmbeddingSpec = field(default_factory=EmbeddingSpec)
    synthesis: SynthesisSpec = field(default_factory=SynthesisSpec)
    classifier: ClassifierSpec = field(default_factory=ClassifierSpec)
    rows: tuple[Row, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        d["rows"] = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in r.items() if v is not None}
                     for r in d["rows"]]
        return d

    def embedding_cases(self, row: Row) -> int:
        return row.embedding_cases if row.embedding_cases is not None else self.embeddings.cases


#: The reference work's headline table (PI-CAI prostate MRI, ResNet-18, 200/200/200, AUC mean, std).
REFERENCE_ROWS = (
    Row("real-200", 200, 0, reference=(0.780, 0.017)),
    Row("real-200+syn-2000", 200, 2000, reference=(0.803, 0.009)),
    Row("syn-2000", 0, 2000, reference=(0.766, 0.020)),
    Row("syn-2000-10case", 0, 2000, embedding_cases=10, reference=(0.562, 0.036)),
    Row("oracle-real-2000", 2000, 0),
)

#: ``full``: the reference's settings scaled to the embedded tiny base and this machine (200/200/200 real, 2000
#: synthetic, embeddings from 100 cases with 64 vectors, 5 seeds; 2000 embedding steps rather than the 6000 an
#: SD-size base takes, 20 sampler steps and 500 classifier steps, which the quick preset showed enough for the
#: tiny base and 64 px), about 2 h on 2 CPU cores. ``quick``: the same table in a fraction of the time: 600
#: synthetic images, 16-vector embeddings, 2 seeds.
PRESETS: dict[str, ExperimentConfig] = {
    "full": ExperimentConfig(
        name="augment-full",
        embeddings=EmbeddingSpec(vectors=64, steps=2000),
        synthesis=SynthesisSpec(steps=20),
        classifier=ClassifierSpec(steps=500, eval_every=50),
        rows=REFERENCE_ROWS,
    ),
    "quick": ExperimentConfig(
        name="augment-quick",
        seeds=(0, 1),
        embeddings=EmbeddingSpec(vectors=16, steps=800),
        synthesis=SynthesisSpec(steps=20),
        # 250 steps left 200 real subtle cases at validation AUC 0.61; 500-600 reach 0.79-0.80 (docs/results.md)
        classifier=ClassifierSpec(steps=500, eval_every=50),
        rows=(
            Row("real-200", 200, 0, reference=(0.780, 0.017)),
            Row("real-200+syn-600", 200, 600),
            Row("syn-600", 0, 600),
            Row("syn-600-10case", 0, 600, embedding_cases=10),
            Row("oracle-real-2000", 2000, 0),
        ),
    ),
}


# ----------------------------------------------------------------------------- reading
def _unknown(where: str, d: dict, cls) -> None:
    refuse_unknown(where, d, (f.name for f in fields(cls)), ExperimentError)


def _section(where: str, d: Any, cls, base):
    """``base`` with the keys of mapping ``d`` replaced, each checked against the field's type."""
    if d is None:
        return base
    if not isinstance(d, dict):
        raise ExperimentError(f"{where}: must be a mapping of {', '.join(f.name for f in fields(cls))}")
    _unknown(where, d, cls)
    out = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        v, want = d[f.name], getattr(base, f.name)
        if isinstance(want, bool):
            ok = isinstance(v, bool)
        elif isinstance(want, int):
            ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
        elif isinstance(want, float):
            ok = isinstance(v, int | float) and not isinstance(v, bool)
            v = float(v) if ok else v
        elif isinstance(want, str):
            ok = isinstance(v, str) and v.strip() != ""
        else:
            ok = True
        if not ok:
            raise ExperimentError(f"{where}.{f.name}: {v!r} is not a valid {type(want).__name__}")
        out[f.name] = v
    return replace(base, **out)


def config_from_dict(d: dict[str, Any], where: str = "experiment config",
                     base: ExperimentConfig | None = None) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from a mapping (YAML), over ``base`` (a preset) or the defaults."""
    base = base or ExperimentConfig(rows=REFERENCE_ROWS)
    if not isinstance(d, dict):
        raise ExperimentError(f"{where}: must be a mapping (name, target, seeds, data, base, embeddings, ...)")
    _unknown(where, d, ExperimentConfig)
    top = {k: d[k] for k in ("name", "target", "base") if k in d}
    for k, v in top.items():
        if not isinstance(v, str) or not v.strip():
            raise ExperimentError(f"{where}.{k}: must be a non-empty string, got {v!r}")
    cfg = replace(base, **top)
    if "seeds" in d:
        s = d["seeds"]
        if isinstance(s, int) and not isinstance(s, bool) and s >= 1:
            seeds = tuple(range(s))
        elif isinstance(s, list) and s and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in s):
            seeds = tuple(s)
        else:
            raise ExperimentError(f"{where}.seeds: give a count >= 1 or a list of seeds, got {s!r}")
        if len(set(seeds)) != len(seeds):
            raise ExperimentError(f"{where}.seeds: {s!r} repeats a seed")
        cfg = replace(cfg, seeds=seeds)
    if "data" in d:
        dd = d["data"]
        if not isinstance(dd, dict):
            raise ExperimentError(f"{where}.data: must be a mapping (phantom or dir, val, test)")
        _unknown(f"{where}.data", dd, DataSpec)
        data = _section(f"{where}.data", {k: v for k, v in dd.items() if k not in ("phantom", "dir")}, DataSpec,
                        cfg.data)
        if dd.get("dir") is not None:
            if not isinstance(dd["dir"], str):
                raise ExperimentError(f"{where}.data.dir: must be a path, got {dd['dir']!r}")
            data = replace(data, dir=dd["dir"], phantom=None)
        elif "phantom" in dd:
            data = replace(data, phantom=_section(f"{where}.data.phantom", dd["phantom"], PhantomData, PhantomData()),
                           dir=None)
        cfg = replace(cfg, data=data)
    for key, cls in (("embeddings", EmbeddingSpec), ("synthesis", SynthesisSpec), ("classifier", ClassifierSpec)):
        if key in d:
            cfg = replace(cfg, **{key: _section(f"{where}.{key}", d[key], cls, getattr(cfg, key))})
    if "rows" in d:
        cfg = replace(cfg, rows=_rows(f"{where}.rows", d["rows"]))
    check_config(cfg, where)
    return cfg


def _rows(where: str, raw: Any) -> tuple[Row, ...]:
    if not isinstance(raw, list) or not raw:
        raise ExperimentError(f"{where}: must be a non-empty list of {{name, real, synthetic}}")
    rows = []
    for i, r in enumerate(raw):
        w = f"{where}[{i}]"
        if not isinstance(r, dict):
            raise ExperimentError(f"{w}: must be a mapping with name, real, synthetic")
        _unknown(w, r, Row)
        for k in ("name", "real"):
            if k not in r:
                raise ExperimentError(f"{w}: missing required key {k!r}")
        for k in ("real", "synthetic", "embedding_cases"):
            v = r.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ExperimentError(f"{w}.{k}: must be a whole number >= 0, got {v!r}")
        ref = r.get("reference")
        if ref is not None and not (isinstance(ref, list) and len(ref) == 2
                                    and all(isinstance(x, int | float) for x in ref)):
            raise ExperimentError(f"{w}.reference: give [mean, std] of the reference AUC, got {ref!r}")
        if not isinstance(r["name"], str) or not r["name"].replace("-", "").replace("+", "").replace("_", "").isalnum():
            raise ExperimentError(f"{w}.name: {r['name']!r} must be letters, digits, '-', '+' or '_' (it names dirs)")
        rows.append(Row(r["name"], r["real"], r.get("synthetic", 0), r.get("embedding_cases"),
                        tuple(float(x) for x in ref) if ref else None))
    return tuple(rows)


def check_config(cfg: ExperimentConfig, where: str = "experiment config") -> None:
    names = [r.name for r in cfg.rows]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ExperimentError(f"{where}.rows: name(s) {dup} given more than once")
    if not cfg.rows:
        raise ExperimentError(f"{where}.rows: no rows")
    for r in cfg.rows:
        if r.real + r.synthetic == 0:
            raise ExperimentError(f"{where}.rows ({r.name}): trains on nothing (real 0, synthetic 0)")
        if r.synthetic and cfg.embedding_cases(r) < 1:
            raise ExperimentError(f"{where}.rows ({r.name}): embedding_cases must be >= 1")
    e = cfg.embeddings
    if any(r.synthetic for r in cfg.rows):
        too_many = [r.name for r in cfg.rows if r.synthetic and cfg.embedding_cases(r) > e.from_real]
        if too_many:
            raise ExperimentError(
                f"{where}.rows ({', '.join(too_many)}): embeddings learn from at most embeddings.from_real = "
                f"{e.from_real} real training cases")
    if cfg.data.phantom is None and cfg.data.dir is None:
        raise ExperimentError(f"{where}.data: give phantom settings or a dataset dir")
    for k in ("val", "test"):
        if getattr(cfg.data, k) < 2:
            raise ExperimentError(f"{where}.data.{k}: needs at least 2 cases (one per class)")
    if not cfg.seeds:
        raise ExperimentError(f"{where}.seeds: no seeds")


def load_config(path: Path, base: ExperimentConfig | None = None) -> ExperimentConfig:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"experiment config {path}: file not found")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ExperimentError(f"experiment config {path}: not valid YAML ({e})") from e
    cfg = config_from_dict(d or {}, where=f"experiment config {path}", base=base)
    if cfg.data.dir is not None and not Path(cfg.data.dir).is_absolute():
        cfg = replace(cfg, data=replace(cfg.data, dir=str((path.parent / cfg.data.dir).resolve())))
    return cfg


def preset(name: str) -> ExperimentConfig:
    if name not in PRESETS:
        raise ExperimentError(f"experiment preset {name!r} is not one of {', '.join(PRESETS)}")
    return PRESETS[name]
