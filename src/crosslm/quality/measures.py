"""Measures of a synthetic set that need no judge: pure functions of texts, labels and embeddings.

Self-BLEU is not computed: no maintained BLEU library is installed (nltk and sacrebleu each
pull compiled dependencies), so diversity is distinct-n only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FRECHET_EPS = 1e-6  # added to both covariances' diagonals: a sample of n < dim texts has a singular one


def tokens(text: str) -> list[str]:
    """Lower-cased whitespace tokens (the measure is the same whatever model wrote or reads the text)."""
    return text.lower().split()


def ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """The n-grams of one text; none cross from one text into the next."""
    words = tokens(text)
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Unique n-grams / all n-grams over ``texts`` (Li et al., 2016); None when there are none.

    1 when no n-gram repeats; k copies of one text whose n-grams are distinct give 1/k.
    """
    grams = [g for text in texts for g in ngrams(text, n)]
    return len(set(grams)) / len(grams) if grams else None


def distinct_by_label(texts: Sequence[str], labels: Sequence[int], n: int) -> dict[int, float]:
    """distinct-n of each label's texts (labels without any n-gram are left out)."""
    out = {}
    for label in sorted(set(labels)):
        value = distinct_n([t for t, y in zip(texts, labels, strict=True) if y == label], n)
        if value is not None:
            out[label] = value
    return out


def agreement(predicted: Sequence[int], reference: Sequence[int]) -> float | None:
    """The share of positions where ``predicted`` equals ``reference``; None for no positions.

    Label fidelity is agreement(oracle argmax, intended labels); a judge's accuracy is
    agreement(judge argmax, oracle argmax).
    """
    if len(predicted) != len(reference):
        raise ValueError(f"{len(predicted)} predictions for {len(reference)} references")
    if not reference:
        return None
    return sum(int(p) == int(r) for p, r in zip(predicted, reference, strict=True)) / len(reference)


def judge_accuracy(client_probs: Sequence[dict[str, Sequence[float]]], oracle_labels: Sequence[int]
                   ) -> dict[str, float]:
    """Per client: how often the argmax of its C2 distribution is the oracle's label.

    ``client_probs[j]`` holds each client's distribution for sample j (what S2 received); a
    client that did not score sample j is judged on the others.
    """
    clients = dict.fromkeys(cid for probs in client_probs for cid in probs)
    out = {}
    for cid in clients:
        pairs = [(int(np.argmax(probs[cid])), label)
                 for probs, label in zip(client_probs, oracle_labels, strict=True) if cid in probs]
        out[cid] = agreement([p for p, _ in pairs], [y for _, y in pairs])
    return out


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = FRECHET_EPS) -> float:
    """Fréchet distance between Gaussians fitted to two sets of embeddings (rows), as in FID:

    ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)),  S = sample covariance + eps * I.

    The trace of (S_a S_b)^(1/2) is computed as the trace of (S_a^(1/2) S_b S_a^(1/2))^(1/2): the
    same value as ``scipy.linalg.sqrtm`` of the product (which ``tests/test_quality.py`` checks),
    but from symmetric eigendecompositions, so a near-singular covariance (fewer texts than
    dimensions) yields no complex round-off. The estimate is biased upward at small sample
    sizes: compare sets of similar size (the meter records each set's size, and the distance of
    a real sample as large as the accepted set, the floor a perfect generator would reach).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"need two sets of at least 2 embeddings of one size; got {a.shape}, {b.shape}")
    identity = np.eye(a.shape[1])
    cov_a = np.cov(a, rowvar=False) + eps * identity
    cov_b = np.cov(b, rowvar=False) + eps * identity
    root_a = _symmetric_sqrt(cov_a)
    inner = root_a @ cov_b @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    mean_term = float(np.sum((a.mean(0) - b.mean(0)) ** 2))
    return max(0.0, mean_term + float(np.trace(cov_a) + np.trace(cov_b) - 2 * cross))
