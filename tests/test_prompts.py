"""The composable prompt grammar: parsing, concept resolution, token budget, round trips."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from medti.diffusion.prompts import (
    AND_RE,
    ComposedPrompt,
    ConceptSpec,
    PromptError,
    SubPrompt,
    concept_refs,
    parse,
    resolve,
)

CONCEPTS = [
    ConceptSpec("healthy", "<healthy>", 3),
    ConceptSpec("pleural_effusion", "<pleural_effusion>", 2),
    ConceptSpec("csPCa", "<csPCa>", 1),
]


# ----------------------------------------------------------------------------- parse
def test_reference_notation_percentages_are_weights():
    p = parse("healthy:30% AND diseased:70%")
    assert p.texts == ["healthy", "diseased"]
    assert p.weights == [0.3, 0.7]


def test_bare_and_gives_weight_one_each():
    p = parse("pleural_effusion AND pneumonia")
    assert p.parts == (SubPrompt("pleural_effusion", 1.0), SubPrompt("pneumonia", 1.0))


@pytest.mark.parametrize(
    "prompt, weight",
    [
        ("lung :0.7", 0.7),
        ("lung: -0.5", -0.5),
        ("lung:+2", 2.0),
        ("lung:.5", 0.5),
        ("lung:1.", 1.0),
        ("lung:1e-1", 0.1),
        ("lung:12.5%", 0.125),
        ("lung:-20%", -0.2),
        ("lung:0.7%", 0.007),
    ],
)
def test_weight_syntaxes(prompt, weight):
    (part,) = parse(prompt).parts
    assert part.text == "lung"
    assert part.weight == weight


def test_negative_weight_subtracts_and_is_kept_through_resolve():
    r = resolve("<healthy> lung AND blurry noise:-0.5", CONCEPTS)
    assert r.weights == [1.0, -0.5]
    assert r.texts[1] == "blurry noise"


@pytest.mark.parametrize(
    "prompt, n_parts",
    [
        ("cats and dogs", 1),  # lower-case is text
        ("ANDROID phone", 1),  # not a whole word
        ("x_AND_y", 1),
        ("a AND b", 2),
        ("a\tAND\nb", 2),
        ("a:30%AND b", 2),
    ],
)
def test_and_splits_only_as_uppercase_whole_word(prompt, n_parts):
    assert len(parse(prompt).parts) == n_parts


def test_whitespace_is_normalised():
    p = parse("  axial \t prostate\n mri :0.5   AND  b ")
    assert p.texts == ["axial prostate mri", "b"]


@pytest.mark.parametrize(
    "prompt, needles",
    [
        ("healthy:abc", ["'abc'", "character 9", "not a number", "'healthy:abc'"]),
        ("healthy:1.2.3", ["'1.2.3'", "not a number"]),
        ("healthy:%", ["'%'", "not a number"]),
        ("healthy:", ["':'", "not followed by a weight"]),
        ("lung AND healthy:abc", ["sub-prompt 2 of 2", "'abc'", "character 18"]),
        ("a AND AND b", ["empty sub-prompt 2 of 3", "character 6", "two ANDs"]),
        ("a AND", ["empty sub-prompt 2 of 2", "ends with AND"]),
        ("AND a", ["empty sub-prompt 1 of 2", "starts with AND"]),
        ("lung:inf", ["'inf'", "not finite"]),
        ("lung:nan", ["'nan'", "not finite"]),
        ("lung:1e999", ["'1e999'", "not finite"]),
        ("a:0 AND b:0%", ["all sub-prompt weights are zero"]),
        (":0.5", ["no text"]),
        ("   ", ["empty prompt"]),
    ],
)
def test_malformed_prompts_are_named(prompt, needles):
    with pytest.raises(PromptError) as ei:
        parse(prompt)
    for needle in needles:
        assert needle in str(ei.value)


def test_prompt_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse("a AND")


def test_subprompt_validates_its_fields():
    with pytest.raises(PromptError, match="keyword AND"):
        SubPrompt("a AND b")
    with pytest.raises(PromptError, match="not finite"):
        SubPrompt("a", math.nan)
    with pytest.raises(PromptError, match="empty"):
        SubPrompt("  ")
    with pytest.raises(PromptError, match="at least one"):
        ComposedPrompt(())


def test_format_is_canonical_and_a1111_readable():
    p = parse("healthy :30%   AND diseased: 0.70 AND lung AND x:1e-5")
    assert p.format() == "healthy:0.3 AND diseased:0.7 AND lung AND x:0.00001"
    # a ':' in the text forces the weight to be written so it reads back unchanged
    q = ComposedPrompt((SubPrompt("ratio 1:2", 1.0),))
    assert parse(q.format()) == q


# ----------------------------------------------------------------------------- concepts
def test_angle_brackets_and_bare_names_resolve_to_the_same_token():
    a = resolve("<pleural_effusion> small AND <healthy>:0.3", CONCEPTS)
    b = resolve("pleural_effusion small AND healthy:0.3", CONCEPTS)
    assert a.texts == b.texts == ["<pleural_effusion> small", "<healthy>"]
    assert a.expanded_texts == [
        "<pleural_effusion> <pleural_effusion>_1 small",
        "<healthy> <healthy>_1 <healthy>_2",
    ]
    assert a.concepts == ["pleural_effusion", "healthy"]


def test_loaded_bare_word_inside_text_is_replaced_but_plain_words_stay():
    r = resolve("axial mri, a healthy. gland, no csPCa-like lesion", CONCEPTS)
    # "healthy." is the concept followed by a full stop; "csPCa-like" is one other word
    assert r.texts == ["axial mri, a <healthy>. gland, no csPCa-like lesion"]
    plain = resolve("axial prostate mri", CONCEPTS)
    assert plain.texts == plain.expanded_texts == ["axial prostate mri"]
    assert plain.concepts == []


def test_concept_names_are_case_sensitive():
    r = resolve("<csPCa> axial", CONCEPTS)
    assert r.texts == ["<csPCa> axial"]
    with pytest.raises(PromptError, match="did you mean 'csPCa'"):
        resolve("<cspca> axial", CONCEPTS)


@pytest.mark.parametrize(
    "prompt, name, sub",
    [
        ("<foo> lung", "'foo'", "'<foo> lung'"),
        ("small pleural_efusion", "'pleural_efusion'", "'small pleural_efusion'"),
        ("healthy:30% AND diseased:70%", "'diseased'", "sub-prompt 2 of 2 'diseased'"),
        ("Healthy", "'Healthy'", "sub-prompt 1 of 1"),
    ],
)
def test_unknown_concept_is_named(prompt, name, sub):
    with pytest.raises(PromptError) as ei:
        resolve(prompt, CONCEPTS)
    msg = str(ei.value)
    assert f"unknown concept {name}" in msg
    assert sub in msg
    assert "loaded: csPCa, healthy, pleural_effusion" in msg


def test_unknown_concept_suggests_the_close_name():
    with pytest.raises(PromptError, match="did you mean 'pleural_effusion'"):
        resolve("pleural_efusion", CONCEPTS)


def test_vector_token_written_by_hand_is_refused():
    with pytest.raises(PromptError, match=r"<healthy>_1"):
        resolve("<healthy> <healthy>_1 lung", CONCEPTS)


def test_concepts_accepted_as_dict_list_or_embedding():
    import torch

    from medti.diffusion.embeddings import Embedding

    emb = Embedding("<lesion>", torch.zeros(4, 8))
    spec = ConceptSpec.from_embedding(emb)
    assert spec == ConceptSpec("lesion", "<lesion>", 4)
    for concepts in ([spec], {"lesion": spec}, [emb]):
        r = resolve("lesion", concepts)
        assert r.expanded_texts == ["<lesion> <lesion>_1 <lesion>_2 <lesion>_3"]
    with pytest.raises(PromptError, match="given twice"):
        resolve("lesion", [spec, spec])


def test_negative_prompt_replaces_unconditional_and_may_reference_concepts():
    r = resolve("<healthy>", CONCEPTS, negative="  blurry,  pleural_effusion ")
    assert r.negative == "blurry, <pleural_effusion>"
    assert r.negative_expanded == "blurry, <pleural_effusion> <pleural_effusion>_1"
    assert resolve("<healthy>", CONCEPTS).negative == ""
    assert resolve("<healthy>", CONCEPTS).negative_expanded == ""


@pytest.mark.parametrize(
    "negative, needle",
    [
        ("blurry AND noisy", "AND at character 8"),
        ("blurry:0.5", "looks like a weight"),
        ("pleural_efusion", "unknown concept 'pleural_efusion'"),
    ],
)
def test_negative_prompt_errors(negative, needle):
    with pytest.raises(PromptError) as ei:
        resolve("<healthy>", CONCEPTS, negative=negative)
    assert "negative prompt" in str(ei.value)
    assert needle in str(ei.value)


def test_concept_refs_lists_required_names_once_in_order():
    assert concept_refs("healthy:30% AND diseased:70%") == ["healthy", "diseased"]
    assert concept_refs("a <csPCa> b pleural_effusion, <csPCa> axial mri") == [
        "csPCa",
        "pleural_effusion",
    ]
    assert concept_refs("axial prostate mri, t2 weighted") == []
    assert concept_refs(parse("<x> AND y_z:0.5")) == ["x", "y_z"]


# ----------------------------------------------------------------------------- token budget
_CANDIDATES = (
    "a photo of an image axial prostate mri weighted adc dwi frontal chest ray radiograph "
    "healthy normal the pelvis showing with and without small gland high contrast low noise"
).split()


@pytest.fixture(scope="module")
def make_tokenizer():
    from medti.diffusion.base import BASE_VOCAB_TEXT, train_tokenizer

    texts = BASE_VOCAB_TEXT + [
        "axial prostate mri, small gland, high contrast",
        "frontal chest x-ray, low noise",
    ]
    return lambda: train_tokenizer(texts, 400)


@pytest.fixture(scope="module")
def words(make_tokenizer):
    tok = make_tokenizer()
    single = [w for w in _CANDIDATES if len(tok.tokenize(w)) == 1]
    assert len(single) >= 12, single
    return single


LESION = ConceptSpec("lesion", "<lesion>", 64)


def test_64_vectors_plus_12_words_is_over_budget_and_named(make_tokenizer, words):
    tok = make_tokenizer()
    prompt = "axial mri AND <lesion> " + " ".join(words[:12])
    with pytest.raises(PromptError) as ei:
        resolve(prompt, [LESION], tokenizer=tok)
    msg = str(ei.value)
    assert "sub-prompt 2 of 2" in msg
    assert "is 76 tokens" in msg
    assert "at most 75" in msg
    assert "<lesion> alone takes 64" in msg


@pytest.mark.parametrize("n_words", [5, 11])
def test_64_vectors_plus_few_words_fit(make_tokenizer, words, n_words):
    tok = make_tokenizer()
    r = resolve("<lesion> " + " ".join(words[:n_words]), [LESION], tokenizer=tok)
    assert r.token_counts == [64 + n_words]


def test_count_matches_the_tokenizer_once_the_vectors_are_loaded(make_tokenizer, words):
    """The count is len(tokenizer(expanded).input_ids) incl. BOS/EOS - whether or not the
    vector tokens were already added - and each vector token encodes to its own id."""
    tok = make_tokenizer()
    cs = ConceptSpec("csPCa", "<csPCa>", 3)
    concepts = [LESION, cs]
    prompt = "<lesion> " + " ".join(words[:5]) + " AND csPCa, " + " ".join(words[5:9])
    before = resolve(prompt, concepts, tokenizer=tok, negative="blurry csPCa")
    for spec in concepts:
        tok.add_tokens(spec.vector_tokens)
    after = resolve(prompt, concepts, tokenizer=tok, negative="blurry csPCa")
    assert before.token_counts == after.token_counts == [69, 3 + 1 + 4]
    for expanded, count in zip(after.expanded_texts, after.token_counts, strict=True):
        assert len(tok(expanded).input_ids) == count + 2
    assert len(tok(after.negative_expanded).input_ids) == after.negative_token_count + 2
    ids = tok(after.expanded_texts[1]).input_ids
    assert ids[1:4] == tok.convert_tokens_to_ids(cs.vector_tokens)


def test_diffusers_expands_texts_to_our_expanded_texts(make_tokenizer, words):
    from diffusers.loaders import TextualInversionLoaderMixin

    tok = make_tokenizer()
    tok.add_tokens(LESION.vector_tokens)
    r = resolve("lesion " + " ".join(words[:3]) + " AND <lesion>:0.5", [LESION], tokenizer=tok)
    for text, expanded in zip(r.texts, r.expanded_texts, strict=True):
        assert TextualInversionLoaderMixin._maybe_convert_prompt(None, text, tok) == expanded


def test_tokens_differing_only_in_case_are_refused():
    with pytest.raises(PromptError, match="differ only in case"):
        resolve("<csPCa>", [ConceptSpec("csPCa", "<csPCa>", 1), ConceptSpec("cspca", "<cspca>", 1)])


def test_negative_and_plain_text_over_budget_fail(make_tokenizer, words):
    tok = make_tokenizer()
    with pytest.raises(PromptError, match=r"negative prompt .* is 76 tokens"):
        resolve("axial lung", [LESION], tokenizer=tok, negative="<lesion> " + " ".join(words[:12]))
    long_plain = " ".join((words * 8)[:76])
    with pytest.raises(PromptError, match="is 76 tokens"):
        resolve(long_plain, [], tokenizer=tok)


# ----------------------------------------------------------------------------- properties
_TEXT_CHARS = st.sampled_from(list("abcxyzAND :%<>_-.,0123456789\t\né"))
_texts = st.one_of(st.text(min_size=1, max_size=30), st.text(_TEXT_CHARS, min_size=1, max_size=30))
_weights = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def composed_prompts(draw, with_colons: bool):
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        text = draw(_texts)
        if not with_colons:
            text = text.replace(":", " ")
        assume(" ".join(text.split()) and not AND_RE.search(text))
        parts.append(SubPrompt(text, draw(_weights)))
    assume(any(p.weight != 0 for p in parts))
    return ComposedPrompt(tuple(parts))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(composed_prompts(with_colons=False))
def test_round_trip_without_colons(p):
    q = parse(p.format())
    assert q == p
    assert [w for w in q.weights] == p.weights  # exact float equality, sign of zero aside


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(composed_prompts(with_colons=True))
def test_round_trip_even_with_colons_in_text(p):
    assert parse(p.format()) == p


_GRAMMAR_BITS = st.sampled_from(
    ["AND", " AND ", "and", ":", "%", "0.5", "-", "1e999", "abc", "<", ">", "_", "healthy",
     "<healthy>", "_1", "pleural_effusion", "x_y", ".", " ", "\n", "inf", "30%", "é", "AND:"]
)
_malformed = st.one_of(st.text(max_size=40), st.lists(_GRAMMAR_BITS, max_size=12).map("".join))


@settings(max_examples=300, deadline=None)
@given(_malformed, st.one_of(st.none(), _malformed))
def test_random_text_parses_or_raises_prompt_error(text, negative):
    try:
        p = parse(text)
    except PromptError:
        return
    assert parse(p.format()) == p
    try:
        r = resolve(p, CONCEPTS, negative=negative)
    except PromptError:
        return
    assert len(r.texts) == len(r.expanded_texts) == len(r.weights) == len(p.parts)
    assert isinstance(concept_refs(text), list)
