"""Leakage between two splits: test questions that also appear in training.

Three kinds, each keyed on the question (and for SQuAD on the question+context pair too):
  exact       the same text after stripping outer whitespace
  normalised  the same text after SQuAD's answer normalisation (lowercase, punctuation and the
              articles a/an/the removed, whitespace collapsed; ``normalize_answer`` in the official
              SQuAD v2 evaluation script), so "What is X?" and "what is x" match
  near        word n-gram Jaccard similarity >= a threshold (default 3-grams, 0.8), computed exactly
              for every pair that can reach the threshold (prefix filtering: Chaudhuri et al. 2006,
              "A primitive operator for similarity joins"; Bayardo et al. 2007, "Scaling up all pairs
              similarity search"): only pairs sharing a token among the rarest ``|x| - ceil(t|x|) + 1``
              of each side can have Jaccard >= t, so only those are compared.

Torch-free and dependency-free; pure functions over lists of canonical rows (dicts).
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter, defaultdict
from typing import Any, Iterable, Mapping, Sequence

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalise_text(s: str) -> str:
    """SQuAD v2's ``normalize_answer``: lowercase, drop punctuation, drop a/an/the, collapse spaces."""
    s = "".join(ch for ch in str(s).lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def ngrams(s: str, n: int) -> frozenset[str]:
    """The set of word n-grams of the normalised text (the whole text when it has fewer than n words)."""
    words = normalise_text(s).split()
    if len(words) < n:
        return frozenset([" ".join(words)]) if words else frozenset()
    return frozenset(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    """|a ∩ b| / |a ∪ b|; 0.0 when both are empty."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def near_pairs(a: Sequence[str], b: Sequence[str], threshold: float = 0.8, n: int = 3) -> list[tuple[int, int, float]]:
    """Every (i, j, jaccard) with ``jaccard(ngrams(a[i]), ngrams(b[j])) >= threshold``, sorted by
    decreasing similarity then index. Exact (no sampling): prefix filtering prunes only pairs that
    cannot reach the threshold. ``0 < threshold <= 1``."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    sa, sb = [ngrams(x, n) for x in a], [ngrams(x, n) for x in b]
    df = Counter(g for s in sa + sb for g in s)
    rank = {g: (c, g) for g, c in df.items()}  # global order: rarest first, ties by text

    def prefix(s: frozenset) -> list[str]:
        k = len(s) - math.ceil(threshold * len(s)) + 1
        return sorted(s, key=rank.__getitem__)[:k]

    index: dict[str, list[int]] = defaultdict(list)
    for j, s in enumerate(sb):
        for g in prefix(s):
            index[g].append(j)
    out = []
    for i, s in enumerate(sa):
        if not s:
            continue
        candidates = {j for g in prefix(s) for j in index.get(g, ())}
        for j in candidates:
            sim = jaccard(s, sb[j])
            if sim >= threshold:
                out.append((i, j, sim))
    return sorted(out, key=lambda x: (-x[2], x[0], x[1]))


def _keys(row: Mapping[str, Any], pair: bool) -> tuple[str, str]:
    """(exact key, normalised key) of a row: its question, or its (context, question) pair."""
    q = str(row["question"])
    if not pair:
        return q.strip(), normalise_text(q)
    c = str(row.get("context", ""))
    return c.strip() + "\x00" + q.strip(), normalise_text(c) + "\x00" + normalise_text(q)


def check(train: Sequence[Mapping[str, Any]], test: Sequence[Mapping[str, Any]], pair: bool = False,
          threshold: float = 0.8, n: int = 3, examples: int = 5) -> dict[str, Any]:
    """Leakage of ``test`` into ``train`` (rows with ``id``, ``question`` and, when ``pair``, ``context``).

    Returns ``{"exact": k, "normalised": k, "near": k, "train_ids_exact": [...],
    "train_ids_normalised": [...], "near_examples": [{train_id, test_id, jaccard, train, test}], ...}``.
    "normalised" counts train rows matching a test row after normalisation (it includes the exact
    ones); "near" counts train rows with a near-duplicate test question that are not normalised
    duplicates. ``pair`` keys exact/normalised on the (context, question) pair, as SQuAD needs; the
    question-only counts are reported too (``question_exact``, ``question_normalised``)."""
    out: dict[str, Any] = {"train_rows": len(train), "test_rows": len(test), "ngram": n, "threshold": threshold}
    for label, use_pair in (("", pair), ("question_", False)) if pair else (("", False),):
        test_exact = {_keys(r, use_pair)[0] for r in test}
        test_norm = {_keys(r, use_pair)[1] for r in test}
        exact = [r["id"] for r in train if _keys(r, use_pair)[0] in test_exact]
        norm = [r["id"] for r in train if _keys(r, use_pair)[1] in test_norm]
        out[f"{label}exact"], out[f"{label}normalised"] = len(exact), len(norm)
        if not label:
            out["train_ids_exact"], out["train_ids_normalised"] = exact, norm
    normset = set(out["train_ids_normalised"])
    pairs = [(i, j, s) for i, j, s in near_pairs([r["question"] for r in train], [r["question"] for r in test],
                                                  threshold, n) if train[i]["id"] not in normset]
    near_ids = list(dict.fromkeys(train[i]["id"] for i, _, _ in pairs))
    out["near"] = len(near_ids)
    out["train_ids_near"] = near_ids
    out["near_examples"] = [{"train_id": train[i]["id"], "test_id": test[j]["id"], "jaccard": round(s, 3),
                             "train": _short(train[i]["question"]), "test": _short(test[j]["question"])}
                            for i, j, s in pairs[:examples]]
    return out


def _short(s: str, limit: int = 160) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= limit else s[:limit - 1] + "…"


def drop_leaks(train: Iterable[Mapping[str, Any]], test: Sequence[Mapping[str, Any]],
               pair: bool = False) -> tuple[list, list]:
    """Split ``train`` into (kept, dropped): dropped = rows whose question (or, with ``pair``, whose
    context+question) equals a test row's exactly or after normalisation."""
    test_keys = {k for r in test for k in _keys(r, pair)}
    kept, dropped = [], []
    for r in train:
        (dropped if set(_keys(r, pair)) & test_keys else kept).append(r)
    return kept, dropped
