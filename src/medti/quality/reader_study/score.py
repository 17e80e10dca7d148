"""``score_study(ScoreConfig) -> ScoreResult``: how often readers preferred set A, and whether that differs from
chance.

Per reader and pooled: the number of answered pairs in which the reader chose A's image, the preference k / n,
its exact (Clopper-Pearson) 95 % interval, and the two-sided exact binomial test against 0.5
(``scipy.stats.binomtest``). Unanswered pairs are counted and listed, never guessed. The pooled figures add
every reader's answers up as if independent; readers saw the same pairs, so the per-reader figures are the ones
to trust when readers disagree. Written to one dir, atomically::

    report.json   the figures, the study and the two sets they belong to, and per pair how many readers chose A
    report.md     the same as a table, for a person
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medti.quality import QualityError
from medti.quality.reader_study.files import read_answers, read_key

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


@dataclass(frozen=True)
class ScoreConfig:
    answers: tuple[Path, ...]  # answers files (answers/<reader>.json), or folders of them
    key: Path  # the study's key.json
    out: Path  # report dir
    overwrite: bool = False


@dataclass
class Preference:
    """One reader's (or the pooled) answers: chose A in ``chose_a`` of ``answered`` pairs."""

    name: str
    answered: int
    chose_a: int
    unanswered: list[str]
    preference: float | None  # chose_a / answered; None when nothing was answered
    ci_low: float | None
    ci_high: float | None
    p_value: float | None

    def line(self) -> str:
        gap = f"; {len(self.unanswered)} unanswered" if self.unanswered else ""
        if self.preference is None:
            return f"{self.name}: no answers{gap}"
        return (f"{self.name}: chose A in {self.chose_a} of {self.answered} pairs = {self.preference:.1%} "
                f"(95 % CI {self.ci_low:.1%}-{self.ci_high:.1%}), exact binomial p = {self.p_value:.4g}{gap}")


@dataclass
class ScoreResult:
    out: Path
    study_id: str
    n_pairs: int
    a: str  # set A's name
    b: str
    readers: list[dict] = field(default_factory=list)  # Preference as dicts (name, chose_a, p_value, ...)
    pooled: dict = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"reader study {self.study_id}: {self.n_pairs} pairs; A = {self.a}, B = {self.b} -> {self.out}"]
        lines += [f"  {Preference(**r).line()}" for r in self.readers]
        if len(self.readers) > 1:
            lines.append(f"  {Preference(**self.pooled).line()}")
        return "\n".join(lines)


def preference(name: str, chose_a: int, answered: int, unanswered: list[str]) -> Preference:
    """The figures of ``chose_a`` A-choices in ``answered`` pairs."""
    if answered == 0:
        return Preference(name, 0, 0, unanswered, None, None, None, None)
    from scipy.stats import binomtest

    test = binomtest(chose_a, answered, p=0.5, alternative="two-sided")
    ci = test.proportion_ci(confidence_level=0.95, method="exact")
    return Preference(name, answered, chose_a, unanswered, chose_a / answered, float(ci.low), float(ci.high),
                      float(test.pvalue))


