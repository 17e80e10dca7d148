"""Deterministic BPE training (medti.diffusion.bpe) and the CLIP-style tokenizer built on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from medti.diffusion.bpe import train_bpe

# Sennrich et al.'s example, with end-of-word symbols
WORDS = {"low": 5, "lower": 2, "newest": 6, "widest": 3}


def test_merges_most_frequent_pair_first_ties_to_smaller_ids():
    vocab, merges = train_bpe(WORDS, 100, ["<s>"], end_of_word_suffix="</w>")
    # (e,s) and (s,t</w>) both occur 9 times: e's id is smaller; then (n,e), (e,w), (w,est</w>) tie at 6.
    # The same merges as the tokenizers library's BpeTrainer gives for these words.
    assert merges == [
        ("e", "s"), ("es", "t</w>"), ("l", "o"), ("e", "w"), ("n", "ew"), ("new", "est</w>"), ("lo", "w</w>"),
        ("d", "est</w>"), ("i", "dest</w>"), ("w", "idest</w>"), ("e", "r</w>"), ("w", "er</w>"), ("lo", "wer</w>"),
    ]
    assert vocab["<s>"] == 0 and vocab["newest</w>"] > vocab["es"]
    # ids: specials, alphabet by code point, word-final symbols by code point, then merges in order
    assert [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])][:12] == [
        "<s>", "d", "e", "i", "l", "n", "o", "r", "s", "t", "w", "r</w>"
    ]


def test_stops_at_vocab_size_and_keeps_the_whole_alphabet():
    vocab, merges = train_bpe(WORDS, 20, alphabet="xyz", end_of_word_suffix="</w>")
    assert len(vocab) == 20 and {"x", "y", "z"} <= set(vocab)
    assert len(merges) == 20 - 16  # 10 letters + x, y, z + 3 word-final symbols come first


words = st.dictionaries(st.text("abcde", min_size=1, max_size=7), st.integers(1, 20), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None)
@given(words, st.integers(5, 60), st.randoms(use_true_random=False))
def test_same_words_in_any_order_give_the_same_tokenizer(wc, size, rnd):
    items = list(wc.items())
    rnd.shuffle(items)
    assert train_bpe(dict(items), size, end_of_word_suffix="</w>") == train_bpe(wc, size, end_of_word_suffix="</w>")


@settings(max_examples=60, deadline=None)
@given(words, st.integers(5, 60))
def test_every_merge_makes_a_token_and_ids_are_dense(wc, size):
    vocab, merges = train_bpe(wc, size, end_of_word_suffix="</w>")
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert all(a in vocab and b in vocab and a + b in vocab for a, b in merges)
    assert len(set(merges)) == len(merges)


_TOKENIZER_FILE = """
import sys
from medti.diffusion.base import BASE_VOCAB_TEXT, train_tokenizer
texts = BASE_VOCAB_TEXT + [l.strip() for l in open(sys.argv[1]) if l.strip()]
train_tokenizer(texts, 700).save_pretrained(sys.argv[2])
"""


def test_tokenizer_is_the_same_in_every_process(tmp_path):
    """The tokenizers library's trainer numbers word-final symbols in hash-map order, so a base rebuilt in
    another process had another tokenizer and text encoder: another content hash for the same model."""
    corpus = Path(__file__).resolve().parents[1] / "README.md"
    files = []
    for k in range(3):
        out = tmp_path / f"tok{k}"
        env = {**os.environ, "PYTHONHASHSEED": str(k)}
        subprocess.run([sys.executable, "-c", _TOKENIZER_FILE, str(corpus), str(out)], check=True, env=env, capture_output=True)
        files.append((out / "tokenizer.json").read_bytes())
    assert files[0] == files[1] == files[2]
    assert len(json.loads(files[0])["model"]["merges"]) > 100


def test_tokenizes_like_the_tokenizers_library_trainer():
    """Same algorithm as tokenizers' BpeTrainer: on a real text corpus, the same vocab and the same tokens for
    every word (only the hash-map-dependent numbering differs)."""
    from tokenizers import pre_tokenizers
    from tokenizers.trainers import BpeTrainer
    from transformers import CLIPTokenizer

    from medti.diffusion.base import TOKENIZER_SPECIALS, clip_text_splitter, train_tokenizer

    root = Path(__file__).resolve().parents[1]
    texts = sorted({line.strip() for f in ("README.md", "docs/results.md") for line in open(root / f) if line.strip()})
    ours = train_tokenizer(texts, 1500)
    lib = clip_text_splitter()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = BpeTrainer(
        vocab_size=1500, special_tokens=list(TOKENIZER_SPECIALS), initial_alphabet=alphabet,
        end_of_word_suffix="</w>", show_progress=False,
    )
    lib.train_from_iterator(texts, trainer=trainer)
    model = json.loads(lib.to_str())["model"]
    vocab = dict(model["vocab"])
    for ch in sorted(alphabet):
        vocab.setdefault(ch + "</w>", len(vocab))
    theirs = CLIPTokenizer(vocab=vocab, merges=[tuple(m) for m in model["merges"]], model_max_length=77)
    assert set(ours.get_vocab()) == set(theirs.get_vocab())
    words = sorted({w for t in texts for w in t.split()})
    assert len(words) > 1000
    assert [ours.tokenize(w) for w in words] == [theirs.tokenize(w) for w in words]
