"""S4: choose the accepted set, per label, so that it stays label-balanced."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from crosslm.config import TOP_LABEL
from crosslm.synthetic import ScoredSample


def acceptable(sample: ScoredSample, threshold: float | str) -> bool:
    """q >= threshold; with ``top-label``, the judges' aggregated distribution ranks the intended
    label first, which on two labels is q > 0.5 and on C labels can hold at q near 1/C."""
    if threshold == TOP_LABEL:
        return int(np.argmax(sample.soft_label)) == sample.label
    return sample.quality >= threshold


def relabelled(sample: ScoredSample, threshold: float | str) -> ScoredSample:
    """An unacceptable sample under the label the judges rank first, with that label's q.

    Dropping the judges' flips costs the round texts; relabelling keeps every text and still
    corrects what the judges are sure of: on TREC's plain synthetic texts 4 held-out points
    above dropping (``benchmarks/feedback_replay.py``), level with the default in full rounds
    (docs/results.md).
    """
    if acceptable(sample, threshold):
        return sample
    top = int(np.argmax(sample.soft_label))
    return replace(sample, label=top, quality=sample.soft_label[top])


def select(samples: list[ScoredSample], num_labels: int, threshold: float | str, top_fraction: float,
           balance: bool, flips: str = "drop") -> list[ScoredSample]:
    """Per label: the acceptable samples, at most the top fraction (by q) of that label's samples.

    With ``balance``, every label keeps as many as the label with the fewest, so a
    label the LLM writes well cannot crowd the others out of the SLMs' training data.
    With ``flips="relabel"``, an unacceptable sample is not dropped but counts under the label
    the judges rank first (``relabelled``).
    """
    if flips == "relabel":
        samples = [relabelled(s, threshold) for s in samples]
    per_label = []
    for label in range(num_labels):
        mine = sorted((s for s in samples if s.label == label), key=lambda s: -s.quality)
        cap = math.ceil(top_fraction * len(mine))
        per_label.append([s for s in mine[:cap] if acceptable(s, threshold)])
    if balance:
        keep = min(len(group) for group in per_label)
        per_label = [group[:keep] for group in per_label]
    return [s for group in per_label for s in group]
