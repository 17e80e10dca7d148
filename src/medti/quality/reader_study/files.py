"""The reader study's three file formats, each read with a check that names the file and the field it rejects.

A study made into ``OUT`` is laid out so that the folder readers are served holds nothing that tells the sets
apart, and the key stays with the organiser::

    OUT/study/study.json              what the page needs: study id, question, panel names, each pair's images
    OUT/study/images/pair-017-left.png        (or pair-017-left-1.png ... one per channel panel)
    OUT/study/answers/<reader>.json   written by the server on every click
    OUT/key.json                      pair -> which side is A, and the two case ids; never served

``answers/<reader>.json``: ``study_id``, ``reader``, ``answers`` (pair id -> "left" | "right", the reader's
current choice), ``clicks`` (every click in order: pair, choice, UTC time, so a changed answer stays visible).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from medti.quality import QualityError

STUDY_DIR = "study"
STUDY_JSON = "study.json"
KEY_JSON = "key.json"
IMAGES = "images"
ANSWERS = "answers"
SIDES = ("left", "right")
DEFAULT_QUESTION = "Which image looks more like a real scan?"
STUDY_FORMAT = "medti-reader-study"
KEY_FORMAT = "medti-reader-study-key"
ANSWERS_FORMAT = "medti-reader-study-answers"
#: a reader's name becomes a file name (answers/<reader>.json): letters, digits, . _ - only, no leading dot
READER_RULE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_READER = re.compile(READER_RULE)
PAIR_ID = re.compile(r"pair-\d{3,}")


def pair_id(i: int, n: int) -> str:
    """``pair-017``: numbered in the order readers see them, at least three digits."""
    return f"pair-{i + 1:0{max(3, len(str(n)))}d}"


def check_reader(name: object) -> str:
    """The reader's name, when it is a safe file name; else a QualityError saying the rule."""
    if not isinstance(name, str) or not _READER.fullmatch(name):
        raise QualityError(f"reader name {name!r} is not allowed: 1-64 letters, digits, '.', '_' or '-', not "
                           "starting with '.' (it names the reader's answers file)")
    return name


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; ``what`` names the file's role in messages."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QualityError(f"{what} {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise QualityError(f"{what} {path}: cannot be read ({e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise QualityError(f"{what} {path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise QualityError(f"{what} {path}: expected a JSON object, got {type(data).__name__}")
    return data


def _field(data: dict, name: str, kind: type | tuple[type, ...], path: Path, what: str):
    if name not in data:
        raise QualityError(f"{what} {path}: field {name!r} is missing")
    value = data[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        raise QualityError(f"{what} {path}: field {name!r} is {value!r}; expected "
                           f"{' or '.join(k.__name__ for k in kinds)}")
    return value


def _format(data: dict, expected: str, path: Path, what: str) -> None:
    if data.get("format") != expected:
        raise QualityError(f"{what} {path}: field 'format' is {data.get('format')!r}, not {expected!r}; is this "
                           f"a {what}?")


# ----------------------------------------------------------------------------- study.json
def read_study(study_dir: Path) -> dict[str, Any]:
    """The served study's ``study.json``, checked; a path to the OUT dir above it is pointed at its ``study/``."""
    study_dir = Path(study_dir)
    path = study_dir / STUDY_JSON
    if not path.is_file() and (study_dir / STUDY_DIR / STUDY_JSON).is_file():
        raise QualityError(f"{study_dir} holds the whole study with its key ({KEY_JSON}); serve only its "
                           f"{STUDY_DIR}/ folder: {study_dir / STUDY_DIR}")
    if not study_dir.is_dir():
        raise QualityError(f"study {study_dir}: not a directory")
    data = read_json(path, "study file")
    _format(data, STUDY_FORMAT, path, "study file")
    _field(data, "study_id", str, path, "study file")
    _field(data, "question", str, path, "study file")
    _field(data, "panels", list, path, "study file")
    pairs = _field(data, "pairs", list, path, "study file")
    for i, p in enumerate(pairs):
        if not (isinstance(p, dict) and isinstance(p.get("id"), str)
                and all(isinstance(p.get(s), list) and len(p[s]) == len(data["panels"]) for s in SIDES)):
            raise QualityError(f"study file {path}: pairs[{i}] is not a pair (id, and one image per panel on "
                               "each of left and right)")
        for s in SIDES:
            for rel in p[s]:
                if not (isinstance(rel, str) and re.fullmatch(rf"{IMAGES}/pair-\d+-{s}(-\d+)?\.png", rel)
                        and (study_dir / rel).is_file()):
                    raise QualityError(f"study file {path}: pairs[{i}].{s}: image {rel!r} is not in {study_dir}")
    return data


# ----------------------------------------------------------------------------- key.json
def read_key(path: Path) -> dict[str, Any]:
    """The organiser's key, checked: every pair has an ``a_side`` of left/right and both case ids."""
    path = Path(path)
    data = read_json(path, "key file")
    _format(data, KEY_FORMAT, path, "key file")
    _field(data, "study_id", str, path, "key file")
    pairs = _field(data, "pairs", dict, path, "key file")
    if not pairs:
        raise QualityError(f"key file {path}: field 'pairs' is empty")
    for pid, p in pairs.items():
        if not (isinstance(p, dict) and p.get("a_side") in SIDES and isinstance(p.get("a_case"), str)
                and isinstance(p.get("b_case"), str)):
            raise QualityError(f"key file {path}: pairs.{pid} is {p!r}; expected a_side (left or right), a_case "
                               "and b_case")
    for side in ("a", "b"):
        _field(data, side, dict, path, "key file")
    return data


# ----------------------------------------------------------------------------- answers/<reader>.json
def new_answers(study: dict[str, Any], reader: str) -> dict[str, Any]:
    return {"format": ANSWERS_FORMAT, "study_id": study["study_id"], "reader": reader,
            "question": study["question"], "answers": {}, "clicks": []}


def read_answers(path: Path, key: dict[str, Any]) -> dict[str, Any]:
    """One reader's answers, checked against the key: the same study, known pair ids, left/right choices."""
    path = Path(path)
    what = "answers file"
    data = read_json(path, what)
    study_id = _field(data, "study_id", str, path, what)
    if study_id != key["study_id"]:
        raise QualityError(f"{what} {path}: field 'study_id' is {study_id!r}, but the key is for study "
                           f"{key['study_id']!r}; these answers belong to another study")
    reader = _field(data, "reader", str, path, what)
    try:
        check_reader(reader)
    except QualityError as e:
        raise QualityError(f"{what} {path}: field 'reader': {e}") from None
    answers = _field(data, "answers", dict, path, what)
    for pid, choice in answers.items():
        if pid not in key["pairs"]:
            known = sorted(key["pairs"])
            raise QualityError(f"{what} {path}: field 'answers': pair {pid!r} is not in the key (it has "
                               f"{known[0]} ... {known[-1]})")
        if choice not in SIDES:
            raise QualityError(f"{what} {path}: field 'answers.{pid}' is {choice!r}; a choice is 'left' or 'right'")
    return data
