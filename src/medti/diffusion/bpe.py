"""Deterministic byte-pair-encoding training, for the tokenizers medti builds for its own bases.

The tokenizers library's ``BpeTrainer`` numbers each word-final symbol (``y</w>``) as it meets it while
iterating a hash map, so the numbering changes from process to process. Those ids then break ties between
equally frequent pairs, so the same captions give a different merge order, and sometimes different merges
(huggingface/tokenizers#1794; the fix, PR #2066, is not released). medti's embedded base is rebuilt from its
recipe on each machine, so that made every build's tokenizer and text encoder differ, and with them the
base's content hash that embeddings and synthetic datasets record.

This is the same algorithm with every order fixed: symbols are numbered specials, then the alphabet by code
point, then the word-final symbols by code point, then merges in the order made; the most frequent pair is
merged next, ties going to the pair of smaller ids (as in ``BpeTrainer``). Normalising and splitting text into
words stay with the tokenizers library (see ``medti.diffusion.base.train_tokenizer``).
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence


def _pairs(seq: list[int]) -> Counter:
    return Counter(zip(seq, seq[1:], strict=False))


def _merge(seq: list[int], a: int, b: int, new: int) -> list[int]:
    """``seq`` with every non-overlapping (a, b), left to right, replaced by ``new``."""
    out, i = [], 0
    while i < len(seq):
        if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def train_bpe(
    word_counts: Mapping[str, int],
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    alphabet: Iterable[str] = (),
    end_of_word_suffix: str = "",
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """BPE vocab (token -> id) and merges (in rank order) for words with counts; same input, same output.

    ``alphabet`` symbols are in the vocab even when no word uses them; the vocab grows until ``vocab_size``
    or until no pair is left to merge.
    """
    id2w: list[str] = []
    w2id: dict[str, int] = {}

    def add(token: str) -> int:
        if token not in w2id:
            w2id[token] = len(id2w)
            id2w.append(token)
        return w2id[token]

    for t in special_tokens:
        add(t)
    words = sorted(w for w, n in word_counts.items() if w and n > 0)
    for ch in sorted(set(alphabet).union(*map(set, words))):
        add(ch)
    for token in sorted({w[-1] + end_of_word_suffix for w in words}):
        add(token)
    seqs = [[w2id[c] for c in w[:-1]] + [w2id[w[-1] + end_of_word_suffix]] for w in words]
    counts = [int(word_counts[w]) for w in words]

    pair_count: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for i, seq in enumerate(seqs):
        for p, k in _pairs(seq).items():
            pair_count[p] += k * counts[i]
            where[p].add(i)
    # max-heap on count, ties to the smaller pair; stale entries are refreshed when popped
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while heap and len(id2w) < vocab_size:
        neg, pair = heapq.heappop(heap)
        current = pair_count.get(pair, 0)
        if current <= 0:
            continue
        if current != -neg:
            heapq.heappush(heap, (-current, pair))
            continue
        a, b = pair
        new = add(id2w[a] + id2w[b])
        merges.append((id2w[a], id2w[b]))
        grown: set[tuple[int, int]] = set()
        for i in sorted(where.pop(pair)):
            before = _pairs(seqs[i])
            seqs[i] = _merge(seqs[i], a, b, new)
            after = _pairs(seqs[i])
            for p in before.keys() | after.keys():
                delta = after.get(p, 0) - before.get(p, 0)
                if delta:
                    pair_count[p] += delta * counts[i]
                if delta > 0:
                    grown.add(p)
                if p in after:
                    where[p].add(i)
                elif p != pair:
                    where[p].discard(i)
        pair_count.pop(pair, None)
        for p in sorted(grown):
            c = pair_count.get(p, 0)
            if c > 0:
                heapq.heappush(heap, (-c, p))
    return w2id, merges
