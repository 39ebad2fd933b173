"""S4: choose the accepted set, per label, so that it stays label-balanced."""

from __future__ import annotations

import math

from crosslm.synthetic import ScoredSample


def select(samples: list[ScoredSample], num_labels: int, threshold: float, top_fraction: float,
           balance: bool) -> list[ScoredSample]:
    """Per label: samples with q >= threshold, at most the top fraction of that label's samples.

    With ``balance``, every label keeps as many as the label with the fewest, so a
    label the LLM writes well cannot crowd the others out of the SLMs' training data.
    """
    per_label = []
    for label in range(num_labels):
        mine = sorted((s for s in samples if s.label == label), key=lambda s: -s.quality)
        cap = math.ceil(top_fraction * len(mine))
        per_label.append([s for s in mine[:cap] if s.quality >= threshold])
    if balance:
        keep = min(len(group) for group in per_label)
        per_label = [group[:keep] for group in per_label]
    return [s for group in per_label for s in group]
