"""Realism feedback: each private example votes for the synthetic text nearest to it.

Label confidence tells the generator whether a text carries its label, not whether
it reads like the task's real data. The votes do (the private-evolution signal of
Aug-PE and POPri): in C2 a client embeds its private training texts and the batch
with its own SLM's pre-trained weights (``TextClassifier.embed``) and each private
text votes for the synthetic text whose embedding is nearest (cosine). The server
sums the votes per text; S3 trains the generator on the most-voted texts the judges
put on their intended label, and the next round's demonstrations are the most-voted
accepted texts.

A vote count is a statistic of the private data itself, not only of the model
trained on it: one record moves one vote. DP clients therefore refuse to vote
(docs/privacy.md), and ``feedback.strategy`` only asks for votes with
``realism-sft`` and ``realism-dpo`` (which prefers the most-voted samples to the
least-voted and to the judged label flips, as POPri builds its preference pairs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from crosslm.config import REALISM_STRATEGIES, TOP_LABEL
from crosslm.strategies.selection import acceptable
from crosslm.synthetic import ScoredSample


def wants_votes(strategy: str) -> bool:
    """Whether ``strategy`` needs the clients' votes (what C2 asks for)."""
    return strategy in REALISM_STRATEGIES


def nearest_votes(private: torch.Tensor, synthetic: torch.Tensor) -> list[int]:
    """votes[j]: how many rows of ``private`` have row j of ``synthetic`` as their nearest.

    Both are unit-length embeddings ([n, d] and [m, d]); each private row votes once.
    """
    if len(synthetic) == 0:
        return []
    nearest = (private @ synthetic.T).argmax(dim=1)
    return torch.bincount(nearest, minlength=len(synthetic)).tolist()


def realism_rank(sample: ScoredSample) -> tuple[int, float]:
    """Sort key, best first: most votes, then the judges' confidence in the intended label."""
    return -sample.votes, -sample.quality


def preference_rank(sample: ScoredSample) -> tuple[bool, int, float]:
    """realism-dpo's sort key, best first: a sample the judges put on another label goes last
    (a rejected answer, however many votes it has), then as ``realism_rank``."""
    return not acceptable(sample, TOP_LABEL), *realism_rank(sample)


def sample_rank(strategy: str) -> Callable[[ScoredSample], object]:
    """How ``strategy`` orders a label's samples, best first (S3's training set, the demonstrations)."""
    ranks = {"realism-sft": realism_rank, "realism-dpo": preference_rank}
    return ranks.get(strategy, lambda sample: -sample.quality)