def score_study(cfg: ScoreConfig) -> ScoreResult:
    from medti.io import check_output_dir, written_dir

    # 1. read and check every input before writing anything
    key = read_key(cfg.key)
    check_output_dir(cfg.out, cfg.overwrite, (REPORT_JSON,), "reader-study report dir")
    files = _answer_files(cfg.answers)
    sheets = [(path, read_answers(path, key)) for path in files]
    seen: dict[str, Path] = {}
    for path, data in sheets:
        if data["reader"] in seen:
            raise QualityError(f"answers file {path}: field 'reader' is {data['reader']!r}, as in {seen[data['reader']]}; "
                               "each reader is scored once")
        seen[data["reader"]] = path
    # 2. count: a pair's answer is A when the side chosen is the side the key put A on
    pairs = key["pairs"]
    readers, per_pair = [], {pid: {**p, "readers": 0, "chose_a": 0} for pid, p in pairs.items()}
    total_a = total_n = 0
    for _path, data in sheets:
        got = data["answers"]
        chose_a = sum(1 for pid, side in got.items() if side == pairs[pid]["a_side"])
        for pid, side in got.items():
            per_pair[pid]["readers"] += 1
            per_pair[pid]["chose_a"] += int(side == pairs[pid]["a_side"])
        readers.append(preference(data["reader"], chose_a, len(got), sorted(set(pairs) - set(got))))
        total_a, total_n = total_a + chose_a, total_n + len(got)
    unanswered_total = [f"{r.name}:{pid}" for r in readers for pid in r.unanswered]
    pooled = preference(f"pooled ({len(readers)} readers)", total_a, total_n, unanswered_total)
    result = ScoreResult(Path(cfg.out), key["study_id"], len(pairs), _set_name(key["a"]), _set_name(key["b"]),
                         [asdict(r) for r in readers], asdict(pooled))
    # 3. write the report whole
    report = {"study_id": key["study_id"], "question": key.get("question"), "n_pairs": len(pairs),
              "a": key["a"], "b": key["b"], "test": "two-sided exact binomial test against 0.5 (scipy.stats."
              "binomtest); 95 % interval: Clopper-Pearson (exact)",
              "answers_files": {data["reader"]: str(path) for path, data in sheets},
              "readers": result.readers, "pooled": result.pooled, "pairs": per_pair}
    with written_dir(Path(cfg.out)) as tmp:
        (tmp / REPORT_JSON).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        (tmp / REPORT_MD).write_text(_markdown(result, key), encoding="utf-8")
    return result


def _answer_files(given: tuple[Path, ...]) -> list[Path]:
    """The files named, a folder standing for the ``*.json`` in it; each file once."""
    if not given:
        raise QualityError("no answers files given")
    files: list[Path] = []
    for p in map(Path, given):
        if p.is_dir():
            found = sorted(p.glob("*.json"))
            if not found:
                raise QualityError(f"answers folder {p}: holds no .json answers files")
            files += found
        else:
            files.append(p)  # a missing file fails when read, naming it
    unique = list(dict.fromkeys(f.resolve() for f in files))
    if len(unique) != len(files):
        raise QualityError("an answers file is given twice: " + ", ".join(
            str(f) for f in files if sum(g.resolve() == f.resolve() for g in files) > 1))
    return files


def _set_name(about: object) -> str:
    if isinstance(about, dict):
        return str(about.get("name") or about.get("dir") or "?")
    return "?"


def _markdown(result: ScoreResult, key: dict) -> str:
    def cells(r: dict) -> str:
        if r["preference"] is None:
            return f"| {r['name']} | 0 | - | - | - | - | {len(r['unanswered'])} |"
        return (f"| {r['name']} | {r['answered']} | {r['chose_a']} | {r['preference']:.1%} | "
                f"{r['ci_low']:.1%}-{r['ci_high']:.1%} | {r['p_value']:.4g} | {len(r['unanswered'])} |")

    lines = [f"# Reader study {result.study_id}", "",
             f"Question: {key.get('question', '')}", "",
             f"A = {result.a} ({key['a'].get('dir', '')}), B = {result.b} ({key['b'].get('dir', '')}); "
             f"{result.n_pairs} pairs, A shown on either side at random.", "",
             "| reader | answered | chose A | preference for A | 95 % CI (Clopper-Pearson) | p (exact binomial, "
             "two-sided, p0 = 0.5) | unanswered |", "|---|---|---|---|---|---|---|"]
    lines += [cells(r) for r in result.readers]
    if len(result.readers) > 1:
        lines.append(cells(result.pooled))
        lines += ["", "The pooled row adds all readers' answers up as if independent; the readers saw the same "
                  "pairs, so read it beside the per-reader rows."]
    missing = [r for r in result.readers if r["unanswered"]]
    if missing:
        lines += ["", "Unanswered pairs (not counted):"]
        lines += [f"- {r['name']}: {', '.join(r['unanswered'])}" for r in missing]
    return "\n".join(lines) + "\n"
