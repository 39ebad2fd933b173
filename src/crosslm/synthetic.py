"""Synthetic samples as the server sees them, and the S1 clean-up before anything is sent."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Candidate:
    """A generated text and the label its prompt asked for."""

    text: str
    label: int


@dataclass(frozen=True)
class ScoredSample:
    """A candidate after S2: quality q = sum_k w_k p_k(label | text), soft label, disagreement,
    and (realism feedback) how many private examples, over all clients, have it as nearest text."""

    text: str
    label: int
    quality: float
    soft_label: list[float]
    disagreement: float
    votes: int = 0
    client_probs: dict[str, list[float]] = field(default_factory=dict)


def _normalised(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def is_degenerate(text: str, min_words: int, prompt_texts: set[str]) -> str | None:
    """Why a sample is unusable (empty, too short, repetitive, a prompt echo), or None."""
    words = _normalised(text).split()
    if not words:
        return "empty"
    if len(words) < min_words:
        return "too short"
    if len(words) >= 6 and len(set(words)) / len(words) < 0.5:
        return "repetitive"
    if _normalised(text) in prompt_texts:
        return "prompt echo"
    return None


def clean(candidates: list[Candidate], min_words: int, prompt_texts: list[str]
          ) -> tuple[list[Candidate], dict[str, int]]:
    """Drop degenerate samples and duplicates; count why each was dropped."""
    echoes = {_normalised(t) for t in prompt_texts}
    seen: set[str] = set()
    kept, dropped = [], {}
    for cand in candidates:
        reason = is_degenerate(cand.text, min_words, echoes)
        key = _normalised(cand.text)
        if reason is None and key in seen:
            reason = "duplicate"
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        seen.add(key)
        kept.append(cand)
    return kept, dropped
