"""A membership-inference audit from the server's view: does ε hold up empirically?

Canaries, unused pool texts with random labels, are planted in client-0's
training data; as many matched non-members (same source, same label draw) are
kept aside. After the run an honest-but-curious server submits both sets as if
they were synthetic texts, through the ordinary C2 score path, and runs the
loss attack: a record whose label gets high probability was probably trained
on. Random labels make canaries easy to spot without DP (a worst case for the
model); under DP the attack's ROC AUC should be near 0.5 and its TPR at low FPR
bounded by ε (TPR <= e^ε FPR + δ).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crosslm.errors import CrossLMError
from crosslm.tasks.partition import ClientData
from crosslm.tasks.spec import Example

CANARY_FILE = Path("audit") / "canaries.json"
AUDIT_RESULT = Path("audit") / "result.json"
AUDITED_CLIENT = "client-0"


@dataclass(frozen=True)
class Canaries:
    members: list[Example]
    non_members: list[Example]

    def to_json(self) -> str:
        return json.dumps({kind: [{"text": ex.text, "label": ex.label} for ex in examples]
                           for kind, examples in (("members", self.members),
                                                  ("non_members", self.non_members))})

    @classmethod
    def from_json(cls, text: str) -> Canaries:
        raw = json.loads(text)
        return cls(*([Example(row["text"], row["label"]) for row in raw[kind]]
                     for kind in ("members", "non_members")))


def make_canaries(pool: list[Example], silos: list[ClientData], num_labels: int, count: int,
                  seed: int) -> Canaries:
    """``count`` members and ``count`` non-members from pool texts no silo holds, labels at random."""
    used = {ex.text for silo in silos for ex in silo.train + silo.validation}
    free = sorted({ex.text for ex in pool} - used)
    if len(free) < 2 * count:
        raise CrossLMError(f"audit.canaries {count}: the training pool has only {len(free)} texts no silo "
                           f"holds; {2 * count} are needed")
    rng = random.Random(seed)
    chosen = rng.sample(free, 2 * count)
    canaries = [Example(text, rng.randrange(num_labels)) for text in chosen]
    return Canaries(canaries[:count], canaries[count:])


def plant(silo: ClientData, canaries: Canaries) -> ClientData:
    """The silo with the member canaries added to its training data (validation untouched)."""
    return ClientData(silo.train + canaries.members, silo.validation)


def loss_attack_scores(probs: list[list[float]], labels: list[int]) -> np.ndarray:
    """Membership score: log-probability of the record's label (minus its loss); higher: member."""
    p = np.array([row[y] for row, y in zip(probs, labels, strict=True)], dtype=float)
    return np.log(np.clip(p, 1e-12, None))


def roc_auc(member_scores: np.ndarray, non_member_scores: np.ndarray) -> float:
    """P(a member scores above a non-member), ties counting half (Mann-Whitney U over mid-ranks)."""
    scores = np.concatenate([member_scores, non_member_scores])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):  # mid-rank for every run of tied scores
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    m, n = len(member_scores), len(non_member_scores)
    return float((ranks[:m].sum() - m * (m + 1) / 2) / (m * n))


def tpr_at_fpr(member_scores: np.ndarray, non_member_scores: np.ndarray, fpr: float = 0.01) -> float:
    """Share of members flagged at the strictest threshold that flags at most ``fpr`` of non-members."""
    allowed = int(np.floor(fpr * len(non_member_scores)))
    ranked = np.sort(non_member_scores)[::-1]
    # flag scores strictly above the (allowed+1)-th highest non-member: at most `allowed` false positives
    threshold = ranked[allowed] if allowed < len(ranked) else -np.inf
    return float((member_scores > threshold).mean())


def attack(member_probs: list[list[float]], non_member_probs: list[list[float]], canaries: Canaries
           ) -> dict[str, float]:
    members = loss_attack_scores(member_probs, [ex.label for ex in canaries.members])
    non_members = loss_attack_scores(non_member_probs, [ex.label for ex in canaries.non_members])
    return {"mia_auc": roc_auc(members, non_members),
            "mia_tpr_at_1pct_fpr": tpr_at_fpr(members, non_members, 0.01), "canaries": len(members)}
