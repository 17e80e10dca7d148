"""The composable prompt grammar (AUTOMATIC1111-compatible "Composable Diffusion").

A prompt is one or more *sub-prompts* joined by the keyword ``AND``; each sub-prompt may end in
a weight::

    healthy:30% AND diseased:70%            -> weights 0.3 and 0.7
    pleural_effusion AND pneumonia          -> weights 1 and 1
    <csPCa> axial prostate mri AND blurry:-0.5   (a negative weight subtracts a concept)

The sampler guides with ``eps_uncond + scale * sum_i w_i (eps_i - eps_uncond)``; the weights are
used as written (never normalised).  A separate *negative prompt* (plain text: no ``AND``, no
weight; it may reference concepts) replaces the unconditional branch.

Rules (the details A1111 leaves open are decided here):

- **AND** splits only as an upper-case whole word, exactly as A1111 does
  (``re.split(r"\\bAND\\b", prompt)``): ``and``, ``ANDROID`` and ``x_AND_y`` do not split.
  Every sub-prompt must have text: ``a AND AND b``, a leading or a trailing ``AND`` is an error.
- **Weights**: the *last* ``:`` of a sub-prompt introduces its weight, and what follows must be
  a number - A1111's ``[-+]?(\\d+\\.?|\\d*\\.\\d+)`` plus an optional exponent (``1e-1``) - or a
  percentage of one (``30%`` = 0.3, ``12.5%`` = 0.125).  Spaces around the ``:`` are allowed
  (``text :0.7``, ``text: -0.5``), none inside the number.  Unlike A1111, which silently keeps
  ``healthy:abc`` as text of weight 1, anything after the last ``:`` that is not a number is an
  error (``healthy:abc``, ``healthy:1.2.3``, ``healthy:%``, ``healthy:``), and so is a weight
  that is not finite (``inf``, ``nan``, ``1e999``).  A sub-prompt without ``:`` has weight 1.
  At least one weight must be non-zero.
- **Whitespace**: runs of whitespace in a sub-prompt's text collapse to one space, and the text
  is stripped (the CLIP tokenizer does the same, so nothing the model sees changes).
- **Canonical form** (:meth:`ComposedPrompt.format`): sub-prompts joined by ``" AND "``, each
  written ``text`` (weight 1, no ``:`` in the text) or ``text:weight`` with the weight as the
  shortest positional decimal that reads back as the same float (``0.3``, ``-0.5``, ``2``,
  ``0.00001``).  ``parse(p.format()) == p`` for every valid :class:`ComposedPrompt`.
- **Concept references**: a concept name is ``[A-Za-z0-9_\\-.]+``, matched case-sensitively.

  * ``<name>`` always references the concept ``name``;
  * a bare word (a maximal run of name characters that does not start or end with ``.``/``-``,
    so ``healthy.`` at the end of a sentence is ``healthy``) references the concept of that name
    when one is loaded - as A1111 does with embedding names;
  * a bare word that is *not* loaded is plain text, **except** when it contains ``_`` or is a
    whole sub-prompt (or the whole negative prompt) on its own, and contains a letter: those are
    almost always a concept name spelled wrong or an embedding not loaded, so they are an error
    (there is no escape: write such a plain word with a space or a hyphen instead);
  * ``<name>_1`` (a vector token written out by hand) is an error: write ``<name>`` once.

  A reference resolves to the concept's token ``<name>`` (``texts``, what diffusers' pipeline
  expects: it expands a multi-vector token itself) and to its n vector tokens
  ``<name> <name>_1 ... <name>_{n-1}`` (``expanded_texts``, diffusers' multi-vector
  convention, for medti's own sampler).  Caveat (transformers 5.x): the CLIP tokenizer matches
  added tokens case-insensitively and ``tokenize()`` returns them lower-cased, so diffusers'
  own expansion (``_maybe_convert_prompt``) silently skips a mixed-case token such as
  ``<csPCa>`` (only its first vector would be used), and re-expands an already expanded text;
  ``expanded_texts`` encode correctly either way.  Two concepts whose tokens differ only in case
  are refused.
- **Token budget**: with a tokenizer, every expanded sub-prompt and the negative prompt must fit
  the text encoder: ``len(tokenizer(text).input_ids)`` (BOS and EOS included) at most
  ``tokenizer.model_max_length``, i.e. 75 content tokens for CLIP, where each concept costs its
  n vectors (64 vectors leave 11).  The count does not depend on whether the vector tokens have
  been added to the tokenizer yet.  Nothing is ever truncated.

Every error is a :class:`PromptError` (a ``ValueError``) naming the sub-prompt, the position
and the offending value.  The module is pure: no torch; the tokenizer is passed in.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

__all__ = [
    "AND_RE",
    "ComposedPrompt",
    "ConceptSpec",
    "PromptError",
    "ResolvedPrompt",
    "SubPrompt",
    "concept_refs",
    "parse",
    "resolve",
]

AND_RE = re.compile(r"\bAND\b")
_NAME_RE = re.compile(r"^[A-Za-z0-9_\-.]+$")
_NUMBER = r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
_WEIGHT_RE = re.compile(rf"^({_NUMBER})(%?)$")
_NONFINITE_RE = re.compile(r"^[-+]?(?:inf(?:inity)?|nan)%?$", re.IGNORECASE)
# <name> (optionally followed by a hand-written vector suffix _k), or a bare word: a maximal
# run of name characters that starts and ends with a letter, digit or underscore.
_REF_RE = re.compile(
    r"<(?P<br>[A-Za-z0-9_\-.]+)>(?P<vec>_\d+)?"
    r"|(?<!\w)(?P<bare>[A-Za-z0-9_](?:[A-Za-z0-9_\-.]*[A-Za-z0-9_])?)(?!\w)"
)
_BARE_FULL_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_\-.]*[A-Za-z0-9_])?$")
_LETTER_RE = re.compile(r"[A-Za-z]")


class PromptError(ValueError):
    """A prompt that cannot be parsed or resolved; the message names the culprit."""


def _normalize(text: str) -> str:
    return " ".join(text.split())


def _fmt_weight(w: float) -> str:
    s = format(Decimal(repr(w)), "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def _excerpt(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class SubPrompt:
    """One ``AND``-separated part: its (whitespace-normalised) text and its weight."""

    text: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise PromptError(f"sub-prompt text must be a string, got {type(self.text).__name__}")
        text = _normalize(self.text)
        if not text:
            raise PromptError(f"sub-prompt text {self.text!r} is empty")
        m = AND_RE.search(text)
        if m:
            raise PromptError(
                f"sub-prompt text {_excerpt(text)} contains the keyword AND at character "
                f"{m.start() + 1}; AND separates sub-prompts - use a ComposedPrompt of several parts"
            )
        try:
            weight = float(self.weight)
        except (TypeError, ValueError, OverflowError) as e:
            raise PromptError(f"sub-prompt {_excerpt(text)}: weight {self.weight!r} is not a number") from e
        if not math.isfinite(weight):
            raise PromptError(f"sub-prompt {_excerpt(text)}: weight {self.weight!r} is not finite")
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "weight", weight + 0.0)  # -0.0 -> 0.0

    def format(self) -> str:
        if self.weight == 1.0 and ":" not in self.text:
            return self.text
        return f"{self.text}:{_fmt_weight(self.weight)}"


@dataclass(frozen=True)
class ComposedPrompt:
    """A parsed prompt: one or more weighted sub-prompts (not all weights zero)."""

    parts: tuple[SubPrompt, ...]

    def __post_init__(self) -> None:
        parts = tuple(self.parts)
        if not parts:
            raise PromptError("a composed prompt needs at least one sub-prompt")
        for p in parts:
            if not isinstance(p, SubPrompt):
                raise PromptError(f"parts must be SubPrompt objects, got {type(p).__name__}")
        if all(p.weight == 0.0 for p in parts):
            raise PromptError(
                f"all sub-prompt weights are zero in {_excerpt(' AND '.join(p.format() for p in parts))}; "
                "at least one must be non-zero"
            )
        object.__setattr__(self, "parts", parts)

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.parts]

    @property
    def weights(self) -> list[float]:
        return [p.weight for p in self.parts]

    def format(self) -> str:
        """Canonical text; ``parse(p.format()) == p``."""
        return " AND ".join(p.format() for p in self.parts)

    def __str__(self) -> str:
        return self.format()


# ----------------------------------------------------------------------------- parse
def _split_spans(prompt: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in AND_RE.finditer(prompt):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(prompt)))
    return spans


def _parse_number(s: str) -> float | None:
    """The weight a valid weight string denotes (``30%`` -> 0.3), or None when it is invalid."""
    m = _WEIGHT_RE.match(s)
    if not m:
        return None
    num, pct = m.groups()
    if not pct:
        return float(num)
    try:
        sign, digits, exp = Decimal(num).as_tuple()
        return float(Decimal((sign, digits, int(exp) - 2)))  # exact /100, then one rounding
    except (ArithmeticError, ValueError):  # an absurd exponent: the result is 0 or inf anyway
        return float(num) / 100


def _parse_sub(prompt: str, start: int, end: int, index: int, count: int) -> SubPrompt:
    raw = prompt[start:end]
    label = f"sub-prompt {index} of {count}"
    if not raw.strip():
        if count == 1:
            why = "the prompt is empty"
        elif index == 1:
            why = "the prompt starts with AND"
        elif index == count:
            why = "the prompt ends with AND"
        else:
            why = "two ANDs with nothing between them"
        raise PromptError(
            f"empty {label} at character {start + 1} of {_excerpt(prompt)}: {why}; "
            "every AND must join two sub-prompts with text"
        )
    colon = raw.rfind(":")
    weight = 1.0
    text = raw
    if colon >= 0:
        text = raw[:colon]
        after = raw[colon + 1 :]
        wstr = after.strip()
        wpos = start + colon + 2 + (len(after) - len(after.lstrip()))  # 1-based
        where = f"{label} {_excerpt(_normalize(raw))}"
        if not wstr:
            raise PromptError(
                f"{where}: ':' at character {start + colon + 1} is not followed by a weight; "
                "write e.g. 'healthy:0.7', 'healthy:-0.5' or 'healthy:30%' "
                "(a ':' in a sub-prompt always introduces its weight)"
            )
        if _NONFINITE_RE.match(wstr):
            raise PromptError(f"{where}: weight {wstr!r} at character {wpos} is not finite")
        value = _parse_number(wstr)
        if value is None:
            raise PromptError(
                f"{where}: weight {wstr!r} at character {wpos} is not a number; write e.g. "
                "'healthy:0.7', 'healthy:-0.5' or 'healthy:30%' "
                "(a ':' in a sub-prompt always introduces its weight)"
            )
        if not math.isfinite(value):
            raise PromptError(f"{where}: weight {wstr!r} at character {wpos} is not finite")
        weight = value
    if not _normalize(text):
        raise PromptError(
            f"{label} {_excerpt(raw.strip())} at character {start + 1} has a weight but no text"
        )
    return SubPrompt(text, weight)


def parse(prompt: str | ComposedPrompt) -> ComposedPrompt:
    """Parse ``sub AND sub:0.7 AND sub:30%`` into a :class:`ComposedPrompt` (see module doc)."""
    if isinstance(prompt, ComposedPrompt):
        return prompt
    if not isinstance(prompt, str):
        raise PromptError(f"a prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise PromptError(f"empty prompt {prompt!r}")
    spans = _split_spans(prompt)
    parts = tuple(_parse_sub(prompt, s, e, i, len(spans)) for i, (s, e) in enumerate(spans, 1))
    return ComposedPrompt(parts)


# ----------------------------------------------------------------------------- concepts
@dataclass(frozen=True)
class _Ref:
    name: str
    start: int
    end: int
    bracket: bool
    required: bool
    vector_suffix: str = ""


def _scan(text: str) -> list[_Ref]:
    """Concept references in one plain text (a sub-prompt's text or the negative prompt)."""
    whole = text.strip()
    whole_is_name = bool(_BARE_FULL_RE.match(whole)) and bool(_LETTER_RE.search(whole))
    refs = []
    for m in _REF_RE.finditer(text):
        if m.group("br") is not None:
            refs.append(_Ref(m.group("br"), m.start(), m.end(), True, True, m.group("vec") or ""))
        else:
            name = m.group("bare")
            required = bool(_LETTER_RE.search(name)) and ("_" in name or whole_is_name)
            refs.append(_Ref(name, m.start(), m.end(), False, required))
    return refs


def _strip_weight_lenient(sub: str) -> str:
    colon = sub.rfind(":")
    if colon >= 0 and _WEIGHT_RE.match(sub[colon + 1 :].strip()):
        return sub[:colon]
    return sub


def concept_refs(text: str | ComposedPrompt) -> list[str]:
    """Concept names a prompt requires, in order of first appearance, each once.

    These are the ``<name>`` references and the bare words that must be loaded concepts (those
    containing ``_`` and those forming a whole sub-prompt).  ``text`` may be a whole prompt with
    ``AND`` and weights (read leniently: this never raises) or a plain negative prompt.  Bare
    words that merely *happen* to be loaded concept names are resolved too, but are not listed.
    """
    if isinstance(text, ComposedPrompt):
        pieces = [p.text for p in text.parts]
    else:
        pieces = [_strip_weight_lenient(s) for s in AND_RE.split(str(text))]
    names: list[str] = []
    for piece in pieces:
        for r in _scan(piece):
            if r.required and r.name not in names:
                names.append(r.name)
    return names


@dataclass(frozen=True)
class ConceptSpec:
    """What the grammar needs to know of a loaded embedding: name, token, number of vectors."""

    name: str
    token: str
    n_vectors: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise PromptError(f"concept name {self.name!r} may only contain letters, digits, _ - .")
        if not isinstance(self.token, str) or not self.token or any(c.isspace() for c in self.token):
            raise PromptError(f"concept {self.name!r}: token {self.token!r} must be non-empty, without spaces")
        if isinstance(self.n_vectors, bool) or not isinstance(self.n_vectors, int) or self.n_vectors < 1:
            raise PromptError(f"concept {self.name!r}: n_vectors {self.n_vectors!r} must be an integer >= 1")

    @classmethod
    def from_embedding(cls, emb: Any, name: str | None = None) -> ConceptSpec:
        """From a :class:`medti.diffusion.embeddings.Embedding`; the name defaults to its concept
        (``csPCa``; its token is the lower-cased ``<cspca>``)."""
        token = str(emb.token)
        return cls(name or getattr(emb, "concept", "") or token.strip("<>"), token, int(emb.n_vectors))

    @property
    def vector_tokens(self) -> list[str]:
        """diffusers' multi-vector tokens: ``<name>``, ``<name>_1`` ... ``<name>_{n-1}``."""
        return [self.token] + [f"{self.token}_{i}" for i in range(1, self.n_vectors)]

    @property
    def expansion(self) -> str:
        return " ".join(self.vector_tokens)


def _concept_table(concepts: Any) -> dict[str, ConceptSpec]:
    if concepts is None:
        return {}
    table: dict[str, ConceptSpec] = {}
    if isinstance(concepts, Mapping):
        items = list(concepts.items())
    elif isinstance(concepts, Iterable) and not isinstance(concepts, str | bytes):
        items = [(None, c) for c in concepts]
    else:
        raise PromptError(f"concepts must be a dict or a list of ConceptSpec, got {type(concepts).__name__}")
    for key, spec in items:
        if not isinstance(spec, ConceptSpec):
            if hasattr(spec, "token") and hasattr(spec, "n_vectors"):
                spec = ConceptSpec.from_embedding(spec)
            else:
                raise PromptError(f"concept {key or spec!r}: expected a ConceptSpec or an Embedding")
        name = spec.name if key is None else str(key)
        if not _NAME_RE.match(name):
            raise PromptError(f"concept name {name!r} may only contain letters, digits, _ - .")
        if name in table:
            raise PromptError(f"concept {name!r} is given twice")
        clash = [n for n, sp in table.items() if sp.token.lower() == spec.token.lower()]
        if clash:
            raise PromptError(
                f"concepts {clash[0]!r} and {name!r} have tokens {table[clash[0]].token!r} and "
                f"{spec.token!r} that differ only in case; the CLIP tokenizer matches added tokens "
                "case-insensitively, so they would collide"
            )
        table[name] = spec
    return table


@dataclass
class ResolvedPrompt:
    """A prompt with its concept references bound to loaded embeddings."""

    prompt: ComposedPrompt
    texts: list[str]  # sub-prompts with each reference replaced by the concept token <name>
    expanded_texts: list[str]  # ... and by its n vector tokens <name> <name>_1 ...
    weights: list[float]
    negative: str = ""  # the negative prompt, references replaced by tokens ("" when none)
    negative_expanded: str = ""
    concepts: list[str] = field(default_factory=list)  # names used, first appearance order
    token_counts: list[int] | None = None  # content tokens per expanded text (with a tokenizer)
    negative_token_count: int | None = None


def _substitute(text: str, table: dict[str, ConceptSpec], where: str, used: list[str]):
    """(text with tokens, text with vector tokens, text with references blanked, n vectors)."""
    out, exp, blank = [], [], []
    pos, n_vec = 0, 0
    for r in _scan(text):
        spec = table.get(r.name)
        if r.vector_suffix:
            raise PromptError(
                f"{where}: {text[r.start : r.end]!r} at character {r.start + 1} writes a vector "
                f"token out by hand; write <{r.name}> once - it is expanded to its vectors automatically"
            )
        if spec is None:
            if not r.required:
                continue
            loaded = ", ".join(sorted(table)) or "none"
            close = difflib.get_close_matches(r.name, list(table), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            rule = (
                ""
                if r.bracket
                else " (a bare word is read as a concept name when it contains '_' or is a "
                "whole sub-prompt on its own)"
            )
            raise PromptError(
                f"{where}: unknown concept {r.name!r} at character {r.start + 1}: no embedding of "
                f"that name is loaded (loaded: {loaded}){hint}{rule}"
            )
        out.append(text[pos : r.start])
        exp.append(text[pos : r.start])
        blank.append(text[pos : r.start])
        out.append(spec.token)
        exp.append(spec.expansion)
        blank.append(" ")
        n_vec += spec.n_vectors
        pos = r.end
        if r.name not in used:
            used.append(r.name)
    for parts in (out, exp, blank):
        parts.append(text[pos:])
    return "".join(out), "".join(exp), "".join(blank), n_vec


def _budget(tokenizer) -> tuple[int, int]:
    max_len = int(tokenizer.model_max_length)
    try:
        specials = int(tokenizer.num_special_tokens_to_add(pair=False))
    except Exception:  # a tokenizer without the method: CLIP's BOS + EOS
        specials = 2
    return max_len, specials


def _count(tokenizer, blank: str, n_vec: int) -> int:
    """``len(tokenizer(expanded).input_ids)``, BOS/EOS included, counting each concept as its n
    vectors whether or not the vector tokens have been added to the tokenizer yet."""
    ids = tokenizer(blank, add_special_tokens=True, truncation=False, verbose=False).input_ids
    return len(ids) + n_vec


def resolve(
    prompt: ComposedPrompt | str,
    concepts: Mapping[str, ConceptSpec] | Iterable[ConceptSpec] | None,
    tokenizer: Any = None,
    negative: str | None = None,
) -> ResolvedPrompt:
    """Bind a prompt's concept references to loaded concepts and check the token budget.

    ``concepts`` is a dict ``{name: ConceptSpec}`` (the key is the name written in prompts) or a
    list of :class:`ConceptSpec` (or Embeddings).  With ``tokenizer`` every expanded sub-prompt
    and the negative prompt must fit ``tokenizer.model_max_length`` (see the module doc).
    """
    cp = parse(prompt)
    table = _concept_table(concepts)
    used: list[str] = []
    texts, expanded, blanks = [], [], []
    n = len(cp.parts)
    for i, part in enumerate(cp.parts, 1):
        t, x, b, nv = _substitute(part.text, table, f"sub-prompt {i} of {n} {_excerpt(part.text)}", used)
        texts.append(t)
        expanded.append(x)
        blanks.append((b, nv))
    neg_t = neg_x = ""
    neg_blank: tuple[str, int] | None = None
    if negative is not None:
        if not isinstance(negative, str):
            raise PromptError(f"the negative prompt must be a string, got {type(negative).__name__}")
        neg = _normalize(negative)
        m = AND_RE.search(neg)
        if m:
            raise PromptError(
                f"negative prompt {_excerpt(neg)}: AND at character {m.start() + 1} - the negative "
                "prompt is plain text (one unconditional branch), without AND or weights"
            )
        colon = neg.rfind(":")
        if colon >= 0 and (
            _WEIGHT_RE.match(neg[colon + 1 :].strip()) or _NONFINITE_RE.match(neg[colon + 1 :].strip())
        ):
            raise PromptError(
                f"negative prompt {_excerpt(neg)}: {neg[colon:].strip()!r} at character {colon + 1} "
                "looks like a weight - the negative prompt is plain text, without AND or weights"
            )
        if neg:
            neg_t, neg_x, b, nv = _substitute(neg, table, f"negative prompt {_excerpt(neg)}", used)
            neg_blank = (b, nv)
    counts: list[int] | None = None
    neg_count: int | None = None
    if tokenizer is not None:
        max_len, specials = _budget(tokenizer)
        budget = max_len - specials
        counts = []

        def check(label: str, text: str, blank: str, nv: int) -> int:
            c = _count(tokenizer, blank, nv) - specials
            if c > budget:
                cost = "".join(
                    f" ({spec.token} alone takes {spec.n_vectors})"
                    for spec in table.values()
                    if spec.n_vectors > 1 and spec.token in text
                )
                raise PromptError(
                    f"{label} {_excerpt(text, 200)} is {c} tokens after expanding concept tokens to "
                    f"their vectors{cost}; the text encoder takes at most {budget} "
                    f"(model_max_length {max_len} minus {specials} for BOS/EOS). Shorten it - "
                    "nothing is truncated"
                )
            return c

        for i, (t, (b, nv)) in enumerate(zip(texts, blanks, strict=True), 1):
            counts.append(check(f"sub-prompt {i} of {n}", t, b, nv))
        if neg_blank is not None:
            neg_count = check("negative prompt", neg_t, *neg_blank)
    return ResolvedPrompt(
        prompt=cp,
        texts=texts,
        expanded_texts=expanded,
        weights=cp.weights,
        negative=neg_t,
        negative_expanded=neg_x,
        concepts=used,
        token_counts=counts,
        negative_token_count=neg_count,
    )
